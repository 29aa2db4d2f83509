use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::pci::configuration::{COMMAND_MASTER, REG_SUBSYSTEM};
use crate::pci::configuration::{REG_BAR0, REG_CAPABILITIES, REG_CLASS_REVISION, REG_ID};
use crate::vfio::fake::{Line, Sent};
use crate::virtio::common_config::*;
use crate::virtio::memory::testing::{guest_memory, translated_dma, PageTable, IOVA_SHIFT};
use crate::virtio::rng::Rng;
use crate::virtio::{ActivateError, TYPE_ENTROPY};

const DEV: Bdf = Bdf::new(0, 4, 0);
const MSG: u64 = 0xfee0_0000;
/// Ring addresses of queue 0 (GPA; IOVA_SHIFT above with ACCESS_PLATFORM).
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
const QSIZE: u16 = 16;
/// Feature bits the test device offers.
const DEV_FEATURE: u64 = 1 << 5;

/// What the device under the transport saw.
#[derive(Default)]
struct Probe {
    contexts: Mutex<Vec<ActivateContext>>,
    resets: AtomicUsize,
    fail: AtomicBool,
}

struct TestDevice(Arc<Probe>, Vec<u16>);

impl VirtioDevice for TestDevice {
    fn device_type(&self) -> u16 {
        TYPE_ENTROPY
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.1
    }
    fn features(&self) -> u64 {
        DEV_FEATURE
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8 + 0x10);
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.0.fail.load(Ordering::SeqCst) {
            return Err(ActivateError::Other("refused".into()));
        }
        self.0.contexts.lock().unwrap().push(ctx);
        Ok(())
    }
    fn reset(&mut self) {
        self.0.resets.fetch_add(1, Ordering::SeqCst);
        self.0.contexts.lock().unwrap().clear();
    }
}

struct Rig {
    dev: VirtioPciDevice,
    mem: GuestMemoryMmap,
    probe: Arc<Probe>,
    sent: Arc<Sent>,
    line: Arc<Line>,
    table: Arc<PageTable>,
}

fn build(iommu: bool, device: Option<Box<dyn VirtioDevice>>) -> Rig {
    let mem = guest_memory();
    let probe = Arc::new(Probe::default());
    let device =
        device.unwrap_or_else(|| Box::new(TestDevice(probe.clone(), vec![QSIZE * 16, 64])));
    let sent = Arc::new(Sent::default());
    let line = Arc::new(Line::default());
    let table = Arc::new(PageTable::default());
    let dma = iommu.then(|| translated_dma(&mem, &table));
    let wiring = VectorWiring {
        source: DEV,
        trigger: sent.clone(),
        routing: None,
        watcher: None,
        name: "virtio-test".into(),
    };
    let dev = VirtioPciDevice::new(DEV, device, mem.clone(), dma, wiring, line.clone()).unwrap();
    Rig {
        dev,
        mem,
        probe,
        sent,
        line,
        table,
    }
}

fn rig(iommu: bool) -> Rig {
    build(iommu, None)
}

impl Rig {
    fn r8(&mut self, off: u64) -> u8 {
        let mut b = [0u8; 1];
        self.dev.read_bar(0, off, &mut b);
        b[0]
    }
    fn r16(&mut self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        self.dev.read_bar(0, off, &mut b);
        u16::from_le_bytes(b)
    }
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read_bar(0, off, &mut b);
        u32::from_le_bytes(b)
    }
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
        self.r8(DEVICE_STATUS)
    }
    fn config8(&mut self, at: usize) -> u8 {
        (self.dev.read_config_register(at / 4) >> ((at % 4) * 8)) as u8
    }
    fn config16(&mut self, at: usize) -> u16 {
        u16::from(self.config8(at)) | (u16::from(self.config8(at + 1)) << 8)
    }
    fn write_config(&mut self, at: usize, data: &[u8]) {
        self.dev
            .write_config_register(at / 4, (at % 4) as u64, data);
    }

    /// ACKNOWLEDGE | DRIVER, then `features`, then FEATURES_OK; returns the status read back.
    fn negotiate(&mut self, features: u64) -> u8 {
        self.w8(DEVICE_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        for half in 0..2u32 {
            self.w32(DRIVER_FEATURE_SELECT, half);
            self.w32(DRIVER_FEATURE, (features >> (32 * half)) as u32);
        }
        self.w8(
            DEVICE_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        self.status()
    }

    /// Queue 0 at the test addresses (shifted into IOVA space when `iova`).
    fn setup_queue0(&mut self, iova: bool) {
        let shift = if iova { IOVA_SHIFT } else { 0 };
        self.w16(QUEUE_SELECT, 0);
        self.w16(QUEUE_SIZE, QSIZE);
        for (reg, a) in [
            (QUEUE_DESC, DESC),
            (QUEUE_DRIVER, AVAIL),
            (QUEUE_DEVICE, USED),
        ] {
            self.w32(reg, (a + shift) as u32);
            self.w32(reg + 4, ((a + shift) >> 32) as u32);
        }
        self.w16(QUEUE_ENABLE, 1);
    }

    fn driver_ok(&mut self) {
        let s = self.status();
        self.w8(DEVICE_STATUS, s | STATUS_DRIVER_OK);
    }

    /// Finds the capability with `id` (and vendor cfg_type `ty` for id 9).
    fn find_cap(&mut self, id: u8, ty: Option<u8>) -> Option<usize> {
        let mut at = self.config8(REG_CAPABILITIES * 4) as usize;
        while at != 0 {
            if self.config8(at) == id && ty.is_none_or(|t| self.config8(at + 3) == t) {
                return Some(at);
            }
            at = self.config8(at + 1) as usize;
        }
        None
    }

    fn enable_msix(&mut self) {
        self.write_config(4, &COMMAND_MASTER.to_le_bytes());
        let cap = self.dev.msix().cap().offset();
        self.write_config(cap + 3, &[0x80]);
        for i in 0..3u64 {
            let e = MSIX_TABLE_OFFSET + i * 16;
            self.dev.write_bar(0, e, &MSG.to_le_bytes());
            self.dev.write_bar(0, e + 8, &(0x40 + i).to_le_bytes());
        }
    }

    fn contexts(&self) -> usize {
        self.probe.contexts.lock().unwrap().len()
    }
}

#[test]
fn config_space_ids_are_modern_virtio() {
    let mut r = rig(false);
    let id = r.dev.read_config_register(REG_ID);
    assert_eq!(id, 0x1044_1af4);
    let class = r.dev.read_config_register(REG_CLASS_REVISION);
    assert_eq!(class, 0x00ff_0001);
    assert_eq!(r.dev.read_config_register(REG_SUBSYSTEM), 0x1100_1af4);
}

#[test]
fn bar0_is_64bit_prefetchable_memory_of_32k() {
    let mut r = rig(false);
    assert_eq!(r.dev.read_config_register(REG_BAR0) & 0xf, 0b1100);
    r.dev
        .write_config_register(REG_BAR0, 0, &u32::MAX.to_le_bytes());
    assert_eq!(r.dev.read_config_register(REG_BAR0) & !0xf, !(0x8000 - 1));
}

#[test]
fn virtio_capabilities_place_each_structure_in_its_own_page() {
    let mut r = rig(false);
    for (ty, offset, len) in [
        (VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, 16),
        (VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 16),
        (VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CONFIG_OFFSET, 16),
        (VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, 20),
    ] {
        let cap = r.find_cap(PCI_CAP_ID_VNDR, Some(ty)).unwrap();
        assert_eq!(r.config8(cap + 2), len);
        assert_eq!(r.config8(cap + VCAP_BAR), 0);
        let off = r.dev.read_config_register((cap + VCAP_OFFSET) / 4);
        assert_eq!(u64::from(off), offset);
    }
    let notify = r
        .find_cap(PCI_CAP_ID_VNDR, Some(VIRTIO_PCI_CAP_NOTIFY_CFG))
        .unwrap();
    assert_eq!(
        r.dev.read_config_register((notify + 16) / 4),
        NOTIFY_MULTIPLIER
    );
    assert!(r
        .find_cap(PCI_CAP_ID_VNDR, Some(VIRTIO_PCI_CAP_PCI_CFG))
        .is_some());
    let msix = r.find_cap(crate::pci::regs::CAP_ID_MSIX, None).unwrap();
    // Table in BAR 0 at 0x6000, PBA at 0x7000.
    assert_eq!(r.dev.read_config_register((msix + 4) / 4), 0x6000);
    assert_eq!(r.dev.read_config_register((msix + 8) / 4), 0x7000);
    // queues + 1 vectors (table size is N - 1).
    assert_eq!(r.config16(msix + 2) & 0x7ff, 2);
}

#[test]
fn pcie_capability_is_an_integrated_endpoint_with_flr() {
    let mut r = rig(false);
    let cap = r.find_cap(PCI_CAP_ID_EXP, None).unwrap();
    assert_eq!(r.config16(cap + 2), 0x92);
    let devcap = r.dev.read_config_register((cap + PCIE_DEVCAP_OFF) / 4);
    assert_ne!(devcap & (1 << 28), 0);
}

#[test]
fn features_offer_version_1_without_access_platform_when_no_iommu() {
    let mut r = rig(false);
    r.w32(DEVICE_FEATURE_SELECT, 1);
    assert_eq!(r.r32(DEVICE_FEATURE), 1);
    r.w32(DEVICE_FEATURE_SELECT, 0);
    assert_eq!(u64::from(r.r32(DEVICE_FEATURE)), DEV_FEATURE);
}

#[test]
fn features_offer_access_platform_with_iommu() {
    let mut r = rig(true);
    r.w32(DEVICE_FEATURE_SELECT, 1);
    assert_eq!(r.r32(DEVICE_FEATURE), 0b11);
}

#[test]
fn features_ok_without_access_platform_on_offering_device_is_refused() {
    let mut r = rig(true);
    let s = r.negotiate(VIRTIO_F_VERSION_1);
    assert_eq!(s & STATUS_FEATURES_OK, 0);
}

#[test]
fn features_ok_with_access_platform_is_accepted() {
    let mut r = rig(true);
    let s = r.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    assert_ne!(s & STATUS_FEATURES_OK, 0);
}

#[test]
fn features_ok_without_version_1_is_refused() {
    let mut r = rig(false);
    let s = r.negotiate(DEV_FEATURE);
    assert_eq!(s & STATUS_FEATURES_OK, 0);
}

#[test]
fn features_ok_with_a_feature_not_offered_is_refused() {
    let mut r = rig(false);
    let s = r.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    assert_eq!(s & STATUS_FEATURES_OK, 0);
}

#[test]
fn driver_ok_without_features_ok_sets_needs_reset_and_does_not_activate() {
    let mut r = rig(false);
    r.negotiate(DEV_FEATURE);
    r.driver_ok();
    assert_eq!(r.contexts(), 0);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    // The configuration interrupt went out as INTx (MSI-X is off).
    assert_eq!(r.r8(ISR_OFFSET), ISR_CONFIG);
}

#[test]
fn driver_ok_activates_with_the_enabled_queues_and_features() {
    let mut r = rig(false);
    r.negotiate(VIRTIO_F_VERSION_1 | DEV_FEATURE);
    r.setup_queue0(false);
    r.driver_ok();
    let ctx = r.probe.contexts.lock().unwrap();
    assert_eq!(ctx.len(), 1);
    assert_eq!(ctx[0].features, VIRTIO_F_VERSION_1 | DEV_FEATURE);
    assert_eq!(ctx[0].queues.len(), 1);
    assert_eq!(ctx[0].queues[0].index, 0);
    assert_eq!(ctx[0].queues[0].queue.size(), QSIZE);
    assert_eq!(ctx[0].queues[0].queue.desc_table(), DESC);
    assert!(!ctx[0].memory.is_translated());
}

#[test]
fn driver_ok_with_access_platform_hands_translated_memory() {
    let mut r = rig(true);
    r.table.map(DESC, 0x3000);
    r.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    r.setup_queue0(true);
    r.driver_ok();
    let ctx = r.probe.contexts.lock().unwrap();
    assert!(ctx[0].memory.is_translated());
}

#[test]
fn driver_ok_with_rings_the_iommu_does_not_map_sets_needs_reset() {
    let mut r = rig(true);
    r.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    r.setup_queue0(true);
    r.driver_ok();
    assert_eq!(r.contexts(), 0);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(r.table.faults() > 0);
}

#[test]
fn activation_failure_sets_needs_reset() {
    let mut r = rig(false);
    r.probe.fail.store(true, Ordering::SeqCst);
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.driver_ok();
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(!r.dev.is_active());
}

#[test]
fn queue_enable_with_misaligned_ring_sets_needs_reset() {
    let mut r = rig(false);
    r.negotiate(VIRTIO_F_VERSION_1);
    r.w32(QUEUE_DEVICE, 0x1_2002);
    r.w16(QUEUE_ENABLE, 1);
    assert_eq!(r.r16(QUEUE_ENABLE), 0);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn driver_ok_after_a_guest_error_does_not_activate_until_reset() {
    let mut r = rig(false);
    r.negotiate(VIRTIO_F_VERSION_1);
    r.w16(QUEUE_SELECT, 1);
    r.w32(QUEUE_DESC, 8);
    r.w16(QUEUE_ENABLE, 1);
    r.setup_queue0(false);
    r.driver_ok();
    assert_eq!(r.contexts(), 0);
    r.w8(DEVICE_STATUS, 0);
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.driver_ok();
    assert_eq!(r.contexts(), 1);
}

#[test]
fn status_zero_resets_device_features_queues_and_vectors() {
    let mut r = rig(false);
    r.enable_msix();
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.w16(QUEUE_MSIX_VECTOR, 1);
    r.w16(CONFIG_MSIX_VECTOR, 0);
    r.driver_ok();
    r.w8(DEVICE_STATUS, 0);
    assert_eq!(r.status(), 0);
    assert_eq!(r.probe.resets.load(Ordering::SeqCst), 1);
    assert_eq!(r.r16(QUEUE_ENABLE), 0);
    assert_eq!(r.r16(QUEUE_SIZE), QSIZE * 16);
    assert_eq!(r.r16(QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    assert_eq!(r.r16(CONFIG_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    r.w32(DRIVER_FEATURE_SELECT, 1);
    assert_eq!(r.r32(DRIVER_FEATURE), 0);
    assert!(!r.dev.is_active());
}

#[test]
fn status_zero_clears_needs_reset() {
    let mut r = rig(false);
    r.w32(QUEUE_DESC, 8);
    r.w16(QUEUE_ENABLE, 1);
    assert_ne!(r.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    r.w8(DEVICE_STATUS, 0);
    assert_eq!(r.status(), 0);
}

#[test]
fn flr_returns_the_function_to_reset_state() {
    let mut r = rig(true);
    r.table.map(DESC, 0x3000);
    r.enable_msix();
    r.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    r.setup_queue0(true);
    r.w16(QUEUE_MSIX_VECTOR, 1);
    r.driver_ok();
    assert!(r.dev.is_active());
    assert!(!r.dev.dma.as_ref().unwrap().iotlb().is_empty());
    let cap = r.find_cap(PCI_CAP_ID_EXP, None).unwrap();
    r.write_config(cap + PCIE_DEVCTL_OFF + 1, &[0x80]);
    assert_eq!(r.status(), 0);
    assert!(!r.dev.is_active());
    assert_eq!(r.probe.resets.load(Ordering::SeqCst), 1);
    assert_eq!(r.r16(QUEUE_ENABLE), 0);
    assert_eq!(r.r16(QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    let msix = r.dev.msix().cap().offset();
    assert_eq!(r.config8(msix + 3) & 0xc0, 0);
    // Table entries masked and cleared.
    assert_eq!(r.r32(MSIX_TABLE_OFFSET), 0);
    assert_eq!(r.r32(MSIX_TABLE_OFFSET + 12), 1);
    assert!(r.dev.dma.as_ref().unwrap().iotlb().is_empty());
    // Initiate FLR reads 0; the rest of Device Control is back at its default.
    assert_eq!(r.config16(cap + PCIE_DEVCTL_OFF), PCIE_DEVCTL_DEFAULT);
}

#[test]
fn devctl_write_without_flr_bit_keeps_the_device_running() {
    let mut r = rig(false);
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.driver_ok();
    let cap = r.find_cap(PCI_CAP_ID_EXP, None).unwrap();
    r.write_config(cap + PCIE_DEVCTL_OFF, &[0x1f, 0x20]);
    assert!(r.dev.is_active());
    assert_eq!(r.config16(cap + PCIE_DEVCTL_OFF), 0x201f);
}

#[test]
fn notify_write_signals_the_queues_eventfd() {
    let mut r = rig(false);
    let fds = r.dev.notify_eventfds();
    assert_eq!(fds[1].0, NOTIFY_OFFSET + 4);
    r.w16(NOTIFY_OFFSET + 4, 1);
    assert_eq!(fds[1].1.read().unwrap(), 1);
    assert!(fds[0].1.read().is_err());
}

#[test]
fn notify_write_past_the_last_queue_is_dropped() {
    let mut r = rig(false);
    r.w16(NOTIFY_OFFSET + 8, 2);
    r.w16(NOTIFY_OFFSET + 2, 0);
    for (_, fd) in r.dev.notify_eventfds() {
        assert!(fd.read().is_err());
    }
}

#[test]
fn isr_read_clears_it_and_deasserts_inta() {
    let mut r = rig(false);
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.driver_ok();
    let irq = r.probe.contexts.lock().unwrap()[0].interrupt.clone();
    irq.signal_queue(0);
    assert_eq!(*r.line.0.lock().unwrap(), vec![true]);
    let status = r.dev.read_config_register(REG_COMMAND_STATUS);
    assert_ne!(status & (1 << 19), 0);
    assert_eq!(r.r8(ISR_OFFSET), ISR_QUEUE);
    assert_eq!(r.r8(ISR_OFFSET), 0);
    assert_eq!(*r.line.0.lock().unwrap(), vec![true, false]);
}

#[test]
fn intx_disable_holds_inta_low() {
    let mut r = rig(false);
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.driver_ok();
    r.write_config(4, &(COMMAND_MASTER | COMMAND_INTX_DISABLE).to_le_bytes());
    let irq = r.probe.contexts.lock().unwrap()[0].interrupt.clone();
    irq.signal_queue(0);
    assert!(r.line.0.lock().unwrap().is_empty());
    assert_eq!(r.r8(ISR_OFFSET), ISR_QUEUE);
}

#[test]
fn signal_queue_with_msix_sends_the_queues_vector_not_inta() {
    let mut r = rig(false);
    r.enable_msix();
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.w16(QUEUE_MSIX_VECTOR, 1);
    r.w16(CONFIG_MSIX_VECTOR, 0);
    r.driver_ok();
    let irq = r.probe.contexts.lock().unwrap()[0].interrupt.clone();
    irq.signal_queue(0);
    irq.signal_config();
    assert_eq!(r.sent.data(), vec![0x41, 0x40]);
    assert!(r.line.0.lock().unwrap().is_empty());
    assert_eq!(r.r8(ISR_OFFSET), 0);
}

#[test]
fn signal_queue_with_msix_and_bus_master_off_sends_nothing() {
    let mut r = rig(false);
    r.enable_msix();
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.w16(QUEUE_MSIX_VECTOR, 1);
    r.driver_ok();
    r.write_config(4, &0u16.to_le_bytes());
    let irq = r.probe.contexts.lock().unwrap()[0].interrupt.clone();
    irq.signal_queue(0);
    assert!(r.sent.data().is_empty());
    assert!(r.line.0.lock().unwrap().is_empty());
}

#[test]
fn signal_queue_with_msix_and_no_vector_sends_nothing() {
    let mut r = rig(false);
    r.enable_msix();
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.driver_ok();
    let irq = r.probe.contexts.lock().unwrap()[0].interrupt.clone();
    irq.signal_queue(0);
    assert!(r.sent.data().is_empty());
    assert!(r.line.0.lock().unwrap().is_empty());
}

#[test]
fn device_config_reads_reach_the_device() {
    let mut r = rig(false);
    assert_eq!(r.r8(DEVICE_CONFIG_OFFSET + 3), 0x13);
}

#[test]
fn pci_cfg_window_reads_the_common_configuration() {
    let mut r = rig(false);
    let cap = r
        .find_cap(PCI_CAP_ID_VNDR, Some(VIRTIO_PCI_CAP_PCI_CFG))
        .unwrap();
    r.write_config(cap + VCAP_OFFSET, &(NUM_QUEUES as u32).to_le_bytes());
    r.write_config(cap + VCAP_LENGTH, &2u32.to_le_bytes());
    let v = r.dev.read_config_register((cap + VCAP_PCI_CFG_DATA) / 4);
    assert_eq!(v, 2);
}

#[test]
fn pci_cfg_window_with_bad_length_reads_zero() {
    let mut r = rig(false);
    let cap = r
        .find_cap(PCI_CAP_ID_VNDR, Some(VIRTIO_PCI_CAP_PCI_CFG))
        .unwrap();
    r.write_config(cap + VCAP_OFFSET, &(NUM_QUEUES as u32).to_le_bytes());
    r.write_config(cap + VCAP_LENGTH, &3u32.to_le_bytes());
    assert_eq!(r.dev.read_config_register((cap + VCAP_PCI_CFG_DATA) / 4), 0);
}

#[test]
fn bar_access_past_the_structures_reads_zero() {
    let mut r = rig(false);
    assert_eq!(r.r32(0x0ffe), 0);
    assert_eq!(r.r32(NOTIFY_OFFSET), 0);
    let mut big = [0xffu8; 16];
    r.dev.read_bar(0, 0, &mut big);
    assert_eq!(big, [0; 16]);
}

/// A split ring at the test addresses, driven as a driver would.
fn post_rng_request(mem: &GuestMemoryMmap, buf: u64, len: u32) {
    // Descriptor 0: device-writable (VIRTQ_DESC_F_WRITE, 2.7.5).
    mem.write_obj(buf, GuestAddress(DESC)).unwrap();
    mem.write_obj(len, GuestAddress(DESC + 8)).unwrap();
    mem.write_obj(2u16, GuestAddress(DESC + 12)).unwrap();
    // avail.ring[0] = 0, avail.idx = 1.
    mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
}

#[test]
fn rng_notify_fills_the_buffer_with_random_bytes_and_interrupts() {
    let mut r = build(false, Some(Box::new(Rng::new().unwrap())));
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.driver_ok();
    assert!(r.dev.is_active());
    let buf = 0x2_0000;
    post_rng_request(&r.mem, buf, 64);
    r.w16(NOTIFY_OFFSET, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() != 1 {
        assert!(Instant::now() < deadline, "no used buffer");
        std::thread::sleep(Duration::from_millis(5));
    }
    // used.ring[0] = { id 0, len 64 }.
    assert_eq!(r.mem.read_obj::<u32>(GuestAddress(USED + 4)).unwrap(), 0);
    assert_eq!(r.mem.read_obj::<u32>(GuestAddress(USED + 8)).unwrap(), 64);
    let mut bytes = [0u8; 64];
    r.mem.read_slice(&mut bytes, GuestAddress(buf)).unwrap();
    assert!(bytes.iter().any(|b| *b != 0));
    // The byte after the buffer is untouched.
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(buf + 64)).unwrap(), 0);
    while r.line.0.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no interrupt");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.r8(ISR_OFFSET), ISR_QUEUE);
    r.w8(DEVICE_STATUS, 0);
}

#[test]
fn ioeventfd_of_bar0_notify_area_serves_the_queue_without_a_bar_write() {
    let mut r = build(false, Some(Box::new(Rng::new().unwrap())));
    let fds = r.dev.ioeventfds(0);
    assert_eq!(fds.len(), 1, "one queue, one notify eventfd");
    assert_eq!(fds[0].0, NOTIFY_OFFSET);
    assert!(r.dev.ioeventfds(1).is_empty());
    r.negotiate(VIRTIO_F_VERSION_1);
    r.setup_queue0(false);
    r.driver_ok();
    let buf = 0x2_0000;
    post_rng_request(&r.mem, buf, 32);
    // What KVM does on the guest's notify write: signal the fd, no exit to the device model.
    fds[0].1.write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() != 1 {
        assert!(
            Instant::now() < deadline,
            "the ioeventfd did not reach the queue"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.mem.read_obj::<u32>(GuestAddress(USED + 8)).unwrap(), 32);
    r.w8(DEVICE_STATUS, 0);
}

/// A function with the ATS capability (a VT-d unit with device-TLB support).
fn ats_rig() -> Rig {
    let mut r = rig(true);
    r.dev.add_ats().unwrap();
    r
}

impl Rig {
    fn config32(&mut self, at: usize) -> u32 {
        self.dev.read_config_register(at / 4)
    }
}

#[test]
fn ats_capability_follows_the_pcie_capability_at_0x100() {
    let mut r = ats_rig();
    // The PCIe capability makes the 4 KiB space exist for the guest (PCIe base 7.6).
    assert!(r.find_cap(PCI_CAP_ID_EXP, None).is_some());
    // What ECAM reads at 0x100: ID 0x000f, version 1, no next.
    assert_eq!(r.config32(0x100), 0x0001_000f);
    assert_eq!(r.config16(0x100 + ATS_CAP_OFF), ATS_CAP_PAGE_ALIGNED);
    assert_eq!(
        r.config16(0x100 + ATS_CTRL_OFF),
        0,
        "disabled, STU 0 at reset"
    );
    assert_eq!(r.dev.ats_control(), Some(0));
}

#[test]
fn ats_absent_without_add_ats_reads_zero_at_0x100() {
    let mut r = rig(true);
    assert_eq!(r.config32(0x100), 0);
    assert_eq!(r.dev.ats_control(), None);
}

#[test]
fn ats_control_enable_and_stu_are_writable_the_rest_read_only() {
    let mut r = ats_rig();
    r.write_config(0x100 + ATS_CAP_OFF, &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(r.config16(0x100 + ATS_CAP_OFF), ATS_CAP_PAGE_ALIGNED);
    assert_eq!(
        r.config16(0x100 + ATS_CTRL_OFF),
        ATS_CTRL_ENABLE | ATS_CTRL_STU
    );
    // What Linux's pci_enable_ats(pdev, 12) writes.
    r.write_config(0x100 + ATS_CTRL_OFF, &ATS_CTRL_ENABLE.to_le_bytes());
    assert_eq!(r.dev.ats_control(), Some(ATS_CTRL_ENABLE));
    r.write_config(0x100, &[0; 4]);
    assert_eq!(r.config32(0x100), 0x0001_000f, "header read-only");
}

#[test]
fn ats_enabled_device_translates_through_its_cache() {
    let mut r = ats_rig();
    r.write_config(0x100 + ATS_CTRL_OFF, &ATS_CTRL_ENABLE.to_le_bytes());
    r.table.map(DESC, 0x3000);
    r.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    r.setup_queue0(true);
    r.driver_ok();
    assert!(r.dev.is_active());
    assert!(!r.dev.iotlb().unwrap().is_empty());
}

#[test]
fn flr_clears_ats_enable_and_stu() {
    let mut r = ats_rig();
    r.write_config(0x100 + ATS_CTRL_OFF, &(ATS_CTRL_ENABLE | 3).to_le_bytes());
    let cap = r.find_cap(PCI_CAP_ID_EXP, None).unwrap();
    r.write_config(cap + PCIE_DEVCTL_OFF + 1, &[0x80]);
    assert_eq!(r.dev.ats_control(), Some(0));
    assert_eq!(r.config32(0x100), 0x0001_000f, "the capability stays");
}
