//! Delivery of a passed-through function's interrupts. VFIO signals one eventfd per interrupt.
//! MSI and MSI-X vectors are a [`VectorGroup`] (shared with emulated devices): an unmasked,
//! programmed vector is handed to the hypervisor ([`IrqfdRouting`], KVM irqfds), so it reaches
//! the guest without the VMM; a masked vector, or one the hypervisor cannot deliver (interrupt
//! remapping blocks it), is watched by the VMM's relay instead, which sets its pending bit or
//! sends it through the [`MsiTrigger`] (where a blocked interrupt is recorded as a fault). What
//! VFIO adds is the host side: enabling and disabling the host's vectors with their eventfds.
//! INTx drives a level-triggered interrupt line and is unmasked at the host when the guest
//! EOIs it ([`crate::interrupt::Resample`]).
//!
//! Only one of INTx, MSI and MSI-X is enabled at the host at a time, as VFIO requires.

use std::sync::{Arc, Mutex};

use iommu::Bdf;
use vmm_sys_util::eventfd::EventFd;

use super::function::{HostFunction, INTX_IRQ, MSIX_IRQ, MSI_IRQ};
use crate::bus::lock;
pub use crate::interrupt::FdWatcher;
use crate::interrupt::{InterruptRoutes, IrqLine, IrqfdRouting, MsiTrigger, Resample};
use crate::pci::vectors::{new_eventfds, VectorGroup, VectorState, VectorWiring};

/// The relay's token for the INTx eventfd (vectors use their index).
pub const INTX_TOKEN: u64 = u64::MAX;

/// A passed-through function's interrupts as the state dump sees them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InterruptsState {
    pub mode: Mode,
    /// Interrupts the VMM sent itself (INTx and vectors it could not route in KVM).
    pub relayed: u64,
    /// Present when the function has an INTx pin wired.
    pub intx: Option<IntxState>,
    pub vectors: Vec<VectorState>,
}

/// The INTx line of a passed-through function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IntxState {
    pub asserted: bool,
    pub assertions: u64,
}

/// Which interrupt mechanism the guest uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
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
    /// MSI's or MSI-X's vectors (None in the other modes).
    vectors: Option<VectorGroup>,
    intx: Option<Intx>,
    /// Vector interrupts the relay sent through the VMM in earlier modes (the current group
    /// counts its own), and INTx assertions.
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
    fn teardown(&mut self) -> LineChange {
        let mut change = LineChange::None;
        if let Some(g) = self.vectors.take() {
            self.relayed += g.relayed();
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
        let Some(fds) = new_eventfds(count).filter(|f| !f.is_empty()) else {
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
        let wiring = VectorWiring {
            source: self.wiring.source,
            trigger: self.wiring.trigger.clone(),
            routing: self.wiring.routing.clone(),
            watcher: Some(self.wiring.watcher.clone()),
            name: format!("vfio {}", self.wiring.name),
        };
        self.vectors = Some(VectorGroup::new(wiring, fds));
        self.mode = mode;
    }
}

impl Interrupts {
    /// The function's interrupts, off (call [`Interrupts::set_mode`]).
    pub fn new(wiring: InterruptWiring) -> Self {
        Interrupts(Arc::new(Mutex::new(State {
            wiring,
            mode: Mode::Off,
            vectors: None,
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
            let n = st.vectors.as_ref().map_or(0, VectorGroup::len);
            if st.mode == mode && (mode == Mode::Intx || n == count) {
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
        if let Some(g) = lock(&self.0).vectors.as_mut() {
            g.update(i, message, masked);
        }
    }

    /// Whether vector `i` has an interrupt held back by its mask.
    pub fn pending(&self, i: usize) -> bool {
        lock(&self.0).vectors.as_ref().is_some_and(|g| g.pending(i))
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
                if let Some(g) = st.vectors.as_mut() {
                    g.signalled(token as usize);
                }
                LineChange::None
            }
        };
        change.apply();
    }

    /// The mode, the relay count, INTx and each vector (for the state dump).
    pub fn state(&self) -> InterruptsState {
        let st = lock(&self.0);
        InterruptsState {
            mode: st.mode,
            relayed: st.relayed + st.vectors.as_ref().map_or(0, VectorGroup::relayed),
            intx: st.intx.as_ref().map(|x| IntxState {
                asserted: x.asserted,
                assertions: st.intx_count,
            }),
            vectors: st.vectors.as_ref().map_or(Vec::new(), VectorGroup::state),
        }
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
        if let Some(g) = lock(&self.0).vectors.as_mut() {
            g.refresh();
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
