use super::*;
use crate::pci::vectors::{VectorDelivery, VectorMessage};
use crate::vfio::fake::{FakeFunction, Line, Routes, Sent, Watched};

struct Rig {
    host: Arc<FakeFunction>,
    sent: Arc<Sent>,
    routes: Arc<Routes>,
    watched: Arc<Watched>,
    line: Arc<Line>,
    irq: Interrupts,
}

const SRC: Bdf = Bdf::new(0, 3, 0);

fn rig_with(routing: bool, fail_enable: bool) -> Rig {
    let mut f = FakeFunction {
        fail_enable,
        ..Default::default()
    };
    f.irq_counts.insert(INTX_IRQ, 1);
    f.irq_counts.insert(MSI_IRQ, 4);
    f.irq_counts.insert(MSIX_IRQ, 8);
    let host = Arc::new(f);
    let sent = Arc::new(Sent::default());
    let routes = Arc::new(Routes::default());
    let watched = Arc::new(Watched::default());
    let line = Arc::new(Line::default());
    let irq = Interrupts::new(InterruptWiring {
        host: host.clone(),
        source: SRC,
        trigger: sent.clone(),
        routing: routing.then(|| routes.clone() as Arc<dyn IrqfdRouting>),
        watcher: watched.clone(),
        name: "test".into(),
    });
    irq.wire_intx(line.clone());
    Rig {
        host,
        sent,
        routes,
        watched,
        line,
        irq,
    }
}

fn rig() -> Rig {
    rig_with(true, false)
}

#[test]
fn vectors_enabled_at_host_with_one_eventfd_each() {
    let r = rig();
    r.irq.set_mode(Mode::Msix, 3);
    assert_eq!(r.irq.mode(), Mode::Msix);
    assert_eq!(*r.host.irq_calls.lock().unwrap(), vec![(MSIX_IRQ, Some(3))]);
    assert_eq!(
        r.watched.tokens(),
        vec![0, 1, 2],
        "masked vectors are watched"
    );
    r.irq.set_mode(Mode::Msix, 3);
    assert_eq!(
        r.host.irq_calls.lock().unwrap().len(),
        1,
        "same mode: no host call"
    );
}

#[test]
fn vector_count_is_bounded_by_the_host() {
    let r = rig();
    r.irq.set_mode(Mode::Msi, 32);
    assert_eq!(*r.host.irq_calls.lock().unwrap(), vec![(MSI_IRQ, Some(4))]);
}

#[test]
fn unmasked_programmed_vector_is_routed_in_the_hypervisor() {
    let r = rig();
    r.irq.set_mode(Mode::Msix, 2);
    r.irq.update_vector(1, Some((0xfee0_0000, 0x41)), false);
    assert_eq!(r.routes.data(), vec![0x41]);
    assert_eq!(
        r.watched.tokens(),
        vec![0],
        "a routed vector is not watched"
    );
    let m = *r.routes.routes.lock().unwrap().values().next().unwrap();
    assert_eq!(m.source, SRC);
    r.irq.update_vector(1, Some((0xfee0_0000, 0x42)), false);
    assert_eq!(r.routes.data(), vec![0x42], "a new message moves the route");
}

#[test]
fn masking_unroutes_and_signal_sets_pending_then_unmask_delivers() {
    let r = rig();
    r.irq.set_mode(Mode::Msix, 1);
    r.irq.update_vector(0, Some((0xfee0_0000, 0x41)), false);
    r.irq.update_vector(0, Some((0xfee0_0000, 0x41)), true);
    assert!(r.routes.data().is_empty());
    assert_eq!(r.watched.tokens(), vec![0]);
    r.host.fire(MSIX_IRQ, 0);
    r.irq.signalled(0);
    assert!(r.irq.pending(0));
    assert!(r.sent.data().is_empty(), "held back while masked");
    r.irq.update_vector(0, Some((0xfee0_0000, 0x41)), false);
    assert_eq!(
        r.sent.data(),
        vec![0x41],
        "the pending interrupt is sent on unmask"
    );
    assert!(!r.irq.pending(0));
    assert_eq!(r.routes.data(), vec![0x41]);
}

#[test]
fn spurious_wakeup_without_signal_does_nothing() {
    let r = rig();
    r.irq.set_mode(Mode::Msix, 1);
    r.irq.signalled(0);
    assert!(!r.irq.pending(0));
    r.irq.signalled(7);
}

#[test]
fn blocked_by_remapping_is_relayed_through_the_trigger() {
    let r = rig();
    r.routes.blocked.lock().unwrap().insert(0x41);
    r.irq.set_mode(Mode::Msi, 1);
    r.irq.update_vector(0, Some((0xfee0_0010, 0x41)), false);
    assert!(r.routes.data().is_empty());
    assert_eq!(r.watched.tokens(), vec![0]);
    r.host.fire(MSI_IRQ, 0);
    r.irq.signalled(0);
    assert_eq!(
        r.sent.data(),
        vec![0x41],
        "sent through the VMM, where the fault is recorded"
    );
    // The guest fixes its IRTE and invalidates the interrupt entry cache.
    r.routes.blocked.lock().unwrap().clear();
    r.irq.refresh();
    assert_eq!(r.routes.data(), vec![0x41]);
    assert!(r.watched.tokens().is_empty());
}

#[test]
fn without_routing_every_vector_is_relayed() {
    let r = rig_with(false, false);
    r.irq.set_mode(Mode::Msi, 2);
    r.irq.update_vector(0, Some((0xfee0_0000, 0x40)), false);
    r.irq.update_vector(1, Some((0xfee0_0000, 0x41)), false);
    r.host.fire(MSI_IRQ, 1);
    r.irq.signalled(1);
    assert_eq!(r.sent.data(), vec![0x41]);
    assert_eq!(r.watched.tokens(), vec![0, 1]);
}

#[test]
fn intx_raises_line_until_eoi_then_unmasks_host() {
    let r = rig();
    assert!(r.irq.has_intx());
    r.irq.set_mode(Mode::Intx, 0);
    assert_eq!(*r.host.irq_calls.lock().unwrap(), vec![(INTX_IRQ, Some(1))]);
    assert_eq!(r.watched.tokens(), vec![INTX_TOKEN]);
    r.host.fire(INTX_IRQ, 0);
    r.irq.signalled(INTX_TOKEN);
    assert_eq!(*r.line.0.lock().unwrap(), vec![true]);
    r.irq.resample();
    assert_eq!(*r.host.unmasks.lock().unwrap(), 1);
    r.host.fire(INTX_IRQ, 0);
    r.irq.signalled(INTX_TOKEN);
    assert_eq!(
        *r.line.0.lock().unwrap(),
        vec![true, true],
        "asserted again after EOI"
    );
}

#[test]
fn leaving_intx_for_msi_disables_it_and_lowers_the_line() {
    let r = rig();
    r.irq.set_mode(Mode::Intx, 0);
    r.host.fire(INTX_IRQ, 0);
    r.irq.signalled(INTX_TOKEN);
    r.irq.set_mode(Mode::Msi, 1);
    assert_eq!(
        *r.host.irq_calls.lock().unwrap(),
        vec![(INTX_IRQ, Some(1)), (INTX_IRQ, None), (MSI_IRQ, Some(1))],
        "INTx off at the host before MSI is enabled"
    );
    assert_eq!(*r.line.0.lock().unwrap(), vec![true, false]);
    assert_eq!(r.watched.tokens(), vec![0]);
    r.irq.resample();
    assert_eq!(
        *r.host.unmasks.lock().unwrap(),
        0,
        "no INTx unmask outside INTx mode"
    );
}

#[test]
fn turning_off_unroutes_and_unwatches_everything() {
    let r = rig();
    r.irq.set_mode(Mode::Msix, 2);
    r.irq.update_vector(0, Some((0xfee0_0000, 0x40)), false);
    r.irq.set_mode(Mode::Off, 0);
    assert!(r.routes.data().is_empty());
    assert!(r.watched.tokens().is_empty());
    assert_eq!(
        r.host.irq_calls.lock().unwrap().last(),
        Some(&(MSIX_IRQ, None))
    );
    r.irq.update_vector(0, Some((0xfee0_0000, 0x40)), false);
    assert!(r.routes.data().is_empty(), "no vectors while off");
}

#[test]
fn host_refusing_to_enable_leaves_the_function_silent() {
    let r = rig_with(true, true);
    r.irq.set_mode(Mode::Msix, 2);
    assert_eq!(r.irq.mode(), Mode::Off);
    r.irq.update_vector(0, Some((0xfee0_0000, 0x40)), false);
    assert!(r.routes.data().is_empty());
}

#[test]
fn state_reports_each_vector_delivery() {
    let r = rig();
    r.routes.blocked.lock().unwrap().insert(0x42);
    r.irq.set_mode(Mode::Msix, 4);
    r.irq.update_vector(0, Some((0xfee0_0000, 0x40)), false);
    r.irq.update_vector(1, Some((0xfee0_0000, 0x41)), true);
    r.irq.update_vector(2, Some((0xfee0_0000, 0x42)), false);
    let s = r.irq.state();
    assert_eq!(s.mode, Mode::Msix);
    let how: Vec<_> = s.vectors.iter().map(|v| (v.index, v.delivery)).collect();
    assert_eq!(
        how,
        vec![
            (0, VectorDelivery::InHypervisor),
            (1, VectorDelivery::Masked),
            (2, VectorDelivery::Relayed),
            (3, VectorDelivery::Unprogrammed),
        ]
    );
    assert_eq!(
        s.vectors[1].message,
        Some(VectorMessage {
            address: 0xfee0_0000,
            data: 0x41
        })
    );
    assert_eq!(s.vectors[3].message, None);
}
