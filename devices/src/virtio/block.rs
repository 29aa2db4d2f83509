//! virtio-blk (virtio 1.2 section 5.2) over a raw image file: one request queue, a worker
//! thread off the vCPU that pops chains, and a pool of [`IO_THREADS`] threads doing the I/O
//! (QEMU's `aio=threads` model), completing out of order.
//! The request layer ([`request`]) is generic over vm-memory's `GuestMemory`, so the same code
//! runs over plain guest memory and over the vIOMMU-translated view.

mod backend;
mod pool;
pub mod request;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use backend::{BackendError, DiskImage, SECTOR_SIZE};
use pool::{Completions, IoPool, RequestEnv};
use request::{Limits, VIRTIO_BLK_ID_BYTES};
use worker::BlockJob;

use super::thread::WorkerThread;
use super::{
    read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VirtioMemory, TYPE_BLOCK,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// VIRTIO_BLK_F_SEG_MAX: `seg_max` is valid (virtio 1.2 section 5.2.3).
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_RO: the device is read-only (section 5.2.3).
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// VIRTIO_BLK_F_BLK_SIZE: `blk_size` is valid (section 5.2.3).
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// VIRTIO_BLK_F_FLUSH: the FLUSH command (section 5.2.3).
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// VIRTIO_BLK_F_CONFIG_WCE: `writeback` can be toggled (section 5.2.3).
pub const VIRTIO_BLK_F_CONFIG_WCE: u64 = 1 << 11;
/// VIRTIO_BLK_F_DISCARD (section 5.2.3).
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
/// VIRTIO_BLK_F_WRITE_ZEROES (section 5.2.3).
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// I/O threads per device (QEMU's pool grows to 64; four keep a 4 KiB random-read queue of
/// depth 32 busy on a small host without a thread per request).
pub const IO_THREADS: usize = 4;
/// The one request queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request: the queue size less the header and status descriptors (what
/// Linux's virtio_blk assumes without indirect descriptors).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Sectors per discard/write-zeroes segment (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Segments per discard/write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Discard alignment in sectors: 4 KiB, the usual file-system block a hole is punched in.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// `struct virtio_blk_config` byte offsets (virtio 1.2 section 5.2.4).
mod config {
    pub const CAPACITY: usize = 0;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const WRITEBACK: usize = 32;
    pub const NUM_QUEUES: usize = 34;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    /// Up to and including `unused1`; the secure-erase and zoned fields are not offered.
    pub const LEN: usize = 60;
}

const LIMITS: Limits = Limits {
    max_discard_sectors: MAX_DISCARD_SECTORS,
    max_discard_seg: MAX_DISCARD_SEG,
    max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
    max_write_zeroes_seg: MAX_DISCARD_SEG,
};

/// A virtio-blk device over one raw image.
pub struct Block {
    disk: Arc<DiskImage>,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
    /// `writeback` in the config space: shared with the requests, which read it per write.
    writeback: Arc<AtomicBool>,
    queue_sizes: [u16; 1],
    /// Written by the I/O threads after each completion (one per device, lent to each
    /// activation).
    done_evt: EventFd,
    /// Dropped before `pool`: its job may still have requests in the pool.
    worker: WorkerThread<BlockJob<VirtioMemory>>,
    pool: Arc<IoPool>,
    active: bool,
}

impl Block {
    /// A device over `disk`; `serial` is the GET_ID answer, cut to 20 bytes and NUL-padded
    /// (empty when `None`, as QEMU without `serial=`). Starts the worker thread and the
    /// [`IO_THREADS`] I/O threads, parked until the driver activates the device: make the
    /// device during setup, as vCPU threads (which activate it) cannot start threads.
    pub fn new(disk: DiskImage, serial: Option<&str>) -> std::io::Result<Self> {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        if let Some(s) = serial {
            let n = s.len().min(VIRTIO_BLK_ID_BYTES);
            id[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        Ok(Block {
            disk: Arc::new(disk),
            serial: id,
            writeback: Arc::new(AtomicBool::new(true)),
            queue_sizes: [QUEUE_SIZE],
            done_evt: EventFd::new(EFD_NONBLOCK)?,
            worker: WorkerThread::spawn(worker::THREAD_NAME)?,
            pool: Arc::new(IoPool::new(IO_THREADS)?),
            active: false,
        })
    }

    /// Whether the device was activated and not reset since.
    pub fn is_active(&self) -> bool {
        self.active
    }

    fn config_space(&self) -> [u8; config::LEN] {
        let mut c = [0u8; config::LEN];
        let put32 = |c: &mut [u8; config::LEN], at: usize, v: u32| {
            c[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        c[config::CAPACITY..config::CAPACITY + 8]
            .copy_from_slice(&self.disk.capacity_sectors().to_le_bytes());
        put32(&mut c, config::SEG_MAX, SEG_MAX);
        put32(&mut c, config::BLK_SIZE, SECTOR_SIZE as u32);
        c[config::WRITEBACK] = u8::from(self.writeback.load(Ordering::Relaxed));
        c[config::NUM_QUEUES..config::NUM_QUEUES + 2].copy_from_slice(&1u16.to_le_bytes());
        put32(
            &mut c,
            config::MAX_DISCARD_SECTORS,
            LIMITS.max_discard_sectors,
        );
        put32(&mut c, config::MAX_DISCARD_SEG, LIMITS.max_discard_seg);
        put32(
            &mut c,
            config::DISCARD_SECTOR_ALIGNMENT,
            DISCARD_SECTOR_ALIGNMENT,
        );
        put32(
            &mut c,
            config::MAX_WRITE_ZEROES_SECTORS,
            LIMITS.max_write_zeroes_sectors,
        );
        put32(
            &mut c,
            config::MAX_WRITE_ZEROES_SEG,
            LIMITS.max_write_zeroes_seg,
        );
        c[config::WRITE_ZEROES_MAY_UNMAP] = 1;
        c
    }

    /// Ends the running job, if any: when this returns no request touches guest memory.
    fn stop_worker(&mut self) {
        if self.active {
            self.worker.stop();
            self.active = false;
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let common = VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_CONFIG_WCE
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX;
        if self.disk.read_only() {
            common | VIRTIO_BLK_F_RO
        } else {
            common | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    /// Only `writeback` is writable (section 5.2.4: with CONFIG_WCE, 0 write-through,
    /// 1 write-back); anything else is dropped.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (o, [v @ (0 | 1)]) if o == config::WRITEBACK as u64 => {
                self.writeback.store(*v == 1, Ordering::Relaxed);
            }
            _ => iommu::warn_limited!(
                "virtio-blk: dropped a config write of {} bytes at {offset:#x}",
                data.len()
            ),
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.stop_worker();
        let event_idx = ctx.features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = ctx.queues.into_iter();
        let Some(mut q) = queues.next() else {
            return Err(ActivateError::MissingQueue(0));
        };
        q.queue.set_event_idx(event_idx);
        let env = Arc::new(RequestEnv {
            mem: ctx.memory,
            disk: Arc::clone(&self.disk),
            serial: self.serial,
            writeback: Arc::clone(&self.writeback),
            limits: LIMITS,
        });
        let job = BlockJob {
            env,
            queue: q.queue,
            queue_index: q.index,
            notify: q.notify,
            interrupt: ctx.interrupt,
            pool: Some(Arc::clone(&self.pool)),
            completions: Arc::new(Completions::new(
                self.done_evt.try_clone().map_err(ActivateError::Worker)?,
            )),
        };
        self.worker.start(job).map_err(ActivateError::Worker)?;
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.writeback.store(true, Ordering::Relaxed);
    }
}
