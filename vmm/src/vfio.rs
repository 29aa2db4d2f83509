//! DMA for passed-through devices: the host VFIO container follows what the guest lets the
//! device reach. Without an IOMMU, or while the guest's unit passes the device's DMA through,
//! all guest RAM is mapped at IOVA = GPA; once the guest translates, the container holds exactly
//! the guest's mappings, fed by the VT-d model's caching-mode notifications.

use std::sync::{Arc, Mutex};

use devices::interrupt::{IrqfdRouting, MsiTrigger};
use devices::ioapic::{Ioapic, IoapicPin};
use devices::pci::{intx_gsi, PciRoot};
use devices::vfio::{GuestMmioMapper, HostDevice, Interrupts, VfioPciDevice, VfioPciWiring};
use iommu::Bdf;
use vm_memory::GuestMemoryMmap;

use crate::iommu::Iommu;
use crate::state::PassthroughState;

mod dma;
pub use dma::{VfioDma, VfioDmaError, VfioHost};

/// Why a host function could not be put into the VM.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Open(#[from] devices::vfio::VfioPciError),
    #[error(transparent)]
    Dma(#[from] VfioDmaError),
    #[error("PCI: {0}")]
    Pci(#[from] devices::pci::root::PciError),
}

/// What passed-through functions are wired to in the VM.
pub struct Wiring<'a> {
    pub mem: &'a GuestMemoryMmap,
    /// MSIs the VMM sends (through interrupt remapping, if any).
    pub msi: Arc<dyn MsiTrigger>,
    /// In-KVM delivery of vectors (irqfds), remapped if there is an IOMMU.
    pub routing: Arc<dyn IrqfdRouting>,
    pub ioapic: &'a Arc<Mutex<Ioapic>>,
    pub iommu: Option<&'a Arc<Iommu>>,
    pub mapper: Arc<dyn GuestMmioMapper>,
}

/// A passed-through function as the state dump sees it.
pub struct Attached {
    name: String,
    address: Bdf,
    interrupts: Interrupts,
    dma: Arc<VfioDma>,
}

impl Attached {
    pub fn state(&self) -> PassthroughState {
        PassthroughState {
            name: self.name.clone(),
            address: self.address,
            interrupts: self.interrupts.state(),
            dma: self.dma.state(),
        }
    }
}

/// Opens `host` and puts it at device `slot` of the root bus: its DMA follows the guest's
/// IOMMU (or all RAM, without one), its INTx drives the IOAPIC pin the _PRT gives it and is
/// resampled at EOI, and its vectors are re-routed when the guest invalidates interrupt
/// entries.
pub fn attach(
    pci: &Mutex<PciRoot>,
    host: &HostDevice,
    slot: u8,
    w: &Wiring,
) -> Result<Attached, AttachError> {
    let address = Bdf::new(0, slot, 0);
    let (mut dev, container) = VfioPciDevice::open(
        host,
        VfioPciWiring {
            address,
            trigger: w.msi.clone(),
            routing: Some(w.routing.clone()),
            mapper: Some(w.mapper.clone()),
        },
    )?;
    let pin = dev.interrupt_pin();
    if pin != 0 {
        let gsi = intx_gsi(slot, pin) as usize;
        let line = Arc::new(IoapicPin {
            ioapic: w.ioapic.clone(),
            pin: gsi,
        });
        if dev.wire_intx(line) {
            lock(w.ioapic).set_resample(gsi, Some(Arc::new(dev.interrupts())));
        }
    }
    let host_dma = VfioHost {
        container,
        function: dev.host_function(),
    };
    let dma = Arc::new(VfioDma::new(Arc::new(host_dma), w.mem.clone(), &host.name));
    // Guest RAM is mapped for the device's DMA while the guest boots; the guest's first
    // command register write (bus mastering) waits for it.
    dma.map_identity_in_background()?;
    dev.set_dma_gate(dma.clone());
    if let Some(i) = w.iommu {
        i.track(address, dma.clone());
        i.add_interrupt_routes(Arc::new(dev.interrupts()));
    }
    let interrupts = dev.interrupts();
    lock(pci).add_device(Arc::new(Mutex::new(dev)), Some(slot))?;
    log::info!("host device {} at {address}", host.name);
    Ok(Attached {
        name: host.name.clone(),
        address,
        interrupts,
        dma,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
