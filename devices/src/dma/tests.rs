use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use iommu::{Bdf, CacheInvalidation, Iova, TranslationCaches};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const DEV: Bdf = Bdf::new(0, 3, 0);
const OTHER: Bdf = Bdf::new(0, 4, 0);
const DID: u16 = 7;
const PAGE: u64 = 0x1000;
const SUPERPAGE: u64 = 0x20_0000;
/// Two RAM regions, back to back: [0, 1 MiB) and [1 MiB, 4 MiB).
const RAM: [(u64, usize); 2] = [(0, 0x10_0000), (0x10_0000, 0x30_0000)];

type Hook = Box<dyn Fn() + Send + Sync>;

/// A translator over a table of pages; pages not in it are refused. Counts its calls and may
/// run a hook in the middle of one (as another vCPU's invalidation would).
#[derive(Default)]
struct FakeTranslator {
    pages: Mutex<Vec<PageTranslation>>,
    calls: AtomicUsize,
    during: Mutex<Option<Hook>>,
}

impl FakeTranslator {
    fn map(&self, iova_base: u64, gpa_base: u64, size: u64, write: bool) {
        self.pages.lock().unwrap().push(PageTranslation {
            iova_base,
            gpa_base,
            size,
            read: true,
            write,
            domain: Some(DID),
        });
    }

    fn unmap_all(&self) {
        self.pages.lock().unwrap().clear();
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Translate for FakeTranslator {
    fn translate(
        &self,
        source: Bdf,
        iova: Iova,
        access: Access,
    ) -> Result<PageTranslation, DmaError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let found = self
            .pages
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.contains(iova.0))
            .copied();
        if let Some(hook) = self.during.lock().unwrap().as_ref() {
            hook();
        }
        found
            .filter(|t| t.permits(access))
            .ok_or(DmaError::Blocked {
                requester: source,
                iova,
            })
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    translator: Arc<FakeTranslator>,
    caches: Arc<IotlbSet>,
    dma: DeviceDma,
}

fn rig() -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(RAM[0].0), RAM[0].1),
        (GuestAddress(RAM[1].0), RAM[1].1),
    ])
    .unwrap();
    let translator = Arc::new(FakeTranslator::default());
    let caches = IotlbSet::new();
    let dma = DeviceDma::new(DEV, mem.clone(), translator.clone(), &caches);
    Rig {
        mem,
        translator,
        caches,
        dma,
    }
}

fn psi(start: u64, pages: u64) -> CacheInvalidation {
    CacheInvalidation::Range {
        did: DID,
        start,
        end: Some(start + pages * PAGE),
    }
}

fn bytes_at(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
    v
}

#[test]
fn device_dma_pages_contiguous_in_memory_form_one_segment() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    r.translator.map(0x8000_1000, 0x3000, PAGE, true);
    let s = r
        .dma
        .translate(Iova(0x8000_0800), 0x1000, Access::Read)
        .unwrap();
    assert_eq!(
        s,
        [DmaSegment {
            addr: GuestAddress(0x2800),
            len: 0x1000
        }]
    );
}

#[test]
fn device_dma_pages_apart_in_memory_form_one_segment_each() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x5000, PAGE, true);
    r.translator.map(0x8000_1000, 0x2000, PAGE, true);
    let s = r
        .dma
        .translate(Iova(0x8000_0ff0), 0x20, Access::Write)
        .unwrap();
    assert_eq!(
        s,
        [
            DmaSegment {
                addr: GuestAddress(0x5ff0),
                len: 0x10
            },
            DmaSegment {
                addr: GuestAddress(0x2000),
                len: 0x10
            }
        ]
    );
}

#[test]
fn device_dma_run_across_a_region_end_is_cut_there() {
    let r = rig();
    r.translator.map(0, 0xe_0000, SUPERPAGE, true);
    let s = r
        .dma
        .translate(Iova(0x1_f000), 0x2000, Access::Read)
        .unwrap();
    assert_eq!(
        s,
        [
            DmaSegment {
                addr: GuestAddress(0xf_f000),
                len: 0x1000
            },
            DmaSegment {
                addr: GuestAddress(0x10_0000),
                len: 0x1000
            }
        ]
    );
}

#[test]
fn device_dma_slices_write_in_place_across_a_region_end() {
    let r = rig();
    r.translator.map(0, 0xe_0000, SUPERPAGE, true);
    let slices = r.dma.slices(Iova(0x1_fffe), 4, Access::Write).unwrap();
    assert_eq!(slices.len(), 2);
    for s in &slices {
        s.write_slice(&[7, 7], 0).unwrap();
    }
    assert_eq!(bytes_at(&r.mem, 0xf_fffe, 4), vec![7; 4]);
}

#[test]
fn device_dma_fault_mid_range_writes_nothing() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    r.translator.map(0x8000_2000, 0x4000, PAGE, true);
    let e = r.dma.write(Iova(0x8000_0000), &[0xaa; 0x3000]);
    assert_eq!(
        e,
        Err(DmaError::Blocked {
            requester: DEV,
            iova: Iova(0x8000_1000)
        })
    );
    assert_eq!(bytes_at(&r.mem, 0x2000, 0x1000), vec![0; 0x1000]);
    assert_eq!(bytes_at(&r.mem, 0x4000, 0x1000), vec![0; 0x1000]);
}

#[test]
fn device_dma_page_outside_ram_mid_range_writes_nothing() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    r.translator.map(0x8000_1000, 0x4000_0000, PAGE, true);
    let e = r.dma.write(Iova(0x8000_0000), &[0xaa; 0x2000]);
    assert!(matches!(e, Err(DmaError::OutOfRange { .. })), "{e:?}");
    assert_eq!(bytes_at(&r.mem, 0x2000, 0x1000), vec![0; 0x1000]);
}

#[test]
fn device_dma_range_wrapping_past_2_64_is_refused() {
    let r = rig();
    let e = r.dma.translate(Iova(u64::MAX - 0xf), 0x20, Access::Read);
    assert!(matches!(e, Err(DmaError::OutOfRange { .. })), "{e:?}");
    assert_eq!(r.translator.calls(), 0);
}

#[test]
fn device_dma_read_only_mapping_is_refused_for_write() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, false);
    r.dma.read(Iova(0x8000_0000), &mut [0; 8]).unwrap();
    assert_eq!(r.dma.iotlb().len(), 1, "the read-only page is cached");
    let e = r.dma.write(Iova(0x8000_0000), &[0xaa; 8]);
    assert_eq!(
        e,
        Err(DmaError::Blocked {
            requester: DEV,
            iova: Iova(0x8000_0000)
        })
    );
    assert_eq!(r.translator.calls(), 2, "the write asked the translator");
    assert_eq!(bytes_at(&r.mem, 0x2000, 8), vec![0; 8]);
}

#[test]
fn device_iotlb_hit_does_not_ask_the_translator() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, SUPERPAGE, true);
    r.dma.write(Iova(0x8000_0000), &[1; 4]).unwrap();
    r.dma.write(Iova(0x801f_f000), &[2; 4]).unwrap();
    r.dma.read(Iova(0x8010_0000), &mut [0; 4]).unwrap();
    assert_eq!(
        r.translator.calls(),
        1,
        "one miss filled the whole superpage"
    );
}

#[test]
fn device_iotlb_refusal_is_never_cached() {
    let r = rig();
    assert!(r.dma.read(Iova(0x8000_0000), &mut [0; 4]).is_err());
    assert!(r.dma.iotlb().is_empty());
    // The guest maps the page without invalidating (caching mode off does not).
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    r.dma.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    assert_eq!(r.translator.calls(), 2);
}

#[test]
fn device_iotlb_psi_drops_the_cached_page() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    r.dma.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    r.translator.unmap_all();
    r.caches.invalidate(psi(0x8000_0000, 1));
    assert!(r.dma.read(Iova(0x8000_0000), &mut [0; 4]).is_err());
    assert_eq!(r.translator.calls(), 2);
}

#[test]
fn device_iotlb_psi_over_part_of_a_superpage_drops_it_whole() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x20_0000, SUPERPAGE, true);
    r.dma.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    r.caches.invalidate(psi(0x8010_0000, 1));
    assert!(r.dma.iotlb().is_empty());
}

#[test]
fn device_iotlb_psi_elsewhere_or_of_another_domain_keeps_the_page() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    r.dma.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    r.caches.invalidate(psi(0x8000_1000, 1));
    r.caches.invalidate(CacheInvalidation::Range {
        did: DID + 1,
        start: 0x8000_0000,
        end: None,
    });
    r.caches.invalidate(CacheInvalidation::Domain(DID + 1));
    assert_eq!(r.dma.iotlb().len(), 1);
}

#[test]
fn device_iotlb_psi_to_the_top_of_the_address_space_drops_the_last_page() {
    let r = rig();
    r.translator.map(u64::MAX - 0xfff, 0x2000, PAGE, true);
    r.dma.read(Iova(u64::MAX - 0xfff), &mut [0; 4]).unwrap();
    r.caches.invalidate(CacheInvalidation::Range {
        did: DID,
        start: 1 << 63,
        end: None,
    });
    assert!(r.dma.iotlb().is_empty());
}

#[test]
fn device_iotlb_domain_invalidation_drops_the_domain() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    r.dma.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    r.caches.invalidate(CacheInvalidation::Domain(DID));
    assert!(r.dma.iotlb().is_empty());
}

#[test]
fn device_iotlb_device_invalidation_drops_only_matching_devices() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    let other = DeviceDma::new(OTHER, r.mem.clone(), r.translator.clone(), &r.caches);
    r.dma.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    other.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    r.caches.invalidate(CacheInvalidation::Devices {
        sid: OTHER,
        mask: !0,
    });
    assert_eq!(r.dma.iotlb().len(), 1);
    assert!(other.iotlb().is_empty());
    // Function mask 3 (11.4.7) ignores the function bits: 00:03.5 names 00:03.0 too.
    r.caches.invalidate(CacheInvalidation::Devices {
        sid: Bdf::new(0, 3, 5),
        mask: !0x7,
    });
    assert!(r.dma.iotlb().is_empty());
}

#[test]
fn device_iotlb_invalidation_during_a_miss_keeps_the_result_out_of_the_cache() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    let caches = r.caches.clone();
    *r.translator.during.lock().unwrap() =
        Some(Box::new(move || caches.invalidate(psi(0x8000_0000, 1))));
    r.dma.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    assert!(
        r.dma.iotlb().is_empty(),
        "a translation from before the invalidation must not outlive it"
    );
    *r.translator.during.lock().unwrap() = None;
    r.dma.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    assert_eq!(r.translator.calls(), 2);
    assert_eq!(r.dma.iotlb().len(), 1);
}

#[test]
fn device_iotlb_full_is_emptied_before_insert() {
    let iotlb = DeviceIotlb::new(DEV, 2);
    for i in 0..3 {
        let t = PageTranslation {
            iova_base: i * PAGE,
            gpa_base: 0,
            size: PAGE,
            read: true,
            write: true,
            domain: None,
        };
        assert!(iotlb.insert(t, iotlb.generation()));
    }
    assert_eq!(iotlb.len(), 1);
    assert!(iotlb.lookup(2 * PAGE, Access::Read).is_some());
}

#[test]
fn device_iotlb_superpage_replaces_the_pages_it_covers() {
    let r = rig();
    r.translator.map(0x8000_1000, 0x2000, PAGE, true);
    r.dma.read(Iova(0x8000_1000), &mut [0; 4]).unwrap();
    // The guest replaces the page by a superpage and invalidates... another domain's range:
    // the stale page stays, the superpage is asked for at an address it alone covers.
    r.translator.unmap_all();
    r.translator.map(0x8000_0000, 0x20_0000, SUPERPAGE, true);
    r.dma.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    assert_eq!(r.dma.iotlb().len(), 1, "no overlapping entries");
    assert_eq!(
        r.dma.translate(Iova(0x8000_1000), 4, Access::Read).unwrap()[0].addr,
        GuestAddress(0x20_1000)
    );
}

#[test]
fn device_dma_other_requester_is_refused() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    let e = r.dma.dma_write(OTHER, Iova(0x8000_0000), &[1; 4]);
    assert_eq!(
        e,
        Err(DmaError::ForeignRequester {
            requester: OTHER,
            owner: DEV
        })
    );
    assert_eq!(r.translator.calls(), 0);
}

#[test]
fn identity_dma_reaches_the_guest_physical_address() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let caches = IotlbSet::new();
    let dma = DeviceDma::new(DEV, mem.clone(), Arc::new(Identity), &caches);
    dma.dma_write(DEV, Iova(0x1234), &[9; 4]).unwrap();
    assert_eq!(bytes_at(&mem, 0x1234, 4), vec![9; 4]);
    let e = dma.dma_write(DEV, Iova(0xf_fffe), &[9; 4]);
    assert!(matches!(e, Err(DmaError::OutOfRange { .. })), "{e:?}");
    assert_eq!(bytes_at(&mem, 0xf_fffe, 2), vec![0; 2]);
}

#[test]
fn iotlb_set_forgets_a_device_that_is_gone() {
    let r = rig();
    let other = DeviceDma::new(OTHER, r.mem.clone(), r.translator.clone(), &r.caches);
    assert_eq!(r.caches.len(), 2);
    drop(other);
    r.caches.invalidate(CacheInvalidation::All);
    assert_eq!(r.caches.len(), 1);
}

#[test]
fn device_iotlb_device_tlb_invalidation_drops_the_named_device_range_only() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    r.translator.map(0x8000_1000, 0x3000, PAGE, true);
    let other = DeviceDma::new(OTHER, r.mem.clone(), r.translator.clone(), &r.caches);
    r.dma.read(Iova(0x8000_0000), &mut [0; 8192]).unwrap();
    other.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    r.caches.invalidate(CacheInvalidation::DeviceRange {
        sid: DEV,
        start: 0x8000_1000,
        end: Some(0x8000_2000),
    });
    assert_eq!(r.dma.iotlb().len(), 1, "the page outside the range stays");
    assert!(r.dma.iotlb().lookup(0x8000_0000, Access::Read).is_some());
    assert_eq!(
        other.iotlb().len(),
        1,
        "another device's cache is untouched"
    );
    assert_eq!(other.iotlb().stats().invalidations, 0, "nor counted there");
}

#[test]
fn device_iotlb_stats_count_hits_misses_and_invalidations() {
    let r = rig();
    r.translator.map(0x8000_0000, 0x2000, PAGE, true);
    r.dma.read(Iova(0x8000_0000), &mut [0; 4]).unwrap();
    r.dma.read(Iova(0x8000_0010), &mut [0; 4]).unwrap();
    r.dma.read(Iova(0x8000_0020), &mut [0; 4]).unwrap();
    r.caches.invalidate(psi(0x9000_0000, 1));
    r.caches.invalidate(CacheInvalidation::DeviceRange {
        sid: DEV,
        start: 0,
        end: None,
    });
    r.caches.invalidate(CacheInvalidation::DeviceRange {
        sid: OTHER,
        start: 0,
        end: None,
    });
    assert_eq!(
        r.dma.iotlb().stats(),
        IotlbStats {
            hits: 2,
            misses: 1,
            invalidations: 2,
            device_invalidations: 1,
            entries: 0,
        }
    );
}
