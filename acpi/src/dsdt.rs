//! DSDT (ACPI 6.5 section 5.2.11.1) in AML built with acpi_tables::aml: the PCIe host bridge
//! with its windows and INTx routing, COM1, pvpanic, the motherboard resources that reserve
//! ECAM and the PM ports, the power button (a Generic Event Device and a PNP0C0C button), and
//! the \_S5 sleep package.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, And, Device, EISAName, Equal, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local, Memory32Fixed, Method, Name,
    Notify, OpRegion, OpRegionSpace, Package, Path, ResourceTemplate, Return, Scope, Store, IO,
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
    /// The power button's Generic Event Device, if there is one.
    pub power_button: Option<PowerButtonInfo>,
}

/// A Generic Event Device (ACPI 6.5 section 5.6.9) for the power button: its one-byte event
/// register (read to clear) on port `port`, its edge-triggered interrupt on `gsi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerButtonInfo {
    pub port: u16,
    pub gsi: u32,
    /// The register bit that means "pressed".
    pub event_bit: u8,
}

/// Notify value for a power button press (ACPI 6.5 section 5.6.6, table 5.186).
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

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

/// The power button: PWRB (PNP0C0C, a control-method button, ACPI 6.5 section 4.8.2.2.1.2),
/// and GED0 (ACPI0013): its interrupt runs _EVT, which reads the event register and notifies
/// PWRB when the button bit is set.
fn power_button(p: &PowerButtonInfo) -> Vec<u8> {
    let mut b = Vec::new();
    let pwrb_hid = EISAName::new("PNP0C0C");
    Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &pwrb_hid),
            &Name::new("_UID".into(), &0u8),
        ],
    )
    .to_aml_bytes(&mut b);
    let int = Interrupt::new(true, true, false, false, p.gsi);
    let io = IO::new(p.port, p.port, 1, 1);
    let crs = ResourceTemplate::new(vec![&int]);
    let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemIO, &p.port, &1u8);
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![FieldEntry::Named(*b"GDAT", 8)],
    );
    let gdat = Path::new("GDAT");
    let events = Store::new(&Local(0), &gdat);
    let masked = And::new(&Local(1), &Local(0), &p.event_bit);
    let pressed = Equal::new(&Local(1), &p.event_bit);
    let pwrb = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&pwrb, &NOTIFY_BUTTON_PRESSED);
    let on_press = If::new(&pressed, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&events, &masked, &on_press]);
    // The register's port is reserved with the other motherboard resources' kind of claim.
    let res = ResourceTemplate::new(vec![&io]);
    let mut ged = Vec::new();
    Device::new(
        "GED0".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &0u8),
            &Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    )
    .to_aml_bytes(&mut ged);
    b.extend(ged);
    let hid = EISAName::new("PNP0C02");
    Device::new(
        "GEDR".into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &2u8),
            &Name::new("_CRS".into(), &res),
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
    if let Some(p) = &cfg.power_button {
        sb.extend(power_button(p));
    }
    let mut t = Table::new(*b"DSDT", 2);
    t.push(&Scope::raw(Path::new("\\_SB_"), sb));
    let s5 = Package::new(vec![&cfg.s5_sleep_type, &cfg.s5_sleep_type, &0u8, &0u8]);
    let mut b = Vec::new();
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut b);
    t.push(&b);
    t.finish()
}
