//! The stop channel: devices and vCPUs report why the VM should end; the main thread waits.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use devices::vm_control::{ExitHandler, VmExitRequest};
use vmm_sys_util::eventfd::EventFd;

use crate::exit::StopReason;

/// Collects stop requests and wakes the event loop.
pub struct VmControl {
    tx: Mutex<Sender<StopReason>>,
    pub wake: EventFd,
}

impl VmControl {
    pub fn new() -> std::io::Result<(Self, Receiver<StopReason>)> {
        let (tx, rx) = channel();
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        Ok((
            VmControl {
                tx: Mutex::new(tx),
                wake,
            },
            rx,
        ))
    }

    /// A sender for vCPU threads (they also call `notify` after sending).
    pub fn sender(&self) -> Sender<StopReason> {
        devices::bus::lock(&self.tx).clone()
    }

    pub fn stop(&self, reason: StopReason) {
        let _ = devices::bus::lock(&self.tx).send(reason);
        self.notify();
    }

    pub fn notify(&self) {
        let _ = self.wake.write(1);
    }
}

impl ExitHandler for VmControl {
    fn request_exit(&self, req: VmExitRequest) {
        log::info!("guest requested {req:?}");
        self.stop(match req {
            VmExitRequest::PowerOff => StopReason::PowerOff,
            VmExitRequest::Reset => StopReason::Reset,
            VmExitRequest::GuestPanic => StopReason::GuestPanic,
            VmExitRequest::DebugExit(code) => StopReason::DebugExit(code),
        });
    }
}
