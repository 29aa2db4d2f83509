//! The ACPI hardware-reduced sleep and reset registers the FADT points at (ACPI 6.5 sections
//! 4.8.3.7 "Sleep Control and Status Registers" and 4.8.3.6 "Reset Register").

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm_control::{ExitHandler, VmExitRequest};

/// Offset of SLEEP_CONTROL_REG in the device's port range.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of SLEEP_STATUS_REG.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 4;
/// Ports the device occupies.
pub const ACPI_PM_SIZE: u64 = 8;
/// The value written to the reset register to reset (FADT RESET_VALUE).
pub const RESET_VALUE: u8 = 0x1;
/// SLP_TYPx for S5, as the DSDT's \_S5 package gives it.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLEEP_CONTROL_REG: SLP_EN (bit 5) and SLP_TYPx (bits 4:2).
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// SLEEP_STATUS_REG: WAK_STS (bit 7), write 1 to clear.
const WAK_STS: u8 = 1 << 7;

pub struct AcpiPm {
    exit: Arc<dyn ExitHandler>,
    sleep_status: u8,
}

impl AcpiPm {
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        AcpiPm {
            exit,
            sleep_status: 0,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == SLEEP_STATUS_OFFSET {
            data[0] = self.sleep_status;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let v = data[0];
        match offset {
            // Other sleep states are not supported: their writes are dropped.
            SLEEP_CONTROL_OFFSET
                if v & SLP_EN != 0 && (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLEEP_TYPE =>
            {
                self.exit.request_exit(VmExitRequest::PowerOff)
            }
            SLEEP_STATUS_OFFSET => self.sleep_status &= !(v & WAK_STS),
            RESET_OFFSET if v == RESET_VALUE => self.exit.request_exit(VmExitRequest::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_control::test_utils::RecordingExit;

    fn dev() -> (AcpiPm, Arc<RecordingExit>) {
        let rec = Arc::new(RecordingExit::default());
        (AcpiPm::new(rec.clone()), rec)
    }

    #[test]
    fn acpi_pm_s5_with_slp_en_powers_off() {
        let (mut d, rec) = dev();
        d.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << 2]);
        assert!(rec.0.lock().unwrap().is_empty(), "no SLP_EN, no sleep");
        d.write(SLEEP_CONTROL_OFFSET, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(*rec.0.lock().unwrap(), vec![VmExitRequest::PowerOff]);
    }

    #[test]
    fn acpi_pm_other_sleep_types_are_dropped() {
        let (mut d, rec) = dev();
        d.write(SLEEP_CONTROL_OFFSET, &[(3 << 2) | SLP_EN]);
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn acpi_pm_reset_value_resets() {
        let (mut d, rec) = dev();
        d.write(RESET_OFFSET, &[0x2]);
        d.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(*rec.0.lock().unwrap(), vec![VmExitRequest::Reset]);
    }
}
