//! QEMU's isa-debugcon (hw/char/debugcon.c): each byte written to the port goes to the output;
//! reads return the "readback" value, 0xE9 as QEMU's default (Bochs' port-0xE9 hack), which
//! firmware reads to detect the console. Firmware debug builds (OVMF's PlatformDebugLibIoPort,
//! port 0x402) print their log there.

use std::io::Write;

use crate::bus::BusDevice;

/// OVMF's debug port (QEMU `-global isa-debugcon.iobase=0x402`).
pub const DEBUGCON_DEFAULT_PORT: u16 = 0x402;
/// QEMU's isa-debugcon readback value.
pub const DEBUGCON_READBACK: u8 = 0xe9;

pub struct DebugCon {
    out: Box<dyn Write + Send>,
}

impl DebugCon {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        DebugCon { out }
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = DEBUGCON_READBACK;
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        // As QEMU: the low byte of the access goes out. A failed write loses the byte only
        // (the output reports its own failures).
        let _ = self.out.write_all(&data[..1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn debugcon_writes_go_out_a_byte_each() {
        let sink = Sink::default();
        let mut d = DebugCon::new(Box::new(sink.clone()));
        for b in b"OK\n" {
            d.write(0, &[*b]);
        }
        d.write(0, b"xy");
        assert_eq!(*sink.0.lock().unwrap(), b"OK\nx");
    }

    #[test]
    fn debugcon_reads_return_e9() {
        let mut d = DebugCon::new(Box::new(Sink::default()));
        let mut b = [0u8; 2];
        d.read(0, &mut b);
        assert_eq!(b, [0xe9, 0]);
    }
}
