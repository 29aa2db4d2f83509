use std::sync::{Arc, Mutex};

use super::*;
use crate::test_utils::{Tables, ROOT_TABLE};
use vm_memory::Bytes;

#[derive(Clone, Default)]
pub(super) struct Sink(Arc<Mutex<Vec<(u64, u32)>>>);

impl InterruptSink for Sink {
    fn send(&self, address: u64, data: u32) {
        self.0.lock().unwrap().push((address, data));
    }
}

impl Sink {
    pub(super) fn sent(&self) -> Vec<(u64, u32)> {
        self.0.lock().unwrap().clone()
    }
}

pub(super) const DEV: Bdf = Bdf::new(0, 3, 0);
pub(super) const QUEUE: u64 = 0x20_0000;
pub(super) const STATUS: u64 = 0x30_0000;
/// The domain the shared tests put DEV in.
pub(super) const DID: u16 = 5;
/// Read and write permission bits of a second-level entry.
pub(super) const RW: u64 = 3;

/// A page-selective IOTLB invalidation of 2^am pages at `addr` in domain DID, through the
/// registers.
pub(super) fn psi(u: &mut RemappingUnit, t: &Tables, addr: u64, am: u64) {
    wr64(u, t, IVA_REG, addr | am);
    wr64(
        u,
        t,
        IOTLB_REG,
        IOTLB_IVT | (3 << IOTLB_IIRG_SHIFT) | (u64::from(DID) << IOTLB_DID_SHIFT),
    );
}

pub(super) fn unit() -> (RemappingUnit, Sink, Tables) {
    let sink = Sink::default();
    (
        RemappingUnit::new(IommuConfig::default(), Box::new(sink.clone())),
        sink,
        Tables::new(),
    )
}

pub(super) fn rd32(u: &RemappingUnit, off: u64) -> u32 {
    let mut b = [0u8; 4];
    u.read(off, &mut b);
    u32::from_le_bytes(b)
}

pub(super) fn rd64(u: &RemappingUnit, off: u64) -> u64 {
    let mut b = [0u8; 8];
    u.read(off, &mut b);
    u64::from_le_bytes(b)
}

pub(super) fn wr32(u: &mut RemappingUnit, t: &Tables, off: u64, v: u32) {
    u.write(&t.mem, off, &v.to_le_bytes());
}

pub(super) fn wr64(u: &mut RemappingUnit, t: &Tables, off: u64, v: u64) {
    u.write(&t.mem, off, &v.to_le_bytes());
}

/// What Linux does to turn on translation: root table, then TE.
pub(super) fn enable(u: &mut RemappingUnit, t: &Tables) {
    wr64(u, t, RTADDR_REG, ROOT_TABLE);
    wr32(u, t, GCMD_REG, GCMD_SRTP);
    assert_ne!(rd32(u, GSTS_REG) & GSTS_RTPS, 0);
    wr32(u, t, GCMD_REG, GCMD_TE);
    assert_ne!(rd32(u, GSTS_REG) & GSTS_TES, 0);
}

pub(super) fn enable_qi(u: &mut RemappingUnit, t: &Tables) {
    wr64(u, t, IQA_REG, QUEUE); // QS 0: 256 entries
    wr64(u, t, IQT_REG, 0);
    let g = rd32(u, GSTS_REG);
    wr32(u, t, GCMD_REG, g | GCMD_QIE);
    assert_ne!(rd32(u, GSTS_REG) & GSTS_QIES, 0);
}

/// Puts descriptor `i` in the queue.
pub(super) fn desc(t: &Tables, i: u64, lo: u64, hi: u64) {
    t.w64(QUEUE + i * 16, lo);
    t.w64(QUEUE + i * 16 + 8, hi);
}

pub(super) fn wait_desc(data: u32) -> (u64, u64) {
    (0x5 | (1 << 5) | (1 << 4) | (u64::from(data) << 32), STATUS)
}

#[test]
fn unit_version_and_capabilities_read() {
    let (u, _, _) = unit();
    assert_eq!(rd32(&u, VER_REG), 0x10);
    assert_eq!(rd64(&u, CAP_REG), IommuConfig::default().cap());
    assert_eq!(
        rd32(&u, ECAP_REG + 4),
        (IommuConfig::default().ecap() >> 32) as u32
    );
}

#[test]
fn unit_odd_sizes_read_zero_and_writes_drop() {
    let (mut u, _, t) = unit();
    let mut b = [0xffu8; 2];
    u.read(VER_REG, &mut b);
    assert_eq!(b, [0, 0]);
    u.write(&t.mem, GCMD_REG + 2, &[0, 0x80]);
    u.write(&t.mem, GCMD_REG + 1, &0x8000_0000u32.to_le_bytes());
    u.write(&t.mem, 0x2000, &0u32.to_le_bytes());
    assert_eq!(rd32(&u, GSTS_REG), 0);
}

#[test]
fn gcmd_srtp_latches_root_and_te_enables_translation() {
    let (mut u, _, t) = unit();
    assert!(!u.translation_enabled());
    enable(&mut u, &t);
    assert!(u.translation_enabled());
    assert_eq!(rd32(&u, GCMD_REG), 0, "GCMD reads as zero");
    let g = rd32(&u, GSTS_REG);
    wr32(&mut u, &t, GCMD_REG, g & !GCMD_TE & !GCMD_SRTP);
    assert!(!u.translation_enabled());
}

#[test]
fn gcmd_ire_ignored_without_intremap() {
    let sink = Sink::default();
    let cfg = IommuConfig {
        interrupt_remapping: false,
        ..IommuConfig::default()
    };
    let mut u = RemappingUnit::new(cfg, Box::new(sink));
    let t = Tables::new();
    wr32(&mut u, &t, GCMD_REG, GCMD_IRE | GCMD_SIRTP);
    assert_eq!(rd32(&u, GSTS_REG) & (GSTS_IRES | GSTS_IRTPS), 0);
}

#[test]
fn gcmd_sirtp_latches_irta() {
    let (mut u, _, t) = unit();
    wr64(&mut u, &t, IRTA_REG, 0x5000 | IRTA_EIME | 7);
    assert_eq!(u.active_irta(), 0);
    wr32(&mut u, &t, GCMD_REG, GCMD_SIRTP);
    assert_eq!(u.active_irta(), 0x5000 | IRTA_EIME | 7);
    assert_ne!(rd32(&u, GSTS_REG) & GSTS_IRTPS, 0);
}

#[test]
fn translate_with_translation_off_is_identity() {
    let (mut u, _, t) = unit();
    let r = u.translate(&t.mem, DEV, Iova(0x1234_5000), true);
    assert!(
        matches!(r, DmaOutcome::Translated(tr) if tr.gpa(Iova(0x1234_5000)) == vm_memory::GuestAddress(0x1234_5000))
    );
}

#[test]
fn translate_maps_through_tables() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, 5, 4, 0, false);
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, 3);
    enable(&mut u, &t);
    match u.translate(&t.mem, DEV, Iova(0x10_0010), true) {
        DmaOutcome::Translated(tr) => assert_eq!(tr.gpa(Iova(0x10_0010)).0, 0x80_0010),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fault_is_recorded_and_event_sent_when_unmasked() {
    let (mut u, sink, mut t) = unit();
    t.context(DEV, 5, 4, 0, false);
    enable(&mut u, &t);
    wr32(&mut u, &t, FEDATA_REG, 0x4041);
    wr32(&mut u, &t, FEADDR_REG, 0xfee0_0000);
    wr32(&mut u, &t, FECTL_REG, 0);
    assert_eq!(
        u.translate(&t.mem, DEV, Iova(0x7000), true),
        DmaOutcome::Blocked(FaultReason::WriteDenied)
    );
    assert_eq!(sink.sent(), vec![(0xfee0_0000, 0x4041)]);
    let fsts = rd32(&u, FSTS_REG);
    assert_ne!(fsts & FSTS_PPF, 0);
    assert_eq!(fsts >> FSTS_FRI_SHIFT & 0xff, 0, "FRI: where the fault is");
    let hi = rd64(&u, FRCD_REG + 8);
    assert_eq!((hi >> 32) & 0xff, 0x05, "FR");
    assert_eq!(hi & 0xffff, u64::from(DEV.raw()), "SID");
    assert_eq!(rd64(&u, FRCD_REG), 0x7000, "FI");
    // Linux clears F by writing it back in the top dword.
    wr32(&mut u, &t, FRCD_REG + 12, 0x8000_0000);
    assert_eq!(rd32(&u, FSTS_REG) & FSTS_PPF, 0);
}

#[test]
fn fault_event_masked_sets_ip_then_fires_on_unmask() {
    let (mut u, sink, mut t) = unit();
    t.context(DEV, 5, 4, 0, false);
    enable(&mut u, &t);
    u.translate(&t.mem, DEV, Iova(0x7000), false);
    assert!(sink.sent().is_empty(), "FECTL.IM is set out of reset");
    assert_ne!(rd32(&u, FECTL_REG) & ECTL_IP, 0);
    wr32(&mut u, &t, FECTL_REG, 0);
    assert_eq!(sink.sent().len(), 1);
    assert_eq!(rd32(&u, FECTL_REG) & ECTL_IP, 0);
}

#[test]
fn fault_with_fpd_is_not_recorded() {
    let (mut u, sink, mut t) = unit();
    t.context(DEV, 5, 4, 0, true);
    enable(&mut u, &t);
    wr32(&mut u, &t, FECTL_REG, 0);
    assert!(matches!(
        u.translate(&t.mem, DEV, Iova(0x7000), true),
        DmaOutcome::Blocked(_)
    ));
    assert_eq!(rd32(&u, FSTS_REG) & FSTS_PPF, 0);
    assert!(sink.sent().is_empty());
}

#[test]
fn iotlb_serves_stale_entry_until_page_invalidation() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, 5, 4, 0, false);
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, 3);
    enable(&mut u, &t);
    let gpa = |u: &mut RemappingUnit, t: &Tables| match u.translate(
        &t.mem,
        DEV,
        Iova(0x10_0000),
        false,
    ) {
        DmaOutcome::Translated(tr) => tr.gpa(Iova(0x10_0000)).0,
        DmaOutcome::Blocked(r) => panic!("{r:?}"),
    };
    assert_eq!(gpa(&mut u, &t), 0x80_0000);
    t.map(slpt, 4, 0x10_0000, 0x90_0000, 0x1000, 3);
    assert_eq!(gpa(&mut u, &t), 0x80_0000, "cached until invalidated");
    // Page-selective IOTLB invalidation through the registers: IVA then IOTLB (IIRG 3).
    wr64(&mut u, &t, IVA_REG, 0x10_0000);
    wr64(
        &mut u,
        &t,
        IOTLB_REG,
        IOTLB_IVT | (3 << IOTLB_IIRG_SHIFT) | (5 << IOTLB_DID_SHIFT),
    );
    let r = rd64(&u, IOTLB_REG);
    assert_eq!(r & IOTLB_IVT, 0, "IVT clears when done");
    assert_eq!(
        (r >> IOTLB_IAIG_SHIFT) & 3,
        3,
        "page-selective granularity reported"
    );
    assert_eq!(gpa(&mut u, &t), 0x90_0000);
}

#[test]
fn iotlb_domain_invalidation_spares_other_domains() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, 5, 4, 0, false);
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, 3);
    enable(&mut u, &t);
    u.translate(&t.mem, DEV, Iova(0x10_0000), false);
    t.map(slpt, 4, 0x10_0000, 0x90_0000, 0x1000, 3);
    wr64(
        &mut u,
        &t,
        IOTLB_REG,
        IOTLB_IVT | (2 << IOTLB_IIRG_SHIFT) | (6 << IOTLB_DID_SHIFT),
    );
    assert!(
        matches!(u.translate(&t.mem, DEV, Iova(0x10_0000), false), DmaOutcome::Translated(tr) if tr.gpa_base == 0x80_0000)
    );
    wr64(
        &mut u,
        &t,
        IOTLB_REG,
        IOTLB_IVT | (2 << IOTLB_IIRG_SHIFT) | (5 << IOTLB_DID_SHIFT),
    );
    assert!(
        matches!(u.translate(&t.mem, DEV, Iova(0x10_0000), false), DmaOutcome::Translated(tr) if tr.gpa_base == 0x90_0000)
    );
}

#[test]
fn context_cache_needs_ccmd_invalidation() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, 5, 4, 0, false);
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, 3);
    enable(&mut u, &t);
    assert!(matches!(
        u.translate(&t.mem, DEV, Iova(0x10_0000), false),
        DmaOutcome::Translated(_)
    ));
    // The guest removes the context entry; the cached one is used until CCMD global + IOTLB.
    let ctp = t.root(0);
    t.w64(ctp + u64::from(DEV.devfn()) * 16, 0);
    assert!(matches!(
        u.translate(&t.mem, DEV, Iova(0x10_0000), false),
        DmaOutcome::Translated(_)
    ));
    wr64(&mut u, &t, CCMD_REG, CCMD_ICC | (1 << CCMD_CIRG_SHIFT));
    wr64(&mut u, &t, IOTLB_REG, IOTLB_IVT | (1 << IOTLB_IIRG_SHIFT));
    assert_eq!(rd64(&u, CCMD_REG) & CCMD_ICC, 0);
    assert_eq!((rd64(&u, CCMD_REG) >> CCMD_CAIG_SHIFT) & 3, 1);
    assert_eq!(
        u.translate(&t.mem, DEV, Iova(0x10_0000), false),
        DmaOutcome::Blocked(FaultReason::ContextEntryNotPresent)
    );
}

#[test]
fn qi_wait_writes_status_and_raises_completion_event() {
    let (mut u, sink, t) = unit();
    enable_qi(&mut u, &t);
    wr32(&mut u, &t, IEDATA_REG, 0x4242);
    wr32(&mut u, &t, IEADDR_REG, 0xfee0_1000);
    wr32(&mut u, &t, IECTL_REG, 0);
    let (lo, hi) = wait_desc(0x1234_5678);
    desc(&t, 0, lo, hi);
    wr64(&mut u, &t, IQT_REG, 1 << 4);
    assert_eq!(
        t.mem
            .read_obj::<u32>(vm_memory::GuestAddress(STATUS))
            .unwrap(),
        0x1234_5678
    );
    assert_eq!(rd64(&u, IQH_REG), 1 << 4, "head caught up with tail");
    assert_ne!(rd32(&u, ICS_REG) & ICS_IWC, 0);
    assert_eq!(sink.sent(), vec![(0xfee0_1000, 0x4242)]);
    wr32(&mut u, &t, ICS_REG, ICS_IWC);
    assert_eq!(rd32(&u, ICS_REG), 0);
}

#[test]
fn qi_wraps_around_queue_end() {
    let (mut u, _, t) = unit();
    enable_qi(&mut u, &t);
    // Walk the head to 254 with context-cache descriptors, then wrap with two waits.
    for i in 0..254 {
        desc(&t, i, 0x1 | (1 << 4), 0);
    }
    wr64(&mut u, &t, IQT_REG, 254 << 4);
    assert_eq!(rd64(&u, IQH_REG), 254 << 4);
    let (lo, hi) = wait_desc(7);
    desc(&t, 254, 0x1 | (1 << 4), 0);
    desc(&t, 255, 0x1 | (1 << 4), 0);
    desc(&t, 0, lo, hi);
    wr64(&mut u, &t, IQT_REG, 1 << 4);
    assert_eq!(rd64(&u, IQH_REG), 1 << 4);
    assert_eq!(
        t.mem
            .read_obj::<u32>(vm_memory::GuestAddress(STATUS))
            .unwrap(),
        7
    );
}

#[test]
fn qi_bad_descriptor_sets_iqe_and_stops_at_it() {
    let (mut u, sink, t) = unit();
    enable_qi(&mut u, &t);
    wr32(&mut u, &t, FECTL_REG, 0);
    let (lo, hi) = wait_desc(9);
    desc(&t, 0, 0x1 | (1 << 4), 0);
    desc(&t, 1, 0xf, 0);
    desc(&t, 2, lo, hi);
    wr64(&mut u, &t, IQT_REG, 3 << 4);
    assert_ne!(rd32(&u, FSTS_REG) & FSTS_IQE, 0);
    assert_eq!(
        rd64(&u, IQH_REG),
        1 << 4,
        "IQH points at the bad descriptor"
    );
    assert_eq!(sink.sent().len(), 1, "fault event for IQE");
    assert_eq!(
        t.mem
            .read_obj::<u32>(vm_memory::GuestAddress(STATUS))
            .unwrap(),
        0,
        "wait not run"
    );
    // Software fixes the descriptor, clears IQE and rings the tail again.
    desc(&t, 1, 0x1 | (1 << 4), 0);
    wr32(&mut u, &t, FSTS_REG, FSTS_IQE);
    wr64(&mut u, &t, IQT_REG, 3 << 4);
    assert_eq!(rd32(&u, FSTS_REG) & FSTS_IQE, 0);
    assert_eq!(
        t.mem
            .read_obj::<u32>(vm_memory::GuestAddress(STATUS))
            .unwrap(),
        9
    );
}

#[test]
fn qi_queue_outside_memory_is_iqe_not_panic() {
    let (mut u, _, t) = unit();
    wr64(&mut u, &t, IQA_REG, 1 << 45);
    wr32(&mut u, &t, GCMD_REG, GCMD_QIE);
    wr64(&mut u, &t, IQT_REG, 5 << 4);
    assert_ne!(rd32(&u, FSTS_REG) & FSTS_IQE, 0);
}

#[test]
fn state_after_blocked_write_lists_the_fault() {
    let (mut u, _, mut t) = unit();
    t.context(DEV, 5, 4, 0, false);
    enable(&mut u, &t);
    u.translate(&t.mem, DEV, Iova(0x7000), true);
    let s = u.state();
    assert!(s.translation, "{s:?}");
    assert_eq!(s.faults.len(), 1, "{s:?}");
    assert_eq!(s.faults[0].source, DEV);
    assert_eq!(s.faults[0].reason, FaultReason::WriteDenied);
    assert_eq!(s.faults[0].info, 0x7000);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Random register writes, random table bytes and random DMA requests never panic.
        #[test]
        fn random_guest_input_never_panics(
            writes in proptest::collection::vec((0u64..0x1100, any::<u64>(), prop::bool::ANY), 0..64),
            table_bytes in proptest::collection::vec((0u64..0x1_0000, any::<u64>()), 0..64),
            dmas in proptest::collection::vec((any::<u16>(), any::<u64>(), prop::bool::ANY), 0..16),
            irqs in proptest::collection::vec((any::<u16>(), any::<u32>(), any::<u32>()), 0..16),
        ) {
            let (mut u, _, t) = unit();
            // A tracked device makes every invalidation walk the (random) tables.
            u.track(&t.mem, DEV);
            for (addr, v) in table_bytes {
                t.w64(ROOT_TABLE + (addr & !7), v);
            }
            for (off, v, wide) in writes {
                if wide {
                    u.write(&t.mem, off & !7, &v.to_le_bytes());
                } else {
                    u.write(&t.mem, off & !3, &(v as u32).to_le_bytes());
                }
                let mut b = [0u8; 8];
                u.read(off & !7, &mut b);
            }
            for (sid, iova, write) in dmas {
                u.translate(&t.mem, Bdf::from_raw(sid), Iova(iova), write);
            }
            for (sid, addr, data) in irqs {
                let req = crate::InterruptRequest {
                    address: 0xfee0_0000 | u64::from(addr & 0xfffff),
                    data,
                    source: Bdf::from_raw(sid),
                };
                u.remap_interrupt(&t.mem, req);
            }
            let _ = u.take_map_events();
            let _ = u.state();
        }
    }
}
