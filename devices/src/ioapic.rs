//! A userspace I/O APIC (Intel 82093AA datasheet) for KVM's split irqchip: 24 pins, edge and
//! level triggering with Remote IRR and EOI, delivery as MSI writes.
//!
//! The MSI is composed from the raw redirection entry so that both RTE formats come out right:
//! address bits 19:4 = RTE bits 63:48 and address bit 2 = RTE bit 11. In the compatibility
//! format that puts the destination ID (RTE 63:56) at address 19:12 and the destination mode
//! at bit 2 (Intel SDM vol. 3 section 11.11.1); in the VT-d remappable format (VT-d spec
//! 5.1.5.1: RTE 48 = format, 63:49 = index[14:0], 11 = index[15]) it yields the remappable MSI
//! address (bit 4 = format, 19:5 = index[14:0], bit 2 = index[15]).

use std::sync::{Arc, Mutex};

use iommu::Bdf;

use crate::bus::{lock, BusDevice};
use crate::interrupt::{IrqLine, MsiMessage, MsiTrigger, Resample};

/// Number of redirection entries (pins).
pub const NUM_PINS: usize = 24;
/// MMIO: I/O register select (datasheet 3.1.1).
pub const IOREGSEL: u64 = 0x00;
/// MMIO: I/O window (datasheet 3.1.2).
pub const IOWIN: u64 = 0x10;
/// MMIO: EOI register of version 0x20 IOAPICs.
pub const IOEOI: u64 = 0x40;
/// Indirect registers: ID, version, arbitration ID, first redirection entry.
pub const IOAPICID: u32 = 0x00;
pub const IOAPICVER: u32 = 0x01;
pub const IOAPICARB: u32 = 0x02;
pub const IOREDTBL_BASE: u32 = 0x10;
/// Version 0x20 with 24 entries (max redirection entry 23 in bits 23:16).
pub const VERSION_VALUE: u32 = 0x0017_0020;
/// RTE fields (datasheet 3.2.4).
const RTE_VECTOR_MASK: u64 = 0xff;
const RTE_DELIVERY_MODE_SHIFT: u64 = 8;
const RTE_DELIVERY_MODE_MASK: u64 = 0x7;
const RTE_DEST_MODE: u64 = 1 << 11;
const RTE_DELIVERY_STATUS: u64 = 1 << 12;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_TRIGGER_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
/// Read-only RTE bits, preserved on writes.
const RTE_READ_ONLY: u64 = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR;
/// The ID register's ID field (bits 27:24).
const ID_MASK: u32 = 0x0f00_0000;
/// MSI address base and data fields (SDM vol. 3 section 11.11).
const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;
const MSI_DATA_LEVEL_ASSERT: u32 = 1 << 14;
const MSI_DATA_TRIGGER_LEVEL: u32 = 1 << 15;

/// The 82093AA register model.
pub struct Ioapic {
    id: u32,
    ioregsel: u32,
    rte: [u64; NUM_PINS],
    line: [bool; NUM_PINS],
    source: Bdf,
    msi: Arc<dyn MsiTrigger>,
    /// Pins whose source wants to hear of EOIs (passed-through INTx).
    resample: [Option<Arc<dyn Resample>>; NUM_PINS],
}

impl Ioapic {
    /// An IOAPIC with the given APIC ID whose MSIs carry requester id `source` (the id the
    /// DMAR device scope gives it). All pins start masked.
    pub fn new(id: u8, source: Bdf, msi: Arc<dyn MsiTrigger>) -> Self {
        Ioapic {
            id: u32::from(id & 0xf) << 24,
            ioregsel: 0,
            rte: [RTE_MASKED; NUM_PINS],
            line: [false; NUM_PINS],
            source,
            msi,
            resample: std::array::from_fn(|_| None),
        }
    }

    /// Makes `pin` resampled: when the guest EOIs its level-triggered interrupt the line is
    /// lowered and `r` is told, so the source can assert it again if it still needs service.
    /// Returns false for a pin that does not exist.
    pub fn set_resample(&mut self, pin: usize, r: Option<Arc<dyn Resample>>) -> bool {
        match self.resample.get_mut(pin) {
            Some(slot) => {
                *slot = r;
                true
            }
            None => false,
        }
    }

    /// The raw redirection entry of `pin`.
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.rte.get(pin).copied()
    }

    /// The message `entry` sends (see the module documentation).
    pub fn msi_for(&self, entry: u64) -> MsiMessage {
        let address = MSI_ADDRESS_BASE
            | (((entry >> 48) & 0xffff) << 4)
            | (u64::from(entry & RTE_DEST_MODE != 0) << 2);
        let mut data = (entry & RTE_VECTOR_MASK) as u32
            | ((((entry >> RTE_DELIVERY_MODE_SHIFT) & RTE_DELIVERY_MODE_MASK) as u32) << 8);
        if entry & RTE_TRIGGER_LEVEL != 0 {
            data |= MSI_DATA_TRIGGER_LEVEL | MSI_DATA_LEVEL_ASSERT;
        }
        MsiMessage {
            address,
            data,
            source: self.source,
        }
    }

    fn deliver(&mut self, pin: usize) {
        let entry = self.rte[pin];
        if entry & RTE_MASKED != 0 {
            return;
        }
        if entry & RTE_TRIGGER_LEVEL != 0 {
            if entry & RTE_REMOTE_IRR != 0 {
                return;
            }
            self.rte[pin] |= RTE_REMOTE_IRR;
        }
        if let Err(e) = self.msi.send_msi(self.msi_for(entry)) {
            iommu::warn_limited!("ioapic: pin {pin}: {e}");
        }
    }

    /// Drives input `pin` to `level` (true = asserted, whatever the polarity).
    pub fn set_irq(&mut self, pin: usize, level: bool) {
        let Some(old) = self.line.get(pin).copied() else {
            return;
        };
        self.line[pin] = level;
        let level_triggered = self.rte[pin] & RTE_TRIGGER_LEVEL != 0;
        if level && (level_triggered || !old) {
            self.deliver(pin);
        }
    }

    /// A local APIC EOIed `vector` (KVM_EXIT_IOAPIC_EOI): clears Remote IRR of matching
    /// level-triggered entries, lowers and resamples resampled pins, and re-delivers those
    /// whose line is still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..NUM_PINS {
            let e = self.rte[pin];
            if e & RTE_TRIGGER_LEVEL != 0
                && e & RTE_REMOTE_IRR != 0
                && (e & RTE_VECTOR_MASK) as u8 == vector
            {
                self.rte[pin] &= !RTE_REMOTE_IRR;
                if let Some(r) = &self.resample[pin] {
                    self.line[pin] = false;
                    r.resample();
                }
                if self.line[pin] {
                    self.deliver(pin);
                }
            }
        }
    }

    /// Tells the MSI sender every pin's current message again (after interrupt remapping
    /// entries changed, the messages it derived from them may be stale).
    pub fn refresh_routes(&self) {
        for pin in 0..NUM_PINS {
            self.route_changed(pin);
        }
    }

    fn route_changed(&self, pin: usize) {
        let e = self.rte[pin];
        let msg = (e & RTE_MASKED == 0 && e & RTE_TRIGGER_LEVEL != 0).then(|| self.msi_for(e));
        self.msi.ioapic_route_changed(pin, msg);
    }

    fn read_indirect(&self) -> u32 {
        match self.ioregsel {
            IOAPICID | IOAPICARB => self.id,
            IOAPICVER => VERSION_VALUE,
            r if r >= IOREDTBL_BASE => {
                let idx = (r - IOREDTBL_BASE) as usize;
                match self.rte.get(idx / 2) {
                    Some(e) if idx.is_multiple_of(2) => *e as u32,
                    Some(e) => (*e >> 32) as u32,
                    None => 0,
                }
            }
            _ => 0,
        }
    }

    fn write_indirect(&mut self, v: u32) {
        match self.ioregsel {
            IOAPICID => self.id = v & ID_MASK,
            r if r >= IOREDTBL_BASE => {
                let idx = (r - IOREDTBL_BASE) as usize;
                let pin = idx / 2;
                let Some(old) = self.rte.get(pin).copied() else {
                    return;
                };
                let new = if idx.is_multiple_of(2) {
                    (old & !0xffff_ffff & !RTE_READ_ONLY)
                        | (u64::from(v) & !RTE_READ_ONLY)
                        | (old & RTE_READ_ONLY)
                } else {
                    (old & 0xffff_ffff) | (u64::from(v) << 32)
                };
                let mut new = new;
                if new & RTE_TRIGGER_LEVEL == 0 {
                    new &= !RTE_REMOTE_IRR;
                }
                self.rte[pin] = new;
                self.route_changed(pin);
                // Unmasking a level entry whose line is asserted delivers it.
                if new & RTE_TRIGGER_LEVEL != 0 && new & RTE_MASKED == 0 && self.line[pin] {
                    self.deliver(pin);
                }
            }
            _ => {}
        }
    }

    /// The redirection entries that are unmasked or whose line is asserted (for the state
    /// dump).
    pub fn state(&self) -> IoapicState {
        IoapicState {
            id: self.id >> 24,
            source: self.source,
            pins: self
                .rte
                .iter()
                .enumerate()
                .filter(|(pin, e)| *e & RTE_MASKED == 0 || self.line[*pin])
                .map(|(pin, &e)| PinState {
                    pin,
                    entry: e,
                    vector: (e & RTE_VECTOR_MASK) as u8,
                    level: e & RTE_TRIGGER_LEVEL != 0,
                    masked: e & RTE_MASKED != 0,
                    asserted: self.line[pin],
                })
                .collect(),
        }
    }
}

/// The IOAPIC as the state dump sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IoapicState {
    /// The IOAPIC ID (IOAPICID register bits 27:24).
    pub id: u32,
    /// Its requester id for interrupt remapping.
    pub source: Bdf,
    /// Unmasked or asserted pins only.
    pub pins: Vec<PinState>,
}

/// One redirection table entry (82093AA 3.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PinState {
    pub pin: usize,
    pub entry: u64,
    pub vector: u8,
    /// Level-triggered, else edge.
    pub level: bool,
    pub masked: bool,
    pub asserted: bool,
}

impl BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            IOREGSEL => self.ioregsel,
            IOWIN => self.read_indirect(),
            _ => 0,
        };
        for (d, s) in data
            .iter_mut()
            .zip(v.to_le_bytes().iter().chain([0u8; 4].iter()))
        {
            *d = *s;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        match offset {
            IOREGSEL => self.ioregsel = v & 0xff,
            IOWIN => self.write_indirect(v),
            IOEOI => self.end_of_interrupt(v as u8),
            _ => {}
        }
    }
}

/// One IOAPIC input pin as an interrupt line.
pub struct IoapicPin {
    pub ioapic: Arc<Mutex<Ioapic>>,
    pub pin: usize,
}

impl IrqLine for IoapicPin {
    fn set_level(&self, level: bool) {
        lock(&self.ioapic).set_irq(self.pin, level);
    }
}

#[cfg(test)]
mod tests;
