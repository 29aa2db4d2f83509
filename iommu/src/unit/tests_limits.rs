//! The bounds of `crate::limits` under a hostile guest (robustness review F-CM-1, F-CM-2,
//! F-CM-3, R-4): work per write, ranges per device, and no log lines the guest asked to
//! suppress.

use std::sync::Mutex;
use std::thread::ThreadId;

use super::tests::*;
use super::*;
use crate::caching_mode::MapEvent;
use crate::limits::{self, Limits};
use crate::test_utils::Tables;

fn dsi(u: &mut RemappingUnit, t: &Tables) {
    wr64(
        u,
        t,
        IOTLB_REG,
        IOTLB_IVT | (2 << IOTLB_IIRG_SHIFT) | (u64::from(DID) << IOTLB_DID_SHIFT),
    );
}

fn fill(t: &Tables, table: u64, value: u64) {
    for i in 0..512 {
        t.w64(table + i * 8, value);
    }
}

fn unit_with(limits: Limits) -> (RemappingUnit, Sink, Tables) {
    let sink = Sink::default();
    let u = RemappingUnit::with_limits(IommuConfig::default(), Box::new(sink.clone()), limits);
    (u, sink, Tables::new())
}

/// DEV tracked in domain DID; its 4-level tables alias one table per level, so every IOVA
/// is present down to level 1, whose 512 entries are all `leaf`. Returns the L1 table.
fn aliasing_tables(u: &mut RemappingUnit, t: &mut Tables, leaf: u64) -> u64 {
    let slpt = t.context(DEV, DID, 4, 0, false);
    enable(u, t);
    u.track(&t.mem, DEV);
    let (l3, l2, l1) = (t.alloc(), t.alloc(), t.alloc());
    fill(t, slpt, l3 | RW);
    fill(t, l3, l2 | RW);
    fill(t, l2, l1 | RW);
    fill(t, l1, leaf);
    l1
}

fn fault_at(u: &RemappingUnit, iova: u64) -> bool {
    u.faults
        .records()
        .any(|r| r.source == DEV && r.reason == FaultReason::PagingEntryAccess && r.info == iova)
}

#[test]
fn cm_diff_of_64k_unchanged_ranges_is_linear() {
    const N: u64 = 65_536;
    let (mut u, _, mut t) = unit_with(Limits {
        tracked_ranges_per_device: 1 << 20,
        ..Limits::default()
    });
    let slpt = t.context(DEV, DID, 4, 0, false);
    let (l3, l2, l1) = (t.alloc(), t.alloc(), t.alloc());
    t.w64(slpt, l3 | RW);
    t.w64(l3, l2 | RW);
    for i in 0..N / 512 {
        t.w64(l2 + i * 8, l1 | RW);
    }
    // Every page maps the same GPA: nothing coalesces, N ranges.
    fill(&t, l1, 0x40_0000 | RW);
    enable(&mut u, &t);
    u.track(&t.mem, DEV);
    assert_eq!(u.tracked_mappings(DEV).len() as u64, N);
    u.take_map_events();
    let before = u.work.diff_steps;
    dsi(&mut u, &t);
    assert!(u.take_map_events().is_empty(), "nothing changed");
    let steps = u.work.diff_steps - before;
    assert!(steps <= 8 * N, "{steps} diff steps for {N} ranges");
}

#[test]
fn cm_ranges_past_the_device_cap_are_refused_with_one_event_and_a_fault() {
    let (mut u, _, mut t) = unit();
    aliasing_tables(&mut u, &mut t, 0x40_0000 | RW);
    // 2^17 pages at IOVA 0 each map GPA 4 MiB: 131,072 ranges wanted.
    psi(&mut u, &t, 0, 17);
    let cap = limits::TRACKED_RANGES_PER_DEVICE;
    let ranges = u.tracked_mappings(DEV).len();
    assert!(ranges <= cap, "{ranges} tracked ranges");
    let events = u.take_map_events();
    let maps = events
        .iter()
        .filter(|(_, e)| matches!(e, MapEvent::Map(_)))
        .count();
    assert_eq!(maps, cap);
    let first_refused = (cap as u64) << 12;
    assert!(fault_at(&u, first_refused));
    // Another invalidation asks again: still capped, the VMM is told only once.
    psi(&mut u, &t, 1 << 30, 17);
    let events: Vec<_> = events.into_iter().chain(u.take_map_events()).collect();
    let told = events
        .iter()
        .filter(|(_, e)| *e == MapEvent::RangeLimit { limit: cap })
        .count();
    assert_eq!(told, 1);
    assert!(u.tracked_mappings(DEV).len() <= cap);
    assert_eq!(u.tracked_range_stats(DEV).map(|r| r.peak), Some(cap));
}

const SMALL: Limits = Limits {
    iotlb_entries: limits::IOTLB_ENTRIES,
    tracked_ranges_per_device: limits::TRACKED_RANGES_PER_DEVICE,
    walk_entries_per_domain: 20_000,
    walk_entries_per_write: 30_000,
};

#[test]
fn qi_full_queue_of_global_invalidations_stays_within_the_write_budget() {
    let (mut u, _, mut t) = unit_with(SMALL);
    aliasing_tables(&mut u, &mut t, 0); // present down to level 1, nothing mapped
    wr64(&mut u, &t, IQA_REG, QUEUE | 7); // 32,768 entries
    wr64(&mut u, &t, IQT_REG, 0);
    let g = rd32(&u, GSTS_REG);
    wr32(&mut u, &t, GCMD_REG, g | GCMD_QIE);
    const N: u64 = 32_767;
    for i in 0..N {
        desc(&t, i, 0x2 | (1 << 4), 0); // global IOTLB invalidation
    }
    wr64(&mut u, &t, IQT_REG, N << 4);
    assert_eq!(rd64(&u, IQH_REG), N << 4, "every descriptor ran");
    assert!(u.work.peak_queue_write <= SMALL.walk_entries_per_write);
    assert!(u.work.peak_invalidation <= SMALL.walk_entries_per_domain);
    assert_eq!(u.work.peak_queue_write, SMALL.walk_entries_per_write);
}

#[test]
fn cm_ranges_past_the_walk_budget_are_unmapped_not_kept() {
    let (mut u, _, mut t) = unit_with(SMALL);
    let slpt = t.context(DEV, DID, 4, 0, false);
    // A page mapped at IOVA 1 GiB, reported mapped.
    t.map(slpt, 4, 1 << 30, 0x80_0000, 0x1000, RW);
    enable(&mut u, &t);
    u.track(&t.mem, DEV);
    assert_eq!(u.tracked_mappings(DEV).len(), 1);
    u.take_map_events();
    // Below it, the guest makes IOVA 0..1 GiB a self-aliasing maze bigger than the budget.
    let l3 = t.r64(slpt) & !0xfff;
    let (l2, l1) = (t.alloc(), t.alloc());
    t.w64(l3, l2 | RW);
    fill(&t, l2, l1 | RW);
    dsi(&mut u, &t);
    // The walk never reached 1 GiB: that page is no longer verified, so it goes.
    let events = u.take_map_events();
    assert!(
        events.contains(&(
            DEV,
            MapEvent::Unmap {
                iova: 1 << 30,
                size: 0x1000
            }
        )),
        "{events:?}"
    );
    assert!(u.tracked_mappings(DEV).is_empty());
    assert!(u.faults.records().any(|r| r.source == DEV
        && r.reason == FaultReason::PagingEntryAccess
        && r.info < 1 << 30));
    // With the maze gone, the next invalidation maps the page again.
    t.w64(l3, 0);
    dsi(&mut u, &t);
    assert_eq!(u.tracked_mappings(DEV).len(), 1);
}

#[test]
fn limit_hits_counts_a_walk_budget_hit_even_with_fpd() {
    let (mut u, _, mut t) = unit_with(SMALL);
    let slpt = t.context(DEV, DID, 4, 0, true);
    t.map(slpt, 4, 1 << 30, 0x80_0000, 0x1000, RW);
    enable(&mut u, &t);
    u.track(&t.mem, DEV);
    dsi(&mut u, &t);
    assert_eq!(u.limit_hits(), 0);
    let l3 = t.r64(slpt) & !0xfff;
    let (l2, l1) = (t.alloc(), t.alloc());
    t.w64(l3, l2 | RW);
    fill(&t, l2, l1 | RW);
    dsi(&mut u, &t);
    // FPD keeps the fault out of the log; the counter still tells the mapping is partial.
    assert_eq!(u.faults.records().count(), 0);
    assert_eq!(u.limit_hits(), 1);
}

#[test]
fn state_reports_range_peaks_and_walk_limits() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, DID, 4, 0, false);
    t.map(slpt, 4, 0, 0x80_0000, 0x1000, RW);
    t.map(slpt, 4, 0x2000, 0x90_0000, 0x1000, RW);
    enable(&mut u, &t);
    u.track(&t.mem, DEV);
    let s = u.state();
    assert_eq!(s.tracked.len(), 1, "{s:?}");
    assert_eq!(s.tracked[0].device, DEV);
    assert_eq!(s.tracked[0].ranges, 2);
    assert_eq!(s.tracked[0].peak_ranges, Some(2));
    assert_eq!(s.tracked[0].refused_ranges, Some(0));
    assert_eq!(s.limits.range_cap, u.limits.tracked_ranges_per_device);
    assert_eq!(
        s.limits.walk_budget_per_write,
        u.limits.walk_entries_per_write
    );
    assert!(s.limits.peak_walk_per_invalidation > 0, "{s:?}");
}

/// Log lines, by the thread that wrote them (tests run in parallel).
struct Capture(Mutex<Vec<(ThreadId, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let line = r.args().to_string();
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        v.push((std::thread::current().id(), line));
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

/// Lines this thread logged while `f` ran.
fn logged_by(f: impl FnOnce()) -> Vec<String> {
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let me = std::thread::current().id();
    let mine = || -> Vec<String> {
        let v = CAPTURE.0.lock().unwrap_or_else(|p| p.into_inner());
        v.iter()
            .filter(|(t, _)| *t == me)
            .map(|(_, l)| l.clone())
            .collect()
    };
    let before = mine().len();
    f();
    mine().split_off(before)
}

#[test]
fn dma_fault_with_context_fpd_is_not_logged() {
    let (mut u, _, mut t) = unit();
    t.context(DEV, DID, 4, 0, true);
    enable(&mut u, &t);
    let lines = logged_by(|| {
        for _ in 0..3 {
            assert!(matches!(
                u.translate(&t.mem, DEV, Iova(0x7000), true),
                DmaOutcome::Blocked(_)
            ));
        }
    });
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn interrupt_fault_with_irte_fpd_is_not_logged() {
    let (mut u, _, t) = unit();
    let irt = 0x40_0000u64;
    // IRTE 7: present, FPD, requester-id checked against DEV.
    t.w64(irt + 7 * 16, 1 | 2 | (0x45 << 16));
    t.w64(irt + 7 * 16 + 8, (1 << 18) | u64::from(DEV.raw()));
    wr64(&mut u, &t, IRTA_REG, irt | IRTA_EIME | 7);
    wr32(&mut u, &t, GCMD_REG, GCMD_SIRTP);
    wr32(&mut u, &t, GCMD_REG, GCMD_IRE);
    let req = crate::InterruptRequest {
        address: 0xfee0_0000 | (1 << 4) | (7 << 5),
        data: 0,
        source: Bdf::new(1, 0, 0),
    };
    let lines = logged_by(|| {
        assert_eq!(
            u.remap_interrupt(&t.mem, req),
            InterruptOutcome::Blocked(FaultReason::IrSourceIdInvalid)
        );
    });
    assert!(lines.is_empty(), "{lines:?}");
}
