//! The seam through which a device model reaches guest memory by DMA. The VMM implements it:
//! through the VT-d model when an IOMMU is configured (faults are recorded there), or with
//! IOVA = GPA otherwise.

use iommu::{Bdf, Iova};

/// Why a DMA did not happen. The device model treats every variant as "transfer aborted":
/// nothing was written to or read from guest memory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DmaError {
    #[error("DMA to {iova} by {requester} blocked by the IOMMU")]
    Blocked { requester: Bdf, iova: Iova },
    #[error("DMA at {iova} by {requester} is outside guest memory")]
    OutOfRange { requester: Bdf, iova: Iova },
}

/// Device-initiated memory access, as the device sees it (addresses are IOVAs).
pub trait DmaAccess: Send + Sync {
    /// Reads `buf.len()` bytes at `iova` on behalf of requester `source`.
    fn dma_read(&self, source: Bdf, iova: Iova, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Writes `buf` at `iova` on behalf of requester `source`.
    fn dma_write(&self, source: Bdf, iova: Iova, buf: &[u8]) -> Result<(), DmaError>;
}
