//! The virtio-blk I/O pool, QEMU's `aio=threads` model: a few threads, started with the device
//! (the vCPUs that activate it run sandboxed and cannot start threads), take requests from a
//! channel and run them (`request::process`: translation, `preadv`/`pwritev`/`fdatasync`/
//! `fallocate`, the status byte). Each activation collects its finished chains in its own
//! [`Completions`], which the queue worker drains when its EventFd fires; requests complete
//! out of order, which virtio allows.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use super::backend::DiskImage;
use super::request::{self, ChainError, ChainLayout, Limits, RequestContext, VIRTIO_BLK_ID_BYTES};

/// The I/O threads' name, also their seccomp class key ("virtio-*", `vmm/src/seccomp.rs`).
pub const IO_THREAD_NAME: &str = "virtio-blk-io";

/// Everything a request runs against during one activation.
pub(super) struct RequestEnv<M> {
    pub mem: M,
    pub disk: Arc<DiskImage>,
    pub serial: [u8; VIRTIO_BLK_ID_BYTES],
    pub writeback: Arc<AtomicBool>,
    pub limits: Limits,
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

/// A finished chain: its head and used length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Done {
    pub head: u16,
    pub len: u32,
}

#[derive(Default)]
struct Pending {
    done: Vec<Done>,
    /// Requests handed to the pool and not finished.
    in_flight: usize,
}

/// One activation's requests in the pool: what finished, what is still out, and whether the
/// activation ended (then requests not yet started are dropped without touching memory).
pub(super) struct Completions {
    pending: Mutex<Pending>,
    idle: Condvar,
    cancelled: AtomicBool,
    /// Written after each completion; the queue worker waits on it.
    evt: EventFd,
}

impl Completions {
    pub fn new(evt: EventFd) -> Self {
        Completions {
            pending: Mutex::new(Pending::default()),
            idle: Condvar::new(),
            cancelled: AtomicBool::new(false),
            evt,
        }
    }

    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self) {
        self.lock().in_flight += 1;
    }

    fn finish(&self, done: Option<Done>) {
        let mut p = self.lock();
        p.done.extend(done);
        p.in_flight = p.in_flight.saturating_sub(1);
        if p.in_flight == 0 {
            self.idle.notify_all();
        }
        drop(p);
        if let Err(e) = self.evt.write(1) {
            log::error!("virtio-blk: cannot signal a completion: {e}");
        }
    }

    /// The chains finished since the last call.
    pub fn take(&self) -> Vec<Done> {
        // Non-blocking: an error is "nothing pending".
        let _ = self.evt.read();
        std::mem::take(&mut self.lock().done)
    }

    /// Ends the activation: requests not started are dropped, and this waits for those
    /// running, so no byte moves into guest memory once it returns.
    pub fn cancel_and_wait(&self) {
        self.cancelled.store(true, Ordering::Release);
        let mut p = self.lock();
        while p.in_flight > 0 {
            p = self.idle.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

type Task = Box<dyn FnOnce() + Send>;

/// The device's I/O threads, alive from the device's creation to its drop.
pub(super) struct IoPool {
    tasks: Option<mpsc::Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Starts `threads` I/O threads.
    pub fn new(threads: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let mut pool = IoPool {
            tasks: Some(tx),
            threads: Vec::with_capacity(threads),
        };
        for _ in 0..threads {
            let rx = Arc::clone(&rx);
            // On an error here, dropping `pool` closes the channel and joins those started.
            pool.threads.push(
                std::thread::Builder::new()
                    .name(IO_THREAD_NAME.to_string())
                    .spawn(move || {
                        crate::thread_started(IO_THREAD_NAME);
                        io_thread(&rx);
                    })?,
            );
        }
        Ok(pool)
    }

    /// Runs chain `head` of the activation `env`/`done` on an I/O thread (inline when no I/O
    /// thread is left).
    pub fn submit<M: GuestMemory + Send + Sync + 'static>(
        &self,
        env: &Arc<RequestEnv<M>>,
        done: &Arc<Completions>,
        head: u16,
        layout: Result<ChainLayout, ChainError>,
    ) {
        done.begin();
        let (env, done) = (Arc::clone(env), Arc::clone(done));
        let task: Task = Box::new(move || {
            if done.cancelled.load(Ordering::Acquire) {
                done.finish(None);
            } else {
                let len = env.serve(head, layout);
                done.finish(Some(Done { head, len }));
            }
        });
        match &self.tasks {
            Some(tx) => {
                if let Err(mpsc::SendError(task)) = tx.send(task) {
                    task();
                }
            }
            None => task(),
        }
    }
}

impl Drop for IoPool {
    /// Closes the channel and waits for the threads.
    fn drop(&mut self) {
        self.tasks = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("virtio-blk: an I/O thread panicked");
            }
        }
    }
}

fn io_thread(rx: &Mutex<mpsc::Receiver<Task>>) {
    loop {
        let task = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match task {
            Ok(task) => {
                // A request writes guest memory: not while the VM is paused.
                let _busy = crate::quiesce::vm_gate().enter();
                task()
            }
            Err(_) => return,
        }
    }
}
