//! The stream backend (passt's protocol): the framing state machine alone, the backend over
//! a socketpair (partial reads, split frames, short writes, bad lengths, a peer gone), and
//! the job over it (backpressure, the link going down).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::*;
use crate::virtio::net::stream::{Decoder, FrameError, LEN_PREFIX, MAX_STREAM_FRAME};

/// `payload` on the wire: its big-endian length, then it.
fn wire(payload: &[u8]) -> Vec<u8> {
    let mut w = (payload.len() as u32).to_be_bytes().to_vec();
    w.extend_from_slice(payload);
    w
}

/// An Ethernet-sized payload, bytes counting up from `seed`.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

fn feed(d: &mut Decoder, bytes: &[u8]) {
    let space = d.space();
    space[..bytes.len()].copy_from_slice(bytes);
    d.filled(bytes.len());
}

/// A backend over one end of a socketpair, and the other end (blocking, 5 s timeout).
fn pair() -> (Arc<Stream>, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (Arc::new(Stream::new(a, "test peer").unwrap()), b)
}

fn read_one(s: &Stream) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; MAX_FRAME + 1];
    let n = s.read_frame(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// `payload` as the backend hands it to the worker: a zeroed header before it.
fn with_zero_header(p: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(p);
    f
}

// --- the decoder ---

#[test]
fn decoder_frame_fed_one_byte_at_a_time_comes_out_whole_once() {
    let mut d = Decoder::new();
    let p = payload(100, 7);
    let w = wire(&p);
    for (i, b) in w.iter().enumerate() {
        assert_eq!(d.next_frame().unwrap(), None, "after {i} bytes");
        feed(&mut d, &[*b]);
    }
    assert_eq!(d.next_frame().unwrap(), Some(&p[..]));
    assert_eq!(d.next_frame().unwrap(), None);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn decoder_two_frames_and_a_half_in_one_read_come_out_in_order() {
    let mut d = Decoder::new();
    let (a, b, c) = (payload(60, 1), payload(1514, 2), payload(300, 3));
    let mut w = wire(&a);
    w.extend(wire(&b));
    let wc = wire(&c);
    w.extend_from_slice(&wc[..100]);
    feed(&mut d, &w);
    assert_eq!(d.next_frame().unwrap(), Some(&a[..]));
    assert_eq!(d.next_frame().unwrap(), Some(&b[..]));
    assert_eq!(d.next_frame().unwrap(), None);
    feed(&mut d, &wc[100..]);
    assert_eq!(d.next_frame().unwrap(), Some(&c[..]));
}

#[test]
fn decoder_zero_length_is_an_error() {
    let mut d = Decoder::new();
    feed(&mut d, &[0, 0, 0, 0, 1, 2]);
    assert_eq!(d.next_frame(), Err(FrameError::Empty));
}

#[test]
fn decoder_length_over_the_limit_is_an_error_before_its_bytes_come() {
    let mut d = Decoder::new();
    feed(&mut d, &((MAX_STREAM_FRAME as u32 + 1).to_be_bytes()));
    assert_eq!(
        d.next_frame(),
        Err(FrameError::TooLong(MAX_STREAM_FRAME as u32 + 1))
    );
    let mut d = Decoder::new();
    feed(&mut d, &u32::MAX.to_be_bytes());
    assert_eq!(d.next_frame(), Err(FrameError::TooLong(u32::MAX)));
}

#[test]
fn decoder_largest_frame_passes_and_space_stays_for_one_after_many() {
    // The smallest buffer: every frame after the first moves the kept bytes to the front.
    let mut d = Decoder::with_capacity(0);
    let big = payload(MAX_STREAM_FRAME, 9);
    let w = wire(&big);
    for round in 0..5u8 {
        // Half a frame, then the rest: the space never runs out.
        let half = w.len() / 2 + usize::from(round);
        feed(&mut d, &w[..half]);
        assert_eq!(d.next_frame().unwrap(), None);
        assert!(d.space().len() >= w.len() - half);
        feed(&mut d, &w[half..]);
        assert_eq!(d.next_frame().unwrap(), Some(&big[..]), "round {round}");
    }
}

// --- the backend over a socketpair ---

#[test]
fn stream_read_partial_frame_would_block_then_the_rest_gives_it_with_a_zero_header() {
    let (s, mut peer) = pair();
    let p = payload(1000, 5);
    let w = wire(&p);
    assert_eq!(read_one(&s).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    peer.write_all(&w[..3]).unwrap();
    assert_eq!(read_one(&s).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    peer.write_all(&w[3..500]).unwrap();
    assert_eq!(read_one(&s).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    peer.write_all(&w[500..]).unwrap();
    assert_eq!(read_one(&s).unwrap(), with_zero_header(&p));
    assert!(s.link_up());
}

#[test]
fn stream_read_many_frames_in_one_write_each_come_once() {
    let (s, mut peer) = pair();
    let frames: Vec<_> = (0..20).map(|i| payload(64 + i * 97, i as u8)).collect();
    let w: Vec<u8> = frames.iter().flat_map(|f| wire(f)).collect();
    peer.write_all(&w).unwrap();
    for f in &frames {
        assert_eq!(read_one(&s).unwrap(), with_zero_header(f));
    }
    assert_eq!(read_one(&s).unwrap_err().kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn stream_oversized_length_closes_the_connection_and_takes_the_link_down() {
    let (s, mut peer) = pair();
    peer.write_all(&(70_000u32).to_be_bytes()).unwrap();
    assert_eq!(
        read_one(&s).unwrap_err().kind(),
        io::ErrorKind::NotConnected
    );
    assert!(!s.link_up());
    // The peer sees the connection end.
    let mut b = [0u8; 1];
    assert_eq!(peer.read(&mut b).unwrap(), 0);
    // And later calls report the same, without touching the socket.
    assert_eq!(
        read_one(&s).unwrap_err().kind(),
        io::ErrorKind::NotConnected
    );
}

#[test]
fn stream_zero_length_closes_the_connection() {
    let (s, mut peer) = pair();
    peer.write_all(&[0, 0, 0, 0]).unwrap();
    assert!(read_one(&s).is_err());
    assert!(!s.link_up());
}

#[test]
fn stream_peer_closing_takes_the_link_down() {
    let (s, peer) = pair();
    drop(peer);
    assert_eq!(
        read_one(&s).unwrap_err().kind(),
        io::ErrorKind::NotConnected
    );
    assert!(!s.link_up());
}

/// Guest memory holding `f` (header first) at BUF, as two slices split inside the header.
fn write_split(s: &Stream, mem: &GuestMemoryMmap, f: &[u8]) -> io::Result<usize> {
    mem.write_slice(f, GuestAddress(BUF)).unwrap();
    let slice = |at: u64, len: usize| -> Vec<VolatileSlice<'_, ()>> {
        vm_memory::GuestMemoryBackend::get_slices(mem, GuestAddress(at), len)
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut slices = slice(BUF, 5);
    slices.extend(slice(BUF + 5, f.len() - 5));
    s.write_frame(&slices)
}

#[test]
fn stream_write_drops_the_header_and_puts_the_length_first() {
    let mem = guest_memory();
    let (s, mut peer) = pair();
    let f = frame(60);
    assert_eq!(write_split(&s, &mem, &f).unwrap(), f.len());
    let mut got = vec![0u8; LEN_PREFIX + 60];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, wire(&f[VNET_HDR_LEN..]));
    assert!(!s.tx_pending());
}

#[test]
fn stream_write_header_only_is_refused() {
    let mem = guest_memory();
    let (s, _peer) = pair();
    let e = write_split(&s, &mem, &[0u8; VNET_HDR_LEN]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

/// Shrinks a socket's send buffer to the kernel's minimum.
fn small_sndbuf(fd: RawFd) {
    let size: libc::c_int = 1;
    // SAFETY: SO_SNDBUF reads one int through the pointer, which lives for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

#[test]
fn stream_write_to_a_full_socket_keeps_every_frame_whole_and_in_order() {
    let mem = guest_memory();
    let (a, mut peer) = UnixStream::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let s = Stream::new(a, "test peer").unwrap();
    small_sndbuf(s.rx_fd());
    let mut sent = Vec::new();
    let mut i = 0u8;
    // Fill the socket until a frame goes out only in part.
    while !s.tx_pending() {
        let mut f = vec![0xaa; VNET_HDR_LEN];
        f.extend(payload(9000, i));
        write_split(&s, &mem, &f).unwrap();
        sent.extend(wire(&f[VNET_HDR_LEN..]));
        i = i.wrapping_add(1);
        assert!(i < 200, "the socket never filled");
    }
    // While a frame waits, no other is taken.
    let more = frame(100);
    assert_eq!(
        write_split(&s, &mem, &more).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    // The peer drains; flushing finishes the waiting frame.
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; sent.len()];
        peer.read_exact(&mut got).unwrap();
        (got, sent)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.flush().unwrap() {
        assert!(Instant::now() < deadline, "flush never finished");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (got, sent) = reader.join().unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(
        got == sent,
        "the bytes on the wire differ from the frames sent"
    );
    assert!(!s.tx_pending());
}

#[test]
fn stream_write_to_a_closed_peer_takes_the_link_down_without_sigpipe() {
    let mem = guest_memory();
    let (s, peer) = pair();
    drop(peer);
    let e = write_split(&s, &mem, &frame(60)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotConnected);
    assert!(!s.link_up());
}

// --- the device and its job over the stream ---

#[test]
fn stream_device_offers_no_offloads_but_mac_and_status() {
    let (s, _peer) = pair();
    let n = Net::new(s, [0x52, 0x54, 0, 0x12, 0x34, 0x56]).unwrap();
    let f = n.features();
    // CSUM 0, GUEST_CSUM 1, GUEST_TSO4 7, GUEST_TSO6 8, HOST_TSO4 11, HOST_TSO6 12 (5.1.3).
    for bit in [0, 1, 7, 8, 11, 12] {
        assert_eq!(f & (1 << bit), 0, "bit {bit}");
    }
    assert_ne!(f & VIRTIO_NET_F_MAC, 0);
    assert_ne!(f & VIRTIO_NET_F_STATUS, 0);
}

/// The job over `backend` and the rig's queues.
fn stream_job(rig: &Rig<'_>, backend: Arc<Stream>) -> NetJob {
    NetJob::new(
        backend,
        VirtioMemory::Direct(rig.mem.clone()),
        active(RX_QUEUE, queue(&rig.rx, 0)),
        active(TX_QUEUE, queue(&rig.tx, 0)),
        rig.signals.clone(),
        rig.stats.clone(),
        0,
    )
}

#[derive(Default)]
struct ConfigSignals {
    config: std::sync::atomic::AtomicUsize,
}

impl VirtioInterrupt for ConfigSignals {
    fn signal_queue(&self, _index: u16) {}
    fn signal_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn stream_peer_gone_clears_link_up_and_sends_one_config_interrupt() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let (s, peer) = pair();
    let mut n = Net::new(s.clone(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]).unwrap();
    let signals = Arc::new(ConfigSignals::default());
    let mut job = NetJob::new(
        s.clone(),
        VirtioMemory::Direct(mem.clone()),
        active(RX_QUEUE, queue(&rig.rx, 0)),
        active(TX_QUEUE, queue(&rig.tx, 0)),
        signals.clone(),
        rig.stats.clone(),
        0,
    );
    rig.rx
        .add_desc_chains(&[desc(BUF, 2048, F_WRITE, 0)], 0)
        .unwrap();
    job.start();
    let mut st = [0u8; 2];
    n.read_config(6, &mut st);
    assert_eq!(u16::from_le_bytes(st), VIRTIO_NET_S_LINK_UP);
    drop(peer);
    // The backend's fd reports the hang-up (index 2: the receive queue has a chain).
    assert_eq!(job.fds().len(), 3);
    job.ready(2);
    n.read_config(6, &mut st);
    assert_eq!(u16::from_le_bytes(st), 0, "LINK_UP still set");
    assert_eq!(signals.config.load(Ordering::SeqCst), 1);
    // The dead socket is polled no more, the chain stays posted, the VM goes on.
    assert_eq!(job.fds().len(), 2);
    assert!(used(&rig.rx).is_empty());
    job.ready(0);
    assert_eq!(signals.config.load(Ordering::SeqCst), 1);
    n.reset();
}

#[test]
fn stream_job_full_socket_leaves_chains_in_the_ring_until_writable() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let (a, mut peer) = UnixStream::pair().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let s = Arc::new(Stream::new(a, "test peer").unwrap());
    small_sndbuf(s.rx_fd());
    // CHAINS chains of 9000-byte frames: more than the socket holds. (At most half the ring:
    // the mock's used ring overlaps the end of its avail ring.)
    const CHAINS: u16 = QSIZE / 2;
    let len = VNET_HDR_LEN + 9000;
    let chains: Vec<_> = (0..CHAINS)
        .map(|i| desc(BUF + u64::from(i) * 0x4000, len as u32, 0, 0))
        .collect();
    for i in 0..CHAINS {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend(payload(9000, i as u8));
        mem.write_slice(&f, GuestAddress(BUF + u64::from(i) * 0x4000))
            .unwrap();
    }
    rig.tx.add_desc_chains(&chains, 0).unwrap();
    let mut job = stream_job(&rig, s.clone());
    job.process_tx();
    let first = used(&rig.tx).len();
    assert!(
        first < usize::from(CHAINS),
        "every chain taken by a full socket"
    );
    assert!(s.tx_pending());
    assert_eq!(job.write_fds(), vec![s.rx_fd()]);
    // A guest kick while blocked takes nothing more.
    job.ready(1);
    assert_eq!(used(&rig.tx).len(), first);
    // The peer reads everything, the job runs on each POLLOUT until the ring is empty.
    let total = usize::from(CHAINS) * (LEN_PREFIX + 9000);
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; total];
        peer.read_exact(&mut got).unwrap();
        got
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while used(&rig.tx).len() < usize::from(CHAINS) || s.tx_pending() {
        assert!(Instant::now() < deadline, "the job never finished the ring");
        if !job.write_fds().is_empty() {
            job.writable(0);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = reader.join().unwrap();
    for (i, f) in got.chunks(LEN_PREFIX + 9000).enumerate() {
        let want = wire(&payload(9000, i as u8));
        let bad = f.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(bad, None, "frame {i} differs at byte {bad:?}");
    }
    assert_eq!(count(&rig.stats.tx_frames), u64::from(CHAINS));
    assert_eq!(count(&rig.stats.tx_error), 0);
}

#[test]
fn stream_job_receives_a_frame_into_the_chain() {
    let mem = guest_memory();
    let rig = Rig::new(&mem);
    let (s, mut peer) = pair();
    let p = payload(342, 3);
    peer.write_all(&wire(&p)).unwrap();
    rig.rx
        .add_desc_chains(&[desc(BUF, 2048, F_WRITE, 0)], 0)
        .unwrap();
    let mut job = stream_job(&rig, s);
    job.process_rx();
    let n = VNET_HDR_LEN + p.len();
    assert_eq!(used(&rig.rx), vec![(0, n as u32)]);
    let mut want = with_zero_header(&p);
    // num_buffers 1 (5.1.6.4).
    want[10] = 1;
    assert_eq!(bytes(&mem, BUF, n), want);
}

#[test]
fn device_with_mtu_offers_f_mtu_and_reads_it_after_max_virtqueue_pairs() {
    let (s, _peer) = pair();
    let n = Net::new(s, [0x52, 0x54, 0, 0x12, 0x34, 0x56])
        .unwrap()
        .with_mtu(65_520);
    assert_ne!(n.features() & VIRTIO_NET_F_MTU, 0);
    let mut c = [0xffu8; 14];
    n.read_config(0, &mut c);
    // max_virtqueue_pairs 1 at 8, mtu at 10, nothing past 12 (5.1.4).
    assert_eq!(&c[8..14], &[1, 0, 0xf0, 0xff, 0, 0]);
    // Above what a receive chain takes, clamped.
    let (s2, _peer2) = pair();
    let n = Net::new(s2, [2, 0, 0, 0, 0, 1]).unwrap().with_mtu(u16::MAX);
    let mut m = [0u8; 2];
    n.read_config(10, &mut m);
    assert_eq!(u16::from_le_bytes(m), MAX_MTU);
}

#[test]
fn device_without_mtu_offers_no_f_mtu() {
    let (s, _peer) = pair();
    let n = Net::new(s, [0x52, 0x54, 0, 0x12, 0x34, 0x56]).unwrap();
    assert_eq!(n.features() & VIRTIO_NET_F_MTU, 0);
    let mut c = [0xffu8; 4];
    n.read_config(8, &mut c);
    assert_eq!(c, [0; 4]);
}
