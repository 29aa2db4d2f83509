//! The unit's side of the host effects of the guest's commands: which devices a consumer
//! tracks, resyncing them on invalidations and mode changes within the work and range
//! bounds of [`crate::limits`], handing out the resulting map/unmap events and interrupt
//! route changes, and completing the guest's invalidations and commands only once the
//! consumer has carried them out.
//!
//! # Completion contract
//!
//! An invalidation is complete for the guest when an invalidation wait descriptor behind it
//! writes its status, sets ICS.IWC and raises the completion event, and IQH moves past it
//! (VT-d 6.5.2.8), or when IOTLB_REG.IVT or CCMD.ICC clears (6.5.1). A global command is
//! complete when GSTS shows it (10.4.5). Part of what the guest changes is held by the host:
//! the mappings of tracked devices (VFIO's), and, once a consumer calls
//! [`RemappingUnit::track_interrupt_routes`], the interrupt routes it derived from IRTEs (KVM
//! irqfd and GSI routes). Such a change is a host effect; the unit holds every completion back
//! while host effects are outstanding: produced and not yet taken with
//! [`RemappingUnit::take_host_effects`], or taken and not yet acknowledged with
//! [`RemappingUnit::host_effects_applied`]. The queue stops at the wait descriptor (IQH points
//! at it, nothing of it is visible), and the GSTS bits a GCMD write changed (TES, RTPS, IRES,
//! IRTPS, CFIS) keep showing their old value (RTPS and IRTPS: clear, 11.4.5) while the
//! translation the unit itself performs already follows the command; all of it resumes on the
//! acknowledgement. A consumer therefore loops: take the effects; if there are none, stop;
//! apply them with the unit unlocked; call `host_effects_applied` with the maps that failed;
//! take again (the queue may have run on to its next wait). Completions with nothing
//! outstanding happen at once, as before.
//!
//! Translation caches outside the unit (emulated devices' IOTLBs, [`super::caches`]) are not
//! host effects: the unit drops their entries itself, synchronously, as it carries out each
//! invalidation, so they need no acknowledgement.

use vm_memory::GuestMemoryBackend;

use super::RemappingUnit;
use crate::caching_mode::{DeviceState, MapEvent, Mapping, RangeStats, ResyncBounds};
use crate::faults::FaultRecord;
use crate::invalidation_queue::Descriptor;
use crate::registers::{
    CCMD_ICC, GSTS_CFIS, GSTS_IRES, GSTS_IRTPS, GSTS_RTPS, GSTS_TES, IOTLB_IVT,
};
use crate::translation;
use crate::{Bdf, FaultReason};

/// The fault recorded for a map the host could not make. The guest's tables allow the
/// translation but the remapping hardware cannot use it; the nearest VT-d reason is an error
/// on access to the translation structures of the request (07h, 7.1.3): the device's DMA to
/// that IOVA fails as if its second-level entry could not be used. The VT-d model has no
/// "host resources exhausted" reason.
const HOST_MAP_FAULT: FaultReason = FaultReason::PagingEntryAccess;

/// The GSTS bits whose change a GCMD write makes can have host effects: they show the change
/// only once those are applied (10.4.5: TES, RTPS, IRES, IRTPS, CFIS). QIES has none.
const HELD_STATUS: u32 = GSTS_TES | GSTS_RTPS | GSTS_IRES | GSTS_IRTPS | GSTS_CFIS;

/// Where the consumer stands with the effects the unit handed out.
#[derive(Debug, Default)]
pub(super) struct HostSync {
    /// Effects were taken and are not yet acknowledged.
    unacked: bool,
    /// A consumer holds routes derived from IRTEs: interrupt entry changes are host effects.
    routes_tracked: bool,
    /// GSTS bits showing `shown_status` instead of the unit's state until the acknowledgement.
    held_status: u32,
    shown_status: u32,
    /// IOTLB_REG.IVT is held set until the events are applied.
    pub(super) iotlb_pending: bool,
    /// CCMD.ICC is held set until the events are applied.
    pub(super) ccmd_pending: bool,
    /// Map events the consumer could not carry out, since reset.
    pub(super) failures: u64,
}

/// A `Map` event the consumer could not carry out on the host (for VFIO: the
/// `VFIO_IOMMU_MAP_DMA` failed, or the target is not RAM). Nothing of it may be left mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFailure {
    pub device: Bdf,
    pub mapping: Mapping,
}

/// Table-walk work of the current register write, and the largest seen (for choosing the
/// limits: [`RemappingUnit::state`] reports them).
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
    /// Resyncs that hit a bound (walk budget or range cap) and so left ranges unmapped.
    limit_hits: u64,
}

/// What the consumer must carry out on the host before the guest's invalidations and
/// commands that produced it complete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostEffects {
    /// Map/unmap events of tracked devices, in order.
    pub map_events: Vec<(Bdf, MapEvent)>,
    /// Interrupt remapping changed (interrupt entries invalidated, the table pointer latched,
    /// remapping or compatibility format toggled): routes derived from IRTEs must be
    /// recomputed. Only reported after [`RemappingUnit::track_interrupt_routes`].
    pub interrupt_routes: bool,
}

impl HostEffects {
    pub fn is_empty(&self) -> bool {
        self.map_events.is_empty() && !self.interrupt_routes
    }
}

impl RemappingUnit {
    /// The consumer holds routes derived from IRTEs (as a VMM's KVM routes are): from now on
    /// an interrupt remapping change is a host effect, reported by `take_host_effects`, and
    /// the completions behind it wait for its acknowledgement.
    pub fn track_interrupt_routes(&mut self) {
        self.host.routes_tracked = true;
    }

    /// The host effects produced since the last call. The caller must carry them out and then
    /// call [`host_effects_applied`](Self::host_effects_applied): until it does, the
    /// invalidations and commands that produced them stay incomplete (see the module
    /// documentation).
    pub fn take_host_effects(&mut self) -> HostEffects {
        let changed = self.take_interrupt_entries_changed();
        HostEffects {
            map_events: self.take_map_events(),
            interrupt_routes: changed && self.host.routes_tracked,
        }
    }

    /// Starts reporting map/unmap events for `device`, beginning with its current state.
    pub fn track<M: GuestMemoryBackend>(&mut self, mem: &M, device: Bdf) {
        self.tracker.add(device);
        self.begin_work();
        self.resync_tracked(mem, |(b, _)| b == device, None);
    }

    /// Stops reporting `device`'s events; those not yet taken are dropped. A consumer that had
    /// a completion waiting on them acknowledges with `host_effects_applied`.
    pub fn untrack(&mut self, device: Bdf) {
        self.tracker.remove(device);
        self.map_events.retain(|(b, _)| *b != device);
    }

    /// The map events of [`take_host_effects`](Self::take_host_effects) alone, for a consumer
    /// that holds no interrupt routes; acknowledged the same way.
    pub fn take_map_events(&mut self) -> Vec<(Bdf, MapEvent)> {
        let events = std::mem::take(&mut self.map_events);
        if !events.is_empty() {
            self.host.unacked = true;
        }
        events
    }

    /// The consumer has carried out every effect taken so far, except the maps in `failures`
    /// (of which nothing may be left on the host). Failed ranges are forgotten, so a later
    /// invalidation over them maps them again, and recorded as primary faults of their device
    /// (unless its context sets FPD). Then, if no new effects are waiting, the held-back
    /// completions happen: GSTS shows the commands, IVT and ICC clear, and the queue runs on,
    /// maybe to its next wait.
    pub fn host_effects_applied<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        failures: &[MapFailure],
    ) {
        self.host.unacked = false;
        for f in failures {
            self.host_map_failed(f);
        }
        if self.host_effects_outstanding() {
            return;
        }
        self.host.held_status = 0;
        if std::mem::take(&mut self.host.iotlb_pending) {
            self.iotlb_reg &= !IOTLB_IVT;
        }
        if std::mem::take(&mut self.host.ccmd_pending) {
            self.ccmd &= !CCMD_ICC;
        }
        self.process_queue(mem);
    }

    /// An interrupt entry change was taken: it waits for the acknowledgement if a consumer
    /// holds routes.
    pub(super) fn host_route_change_taken(&mut self) {
        if self.host.routes_tracked {
            self.host.unacked = true;
        }
    }

    /// Whether effects are produced and not taken, or taken and not acknowledged.
    pub(super) fn host_effects_outstanding(&self) -> bool {
        self.host.unacked
            || !self.map_events.is_empty()
            || (self.host.routes_tracked && self.interrupt_entries_changed)
    }

    /// GSTS as the guest reads it: the unit's status, but bits a GCMD write changed show
    /// their old value until the write's host effects are applied.
    pub(super) fn shown_status(&self) -> u32 {
        let held = self.host.held_status;
        (self.gsts & !held) | (self.host.shown_status & held)
    }

    /// After a GCMD write: `before` is the GSTS the guest could read before it, `latched` the
    /// pointer-status bits (RTPS, IRTPS) its one-shot commands cleared and set again. If the
    /// write left host effects outstanding, the status bits it changed keep showing `before`,
    /// the latched ones clear (11.4.5), until `host_effects_applied`.
    pub(super) fn hold_status(&mut self, before: u32, latched: u32) {
        if !self.host_effects_outstanding() {
            return;
        }
        let changed = ((before ^ self.gsts) | latched) & HELD_STATUS;
        // Bits already held keep what they show; `before` already has it for them.
        self.host.shown_status = before & !latched;
        self.host.held_status |= changed;
    }

    /// Whether descriptor `d` must wait for the host: a wait descriptor completes only after
    /// the host effects of the descriptors before it.
    pub(super) fn waits_for_host(&self, d: &Descriptor) -> bool {
        matches!(d, Descriptor::Wait { .. }) && self.host_effects_outstanding()
    }

    fn host_map_failed(&mut self, f: &MapFailure) {
        self.tracker.forget(f.device, &f.mapping);
        // The consumer logs the host's error; the guest learns of it from the fault.
        self.host.failures += 1;
        if self.context_cache.get(&f.device).is_some_and(|c| c.fpd) {
            return;
        }
        let rec = FaultRecord {
            source: f.device,
            reason: HOST_MAP_FAULT,
            info: f.mapping.iova,
            // T: a mapping the device may write reports a write request (the most it can do).
            read: !f.mapping.write,
        };
        if self.faults.record(rec) {
            self.fault_event.fire(self.sink.as_ref());
        }
    }

    /// What is currently reported as mapped for `device`.
    pub fn tracked_mappings(&self, device: Bdf) -> Vec<Mapping> {
        self.tracker.mappings(device)
    }

    /// How many ranges `device` has tracked: now, at most, and refused by the cap.
    pub fn tracked_range_stats(&self, device: Bdf) -> Option<RangeStats> {
        self.tracker.range_stats(device)
    }

    /// How many times a tracked device's resync hit a bound of [`crate::limits`] (walk
    /// budget or range cap) and so left ranges unmapped (fail closed, fault 07h unless FPD).
    /// Tests and the fuzzer tell a legitimate partial mapping from a lost one with it.
    pub fn limit_hits(&self) -> u64 {
        self.work.limit_hits
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
        self.work.limit_hits += 1;
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
