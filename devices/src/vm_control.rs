//! How devices ask the VMM to stop the VM.

/// A device's request to end the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExitRequest {
    /// ACPI S5 (poweroff).
    PowerOff,
    /// ACPI reset register or similar reboot request.
    Reset,
    /// The guest kernel reported a panic (pvpanic).
    GuestPanic,
    /// isa-debug-exit: end with this process exit status.
    DebugExit(u32),
}

/// Implemented by the VMM; devices hold an `Arc<dyn ExitHandler>`.
pub trait ExitHandler: Send + Sync {
    fn request_exit(&self, req: VmExitRequest);
}

#[cfg(test)]
pub(crate) mod test_utils {
    use super::*;
    use std::sync::Mutex;

    /// Records exit requests for tests.
    #[derive(Default)]
    pub struct RecordingExit(pub Mutex<Vec<VmExitRequest>>);

    impl ExitHandler for RecordingExit {
        fn request_exit(&self, req: VmExitRequest) {
            self.0.lock().unwrap().push(req);
        }
    }
}
