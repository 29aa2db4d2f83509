//! The MSI capability (PCI local bus spec 3.0 section 6.8.1, PCIe base spec 7.7.1) as the guest
//! sees it: 32- or 64-bit message address, multiple messages, optional per-vector masking with
//! pending bits. One model for every function: an emulated device builds it with
//! [`MsiCap::new`] from the features it offers; a passed-through one from the device's own
//! message control (the host kernel owns the real registers, so the guest's live here). The
//! pending bits are the vectors' business (the vector group) and are passed in.

use super::configuration::{ConfigError, PciConfiguration};
use super::regs::CAP_ID_MSI;

/// Message control bits: enable (0), multiple message capable (3:1), multiple message enable
/// (6:4), 64-bit address capable (7), per-vector masking capable (8).
pub const CTL_ENABLE: u16 = 1 << 0;
pub const CTL_MMC_SHIFT: u16 = 1;
const CTL_MME_SHIFT: u16 = 4;
const CTL_MME_MASK: u16 = 0x7 << CTL_MME_SHIFT;
pub const CTL_64BIT: u16 = 1 << 7;
pub const CTL_PVM: u16 = 1 << 8;
/// MSI supports at most 32 vectors (MMC = 5).
const MAX_LOG2_VECTORS: u8 = 5;

/// The virtual MSI capability at `offset` in configuration space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsiCap {
    offset: usize,
    is_64bit: bool,
    per_vector_masking: bool,
    /// log2 of the vectors the device can send (MMC).
    capable: u8,
    control: u16,
    address: u64,
    data: u16,
    mask: u32,
}

/// What a write to the capability changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiChange {
    /// Enable or the number of enabled vectors changed.
    pub enable: bool,
    /// Address or data changed.
    pub message: bool,
    /// Mask bits changed.
    pub mask: bool,
}

impl MsiCap {
    /// The capability at `offset` offering what `device_control` says (MMC, 64-bit, per-vector
    /// masking; its other bits are ignored): a device's message control register, or the
    /// [`CTL_64BIT`] | [`CTL_PVM`] | `log2(vectors) << CTL_MMC_SHIFT` an emulated device offers.
    pub fn new(offset: usize, device_control: u16) -> Self {
        let capable = ((device_control >> CTL_MMC_SHIFT) & 0x7) as u8;
        MsiCap {
            offset,
            is_64bit: device_control & CTL_64BIT != 0,
            per_vector_masking: device_control & CTL_PVM != 0,
            capable: capable.min(MAX_LOG2_VECTORS),
            ..Default::default()
        }
    }

    /// An emulated function's capability offering `device_control` (see [`MsiCap::new`]),
    /// appended to `config`, which reserves and links its bytes; the registers after ID and
    /// next pointer are this model's (read them through [`MsiCap::read_byte`]).
    pub fn add_to(config: &mut PciConfiguration, device_control: u16) -> Result<Self, ConfigError> {
        let size = MsiCap::new(0, device_control).size();
        let offset = config.add_capability(CAP_ID_MSI, &vec![0; size - 2], &[])?;
        Ok(MsiCap::new(offset, device_control))
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    fn data_offset(&self) -> usize {
        if self.is_64bit {
            12
        } else {
            8
        }
    }

    fn mask_offset(&self) -> usize {
        if self.is_64bit {
            16
        } else {
            12
        }
    }

    /// Length of the capability in configuration space.
    pub fn size(&self) -> usize {
        match (self.per_vector_masking, self.is_64bit) {
            (true, _) => self.mask_offset() + 8,
            (false, true) => 14,
            (false, false) => 10,
        }
    }

    /// Whether `offset` (absolute in configuration space) falls in the capability.
    pub fn contains(&self, offset: usize) -> bool {
        (self.offset..self.offset + self.size()).contains(&offset)
    }

    pub fn enabled(&self) -> bool {
        self.control & CTL_ENABLE != 0
    }

    /// Vectors the guest enabled: 2^MME (bounded by what the device can send), or 0.
    pub fn vectors(&self) -> usize {
        if !self.enabled() {
            return 0;
        }
        let mme = ((self.control & CTL_MME_MASK) >> CTL_MME_SHIFT) as u8;
        1 << mme.min(self.capable)
    }

    /// The message vector `i` sends: the programmed address, and the data with its low
    /// log2(vectors) bits replaced by `i` (6.8.1.6). None while no address is programmed.
    pub fn message(&self, i: usize) -> Option<(u64, u32)> {
        if self.address == 0 {
            return None;
        }
        let n = self.vectors().max(1) as u32;
        let data = (u32::from(self.data) & !(n - 1)) | (i as u32 & (n - 1));
        Some((self.address, data))
    }

    /// Whether vector `i` is masked by its mask bit.
    pub fn masked(&self, i: usize) -> bool {
        self.per_vector_masking && i < 32 && self.mask & (1 << i) != 0
    }

    /// A byte of the capability as the guest reads it; `physical` is the device's byte (for
    /// the ID and next pointer) and `pending` the pending bits.
    pub fn read_byte(&self, offset: usize, physical: u8, pending: u32) -> u8 {
        let i = offset - self.offset;
        let ro = CTL_64BIT | if self.per_vector_masking { CTL_PVM } else { 0 };
        let control = (self.control & (CTL_ENABLE | CTL_MME_MASK))
            | ro
            | (u16::from(self.capable) << CTL_MMC_SHIFT);
        let control = if self.is_64bit {
            control
        } else {
            control & !CTL_64BIT
        };
        let d = self.data_offset();
        let m = self.mask_offset();
        let byte = |v: u64, n: usize| (v >> (8 * n)) as u8;
        match i {
            0 | 1 => physical,
            2 | 3 => byte(control.into(), i - 2),
            4..=7 => byte(self.address, i - 4),
            8..=11 if self.is_64bit => byte(self.address, i - 4),
            _ if (d..d + 2).contains(&i) => byte(self.data.into(), i - d),
            _ if self.per_vector_masking && (m..m + 4).contains(&i) => {
                byte(self.mask.into(), i - m)
            }
            _ if self.per_vector_masking && (m + 4..m + 8).contains(&i) => {
                byte(pending.into(), i - m - 4)
            }
            _ => 0,
        }
    }

    /// A byte write from the guest; read-only fields keep their value.
    pub fn write_byte(&mut self, offset: usize, v: u8) -> MsiChange {
        let i = offset - self.offset;
        let d = self.data_offset();
        let m = self.mask_offset();
        let set = |word: u64, n: usize| (word & !(0xff << (8 * n))) | (u64::from(v) << (8 * n));
        let mut change = MsiChange::default();
        match i {
            2 => {
                let writable = CTL_ENABLE | CTL_MME_MASK;
                let new = (self.control & !writable) | (u16::from(v) & writable);
                change.enable = new != self.control;
                self.control = new;
            }
            4..=7 => {
                let v = if i == 4 { v & 0xfc } else { v };
                let new =
                    (self.address & !(0xff << (8 * (i - 4)))) | (u64::from(v) << (8 * (i - 4)));
                change.message = new != self.address;
                self.address = new;
            }
            8..=11 if self.is_64bit => {
                let new = set(self.address, i - 4);
                change.message = new != self.address;
                self.address = new;
            }
            _ if (d..d + 2).contains(&i) => {
                let new = set(self.data.into(), i - d) as u16;
                change.message = new != self.data;
                self.data = new;
            }
            _ if self.per_vector_masking && (m..m + 4).contains(&i) => {
                let new = set(self.mask.into(), i - m) as u32;
                change.mask = new != self.mask;
                self.mask = new;
            }
            _ => {}
        }
        change
    }
}

impl std::ops::BitOrAssign for MsiChange {
    fn bitor_assign(&mut self, o: Self) {
        self.enable |= o.enable;
        self.message |= o.message;
        self.mask |= o.mask;
    }
}

#[cfg(test)]
mod tests;
