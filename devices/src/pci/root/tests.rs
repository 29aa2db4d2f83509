use super::*;
use crate::bus::Bus;
use crate::pci::configuration::{BarSpec, PciConfiguration, PciIds, COMMAND_MASTER, REG_ID};
use crate::pci::host_bridge::HostBridge;
use vmm_sys_util::eventfd::EventFd;

/// A device with a 4 KiB MMIO BAR 0, a 64-bit prefetchable BAR 2 and an I/O BAR 4 that
/// records accesses.
struct Fake {
    config: PciConfiguration,
    log: Vec<(usize, u64, bool)>,
    moves: Vec<(usize, Option<u64>)>,
    /// (BAR, offset, fd) handed out by `ioeventfds`.
    events: Vec<(usize, u64, EventFd)>,
}

impl Fake {
    fn new() -> Self {
        let mut config = PciConfiguration::new(
            PciIds {
                vendor: 0x1234,
                device: 0x5678,
                class: 0xff,
                subclass: 0,
                prog_if: 0,
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            },
            1,
        );
        config
            .add_bar(BarSpec {
                index: 0,
                size: 0x1000,
                kind: BarKind::Mem32,
            })
            .unwrap();
        config
            .add_bar(BarSpec {
                index: 2,
                size: 0x20_0000,
                kind: BarKind::Mem64 { prefetchable: true },
            })
            .unwrap();
        config
            .add_bar(BarSpec {
                index: 4,
                size: 0x20,
                kind: BarKind::Io,
            })
            .unwrap();
        Fake {
            config,
            log: Vec::new(),
            moves: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl PciDevice for Fake {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.config.read_register(reg_idx)
    }
    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        self.config.write_register(reg_idx, offset, data);
    }
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.log.push((bar, offset, false));
        data.fill(bar as u8);
    }
    fn write_bar(&mut self, bar: usize, offset: u64, _data: &[u8]) {
        self.log.push((bar, offset, true));
    }
    fn bar_moved(&mut self, bar: usize, base: Option<u64>) {
        self.moves.push((bar, base));
    }
    fn ioeventfds(&self, bar: usize) -> Vec<(u64, EventFd)> {
        self.events
            .iter()
            .filter(|(b, _, _)| *b == bar)
            .map(|(_, off, fd)| (*off, fd.try_clone().unwrap()))
            .collect()
    }
}

/// One ioeventfd change: registered (true) or unregistered, I/O or MMIO, address, and the
/// fd's counter after the change was made (each test fd is written a distinct value).
type EventLog = Vec<(bool, bool, u64, u64)>;

/// Records what the root bus asks of the hypervisor.
#[derive(Default)]
struct Registrar(Mutex<EventLog>);

impl Registrar {
    fn record(&self, on: bool, io: bool, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        // Identify the fd by its value: read it and put it back.
        let v = fd.read()?;
        fd.write(v)?;
        self.0.lock().unwrap().push((on, io, addr, v));
        Ok(())
    }
    fn take(&self) -> EventLog {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl IoEventRegistrar for Registrar {
    fn register(&self, io: bool, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        self.record(true, io, addr, fd)
    }
    fn unregister(&self, io: bool, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        self.record(false, io, addr, fd)
    }
}

const WINDOWS: Windows = Windows {
    io: (0xc000, 0x4000),
    mmio32: (0xc000_0000, 0x2000_0000),
    mmio64: (0x10_0000_0000, 0x10_0000_0000),
};

/// A root bus on its own buses, with what it registers recorded.
struct Rig {
    root: Arc<Mutex<PciRoot>>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    events: Arc<Registrar>,
}

impl Rig {
    fn new() -> Self {
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let events = Arc::new(Registrar::default());
        let root = Arc::new(Mutex::new(PciRoot::new(PciBuses {
            pio: pio.clone(),
            mmio: mmio.clone(),
            windows: WINDOWS,
            ioevents: events.clone(),
        })));
        Rig {
            root,
            pio,
            mmio,
            events,
        }
    }

    fn mmio_read(&self, addr: u64) -> [u8; 4] {
        let mut b = [0xffu8; 4];
        self.mmio.read(addr, &mut b);
        b
    }

    /// Writes `value` to configuration register `reg` of `device` through ECAM.
    fn config(&self, device: u64, reg: u64, value: &[u8]) {
        PciConfigMmio::new(self.root.clone()).write((device << 15) | reg, value);
    }
}

/// The host bridge at 0 and a [`Fake`] at 1, BARs unassigned.
fn rig() -> (Rig, Arc<Mutex<Fake>>) {
    let rig = Rig::new();
    let fake = Arc::new(Mutex::new(Fake::new()));
    {
        let mut r = rig.root.lock().unwrap();
        assert_eq!(
            r.add_device(Arc::new(Mutex::new(HostBridge::new())), Some(0)),
            Ok(Bdf::new(0, 0, 0))
        );
        assert_eq!(r.add_device(fake.clone(), None), Ok(Bdf::new(0, 1, 0)));
    }
    (rig, fake)
}

fn setup() -> (Arc<Mutex<PciRoot>>, Arc<Mutex<Fake>>) {
    let (rig, fake) = rig();
    (rig.root, fake)
}

fn cf8(io: &mut PciConfigIo, dev: u32, reg: u32) {
    io.write(0, &(0x8000_0000 | (dev << 11) | (reg << 2)).to_le_bytes());
}

#[test]
fn cf8_reads_vendor_device_of_host_bridge_and_fake() {
    let (root, _) = setup();
    let mut io = PciConfigIo::new(root);
    cf8(&mut io, 0, 0);
    let mut b = [0u8; 4];
    io.read(4, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x0008_1b36);
    cf8(&mut io, 1, 0);
    let mut w = [0u8; 2];
    io.read(6, &mut w);
    assert_eq!(
        u16::from_le_bytes(w),
        0x5678,
        "word read at offset 2 of the data port"
    );
    let mut one = [0u8; 1];
    io.read(5, &mut one);
    assert_eq!(one[0], 0x12);
}

#[test]
fn cf8_absent_device_and_disabled_address_read_all_ones() {
    let (root, _) = setup();
    let mut io = PciConfigIo::new(root);
    cf8(&mut io, 7, 0);
    let mut b = [0u8; 4];
    io.read(4, &mut b);
    assert_eq!(b, [0xff; 4]);
    io.write(0, &(1u32 << 11).to_le_bytes()); // enable bit clear
    io.read(4, &mut b);
    assert_eq!(b, [0xff; 4]);
    let mut a = [0u8; 4];
    io.read(0, &mut a);
    assert_eq!(u32::from_le_bytes(a), 1 << 11, "CONFIG_ADDRESS reads back");
}

#[test]
fn ecam_reads_and_writes_config() {
    let (root, fake) = setup();
    let mut ecam = PciConfigMmio::new(root);
    let mut b = [0u8; 4];
    ecam.read(1 << 15, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x5678_1234);
    ecam.write((1 << 15) | 0x3c, &[0x2a]);
    assert_eq!(
        fake.lock().unwrap().config.read_register(REG_INTERRUPT) & 0xff,
        0x2a
    );
    ecam.read((1 << 15) | (1 << 12), &mut b);
    assert_eq!(b, [0xff; 4], "function 1 absent");
    ecam.read(1 << 20, &mut b);
    assert_eq!(b, [0xff; 4], "bus 1 absent");
}

#[test]
fn probe_finds_bar_sizes_and_kinds() {
    let mut f = Fake::new();
    let bars = probe_bars(&mut f);
    assert_eq!(bars[0], Some((0x1000, BarKind::Mem32)));
    assert_eq!(
        bars[2],
        Some((0x20_0000, BarKind::Mem64 { prefetchable: true }))
    );
    assert_eq!(bars[3], None);
    assert_eq!(bars[4], Some((0x20, BarKind::Io)));
    assert_eq!(
        f.config.read_register(REG_BAR0),
        0,
        "restored after probing"
    );
}

#[test]
fn assign_resources_places_bars_and_enables_decoding() {
    let (root, fake) = setup();
    root.lock().unwrap().assign_resources().unwrap();
    let f = fake.lock().unwrap();
    assert_eq!(f.config.bar_address(0), Some(0xc000_0000));
    assert_eq!(f.config.bar_address(2), Some(0x10_0000_0000));
    assert_eq!(f.config.bar_address(4), Some(0xc000));
    let cmd = f.config.command();
    assert_eq!(
        cmd & (COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER),
        0x3,
        "decoding, no DMA"
    );
    assert_eq!(f.config.read_register(REG_INTERRUPT) & 0xff, intx_gsi(1, 1));
}

#[test]
fn bar_dispatch_follows_relocation_and_memory_enable() {
    let (rig, fake) = rig();
    rig.root.lock().unwrap().assign_resources().unwrap();
    assert_eq!(rig.mmio_read(0xc000_0010), [0; 4], "BAR 0 answered");
    // Move BAR 0 to 0xd000_0000 through ECAM.
    rig.config(1, 0x10, &0xd000_0000u32.to_le_bytes());
    assert_eq!(
        rig.mmio_read(0xc000_0010),
        [0xff; 4],
        "old address no longer decodes"
    );
    assert_eq!(rig.mmio_read(0xd000_0010), [0; 4]);
    // Memory decode off: nothing answers.
    rig.config(1, 0x4, &[0x5, 0]);
    assert_eq!(rig.mmio_read(0xd000_0010), [0xff; 4]);
    let f = fake.lock().unwrap();
    assert_eq!(f.log, vec![(0, 0x10, false), (0, 0x10, false)]);
    // The device heard of every move of its memory BARs (not of the I/O BAR).
    assert_eq!(
        f.moves,
        vec![
            (0, Some(0xc000_0000)),
            (2, Some(0x10_0000_0000)),
            (0, Some(0xd000_0000)),
            (0, None),
            (2, None)
        ]
    );
}

#[test]
fn io_bar_decodes_on_the_port_bus() {
    let (rig, fake) = rig();
    rig.root.lock().unwrap().assign_resources().unwrap();
    assert!(rig.pio.write(0xc004, &[1]));
    assert!(!rig.pio.write(0xc020, &[1]), "past the 32-byte BAR");
    assert_eq!(fake.lock().unwrap().log, vec![(4, 4, true)]);
}

#[test]
fn intx_swizzle_and_prt_agree() {
    assert_eq!(intx_gsi(1, 1), 17);
    assert_eq!(intx_gsi(7, 2), 16);
    let (root, _) = setup();
    let routes = root.lock().unwrap().prt_routes();
    assert_eq!(
        routes.len(),
        4,
        "host bridge has no INTx; device 1 has four pins"
    );
    for r in routes {
        assert_eq!(r.gsi, intx_gsi(r.device, r.pin + 1));
    }
}

#[test]
fn add_device_rejects_taken_slot() {
    let (root, _) = setup();
    let mut r = root.lock().unwrap();
    assert_eq!(
        r.add_device(Arc::new(Mutex::new(Fake::new())), Some(1)),
        Err(PciError::SlotTaken(1))
    );
    assert_eq!(
        r.add_device(Arc::new(Mutex::new(Fake::new())), Some(40)),
        Err(PciError::SlotTaken(40))
    );
}

#[test]
fn config_registers_read_through_root() {
    let (root, _) = setup();
    assert_eq!(
        root.lock().unwrap().config_read(0, 1, 0, REG_ID),
        0x5678_1234
    );
}

/// Selects the configuration dword of device 1 holding `byte`, with CONFIG_ADDRESS bits 1:0
/// set to `byte & 3` as test kernels written for QEMU do.
fn cf8_byte(io: &mut PciConfigIo, byte: u32) {
    io.write(0, &(0x8000_0800 | byte).to_le_bytes());
}

#[test]
fn cf8_address_low_bits_select_the_bytes_read_at_the_data_port() {
    let (root, _) = setup();
    let mut io = PciConfigIo::new(root);
    cf8_byte(&mut io, 0x02);
    let mut w = [0u8; 2];
    io.read(4, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x5678, "device ID at 0xCFC");
    let mut b = [0u8; 1];
    cf8_byte(&mut io, 0x01);
    io.read(4, &mut b);
    assert_eq!(b[0], 0x12, "vendor ID high byte");
}

#[test]
fn cf8_address_low_bits_or_with_the_data_port_offset() {
    let (root, _) = setup();
    let mut io = PciConfigIo::new(root);
    let mut b = [0u8; 1];
    cf8_byte(&mut io, 0x02);
    io.read(6, &mut b); // 2 | 2 = 2 (QEMU ORs, it does not add)
    assert_eq!(b[0], 0x78);
    cf8_byte(&mut io, 0x01);
    io.read(6, &mut b); // 1 | 2 = 3
    assert_eq!(b[0], 0x56);
}

#[test]
fn cf8_address_low_bits_select_the_bytes_written() {
    let (root, fake) = setup();
    let mut io = PciConfigIo::new(root);
    cf8_byte(&mut io, 0x12); // BAR0, bytes 2..3
    io.write(4, &0xabcd_u16.to_le_bytes());
    assert_eq!(
        fake.lock().unwrap().config.read_register(REG_BAR0),
        0xabcd_0000
    );
}

#[test]
fn cf8_address_reads_back_as_written() {
    let (root, _) = setup();
    let mut io = PciConfigIo::new(root);
    cf8_byte(&mut io, 0x03);
    let mut a = [0u8; 4];
    io.read(0, &mut a);
    assert_eq!(u32::from_le_bytes(a), 0x8000_0803);
}

#[test]
fn config_read_crossing_a_dword_returns_the_next_register_bytes() {
    let (root, _) = setup();
    let mut io = PciConfigIo::new(root.clone());
    let mut ecam = PciConfigMmio::new(root);
    let want = [0x78, 0x56, 0x00, 0x00]; // device ID, then command (0)
    let mut b = [0u8; 4];
    cf8_byte(&mut io, 0x02);
    io.read(4, &mut b);
    assert_eq!(b, want, "0xCF8/0xCFC");
    ecam.read((1 << 15) | 2, &mut b);
    assert_eq!(b, want, "ECAM");
}

#[test]
fn cf8_and_ecam_read_the_same_bytes_at_every_offset_and_size() {
    let (root, _) = setup();
    let mut io = PciConfigIo::new(root.clone());
    let mut ecam = PciConfigMmio::new(root);
    for byte in 0..0x40u32 {
        for port in 0..4u64 {
            for len in [1usize, 2, 4] {
                cf8_byte(&mut io, byte);
                let mut a = vec![0u8; len];
                io.read(4 + port, &mut a);
                let off = u64::from(byte | port as u32);
                let mut b = vec![0u8; len];
                ecam.read((1 << 15) | off, &mut b);
                assert_eq!(a, b, "byte {byte:#x} port +{port} len {len}");
            }
        }
    }
}

mod runtime;

/// A byte register, for the 0xCF9 slot.
struct ByteReg(u8);
impl BusDevice for ByteReg {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data[0] = self.0;
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.0 = data[0];
    }
}

#[test]
fn cf9_byte_accesses_reach_the_reset_register_and_leave_config_address() {
    let (root, _) = setup();
    let reg = Arc::new(Mutex::new(ByteReg(0)));
    let mut io = PciConfigIo::with_cf9(root, reg.clone());
    cf8(&mut io, 0, 0);
    io.write(1, &[0x06]);
    assert_eq!(reg.lock().unwrap().0, 0x06);
    let mut b = [0u8; 1];
    io.read(1, &mut b);
    assert_eq!(b[0], 0x06);
    let mut d = [0u8; 4];
    io.read(4, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x0008_1b36, "CONFIG_ADDRESS kept");
    // Without the register, a byte at 0xCF9 reads all-ones and writes are dropped.
    let (root, _) = setup();
    let mut plain = PciConfigIo::new(root);
    plain.write(1, &[0x06]);
    plain.read(1, &mut b);
    assert_eq!(b[0], 0xff);
}

#[test]
fn bar64_outside_the_windows_does_not_decode_until_moved_inside() {
    let (rig, fake) = rig();
    // BAR 2 (64-bit, 2 MiB) at 0xe0_0000_0000, past the 64-bit window (as OVMF's dynamic
    // window is past a window that ends too low), memory decoding on.
    rig.config(1, 0x18, &0u32.to_le_bytes());
    rig.config(1, 0x1c, &0xe0u32.to_le_bytes());
    rig.config(1, 0x4, &[0x2, 0]);
    assert_eq!(rig.mmio_read(0xe0_0000_0010), [0xff; 4], "not forwarded");
    assert!(fake.lock().unwrap().moves.is_empty());
    // Inside the window it decodes.
    rig.config(1, 0x1c, &0x10u32.to_le_bytes());
    assert_eq!(rig.mmio_read(0x10_0000_0010), [2; 4]);
    assert_eq!(fake.lock().unwrap().moves, vec![(2, Some(0x10_0000_0000))]);
}
