//! A passed-through function's BARs in the guest: the parts VFIO lets us mmap() are mapped
//! straight into the guest-physical address space (with KVM: memory slots), so their accesses
//! need no exit, and follow the BARs when the guest moves them. Everything else — I/O BARs,
//! regions VFIO will not map, and the pages holding the MSI-X table and PBA, which must be
//! emulated — stays trapped and is forwarded by the device model.

use std::sync::Arc;

use log::{info, warn};

use super::function::{HostFunction, MappedArea};

/// Maps host memory into the guest-physical address space; returns a handle.
pub trait GuestMmioMapper: Send + Sync {
    fn map(&self, gpa: u64, size: u64, host: usize) -> Result<u32, String>;
    fn unmap(&self, handle: u32);
}

/// The unit of guest mappings.
pub const PAGE_SIZE: u64 = 0x1000;
pub use crate::pci::regs::NUM_BARS;

/// An mmap()ed piece of a BAR and where it is mapped in the guest.
struct Piece {
    offset: u64,
    size: u64,
    area: Box<dyn MappedArea>,
    handle: Option<u32>,
}

/// The mapped pieces of every BAR.
pub struct BarMaps {
    mapper: Arc<dyn GuestMmioMapper>,
    bars: [Vec<Piece>; NUM_BARS],
    name: String,
}

/// `[start, end)` minus the `holes` (sorted or not), as page-aligned pieces.
fn subtract(start: u64, end: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut pieces = vec![(start, end)];
    for &(hs, he) in holes {
        let (hs, he) = (hs & !(PAGE_SIZE - 1), he.next_multiple_of(PAGE_SIZE));
        pieces = pieces
            .into_iter()
            .flat_map(|(s, e)| {
                if he <= s || hs >= e {
                    vec![(s, e)]
                } else {
                    [(s, hs), (he, e)]
                        .into_iter()
                        .filter(|(a, b)| a < b)
                        .collect()
                }
            })
            .collect();
    }
    pieces
}

impl BarMaps {
    /// mmap()s the mappable parts of every BAR of `host`, leaving out `trapped` (bar, start,
    /// end) ranges (rounded out to pages) and anything not page-aligned.
    pub fn new(
        host: &dyn HostFunction,
        mapper: Arc<dyn GuestMmioMapper>,
        trapped: &[(usize, u64, u64)],
        name: &str,
    ) -> Self {
        let mut bars: [Vec<Piece>; NUM_BARS] = Default::default();
        for (bar, pieces) in bars.iter_mut().enumerate() {
            let Some(info) = host.region(bar as u32) else {
                continue;
            };
            let holes: Vec<(u64, u64)> = trapped
                .iter()
                .filter(|t| t.0 == bar)
                .map(|t| (t.1, t.2))
                .collect();
            for &(off, size) in &info.mmap {
                let Some(end) = off.checked_add(size).filter(|e| *e <= info.size) else {
                    continue;
                };
                for (s, e) in subtract(off, end, &holes) {
                    if s % PAGE_SIZE != 0 || (e - s) % PAGE_SIZE != 0 {
                        continue;
                    }
                    match host.mmap(bar as u32, s, e - s) {
                        Some(area) => pieces.push(Piece {
                            offset: s,
                            size: e - s,
                            area,
                            handle: None,
                        }),
                        None => warn!(
                            "vfio {name}: BAR {bar} {s:#x}..{e:#x} cannot be mmap()ed; it is trapped"
                        ),
                    }
                }
            }
        }
        BarMaps {
            mapper,
            bars,
            name: name.to_string(),
        }
    }

    /// Whether `offset` of `bar` is served by a guest mapping (when the BAR is placed).
    pub fn is_mapped(&self, bar: usize, offset: u64) -> bool {
        self.bars.get(bar).is_some_and(|p| {
            p.iter()
                .any(|p| p.handle.is_some() && offset >= p.offset && offset - p.offset < p.size)
        })
    }

    /// BAR `bar` now decodes at `base` (None: it stopped decoding): its pieces move there.
    pub fn moved(&mut self, bar: usize, base: Option<u64>) {
        let Some(pieces) = self.bars.get_mut(bar) else {
            return;
        };
        for p in pieces.iter_mut() {
            if let Some(h) = p.handle.take() {
                self.mapper.unmap(h);
            }
        }
        let Some(base) = base.filter(|b| b % PAGE_SIZE == 0) else {
            return;
        };
        let mut mapped = 0;
        for p in pieces.iter_mut() {
            let Some(gpa) = base.checked_add(p.offset) else {
                continue;
            };
            match self.mapper.map(gpa, p.size, p.area.host_address()) {
                Ok(h) => {
                    p.handle = Some(h);
                    mapped += p.size;
                }
                Err(e) => iommu::warn_limited!(
                    "vfio {}: BAR {bar} piece at {gpa:#x} not mapped ({e}); it is trapped",
                    self.name
                ),
            }
        }
        if mapped > 0 {
            info!(
                "vfio {}: BAR {bar} mapped into the guest at {base:#x} ({mapped:#x} bytes, {} of {} pieces)",
                self.name,
                pieces.iter().filter(|p| p.handle.is_some()).count(),
                pieces.len()
            );
        }
    }
}

impl Drop for BarMaps {
    fn drop(&mut self) {
        for p in self.bars.iter_mut().flatten() {
            if let Some(h) = p.handle.take() {
                self.mapper.unmap(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::fake::FakeFunction;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Slots(Mutex<Vec<(u32, u64, u64)>>, Mutex<u32>);

    impl GuestMmioMapper for Slots {
        fn map(&self, gpa: u64, size: u64, _host: usize) -> Result<u32, String> {
            let mut n = self.1.lock().unwrap();
            *n += 1;
            self.0.lock().unwrap().push((*n, gpa, size));
            Ok(*n)
        }
        fn unmap(&self, handle: u32) {
            self.0.lock().unwrap().retain(|s| s.0 != handle);
        }
    }

    impl Slots {
        fn ranges(&self) -> Vec<(u64, u64)> {
            let mut v: Vec<_> = self.0.lock().unwrap().iter().map(|s| (s.1, s.2)).collect();
            v.sort();
            v
        }
    }

    #[test]
    fn subtract_rounds_holes_out_to_pages() {
        assert_eq!(
            subtract(0, 0x4000, &[(0x2010, 0x2030)]),
            vec![(0, 0x2000), (0x3000, 0x4000)]
        );
        assert_eq!(subtract(0, 0x1000, &[(0, 0x10)]), vec![]);
        assert_eq!(subtract(0, 0x3000, &[(0x5000, 0x6000)]), vec![(0, 0x3000)]);
    }

    #[test]
    fn bar_with_msix_table_is_mapped_around_it_and_follows_moves() {
        let f = FakeFunction::default();
        f.add_region(0, vec![0; 0x4000], vec![(0, 0x4000)]);
        // BAR 2: VFIO offers no mmap (trapped whole).
        f.add_region(2, vec![0; 0x1000], vec![]);
        let slots = Arc::new(Slots::default());
        let mut m = BarMaps::new(&f, slots.clone(), &[(0, 0x2000, 0x2040)], "t");
        m.moved(0, Some(0xc000_0000));
        assert_eq!(
            slots.ranges(),
            vec![(0xc000_0000, 0x2000), (0xc000_3000, 0x1000)]
        );
        assert!(m.is_mapped(0, 0x1ffc) && !m.is_mapped(0, 0x2000) && m.is_mapped(0, 0x3000));
        m.moved(2, Some(0xd000_0000));
        assert!(!m.is_mapped(2, 0));
        m.moved(0, Some(0xe000_0000));
        assert_eq!(
            slots.ranges(),
            vec![(0xe000_0000, 0x2000), (0xe000_3000, 0x1000)]
        );
        m.moved(0, None);
        assert!(slots.ranges().is_empty());
        m.moved(0, Some(0xe000_0800));
        assert!(
            slots.ranges().is_empty(),
            "a BAR off a page boundary stays trapped"
        );
        m.moved(0, Some(0xe000_0000));
        drop(m);
        assert!(
            slots.ranges().is_empty(),
            "slots removed when the device goes"
        );
    }

    #[test]
    fn sparse_areas_past_the_region_or_unaligned_are_skipped() {
        let f = FakeFunction::default();
        f.add_region(1, vec![0; 0x2000], vec![(0x800, 0x800), (0x1000, 0x2000)]);
        let slots = Arc::new(Slots::default());
        let mut m = BarMaps::new(&f, slots.clone(), &[], "t");
        m.moved(1, Some(0x1000_0000));
        assert!(slots.ranges().is_empty());
    }
}
