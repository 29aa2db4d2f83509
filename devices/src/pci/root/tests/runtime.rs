//! The root bus at run time: BAR ranges that move on the buses, overlaps refused, ioeventfds
//! that follow their BAR, devices added and removed after start.

use super::*;
use crate::bus::{BusDevice, SharedDevice};

/// Fake BAR 0 (4 KiB, 32-bit), BAR 2 (2 MiB, 64-bit) and BAR 4 (32 ports) after
/// `assign_resources` with the fake at device 1 alone.
const BAR0: u64 = 0xc000_0000;
const BAR2: u64 = 0x10_0000_0000;
const BAR4: u64 = 0xc000;
/// Where BAR 0 of a second fake (device 2) lands.
const BAR0_DEV2: u64 = 0xc000_1000;

/// An eventfd whose counter holds `id`, so the registrar's log can tell fds apart.
fn tagged_fd(id: u64) -> EventFd {
    let fd = EventFd::new(0).unwrap();
    fd.write(id).unwrap();
    fd
}

/// A fake with ioeventfds at BAR 0 + 8 (fd 1) and BAR 4 + 2 (fd 2).
fn fake_with_events() -> Arc<Mutex<Fake>> {
    let mut f = Fake::new();
    f.events.push((0, 8, tagged_fd(1)));
    f.events.push((4, 2, tagged_fd(2)));
    Arc::new(Mutex::new(f))
}

/// The host bridge and `fakes` at devices 1, 2, ..., resources assigned as firmware would.
fn assigned(fakes: &[Arc<Mutex<Fake>>]) -> Rig {
    let rig = Rig::new();
    {
        let mut r = rig.root.lock().unwrap();
        r.add_device(Arc::new(Mutex::new(HostBridge::new())), Some(0))
            .unwrap();
        for f in fakes {
            r.add_device(f.clone(), None).unwrap();
        }
        r.assign_resources().unwrap();
    }
    rig
}

fn log_of(fake: &Arc<Mutex<Fake>>) -> Vec<(usize, u64, bool)> {
    std::mem::take(&mut fake.lock().unwrap().log)
}

fn moves_of(fake: &Arc<Mutex<Fake>>) -> Vec<(usize, Option<u64>)> {
    std::mem::take(&mut fake.lock().unwrap().moves)
}

/// A plain device on the MMIO bus that reads 0x77.
struct Other;
impl BusDevice for Other {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0x77);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[test]
fn bar_over_another_devices_bar_stays_undecoded_and_the_other_keeps_working() {
    let (a, b) = (Arc::new(Mutex::new(Fake::new())), fake_with_events());
    let rig = assigned(&[a.clone(), b.clone()]);
    assert_eq!(rig.mmio_read(BAR0_DEV2), [0; 4]);
    log_of(&b);
    moves_of(&b);
    rig.events.take();
    // Device 2 moves BAR 0 onto device 1's BAR 0.
    rig.config(2, 0x10, &(BAR0 as u32).to_le_bytes());
    assert_eq!(rig.mmio_read(BAR0 + 0x10), [0; 4]);
    assert_eq!(log_of(&a), vec![(0, 0x10, false)], "device 1 answers");
    assert!(log_of(&b).is_empty(), "device 2 does not");
    assert_eq!(rig.mmio_read(BAR0_DEV2), [0xff; 4], "nor at its old place");
    assert_eq!(moves_of(&b), vec![(0, None)]);
    assert_eq!(
        rig.events.take(),
        vec![(false, false, BAR0_DEV2 + 8, 1)],
        "its ioeventfd left with it and went nowhere"
    );
}

#[test]
fn bar_left_undecoded_by_an_overlap_decodes_once_the_other_bar_moves_away() {
    let (a, b) = (Arc::new(Mutex::new(Fake::new())), fake_with_events());
    let rig = assigned(&[a.clone(), b.clone()]);
    rig.config(2, 0x10, &(BAR0 as u32).to_le_bytes());
    moves_of(&b);
    rig.events.take();
    rig.config(1, 0x10, &0xd000_0000u32.to_le_bytes());
    assert_eq!(rig.mmio_read(BAR0 + 0x10), [0; 4]);
    assert_eq!(log_of(&b), vec![(0, 0x10, false)], "device 2 answers now");
    assert_eq!(moves_of(&b), vec![(0, Some(BAR0))]);
    assert_eq!(rig.events.take(), vec![(true, false, BAR0 + 8, 1)]);
}

#[test]
fn bar_over_a_non_pci_device_is_refused_without_touching_it() {
    let fake = Arc::new(Mutex::new(Fake::new()));
    let rig = assigned(std::slice::from_ref(&fake));
    let other: SharedDevice = Arc::new(Mutex::new(Other));
    rig.mmio.insert(0xc800_0000, 0x100, other).unwrap();
    rig.config(1, 0x10, &0xc800_0000u32.to_le_bytes());
    assert_eq!(rig.mmio_read(0xc800_0004), [0x77; 4]);
    assert_eq!(rig.mmio_read(BAR0), [0xff; 4]);
    assert!(log_of(&fake).is_empty());
}

#[test]
fn bar_outside_the_windows_does_not_decode() {
    let fake = Arc::new(Mutex::new(Fake::new()));
    let rig = assigned(std::slice::from_ref(&fake));
    moves_of(&fake);
    rig.config(1, 0x10, &0x8000_0000u32.to_le_bytes());
    let mut b = [0u8; 4];
    assert!(!rig.mmio.read(0x8000_0000, &mut b));
    assert!(!rig.mmio.read(BAR0, &mut b));
    assert_eq!(moves_of(&fake), vec![(0, None)]);
}

#[test]
fn decoding_off_takes_every_bar_off_and_on_puts_them_back() {
    let fake = Arc::new(Mutex::new(Fake::new()));
    let rig = assigned(std::slice::from_ref(&fake));
    let mut b = [0u8; 1];
    rig.config(1, 0x4, &[0, 0]);
    assert!(!rig.mmio.read(BAR0, &mut b));
    assert!(!rig.mmio.read(BAR2, &mut b));
    assert!(!rig.pio.read(BAR4, &mut b));
    rig.config(1, 0x4, &[(COMMAND_IO | COMMAND_MEMORY) as u8, 0]);
    assert!(rig.mmio.read(BAR0, &mut b));
    assert!(rig.mmio.read(BAR2, &mut b));
    assert!(rig.pio.read(BAR4, &mut b));
}

#[test]
fn ioeventfds_are_registered_where_their_bars_decode() {
    let fake = fake_with_events();
    let rig = assigned(&[fake]);
    let mut log = rig.events.take();
    log.sort();
    assert_eq!(
        log,
        vec![(true, false, BAR0 + 8, 1), (true, true, BAR4 + 2, 2)]
    );
}

#[test]
fn ioeventfds_move_with_their_bar() {
    let fake = fake_with_events();
    let rig = assigned(&[fake]);
    rig.events.take();
    rig.config(1, 0x10, &0xd000_0000u32.to_le_bytes());
    assert_eq!(
        rig.events.take(),
        vec![(false, false, BAR0 + 8, 1), (true, false, 0xd000_0008, 1)]
    );
    rig.config(1, 0x20, &0xd001u32.to_le_bytes()); // BAR 4 to port 0xd000
    assert_eq!(
        rig.events.take(),
        vec![(false, true, BAR4 + 2, 2), (true, true, 0xd002, 2)]
    );
}

#[test]
fn ioeventfds_are_unregistered_when_decoding_stops() {
    let fake = fake_with_events();
    let rig = assigned(&[fake]);
    rig.events.take();
    rig.config(1, 0x4, &[COMMAND_IO as u8, 0]);
    assert_eq!(rig.events.take(), vec![(false, false, BAR0 + 8, 1)]);
    rig.config(1, 0x4, &[0, 0]);
    assert_eq!(rig.events.take(), vec![(false, true, BAR4 + 2, 2)]);
}

#[test]
fn ioeventfd_past_the_end_of_its_bar_is_not_registered() {
    let mut f = Fake::new();
    f.events.push((0, 0x1000, tagged_fd(3)));
    let rig = assigned(&[Arc::new(Mutex::new(f))]);
    assert!(rig.events.take().is_empty());
    let mut b = [0u8; 1];
    assert!(rig.mmio.read(BAR0, &mut b), "the BAR decodes all the same");
}

/// A registrar that refuses everything.
struct Refusing;
impl IoEventRegistrar for Refusing {
    fn register(&self, _io: bool, _addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
    }
    fn unregister(&self, _io: bool, _addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        panic!("nothing was registered");
    }
}

#[test]
fn ioeventfd_the_hypervisor_refuses_leaves_the_bar_decoding() {
    let mmio = Arc::new(Bus::new());
    let mut root = PciRoot::new(PciBuses {
        pio: Arc::new(Bus::new()),
        mmio: mmio.clone(),
        windows: WINDOWS,
        ioevents: Arc::new(Refusing),
    });
    root.add_device(fake_with_events(), Some(1)).unwrap();
    root.assign_resources().unwrap();
    let mut b = [0u8; 1];
    assert!(mmio.read(BAR0 + 8, &mut b));
    root.remove_device(1).unwrap(); // unregisters nothing
}

#[test]
fn device_added_after_start_decodes_once_the_guest_programs_it() {
    let rig = assigned(&[Arc::new(Mutex::new(Fake::new()))]);
    rig.events.take();
    let late = fake_with_events();
    let at = rig.root.lock().unwrap().add_device(late.clone(), Some(5));
    assert_eq!(at, Ok(Bdf::new(0, 5, 0)));
    let mut b = [0u8; 4];
    assert!(!rig.mmio.read(0xc100_0000, &mut b));
    rig.config(5, 0x10, &0xc100_0000u32.to_le_bytes());
    assert!(
        !rig.mmio.read(0xc100_0000, &mut b),
        "memory decoding still off"
    );
    rig.config(5, 0x4, &[COMMAND_MEMORY as u8, 0]);
    assert!(rig.mmio.read(0xc100_0004, &mut b));
    assert_eq!(log_of(&late), vec![(0, 4, false)]);
    assert_eq!(moves_of(&late), vec![(0, Some(0xc100_0000))]);
    assert_eq!(rig.events.take(), vec![(true, false, 0xc100_0008, 1)]);
}

#[test]
fn device_added_with_its_bars_enabled_decodes_at_once() {
    let rig = Rig::new();
    let mut f = Fake::new();
    f.config
        .write_register(REG_BAR0, 0, &0xc200_0000u32.to_le_bytes());
    f.config
        .write_register(REG_COMMAND_STATUS, 0, &[COMMAND_MEMORY as u8, 0]);
    rig.root
        .lock()
        .unwrap()
        .add_device(Arc::new(Mutex::new(f)), Some(3))
        .unwrap();
    let mut b = [0u8; 4];
    assert!(rig.mmio.read(0xc200_0000, &mut b));
}

#[test]
fn remove_device_takes_its_bars_and_ioeventfds_off_and_frees_its_number() {
    let fake = fake_with_events();
    let rig = assigned(std::slice::from_ref(&fake));
    rig.events.take();
    moves_of(&fake);
    let removed = rig.root.lock().unwrap().remove_device(1).unwrap();
    let as_pci: Arc<Mutex<dyn PciDevice>> = fake.clone();
    assert!(Arc::ptr_eq(&removed, &as_pci));
    let mut b = [0u8; 1];
    assert!(!rig.mmio.read(BAR0, &mut b));
    assert!(!rig.mmio.read(BAR2, &mut b));
    assert!(!rig.pio.read(BAR4, &mut b));
    let mut log = rig.events.take();
    log.sort();
    assert_eq!(
        log,
        vec![(false, false, BAR0 + 8, 1), (false, true, BAR4 + 2, 2)]
    );
    assert_eq!(moves_of(&fake), vec![(0, None), (2, None)]);
    let mut r = rig.root.lock().unwrap();
    assert_eq!(r.config_read(0, 1, 0, REG_ID), 0xffff_ffff);
    assert_eq!(
        r.add_device(Arc::new(Mutex::new(Fake::new())), Some(1)),
        Ok(Bdf::new(0, 1, 0))
    );
}

#[test]
fn remove_device_of_an_empty_number_is_refused() {
    let rig = assigned(&[]);
    let mut r = rig.root.lock().unwrap();
    assert!(matches!(r.remove_device(9), Err(PciError::NoDevice(9))));
    assert!(matches!(r.remove_device(40), Err(PciError::NoDevice(40))));
}

#[test]
fn removing_a_device_lets_a_bar_it_overlapped_decode() {
    let (a, b) = (
        Arc::new(Mutex::new(Fake::new())),
        Arc::new(Mutex::new(Fake::new())),
    );
    let rig = assigned(&[a, b.clone()]);
    rig.config(2, 0x10, &(BAR0 as u32).to_le_bytes());
    rig.root.lock().unwrap().remove_device(1).unwrap();
    assert_eq!(rig.mmio_read(BAR0), [0; 4]);
    assert_eq!(log_of(&b), vec![(0, 0, false)]);
}

#[test]
fn bar_moving_while_another_thread_reads_it_answers_there_or_not_at_all() {
    let fake = Arc::new(Mutex::new(Fake::new()));
    let rig = assigned(&[fake]);
    let mmio = rig.mmio.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let vcpu = std::thread::spawn(move || {
        for i in 0..2000u64 {
            let mut b = [0x55u8; 4];
            let addr = if i % 2 == 0 { BAR0 } else { 0xd000_0000 };
            if !mmio.read(addr, &mut b) {
                assert_eq!(b, [0x55; 4]);
            } else {
                assert_eq!(b, [0; 4]);
            }
        }
        let _ = tx.send(());
    });
    for i in 0..500u32 {
        let base = if i % 2 == 0 {
            0xd000_0000u32
        } else {
            BAR0 as u32
        };
        rig.config(1, 0x10, &base.to_le_bytes());
    }
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("the accessing thread finished");
    vcpu.join().unwrap();
}
