//! The part of an 8042 keyboard controller that reboots the machine: Linux's BOOT_KBD reset
//! (arch/x86/kernel/reboot.c) polls the status port until the input buffer is empty and then
//! writes the "pulse reset line" command 0xFE. Status reads say "both buffers empty", data
//! reads return 0; there is no keyboard.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm_control::{ExitHandler, VmExitRequest};

/// Data port 0x60 and command/status port 0x64, as offsets from 0x60.
pub const I8042_BASE: u16 = 0x60;
pub const I8042_SIZE: u64 = 5;
const STATUS_OFFSET: u64 = 4;
/// Controller command: pulse output line 0 (CPU reset) low.
const CMD_RESET: u8 = 0xfe;

/// Status read by firmware boot: all-ones, "no controller" to OVMF's Ps2KeyboardDxe
/// (MdeModulePkg/Bus/Isa/Ps2KeyboardDxe/Ps2Keyboard.c checks the parity and timeout bits),
/// which otherwise waits a second for a self-test answer that never comes.
pub const STATUS_ABSENT: u8 = 0xff;

pub struct I8042Reset {
    exit: Arc<dyn ExitHandler>,
    status: u8,
}

impl I8042Reset {
    /// Status reads 0: both buffers empty (direct kernel boot).
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        I8042Reset { exit, status: 0 }
    }

    /// Status reads [`STATUS_ABSENT`] (firmware boot); the reset command still works.
    pub fn absent(exit: Arc<dyn ExitHandler>) -> Self {
        I8042Reset {
            exit,
            status: STATUS_ABSENT,
        }
    }
}

impl BusDevice for I8042Reset {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == STATUS_OFFSET {
            data[0] = self.status;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == STATUS_OFFSET && data[0] == CMD_RESET {
            self.exit.request_exit(VmExitRequest::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_control::test_utils::RecordingExit;

    #[test]
    fn i8042_status_reads_empty_buffers() {
        let mut d = I8042Reset::new(Arc::new(RecordingExit::default()));
        let mut b = [0xffu8];
        d.read(STATUS_OFFSET, &mut b);
        assert_eq!(b[0] & 0x3, 0);
    }

    #[test]
    fn i8042_absent_status_reads_all_ones_and_still_resets() {
        let rec = Arc::new(RecordingExit::default());
        let mut d = I8042Reset::absent(rec.clone());
        let mut b = [0u8];
        d.read(STATUS_OFFSET, &mut b);
        assert_eq!(b[0], STATUS_ABSENT);
        d.read(0, &mut b);
        assert_eq!(b[0], 0, "data port");
        d.write(STATUS_OFFSET, &[CMD_RESET]);
        assert_eq!(*rec.0.lock().unwrap(), vec![VmExitRequest::Reset]);
    }

    #[test]
    fn i8042_pulse_reset_command_resets() {
        let rec = Arc::new(RecordingExit::default());
        let mut d = I8042Reset::new(rec.clone());
        d.write(0, &[CMD_RESET]);
        d.write(STATUS_OFFSET, &[0xd1]);
        assert!(
            rec.0.lock().unwrap().is_empty(),
            "only 0xFE on the command port resets"
        );
        d.write(STATUS_OFFSET, &[CMD_RESET]);
        assert_eq!(*rec.0.lock().unwrap(), vec![VmExitRequest::Reset]);
    }
}
