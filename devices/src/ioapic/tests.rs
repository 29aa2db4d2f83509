use std::sync::Mutex;

use super::*;
use crate::interrupt::InterruptError;

#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<MsiMessage>>,
    routes: Mutex<Vec<(usize, Option<MsiMessage>)>>,
}

impl MsiTrigger for Recorder {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), InterruptError> {
        self.sent.lock().unwrap().push(msg);
        Ok(())
    }
    fn ioapic_route_changed(&self, pin: usize, msg: Option<MsiMessage>) {
        self.routes.lock().unwrap().push((pin, msg));
    }
}

const SRC: Bdf = Bdf::new(0, 0x1e, 0);

fn setup() -> (Ioapic, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    (Ioapic::new(0, SRC, rec.clone()), rec)
}

fn write_reg(io: &mut Ioapic, reg: u32, v: u32) {
    io.write(IOREGSEL, &reg.to_le_bytes());
    io.write(IOWIN, &v.to_le_bytes());
}

fn read_reg(io: &mut Ioapic, reg: u32) -> u32 {
    io.write(IOREGSEL, &reg.to_le_bytes());
    let mut b = [0u8; 4];
    io.read(IOWIN, &mut b);
    u32::from_le_bytes(b)
}

fn program(io: &mut Ioapic, pin: u32, entry: u64) {
    write_reg(io, IOREDTBL_BASE + 2 * pin + 1, (entry >> 32) as u32);
    write_reg(io, IOREDTBL_BASE + 2 * pin, entry as u32);
}

fn sent(rec: &Recorder) -> usize {
    rec.sent.lock().unwrap().len()
}

#[test]
fn ioapic_version_register_reports_24_entries() {
    let (mut io, _) = setup();
    assert_eq!(read_reg(&mut io, IOAPICVER), 0x0017_0020);
}

#[test]
fn ioapic_id_register_keeps_only_id_field() {
    let (mut io, _) = setup();
    write_reg(&mut io, IOAPICID, 0xffff_ffff);
    assert_eq!(read_reg(&mut io, IOAPICID), 0x0f00_0000);
    assert_eq!(read_reg(&mut io, IOAPICARB), 0x0f00_0000);
}

#[test]
fn ioapic_entries_start_masked() {
    let (mut io, rec) = setup();
    assert_eq!(read_reg(&mut io, IOREDTBL_BASE) & (1 << 16), 1 << 16);
    io.set_irq(4, true);
    assert_eq!(sent(&rec), 0);
}

#[test]
fn ioapic_edge_delivers_on_rising_edge_only() {
    let (mut io, rec) = setup();
    program(&mut io, 4, (3u64 << 56) | 0x31);
    io.set_irq(4, true);
    io.set_irq(4, true);
    assert_eq!(sent(&rec), 1);
    io.set_irq(4, false);
    io.set_irq(4, true);
    assert_eq!(sent(&rec), 2);
    let m = rec.sent.lock().unwrap()[0];
    assert_eq!(m.address, 0xfee0_3000);
    assert_eq!(m.data, 0x31);
    assert_eq!(m.source, SRC);
}

#[test]
fn ioapic_level_sets_remote_irr_until_eoi() {
    let (mut io, rec) = setup();
    program(&mut io, 16, RTE_TRIGGER_LEVEL | 0x41);
    io.set_irq(16, true);
    assert_eq!(sent(&rec), 1);
    assert_ne!(
        read_reg(&mut io, IOREDTBL_BASE + 32) as u64 & RTE_REMOTE_IRR,
        0
    );
    io.set_irq(16, true);
    assert_eq!(sent(&rec), 1, "Remote IRR blocks re-delivery");
    io.end_of_interrupt(0x41);
    assert_eq!(sent(&rec), 2, "still asserted: delivered again after EOI");
    io.set_irq(16, false);
    io.end_of_interrupt(0x41);
    assert_eq!(sent(&rec), 2);
    assert_eq!(
        read_reg(&mut io, IOREDTBL_BASE + 32) as u64 & RTE_REMOTE_IRR,
        0
    );
    let m = rec.sent.lock().unwrap()[0];
    assert_eq!(m.data, 0x41 | (1 << 15) | (1 << 14));
}

#[derive(Default)]
struct Resamples(std::sync::atomic::AtomicU32);

impl Resample for Resamples {
    fn resample(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn ioapic_resampled_pin_eoi_lowers_line_and_resamples() {
    let (mut io, rec) = setup();
    let r = Arc::new(Resamples::default());
    assert!(io.set_resample(17, Some(r.clone())));
    program(&mut io, 17, RTE_TRIGGER_LEVEL | 0x51);
    io.set_irq(17, true);
    assert_eq!(sent(&rec), 1);
    io.end_of_interrupt(0x51);
    assert_eq!(r.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(sent(&rec), 1, "the line was lowered: no re-delivery at EOI");
    io.set_irq(17, true);
    assert_eq!(sent(&rec), 2, "the source asserts again after resampling");
    io.end_of_interrupt(0x52);
    assert_eq!(
        r.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "other vectors do not resample"
    );
    assert!(!io.set_resample(NUM_PINS, None));
}

#[test]
fn ioapic_eoi_of_other_vector_keeps_remote_irr() {
    let (mut io, rec) = setup();
    program(&mut io, 16, RTE_TRIGGER_LEVEL | 0x41);
    io.set_irq(16, true);
    io.end_of_interrupt(0x42);
    io.write(IOEOI, &[0x43, 0, 0, 0]);
    assert_eq!(sent(&rec), 1);
    io.write(IOEOI, &[0x41, 0, 0, 0]);
    assert_eq!(sent(&rec), 2, "the EOI register works like an LAPIC EOI");
}

#[test]
fn ioapic_unmask_with_line_asserted_delivers_level() {
    let (mut io, rec) = setup();
    program(&mut io, 17, RTE_TRIGGER_LEVEL | RTE_MASKED | 0x50);
    io.set_irq(17, true);
    assert_eq!(sent(&rec), 0);
    program(&mut io, 17, RTE_TRIGGER_LEVEL | 0x50);
    assert_eq!(sent(&rec), 1);
}

#[test]
fn ioapic_read_only_bits_ignore_writes() {
    let (mut io, _) = setup();
    write_reg(
        &mut io,
        IOREDTBL_BASE,
        (RTE_REMOTE_IRR | RTE_DELIVERY_STATUS | 0x20) as u32,
    );
    assert_eq!(read_reg(&mut io, IOREDTBL_BASE) as u64, 0x20);
}

#[test]
fn ioapic_remappable_rte_becomes_remappable_msi() {
    // VT-d 5.1.5.1: index 0x8123 -> RTE[63:49] = 0x0123, RTE[11] = 1, RTE[48] = format.
    let (mut io, rec) = setup();
    let index: u64 = 0x8123;
    let rte = ((index & 0x7fff) << 49) | (1 << 48) | (((index >> 15) & 1) << 11) | 0x33;
    program(&mut io, 5, rte);
    io.set_irq(5, true);
    let m = rec.sent.lock().unwrap()[0];
    assert_eq!(m.address & 0xffff_f000, 0xfee0_0000 | ((0x123 >> 7) << 12));
    assert_eq!(
        (m.address >> 5) & 0x7fff,
        0x123,
        "handle[14:0] in address 19:5"
    );
    assert_eq!((m.address >> 4) & 1, 1, "interrupt format bit");
    assert_eq!((m.address >> 2) & 1, 1, "handle[15] in address bit 2");
    assert_eq!((m.address >> 3) & 1, 0, "SHV clear");
}

#[test]
fn ioapic_route_updates_only_for_unmasked_level_entries() {
    let (mut io, rec) = setup();
    program(&mut io, 3, 0x30);
    program(&mut io, 18, RTE_TRIGGER_LEVEL | 0x60);
    let routes = rec.routes.lock().unwrap();
    assert_eq!(routes.last().map(|r| r.0), Some(18));
    assert!(routes.last().unwrap().1.is_some());
    assert!(routes.iter().filter(|r| r.0 == 3).all(|r| r.1.is_none()));
}

#[test]
fn ioapic_out_of_range_pins_and_registers_are_ignored() {
    let (mut io, rec) = setup();
    io.set_irq(24, true);
    io.set_irq(usize::MAX, true);
    write_reg(&mut io, IOREDTBL_BASE + 48, 0);
    assert_eq!(read_reg(&mut io, IOREDTBL_BASE + 48), 0);
    assert_eq!(read_reg(&mut io, 0x3), 0);
    let mut b = [0u8; 8];
    io.read(0x20, &mut b);
    assert_eq!(b, [0; 8]);
    assert_eq!(sent(&rec), 0);
}

#[test]
fn ioapic_state_lists_unmasked_or_asserted_pins_only() {
    let (mut io, _) = setup();
    write_reg(&mut io, IOAPICID, 0x0200_0000);
    program(&mut io, 4, 0x31);
    program(&mut io, 9, RTE_MASKED | RTE_TRIGGER_LEVEL | 0x39);
    io.set_irq(9, true);
    let s = io.state();
    assert_eq!(s.id, 2);
    assert_eq!(s.source, SRC);
    assert_eq!(
        s.pins,
        vec![
            PinState {
                pin: 4,
                entry: 0x31,
                vector: 0x31,
                level: false,
                masked: false,
                asserted: false,
            },
            PinState {
                pin: 9,
                entry: RTE_MASKED | RTE_TRIGGER_LEVEL | 0x39,
                vector: 0x39,
                level: true,
                masked: true,
                asserted: true,
            },
        ]
    );
}
