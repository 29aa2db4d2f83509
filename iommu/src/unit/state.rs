//! The unit's state as data (for the VMM's state dump and, later, a query interface): what
//! is enabled, where the tables are, cache occupancy, tracked mappings, work peaks, faults.
//! The text form is the VMM's (vmm/src/state.rs); nothing here formats.

use serde::Serialize;

use super::RemappingUnit;
use crate::registers::*;
use crate::translation::TranslationType;
use crate::{Bdf, FaultReason};

/// A snapshot of a [`RemappingUnit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnitState {
    /// GSTS.TES (VT-d 11.4.5).
    pub translation: bool,
    /// GSTS.QIES.
    pub queued_invalidation: bool,
    /// GSTS.IRES.
    pub interrupt_remapping: bool,
    /// GSTS.CFIS: compatibility-format interrupts pass through.
    pub compat_format: bool,
    /// IRTA.EIME (11.4.29): x2APIC mode, else xAPIC.
    pub x2apic: bool,
    /// The root table in use (set by SRTP).
    pub root_table: u64,
    /// The interrupt remapping table address in use (set by SIRTP).
    pub irta: u64,
    pub irte_entries: u32,
    /// IQA, and the queue head and tail as descriptor indices.
    pub iqa: u64,
    pub iqh: u64,
    pub iqt: u64,
    pub fsts: u32,
    pub context_cache_entries: usize,
    pub iotlb_entries: usize,
    pub iotlb_capacity: usize,
    pub interrupt_entry_cache_entries: usize,
    /// Cached context entries, by requester id.
    pub contexts: Vec<ContextState>,
    /// Devices whose mappings are shadowed (caching mode), by requester id.
    pub tracked: Vec<TrackedState>,
    pub host_mapping_failures: u64,
    /// Completions wait for host effects the consumer has not yet acknowledged.
    pub host_effects_outstanding: bool,
    pub limits: LimitsState,
    pub faults: Vec<FaultState>,
    /// Queued invalidations carried out, by descriptor type.
    pub invalidations: Vec<InvalidationStats>,
    /// The interrupt remapping entries in use (cached in the interrupt entry cache), by index.
    pub interrupt_entries: Vec<IrteState>,
}

/// The descriptor types of the invalidation queue (VT-d 6.5.2), as the state names them.
pub const INVALIDATION_KINDS: [&str; 5] = [
    "context-cache",
    "iotlb",
    "device-iotlb",
    "interrupt-entry-cache",
    "wait",
];

/// The index of `d`'s type in [`INVALIDATION_KINDS`].
pub(super) fn invalidation_kind(d: &crate::invalidation_queue::Descriptor) -> usize {
    use crate::invalidation_queue::Descriptor;
    match d {
        Descriptor::ContextCache { .. } => 0,
        Descriptor::Iotlb { .. } => 1,
        Descriptor::DeviceIotlb { .. } => 2,
        Descriptor::InterruptEntryCache { .. } => 3,
        Descriptor::Wait { .. } => 4,
    }
}

/// How many descriptors of one type the unit carried out and what each cost on average
/// (handling included: table walks, host map/unmap events queued, cache invalidations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvalidationStats {
    pub kind: &'static str,
    pub count: u64,
    pub avg_ns: u64,
}

/// One interrupt remapping table entry in use (VT-d 9.10).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IrteState {
    pub index: u32,
    pub vector: u8,
    /// Destination APIC ID (8 bits in xAPIC mode, 32 in x2APIC mode).
    pub destination: u32,
    pub logical: bool,
    pub level_triggered: bool,
    pub delivery_mode: u8,
}

/// A run of a device's mappings contiguous in IOVA and guest-physical space with the same
/// permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MappedRange {
    pub iova: u64,
    pub gpa: u64,
    pub size: u64,
    pub read: bool,
    pub write: bool,
}

/// Coalesces `maps` (sorted by IOVA) into runs contiguous in both spaces with equal
/// permissions.
pub fn coalesce(maps: &[crate::caching_mode::Mapping]) -> Vec<MappedRange> {
    let mut out: Vec<MappedRange> = Vec::new();
    for m in maps {
        if let Some(last) = out.last_mut() {
            if last.iova.checked_add(last.size) == Some(m.iova)
                && last.gpa.checked_add(last.size) == Some(m.gpa)
                && (last.read, last.write) == (m.read, m.write)
            {
                last.size = last.size.saturating_add(m.size);
                continue;
            }
        }
        out.push(MappedRange {
            iova: m.iova,
            gpa: m.gpa,
            size: m.size,
            read: m.read,
            write: m.write,
        });
    }
    out
}

/// One cached context entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContextState {
    pub source: Bdf,
    pub domain: u16,
    pub translation_type: TranslationType,
    pub levels: u8,
    pub table: u64,
}

/// What is mapped for one tracked device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrackedState {
    pub device: Bdf,
    pub ranges: usize,
    pub bytes: u64,
    /// The most ranges it held at once, and the ranges refused at the cap.
    pub peak_ranges: Option<usize>,
    pub refused_ranges: Option<u64>,
    /// The mappings, coalesced (see [`coalesce`]).
    pub mapped: Vec<MappedRange>,
}

/// The largest table-walk work seen, against the budgets (see `crate::limits`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LimitsState {
    pub peak_walk_per_invalidation: usize,
    pub peak_walk_per_queue_write: usize,
    pub walk_budget_per_domain: usize,
    pub walk_budget_per_write: usize,
    pub range_cap: usize,
}

/// One recorded fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultState {
    pub source: Bdf,
    pub reason: FaultReason,
    pub info: u64,
}

impl RemappingUnit {
    /// The unit's state as data.
    pub fn state(&self) -> UnitState {
        let on = |b: u32| self.gsts & b != 0;
        let mut contexts: Vec<_> = self
            .context_cache
            .iter()
            .map(|(b, c)| ContextState {
                source: *b,
                domain: c.did,
                translation_type: c.tt,
                levels: c.levels,
                table: c.slptptr,
            })
            .collect();
        contexts.sort_by_key(|c| c.source);
        let mut tracked: Vec<_> = self.tracker.devices().into_iter().map(|(b, _)| b).collect();
        tracked.sort();
        let tracked = tracked
            .into_iter()
            .map(|b| {
                let maps = self.tracker.mappings(b);
                let stats = self.tracker.range_stats(b);
                TrackedState {
                    device: b,
                    ranges: maps.len(),
                    bytes: maps.iter().map(|m| m.size).sum(),
                    peak_ranges: stats.as_ref().map(|r| r.peak),
                    refused_ranges: stats.as_ref().map(|r| r.refused),
                    mapped: coalesce(&maps),
                }
            })
            .collect();
        UnitState {
            translation: on(GSTS_TES),
            queued_invalidation: on(GSTS_QIES),
            interrupt_remapping: on(GSTS_IRES),
            compat_format: on(GSTS_CFIS),
            x2apic: self.active_irta & IRTA_EIME != 0,
            root_table: self.active_rtaddr,
            irta: self.active_irta & IRTA_ADDR_MASK,
            irte_entries: crate::interrupt_remapping::table_entries(self.active_irta),
            iqa: self.iqa,
            iqh: self.iqh >> IQ_INDEX_SHIFT,
            iqt: self.iqt >> IQ_INDEX_SHIFT,
            fsts: self.fsts(),
            context_cache_entries: self.context_cache.len(),
            iotlb_entries: self.iotlb.len(),
            iotlb_capacity: self.iotlb.capacity(),
            interrupt_entry_cache_entries: self.iec.len(),
            contexts,
            tracked,
            host_mapping_failures: self.host.failures,
            host_effects_outstanding: self.host_effects_outstanding(),
            limits: LimitsState {
                peak_walk_per_invalidation: self.work.peak_invalidation,
                peak_walk_per_queue_write: self.work.peak_queue_write,
                walk_budget_per_domain: self.limits.walk_entries_per_domain,
                walk_budget_per_write: self.limits.walk_entries_per_write,
                range_cap: self.limits.tracked_ranges_per_device,
            },
            faults: self
                .faults
                .records()
                .map(|r| FaultState {
                    source: r.source,
                    reason: r.reason,
                    info: r.info,
                })
                .collect(),
            invalidations: INVALIDATION_KINDS
                .iter()
                .zip(self.invalidations.iter())
                .map(|(kind, (count, ns))| InvalidationStats {
                    kind,
                    count: *count,
                    avg_ns: ns.checked_div(*count).unwrap_or(0),
                })
                .collect(),
            interrupt_entries: {
                let mut e: Vec<_> = self
                    .iec
                    .iter()
                    .map(|(i, e)| IrteState {
                        index: *i,
                        vector: e.vector,
                        destination: e.destination,
                        logical: e.logical,
                        level_triggered: e.level_triggered,
                        delivery_mode: e.delivery_mode,
                    })
                    .collect();
                e.sort_by_key(|e| e.index);
                e
            },
        }
    }
}

#[cfg(test)]
mod coalesce_tests {
    use super::*;
    use crate::caching_mode::Mapping;

    fn m(iova: u64, gpa: u64, size: u64, write: bool) -> Mapping {
        Mapping {
            iova,
            gpa,
            size,
            read: true,
            write,
        }
    }

    #[test]
    fn coalesce_contiguous_same_permissions_merge_others_split() {
        let maps = [
            m(0x1000, 0x5000, 0x1000, true),
            m(0x2000, 0x6000, 0x1000, true),
            // Contiguous IOVA, not GPA.
            m(0x3000, 0x9000, 0x1000, true),
            // Contiguous both, other permissions.
            m(0x4000, 0xa000, 0x1000, false),
        ];
        let r = coalesce(&maps);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].iova, r[0].gpa, r[0].size), (0x1000, 0x5000, 0x2000));
        assert_eq!((r[1].iova, r[1].size), (0x3000, 0x1000));
        assert!(!r[2].write);
    }
}
