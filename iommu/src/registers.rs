//! Register offsets and bit fields of a remapping hardware unit (VT-d spec rev. 4.1 chapter
//! 11), and the capability values minivmm advertises.

/// Version register (11.4.1): major 1, minor 0.
pub const VER_REG: u64 = 0x00;
/// Capability register (11.4.2).
pub const CAP_REG: u64 = 0x08;
/// Extended capability register (11.4.3).
pub const ECAP_REG: u64 = 0x10;
/// Global command register (11.4.4).
pub const GCMD_REG: u64 = 0x18;
/// Global status register (11.4.5).
pub const GSTS_REG: u64 = 0x1c;
/// Root table address register (11.4.6).
pub const RTADDR_REG: u64 = 0x20;
/// Context command register (11.4.7).
pub const CCMD_REG: u64 = 0x28;
/// Fault status register (11.4.9.1).
pub const FSTS_REG: u64 = 0x34;
/// Fault event control, data, address, upper address registers (11.4.9.2-5).
pub const FECTL_REG: u64 = 0x38;
pub const FEDATA_REG: u64 = 0x3c;
pub const FEADDR_REG: u64 = 0x40;
pub const FEUADDR_REG: u64 = 0x44;
/// Advanced fault log register (11.4.9.7), not supported: reads 0.
pub const AFLOG_REG: u64 = 0x58;
/// Protected memory enable register (11.4.10).
pub const PMEN_REG: u64 = 0x64;
/// Invalidation queue head, tail, address registers (11.4.11.1-3).
pub const IQH_REG: u64 = 0x80;
pub const IQT_REG: u64 = 0x88;
pub const IQA_REG: u64 = 0x90;
/// Invalidation completion status register (11.4.11.4).
pub const ICS_REG: u64 = 0x9c;
/// Invalidation event control, data, address, upper address registers (11.4.11.5-8).
pub const IECTL_REG: u64 = 0xa0;
pub const IEDATA_REG: u64 = 0xa4;
pub const IEADDR_REG: u64 = 0xa8;
pub const IEUADDR_REG: u64 = 0xac;
/// Interrupt remapping table address register (11.4.12).
pub const IRTA_REG: u64 = 0xb8;
/// IOTLB registers at the IRO offset (11.4.8): invalidate address, then IOTLB invalidate.
pub const IVA_REG: u64 = 0x100;
pub const IOTLB_REG: u64 = 0x108;
/// Fault recording registers at the FRO offset (11.4.14), 16 bytes each.
pub const FRCD_REG: u64 = 0x200;
/// Number of fault recording registers.
pub const NUM_FRCD: usize = 8;
/// Size of the register set.
pub const REG_SIZE: u64 = 0x1000;

/// VER: version 1.0.
pub const VER_VALUE: u32 = 0x10;

/// GCMD/GSTS bits (11.4.4, 11.4.5).
pub const GCMD_TE: u32 = 1 << 31;
pub const GCMD_SRTP: u32 = 1 << 30;
pub const GCMD_SFL: u32 = 1 << 29;
pub const GCMD_EAFL: u32 = 1 << 28;
pub const GCMD_WBF: u32 = 1 << 27;
pub const GCMD_QIE: u32 = 1 << 26;
pub const GCMD_IRE: u32 = 1 << 25;
pub const GCMD_SIRTP: u32 = 1 << 24;
pub const GCMD_CFI: u32 = 1 << 23;
/// GSTS bits mirror GCMD: TES, RTPS, FLS, AFLS, WBFS, QIES, IRES, IRTPS, CFIS.
pub const GSTS_TES: u32 = GCMD_TE;
pub const GSTS_RTPS: u32 = GCMD_SRTP;
pub const GSTS_QIES: u32 = GCMD_QIE;
pub const GSTS_IRES: u32 = GCMD_IRE;
pub const GSTS_IRTPS: u32 = GCMD_SIRTP;
pub const GSTS_CFIS: u32 = GCMD_CFI;
/// Commands that are one-shot (their status bit is set on completion, not a state).
pub const GCMD_ONE_SHOT: u32 = GCMD_SRTP | GCMD_SFL | GCMD_WBF | GCMD_SIRTP;

/// RTADDR: root table address (bits 63:12) and translation table mode (bits 11:10; 00 legacy).
pub const RTADDR_ADDR_MASK: u64 = !0xfff;
pub const RTADDR_TTM_MASK: u64 = 0x3 << 10;

/// CCMD fields (11.4.7): ICC (63), CIRG (62:61), CAIG (60:59), FM (33:32), SID (31:16), DID.
pub const CCMD_ICC: u64 = 1 << 63;
pub const CCMD_CIRG_SHIFT: u64 = 61;
pub const CCMD_CAIG_SHIFT: u64 = 59;

/// FSTS bits (11.4.9.1): PFO (0, RW1C), PPF (1, RO), IQE (4), ICE (5), ITE (6) (RW1C), FRI.
pub const FSTS_PFO: u32 = 1 << 0;
pub const FSTS_PPF: u32 = 1 << 1;
pub const FSTS_IQE: u32 = 1 << 4;
pub const FSTS_ICE: u32 = 1 << 5;
pub const FSTS_ITE: u32 = 1 << 6;
pub const FSTS_FRI_SHIFT: u32 = 8;
/// FSTS bits software clears by writing 1.
pub const FSTS_RW1C: u32 = FSTS_PFO | FSTS_IQE | FSTS_ICE | FSTS_ITE;

/// FECTL/IECTL bits: interrupt mask (31), interrupt pending (30, RO).
pub const ECTL_IM: u32 = 1 << 31;
pub const ECTL_IP: u32 = 1 << 30;

/// IOTLB register fields (11.4.8.1): IVT (63), IIRG (61:60), IAIG (58:57), DR (49), DW (48),
/// DID (47:32).
pub const IOTLB_IVT: u64 = 1 << 63;
pub const IOTLB_IIRG_SHIFT: u64 = 60;
pub const IOTLB_IAIG_SHIFT: u64 = 57;
pub const IOTLB_DID_SHIFT: u64 = 32;
/// IVA fields (11.4.8.2): address (63:12), IH (6), AM (5:0).
pub const IVA_ADDR_MASK: u64 = !0xfff;
pub const IVA_AM_MASK: u64 = 0x3f;

/// IQA fields (11.4.11.3): base (63:12), DW (11), QS (2:0).
pub const IQA_ADDR_MASK: u64 = !0xfff;
pub const IQA_DW_256: u64 = 1 << 11;
pub const IQA_QS_MASK: u64 = 0x7;
/// IQH/IQT hold a 128-bit descriptor index in bits 18:4.
pub const IQ_INDEX_SHIFT: u64 = 4;
pub const IQ_INDEX_MASK: u64 = 0x7fff << 4;
/// ICS: invalidation wait descriptor complete (bit 0, RW1C).
pub const ICS_IWC: u32 = 1 << 0;

/// PMEN: enable protected memory (31) and its status (0): not supported, status stays 0.
pub const PMEN_EPM: u32 = 1 << 31;

/// IRTA fields (11.4.12): base (63:12), EIME (11), S (3:0): 2^(S+1) entries.
pub const IRTA_ADDR_MASK: u64 = !0xfff;
pub const IRTA_EIME: u64 = 1 << 11;
pub const IRTA_S_MASK: u64 = 0xf;

/// FRCD high qword fields (11.4.14): F (127), T (126), FR (103:96), SID (79:64).
pub const FRCD_F: u64 = 1 << 63;
pub const FRCD_T_READ: u64 = 1 << 62;
pub const FRCD_FR_SHIFT: u64 = 32;

/// Capability bits and fields (11.4.2).
pub mod cap {
    /// ND: number of domains supported; 2 = 256... 6 = 65536 (we use 16-bit domain ids: 6).
    pub const ND_16BIT: u64 = 6;
    /// SAGAW bit 1: 39-bit (3-level), bit 2: 48-bit (4-level); field at bits 12:8.
    pub const SAGAW_SHIFT: u64 = 8;
    pub const SAGAW_39: u64 = 1 << 1;
    pub const SAGAW_48: u64 = 1 << 2;
    /// MGAW (21:16): maximum guest address width - 1.
    pub const MGAW_SHIFT: u64 = 16;
    /// ZLR (22): zero-length reads supported.
    pub const ZLR: u64 = 1 << 22;
    /// FRO (33:24): fault recording register offset / 16.
    pub const FRO_SHIFT: u64 = 24;
    /// SLLPS (37:34): bit 0 2 MiB, bit 1 1 GiB pages.
    pub const SLLPS_SHIFT: u64 = 34;
    pub const SLLPS_2M: u64 = 1;
    pub const SLLPS_1G: u64 = 2;
    /// PSI (39): page-selective invalidation.
    pub const PSI: u64 = 1 << 39;
    /// NFR (47:40): number of fault recording registers - 1.
    pub const NFR_SHIFT: u64 = 40;
    /// MAMV (53:48): maximum address mask value.
    pub const MAMV_SHIFT: u64 = 48;
    pub const MAMV: u64 = 9;
    /// DWD (54), DRD (55): write and read draining.
    pub const DWD: u64 = 1 << 54;
    pub const DRD: u64 = 1 << 55;
    /// CM (7): caching mode.
    pub const CM: u64 = 1 << 7;
}

/// Extended capability bits (11.4.3).
pub mod ecap {
    /// C (0): page-walk coherency.
    pub const C: u64 = 1 << 0;
    /// QI (1): queued invalidation.
    pub const QI: u64 = 1 << 1;
    /// DT (2): device-TLB.
    pub const DT: u64 = 1 << 2;
    /// IR (3): interrupt remapping.
    pub const IR: u64 = 1 << 3;
    /// EIM (4): extended interrupt mode (x2APIC).
    pub const EIM: u64 = 1 << 4;
    /// PT (6): pass-through.
    pub const PT: u64 = 1 << 6;
    /// IRO (17:8): IOTLB register offset / 16.
    pub const IRO_SHIFT: u64 = 8;
    /// MHMV (23:20): maximum handle mask value.
    pub const MHMV_SHIFT: u64 = 20;
    pub const MHMV: u64 = 0xf;
}
