//! PLACEHOLDER until the `virtio` branch lands: the transport contract as agreed, so the
//! block device builds. Replaced by the transport's own mod.rs at the merge.

use std::sync::Arc;

pub mod block;

/// Placeholder for the transport's (possibly translated) view of guest memory.
pub type VirtioMemory = vm_memory::GuestMemoryMmap;

pub trait VirtioDevice: Send {
    fn device_type(&self) -> u16;
    fn queue_max_sizes(&self) -> &[u16];
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    fn reset(&mut self);
}

pub struct ActivateContext {
    pub memory: VirtioMemory,
    pub queues: Vec<ActiveQueue>,
    pub features: u64,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

pub struct ActiveQueue {
    pub index: u16,
    pub queue: virtio_queue::Queue,
    pub notify: vmm_sys_util::eventfd::EventFd,
}

pub trait VirtioInterrupt: Send + Sync {
    fn signal_queue(&self, index: u16);
    fn signal_config(&self);
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("Bad activation: {0}")]
    Bad(String),
}
