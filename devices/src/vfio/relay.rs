//! Relays a VFIO interrupt eventfd to the VMM's MSI path on a thread of its own: each signal
//! becomes the MSI the guest programmed (which then passes interrupt remapping).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::{MsiMessage, MsiTrigger};

pub struct MsiRelay {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl MsiRelay {
    pub fn start(
        irq: EventFd,
        message: Arc<Mutex<Option<MsiMessage>>>,
        trigger: Arc<dyn MsiTrigger>,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let stop_rx = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("vfio-msi".into())
            .spawn(move || loop {
                let mut fds = [
                    libc::pollfd {
                        fd: irq.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: stop_rx.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: `fds` is an array of two valid pollfd structures that outlives the
                // call, and the length passed matches it.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if n < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    warn!("vfio: poll: {}", std::io::Error::last_os_error());
                    return;
                }
                if fds[1].revents != 0 {
                    return;
                }
                if fds[0].revents != 0 && irq.read().is_ok() {
                    let msg = message.lock().ok().and_then(|m| *m);
                    if let Some(m) = msg {
                        if let Err(e) = trigger.send_msi(m) {
                            warn!("vfio: MSI: {e}");
                        }
                    }
                }
            })?;
        Ok(MsiRelay {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for MsiRelay {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
