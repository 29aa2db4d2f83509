//! Interrupt remapping through the unit's registers: enabling, remapping, faults, the
//! interrupt entry cache and its invalidation.

use super::tests::*;
use super::*;
use crate::test_utils::Tables;
use crate::InterruptRequest;

const IRT: u64 = 0x40_0000;
const IOAPIC: Bdf = Bdf::new(0, 0x1e, 0);

/// Remappable-format MSI address for `handle` (SHV clear).
fn remappable(handle: u16) -> u64 {
    0xfee0_0000 | (1 << 4) | (u64::from(handle & 0x7fff) << 5) | (u64::from(handle >> 15) << 2)
}

/// Writes IRTE `index`: vector, x2APIC destination, SVT 01b against `sid`.
fn irte(t: &Tables, index: u64, vector: u8, dest: u32, sid: Bdf) {
    t.w64(
        IRT + index * 16,
        1 | (u64::from(vector) << 16) | (u64::from(dest) << 32),
    );
    t.w64(IRT + index * 16 + 8, (1 << 18) | u64::from(sid.raw()));
}

/// What Linux does: IRTA (EIME, 256 entries), SIRTP, then IRE.
fn enable_ir(u: &mut RemappingUnit, t: &Tables, eime: bool) {
    let eime = if eime { IRTA_EIME } else { 0 };
    wr64(u, t, IRTA_REG, IRT | eime | 7);
    wr32(u, t, GCMD_REG, GCMD_SIRTP);
    let g = rd32(u, GSTS_REG) & !GCMD_ONE_SHOT;
    wr32(u, t, GCMD_REG, g | GCMD_IRE);
    assert!(u.interrupt_remapping_enabled());
}

fn req(address: u64, data: u32, source: Bdf) -> InterruptRequest {
    InterruptRequest {
        address,
        data,
        source,
    }
}

#[test]
fn ir_off_passes_interrupts_unchanged() {
    let (mut u, _, t) = unit();
    let out = u.remap_interrupt(&t.mem, req(0xfee0_1000, 0x30, DEV));
    assert_eq!(
        out,
        InterruptOutcome::Deliver {
            address: 0xfee0_1000,
            data: 0x30
        }
    );
}

#[test]
fn ir_remaps_msi_through_irte() {
    let (mut u, _, t) = unit();
    irte(&t, 9, 0x45, 0x0000_0102, DEV);
    enable_ir(&mut u, &t, true);
    let out = u.remap_interrupt(&t.mem, req(remappable(9), 0, DEV));
    assert_eq!(
        out,
        InterruptOutcome::Deliver {
            address: 0xfee0_2000 | (0x100u64 << 32),
            data: 0x45
        }
    );
}

#[test]
fn ir_source_id_mismatch_is_fault_0x26_with_index() {
    let (mut u, sink, t) = unit();
    irte(&t, 3, 0x45, 0, DEV);
    enable_ir(&mut u, &t, true);
    wr32(&mut u, &t, FECTL_REG, 0);
    let out = u.remap_interrupt(&t.mem, req(remappable(3), 0, Bdf::new(0, 4, 0)));
    assert_eq!(
        out,
        InterruptOutcome::Blocked(FaultReason::IrSourceIdInvalid)
    );
    let hi = rd64(&u, FRCD_REG + 8);
    assert_eq!((hi >> 32) & 0xff, 0x26);
    assert_eq!(hi & 0xffff, u64::from(Bdf::new(0, 4, 0).raw()));
    assert_eq!(rd64(&u, FRCD_REG) >> 48, 3, "interrupt index in FI[63:48]");
    assert_eq!(sink.sent().len(), 1, "fault event");
}

#[test]
fn ir_index_beyond_table_and_not_present() {
    let (mut u, _, t) = unit();
    enable_ir(&mut u, &t, true);
    let out = u.remap_interrupt(&t.mem, req(remappable(256), 0, DEV));
    assert_eq!(
        out,
        InterruptOutcome::Blocked(FaultReason::IrIndexOutOfRange)
    );
    let out = u.remap_interrupt(&t.mem, req(remappable(200), 0, DEV));
    assert_eq!(out, InterruptOutcome::Blocked(FaultReason::IrteNotPresent));
}

#[test]
fn ir_compatibility_format_blocked_unless_cfi_in_xapic_mode() {
    let (mut u, _, t) = unit();
    enable_ir(&mut u, &t, false);
    let compat = req(0xfee0_1000, 0x33, IOAPIC);
    assert_eq!(
        u.remap_interrupt(&t.mem, compat),
        InterruptOutcome::Blocked(FaultReason::IrCompatBlocked)
    );
    let g = rd32(&u, GSTS_REG) & !GCMD_ONE_SHOT;
    wr32(&mut u, &t, GCMD_REG, g | GCMD_CFI);
    assert_ne!(rd32(&u, GSTS_REG) & GSTS_CFIS, 0);
    assert_eq!(
        u.remap_interrupt(&t.mem, compat),
        InterruptOutcome::Deliver {
            address: 0xfee0_1000,
            data: 0x33
        }
    );
    // In x2APIC mode (EIME) compatibility interrupts stay blocked even with CFIS.
    enable_ir(&mut u, &t, true);
    assert_eq!(
        u.remap_interrupt(&t.mem, compat),
        InterruptOutcome::Blocked(FaultReason::IrCompatBlocked)
    );
}

#[test]
fn ir_ioapic_remappable_rte_with_xapic_destination() {
    let (mut u, _, t) = unit();
    // xAPIC mode: destination APIC ID 2 in bits 47:40, level-triggered.
    t.w64(
        IRT + 0x11 * 16,
        1 | (1 << 4) | (0x61 << 16) | (0x0200u64 << 32),
    );
    t.w64(IRT + 0x11 * 16 + 8, (1 << 18) | u64::from(IOAPIC.raw()));
    enable_ir(&mut u, &t, false);
    let out = u.remap_interrupt(&t.mem, req(remappable(0x11), 0xc061, IOAPIC));
    assert_eq!(
        out,
        InterruptOutcome::Deliver {
            address: 0xfee0_2000,
            data: 0x61 | (1 << 15) | (1 << 14)
        }
    );
}

#[test]
fn iec_serves_cached_entry_until_invalidated() {
    let (mut u, _, t) = unit();
    irte(&t, 5, 0x45, 0, DEV);
    enable_ir(&mut u, &t, true);
    enable_qi(&mut u, &t);
    let deliver = |v| InterruptOutcome::Deliver {
        address: 0xfee0_0000,
        data: v,
    };
    assert_eq!(
        u.remap_interrupt(&t.mem, req(remappable(5), 0, DEV)),
        deliver(0x45)
    );
    assert!(
        u.take_interrupt_entries_changed(),
        "SIRTP counts as a change"
    );
    irte(&t, 5, 0x46, 0, DEV);
    assert_eq!(
        u.remap_interrupt(&t.mem, req(remappable(5), 0, DEV)),
        deliver(0x45),
        "cached until invalidated"
    );
    // Index-selective IEC for index 4 with mask 1 covers 4 and 5.
    desc(&t, 0, 0x4 | (1 << 4) | (1 << 27) | (4u64 << 32), 0);
    wr64(&mut u, &t, IQT_REG, 1 << 4);
    assert!(u.take_interrupt_entries_changed());
    assert!(!u.take_interrupt_entries_changed(), "reported once");
    assert_eq!(
        u.remap_interrupt(&t.mem, req(remappable(5), 0, DEV)),
        deliver(0x46)
    );
    // A selective invalidation elsewhere leaves the entry cached; a global one drops it.
    irte(&t, 5, 0x47, 0, DEV);
    desc(&t, 1, 0x4 | (1 << 4) | (8u64 << 32), 0);
    wr64(&mut u, &t, IQT_REG, 2 << 4);
    assert_eq!(
        u.remap_interrupt(&t.mem, req(remappable(5), 0, DEV)),
        deliver(0x46)
    );
    desc(&t, 2, 0x4, 0);
    wr64(&mut u, &t, IQT_REG, 3 << 4);
    assert_eq!(
        u.remap_interrupt(&t.mem, req(remappable(5), 0, DEV)),
        deliver(0x47)
    );
    assert_eq!(u.cached_interrupt_entries(), 1);
}

#[test]
fn ir_fault_with_fpd_is_not_recorded() {
    let (mut u, _, t) = unit();
    t.w64(IRT + 7 * 16, 1 | 2 | (0x45 << 16));
    t.w64(IRT + 7 * 16 + 8, (1 << 18) | u64::from(DEV.raw()));
    enable_ir(&mut u, &t, true);
    let out = u.remap_interrupt(&t.mem, req(remappable(7), 0, Bdf::new(1, 0, 0)));
    assert_eq!(
        out,
        InterruptOutcome::Blocked(FaultReason::IrSourceIdInvalid)
    );
    assert_eq!(rd32(&u, FSTS_REG) & FSTS_PPF, 0);
}

#[test]
fn peek_does_not_record_faults() {
    let (mut u, _, t) = unit();
    enable_ir(&mut u, &t, true);
    let out = u.peek_interrupt(&t.mem, req(remappable(200), 0, DEV));
    assert_eq!(out, InterruptOutcome::Blocked(FaultReason::IrteNotPresent));
    assert_eq!(rd32(&u, FSTS_REG) & FSTS_PPF, 0);
}

#[test]
fn ire_toggle_is_an_interrupt_entry_change() {
    let (mut u, _, t) = unit();
    enable_ir(&mut u, &t, true);
    u.take_interrupt_entries_changed();
    wr32(&mut u, &t, GCMD_REG, 0);
    assert!(!u.interrupt_remapping_enabled());
    assert!(u.take_interrupt_entries_changed());
}
