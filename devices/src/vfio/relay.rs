//! The relay: a thread per passed-through function that waits (epoll) on the interrupt
//! eventfds the hypervisor does not deliver itself — INTx, masked vectors, vectors interrupt
//! remapping blocks — and hands each signal to the function's interrupt state.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use log::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::interrupts::{FdWatcher, Interrupts};

/// The token of the relay's own stop eventfd.
const STOP_TOKEN: u64 = u64::MAX - 1;

/// The relay's epoll set, shared with the interrupt state that adds and removes eventfds.
pub struct EpollWatcher {
    epoll: Epoll,
}

impl EpollWatcher {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(EpollWatcher {
            epoll: Epoll::new()?,
        }))
    }
}

impl FdWatcher for EpollWatcher {
    fn watch(&self, fd: &EventFd, token: u64) {
        let ev = EpollEvent::new(EventSet::IN, token);
        if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd.as_raw_fd(), ev) {
            iommu::warn_limited!("vfio: cannot watch an interrupt eventfd: {e}");
        }
    }

    fn unwatch(&self, fd: &EventFd) {
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            EpollEvent::default(),
        );
    }
}

/// The running relay thread; stopped and joined when dropped.
pub struct Relay {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(watcher: Arc<EpollWatcher>, interrupts: Interrupts) -> std::io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        watcher.watch(&stop, STOP_TOKEN);
        let thread = std::thread::Builder::new()
            .name("vfio-irq".into())
            .spawn(move || {
                crate::thread_started("vfio-irq");
                let mut events = vec![EpollEvent::default(); 16];
                loop {
                    let n = match watcher.epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            warn!("vfio: epoll_wait: {e}");
                            return;
                        }
                    };
                    for ev in &events[..n] {
                        match ev.data() {
                            STOP_TOKEN => return,
                            token => interrupts.signalled(token),
                        }
                    }
                }
            })?;
        Ok(Relay {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
