//! Virtio devices (virtio 1.2) over the modern virtio-pci transport.
//!
//! A device type implements [`VirtioDevice`]: its feature bits, config space and queues. The
//! transport (`pci::VirtioPciDevice`) owns everything the driver negotiates (status, features,
//! queue setup, MSI-X) and, at DRIVER_OK, hands the device an [`ActivateContext`]: the memory it
//! reaches ([`VirtioMemory`], translated by the vIOMMU when ACCESS_PLATFORM was negotiated), its
//! queues with their notification eventfds, and the interrupt to signal.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

pub mod block;
pub mod common_config;
pub mod memory;
pub mod net;
pub mod pci;
pub mod rng;
pub mod thread;

pub use memory::VirtioMemory;

/// Device type of a network card (virtio 1.2 section 5).
pub const TYPE_NET: u16 = 1;
/// Device type of a block device (virtio 1.2 section 5).
pub const TYPE_BLOCK: u16 = 2;
/// Device type of an entropy source (virtio 1.2 section 5).
pub const TYPE_ENTROPY: u16 = 4;

/// The device complies with virtio 1.0+ (virtio 1.2 section 6.1, bit 32).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The device's DMA goes through the platform's IOMMU (virtio 1.2 section 6.1, bit 33).
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
/// Indirect descriptors (virtio 1.2 section 6.1, bit 28).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// used_event / avail_event suppression (virtio 1.2 section 6.1, bit 29).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// One device type's model, driven by the transport.
pub trait VirtioDevice: Send {
    /// virtio 1.2 section 5: 1 network, 2 block, 4 entropy.
    fn device_type(&self) -> u16;
    /// One entry per queue: the largest size the device supports.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device-type feature bits; the transport adds VERSION_1 / ACCESS_PLATFORM.
    fn features(&self) -> u64;
    /// Reads the device-specific config space at `offset` (bytes past its end read 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific config space (the device drops what it does not accept).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device at DRIVER_OK. Runs on a vCPU thread, which is sandboxed and cannot
    /// start threads: a device starts its worker threads when it is made and hands them
    /// their work here ([`thread::WorkerThread`]).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Device reset / FLR: stops workers and returns to the pre-activate state. When it
    /// returns, no worker touches guest memory or signals an interrupt for the old setup.
    fn reset(&mut self);
}

/// What the device gets at DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory as the device sees it.
    pub memory: VirtioMemory,
    /// The queues the driver enabled, set up and validated.
    pub queues: Vec<ActiveQueue>,
    /// The features the driver accepted (device-type bits and transport bits).
    pub features: u64,
    /// The device's interrupts.
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// One enabled queue.
pub struct ActiveQueue {
    /// Its index among the device's queues.
    pub index: u16,
    pub queue: virtio_queue::Queue,
    /// Written by the driver's notification of this queue.
    pub notify: EventFd,
}

/// A device's interrupts: used-buffer notifications per queue and config changes.
pub trait VirtioInterrupt: Send + Sync {
    /// Used-buffer notification of queue `index` (virtio 1.2 section 2.3).
    fn signal_queue(&self, index: u16);
    /// Configuration change notification (virtio 1.2 section 2.3).
    fn signal_config(&self);
    /// The device hit an error it cannot recover from: DEVICE_NEEDS_RESET (virtio 1.2
    /// section 2.1.2) and a configuration change notification. The default only notifies.
    fn set_needs_reset(&self) {
        self.signal_config();
    }
}

/// Why a device did not start. The transport sets DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("virtio: queue {0} is required and was not enabled")]
    MissingQueue(u16),
    #[error("virtio: cannot start the worker thread: {0}")]
    Worker(std::io::Error),
    #[error("virtio: {0}")]
    Other(String),
}

/// Reads `data.len()` bytes of a device configuration space `space` from `offset` on (virtio
/// 1.2 section 4.1.4.6); bytes past its end read as zero.
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|at| space.get(at).copied())
            .unwrap_or(0);
    }
}
