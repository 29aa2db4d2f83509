//! virtio-blk behind the virtio-pci transport and the vIOMMU, driven through BAR 0 as a
//! driver would: negotiation with ACCESS_PLATFORM, a read through translated rings and
//! buffers, a buffer the IOMMU refuses, and a reset that stops the device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::pci::vectors::VectorWiring;
use crate::pci::PciDevice;
use crate::vfio::fake::{Line, Sent};
use crate::virtio::common_config::*;
use crate::virtio::memory::testing::{translated_dma, PageTable, IOVA_SHIFT};
use crate::virtio::pci::{VirtioPciDevice, DEVICE_CONFIG_OFFSET, NOTIFY_OFFSET};
use crate::virtio::{VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1};
use crate::Bdf;

/// Queue 0's rings (GPA; the driver gives them at + IOVA_SHIFT).
const RING_DESC: u64 = 0x5_0000;
const RING_AVAIL: u64 = 0x5_1000;
const RING_USED: u64 = 0x5_2000;
const RING_SIZE: u16 = 16;

struct Rig {
    dev: VirtioPciDevice,
    mem: GuestMemoryMmap,
    table: Arc<PageTable>,
    _image: TempFile,
}

fn rig() -> Rig {
    let mem = memory();
    let t = image_file();
    let table = Arc::new(PageTable::default());
    for gpa in [RING_DESC, RING_AVAIL, RING_USED, HDR, DATA, STATUS] {
        table.map(gpa, 0x1000);
    }
    let wiring = VectorWiring {
        source: Bdf::new(0, 5, 0),
        trigger: Arc::new(Sent::default()),
        routing: None,
        watcher: None,
        name: "virtio-blk-test".into(),
    };
    let block = Block::new(open(&t, false), Some("transport")).unwrap();
    let dev = VirtioPciDevice::new(
        Bdf::new(0, 5, 0),
        Box::new(block),
        mem.clone(),
        Some(translated_dma(&mem, &table)),
        wiring,
        Arc::new(Line::default()),
    )
    .unwrap();
    Rig {
        dev,
        mem,
        table,
        _image: t,
    }
}

impl Rig {
    fn w8(&mut self, off: u64, v: u8) {
        self.dev.write_bar(0, off, &[v]);
    }
    fn w16(&mut self, off: u64, v: u16) {
        self.dev.write_bar(0, off, &v.to_le_bytes());
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.dev.write_bar(0, off, &v.to_le_bytes());
    }
    fn status(&mut self) -> u8 {
        let mut b = [0u8];
        self.dev.read_bar(0, DEVICE_STATUS, &mut b);
        b[0]
    }

    /// Negotiates `features`, sets queue 0 up at IOVAs and sets DRIVER_OK.
    fn start(&mut self, features: u64) {
        self.w8(DEVICE_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        for half in 0..2u32 {
            self.w32(DRIVER_FEATURE_SELECT, half);
            self.w32(DRIVER_FEATURE, (features >> (32 * half)) as u32);
        }
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.w8(DEVICE_STATUS, s);
        assert_eq!(self.status(), s, "FEATURES_OK refused");
        self.w16(QUEUE_SELECT, 0);
        self.w16(crate::virtio::common_config::QUEUE_SIZE, RING_SIZE);
        for (reg, gpa) in [
            (QUEUE_DESC, RING_DESC),
            (QUEUE_DRIVER, RING_AVAIL),
            (QUEUE_DEVICE, RING_USED),
        ] {
            let a = gpa + IOVA_SHIFT;
            self.w32(reg, a as u32);
            self.w32(reg + 4, (a >> 32) as u32);
        }
        self.w16(QUEUE_ENABLE, 1);
        self.w8(DEVICE_STATUS, s | STATUS_DRIVER_OK);
        assert!(self.dev.is_active());
    }

    /// Posts header + `data` (device-writable, at IOVA) + status as chain 0 and notifies.
    fn post_read(&mut self, sector: u64, data_gpa: u64) {
        header(&self.mem, VIRTIO_BLK_T_IN, sector);
        let descs = [(HDR, 16u32, 1u16), (data_gpa, 512, 1 | 2), (STATUS, 1, 2)];
        for (i, (gpa, len, flags)) in descs.iter().enumerate() {
            let at = RING_DESC + 16 * i as u64;
            self.mem
                .write_obj(gpa + IOVA_SHIFT, GuestAddress(at))
                .unwrap();
            self.mem.write_obj(*len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(*flags, GuestAddress(at + 12)).unwrap();
            self.mem
                .write_obj(i as u16 + 1, GuestAddress(at + 14))
                .unwrap();
        }
        self.mem
            .write_obj(0u16, GuestAddress(RING_AVAIL + 4))
            .unwrap();
        self.mem
            .write_obj(1u16, GuestAddress(RING_AVAIL + 2))
            .unwrap();
        self.w16(NOTIFY_OFFSET, 0);
    }

    fn wait_used(&self, idx: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .mem
                .read_obj::<u16>(GuestAddress(RING_USED + 2))
                .unwrap()
                == idx
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

#[test]
fn transport_blk_config_capacity_reads_through_device_config() {
    let mut r = rig();
    let mut cap = [0u8; 8];
    r.dev.read_bar(0, DEVICE_CONFIG_OFFSET, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), IMAGE_SECTORS);
}

#[test]
fn transport_blk_read_through_the_iommu_fills_the_buffer() {
    let mut r = rig();
    r.start(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    r.post_read(6, DATA);
    assert!(r.wait_used(1), "no used buffer");
    assert_eq!(
        r.mem.read_obj::<u32>(GuestAddress(RING_USED + 8)).unwrap(),
        513
    );
    assert_eq!(guest_bytes(&r.mem, DATA, 512), vec![6u8; 512]);
    assert_eq!(status(&r.mem), VIRTIO_BLK_S_OK);
    assert_eq!(r.table.faults(), 0);
    r.w8(DEVICE_STATUS, 0);
}

#[test]
fn transport_blk_read_into_unmapped_buffer_is_ioerr_and_faults() {
    let mut r = rig();
    r.start(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    r.post_read(6, DATA2);
    assert!(r.wait_used(1), "no used buffer");
    assert_eq!(status(&r.mem), VIRTIO_BLK_S_IOERR);
    assert_eq!(guest_bytes(&r.mem, DATA2, 512), vec![0u8; 512]);
    assert!(r.table.faults() >= 1);
    r.w8(DEVICE_STATUS, 0);
}

#[test]
fn transport_blk_reset_stops_serving_the_queue() {
    let mut r = rig();
    r.start(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    r.w8(DEVICE_STATUS, 0);
    assert!(!r.dev.is_active());
    // The rings are still in memory, but no device serves them after the reset.
    r.post_read(6, DATA);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        r.mem.read_obj::<u16>(GuestAddress(RING_USED + 2)).unwrap(),
        0
    );
    assert_eq!(status(&r.mem), 0xff);
}
