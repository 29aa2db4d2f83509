//! virtio-net (virtio 1.2 section 5.1) over a tap device or a stream socket to passt
//! ([`stream`]): one receive and one transmit queue, no control queue. Over a tap, the 12-byte `virtio_net_hdr_v1` (5.1.6) is the tap's own
//! vnet header (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ` 12), so frames pass between the rings and
//! the tap with no translation of the header.
//!
//! Offloads (5.1.6.2, 5.1.6.4): checksum and TSO both ways. The device offers CSUM and
//! HOST_TSO4/6 (the guest may hand the tap partial checksums and 64 KiB TCP segments, which
//! the host stack finishes) and GUEST_CSUM and GUEST_TSO4/6 (the tap may hand the guest the
//! same). What the tap may send is set from what the driver accepted (`TUNSETOFFLOAD`, as
//! QEMU's `virtio_net_apply_guest_offloads`) when the worker starts the job: nothing until
//! then, so a guest is never handed what it did not negotiate. Over a stream socket no header
//! travels, so none of these is offered.
//!
//! Link status (5.1.4): LINK_UP while the backend's peer is there; when a stream peer goes
//! away the bit clears and a configuration change interrupt tells the driver.
//!
//! The work runs on the device's thread ("virtio-net", [`super::thread`]), started with the
//! device and parked until activation: it polls the queues' notification eventfds and, while
//! the receive queue has buffers, the tap ([`worker`]).

mod backend;
pub mod stream;
pub mod tap;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;

pub use backend::NetBackend;
pub use stream::{Stream, StreamError};
pub use tap::{Tap, TapError};
use worker::NetJob;

use super::thread::WorkerThread;
use super::{
    read_config_bytes, ActivateContext, ActivateError, VirtioDevice, TYPE_NET,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// VIRTIO_NET_F_CSUM: the device takes packets with a partial checksum (virtio 1.2 section
/// 5.1.3).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// VIRTIO_NET_F_GUEST_CSUM: the driver takes packets with a partial checksum (5.1.3).
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// VIRTIO_NET_F_GUEST_TSO4: the driver takes TCPv4 segments to split (5.1.3).
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
/// VIRTIO_NET_F_GUEST_TSO6: the driver takes TCPv6 segments to split (5.1.3).
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
/// VIRTIO_NET_F_HOST_TSO4: the device takes TCPv4 segments to split (5.1.3).
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
/// VIRTIO_NET_F_HOST_TSO6: the device takes TCPv6 segments to split (5.1.3).
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
/// VIRTIO_NET_F_MTU: the configuration `mtu` field is valid (virtio 1.2 section 5.1.3).
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
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
/// VIRTIO_NET_HDR_F_NEEDS_CSUM: `csum_start`/`csum_offset` say where to finish the checksum
/// (section 5.1.6).
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 0x1;
/// VIRTIO_NET_HDR_F_DATA_VALID: the checksum was checked (section 5.1.6).
const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 0x2;
/// The header flags only a driver with GUEST_CSUM may see (section 5.1.6.4.1).
const HDR_CSUM_FLAGS: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID;
/// Offset of `gso_type` in the header (section 5.1.6).
const HDR_GSO_TYPE: usize = 1;
/// `gso_type` values (section 5.1.6).
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;
/// Offset of `num_buffers` in the header (section 5.1.6).
const HDR_NUM_BUFFERS: usize = 10;

/// The largest frame the device receives, header included: the 65562-byte buffer section
/// 5.1.6.3.1 asks of a driver for a GSO receive (a header, an Ethernet header and 64 KiB).
pub const MAX_FRAME: usize = 65_562;
/// The largest transmit chain sent (a 64 KiB TSO segment with a VLAN tag and some slack): the
/// tap refuses what it cannot take, this only bounds the work one chain asks for.
pub const MAX_TX_FRAME: usize = 128 * 1024;

/// TUN_F_CSUM / TUN_F_TSO4 / TUN_F_TSO6: what the tap's reader takes
/// (include/uapi/linux/if_tun.h).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// The tap offloads the driver's `features` allow: TSO only with checksums (QEMU's rule).
pub fn tap_offloads(features: u64) -> u32 {
    if features & VIRTIO_NET_F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = TUN_F_CSUM;
    if features & VIRTIO_NET_F_GUEST_TSO4 != 0 {
        f |= TUN_F_TSO4;
    }
    if features & VIRTIO_NET_F_GUEST_TSO6 != 0 {
        f |= TUN_F_TSO6;
    }
    f
}

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
    pub const MAX_VIRTQUEUE_PAIRS: usize = 8;
    pub const MTU: usize = 10;
    /// Up to and including `status` without an MTU; up to and including `mtu` with one.
    pub const LEN: usize = 8;
    pub const LEN_WITH_MTU: usize = 12;
}

/// The largest MTU the device may offer: an Ethernet frame of it (with a VLAN tag) and the
/// header fit [`MAX_FRAME`]. passt's own limit, 65520, is below it.
pub const MAX_MTU: u16 = 65_520;

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
    /// than [`MAX_TX_FRAME`]).
    pub malformed: AtomicU64,
    /// Packets the tap refused.
    pub tx_error: AtomicU64,
    /// Received frames with an offload (partial checksum, segment to split) the driver did
    /// not negotiate.
    pub rx_offload: AtomicU64,
    /// Frames moved each way.
    pub rx_frames: AtomicU64,
    pub tx_frames: AtomicU64,
}

impl NetStats {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A virtio-net device over one backend (a tap, a stream socket).
pub struct Net {
    mac: [u8; 6],
    backend: Arc<dyn NetBackend>,
    queue_sizes: [u16; 2],
    stats: Arc<NetStats>,
    worker: WorkerThread<NetJob>,
    active: bool,
    /// The MTU offered (VIRTIO_NET_F_MTU), if any.
    mtu: Option<u16>,
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
            mtu: None,
        })
    }

    /// Offers `mtu` (VIRTIO_NET_F_MTU, section 5.1.4; at most [`MAX_MTU`]): the driver sizes
    /// its interface and, above 1500, posts receive chains for 64 KiB frames. For a backend
    /// whose peer takes frames that large (passt with `--mtu`).
    pub fn with_mtu(mut self, mtu: u16) -> Self {
        self.mtu = Some(mtu.clamp(68, MAX_MTU));
        self
    }

    /// The drop and frame counters.
    pub fn stats(&self) -> &Arc<NetStats> {
        &self.stats
    }

    /// Whether the device was activated and not reset since.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The configuration space: up to `status`, or up to `mtu` when one is offered.
    fn config_space(&self) -> Vec<u8> {
        let mut c = vec![0u8; config::LEN];
        if let Some(mtu) = self.mtu {
            c.resize(config::LEN_WITH_MTU, 0);
            // One queue pair (section 5.1.4: valid with MQ or RSS, neither offered; 1 anyway).
            c[config::MAX_VIRTQUEUE_PAIRS..config::MAX_VIRTQUEUE_PAIRS + 2]
                .copy_from_slice(&1u16.to_le_bytes());
            c[config::MTU..config::MTU + 2].copy_from_slice(&mtu.to_le_bytes());
        }
        c[config::MAC..config::MAC + 6].copy_from_slice(&self.mac);
        let status = if self.backend.link_up() {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        c[config::STATUS..config::STATUS + 2].copy_from_slice(&status.to_le_bytes());
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
        let offloads = if self.backend.has_vnet_hdr() {
            VIRTIO_NET_F_CSUM
                | VIRTIO_NET_F_GUEST_CSUM
                | VIRTIO_NET_F_GUEST_TSO4
                | VIRTIO_NET_F_GUEST_TSO6
                | VIRTIO_NET_F_HOST_TSO4
                | VIRTIO_NET_F_HOST_TSO6
        } else {
            0
        };
        let mtu = if self.mtu.is_some() {
            VIRTIO_NET_F_MTU
        } else {
            0
        };
        offloads
            | mtu
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
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
            ctx.features,
        );
        self.worker.start(job).map_err(ActivateError::Worker)?;
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}
