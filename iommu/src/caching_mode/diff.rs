//! The resync diff: what a device's reported ranges and a fresh walk of its tables make of
//! each other, in one merge pass over both (each sorted by IOVA, without overlaps).

use super::Mapping;

/// The outcome of [`diff`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Reported ranges the tables no longer map identically: to unmap.
    pub gone: Vec<Mapping>,
    /// Parts of the walk no kept range covers: to map.
    pub added: Vec<Mapping>,
    /// Steps taken (ranges visited), for tests that bound the work.
    pub steps: u64,
}

/// Compares the reported ranges `old` with the walk `new`. A reported range the walk still
/// maps identically is kept as it is, even where the walk coalesces it with neighbours:
/// remapping it would open a window in which the device's DMA to it faults. Linear in
/// `old.len() + new.len()`: a kept range lies within exactly one walked range, and the
/// kept ranges of one walked range are consecutive.
pub fn diff(old: &[Mapping], new: &[Mapping]) -> Diff {
    let mut d = Diff::default();
    // For each range of `new`, the kept ranges inside it, as a slice of `kept`.
    let mut kept = Vec::new();
    let mut kept_in: Vec<(usize, usize)> = vec![(0, 0); new.len()];
    let mut j = 0;
    for o in old {
        d.steps += 1;
        while j < new.len() && new[j].end() <= o.iova {
            d.steps += 1;
            j += 1;
        }
        match new.get(j) {
            Some(n) if n.covers(o) => {
                if kept_in[j].1 == kept_in[j].0 {
                    kept_in[j] = (kept.len(), kept.len());
                }
                kept.push(*o);
                kept_in[j].1 = kept.len();
            }
            _ => d.gone.push(*o),
        }
    }
    for (n, &(from, to)) in new.iter().zip(&kept_in) {
        d.steps += 1 + (to - from) as u64;
        d.added.extend(n.minus(&kept[from..to]));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(iova: u64, gpa: u64, size: u64) -> Mapping {
        Mapping {
            iova,
            gpa,
            size,
            read: true,
            write: true,
        }
    }

    #[test]
    fn diff_unchanged_ranges_give_nothing() {
        let r = [m(0, 0x1000, 0x1000), m(0x3000, 0x9000, 0x2000)];
        let d = diff(&r, &r);
        assert_eq!((d.gone, d.added), (vec![], vec![]));
    }

    #[test]
    fn diff_coalesced_walk_keeps_reported_pieces_and_adds_the_rest() {
        let old = [m(0x1000, 0x11000, 0x1000), m(0x3000, 0x13000, 0x1000)];
        let new = [m(0, 0x10000, 0x5000)];
        let d = diff(&old, &new);
        assert!(d.gone.is_empty());
        assert_eq!(
            d.added,
            vec![
                m(0, 0x10000, 0x1000),
                m(0x2000, 0x12000, 0x1000),
                m(0x4000, 0x14000, 0x1000)
            ]
        );
    }

    #[test]
    fn diff_moved_or_removed_ranges_are_gone() {
        let old = [
            m(0, 0x1000, 0x1000),
            m(0x1000, 0x2000, 0x1000),
            m(0x8000, 0, 0x1000),
        ];
        let new = [m(0, 0x1000, 0x1000), m(0x1000, 0x7000, 0x1000)];
        let d = diff(&old, &new);
        assert_eq!(
            d.gone,
            vec![m(0x1000, 0x2000, 0x1000), m(0x8000, 0, 0x1000)]
        );
        assert_eq!(d.added, vec![m(0x1000, 0x7000, 0x1000)]);
    }
}
