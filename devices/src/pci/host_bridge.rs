//! The host bridge at 00:00.0. It uses Red Hat's generic PCIe host bridge id (1b36:0008)
//! rather than a chipset's, so that Linux applies no chipset quirks (for example reading
//! MMCONFIG from a Q35 PCIEXBAR register) and trusts the ACPI MCFG instead.

use super::configuration::{PciConfiguration, PciIds};
use super::PciDevice;

/// Red Hat, Inc. / QEMU PCIe host bridge.
pub const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
pub const HOST_BRIDGE_DEVICE: u16 = 0x0008;
/// Class 06/00/00: bridge device, host bridge.
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST: u8 = 0x00;

pub struct HostBridge {
    config: PciConfiguration,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    pub fn new() -> Self {
        HostBridge {
            config: PciConfiguration::new(
                PciIds {
                    vendor: HOST_BRIDGE_VENDOR,
                    device: HOST_BRIDGE_DEVICE,
                    class: CLASS_BRIDGE,
                    subclass: SUBCLASS_HOST,
                    prog_if: 0,
                    revision: 0,
                    subsystem_vendor: HOST_BRIDGE_VENDOR,
                    subsystem: 0x1100,
                },
                0,
            ),
        }
    }
}

impl PciDevice for HostBridge {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.config.read_register(reg_idx)
    }
    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        self.config.write_register(reg_idx, offset, data);
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}
