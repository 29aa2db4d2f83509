//! The VM's interrupt, IOMMU and passthrough state as data, and its one text form: what
//! SIGUSR1 prints (and `RUST_LOG=info` at exit). Each part comes from its owner as a plain
//! struct (`iommu::unit::UnitState`, `devices::ioapic::IoapicState`, ...); only [`render`]
//! and [`render_vcpu`] turn them into text. The nested lab greps this text (see the test
//! `rendered_state_matches_the_lab_patterns`): keep those lines as they are.

use std::fmt::Write;

use devices::dma::IotlbStats;
use devices::ioapic::IoapicState;
use devices::pci::vectors::{VectorDelivery, VectorState};
use devices::vfio::InterruptsState;
use iommu::unit::UnitState;
use iommu::Bdf;
use serde::Serialize;

/// Everything the state dump shows, but the vCPUs (each prints its own line, [`VcpuState`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmState {
    pub ioapic: IoapicState,
    pub iommu: Option<IommuState>,
    pub passthrough: Vec<PassthroughState>,
    /// Emulated devices whose DMA goes through a translation cache (edu, virtio).
    pub emulated: Vec<EmulatedDmaState>,
    pub irqfd_routes: Vec<IrqfdRoute>,
    /// vCPU exits by kind and where their time went (`crate::exit_costs`).
    pub exits: Vec<ExitCost>,
}

/// The vCPU exits of one kind: how many, the time in KVM_RUN before them and in minivmm's
/// handling after them (all vCPUs, nanoseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExitCost {
    pub kind: String,
    pub count: u64,
    pub in_kvm_ns: u64,
    pub handler_ns: u64,
}

/// An emulated device's translation cache (its IOTLB) and, for a virtio function with the
/// ATS capability, its ATS Control register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EmulatedDmaState {
    pub name: String,
    pub address: Bdf,
    pub iotlb: IotlbStats,
    /// ATS Control (PCIe base 10.5.1.3) when the function has the capability.
    pub ats_control: Option<u16>,
}

/// The emulated VT-d unit with what handling its registers cost and its DMA listeners.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IommuState {
    pub unit: UnitState,
    pub writes: RegisterWriteCosts,
    /// Where the time of IQT writes went.
    pub invalidation: InvalidationCosts,
    /// The map listeners (VFIO containers), by device.
    pub listeners: Vec<VfioDmaState>,
}

/// Register writes the guest made to the unit and their average handling time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RegisterWriteCosts {
    /// IQT writes (queued invalidations).
    pub iqt_writes: u64,
    pub iqt_avg_us: u64,
    pub other_writes: u64,
    pub other_avg_us: u64,
}

/// IQT writes (each carries out the guest's queued invalidations) split by phase, totals in
/// nanoseconds: waiting for the unit's locks, the unit's own work (decoding descriptors,
/// walking the guest's tables and diffing them against what the host holds), carrying out
/// the host effects (the listeners: VFIO ioctls and what surrounds them; interrupt routes),
/// and acknowledging them (the queue runs on to its wait descriptor and completes it).
/// Register reads (FSTS polling among them) are counted too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InvalidationCosts {
    pub iqt_writes: u64,
    pub total_ns: u64,
    pub lock_ns: u64,
    pub unit_ns: u64,
    pub effects_ns: u64,
    pub ack_ns: u64,
    /// IQT writes that produced host effects (map events or route changes).
    pub with_effects: u64,
    pub reads: u64,
    pub read_ns: u64,
}

/// What a VFIO container holds for one device and what keeping it in step cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VfioDmaState {
    pub device: String,
    pub mappings: usize,
    /// All guest RAM is mapped at IOVA = GPA (no translation).
    pub identity: bool,
    pub largest: u64,
    pub maps: u64,
    pub map_failures: u64,
    pub map_avg_us: u64,
    pub unmaps: u64,
    pub unmap_avg_us: u64,
    pub identity_error: Option<String>,
    /// A host unmap failed and bus mastering is refused.
    pub stopped: bool,
}

/// A passed-through function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PassthroughState {
    pub name: String,
    pub address: Bdf,
    pub interrupts: InterruptsState,
    pub dma: VfioDmaState,
}

/// A KVM GSI route an irqfd delivers through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IrqfdRoute {
    pub gsi: u32,
    pub address: u64,
    pub data: u32,
}

/// Where a vCPU is: its registers and the highest vectors at its local APIC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum VcpuState {
    Running {
        id: u32,
        rip: u64,
        rsp: u64,
        rflags: u64,
        /// Absent when the local APIC could not be read.
        apic: Option<ApicState>,
    },
    Unavailable {
        id: u32,
        error: String,
    },
}

/// The local APIC's task priority and highest vectors in service and requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ApicState {
    pub tpr: u8,
    pub isr: Option<u8>,
    pub irr: Option<u8>,
}

/// The state dump's text.
pub fn render(vm: &VmState) -> String {
    let mut s = String::new();
    render_ioapic(&mut s, &vm.ioapic);
    if let Some(i) = &vm.iommu {
        render_unit(&mut s, &i.unit);
        let w = &i.writes;
        let _ = writeln!(
            s,
            "  {} invalidation queue tail writes handled, {} us on average; {} other register writes, {} us on average",
            w.iqt_writes, w.iqt_avg_us, w.other_writes, w.other_avg_us
        );
        render_invalidation(&mut s, &i.invalidation);
        for l in &i.listeners {
            render_dma(&mut s, l);
        }
    }
    for p in &vm.passthrough {
        let _ = writeln!(s, "passthrough {} at {}:", p.name, p.address);
        render_interrupts(&mut s, &p.interrupts);
        s += "  ";
        render_dma(&mut s, &p.dma);
    }
    for e in &vm.emulated {
        render_emulated(&mut s, e);
    }
    for e in &vm.exits {
        render_exit(&mut s, e);
    }
    for r in &vm.irqfd_routes {
        let _ = writeln!(
            s,
            "  KVM irqfd route: GSI {} -> {:#x}/{:#x}",
            r.gsi, r.address, r.data
        );
    }
    s
}

/// Nanoseconds per item as microseconds with one decimal.
fn avg_us(ns: u64, n: u64) -> String {
    format!("{:.1}", ns.checked_div(n).unwrap_or(0) as f64 / 1000.0)
}

fn render_invalidation(s: &mut String, c: &InvalidationCosts) {
    let n = c.iqt_writes;
    let _ = writeln!(
        s,
        "  invalidation breakdown per IQT write (us): total {}, locks {}, unit (decode/walk/diff) {}, host effects {}, acknowledge {}; {} of {} with host effects; {} register reads, {} us each",
        avg_us(c.total_ns, n),
        avg_us(c.lock_ns, n),
        avg_us(c.unit_ns, n),
        avg_us(c.effects_ns, n),
        avg_us(c.ack_ns, n),
        c.with_effects,
        n,
        c.reads,
        avg_us(c.read_ns, c.reads),
    );
}

fn render_exit(s: &mut String, e: &ExitCost) {
    let _ = writeln!(
        s,
        "vCPU exits {}: {}, {} us in KVM_RUN before each, {} us in minivmm after each",
        e.kind,
        e.count,
        avg_us(e.in_kvm_ns, e.count),
        avg_us(e.handler_ns, e.count),
    );
}

/// A vCPU's line.
pub fn render_vcpu(v: &VcpuState) -> String {
    match v {
        VcpuState::Unavailable { id, error } => {
            format!("vCPU {id}: registers unavailable: {error}\n")
        }
        VcpuState::Running {
            id,
            rip,
            rsp,
            rflags,
            apic,
        } => {
            let vec = |v: Option<u8>| v.map_or("-".to_string(), |v| format!("{v:#04x}"));
            format!(
                "vCPU {id}: RIP {rip:#x} RSP {rsp:#x} RFLAGS {rflags:#x} (IF {}), APIC TPR {:#x} ISR {} IRR {}\n",
                (rflags >> 9) & 1,
                apic.map_or(0, |a| a.tpr),
                vec(apic.and_then(|a| a.isr)),
                vec(apic.and_then(|a| a.irr)),
            )
        }
    }
}

fn render_ioapic(s: &mut String, a: &IoapicState) {
    let _ = writeln!(s, "IOAPIC id {} (source {})", a.id, a.source);
    for p in &a.pins {
        let _ = writeln!(
            s,
            "  pin {:2}: {:#018x} vector {:#04x} {} {}{}",
            p.pin,
            p.entry,
            p.vector,
            if p.level { "level" } else { "edge" },
            if p.masked { "masked" } else { "unmasked" },
            if p.asserted { " asserted" } else { "" }
        );
    }
}

fn render_unit(s: &mut String, u: &UnitState) {
    let on = |b: bool| if b { "on" } else { "off" };
    let _ = writeln!(
        s,
        "VT-d unit: translation {}, queued invalidation {}, interrupt remapping {} (compat {}, {} mode)",
        on(u.translation),
        on(u.queued_invalidation),
        on(u.interrupt_remapping),
        on(u.compat_format),
        if u.x2apic { "x2APIC" } else { "xAPIC" },
    );
    let _ = writeln!(
        s,
        "  root table {:#x}, IRTA {:#x} ({} entries), IQA {:#x} IQH {} IQT {}",
        u.root_table, u.irta, u.irte_entries, u.iqa, u.iqh, u.iqt
    );
    let _ = writeln!(
        s,
        "  FSTS {:#x}, context cache {} entries, IOTLB {}/{} entries, interrupt entry cache {} entries",
        u.fsts,
        u.context_cache_entries,
        u.iotlb_entries,
        u.iotlb_capacity,
        u.interrupt_entry_cache_entries
    );
    for c in &u.contexts {
        let _ = writeln!(
            s,
            "  context {}: domain {} {:?} {}-level tables at {:#x}",
            c.source, c.domain, c.translation_type, c.levels, c.table
        );
    }
    let mut peaks = String::new();
    for t in &u.tracked {
        let _ = writeln!(
            s,
            "  tracked {}: {} ranges, {:#x} bytes mapped",
            t.device, t.ranges, t.bytes
        );
        if let (Some(peak), Some(refused)) = (t.peak_ranges, t.refused_ranges) {
            let _ = write!(
                peaks,
                ", {} peak {peak} ranges ({refused} refused)",
                t.device
            );
        }
    }
    if u.host_mapping_failures > 0 {
        let _ = writeln!(s, "  {} host mapping failures", u.host_mapping_failures);
    }
    if u.host_effects_outstanding {
        s.push_str("  completions waiting for host effects to be applied\n");
    }
    let l = &u.limits;
    let _ = writeln!(
        s,
        "  limits: largest walk {} entries per invalidation, {} per IQT write (budgets {} per domain, {} per write); range cap {}{peaks}",
        l.peak_walk_per_invalidation,
        l.peak_walk_per_queue_write,
        l.walk_budget_per_domain,
        l.walk_budget_per_write,
        l.range_cap,
    );
    for f in &u.faults {
        let _ = writeln!(s, "  fault: {} {:?} at {:#x}", f.source, f.reason, f.info);
    }
}

/// "hit rate" in tenths of a percent, without floating point (none when nothing was looked up).
fn hit_rate(i: &IotlbStats) -> String {
    let total = i.hits.saturating_add(i.misses);
    if total == 0 {
        return "-".into();
    }
    let permille = i.hits.saturating_mul(1000) / total;
    format!("{}.{}%", permille / 10, permille % 10)
}

fn render_emulated(s: &mut String, e: &EmulatedDmaState) {
    let i = &e.iotlb;
    let ats = match e.ats_control {
        None => String::new(),
        Some(c) => format!(
            "; ATS {} (STU {})",
            if c & 0x8000 != 0 {
                "enabled"
            } else {
                "disabled"
            },
            c & 0x1f
        ),
    };
    let _ = writeln!(
        s,
        "emulated {} at {}: IOTLB {} hits, {} misses (hit rate {}), {} invalidations ({} device-TLB), {} entries{ats}",
        e.name,
        e.address,
        i.hits,
        i.misses,
        hit_rate(i),
        i.invalidations,
        i.device_invalidations,
        i.entries,
    );
}

fn render_dma(s: &mut String, d: &VfioDmaState) {
    let _ = writeln!(
        s,
        "vfio {}: {} host mappings{} (largest {:#x}); {} VFIO_IOMMU_MAP_DMA ({} failed, avg {} us), {} VFIO_IOMMU_UNMAP_DMA (avg {} us)",
        d.device,
        d.mappings,
        if d.identity { " + all RAM at IOVA = GPA" } else { "" },
        d.largest,
        d.maps,
        d.map_failures,
        d.map_avg_us,
        d.unmaps,
        d.unmap_avg_us,
    );
    if let Some(e) = &d.identity_error {
        let _ = writeln!(s, "  identity mapping failed: {e}");
    }
    if d.stopped {
        s.push_str("  STOPPED: a host unmap failed; bus mastering refused\n");
    }
}

fn render_interrupts(s: &mut String, i: &InterruptsState) {
    let _ = write!(
        s,
        "  interrupts: {:?}, {} relayed by the VMM",
        i.mode, i.relayed
    );
    if let Some(x) = &i.intx {
        let _ = write!(
            s,
            ", INTx {} ({} assertions)",
            if x.asserted { "asserted" } else { "idle" },
            x.assertions
        );
    }
    s.push('\n');
    for v in &i.vectors {
        render_vector(s, v);
    }
}

fn render_vector(s: &mut String, v: &VectorState) {
    let how = match v.delivery {
        VectorDelivery::InHypervisor => "in KVM",
        VectorDelivery::Unprogrammed => "unprogrammed",
        VectorDelivery::Masked => "masked",
        VectorDelivery::Relayed => "relayed",
    };
    let msg = v.message.map_or(String::new(), |m| {
        format!(" {:#x}/{:#x}", m.address, m.data)
    });
    let pending = if v.pending { " pending" } else { "" };
    let _ = writeln!(s, "    vector {}: {how}{msg}{pending}", v.index);
}

#[cfg(test)]
pub(crate) mod tests;
