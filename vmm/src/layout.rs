//! The guest-physical and port-I/O map of a minivmm x86-64 machine.
//!
//! ```text
//! 0x0000_0000 .. 0x0009_f000  RAM (boot structures at fixed low addresses below)
//! 0x0009_f000 .. 0x0010_0000  reserved (EBDA, VGA hole, BIOS area; ACPI tables in 0xe0000..)
//! 0x0010_0000 .. low_ram_end  RAM (low_ram_end = min(RAM, MMIO32_START))
//! 0xc000_0000 .. 0xe000_0000  PCI 32-bit MMIO window
//! 0xe000_0000 .. 0xe010_0000  PCIe ECAM (MMCONFIG), bus 0 only
//! 0xfec0_0000 .. 0xfec0_1000  IOAPIC
//! 0xfed9_0000 .. 0xfed9_1000  VT-d DRHD register set (with --iommu)
//! 0xfee0_0000 .. 0xfef0_0000  local APICs (in KVM)
//! 0x1_0000_0000 ..            RAM above 4 GiB (the rest)
//! MMIO64_START ..             PCI 64-bit MMIO window
//! ```

/// Start of guest RAM.
pub const RAM_START: u64 = 0;
/// End of the conventional memory below the EBDA (first E820 RAM entry).
pub const LOW_MEM_END: u64 = 0x9_f000;
/// Start of RAM above the legacy hole.
pub const HIGH_MEM_START: u64 = 0x10_0000;
/// ACPI tables live in the BIOS area so that the RSDP scan (ACPI 6.5 section 5.2.5.1) finds them.
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_SIZE: u64 = 0x1_f000;
/// The last page below 1 MiB holds the reset-vector stub (firmware::reset_vector).
pub const RESET_STUB_PAGE: u64 = 0xf_f000;

/// Page-table, GDT and boot-info scratch area used by the boot protocols (all below 640 KiB).
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: u64 = 0x1_0000;

/// The 32-bit PCI MMIO window; RAM below 4 GiB stops here.
pub const MMIO32_START: u64 = 0xc000_0000;
pub const MMIO32_SIZE: u64 = 0x2000_0000;
/// PCIe enhanced configuration space (PCIe base spec 7.2.2), one bus.
pub const ECAM_START: u64 = 0xe000_0000;
pub const ECAM_SIZE: u64 = 0x10_0000;
/// IOAPIC register window (82093AA datasheet section 3.1).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
/// VT-d remapping hardware unit register base (DRHD, VT-d spec 8.3).
pub const DRHD_START: u64 = 0xfed9_0000;
pub const DRHD_SIZE: u64 = 0x1000;
/// Local APIC default base (Intel SDM vol. 3 section 11.4.1).
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Start of RAM above 4 GiB.
pub const RAM_HIGH_START: u64 = 0x1_0000_0000;
/// The 64-bit PCI MMIO window (needs 37 physical address bits).
pub const MMIO64_START: u64 = 0x10_0000_0000;
pub const MMIO64_SIZE: u64 = 0x10_0000_0000;

/// Port I/O.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
pub const FW_CFG_PORT: u16 = 0x510;
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// ACPI hardware-reduced sleep control/status and reset registers (ACPI 6.5 sections 4.8.3.7, 4.8.3.6).
pub const ACPI_PM_PORT: u16 = 0x600;
/// PCI I/O BAR window.
pub const PCI_IO_START: u16 = 0xc000;
pub const PCI_IO_SIZE: u16 = 0x4000;

/// IOAPIC pins; PCI INTx use 16..=23 (see devices::pci for the swizzle).
pub const IOAPIC_NUM_PINS: usize = 24;
const _: () = assert!(ACPI_START + ACPI_SIZE <= RESET_STUB_PAGE);
/// The highest RAM below 4 GiB may reach (and its default end): the 32-bit PCI MMIO window.
pub const LOW_RAM_END_MAX: u64 = MMIO32_START;
