//! Decoded BARs on the port-I/O and MMIO buses: each BAR the guest enables is its own range,
//! dispatched straight to its device (no root-bus lock on the data path), and the device's
//! ioeventfds in that BAR follow it. `PciRoot::refresh` decides where a BAR decodes; this
//! module puts it there and takes it away.

use std::sync::{Arc, Mutex};

use iommu::Bdf;
use vmm_sys_util::eventfd::EventFd;

use super::Windows;
use crate::bus::{lock, Bus, BusDevice, BusError};
use crate::pci::configuration::BarKind;
use crate::pci::PciDevice;

/// Registers write-notification eventfds with the hypervisor (KVM ioeventfds): a guest write
/// to `addr` signals `fd` instead of exiting. `io` selects port I/O or MMIO.
pub trait IoEventRegistrar: Send + Sync {
    fn register(&self, io: bool, addr: u64, fd: &EventFd) -> std::io::Result<()>;
    fn unregister(&self, io: bool, addr: u64, fd: &EventFd) -> std::io::Result<()>;
}

/// For a root bus whose devices have no ioeventfds (tests, the fuzzer): accepts and forgets.
pub struct NoIoEvents;

impl IoEventRegistrar for NoIoEvents {
    fn register(&self, _io: bool, _addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        Ok(())
    }
    fn unregister(&self, _io: bool, _addr: u64, _fd: &EventFd) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the root bus changes when the guest moves BARs: the two buses BARs decode on, the
/// windows the host bridge forwards, and the hypervisor's ioeventfds.
#[derive(Clone)]
pub struct PciBuses {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub windows: Windows,
    pub ioevents: Arc<dyn IoEventRegistrar>,
}

/// One BAR of one device as a bus device: offsets are within the BAR.
struct PciBar {
    dev: Arc<Mutex<dyn PciDevice>>,
    bar: usize,
}

impl BusDevice for PciBar {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.dev).read_bar(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.dev).write_bar(self.bar, offset, data);
    }
}

/// A BAR the root bus wants decoded: where, how big, which bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Decode {
    pub base: u64,
    pub size: u64,
    pub io: bool,
}

impl Decode {
    /// Where BAR `kind` of `size` bytes at `base` decodes, if decoding of its kind is on, it
    /// is assigned, and it lies wholly inside a window the host bridge forwards.
    pub fn new(
        kind: BarKind,
        base: u64,
        size: u64,
        enabled: bool,
        windows: &Windows,
    ) -> Option<Decode> {
        let io = kind == BarKind::Io;
        let inside = |(start, len): (u64, u64)| {
            base >= start
                && base
                    .checked_add(size)
                    .is_some_and(|e| e <= start.saturating_add(len))
        };
        let fits = if io {
            inside(windows.io)
        } else {
            inside(windows.mmio32) || inside(windows.mmio64)
        };
        (enabled && base != 0 && fits).then_some(Decode { base, size, io })
    }
}

/// A BAR on a bus, with the ioeventfds registered in it (absolute address, fd).
pub(super) struct Mapped {
    pub at: Decode,
    events: Vec<(u64, EventFd)>,
}

impl PciBuses {
    fn bus(&self, io: bool) -> &Bus {
        if io {
            &self.pio
        } else {
            &self.mmio
        }
    }

    /// Puts BAR `bar` of `dev` (locked by the caller as `locked`) on its bus at `at` and
    /// registers its ioeventfds there. Fails, leaving nothing behind, if the range overlaps
    /// another.
    pub(super) fn map(
        &self,
        dev: &Arc<Mutex<dyn PciDevice>>,
        locked: &dyn PciDevice,
        bar: usize,
        at: Decode,
    ) -> Result<Mapped, BusError> {
        let range = Arc::new(Mutex::new(PciBar {
            dev: dev.clone(),
            bar,
        }));
        self.bus(at.io).insert(at.base, at.size, range)?;
        let mut events = Vec::new();
        for (offset, fd) in locked.ioeventfds(bar) {
            let Some(addr) = at.base.checked_add(offset).filter(|_| offset < at.size) else {
                iommu::warn_limited!(
                    "PCI BAR {bar}: ioeventfd at offset {offset:#x} is outside the BAR \
                     ({:#x} bytes); not registered",
                    at.size
                );
                continue;
            };
            match self.ioevents.register(at.io, addr, &fd) {
                Ok(()) => events.push((addr, fd)),
                Err(e) => iommu::warn_limited!(
                    "PCI BAR {bar}: cannot register an ioeventfd at {addr:#x}: {e}"
                ),
            }
        }
        Ok(Mapped { at, events })
    }

    /// Takes a mapped BAR off its bus and unregisters its ioeventfds.
    pub(super) fn unmap(&self, m: Mapped) {
        for (addr, fd) in &m.events {
            if let Err(e) = self.ioevents.unregister(m.at.io, *addr, fd) {
                iommu::warn_limited!("PCI: cannot unregister the ioeventfd at {addr:#x}: {e}");
            }
        }
        // Dropped here, after the bus map is unlocked.
        let _range = self.bus(m.at.io).remove(m.at.base);
    }
}

/// Logs a BAR the guest enabled that does not decode.
pub(super) fn warn_undecoded(function: Bdf, bar: usize, at: Decode, why: &BusError) {
    iommu::warn_limited!(
        "PCI {function} BAR {bar} at {:#x} ({:#x} bytes) does not decode: {why}",
        at.base,
        at.size
    );
}
