//! virtio-blk tests of the device around the requests: the backend's open rules, the config
//! space and features, and the worker over a driver-side mock queue.

use super::*;

// --- the backend's open rules ---

#[test]
fn open_second_read_write_on_locked_image_fails_naming_the_lock() {
    let t = image_file();
    let _first = open(&t, false);
    let err = DiskImage::open(t.as_path(), false).unwrap_err();
    assert!(matches!(err, BackendError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("LOCK_EX"), "{err}");
}

#[test]
fn open_read_only_on_image_locked_read_write_fails() {
    let t = image_file();
    let _first = open(&t, false);
    let err = DiskImage::open(t.as_path(), true).unwrap_err();
    assert!(matches!(err, BackendError::Locked { .. }), "{err}");
}

#[test]
fn open_two_read_only_share_the_image() {
    let t = image_file();
    let _first = open(&t, true);
    assert!(DiskImage::open(t.as_path(), true).is_ok());
}

#[test]
fn open_after_first_user_closes_succeeds() {
    let t = image_file();
    drop(open(&t, false));
    assert!(DiskImage::open(t.as_path(), false).is_ok());
}

#[test]
fn open_missing_file_fails_naming_the_path() {
    let err = DiskImage::open(std::path::Path::new("/nonexistent/disk.img"), false).unwrap_err();
    assert!(matches!(err, BackendError::Open { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
}

#[test]
fn open_error_permission_denied_read_write_is_read_only_file() {
    let t = image_file();
    let err = backend::open_error(
        t.as_path(),
        false,
        std::io::Error::from_raw_os_error(libc::EACCES),
    );
    assert!(matches!(err, BackendError::ReadOnlyFile { .. }), "{err}");
    assert!(err.to_string().contains("readonly=on"), "{err}");
}

#[test]
fn open_image_not_multiple_of_512_rounds_capacity_down() {
    let t = image_file();
    t.as_file().set_len(IMAGE_SECTORS * 512 + 100).unwrap();
    assert_eq!(open(&t, false).capacity_sectors(), IMAGE_SECTORS);
}

// --- features and config space ---

fn block(read_only: bool) -> (TempFile, Block) {
    let t = image_file();
    let b = Block::new(open(&t, read_only), Some("disk-serial")).unwrap();
    (t, b)
}

fn config_u32(b: &Block, offset: u64) -> u32 {
    let mut v = [0u8; 4];
    b.read_config(offset, &mut v);
    u32::from_le_bytes(v)
}

#[test]
fn config_reports_capacity_blk_size_seg_max_little_endian() {
    let (_t, b) = block(false);
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), IMAGE_SECTORS);
    assert_eq!(config_u32(&b, 20), 512);
    assert_eq!(config_u32(&b, 12), SEG_MAX);
    assert_eq!(config_u32(&b, 36), MAX_DISCARD_SECTORS);
    assert_eq!(config_u32(&b, 52), MAX_DISCARD_SEG);
}

#[test]
fn config_read_past_end_is_zero() {
    let (_t, b) = block(false);
    let mut v = [0xffu8; 8];
    b.read_config(56, &mut v);
    assert_eq!(v, [1, 0, 0, 0, 0, 0, 0, 0]);
    b.read_config(u64::MAX, &mut v);
    assert_eq!(v, [0; 8]);
}

#[test]
fn config_write_writeback_toggles_and_other_writes_are_dropped() {
    let (_t, mut b) = block(false);
    b.write_config(32, &[0]);
    let mut wb = [0xffu8];
    b.read_config(32, &mut wb);
    assert_eq!(wb, [0]);
    b.write_config(0, &[1, 2, 3, 4]);
    b.write_config(32, &[7]);
    b.read_config(32, &mut wb);
    assert_eq!(wb, [0]);
    assert_eq!(config_u32(&b, 0), IMAGE_SECTORS as u32);
}

#[test]
fn features_read_only_offer_ro_and_no_discard() {
    let (_t, b) = block(true);
    assert_ne!(b.features() & VIRTIO_BLK_F_RO, 0);
    assert_eq!(
        b.features() & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
    let (_t, b) = block(false);
    assert_eq!(b.features() & VIRTIO_BLK_F_RO, 0);
    let want = VIRTIO_BLK_F_FLUSH
        | crate::virtio::VIRTIO_RING_F_INDIRECT_DESC
        | VIRTIO_BLK_F_BLK_SIZE
        | VIRTIO_BLK_F_SEG_MAX
        | VIRTIO_BLK_F_DISCARD
        | VIRTIO_BLK_F_WRITE_ZEROES;
    assert_eq!(b.features() & want, want);
    assert_eq!(b.device_type(), 2);
}

// --- the queue and the worker ---

/// VRING_DESC_F_NEXT / VRING_DESC_F_WRITE (virtio 1.2 section 2.7.5).
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const QSIZE: u16 = 16;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// The used ring's `idx` and element `i` as (id, len).
fn used(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> (u16, u32, u32) {
    let base = q.used_addr().0;
    let idx: u16 = mem.read_obj(GuestAddress(base + 2)).unwrap();
    let id: u32 = mem.read_obj(GuestAddress(base + 4 + 8 * i)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(base + 8 + 8 * i)).unwrap();
    (idx, id, len)
}

/// A block job over `mq` with no I/O pool: every chain is served on the calling thread.
fn inline_job(
    mem: &GuestMemoryMmap,
    mq: &MockSplitQueue<GuestMemoryMmap>,
    t: &TempFile,
    interrupt: Arc<CountingInterrupt>,
) -> BlockJob<GuestMemoryMmap> {
    BlockJob {
        env: Arc::new(RequestEnv {
            mem: mem.clone(),
            disk: Arc::new(open(t, false)),
            serial: SERIAL,
            writeback: Arc::new(AtomicBool::new(true)),
            limits: LIMITS,
        }),
        queue: mq.create_queue::<Queue>().unwrap(),
        queue_index: 0,
        notify: EventFd::new(0).unwrap(),
        interrupt,
        pool: None,
        completions: Arc::new(Completions::new(EventFd::new(0).unwrap())),
    }
}

#[derive(Default)]
struct CountingInterrupt {
    queue_signals: AtomicU32,
    needs_reset: AtomicU32,
    seen: Mutex<Vec<u16>>,
}

impl VirtioInterrupt for CountingInterrupt {
    fn signal_queue(&self, index: u16) {
        self.queue_signals.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(index);
    }
    fn signal_config(&self) {}
    fn set_needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn malformed_chain_dropped_with_len_0_and_next_chain_served() {
    let mem = memory();
    let t = image_file();
    let mq = MockSplitQueue::new(&mem, QSIZE);
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    // Chain 0: header only, no status. Chain 1 (descriptors 1..3): a valid GET_ID.
    mq.add_desc_chains(
        &[
            desc(HDR, 16, 0, 0),
            desc(HDR, 16, F_NEXT, 2),
            desc(DATA, 20, F_WRITE | F_NEXT, 3),
            desc(STATUS, 1, F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let interrupt = Arc::new(CountingInterrupt::default());
    let mut w = inline_job(&mem, &mq, &t, interrupt.clone());
    w.process_queue();
    assert_eq!(used(&mem, &mq, 0), (2, 0, 0));
    assert_eq!(used(&mem, &mq, 1), (2, 1, 21));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    assert_eq!(guest_bytes(&mem, DATA, 20), SERIAL.to_vec());
    assert_eq!(interrupt.queue_signals.load(Ordering::SeqCst), 1);
}

fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn activated_worker_serves_a_notified_chain_and_reset_stops_it() {
    let mem = memory();
    let t = image_file();
    let mq = MockSplitQueue::new(&mem, QSIZE);
    let mut b = Block::new(open(&t, false), None).unwrap();
    let notify = EventFd::new(0).unwrap();
    let kick = notify.try_clone().unwrap();
    let interrupt = Arc::new(CountingInterrupt::default());
    b.activate(ActivateContext {
        memory: VirtioMemory::Direct(mem.clone()),
        queues: vec![ActiveQueue {
            index: 0,
            queue: mq.create_queue::<Queue>().unwrap(),
            notify,
        }],
        features: 0,
        interrupt: interrupt.clone(),
    })
    .unwrap();
    assert!(b.is_active());

    header(&mem, VIRTIO_BLK_T_IN, 9);
    mq.add_desc_chains(
        &[
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 512, F_WRITE | F_NEXT, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    kick.write(1).unwrap();
    assert!(wait_for(
        || interrupt.queue_signals.load(Ordering::SeqCst) == 1
    ));
    assert_eq!(used(&mem, &mq, 0), (1, 0, 513));
    assert_eq!(guest_bytes(&mem, DATA, 512), vec![9u8; 512]);
    assert_eq!(*interrupt.seen.lock().unwrap(), vec![0]);

    b.reset();
    assert!(!b.is_active());
    // A chain posted after the reset is not served: no worker is left to see the kick.
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    mq.add_desc_chains(&[desc(HDR, 16, F_NEXT, 4), desc(STATUS, 1, F_WRITE, 0)], 3)
        .unwrap();
    kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(used(&mem, &mq, 0).0, 1);
    assert_eq!(status(&mem), 0xff);
}

#[test]
fn activate_without_queue_fails() {
    let (_t, mut b) = block(false);
    let err = b
        .activate(ActivateContext {
            memory: VirtioMemory::Direct(memory()),
            queues: vec![],
            features: 0,
            interrupt: Arc::new(CountingInterrupt::default()),
        })
        .unwrap_err();
    assert!(matches!(err, ActivateError::MissingQueue(0)));
    assert!(!b.is_active());
}

#[test]
fn activated_pool_completes_every_chain_of_a_batch() {
    let mem = memory();
    let t = image_file();
    let mq = MockSplitQueue::new(&mem, QSIZE);
    let mut b = Block::new(open(&t, false), None).unwrap();
    let notify = EventFd::new(0).unwrap();
    let kick = notify.try_clone().unwrap();
    let interrupt = Arc::new(CountingInterrupt::default());
    // Five reads (3 descriptors each): sector i into DATA + i * 0x1000, status at STATUS + i.
    let mut descs = Vec::new();
    for i in 0..5u16 {
        let hdr = HDR + u64::from(i) * 0x100;
        let mut h = [0u8; HEADER_LEN];
        h[8..16].copy_from_slice(&u64::from(i).to_le_bytes());
        mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        let base = i * 3;
        descs.push(desc(hdr, 16, F_NEXT, base + 1));
        descs.push(desc(
            DATA + u64::from(i) * 0x1000,
            512,
            F_WRITE | F_NEXT,
            base + 2,
        ));
        descs.push(desc(STATUS + u64::from(i), 1, F_WRITE, 0));
    }
    mq.add_desc_chains(&descs, 0).unwrap();
    b.activate(ActivateContext {
        memory: VirtioMemory::Direct(mem.clone()),
        queues: vec![ActiveQueue {
            index: 0,
            queue: mq.create_queue::<Queue>().unwrap(),
            notify,
        }],
        features: 0,
        interrupt: interrupt.clone(),
    })
    .unwrap();
    kick.write(1).unwrap();
    assert!(wait_for(|| used(&mem, &mq, 0).0 == 5));
    let mut heads: Vec<u32> = (0..5).map(|i| used(&mem, &mq, i).1).collect();
    heads.sort_unstable();
    assert_eq!(heads, vec![0, 3, 6, 9, 12]);
    for i in 0..5u64 {
        assert_eq!(used(&mem, &mq, i).2, 513);
        assert_eq!(
            guest_bytes(&mem, DATA + i * 0x1000, 512),
            vec![i as u8; 512]
        );
        assert_eq!(guest_bytes(&mem, STATUS + i, 1), vec![VIRTIO_BLK_S_OK]);
    }
    b.reset();
}

#[test]
fn avail_index_past_queue_size_sets_needs_reset_and_serves_nothing() {
    let mem = memory();
    let t = image_file();
    let mq = MockSplitQueue::new(&mem, QSIZE);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    mq.add_desc_chains(&[desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)], 0)
        .unwrap();
    // The driver's avail idx claims QSIZE + 5 new chains: more than the ring holds.
    mem.write_obj(QSIZE + 5, mq.avail_addr().unchecked_add(2))
        .unwrap();
    let interrupt = Arc::new(CountingInterrupt::default());
    let mut w = inline_job(&mem, &mq, &t, interrupt.clone());
    w.process_queue();
    assert_eq!(used(&mem, &mq, 0).0, 0);
    assert_eq!(status(&mem), 0xff);
    assert_eq!(interrupt.needs_reset.load(Ordering::SeqCst), 1);
    // Once the driver writes a sane index, the same queue serves the chain.
    mem.write_obj(1u16, mq.avail_addr().unchecked_add(2))
        .unwrap();
    w.process_queue();
    assert_eq!(used(&mem, &mq, 0), (1, 0, 1));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
}

#[test]
fn reset_restores_write_back() {
    let (_t, mut b) = block(false);
    b.write_config(32, &[0]);
    b.reset();
    let mut wb = [0u8];
    b.read_config(32, &mut wb);
    assert_eq!(wb, [1]);
}

#[test]
fn indirect_chain_is_served_like_a_direct_one() {
    let mem = memory();
    let t = image_file();
    let mq = MockSplitQueue::new(&mem, QSIZE);
    header(&mem, VIRTIO_BLK_T_IN, 11);
    // The indirect table (virtio 1.2 section 2.7.5.3): header, data, status.
    let table = 0x6_0000u64;
    for (i, d) in [
        desc(HDR, 16, F_NEXT, 1),
        desc(DATA, 512, F_WRITE | F_NEXT, 2),
        desc(STATUS, 1, F_WRITE, 0),
    ]
    .into_iter()
    .enumerate()
    {
        mem.write_obj(d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    // VIRTQ_DESC_F_INDIRECT (2.7.5.3).
    mq.add_desc_chains(&[desc(table, 48, 4, 0)], 0).unwrap();
    let interrupt = Arc::new(CountingInterrupt::default());
    let mut w = inline_job(&mem, &mq, &t, interrupt);
    w.process_queue();
    assert_eq!(used(&mem, &mq, 0), (1, 0, 513));
    assert_eq!(guest_bytes(&mem, DATA, 512), vec![11u8; 512]);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
}
