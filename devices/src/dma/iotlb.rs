//! A device's translation cache (its IOTLB) and the set of them the VT-d unit invalidates.
//!
//! Filled on a miss with the whole page or superpage the translator returned, never with a
//! failure (with caching mode off the guest does not invalidate a mapping it creates, so a
//! cached refusal would outlive it). Entries never overlap: a new one replaces those it
//! covers. An invalidation drops every entry it touches (a superpage that a page-selective
//! invalidation overlaps in part goes whole, VT-d 6.5.1.2) and bumps a generation, so a
//! translation obtained before it is not cached after it.
//!
//! Counters (hits, misses, invalidations received) are relaxed atomics: the state view reads
//! them, nothing orders on them.
//!
//! Lock order: the VT-d unit's lock (held while it invalidates), then the set's list, then a
//! cache's entries. A DMA never holds a cache's lock while it asks the translator.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use iommu::{Bdf, CacheInvalidation, TranslationCaches};

use super::{Access, PageTranslation};

/// Entries a device's cache holds before it is emptied (a miss only translates again).
pub const DEVICE_IOTLB_ENTRIES: usize = 512;

#[derive(Debug, Default)]
struct Entries {
    /// By IOVA base; no two overlap.
    pages: BTreeMap<u64, PageTranslation>,
    /// Invalidations so far.
    generation: u64,
}

/// What a device's cache did since it was made (the state view's per-device line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IotlbStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to ask the translator.
    pub misses: u64,
    /// Invalidations that could concern this device (every global, domain and range one;
    /// device-selective ones naming it).
    pub invalidations: u64,
    /// Of those, device-TLB invalidations naming it (VT-d 6.5.2.5).
    pub device_invalidations: u64,
    /// Entries cached now.
    pub entries: usize,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    device_invalidations: AtomicU64,
}

/// One device's cached translations.
#[derive(Debug)]
pub struct DeviceIotlb {
    device: Bdf,
    capacity: usize,
    entries: RwLock<Entries>,
    counters: Counters,
}

impl DeviceIotlb {
    pub fn new(device: Bdf, capacity: usize) -> Self {
        DeviceIotlb {
            device,
            capacity: capacity.max(1),
            entries: RwLock::new(Entries::default()),
            counters: Counters::default(),
        }
    }

    /// The counters and the entries cached now.
    pub fn stats(&self) -> IotlbStats {
        let c = &self.counters;
        IotlbStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            device_invalidations: c.device_invalidations.load(Ordering::Relaxed),
            entries: self.len(),
        }
    }

    pub fn device(&self) -> Bdf {
        self.device
    }

    fn read(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached page containing `iova`, if it allows `access` (counted as a hit or a
    /// miss).
    pub fn lookup(&self, iova: u64, access: Access) -> Option<PageTranslation> {
        let found = {
            let entries = self.read();
            entries
                .pages
                .range(..=iova)
                .next_back()
                .map(|(_, t)| *t)
                .filter(|t| t.contains(iova) && t.permits(access))
        };
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The invalidation count; pass it to [`insert`](Self::insert) with a translation
    /// asked for after reading it.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Caches `t` unless an invalidation ran since `generation` was read (`t` may then be
    /// stale); returns whether it did. Entries `t` overlaps go; a full cache is emptied first.
    pub fn insert(&self, t: PageTranslation, generation: u64) -> bool {
        let mut entries = self.write();
        if entries.generation != generation || t.size == 0 {
            return false;
        }
        let overlapping: Vec<u64> = entries
            .pages
            .range(..=t.last())
            .rev()
            .take_while(|(_, e)| e.last() >= t.iova_base)
            .map(|(base, _)| *base)
            .collect();
        for base in overlapping {
            entries.pages.remove(&base);
        }
        if entries.pages.len() >= self.capacity {
            entries.pages.clear();
        }
        entries.pages.insert(t.iova_base, t);
        true
    }

    /// Drops what `what` names and bumps the generation. One that names other devices only
    /// (device-selective, device-TLB) is not this cache's: nothing changes.
    pub fn invalidate(&self, what: &CacheInvalidation) {
        if !what.concerns(self.device) {
            return;
        }
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        if matches!(what, CacheInvalidation::DeviceRange { .. }) {
            self.counters
                .device_invalidations
                .fetch_add(1, Ordering::Relaxed);
        }
        let mut entries = self.write();
        entries.generation += 1;
        let device = self.device;
        entries
            .pages
            .retain(|_, t| !what.drops(device, t.domain, t.iova_base, t.size));
    }

    pub fn len(&self) -> usize {
        self.read().pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The device caches a translator's invalidations reach. Holds them weakly: a device that
/// is gone leaves the set at the next invalidation.
#[derive(Debug, Default)]
pub struct IotlbSet {
    caches: Mutex<Vec<Weak<DeviceIotlb>>>,
}

impl IotlbSet {
    pub fn new() -> Arc<Self> {
        Arc::new(IotlbSet::default())
    }

    pub fn add(&self, iotlb: &Arc<DeviceIotlb>) {
        self.lock().push(Arc::downgrade(iotlb));
    }

    /// Caches in the set (devices gone are counted until the next invalidation).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<DeviceIotlb>>> {
        self.caches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TranslationCaches for IotlbSet {
    fn invalidate(&self, what: CacheInvalidation) {
        self.lock().retain(|w| match w.upgrade() {
            Some(c) => {
                c.invalidate(&what);
                true
            }
            None => false,
        });
    }
}
