use std::sync::{Arc, Mutex};

use iommu::{Bdf, Iova};

use super::registers::*;
use crate::dma::{DmaAccess, DmaError};

/// Flat fake memory; IOVAs at or above `limit` are blocked as an IOMMU would block them.
struct FakeDma {
    mem: Mutex<Vec<u8>>,
    limit: u64,
    requesters: Mutex<Vec<Bdf>>,
}

impl FakeDma {
    fn new(size: usize, limit: u64) -> Arc<Self> {
        Arc::new(FakeDma {
            mem: Mutex::new(vec![0; size]),
            limit,
            requesters: Mutex::new(Vec::new()),
        })
    }
    fn check(&self, source: Bdf, iova: Iova, len: usize) -> Result<usize, DmaError> {
        self.requesters.lock().unwrap().push(source);
        if iova.0 + len as u64 > self.limit {
            return Err(DmaError::Blocked {
                requester: source,
                iova,
            });
        }
        Ok(iova.0 as usize)
    }
}

impl DmaAccess for FakeDma {
    fn dma_read(&self, source: Bdf, iova: Iova, buf: &mut [u8]) -> Result<(), DmaError> {
        let a = self.check(source, iova, buf.len())?;
        buf.copy_from_slice(&self.mem.lock().unwrap()[a..a + buf.len()]);
        Ok(())
    }
    fn dma_write(&self, source: Bdf, iova: Iova, buf: &[u8]) -> Result<(), DmaError> {
        let a = self.check(source, iova, buf.len())?;
        self.mem.lock().unwrap()[a..a + buf.len()].copy_from_slice(buf);
        Ok(())
    }
}

#[derive(Default)]
struct FakeIrq {
    raised: u32,
    pending: bool,
}

impl EduInterrupt for FakeIrq {
    fn update(&mut self, pending: bool, raised: bool) {
        self.pending = pending;
        if raised {
            self.raised += 1;
        }
    }
}

const SRC: Bdf = Bdf::new(0, 3, 0);

fn setup() -> (EduRegisters, Arc<FakeDma>, FakeIrq) {
    let dma = FakeDma::new(0x10000, 0x8000);
    (EduRegisters::new(SRC, dma.clone()), dma, FakeIrq::default())
}

fn rd32(e: &mut EduRegisters, off: u64) -> u32 {
    let mut b = [0u8; 4];
    e.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr32(e: &mut EduRegisters, irq: &mut FakeIrq, off: u64, v: u32) {
    e.write(off, &v.to_le_bytes(), irq);
}

fn wr64(e: &mut EduRegisters, irq: &mut FakeIrq, off: u64, v: u64) {
    e.write(off, &v.to_le_bytes(), irq);
}

fn start_dma(e: &mut EduRegisters, irq: &mut FakeIrq, src: u64, dst: u64, len: u64, cmd: u64) {
    wr64(e, irq, REG_DMA_SRC, src);
    wr64(e, irq, REG_DMA_DST, dst);
    wr64(e, irq, REG_DMA_COUNT, len);
    wr64(e, irq, REG_DMA_CMD, cmd | DMA_CMD_START);
}

#[test]
fn edu_ident_reads_magic() {
    let (mut e, _, _) = setup();
    assert_eq!(rd32(&mut e, REG_IDENT), IDENT_VALUE);
}

#[test]
fn edu_liveness_reads_inverse_of_written_value() {
    let (mut e, _, mut irq) = setup();
    wr32(&mut e, &mut irq, REG_LIVENESS, 0x1234_5678);
    assert_eq!(rd32(&mut e, REG_LIVENESS), !0x1234_5678);
}

#[test]
fn edu_factorial_computes_and_raises_when_asked() {
    let (mut e, _, mut irq) = setup();
    wr32(&mut e, &mut irq, REG_FACTORIAL, 5);
    assert_eq!(rd32(&mut e, REG_FACTORIAL), 120);
    assert_eq!(irq.raised, 0);
    wr32(&mut e, &mut irq, REG_STATUS, STATUS_IRQ_FACTORIAL);
    wr32(&mut e, &mut irq, REG_FACTORIAL, 10);
    assert_eq!(rd32(&mut e, REG_FACTORIAL), 3_628_800);
    assert_eq!(rd32(&mut e, REG_IRQ_STATUS), IRQ_FACTORIAL);
    assert_eq!(irq.raised, 1);
}

/// n! in 32 bits, the slow way, as QEMU's edu computes it.
fn factorial_u32(n: u32) -> u32 {
    (1..=n).fold(1u32, |acc, k| acc.wrapping_mul(k))
}

#[test]
fn edu_factorial_wraps_to_32_bits_and_is_zero_from_34() {
    let (mut e, _, mut irq) = setup();
    for n in 0..=40 {
        wr32(&mut e, &mut irq, REG_FACTORIAL, n);
        assert_eq!(rd32(&mut e, REG_FACTORIAL), factorial_u32(n), "{n}!");
    }
    // 33! has 31 factors of two, 34! has 32.
    assert_ne!(factorial_u32(33), 0);
    assert_eq!(factorial_u32(34), 0);
}

// Robustness review F-EDU-1: the factorial was an O(n) loop on the vCPU thread.
#[test]
fn edu_factorial_of_a_huge_n_is_instant() {
    let (mut e, _, mut irq) = setup();
    let start = std::time::Instant::now();
    for n in [u32::MAX, u32::MAX - 1, 1 << 31, 1_000_000] {
        wr32(&mut e, &mut irq, REG_FACTORIAL, n);
        assert_eq!(rd32(&mut e, REG_FACTORIAL), 0, "{n}!");
    }
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_millis(50),
        "four writes took {took:?}"
    );
}

#[test]
fn edu_irq_raise_and_ack_track_status() {
    let (mut e, _, mut irq) = setup();
    wr32(&mut e, &mut irq, REG_IRQ_RAISE, 0x5);
    assert!(irq.pending);
    assert_eq!(rd32(&mut e, REG_IRQ_STATUS), 0x5);
    wr32(&mut e, &mut irq, REG_IRQ_ACK, 0x1);
    assert!(irq.pending);
    wr32(&mut e, &mut irq, REG_IRQ_ACK, 0x4);
    assert!(!irq.pending);
    assert_eq!(rd32(&mut e, REG_IRQ_STATUS), 0);
}

#[test]
fn edu_dma_round_trip_through_buffer() {
    let (mut e, dma, mut irq) = setup();
    dma.mem.lock().unwrap()[0x1000..0x1010].copy_from_slice(&[7u8; 16]);
    start_dma(&mut e, &mut irq, 0x1000, DMA_BUFFER_ADDR + 0x10, 16, 0);
    assert_eq!(rd32(&mut e, REG_DMA_CMD) as u64 & DMA_CMD_START, 0);
    start_dma(
        &mut e,
        &mut irq,
        DMA_BUFFER_ADDR + 0x10,
        0x2000,
        16,
        DMA_CMD_TO_RAM | DMA_CMD_IRQ,
    );
    assert_eq!(&dma.mem.lock().unwrap()[0x2000..0x2010], &[7u8; 16]);
    assert_eq!(rd32(&mut e, REG_IRQ_STATUS), IRQ_DMA);
    assert_eq!(*dma.requesters.lock().unwrap(), vec![SRC, SRC]);
}

#[test]
fn edu_dma_blocked_by_iommu_leaves_memory_untouched() {
    let (mut e, dma, mut irq) = setup();
    start_dma(
        &mut e,
        &mut irq,
        DMA_BUFFER_ADDR,
        0x9000,
        16,
        DMA_CMD_TO_RAM,
    );
    assert_eq!(e.dma_errors, 1);
    assert!(dma.mem.lock().unwrap().iter().all(|&b| b == 0));
    assert_eq!(rd32(&mut e, REG_DMA_CMD) as u64 & DMA_CMD_START, 0);
}

#[test]
fn edu_dma_outside_device_buffer_is_dropped() {
    let (mut e, dma, mut irq) = setup();
    dma.mem.lock().unwrap()[..16].fill(9);
    // Ends one byte past the buffer.
    start_dma(&mut e, &mut irq, 0, DMA_BUFFER_ADDR + 0xff0, 17, 0);
    assert_eq!(e.dma_errors, 1);
    start_dma(&mut e, &mut irq, 0, u64::MAX, 16, 0);
    assert_eq!(e.dma_errors, 2);
    assert!(dma.requesters.lock().unwrap().is_empty());
}

#[test]
fn edu_dma_address_is_masked_to_28_bits() {
    let (mut e, dma, mut irq) = setup();
    dma.mem.lock().unwrap()[0x100..0x104].copy_from_slice(&[1, 2, 3, 4]);
    start_dma(&mut e, &mut irq, 0x1000_0100, DMA_BUFFER_ADDR, 4, 0);
    start_dma(&mut e, &mut irq, DMA_BUFFER_ADDR, 0x200, 4, DMA_CMD_TO_RAM);
    assert_eq!(&dma.mem.lock().unwrap()[0x200..0x204], &[1, 2, 3, 4]);
}

#[test]
fn edu_dma_registers_split_32bit_halves() {
    let (mut e, _, mut irq) = setup();
    wr32(&mut e, &mut irq, REG_DMA_SRC, 0xdead_beef);
    wr32(&mut e, &mut irq, REG_DMA_SRC + 4, 0x1);
    let mut b = [0u8; 8];
    e.read(REG_DMA_SRC, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x1_dead_beef);
    assert_eq!(rd32(&mut e, REG_DMA_SRC + 4), 1);
}

#[test]
fn edu_bad_access_sizes_are_ignored() {
    let (mut e, _, mut irq) = setup();
    e.write(REG_LIVENESS, &[1, 2], &mut irq);
    e.write(REG_LIVENESS, &1u64.to_le_bytes(), &mut irq);
    assert_eq!(rd32(&mut e, REG_LIVENESS), !0);
    let mut b = [0u8; 2];
    e.read(REG_IDENT, &mut b);
    assert_eq!(b, [0xff, 0xff]);
    let mut b = [0u8; 4];
    e.read(REG_IDENT + 1, &mut b);
    assert_eq!(b, [0xff; 4]);
}

mod pci {
    use super::*;
    use crate::edu::pci::{EduDevice, EDU_BAR0_SIZE};
    use crate::interrupt::{InterruptError, IrqLine, MsiMessage, MsiTrigger};
    use crate::pci::configuration::{COMMAND_INTX_DISABLE, COMMAND_MASTER, COMMAND_MEMORY};
    use crate::pci::PciDevice;

    #[derive(Default)]
    struct Msis(Mutex<Vec<MsiMessage>>);
    impl MsiTrigger for Msis {
        fn send_msi(&self, msg: MsiMessage) -> Result<(), InterruptError> {
            self.0.lock().unwrap().push(msg);
            Ok(())
        }
    }

    #[derive(Default)]
    struct Line(Mutex<Vec<bool>>);
    impl IrqLine for Line {
        fn set_level(&self, level: bool) {
            self.0.lock().unwrap().push(level);
        }
    }

    struct Rig {
        dev: EduDevice,
        dma: Arc<FakeDma>,
        msis: Arc<Msis>,
        line: Arc<Line>,
    }

    fn rig() -> Rig {
        let dma = FakeDma::new(0x10000, 0x8000);
        let msis = Arc::new(Msis::default());
        let line = Arc::new(Line::default());
        let dev = EduDevice::new(SRC, dma.clone(), msis.clone(), line.clone());
        Rig {
            dev,
            dma,
            msis,
            line,
        }
    }

    fn cfg_write(d: &mut EduDevice, off: usize, data: &[u8]) {
        d.write_config_register(off / 4, (off % 4) as u64, data);
    }

    fn command(d: &mut EduDevice, bits: u16) {
        cfg_write(d, 4, &bits.to_le_bytes());
    }

    fn bar_wr64(d: &mut EduDevice, off: u64, v: u64) {
        d.write_bar(0, off, &v.to_le_bytes());
    }

    fn msi_offset(d: &mut EduDevice) -> usize {
        (d.read_config_register(13) & 0xff) as usize
    }

    fn enable_msi(d: &mut EduDevice, address: u64, data: u16) {
        let cap = msi_offset(d);
        cfg_write(d, cap + 4, &(address as u32).to_le_bytes());
        cfg_write(d, cap + 8, &((address >> 32) as u32).to_le_bytes());
        cfg_write(d, cap + 12, &data.to_le_bytes());
        cfg_write(d, cap + 2, &[1]);
    }

    #[test]
    fn edu_pci_identity_bar_and_msi_capability() {
        let mut r = rig();
        let d = &mut r.dev;
        assert_eq!(d.read_config_register(0), 0x11e8_1234);
        assert_eq!(d.read_config_register(2) >> 8, 0xff00, "class 00ff");
        assert_eq!((d.read_config_register(15) >> 8) & 0xff, 1, "INTA");
        d.write_config_register(4, 0, &u32::MAX.to_le_bytes());
        let size = !(d.read_config_register(4) & !0xf) as u64 + 1;
        assert_eq!(size, EDU_BAR0_SIZE);
        let cap = msi_offset(d);
        assert_eq!(
            d.read_config_register(cap / 4) & 0xff,
            0x05,
            "MSI capability"
        );
        assert_ne!((d.read_config_register(cap / 4) >> 16) & 0x80, 0, "64-bit");
    }

    #[test]
    fn edu_pci_msi_carries_programmed_message_and_requester() {
        let mut r = rig();
        command(&mut r.dev, COMMAND_MEMORY | COMMAND_MASTER);
        enable_msi(&mut r.dev, 0xfee0_0010, 0x1234);
        r.dev.write_bar(0, REG_IRQ_RAISE, &1u32.to_le_bytes());
        let sent = r.msis.0.lock().unwrap().clone();
        assert_eq!(
            sent,
            vec![MsiMessage {
                address: 0xfee0_0010,
                data: 0x1234,
                source: SRC
            }]
        );
        assert!(
            r.line.0.lock().unwrap().iter().all(|l| !l),
            "INTx stays low"
        );
    }

    #[test]
    fn edu_pci_msi_without_address_sends_nothing() {
        // The shared MSI model's rule: an unprogrammed (zero) address is no message.
        let mut r = rig();
        command(&mut r.dev, COMMAND_MEMORY | COMMAND_MASTER);
        enable_msi(&mut r.dev, 0, 0x1234);
        r.dev.write_bar(0, REG_IRQ_RAISE, &1u32.to_le_bytes());
        assert!(r.msis.0.lock().unwrap().is_empty());
        assert!(
            r.line.0.lock().unwrap().iter().all(|l| !l),
            "nor INTx: MSI is enabled"
        );
    }

    #[test]
    fn edu_pci_msi_capability_reads_back_through_config() {
        let mut r = rig();
        enable_msi(&mut r.dev, 0x1_fee0_1007, 0x4041);
        let cap = msi_offset(&mut r.dev) / 4;
        assert_eq!(
            r.dev.read_config_register(cap) >> 16,
            0x81,
            "64-bit, enabled"
        );
        assert_eq!(r.dev.read_config_register(cap + 1), 0xfee0_1004);
        assert_eq!(r.dev.read_config_register(cap + 2), 1);
        assert_eq!(r.dev.read_config_register(cap + 3), 0x4041);
    }

    #[test]
    fn edu_pci_intx_follows_status_and_interrupt_disable() {
        let mut r = rig();
        command(&mut r.dev, COMMAND_MEMORY | COMMAND_MASTER);
        r.dev.write_bar(0, REG_IRQ_RAISE, &1u32.to_le_bytes());
        assert_eq!(r.line.0.lock().unwrap().last(), Some(&true));
        command(&mut r.dev, COMMAND_MEMORY | COMMAND_INTX_DISABLE);
        assert_eq!(r.line.0.lock().unwrap().last(), Some(&false), "masked");
        command(&mut r.dev, COMMAND_MEMORY);
        assert_eq!(r.line.0.lock().unwrap().last(), Some(&true), "unmasked");
        r.dev.write_bar(0, REG_IRQ_ACK, &1u32.to_le_bytes());
        assert_eq!(r.line.0.lock().unwrap().last(), Some(&false), "acked");
        assert!(r.msis.0.lock().unwrap().is_empty());
    }

    #[test]
    fn edu_pci_interrupt_status_reports_pending_intx_even_when_disabled() {
        let mut r = rig();
        let status = |d: &mut EduDevice| (d.read_config_register(1) >> 16) & 0x8;
        command(&mut r.dev, COMMAND_MEMORY | COMMAND_INTX_DISABLE);
        assert_eq!(status(&mut r.dev), 0);
        r.dev.write_bar(0, REG_IRQ_RAISE, &1u32.to_le_bytes());
        assert_eq!(
            status(&mut r.dev),
            0x8,
            "pending though the pin is disabled"
        );
        assert!(r.line.0.lock().unwrap().iter().all(|l| !l));
        r.dev.write_config_register(1, 0, &[0, 0, 0x08, 0]);
        assert_eq!(status(&mut r.dev), 0x8, "read-only");
        r.dev.write_bar(0, REG_IRQ_ACK, &1u32.to_le_bytes());
        assert_eq!(status(&mut r.dev), 0);
        enable_msi(&mut r.dev, 0xfee0_0000, 0x30);
        r.dev.write_bar(0, REG_IRQ_RAISE, &1u32.to_le_bytes());
        assert_eq!(
            status(&mut r.dev),
            0,
            "an interrupt that goes out as MSI is not INTx"
        );
    }

    #[test]
    fn edu_pci_without_bus_master_no_dma_and_no_msi() {
        let mut r = rig();
        command(&mut r.dev, COMMAND_MEMORY);
        enable_msi(&mut r.dev, 0xfee0_0000, 0x30);
        r.dma.mem.lock().unwrap()[0x100] = 0x77;
        bar_wr64(&mut r.dev, REG_DMA_SRC, 0x100);
        bar_wr64(&mut r.dev, REG_DMA_DST, DMA_BUFFER_ADDR);
        bar_wr64(&mut r.dev, REG_DMA_COUNT, 4);
        bar_wr64(&mut r.dev, REG_DMA_CMD, DMA_CMD_START | DMA_CMD_IRQ);
        assert_eq!(r.dev.dma_errors(), 1);
        assert!(r.dma.requesters.lock().unwrap().is_empty(), "no bus cycle");
        assert!(
            r.msis.0.lock().unwrap().is_empty(),
            "MSI is a DMA write too"
        );
        command(&mut r.dev, COMMAND_MEMORY | COMMAND_MASTER);
        bar_wr64(&mut r.dev, REG_DMA_CMD, DMA_CMD_START | DMA_CMD_IRQ);
        assert_eq!(r.dev.dma_errors(), 1);
        assert_eq!(r.dma.requesters.lock().unwrap().as_slice(), &[SRC]);
        assert_eq!(r.msis.0.lock().unwrap().len(), 1);
    }
}

/// Counts the warnings about DMA with bus mastering off (the only ones this test provokes).
struct CountingLogger(std::sync::atomic::AtomicUsize);

impl log::Log for CountingLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.args().to_string().contains("bus mastering disabled") {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    fn flush(&self) {}
}

static LOGGER: CountingLogger = CountingLogger(std::sync::atomic::AtomicUsize::new(0));

// Robustness review R-4: every refused DMA was a warning, so a guest could flood stderr.
#[test]
fn edu_dma_errors_in_a_loop_log_at_most_a_burst() {
    log::set_logger(&LOGGER).expect("no other test installs a logger");
    log::set_max_level(log::LevelFilter::Warn);
    let (mut e, _, mut irq) = setup();
    e.set_bus_master(false);
    for _ in 0..1000 {
        wr64(&mut e, &mut irq, REG_DMA_CMD, DMA_CMD_START);
    }
    assert_eq!(e.dma_errors, 1000);
    let lines = LOGGER.0.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=iommu::ratelimit::DEFAULT_BURST as usize).contains(&lines),
        "{lines} lines for 1000 refused transfers"
    );
}
