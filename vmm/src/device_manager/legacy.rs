//! The platform devices on fixed ports and addresses: IOAPIC and VT-d registers, COM1, the
//! ACPI PM block, fw_cfg, the i8042 reset line, pvpanic and isa-debug-exit.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::acpi_ged::GED_SIZE;
use devices::acpi_pm::{AcpiPm, ACPI_PM_SIZE};
use devices::debug_exit::DebugExit;
use devices::fw_cfg::{FwCfg, FW_CFG_PORT_SIZE};
use devices::i8042::{I8042Reset, I8042_BASE, I8042_SIZE};
use devices::ioapic::IoapicPin;
use devices::pvpanic::{PvPanic, PVPANIC_PORT};
use devices::serial::{SerialDevice, SERIAL_PORT_SIZE};

use super::{DeviceManager, DeviceManagerError};
use crate::config::{SerialConfig, VmConfig};
use crate::console::ConsoleOut;
use crate::iommu::DrhdRegisters;
use crate::layout::*;

impl DeviceManager {
    /// The IOAPIC and, with an IOMMU, its register set.
    pub(super) fn add_interrupt_controllers(&mut self) -> Result<(), DeviceManagerError> {
        self.mmio
            .insert(IOAPIC_START, IOAPIC_SIZE, self.irq.ioapic.clone())?;
        if let Some(i) = &self.irq.iommu {
            self.resources
                .reserve_mmio("VT-d registers", DRHD_START, DRHD_SIZE)?;
            self.mmio.insert(
                DRHD_START,
                DRHD_SIZE,
                Arc::new(Mutex::new(DrhdRegisters(i.clone()))),
            )?;
        }
        Ok(())
    }

    /// The legacy and ACPI devices on port I/O.
    pub(super) fn add_legacy_devices(&mut self, cfg: &VmConfig) -> Result<(), DeviceManagerError> {
        self.add_serial(&cfg.serial)?;
        let control = self.control.clone();
        self.add_pio(
            "ACPI PM",
            ACPI_PM_PORT,
            ACPI_PM_SIZE,
            Arc::new(Mutex::new(AcpiPm::new(control.clone()))),
        )?;
        self.add_power_button()?;
        self.add_pio(
            "fw_cfg",
            FW_CFG_PORT,
            FW_CFG_PORT_SIZE,
            Arc::new(Mutex::new(FwCfg::new(cfg.memory.size, cfg.cpus as u16))),
        )?;
        self.add_pio(
            "i8042",
            I8042_BASE,
            I8042_SIZE,
            Arc::new(Mutex::new(I8042Reset::new(control.clone()))),
        )?;
        self.add_pio(
            "pvpanic",
            PVPANIC_PORT,
            1,
            Arc::new(Mutex::new(PvPanic::new(control.clone()))),
        )?;
        if let Some(d) = cfg.debug_exit {
            self.add_pio(
                "isa-debug-exit",
                d.iobase,
                d.iosize.into(),
                Arc::new(Mutex::new(DebugExit::new(control))),
            )?;
        }
        Ok(())
    }

    /// The power button's Generic Event Device, its interrupt on an IOAPIC pin.
    fn add_power_button(&mut self) -> Result<(), DeviceManagerError> {
        self.resources.reserve_irqs("power button", GED_IRQ, 1)?;
        let irq = Arc::new(IoapicPin {
            ioapic: self.irq.ioapic.clone(),
            pin: GED_IRQ as usize,
        });
        let (ged, button) = devices::acpi_ged::power_button(irq);
        self.add_pio(
            "power button",
            GED_PORT,
            GED_SIZE,
            Arc::new(Mutex::new(ged)),
        )?;
        self.power_button = Some(button);
        Ok(())
    }

    /// COM1 on IOAPIC pin 4, writing to stdout or a file.
    fn add_serial(&mut self, serial: &SerialConfig) -> Result<(), DeviceManagerError> {
        let out: Box<dyn Write + Send> = match serial {
            SerialConfig::Off => return Ok(()),
            SerialConfig::File(p) => {
                Box::new(File::create(p).map_err(|e| DeviceManagerError::SerialFile(p.clone(), e))?)
            }
            SerialConfig::Stdio => Box::new(std::io::stdout()),
        };
        self.resources.reserve_irqs("COM1", COM1_IRQ, 1)?;
        let console = ConsoleOut::new(out);
        let irq = Arc::new(IoapicPin {
            ioapic: self.irq.ioapic.clone(),
            pin: COM1_IRQ as usize,
        });
        let s = Arc::new(Mutex::new(SerialDevice::new(
            irq,
            Box::new(console.clone()),
        )));
        self.add_pio("COM1", COM1_PORT, SERIAL_PORT_SIZE, s.clone())?;
        self.serial = Some(s);
        self.console = Some(console);
        Ok(())
    }
}
