//! Test doubles for virtio DMA: a translator over a table of pages.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use iommu::{Bdf, Iova};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::dma::{Access, DeviceDma, DmaError, IotlbSet, PageTranslation, Translate};

pub const PAGE: u64 = 0x1000;
/// Where IOVAs start in the tests' translated space: IOVA = GPA + IOVA_SHIFT.
pub const IOVA_SHIFT: u64 = 0x4000_0000;

/// A translator over a table of 4 KiB pages (IOVA = GPA + IOVA_SHIFT); pages not in it are
/// refused. Counts its refusals (the faults a VT-d unit would record).
#[derive(Default)]
pub struct PageTable {
    pages: Mutex<Vec<PageTranslation>>,
    pub faults: AtomicUsize,
}

impl PageTable {
    /// Maps `[gpa, gpa + len)` read-write at IOVA gpa + IOVA_SHIFT.
    pub fn map(&self, gpa: u64, len: u64) {
        let mut p = self.pages.lock().unwrap();
        let mut at = gpa & !(PAGE - 1);
        while at < gpa + len {
            p.push(PageTranslation {
                iova_base: at + IOVA_SHIFT,
                gpa_base: at,
                size: PAGE,
                read: true,
                write: true,
                domain: Some(1),
            });
            at += PAGE;
        }
    }

    /// Unmaps the page at `gpa`.
    pub fn unmap(&self, gpa: u64) {
        let iova = (gpa & !(PAGE - 1)) + IOVA_SHIFT;
        self.pages.lock().unwrap().retain(|t| t.iova_base != iova);
    }

    pub fn faults(&self) -> usize {
        self.faults.load(Ordering::SeqCst)
    }
}

impl Translate for PageTable {
    fn translate(
        &self,
        source: Bdf,
        iova: Iova,
        access: Access,
    ) -> Result<PageTranslation, DmaError> {
        let found = self
            .pages
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.contains(iova.0) && t.permits(access))
            .copied();
        found.ok_or_else(|| {
            self.faults.fetch_add(1, Ordering::SeqCst);
            DmaError::Blocked {
                requester: source,
                iova,
            }
        })
    }
}

/// 1 MiB of guest RAM at 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// A device's DMA through `table`.
pub fn translated_dma(mem: &GuestMemoryMmap, table: &Arc<PageTable>) -> Arc<DeviceDma> {
    Arc::new(DeviceDma::new(
        Bdf::new(0, 4, 0),
        mem.clone(),
        table.clone(),
        &IotlbSet::new(),
    ))
}
