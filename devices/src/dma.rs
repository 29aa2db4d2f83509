//! DMA as scatter-gather translation: a device asks for an IOVA range to read or write and
//! gets the guest-physical runs behind it (or a fault), through a [`Translate`] (the VT-d unit
//! when the VM has one, [`Identity`] otherwise) and the device's own translation cache
//! ([`DeviceIotlb`]). A cache hit takes only the cache's read lock; a miss asks the
//! translator (the VMM locks the VT-d unit there) and keeps the whole page or superpage it
//! returns. The unit drops cached translations synchronously on the guest's invalidations
//! ([`IotlbSet`] implements [`iommu::TranslationCaches`]).
//!
//! The copy-based [`DmaAccess`] that edu uses is [`DeviceDma::read`] and
//! [`DeviceDma::write`]: every page of a transfer is translated and found in guest memory
//! before a byte moves.

use std::sync::Arc;

use iommu::{Bdf, Iova};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, VolatileSlice,
};

mod iotlb;
pub use iotlb::{DeviceIotlb, IotlbSet, IotlbStats, DEVICE_IOTLB_ENTRIES};

/// Why a DMA did not happen. The device model treats every variant as "transfer aborted":
/// nothing was written to or read from guest memory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DmaError {
    #[error("DMA to {iova} by {requester} blocked by the IOMMU")]
    Blocked { requester: Bdf, iova: Iova },
    #[error("DMA at {iova} by {requester} is outside guest memory")]
    OutOfRange { requester: Bdf, iova: Iova },
    #[error("DMA by {requester} through the DMA handle of {owner}")]
    ForeignRequester { requester: Bdf, owner: Bdf },
}

/// Device-initiated memory access, as the device sees it (addresses are IOVAs).
pub trait DmaAccess: Send + Sync {
    /// Reads `buf.len()` bytes at `iova` on behalf of requester `source`.
    fn dma_read(&self, source: Bdf, iova: Iova, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Writes `buf` at `iova` on behalf of requester `source`.
    fn dma_write(&self, source: Bdf, iova: Iova, buf: &[u8]) -> Result<(), DmaError>;
}

/// What a DMA does to guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The device reads guest memory.
    Read,
    /// The device writes guest memory.
    Write,
}

/// A page or superpage a translator resolved: `[iova_base, iova_base + size)` maps to
/// `[gpa_base, gpa_base + size)` with these permissions. `domain` is the VT-d domain that
/// translated it (None when nothing did: translation off, or no IOMMU), which the unit's
/// invalidations name ([`iommu::CacheInvalidation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTranslation {
    pub iova_base: u64,
    pub gpa_base: u64,
    pub size: u64,
    pub read: bool,
    pub write: bool,
    pub domain: Option<u16>,
}

impl PageTranslation {
    /// Whether `iova` lies in the page.
    pub fn contains(&self, iova: u64) -> bool {
        iova >= self.iova_base && iova - self.iova_base < self.size
    }

    /// The last IOVA of the page (no overflow near 2^64).
    pub fn last(&self) -> u64 {
        self.iova_base.saturating_add(self.size.saturating_sub(1))
    }

    pub fn permits(&self, access: Access) -> bool {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
        }
    }
}

/// Resolves one IOVA of a device: the VT-d unit, or [`Identity`]. A refusal is final for
/// the request (the unit has recorded its fault) and is never cached.
pub trait Translate: Send + Sync {
    /// The page containing `iova` as `source` may use it for `access`.
    fn translate(
        &self,
        source: Bdf,
        iova: Iova,
        access: Access,
    ) -> Result<PageTranslation, DmaError>;
}

/// No IOMMU: IOVA = guest-physical address, every access allowed. Pages are 1 GiB, so a
/// device's cache holds one entry per GiB it touches.
pub struct Identity;

/// The page [`Identity`] hands out (the largest VT-d second-level leaf, 9.8).
const IDENTITY_PAGE: u64 = 1 << 30;

impl Translate for Identity {
    fn translate(&self, _: Bdf, iova: Iova, _: Access) -> Result<PageTranslation, DmaError> {
        let base = iova.0 & !(IDENTITY_PAGE - 1);
        Ok(PageTranslation {
            iova_base: base,
            gpa_base: base,
            size: IDENTITY_PAGE,
            read: true,
            write: true,
            domain: None,
        })
    }
}

/// A run of guest memory a DMA touches: within one guest memory region, so
/// `GuestMemoryBackend::get_slice(addr, len)` gives it as a `VolatileSlice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSegment {
    pub addr: GuestAddress,
    pub len: usize,
}

/// One device's DMA: its requester id, the translator, its translation cache and guest
/// memory.
pub struct DeviceDma {
    source: Bdf,
    mem: GuestMemoryMmap,
    translator: Arc<dyn Translate>,
    iotlb: Arc<DeviceIotlb>,
}

impl DeviceDma {
    /// The DMA of requester `source`; its cache joins `caches`, which the translator's
    /// invalidations reach.
    pub fn new(
        source: Bdf,
        mem: GuestMemoryMmap,
        translator: Arc<dyn Translate>,
        caches: &IotlbSet,
    ) -> Self {
        let iotlb = Arc::new(DeviceIotlb::new(source, DEVICE_IOTLB_ENTRIES));
        caches.add(&iotlb);
        DeviceDma {
            source,
            mem,
            translator,
            iotlb,
        }
    }

    pub fn source(&self) -> Bdf {
        self.source
    }

    /// The device's translation cache.
    pub fn iotlb(&self) -> &DeviceIotlb {
        &self.iotlb
    }

    /// The guest-memory runs behind `[iova, iova + len)` for `access`, in order, each within
    /// one memory region. Every page is translated and found in guest memory before this
    /// returns: an error means the device must move no byte of the transfer.
    pub fn translate(
        &self,
        iova: Iova,
        len: usize,
        access: Access,
    ) -> Result<Vec<DmaSegment>, DmaError> {
        let out = |at: u64| DmaError::OutOfRange {
            requester: self.source,
            iova: Iova(at),
        };
        let end = iova.0.checked_add(len as u64).ok_or(out(iova.0))?;
        // One list, built as the pages are translated: contiguous runs in one region merge.
        // A run outside RAM fails the request only once every page is translated (so a
        // translation fault is still recorded and reported first).
        let mut segments: Vec<DmaSegment> = Vec::with_capacity(1);
        let mut region_end = 0u64;
        let mut outside: Option<u64> = None;
        let mut addr = iova.0;
        while addr < end {
            let page = self.page(addr, access)?;
            let n = (page.last() - addr).saturating_add(1).min(end - addr);
            let gpa = page
                .gpa_base
                .checked_add(addr - page.iova_base)
                .ok_or(out(addr))?;
            if outside.is_none()
                && self
                    .append(&mut segments, &mut region_end, gpa, n)
                    .is_none()
            {
                outside = Some(addr);
            }
            addr += n;
        }
        if let Some(at) = outside {
            return Err(out(at));
        }
        Ok(segments)
    }

    /// As [`translate`](Self::translate), as slices of guest memory the device reads or
    /// writes in place.
    pub fn slices(
        &self,
        iova: Iova,
        len: usize,
        access: Access,
    ) -> Result<Vec<VolatileSlice<'_, ()>>, DmaError> {
        self.translate(iova, len, access)?
            .into_iter()
            .map(|s| {
                self.mem
                    .get_slice(s.addr, s.len)
                    .map_err(|_| self.out_of_range(iova))
            })
            .collect()
    }

    /// The translation of the page containing `iova`: from the cache, or from the
    /// translator (then cached unless an invalidation ran meanwhile).
    fn page(&self, iova: u64, access: Access) -> Result<PageTranslation, DmaError> {
        if let Some(t) = self.iotlb.lookup(iova, access) {
            return Ok(t);
        }
        let generation = self.iotlb.generation();
        let t = self.translator.translate(self.source, Iova(iova), access)?;
        if !t.contains(iova) || !t.permits(access) {
            // The translator broke its contract; the request fails closed.
            iommu::warn_limited!("dma: {}: bad translation {t:?} for {iova:#x}", self.source);
            return Err(DmaError::Blocked {
                requester: self.source,
                iova: Iova(iova),
            });
        }
        self.iotlb.insert(t, generation);
        Ok(t)
    }

    /// Appends `len` bytes at guest-physical `gpa` to `out`, extending the last segment when
    /// contiguous within its region (whose end is `region_end`) and cutting at region ends;
    /// None if part of it is not RAM.
    fn append(
        &self,
        out: &mut Vec<DmaSegment>,
        region_end: &mut u64,
        gpa: u64,
        len: u64,
    ) -> Option<()> {
        let (mut addr, mut left) = (gpa, len);
        while left > 0 {
            if let Some(last) = out.last_mut() {
                let last_end = last.addr.0.checked_add(last.len as u64);
                if last_end == Some(addr) && addr < *region_end {
                    let n = (*region_end - addr).min(left);
                    last.len = last.len.checked_add(usize::try_from(n).ok()?)?;
                    addr += n;
                    left -= n;
                    continue;
                }
            }
            let region = self.mem.find_region(GuestAddress(addr))?;
            *region_end = region.start_addr().0.checked_add(region.len())?;
            let n = (*region_end - addr).min(left);
            out.push(DmaSegment {
                addr: GuestAddress(addr),
                len: usize::try_from(n).ok()?,
            });
            addr += n;
            left -= n;
        }
        Some(())
    }

    /// Copies guest memory at `iova` into `buf`, all or nothing.
    pub fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaError> {
        let segments = self.translate(iova, buf.len(), Access::Read)?;
        let mut off = 0;
        for s in segments {
            self.mem
                .read_slice(&mut buf[off..off + s.len], s.addr)
                .map_err(|_| self.out_of_range(iova))?;
            off += s.len;
        }
        Ok(())
    }

    /// Copies `buf` to guest memory at `iova`, all or nothing.
    pub fn write(&self, iova: Iova, buf: &[u8]) -> Result<(), DmaError> {
        let segments = self.translate(iova, buf.len(), Access::Write)?;
        let mut off = 0;
        for s in segments {
            self.mem
                .write_slice(&buf[off..off + s.len], s.addr)
                .map_err(|_| self.out_of_range(iova))?;
            off += s.len;
        }
        Ok(())
    }

    fn out_of_range(&self, iova: Iova) -> DmaError {
        DmaError::OutOfRange {
            requester: self.source,
            iova,
        }
    }

    fn check_requester(&self, source: Bdf) -> Result<(), DmaError> {
        if source == self.source {
            return Ok(());
        }
        Err(DmaError::ForeignRequester {
            requester: source,
            owner: self.source,
        })
    }
}

/// The copy-based access of a device wired to one `DeviceDma` (the handle serves its own
/// requester id only).
impl DmaAccess for DeviceDma {
    fn dma_read(&self, source: Bdf, iova: Iova, buf: &mut [u8]) -> Result<(), DmaError> {
        self.check_requester(source)?;
        self.read(iova, buf)
    }

    fn dma_write(&self, source: Bdf, iova: Iova, buf: &[u8]) -> Result<(), DmaError> {
        self.check_requester(source)?;
        self.write(iova, buf)
    }
}

#[cfg(test)]
mod tests;
