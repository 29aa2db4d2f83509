//! The modern virtio-pci transport (virtio 1.2 section 4.1), modern-only: 1af4:1040+type,
//! revision 1, subsystem 1af4:1100, no I/O BAR, one 64-bit prefetchable memory BAR 0 of
//! 32 KiB with every structure in its own 4 KiB page (so a guest's vfio-pci can mmap all but
//! the MSI-X pages):
//!
//! | BAR 0 offset | structure                                  |
//! |--------------|--------------------------------------------|
//! | 0x0000       | common configuration (4.1.4.3)             |
//! | 0x1000       | ISR status (4.1.4.5)                       |
//! | 0x2000       | device-specific configuration (4.1.4.6)    |
//! | 0x3000       | notifications, queue i at 4 * i (4.1.4.4)  |
//! | 0x6000       | MSI-X table                                |
//! | 0x7000       | MSI-X PBA                                  |
//!
//! Capabilities: PCI Express (v2, root-complex integrated endpoint, Function Level Reset),
//! MSI-X (queues + 1 vectors, the shared [`EmulatedMsix`]), and the virtio structures COMMON,
//! NOTIFY, ISR, DEVICE and PCI_CFG. INTA with the read-to-clear ISR when MSI-X is off. With
//! [`VirtioPciDevice::add_ats`], the ATS extended capability at 0x100 (for a VT-d unit with
//! device-TLB support: the device's own translation cache is its ATC).
//!
//! The device status state machine (2.1, 3.1): a write of 0 resets the function; FEATURES_OK
//! is refused (reads back clear) unless the driver accepted VERSION_1, accepted nothing the
//! device did not offer, and, when the device offered ACCESS_PLATFORM (the VM has a vIOMMU),
//! accepted it, so a driver that does not use the IOMMU cannot make the device DMA to
//! untranslated addresses. At DRIVER_OK the device is activated with its queues; a guest
//! error sets DEVICE_NEEDS_RESET and raises a configuration interrupt.

use std::sync::Arc;

use iommu::{Bdf, CacheInvalidation};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::common_config::{
    CommonConfig, CommonWrite, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use super::memory::VirtioMemory;
use super::{
    ActivateContext, ActiveQueue, VirtioDevice, VirtioInterrupt, VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::dma::DeviceDma;
use crate::interrupt::IrqLine;
use crate::pci::configuration::{
    BarKind, BarSpec, ConfigError, PciConfiguration, PciIds, COMMAND_INTX_DISABLE, COMMAND_MASTER,
    REG_COMMAND_STATUS,
};
use crate::pci::emulated::{EmulatedMsix, EmulatedMsixError};
use crate::pci::vectors::VectorWiring;
use crate::pci::PciDevice;

mod interrupt;

pub use interrupt::{PciInterrupt, ISR_CONFIG, ISR_QUEUE};

/// The virtio vendor id (4.1.2).
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Device id of a modern device: 0x1040 + the virtio device type (4.1.2).
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// Revision of a non-transitional device (4.1.2.1: at least 1).
const VIRTIO_PCI_REVISION: u8 = 1;
/// Subsystem 1af4:1100 (QEMU's; 4.1.2.1 wants a subsystem id of at least 0x40).
const SUBSYSTEM_VENDOR: u16 = 0x1af4;
const SUBSYSTEM_ID: u16 = 0x1100;
/// INTA.
const INTX_PIN: u8 = 1;

/// BAR 0 and the structures in it.
pub const BAR0_SIZE: u64 = 0x8000;
pub const COMMON_OFFSET: u64 = 0x0000;
pub const ISR_OFFSET: u64 = 0x1000;
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
pub const MSIX_TABLE_OFFSET: u64 = 0x6000;
pub const MSIX_PBA_OFFSET: u64 = 0x7000;
/// Each structure's length as the capabilities give it (a page).
const REGION_LEN: u64 = 0x1000;
/// notify_off_multiplier: queue i notifies at NOTIFY_OFFSET + 4 * i (4.1.4.4).
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Queues the notification page has room for.
const MAX_QUEUES: usize = (REGION_LEN / NOTIFY_MULTIPLIER as u64) as usize;

/// Vendor-specific capability id (PCI 3.0 appendix H), the virtio structures' (4.1.4).
const PCI_CAP_ID_VNDR: u8 = 0x09;
/// PCI Express capability id (PCIe base 7.5.3).
const PCI_CAP_ID_EXP: u8 = 0x10;
/// virtio_pci_cap.cfg_type values (4.1.4).
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// sizeof(struct virtio_pci_cap) (4.1.4), and the notify and PCI_CFG capabilities' (4.1.4.4,
/// 4.1.4.9).
const VIRTIO_CAP_LEN: u8 = 16;
const VIRTIO_CAP_LONG_LEN: u8 = 20;

/// PCIe capability register, version 2, device/port type 9: root complex integrated
/// endpoint (PCIe base 7.5.3.2), as the function sits on the root bus with no root port.
const PCIE_CAPS: u16 = 0x2 | (0x9 << 4);
/// Device Capabilities: Function Level Reset capability (bit 28) and role-based error
/// reporting (bit 15) (PCIe base 7.5.3.3).
const PCIE_DEVCAP: u32 = (1 << 28) | (1 << 15);
/// Device Control after reset: relaxed ordering, no snoop, 512-byte max read request
/// (PCIe base 7.5.3.4).
const PCIE_DEVCTL_DEFAULT: u16 = (1 << 4) | (1 << 11) | (0b010 << 12);
/// Device Control bit 15: Initiate Function Level Reset (reads 0, PCIe base 7.5.3.4).
const PCIE_DEVCTL_FLR: u16 = 1 << 15;
/// Offsets in the PCIe capability (PCIe base 7.5.3).
const PCIE_DEVCAP_OFF: usize = 4;
const PCIE_DEVCTL_OFF: usize = 8;
/// A version 2 capability with its Device/Link/Slot 2 registers: 0x3c bytes.
const PCIE_CAP_LEN: usize = 0x3c;

/// ATS extended capability (PCIe base 10.5.1): ID, version.
const PCI_EXT_CAP_ID_ATS: u16 = 0x000f;
const ATS_VERSION: u8 = 1;
/// ATS Capability register: Page Aligned Request (bit 5), which Linux requires before it
/// enables ATS; Invalidate Queue Depth 0 (means 32) (10.5.1.2).
pub const ATS_CAP_PAGE_ALIGNED: u16 = 0x0020;
/// ATS Control register (10.5.1.3): Smallest Translation Unit [4:0] and Enable [15] are
/// writable, the rest reserved.
pub const ATS_CTRL_ENABLE: u16 = 0x8000;
pub const ATS_CTRL_STU: u16 = 0x001f;
/// Offsets in the ATS capability: capability and control registers.
pub const ATS_CAP_OFF: usize = 4;
pub const ATS_CTRL_OFF: usize = 6;

/// Offsets in a virtio_pci_cap (4.1.4): bar, offset, length; then pci_cfg_data (4.1.4.9).
const VCAP_BAR: usize = 4;
const VCAP_OFFSET: usize = 8;
const VCAP_LENGTH: usize = 12;
const VCAP_PCI_CFG_DATA: usize = 16;

/// Why a virtio-pci function could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("virtio-pci: configuration space: {0}")]
    Config(#[from] ConfigError),
    #[error("virtio-pci: {0}")]
    Msix(#[from] EmulatedMsixError),
    #[error("virtio-pci: cannot create a notification eventfd: {0}")]
    Eventfd(std::io::Error),
    #[error("virtio-pci: {0} queues (1..={MAX_QUEUES} supported)")]
    Queues(usize),
    #[error("virtio: cannot start the device's worker thread: {0}")]
    Worker(std::io::Error),
}

/// PCI class, subclass of a virtio device type (what QEMU reports).
fn class_of(device_type: u16) -> (u8, u8) {
    match device_type {
        // Network controller, Ethernet.
        1 => (0x02, 0x00),
        // Mass storage, SCSI (QEMU's virtio-blk).
        2 => (0x01, 0x00),
        // Unclassified, other (QEMU's virtio-rng).
        _ => (0x00, 0xff),
    }
}

/// One virtio device behind the modern virtio-pci transport.
pub struct VirtioPciDevice {
    address: Bdf,
    config: PciConfiguration,
    msix: EmulatedMsix,
    pcie_cap: usize,
    pci_cfg_cap: usize,
    /// The ATS extended capability's offset, when the function has one.
    ats_cap: Option<usize>,
    common: CommonConfig,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    /// The translated DMA, when the device offers ACCESS_PLATFORM.
    dma: Option<Arc<DeviceDma>>,
    interrupt: Arc<PciInterrupt>,
    /// One per queue, written by the driver's notifications.
    notify: Vec<EventFd>,
    /// Whether the device was activated since the last reset.
    active: bool,
}

impl VirtioPciDevice {
    /// The function at `address` for `device`. With `dma` the device offers ACCESS_PLATFORM
    /// and its DMA goes through it once negotiated; without, its DMA reaches `mem` directly.
    /// `wiring` is its MSI-X vectors' (the device signals them: no watcher), `intx` its INTA.
    pub fn new(
        address: Bdf,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        dma: Option<Arc<DeviceDma>>,
        wiring: VectorWiring,
        intx: Arc<dyn IrqLine>,
    ) -> Result<Self, VirtioPciError> {
        let maxima = device.queue_max_sizes().to_vec();
        if maxima.is_empty() || maxima.len() > MAX_QUEUES {
            return Err(VirtioPciError::Queues(maxima.len()));
        }
        let vectors = maxima.len() as u16 + 1;
        let (class, subclass) = class_of(device.device_type());
        let mut config = PciConfiguration::new(
            PciIds {
                vendor: VIRTIO_PCI_VENDOR,
                device: VIRTIO_PCI_DEVICE_BASE.wrapping_add(device.device_type()),
                class,
                subclass,
                prog_if: 0,
                revision: VIRTIO_PCI_REVISION,
                subsystem_vendor: SUBSYSTEM_VENDOR,
                subsystem: SUBSYSTEM_ID,
            },
            INTX_PIN,
        );
        config.add_bar(BarSpec {
            index: 0,
            size: BAR0_SIZE,
            kind: BarKind::Mem64 { prefetchable: true },
        })?;
        let pcie_cap = add_pcie_capability(&mut config)?;
        let msix = EmulatedMsix::add_to(
            &mut config,
            vectors,
            (0, MSIX_TABLE_OFFSET as u32),
            (0, MSIX_PBA_OFFSET as u32),
            wiring,
        )?;
        for (cfg_type, offset) in [
            (VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET),
            (VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET),
            (VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CONFIG_OFFSET),
        ] {
            let body = virtio_cap(VIRTIO_CAP_LEN, cfg_type, 0, offset, REGION_LEN);
            config.add_capability(PCI_CAP_ID_VNDR, &body, &[])?;
        }
        let mut notify_body = virtio_cap(
            VIRTIO_CAP_LONG_LEN,
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            0,
            NOTIFY_OFFSET,
            REGION_LEN,
        );
        notify_body.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
        config.add_capability(PCI_CAP_ID_VNDR, &notify_body, &[])?;
        // PCI_CFG: the driver writes bar, offset and length; pci_cfg_data is a window onto
        // the BAR (4.1.4.9), served here.
        let mut cfg_body = virtio_cap(VIRTIO_CAP_LONG_LEN, VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0);
        cfg_body.extend_from_slice(&[0; 4]);
        let mut writable = vec![0u8; cfg_body.len()];
        writable[VCAP_BAR - 2] = 0xff;
        writable[VCAP_OFFSET - 2..VCAP_LENGTH + 2].fill(0xff);
        let pci_cfg_cap = config.add_capability(PCI_CAP_ID_VNDR, &cfg_body, &writable)?;

        let notify = (0..maxima.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::Eventfd))
            .collect::<Result<Vec<_>, _>>()?;
        // ACCESS_PLATFORM is the transport's to offer: only with a translated DMA path.
        let mut offered = (device.features() & !VIRTIO_F_ACCESS_PLATFORM) | VIRTIO_F_VERSION_1;
        if dma.is_some() {
            offered |= VIRTIO_F_ACCESS_PLATFORM;
        }
        let interrupt = Arc::new(PciInterrupt::new(msix.vectors(), intx, maxima.len()));
        Ok(VirtioPciDevice {
            address,
            config,
            msix,
            pcie_cap,
            pci_cfg_cap,
            ats_cap: None,
            common: CommonConfig::new(offered, &maxima, vectors),
            device,
            mem,
            dma,
            interrupt,
            notify,
            active: false,
        })
    }

    pub fn address(&self) -> Bdf {
        self.address
    }

    /// Gives the function the ATS extended capability (PCIe base 10.5.1) at 0x100: Page
    /// Aligned Request, control at reset (STU 0, disabled). Its translations are cached as
    /// without it; Enable only tells the guest it may send (and must then invalidate with)
    /// device-TLB invalidations.
    pub fn add_ats(&mut self) -> Result<(), VirtioPciError> {
        if self.ats_cap.is_some() {
            return Ok(());
        }
        let mut body = ATS_CAP_PAGE_ALIGNED.to_le_bytes().to_vec();
        body.extend_from_slice(&0u16.to_le_bytes());
        let ctrl_mask = (ATS_CTRL_ENABLE | ATS_CTRL_STU).to_le_bytes();
        let writable = [0, 0, ctrl_mask[0], ctrl_mask[1]];
        let at = self.config.add_extended_capability(
            PCI_EXT_CAP_ID_ATS,
            ATS_VERSION,
            &body,
            &writable,
        )?;
        self.ats_cap = Some(at);
        Ok(())
    }

    /// The ATS Control register, when the function has the capability.
    pub fn ats_control(&self) -> Option<u16> {
        let at = self.ats_cap? + ATS_CTRL_OFF;
        Some(u16::from(self.config.byte(at)) | (u16::from(self.config.byte(at + 1)) << 8))
    }

    /// The device's translation cache, when its DMA is translated.
    pub fn iotlb(&self) -> Option<&crate::dma::DeviceIotlb> {
        self.dma.as_deref().map(DeviceDma::iotlb)
    }

    /// The features the function offers (device-type bits, VERSION_1, ACCESS_PLATFORM).
    pub fn offered_features(&self) -> u64 {
        self.common.device_features
    }

    /// Whether the device runs (DRIVER_OK accepted and activation succeeded).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The MSI-X model, for the IOMMU's route refreshes.
    pub fn msix(&self) -> &EmulatedMsix {
        &self.msix
    }

    /// The notification eventfds as (BAR 0 offset, eventfd) for the hypervisor to signal
    /// directly (KVM ioeventfds, any write length).
    pub fn notify_eventfds(&self) -> Vec<(u64, EventFd)> {
        self.notify
            .iter()
            .enumerate()
            .filter_map(|(i, fd)| {
                let offset = NOTIFY_OFFSET + u64::from(NOTIFY_MULTIPLIER) * i as u64;
                fd.try_clone().ok().map(|fd| (offset, fd))
            })
            .collect()
    }

    /// A platform reset (a VM reset): as a Function Level Reset.
    pub fn platform_reset(&mut self) {
        self.function_level_reset();
    }

    /// A device reset (device_status = 0, 4.1.4.3.1): the device stops, and features,
    /// status, queues, vectors, ISR and pending notifications return to reset state.
    fn reset_device(&mut self) {
        self.device.reset();
        self.active = false;
        self.common.reset();
        self.interrupt.reset();
        for fd in &self.notify {
            // Non-blocking: an error is "nothing pending".
            let _ = fd.read();
        }
    }

    /// Function Level Reset (PCIe base 6.6.2): a device reset, plus MSI-X, the PCI_CFG
    /// window, Device Control, ATS Control and the device's translation cache. The command register and
    /// BARs are left (the guest saves and restores them around an FLR).
    fn function_level_reset(&mut self) {
        self.reset_device();
        let control = self.msix.cap().offset() + 3;
        self.msix.write_config_register(control / 4, 3, &[0]);
        for i in 0..self.msix.cap().vectors() as u64 {
            let entry = MSIX_TABLE_OFFSET + i * 16;
            for (off, v) in [(0, 0u32), (4, 0), (8, 0), (12, 1)] {
                self.msix.write_bar(0, entry + off, &v.to_le_bytes());
            }
        }
        for off in [VCAP_BAR, VCAP_OFFSET, VCAP_LENGTH] {
            let at = self.pci_cfg_cap + off;
            let zero = vec![0u8; if off == VCAP_BAR { 1 } else { 4 }];
            self.write_config_raw(at, &zero);
        }
        let at = self.pcie_cap + PCIE_DEVCTL_OFF;
        self.write_config_raw(at, &PCIE_DEVCTL_DEFAULT.to_le_bytes());
        if let Some(ats) = self.ats_cap {
            self.write_config_raw(ats + ATS_CTRL_OFF, &[0, 0]);
        }
        if let Some(dma) = &self.dma {
            dma.iotlb().invalidate(&CacheInvalidation::All);
        }
        self.sync_interrupt_modes();
    }

    /// Writes writable configuration bytes at absolute offset `at` (within one dword).
    fn write_config_raw(&mut self, at: usize, data: &[u8]) {
        self.config.write_register(at / 4, (at % 4) as u64, data);
    }

    fn sync_interrupt_modes(&self) {
        let command = self.config.command();
        self.interrupt.set_modes(
            self.msix.cap().enabled(),
            command & COMMAND_INTX_DISABLE != 0,
            command & COMMAND_MASTER != 0,
        );
    }

    /// A guest error the device cannot go on from (2.1.2).
    fn guest_error(&mut self, why: &str) {
        iommu::warn_limited!("virtio-pci {}: {why}: device needs reset", self.address);
        self.interrupt.set_needs_reset();
    }

    /// Whether the driver's features can be accepted at FEATURES_OK.
    fn features_acceptable(&self) -> bool {
        let offered = self.common.device_features;
        let accepted = self.common.driver_features;
        accepted & !offered == 0
            && accepted & VIRTIO_F_VERSION_1 != 0
            && (offered & VIRTIO_F_ACCESS_PLATFORM == 0 || accepted & VIRTIO_F_ACCESS_PLATFORM != 0)
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset_device();
            return;
        }
        let old = self.common.status;
        // Bits stay set until reset; DEVICE_NEEDS_RESET is the device's own.
        let mut new = old | (v & !STATUS_DEVICE_NEEDS_RESET);
        if new & STATUS_FEATURES_OK != 0
            && old & STATUS_FEATURES_OK == 0
            && !self.features_acceptable()
        {
            new &= !STATUS_FEATURES_OK;
        }
        self.common.status = new;
        if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            if new & STATUS_FEATURES_OK == 0 {
                self.guest_error("DRIVER_OK before FEATURES_OK");
                return;
            }
            // A device that needs a reset stays stopped until it gets one.
            if self.interrupt.needs_reset() {
                return;
            }
            if let Err(why) = self.activate() {
                self.guest_error(&why);
            }
        }
    }

    /// Builds the device's context from the negotiated state and starts it (DRIVER_OK).
    fn activate(&mut self) -> Result<(), String> {
        let features = self.common.driver_features;
        let memory = match &self.dma {
            Some(dma) if features & VIRTIO_F_ACCESS_PLATFORM != 0 => {
                VirtioMemory::Translated(dma.clone())
            }
            _ => VirtioMemory::Direct(self.mem.clone()),
        };
        let mut queues = Vec::new();
        for (i, regs) in self.common.queues.iter().enumerate() {
            if !regs.enabled {
                continue;
            }
            let mut queue = Queue::new(regs.max_size).map_err(|e| format!("queue {i}: {e}"))?;
            queue.set_size(regs.size);
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            let (lo, hi) = split(regs.desc);
            queue.set_desc_table_address(lo, hi);
            let (lo, hi) = split(regs.driver);
            queue.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(regs.device);
            queue.set_used_ring_address(lo, hi);
            queue.set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
            queue.set_ready(true);
            // Every ring byte must be memory the device may reach (translated, when it
            // goes through the IOMMU: a refusal is recorded as a fault).
            if !queue.is_valid(&memory) {
                return Err(format!("queue {i}: rings outside the device's memory"));
            }
            let notify = self.notify[i]
                .try_clone()
                .map_err(|e| format!("queue {i}: {e}"))?;
            queues.push(ActiveQueue {
                index: i as u16,
                queue,
                notify,
            });
        }
        let ctx = ActivateContext {
            memory,
            queues,
            features,
            interrupt: self.interrupt.clone(),
        };
        self.device
            .activate(ctx)
            .map_err(|e| format!("activation: {e}"))?;
        self.active = true;
        Ok(())
    }

    fn sync_vectors(&self) {
        self.interrupt.set_vectors(
            self.common.config_msix_vector,
            self.common.queues.iter().map(|q| q.msix_vector),
        );
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        if self.interrupt.needs_reset() {
            self.common.status |= STATUS_DEVICE_NEEDS_RESET;
        }
        self.common.read(offset, data);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data) {
            CommonWrite::Done => {}
            CommonWrite::Status(v) => self.write_status(v),
            CommonWrite::BadQueue(why) => self.guest_error(why),
        }
        self.sync_vectors();
    }

    /// A driver notification of the queue at `offset` in the notify area.
    fn notify(&self, offset: u64) {
        let mult = u64::from(NOTIFY_MULTIPLIER);
        if !offset.is_multiple_of(mult) {
            return;
        }
        if let Some(fd) = self.notify.get((offset / mult) as usize) {
            if let Err(e) = fd.write(1) {
                iommu::warn_limited!("virtio-pci {}: notify: {e}", self.address);
            }
        }
    }

    /// pci_cfg_data as read through the PCI_CFG capability (4.1.4.9).
    fn read_pci_cfg_data(&mut self) -> u32 {
        let Some((offset, len)) = self.pci_cfg_window() else {
            return 0;
        };
        let mut b = [0u8; 4];
        self.read_bar(0, offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn write_pci_cfg_data(&mut self, at: u64, data: &[u8]) {
        let Some((offset, len)) = self.pci_cfg_window() else {
            return;
        };
        // The first `length` bytes of pci_cfg_data, as far as this write gave them.
        let mut b = [0u8; 4];
        for (i, v) in data.iter().enumerate() {
            if let Some(slot) = b.get_mut(at as usize + i) {
                *slot = *v;
            }
        }
        self.write_bar(0, offset, &b[..len]);
    }

    /// The BAR 0 offset and length the PCI_CFG capability selects, if it is a valid access
    /// (4.1.4.9.1: length 1, 2 or 4, offset aligned to it, BAR 0).
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let dword = |at: usize| self.config.read_register((self.pci_cfg_cap + at) / 4);
        let bar = self.config.byte(self.pci_cfg_cap + VCAP_BAR);
        let offset = u64::from(dword(VCAP_OFFSET));
        let len = dword(VCAP_LENGTH) as usize;
        let ok = bar == 0
            && matches!(len, 1 | 2 | 4)
            && offset.is_multiple_of(len as u64)
            && offset + len as u64 <= BAR0_SIZE;
        ok.then_some((offset, len))
    }
}

/// The body (after id and next) of a virtio_pci_cap (4.1.4).
fn virtio_cap(cap_len: u8, cfg_type: u8, bar: u8, offset: u64, length: u64) -> Vec<u8> {
    let mut b = vec![cap_len, cfg_type, bar, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    b
}

/// Appends the PCI Express capability; returns its offset.
fn add_pcie_capability(config: &mut PciConfiguration) -> Result<usize, ConfigError> {
    let mut body = vec![0u8; PCIE_CAP_LEN - 2];
    let at = |off: usize| off - 2;
    body[at(2)..at(4)].copy_from_slice(&PCIE_CAPS.to_le_bytes());
    body[at(PCIE_DEVCAP_OFF)..at(PCIE_DEVCAP_OFF + 4)].copy_from_slice(&PCIE_DEVCAP.to_le_bytes());
    body[at(PCIE_DEVCTL_OFF)..at(PCIE_DEVCTL_OFF + 2)]
        .copy_from_slice(&PCIE_DEVCTL_DEFAULT.to_le_bytes());
    let mut writable = vec![0u8; body.len()];
    // Device Control is writable but for Initiate FLR, which the model acts on and which
    // always reads 0.
    writable[at(PCIE_DEVCTL_OFF)] = 0xff;
    writable[at(PCIE_DEVCTL_OFF) + 1] = ((!PCIE_DEVCTL_FLR) >> 8) as u8;
    config.add_capability(PCI_CAP_ID_EXP, &body, &writable)
}

/// Whether a write of `data` at byte `offset` of dword `reg` covers absolute config byte
/// `byte`; returns the value written there.
fn written_byte(reg: usize, offset: u64, data: &[u8], byte: usize) -> Option<u8> {
    let start = reg * 4 + offset as usize;
    byte.checked_sub(start).and_then(|i| data.get(i)).copied()
}

impl PciDevice for VirtioPciDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        if reg_idx == (self.pci_cfg_cap + VCAP_PCI_CFG_DATA) / 4 {
            return self.read_pci_cfg_data();
        }
        self.config
            .set_interrupt_status(self.interrupt.intx_pending());
        let value = self.config.read_register(reg_idx);
        self.msix.read_config_register(reg_idx, value)
    }

    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        if offset as usize + data.len() > 4 {
            return;
        }
        if reg_idx == (self.pci_cfg_cap + VCAP_PCI_CFG_DATA) / 4 {
            self.write_pci_cfg_data(offset, data);
            return;
        }
        self.config.write_register(reg_idx, offset, data);
        self.msix.write_config_register(reg_idx, offset, data);
        let flr_byte = self.pcie_cap + PCIE_DEVCTL_OFF + 1;
        let flr = written_byte(reg_idx, offset, data, flr_byte)
            .is_some_and(|b| b & (PCIE_DEVCTL_FLR >> 8) as u8 != 0);
        if flr {
            self.function_level_reset();
        }
        if reg_idx == REG_COMMAND_STATUS || reg_idx == self.msix.cap().offset() / 4 {
            self.sync_interrupt_modes();
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 || data.len() > 8 {
            return;
        }
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return;
        };
        match offset {
            o if o < ISR_OFFSET && end <= ISR_OFFSET => self.read_common(o - COMMON_OFFSET, data),
            ISR_OFFSET => {
                if let Some(b) = data.first_mut() {
                    *b = self.interrupt.read_isr();
                }
            }
            o if (DEVICE_CONFIG_OFFSET..NOTIFY_OFFSET).contains(&o) && end <= NOTIFY_OFFSET => {
                self.device.read_config(o - DEVICE_CONFIG_OFFSET, data)
            }
            o if o >= MSIX_TABLE_OFFSET => {
                self.msix.read_bar(bar, offset, data);
            }
            _ => {}
        }
    }

    /// The notify area's eventfds, for the hypervisor to signal without an exit (KVM
    /// ioeventfds that the root bus moves with BAR 0). A write the hypervisor does not catch
    /// still reaches [`Self::notify`] through `write_bar`.
    fn ioeventfds(&self, bar: usize) -> Vec<(u64, EventFd)> {
        if bar == 0 {
            self.notify_eventfds()
        } else {
            Vec::new()
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 || data.len() > 8 {
            return;
        }
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return;
        };
        match offset {
            o if o < ISR_OFFSET && end <= ISR_OFFSET => self.write_common(o - COMMON_OFFSET, data),
            o if (DEVICE_CONFIG_OFFSET..NOTIFY_OFFSET).contains(&o) && end <= NOTIFY_OFFSET => {
                self.device.write_config(o - DEVICE_CONFIG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => self.notify(o - NOTIFY_OFFSET),
            o if o >= MSIX_TABLE_OFFSET => {
                self.msix.write_bar(bar, offset, data);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
