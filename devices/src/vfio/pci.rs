//! A host PCI function passed through with VFIO (Linux Documentation/driver-api/vfio.rst):
//! configuration space through the VFIO config region (the kernel's vfio-pci already
//! virtualises BARs and command bits), with the MSI capability virtualised here so its
//! interrupts can be relayed through the VMM (and so through interrupt remapping), MSI-X and the
//! expansion ROM hidden, and BAR accesses forwarded to the device's regions.

use std::sync::{Arc, Mutex};

use iommu::Bdf;
use log::{info, warn};
use std::os::fd::AsRawFd;

use vfio_bindings::bindings::vfio::{VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm_sys_util::eventfd::EventFd;

use super::host::HostDevice;
use super::relay::MsiRelay;
use crate::interrupt::{MsiMessage, MsiTrigger};
use crate::pci::PciDevice;

/// Capability IDs (PCI local bus spec appendix H): MSI and MSI-X.
const CAP_ID_MSI: u8 = 0x05;
const CAP_ID_MSIX: u8 = 0x11;
/// Capabilities pointer (0x34) and the expansion ROM BAR (0x30) of a type-0 header.
const REG_CAPABILITIES: usize = 0x34 / 4;
const REG_ROM: usize = 0x30 / 4;
/// MSI message control bits: enable (0), multiple message capable (3:1), multiple message
/// enable (6:4), 64-bit (7), per-vector masking (8).
const MSI_CTL_ENABLE: u16 = 1 << 0;
const MSI_CTL_MMC: u16 = 0x7 << 1;
const MSI_CTL_MME: u16 = 0x7 << 4;
const MSI_CTL_64BIT: u16 = 1 << 7;
const MSI_CTL_PVM: u16 = 1 << 8;

/// Maps host memory into the guest-physical address space (the VMM does it with KVM memory
/// slots), so a BAR's accesses need no exit.
pub trait GuestMmioMapper: Send + Sync {
    /// Maps `size` bytes at host address `host` at guest-physical `gpa`; returns a handle.
    fn map(&self, gpa: u64, size: u64, host: usize) -> Result<u32, String>;
    fn unmap(&self, handle: u32);
}

/// What the device waits on before the guest may turn bus mastering on: its DMA mappings
/// being in place (the VMM may still be making them).
pub trait DmaGate: Send + Sync {
    fn wait_ready(&self);
}

/// A BAR whose VFIO region is mmap()ed, and where (if anywhere) it is mapped in the guest.
struct MappedBar {
    host: usize,
    size: usize,
    handle: Option<u32>,
}

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    #[error("VFIO: cannot open the container /dev/vfio/vfio: {0}")]
    Container(vfio_ioctls::VfioError),
    #[error("VFIO: cannot open {0}: {1}")]
    Device(String, vfio_ioctls::VfioError),
}

/// The guest's view of the device's MSI capability: one vector, no per-vector masking.
#[derive(Debug, Default)]
struct MsiState {
    offset: usize,
    is_64bit: bool,
    control: u16,
    address: u64,
    data: u16,
}

impl MsiState {
    /// Length of the capability as the guest sees it (without mask and pending registers).
    fn len(&self) -> usize {
        if self.is_64bit {
            14
        } else {
            10
        }
    }

    fn data_offset(&self) -> usize {
        if self.is_64bit {
            12
        } else {
            8
        }
    }

    fn read_byte(&self, physical: u8, i: usize) -> u8 {
        let ctl = self.control.to_le_bytes();
        let addr = self.address.to_le_bytes();
        let data = self.data.to_le_bytes();
        let d = self.data_offset();
        match i {
            0 | 1 => physical,
            2 | 3 => ctl[i - 2],
            4..=7 => addr[i - 4],
            8..=11 if self.is_64bit => addr[i - 4],
            _ if (d..d + 2).contains(&i) => data[i - d],
            _ => 0,
        }
    }

    fn write_byte(&mut self, i: usize, v: u8) {
        let d = self.data_offset();
        let set = |word: u64, byte: usize, v: u8| {
            (word & !(0xff << (byte * 8))) | (u64::from(v) << (byte * 8))
        };
        match i {
            2 => {
                let writable = MSI_CTL_ENABLE | MSI_CTL_MME;
                self.control = (self.control & !writable) | (u16::from(v) & writable);
            }
            4 => self.address = set(self.address, 0, v & 0xfc),
            5..=7 => self.address = set(self.address, i - 4, v),
            8..=11 if self.is_64bit => self.address = set(self.address, i - 4, v),
            _ if (d..d + 2).contains(&i) => {
                self.data = set(u64::from(self.data), i - d, v) as u16;
            }
            _ => {}
        }
    }
}

/// A passed-through PCI function.
pub struct VfioPciDevice {
    device: Arc<VfioDevice>,
    container: Arc<VfioContainer>,
    host: HostDevice,
    address: Bdf,
    msi: Option<MsiState>,
    /// Capability header offsets whose next pointer skips a hidden capability.
    next_override: Vec<(usize, u8)>,
    first_capability: u8,
    trigger: Arc<dyn MsiTrigger>,
    message: Arc<Mutex<Option<MsiMessage>>>,
    relay: Option<MsiRelay>,
    mapper: Option<Arc<dyn GuestMmioMapper>>,
    mapped: [Option<MappedBar>; 6],
    gate: Option<Arc<dyn DmaGate>>,
}

impl VfioPciDevice {
    /// Opens `host` (already checked) in a container of its own and resets it. Its MSIs go to
    /// `trigger` with requester id `address`.
    /// With a `mapper`, BARs VFIO lets us mmap() are mapped straight into the guest where it
    /// places them; the rest are trapped and forwarded.
    pub fn open(
        host: HostDevice,
        address: Bdf,
        trigger: Arc<dyn MsiTrigger>,
        mapper: Option<Arc<dyn GuestMmioMapper>>,
    ) -> Result<Self, VfioPciError> {
        let container = Arc::new(VfioContainer::new(None).map_err(VfioPciError::Container)?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device = VfioDevice::new(&host.sysfs, ops, false)
            .map_err(|e| VfioPciError::Device(host.name.clone(), e))?;
        device.reset();
        let mut dev = VfioPciDevice {
            device: Arc::new(device),
            container,
            host,
            address,
            msi: None,
            next_override: Vec::new(),
            first_capability: 0,
            trigger,
            message: Arc::new(Mutex::new(None)),
            relay: None,
            mapper,
            mapped: Default::default(),
            gate: None,
        };
        dev.scan_capabilities();
        if dev.mapper.is_some() {
            dev.mmap_bars();
        }
        info!(
            "vfio: {} (group {}) at guest {}; MSI {}",
            dev.host.name,
            dev.host.group,
            address,
            dev.msi
                .as_ref()
                .map_or("absent".to_string(), |m| format!("at {:#x}", m.offset))
        );
        Ok(dev)
    }

    /// mmap()s every BAR region VFIO allows to be mapped whole (page-sized, no sparse areas,
    /// which is where an MSI-X table would be).
    fn mmap_bars(&mut self) {
        for bar in 0..6u32 {
            let flags = self.device.get_region_flags(bar);
            let size = self.device.get_region_size(bar);
            if flags & VFIO_REGION_INFO_FLAG_MMAP == 0
                || size < 0x1000
                || !size.is_multiple_of(0x1000)
                || !self.device.get_region_caps(bar).is_empty()
            {
                continue;
            }
            let Ok(len) = usize::try_from(size) else {
                continue;
            };
            let Ok(offset) = libc::off_t::try_from(self.device.get_region_offset(bar)) else {
                continue;
            };
            // SAFETY: a fresh shared mapping of the device's region, at an address the kernel
            // picks; the result is checked, and the mapping is only handed to KVM (never
            // dereferenced here) and unmapped in Drop.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.device.as_raw_fd(),
                    offset,
                )
            };
            if ptr == libc::MAP_FAILED {
                warn!(
                    "vfio {}: BAR {bar} cannot be mmap()ed ({}); it is trapped",
                    self.host.name,
                    std::io::Error::last_os_error()
                );
                continue;
            }
            self.mapped[bar as usize] = Some(MappedBar {
                host: ptr as usize,
                size: len,
                handle: None,
            });
        }
    }

    /// Command register writes (bus mastering) wait for `gate` first.
    pub fn set_dma_gate(&mut self, gate: Arc<dyn DmaGate>) {
        self.gate = Some(gate);
    }

    /// The container holding this device's DMA mappings.
    pub fn container(&self) -> Arc<VfioContainer> {
        self.container.clone()
    }

    pub fn host(&self) -> &HostDevice {
        &self.host
    }

    fn physical_config(&self, offset: usize, buf: &mut [u8]) {
        buf.fill(0xff);
        self.device
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, buf, offset as u64);
    }

    fn physical_byte(&self, offset: usize) -> u8 {
        let mut b = [0u8; 1];
        self.physical_config(offset, &mut b);
        b[0]
    }

    /// Walks the capability list: finds MSI, and hides MSI-X (its table would need trapping).
    fn scan_capabilities(&mut self) {
        let mut visible: Vec<usize> = Vec::new();
        let mut ptr = self.physical_byte(0x34) & 0xfc;
        let mut seen = 0;
        while ptr >= 0x40 && seen < 48 {
            seen += 1;
            let off = usize::from(ptr);
            let id = self.physical_byte(off);
            match id {
                CAP_ID_MSIX => {}
                CAP_ID_MSI => {
                    let mut c = [0u8; 2];
                    self.physical_config(off + 2, &mut c);
                    let control = u16::from_le_bytes(c);
                    self.msi = Some(MsiState {
                        offset: off,
                        is_64bit: control & MSI_CTL_64BIT != 0,
                        // One vector, no masking: MMC and PVM read as zero.
                        control: control & !(MSI_CTL_MMC | MSI_CTL_PVM | MSI_CTL_ENABLE),
                        ..Default::default()
                    });
                    visible.push(off);
                }
                _ => visible.push(off),
            }
            ptr = self.physical_byte(off + 1) & 0xfc;
        }
        self.first_capability = visible.first().map_or(0, |o| *o as u8);
        for (i, off) in visible.iter().enumerate() {
            let next = visible.get(i + 1).map_or(0, |n| *n as u8);
            if self.physical_byte(off + 1) & 0xfc != next {
                self.next_override.push((off + 1, next));
            }
        }
    }

    fn virtual_byte(&self, offset: usize, physical: u8) -> u8 {
        if offset == REG_CAPABILITIES * 4 {
            return self.first_capability;
        }
        if let Some((_, next)) = self.next_override.iter().find(|(o, _)| *o == offset) {
            return *next;
        }
        match &self.msi {
            Some(m) if (m.offset..m.offset + m.len()).contains(&offset) => {
                m.read_byte(physical, offset - m.offset)
            }
            _ => physical,
        }
    }

    fn msi_range(&self) -> Option<std::ops::Range<usize>> {
        self.msi.as_ref().map(|m| m.offset..m.offset + m.len())
    }

    /// Applies the guest's MSI programming: the message the relay sends, and enabling or
    /// disabling the device's MSI through VFIO.
    fn update_msi(&mut self) {
        let Some(m) = &self.msi else { return };
        let enabled = m.control & MSI_CTL_ENABLE != 0;
        let msg = MsiMessage {
            address: m.address,
            data: u32::from(m.data),
            source: self.address,
        };
        if let Ok(mut slot) = self.message.lock() {
            *slot = enabled.then_some(msg);
        }
        match (enabled, self.relay.is_some()) {
            (true, false) => match self.start_msi() {
                Ok(r) => self.relay = Some(r),
                Err(e) => warn!("vfio {}: cannot enable MSI: {e}", self.host.name),
            },
            (false, true) => {
                self.relay = None;
                if let Err(e) = self.device.disable_msi() {
                    warn!("vfio {}: cannot disable MSI: {e}", self.host.name);
                }
            }
            _ => {}
        }
    }

    fn start_msi(&self) -> Result<MsiRelay, String> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
        self.device
            .enable_msi(vec![&irq])
            .map_err(|e| e.to_string())?;
        MsiRelay::start(irq, self.message.clone(), self.trigger.clone()).map_err(|e| e.to_string())
    }
}

impl PciDevice for VfioPciDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        if reg_idx == REG_ROM || reg_idx >= 1024 {
            return 0;
        }
        let mut b = [0u8; 4];
        self.physical_config(reg_idx * 4, &mut b);
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = self.virtual_byte(reg_idx * 4 + i, *byte);
        }
        u32::from_le_bytes(b)
    }

    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        if reg_idx == REG_ROM || reg_idx >= 1024 || offset as usize + data.len() > 4 {
            return;
        }
        let base = reg_idx * 4 + offset as usize;
        // Turning bus mastering on waits until the device's DMA mappings are in place.
        if reg_idx == 1 && offset == 0 && data.first().is_some_and(|c| c & 0x4 != 0) {
            if let Some(g) = &self.gate {
                g.wait_ready();
            }
        }
        let msi = self.msi_range();
        let hits_msi = msi
            .as_ref()
            .is_some_and(|r| r.start < base + data.len() && base < r.end);
        if !hits_msi {
            // vfio-pci virtualises BARs, ROM and command bits and filters what the device
            // must not see; the access goes to it whole.
            self.device
                .region_write(VFIO_PCI_CONFIG_REGION_INDEX, data, base as u64);
            return;
        }
        for (i, v) in data.iter().enumerate() {
            let off = base + i;
            match (&msi, self.msi.as_mut()) {
                (Some(r), Some(m)) if r.contains(&off) => m.write_byte(off - r.start, *v),
                _ => self
                    .device
                    .region_write(VFIO_PCI_CONFIG_REGION_INDEX, &[*v], off as u64),
            }
        }
        self.update_msi();
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        self.device.region_read(bar as u32, data, offset);
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.device.region_write(bar as u32, data, offset);
    }

    fn bar_moved(&mut self, bar: usize, base: Option<u64>) {
        let (Some(mapper), Some(Some(m))) = (&self.mapper, self.mapped.get_mut(bar)) else {
            return;
        };
        if let Some(h) = m.handle.take() {
            mapper.unmap(h);
        }
        if let Some(gpa) = base {
            match mapper.map(gpa, m.size as u64, m.host) {
                Ok(h) => {
                    m.handle = Some(h);
                    info!(
                        "vfio {}: BAR {bar} mapped into the guest at {gpa:#x}",
                        self.host.name
                    );
                }
                Err(e) => warn!(
                    "vfio {}: BAR {bar} at {gpa:#x} not mapped ({e}); it is trapped",
                    self.host.name
                ),
            }
        }
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        if self.relay.take().is_some() {
            let _ = self.device.disable_msi();
        }
        for m in self.mapped.iter_mut().flatten() {
            if let (Some(mapper), Some(h)) = (&self.mapper, m.handle.take()) {
                mapper.unmap(h);
            }
            // SAFETY: `host`/`size` are the mapping made in mmap_bars, no longer in KVM.
            unsafe { libc::munmap(m.host as *mut libc::c_void, m.size) };
        }
        // Leave the device quiet for whoever takes it next.
        self.device.reset();
        info!("vfio: {} reset and released", self.host.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(m: &mut MsiState, off: usize, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            m.write_byte(off + i, *b);
        }
    }

    fn read(m: &MsiState, off: usize, len: usize) -> Vec<u8> {
        (off..off + len).map(|i| m.read_byte(0xee, i)).collect()
    }

    #[test]
    fn msi_state_64bit_layout_and_writable_bits() {
        let mut m = MsiState {
            offset: 0x50,
            is_64bit: true,
            control: MSI_CTL_64BIT,
            ..Default::default()
        };
        write(&mut m, 4, &0xfee0_1007u32.to_le_bytes());
        write(&mut m, 8, &0x1u32.to_le_bytes());
        write(&mut m, 12, &0x4041u16.to_le_bytes());
        // Enable, MME, and an attempt to set the read-only MMC and 64-bit bits.
        write(&mut m, 2, &(0xffffu16).to_le_bytes());
        assert_eq!(
            m.address, 0x1_fee0_1004,
            "low two address bits are reserved"
        );
        assert_eq!(m.data, 0x4041);
        assert_eq!(m.control, MSI_CTL_64BIT | MSI_CTL_ENABLE | MSI_CTL_MME);
        assert_eq!(
            read(&m, 0, 2),
            vec![0xee, 0xee],
            "ID and next come from the device"
        );
        assert_eq!(read(&m, 12, 2), vec![0x41, 0x40]);
        assert_eq!(m.len(), 14);
    }

    #[test]
    fn msi_state_32bit_layout() {
        let mut m = MsiState {
            offset: 0x50,
            is_64bit: false,
            ..Default::default()
        };
        write(&mut m, 4, &0xfee0_0000u32.to_le_bytes());
        write(&mut m, 8, &0x30u16.to_le_bytes());
        assert_eq!((m.address, m.data), (0xfee0_0000, 0x30));
        assert_eq!(read(&m, 8, 2), vec![0x30, 0]);
        assert_eq!(m.len(), 10);
    }
}
