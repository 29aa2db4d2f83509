use std::process::Command;

use vm_memory::GuestMemoryMmap;

use super::*;
use crate::table::checksum;

pub(crate) fn config(cpus: u32, dmar: bool) -> AcpiConfig {
    AcpiConfig {
        cpus,
        ioapic: IoApicInfo {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0,
        },
        pm: PmRegisters {
            sleep_control_port: 0x600,
            sleep_status_port: 0x601,
            reset_port: 0x604,
            reset_value: 1,
        },
        dsdt: DsdtConfig {
            pci: PciHostInfo {
                ecam_base: 0xe000_0000,
                ecam_size: 0x10_0000,
                end_bus: 0,
                io_base: 0xc000,
                io_size: 0x4000,
                mmio32_base: 0xc000_0000,
                mmio32_size: 0x2000_0000,
                mmio64_base: 0x10_0000_0000,
                mmio64_size: 0x10_0000_0000,
                prt: vec![
                    PrtEntry {
                        device: 1,
                        pin: 0,
                        gsi: 17,
                    },
                    PrtEntry {
                        device: 1,
                        pin: 1,
                        gsi: 18,
                    },
                ],
            },
            serial: Some((0x3f8, 4)),
            pvpanic: Some(0x505),
            pm_ports: (0x600, 8),
            s5_sleep_type: 5,
            power_button: Some(PowerButtonInfo {
                port: 0x608,
                gsi: 9,
                event_bit: 1,
            }),
        },
        dmar: dmar.then_some(DmarConfig {
            address_width: 48,
            interrupt_remapping: true,
            register_base: 0xfed9_0000,
            ioapic_id: 0,
            ioapic_bus: 0,
            ioapic_device: 0x1e,
            ioapic_function: 0,
            device_iotlb: false,
        }),
    }
}

fn sig(b: &[u8]) -> &[u8] {
    &b[0..4]
}

#[test]
fn tables_all_checksum_and_length_match() {
    for (_, b) in build_tables(GuestAddress(0xe0000), &config(2, true))
        .iter()
        .skip(1)
    {
        assert_eq!(checksum(b), 0, "{:?}", std::str::from_utf8(sig(b)));
        assert_eq!(
            u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize,
            b.len()
        );
    }
}

#[test]
fn rsdp_points_at_xsdt_listing_every_table() {
    let t = build_tables(GuestAddress(0xe0000), &config(2, true));
    let (rsdp_addr, rsdp) = &t[0];
    assert_eq!(*rsdp_addr, 0xe0000);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(checksum(&rsdp[0..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(checksum(rsdp), 0, "extended checksum");
    let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
    let (_, xsdt) = t.iter().find(|(a, _)| *a == xsdt_addr).unwrap();
    assert_eq!(sig(xsdt), b"XSDT");
    let listed: Vec<&[u8]> = xsdt[36..]
        .chunks(8)
        .map(|c| {
            let a = u64::from_le_bytes(c.try_into().unwrap());
            sig(&t.iter().find(|(x, _)| *x == a).unwrap().1)
        })
        .collect();
    assert_eq!(listed, vec![b"FACP" as &[u8], b"APIC", b"MCFG", b"DMAR"]);
}

#[test]
fn dmar_is_listed_only_with_an_iommu() {
    let t = build_tables(GuestAddress(0xe0000), &config(1, false));
    assert!(!t.iter().any(|(_, b)| sig(b) == b"DMAR"));
}

#[test]
fn tables_are_written_to_guest_memory() {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let rsdp = create_acpi_tables(&mem, GuestAddress(0xe0000), 0x20000, &config(2, true)).unwrap();
    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, rsdp).unwrap();
    assert_eq!(&sig, b"RSD PTR ");
}

#[test]
fn tables_too_large_for_region_are_an_error() {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let r = create_acpi_tables(&mem, GuestAddress(0xe0000), 0x100, &config(2, true));
    assert!(matches!(r, Err(AcpiError::TooLarge { .. })));
}

/// Disassembles a table with ACPICA's iasl and returns the text.
fn iasl_disassemble(name: &str, bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("minivmm-acpi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let aml = dir.join(format!("{name}.aml"));
    std::fs::write(&aml, bytes).unwrap();
    let out = Command::new("iasl")
        .arg("-d")
        .arg(&aml)
        .current_dir(&dir)
        .output()
        .expect("iasl runs: install Debian's acpica-tools (scripts/install-deps.sh does)");
    assert!(
        out.status.success(),
        "iasl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    text
}

#[test]
fn dsdt_disassembles_with_iasl() {
    let t = build_tables(GuestAddress(0xe0000), &config(2, true));
    let dsdt = &t.iter().find(|(_, b)| sig(b) == b"DSDT").unwrap().1;
    let text = iasl_disassemble("dsdt", dsdt);
    for needle in [
        "PNP0A08",
        "PNP0A03",
        "PNP0501",
        "QEMU0001",
        "PNP0C02",
        "_PRT",
        "_S5_",
        "0x0001FFFF",
        "0x11",
        "0x12",
        "0xC0000000",
        "0x0000001000000000",
        "0xE0000000",
    ] {
        assert!(text.contains(needle), "DSDT lacks {needle}:\n{text}");
    }
}

#[test]
fn dmar_disassembles_with_iasl() {
    let t = build_tables(GuestAddress(0xe0000), &config(2, true));
    let dmar = &t.iter().find(|(_, b)| sig(b) == b"DMAR").unwrap().1;
    let text = iasl_disassemble("dmar", dmar);
    for needle in [
        "Host Address Width : 2F",
        "Register Base Address : 00000000FED90000",
        "Device Scope Type : 03",
    ] {
        assert!(text.contains(needle), "DMAR lacks {needle}:\n{text}");
    }
}

#[test]
fn dsdt_power_button_ged_notifies_pwrb_from_evt() {
    let t = build_tables(GuestAddress(0xe0000), &config(1, false));
    let dsdt = &t.iter().find(|(_, b)| sig(b) == b"DSDT").unwrap().1;
    let text = iasl_disassemble("dsdt-ged", dsdt);
    for needle in [
        "\"ACPI0013\"",
        "PNP0C0C",
        "Method (_EVT, 1, Serialized)",
        "OperationRegion (GDST, SystemIO, 0x0608, One)",
        "Notify (\\_SB.PWRB, 0x80)",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "0x00000009,",
    ] {
        assert!(text.contains(needle), "DSDT lacks {needle}:\n{text}");
    }
    let mut cfg = config(1, false);
    cfg.dsdt.power_button = None;
    let t = build_tables(GuestAddress(0xe0000), &cfg);
    let dsdt = &t.iter().find(|(_, b)| sig(b) == b"DSDT").unwrap().1;
    assert!(!iasl_disassemble("dsdt-noged", dsdt).contains("ACPI0013"));
}
