//! The root bus: configuration cycles from the 0xCF8/0xCFC mechanism (PCI local bus spec
//! 3.2.2.3.2) and from ECAM (PCIe base spec 7.2.2), BAR decoding (each enabled BAR its own
//! range on the MMIO or port bus, see [`bars`]), devices added and removed at run time,
//! firmware-style resource assignment and INTx routing.

mod bars;

use std::sync::{Arc, Mutex};

use iommu::Bdf;

use super::configuration::{
    BarKind, COMMAND_IO, COMMAND_MEMORY, NUM_BARS, REG_BAR0, REG_COMMAND_STATUS, REG_INTERRUPT,
};
use super::PciDevice;
use crate::bus::{lock, BusDevice};
use bars::{Decode, Mapped};
pub use bars::{IoEventRegistrar, NoIoEvents, PciBuses};

/// Devices on the root bus.
pub const NUM_DEVICES: usize = 32;
/// CONFIG_ADDRESS enable bit (bit 31).
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS bits 7:0: the configuration-space byte. The spec reserves bits 1:0; QEMU ORs
/// them with the data port offset (pci_host_data_read/write), and test kernels rely on it.
const CONFIG_ADDRESS_OFFSET_MASK: u32 = 0xff;
/// Configuration space the 0xCF8/0xCFC mechanism reaches (PCI local bus spec 6.1: 256 bytes).
const CONFIG_IO_SPACE_SIZE: usize = 0x100;
/// Configuration space of a function through ECAM (PCIe base spec 7.2.2: 4 KiB).
const ECAM_SPACE_SIZE: usize = 0x1000;
/// ECAM: function config space is 4 KiB; bus number at bits 27:20.
const ECAM_FUNCTION_SHIFT: u64 = 12;
const ECAM_DEVICE_SHIFT: u64 = 15;
const ECAM_BUS_SHIFT: u64 = 20;
/// First IOAPIC pin used for PCI INTx and the number of such pins.
const INTX_FIRST_GSI: u32 = 16;
const INTX_GSIS: u32 = 8;

/// The IOAPIC GSI of INTx `pin` (1 = INTA .. 4 = INTD) of `device`: the same swizzle the
/// DSDT's _PRT lists.
pub fn intx_gsi(device: u8, pin: u8) -> u32 {
    INTX_FIRST_GSI + (u32::from(device) + u32::from(pin.max(1)) - 1) % INTX_GSIS
}

/// One _PRT route: `pin` is 0-based (0 = INTA) as ACPI wants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrtRoute {
    pub device: u8,
    pub pin: u8,
    pub gsi: u32,
}

struct Slot {
    dev: Arc<Mutex<dyn PciDevice>>,
    bar_sizes: [Option<(u64, BarKind)>; NUM_BARS],
    /// Where each BAR should decode, from its registers and the command register.
    wanted: [Option<Decode>; NUM_BARS],
    /// Where each BAR is on a bus now: as `wanted` unless its range overlapped another.
    mapped: [Option<Mapped>; NUM_BARS],
}

/// The root bus with its devices. BARs decode on the buses in `buses`; configuration
/// cycles come through [`PciConfigIo`] and [`PciConfigMmio`].
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    buses: PciBuses,
}

/// Why a device could not be added or removed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("No free device number on bus 0")]
    BusFull,
    #[error("Device number {0} is taken or out of range")]
    SlotTaken(u8),
    #[error("No device at device number {0}")]
    NoDevice(u8),
    #[error("No room for BAR {bar} of {device} ({size:#x} bytes) in the {window} window")]
    NoSpace {
        device: Bdf,
        bar: usize,
        size: u64,
        window: &'static str,
    },
}

/// Where BARs may go.
#[derive(Clone, Copy, Debug)]
pub struct Windows {
    pub io: (u64, u64),
    pub mmio32: (u64, u64),
    pub mmio64: (u64, u64),
}

fn probe_bars(dev: &mut dyn PciDevice) -> [Option<(u64, BarKind)>; NUM_BARS] {
    let mut out = [None; NUM_BARS];
    let mut i = 0;
    while i < NUM_BARS {
        let reg = REG_BAR0 + i;
        let orig = dev.read_config_register(reg);
        dev.write_config_register(reg, 0, &u32::MAX.to_le_bytes());
        let low = dev.read_config_register(reg);
        dev.write_config_register(reg, 0, &orig.to_le_bytes());
        if low == 0 {
            i += 1;
            continue;
        }
        if low & 1 == 1 {
            let size = u64::from(!(low & !0x3)).wrapping_add(1) & 0xffff_ffff;
            out[i] = Some((size, BarKind::Io));
            i += 1;
        } else if low & 0x6 == 0x4 && i + 1 < NUM_BARS {
            let hreg = reg + 1;
            let horig = dev.read_config_register(hreg);
            dev.write_config_register(hreg, 0, &u32::MAX.to_le_bytes());
            let high = dev.read_config_register(hreg);
            dev.write_config_register(hreg, 0, &horig.to_le_bytes());
            let mask = (u64::from(high) << 32) | u64::from(low & !0xf);
            out[i] = Some((
                (!mask).wrapping_add(1),
                BarKind::Mem64 {
                    prefetchable: low & 0x8 != 0,
                },
            ));
            i += 2;
        } else {
            let size = u64::from(!(low & !0xf)).wrapping_add(1) & 0xffff_ffff;
            out[i] = Some((size, BarKind::Mem32));
            i += 1;
        }
    }
    out
}

/// Where each BAR of `dev` (`function`) should decode, from its BAR and command registers.
/// An enabled BAR outside the windows does not decode (the host bridge does not forward
/// it), with a warning when `warn`.
fn decoding(
    function: Bdf,
    dev: &mut dyn PciDevice,
    bar_sizes: &[Option<(u64, BarKind)>; NUM_BARS],
    windows: &Windows,
    warn: bool,
) -> [Option<Decode>; NUM_BARS] {
    let command = dev.read_config_register(REG_COMMAND_STATUS) as u16;
    let mut out = [None; NUM_BARS];
    for (bar, spec) in bar_sizes.iter().enumerate() {
        let Some((size, kind)) = *spec else { continue };
        let low = u64::from(dev.read_config_register(REG_BAR0 + bar));
        let (base, enabled) = match kind {
            BarKind::Io => (low & !0x3, command & COMMAND_IO != 0),
            BarKind::Mem32 => (low & !0xf, command & COMMAND_MEMORY != 0),
            BarKind::Mem64 { .. } => {
                let high = u64::from(dev.read_config_register(REG_BAR0 + bar + 1));
                ((high << 32) | (low & !0xf), command & COMMAND_MEMORY != 0)
            }
        };
        out[bar] = Decode::new(kind, base, size, enabled, windows);
        // A BAR being sized (all-ones) is not a placement.
        let sizing = base | (size - 1) == u64::MAX || base | (size - 1) == u64::from(u32::MAX);
        if warn && out[bar].is_none() && enabled && base != 0 && !sizing {
            iommu::warn_limited!(
                "PCI {function} BAR {bar} at {base:#x} ({size:#x} bytes) is outside the host \
                 bridge's windows: not decoded"
            );
        }
    }
    out
}

/// Tells `dev` where each of its memory BARs decodes now, where that changed from `old`
/// (I/O BARs are not reported: nothing maps them).
fn moved(dev: &mut dyn PciDevice, slot: &Slot, old: &[Option<u64>; NUM_BARS]) {
    for (bar, (m, was)) in slot.mapped.iter().zip(old).enumerate() {
        let now = m.as_ref().map(|m| m.at.base);
        let memory = matches!(slot.bar_sizes[bar], Some((_, kind)) if kind != BarKind::Io);
        if memory && now != *was {
            dev.bar_moved(bar, now);
        }
    }
}

impl PciRoot {
    pub fn new(buses: PciBuses) -> Self {
        PciRoot {
            slots: (0..NUM_DEVICES).map(|_| None).collect(),
            buses,
        }
    }

    /// Adds a device at `device` (or the first free number) and returns its address. Its BAR
    /// sizes are probed as firmware does (all-ones writes). Before or after the guest runs:
    /// its BARs decode once they are assigned and enabled (by the guest or
    /// [`Self::assign_resources`]).
    pub fn add_device(
        &mut self,
        dev: Arc<Mutex<dyn PciDevice>>,
        device: Option<u8>,
    ) -> Result<Bdf, PciError> {
        let n = match device {
            Some(d) if (d as usize) < NUM_DEVICES && self.slots[d as usize].is_none() => d as usize,
            Some(d) => return Err(PciError::SlotTaken(d)),
            None => self
                .slots
                .iter()
                .position(Option::is_none)
                .ok_or(PciError::BusFull)?,
        };
        let bar_sizes = probe_bars(&mut *lock(&dev));
        self.slots[n] = Some(Slot {
            dev,
            bar_sizes,
            wanted: [None; NUM_BARS],
            mapped: Default::default(),
        });
        // A device whose BARs were set up before it arrived decodes at once.
        self.refresh(n, false);
        Ok(Bdf::new(0, n as u8, 0))
    }

    /// Removes the device at `device`: its BARs leave the buses (their ioeventfds are
    /// unregistered, memory BARs hear `bar_moved(None)`) and the number is free again.
    /// Returns the device.
    pub fn remove_device(&mut self, device: u8) -> Result<Arc<Mutex<dyn PciDevice>>, PciError> {
        let slot = self
            .slots
            .get_mut(device as usize)
            .and_then(Option::take)
            .ok_or(PciError::NoDevice(device))?;
        let mut dev = lock(&slot.dev);
        for (bar, mapped) in slot.mapped.into_iter().enumerate() {
            let Some(m) = mapped else { continue };
            let io = m.at.io;
            self.buses.unmap(m);
            if !io {
                dev.bar_moved(bar, None);
            }
        }
        drop(dev);
        self.retry_undecoded();
        Ok(slot.dev)
    }

    fn slot(&self, bus: u8, device: u8, function: u8) -> Option<&Slot> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(device as usize)?.as_ref()
    }

    /// A configuration read; absent functions read all-ones.
    pub fn config_read(&self, bus: u8, device: u8, function: u8, reg: usize) -> u32 {
        match self.slot(bus, device, function) {
            Some(s) => lock(&s.dev).read_config_register(reg),
            None => 0xffff_ffff,
        }
    }

    /// Reads configuration bytes of `function` from byte `offset` on, across dword boundaries
    /// as QEMU's hosts forward them; bytes at or past `limit` read all-ones.
    fn config_read_bytes(&self, function: Bdf, offset: usize, limit: usize, data: &mut [u8]) {
        let (b, d, f) = (function.bus(), function.device(), function.function());
        let mut cached: Option<(usize, [u8; 4])> = None;
        for (i, out) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i);
            if at >= limit {
                *out = 0xff;
                continue;
            }
            let reg = at / 4;
            let bytes = match cached {
                Some((r, v)) if r == reg => v,
                _ => {
                    let v = self.config_read(b, d, f, reg).to_le_bytes();
                    cached = Some((reg, v));
                    v
                }
            };
            *out = bytes[at % 4];
        }
    }

    /// Writes configuration bytes of `function` from byte `offset` on, split at dword
    /// boundaries; bytes at or past `limit` are dropped.
    fn config_write_bytes(&mut self, function: Bdf, offset: usize, limit: usize, data: &[u8]) {
        let (b, d, f) = (function.bus(), function.device(), function.function());
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() && at < limit {
            let in_reg = at % 4;
            let n = rest.len().min(4 - in_reg).min(limit - at);
            self.config_write(b, d, f, at / 4, in_reg as u64, &rest[..n]);
            rest = &rest[n..];
            at += n;
        }
    }

    /// A configuration write; absent functions drop it. BAR and command writes move the
    /// function's BAR ranges on the buses.
    pub fn config_write(
        &mut self,
        bus: u8,
        device: u8,
        function: u8,
        reg: usize,
        offset: u64,
        data: &[u8],
    ) {
        let Some(s) = self.slot(bus, device, function) else {
            return;
        };
        lock(&s.dev).write_config_register(reg, offset, data);
        if reg == REG_COMMAND_STATUS || (REG_BAR0..REG_BAR0 + NUM_BARS).contains(&reg) {
            self.refresh(device as usize, true);
        }
    }

    /// Recomputes where the BARs of device `n` decode from its registers, and moves their
    /// bus ranges (and ioeventfds) to match. A BAR whose range would overlap another stays
    /// off the bus until the guest moves it or the other range goes away.
    /// `guest`: the guest wrote a BAR or the command register (a BAR it enabled outside the
    /// windows is worth a warning; the state a device arrives in is not).
    fn refresh(&mut self, n: usize, guest: bool) {
        let buses = &self.buses;
        let Some(Some(slot)) = self.slots.get_mut(n) else {
            return;
        };
        let function = Bdf::new(0, n as u8, 0);
        let mut dev = lock(&slot.dev);
        let old = slot
            .mapped
            .each_ref()
            .map(|m| m.as_ref().map(|m| m.at.base));
        let wanted = decoding(function, &mut *dev, &slot.bar_sizes, &buses.windows, guest);
        let mut freed = false;
        // Everything that moved leaves first, so BARs of this device may trade places.
        for (mapped, want) in slot.mapped.iter_mut().zip(wanted) {
            if mapped.as_ref().is_some_and(|m| Some(m.at) != want) {
                if let Some(m) = mapped.take() {
                    buses.unmap(m);
                    freed = true;
                }
            }
        }
        for (bar, want) in wanted.into_iter().enumerate() {
            let Some(at) = want else { continue };
            if slot.mapped[bar].is_some() {
                continue;
            }
            match buses.map(&slot.dev, &*dev, bar, at) {
                Ok(m) => slot.mapped[bar] = Some(m),
                Err(e) => bars::warn_undecoded(function, bar, at, &e),
            }
        }
        slot.wanted = wanted;
        moved(&mut *dev, slot, &old);
        drop(dev);
        if freed {
            self.retry_undecoded();
        }
    }

    /// Puts on the buses every BAR that should decode but overlapped a range that may since
    /// have gone.
    fn retry_undecoded(&mut self) {
        let buses = &self.buses;
        for slot in self.slots.iter_mut().flatten() {
            let pending = |bar: usize| slot.wanted[bar].is_some() && slot.mapped[bar].is_none();
            if !(0..NUM_BARS).any(pending) {
                continue;
            }
            let mut dev = lock(&slot.dev);
            let old = slot
                .mapped
                .each_ref()
                .map(|m| m.as_ref().map(|m| m.at.base));
            for (bar, (mapped, want)) in slot.mapped.iter_mut().zip(slot.wanted).enumerate() {
                if let (None, Some(at)) = (&mapped, want) {
                    *mapped = buses.map(&slot.dev, &*dev, bar, at).ok();
                }
            }
            moved(&mut *dev, slot, &old);
        }
    }

    /// Assigns every BAR an address in the windows (naturally aligned, 64-bit prefetchable
    /// BARs above 4 GiB), enables decoding (not bus mastering), and fills Interrupt Line with
    /// the INTx GSI: what firmware does before booting an OS that does not enumerate PCI.
    pub fn assign_resources(&mut self) -> Result<(), PciError> {
        let windows = self.buses.windows;
        let mut next = [windows.io.0, windows.mmio32.0, windows.mmio64.0];
        let ends = [
            windows.io.0 + windows.io.1,
            windows.mmio32.0 + windows.mmio32.1,
            windows.mmio64.0 + windows.mmio64.1,
        ];
        for n in 0..NUM_DEVICES {
            let Some(slot) = &self.slots[n] else { continue };
            let mut bars: Vec<(usize, u64, BarKind)> = slot
                .bar_sizes
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|(size, kind)| (i, size, kind)))
                .collect();
            // Largest first keeps natural alignment cheap.
            bars.sort_by_key(|b| std::cmp::Reverse(b.1));
            let mut dev = lock(&slot.dev);
            // Decoding only: bus mastering is the driver's to enable (as firmware leaves it),
            // so no device DMAs before its driver asks.
            let mut command = 0;
            for (bar, size, kind) in bars {
                let (w, name) = match kind {
                    BarKind::Io => (0, "I/O"),
                    BarKind::Mem32 => (1, "32-bit MMIO"),
                    BarKind::Mem64 { prefetchable: true } => (2, "64-bit MMIO"),
                    BarKind::Mem64 {
                        prefetchable: false,
                    } => (1, "32-bit MMIO"),
                };
                let base = next[w].next_multiple_of(size.max(1));
                if base.checked_add(size).is_none_or(|end| end > ends[w]) {
                    return Err(PciError::NoSpace {
                        device: Bdf::new(0, n as u8, 0),
                        bar,
                        size,
                        window: name,
                    });
                }
                next[w] = base + size;
                dev.write_config_register(REG_BAR0 + bar, 0, &(base as u32).to_le_bytes());
                if matches!(kind, BarKind::Mem64 { .. }) {
                    dev.write_config_register(
                        REG_BAR0 + bar + 1,
                        0,
                        &((base >> 32) as u32).to_le_bytes(),
                    );
                }
                command |= if kind == BarKind::Io {
                    COMMAND_IO
                } else {
                    COMMAND_MEMORY
                };
            }
            let old = dev.read_config_register(REG_COMMAND_STATUS) as u16;
            dev.write_config_register(REG_COMMAND_STATUS, 0, &(old | command).to_le_bytes());
            let pin = (dev.read_config_register(REG_INTERRUPT) >> 8) as u8;
            if pin != 0 {
                dev.write_config_register(REG_INTERRUPT, 0, &[intx_gsi(n as u8, pin) as u8]);
            }
            drop(dev);
            self.refresh(n, false);
        }
        Ok(())
    }

    /// INTx routes of every populated device, for the DSDT's _PRT (all four pins, as a
    /// firmware would list them).
    pub fn prt_routes(&self) -> Vec<PrtRoute> {
        (0..NUM_DEVICES as u8)
            .filter(|&d| d != 0 && self.slots[d as usize].is_some())
            .flat_map(|d| {
                (1..=4u8).map(move |pin| PrtRoute {
                    device: d,
                    pin: pin - 1,
                    gsi: intx_gsi(d, pin),
                })
            })
            .collect()
    }
}

/// The 0xCF8/0xCFC configuration mechanism (8 ports at 0xCF8).
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
    /// A byte register at 0xCF9, inside CONFIG_ADDRESS (which takes only dword accesses):
    /// the ICH9's RST_CNT (ICH9 datasheet 13.7.5).
    byte_at_cf9: Option<crate::bus::SharedDevice>,
}

impl PciConfigIo {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigIo {
            root,
            address: 0,
            byte_at_cf9: None,
        }
    }

    /// The same with `dev` taking byte accesses at 0xCF9.
    pub fn with_cf9(root: Arc<Mutex<PciRoot>>, dev: crate::bus::SharedDevice) -> Self {
        PciConfigIo {
            root,
            address: 0,
            byte_at_cf9: Some(dev),
        }
    }

    /// The function and configuration byte a data port access at `port` (0..=3 from 0xCFC)
    /// reaches, if CONFIG_ADDRESS is enabled: CONFIG_ADDRESS bits 7:0 ORed with the port
    /// offset, as QEMU forms it.
    fn target(&self, port: u64) -> Option<(Bdf, usize)> {
        let a = self.address;
        let offset = (a | (port as u32 & 3)) & CONFIG_ADDRESS_OFFSET_MASK;
        (a & CONFIG_ADDRESS_ENABLE != 0).then_some((
            Bdf::new((a >> 16) as u8, (a >> 11) as u8, (a >> 8) as u8),
            offset as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            1 if data.len() == 1 => {
                if let Some(d) = &self.byte_at_cf9 {
                    lock(d).read(0, data);
                }
            }
            4..=7 => {
                let Some((function, at)) = self.target(offset - 4) else {
                    return;
                };
                lock(&self.root).config_read_bytes(function, at, CONFIG_IO_SPACE_SIZE, data);
            }
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            // Kept whole, as QEMU keeps it (bits 1:0 included).
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]])
            }
            1 if data.len() == 1 => {
                if let Some(d) = &self.byte_at_cf9 {
                    lock(d).write(0, data);
                }
            }
            4..=7 => {
                let Some((function, at)) = self.target(offset - 4) else {
                    return;
                };
                lock(&self.root).config_write_bytes(function, at, CONFIG_IO_SPACE_SIZE, data);
            }
            _ => {}
        }
    }
}

/// ECAM: memory-mapped configuration space, 4 KiB per function.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigMmio { root }
    }

    /// The function and configuration byte an ECAM offset addresses.
    fn decode(offset: u64) -> (Bdf, usize) {
        (
            Bdf::new(
                (offset >> ECAM_BUS_SHIFT) as u8,
                (offset >> ECAM_DEVICE_SHIFT) as u8,
                (offset >> ECAM_FUNCTION_SHIFT) as u8,
            ),
            (offset as usize) & (ECAM_SPACE_SIZE - 1),
        )
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (function, at) = Self::decode(offset);
        lock(&self.root).config_read_bytes(function, at, ECAM_SPACE_SIZE, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (function, at) = Self::decode(offset);
        lock(&self.root).config_write_bytes(function, at, ECAM_SPACE_SIZE, data);
    }
}

#[cfg(test)]
mod tests;
