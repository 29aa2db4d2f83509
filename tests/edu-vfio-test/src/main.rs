//! `edu-vfio-test`: runs inside a guest (L1 or L2) and checks an edu device end to end:
//! DMA through the (virtual) IOMMU, blocking of unmapped DMA, MSI delivery, and the VFIO
//! map/unmap rate. Built statically so it runs from a bare initramfs.
//!
//! Usage: edu-vfio-test BDF [--bench-seconds S]    (device bound to vfio-pci)
//!        edu-vfio-test BDF --no-iommu             (no IOMMU: sysfs BAR + /proc/self/pagemap)

mod edu;
mod noiommu;
mod vfio;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use edu::Bar0;
use vfio::{DmaBuffer, Region, VfioDevice, HUGE_PAGE};

/// VFIO region and IRQ indexes for PCI devices (include/uapi/linux/vfio.h).
const BAR0_REGION: u32 = 0;
const CONFIG_REGION: u32 = 7;
const INTX_IRQ_INDEX: u32 = 0;
const MSI_IRQ_INDEX: u32 = 1;
/// INTx interrupts the INTx test raises one after another (each needs the previous one's
/// EOI and unmask to have worked).
const INTX_ROUNDS: u32 = 3;
/// PCI command register and its bits (PCI local bus spec 6.2.2).
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;
/// IOVAs the test uses: edu masks DMA addresses to 28 bits, so stay far below 256 MiB.
const IOVA_BUF: u64 = 0x10_0000;
const IOVA_UNMAPPED: u64 = 0x80_0000;
const IOVA_BENCH: u64 = 0x100_0000;
/// A 2 MiB-aligned IOVA for the superpage test.
const IOVA_HUGE: u64 = 0x40_0000;
pub(crate) const PAGE: u64 = 4096;
/// Bytes moved per DMA: inside the 4 KiB device buffer, never ending exactly at its end.
pub(crate) const XFER: u32 = 1024;
const _: () = assert!((XFER as u64) < edu::DMA_BUFFER_SIZE);

struct VfioBar<'a> {
    dev: &'a VfioDevice,
    region: Region,
}

impl Bar0 for VfioBar<'_> {
    fn read32(&self, offset: u64) -> Result<u32, String> {
        self.dev
            .read32(self.region, offset)
            .map_err(|e| e.to_string())
    }
    fn write32(&self, offset: u64, value: u32) -> Result<(), String> {
        self.dev
            .write32(self.region, offset, value)
            .map_err(|e| e.to_string())
    }
}

pub(crate) struct Outcome {
    pub(crate) passed: u32,
    pub(crate) failed: u32,
}

impl Outcome {
    pub(crate) fn record(&mut self, name: &str, r: Result<String, String>) {
        match r {
            Ok(detail) => {
                self.passed += 1;
                println!(
                    "PASS {name}{}",
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    }
                );
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

pub(crate) fn test_ident(bar: &dyn Bar0) -> Result<String, String> {
    let id = bar.read32(edu::REG_IDENT)?;
    if id & 0xff != edu::IDENT_MAGIC {
        return Err(format!(
            "identification register {id:#x}, expected low byte 0xed"
        ));
    }
    bar.write32(edu::REG_LIVENESS, 0x1234_5678)?;
    let live = bar.read32(edu::REG_LIVENESS)?;
    if live != !0x1234_5678u32 {
        return Err(format!(
            "liveness register {live:#x}, expected {:#x}",
            !0x1234_5678u32
        ));
    }
    Ok(format!("id {id:#x}"))
}

fn test_dma(bar: &dyn Bar0, buf: &mut DmaBuffer, base_iova: u64) -> Result<String, String> {
    let want = pattern(XFER as usize, 0x5a);
    let page = PAGE as usize;
    buf.as_mut_slice()[..XFER as usize].copy_from_slice(&want);
    buf.as_mut_slice()[page..page + XFER as usize].fill(0);
    edu::dma(bar, base_iova, edu::DMA_BUFFER, XFER, false)?;
    edu::dma(bar, edu::DMA_BUFFER, base_iova + PAGE, XFER, true)?;
    let got = &buf.as_slice()[page..page + XFER as usize];
    if got != want.as_slice() {
        let bad = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!(
            "byte {bad}: got {:#x}, want {:#x}",
            got[bad], want[bad]
        ));
    }
    Ok(format!(
        "{XFER} bytes RAM -> device -> RAM at IOVA {base_iova:#x}"
    ))
}

fn test_unmapped(bar: &dyn Bar0, buf: &mut DmaBuffer, base_iova: u64) -> Result<String, String> {
    // Load the device buffer with a fresh pattern, then aim a device -> RAM transfer at an IOVA
    // nobody mapped. Nothing we own may change, and the device must still work afterwards.
    let fresh = pattern(XFER as usize, 0xa5);
    buf.as_mut_slice()[..XFER as usize].copy_from_slice(&fresh);
    edu::dma(bar, base_iova, edu::DMA_BUFFER, XFER, false)?;
    let before = buf.as_slice().to_vec();
    edu::dma(bar, edu::DMA_BUFFER, IOVA_UNMAPPED, XFER, true)?;
    if buf.as_slice() != before.as_slice() {
        return Err("a DMA to an unmapped IOVA changed mapped memory".into());
    }
    test_dma(bar, buf, base_iova)?;
    Ok(format!(
        "DMA to unmapped IOVA {IOVA_UNMAPPED:#x} did not land; device still works"
    ))
}

/// One 2 MiB mapping of a huge page (which the guest's IOMMU driver maps as a superpage):
/// DMA to its first and last pages lands where it should.
fn test_dma_2m(dev: &VfioDevice, bar: &dyn Bar0) -> Result<String, String> {
    let mut buf = DmaBuffer::huge()?;
    dev.map_dma(buf.addr(), IOVA_HUGE, HUGE_PAGE as u64)
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let want = pattern(XFER as usize, 0x3c);
        let last = HUGE_PAGE - PAGE as usize;
        buf.as_mut_slice()[..XFER as usize].copy_from_slice(&want);
        edu::dma(bar, IOVA_HUGE, edu::DMA_BUFFER, XFER, false)?;
        edu::dma(bar, edu::DMA_BUFFER, IOVA_HUGE + last as u64, XFER, true)?;
        if buf.as_slice()[last..last + XFER as usize] != want[..] {
            return Err("DMA to the last page of the 2 MiB mapping did not land".into());
        }
        Ok(format!(
            "2 MiB at IOVA {IOVA_HUGE:#x} (one huge page): first page -> device -> last page"
        ))
    })();
    dev.unmap_dma(IOVA_HUGE, HUGE_PAGE as u64)
        .map_err(|e| e.to_string())?;
    result
}

fn eventfd() -> Result<OwnedFd, String> {
    // SAFETY: eventfd returns a new descriptor or -1, checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits up to 5 s for `fd` to be signalled and consumes the count.
fn wait_signalled(fd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    let mut count = 0u64;
    // SAFETY: reading the 8-byte counter of our own eventfd into a local.
    unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    n == 1
}

/// Runs `f` with an eventfd signalled by the device's interrupt `index`; the eventfd is
/// detached again whatever `f` returns.
fn with_irq_eventfd(
    dev: &VfioDevice,
    index: u32,
    f: impl FnOnce(&OwnedFd) -> Result<String, String>,
) -> Result<String, String> {
    let efd = eventfd()?;
    dev.set_irq_eventfd(index, Some(efd.as_raw_fd()))
        .map_err(|e| e.to_string())?;
    let result = f(&efd);
    dev.set_irq_eventfd(index, None)
        .map_err(|e| e.to_string())?;
    result
}

/// Legacy INTx (MSI off): the device's level-triggered interrupt reaches us through VFIO,
/// is acknowledged at the device and unmasked, several times in a row.
fn test_intx(dev: &VfioDevice, bar: &dyn Bar0) -> Result<String, String> {
    with_irq_eventfd(dev, INTX_IRQ_INDEX, |efd| {
        let start = Instant::now();
        for round in 0..INTX_ROUNDS {
            bar.write32(edu::REG_IRQ_RAISE, 1 << round)?;
            let arrived = wait_signalled(efd);
            let status = bar.read32(edu::REG_IRQ_STATUS)?;
            bar.write32(edu::REG_IRQ_ACK, status)?;
            dev.unmask_intx().map_err(|e| e.to_string())?;
            if !arrived {
                return Err(format!(
                    "INTx {round} did not arrive within 5 s (status {status:#x})"
                ));
            }
            if status & (1 << round) == 0 {
                return Err(format!(
                    "INTx {round} arrived but irq status is {status:#x}"
                ));
            }
        }
        Ok(format!(
            "{INTX_ROUNDS} INTx interrupts delivered, acknowledged and unmasked in {} us",
            start.elapsed().as_micros()
        ))
    })
}

fn test_msi(dev: &VfioDevice, bar: &dyn Bar0) -> Result<String, String> {
    with_irq_eventfd(dev, MSI_IRQ_INDEX, |efd| {
        bar.write32(edu::REG_IRQ_RAISE, 0x1)?;
        let start = Instant::now();
        let arrived = wait_signalled(efd);
        let status = bar.read32(edu::REG_IRQ_STATUS)?;
        bar.write32(edu::REG_IRQ_ACK, status)?;
        if !arrived {
            return Err(format!("no MSI within 5 s (irq status {status:#x})"));
        }
        if status & 1 == 0 {
            return Err(format!("MSI arrived but irq status is {status:#x}"));
        }
        Ok(format!(
            "MSI delivered in {} us",
            start.elapsed().as_micros()
        ))
    })
}

fn bench_map_unmap(dev: &VfioDevice, seconds: f64) -> Result<String, String> {
    let buf = DmaBuffer::new(PAGE as usize).map_err(|e| e.to_string())?;
    let deadline = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut pairs: u64 = 0;
    while start.elapsed() < deadline {
        for i in 0..64u64 {
            let iova = IOVA_BENCH + (pairs + i) % 1024 * PAGE;
            dev.map_dma(buf.addr(), iova, PAGE)
                .map_err(|e| e.to_string())?;
            dev.unmap_dma(iova, PAGE).map_err(|e| e.to_string())?;
        }
        pairs += 64;
    }
    let rate = pairs as f64 / start.elapsed().as_secs_f64();
    println!("map+unmap pairs per second: {rate:.0}");
    Ok(format!(
        "{pairs} map+unmap pairs of 4 KiB, {rate:.0} per second"
    ))
}

fn enable_device(dev: &VfioDevice) -> Result<(), String> {
    let cfg = dev.region(CONFIG_REGION).map_err(|e| e.to_string())?;
    let cmd = dev.read16(cfg, PCI_COMMAND).map_err(|e| e.to_string())?;
    dev.write16(
        cfg,
        PCI_COMMAND,
        cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
    )
    .map_err(|e| e.to_string())
}

fn run_vfio(bdf: &str, bench_seconds: f64) -> Result<Outcome, String> {
    let dev = VfioDevice::open(bdf).map_err(|e| e.to_string())?;
    enable_device(&dev)?;
    let region = dev.region(BAR0_REGION).map_err(|e| e.to_string())?;
    let bar = VfioBar { dev: &dev, region };
    let mut out = Outcome {
        passed: 0,
        failed: 0,
    };
    out.record("ident", test_ident(&bar));
    let mut buf = DmaBuffer::new(2 * PAGE as usize).map_err(|e| e.to_string())?;
    dev.map_dma(buf.addr(), IOVA_BUF, 2 * PAGE)
        .map_err(|e| e.to_string())?;
    out.record("dma", test_dma(&bar, &mut buf, IOVA_BUF));
    out.record(
        "unmapped-dma-blocked",
        test_unmapped(&bar, &mut buf, IOVA_BUF),
    );
    out.record("dma-2m", test_dma_2m(&dev, &bar));
    out.record("intx", test_intx(&dev, &bar));
    out.record("msi", test_msi(&dev, &bar));
    dev.unmap_dma(IOVA_BUF, 2 * PAGE)
        .map_err(|e| e.to_string())?;
    if bench_seconds > 0.0 {
        out.record("map-unmap-bench", bench_map_unmap(&dev, bench_seconds));
    }
    Ok(out)
}

fn usage() -> ! {
    eprintln!("usage: edu-vfio-test BDF [--bench-seconds S] | edu-vfio-test BDF --no-iommu");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(bdf) = args.first() else { usage() };
    let mut bench_seconds = 2.0;
    let mut no_iommu = false;
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--bench-seconds" => {
                bench_seconds = rest
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--no-iommu" => no_iommu = true,
            _ => usage(),
        }
    }
    let result = if no_iommu {
        noiommu::run(bdf)
    } else {
        run_vfio(bdf, bench_seconds)
    };
    match result {
        Ok(o) => {
            println!("edu-vfio-test: {} passed, {} failed", o.passed, o.failed);
            std::process::exit(if o.failed == 0 { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("edu-vfio-test: error: {e}");
            std::process::exit(1);
        }
    }
}
