//! DSDT (ACPI 6.5 section 5.2.11.1) in AML built with acpi_tables::aml: the PCIe host bridge
//! with its windows and INTx routing, COM1, pvpanic, the motherboard resources that reserve
//! ECAM and the PM ports, and the \_S5 sleep package.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Method, Name,
    Package, Path, ResourceTemplate, Return, Scope, IO,
};
use acpi_tables::Aml;

use crate::table::Table;

/// One _PRT entry: INTx `pin` (0 = INTA) of PCI `device` on bus 0 goes to IOAPIC `gsi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrtEntry {
    pub device: u8,
    pub pin: u8,
    pub gsi: u32,
}

/// The PCIe host bridge's resources.
#[derive(Clone, Debug)]
pub struct PciHostInfo {
    pub ecam_base: u64,
    pub ecam_size: u64,
    pub end_bus: u8,
    pub io_base: u16,
    pub io_size: u16,
    pub mmio32_base: u32,
    pub mmio32_size: u32,
    pub mmio64_base: u64,
    pub mmio64_size: u64,
    pub prt: Vec<PrtEntry>,
}

/// What the DSDT describes.
#[derive(Clone, Debug)]
pub struct DsdtConfig {
    pub pci: PciHostInfo,
    /// COM1 port and ISA IRQ.
    pub serial: Option<(u16, u32)>,
    /// pvpanic port.
    pub pvpanic: Option<u16>,
    /// The PM device's first port and port count (reserved as a motherboard resource).
    pub pm_ports: (u16, u8),
    /// SLP_TYPx for S5.
    pub s5_sleep_type: u8,
}

/// PCI configuration mechanism #1 ports (PCI local bus spec 3.2.2.3.2).
const PCI_CONFIG_PORT: u16 = 0xcf8;
const PCI_CONFIG_PORTS: u8 = 8;
/// _STA: present, enabled, shown in UI, functioning.
const STA_PRESENT: u8 = 0xf;
/// _PRT address meaning "any function of the device" (ACPI 6.5 section 6.2.13).
const PRT_ANY_FUNCTION: u32 = 0xffff;

fn pci_host(pci: &PciHostInfo) -> Vec<u8> {
    let bus = AddressSpace::new_bus_number(0u16, pci.end_bus.into());
    let cfg_io = IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORTS);
    let io = AddressSpace::new_io(pci.io_base, pci.io_base + (pci.io_size - 1), None);
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.mmio32_base,
        pci.mmio32_base + (pci.mmio32_size - 1),
        None,
    );
    let mmio64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.mmio64_base,
        pci.mmio64_base + (pci.mmio64_size - 1),
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cfg_io, &io, &mmio32, &mmio64]);

    let addrs: Vec<u32> = pci
        .prt
        .iter()
        .map(|e| (u32::from(e.device) << 16) | PRT_ANY_FUNCTION)
        .collect();
    let entries: Vec<Package> = pci
        .prt
        .iter()
        .zip(&addrs)
        .map(|(e, a)| Package::new(vec![a, &e.pin, &0u8, &e.gsi]))
        .collect();
    let prt = Package::new(entries.iter().map(|p| p as &dyn Aml).collect());

    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    let mut b = Vec::new();
    Device::new(
        "PCI0".into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_CID".into(), &cid),
            &Name::new("_ADR".into(), &0u8),
            &Name::new("_SEG".into(), &0u8),
            &Name::new("_UID".into(), &0u8),
            &Name::new("_BBN".into(), &0u8),
            &Name::new("_CRS".into(), &crs),
            &Name::new("_PRT".into(), &prt),
        ],
    )
    .to_aml_bytes(&mut b);
    b
}

fn com1(port: u16, irq: u32) -> Vec<u8> {
    let hid = EISAName::new("PNP0501");
    let io = IO::new(port, port, 1, 8);
    let int = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&io, &int]);
    let mut b = Vec::new();
    Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &0u8),
            &Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut b);
    b
}

fn pvpanic(port: u16) -> Vec<u8> {
    let io = IO::new(port, port, 1, 1);
    let crs = ResourceTemplate::new(vec![&io]);
    let sta = Return::new(&STA_PRESENT);
    let mut b = Vec::new();
    Device::new(
        "PEVT".into(),
        vec![
            &Name::new("_HID".into(), &"QEMU0001"),
            &Name::new("_CRS".into(), &crs),
            &Method::new("_STA".into(), 0, false, vec![&sta]),
        ],
    )
    .to_aml_bytes(&mut b);
    b
}

/// Motherboard resources (PNP0C02): ECAM must be reserved here for Linux to trust MCFG
/// (arch/x86/pci/mmconfig-shared.c), and the PM ports are claimed too.
fn motherboard(cfg: &DsdtConfig) -> Vec<u8> {
    let hid = EISAName::new("PNP0C02");
    let ecam = Memory32Fixed::new(false, cfg.pci.ecam_base as u32, cfg.pci.ecam_size as u32);
    let pm = IO::new(cfg.pm_ports.0, cfg.pm_ports.0, 1, cfg.pm_ports.1);
    let crs = ResourceTemplate::new(vec![&ecam, &pm]);
    let mut b = Vec::new();
    Device::new(
        "MBRD".into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &1u8),
            &Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut b);
    b
}

pub fn build(cfg: &DsdtConfig) -> Vec<u8> {
    let mut sb = pci_host(&cfg.pci);
    if let Some((port, irq)) = cfg.serial {
        sb.extend(com1(port, irq));
    }
    if let Some(port) = cfg.pvpanic {
        sb.extend(pvpanic(port));
    }
    sb.extend(motherboard(cfg));
    let mut t = Table::new(*b"DSDT", 2);
    t.push(&Scope::raw(Path::new("\\_SB_"), sb));
    let s5 = Package::new(vec![&cfg.s5_sleep_type, &cfg.s5_sleep_type, &0u8, &0u8]);
    let mut b = Vec::new();
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut b);
    t.push(&b);
    t.finish()
}
