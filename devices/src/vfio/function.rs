//! The host side of a passed-through PCI function as VFIO presents it (Linux
//! Documentation/driver-api/vfio.rst): regions (BARs, ROM, configuration space), interrupt
//! indexes (INTx, MSI, MSI-X) and reset. The device model sees it through [`HostFunction`],
//! so its register-level behaviour is tested against a fake function, without /dev/vfio.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_MMAP;
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

/// VFIO region indexes of a PCI function (linux/vfio.h): BARs 0-5, the expansion ROM and
/// configuration space.
pub const ROM_REGION: u32 = 6;
pub const CONFIG_REGION: u32 = 7;
/// VFIO interrupt indexes of a PCI function (linux/vfio.h).
pub const INTX_IRQ: u32 = 0;
pub const MSI_IRQ: u32 = 1;
pub const MSIX_IRQ: u32 = 2;

/// A region's size and the parts of it that may be mmap()ed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    pub size: u64,
    /// (offset, size) of each mmap()able area; empty when the region must be trapped.
    pub mmap: Vec<(u64, u64)>,
}

/// Host memory that backs part of a region (an mmap() of it), unmapped when dropped.
pub trait MappedArea: Send {
    fn host_address(&self) -> usize;
}

/// Why a VFIO interrupt call failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed: {err}")]
pub struct IrqError {
    pub what: &'static str,
    pub err: String,
}

/// The operations the device model needs from the host function.
pub trait HostFunction: Send + Sync {
    /// The region at `index`, if the function has it (size 0 counts as absent).
    fn region(&self, index: u32) -> Option<RegionInfo>;
    /// Reads `data.len()` bytes at `offset` of region `index`; unread bytes stay as they are.
    fn read(&self, index: u32, offset: u64, data: &mut [u8]);
    fn write(&self, index: u32, offset: u64, data: &[u8]);
    /// How many interrupts the function offers at interrupt index `index`.
    fn irq_count(&self, index: u32) -> u32;
    /// Signals `fds[i]` for interrupt `i` of `index` from now on.
    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> Result<(), IrqError>;
    fn disable_irq(&self, index: u32) -> Result<(), IrqError>;
    /// Unmasks INTx, which VFIO masks each time it signals it.
    fn unmask_intx(&self) -> Result<(), IrqError>;
    fn reset(&self);
    /// mmap()s `size` bytes of region `index` from `offset`.
    fn mmap(&self, index: u32, offset: u64, size: u64) -> Option<Box<dyn MappedArea>>;
}

/// An mmap() of a VFIO device region.
struct Mmap {
    addr: usize,
    len: usize,
}

impl MappedArea for Mmap {
    fn host_address(&self) -> usize {
        self.addr
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly the mapping made in `mmap` below, which nothing
        // else unmaps; users drop their KVM memory slots before the area.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A function opened with vfio-ioctls.
pub struct VfioFunction(pub Arc<VfioDevice>);

fn irq_error(what: &'static str) -> impl FnOnce(vfio_ioctls::VfioError) -> IrqError {
    move |e| IrqError {
        what,
        err: e.to_string(),
    }
}

impl HostFunction for VfioFunction {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        let size = self.0.get_region_size(index);
        if size == 0 {
            return None;
        }
        let mut mmap = Vec::new();
        if self.0.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP != 0 {
            let caps = self.0.get_region_caps(index);
            let sparse = caps.iter().find_map(|c| match c {
                VfioRegionInfoCap::SparseMmap(s) => Some(s),
                _ => None,
            });
            match sparse {
                Some(s) => mmap.extend(s.areas.iter().map(|a| (a.offset, a.size))),
                None => mmap.push((0, size)),
            }
        }
        Some(RegionInfo { size, mmap })
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        self.0.region_read(index, data, offset);
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        self.0.region_write(index, data, offset);
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.0.get_irq_info(index).map_or(0, |i| i.count)
    }

    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> Result<(), IrqError> {
        self.0
            .enable_irq(index, fds.to_vec())
            .map_err(irq_error("VFIO_DEVICE_SET_IRQS (enable)"))
    }

    fn disable_irq(&self, index: u32) -> Result<(), IrqError> {
        self.0
            .disable_irq(index)
            .map_err(irq_error("VFIO_DEVICE_SET_IRQS (disable)"))
    }

    fn unmask_intx(&self) -> Result<(), IrqError> {
        self.0
            .unmask_irq(INTX_IRQ)
            .map_err(irq_error("VFIO_DEVICE_SET_IRQS (unmask INTx)"))
    }

    fn reset(&self) {
        self.0.reset();
    }

    fn mmap(&self, index: u32, offset: u64, size: u64) -> Option<Box<dyn MappedArea>> {
        let len = usize::try_from(size).ok()?;
        let file_offset = self.0.get_region_offset(index).checked_add(offset)?;
        let file_offset = libc::off_t::try_from(file_offset).ok()?;
        // SAFETY: a fresh shared mapping of the device file at an address the kernel picks;
        // the result is checked, and the memory is only handed to KVM, never dereferenced
        // here. `Mmap` unmaps it when dropped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.0.as_raw_fd(),
                file_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        Some(Box::new(Mmap {
            addr: ptr as usize,
            len,
        }))
    }
}
