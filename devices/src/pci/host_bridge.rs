//! The host bridge at 00:00.0, in one of two personalities.
//!
//! - Generic (direct kernel boot): Red Hat's PCIe host bridge id (1b36:0008) rather than a
//!   chipset's, so that Linux applies no chipset quirks (for example reading MMCONFIG from a
//!   Q35 PCIEXBAR register) and trusts the ACPI MCFG instead.
//! - Q35 (firmware boot, `--bios`): the Intel 82Q35 MCH id (8086:29C0) that OVMF recognises
//!   (edk2 OvmfPkg/Include/OvmfPlatforms.h, INTEL_Q35_MCH_DEVICE_ID). The device-specific
//!   registers 0x40..0xFF (PCIEXBAR at 0x60/0x64, PAM at 0x90..0x96, SMRAM at 0x9D, ...)
//!   store what the guest writes and read it back. PCIEXBAR does not move ECAM: the machine
//!   decodes ECAM at the fixed base OVMF programs (0xB0000000, 256 MiB: OVMF's
//!   PcdPciExpressBaseAddress), whatever the register holds; [`HostBridge::pciexbar`] gives
//!   the stored value.

use super::configuration::{PciConfiguration, PciIds};
use super::PciDevice;

/// Red Hat, Inc. / QEMU PCIe host bridge.
pub const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
pub const HOST_BRIDGE_DEVICE: u16 = 0x0008;
/// Intel 82Q35 memory controller hub (QEMU hw/pci-host/q35.c, edk2 Q35MchIch9.h).
pub const Q35_VENDOR: u16 = 0x8086;
pub const Q35_MCH_DEVICE: u16 = 0x29c0;
/// PCIEXBAR: 64-bit register at 0x60 (Q35 MCH datasheet 5.1.15; edk2 Q35MchIch9.h
/// MCH_PCIEXBAR_LOW/HIGH).
pub const MCH_PCIEXBAR: usize = 0x60;
/// PCIEXBAR bit 0: PCIEXBAREN.
pub const PCIEXBAR_ENABLE: u64 = 1;
/// Class 06/00/00: bridge device, host bridge.
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST: u8 = 0x00;
/// First and end (exclusive) byte of the device-specific registers.
const SPECIFIC_START: usize = 0x40;
const SPECIFIC_END: usize = 0x100;
const SPECIFIC_DWORDS: usize = (SPECIFIC_END - SPECIFIC_START) / 4;

pub struct HostBridge {
    config: PciConfiguration,
    /// Q35 only: the device-specific registers, stored as written.
    specific: Option<[u32; SPECIFIC_DWORDS]>,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// The generic host bridge (direct kernel boot).
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
            specific: None,
        }
    }

    /// The Q35 MCH look-alike (firmware boot).
    pub fn q35() -> Self {
        HostBridge {
            config: PciConfiguration::new(
                PciIds {
                    vendor: Q35_VENDOR,
                    device: Q35_MCH_DEVICE,
                    class: CLASS_BRIDGE,
                    subclass: SUBCLASS_HOST,
                    prog_if: 0,
                    revision: 0,
                    subsystem_vendor: HOST_BRIDGE_VENDOR,
                    subsystem: 0x1100,
                },
                0,
            ),
            specific: Some([0; SPECIFIC_DWORDS]),
        }
    }

    /// The stored PCIEXBAR (Q35 only).
    pub fn pciexbar(&self) -> Option<u64> {
        let s = self.specific.as_ref()?;
        let i = (MCH_PCIEXBAR - SPECIFIC_START) / 4;
        Some(u64::from(s[i]) | (u64::from(s[i + 1]) << 32))
    }

    fn specific_index(&self, reg_idx: usize) -> Option<usize> {
        let at = reg_idx.checked_mul(4)?;
        (self.specific.is_some() && (SPECIFIC_START..SPECIFIC_END).contains(&at))
            .then(|| (at - SPECIFIC_START) / 4)
    }
}

impl PciDevice for HostBridge {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        match (self.specific_index(reg_idx), &self.specific) {
            (Some(i), Some(s)) => s[i],
            _ => self.config.read_register(reg_idx),
        }
    }
    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        let index = self.specific_index(reg_idx);
        match (index, &mut self.specific) {
            (Some(i), Some(s)) => {
                let Some(shift) = byte_shift(offset, data.len()) else {
                    return;
                };
                let mut bytes = s[i].to_le_bytes();
                bytes[shift..shift + data.len()].copy_from_slice(data);
                s[i] = u32::from_le_bytes(bytes);
            }
            _ => self.config.write_register(reg_idx, offset, data),
        }
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// The byte position of a `len`-byte write at `offset` within a dword, if it fits.
pub(crate) fn byte_shift(offset: u64, len: usize) -> Option<usize> {
    let o = usize::try_from(offset).ok()?;
    (o.checked_add(len)? <= 4).then_some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bridge_q35_reads_mch_id() {
        let mut h = HostBridge::q35();
        assert_eq!(h.read_config_register(0), 0x29c0_8086);
        assert_eq!(
            h.read_config_register(2) >> 8,
            0x06_00_00,
            "class host bridge"
        );
        let mut g = HostBridge::new();
        assert_eq!(g.read_config_register(0), 0x0008_1b36);
    }

    #[test]
    fn host_bridge_q35_pciexbar_stores_ovmf_sequence() {
        let mut h = HostBridge::q35();
        // OVMF PciExBarInitialization: high 0, low 0, then low = base | enable.
        h.write_config_register(MCH_PCIEXBAR / 4 + 1, 0, &0u32.to_le_bytes());
        h.write_config_register(MCH_PCIEXBAR / 4, 0, &0u32.to_le_bytes());
        h.write_config_register(MCH_PCIEXBAR / 4, 0, &0xb000_0001u32.to_le_bytes());
        assert_eq!(h.read_config_register(MCH_PCIEXBAR / 4), 0xb000_0001);
        assert_eq!(h.pciexbar(), Some(0xb000_0000 | PCIEXBAR_ENABLE));
    }

    #[test]
    fn host_bridge_q35_pam_byte_writes_store() {
        let mut h = HostBridge::q35();
        h.write_config_register(0x90 / 4, 1, &[0x33]);
        h.write_config_register(0x90 / 4, 2, &[0x11, 0x22]);
        assert_eq!(h.read_config_register(0x90 / 4), 0x2211_3300);
        // A write that crosses the dword is dropped.
        h.write_config_register(0x90 / 4, 3, &[1, 2]);
        assert_eq!(h.read_config_register(0x90 / 4), 0x2211_3300);
    }

    #[test]
    fn host_bridge_generic_ignores_specific_registers() {
        let mut h = HostBridge::new();
        h.write_config_register(MCH_PCIEXBAR / 4, 0, &0xb000_0001u32.to_le_bytes());
        assert_eq!(h.read_config_register(MCH_PCIEXBAR / 4), 0);
        assert_eq!(h.pciexbar(), None);
    }
}
