//! Primary fault logging (VT-d spec 7.2.1, 11.4.9, 11.4.14): fault recording registers, the
//! fault status register, and when a fault event must be signalled.

use crate::registers::{
    FRCD_F, FRCD_FR_SHIFT, FRCD_T_READ, FSTS_FRI_SHIFT, FSTS_PFO, FSTS_PPF, NUM_FRCD,
};
use crate::{Bdf, FaultReason};

/// One recorded fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    pub source: Bdf,
    pub reason: FaultReason,
    /// Page address of the DMA request, or the interrupt index << 48 for interrupt faults.
    pub info: u64,
    /// The request was a read (T bit); writes and interrupt requests leave it clear.
    pub read: bool,
}

/// The fault recording registers and the fault bits of FSTS.
#[derive(Debug, Default)]
pub struct FaultLog {
    records: [Option<FaultRecord>; NUM_FRCD],
    /// The next register hardware writes (registers are used round-robin).
    next: usize,
    overflow: bool,
}

impl FaultLog {
    /// Records a fault in the next register. If that register still holds an unserviced
    /// fault the new one is dropped and PFO set. Returns true if a fault event is due: the
    /// fault set PPF (none was pending) or caused the first overflow (VT-d 7.3.1).
    pub fn record(&mut self, rec: FaultRecord) -> bool {
        if self.records[self.next].is_some() {
            let first = !self.overflow;
            self.overflow = true;
            return first;
        }
        let was_pending = self.pending();
        self.records[self.next] = Some(rec);
        self.next = (self.next + 1) % NUM_FRCD;
        !was_pending
    }

    fn pending(&self) -> bool {
        self.records.iter().any(Option::is_some)
    }

    /// FSTS.FRI: the register holding the oldest pending fault, where software starts
    /// reading (it then walks forward while F is set).
    fn fri(&self) -> usize {
        (0..NUM_FRCD)
            .map(|i| (self.next + i) % NUM_FRCD)
            .find(|&i| self.records[i].is_some())
            .unwrap_or(self.next)
    }

    /// The fault bits of FSTS: PFO, PPF and FRI.
    pub fn status(&self) -> u32 {
        let mut v = (self.fri() as u32) << FSTS_FRI_SHIFT;
        if self.overflow {
            v |= FSTS_PFO;
        }
        if self.pending() {
            v |= FSTS_PPF;
        }
        v
    }

    /// Software cleared PFO (write 1 to clear).
    pub fn clear_overflow(&mut self) {
        self.overflow = false;
    }

    /// The 128-bit value of fault recording register `i` as (low, high) qwords.
    pub fn register(&self, i: usize) -> (u64, u64) {
        match self.records.get(i).copied().flatten() {
            None => (0, 0),
            Some(r) => (
                r.info & !0xfff,
                FRCD_F
                    | if r.read { FRCD_T_READ } else { 0 }
                    | (u64::from(r.reason.code()) << FRCD_FR_SHIFT)
                    | u64::from(r.source.raw()),
            ),
        }
    }

    /// Software wrote the high qword (or its top dword) of register `i`: F is RW1C.
    pub fn write_high(&mut self, i: usize, value: u64) {
        if value & FRCD_F != 0 {
            if let Some(slot) = self.records.get_mut(i) {
                *slot = None;
            }
        }
    }

    pub fn records(&self) -> impl Iterator<Item = &FaultRecord> {
        self.records.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8) -> FaultRecord {
        FaultRecord {
            source: Bdf::new(0, n, 0),
            reason: FaultReason::WriteDenied,
            info: 0x1000 * u64::from(n) + 0x123,
            read: false,
        }
    }

    #[test]
    fn fault_record_sets_ppf_and_fri_points_at_oldest_pending() {
        let mut l = FaultLog::default();
        assert_eq!(l.status(), 0);
        assert!(l.record(rec(3)));
        assert_eq!(l.status(), FSTS_PPF, "FRI 0: the fault is in register 0");
        let (lo, hi) = l.register(0);
        assert_eq!(lo, 0x3000, "page address only");
        assert_eq!(hi & FRCD_F, FRCD_F);
        assert_eq!((hi >> FRCD_FR_SHIFT) & 0xff, 5);
        assert_eq!(hi & 0xffff, u64::from(Bdf::new(0, 3, 0).raw()));
        assert_eq!(hi & FRCD_T_READ, 0, "write request");
        assert!(!l.record(rec(4)), "PPF already set: no second event");
        assert_eq!(l.status() >> FSTS_FRI_SHIFT, 0);
        // Software services register 0: the oldest pending is now register 1.
        l.write_high(0, FRCD_F);
        assert_eq!(l.status(), FSTS_PPF | (1 << FSTS_FRI_SHIFT));
        l.write_high(1, FRCD_F);
        assert!(l.record(rec(5)), "PPF set again: an event");
        assert_eq!(l.status(), FSTS_PPF | (2 << FSTS_FRI_SHIFT), "round-robin");
    }

    #[test]
    fn fault_clearing_f_frees_register_and_ppf() {
        let mut l = FaultLog::default();
        l.record(rec(1));
        l.write_high(0, 0);
        assert_eq!(l.status() & FSTS_PPF, FSTS_PPF, "writing 0 keeps F");
        l.write_high(0, FRCD_F);
        assert_eq!(l.status() & FSTS_PPF, 0);
        assert_eq!(l.register(0), (0, 0));
    }

    #[test]
    fn fault_overflow_when_fri_register_is_full() {
        let mut l = FaultLog::default();
        for n in 0..NUM_FRCD as u8 {
            l.record(rec(n));
        }
        assert!(l.record(rec(9)), "the first overflow signals");
        assert!(!l.record(rec(10)), "later overflows do not");
        assert_eq!(l.status() & FSTS_PFO, FSTS_PFO);
        assert_eq!(
            l.records().count(),
            NUM_FRCD,
            "dropped faults are not recorded"
        );
        l.clear_overflow();
        assert_eq!(l.status() & FSTS_PFO, 0);
    }

    #[test]
    fn fault_read_requests_set_t() {
        let mut l = FaultLog::default();
        l.record(FaultRecord {
            read: true,
            ..rec(1)
        });
        assert_ne!(l.register(0).1 & FRCD_T_READ, 0);
    }
}
