//! Delivery of a passed-through function's interrupts. VFIO signals one eventfd per interrupt.
//! An MSI or MSI-X vector that is unmasked and programmed is handed to the hypervisor
//! ([`IrqfdRouting`], KVM irqfds), so it reaches the guest without the VMM; a masked vector, or
//! one the hypervisor cannot deliver (interrupt remapping blocks it), is watched by the VMM's
//! relay instead, which sets its pending bit or sends it through the [`MsiTrigger`] (where a
//! blocked interrupt is recorded as a fault). INTx drives a level-triggered interrupt line and
//! is unmasked at the host when the guest EOIs it ([`crate::interrupt::Resample`]).
//!
//! Only one of INTx, MSI and MSI-X is enabled at the host at a time, as VFIO requires.

use std::sync::{Arc, Mutex};

use iommu::Bdf;
use vmm_sys_util::eventfd::EventFd;

use super::function::{HostFunction, INTX_IRQ, MSIX_IRQ, MSI_IRQ};
use crate::bus::lock;
use crate::interrupt::{InterruptRoutes, IrqLine, IrqfdRouting, MsiMessage, MsiTrigger, Resample};

/// The relay's token for the INTx eventfd (vectors use their index).
pub const INTX_TOKEN: u64 = u64::MAX;

/// Watches eventfds on the VMM's behalf (the relay thread's epoll set).
pub trait FdWatcher: Send + Sync {
    /// Reports `token` whenever `fd` becomes readable.
    fn watch(&self, fd: &EventFd, token: u64);
    fn unwatch(&self, fd: &EventFd);
}

/// Which interrupt mechanism the guest uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Intx,
    Msi,
    Msix,
}

impl Mode {
    fn irq_index(self) -> Option<u32> {
        match self {
            Mode::Off => None,
            Mode::Intx => Some(INTX_IRQ),
            Mode::Msi => Some(MSI_IRQ),
            Mode::Msix => Some(MSIX_IRQ),
        }
    }
}

struct Vector {
    fd: EventFd,
    message: Option<(u64, u32)>,
    masked: bool,
    pending: bool,
    /// The hypervisor delivers it.
    routed: bool,
    /// The relay watches its eventfd.
    watched: bool,
}

struct Intx {
    fd: EventFd,
    line: Arc<dyn IrqLine>,
    asserted: bool,
}

/// What a function's interrupts are wired to.
pub struct InterruptWiring {
    pub host: Arc<dyn HostFunction>,
    /// The requester id its MSIs carry (what interrupt remapping checks).
    pub source: Bdf,
    pub trigger: Arc<dyn MsiTrigger>,
    /// In-hypervisor delivery; None relays every interrupt through `trigger`.
    pub routing: Option<Arc<dyn IrqfdRouting>>,
    pub watcher: Arc<dyn FdWatcher>,
    /// For log lines.
    pub name: String,
}

/// A level change to make once the state lock is released (the line's controller may call
/// back into this state on EOI).
#[must_use]
enum LineChange {
    None,
    Raise(Arc<dyn IrqLine>),
    Lower(Arc<dyn IrqLine>),
}

impl LineChange {
    fn apply(self) {
        match self {
            LineChange::None => {}
            LineChange::Raise(l) => l.set_level(true),
            LineChange::Lower(l) => l.set_level(false),
        }
    }
}

struct State {
    wiring: InterruptWiring,
    mode: Mode,
    vectors: Vec<Vector>,
    intx: Option<Intx>,
    /// Vector interrupts the relay sent through the VMM (the rest went through the
    /// hypervisor's routes), and INTx assertions.
    relayed: u64,
    intx_count: u64,
}

/// A function's interrupt state, shared by the device model (configuration and MSI-X table
/// writes), the relay thread (signals), the interrupt controller (INTx EOIs) and the IOMMU
/// (interrupt entry invalidations).
#[derive(Clone)]
pub struct Interrupts(Arc<Mutex<State>>);

fn new_eventfd() -> Option<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK).ok()
}

impl State {
    fn message(&self, address: u64, data: u32) -> MsiMessage {
        MsiMessage {
            address,
            data,
            source: self.wiring.source,
        }
    }

    fn send(&self, (address, data): (u64, u32)) {
        if let Err(e) = self.wiring.trigger.send_msi(self.message(address, data)) {
            iommu::warn_limited!("vfio {}: interrupt: {e}", self.wiring.name);
        }
    }

    /// Brings vector `i`'s delivery in line with its message and mask.
    fn reconcile(&mut self, i: usize) {
        let Some(v) = self.vectors.get(i) else { return };
        let deliverable = v.message.filter(|_| !v.masked);
        if let (Some(m), true) = (deliverable, v.pending) {
            // An interrupt held while masked is sent once it is unmasked (6.8.2.9).
            self.vectors[i].pending = false;
            self.send(m);
        }
        let v = &self.vectors[i];
        let routed = match (deliverable, &self.wiring.routing) {
            (Some((a, d)), Some(r)) => r.route(&v.fd, self.message(a, d)),
            _ => false,
        };
        let v = &mut self.vectors[i];
        if routed {
            if v.watched {
                self.wiring.watcher.unwatch(&v.fd);
                v.watched = false;
            }
        } else {
            if v.routed {
                if let Some(r) = &self.wiring.routing {
                    r.unroute(&v.fd);
                }
            }
            if !v.watched {
                self.wiring.watcher.watch(&v.fd, i as u64);
                v.watched = true;
            }
        }
        v.routed = routed;
    }

    fn teardown(&mut self) -> LineChange {
        let mut change = LineChange::None;
        for v in self.vectors.drain(..) {
            if v.routed {
                if let Some(r) = &self.wiring.routing {
                    r.unroute(&v.fd);
                }
            }
            if v.watched {
                self.wiring.watcher.unwatch(&v.fd);
            }
        }
        if self.mode == Mode::Intx {
            if let Some(x) = &mut self.intx {
                self.wiring.watcher.unwatch(&x.fd);
                if x.asserted {
                    x.asserted = false;
                    change = LineChange::Lower(x.line.clone());
                }
            }
        }
        if let Some(index) = self.mode.irq_index() {
            if let Err(e) = self.wiring.host.disable_irq(index) {
                iommu::warn_limited!("vfio {}: {e}", self.wiring.name);
            }
        }
        self.mode = Mode::Off;
        change
    }

    fn enable(&mut self, mode: Mode, count: usize) {
        let Some(index) = mode.irq_index() else {
            return;
        };
        if mode == Mode::Intx {
            let Some(x) = &self.intx else { return };
            match self.wiring.host.enable_irq(index, &[&x.fd]) {
                Ok(()) => {
                    self.wiring.watcher.watch(&x.fd, INTX_TOKEN);
                    self.mode = Mode::Intx;
                }
                Err(e) => iommu::warn_limited!("vfio {}: INTx: {e}", self.wiring.name),
            }
            return;
        }
        let count = count.min(self.wiring.host.irq_count(index) as usize);
        let fds: Option<Vec<EventFd>> = (0..count).map(|_| new_eventfd()).collect();
        let Some(fds) = fds.filter(|f| !f.is_empty()) else {
            return;
        };
        let refs: Vec<&EventFd> = fds.iter().collect();
        if let Err(e) = self.wiring.host.enable_irq(index, &refs) {
            // As on hardware whose MSI setup failed: the function stays silent.
            iommu::warn_limited!(
                "vfio {}: {mode:?} with {count} vectors: {e}",
                self.wiring.name
            );
            return;
        }
        self.vectors = fds
            .into_iter()
            .map(|fd| Vector {
                fd,
                message: None,
                masked: true,
                pending: false,
                routed: false,
                watched: false,
            })
            .collect();
        self.mode = mode;
        for i in 0..self.vectors.len() {
            self.reconcile(i);
        }
    }
}

impl Interrupts {
    /// The function's interrupts, off (call [`Interrupts::set_mode`]).
    pub fn new(wiring: InterruptWiring) -> Self {
        Interrupts(Arc::new(Mutex::new(State {
            wiring,
            mode: Mode::Off,
            vectors: Vec::new(),
            intx: None,
            relayed: 0,
            intx_count: 0,
        })))
    }

    /// Wires the function's INTx pin to `line`, if the host offers INTx; returns whether
    /// it does. Takes effect at the next switch to [`Mode::Intx`].
    pub fn wire_intx(&self, line: Arc<dyn IrqLine>) -> bool {
        let mut st = lock(&self.0);
        if st.wiring.host.irq_count(INTX_IRQ) == 0 || st.mode == Mode::Intx {
            return st.intx.is_some();
        }
        st.intx = new_eventfd().map(|fd| Intx {
            fd,
            line,
            asserted: false,
        });
        st.intx.is_some()
    }

    pub fn mode(&self) -> Mode {
        lock(&self.0).mode
    }

    /// Whether INTx can be used.
    pub fn has_intx(&self) -> bool {
        lock(&self.0).intx.is_some()
    }

    /// Switches to `mode` with `count` vectors (MSI, MSI-X); the vectors start masked and
    /// unprogrammed. Switching to the current mode and count changes nothing.
    pub fn set_mode(&self, mode: Mode, count: usize) {
        let change = {
            let mut st = lock(&self.0);
            if st.mode == mode && (mode == Mode::Intx || st.vectors.len() == count) {
                return;
            }
            let change = st.teardown();
            st.enable(mode, count);
            change
        };
        change.apply();
    }

    /// Vector `i`'s message and mask as the guest programmed them.
    pub fn update_vector(&self, i: usize, message: Option<(u64, u32)>, masked: bool) {
        let mut st = lock(&self.0);
        let Some(v) = st.vectors.get_mut(i) else {
            return;
        };
        if v.message == message && v.masked == masked {
            return;
        }
        v.message = message;
        v.masked = masked;
        st.reconcile(i);
    }

    /// Whether vector `i` has an interrupt held back by its mask.
    pub fn pending(&self, i: usize) -> bool {
        lock(&self.0).vectors.get(i).is_some_and(|v| v.pending)
    }

    /// The relay saw `token`'s eventfd signalled.
    pub fn signalled(&self, token: u64) {
        let change = {
            let mut st = lock(&self.0);
            if token == INTX_TOKEN {
                match &mut st.intx {
                    Some(x) if x.fd.read().is_ok() && !x.asserted => {
                        x.asserted = true;
                        let line = x.line.clone();
                        st.intx_count += 1;
                        LineChange::Raise(line)
                    }
                    _ => LineChange::None,
                }
            } else {
                let i = token as usize;
                let Some(v) = st.vectors.get_mut(i) else {
                    return;
                };
                if v.fd.read().is_err() {
                    return;
                }
                match v.message.filter(|_| !v.masked) {
                    Some(m) => {
                        st.relayed += 1;
                        st.send(m);
                    }
                    None => v.pending = true,
                }
                LineChange::None
            }
        };
        change.apply();
    }

    /// One line per vector for the state dump.
    pub fn dump(&self) -> String {
        let st = lock(&self.0);
        let mut s = format!(
            "  interrupts: {:?}, {} relayed by the VMM",
            st.mode, st.relayed
        );
        if let Some(x) = &st.intx {
            s += &format!(
                ", INTx {} ({} assertions)",
                if x.asserted { "asserted" } else { "idle" },
                st.intx_count
            );
        }
        s += "\n";
        for (i, v) in st.vectors.iter().enumerate() {
            let how = match (v.routed, v.message) {
                (true, _) => "in KVM",
                (false, None) => "unprogrammed",
                (false, Some(_)) if v.masked => "masked",
                (false, Some(_)) => "relayed",
            };
            let msg = v
                .message
                .map_or(String::new(), |(a, d)| format!(" {a:#x}/{d:#x}"));
            s += &format!(
                "    vector {i}: {how}{msg}{}\n",
                if v.pending { " pending" } else { "" }
            );
        }
        s
    }
}

impl Resample for Interrupts {
    fn resample(&self) {
        let st = &mut *lock(&self.0);
        let Some(x) = st.intx.as_mut().filter(|_| st.mode == Mode::Intx) else {
            return;
        };
        x.asserted = false;
        if let Err(e) = st.wiring.host.unmask_intx() {
            iommu::warn_limited!("vfio {}: {e}", st.wiring.name);
        }
    }
}

impl InterruptRoutes for Interrupts {
    fn refresh(&self) {
        let mut st = lock(&self.0);
        for i in 0..st.vectors.len() {
            st.reconcile(i);
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.teardown().apply();
    }
}

#[cfg(test)]
mod tests;
