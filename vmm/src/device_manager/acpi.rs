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
    let port = |off: u64| ACPI_PM_PORT + off as u16;
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
                ecam_base: ECAM_START,
                ecam_size: ECAM_SIZE,
                end_bus: 0,
                io_base: PCI_IO_START,
                io_size: PCI_IO_SIZE,
                mmio32_base: MMIO32_START as u32,
                mmio32_size: MMIO32_SIZE as u32,
                mmio64_base: MMIO64_START,
                mmio64_size: MMIO64_SIZE,
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
            pm_ports: (ACPI_PM_PORT, ACPI_PM_SIZE as u8),
            s5_sleep_type: S5_SLEEP_TYPE,
            power_button: Some(acpi::PowerButtonInfo {
                port: GED_PORT,
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
