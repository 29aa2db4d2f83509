//! The DRHD wiring's completion order, with the real `Iommu`, `DrhdRegisters` and
//! `UnitInterrupts` and a listener that stands in for VFIO: an invalidation wait's status
//! write and completion interrupt come after the host unmap of the invalidation before it, and
//! a map the host refuses becomes a DMAR fault the guest can read.

use std::sync::{Arc, Mutex, OnceLock};

use devices::bus::BusDevice;
use devices::interrupt::{InterruptError, InterruptRoutes, MsiMessage, MsiTrigger};
use iommu::registers::*;
use iommu::{Bdf, IommuConfig, MapEvent, RemappingUnit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{DrhdRegisters, Iommu, ListenerError, MapListener, UnitInterrupts};

const DEV: Bdf = Bdf::new(0, 3, 0);
const DID: u64 = 5;
const ROOT: u64 = 0x1000;
const CONTEXT: u64 = 0x2000;
/// Four levels of second-level tables, one page each.
const SLPT: [u64; 4] = [0x3000, 0x4000, 0x5000, 0x6000];
const QUEUE: u64 = 0x20_0000;
const STATUS: [u64; 2] = [0x30_0000, 0x30_0100];
const PAGES: [u64; 2] = [0x10_0000, 0x10_1000];
/// Where PAGES point: apart, so the two never coalesce into one range.
const TARGETS: [u64; 2] = [0x80_0000, 0x90_0000];
const IEDATA: u32 = 0x41;
const FEDATA: u32 = 0x42;
const WAIT_DATA: u32 = 0xd0e;

/// Everything observable, in order.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Msi(Arc<Log>);

impl MsiTrigger for Msi {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), InterruptError> {
        self.0.push(format!("MSI {:#x}", msg.data));
        Ok(())
    }
}

/// Stands in for VfioDma: logs each unmap with the wait statuses the guest could read then,
/// and, once watched, each switch in or out of the identity mapping with GSTS.TES as another
/// vCPU reads it meanwhile; refuses maps when asked to.
struct Listener {
    log: Arc<Log>,
    mem: GuestMemoryMmap,
    refuse_maps: bool,
    iommu: Arc<OnceLock<Arc<Iommu>>>,
}

impl MapListener for Listener {
    fn map_event(&self, _: Bdf, event: MapEvent) -> Result<(), ListenerError> {
        let status = STATUS.map(|a| self.mem.read_obj::<u32>(GuestAddress(a)).unwrap());
        match event {
            MapEvent::Unmap { iova, .. } => {
                self.log
                    .push(format!("unmap {iova:#x} (statuses {status:x?})"));
            }
            MapEvent::Map(m) => {
                self.log.push(format!("map {:#x}", m.iova));
                if self.refuse_maps {
                    return Err(ListenerError("ENOSPC".into()));
                }
            }
            MapEvent::PassThrough(on) => {
                if let Some(iommu) = self.iommu.get() {
                    let tes = read32(iommu, GSTS_REG) & GSTS_TES != 0;
                    self.log
                        .push(format!("identity {on} (TES {tes} on another vCPU)"));
                }
            }
            MapEvent::RangeLimit { .. } => {}
        }
        Ok(())
    }
}

/// A register read through the bus device, as a vCPU makes it.
fn read32(iommu: &Arc<Iommu>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    DrhdRegisters(iommu.clone()).read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Stands in for the IOAPIC's and VFIO's KVM routes: logs each recomputation with the wait
/// statuses the guest could read then and, once watched, GSTS.IRES as another vCPU reads it.
struct Routes {
    log: Arc<Log>,
    mem: GuestMemoryMmap,
    iommu: Arc<OnceLock<Arc<Iommu>>>,
}

impl InterruptRoutes for Routes {
    fn refresh(&self) {
        let status = STATUS.map(|a| self.mem.read_obj::<u32>(GuestAddress(a)).unwrap());
        let ires = match self.iommu.get() {
            Some(i) => format!(
                ", IRES {} on another vCPU",
                read32(i, GSTS_REG) & GSTS_IRES != 0
            ),
            None => String::new(),
        };
        self.log
            .push(format!("routes (statuses {status:x?}{ires})"));
    }
}

struct Rig {
    drhd: DrhdRegisters,
    mem: GuestMemoryMmap,
    log: Arc<Log>,
    /// Set by `watch_identity`: the listener and the routes log what GSTS shows meanwhile.
    watch: Arc<OnceLock<Arc<Iommu>>>,
}

impl Rig {
    fn watch_identity(&self) {
        let _ = self.watch.set(self.drhd.0.clone());
    }

    fn w32(&mut self, off: u64, v: u32) {
        self.drhd.write(off, &v.to_le_bytes());
    }

    fn w64(&mut self, off: u64, v: u64) {
        self.drhd.write(off, &v.to_le_bytes());
    }

    fn r64(&mut self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.drhd.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    fn put(&self, addr: u64, v: u64) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    fn status(&self, i: usize) -> u32 {
        self.mem.read_obj(GuestAddress(STATUS[i])).unwrap()
    }

    /// The leaf entry of `iova` (within the first 2 MiB of the last table).
    fn leaf(&self, iova: u64) -> u64 {
        SLPT[3] + ((iova >> 12) & 0x1ff) * 8
    }

    fn psi(&self, slot: u64, iova: u64) {
        self.put(QUEUE + slot * 16, 0x2 | (3 << 4) | (DID << 16));
        self.put(QUEUE + slot * 16 + 8, iova);
    }

    /// A wait with status write (SW) and interrupt (IF) writing `WAIT_DATA + i` to STATUS[i].
    fn wait(&self, slot: u64, i: usize) {
        let data = u64::from(WAIT_DATA) + i as u64;
        self.put(QUEUE + slot * 16, 0x5 | (1 << 5) | (1 << 4) | (data << 32));
        self.put(QUEUE + slot * 16 + 8, STATUS[i]);
    }
}

/// DEV in domain DID with PAGES mapped to TARGETS, tracked by a `Listener`; translation,
/// queued invalidation and both event interrupts on.
fn rig(refuse_maps: bool) -> Rig {
    let mut r = rig_translation_off(refuse_maps);
    r.w32(GCMD_REG, GCMD_TE);
    r.w64(IQA_REG, QUEUE);
    r.w64(IQT_REG, 0);
    r.w32(GCMD_REG, GCMD_TE | GCMD_QIE);
    r
}

/// As `rig`, with the root table latched but translation and the queue off.
fn rig_translation_off(refuse_maps: bool) -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let log = Arc::new(Log::default());
    let unit = RemappingUnit::new(
        IommuConfig::default(),
        Box::new(UnitInterrupts(Arc::new(Msi(log.clone())))),
    );
    let iommu = Iommu::new(unit, mem.clone());
    let watch = Arc::new(OnceLock::new());
    let listener = Listener {
        log: log.clone(),
        mem: mem.clone(),
        refuse_maps,
        iommu: watch.clone(),
    };
    iommu.track(DEV, Arc::new(listener));
    iommu.add_interrupt_routes(Arc::new(Routes {
        log: log.clone(),
        mem: mem.clone(),
        iommu: watch.clone(),
    }));
    let mut r = Rig {
        drhd: DrhdRegisters(iommu),
        mem,
        log,
        watch,
    };
    let devfn = u64::from(DEV.devfn());
    r.put(ROOT, CONTEXT | 1);
    r.put(CONTEXT + devfn * 16, SLPT[0] | 1);
    r.put(CONTEXT + devfn * 16 + 8, (DID << 8) | 2);
    for l in 0..3 {
        r.put(SLPT[l], SLPT[l + 1] | 3);
    }
    for (p, t) in PAGES.iter().zip(TARGETS) {
        r.put(r.leaf(*p), t | 3);
    }
    r.w32(FEDATA_REG, FEDATA);
    r.w32(FEADDR_REG, 0xfee0_0000);
    r.w32(FECTL_REG, 0);
    r.w32(IEDATA_REG, IEDATA);
    r.w32(IEADDR_REG, 0xfee0_0000);
    r.w32(IECTL_REG, 0);
    r.w64(RTADDR_REG, ROOT);
    r.w32(GCMD_REG, GCMD_SRTP);
    r
}

#[test]
fn drhd_wait_completes_after_the_unmap_before_it() {
    let mut r = rig(false);
    assert_eq!(r.log.take(), vec!["map 0x100000", "map 0x101000"]);
    r.put(r.leaf(PAGES[0]), 0);
    r.psi(0, PAGES[0]);
    r.wait(1, 0);
    r.w64(IQT_REG, 2 << 4);
    assert_eq!(
        r.log.take(),
        vec![
            "unmap 0x100000 (statuses [0, 0])".to_string(),
            format!("MSI {IEDATA:#x}"),
        ],
        "the unmap before the status write and the interrupt"
    );
    assert_eq!(r.status(0), WAIT_DATA);
    assert_eq!(r.r64(IQH_REG), 2 << 4);
}

#[test]
fn drhd_two_waits_each_complete_after_their_own_unmap() {
    let mut r = rig(false);
    r.log.take();
    r.put(r.leaf(PAGES[0]), 0);
    r.put(r.leaf(PAGES[1]), 0);
    r.psi(0, PAGES[0]);
    r.wait(1, 0);
    r.psi(2, PAGES[1]);
    r.wait(3, 1);
    r.w64(IQT_REG, 4 << 4);
    assert_eq!(
        r.log.take(),
        vec![
            "unmap 0x100000 (statuses [0, 0])".to_string(),
            format!("MSI {IEDATA:#x}"),
            format!("unmap 0x101000 (statuses [{WAIT_DATA:x}, 0])"),
            format!("MSI {IEDATA:#x}"),
        ]
    );
    assert_eq!((r.status(0), r.status(1)), (WAIT_DATA, WAIT_DATA + 1));
}

#[test]
fn drhd_refused_map_is_a_fault_before_the_wait_and_is_retried() {
    let mut r = rig(true);
    assert_eq!(
        r.log.take(),
        vec![
            "map 0x100000".to_string(),
            "map 0x101000".into(),
            format!("MSI {FEDATA:#x}"),
        ],
        "the refused maps raise the fault event (once: PPF was clear)"
    );
    let hi = r.r64(FRCD_REG + 8);
    assert_ne!(hi & FRCD_F, 0, "a fault is recorded");
    assert_eq!((hi >> FRCD_FR_SHIFT) & 0xff, 0x07, "FR 07h");
    assert_eq!(hi & 0xffff, u64::from(DEV.raw()));
    assert_eq!(r.r64(FRCD_REG), PAGES[0]);
    // The guest invalidates the page again: the map is retried, then the wait completes.
    r.psi(0, PAGES[0]);
    r.wait(1, 0);
    r.w64(IQT_REG, 2 << 4);
    assert_eq!(
        r.log.take(),
        vec!["map 0x100000".to_string(), format!("MSI {IEDATA:#x}")]
    );
    assert_eq!(r.status(0), WAIT_DATA);
}

#[test]
fn drhd_iec_wait_completes_after_the_routes_are_recomputed() {
    let mut r = rig(false);
    r.log.take();
    // A global interrupt entry cache invalidation, then a wait.
    r.put(QUEUE, 0x4);
    r.put(QUEUE + 8, 0);
    r.wait(1, 0);
    r.w64(IQT_REG, 2 << 4);
    assert_eq!(
        r.log.take(),
        vec![
            "routes (statuses [0, 0])".to_string(),
            format!("MSI {IEDATA:#x}"),
        ],
        "the routes recomputed before the status write and the interrupt"
    );
    assert_eq!(r.status(0), WAIT_DATA);
    assert_eq!(r.r64(IQH_REG), 2 << 4);
}

#[test]
fn drhd_te_status_shows_after_the_identity_mapping_is_removed() {
    let mut r = rig_translation_off(false);
    r.log.take();
    r.watch_identity();
    r.w32(GCMD_REG, GCMD_TE);
    let log = r.log.take();
    assert_eq!(
        log.first().map(String::as_str),
        Some("identity false (TES false on another vCPU)"),
        "{log:?}"
    );
    assert_ne!(
        r.r64(GCMD_REG) >> 32 & u64::from(GSTS_TES),
        0,
        "the writing vCPU sees TES once its write returns"
    );
}

#[test]
fn drhd_te_off_status_clears_after_the_identity_mapping_is_back() {
    let mut r = rig(false);
    r.log.take();
    r.watch_identity();
    r.w32(GCMD_REG, GCMD_QIE);
    let log = r.log.take();
    assert_eq!(
        log.last().map(String::as_str),
        Some("identity true (TES true on another vCPU)"),
        "{log:?}"
    );
    assert_eq!(r.r64(GCMD_REG) >> 32 & u64::from(GSTS_TES), 0);
}

#[test]
fn drhd_ire_status_shows_after_the_routes_are_recomputed() {
    let mut r = rig(false);
    r.w64(IRTA_REG, 0x40_0000 | 7);
    r.w32(GCMD_REG, GCMD_TE | GCMD_QIE | GCMD_SIRTP);
    r.log.take();
    r.watch_identity();
    r.w32(GCMD_REG, GCMD_TE | GCMD_QIE | GCMD_IRE);
    assert_eq!(
        r.log.take(),
        vec!["routes (statuses [0, 0], IRES false on another vCPU)"]
    );
    assert_ne!(
        r.r64(GCMD_REG) >> 32 & u64::from(GSTS_IRES),
        0,
        "the writing vCPU sees IRES once its write returns"
    );
}

mod dma;

#[test]
fn drhd_state_counts_iqt_writes_apart_from_other_registers() {
    let mut r = rig(false);
    let before = r.drhd.0.state();
    assert!(before.unit.translation && before.unit.queued_invalidation);
    assert!(before.writes.iqt_writes > 0, "{:?}", before.writes);
    r.wait(0, 0);
    r.w64(IQT_REG, 1 << 4);
    let after = r.drhd.0.state();
    assert_eq!(after.writes.iqt_writes, before.writes.iqt_writes + 1);
    assert_eq!(after.writes.other_writes, before.writes.other_writes);
    assert_eq!(after.unit.iqh, 1, "the queue head as a descriptor index");
    assert!(
        after.listeners.is_empty(),
        "the stand-in listener reports no state"
    );
}
