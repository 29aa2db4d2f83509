use super::*;
use crate::interrupt::IrqfdRouting;
use crate::pci::configuration::{PciIds, REG_CAPABILITIES};
use crate::vfio::fake::{Routes, Sent};
use iommu::Bdf;

/// Table in BAR 1 at 0, PBA at 0x800, as QEMU's virtio devices place them.
const TABLE: (usize, u32) = (1, 0);
const PBA: (usize, u32) = (1, 0x800);
const MSG: u64 = 0x0000_0000_fee0_0000;

struct Rig {
    config: PciConfiguration,
    msix: EmulatedMsix,
    sent: Arc<Sent>,
    routes: Arc<Routes>,
}

fn rig(vectors: u16) -> Rig {
    let mut config = PciConfiguration::new(
        PciIds {
            vendor: 0x1af4,
            device: 0x1041,
            class: 0,
            subclass: 0,
            prog_if: 0,
            revision: 1,
            subsystem_vendor: 0,
            subsystem: 0,
        },
        1,
    );
    let sent = Arc::new(Sent::default());
    let routes = Arc::new(Routes::default());
    let wiring = VectorWiring {
        source: Bdf::new(0, 5, 0),
        trigger: sent.clone(),
        routing: Some(routes.clone() as Arc<dyn IrqfdRouting>),
        watcher: None,
        name: "test".into(),
    };
    let msix = EmulatedMsix::add_to(&mut config, vectors, TABLE, PBA, wiring).unwrap();
    Rig {
        config,
        msix,
        sent,
        routes,
    }
}

impl Rig {
    fn read_config(&self, reg: usize) -> u32 {
        let v = self.config.read_register(reg);
        self.msix.read_config_register(reg, v)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write_register(reg, offset, data);
        self.msix.write_config_register(reg, offset, data);
    }

    /// Writes message control's upper byte (enable 0x80, function mask 0x40).
    fn control(&mut self, v: u8) {
        let reg = self.msix.cap().offset() / 4;
        self.write_config(reg, 3, &[v]);
    }

    /// Programs entry `i` with data `data`, unmasked or masked.
    fn program(&mut self, i: u64, data: u32, masked: bool) {
        self.msix.write_bar(1, i * 16, &MSG.to_le_bytes());
        let v = u64::from(data) | (u64::from(masked) << 32);
        self.msix.write_bar(1, i * 16 + 8, &v.to_le_bytes());
    }

    fn pba(&self) -> u8 {
        let mut b = [0u8; 1];
        assert!(self.msix.read_bar(1, 0x800, &mut b));
        b[0]
    }

    fn trigger(&self, i: usize) {
        lock(&self.msix.vectors()).trigger(i);
    }
}

#[test]
fn emulated_msix_capability_is_linked_with_table_size() {
    let r = rig(3);
    let off = r.msix.cap().offset();
    assert_eq!(r.read_config(REG_CAPABILITIES) as usize, off);
    let header = r.read_config(off / 4);
    assert_eq!(header & 0xff, u32::from(CAP_ID_MSIX));
    assert_eq!(
        header >> 16,
        2,
        "table size - 1, disabled, not function-masked"
    );
    assert_eq!(r.read_config(off / 4 + 1), 1, "table: BIR 1, offset 0");
    assert_eq!(
        r.read_config(off / 4 + 2),
        0x801,
        "PBA: BIR 1, offset 0x800"
    );
}

#[test]
fn emulated_msix_table_and_pba_registers_ignore_writes() {
    let mut r = rig(3);
    let reg = r.msix.cap().offset() / 4;
    r.write_config(reg + 1, 0, &[0xff; 4]);
    r.write_config(reg, 2, &[0xff]);
    assert_eq!(r.read_config(reg + 1), 1);
    assert_eq!(r.read_config(reg) >> 16, 2);
}

#[test]
fn emulated_msix_disabled_holds_the_vector_pending() {
    let mut r = rig(2);
    r.program(0, 0x41, false);
    r.trigger(0);
    assert!(r.routes.data().is_empty() && r.sent.data().is_empty());
    assert_eq!(r.pba(), 1);
    r.control(0x80);
    assert_eq!(
        r.sent.data(),
        vec![0x41],
        "enabling sends the pending interrupt"
    );
    assert_eq!(r.routes.data(), vec![0x41]);
    assert_eq!(r.pba(), 0);
}

#[test]
fn emulated_msix_unmasking_an_entry_routes_it() {
    let mut r = rig(2);
    r.control(0x80);
    r.program(1, 0x42, true);
    assert!(r.routes.data().is_empty(), "masked entries have no route");
    r.program(1, 0x42, false);
    assert_eq!(r.routes.data(), vec![0x42]);
}

#[test]
fn emulated_msix_function_mask_removes_routes_and_holds() {
    let mut r = rig(2);
    r.control(0x80);
    r.program(0, 0x41, false);
    r.control(0xc0);
    assert!(r.routes.data().is_empty());
    r.trigger(0);
    assert_eq!(r.pba(), 1);
    r.control(0x80);
    assert_eq!(r.sent.data(), vec![0x41]);
    assert_eq!(r.routes.data(), vec![0x41]);
}

#[test]
fn emulated_msix_pba_is_read_only() {
    let mut r = rig(1);
    r.trigger(0);
    assert!(r.msix.write_bar(1, 0x800, &[0; 8]));
    assert_eq!(r.pba(), 1);
}

#[test]
fn emulated_msix_other_bar_accesses_are_the_devices() {
    let mut r = rig(1);
    let mut b = [0u8; 4];
    assert!(!r.msix.read_bar(0, 0, &mut b));
    assert!(!r.msix.read_bar(1, 0x400, &mut b), "between table and PBA");
    assert!(!r.msix.write_bar(2, 0, &b));
}

#[test]
fn emulated_msix_config_write_past_the_dword_is_dropped() {
    let mut r = rig(1);
    let reg = r.msix.cap().offset() / 4;
    r.msix.write_config_register(reg, 3, &[0x80, 0x80]);
    assert!(!r.msix.cap().enabled());
}
