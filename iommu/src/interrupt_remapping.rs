//! Interrupt remapping (VT-d spec chapter 5 and 9.10): decoding interrupt requests in
//! compatibility and remappable format, interrupt remapping table entries (IRTEs), source-id
//! validation, and the compatibility-format MSI a remapped interrupt becomes. Stateless: the
//! interrupt entry cache belongs to the unit. Every table entry is untrusted.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::registers::{IRTA_ADDR_MASK, IRTA_EIME, IRTA_S_MASK};
use crate::{Bdf, FaultReason};

/// Interrupt address range: bits 31:20 of an interrupt request's address are 0xFEE (5.1.1).
pub const INTERRUPT_ADDRESS_BASE: u64 = 0xfee0_0000;
/// Remappable-format address fields (5.1.2.2): interrupt format (4), SHV (3), handle[15] (2),
/// handle[14:0] (19:5).
const ADDR_INTERRUPT_FORMAT: u64 = 1 << 4;
const ADDR_SHV: u64 = 1 << 3;
const ADDR_HANDLE_15: u64 = 1 << 2;
const ADDR_HANDLE_SHIFT: u64 = 5;
/// Compatibility-format MSI fields (Intel SDM 11.11): destination (19:12), RH (3), DM (2);
/// data: vector (7:0), delivery mode (10:8), level (14), trigger mode (15).
const MSI_DEST_SHIFT: u64 = 12;
const MSI_RH: u64 = 1 << 3;
const MSI_DM: u64 = 1 << 2;
const MSI_DATA_DELIVERY_SHIFT: u32 = 8;
const MSI_DATA_LEVEL_ASSERT: u32 = 1 << 14;
const MSI_DATA_TRIGGER_LEVEL: u32 = 1 << 15;

/// IRTE low qword (9.10): P (0), FPD (1), DM (2), RH (3), TM (4), DLM (7:5), AVAIL (11:8),
/// reserved (14:12), IM (15), V (23:16), reserved (31:24), DST (63:32).
const IRTE_P: u64 = 1 << 0;
const IRTE_FPD: u64 = 1 << 1;
const IRTE_DM: u64 = 1 << 2;
const IRTE_RH: u64 = 1 << 3;
const IRTE_TM: u64 = 1 << 4;
const IRTE_DLM_SHIFT: u64 = 5;
const IRTE_IM: u64 = 1 << 15;
const IRTE_RESERVED_LO: u64 = (0x7 << 12) | (0xff << 24);
/// In xAPIC mode (EIME = 0) only DST bits 15:8 (entry bits 47:40) hold the APIC ID.
const IRTE_XAPIC_DST_RESERVED: u64 = (0xff << 32) | (0xffff << 48);
/// IRTE high qword: SID (15:0), SQ (17:16), SVT (19:18), reserved (63:20).
const IRTE_HI_RESERVED: u64 = !0xf_ffff;
/// Bytes per IRTE (9.10).
const IRTE_SIZE: u64 = 16;
/// Delivery modes an IRTE may carry: fixed, lowest priority, SMI, NMI, INIT, ExtINT.
const VALID_DELIVERY_MODES: [u8; 6] = [0, 1, 2, 4, 5, 7];

/// An interrupt request as it reaches the remapping unit: a DWORD write of `data` to
/// `address` (in 0xFEEx_xxxx) by requester `source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptRequest {
    pub address: u64,
    pub data: u32,
    pub source: Bdf,
}

impl InterruptRequest {
    /// Whether the request uses the remappable format (address bit 4).
    pub fn is_remappable(&self) -> bool {
        self.address & ADDR_INTERRUPT_FORMAT != 0
    }

    /// The interrupt index a remappable request selects: handle, plus subhandle when SHV
    /// is set (5.1.2.2). The sum is not truncated: an index past the largest table (up to
    /// 0x1fffe) is out of range (fault 21h, 5.1.4), never a wrap to a low entry.
    pub fn index(&self) -> u32 {
        let handle = ((self.address >> ADDR_HANDLE_SHIFT) & 0x7fff) as u32
            | (u32::from(self.address & ADDR_HANDLE_15 != 0) << 15);
        if self.address & ADDR_SHV != 0 {
            handle + (self.data & 0xffff)
        } else {
            handle
        }
    }
}

/// Source validation type (9.10 SVT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceValidation {
    /// 00b: no verification.
    None,
    /// 01b: requester id must equal SID, ignoring the function bits SQ selects.
    RequesterId { sid: u16, sq: u8 },
    /// 10b: the requester's bus must lie in SID[15:8]..=SID[7:0].
    BusRange { first: u8, last: u8 },
}

/// A decoded, validated IRTE in remapped (not posted) mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irte {
    pub fpd: bool,
    /// Destination mode: logical (true) or physical.
    pub logical: bool,
    pub redirection_hint: bool,
    pub level_triggered: bool,
    /// Delivery mode (000 fixed, 001 lowest priority, ...).
    pub delivery_mode: u8,
    pub vector: u8,
    /// APIC ID: 8 bits in xAPIC mode, 32 in x2APIC mode.
    pub destination: u32,
    pub validation: SourceValidation,
}

/// Why an interrupt request was blocked, and whether the fault is to be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptFault {
    pub reason: FaultReason,
    /// The interrupt index, when the request carried one (it goes in the fault record).
    pub index: Option<u16>,
    /// The IRTE asked for faults to go unrecorded.
    pub fpd: bool,
}

fn fault(reason: FaultReason, index: Option<u16>) -> InterruptFault {
    InterruptFault {
        reason,
        index,
        fpd: false,
    }
}

/// The number of entries in the interrupt remapping table IRTA describes: 2^(S+1).
pub fn table_entries(irta: u64) -> u32 {
    2u32 << (irta & IRTA_S_MASK)
}

/// Decodes a present IRTE (low, high qwords) for a table in extended (x2APIC) mode or not.
pub fn decode(lo: u64, hi: u64, eime: bool) -> Result<Irte, FaultReason> {
    if lo & IRTE_P == 0 {
        return Err(FaultReason::IrteNotPresent);
    }
    // Posted mode (IM = 1) is not supported (ECAP.PI = 0), so the bit is reserved.
    if lo & (IRTE_RESERVED_LO | IRTE_IM) != 0 || hi & IRTE_HI_RESERVED != 0 {
        return Err(FaultReason::IrteReserved);
    }
    if !eime && lo & IRTE_XAPIC_DST_RESERVED != 0 {
        return Err(FaultReason::IrteReserved);
    }
    let delivery_mode = ((lo >> IRTE_DLM_SHIFT) & 0x7) as u8;
    if !VALID_DELIVERY_MODES.contains(&delivery_mode) {
        return Err(FaultReason::IrteReserved);
    }
    let dst = (lo >> 32) as u32;
    let sid = hi as u16;
    let validation = match (hi >> 18) & 0x3 {
        0 => SourceValidation::None,
        1 => SourceValidation::RequesterId {
            sid,
            sq: ((hi >> 16) & 0x3) as u8,
        },
        2 => SourceValidation::BusRange {
            first: (sid >> 8) as u8,
            last: sid as u8,
        },
        _ => return Err(FaultReason::IrteReserved),
    };
    Ok(Irte {
        fpd: lo & IRTE_FPD != 0,
        logical: lo & IRTE_DM != 0,
        redirection_hint: lo & IRTE_RH != 0,
        level_triggered: lo & IRTE_TM != 0,
        delivery_mode,
        vector: (lo >> 16) as u8,
        destination: if eime { dst } else { (dst >> 8) & 0xff },
        validation,
    })
}

impl Irte {
    /// Whether `source` may use this entry (9.10 SVT/SQ/SID).
    pub fn permits(&self, source: Bdf) -> bool {
        match self.validation {
            SourceValidation::None => true,
            SourceValidation::RequesterId { sid, sq } => {
                // SQ 01b ignores function bit 2, 10b bits 2:1, 11b bits 2:0.
                let ignore: u16 = match sq {
                    1 => 0x4,
                    2 => 0x6,
                    3 => 0x7,
                    _ => 0,
                };
                source.raw() & !ignore == sid & !ignore
            }
            SourceValidation::BusRange { first, last } => (first..=last).contains(&source.bus()),
        }
    }

    /// The interrupt this entry produces, as a compatibility-format MSI a local APIC (or
    /// KVM) accepts. An x2APIC destination's bits 31:8 go in address bits 63:40 (the
    /// convention of KVM's X2APIC_API).
    pub fn message(&self) -> (u64, u32) {
        let dest = u64::from(self.destination);
        let mut address =
            INTERRUPT_ADDRESS_BASE | ((dest & 0xff) << MSI_DEST_SHIFT) | ((dest & !0xff) << 32);
        if self.redirection_hint {
            address |= MSI_RH;
        }
        if self.logical {
            address |= MSI_DM;
        }
        let mut data =
            u32::from(self.vector) | (u32::from(self.delivery_mode) << MSI_DATA_DELIVERY_SHIFT);
        if self.level_triggered {
            data |= MSI_DATA_TRIGGER_LEVEL | MSI_DATA_LEVEL_ASSERT;
        }
        (address, data)
    }
}

/// Reads IRTE `index` of the table `irta` describes (without validating the requester).
pub fn read_irte<M: GuestMemoryBackend>(
    mem: &M,
    irta: u64,
    index: u32,
) -> Result<Irte, InterruptFault> {
    let idx = Some(index as u16);
    if index >= table_entries(irta) {
        return Err(fault(FaultReason::IrIndexOutOfRange, idx));
    }
    // A table that would run past the top of the address space cannot be read (23h).
    let read = |offset: u64| {
        (irta & IRTA_ADDR_MASK)
            .checked_add(u64::from(index) * IRTE_SIZE + offset)
            .and_then(|a| mem.read_obj::<u64>(GuestAddress(a)).ok())
            .ok_or(fault(FaultReason::IrTableAccess, idx))
    };
    let lo = read(0)?;
    let hi = read(8)?;
    decode(lo, hi, irta & IRTA_EIME != 0).map_err(|reason| InterruptFault {
        reason,
        index: idx,
        fpd: lo & IRTE_FPD != 0,
    })
}

/// Checks a remappable request's own fields (5.1.2.2): the address must be in the interrupt
/// range. Returns the index it selects.
pub fn request_index(req: &InterruptRequest) -> Result<u32, InterruptFault> {
    if req.address & 0xfff0_0000 != INTERRUPT_ADDRESS_BASE || req.address >> 32 != 0 {
        return Err(fault(FaultReason::IrRequestReserved, None));
    }
    Ok(req.index())
}

/// The compatibility-format fault: such requests are blocked once remapping is on, unless
/// CFIS is set and the table is not in x2APIC mode (5.1.2.1).
pub fn compatibility_allowed(cfis: bool, irta: u64) -> bool {
    cfis && irta & IRTA_EIME == 0
}

/// The fault for a blocked compatibility-format request.
pub fn compatibility_fault() -> InterruptFault {
    fault(FaultReason::IrCompatBlocked, None)
}

/// The fault for a request `irte` does not permit from its requester.
pub fn source_fault(irte: &Irte, index: u32) -> InterruptFault {
    InterruptFault {
        reason: FaultReason::IrSourceIdInvalid,
        index: Some(index as u16),
        fpd: irte.fpd,
    }
}

#[cfg(test)]
mod tests;
