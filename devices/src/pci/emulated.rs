//! MSI-X for an emulated function (what virtio-pci needs: a vector per queue plus one for
//! configuration changes): the capability, table and PBA ([`MsixCap`]) with a [`VectorGroup`]
//! behind them, kept in step on every guest access. The device appends it to its
//! configuration space with [`EmulatedMsix::add_to`], passes configuration and BAR accesses
//! through it, and raises vector `i` with `lock(&vectors).trigger(i)` from any thread.
//!
//! While MSI-X is disabled no vector may be sent (6.8.2.3): the group holds them as masked.

use std::sync::{Arc, Mutex};

use super::configuration::{ConfigError, PciConfiguration};
use super::msix::{MsixCap, CAP_LEN};
use super::regs::CAP_ID_MSIX;
use super::vectors::{VectorGroup, VectorWiring};
use crate::bus::lock;
use crate::interrupt::InterruptRoutes;

/// A vector group several threads raise vectors on (queue workers) while the device model
/// programs it.
pub type SharedVectors = Arc<Mutex<VectorGroup>>;

/// Why MSI-X could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EmulatedMsixError {
    #[error("MSI-X capability: {0}")]
    Config(#[from] ConfigError),
    #[error("MSI-X: no eventfds left for {0} vectors")]
    Eventfds(u16),
}

/// An emulated function's MSI-X capability and vectors.
pub struct EmulatedMsix {
    cap: MsixCap,
    vectors: SharedVectors,
}

impl EmulatedMsix {
    /// `vectors` entries (1..=2048) with the table at `table` = (BAR, offset) and the PBA at
    /// `pba`, appended to `config` (which reserves and links the capability's bytes). The
    /// device signals the vectors itself: `wiring.watcher` should be None.
    pub fn add_to(
        config: &mut PciConfiguration,
        vectors: u16,
        table: (usize, u32),
        pba: (usize, u32),
        wiring: VectorWiring,
    ) -> Result<Self, EmulatedMsixError> {
        let offset = config.add_capability(CAP_ID_MSIX, &[0; CAP_LEN - 2], &[])?;
        let cap = MsixCap::emulated(offset, vectors, table, pba);
        let group = VectorGroup::with_eventfds(wiring, cap.vectors())
            .ok_or(EmulatedMsixError::Eventfds(vectors))?;
        Ok(EmulatedMsix {
            cap,
            vectors: Arc::new(Mutex::new(group)),
        })
    }

    pub fn cap(&self) -> &MsixCap {
        &self.cap
    }

    /// The vectors, for whoever raises them.
    pub fn vectors(&self) -> SharedVectors {
        self.vectors.clone()
    }

    /// For the IOMMU, which refreshes the routes after interrupt entry invalidations.
    pub fn routes(&self) -> Arc<dyn InterruptRoutes> {
        self.vectors.clone()
    }

    /// Configuration dword `reg_idx` as the guest reads it, given `config`'s value of it.
    pub fn read_config_register(&self, reg_idx: usize, value: u32) -> u32 {
        let mut b = value.to_le_bytes();
        for (i, byte) in b.iter_mut().enumerate() {
            let off = reg_idx * 4 + i;
            if self.cap.contains(off) {
                *byte = self.cap.read_config_byte(off, *byte);
            }
        }
        u32::from_le_bytes(b)
    }

    /// A guest configuration write (the same one the device gives its `PciConfiguration`,
    /// where the capability's bytes are read-only).
    pub fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        if offset as usize + data.len() > 4 {
            return;
        }
        let mut changed = false;
        for (i, v) in data.iter().enumerate() {
            let off = reg_idx * 4 + offset as usize + i;
            if self.cap.contains(off) {
                changed |= self.cap.write_config_byte(off, *v).control;
            }
        }
        if changed {
            let mut g = lock(&self.vectors);
            for i in 0..self.cap.vectors() {
                self.sync(&mut g, i);
            }
        }
    }

    fn sync(&self, g: &mut VectorGroup, i: usize) {
        let masked = !self.cap.enabled() || self.cap.masked(i);
        g.update(i, self.cap.message(i), masked);
    }

    /// A BAR read; returns false when it is not the table's or the PBA's.
    pub fn read_bar(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        let g = lock(&self.vectors);
        self.cap.read_bar(bar, offset, data, |i| g.pending(i))
    }

    /// A BAR write; returns false when it is not the table's or the PBA's (read-only).
    pub fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) -> bool {
        let Some(change) = self.cap.write_bar(bar, offset, data) else {
            return false;
        };
        if let Some(i) = change.entry {
            let mut g = lock(&self.vectors);
            self.sync(&mut g, i);
        }
        true
    }
}

#[cfg(test)]
mod tests;
