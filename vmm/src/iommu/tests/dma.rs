//! Emulated devices' DMA through the unit: a device's cached translations are dropped by the
//! guest's invalidations before the invalidation completes, and a cache hit does without the
//! unit's lock.

use std::sync::mpsc;
use std::time::Duration;

use devices::bus::lock;
use devices::dma::{DeviceDma, DmaError, IotlbSet};
use iommu::{CacheInvalidation, Iova, TranslationCaches};

use super::*;
use crate::iommu::IommuTranslator;

/// Forwards invalidations to the devices' caches and logs each with the wait statuses the
/// guest could read then.
struct WatchedCaches {
    caches: Arc<IotlbSet>,
    mem: GuestMemoryMmap,
    log: Arc<Log>,
}

impl TranslationCaches for WatchedCaches {
    fn invalidate(&self, what: CacheInvalidation) {
        let status = STATUS.map(|a| self.mem.read_obj::<u32>(GuestAddress(a)).unwrap());
        self.log
            .push(format!("invalidate {what:?} (statuses {status:x?})"));
        self.caches.invalidate(what);
    }
}

fn device_dma(r: &Rig) -> DeviceDma {
    let iommu = r.drhd.0.clone();
    let caches = iommu.translation_caches().clone();
    DeviceDma::new(
        DEV,
        r.mem.clone(),
        Arc::new(IommuTranslator(iommu)),
        &caches,
    )
}

fn watch_caches(r: &Rig) {
    let watched = WatchedCaches {
        caches: r.drhd.0.translation_caches().clone(),
        mem: r.mem.clone(),
        log: r.log.clone(),
    };
    lock(&r.drhd.0.unit).set_translation_caches(Arc::new(watched));
}

fn read_u32(dma: &DeviceDma, iova: u64) -> Result<u32, DmaError> {
    let mut b = [0u8; 4];
    dma.read(Iova(iova), &mut b)?;
    Ok(u32::from_le_bytes(b))
}

#[test]
fn device_dma_psi_drops_the_cached_page_before_the_wait_completes() {
    let mut r = rig(false);
    let dma = device_dma(&r);
    r.mem
        .write_obj(0xaaaa_u32, GuestAddress(TARGETS[0]))
        .unwrap();
    r.mem
        .write_obj(0xbbbb_u32, GuestAddress(TARGETS[1]))
        .unwrap();
    assert_eq!(read_u32(&dma, PAGES[0]), Ok(0xaaaa));
    assert_eq!(dma.iotlb().len(), 1);
    watch_caches(&r);
    r.log.take();
    // The guest points the page elsewhere and invalidates it.
    r.put(r.leaf(PAGES[0]), TARGETS[1] | 3);
    r.psi(0, PAGES[0]);
    r.wait(1, 0);
    r.w64(IQT_REG, 2 << 4);
    let log = r.log.take();
    assert_eq!(
        log.first().map(String::as_str),
        Some("invalidate Range { did: 5, start: 1048576, end: Some(1052672) } (statuses [0, 0])"),
        "{log:?}"
    );
    assert_eq!(r.status(0), WAIT_DATA);
    assert!(dma.iotlb().is_empty());
    assert_eq!(read_u32(&dma, PAGES[0]), Ok(0xbbbb));
}

#[test]
fn device_dma_translation_disabled_drops_cached_translations() {
    let mut r = rig(false);
    let dma = device_dma(&r);
    r.mem
        .write_obj(0xaaaa_u32, GuestAddress(TARGETS[0]))
        .unwrap();
    r.mem.write_obj(0xcccc_u32, GuestAddress(PAGES[0])).unwrap();
    assert_eq!(read_u32(&dma, PAGES[0]), Ok(0xaaaa));
    r.w32(GCMD_REG, GCMD_QIE);
    assert_eq!(read_u32(&dma, PAGES[0]), Ok(0xcccc), "IOVA = GPA again");
}

#[test]
fn device_dma_unmapped_page_is_a_fault_the_guest_reads() {
    let r = rig(false);
    let dma = device_dma(&r);
    let e = read_u32(&dma, 0x40_0000);
    assert_eq!(
        e,
        Err(DmaError::Blocked {
            requester: DEV,
            iova: Iova(0x40_0000)
        })
    );
    assert!(dma.iotlb().is_empty());
    assert_ne!(read32(&r.drhd.0, FSTS_REG) & FSTS_PPF, 0);
}

#[test]
fn device_dma_cache_hit_does_not_take_the_unit_lock() {
    let r = rig(false);
    let dma = Arc::new(device_dma(&r));
    assert!(read_u32(&dma, PAGES[0]).is_ok());
    let unit = lock(&r.drhd.0.unit);
    let (tx, rx) = mpsc::channel();
    let hit = {
        let dma = dma.clone();
        std::thread::spawn(move || tx.send(read_u32(&dma, PAGES[0] + 0x10)).unwrap())
    };
    let got = rx.recv_timeout(Duration::from_secs(10));
    drop(unit);
    hit.join().unwrap();
    assert!(matches!(got, Ok(Ok(_))), "{got:?}");
}
