//! A minimal Linux VFIO (type1 IOMMU) client: container, group, device, DMA map/unmap, MSI.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;

use vfio_bindings::bindings::vfio::{
    vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_irq_set,
    vfio_region_info, VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE, VFIO_GROUP_FLAGS_VIABLE, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
};

/// VFIO ioctl numbers are `_IO(VFIO_TYPE, VFIO_BASE + n)` (include/uapi/linux/vfio.h).
const fn vfio_ioctl(n: u32) -> libc::c_ulong {
    const VFIO_TYPE: u32 = 0x3b;
    const VFIO_BASE: u32 = 100;
    ((VFIO_TYPE << 8) | (VFIO_BASE + n)) as libc::c_ulong
}
const VFIO_GET_API_VERSION: libc::c_ulong = vfio_ioctl(0);
const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_ioctl(1);
const VFIO_SET_IOMMU: libc::c_ulong = vfio_ioctl(2);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_ioctl(3);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_ioctl(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_ioctl(6);
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_ioctl(8);
const VFIO_DEVICE_SET_IRQS: libc::c_ulong = vfio_ioctl(10);
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_ioctl(13);
const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_ioctl(14);

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("Cannot open {0}: {1}")]
    Open(String, std::io::Error),
    #[error("{0} has no IOMMU group: is the IOMMU enabled?")]
    NoGroup(String),
    #[error("VFIO API version {0} is not supported")]
    ApiVersion(i32),
    #[error("The VFIO type1v2 IOMMU is not available")]
    NoType1v2,
    #[error("IOMMU group {0} is not viable: bind every device in it to vfio-pci")]
    NotViable(u32),
    #[error("ioctl {0} failed: {1}")]
    Ioctl(&'static str, std::io::Error),
    #[error("Config/region access failed: {0}")]
    Io(std::io::Error),
}

fn check(ret: libc::c_int, what: &'static str) -> Result<libc::c_int, VfioError> {
    if ret < 0 {
        Err(VfioError::Ioctl(what, std::io::Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

/// A container with one group and one device.
pub struct VfioDevice {
    container: File,
    _group: File,
    device: File,
}

/// Where a region lives in the device file.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub offset: u64,
    pub size: u64,
}

impl VfioDevice {
    /// Opens the device `bdf` (e.g. "0000:00:03.0"), already bound to vfio-pci.
    pub fn open(bdf: &str) -> Result<Self, VfioError> {
        let link = format!("/sys/bus/pci/devices/{bdf}/iommu_group");
        let group_path =
            std::fs::read_link(&link).map_err(|_| VfioError::NoGroup(bdf.to_string()))?;
        let group_id: u32 = group_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| VfioError::NoGroup(bdf.to_string()))?;
        let open = |p: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| VfioError::Open(p.to_string(), e))
        };
        let container = open("/dev/vfio/vfio")?;
        // SAFETY: the ioctl takes no argument and only returns an integer.
        let version = unsafe { libc::ioctl(container.as_raw_fd(), VFIO_GET_API_VERSION) };
        if version != VFIO_API_VERSION as i32 {
            return Err(VfioError::ApiVersion(version));
        }
        // SAFETY: the ioctl takes an integer extension id and returns an integer.
        let has = unsafe {
            libc::ioctl(
                container.as_raw_fd(),
                VFIO_CHECK_EXTENSION,
                VFIO_TYPE1v2_IOMMU as libc::c_ulong,
            )
        };
        if has <= 0 {
            return Err(VfioError::NoType1v2);
        }
        let group = open(&format!("/dev/vfio/{group_id}"))?;
        let mut status = vfio_group_status {
            argsz: std::mem::size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        check(
            // SAFETY: `status` is a valid vfio_group_status the kernel fills, argsz set.
            unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_STATUS, &mut status) },
            "VFIO_GROUP_GET_STATUS",
        )?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::NotViable(group_id));
        }
        let cfd: RawFd = container.as_raw_fd();
        check(
            // SAFETY: the kernel reads one i32 (the container fd) through the pointer.
            unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_SET_CONTAINER, &cfd) },
            "VFIO_GROUP_SET_CONTAINER",
        )?;
        check(
            // SAFETY: the ioctl takes an integer IOMMU type.
            unsafe {
                libc::ioctl(
                    container.as_raw_fd(),
                    VFIO_SET_IOMMU,
                    VFIO_TYPE1v2_IOMMU as libc::c_ulong,
                )
            },
            "VFIO_SET_IOMMU",
        )?;
        let name = CString::new(bdf).map_err(|_| VfioError::NoGroup(bdf.to_string()))?;
        let fd = check(
            // SAFETY: `name` is a NUL-terminated string that outlives the call.
            unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD, name.as_ptr()) },
            "VFIO_GROUP_GET_DEVICE_FD",
        )?;
        // SAFETY: `fd` is a new file descriptor the kernel just gave us; nothing else owns it.
        let device = unsafe { File::from_raw_fd(fd) };
        Ok(VfioDevice {
            container,
            _group: group,
            device,
        })
    }

    pub fn region(&self, index: u32) -> Result<Region, VfioError> {
        let mut info = vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        check(
            // SAFETY: `info` is a valid vfio_region_info with argsz set; the kernel fills it.
            unsafe {
                libc::ioctl(
                    self.device.as_raw_fd(),
                    VFIO_DEVICE_GET_REGION_INFO,
                    &mut info,
                )
            },
            "VFIO_DEVICE_GET_REGION_INFO",
        )?;
        Ok(Region {
            offset: info.offset,
            size: info.size,
        })
    }

    fn check_range(region: Region, offset: u64, len: u64) -> Result<(), VfioError> {
        if offset.checked_add(len).is_none_or(|end| end > region.size) {
            return Err(VfioError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "offset {offset:#x} outside a {:#x}-byte region",
                    region.size
                ),
            )));
        }
        Ok(())
    }

    pub fn read32(&self, region: Region, offset: u64) -> Result<u32, VfioError> {
        Self::check_range(region, offset, 4)?;
        let mut b = [0u8; 4];
        self.device
            .read_exact_at(&mut b, region.offset + offset)
            .map_err(VfioError::Io)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn write32(&self, region: Region, offset: u64, v: u32) -> Result<(), VfioError> {
        Self::check_range(region, offset, 4)?;
        self.device
            .write_all_at(&v.to_le_bytes(), region.offset + offset)
            .map_err(VfioError::Io)
    }

    pub fn read16(&self, region: Region, offset: u64) -> Result<u16, VfioError> {
        Self::check_range(region, offset, 2)?;
        let mut b = [0u8; 2];
        self.device
            .read_exact_at(&mut b, region.offset + offset)
            .map_err(VfioError::Io)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn write16(&self, region: Region, offset: u64, v: u16) -> Result<(), VfioError> {
        Self::check_range(region, offset, 2)?;
        self.device
            .write_all_at(&v.to_le_bytes(), region.offset + offset)
            .map_err(VfioError::Io)
    }

    /// Maps `len` bytes of our memory at `vaddr` to the device at `iova`, read and write.
    pub fn map_dma(&self, vaddr: u64, iova: u64, len: u64) -> Result<(), VfioError> {
        let map = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size: len,
        };
        check(
            // SAFETY: `map` is a valid vfio_iommu_type1_dma_map; the kernel pins the pages of
            // our own mapping, which the caller keeps alive until unmap.
            unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &map) },
            "VFIO_IOMMU_MAP_DMA",
        )?;
        Ok(())
    }

    pub fn unmap_dma(&self, iova: u64, len: u64) -> Result<(), VfioError> {
        let mut unmap = vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size: len,
            data: Default::default(),
        };
        check(
            // SAFETY: `unmap` is a valid vfio_iommu_type1_dma_unmap the kernel reads and updates.
            unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA, &mut unmap) },
            "VFIO_IOMMU_UNMAP_DMA",
        )?;
        Ok(())
    }

    /// Unmasks INTx, which VFIO masks each time it signals it.
    pub fn unmask_intx(&self) -> Result<(), VfioError> {
        let set = vfio_irq_set {
            argsz: std::mem::size_of::<vfio_irq_set>() as u32,
            flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            index: 0,
            start: 0,
            count: 1,
            data: Default::default(),
        };
        check(
            // SAFETY: `set` is a complete vfio_irq_set with no data; argsz covers it.
            unsafe { libc::ioctl(self.device.as_raw_fd(), VFIO_DEVICE_SET_IRQS, &set) },
            "VFIO_DEVICE_SET_IRQS (unmask)",
        )?;
        Ok(())
    }

    /// Routes vector 0 of IRQ index `index` (0 = INTx, 1 = MSI) to `eventfd`, or disables it
    /// with None.
    pub fn set_irq_eventfd(&self, index: u32, eventfd: Option<RawFd>) -> Result<(), VfioError> {
        #[repr(C)]
        struct IrqSetOne {
            hdr: vfio_irq_set,
            fd: i32,
        }
        let (flags, count) = match eventfd {
            Some(_) => (VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 1),
            None => (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0),
        };
        let set = IrqSetOne {
            hdr: vfio_irq_set {
                argsz: std::mem::size_of::<IrqSetOne>() as u32,
                flags,
                index,
                start: 0,
                count,
                data: Default::default(),
            },
            fd: eventfd.unwrap_or(-1),
        };
        check(
            // SAFETY: `set` is a vfio_irq_set followed by `count` i32 eventfds, argsz covers both.
            unsafe { libc::ioctl(self.device.as_raw_fd(), VFIO_DEVICE_SET_IRQS, &set) },
            "VFIO_DEVICE_SET_IRQS",
        )?;
        Ok(())
    }
}

/// Anonymous, page-aligned memory for DMA buffers: locked small pages, or one huge page.
pub struct DmaBuffer {
    ptr: *mut u8,
    len: usize,
}

/// 2 MiB, the size of a second-level superpage.
pub const HUGE_PAGE: usize = 2 << 20;

/// Where the kernel keeps its count of reserved 2 MiB pages.
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl DmaBuffer {
    pub fn new(len: usize) -> Result<Self, VfioError> {
        // SAFETY: an anonymous private mapping; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(VfioError::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: [ptr, ptr+len) is the mapping just created; locking it keeps its pages put.
        if unsafe { libc::mlock(ptr, len) } != 0 {
            let err = std::io::Error::last_os_error();
            // SAFETY: unmapping the mapping created above, which nothing else references.
            unsafe { libc::munmap(ptr, len) };
            return Err(VfioError::Io(err));
        }
        Ok(DmaBuffer {
            ptr: ptr.cast(),
            len,
        })
    }

    /// One 2 MiB huge page (hugetlb), so the buffer is contiguous in guest-physical memory
    /// and naturally aligned: the guest's IOMMU driver maps it with one second-level
    /// superpage. Hugetlb pages are never swapped, so it is not mlock()ed.
    pub fn huge() -> Result<Self, String> {
        // Reserve a huge page if none is (needs root, as the rest of this program does).
        let reserved = std::fs::read_to_string(NR_HUGEPAGES)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if reserved == 0 {
            std::fs::write(NR_HUGEPAGES, "1").map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?;
        }
        // SAFETY: an anonymous private hugetlb mapping; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                HUGE_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "no 2 MiB huge page ({NR_HUGEPAGES}: {}): {}",
                std::fs::read_to_string(NR_HUGEPAGES)
                    .unwrap_or_default()
                    .trim(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(DmaBuffer {
            ptr: ptr.cast(),
            len: HUGE_PAGE,
        })
    }

    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len` bytes for the lifetime of self. A device may
        // write it by DMA; callers read it only after the DMA engine reports completion.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self guarantees no other Rust reference exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no references outlive self.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
