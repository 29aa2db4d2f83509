//! What handling the DRHD's registers costs: register writes by kind, and an IQT write (the
//! guest's queued invalidations) split by phase, so that the time of one invalidation can be
//! told apart from the host calls it makes (`VfioDmaState`) and from the exit that carried it
//! (`crate::exit_costs`).

use std::time::{Duration, Instant};

use crate::state::{InvalidationCosts, RegisterWriteCosts};

/// Where the time of one register write went.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct WriteTiming {
    pub lock: Duration,
    pub unit: Duration,
    pub effects: Duration,
    pub ack: Duration,
    /// Host effects were carried out.
    pub had_effects: bool,
}

/// Counts and total nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    n: u64,
    ns: u64,
}

impl Tally {
    fn add(&mut self, d: Duration) {
        self.n += 1;
        self.ns += d.as_nanos() as u64;
    }

    fn avg_us(&self) -> u64 {
        self.ns.checked_div(self.n).unwrap_or(0) / 1000
    }
}

/// Register accesses the guest made and the time spent handling them.
#[derive(Debug, Default)]
pub(super) struct RegisterStats {
    iqt: Tally,
    other: Tally,
    reads: Tally,
    phases: InvalidationCosts,
}

impl RegisterStats {
    /// A write that took `total` from its start, split as `t` says.
    pub fn write(&mut self, iqt: bool, total: Duration, t: &WriteTiming) {
        if !iqt {
            self.other.add(total);
            return;
        }
        self.iqt.add(total);
        let ns = |d: Duration| d.as_nanos() as u64;
        let p = &mut self.phases;
        p.iqt_writes += 1;
        p.total_ns += ns(total);
        p.lock_ns += ns(t.lock);
        p.unit_ns += ns(t.unit);
        p.effects_ns += ns(t.effects);
        p.ack_ns += ns(t.ack);
        p.with_effects += u64::from(t.had_effects);
    }

    pub fn read(&mut self, since: Instant) {
        self.reads.add(since.elapsed());
    }

    pub fn writes(&self) -> RegisterWriteCosts {
        RegisterWriteCosts {
            iqt_writes: self.iqt.n,
            iqt_avg_us: self.iqt.avg_us(),
            other_writes: self.other.n,
            other_avg_us: self.other.avg_us(),
        }
    }

    pub fn invalidation(&self) -> InvalidationCosts {
        InvalidationCosts {
            reads: self.reads.n,
            read_ns: self.reads.ns,
            ..self.phases
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_stats_split_iqt_writes_by_phase_and_others_apart() {
        let us = Duration::from_micros;
        let mut s = RegisterStats::default();
        let t = WriteTiming {
            lock: us(1),
            unit: us(3),
            effects: us(20),
            ack: us(2),
            had_effects: true,
        };
        s.write(true, us(30), &t);
        s.write(true, us(10), &WriteTiming::default());
        s.write(false, us(5), &t);
        let w = s.writes();
        assert_eq!((w.iqt_writes, w.iqt_avg_us), (2, 20));
        assert_eq!((w.other_writes, w.other_avg_us), (1, 5));
        let i = s.invalidation();
        assert_eq!(
            (
                i.iqt_writes,
                i.total_ns,
                i.lock_ns,
                i.unit_ns,
                i.effects_ns,
                i.ack_ns
            ),
            (2, 40_000, 1_000, 3_000, 20_000, 2_000)
        );
        assert_eq!(i.with_effects, 1);
        assert_eq!(i.reads, 0);
    }
}
