//! Guest-controlled addresses and fields at their limits (robustness review F-IOTLB-1,
//! F-PT-1, F-IR-1/2, F-CTX-1, F-SL-1, F-QI-1/2): what the hardware does, never a wrap, a
//! panic or a stale translation.

use vm_memory::{Bytes, GuestAddress};

use super::tests::*;
use super::*;
use crate::test_utils::Tables;
use crate::InterruptRequest;

fn translated(u: &mut RemappingUnit, t: &Tables, iova: u64) -> bool {
    matches!(
        u.translate(&t.mem, DEV, Iova(iova), true),
        DmaOutcome::Translated(_)
    )
}

/// IOVA 0 -> GPA 2 MiB through one 2 MiB leaf; returns the level-2 table holding it.
fn superpage_at_zero(u: &mut RemappingUnit, t: &mut Tables) -> u64 {
    let slpt = t.context(DEV, DID, 4, 0, false);
    t.map(slpt, 4, 0, 0x20_0000, 0x20_0000, RW);
    enable(u, t);
    let l3 = t.r64(slpt) & !0xfff;
    t.r64(l3) & !0xfff
}

#[test]
fn iotlb_psi_of_first_page_drops_superpage_cached_elsewhere() {
    let (mut u, _, mut t) = unit();
    let l2 = superpage_at_zero(&mut u, &mut t);
    assert!(translated(&mut u, &t, 0));
    assert!(translated(&mut u, &t, 0x10_0000));
    t.w64(l2, 0);
    psi(&mut u, &t, 0, 0);
    assert!(!translated(&mut u, &t, 0x10_0000), "stale 2 MiB leaf used");
    assert!(!translated(&mut u, &t, 0));
}

#[test]
fn iotlb_psi_of_a_middle_page_drops_the_whole_superpage() {
    let (mut u, _, mut t) = unit();
    let l2 = superpage_at_zero(&mut u, &mut t);
    assert!(translated(&mut u, &t, 0x1000));
    t.w64(l2, 0);
    psi(&mut u, &t, 0x18_0000, 0);
    assert!(!translated(&mut u, &t, 0x1000), "stale 2 MiB leaf used");
}

#[test]
fn iotlb_queued_psi_drops_the_whole_1g_page() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, DID, 4, 0, false);
    t.map(slpt, 4, 0, 0x4000_0000, 0x4000_0000, RW);
    enable(&mut u, &t);
    enable_qi(&mut u, &t);
    assert!(translated(&mut u, &t, 0x3000_0000));
    let l3 = t.r64(slpt) & !0xfff;
    t.w64(l3, 0);
    // IOTLB descriptor, page granularity, DID, ADDR 1 MiB, AM 0.
    desc(&t, 0, 0x2 | (3 << 4) | (u64::from(DID) << 16), 0x10_0000);
    wr64(&mut u, &t, IQT_REG, 1 << 4);
    assert_eq!(rd64(&u, IQH_REG), 1 << 4);
    assert!(
        !translated(&mut u, &t, 0x3000_0000),
        "stale 1 GiB leaf used"
    );
}

#[test]
fn iotlb_psi_outside_superpage_keeps_it() {
    let (mut u, _, mut t) = unit();
    let l2 = superpage_at_zero(&mut u, &mut t);
    assert!(translated(&mut u, &t, 0x1000));
    t.w64(l2, 0);
    psi(&mut u, &t, 0x20_0000, 9);
    assert!(translated(&mut u, &t, 0x1000), "cached until invalidated");
}

#[test]
fn iotlb_pass_through_high_iova_then_psi_does_not_overflow() {
    let (mut u, _, mut t) = unit();
    let ctp = t.root(DEV.bus());
    t.w64(ctp + u64::from(DEV.devfn()) * 16, 1 | (2 << 2));
    t.w64(
        ctp + u64::from(DEV.devfn()) * 16 + 8,
        (u64::from(DID) << 8) | 2,
    );
    enable(&mut u, &t);
    assert!(translated(&mut u, &t, 0xffff_ffff_ffff_f000));
    psi(&mut u, &t, 0xffff_ffff_ffff_e000, 1);
    psi(&mut u, &t, 0xffff_ffff_ffff_f000, 0);
    assert!(translated(&mut u, &t, 0xffff_ffff_ffff_f000));
}

/// Points IRTA at `irta` (x2APIC mode, `s`: 2^(s+1) entries) and turns remapping on.
fn ir_on(u: &mut RemappingUnit, t: &Tables, irta: u64, s: u64) {
    wr64(u, t, IRTA_REG, irta | IRTA_EIME | s);
    wr32(u, t, GCMD_REG, GCMD_SIRTP);
    let g = rd32(u, GSTS_REG) & !GCMD_ONE_SHOT;
    wr32(u, t, GCMD_REG, g | GCMD_IRE);
}

fn remappable(handle: u64, subhandle: Option<u32>) -> InterruptRequest {
    let mut address = 0xfee0_0000 | (1 << 4) | ((handle & 0x7fff) << 5);
    if handle & 0x8000 != 0 {
        address |= 1 << 2;
    }
    if subhandle.is_some() {
        address |= 1 << 3;
    }
    InterruptRequest {
        address,
        data: subhandle.unwrap_or(0),
        source: DEV,
    }
}

#[test]
fn ir_table_address_past_the_top_is_a_table_access_fault() {
    let (mut u, _, t) = unit();
    // A present IRTE at GPA 0, where a wrapped address would land.
    t.w64(0x0, 1 | (0x31 << 16));
    t.w64(0x8, 0);
    ir_on(&mut u, &t, 0xffff_ffff_ffff_f000, 15);
    assert_eq!(
        u.remap_interrupt(&t.mem, remappable(256, None)),
        InterruptOutcome::Blocked(FaultReason::IrTableAccess)
    );
}

#[test]
fn ir_handle_plus_subhandle_past_the_table_is_index_fault() {
    let (mut u, _, t) = unit();
    let irt = 0x40_0000u64;
    t.w64(irt + 0x10 * 16, 1 | (0x31 << 16));
    t.w64(irt + 0x10 * 16 + 8, 0);
    ir_on(&mut u, &t, irt, 15); // 65,536 entries
                                // 0xffff + 0x11 = 0x10010: past the largest table, not IRTE 0x10.
    assert_eq!(
        u.remap_interrupt(&t.mem, remappable(0xffff, Some(0x11))),
        InterruptOutcome::Blocked(FaultReason::IrIndexOutOfRange)
    );
}

#[test]
fn ctx_device_tlb_type_without_ecap_dt_is_invalid_context() {
    let (mut u, _, mut t) = unit();
    assert_eq!(u.config().ecap() & crate::registers::ecap::DT, 0);
    let slpt = t.context(DEV, DID, 4, 1, false); // TT = 01b
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, RW);
    enable(&mut u, &t);
    assert_eq!(
        u.translate(&t.mem, DEV, Iova(0x10_0000), false),
        DmaOutcome::Blocked(FaultReason::ContextEntryInvalid)
    );
}

#[test]
fn ctx_device_tlb_type_with_ecap_dt_translates() {
    let cfg = IommuConfig {
        device_iotlb: true,
        ..IommuConfig::default()
    };
    let mut u = RemappingUnit::new(cfg, Box::new(Sink::default()));
    let mut t = Tables::new();
    let slpt = t.context(DEV, DID, 4, 1, false);
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, RW);
    enable(&mut u, &t);
    assert!(translated(&mut u, &t, 0x10_0000));
}

#[test]
fn sl_pte_bit7_of_a_4k_leaf_is_ignored() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, DID, 4, 0, false);
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, RW | (1 << 7));
    enable(&mut u, &t);
    assert!(translated(&mut u, &t, 0x10_0000));
}

#[test]
fn sl_pte_bit7_of_a_4k_leaf_is_ignored_by_the_tracker() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, DID, 4, 0, false);
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, RW | (1 << 7));
    enable(&mut u, &t);
    u.track(&t.mem, DEV);
    assert_eq!(u.tracked_mappings(DEV).len(), 1);
}

#[test]
fn sl_pte_snp_bit_without_ecap_sc_is_reserved() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, DID, 4, 0, false);
    t.map(slpt, 4, 0x10_0000, 0x80_0000, 0x1000, RW | (1 << 11));
    enable(&mut u, &t);
    assert_eq!(
        u.translate(&t.mem, DEV, Iova(0x10_0000), false),
        DmaOutcome::Blocked(FaultReason::PagingEntryReserved)
    );
}

#[test]
fn qi_queue_address_past_the_top_is_iqe_not_wrap() {
    let (mut u, _, t) = unit();
    wr64(&mut u, &t, IQA_REG, QUEUE | 1); // 512 entries
    wr64(&mut u, &t, IQT_REG, 0);
    wr32(&mut u, &t, GCMD_REG, GCMD_QIE);
    for i in 0..300 {
        desc(&t, i, 0x4, 0); // global interrupt entry cache invalidations
    }
    wr64(&mut u, &t, IQT_REG, 300 << 4);
    assert_eq!(rd64(&u, IQH_REG), 300 << 4);
    // The queue moves to the top of the address space; head 300 would wrap to GPA 0x2c0.
    wr64(&mut u, &t, IQA_REG, 0xffff_ffff_ffff_f000 | 7);
    let (lo, hi) = wait_desc(0x77);
    t.w64(0x2c0, lo);
    t.w64(0x2c8, hi);
    wr64(&mut u, &t, IQT_REG, 301 << 4);
    let status: u32 = t.mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_ne!(status, 0x77, "descriptor executed from a wrapped address");
    assert_ne!(rd32(&u, FSTS_REG) & FSTS_IQE, 0);
}

#[test]
fn qi_tail_beyond_queue_size_is_iqe() {
    let (mut u, _, t) = unit();
    enable_qi(&mut u, &t); // 256 entries
    for i in 0..256 {
        desc(&t, i, 0x4, 0);
    }
    wr64(&mut u, &t, IQT_REG, 300 << 4);
    assert_ne!(rd32(&u, FSTS_REG) & FSTS_IQE, 0);
    assert_eq!(rd64(&u, IQH_REG), 0, "nothing executed");
}

#[test]
fn iotlb_guest_cycling_domains_and_pages_stays_within_capacity() {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, 0, 4, 0, false);
    let (l3, l2, l1) = (t.alloc(), t.alloc(), t.alloc());
    t.w64(slpt, l3 | RW);
    t.w64(l3, l2 | RW);
    t.w64(l2, l1 | RW);
    for i in 0..512 {
        t.w64(l1 + i * 8, (0x40_0000 + (i << 12)) | RW);
    }
    enable(&mut u, &t);
    let slot = t.root(DEV.bus()) + u64::from(DEV.devfn()) * 16;
    for did in 0..64u64 {
        // A new domain id, then a device-selective context-cache invalidation, which per
        // VT-d leaves the IOTLB alone.
        t.w64(slot + 8, (did << 8) | 2);
        let sid = u64::from(DEV.raw()) << 16;
        wr64(
            &mut u,
            &t,
            CCMD_REG,
            CCMD_ICC | (3 << CCMD_CIRG_SHIFT) | sid,
        );
        for page in 0..512 {
            assert!(translated(&mut u, &t, page << 12));
        }
    }
    assert!(
        u.iotlb.len() <= crate::limits::IOTLB_ENTRIES,
        "IOTLB holds {} entries",
        u.iotlb.len()
    );
}
