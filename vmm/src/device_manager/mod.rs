//! The device manager: creates every device, wires it to the interrupt platform and the DMA
//! path, puts it on the port-I/O and MMIO buses or the PCI root bus, and hands out the
//! resources (ports, addresses, IOAPIC pins, PCI slots, KVM memory slots) it takes.
//!
//! Adding a device: its model in `devices/`, one arm in `add_pci_device` (or one call in
//! `add_legacy_devices`), one `DeviceConfig` variant.

mod acpi;
mod irqchip;
mod legacy;
mod passthrough;
mod pci;
mod resources;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use devices::bus::{lock, Bus, BusError, SharedDevice};
use devices::dma::{Identity, IotlbSet, Translate};
use devices::ioapic::Ioapic;
use devices::pci::host_bridge::HostBridge;
use devices::pci::root::PciError;
use devices::pci::{PciBuses, PciRoot, PrtRoute};
use devices::serial::SerialDevice;
use devices::vfio::HostDevice;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

pub use acpi::acpi_config;
use irqchip::InterruptPlatform;
pub use irqchip::IoapicEoi;
use pci::KvmIoEvents;
pub use resources::ResourceError;
use resources::Resources;

use crate::config::VmConfig;
use crate::console::ConsoleOut;
use crate::control::VmControl;
use crate::exit_costs::ExitCosts;
use crate::iommu::IommuTranslator;
use crate::memory::{KvmMmioMapper, MemSlots};
use crate::state::{IrqfdRoute, VmState};
use crate::vfio::{AttachError, Attached};

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("Device layout: {0}")]
    Bus(#[from] BusError),
    #[error("Device layout: {0}")]
    Resources(#[from] ResourceError),
    #[error("PCI: {0}")]
    Pci(#[from] PciError),
    #[error(transparent)]
    Passthrough(#[from] AttachError),
    #[error(transparent)]
    Virtio(#[from] devices::virtio::pci::VirtioPciError),
    #[error(transparent)]
    Disk(#[from] crate::config::DiskError),
    #[error(transparent)]
    Net(#[from] crate::config::NetError),
    #[error("Cannot open serial output {0}: {1}")]
    SerialFile(PathBuf, #[source] std::io::Error),
    #[error("fw_cfg: {0}")]
    FwCfg(#[from] devices::fw_cfg::FwCfgError),
    #[error("Cannot open --debugcon output {0}: {1}")]
    DebugconFile(PathBuf, #[source] std::io::Error),
    #[error("Stopped by signal {0} during setup")]
    Stopped(i32),
}

/// What emulated devices' DMA goes through, and the set their translation caches join (the
/// one the VT-d unit invalidates).
struct DmaTranslation {
    translator: Arc<dyn Translate>,
    caches: Arc<IotlbSet>,
}

/// Every device of a VM, and what they are wired to. Fields drop in order: the buses and the
/// PCI root (and with them the devices) go first, the passthrough DMA state after them. The
/// buses are emptied first of all (`Drop`): the configuration mechanisms on them hold the PCI
/// root, which holds the buses to move BARs on.
pub struct DeviceManager {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    pci: Arc<Mutex<PciRoot>>,
    irq: InterruptPlatform,
    passthrough: Vec<Attached>,
    /// Emulated devices with translated DMA, for the state view.
    emulated: Vec<pci::EmulatedDma>,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    console: Option<ConsoleOut>,
    mem: GuestMemoryMmap,
    control: Arc<VmControl>,
    resources: Resources,
    /// What the emulated devices' DMA goes through: the IOMMU, or identity.
    dma: DmaTranslation,
    mapper: Arc<KvmMmioMapper>,
    /// Where ECAM, the windows and the PM ports are.
    map: crate::layout::AddressMap,
    /// fw_cfg, for the files added once the ACPI tables are built.
    fw_cfg: Option<Arc<Mutex<devices::fw_cfg::FwCfg>>>,
    /// isa-debugcon's output, flushed with the console's.
    debugcon: Option<ConsoleOut>,
    /// The ICH9 reset control register at 0xCF9 (firmware boot).
    rst_cnt: Option<SharedDevice>,
    /// The root-bus slots of the virtio-blk disks, in order (fw_cfg `bootorder`).
    disk_slots: Vec<u8>,
    /// The ICH9 LPC bridge (firmware boot), reset with the VM.
    lpc: Option<Arc<Mutex<devices::lpc::Ich9Lpc>>>,
    /// Every virtio function, reset with the VM.
    virtio: Vec<Arc<Mutex<devices::virtio::pci::VirtioPciDevice>>>,
    /// What the vCPUs' exits cost, by kind (the vCPU threads count, the state view shows).
    exits: Arc<ExitCosts>,
    /// The ACPI power button (system_powerdown presses it).
    power_button: Option<devices::acpi_ged::PowerButton>,
}

impl DeviceManager {
    /// Creates and wires every device `cfg` asks for, and the host functions `hosts`.
    pub fn create(
        vm: Arc<VmFd>,
        mem: &GuestMemoryMmap,
        slots: Arc<MemSlots>,
        control: Arc<VmControl>,
        cfg: &VmConfig,
        hosts: &[HostDevice],
    ) -> Result<Self, DeviceManagerError> {
        let map = cfg.address_map();
        let mut resources = Resources::new()?;
        resources.reserve_address_map(&cfg.memory.ram_ranges(), &map)?;
        let irq = InterruptPlatform::new(vm.clone(), cfg.iommu, mem);
        let dma = match &irq.iommu {
            Some(i) => DmaTranslation {
                translator: Arc::new(IommuTranslator(i.clone())),
                caches: i.translation_caches().clone(),
            },
            None => DmaTranslation {
                translator: Arc::new(Identity),
                caches: IotlbSet::new(),
            },
        };
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let pci = Arc::new(Mutex::new(PciRoot::new(PciBuses {
            pio: pio.clone(),
            mmio: mmio.clone(),
            windows: map.pci_windows(),
            ioevents: Arc::new(KvmIoEvents(vm.clone())),
        })));
        let host_bridge = if cfg.firmware() {
            HostBridge::q35()
        } else {
            HostBridge::new()
        };
        lock(&pci).add_device(Arc::new(Mutex::new(host_bridge)), Some(0))?;
        let mut dm = DeviceManager {
            mem: mem.clone(),
            control,
            resources,
            irq,
            dma,
            mapper: Arc::new(KvmMmioMapper::new(vm, slots)),
            pio,
            mmio,
            pci,
            passthrough: Vec::new(),
            emulated: Vec::new(),
            serial: None,
            console: None,
            map,
            fw_cfg: None,
            debugcon: None,
            rst_cnt: None,
            disk_slots: Vec::new(),
            lpc: None,
            virtio: Vec::new(),
            exits: Arc::default(),
            power_button: None,
        };
        dm.add_interrupt_controllers()?;
        dm.add_legacy_devices(cfg)?;
        for kind in &cfg.devices {
            dm.add_pci_device(kind)?;
        }
        if cfg.firmware() && !dm.disk_slots.is_empty() {
            dm.add_fw_cfg_file("bootorder", legacy::bootorder(&dm.disk_slots))?;
        }
        for host in hosts {
            dm.add_passthrough(host)?;
            stop_point()?;
        }
        Ok(dm)
    }

    /// Closes the PCI bus (windows, BAR assignment) and returns its _PRT routes.
    pub fn finish(&mut self) -> Result<Vec<PrtRoute>, DeviceManagerError> {
        self.finish_pci()
    }

    /// A device on ports `base..base + size`, claimed from the resources first.
    fn add_pio(
        &mut self,
        what: &'static str,
        base: u16,
        size: u64,
        dev: SharedDevice,
    ) -> Result<(), DeviceManagerError> {
        self.resources.reserve_pio(what, base, size)?;
        self.pio.insert(base.into(), size, dev)?;
        Ok(())
    }

    /// The port-I/O bus, shared with the vCPUs.
    pub fn pio(&self) -> &Arc<Bus> {
        &self.pio
    }

    /// The MMIO bus, shared with the vCPUs.
    pub fn mmio(&self) -> &Arc<Bus> {
        &self.mmio
    }

    pub fn ioapic(&self) -> &Arc<Mutex<Ioapic>> {
        &self.irq.ioapic
    }

    pub fn serial(&self) -> Option<&Arc<Mutex<SerialDevice>>> {
        self.serial.as_ref()
    }

    pub fn console(&self) -> Option<&ConsoleOut> {
        self.console.as_ref()
    }

    /// What a VM reset resets (firmware boot).
    pub fn reset_handle(&self) -> DeviceReset {
        DeviceReset {
            iommu: self.irq.iommu.clone(),
            lpc: self.lpc.clone(),
            fw_cfg: self.fw_cfg.clone(),
            virtio: self.virtio.clone(),
        }
    }

    /// isa-debugcon's output, if there is one.
    pub fn debugcon(&self) -> Option<&ConsoleOut> {
        self.debugcon.as_ref()
    }

    /// Adds a named file to fw_cfg.
    pub fn add_fw_cfg_file(&self, name: &str, data: Vec<u8>) -> Result<(), DeviceManagerError> {
        if let Some(f) = &self.fw_cfg {
            lock(f).add_file(name, data)?;
        }
        Ok(())
    }

    /// The counters the vCPU threads keep of their exits.
    pub fn exit_costs(&self) -> &Arc<ExitCosts> {
        &self.exits
    }

    /// The VT-d unit's register range (start, size), if the VM has one: its exits are
    /// counted apart.
    pub fn drhd_range(&self) -> Option<(u64, u64)> {
        self.irq
            .iommu
            .as_ref()
            .map(|_| (crate::layout::DRHD_START, crate::layout::DRHD_SIZE))
    }

    /// The ACPI power button.
    pub fn power_button(&self) -> Option<&devices::acpi_ged::PowerButton> {
        self.power_button.as_ref()
    }

    /// The PCI functions on bus 0: (device, function, configuration dwords 0..16).
    pub fn pci_functions(&self) -> Vec<(u8, u8, [u32; 16])> {
        let root = lock(&self.pci);
        (0..32u8)
            .filter_map(|d| {
                let id = root.config_read(0, d, 0, 0);
                (id & 0xffff != 0xffff).then(|| {
                    let mut regs = [0u32; 16];
                    for (i, r) in regs.iter_mut().enumerate() {
                        *r = root.config_read(0, d, 0, i);
                    }
                    (d, 0, regs)
                })
            })
            .collect()
    }

    /// The interrupt, IOMMU and passthrough state (SIGUSR1, and at exit with RUST_LOG=info).
    /// `state::render` gives its text.
    pub fn state(&self) -> VmState {
        VmState {
            ioapic: lock(&self.irq.ioapic).state(),
            iommu: self.irq.iommu.as_ref().map(|i| i.state()),
            passthrough: self.passthrough.iter().map(Attached::state).collect(),
            emulated: self.emulated.iter().map(pci::EmulatedDma::state).collect(),
            irqfd_routes: self
                .irq
                .kvm
                .irqfd_routes()
                .into_iter()
                .map(|(gsi, address, data)| IrqfdRoute { gsi, address, data })
                .collect(),
            exits: self.exits.state(),
        }
    }
}

impl Drop for DeviceManager {
    fn drop(&mut self) {
        self.pio.clear();
        self.mmio.clear();
    }
}

/// The devices a VM reset (firmware boot) puts back to their power-on state, reset from vCPU
/// 0 while every vCPU is parked: the chipset registers (the LPC bridge's, with its PM block
/// off the bus; fw_cfg's selector) and every virtio function (a Function Level Reset: the
/// device stops, its queues, features, MSI-X and ATS are reset; BARs and the command register
/// stay, the firmware assigns them again), and the VT-d unit's translation, queued
/// invalidation and interrupt remapping turned off (a GCMD write of 0, with its host effects:
/// passed-through DMA back to the identity map; the other registers keep their values, which
/// the next kernel programs again). Not reset: passed-through functions.
pub struct DeviceReset {
    iommu: Option<Arc<crate::iommu::Iommu>>,
    lpc: Option<Arc<Mutex<devices::lpc::Ich9Lpc>>>,
    fw_cfg: Option<Arc<Mutex<devices::fw_cfg::FwCfg>>>,
    virtio: Vec<Arc<Mutex<devices::virtio::pci::VirtioPciDevice>>>,
}

impl DeviceReset {
    pub fn reset(&self) {
        if let Some(i) = &self.iommu {
            use devices::bus::BusDevice;
            crate::iommu::DrhdRegisters(i.clone())
                .write(iommu::registers::GCMD_REG, &0u32.to_le_bytes());
        }
        if let Some(l) = &self.lpc {
            lock(l).reset();
        }
        if let Some(f) = &self.fw_cfg {
            lock(f).reset();
        }
        for v in &self.virtio {
            lock(v).platform_reset();
        }
    }
}

/// Setup's check for a stop signal between its longer steps: what was set up so far is
/// dropped on the way out, which releases passed-through devices in order.
pub fn stop_point() -> Result<(), DeviceManagerError> {
    match crate::lifecycle::stop_signal() {
        Some(sig) => Err(DeviceManagerError::Stopped(sig)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
