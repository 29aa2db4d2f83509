//! The virtio-blk I/O pool, QEMU's `aio=threads` model: a few threads take parsed chains from a
//! channel, run them (`request::process`: translation, `preadv`/`pwritev`/`fdatasync`/
//! `fallocate`, the status byte) and hand back `(head, used length)` through a list and an
//! EventFd the queue worker waits on. Requests complete out of order, which virtio allows.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::DiskImage;
use super::request::{self, ChainError, ChainLayout, Limits, RequestContext, VIRTIO_BLK_ID_BYTES};

/// The I/O threads' name, also their seccomp class key (`vmm/src/seccomp.rs`).
pub const IO_THREAD_NAME: &str = "virtio-blk-io";

/// Everything a request runs against; each I/O thread has its own copy.
pub(super) struct RequestEnv<M> {
    pub mem: M,
    pub disk: Arc<DiskImage>,
    pub serial: [u8; VIRTIO_BLK_ID_BYTES],
    pub writeback: Arc<AtomicBool>,
    pub limits: Limits,
}

impl<M: Clone> Clone for RequestEnv<M> {
    fn clone(&self) -> Self {
        RequestEnv {
            mem: self.mem.clone(),
            disk: Arc::clone(&self.disk),
            serial: self.serial,
            writeback: Arc::clone(&self.writeback),
            limits: self.limits,
        }
    }
}

impl<M: GuestMemory> RequestEnv<M> {
    /// One chain's used length; a chain that cannot be answered goes back with length 0.
    pub fn serve(&self, head: u16, layout: Result<ChainLayout, ChainError>) -> u32 {
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

/// A popped chain, sorted into its two streams (or why it could not be).
pub(super) struct Job {
    pub head: u16,
    pub layout: Result<ChainLayout, ChainError>,
}

/// A finished chain: its head and used length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Done {
    pub head: u16,
    pub len: u32,
}

pub(super) struct IoPool {
    jobs: Option<mpsc::Sender<Job>>,
    done: Arc<Mutex<Vec<Done>>>,
    done_evt: EventFd,
    threads: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Starts `threads` I/O threads, each with a copy of `env`.
    pub fn new<M: GuestMemory + Clone + Send + 'static>(
        env: &RequestEnv<M>,
        threads: usize,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut pool = IoPool {
            jobs: Some(tx),
            done: Arc::new(Mutex::new(Vec::new())),
            done_evt: EventFd::new(EFD_NONBLOCK)?,
            threads: Vec::with_capacity(threads),
        };
        for _ in 0..threads {
            let env = env.clone();
            let rx = Arc::clone(&rx);
            let done = Arc::clone(&pool.done);
            let done_evt = pool.done_evt.try_clone()?;
            // On an error here, dropping `pool` closes the channel and joins those started.
            pool.threads.push(
                std::thread::Builder::new()
                    .name(IO_THREAD_NAME.to_string())
                    .spawn(move || {
                        crate::thread_started(IO_THREAD_NAME);
                        io_thread(&env, &rx, &done, &done_evt);
                    })?,
            );
        }
        Ok(pool)
    }

    /// Queues `job`; gives it back if no I/O thread is left to take it.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// The EventFd written after each completion.
    pub fn done_fd(&self) -> RawFd {
        self.done_evt.as_raw_fd()
    }

    /// The chains finished since the last call.
    pub fn take_done(&self) -> Vec<Done> {
        let _ = self.done_evt.read();
        std::mem::take(&mut *self.done.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for IoPool {
    /// Closes the channel and waits for the threads: each finishes the request it holds (no
    /// byte moves into guest memory after the device is reset).
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("virtio-blk: an I/O thread panicked");
            }
        }
    }
}

fn io_thread<M: GuestMemory>(
    env: &RequestEnv<M>,
    rx: &Mutex<mpsc::Receiver<Job>>,
    done: &Mutex<Vec<Done>>,
    done_evt: &EventFd,
) {
    loop {
        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else {
            return;
        };
        let len = env.serve(job.head, job.layout);
        done.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Done {
                head: job.head,
                len,
            });
        if let Err(e) = done_evt.write(1) {
            log::error!("virtio-blk: cannot signal a completion: {e}");
        }
    }
}
