//! PCI passthrough with VFIO: host-side checks, the passed-through function, and the relay
//! that turns its interrupts into MSIs on the VMM's path.

pub mod host;
pub mod pci;
mod relay;

pub use host::{check, HostDevice, HostDeviceError};
pub use pci::{DmaGate, GuestMmioMapper, VfioPciDevice, VfioPciError};
