//! What each class of minivmm thread may ask of the kernel once the guest runs, as data.
//!
//! Found by running the /dev/kvm payload tests under `strace -f` (per thread, after the point
//! where the filter goes on) and by reading the code paths the payloads do not reach: VFIO
//! region access, interrupt relaying, DMA map/unmap and device release. A missing entry kills
//! a VM, so these lean generous within each group; what no thread needs after setup (open,
//! socket, exec, fork, ptrace, mount, ...) is in none.

/// How a rule restricts the arguments of its system call.
#[derive(Clone, Copy, Debug)]
pub enum Args {
    Any,
    /// ioctl: only these request numbers (argument 1).
    Ioctls(&'static [u64]),
    /// mmap, mprotect: no PROT_EXEC in the protection (argument 2).
    NoExec,
    /// fcntl: only these commands (argument 1).
    FcntlCmds(&'static [u64]),
}

/// One allowed system call.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub name: &'static str,
    pub nr: libc::c_long,
    pub args: Args,
}

const fn any(name: &'static str, nr: libc::c_long) -> Rule {
    Rule {
        name,
        nr,
        args: Args::Any,
    }
}

// ioctl request encoding (include/uapi/asm-generic/ioctl.h): nr 7:0, type 15:8, size 29:16,
// direction 31:30 (1 = write, 2 = read).
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const fn io(ty: u64, nr: u64) -> u64 {
    ioc(0, ty, nr, 0)
}
const fn iow<T>(ty: u64, nr: u64) -> u64 {
    ioc(1, ty, nr, std::mem::size_of::<T>())
}
const fn ior<T>(ty: u64, nr: u64) -> u64 {
    ioc(2, ty, nr, std::mem::size_of::<T>())
}

/// KVMIO (include/uapi/linux/kvm.h) and the KVM requests minivmm makes after setup.
const KVMIO: u64 = 0xae;
pub const KVM_RUN: u64 = io(KVMIO, 0x80);
pub const KVM_GET_REGS: u64 = ior::<kvm_bindings::kvm_regs>(KVMIO, 0x81);
pub const KVM_GET_SREGS: u64 = ior::<kvm_bindings::kvm_sregs>(KVMIO, 0x83);
pub const KVM_GET_LAPIC: u64 = ior::<kvm_bindings::kvm_lapic_state>(KVMIO, 0x8e);
pub const KVM_SIGNAL_MSI: u64 = iow::<kvm_bindings::kvm_msi>(KVMIO, 0xa5);
pub const KVM_SET_GSI_ROUTING: u64 = iow::<kvm_bindings::kvm_irq_routing>(KVMIO, 0x6a);
pub const KVM_IRQFD: u64 = iow::<kvm_bindings::kvm_irqfd>(KVMIO, 0x76);
pub const KVM_IOEVENTFD: u64 = iow::<kvm_bindings::kvm_ioeventfd>(KVMIO, 0x79);
pub const KVM_SET_USER_MEMORY_REGION: u64 =
    iow::<kvm_bindings::kvm_userspace_memory_region>(KVMIO, 0x46);
pub const KVM_SET_DEVICE_ATTR: u64 = iow::<kvm_bindings::kvm_device_attr>(KVMIO, 0xe1);
/// A VM reset (firmware boot) puts each vCPU back into its reset state from its own thread.
pub const KVM_SET_REGS: u64 = iow::<kvm_bindings::kvm_regs>(KVMIO, 0x82);
pub const KVM_SET_SREGS: u64 = iow::<kvm_bindings::kvm_sregs>(KVMIO, 0x84);
pub const KVM_SET_MSRS: u64 = iow::<kvm_bindings::kvm_msrs>(KVMIO, 0x89);
pub const KVM_SET_FPU: u64 = iow::<kvm_bindings::kvm_fpu>(KVMIO, 0x8d);
pub const KVM_SET_LAPIC: u64 = iow::<kvm_bindings::kvm_lapic_state>(KVMIO, 0x8f);
pub const KVM_SET_MP_STATE: u64 = iow::<kvm_bindings::kvm_mp_state>(KVMIO, 0x99);

/// VFIO_TYPE ';' and VFIO_BASE 100 (include/uapi/linux/vfio.h): every VFIO request is
/// _IO(VFIO_TYPE, VFIO_BASE + n).
const fn vfio(n: u64) -> u64 {
    io(b';' as u64, 100 + n)
}
pub const VFIO_GROUP_GET_STATUS: u64 = vfio(3);
pub const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio(5);
pub const VFIO_DEVICE_GET_INFO: u64 = vfio(7);
pub const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio(8);
pub const VFIO_DEVICE_GET_IRQ_INFO: u64 = vfio(9);
pub const VFIO_DEVICE_SET_IRQS: u64 = vfio(10);
pub const VFIO_DEVICE_RESET: u64 = vfio(11);
/// Also VFIO_DEVICE_PCI_HOT_RESET on a device fd (same number).
pub const VFIO_IOMMU_MAP_DMA: u64 = vfio(13);
pub const VFIO_IOMMU_UNMAP_DMA: u64 = vfio(14);

/// Terminal requests (include/uapi/asm-generic/ioctls.h): raw stdin is set and restored.
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const TCSETSW: u64 = 0x5403;
const TCSETSF: u64 = 0x5404;
const TIOCGWINSZ: u64 = 0x5413;

/// Every thread.
pub const COMMON: &[Rule] = &[
    // Memory: the allocator (brk, mmap, mremap, madvise, munmap; mprotect for glibc's
    // per-thread arenas), never executable.
    any("brk", libc::SYS_brk),
    Rule {
        name: "mmap",
        nr: libc::SYS_mmap,
        args: Args::NoExec,
    },
    Rule {
        name: "mprotect",
        nr: libc::SYS_mprotect,
        args: Args::NoExec,
    },
    any("munmap", libc::SYS_munmap),
    any("mremap", libc::SYS_mremap),
    any("madvise", libc::SYS_madvise),
    // Locks, condition variables, channels, thread join.
    any("futex", libc::SYS_futex),
    any("sched_yield", libc::SYS_sched_yield),
    // Signal handlers (the vCPU kick, SIGUSR1, stop signals, SIGSYS) and thread exit.
    any("rt_sigreturn", libc::SYS_rt_sigreturn),
    // A sleep or wait a handled signal interrupted is resumed by the kernel this way.
    any("restart_syscall", libc::SYS_restart_syscall),
    any("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    any("sigaltstack", libc::SYS_sigaltstack),
    // Time: Instant::now when the vDSO falls back, sleeps, log timestamps.
    any("clock_gettime", libc::SYS_clock_gettime),
    any("gettimeofday", libc::SYS_gettimeofday),
    any("clock_nanosleep", libc::SYS_clock_nanosleep),
    any("nanosleep", libc::SYS_nanosleep),
    // Log lines and the error line on stderr; eventfd signals.
    any("write", libc::SYS_write),
    any("writev", libc::SYS_writev),
    // Closing descriptors (eventfds of a device's vectors, at release); std checks a
    // descriptor with F_GETFD before closing it and duplicates with F_DUPFD_CLOEXEC.
    any("close", libc::SYS_close),
    Rule {
        name: "fcntl",
        nr: libc::SYS_fcntl,
        args: Args::FcntlCmds(&[libc::F_GETFD as u64, libc::F_DUPFD_CLOEXEC as u64]),
    },
    // The keys of a HashMap made on this thread.
    any("getrandom", libc::SYS_getrandom),
    any("getpid", libc::SYS_getpid),
    any("gettid", libc::SYS_gettid),
    any("exit", libc::SYS_exit),
    any("exit_group", libc::SYS_exit_group),
];

/// vCPU threads: KVM_RUN, and every device model, which runs on the vCPU that touched it.
pub const VCPU: &[Rule] = &[
    Rule {
        name: "ioctl",
        nr: libc::SYS_ioctl,
        args: Args::Ioctls(&[
            // The run loop and the SIGUSR1 state dump.
            KVM_RUN,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_GET_LAPIC,
            // A VM reset (firmware boot): the vCPU's reset state put back.
            KVM_SET_REGS,
            KVM_SET_SREGS,
            KVM_SET_MSRS,
            KVM_SET_FPU,
            KVM_SET_LAPIC,
            KVM_SET_MP_STATE,
            // Interrupts: MSIs the VMM sends, IOAPIC and irqfd routes, irqfds of vectors a
            // guest enables on a passed-through function.
            KVM_SIGNAL_MSI,
            KVM_SET_GSI_ROUTING,
            KVM_IRQFD,
            // BARs placed or moved by the guest: memory slots of passed-through functions,
            // and the ioeventfds of notification addresses that follow their BAR.
            KVM_SET_USER_MEMORY_REGION,
            KVM_IOEVENTFD,
            // A passed-through function's interrupts and reset (command, MSI/MSI-X
            // capability writes, FLR), and its DMA mappings following the guest's IOMMU.
            VFIO_DEVICE_SET_IRQS,
            VFIO_DEVICE_RESET,
            VFIO_DEVICE_GET_REGION_INFO,
            VFIO_DEVICE_GET_IRQ_INFO,
            VFIO_DEVICE_GET_INFO,
            VFIO_IOMMU_MAP_DMA,
            VFIO_IOMMU_UNMAP_DMA,
        ]),
    },
    // Trapped VFIO region accesses (config space, trapped BAR pages).
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
    any("read", libc::SYS_read),
    // Eventfds for vectors a guest enables, handed to the relay's epoll set.
    any("eventfd2", libc::SYS_eventfd2),
    any("epoll_ctl", libc::SYS_epoll_ctl),
];

/// Device threads: the VFIO interrupt relay.
pub const RELAY: &[Rule] = &[
    // Waiting on the interrupt eventfds and reading them.
    any("epoll_wait", libc::SYS_epoll_wait),
    any("epoll_pwait", libc::SYS_epoll_pwait),
    any("epoll_ctl", libc::SYS_epoll_ctl),
    any("read", libc::SYS_read),
    Rule {
        name: "ioctl",
        nr: libc::SYS_ioctl,
        args: Args::Ioctls(&[
            // Relayed interrupts reach KVM as MSIs (or IOAPIC routes), INTx is unmasked.
            KVM_SIGNAL_MSI,
            KVM_SET_GSI_ROUTING,
            KVM_IRQFD,
            VFIO_DEVICE_SET_IRQS,
        ]),
    },
];

/// Virtio device workers: wait on the queues' notification eventfds (and the stop eventfd),
/// read them, move data (getrandom for virtio-rng is in COMMON; file I/O for block devices
/// below; virtio-net polls its tap, reads frames with read, writes them with writev, which is
/// in COMMON, and sets the tap's offloads from the driver's features at each activation:
/// TUNSETOFFLOAD, the one tap ioctl after setup), and interrupt the guest: an irqfd write, or a relayed MSI (a masked
/// vector's, or the VT-d unit's fault event when a translation on this thread faults).
pub const VIRTIO: &[Rule] = &[
    any("poll", libc::SYS_poll),
    any("ppoll", libc::SYS_ppoll),
    any("epoll_wait", libc::SYS_epoll_wait),
    any("epoll_pwait", libc::SYS_epoll_pwait),
    any("read", libc::SYS_read),
    Rule {
        name: "ioctl",
        nr: libc::SYS_ioctl,
        args: Args::Ioctls(&[
            KVM_SIGNAL_MSI,
            KVM_SET_GSI_ROUTING,
            KVM_IRQFD,
            devices::virtio::net::tap::TUNSETOFFLOAD,
        ]),
    },
    // virtio-blk's I/O threads ("virtio-blk-io") on the image opened during setup: reads and
    // writes into guest memory, FLUSH, DISCARD / WRITE_ZEROES, and the zeros written when the
    // file system refuses FALLOC_FL_ZERO_RANGE.
    any("preadv", libc::SYS_preadv),
    any("pwritev", libc::SYS_pwritev),
    any("fdatasync", libc::SYS_fdatasync),
    any("fallocate", libc::SYS_fallocate),
    any("pwrite64", libc::SYS_pwrite64),
    // virtio-net over a stream socket (passt, `--net user|socket=`): frames go out with
    // sendmsg (MSG_NOSIGNAL: a peer gone is an error, not SIGPIPE), and a peer that breaks
    // the protocol has its connection shut down.
    any("sendmsg", libc::SYS_sendmsg),
    any("shutdown", libc::SYS_shutdown),
];

/// The background identity map of guest RAM for a passed-through function.
pub const DMA_MAP: &[Rule] = &[
    Rule {
        name: "ioctl",
        nr: libc::SYS_ioctl,
        // Mapping guest RAM; when that fails part way, undoing it and stopping the device
        // (fail closed: reset, then bus mastering cleared through the config region).
        args: Args::Ioctls(&[VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, VFIO_DEVICE_RESET]),
    },
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
];

/// The main thread: the event loop (stdin, the stop eventfd, kicking vCPUs, the state dump)
/// and the orderly stop, which releases the devices.
pub const MAIN: &[Rule] = &[
    any("epoll_wait", libc::SYS_epoll_wait),
    any("epoll_pwait", libc::SYS_epoll_pwait),
    any("epoll_ctl", libc::SYS_epoll_ctl),
    // stdin, the stop eventfd.
    any("read", libc::SYS_read),
    // Kicking vCPUs out of KVM_RUN (pthread_kill).
    any("tgkill", libc::SYS_tgkill),
    Rule {
        name: "ioctl",
        nr: libc::SYS_ioctl,
        args: Args::Ioctls(&[
            // The raw terminal, restored at exit.
            TCGETS,
            TCSETS,
            TCSETSW,
            TCSETSF,
            TIOCGWINSZ,
            // Serial input raises the UART's interrupt.
            KVM_SIGNAL_MSI,
            KVM_SET_GSI_ROUTING,
            // Releasing passed-through functions: irqfds, BAR slots, interrupts off, reset,
            // DMA unmapped, the group leaves the container and KVM's VFIO device.
            KVM_IRQFD,
            KVM_SET_USER_MEMORY_REGION,
            KVM_SET_DEVICE_ATTR,
            VFIO_DEVICE_SET_IRQS,
            VFIO_DEVICE_RESET,
            VFIO_IOMMU_UNMAP_DMA,
            VFIO_GROUP_UNSET_CONTAINER,
            VFIO_GROUP_GET_STATUS,
        ]),
    },
    // Releasing a VFIO device reads its sysfs iommu_group link (vfio-ioctls).
    any("readlink", libc::SYS_readlink),
    any("readlinkat", libc::SYS_readlinkat),
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
];

/// The QMP and monitor threads: accept clients on the socket bound during setup, wait for
/// their input (poll), read it, write replies and events (write is in COMMON), close them,
/// and wake the main thread through an eventfd (write).
pub const CONTROL: &[Rule] = &[
    any("accept4", libc::SYS_accept4),
    any("accept", libc::SYS_accept),
    any("poll", libc::SYS_poll),
    any("ppoll", libc::SYS_ppoll),
    any("read", libc::SYS_read),
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("shutdown", libc::SYS_shutdown),
];

/// The stop watchdog: sleeps, writes one line, exits (COMMON has all of it).
pub const WATCHDOG: &[Rule] = &[];

/// Names for the SIGSYS line, beyond the allowed calls: calls an exploited VMM would make.
pub const OTHER_NAMES: &[(libc::c_long, &str)] = &[
    (libc::SYS_open, "open"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_execve, "execve"),
    (libc::SYS_execveat, "execveat"),
    (libc::SYS_fork, "fork"),
    (libc::SYS_vfork, "vfork"),
    (libc::SYS_clone, "clone"),
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_kill, "kill"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_unlink, "unlink"),
    (libc::SYS_unlinkat, "unlinkat"),
    (libc::SYS_prctl, "prctl"),
    (libc::SYS_seccomp, "seccomp"),
    (libc::SYS_setuid, "setuid"),
    (libc::SYS_rt_sigaction, "rt_sigaction"),
    (libc::SYS_newfstatat, "newfstatat"),
    (libc::SYS_statx, "statx"),
    (libc::SYS_lseek, "lseek"),
    (libc::SYS_poll, "poll"),
    (libc::SYS_ppoll, "ppoll"),
    (libc::SYS_epoll_create1, "epoll_create1"),
    (libc::SYS_epoll_pwait2, "epoll_pwait2"),
    (libc::SYS_sched_getaffinity, "sched_getaffinity"),
    (libc::SYS_prlimit64, "prlimit64"),
];
