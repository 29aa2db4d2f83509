//! minivmm: a small VMM for KVM guests with an emulated VT-d IOMMU and VFIO passthrough.

mod cli;
mod console;
mod control;
mod cpuid;
mod event_loop;
mod exit;
mod interrupts;
mod iommu;
#[allow(dead_code)]
mod layout;
mod memory;
mod terminal;
mod vcpu;
mod vfio;
mod vm;

use clap::Parser;

fn main() {
    // Diagnostics go to stderr; RUST_LOG=info (or debug) shows more.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,vfio_ioctls=error"),
    )
    .format_timestamp_millis()
    .init();
    let cli = cli::Cli::parse();
    let code = match vm::Vm::build(&cli).and_then(vm::Vm::run) {
        Ok(reason) => {
            if let Some(msg) = reason.message() {
                eprintln!("minivmm: {msg}");
            }
            reason.exit_status()
        }
        Err(e) => {
            eprintln!("minivmm: error: {e}");
            1
        }
    };
    std::process::exit(code);
}
