//! PCI(e) for a single root bus: the device trait, a type-0 configuration space helper, the
//! host bridge, and the root that dispatches configuration cycles (0xCF8/0xCFC and ECAM) and
//! BAR decoding on the MMIO and port buses. Interrupts of every function (emulated or passed
//! through): the MSI and MSI-X capability models ([`msi`], [`msix`]), the vector group behind
//! them ([`vectors`]) and MSI-X for emulated functions ([`emulated`]). Register offsets
//! and bits are in [`regs`], once.

pub mod configuration;
pub mod emulated;
pub mod host_bridge;
pub mod msi;
pub mod msix;
pub mod regs;
pub mod root;
pub mod vectors;

pub use configuration::{BarKind, BarSpec, PciConfiguration, PciIds};
pub use root::{
    intx_gsi, IoEventRegistrar, NoIoEvents, PciBuses, PciConfigIo, PciConfigMmio, PciRoot, PrtRoute,
};

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
    /// The eventfds to signal on a guest write into BAR `bar`: (offset within the BAR, a
    /// clone of the fd). The root bus registers them with the hypervisor wherever the BAR
    /// decodes, and moves them with it; writes there then no longer reach `write_bar`.
    fn ioeventfds(&self, _bar: usize) -> Vec<(u64, vmm_sys_util::eventfd::EventFd)> {
        Vec::new()
    }
}
