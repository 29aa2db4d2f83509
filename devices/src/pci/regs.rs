//! Configuration space layout and register bits, defined once for every PCI model here (the
//! emulated configuration space, the VFIO passthrough and the root). Offsets are bytes; the
//! configuration space helper, which stores dwords, uses [`dword`].

/// Bytes of a PCIe function's configuration space (PCIe base spec 7.2.2), and its dwords.
pub const CONFIG_SPACE: usize = 4096;
pub const CONFIG_DWORDS: usize = CONFIG_SPACE / 4;
/// End of the conventional (PCI 3.0) configuration space.
pub const CONVENTIONAL_END: usize = 0x100;

/// Type-0 header registers (PCI local bus spec 3.0 section 6.1, figure 6-1).
pub const ID: usize = 0x00;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const CLASS_REVISION: usize = 0x08;
/// Cache line size, latency timer, header type, BIST.
pub const HEADER: usize = 0x0c;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM: usize = 0x2c;
pub const ROM: usize = 0x30;
pub const CAPABILITIES: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;
/// BARs of a type-0 header (6.2.5.1).
pub const NUM_BARS: usize = 6;
/// First byte available for capabilities (after the 64-byte header).
pub const FIRST_CAPABILITY: usize = 0x40;

/// Command register bits (6.2.2): I/O space, memory space, bus master, interrupt disable.
pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register bits (6.2.3): interrupt status, capabilities list.
pub const STATUS_INTERRUPT: u16 = 1 << 3;
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// Capability IDs (PCI local bus spec 3.0 appendix H).
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_MSIX: u8 = 0x11;

/// The dword index of byte offset `offset`.
pub const fn dword(offset: usize) -> usize {
    offset / 4
}
