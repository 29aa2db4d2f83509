//! A system description table under construction: the 36-byte header (ACPI 6.5 section 5.2.6)
//! and a byte body, with length and checksum filled in at the end.

use acpi_tables::sdt::Sdt;

/// OEM fields of every table.
pub const OEM_ID: [u8; 6] = *b"MINVMM";
pub const OEM_TABLE_ID: [u8; 8] = *b"MINIVMM ";
pub const OEM_REVISION: u32 = 1;
/// Size of the standard table header.
pub const HEADER_LEN: usize = 36;

/// A table built from bytes.
pub struct Table {
    sdt: Sdt,
}

impl Table {
    pub fn new(signature: [u8; 4], revision: u8) -> Self {
        Table {
            sdt: Sdt::new(
                signature,
                HEADER_LEN as u32,
                revision,
                OEM_ID,
                OEM_TABLE_ID,
                OEM_REVISION,
            ),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.sdt.append_slice(bytes);
    }

    pub fn u8(&mut self, v: u8) {
        self.push(&[v]);
    }

    pub fn u16(&mut self, v: u16) {
        self.push(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.push(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.push(&v.to_le_bytes());
    }

    /// The finished bytes (length and checksum are kept current by `Sdt`).
    pub fn finish(mut self) -> Vec<u8> {
        self.sdt.update_checksum();
        self.sdt.as_slice().to_vec()
    }
}

/// Sum of all bytes modulo 256 (zero for a valid table).
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_length_and_checksum_track_body() {
        let mut t = Table::new(*b"TEST", 2);
        t.u32(0xdead_beef);
        t.u8(7);
        let b = t.finish();
        assert_eq!(b.len(), HEADER_LEN + 5);
        assert_eq!(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), 41);
        assert_eq!(checksum(&b), 0);
        assert_eq!(&b[0..4], b"TEST");
        assert_eq!(b[8], 2);
        assert_eq!(&b[10..16], &OEM_ID);
    }
}
