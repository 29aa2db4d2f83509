//! The tap backend: `/dev/net/tun` attached to a tap interface with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte vnet header (`TUNSETVNETHDRSZ`), no
//! offloads until the driver's features say which (`TUNSETOFFLOAD`, the one ioctl made after
//! setup, from the worker thread's sandbox) and non-blocking reads.
//!
//! Plain libc ioctls (four requests at setup): no rust-vmm crate publishes a tap
//! (cloud-hypervisor's `net_util` and Firecracker's tap are in-tree code), and a general tun
//! crate would be a dependency for a page of code.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::VolatileSlice;

use super::backend::NetBackend;
use super::VNET_HDR_LEN;

/// The clone device (Documentation/networking/tuntap.rst).
const TUN_PATH: &str = "/dev/net/tun";
/// IFNAMSIZ (include/uapi/linux/if.h), the terminating NUL included.
pub const IFNAMSIZ: usize = 16;

/// IFF_TAP: Ethernet frames (include/uapi/linux/if_tun.h).
pub const IFF_TAP: i16 = 0x0002;
/// IFF_NO_PI: no packet-information prefix (if_tun.h).
pub const IFF_NO_PI: i16 = 0x1000;
/// IFF_VNET_HDR: frames carry a `virtio_net_hdr` (if_tun.h).
pub const IFF_VNET_HDR: i16 = 0x4000;

// _IOW('T', nr, int) / _IOW('T', nr, unsigned int) (include/uapi/linux/if_tun.h).
const fn tun_iow_int(nr: u64) -> u64 {
    (1 << 30) | (4 << 16) | ((b'T' as u64) << 8) | nr
}
/// TUNSETIFF: attach to (or create) the interface (if_tun.h, _IOW('T', 202, int)).
pub const TUNSETIFF: u64 = tun_iow_int(202);
/// TUNSETOFFLOAD: the offloads the reader handles (if_tun.h, _IOW('T', 208, unsigned int)).
pub const TUNSETOFFLOAD: u64 = tun_iow_int(208);
/// TUNSETVNETHDRSZ: the vnet header's size (if_tun.h, _IOW('T', 216, int)).
pub const TUNSETVNETHDRSZ: u64 = tun_iow_int(216);

/// `struct ifreq` with the `ifr_flags` member of its union (include/uapi/linux/if.h; 40
/// bytes on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// Why the tap could not be opened. Messages name the interface; the caller adds the flag.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name '{0}' is empty, longer than 15 bytes or has a NUL or '/'")]
    Name(String),
    #[error("cannot open {TUN_PATH}: {0} (is the tun module loaded?)")]
    OpenTun(#[source] io::Error),
    #[error("cannot attach to tap {name}: permission denied; creating a tap, or using one another user owns, needs CAP_NET_ADMIN (make it first: ip tuntap add dev {name} mode tap user $USER)")]
    Permission { name: String },
    #[error("cannot attach to tap {name}: it is in use by another process")]
    Busy { name: String },
    #[error(
        "cannot attach to tap {name}: {source} (is it a tun interface, or not a tun/tap at all?)"
    )]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap {name}: {what}: {source}")]
    Setup {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An open tap interface.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to tap `name`, creating it if absent (which needs CAP_NET_ADMIN; a created
    /// tap disappears with the VM).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['\0', '/']) {
            return Err(TapError::Name(name.into()));
        }
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        let fd = file.as_raw_fd();
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is one, live for the call.
        let ret = unsafe { libc::ioctl(fd, TUNSETIFF as _, &mut req as *mut IfReq) };
        if ret < 0 {
            return Err(attach_error(name, io::Error::last_os_error()));
        }
        let setup = |what, source| TapError::Setup {
            name: name.to_string(),
            what,
            source,
        };
        let hdr = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer; `hdr` lives for the call.
        if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ as _, &hdr as *const libc::c_int) } < 0 {
            return Err(setup("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        let tap = Tap {
            file,
            name: name.into(),
        };
        // A tap another process left with offloads on hands us nothing the guest did not ask
        // for before it negotiates.
        tap.set_offloads(0).map_err(|e| setup("TUNSETOFFLOAD", e))?;
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What a failed TUNSETIFF on `name` means.
pub(super) fn attach_error(name: &str, e: io::Error) -> TapError {
    let name = name.to_string();
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => TapError::Permission { name },
        Some(libc::EBUSY) => TapError::Busy { name },
        _ => TapError::Attach { name, source: e },
    }
}

impl NetBackend for Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn write_frame(&self, bufs: &[VolatileSlice<'_, ()>]) -> io::Result<usize> {
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard()).collect();
        let iovs: Vec<libc::iovec> = guards
            .iter()
            .zip(bufs)
            .map(|(g, b)| libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let count = libc::c_int::try_from(iovs.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: every iovec points into a `VolatileSlice` of mapped guest memory, with its
        // length, whose pointer guard is held in `guards` for the call; writev only reads them.
        let ret = unsafe { libc::writev(self.file.as_raw_fd(), iovs.as_ptr(), count) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }

    fn rx_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn set_offloads(&self, offloads: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its unsigned argument by value; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(offloads),
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
