//! Port-I/O and MMIO dispatch: a map from address ranges to devices that may change while the
//! guest runs. vCPUs share one `Arc<Bus>` per address space; the PCI root moves BAR ranges on
//! it when the guest relocates a BAR, and devices may come and go after start.
//!
//! Locking: the range map sits behind a `RwLock` taken only to look up (read) or to change
//! (write) the map. An access clones the device's `Arc` and releases the read lock before it
//! locks the device, so a device that changes the map while locked (a configuration write
//! that moves a BAR) cannot deadlock against a vCPU waiting for that device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A device on a PIO or MMIO bus. `offset` is relative to the base of the range the device
/// was inserted at; `data.len()` is the access size (1, 2, 4 or 8 bytes).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from changing a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("Range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
    #[error("Range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
}

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// An address space of non-overlapping device ranges, shared by every vCPU and changeable
/// at run time.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
        self.ranges.read().unwrap_or_else(|e| e.into_inner())
    }

    fn map_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Entry>> {
        self.ranges.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `device` at `[base, base + len)`; refused if that overlaps a range on the bus.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let mut map = self.map_mut();
        if let Some((&b, e)) = map.range(..end).next_back() {
            // b < end, and b + e.len cannot wrap (checked when it was inserted).
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        map.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the range that starts at `base` and returns its device. The device is dropped
    /// (by the caller) after the map is unlocked, so its `Drop` may touch the bus.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let removed = self.map_mut().remove(&base);
        removed.map(|e| e.device)
    }

    /// Removes every range (the device manager's teardown: devices that hold the bus, as the
    /// PCI root does through its configuration mechanisms, would otherwise keep it alive).
    pub fn clear(&self) {
        let removed = std::mem::take(&mut *self.map_mut());
        drop(removed);
    }

    /// Every range on the bus, as (base, length), lowest first (the monitor's address map).
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.map().iter().map(|(b, e)| (*b, e.len)).collect()
    }

    /// The device claiming `addr` and the offset into its range, with the map unlocked again.
    fn find(&self, addr: u64) -> Option<(u64, SharedDevice)> {
        let map = self.map();
        let (&base, entry) = map.range(..=addr).next_back()?;
        (addr - base < entry.len).then(|| (addr - base, entry.device.clone()))
    }

    /// Dispatches a read; returns false (and leaves `data` alone) if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(&dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(&dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from poisoning: a panic in one vCPU thread must not wedge the
/// others, and device state stays self-consistent between register accesses.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
