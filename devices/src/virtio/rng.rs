//! virtio-rng, the entropy device (virtio 1.2 section 5.4): one request queue whose
//! device-writable buffers the device fills with random bytes from the host's getrandom(2).
//! The work runs on the device's own thread ("virtio-rng", started with the device and parked
//! until activation, [`super::thread`]), woken by the queue's notification eventfd, never on
//! a vCPU. Each request gets at most [`MAX_BYTES_PER_REQUEST`]
//! bytes (the used length says how many, 5.4.6.1). A chain with a device-readable buffer is
//! malformed: it is completed with nothing written, with a rate-limited warning, and the
//! queue goes on. A buffer the device may not write (a translation fault, memory that is not
//! RAM) ends the request there: what was written before it is reported, nothing after.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemory, Permissions, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

use super::thread::{WorkerJob, WorkerThread};
use super::{
    ActivateContext, ActivateError, VirtioDevice, VirtioInterrupt, VirtioMemory, TYPE_ENTROPY,
};

/// The request queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// The most random bytes one request gets (bounds the work a guest asks of the host per
/// notification: a queue of 256 requests is at most 16 MiB).
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
/// The thread's name (its seccomp class is chosen by it).
pub const THREAD_NAME: &str = "virtio-rng";

/// The entropy device.
pub struct Rng {
    queue_sizes: [u16; 1],
    worker: WorkerThread<RngWorker>,
}

impl Rng {
    /// The device and its worker thread, parked until the driver activates the device (the
    /// thread must be started before the vCPUs, which activate devices, run sandboxed).
    pub fn new() -> std::io::Result<Self> {
        Ok(Rng {
            queue_sizes: [QUEUE_SIZE],
            worker: WorkerThread::spawn(THREAD_NAME)?,
        })
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        TYPE_ENTROPY
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    /// No device-type features (5.4.3).
    fn features(&self) -> u64 {
        0
    }

    /// No configuration space (5.4.4).
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let active = ctx
            .queues
            .into_iter()
            .find(|q| q.index == 0)
            .ok_or(ActivateError::MissingQueue(0))?;
        let job = RngWorker {
            queue: active.queue,
            notify: active.notify,
            memory: ctx.memory,
            interrupt: ctx.interrupt,
        };
        self.worker.start(job).map_err(ActivateError::Worker)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }
}

/// The worker thread's job while the device is active.
pub(crate) struct RngWorker {
    pub(crate) queue: Queue,
    pub(crate) notify: EventFd,
    pub(crate) memory: VirtioMemory,
    pub(crate) interrupt: Arc<dyn VirtioInterrupt>,
}

impl WorkerJob for RngWorker {
    fn fds(&self) -> Vec<RawFd> {
        vec![self.notify.as_raw_fd()]
    }

    fn start(&mut self) {
        self.process_queue();
    }

    fn ready(&mut self, _: usize) {
        // Non-blocking: an error is "nothing pending".
        let _ = self.notify.read();
        self.process_queue();
    }
}

impl RngWorker {
    /// Completes every available request; signals the driver if it wants to know.
    pub(crate) fn process_queue(&mut self) {
        let mem = &self.memory;
        let mut used_any = false;
        loop {
            if let Err(e) = self.queue.disable_notification(mem) {
                return self.queue_error(&e);
            }
            loop {
                // iter(), not pop_descriptor_chain(), which logs a guest's bad avail index
                // without a rate limit and hides it.
                let chain = match self.queue.iter(mem) {
                    Ok(mut avail) => avail.next(),
                    Err(e) => return self.queue_error(&e),
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let written = fill_chain(chain);
                if let Err(e) = self.queue.add_used(mem, head, written) {
                    return self.queue_error(&e);
                }
                used_any = true;
            }
            match self.queue.enable_notification(mem) {
                // More arrived meanwhile.
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return self.queue_error(&e),
            }
        }
        if used_any {
            match self.queue.needs_notification(mem) {
                Ok(true) => self.interrupt.signal_queue(0),
                Ok(false) => {}
                Err(e) => self.queue_error(&e),
            }
        }
    }

    /// The rings themselves are out of reach (unmapped by the guest): the device can go no
    /// further until the driver resets it.
    fn queue_error(&self, e: &virtio_queue::Error) {
        iommu::warn_limited!("{THREAD_NAME}: queue: {e}");
        self.interrupt.set_needs_reset();
    }
}

/// Fills the chain's writable buffers with random bytes, up to [`MAX_BYTES_PER_REQUEST`];
/// returns how many bytes were written (0 for a malformed chain).
fn fill_chain(chain: DescriptorChain<&VirtioMemory>) -> u32 {
    let mem = chain.memory();
    let descriptors: Vec<_> = chain.clone().collect();
    if descriptors.iter().any(|d| !d.is_write_only()) {
        iommu::warn_limited!(
            "{THREAD_NAME}: request {} has a device-readable buffer: dropped",
            chain.head_index()
        );
        return 0;
    }
    let mut written = 0usize;
    for d in descriptors {
        if written >= MAX_BYTES_PER_REQUEST {
            break;
        }
        let want = (d.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
        if want == 0 {
            continue;
        }
        // Every page of the buffer translated before a byte is written.
        let slices = match mem.get_slices(d.addr(), want, Permissions::Write) {
            Ok(s) => s,
            Err(e) => {
                iommu::warn_limited!("{THREAD_NAME}: buffer at {:#x}: {e}", d.addr().0);
                break;
            }
        };
        let slices: Result<Vec<_>, _> = slices.collect();
        let Ok(slices) = slices else {
            break;
        };
        let mut done = 0;
        for s in &slices {
            let n = fill_random(s);
            done += n;
            if n < s.len() {
                break;
            }
        }
        written += done;
        if done < want {
            break;
        }
    }
    written as u32
}

/// Fills `slice` from getrandom(2); returns the bytes written (less on a host error).
fn fill_random(slice: &VolatileSlice<'_, ()>) -> usize {
    let mut buf = [0u8; 4096];
    let mut done = 0;
    while done < slice.len() {
        let n = (slice.len() - done).min(buf.len());
        // SAFETY: getrandom writes at most `n` bytes into `buf`, which holds 4096 >= n.
        let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), n, 0) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            iommu::warn_limited!("{THREAD_NAME}: getrandom: {e}");
            return done;
        }
        let got = got as usize;
        match slice.offset(done) {
            Ok(dst) => dst.copy_from(&buf[..got]),
            Err(_) => return done,
        }
        done += got;
    }
    done
}

#[cfg(test)]
mod tests;
