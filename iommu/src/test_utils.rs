//! Builds VT-d structures in a test guest memory: root and context tables, second-level page
//! tables (4 KiB, 2 MiB and 1 GiB mappings). Test-only.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::Bdf;

pub const MEM_SIZE: usize = 64 << 20;
pub const ROOT_TABLE: u64 = 0x1000;
const FIRST_FREE: u64 = 0x10_0000;

/// Guest memory plus a bump allocator for table pages.
pub struct Tables {
    pub mem: GuestMemoryMmap,
    next: u64,
}

impl Default for Tables {
    fn default() -> Self {
        Self::new()
    }
}

impl Tables {
    pub fn new() -> Self {
        Tables {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
            next: FIRST_FREE,
        }
    }

    pub fn alloc(&mut self) -> u64 {
        let a = self.next;
        self.next += 0x1000;
        a
    }

    pub fn w64(&self, addr: u64, v: u64) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    pub fn r64(&self, addr: u64) -> u64 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Points the root entry of `bus` at a fresh context table, returning its address.
    pub fn root(&mut self, bus: u8) -> u64 {
        let existing = self.r64(ROOT_TABLE + u64::from(bus) * 16);
        if existing & 1 != 0 {
            return existing & !0xfff;
        }
        let ctp = self.alloc();
        self.w64(ROOT_TABLE + u64::from(bus) * 16, ctp | 1);
        ctp
    }

    /// Writes a context entry for `bdf`: translation type `tt`, `levels` (3 or 4), domain.
    /// Returns the new page-table root.
    pub fn context(&mut self, bdf: Bdf, did: u16, levels: u8, tt: u64, fpd: bool) -> u64 {
        let ctp = self.root(bdf.bus());
        let slpt = self.alloc();
        let lo = slpt | (tt << 2) | (u64::from(fpd) << 1) | 1;
        let hi = (u64::from(did) << 8) | u64::from(levels - 2);
        self.w64(ctp + u64::from(bdf.devfn()) * 16, lo);
        self.w64(ctp + u64::from(bdf.devfn()) * 16 + 8, hi);
        slpt
    }

    /// Maps `iova` -> `gpa` with a page of `size` (4 KiB, 2 MiB or 1 GiB) under `slpt`.
    pub fn map(&mut self, slpt: u64, levels: u8, iova: u64, gpa: u64, size: u64, perms: u64) {
        let leaf_level = match size {
            0x1000 => 1,
            0x20_0000 => 2,
            0x4000_0000 => 3,
            _ => panic!("bad page size"),
        };
        let mut table = slpt;
        for level in (leaf_level..=u64::from(levels)).rev() {
            let shift = 12 + 9 * (level - 1);
            let slot = table + ((iova >> shift) & 0x1ff) * 8;
            if level == leaf_level {
                let ps = if level > 1 { 1 << 7 } else { 0 };
                self.w64(slot, gpa | perms | ps);
            } else {
                let e = self.r64(slot);
                table = if e & 3 != 0 {
                    e & !0xfff
                } else {
                    let t = self.alloc();
                    self.w64(slot, t | 3);
                    t
                };
            }
        }
    }
}
