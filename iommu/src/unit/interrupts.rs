//! The unit's interrupt remapping path (VT-d spec 5.1): IRES/CFIS/EIME gating, the interrupt
//! entry cache and its invalidation, and interrupt fault recording.

use log::warn;
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

    /// Processes an interrupt request from a device or the IOAPIC.
    pub fn remap_interrupt<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        req: InterruptRequest,
    ) -> InterruptOutcome {
        if !self.interrupt_remapping_enabled() {
            return InterruptOutcome::Deliver {
                address: req.address,
                data: req.data,
            };
        }
        if !req.is_remappable() {
            let cfis = self.gsts & GSTS_CFIS != 0;
            if interrupt_remapping::compatibility_allowed(cfis, self.active_irta) {
                return InterruptOutcome::Deliver {
                    address: req.address,
                    data: req.data,
                };
            }
            return self.interrupt_fault(&req, interrupt_remapping::compatibility_fault());
        }
        let index = match interrupt_remapping::request_index(&req) {
            Ok(i) => i,
            Err(f) => return self.interrupt_fault(&req, f),
        };
        let irte = match self.iec.get(&index) {
            Some(e) => *e,
            None => match interrupt_remapping::read_irte(mem, self.active_irta, index) {
                Ok(e) => {
                    self.iec.insert(index, e);
                    e
                }
                Err(f) => return self.interrupt_fault(&req, f),
            },
        };
        if !irte.permits(req.source) {
            return self.interrupt_fault(&req, interrupt_remapping::source_fault(&irte, index));
        }
        let (address, data) = irte.message();
        InterruptOutcome::Deliver { address, data }
    }

    fn interrupt_fault(&mut self, req: &InterruptRequest, f: InterruptFault) -> InterruptOutcome {
        warn!(
            "vt-d: interrupt {:#x}/{:#x} from {} blocked: {:?}",
            req.address, req.data, req.source, f.reason
        );
        if !f.fpd {
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
    /// holds remapped messages (KVM routes) must remap them again.
    pub fn take_interrupt_entries_changed(&mut self) -> bool {
        std::mem::take(&mut self.interrupt_entries_changed)
    }

    /// Entries in the interrupt entry cache.
    pub fn cached_interrupt_entries(&self) -> usize {
        self.iec.len()
    }
}
