//! The operations the fuzzer draws: guest table edits, register writes, queued descriptors,
//! DMA and interrupt requests. Each logs itself (so a failing seed reads as a reproduction)
//! and performs its unit calls through the harness, which checks them.

use super::oracle::{self, RefDesc};
use super::*;

/// IOVAs worth probing: page and superpage edges, the 39- and 48-bit limits, beyond them.
const IOVAS: [u64; 14] = [
    0,
    0x1000,
    0x1f_f000,
    0x20_0000,
    0x20_1000,
    0x40_0000,
    0x3fe0_0000,
    0x4000_0000,
    0x4020_0000,
    0x7f_ffff_f000,
    0x80_0000_0000,
    0xffff_ffff_f000,
    1 << 48,
    0xffff_ffff_ffff_f000,
];
/// Second-level entry permission bits (R, W) and page size (PS) (9.8).
const RW: u64 = 3;
const PS: u64 = 1 << 7;
const PERMS: [u64; 7] = [RW, RW, RW, RW, 1, 2, 0];
/// Valid IRTE delivery modes (9.10 DLM).
const DLM: [u64; 6] = [0, 1, 2, 4, 5, 7];

/// The processing the reference expects from an IQT write.
pub(super) enum QueuePlan {
    /// Queue off or in error: nothing happens.
    Idle,
    /// A state the reference does not judge (256-bit descriptors, head beyond the size).
    Unjudged,
    Run {
        items: Vec<RefDesc>,
        /// Where processing must stop, and whether with an invalidation queue error.
        stop: (u64, bool),
        /// A wait descriptor whose status write cannot land: its outcome is left open.
        open_at: Option<u64>,
    },
}

fn dids(c: &mut Choices) -> u16 {
    if c.chance(90) {
        c.pick(&[1, 1, 2, 3])
    } else {
        c.u64() as u16
    }
}

fn flip(c: &mut Choices, lo: &mut u64, hi: &mut u64) {
    let bit = 1u64 << c.below(64);
    if c.chance(50) {
        *lo ^= bit;
    } else {
        *hi ^= bit;
    }
}

pub(super) fn random_op(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    match c.below(100) {
        0..=21 => {
            let (dev, iova, write) = (c.pick(&DEVS), iova(h, c), c.chance(50));
            h.dma(dev, iova, write)
        }
        22..=33 => map(h, c),
        34..=40 => unmap(h, c),
        41..=44 => raw_pte(h, c),
        45..=46 => alias(h, c),
        47..=50 => context(h, c),
        51 => root(h, c),
        52..=65 => queue_batch(h, c),
        66..=68 => {
            let (g, did, sid, fm) = (c.pick(&[1, 2, 3]), dids(c), c.pick(&DEVS).raw(), c.below(4));
            let v = CCMD_ICC
                | (g << CCMD_CIRG_SHIFT)
                | (fm << 32)
                | (u64::from(sid) << 16)
                | u64::from(did);
            write_split(h, c, CCMD_REG, v)
        }
        69..=74 => {
            let (addr, am, g, did) = (
                psi_addr(h, c),
                am(c),
                c.pick(&[1, 2, 3, 3, 3]),
                live_did(h, c),
            );
            h.reg_write(IVA_REG, addr | am | (c.below(2) << 6), 8)?;
            let v = IOTLB_IVT | (g << IOTLB_IIRG_SHIFT) | (u64::from(did) << IOTLB_DID_SHIFT);
            let v = v | (c.below(4) << 48);
            write_split(h, c, IOTLB_REG, v)
        }
        75..=77 => gcmd(h, c),
        78 => {
            let r = c.u64() & !0xfff;
            let rta = c.pick(&[ROOT, ROOT, POOL, 0xffff_f000_0000, r]);
            h.reg_write(RTADDR_REG, rta, 8)?;
            if c.chance(60) {
                let g = h.gsts() & !GCMD_ONE_SHOT;
                h.reg_write(GCMD_REG, u64::from(g | GCMD_SRTP), 4)?;
            }
            Ok(())
        }
        79..=82 => irte(h, c),
        83 => {
            let r = c.u64() & !0xfff;
            let base = c.pick(&[IRT, IRT, IRT, POOL, 0xffff_ffff_ffff_f000, r]);
            let irta = base | (c.below(2) << 11) | c.below(16);
            h.reg_write(IRTA_REG, irta, 8)?;
            if c.chance(80) {
                let g = h.gsts() & !GCMD_ONE_SHOT;
                h.reg_write(GCMD_REG, u64::from(g | GCMD_SIRTP), 4)?;
            }
            Ok(())
        }
        84..=91 => interrupt(h, c),
        92..=93 => recover_queue(h, c),
        94..=98 => misc(h, c),
        _ => {
            h.note("untrack + track".into());
            h.unit.untrack(TRACKED);
            h.container = Container::default();
            h.timed("track", |h| h.unit.track(&h.mem, TRACKED))?;
            Ok(())
        }
    }
}

/// A 64-bit command register write, sometimes as two dwords (low first, as Linux does).
fn write_split(h: &mut Harness, c: &mut Choices, off: u64, v: u64) -> Result<(), String> {
    if c.chance(25) {
        h.reg_write(off, v & 0xffff_ffff, 4)?;
        h.reg_write(off + 4, v >> 32, 4)
    } else {
        h.reg_write(off, v, 8)
    }
}

fn iova(h: &Harness, c: &mut Choices) -> u64 {
    match c.below(16) {
        10..=12 if !h.accessed.is_empty() => c.pick(&h.accessed),
        13..=15 if !h.mapped.is_empty() => {
            let (base, size) = c.pick(&h.mapped);
            base + c.below(size >> 12) * 0x1000
        }
        0..=3 if !h.superpages.is_empty() => {
            let (base, size) = c.pick(&h.superpages);
            base + c.below(size >> 12) * 0x1000 + c.below(2) * c.below(0x1000)
        }
        4 => c.u64() & ((1 << 48) - 1),
        5 => c.u64(),
        _ => c
            .pick(&IOVAS)
            .wrapping_add(c.below(4) * 0x1000 + c.below(2) * c.below(0x1000)),
    }
}

/// An address inside a superpage the unit has handed out, half of the time.
fn psi_addr(h: &Harness, c: &mut Choices) -> u64 {
    if !h.superpages.is_empty() && c.chance(50) {
        let (base, size) = c.pick(&h.superpages);
        return base + c.below(size >> 12) * 0x1000;
    }
    iova(h, c) & !0xfff
}

/// A domain some device is in now (what a guest invalidates), or any domain.
fn live_did(h: &Harness, c: &mut Choices) -> u16 {
    match h.legal.contexts[&c.pick(&DEVS)].last() {
        Some(RefCtx::Usable { did, .. }) if c.chance(75) => *did,
        _ => dids(c),
    }
}

fn am(c: &mut Choices) -> u64 {
    let (a, b) = (c.below(10), c.below(64));
    c.pick(&[0, 0, 0, 1, 2, 9, a, b])
}

/// The tables a device currently translates through, or a random pool page.
fn tables_of(h: &Harness, c: &mut Choices, dev: Bdf) -> (u8, u64) {
    match h.legal.contexts[&dev].last() {
        Some(RefCtx::Usable {
            pass_through: false,
            levels,
            slptptr,
            ..
        }) if c.chance(90) => (*levels, *slptptr),
        _ => (c.pick(&[3, 4]), POOL + c.below(POOL_PAGES) * 0x1000),
    }
}

fn in_pool(a: u64) -> bool {
    (POOL..POOL + POOL_PAGES * 0x1000).contains(&a)
}

/// Maps a 4 KiB, 2 MiB or 1 GiB page the way a guest driver does, creating tables.
fn map(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let dev = c.pick(&DEVS);
    let (levels, root) = tables_of(h, c, dev);
    let leaf_level = c
        .pick(&[1, 1, 1, 1, 1, 1, 2, 2, 2, 3])
        .min(u64::from(levels));
    let size = 1u64 << (12 + 9 * (leaf_level - 1));
    let mut iova = iova(h, c) & !(size - 1);
    if c.chance(90) {
        iova &= (1 << (12 + 9 * u32::from(levels))) - 1;
    }
    let gpa = match leaf_level {
        1 => c.below((2 * MEM_SIZE) >> 12) << 12,
        2 => c.below(32) << 21,
        _ => c.below(4) << 30,
    } + if c.chance(5) { 0x1000 } else { 0 };
    let mut flags = c.pick(&PERMS);
    if leaf_level > 1 {
        flags |= PS;
    } else if c.chance(5) {
        flags |= PS; // ignored in a 4 KiB entry
    }
    if c.chance(3) {
        flags |= c.u64() & (0x7ff << 52); // ignored bits 62:52
    }
    if c.chance(2) {
        flags |= 1 << (48 + c.below(4)); // reserved bits 51:48
    }
    h.note(format!("map {dev} tables {root:#x} ({levels} levels): {iova:#x} -> {gpa:#x} size {size:#x} flags {flags:#x}"));
    if h.mapped.len() < 64 {
        h.mapped.push((iova, size));
    }
    let mut table = root;
    for level in (leaf_level + 1..=u64::from(levels)).rev() {
        let slot = table + 8 * ((iova >> (12 + 9 * (level - 1))) & 0x1ff);
        let e = h.r64(slot);
        let next = e & ((1 << 48) - 1) & !0xfff;
        if e & RW == 0 || e & PS != 0 || !in_pool(next) || c.chance(3) {
            let t = h.page(c);
            h.w64(slot, t | c.pick(&[RW, RW, RW, RW, RW, RW, 1, 2]));
            table = t;
        } else {
            table = next;
        }
    }
    h.w64(
        table + 8 * ((iova >> (12 + 9 * (leaf_level - 1))) & 0x1ff),
        gpa | flags,
    );
    Ok(())
}

/// Finds the entry that maps `iova` (following present entries within the pool).
fn leaf_slot(h: &Harness, levels: u8, root: u64, iova: u64) -> Option<u64> {
    let mut table = root;
    for level in (1..=u64::from(levels)).rev() {
        let slot = table + 8 * ((iova >> (12 + 9 * (level - 1))) & 0x1ff);
        let e = h.r64(slot);
        let next = e & ((1 << 48) - 1) & !0xfff;
        if level == 1 || e & PS != 0 || e & RW == 0 || !in_pool(next) {
            return Some(slot);
        }
        table = next;
    }
    None
}

/// Unmaps or changes the leaf that maps an address (what the guest does before it
/// invalidates).
fn unmap(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let dev = c.pick(&DEVS);
    let (levels, root) = tables_of(h, c, dev);
    let iova = iova(h, c);
    let Some(slot) = leaf_slot(h, levels, root, iova) else {
        return Ok(());
    };
    let e = h.r64(slot);
    let new = match c.below(20) {
        0..=11 => 0,
        12..=14 => e & !2,
        15..=16 => e & !1,
        _ => e ^ (c.below(8) << 21),
    };
    h.note(format!(
        "unmap {dev} {iova:#x}: entry at {slot:#x} {e:#x} -> {new:#x}"
    ));
    h.w64(slot, new);
    Ok(())
}

fn raw_pte(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let page = POOL + c.below(h.next_page.max(1)) * 0x1000;
    let slot = page + 8 * c.below(512);
    let v = match c.below(3) {
        0 => (POOL + c.below(POOL_PAGES) * 0x1000) | c.pick(&PERMS),
        1 => (c.below((2 * MEM_SIZE) >> 12) << 12) | c.below(0x1000),
        _ => c.u64(),
    };
    h.note(format!("raw entry at {slot:#x} = {v:#x}"));
    h.w64(slot, v);
    Ok(())
}

/// Self-referencing and aliasing tables; rarely, a whole table of them.
fn alias(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let page = POOL + c.below(h.next_page.max(1)) * 0x1000;
    let target = if c.chance(40) {
        page
    } else {
        POOL + c.below(h.next_page.max(1)) * 0x1000
    };
    if c.chance(15) && !h.caps.allow.cm_unbounded {
        let leaves = c.chance(50);
        h.note(format!(
            "fill table {page:#x}: 512 x {}",
            if leaves {
                "scattered 4 KiB leaves".to_string()
            } else {
                format!("-> {target:#x}")
            }
        ));
        for i in 0..512 {
            let v = if leaves {
                (c.below(MEM_SIZE >> 12) << 12) | RW
            } else {
                target | RW
            };
            h.w64(page + 8 * i, v);
        }
    } else {
        let slot = page + 8 * c.below(512);
        h.note(format!("alias entry at {slot:#x} -> {target:#x}"));
        h.w64(slot, target | RW);
    }
    Ok(())
}

fn context(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let dev = c.pick(&DEVS);
    let at = CTX + 0x1000 * u64::from(dev.bus()) + 16 * u64::from(dev.devfn());
    let (mut lo, mut hi) = (h.r64(at), h.r64(at + 8));
    match c.below(10) {
        0 => lo &= !1,
        1 => flip(c, &mut lo, &mut hi),
        _ => {
            let aw = if h.caps.sagaw & 4 != 0 && c.chance(80) {
                2
            } else {
                1
            };
            let aw = if c.chance(5) { c.below(8) } else { aw };
            let tt = c.pick(&[0, 0, 0, 0, 0, 0, 2, 2, 1, 3]);
            let slpt = match c.below(10) {
                0..=5 if lo & 1 != 0 => lo & ((1 << 48) - 1) & !0xfff,
                6..=7 => h.page(c),
                _ => POOL + c.below(POOL_PAGES) * 0x1000,
            };
            lo = slpt | (tt << 2) | (c.below(2) << 1) | 1;
            hi = (u64::from(dids(c)) << 8) | aw;
        }
    }
    h.note(format!("context {dev} at {at:#x} = {lo:#x} {hi:#x}"));
    h.w64(at, lo);
    h.w64(at + 8, hi);
    Ok(())
}

fn root(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let bus = c.below(2);
    let (mut lo, mut hi) = (c.pick(&[CTX + 0x1000 * bus, POOL]) | 1, 0);
    match c.below(8) {
        0 => lo = 0,
        1 => flip(c, &mut lo, &mut hi),
        _ => {}
    }
    h.note(format!("root entry {bus} = {lo:#x} {hi:#x}"));
    h.w64(ROOT + 16 * bus, lo);
    h.w64(ROOT + 16 * bus + 8, hi);
    Ok(())
}

fn descriptor(h: &Harness, c: &mut Choices) -> (u64, u64) {
    let (mut lo, mut hi) = match c.below(16) {
        0..=2 => {
            let (g, did, sid) = (c.pick(&[1, 2, 3]), dids(c), c.pick(&DEVS).raw());
            (
                1 | (g << 4) | (u64::from(did) << 16) | (u64::from(sid) << 32) | (c.below(4) << 48),
                0,
            )
        }
        3..=9 => {
            let (g, did) = (c.pick(&[1, 2, 3, 3, 3]), live_did(h, c));
            let lo = 2 | (g << 4) | (c.below(4) << 6) | (u64::from(did) << 16);
            (lo, psi_addr(h, c) | (c.below(2) << 6) | am(c))
        }
        10 => {
            // Device-TLB: well-formed (SID, MIP, PFSID, ADDR and S) most of the time.
            let lo = 3 | (c.u64() & 0xfff0_ffff_001f_f000);
            let hi = c.u64() & !0xffe;
            if c.chance(80) {
                (lo, hi)
            } else {
                (3 | (c.u64() & 0xffff_ffff_ffff_0000), c.u64())
            }
        }
        11..=12 => {
            let r = c.u64() & 0xffff;
            let index = c.pick(&[0, 1, 2, 3, 0x7fff, 0xffff, r]);
            let selective = c.chance(60);
            let lo = 4 | (u64::from(selective) << 4) | (c.below(17).min(31) << 27) | (index << 32);
            (lo, 0)
        }
        _ => {
            let flags = c.below(8) << 4;
            let addr = if c.chance(95) {
                STATUS + 4 * c.below(16)
            } else {
                c.u64() & !3
            };
            (5 | flags | (c.u64() << 32), addr)
        }
    };
    if c.chance(8) {
        flip(c, &mut lo, &mut hi);
    }
    (lo, hi)
}

/// Queues a few descriptors of any type and moves the tail past them.
fn queue_batch(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let iqa = h.rd(IQA_REG);
    let entries = 256u64 << (iqa & IQA_QS_MASK);
    let base = iqa & IQA_ADDR_MASK;
    let tail = (h.rd(IQT_REG) >> IQ_INDEX_SHIFT) % entries;
    let n = 1 + if c.chance(10) {
        c.below(64)
    } else {
        c.below(6)
    };
    for i in 0..n {
        let (lo, hi) = descriptor(h, c);
        let at = base.wrapping_add(16 * ((tail + i) % entries));
        h.note(format!("descriptor at {at:#x}: {lo:#x} {hi:#x}"));
        h.w64(at, lo);
        h.w64(at.wrapping_add(8), hi);
    }
    let mut new_tail = (tail + n) % entries;
    if c.one_in(200) && entries < 0x8000 {
        new_tail = entries + c.below(0x8000 - entries);
    }
    h.reg_write(IQT_REG, new_tail << IQ_INDEX_SHIFT, 8)
}

/// After a queue error: clear IQE, restart the queue at a (possibly new) size.
fn recover_queue(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let g = h.gsts() & !GCMD_ONE_SHOT;
    if c.chance(3) {
        // Moves the queue while it is enabled (software must not; hardware must survive).
        // First run the head past a page of descriptors (global IEC invalidations).
        let qs = 1 + c.below(3);
        h.reg_write(FSTS_REG, u64::from(FSTS_IQE), 4)?;
        h.reg_write(GCMD_REG, u64::from(g & !GCMD_QIE), 4)?;
        h.reg_write(IQA_REG, QUEUE | qs, 8)?;
        h.reg_write(IQT_REG, 0, 8)?;
        h.reg_write(GCMD_REG, u64::from(g | GCMD_QIE), 4)?;
        let n = 256 + c.below(144);
        for i in 0..n {
            h.w64(QUEUE + 16 * i, 0x4);
            h.w64(QUEUE + 16 * i + 8, 0);
        }
        h.reg_write(IQT_REG, n << IQ_INDEX_SHIFT, 8)?;
        let r = c.u64() & !0xfff;
        let base = c.pick(&[QUEUE, 0xffff_ffff_ffff_f000, r]);
        h.reg_write(IQA_REG, base | qs, 8)?;
        return h.reg_write(IQT_REG, (n + 1 + c.below(4)) << IQ_INDEX_SHIFT, 8);
    }
    h.reg_write(FSTS_REG, u64::from(FSTS_IQE), 4)?;
    h.reg_write(GCMD_REG, u64::from(g & !GCMD_QIE), 4)?;
    let base = if c.chance(95) {
        QUEUE
    } else {
        0xffff_ffff_ffff_f000
    };
    h.reg_write(IQA_REG, base | c.below(8), 8)?;
    h.reg_write(IQT_REG, 0, 8)?;
    h.reg_write(GCMD_REG, u64::from(g | GCMD_QIE), 4)
}

fn gcmd(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let g = h.gsts() & !GCMD_ONE_SHOT;
    let v = match c.below(9) {
        0 => g ^ GCMD_TE,
        1 => g | GCMD_TE,
        2 => g ^ GCMD_QIE,
        3..=4 => g ^ GCMD_IRE,
        5 => g ^ GCMD_CFI,
        6 => g | GCMD_SRTP,
        _ => g | GCMD_SIRTP,
    };
    h.reg_write(GCMD_REG, u64::from(v), 4)
}

fn irte(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let index = irte_index(h, c) & 0xffff;
    let eime = h.irta & IRTA_EIME != 0;
    let dlm = if c.chance(95) {
        c.pick(&DLM)
    } else {
        c.below(8)
    };
    let dst = if eime {
        c.u64() & 0xffff_ffff
    } else {
        c.below(256) << 8
    };
    let mut lo = u64::from(c.chance(90)) | (c.below(16) << 1) | (dlm << 5);
    lo |= (c.below(256) << 16) | (dst << 32);
    let svt = c.pick(&[0, 0, 1, 2, 1, 3]);
    let sid = if svt == 2 {
        c.below(0x10000)
    } else {
        u64::from(c.pick(&DEVS).raw())
    };
    let mut hi = (svt << 18) | (c.below(4) << 16) | sid;
    if c.chance(10) {
        flip(c, &mut lo, &mut hi);
    }
    h.note(format!("IRTE {index:#x} = {lo:#x} {hi:#x}"));
    h.w64(IRT + 16 * u64::from(index), lo);
    h.w64(IRT + 16 * u64::from(index) + 8, hi);
    Ok(())
}

fn irte_index(h: &Harness, c: &mut Choices) -> u32 {
    let entries = 2u32 << (h.irta & IRTA_S_MASK);
    let r = c.u64() as u32 & 0xffff;
    c.pick(&[0, 1, 2, 3, 4, 5, entries - 1, entries, 0x7fff, 0xffff, r])
}

fn interrupt(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    let source = if c.chance(90) {
        c.pick(&DEVS)
    } else {
        Bdf::from_raw(c.u64() as u16)
    };
    let (address, data) = if c.chance(80) {
        let handle = u64::from(irte_index(h, c) & 0xffff);
        let shv = c.chance(30);
        let r = c.u64() & 0xffff;
        let sub = if shv { c.pick(&[0, 1, 2, r]) } else { r };
        let mut a = 0xfee0_0000 | (1 << 4) | (u64::from(shv) << 3) | ((handle >> 15) << 2);
        a |= (handle & 0x7fff) << 5;
        if c.chance(5) {
            a ^= c.pick(&[1 << 32, 1 << 20, 0x3]);
        }
        (a, ((c.u64() as u32) & 0xffff_0000) | sub as u32)
    } else {
        (
            0xfee0_0000 | (c.below(256) << 12) | (c.below(4) << 2),
            c.u64() as u32,
        )
    };
    h.interrupt(source, address, data)
}

fn misc(h: &mut Harness, c: &mut Choices) -> Result<(), String> {
    match c.below(8) {
        0 => h.reg_write(FSTS_REG, c.u64() & 0xffff_ffff, 4),
        1 => h.reg_write(c.pick(&[FECTL_REG, IECTL_REG]), c.u64() & 0xc000_0000, 4),
        2 => h.reg_write(
            c.pick(&[FEDATA_REG, FEADDR_REG, IEDATA_REG, IEADDR_REG]),
            c.u64() & 0xffff_ffff,
            4,
        ),
        3 => h.reg_write(ICS_REG, 1, 4),
        4 => h.reg_write(FRCD_REG + 16 * c.below(8) + 12, 1 << 31, 4),
        5 => {
            let len = c.pick(&[4usize, 8]);
            let off = c.below(REG_SIZE / len as u64) * len as u64;
            h.reg_write(off, c.u64(), len)
        }
        6 => {
            let mut b = [0u8; 8];
            let len = 1 + c.below(8) as usize;
            h.unit.read(c.below(REG_SIZE + 16), &mut b[..len]);
            Ok(())
        }
        _ => {
            h.note("state dump".into());
            let _ = h.timed("state", |h| h.unit.state())?;
            Ok(())
        }
    }
}

impl Harness<'_> {
    /// The guest's start-up: tables, tracking, then (mostly) translation, the queue and
    /// interrupt remapping on.
    pub(super) fn setup(&mut self, c: &mut Choices) -> Result<(), String> {
        self.note("setup".into());
        for bus in 0..2u64 {
            self.w64(ROOT + 16 * bus, (CTX + 0x1000 * bus) | 1);
        }
        for dev in DEVS {
            let at = CTX + 0x1000 * u64::from(dev.bus()) + 16 * u64::from(dev.devfn());
            let aw = if self.caps.sagaw & 4 != 0 && c.chance(80) {
                2
            } else {
                1
            };
            let tt = if c.chance(10) { 2 } else { 0 };
            let slpt = self.page(c);
            self.w64(at, slpt | (tt << 2) | 1);
            self.w64(at + 8, (u64::from(dids(c)) << 8) | aw);
        }
        self.legal
            .refresh(&self.mem, self.rta, self.irta, &self.caps);
        for _ in 0..c.below(12) {
            map(self, c)?;
        }
        self.timed("track", |h| h.unit.track(&h.mem, TRACKED))?;
        if c.chance(85) {
            self.reg_write(RTADDR_REG, ROOT, 8)?;
            self.reg_write(GCMD_REG, u64::from(GCMD_SRTP), 4)?;
            self.reg_write(GCMD_REG, u64::from(GCMD_TE), 4)?;
        }
        if c.chance(85) {
            self.reg_write(IQA_REG, QUEUE | c.below(3), 8)?;
            self.reg_write(IQT_REG, 0, 8)?;
            let g = self.gsts() & !GCMD_ONE_SHOT;
            self.reg_write(GCMD_REG, u64::from(g | GCMD_QIE), 4)?;
        }
        if self.caps.ir && c.chance(80) {
            let eime = if c.chance(70) { IRTA_EIME } else { 0 };
            self.reg_write(IRTA_REG, IRT | eime | c.pick(&[3, 7, 15]), 8)?;
            let g = self.gsts() & !GCMD_ONE_SHOT;
            self.reg_write(GCMD_REG, u64::from(g | GCMD_SIRTP), 4)?;
            for _ in 0..4 {
                irte(self, c)?;
            }
            let g = self.gsts() & !GCMD_ONE_SHOT;
            self.reg_write(GCMD_REG, u64::from(g | GCMD_IRE), 4)?;
        }
        Ok(())
    }

    /// What an IQT write of `v` must do, read before the write (6.5.2, 11.4.11).
    pub(super) fn queue_plan(&self, v: u64) -> QueuePlan {
        let fsts = (self.rd(FSTS_REG & !7) >> 32) as u32;
        if self.gsts() & GSTS_QIES == 0 || fsts & FSTS_IQE != 0 {
            return QueuePlan::Idle;
        }
        let iqa = self.rd(IQA_REG);
        let entries = 256u64 << (iqa & IQA_QS_MASK);
        let head = self.rd(IQH_REG) >> IQ_INDEX_SHIFT;
        let tail = (v >> IQ_INDEX_SHIFT) & 0x7fff;
        if iqa & IQA_DW_256 != 0 || head >= entries {
            return QueuePlan::Unjudged;
        }
        if tail >= entries && !self.caps.allow.qi_tail_modulo {
            // A tail beyond the queue is an invalidation queue error (11.4.11.2).
            return QueuePlan::Run {
                items: Vec::new(),
                stop: (head, true),
                open_at: None,
            };
        }
        let tail = tail % entries;
        let (mut items, mut at) = (Vec::new(), head);
        while at != tail {
            let addr = (iqa & IQA_ADDR_MASK).checked_add(16 * at);
            let read = |a: Option<u64>| a.and_then(|a| oracle::read_u64(&self.mem, a));
            let d = match (read(addr), read(addr.and_then(|a| a.checked_add(8)))) {
                (Some(lo), Some(hi)) => oracle::descriptor(lo, hi, &self.caps),
                _ => None,
            };
            let Some(d) = d else {
                return QueuePlan::Run {
                    items,
                    stop: (at, true),
                    open_at: None,
                };
            };
            items.push(d);
            if let RefDesc::Wait { sw: true, addr, .. } = d {
                if addr.checked_add(4).is_none_or(|e| e > MEM_SIZE) {
                    return QueuePlan::Run {
                        items,
                        stop: (at, true),
                        open_at: Some(at),
                    };
                }
            }
            at = (at + 1) % entries;
        }
        QueuePlan::Run {
            items,
            stop: (tail, false),
            open_at: None,
        }
    }

    /// Compares what the queue did with the plan, then applies the descriptors' effects.
    pub(super) fn check_queue(&mut self, plan: QueuePlan) -> Result<(), String> {
        let QueuePlan::Run {
            mut items,
            stop,
            open_at,
        } = plan
        else {
            if matches!(plan, QueuePlan::Unjudged) {
                self.tainted = true;
            }
            return Ok(());
        };
        // Status writes into guest structures change them behind the model: judge nothing.
        let structures = |a: u64| a < DATA && !(STATUS..STATUS + 0x1000).contains(&a);
        if items
            .iter()
            .any(|d| matches!(d, RefDesc::Wait { sw: true, addr, .. } if structures(*addr)))
        {
            self.tainted = true;
            return Ok(());
        }
        let head = self.rd(IQH_REG) >> IQ_INDEX_SHIFT;
        let iqe = (self.rd(FSTS_REG & !7) >> 32) as u32 & FSTS_IQE != 0;
        self.stats.checks += 1;
        if let Some(at) = open_at {
            if (head, iqe) != (at, true) {
                // The wait's status write went somewhere; what followed is not judged.
                self.tainted = true;
                return Ok(());
            }
            items.pop();
        } else if (head, iqe) != stop {
            return Err(format!(
                "queue stopped at {head} (IQE {iqe}), reference: at {} (IQE {}) after {items:x?}",
                stop.0, stop.1
            ));
        }
        for (i, d) in items.iter().enumerate() {
            self.invalidate(d);
            if let RefDesc::Wait {
                sw,
                irq,
                data,
                addr,
            } = *d
            {
                let later = items[i + 1..].iter().any(|l| matches!(l, RefDesc::Wait { sw: true, addr: a, .. } if a.abs_diff(addr) < 4));
                let status: Option<u32> = self.mem.read_obj(GuestAddress(addr)).ok();
                if sw && !later && status != Some(data) {
                    return Err(format!(
                        "wait status at {addr:#x}: {status:x?}, want {data:#x}"
                    ));
                }
                if irq && self.rd(ICS_REG & !7) >> 32 & u64::from(ICS_IWC) == 0 {
                    return Err("wait with IF left ICS.IWC clear".into());
                }
            }
        }
        Ok(())
    }
}
