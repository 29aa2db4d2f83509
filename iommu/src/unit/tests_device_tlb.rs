//! Device-TLB invalidate descriptors (VT-d 6.5.2.5): with ECAP.DT they reach only the
//! requester's own cache, with the range ADDR and S encode, before a wait descriptor behind
//! them completes (6.5.2.8); without ECAP.DT they are invalid descriptors (6.5.2.10).

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::tests::*;
use super::*;
use crate::test_utils::Tables;

const OTHER: Bdf = Bdf::new(0, 4, 0);

/// Records each invalidation with the wait status the guest could read then.
struct Recorder {
    seen: Mutex<Vec<(CacheInvalidation, u32)>>,
    mem: vm_memory::GuestMemoryMmap,
}

impl TranslationCaches for Recorder {
    fn invalidate(&self, what: CacheInvalidation) {
        let status = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        self.seen.lock().unwrap().push((what, status));
    }
}

/// A unit with or without ECAP.DT, translation and the queue on, a recorder attached.
fn dt_unit(dt: bool) -> (RemappingUnit, Tables, Arc<Recorder>, u64) {
    let cfg = IommuConfig {
        device_iotlb: dt,
        ..IommuConfig::default()
    };
    let mut u = RemappingUnit::new(cfg, Box::new(Sink::default()));
    let mut t = Tables::new();
    let slpt = t.context(DEV, DID, 4, if dt { 1 } else { 0 }, false);
    let rec = Arc::new(Recorder {
        seen: Mutex::new(Vec::new()),
        mem: t.mem.clone(),
    });
    u.set_translation_caches(rec.clone());
    enable(&mut u, &t);
    enable_qi(&mut u, &t);
    rec.seen.lock().unwrap().clear();
    (u, t, rec, slpt)
}

/// A device-TLB descriptor for DEV (queue depth 0, PFSID = SID as Linux writes it).
fn dev_tlb_lo(sid: Bdf) -> u64 {
    let s = u64::from(sid.raw());
    0x3 | (s << 32) | ((s & 0xf) << 12) | ((s >> 4) << 52)
}

/// Queues `lo, hi` and a wait; returns what the caches were told, with the wait's status
/// at that moment.
fn run_with_wait(
    u: &mut RemappingUnit,
    t: &Tables,
    rec: &Recorder,
    lo: u64,
    hi: u64,
) -> Vec<(CacheInvalidation, u32)> {
    desc(t, 0, lo, hi);
    let (wlo, whi) = wait_desc(1);
    desc(t, 1, wlo, whi);
    wr64(u, t, IQT_REG, 2 << 4);
    std::mem::take(&mut *rec.seen.lock().unwrap())
}

#[test]
fn device_tlb_descriptor_invalidates_the_requester_range_before_the_wait_completes() {
    let (mut u, t, rec, _) = dt_unit(true);
    let seen = run_with_wait(&mut u, &t, &rec, dev_tlb_lo(DEV), 0x40_0000 | 0xf_f000 | 1);
    let want = CacheInvalidation::DeviceRange {
        sid: DEV,
        start: 0x40_0000,
        end: Some(0x60_0000),
    };
    assert_eq!(seen, vec![(want, 0)], "told before the status write");
    let status: u32 = t.mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(status, 1, "the wait completed");
    assert_eq!(rd32(&u, FSTS_REG) & FSTS_IQE, 0);
}

#[test]
fn device_tlb_descriptor_whole_space_has_no_end() {
    let (mut u, t, rec, _) = dt_unit(true);
    let seen = run_with_wait(&mut u, &t, &rec, dev_tlb_lo(DEV), 0x7fff_ffff_ffff_f001);
    let want = CacheInvalidation::DeviceRange {
        sid: DEV,
        start: 0,
        end: None,
    };
    assert_eq!(seen, vec![(want, 0)]);
}

#[test]
fn device_tlb_invalidation_drops_only_the_named_device() {
    let what = CacheInvalidation::DeviceRange {
        sid: DEV,
        start: 0x2000,
        end: Some(0x4000),
    };
    assert!(what.drops(DEV, Some(DID), 0x3000, 0x1000));
    assert!(
        what.drops(DEV, None, 0, 0x20_0000),
        "a superpage overlapping it goes whole"
    );
    assert!(
        !what.drops(OTHER, Some(DID), 0x3000, 0x1000),
        "another device's cache"
    );
    assert!(
        !what.drops(DEV, Some(DID), 0x4000, 0x1000),
        "past the range"
    );
    assert!(!what.concerns(OTHER));
}

#[test]
fn device_tlb_descriptor_leaves_the_unit_iotlb_alone() {
    let (mut u, mut t, rec, slpt) = dt_unit(true);
    // DEV's tables: a page, translated once (cached in the unit's IOTLB), then unmapped.
    t.map(slpt, 4, 0x10_3000, 0x80_0000, 0x1000, RW);
    assert!(matches!(
        u.translate(&t.mem, DEV, Iova(0x10_3000), false),
        DmaOutcome::Translated(_)
    ));
    t.map(slpt, 4, 0x10_3000, 0x80_0000, 0x1000, 0);
    run_with_wait(&mut u, &t, &rec, dev_tlb_lo(DEV), 0x10_3000);
    // The IOTLB is the IOTLB descriptor's to flush (6.5.2.5: software flushes it first).
    assert!(matches!(
        u.translate(&t.mem, DEV, Iova(0x10_3000), false),
        DmaOutcome::Translated(_)
    ));
}

#[test]
fn device_tlb_descriptor_without_dt_is_an_invalid_descriptor() {
    let (mut u, t, rec, _) = dt_unit(false);
    let seen = run_with_wait(&mut u, &t, &rec, dev_tlb_lo(DEV), 0x10_3000);
    assert_eq!(seen, vec![], "nothing invalidated");
    assert_ne!(rd32(&u, FSTS_REG) & FSTS_IQE, 0);
    assert_eq!(
        rd64(&u, IQH_REG) >> 4,
        0,
        "the head stays at the descriptor"
    );
    let status: u32 = t.mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(status, 0, "the wait behind it did not run");
}

#[test]
fn device_tlb_descriptor_with_reserved_bits_is_an_invalid_descriptor() {
    let (mut u, t, rec, _) = dt_unit(true);
    let seen = run_with_wait(&mut u, &t, &rec, dev_tlb_lo(DEV) | (1 << 21), 0x10_3000);
    assert_eq!(seen, vec![]);
    assert_ne!(rd32(&u, FSTS_REG) & FSTS_IQE, 0);
}
