use super::*;
use crate::test_utils::{Tables, ROOT_TABLE};

const DEV: Bdf = Bdf::new(0, 3, 0);
const CFG: WalkConfig = WalkConfig {
    sagaw: 0b110,
    sllps: 0b11,
    pass_through: true,
    device_tlb: false,
};
const RW: u64 = 3;

fn ctx(t: &Tables) -> Result<ContextEntry, DmaFault> {
    lookup_context(&t.mem, ROOT_TABLE, DEV, &CFG)
}

fn walk(t: &Tables, iova: u64, write: bool) -> Result<Translation, DmaFault> {
    translate(&t.mem, &ctx(t).unwrap(), Iova(iova), write, &CFG)
}

fn reason<T: std::fmt::Debug>(r: Result<T, DmaFault>) -> FaultReason {
    r.unwrap_err().reason
}

#[test]
fn context_root_not_present_faults_01() {
    let t = Tables::new();
    assert_eq!(reason(ctx(&t)), FaultReason::RootEntryNotPresent);
}

#[test]
fn context_entry_not_present_faults_02() {
    let mut t = Tables::new();
    t.root(0);
    assert_eq!(reason(ctx(&t)), FaultReason::ContextEntryNotPresent);
}

#[test]
fn context_reserved_tt_faults_03() {
    let mut t = Tables::new();
    t.context(DEV, 1, 4, 3, false);
    assert_eq!(reason(ctx(&t)), FaultReason::ContextEntryInvalid);
}

#[test]
fn context_unsupported_aw_faults_03() {
    let mut t = Tables::new();
    t.context(DEV, 1, 4, 0, false);
    let c = WalkConfig { sagaw: 0b10, ..CFG };
    let r = lookup_context(&t.mem, ROOT_TABLE, DEV, &c);
    assert_eq!(reason(r), FaultReason::ContextEntryInvalid);
}

#[test]
fn context_pass_through_without_ecap_pt_faults_03() {
    let mut t = Tables::new();
    t.context(DEV, 1, 4, 2, false);
    let c = WalkConfig {
        pass_through: false,
        ..CFG
    };
    assert_eq!(
        reason(lookup_context(&t.mem, ROOT_TABLE, DEV, &c)),
        FaultReason::ContextEntryInvalid
    );
}

#[test]
fn root_reserved_bits_fault_0a() {
    let mut t = Tables::new();
    let ctp = t.root(0);
    t.w64(ROOT_TABLE, ctp | 1 | 0x10);
    assert_eq!(reason(ctx(&t)), FaultReason::RootEntryReserved);
}

#[test]
fn context_reserved_bits_fault_0b_with_fpd() {
    let mut t = Tables::new();
    t.context(DEV, 1, 4, 0, true);
    let ctp = t.root(0);
    let hi = ctp + u64::from(DEV.devfn()) * 16 + 8;
    t.w64(hi, t.r64(hi) | (1 << 40));
    let f = ctx(&t).unwrap_err();
    assert_eq!((f.reason, f.fpd), (FaultReason::ContextEntryReserved, true));
}

#[test]
fn root_table_beyond_memory_faults_08() {
    let t = Tables::new();
    let r = lookup_context(&t.mem, 1 << 40, DEV, &CFG);
    assert_eq!(reason(r), FaultReason::RootTableAccess);
}

#[test]
fn context_table_beyond_memory_faults_09() {
    let t = Tables::new();
    t.w64(ROOT_TABLE, (1 << 40) | 1);
    assert_eq!(reason(ctx(&t)), FaultReason::ContextTableAccess);
}

#[test]
fn context_decodes_did_levels_fpd() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 0x1234, 3, 0, true);
    let c = ctx(&t).unwrap();
    assert_eq!((c.did, c.levels, c.slptptr, c.fpd), (0x1234, 3, slpt, true));
    assert_eq!(c.address_width(), 39);
}

#[test]
fn walk_4level_4k_page() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 1, 4, 0, false);
    t.map(slpt, 4, 0x7f12_3456_7000, 0x20_0000, 0x1000, RW);
    let tr = walk(&t, 0x7f12_3456_7abc, true).unwrap();
    assert_eq!(tr.gpa(Iova(0x7f12_3456_7abc)), GuestAddress(0x20_0abc));
    assert_eq!(tr.page_size, 0x1000);
}

#[test]
fn walk_3level_4k_page() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 1, 3, 0, false);
    t.map(slpt, 3, 0x40_1000, 0x30_0000, 0x1000, RW);
    assert_eq!(
        walk(&t, 0x40_1008, false).unwrap().gpa(Iova(0x40_1008)),
        GuestAddress(0x30_0008)
    );
}

#[test]
fn walk_address_beyond_aw_faults_04() {
    let mut t = Tables::new();
    t.context(DEV, 1, 3, 0, false);
    assert_eq!(
        reason(walk(&t, 1 << 39, false)),
        FaultReason::AddressBeyondMgaw
    );
}

#[test]
fn walk_2m_and_1g_superpages() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 1, 4, 0, false);
    t.map(slpt, 4, 0x4000_0000, 0x0, 0x4000_0000, RW);
    t.map(slpt, 4, 0x8020_0000, 0x60_0000, 0x20_0000, RW);
    let g = walk(&t, 0x4123_4567, false).unwrap();
    assert_eq!(
        (g.page_size, g.gpa(Iova(0x4123_4567))),
        (1 << 30, GuestAddress(0x123_4567))
    );
    let m = walk(&t, 0x8021_0000, true).unwrap();
    assert_eq!(
        (m.page_size, m.gpa(Iova(0x8021_0000))),
        (2 << 20, GuestAddress(0x61_0000))
    );
}

#[test]
fn walk_superpage_without_sllps_faults_0c() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 1, 4, 0, false);
    t.map(slpt, 4, 0x4000_0000, 0x0, 0x4000_0000, RW);
    let c = WalkConfig { sllps: 0b01, ..CFG };
    let r = translate(&t.mem, &ctx(&t).unwrap(), Iova(0x4000_0000), false, &c);
    assert_eq!(reason(r), FaultReason::PagingEntryReserved);
}

#[test]
fn walk_misaligned_superpage_address_faults_0c() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 1, 4, 0, false);
    t.map(slpt, 4, 0x20_0000, 0x1000, 0x20_0000, RW);
    assert_eq!(
        reason(walk(&t, 0x20_0000, false)),
        FaultReason::PagingEntryReserved
    );
}

#[test]
fn walk_not_present_faults_by_access_kind() {
    let mut t = Tables::new();
    t.context(DEV, 1, 4, 0, false);
    assert_eq!(reason(walk(&t, 0x1000, true)), FaultReason::WriteDenied);
    assert_eq!(reason(walk(&t, 0x1000, false)), FaultReason::ReadDenied);
}

#[test]
fn walk_read_only_page_denies_write_05() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 1, 4, 0, false);
    t.map(slpt, 4, 0x5000, 0x9000, 0x1000, 1);
    assert!(walk(&t, 0x5000, false).is_ok());
    assert_eq!(reason(walk(&t, 0x5000, true)), FaultReason::WriteDenied);
}

#[test]
fn walk_write_only_page_denies_read_06() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 1, 4, 0, false);
    t.map(slpt, 4, 0x5000, 0x9000, 0x1000, 2);
    assert!(walk(&t, 0x5000, true).is_ok());
    assert_eq!(reason(walk(&t, 0x5000, false)), FaultReason::ReadDenied);
}

#[test]
fn walk_permissions_accumulate_across_levels() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 1, 4, 0, false);
    t.map(slpt, 4, 0x5000, 0x9000, 0x1000, RW);
    // Make the top-level entry read-only: the leaf's W no longer counts.
    t.w64(slpt, t.r64(slpt) & !2);
    assert_eq!(reason(walk(&t, 0x5000, true)), FaultReason::WriteDenied);
}

#[test]
fn walk_entry_beyond_haw_faults_0c() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 1, 4, 0, false);
    t.map(slpt, 4, 0x5000, 0x9000, 0x1000, RW);
    t.w64(slpt, t.r64(slpt) | (1 << 50));
    assert_eq!(
        reason(walk(&t, 0x5000, false)),
        FaultReason::PagingEntryReserved
    );
}

#[test]
fn walk_table_beyond_memory_faults_07() {
    let mut t = Tables::new();
    let slpt = t.context(DEV, 1, 4, 0, false);
    t.w64(slpt, (1 << 40) | 3);
    assert_eq!(
        reason(walk(&t, 0x5000, false)),
        FaultReason::PagingEntryAccess
    );
}

#[test]
fn walk_pass_through_is_identity() {
    let mut t = Tables::new();
    t.context(DEV, 1, 4, 2, false);
    let tr = walk(&t, 0x1234_5678, true).unwrap();
    assert_eq!(tr.gpa(Iova(0x1234_5678)), GuestAddress(0x1234_5678));
}

#[test]
fn walk_fault_carries_fpd() {
    let mut t = Tables::new();
    t.context(DEV, 1, 4, 0, true);
    let f = walk(&t, 0x1000, true).unwrap_err();
    assert!(f.fpd);
}
