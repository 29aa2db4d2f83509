//! A seeded, bounded fuzzer over the whole port and MMIO bus of a machine with every device
//! ([`machine::Machine`]). One driver, [`run`], takes its choices from an [`Entropy`]: a
//! seeded PRNG for `cargo test` ([`run_seed`]) or the fuzzer's input bytes for cargo-fuzz
//! ([`run_bytes`], the `bus` target in devices/fuzz/).
//!
//! Oracles, checked after every access: no panic; no access slower than
//! [`Limits::slow_access`]; the 0xCF8/0xCFC mechanism and ECAM read the same configuration
//! bytes; a device's DMA requests stay within what the device can address and land in RAM
//! only; a passed-through function's MSI-X vector that is masked (entry or function mask), or
//! any vector while MSI-X and MSI are off, has no hypervisor route; nor has a masked vector of
//! the emulated MSI-X function, or any of its vectors while MSI-X is off.

pub mod machine;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::bus::lock;
use crate::edu::registers::*;
use crate::pci::PciDevice;
use crate::vfio::interrupts::Mode;
use machine::*;

/// Where the driver's choices come from.
pub trait Entropy {
    /// An integer of `bytes` (1..=8) little-endian bytes; None when the input is used up.
    fn take(&mut self, bytes: usize) -> Option<u64>;
}

/// SplitMix64 (Steele, Lea, Flood 2014): a small PRNG whose seed replays a run.
pub struct SeedEntropy(u64);

impl SeedEntropy {
    pub fn new(seed: u64) -> Self {
        SeedEntropy(seed)
    }
}

impl Entropy for SeedEntropy {
    fn take(&mut self, bytes: usize) -> Option<u64> {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Some(if bytes >= 8 {
            z
        } else {
            z & ((1 << (8 * bytes)) - 1)
        })
    }
}

/// The fuzzer's input bytes, consumed front to back.
pub struct ByteEntropy<'a>(&'a [u8]);

impl<'a> ByteEntropy<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        ByteEntropy(data)
    }
}

impl Entropy for ByteEntropy<'_> {
    fn take(&mut self, bytes: usize) -> Option<u64> {
        if self.0.is_empty() {
            return None;
        }
        let n = bytes.clamp(1, 8).min(self.0.len());
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Some(u64::from_le_bytes(b))
    }
}

/// The default bound on one access: far above the slowest seen in debug builds on a loaded
/// machine (under 0.5 s), far below what F-EDU-1 took (9 s in debug).
pub const SLOW_ACCESS: Duration = Duration::from_secs(2);

/// Bounds of a run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Accesses at most.
    pub max_ops: usize,
    /// Stop starting new accesses after this.
    pub deadline: Option<Instant>,
    /// An access slower than this is a finding.
    pub slow_access: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_ops: 4096,
            deadline: None,
            slow_access: SLOW_ACCESS,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub ops: usize,
    pub dma_transfers: u64,
    pub msis: u64,
    pub slowest: Duration,
}

/// An oracle that failed: which access, what it was, what went wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("access {op} ({access}): {what}")]
pub struct Finding {
    pub op: usize,
    pub access: String,
    pub what: String,
}

/// Draws from an [`Entropy`]; once it is used up every draw is 0 and `done` is set.
struct Draw<'a> {
    src: &'a mut dyn Entropy,
    done: bool,
}

impl Draw<'_> {
    fn bits(&mut self, bytes: usize) -> u64 {
        self.src.take(bytes).unwrap_or_else(|| {
            self.done = true;
            0
        })
    }

    fn below(&mut self, n: u64) -> u64 {
        let bytes = if n <= 0x100 {
            1
        } else if n <= 0x1_0000 {
            2
        } else {
            8
        };
        self.bits(bytes) % n.max(1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A value biased to the edges: 0, all-ones, small, a single bit, or anything.
    fn value(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(0x40),
            3 => 1 << self.below(64),
            _ => self.bits(8),
        }
    }

    fn layout(&mut self) -> VfioLayout {
        let msi = (self.below(4) != 0).then(|| MsiLayout {
            log2_vectors: self.below(6) as u8,
            is_64bit: self.below(2) == 1,
            per_vector_masking: self.below(2) == 1,
        });
        let msix = (self.below(4) != 0).then(|| {
            let n = self.pick(&[1u16, 2, 3, 4, 8, 17, 64]);
            let table = (self.pick(&[0u8, 2]), self.below(8) as u8);
            let mut pba = (self.pick(&[0u8, 2]), self.below(8) as u8);
            if pba == table {
                pba.1 = (pba.1 + 1) % 8;
            }
            MsixLayout {
                vectors: n,
                table,
                pba,
            }
        });
        VfioLayout { msi, msix }
    }
}

/// Access sizes KVM produces for MMIO, and for port I/O without `rep`.
const MMIO_SIZES: [usize; 4] = [1, 2, 4, 8];
const PIO_SIZES: [usize; 3] = [1, 2, 4];
/// Longest `rep ins`/`rep outs` buffer generated.
const MAX_REP_LEN: u64 = 1024;
/// edu registers, for accesses aimed at them.
const EDU_REGS: [u64; 12] = [
    REG_IDENT,
    REG_LIVENESS,
    REG_FACTORIAL,
    REG_STATUS,
    REG_IRQ_STATUS,
    REG_IRQ_RAISE,
    REG_IRQ_ACK,
    REG_DMA_SRC,
    REG_DMA_DST,
    REG_DMA_COUNT,
    REG_DMA_CMD,
    REG_DMA_CMD + 4,
];

/// One guest access.
#[derive(Clone, Debug)]
enum Access {
    Pio {
        addr: u64,
        data: Vec<u8>,
        write: bool,
    },
    Mmio {
        addr: u64,
        data: Vec<u8>,
        write: bool,
    },
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, addr, data, write) = match self {
            Access::Pio { addr, data, write } => ("pio", addr, data, write),
            Access::Mmio { addr, data, write } => ("mmio", addr, data, write),
        };
        let dir = if *write { "write" } else { "read" };
        let shown = &data[..data.len().min(8)];
        write!(f, "{kind} {dir} {addr:#x} len {} {shown:02x?}", data.len())
    }
}

/// A memory BAR's current base, from configuration space (0 if unassigned).
fn bar_base(m: &Machine, device: u8, bar: usize) -> u64 {
    let r = lock(&m.root);
    let low = u64::from(r.config_read(0, device, 0, 4 + bar));
    if low & 0x6 == 0x4 {
        let high = u64::from(r.config_read(0, device, 0, 5 + bar));
        (high << 32) | (low & !0xf)
    } else {
        low & !0xf
    }
}

fn data_for(d: &mut Draw, len: usize) -> Vec<u8> {
    let v = d.value().to_le_bytes();
    (0..len).map(|i| v[i % 8]).collect()
}

/// A configuration write through ECAM.
fn ecam_write(device: u8, offset: u64, data: &[u8]) -> Access {
    let addr = ECAM_START + (u64::from(device) << 15) + offset;
    Access::Mmio {
        addr,
        data: data.to_vec(),
        write: true,
    }
}

/// What edu's driver does to run a transfer: source, destination, count, command.
fn edu_dma_program(d: &mut Draw, m: &Machine) -> Vec<Access> {
    let base = bar_base(m, EDU_SLOT, 0);
    let ram = d.pick(&[
        0,
        0x9_e000,
        0x9_f000,
        0xf_f800,
        0x10_0000,
        0x3f_f800,
        0x0fff_ffff,
    ]);
    let buffer = DMA_BUFFER_ADDR + d.pick(&[0, 0x800, 0xfff, 0x1000]);
    let to_ram = d.below(2) == 0;
    let (src, dst) = if to_ram { (buffer, ram) } else { (ram, buffer) };
    let any = d.value();
    let count = d.pick(&[1u64, 8, 0x800, 0x1000, 0x1001, any]);
    let cmd = DMA_CMD_START | if to_ram { DMA_CMD_TO_RAM } else { 0 } | d.pick(&[0, DMA_CMD_IRQ]);
    [
        (REG_DMA_SRC, src),
        (REG_DMA_DST, dst),
        (REG_DMA_COUNT, count),
        (REG_DMA_CMD, cmd),
    ]
    .into_iter()
    .map(|(reg, v)| Access::Mmio {
        addr: base + reg,
        data: v.to_le_bytes().to_vec(),
        write: true,
    })
    .collect()
}

/// Edu's MSI capability (at 0x40) programmed and enabled.
fn edu_msi_enable(d: &mut Draw) -> Vec<Access> {
    vec![
        ecam_write(EDU_SLOT, 0x44, &0xfee0_0000u32.to_le_bytes()),
        ecam_write(EDU_SLOT, 0x4c, &(0x30 + d.below(0x10) as u16).to_le_bytes()),
        ecam_write(EDU_SLOT, 0x42, &[d.pick(&[0u8, 1])]),
    ]
}

/// Programs an entry of the emulated MSI-X function, sets its control (enable, function mask)
/// and rings its doorbell, as a driver and its device would.
fn msix_program(d: &mut Draw, m: &Machine) -> Vec<Access> {
    let base = bar_base(m, MSIX_SLOT, 0);
    let entry = base + u64::from(MSIX_TABLE) + 16 * d.below(u64::from(MSIX_VECTORS) + 1);
    let control = d.pick(&[0x80u8, 0x80, 0xc0, 0x00]);
    let mmio = |addr: u64, data: Vec<u8>| Access::Mmio {
        addr,
        data,
        write: true,
    };
    vec![
        mmio(entry, 0xfee0_0000u32.to_le_bytes().to_vec()),
        mmio(
            entry + 8,
            (0x40 + d.below(0x10) as u32).to_le_bytes().to_vec(),
        ),
        mmio(entry + 12, (d.below(2) as u32).to_le_bytes().to_vec()),
        ecam_write(MSIX_SLOT, 0x43, &[control]),
        mmio(base + MSIX_DOORBELL, vec![d.below(16) as u8]),
    ]
}

/// The next accesses: a driver-like sequence, or one access aimed at a device's registers,
/// or anywhere.
fn next_accesses(d: &mut Draw, m: &Machine) -> Vec<Access> {
    match d.below(8) {
        0 => {
            let dev = d.pick(&[EDU_SLOT, VFIO_SLOT]);
            let any = d.value() as u16;
            let v: u16 = d.pick(&[0x6, 0x7, 0x406, 0x2, 0, any]);
            vec![ecam_write(dev, 4, &v.to_le_bytes())]
        }
        1 => edu_dma_program(d, m),
        2 if d.below(2) == 0 => msix_program(d, m),
        2 => edu_msi_enable(d),
        _ => vec![next_access(d, m)],
    }
}

/// One access aimed at a device's registers most of the time, anywhere otherwise.
fn next_access(d: &mut Draw, m: &Machine) -> Access {
    let write = d.below(3) != 0;
    match d.below(10) {
        0 | 1 => {
            let base = d.pick(&[
                COM1_PORT,
                FW_CFG_PORT,
                DEBUG_EXIT_PORT,
                ACPI_PM_PORT,
                PCI_CONFIG_PORT,
                0x60,
                0x505,
                PCI_IO.0,
            ]);
            let addr = if d.below(8) == 0 {
                d.below(0x1_0000)
            } else {
                base + d.below(8)
            };
            let len = if d.below(16) == 0 {
                1 + d.below(MAX_REP_LEN) as usize
            } else {
                d.pick(&PIO_SIZES)
            };
            let data = data_for(d, len);
            Access::Pio { addr, data, write }
        }
        2 => {
            // CONFIG_ADDRESS for a device, then a data port access.
            let dev = d.below(4) as u32;
            let value = 0x8000_0000 | (dev << 11) | (d.below(0x100) as u32);
            let value = if d.below(8) == 0 {
                d.bits(4) as u32
            } else {
                value
            };
            let data = value.to_le_bytes().to_vec();
            Access::Pio {
                addr: PCI_CONFIG_PORT,
                data,
                write: true,
            }
        }
        3 => {
            let dev = d.below(4);
            let off = if d.below(4) == 0 {
                d.below(0x1000)
            } else {
                d.below(0x100)
            };
            let addr = ECAM_START + (dev << 15) + off;
            let len = d.pick(&MMIO_SIZES);
            Access::Mmio {
                addr,
                data: data_for(d, len),
                write,
            }
        }
        4 | 5 => {
            let base = bar_base(m, EDU_SLOT, 0);
            let reg = d.pick(&EDU_REGS);
            let len = if reg >= REG_DMA_SRC && d.below(2) == 0 {
                8
            } else {
                4
            };
            let mut data = data_for(d, len);
            if reg == REG_DMA_SRC || reg == REG_DMA_DST {
                let target = d.pick(&[0, 0x9_e000, 0x9_f000, 0xf_f800, 0x10_0000, 0x3f_f800]);
                let v = if d.below(2) == 0 {
                    target
                } else {
                    DMA_BUFFER_ADDR + d.below(0x1100)
                };
                data = v.to_le_bytes()[..len].to_vec();
            }
            Access::Mmio {
                addr: base + reg,
                data,
                write,
            }
        }
        6 | 7 if d.below(4) == 0 => {
            // The emulated MSI-X function: table, PBA, doorbell.
            let base = bar_base(m, MSIX_SLOT, 0);
            let off = d.pick(&[0, u64::from(MSIX_PBA), MSIX_DOORBELL]) + d.below(0x90);
            let len = d.pick(&MMIO_SIZES);
            Access::Mmio {
                addr: base + off,
                data: data_for(d, len),
                write,
            }
        }
        6 | 7 => {
            let bar = d.pick(&[0usize, 2]);
            let base = bar_base(m, VFIO_SLOT, bar);
            let off = (d.below(8) << 12) + d.below(0x400);
            let len = d.pick(&MMIO_SIZES);
            Access::Mmio {
                addr: base + off,
                data: data_for(d, len),
                write,
            }
        }
        8 => {
            // The VFIO function's interrupt capabilities, through ECAM.
            let off = d.pick(&[
                0x04u64, 0x50, 0x52, 0x54, 0x58, 0x5c, 0x60, 0x64, 0x70, 0x72, 0x73,
            ]);
            let addr = ECAM_START + (u64::from(VFIO_SLOT) << 15) + off;
            let len = d.pick(&PIO_SIZES);
            Access::Mmio {
                addr,
                data: data_for(d, len),
                write,
            }
        }
        _ => {
            let addr = match d.below(4) {
                0 => IOAPIC_START + d.below(0x100),
                1 => MMIO32.0 + d.below(MMIO32.1),
                2 => MMIO64.0 + d.below(0x10_0000),
                _ => d.bits(8),
            };
            let len = d.pick(&MMIO_SIZES);
            Access::Mmio {
                addr,
                data: data_for(d, len),
                write,
            }
        }
    }
}

fn perform(m: &Machine, a: &mut Access) {
    match a {
        Access::Pio {
            addr,
            data,
            write: true,
        } => drop(m.pio.write(*addr, data)),
        // Unclaimed reads answer all-ones, as vmm/src/exit.rs answers them.
        Access::Pio {
            addr,
            data,
            write: false,
        } => {
            if !m.pio.read(*addr, data) {
                data.fill(0xff);
            }
        }
        Access::Mmio {
            addr,
            data,
            write: true,
        } => drop(m.mmio.write(*addr, data)),
        Access::Mmio {
            addr,
            data,
            write: false,
        } => {
            if !m.mmio.read(*addr, data) {
                data.fill(0xff);
            }
        }
    }
}

/// Reads `len` configuration bytes at `offset` of `device` through 0xCF8/0xCFC (CONFIG_ADDRESS
/// bits 1:0 and the data port offset both used, as QEMU-era kernels do) and through ECAM.
/// CONFIG_ADDRESS is restored afterwards.
fn config_both_ways(m: &Machine, device: u8, offset: u64, len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut saved = [0u8; 4];
    m.pio.read(PCI_CONFIG_PORT, &mut saved);
    let address = 0x8000_0000 | (u32::from(device) << 11) | (offset as u32 & 0xfe);
    m.pio.write(PCI_CONFIG_PORT, &address.to_le_bytes());
    let mut io = vec![0u8; len];
    m.pio.read(PCI_CONFIG_PORT + 4 + (offset & 1), &mut io);
    m.pio.write(PCI_CONFIG_PORT, &saved);
    let mut ecam = vec![0u8; len];
    m.mmio
        .read(ECAM_START + (u64::from(device) << 15) + offset, &mut ecam);
    (io, ecam)
}

/// The configuration oracle at one drawn place.
fn check_config(d: &mut Draw, m: &Machine) -> Result<(), String> {
    let device = d.below(4) as u8;
    let len = d.pick(&PIO_SIZES);
    // 0xCF8/0xCFC reaches the first 256 bytes only.
    let offset = d.below(0x101 - len as u64);
    let (io, ecam) = config_both_ways(m, device, offset, len);
    if io != ecam {
        return Err(format!(
            "config {device:02x}.0 +{offset:#x} len {len}: 0xCFC reads {io:02x?}, ECAM {ecam:02x?}"
        ));
    }
    Ok(())
}

fn check_dma(m: &Machine) -> Result<(), String> {
    let v = lock(&m.dma.violations);
    match v.first() {
        Some(x) => Err(format!("DMA {} bytes at {:#x}: {}", x.len, x.iova, x.what)),
        None => Ok(()),
    }
}

/// The interrupt oracle: every hypervisor route carries the message of a vector the guest
/// left unmasked in the mode the function is in.
fn check_routes(m: &Machine) -> Result<(), String> {
    let mut dev = lock(&m.vfio);
    let routed: Vec<(u64, u32)> = lock(&m.routes.0)
        .values()
        .map(|r| (r.address, r.data))
        .collect();
    let mode = dev.interrupts().mode();
    let allowed: Vec<(u64, u32)> = match (mode, m.layout.msix) {
        (Mode::Msix, Some(l)) => {
            let (n, (bar, page)) = (l.vectors, l.table);
            let control = dev.read_config_register(0x70 / 4) >> 16;
            if control & (1 << 14) != 0 {
                Vec::new()
            } else {
                (0..u64::from(n))
                    .filter_map(|i| {
                        let mut e = [0u8; 16];
                        let at = (u64::from(page) << 12) + 16 * i;
                        dev.read_bar(usize::from(bar), at, &mut e);
                        let word =
                            |k: usize| u32::from_le_bytes([e[k], e[k + 1], e[k + 2], e[k + 3]]);
                        let address = (u64::from(word(4)) << 32) | u64::from(word(0));
                        (word(12) & 1 == 0).then_some((address, word(8)))
                    })
                    .collect()
            }
        }
        (Mode::Msi, _) => return Ok(()), // MSI's routes are the interrupt tests' business
        _ => Vec::new(),
    };
    match routed.iter().find(|r| !allowed.contains(r)) {
        Some(r) => Err(format!(
            "{mode:?}: hypervisor route {:#x}/{:#x} for no unmasked vector (unmasked: {allowed:x?})",
            r.0, r.1
        )),
        None => Ok(()),
    }
}

/// The emulated function's interrupt oracle: every route it holds carries the message of an
/// entry the guest left unmasked, with MSI-X enabled and the function not masked, as the
/// registers read.
fn check_msix_routes(m: &Machine) -> Result<(), String> {
    let mut dev = lock(&m.msix);
    let routed: Vec<(u64, u32)> = lock(&m.msix_routes.0)
        .values()
        .map(|r| (r.address, r.data))
        .collect();
    let cap = dev.msix.cap().offset();
    let control = dev.read_config_register(cap / 4) >> 16;
    let allowed: Vec<(u64, u32)> = if control & 0xc000 != 0x8000 {
        Vec::new()
    } else {
        (0..u64::from(MSIX_VECTORS))
            .filter_map(|i| {
                let mut e = [0u8; 16];
                for k in 0..4 {
                    let at = u64::from(MSIX_TABLE) + 16 * i + 4 * k;
                    dev.read_bar(0, at, &mut e[4 * k as usize..4 * k as usize + 4]);
                }
                let word = |k: usize| u32::from_le_bytes([e[k], e[k + 1], e[k + 2], e[k + 3]]);
                let address = (u64::from(word(4)) << 32) | u64::from(word(0));
                (word(12) & 1 == 0).then_some((address, word(8)))
            })
            .collect()
    };
    match routed.iter().find(|r| !allowed.contains(r)) {
        Some(r) => Err(format!(
            "emulated MSI-X (control {control:#x}): hypervisor route {:#x}/{:#x} for no unmasked vector (unmasked: {allowed:x?})",
            r.0, r.1
        )),
        None => Ok(()),
    }
}

/// Runs accesses drawn from `src` against a fresh machine until `limits` or the entropy
/// runs out; the first failed oracle ends the run.
pub fn run(src: &mut dyn Entropy, limits: Limits) -> Result<Summary, Finding> {
    let mut d = Draw { src, done: false };
    let layout = d.layout();
    let m = Machine::new(layout).map_err(|e| Finding {
        op: 0,
        access: format!("building the machine with {layout:?}"),
        what: e.to_string(),
    })?;
    let mut s = Summary::default();
    while s.ops < limits.max_ops && limits.deadline.is_none_or(|t| Instant::now() < t) {
        let accesses = next_accesses(&mut d, &m);
        if d.done {
            break;
        }
        for mut a in accesses {
            let start = Instant::now();
            perform(&m, &mut a);
            let took = start.elapsed();
            s.slowest = s.slowest.max(took);
            if took > limits.slow_access {
                let what = format!("took {took:?}");
                return Err(Finding {
                    op: s.ops,
                    access: a.to_string(),
                    what,
                });
            }
            let fail = |what: String| Finding {
                op: s.ops,
                access: a.to_string(),
                what,
            };
            check_dma(&m).map_err(fail)?;
            check_routes(&m).map_err(fail)?;
            check_msix_routes(&m).map_err(fail)?;
            s.ops += 1;
        }
        let fail = |what: String| Finding {
            op: s.ops,
            access: "config check".into(),
            what,
        };
        check_config(&mut d, &m).map_err(fail)?;
    }
    s.dma_transfers = m.dma.transfers.load(Ordering::Relaxed);
    s.msis = m.outbox.msis.load(Ordering::Relaxed);
    Ok(s)
}

/// A run of at most `max_ops` accesses from `seed`.
pub fn run_seed(seed: u64, limits: Limits) -> Result<Summary, Finding> {
    run(&mut SeedEntropy::new(seed), limits)
}

/// A run over fuzzer input: the bytes choose the machine and every access.
pub fn run_bytes(data: &[u8]) -> Result<Summary, Finding> {
    run(&mut ByteEntropy::new(data), Limits::default())
}

#[cfg(test)]
mod tests;
