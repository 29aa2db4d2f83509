//! The machine the bus fuzzer drives: the port and MMIO buses with every device, laid out as
//! `vmm/src/vm.rs` lays them out (addresses from `vmm/src/layout.rs`), an edu device doing DMA
//! into a flat guest memory, a passed-through function on a fake VFIO host and an emulated
//! function with MSI-X ([`MsixFunction`], a stand-in for virtio-pci).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use iommu::{Bdf, Iova};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi_pm::{AcpiPm, ACPI_PM_SIZE};
use crate::bus::{lock, Bus};
use crate::debug_exit::DebugExit;
use crate::dma::{DmaAccess, DmaError};
use crate::edu::registers::{DMA_ADDR_MASK, DMA_BUFFER_SIZE};
use crate::edu::EduDevice;
use crate::fw_cfg::{FwCfg, FW_CFG_PORT_SIZE};
use crate::i8042::{I8042Reset, I8042_BASE, I8042_SIZE};
use crate::interrupt::{InterruptError, IrqLine, IrqfdRouting, MsiMessage, MsiTrigger};
use crate::ioapic::Ioapic;
use crate::pci::host_bridge::HostBridge;
use crate::pci::root::Windows;
use crate::pci::vectors::VectorWiring;
use crate::pci::{NoIoEvents, PciBuses, PciConfigIo, PciConfigMmio, PciRoot};
use crate::pvpanic::{PvPanic, PVPANIC_PORT};
use crate::serial::{SerialDevice, SERIAL_PORT_SIZE};
use crate::vfio::fake::FakeFunction;
use crate::vfio::function::{HostFunction, IrqError, MappedArea, RegionInfo, CONFIG_REGION};
use crate::vfio::function::{INTX_IRQ, MSIX_IRQ, MSI_IRQ};
use crate::vfio::{GuestMmioMapper, VfioPciDevice, VfioPciWiring};
use crate::vm_control::{ExitHandler, VmExitRequest};

/// Addresses as in vmm/src/layout.rs.
pub const COM1_PORT: u64 = 0x3f8;
pub const FW_CFG_PORT: u64 = 0x510;
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
pub const DEBUG_EXIT_SIZE: u64 = 4;
pub const ACPI_PM_PORT: u64 = 0x600;
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
pub const PCI_IO: (u64, u64) = (0xc000, 0x4000);
pub const MMIO32: (u64, u64) = (0xc000_0000, 0x2000_0000);
pub const MMIO64: (u64, u64) = (0x10_0000_0000, 0x10_0000_0000);
pub const ECAM_START: u64 = 0xe000_0000;
pub const ECAM_SIZE: u64 = 0x10_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Guest RAM: low memory below the EBDA and 3 MiB from 1 MiB, with the hole between.
pub const RAM: [(u64, usize); 2] = [(0, 0x9_f000), (0x10_0000, 0x30_0000)];
/// Device numbers on bus 0: the host bridge, edu, the passed-through function.
pub const EDU_SLOT: u8 = 1;
pub const VFIO_SLOT: u8 = 2;
pub const MSIX_SLOT: u8 = 3;
/// Size of each of the passed-through function's two memory BARs (0: 32-bit, 2: 64-bit).
pub const VFIO_BAR_SIZE: u64 = 0x8000;

/// The passed-through function's MSI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiLayout {
    /// log2 of the vectors (0..=5).
    pub log2_vectors: u8,
    pub is_64bit: bool,
    pub per_vector_masking: bool,
}

/// The passed-through function's MSI-X capability: table size and where table and PBA are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// 1..=64.
    pub vectors: u16,
    /// (BAR, 4 KiB page in it).
    pub table: (u8, u8),
    pub pba: (u8, u8),
}

/// Which interrupt capabilities the passed-through function has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VfioLayout {
    pub msi: Option<MsiLayout>,
    pub msix: Option<MsixLayout>,
}

/// Counts what leaves the machine: MSIs, exit requests, line changes.
#[derive(Default)]
pub struct Outbox {
    pub msis: AtomicU64,
    pub exits: AtomicU64,
}

impl MsiTrigger for Outbox {
    fn send_msi(&self, _msg: MsiMessage) -> Result<(), InterruptError> {
        self.msis.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl ExitHandler for Outbox {
    fn request_exit(&self, _req: VmExitRequest) {
        self.exits.fetch_add(1, Ordering::Relaxed);
    }
}

/// An IOAPIC input, as vmm/src/vm.rs's IoapicPin.
struct IoapicPin {
    ioapic: Arc<Mutex<Ioapic>>,
    pin: usize,
}

impl IrqLine for IoapicPin {
    fn set_level(&self, level: bool) {
        lock(&self.ioapic).set_irq(self.pin, level);
    }
}

mod msix_function;
pub use msix_function::*;

/// Hypervisor routes by eventfd, as KVM's irqfd routing keeps them.
#[derive(Default)]
pub struct Routes(pub Mutex<HashMap<i32, MsiMessage>>);

impl IrqfdRouting for Routes {
    fn route(&self, fd: &EventFd, msg: MsiMessage) -> bool {
        lock(&self.0).insert(fd.as_raw_fd(), msg);
        true
    }
    fn unroute(&self, fd: &EventFd) {
        lock(&self.0).remove(&fd.as_raw_fd());
    }
}

/// A transfer a device asked for that breaks the DMA oracle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaViolation {
    pub iova: u64,
    pub len: usize,
    pub what: &'static str,
}

/// Flat guest memory with IOVA = GPA, checked like vmm's DirectDma: a transfer happens only
/// if all of it is RAM. Records requests a device should never make.
pub struct FlatDma {
    pub mem: GuestMemoryMmap,
    pub violations: Mutex<Vec<DmaViolation>>,
    pub transfers: AtomicU64,
}

impl FlatDma {
    fn check(&self, source: Bdf, iova: Iova, len: usize) -> Result<GuestAddress, DmaError> {
        let mut v = lock(&self.violations);
        if len > DMA_BUFFER_SIZE {
            v.push(DmaViolation {
                iova: iova.0,
                len,
                what: "longer than the device buffer",
            });
        }
        if iova.0 & !DMA_ADDR_MASK != 0 {
            v.push(DmaViolation {
                iova: iova.0,
                len,
                what: "beyond the device's 28 address bits",
            });
        }
        drop(v);
        let out = || DmaError::OutOfRange {
            requester: source,
            iova,
        };
        let end = iova.0.checked_add(len as u64).ok_or_else(out)?;
        let ram = RAM
            .iter()
            .any(|&(base, size)| iova.0 >= base && end <= base + size as u64);
        if !ram {
            return Err(out());
        }
        self.transfers.fetch_add(1, Ordering::Relaxed);
        Ok(GuestAddress(iova.0))
    }
}

impl DmaAccess for FlatDma {
    fn dma_read(&self, source: Bdf, iova: Iova, buf: &mut [u8]) -> Result<(), DmaError> {
        let gpa = self.check(source, iova, buf.len())?;
        self.mem
            .read_slice(buf, gpa)
            .map_err(|_| DmaError::OutOfRange {
                requester: source,
                iova,
            })
    }
    fn dma_write(&self, source: Bdf, iova: Iova, buf: &[u8]) -> Result<(), DmaError> {
        let gpa = self.check(source, iova, buf.len())?;
        self.mem
            .write_slice(buf, gpa)
            .map_err(|_| DmaError::OutOfRange {
                requester: source,
                iova,
            })
    }
}

/// The fake host function with BAR sizing as vfio-pci virtualises it (writes of all-ones
/// read back the size mask).
pub struct SizedHost(pub FakeFunction);

/// Configuration offsets of the memory BARs (0 and 2, with 2's upper half at 0x1c).
const BAR0: u64 = 0x10;
const BAR2: u64 = 0x18;
const BAR2_HIGH: u64 = 0x1c;
const BAR_END: u64 = 0x28;

impl HostFunction for SizedHost {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        self.0.region(index)
    }
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        self.0.read(index, offset, data)
    }
    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        self.0.write(index, offset, data);
        let end = offset.saturating_add(data.len() as u64);
        if index != CONFIG_REGION || end <= BAR0 || offset >= BAR_END {
            return;
        }
        // Re-apply the read-only bits of every BAR dword.
        for (reg, mask, flags) in [
            (BAR0, !(VFIO_BAR_SIZE as u32 - 1), 0u32),
            (BAR2, !(VFIO_BAR_SIZE as u32 - 1), 0xc), // 64-bit, prefetchable
            (BAR2_HIGH, u32::MAX, 0),
            (0x14, 0, 0),
            (0x20, 0, 0),
            (0x24, 0, 0),
        ] {
            let mut b = [0u8; 4];
            self.0.read(CONFIG_REGION, reg, &mut b);
            let v = (u32::from_le_bytes(b) & mask) | flags;
            self.0.write(CONFIG_REGION, reg, &v.to_le_bytes());
        }
    }
    fn irq_count(&self, index: u32) -> u32 {
        self.0.irq_count(index)
    }
    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> Result<(), IrqError> {
        // Keep no duplicates of the eventfds: the fuzzer never fires them.
        self.0.enable_irq(index, fds)?;
        lock(&self.0.enabled_fds).clear();
        lock(&self.0.irq_calls).clear();
        Ok(())
    }
    fn disable_irq(&self, index: u32) -> Result<(), IrqError> {
        self.0.disable_irq(index)?;
        lock(&self.0.irq_calls).clear();
        Ok(())
    }
    fn unmask_intx(&self) -> Result<(), IrqError> {
        self.0.unmask_intx()
    }
    fn reset(&self) {
        self.0.reset()
    }
    fn mmap(&self, index: u32, offset: u64, size: u64) -> Option<Box<dyn MappedArea>> {
        self.0.mmap(index, offset, size)
    }
}

/// Accepts every BAR mapping (KVM memory slots in the VMM).
struct AnyMapper(AtomicU64);

impl GuestMmioMapper for AnyMapper {
    fn map(&self, _gpa: u64, _size: u64, _host: usize) -> Result<u32, String> {
        Ok(self.0.fetch_add(1, Ordering::Relaxed) as u32)
    }
    fn unmap(&self, _handle: u32) {}
}

/// Configuration space of the passed-through function for `layout`.
fn vfio_config(layout: &VfioLayout) -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    c[0..4].copy_from_slice(&0x1533_8086u32.to_le_bytes());
    c[0x06] = 0x10; // capability list
    c[0x0b] = 0x02; // network controller
    c[0x18] = 0x0c;
    c[0x3d] = 1; // INTA
    c[0x34] = 0x40;
    c[0x40] = 0x01; // power management, then MSI at 0x50, then MSI-X at 0x70
    c[0x41] = 0x50;
    let mut last_next = 0x41;
    if let Some(m) = layout.msi {
        c[last_next] = 0x50;
        c[0x50] = 0x05;
        let ctl = (u16::from(m.log2_vectors.min(5)) << 1)
            | (u16::from(m.is_64bit) << 7)
            | (u16::from(m.per_vector_masking) << 8);
        c[0x52..0x54].copy_from_slice(&ctl.to_le_bytes());
        last_next = 0x51;
    }
    if let Some(MsixLayout {
        vectors: n,
        table: (tbar, tpage),
        pba: (pbar, ppage),
    }) = layout.msix
    {
        c[last_next] = 0x70;
        c[0x70] = 0x11;
        c[0x72..0x74].copy_from_slice(&(n.clamp(1, 64) - 1).to_le_bytes());
        let table = (u32::from(tpage) << 12) | u32::from(tbar);
        let pba = (u32::from(ppage) << 12) | u32::from(pbar);
        c[0x74..0x78].copy_from_slice(&table.to_le_bytes());
        c[0x78..0x7c].copy_from_slice(&pba.to_le_bytes());
        last_next = 0x71;
    }
    c[last_next] = 0;
    c
}

/// Everything a fuzz run needs to reach and observe.
pub struct Machine {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub root: Arc<Mutex<PciRoot>>,
    pub dma: Arc<FlatDma>,
    pub routes: Arc<Routes>,
    pub outbox: Arc<Outbox>,
    pub vfio: Arc<Mutex<VfioPciDevice>>,
    pub layout: VfioLayout,
    /// The emulated MSI-X function and its hypervisor routes.
    pub msix: Arc<Mutex<MsixFunction>>,
    pub msix_routes: Arc<Routes>,
}

/// Why the machine could not be built (a bug in the fuzzer's set-up, not a finding).
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("Bus layout: {0}")]
    Bus(#[from] crate::bus::BusError),
    #[error("PCI: {0}")]
    Pci(#[from] crate::pci::root::PciError),
    #[error("VFIO: {0}")]
    Vfio(#[from] crate::vfio::VfioPciError),
    #[error("MSI-X: {0}")]
    Msix(#[from] crate::pci::emulated::EmulatedMsixError),
    #[error("Guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("Guest memory regions: {0}")]
    Regions(#[from] vm_memory::mmap::FromRangesError),
}

impl Machine {
    pub fn new(layout: VfioLayout) -> Result<Self, MachineError> {
        let outbox = Arc::new(Outbox::default());
        let msi: Arc<dyn MsiTrigger> = outbox.clone();
        let exit: Arc<dyn ExitHandler> = outbox.clone();
        let ioapic = Arc::new(Mutex::new(Ioapic::new(
            0,
            Bdf::new(0, 0x1e, 0),
            msi.clone(),
        )));
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        mmio.insert(IOAPIC_START, IOAPIC_SIZE, ioapic.clone())?;
        let com1 = Arc::new(IoapicPin {
            ioapic: ioapic.clone(),
            pin: 4,
        });
        let serial = SerialDevice::new(com1, Box::new(std::io::sink()));
        pio.insert(COM1_PORT, SERIAL_PORT_SIZE, Arc::new(Mutex::new(serial)))?;
        pio.insert(
            ACPI_PM_PORT,
            ACPI_PM_SIZE,
            Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
        )?;
        pio.insert(
            FW_CFG_PORT,
            FW_CFG_PORT_SIZE,
            Arc::new(Mutex::new(FwCfg::new(4 << 20, 1))),
        )?;
        let i8042 = Arc::new(Mutex::new(I8042Reset::new(exit.clone())));
        pio.insert(I8042_BASE.into(), I8042_SIZE, i8042)?;
        pio.insert(
            PVPANIC_PORT.into(),
            1,
            Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
        )?;
        let debug_exit = Arc::new(Mutex::new(DebugExit::new(exit.clone())));
        pio.insert(DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE, debug_exit)?;

        let root = Arc::new(Mutex::new(PciRoot::new(PciBuses {
            pio: pio.clone(),
            mmio: mmio.clone(),
            windows: Windows {
                io: PCI_IO,
                mmio32: MMIO32,
                mmio64: MMIO64,
            },
            ioevents: Arc::new(NoIoEvents),
        })));
        lock(&root).add_device(Arc::new(Mutex::new(HostBridge::new())), Some(0))?;
        let ranges: Vec<(GuestAddress, usize)> =
            RAM.iter().map(|&(b, s)| (GuestAddress(b), s)).collect();
        let dma = Arc::new(FlatDma {
            mem: GuestMemoryMmap::from_ranges(&ranges)?,
            violations: Mutex::new(Vec::new()),
            transfers: AtomicU64::new(0),
        });
        let edu_address = Bdf::new(0, EDU_SLOT, 0);
        let edu_intx = Arc::new(IoapicPin {
            ioapic: ioapic.clone(),
            pin: crate::pci::intx_gsi(EDU_SLOT, 1) as usize,
        });
        let edu = EduDevice::new(edu_address, dma.clone(), msi.clone(), edu_intx);
        lock(&root).add_device(Arc::new(Mutex::new(edu)), Some(EDU_SLOT))?;

        let mut fake = FakeFunction::with_config(vfio_config(&layout));
        fake.irq_counts.insert(INTX_IRQ, 1);
        fake.irq_counts.insert(
            MSI_IRQ,
            layout.msi.map_or(0, |m| 1 << m.log2_vectors.min(5)),
        );
        fake.irq_counts
            .insert(MSIX_IRQ, layout.msix.map_or(0, |m| u32::from(m.vectors)));
        for bar in [0u32, 2] {
            let bytes: Vec<u8> = (0..VFIO_BAR_SIZE).map(|i| i as u8).collect();
            fake.add_region(bar, bytes, vec![(0, VFIO_BAR_SIZE)]);
        }
        let host = Arc::new(SizedHost(fake));
        host.write(CONFIG_REGION, BAR0, &[0; 4]); // apply the BAR flags
        let routes = Arc::new(Routes::default());
        let address = Bdf::new(0, VFIO_SLOT, 0);
        let mut vfio = VfioPciDevice::new(
            host,
            "0000:01:00.0",
            VfioPciWiring {
                address,
                trigger: msi.clone(),
                routing: Some(routes.clone()),
                mapper: Some(Arc::new(AnyMapper(AtomicU64::new(1)))),
            },
        )?;
        let vfio_intx = Arc::new(IoapicPin {
            ioapic: ioapic.clone(),
            pin: crate::pci::intx_gsi(VFIO_SLOT, 1) as usize,
        });
        vfio.wire_intx(vfio_intx);
        let vfio = Arc::new(Mutex::new(vfio));
        lock(&root).add_device(vfio.clone(), Some(VFIO_SLOT))?;

        let msix_routes = Arc::new(Routes::default());
        let msix = Arc::new(Mutex::new(MsixFunction::new(VectorWiring {
            source: Bdf::new(0, MSIX_SLOT, 0),
            trigger: msi.clone(),
            routing: Some(msix_routes.clone()),
            watcher: None,
            name: "msix".into(),
        })?));
        lock(&root).add_device(msix.clone(), Some(MSIX_SLOT))?;

        pio.insert(
            PCI_CONFIG_PORT,
            8,
            Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
        )?;
        mmio.insert(
            ECAM_START,
            ECAM_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
        )?;
        lock(&root).assign_resources()?;
        Ok(Machine {
            pio,
            mmio,
            root,
            dma,
            routes,
            outbox,
            vfio,
            layout,
            msix,
            msix_routes,
        })
    }
}

impl Drop for Machine {
    /// Empties the buses: the configuration mechanisms on them hold the root bus, which holds
    /// the buses, and the cycle would otherwise outlive the run.
    fn drop(&mut self) {
        self.pio.clear();
        self.mmio.clear();
    }
}
