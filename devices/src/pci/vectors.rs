//! A function's group of message-signalled vectors (MSI or MSI-X) and how each reaches the
//! guest. Every vector has an eventfd. An unmasked, programmed vector is handed to the
//! hypervisor ([`IrqfdRouting`], with KVM an irqfd on a GSI route that holds the message after
//! interrupt remapping), so a signal of its eventfd reaches the guest without the VMM. A vector
//! the hypervisor cannot deliver (interrupt remapping blocks its message, or no route is
//! free) is relayed: sent through the [`MsiTrigger`], where a blocked interrupt is recorded as
//! a fault. A masked or unprogrammed vector holds its interrupt as pending and sends it once
//! unmasked (PCI local bus spec 3.0 sections 6.8.1.7 and 6.8.2.9).
//!
//! Who signals a vector decides the rest. A passed-through function's host device signals the
//! eventfd itself: the group then needs an [`FdWatcher`] that watches every eventfd the
//! hypervisor does not consume and reports it to [`VectorGroup::signalled`]. An emulated
//! device calls [`VectorGroup::trigger`], which signals the eventfd of a routed vector and
//! relays or holds the others directly: no watcher.
//!
//! The capability models ([`super::msi::MsiCap`], [`super::msix::MsixCap`]) own the messages
//! and masks the guest programs; their owner passes each change to [`VectorGroup::update`].
//! After an interrupt entry cache invalidation (VT-d 6.5.2.7) [`VectorGroup::refresh`] derives
//! every route again.

use std::sync::{Arc, Mutex};

use iommu::Bdf;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::interrupt::{FdWatcher, InterruptRoutes, IrqfdRouting, MsiMessage, MsiTrigger};

/// What the vectors of a group are wired to.
#[derive(Clone)]
pub struct VectorWiring {
    /// The requester id its MSIs carry (what interrupt remapping checks).
    pub source: Bdf,
    /// Relayed interrupts go out here (through interrupt remapping, if any).
    pub trigger: Arc<dyn MsiTrigger>,
    /// In-hypervisor delivery; None relays every interrupt through `trigger`.
    pub routing: Option<Arc<dyn IrqfdRouting>>,
    /// Watches the eventfds the hypervisor does not consume, when something outside the VMM
    /// signals them; None when the device signals through [`VectorGroup::trigger`] only.
    pub watcher: Option<Arc<dyn FdWatcher>>,
    /// For log lines.
    pub name: String,
}

/// One vector of a group as the state dump sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VectorState {
    pub index: usize,
    pub delivery: VectorDelivery,
    /// The programmed MSI message (address, data), if any.
    pub message: Option<VectorMessage>,
    /// An interrupt is held for it (pending bit).
    pub pending: bool,
}

/// An MSI message (PCI 6.8.1): address and data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VectorMessage {
    pub address: u64,
    pub data: u32,
}

/// How a vector's interrupts reach the guest, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum VectorDelivery {
    /// Routed in KVM (irqfd).
    InHypervisor,
    /// No message programmed.
    Unprogrammed,
    /// Programmed, masked.
    Masked,
    /// The VMM sends each interrupt itself.
    Relayed,
}

/// How a vector's interrupts reach the guest now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// Masked or unprogrammed: an interrupt is held, to be sent once it can be.
    Held { pending: bool },
    /// The hypervisor delivers its eventfd's signals (never watched).
    InHypervisor,
    /// The hypervisor cannot deliver it; the VMM sends each interrupt itself.
    Relayed,
}

struct Vector {
    fd: EventFd,
    message: Option<(u64, u32)>,
    masked: bool,
    delivery: Delivery,
}

/// A group of vectors (MSI's 1..=32 or MSI-X's table), all starting masked and unprogrammed.
/// Not locked itself: its owner serialises guest programming, signals and refreshes (wrap it
/// in a `Mutex` to share it; `Mutex<VectorGroup>` is an [`InterruptRoutes`]).
pub struct VectorGroup {
    wiring: VectorWiring,
    vectors: Vec<Vector>,
    /// Interrupts the VMM sent itself (the rest went through the hypervisor's routes).
    relayed: u64,
}

impl VectorGroup {
    /// A group over `fds`, one per vector (a host device may already signal them).
    pub fn new(wiring: VectorWiring, fds: Vec<EventFd>) -> Self {
        let vectors: Vec<Vector> = fds
            .into_iter()
            .map(|fd| Vector {
                fd,
                message: None,
                masked: true,
                delivery: Delivery::Held { pending: false },
            })
            .collect();
        if let Some(w) = &wiring.watcher {
            for (i, v) in vectors.iter().enumerate() {
                w.watch(&v.fd, i as u64);
            }
        }
        VectorGroup {
            wiring,
            vectors,
            relayed: 0,
        }
    }

    /// A group of `count` vectors with fresh eventfds; None if the host has none left.
    pub fn with_eventfds(wiring: VectorWiring, count: usize) -> Option<Self> {
        let fds = new_eventfds(count)?;
        Some(VectorGroup::new(wiring, fds))
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    fn message(&self, (address, data): (u64, u32)) -> MsiMessage {
        MsiMessage {
            address,
            data,
            source: self.wiring.source,
        }
    }

    fn send(&mut self, m: (u64, u32)) {
        if let Err(e) = self.wiring.trigger.send_msi(self.message(m)) {
            iommu::warn_limited!("{}: interrupt: {e}", self.wiring.name);
        }
    }

    /// Vector `i`'s message (None: unprogrammed) and mask as the guest programmed them.
    pub fn update(&mut self, i: usize, message: Option<(u64, u32)>, masked: bool) {
        let Some(v) = self.vectors.get_mut(i) else {
            return;
        };
        if v.message == message && v.masked == masked {
            return;
        }
        v.message = message;
        v.masked = masked;
        self.reconcile(i);
    }

    /// Brings vector `i`'s delivery in line with its message and mask.
    fn reconcile(&mut self, i: usize) {
        let Some(v) = self.vectors.get(i) else { return };
        let old = v.delivery;
        let Some(m) = v.message.filter(|_| !v.masked) else {
            let pending = matches!(old, Delivery::Held { pending: true });
            let pending = pending | self.leave_hypervisor(i, old);
            self.vectors[i].delivery = Delivery::Held { pending };
            return;
        };
        if old == (Delivery::Held { pending: true }) {
            // An interrupt held while masked is sent once it is unmasked (6.8.2.9).
            self.vectors[i].delivery = Delivery::Held { pending: false };
            self.send(m);
        }
        let msg = self.message(m);
        let v = &self.vectors[i];
        let routed = self
            .wiring
            .routing
            .as_ref()
            .is_some_and(|r| r.route(&v.fd, msg));
        if routed {
            if old != Delivery::InHypervisor {
                if let Some(w) = &self.wiring.watcher {
                    w.unwatch(&v.fd);
                }
            }
            self.vectors[i].delivery = Delivery::InHypervisor;
        } else {
            if self.leave_hypervisor(i, old) {
                self.send(m);
            }
            self.vectors[i].delivery = Delivery::Relayed;
        }
    }

    /// Takes vector `i` away from the hypervisor if it was `InHypervisor` (its route gone, its
    /// eventfd watched again). Returns whether a signal was left in the eventfd that nobody
    /// will report (no watcher): it is then the caller's to deliver or hold.
    fn leave_hypervisor(&mut self, i: usize, old: Delivery) -> bool {
        if old != Delivery::InHypervisor {
            return false;
        }
        let v = &self.vectors[i];
        if let Some(r) = &self.wiring.routing {
            r.unroute(&v.fd);
        }
        match &self.wiring.watcher {
            Some(w) => {
                w.watch(&v.fd, i as u64);
                false
            }
            None => v.fd.read().is_ok(),
        }
    }

    /// The device raises vector `i` (emulated devices): through the hypervisor's route if it
    /// has one, relayed if it cannot have one, held if masked.
    pub fn trigger(&mut self, i: usize) {
        let Some(v) = self.vectors.get_mut(i) else {
            return;
        };
        match v.delivery {
            Delivery::InHypervisor => {
                if let Err(e) = v.fd.write(1) {
                    iommu::warn_limited!("{}: vector {i}: {e}", self.wiring.name);
                }
            }
            Delivery::Relayed => {
                if let Some(m) = v.message {
                    self.relayed += 1;
                    self.send(m);
                }
            }
            Delivery::Held { .. } => v.delivery = Delivery::Held { pending: true },
        }
    }

    /// The watcher saw vector `i`'s eventfd signalled.
    pub fn signalled(&mut self, i: usize) {
        let Some(v) = self.vectors.get_mut(i) else {
            return;
        };
        if v.fd.read().is_err() {
            return;
        }
        match v.message.filter(|_| !v.masked) {
            Some(m) => {
                self.relayed += 1;
                self.send(m);
            }
            None => v.delivery = Delivery::Held { pending: true },
        }
    }

    /// Whether vector `i` has an interrupt held back by its mask.
    pub fn pending(&self, i: usize) -> bool {
        self.vectors
            .get(i)
            .is_some_and(|v| v.delivery == Delivery::Held { pending: true })
    }

    /// Derives every vector's route again (interrupt remapping entries changed).
    pub fn refresh(&mut self) {
        for i in 0..self.vectors.len() {
            self.reconcile(i);
        }
    }

    /// Interrupts the VMM sent itself.
    pub fn relayed(&self) -> u64 {
        self.relayed
    }

    /// Each vector's state, in index order (for the state dump).
    pub fn state(&self) -> Vec<VectorState> {
        self.vectors
            .iter()
            .enumerate()
            .map(|(i, v)| VectorState {
                index: i,
                delivery: match (v.delivery, v.message) {
                    (Delivery::InHypervisor, _) => VectorDelivery::InHypervisor,
                    (_, None) => VectorDelivery::Unprogrammed,
                    (_, Some(_)) if v.masked => VectorDelivery::Masked,
                    (_, Some(_)) => VectorDelivery::Relayed,
                },
                message: v
                    .message
                    .map(|(address, data)| VectorMessage { address, data }),
                pending: self.pending(i),
            })
            .collect()
    }
}

impl Drop for VectorGroup {
    fn drop(&mut self) {
        for v in &self.vectors {
            match v.delivery {
                Delivery::InHypervisor => {
                    if let Some(r) = &self.wiring.routing {
                        r.unroute(&v.fd);
                    }
                }
                _ => {
                    if let Some(w) = &self.wiring.watcher {
                        w.unwatch(&v.fd);
                    }
                }
            }
        }
    }
}

impl InterruptRoutes for Mutex<VectorGroup> {
    fn refresh(&self) {
        lock(self).refresh();
    }
}

/// `count` non-blocking eventfds; None if the host has none left.
pub fn new_eventfds(count: usize) -> Option<Vec<EventFd>> {
    (0..count)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).ok())
        .collect()
}

#[cfg(test)]
mod tests;
