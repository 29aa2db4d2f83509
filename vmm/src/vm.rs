//! Building and running a VM: KVM with a split irqchip, guest RAM, devices on the buses, the
//! boot vCPU state, vCPU threads, and an orderly stop.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::acpi_pm::{AcpiPm, ACPI_PM_SIZE};
use devices::bus::{lock, Bus, BusError};
use devices::debug_exit::DebugExit;
use devices::dma::DmaAccess;
use devices::edu::EduDevice;
use devices::fw_cfg::{FwCfg, FW_CFG_PORT_SIZE};
use devices::i8042::{I8042Reset, I8042_BASE, I8042_SIZE};
use devices::interrupt::{InterruptRoutes, IrqfdRouting, MsiTrigger};
use devices::ioapic::{Ioapic, IoapicPin};
use devices::pci::host_bridge::HostBridge;
use devices::pci::root::PciError;
use devices::pci::{intx_gsi, PciConfigIo, PciConfigMmio, PciRoot, PciWindow};
use devices::pvpanic::{PvPanic, PVPANIC_PORT};
use devices::serial::{SerialDevice, SERIAL_PORT_SIZE};
use devices::Bdf;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use firmware::BootConfig;
use kvm_bindings::{
    kvm_enable_cap, KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::config::{DeviceConfig, SerialConfig, VmConfig};
use crate::console::ConsoleOut;
use crate::control::VmControl;
use crate::event_loop::{StdinHandler, StopHandler};
use crate::exit::{EoiHandler, StopReason};
use crate::interrupts::KvmMsi;
use crate::iommu::{DirectDma, DrhdRegisters, Iommu, IommuDma, RemappedMsi, UnitInterrupts};
use crate::layout::*;
use crate::memory::{self, MemoryError};
use crate::seccomp::ThreadClass;
use crate::terminal::RawTerminal;
use crate::vcpu::{self, VcpuContext, VcpuError};
use crate::vfio::KvmMmioMapper;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Cannot open /dev/kvm: {0} (is KVM available, and may this user use it?)")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM lacks {0}, which minivmm needs")]
    KvmCapability(&'static str),
    #[error("KVM: {0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Firmware(#[from] firmware::FirmwareError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("Device layout: {0}")]
    Bus(#[from] BusError),
    #[error("PCI: {0}")]
    Pci(#[from] PciError),
    #[error("ACPI: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("Cannot open serial output {0}: {1}")]
    SerialFile(std::path::PathBuf, std::io::Error),
    #[error("Event loop: {0}")]
    EventLoop(String),
    #[error("Cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("--vfio: {0}")]
    HostDevice(#[from] devices::vfio::HostDeviceError),
    #[error(transparent)]
    Vfio(#[from] devices::vfio::VfioPciError),
    #[error(transparent)]
    VfioDma(#[from] crate::vfio::VfioDmaError),
    #[error("{0}")]
    Sandbox(String),
    #[error("Stopped by signal {0} during setup")]
    Stopped(i32),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// KVM_X2APIC_API flags (Documentation/virt/kvm/api.rst 7.13).
const KVM_X2APIC_API_USE_32BIT_IDS: u64 = 1 << 0;
const KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK: u64 = 1 << 1;
/// What the state dump (SIGUSR1, and at exit with RUST_LOG=info) shows.
struct StateView {
    ioapic: Arc<Mutex<Ioapic>>,
    iommu: Option<Arc<Iommu>>,
    kvm: Arc<KvmMsi>,
    passthrough: Vec<crate::vfio::Attached>,
}

impl StateView {
    fn dump(&self) -> String {
        let mut s = lock(&self.ioapic).dump();
        if let Some(i) = &self.iommu {
            s += &i.state_dump();
        }
        for p in &self.passthrough {
            s += &p.dump();
        }
        for (gsi, address, data) in self.kvm.irqfd_routes() {
            s += &format!("  KVM irqfd route: GSI {gsi} -> {address:#x}/{data:#x}\n");
        }
        s
    }
}

/// Set by SIGUSR1: print the interrupt and IOMMU state.
static DUMP_REQUESTED: AtomicBool = AtomicBool::new(false);
/// The IOAPIC's level-triggered routes, recomputed after interrupt entry invalidations.
struct IoapicRoutes(Arc<Mutex<Ioapic>>);

impl InterruptRoutes for IoapicRoutes {
    fn refresh(&self) {
        lock(&self.0).refresh_routes();
    }
}

/// The IOAPIC as the vCPUs' EOI target.
struct IoapicEoi(Arc<Mutex<Ioapic>>);

impl EoiHandler for IoapicEoi {
    fn end_of_interrupt(&self, vector: u8) {
        lock(&self.0).end_of_interrupt(vector);
    }
}

/// A built VM, ready to run.
pub struct Vm {
    vm: Arc<VmFd>,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    _mem: GuestMemoryMmap,
    pio: Bus,
    mmio: Bus,
    ioapic: Arc<Mutex<Ioapic>>,
    view: StateView,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    console: Option<ConsoleOut>,
    stdin: bool,
    control: Arc<VmControl>,
    stopped: Receiver<StopReason>,
}

fn acpi_config(cfg: &VmConfig, prt: &[devices::pci::PrtRoute]) -> acpi::AcpiConfig {
    use devices::acpi_pm::{
        RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET,
    };
    let port = |off: u64| ACPI_PM_PORT + off as u16;
    acpi::AcpiConfig {
        cpus: cfg.cpus,
        ioapic: acpi::IoApicInfo {
            id: IOAPIC_ID,
            address: IOAPIC_START as u32,
            gsi_base: 0,
        },
        pm: acpi::PmRegisters {
            sleep_control_port: port(SLEEP_CONTROL_OFFSET),
            sleep_status_port: port(SLEEP_STATUS_OFFSET),
            reset_port: port(RESET_OFFSET),
            reset_value: RESET_VALUE,
        },
        dsdt: acpi::DsdtConfig {
            pci: acpi::PciHostInfo {
                ecam_base: ECAM_START,
                ecam_size: ECAM_SIZE,
                end_bus: 0,
                io_base: PCI_IO_START,
                io_size: PCI_IO_SIZE,
                mmio32_base: MMIO32_START as u32,
                mmio32_size: MMIO32_SIZE as u32,
                mmio64_base: MMIO64_START,
                mmio64_size: MMIO64_SIZE,
                prt: prt
                    .iter()
                    .map(|r| acpi::PrtEntry {
                        device: r.device,
                        pin: r.pin,
                        gsi: r.gsi,
                    })
                    .collect(),
            },
            serial: (cfg.serial != SerialConfig::Off).then_some((COM1_PORT, COM1_IRQ)),
            pvpanic: Some(PVPANIC_PORT),
            pm_ports: (ACPI_PM_PORT, ACPI_PM_SIZE as u8),
            s5_sleep_type: S5_SLEEP_TYPE,
        },
        dmar: cfg.iommu.map(|c| acpi::DmarConfig {
            address_width: c.aw_bits,
            interrupt_remapping: c.interrupt_remapping,
            register_base: DRHD_START,
            ioapic_id: IOAPIC_ID,
            ioapic_bus: IOAPIC_SOURCE.bus(),
            ioapic_device: IOAPIC_SOURCE.device(),
            ioapic_function: IOAPIC_SOURCE.function(),
            device_iotlb: c.device_iotlb,
        }),
    }
}

/// Setup's check for a stop signal between its longer steps: what was set up so far is
/// dropped on the way out, which releases passed-through devices in order.
fn stop_point() -> Result<(), VmError> {
    match crate::lifecycle::stop_signal() {
        Some(sig) => Err(VmError::Stopped(sig)),
        None => Ok(()),
    }
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

        let mem = memory::create(&cfg.memory)?;
        memory::register(&vm, &mem)?;

        let (control, stopped) = VmControl::new().map_err(|e| VmError::EventLoop(e.to_string()))?;
        let control = Arc::new(control);
        {
            let control = control.clone();
            crate::lifecycle::on_panic_stop(move |reason| control.stop(reason));
        }
        let kvm_routes: Arc<KvmMsi> = Arc::new(KvmMsi::new(vm.clone()));
        let kvm_msi: Arc<dyn MsiTrigger> = kvm_routes.clone();
        let iommu = cfg.iommu.map(|cfg| {
            let unit = iommu::RemappingUnit::new(cfg, Box::new(UnitInterrupts(kvm_msi.clone())));
            Iommu::new(unit, mem.clone())
        });
        // With an IOMMU every interrupt passes interrupt remapping on its way to KVM, and
        // irqfd routes hold remapped messages.
        let (msi, routing): (Arc<dyn MsiTrigger>, Arc<dyn IrqfdRouting>) = match &iommu {
            Some(i) => {
                let r = Arc::new(RemappedMsi {
                    iommu: i.clone(),
                    out: kvm_msi.clone(),
                    routing: kvm_routes.clone(),
                });
                (r.clone(), r)
            }
            None => (kvm_msi.clone(), kvm_routes.clone()),
        };
        let ioapic = Arc::new(Mutex::new(Ioapic::new(
            IOAPIC_ID,
            IOAPIC_SOURCE,
            msi.clone(),
        )));

        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        mmio.insert(IOAPIC_START, IOAPIC_SIZE, ioapic.clone())?;
        if let Some(i) = &iommu {
            i.add_interrupt_routes(Arc::new(IoapicRoutes(ioapic.clone())));
            mmio.insert(
                DRHD_START,
                DRHD_SIZE,
                Arc::new(Mutex::new(DrhdRegisters(i.clone()))),
            )?;
        }
        let (serial, console) = match &cfg.serial {
            SerialConfig::Off => (None, None),
            mode => {
                let out: Box<dyn Write + Send> = match mode {
                    SerialConfig::File(p) => {
                        Box::new(File::create(p).map_err(|e| VmError::SerialFile(p.clone(), e))?)
                    }
                    _ => Box::new(std::io::stdout()),
                };
                let console = ConsoleOut::new(out);
                let irq = Arc::new(IoapicPin {
                    ioapic: ioapic.clone(),
                    pin: COM1_IRQ as usize,
                });
                let s = Arc::new(Mutex::new(SerialDevice::new(
                    irq,
                    Box::new(console.clone()),
                )));
                pio.insert(COM1_PORT.into(), SERIAL_PORT_SIZE, s.clone())?;
                (Some(s), Some(console))
            }
        };
        pio.insert(
            ACPI_PM_PORT.into(),
            ACPI_PM_SIZE,
            Arc::new(Mutex::new(AcpiPm::new(control.clone()))),
        )?;
        pio.insert(
            FW_CFG_PORT.into(),
            FW_CFG_PORT_SIZE,
            Arc::new(Mutex::new(FwCfg::new(cfg.memory.size, cfg.cpus as u16))),
        )?;
        pio.insert(
            I8042_BASE.into(),
            I8042_SIZE,
            Arc::new(Mutex::new(I8042Reset::new(control.clone()))),
        )?;
        pio.insert(
            PVPANIC_PORT.into(),
            1,
            Arc::new(Mutex::new(PvPanic::new(control.clone()))),
        )?;
        if let Some(d) = cfg.debug_exit {
            pio.insert(
                d.iobase.into(),
                d.iosize.into(),
                Arc::new(Mutex::new(DebugExit::new(control.clone()))),
            )?;
        }

        let pci = Arc::new(Mutex::new(PciRoot::new()));
        lock(&pci).add_device(Arc::new(Mutex::new(HostBridge::new())), Some(0))?;
        let dma: Arc<dyn DmaAccess> = match &iommu {
            Some(i) => Arc::new(IommuDma(i.clone())),
            None => Arc::new(DirectDma(mem.clone())),
        };
        for (n, kind) in cfg.devices.iter().enumerate() {
            let slot = u8::try_from(n + 1)
                .ok()
                .filter(|s| usize::from(*s) < devices::pci::root::NUM_DEVICES)
                .ok_or(PciError::BusFull)?;
            let address = Bdf::new(0, slot, 0);
            let intx = Arc::new(IoapicPin {
                ioapic: ioapic.clone(),
                pin: intx_gsi(slot, 1) as usize,
            });
            let dev = match kind {
                DeviceConfig::Edu => EduDevice::new(address, dma.clone(), msi.clone(), intx),
            };
            lock(&pci).add_device(Arc::new(Mutex::new(dev)), Some(slot))?;
            log::info!("{kind:?} device at {address}");
        }
        let wiring = crate::vfio::Wiring {
            mem: &mem,
            msi: msi.clone(),
            routing,
            ioapic: &ioapic,
            iommu: iommu.as_ref(),
            mapper: Arc::new(KvmMmioMapper::new(vm.clone())),
        };
        let mut passthrough = Vec::new();
        for (n, host) in hosts.iter().enumerate() {
            let slot = u8::try_from(cfg.devices.len() + n + 1)
                .ok()
                .filter(|s| usize::from(*s) < devices::pci::root::NUM_DEVICES)
                .ok_or(PciError::BusFull)?;
            passthrough.push(crate::vfio::attach(&pci, host, slot, &wiring)?);
            stop_point()?;
        }
        pio.insert(
            PCI_CONFIG_PORT.into(),
            8,
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
        )?;
        mmio.insert(
            ECAM_START,
            ECAM_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
        )?;
        let windows = pci_windows();
        for (base, size, io) in [
            (windows.io.0, windows.io.1, true),
            (windows.mmio32.0, windows.mmio32.1, false),
            (windows.mmio64.0, windows.mmio64.1, false),
        ] {
            let bus = if io { &mut pio } else { &mut mmio };
            bus.insert(
                base,
                size,
                Arc::new(Mutex::new(PciWindow::new(pci.clone(), base, io))),
            )?;
        }
        lock(&pci).assign_resources(&windows)?;
        let prt = lock(&pci).prt_routes();

        let rsdp = acpi::create_acpi_tables(
            &mem,
            GuestAddress(ACPI_START),
            ACPI_SIZE,
            &acpi_config(cfg, &prt),
        )?;

        let ram = cfg.memory.ram_ranges();
        let layout = boot_layout(ram);
        let boot = firmware::load(
            &mem,
            &BootConfig {
                kernel: &cfg.boot.kernel,
                initramfs: cfg.boot.initramfs.as_deref(),
                cmdline: &cfg.boot.cmdline,
                layout: &layout,
                rsdp: Some(rsdp),
            },
        )?;

        firmware::reset_vector::write(
            &mem,
            ACPI_PM_PORT + devices::acpi_pm::RESET_OFFSET as u16,
            devices::acpi_pm::RESET_VALUE,
        )?;

        stop_point()?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let mut vcpus = Vec::new();
        for id in 0..cfg.cpus {
            let fd = vm
                .create_vcpu(id.into())
                .map_err(|e| VmError::Kvm("KVM_CREATE_VCPU", e))?;
            vcpu::configure(&fd, id, cfg.cpus, &supported, (id == 0).then_some(&boot))?;
            vcpus.push(fd);
        }

        Ok(Vm {
            vm,
            vcpus,
            _mem: mem,
            pio,
            mmio,
            ioapic: ioapic.clone(),
            view: StateView {
                ioapic,
                iommu,
                kvm: kvm_routes,
                passthrough,
            },
            stdin: matches!(cfg.serial, SerialConfig::Stdio),
            serial,
            console,
            control,
            stopped,
        })
    }

    /// What the guest printed so far reaches the console.
    fn flush_console(&self) {
        if let Some(c) = &self.console {
            c.flush_now();
        }
    }

    /// Runs the VM until it stops, and returns why.
    pub fn run(mut self) -> Result<StopReason, VmError> {
        extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        register_signal_handler(SIGRTMIN(), kick)
            .map_err(|e| VmError::EventLoop(format!("signal handler: {e}")))?;
        extern "C" fn dump_request(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
            DUMP_REQUESTED.store(true, Ordering::Release);
        }
        register_signal_handler(libc::SIGUSR1, dump_request)
            .map_err(|e| VmError::EventLoop(format!("signal handler: {e}")))?;
        // A stop signal during setup ends the VM before any vCPU runs.
        if let Some(sig) = crate::lifecycle::stop_signal() {
            return Ok(StopReason::Signal(sig));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let dump = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ctx = Arc::new(VcpuContext {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            eoi: Arc::new(IoapicEoi(self.ioapic.clone())),
            stop: stop.clone(),
            stopped: self.control.sender(),
            dump: dump.clone(),
        });
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (id, fd) in std::mem::take(&mut self.vcpus).into_iter().enumerate() {
            let ctx = ctx.clone();
            let control = self.control.clone();
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let name = format!("vcpu{id}");
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
        let _raw = self.stdin.then(RawTerminal::enable);
        let stdin = match (&self.serial, self.stdin) {
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
            if DUMP_REQUESTED.swap(false, Ordering::AcqRel) {
                eprint!("{}", self.view.dump());
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
        self.flush_console();
        log::info!("state at exit:\n{}", self.view.dump());

        stop.store(true, Ordering::Release);
        for t in &threads {
            while !t.is_finished() {
                let _ = t.kill(SIGRTMIN());
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for t in threads {
            let _ = t.join();
        }
        drop(self.vm);
        Ok(reason)
    }
}
