//! The QMP commands minivmm has, run against a [`Machine`]: the narrow interface the VM gives
//! its monitor (run state, pause and resume, the power button, reset, quit, and read-only
//! views). Results have QEMU's field names (qapi/*.json) where QEMU has the command.

use serde_json::{json, Map, Value};

use super::protocol::CommandError;
use super::vtd;

/// QEMU's run states (qapi/run-state.json, RunState) minivmm has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
        }
    }
}

/// A vCPU: its index and the host thread running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    pub index: u32,
    pub thread_id: i32,
}

/// A PCI function on bus 0 and the first 64 bytes of its configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciFunction {
    pub device: u8,
    pub function: u8,
    pub config: [u32; 16],
}

/// One entry of the address map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub size: u64,
    pub what: String,
}

/// What the monitor drives. Implemented by the VM (on its main thread) and by test doubles.
pub trait Machine {
    fn run_state(&self) -> RunState;
    /// Pauses every vCPU and device thread (the STOP event is the implementation's).
    fn pause(&mut self) -> Result<(), String>;
    fn resume(&mut self) -> Result<(), String>;
    /// Presses the ACPI power button.
    fn powerdown(&mut self) -> Result<(), String>;
    /// Resets the machine (in minivmm today: ends the VM, as a guest reboot does).
    fn reset(&mut self);
    fn quit(&mut self);
    fn cpus(&self) -> Vec<CpuInfo>;
    fn pci(&self) -> Vec<PciFunction>;
    /// The memory and port address maps.
    fn address_map(&self) -> (Vec<MapEntry>, Vec<MapEntry>);
    /// The vIOMMU view (x-query-vtd), absent without --iommu.
    fn vtd(&self) -> Option<vtd::VtdView>;
    /// The VM's state dump, as SIGUSR1 prints it.
    fn state_text(&self) -> String;
}

/// The commands, for query-commands and the dispatcher.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-status",
    "query-name",
    "query-cpus-fast",
    "query-pci",
    "query-commands",
    "stop",
    "cont",
    "system_powerdown",
    "system_reset",
    "quit",
    "human-monitor-command",
    "x-query-vtd",
];

/// The major, minor and micro version minivmm reports (its own, from Cargo).
pub fn version() -> (u64, u64, u64) {
    let n = |s: &str| s.parse().unwrap_or(0);
    (
        n(env!("CARGO_PKG_VERSION_MAJOR")),
        n(env!("CARGO_PKG_VERSION_MINOR")),
        n(env!("CARGO_PKG_VERSION_PATCH")),
    )
}

fn no_args(args: &Map<String, Value>) -> Result<(), CommandError> {
    match args.keys().next() {
        Some(k) => Err(CommandError::generic(format!(
            "Parameter '{k}' is unexpected"
        ))),
        None => Ok(()),
    }
}

/// Runs command `name` with `args`.
pub fn execute(
    m: &mut dyn Machine,
    name: &str,
    args: &Map<String, Value>,
) -> Result<Value, CommandError> {
    let fail = |d: String| CommandError::generic(d);
    match name {
        "human-monitor-command" => {
            let mut line = None;
            for (k, v) in args {
                match (k.as_str(), v) {
                    ("command-line", Value::String(s)) => line = Some(s.clone()),
                    ("command-line", _) => {
                        return Err(CommandError::generic(
                            "Parameter 'command-line' expects a string",
                        ))
                    }
                    ("cpu-index", Value::Number(_)) => {}
                    ("cpu-index", _) => {
                        return Err(CommandError::generic(
                            "Parameter 'cpu-index' expects an integer",
                        ))
                    }
                    (k, _) => return Err(fail(format!("Parameter '{k}' is unexpected"))),
                }
            }
            let line =
                line.ok_or_else(|| CommandError::generic("Parameter 'command-line' is missing"))?;
            return Ok(Value::String(super::hmp::run(m, &line)));
        }
        n if COMMANDS.contains(&n) => no_args(args)?,
        n => return Err(CommandError::not_found(n)),
    }
    Ok(match name {
        "query-version" => {
            let (major, minor, micro) = version();
            json!({
                "qemu": { "major": major, "minor": minor, "micro": micro },
                "package": concat!("minivmm ", env!("CARGO_PKG_VERSION")),
            })
        }
        "query-status" => {
            let s = m.run_state();
            json!({ "running": s == RunState::Running, "status": s.name() })
        }
        // No name is set (QEMU answers {} without -name).
        "query-name" => json!({}),
        "query-cpus-fast" => Value::Array(
            m.cpus()
                .iter()
                .map(|c| {
                    json!({
                        "cpu-index": c.index,
                        "qom-path": format!("/machine/unattached/device[{}]", c.index),
                        "thread-id": c.thread_id,
                        "props": { "core-id": c.index, "thread-id": 0, "socket-id": 0 },
                        "target": "x86_64",
                    })
                })
                .collect(),
        ),
        "query-pci" => {
            json!([{ "bus": 0, "devices": m.pci().iter().map(pci_json).collect::<Vec<_>>() }])
        }
        "query-commands" => Value::Array(COMMANDS.iter().map(|c| json!({ "name": c })).collect()),
        "stop" => {
            m.pause().map_err(fail)?;
            json!({})
        }
        "cont" => {
            m.resume().map_err(fail)?;
            json!({})
        }
        "system_powerdown" => {
            m.powerdown().map_err(fail)?;
            json!({})
        }
        "system_reset" => {
            m.reset();
            json!({})
        }
        "quit" => {
            m.quit();
            json!({})
        }
        "x-query-vtd" => match m.vtd() {
            Some(v) => serde_json::to_value(v).map_err(|e| fail(e.to_string()))?,
            None => {
                return Err(CommandError::generic(
                    "This machine has no IOMMU (start minivmm with --iommu)",
                ))
            }
        },
        // qmp_capabilities is the session's; reaching here means it was already negotiated.
        _ => return Err(CommandError::not_found(name)),
    })
}

/// A function as QEMU's PciDeviceInfo (qapi/pci.json). BAR sizes are not probed (that would
/// write the guest's BARs), so `regions` lists each decoded BAR's address and kind only.
fn pci_json(f: &PciFunction) -> Value {
    let c = &f.config;
    let class = (c[2] >> 16) as u16;
    let mut regions = Vec::new();
    // Header type 0: six BARs at dwords 4..10 (PCI local bus 3.0 section 6.2.5.1).
    if (c[3] >> 16) & 0x7f == 0 {
        let mut i = 4;
        while i < 10 {
            let bar = c[i];
            let io = bar & 1 == 1;
            let is64 = !io && (bar >> 1) & 3 == 2;
            let address = if io {
                u64::from(bar & !3)
            } else if is64 && i + 1 < 10 {
                (u64::from(c[i + 1]) << 32) | u64::from(bar & !0xf)
            } else {
                u64::from(bar & !0xf)
            };
            if address != 0 {
                regions.push(json!({
                    "bar": i - 4,
                    "type": if io { "io" } else { "memory" },
                    "address": address,
                    "prefetch": !io && bar & 8 != 0,
                    "mem_type_64": is64,
                }));
            }
            i += if is64 { 2 } else { 1 };
        }
    }
    json!({
        "bus": 0,
        "slot": f.device,
        "function": f.function,
        "class_info": { "class": class },
        "id": {
            "vendor": c[0] & 0xffff,
            "device": c[0] >> 16,
            "subsystem-vendor": c[11] & 0xffff,
            "subsystem": c[11] >> 16,
        },
        "irq_pin": (c[15] >> 8) & 0xff,
        "qdev_id": "",
        "regions": regions,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A machine that records what it was asked.
    #[derive(Default)]
    pub struct FakeMachine {
        pub paused: bool,
        pub log: Vec<&'static str>,
        pub pause_fails: bool,
    }

    impl Machine for FakeMachine {
        fn run_state(&self) -> RunState {
            if self.paused {
                RunState::Paused
            } else {
                RunState::Running
            }
        }
        fn pause(&mut self) -> Result<(), String> {
            if self.pause_fails {
                return Err("1 threads did not reach a pause point".into());
            }
            self.paused = true;
            self.log.push("pause");
            Ok(())
        }
        fn resume(&mut self) -> Result<(), String> {
            self.paused = false;
            self.log.push("resume");
            Ok(())
        }
        fn powerdown(&mut self) -> Result<(), String> {
            self.log.push("powerdown");
            Ok(())
        }
        fn reset(&mut self) {
            self.log.push("reset");
        }
        fn quit(&mut self) {
            self.log.push("quit");
        }
        fn cpus(&self) -> Vec<CpuInfo> {
            vec![
                CpuInfo {
                    index: 0,
                    thread_id: 100,
                },
                CpuInfo {
                    index: 1,
                    thread_id: 101,
                },
            ]
        }
        fn pci(&self) -> Vec<PciFunction> {
            let mut config = [0u32; 16];
            config[0] = 0x11e8_1234;
            config[2] = 0x00ff_0010;
            config[4] = 0xc000_0000;
            config[15] = 0x0100;
            vec![PciFunction {
                device: 1,
                function: 0,
                config,
            }]
        }
        fn address_map(&self) -> (Vec<MapEntry>, Vec<MapEntry>) {
            (
                vec![MapEntry {
                    start: 0,
                    size: 0x1000,
                    what: "ram".into(),
                }],
                vec![MapEntry {
                    start: 0x3f8,
                    size: 8,
                    what: "COM1".into(),
                }],
            )
        }
        fn vtd(&self) -> Option<vtd::VtdView> {
            None
        }
        fn state_text(&self) -> String {
            "IOAPIC id 0\n".into()
        }
    }

    fn run(m: &mut FakeMachine, name: &str, args: Value) -> Result<Value, CommandError> {
        execute(m, name, args.as_object().unwrap())
    }

    #[test]
    fn commands_unknown_is_command_not_found() {
        let e = run(&mut FakeMachine::default(), "frobnicate", json!({})).unwrap_err();
        assert_eq!(e, CommandError::not_found("frobnicate"));
    }

    #[test]
    fn commands_unexpected_argument_is_generic_error() {
        let mut m = FakeMachine::default();
        let e = run(&mut m, "stop", json!({"now": true})).unwrap_err();
        assert_eq!(e.desc, "Parameter 'now' is unexpected");
        assert!(m.log.is_empty(), "a refused command did nothing");
    }

    #[test]
    fn commands_stop_cont_change_query_status() {
        let mut m = FakeMachine::default();
        assert_eq!(
            run(&mut m, "query-status", json!({})).unwrap(),
            json!({"running": true, "status": "running"})
        );
        run(&mut m, "stop", json!({})).unwrap();
        assert_eq!(
            run(&mut m, "query-status", json!({})).unwrap(),
            json!({"running": false, "status": "paused"})
        );
        run(&mut m, "cont", json!({})).unwrap();
        assert_eq!(m.log, vec!["pause", "resume"]);
    }

    #[test]
    fn commands_failed_pause_is_generic_error_with_reason() {
        let mut m = FakeMachine {
            pause_fails: true,
            ..Default::default()
        };
        let e = run(&mut m, "stop", json!({})).unwrap_err();
        assert!(e.desc.contains("pause point"));
    }

    #[test]
    fn commands_query_cpus_fast_has_qemu_fields() {
        let v = run(&mut FakeMachine::default(), "query-cpus-fast", json!({})).unwrap();
        assert_eq!(v[1]["cpu-index"], 1);
        assert_eq!(v[1]["thread-id"], 101);
        assert_eq!(v[1]["target"], "x86_64");
    }

    #[test]
    fn commands_query_pci_decodes_ids_class_and_bar() {
        let v = run(&mut FakeMachine::default(), "query-pci", json!({})).unwrap();
        let d = &v[0]["devices"][0];
        assert_eq!(d["slot"], 1);
        assert_eq!(d["id"]["vendor"], 0x1234);
        assert_eq!(d["id"]["device"], 0x11e8);
        assert_eq!(d["class_info"]["class"], 0xff);
        assert_eq!(d["irq_pin"], 1);
        assert_eq!(d["regions"][0]["address"], 0xc000_0000u64);
        assert_eq!(d["regions"][0]["type"], "memory");
    }

    #[test]
    fn commands_query_commands_lists_every_command() {
        let v = run(&mut FakeMachine::default(), "query-commands", json!({})).unwrap();
        assert_eq!(v.as_array().unwrap().len(), COMMANDS.len());
        assert!(v
            .as_array()
            .unwrap()
            .contains(&json!({"name": "x-query-vtd"})));
    }

    #[test]
    fn commands_x_query_vtd_without_iommu_is_generic_error() {
        let e = run(&mut FakeMachine::default(), "x-query-vtd", json!({})).unwrap_err();
        assert!(e.desc.contains("--iommu"));
    }

    #[test]
    fn commands_human_monitor_command_runs_hmp() {
        let mut m = FakeMachine::default();
        let v = run(
            &mut m,
            "human-monitor-command",
            json!({"command-line": "info status"}),
        )
        .unwrap();
        assert_eq!(v, json!("VM status: running\r\n"));
        let e = run(&mut m, "human-monitor-command", json!({})).unwrap_err();
        assert!(e.desc.contains("command-line"));
    }
}
