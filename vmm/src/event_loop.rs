//! The main thread's event loop (event-manager): stdin into the serial port, and the wake-up
//! eventfd that says the VM should stop.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::serial::SerialDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Feeds stdin to the guest's UART. Input that does not fit in the FIFO waits in `pending`.
pub struct StdinHandler {
    pub serial: Arc<Mutex<SerialDevice>>,
    pending: Vec<u8>,
}

impl StdinHandler {
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        StdinHandler {
            serial,
            pending: Vec::new(),
        }
    }

    /// Offers buffered input to the UART again (called periodically by the loop).
    pub fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let n = lock(&self.serial).enqueue_input(&self.pending);
            self.pending.drain(..n);
        }
    }
}

impl MutEventSubscriber for StdinHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let stop = |ops: &mut EventOps| {
            let _ = ops.remove(Events::new_raw(libc::STDIN_FILENO, EventSet::IN));
        };
        if events.event_set().contains(EventSet::HANG_UP)
            && !events.event_set().contains(EventSet::IN)
        {
            stop(ops);
            return;
        }
        match std::io::stdin().lock().read(&mut buf) {
            // EOF (stdin closed or /dev/null): stop watching it instead of spinning.
            Ok(0) | Err(_) => stop(ops),
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                self.flush_pending();
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Regular files can't be polled; such stdin is simply not forwarded.
        let _ = ops.add(Events::new_raw(libc::STDIN_FILENO, EventSet::IN));
    }
}

/// Sets a flag when the stop eventfd fires.
pub struct StopHandler {
    pub fd: EventFd,
    pub stopping: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.fd.read();
        self.stopping.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new_raw(self.fd.as_raw_fd(), EventSet::IN));
    }
}
