//! Where a virtio-net device's frames come from and go to: a tap ([`super::Tap`]), whose
//! frames start with the 12-byte `virtio_net_hdr_v1`, or a stream socket to passt
//! ([`super::Stream`]), which adds and drops that header itself. Frames cross this trait
//! with the header first either way.

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
    /// Readable (poll POLLIN) when a frame waits to be read; writable (POLLOUT) when
    /// [`NetBackend::flush`] can make progress.
    fn rx_fd(&self) -> RawFd;
    /// What the backend may hand the reader: `TUN_F_*` bits ([`super::tap_offloads`]).
    fn set_offloads(&self, offloads: u32) -> io::Result<()>;
    /// Whether the header reaches the other side, so the device may offer offloads
    /// (checksum, TSO): a tap's `IFF_VNET_HDR` does; a stream socket carries bare frames.
    fn has_vnet_hdr(&self) -> bool {
        true
    }
    /// Whether an accepted frame still waits to go out: the worker then takes no transmit
    /// chain until [`NetBackend::flush`] sent it (and polls [`NetBackend::rx_fd`] for
    /// POLLOUT).
    fn tx_pending(&self) -> bool {
        false
    }
    /// Sends what waits; true when nothing is left.
    fn flush(&self) -> io::Result<bool> {
        Ok(true)
    }
    /// Whether the link is up (virtio-net configuration `status` LINK_UP): false once the
    /// peer went away for good.
    fn link_up(&self) -> bool {
        true
    }
}
