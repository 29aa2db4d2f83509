//! The control sockets: QMP (`--qmp`) and the human monitor (`--monitor`), speaking QEMU's
//! protocols so its clients (qemu.qmp, qmp-shell, socat, libvirt's QMP layer) work unchanged.
//!
//! - [`protocol`]: QMP framing, greeting, negotiation, replies and events (no I/O);
//! - [`commands`]: the commands over the [`commands::Machine`] interface;
//! - [`hmp`]: the human monitor's commands as text;
//! - [`vtd`]: the live vIOMMU view (`x-query-vtd`, `info iommu`);
//! - [`server`]: the listening sockets and their client threads, which hand commands to the
//!   main thread (which owns the VM) and carry its events to the clients;
//! - [`machine`]: the VM's side of [`commands::Machine`].

pub mod commands;
pub mod hmp;
pub mod machine;
pub mod protocol;
pub mod server;
pub mod vtd;

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::exit::StopReason;

/// Where a control socket listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

/// One `--qmp` or `--monitor` socket (QEMU's chardev socket syntax, server side only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketSpec {
    pub endpoint: Endpoint,
    /// Wait for the first client before the guest starts (QEMU's default without wait=off).
    pub wait: bool,
    /// `telnet:`: input may carry telnet negotiation, which is dropped.
    pub telnet: bool,
}

/// The control sockets a VM has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlConfig {
    pub qmp: Option<SocketSpec>,
    pub monitor: Option<SocketSpec>,
}

/// Parses `unix:PATH[,server][,wait=off|nowait]` or `tcp:HOST:PORT[,...]` /
/// `telnet:HOST:PORT[,...]` (an empty host is 127.0.0.1: loopback by default).
pub fn parse_socket(s: &str) -> Result<SocketSpec, String> {
    let mut parts = s.split(',');
    let addr = parts.next().unwrap_or_default();
    let (scheme, rest) = addr
        .split_once(':')
        .ok_or_else(|| "expected unix:PATH, tcp:HOST:PORT or telnet:HOST:PORT".to_string())?;
    let endpoint = match scheme {
        "unix" if !rest.is_empty() => Endpoint::Unix(PathBuf::from(rest)),
        "unix" => return Err("unix: needs a path".into()),
        "tcp" | "telnet" => {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("expected {scheme}:HOST:PORT"))?;
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("'{port}' is not a port number"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Endpoint::Tcp {
                host: if host.is_empty() {
                    "127.0.0.1".into()
                } else {
                    host.into()
                },
                port,
            }
        }
        other => {
            return Err(format!(
                "unknown socket kind '{other}' (unix, tcp or telnet)"
            ))
        }
    };
    let mut server = false;
    let mut wait = true;
    for p in parts {
        match p {
            "server" | "server=on" => server = true,
            "server=off" => server = false,
            "nowait" | "wait=off" => wait = false,
            "wait" | "wait=on" => wait = true,
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    if !server {
        return Err("only server sockets are supported: add ',server' (and ',wait=off' to start without waiting for a client)".into());
    }
    Ok(SocketSpec {
        endpoint,
        wait,
        telnet: scheme == "telnet",
    })
}

/// QEMU's ShutdownCause names (qapi/run-state.json) for why the VM ends, and whether the
/// guest caused it.
pub fn shutdown_cause(reason: &StopReason) -> (bool, &'static str) {
    match reason {
        StopReason::PowerOff | StopReason::DebugExit(_) => (true, "guest-shutdown"),
        StopReason::Reset | StopReason::TripleFault(_) => (true, "guest-reset"),
        StopReason::GuestPanic => (true, "guest-panic"),
        StopReason::Signal(_) => (false, "host-signal"),
        StopReason::Error(_) => (false, "host-error"),
        StopReason::Quit => (false, "host-qmp-quit"),
        StopReason::HostReset => (false, "host-qmp-system-reset"),
    }
}

/// The events the end of the VM sends: RESET first when it ends because of a reset (minivmm
/// resets by ending, like QEMU with -no-reboot), then SHUTDOWN.
pub fn final_events(reason: &StopReason) -> Vec<(&'static str, Value)> {
    let (guest, cause) = shutdown_cause(reason);
    let data = json!({ "guest": guest, "reason": cause });
    let mut out = Vec::new();
    if matches!(reason, StopReason::Reset | StopReason::TripleFault(_)) {
        out.push(("RESET", data.clone()));
    }
    out.push(("SHUTDOWN", data));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_unix_with_server_and_nowait() {
        let s = parse_socket("unix:/tmp/q.sock,server,wait=off").unwrap();
        assert_eq!(s.endpoint, Endpoint::Unix("/tmp/q.sock".into()));
        assert!(!s.wait && !s.telnet);
        assert!(parse_socket("unix:/tmp/q.sock,server").unwrap().wait);
    }

    #[test]
    fn socket_tcp_and_telnet_default_to_loopback() {
        let s = parse_socket("telnet::55555,server,nowait").unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 55555
            }
        );
        assert!(s.telnet && !s.wait);
        let s = parse_socket("tcp:0.0.0.0:4444,server=on,wait=off").unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Tcp {
                host: "0.0.0.0".into(),
                port: 4444
            }
        );
    }

    #[test]
    fn socket_errors_are_clear() {
        for (spec, needle) in [
            ("unix:/x", "only server sockets"),
            ("udp:1:2,server", "unknown socket kind"),
            ("tcp:localhost:http,server", "not a port number"),
            ("tcp:4444,server", "expected tcp:HOST:PORT"),
            ("unix:/x,server,frob", "unknown option 'frob'"),
            ("/x", "expected unix:PATH"),
        ] {
            let e = parse_socket(spec).unwrap_err();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn final_events_reset_then_shutdown_with_cause() {
        let e = final_events(&StopReason::HostReset);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "SHUTDOWN");
        assert_eq!(
            e[0].1,
            json!({"guest": false, "reason": "host-qmp-system-reset"})
        );
        let e = final_events(&StopReason::Reset);
        assert_eq!(
            e.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["RESET", "SHUTDOWN"]
        );
        assert_eq!(e[1].1["reason"], "guest-reset");
        assert_eq!(
            final_events(&StopReason::PowerOff)[0].1,
            json!({"guest": true, "reason": "guest-shutdown"})
        );
        assert_eq!(
            final_events(&StopReason::Quit)[0].1["reason"],
            "host-qmp-quit"
        );
    }
}
