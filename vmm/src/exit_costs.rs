//! What vCPU exits cost, by kind: how many, the time the vCPU spent in KVM_RUN before each
//! (guest execution, KVM's own exits and entries, and in the lab L0's round trip) and the
//! time minivmm spent on it outside KVM_RUN (from KVM_RUN's return to the next KVM_RUN).
//! Always on: two clock reads and three relaxed atomic adds per exit. The accesses to the
//! VT-d unit's registers are counted apart, an IQT write (a queued invalidation) apart again:
//! they are what an invalidation costs the guest beyond minivmm's own work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::exit::Exit;
use crate::state::ExitCost;

/// The kinds of exit counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    PioIn,
    PioOut,
    MmioRead,
    MmioWrite,
    /// A read of a VT-d register (DRHD, VT-d spec 10.4): FSTS polling among them.
    DrhdRead,
    /// A write of IQT (VT-d spec 10.4.22): the guest submits queued invalidations.
    DrhdIqtWrite,
    /// Any other VT-d register write.
    DrhdWrite,
    /// Everything else (a kick, an EOI, a halt, a system event).
    Other,
}

const KINDS: [ExitKind; 8] = [
    ExitKind::PioIn,
    ExitKind::PioOut,
    ExitKind::MmioRead,
    ExitKind::MmioWrite,
    ExitKind::DrhdRead,
    ExitKind::DrhdIqtWrite,
    ExitKind::DrhdWrite,
    ExitKind::Other,
];

impl ExitKind {
    /// What `exit` is; `drhd` is the VT-d unit's register range, if the VM has one.
    pub fn of(exit: &Exit<'_>, drhd: Option<(u64, u64)>) -> ExitKind {
        let in_drhd = |a: u64| drhd.is_some_and(|(start, size)| a.wrapping_sub(start) < size);
        match *exit {
            Exit::IoIn(..) => ExitKind::PioIn,
            Exit::IoOut(..) => ExitKind::PioOut,
            Exit::MmioRead(a, _) if in_drhd(a) => ExitKind::DrhdRead,
            Exit::MmioWrite(a, _) if in_drhd(a) => match drhd {
                Some((start, _)) if a - start == iommu::registers::IQT_REG => {
                    ExitKind::DrhdIqtWrite
                }
                _ => ExitKind::DrhdWrite,
            },
            Exit::MmioRead(..) => ExitKind::MmioRead,
            Exit::MmioWrite(..) => ExitKind::MmioWrite,
            _ => ExitKind::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ExitKind::PioIn => "pio-in",
            ExitKind::PioOut => "pio-out",
            ExitKind::MmioRead => "mmio-read",
            ExitKind::MmioWrite => "mmio-write",
            ExitKind::DrhdRead => "vtd-read",
            ExitKind::DrhdIqtWrite => "vtd-iqt-write",
            ExitKind::DrhdWrite => "vtd-write",
            ExitKind::Other => "other",
        }
    }
}

#[derive(Default)]
struct Counters {
    count: AtomicU64,
    in_kvm_ns: AtomicU64,
    handler_ns: AtomicU64,
}

/// The counters of one VM's vCPUs, shared by its vCPU threads.
#[derive(Default)]
pub struct ExitCosts {
    kinds: [Counters; KINDS.len()],
}

impl ExitCosts {
    /// One exit of `kind`: `in_kvm` in KVM_RUN before it, `handler` in minivmm after it.
    pub fn record(&self, kind: ExitKind, in_kvm: Duration, handler: Duration) {
        let c = &self.kinds[kind as usize];
        c.count.fetch_add(1, Ordering::Relaxed);
        c.in_kvm_ns
            .fetch_add(in_kvm.as_nanos() as u64, Ordering::Relaxed);
        c.handler_ns
            .fetch_add(handler.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The kinds seen so far, in a fixed order.
    pub fn state(&self) -> Vec<ExitCost> {
        KINDS
            .iter()
            .zip(&self.kinds)
            .filter_map(|(k, c)| {
                let count = c.count.load(Ordering::Relaxed);
                (count > 0).then(|| ExitCost {
                    kind: k.name().into(),
                    count,
                    in_kvm_ns: c.in_kvm_ns.load(Ordering::Relaxed),
                    handler_ns: c.handler_ns.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRHD: Option<(u64, u64)> = Some((0xfed9_0000, 0x1000));

    #[test]
    fn exit_kind_drhd_accesses_are_told_apart() {
        let mut b = [0u8; 4];
        let iqt = 0xfed9_0000 + iommu::registers::IQT_REG;
        let fsts = 0xfed9_0000 + iommu::registers::FSTS_REG;
        assert_eq!(
            ExitKind::of(&Exit::MmioWrite(iqt, &b), DRHD),
            ExitKind::DrhdIqtWrite
        );
        assert_eq!(
            ExitKind::of(&Exit::MmioWrite(fsts, &b), DRHD),
            ExitKind::DrhdWrite
        );
        assert_eq!(
            ExitKind::of(&Exit::MmioRead(fsts, &mut b), DRHD),
            ExitKind::DrhdRead
        );
        assert_eq!(
            ExitKind::of(&Exit::MmioRead(0xfed9_1000, &mut b), DRHD),
            ExitKind::MmioRead
        );
        assert_eq!(
            ExitKind::of(&Exit::MmioWrite(iqt, &b), None),
            ExitKind::MmioWrite
        );
        assert_eq!(
            ExitKind::of(&Exit::IoOut(0x3f8, &b), DRHD),
            ExitKind::PioOut
        );
        assert_eq!(ExitKind::of(&Exit::Hlt, DRHD), ExitKind::Other);
    }

    #[test]
    fn exit_costs_sum_per_kind_and_skip_unseen_kinds() {
        let c = ExitCosts::default();
        let us = Duration::from_micros;
        c.record(ExitKind::DrhdIqtWrite, us(100), us(10));
        c.record(ExitKind::DrhdIqtWrite, us(50), us(30));
        c.record(ExitKind::PioOut, us(7), us(1));
        let s = c.state();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(
            (
                s[0].kind.as_str(),
                s[0].count,
                s[0].in_kvm_ns,
                s[0].handler_ns
            ),
            ("pio-out", 1, 7_000, 1_000)
        );
        assert_eq!(
            (
                s[1].kind.as_str(),
                s[1].count,
                s[1].in_kvm_ns,
                s[1].handler_ns
            ),
            ("vtd-iqt-write", 2, 150_000, 40_000)
        );
    }
}
