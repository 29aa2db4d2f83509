//! The guest console's output (stdout or a file). The UART hands it one byte at a time and
//! asks for a flush after each; a write(2) per byte would cost more than the guest's own
//! exit for it, so bytes are kept until a line ends, 4 KiB gather, or the event loop's tick
//! (at most 50 ms later: prompts without a newline still show promptly).
//!
//! A failed write (a full disk under `--serial file=`) loses that output, is reported once on
//! stderr, and does not stop the guest. The file's size is not capped (a guest fills it as fast
//! as it writes to its UART): bound it from outside (a quota, a size-limited filesystem) where
//! that matters.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::bus::lock;

/// Bytes kept before they are written even without a newline.
const BUFFER_LIMIT: usize = 4096;

struct Inner {
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
    /// The last write failed (a full disk, a closed stdout): the failure has been reported.
    failing: bool,
    /// Failures reported, and bytes lost to failed writes.
    reported: u64,
    lost: u64,
}

impl Inner {
    /// Writes the buffer out. What cannot be written (a full disk, a closed stdout) is
    /// dropped, as on a cut line, and the guest goes on; the first failure of a run of them
    /// is reported on stderr, so lost output is never silent.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let r = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush());
        match r {
            Ok(()) => self.failing = false,
            Err(e) => {
                self.lost += self.buf.len() as u64;
                if !self.failing {
                    self.failing = true;
                    self.reported += 1;
                    iommu::warn_limited!(
                        "serial output: {e}; guest console output is lost until writes succeed \
                         again ({} bytes lost so far)",
                        self.lost
                    );
                }
            }
        }
        self.buf.clear();
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
            failing: false,
            reported: 0,
            lost: 0,
        })))
    }

    #[cfg(test)]
    /// Write failures reported so far (one per run of failed writes).
    pub fn failures_reported(&self) -> u64 {
        lock(&self.0).reported
    }

    #[cfg(test)]
    /// Bytes of guest output lost to failed writes.
    pub fn bytes_lost(&self) -> u64 {
        lock(&self.0).lost
    }

    /// Writes out whatever is buffered (the event loop's tick, and at exit).
    pub fn flush_now(&self) {
        lock(&self.0).write_out();
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut inner = lock(&self.0);
        inner.buf.extend_from_slice(data);
        if inner.buf.len() >= BUFFER_LIMIT {
            inner.write_out();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut inner = lock(&self.0);
        if inner.buf.last() == Some(&b'\n') {
            inner.write_out();
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

    /// A writer that fails (like a full disk) until told otherwise.
    #[derive(Clone, Default)]
    struct Flaky(Arc<Mutex<bool>>);
    impl Write for Flaky {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if *self.0.lock().unwrap() {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn console_write_errors_are_reported_once_per_failing_run() {
        let flaky = Flaky(Arc::new(Mutex::new(true)));
        let mut c = ConsoleOut::new(Box::new(flaky.clone()));
        for _ in 0..5 {
            put(&mut c, b"lost\n");
        }
        assert_eq!(c.failures_reported(), 1, "one report for the whole run");
        assert_eq!(c.bytes_lost(), 25);
        *flaky.0.lock().unwrap() = false;
        put(&mut c, b"ok\n");
        *flaky.0.lock().unwrap() = true;
        put(&mut c, b"lost\n");
        assert_eq!(
            c.failures_reported(),
            2,
            "a new run of failures is reported"
        );
        assert_eq!(c.bytes_lost(), 30);
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
