use devices::ioapic::PinState;
use devices::pci::vectors::VectorMessage;
use devices::vfio::{IntxState, Mode};
use iommu::translation::TranslationType;
use iommu::unit::{
    ContextState, FaultState, InvalidationStats, IrteState, LimitsState, MappedRange, TrackedState,
};
use iommu::FaultReason;
use regex::Regex;

use super::*;

/// The lab's host BDFs look like these (tests/nested/l0-init, `to_vfio`).
const EDU_BDF: &str = "0000:00:03.0";
const NVME_BDF: &str = "0000:00:04.0";

fn dma(device: &str, largest: u64) -> VfioDmaState {
    VfioDmaState {
        device: device.into(),
        mappings: 3,
        identity: false,
        largest,
        maps: 12,
        map_failures: 0,
        map_avg_us: 7,
        unmaps: 9,
        unmap_avg_us: 5,
        identity_error: None,
        stopped: false,
    }
}

fn interrupts(mode: Mode, intx: Option<IntxState>, vectors: Vec<VectorState>) -> InterruptsState {
    InterruptsState {
        mode,
        relayed: 0,
        intx,
        vectors,
    }
}

/// A VM like the lab's 60-vfio run: edu and an NVMe controller passed through behind the
/// vIOMMU in caching mode.
pub(crate) fn sample() -> VmState {
    let edu_guest = Bdf::new(0, 1, 0);
    let nvme_guest = Bdf::new(0, 2, 0);
    VmState {
        ioapic: IoapicState {
            id: 0,
            source: Bdf::new(0, 0x1f, 0),
            pins: vec![PinState {
                pin: 4,
                entry: 0x1_0000_0031,
                vector: 0x31,
                level: false,
                masked: false,
                asserted: true,
            }],
        },
        iommu: Some(IommuState {
            unit: UnitState {
                translation: true,
                queued_invalidation: true,
                interrupt_remapping: true,
                compat_format: false,
                x2apic: true,
                root_table: 0x10_0000,
                irta: 0x20_0000,
                irte_entries: 65536,
                iqa: 0x30_0000,
                iqh: 17,
                iqt: 17,
                fsts: 0,
                context_cache_entries: 1,
                iotlb_entries: 4,
                iotlb_capacity: 4096,
                interrupt_entry_cache_entries: 2,
                contexts: vec![ContextState {
                    source: edu_guest,
                    domain: 1,
                    translation_type: TranslationType::Untranslated,
                    levels: 4,
                    table: 0x40_0000,
                }],
                tracked: vec![TrackedState {
                    device: edu_guest,
                    ranges: 3,
                    bytes: 0x20_2000,
                    peak_ranges: Some(5),
                    refused_ranges: Some(0),
                    mapped: vec![MappedRange {
                        iova: 0x1000,
                        gpa: 0x20_0000,
                        size: 0x20_2000,
                        read: true,
                        write: true,
                    }],
                }],
                host_mapping_failures: 1,
                host_effects_outstanding: false,
                limits: LimitsState {
                    peak_walk_per_invalidation: 1024,
                    peak_walk_per_queue_write: 2048,
                    walk_budget_per_domain: 1 << 20,
                    walk_budget_per_write: 1 << 22,
                    range_cap: 65536,
                },
                faults: vec![FaultState {
                    source: edu_guest,
                    reason: FaultReason::WriteDenied,
                    info: 0x7000,
                }],
                invalidations: vec![InvalidationStats {
                    kind: "iotlb",
                    count: 9,
                    avg_ns: 1200,
                }],
                interrupt_entries: vec![IrteState {
                    index: 3,
                    vector: 0x41,
                    destination: 1,
                    logical: false,
                    level_triggered: false,
                    delivery_mode: 0,
                }],
            },
            writes: RegisterWriteCosts {
                iqt_writes: 40,
                iqt_avg_us: 12,
                other_writes: 30,
                other_avg_us: 3,
            },
            invalidation: InvalidationCosts {
                iqt_writes: 40,
                total_ns: 480_000,
                lock_ns: 40_000,
                unit_ns: 120_000,
                effects_ns: 280_000,
                ack_ns: 40_000,
                with_effects: 21,
                reads: 100,
                read_ns: 250_000,
            },
            listeners: vec![dma(EDU_BDF, 0x20_0000), dma(NVME_BDF, 0x1000)],
        }),
        passthrough: vec![
            PassthroughState {
                name: EDU_BDF.into(),
                address: edu_guest,
                interrupts: interrupts(
                    Mode::Msi,
                    Some(IntxState {
                        asserted: false,
                        assertions: 3,
                    }),
                    vec![VectorState {
                        index: 0,
                        delivery: VectorDelivery::InHypervisor,
                        message: Some(VectorMessage {
                            address: 0xfee0_0000,
                            data: 0x41,
                        }),
                        pending: false,
                    }],
                ),
                dma: dma(EDU_BDF, 0x20_0000),
            },
            PassthroughState {
                name: NVME_BDF.into(),
                address: nvme_guest,
                interrupts: interrupts(
                    Mode::Msix,
                    None,
                    vec![
                        VectorState {
                            index: 0,
                            delivery: VectorDelivery::Masked,
                            message: None,
                            pending: true,
                        },
                        VectorState {
                            index: 1,
                            delivery: VectorDelivery::Unprogrammed,
                            message: None,
                            pending: false,
                        },
                    ],
                ),
                dma: dma(NVME_BDF, 0x1000),
            },
        ],
        emulated: vec![EmulatedDmaState {
            name: "virtio-blk".into(),
            address: Bdf::new(0, 3, 0),
            iotlb: IotlbStats {
                hits: 995,
                misses: 5,
                invalidations: 7,
                device_invalidations: 3,
                entries: 4,
            },
            ats_control: Some(0x8000),
        }],
        irqfd_routes: vec![IrqfdRoute {
            gsi: 24,
            address: 0xfee0_0000,
            data: 0x41,
        }],
        exits: vec![ExitCost {
            kind: "vtd-iqt-write".into(),
            count: 40,
            in_kvm_ns: 4_000_000,
            handler_ns: 520_000,
        }],
    }
}

/// grep -E PATTERN: some line matches.
fn greps(text: &str, pattern: &str) -> bool {
    let re = Regex::new(pattern).unwrap();
    text.lines().any(|l| re.is_match(l))
}

/// The lines of the state dump that tests/nested/scenarios/60-vfio.sh and
/// tests/nested/bench-inner.sh extract, with their patterns as written there.
#[test]
fn rendered_state_matches_the_lab_patterns() {
    let text = render(&sample());
    // 60-vfio.sh: expect "vfio $EDU_BDF: .*largest 0x200000\)".
    assert!(
        greps(&text, &format!(r"vfio {EDU_BDF}: .*largest 0x200000\)")),
        "{text}"
    );
    // 60-vfio.sh: grep -A1 "^ *passthrough $NVME_BDF" | tail -n1 | grep -q " 0 relayed by the VMM".
    let start = Regex::new(&format!("^ *passthrough {NVME_BDF}")).unwrap();
    let lines: Vec<_> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| start.is_match(l))
        .expect("a passthrough line for the NVMe");
    assert!(lines[at + 1].contains(" 0 relayed by the VMM"), "{text}");
    // 60-vfio.sh: expect "INTx idle \([1-9][0-9]* assertions\)".
    assert!(
        greps(&text, r"INTx idle \([1-9][0-9]* assertions\)"),
        "{text}"
    );
    // bench-inner.sh: grep -m1 "tail writes handled" and grep -m1 VFIO_IOMMU_MAP_DMA, with the
    // leading blanks replaced ("minivmm cost (run N): ...").
    let first = |what: &str| {
        lines
            .iter()
            .find(|l| l.contains(what))
            .map(|l| l.trim_start())
    };
    assert_eq!(
        first("tail writes handled"),
        Some("40 invalidation queue tail writes handled, 12 us on average; 30 other register writes, 3 us on average")
    );
    assert_eq!(
        first("VFIO_IOMMU_MAP_DMA"),
        Some(&*format!("vfio {EDU_BDF}: 3 host mappings (largest 0x200000); 12 VFIO_IOMMU_MAP_DMA (0 failed, avg 7 us), 9 VFIO_IOMMU_UNMAP_DMA (avg 5 us)"))
    );
    // bench-inner.sh: grep -m1 "invalidation breakdown" and grep "^ *vCPU exits vtd-" (the
    // log indents the dump), with the leading blanks replaced.
    assert_eq!(
        first("invalidation breakdown"),
        Some("invalidation breakdown per IQT write (us): total 12.0, locks 1.0, unit (decode/walk/diff) 3.0, host effects 7.0, acknowledge 1.0; 21 of 40 with host effects; 100 register reads, 2.5 us each")
    );
    assert!(
        greps(
            &text,
            r"^vCPU exits vtd-iqt-write: 40, 100\.0 us in KVM_RUN before each, 13\.0 us in minivmm after each$"
        ),
        "{text}"
    );
    // The limits line the README's Security section quotes peaks from.
    assert!(
        greps(
            &text,
            r"^  limits: largest walk [0-9]+ entries per invalidation, [0-9]+ per IQT write \(budgets [0-9]+ per domain, [0-9]+ per write\); range cap [0-9]+(, [0-9a-f:.]+ peak [0-9]+ ranges \([0-9]+ refused\))*$"
        ),
        "{text}"
    );
}

/// The whole text, as the formatting spread over the crates produced it before the state
/// became data (and the emulated devices' line since).
#[test]
fn rendered_state_is_the_previous_text() {
    let expected = format!(
        "\
IOAPIC id 0 (source 00:1f.0)
  pin  4: 0x0000000100000031 vector 0x31 edge unmasked asserted
VT-d unit: translation on, queued invalidation on, interrupt remapping on (compat off, x2APIC mode)
  root table 0x100000, IRTA 0x200000 (65536 entries), IQA 0x300000 IQH 17 IQT 17
  FSTS 0x0, context cache 1 entries, IOTLB 4/4096 entries, interrupt entry cache 2 entries
  context 00:01.0: domain 1 Untranslated 4-level tables at 0x400000
  tracked 00:01.0: 3 ranges, 0x202000 bytes mapped
  1 host mapping failures
  limits: largest walk 1024 entries per invalidation, 2048 per IQT write (budgets 1048576 per domain, 4194304 per write); range cap 65536, 00:01.0 peak 5 ranges (0 refused)
  fault: 00:01.0 WriteDenied at 0x7000
  40 invalidation queue tail writes handled, 12 us on average; 30 other register writes, 3 us on average
  invalidation breakdown per IQT write (us): total 12.0, locks 1.0, unit (decode/walk/diff) 3.0, host effects 7.0, acknowledge 1.0; 21 of 40 with host effects; 100 register reads, 2.5 us each
vfio {EDU_BDF}: 3 host mappings (largest 0x200000); 12 VFIO_IOMMU_MAP_DMA (0 failed, avg 7 us), 9 VFIO_IOMMU_UNMAP_DMA (avg 5 us)
vfio {NVME_BDF}: 3 host mappings (largest 0x1000); 12 VFIO_IOMMU_MAP_DMA (0 failed, avg 7 us), 9 VFIO_IOMMU_UNMAP_DMA (avg 5 us)
passthrough {EDU_BDF} at 00:01.0:
  interrupts: Msi, 0 relayed by the VMM, INTx idle (3 assertions)
    vector 0: in KVM 0xfee00000/0x41
  vfio {EDU_BDF}: 3 host mappings (largest 0x200000); 12 VFIO_IOMMU_MAP_DMA (0 failed, avg 7 us), 9 VFIO_IOMMU_UNMAP_DMA (avg 5 us)
passthrough {NVME_BDF} at 00:02.0:
  interrupts: Msix, 0 relayed by the VMM
    vector 0: masked pending
    vector 1: unprogrammed
  vfio {NVME_BDF}: 3 host mappings (largest 0x1000); 12 VFIO_IOMMU_MAP_DMA (0 failed, avg 7 us), 9 VFIO_IOMMU_UNMAP_DMA (avg 5 us)
emulated virtio-blk at 00:03.0: IOTLB 995 hits, 5 misses (hit rate 99.5%), 7 invalidations (3 device-TLB), 4 entries; ATS enabled (STU 0)
vCPU exits vtd-iqt-write: 40, 100.0 us in KVM_RUN before each, 13.0 us in minivmm after each
  KVM irqfd route: GSI 24 -> 0xfee00000/0x41
"
    );
    assert_eq!(render(&sample()), expected);
}

#[test]
fn render_vcpu_without_apic_prints_dashes() {
    let line = render_vcpu(&VcpuState::Running {
        id: 1,
        rip: 0xfff0,
        rsp: 0x7000,
        rflags: 0x202,
        apic: None,
    });
    assert_eq!(
        line,
        "vCPU 1: RIP 0xfff0 RSP 0x7000 RFLAGS 0x202 (IF 1), APIC TPR 0x0 ISR - IRR -\n"
    );
}

#[test]
fn render_vcpu_with_apic_prints_highest_vectors() {
    let line = render_vcpu(&VcpuState::Running {
        id: 0,
        rip: 0x1000,
        rsp: 0x8000,
        rflags: 0x2,
        apic: Some(ApicState {
            tpr: 0x10,
            isr: Some(0x31),
            irr: None,
        }),
    });
    assert_eq!(
        line,
        "vCPU 0: RIP 0x1000 RSP 0x8000 RFLAGS 0x2 (IF 0), APIC TPR 0x10 ISR 0x31 IRR -\n"
    );
}

#[test]
fn rendered_state_shows_each_emulated_device_iotlb_and_ats() {
    let text = render(&sample());
    assert!(
        text.contains(
            "emulated virtio-blk at 00:03.0: IOTLB 995 hits, 5 misses (hit rate 99.5%), \
             7 invalidations (3 device-TLB), 4 entries; ATS enabled (STU 0)"
        ),
        "{text}"
    );
}

#[test]
fn rendered_state_hit_rate_without_lookups_is_a_dash_and_no_ats_is_omitted() {
    let mut vm = sample();
    vm.emulated[0].iotlb = IotlbStats::default();
    vm.emulated[0].ats_control = None;
    let text = render(&vm);
    assert!(
        text.contains(
            "IOTLB 0 hits, 0 misses (hit rate -), 0 invalidations (0 device-TLB), 0 entries\n"
        ),
        "{text}"
    );
}
