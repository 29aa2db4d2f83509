//! Translation caches outside the unit (a device's own IOTLB, as emulated devices keep to
//! translate without the unit on every access) and how the unit keeps them exact: each
//! invalidation the guest makes that can drop cached translations (IOTLB and context-cache
//! invalidations, VT-d 6.5; a new root table or translation switched on or off, 10.4.4) is
//! told to them synchronously, while the unit carries it out, so before any wait descriptor
//! behind it writes its status (6.5.2.8) and before IVT, ICC or GSTS show it complete.

use std::sync::Arc;

use super::RemappingUnit;
use crate::Bdf;

/// Which cached translations an invalidation drops. A cached translation is tagged with the
/// domain whose context translated it (`None` when translation was off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheInvalidation {
    /// Every translation: global invalidations, a root table pointer set (SRTP), translation
    /// enabled or disabled (TE).
    All,
    /// The translations of domain `did` (domain-selective IOTLB or context invalidation).
    Domain(u16),
    /// The translations of domain `did` overlapping `[start, end)` (page-selective IOTLB
    /// invalidation, 6.5.1.2: a superpage that overlaps it in part goes whole); `end` None
    /// means to the top of the address space.
    Range {
        did: u16,
        start: u64,
        end: Option<u64>,
    },
    /// The translations of the devices whose source id equals `sid` in the bits of `mask`
    /// (device-selective context invalidation with its function mask, 11.4.7).
    Devices { sid: Bdf, mask: u16 },
    /// The translations device `sid` caches in its own device-TLB overlapping `[start, end)`,
    /// whatever their domain (device-TLB invalidate descriptor, VT-d 6.5.2.5; `end` None: to
    /// the top). Other devices' caches keep theirs.
    DeviceRange {
        sid: Bdf,
        start: u64,
        end: Option<u64>,
    },
}

impl CacheInvalidation {
    /// Whether a translation tagged with `domain`, of length `size` at `base`, cached for
    /// `device`, is dropped.
    pub fn drops(&self, device: Bdf, domain: Option<u16>, base: u64, size: u64) -> bool {
        match *self {
            CacheInvalidation::All => true,
            CacheInvalidation::Domain(did) => domain == Some(did),
            CacheInvalidation::Range { did, start, end } => {
                // The leaf is [base, base + size); compared without overflow near 2^64.
                let last = base.saturating_add(size.saturating_sub(1));
                domain == Some(did) && last >= start && end.is_none_or(|e| base < e)
            }
            CacheInvalidation::Devices { sid, mask } => device.raw() & mask == sid.raw() & mask,
            CacheInvalidation::DeviceRange { sid, start, end } => {
                let last = base.saturating_add(size.saturating_sub(1));
                device == sid && last >= start && end.is_none_or(|e| base < e)
            }
        }
    }

    /// Whether the invalidation can drop anything `device` caches (a cache that it cannot
    /// concern need not count it).
    pub fn concerns(&self, device: Bdf) -> bool {
        match *self {
            CacheInvalidation::Devices { sid, mask } => device.raw() & mask == sid.raw() & mask,
            CacheInvalidation::DeviceRange { sid, .. } => device == sid,
            _ => true,
        }
    }
}

/// Who holds translations the unit handed out. Called with the unit busy with the
/// invalidation (the VMM's unit lock held): it must only drop entries, never call back
/// into the unit.
pub trait TranslationCaches: Send + Sync {
    fn invalidate(&self, what: CacheInvalidation);
}

impl RemappingUnit {
    /// From now on every invalidation is also told to `caches`, synchronously.
    pub fn set_translation_caches(&mut self, caches: Arc<dyn TranslationCaches>) {
        self.caches = Some(caches);
    }

    /// Tells the translation caches (if any) of an invalidation carried out now.
    pub(super) fn invalidate_caches(&self, what: CacheInvalidation) {
        if let Some(c) = &self.caches {
            c.invalidate(what);
        }
    }
}
