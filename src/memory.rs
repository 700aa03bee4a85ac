//! Where the relay's memory goes, and the settings that bound it.
//!
//! Measured on the release build at start (enrolled, REST and metrics on, durable ledger), an
//! idle relay's resident set was 12.4 MB, of which 11.1 MB were its own executable's pages
//! mapped from the page cache and 1.3 MB its heap and stacks. The code is mapped in read-ahead
//! windows (the kernel reads and maps executable code 64–128 KiB at a time around each page
//! touched), and start-up (command line, configuration, key and certificate handling,
//! migrations, the first enrollment) touches code all over the binary once. Two calls fix that:
//! - [`map_code_on_demand`] (first thing in `main`): no read-ahead or fault-around where the
//!   kernel honours `MADV_RANDOM` for the executable's mappings (it does for the read-only
//!   data; recent kernels read executable code in windows regardless);
//! - [`release_startup_code`] (once the relay is serving): the executable's pages are unmapped
//!   and reclaimed, and only what serving uses comes back. Measured: 12.4 MB → 7.4–7.8 MiB
//!   resident 2 s after `ready`, about 4.5 MiB of it code (`benches/transport.rs` prints it).
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
/// the file this function lives in; see the module docs for where kernels ignore it). Pages are still shared with the page cache and every other process
/// running the same file; nothing is copied. Returns how many mappings were advised (0 when
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
/// back from the page cache or the disk). Returns how many mappings were released.
pub fn release_startup_code() -> usize {
    executable_mappings()
        .into_iter()
        .filter(|&(start, len)| advise(start, len, Advice::PageOut))
        .count()
}

/// `(start, length)` of every mapping of the file this function's code lives in (the
/// executable, whatever path it was started by). Empty when `/proc/self/maps` cannot be read.
fn executable_mappings() -> Vec<(usize, usize)> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let here = executable_mappings as fn() -> Vec<(usize, usize)> as usize;
    let Some(file) = maps
        .lines()
        .filter_map(Mapping::parse)
        .find(|m| m.start <= here && here < m.end)
        .map(|m| m.file)
    else {
        return Vec::new();
    };
    maps.lines()
        .filter_map(Mapping::parse)
        .filter(|m| m.file == file)
        .map(|m| (m.start, m.end - m.start))
        .collect()
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
    /// `MADV_PAGEOUT`: unmap and reclaim the (clean) pages now.
    PageOut,
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise(start: usize, len: usize, advice: Advice) -> bool {
    let advice = match advice {
        Advice::Random => libc::MADV_RANDOM,
        Advice::PageOut => libc::MADV_PAGEOUT,
    };
    // SAFETY: the range is a whole file mapping of this process as the kernel listed it. Both
    // advices keep its contents: MADV_RANDOM changes read-ahead only, and MADV_PAGEOUT drops
    // clean pages of a file that are read back from it on their next use (these mappings are
    // never written: code, read-only data, and relocated data, which is private and dirty and
    // therefore swapped or kept, never dropped).
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
    fn memory_the_test_binary_s_own_code_is_advised_and_released_and_still_runs() {
        // Text, read-only data and relocated data of this test executable: at least one each.
        assert!(map_code_on_demand() >= 1);
        assert!(release_startup_code() >= 1);
        // The code released is read back on use: formatting and parsing still work.
        assert_eq!(format!("{:x}", 0xbeef_u32), "beef");
        assert!(Mapping::parse("1-2 r-xp 0 fe:01 7 /x").is_some());
    }
}
