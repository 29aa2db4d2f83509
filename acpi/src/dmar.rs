//! DMAR, the DMA Remapping Reporting table (VT-d spec chapter 8), hand-written because
//! acpi_tables has no DMAR: one DRHD that covers every PCI device (INCLUDE_PCI_ALL), with a
//! device scope for the IOAPIC so that interrupt remapping can find it, and an ATSR when
//! device-IOTLBs are offered.

use crate::table::Table;

/// DMAR flags (VT-d 8.1): INTR_REMAP.
const DMAR_INTR_REMAP: u8 = 1 << 0;
/// Remapping structure types (VT-d 8.2).
const TYPE_DRHD: u16 = 0;
const TYPE_ATSR: u16 = 2;
/// DRHD flags (VT-d 8.3): INCLUDE_PCI_ALL.
const DRHD_INCLUDE_PCI_ALL: u8 = 1 << 0;
/// ATSR flags (VT-d 8.5): ALL_PORTS.
const ATSR_ALL_PORTS: u8 = 1 << 0;
/// Device scope types (VT-d 8.3.1): IOAPIC.
const SCOPE_IOAPIC: u8 = 3;
/// Length of a DRHD without device scopes, of an ATSR without scopes, and of an IOAPIC scope
/// with a one-element path.
const DRHD_HEADER_LEN: u16 = 16;
const ATSR_HEADER_LEN: u16 = 8;
const IOAPIC_SCOPE_LEN: u8 = 8;

/// What the DMAR reports.
#[derive(Clone, Copy, Debug)]
pub struct DmarConfig {
    /// Host address width in bits (39 or 48); the table stores width - 1.
    pub address_width: u8,
    pub interrupt_remapping: bool,
    /// The DRHD's register base.
    pub register_base: u64,
    /// The IOAPIC's enumeration ID (its APIC ID) and requester id (bus, device, function).
    pub ioapic_id: u8,
    pub ioapic_bus: u8,
    pub ioapic_device: u8,
    pub ioapic_function: u8,
    /// Report ATS support on all root ports (device-IOTLB).
    pub device_iotlb: bool,
}

pub fn build(c: &DmarConfig) -> Vec<u8> {
    let mut t = Table::new(*b"DMAR", 1);
    t.u8(c.address_width.saturating_sub(1));
    t.u8(if c.interrupt_remapping {
        DMAR_INTR_REMAP
    } else {
        0
    });
    t.push(&[0; 10]);

    t.u16(TYPE_DRHD);
    t.u16(DRHD_HEADER_LEN + u16::from(IOAPIC_SCOPE_LEN));
    t.u8(DRHD_INCLUDE_PCI_ALL);
    t.u8(0); // size: 2^0 4 KiB pages of registers
    t.u16(0); // segment
    t.u64(c.register_base);
    t.push(&[
        SCOPE_IOAPIC,
        IOAPIC_SCOPE_LEN,
        0,
        0,
        c.ioapic_id,
        c.ioapic_bus,
    ]);
    t.push(&[c.ioapic_device, c.ioapic_function]);

    if c.device_iotlb {
        t.u16(TYPE_ATSR);
        t.u16(ATSR_HEADER_LEN);
        t.u8(ATSR_ALL_PORTS);
        t.u8(0);
        t.u16(0); // segment
    }
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::checksum;

    fn cfg() -> DmarConfig {
        DmarConfig {
            address_width: 48,
            interrupt_remapping: true,
            register_base: 0xfed9_0000,
            ioapic_id: 0,
            ioapic_bus: 0,
            ioapic_device: 0x1e,
            ioapic_function: 0,
            device_iotlb: false,
        }
    }

    #[test]
    fn dmar_header_fields() {
        let b = build(&cfg());
        assert_eq!(&b[0..4], b"DMAR");
        assert_eq!(checksum(&b), 0);
        assert_eq!(b[36], 47, "host address width - 1");
        assert_eq!(b[37], 1, "INTR_REMAP");
    }

    #[test]
    fn dmar_drhd_includes_all_with_ioapic_scope() {
        let b = build(&cfg());
        let d = &b[48..];
        assert_eq!(u16::from_le_bytes([d[0], d[1]]), 0, "DRHD");
        assert_eq!(u16::from_le_bytes([d[2], d[3]]), 24);
        assert_eq!(d[4], 1, "INCLUDE_PCI_ALL");
        assert_eq!(
            u64::from_le_bytes(d[8..16].try_into().unwrap()),
            0xfed9_0000
        );
        assert_eq!(&d[16..24], &[3, 8, 0, 0, 0, 0, 0x1e, 0]);
        assert_eq!(b.len(), 48 + 24);
    }

    #[test]
    fn dmar_atsr_only_with_device_iotlb() {
        let b = build(&DmarConfig {
            device_iotlb: true,
            ..cfg()
        });
        assert_eq!(b.len(), 48 + 24 + 8);
        assert_eq!(&b[72..76], &[2, 0, 8, 0]);
        assert_eq!(b[76], 1, "ALL_PORTS");
        assert_eq!(checksum(&b), 0);
    }

    #[test]
    fn dmar_without_intremap_clears_flag() {
        let b = build(&DmarConfig {
            interrupt_remapping: false,
            address_width: 39,
            ..cfg()
        });
        assert_eq!((b[36], b[37]), (38, 0));
    }
}
