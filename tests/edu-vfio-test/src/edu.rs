//! The register interface of the `edu` educational PCI device (PCI 1234:11e8), as documented in
//! QEMU's docs/specs/edu.rst. minivmm emulates the same device; the lab's "physical" device is
//! QEMU's own.

/// BAR0 register offsets.
pub const REG_IDENT: u64 = 0x00;
pub const REG_LIVENESS: u64 = 0x04;
pub const REG_IRQ_STATUS: u64 = 0x24;
pub const REG_IRQ_RAISE: u64 = 0x60;
pub const REG_IRQ_ACK: u64 = 0x64;
pub const REG_DMA_SRC: u64 = 0x80;
pub const REG_DMA_DST: u64 = 0x88;
pub const REG_DMA_COUNT: u64 = 0x90;
pub const REG_DMA_CMD: u64 = 0x98;
/// DMA command bits.
pub const DMA_CMD_START: u32 = 0x1;
pub const DMA_CMD_TO_RAM: u32 = 0x2;
/// Device-side address of the 4 KiB DMA buffer.
pub const DMA_BUFFER: u64 = 0x4_0000;
pub const DMA_BUFFER_SIZE: u64 = 0x1000;
/// Low byte of the identification register.
pub const IDENT_MAGIC: u32 = 0xed;

/// 32-bit access to BAR0, however the device is reached.
pub trait Bar0 {
    fn read32(&self, offset: u64) -> Result<u32, String>;
    fn write32(&self, offset: u64, value: u32) -> Result<(), String>;
}

/// Programs one DMA transfer and polls until the engine is idle again.
pub fn dma(bar: &dyn Bar0, src: u64, dst: u64, len: u32, to_ram: bool) -> Result<(), String> {
    let wr = |o, v| bar.write32(o, v);
    wr(REG_DMA_SRC, src as u32)?;
    wr(REG_DMA_SRC + 4, (src >> 32) as u32)?;
    wr(REG_DMA_DST, dst as u32)?;
    wr(REG_DMA_DST + 4, (dst >> 32) as u32)?;
    wr(REG_DMA_COUNT, len)?;
    let cmd = DMA_CMD_START | if to_ram { DMA_CMD_TO_RAM } else { 0 };
    wr(REG_DMA_CMD, cmd)?;
    let start = std::time::Instant::now();
    while bar.read32(REG_DMA_CMD)? & DMA_CMD_START != 0 {
        if start.elapsed() > std::time::Duration::from_secs(10) {
            return Err("DMA did not complete within 10 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}
