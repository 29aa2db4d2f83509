//! The MSI-X capability, table and pending bit array (PCI local bus spec 3.0 section 6.8.2,
//! PCIe base spec 7.7.2) as the guest sees them. One model for every function: an emulated
//! device (virtio-pci) builds it with [`MsixCap::emulated`] and places table and PBA in one
//! of its BARs; a passed-through one takes the device's registers ([`MsixCap::new`]), since the
//! host kernel owns the real table: accesses to the table and PBA are trapped out of the BARs
//! and land here. The entries drive the vectors' routes (the vector group),
//! which also own the pending bits.

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

    /// The capability at `offset` of an emulated function with `vectors` entries (1..=2048),
    /// its table at `table` = (BAR, offset) and PBA at `pba` (offsets 8-byte aligned, 6.8.2.4).
    pub fn emulated(offset: usize, vectors: u16, table: (usize, u32), pba: (usize, u32)) -> Self {
        let size = vectors.clamp(1, CTL_TABLE_SIZE_MASK + 1) - 1;
        let reg = |(bar, off): (usize, u32)| (off & !BIR_MASK) | (bar as u32 & BIR_MASK);
        MsixCap::new(offset, size, reg(table), reg(pba))
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

    /// A BAR access's read: the table's or the PBA's (`pending(i)`: whether vector `i` is
    /// pending). Returns false when `offset` in `bar` is neither's.
    pub fn read_bar(
        &self,
        bar: usize,
        offset: u64,
        data: &mut [u8],
        pending: impl Fn(usize) -> bool,
    ) -> bool {
        let (table, pba) = (self.table(), self.pba());
        if table.contains(bar, offset) {
            self.read_table(offset - table.offset, data);
        } else if pba.contains(bar, offset) {
            self.read_pba(offset - pba.offset, data, pending);
        } else {
            return false;
        }
        true
    }

    /// A BAR access's write: to the table, or to the PBA, which is read-only (6.8.2.10).
    /// None when `offset` in `bar` is neither's.
    pub fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) -> Option<MsixChange> {
        let (table, pba) = (self.table(), self.pba());
        if table.contains(bar, offset) {
            Some(self.write_table(offset - table.offset, data))
        } else {
            pba.contains(bar, offset).then(MsixChange::default)
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
mod tests;
