//! Caching mode (VT-d spec 6.1, CAP.CM): the guest invalidates after every change to its
//! tables, not-present to present included, so a VMM can shadow them. This module turns
//! invalidations into map/unmap notifications for the devices a consumer tracks: it walks the
//! guest's second-level tables over the invalidated range, coalesces contiguous leaves into
//! ranges, and diffs them against what it last reported for that device.

use std::collections::{BTreeMap, HashMap};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::limits::WALK_ENTRIES_PER_DOMAIN;
use crate::translation::{sl_entry_kind, ContextEntry, DmaFault, TranslationType, WalkConfig};
use crate::Bdf;

mod diff;

/// Second-level entry bits (9.8): R (0), W (1); address bits 47:12.
const SL_R: u64 = 1 << 0;
const SL_W: u64 = 1 << 1;
const ADDR_MASK: u64 = ((1 << 48) - 1) & !0xfff;

/// One IOVA range mapped to guest-physical memory with uniform permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub iova: u64,
    pub gpa: u64,
    pub size: u64,
    pub read: bool,
    pub write: bool,
}

impl Mapping {
    fn end(&self) -> u64 {
        self.iova + self.size
    }

    /// Whether `o` lies within this mapping and translates exactly as it does.
    fn covers(&self, o: &Mapping) -> bool {
        o.iova >= self.iova
            && o.end() <= self.end()
            && o.gpa.wrapping_sub(o.iova) == self.gpa.wrapping_sub(self.iova)
            && (o.read, o.write) == (self.read, self.write)
    }

    /// The parts of this mapping outside the `holes` (sorted by IOVA, non-overlapping).
    fn minus(&self, holes: &[Mapping]) -> Vec<Mapping> {
        let mut out = Vec::new();
        let mut at = self.iova;
        let piece = |from: u64, to: u64| Mapping {
            iova: from,
            gpa: self.gpa + (from - self.iova),
            size: to - from,
            ..*self
        };
        for h in holes
            .iter()
            .filter(|h| h.iova < self.end() && h.end() > self.iova)
        {
            if h.iova > at {
                out.push(piece(at, h.iova));
            }
            at = at.max(h.end());
        }
        if at < self.end() {
            out.push(piece(at, self.end()));
        }
        out
    }
}

/// A change in what a tracked device's DMA reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapEvent {
    /// The range is now mapped (it was not mapped before this event).
    Map(Mapping),
    /// The range, exactly as reported by an earlier `Map`, is no longer mapped.
    Unmap { iova: u64, size: u64 },
    /// The device's DMA became untranslated (true: IOVA = GPA for all of memory, with
    /// translation off or a pass-through context) or translated again (false). Range events
    /// only describe the translated state.
    PassThrough(bool),
    /// The device reached its cap on tracked ranges ([`crate::limits`]): ranges past it are
    /// not mapped, so its DMA there is refused. Sent once per tracked device.
    RangeLimit { limit: usize },
}

/// What a device's DMA currently reaches, as last reported.
#[derive(Debug, Default)]
struct DeviceView {
    pass_through: bool,
    domain: Option<u16>,
    ranges: BTreeMap<u64, Mapping>,
    /// The most ranges tracked at once.
    peak: usize,
    /// Ranges left unmapped by the cap, over the device's life.
    refused: u64,
    /// [`MapEvent::RangeLimit`] was sent.
    limit_reported: bool,
}

/// How much a resync may do.
#[derive(Clone, Copy, Debug)]
pub struct ResyncBounds {
    /// Table entries the walk may read.
    pub walk_entries: usize,
    /// Ranges the device may have tracked.
    pub max_ranges: usize,
}

/// What one resync did.
#[derive(Debug, Default)]
pub struct ResyncOutcome {
    pub events: Vec<MapEvent>,
    /// Table entries read.
    pub walked: usize,
    /// The walk ran out of budget at this IOVA: the tracked ranges it could not re-verify
    /// were dropped (reported as unmapped).
    pub unverified: Option<u64>,
    /// The cap on tracked ranges left this IOVA (and maybe more) unmapped.
    pub refused: Option<u64>,
    /// Steps of the diff, for tests that bound the work.
    pub diff_steps: u64,
}

/// Tracked ranges of a device: now, at most, and refused by the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeStats {
    pub current: usize,
    pub peak: usize,
    pub refused: u64,
}

/// The reported state of every tracked device.
#[derive(Debug, Default)]
pub struct MapTracker {
    devices: HashMap<Bdf, DeviceView>,
}

/// How the unit currently treats a device's DMA.
pub enum DeviceState {
    /// Translation is off or the context says pass-through.
    PassThrough,
    /// The device's context is not usable: nothing is mapped.
    Blocked,
    Translated(ContextEntry),
}

impl DeviceState {
    /// From a context lookup with translation on.
    pub fn from_context(ctx: Result<ContextEntry, DmaFault>) -> Self {
        match ctx {
            Ok(c) if c.tt == TranslationType::PassThrough => DeviceState::PassThrough,
            Ok(c) => DeviceState::Translated(c),
            Err(_) => DeviceState::Blocked,
        }
    }
}

fn push_coalesced(out: &mut Vec<Mapping>, m: Mapping) {
    if let Some(last) = out.last_mut() {
        if last.end() == m.iova
            && last.gpa + last.size == m.gpa
            && (last.read, last.write) == (m.read, m.write)
        {
            last.size += m.size;
            return;
        }
    }
    out.push(m);
}

struct Walker<'a, M> {
    mem: &'a M,
    cfg: &'a WalkConfig,
    budget: usize,
    walked: usize,
    /// The first IOVA the budget left unwalked.
    exhausted_at: Option<u64>,
    out: Vec<Mapping>,
}

impl<M: GuestMemoryBackend> Walker<'_, M> {
    /// Visits the present entries of `table` (at `level`, mapping IOVAs from `base`) that
    /// overlap `[start, end)`. Entries that would fault on access count as unmapped.
    fn walk(&mut self, table: u64, level: u64, base: u64, start: u64, end: u64, rw: (bool, bool)) {
        let shift = 12 + 9 * (level - 1);
        let first = (start.max(base) - base) >> shift;
        let last = ((end - 1).min(base + (512 << shift) - 1) - base) >> shift;
        for index in first..=last {
            if self.budget == 0 {
                self.exhausted_at
                    .get_or_insert((base + (index << shift)).max(start));
                return;
            }
            self.budget -= 1;
            self.walked += 1;
            let Ok(e) = self.mem.read_obj::<u64>(GuestAddress(table + index * 8)) else {
                return;
            };
            if e & (SL_R | SL_W) == 0 {
                continue;
            }
            let Some(superpage) = sl_entry_kind(e, level, self.cfg) else {
                continue;
            };
            let iova = base + (index << shift);
            let (r, w) = (rw.0 && e & SL_R != 0, rw.1 && e & SL_W != 0);
            if level == 1 || superpage {
                let size = 1u64 << shift;
                if (e & ADDR_MASK) & (size - 1) != 0 || !(r || w) {
                    continue;
                }
                push_coalesced(
                    &mut self.out,
                    Mapping {
                        iova,
                        gpa: e & ADDR_MASK,
                        size,
                        read: r,
                        write: w,
                    },
                );
            } else {
                self.walk(e & ADDR_MASK, level - 1, iova, start, end, (r, w));
            }
        }
    }
}

/// The result of a bounded walk.
#[derive(Debug, Default)]
pub struct Walk {
    /// Coalesced mappings, sorted by IOVA; complete up to `exhausted_at`.
    pub mappings: Vec<Mapping>,
    /// Table entries read.
    pub walked: usize,
    /// The budget ran out before this IOVA was walked.
    pub exhausted_at: Option<u64>,
}

/// The coalesced mappings of `ctx`'s tables that overlap `[start, end)`, reading at most
/// `budget` table entries (a guest's tables can be made to alias themselves). Leaves are
/// reported whole, so the result may extend past the range.
pub fn walk_bounded<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &ContextEntry,
    (start, end): (u64, u64),
    cfg: &WalkConfig,
    budget: usize,
) -> Walk {
    let limit = 1u64 << ctx.address_width();
    let end = end.min(limit);
    if start >= end {
        return Walk::default();
    }
    let mut w = Walker {
        mem,
        cfg,
        budget,
        walked: 0,
        exhausted_at: None,
        out: Vec::new(),
    };
    w.walk(ctx.slptptr, ctx.levels.into(), 0, start, end, (true, true));
    Walk {
        mappings: w.out,
        walked: w.walked,
        exhausted_at: w.exhausted_at,
    }
}

/// [`walk_bounded`] with the per-domain budget of [`crate::limits`].
pub fn walk_range<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &ContextEntry,
    start: u64,
    end: u64,
    cfg: &WalkConfig,
) -> Vec<Mapping> {
    walk_bounded(mem, ctx, (start, end), cfg, WALK_ENTRIES_PER_DOMAIN).mappings
}

impl MapTracker {
    /// Starts tracking `device` (nothing reported yet).
    pub fn add(&mut self, device: Bdf) {
        self.devices.entry(device).or_default();
    }

    pub fn remove(&mut self, device: Bdf) {
        self.devices.remove(&device);
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Tracked devices, with the domain each was last seen in.
    pub fn devices(&self) -> Vec<(Bdf, Option<u16>)> {
        self.devices.iter().map(|(b, v)| (*b, v.domain)).collect()
    }

    /// Drops `m` from what is reported for `device` (the consumer could not map it), so the
    /// next resync over it reports it again. Returns whether it was held.
    pub fn forget(&mut self, device: Bdf, m: &Mapping) -> bool {
        let Some(view) = self.devices.get_mut(&device) else {
            return false;
        };
        if view.ranges.get(&m.iova) != Some(m) {
            return false;
        }
        view.ranges.remove(&m.iova);
        true
    }

    /// How many ranges `device` has tracked: now, at most, and refused by the cap.
    pub fn range_stats(&self, device: Bdf) -> Option<RangeStats> {
        self.devices.get(&device).map(|v| RangeStats {
            current: v.ranges.len(),
            peak: v.peak,
            refused: v.refused,
        })
    }

    /// The ranges currently reported for `device`.
    pub fn mappings(&self, device: Bdf) -> Vec<Mapping> {
        self.devices
            .get(&device)
            .map(|v| v.ranges.values().copied().collect())
            .unwrap_or_default()
    }

    /// Brings `device`'s view of `[start, end)` (the whole space for `None`) up to date with
    /// its tables and returns the events that describe the change. Within `bounds`: past
    /// the walk budget, ranges that could not be re-verified are dropped (fail closed);
    /// past the range cap, new ranges are not mapped.
    pub fn resync<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        device: Bdf,
        state: DeviceState,
        range: Option<(u64, u64)>,
        cfg: &WalkConfig,
        bounds: ResyncBounds,
    ) -> ResyncOutcome {
        let mut out = ResyncOutcome::default();
        let Some(view) = self.devices.get_mut(&device) else {
            return out;
        };
        let pass_through = matches!(state, DeviceState::PassThrough);
        let ctx = match state {
            DeviceState::Translated(c) => Some(c),
            _ => None,
        };
        let domain = ctx.map(|c| c.did);
        // A new domain or mode: everything is re-read.
        let range = if domain != view.domain || pass_through != view.pass_through {
            None
        } else {
            range
        };
        view.domain = domain;
        let (mut start, mut end) = range.unwrap_or((0, u64::MAX));
        let mut new = Vec::new();
        let mut budget = bounds.walk_entries;
        // Grow the range until it cuts no reported range and no leaf: at most a few rounds,
        // since each round only widens it to existing boundaries.
        for _ in 0..4 {
            let walk = match &ctx {
                Some(c) => walk_bounded(mem, c, (start, end), cfg, budget),
                None => Walk::default(),
            };
            budget -= walk.walked;
            out.walked += walk.walked;
            out.unverified = walk.exhausted_at;
            new = walk.mappings;
            let (mut s, mut e) = (start, end);
            for m in view
                .ranges
                .range(..end)
                .rev()
                .take_while(|(_, m)| m.end() > start)
                .map(|(_, m)| m)
                .chain(new.iter())
            {
                s = s.min(m.iova);
                e = e.max(m.end());
            }
            if (s, e) == (start, end) {
                break;
            }
            (start, end) = (s, e);
        }
        let mut old: Vec<Mapping> = view
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, m)| m.end() > start)
            .map(|(_, m)| *m)
            .collect();
        old.reverse();
        // What the walk did not reach counts as unmapped: the diff drops it.
        let d = diff::diff(&old, &new);
        out.diff_steps = d.steps;
        for m in &d.gone {
            view.ranges.remove(&m.iova);
            out.events.push(MapEvent::Unmap {
                iova: m.iova,
                size: m.size,
            });
        }
        if pass_through != view.pass_through {
            view.pass_through = pass_through;
            out.events.push(MapEvent::PassThrough(pass_through));
        }
        for m in d.added {
            if view.ranges.len() >= bounds.max_ranges {
                out.refused.get_or_insert(m.iova);
                view.refused += 1;
                continue;
            }
            view.ranges.insert(m.iova, m);
            out.events.push(MapEvent::Map(m));
        }
        if out.refused.is_some() && !view.limit_reported {
            view.limit_reported = true;
            out.events.push(MapEvent::RangeLimit {
                limit: bounds.max_ranges,
            });
        }
        view.peak = view.peak.max(view.ranges.len());
        out
    }
}

#[cfg(test)]
mod tests;
