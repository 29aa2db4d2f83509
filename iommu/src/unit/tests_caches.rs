//! Translation caches outside the unit are told of each invalidation while the unit carries
//! it out, so before a wait descriptor behind it completes (6.5.2.8): IOTLB invalidations by
//! granularity (6.5.2.3, 10.4.8), context-cache invalidations (6.5.2.2, 10.4.7), and a new
//! root table or translation switched on or off (10.4.4).

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::tests::*;
use super::*;
use crate::test_utils::Tables;

const IOVA: u64 = 0x10_3000;

/// Records each invalidation with the wait status the guest could read then.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(CacheInvalidation, u32)>>,
    mem: Mutex<Option<GuestMemoryMmap>>,
}

impl TranslationCaches for Recorder {
    fn invalidate(&self, what: CacheInvalidation) {
        let status = self
            .mem
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |m| m.read_obj(GuestAddress(STATUS)).unwrap());
        self.seen.lock().unwrap().push((what, status));
    }
}

impl Recorder {
    fn take(&self) -> Vec<CacheInvalidation> {
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        seen.into_iter().map(|(w, _)| w).collect()
    }
}

/// DEV in domain DID with IOVA mapped, translation and the queue on, a recorder attached.
fn caches_unit() -> (RemappingUnit, Tables, Arc<Recorder>) {
    let (mut u, _, mut t) = unit();
    let slpt = t.context(DEV, DID, 4, 0, false);
    t.map(slpt, 4, IOVA, 0x80_0000, 0x1000, RW);
    let rec = Arc::new(Recorder::default());
    *rec.mem.lock().unwrap() = Some(t.mem.clone());
    u.set_translation_caches(rec.clone());
    enable(&mut u, &t);
    enable_qi(&mut u, &t);
    rec.take();
    (u, t, rec)
}

/// Runs descriptor `lo, hi` then a wait; returns what the caches were told, each with the
/// status the wait had then, and checks the wait completed.
fn run_then_wait(
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
    let status: u32 = t.mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(status, 1, "the wait completed");
    std::mem::take(&mut *rec.seen.lock().unwrap())
}

/// Invalidation descriptor type 2 (IOTLB), granularity `g`, domain DID.
fn iotlb_desc(g: u64) -> u64 {
    0x2 | (g << 4) | (u64::from(DID) << 16)
}

#[test]
fn caches_psi_told_its_aligned_range_before_the_wait_completes() {
    let (mut u, t, rec) = caches_unit();
    // AM 1: two pages, ADDR aligned down to 8 KiB.
    let seen = run_then_wait(&mut u, &t, &rec, iotlb_desc(3), IOVA | 1);
    let range = CacheInvalidation::Range {
        did: DID,
        start: 0x10_2000,
        end: Some(0x10_4000),
    };
    assert_eq!(seen, vec![(range, 0)]);
}

#[test]
fn caches_psi_reaching_the_top_of_the_address_space_has_no_end() {
    let (mut u, t, rec) = caches_unit();
    // AM 63 is taken as 51 (2^63 bytes): from 2^63 that ends at 2^64.
    let seen = run_then_wait(&mut u, &t, &rec, iotlb_desc(3), (1 << 63) | 0x3f);
    let range = CacheInvalidation::Range {
        did: DID,
        start: 1 << 63,
        end: None,
    };
    assert_eq!(seen, vec![(range, 0)]);
}

#[test]
fn caches_domain_iotlb_invalidation_told_the_domain() {
    let (mut u, t, rec) = caches_unit();
    let seen = run_then_wait(&mut u, &t, &rec, iotlb_desc(2), 0);
    assert_eq!(seen, vec![(CacheInvalidation::Domain(DID), 0)]);
}

#[test]
fn caches_global_iotlb_register_invalidation_told_all() {
    let (mut u, t, rec) = caches_unit();
    wr64(&mut u, &t, IOTLB_REG, IOTLB_IVT | (1 << IOTLB_IIRG_SHIFT));
    assert_eq!(rec.take(), vec![CacheInvalidation::All]);
}

#[test]
fn caches_device_context_invalidation_told_the_source_and_function_mask() {
    let (mut u, t, rec) = caches_unit();
    // Type 1, device-selective (3), FM 3: the function bits are ignored (11.4.7).
    let lo = 0x1 | (3 << 4) | (u64::from(DEV.raw()) << 32) | (3 << 48);
    let seen = run_then_wait(&mut u, &t, &rec, lo, 0);
    let devices = CacheInvalidation::Devices {
        sid: DEV,
        mask: !0x7,
    };
    assert_eq!(seen, vec![(devices, 0)]);
}

#[test]
fn caches_domain_context_register_invalidation_told_the_domain() {
    let (mut u, t, rec) = caches_unit();
    wr64(
        &mut u,
        &t,
        CCMD_REG,
        CCMD_ICC | (2 << CCMD_CIRG_SHIFT) | u64::from(DID),
    );
    assert_eq!(rec.take(), vec![CacheInvalidation::Domain(DID)]);
}

#[test]
fn caches_root_table_pointer_and_translation_switch_told_all() {
    let (mut u, t, rec) = caches_unit();
    let g = rd32(&u, GSTS_REG) & (GSTS_TES | GSTS_QIES);
    wr32(&mut u, &t, GCMD_REG, g | GCMD_SRTP);
    assert_eq!(rec.take(), vec![CacheInvalidation::All], "SRTP");
    wr32(&mut u, &t, GCMD_REG, GCMD_QIE);
    assert_eq!(rec.take(), vec![CacheInvalidation::All], "TE off");
    wr32(&mut u, &t, GCMD_REG, GCMD_QIE);
    assert_eq!(rec.take(), vec![], "no change");
}

#[test]
fn caches_interrupt_entry_invalidation_tells_nothing() {
    let (mut u, t, rec) = caches_unit();
    let seen = run_then_wait(&mut u, &t, &rec, 0x4, 0);
    assert_eq!(seen, vec![]);
}

#[test]
fn translate_in_domain_names_the_context_domain_or_none_untranslated() {
    let (mut u, t, _) = caches_unit();
    let (outcome, did) = u.translate_in_domain(&t.mem, DEV, Iova(IOVA), true);
    assert!(matches!(outcome, DmaOutcome::Translated(_)));
    assert_eq!(did, Some(DID));
    wr32(&mut u, &t, GCMD_REG, GCMD_QIE);
    let (outcome, did) = u.translate_in_domain(&t.mem, DEV, Iova(IOVA), true);
    assert!(matches!(outcome, DmaOutcome::Translated(_)));
    assert_eq!(did, None);
}
