//! virtio-blk requests (virtio 1.2 section 5.2.6): the chain is read as two byte streams, the
//! device-readable one (16-byte header, then OUT data or DISCARD/WRITE_ZEROES segments) and the
//! device-writable one (IN/GET_ID data, then the 1-byte status as its last byte), whatever the
//! descriptor framing (section 2.6.4: the device must not assume one). Every buffer is
//! translated whole before a byte moves, so a translation fault moves nothing for the request.

use vm_memory::bitmap::BS;
use vm_memory::{Address, GuestAddress, GuestMemory, Permissions, VolatileSlice};

use super::backend::{DiskImage, SECTOR_SIZE};

/// VIRTIO_BLK_T_IN: read (virtio 1.2 section 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// VIRTIO_BLK_T_OUT: write (section 5.2.6).
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// VIRTIO_BLK_T_FLUSH (section 5.2.6).
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// VIRTIO_BLK_T_GET_ID: the 20-byte device ID string (section 5.2.6).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// VIRTIO_BLK_T_DISCARD (section 5.2.6).
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// VIRTIO_BLK_T_WRITE_ZEROES (section 5.2.6).
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// VIRTIO_BLK_S_OK (section 5.2.6).
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// VIRTIO_BLK_S_IOERR (section 5.2.6).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// VIRTIO_BLK_S_UNSUPP (section 5.2.6).
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// `struct virtio_blk_req` header: le32 type, le32 reserved, le64 sector (section 5.2.6).
pub const HEADER_LEN: usize = 16;
/// Length of the GET_ID answer, VIRTIO_BLK_ID_BYTES (section 5.2.6).
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// `struct virtio_blk_discard_write_zeroes`: le64 sector, le32 num_sectors, le32 flags
/// (section 5.2.6).
pub const SEGMENT_LEN: usize = 16;
/// The `unmap` bit of a discard/write-zeroes segment's flags (section 5.2.6).
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Limits the device advertises in its config space and enforces per request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
}

/// What a request runs against: the image and the device's settings.
pub struct RequestContext<'a> {
    pub disk: &'a DiskImage,
    /// The GET_ID answer, NUL-padded.
    pub serial: &'a [u8; VIRTIO_BLK_ID_BYTES],
    /// Write-back cache on (CONFIG_WCE `writeback` = 1); off, every write is followed by an
    /// `fdatasync` (write-through).
    pub writeback: bool,
    pub limits: Limits,
}

/// Why a chain could not be answered at all (no status byte to write to).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("Device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("Chain too short for the {HEADER_LEN}-byte header")]
    NoHeader,
    #[error("Chain has no device-writable status byte")]
    NoStatus,
    #[error("Chain longer than 4 GiB")]
    TooLong,
    #[error("Status byte at {0:#x} is not writable (translation fault)")]
    StatusFault(u64),
}

/// One piece of guest buffer, part of a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub addr: GuestAddress,
    pub len: u64,
}

/// A chain's descriptors sorted into its two streams.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainLayout {
    pub readable: Vec<Span>,
    pub writable: Vec<Span>,
}

impl ChainLayout {
    /// Sorts `(addr, len, device_writable)` descriptors; readable ones must all come first
    /// (section 2.7.4.2). Zero-length descriptors carry nothing and are skipped.
    pub fn from_descriptors(
        descs: impl IntoIterator<Item = (GuestAddress, u32, bool)>,
    ) -> Result<Self, ChainError> {
        let mut layout = ChainLayout::default();
        for (addr, len, writable) in descs {
            if len == 0 {
                continue;
            }
            let span = Span {
                addr,
                len: u64::from(len),
            };
            if writable {
                layout.writable.push(span);
            } else if layout.writable.is_empty() {
                layout.readable.push(span);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
        }
        Ok(layout)
    }
}

/// The first `n` bytes of `spans`, and the rest; `None` when there are fewer than `n`.
fn split_front(spans: &[Span], n: u64) -> Option<(Vec<Span>, Vec<Span>)> {
    let mut front = Vec::new();
    let mut need = n;
    for (i, s) in spans.iter().enumerate() {
        if need == 0 {
            return Some((front, spans[i..].to_vec()));
        }
        if s.len <= need {
            front.push(*s);
            need -= s.len;
        } else {
            front.push(Span {
                addr: s.addr,
                len: need,
            });
            let mut rest = vec![Span {
                addr: s.addr.checked_add(need)?,
                len: s.len - need,
            }];
            rest.extend_from_slice(&spans[i + 1..]);
            return Some((front, rest));
        }
    }
    (need == 0).then_some((front, Vec::new()))
}

/// The last `n` bytes of `spans`, and what comes before them.
fn split_back(spans: &[Span], n: u64) -> Option<(Vec<Span>, Vec<Span>)> {
    let total = total_len(spans)?;
    let (head, tail) = split_front(spans, total.checked_sub(n)?)?;
    Some((head, tail))
}

fn total_len(spans: &[Span]) -> Option<u64> {
    spans.iter().try_fold(0u64, |acc, s| acc.checked_add(s.len))
}

type Slices<'a, M> = Vec<VolatileSlice<'a, BS<'a, <M as GuestMemory>::Bitmap>>>;

/// A buffer the IOMMU (or the memory map) refused: the guest address of the failing span.
#[derive(Debug)]
struct Fault(u64);

/// Translates every span whole for `access`; any piece failing fails the lot.
fn translate<'a, M: GuestMemory + ?Sized>(
    mem: &'a M,
    spans: &[Span],
    access: Permissions,
) -> Result<Slices<'a, M>, Fault> {
    let mut out = Vec::with_capacity(spans.len());
    for s in spans {
        let len = usize::try_from(s.len).map_err(|_| Fault(s.addr.0))?;
        let iter = mem
            .get_slices(s.addr, len, access)
            .map_err(|_| Fault(s.addr.0))?;
        let mut got = 0usize;
        for slice in iter {
            let slice = slice.map_err(|_| Fault(s.addr.0))?;
            got = got.checked_add(slice.len()).ok_or(Fault(s.addr.0))?;
            out.push(slice);
        }
        if got != len {
            return Err(Fault(s.addr.0));
        }
    }
    Ok(out)
}

/// Copies the start of `slices` into `buf` (which must not be longer than they are).
fn copy_from_slices<B: vm_memory::bitmap::BitmapSlice>(
    slices: &[VolatileSlice<'_, B>],
    buf: &mut [u8],
) {
    let mut pos = 0;
    for s in slices {
        if pos == buf.len() {
            break;
        }
        pos += s.copy_to(&mut buf[pos..]);
    }
}

/// Copies `buf` into the start of `slices`; returns the bytes copied.
fn copy_to_slices<B: vm_memory::bitmap::BitmapSlice>(
    slices: &[VolatileSlice<'_, B>],
    buf: &[u8],
) -> usize {
    let mut pos = 0;
    for s in slices {
        if pos == buf.len() {
            break;
        }
        let n = s.len().min(buf.len() - pos);
        s.copy_from(&buf[pos..pos + n]);
        pos += n;
    }
    pos
}

/// The answer to one request: the status byte and how many data bytes went to the
/// device-writable part before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: u8,
    pub data_written: u64,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Outcome {
            status,
            data_written: 0,
        }
    }
}

/// Serves one chain: returns the used-ring length (bytes written to the device-writable part,
/// status included), or why the chain could not be answered (the caller gives it back with
/// length 0 and a rate-limited warning).
pub fn process<M: GuestMemory + ?Sized>(
    mem: &M,
    ctx: &RequestContext<'_>,
    layout: &ChainLayout,
) -> Result<u32, ChainError> {
    total_len(&layout.readable)
        .zip(total_len(&layout.writable))
        .and_then(|(r, w)| r.checked_add(w))
        .filter(|&t| t <= u64::from(u32::MAX))
        .ok_or(ChainError::TooLong)?;
    let (in_data, status_span) = split_back(&layout.writable, 1).ok_or(ChainError::NoStatus)?;
    let status_span = *status_span.first().ok_or(ChainError::NoStatus)?;
    let status_slices = translate(mem, &[status_span], Permissions::Write)
        .map_err(|_| ChainError::StatusFault(status_span.addr.0))?;
    let (header, out_data) =
        split_front(&layout.readable, HEADER_LEN as u64).ok_or(ChainError::NoHeader)?;

    let outcome = match translate(mem, &header, Permissions::Read) {
        Ok(slices) => {
            let mut raw = [0u8; HEADER_LEN];
            copy_from_slices(&slices, &mut raw);
            let req_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let sector = u64::from_le_bytes([
                raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
            ]);
            execute(mem, ctx, req_type, sector, &out_data, &in_data)
        }
        Err(Fault(addr)) => {
            iommu::warn_limited!("virtio-blk: request header at {addr:#x} faulted");
            Outcome::status(VIRTIO_BLK_S_IOERR)
        }
    };
    copy_to_slices(&status_slices, &[outcome.status]);
    // Bounded by the chain length checked above (<= u32::MAX).
    Ok(u32::try_from(outcome.data_written.saturating_add(1)).unwrap_or(u32::MAX))
}

fn execute<M: GuestMemory + ?Sized>(
    mem: &M,
    ctx: &RequestContext<'_>,
    req_type: u32,
    sector: u64,
    out_data: &[Span],
    in_data: &[Span],
) -> Outcome {
    match req_type {
        VIRTIO_BLK_T_IN => read(mem, ctx, sector, in_data),
        VIRTIO_BLK_T_OUT => write(mem, ctx, sector, out_data),
        VIRTIO_BLK_T_FLUSH => match ctx.disk.flush() {
            Ok(()) => Outcome::status(VIRTIO_BLK_S_OK),
            Err(e) => io_error("flush", e),
        },
        VIRTIO_BLK_T_GET_ID => get_id(mem, ctx, in_data),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            discard_or_zero(mem, ctx, req_type, out_data)
        }
        _ => Outcome::status(VIRTIO_BLK_S_UNSUPP),
    }
}

/// The byte offset of a `len`-byte transfer at `sector`, if it is whole sectors and fits in
/// the disk (section 5.2.6.1: IN/OUT data is a multiple of 512 bytes).
fn data_range(disk: &DiskImage, sector: u64, len: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    (offset.checked_add(len)? <= disk.capacity_bytes()).then_some(offset)
}

fn io_error(what: &str, e: std::io::Error) -> Outcome {
    iommu::warn_limited!("virtio-blk: {what} failed on the image: {e}");
    Outcome::status(VIRTIO_BLK_S_IOERR)
}

fn fault(what: &str, addr: u64) -> Outcome {
    iommu::warn_limited!("virtio-blk: {what} buffer at {addr:#x} faulted; request failed");
    Outcome::status(VIRTIO_BLK_S_IOERR)
}

fn read<M: GuestMemory + ?Sized>(
    mem: &M,
    ctx: &RequestContext<'_>,
    sector: u64,
    in_data: &[Span],
) -> Outcome {
    let len = total_len(in_data).unwrap_or(u64::MAX);
    let Some(offset) = data_range(ctx.disk, sector, len) else {
        return Outcome::status(VIRTIO_BLK_S_IOERR);
    };
    let slices = match translate(mem, in_data, Permissions::Write) {
        Ok(s) => s,
        Err(Fault(addr)) => return fault("read", addr),
    };
    match ctx.disk.read_into(offset, &slices) {
        Ok(()) => Outcome {
            status: VIRTIO_BLK_S_OK,
            data_written: len,
        },
        Err(e) => io_error("read", e),
    }
}

fn write<M: GuestMemory + ?Sized>(
    mem: &M,
    ctx: &RequestContext<'_>,
    sector: u64,
    out_data: &[Span],
) -> Outcome {
    // Section 5.2.6.2: with VIRTIO_BLK_F_RO a write is IOERR and writes no data.
    if ctx.disk.read_only() {
        return Outcome::status(VIRTIO_BLK_S_IOERR);
    }
    let len = total_len(out_data).unwrap_or(u64::MAX);
    let Some(offset) = data_range(ctx.disk, sector, len) else {
        return Outcome::status(VIRTIO_BLK_S_IOERR);
    };
    let slices = match translate(mem, out_data, Permissions::Read) {
        Ok(s) => s,
        Err(Fault(addr)) => return fault("write", addr),
    };
    let done = ctx.disk.write_from(offset, &slices).and_then(|()| {
        if ctx.writeback {
            Ok(())
        } else {
            ctx.disk.flush()
        }
    });
    match done {
        Ok(()) => Outcome::status(VIRTIO_BLK_S_OK),
        Err(e) => io_error("write", e),
    }
}

fn get_id<M: GuestMemory + ?Sized>(mem: &M, ctx: &RequestContext<'_>, in_data: &[Span]) -> Outcome {
    let (id_spans, _) = split_front(in_data, VIRTIO_BLK_ID_BYTES as u64)
        .unwrap_or_else(|| (in_data.to_vec(), Vec::new()));
    match translate(mem, &id_spans, Permissions::Write) {
        Ok(slices) => Outcome {
            status: VIRTIO_BLK_S_OK,
            data_written: copy_to_slices(&slices, ctx.serial) as u64,
        },
        Err(Fault(addr)) => fault("get-id", addr),
    }
}

/// One validated discard/write-zeroes segment, in bytes.
struct Segment {
    offset: u64,
    len: u64,
    unmap: bool,
}

fn discard_or_zero<M: GuestMemory + ?Sized>(
    mem: &M,
    ctx: &RequestContext<'_>,
    req_type: u32,
    out_data: &[Span],
) -> Outcome {
    if ctx.disk.read_only() {
        return Outcome::status(VIRTIO_BLK_S_IOERR);
    }
    let discard = req_type == VIRTIO_BLK_T_DISCARD;
    let (max_sectors, max_seg) = if discard {
        (ctx.limits.max_discard_sectors, ctx.limits.max_discard_seg)
    } else {
        (
            ctx.limits.max_write_zeroes_sectors,
            ctx.limits.max_write_zeroes_seg,
        )
    };
    let len = total_len(out_data).unwrap_or(u64::MAX);
    if len == 0 || !len.is_multiple_of(SEGMENT_LEN as u64) {
        return Outcome::status(VIRTIO_BLK_S_IOERR);
    }
    if len / SEGMENT_LEN as u64 > u64::from(max_seg) {
        return Outcome::status(VIRTIO_BLK_S_UNSUPP);
    }
    let slices = match translate(mem, out_data, Permissions::Read) {
        Ok(s) => s,
        Err(Fault(addr)) => return fault("discard/write-zeroes", addr),
    };
    // At most max_seg (a config-space u32 the device chose) segments of 16 bytes.
    let mut raw = vec![0u8; len as usize];
    copy_from_slices(&slices, &mut raw);
    let mut segments = Vec::new();
    for seg in raw.chunks_exact(SEGMENT_LEN) {
        let sector = u64::from_le_bytes([
            seg[0], seg[1], seg[2], seg[3], seg[4], seg[5], seg[6], seg[7],
        ]);
        let num_sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
        let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
        // Section 5.2.6.2: unknown flags, or unmap on a discard, are UNSUPP.
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
            || (discard && flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0)
        {
            return Outcome::status(VIRTIO_BLK_S_UNSUPP);
        }
        if num_sectors > max_sectors {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        }
        let bytes = u64::from(num_sectors) * SECTOR_SIZE;
        let Some(offset) = data_range(ctx.disk, sector, bytes) else {
            return Outcome::status(VIRTIO_BLK_S_IOERR);
        };
        segments.push(Segment {
            offset,
            len: bytes,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    for s in segments {
        let done = if discard {
            ctx.disk.discard(s.offset, s.len)
        } else {
            ctx.disk.write_zeroes(s.offset, s.len, s.unmap)
        };
        if let Err(e) = done {
            return io_error(if discard { "discard" } else { "write-zeroes" }, e);
        }
    }
    Outcome::status(VIRTIO_BLK_S_OK)
}
