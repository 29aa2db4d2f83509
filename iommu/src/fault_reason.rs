//! Non-recoverable fault reason encodings (VT-d spec section 7.1.3 and appendix "Fault Reason
//! Encodings"), shared by DMA remapping and interrupt remapping.

/// Why a DMA or interrupt request was blocked. The discriminant is the FR field value recorded
/// in a fault recording register (VT-d spec 11.4.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[repr(u8)]
pub enum FaultReason {
    /// 01h: root entry used for the request has P clear.
    RootEntryNotPresent = 0x01,
    /// 02h: context entry used for the request has P clear.
    ContextEntryNotPresent = 0x02,
    /// 03h: invalid context-entry programming (AW, TT or similar).
    ContextEntryInvalid = 0x03,
    /// 04h: input address above the supported/configured address width.
    AddressBeyondMgaw = 0x04,
    /// 05h: write to a page without W permission.
    WriteDenied = 0x05,
    /// 06h: read from a page without R permission.
    ReadDenied = 0x06,
    /// 07h: access to a second-level paging entry failed (e.g. beyond host address width).
    PagingEntryAccess = 0x07,
    /// 08h: access to the root table failed.
    RootTableAccess = 0x08,
    /// 09h: access to a context table failed.
    ContextTableAccess = 0x09,
    /// 0Ah: reserved bits set in a present root entry.
    RootEntryReserved = 0x0a,
    /// 0Bh: reserved bits set in a present context entry.
    ContextEntryReserved = 0x0b,
    /// 0Ch: reserved bits set in a second-level paging entry with R or W set.
    PagingEntryReserved = 0x0c,
    /// 0Dh: request blocked by the context entry's translation type.
    TranslationTypeBlocked = 0x0d,
    /// 20h: reserved bits set in a remappable-format interrupt request.
    IrRequestReserved = 0x20,
    /// 21h: interrupt index beyond the interrupt remapping table size.
    IrIndexOutOfRange = 0x21,
    /// 22h: IRTE not present.
    IrteNotPresent = 0x22,
    /// 23h: access to the interrupt remapping table failed.
    IrTableAccess = 0x23,
    /// 24h: reserved bits set in a present IRTE.
    IrteReserved = 0x24,
    /// 25h: compatibility-format interrupt blocked (EIME set or CFIS clear).
    IrCompatBlocked = 0x25,
    /// 26h: source-id verification (SID/SQ/SVT) failed.
    IrSourceIdInvalid = 0x26,
}

impl FaultReason {
    /// The 8-bit FR code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Whether this reason belongs to interrupt remapping (codes 20h-2Fh).
    pub const fn is_interrupt(self) -> bool {
        (self as u8) >= 0x20
    }
}
