//! Guest-side block benchmark for the virtio-blk comparison (scripts/bench-virtio.sh): on a
//! block device opened with O_DIRECT (no guest page cache), the sequential read rate with 1 MiB
//! requests and the 4 KiB random read rate with several requests in flight (one thread per
//! request, as fio's `psync` engine with `numjobs` does). Written here rather than running fio
//! in L1 because Debian's fio links about 80 MB of libraries (Ceph, Gluster) that would have to
//! go into the initramfs.
//!
//! Usage: blk-bench DEVICE [SECONDS] [JOBS]; prints two lines:
//!   blk-bench seq-read-1m MB/s: N
//!   blk-bench rand-read-4k IOPS: N

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

/// O_DIRECT wants buffers, offsets and sizes aligned to the logical block size; a page covers
/// every block size a virtio-blk device may report.
const ALIGN: usize = 4096;

/// A zeroed, page-aligned buffer (O_DIRECT's rule), freed on drop.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len, ALIGN).expect("valid layout");
        // SAFETY: `layout` has a non-zero size (callers pass 4 KiB or 1 MiB).
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Aligned { ptr, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` bytes we own, zero-initialised.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn open(path: &str) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| fail(&format!("cannot open {path} with O_DIRECT: {e}")))
}

fn fail(msg: &str) -> ! {
    eprintln!("blk-bench: {msg}");
    std::process::exit(1)
}

fn size_of(f: &File) -> u64 {
    // A block device's size is where its end seeks to.
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::End(0))
        .unwrap_or_else(|e| fail(&format!("cannot size the device: {e}")))
}

/// Reads 1 MiB requests front to back (wrapping) for `secs`; MB/s (10^6 bytes).
fn seq_read(path: &str, secs: u64) -> f64 {
    let f = open(path);
    let size = size_of(&f) / (1 << 20) * (1 << 20);
    if size == 0 {
        fail("device smaller than 1 MiB");
    }
    let mut buf = Aligned::new(1 << 20);
    let (start, mut bytes, mut off) = (Instant::now(), 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        let n = f
            .read_at(buf.as_mut(), off)
            .unwrap_or_else(|e| fail(&format!("read at {off}: {e}")));
        bytes += n as u64;
        off = (off + (1 << 20)) % size;
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// `jobs` threads each read random 4 KiB blocks for `secs`; requests per second in all.
fn rand_read(path: &str, secs: u64, jobs: u64) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..jobs)
        .map(|j| {
            let path = path.to_string();
            std::thread::spawn(move || {
                let f = open(&path);
                let blocks = size_of(&f) / ALIGN as u64;
                let mut buf = Aligned::new(ALIGN);
                // xorshift64: a different stream per thread, no dependency.
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (j + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(secs) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = (x % blocks) * ALIGN as u64;
                    f.read_at(buf.as_mut(), off)
                        .unwrap_or_else(|e| fail(&format!("read at {off}: {e}")));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| fail("a reader thread panicked"))
        })
        .sum();
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        fail("usage: blk-bench DEVICE [SECONDS] [JOBS]");
    };
    let num = |i: usize, default: u64| {
        args.get(i).map_or(default, |s| {
            s.parse()
                .unwrap_or_else(|_| fail(&format!("not a number: {s}")))
        })
    };
    let (secs, jobs) = (num(2, 5), num(3, 4));
    println!("blk-bench seq-read-1m MB/s: {:.1}", seq_read(path, secs));
    println!(
        "blk-bench rand-read-4k IOPS: {:.0} ({jobs} jobs)",
        rand_read(path, secs, jobs)
    );
}
