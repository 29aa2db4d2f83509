//! Guest memory as a virtio device sees it ([`VirtioMemory`]): the `vm_memory::GuestMemory`
//! that `virtio-queue` reads rings and descriptors through, and devices read and write
//! buffers through.
//!
//! Why our own `GuestMemory` impl and not vm-memory's `iommu` feature (`IommuMemory` over an
//! `Iommu`): `IommuMemory` keeps its own `Iotlb` in front of the translator, so a device would
//! have two translation caches (vm-memory's and the [`DeviceIotlb`](crate::dma::DeviceIotlb)
//! the VT-d unit invalidates synchronously), and the unit would have to reach both before the
//! guest's wait descriptor completes. Here the one cache is `DeviceDma`'s: a hit takes its read
//! lock, a miss asks the VT-d unit for the whole page or superpage, a refusal is never cached
//! and the unit records its fault. Every page of an access is translated before a slice is
//! handed out, so a fault is an error before any byte moves (never a partial copy).
//!
//! Without ACCESS_PLATFORM (virtio 1.2 section 6.1) the device bypasses the IOMMU: IOVA = GPA,
//! and the view is guest memory itself.

use std::iter::FusedIterator;
use std::sync::Arc;

use vm_memory::guest_memory::GuestMemoryBackendSliceIterator;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestMemoryResult, Permissions, VolatileSlice,
};

use crate::dma::{Access, DeviceDma};

/// The guest memory a virtio device's DMA reaches: through the device's VT-d context when
/// ACCESS_PLATFORM was negotiated, straight through otherwise. Cheap to clone.
#[derive(Clone)]
pub enum VirtioMemory {
    /// No translation: addresses are guest-physical.
    Direct(GuestMemoryMmap),
    /// Addresses are IOVAs, translated (and cached) by the device's [`DeviceDma`].
    Translated(Arc<DeviceDma>),
}

impl std::fmt::Debug for VirtioMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VirtioMemory::Direct(_) => f.write_str("VirtioMemory::Direct"),
            VirtioMemory::Translated(dma) => {
                write!(f, "VirtioMemory::Translated({})", dma.source())
            }
        }
    }
}

impl VirtioMemory {
    /// Whether accesses go through the IOMMU.
    pub fn is_translated(&self) -> bool {
        matches!(self, VirtioMemory::Translated(_))
    }
}

/// The slices of one access.
pub enum VirtioSlices<'a> {
    Direct(GuestMemoryBackendSliceIterator<'a, GuestMemoryMmap>),
    Translated(std::vec::IntoIter<VolatileSlice<'a, ()>>),
}

impl<'a> Iterator for VirtioSlices<'a> {
    type Item = GuestMemoryResult<VolatileSlice<'a, ()>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            VirtioSlices::Direct(it) => it.next(),
            VirtioSlices::Translated(it) => it.next().map(Ok),
        }
    }
}

impl FusedIterator for VirtioSlices<'_> {}

impl<'a> GuestMemorySliceIterator<'a, ()> for VirtioSlices<'a> {}

impl GuestMemory for VirtioMemory {
    type PhysicalMemory = GuestMemoryMmap;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        match self {
            VirtioMemory::Direct(mem) => GuestMemoryBackend::check_range(mem, addr, count),
            VirtioMemory::Translated(dma) => dma_accesses(access)
                .iter()
                .all(|a| dma.translate(iommu::Iova(addr.0), count, *a).is_ok()),
        }
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, ()>> {
        match self {
            VirtioMemory::Direct(mem) => Ok(VirtioSlices::Direct(GuestMemoryBackend::get_slices(
                mem, addr, count,
            ))),
            VirtioMemory::Translated(dma) => {
                let mut slices = Vec::new();
                // A read-write access is translated for both: each must be allowed.
                for a in dma_accesses(access) {
                    slices = dma
                        .slices(iommu::Iova(addr.0), count, *a)
                        .map_err(|_| GuestMemoryError::InvalidGuestAddress(addr))?;
                }
                Ok(VirtioSlices::Translated(slices.into_iter()))
            }
        }
    }

    fn physical_memory(&self) -> Option<&Self::PhysicalMemory> {
        match self {
            VirtioMemory::Direct(mem) => Some(mem),
            VirtioMemory::Translated(_) => None,
        }
    }
}

/// The DMA accesses `p` asks for (`Permissions::No` is checked as a read, so an access of
/// `count > 0` bytes always yields its slices or an error, never an empty iterator).
fn dma_accesses(p: Permissions) -> &'static [Access] {
    match p {
        Permissions::No | Permissions::Read => &[Access::Read],
        Permissions::Write => &[Access::Write],
        Permissions::ReadWrite => &[Access::Read, Access::Write],
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
