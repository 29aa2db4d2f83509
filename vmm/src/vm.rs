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
    kvm_enable_cap, CpuId, KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API, KVM_MAX_CPUID_ENTRIES,
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
    #[error("--bios {}: {reason}", path.display())]
    Bios {
        path: std::path::PathBuf,
        reason: String,
    },
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
    /// The firmware image's read-only mapping (firmware boot).
    _firmware: Option<GuestMemoryMmap>,
    /// Each vCPU's state as created, when a reset is a VM reset (firmware boot without
    /// --no-reboot); empty otherwise.
    snapshots: Vec<vcpu::reset::ResetState>,
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

/// Creates the vCPUs, the first one set up to enter the kernel as `boot` says (None: at the
/// firmware's reset vector).
fn create_vcpus(
    supported: &CpuId,
    vm: &VmFd,
    cpus: u32,
    boot: Option<&firmware::BootCpuState>,
) -> Result<Vec<kvm_ioctls::VcpuFd>, VmError> {
    let mut vcpus = Vec::new();
    for id in 0..cpus {
        let fd = vm
            .create_vcpu(id.into())
            .map_err(|e| VmError::Kvm("KVM_CREATE_VCPU", e))?;
        let start = match (id, boot) {
            (0, Some(b)) => vcpu::Start::Entry(b),
            (0, None) => vcpu::Start::ResetVector,
            _ => vcpu::Start::WaitForSipi,
        };
        vcpu::configure(&fd, id, cpus, supported, start)?;
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
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        // The firmware's 64-bit PCI window follows the guest's address width.
        let mut cfg = cfg.clone();
        if let crate::config::BootSource::Firmware(f) = &mut cfg.boot {
            f.phys_bits = Some(crate::cpuid::phys_bits(supported.as_slice()));
        }
        let cfg = &cfg;
        let slots = Arc::new(MemSlots::new(kvm.get_nr_memslots())?);
        let mem = memory::create(&cfg.memory)?;
        memory::register(&vm, &mem, &slots)?;

        let (control, stopped) = VmControl::new().map_err(|e| VmError::EventLoop(e.to_string()))?;
        let control = Arc::new(control);
        {
            let control = control.clone();
            crate::lifecycle::on_panic_stop(move |reason| control.stop(reason));
        }
        let image = match &cfg.boot {
            crate::config::BootSource::Firmware(f) => Some(read_firmware(&f.image)?),
            crate::config::BootSource::Kernel(_) => None,
        };
        let firmware_mem = match &image {
            Some(image) => {
                if !kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
                    return Err(VmError::KvmCapability("KVM_CAP_READONLY_MEM"));
                }
                Some(memory::map_firmware(&vm, &slots, image)?)
            }
            None => None,
        };
        let mut dm = DeviceManager::create(
            vm.clone(),
            &mem,
            slots.clone(),
            control.clone(),
            cfg,
            &hosts,
        )?;
        let prt = dm.finish()?;
        let acpi = acpi_config(cfg, &prt);
        let boot = match &cfg.boot {
            crate::config::BootSource::Kernel(k) => {
                let rsdp =
                    acpi::create_acpi_tables(&mem, GuestAddress(ACPI_START), ACPI_SIZE, &acpi)?;
                let boot = firmware::load(
                    &mem,
                    &BootConfig {
                        kernel: &k.kernel,
                        initramfs: k.initramfs.as_deref(),
                        cmdline: &k.cmdline,
                        layout: &boot_layout(cfg.memory.ram_ranges()),
                        rsdp: Some(rsdp),
                    },
                )?;
                firmware::reset_vector::write(
                    &mem,
                    ACPI_PM_PORT + devices::acpi_pm::RESET_OFFSET as u16,
                    devices::acpi_pm::RESET_VALUE,
                )?;
                Some(boot)
            }
            crate::config::BootSource::Firmware(_) => {
                // The firmware loads the tables from fw_cfg (QEMU's linker/loader).
                let files = acpi::loader::build(&acpi);
                dm.add_fw_cfg_file(acpi::loader::TABLES_FILE, files.tables)?;
                dm.add_fw_cfg_file(acpi::loader::RSDP_FILE, files.rsdp)?;
                dm.add_fw_cfg_file(acpi::loader::LOADER_FILE, files.loader)?;
                None
            }
        };
        crate::device_manager::stop_point()?;
        let vcpus = create_vcpus(&supported, &vm, cfg.cpus, boot.as_ref())?;
        let snapshots = if cfg.firmware() && !cfg.no_reboot {
            vcpus
                .iter()
                .map(vcpu::reset::ResetState::take)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| VmError::Kvm("reading the vCPU reset state", e))?
        } else {
            Vec::new()
        };
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
            _firmware: firmware_mem,
            snapshots,
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
        if let Some(c) = self.devices.debugcon() {
            c.flush_now();
        }
    }

    /// Starts one thread per vCPU; each sandboxes itself first, then runs its vCPU until
    /// the stop flag or an exit ends it.
    fn spawn_vcpus(&mut self, ctx: &Arc<VcpuContext>) -> Result<Vec<JoinHandle<()>>, VmError> {
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut snapshots = std::mem::take(&mut self.snapshots).into_iter();
        for (id, fd) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let ctx = Arc::clone(ctx);
            let snapshot = snapshots.next();
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
                            vcpu::run(fd, id as u32, &ctx, snapshot)
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

    /// A VM reset (firmware boot): every vCPU parked out of KVM_RUN, then released: vCPU 0
    /// resets the devices, each vCPU goes back to its reset state. Guest RAM is kept. Resets the guest asked for
    /// again meanwhile (OVMF follows 0xCF9 with 0x64 <- 0xFE) are this one.
    fn reset_vm(
        &self,
        sync: &vcpu::reset::ResetSync,
        threads: &[JoinHandle<()>],
        stop: &AtomicBool,
    ) -> Result<(), VmError> {
        log::info!("VM reset: the firmware runs again");
        let n = sync.ask();
        while sync.parked() < threads.len() {
            if threads.iter().any(|t| t.is_finished()) || stop.load(Ordering::Acquire) {
                return Err(VmError::EventLoop(
                    "a vCPU stopped during a VM reset".into(),
                ));
            }
            for t in threads {
                let _ = t.kill(SIGRTMIN());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        while let Ok(r) = self.stopped.try_recv() {
            if !matches!(r, StopReason::Reset | StopReason::HostReset) {
                // Anything else asked meanwhile still stops the VM.
                self.control.stop(r);
                break;
            }
        }
        sync.release(n);
        Ok(())
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
        let reset =
            (!self.snapshots.is_empty()).then(|| Arc::new(vcpu::reset::ResetSync::default()));
        let ctx = Arc::new(VcpuContext {
            device_reset: reset
                .as_ref()
                .map(|_| Arc::new(self.devices.reset_handle())),
            reset: reset.clone(),
            pio: self.devices.pio().clone(),
            mmio: self.devices.mmio().clone(),
            eoi: Arc::new(IoapicEoi(self.devices.ioapic().clone())),
            stop: stop.clone(),
            stopped: self.control.sender(),
            dump: dump.clone(),
            exits: self.devices.exit_costs().clone(),
            drhd: self.devices.drhd_range(),
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
        loop {
            if stopping.load(Ordering::Acquire) {
                // A reset request with a VM reset to do: do it and go on.
                let Some(sync) = &reset else { break };
                match self.stopped.try_recv() {
                    Ok(r @ (StopReason::Reset | StopReason::HostReset)) => {
                        self.reset_vm(sync, &threads, &stop)?;
                        // The monitor sent its own RESET when it asked (host-qmp-system-reset).
                        if r == StopReason::Reset {
                            self.emit_event(
                                "RESET",
                                serde_json::json!({ "guest": true, "reason": "guest-reset" }),
                            );
                        }
                        stopping.store(false, Ordering::Release);
                        continue;
                    }
                    Ok(other) => {
                        signalled = Some(other);
                        break;
                    }
                    // A wake for a request the reset already took (OVMF follows 0xCF9 with
                    // 0x64 <- 0xFE): every vCPU still runs.
                    Err(_) if !threads.iter().any(|t| t.is_finished()) => {
                        stopping.store(false, Ordering::Release);
                        continue;
                    }
                    Err(_) => break,
                }
            }
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

/// Reads a firmware image: a whole number of 4 KiB pages, at most what fits between KVM's
/// pages and 4 GiB (16 MiB; OVMF.fd is 2 MiB, OVMF_CODE_4M.fd 3.5 MiB).
fn read_firmware(path: &std::path::Path) -> Result<Vec<u8>, VmError> {
    let bad = |reason: String| VmError::Bios {
        path: path.to_path_buf(),
        reason,
    };
    let image = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let len = image.len() as u64;
    if len == 0 || !len.is_multiple_of(0x1000) || len > FW_IMAGE_MAX {
        return Err(bad(format!(
            "the image is {len} bytes; expected a multiple of 4 KiB up to {} MiB",
            FW_IMAGE_MAX >> 20
        )));
    }
    Ok(image)
}

impl Vm {
    /// Sends a QMP event to the connected clients, if there is a monitor.
    fn emit_event(&self, name: &'static str, data: serde_json::Value) {
        if let Some((server, _)) = &self.server {
            server.events.emit(name, Some(data));
        }
    }

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
