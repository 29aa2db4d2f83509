//! MADT, the Multiple APIC Description Table (ACPI 6.5 section 5.2.12). Hand-built on the
//! common table helper because acpi_tables' MADT has no x2APIC or local-APIC-NMI entries.

use crate::table::Table;

/// Local APIC address field value (Intel SDM vol. 3 section 11.4.1).
pub const LOCAL_APIC_ADDRESS: u32 = 0xfee0_0000;
/// Entry types (ACPI 6.5 table 5.21).
const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IO_APIC: u8 = 1;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
const TYPE_LOCAL_X2APIC: u8 = 9;
const TYPE_LOCAL_X2APIC_NMI: u8 = 0xa;
/// Local APIC flags: enabled.
const LAPIC_ENABLED: u32 = 1;
/// APIC IDs from this value up need x2APIC entries.
const X2APIC_FIRST_ID: u32 = 255;
/// NMI entries for all processors.
const ALL_PROCESSORS_UID: u8 = 0xff;
const ALL_PROCESSORS_X2_UID: u32 = 0xffff_ffff;
/// The local APIC input NMI is wired to (LINT1).
const NMI_LINT: u8 = 1;

/// The IOAPIC as the MADT describes it.
#[derive(Clone, Copy, Debug)]
pub struct IoApicInfo {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

/// Builds the MADT for `cpus` processors with APIC IDs 0..cpus. No PCAT_COMPAT flag: there
/// is no 8259 PIC.
pub fn build(cpus: u32, ioapic: &IoApicInfo) -> Vec<u8> {
    let mut t = Table::new(*b"APIC", 5);
    t.u32(LOCAL_APIC_ADDRESS);
    t.u32(0); // flags
    for id in 0..cpus {
        if id < X2APIC_FIRST_ID {
            t.push(&[TYPE_LOCAL_APIC, 8, id as u8, id as u8]);
            t.u32(LAPIC_ENABLED);
        } else {
            t.push(&[TYPE_LOCAL_X2APIC, 16, 0, 0]);
            t.u32(id);
            t.u32(LAPIC_ENABLED);
            t.u32(id);
        }
    }
    t.push(&[TYPE_IO_APIC, 12, ioapic.id, 0]);
    t.u32(ioapic.address);
    t.u32(ioapic.gsi_base);
    t.push(&[TYPE_LOCAL_APIC_NMI, 6, ALL_PROCESSORS_UID]);
    t.u16(0); // flags: conforms to the bus
    t.u8(NMI_LINT);
    if cpus > X2APIC_FIRST_ID {
        t.push(&[TYPE_LOCAL_X2APIC_NMI, 12]);
        t.u16(0);
        t.u32(ALL_PROCESSORS_X2_UID);
        t.u8(NMI_LINT);
        t.push(&[0, 0, 0]);
    }
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{checksum, HEADER_LEN};

    /// Entry types in order of appearance.
    fn entry_types(b: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let mut off = HEADER_LEN + 8;
        while off < b.len() {
            v.push(b[off]);
            off += b[off + 1] as usize;
        }
        assert_eq!(off, b.len(), "entries fill the table exactly");
        v
    }

    const IOAPIC: IoApicInfo = IoApicInfo {
        id: 0,
        address: 0xfec0_0000,
        gsi_base: 0,
    };

    #[test]
    fn madt_two_cpus_has_lapics_ioapic_nmi() {
        let b = build(2, &IOAPIC);
        assert_eq!(checksum(&b), 0);
        assert_eq!(&b[0..4], b"APIC");
        assert_eq!(entry_types(&b), vec![0, 0, 1, 4]);
        assert_eq!(
            u32::from_le_bytes(b[40..44].try_into().unwrap()),
            0,
            "no PCAT_COMPAT"
        );
        // Second LAPIC: UID 1, APIC ID 1, enabled.
        assert_eq!(&b[52..56], &[0, 8, 1, 1]);
    }

    #[test]
    fn madt_300_cpus_uses_x2apic_entries_above_254() {
        let b = build(300, &IOAPIC);
        let t = entry_types(&b);
        assert_eq!(t.iter().filter(|&&x| x == 0).count(), 255);
        assert_eq!(t.iter().filter(|&&x| x == 9).count(), 45);
        assert!(t.contains(&0xa));
        assert_eq!(checksum(&b), 0);
    }

    #[test]
    fn madt_ioapic_entry_fields() {
        let b = build(
            1,
            &IoApicInfo {
                id: 2,
                address: 0xfec0_0000,
                gsi_base: 0,
            },
        );
        let off = HEADER_LEN + 8 + 8;
        assert_eq!(&b[off..off + 4], &[1, 12, 2, 0]);
        assert_eq!(
            u32::from_le_bytes(b[off + 4..off + 8].try_into().unwrap()),
            0xfec0_0000
        );
    }
}
