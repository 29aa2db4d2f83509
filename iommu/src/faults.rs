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
    /// Fault recording index: the next register hardware writes.
    fri: usize,
    overflow: bool,
}

impl FaultLog {
    /// Records a fault at FRI. If that register still holds an unserviced fault the new one
    /// is dropped and PFO set. Returns true if the fault was recorded or caused an overflow
    /// (either is a reason for a fault event).
    pub fn record(&mut self, rec: FaultRecord) -> bool {
        if self.records[self.fri].is_some() {
            let first = !self.overflow;
            self.overflow = true;
            return first;
        }
        self.records[self.fri] = Some(rec);
        self.fri = (self.fri + 1) % NUM_FRCD;
        true
    }

    /// The fault bits of FSTS: PFO, PPF and FRI.
    pub fn status(&self) -> u32 {
        let mut v = (self.fri as u32) << FSTS_FRI_SHIFT;
        if self.overflow {
            v |= FSTS_PFO;
        }
        if self.records.iter().any(Option::is_some) {
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
    fn fault_record_sets_ppf_and_advances_fri() {
        let mut l = FaultLog::default();
        assert_eq!(l.status(), 0);
        assert!(l.record(rec(3)));
        assert_eq!(l.status(), FSTS_PPF | (1 << FSTS_FRI_SHIFT));
        let (lo, hi) = l.register(0);
        assert_eq!(lo, 0x3000, "page address only");
        assert_eq!(hi & FRCD_F, FRCD_F);
        assert_eq!((hi >> FRCD_FR_SHIFT) & 0xff, 5);
        assert_eq!(hi & 0xffff, u64::from(Bdf::new(0, 3, 0).raw()));
        assert_eq!(hi & FRCD_T_READ, 0, "write request");
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
            assert!(l.record(rec(n)));
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
