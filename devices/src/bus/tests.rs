use super::*;

#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn bus_dispatches_with_relative_offset() {
    let dev = Arc::new(Mutex::new(Recorder::default()));
    let bus = Bus::new();
    bus.insert(0x3f8, 8, dev.clone()).unwrap();
    let mut b = [0u8; 1];
    assert!(bus.read(0x3fa, &mut b));
    assert_eq!(b, [2]);
    assert!(bus.write(0x3ff, &[9]));
    assert_eq!(dev.lock().unwrap().writes, vec![(7, vec![9])]);
}

#[test]
fn bus_unclaimed_address_returns_false() {
    let bus = Bus::new();
    bus.insert(0x100, 0x10, Arc::new(Mutex::new(Recorder::default())))
        .unwrap();
    let mut b = [0xaau8; 2];
    assert!(!bus.read(0x110, &mut b));
    assert!(!bus.read(0xff, &mut b));
    assert_eq!(b, [0xaa, 0xaa]);
}

#[test]
fn bus_insert_overlap_is_rejected() {
    let bus = Bus::new();
    let d = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
    bus.insert(0x100, 0x10, d()).unwrap();
    assert_eq!(
        bus.insert(0x10f, 1, d()),
        Err(BusError::Overlap {
            base: 0x10f,
            len: 1
        })
    );
    assert_eq!(
        bus.insert(0xf0, 0x11, d()),
        Err(BusError::Overlap {
            base: 0xf0,
            len: 0x11
        })
    );
    assert!(bus.insert(0x110, 1, d()).is_ok());
    assert!(bus.insert(u64::MAX, 2, d()).is_err());
    assert!(bus.insert(0x200, 0, d()).is_err());
}

fn recorder() -> SharedDevice {
    Arc::new(Mutex::new(Recorder::default()))
}

#[test]
fn bus_insert_while_shared_is_seen_by_every_holder() {
    let bus = Arc::new(Bus::new());
    let vcpu = bus.clone();
    let mut b = [0u8; 1];
    assert!(!vcpu.read(0x1004, &mut b));
    std::thread::spawn(move || bus.insert(0x1000, 0x10, recorder()))
        .join()
        .unwrap()
        .unwrap();
    assert!(vcpu.read(0x1004, &mut b));
    assert_eq!(b, [4]);
}

#[test]
fn bus_remove_stops_decoding_and_returns_the_device() {
    let bus = Bus::new();
    let dev = recorder();
    bus.insert(0x1000, 0x10, dev.clone()).unwrap();
    let removed = bus.remove(0x1000).expect("a range at 0x1000");
    assert!(Arc::ptr_eq(&removed, &dev));
    assert!(!bus.write(0x1000, &[1]));
    assert!(bus.remove(0x1000).is_none());
    bus.insert(0x1008, 0x10, dev).unwrap();
}

#[test]
fn bus_remove_of_an_address_inside_a_range_removes_nothing() {
    let bus = Bus::new();
    bus.insert(0x1000, 0x10, recorder()).unwrap();
    assert!(bus.remove(0x1004).is_none());
    assert!(bus.write(0x1004, &[1]));
}

#[test]
fn bus_clear_drops_every_device() {
    let bus = Bus::new();
    let dev = recorder();
    bus.insert(0x1000, 0x10, dev.clone()).unwrap();
    bus.insert(0x2000, 0x10, dev.clone()).unwrap();
    assert_eq!(Arc::strong_count(&dev), 3);
    bus.clear();
    assert_eq!(Arc::strong_count(&dev), 1);
    assert!(!bus.write(0x1000, &[1]));
}

/// A device that, when written, moves itself on the bus it sits on (as a configuration write
/// that relocates a BAR does, with the device locked).
struct Mover {
    bus: Arc<Bus>,
    me: Option<SharedDevice>,
}

impl BusDevice for Mover {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        if let Some(me) = self.me.take() {
            let _ = self.bus.remove(0x1000);
            let _ = self.bus.insert(0x2000, 0x10, me);
        }
    }
}

#[test]
fn bus_device_may_change_the_bus_while_it_is_being_accessed() {
    let bus = Arc::new(Bus::new());
    let mover = Arc::new(Mutex::new(Mover {
        bus: bus.clone(),
        me: None,
    }));
    lock(&mover).me = Some(mover.clone());
    bus.insert(0x1000, 0x10, mover.clone()).unwrap();
    // On another thread so that a deadlock fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let b = bus.clone();
    std::thread::spawn(move || {
        let claimed = b.write(0x1000, &[1]);
        let _ = tx.send(claimed);
    });
    let claimed = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the write returned (no deadlock on the bus lock)");
    assert!(claimed);
    let mut d = [0u8; 1];
    assert!(!bus.read(0x1000, &mut d), "old range gone");
    assert!(bus.read(0x2008, &mut d), "new range decodes");
    assert_eq!(d, [0x5a]);
    bus.clear(); // break the Mover's cycle through its bus
}

#[test]
fn bus_access_during_concurrent_changes_reaches_a_device_or_nothing() {
    let bus = Arc::new(Bus::new());
    let dev = recorder();
    let changer = {
        let bus = bus.clone();
        let dev = dev.clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                bus.insert(0x1000, 0x10, dev.clone()).unwrap();
                bus.remove(0x1000).unwrap();
            }
        })
    };
    for _ in 0..2000 {
        let mut d = [0xffu8; 1];
        if bus.read(0x1003, &mut d) {
            assert_eq!(d, [3]);
        } else {
            assert_eq!(d, [0xff]);
        }
    }
    changer.join().unwrap();
}

#[test]
fn bus_changes_while_a_reader_waits_for_a_locked_device() {
    // A configuration write holds a device and changes the bus while a vCPU waits for that
    // device: the waiting vCPU must not be holding the bus.
    let bus = Arc::new(Bus::new());
    let dev = Arc::new(Mutex::new(Recorder::default()));
    bus.insert(0x1000, 0x10, dev.clone()).unwrap();
    let held = lock(&dev);
    let reader = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            let mut d = [0u8; 1];
            bus.read(0x1001, &mut d)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (tx, rx) = std::sync::mpsc::channel();
    let changer = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            let _ = tx.send(bus.insert(0x2000, 0x10, recorder()));
        })
    };
    let changed = rx.recv_timeout(std::time::Duration::from_secs(10));
    drop(held);
    assert_eq!(changed, Ok(Ok(())), "the bus changed with the device held");
    assert!(reader.join().unwrap());
    changer.join().unwrap();
}
