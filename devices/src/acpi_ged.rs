//! The power button of a hardware-reduced ACPI platform: a Generic Event Device (ACPI 6.5
//! section 5.6.9, _HID ACPI0013) whose interrupt makes the OS run its _EVT method, which reads
//! this device's event register and notifies the control-method power button (PNP0C0C,
//! section 4.8.2.2.1.2) with 0x80 ("button pressed"). The DSDT side is `acpi::dsdt`.
//!
//! One byte-wide register: reading it returns the pending events and clears them; writes are
//! dropped. The interrupt is an edge on an IOAPIC pin, raised once per press.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::interrupt::IrqLine;

/// Ports the device occupies.
pub const GED_SIZE: u64 = 1;
/// Event bit: the power button was pressed.
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 0;

/// What the VMM keeps to press the button.
pub struct PowerButton {
    pending: Arc<AtomicU8>,
    irq: Arc<dyn IrqLine>,
}

impl PowerButton {
    /// Presses the button: the event is latched and the interrupt edge sent.
    pub fn press(&self) {
        self.pending
            .fetch_or(GED_EVENT_POWER_BUTTON, Ordering::AcqRel);
        self.irq.set_level(true);
        self.irq.set_level(false);
    }
}

/// The guest's side: the event register.
pub struct AcpiGed {
    pending: Arc<AtomicU8>,
}

/// A GED and the button that raises its event, sharing the latch.
pub fn power_button(irq: Arc<dyn IrqLine>) -> (AcpiGed, PowerButton) {
    let pending = Arc::new(AtomicU8::new(0));
    (
        AcpiGed {
            pending: pending.clone(),
        },
        PowerButton { pending, irq },
    )
}

impl BusDevice for AcpiGed {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = self.pending.swap(0, Ordering::AcqRel);
            }
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Line(Mutex<Vec<bool>>);
    impl IrqLine for Line {
        fn set_level(&self, level: bool) {
            self.0.lock().unwrap().push(level);
        }
    }

    #[test]
    fn ged_press_latches_event_and_pulses_irq() {
        let line = Arc::new(Line::default());
        let (mut ged, button) = power_button(line.clone());
        let mut b = [0xffu8];
        ged.read(0, &mut b);
        assert_eq!(b, [0], "nothing pending before a press");
        button.press();
        assert_eq!(*line.0.lock().unwrap(), vec![true, false]);
        ged.read(0, &mut b);
        assert_eq!(b, [GED_EVENT_POWER_BUTTON]);
    }

    #[test]
    fn ged_read_clears_and_writes_are_dropped() {
        let (mut ged, button) = power_button(Arc::new(Line::default()));
        button.press();
        ged.write(0, &[0]);
        let mut b = [0u8; 2];
        ged.read(0, &mut b);
        assert_eq!(b, [GED_EVENT_POWER_BUTTON, 0]);
        ged.read(0, &mut b);
        assert_eq!(b, [0, 0], "read to clear");
    }
}
