//! Where a virtio-net device's frames come from and go to: a tap today ([`super::Tap`]),
//! user-mode networking later. Each frame starts with the 12-byte `virtio_net_hdr_v1`.

use std::io;
use std::os::fd::RawFd;

use vm_memory::VolatileSlice;

/// A frame source and sink the worker thread polls.
pub trait NetBackend: Send + Sync {
    /// Reads one frame (header first) into `buf`; `ErrorKind::WouldBlock` when none waits.
    /// A frame longer than `buf` is cut (the caller's `buf` is longer than any it takes).
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame gathered from `bufs` (header first); returns the bytes written.
    fn write_frame(&self, bufs: &[VolatileSlice<'_, ()>]) -> io::Result<usize>;
    /// Readable (poll POLLIN) when a frame waits to be read.
    fn rx_fd(&self) -> RawFd;
    /// What the backend may hand the reader: `TUN_F_*` bits ([`super::tap_offloads`]).
    fn set_offloads(&self, offloads: u32) -> io::Result<()>;
}
