//! The guest console's output (stdout or a file). The UART hands it one byte at a time and
//! asks for a flush after each; a write(2) per byte would cost more than the guest's own
//! exit for it, so bytes are kept until a line ends, 4 KiB gather, or the event loop's tick
//! (at most 50 ms later: prompts without a newline still show promptly).

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::bus::lock;

/// Bytes kept before they are written even without a newline.
const BUFFER_LIMIT: usize = 4096;

struct Inner {
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
}

impl Inner {
    fn write_out(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush());
        // What could not be written (a closed stdout) is dropped, as on a cut line.
        self.buf.clear();
        r
    }
}

/// The writer the UART gets; clones share the buffer, so the event loop can flush it.
#[derive(Clone)]
pub struct ConsoleOut(Arc<Mutex<Inner>>);

impl ConsoleOut {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        ConsoleOut(Arc::new(Mutex::new(Inner {
            out,
            buf: Vec::with_capacity(BUFFER_LIMIT),
        })))
    }

    /// Writes out whatever is buffered (the event loop's tick, and at exit).
    pub fn flush_now(&self) {
        let _ = lock(&self.0).write_out();
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut inner = lock(&self.0);
        inner.buf.extend_from_slice(data);
        if inner.buf.len() >= BUFFER_LIMIT {
            inner.write_out()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut inner = lock(&self.0);
        if inner.buf.last() == Some(&b'\n') {
            inner.write_out()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn put(c: &mut ConsoleOut, bytes: &[u8]) {
        for b in bytes {
            c.write_all(&[*b]).unwrap();
            c.flush().unwrap();
        }
    }

    #[test]
    fn console_writes_whole_lines() {
        let sink = Sink::default();
        let mut c = ConsoleOut::new(Box::new(sink.clone()));
        put(&mut c, b"hello\nwor");
        assert_eq!(*sink.0.lock().unwrap(), vec![b"hello\n".to_vec()]);
        c.flush_now();
        assert_eq!(
            sink.0.lock().unwrap()[1],
            b"wor".to_vec(),
            "the tick flushes partial lines"
        );
        c.flush_now();
        assert_eq!(
            sink.0.lock().unwrap().len(),
            2,
            "nothing buffered, nothing written"
        );
    }

    #[test]
    fn console_long_output_without_newline_is_written_in_chunks() {
        let sink = Sink::default();
        let mut c = ConsoleOut::new(Box::new(sink.clone()));
        put(&mut c, &vec![b'x'; BUFFER_LIMIT + 10]);
        let writes = sink.0.lock().unwrap().clone();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].len(), BUFFER_LIMIT);
    }
}
