//! An emulated function with MSI-X, as a virtio-pci device will have it: [`EmulatedMsix`] with
//! the table and PBA in BAR 0, and a doorbell register that raises a vector (a queue's
//! interrupt).

use crate::bus::lock;
use crate::pci::configuration::{BarKind, BarSpec, PciConfiguration, PciIds};
use crate::pci::emulated::{EmulatedMsix, EmulatedMsixError};
use crate::pci::vectors::VectorWiring;
use crate::pci::PciDevice;

/// Vectors of the function (as a virtio device with 7 queues: queues + 1).
pub const MSIX_VECTORS: u16 = 8;
/// BAR 0: the MSI-X table at 0, the PBA at 0x1000, the doorbell at 0x1800.
pub const MSIX_BAR_SIZE: u64 = 0x2000;
pub const MSIX_TABLE: u32 = 0;
pub const MSIX_PBA: u32 = 0x1000;
/// A write of `i` raises vector `i` (modulo the table size).
pub const MSIX_DOORBELL: u64 = 0x1800;

pub struct MsixFunction {
    config: PciConfiguration,
    pub msix: EmulatedMsix,
}

impl MsixFunction {
    pub fn new(wiring: VectorWiring) -> Result<Self, EmulatedMsixError> {
        let mut config = PciConfiguration::new(
            PciIds {
                vendor: 0x1af4,
                device: 0x1044,
                class: 0xff,
                subclass: 0,
                prog_if: 0,
                revision: 1,
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
            },
            0,
        );
        config.add_bar(BarSpec {
            index: 0,
            size: MSIX_BAR_SIZE,
            kind: BarKind::Mem32,
        })?;
        let msix = EmulatedMsix::add_to(
            &mut config,
            MSIX_VECTORS,
            (0, MSIX_TABLE),
            (0, MSIX_PBA),
            wiring,
        )?;
        Ok(MsixFunction { config, msix })
    }
}

impl PciDevice for MsixFunction {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        let v = self.config.read_register(reg_idx);
        self.msix.read_config_register(reg_idx, v)
    }

    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        self.config.write_register(reg_idx, offset, data);
        self.msix.write_config_register(reg_idx, offset, data);
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if !self.msix.read_bar(bar, offset, data) {
            data.fill(0);
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if self.msix.write_bar(bar, offset, data) {
            return;
        }
        if bar == 0 && offset == MSIX_DOORBELL {
            if let Some(&v) = data.first() {
                let i = usize::from(v) % usize::from(MSIX_VECTORS);
                lock(&self.msix.vectors()).trigger(i);
            }
        }
    }
}
