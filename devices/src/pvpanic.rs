//! QEMU's pvpanic ISA device (docs/specs/pvpanic.rst): one I/O port (0x505) the guest kernel
//! writes when it panics. Linux's pvpanic-mmio driver binds to ACPI _HID QEMU0001.

use std::sync::Arc;

use iommu::ratelimit::{RateLimiter, DEFAULT_WINDOW};
use log::info;

use crate::bus::BusDevice;
use crate::vm_control::{ExitHandler, VmExitRequest};

/// Event bit: the guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: a crash kernel is loaded (logged only).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// The conventional ISA port.
pub const PVPANIC_PORT: u16 = 0x505;

pub struct PvPanic {
    exit: Arc<dyn ExitHandler>,
}

impl PvPanic {
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        PvPanic { exit }
    }
}

impl BusDevice for PvPanic {
    /// Reads return the supported events.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let v = data[0];
        if v & PVPANIC_PANICKED != 0 {
            self.exit.request_exit(VmExitRequest::GuestPanic);
        } else if v & PVPANIC_CRASH_LOADED != 0 {
            // The guest may write this in a loop: one line per window.
            static LIMIT: RateLimiter = RateLimiter::new(1, DEFAULT_WINDOW);
            if LIMIT.check().is_some() {
                info!("pvpanic: the guest loaded a crash kernel");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_control::test_utils::RecordingExit;

    #[test]
    fn pvpanic_read_reports_supported_events() {
        let mut p = PvPanic::new(Arc::new(RecordingExit::default()));
        let mut b = [0u8; 1];
        p.read(0, &mut b);
        assert_eq!(b[0], 0x3);
    }

    #[test]
    fn pvpanic_panicked_write_requests_panic_exit_only() {
        let rec = Arc::new(RecordingExit::default());
        let mut p = PvPanic::new(rec.clone());
        p.write(0, &[PVPANIC_CRASH_LOADED]);
        assert!(rec.0.lock().unwrap().is_empty());
        p.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(*rec.0.lock().unwrap(), vec![VmExitRequest::GuestPanic]);
    }
}
