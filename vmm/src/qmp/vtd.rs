//! The live vIOMMU view (`x-query-vtd`, `info iommu`): the VM's state data regrouped by
//! device (domain, context mode, mappings as ranges, IOTLB counters, VFIO host mappings),
//! with the unit's faults decoded, the interrupt remapping entries in use and the queued
//! invalidations by type.

use std::collections::BTreeMap;
use std::fmt::Write;

use iommu::translation::TranslationType;
use iommu::unit::{InvalidationStats, IrteState, MappedRange};
use iommu::{Bdf, FaultReason};
use serde::Serialize;

use crate::state::{RegisterWriteCosts, VfioDmaState, VmState};

/// The whole view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VtdView {
    pub translation: bool,
    pub queued_invalidation: bool,
    pub interrupt_remapping: bool,
    pub x2apic: bool,
    pub root_table: u64,
    pub iotlb_entries: usize,
    pub iotlb_capacity: usize,
    pub devices: Vec<DeviceView>,
    pub faults: Vec<FaultView>,
    pub interrupt_entries: Vec<IrteState>,
    pub invalidations: Vec<InvalidationStats>,
    pub register_writes: RegisterWriteCosts,
}

/// One device behind the unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    pub bdf: Bdf,
    /// The minivmm device (edu, virtio-blk, a host address for VFIO), when one is known.
    pub name: Option<String>,
    /// From the cached context entry; absent while the unit has none cached.
    pub domain: Option<u16>,
    /// "translated", "pass-through", or "uncached" (no context entry cached: the device
    /// made no request since the last context invalidation, or its entry is not present).
    pub mode: &'static str,
    pub levels: Option<u8>,
    /// The mappings the unit tracks for it (caching mode: VFIO devices), coalesced.
    pub mappings: Vec<MappedRange>,
    pub mapped_bytes: u64,
    /// The device's own translation cache (emulated devices).
    pub iotlb: Option<IotlbView>,
    /// The host mappings of a VFIO device.
    pub vfio: Option<VfioDmaState>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IotlbView {
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
    pub invalidations: u64,
    pub device_invalidations: u64,
}

/// A pending fault record, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultView {
    pub requester: Bdf,
    /// The fault reason code (VT-d 7.1.3, appendix A).
    pub reason_code: u8,
    pub reason: String,
    /// The faulting address (page-granular for DMA, the interrupt index for interrupts).
    pub address: u64,
}

fn mode(t: TranslationType) -> &'static str {
    match t {
        TranslationType::Untranslated | TranslationType::DeviceTlb => "translated",
        TranslationType::PassThrough => "pass-through",
    }
}

/// "WriteDenied" -> "write denied".
fn reason_text(r: FaultReason) -> String {
    let name = format!("{r:?}");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The view of `vm`, if it has a VT-d unit.
pub fn view(vm: &VmState) -> Option<VtdView> {
    let i = vm.iommu.as_ref()?;
    let u = &i.unit;
    let mut devices: BTreeMap<Bdf, DeviceView> = BTreeMap::new();
    let get = |devices: &mut BTreeMap<Bdf, DeviceView>, bdf: Bdf| -> Bdf {
        devices.entry(bdf).or_insert_with(|| DeviceView {
            bdf,
            name: None,
            domain: None,
            mode: "uncached",
            levels: None,
            mappings: Vec::new(),
            mapped_bytes: 0,
            iotlb: None,
            vfio: None,
        });
        bdf
    };
    for c in &u.contexts {
        let b = get(&mut devices, c.source);
        if let Some(d) = devices.get_mut(&b) {
            d.domain = Some(c.domain);
            d.mode = mode(c.translation_type);
            d.levels = Some(c.levels);
        }
    }
    for t in &u.tracked {
        let b = get(&mut devices, t.device);
        if let Some(d) = devices.get_mut(&b) {
            d.mappings = t.mapped.clone();
            d.mapped_bytes = t.bytes;
        }
    }
    for e in &vm.emulated {
        let b = get(&mut devices, e.address);
        if let Some(d) = devices.get_mut(&b) {
            d.name = Some(e.name.clone());
            d.iotlb = Some(IotlbView {
                entries: e.iotlb.entries,
                hits: e.iotlb.hits,
                misses: e.iotlb.misses,
                invalidations: e.iotlb.invalidations,
                device_invalidations: e.iotlb.device_invalidations,
            });
        }
    }
    for p in &vm.passthrough {
        let b = get(&mut devices, p.address);
        if let Some(d) = devices.get_mut(&b) {
            d.name = Some(p.name.clone());
            d.vfio = Some(p.dma.clone());
        }
    }
    Some(VtdView {
        translation: u.translation,
        queued_invalidation: u.queued_invalidation,
        interrupt_remapping: u.interrupt_remapping,
        x2apic: u.x2apic,
        root_table: u.root_table,
        iotlb_entries: u.iotlb_entries,
        iotlb_capacity: u.iotlb_capacity,
        devices: devices.into_values().collect(),
        faults: u
            .faults
            .iter()
            .map(|f| FaultView {
                requester: f.source,
                reason_code: f.reason as u8,
                reason: reason_text(f.reason),
                address: f.info,
            })
            .collect(),
        interrupt_entries: u.interrupt_entries.clone(),
        invalidations: u.invalidations.clone(),
        register_writes: i.writes,
    })
}

/// The view as text (`info iommu`).
pub fn render(v: &VtdView) -> String {
    let on = |b: bool| if b { "on" } else { "off" };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "VT-d: translation {}, queued invalidation {}, interrupt remapping {} ({}), root table {:#x}, IOTLB {}/{}",
        on(v.translation),
        on(v.queued_invalidation),
        on(v.interrupt_remapping),
        if v.x2apic { "x2APIC" } else { "xAPIC" },
        v.root_table,
        v.iotlb_entries,
        v.iotlb_capacity
    );
    for d in &v.devices {
        let dom = d.domain.map_or("-".to_string(), |x| x.to_string());
        let _ = writeln!(
            s,
            "  {} {}: domain {dom}, {}{}",
            d.bdf,
            d.name.as_deref().unwrap_or("?"),
            d.mode,
            d.levels
                .map_or(String::new(), |l| format!(", {l}-level tables")),
        );
        if !d.mappings.is_empty() {
            let _ = writeln!(
                s,
                "    {} ranges, {:#x} bytes mapped:",
                d.mappings.len(),
                d.mapped_bytes
            );
            for m in &d.mappings {
                let _ = writeln!(
                    s,
                    "      iova {:#x}-{:#x} -> gpa {:#x} {}{}",
                    m.iova,
                    m.iova.saturating_add(m.size).saturating_sub(1),
                    m.gpa,
                    if m.read { "r" } else { "-" },
                    if m.write { "w" } else { "-" },
                );
            }
        }
        if let Some(i) = &d.iotlb {
            let _ = writeln!(
                s,
                "    IOTLB {} entries, {} hits, {} misses, {} invalidations ({} device-TLB)",
                i.entries, i.hits, i.misses, i.invalidations, i.device_invalidations
            );
        }
        if let Some(f) = &d.vfio {
            let _ = writeln!(
                s,
                "    VFIO {} host mappings{} (largest {:#x}); {} MAP_DMA ({} failed, avg {} us), {} UNMAP_DMA (avg {} us)",
                f.mappings,
                if f.identity { " + all RAM at IOVA = GPA" } else { "" },
                f.largest,
                f.maps,
                f.map_failures,
                f.map_avg_us,
                f.unmaps,
                f.unmap_avg_us
            );
        }
    }
    for f in &v.faults {
        let _ = writeln!(
            s,
            "  fault: {} reason {:#04x} ({}) at {:#x}",
            f.requester, f.reason_code, f.reason, f.address
        );
    }
    for e in &v.interrupt_entries {
        let _ = writeln!(
            s,
            "  IRTE {}: vector {:#04x} -> APIC {} ({}, {}, delivery mode {})",
            e.index,
            e.vector,
            e.destination,
            if e.logical { "logical" } else { "physical" },
            if e.level_triggered { "level" } else { "edge" },
            e.delivery_mode
        );
    }
    for i in v.invalidations.iter().filter(|i| i.count > 0) {
        let _ = writeln!(
            s,
            "  invalidations {}: {} (avg {} ns)",
            i.kind, i.count, i.avg_ns
        );
    }
    let w = &v.register_writes;
    let _ = writeln!(
        s,
        "  register writes: {} IQT (avg {} us), {} other (avg {} us)",
        w.iqt_writes, w.iqt_avg_us, w.other_writes, w.other_avg_us
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtd_reason_text_splits_words() {
        assert_eq!(reason_text(FaultReason::WriteDenied), "write denied");
        assert_eq!(
            reason_text(FaultReason::RootEntryNotPresent),
            "root entry not present"
        );
    }

    #[test]
    fn vtd_view_groups_by_device_and_decodes_faults() {
        let vm = crate::state::tests::sample();
        let v = view(&vm).unwrap();
        let edu = v
            .devices
            .iter()
            .find(|d| d.domain == Some(1))
            .expect("the edu's context");
        assert_eq!(edu.mode, "translated");
        assert_eq!(edu.mappings.len(), 1);
        assert_eq!(edu.mapped_bytes, 0x20_2000);
        assert_eq!(v.faults[0].reason, "write denied");
        assert_eq!(v.faults[0].reason_code, 5);
        assert_eq!(v.interrupt_entries[0].vector, 0x41);
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["devices"][0]["mappings"][0]["iova"], 0x1000);
        let text = render(&v);
        assert!(text.contains("reason 0x05 (write denied)"), "{text}");
        assert!(
            text.contains("invalidations iotlb: 9 (avg 1200 ns)"),
            "{text}"
        );
    }

    #[test]
    fn vtd_view_absent_without_iommu() {
        let mut vm = crate::state::tests::sample();
        vm.iommu = None;
        assert!(view(&vm).is_none());
    }
}
