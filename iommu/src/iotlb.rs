//! The emulated IOTLB (VT-d spec 6.2.3): one entry per cached leaf, keyed by domain, leaf
//! size and leaf base, so a superpage is one entry however many addresses used it, and a
//! page-selective invalidation that touches any part of it drops it (6.5.1.2). Bounded:
//! when full it is emptied (a miss only walks again).

use std::collections::HashMap;

use crate::translation::Translation;

/// Leaf sizes a second-level walk can return (9.8): 4 KiB, 2 MiB, 1 GiB.
const LEAF_SIZES: [u64; 3] = [1 << 12, 1 << 21, 1 << 30];
/// A page-selective invalidation of at most this many leaf-sized steps looks keys up
/// directly; a larger one scans the (bounded) cache.
const DIRECT_LOOKUPS: u64 = 64;

/// Cached translations of untranslated requests, by (domain, leaf size, leaf base).
#[derive(Debug)]
pub struct Iotlb {
    entries: HashMap<(u16, u64, u64), Translation>,
    capacity: usize,
}

impl Iotlb {
    pub fn new(capacity: usize) -> Self {
        Iotlb {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The cached leaf of domain `did` that contains `iova`.
    pub fn get(&self, did: u16, iova: u64) -> Option<Translation> {
        LEAF_SIZES
            .iter()
            .find_map(|&size| self.entries.get(&(did, size, iova & !(size - 1))))
            .copied()
    }

    /// Caches `t` for domain `did`, emptying the cache first if it is full.
    pub fn insert(&mut self, did: u16, t: Translation) {
        let key = (did, t.page_size, t.iova_base);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.clear();
        }
        self.entries.insert(key, t);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Domain-selective invalidation.
    pub fn invalidate_domain(&mut self, did: u16) {
        self.entries.retain(|(d, _, _), _| *d != did);
    }

    /// Page-selective invalidation of `[start, end)` (`end` None: to the top of the
    /// address space) in domain `did`: every leaf that overlaps it goes.
    pub fn invalidate_range(&mut self, did: u16, start: u64, end: Option<u64>) {
        let overlaps = |base: u64, size: u64| {
            // The leaf is [base, base + size); compared without overflow near 2^64.
            let leaf_last = base.saturating_add(size - 1);
            leaf_last >= start && end.is_none_or(|e| base < e)
        };
        let last = end.map_or(u64::MAX, |e| e.saturating_sub(1).max(start));
        let small = LEAF_SIZES.iter().all(|&size| {
            (last >> size.trailing_zeros()) - (start >> size.trailing_zeros()) < DIRECT_LOOKUPS
        });
        if !small {
            self.entries
                .retain(|&(d, size, base), _| d != did || !overlaps(base, size));
            return;
        }
        for &size in &LEAF_SIZES {
            let shift = size.trailing_zeros();
            for n in (start >> shift)..=(last >> shift) {
                self.entries.remove(&(did, size, n << shift));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(iova_base: u64, page_size: u64) -> Translation {
        Translation {
            iova_base,
            gpa_base: 0x100_0000,
            page_size,
            read: true,
            write: true,
        }
    }

    #[test]
    fn iotlb_full_is_emptied_before_insert() {
        let mut c = Iotlb::new(4);
        for i in 0..4 {
            c.insert(1, leaf(i << 12, 1 << 12));
        }
        assert_eq!(c.len(), 4);
        c.insert(1, leaf(4 << 12, 1 << 12));
        assert_eq!(c.len(), 1);
        assert!(c.get(1, 4 << 12).is_some());
    }

    #[test]
    fn iotlb_superpage_found_from_any_address_in_it() {
        let mut c = Iotlb::new(16);
        c.insert(1, leaf(0x20_0000, 1 << 21));
        assert!(c.get(1, 0x3f_f123).is_some());
        assert!(c.get(1, 0x40_0000).is_none());
        assert!(c.get(2, 0x20_0000).is_none());
    }

    #[test]
    fn iotlb_large_range_scan_drops_overlapping_leaves_only() {
        let mut c = Iotlb::new(16);
        c.insert(1, leaf(0, 1 << 30));
        c.insert(1, leaf(1 << 30, 1 << 12));
        c.insert(1, leaf(0xffff_ffff_ffff_f000, 1 << 12));
        c.insert(2, leaf(0, 1 << 30));
        c.invalidate_range(1, 0x3000_0000, Some(0x4000_0000));
        assert!(c.get(1, 0).is_none());
        assert!(c.get(1, 1 << 30).is_some());
        assert!(c.get(2, 0).is_some());
        c.invalidate_range(1, 0x8000_0000_0000_0000, None);
        assert!(c.get(1, 0xffff_ffff_ffff_f000).is_none());
    }
}
