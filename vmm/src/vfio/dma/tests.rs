//! VfioDma over a fake container that fails on demand: failed maps leave nothing behind and
//! are reported, failed unmaps stop the device, and a failed or panicking background identity
//! map never leaves waiters hanging.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use devices::vfio::DmaGate;
use vm_memory::GuestAddress;

use super::*;

const DEV: Bdf = Bdf::new(0, 3, 0);
/// Guest RAM: two adjacent 1 MiB regions; 0x20_0000 and up is not RAM.
const REGION: u64 = 0x10_0000;
const NOT_RAM: u64 = 0x100_0000;

/// A container whose calls fail when asked to.
#[derive(Default)]
struct FakeHost {
    /// Live host mappings: IOVA -> size.
    maps: Mutex<BTreeMap<u64, u64>>,
    /// The map at this IOVA fails (ENOSPC, as at the 65,535-mapping limit).
    fail_map: Mutex<Option<u64>>,
    /// The unmap at this IOVA fails.
    fail_unmap: Mutex<Option<u64>>,
    panic_on_map: AtomicBool,
    stops: AtomicU32,
}

impl HostDma for FakeHost {
    unsafe fn map(&self, iova: u64, size: u64, _: *mut u8, _: bool, _: bool) -> io::Result<()> {
        if self.panic_on_map.load(Ordering::SeqCst) {
            panic!("fake container: map panics");
        }
        if *self.fail_map.lock().unwrap() == Some(iova) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut maps = self.maps.lock().unwrap();
        assert!(!maps.contains_key(&iova), "EEXIST at {iova:#x}");
        maps.insert(iova, size);
        Ok(())
    }

    fn unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        if *self.fail_unmap.lock().unwrap() == Some(iova) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.maps
            .lock()
            .unwrap()
            .retain(|i, _| *i < iova || *i >= iova + size);
        Ok(())
    }

    fn stop_device(&self) {
        self.stops.fetch_add(1, Ordering::SeqCst);
    }
}

fn rig() -> (Arc<VfioDma>, Arc<FakeHost>) {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap();
    let host = Arc::new(FakeHost::default());
    (Arc::new(VfioDma::new(host.clone(), mem, "fake")), host)
}

fn mapping(iova: u64, gpa: u64, size: u64) -> Mapping {
    Mapping {
        iova,
        gpa,
        size,
        read: true,
        write: true,
    }
}

fn host_maps(h: &FakeHost) -> Vec<(u64, u64)> {
    h.maps
        .lock()
        .unwrap()
        .iter()
        .map(|(i, s)| (*i, *s))
        .collect()
}

/// `wait_ready` on another thread, with a deadline: a hang is a failure, not a stuck test.
fn wait_ready_within(dma: &Arc<VfioDma>, secs: u64) -> Option<bool> {
    let (tx, rx) = mpsc::channel();
    let d = dma.clone();
    std::thread::spawn(move || {
        let _ = tx.send(d.wait_ready());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

#[test]
fn map_event_failing_part_way_reports_error_and_leaves_nothing_mapped() {
    let (dma, host) = rig();
    // Spans the two RAM regions: two host mappings, the second refused.
    let m = mapping(0x4000_0000, REGION - 0x1000, 0x2000);
    *host.fail_map.lock().unwrap() = Some(0x4000_1000);
    assert!(dma.map_event(DEV, MapEvent::Map(m)).is_err());
    assert_eq!(host_maps(&host), vec![], "the first piece is undone");
    // The unit forgets the range and maps it again later: no EEXIST then.
    *host.fail_map.lock().unwrap() = None;
    assert!(dma.map_event(DEV, MapEvent::Map(m)).is_ok());
    assert_eq!(
        host_maps(&host),
        vec![(0x4000_0000, 0x1000), (0x4000_1000, 0x1000)]
    );
    assert_eq!(dma.state().map_failures, 1, "{:?}", dma.state());
}

#[test]
fn map_event_to_non_ram_reports_error() {
    let (dma, host) = rig();
    let m = mapping(0x4000_0000, NOT_RAM, 0x1000);
    assert!(dma.map_event(DEV, MapEvent::Map(m)).is_err());
    assert_eq!(host_maps(&host), vec![]);
}

#[test]
fn map_event_unmap_failure_stops_device_and_keeps_bus_mastering_off() {
    let (dma, host) = rig();
    let m = mapping(0x4000_0000, 0x8000, 0x1000);
    dma.map_event(DEV, MapEvent::Map(m)).unwrap();
    *host.fail_unmap.lock().unwrap() = Some(0x4000_0000);
    let r = dma.map_event(
        DEV,
        MapEvent::Unmap {
            iova: m.iova,
            size: m.size,
        },
    );
    assert!(r.is_err(), "the failure is reported");
    assert_eq!(
        host.stops.load(Ordering::SeqCst),
        1,
        "the device is stopped"
    );
    assert_eq!(wait_ready_within(&dma, 5), Some(false), "no bus mastering");
}

#[test]
fn identity_unmap_failing_part_way_stops_device_and_keeps_identity() {
    let (dma, host) = rig();
    dma.map_identity().unwrap();
    assert_eq!(host_maps(&host), vec![(0, REGION), (REGION, REGION)]);
    *host.fail_unmap.lock().unwrap() = Some(0);
    // The guest turns translation on: RAM is unmapped, the first region fails.
    assert!(dma.map_event(DEV, MapEvent::PassThrough(false)).is_err());
    assert_eq!(host_maps(&host), vec![(0, REGION)], "the rest is unmapped");
    assert_eq!(
        host.stops.load(Ordering::SeqCst),
        1,
        "the device is stopped"
    );
    let st = dma.state();
    assert!(
        st.identity,
        "the identity mapping is still accounted for: {st:?}"
    );
    assert!(st.stopped, "{st:?}");
    assert_eq!(wait_ready_within(&dma, 5), Some(false));
}

#[test]
fn background_identity_failure_wakes_waiters_with_bus_mastering_refused() {
    let (dma, host) = rig();
    *host.fail_map.lock().unwrap() = Some(REGION);
    dma.map_identity_in_background().unwrap();
    assert_eq!(
        wait_ready_within(&dma, 5),
        Some(false),
        "the device has no mappings: it may not master"
    );
    assert_eq!(host_maps(&host), vec![], "the first region is undone");
    // Once the guest translates, the device's DMA no longer needs the identity mapping.
    dma.map_event(DEV, MapEvent::PassThrough(false)).unwrap();
    assert_eq!(wait_ready_within(&dma, 5), Some(true));
}

#[test]
fn background_identity_panic_wakes_waiters() {
    let (dma, host) = rig();
    host.panic_on_map.store(true, Ordering::SeqCst);
    dma.map_identity_in_background().unwrap();
    assert_eq!(
        wait_ready_within(&dma, 5),
        Some(false),
        "a waiter returns, with bus mastering refused"
    );
    // A later map event does not hang either.
    host.panic_on_map.store(false, Ordering::SeqCst);
    let (tx, rx) = mpsc::channel();
    let d = dma.clone();
    std::thread::spawn(move || {
        let _ = tx.send(d.map_event(DEV, MapEvent::PassThrough(false)).is_ok());
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
}
