//! MSI delivery into KVM: `KVM_SIGNAL_MSI` for each interrupt, and GSI routes that tell KVM's
//! split irqchip which IOAPIC vectors are level-triggered (so their EOIs exit to userspace).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::interrupt::{InterruptError, MsiMessage, MsiTrigger};
use kvm_bindings::{kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::VmFd;
use log::warn;

/// Sends MSIs through KVM.
pub struct KvmMsi {
    vm: Arc<VmFd>,
    routes: Mutex<BTreeMap<u32, kvm_irq_routing_entry>>,
}

impl KvmMsi {
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmMsi {
            vm,
            routes: Mutex::new(BTreeMap::new()),
        }
    }

    fn set_routes(&self, routes: &BTreeMap<u32, kvm_irq_routing_entry>) {
        let entries: Vec<kvm_irq_routing_entry> = routes.values().copied().collect();
        let table = match KvmIrqRouting::from_entries(&entries) {
            Ok(t) => t,
            Err(e) => {
                warn!("cannot build the GSI routing table: {e:?}");
                return;
            }
        };
        if let Err(e) = self.vm.set_gsi_routing(&table) {
            warn!("KVM_SET_GSI_ROUTING failed: {e}");
        }
    }
}

/// A KVM MSI from a message (address bits 63:32 carry x2APIC destination bits 31:8 when KVM's
/// X2APIC_API is enabled).
pub fn kvm_msi_from(msg: &MsiMessage) -> kvm_msi {
    kvm_msi {
        address_lo: msg.address as u32,
        address_hi: (msg.address >> 32) as u32,
        data: msg.data,
        ..Default::default()
    }
}

fn msi_route(gsi: u32, msg: &MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = msg.address as u32;
    e.u.msi.address_hi = (msg.address >> 32) as u32;
    e.u.msi.data = msg.data;
    e
}

impl MsiTrigger for KvmMsi {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), InterruptError> {
        self.vm
            .signal_msi(kvm_msi_from(&msg))
            .map(|_| ())
            .map_err(|e| InterruptError::Delivery(format!("KVM_SIGNAL_MSI: {e}")))
    }

    fn ioapic_route_changed(&self, pin: usize, msg: Option<MsiMessage>) {
        let gsi = pin as u32;
        let mut routes = lock(&self.routes);
        let changed = match msg {
            Some(m) => routes.insert(gsi, msi_route(gsi, &m)).is_none_or(|old| {
                // SAFETY: `old` was built by msi_route, so the msi member is the active one.
                let o = unsafe { old.u.msi };
                (o.address_lo, o.address_hi, o.data)
                    != (m.address as u32, (m.address >> 32) as u32, m.data)
            }),
            None => routes.remove(&gsi).is_some(),
        };
        if changed {
            self.set_routes(&routes);
        }
    }
}
