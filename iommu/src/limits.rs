//! Every bound the model puts on what a guest can make it store or compute, in one place.
//! A guest that reaches one gets what it would get from a smaller, slower unit (a cache
//! miss, a recorded fault, a mapping the device cannot use), never a stalled vCPU or an
//! unbounded allocation. The values are provisional until measured against a real Linux
//! guest: `RemappingUnit::state` reports the peaks to compare them with.

/// Entries in the emulated IOTLB, one per cached leaf (4 KiB, 2 MiB or 1 GiB). When full it
/// is emptied, as QEMU does with its 1,024 entries (`VTD_IOTLB_MAX_SIZE`); a miss only costs
/// a walk of at most four table reads. 4,096 entries cover 16 MiB of 4 KiB pages, well above
/// the working set of the emulated devices, in about 300 KiB.
pub const IOTLB_ENTRIES: usize = 4096;

/// Ranges tracked (and so host-mapped) per device in caching mode. VFIO's type1 backend
/// refuses more than 65,535 mappings per container by default (`dma_entry_limit`), so ranges
/// past this could never be mapped anyway; 65,535 ranges cost about 6 MiB of bookkeeping.
pub const TRACKED_RANGES_PER_DEVICE: usize = 65_535;

/// Table entries one device's resync may read (its domain's tables over the invalidated
/// range). 4 Mi entries walk 16 GiB of IOVA mapped with 4 KiB pages (to be checked against
/// the peaks of a nested Linux guest); 0.15-0.3 s in a release build.
pub const WALK_ENTRIES_PER_DOMAIN: usize = 4 << 20;

/// Table entries one register write may read across all its resyncs: one IOTLB or context
/// register invalidation, or every descriptor of one IQT write together. Twice the
/// per-domain budget, so two large domains fit in one global invalidation. Measured: an IQT
/// write of 32,767 global invalidations over self-aliasing tables takes 0.6 s (release, on
/// a loaded 2-core host) with the unit lock held, instead of hours without the bound.
pub const WALK_ENTRIES_PER_WRITE: usize = 2 * WALK_ENTRIES_PER_DOMAIN;

/// The limits of one unit: the constants above, smaller in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// [`IOTLB_ENTRIES`].
    pub iotlb_entries: usize,
    /// [`TRACKED_RANGES_PER_DEVICE`].
    pub tracked_ranges_per_device: usize,
    /// [`WALK_ENTRIES_PER_DOMAIN`].
    pub walk_entries_per_domain: usize,
    /// [`WALK_ENTRIES_PER_WRITE`].
    pub walk_entries_per_write: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            iotlb_entries: IOTLB_ENTRIES,
            tracked_ranges_per_device: TRACKED_RANGES_PER_DEVICE,
            walk_entries_per_domain: WALK_ENTRIES_PER_DOMAIN,
            walk_entries_per_write: WALK_ENTRIES_PER_WRITE,
        }
    }
}
