//! The gate that pauses guest-visible work: every thread that makes guest-visible progress
//! (a vCPU in KVM_RUN and its exit handling, a virtio worker processing its queues, a block
//! I/O thread running a request) holds a [`Busy`] pass while it works. [`Gate::pause`] closes
//! the gate and waits until no pass is out; threads that ask for one while it is closed wait
//! until [`Gate::resume`]. A thread waiting for a pass holds no device lock.
//!
//! vCPUs are the only holders that can keep a pass indefinitely (the guest runs inside
//! KVM_RUN): the pauser kicks them out with `kick` while it waits.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    paused: bool,
    /// Passes handed out and not yet returned.
    busy: usize,
    /// Set for good when the VM stops: nobody waits for a pass any more.
    released: bool,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

/// Why a pause did not take effect.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    #[error("{0} threads did not reach a pause point within {1:?}; the VM keeps running")]
    Timeout(usize, Duration),
    #[error("The VM is stopping")]
    Released,
}

/// A pass: guest-visible work may go on while it lives.
#[must_use]
pub struct Busy<'a>(&'a Gate);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.busy = s.busy.saturating_sub(1);
        drop(s);
        self.0.changed.notify_all();
    }
}

/// How often the pauser kicks the holders while it waits.
const KICK_EVERY: Duration = Duration::from_millis(5);

impl Gate {
    pub const fn new() -> Self {
        Gate {
            state: Mutex::new(State {
                paused: false,
                busy: 0,
                released: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pass, once the gate is open (at once unless paused).
    pub fn enter(&self) -> Busy<'_> {
        let mut s = self.lock();
        while s.paused && !s.released {
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.busy += 1;
        Busy(self)
    }

    /// Closes the gate and waits until every pass is back, calling `kick` every few
    /// milliseconds meanwhile. After `timeout` the gate opens again and the pause fails.
    pub fn pause(&self, timeout: Duration, kick: &dyn Fn()) -> Result<(), PauseError> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        if s.released {
            return Err(PauseError::Released);
        }
        s.paused = true;
        while s.busy > 0 {
            let now = Instant::now();
            if now >= deadline || s.released {
                let busy = s.busy;
                s.paused = false;
                drop(s);
                self.changed.notify_all();
                return Err(if busy > 0 {
                    PauseError::Timeout(busy, timeout)
                } else {
                    PauseError::Released
                });
            }
            drop(s);
            kick();
            s = self.lock();
            if s.busy > 0 {
                s = self
                    .changed
                    .wait_timeout(s, KICK_EVERY.min(deadline - now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        Ok(())
    }

    /// Opens the gate: the threads waiting for a pass go on.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// Whether the gate is closed.
    pub fn is_paused(&self) -> bool {
        let s = self.lock();
        s.paused && !s.released
    }

    /// Opens the gate for good (the VM is stopping): nobody waits for a pass from now on.
    pub fn release(&self) {
        let mut s = self.lock();
        s.released = true;
        s.paused = false;
        drop(s);
        self.changed.notify_all();
    }
}

/// The VM's gate: the vCPUs, the virtio workers and the block I/O threads pass it.
pub fn vm_gate() -> &'static Gate {
    static GATE: Gate = Gate::new();
    &GATE
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn gate_open_enter_does_not_wait() {
        let g = Gate::new();
        let a = g.enter();
        let b = g.enter();
        assert_eq!(g.lock().busy, 2);
        drop((a, b));
        assert_eq!(g.lock().busy, 0);
    }

    #[test]
    fn gate_paused_blocks_enter_until_resume() {
        let g = Arc::new(Gate::new());
        g.pause(Duration::from_secs(1), &|| {}).unwrap();
        let passed = Arc::new(AtomicBool::new(false));
        let t = {
            let (g, passed) = (g.clone(), passed.clone());
            std::thread::spawn(move || {
                let _b = g.enter();
                passed.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!passed.load(Ordering::SeqCst), "entered a paused gate");
        g.resume();
        t.join().unwrap();
        assert!(passed.load(Ordering::SeqCst));
    }

    #[test]
    fn gate_pause_waits_for_holder_and_kicks_it() {
        let g = Arc::new(Gate::new());
        let kicked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let holder = {
            let (g, kicked, stop) = (g.clone(), kicked.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let _b = g.enter();
                    // "In the guest" until kicked.
                    let seen = kicked.load(Ordering::SeqCst);
                    while kicked.load(Ordering::SeqCst) == seen && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        let k = kicked.clone();
        g.pause(Duration::from_secs(5), &move || {
            k.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        assert!(kicked.load(Ordering::SeqCst) > 0);
        assert_eq!(g.lock().busy, 0);
        stop.store(true, Ordering::SeqCst);
        g.resume();
        holder.join().unwrap();
    }

    #[test]
    fn gate_pause_with_stuck_holder_times_out_and_reopens() {
        let g = Gate::new();
        let b = g.enter();
        let r = g.pause(Duration::from_millis(50), &|| {});
        assert_eq!(r, Err(PauseError::Timeout(1, Duration::from_millis(50))));
        assert!(!g.is_paused());
        drop(b);
        let _again = g.enter();
    }

    #[test]
    fn gate_released_lets_waiters_through_and_refuses_pause() {
        let g = Arc::new(Gate::new());
        g.pause(Duration::from_secs(1), &|| {}).unwrap();
        let t = {
            let g = g.clone();
            std::thread::spawn(move || drop(g.enter()))
        };
        g.release();
        t.join().unwrap();
        assert_eq!(
            g.pause(Duration::from_secs(1), &|| {}),
            Err(PauseError::Released)
        );
    }
}
