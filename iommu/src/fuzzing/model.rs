//! What the fuzzer allows the unit to answer: the reference result on the current tables, or
//! a result cached from an earlier state the guest has not invalidated yet (VT-d 6.1, 6.5).
//! Caches are modelled as the set of everything the unit may legally still hold.

use std::collections::BTreeMap;

use vm_memory::GuestMemoryMmap;

use super::oracle::{self, Caps, RefCtx, RefDesc, RefIrte};
use crate::caching_mode::MapEvent;
use crate::translation::Translation;
use crate::{Bdf, Mapping};

/// IRTA fields (11.4.12): EIME (11), S (3:0).
const IRTA_EIME: u64 = 1 << 11;

/// The legal cache contents.
#[derive(Default)]
pub struct Legal {
    /// Per device: every context entry read since the last invalidation covering it; the
    /// last one is the current one.
    pub contexts: BTreeMap<Bdf, Vec<RefCtx>>,
    /// Translations the unit returned, tagged with the domains they may be cached under.
    pub iotlb: Vec<(u16, Translation)>,
    /// Per interrupt index: IRTE decodes since the last invalidation covering it.
    pub irtes: BTreeMap<u32, Vec<Option<RefIrte>>>,
}

fn push_new<T: PartialEq + Copy>(v: &mut Vec<T>, x: T) {
    if v.last() != Some(&x) {
        v.retain(|y| *y != x);
        v.push(x);
    }
}

/// The IRTE at `index` of the table `irta` describes, as the reference reads it.
pub fn current_irte(mem: &GuestMemoryMmap, irta: u64, index: u32) -> Option<RefIrte> {
    let entries = 2u64 << (irta & 0xf);
    if u64::from(index) >= entries {
        return None;
    }
    let at = (irta & !0xfff).checked_add(16 * u64::from(index))?;
    let lo = oracle::read_u64(mem, at)?;
    let hi = oracle::read_u64(mem, at.checked_add(8)?)?;
    oracle::irte(lo, hi, irta & IRTA_EIME != 0)
}

impl Legal {
    /// Adds the current state of every watched structure (after guest memory or a table
    /// pointer changed).
    pub fn refresh(&mut self, mem: &GuestMemoryMmap, rta: u64, irta: u64, caps: &Caps) {
        for (bdf, v) in self.contexts.iter_mut() {
            push_new(v, oracle::context(mem, rta, *bdf, caps));
        }
        for (index, v) in self.irtes.iter_mut() {
            push_new(v, current_irte(mem, irta, *index));
        }
    }

    /// Domains `device`'s DMA may be tagged with.
    pub fn domains(&self, device: Bdf) -> Vec<u16> {
        let mut d: Vec<u16> = self.contexts[&device]
            .iter()
            .filter_map(|c| match c {
                RefCtx::Usable { did, .. } => Some(*did),
                RefCtx::Blocked => None,
            })
            .collect();
        d.sort_unstable();
        d.dedup();
        d
    }

    /// Records a translation the unit returned to `device`.
    pub fn observed(&mut self, device: Bdf, t: Translation) {
        for did in self.domains(device) {
            if !self.iotlb.contains(&(did, t)) {
                self.iotlb.push((did, t));
            }
        }
    }

    /// Applies an invalidation's effect on the legal caches.
    pub fn invalidate(&mut self, d: &RefDesc) {
        match *d {
            RefDesc::Context { g, did, sid, fm } => {
                let ignore = [0u16, 0b100, 0b110, 0b111][fm as usize];
                for (bdf, v) in self.contexts.iter_mut() {
                    let cur = *v.last().expect("refreshed");
                    match g {
                        2 => v.retain(|c| !matches!(c, RefCtx::Usable { did: x, .. } if *x == did)),
                        3 if bdf.raw() | ignore != sid | ignore => continue,
                        _ => v.clear(),
                    }
                    push_new(v, cur);
                }
            }
            RefDesc::Iotlb { g, did, addr, am } => match g {
                2 => self.iotlb.retain(|(d, _)| *d != did),
                3 => {
                    let span = 1u128 << (12 + am.min(51));
                    let base = u128::from(addr) & !(span - 1);
                    self.iotlb.retain(|(d, t)| {
                        let (s, e) = (
                            u128::from(t.iova_base),
                            u128::from(t.iova_base) + u128::from(t.page_size),
                        );
                        *d != did || e <= base || s >= base + span
                    });
                }
                _ => self.iotlb.clear(),
            },
            RefDesc::Iec { index } => {
                for (i, v) in self.irtes.iter_mut() {
                    if let Some((idx, im)) = index {
                        let span = 1u32 << im.min(16);
                        if *i & !(span - 1) != idx & !(span - 1) {
                            continue;
                        }
                    }
                    let cur = *v.last().expect("refreshed");
                    v.clear();
                    v.push(cur);
                }
            }
            RefDesc::DeviceIotlb | RefDesc::Wait { .. } => {}
        }
    }

    /// Whether `got` (None: blocked) is a legal answer to a DMA access by `device`.
    pub fn dma_ok(
        &self,
        mem: &GuestMemoryMmap,
        caps: &Caps,
        device: Bdf,
        iova: u64,
        write: bool,
        got: Option<Translation>,
    ) -> bool {
        let fresh = self.contexts[&device]
            .iter()
            .any(|c| oracle::dma(mem, c, iova, write, caps) == got);
        let cached = got.is_some_and(|t| {
            let doms = self.domains(device);
            self.iotlb.iter().any(|(d, c)| {
                *c == t
                    && doms.contains(d)
                    && oracle::permits(c, write)
                    && iova.wrapping_sub(c.iova_base) < c.page_size
            })
        });
        fresh || cached
    }
}

/// A model of the VFIO container the caching-mode events are applied to.
#[derive(Default, Debug)]
pub struct Container {
    pub pass_through: bool,
    pub ranges: BTreeMap<u64, Mapping>,
}

impl Container {
    /// Applies one event, or says why VFIO would refuse it.
    pub fn apply(&mut self, e: &MapEvent) -> Result<(), String> {
        match *e {
            MapEvent::Map(m) => {
                let end = m.iova.checked_add(m.size).ok_or("map wraps")?;
                if m.size == 0 {
                    return Err(format!("empty map {m:x?}"));
                }
                if self.pass_through {
                    return Err(format!("map {m:x?} while pass-through"));
                }
                if let Some((_, o)) = self.ranges.range(..end).next_back() {
                    if o.iova + o.size > m.iova {
                        return Err(format!("map {m:x?} overlaps {o:x?}"));
                    }
                }
                self.ranges.insert(m.iova, m);
            }
            MapEvent::Unmap { iova, size } => match self.ranges.get(&iova) {
                Some(o) if o.size == size => {
                    self.ranges.remove(&iova);
                }
                o => return Err(format!("unmap {iova:#x}+{size:#x} does not match {o:x?}")),
            },
            MapEvent::PassThrough(on) => {
                if on == self.pass_through {
                    return Err(format!("pass-through {on} repeated"));
                }
                if on && !self.ranges.is_empty() {
                    return Err("identity map over live ranges".into());
                }
                self.pass_through = on;
            }
            // The cap was reached: the excess is simply never mapped.
            MapEvent::RangeLimit { .. } => {}
        }
        Ok(())
    }

    pub fn coalesced(&self) -> Vec<Mapping> {
        oracle::coalesce(self.ranges.values().copied().collect())
    }
}
