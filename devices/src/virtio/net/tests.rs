//! virtio-net tests: the job over driver-side mock queues and an in-memory backend, guest
//! memory built here (direct, and translated through a page table), the config space, the
//! device's worker thread, and the tap itself (ignored: it needs CAP_NET_ADMIN).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::NetJob;
use super::*;
use crate::virtio::memory::testing::{guest_memory, translated_dma, PageTable, IOVA_SHIFT, PAGE};
use crate::virtio::thread::WorkerJob;
use crate::virtio::{ActiveQueue, VirtioInterrupt, VirtioMemory};

/// Descriptor flags (virtio 1.2 section 2.7.5).
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const QSIZE: u16 = 16;
/// Where the transmit queue's rings are (the receive queue's are at 0).
const TX_RINGS: u64 = 0x8_0000;
const BUF: u64 = 0x2_0000;
const BUF2: u64 = 0x3_0000;

/// An in-memory backend: frames to receive, frames sent; its fd is readable while frames
/// wait.
struct Fake {
    rx: Mutex<VecDeque<Vec<u8>>>,
    tx: Mutex<Vec<Vec<u8>>>,
    evt: EventFd,
    offloads: Mutex<Vec<u32>>,
}

impl Fake {
    fn new() -> Arc<Self> {
        Arc::new(Fake {
            rx: Mutex::new(VecDeque::new()),
            tx: Mutex::new(Vec::new()),
            evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            offloads: Mutex::new(Vec::new()),
        })
    }

    fn push(&self, frame: Vec<u8>) {
        self.rx.lock().unwrap().push_back(frame);
        self.evt.write(1).unwrap();
    }

    fn waiting(&self) -> usize {
        self.rx.lock().unwrap().len()
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        self.tx.lock().unwrap().clone()
    }
}

impl NetBackend for Fake {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rx = self.rx.lock().unwrap();
        let Some(f) = rx.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if rx.is_empty() {
            let _ = self.evt.read();
        }
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }

    fn write_frame(&self, bufs: &[VolatileSlice<'_, ()>]) -> io::Result<usize> {
        let mut frame = Vec::new();
        for b in bufs {
            let mut v = vec![0u8; b.len()];
            b.copy_to(&mut v[..]);
            frame.extend_from_slice(&v);
        }
        let n = frame.len();
        self.tx.lock().unwrap().push(frame);
        Ok(n)
    }

    fn rx_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    fn set_offloads(&self, offloads: u32) -> io::Result<()> {
        self.offloads.lock().unwrap().push(offloads);
        Ok(())
    }
}

#[derive(Default)]
struct Signals {
    queues: Mutex<Vec<u16>>,
    needs_reset: AtomicBool,
}

impl VirtioInterrupt for Signals {
    fn signal_queue(&self, index: u16) {
        self.queues.lock().unwrap().push(index);
    }
    fn signal_config(&self) {}
    fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
    }
}

impl Signals {
    fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }
    fn queues(&self) -> Vec<u16> {
        self.queues.lock().unwrap().clone()
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A queue over `mock`'s rings, at their addresses plus `shift`.
fn queue(mock: &MockSplitQueue<'_, GuestMemoryMmap>, shift: u64) -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    let split = |a: GuestAddress| {
        let a = a.0 + shift;
        (Some(a as u32), Some((a >> 32) as u32))
    };
    let (lo, hi) = split(mock.desc_table_addr());
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(mock.avail_addr());
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(mock.used_addr());
    q.set_used_ring_address(lo, hi);
    q.set_ready(true);
    q
}

fn active(index: u16, queue: Queue) -> ActiveQueue {
    ActiveQueue {
        index,
        queue,
        notify: EventFd::new(EFD_NONBLOCK).unwrap(),
    }
}

/// The used ring's entries so far, as (id, len).
fn used(mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = mock.used().idx().load();
    (0..n)
        .map(|i| {
            let e = mock.used().ring().ref_at(i.into()).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

fn bytes(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    mem.read_slice(&mut b, GuestAddress(at)).unwrap();
    b
}

/// A frame: a vnet header with DATA_VALID set and num_buffers left as 0xffff, then `payload`
/// bytes counting up.
fn frame(payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = 0x2;
    f[10] = 0xff;
    f[11] = 0xff;
    f.extend((0..payload).map(|i| i as u8));
    f
}

/// Guest memory, its two queues (RX rings at 0, TX rings at TX_RINGS), a backend and the
/// job over them.
struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    backend: Arc<Fake>,
    signals: Arc<Signals>,
    stats: Arc<NetStats>,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        Rig {
            mem,
            rx: MockSplitQueue::new(mem, QSIZE),
            tx: MockSplitQueue::create(mem, GuestAddress(TX_RINGS), QSIZE),
            backend: Fake::new(),
            signals: Arc::new(Signals::default()),
            stats: Arc::new(NetStats::default()),
        }
    }

    /// The job over direct memory, no feature negotiated.
    fn job(&self) -> NetJob {
        self.job_with(0)
    }

    /// The job over direct memory, the driver having accepted `features`.
    fn job_with(&self, features: u64) -> NetJob {
        self.job_over(VirtioMemory::Direct(self.mem.clone()), 0, features)
    }

    /// The job over `view`, the rings at their addresses plus `shift`.
    fn job_over(&self, view: VirtioMemory, shift: u64, features: u64) -> NetJob {
        NetJob::new(
            self.backend.clone(),
            view,
            active(RX_QUEUE, queue(&self.rx, shift)),
            active(TX_QUEUE, queue(&self.tx, shift)),
            self.signals.clone(),
            self.stats.clone(),
            features,
        )
    }

    /// The job through a page table mapping the rings (not the buffers).
    fn translated_job(&self) -> (NetJob, Arc<PageTable>) {
        let table = Arc::new(PageTable::default());
        table.map(0, PAGE);
        table.map(TX_RINGS, PAGE);
        let view = VirtioMemory::Translated(translated_dma(self.mem, &table));
        (self.job_over(view, IOVA_SHIFT, 0), table)
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

// --- transmit ---

#[test]
fn tx_chain_reaches_the_backend_header_and_all() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let f = frame(60);
    mem.write_slice(&f[..VNET_HDR_LEN], GuestAddress(BUF))
        .unwrap();
    mem.write_slice(&f[VNET_HDR_LEN..], GuestAddress(BUF2))
        .unwrap();
    rig.tx
        .add_desc_chains(
            &[
                desc(BUF, VNET_HDR_LEN as u32, F_NEXT, 1),
                desc(BUF2, 60, 0, 0),
            ],
            0,
        )
        .unwrap();
    let mut job = rig.job();
    job.process_tx();
    assert_eq!(rig.backend.sent(), vec![f]);
    assert_eq!(used(&rig.tx), vec![(0, 0)]);
    assert_eq!(rig.signals.queues(), vec![TX_QUEUE]);
    assert_eq!(count(&rig.stats.tx_frames), 1);
}

#[test]
fn tx_chain_with_a_writable_buffer_is_malformed_and_not_sent() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.tx
        .add_desc_chains(&[desc(BUF, 12, F_NEXT, 1), desc(BUF2, 60, F_WRITE, 0)], 0)
        .unwrap();
    let mut job = rig.job();
    job.process_tx();
    assert!(rig.backend.sent().is_empty());
    assert_eq!(used(&rig.tx), vec![(0, 0)]);
    assert_eq!(count(&rig.stats.malformed), 1);
}

#[test]
fn tx_chain_shorter_than_the_header_is_not_sent() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.tx.add_desc_chains(&[desc(BUF, 11, 0, 0)], 0).unwrap();
    let mut job = rig.job();
    job.process_tx();
    assert!(rig.backend.sent().is_empty());
    assert_eq!(used(&rig.tx), vec![(0, 0)]);
}

#[test]
fn tx_fault_mid_chain_sends_nothing_and_completes_the_chain() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let (mut job, table) = rig.translated_job();
    // The header's page is mapped, the payload's is not.
    table.map(BUF, PAGE);
    rig.tx
        .add_desc_chains(
            &[
                desc(BUF + IOVA_SHIFT, 12, F_NEXT, 1),
                desc(BUF2 + IOVA_SHIFT, 60, 0, 0),
            ],
            0,
        )
        .unwrap();
    job.process_tx();
    assert!(rig.backend.sent().is_empty());
    assert_eq!(used(&rig.tx), vec![(0, 0)]);
    assert_eq!(count(&rig.stats.tx_fault), 1);
    assert!(table.faults() >= 1);
    assert!(!rig.signals.needs_reset());
}

#[test]
fn tx_avail_index_past_the_ring_sets_needs_reset_and_sends_nothing() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.tx.add_desc_chains(&[desc(BUF, 72, 0, 0)], 0).unwrap();
    // avail.idx 1 + 2 * QSIZE: more chains than the ring holds (2.7.13).
    rig.tx.avail().idx().store(1 + 2 * QSIZE);
    let mut job = rig.job();
    job.process_tx();
    assert!(rig.signals.needs_reset());
    assert!(rig.backend.sent().is_empty());
}

// --- receive ---

#[test]
fn rx_frame_lands_in_the_guest_buffer_with_its_header_and_used_len() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.rx
        .add_desc_chains(&[desc(BUF, 1526, F_WRITE, 0)], 0)
        .unwrap();
    rig.backend.push(frame(60));
    let mut job = rig.job();
    job.process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 72)]);
    let got = bytes(&mem, BUF, 72);
    // DATA_VALID cleared (no GUEST_CSUM), num_buffers 1 (no MRG_RXBUF), the rest as read.
    let mut want = frame(60);
    want[0] = 0;
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(got, want);
    assert_eq!(bytes(&mem, BUF + 72, 4), vec![0; 4]);
    assert_eq!(rig.signals.queues(), vec![RX_QUEUE]);
    assert_eq!(rig.backend.waiting(), 0);
}

#[test]
fn rx_frame_spans_the_chain_buffers_in_order() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.rx
        .add_desc_chains(
            &[
                desc(BUF, 12, F_WRITE | F_NEXT, 1),
                desc(BUF2, 100, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
    rig.backend.push(frame(50));
    let mut job = rig.job();
    job.process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 62)]);
    assert_eq!(bytes(&mem, BUF2, 50), frame(50)[12..].to_vec());
}

#[test]
fn rx_frame_larger_than_the_chain_is_dropped_and_the_chain_kept() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.rx
        .add_desc_chains(&[desc(BUF, 64, F_WRITE, 0)], 0)
        .unwrap();
    rig.backend.push(frame(100));
    rig.backend.push(frame(40));
    let mut job = rig.job();
    job.process_rx();
    assert_eq!(count(&rig.stats.rx_too_large), 1);
    // The chain took the next frame, which fits.
    assert_eq!(used(&rig.rx), vec![(0, 52)]);
    assert_eq!(bytes(&mem, BUF + 12, 40), frame(40)[12..].to_vec());
}

#[test]
fn rx_without_buffers_leaves_frames_in_the_backend_until_buffers_come() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let mut job = rig.job();
    rig.backend.push(frame(20));
    job.process_rx();
    assert_eq!(rig.backend.waiting(), 1);
    // The backend is no longer polled.
    assert!(!job.rx_ready());
    assert_eq!(job.fds().len(), 2);
    // The driver posts two buffers and notifies: the frame goes into the first, and the
    // backend is polled again for the second.
    rig.rx
        .add_desc_chains(
            &[desc(BUF, 1526, F_WRITE, 0), desc(BUF2, 1526, F_WRITE, 0)],
            0,
        )
        .unwrap();
    job.ready(0);
    assert_eq!(rig.backend.waiting(), 0);
    assert_eq!(used(&rig.rx), vec![(0, 32)]);
    assert!(job.rx_ready());
    assert_eq!(job.fds().len(), 3);
}

#[test]
fn rx_chain_with_a_readable_buffer_is_returned_empty_and_the_frame_kept() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.rx
        .add_desc_chains(&[desc(BUF, 1526, 0, 0), desc(BUF2, 1526, F_WRITE, 0)], 0)
        .unwrap();
    rig.backend.push(frame(20));
    let mut job = rig.job();
    job.process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 0), (1, 32)]);
    assert_eq!(bytes(&mem, BUF, 32), vec![0; 32]);
    assert_eq!(count(&rig.stats.malformed), 1);
}

#[test]
fn rx_fault_mid_chain_writes_nothing_and_completes_with_len_0() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let (mut job, table) = rig.translated_job();
    // The first buffer's page is mapped, the second's is not.
    table.map(BUF, PAGE);
    rig.rx
        .add_desc_chains(
            &[
                desc(BUF + IOVA_SHIFT, 0x1000, F_WRITE | F_NEXT, 1),
                desc(BUF + 0x1000 + IOVA_SHIFT, 0x1000, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
    rig.backend.push(frame(0x1800));
    job.process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 0)]);
    assert_eq!(count(&rig.stats.rx_fault), 1);
    // Nothing in the mapped page, nothing past it.
    assert!(bytes(&mem, BUF, 0x2000).iter().all(|b| *b == 0));
    assert!(table.faults() >= 1);
    assert!(!rig.signals.needs_reset());
}

#[test]
fn rx_translated_buffer_mapped_receives_the_frame() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let (mut job, table) = rig.translated_job();
    table.map(BUF, PAGE);
    rig.rx
        .add_desc_chains(&[desc(BUF + IOVA_SHIFT, 1526, F_WRITE, 0)], 0)
        .unwrap();
    rig.backend.push(frame(30));
    job.process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 42)]);
    assert_eq!(bytes(&mem, BUF + 12, 30), frame(30)[12..].to_vec());
}

#[test]
fn rx_rings_the_iommu_does_not_map_set_needs_reset_and_stop_polling() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let table = Arc::new(PageTable::default());
    let view = VirtioMemory::Translated(translated_dma(&mem, &table));
    let mut job = rig.job_over(view, IOVA_SHIFT, 0);
    rig.backend.push(frame(20));
    job.process_rx();
    assert!(rig.signals.needs_reset());
    assert!(!job.rx_ready());
    assert_eq!(rig.backend.waiting(), 1);
}

// --- the device ---

fn net() -> (Arc<Fake>, Net) {
    let backend = Fake::new();
    let n = Net::new(backend.clone(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]).unwrap();
    (backend, n)
}

#[test]
fn config_reads_the_mac_and_link_up() {
    let (_b, n) = net();
    let mut c = [0xffu8; 10];
    n.read_config(0, &mut c);
    assert_eq!(&c[..6], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
    // Past the end (no max_virtqueue_pairs, no mtu) reads 0.
    assert_eq!(&c[8..], &[0, 0]);
    let mut s = [0u8; 2];
    n.read_config(6, &mut s);
    assert_eq!(s, [1, 0]);
}

#[test]
fn config_write_to_the_mac_is_dropped() {
    let (_b, mut n) = net();
    n.write_config(0, &[1, 2, 3, 4, 5, 6]);
    let mut mac = [0u8; 6];
    n.read_config(0, &mut mac);
    assert_eq!(mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
}

#[test]
fn features_offer_mac_status_checksums_and_tso_only() {
    let (_b, n) = net();
    let f = n.features();
    assert_eq!(n.device_type(), 1);
    // CSUM 0, GUEST_CSUM 1, GUEST_TSO4 7, GUEST_TSO6 8, HOST_TSO4 11, HOST_TSO6 12, MAC 5,
    // STATUS 16 (5.1.3).
    for bit in [0, 1, 5, 7, 8, 11, 12, 16] {
        assert_ne!(f & (1 << bit), 0, "bit {bit}");
    }
    // GUEST_ECN 9, GUEST_UFO 10, HOST_ECN 13, HOST_UFO 14, MRG_RXBUF 15, CTRL_VQ 17, MQ 22.
    for bit in [9, 10, 13, 14, 15, 17, 22] {
        assert_eq!(f & (1 << bit), 0, "bit {bit}");
    }
    assert_eq!(n.queue_max_sizes().len(), 2);
}

// --- offloads ---

const GUEST_ALL: u64 = VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6;

#[test]
fn tap_offloads_follow_guest_features_and_need_guest_csum() {
    assert_eq!(tap_offloads(0), 0);
    assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_CSUM), TUN_F_CSUM);
    assert_eq!(
        tap_offloads(GUEST_ALL),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    );
    // TSO without checksums is not something the tap may hand over.
    assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_TSO4), 0);
    // Host-side offloads are about what the guest sends: nothing for the tap's reader.
    assert_eq!(tap_offloads(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4), 0);
}

#[test]
fn job_start_sets_the_tap_offloads_from_the_driver_features() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.job_with(GUEST_ALL | VIRTIO_NET_F_CSUM).start();
    rig.job().start();
    assert_eq!(
        *rig.backend.offloads.lock().unwrap(),
        vec![TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, 0]
    );
}

/// A frame whose header has `flags` and `gso_type`.
fn offload_frame(flags: u8, gso_type: u8) -> Vec<u8> {
    let mut f = frame(40);
    f[0] = flags;
    f[1] = gso_type;
    f
}

#[test]
fn rx_partial_checksum_without_guest_csum_is_dropped_and_the_chain_kept() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.rx
        .add_desc_chains(&[desc(BUF, 1526, F_WRITE, 0)], 0)
        .unwrap();
    rig.backend.push(offload_frame(1, 0));
    rig.backend.push(frame(40));
    rig.job().process_rx();
    assert_eq!(count(&rig.stats.rx_offload), 1);
    assert_eq!(used(&rig.rx), vec![(0, 52)]);
    assert_eq!(bytes(&mem, BUF, 1), vec![0]);
}

#[test]
fn rx_with_guest_csum_keeps_the_checksum_flags() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.rx
        .add_desc_chains(&[desc(BUF, 1526, F_WRITE, 0)], 0)
        .unwrap();
    rig.backend.push(offload_frame(1, 0));
    rig.job_with(VIRTIO_NET_F_GUEST_CSUM).process_rx();
    assert_eq!(used(&rig.rx), vec![(0, 52)]);
    assert_eq!(bytes(&mem, BUF, 2), vec![1, 0]);
}

#[test]
fn rx_tso_segment_is_delivered_only_with_the_matching_guest_tso() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.rx
        .add_desc_chains(&[desc(BUF, 1526, F_WRITE, 0)], 0)
        .unwrap();
    // TCPv6 to a driver with TSO4 only, then TCPv4.
    rig.backend.push(offload_frame(1, 4));
    rig.backend.push(offload_frame(1, 1));
    rig.job_with(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4)
        .process_rx();
    assert_eq!(count(&rig.stats.rx_offload), 1);
    assert_eq!(used(&rig.rx), vec![(0, 52)]);
    assert_eq!(bytes(&mem, BUF, 2), vec![1, 1]);
}

#[test]
fn rx_ecn_segment_is_dropped_as_guest_ecn_is_never_offered() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    rig.rx
        .add_desc_chains(&[desc(BUF, 1526, F_WRITE, 0)], 0)
        .unwrap();
    rig.backend.push(offload_frame(1, 0x81));
    rig.job_with(GUEST_ALL).process_rx();
    assert_eq!(count(&rig.stats.rx_offload), 1);
    assert!(used(&rig.rx).is_empty());
}

/// Activates `n` on `rig`'s queues; returns the (rx, tx) notification eventfds.
fn activate(n: &mut Net, rig: &Rig<'_>) -> (EventFd, EventFd) {
    activate_with(n, rig, 0)
}

/// Activates `n` on `rig`'s queues, the driver having accepted `features`.
fn activate_with(n: &mut Net, rig: &Rig<'_>, features: u64) -> (EventFd, EventFd) {
    let rx = active(RX_QUEUE, queue(&rig.rx, 0));
    let tx = active(TX_QUEUE, queue(&rig.tx, 0));
    let fds = (
        rx.notify.try_clone().unwrap(),
        tx.notify.try_clone().unwrap(),
    );
    let ctx = ActivateContext {
        memory: VirtioMemory::Direct(rig.mem.clone()),
        queues: vec![rx, tx],
        features,
        interrupt: rig.signals.clone(),
    };
    n.activate(ctx).unwrap();
    fds
}

#[test]
fn activation_sets_the_tap_offloads_on_the_worker_thread() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    let (backend, mut n) = net();
    rig.backend = backend;
    activate_with(&mut n, &rig, GUEST_ALL);
    wait_for("offloads set", || {
        *rig.backend.offloads.lock().unwrap() == [TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6]
    });
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn activate_without_the_transmit_queue_fails() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let (_b, mut n) = net();
    let ctx = ActivateContext {
        memory: VirtioMemory::Direct(mem.clone()),
        queues: vec![active(RX_QUEUE, queue(&rig.rx, 0))],
        features: 0,
        interrupt: rig.signals.clone(),
    };
    assert!(matches!(
        n.activate(ctx),
        Err(ActivateError::MissingQueue(TX_QUEUE))
    ));
}

#[test]
fn worker_thread_receives_from_the_backend_and_sends_on_notify() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    let (backend, mut n) = net();
    rig.backend = backend;
    let (_rx, tx) = activate(&mut n, &rig);
    rig.rx
        .add_desc_chains(&[desc(BUF, 1526, F_WRITE, 0)], 0)
        .unwrap();
    // Frames arriving while the thread waits: it polls the backend.
    std::thread::sleep(Duration::from_millis(20));
    rig.backend.push(frame(20));
    wait_for("frame received", || used(&rig.rx).len() == 1);
    assert_eq!(used(&rig.rx), vec![(0, 32)]);
    rig.tx.add_desc_chains(&[desc(BUF2, 40, 0, 0)], 0).unwrap();
    tx.write(1).unwrap();
    wait_for("frame sent", || rig.backend.sent().len() == 1);
}

#[test]
fn reset_stops_the_worker_and_frames_stay_in_the_backend() {
    let mem = guest_memory();
    let mut rig = Rig::new(&mem);
    let (backend, mut n) = net();
    rig.backend = backend;
    let (rx, _tx) = activate(&mut n, &rig);
    n.reset();
    assert!(!n.is_active());
    rig.rx
        .add_desc_chains(&[desc(BUF, 1526, F_WRITE, 0)], 0)
        .unwrap();
    rig.backend.push(frame(20));
    rx.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(used(&rig.rx).is_empty());
    assert_eq!(rig.backend.waiting(), 1);
}

mod tap;

mod stream;
