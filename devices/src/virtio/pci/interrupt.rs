//! A virtio-pci function's interrupts (virtio 1.2 section 4.1.5.4): MSI-X vectors chosen by
//! config_msix_vector / queue_msix_vector when MSI-X is enabled, else INTA with the ISR
//! status register (4.1.4.5) read-to-clear. Shared between the transport (vCPU threads) and
//! the device's workers.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use crate::bus::lock;
use crate::interrupt::IrqLine;
use crate::pci::emulated::SharedVectors;
use crate::virtio::common_config::VIRTIO_MSI_NO_VECTOR;
use crate::virtio::VirtioInterrupt;

/// ISR status bit 0: a used-buffer notification (4.1.4.5).
pub const ISR_QUEUE: u8 = 1;
/// ISR status bit 1: a configuration change (4.1.4.5).
pub const ISR_CONFIG: u8 = 2;

#[derive(Debug, Default)]
struct Intx {
    /// ISR status bits not yet read.
    isr: u8,
    /// Whether INTA is asserted.
    level: bool,
    /// MSI-X Enable in the capability: the ISR and INTA are not used (4.1.4.5).
    msix_enabled: bool,
    /// Command register bit 10.
    intx_disabled: bool,
    /// Command register bit 2: without it the function sends no MSI (PCI 3.0 6.8.1.3).
    bus_master: bool,
}

/// The interrupts of one virtio-pci function.
pub struct PciInterrupt {
    vectors: SharedVectors,
    intx: Arc<dyn IrqLine>,
    state: Mutex<Intx>,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    /// Set by the device (an error it cannot recover from); read into device_status.
    needs_reset: AtomicBool,
}

impl PciInterrupt {
    pub fn new(vectors: SharedVectors, intx: Arc<dyn IrqLine>, queues: usize) -> Self {
        PciInterrupt {
            vectors,
            intx,
            state: Mutex::new(Intx::default()),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..queues)
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
            needs_reset: AtomicBool::new(false),
        }
    }

    /// The vectors the driver chose (already validated against the table size).
    pub fn set_vectors(&self, config: u16, queues: impl Iterator<Item = u16>) {
        self.config_vector.store(config, Ordering::Release);
        for (slot, v) in self.queue_vectors.iter().zip(queues) {
            slot.store(v, Ordering::Release);
        }
    }

    /// MSI-X Enable, or the command register's Interrupt Disable or Bus Master, changed.
    pub fn set_modes(&self, msix_enabled: bool, intx_disabled: bool, bus_master: bool) {
        let mut s = lock(&self.state);
        s.msix_enabled = msix_enabled;
        s.intx_disabled = intx_disabled;
        s.bus_master = bus_master;
        self.update_intx(&mut s);
    }

    /// Reads and clears the ISR status (4.1.4.5.1), deasserting INTA.
    pub fn read_isr(&self) -> u8 {
        let mut s = lock(&self.state);
        let v = s.isr;
        s.isr = 0;
        self.update_intx(&mut s);
        v
    }

    /// Whether an INTx interrupt is pending (the status register's Interrupt Status).
    pub fn intx_pending(&self) -> bool {
        let s = lock(&self.state);
        s.isr != 0 && !s.msix_enabled
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// Back to reset: no ISR bits, INTA low, no vectors chosen, no error.
    pub fn reset(&self) {
        self.set_vectors(
            VIRTIO_MSI_NO_VECTOR,
            std::iter::repeat(VIRTIO_MSI_NO_VECTOR),
        );
        self.needs_reset.store(false, Ordering::Release);
        let mut s = lock(&self.state);
        s.isr = 0;
        self.update_intx(&mut s);
    }

    fn update_intx(&self, s: &mut Intx) {
        let level = s.isr != 0 && !s.msix_enabled && !s.intx_disabled;
        if level != s.level {
            s.level = level;
            self.intx.set_level(level);
        }
    }

    fn raise(&self, vector: u16, isr: u8) {
        let mut s = lock(&self.state);
        if s.msix_enabled {
            let send = s.bus_master && vector != VIRTIO_MSI_NO_VECTOR;
            drop(s);
            if send {
                lock(&self.vectors).trigger(usize::from(vector));
            }
            return;
        }
        s.isr |= isr;
        self.update_intx(&mut s);
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn signal_queue(&self, index: u16) {
        let vector = self
            .queue_vectors
            .get(usize::from(index))
            .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::Acquire));
        self.raise(vector, ISR_QUEUE);
    }

    fn signal_config(&self) {
        self.raise(self.config_vector.load(Ordering::Acquire), ISR_CONFIG);
    }

    fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        self.signal_config();
    }
}
