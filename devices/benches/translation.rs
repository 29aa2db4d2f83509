//! The DMA translation fast path (issue 11, "Performance"): a hit in a device's own IOTLB,
//! and a miss that walks 4-level second-level tables through the real VT-d unit, with the
//! tables built in guest memory here as the iommu tests build them.
//!
//! `cargo bench -p devices --bench translation`. Goals: hit < 50 ns, 4-level miss < 300 ns.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use devices::dma::{Access, DeviceDma, DmaError, IotlbSet, PageTranslation, Translate};
use iommu::limits::Limits;
use iommu::registers::{GCMD_REG, GCMD_SRTP, GCMD_TE, RTADDR_REG};
use iommu::{Bdf, DmaOutcome, InterruptSink, IommuConfig, Iova, RemappingUnit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const DEV: Bdf = Bdf::new(0, 3, 0);
const DID: u64 = 1;
const MEM_SIZE: usize = 64 << 20;
const ROOT_TABLE: u64 = 0x1000;
const CONTEXT_TABLE: u64 = 0x2000;
/// Page tables are allocated from here up.
const TABLES: u64 = 0x10_0000;
/// The mapped IOVAs: PAGES 4 KiB pages from IOVA_BASE (to GPA_BASE), more than either
/// cache holds, so cycling through them misses every time.
const IOVA_BASE: u64 = 0x12_3456_0000;
const GPA_BASE: u64 = 0x200_0000;
const PAGES: u64 = 2048;
/// Second-level entry bits: read, write.
const RW: u64 = 3;

struct NoInterrupts;

impl InterruptSink for NoInterrupts {
    fn send(&self, _address: u64, _data: u32) {}
}

/// Guest memory with a root table, DEV's context entry (domain DID, 4-level tables) and
/// PAGES 4 KiB mappings.
fn guest_tables() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let w64 = |addr: u64, v: u64| mem.write_obj(v, GuestAddress(addr)).expect("table write");
    let r64 = |addr: u64| -> u64 { mem.read_obj(GuestAddress(addr)).expect("table read") };
    let mut next = TABLES;
    let mut alloc = || {
        next += 0x1000;
        next
    };
    let slpt = alloc();
    w64(ROOT_TABLE + 16 * u64::from(DEV.bus()), CONTEXT_TABLE | 1);
    let ctx = CONTEXT_TABLE + 16 * u64::from(DEV.devfn());
    // Present, TT 00 (untranslated requests through the tables); AW 2: 4 levels.
    w64(ctx, slpt | 1);
    w64(ctx + 8, (DID << 8) | 2);
    for i in 0..PAGES {
        let iova = IOVA_BASE + i * 0x1000;
        let mut table = slpt;
        for level in (2..=4u64).rev() {
            let slot = table + ((iova >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
            let e = r64(slot);
            table = if e & RW != 0 {
                e & !0xfff
            } else {
                let t = alloc();
                w64(slot, t | RW);
                t
            };
        }
        w64(
            table + ((iova >> 12) & 0x1ff) * 8,
            (GPA_BASE + i * 0x1000) | RW,
        );
    }
    mem
}

/// The unit with translation on over [`guest_tables`]; `iotlb_entries` bounds its own IOTLB.
fn unit(mem: &GuestMemoryMmap, iotlb_entries: usize) -> RemappingUnit {
    let limits = Limits {
        iotlb_entries,
        ..Limits::default()
    };
    let mut u = RemappingUnit::with_limits(IommuConfig::default(), Box::new(NoInterrupts), limits);
    u.write(mem, RTADDR_REG, &ROOT_TABLE.to_le_bytes());
    u.write(mem, GCMD_REG, &GCMD_SRTP.to_le_bytes());
    u.write(mem, GCMD_REG, &GCMD_TE.to_le_bytes());
    u
}

/// The unit as an emulated device's translator, as the VMM wires it (vmm/src/iommu.rs
/// `IommuTranslator`): locked for the one page of a miss.
struct UnitTranslator {
    unit: Mutex<RemappingUnit>,
    mem: GuestMemoryMmap,
}

impl Translate for UnitTranslator {
    fn translate(
        &self,
        source: Bdf,
        iova: Iova,
        access: Access,
    ) -> Result<PageTranslation, DmaError> {
        let write = access == Access::Write;
        let mut unit = self.unit.lock().unwrap_or_else(|e| e.into_inner());
        match unit.translate_in_domain(&self.mem, source, iova, write) {
            (DmaOutcome::Translated(t), domain) => Ok(PageTranslation {
                iova_base: t.iova_base,
                gpa_base: t.gpa_base,
                size: t.page_size,
                read: t.read,
                write: t.write,
                domain,
            }),
            (DmaOutcome::Blocked(_), _) => Err(DmaError::Blocked {
                requester: source,
                iova,
            }),
        }
    }
}

/// DEV's DMA through a unit whose IOTLB holds `iotlb_entries`.
fn device_dma(iotlb_entries: usize) -> DeviceDma {
    let mem = guest_tables();
    let translator = Arc::new(UnitTranslator {
        unit: Mutex::new(unit(&mem, iotlb_entries)),
        mem: mem.clone(),
    });
    DeviceDma::new(DEV, mem, translator, &IotlbSet::new())
}

fn translation(c: &mut Criterion) {
    let mut g = c.benchmark_group("translation");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));

    // A hit: the page is in the device's cache (one read lock, one map lookup).
    let dma = device_dma(limits_default());
    dma.translate(Iova(IOVA_BASE), 64, Access::Read)
        .expect("mapped");
    g.bench_function("device iotlb hit: DeviceIotlb::lookup", |b| {
        b.iter(|| {
            dma.iotlb()
                .lookup(black_box(IOVA_BASE + 0x40), Access::Read)
        })
    });
    g.bench_function("device iotlb hit: DeviceDma::translate 64 bytes", |b| {
        b.iter(|| dma.translate(black_box(Iova(IOVA_BASE + 0x40)), 64, Access::Read))
    });

    // A miss everywhere: a new page each time, past both caches (the unit's IOTLB holds one
    // entry, the device's 512), so each is a 4-level walk of guest memory plus the inserts.
    let dma = device_dma(1);
    let mut i = 0u64;
    g.bench_function(
        "4-level miss: DeviceDma::translate 64 bytes via the unit",
        |b| {
            b.iter(|| {
                i = (i + 1) % PAGES;
                dma.translate(black_box(Iova(IOVA_BASE + i * 0x1000)), 64, Access::Read)
            })
        },
    );

    // The unit alone: context cached, IOTLB miss, 4-level walk.
    let mem = guest_tables();
    let mut u = unit(&mem, 1);
    let mut i = 0u64;
    g.bench_function("4-level miss: RemappingUnit::translate", |b| {
        b.iter(|| {
            i = (i + 1) % PAGES;
            u.translate(&mem, DEV, black_box(Iova(IOVA_BASE + i * 0x1000)), false)
        })
    });
    g.finish();
}

/// The unit's IOTLB as the VMM sizes it.
fn limits_default() -> usize {
    Limits::default().iotlb_entries
}

criterion_group!(benches, translation);
criterion_main!(benches);
