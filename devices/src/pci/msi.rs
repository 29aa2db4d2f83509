//! The MSI capability (PCI local bus spec 3.0 section 6.8.1): 64-bit address, one vector, no
//! per-vector masking, as the edu device has it.

use super::configuration::{ConfigError, PciConfiguration};

/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Message control: MSI enable (bit 0), multiple message enable (bits 6:4), 64-bit capable
/// (bit 7, read-only).
const CONTROL_ENABLE: u8 = 1 << 0;
const CONTROL_MME_MASK: u8 = 0x70;
const CONTROL_64BIT: u8 = 1 << 7;
/// Offsets from the capability start.
const OFF_CONTROL: usize = 2;
const OFF_ADDRESS_LO: usize = 4;
const OFF_ADDRESS_HI: usize = 8;
const OFF_DATA: usize = 12;

/// Where a device's MSI capability lives.
#[derive(Clone, Copy, Debug)]
pub struct MsiCapability {
    offset: usize,
}

impl MsiCapability {
    /// Appends the capability to `config`.
    pub fn add(config: &mut PciConfiguration) -> Result<Self, ConfigError> {
        let body = [CONTROL_64BIT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let writable = [
            CONTROL_ENABLE | CONTROL_MME_MASK,
            0,
            0xfc,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
        ];
        let offset = config.add_capability(CAP_ID_MSI, &body, &writable)?;
        Ok(MsiCapability { offset })
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether the guest enabled MSI.
    pub fn enabled(&self, config: &PciConfiguration) -> bool {
        config.byte(self.offset + OFF_CONTROL) & CONTROL_ENABLE != 0
    }

    /// The message the guest programmed: (address, data).
    pub fn message(&self, config: &PciConfiguration) -> (u64, u32) {
        let b = |i| u64::from(config.byte(self.offset + i));
        let lo = b(OFF_ADDRESS_LO)
            | b(OFF_ADDRESS_LO + 1) << 8
            | b(OFF_ADDRESS_LO + 2) << 16
            | b(OFF_ADDRESS_LO + 3) << 24;
        let hi = b(OFF_ADDRESS_HI)
            | b(OFF_ADDRESS_HI + 1) << 8
            | b(OFF_ADDRESS_HI + 2) << 16
            | b(OFF_ADDRESS_HI + 3) << 24;
        let data = b(OFF_DATA) | b(OFF_DATA + 1) << 8;
        ((hi << 32) | lo, data as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::configuration::PciIds;

    fn config() -> (PciConfiguration, MsiCapability) {
        let mut c = PciConfiguration::new(
            PciIds {
                vendor: 1,
                device: 2,
                class: 0,
                subclass: 0,
                prog_if: 0,
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            },
            1,
        );
        let m = MsiCapability::add(&mut c).unwrap();
        (c, m)
    }

    #[test]
    fn msi_programming_is_visible() {
        let (mut c, m) = config();
        let reg = m.offset() / 4;
        assert!(!m.enabled(&c));
        c.write_register(reg + 1, 0, &0xfee0_1004u32.to_le_bytes());
        c.write_register(reg + 2, 0, &0x1u32.to_le_bytes());
        c.write_register(reg + 3, 0, &0xffff_4041u32.to_le_bytes());
        c.write_register(reg, 2, &[0x01, 0x00]);
        assert!(m.enabled(&c));
        assert_eq!(m.message(&c), (0x1_fee0_1004, 0x4041), "data is 16 bits");
    }

    #[test]
    fn msi_read_only_bits_hold() {
        let (mut c, m) = config();
        let reg = m.offset() / 4;
        c.write_register(reg, 2, &[0x00, 0xff]);
        assert_eq!(
            c.byte(m.offset() + 2),
            CONTROL_64BIT,
            "64-bit capable stays"
        );
        c.write_register(reg + 1, 0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(c.byte(m.offset() + 4), 0xfc, "address is dword aligned");
        assert_eq!(c.byte(m.offset()), CAP_ID_MSI);
    }
}
