//! Device models for minivmm. Every model is a synchronous state machine behind the narrow
//! [`bus::BusDevice`] trait; side effects leave through small injected traits
//! ([`interrupt::MsiTrigger`], [`interrupt::IrqLine`]) so tests can watch them.

pub mod acpi_ged;
pub mod acpi_pm;
pub mod bus;
pub mod cmos;
pub mod debug_exit;
pub mod debugcon;
pub mod dma;
pub mod edu;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod fw_cfg;
pub mod i8042;
pub mod interrupt;
pub mod ioapic;
pub mod lpc;
pub mod pci;
pub mod pvpanic;
pub mod quiesce;
pub mod serial;
pub mod vfio;
pub mod virtio;
pub mod vm_control;

pub use iommu::Bdf;

/// Called first thing on every thread a device model starts, with the thread's name: the VMM
/// puts the thread's seccomp sandbox on there. Unset (tests), nothing happens.
static THREAD_START_HOOK: std::sync::OnceLock<fn(&str)> = std::sync::OnceLock::new();

/// Sets the hook device threads run as they start (the first call wins).
pub fn set_thread_start_hook(hook: fn(&str)) {
    let _ = THREAD_START_HOOK.set(hook);
}

/// Runs the thread-start hook for the calling thread, named `name`.
pub(crate) fn thread_started(name: &str) {
    if let Some(hook) = THREAD_START_HOOK.get() {
        hook(name);
    }
}
