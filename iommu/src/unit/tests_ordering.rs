//! Completion after host effects: an invalidation wait descriptor (VT-d 6.5.2.8), and a
//! register-based invalidation (IOTLB_REG.IVT, CCMD.ICC; 6.5.1), complete only once the
//! consumer has applied the map events of the invalidations before them. A map the consumer
//! could not apply is forgotten, so a later invalidation retries it, and recorded as a fault.

use vm_memory::{Bytes, GuestAddress};

use super::tests::*;
use super::*;
use crate::caching_mode::{MapEvent, Mapping};
use crate::test_utils::Tables;

const STATUS2: u64 = STATUS + 0x100;
const IEDATA: u32 = 0x41;
const IEADDR: u32 = 0xfee0_1000;
const FEDATA: u32 = 0x42;
const FEADDR: u32 = 0xfee0_2000;
const PAGE_A: u64 = 0x10_0000;
const PAGE_B: u64 = 0x20_0000;

fn status(t: &Tables, at: u64) -> u32 {
    t.mem.read_obj(GuestAddress(at)).unwrap()
}

fn page(iova: u64, gpa: u64) -> Mapping {
    Mapping {
        iova,
        gpa,
        size: 0x1000,
        read: true,
        write: true,
    }
}

/// Translation on, completion and fault interrupts unmasked, DEV tracked in domain DID with
/// nothing mapped yet; the queue on if `qi`. Returns the page-table root.
fn setup(qi: bool) -> (RemappingUnit, Sink, Tables, u64) {
    let (mut u, sink, mut t) = unit();
    let slpt = t.context(DEV, DID, 4, 0, false);
    enable(&mut u, &t);
    if qi {
        enable_qi(&mut u, &t);
    }
    wr32(&mut u, &t, IEDATA_REG, IEDATA);
    wr32(&mut u, &t, IEADDR_REG, IEADDR);
    wr32(&mut u, &t, IECTL_REG, 0);
    wr32(&mut u, &t, FEDATA_REG, FEDATA);
    wr32(&mut u, &t, FEADDR_REG, FEADDR);
    wr32(&mut u, &t, FECTL_REG, 0);
    u.track(&t.mem, DEV);
    assert_eq!(u.take_map_events(), vec![], "nothing mapped yet");
    (u, sink, t, slpt)
}

/// A page-selective IOTLB invalidation descriptor for one page of domain DID.
fn psi_desc(t: &Tables, i: u64, addr: u64) {
    desc(t, i, 0x2 | (3 << 4) | (u64::from(DID) << 16), addr);
}

/// A wait descriptor (status write and interrupt) writing `data` to `at`.
fn wait_desc_to(t: &Tables, i: u64, data: u32, at: u64) {
    let (lo, _) = wait_desc(data);
    desc(t, i, lo, at);
}

fn events(u: &mut RemappingUnit) -> Vec<MapEvent> {
    u.take_map_events().into_iter().map(|(_, e)| e).collect()
}

fn iwc(u: &RemappingUnit) -> bool {
    rd32(u, ICS_REG) & ICS_IWC != 0
}

#[test]
fn qi_wait_after_map_events_completes_only_once_they_are_applied() {
    let (mut u, sink, mut t, slpt) = setup(true);
    t.map(slpt, 4, PAGE_A, 0x80_0000, 0x1000, RW);
    psi_desc(&t, 0, PAGE_A);
    wait_desc_to(&t, 1, 1, STATUS);
    wr64(&mut u, &t, IQT_REG, 2 << 4);
    let incomplete = |u: &RemappingUnit, when: &str| {
        assert_eq!(status(&t, STATUS), 0, "status written {when}");
        assert!(!iwc(u), "ICS.IWC set {when}");
        assert_eq!(sink.sent(), vec![], "completion interrupt {when}");
        assert_eq!(rd64(u, IQH_REG), 1 << 4, "IQH moved past the wait {when}");
    };
    incomplete(&u, "before the events were taken");
    assert_eq!(events(&mut u), vec![MapEvent::Map(page(PAGE_A, 0x80_0000))]);
    incomplete(&u, "before the events were applied");
    u.host_effects_applied(&t.mem, &[]);
    assert_eq!(status(&t, STATUS), 1);
    assert!(iwc(&u));
    assert_eq!(sink.sent(), vec![(u64::from(IEADDR), IEDATA)]);
    assert_eq!(rd64(&u, IQH_REG), 2 << 4, "head caught up with tail");
    assert_eq!(events(&mut u), vec![]);
}

#[test]
fn qi_two_waits_each_complete_after_their_own_events() {
    let (mut u, _, mut t, slpt) = setup(true);
    t.map(slpt, 4, PAGE_A, 0x80_0000, 0x1000, RW);
    t.map(slpt, 4, PAGE_B, 0x90_0000, 0x1000, RW);
    psi_desc(&t, 0, PAGE_A);
    wait_desc_to(&t, 1, 1, STATUS);
    psi_desc(&t, 2, PAGE_B);
    wait_desc_to(&t, 3, 2, STATUS2);
    wr64(&mut u, &t, IQT_REG, 4 << 4);
    assert_eq!(rd64(&u, IQH_REG), 1 << 4);
    assert_eq!(
        events(&mut u),
        vec![MapEvent::Map(page(PAGE_A, 0x80_0000))],
        "the queue stopped at the first wait"
    );
    u.host_effects_applied(&t.mem, &[]);
    assert_eq!(status(&t, STATUS), 1, "first wait complete");
    assert_eq!(status(&t, STATUS2), 0, "second wait not yet");
    assert_eq!(rd64(&u, IQH_REG), 3 << 4, "stopped at the second wait");
    assert_eq!(events(&mut u), vec![MapEvent::Map(page(PAGE_B, 0x90_0000))]);
    assert_eq!(status(&t, STATUS2), 0, "taken but not applied");
    u.host_effects_applied(&t.mem, &[]);
    assert_eq!(status(&t, STATUS2), 2);
    assert_eq!(rd64(&u, IQH_REG), 4 << 4);
}

#[test]
fn qi_wait_without_pending_events_completes_at_once() {
    let (mut u, sink, t, _) = setup(true);
    // An invalidation of a page that is not mapped changes nothing the host holds.
    psi_desc(&t, 0, PAGE_A);
    wait_desc_to(&t, 1, 1, STATUS);
    wr64(&mut u, &t, IQT_REG, 2 << 4);
    assert_eq!(status(&t, STATUS), 1);
    assert!(iwc(&u));
    assert_eq!(sink.sent().len(), 1);
    assert_eq!(rd64(&u, IQH_REG), 2 << 4);
}

#[test]
fn qi_tail_write_while_waiting_does_not_pass_the_wait() {
    let (mut u, _, mut t, slpt) = setup(true);
    t.map(slpt, 4, PAGE_A, 0x80_0000, 0x1000, RW);
    psi_desc(&t, 0, PAGE_A);
    wait_desc_to(&t, 1, 1, STATUS);
    wr64(&mut u, &t, IQT_REG, 2 << 4);
    let taken = events(&mut u);
    assert_eq!(taken.len(), 1);
    // Another CPU queues a second wait before the events are applied.
    wait_desc_to(&t, 2, 2, STATUS2);
    wr64(&mut u, &t, IQT_REG, 3 << 4);
    assert_eq!(status(&t, STATUS), 0, "first wait still pending");
    assert_eq!(status(&t, STATUS2), 0, "the second is behind it");
    assert_eq!(rd64(&u, IQH_REG), 1 << 4);
    assert_eq!(rd64(&u, IQT_REG), 3 << 4);
    u.host_effects_applied(&t.mem, &[]);
    assert_eq!((status(&t, STATUS), status(&t, STATUS2)), (1, 2));
    assert_eq!(rd64(&u, IQH_REG), 3 << 4);
}

#[test]
fn iotlb_register_invalidation_ivt_stays_set_until_events_applied() {
    let (mut u, _, mut t, slpt) = setup(false);
    t.map(slpt, 4, PAGE_A, 0x80_0000, 0x1000, RW);
    psi(&mut u, &t, PAGE_A, 0);
    assert_ne!(rd64(&u, IOTLB_REG) & IOTLB_IVT, 0, "IVT before taking");
    assert_eq!(events(&mut u).len(), 1);
    assert_ne!(rd64(&u, IOTLB_REG) & IOTLB_IVT, 0, "IVT before applying");
    u.host_effects_applied(&t.mem, &[]);
    let r = rd64(&u, IOTLB_REG);
    assert_eq!(r & IOTLB_IVT, 0, "IVT clears once applied");
    assert_eq!((r >> IOTLB_IAIG_SHIFT) & 3, 3, "page-selective performed");
}

#[test]
fn ccmd_register_invalidation_icc_stays_set_until_events_applied() {
    let (mut u, _, mut t, slpt) = setup(false);
    t.map(slpt, 4, PAGE_A, 0x80_0000, 0x1000, RW);
    // A device-selective context invalidation re-reads the device's whole space.
    wr64(
        &mut u,
        &t,
        CCMD_REG,
        CCMD_ICC | (3 << CCMD_CIRG_SHIFT) | (u64::from(DEV.raw()) << 16),
    );
    assert_ne!(rd64(&u, CCMD_REG) & CCMD_ICC, 0, "ICC before applying");
    assert_eq!(events(&mut u).len(), 1);
    u.host_effects_applied(&t.mem, &[]);
    let r = rd64(&u, CCMD_REG);
    assert_eq!(r & CCMD_ICC, 0, "ICC clears once applied");
    assert_eq!((r >> CCMD_CAIG_SHIFT) & 3, 3, "device-selective performed");
}

#[test]
fn register_invalidation_without_events_completes_at_once() {
    let (mut u, _, t, _) = setup(false);
    psi(&mut u, &t, PAGE_A, 0);
    assert_eq!(rd64(&u, IOTLB_REG) & IOTLB_IVT, 0);
}

/// Maps PAGE_A, invalidates it with a wait behind, and applies the map as failed.
fn fail_map_of_page_a(u: &mut RemappingUnit, t: &mut Tables, slpt: u64) -> Mapping {
    t.map(slpt, 4, PAGE_A, 0x80_0000, 0x1000, RW);
    psi_desc(t, 0, PAGE_A);
    wait_desc_to(t, 1, 1, STATUS);
    wr64(u, t, IQT_REG, 2 << 4);
    let m = page(PAGE_A, 0x80_0000);
    assert_eq!(events(u), vec![MapEvent::Map(m)]);
    u.host_effects_applied(
        &t.mem,
        &[MapFailure {
            device: DEV,
            mapping: m,
        }],
    );
    m
}

#[test]
fn map_failure_forgets_range_and_next_invalidation_maps_it_again() {
    let (mut u, _, mut t, slpt) = setup(true);
    let m = fail_map_of_page_a(&mut u, &mut t, slpt);
    assert_eq!(
        u.tracked_mappings(DEV),
        vec![],
        "the failed range is not held"
    );
    assert_eq!(status(&t, STATUS), 1, "the wait still completes");
    // The next invalidation of the page retries the map.
    psi_desc(&t, 2, PAGE_A);
    wr64(&mut u, &t, IQT_REG, 3 << 4);
    assert_eq!(events(&mut u), vec![MapEvent::Map(m)]);
    u.host_effects_applied(&t.mem, &[]);
    assert_eq!(u.tracked_mappings(DEV), vec![m]);
}

#[test]
fn map_failure_records_paging_entry_access_fault_before_the_wait_completes() {
    let (mut u, sink, mut t, slpt) = setup(true);
    fail_map_of_page_a(&mut u, &mut t, slpt);
    assert_ne!(rd32(&u, FSTS_REG) & FSTS_PPF, 0, "primary fault pending");
    let lo = rd64(&u, FRCD_REG);
    let hi = rd64(&u, FRCD_REG + 8);
    assert_eq!(lo, PAGE_A, "fault info: the IOVA");
    assert_ne!(hi & FRCD_F, 0);
    assert_eq!(
        (hi >> FRCD_FR_SHIFT) & 0xff,
        u64::from(FaultReason::PagingEntryAccess.code())
    );
    assert_eq!(hi & 0xffff, u64::from(DEV.raw()), "source id");
    assert_eq!(hi & FRCD_T_READ, 0, "a writable mapping reports a write");
    assert_eq!(
        sink.sent(),
        vec![(u64::from(FEADDR), FEDATA), (u64::from(IEADDR), IEDATA)],
        "the fault event, then the completion"
    );
    assert_eq!(u.state().host_mapping_failures, 1);
}

#[test]
fn map_failure_with_fpd_forgets_range_but_records_no_fault() {
    let (mut u, sink, mut t) = unit();
    let slpt = t.context(DEV, DID, 4, 0, true);
    enable(&mut u, &t);
    enable_qi(&mut u, &t);
    wr32(&mut u, &t, FECTL_REG, 0);
    u.track(&t.mem, DEV);
    fail_map_of_page_a(&mut u, &mut t, slpt);
    assert_eq!(u.tracked_mappings(DEV), vec![]);
    assert_eq!(rd32(&u, FSTS_REG) & FSTS_PPF, 0, "FPD: nothing recorded");
    assert_eq!(sink.sent(), vec![], "no fault event");
}
