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
use log::warn;
use vm_memory::GuestMemoryMmap;

use crate::iommu::Iommu;
use crate::vm::VmError;

mod dma;
pub use dma::{VfioDma, VfioDmaError, VfioHost};

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
    pub fn dump(&self) -> String {
        format!(
            "passthrough {} at {}:\n{}  {}",
            self.name,
            self.address,
            self.interrupts.dump(),
            self.dma.summary()
        )
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
) -> Result<Attached, VmError> {
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

/// BARs mapped into the guest as KVM memory slots.
pub struct KvmMmioMapper {
    vm: Arc<kvm_ioctls::VmFd>,
    /// Slot numbers in use by BAR mappings (RAM takes the first ones).
    used: Mutex<Vec<u32>>,
}

/// First KVM memory slot for BAR mappings; RAM uses slots 0 and 1.
const FIRST_MMIO_SLOT: u32 = 8;

impl KvmMmioMapper {
    pub fn new(vm: Arc<kvm_ioctls::VmFd>) -> Self {
        KvmMmioMapper {
            vm,
            used: Mutex::new(Vec::new()),
        }
    }

    fn set(&self, slot: u32, gpa: u64, size: u64, host: usize) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: `host..host + size` is a live mmap() of a VFIO region owned by the device,
        // which removes the slot (size 0 here) before it unmaps the region; a size of 0 only
        // deletes the slot.
        unsafe { self.vm.set_user_memory_region(region) }
    }
}

impl devices::vfio::GuestMmioMapper for KvmMmioMapper {
    fn map(&self, gpa: u64, size: u64, host: usize) -> Result<u32, String> {
        let mut used = lock(&self.used);
        let slot = (FIRST_MMIO_SLOT..)
            .find(|s| !used.contains(s))
            .ok_or("no free memory slot")?;
        self.set(slot, gpa, size, host).map_err(|e| e.to_string())?;
        used.push(slot);
        Ok(slot)
    }

    fn unmap(&self, slot: u32) {
        if let Err(e) = self.set(slot, 0, 0, 0) {
            warn!("KVM: removing BAR memory slot {slot}: {e}");
        }
        lock(&self.used).retain(|s| *s != slot);
    }
}
