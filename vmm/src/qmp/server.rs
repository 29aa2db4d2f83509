//! The control sockets: one thread per socket ("qmp", "monitor") accepts clients one after
//! another and speaks the protocol with each; commands go to the main thread, which owns the
//! VM, over a channel (with an eventfd that wakes its event loop), and come back as replies.
//! Events go the other way through [`Events`]: one queue per connected client, written out
//! by its thread.
//!
//! A client is untrusted: malformed or oversized input closes that client and no other; the
//! VM never waits for a client (replies and events are queued, and a client that stops
//! reading only stalls its own thread).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use devices::bus::lock;
use event_manager::{EventOps, Events as EmEvents, MutEventSubscriber};
use serde_json::{Map, Value};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::hmp::{self, TelnetFilter};
use super::protocol::{self, CommandError, Framer, Session, Step};
use super::{Endpoint, SocketSpec};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("Cannot listen on {0}: {1}")]
    Listen(String, #[source] std::io::Error),
    #[error("Cannot start the {0} thread: {1}")]
    Thread(&'static str, #[source] std::io::Error),
    #[error("Cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// What a client asks of the VM.
#[derive(Debug)]
pub enum RequestKind {
    Qmp {
        name: String,
        args: Map<String, Value>,
    },
    Hmp(String),
}

/// A request and where its answer goes.
pub struct Request {
    pub kind: RequestKind,
    pub reply: Sender<Result<Value, CommandError>>,
}

/// How long a client thread waits for the main thread's answer before it gives up on the
/// command (the VM is stopping, or a pause is waiting for a stuck vCPU).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a client thread looks for events to send when its client is quiet.
const POLL_MS: libc::c_int = 20;
/// The longest HMP line.
const MAX_LINE: usize = 4096;

type Queue = Arc<Mutex<VecDeque<Value>>>;

/// The event queues of the connected clients.
#[derive(Default)]
pub struct Events {
    clients: Mutex<Vec<Queue>>,
}

impl Events {
    /// Queues event `name` for every QMP client that negotiated.
    pub fn emit(&self, name: &str, data: Option<Value>) {
        let e = protocol::event(name, data, SystemTime::now());
        for q in lock(&self.clients).iter() {
            lock(q).push_back(e.clone());
        }
    }

    fn add(&self) -> Queue {
        let q: Queue = Arc::default();
        lock(&self.clients).push(q.clone());
        q
    }

    fn remove(&self, q: &Queue) {
        lock(&self.clients).retain(|c| !Arc::ptr_eq(c, q));
    }

    /// Waits (at most `timeout`) until every queued event was written out.
    pub fn flush(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if lock(&self.clients).iter().all(|q| lock(q).is_empty()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The main thread's end: requests to serve and events to send.
pub struct ControlServer {
    pub requests: Receiver<Request>,
    pub events: Arc<Events>,
    connected: Receiver<()>,
    waits: bool,
}

/// Reads the wake-up eventfd in the main thread's event loop (the requests are served after
/// each loop turn).
pub struct WakeHandler(pub EventFd);

impl MutEventSubscriber for WakeHandler {
    fn process(&mut self, _events: EmEvents, _ops: &mut EventOps) {
        let _ = self.0.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(EmEvents::new_raw(self.0.as_raw_fd(), EventSet::IN));
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A connected client.
trait Stream: Read + Write + AsRawFd + Send {}
impl<T: Read + Write + AsRawFd + Send> Stream for T {}

impl Listener {
    fn bind(e: &Endpoint) -> Result<Self, ServerError> {
        match e {
            Endpoint::Unix(p) => {
                // A socket left by an earlier run is replaced (QEMU does the same); any
                // other file is not touched.
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                    let _ = std::fs::remove_file(p);
                }
                UnixListener::bind(p)
                    .map(Listener::Unix)
                    .map_err(|err| ServerError::Listen(p.display().to_string(), err))
            }
            Endpoint::Tcp { host, port } => TcpListener::bind((host.as_str(), *port))
                .map(Listener::Tcp)
                .map_err(|err| ServerError::Listen(format!("{host}:{port}"), err)),
        }
    }

    fn accept(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Unix(l) => Box::new(l.accept()?.0),
            Listener::Tcp(l) => Box::new(l.accept()?.0),
        })
    }
}

/// Which protocol a socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Qmp,
    Hmp { telnet: bool },
}

/// Binds the sockets and starts their threads (before the sandbox: they are made here, the
/// threads sandbox themselves). None without sockets.
pub fn start(
    qmp: Option<&SocketSpec>,
    monitor: Option<&SocketSpec>,
) -> Result<Option<(ControlServer, EventFd)>, ServerError> {
    if qmp.is_none() && monitor.is_none() {
        return Ok(None);
    }
    let (tx, requests) = channel();
    let (connected_tx, connected) = channel();
    let wake = EventFd::new(EFD_NONBLOCK).map_err(ServerError::EventFd)?;
    let events = Arc::new(Events::default());
    let mut waits = false;
    for (spec, kind, name) in [
        (qmp, Kind::Qmp, "qmp"),
        (
            monitor,
            Kind::Hmp {
                telnet: monitor.is_some_and(|m| m.telnet),
            },
            "monitor",
        ),
    ] {
        let Some(spec) = spec else { continue };
        waits |= spec.wait;
        let listener = Listener::bind(&spec.endpoint)?;
        let ctx = ClientContext {
            requests: tx.clone(),
            wake: wake.try_clone().map_err(ServerError::EventFd)?,
            events: events.clone(),
            kind,
        };
        let connected = spec.wait.then(|| connected_tx.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                crate::seccomp::sandbox_thread(crate::seccomp::ThreadClass::Control);
                accept_loop(&listener, &ctx, connected);
            })
            .map_err(|e| ServerError::Thread(name, e))?;
    }
    let main_wake = wake;
    Ok(Some((
        ControlServer {
            requests,
            events,
            connected,
            waits,
        },
        main_wake,
    )))
}

impl ControlServer {
    /// With a socket that waits (no wait=off): blocks until its first client connects, or
    /// until `give_up` says to stop waiting.
    pub fn wait_for_client(&self, give_up: impl Fn() -> bool) {
        if !self.waits {
            return;
        }
        loop {
            match self.connected.recv_timeout(Duration::from_millis(100)) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) if give_up() => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

struct ClientContext {
    requests: Sender<Request>,
    wake: EventFd,
    events: Arc<Events>,
    kind: Kind,
}

fn accept_loop(listener: &Listener, ctx: &ClientContext, mut connected: Option<Sender<()>>) {
    loop {
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                iommu::warn_limited!("control socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Some(c) = connected.take() {
            let _ = c.send(());
        }
        let queue = ctx.events.add();
        let mut client = Client {
            stream,
            ctx,
            queue: queue.clone(),
        };
        if let Err(why) = client.serve() {
            log::info!("control socket: client closed: {why}");
        }
        ctx.events.remove(&queue);
    }
}

struct Client<'a> {
    stream: Box<dyn Stream>,
    ctx: &'a ClientContext,
    queue: Queue,
}

impl Client<'_> {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    /// Hands a request to the main thread and waits for its answer.
    fn ask(&self, kind: RequestKind) -> Result<Value, CommandError> {
        let (reply, answer) = channel();
        self.ctx
            .requests
            .send(Request { kind, reply })
            .map_err(|_| CommandError::generic("The VM is stopping"))?;
        let _ = self.ctx.wake.write(1);
        match answer.recv_timeout(REPLY_TIMEOUT) {
            Ok(r) => r,
            Err(_) => Err(CommandError::generic(
                "The VM did not answer (it is stopping)",
            )),
        }
    }

    /// Waits up to POLL_MS for input; returns the bytes read (empty: none yet), or None at
    /// the end of the stream.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, String> {
        let mut p = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is one live, initialised pollfd.
        let n = unsafe { libc::poll(&mut p, 1, POLL_MS) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::Interrupted => Ok(Some(0)),
                _ => Err(format!("poll: {e}")),
            };
        }
        if n == 0 {
            return Ok(Some(0));
        }
        match self.stream.read(buf) {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(Some(0)),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Before closing on bad input: ends our side and drops what the client still sends
    /// (briefly), so that the close does not reset the connection and lose the error reply.
    fn linger(&mut self) {
        // SAFETY: shutdown on the client's live socket descriptor; no memory is involved.
        unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR) };
        let end = Instant::now() + Duration::from_millis(200);
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if !matches!(self.read_some(&mut buf), Ok(Some(_))) {
                return;
            }
        }
    }

    fn serve(&mut self) -> Result<(), String> {
        match self.ctx.kind {
            Kind::Qmp => self.serve_qmp(),
            Kind::Hmp { telnet } => self.serve_hmp(telnet),
        }
    }

    fn serve_qmp(&mut self) -> Result<(), String> {
        let (major, minor, micro) = super::commands::version();
        let hello = protocol::greeting(
            major,
            minor,
            micro,
            concat!("minivmm ", env!("CARGO_PKG_VERSION")),
        );
        self.send(&protocol::encode(&hello))?;
        let mut session = Session::default();
        let mut framer = Framer::default();
        let mut buf = [0u8; 4096];
        loop {
            let n = match self.read_some(&mut buf)? {
                None => return Ok(()),
                Some(n) => n,
            };
            if n > 0 {
                let msgs = match framer.push(&buf[..n]) {
                    Ok(m) => m,
                    Err(e) => {
                        iommu::warn_limited!("qmp: closing a client: {e}");
                        let _ = self.send(&protocol::encode(&protocol::error(
                            None,
                            &CommandError::generic(e.to_string()),
                        )));
                        self.linger();
                        return Err(e.to_string());
                    }
                };
                for m in msgs {
                    let reply = match session.handle(m) {
                        Step::Reply(r) => r,
                        Step::Run(c) => match self.ask(RequestKind::Qmp {
                            name: c.name,
                            args: c.args,
                        }) {
                            Ok(v) => protocol::success(c.id, v),
                            Err(e) => protocol::error(c.id, &e),
                        },
                    };
                    self.send(&protocol::encode(&reply))?;
                }
            }
            // Events only after negotiation (qmp-spec 2.2); earlier ones are dropped.
            let pending: Vec<Value> = lock(&self.queue).drain(..).collect();
            if session.wants_events() {
                for e in pending {
                    self.send(&protocol::encode(&e))?;
                }
            }
        }
    }

    fn serve_hmp(&mut self, telnet: bool) -> Result<(), String> {
        let banner = format!("{}{}", hmp::banner(), hmp::PROMPT);
        self.send(banner.as_bytes())?;
        let mut filter = TelnetFilter::default();
        let mut line: Vec<u8> = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            // The monitor has no events; its queue is only kept empty.
            lock(&self.queue).clear();
            let n = match self.read_some(&mut buf)? {
                None => return Ok(()),
                Some(n) => n,
            };
            let input = if telnet {
                filter.filter(&buf[..n])
            } else {
                buf[..n].to_vec()
            };
            for b in input {
                if b != b'\n' {
                    line.push(b);
                    if line.len() > MAX_LINE {
                        let _ = self.send(b"Error: line too long\r\n");
                        self.linger();
                        return Err("line too long".into());
                    }
                    continue;
                }
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                line.clear();
                let out = match self.ask(RequestKind::Hmp(text)) {
                    Ok(Value::String(s)) => s,
                    Ok(_) => String::new(),
                    Err(e) => format!("Error: {}\r\n", e.desc),
                };
                self.send(format!("{out}{}", hmp::PROMPT).as_bytes())?;
            }
        }
    }
}
