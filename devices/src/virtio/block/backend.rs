//! The raw image behind a virtio-blk device: positioned vectored I/O straight into guest memory
//! (`preadv`/`pwritev` with the request's `VolatileSlice`s as the iovecs, no bounce buffer),
//! `fdatasync` for FLUSH, `fallocate` for DISCARD and WRITE_ZEROES, and the `flock` that keeps two
//! VMs off one image (QEMU takes the same kind of lock).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Bytes per virtio-blk sector: capacity and request sectors count in 512-byte units
/// (virtio 1.2 section 5.2.4, `capacity`; 5.2.6, `sector`).
pub const SECTOR_SIZE: u64 = 512;

/// The most iovecs one `preadv`/`pwritev` takes (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// The zero buffer used when the file system refuses `FALLOC_FL_ZERO_RANGE`.
const ZERO_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("Cannot open disk image {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("Disk image {} is a directory", path.display())]
    Directory { path: PathBuf },
    #[error("Disk image {} is read-only for this process; add readonly=on", path.display())]
    ReadOnlyFile { path: PathBuf },
    #[error(
        "Disk image {} is locked by another process (flock {}); is another VM using it?",
        path.display(),
        if *read_only { "LOCK_SH" } else { "LOCK_EX" }
    )]
    Locked { path: PathBuf, read_only: bool },
    #[error("Cannot lock disk image {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("Cannot read the size of disk image {}: {source}", path.display())]
    Size { path: PathBuf, source: io::Error },
}

/// An open raw image, locked for this process.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    read_only: bool,
    /// Whole 512-byte sectors: a file whose size is not a multiple of 512 loses its tail
    /// (the guest never sees the last partial sector), as QEMU does for raw images.
    capacity_sectors: u64,
}

impl DiskImage {
    /// Opens `path` read-write (or read-only) and takes `flock(LOCK_EX|LOCK_NB)` (`LOCK_SH` when
    /// read-only), so a second VM on the same image fails here with [`BackendError::Locked`].
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BackendError> {
        let owned = || path.to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| open_error(path, read_only, source))?;
        let meta = file.metadata().map_err(|source| BackendError::Size {
            path: owned(),
            source,
        })?;
        if meta.is_dir() {
            return Err(BackendError::Directory { path: owned() });
        }
        lock(&file, read_only).map_err(|source| {
            if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                BackendError::Locked {
                    path: owned(),
                    read_only,
                }
            } else {
                BackendError::Lock {
                    path: owned(),
                    source,
                }
            }
        })?;
        // Seeking to the end also sizes block devices, whose metadata length is 0.
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| BackendError::Size {
                path: owned(),
                source,
            })?;
        Ok(DiskImage {
            file,
            read_only,
            capacity_sectors: size / SECTOR_SIZE,
        })
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The capacity in 512-byte sectors (the file size rounded down).
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The capacity in bytes (a multiple of 512).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors.saturating_mul(SECTOR_SIZE)
    }

    /// Fills `bufs` in order from the image at `offset` (`preadv`, repeated on short reads),
    /// marking the written guest pages dirty. A read that ends early is `UnexpectedEof`.
    pub fn read_into<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<()> {
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
        let mut iovs: Vec<libc::iovec> = guards
            .iter()
            .zip(bufs)
            .map(|(g, b)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        self.transfer(offset, &mut iovs, Direction::Read)?;
        for b in bufs {
            b.bitmap().mark_dirty(0, b.len());
        }
        Ok(())
    }

    /// Writes `bufs` in order to the image at `offset` (`pwritev`, repeated on short writes).
    pub fn write_from<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<()> {
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard()).collect();
        let mut iovs: Vec<libc::iovec> = guards
            .iter()
            .zip(bufs)
            .map(|(g, b)| libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        self.transfer(offset, &mut iovs, Direction::Write)
    }

    /// FLUSH: `fdatasync` (virtio 1.2 section 5.2.6, VIRTIO_BLK_T_FLUSH).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// DISCARD: punch a hole, keeping the size. A file system that cannot punch holes makes
    /// this a no-op, which the spec allows (discard is a hint).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if unsupported(&e) => Ok(()),
            r => r,
        }
    }

    /// WRITE_ZEROES: punch a hole when `unmap` is allowed, else `FALLOC_FL_ZERO_RANGE`; when the
    /// file system refuses both, write zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap
            && self
                .fallocate(
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                )
                .is_ok()
        {
            return Ok(());
        }
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if unsupported(&e) => self.write_zero_bytes(offset, len),
            r => r,
        }
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done).map_or(ZERO_CHUNK, |r| r.min(ZERO_CHUNK));
            let at = offset.checked_add(done).ok_or_else(overflow)?;
            self.file.write_all_at(&zeros[..n], at)?;
            done += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let offset = libc::off_t::try_from(offset).map_err(|_| overflow())?;
        let len = libc::off_t::try_from(len).map_err(|_| overflow())?;
        loop {
            // SAFETY: fallocate on a file descriptor this struct owns; no memory is passed.
            let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
            if ret == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Moves every byte of `iovs` at `offset`, advancing over short transfers.
    fn transfer(&self, offset: u64, iovs: &mut [libc::iovec], dir: Direction) -> io::Result<()> {
        let mut offset = offset;
        let mut start = 0;
        loop {
            while start < iovs.len() && iovs[start].iov_len == 0 {
                start += 1;
            }
            if start == iovs.len() {
                return Ok(());
            }
            let count = (iovs.len() - start).min(IOV_MAX);
            let pos = libc::off_t::try_from(offset).map_err(|_| overflow())?;
            let iov = iovs[start..].as_ptr();
            let fd = self.file.as_raw_fd();
            let ret = match dir {
                // SAFETY: every iovec points into a `VolatileSlice` of mapped guest memory whose
                // pointer guard the caller holds for the duration of this call, with its length.
                Direction::Read => unsafe { libc::preadv(fd, iov, count as libc::c_int, pos) },
                // SAFETY: as above; pwritev only reads the buffers.
                Direction::Write => unsafe { libc::pwritev(fd, iov, count as libc::c_int, pos) },
            };
            let n = match ret {
                r if r < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                0 => {
                    return Err(match dir {
                        Direction::Read => io::ErrorKind::UnexpectedEof.into(),
                        Direction::Write => io::ErrorKind::WriteZero.into(),
                    })
                }
                r => r as usize,
            };
            offset = offset.checked_add(n as u64).ok_or_else(overflow)?;
            advance(iovs, &mut start, n);
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Consumes `n` transferred bytes from the front of `iovs[*start..]`.
fn advance(iovs: &mut [libc::iovec], start: &mut usize, mut n: usize) {
    while n > 0 && *start < iovs.len() {
        let iov = &mut iovs[*start];
        if iov.iov_len <= n {
            n -= iov.iov_len;
            iov.iov_len = 0;
            *start += 1;
        } else {
            // The pointer stays inside the same buffer: `n < iov_len`.
            iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(n).cast();
            iov.iov_len -= n;
            n = 0;
        }
    }
}

/// What a failed `open` means: asked read-write, a permission or read-only-file-system refusal
/// on an existing file is "add readonly=on".
pub(super) fn open_error(path: &Path, read_only: bool, source: io::Error) -> BackendError {
    let path_buf = path.to_path_buf();
    match source.raw_os_error() {
        Some(libc::EACCES | libc::EROFS | libc::EPERM | libc::ETXTBSY)
            if !read_only && path.exists() =>
        {
            BackendError::ReadOnlyFile { path: path_buf }
        }
        Some(libc::EISDIR) => BackendError::Directory { path: path_buf },
        _ => BackendError::Open {
            path: path_buf,
            source,
        },
    }
}

fn lock(file: &File, read_only: bool) -> io::Result<()> {
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let ret = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

fn overflow() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "offset overflow")
}
