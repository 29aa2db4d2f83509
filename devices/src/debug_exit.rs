//! An isa-debug-exit compatible port (QEMU hw/misc/debugexit.c semantics): a guest write of
//! value V asks the VMM to exit with status (V << 1) | 1, so test payloads can report results.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm_control::{ExitHandler, VmExitRequest};

pub struct DebugExit {
    exit: Arc<dyn ExitHandler>,
}

impl DebugExit {
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        DebugExit { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        self.exit
            .request_exit(VmExitRequest::DebugExit((v << 1) | 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_control::test_utils::RecordingExit;

    #[test]
    fn debug_exit_write_requests_shifted_status() {
        let rec = Arc::new(RecordingExit::default());
        let mut d = DebugExit::new(rec.clone());
        d.write(0, &[0x10]);
        d.write(0, &0x21u32.to_le_bytes());
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                VmExitRequest::DebugExit(0x21),
                VmExitRequest::DebugExit(0x43)
            ]
        );
    }
}
