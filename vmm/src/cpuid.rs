//! CPUID for each vCPU: KVM's supported set, patched with this VM's topology (one package,
//! `--cpus` cores, one thread per core, APIC ID = vCPU index) and the hypervisor bit.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1: processor info and feature bits (Intel SDM vol. 2A, CPUID).
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 4: deterministic cache parameters (Intel).
const LEAF_CACHE_PARAMS: u32 = 0x4;
/// Leaf 0xb: extended topology enumeration.
const LEAF_TOPOLOGY: u32 = 0xb;
/// Leaf 0x1f: V2 extended topology enumeration.
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// Leaf 0x8000_0001: extended features (AMD CmpLegacy in ECX bit 1).
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
/// Leaf 0x8000_0008: AMD core count (NC) and APIC ID size.
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
/// Leaf 0x8000_001e: AMD extended APIC ID, core and node identifiers.
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

/// Leaf 1 EBX bits 31:24: initial APIC ID.
const EBX_APIC_ID_SHIFT: u32 = 24;
/// Leaf 1 EBX bits 23:16: maximum addressable logical processor IDs in the package.
const EBX_LOGICAL_COUNT_SHIFT: u32 = 16;
/// Leaf 1 ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: HTT, more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0xb/0x1f ECX bits 15:8: level type (1 = SMT, 2 = core).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
/// Leaf 0x8000_0001 ECX bit 1: CmpLegacy (multi-core package).
const ECX_CMP_LEGACY: u32 = 1 << 1;

/// The number of APIC ID bits needed to number `n` cores.
pub fn core_id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// The two topology levels of leaves 0xb/0x1f (SMT, core) and the terminating invalid level.
fn topology_entries(function: u32, apic_id: u32, cpus: u32) -> [kvm_cpuid_entry2; 3] {
    let shift = core_id_bits(cpus);
    [
        entry(function, 0, [0, 1, LEVEL_TYPE_SMT << 8, apic_id]),
        entry(
            function,
            1,
            [shift, cpus, (LEVEL_TYPE_CORE << 8) | 1, apic_id],
        ),
        entry(function, 2, [0, 0, 2, apic_id]),
    ]
}

/// Leaf 0x8000_0008 EAX bits 7:0: physical address bits (AMD APM vol. 3, CPUID Fn8000_0008).
const EAX_PHYS_BITS_MASK: u32 = 0xff;
/// The width without that leaf (Intel SDM vol. 3A 4.1.4: 36 bits with PAE).
pub const DEFAULT_PHYS_BITS: u8 = 36;

/// The physical address width the guest reads from CPUID (leaf 0x8000_0008, which [`patch`]
/// leaves as KVM supports it): where OVMF puts its 64-bit PCI window.
pub fn phys_bits(entries: &[kvm_cpuid_entry2]) -> u8 {
    let max_ext = entries
        .iter()
        .find(|e| e.function == 0x8000_0000)
        .map_or(0, |e| e.eax);
    entries
        .iter()
        .find(|e| e.function == LEAF_AMD_SIZE && max_ext >= LEAF_AMD_SIZE)
        .map_or(DEFAULT_PHYS_BITS, |e| (e.eax & EAX_PHYS_BITS_MASK) as u8)
}

/// Patches `entries` (KVM_GET_SUPPORTED_CPUID output) for vCPU `apic_id` of `cpus`.
pub fn patch(entries: &mut Vec<kvm_cpuid_entry2>, apic_id: u32, cpus: u32) {
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    let shift = core_id_bits(cpus);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | (apic_id << EBX_APIC_ID_SHIFT)
                    | ((cpus.min(255)) << EBX_LOGICAL_COUNT_SHIFT);
                e.ecx |= ECX_HYPERVISOR;
                if cpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX bits 31:26: cores per package - 1; bits 25:14: sharing threads - 1.
                let sharing = if (e.eax >> 5) & 0x7 >= 3 { cpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((cpus - 1) << 26) | (sharing.min(0xfff) << 14);
            }
            LEAF_EXT_FEATURES => {
                if cpus > 1 {
                    e.ecx |= ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZE => {
                // ECX bits 7:0 NC (cores - 1), bits 15:12 ApicIdCoreIdSize.
                e.ecx = (e.ecx & !0xf0ff) | ((cpus - 1) & 0xff) | (shift << 12);
            }
            LEAF_AMD_EXT_APIC => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // core id; threads per core - 1 = 0
                e.ecx = 0; // node 0, one node per package
            }
            _ => {}
        }
    }
    entries.retain(|e| e.function != LEAF_TOPOLOGY && e.function != LEAF_TOPOLOGY_V2);
    if max_basic >= LEAF_TOPOLOGY {
        entries.extend(topology_entries(LEAF_TOPOLOGY, apic_id, cpus));
    }
    if max_basic >= LEAF_TOPOLOGY_V2 {
        entries.extend(topology_entries(LEAF_TOPOLOGY_V2, apic_id, cpus));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, [0x1f, 0, 0, 0]),
            entry(LEAF_FEATURES, 0, [0x806f8, 0x0000_0800, 0x0020_0000, 0]),
            entry(LEAF_CACHE_PARAMS, 0, [0x121, 0, 0, 0]),
            entry(LEAF_CACHE_PARAMS, 3, [0x163, 0, 0, 0]),
            entry(LEAF_TOPOLOGY, 0, [9, 9, 9, 9]),
            entry(LEAF_AMD_SIZE, 0, [0x3030, 0, 0, 0]),
            entry(LEAF_AMD_EXT_APIC, 0, [7, 7, 7, 7]),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn cpuid_phys_bits_reads_leaf_8000_0008_or_defaults_to_36() {
        let mut v = base();
        assert_eq!(
            phys_bits(&v),
            36,
            "no leaf 0x8000_0000: the leaf is not there"
        );
        v.push(entry(0x8000_0000, 0, [LEAF_AMD_EXT_APIC, 0, 0, 0]));
        assert_eq!(phys_bits(&v), 0x30);
        v.iter_mut()
            .filter(|e| e.function == LEAF_AMD_SIZE)
            .for_each(|e| e.eax = 0x3028);
        assert_eq!(phys_bits(&v), 40, "bits 15:8 are the linear width");
        v.retain(|e| e.function != LEAF_AMD_SIZE);
        assert_eq!(phys_bits(&v), 36);
    }

    #[test]
    fn core_id_bits_matches_powers_of_two() {
        let got: Vec<u32> = [1, 2, 3, 4, 5, 6, 8, 9]
            .iter()
            .map(|&n| core_id_bits(n))
            .collect();
        assert_eq!(got, vec![0, 1, 2, 2, 3, 3, 3, 4]);
    }

    #[test]
    fn cpuid_leaf1_carries_apic_id_and_count() {
        for (cpus, id) in [(1, 0), (2, 1), (4, 3), (6, 5)] {
            let mut v = base();
            patch(&mut v, id, cpus);
            let l1 = find(&v, LEAF_FEATURES, 0);
            assert_eq!(l1.ebx >> 24, id);
            assert_eq!((l1.ebx >> 16) & 0xff, cpus);
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_eq!(l1.edx & EDX_HTT != 0, cpus > 1);
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        }
    }

    #[test]
    fn cpuid_leaf_b_and_1f_describe_core_level() {
        let mut v = base();
        patch(&mut v, 5, 6);
        for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
            let smt = find(&v, leaf, 0);
            let core = find(&v, leaf, 1);
            let end = find(&v, leaf, 2);
            assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 5));
            assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (3, 6, 2, 5));
            assert_eq!((end.ebx, (end.ecx >> 8) & 0xff), (0, 0));
            assert_eq!(v.iter().filter(|e| e.function == leaf).count(), 3);
        }
    }

    #[test]
    fn cpuid_topology_leaves_absent_when_max_leaf_is_lower() {
        let mut v = base();
        v[0].eax = 0xd;
        patch(&mut v, 0, 2);
        assert!(v.iter().any(|e| e.function == LEAF_TOPOLOGY));
        assert!(!v.iter().any(|e| e.function == LEAF_TOPOLOGY_V2));
    }

    #[test]
    fn cpuid_amd_leaves_count_cores() {
        let mut v = base();
        patch(&mut v, 3, 4);
        let size = find(&v, LEAF_AMD_SIZE, 0);
        assert_eq!(size.ecx & 0xff, 3);
        assert_eq!((size.ecx >> 12) & 0xf, 2);
        assert_eq!(find(&v, LEAF_AMD_EXT_APIC, 0).eax, 3);
    }

    #[test]
    fn cpuid_leaf4_cores_per_package() {
        let mut v = base();
        patch(&mut v, 0, 4);
        assert_eq!(find(&v, LEAF_CACHE_PARAMS, 0).eax >> 26, 3);
        // The L3 (level 3) is shared by all cores, the L1 by one.
        assert_eq!((find(&v, LEAF_CACHE_PARAMS, 3).eax >> 14) & 0xfff, 3);
        assert_eq!((find(&v, LEAF_CACHE_PARAMS, 0).eax >> 14) & 0xfff, 0);
    }
}
