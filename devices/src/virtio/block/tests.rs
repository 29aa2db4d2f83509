//! virtio-blk tests: requests against a temp image with guest memory built here, the backend's
//! open rules, the config space, and the worker over a driver-side mock queue.

use std::io::{Read, Seek, SeekFrom, Write};
use std::iter::FusedIterator;
use std::ops::Range;
use std::sync::atomic::AtomicU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryMmap, GuestMemoryResult, Permissions, VolatileSlice,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::pool::{Completions, RequestEnv};
use super::request::*;
use super::worker::BlockJob;
use super::*;
use crate::virtio::{ActiveQueue, VirtioInterrupt, VirtioMemory};

const MEM_SIZE: usize = 0x10_0000;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const DATA2: u64 = 0x3_0000;
const STATUS: u64 = 0x4_0000;
/// The image: 64 sectors, sector `i` filled with byte `i`.
const IMAGE_SECTORS: u64 = 64;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn image_file() -> TempFile {
    let t = TempFile::new_with_prefix("/tmp/minivmm-blk-test").unwrap();
    let mut f = t.as_file();
    for i in 0..IMAGE_SECTORS {
        f.write_all(&[i as u8; SECTOR_SIZE as usize]).unwrap();
    }
    t
}

fn read_image(t: &TempFile, offset: u64, len: usize) -> Vec<u8> {
    let mut f = t.as_file();
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut buf).unwrap();
    buf
}

fn open(t: &TempFile, read_only: bool) -> DiskImage {
    DiskImage::open(t.as_path(), read_only).unwrap()
}

const SERIAL: [u8; VIRTIO_BLK_ID_BYTES] = *b"minivmm-disk-0\0\0\0\0\0\0";

fn run<M: GuestMemory>(mem: &M, disk: &DiskImage, layout: &ChainLayout) -> Result<u32, ChainError> {
    let ctx = RequestContext {
        disk,
        serial: &SERIAL,
        writeback: true,
        limits: LIMITS,
    };
    process(mem, &ctx, layout)
}

fn header(mem: &GuestMemoryMmap, req_type: u32, sector: u64) {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

fn span(addr: u64, len: u64) -> Span {
    Span {
        addr: GuestAddress(addr),
        len,
    }
}

/// Header descriptor, then `readable`, then `writable`, then the status byte.
fn layout(readable: &[Span], writable: &[Span]) -> ChainLayout {
    let mut r = vec![span(HDR, HEADER_LEN as u64)];
    r.extend_from_slice(readable);
    let mut w = writable.to_vec();
    w.push(span(STATUS, 1));
    ChainLayout {
        readable: r,
        writable: w,
    }
}

fn status(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn segment(sector: u64, num_sectors: u32, flags: u32) -> [u8; SEGMENT_LEN] {
    let mut s = [0u8; SEGMENT_LEN];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num_sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn read_in_range_copies_image_sectors_and_counts_used_len() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_IN, 3);
    let len = run(&mem, &disk, &layout(&[], &[span(DATA, 1024)])).unwrap();
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    assert_eq!(len, 1025);
    assert_eq!(guest_bytes(&mem, DATA, 512), vec![3u8; 512]);
    assert_eq!(guest_bytes(&mem, DATA + 512, 512), vec![4u8; 512]);
}

#[test]
fn write_in_range_reaches_the_image() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_OUT, 5);
    mem.write_slice(&[0xabu8; 512], GuestAddress(DATA)).unwrap();
    mem.write_slice(&[0xcdu8; 512], GuestAddress(DATA2))
        .unwrap();
    let len = run(
        &mem,
        &disk,
        &layout(&[span(DATA, 512), span(DATA2, 512)], &[]),
    )
    .unwrap();
    assert_eq!((status(&mem), len), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(read_image(&t, 5 * 512, 512), vec![0xabu8; 512]);
    assert_eq!(read_image(&t, 6 * 512, 512), vec![0xcdu8; 512]);
    assert_eq!(read_image(&t, 7 * 512, 512), vec![7u8; 512]);
}

#[test]
fn write_with_writeback_off_still_lands() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    mem.write_slice(&[0x11u8; 512], GuestAddress(DATA)).unwrap();
    let ctx = RequestContext {
        disk: &disk,
        serial: &SERIAL,
        writeback: false,
        limits: LIMITS,
    };
    process(&mem, &ctx, &layout(&[span(DATA, 512)], &[])).unwrap();
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    assert_eq!(read_image(&t, 0, 512), vec![0x11u8; 512]);
}

#[test]
fn flush_on_open_image_is_ok() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(run(&mem, &disk, &layout(&[], &[])), Ok(1));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
}

#[test]
fn get_id_writes_the_serial_and_counts_20_bytes() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    mem.write_slice(&[0xeeu8; 32], GuestAddress(DATA)).unwrap();
    let len = run(&mem, &disk, &layout(&[], &[span(DATA, 32)])).unwrap();
    assert_eq!((status(&mem), len), (VIRTIO_BLK_S_OK, 21));
    assert_eq!(guest_bytes(&mem, DATA, 20), SERIAL.to_vec());
    assert_eq!(guest_bytes(&mem, DATA + 20, 12), vec![0xeeu8; 12]);
}

#[test]
fn read_past_capacity_is_ioerr_and_writes_nothing() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_IN, IMAGE_SECTORS - 1);
    let len = run(&mem, &disk, &layout(&[], &[span(DATA, 1024)])).unwrap();
    assert_eq!((status(&mem), len), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(guest_bytes(&mem, DATA, 1024), vec![0u8; 1024]);
}

#[test]
fn read_sector_overflowing_u64_is_ioerr() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_IN, u64::MAX / 256);
    run(&mem, &disk, &layout(&[], &[span(DATA, 512)])).unwrap();
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
}

#[test]
fn write_past_capacity_is_ioerr_and_image_unchanged() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_OUT, IMAGE_SECTORS - 1);
    mem.write_slice(&[0xabu8; 1024], GuestAddress(DATA))
        .unwrap();
    run(&mem, &disk, &layout(&[span(DATA, 1024)], &[])).unwrap();
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
    assert_eq!(
        read_image(&t, (IMAGE_SECTORS - 1) * 512, 512),
        vec![63u8; 512]
    );
    assert_eq!(t.as_file().metadata().unwrap().len(), IMAGE_SECTORS * 512);
}

#[test]
fn write_not_whole_sectors_is_ioerr() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    mem.write_slice(&[0xabu8; 100], GuestAddress(DATA)).unwrap();
    run(&mem, &disk, &layout(&[span(DATA, 100)], &[])).unwrap();
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
    assert_eq!(read_image(&t, 0, 512), vec![0u8; 512]);
}

#[test]
fn write_to_read_only_disk_is_ioerr_and_image_unchanged() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, true);
    header(&mem, VIRTIO_BLK_T_OUT, 1);
    mem.write_slice(&[0xabu8; 512], GuestAddress(DATA)).unwrap();
    run(&mem, &disk, &layout(&[span(DATA, 512)], &[])).unwrap();
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
    assert_eq!(read_image(&t, 512, 512), vec![1u8; 512]);
}

#[test]
fn unknown_type_is_unsupp() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, 10, 0); // VIRTIO_BLK_T_GET_LIFETIME, not offered
    run(&mem, &disk, &layout(&[], &[span(DATA, 16)])).unwrap();
    assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn header_split_over_descriptors_and_status_inside_data_descriptor_are_parsed() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_IN, 2);
    // Header as 5 + 11 bytes; data and status in one 513-byte writable descriptor.
    let l = ChainLayout {
        readable: vec![span(HDR, 5), span(HDR + 5, 11)],
        writable: vec![span(DATA, 513)],
    };
    assert_eq!(run(&mem, &disk, &l), Ok(513));
    assert_eq!(guest_bytes(&mem, DATA, 512), vec![2u8; 512]);
    assert_eq!(guest_bytes(&mem, DATA + 512, 1), vec![VIRTIO_BLK_S_OK]);
}

fn discard_like(req_type: u32, flags: u32) -> (GuestMemoryMmap, TempFile) {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, req_type, 0);
    let mut segs = Vec::new();
    segs.extend_from_slice(&segment(8, 8, flags));
    segs.extend_from_slice(&segment(32, 16, flags));
    mem.write_slice(&segs, GuestAddress(DATA)).unwrap();
    run(&mem, &disk, &layout(&[span(DATA, 32)], &[])).unwrap();
    (mem, t)
}

fn assert_zeroed_segments(t: &TempFile) {
    assert_eq!(read_image(t, 8 * 512, 8 * 512), vec![0u8; 8 * 512]);
    assert_eq!(read_image(t, 32 * 512, 16 * 512), vec![0u8; 16 * 512]);
    assert_eq!(read_image(t, 16 * 512, 512), vec![16u8; 512]);
    assert_eq!(read_image(t, 48 * 512, 512), vec![48u8; 512]);
    assert_eq!(t.as_file().metadata().unwrap().len(), IMAGE_SECTORS * 512);
}

#[test]
fn discard_segments_read_back_as_zeros() {
    let (mem, t) = discard_like(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    assert_zeroed_segments(&t);
}

#[test]
fn write_zeroes_segments_read_back_as_zeros() {
    let (mem, t) = discard_like(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    assert_zeroed_segments(&t);
}

#[test]
fn write_zeroes_with_unmap_reads_back_as_zeros() {
    let (mem, t) = discard_like(
        VIRTIO_BLK_T_WRITE_ZEROES,
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    assert_zeroed_segments(&t);
}

#[test]
fn discard_with_unmap_flag_is_unsupp_and_image_unchanged() {
    let (mem, t) = discard_like(VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(read_image(&t, 8 * 512, 512), vec![8u8; 512]);
}

#[test]
fn write_zeroes_unknown_flag_is_unsupp() {
    let (mem, t) = discard_like(VIRTIO_BLK_T_WRITE_ZEROES, 0x2);
    assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(read_image(&t, 8 * 512, 512), vec![8u8; 512]);
}

#[test]
fn write_zeroes_second_segment_past_capacity_is_ioerr_and_first_untouched() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let mut segs = segment(8, 8, 0).to_vec();
    segs.extend_from_slice(&segment(IMAGE_SECTORS - 1, 2, 0));
    mem.write_slice(&segs, GuestAddress(DATA)).unwrap();
    run(&mem, &disk, &layout(&[span(DATA, 32)], &[])).unwrap();
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
    assert_eq!(read_image(&t, 8 * 512, 512), vec![8u8; 512]);
}

#[test]
fn discard_more_segments_than_max_is_unsupp() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    let n = MAX_DISCARD_SEG as u64 + 1;
    run(
        &mem,
        &disk,
        &layout(&[span(DATA, n * SEGMENT_LEN as u64)], &[]),
    )
    .unwrap();
    assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn discard_on_read_only_disk_is_ioerr() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, true);
    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    mem.write_slice(&segment(0, 8, 0), GuestAddress(DATA))
        .unwrap();
    run(&mem, &disk, &layout(&[span(DATA, 16)], &[])).unwrap();
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
    assert_eq!(read_image(&t, 0, 512), vec![0u8; 512]);
    assert_eq!(read_image(&t, 512, 512), vec![1u8; 512]);
}

// --- chains that cannot be answered ---

#[test]
fn chain_without_writable_descriptor_has_no_status() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let l = ChainLayout {
        readable: vec![span(HDR, 16)],
        writable: vec![],
    };
    assert_eq!(run(&mem, &disk, &l), Err(ChainError::NoStatus));
    assert_eq!(status(&mem), 0xff);
}

#[test]
fn chain_shorter_than_header_is_malformed_and_status_untouched() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let l = ChainLayout {
        readable: vec![span(HDR, 15)],
        writable: vec![span(STATUS, 1)],
    };
    assert_eq!(run(&mem, &disk, &l), Err(ChainError::NoHeader));
    assert_eq!(status(&mem), 0xff);
}

#[test]
fn readable_descriptor_after_writable_is_malformed() {
    let descs = [
        (GuestAddress(HDR), 16, false),
        (GuestAddress(STATUS), 1, true),
        (GuestAddress(DATA), 512, false),
    ];
    assert_eq!(
        ChainLayout::from_descriptors(descs),
        Err(ChainError::ReadableAfterWritable)
    );
}

#[test]
fn status_outside_guest_memory_cannot_be_answered() {
    let (mem, t) = (memory(), image_file());
    let disk = open(&t, false);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let l = ChainLayout {
        readable: vec![span(HDR, 16)],
        writable: vec![span(MEM_SIZE as u64 + 0x1000, 1)],
    };
    assert!(matches!(
        run(&mem, &disk, &l),
        Err(ChainError::StatusFault(_))
    ));
}

// --- translation faults: a GuestMemory that refuses one range, after the slices before it ---

/// Guest memory whose accesses touching `refused` fail part-way, as a vIOMMU fault does: the
/// pieces before the refused page come back first, then the error.
struct Refusing {
    mem: GuestMemoryMmap,
    refused: Range<u64>,
}

struct RefusingSlices<'a>(std::vec::IntoIter<GuestMemoryResult<VolatileSlice<'a, ()>>>);

impl<'a> Iterator for RefusingSlices<'a> {
    type Item = GuestMemoryResult<VolatileSlice<'a, ()>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

impl FusedIterator for RefusingSlices<'_> {}
impl<'a> GuestMemorySliceIterator<'a, ()> for RefusingSlices<'a> {}

impl GuestMemory for Refusing {
    type PhysicalMemory = GuestMemoryMmap;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, _access: Permissions) -> bool {
        let end = addr.0 + count as u64;
        (end <= self.refused.start || addr.0 >= self.refused.end)
            && GuestMemoryBackend::check_range(&self.mem, addr, count)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        _access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, ()>> {
        let end = addr.0 + count as u64;
        let mut items = Vec::new();
        if end <= self.refused.start || addr.0 >= self.refused.end {
            items.extend(GuestMemoryBackend::get_slices(&self.mem, addr, count));
        } else {
            let ok = self.refused.start.saturating_sub(addr.0) as usize;
            if ok > 0 {
                items.extend(GuestMemoryBackend::get_slices(&self.mem, addr, ok));
            }
            items.push(Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(
                self.refused.start.max(addr.0),
            ))));
        }
        Ok(RefusingSlices(items.into_iter()))
    }
}

fn refusing(refused: Range<u64>) -> Refusing {
    Refusing {
        mem: memory(),
        refused,
    }
}

#[test]
fn write_with_second_buffer_faulting_is_ioerr_and_image_unchanged() {
    let t = image_file();
    let disk = open(&t, false);
    // The second buffer's second half is refused.
    let r = refusing(DATA2 + 256..DATA2 + 0x1000);
    header(&r.mem, VIRTIO_BLK_T_OUT, 4);
    r.mem
        .write_slice(&[0xabu8; 512], GuestAddress(DATA))
        .unwrap();
    let len = run(
        &r,
        &disk,
        &layout(&[span(DATA, 512), span(DATA2, 512)], &[]),
    )
    .unwrap();
    assert_eq!((status(&r.mem), len), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(
        read_image(&t, 4 * 512, 1024),
        [[4u8; 512], [5u8; 512]].concat()
    );
}

#[test]
fn read_with_second_buffer_faulting_is_ioerr_and_guest_untouched() {
    let t = image_file();
    let disk = open(&t, false);
    let r = refusing(DATA2 + 256..DATA2 + 0x1000);
    header(&r.mem, VIRTIO_BLK_T_IN, 4);
    let len = run(
        &r,
        &disk,
        &layout(&[], &[span(DATA, 512), span(DATA2, 512)]),
    )
    .unwrap();
    assert_eq!((status(&r.mem), len), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(guest_bytes(&r.mem, DATA, 512), vec![0u8; 512]);
    assert_eq!(guest_bytes(&r.mem, DATA2, 512), vec![0u8; 512]);
}

#[test]
fn header_fault_is_ioerr() {
    let t = image_file();
    let disk = open(&t, false);
    let r = refusing(HDR + 8..HDR + 16);
    header(&r.mem, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(run(&r, &disk, &layout(&[], &[])), Ok(1));
    assert_eq!(status(&r.mem), VIRTIO_BLK_S_IOERR);
}

#[test]
fn status_fault_cannot_be_answered() {
    let t = image_file();
    let disk = open(&t, false);
    let r = refusing(STATUS..STATUS + 1);
    header(&r.mem, VIRTIO_BLK_T_FLUSH, 0);
    assert!(matches!(
        run(&r, &disk, &layout(&[], &[])),
        Err(ChainError::StatusFault(a)) if a == STATUS
    ));
}

mod device;
mod transport;

// --- through the vIOMMU: VirtioMemory::Translated over a page table ---

mod translated {
    use super::*;
    use crate::virtio::memory::testing::{translated_dma, PageTable, IOVA_SHIFT};

    fn iova(gpa: u64, len: u64) -> Span {
        span(gpa + IOVA_SHIFT, len)
    }

    /// Header, status and DATA mapped; DATA2 is not.
    fn setup() -> (GuestMemoryMmap, Arc<PageTable>, VirtioMemory) {
        let mem = memory();
        let table = Arc::new(PageTable::default());
        table.map(HDR, 0x1000);
        table.map(STATUS, 0x1000);
        table.map(DATA, 0x1000);
        let vm = VirtioMemory::Translated(translated_dma(&mem, &table));
        (mem, table, vm)
    }

    fn chain(readable: &[Span], writable: &[Span]) -> ChainLayout {
        let mut r = vec![iova(HDR, HEADER_LEN as u64)];
        r.extend_from_slice(readable);
        let mut w = writable.to_vec();
        w.push(iova(STATUS, 1));
        ChainLayout {
            readable: r,
            writable: w,
        }
    }

    #[test]
    fn translated_read_into_mapped_buffer_succeeds() {
        let (mem, table, vm) = setup();
        let t = image_file();
        let disk = open(&t, false);
        header(&mem, VIRTIO_BLK_T_IN, 7);
        assert_eq!(run(&vm, &disk, &chain(&[], &[iova(DATA, 512)])), Ok(513));
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        assert_eq!(guest_bytes(&mem, DATA, 512), vec![7u8; 512]);
        assert_eq!(table.faults(), 0);
    }

    #[test]
    fn translated_write_from_unmapped_buffer_is_ioerr_faults_and_image_unchanged() {
        let (mem, table, vm) = setup();
        let t = image_file();
        let disk = open(&t, false);
        header(&mem, VIRTIO_BLK_T_OUT, 2);
        mem.write_slice(&[0xabu8; 512], GuestAddress(DATA)).unwrap();
        mem.write_slice(&[0xcdu8; 512], GuestAddress(DATA2))
            .unwrap();
        let l = chain(&[iova(DATA, 512), iova(DATA2, 512)], &[]);
        assert_eq!(run(&vm, &disk, &l), Ok(1));
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(
            read_image(&t, 2 * 512, 1024),
            [[2u8; 512], [3u8; 512]].concat()
        );
        assert!(table.faults() >= 1);
    }

    #[test]
    fn translated_read_into_unmapped_buffer_is_ioerr_and_guest_untouched() {
        let (mem, table, vm) = setup();
        let t = image_file();
        let disk = open(&t, false);
        header(&mem, VIRTIO_BLK_T_IN, 2);
        let l = chain(&[], &[iova(DATA, 512), iova(DATA2, 512)]);
        assert_eq!(run(&vm, &disk, &l), Ok(1));
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(guest_bytes(&mem, DATA, 512), vec![0u8; 512]);
        assert_eq!(guest_bytes(&mem, DATA2, 512), vec![0u8; 512]);
        assert!(table.faults() >= 1);
    }
}
