//! The seams through which devices raise interrupts.

use iommu::Bdf;
use vmm_sys_util::eventfd::EventFd;

/// An MSI as it appears on the bus: a 32-bit write of `data` to `address` (Intel SDM vol. 3
/// section 11.11), issued by requester `source` (what interrupt remapping validates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
    pub source: Bdf,
}

/// Why an interrupt could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("Delivering the interrupt failed: {0}")]
    Delivery(String),
}

/// Delivers MSIs (from the IOAPIC or a PCI function) towards the CPUs. The VMM implements it:
/// interrupt remapping first if enabled, then KVM.
pub trait MsiTrigger: Send + Sync {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), InterruptError>;

    /// The IOAPIC tells the VMM what message pin `pin` would send now (None: masked or edge).
    /// With KVM's split irqchip this lets the kernel know which vectors need an EOI exit
    /// (level-triggered ones). Other senders never call it.
    fn ioapic_route_changed(&self, _pin: usize, _msg: Option<MsiMessage>) {}
}

/// A wired interrupt line (ISA IRQ or PCI INTx) into an interrupt controller pin.
pub trait IrqLine: Send + Sync {
    /// Raises (`true`) or lowers (`false`) the line. Edge-triggered consumers act on 0 -> 1.
    fn set_level(&self, level: bool);

    /// An edge: raise then lower.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// Hypervisor-side delivery of an eventfd's signals as an MSI (with KVM: an irqfd on a GSI
/// route), so a passed-through device's interrupts reach the guest without the VMM on the
/// path. `fd` identifies the route until `unroute`.
pub trait IrqfdRouting: Send + Sync {
    /// Makes each signal of `fd` deliver `msg`, as the device sends it (interrupt remapping,
    /// if any, applies first). Routing an already routed `fd` moves it to the new message.
    /// Returns false when the hypervisor cannot deliver it: remapping blocks the message, or
    /// no route is free. The route is then removed and the caller relays `fd` through its
    /// [`MsiTrigger`], where a blocked interrupt is recorded as a fault.
    fn route(&self, fd: &EventFd, msg: MsiMessage) -> bool;

    /// Stops delivering `fd`'s signals; from now on they stay in the eventfd.
    fn unroute(&self, fd: &EventFd);
}

/// Watches eventfds on the VMM's behalf (with VFIO: the relay thread's epoll set), for
/// interrupts that something outside the VMM signals (a host device) but the hypervisor does
/// not deliver itself.
pub trait FdWatcher: Send + Sync {
    /// Reports `token` whenever `fd` becomes readable.
    fn watch(&self, fd: &EventFd, token: u64);
    fn unwatch(&self, fd: &EventFd);
}

/// Something that derived hypervisor routes from interrupt messages the guest programmed, and
/// must derive them again when interrupt remapping entries change (VT-d 6.5.2.7: after an
/// interrupt entry cache invalidation the hardware uses the new IRTEs).
pub trait InterruptRoutes: Send + Sync {
    fn refresh(&self);
}

/// Told when a level-triggered interrupt it raised was serviced: the guest EOIed it at the
/// interrupt controller, which has already lowered the line (KVM's resamplefd semantics). A
/// passed-through INTx unmasks the host interrupt here; if the device still asserts it, the
/// host signals again.
pub trait Resample: Send + Sync {
    fn resample(&self);
}
