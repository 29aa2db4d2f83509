//! vCPU threads: configuration from the boot state, and the run loop as a small state machine
//! (running -> stopping) driven by KVM exits and a kick from the main thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use devices::bus::Bus;
use firmware::{BootCpuState, CpuMode, Segment};
use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

pub mod reset;

use crate::cpuid;
use crate::exit::{handle_exit, Action, EoiHandler, Exit, LastAccess, StopReason};
use crate::exit_costs::{ExitCosts, ExitKind};
use crate::state::{ApicState, VcpuState};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("Cannot set up vCPU {0}: {1} failed: {2}")]
    Setup(u32, &'static str, kvm_ioctls::Error),
    #[error("Cannot build CPUID for vCPU {0}")]
    Cpuid(u32),
}

/// IA32_MISC_ENABLE (Intel SDM vol. 4, table 2-2) and its fast-strings bit.
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled, default type write-back (SDM vol. 3 section 12.11.2.1).
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
/// Local APIC register offsets and LVT delivery modes (SDM vol. 3 section 11.5.1).
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;
/// x87 control word and MXCSR reset values (SDM vol. 1 sections 8.1.5, 10.2.3).
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

fn kvm_segment(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: u8::from(s.present == 0),
        padding: 0,
    }
}

/// How a vCPU starts.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    /// The boot vCPU of direct kernel boot: in the kernel's entry state.
    Entry(&'a BootCpuState),
    /// The boot vCPU of firmware boot: in the architectural reset state KVM creates it in
    /// (CS F000 base FFFF0000, RIP FFF0: the firmware's reset vector), MTRRs off.
    ResetVector,
    /// An application processor: waiting for INIT/SIPI.
    WaitForSipi,
}

/// Sets CPUID, MSRs, LAPIC LVTs and FPU for every vCPU; registers only for the boot vCPU of
/// direct kernel boot. Application processors stay in KVM's wait-for-SIPI state.
pub fn configure(
    vcpu: &VcpuFd,
    id: u32,
    cpus: u32,
    supported: &CpuId,
    start: Start<'_>,
) -> Result<(), VcpuError> {
    let boot = match start {
        Start::Entry(b) => Some(b),
        _ => None,
    };
    let setup = |what, e| VcpuError::Setup(id, what, e);
    let mut entries = supported.as_slice().to_vec();
    cpuid::patch(&mut entries, id, cpus);
    let cpuid = CpuId::from_entries(&entries).map_err(|_| VcpuError::Cpuid(id))?;
    if entries.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(VcpuError::Cpuid(id));
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| setup("KVM_SET_CPUID2", e))?;

    let mut msr_entries = vec![kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    }];
    // Firmware programs the MTRRs itself from their reset state (disabled).
    if !matches!(start, Start::ResetVector) {
        msr_entries.push(kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: MTRR_ENABLE_WB,
            ..Default::default()
        });
    }
    let msrs = Msrs::from_entries(&msr_entries).map_err(|_| VcpuError::Cpuid(id))?;
    vcpu.set_msrs(&msrs).map_err(|e| setup("KVM_SET_MSRS", e))?;

    let mut lapic = vcpu.get_lapic().map_err(|e| setup("KVM_GET_LAPIC", e))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|e| setup("KVM_SET_LAPIC", e))?;

    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| setup("KVM_SET_FPU", e))?;

    if let Some(b) = boot {
        let mut sregs = vcpu.get_sregs().map_err(|e| setup("KVM_GET_SREGS", e))?;
        let code = kvm_segment(&b.code);
        let data = kvm_segment(&b.data);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = kvm_segment(&b.tss);
        sregs.gdt.base = b.gdt_base;
        sregs.gdt.limit = b.gdt_limit;
        sregs.idt.base = b.idt_base;
        sregs.idt.limit = b.idt_limit;
        sregs.cr0 = b.cr0;
        sregs.cr3 = b.cr3;
        sregs.cr4 = b.cr4;
        sregs.efer = b.efer;
        vcpu.set_sregs(&sregs)
            .map_err(|e| setup("KVM_SET_SREGS", e))?;
        let regs = kvm_regs {
            rip: b.rip,
            rsp: b.rsp,
            rbp: b.rsp,
            rax: b.rax,
            rbx: b.rbx,
            rsi: b.rsi,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(|e| setup("KVM_SET_REGS", e))?;
        debug_assert!(b.mode == CpuMode::Long64 || b.cr0 & firmware::cpu_state::X86_CR0_PG == 0);
    } else if matches!(start, Start::WaitForSipi) {
        // KVM_MP_STATE_UNINITIALIZED: an AP waiting for INIT/SIPI from the boot CPU.
        vcpu.set_mp_state(kvm_mp_state { mp_state: 1 })
            .map_err(|e| setup("KVM_SET_MP_STATE", e))?;
    }
    Ok(())
}

/// Sets the delivery mode (bits 10:8) of an LVT entry in a kvm_lapic_state register page.
fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let Some(b) = regs.get_mut(offset..offset + 4) else {
        return;
    };
    let old = u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
    let new = (old & !0x700) | (mode << 8);
    for (d, s) in b.iter_mut().zip(new.to_le_bytes()) {
        *d = s as std::os::raw::c_char;
    }
}

/// What a vCPU thread shares with the rest of the VMM.
pub struct VcpuContext {
    /// The buses, shared with the device manager, which may change them while vCPUs run.
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub eoi: Arc<dyn EoiHandler + Send + Sync>,
    pub stop: Arc<AtomicBool>,
    pub stopped: Sender<StopReason>,
    /// Raised (then each vCPU kicked) when the state dump is asked for: each vCPU prints its
    /// registers once per increment.
    pub dump: Arc<AtomicU64>,
    /// The reset handshake, when a reset is a VM reset (firmware boot without --no-reboot).
    pub reset: Option<Arc<reset::ResetSync>>,
    /// What vCPU 0 resets at a VM reset.
    pub device_reset: Option<Arc<crate::device_manager::DeviceReset>>,
    /// Where each exit's time goes, by kind.
    pub exits: Arc<ExitCosts>,
    /// The VT-d unit's registers (start, size): their exits are counted apart.
    pub drhd: Option<(u64, u64)>,
}

/// Local APIC register offsets in kvm_lapic_state: TPR, ISR and IRR (8 dwords each, 16 bytes
/// apart) (SDM vol. 3 table 11-1).
const APIC_TPR: usize = 0x80;
const APIC_ISR: usize = 0x100;
const APIC_IRR: usize = 0x200;

/// The highest vector set in the 256-bit APIC register at `base`.
fn highest_vector(regs: &[std::os::raw::c_char], base: usize) -> Option<u8> {
    (0..8usize).rev().find_map(|i| {
        let b = regs.get(base + i * 16..base + i * 16 + 4)?;
        let v = u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
        (v != 0).then(|| (i * 32 + 31 - v.leading_zeros() as usize) as u8)
    })
}

/// Where vCPU `id` is (`state::render_vcpu` gives its line): instruction pointer, flags, and the highest
/// vectors in service and requested at its local APIC.
fn describe(vcpu: &VcpuFd, id: u32) -> VcpuState {
    let regs = match vcpu.get_regs() {
        Ok(r) => r,
        Err(e) => {
            return VcpuState::Unavailable {
                id,
                error: e.to_string(),
            }
        }
    };
    let apic = vcpu.get_lapic().ok().map(|a| ApicState {
        tpr: a.regs[APIC_TPR] as u8,
        isr: highest_vector(&a.regs, APIC_ISR),
        irr: highest_vector(&a.regs, APIC_IRR),
    });
    VcpuState::Running {
        id,
        rip: regs.rip,
        rsp: regs.rsp,
        rflags: regs.rflags,
        apic,
    }
}

/// What becomes of a KVM exit the run loop has no handler for.
#[derive(Debug, PartialEq, Eq)]
enum Unhandled {
    /// Informational (an interrupt window, a TPR access): enter the guest again.
    Retry,
    /// The vCPU cannot make progress (re-entering repeats the exit at 100% CPU): stop the VM.
    Fatal,
}

fn unhandled(exit: &VcpuExit) -> Unhandled {
    match exit {
        VcpuExit::IrqWindowOpen
        | VcpuExit::Nmi
        | VcpuExit::SetTpr
        | VcpuExit::TprAccess
        | VcpuExit::Intr => Unhandled::Retry,
        // Unsupported, Unknown, Exception, InternalError, FailEntry, MemoryFault (a BAR whose
        // host mapping faults), MSR and hypercall exits minivmm never enabled, and other
        // architectures' exits: the same exit would come back at once.
        _ => Unhandled::Fatal,
    }
}

/// Runs a vCPU until the VM stops. A stop is reported on `ctx.stopped` (by whichever thread
/// sees it first; the main thread keeps only the first).
pub fn run(mut vcpu: VcpuFd, id: u32, ctx: &VcpuContext, snapshot: Option<reset::ResetState>) {
    let mut dumped = ctx.dump.load(Ordering::Acquire);
    let mut last = None;
    let mut resets_seen = 0;
    while !ctx.stop.load(Ordering::Acquire) {
        if let (Some(sync), Some(snap)) = (&ctx.reset, &snapshot) {
            let asked = sync.asked();
            if asked > resets_seen {
                resets_seen = asked;
                sync.park(asked, &ctx.stop);
                if id == 0 {
                    if let Some(d) = &ctx.device_reset {
                        d.reset();
                    }
                    sync.devices_reset(asked);
                }
                sync.wait_devices(asked, &ctx.stop);
                if ctx.stop.load(Ordering::Acquire) {
                    break;
                }
                if let Err(e) = snap.restore(&vcpu) {
                    let msg = format!("vCPU {id}: cannot reset: {e}");
                    let _ = ctx.stopped.send(StopReason::Error(msg));
                    return;
                }
                last = None;
                log::debug!("vCPU {id}: back in its reset state");
            }
        }
        // Guest-visible progress holds a pass of the VM's gate: a pause (the monitor's
        // `stop`) kicks the vCPU out of KVM_RUN and parks it here until `cont`.
        let _busy = devices::quiesce::vm_gate().enter();
        if ctx.stop.load(Ordering::Acquire) {
            break;
        }
        let want = ctx.dump.load(Ordering::Acquire);
        if want != dumped {
            dumped = want;
            eprint!("{}", crate::state::render_vcpu(&describe(&vcpu, id)));
        }
        let entered = Instant::now();
        let run = vcpu.run();
        let exited = Instant::now();
        let exit = match run {
            Ok(VcpuExit::IoIn(port, data)) => Exit::IoIn(port, data),
            Ok(VcpuExit::IoOut(port, data)) => Exit::IoOut(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => Exit::MmioRead(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => Exit::MmioWrite(addr, data),
            Ok(VcpuExit::IoapicEoi(vector)) => Exit::IoapicEoi(vector),
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::SystemEvent(kind, _)) => Exit::SystemEvent(kind),
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                let msg = format!("vCPU {id}: KVM entry failed (reason {reason:#x}, cpu {cpu})");
                let _ = ctx.stopped.send(StopReason::Error(msg));
                return;
            }
            Ok(VcpuExit::InternalError) => {
                let at = crate::state::render_vcpu(&describe(&vcpu, id));
                let last = last.map_or("none".into(), |a: LastAccess| a.to_string());
                let msg = format!(
                    "vCPU {id}: KVM internal error (emulation failure) at {}; last device access: {last}",
                    at.trim()
                );
                let _ = ctx.stopped.send(StopReason::Error(msg));
                return;
            }
            Ok(other) => match unhandled(&other) {
                Unhandled::Retry => {
                    iommu::warn_limited!("vCPU {id}: unhandled KVM exit {other:?}; re-entering");
                    continue;
                }
                Unhandled::Fatal => {
                    let msg = format!("vCPU {id}: KVM exit {other:?} cannot be handled");
                    let _ = ctx.stopped.send(StopReason::Error(msg));
                    return;
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => {
                let _ = ctx
                    .stopped
                    .send(StopReason::Error(format!("vCPU {id}: KVM_RUN failed: {e}")));
                return;
            }
        };
        if let Some(a) = LastAccess::of(&exit) {
            last = Some(a);
        }
        let kind = ExitKind::of(&exit, ctx.drhd);
        let action = handle_exit(exit, &ctx.pio, &ctx.mmio, ctx.eoi.as_ref());
        ctx.exits.record(kind, exited - entered, exited.elapsed());
        if let Action::Stop(reason) = action {
            let reason = match reason {
                StopReason::TripleFault(_) => StopReason::TripleFault(last),
                r => r,
            };
            let _ = ctx.stopped.send(reason);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_is_set_in_bits_10_8() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT_LINT0] = 0x30;
        regs[APIC_LVT_LINT0 + 1] = 0x01; // mask bits and vector elsewhere survive
        set_lvt_mode(&mut regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT_LINT0] as u8, 0x30);
        assert_eq!(regs[APIC_LVT_LINT0 + 1] as u8, 0x07);
        set_lvt_mode(&mut regs, APIC_LVT_LINT1, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT_LINT1 + 1] as u8, 0x04);
    }

    #[test]
    fn unhandled_exit_without_progress_is_fatal() {
        for exit in [
            VcpuExit::Unsupported(99),
            VcpuExit::Exception,
            VcpuExit::Unknown,
            VcpuExit::InternalError,
            VcpuExit::FailEntry(1, 0),
            VcpuExit::MemoryFault {
                flags: 0,
                gpa: 0xfe00_0000,
                size: 4096,
            },
        ] {
            assert_eq!(unhandled(&exit), Unhandled::Fatal, "{exit:?}");
        }
    }

    #[test]
    fn unhandled_exit_informational_is_retried() {
        for exit in [
            VcpuExit::IrqWindowOpen,
            VcpuExit::Nmi,
            VcpuExit::TprAccess,
            VcpuExit::SetTpr,
        ] {
            assert_eq!(unhandled(&exit), Unhandled::Retry, "{exit:?}");
        }
    }

    #[test]
    fn segment_conversion_marks_absent_as_unusable() {
        let s = kvm_segment(&Segment::default());
        assert_eq!(s.unusable, 1);
        let s = kvm_segment(&Segment {
            present: 1,
            selector: 8,
            ..Default::default()
        });
        assert_eq!((s.unusable, s.selector), (0, 8));
    }
}
