//! The guest's view of a passed-through function's MSI-X capability, table and pending bit
//! array (PCI local bus spec 3.0 section 6.8.2). The host kernel owns the device's real
//! table, so the guest's table lives here; accesses to it (and to the PBA) are trapped out of
//! the BARs, and its entries drive the vectors' routes.

/// Message control: table size - 1 (10:0), function mask (14), MSI-X enable (15).
const CTL_TABLE_SIZE_MASK: u16 = 0x7ff;
const CTL_FUNCTION_MASK: u16 = 1 << 14;
const CTL_ENABLE: u16 = 1 << 15;
/// Table and PBA locations: BAR indicator (2:0), offset (31:3).
const BIR_MASK: u32 = 0x7;
/// Bytes per table entry, and its fields (6.8.2.6-9).
pub const ENTRY_SIZE: u64 = 16;
const ENTRY_ADDR_LO: u64 = 0;
const ENTRY_ADDR_HI: u64 = 4;
const ENTRY_DATA: u64 = 8;
const ENTRY_CONTROL: u64 = 12;
/// Vector control bit 0: the vector is masked.
const VECTOR_MASKED: u32 = 1;
/// Length of the capability in configuration space.
pub const CAP_LEN: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

/// Where a structure (table or PBA) lives: BAR and offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub bar: usize,
    pub offset: u64,
    pub size: u64,
}

impl Location {
    pub fn contains(&self, bar: usize, offset: u64) -> bool {
        bar == self.bar && offset >= self.offset && offset - self.offset < self.size
    }
}

/// What a guest access changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsixChange {
    /// MSI-X enable or the function mask changed.
    pub control: bool,
    /// This entry's message or mask changed.
    pub entry: Option<usize>,
}

/// The virtual MSI-X capability and table.
#[derive(Clone, Debug)]
pub struct MsixCap {
    offset: usize,
    control: u16,
    table_reg: u32,
    pba_reg: u32,
    entries: Vec<Entry>,
}

impl MsixCap {
    /// The capability at `offset` with the device's message control, table and PBA
    /// registers. Every entry starts masked (6.8.2.9).
    pub fn new(offset: usize, device_control: u16, table_reg: u32, pba_reg: u32) -> Self {
        let n = usize::from(device_control & CTL_TABLE_SIZE_MASK) + 1;
        MsixCap {
            offset,
            control: device_control & CTL_TABLE_SIZE_MASK,
            table_reg,
            pba_reg,
            entries: vec![
                Entry {
                    address: 0,
                    data: 0,
                    control: VECTOR_MASKED,
                };
                n
            ],
        }
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn contains(&self, offset: usize) -> bool {
        (self.offset..self.offset + CAP_LEN).contains(&offset)
    }

    pub fn vectors(&self) -> usize {
        self.entries.len()
    }

    pub fn table(&self) -> Location {
        Location {
            bar: (self.table_reg & BIR_MASK) as usize,
            offset: u64::from(self.table_reg & !BIR_MASK),
            size: self.entries.len() as u64 * ENTRY_SIZE,
        }
    }

    pub fn pba(&self) -> Location {
        Location {
            bar: (self.pba_reg & BIR_MASK) as usize,
            offset: u64::from(self.pba_reg & !BIR_MASK),
            size: (self.entries.len() as u64).div_ceil(64) * 8,
        }
    }

    pub fn enabled(&self) -> bool {
        self.control & CTL_ENABLE != 0
    }

    /// Whether vector `i` may not be sent: its own mask or the function mask.
    pub fn masked(&self, i: usize) -> bool {
        self.control & CTL_FUNCTION_MASK != 0
            || self
                .entries
                .get(i)
                .is_none_or(|e| e.control & VECTOR_MASKED != 0)
    }

    /// The message of entry `i`; None while its address is unprogrammed.
    pub fn message(&self, i: usize) -> Option<(u64, u32)> {
        self.entries
            .get(i)
            .filter(|e| e.address != 0)
            .map(|e| (e.address, e.data))
    }

    /// A configuration-space byte as the guest reads it (`physical` for ID and next).
    pub fn read_config_byte(&self, offset: usize, physical: u8) -> u8 {
        let i = offset - self.offset;
        let (word, first) = match i {
            0 | 1 => return physical,
            2 | 3 => (u32::from(self.control), 2),
            4..=7 => (self.table_reg, 4),
            _ => (self.pba_reg, 8),
        };
        (word >> (8 * (i - first))) as u8
    }

    /// A configuration-space byte write: only enable and function mask are writable.
    pub fn write_config_byte(&mut self, offset: usize, v: u8) -> MsixChange {
        if offset - self.offset != 3 {
            return MsixChange::default();
        }
        let writable = CTL_ENABLE | CTL_FUNCTION_MASK;
        let new = (self.control & !writable) | ((u16::from(v) << 8) & writable);
        let change = new != self.control;
        self.control = new;
        MsixChange {
            control: change,
            entry: None,
        }
    }

    fn read_dword(&self, offset: u64) -> u32 {
        let Some(e) = self.entries.get((offset / ENTRY_SIZE) as usize) else {
            return 0;
        };
        match offset % ENTRY_SIZE {
            ENTRY_ADDR_LO => e.address as u32,
            ENTRY_ADDR_HI => (e.address >> 32) as u32,
            ENTRY_DATA => e.data,
            ENTRY_CONTROL => e.control,
            _ => 0,
        }
    }

    fn write_dword(&mut self, offset: u64, v: u32) -> Option<usize> {
        let i = (offset / ENTRY_SIZE) as usize;
        let e = self.entries.get_mut(i)?;
        let old = *e;
        match offset % ENTRY_SIZE {
            ENTRY_ADDR_LO => e.address = (e.address & !0xffff_ffff) | u64::from(v & !0x3),
            ENTRY_ADDR_HI => e.address = (e.address & 0xffff_ffff) | (u64::from(v) << 32),
            ENTRY_DATA => e.data = v,
            // Only the mask bit is defined; the rest is reserved.
            ENTRY_CONTROL => e.control = v & VECTOR_MASKED,
            _ => {}
        }
        (*e != old).then_some(i)
    }

    /// A table read at `offset` from the table's start: aligned DWORDs and QWORDs (6.8.2);
    /// anything else reads as zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                data.copy_from_slice(&self.read_dword(offset).to_le_bytes())
            }
            8 if offset.is_multiple_of(8) => {
                let v = u64::from(self.read_dword(offset))
                    | (u64::from(self.read_dword(offset + 4)) << 32);
                data.copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }

    /// A table write; unaligned or odd-sized writes are dropped.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> MsixChange {
        let dword = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let entry = match data.len() {
            4 if offset.is_multiple_of(4) => self.write_dword(offset, dword(data)),
            8 if offset.is_multiple_of(8) => {
                let a = self.write_dword(offset, dword(&data[..4]));
                let b = self.write_dword(offset + 4, dword(&data[4..]));
                a.or(b)
            }
            _ => None,
        };
        MsixChange {
            control: false,
            entry,
        }
    }

    /// A PBA read, with `pending(i)` telling whether vector `i` is pending.
    pub fn read_pba(&self, offset: u64, data: &mut [u8], pending: impl Fn(usize) -> bool) {
        for (k, b) in data.iter_mut().enumerate() {
            let first = (offset as usize + k) * 8;
            *b = (0..8)
                .filter(|bit| first + bit < self.entries.len() && pending(first + bit))
                .fold(0u8, |acc, bit| acc | (1 << bit));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(vectors: u16) -> MsixCap {
        // Table in BAR 1 at 0, PBA in BAR 1 at 0x800 (as QEMU's virtio devices have it).
        MsixCap::new(0x98, vectors - 1, 1, 0x801)
    }

    fn write32(m: &mut MsixCap, off: u64, v: u32) -> MsixChange {
        m.write_table(off, &v.to_le_bytes())
    }

    fn read32(m: &MsixCap, off: u64) -> u32 {
        let mut b = [0u8; 4];
        m.read_table(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn msix_locations_from_bir_and_offset() {
        let m = cap(3);
        assert_eq!(
            m.table(),
            Location {
                bar: 1,
                offset: 0,
                size: 48
            }
        );
        assert_eq!(
            m.pba(),
            Location {
                bar: 1,
                offset: 0x800,
                size: 8
            }
        );
        assert!(m.pba().contains(1, 0x807) && !m.pba().contains(1, 0x808));
        assert!(!m.table().contains(2, 0));
    }

    #[test]
    fn msix_entries_start_masked_and_hold_messages() {
        let mut m = cap(2);
        assert!(m.masked(0) && m.masked(1));
        assert_eq!(read32(&m, 12), 1);
        assert_eq!(write32(&mut m, 16, 0xfee0_100f).entry, Some(1));
        write32(&mut m, 20, 0x1);
        write32(&mut m, 24, 0x4055);
        assert_eq!(
            m.message(1),
            Some((0x1_fee0_100c, 0x4055)),
            "address bits 1:0 reserved"
        );
        assert_eq!(m.message(0), None);
        assert_eq!(write32(&mut m, 28, 0xffff_fffe).entry, Some(1));
        assert!(!m.masked(1), "only bit 0 of vector control is defined");
        assert_eq!(read32(&m, 28), 0);
        assert_eq!(write32(&mut m, 28, 0).entry, None, "no change, no event");
    }

    #[test]
    fn msix_qword_access_and_bad_accesses() {
        let mut m = cap(1);
        let c = m.write_table(0, &0x0000_0001_fee0_0000u64.to_le_bytes());
        assert_eq!(c.entry, Some(0));
        let mut q = [0u8; 8];
        m.read_table(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_fee0_0000);
        assert_eq!(m.write_table(2, &[1, 2]).entry, None, "unaligned");
        assert_eq!(write32(&mut m, 64, 5).entry, None, "past the table");
        assert_eq!(read32(&m, 64), 0);
    }

    #[test]
    fn msix_control_only_enable_and_function_mask_writable() {
        let mut m = cap(4);
        assert_eq!(m.read_config_byte(0x9a, 0), 3, "table size - 1");
        let c = m.write_config_byte(0x9b, 0xff);
        assert!(c.control && m.enabled());
        assert_eq!(m.read_config_byte(0x9b, 0), 0xc0);
        assert_eq!(m.write_config_byte(0x9a, 0xff), MsixChange::default());
        assert_eq!(m.read_config_byte(0x9a, 0), 3);
        write32(&mut m, 12, 0);
        assert!(m.masked(0), "the function mask masks every vector");
        m.write_config_byte(0x9b, 0x80);
        assert!(!m.masked(0) && m.masked(1));
        assert_eq!(m.read_config_byte(0x9c, 0), 1, "table BIR");
        assert_eq!(m.read_config_byte(0x98, 0x11), 0x11);
    }

    #[test]
    fn msix_pba_reports_pending_vectors() {
        let m = MsixCap::new(0x40, 69, 0, 0x1000);
        let mut b = [0u8; 16];
        m.read_pba(0, &mut b, |i| i == 3 || i == 69 || i == 70);
        assert_eq!(b[0], 0b1000);
        assert_eq!(b[8], 0b0010_0000, "vector 69; 70 is past the table");
        assert_eq!(m.pba().size, 16);
    }
}
