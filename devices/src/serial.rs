//! COM1: a 16550A UART from vm-superio behind the bus trait, its interrupt on an ISA line
//! (IRQ 4, edge-triggered, through the IOAPIC).

use std::io::Write;
use std::sync::Arc;

use vm_superio::{Serial, Trigger};

use crate::bus::BusDevice;
use crate::interrupt::IrqLine;

/// Number of UART registers (8 ports).
pub const SERIAL_PORT_SIZE: u64 = 8;

/// Raises an edge on the serial's interrupt line each time the UART signals an interrupt.
pub struct LineTrigger(pub Arc<dyn IrqLine>);

impl Trigger for LineTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.pulse();
        Ok(())
    }
}

/// A 16550A UART whose output goes to `out`.
pub struct SerialDevice {
    uart: Serial<LineTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(LineTrigger(irq), out),
        }
    }

    /// Queues guest input; returns how many bytes fit in the receive FIFO (the rest are for
    /// the caller to offer again later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        self.uart.enqueue_raw_bytes(&bytes[..n]).unwrap_or_default()
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset < SERIAL_PORT_SIZE {
            data[0] = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < SERIAL_PORT_SIZE {
            // Errors are the output writer's (e.g. a closed stdout): the byte is lost, as on
            // a disconnected line.
            let _ = self.uart.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Edges(AtomicU32);
    impl IrqLine for Edges {
        fn set_level(&self, level: bool) {
            if level {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

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

    /// UART registers (PC16550D datasheet): THR/RBR 0, IER 1, LSR 5.
    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const IER_RDI: u8 = 0x1;
    const LSR_DATA_READY: u8 = 0x1;

    fn dev() -> (SerialDevice, Arc<Edges>, Sink) {
        let edges = Arc::new(Edges::default());
        let sink = Sink::default();
        (
            SerialDevice::new(edges.clone(), Box::new(sink.clone())),
            edges,
            sink,
        )
    }

    #[test]
    fn serial_thr_writes_reach_output() {
        let (mut s, _, sink) = dev();
        for b in b"hi" {
            s.write(THR, &[*b]);
        }
        assert_eq!(*sink.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn serial_input_sets_data_ready_and_interrupts_when_enabled() {
        let (mut s, edges, _) = dev();
        s.write(IER, &[IER_RDI]);
        let before = edges.0.load(Ordering::SeqCst);
        assert_eq!(s.enqueue_input(b"x"), 1);
        assert!(edges.0.load(Ordering::SeqCst) > before);
        let mut b = [0u8];
        s.read(LSR, &mut b);
        assert_eq!(b[0] & LSR_DATA_READY, LSR_DATA_READY);
        s.read(THR, &mut b);
        assert_eq!(b[0], b'x');
    }

    #[test]
    fn serial_input_beyond_fifo_is_refused_not_lost() {
        let (mut s, _, _) = dev();
        let big = vec![b'a'; 100];
        let n = s.enqueue_input(&big);
        assert_eq!(n, 64);
        assert_eq!(s.input_capacity(), 0);
        assert_eq!(s.enqueue_input(b"b"), 0);
    }
}
