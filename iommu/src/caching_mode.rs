//! Caching mode (VT-d spec 6.1, CAP.CM): the guest invalidates after every change to its
//! tables, not-present to present included, so a VMM can shadow them. This module turns
//! invalidations into map/unmap notifications for the devices a consumer tracks: it walks the
//! guest's second-level tables over the invalidated range, coalesces contiguous leaves into
//! ranges, and diffs them against what it last reported for that device.

use std::collections::{BTreeMap, HashMap};

use log::warn;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::translation::{sl_entry_kind, ContextEntry, DmaFault, TranslationType, WalkConfig};
use crate::Bdf;

/// Second-level entry bits (9.8): R (0), W (1); address bits 47:12.
const SL_R: u64 = 1 << 0;
const SL_W: u64 = 1 << 1;
const ADDR_MASK: u64 = ((1 << 48) - 1) & !0xfff;
/// At most this many table entries are read per resync: a guest's tables can be made to
/// alias themselves, and a walk must stay bounded. 4 Mi entries covers 16 GiB in 4 KiB pages.
const WALK_BUDGET: usize = 4 << 20;

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
}

/// What a device's DMA currently reaches, as last reported.
#[derive(Debug, Default)]
struct DeviceView {
    pass_through: bool,
    domain: Option<u16>,
    ranges: BTreeMap<u64, Mapping>,
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
                return;
            }
            self.budget -= 1;
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

/// The coalesced mappings of `ctx`'s tables that overlap `[start, end)`. Leaves are reported
/// whole, so the result may extend past the range.
pub fn walk_range<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &ContextEntry,
    start: u64,
    end: u64,
    cfg: &WalkConfig,
) -> Vec<Mapping> {
    let limit = 1u64 << ctx.address_width();
    let end = end.min(limit);
    if start >= end {
        return Vec::new();
    }
    let mut w = Walker {
        mem,
        cfg,
        budget: WALK_BUDGET,
        out: Vec::new(),
    };
    w.walk(ctx.slptptr, ctx.levels.into(), 0, start, end, (true, true));
    if w.budget == 0 {
        warn!("vt-d: page walk budget exhausted; mappings past the budget are ignored");
    }
    w.out
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

    /// The ranges currently reported for `device`.
    pub fn mappings(&self, device: Bdf) -> Vec<Mapping> {
        self.devices
            .get(&device)
            .map(|v| v.ranges.values().copied().collect())
            .unwrap_or_default()
    }

    /// Brings `device`'s view of `[start, end)` (the whole space for `None`) up to date with
    /// its tables and returns the events that describe the change.
    pub fn resync<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        device: Bdf,
        state: DeviceState,
        range: Option<(u64, u64)>,
        cfg: &WalkConfig,
    ) -> Vec<MapEvent> {
        let Some(view) = self.devices.get_mut(&device) else {
            return Vec::new();
        };
        let mut events = Vec::new();
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
        // Grow the range until it cuts no reported range and no leaf: at most a few rounds,
        // since each round only widens it to existing boundaries.
        for _ in 0..4 {
            new = match &ctx {
                Some(c) => walk_range(mem, c, start, end, cfg),
                None => Vec::new(),
            };
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
        let old: Vec<Mapping> = view
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, m)| m.end() > start)
            .map(|(_, m)| *m)
            .collect();
        // A reported range the tables still map identically stays as it is, even where the
        // walk now coalesces it with neighbours: remapping it would open a window in which
        // the device's DMA to it faults. What the kept ranges do not cover is new.
        let (kept, gone): (Vec<Mapping>, Vec<Mapping>) = old
            .iter()
            .rev()
            .partition(|o| new.iter().any(|n| n.covers(o)));
        for m in &gone {
            view.ranges.remove(&m.iova);
            events.push(MapEvent::Unmap {
                iova: m.iova,
                size: m.size,
            });
        }
        if pass_through != view.pass_through {
            view.pass_through = pass_through;
            events.push(MapEvent::PassThrough(pass_through));
        }
        for n in new {
            for m in n.minus(&kept) {
                view.ranges.insert(m.iova, m);
                events.push(MapEvent::Map(m));
            }
        }
        events
    }
}

#[cfg(test)]
mod tests;
