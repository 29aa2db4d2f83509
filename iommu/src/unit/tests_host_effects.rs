//! Completion after host effects beyond map events: an interrupt entry cache invalidation
//! (VT-d 6.5.2.7) completes for a wait behind it (6.5.2.8) only once the consumer has
//! recomputed its interrupt routes, and a GCMD write's status (TES, RTPS, IRES, IRTPS; 10.4.5,
//! 11.4.5) shows only once its host effects are applied.

use vm_memory::{Bytes, GuestAddress};

use super::tests::*;
use super::*;
use crate::caching_mode::MapEvent;
use crate::test_utils::{Tables, ROOT_TABLE};

const IRT: u64 = 0x40_0000;
/// IRTA: the table at IRT, 2^(7+1) entries, xAPIC mode.
const IRTA: u64 = IRT | 7;
/// Invalidation descriptor type 4: interrupt entry cache, global (G clear).
const IEC_GLOBAL: u64 = 0x4;
const PAGE: u64 = 0x10_0000;

fn status(t: &Tables) -> u32 {
    t.mem.read_obj(GuestAddress(STATUS)).unwrap()
}

fn gsts(u: &RemappingUnit) -> u32 {
    rd32(u, GSTS_REG)
}

/// A wait descriptor (status write and interrupt) at slot `i`.
fn wait_at(t: &Tables, i: u64) {
    let (lo, hi) = wait_desc(1);
    desc(t, i, lo, hi);
}

/// Interrupt remapping and the queue on, a consumer holding interrupt routes, the
/// completion interrupt unmasked; nothing outstanding.
fn routes_unit() -> (RemappingUnit, Sink, Tables) {
    let (mut u, sink, t) = unit();
    u.track_interrupt_routes();
    wr64(&mut u, &t, IRTA_REG, IRTA);
    wr32(&mut u, &t, GCMD_REG, GCMD_SIRTP);
    wr32(&mut u, &t, GCMD_REG, GCMD_IRE);
    acknowledge(&mut u, &t);
    enable_qi(&mut u, &t);
    wr32(&mut u, &t, IECTL_REG, 0);
    (u, sink, t)
}

/// Takes and acknowledges whatever is outstanding.
fn acknowledge(u: &mut RemappingUnit, t: &Tables) {
    u.take_host_effects();
    u.host_effects_applied(&t.mem, &[]);
}

/// The wait at slot 1 has not completed: no status, no IWC, no interrupt, IQH at it.
fn assert_wait_pending(u: &RemappingUnit, sink: &Sink, t: &Tables, when: &str) {
    assert_eq!(status(t), 0, "status written {when}");
    assert_eq!(rd32(u, ICS_REG) & ICS_IWC, 0, "ICS.IWC set {when}");
    assert_eq!(sink.sent(), vec![], "completion interrupt {when}");
    assert_eq!(rd64(u, IQH_REG), 1 << 4, "IQH moved past the wait {when}");
}

fn assert_wait_complete(u: &RemappingUnit, t: &Tables) {
    assert_eq!(status(t), 1);
    assert_ne!(rd32(u, ICS_REG) & ICS_IWC, 0);
    assert_eq!(rd64(u, IQH_REG), 2 << 4);
}

#[test]
fn qi_wait_after_global_iec_completes_only_once_routes_are_acknowledged() {
    let (mut u, sink, t) = routes_unit();
    desc(&t, 0, IEC_GLOBAL, 0);
    wait_at(&t, 1);
    wr64(&mut u, &t, IQT_REG, 2 << 4);
    assert_wait_pending(&u, &sink, &t, "before the change was taken");
    let effects = u.take_host_effects();
    assert_eq!(
        effects,
        HostEffects {
            map_events: vec![],
            interrupt_routes: true
        }
    );
    assert_wait_pending(&u, &sink, &t, "before the routes were recomputed");
    u.host_effects_applied(&t.mem, &[]);
    assert_wait_complete(&u, &t);
    assert_eq!(sink.sent().len(), 1, "the completion interrupt");
    assert!(u.take_host_effects().is_empty(), "reported once");
}

#[test]
fn qi_wait_after_index_selective_iec_completes_only_once_routes_are_acknowledged() {
    let (mut u, sink, t) = routes_unit();
    // Index-selective (G set), index 4, mask 1.
    desc(&t, 0, IEC_GLOBAL | (1 << 4) | (1 << 27) | (4 << 32), 0);
    wait_at(&t, 1);
    wr64(&mut u, &t, IQT_REG, 2 << 4);
    assert!(u.take_host_effects().interrupt_routes);
    assert_wait_pending(&u, &sink, &t, "before the routes were recomputed");
    u.host_effects_applied(&t.mem, &[]);
    assert_wait_complete(&u, &t);
}

#[test]
fn qi_wait_after_iec_without_route_consumer_completes_at_once() {
    let (mut u, _, t) = unit();
    wr64(&mut u, &t, IRTA_REG, IRTA);
    wr32(&mut u, &t, GCMD_REG, GCMD_SIRTP);
    enable_qi(&mut u, &t);
    desc(&t, 0, IEC_GLOBAL, 0);
    wait_at(&t, 1);
    wr64(&mut u, &t, IQT_REG, 2 << 4);
    assert_wait_complete(&u, &t);
}

#[test]
fn gcmd_sirtp_irtps_clear_until_routes_are_acknowledged() {
    let (mut u, _, t) = unit();
    u.track_interrupt_routes();
    wr64(&mut u, &t, IRTA_REG, IRTA);
    wr32(&mut u, &t, GCMD_REG, GCMD_SIRTP);
    assert_eq!(gsts(&u) & GSTS_IRTPS, 0, "IRTPS before the routes");
    assert_eq!(u.active_irta(), IRTA, "the unit latched the table");
    acknowledge(&mut u, &t);
    assert_ne!(gsts(&u) & GSTS_IRTPS, 0);
}

#[test]
fn gcmd_ire_status_shows_once_routes_are_acknowledged() {
    let (mut u, _, t) = unit();
    u.track_interrupt_routes();
    wr64(&mut u, &t, IRTA_REG, IRTA);
    wr32(&mut u, &t, GCMD_REG, GCMD_SIRTP);
    acknowledge(&mut u, &t);
    wr32(&mut u, &t, GCMD_REG, GCMD_IRE);
    assert_eq!(gsts(&u) & GSTS_IRES, 0, "IRES before the routes");
    assert!(u.take_host_effects().interrupt_routes);
    assert_eq!(gsts(&u) & GSTS_IRES, 0, "IRES before the acknowledgement");
    u.host_effects_applied(&t.mem, &[]);
    assert_ne!(gsts(&u) & GSTS_IRES, 0);
}

#[test]
fn gcmd_cfi_status_shows_once_routes_are_acknowledged() {
    let (mut u, _, t) = routes_unit();
    wr32(&mut u, &t, GCMD_REG, GCMD_IRE | GCMD_QIE | GCMD_CFI);
    assert_eq!(gsts(&u) & GSTS_CFIS, 0, "CFIS before the routes");
    assert_ne!(gsts(&u) & GSTS_QIES, 0, "QIES has no host effects");
    acknowledge(&mut u, &t);
    assert_ne!(gsts(&u) & GSTS_CFIS, 0);
}

/// DEV in domain DID with PAGE mapped, the root table latched, DEV tracked, translation off;
/// nothing outstanding.
fn tracked_unit() -> (RemappingUnit, Tables) {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, DID, 4, 0, false);
    t.map(slpt, 4, PAGE, 0x80_0000, 0x1000, RW);
    wr64(&mut u, &t, RTADDR_REG, ROOT_TABLE);
    wr32(&mut u, &t, GCMD_REG, GCMD_SRTP);
    u.track(&t.mem, DEV);
    acknowledge(&mut u, &t);
    (u, t)
}

#[test]
fn gcmd_te_status_shows_once_host_effects_are_applied() {
    let (mut u, t) = tracked_unit();
    wr32(&mut u, &t, GCMD_REG, GCMD_TE);
    assert_eq!(gsts(&u) & GSTS_TES, 0, "TES before the events were taken");
    let events = u.take_host_effects().map_events;
    assert_eq!(events[0], (DEV, MapEvent::PassThrough(false)));
    assert_eq!(gsts(&u) & GSTS_TES, 0, "TES before the events were applied");
    u.host_effects_applied(&t.mem, &[]);
    assert_ne!(gsts(&u) & GSTS_TES, 0);
    assert_ne!(gsts(&u) & GSTS_RTPS, 0, "RTPS untouched");
}

#[test]
fn gcmd_te_off_status_clears_once_host_effects_are_applied() {
    let (mut u, t) = tracked_unit();
    wr32(&mut u, &t, GCMD_REG, GCMD_TE);
    acknowledge(&mut u, &t);
    wr32(&mut u, &t, GCMD_REG, 0);
    assert_ne!(
        gsts(&u) & GSTS_TES,
        0,
        "TES still shown before the identity map"
    );
    acknowledge(&mut u, &t);
    assert_eq!(gsts(&u) & GSTS_TES, 0);
}

#[test]
fn gcmd_te_unit_translates_before_status_shows() {
    let (mut u, t) = tracked_unit();
    wr32(&mut u, &t, GCMD_REG, GCMD_TE);
    assert_eq!(gsts(&u) & GSTS_TES, 0);
    // Emulated devices go through the unit, which follows the command at once.
    match u.translate(&t.mem, DEV, Iova(PAGE), false) {
        DmaOutcome::Translated(tr) => assert_eq!(tr.gpa_base, 0x80_0000),
        o => panic!("{o:?}"),
    }
}

#[test]
fn gcmd_srtp_rtps_clear_until_host_effects_are_applied() {
    let (mut u, mut t) = tracked_unit();
    wr32(&mut u, &t, GCMD_REG, GCMD_TE);
    acknowledge(&mut u, &t);
    // A new root table in which DEV has no context: its mapping goes.
    let root = t.alloc();
    wr64(&mut u, &t, RTADDR_REG, root);
    wr32(&mut u, &t, GCMD_REG, GCMD_TE | GCMD_SRTP);
    assert_eq!(gsts(&u) & GSTS_RTPS, 0, "RTPS before the unmap");
    assert_ne!(gsts(&u) & GSTS_TES, 0, "TES unchanged, still shown");
    assert!(!u.take_host_effects().map_events.is_empty());
    u.host_effects_applied(&t.mem, &[]);
    assert_ne!(gsts(&u) & GSTS_RTPS, 0);
}

#[test]
fn gcmd_te_without_host_effects_shows_at_once() {
    let (mut u, _, t) = unit();
    wr64(&mut u, &t, RTADDR_REG, ROOT_TABLE);
    wr32(&mut u, &t, GCMD_REG, GCMD_SRTP);
    wr32(&mut u, &t, GCMD_REG, GCMD_TE);
    assert_ne!(gsts(&u) & GSTS_TES, 0);
}
