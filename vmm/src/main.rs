//! minivmm: a small VMM for KVM guests with an emulated VT-d IOMMU and VFIO passthrough.

mod cli;
mod config;
mod console;
mod control;
mod cpuid;
mod device_manager;
mod event_loop;
mod exit;
mod exit_costs;
mod interrupts;
mod iommu;
mod layout;
mod lifecycle;
mod memory;
mod options;
mod passt;
mod qmp;
mod seccomp;
mod state;
mod terminal;
mod vcpu;
mod vfio;
mod vm;

fn main() {
    // Diagnostics go to stderr; RUST_LOG=info (or debug) shows more.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,vfio_ioctls=error"),
    )
    .format_timestamp_millis()
    .init();
    lifecycle::install_panic_hook();
    // Before anything is set up: a stop signal during setup (opening and resetting VFIO
    // functions, mapping guest RAM for them) also ends the VMM in order.
    if let Err(e) = lifecycle::catch_stop_signals() {
        eprintln!("minivmm: error: cannot catch stop signals: {e}");
        std::process::exit(1);
    }
    let config = cli::parse();
    if let Err(e) = seccomp::set_mode(config.seccomp) {
        eprintln!("minivmm: error: {e}");
        std::process::exit(1);
    }
    if let Err(e) = lifecycle::start_watchdog() {
        eprintln!("minivmm: error: cannot start a thread: {e}");
        std::process::exit(1);
    }
    let run = std::panic::catch_unwind(|| {
        config.validate()?;
        vm::Vm::build(&config).and_then(vm::Vm::run)
    });
    let reason = match run {
        Ok(Ok(reason)) => reason,
        // A setup step a stop signal interrupted fails; the signal is the reason.
        Ok(Err(e)) => match lifecycle::stop_signal() {
            Some(sig) => exit::StopReason::Signal(sig),
            None => exit::StopReason::Error(e.to_string()),
        },
        // The main thread panicked: the hook recorded the line.
        Err(_) => exit::StopReason::Error(
            lifecycle::first_panic().unwrap_or_else(|| "the main thread panicked".into()),
        ),
    };
    if let Some(msg) = reason.message() {
        eprintln!("minivmm: {msg}");
    }
    std::process::exit(reason.exit_status());
}
