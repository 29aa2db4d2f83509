//! The tap backend: its errors and ioctl numbers, and (ignored: they need CAP_NET_ADMIN and
//! ip(8)) a real tap, alone and under the device's job.

use super::*;

#[test]
fn tap_name_too_long_is_refused_before_any_syscall() {
    let e = Tap::open("a-name-of-16-chr").err().unwrap();
    assert!(matches!(e, TapError::Name(_)), "{e}");
    assert!(matches!(Tap::open("").err().unwrap(), TapError::Name(_)));
}

#[test]
fn tap_attach_permission_denied_names_cap_net_admin() {
    let e =
        crate::virtio::net::tap::attach_error("tap0", io::Error::from_raw_os_error(libc::EPERM));
    assert!(matches!(e, TapError::Permission { .. }), "{e}");
    assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
    assert!(e.to_string().contains("ip tuntap add dev tap0"), "{e}");
    let busy =
        crate::virtio::net::tap::attach_error("tap0", io::Error::from_raw_os_error(libc::EBUSY));
    assert!(matches!(busy, TapError::Busy { .. }), "{busy}");
}

#[test]
fn tap_ioctl_numbers_match_if_tun_h() {
    // include/uapi/linux/if_tun.h on x86-64.
    assert_eq!(crate::virtio::net::tap::TUNSETIFF, 0x4004_54ca);
    assert_eq!(crate::virtio::net::tap::TUNSETOFFLOAD, 0x4004_54d0);
    assert_eq!(crate::virtio::net::tap::TUNSETVNETHDRSZ, 0x4004_54d8);
}

/// Runs `ip` with `args`.
fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// A real tap (created here, gone when closed): an ARP request for the host's address on
/// it, written as a guest would, gets the host's ARP reply, read as a guest would.
#[test]
#[ignore = "needs CAP_NET_ADMIN and ip(8): cargo test -p devices -- --ignored tap_"]
fn tap_real_arp_request_gets_the_host_reply() {
    let tap = host_tap("t", 7);
    // The offloads a driver with GUEST_CSUM and GUEST_TSO4/6 gets are ones the tap takes.
    tap.set_offloads(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        .unwrap();
    let guest_mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let f = arp_request(guest_mac, 7);
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    mem.write_slice(&f, GuestAddress(0)).unwrap();
    let slices: Vec<_> = vm_memory::GuestMemoryBackend::get_slices(&mem, GuestAddress(0), f.len())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tap.write_frame(&slices).unwrap(), f.len());
    let mut buf = vec![0u8; MAX_FRAME];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no ARP reply");
        match tap.read_frame(&mut buf) {
            // An ARP reply (opcode 2) to the guest's MAC; other frames (IPv6 ND) skipped.
            Ok(n)
                if n >= VNET_HDR_LEN + 42
                    && buf[12..18] == guest_mac
                    && buf[24..26] == [0x08, 0x06]
                    && buf[32..34] == [0, 2] =>
            {
                // No offloads: no flags, no GSO (the first 10 header bytes).
                assert_eq!(buf[..10], [0u8; 10]);
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A tap made here (gone when closed) with 10.213.N.1/24 on the host side, up.
fn host_tap(tag: &str, subnet: u8) -> Tap {
    let name = format!("mv{tag}{}", std::process::id() % 100_000);
    let tap = Tap::open(&name).unwrap();
    ip(&[
        "addr",
        "add",
        &format!("10.213.{subnet}.1/24"),
        "dev",
        &name,
    ]);
    ip(&["link", "set", &name, "up"]);
    tap
}

/// An ARP request for 10.213.N.1 from 10.213.N.2 (`mac`), vnet header first.
fn arp_request(mac: [u8; 6], subnet: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[10, 213, subnet, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 213, subnet, 1]);
    f
}

/// Whether `f` (vnet header first) is an ARP reply to `mac`.
fn is_arp_reply_to(f: &[u8], mac: [u8; 6]) -> bool {
    f.len() >= VNET_HDR_LEN + 42
        && f[12..18] == mac
        && f[24..26] == [0x08, 0x06]
        && f[32..34] == [0, 2]
}

/// The whole device path over a real tap: the guest's ARP request leaves through the transmit
/// queue (writev from guest memory), the host's reply comes back through the receive queue.
#[test]
#[ignore = "needs CAP_NET_ADMIN and ip(8): cargo test -p devices -- --ignored tap_"]
fn tap_real_job_sends_arp_request_and_receives_the_reply() {
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x57];
    let tap = host_tap("j", 8);
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let mut job = NetJob::new(
        Arc::new(tap),
        VirtioMemory::Direct(mem.clone()),
        active(RX_QUEUE, queue(&rig.rx, 0)),
        active(TX_QUEUE, queue(&rig.tx, 0)),
        rig.signals.clone(),
        rig.stats.clone(),
        0,
    );
    let chains: Vec<_> = (0..8)
        .map(|i| desc(BUF2 + i * 0x1000, 1526, F_WRITE, 0))
        .collect();
    rig.rx.add_desc_chains(&chains, 0).unwrap();
    let f = arp_request(mac, 8);
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    rig.tx
        .add_desc_chains(&[desc(BUF, f.len() as u32, 0, 0)], 0)
        .unwrap();
    job.process_tx();
    assert_eq!(count(&rig.stats.tx_frames), 1, "{:?}", rig.stats);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        job.process_rx();
        let got = used(&rig.rx).iter().any(|&(id, len)| {
            is_arp_reply_to(
                &bytes(&mem, BUF2 + u64::from(id) * 0x1000, len as usize),
                mac,
            )
        });
        if got {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ARP reply: {:?}",
            used(&rig.rx)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rig.signals.queues().contains(&RX_QUEUE));
}
