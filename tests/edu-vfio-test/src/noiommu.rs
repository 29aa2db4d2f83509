//! No-IOMMU mode: the guest has no IOMMU, so the device sees guest-physical addresses. The BAR
//! is reached through sysfs `resource0`, and the buffer's guest-physical address comes from
//! /proc/self/pagemap (needs root).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::edu::{self, Bar0};
use crate::vfio::DmaBuffer;
use crate::{Outcome, PAGE, XFER};

/// PCI command register bits (PCI local bus spec 6.2.2).
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;
/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_PFN_MASK: u64 = (1 << 55) - 1;
/// edu masks DMA addresses to 28 bits.
const EDU_DMA_LIMIT: u64 = 1 << 28;
const BUFFER_PAGES: usize = 256;

struct SysfsBar {
    ptr: *mut u8,
    len: usize,
}

impl SysfsBar {
    fn open(bdf: &str) -> Result<Self, String> {
        let path = format!("/sys/bus/pci/devices/{bdf}/resource0");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
        // SAFETY: mapping a sysfs BAR file shared; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(SysfsBar {
            ptr: ptr.cast(),
            len,
        })
    }

    fn reg(&self, offset: u64) -> Result<*mut u32, String> {
        if !offset.is_multiple_of(4) || offset as usize + 4 > self.len {
            return Err(format!("BAR offset {offset:#x} out of range"));
        }
        // SAFETY: offset is 4-aligned and inside the mapping (checked above).
        Ok(unsafe { self.ptr.add(offset as usize) }.cast())
    }
}

impl Bar0 for SysfsBar {
    fn read32(&self, offset: u64) -> Result<u32, String> {
        let p = self.reg(offset)?;
        // SAFETY: `p` points at an aligned register inside the live BAR mapping.
        Ok(unsafe { std::ptr::read_volatile(p) })
    }
    fn write32(&self, offset: u64, value: u32) -> Result<(), String> {
        let p = self.reg(offset)?;
        // SAFETY: as in read32.
        unsafe { std::ptr::write_volatile(p, value) };
        Ok(())
    }
}

impl Drop for SysfsBar {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn gpa_of(pagemap: &File, vaddr: u64) -> Result<u64, String> {
    let mut e = [0u8; 8];
    pagemap
        .read_exact_at(&mut e, vaddr / PAGE * 8)
        .map_err(|e| format!("pagemap: {e}"))?;
    let entry = u64::from_le_bytes(e);
    let pfn = entry & PAGEMAP_PFN_MASK;
    if entry & PAGEMAP_PRESENT == 0 || pfn == 0 {
        return Err("pagemap gives no PFN (not root, or page not present)".into());
    }
    Ok(pfn * PAGE + vaddr % PAGE)
}

fn enable(bdf: &str) -> Result<(), String> {
    let path = format!("/sys/bus/pci/devices/{bdf}/config");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    let mut c = [0u8; 2];
    f.read_exact_at(&mut c, PCI_COMMAND)
        .map_err(|e| e.to_string())?;
    let cmd = u16::from_le_bytes(c) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    f.write_all_at(&cmd.to_le_bytes(), PCI_COMMAND)
        .map_err(|e| e.to_string())
}

pub fn run(bdf: &str) -> Result<Outcome, String> {
    enable(bdf)?;
    let bar = SysfsBar::open(bdf)?;
    let mut out = Outcome {
        passed: 0,
        failed: 0,
    };
    out.record("ident", crate::test_ident(&bar));
    let mut buf = DmaBuffer::new(BUFFER_PAGES * PAGE as usize).map_err(|e| e.to_string())?;
    let pagemap = File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    // Two pages the device can reach (below its 28-bit DMA limit).
    let mut low = Vec::new();
    for i in 0..BUFFER_PAGES {
        let gpa = gpa_of(&pagemap, buf.addr() + i as u64 * PAGE)?;
        if gpa + PAGE <= EDU_DMA_LIMIT {
            low.push((i, gpa));
        }
        if low.len() == 2 {
            break;
        }
    }
    let [(src_i, src_gpa), (dst_i, dst_gpa)] = low[..] else {
        return Err("no buffer pages below 256 MiB guest-physical; give the guest less RAM".into());
    };
    let want: Vec<u8> = (0..XFER as usize).map(|i| (i as u8) ^ 0x3c).collect();
    let page = PAGE as usize;
    buf.as_mut_slice()[src_i * page..src_i * page + XFER as usize].copy_from_slice(&want);
    buf.as_mut_slice()[dst_i * page..dst_i * page + XFER as usize].fill(0);
    let r = (|| {
        edu::dma(&bar, src_gpa, edu::DMA_BUFFER, XFER, false)?;
        edu::dma(&bar, edu::DMA_BUFFER, dst_gpa, XFER, true)?;
        let got = &buf.as_slice()[dst_i * page..dst_i * page + XFER as usize];
        if got != want.as_slice() {
            return Err(format!("DMA to GPA {dst_gpa:#x} did not land"));
        }
        Ok(format!(
            "{XFER} bytes GPA {src_gpa:#x} -> device -> GPA {dst_gpa:#x} (IOVA = GPA)"
        ))
    })();
    out.record("dma-identity", r);
    Ok(out)
}
