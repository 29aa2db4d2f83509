//! virtio-net (virtio 1.2 section 5.1) over a tap device: one receive and one transmit queue,
//! no control queue, no offloads. The 12-byte `virtio_net_hdr_v1` (5.1.6) is the tap's own
//! vnet header (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ` 12), so frames pass between the rings and
//! the tap with no translation of the header.
//!
//! Offloads: none are offered (no CSUM, GUEST_CSUM, TSO, UFO), and the tap is told so at
//! open (`TUNSETOFFLOAD` 0), so the host stack hands the tap whole, checksummed frames and a
//! guest that negotiated nothing gets nothing it must finish. Wiring the offloads from the
//! negotiated features is a later step (it needs the ioctl at activation, in the worker's
//! sandbox).
//!
//! The work runs on the device's thread ("virtio-net", [`super::thread`]), started with the
//! device and parked until activation: it polls the queues' notification eventfds and, while
//! the receive queue has buffers, the tap ([`worker`]).

mod backend;
pub mod tap;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;

pub use backend::NetBackend;
pub use tap::{Tap, TapError};
use worker::NetJob;

use super::thread::WorkerThread;
use super::{
    ActivateContext, ActivateError, VirtioDevice, TYPE_NET, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};

/// VIRTIO_NET_F_MAC: the device has a given MAC address (virtio 1.2 section 5.1.3).
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_STATUS: the configuration `status` field is valid (section 5.1.3).
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// VIRTIO_NET_S_LINK_UP in the configuration `status` (section 5.1.4).
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `struct virtio_net_hdr_v1` (section 5.1.6): flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `flags` in the header (section 5.1.6).
const HDR_FLAGS: usize = 0;
/// Offset of `num_buffers` in the header (section 5.1.6).
const HDR_NUM_BUFFERS: usize = 10;

/// The largest frame the device moves, header included: the 65562-byte buffer section
/// 5.1.6.3.1 asks of a driver for a GSO receive (a header, an Ethernet header and 64 KiB).
pub const MAX_FRAME: usize = 65_562;

/// Receive queue index (section 5.1.2: receiveq1).
pub const RX_QUEUE: u16 = 0;
/// Transmit queue index (section 5.1.2: transmitq1).
pub const TX_QUEUE: u16 = 1;
/// Each queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// The worker thread's name (its seccomp class is chosen by it).
pub const THREAD_NAME: &str = "virtio-net";

/// `struct virtio_net_config` byte offsets (section 5.1.4).
mod config {
    pub const MAC: usize = 0;
    pub const STATUS: usize = 6;
    /// Up to and including `status`: `max_virtqueue_pairs`, `mtu` and the rest are not offered.
    pub const LEN: usize = 8;
}

/// Frames and packets the device dropped, by cause.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Received frames larger than the receive chain offered for them.
    pub rx_too_large: AtomicU64,
    /// Received frames whose buffer the IOMMU (or the memory map) refused.
    pub rx_fault: AtomicU64,
    /// Transmit chains with a buffer the IOMMU refused.
    pub tx_fault: AtomicU64,
    /// Malformed chains (a buffer in the wrong direction, shorter than the header, longer
    /// than [`MAX_FRAME`]).
    pub malformed: AtomicU64,
    /// Packets the tap refused.
    pub tx_error: AtomicU64,
    /// Frames moved each way.
    pub rx_frames: AtomicU64,
    pub tx_frames: AtomicU64,
}

impl NetStats {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A virtio-net device over one backend (a tap).
pub struct Net {
    mac: [u8; 6],
    backend: Arc<dyn NetBackend>,
    queue_sizes: [u16; 2],
    stats: Arc<NetStats>,
    worker: WorkerThread<NetJob>,
    active: bool,
}

impl Net {
    /// A device with address `mac` over `backend`; starts the worker thread, parked until the
    /// driver activates the device (make the device during setup: the vCPU threads that
    /// activate it cannot start threads).
    pub fn new(backend: Arc<dyn NetBackend>, mac: [u8; 6]) -> std::io::Result<Self> {
        Ok(Net {
            mac,
            backend,
            queue_sizes: [QUEUE_SIZE; 2],
            stats: Arc::new(NetStats::default()),
            worker: WorkerThread::spawn(THREAD_NAME)?,
            active: false,
        })
    }

    /// The drop and frame counters.
    pub fn stats(&self) -> &Arc<NetStats> {
        &self.stats
    }

    /// Whether the device was activated and not reset since.
    pub fn is_active(&self) -> bool {
        self.active
    }

    fn config_space(&self) -> [u8; config::LEN] {
        let mut c = [0u8; config::LEN];
        c[config::MAC..config::MAC + 6].copy_from_slice(&self.mac);
        c[config::STATUS..config::STATUS + 2].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        c
    }

    fn stop_worker(&mut self) {
        if self.active {
            self.worker.stop();
            self.active = false;
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let space = self.config_space();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| space.get(at).copied())
                .unwrap_or(0);
        }
    }

    /// Section 5.1.4.2: the driver must not write the MAC of a modern device (it sets one
    /// with the control queue, which is not offered); every write is dropped.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        iommu::warn_limited!(
            "{THREAD_NAME}: dropped a config write of {} bytes at {offset:#x}",
            data.len()
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.stop_worker();
        let event_idx = ctx.features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut rx = None;
        let mut tx = None;
        for mut q in ctx.queues {
            q.queue.set_event_idx(event_idx);
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::MissingQueue(RX_QUEUE))?;
        let tx = tx.ok_or(ActivateError::MissingQueue(TX_QUEUE))?;
        let job = NetJob::new(
            Arc::clone(&self.backend),
            ctx.memory,
            rx,
            tx,
            ctx.interrupt,
            Arc::clone(&self.stats),
        );
        self.worker.start(job).map_err(ActivateError::Worker)?;
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}
