//! Device models for minivmm. Every model is a synchronous state machine behind the narrow
//! [`bus::BusDevice`] trait; side effects leave through small injected traits
//! ([`interrupt::MsiTrigger`], [`interrupt::IrqLine`]) so tests can watch them.

pub mod acpi_pm;
pub mod bus;
pub mod debug_exit;
pub mod dma;
pub mod edu;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod fw_cfg;
pub mod i8042;
pub mod interrupt;
pub mod ioapic;
pub mod pci;
pub mod pvpanic;
pub mod serial;
pub mod vfio;
pub mod vm_control;

pub use iommu::Bdf;
