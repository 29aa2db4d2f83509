//! The unit's interrupt remapping path (VT-d spec 5.1): IRES/CFIS/EIME gating, the interrupt
//! entry cache and its invalidation, and interrupt fault recording.

use vm_memory::GuestMemoryBackend;

use super::RemappingUnit;
use crate::faults::FaultRecord;
use crate::interrupt_remapping::{self, InterruptFault, InterruptRequest};
use crate::registers::{GSTS_CFIS, GSTS_IRES};
use crate::FaultReason;

/// What became of an interrupt request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptOutcome {
    /// Deliver this compatibility-format MSI (remapped, or passed through unchanged).
    Deliver { address: u64, data: u32 },
    /// Blocked; the fault was recorded unless FPD said otherwise.
    Blocked(FaultReason),
}

impl RemappingUnit {
    /// Whether interrupt remapping is on (GSTS.IRES).
    pub fn interrupt_remapping_enabled(&self) -> bool {
        self.gsts & GSTS_IRES != 0
    }

    /// Processes an interrupt request from a device or the IOAPIC. Blocked requests are
    /// recorded as faults (unless the IRTE sets FPD) and raise the fault event.
    pub fn remap_interrupt<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        req: InterruptRequest,
    ) -> InterruptOutcome {
        match self.resolve_interrupt(mem, &req) {
            Ok((address, data)) => InterruptOutcome::Deliver { address, data },
            Err(f) => self.interrupt_fault(&req, f),
        }
    }

    /// What `req` would become now, without recording a fault: for routes a VMM programs
    /// ahead of any interrupt (KVM GSI routes of level-triggered IOAPIC pins).
    pub fn peek_interrupt<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        req: InterruptRequest,
    ) -> InterruptOutcome {
        match self.resolve_interrupt(mem, &req) {
            Ok((address, data)) => InterruptOutcome::Deliver { address, data },
            Err(f) => InterruptOutcome::Blocked(f.reason),
        }
    }

    fn resolve_interrupt<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        req: &InterruptRequest,
    ) -> Result<(u64, u32), InterruptFault> {
        if !self.interrupt_remapping_enabled() {
            return Ok((req.address, req.data));
        }
        if !req.is_remappable() {
            let cfis = self.gsts & GSTS_CFIS != 0;
            if interrupt_remapping::compatibility_allowed(cfis, self.active_irta) {
                return Ok((req.address, req.data));
            }
            return Err(interrupt_remapping::compatibility_fault());
        }
        let index = interrupt_remapping::request_index(req)?;
        let irte = match self.iec.get(&index) {
            Some(e) => *e,
            None => {
                let e = interrupt_remapping::read_irte(mem, self.active_irta, index)?;
                self.iec.insert(index, e);
                e
            }
        };
        if !irte.permits(req.source) {
            return Err(interrupt_remapping::source_fault(&irte, index));
        }
        Ok(irte.message())
    }

    fn interrupt_fault(&mut self, req: &InterruptRequest, f: InterruptFault) -> InterruptOutcome {
        // Fault processing disabled (IRTE FPD): neither recorded nor logged.
        if !f.fpd {
            crate::warn_limited!(
                "vt-d: interrupt {:#x}/{:#x} from {} blocked: {:?}",
                req.address,
                req.data,
                req.source,
                f.reason
            );
            let rec = FaultRecord {
                source: req.source,
                reason: f.reason,
                info: f.index.map_or(0, |i| u64::from(i) << 48),
                read: false,
            };
            if self.faults.record(rec) {
                self.fault_event.fire(self.sink.as_ref());
            }
        }
        InterruptOutcome::Blocked(f.reason)
    }

    /// Drops cached IRTEs: all (`None`) or the 2^mask entries from `index` (6.5.2.4).
    pub(super) fn invalidate_interrupt_entries(&mut self, index: Option<(u16, u8)>) {
        match index {
            None => self.iec.clear(),
            Some((index, mask)) => {
                let span = 1u32 << mask.min(16);
                let base = u32::from(index) & !(span - 1);
                self.iec.retain(|i, _| !(base..base + span).contains(i));
            }
        }
        self.interrupt_entries_changed = true;
    }

    /// Whether the guest invalidated interrupt entries since the last call: anything that
    /// holds remapped messages (KVM routes) must remap them again. The route part of
    /// [`take_host_effects`](Self::take_host_effects): after
    /// [`track_interrupt_routes`](Self::track_interrupt_routes), a change taken here is
    /// acknowledged with `host_effects_applied`.
    pub fn take_interrupt_entries_changed(&mut self) -> bool {
        let changed = std::mem::take(&mut self.interrupt_entries_changed);
        if changed {
            self.host_route_change_taken();
        }
        changed
    }

    /// Entries in the interrupt entry cache.
    pub fn cached_interrupt_entries(&self) -> usize {
        self.iec.len()
    }
}
