//! MCFG, the PCI Express memory-mapped configuration table (PCI Firmware spec 3.3 section
//! 4.1.2), from acpi_tables.

use acpi_tables::mcfg::MCFG;
use acpi_tables::Aml;

use crate::table::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// One ECAM region for segment 0.
pub fn build(ecam_base: u64, start_bus: u8, end_bus: u8) -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(ecam_base, 0, start_bus, end_bus);
    let mut b = Vec::new();
    m.to_aml_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::checksum;

    #[test]
    fn mcfg_describes_one_ecam_region() {
        let b = build(0xe000_0000, 0, 0);
        assert_eq!(&b[0..4], b"MCFG");
        assert_eq!(b.len(), 36 + 8 + 16);
        assert_eq!(checksum(&b), 0);
        assert_eq!(
            u64::from_le_bytes(b[44..52].try_into().unwrap()),
            0xe000_0000
        );
        assert_eq!((b[54], b[55]), (0, 0), "bus range");
    }
}
