//! PCI passthrough with VFIO: host-side checks, the host function behind a trait, the
//! passed-through function's model (configuration space, BARs, MSI, MSI-X, INTx) and the
//! relay that carries the interrupts the hypervisor does not deliver itself.

pub mod bars;
mod config;
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code))] // the fuzzer uses part of it
pub(crate) mod fake;
pub mod function;
pub mod host;
pub mod interrupts;
pub mod pci;
mod relay;

pub use bars::GuestMmioMapper;
pub use host::{check, HostDevice, HostDeviceError};
pub use interrupts::{Interrupts, InterruptsState, IntxState, Mode};
pub use pci::{DmaGate, VfioPciDevice, VfioPciError, VfioPciWiring};
