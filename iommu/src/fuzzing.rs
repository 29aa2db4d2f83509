//! A structure-aware differential fuzzer for the remapping unit, shared by the seeded test
//! (`unit/tests_fuzz.rs`) and the cargo-fuzz target (`iommu/fuzz`, feature `fuzzing`).
//!
//! It drives a [`RemappingUnit`] only through its public API (register writes, DMA and
//! interrupt requests, a tracked caching-mode device) over a guest memory holding root,
//! context and second-level tables, IRTEs and an invalidation queue, and checks each answer
//! against an independent reference ([`oracle`]) and a model of what caches may legally still
//! hold ([`model`]):
//! * no panic, no call slower than a bound;
//! * every DMA translation equals the reference walk of the current tables, or a translation
//!   returned earlier that no invalidation has covered since;
//! * the map/unmap event stream applies cleanly to a model container and, after a global or
//!   covering invalidation, equals the reference walk of the tracked device's tables (in an
//!   operation where the unit hit one of its small drawn [`Limits`], is part of it, with a
//!   fault pending unless the context has FPD);
//! * every interrupt remapping equals the reference decode of an IRTE not invalidated since;
//! * queued invalidation processes exactly the descriptors the reference accepts.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::limits::Limits;
use crate::registers::*;
use crate::translation::Translation;
use crate::{Bdf, DmaOutcome, InterruptOutcome, InterruptSink, IommuConfig, Iova, RemappingUnit};

pub mod model;
mod ops;
pub mod oracle;

use model::{Container, Legal};
use oracle::{Caps, RefCtx, RefDesc};

/// Guest memory layout: root table, wait status page, context tables, queue, IRT, a pool of
/// second-level table pages; everything below `DATA` is a guest structure.
const MEM_SIZE: u64 = 16 << 20;
const ROOT: u64 = 0x1000;
const STATUS: u64 = 0x2000;
const CTX: u64 = 0x4000;
const QUEUE: u64 = 0x10_0000;
const IRT: u64 = 0x20_0000;
const POOL: u64 = 0x30_0000;
const POOL_PAGES: u64 = 64;
const DATA: u64 = 0x40_0000;
/// The devices requests come from; the third is tracked (a VFIO device in caching mode).
const DEVS: [Bdf; 4] = [
    Bdf::new(0, 3, 0),
    Bdf::new(0, 3, 1),
    Bdf::new(0, 4, 0),
    Bdf::new(1, 0, 0),
];
const TRACKED: Bdf = DEVS[2];
/// Entries the reference enumerates before giving up on a container comparison.
const ENUM_BUDGET: usize = 1 << 16;

/// Where choices come from: a seeded generator, or the bytes of a cargo-fuzz input.
pub enum Choices<'a> {
    Rng(u64),
    Bytes(&'a [u8]),
}

impl Choices<'_> {
    pub fn u64(&mut self) -> u64 {
        match self {
            Choices::Rng(s) => {
                // splitmix64
                *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = *s;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            }
            Choices::Bytes(b) => {
                let n = b.len().min(8);
                let mut v = [0u8; 8];
                v[..n].copy_from_slice(&b[..n]);
                *b = &b[n..];
                u64::from_le_bytes(v)
            }
        }
    }

    pub fn exhausted(&self) -> bool {
        matches!(self, Choices::Bytes(b) if b.is_empty())
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.u64() % n.max(1)
    }

    /// True with probability `pct`%. From fuzz bytes, zeros mean the common choice.
    pub fn chance(&mut self, pct: u64) -> bool {
        match self {
            Choices::Rng(_) => self.below(100) < pct,
            Choices::Bytes(_) => self.below(100) >= 100 - pct.min(100),
        }
    }

    /// True once in `n` draws (a rare event; never for zero bytes).
    pub fn one_in(&mut self, n: u64) -> bool {
        match self {
            Choices::Rng(_) => self.below(n) == 0,
            Choices::Bytes(_) => self.below(n) == n - 1,
        }
    }

    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// Why a run failed: the oracle's message and the last operations before it.
#[derive(Debug)]
pub struct Failure {
    pub msg: String,
    pub log: Vec<String>,
}

/// Counts for the run summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub ops: u64,
    pub checks: u64,
    /// DMA translated through superpages; page-selective invalidations of part of one.
    pub superpage_dmas: u64,
    pub partial_psis: u64,
    /// Operations in which the unit hit one of its limits (walk budget, range cap) and the
    /// container was only required to be part of the reference.
    pub limit_hits: u64,
}

struct NullSink;
impl InterruptSink for NullSink {
    fn send(&self, _address: u64, _data: u32) {}
}

/// One fuzzed unit, its guest memory and the model it is judged against.
pub struct Harness<'p> {
    unit: RemappingUnit,
    mem: GuestMemoryMmap,
    caps: Caps,
    legal: Legal,
    container: Container,
    /// The root table and IRT the unit latched at the last SRTP / SIRTP.
    rta: u64,
    irta: u64,
    next_page: u64,
    /// Superpages the unit has returned: page-selective invalidations aim inside them.
    superpages: Vec<(u64, u64)>,
    /// Addresses DMA went through: the unit caches translations under these.
    accessed: Vec<u64>,
    /// Pages the guest mapped (IOVA, size): devices DMA there.
    mapped: Vec<(u64, u64)>,
    /// Set when an operation wrote guest structures behind the model's back.
    tainted: bool,
    /// Invalidations an operation made: full resync (global), ranges resynced (domain, range).
    full_resync: bool,
    psi_done: Vec<(u16, u64, u64)>,
    /// The unit hit a limit during the operation ([`RemappingUnit::limit_hits`]): the
    /// tracked container may lack ranges the reference has (fail closed), nothing more.
    limited: bool,
    log: Vec<String>,
    slow: Duration,
    progress: &'p mut dyn FnMut(&str),
    pub stats: Stats,
}

impl<'p> Harness<'p> {
    /// A unit with a configuration drawn from `c`, its tables set up like a guest would.
    pub fn new(
        c: &mut Choices,
        slow: Duration,
        allow: oracle::Allow,
        progress: &'p mut dyn FnMut(&str),
    ) -> Self {
        let cfg = IommuConfig {
            aw_bits: if c.chance(70) { 48 } else { 39 },
            interrupt_remapping: c.chance(85),
            caching_mode: true,
            device_iotlb: c.chance(10),
            x2apic: c.chance(70),
        };
        // Small limits (crate::limits) keep every call fast in a debug build and make the
        // fail-closed paths common; the first choice is the one fuzz bytes of zeros make.
        let walk = c.pick(&[4096, 64, 1 << 15]);
        let limits = Limits {
            iotlb_entries: c.pick(&[64, 4, 1024]),
            tracked_ranges_per_device: c.pick(&[256, 8, 4096]),
            walk_entries_per_domain: walk,
            walk_entries_per_write: walk * c.pick(&[2, 1, 4]),
        };
        let unit = RemappingUnit::with_limits(cfg, Box::new(NullSink), limits);
        let caps = Caps {
            allow,
            ..Caps::from_regs(cfg.cap(), cfg.ecap())
        };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("test memory");
        let mut h = Harness {
            unit,
            mem,
            caps,
            legal: Legal::default(),
            container: Container::default(),
            rta: 0,
            irta: 0,
            next_page: 0,
            superpages: Vec::new(),
            accessed: Vec::new(),
            mapped: Vec::new(),
            tainted: false,
            full_resync: false,
            psi_done: Vec::new(),
            limited: false,
            log: vec![format!("config {cfg:?} {limits:?}")],
            slow,
            progress,
            stats: Stats::default(),
        };
        for d in DEVS {
            h.legal.contexts.insert(d, Vec::new());
        }
        h.legal.refresh(&h.mem, h.rta, h.irta, &h.caps);
        h
    }

    /// Runs up to `ops` operations (or until the input runs out).
    pub fn run(&mut self, c: &mut Choices, ops: u64) -> Result<(), Failure> {
        self.step(|h| h.setup(c)).map_err(|m| self.failure(m))?;
        for _ in 0..ops {
            if c.exhausted() {
                break;
            }
            self.step(|h| ops::random_op(h, c))
                .map_err(|m| self.failure(m))?;
        }
        Ok(())
    }

    fn failure(&self, msg: String) -> Failure {
        let from = self.log.len().saturating_sub(60);
        let mut log = self.log[from..].to_vec();
        log.push(format!("{:#?}", self.unit.state()));
        Failure { msg, log }
    }

    /// One operation, then the checks that hold after any operation.
    fn step(&mut self, op: impl FnOnce(&mut Self) -> Result<(), String>) -> Result<(), String> {
        self.tainted = false;
        self.full_resync = false;
        self.psi_done.clear();
        self.stats.ops += 1;
        let hits = self.unit.limit_hits();
        op(self)?;
        self.drain_map_events()?;
        self.limited = self.unit.limit_hits() != hits;
        self.stats.limit_hits += u64::from(self.limited);
        self.legal
            .refresh(&self.mem, self.rta, self.irta, &self.caps);
        if !self.tainted {
            self.check_container()?;
        }
        let _ = self.unit.take_interrupt_entries_changed();
        Ok(())
    }

    fn note(&mut self, s: String) {
        (self.progress)(&s);
        if self.log.len() >= 4096 {
            self.log.drain(..2048);
        }
        self.log.push(s);
    }

    fn timed<T>(&mut self, what: &str, f: impl FnOnce(&mut Self) -> T) -> Result<T, String> {
        let t = Instant::now();
        let r = f(self);
        let took = t.elapsed();
        if took > self.slow {
            return Err(format!(
                "slow: {what} took {took:?} (bound {:?})",
                self.slow
            ));
        }
        Ok(r)
    }

    /// The one place map/unmap events reach the model container (a VMM's VFIO container).
    /// Carries out the unit's host effects as a VMM would (map events into the model
    /// container) and acknowledges them, until none are left: the acknowledgement may let
    /// the queue run on to its next wait, which may produce more.
    fn drain_map_events(&mut self) -> Result<(), String> {
        // Each round completes at least one held-back wait or command; the queue has at most
        // 2^15 descriptors, so this ends (the bound only guards against a unit that doesn't).
        for _ in 0..=(1 << 16) {
            let effects = self.unit.take_host_effects();
            if effects.is_empty() {
                return Ok(());
            }
            for (dev, e) in effects.map_events {
                if dev != TRACKED {
                    return Err(format!("event for untracked device {dev}: {e:x?}"));
                }
                self.container
                    .apply(&e)
                    .map_err(|m| format!("caching-mode event stream: {m}"))?;
            }
            self.unit.host_effects_applied(&self.mem, &[]);
        }
        Err("host effects never drained".into())
    }

    fn rd(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.unit.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    fn gsts(&self) -> u32 {
        (self.rd(GCMD_REG) >> 32) as u32
    }

    fn w64(&self, addr: u64, v: u64) {
        let _ = self.mem.write_obj(v, GuestAddress(addr));
    }

    fn r64(&self, addr: u64) -> u64 {
        self.mem.read_obj(GuestAddress(addr)).unwrap_or(0)
    }

    /// A fresh second-level table page, or an existing one once the pool is used up.
    fn page(&mut self, c: &mut Choices) -> u64 {
        if self.next_page < POOL_PAGES && c.chance(90) {
            self.next_page += 1;
            let p = POOL + (self.next_page - 1) * 0x1000;
            let _ = self.mem.write_slice(&[0u8; 0x1000], GuestAddress(p));
            p
        } else {
            POOL + c.below(POOL_PAGES) * 0x1000
        }
    }

    /// A register write of 4 or 8 bytes, with the effects hardware would have on the legal
    /// caches (SRTP, SIRTP, register-based invalidations, queue processing).
    fn reg_write(&mut self, off: u64, v: u64, len: usize) -> Result<(), String> {
        self.note(format!("write {off:#x} = {v:#x} ({len} bytes)"));
        let before = |r: u64| self.rd(r);
        let (ccmd, iotlb, iva) = (before(CCMD_REG), before(IOTLB_REG), before(IVA_REG));
        let plan = (off == IQT_REG).then(|| self.queue_plan(v));
        let bytes = v.to_le_bytes();
        self.timed("register write", |h| {
            h.unit.write(&h.mem, off, &bytes[..len])
        })?;
        self.drain_map_events()?;
        let merge = |old: u64| {
            if len == 8 {
                v
            } else {
                (old & 0xffff_ffff) | (v << 32)
            }
        };
        let upper = (len == 8 && off.is_multiple_of(8)) || (len == 4 && off % 8 == 4);
        match off & !7 {
            _ if off == GCMD_REG => {
                if v as u32 & GCMD_SRTP != 0 {
                    self.rta = self.rd(RTADDR_REG);
                }
                if v as u32 & GCMD_SIRTP != 0 && self.caps.ir {
                    self.irta = self.rd(IRTA_REG);
                }
            }
            CCMD_REG if upper && merge(ccmd) & CCMD_ICC != 0 => {
                let m = merge(ccmd);
                let g = (m >> CCMD_CIRG_SHIFT) & 3;
                let (did, sid, fm) = (m as u16, (m >> 16) as u16, (m >> 32) & 3);
                if g != 0 {
                    self.invalidate(&RefDesc::Context { g, did, sid, fm });
                }
            }
            IOTLB_REG if upper && merge(iotlb) & IOTLB_IVT != 0 => {
                let m = merge(iotlb);
                let g = (m >> IOTLB_IIRG_SHIFT) & 3;
                let did = (m >> IOTLB_DID_SHIFT) as u16;
                if g != 0 {
                    let (addr, am) = (iva & IVA_ADDR_MASK, iva & IVA_AM_MASK);
                    self.invalidate(&RefDesc::Iotlb { g, did, addr, am });
                }
            }
            _ => {}
        }
        if let Some(plan) = plan {
            self.check_queue(plan)?;
        }
        Ok(())
    }

    /// Applies an invalidation to the legal caches and notes what the tracker must now show.
    fn invalidate(&mut self, d: &RefDesc) {
        // Refresh first: the invalidation covers every table change made before it.
        self.legal
            .refresh(&self.mem, self.rta, self.irta, &self.caps);
        self.legal.invalidate(d);
        match *d {
            RefDesc::Context { g: 1, .. } | RefDesc::Iotlb { g: 1, .. } => self.full_resync = true,
            RefDesc::Iotlb {
                g: 3,
                did,
                addr,
                am,
            } => {
                let span = 1u64 << (12 + am.min(51));
                let base = addr & !(span - 1);
                if self
                    .superpages
                    .iter()
                    .any(|(b, s)| base > *b && base < b + s || base == *b && span < *s)
                {
                    self.stats.partial_psis += 1;
                }
                self.psi_done.push((did, base, base.saturating_add(span)));
            }
            _ => {}
        }
    }

    /// A DMA access and its check.
    fn dma(&mut self, dev: Bdf, iova: u64, write: bool) -> Result<(), String> {
        self.note(format!("dma {dev} {iova:#x} write={write}"));
        let out = self.timed("translate", |h| {
            h.unit.translate(&h.mem, dev, Iova(iova), write)
        })?;
        let got = match out {
            DmaOutcome::Translated(t) => Some(t),
            DmaOutcome::Blocked(_) => None,
        };
        self.stats.checks += 1;
        let te = self.gsts() & GSTS_TES != 0;
        let ok = if te {
            self.legal
                .dma_ok(&self.mem, &self.caps, dev, iova, write, got)
        } else {
            got == Some(oracle::identity(iova))
        };
        if !ok {
            let fresh: Vec<Option<Translation>> = self.legal.contexts[&dev]
                .iter()
                .map(|c| oracle::dma(&self.mem, c, iova, write, &self.caps))
                .collect();
            return Err(format!(
                "DMA {dev} {iova:#x} write={write} (translation {}): unit {out:x?}, reference \
                 {fresh:x?} through contexts {:x?}",
                if te { "on" } else { "off" },
                self.legal.contexts[&dev]
            ));
        }
        if let (true, Some(t)) = (te, got) {
            self.legal.observed(dev, t);
            if self.accessed.len() < 64 && !self.accessed.contains(&iova) {
                self.accessed.push(iova);
            }
            if t.page_size > 0x1000 {
                self.stats.superpage_dmas += 1;
            }
            if t.page_size > 0x1000 && !self.superpages.contains(&(t.iova_base, t.page_size)) {
                self.superpages.push((t.iova_base, t.page_size));
            }
        }
        Ok(())
    }

    /// An interrupt request and its check.
    fn interrupt(&mut self, source: Bdf, address: u64, data: u32) -> Result<(), String> {
        self.note(format!("interrupt {source} {address:#x}/{data:#x}"));
        let req = crate::InterruptRequest {
            address,
            data,
            source,
        };
        let expect = self.interrupt_expectation(&req);
        let out = self.timed("remap_interrupt", |h| h.unit.remap_interrupt(&h.mem, req))?;
        self.stats.checks += 1;
        let got = match out {
            InterruptOutcome::Deliver { address, data } => Some((address, data)),
            InterruptOutcome::Blocked(_) => None,
        };
        if !expect.contains(&got) {
            return Err(format!(
                "interrupt {source} {address:#x}/{data:#x}: unit {out:x?}, reference {expect:x?}"
            ));
        }
        Ok(())
    }

    /// Every legal outcome of `req` (None: blocked).
    fn interrupt_expectation(&mut self, req: &crate::InterruptRequest) -> Vec<Option<(u64, u32)>> {
        let gsts = self.gsts();
        if gsts & GSTS_IRES == 0 {
            return vec![Some((req.address, req.data))];
        }
        if req.address & (1 << 4) == 0 {
            let allowed = gsts & GSTS_CFIS != 0 && self.irta & IRTA_EIME == 0;
            return vec![allowed.then_some((req.address, req.data))];
        }
        if req.address & 0xfff0_0000 != 0xfee0_0000 || req.address >> 32 != 0 {
            return vec![None];
        }
        // Handle 15 in address bit 2, 14:0 in bits 19:5; plus the subhandle with SHV (5.1.2.2).
        let handle = ((req.address >> 5) & 0x7fff) as u32 | (((req.address >> 2) & 1) as u32) << 15;
        let index = if req.address & (1 << 3) != 0 {
            let i = handle + (req.data & 0xffff);
            if self.caps.allow.ir_index_wrap {
                i & 0xffff
            } else {
                i
            }
        } else {
            handle
        };
        if u64::from(index) >= 2u64 << (self.irta & IRTA_S_MASK) {
            return vec![None];
        }
        let cur = model::current_irte(&self.mem, self.irta, index);
        let legal = self.legal.irtes.entry(index).or_insert_with(|| vec![cur]);
        legal
            .iter()
            .map(|e| e.filter(|e| e.permits(req.source)).map(|e| e.message()))
            .collect()
    }

    /// After an invalidation that resynced the tracked device, its container must equal the
    /// reference walk through a context the unit may legally be using; where the unit hit a
    /// limit, be part of it, with a fault recorded (07h, 7.1.3) unless FPD is set.
    fn check_container(&mut self) -> Result<(), String> {
        let te = self.gsts() & GSTS_TES != 0;
        let ctxs = self.legal.contexts[&TRACKED].clone();
        let fpd = ctxs
            .iter()
            .any(|c| matches!(c, RefCtx::Usable { fpd: true, .. }));
        let fsts = {
            let mut b = [0u8; 4];
            self.unit.read(FSTS_REG, &mut b);
            u32::from_le_bytes(b)
        };
        if self.limited && !fpd && fsts & (FSTS_PPF | FSTS_PFO) == 0 {
            return Err(format!(
                "the unit hit a limit without recording a fault (FSTS {fsts:#x})"
            ));
        }
        let actual = (self.container.pass_through, self.container.coalesced());
        if self.full_resync {
            let mut expected = Vec::new();
            for c in if te { ctxs.clone() } else { Vec::new() } {
                expected.push(match c {
                    RefCtx::Blocked => (false, Vec::new()),
                    RefCtx::Usable {
                        pass_through: true, ..
                    } => (true, Vec::new()),
                    RefCtx::Usable {
                        levels, slptptr, ..
                    } => {
                        let mut budget = ENUM_BUDGET;
                        let space = (0, u64::MAX);
                        match oracle::leaves(
                            &self.mem,
                            levels,
                            slptptr,
                            space,
                            &self.caps,
                            &mut budget,
                        ) {
                            Some(l) => (false, l),
                            None => return Ok(()),
                        }
                    }
                });
            }
            if !te {
                expected.push((true, Vec::new()));
            }
            self.stats.checks += 1;
            let ok = if self.limited {
                expected
                    .iter()
                    .any(|(pt, want)| *pt == actual.0 && contained(&actual.1, want))
            } else {
                expected.contains(&actual)
            };
            if !ok {
                return Err(format!(
                    "tracked container after a global invalidation: {actual:x?}, reference \
                     {expected:x?} (contexts {ctxs:x?})"
                ));
            }
        }
        let psis = std::mem::take(&mut self.psi_done);
        for (did, start, end) in psis {
            let [RefCtx::Usable {
                did: d,
                pass_through: false,
                levels,
                slptptr,
                ..
            }] = ctxs[..]
            else {
                continue;
            };
            if !te || d != did {
                continue;
            }
            let mut budget = ENUM_BUDGET;
            let range = (start, end);
            let Some(l) =
                oracle::leaves(&self.mem, levels, slptptr, range, &self.caps, &mut budget)
            else {
                continue;
            };
            let (want, got) = (
                oracle::clip(&l, start, end),
                oracle::clip(&actual.1, start, end),
            );
            self.stats.checks += 1;
            let ok = if self.limited {
                contained(&got, &want)
            } else {
                want == got
            };
            if !ok || actual.0 {
                return Err(format!(
                    "tracked container in [{start:#x}, {end:#x}) after a page-selective \
                     invalidation of domain {did}: {got:x?} (pass-through {}), reference {want:x?}",
                    actual.0
                ));
            }
        }
        Ok(())
    }
}

/// Whether every range of `part` (coalesced) lies within `whole` (coalesced) with the same
/// addresses and permissions: what a container that hit a limit may hold.
fn contained(part: &[crate::Mapping], whole: &[crate::Mapping]) -> bool {
    part.iter()
        .all(|m| oracle::coalesce(oracle::clip(whole, m.iova, m.iova + m.size)) == [*m])
}

/// Runs one seed for `ops` operations (the seeded test's entry point).
pub fn run_seed(
    seed: u64,
    ops: u64,
    slow: Duration,
    allow: oracle::Allow,
    progress: &mut dyn FnMut(&str),
) -> Result<Stats, Failure> {
    let mut c = Choices::Rng(seed);
    let mut h = Harness::new(&mut c, slow, allow, progress);
    h.run(&mut c, ops)?;
    Ok(h.stats)
}

/// Runs the operations `data` encodes and panics on an oracle failure (the cargo-fuzz entry
/// point).
///
/// `MINIVMM_FUZZ_ALLOW` (as for the seeded test) looks past known findings.
pub fn run_bytes(data: &[u8]) {
    let mut c = Choices::Bytes(data);
    let mut progress = |_: &str| {};
    let mut h = Harness::new(
        &mut c,
        Duration::from_secs(2),
        oracle::Allow::parse(&std::env::var("MINIVMM_FUZZ_ALLOW").unwrap_or_default()),
        &mut progress,
    );
    if let Err(f) = h.run(&mut c, 2000) {
        panic!("{}\nlast operations:\n{}", f.msg, f.log.join("\n"));
    }
}
