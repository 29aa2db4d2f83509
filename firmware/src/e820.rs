//! The E820 memory map (ACPI 6.5 section 15, "System Address Map Interfaces").

/// E820 address range types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One range of the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Builds a sorted map from RAM ranges and reserved ranges. Reserved ranges are carved out of
/// RAM where they overlap it.
pub fn build_e820(ram: &[(u64, u64)], reserved: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut out = Vec::new();
    for &(start, size) in ram {
        let end = start.saturating_add(size);
        let mut cur = start;
        let mut holes: Vec<(u64, u64)> = reserved
            .iter()
            .map(|&(s, l)| (s, s.saturating_add(l)))
            .filter(|&(s, e)| s < end && e > start)
            .collect();
        holes.sort_unstable();
        for (s, e) in holes {
            if s > cur {
                out.push(E820Entry {
                    addr: cur,
                    size: s - cur,
                    kind: E820_RAM,
                });
            }
            cur = cur.max(e);
        }
        if cur < end {
            out.push(E820Entry {
                addr: cur,
                size: end - cur,
                kind: E820_RAM,
            });
        }
    }
    for &(addr, size) in reserved {
        out.push(E820Entry {
            addr,
            size,
            kind: E820_RESERVED,
        });
    }
    out.sort_by_key(|e| e.addr);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_reserved_hole_splits_ram() {
        let map = build_e820(&[(0, 0x2000_0000)], &[(0x9_f000, 0x6_1000)]);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9_f000,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9_f000,
                    size: 0x6_1000,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: 0x2000_0000 - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_reserved_outside_ram_is_listed_and_sorted() {
        let map = build_e820(
            &[(0x1_0000_0000, 0x1000_0000), (0, 0x1000)],
            &[(0xe000_0000, 0x10_0000)],
        );
        let addrs: Vec<u64> = map.iter().map(|e| e.addr).collect();
        assert_eq!(addrs, vec![0, 0xe000_0000, 0x1_0000_0000]);
        assert_eq!(map[1].kind, E820_RESERVED);
    }
}
