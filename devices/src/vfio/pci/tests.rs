use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::vfio::fake::{FakeFunction, Line, Routes, Sent};
use crate::vfio::function::{INTX_IRQ, MSIX_IRQ, MSI_IRQ};

/// Config space: PM at 0x40 -> MSI (64-bit, 4 vectors, masking) at 0x50 -> MSI-X (4
/// entries, table in BAR 0 at 0x2000, PBA at 0x3000) at 0x70; INTA.
fn config() -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    c[0..4].copy_from_slice(&0x11e8_1234u32.to_le_bytes());
    c[0x06] = 0x10;
    c[0x34] = 0x40;
    c[0x3d] = 1;
    c[0x40] = 0x01;
    c[0x41] = 0x50;
    c[0x50] = 0x05;
    c[0x51] = 0x70;
    c[0x52..0x54].copy_from_slice(&(0x80u16 | 0x100 | (2 << 1)).to_le_bytes());
    c[0x70] = 0x11;
    c[0x72] = 0x03;
    c[0x74..0x78].copy_from_slice(&0x2000u32.to_le_bytes());
    c[0x78..0x7c].copy_from_slice(&0x3000u32.to_le_bytes());
    c
}

#[derive(Default)]
struct Slots(Mutex<Vec<(u64, u64)>>);

impl GuestMmioMapper for Slots {
    fn map(&self, gpa: u64, size: u64, _host: usize) -> Result<u32, String> {
        let mut s = self.0.lock().unwrap();
        s.push((gpa, size));
        Ok(s.len() as u32)
    }
    fn unmap(&self, _handle: u32) {}
}

struct Rig {
    host: Arc<FakeFunction>,
    sent: Arc<Sent>,
    routes: Arc<Routes>,
    line: Arc<Line>,
    slots: Arc<Slots>,
    dev: VfioPciDevice,
}

fn rig() -> Rig {
    let mut f = FakeFunction::with_config(config());
    f.irq_counts.insert(INTX_IRQ, 1);
    f.irq_counts.insert(MSI_IRQ, 4);
    f.irq_counts.insert(MSIX_IRQ, 4);
    f.add_region(
        0,
        (0..0x4000u32).map(|i| i as u8).collect(),
        vec![(0, 0x4000)],
    );
    let host = Arc::new(f);
    let sent = Arc::new(Sent::default());
    let routes = Arc::new(Routes::default());
    let line = Arc::new(Line::default());
    let slots = Arc::new(Slots::default());
    let mut dev = VfioPciDevice::new(
        host.clone(),
        "0000:b3:00.0",
        VfioPciWiring {
            address: Bdf::new(0, 2, 0),
            trigger: sent.clone(),
            routing: Some(routes.clone()),
            mapper: Some(slots.clone()),
        },
    )
    .unwrap();
    assert!(dev.wire_intx(line.clone()));
    Rig {
        host,
        sent,
        routes,
        line,
        slots,
        dev,
    }
}

fn write32(dev: &mut VfioPciDevice, off: usize, v: u32) {
    dev.write_config_register(off / 4, (off % 4) as u64, &v.to_le_bytes()[..4 - off % 4]);
}

fn write_table(dev: &mut VfioPciDevice, off: u64, v: u32) {
    dev.write_bar(0, 0x2000 + off, &v.to_le_bytes());
}

fn calls(r: &Rig) -> Vec<(u32, Option<usize>)> {
    r.host.irq_calls.lock().unwrap().clone()
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn new_device_is_reset_and_starts_with_intx() {
    let r = rig();
    assert_eq!(*r.host.resets.lock().unwrap(), 1);
    assert_eq!(calls(&r), vec![(INTX_IRQ, Some(1))]);
    assert_eq!(r.dev.interrupts().mode(), Mode::Intx);
}

#[test]
fn config_reads_overlay_virtual_capabilities_and_hide_the_rom() {
    let mut r = rig();
    assert_eq!(r.dev.read_config_register(0), 0x11e8_1234);
    r.host
        .write(CONFIG_REGION, 0x30, &0xfffe_0001u32.to_le_bytes());
    assert_eq!(r.dev.read_config_register(0x30 / 4), 0, "ROM BAR hidden");
    // MSI-X control: table size 3, disabled; the host's enable bit is never shown.
    r.host.write(CONFIG_REGION, 0x73, &[0xc0]);
    assert_eq!(r.dev.read_config_register(0x70 / 4) >> 16, 0x0003);
    assert_eq!(r.dev.read_config_register(0x1000 / 4), 0xffff_ffff);
}

#[test]
fn config_writes_to_capabilities_stay_virtual_others_reach_the_host() {
    let mut r = rig();
    write32(&mut r.dev, 0x54, 0xfee0_0000);
    assert_eq!(&r.host.region_bytes(CONFIG_REGION)[0x54..0x58], &[0; 4]);
    r.dev.write_config_register(1, 0, &[0x02, 0x00]);
    assert_eq!(r.host.region_bytes(CONFIG_REGION)[0x04], 0x02);
}

#[test]
fn msix_enable_unmask_routes_vector_and_table_never_reaches_host() {
    let mut r = rig();
    write_table(&mut r.dev, 16, 0xfee0_0000);
    write_table(&mut r.dev, 24, 0x0061);
    write_table(&mut r.dev, 28, 0);
    assert_eq!(
        &r.host.region_bytes(0)[0x2010..0x2014],
        &[0x10, 0x11, 0x12, 0x13]
    );
    // Enable MSI-X (control byte 0x73 bit 7).
    r.dev.write_config_register(0x70 / 4, 3, &[0x80]);
    assert_eq!(
        calls(&r),
        vec![(INTX_IRQ, Some(1)), (INTX_IRQ, None), (MSIX_IRQ, Some(4))]
    );
    assert_eq!(r.routes.data(), vec![0x61]);
    let mut b = [0u8; 4];
    r.dev.read_bar(0, 0x2018, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x61, "the guest reads its own table");
    // Function mask: the route goes, a signal becomes pending in the PBA.
    r.dev.write_config_register(0x70 / 4, 3, &[0xc0]);
    assert!(r.routes.data().is_empty());
    r.host.fire(MSIX_IRQ, 1);
    wait_for("the pending bit", || r.dev.interrupts().pending(1));
    let mut p = [0u8; 8];
    r.dev.read_bar(0, 0x3000, &mut p);
    assert_eq!(p[0], 0b10);
    r.dev.write_config_register(0x70 / 4, 3, &[0x80]);
    assert_eq!(r.sent.data(), vec![0x61], "delivered when unmasked");
    assert_eq!(r.routes.data(), vec![0x61]);
}

#[test]
fn msix_disable_falls_back_to_intx() {
    let mut r = rig();
    r.dev.write_config_register(0x70 / 4, 3, &[0x80]);
    r.dev.write_config_register(0x70 / 4, 3, &[0x00]);
    assert_eq!(r.dev.interrupts().mode(), Mode::Intx);
    assert_eq!(calls(&r).last(), Some(&(INTX_IRQ, Some(1))));
}

#[test]
fn msi_multiple_vectors_with_masking() {
    let mut r = rig();
    write32(&mut r.dev, 0x54, 0xfee0_0000);
    write32(&mut r.dev, 0x58, 0);
    r.dev.write_config_register(0x5c / 4, 0, &[0x40, 0x00]);
    write32(&mut r.dev, 0x60, 0b1110); // mask vectors 1-3
    r.dev.write_config_register(0x50 / 4, 2, &[0x21]); // enable, MME = 2 (4 vectors)
    assert_eq!(calls(&r).last(), Some(&(MSI_IRQ, Some(4))));
    assert_eq!(r.routes.data(), vec![0x40]);
    write32(&mut r.dev, 0x60, 0b0110);
    assert_eq!(r.routes.data(), vec![0x40, 0x43]);
    r.host.fire(MSI_IRQ, 2);
    wait_for("the pending bit", || r.dev.interrupts().pending(2));
    assert_eq!(
        r.dev.read_config_register(0x64 / 4),
        0b100,
        "MSI pending bits"
    );
}

#[test]
fn intx_signal_raises_the_line_through_the_relay() {
    let r = rig();
    r.host.fire(INTX_IRQ, 0);
    wait_for("the INTx line", || !r.line.0.lock().unwrap().is_empty());
    assert_eq!(*r.line.0.lock().unwrap(), vec![true]);
    use crate::interrupt::Resample;
    r.dev.interrupts().resample();
    assert_eq!(*r.host.unmasks.lock().unwrap(), 1);
}

#[test]
fn bar_accesses_outside_the_msix_structures_are_forwarded() {
    let mut r = rig();
    let mut b = [0u8; 4];
    r.dev.read_bar(0, 0x1004, &mut b);
    assert_eq!(b, [4, 5, 6, 7]);
    r.dev.write_bar(0, 0x1008, &[0xaa]);
    assert_eq!(r.host.region_bytes(0)[0x1008], 0xaa);
    r.dev.write_bar(0, 0x3000, &[0xff]);
    assert_eq!(r.host.region_bytes(0)[0x3000], 0x00, "the PBA is read-only");
}

#[test]
fn bars_map_around_the_msix_pages() {
    let mut r = rig();
    r.dev.bar_moved(0, Some(0xc000_0000));
    assert_eq!(
        *r.slots.0.lock().unwrap(),
        vec![(0xc000_0000, 0x2000)],
        "pages 2 (table) and 3 (PBA) stay trapped"
    );
}

#[test]
fn bus_master_waits_for_the_dma_gate() {
    struct Gate(Mutex<u32>);
    impl DmaGate for Gate {
        fn wait_ready(&self) -> bool {
            *self.0.lock().unwrap() += 1;
            true
        }
    }
    let mut r = rig();
    let g = Arc::new(Gate(Mutex::new(0)));
    r.dev.set_dma_gate(g.clone());
    r.dev.write_config_register(1, 0, &[0x02]);
    assert_eq!(*g.0.lock().unwrap(), 0);
    r.dev.write_config_register(1, 0, &[0x06]);
    assert_eq!(*g.0.lock().unwrap(), 1);
}

#[test]
fn bus_master_refused_by_the_dma_gate_stays_off() {
    struct Closed;
    impl DmaGate for Closed {
        fn wait_ready(&self) -> bool {
            false
        }
    }
    let mut r = rig();
    r.dev.set_dma_gate(Arc::new(Closed));
    r.dev.write_config_register(1, 0, &[0x06]);
    let command = r.dev.read_config_register(1) & 0xffff;
    assert_eq!(command & 0x4, 0, "bus mastering stays off");
    assert_eq!(command & 0x2, 0x2, "the rest of the write goes through");
}

#[test]
fn drop_disables_interrupts_and_resets() {
    let r = rig();
    let host = r.host.clone();
    drop(r);
    assert_eq!(*host.resets.lock().unwrap(), 2);
    assert_eq!(
        host.irq_calls.lock().unwrap().last(),
        Some(&(INTX_IRQ, None))
    );
}

/// Enables MSI-X with entry 0 programmed (data 0x61) and `masked` in its vector control, then
/// turns the MSI capability on as well (undefined for software, but a guest can do it).
fn msix_then_msi_enabled(masked: bool) -> Rig {
    let mut r = rig();
    write_table(&mut r.dev, 0, 0xfee0_0000);
    write_table(&mut r.dev, 8, 0x0061);
    write_table(&mut r.dev, 12, u32::from(masked));
    r.dev.write_config_register(0x70 / 4, 3, &[0x80]);
    assert_eq!(r.dev.interrupts().mode(), Mode::Msix);
    r.dev.write_config_register(0x50 / 4, 2, &[0x01]); // MSI enable, MME 0
    assert_eq!(r.dev.interrupts().mode(), Mode::Msix, "MSI-X wins");
    r
}

// Robustness review F-VFIO-1: MSI capability writes used to reprogram MSI-X vector i.
#[test]
fn msi_message_writes_with_msix_on_leave_a_masked_msix_vector_unrouted() {
    let mut r = msix_then_msi_enabled(true);
    assert!(r.routes.data().is_empty());
    write32(&mut r.dev, 0x54, 0xfee0_0000);
    r.dev.write_config_register(0x5c / 4, 0, &[0x99, 0x00]);
    write32(&mut r.dev, 0x60, 0); // MSI mask bits clear
    assert!(
        r.routes.data().is_empty(),
        "masked MSI-X vector 0 routed: {:#x?}",
        r.routes.data()
    );
}

#[test]
fn msi_message_writes_with_msix_on_keep_the_msix_vector_message() {
    let mut r = msix_then_msi_enabled(false);
    assert_eq!(r.routes.data(), vec![0x61]);
    write32(&mut r.dev, 0x54, 0xfee0_0000);
    r.dev.write_config_register(0x5c / 4, 0, &[0x99, 0x00]);
    write32(&mut r.dev, 0x60, 1); // MSI vector 0 masked
    assert_eq!(
        r.routes.data(),
        vec![0x61],
        "MSI-X vector 0 as its table says"
    );
}
