//! The human monitor (HMP): a few of QEMU's monitor commands as text, over the same
//! [`Machine`] as QMP. Served on `--monitor` and through QMP's `human-monitor-command`.
//! Output lines end in CRLF, as QEMU's monitor writes them.

use std::fmt::Write;

use super::commands::{Machine, RunState};
use super::vtd;

/// The prompt after the banner and after each command.
pub const PROMPT: &str = "(qemu) ";

/// The banner a monitor client sees first.
pub fn banner() -> String {
    format!(
        "minivmm {} monitor - type 'help' for more information\r\n",
        env!("CARGO_PKG_VERSION")
    )
}

const HELP: &[(&str, &str)] = &[
    ("cont", "resume emulation"),
    ("help", "show this help"),
    (
        "info iommu",
        "show the vIOMMU: devices, domains, mappings, faults",
    ),
    ("info mtree", "show the memory and I/O address maps"),
    ("info pci", "show PCI info"),
    ("info status", "show the current VM status (running|paused)"),
    ("quit", "quit the emulator"),
    ("stop", "stop emulation"),
    ("system_powerdown", "send system power down event"),
    (
        "system_reset",
        "reset the system (minivmm: ends the VM, as a guest reboot does)",
    ),
];

/// CRLF line ends for text built with '\n'.
fn crlf(s: &str) -> String {
    s.lines().map(|l| format!("{l}\r\n")).collect()
}

/// Runs one command line and returns its output.
pub fn run(m: &mut dyn Machine, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let done = |r: Result<(), String>| match r {
        Ok(()) => String::new(),
        Err(e) => format!("Error: {e}\r\n"),
    };
    match words.as_slice() {
        [] => String::new(),
        ["help" | "?"] => HELP
            .iter()
            .map(|(c, h)| format!("{c} -- {h}\r\n"))
            .collect(),
        ["info", "status"] => format!(
            "VM status: {}\r\n",
            match m.run_state() {
                RunState::Running => "running",
                RunState::Paused => "paused",
            }
        ),
        ["info", "pci"] => info_pci(m),
        ["info", "iommu"] => match m.vtd() {
            Some(v) => crlf(&vtd::render(&v)),
            None => "This machine has no IOMMU (start minivmm with --iommu)\r\n".into(),
        },
        ["info", "mtree"] => info_mtree(m),
        ["info", "state"] => crlf(&m.state_text()),
        ["info"] | ["info", ..] => {
            "info: expected one of status, pci, iommu, mtree, state\r\n".into()
        }
        ["stop"] => done(m.pause()),
        ["cont" | "c"] => done(m.resume()),
        ["system_powerdown"] => done(m.powerdown()),
        ["system_reset"] => {
            m.reset();
            String::new()
        }
        ["quit" | "q"] => {
            m.quit();
            String::new()
        }
        [cmd, ..] => format!("unknown command: '{}'\r\n", cmd.escape_debug()),
    }
}

fn info_pci(m: &dyn Machine) -> String {
    let mut s = String::new();
    for f in m.pci() {
        let c = &f.config;
        let _ = write!(
            s,
            "  Bus  0, device {:3}, function {}:\r\n    Class {:04x}: PCI device {:04x}:{:04x}\r\n",
            f.device,
            f.function,
            c[2] >> 16,
            c[0] & 0xffff,
            c[0] >> 16
        );
        let pin = (c[15] >> 8) & 0xff;
        if pin != 0 {
            let _ = write!(
                s,
                "      IRQ pin {}\r\n",
                (b'A' + (pin as u8 - 1).min(3)) as char
            );
        }
        for (i, bar) in c[4..10].iter().enumerate() {
            if *bar & !0xf == 0 {
                continue;
            }
            if bar & 1 == 1 {
                let _ = write!(s, "      BAR{i}: I/O at {:#06x}.\r\n", bar & !3);
            } else {
                let _ = write!(s, "      BAR{i}: memory at {:#010x}.\r\n", bar & !0xf);
            }
        }
    }
    s
}

fn info_mtree(m: &dyn Machine) -> String {
    let (mem, io) = m.address_map();
    let mut s = String::from("address-space: memory\r\n");
    for e in &mem {
        let _ = write!(
            s,
            "  {:016x}-{:016x}: {}\r\n",
            e.start,
            e.start.saturating_add(e.size).saturating_sub(1),
            e.what
        );
    }
    s += "address-space: I/O\r\n";
    for e in &io {
        let _ = write!(
            s,
            "  {:04x}-{:04x}: {}\r\n",
            e.start,
            e.start.saturating_add(e.size).saturating_sub(1),
            e.what
        );
    }
    s
}

/// Strips telnet commands (RFC 854: IAC and the option negotiations that follow it) from a
/// client's input: `--monitor telnet:` clients such as telnet send them.
#[derive(Debug, Default)]
pub struct TelnetFilter {
    /// Bytes still to drop from the current command.
    skip: u8,
    in_sub: bool,
    iac: bool,
}

const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;

impl TelnetFilter {
    pub fn filter(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            if self.iac {
                self.iac = false;
                match b {
                    IAC if !self.in_sub => out.push(IAC),
                    SB => self.in_sub = true,
                    SE => self.in_sub = false,
                    // WILL, WONT, DO, DONT: one option byte follows.
                    251..=254 => self.skip = 1,
                    _ => {}
                }
                continue;
            }
            if b == IAC {
                self.iac = true;
            } else if !self.in_sub {
                out.push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::commands::tests::FakeMachine;

    #[test]
    fn hmp_info_status_follows_stop_and_cont() {
        let mut m = FakeMachine::default();
        assert_eq!(run(&mut m, "info status"), "VM status: running\r\n");
        assert_eq!(run(&mut m, "stop"), "");
        assert_eq!(run(&mut m, "  info   status "), "VM status: paused\r\n");
        run(&mut m, "cont");
        assert_eq!(m.log, vec!["pause", "resume"]);
    }

    #[test]
    fn hmp_info_pci_lists_ids_and_bars() {
        let out = run(&mut FakeMachine::default(), "info pci");
        assert!(out.contains("device   1, function 0"), "{out}");
        assert!(out.contains("PCI device 1234:11e8"), "{out}");
        assert!(out.contains("BAR0: memory at 0xc0000000."), "{out}");
        assert!(out.contains("IRQ pin A"), "{out}");
    }

    #[test]
    fn hmp_unknown_command_and_bad_info_say_so() {
        let mut m = FakeMachine::default();
        assert_eq!(run(&mut m, "frob 1"), "unknown command: 'frob'\r\n");
        assert!(run(&mut m, "info nothing").starts_with("info: expected"));
        assert!(m.log.is_empty());
    }

    #[test]
    fn hmp_power_reset_quit_reach_the_machine() {
        let mut m = FakeMachine::default();
        run(&mut m, "system_powerdown");
        run(&mut m, "system_reset");
        run(&mut m, "quit");
        assert_eq!(m.log, vec!["powerdown", "reset", "quit"]);
    }

    #[test]
    fn hmp_help_lists_every_command_and_mtree_both_spaces() {
        let mut m = FakeMachine::default();
        let h = run(&mut m, "help");
        for c in ["info iommu", "info mtree", "system_powerdown", "quit"] {
            assert!(h.contains(c), "{h}");
        }
        let t = run(&mut m, "info mtree");
        assert!(t.contains("03f8-03ff: COM1"), "{t}");
        assert!(t.contains("0000000000000000-0000000000000fff: ram"), "{t}");
    }

    #[test]
    fn telnet_filter_drops_negotiation_and_keeps_text() {
        let mut f = TelnetFilter::default();
        let mut input = vec![IAC, 251, 1, b'i', IAC, SB, 24, 0, b'x', IAC, SE];
        input.extend_from_slice(b"nfo\r\n");
        assert_eq!(f.filter(&input), b"info\r\n");
        // A command split across reads.
        assert_eq!(f.filter(&[IAC]), b"");
        assert_eq!(f.filter(&[253, 3, b'q']), b"q");
    }
}
