use vm_memory::GuestMemoryMmap;

use super::*;
use crate::test_utils::Tables;

fn cfg() -> WalkConfig {
    WalkConfig {
        sagaw: 0b110,
        sllps: 0b11,
        pass_through: true,
        device_tlb: false,
    }
}

fn ctx(slpt: u64, levels: u8) -> ContextEntry {
    ContextEntry {
        did: 1,
        tt: TranslationType::Untranslated,
        levels,
        slptptr: slpt,
        fpd: false,
    }
}

#[test]
fn walk_3_level_tables_and_1g_pages() {
    let mut t = Tables::new();
    let slpt = t.alloc();
    t.map(slpt, 3, 0x4000_0000, 0x8000_0000, 0x4000_0000, 3);
    t.map(slpt, 3, 0x1000, 0x2000, 0x1000, 1);
    let m = walk_range(&t.mem, &ctx(slpt, 3), 0, u64::MAX, &cfg());
    assert_eq!(
        m,
        vec![
            Mapping {
                iova: 0x1000,
                gpa: 0x2000,
                size: 0x1000,
                read: true,
                write: false
            },
            Mapping {
                iova: 0x4000_0000,
                gpa: 0x8000_0000,
                size: 0x4000_0000,
                read: true,
                write: true
            },
        ]
    );
}

#[test]
fn walk_reports_whole_leaf_overlapping_range() {
    let mut t = Tables::new();
    let slpt = t.alloc();
    t.map(slpt, 4, 0x20_0000, 0x40_0000, 0x20_0000, 3);
    let m = walk_range(&t.mem, &ctx(slpt, 4), 0x20_1000, 0x20_2000, &cfg());
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].iova, m[0].size), (0x20_0000, 0x20_0000));
}

#[test]
fn walk_skips_entries_that_would_fault() {
    let mut t = Tables::new();
    let slpt = t.alloc();
    t.map(slpt, 4, 0x1000, 0x2000, 0x1000, 3);
    // A 2 MiB leaf with address bits below 2 MiB set, and a table pointer outside memory.
    t.map(slpt, 4, 0x40_0000, 0x1000, 0x20_0000, 3);
    t.w64(slpt + 8, (1 << 40) | 3);
    let m = walk_range(&t.mem, &ctx(slpt, 4), 0, u64::MAX, &cfg());
    assert_eq!(m.len(), 1);
    let empty: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    assert!(walk_range(&empty, &ctx(0x10_0000, 4), 0, u64::MAX, &cfg()).is_empty());
}
