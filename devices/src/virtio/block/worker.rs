//! The virtio-blk queue job, run by the device's worker thread ("virtio-blk",
//! [`crate::virtio::thread`]) while the device is active: on the queue's notification it pops
//! chains and hands them to the I/O pool (or serves them inline when it has none); on the
//! pool's completion EventFd it returns finished chains to the used ring and raises the queue
//! interrupt when `needs_notification` says so (EVENT_IDX aware).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use super::pool::{Completions, IoPool, RequestEnv};
use super::request::ChainLayout;
use crate::virtio::thread::WorkerJob;
use crate::virtio::VirtioInterrupt;

/// The worker thread's name, also its seccomp class key ("virtio-*", `vmm/src/seccomp.rs`).
pub const THREAD_NAME: &str = "virtio-blk";

pub(super) struct BlockJob<M> {
    pub env: Arc<RequestEnv<M>>,
    pub queue: Queue,
    pub queue_index: u16,
    pub notify: EventFd,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The I/O pool; `None` serves each chain inline on the worker thread.
    pub pool: Option<Arc<IoPool>>,
    /// This activation's requests in the pool.
    pub completions: Arc<Completions>,
}

impl<M: GuestMemory + Send + Sync + 'static> WorkerJob for BlockJob<M> {
    fn fds(&self) -> Vec<RawFd> {
        vec![self.notify.as_raw_fd(), self.completions.evt().as_raw_fd()]
    }

    fn start(&mut self) {
        // Anything already on the ring (a notification before DRIVER_OK took effect).
        self.process_queue();
    }

    fn ready(&mut self, i: usize) {
        if i == 0 {
            // Non-blocking: an error is "nothing pending".
            let _ = self.notify.read();
            self.process_queue();
        } else {
            self.complete();
        }
    }
}

impl<M> Drop for BlockJob<M> {
    /// The job ends (reset, FLR, a new activation): requests not started are dropped and the
    /// running ones finish before the worker thread acknowledges the stop.
    fn drop(&mut self) {
        self.completions.cancel_and_wait();
    }
}

impl<M: GuestMemory + Send + Sync + 'static> BlockJob<M> {
    /// Takes every available chain, re-checking after re-enabling notifications so a chain
    /// added meanwhile is not left behind.
    pub(super) fn process_queue(&mut self) {
        let mut used_any = false;
        loop {
            if let Err(e) = self.queue.disable_notification(&self.env.mem) {
                return self.queue_error(&e);
            }
            // `iter` rather than `pop_descriptor_chain`, whose error log is not rate-limited:
            // a driver can make the avail index bad on every notification.
            loop {
                let chain = match self.queue.iter(&self.env.mem) {
                    Ok(mut avail) => avail.next(),
                    Err(e) => return self.queue_error(&e),
                };
                let Some(chain) = chain else {
                    break;
                };
                let head = chain.head_index();
                let layout = ChainLayout::from_descriptors(
                    chain.map(|d| (d.addr(), d.len(), d.is_write_only())),
                );
                match &self.pool {
                    Some(pool) => pool.submit(&self.env, &self.completions, head, layout),
                    None => {
                        let len = self.env.serve(head, layout);
                        used_any |= self.add_used(head, len);
                    }
                }
            }
            match self.queue.enable_notification(&self.env.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return self.queue_error(&e),
            }
        }
        if used_any {
            self.signal_if_needed();
        }
    }

    /// Returns the pool's finished chains to the used ring.
    fn complete(&mut self) {
        let mut used_any = false;
        for d in self.completions.take() {
            used_any |= self.add_used(d.head, d.len);
        }
        if used_any {
            self.signal_if_needed();
        }
    }

    fn add_used(&mut self, head: u16, len: u32) -> bool {
        match self.queue.add_used(&self.env.mem, head, len) {
            Ok(()) => true,
            Err(e) => {
                self.queue_error(&e);
                false
            }
        }
    }

    fn signal_if_needed(&mut self) {
        match self.queue.needs_notification(&self.env.mem) {
            Ok(true) => self.interrupt.signal_queue(self.queue_index),
            Ok(false) => {}
            Err(e) => self.queue_error(&e),
        }
    }

    /// A ring the device cannot use (a bad avail index, a ring the IOMMU refuses): the
    /// device needs a reset (virtio 1.2 section 2.1.2).
    fn queue_error(&self, e: &virtio_queue::Error) {
        iommu::warn_limited!("virtio-blk: queue {} unusable: {e}", self.queue_index);
        self.interrupt.set_needs_reset();
    }
}
