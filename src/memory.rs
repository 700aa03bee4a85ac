//! Where the relay's memory goes, and the settings that bound it.
//!
//! Measured on the release build at start (enrolled, REST and metrics on, durable ledger), an
//! idle relay's resident set was 12.4 MB, of which 11.1 MB were its own executable's pages
//! mapped from the page cache and 1.3 MB its heap and stacks. Start-up (command line,
//! configuration, key and certificate handling, migrations, the first enrollment) touches code
//! all over the binary once, and the kernel maps every page touched with its neighbours: up to
//! 15 more that are in the page cache (fault-around), and for executable code it reads large
//! windows around each miss (the disk's read-ahead, 8 MiB on the VM measured) whatever the
//! advice. Two calls keep only what serving runs:
//! - [`map_code_on_demand`] (first thing in `main`): `MADV_RANDOM` on the executable's
//!   mappings, which ends read-ahead for its read-only data;
//! - [`release_startup_code`] (once the relay is serving): the executable's pages are unmapped
//!   and reclaimed, and the mappings are cut into 16 KiB pieces that the kernel's fault-around
//!   does not cross, so that what serving uses comes back without much around it; the shared
//!   libraries' pages are unmapped too and come back as used.
//!
//! Measured 2 s after `ready` on a 2-core VM (kernel 6.18): 12.4 MB at first; 7.4–8.9 MB with
//! the executable released whole (4.4 MiB of its code back); 5.1–5.2 MB released and cut
//! (2.1–2.3 MiB of code), libraries included (`benches/transport.rs` prints it). The pages are
//! still the page cache's (shared, reclaimable); what changes is what this process maps.
//!
//! The rest, and where each is bounded:
//! - the heap: glibc's settings for the data path (`transport::alloc`), which keep freed
//!   buffers for reuse up to a bound;
//! - the ledger's page cache (`relay_migrations::ledger::CACHE_KIB`), grown only as the replay
//!   index is used;
//! - per connection, the TLS and HTTP/2 buffers, bounded by the transport's window and send
//!   buffer limits (`transport::conn`).
//!
//! Who calls it: `main` and the daemon (once serving); the transport benchmark's relay.

/// Asks the kernel to map this executable's code and read-only data one page at a time, on use,
/// instead of a read-ahead window around each page touched (`MADV_RANDOM` on every mapping of
/// the file this function lives in; see the module docs for where kernels ignore it). Pages
/// are still shared with the page cache and every other process running the same file;
/// nothing is copied. Returns how many mappings were advised (0 when
/// `/proc/self/maps` cannot be read: the default stays, nothing else changes).
pub fn map_code_on_demand() -> usize {
    executable_mappings()
        .into_iter()
        .filter(|&(start, len)| advise(start, len, Advice::Random))
        .count()
}

/// Unmaps the executable's pages once the relay is serving, so that only the code it runs from
/// then on comes back: start-up (the command line,
/// the configuration, key and certificate handling, migrations, the first enrollment) runs
/// once, and its pages would otherwise stay resident for the life of the process
/// (`MADV_PAGEOUT`: clean pages of the file, nothing is written; a page used again is read
/// back from the page cache or the disk). The shared libraries' code and read-only data
/// (the C library, the loader, libm, libgcc) are unmapped from this process too
/// (`MADV_DONTNEED` on mappings that hold no private copy of any page: the pages stay in the
/// page cache, shared with every other process, and are mapped again on use). Returns how
/// many mappings were released.
pub fn release_startup_code() -> usize {
    // The libraries first: `/proc/self/smaps` is read before the executable is cut into
    // pieces below, which would make it a hundred times longer. Its mapping lines are those of
    // `/proc/self/maps`, so the executable's mappings are found in it too.
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return release_own(&executable_mappings());
    };
    let exe = executable_in(&smaps);
    let libraries = droppable_library_mappings(&smaps, exe)
        .into_iter()
        .filter(|&(start, len)| advise(start, len, Advice::DontNeed))
        .count();
    let own = exe
        .map(|file| mappings_of(&smaps, file))
        .unwrap_or_default();
    release_own(&own) + libraries
}

/// Pages out the executable's mappings `own` and cuts them into pieces; how many were paged
/// out.
fn release_own(own: &[(usize, usize)]) -> usize {
    let released = own
        .iter()
        .filter(|&&(start, len)| advise(start, len, Advice::PageOut))
        .count();
    for &(start, len) in own {
        cut_into_pieces(start, len);
    }
    released
}

/// The size of the pieces [`cut_into_pieces`] cuts the executable's mappings into: a page of
/// code used again comes back with at most this much around it. Measured on a 2-core VM
/// (kernel 6.18, ext4, the relay idle 2 s after `ready`): its code resident was 4.4 MiB
/// uncut, 2.5 MiB in 16 KiB pieces, 2.1 MiB in 8 KiB and 1.6 MiB in 4 KiB pieces (3 100
/// mappings); 16 KiB keeps the mappings under 1 000.
const PIECE: usize = 16 * 1024;

/// Cuts one mapping into pieces of [`PIECE`] bytes that the kernel keeps apart (every other
/// piece is marked `MADV_NOHUGEPAGE`, so neighbours differ and are never merged back). The
/// kernel maps a page of a file together with up to 15 neighbours that are in the page cache
/// (fault-around) and reads executable code in large windows whatever the advice, but it never
/// crosses the end of a mapping: with the cuts, code used again brings back at most its piece,
/// not 64 KiB of code that is never run. Nothing else changes: the contents, protections and
/// read-ahead advice stay, and the pages are still the page cache's, shared.
fn cut_into_pieces(start: usize, len: usize) {
    let mut offset = 0;
    while offset < len {
        let piece = PIECE.min(len - offset);
        if (offset / PIECE) % 2 == 1 {
            advise(start + offset, piece, Advice::NoHugePage);
        }
        offset += piece;
    }
}

/// The file mappings of `smaps` (the text of `/proc/self/smaps`) other than `exe`'s that can
/// be unmapped and mapped again from their file without changing what they hold: private,
/// neither writable nor ever written (no anonymous page: relocated data, which the loader
/// wrote before making it read-only, has its own copies and is kept).
fn droppable_library_mappings(smaps: &str, exe: Option<(&str, &str)>) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current: Option<(Mapping<'_>, &str)> = None;
    for line in smaps.lines() {
        if let Some(m) = Mapping::parse(line) {
            let perms = line.split_ascii_whitespace().nth(1).unwrap_or("");
            current = Some((m, perms));
            continue;
        }
        let Some(kib) = line.strip_prefix("Anonymous:") else {
            continue;
        };
        let Some((m, perms)) = current.take() else {
            continue;
        };
        let unwritten = kib.trim().trim_end_matches("kB").trim() == "0";
        let is_exe = exe == Some(m.file);
        if unwritten && !is_exe && perms.len() == 4 && perms.ends_with('p') && !perms.contains('w')
        {
            found.push((m.start, m.end - m.start));
        }
    }
    found
}

/// `(start, length)` of every mapping of the file this function's code lives in (the
/// executable, whatever path it was started by). Empty when `/proc/self/maps` cannot be read.
fn executable_mappings() -> Vec<(usize, usize)> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    executable_in(&maps)
        .map(|file| mappings_of(&maps, file))
        .unwrap_or_default()
}

/// `(start, length)` of every mapping of `file` in `maps` (the text of `/proc/self/maps` or
/// `/proc/self/smaps`).
fn mappings_of(maps: &str, file: (&str, &str)) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(Mapping::parse)
        .filter(|m| m.file == file)
        .map(|m| (m.start, m.end - m.start))
        .collect()
}

/// `(device, inode)` of the file this function's code lives in, as `maps` (the text of
/// `/proc/self/maps` or `/proc/self/smaps`) names it.
fn executable_in(maps: &str) -> Option<(&str, &str)> {
    let here = executable_mappings as fn() -> Vec<(usize, usize)> as usize;
    maps.lines()
        .filter_map(Mapping::parse)
        .find(|m| m.start <= here && here < m.end)
        .map(|m| m.file)
}

/// One line of `/proc/self/maps` that maps a file.
#[derive(Debug, PartialEq, Eq)]
struct Mapping<'a> {
    start: usize,
    end: usize,
    /// `(device, inode)`, as the kernel prints them.
    file: (&'a str, &'a str),
}

impl<'a> Mapping<'a> {
    /// `start-end perms offset dev inode path`; `None` for anonymous mappings (inode 0) and
    /// anything that does not read as a mapping.
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split_ascii_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let (_perms, _offset) = (fields.next()?, fields.next()?);
        let (dev, inode) = (fields.next()?, fields.next()?);
        if inode == "0" {
            return None;
        }
        Some(Self {
            start: usize::from_str_radix(start, 16).ok()?,
            end: usize::from_str_radix(end, 16).ok()?,
            file: (dev, inode),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Advice {
    /// `MADV_RANDOM`: no read-ahead, no fault-around.
    Random,
    /// `MADV_NOHUGEPAGE`: never back the range with huge pages.
    NoHugePage,
    /// `MADV_PAGEOUT`: unmap and reclaim the (clean) pages now.
    PageOut,
    /// `MADV_DONTNEED`: unmap the pages; a private file mapping is read from its file again.
    DontNeed,
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise(start: usize, len: usize, advice: Advice) -> bool {
    let advice = match advice {
        Advice::Random => libc::MADV_RANDOM,
        Advice::PageOut => libc::MADV_PAGEOUT,
        Advice::NoHugePage => libc::MADV_NOHUGEPAGE,
        Advice::DontNeed => libc::MADV_DONTNEED,
    };
    // SAFETY: the range is a whole file mapping of this process as the kernel listed it. Each
    // advice keeps its contents: MADV_RANDOM changes read-ahead only; MADV_PAGEOUT drops clean
    // pages of a file that are read back from it on their next use (code, read-only data, and
    // relocated data, which is private and dirty and therefore swapped or kept, never dropped);
    // MADV_DONTNEED is only given for private mappings that are not writable and hold no
    // anonymous page (`droppable_library_mappings`), whose every page is its file's page.
    unsafe { libc::madvise(start as *mut libc::c_void, len, advice) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn advise(_start: usize, _len: usize, _advice: Advice) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_maps_lines_parse_files_and_skip_anonymous_ones() {
        let file =
            "55d0c0a00000-55d0c1400000 r-xp 00200000 fe:01 1311 /opt/wireleap/wireleap-relay";
        assert_eq!(
            Mapping::parse(file),
            Some(Mapping {
                start: 0x55d0_c0a0_0000,
                end: 0x55d0_c140_0000,
                file: ("fe:01", "1311"),
            })
        );
        assert_eq!(
            Mapping::parse("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]"),
            None
        );
        assert_eq!(Mapping::parse("garbage"), None);
        assert_eq!(Mapping::parse("zz-10 r-xp 0 fe:01 5 /x"), None);
    }

    #[test]
    fn memory_only_unwritten_private_read_only_library_mappings_are_dropped() {
        let smaps = "\
1000-2000 r-xp 00000000 fe:01 7 /opt/wireleap/wireleap-relay
Rss:                 400 kB
Anonymous:             0 kB
3000-5000 r-xp 00028000 fe:01 42 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1100 kB
Anonymous:             0 kB
6000-7000 r--p 001fe000 fe:01 42 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                  16 kB
Anonymous:            16 kB
7000-8000 rw-p 00202000 fe:01 42 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
8000-9000 rw-s 00000000 fe:01 99 /var/lib/wireleap-relay/ledger.db-shm
Anonymous:             0 kB
9000-a000 r--s 00000000 fe:01 98 /some/shared/file
Anonymous:             0 kB
a000-c000 rw-p 00000000 00:00 0 [heap]
Anonymous:            80 kB
c000-d000 r--p 00000000 fe:01 43 /usr/lib/x86_64-linux-gnu/libm.so.6
Anonymous:             0 kB
";
        assert_eq!(
            droppable_library_mappings(smaps, Some(("fe:01", "7"))),
            vec![(0x3000, 0x2000), (0xc000, 0x1000)]
        );
        // Not knowing the executable, its unwritten code is a candidate like any other.
        assert_eq!(droppable_library_mappings(smaps, None).len(), 3);
        assert!(droppable_library_mappings("garbage\nAnonymous: 0 kB\n", None).is_empty());
    }

    #[test]
    #[allow(unsafe_code)]
    fn memory_a_mapping_cut_into_pieces_is_listed_apart_and_reads_the_same() {
        use std::os::fd::AsRawFd as _;
        let len = 4 * PIECE + 4096;
        let contents: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &contents).unwrap();
        // SAFETY: a fresh private read-only mapping of a file this test owns, unmapped below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let start = at as usize;
        let listed = || {
            std::fs::read_to_string("/proc/self/maps")
                .unwrap()
                .lines()
                .filter_map(Mapping::parse)
                .filter(|m| start <= m.start && m.end <= start + len)
                .map(|m| m.end - m.start)
                .collect::<Vec<_>>()
        };
        assert_eq!(listed(), vec![len]);
        cut_into_pieces(start, len);
        assert_eq!(listed(), vec![PIECE, PIECE, PIECE, PIECE, 4096]);
        // SAFETY: the mapping is `len` readable bytes until the munmap below.
        let read = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
        assert!(read == contents.as_slice());
        // SAFETY: the mapping made above, no longer borrowed.
        assert_eq!(unsafe { libc::munmap(at, len) }, 0);
    }

    #[test]
    fn memory_the_test_binary_s_own_code_is_advised_and_released_and_still_runs() {
        // Text, read-only data and relocated data of this test executable: at least one each.
        assert!(map_code_on_demand() >= 1);
        assert!(release_startup_code() >= 1);
        // The code released is read back on use: formatting and parsing still work.
        assert_eq!(format!("{:x}", 0xbeef_u32), "beef");
        assert!(Mapping::parse("1-2 r-xp 0 fe:01 7 /x").is_some());
    }
}
