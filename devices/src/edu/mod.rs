//! The `edu` educational PCI device (PCI 1234:11e8), register-compatible with QEMU's
//! (docs/specs/edu.rst): a small DMA engine for testing IOMMU translation end to end.

pub mod pci;
pub mod registers;

#[cfg(test)]
mod tests;

pub use pci::EduDevice;
pub use registers::{EduInterrupt, EduRegisters};
