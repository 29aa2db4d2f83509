//! The platform devices on fixed ports and addresses: IOAPIC and VT-d registers, COM1, the
//! ACPI PM block, fw_cfg, the i8042 reset line, pvpanic and isa-debug-exit; with firmware boot
//! also the Q35 look-alike's ICH9 LPC bridge (00:1f.0) with its PM block, the 0xCF9 reset
//! register, the RTC/CMOS, and fw_cfg's DMA interface and `etc/e820`; isa-debugcon when asked.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::acpi_ged::GED_SIZE;
use devices::acpi_pm::{AcpiPm, ACPI_PM_SIZE};
use devices::bus::lock;
use devices::cmos::{Cmos, CMOS_PORT, CMOS_PORT_SIZE};
use devices::debug_exit::DebugExit;
use devices::debugcon::DebugCon;
use devices::fw_cfg::{FwCfg, FW_CFG_PORT_SIZE, FW_CFG_PORT_SIZE_DMA};
use devices::i8042::{I8042Reset, I8042_BASE, I8042_SIZE};
use devices::ioapic::IoapicPin;
use devices::lpc::{Ich9Lpc, ResetControl, LPC_SLOT};
use devices::pvpanic::{PvPanic, PVPANIC_PORT};
use devices::serial::{SerialDevice, SERIAL_PORT_SIZE};

use super::{DeviceManager, DeviceManagerError};
use crate::config::{DebugconConfig, SerialConfig, VmConfig};
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
        let firmware = cfg.firmware();
        self.add_pio(
            "ACPI PM",
            self.map.acpi_pm_port,
            ACPI_PM_SIZE,
            Arc::new(Mutex::new(AcpiPm::new(control.clone()))),
        )?;
        self.add_power_button()?;
        let (fw_cfg, fw_cfg_ports) = if firmware {
            let mut f = FwCfg::with_dma(cfg.memory.size, cfg.cpus as u16, self.mem.clone());
            f.add_file("etc/e820", e820(&cfg.memory.ram_ranges()))?;
            (f, FW_CFG_PORT_SIZE_DMA)
        } else {
            (
                FwCfg::new(cfg.memory.size, cfg.cpus as u16),
                FW_CFG_PORT_SIZE,
            )
        };
        let fw_cfg = Arc::new(Mutex::new(fw_cfg));
        self.add_pio("fw_cfg", FW_CFG_PORT, fw_cfg_ports, fw_cfg.clone())?;
        self.fw_cfg = Some(fw_cfg);
        let i8042 = if firmware {
            I8042Reset::absent(control.clone())
        } else {
            I8042Reset::new(control.clone())
        };
        self.add_pio("i8042", I8042_BASE, I8042_SIZE, Arc::new(Mutex::new(i8042)))?;
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
                Arc::new(Mutex::new(DebugExit::new(control.clone()))),
            )?;
        }
        if let Some(d) = &cfg.debugcon {
            self.add_debugcon(d)?;
        }
        if firmware {
            self.add_chipset(cfg)?;
        }
        Ok(())
    }

    /// The Q35 look-alike's chipset devices (firmware boot): the ICH9 LPC bridge at 00:1f.0
    /// (its PM block decodes where the guest programs PMBASE), RST_CNT and the RTC/CMOS.
    fn add_chipset(&mut self, cfg: &VmConfig) -> Result<(), DeviceManagerError> {
        // The PM block takes its ports when the guest enables it: claimed here at OVMF's
        // PMBASE so that no other device is placed there.
        self.resources
            .reserve_pio("ICH9 PM block", FW_PMBASE, devices::lpc::pmio::PMIO_SIZE)?;
        let pm = devices::lpc::shared_pm(self.control.clone());
        let lpc = Arc::new(Mutex::new(Ich9Lpc::new(self.pio.clone(), pm)));
        lock(&self.pci).add_device(lpc.clone(), Some(LPC_SLOT))?;
        self.lpc = Some(lpc);
        // RST_CNT at 0xCF9 is served by the 0xCF8 configuration ports (finish_pci).
        self.rst_cnt = Some(Arc::new(Mutex::new(ResetControl::new(
            self.control.clone(),
        ))));
        let ram = cfg.memory.ram_ranges();
        let low = ram.first().map_or(0, |r| r.1);
        let high = ram.get(1).map_or(0, |r| r.1);
        self.add_pio(
            "RTC/CMOS",
            CMOS_PORT,
            CMOS_PORT_SIZE,
            Arc::new(Mutex::new(Cmos::new(low, high, cfg.cpus as u8))),
        )?;
        Ok(())
    }

    /// isa-debugcon on its port, writing to stdout or a file.
    fn add_debugcon(&mut self, d: &DebugconConfig) -> Result<(), DeviceManagerError> {
        let out: Box<dyn Write + Send> = match &d.file {
            Some(p) => Box::new(
                File::create(p).map_err(|e| DeviceManagerError::DebugconFile(p.clone(), e))?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let out = ConsoleOut::new(out);
        self.add_pio(
            "isa-debugcon",
            d.iobase,
            1,
            Arc::new(Mutex::new(DebugCon::new(Box::new(out.clone())))),
        )?;
        self.debugcon = Some(out);
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
            self.map.ged_port,
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

/// QEMU's `etc/e820` (fw_cfg.rst; edk2 MemDetect.c reads the RAM entries): packed
/// little-endian {u64 base, u64 length, u32 type}, type 1 (RAM) for each RAM range.
pub(super) fn e820(ram: &[(u64, u64)]) -> Vec<u8> {
    const E820_RAM: u32 = 1;
    let mut out = Vec::new();
    for &(base, len) in ram {
        out.extend_from_slice(&base.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&E820_RAM.to_le_bytes());
    }
    out
}

/// QEMU's `bootorder` (hw/core/sysbus-fw.c and fw_path_provider; read by edk2's
/// QemuBootOrderLib): one OpenFirmware device path per line, NUL-terminated. A virtio-blk
/// function at 00:NN.0 is `/pci@i0cf8/scsi@NN/disk@0,0` (NN in hex), so OVMF connects and
/// boots those disks first instead of connecting every device.
pub(super) fn bootorder(disk_slots: &[u8]) -> Vec<u8> {
    let mut s = disk_slots
        .iter()
        .map(|slot| format!("/pci@i0cf8/scsi@{slot:x}/disk@0,0"))
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes();
    s.push(0);
    s
}
