//! The virtio-net job, run by the device's worker thread while the device is active.
//!
//! Receive: while the receive queue has a chain, a frame is read from the backend into a
//! bounce buffer and copied into the chain's device-writable buffers. The chain's length is
//! checked first: a frame longer than it is dropped and counted and the chain stays for the
//! next frame (as QEMU does). Every byte's buffer is translated before any is written, so a
//! translation fault writes nothing: the frame is dropped and the chain returned with used
//! length 0. With no chain left the backend is no longer polled (its frames stay in the tap,
//! whose own queue then drops); the driver's next receive notification resumes it.
//!
//! Transmit: each chain's device-readable buffers, translated whole, are gathered into one
//! write to the backend (`writev` on the tap) and the chain returned with used length 0. A
//! fault sends nothing.
//!
//! A stream backend may accept a frame it could send only part of: the worker then takes no
//! transmit chain until the rest went out (it polls the socket for POLLOUT), so the guest's
//! ring holds the backlog. A backend whose peer went away takes the link down: a
//! configuration change interrupt tells the driver, receive chains stay posted and
//! transmitted frames are dropped (counted), as on a NIC with no carrier.
//!
//! A ring the device cannot use (a bad avail index, a ring the IOMMU refuses) sets
//! DEVICE_NEEDS_RESET (virtio 1.2 section 2.1.2) and stops that queue's work until a reset.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::thread::WorkerJob;
use crate::virtio::{ActiveQueue, VirtioInterrupt, VirtioMemory};

/// Positions in [`WorkerJob::fds`].
const FD_RX_NOTIFY: usize = 0;
const FD_TX_NOTIFY: usize = 1;
const FD_BACKEND: usize = 2;

pub(crate) struct NetJob {
    backend: Arc<dyn NetBackend>,
    mem: VirtioMemory,
    rx: Queue,
    rx_notify: EventFd,
    tx: Queue,
    tx_notify: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
    stats: Arc<NetStats>,
    /// The receive queue may have a chain: the backend is polled.
    rx_ready: bool,
    /// A queue hit an error only a reset clears.
    rx_broken: bool,
    tx_broken: bool,
    /// The receive bounce buffer, longer than [`MAX_FRAME`] so a longer frame shows as one.
    frame: Vec<u8>,
    /// The driver's features.
    features: u64,
    /// The link state the driver was last told of.
    link_up: bool,
}

/// A chain's non-empty buffers: (address, length).
type Buffers = Vec<(GuestAddress, u32)>;

/// How one step of the receive loop went.
enum Outcome {
    /// A chain went to the used ring.
    Used,
    /// Something changed (a frame dropped, chains arrived): go on.
    Again,
    /// Nothing more can be done now (no frame, or no chain).
    Idle,
}

impl NetJob {
    pub(crate) fn new(
        backend: Arc<dyn NetBackend>,
        mem: VirtioMemory,
        rx: ActiveQueue,
        tx: ActiveQueue,
        interrupt: Arc<dyn VirtioInterrupt>,
        stats: Arc<NetStats>,
        features: u64,
    ) -> Self {
        NetJob {
            backend,
            mem,
            rx: rx.queue,
            rx_notify: rx.notify,
            tx: tx.queue,
            tx_notify: tx.notify,
            interrupt,
            stats,
            rx_ready: true,
            rx_broken: false,
            tx_broken: false,
            frame: vec![0u8; MAX_FRAME + 1],
            features,
            link_up: true,
        }
    }

    /// Whether the backend is polled (the receive queue may have a chain).
    #[cfg(test)]
    pub(crate) fn rx_ready(&self) -> bool {
        self.rx_ready
    }
}

impl WorkerJob for NetJob {
    fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.rx_notify.as_raw_fd(), self.tx_notify.as_raw_fd()];
        if self.rx_ready && self.backend.link_up() {
            fds.push(self.backend.rx_fd());
        }
        fds
    }

    fn write_fds(&self) -> Vec<RawFd> {
        if self.backend.tx_pending() {
            vec![self.backend.rx_fd()]
        } else {
            Vec::new()
        }
    }

    fn writable(&mut self, _i: usize) {
        self.process_tx();
    }

    fn start(&mut self) {
        // What the tap may hand the guest, from what the driver accepted.
        let offloads = tap_offloads(self.features);
        if let Err(e) = self.backend.set_offloads(offloads) {
            // The tap keeps handing over what it did: frames the driver did not negotiate are
            // dropped on receive (`fit_header`).
            iommu::warn_limited!(
                "{THREAD_NAME}: cannot set the tap's offloads to {offloads:#x}: {e}"
            );
        }
        // A link that went down before this activation: the driver reads it in the config.
        self.link_up = self.backend.link_up();
        // Anything already on the rings (a notification before DRIVER_OK took effect).
        self.process_tx();
        self.process_rx();
    }

    fn ready(&mut self, i: usize) {
        match i {
            FD_RX_NOTIFY => {
                // Non-blocking: an error is "nothing pending".
                let _ = self.rx_notify.read();
                self.rx_ready = true;
                self.process_rx();
            }
            FD_TX_NOTIFY => {
                let _ = self.tx_notify.read();
                self.process_tx();
            }
            FD_BACKEND => self.process_rx(),
            _ => {}
        }
        self.check_link();
    }
}

impl NetJob {
    /// Tells the driver (configuration change, virtio 1.2 section 5.1.4) when the backend's
    /// link went down.
    fn check_link(&mut self) {
        let up = self.backend.link_up();
        if up != self.link_up {
            self.link_up = up;
            self.interrupt.signal_config();
        }
    }

    /// Moves frames from the backend into receive chains until either runs out.
    pub(crate) fn process_rx(&mut self) {
        if self.rx_broken {
            self.rx_ready = false;
            return;
        }
        let mut used_any = false;
        loop {
            match self.receive_one() {
                Ok(Outcome::Used) => used_any = true,
                Ok(Outcome::Again) => {}
                Ok(Outcome::Idle) => break,
                Err(e) => {
                    self.rx_broken = true;
                    self.rx_ready = false;
                    queue_error(&*self.interrupt, RX_QUEUE, &e);
                    return;
                }
            }
        }
        if used_any {
            self.signal(RX_QUEUE);
        }
    }

    /// One frame into one chain, or why not.
    fn receive_one(&mut self) -> Result<Outcome, virtio_queue::Error> {
        if !self.backend.link_up() {
            // No carrier: the chains stay posted for a link that will not come back.
            self.rx_ready = false;
            return Ok(Outcome::Idle);
        }
        let chain = self.rx.iter(&self.mem)?.next();
        let Some(chain) = chain else {
            // Out of chains: ask for a notification when more come, and stop polling the
            // backend unless some came meanwhile.
            if self.rx.enable_notification(&self.mem)? {
                return Ok(Outcome::Again);
            }
            self.rx_ready = false;
            return Ok(Outcome::Idle);
        };
        let head = chain.head_index();
        let Some(buffers) = buffers(chain, true) else {
            return self.malformed(head, "receive chain has a device-readable buffer");
        };
        let capacity = total_len(&buffers);
        let n = match self.backend.read_frame(&mut self.frame) {
            Ok(n) => n,
            Err(e) => {
                // The chain stays for the next frame.
                self.rx.go_to_previous_position();
                if e.kind() != io::ErrorKind::WouldBlock {
                    // Stop polling a backend in error (a tap that went away) until the
                    // driver's next notification, rather than spin on it.
                    iommu::warn_limited!("{THREAD_NAME}: backend read: {e}");
                    self.rx_ready = false;
                }
                return Ok(Outcome::Idle);
            }
        };
        if n < VNET_HDR_LEN {
            // Not a frame the backend should give: dropped, the chain kept.
            self.rx.go_to_previous_position();
            NetStats::count(&self.stats.malformed);
            return Ok(Outcome::Again);
        }
        if n > MAX_FRAME || n as u64 > capacity {
            iommu::warn_limited!(
                "{THREAD_NAME}: a {n}-byte frame does not fit the {capacity}-byte receive chain {head}: dropped"
            );
            NetStats::count(&self.stats.rx_too_large);
            self.rx.go_to_previous_position();
            return Ok(Outcome::Again);
        }
        let frame = &mut self.frame[..n];
        if !fit_header(frame, self.features) {
            // Queued in the tap under an earlier activation's offloads.
            NetStats::count(&self.stats.rx_offload);
            self.rx.go_to_previous_position();
            return Ok(Outcome::Again);
        }
        let len = match translate(&self.mem, &buffers, n, Permissions::Write) {
            Ok(slices) => {
                copy_into(&slices, frame);
                NetStats::count(&self.stats.rx_frames);
                n as u32
            }
            Err(addr) => {
                iommu::warn_limited!(
                    "{THREAD_NAME}: receive buffer at {addr:#x} faulted: frame dropped"
                );
                NetStats::count(&self.stats.rx_fault);
                0
            }
        };
        self.rx.add_used(&self.mem, head, len)?;
        Ok(Outcome::Used)
    }

    /// Sends every available transmit chain, re-checking after re-enabling notifications so
    /// a chain added meanwhile is not left behind.
    pub(crate) fn process_tx(&mut self) {
        if self.tx_broken {
            return;
        }
        let mut used_any = false;
        let res = (|| -> Result<(), virtio_queue::Error> {
            loop {
                self.tx.disable_notification(&self.mem)?;
                // `iter` rather than `pop_descriptor_chain`, whose error log is not
                // rate-limited: a driver can make the avail index bad on every notification.
                loop {
                    if !self.backend_can_send() {
                        // Polled for POLLOUT (`write_fds`); the chains wait in the ring.
                        return Ok(());
                    }
                    let chain = self.tx.iter(&self.mem)?.next();
                    let Some(chain) = chain else { break };
                    let head = chain.head_index();
                    self.transmit(chain);
                    self.tx.add_used(&self.mem, head, 0)?;
                    used_any = true;
                }
                if !self.tx.enable_notification(&self.mem)? {
                    return Ok(());
                }
            }
        })();
        if let Err(e) = res {
            self.tx_broken = true;
            queue_error(&*self.interrupt, TX_QUEUE, &e);
            return;
        }
        if used_any {
            self.signal(TX_QUEUE);
        }
        self.check_link();
    }

    /// Whether the backend takes a frame now: a frame it holds from a short write goes
    /// first. A backend whose link is down takes (and drops) every frame.
    fn backend_can_send(&self) -> bool {
        if !self.backend.tx_pending() {
            return true;
        }
        match self.backend.flush() {
            Ok(done) => done,
            Err(e) => {
                iommu::warn_limited!("{THREAD_NAME}: backend write: {e}");
                !self.backend.tx_pending()
            }
        }
    }

    /// Sends one chain's frame (or drops it, counted).
    fn transmit(&self, chain: DescriptorChain<&VirtioMemory>) {
        let head = chain.head_index();
        let Some(buffers) = buffers(chain, false) else {
            return self.count_malformed(head, "transmit chain has a device-writable buffer");
        };
        let total = total_len(&buffers);
        if total < VNET_HDR_LEN as u64 || total > MAX_TX_FRAME as u64 {
            return self.count_malformed(
                head,
                "transmit chain shorter than the header or longer than 128 KiB",
            );
        }
        let slices = match translate(&self.mem, &buffers, total as usize, Permissions::Read) {
            Ok(s) => s,
            Err(addr) => {
                iommu::warn_limited!(
                    "{THREAD_NAME}: transmit buffer at {addr:#x} faulted: packet dropped"
                );
                return NetStats::count(&self.stats.tx_fault);
            }
        };
        match self.backend.write_frame(&slices) {
            Ok(_) => NetStats::count(&self.stats.tx_frames),
            Err(e) => {
                iommu::warn_limited!("{THREAD_NAME}: backend write: {e}");
                NetStats::count(&self.stats.tx_error);
            }
        }
    }

    fn count_malformed(&self, head: u16, what: &str) {
        iommu::warn_limited!("{THREAD_NAME}: {what} (head {head}): dropped");
        NetStats::count(&self.stats.malformed);
    }

    /// A malformed receive chain: returned empty.
    fn malformed(&mut self, head: u16, what: &str) -> Result<Outcome, virtio_queue::Error> {
        self.count_malformed(head, what);
        self.rx.add_used(&self.mem, head, 0)?;
        Ok(Outcome::Used)
    }

    fn signal(&mut self, index: u16) {
        let q = if index == RX_QUEUE {
            &mut self.rx
        } else {
            &mut self.tx
        };
        match q.needs_notification(&self.mem) {
            Ok(true) => self.interrupt.signal_queue(index),
            Ok(false) => {}
            Err(e) => queue_error(&*self.interrupt, index, &e),
        }
    }
}

/// Fits a received frame's header to the driver's `features` (section 5.1.6.4.1): without
/// GUEST_CSUM no checksum flag, without MRG_RXBUF `num_buffers` 1. False for a frame the
/// driver cannot take at all: a partial checksum without GUEST_CSUM, a segment to split of a
/// kind it did not accept.
fn fit_header(frame: &mut [u8], features: u64) -> bool {
    let flags = frame[HDR_FLAGS];
    if features & VIRTIO_NET_F_GUEST_CSUM == 0 {
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            return false;
        }
        frame[HDR_FLAGS] = flags & !HDR_CSUM_FLAGS;
    }
    let gso_ok = match frame[HDR_GSO_TYPE] & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => features & VIRTIO_NET_F_GUEST_TSO4 != 0,
        VIRTIO_NET_HDR_GSO_TCPV6 => features & VIRTIO_NET_F_GUEST_TSO6 != 0,
        _ => false,
    };
    // ECN segments need GUEST_ECN, never offered.
    if !gso_ok || frame[HDR_GSO_TYPE] & VIRTIO_NET_HDR_GSO_ECN != 0 {
        return false;
    }
    frame[HDR_NUM_BUFFERS..HDR_NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
    true
}

/// The chain's non-empty buffers, if all point the way the queue wants (`writable` for
/// receive, section 5.1.6.3; readable for transmit, 5.1.6.2).
fn buffers(chain: DescriptorChain<&VirtioMemory>, writable: bool) -> Option<Buffers> {
    let mut out = Vec::new();
    for d in chain {
        if d.is_write_only() != writable {
            return None;
        }
        if d.len() > 0 {
            out.push((d.addr(), d.len()));
        }
    }
    Some(out)
}

fn total_len(buffers: &[(GuestAddress, u32)]) -> u64 {
    buffers
        .iter()
        .fold(0u64, |acc, (_, len)| acc.saturating_add(u64::from(*len)))
}

/// The first `count` bytes of `buffers`, translated for `access`: every piece or the guest
/// address of the first that fails.
fn translate<'a>(
    mem: &'a VirtioMemory,
    buffers: &[(GuestAddress, u32)],
    count: usize,
    access: Permissions,
) -> Result<Vec<VolatileSlice<'a, ()>>, u64> {
    let mut out = Vec::new();
    let mut left = count;
    for (addr, len) in buffers {
        if left == 0 {
            break;
        }
        let want = (*len as usize).min(left);
        let mut got = 0usize;
        for s in mem.get_slices(*addr, want, access).map_err(|_| addr.0)? {
            let s = s.map_err(|_| addr.0)?;
            got += s.len();
            out.push(s);
        }
        if got != want {
            return Err(addr.0);
        }
        left -= want;
    }
    // Callers ask for at most the buffers' total.
    if left == 0 {
        Ok(out)
    } else {
        Err(0)
    }
}

/// Copies `frame` into the start of `slices` (which hold at least as many bytes).
fn copy_into(slices: &[VolatileSlice<'_, ()>], frame: &[u8]) {
    let mut pos = 0;
    for s in slices {
        let n = s.len().min(frame.len() - pos);
        s.copy_from(&frame[pos..pos + n]);
        pos += n;
    }
}

/// A queue the device cannot use: DEVICE_NEEDS_RESET.
fn queue_error(interrupt: &dyn VirtioInterrupt, index: u16, e: &virtio_queue::Error) {
    iommu::warn_limited!("{THREAD_NAME}: queue {index} unusable: {e}");
    interrupt.set_needs_reset();
}
