//! The VM's side of the monitor's [`Machine`]: built by the main thread for each batch of
//! requests from what it owns (the device manager, the vCPU threads, the stop channel).

use std::thread::JoinHandle;
use std::time::Duration;

use devices::quiesce::{vm_gate, PauseError};
use serde_json::json;
use vmm_sys_util::signal::{Killable, SIGRTMIN};

use super::commands::{CpuInfo, Machine, MapEntry, PciFunction, RunState};
use super::server::Events;
use super::vtd;
use crate::control::VmControl;
use crate::device_manager::DeviceManager;
use crate::exit::StopReason;
use crate::layout::*;

/// How long `stop` waits for every vCPU and device thread to reach a pause point.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the main thread keeps between requests.
#[derive(Debug, Default)]
pub struct MachineState {
    pub paused: bool,
    /// The vCPUs' host thread ids, by index.
    pub cpus: Vec<CpuInfo>,
    /// Guest RAM ranges (start, size).
    pub ram: Vec<(u64, u64)>,
}

pub struct VmMachine<'a> {
    pub state: &'a mut MachineState,
    pub devices: &'a DeviceManager,
    pub vcpus: &'a [JoinHandle<()>],
    pub control: &'a VmControl,
    pub events: &'a Events,
}

impl Machine for VmMachine<'_> {
    fn run_state(&self) -> RunState {
        if self.state.paused {
            RunState::Paused
        } else {
            RunState::Running
        }
    }

    fn pause(&mut self) -> Result<(), String> {
        if self.state.paused {
            return Ok(());
        }
        let vcpus = self.vcpus;
        let kick = move || {
            for t in vcpus {
                let _ = t.kill(SIGRTMIN());
            }
        };
        match vm_gate().pause(PAUSE_TIMEOUT, &kick) {
            Ok(()) => {
                self.state.paused = true;
                self.events.emit("STOP", None);
                Ok(())
            }
            Err(e @ PauseError::Timeout(..)) => Err(e.to_string()),
            Err(e @ PauseError::Released) => Err(e.to_string()),
        }
    }

    fn resume(&mut self) -> Result<(), String> {
        if !self.state.paused {
            return Ok(());
        }
        vm_gate().resume();
        self.state.paused = false;
        self.events.emit("RESUME", None);
        Ok(())
    }

    fn powerdown(&mut self) -> Result<(), String> {
        let b = self
            .devices
            .power_button()
            .ok_or("This machine has no ACPI power button")?;
        b.press();
        self.events.emit("POWERDOWN", None);
        Ok(())
    }

    fn reset(&mut self) {
        self.events.emit(
            "RESET",
            Some(json!({ "guest": false, "reason": "host-qmp-system-reset" })),
        );
        self.control.stop(StopReason::HostReset);
    }

    fn quit(&mut self) {
        self.control.stop(StopReason::Quit);
    }

    fn cpus(&self) -> Vec<CpuInfo> {
        self.state.cpus.clone()
    }

    fn pci(&self) -> Vec<PciFunction> {
        self.devices
            .pci_functions()
            .into_iter()
            .map(|(device, function, config)| PciFunction {
                device,
                function,
                config,
            })
            .collect()
    }

    fn address_map(&self) -> (Vec<MapEntry>, Vec<MapEntry>) {
        let mut mem: Vec<MapEntry> = self
            .state
            .ram
            .iter()
            .map(|(start, size)| MapEntry {
                start: *start,
                size: *size,
                what: "ram".into(),
            })
            .collect();
        mem.extend(
            self.devices
                .mmio()
                .ranges()
                .into_iter()
                .map(|(start, size)| MapEntry {
                    start,
                    size,
                    what: mmio_name(start).into(),
                }),
        );
        mem.sort_by_key(|e| e.start);
        let io = self
            .devices
            .pio()
            .ranges()
            .into_iter()
            .map(|(start, size)| MapEntry {
                start,
                size,
                what: pio_name(start).into(),
            })
            .collect();
        (mem, io)
    }

    fn vtd(&self) -> Option<vtd::VtdView> {
        vtd::view(&self.devices.state())
    }

    fn state_text(&self) -> String {
        crate::state::render(&self.devices.state())
    }
}

/// What sits at MMIO address `start` (by the address map; BARs by the PCI windows).
fn mmio_name(start: u64) -> &'static str {
    match start {
        IOAPIC_START => "ioapic",
        DRHD_START => "vt-d registers",
        s if (ECAM_START..ECAM_START + ECAM_SIZE).contains(&s) => "pci ecam",
        s if (MMIO32_START..MMIO32_START + MMIO32_SIZE).contains(&s) => "pci bar (32-bit window)",
        s if (MMIO64_START..MMIO64_START + MMIO64_SIZE).contains(&s) => "pci bar (64-bit window)",
        _ => "device",
    }
}

/// What sits at port `start`.
fn pio_name(start: u64) -> &'static str {
    let p = start as u16;
    match p {
        COM1_PORT => "serial (COM1)",
        PCI_CONFIG_PORT => "pci config (CF8/CFC)",
        FW_CFG_PORT => "fw_cfg",
        ACPI_PM_PORT => "acpi pm (sleep, reset)",
        GED_PORT => "acpi ged (power button)",
        DEBUG_EXIT_PORT => "isa-debug-exit",
        devices::i8042::I8042_BASE => "i8042 (reset line)",
        devices::pvpanic::PVPANIC_PORT => "pvpanic",
        p if (PCI_IO_START..=PCI_IO_START + (PCI_IO_SIZE - 1)).contains(&p) => "pci i/o bar",
        _ => "device",
    }
}
