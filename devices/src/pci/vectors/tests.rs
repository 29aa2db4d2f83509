use super::*;
use crate::vfio::fake::{Routes, Sent, Watched};

const SRC: Bdf = Bdf::new(0, 4, 0);
const MSG: (u64, u32) = (0xfee0_0000, 0x41);

struct Rig {
    sent: Arc<Sent>,
    routes: Arc<Routes>,
    watched: Arc<Watched>,
    group: VectorGroup,
}

/// `watch`: a host device signals the eventfds (VFIO); otherwise the device calls `trigger`.
fn rig_with(count: usize, routing: bool, watch: bool) -> Rig {
    let sent = Arc::new(Sent::default());
    let routes = Arc::new(Routes::default());
    let watched = Arc::new(Watched::default());
    let wiring = VectorWiring {
        source: SRC,
        trigger: sent.clone(),
        routing: routing.then(|| routes.clone() as Arc<dyn IrqfdRouting>),
        watcher: watch.then(|| watched.clone() as Arc<dyn FdWatcher>),
        name: "test".into(),
    };
    let group = VectorGroup::with_eventfds(wiring, count).unwrap();
    Rig {
        sent,
        routes,
        watched,
        group,
    }
}

fn emulated(count: usize) -> Rig {
    rig_with(count, true, false)
}

fn sent(r: &Rig) -> Vec<u32> {
    r.sent.data()
}

#[test]
fn vectors_start_masked_held_and_watched() {
    let r = rig_with(3, true, true);
    assert_eq!(r.group.len(), 3);
    assert_eq!(r.watched.tokens(), vec![0, 1, 2]);
    assert!(r.routes.data().is_empty());
}

#[test]
fn unmasked_programmed_vector_is_routed_and_not_watched() {
    let mut r = rig_with(2, true, true);
    r.group.update(1, Some(MSG), false);
    assert_eq!(r.routes.data(), vec![0x41]);
    assert_eq!(r.watched.tokens(), vec![0]);
    let m = r.routes.routes.lock().unwrap().values().next().copied();
    assert_eq!(
        m.map(|m| m.source),
        Some(SRC),
        "the route carries the requester id"
    );
}

#[test]
fn masking_a_routed_vector_removes_its_route() {
    let mut r = rig_with(1, true, true);
    r.group.update(0, Some(MSG), false);
    r.group.update(0, Some(MSG), true);
    assert!(r.routes.data().is_empty());
    assert_eq!(
        r.watched.tokens(),
        vec![0],
        "watched again: it may be pending"
    );
}

#[test]
fn unprogrammed_unmasked_vector_is_held() {
    let mut r = emulated(1);
    r.group.update(0, None, false);
    r.group.trigger(0);
    assert!(r.group.pending(0));
    assert!(sent(&r).is_empty() && r.routes.data().is_empty());
}

#[test]
fn masked_trigger_sets_pending_and_unmask_sends_it_once() {
    let mut r = emulated(1);
    r.group.update(0, Some(MSG), true);
    r.group.trigger(0);
    r.group.trigger(0);
    assert!(r.group.pending(0));
    assert!(sent(&r).is_empty());
    r.group.update(0, Some(MSG), false);
    assert_eq!(sent(&r), vec![0x41], "one pending bit, one message");
    assert!(!r.group.pending(0));
}

#[test]
fn masked_signal_from_the_host_sets_pending() {
    let mut r = rig_with(1, true, true);
    r.group.vectors[0].fd.write(1).unwrap();
    r.group.signalled(0);
    assert!(r.group.pending(0));
    r.group.update(0, Some(MSG), false);
    assert_eq!(sent(&r), vec![0x41]);
}

#[test]
fn spurious_watch_report_without_signal_changes_nothing() {
    let mut r = rig_with(1, true, true);
    r.group.signalled(0);
    assert!(!r.group.pending(0));
}

#[test]
fn routed_trigger_goes_through_the_eventfd() {
    let mut r = emulated(1);
    r.group.update(0, Some(MSG), false);
    r.group.trigger(0);
    assert!(sent(&r).is_empty(), "the hypervisor delivers it");
    assert_eq!(r.group.vectors[0].fd.read().ok(), Some(1));
}

#[test]
fn signal_left_in_the_eventfd_when_masked_becomes_pending() {
    // The hypervisor had not consumed the signal when the guest masked the vector: without a
    // watcher nobody else would see it.
    let mut r = emulated(1);
    r.group.update(0, Some(MSG), false);
    r.group.trigger(0);
    r.group.update(0, Some(MSG), true);
    assert!(r.group.pending(0));
}

#[test]
fn vector_blocked_by_remapping_is_relayed() {
    let mut r = emulated(1);
    r.routes.blocked.lock().unwrap().insert(0x41);
    r.group.update(0, Some(MSG), false);
    assert!(r.routes.data().is_empty());
    r.group.trigger(0);
    assert_eq!(sent(&r), vec![0x41], "relayed: remapping records the fault");
    assert_eq!(r.group.relayed(), 1);
}

#[test]
fn refresh_routes_a_vector_remapping_no_longer_blocks() {
    let mut r = rig_with(1, true, true);
    r.routes.blocked.lock().unwrap().insert(0x41);
    r.group.update(0, Some(MSG), false);
    assert_eq!(r.watched.tokens(), vec![0]);
    r.routes.blocked.lock().unwrap().clear();
    r.group.refresh();
    assert_eq!(r.routes.data(), vec![0x41]);
    assert!(r.watched.tokens().is_empty());
}

#[test]
fn refresh_through_the_shared_handle() {
    let r = rig_with(1, true, true);
    r.routes.blocked.lock().unwrap().insert(0x41);
    let shared = Arc::new(Mutex::new(r.group));
    lock(&shared).update(0, Some(MSG), false);
    r.routes.blocked.lock().unwrap().clear();
    let routes: Arc<dyn InterruptRoutes> = shared.clone();
    routes.refresh();
    assert_eq!(r.routes.data(), vec![0x41]);
}

#[test]
fn without_routing_every_interrupt_is_relayed() {
    let mut r = rig_with(2, false, false);
    r.group.update(0, Some(MSG), false);
    r.group.trigger(0);
    r.group.trigger(1);
    assert_eq!(sent(&r), vec![0x41]);
    assert!(r.group.pending(1));
}

#[test]
fn out_of_range_vector_is_ignored() {
    let mut r = emulated(1);
    r.group.update(5, Some(MSG), false);
    r.group.trigger(5);
    r.group.signalled(usize::MAX);
    assert!(!r.group.pending(5));
    assert!(sent(&r).is_empty() && r.routes.data().is_empty());
}

#[test]
fn dropping_the_group_removes_routes_and_watches() {
    let mut r = rig_with(2, true, true);
    r.group.update(0, Some(MSG), false);
    let (routes, watched) = (r.routes.clone(), r.watched.clone());
    drop(r);
    assert!(routes.data().is_empty());
    assert!(watched.tokens().is_empty());
}
