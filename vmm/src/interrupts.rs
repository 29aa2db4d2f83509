//! MSI delivery into KVM: `KVM_SIGNAL_MSI` for each interrupt the VMM sends, GSI routes that
//! tell KVM's split irqchip which IOAPIC vectors are level-triggered (so their EOIs exit to
//! userspace), and irqfds on GSI routes of their own for passed-through devices' vectors.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::interrupt::{InterruptError, IrqfdRouting, MsiMessage, MsiTrigger};
use kvm_bindings::{kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::VmFd;
use log::warn;
use vm_allocator::IdAllocator;
use vmm_sys_util::eventfd::EventFd;

use crate::layout::IOAPIC_NUM_PINS;

/// GSIs for irqfds: after the IOAPIC's pins, up to this many routes in all (KVM's
/// KVM_MAX_IRQ_ROUTES is 4096; the table is rewritten whole on each change, so keep it
/// modest).
const MAX_GSI: u32 = 1024;
const _: () = assert!((IOAPIC_NUM_PINS as u32) < MAX_GSI);

/// GSI routes and irqfds.
struct Routes {
    entries: BTreeMap<u32, kvm_irq_routing_entry>,
    /// Eventfd (by descriptor number) -> its GSI.
    irqfds: HashMap<RawFd, u32>,
    /// The irqfd GSIs, IOAPIC_NUM_PINS .. MAX_GSI.
    gsis: IdAllocator,
}

impl Routes {
    fn new() -> Self {
        Routes {
            entries: BTreeMap::new(),
            irqfds: HashMap::new(),
            // A valid range (IOAPIC_NUM_PINS < MAX_GSI): new() cannot fail.
            gsis: IdAllocator::new(IOAPIC_NUM_PINS as u32, MAX_GSI - 1)
                .unwrap_or_else(|e| unreachable!("{e}")),
        }
    }

    /// Gives an irqfd GSI back.
    fn free_gsi(&mut self, gsi: u32) {
        if let Err(e) = self.gsis.free_id(gsi) {
            warn!("GSI {gsi}: {e}");
        }
    }
}

/// Sends MSIs through KVM.
pub struct KvmMsi {
    vm: Arc<VmFd>,
    routes: Mutex<Routes>,
}

impl KvmMsi {
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmMsi {
            vm,
            routes: Mutex::new(Routes::new()),
        }
    }

    fn set_routes(&self, routes: &BTreeMap<u32, kvm_irq_routing_entry>) -> bool {
        let entries: Vec<kvm_irq_routing_entry> = routes.values().copied().collect();
        let table = match KvmIrqRouting::from_entries(&entries) {
            Ok(t) => t,
            Err(e) => {
                warn!("cannot build the GSI routing table: {e:?}");
                return false;
            }
        };
        if let Err(e) = self.vm.set_gsi_routing(&table) {
            warn!("KVM_SET_GSI_ROUTING failed: {e}");
            return false;
        }
        true
    }

    /// Current routes: (GSI, address, data) of each irqfd route, for the state dump.
    pub fn irqfd_routes(&self) -> Vec<(u32, u64, u32)> {
        let r = lock(&self.routes);
        let mut v: Vec<(u32, u64, u32)> = r
            .irqfds
            .values()
            .filter_map(|g| r.entries.get(g))
            .map(|e| {
                // SAFETY: every entry in the table was built by msi_route.
                let m = unsafe { e.u.msi };
                (
                    e.gsi,
                    (u64::from(m.address_hi) << 32) | u64::from(m.address_lo),
                    m.data,
                )
            })
            .collect();
        v.sort();
        v
    }
}

/// Whether `e` (built by msi_route) already sends `msg`.
fn same_message(e: &kvm_irq_routing_entry, msg: &MsiMessage) -> bool {
    // SAFETY: every entry in the table was built by msi_route, so `msi` is the active member.
    let o = unsafe { e.u.msi };
    (o.address_lo, o.address_hi, o.data)
        == (msg.address as u32, (msg.address >> 32) as u32, msg.data)
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
            Some(m) => routes
                .entries
                .insert(gsi, msi_route(gsi, &m))
                .is_none_or(|old| !same_message(&old, &m)),
            None => routes.entries.remove(&gsi).is_some(),
        };
        if changed {
            self.set_routes(&routes.entries);
        }
    }
}

impl IrqfdRouting for KvmMsi {
    fn route(&self, fd: &EventFd, msg: MsiMessage) -> bool {
        let mut routes = lock(&self.routes);
        let r = &mut *routes;
        let (gsi, new) = match r.irqfds.get(&fd.as_raw_fd()) {
            Some(g) => (*g, false),
            None => {
                let Ok(g) = r.gsis.allocate_id() else {
                    warn!("no free GSI for an irqfd; the interrupt is relayed");
                    return false;
                };
                (g, true)
            }
        };
        if !new && r.entries.get(&gsi).is_some_and(|e| same_message(e, &msg)) {
            return true;
        }
        let old = r.entries.insert(gsi, msi_route(gsi, &msg));
        if !self.set_routes(&r.entries) {
            match old {
                Some(o) => r.entries.insert(gsi, o),
                None => r.entries.remove(&gsi),
            };
            if new {
                r.free_gsi(gsi);
            }
            return false;
        }
        if new {
            if let Err(e) = self.vm.register_irqfd(fd, gsi) {
                warn!("KVM_IRQFD: {e}; the interrupt is relayed");
                r.entries.remove(&gsi);
                r.free_gsi(gsi);
                self.set_routes(&r.entries);
                return false;
            }
            r.irqfds.insert(fd.as_raw_fd(), gsi);
        }
        true
    }

    fn unroute(&self, fd: &EventFd) {
        let mut routes = lock(&self.routes);
        let Some(gsi) = routes.irqfds.remove(&fd.as_raw_fd()) else {
            return;
        };
        if let Err(e) = self.vm.unregister_irqfd(fd, gsi) {
            warn!("KVM_IRQFD (deassign): {e}");
        }
        routes.entries.remove(&gsi);
        routes.free_gsi(gsi);
        self.set_routes(&routes.entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_enable_cap, KVM_CAP_SPLIT_IRQCHIP};

    /// A VM with a split irqchip (irqfds need an in-kernel local APIC).
    fn kvm_msi() -> KvmMsi {
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm");
        let vm = kvm.create_vm().unwrap();
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        cap.args[0] = IOAPIC_NUM_PINS as u64;
        vm.enable_cap(&cap).unwrap();
        KvmMsi::new(Arc::new(vm))
    }

    fn msg(data: u32) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000,
            data,
            source: devices::Bdf::new(0, 1, 0),
        }
    }

    #[test]
    fn irqfd_gsis_run_out_and_come_back_when_unrouted() {
        let k = kvm_msi();
        let count = (MAX_GSI - IOAPIC_NUM_PINS as u32) as usize;
        let fds: Vec<EventFd> = (0..=count).map(|_| EventFd::new(0).unwrap()).collect();
        for fd in &fds[..count] {
            assert!(k.route(fd, msg(0x30)));
        }
        assert!(!k.route(&fds[count], msg(0x30)), "no GSI left");
        let gsis: Vec<u32> = k.irqfd_routes().iter().map(|r| r.0).collect();
        assert_eq!(gsis.first(), Some(&(IOAPIC_NUM_PINS as u32)));
        assert_eq!(gsis.last(), Some(&(MAX_GSI - 1)));
        k.unroute(&fds[5]);
        assert!(k.route(&fds[count], msg(0x31)), "the freed GSI is reused");
        assert_eq!(k.irqfd_routes().len(), count);
    }
}
