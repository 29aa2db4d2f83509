//! passt's arguments, the port probe and (when passt is installed) a real passt: a DHCP
//! discover through the socket gets an offer back (with the MTU given), a connection to the forwarded host port
//! reaches the guest side as a SYN to the guest port, and passt exits (the forward gone)
//! when the socket closes.

use std::io::{Read, Write};

use super::*;

fn fwd(proto: Proto, host_port: u16, guest_port: u16) -> HostFwd {
    HostFwd {
        proto,
        host_addr: None,
        host_port,
        guest_port,
    }
}

#[test]
fn passt_args_map_hostfwd_to_tcp_and_udp_ports_and_none() {
    let a = passt_args(
        7,
        &[
            fwd(Proto::Tcp, 10022, 22),
            HostFwd {
                host_addr: Some("127.0.0.1".parse().unwrap()),
                ..fwd(Proto::Tcp, 8080, 80)
            },
        ],
        None,
    );
    assert_eq!(
        a,
        [
            "--foreground",
            "--quiet",
            "--fd",
            "7",
            "--tcp-ports",
            "10022:22,127.0.0.1/8080:80",
            "--udp-ports",
            "none"
        ]
    );
    let a = passt_args(3, &[fwd(Proto::Udp, 5353, 53)], Some(65520));
    assert_eq!(
        &a[4..],
        [
            "--tcp-ports",
            "none",
            "--udp-ports",
            "5353:53",
            "--mtu",
            "65520"
        ]
    );
}

#[test]
fn passt_missing_from_path_says_how_to_install_it() {
    let e = find_in(None, Some("/nonexistent:/also/not".into())).unwrap_err();
    assert!(e.to_string().contains("apt-get install passt"), "{e}");
    assert!(find_in(None, None).is_err());
    assert_eq!(
        find_in(Some(Path::new("/x/passt")), None).unwrap(),
        Path::new("/x/passt")
    );
}

#[test]
fn probe_ports_names_a_taken_tcp_port() {
    let held = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let e = probe_ports(&[fwd(Proto::Tcp, port, 22)]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("host tcp port {port} is already in use")
    );
    drop(held);
    probe_ports(&[fwd(Proto::Tcp, port, 22)]).unwrap();
    assert!(!tcp_listening(port));
}

/// A DHCPDISCOVER from `mac` (RFC 2131), broadcast, as an Ethernet frame.
fn dhcp_discover(mac: [u8; 6]) -> Vec<u8> {
    let mut bootp = vec![1u8, 1, 6, 0];
    bootp.extend(0x1234_5678u32.to_be_bytes());
    bootp.extend([0, 0, 0x80, 0]);
    bootp.extend([0u8; 16]);
    bootp.extend(mac);
    bootp.extend([0u8; 10 + 64 + 128]);
    bootp.extend([0x63, 0x82, 0x53, 0x63, 53, 1, 1, 0xff]);
    let udp_len = 8 + bootp.len();
    let mut udp = vec![0, 68, 0, 67];
    udp.extend((udp_len as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(bootp);
    let ip = ipv4_header(17, udp_len, [0; 4], [255; 4]);
    let mut f = vec![0xff; 6];
    f.extend(mac);
    f.extend([0x08, 0x00]);
    f.extend(ip);
    f.extend(udp);
    f
}

/// An IPv4 header (RFC 791) for `payload_len` bytes of `proto` from `src` to `dst`.
fn ipv4_header(proto: u8, payload_len: usize, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + payload_len) as u16).to_be_bytes());
    ip.extend([0, 0, 0, 0, 64, proto, 0, 0]);
    ip.extend(src);
    ip.extend(dst);
    let sum = ip
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

fn send(sock: &mut UnixStream, frame: &[u8]) {
    // One write, as the device's backend does.
    let mut w = (frame.len() as u32).to_be_bytes().to_vec();
    w.extend_from_slice(frame);
    sock.write_all(&w).unwrap();
}

fn recv(sock: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).unwrap();
    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
    sock.read_exact(&mut f).unwrap();
    f
}

/// An IPv4 frame's protocol and destination port, if TCP or UDP.
fn ipv4_dst(f: &[u8]) -> Option<(u8, u16)> {
    if f.len() < 38 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    let l4 = 14 + ihl;
    Some((f[23], u16::from_be_bytes([f[l4 + 2], f[l4 + 3]])))
}

#[test]
fn passt_real_answers_dhcp_forwards_a_host_port_and_exits_with_the_socket() {
    let Ok(exe) = find_passt(None) else {
        eprintln!("SKIP: passt is not installed (apt-get install passt)");
        return;
    };
    // passt needs a routable interface (a default route) to take its addresses from.
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    if !route
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
    {
        eprintln!("SKIP: no default route for passt to copy");
        return;
    }
    // A free host port below the ephemeral range (passt does not forward those).
    let port = (20_000..30_000)
        .find(|&p| TcpListener::bind(("0.0.0.0", p)).is_ok())
        .unwrap();
    let mut p = start(Some(&exe), &[fwd(Proto::Tcp, port, 22)], Some(65520)).unwrap();
    assert!(tcp_listening(port), "passt does not listen on {port}");
    let mut sock = p.sock.try_clone().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    send(&mut sock, &dhcp_discover(mac));
    // The reply: UDP to port 68, to our MAC, with our transaction id.
    let offer = loop {
        let f = recv(&mut sock);
        if ipv4_dst(&f) == Some((17, 68)) {
            break f;
        }
    };
    assert_eq!(&offer[..6], &mac);
    assert_eq!(
        &offer[14 + 20 + 8 + 4..14 + 20 + 8 + 8],
        &0x1234_5678u32.to_be_bytes()
    );
    // The MTU given to passt comes back as DHCP option 26 (RFC 2132 section 5.1).
    assert!(
        offer.windows(4).any(|w| w == [26, 2, 0xff, 0xf0]),
        "no MTU 65520 option in the offer"
    );
    // A host connection to the forwarded port arrives as a SYN to guest port 22.
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let syn = loop {
        let f = recv(&mut sock);
        if ipv4_dst(&f) == Some((6, 22)) {
            break f;
        }
    };
    assert_eq!(syn[14 + 20 + 13] & 0x02, 0x02, "not a SYN");
    // Closing the VM's end ends passt (one-off), and the forward with it.
    drop(sock);
    drop(p.sock);
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "passt still runs after the socket closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!tcp_listening(port), "port {port} still forwarded");
}
