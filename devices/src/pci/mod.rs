//! PCI(e) for a single root bus: the device trait, a type-0 configuration space helper, the
//! host bridge, and the root that dispatches configuration cycles (0xCF8/0xCFC and ECAM) and
//! BAR accesses. Interrupts of every function (emulated or passed through): the MSI and MSI-X
//! capability models ([`msi`], [`msix`]), the vector group behind them ([`vectors`]) and MSI-X
//! for emulated functions ([`emulated`]). Register offsets and bits are in [`regs`], once.

pub mod configuration;
pub mod emulated;
pub mod host_bridge;
pub mod msi;
pub mod msix;
pub mod regs;
pub mod root;
pub mod vectors;

pub use configuration::{BarKind, BarSpec, PciConfiguration, PciIds};
pub use root::{intx_gsi, PciConfigIo, PciConfigMmio, PciRoot, PciWindow, PrtRoute};

/// A PCI function as the root bus sees it: configuration by dword index, BARs by (index,
/// offset). Implemented by every PCI device model (host bridge, edu, VFIO passthrough).
pub trait PciDevice: Send {
    fn read_config_register(&mut self, reg_idx: usize) -> u32;
    /// A write of `data` at byte `offset` (0..4) within dword `reg_idx`.
    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]);
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Memory BAR `bar` now decodes at `base` (None: decoding stopped). Devices that map BARs
    /// straight into the guest (VFIO) move the mapping; others need not care.
    fn bar_moved(&mut self, _bar: usize, _base: Option<u64>) {}
}
