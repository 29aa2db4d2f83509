//! BAR0 register state machine of the `edu` educational device (QEMU docs/specs/edu.rst):
//! identification, liveness, factorial, interrupt status/raise/ack and a DMA engine with a
//! 4 KiB device-side buffer. DMA goes through [`DmaAccess`], so an IOMMU can block it.

use std::sync::Arc;

use iommu::{Bdf, Iova};

use crate::dma::DmaAccess;

/// Identification register (RO): major 1, minor 0, low byte 0xed.
pub const REG_IDENT: u64 = 0x00;
/// Card liveness check (RW): reads back the bitwise inverse of the last value written.
pub const REG_LIVENESS: u64 = 0x04;
/// Factorial computation (RW): writing n stores n!, read returns the result.
pub const REG_FACTORIAL: u64 = 0x08;
/// Status register: bit 0 computing (RO), bit 7 raise interrupt after factorial (RW).
pub const REG_STATUS: u64 = 0x20;
/// Interrupt status register (RO): the raised interrupt bits.
pub const REG_IRQ_STATUS: u64 = 0x24;
/// Interrupt raise register (WO): ORs the value into the interrupt status.
pub const REG_IRQ_RAISE: u64 = 0x60;
/// Interrupt acknowledge register (WO): clears the written bits of the interrupt status.
pub const REG_IRQ_ACK: u64 = 0x64;
/// DMA source address (RW, 64-bit).
pub const REG_DMA_SRC: u64 = 0x80;
/// DMA destination address (RW, 64-bit).
pub const REG_DMA_DST: u64 = 0x88;
/// DMA transfer count in bytes (RW).
pub const REG_DMA_COUNT: u64 = 0x90;
/// DMA command register (RW): see `DMA_CMD_*`.
pub const REG_DMA_CMD: u64 = 0x98;

/// Identification value: 0xRRrr00ed with RR = major 1, rr = minor 0.
pub const IDENT_VALUE: u32 = 0x0100_00ed;
/// Status bit: a factorial computation is in progress.
pub const STATUS_COMPUTING: u32 = 0x01;
/// Status bit: raise interrupt 0x01 when a factorial computation finishes.
pub const STATUS_IRQ_FACTORIAL: u32 = 0x80;
/// Interrupt status bit raised when a factorial computation finishes.
pub const IRQ_FACTORIAL: u32 = 0x001;
/// Interrupt status bit raised when a DMA transfer finishes with `DMA_CMD_IRQ`.
pub const IRQ_DMA: u32 = 0x100;
/// DMA command: start a transfer (cleared when it is done).
pub const DMA_CMD_START: u64 = 0x1;
/// DMA command: direction, 1 = device buffer to RAM, 0 = RAM to device buffer.
pub const DMA_CMD_TO_RAM: u64 = 0x2;
/// DMA command: raise `IRQ_DMA` when the transfer finishes.
pub const DMA_CMD_IRQ: u64 = 0x4;
/// Device-side address of the DMA buffer.
pub const DMA_BUFFER_ADDR: u64 = 0x4_0000;
/// Size of the DMA buffer.
pub const DMA_BUFFER_SIZE: usize = 0x1000;
/// The device drives only 28 address bits: IOVAs are masked to this (as QEMU's edu does).
pub const DMA_ADDR_MASK: u64 = (1 << 28) - 1;
/// First register that also accepts 64-bit accesses.
const FIRST_WIDE_REG: u64 = 0x80;

/// From 34 on, n! has at least 32 factors of two, so n! mod 2^32 is 0.
const FACTORIAL_ZERO_FROM: u32 = 34;

/// n! modulo 2^32, what QEMU's edu computes in a `uint32_t`: O(1) in n, since every n from
/// [`FACTORIAL_ZERO_FROM`] on gives 0 (a guest-chosen n must not cost the vCPU O(n)).
fn factorial_u32(n: u32) -> u32 {
    if n >= FACTORIAL_ZERO_FROM {
        return 0;
    }
    (1..=n).fold(1u32, |acc, k| acc.wrapping_mul(k))
}

/// Where the device's interrupt goes (MSI or INTx, chosen by the PCI wrapper).
pub trait EduInterrupt: Send {
    /// Called whenever the interrupt status changes; `pending` is whether any bit is set.
    fn update(&mut self, pending: bool, raised: bool);
}

/// The register file and DMA engine.
pub struct EduRegisters {
    source: Bdf,
    dma: Arc<dyn DmaAccess>,
    liveness: u32,
    factorial: u32,
    status: u32,
    irq_status: u32,
    dma_src: u64,
    dma_dst: u64,
    dma_count: u64,
    dma_cmd: u64,
    buffer: Box<[u8; DMA_BUFFER_SIZE]>,
    /// PCI command bus master enable: without it the device issues no DMA.
    bus_master: bool,
    /// Transfers blocked by the IOMMU or out of range, for tests and state dumps.
    pub dma_errors: u64,
}

impl EduRegisters {
    pub fn new(source: Bdf, dma: Arc<dyn DmaAccess>) -> Self {
        EduRegisters {
            source,
            dma,
            liveness: 0,
            factorial: 1,
            status: 0,
            irq_status: 0,
            dma_src: 0,
            dma_dst: 0,
            dma_count: 0,
            dma_cmd: 0,
            buffer: Box::new([0; DMA_BUFFER_SIZE]),
            bus_master: true,
            dma_errors: 0,
        }
    }

    /// The requester id the device's DMA carries.
    pub fn set_source(&mut self, source: Bdf) {
        self.source = source;
    }

    /// The interrupt status register.
    pub fn interrupt_status(&self) -> u32 {
        self.irq_status
    }

    /// Follows the PCI command register's bus master enable bit.
    pub fn set_bus_master(&mut self, on: bool) {
        self.bus_master = on;
    }

    fn access_ok(offset: u64, len: usize) -> bool {
        offset.is_multiple_of(len as u64) && (len == 4 || (len == 8 && offset >= FIRST_WIDE_REG))
    }

    /// A BAR0 read. Unsupported sizes or offsets read as all-ones, as edu ignores them.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !Self::access_ok(offset, data.len()) {
            return;
        }
        let v: u64 = match offset {
            REG_IDENT => IDENT_VALUE.into(),
            REG_LIVENESS => (!self.liveness).into(),
            REG_FACTORIAL => self.factorial.into(),
            REG_STATUS => self.status.into(),
            REG_IRQ_STATUS => self.irq_status.into(),
            REG_DMA_SRC => self.dma_src,
            REG_DMA_DST => self.dma_dst,
            REG_DMA_COUNT => self.dma_count,
            REG_DMA_CMD => self.dma_cmd,
            o if (REG_DMA_SRC..REG_DMA_CMD + 8).contains(&o) && data.len() == 4 => {
                // High halves of the 64-bit DMA registers.
                let base = o & !7;
                let full = match base {
                    REG_DMA_SRC => self.dma_src,
                    REG_DMA_DST => self.dma_dst,
                    REG_DMA_COUNT => self.dma_count,
                    _ => self.dma_cmd,
                };
                full >> 32
            }
            _ => return,
        };
        let bytes = v.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    /// A BAR0 write. Unsupported sizes or offsets are dropped.
    pub fn write(&mut self, offset: u64, data: &[u8], irq: &mut dyn EduInterrupt) {
        if !Self::access_ok(offset, data.len()) {
            return;
        }
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let set = |reg: &mut u64| {
            if data.len() == 8 || offset.is_multiple_of(8) {
                *reg = if data.len() == 8 {
                    v
                } else {
                    (*reg & !0xffff_ffff) | v
                };
            } else {
                *reg = (*reg & 0xffff_ffff) | (v << 32);
            }
        };
        match offset {
            REG_LIVENESS => self.liveness = v as u32,
            REG_FACTORIAL => self.compute_factorial(v as u32, irq),
            REG_STATUS => {
                self.status =
                    (self.status & !STATUS_IRQ_FACTORIAL) | (v as u32 & STATUS_IRQ_FACTORIAL)
            }
            REG_IRQ_RAISE => self.raise(v as u32, irq),
            REG_IRQ_ACK => {
                self.irq_status &= !(v as u32);
                irq.update(self.irq_status != 0, false);
            }
            o if (REG_DMA_SRC..REG_DMA_SRC + 8).contains(&o) && self.dma_idle() => {
                set(&mut self.dma_src)
            }
            o if (REG_DMA_DST..REG_DMA_DST + 8).contains(&o) && self.dma_idle() => {
                set(&mut self.dma_dst)
            }
            o if (REG_DMA_COUNT..REG_DMA_COUNT + 8).contains(&o) && self.dma_idle() => {
                set(&mut self.dma_count)
            }
            REG_DMA_CMD if self.dma_idle() => {
                self.dma_cmd = v;
                if v & DMA_CMD_START != 0 {
                    self.run_dma(irq);
                }
            }
            _ => {}
        }
    }

    fn dma_idle(&self) -> bool {
        self.dma_cmd & DMA_CMD_START == 0
    }

    fn raise(&mut self, bits: u32, irq: &mut dyn EduInterrupt) {
        self.irq_status |= bits;
        if self.irq_status != 0 {
            irq.update(true, true);
        }
    }

    fn compute_factorial(&mut self, n: u32, irq: &mut dyn EduInterrupt) {
        // Computed at once (QEMU uses a thread); STATUS_COMPUTING is therefore never seen set.
        self.factorial = factorial_u32(n);
        if self.status & STATUS_IRQ_FACTORIAL != 0 {
            self.raise(IRQ_FACTORIAL, irq);
        }
    }

    /// Offset into the device buffer for a transfer of `len` at device address `addr`, or None
    /// if it does not fit entirely inside the buffer.
    fn buffer_range(addr: u64, len: u64) -> Option<std::ops::Range<usize>> {
        let start = addr.checked_sub(DMA_BUFFER_ADDR)?;
        let end = start.checked_add(len)?;
        (end <= DMA_BUFFER_SIZE as u64).then_some(start as usize..end as usize)
    }

    fn run_dma(&mut self, irq: &mut dyn EduInterrupt) {
        let to_ram = self.dma_cmd & DMA_CMD_TO_RAM != 0;
        let (dev_addr, ram_addr) = if to_ram {
            (self.dma_src, self.dma_dst)
        } else {
            (self.dma_dst, self.dma_src)
        };
        let iova = Iova(ram_addr & DMA_ADDR_MASK);
        match Self::buffer_range(dev_addr, self.dma_count) {
            _ if !self.bus_master => {
                self.dma_errors += 1;
                iommu::warn_limited!("edu: DMA with bus mastering disabled; dropped");
            }
            None => {
                self.dma_errors += 1;
                iommu::warn_limited!(
                    "edu: DMA of {:#x} bytes at device address {dev_addr:#x} is outside its buffer; dropped",
                    self.dma_count
                );
            }
            Some(range) => {
                let buf = &mut self.buffer[range];
                let r = if to_ram {
                    self.dma.dma_write(self.source, iova, buf)
                } else {
                    self.dma.dma_read(self.source, iova, buf)
                };
                if let Err(e) = r {
                    self.dma_errors += 1;
                    iommu::warn_limited!("edu: {e}");
                }
            }
        }
        self.dma_cmd &= !DMA_CMD_START;
        if self.dma_cmd & DMA_CMD_IRQ != 0 {
            self.raise(IRQ_DMA, irq);
        }
    }
}
