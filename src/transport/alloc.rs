//! Allocator settings for the data path (glibc only; elsewhere nothing happens).
//!
//! Relaying allocates and frees buffers of 16–130 KiB at a high rate: every TLS record rustls
//! encrypts goes into a fresh buffer, `h2`'s codec reads each DATA frame into a new one, and
//! each read from a remote fills its own chunk. With glibc's defaults, a free that leaves more
//! than 128 KiB at the top of a thread's heap hands the memory back to the OS (`sbrk` down or
//! `MADV_DONTNEED`), and the next allocation faults fresh zeroed pages back in, and buffers of
//! 128 KiB or more are `mmap`ed and unmapped one by one. Measured with `benches/transport.rs`
//! (2 × 256 MiB through one relay, whole bench process tree): 348 000 page faults with the
//! defaults, 19 000 with settings like these, and 7 % less CPU for the same bytes.
//!
//! The settings keep up to [`TRIM_THRESHOLD`] of free memory at the top of each heap instead of
//! returning it at once, and serve buffers below [`MMAP_THRESHOLD`] from the heaps. They raise
//! neither what a stream holds nor the peak: memory that is in use is counted the same; only
//! memory freed after a burst goes back to the OS later (above the threshold, or never below
//! it). Who calls it: [`super::Transport::bind`], once per process.

/// Free bytes at the top of a heap before glibc returns them to the OS.
pub(crate) const TRIM_THRESHOLD: i32 = 32 << 20;
/// Extra bytes asked of the OS whenever a heap grows, so growth is not one page at a time.
pub(crate) const TOP_PAD: i32 = 4 << 20;
/// Allocations from this size up get their own mapping.
pub(crate) const MMAP_THRESHOLD: i32 = 4 << 20;

/// Applies the settings (once; later calls do nothing). Returns whether glibc took all three.
pub(crate) fn tune() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(apply)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn apply() -> bool {
    // SAFETY: `mallopt` only sets allocator parameters; glibc takes its own locks, so calling it
    // while other threads allocate is allowed, and the values are in the documented ranges.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn transport_alloc_settings_are_accepted_once() {
        let first = super::tune();
        assert_eq!(first, cfg!(all(target_os = "linux", target_env = "gnu")));
        assert_eq!(super::tune(), first);
    }
}
