//! Process lifecycle: stop requests from signals (caught from the first line of `main`, so a
//! signal during setup also ends the VMM in order), panics in any thread (one error line and
//! an orderly stop, never a wedged process), and a deadline that bounds every stop.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use vmm_sys_util::signal::register_signal_handler;

use crate::exit::StopReason;

/// How long a stop may take from the moment it is decided (vCPUs kicked out of KVM_RUN and
/// joined, devices reset and released) before minivmm exits anyway. A vCPU can be held inside
/// a device handler for longer than that by a hostile guest; the kernel then releases the VFIO
/// devices and containers when the process closes them at exit.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Set by SIGTERM, SIGINT or SIGHUP: the signal number, 0 while none came.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The signals that stop the VM in order.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

extern "C" fn stop_request(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only the first signal counts; a second one while stopping changes nothing.
    let _ = STOP_SIGNAL.compare_exchange(0, sig, Ordering::AcqRel, Ordering::Acquire);
}

/// Catches SIGTERM, SIGINT and SIGHUP. The handler only records the signal: setup notices it
/// between its steps (and a system call it interrupts fails with EINTR), the event loop at its
/// next tick.
pub fn catch_stop_signals() -> std::io::Result<()> {
    for sig in STOP_SIGNALS {
        register_signal_handler(sig, stop_request).map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// The stop signal received so far, if any.
pub fn stop_signal() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::Acquire) {
        0 => None,
        sig => Some(sig),
    }
}

/// Who is told to stop the VM when a thread panics (the VM's control channel, once it exists).
type Stopper = Box<dyn Fn(StopReason) + Send + Sync>;
static STOPPER: OnceLock<Stopper> = OnceLock::new();
/// The first panic's line, for the main thread to print if it unwinds itself.
static FIRST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// From now on a panic in any thread asks `stop` to stop the VM with the panic's line.
pub fn on_panic_stop(stop: impl Fn(StopReason) + Send + Sync + 'static) {
    let _ = STOPPER.set(Box::new(stop));
}

/// The one line a panic is reported with.
pub fn panic_line(thread: Option<&str>, location: Option<String>, message: &str) -> String {
    let at = location.map_or(String::new(), |l| format!(" at {l}"));
    format!(
        "thread {} panicked{at}: {message}; the VM is stopped",
        thread.unwrap_or("<unnamed>")
    )
}

/// Records a panic's line and asks for a stop; returns whether anyone was asked.
fn panicked(line: String) -> bool {
    // try_lock: a panic while the slot is held (it never is for long) must not deadlock.
    if let Ok(mut first) = FIRST_PANIC.try_lock() {
        first.get_or_insert_with(|| line.clone());
    }
    match STOPPER.get() {
        Some(stop) => {
            stop(StopReason::Error(line));
            true
        }
        None => false,
    }
}

/// The line of the first panic, if one happened.
pub fn first_panic() -> Option<String> {
    FIRST_PANIC
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Replaces the default panic output (several lines and a backtrace note per thread) with a
/// stop request: the VM ends in order and `main` prints one line. The panicking thread
/// unwinds and ends; the others are stopped like at any other stop.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        let thread = std::thread::current();
        panicked(panic_line(thread.name(), location, &message));
    }));
}

/// Debug builds only: a fault the end-to-end tests inject into a named thread, from
/// `MINIVMM_TEST_FAULT`: `panic:THREAD` panics there, `hang:THREAD` never returns (as a vCPU
/// held inside a device handler would), so the tests can check what each does to the VM.
pub fn test_fault_point(thread: &str) {
    #[cfg(debug_assertions)]
    if let Ok(spec) = std::env::var("MINIVMM_TEST_FAULT") {
        match spec.split_once(':') {
            Some(("panic", t)) if t == thread => panic!("test panic requested in {thread}"),
            Some(("hang", t)) if t == thread => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            _ => {}
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = thread;
}

/// How often the watchdog looks for a stop signal (setup does not arm it).
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// Bounds a stop: armed when the VM starts to stop (or by a stop signal, even in the middle of
/// setup), it ends the process `deadline` later if the stop has not finished by then. Started
/// before the sandbox, so that arming it needs no new thread.
pub struct Watchdog {
    arm: Mutex<Option<Sender<StopReason>>>,
}

impl Watchdog {
    /// Starts the watchdog's thread; `expire` runs on it when a stop overruns.
    pub fn start(
        deadline: Duration,
        expire: impl FnOnce(StopReason) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = channel::<StopReason>();
        std::thread::Builder::new()
            .name("stop-watchdog".into())
            .spawn(move || {
                crate::seccomp::sandbox_thread(crate::seccomp::ThreadClass::Watchdog);
                let reason = loop {
                    match rx.recv_timeout(SIGNAL_POLL) {
                        Ok(reason) => break reason,
                        Err(RecvTimeoutError::Timeout) => {
                            if let Some(sig) = stop_signal() {
                                break StopReason::Signal(sig);
                            }
                        }
                        // Dropped unarmed: nothing to watch.
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                };
                std::thread::sleep(deadline);
                expire(reason);
            })?;
        Ok(Watchdog {
            arm: Mutex::new(Some(tx)),
        })
    }

    /// Starts the countdown for a stop with `reason` (only the first call counts).
    pub fn arm(&self, reason: &StopReason) {
        if let Some(tx) = self.arm.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(reason.clone());
        }
    }
}

/// minivmm's watchdog, started by `main` before setup.
static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();

/// Starts minivmm's stop watchdog ([`STOP_DEADLINE`], then [`exit_overdue`]).
pub fn start_watchdog() -> std::io::Result<()> {
    let w = Watchdog::start(STOP_DEADLINE, exit_overdue)?;
    let _ = WATCHDOG.set(w);
    Ok(())
}

/// The VM is stopping for `reason`: from now on it has [`STOP_DEADLINE`] to finish.
pub fn arm_stop_deadline(reason: &StopReason) {
    if let Some(w) = WATCHDOG.get() {
        w.arm(reason);
    }
}

/// What the watchdog does in minivmm: one line, then the stop's exit status without running
/// anything else (threads may hold locks; the kernel releases what the process holds).
pub fn exit_overdue(reason: StopReason) {
    let what = reason.message().map_or(String::new(), |m| format!("{m}; "));
    eprintln!(
        "minivmm: {what}the stop did not finish within {} s (a vCPU is stuck in a device \
         handler?): exiting anyway, the kernel releases the VFIO devices and containers",
        STOP_DEADLINE.as_secs()
    );
    // SAFETY: _exit ends the process at once; nothing after it runs.
    unsafe { libc::_exit(reason.exit_status()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn panic_line_names_thread_location_and_message() {
        let l = panic_line(Some("vcpu1"), Some("src/x.rs:3".into()), "boom");
        assert_eq!(
            l,
            "thread vcpu1 panicked at src/x.rs:3: boom; the VM is stopped"
        );
        assert!(!l.contains('\n'));
    }

    #[test]
    fn watchdog_armed_stop_overrunning_deadline_expires() {
        let (tx, rx) = channel();
        let w = Watchdog::start(Duration::from_millis(50), move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
        w.arm(&StopReason::Signal(15));
        let got = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(got, Ok(StopReason::Signal(15)));
    }

    #[test]
    fn watchdog_disarmed_never_expires() {
        let (tx, rx) = channel();
        let w = Watchdog::start(Duration::from_millis(10), move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
        drop(w);
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }

    #[test]
    fn watchdog_not_armed_does_not_expire_while_running() {
        let (tx, rx) = channel();
        let _w = Watchdog::start(Duration::from_millis(10), move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }
}
