//! Legacy-mode DMA remapping lookups (VT-d spec 3.4 root and context entries, 3.6 and 9.8
//! second-level paging), stateless: caches belong to the unit. Every table entry is
//! untrusted; every failure is a spec fault reason.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::{Bdf, FaultReason, Iova};

/// Root entry (9.1): present bit and context-table pointer; bits 11:1 reserved.
const ROOT_P: u64 = 1 << 0;
const ROOT_RESERVED_LO: u64 = 0xffe;
/// Context entry (9.3): P (0), FPD (1), TT (3:2), SLPTPTR (63:12); high: AW (2:0), DID (23:8).
const CTX_P: u64 = 1 << 0;
const CTX_FPD: u64 = 1 << 1;
const CTX_TT_SHIFT: u64 = 2;
const CTX_RESERVED_LO: u64 = 0xff0;
const CTX_AW_MASK: u64 = 0x7;
const CTX_DID_SHIFT: u64 = 8;
const CTX_RESERVED_HI: u64 = !0x00ff_ff7f;
/// Second-level paging entry (9.8): R (0), W (1), PS (7), address (HAW-1:12).
const SL_R: u64 = 1 << 0;
const SL_W: u64 = 1 << 1;
const SL_PS: u64 = 1 << 7;
/// Host address width: guest-physical addresses in tables have at most 48 bits.
const HAW_BITS: u64 = 48;
const ADDR_MASK: u64 = ((1 << HAW_BITS) - 1) & !0xfff;
/// Bits 51:HAW of an entry are reserved (bits 63:52 are ignored or software-available).
const SL_RESERVED_ADDR: u64 = ((1 << 52) - 1) & !((1 << HAW_BITS) - 1);
/// SNP (bit 11, 9.8) is reserved without snoop control (ECAP.SC = 0, as here); QEMU
/// (`VTD_SPTE_PAGE_L*_RSVD_MASK`) checks it at every level.
const SL_SNP: u64 = 1 << 11;
const PAGE_SHIFT: u64 = 12;
const LEVEL_STRIDE: u64 = 9;

/// What the unit supports, for validating guest tables.
#[derive(Clone, Copy, Debug)]
pub struct WalkConfig {
    /// Adjusted guest address widths supported (CAP.SAGAW bits: bit 1 39-bit, bit 2 48-bit).
    pub sagaw: u64,
    /// Supported superpages (CAP.SLLPS bits: bit 0 2 MiB, bit 1 1 GiB).
    pub sllps: u64,
    /// ECAP.PT.
    pub pass_through: bool,
    /// ECAP.DT: without it, context TT=01b is a reserved encoding (9.3).
    pub device_tlb: bool,
}

/// Context entry translation types (9.3 TT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TranslationType {
    /// 00b: untranslated requests are translated.
    Untranslated,
    /// 01b: as 00b, and translated requests / translation requests are allowed (device-TLB).
    DeviceTlb,
    /// 10b: untranslated requests pass through untranslated.
    PassThrough,
}

/// A decoded, validated context entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextEntry {
    pub did: u16,
    pub tt: TranslationType,
    /// Page-table levels: 3 (39-bit) or 4 (48-bit).
    pub levels: u8,
    pub slptptr: u64,
    /// Fault processing disable: faults for this device are not recorded.
    pub fpd: bool,
}

impl ContextEntry {
    /// Input addresses must be below 2^aw.
    pub fn address_width(&self) -> u64 {
        PAGE_SHIFT + LEVEL_STRIDE * u64::from(self.levels)
    }
}

/// A DMA remapping fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    pub reason: FaultReason,
    /// Whether the context entry asked for faults to go unrecorded.
    pub fpd: bool,
}

fn fault(reason: FaultReason) -> DmaFault {
    DmaFault { reason, fpd: false }
}

/// The result of a walk: the page that maps the IOVA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub iova_base: u64,
    pub gpa_base: u64,
    pub page_size: u64,
    pub read: bool,
    pub write: bool,
}

impl Translation {
    /// The guest-physical address of `iova` (which must lie in this page).
    pub fn gpa(&self, iova: Iova) -> GuestAddress {
        GuestAddress(self.gpa_base + (iova.0 - self.iova_base))
    }

    /// Whether an access of the given kind is allowed.
    pub fn permits(&self, write: bool) -> bool {
        if write {
            self.write
        } else {
            self.read
        }
    }
}

fn read_u64<M: GuestMemoryBackend>(
    mem: &M,
    addr: u64,
    on_error: FaultReason,
) -> Result<u64, DmaFault> {
    mem.read_obj::<u64>(GuestAddress(addr))
        .map_err(|_| fault(on_error))
}

/// Reads and validates the context entry of `source` under the root table at `rtaddr`.
pub fn lookup_context<M: GuestMemoryBackend>(
    mem: &M,
    rtaddr: u64,
    source: Bdf,
    cfg: &WalkConfig,
) -> Result<ContextEntry, DmaFault> {
    let root_addr = (rtaddr & ADDR_MASK) + u64::from(source.bus()) * 16;
    let root = read_u64(mem, root_addr, FaultReason::RootTableAccess)?;
    if root & ROOT_P == 0 {
        return Err(fault(FaultReason::RootEntryNotPresent));
    }
    let root_hi = read_u64(mem, root_addr + 8, FaultReason::RootTableAccess)?;
    if root & ROOT_RESERVED_LO != 0 || root_hi != 0 || root & !ADDR_MASK & !0xfff != 0 {
        return Err(fault(FaultReason::RootEntryReserved));
    }
    let ctx_addr = (root & ADDR_MASK) + u64::from(source.devfn()) * 16;
    let lo = read_u64(mem, ctx_addr, FaultReason::ContextTableAccess)?;
    if lo & CTX_P == 0 {
        return Err(fault(FaultReason::ContextEntryNotPresent));
    }
    let hi = read_u64(mem, ctx_addr + 8, FaultReason::ContextTableAccess)?;
    let fpd = lo & CTX_FPD != 0;
    let with_fpd = |reason| DmaFault { reason, fpd };
    if lo & CTX_RESERVED_LO != 0 || hi & CTX_RESERVED_HI != 0 || lo & !ADDR_MASK & !0xfff != 0 {
        return Err(with_fpd(FaultReason::ContextEntryReserved));
    }
    let tt = match (lo >> CTX_TT_SHIFT) & 0x3 {
        0 => TranslationType::Untranslated,
        1 if cfg.device_tlb => TranslationType::DeviceTlb,
        2 if cfg.pass_through => TranslationType::PassThrough,
        _ => return Err(with_fpd(FaultReason::ContextEntryInvalid)),
    };
    let aw = hi & CTX_AW_MASK;
    let levels = match aw {
        1 | 2 if cfg.sagaw & (1 << aw) != 0 => aw as u8 + 2,
        // With pass-through the AW field is ignored... except it must still be supported
        // when translation could apply; accept any value for pass-through.
        _ if tt == TranslationType::PassThrough => 4,
        _ => return Err(with_fpd(FaultReason::ContextEntryInvalid)),
    };
    Ok(ContextEntry {
        did: (hi >> CTX_DID_SHIFT) as u16,
        tt,
        levels,
        slptptr: lo & ADDR_MASK,
        fpd,
    })
}

/// Checks the reserved bits of a present second-level entry at `level` (9.8): whether it
/// is a superpage leaf, or None if reserved bits are set. PS (bit 7) is a page-size bit at
/// levels 2 and 3 (reserved there without CAP.SLLPS support), reserved at level 4, and
/// ignored in a 4 KiB leaf (level 1).
pub fn sl_entry_kind(e: u64, level: u64, cfg: &WalkConfig) -> Option<bool> {
    if e & (SL_RESERVED_ADDR | SL_SNP) != 0 {
        return None;
    }
    if level == 1 || e & SL_PS == 0 {
        return Some(false);
    }
    let allowed = match level {
        2 => cfg.sllps & 1 != 0,
        3 => cfg.sllps & 2 != 0,
        _ => false,
    };
    allowed.then_some(true)
}

/// Walks the second-level tables of `ctx` for `iova`; `write` selects the permission the
/// fault reason reports when an entry is not present or lacks the permission.
pub fn translate<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &ContextEntry,
    iova: Iova,
    write: bool,
    cfg: &WalkConfig,
) -> Result<Translation, DmaFault> {
    let with_fpd = |reason| DmaFault {
        reason,
        fpd: ctx.fpd,
    };
    if ctx.tt == TranslationType::PassThrough {
        return Ok(Translation {
            iova_base: iova.0 & !0xfff,
            gpa_base: iova.0 & !0xfff,
            page_size: 1 << PAGE_SHIFT,
            read: true,
            write: true,
        });
    }
    if iova.0 >> ctx.address_width() != 0 {
        return Err(with_fpd(FaultReason::AddressBeyondMgaw));
    }
    let denied = if write {
        FaultReason::WriteDenied
    } else {
        FaultReason::ReadDenied
    };
    let mut table = ctx.slptptr;
    let (mut r, mut w) = (true, true);
    for level in (1..=u64::from(ctx.levels)).rev() {
        let shift = PAGE_SHIFT + LEVEL_STRIDE * (level - 1);
        let index = (iova.0 >> shift) & 0x1ff;
        let e = read_u64(mem, table + index * 8, FaultReason::PagingEntryAccess)
            .map_err(|f| with_fpd(f.reason))?;
        if e & (SL_R | SL_W) == 0 {
            return Err(with_fpd(denied));
        }
        let Some(superpage) = sl_entry_kind(e, level, cfg) else {
            return Err(with_fpd(FaultReason::PagingEntryReserved));
        };
        r &= e & SL_R != 0;
        w &= e & SL_W != 0;
        if level == 1 || superpage {
            let size = 1u64 << shift;
            let gpa_base = e & ADDR_MASK & !(size - 1);
            if (e & ADDR_MASK) & (size - 1) != 0 {
                // Address bits below a superpage's size are reserved.
                return Err(with_fpd(FaultReason::PagingEntryReserved));
            }
            let t = Translation {
                iova_base: iova.0 & !(size - 1),
                gpa_base,
                page_size: size,
                read: r,
                write: w,
            };
            if !t.permits(write) {
                return Err(with_fpd(denied));
            }
            return Ok(t);
        }
        table = e & ADDR_MASK;
    }
    Err(with_fpd(denied))
}

#[cfg(test)]
mod tests;
