//! The seams through which devices raise interrupts.

use iommu::Bdf;

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
