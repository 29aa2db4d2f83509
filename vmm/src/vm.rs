//! Building and running a VM: KVM with a split irqchip, guest RAM, devices on the buses, the
//! boot vCPU state, vCPU threads, and an orderly stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::bus::lock;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use firmware::BootConfig;
use kvm_bindings::{
    kvm_enable_cap, KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::config::{SerialConfig, VmConfig};
use crate::control::VmControl;
use crate::device_manager::{acpi_config, DeviceManager, DeviceManagerError, IoapicEoi};
use crate::event_loop::{StdinHandler, StopHandler};
use crate::exit::StopReason;
use crate::layout::*;
use crate::memory::{self, MemSlots, MemoryError};
use crate::qmp::commands::CpuInfo;
use crate::qmp::machine::{MachineState, VmMachine};
use crate::qmp::server::{ControlServer, RequestKind, WakeHandler};
use crate::seccomp::ThreadClass;
use crate::terminal::RawTerminal;
use crate::vcpu::{self, VcpuContext, VcpuError};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Cannot open /dev/kvm: {0} (is KVM available, and may this user use it?)")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("KVM lacks {0}, which minivmm needs")]
    KvmCapability(&'static str),
    #[error("KVM: {0} failed: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Firmware(#[from] firmware::FirmwareError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    #[error("ACPI: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("Event loop: {0}")]
    EventLoop(String),
    #[error("Cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("--vfio: {0}")]
    HostDevice(#[from] devices::vfio::HostDeviceError),
    #[error("{0}")]
    Sandbox(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Control(#[from] crate::qmp::server::ServerError),
}

/// KVM_X2APIC_API flags (Documentation/virt/kvm/api.rst 7.13).
const KVM_X2APIC_API_USE_32BIT_IDS: u64 = 1 << 0;
const KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK: u64 = 1 << 1;
/// Set by SIGUSR1: print the interrupt and IOMMU state.
static DUMP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// A built VM, ready to run.
pub struct Vm {
    vm: Arc<VmFd>,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    _mem: GuestMemoryMmap,
    devices: DeviceManager,
    stdin: bool,
    control: Arc<VmControl>,
    stopped: Receiver<StopReason>,
    /// The QMP and monitor sockets, and the eventfd their requests wake the loop with.
    server: Option<(ControlServer, vmm_sys_util::eventfd::EventFd)>,
    /// What the monitor shows and keeps (run state, vCPU threads, RAM).
    machine: MachineState,
    vcpu_threads: Arc<Mutex<Vec<CpuInfo>>>,
}

/// Opens KVM and creates a VM with a split irqchip, x2APIC IDs, and KVM's TSS and identity
/// map where the address map puts them.
fn create_vm() -> Result<(Kvm, Arc<VmFd>), VmError> {
    let kvm = Kvm::new().map_err(VmError::KvmOpen)?;
    if !kvm.check_extension(kvm_ioctls::Cap::SplitIrqchip) {
        return Err(VmError::KvmCapability("KVM_CAP_SPLIT_IRQCHIP"));
    }
    let vm = Arc::new(
        kvm.create_vm()
            .map_err(|e| VmError::Kvm("KVM_CREATE_VM", e))?,
    );
    vm.set_tss_address(KVM_TSS_START as usize)
        .map_err(|e| VmError::Kvm("KVM_SET_TSS_ADDR", e))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
        .map_err(|e| VmError::Kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = IOAPIC_NUM_PINS as u64;
    vm.enable_cap(&cap)
        .map_err(|e| VmError::Kvm("KVM_ENABLE_CAP(SPLIT_IRQCHIP)", e))?;
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X2APIC_API,
        ..Default::default()
    };
    cap.args[0] = KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK;
    vm.enable_cap(&cap)
        .map_err(|e| VmError::Kvm("KVM_ENABLE_CAP(X2APIC_API)", e))?;
    Ok((kvm, vm))
}

/// Creates the vCPUs, the first one set up to enter the kernel as `boot` says.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    cpus: u32,
    boot: &firmware::BootCpuState,
) -> Result<Vec<kvm_ioctls::VcpuFd>, VmError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    let mut vcpus = Vec::new();
    for id in 0..cpus {
        let fd = vm
            .create_vcpu(id.into())
            .map_err(|e| VmError::Kvm("KVM_CREATE_VCPU", e))?;
        vcpu::configure(&fd, id, cpus, &supported, (id == 0).then_some(boot))?;
        vcpus.push(fd);
    }
    Ok(vcpus)
}

impl Vm {
    pub fn build(cfg: &VmConfig) -> Result<Vm, VmError> {
        devices::set_thread_start_hook(crate::seccomp::device_thread_started);
        // Host devices are checked before anything is set up.
        let hosts = cfg
            .passthrough
            .iter()
            .map(|s| devices::vfio::check(s))
            .collect::<Result<Vec<_>, _>>()?;
        let (kvm, vm) = create_vm()?;
        let slots = Arc::new(MemSlots::new(kvm.get_nr_memslots())?);
        let mem = memory::create(&cfg.memory)?;
        memory::register(&vm, &mem, &slots)?;

        let (control, stopped) = VmControl::new().map_err(|e| VmError::EventLoop(e.to_string()))?;
        let control = Arc::new(control);
        {
            let control = control.clone();
            crate::lifecycle::on_panic_stop(move |reason| control.stop(reason));
        }
        let mut dm = DeviceManager::create(vm.clone(), &mem, slots, control.clone(), cfg, &hosts)?;
        let prt = dm.finish()?;
        let rsdp = acpi::create_acpi_tables(
            &mem,
            GuestAddress(ACPI_START),
            ACPI_SIZE,
            &acpi_config(cfg, &prt),
        )?;
        let boot = firmware::load(
            &mem,
            &BootConfig {
                kernel: &cfg.boot.kernel,
                initramfs: cfg.boot.initramfs.as_deref(),
                cmdline: &cfg.boot.cmdline,
                layout: &boot_layout(cfg.memory.ram_ranges()),
                rsdp: Some(rsdp),
            },
        )?;
        firmware::reset_vector::write(
            &mem,
            ACPI_PM_PORT + devices::acpi_pm::RESET_OFFSET as u16,
            devices::acpi_pm::RESET_VALUE,
        )?;
        crate::device_manager::stop_point()?;
        let vcpus = create_vcpus(&kvm, &vm, cfg.cpus, &boot)?;
        let server =
            crate::qmp::server::start(cfg.control.qmp.as_ref(), cfg.control.monitor.as_ref())?;
        Ok(Vm {
            server,
            machine: MachineState {
                ram: cfg.memory.ram_ranges(),
                ..Default::default()
            },
            vcpu_threads: Arc::default(),
            vm,
            vcpus,
            _mem: mem,
            devices: dm,
            stdin: matches!(cfg.serial, SerialConfig::Stdio),
            control,
            stopped,
        })
    }

    /// What the guest printed so far reaches the console.
    fn flush_console(&self) {
        if let Some(c) = self.devices.console() {
            c.flush_now();
        }
    }

    /// Starts one thread per vCPU; each sandboxes itself first, then runs its vCPU until
    /// the stop flag or an exit ends it.
    fn spawn_vcpus(&mut self, ctx: &Arc<VcpuContext>) -> Result<Vec<JoinHandle<()>>, VmError> {
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (id, fd) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let ctx = Arc::clone(ctx);
            let control = self.control.clone();
            let tids = self.vcpu_threads.clone();
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let name = format!("vcpu{id}");
                    // SAFETY: gettid has no arguments and cannot fail.
                    let thread_id = unsafe { libc::gettid() };
                    lock(&tids).push(CpuInfo {
                        index: id as u32,
                        thread_id,
                    });
                    crate::lifecycle::test_fault_point(&name);
                    match crate::seccomp::sandbox(ThreadClass::Vcpu) {
                        Ok(()) => {
                            crate::lifecycle::test_fault_point(&format!("{name}-sandboxed"));
                            vcpu::run(fd, id as u32, &ctx)
                        }
                        Err(e) => drop(ctx.stopped.send(StopReason::Error(e.to_string()))),
                    }
                    control.notify();
                })
                .map_err(VmError::Thread)?;
            threads.push(t);
        }
        Ok(threads)
    }

    /// Runs the VM until it stops, and returns why.
    pub fn run(mut self) -> Result<StopReason, VmError> {
        install_signal_handlers()?;
        // A stop signal during setup ends the VM before any vCPU runs.
        if let Some(sig) = crate::lifecycle::stop_signal() {
            return Ok(StopReason::Signal(sig));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let dump = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ctx = Arc::new(VcpuContext {
            pio: self.devices.pio().clone(),
            mmio: self.devices.mmio().clone(),
            eoi: Arc::new(IoapicEoi(self.devices.ioapic().clone())),
            stop: stop.clone(),
            stopped: self.control.sender(),
            dump: dump.clone(),
        });
        if let Some((server, _)) = &self.server {
            // Without wait=off the guest starts once the first client is there.
            server.wait_for_client(|| crate::lifecycle::stop_signal().is_some());
        }
        let threads = self.spawn_vcpus(&ctx)?;

        let stopping = Arc::new(AtomicBool::new(false));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
            .map_err(|e| VmError::EventLoop(format!("{e:?}")))?;
        let wake = self
            .control
            .wake
            .try_clone()
            .map_err(|e| VmError::EventLoop(e.to_string()))?;
        em.add_subscriber(Arc::new(Mutex::new(StopHandler {
            fd: wake,
            stopping: stopping.clone(),
        })));
        if let Some((_, wake)) = &self.server {
            let wake = wake
                .try_clone()
                .map_err(|e| VmError::EventLoop(e.to_string()))?;
            em.add_subscriber(Arc::new(Mutex::new(WakeHandler(wake))));
        }
        let _raw = self.stdin.then(RawTerminal::enable);
        let stdin = match (self.devices.serial(), self.stdin) {
            (Some(s), true) => {
                let h = Arc::new(Mutex::new(StdinHandler::new(s.clone())));
                em.add_subscriber(h.clone());
                Some(h)
            }
            _ => None,
        };
        // Everything the loop and the stop need is open: the main thread's sandbox goes on
        // (the device threads took theirs as they started).
        crate::seccomp::check().map_err(VmError::Sandbox)?;
        crate::seccomp::sandbox(ThreadClass::Main).map_err(|e| VmError::Sandbox(e.to_string()))?;
        let mut signalled = None;
        while !stopping.load(Ordering::Acquire) {
            if let Some(sig) = crate::lifecycle::stop_signal() {
                signalled = Some(StopReason::Signal(sig));
                break;
            }
            em.run_with_timeout(50)
                .map_err(|e| VmError::EventLoop(format!("{e:?}")))?;
            self.flush_console();
            if let Some(h) = &stdin {
                lock(h).flush_pending();
            }
            self.serve_control(&threads);
            if DUMP_REQUESTED.swap(false, Ordering::AcqRel) {
                let state = self.devices.state();
                eprint!("{}", crate::state::render(&state));
                // The same view as x-query-vtd and `info iommu`.
                if let Some(v) = crate::qmp::vtd::view(&state) {
                    eprint!("{}", crate::qmp::vtd::render(&v));
                }
                // Each vCPU prints where it is once it leaves KVM_RUN.
                dump.fetch_add(1, Ordering::AcqRel);
                for t in &threads {
                    let _ = t.kill(SIGRTMIN());
                }
            }
        }
        let reason = signalled.unwrap_or_else(|| {
            self.stopped
                .try_recv()
                .unwrap_or_else(|_| StopReason::Error("all vCPUs stopped unexpectedly".into()))
        });
        // From here on the stop is bounded: a vCPU held inside a device handler, or a device
        // that hangs while released, does not keep minivmm up past the deadline.
        crate::lifecycle::arm_stop_deadline(&reason);
        if let Some((server, _)) = &self.server {
            for (name, data) in crate::qmp::final_events(&reason) {
                server.events.emit(name, Some(data));
            }
            // The clients get the events before the process ends (bounded).
            server.events.flush(Duration::from_millis(500));
        }
        self.flush_console();
        log::info!(
            "state at exit:\n{}",
            crate::state::render(&self.devices.state())
        );

        stop_vcpus(&stop, threads);
        drop(self.vm);
        Ok(reason)
    }
}

impl Vm {
    /// Answers the monitor's requests that came in since the last loop turn.
    fn serve_control(&mut self, vcpus: &[JoinHandle<()>]) {
        let Some((server, _)) = &self.server else {
            return;
        };
        while let Ok(req) = server.requests.try_recv() {
            self.machine.cpus = lock(&self.vcpu_threads).clone();
            self.machine.cpus.sort_by_key(|c| c.index);
            let mut m = VmMachine {
                state: &mut self.machine,
                devices: &self.devices,
                vcpus,
                control: &self.control,
                events: &server.events,
            };
            let answer = match req.kind {
                RequestKind::Qmp { name, args } => {
                    crate::qmp::commands::execute(&mut m, &name, &args)
                }
                RequestKind::Hmp(line) => Ok(serde_json::Value::String(crate::qmp::hmp::run(
                    &mut m, &line,
                ))),
            };
            let _ = req.reply.send(answer);
        }
    }
}

/// SIGRTMIN kicks a vCPU out of KVM_RUN; SIGUSR1 asks for the state dump.
fn install_signal_handlers() -> Result<(), VmError> {
    extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(SIGRTMIN(), kick)
        .map_err(|e| VmError::EventLoop(format!("signal handler: {e}")))?;
    extern "C" fn dump_request(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        DUMP_REQUESTED.store(true, Ordering::Release);
    }
    register_signal_handler(libc::SIGUSR1, dump_request)
        .map_err(|e| VmError::EventLoop(format!("signal handler: {e}")))
}

/// Sets the stop flag and kicks every vCPU thread out of KVM_RUN until it has ended.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    // A paused VM's threads wait at the gate: let them through to see the stop.
    devices::quiesce::vm_gate().release();
    for t in &threads {
        while !t.is_finished() {
            let _ = t.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for t in threads {
        let _ = t.join();
    }
}
