//! A VM reset for firmware boot: each vCPU goes back to the state it was created in (the
//! architectural reset state for the boot CPU, wait-for-SIPI for the others), taken as a
//! snapshot before it first ran and put back from its own thread, while the main thread resets
//! the devices. RAM is kept (a warm reset), so OVMF's in-RAM variable store survives it.
//!
//! The handshake ([`ResetSync`]): the main thread raises the count of resets asked and kicks
//! every vCPU out of KVM_RUN; each vCPU parks; once all are parked the main thread releases
//! them; vCPU 0 resets the devices (on a vCPU thread, whose sandbox allows what a device
//! reset does, as a guest-triggered reset runs there) and says so; each vCPU then restores
//! its snapshot and, the devices reset, runs again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use devices::bus::lock;
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

/// MSRs a reset puts back besides what KVM_SET_SREGS covers: MISC_ENABLE, the MTRRs
/// (default type, variable pairs 0x200..0x20F, fixed ranges), PAT and TSC_DEADLINE (Intel SDM
/// vol. 4 table 2-2), then KVM's paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst): the
/// old and new kvmclock system time, async page faults, steal time, PV EOI, which a guest
/// kernel points at its memory; put back to their creation value (off), KVM stops writing
/// into RAM the firmware now owns. KVM reads them in order and stops at the first one it does
/// not know, so the oldest come first.
#[rustfmt::skip]
const RESET_MSRS: &[u32] = &[
    // IA32_MISC_ENABLE, MTRRdefType, the variable MTRRs.
    0x1a0, 0x2ff, 0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207,
    0x208, 0x209, 0x20a, 0x20b, 0x20c, 0x20d, 0x20e, 0x20f,
    // Fixed MTRRs, PAT, TSC_DEADLINE.
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f, 0x277, 0x6e0,
    // MSR_KVM_SYSTEM_TIME, then _NEW, ASYNC_PF_EN, STEAL_TIME, PV_EOI_EN.
    0x12, 0x4b56_4d01, 0x4b56_4d02, 0x4b56_4d03, 0x4b56_4d04,
];

/// One vCPU's state as created.
pub struct ResetState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    msrs: Msrs,
}

fn einval() -> kvm_ioctls::Error {
    kvm_ioctls::Error::new(libc::EINVAL)
}

impl ResetState {
    /// The vCPU's state now (taken before it first runs).
    pub fn take(vcpu: &VcpuFd) -> Result<Self, kvm_ioctls::Error> {
        let entries: Vec<kvm_bindings::kvm_msr_entry> = RESET_MSRS
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| einval())?;
        let n = vcpu.get_msrs(&mut msrs)?;
        // KVM stops at the first MSR it does not know: keep the ones it read.
        if n < entries.len() {
            log::warn!(
                "vCPU reset state: KVM read {n} of {} MSRs (not MSR {:#x} and after)",
                entries.len(),
                entries[n].index
            );
        }
        let read = msrs.as_slice()[..n.min(entries.len())].to_vec();
        let msrs = Msrs::from_entries(&read).map_err(|_| einval())?;
        Ok(ResetState {
            regs: vcpu.get_regs()?,
            sregs: vcpu.get_sregs()?,
            fpu: vcpu.get_fpu()?,
            lapic: vcpu.get_lapic()?,
            mp_state: vcpu.get_mp_state()?,
            msrs,
        })
    }

    /// Puts the vCPU back into this state.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
        vcpu.set_sregs(&self.sregs)?;
        vcpu.set_regs(&self.regs)?;
        vcpu.set_fpu(&self.fpu)?;
        vcpu.set_msrs(&self.msrs)?;
        vcpu.set_lapic(&self.lapic)?;
        vcpu.set_mp_state(self.mp_state)
    }
}

/// The reset handshake between the main thread and the vCPU threads.
#[derive(Default)]
pub struct ResetSync {
    /// Resets asked for so far; a vCPU that has seen fewer parks.
    asked: Mutex<u64>,
    /// Resets done (devices reset): parked vCPUs wait for it to reach what they saw asked.
    done: Mutex<u64>,
    released: Condvar,
    parked: AtomicUsize,
    /// Resets whose device part vCPU 0 has done.
    devices: Mutex<u64>,
    devices_done: Condvar,
}

impl ResetSync {
    /// Resets asked for so far.
    pub fn asked(&self) -> u64 {
        *lock(&self.asked)
    }

    /// Main thread: asks for a reset; returns its number.
    pub fn ask(&self) -> u64 {
        let mut a = lock(&self.asked);
        *a += 1;
        *a
    }

    /// vCPUs parked now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// vCPU thread: parks until reset `n` is done (or `stop` is raised).
    pub fn park(&self, n: u64, stop: &AtomicBool) {
        self.parked.fetch_add(1, Ordering::AcqRel);
        let mut done = lock(&self.done);
        while *done < n && !stop.load(Ordering::Acquire) {
            done = match self.released.wait_timeout(done, Duration::from_millis(20)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        drop(done);
        self.parked.fetch_sub(1, Ordering::AcqRel);
    }

    /// Main thread: every vCPU is parked for reset `n`; they go on.
    pub fn release(&self, n: u64) {
        *lock(&self.done) = n;
        self.released.notify_all();
    }

    /// vCPU 0: the devices are reset for reset `n`.
    pub fn devices_reset(&self, n: u64) {
        *lock(&self.devices) = n;
        self.devices_done.notify_all();
    }

    /// vCPU thread: waits until the devices are reset for reset `n` (or `stop`).
    pub fn wait_devices(&self, n: u64, stop: &AtomicBool) {
        let mut d = lock(&self.devices);
        while *d < n && !stop.load(Ordering::Acquire) {
            d = match self.devices_done.wait_timeout(d, Duration::from_millis(20)) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reset_sync_parks_until_released() {
        let sync = Arc::new(ResetSync::default());
        let stop = Arc::new(AtomicBool::new(false));
        let n = sync.ask();
        let (s, st) = (sync.clone(), stop.clone());
        let t = std::thread::spawn(move || s.park(n, &st));
        while sync.parked() == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(30));
        assert!(!t.is_finished(), "parked until released");
        sync.release(n);
        t.join().unwrap();
        assert_eq!(sync.parked(), 0);
    }

    #[test]
    fn reset_sync_waits_for_the_devices() {
        let sync = Arc::new(ResetSync::default());
        let stop = Arc::new(AtomicBool::new(false));
        let n = sync.ask();
        let (s, st) = (sync.clone(), stop.clone());
        let t = std::thread::spawn(move || s.wait_devices(n, &st));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!t.is_finished(), "waits for vCPU 0's device reset");
        sync.devices_reset(n);
        t.join().unwrap();
    }

    #[test]
    fn reset_sync_stop_unparks() {
        let sync = ResetSync::default();
        let stop = AtomicBool::new(true);
        let n = sync.ask();
        sync.park(n, &stop);
        assert_eq!(sync.parked(), 0);
    }
}
