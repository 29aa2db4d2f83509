//! `--net user`: minivmm starts passt (Debian package `passt`) as its user-mode network and
//! hands the virtio-net device one end of a socketpair whose other end passt gets as `-F FD`.
//!
//! Why `-F` rather than `-s PATH` in a private directory: no path exists that another user
//! could reach or that could go stale, and who binds `-s` depends on passt's version (Debian
//! 12's, started as root, drops to `nobody` first; 2025's binds as root without capabilities),
//! so no one private directory suits both. `-F` implies passt's
//! one-off mode: when the VM stops and the socket closes, or minivmm dies and the kernel
//! closes it, passt exits. `PR_SET_PDEATHSIG` is set in the child as well (it holds for an
//! unprivileged user; passt's own drop to `nobody` as root clears it, the socket rule stays).
//!
//! passt keeps running when it cannot bind a forwarded host port (it logs and goes on), so
//! the ports are probed first: a taken port is an error naming it. passt's messages go to an
//! anonymous in-memory file (memfd) that is read when passt exits during start.

use std::fs::File;
use std::io::{Read, Seek};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A forwarded protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// `hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-:GUESTPORT` (QEMU's syntax; passt has one guest,
/// so no guest address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFwd {
    pub proto: Proto,
    pub host_addr: Option<IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
}

impl HostFwd {
    /// Parses one `hostfwd=` value; the error says what is expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        const FORM: &str =
            "expected [tcp|udp]:[HOSTADDR]:HOSTPORT-:GUESTPORT such as tcp::10022-:22";
        let (host, guest) = s.split_once('-').ok_or(FORM)?;
        let mut parts = host.splitn(3, ':');
        let (proto, addr, hport) = match (parts.next(), parts.next(), parts.next()) {
            (Some(p), Some(a), Some(hp)) => (p, a, hp),
            _ => return Err(FORM.into()),
        };
        let proto = match proto {
            "" | "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(FORM.into()),
        };
        let host_addr = match addr {
            "" => None,
            a => Some(a.parse::<IpAddr>().map_err(|_| FORM)?),
        };
        let (gaddr, gport) = guest.rsplit_once(':').ok_or(FORM)?;
        if !gaddr.is_empty() {
            return Err("a guest address is not supported: passt gives the one guest its address by DHCP (write -:GUESTPORT)".into());
        }
        let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or(FORM);
        Ok(HostFwd {
            proto,
            host_addr,
            host_port: port(hport)?,
            guest_port: port(gport)?,
        })
    }

    /// The forward in passt's `-t`/`-u` syntax: `[ADDR/]HOSTPORT:GUESTPORT`.
    pub fn passt_spec(&self) -> String {
        match self.host_addr {
            Some(a) => format!("{a}/{}:{}", self.host_port, self.guest_port),
            None => format!("{}:{}", self.host_port, self.guest_port),
        }
    }
}

/// Why passt could not be started. Messages name what to do.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error("passt is not installed (not found on PATH): install it: apt-get install passt (or give passt=PATH)")]
    NotInstalled,
    #[error("host {proto} port {port} is already in use")]
    PortInUse { proto: &'static str, port: u16 },
    #[error("cannot bind host {proto} port {port}: {source}")]
    Port {
        proto: &'static str,
        port: u16,
        source: std::io::Error,
    },
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error("passt exited at start: {0}")]
    Exited(String),
    #[error("Cannot set up passt's socket or log: {0}")]
    Setup(#[source] std::io::Error),
}

/// passt's arguments: foreground, quiet, the socket as fd `fd`, the forwards (`none` for a
/// protocol without any, or passt would forward UDP on every forwarded TCP port), the MTU
/// for its DHCP answer if one is given.
pub fn passt_args(fd: i32, fwds: &[HostFwd], mtu: Option<u16>) -> Vec<String> {
    let spec = |proto| {
        let s: Vec<_> = fwds
            .iter()
            .filter(|f| f.proto == proto)
            .map(HostFwd::passt_spec)
            .collect();
        if s.is_empty() {
            "none".to_string()
        } else {
            s.join(",")
        }
    };
    let mut args: Vec<String> = vec![
        "--foreground".into(),
        "--quiet".into(),
        "--fd".into(),
        fd.to_string(),
        "--tcp-ports".into(),
        spec(Proto::Tcp),
        "--udp-ports".into(),
        spec(Proto::Udp),
    ];
    if let Some(m) = mtu {
        args.extend(["--mtu".into(), m.to_string()]);
    }
    args
}

/// `passt=PATH`, else `passt` on PATH.
pub fn find_passt(given: Option<&Path>) -> Result<PathBuf, PasstError> {
    find_in(given, std::env::var_os("PATH"))
}

/// `given`, else `passt` in the directories of `path` (a PATH value).
fn find_in(given: Option<&Path>, path: Option<std::ffi::OsString>) -> Result<PathBuf, PasstError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let path = path.ok_or(PasstError::NotInstalled)?;
    std::env::split_paths(&path)
        .map(|d| d.join("passt"))
        .find(|p| p.is_file())
        .ok_or(PasstError::NotInstalled)
}

/// Fails naming the first forwarded host port something else holds.
pub fn probe_ports(fwds: &[HostFwd]) -> Result<(), PasstError> {
    for f in fwds {
        let addr = SocketAddr::new(
            f.host_addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            f.host_port,
        );
        let (proto, res) = match f.proto {
            Proto::Tcp => ("tcp", TcpListener::bind(addr).map(drop)),
            Proto::Udp => ("udp", UdpSocket::bind(addr).map(drop)),
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(PasstError::PortInUse {
                    proto,
                    port: f.host_port,
                })
            }
            Err(source) => {
                return Err(PasstError::Port {
                    proto,
                    port: f.host_port,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// A running passt and the VM's end of its socket.
pub struct Passt {
    pub sock: UnixStream,
    /// Kept so the process is not reaped by anyone else; passt exits when `sock` closes.
    pub child: Child,
}

/// How long passt gets to bind its forwards before the VM starts anyway.
const START_TIMEOUT: Duration = Duration::from_secs(3);

/// Starts passt (`passt=PATH` or from PATH) with `fwds` (and `mtu`), after checking the host
/// ports.
pub fn start(
    given: Option<&Path>,
    fwds: &[HostFwd],
    mtu: Option<u16>,
) -> Result<Passt, PasstError> {
    let exe = find_passt(given)?;
    probe_ports(fwds)?;
    let (sock, theirs) = UnixStream::pair().map_err(PasstError::Setup)?;
    let log = memfd("passt-log").map_err(PasstError::Setup)?;
    let stderr = log.try_clone().map_err(PasstError::Setup)?;
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(&exe);
    cmd.args(passt_args(fd, fwds, mtu))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: the closure runs in the child between fork and exec and makes only
    // async-signal-safe calls (prctl, fcntl) on values copied into it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The socket goes through exec (UnixStream::pair makes it close-on-exec).
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| PasstError::Spawn {
        path: exe.display().to_string(),
        source,
    })?;
    drop(theirs);
    wait_ready(&mut child, &log, fwds)?;
    Ok(Passt { sock, child })
}

/// Waits until passt listens on every forwarded TCP port (or a short while with none), or
/// fails with its last message if it exits.
fn wait_ready(child: &mut Child, log: &File, fwds: &[HostFwd]) -> Result<(), PasstError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let settle = Instant::now() + Duration::from_millis(100);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(PasstError::Exited(
                last_message(log).unwrap_or_else(|| status.to_string()),
            ));
        }
        let listening = fwds
            .iter()
            .filter(|f| f.proto == Proto::Tcp)
            .all(|f| tcp_listening(f.host_port));
        if (listening && Instant::now() >= settle) || Instant::now() >= deadline {
            if !listening {
                log::warn!("passt: not every forwarded TCP port is listening yet");
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last line passt wrote, without its "Failed to send ... to syslog" noise.
fn last_message(log: &File) -> Option<String> {
    let mut log = log;
    log.rewind().ok()?;
    let mut s = String::new();
    log.read_to_string(&mut s).ok()?;
    s.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.contains("to syslog"))
        .map(str::to_string)
}

/// Whether some socket listens on TCP `port` (/proc/net/tcp and tcp6: local address
/// `ADDR:PORT` in hex, state 0A is LISTEN).
pub fn tcp_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|p| {
        std::fs::read_to_string(p).is_ok_and(|s| {
            s.lines().skip(1).any(|l| {
                let mut f = l.split_whitespace();
                let local = f.nth(1).unwrap_or("");
                let state = f.nth(1).unwrap_or("");
                state == "0A"
                    && local
                        .rsplit_once(':')
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                        == Some(port)
            })
        })
    })
}

/// An anonymous in-memory file.
fn memfd(name: &str) -> std::io::Result<File> {
    let name = std::ffi::CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: `name` is a NUL-terminated string that lives for the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests;
