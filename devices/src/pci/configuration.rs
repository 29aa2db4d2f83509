//! A type-0 configuration space (PCI local bus spec 3.0 section 6.1, PCIe base spec 7.5):
//! header fields, BARs with sizing, command/status, interrupt line/pin and a capability list,
//! each guarded by a writable mask so read-only fields ignore guest writes.

use super::regs::{self, dword, CONFIG_SPACE, CONVENTIONAL_END, FIRST_CAPABILITY};
pub use super::regs::{
    COMMAND_INTX_DISABLE, COMMAND_IO, COMMAND_MASTER, COMMAND_MEMORY, CONFIG_DWORDS, NUM_BARS,
};
/// Register indexes (dword offsets) of the type-0 header.
pub const REG_ID: usize = dword(regs::ID);
pub const REG_COMMAND_STATUS: usize = dword(regs::COMMAND);
pub const REG_CLASS_REVISION: usize = dword(regs::CLASS_REVISION);
pub const REG_HEADER: usize = dword(regs::HEADER);
pub const REG_BAR0: usize = dword(regs::BAR0);
pub const REG_SUBSYSTEM: usize = dword(regs::SUBSYSTEM);
pub const REG_ROM: usize = dword(regs::ROM);
pub const REG_CAPABILITIES: usize = dword(regs::CAPABILITIES);
pub const REG_INTERRUPT: usize = dword(regs::INTERRUPT_LINE);
const COMMAND_WRITABLE: u32 = 0x0547;
/// Status register bits: interrupt status (RO), capabilities list (RO) and the
/// write-1-to-clear error bits.
const STATUS_INTERRUPT: u32 = regs::STATUS_INTERRUPT as u32;
const STATUS_CAP_LIST: u32 = regs::STATUS_CAP_LIST as u32;
const STATUS_RW1C: u32 = 0xf900;
/// BAR low bits (spec 6.2.5.1).
const BAR_IO: u32 = 0x1;
const BAR_MEM_64: u32 = 0x4;
const BAR_PREFETCH: u32 = 0x8;
/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64 { prefetchable: bool },
}

/// A BAR's size and kind; `size` is a power of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    pub index: usize,
    pub size: u64,
    pub kind: BarKind,
}

/// Errors building a configuration space (programming errors of the VMM, not guest errors).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0} is out of range or overlaps a 64-bit BAR")]
    BadBarIndex(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 16 (4 for I/O)")]
    BadBarSize(u64),
    #[error("No room for a {0}-byte capability")]
    CapabilitySpace(usize),
}

/// Identity of a function.
#[derive(Clone, Copy, Debug)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// The configuration space of one function.
pub struct PciConfiguration {
    regs: Box<[u32; CONFIG_DWORDS]>,
    wmask: Box<[u32; CONFIG_DWORDS]>,
    w1c: Box<[u32; CONFIG_DWORDS]>,
    bars: [Option<BarSpec>; NUM_BARS],
    /// BAR slots taken (including the upper halves of 64-bit BARs).
    taken: [bool; NUM_BARS],
    last_capability: Option<usize>,
    next_capability: usize,
    last_extended: Option<usize>,
    next_extended: usize,
}

fn merge(old: u32, offset: usize, data: &[u8]) -> (u32, u32) {
    // Returns the value with `data` written at byte `offset`, and the mask of written bits.
    let mut v = old.to_le_bytes();
    let mut m = [0u8; 4];
    for (i, b) in data.iter().enumerate() {
        if let Some(slot) = v.get_mut(offset + i) {
            *slot = *b;
            m[offset + i] = 0xff;
        }
    }
    (u32::from_le_bytes(v), u32::from_le_bytes(m))
}

impl PciConfiguration {
    /// A header-type-0 function with interrupt `pin` (0 none, 1 INTA .. 4 INTD).
    pub fn new(ids: PciIds, pin: u8) -> Self {
        let mut c = PciConfiguration {
            regs: Box::new([0; CONFIG_DWORDS]),
            wmask: Box::new([0; CONFIG_DWORDS]),
            w1c: Box::new([0; CONFIG_DWORDS]),
            bars: [None; NUM_BARS],
            taken: [false; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
            last_extended: None,
            next_extended: CONVENTIONAL_END,
        };
        c.regs[REG_ID] = u32::from(ids.vendor) | (u32::from(ids.device) << 16);
        c.regs[REG_CLASS_REVISION] = u32::from(ids.revision)
            | (u32::from(ids.prog_if) << 8)
            | (u32::from(ids.subclass) << 16)
            | (u32::from(ids.class) << 24);
        c.regs[REG_SUBSYSTEM] = u32::from(ids.subsystem_vendor) | (u32::from(ids.subsystem) << 16);
        c.regs[REG_INTERRUPT] = u32::from(pin) << 8;
        c.wmask[REG_COMMAND_STATUS] = COMMAND_WRITABLE;
        c.w1c[REG_COMMAND_STATUS] = STATUS_RW1C << 16;
        // Cache line size and latency timer are read/write scratch for software.
        c.wmask[REG_HEADER] = 0x0000_ffff;
        // Interrupt line is read/write; the pin is read-only.
        c.wmask[REG_INTERRUPT] = 0xff;
        c
    }

    /// Declares BAR `index`. A 64-bit BAR also takes `index + 1`.
    pub fn add_bar(&mut self, spec: BarSpec) -> Result<(), ConfigError> {
        let i = spec.index;
        let wide = matches!(spec.kind, BarKind::Mem64 { .. });
        if i >= NUM_BARS || (wide && (i + 1 >= NUM_BARS || self.taken[i + 1])) || self.taken[i] {
            return Err(ConfigError::BadBarIndex(i));
        }
        let min = if spec.kind == BarKind::Io { 4 } else { 16 };
        if !spec.size.is_power_of_two() || spec.size < min {
            return Err(ConfigError::BadBarSize(spec.size));
        }
        let mask = !(spec.size - 1);
        let (low_bits, low_mask) = match spec.kind {
            BarKind::Io => (BAR_IO, mask as u32 & 0xffff_fffc),
            BarKind::Mem32 => (0, mask as u32 & 0xffff_fff0),
            BarKind::Mem64 { prefetchable } => (
                BAR_MEM_64 | if prefetchable { BAR_PREFETCH } else { 0 },
                mask as u32 & 0xffff_fff0,
            ),
        };
        self.regs[REG_BAR0 + i] = low_bits;
        self.wmask[REG_BAR0 + i] = low_mask;
        if wide {
            self.wmask[REG_BAR0 + i + 1] = (mask >> 32) as u32;
            self.taken[i + 1] = true;
        }
        self.taken[i] = true;
        self.bars[i] = Some(spec);
        Ok(())
    }

    /// The BARs declared.
    pub fn bar_specs(&self) -> impl Iterator<Item = BarSpec> + '_ {
        self.bars.iter().flatten().copied()
    }

    /// The address BAR `index` is programmed to.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let spec = self.bars.get(index).copied().flatten()?;
        let low = u64::from(self.regs[REG_BAR0 + index]);
        Some(match spec.kind {
            BarKind::Io => low & !0x3,
            BarKind::Mem32 => low & !0xf,
            BarKind::Mem64 { .. } => {
                (low & !0xf) | (u64::from(self.regs[REG_BAR0 + index + 1]) << 32)
            }
        })
    }

    pub fn command(&self) -> u16 {
        self.regs[REG_COMMAND_STATUS] as u16
    }

    /// Sets the status register's Interrupt Status bit (6.2.3): the function has an INTx
    /// pending, whether or not Interrupt Disable keeps it off the pin. Drivers that mask INTx
    /// with Interrupt Disable read it to know the interrupt is theirs.
    pub fn set_interrupt_status(&mut self, pending: bool) {
        let bit = STATUS_INTERRUPT << 16;
        if pending {
            self.regs[REG_COMMAND_STATUS] |= bit;
        } else {
            self.regs[REG_COMMAND_STATUS] &= !bit;
        }
    }

    /// Appends a capability (`body` without the ID and next-pointer bytes) and returns its
    /// offset. `writable` gives per-byte write masks for the body (same length or empty).
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = (body.len() + 2).next_multiple_of(4);
        let off = self.next_capability;
        if off + len > CONVENTIONAL_END {
            return Err(ConfigError::CapabilitySpace(len));
        }
        let mut bytes = vec![id, 0];
        bytes.extend_from_slice(body);
        let mut masks = vec![0u8, 0];
        masks.extend(
            writable
                .iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(body.len()),
        );
        for (i, (b, m)) in bytes.iter().zip(masks.iter()).enumerate() {
            self.set_byte(off + i, *b);
            let reg = (off + i) / 4;
            let shift = ((off + i) % 4) * 8;
            self.wmask[reg] |= u32::from(*m) << shift;
        }
        match self.last_capability {
            None => {
                self.regs[REG_CAPABILITIES] = off as u32;
                self.regs[REG_COMMAND_STATUS] |= STATUS_CAP_LIST << 16;
            }
            Some(prev) => self.set_byte(prev + 1, off as u8),
        }
        self.last_capability = Some(off);
        self.next_capability = off + len;
        Ok(off)
    }

    /// Appends a PCIe extended capability (PCIe base 7.6: the first at 0x100, each with a
    /// 32-bit header of ID [15:0], version [19:16] and next offset [31:20]) and returns its
    /// offset. `body` follows the header; `writable` gives its per-byte write masks.
    pub fn add_extended_capability(
        &mut self,
        id: u16,
        version: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = (body.len() + 4).next_multiple_of(4);
        let off = self.next_extended;
        if off + len > CONFIG_SPACE {
            return Err(ConfigError::CapabilitySpace(len));
        }
        let header = u32::from(id) | (u32::from(version & 0xf) << 16);
        self.regs[off / 4] = header;
        for (i, b) in body.iter().enumerate() {
            let at = off + 4 + i;
            self.set_byte(at, *b);
            let m = writable.get(i).copied().unwrap_or(0);
            self.wmask[at / 4] |= u32::from(m) << ((at % 4) * 8);
        }
        if let Some(prev) = self.last_extended {
            self.regs[prev / 4] = (self.regs[prev / 4] & 0x000f_ffff) | ((off as u32) << 20);
        }
        self.last_extended = Some(off);
        self.next_extended = off + len;
        Ok(off)
    }

    fn set_byte(&mut self, off: usize, v: u8) {
        let shift = (off % 4) * 8;
        let r = &mut self.regs[off / 4];
        *r = (*r & !(0xff << shift)) | (u32::from(v) << shift);
    }

    /// A byte of configuration space.
    pub fn byte(&self, off: usize) -> u8 {
        self.regs
            .get(off / 4)
            .map_or(0, |r| (r >> ((off % 4) * 8)) as u8)
    }

    /// Sets the interrupt line register (firmware's job; the guest may change it).
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.regs[REG_INTERRUPT] = (self.regs[REG_INTERRUPT] & !0xff) | u32::from(line);
    }

    pub fn interrupt_pin(&self) -> u8 {
        (self.regs[REG_INTERRUPT] >> 8) as u8
    }

    pub fn read_register(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// A guest write of `data` at byte `offset` of dword `reg`: only writable bits change,
    /// write-1-to-clear bits clear. Bad indexes and sizes are dropped.
    pub fn write_register(&mut self, reg: usize, offset: u64, data: &[u8]) {
        if reg >= CONFIG_DWORDS || offset as usize + data.len() > 4 {
            return;
        }
        let old = self.regs[reg];
        let (new, written) = merge(old, offset as usize, data);
        let w = self.wmask[reg] & written;
        let clear = self.w1c[reg] & written & new;
        self.regs[reg] = ((old & !w) | (new & w)) & !clear;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1234,
            device: 0x11e8,
            class: 0x00,
            subclass: 0xff,
            prog_if: 0,
            revision: 0x10,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        }
    }

    fn w32(c: &mut PciConfiguration, reg: usize, v: u32) {
        c.write_register(reg, 0, &v.to_le_bytes());
    }

    #[test]
    fn config_ids_are_read_only() {
        let mut c = PciConfiguration::new(ids(), 1);
        w32(&mut c, REG_ID, 0);
        w32(&mut c, REG_CLASS_REVISION, 0);
        assert_eq!(c.read_register(REG_ID), 0x11e8_1234);
        assert_eq!(c.read_register(REG_CLASS_REVISION), 0x00ff_0010);
    }

    #[test]
    fn config_bar32_sizing_reads_back_mask() {
        let mut c = PciConfiguration::new(ids(), 1);
        c.add_bar(BarSpec {
            index: 0,
            size: 1 << 20,
            kind: BarKind::Mem32,
        })
        .unwrap();
        w32(&mut c, REG_BAR0, 0xffff_ffff);
        assert_eq!(c.read_register(REG_BAR0), 0xfff0_0000);
        w32(&mut c, REG_BAR0, 0xc010_3456);
        assert_eq!(
            c.bar_address(0),
            Some(0xc010_0000),
            "bits below the size are read-only"
        );
    }

    #[test]
    fn config_bar64_sizing_spans_two_registers() {
        let mut c = PciConfiguration::new(ids(), 0);
        c.add_bar(BarSpec {
            index: 2,
            size: 1 << 33,
            kind: BarKind::Mem64 { prefetchable: true },
        })
        .unwrap();
        w32(&mut c, REG_BAR0 + 2, 0xffff_ffff);
        w32(&mut c, REG_BAR0 + 3, 0xffff_ffff);
        assert_eq!(c.read_register(REG_BAR0 + 2), 0x0000_000c);
        assert_eq!(c.read_register(REG_BAR0 + 3), 0xffff_fffe);
        w32(&mut c, REG_BAR0 + 2, 0);
        w32(&mut c, REG_BAR0 + 3, 0x10);
        assert_eq!(c.bar_address(2), Some(0x10_0000_0000));
        assert!(c
            .add_bar(BarSpec {
                index: 3,
                size: 16,
                kind: BarKind::Mem32
            })
            .is_err());
    }

    #[test]
    fn config_io_bar_keeps_io_bit() {
        let mut c = PciConfiguration::new(ids(), 0);
        c.add_bar(BarSpec {
            index: 1,
            size: 32,
            kind: BarKind::Io,
        })
        .unwrap();
        w32(&mut c, REG_BAR0 + 1, 0xffff_ffff);
        assert_eq!(c.read_register(REG_BAR0 + 1), 0xffff_ffe1);
    }

    #[test]
    fn config_undeclared_bar_reads_zero_and_ignores_writes() {
        let mut c = PciConfiguration::new(ids(), 0);
        w32(&mut c, REG_BAR0 + 5, 0xffff_ffff);
        assert_eq!(c.read_register(REG_BAR0 + 5), 0);
        w32(&mut c, REG_ROM, 0xffff_ffff);
        assert_eq!(c.read_register(REG_ROM), 0, "no expansion ROM");
    }

    #[test]
    fn config_command_bits_masked_and_status_rw1c() {
        let mut c = PciConfiguration::new(ids(), 0);
        c.add_capability(0x05, &[0; 12], &[]).unwrap();
        w32(&mut c, REG_COMMAND_STATUS, 0xffff_ffff);
        assert_eq!(c.command(), 0x0547);
        // Capability-list status bit is read-only and stays set.
        assert_ne!(
            c.read_register(REG_COMMAND_STATUS) & (STATUS_CAP_LIST << 16),
            0
        );
        c.regs[REG_COMMAND_STATUS] |= 0x8000 << 16; // device signals an error
        c.write_register(REG_COMMAND_STATUS, 2, &[0x00, 0x80]);
        assert_eq!(
            c.read_register(REG_COMMAND_STATUS) >> 16 & 0x8000,
            0,
            "RW1C cleared"
        );
    }

    #[test]
    fn config_interrupt_line_rw_pin_ro() {
        let mut c = PciConfiguration::new(ids(), 1);
        w32(&mut c, REG_INTERRUPT, 0xffff_ff11);
        assert_eq!(c.read_register(REG_INTERRUPT), 0x0000_0111);
    }

    #[test]
    fn config_capabilities_are_linked() {
        let mut c = PciConfiguration::new(ids(), 0);
        let a = c.add_capability(0x05, &[0; 12], &[]).unwrap();
        let b = c.add_capability(0x10, &[0; 2], &[]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x50);
        assert_eq!(c.read_register(REG_CAPABILITIES), 0x40);
        assert_eq!((c.byte(0x40), c.byte(0x41)), (0x05, 0x50));
        assert_eq!((c.byte(0x50), c.byte(0x51)), (0x10, 0x00));
    }

    #[test]
    fn config_extended_capabilities_start_at_0x100_and_are_linked() {
        let mut c = PciConfiguration::new(ids(), 0);
        assert_eq!(
            c.read_register(0x100 / 4),
            0,
            "no extended capability: header 0"
        );
        let a = c
            .add_extended_capability(0x000f, 1, &[0x20, 0, 0, 0], &[])
            .unwrap();
        let b = c.add_extended_capability(0x0001, 2, &[0; 6], &[]).unwrap();
        assert_eq!((a, b), (0x100, 0x108));
        assert_eq!(c.read_register(a / 4), 0x1081_000f);
        assert_eq!(c.read_register(a / 4 + 1), 0x20);
        assert_eq!(
            c.read_register(b / 4),
            0x0002_0001,
            "the last one's next is 0"
        );
    }

    #[test]
    fn config_extended_capability_writes_only_its_writable_bits() {
        let mut c = PciConfiguration::new(ids(), 0);
        let a = c
            .add_extended_capability(0x000f, 1, &[0x20, 0, 0, 0], &[0, 0, 0x1f, 0x80])
            .unwrap();
        w32(&mut c, a / 4, 0);
        w32(&mut c, a / 4 + 1, 0xffff_ffff);
        assert_eq!(c.read_register(a / 4), 0x0001_000f, "header read-only");
        assert_eq!(c.read_register(a / 4 + 1), 0x801f_0020);
    }

    #[test]
    fn config_extended_capability_past_4k_is_refused() {
        let mut c = PciConfiguration::new(ids(), 0);
        assert_eq!(
            c.add_extended_capability(0x000b, 1, &[0; 4096], &[]),
            Err(ConfigError::CapabilitySpace(4100))
        );
    }

    #[test]
    fn config_bad_write_sizes_are_dropped() {
        let mut c = PciConfiguration::new(ids(), 1);
        c.write_register(REG_INTERRUPT, 3, &[1, 2]);
        c.write_register(CONFIG_DWORDS, 0, &[1]);
        assert_eq!(c.read_register(REG_INTERRUPT), 0x100);
    }
}
