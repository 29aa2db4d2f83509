//! What the ACPI tables say about the devices: CPUs, IOAPIC, PM registers, the PCI host
//! bridge and its _PRT, COM1, pvpanic, and the DMAR with an IOMMU.

use devices::acpi_pm::{
    ACPI_PM_SIZE, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET,
};
use devices::pci::PrtRoute;
use devices::pvpanic::PVPANIC_PORT;

use crate::config::{SerialConfig, VmConfig};
use crate::layout::*;

/// The ACPI configuration of a machine with `cfg`'s devices and the `prt` routes.
pub fn acpi_config(cfg: &VmConfig, prt: &[PrtRoute]) -> acpi::AcpiConfig {
    let map = cfg.address_map();
    let port = |off: u64| map.acpi_pm_port + off as u16;
    acpi::AcpiConfig {
        cpus: cfg.cpus,
        ioapic: acpi::IoApicInfo {
            id: IOAPIC_ID,
            address: IOAPIC_START as u32,
            gsi_base: 0,
        },
        pm: acpi::PmRegisters {
            sleep_control_port: port(SLEEP_CONTROL_OFFSET),
            sleep_status_port: port(SLEEP_STATUS_OFFSET),
            reset_port: port(RESET_OFFSET),
            reset_value: RESET_VALUE,
        },
        dsdt: acpi::DsdtConfig {
            pci: acpi::PciHostInfo {
                ecam_base: map.ecam.0,
                ecam_size: map.ecam.1,
                end_bus: 0,
                io_base: map.pci_io.0,
                io_size: map.pci_io.1,
                mmio32_base: map.mmio32.0 as u32,
                mmio32_size: map.mmio32.1 as u32,
                mmio64_base: map.mmio64.0,
                mmio64_size: map.mmio64.1,
                prt: prt
                    .iter()
                    .map(|r| acpi::PrtEntry {
                        device: r.device,
                        pin: r.pin,
                        gsi: r.gsi,
                    })
                    .collect(),
            },
            serial: (cfg.serial != SerialConfig::Off).then_some((COM1_PORT, COM1_IRQ)),
            pvpanic: Some(PVPANIC_PORT),
            pm_ports: (map.acpi_pm_port, ACPI_PM_SIZE as u8),
            s5_sleep_type: S5_SLEEP_TYPE,
            power_button: Some(acpi::PowerButtonInfo {
                port: map.ged_port,
                gsi: GED_IRQ,
                event_bit: devices::acpi_ged::GED_EVENT_POWER_BUTTON,
            }),
        },
        dmar: cfg.iommu.map(|c| acpi::DmarConfig {
            address_width: c.aw_bits,
            interrupt_remapping: c.interrupt_remapping,
            register_base: DRHD_START,
            ioapic_id: IOAPIC_ID,
            ioapic_bus: IOAPIC_SOURCE.bus(),
            ioapic_device: IOAPIC_SOURCE.device(),
            ioapic_function: IOAPIC_SOURCE.function(),
            device_iotlb: c.device_iotlb,
        }),
    }
}
