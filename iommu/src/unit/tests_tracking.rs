//! Caching-mode map/unmap notifications through the unit's registers and queue.

use super::tests::*;
use super::*;
use crate::caching_mode::{MapEvent, Mapping};
use crate::test_utils::Tables;

fn map(iova: u64, gpa: u64, size: u64) -> MapEvent {
    MapEvent::Map(Mapping {
        iova,
        gpa,
        size,
        read: true,
        write: true,
    })
}

/// Translation on, DEV in domain DID with 4-level tables, DEV tracked; returns the table root.
fn setup(u: &mut RemappingUnit, t: &mut Tables) -> u64 {
    let slpt = t.context(DEV, DID, 4, 0, false);
    enable(u, t);
    u.track(&t.mem, DEV);
    assert_eq!(u.take_map_events(), vec![], "nothing mapped yet");
    slpt
}

fn events(u: &mut RemappingUnit) -> Vec<MapEvent> {
    u.take_map_events().into_iter().map(|(_, e)| e).collect()
}

#[test]
fn cm_map_then_invalidate_reports_map() {
    let (mut u, _, mut t) = unit();
    let slpt = setup(&mut u, &mut t);
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, RW);
    assert_eq!(events(&mut u), vec![], "no event before the invalidation");
    psi(&mut u, &t, 0x10_0000, 0);
    assert_eq!(events(&mut u), vec![map(0x10_0000, 0x80_0000, 0x1000)]);
    assert_eq!(u.tracked_mappings(DEV).len(), 1);
}

#[test]
fn cm_contiguous_pages_in_one_invalidation_coalesce() {
    let (mut u, _, mut t) = unit();
    let slpt = setup(&mut u, &mut t);
    for i in 0..8 {
        t.map(
            slpt,
            4,
            0x20_0000 + i * 0x1000,
            0x90_0000 + i * 0x1000,
            0x1000,
            RW,
        );
    }
    // Page 5 points elsewhere: it breaks the run.
    t.map(slpt, 4, 0x20_5000, 0xa0_0000, 0x1000, RW);
    psi(&mut u, &t, 0x20_0000, 3);
    assert_eq!(
        events(&mut u),
        vec![
            map(0x20_0000, 0x90_0000, 0x5000),
            map(0x20_5000, 0xa0_0000, 0x1000),
            map(0x20_6000, 0x90_6000, 0x2000),
        ]
    );
}

#[test]
fn cm_superpage_is_one_mapping() {
    let (mut u, _, mut t) = unit();
    let slpt = setup(&mut u, &mut t);
    t.map(slpt, 4, 0x4000_0000, 0x20_0000, 0x20_0000, RW);
    psi(&mut u, &t, 0x4000_0000, 0);
    assert_eq!(events(&mut u), vec![map(0x4000_0000, 0x20_0000, 0x20_0000)]);
}

#[test]
fn cm_unmap_and_remap_are_reported() {
    let (mut u, _, mut t) = unit();
    let slpt = setup(&mut u, &mut t);
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, RW);
    psi(&mut u, &t, 0x10_0000, 0);
    u.take_map_events();
    // Remap to another page, read-only.
    t.map(slpt, 4, 0x10_0000, 0x81_0000, 0x1000, 1);
    psi(&mut u, &t, 0x10_0000, 0);
    assert_eq!(
        events(&mut u),
        vec![
            MapEvent::Unmap {
                iova: 0x10_0000,
                size: 0x1000
            },
            MapEvent::Map(Mapping {
                iova: 0x10_0000,
                gpa: 0x81_0000,
                size: 0x1000,
                read: true,
                write: false
            })
        ]
    );
    // Unmap: clear the leaf.
    t.map(slpt, 4, 0x10_0000, 0, 0x1000, 0);
    psi(&mut u, &t, 0x10_0000, 0);
    assert_eq!(
        events(&mut u),
        vec![MapEvent::Unmap {
            iova: 0x10_0000,
            size: 0x1000
        }]
    );
    assert!(u.tracked_mappings(DEV).is_empty());
    // Invalidating again changes nothing.
    psi(&mut u, &t, 0x10_0000, 0);
    assert_eq!(events(&mut u), vec![]);
}

#[test]
fn cm_partial_unmap_of_coalesced_range_splits_it() {
    let (mut u, _, mut t) = unit();
    let slpt = setup(&mut u, &mut t);
    for i in 0..4 {
        t.map(
            slpt,
            4,
            0x20_0000 + i * 0x1000,
            0x90_0000 + i * 0x1000,
            0x1000,
            RW,
        );
    }
    psi(&mut u, &t, 0x20_0000, 2);
    u.take_map_events();
    t.map(slpt, 4, 0x20_1000, 0, 0x1000, 0);
    psi(&mut u, &t, 0x20_1000, 0);
    assert_eq!(
        events(&mut u),
        vec![
            MapEvent::Unmap {
                iova: 0x20_0000,
                size: 0x4000
            },
            map(0x20_0000, 0x90_0000, 0x1000),
            map(0x20_2000, 0x90_2000, 0x2000),
        ]
    );
}

#[test]
fn cm_domain_invalidation_resyncs_whole_domain_over_qi() {
    let (mut u, _, mut t) = unit();
    let slpt = setup(&mut u, &mut t);
    enable_qi(&mut u, &t);
    t.map(slpt, 4, 0x1000, 0x50_0000, 0x1000, RW);
    t.map(slpt, 4, 0x7f_0000_0000, 0x60_0000, 0x1000, RW);
    // Domain-selective IOTLB invalidation of another domain: nothing.
    desc(&t, 0, 0x2 | (2 << 4) | (9 << 16), 0);
    wr64(&mut u, &t, IQT_REG, 1 << 4);
    assert_eq!(events(&mut u), vec![]);
    desc(&t, 1, 0x2 | (2 << 4) | (u64::from(DID) << 16), 0);
    wr64(&mut u, &t, IQT_REG, 2 << 4);
    assert_eq!(
        events(&mut u),
        vec![
            map(0x1000, 0x50_0000, 0x1000),
            map(0x7f_0000_0000, 0x60_0000, 0x1000)
        ]
    );
}

#[test]
fn cm_pass_through_and_translation_off_are_reported() {
    let (mut u, _, mut t) = unit();
    u.track(&t.mem, DEV);
    assert_eq!(events(&mut u), vec![MapEvent::PassThrough(true)], "TE off");
    u.host_effects_applied(&t.mem, &[]);
    let slpt = t.context(DEV, DID, 4, 0, false);
    t.map(slpt, 4, 0x3000, 0x70_0000, 0x1000, RW);
    wr64(&mut u, &t, RTADDR_REG, crate::test_utils::ROOT_TABLE);
    wr32(&mut u, &t, GCMD_REG, GCMD_SRTP);
    wr32(&mut u, &t, GCMD_REG, GCMD_TE);
    assert_eq!(
        events(&mut u),
        vec![MapEvent::PassThrough(false), map(0x3000, 0x70_0000, 0x1000)]
    );
    u.host_effects_applied(&t.mem, &[]);
    // The guest switches the device to a pass-through context and invalidates it.
    t.context(DEV, DID, 4, 2, false);
    wr64(
        &mut u,
        &t,
        CCMD_REG,
        CCMD_ICC | (3 << CCMD_CIRG_SHIFT) | (u64::from(DEV.raw()) << 16),
    );
    assert_eq!(
        events(&mut u),
        vec![
            MapEvent::Unmap {
                iova: 0x3000,
                size: 0x1000
            },
            MapEvent::PassThrough(true)
        ]
    );
}

#[test]
fn cm_untracked_devices_cost_nothing() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, DID, 4, 0, false);
    enable(&mut u, &t);
    t.map(slpt, 4, 0x3000, 0x70_0000, 0x1000, RW);
    psi(&mut u, &t, 0x3000, 0);
    assert_eq!(u.take_map_events(), vec![]);
}

#[test]
fn cm_self_referencing_tables_walk_is_bounded() {
    let (mut u, _, mut t) = unit();
    let slpt = setup(&mut u, &mut t);
    // Every entry of every level points back at the root: 512^4 leaves if walked naively.
    for i in 0..512 {
        t.w64(slpt + i * 8, slpt | RW);
    }
    wr64(&mut u, &t, IOTLB_REG, IOTLB_IVT | (1 << IOTLB_IIRG_SHIFT));
    let n = u.take_map_events().len();
    assert!(n > 0 && n <= 4 << 20, "{n} events");
}

#[test]
fn cm_domain_flush_keeps_separately_mapped_neighbours_as_they_are() {
    let (mut u, _, mut t) = unit();
    let slpt = setup(&mut u, &mut t);
    // Two pages, contiguous in IOVA and GPA, mapped by two separate operations.
    t.map(slpt, 4, 0x30_0000, 0xa0_0000, 0x1000, RW);
    psi(&mut u, &t, 0x30_0000, 0);
    t.map(slpt, 4, 0x30_1000, 0xa0_1000, 0x1000, RW);
    psi(&mut u, &t, 0x30_1000, 0);
    assert_eq!(
        events(&mut u),
        vec![
            map(0x30_0000, 0xa0_0000, 0x1000),
            map(0x30_1000, 0xa0_1000, 0x1000)
        ]
    );
    // A domain-selective flush walks everything again; nothing changed, so nothing is
    // remapped (a remap would briefly take live mappings away from the device).
    wr64(
        &mut u,
        &t,
        IOTLB_REG,
        IOTLB_IVT | (2 << IOTLB_IIRG_SHIFT) | (u64::from(DID) << IOTLB_DID_SHIFT),
    );
    assert_eq!(events(&mut u), vec![]);
    assert_eq!(u.tracked_mappings(DEV).len(), 2);
}

#[test]
fn cm_invalidation_over_kept_and_new_pages_maps_only_the_new() {
    let (mut u, _, mut t) = unit();
    let slpt = setup(&mut u, &mut t);
    t.map(slpt, 4, 0x40_1000, 0xb0_1000, 0x1000, RW);
    psi(&mut u, &t, 0x40_1000, 0);
    u.take_map_events();
    // New pages on both sides, one invalidation over all four pages.
    t.map(slpt, 4, 0x40_0000, 0xb0_0000, 0x1000, RW);
    t.map(slpt, 4, 0x40_2000, 0xb0_2000, 0x1000, RW);
    t.map(slpt, 4, 0x40_3000, 0xb0_3000, 0x1000, RW);
    psi(&mut u, &t, 0x40_0000, 2);
    assert_eq!(
        events(&mut u),
        vec![
            map(0x40_0000, 0xb0_0000, 0x1000),
            map(0x40_2000, 0xb0_2000, 0x2000)
        ]
    );
}
