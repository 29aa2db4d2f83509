//! The fuzzer's reference: a deliberately simple, independent reading of the VT-d structures
//! (root and context entries 9.1-9.3, second-level paging entries 9.8, queued invalidation
//! descriptors 6.5.2, IRTEs 9.10). It shares no decoding code with the unit it judges.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::translation::Translation;
use crate::{Bdf, Mapping};

/// Host address width of the model: table addresses have at most 48 bits (CAP.MGAW, 9.8).
const HAW_MASK: u64 = (1 << 48) - 1;
/// Bits 51:HAW of a root, context or paging entry's address field are reserved (9.1-9.8).
const ABOVE_HAW_RESERVED: u64 = ((1 << 52) - 1) & !HAW_MASK;
/// Paging entry permission bits R (0) and W (1), page size (7) (9.8).
const PTE_R: u64 = 1;
const PTE_W: u64 = 2;
const PTE_PS: u64 = 1 << 7;
/// Paging entry bit 11, SNP: reserved at every level without ECAP.SC (9.8; QEMU's
/// `VTD_SPTE_*_RSVD_MASK` all hold 0x800 unless snoop control is on).
const PTE_SNP: u64 = 1 << 11;

/// What the unit advertises, read back from CAP/ECAP (11.4.2, 11.4.3).
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// CAP.SAGAW (12:8).
    pub sagaw: u64,
    /// CAP.SLLPS (37:34).
    pub sllps: u64,
    /// ECAP.PT (6), ECAP.DT (2), ECAP.IR (3), ECAP.SC (7).
    pub pt: bool,
    pub dt: bool,
    pub ir: bool,
    pub sc: bool,
    /// Known findings the reference reproduces instead of flagging (for surveys only).
    pub allow: Allow,
}

/// Known findings (robustness study) a survey may choose to look past, so that the seeds
/// it runs reach other bugs. The default allows none: the oracle is strict.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allow {
    /// F-SL-1: bit 7 of a 4 KiB entry faults as reserved.
    pub sl_bit7: bool,
    /// F-CTX-1: TT=01b (device-TLB) accepted without ECAP.DT.
    pub tt_device_tlb: bool,
    /// F-IR-2: handle + subhandle wraps at 16 bits.
    pub ir_index_wrap: bool,
    /// F-QI-2: a tail beyond the queue size is taken modulo the size.
    pub qi_tail_modulo: bool,
    /// F-CM-1/2/3: caching-mode walks unbounded in time and size (the generator then
    /// fills no whole table with aliases or scattered leaves).
    pub cm_unbounded: bool,
}

impl Allow {
    /// Parses a comma-separated list of finding names (F-SL-1,F-CTX-1,F-IR-2,F-QI-2).
    pub fn parse(s: &str) -> Self {
        let has = |n: &str| s.split(',').any(|x| x.trim().eq_ignore_ascii_case(n));
        Allow {
            sl_bit7: has("F-SL-1"),
            tt_device_tlb: has("F-CTX-1"),
            ir_index_wrap: has("F-IR-2"),
            qi_tail_modulo: has("F-QI-2"),
            cm_unbounded: has("F-CM"),
        }
    }
}

impl Caps {
    pub fn from_regs(cap: u64, ecap: u64) -> Self {
        Caps {
            sagaw: (cap >> 8) & 0x1f,
            sllps: (cap >> 34) & 0xf,
            pt: ecap & (1 << 6) != 0,
            dt: ecap & (1 << 2) != 0,
            ir: ecap & (1 << 3) != 0,
            sc: ecap & (1 << 7) != 0,
            allow: Allow::default(),
        }
    }
}

pub fn read_u64(mem: &GuestMemoryMmap, addr: u64) -> Option<u64> {
    mem.read_obj::<u64>(GuestAddress(addr)).ok()
}

/// A context entry as the reference reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefCtx {
    /// Any fault on the way to a usable context entry.
    Blocked,
    /// TT 00b/01b (translated, `levels` 3 or 4) or 10b (`pass_through`); `fpd`: fault
    /// processing disabled (lo bit 1).
    Usable {
        did: u16,
        fpd: bool,
        pass_through: bool,
        levels: u8,
        slptptr: u64,
    },
}

/// Root entry (9.1) then context entry (9.3) of `bdf` under the root table at `rta`.
pub fn context(mem: &GuestMemoryMmap, rta: u64, bdf: Bdf, caps: &Caps) -> RefCtx {
    let blocked = RefCtx::Blocked;
    let Some(root_at) = (rta & HAW_MASK & !0xfff).checked_add(16 * u64::from(bdf.bus())) else {
        return blocked;
    };
    let (Some(rlo), Some(rhi)) = (read_u64(mem, root_at), read_u64(mem, root_at + 8)) else {
        return blocked;
    };
    // Root: P (0), reserved 11:1 and 63:HAW, upper qword reserved in legacy mode.
    if rlo & 1 == 0 || rlo & 0xffe != 0 || rlo >> 48 != 0 || rhi != 0 {
        return blocked;
    }
    let ctx_at = (rlo & !0xfff) + 16 * u64::from(bdf.devfn());
    let (Some(lo), Some(hi)) = (read_u64(mem, ctx_at), read_u64(mem, ctx_at + 8)) else {
        return blocked;
    };
    // Context lo: P (0), FPD (1), TT (3:2), reserved 11:4, SLPTPTR 63:12 (reserved above HAW).
    // Context hi: AW (2:0), ignored (6:3), reserved (7), DID (23:8), reserved (63:24).
    if lo & 1 == 0 || lo & 0xff0 != 0 || lo >> 48 != 0 || hi & 0x80 != 0 || hi >> 24 != 0 {
        return blocked;
    }
    let did = (hi >> 8) as u16;
    let fpd = lo & 2 != 0;
    let slptptr = lo & !0xfff;
    let tt = (lo >> 2) & 3;
    let translated = match tt {
        0 => true,
        1 => caps.dt || caps.allow.tt_device_tlb,
        2 if caps.pt => {
            return RefCtx::Usable {
                did,
                fpd,
                pass_through: true,
                levels: 4,
                slptptr,
            }
        }
        _ => false,
    };
    let aw = hi & 7;
    let levels_ok = (aw == 1 || aw == 2) && caps.sagaw & (1 << aw) != 0;
    if !translated || !levels_ok {
        return blocked;
    }
    RefCtx::Usable {
        did,
        fpd,
        pass_through: false,
        levels: aw as u8 + 2,
        slptptr,
    }
}

/// How a present paging entry at `level` reads: a leaf of `size`, a pointer to a table, or
/// an entry that faults (reserved bits).
enum Pte {
    Leaf { gpa: u64, size: u64 },
    Table(u64),
    Fault,
}

fn decode_pte(e: u64, level: u64, caps: &Caps) -> Pte {
    if e & ABOVE_HAW_RESERVED != 0 || (e & PTE_SNP != 0 && !caps.sc) {
        return Pte::Fault;
    }
    let addr = e & HAW_MASK & !0xfff;
    // PS (bit 7): ignored in a 4 KiB PTE, a 2 MiB / 1 GiB page at levels 2 / 3 when SLLPS
    // has it, reserved otherwise.
    if level == 1 && e & PTE_PS != 0 && caps.allow.sl_bit7 {
        return Pte::Fault;
    }
    let superpage = level > 1 && e & PTE_PS != 0;
    if superpage {
        let supported = match level {
            2 => caps.sllps & 1 != 0,
            3 => caps.sllps & 2 != 0,
            _ => false,
        };
        let size = 1u64 << (12 + 9 * (level - 1));
        if !supported || addr & (size - 1) != 0 {
            return Pte::Fault;
        }
        return Pte::Leaf { gpa: addr, size };
    }
    if level == 1 {
        Pte::Leaf {
            gpa: addr,
            size: 0x1000,
        }
    } else {
        Pte::Table(addr)
    }
}

/// The second-level walk of `iova` (9.8): the leaf and the permissions accumulated on the
/// way, or None where the walk faults or finds nothing present.
pub fn walk(
    mem: &GuestMemoryMmap,
    levels: u8,
    slptptr: u64,
    iova: u64,
    caps: &Caps,
) -> Option<Translation> {
    if iova >> (12 + 9 * u32::from(levels)) != 0 {
        return None;
    }
    let (mut table, mut r, mut w) = (slptptr, true, true);
    for level in (1..=u64::from(levels)).rev() {
        let shift = 12 + 9 * (level - 1);
        let e = read_u64(mem, table + 8 * ((iova >> shift) & 0x1ff))?;
        if e & (PTE_R | PTE_W) == 0 {
            return None;
        }
        r &= e & PTE_R != 0;
        w &= e & PTE_W != 0;
        match decode_pte(e, level, caps) {
            Pte::Fault => return None,
            Pte::Table(t) => table = t,
            Pte::Leaf { gpa, size } => {
                return Some(Translation {
                    iova_base: iova & !(size - 1),
                    gpa_base: gpa,
                    page_size: size,
                    read: r,
                    write: w,
                })
            }
        }
    }
    None
}

/// The translation a DMA access of `iova` gets through `ctx` (None: blocked).
pub fn dma(
    mem: &GuestMemoryMmap,
    ctx: &RefCtx,
    iova: u64,
    write: bool,
    caps: &Caps,
) -> Option<Translation> {
    match *ctx {
        RefCtx::Blocked => None,
        RefCtx::Usable {
            pass_through: true, ..
        } => Some(identity(iova)),
        RefCtx::Usable {
            levels, slptptr, ..
        } => walk(mem, levels, slptptr, iova, caps).filter(|t| permits(t, write)),
    }
}

/// Untranslated DMA: one 4 KiB page at the same address, read and write.
pub fn identity(iova: u64) -> Translation {
    Translation {
        iova_base: iova & !0xfff,
        gpa_base: iova & !0xfff,
        page_size: 0x1000,
        read: true,
        write: true,
    }
}

pub fn permits(t: &Translation, write: bool) -> bool {
    if write {
        t.write
    } else {
        t.read
    }
}

/// Every leaf of the tables overlapping `[start, end)`, visiting at most `budget` entries;
/// None if the budget ran out (self-referencing tables can map far more than we enumerate).
pub fn leaves(
    mem: &GuestMemoryMmap,
    levels: u8,
    slptptr: u64,
    (start, end): (u64, u64),
    caps: &Caps,
    budget: &mut usize,
) -> Option<Vec<Mapping>> {
    let mut out = Vec::new();
    let end = end.min(1 << (12 + 9 * u32::from(levels)));
    if start < end {
        visit(
            mem,
            (slptptr, u64::from(levels), 0),
            (start, end),
            (true, true),
            caps,
            budget,
            &mut out,
        )?;
    }
    Some(coalesce(out))
}

fn visit(
    mem: &GuestMemoryMmap,
    (table, level, base): (u64, u64, u64),
    (start, end): (u64, u64),
    rw: (bool, bool),
    caps: &Caps,
    budget: &mut usize,
    out: &mut Vec<Mapping>,
) -> Option<()> {
    let shift = 12 + 9 * (level - 1);
    for index in 0..512u64 {
        let lo = base + (index << shift);
        let hi = lo + (1 << shift);
        if hi <= start || lo >= end {
            continue;
        }
        *budget = budget.checked_sub(1)?;
        let Some(e) = read_u64(mem, table + 8 * index) else {
            continue;
        };
        if e & (PTE_R | PTE_W) == 0 {
            continue;
        }
        let rw = (rw.0 && e & PTE_R != 0, rw.1 && e & PTE_W != 0);
        match decode_pte(e, level, caps) {
            Pte::Fault => {}
            Pte::Table(t) => visit(mem, (t, level - 1, lo), (start, end), rw, caps, budget, out)?,
            Pte::Leaf { gpa, size } if rw.0 || rw.1 => out.push(Mapping {
                iova: lo,
                gpa,
                size,
                read: rw.0,
                write: rw.1,
            }),
            Pte::Leaf { .. } => {}
        }
    }
    Some(())
}

/// Sorts and merges ranges that continue each other in IOVA and GPA with equal permissions.
pub fn coalesce(mut v: Vec<Mapping>) -> Vec<Mapping> {
    v.sort_by_key(|m| m.iova);
    let mut out: Vec<Mapping> = Vec::new();
    for m in v {
        if let Some(l) = out.last_mut() {
            if l.iova + l.size == m.iova
                && l.gpa.wrapping_add(l.size) == m.gpa
                && (l.read, l.write) == (m.read, m.write)
            {
                l.size += m.size;
                continue;
            }
        }
        out.push(m);
    }
    out
}

/// The parts of `v` (coalesced) inside `[start, end)`.
pub fn clip(v: &[Mapping], start: u64, end: u64) -> Vec<Mapping> {
    v.iter()
        .filter(|m| m.iova < end && m.iova + m.size > start)
        .map(|m| {
            let s = m.iova.max(start);
            let e = (m.iova + m.size).min(end);
            Mapping {
                iova: s,
                gpa: m.gpa.wrapping_add(s - m.iova),
                size: e - s,
                ..*m
            }
        })
        .collect()
}

/// A queued invalidation descriptor (6.5.2, 128-bit), as the reference decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefDesc {
    /// 6.5.2.1: granularity 1 global, 2 domain, 3 device (SID with function mask FM).
    Context { g: u64, did: u16, sid: u16, fm: u64 },
    /// 6.5.2.2: granularity 1 global, 2 domain, 3 page (ADDR aligned by AM).
    Iotlb {
        g: u64,
        did: u16,
        addr: u64,
        am: u64,
    },
    /// 6.5.2.5: device-TLB invalidation (only with ECAP.DT); it reaches devices' own caches,
    /// none of which the fuzzer models, so it changes nothing the oracle judges.
    DeviceIotlb,
    /// 6.5.2.6: global, or 2^IM entries from IIDX.
    Iec { index: Option<(u32, u32)> },
    /// 6.5.2.8: status write (SW) of DATA to ADDR, interrupt (IF).
    Wait {
        sw: bool,
        irq: bool,
        data: u32,
        addr: u64,
    },
}

/// Decodes a descriptor; None for what must raise an invalidation queue error.
pub fn descriptor(lo: u64, hi: u64, caps: &Caps) -> Option<RefDesc> {
    // Type is bits 3:0 and 11:9 (the latter zero for the types here).
    if lo & (7 << 9) != 0 {
        return None;
    }
    let bits = |v: u64, from: u32, to: u32| (v >> from) & ((1u64 << (to - from + 1)) - 1);
    let g = bits(lo, 4, 5);
    match lo & 0xf {
        // Context: reserved 15:6 (less the type bits), 63:50, all of the upper qword.
        1 if g != 0 && bits(lo, 6, 15) == 0 && bits(lo, 50, 63) == 0 && hi == 0 => {
            Some(RefDesc::Context {
                g,
                did: bits(lo, 16, 31) as u16,
                sid: bits(lo, 32, 47) as u16,
                fm: bits(lo, 48, 49),
            })
        }
        // IOTLB: DR (7), DW (6); reserved 15:8, 63:32; upper: AM 5:0, IH 6, reserved 11:7.
        2 if g != 0 && bits(lo, 8, 15) == 0 && bits(lo, 32, 63) == 0 && bits(hi, 7, 11) == 0 => {
            Some(RefDesc::Iotlb {
                g,
                did: bits(lo, 16, 31) as u16,
                addr: hi & !0xfff,
                am: bits(hi, 0, 5),
            })
        }
        // Device-TLB: only with ECAP.DT; reserved 8:4, 31:21, 51:48; upper: 11:1.
        3 if caps.dt
            && bits(lo, 4, 8) == 0
            && bits(lo, 21, 31) == 0
            && bits(lo, 48, 51) == 0
            && bits(hi, 1, 11) == 0 =>
        {
            Some(RefDesc::DeviceIotlb)
        }
        // IEC: G (4), reserved 26:5, IM 31:27, IIDX 47:32, reserved 63:48 and upper qword.
        4 if bits(lo, 5, 26) == 0 && bits(lo, 48, 63) == 0 && hi == 0 => Some(RefDesc::Iec {
            index: (lo & 0x10 != 0).then_some((bits(lo, 32, 47) as u32, bits(lo, 27, 31) as u32)),
        }),
        // Wait: IF (4), SW (5), FN (6), reserved 31:7 (PD unsupported), data 63:32; address
        // 63:2, reserved 1:0.
        5 if bits(lo, 7, 31) == 0 && hi & 3 == 0 => Some(RefDesc::Wait {
            sw: lo & 0x20 != 0,
            irq: lo & 0x10 != 0,
            data: (lo >> 32) as u32,
            addr: hi,
        }),
        _ => None,
    }
}

/// A remapped-format IRTE (9.10) as the reference decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefIrte {
    lo: u64,
    hi: u64,
    eime: bool,
}

/// Decodes an IRTE; None where the entry is not present or has reserved bits set.
pub fn irte(lo: u64, hi: u64, eime: bool) -> Option<RefIrte> {
    let present = lo & 1 != 0;
    // Reserved: 14:12, IM (15: posted format, unsupported), 31:24, 127:84 (hi 63:20), and in
    // xAPIC mode destination bits 7:0 and 31:16.
    let reserved_lo = (7 << 12) | (1 << 15) | (0xff << 24);
    let xapic_reserved = if eime {
        0
    } else {
        (0xff << 32) | (0xffff << 48)
    };
    let dlm = (lo >> 5) & 7;
    let svt = (hi >> 18) & 3;
    let ok = present
        && lo & (reserved_lo | xapic_reserved) == 0
        && hi >> 20 == 0
        && dlm != 3
        && dlm != 6
        && svt != 3;
    ok.then_some(RefIrte { lo, hi, eime })
}

impl RefIrte {
    /// Source-id verification (9.10 SVT, SQ, SID).
    pub fn permits(&self, source: Bdf) -> bool {
        let sid = self.hi as u16;
        match (self.hi >> 18) & 3 {
            1 => {
                let ignore = [0u16, 0b100, 0b110, 0b111][((self.hi >> 16) & 3) as usize];
                source.raw() | ignore == sid | ignore
            }
            2 => (sid >> 8..=sid & 0xff).contains(&u16::from(source.bus())),
            _ => true,
        }
    }

    /// The compatibility-format MSI the entry produces (address: 0xFEE, destination 19:12
    /// plus x2APIC bits 31:8 in address 63:40, RH 3, DM 2; data: vector, delivery mode,
    /// trigger mode with level asserted).
    pub fn message(&self) -> (u64, u32) {
        let lo = self.lo;
        let dst = if self.eime {
            lo >> 32
        } else {
            (lo >> 40) & 0xff
        };
        let address = 0xfee0_0000
            | ((dst & 0xff) << 12)
            | ((dst >> 8) << 40)
            | (((lo >> 3) & 1) << 3)
            | (((lo >> 2) & 1) << 2);
        let tm = (lo >> 4) & 1;
        let data = ((lo >> 16) & 0xff) | (((lo >> 5) & 7) << 8) | (tm << 15) | (tm << 14);
        (address, data as u32)
    }
}
