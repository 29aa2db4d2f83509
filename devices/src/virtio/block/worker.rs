//! The virtio-blk worker thread: waits on the queue's notify EventFd and a stop EventFd, pops
//! chains, serves each inline (`request::process`), returns it to the used ring and raises the
//! queue interrupt when `needs_notification` says so (EVENT_IDX aware).

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::DiskImage;
use super::request::{self, ChainLayout, Limits, RequestContext, VIRTIO_BLK_ID_BYTES};
use crate::virtio::VirtioInterrupt;

/// The thread's name, also its seccomp class key (`vmm/src/seccomp.rs`).
pub const THREAD_NAME: &str = "virtio-blk";

const TOKEN_NOTIFY: u64 = 0;
const TOKEN_STOP: u64 = 1;

pub(super) struct Worker<M> {
    pub mem: M,
    pub queue: Queue,
    pub queue_index: u16,
    pub notify: EventFd,
    pub disk: Arc<DiskImage>,
    pub serial: [u8; VIRTIO_BLK_ID_BYTES],
    pub writeback: Arc<AtomicBool>,
    pub limits: Limits,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// A running worker: `stop` signals it and joins it.
pub(super) struct WorkerHandle {
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl WorkerHandle {
    pub fn stop(self) {
        if let Err(e) = self.stop.write(1) {
            log::error!("virtio-blk: cannot signal the worker to stop: {e}");
            return;
        }
        if self.thread.join().is_err() {
            log::error!("virtio-blk: the worker panicked");
        }
    }
}

pub(super) fn spawn<M: GuestMemory + Send + 'static>(
    worker: Worker<M>,
) -> io::Result<WorkerHandle> {
    let stop = EventFd::new(EFD_NONBLOCK)?;
    let stop_worker = stop.try_clone()?;
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        worker.notify.as_raw_fd(),
        EpollEvent::new(EventSet::IN, TOKEN_NOTIFY),
    )?;
    epoll.ctl(
        ControlOperation::Add,
        stop_worker.as_raw_fd(),
        EpollEvent::new(EventSet::IN, TOKEN_STOP),
    )?;
    let thread = std::thread::Builder::new()
        .name(THREAD_NAME.to_string())
        .spawn(move || {
            crate::thread_started(THREAD_NAME);
            worker.run(&epoll);
            drop(stop_worker);
        })?;
    Ok(WorkerHandle { stop, thread })
}

impl<M: GuestMemory> Worker<M> {
    fn run(mut self, epoll: &Epoll) {
        // A notification sent before the worker existed is still in the EventFd; anything
        // already on the ring is served now either way.
        self.process_queue();
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-blk: epoll_wait failed, worker exits: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return,
                    _ => {
                        // Level-triggered: clear the count, then serve the ring.
                        let _ = self.notify.read();
                        self.process_queue();
                    }
                }
            }
        }
    }

    /// Serves every available chain, re-checking after re-enabling notifications so a chain
    /// added meanwhile is not left behind, then interrupts once if the driver wants it.
    pub(super) fn process_queue(&mut self) {
        let mut used_any = false;
        loop {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                iommu::warn_limited!("virtio-blk: queue unusable: {e}");
                return;
            }
            while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
                let head = chain.head_index();
                let layout = ChainLayout::from_descriptors(
                    chain.map(|d| (d.addr(), d.len(), d.is_write_only())),
                );
                let len = self.serve(head, layout);
                if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                    iommu::warn_limited!("virtio-blk: cannot return chain {head}: {e}");
                    return;
                }
                used_any = true;
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    iommu::warn_limited!("virtio-blk: queue unusable: {e}");
                    break;
                }
            }
        }
        if used_any {
            // On a ring the device cannot read, interrupt anyway: the driver then looks.
            if self.queue.needs_notification(&self.mem).unwrap_or(true) {
                self.interrupt.signal_queue(self.queue_index);
            }
        }
    }

    /// One chain's used length; a chain that cannot be answered goes back with length 0.
    fn serve(&self, head: u16, layout: Result<ChainLayout, request::ChainError>) -> u32 {
        let ctx = RequestContext {
            disk: &self.disk,
            serial: &self.serial,
            writeback: self.writeback.load(Ordering::Relaxed),
            limits: self.limits,
        };
        match layout.and_then(|l| request::process(&self.mem, &ctx, &l)) {
            Ok(len) => len,
            Err(e) => {
                iommu::warn_limited!("virtio-blk: dropped malformed chain at head {head}: {e}");
                0
            }
        }
    }
}
