//! The stream backend: a connected stream socket to passt, or any peer speaking QEMU's
//! `-netdev stream` protocol (QEMU net/stream.c, `net_stream_receive`): each frame is a
//! 4-byte big-endian length, then the Ethernet frame. No virtio-net header travels on the
//! socket: the backend drops the driver's 12-byte `virtio_net_hdr_v1` on transmit and puts a
//! zeroed one before each received frame, so the device offers no offloads over it.
//!
//! Framing is a pure state machine ([`Decoder`]) over a read buffer: partial reads and frames
//! split across reads are put back together; a zero or oversized length is a peer that does
//! not speak the protocol, and closes the connection (reported once). A frame the socket
//! takes only part of is kept whole ([`Stream::tx_pending`]): the worker takes no transmit
//! chain until the rest went out (backpressure to the guest's ring, nothing dropped or cut).
//! A peer that goes away (end of stream, reset) takes the link down: the device's
//! configuration then reads without LINK_UP ([`NetBackend::link_up`]).
//!
//! Plain `read`/`sendmsg` on a `UnixStream`: the protocol is a page of code and no maintained
//! crate speaks it (libkrun's `unixstream.rs` is in-tree code).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vm_memory::VolatileSlice;

use super::backend::NetBackend;
use super::{MAX_FRAME, THREAD_NAME, VNET_HDR_LEN};

/// The length before each frame: a big-endian u32 (QEMU net/stream.c).
pub const LEN_PREFIX: usize = 4;
/// The longest Ethernet frame taken from the peer: what fits a receive chain after the
/// virtio-net header ([`MAX_FRAME`]). passt's largest (MTU 65520 and an Ethernet header) fits.
pub const MAX_STREAM_FRAME: usize = MAX_FRAME - VNET_HDR_LEN;
/// The read buffer: several frames per `read` at full size.
const RX_BUF: usize = 4 * (LEN_PREFIX + MAX_STREAM_FRAME);

/// The send buffer asked for (libkrun's unixstream backend asks the same).
const SNDBUF: libc::c_int = 16 << 20;

/// Best effort: a smaller buffer only means more short writes, which are handled.
fn set_sndbuf(sock: &UnixStream, size: libc::c_int) {
    // SAFETY: SO_SNDBUF reads one int through the pointer, which lives for the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        log::debug!("SO_SNDBUF: {}", io::Error::last_os_error());
    }
}

/// One `read(2)` (std's socket reads are `recvfrom`, which the worker's sandbox does not
/// need otherwise).
fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Why the peer's byte stream is not frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("Frame length 0")]
    Empty,
    #[error("Frame length {0} is over the {MAX_STREAM_FRAME}-byte limit")]
    TooLong(u32),
}

/// Why the stream backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("Cannot connect to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("Cannot make the socket non-blocking: {0}")]
    NonBlocking(#[source] io::Error),
}

/// Splits a byte stream into frames. Bytes go in at [`Decoder::space`] and
/// [`Decoder::filled`]; whole frames come out of [`Decoder::next_frame`].
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes `start..end` are received and not yet handed out.
    start: usize,
    end: usize,
}

impl Decoder {
    pub fn new() -> Self {
        Self::with_capacity(RX_BUF)
    }

    /// A decoder with a `capacity`-byte buffer (at least one largest frame).
    pub fn with_capacity(capacity: usize) -> Self {
        Decoder {
            buf: vec![0; capacity.max(LEN_PREFIX + MAX_STREAM_FRAME)],
            start: 0,
            end: 0,
        }
    }

    /// The next whole frame, `None` while its bytes are still to come.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let have = self.end - self.start;
        if have < LEN_PREFIX {
            return Ok(None);
        }
        let mut len = [0u8; LEN_PREFIX];
        len.copy_from_slice(&self.buf[self.start..self.start + LEN_PREFIX]);
        let len = u32::from_be_bytes(len);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len as usize > MAX_STREAM_FRAME {
            return Err(FrameError::TooLong(len));
        }
        let len = len as usize;
        if have < LEN_PREFIX + len {
            return Ok(None);
        }
        let frame = self.start + LEN_PREFIX..self.start + LEN_PREFIX + len;
        self.start = frame.end;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(&self.buf[frame]))
    }

    /// Where the next bytes go: never empty, since a whole largest frame always fits after
    /// the bytes kept (which move to the front when needed).
    pub fn space(&mut self) -> &mut [u8] {
        if self.buf.len() - self.end < LEN_PREFIX + MAX_STREAM_FRAME {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were written at the start of [`Decoder::space`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes received and not handed out as a frame.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The transmit side: the unsent part of the one frame the socket took only part of.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    sent: usize,
}

struct State {
    rx: Decoder,
    tx: Pending,
}

/// A virtio-net backend over a connected stream socket.
pub struct Stream {
    sock: UnixStream,
    state: Mutex<State>,
    up: AtomicBool,
    /// Who the peer is, for the one line that says it went away.
    peer: String,
}

impl Stream {
    /// Over `sock`, a connected stream socket (made non-blocking here); `peer` names it in
    /// messages.
    pub fn new(sock: UnixStream, peer: &str) -> Result<Self, StreamError> {
        sock.set_nonblocking(true)
            .map_err(StreamError::NonBlocking)?;
        // A large send buffer (the kernel caps it at net.core.wmem_max): short writes, which
        // split a frame across the peer's reads, become rare. Debian 12's passt loses its
        // framing when a frame's length and body arrive in different reads.
        set_sndbuf(&sock, SNDBUF);
        Ok(Stream {
            sock,
            state: Mutex::new(State {
                rx: Decoder::new(),
                tx: Pending::default(),
            }),
            up: AtomicBool::new(true),
            peer: peer.into(),
        })
    }

    /// Connects to the UNIX socket at `path` (a passt started with `-s PATH`).
    pub fn connect(path: &Path) -> Result<Self, StreamError> {
        let sock = UnixStream::connect(path).map_err(|source| StreamError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(sock, &path.display().to_string())
    }

    /// Takes the link down, once: one line, the connection shut both ways.
    fn go_down(&self, why: &dyn std::fmt::Display) -> io::Error {
        if self.up.swap(false, Ordering::SeqCst) {
            log::error!("{THREAD_NAME}: {}: {why}: link down", self.peer);
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
        io::Error::new(io::ErrorKind::NotConnected, "link down")
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only the worker thread locks it; a panic there ends the VM anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends what `tx` holds; true when all of it went.
    fn send_pending(&self, tx: &mut Pending) -> io::Result<bool> {
        while tx.sent < tx.bytes.len() {
            let iov = [libc::iovec {
                iov_base: tx.bytes[tx.sent..].as_ptr() as *mut libc::c_void,
                iov_len: tx.bytes.len() - tx.sent,
            }];
            match self.send(&iov) {
                Ok(n) => tx.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.go_down(&e)),
            }
        }
        *tx = Pending::default();
        Ok(true)
    }

    /// One `sendmsg` of `iov`, without SIGPIPE when the peer is gone.
    fn send(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: zeroed is a valid msghdr (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len();
        // SAFETY: `msg` points at `iov.len()` iovecs, each of which the caller keeps valid for
        // reading for the call; sendmsg only reads them.
        let ret = unsafe {
            libc::sendmsg(
                self.sock.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }
}

impl NetBackend for Stream {
    /// A frame with a zeroed virtio-net header before it (no offloads: no flags, no GSO;
    /// `num_buffers` is the worker's).
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self.state();
        loop {
            match st.rx.next_frame() {
                Ok(Some(frame)) => {
                    let n = (VNET_HDR_LEN + frame.len()).min(buf.len());
                    let hdr = VNET_HDR_LEN.min(n);
                    buf[..hdr].fill(0);
                    buf[hdr..n].copy_from_slice(&frame[..n - hdr]);
                    return Ok(n);
                }
                Ok(None) => {}
                Err(e) => return Err(self.go_down(&e)),
            }
            if !self.link_up() {
                return Err(io::ErrorKind::NotConnected.into());
            }
            match read(self.sock.as_raw_fd(), st.rx.space()) {
                Ok(0) => return Err(self.go_down(&"the peer closed the connection")),
                Ok(n) => st.rx.filled(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.go_down(&e)),
            }
        }
    }

    /// Sends the frame after the driver's header, whole: what the socket does not take now
    /// waits in [`Stream::tx_pending`] and goes out first.
    fn write_frame(&self, bufs: &[VolatileSlice<'_, ()>]) -> io::Result<usize> {
        if !self.link_up() {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let mut st = self.state();
        if !self.send_pending(&mut st.tx)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let frame_len = total.saturating_sub(VNET_HDR_LEN);
        let len = u32::try_from(frame_len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let prefix = len.to_be_bytes();
        // The frame's pieces: the driver's header skipped.
        let mut pieces: Vec<VolatileSlice<'_, ()>> = Vec::with_capacity(bufs.len());
        let mut skip = VNET_HDR_LEN;
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let piece = b
                .offset(skip)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            skip = 0;
            pieces.push(piece);
        }
        let guards: Vec<_> = pieces.iter().map(|p| p.ptr_guard()).collect();
        let mut iov = Vec::with_capacity(pieces.len() + 1);
        iov.push(libc::iovec {
            iov_base: prefix.as_ptr() as *mut libc::c_void,
            iov_len: LEN_PREFIX,
        });
        iov.extend(guards.iter().zip(&pieces).map(|(g, p)| libc::iovec {
            iov_base: g.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        }));
        // The iovecs point at `prefix` and at guest memory whose pointer guards `guards` holds.
        let sent = loop {
            match self.send(&iov) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.go_down(&e)),
            }
        };
        let whole = LEN_PREFIX + frame_len;
        if sent < whole {
            // Keep the rest, byte for byte, for when the socket has room.
            let mut rest = Vec::with_capacity(whole - sent);
            let mut pos = 0usize;
            let mut copy = |src: &[u8]| {
                let from = sent.saturating_sub(pos).min(src.len());
                rest.extend_from_slice(&src[from..]);
                pos += src.len();
            };
            copy(&prefix);
            for p in &pieces {
                let mut v = vec![0u8; p.len()];
                p.copy_to(&mut v[..]);
                copy(&v);
            }
            st.tx = Pending {
                bytes: rest,
                sent: 0,
            };
        }
        Ok(total)
    }

    fn rx_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// No offloads travel on the socket: nothing to set.
    fn set_offloads(&self, _offloads: u32) -> io::Result<()> {
        Ok(())
    }

    fn has_vnet_hdr(&self) -> bool {
        false
    }

    fn tx_pending(&self) -> bool {
        self.link_up() && !self.state().tx.bytes.is_empty()
    }

    fn flush(&self) -> io::Result<bool> {
        if !self.link_up() {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let mut st = self.state();
        self.send_pending(&mut st.tx)
    }

    fn link_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}
