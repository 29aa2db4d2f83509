//! The unit's side of caching mode: which devices a consumer tracks, resyncing them on
//! invalidations and mode changes, and handing out the resulting map/unmap events.

use vm_memory::GuestMemoryBackend;

use super::RemappingUnit;
use crate::caching_mode::{DeviceState, MapEvent, Mapping};
use crate::translation;
use crate::Bdf;

impl RemappingUnit {
    /// Starts reporting map/unmap events for `device`, beginning with its current state.
    pub fn track<M: GuestMemoryBackend>(&mut self, mem: &M, device: Bdf) {
        self.tracker.add(device);
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
            let events = self.tracker.resync(mem, device, state, range, &self.walk);
            self.map_events
                .extend(events.into_iter().map(|e| (device, e)));
        }
    }
}
