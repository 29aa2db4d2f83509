//! Device models for minivmm. Every model is a synchronous state machine behind the narrow
//! [`bus::BusDevice`] trait; side effects leave through small injected traits
//! ([`interrupt::MsiTrigger`], [`interrupt::IrqLine`]) so tests can watch them.

pub mod bus;
pub mod dma;
pub mod edu;
pub mod interrupt;

pub use iommu::Bdf;
