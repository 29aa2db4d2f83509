//! The virtio-blk queue worker, a thread per device off the vCPU: waits on the queue's notify
//! EventFd, the I/O pool's completion EventFd and a stop EventFd; pops chains and hands them to
//! the pool (or serves them inline when it has none), returns finished chains to the used ring
//! and raises the queue interrupt when `needs_notification` says so (EVENT_IDX aware).

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::pool::{IoPool, Job, RequestEnv};
use super::request::ChainLayout;
use crate::virtio::VirtioInterrupt;

/// The thread's name, also its seccomp class key (`vmm/src/seccomp.rs`).
pub const THREAD_NAME: &str = "virtio-blk";

const TOKEN_NOTIFY: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_DONE: u64 = 2;

pub(super) struct Worker<M> {
    pub env: RequestEnv<M>,
    pub queue: Queue,
    pub queue_index: u16,
    pub notify: EventFd,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The I/O pool; `None` serves each chain inline on the worker thread.
    pub pool: Option<IoPool>,
}

/// A running worker: `stop` signals it and joins it (and, through it, its I/O pool).
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
    let mut fds = vec![
        (worker.notify.as_raw_fd(), TOKEN_NOTIFY),
        (stop_worker.as_raw_fd(), TOKEN_STOP),
    ];
    if let Some(pool) = &worker.pool {
        fds.push((pool.done_fd(), TOKEN_DONE));
    }
    for (fd, token) in fds {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
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
        // Anything already on the ring (a notification sent before the worker existed) is
        // served now.
        self.process_queue();
        let mut events = [EpollEvent::default(); 3];
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
                    // Dropping `self` drops the pool, which joins the I/O threads.
                    TOKEN_STOP => return,
                    TOKEN_DONE => self.complete(),
                    _ => {
                        let _ = self.notify.read();
                        self.process_queue();
                    }
                }
            }
        }
    }

    /// Takes every available chain, re-checking after re-enabling notifications so a chain
    /// added meanwhile is not left behind.
    pub(super) fn process_queue(&mut self) {
        let mut used_any = false;
        loop {
            if let Err(e) = self.queue.disable_notification(&self.env.mem) {
                iommu::warn_limited!("virtio-blk: queue unusable: {e}");
                self.interrupt.set_needs_reset();
                return;
            }
            // `iter` rather than `pop_descriptor_chain`, whose error log is not rate-limited:
            // a driver can make the avail index bad on every notification.
            loop {
                let chain = match self.queue.iter(&self.env.mem) {
                    Ok(mut avail) => avail.next(),
                    Err(e) => {
                        iommu::warn_limited!("virtio-blk: avail ring unusable: {e}");
                        self.interrupt.set_needs_reset();
                        return;
                    }
                };
                let Some(chain) = chain else {
                    break;
                };
                let head = chain.head_index();
                let layout = ChainLayout::from_descriptors(
                    chain.map(|d| (d.addr(), d.len(), d.is_write_only())),
                );
                let job = Job { head, layout };
                let job = match &self.pool {
                    Some(pool) => match pool.submit(job) {
                        Ok(()) => continue,
                        Err(job) => job,
                    },
                    None => job,
                };
                let len = self.env.serve(job.head, job.layout);
                used_any |= self.add_used(head, len);
            }
            match self.queue.enable_notification(&self.env.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    iommu::warn_limited!("virtio-blk: queue unusable: {e}");
                    self.interrupt.set_needs_reset();
                    break;
                }
            }
        }
        if used_any {
            self.signal_if_needed();
        }
    }

    /// Returns the pool's finished chains to the used ring.
    fn complete(&mut self) {
        let done = match &self.pool {
            Some(pool) => pool.take_done(),
            None => return,
        };
        let mut used_any = false;
        for d in done {
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
                iommu::warn_limited!("virtio-blk: cannot return chain {head}: {e}");
                self.interrupt.set_needs_reset();
                false
            }
        }
    }

    fn signal_if_needed(&mut self) {
        // On a ring the device cannot read, interrupt anyway: the driver then looks.
        if self.queue.needs_notification(&self.env.mem).unwrap_or(true) {
            self.interrupt.signal_queue(self.queue_index);
        }
    }
}
