//! The interrupt platform: MSIs into KVM, the emulated VT-d unit (with interrupt remapping in
//! front of KVM when it has one), and the userspace IOAPIC behind that chain.

use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::interrupt::{InterruptRoutes, IrqfdRouting, MsiTrigger};
use devices::ioapic::Ioapic;
use iommu::IommuConfig;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::exit::EoiHandler;
use crate::interrupts::KvmMsi;
use crate::iommu::{Iommu, RemappedMsi, UnitInterrupts};
use crate::layout::{IOAPIC_ID, IOAPIC_SOURCE};

/// What devices raise interrupts through.
pub struct InterruptPlatform {
    /// KVM's MSI delivery and GSI routes.
    pub kvm: Arc<KvmMsi>,
    /// MSIs the VMM sends (through interrupt remapping, if any).
    pub msi: Arc<dyn MsiTrigger>,
    /// In-KVM delivery of vectors (irqfds), remapped if there is an IOMMU.
    pub routing: Arc<dyn IrqfdRouting>,
    pub iommu: Option<Arc<Iommu>>,
    pub ioapic: Arc<Mutex<Ioapic>>,
}

impl InterruptPlatform {
    pub fn new(vm: Arc<VmFd>, iommu: Option<IommuConfig>, mem: &GuestMemoryMmap) -> Self {
        let kvm = Arc::new(KvmMsi::new(vm));
        let kvm_msi: Arc<dyn MsiTrigger> = kvm.clone();
        let iommu = iommu.map(|cfg| {
            let unit = iommu::RemappingUnit::new(cfg, Box::new(UnitInterrupts(kvm_msi.clone())));
            Iommu::new(unit, mem.clone())
        });
        // With an IOMMU every interrupt passes interrupt remapping on its way to KVM, and
        // irqfd routes hold remapped messages.
        let (msi, routing): (Arc<dyn MsiTrigger>, Arc<dyn IrqfdRouting>) = match &iommu {
            Some(i) => {
                let r = Arc::new(RemappedMsi {
                    iommu: i.clone(),
                    out: kvm_msi.clone(),
                    routing: kvm.clone(),
                });
                (r.clone(), r)
            }
            None => (kvm_msi, kvm.clone()),
        };
        let ioapic = Arc::new(Mutex::new(Ioapic::new(
            IOAPIC_ID,
            IOAPIC_SOURCE,
            msi.clone(),
        )));
        if let Some(i) = &iommu {
            i.add_interrupt_routes(Arc::new(IoapicRoutes(ioapic.clone())));
        }
        InterruptPlatform {
            kvm,
            msi,
            routing,
            iommu,
            ioapic,
        }
    }
}

/// The IOAPIC's level-triggered routes, recomputed after interrupt entry invalidations.
struct IoapicRoutes(Arc<Mutex<Ioapic>>);

impl InterruptRoutes for IoapicRoutes {
    fn refresh(&self) {
        lock(&self.0).refresh_routes();
    }
}

/// The IOAPIC as the vCPUs' EOI target.
pub struct IoapicEoi(pub Arc<Mutex<Ioapic>>);

impl EoiHandler for IoapicEoi {
    fn end_of_interrupt(&self, vector: u8) {
        lock(&self.0).end_of_interrupt(vector);
    }
}
