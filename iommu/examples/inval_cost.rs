//! Benchmark (not a test): what one queued invalidation costs the unit, natively, with the
//! device behind it tracked (VFIO's case: the unit walks the invalidated range and diffs it
//! against what the host holds, and the wait completes after the host effects are taken and
//! acknowledged) and, for reference in the same run, untracked (an emulated device's case:
//! the invalidation only drops cache entries). The guest side is L1's map+unmap loop: map a
//! 4 KiB page, invalidate it (caching mode), unmap it, invalidate it, each invalidation an
//! IOTLB page-selective descriptor and a wait with status write, then an IQT write.
//! `scripts/bench-inval.sh` runs it.

use std::time::{Duration, Instant};

use iommu::registers::{GCMD_QIE, GCMD_REG, GCMD_SRTP, GCMD_TE, IQA_REG, IQT_REG, RTADDR_REG};
use iommu::{Bdf, InterruptSink, IommuConfig, RemappingUnit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const DEV: Bdf = Bdf::new(0, 3, 0);
const DID: u64 = 1;
const ROOT: u64 = 0x1000;
const CONTEXT: u64 = 0x2000;
/// Four levels of second-level tables, one page each.
const SLPT: [u64; 4] = [0x3000, 0x4000, 0x5000, 0x6000];
const QUEUE: u64 = 0x10_0000;
/// 256 descriptors of 16 bytes (IQA.QS = 0).
const QUEUE_SLOTS: u64 = 256;
const STATUS: u64 = 0x20_0000;
const IOVA: u64 = 0x40_0000;
const TARGET: u64 = 0x80_0000;

struct NoInterrupts;

impl InterruptSink for NoInterrupts {
    fn send(&self, _: u64, _: u32) {}
}

struct Guest {
    unit: RemappingUnit,
    mem: GuestMemoryMmap,
    tail: u64,
    tracked: bool,
}

impl Guest {
    fn new(tracked: bool) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)])
            .expect("16 MiB of test memory");
        let mut unit = RemappingUnit::new(IommuConfig::default(), Box::new(NoInterrupts));
        let put = |a: u64, v: u64| mem.write_obj(v, GuestAddress(a)).expect("in memory");
        let devfn = u64::from(DEV.devfn());
        put(ROOT, CONTEXT | 1);
        put(CONTEXT + devfn * 16, SLPT[0] | 1);
        put(CONTEXT + devfn * 16 + 8, (DID << 8) | 2);
        for l in 0..3 {
            put(SLPT[l], SLPT[l + 1] | 3);
        }
        if tracked {
            unit.track(&mem, DEV);
        }
        let mut g = Guest {
            unit,
            mem,
            tail: 0,
            tracked,
        };
        g.w(RTADDR_REG, ROOT);
        g.w(GCMD_REG, u64::from(GCMD_SRTP));
        g.w(GCMD_REG, u64::from(GCMD_TE));
        g.w(IQA_REG, QUEUE);
        g.w(IQT_REG, 0);
        g.w(GCMD_REG, u64::from(GCMD_TE | GCMD_QIE));
        g
    }

    fn put(&self, a: u64, v: u64) {
        self.mem.write_obj(v, GuestAddress(a)).expect("in memory");
    }

    /// A register write as `DrhdRegisters::write` makes it: the unit's work, then the host
    /// effects taken and acknowledged until there are none (no host calls here).
    fn w(&mut self, off: u64, v: u64) {
        self.unit.write(&self.mem, off, &v.to_le_bytes());
        if !self.tracked {
            return;
        }
        loop {
            let effects = self.unit.take_host_effects();
            if effects.is_empty() {
                return;
            }
            std::hint::black_box(&effects);
            self.unit.host_effects_applied(&self.mem, &[]);
        }
    }

    /// An IOTLB page-selective invalidation of IOVA and a wait with status write, as Linux's
    /// qi_flush_iotlb + qi_submit_sync queue them; returns the IQT write's time.
    fn invalidate(&mut self) -> Duration {
        let slot = |t: u64| QUEUE + (t % QUEUE_SLOTS) * 16;
        self.put(slot(self.tail), 0x2 | (3 << 4) | (DID << 16));
        self.put(slot(self.tail) + 8, IOVA);
        self.put(slot(self.tail + 1), 0x5 | (1 << 5) | (1 << 32));
        self.put(slot(self.tail + 1) + 8, STATUS);
        self.tail = (self.tail + 2) % QUEUE_SLOTS;
        self.put(STATUS, 0);
        let start = Instant::now();
        self.w(IQT_REG, self.tail << 4);
        let d = start.elapsed();
        assert_eq!(
            self.mem.read_obj::<u32>(GuestAddress(STATUS)).ok(),
            Some(1),
            "the wait completed"
        );
        d
    }

    /// One map+unmap pair; the two invalidations' time.
    fn pair(&mut self) -> Duration {
        let leaf = SLPT[3] + ((IOVA >> 12) & 0x1ff) * 8;
        self.put(leaf, TARGET | 3);
        let map = self.invalidate();
        self.put(leaf, 0);
        map + self.invalidate()
    }
}

/// The median of `rounds` rounds of `pairs` pairs, nanoseconds per invalidation.
fn measure(tracked: bool, rounds: usize, pairs: u32) -> f64 {
    let mut g = Guest::new(tracked);
    for _ in 0..1000 {
        g.pair();
    }
    let mut per: Vec<f64> = (0..rounds)
        .map(|_| {
            let t: Duration = (0..pairs).map(|_| g.pair()).sum();
            t.as_nanos() as f64 / f64::from(2 * pairs)
        })
        .collect();
    per.sort_by(f64::total_cmp);
    per[rounds / 2]
}

fn main() {
    // `inval_cost tracked|untracked PAIRS`: one mode alone, for an instruction profiler
    // (valgrind --tool=callgrind) to count what one invalidation executes.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, pairs] = args.as_slice() {
        let pairs: u32 = pairs.parse().expect("PAIRS: a number");
        let mut g = Guest::new(mode == "tracked");
        let t: Duration = (0..pairs).map(|_| g.pair()).sum();
        println!("{mode}: {pairs} pairs in {t:?}");
        return;
    }
    let rounds = 9;
    let pairs = 20_000;
    let untracked = measure(false, rounds, pairs);
    let tracked = measure(true, rounds, pairs);
    println!("queued invalidation (IOTLB PSI + wait), ns per IQT write, median of {rounds} rounds of {pairs} map+unmap pairs:");
    println!("  untracked device (emulated: caches dropped)      {untracked:8.0}");
    println!("  tracked device (VFIO: walk, diff, effects, ack)  {tracked:8.0}");
    println!(
        "  tracking's share                                 {:8.0}",
        tracked - untracked
    );
}
