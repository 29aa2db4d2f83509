//! The unit's side of caching mode: which devices a consumer tracks, resyncing them on
//! invalidations and mode changes within the work and range bounds of [`crate::limits`],
//! and handing out the resulting map/unmap events.

use vm_memory::GuestMemoryBackend;

use super::RemappingUnit;
use crate::caching_mode::{DeviceState, MapEvent, Mapping, RangeStats, ResyncBounds};
use crate::faults::FaultRecord;
use crate::{translation, Bdf, FaultReason};

/// Table-walk work of the current register write, and the largest seen (for choosing the
/// limits: [`RemappingUnit::state_dump`] prints them).
#[derive(Debug, Default)]
pub(super) struct WalkWork {
    /// Entries the current write may still read.
    remaining: usize,
    /// Entries read in the current write.
    in_write: usize,
    /// The most entries one invalidation (register, descriptor or mode change) read.
    pub(super) peak_invalidation: usize,
    /// The most entries one IQT write read, all its descriptors together.
    pub(super) peak_queue_write: usize,
    /// Steps of the resync diffs so far (tests bound the work with it).
    pub(super) diff_steps: u64,
}

impl RemappingUnit {
    /// Starts reporting map/unmap events for `device`, beginning with its current state.
    pub fn track<M: GuestMemoryBackend>(&mut self, mem: &M, device: Bdf) {
        self.tracker.add(device);
        self.begin_work();
        self.resync_tracked(mem, |(b, _)| b == device, None);
    }

    pub fn untrack(&mut self, device: Bdf) {
        self.tracker.remove(device);
        self.map_events.retain(|(b, _)| *b != device);
    }

    /// The events produced since the last call, in order.
    pub fn take_map_events(&mut self) -> Vec<(Bdf, MapEvent)> {
        std::mem::take(&mut self.map_events)
    }

    /// What is currently reported as mapped for `device`.
    pub fn tracked_mappings(&self, device: Bdf) -> Vec<Mapping> {
        self.tracker.mappings(device)
    }

    /// How many ranges `device` has tracked: now, at most, and refused by the cap.
    pub fn tracked_range_stats(&self, device: Bdf) -> Option<RangeStats> {
        self.tracker.range_stats(device)
    }

    /// A register write (or a new tracked device) starts with a fresh walk budget.
    pub(super) fn begin_work(&mut self) {
        self.work.remaining = self.limits.walk_entries_per_write;
        self.work.in_write = 0;
    }

    /// Records the walk of one invalidation that started when `in_write` was `before`.
    fn end_invalidation(&mut self, before: usize) {
        let walked = self.work.in_write - before;
        self.work.peak_invalidation = self.work.peak_invalidation.max(walked);
    }

    /// Records the walk of one IQT write.
    pub(super) fn end_queue_write(&mut self) {
        self.work.peak_queue_write = self.work.peak_queue_write.max(self.work.in_write);
    }

    /// How the unit treats `device`'s DMA now. The context entry comes from the context
    /// cache when it holds one (as a translation would use it, 6.2.2), so an IOTLB
    /// invalidation costs no root and context reads.
    fn device_state<M: GuestMemoryBackend>(&mut self, mem: &M, device: Bdf) -> DeviceState {
        if !self.translation_enabled() {
            return DeviceState::PassThrough;
        }
        if let Some(c) = self.context_cache.get(&device) {
            return DeviceState::from_context(Ok(*c));
        }
        let ctx = translation::lookup_context(mem, self.active_rtaddr, device, &self.walk);
        if let Ok(c) = ctx {
            self.context_cache.insert(device, c);
        }
        DeviceState::from_context(ctx)
    }

    /// Resyncs the tracked devices `which` selects (by address and last known domain) over
    /// `range`, or their whole address space.
    pub(super) fn resync_tracked<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        which: impl Fn((Bdf, Option<u16>)) -> bool,
        range: Option<(u64, u64)>,
    ) {
        if self.tracker.is_empty() {
            return;
        }
        let before = self.work.in_write;
        let mut devices: Vec<Bdf> = self
            .tracker
            .devices()
            .into_iter()
            .filter(|d| which(*d))
            .map(|(b, _)| b)
            .collect();
        devices.sort();
        for device in devices {
            let state = self.device_state(mem, device);
            let fpd = matches!(state, DeviceState::Translated(c) if c.fpd);
            let bounds = ResyncBounds {
                walk_entries: self.work.remaining.min(self.limits.walk_entries_per_domain),
                max_ranges: self.limits.tracked_ranges_per_device,
            };
            let out = self
                .tracker
                .resync(mem, device, state, range, &self.walk, bounds);
            self.work.remaining -= out.walked;
            self.work.in_write += out.walked;
            self.work.diff_steps += out.diff_steps;
            self.map_events
                .extend(out.events.into_iter().map(|e| (device, e)));
            if let Some(iova) = out.unverified {
                self.bound_fault(device, iova, fpd, "walk budget exhausted: ranges from there on are unmapped until the next invalidation");
            }
            if let Some(iova) = out.refused {
                self.bound_fault(
                    device,
                    iova,
                    fpd,
                    "too many tracked ranges: ranges from there on are not mapped",
                );
            }
        }
        self.end_invalidation(before);
    }

    /// A tracked device hit a bound: its DMA to `iova` (and beyond) will be refused. The
    /// guest sees a fault record there, as for a paging-entry access that failed (07h),
    /// unless the context entry disabled fault processing.
    fn bound_fault(&mut self, device: Bdf, iova: u64, fpd: bool, what: &str) {
        if fpd {
            return;
        }
        crate::warn_limited!("vt-d: {device} at IOVA {iova:#x}: {what}");
        let rec = FaultRecord {
            source: device,
            reason: FaultReason::PagingEntryAccess,
            info: iova,
            read: false,
        };
        if self.faults.record(rec) {
            self.fault_event.fire(self.sink.as_ref());
        }
    }
}
