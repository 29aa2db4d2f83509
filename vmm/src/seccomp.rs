//! The sandbox: a seccomp-bpf filter per thread class (vCPUs, device threads, the DMA mapper,
//! the main thread, the stop watchdog), each allowing the system calls that class makes once
//! the guest runs and no more (allowlist.rs). A thread installs its own filter after its
//! setup, before the guest runs, with no_new_privs set.
//!
//! `--seccomp=on` (the default) traps a forbidden call: a SIGSYS handler writes one line
//! naming the thread and the call, and ends minivmm with status 159 (128 + SIGSYS).
//! `--seccomp=log` lets the call through and has the kernel log it (SECCOMP_RET_LOG, in the
//! audit log / dmesg): the way to find what a new code path needs. `--seccomp=off` installs
//! nothing.

mod allowlist;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use allowlist::{Args, Rule};

/// `--seccomp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// A forbidden system call ends minivmm with a line naming it.
    On,
    /// A forbidden system call is allowed and logged by the kernel.
    Log,
    /// No filter.
    Off,
}

/// The classes of minivmm threads, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadClass {
    Vcpu,
    /// Device threads: the VFIO interrupt relay ("vfio-irq").
    Device,
    /// Virtio device workers ("virtio-*"): queue processing off the vCPUs.
    Virtio,
    /// The background identity map of guest RAM for VFIO ("vfio-map").
    DmaMap,
    /// The event loop and the orderly stop.
    Main,
    Watchdog,
    /// The QMP and monitor socket threads ("qmp", "monitor").
    Control,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Cannot build the {0:?} thread's seccomp filter: {1}")]
    Build(ThreadClass, seccompiler::BackendError),
    #[error("Cannot install the {0:?} thread's seccomp filter: {1}")]
    Install(ThreadClass, seccompiler::Error),
    #[error("Cannot catch SIGSYS: {0}")]
    Handler(vmm_sys_util::errno::Error),
}

impl ThreadClass {
    fn rules(self) -> &'static [Rule] {
        match self {
            ThreadClass::Vcpu => allowlist::VCPU,
            ThreadClass::Device => allowlist::RELAY,
            ThreadClass::Virtio => allowlist::VIRTIO,
            ThreadClass::DmaMap => allowlist::DMA_MAP,
            ThreadClass::Main => allowlist::MAIN,
            ThreadClass::Watchdog => allowlist::WATCHDOG,
            ThreadClass::Control => allowlist::CONTROL,
        }
    }

    /// The class of a thread a device model starts, by its name.
    pub fn of_device_thread(name: &str) -> ThreadClass {
        match name {
            "vfio-map" => ThreadClass::DmaMap,
            n if n.starts_with("virtio-") => ThreadClass::Virtio,
            _ => ThreadClass::Device,
        }
    }
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// The seccompiler rules of one allow-list entry (empty: any arguments).
fn arg_rules(args: Args) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let one = |c| SeccompRule::new(vec![c]);
    match args {
        Args::Any => Ok(Vec::new()),
        Args::Ioctls(reqs) | Args::FcntlCmds(reqs) => reqs
            .iter()
            .map(|r| one(cond(1, SeccompCmpOp::Eq, *r)?))
            .collect(),
        Args::NoExec => Ok(vec![one(cond(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?)?]),
    }
}

/// The BPF program for `class` in `mode` (which must not be Off).
pub fn filter(class: ThreadClass, mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let build = |e| SeccompError::Build(class, e);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for r in allowlist::COMMON.iter().chain(class.rules()) {
        let mut new = arg_rules(r.args).map_err(build)?;
        match rules.get_mut(&r.nr) {
            // Allowed with any arguments somewhere wins over a restricted entry.
            Some(old) if old.is_empty() || new.is_empty() => old.clear(),
            Some(old) => old.append(&mut new),
            None => {
                rules.insert(r.nr, new);
            }
        }
    }
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let arch = std::env::consts::ARCH.try_into().map_err(build)?;
    SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .and_then(BpfProgram::try_from)
        .map_err(build)
}

/// The mode `main` chose; unset (tests, helpers) means off.
static MODE: OnceLock<SeccompMode> = OnceLock::new();
/// The first failure to install a filter on a thread that could not report it itself.
static FAILED: OnceLock<String> = OnceLock::new();

thread_local! {
    /// This thread's name, for the SIGSYS line (read in the handler: no allocation there).
    static NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// Sets the mode for every thread from now on and, unless it is off, catches SIGSYS.
pub fn set_mode(mode: SeccompMode) -> Result<(), SeccompError> {
    let _ = MODE.set(mode);
    if mode == SeccompMode::On {
        vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, forbidden_call)
            .map_err(SeccompError::Handler)?;
    }
    Ok(())
}

/// Installs `class`'s filter on the calling thread (nothing when the mode is off or unset).
pub fn sandbox(class: ThreadClass) -> Result<(), SeccompError> {
    let Some(mode) = MODE.get().copied().filter(|m| *m != SeccompMode::Off) else {
        return Ok(());
    };
    let prog = filter(class, mode)?;
    let mut name = [0u8; 16];
    if let Some(n) = std::thread::current().name() {
        let n = &n.as_bytes()[..n.len().min(name.len())];
        name[..n.len()].copy_from_slice(n);
    }
    NAME.with(|c| c.set(name));
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(class, e))
}

/// [`sandbox`] for a thread that cannot return the error: it is kept for [`check`].
pub fn sandbox_thread(class: ThreadClass) {
    if let Err(e) = sandbox(class) {
        let _ = FAILED.set(e.to_string());
    }
}

/// The hook device models call as their threads start.
pub fn device_thread_started(name: &str) {
    sandbox_thread(ThreadClass::of_device_thread(name));
}

/// Whether every thread that sandboxed itself on its own succeeded.
pub fn check() -> Result<(), String> {
    match FAILED.get() {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

/// The name of system call `nr`, if it is one minivmm knows.
fn syscall_name(nr: libc::c_long) -> &'static str {
    let lists = [
        allowlist::COMMON,
        allowlist::VCPU,
        allowlist::RELAY,
        allowlist::VIRTIO,
        allowlist::DMA_MAP,
        allowlist::MAIN,
        allowlist::CONTROL,
    ];
    lists
        .iter()
        .flat_map(|l| l.iter())
        .find(|r| r.nr == nr)
        .map(|r| r.name)
        .or_else(|| {
            allowlist::OTHER_NAMES
                .iter()
                .find(|(n, _)| *n == nr)
                .map(|(_, s)| *s)
        })
        .unwrap_or("?")
}

/// The SIGSYS fields of siginfo_t (include/uapi/asm-generic/siginfo.h, x86_64 layout).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A fixed buffer the handler formats its line into.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The line for a forbidden call (no allocation: it is built in the SIGSYS handler).
fn forbidden_line(thread: &[u8], nr: libc::c_long) -> Line {
    let mut l = Line {
        buf: [0; 160],
        len: 0,
    };
    let name_len = thread.iter().position(|b| *b == 0).unwrap_or(thread.len());
    l.push(b"minivmm: error: seccomp: thread ");
    l.push(if name_len == 0 {
        b"<unnamed>"
    } else {
        &thread[..name_len]
    });
    l.push(b" made a forbidden system call ");
    l.push_number(nr as u64);
    l.push(b" (");
    l.push(syscall_name(nr).as_bytes());
    l.push(b"); stopping (--seccomp=log lets it through and logs it)\n");
    l
}

/// The exit status after a forbidden call: 128 + SIGSYS, as if killed by it.
pub const FORBIDDEN_EXIT: i32 = 128 + libc::SIGSYS;

/// SIGSYS handler: one line on stderr, then exit. Only async-signal-safe calls (write and
/// _exit, both allowed to every thread), no allocation, no locks.
extern "C" fn forbidden_call(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS, whose union holds the SIGSYS
    // fields laid out as SigsysInfo (a prefix of the 128-byte siginfo_t).
    let nr = unsafe { (*(info as *const SigsysInfo)).syscall };
    let thread = NAME.with(|c| c.get());
    let line = forbidden_line(&thread, nr.into());
    // SAFETY: writes `line.len` initialised bytes from a live stack buffer, then ends the
    // process without running anything else.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(FORBIDDEN_EXIT);
    }
}

#[cfg(test)]
mod tests;
