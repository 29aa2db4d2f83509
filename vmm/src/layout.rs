//! The guest-physical and port-I/O map of a minivmm x86-64 machine.
//!
//! ```text
//! 0x0000_0000 .. 0x0009_f000  RAM (boot structures at fixed low addresses below)
//! 0x0009_f000 .. 0x0010_0000  reserved (EBDA, VGA hole, BIOS area; ACPI tables in 0xe0000..)
//! 0x0010_0000 .. low_ram_end  RAM (low_ram_end: --memory low-ram-end, at most MMIO32_START)
//! 0xc000_0000 .. 0xe000_0000  PCI 32-bit MMIO window
//! 0xe000_0000 .. 0xe010_0000  PCIe ECAM (MMCONFIG), bus 0 only
//! 0xfec0_0000 .. 0xfec0_1000  IOAPIC
//! 0xfed9_0000 .. 0xfed9_1000  VT-d DRHD register set (with --iommu)
//! 0xfee0_0000 .. 0xfef0_0000  local APICs (in KVM)
//! 0xfeff_c000 .. 0xff00_0000  KVM's identity-map page and real-mode TSS (as QEMU places them)
//! 0xffe0_0000 .. 0x1_0000_0000  nothing: kept for a firmware image (flash below 4 GiB)
//! 0x1_0000_0000 ..            RAM above 4 GiB (the rest)
//! MMIO64_START ..             PCI 64-bit MMIO window
//! ```
//!
//! Firmware boot (`--bios`, [`AddressMap::firmware`]) follows QEMU's q35 where OVMF
//! compiles it in (edk2 OvmfPkg/Library/PlatformInitLib/Platform.c,
//! PlatformMemMapInitialization):
//!
//! ```text
//! 0x0000_0000 .. low_ram_end  RAM (low_ram_end at most 0xb000_0000)
//! 0xb000_0000 .. 0xc000_0000  PCIe ECAM, 256 buses (OVMF's PcdPciExpressBaseAddress)
//! 0xc000_0000 .. 0xfc00_0000  PCI 32-bit MMIO window (OVMF's Q35 aperture)
//! 0xfec0_0000 ..              IOAPIC, VT-d, LAPIC, KVM pages as above
//! 4 GiB - image .. 4 GiB      the firmware image, read-only (at most 16 MiB)
//! above RAM .. 2^phys_bits    PCI 64-bit window (wherever OVMF puts it above RAM)
//! ports 0x6000 .. 0x10000     PCI I/O window (OVMF's); the ICH9 PM block at PMBASE
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
/// Local APIC window size (one page per APIC, 1 MiB decoded; Intel SDM vol. 3 section 11.4.1).
pub const LAPIC_SIZE: u64 = 0x10_0000;
/// KVM's identity-map page (KVM_SET_IDENTITY_MAP_ADDR) and the three-page TSS
/// (KVM_SET_TSS_ADDR) that follows it on Intel hosts: QEMU's addresses, outside the
/// firmware area and below it.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfeff_c000;
pub const KVM_TSS_START: u64 = 0xfeff_d000;
pub const KVM_TSS_SIZE: u64 = 0x3000;
/// The top 2 MiB below 4 GiB, where a firmware image (OVMF CODE and VARS) is mapped; minivmm
/// places nothing there.
pub const FIRMWARE_START: u64 = 0xffe0_0000;
pub const FIRMWARE_SIZE: u64 = 0x20_0000;
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
/// isa-debug-exit default port (QEMU's).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
pub const DEBUG_EXIT_SIZE: u16 = 4;
/// ACPI hardware-reduced sleep control/status and reset registers (ACPI 6.5 sections 4.8.3.7, 4.8.3.6).
pub const ACPI_PM_PORT: u16 = 0x600;
/// The power button's Generic Event Device register (ACPI 6.5 section 5.6.9), after the PM
/// block, and its IOAPIC pin (the ISA SCI's, unused on a hardware-reduced platform).
pub const GED_PORT: u16 = 0x608;
pub const GED_IRQ: u32 = 9;
/// PCI I/O BAR window.
pub const PCI_IO_START: u16 = 0xc000;
pub const PCI_IO_SIZE: u16 = 0x4000;

/// IOAPIC pins; PCI INTx use 16..=23 (see devices::pci for the swizzle).
pub const IOAPIC_NUM_PINS: usize = 24;
/// The IOAPIC pins PCI INTx lines are swizzled onto (devices::pci::intx_gsi).
pub const PCI_INTX_FIRST_PIN: u32 = 16;
pub const PCI_INTX_PINS: u32 = 8;
const _: () = assert!(ACPI_START + ACPI_SIZE <= RESET_STUB_PAGE);
const _: () = assert!(KVM_IDENTITY_MAP_START + 0x1000 == KVM_TSS_START);
const _: () = assert!(LAPIC_START + LAPIC_SIZE <= KVM_IDENTITY_MAP_START);
const _: () = assert!(KVM_TSS_START + KVM_TSS_SIZE <= FIRMWARE_START);
const _: () = assert!(FIRMWARE_START + FIRMWARE_SIZE == RAM_HIGH_START);

/// The IOAPIC's APIC ID and its requester id (device 0x1e of bus 0, as in the DMAR scope).
pub const IOAPIC_ID: u8 = 0;
pub const IOAPIC_SOURCE: devices::Bdf = devices::Bdf::new(0, 0x1e, 0);

/// Where the boot protocols put their structures, around the RAM ranges `ram`.
pub fn boot_layout(ram: Vec<(u64, u64)>) -> firmware::BootLayout {
    use vm_memory::GuestAddress;
    firmware::BootLayout {
        structures: firmware::BootStructures {
            gdt: GuestAddress(BOOT_GDT_START),
            idt: GuestAddress(BOOT_IDT_START),
            pml4: GuestAddress(PML4_START),
            pdpte: GuestAddress(PDPTE_START),
            pde: GuestAddress(PDE_START),
            stack_pointer: BOOT_STACK_POINTER,
        },
        boot_info: GuestAddress(ZERO_PAGE_START),
        cmdline: GuestAddress(CMDLINE_START),
        cmdline_max: CMDLINE_MAX_SIZE,
        high_mem_start: GuestAddress(HIGH_MEM_START),
        ram,
        reserved: vec![
            (LOW_MEM_END, HIGH_MEM_START - LOW_MEM_END),
            (ECAM_START, ECAM_SIZE),
        ],
    }
}
/// The highest RAM below 4 GiB may reach (and its default end): the 32-bit PCI MMIO window.
pub const LOW_RAM_END_MAX: u64 = MMIO32_START;

/// Firmware boot: OVMF's fixed ECAM (PcdPciExpressBaseAddress, 256 buses), where low RAM
/// must end (PlatformMemMapInitialization asserts TopOfLowRam <= PciExBarBase), its 32-bit
/// aperture [ECAM end, 0xFC000000) and its PCI I/O aperture 0x6000..0xFFFF.
pub const FW_ECAM_START: u64 = 0xb000_0000;
pub const FW_ECAM_SIZE: u64 = 0x1000_0000;
pub const FW_LOW_RAM_END_MAX: u64 = FW_ECAM_START;
pub const FW_MMIO32_START: u64 = FW_ECAM_START + FW_ECAM_SIZE;
pub const FW_MMIO32_SIZE: u64 = 0xfc00_0000 - FW_MMIO32_START;
pub const FW_PCI_IO_START: u16 = 0x6000;
pub const FW_PCI_IO_SIZE: u16 = 0xa000;
/// The largest firmware image: from 0xFF000000 (the end of KVM's pages) to 4 GiB.
pub const FW_IMAGE_MAX: u64 = RAM_HIGH_START - (KVM_TSS_START + KVM_TSS_SIZE);
/// Firmware boot: the hardware-reduced sleep and reset registers move out of the ICH9 PM
/// block's 128 ports at OVMF's PMBASE 0x600 (ICH9_PMBASE_VALUE).
pub const FW_ACPI_PM_PORT: u16 = 0x680;
/// Firmware boot: the power button's register, after the moved sleep/reset registers.
pub const FW_GED_PORT: u16 = FW_ACPI_PM_PORT + devices::acpi_pm::ACPI_PM_SIZE as u16;
/// The ICH9 PM block's base as OVMF programs it (QEMU's FADT points there too).
pub const FW_PMBASE: u16 = 0x600;
const _: () = assert!(FW_ACPI_PM_PORT as u64 >= FW_PMBASE as u64 + devices::lpc::pmio::PMIO_SIZE);
const _: () = assert!(FW_MMIO32_START + FW_MMIO32_SIZE <= IOAPIC_START);

/// The physical address width a guest without CPUID leaf 0x8000_0008 has (Intel SDM vol. 3A
/// 4.1.4: 36 bits), which is OVMF's minimum too (MemDetect.c); and the most 4-level paging
/// reaches (52 is the architectural limit; OVMF stops at 47).
pub const FW_PHYS_BITS_MIN: u8 = 36;
pub const FW_PHYS_BITS_MAX: u8 = 48;

/// The parts of the address map that differ between direct kernel boot and firmware boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressMap {
    pub ecam: (u64, u64),
    pub mmio32: (u64, u64),
    pub mmio64: (u64, u64),
    pub pci_io: (u16, u16),
    /// The hardware-reduced ACPI sleep/reset registers.
    pub acpi_pm_port: u16,
    /// The power button's Generic Event Device register, after them.
    pub ged_port: u16,
    /// Kept for a firmware image (flash below 4 GiB): 2 MiB, or with firmware boot all from
    /// the end of KVM's pages to 4 GiB (the image ends at 4 GiB, at most [`FW_IMAGE_MAX`]).
    pub firmware_area: (u64, u64),
}

impl AddressMap {
    /// Direct kernel boot: one ECAM bus at 0xe0000000, the windows above.
    pub fn direct() -> Self {
        AddressMap {
            ecam: (ECAM_START, ECAM_SIZE),
            mmio32: (MMIO32_START, MMIO32_SIZE),
            mmio64: (MMIO64_START, MMIO64_SIZE),
            pci_io: (PCI_IO_START, PCI_IO_SIZE),
            acpi_pm_port: ACPI_PM_PORT,
            ged_port: GED_PORT,
            firmware_area: (FIRMWARE_START, FIRMWARE_SIZE),
        }
    }

    /// Firmware boot with RAM ending at `ram_end`, for a guest whose CPUID gives
    /// `phys_bits` physical address bits: OVMF's ECAM and apertures. OVMF's 64-bit window
    /// is either just above RAM (MemDetect.c PlatformGetFirstNonAddress: 32 GiB for 32 GiB)
    /// or, when it trusts CPUID's address width (edk2-stable202211 on: AMD with 40 bits,
    /// Intel with 36 or 39, any vendor with 41 or more), the top eighth of the address space
    /// (PlatformDynamicMmioWindow: 896 GiB..1 TiB for 40 bits), where PciBusDxe assigns the
    /// 64-bit BARs (the lab saw virtio BAR 0 at 0xe0_0000_0000). The window here covers both:
    /// from the first 1 GiB boundary above RAM (and 4 GiB) to the end of the guest's address
    /// space.
    pub fn firmware(ram_end: u64, phys_bits: u8) -> Self {
        let mmio64_start = ram_end.max(RAM_HIGH_START).next_multiple_of(1 << 30);
        let mmio64_end = 1u64 << phys_bits.clamp(FW_PHYS_BITS_MIN, FW_PHYS_BITS_MAX);
        AddressMap {
            ecam: (FW_ECAM_START, FW_ECAM_SIZE),
            mmio32: (FW_MMIO32_START, FW_MMIO32_SIZE),
            mmio64: (mmio64_start, mmio64_end.saturating_sub(mmio64_start)),
            pci_io: (FW_PCI_IO_START, FW_PCI_IO_SIZE),
            acpi_pm_port: FW_ACPI_PM_PORT,
            ged_port: FW_GED_PORT,
            firmware_area: (RAM_HIGH_START - FW_IMAGE_MAX, FW_IMAGE_MAX),
        }
    }

    /// The PCI root bus's I/O, 32-bit and 64-bit windows.
    pub fn pci_windows(&self) -> devices::pci::root::Windows {
        devices::pci::root::Windows {
            io: (self.pci_io.0.into(), self.pci_io.1.into()),
            mmio32: self.mmio32,
            mmio64: self.mmio64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inside(m: &AddressMap, (base, size): (u64, u64)) -> bool {
        m.mmio64.0 <= base && base + size <= m.mmio64.0 + m.mmio64.1
    }

    #[test]
    fn layout_firmware_map_is_ovmf_q35() {
        let m = AddressMap::firmware(1 << 30, 40);
        assert_eq!(m.ecam, (0xb000_0000, 0x1000_0000));
        assert_eq!(m.mmio32, (0xc000_0000, 0x3c00_0000));
        assert_eq!(m.pci_io, (0x6000, 0xa000));
        assert_eq!(m.firmware_area, (0xff00_0000, 0x100_0000));
        // OVMF's classic 64-bit window for 1 GiB of RAM (32..64 GiB) is inside.
        assert!(inside(&m, (32 << 30, 32 << 30)));
        let big = AddressMap::firmware((4 << 30) + (9 << 30) + 5, 40);
        assert_eq!(big.mmio64.0, 14 << 30, "above RAM");
    }

    #[test]
    fn layout_firmware_mmio64_window_reaches_ovmf_dynamic_window() {
        // OVMF 2022.11 with an AMD CPU of 40 address bits: 128 GiB at 896 GiB (the lab saw
        // virtio BAR 0 at 0xe0_0000_0000); a BAR anywhere in it decodes.
        let m = AddressMap::firmware(1 << 30, 40);
        assert!(inside(&m, (896 << 30, 128 << 30)));
        assert!(inside(&m, (0xe0_0000_0000, 0x8000)));
        assert!(inside(&m, ((1 << 40) - 0x8000, 0x8000)));
        assert_eq!(
            m.mmio64.0 + m.mmio64.1,
            1 << 40,
            "nothing past the address space"
        );
        // 47 bits (OVMF's cap for 48-bit CPUs): 16 TiB at 112 TiB.
        let m = AddressMap::firmware(1 << 30, 48);
        assert!(inside(&m, (112 << 40, 16 << 40)));
        // Without leaf 0x8000_0008 (36 bits) the classic window 32..64 GiB still fits.
        let m = AddressMap::firmware(1 << 30, 0);
        assert!(inside(&m, (32 << 30, 32 << 30)));
        assert_eq!(m.mmio64.0 + m.mmio64.1, 64 << 30);
    }
}
