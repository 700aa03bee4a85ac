//! The disk's own floor, for the benchmarks that print it beside a durable path's figures.

use std::time::{Duration, Instant};

/// `fdatasync` after each of `n` writes of `block` bytes to a file in `dir`, 1 ms apart, sorted:
/// appended (the file grows, so its size goes to disk too), or `in_place` over the first 2 MiB
/// of a file already that long (as a WAL that starts over within its file is written).
pub(crate) fn fdatasync_floor(
    dir: &std::path::Path,
    n: usize,
    block: usize,
    in_place: bool,
) -> Vec<Duration> {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    const SPAN: u64 = 2 << 20;
    let path = dir.join("floor.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    if in_place {
        f.write_all(&vec![0; SPAN as usize]).unwrap();
        f.sync_all().unwrap();
    }
    let data = vec![0x5a; block];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n as u64 {
        if in_place {
            f.write_all_at(&data, i * block as u64 % SPAN).unwrap();
        } else {
            f.write_all(&data).unwrap();
        }
        let t = Instant::now();
        f.sync_data().unwrap();
        lat.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = std::fs::remove_file(&path);
    lat.sort_unstable();
    lat
}
