//! The VT-d model wired into the VM: its register set on the MMIO bus, interrupt remapping in
//! front of KVM's MSI delivery, and DMA for emulated devices through its translation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::bus::{lock, BusDevice};
use devices::dma::{Access, DmaError, IotlbSet, PageTranslation, Translate};
use devices::interrupt::{InterruptError, InterruptRoutes, IrqfdRouting, MsiMessage, MsiTrigger};
use iommu::{
    Bdf, DmaOutcome, InterruptOutcome, InterruptRequest, InterruptSink, Iova, MapEvent, MapFailure,
    RemappingUnit,
};
use log::{debug, warn};

use crate::state::{IommuState, VfioDmaState};
use costs::{RegisterStats, WriteTiming};

mod costs;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Why a listener could not carry out a map event on the host.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ListenerError(pub String);

/// Who shadows a device's DMA mappings (VFIO): receives the caching-mode events.
pub trait MapListener: Send + Sync {
    /// Carries out `event` on the host before returning: the guest is told the invalidation
    /// that produced it is complete only afterwards. An error for a `Map` means nothing of the
    /// range is left mapped (the unit forgets it, so a later invalidation retries, and records
    /// a fault for the device); for an `Unmap` it means the listener could not remove the
    /// mapping and has stopped the device from reaching memory instead (fail closed).
    fn map_event(&self, device: Bdf, event: MapEvent) -> Result<(), ListenerError>;

    /// What the listener holds and what it cost, for the state dump (None: nothing to show).
    fn state(&self) -> Option<VfioDmaState> {
        None
    }
}

/// The remapping unit and the guest memory its tables live in.
pub struct Iommu {
    unit: Mutex<RemappingUnit>,
    mem: GuestMemoryMmap,
    /// Holders of hypervisor routes derived through interrupt remapping (the IOAPIC's
    /// level-triggered pins, passed-through devices' vectors).
    routes: Mutex<Vec<Arc<dyn InterruptRoutes>>>,
    listeners: Mutex<HashMap<Bdf, Arc<dyn MapListener>>>,
    /// Held by whoever changes the unit's state in a way that produces host effects (map
    /// events, interrupt route changes), from the change until the effects are applied and
    /// acknowledged: events reach the listeners in the order the unit produced them. Taken
    /// before `unit`.
    host_sync: Mutex<()>,
    /// Register accesses the guest made and the time spent handling them, with the map/unmap
    /// work they trigger: IQT writes (queued invalidations, split by phase) and the other
    /// writes (among them the enabling of translation, which removes the identity mapping)
    /// apart.
    stats: Mutex<RegisterStats>,
    /// The translation caches of emulated devices, invalidated by the unit as it carries out
    /// the guest's invalidations.
    caches: Arc<IotlbSet>,
}

impl Iommu {
    pub fn new(mut unit: RemappingUnit, mem: GuestMemoryMmap) -> Arc<Self> {
        // KVM routes are derived from IRTEs (`refresh_interrupt_routes`): the guest's
        // interrupt entry invalidations complete only once they are recomputed.
        unit.track_interrupt_routes();
        let caches = IotlbSet::new();
        unit.set_translation_caches(caches.clone());
        Arc::new(Iommu {
            unit: Mutex::new(unit),
            mem,
            routes: Mutex::new(Vec::new()),
            listeners: Mutex::new(HashMap::new()),
            host_sync: Mutex::new(()),
            stats: Mutex::new(RegisterStats::default()),
            caches,
        })
    }

    /// The caches the unit invalidates: a device's `DeviceDma` joins them.
    pub fn translation_caches(&self) -> &Arc<IotlbSet> {
        &self.caches
    }

    /// Starts shadowing `device`'s DMA into `listener`, beginning with its current state.
    pub fn track(&self, device: Bdf, listener: Arc<dyn MapListener>) {
        let _sync = lock(&self.host_sync);
        lock(&self.listeners).insert(device, listener);
        lock(&self.unit).track(&self.mem, device);
        self.apply_host_effects(&mut WriteTiming::default());
    }

    /// Carries out the unit's host effects (map events to the listeners, then the interrupt
    /// routes recomputed) and acknowledges them until it has none left (the completion
    /// contract of `iommu::unit::tracking`): an acknowledgement can let the queue run on to
    /// its next wait descriptor, which may have produced more. Call with `host_sync` held and
    /// the unit unlocked; the loop ends because each round completes at least one wait of a
    /// queue whose tail cannot move meanwhile. The time of carrying out and acknowledging
    /// is added to `t`.
    fn apply_host_effects(&self, t: &mut WriteTiming) {
        loop {
            let effects = lock(&self.unit).take_host_effects();
            if effects.is_empty() {
                return;
            }
            t.had_effects = true;
            let start = Instant::now();
            let failures = self.dispatch(effects.map_events);
            if effects.interrupt_routes {
                self.refresh_interrupt_routes();
            }
            let applied = Instant::now();
            t.effects += applied - start;
            lock(&self.unit).host_effects_applied(&self.mem, &failures);
            t.ack += applied.elapsed();
        }
    }

    /// Hands map events to their devices' listeners (with the unit unlocked); returns the
    /// maps they could not make.
    fn dispatch(&self, events: Vec<(Bdf, MapEvent)>) -> Vec<MapFailure> {
        let listeners = lock(&self.listeners);
        let mut failures = Vec::new();
        for (device, event) in events {
            let Some(l) = listeners.get(&device) else {
                debug!("vt-d: {device}: {event:?}");
                continue;
            };
            if let Err(e) = l.map_event(device, event) {
                iommu::warn_limited!("vt-d: {device}: {event:?} not carried out on the host: {e}");
                if let MapEvent::Map(mapping) = event {
                    failures.push(MapFailure { device, mapping });
                }
            }
        }
        failures
    }

    /// Registers routes to recompute when the guest changes interrupt remapping state.
    pub fn add_interrupt_routes(&self, r: Arc<dyn InterruptRoutes>) {
        lock(&self.routes).push(r);
    }

    /// After the guest changed interrupt remapping state, KVM routes derived from IRTEs
    /// are recomputed. Called with the unit unlocked (recomputing locks it to remap), before
    /// the change is acknowledged: the guest's wait for it completes afterwards.
    fn refresh_interrupt_routes(&self) {
        let routes = lock(&self.routes).clone();
        for r in routes {
            r.refresh();
        }
    }

    /// The unit's configuration (ECAP.DT: whether devices get the ATS capability).
    pub fn config(&self) -> iommu::IommuConfig {
        *lock(&self.unit).config()
    }

    /// The unit's state, the cost of its register writes and its listeners' state.
    pub fn state(&self) -> IommuState {
        let unit = lock(&self.unit).state();
        let stats = lock(&self.stats);
        let (writes, invalidation) = (stats.writes(), stats.invalidation());
        drop(stats);
        let listeners = lock(&self.listeners);
        let mut devices: Vec<_> = listeners.keys().copied().collect();
        devices.sort();
        let listeners = devices
            .into_iter()
            .filter_map(|d| listeners[&d].state())
            .collect();
        IommuState {
            unit,
            writes,
            invalidation,
            listeners,
        }
    }
}

/// The DRHD register set (4 KiB at DRHD_START) as a bus device.
pub struct DrhdRegisters(pub Arc<Iommu>);

impl BusDevice for DrhdRegisters {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let start = Instant::now();
        lock(&self.0.unit).read(offset, data);
        lock(&self.0.stats).read(start);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let start = Instant::now();
        let mut t = WriteTiming::default();
        let sync = lock(&self.0.host_sync);
        let mut unit = lock(&self.0.unit);
        let locked = Instant::now();
        t.lock = locked - start;
        unit.write(&self.0.mem, offset, data);
        drop(unit);
        t.unit = locked.elapsed();
        // Mappings and interrupt routes are in place before the vCPU that wrote resumes, and
        // before any invalidation or command behind them reports completion to the guest.
        self.0.apply_host_effects(&mut t);
        drop(sync);
        let iqt = offset == iommu::registers::IQT_REG;
        lock(&self.0.stats).write(iqt, start.elapsed(), &t);
    }
}

/// The unit's own event interrupts (fault, invalidation completion): plain MSIs, never
/// remapped (VT-d spec 5.1.6).
pub struct UnitInterrupts(pub Arc<dyn MsiTrigger>);

impl InterruptSink for UnitInterrupts {
    fn send(&self, address: u64, data: u32) {
        let msg = MsiMessage {
            address,
            data,
            source: Bdf::default(),
        };
        if let Err(e) = self.0.send_msi(msg) {
            warn!("vt-d: event interrupt: {e}");
        }
    }
}

/// MSI delivery through interrupt remapping, then on to `out` (KVM), and irqfd routes that
/// hold the remapped message.
pub struct RemappedMsi {
    pub iommu: Arc<Iommu>,
    pub out: Arc<dyn MsiTrigger>,
    pub routing: Arc<dyn IrqfdRouting>,
}

impl RemappedMsi {
    /// The message `msg` becomes after remapping; None if remapping blocks it (nothing is
    /// recorded: that happens when it is actually sent).
    fn peek(&self, msg: &MsiMessage) -> Option<MsiMessage> {
        match lock(&self.iommu.unit).peek_interrupt(&self.iommu.mem, request(msg)) {
            InterruptOutcome::Deliver { address, data } => Some(MsiMessage {
                address,
                data,
                ..*msg
            }),
            InterruptOutcome::Blocked(_) => None,
        }
    }
}

impl IrqfdRouting for RemappedMsi {
    fn route(&self, fd: &EventFd, msg: MsiMessage) -> bool {
        match self.peek(&msg) {
            Some(m) => self.routing.route(fd, m),
            None => {
                self.routing.unroute(fd);
                false
            }
        }
    }

    fn unroute(&self, fd: &EventFd) {
        self.routing.unroute(fd);
    }
}

fn request(msg: &MsiMessage) -> InterruptRequest {
    InterruptRequest {
        address: msg.address,
        data: msg.data,
        source: msg.source,
    }
}

impl MsiTrigger for RemappedMsi {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), InterruptError> {
        let outcome = lock(&self.iommu.unit).remap_interrupt(&self.iommu.mem, request(&msg));
        match outcome {
            InterruptOutcome::Deliver { address, data } => self.out.send_msi(MsiMessage {
                address,
                data,
                ..msg
            }),
            // The fault is recorded in the unit; the interrupt is dropped, as on hardware.
            InterruptOutcome::Blocked(_) => Ok(()),
        }
    }

    fn ioapic_route_changed(&self, pin: usize, msg: Option<MsiMessage>) {
        let remapped = msg.and_then(|m| self.peek(&m));
        self.out.ioapic_route_changed(pin, remapped);
    }
}

/// The unit as the translator of emulated devices' DMA ([`devices::dma::DeviceDma`]): asked
/// on a miss in a device's cache, with the unit locked for that one page. Faults are recorded
/// in the unit, as for any DMA.
pub struct IommuTranslator(pub Arc<Iommu>);

impl Translate for IommuTranslator {
    fn translate(
        &self,
        source: Bdf,
        iova: Iova,
        access: Access,
    ) -> Result<PageTranslation, DmaError> {
        let write = access == Access::Write;
        let (outcome, domain) =
            lock(&self.0.unit).translate_in_domain(&self.0.mem, source, iova, write);
        match outcome {
            DmaOutcome::Translated(t) => Ok(PageTranslation {
                iova_base: t.iova_base,
                gpa_base: t.gpa_base,
                size: t.page_size,
                read: t.read,
                write: t.write,
                domain,
            }),
            DmaOutcome::Blocked(_) => Err(DmaError::Blocked {
                requester: source,
                iova,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
