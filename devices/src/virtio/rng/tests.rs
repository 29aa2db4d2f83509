use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use crate::virtio::memory::testing::{guest_memory, translated_dma, PageTable, IOVA_SHIFT, PAGE};

/// Descriptor flags (virtio 1.2 section 2.7.5).
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const QSIZE: u16 = 16;

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

fn worker(queue: Queue, memory: VirtioMemory, signals: &Arc<Signals>) -> RngWorker {
    RngWorker {
        queue,
        notify: EventFd::new(EFD_NONBLOCK).unwrap(),
        memory,
        interrupt: signals.clone(),
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

#[test]
fn request_gets_random_bytes_its_used_length_and_an_interrupt() {
    let mem = guest_memory();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    mock.add_desc_chains(&[desc(0x2_0000, 512, F_WRITE, 0)], 0)
        .unwrap();
    let signals = Arc::new(Signals::default());
    let mut w = worker(queue(&mock, 0), VirtioMemory::Direct(mem.clone()), &signals);
    w.process_queue();
    assert_eq!(used(&mock), vec![(0, 512)]);
    assert!(bytes(&mem, 0x2_0000, 512).iter().any(|b| *b != 0));
    assert_eq!(bytes(&mem, 0x2_0000 + 512, 1), vec![0]);
    assert_eq!(*signals.queues.lock().unwrap(), vec![0]);
}

#[test]
fn request_larger_than_the_bound_gets_at_most_64k() {
    let mem = guest_memory();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    mock.add_desc_chains(&[desc(0x4_0000, 0x2_0000, F_WRITE, 0)], 0)
        .unwrap();
    let signals = Arc::new(Signals::default());
    let mut w = worker(queue(&mock, 0), VirtioMemory::Direct(mem.clone()), &signals);
    w.process_queue();
    assert_eq!(used(&mock), vec![(0, MAX_BYTES_PER_REQUEST as u32)]);
    let after = bytes(&mem, 0x4_0000 + MAX_BYTES_PER_REQUEST as u64, 0x1_0000);
    assert!(after.iter().all(|b| *b == 0));
}

#[test]
fn request_over_several_buffers_fills_them_in_order() {
    let mem = guest_memory();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    mock.add_desc_chains(
        &[
            desc(0x2_0000, 100, F_WRITE | F_NEXT, 1),
            desc(0x3_0000, 200, F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let signals = Arc::new(Signals::default());
    let mut w = worker(queue(&mock, 0), VirtioMemory::Direct(mem.clone()), &signals);
    w.process_queue();
    assert_eq!(used(&mock), vec![(0, 300)]);
}

#[test]
fn empty_buffer_in_the_middle_does_not_end_the_request() {
    let mem = guest_memory();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    mock.add_desc_chains(
        &[
            desc(0x2_0000, 8, F_WRITE | F_NEXT, 1),
            desc(0x2_1000, 0, F_WRITE | F_NEXT, 2),
            desc(0x3_0000, 8, F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let signals = Arc::new(Signals::default());
    let mut w = worker(queue(&mock, 0), VirtioMemory::Direct(mem.clone()), &signals);
    w.process_queue();
    assert_eq!(used(&mock), vec![(0, 16)]);
}

#[test]
fn chain_with_a_readable_buffer_is_completed_empty_and_the_next_is_served() {
    let mem = guest_memory();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    mock.add_desc_chains(
        &[
            desc(0x2_0000, 64, F_NEXT, 1),
            desc(0x2_1000, 64, F_WRITE, 0),
            desc(0x3_0000, 32, F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let signals = Arc::new(Signals::default());
    let mut w = worker(queue(&mock, 0), VirtioMemory::Direct(mem.clone()), &signals);
    w.process_queue();
    assert_eq!(used(&mock), vec![(0, 0), (2, 32)]);
    assert!(bytes(&mem, 0x2_1000, 64).iter().all(|b| *b == 0));
}

#[test]
fn buffer_outside_guest_memory_completes_with_nothing_written() {
    let mem = guest_memory();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    mock.add_desc_chains(&[desc(0x20_0000, 64, F_WRITE, 0)], 0)
        .unwrap();
    let signals = Arc::new(Signals::default());
    let mut w = worker(queue(&mock, 0), VirtioMemory::Direct(mem.clone()), &signals);
    w.process_queue();
    assert_eq!(used(&mock), vec![(0, 0)]);
}

#[test]
fn translation_fault_mid_chain_reports_only_the_bytes_before_it() {
    let mem = guest_memory();
    let table = Arc::new(PageTable::default());
    let mock = MockSplitQueue::new(&mem, QSIZE);
    // The rings and the first buffer are mapped; the second buffer's page is not.
    table.map(0, PAGE);
    table.map(0x2_0000, PAGE);
    mock.add_desc_chains(
        &[
            desc(0x2_0000 + IOVA_SHIFT, 0x1000, F_WRITE | F_NEXT, 1),
            desc(0x2_1000 + IOVA_SHIFT, 0x1000, F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let signals = Arc::new(Signals::default());
    let view = VirtioMemory::Translated(translated_dma(&mem, &table));
    let mut w = worker(queue(&mock, IOVA_SHIFT), view, &signals);
    w.process_queue();
    assert_eq!(used(&mock), vec![(0, 0x1000)]);
    assert!(bytes(&mem, 0x2_0000, 0x1000).iter().any(|b| *b != 0));
    // Neither the unmapped page's GPA nor anything else outside the mapping was written.
    assert!(bytes(&mem, 0x2_1000, 0x1000).iter().all(|b| *b == 0));
    assert!(table.faults() >= 1);
    assert!(!signals.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn translation_fault_on_the_first_buffer_completes_with_nothing_written() {
    let mem = guest_memory();
    let table = Arc::new(PageTable::default());
    let mock = MockSplitQueue::new(&mem, QSIZE);
    table.map(0, PAGE);
    // A buffer at an unmapped IOVA whose GPA (IOVA = GPA) would be RAM.
    mock.add_desc_chains(&[desc(0x2_0000, 64, F_WRITE, 0)], 0)
        .unwrap();
    let signals = Arc::new(Signals::default());
    let view = VirtioMemory::Translated(translated_dma(&mem, &table));
    let mut w = worker(queue(&mock, IOVA_SHIFT), view, &signals);
    w.process_queue();
    assert_eq!(used(&mock), vec![(0, 0)]);
    assert!(bytes(&mem, 0x2_0000, 64).iter().all(|b| *b == 0));
}

#[test]
fn rings_the_iommu_does_not_map_set_needs_reset_without_panic() {
    let mem = guest_memory();
    let table = Arc::new(PageTable::default());
    let mock = MockSplitQueue::new(&mem, QSIZE);
    mock.add_desc_chains(&[desc(0x2_0000, 64, F_WRITE, 0)], 0)
        .unwrap();
    let signals = Arc::new(Signals::default());
    let view = VirtioMemory::Translated(translated_dma(&mem, &table));
    let mut w = worker(queue(&mock, IOVA_SHIFT), view, &signals);
    w.process_queue();
    assert!(signals.needs_reset.load(Ordering::SeqCst));
    assert!(used(&mock).is_empty());
}

#[test]
fn avail_index_past_the_ring_sets_needs_reset_and_serves_nothing() {
    let mem = guest_memory();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    mock.add_desc_chains(&[desc(0x2_0000, 64, F_WRITE, 0)], 0)
        .unwrap();
    // avail.idx 1 + 2 * QSIZE: more chains than the ring holds (2.7.13).
    mock.avail().idx().store(1 + 2 * QSIZE);
    let signals = Arc::new(Signals::default());
    let mut w = worker(queue(&mock, 0), VirtioMemory::Direct(mem.clone()), &signals);
    w.process_queue();
    assert!(signals.needs_reset.load(Ordering::SeqCst));
    assert!(used(&mock).is_empty());
}

#[test]
fn translated_buffer_unmapped_and_invalidated_after_one_request_is_refused_on_the_next() {
    let mem = guest_memory();
    let table = Arc::new(PageTable::default());
    let caches = crate::dma::IotlbSet::new();
    let dma = Arc::new(crate::dma::DeviceDma::new(
        iommu::Bdf::new(0, 4, 0),
        mem.clone(),
        table.clone(),
        &caches,
    ));
    let mock = MockSplitQueue::new(&mem, QSIZE);
    table.map(0, PAGE);
    table.map(0x2_0000, PAGE);
    mock.add_desc_chains(&[desc(0x2_0000 + IOVA_SHIFT, 64, F_WRITE, 0)], 0)
        .unwrap();
    let signals = Arc::new(Signals::default());
    let mut w = worker(
        queue(&mock, IOVA_SHIFT),
        VirtioMemory::Translated(dma),
        &signals,
    );
    w.process_queue();
    assert_eq!(used(&mock), vec![(0, 64)]);
    // The guest unmaps the buffer page and invalidates (as the VT-d unit would, before its
    // wait descriptor completes); the cached translation must not outlive it.
    table.unmap(0x2_0000);
    iommu::TranslationCaches::invalidate(&*caches, iommu::CacheInvalidation::All);
    let before = bytes(&mem, 0x2_0000, 64);
    mock.add_desc_chains(&[desc(0x2_0000 + IOVA_SHIFT, 64, F_WRITE, 0)], 1)
        .unwrap();
    w.process_queue();
    assert_eq!(used(&mock), vec![(0, 64), (1, 0)]);
    assert_eq!(bytes(&mem, 0x2_0000, 64), before);
}

#[test]
fn activate_without_queue_0_fails() {
    let mut rng = Rng::new().unwrap();
    let ctx = ActivateContext {
        memory: VirtioMemory::Direct(guest_memory()),
        queues: Vec::new(),
        features: 0,
        interrupt: Arc::new(Signals::default()),
    };
    assert!(matches!(
        rng.activate(ctx),
        Err(ActivateError::MissingQueue(0))
    ));
}

/// Activates `rng` on `mock`'s queue; returns the notification eventfd.
fn activate(
    rng: &mut Rng,
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> EventFd {
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let ctx = ActivateContext {
        memory: VirtioMemory::Direct(mem.clone()),
        queues: vec![crate::virtio::ActiveQueue {
            index: 0,
            queue: queue(mock, 0),
            notify: notify.try_clone().unwrap(),
        }],
        features: 0,
        interrupt: Arc::new(Signals::default()),
    };
    rng.activate(ctx).unwrap();
    notify
}

fn wait_used(mock: &MockSplitQueue<'_, GuestMemoryMmap>, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while used(mock).len() < n {
        assert!(std::time::Instant::now() < deadline, "request not served");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn notify_after_activation_is_served_by_the_worker_thread() {
    let mem = guest_memory();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    let mut rng = Rng::new().unwrap();
    let notify = activate(&mut rng, &mock, &mem);
    mock.add_desc_chains(&[desc(0x2_0000, 64, F_WRITE, 0)], 0)
        .unwrap();
    notify.write(1).unwrap();
    wait_used(&mock, 1);
    assert_eq!(used(&mock), vec![(0, 64)]);
}

#[test]
fn reset_parks_the_worker_and_a_new_activation_runs_again() {
    let mem = guest_memory();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    let mut rng = Rng::new().unwrap();
    let notify = activate(&mut rng, &mock, &mem);
    rng.reset();
    // Parked: a request posted now stays unserved.
    mock.add_desc_chains(&[desc(0x2_0000, 64, F_WRITE, 0)], 0)
        .unwrap();
    notify.write(1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(used(&mock).is_empty());
    // Activated again (as after a driver's reset), the pending request is served at start.
    let mock2 = MockSplitQueue::create(&mem, GuestAddress(0x8_0000), QSIZE);
    mock2
        .add_desc_chains(&[desc(0x3_0000, 32, F_WRITE, 0)], 0)
        .unwrap();
    activate(&mut rng, &mock2, &mem);
    wait_used(&mock2, 1);
    assert_eq!(used(&mock2), vec![(0, 32)]);
}
