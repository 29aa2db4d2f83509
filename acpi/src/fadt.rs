//! FADT (ACPI 6.5 section 5.2.9) for the hardware-reduced profile: no PIT, PIC, SCI or PM
//! timer; sleep control/status registers for S5 and a reset register (sections 4.1, 4.8.3).
//!
//! Hardware-reduced ACPI is chosen over emulating a PIT and a PIC: Linux then skips the legacy
//! timer check through the IOAPIC and uses the local APIC timer and kvmclock, and minivmm
//! carries two fewer legacy devices (cloud-hypervisor makes the same choice).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::Aml;

use crate::table::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// The power-management ports the FADT points at.
#[derive(Clone, Copy, Debug)]
pub struct PmRegisters {
    pub sleep_control_port: u16,
    pub sleep_status_port: u16,
    pub reset_port: u16,
    pub reset_value: u8,
}

/// FADT major and minor version (ACPI 6.5).
const FADT_REVISION: u8 = 6;
const FADT_MINOR_REVISION: u8 = 5;
/// IAPC_BOOT_ARCH (ACPI 6.5 table 5.11): VGA not present (bit 2), CMOS RTC not present
/// (bit 5). No legacy devices and no 8042 bits: there are none.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

fn io_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

pub fn build(dsdt: u64, pm: &PmRegisters) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.major_version = FADT_REVISION;
    f.fadt_minor_version = FADT_MINOR_REVISION;
    f.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    f.reset_reg = io_gas(pm.reset_port);
    f.reset_value = pm.reset_value;
    f.sleep_control_reg = io_gas(pm.sleep_control_port);
    f.sleep_status_reg = io_gas(pm.sleep_status_port);
    let mut b = Vec::new();
    f.finalize().to_aml_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::checksum;

    const PM: PmRegisters = PmRegisters {
        sleep_control_port: 0x600,
        sleep_status_port: 0x601,
        reset_port: 0x604,
        reset_value: 1,
    };

    #[test]
    fn fadt_is_hardware_reduced_with_reset_and_sleep_registers() {
        let b = build(0xe1000, &PM);
        assert_eq!(&b[0..4], b"FACP");
        assert_eq!(b.len(), 276);
        assert_eq!(checksum(&b), 0);
        let flags = u32::from_le_bytes(b[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // RESET_REG: GAS at 116 (system I/O, 8 bits, port 0x604); RESET_VALUE at 128.
        assert_eq!(b[116], 1);
        assert_eq!(u64::from_le_bytes(b[120..128].try_into().unwrap()), 0x604);
        assert_eq!(b[128], 1);
        // X_DSDT at 140; SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(u64::from_le_bytes(b[140..148].try_into().unwrap()), 0xe1000);
        assert_eq!(u64::from_le_bytes(b[248..256].try_into().unwrap()), 0x600);
        assert_eq!(u64::from_le_bytes(b[260..268].try_into().unwrap()), 0x601);
    }
}
