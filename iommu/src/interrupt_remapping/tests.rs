use vm_memory::GuestMemoryMmap;

use super::*;

const P: u64 = IRTE_P;

fn irte_lo(vector: u8, dlm: u64, dst: u32) -> u64 {
    P | (dlm << IRTE_DLM_SHIFT) | (u64::from(vector) << 16) | (u64::from(dst) << 32)
}

#[test]
fn irte_xapic_destination_is_bits_47_40() {
    let e = decode(irte_lo(0x31, 0, 0x0500), 0, false).unwrap();
    assert_eq!((e.vector, e.destination, e.delivery_mode), (0x31, 5, 0));
    assert_eq!(e.validation, SourceValidation::None);
}

#[test]
fn irte_x2apic_destination_is_32_bits() {
    let e = decode(irte_lo(0x40, 1, 0x0001_0203), 0, true).unwrap();
    assert_eq!(e.destination, 0x0001_0203);
    assert_eq!(e.delivery_mode, 1);
}

#[test]
fn irte_reserved_fields_fault() {
    let ok = irte_lo(0x40, 0, 0x0100);
    assert_eq!(decode(ok & !P, 0, false), Err(FaultReason::IrteNotPresent));
    for bad_lo in [ok | (1 << 12), ok | (1 << 24), ok | IRTE_IM, ok | (3 << 5)] {
        assert_eq!(
            decode(bad_lo, 0, false),
            Err(FaultReason::IrteReserved),
            "{bad_lo:#x}"
        );
    }
    // Destination bits outside 15:8 are reserved in xAPIC mode only.
    let wide = irte_lo(0x40, 0, 0x0001_0000);
    assert_eq!(decode(wide, 0, false), Err(FaultReason::IrteReserved));
    assert!(decode(wide, 0, true).is_ok());
    assert_eq!(decode(ok, 1 << 20, false), Err(FaultReason::IrteReserved));
    assert_eq!(
        decode(ok, 3 << 18, false),
        Err(FaultReason::IrteReserved),
        "SVT 11b"
    );
}

#[test]
fn irte_source_validation_modes() {
    let lo = irte_lo(0x40, 0, 0x0100);
    let dev = Bdf::new(0, 3, 0);
    // SVT 01b, SQ 00b: exact requester id.
    let e = decode(lo, (1 << 18) | u64::from(dev.raw()), false).unwrap();
    assert!(e.permits(dev));
    assert!(!e.permits(Bdf::new(0, 3, 1)));
    assert!(!e.permits(Bdf::new(0, 4, 0)));
    // SQ 11b ignores all function bits.
    let e = decode(lo, (1 << 18) | (3 << 16) | u64::from(dev.raw()), false).unwrap();
    assert!(e.permits(Bdf::new(0, 3, 7)));
    assert!(!e.permits(Bdf::new(0, 4, 0)));
    // SQ 01b ignores bit 2 only.
    let e = decode(lo, (1 << 18) | (1 << 16) | u64::from(dev.raw()), false).unwrap();
    assert!(e.permits(Bdf::new(0, 3, 4)));
    assert!(!e.permits(Bdf::new(0, 3, 1)));
    // SVT 10b: bus range 2..=5.
    let e = decode(lo, (2 << 18) | 0x0205, false).unwrap();
    assert!(e.permits(Bdf::new(2, 0, 0)) && e.permits(Bdf::new(5, 31, 7)));
    assert!(!e.permits(Bdf::new(1, 0, 0)) && !e.permits(Bdf::new(6, 0, 0)));
}

#[test]
fn remappable_request_index_with_and_without_subhandle() {
    let req = |address, data| InterruptRequest {
        address,
        data,
        source: Bdf::new(0, 0, 0),
    };
    let handle = 0x8123u32;
    let addr = INTERRUPT_ADDRESS_BASE
        | ADDR_INTERRUPT_FORMAT
        | (u64::from(handle & 0x7fff) << 5)
        | ADDR_HANDLE_15;
    assert!(req(addr, 0).is_remappable());
    assert!(!req(INTERRUPT_ADDRESS_BASE, 0).is_remappable());
    assert_eq!(req(addr, 7).index(), handle, "data ignored without SHV");
    assert_eq!(req(addr | ADDR_SHV, 7).index(), handle + 7);
    assert_eq!(
        request_index(&req(0xfed0_0010, 0)).unwrap_err().reason,
        FaultReason::IrRequestReserved
    );
}

#[test]
fn remapped_message_carries_vector_mode_and_destination() {
    let lo = irte_lo(0x41, 0, 0) | IRTE_TM | IRTE_DM | IRTE_RH;
    let e = decode(lo | (0x1234_5678u64 << 32), 0, true).unwrap();
    let (address, data) = e.message();
    assert_eq!(
        address & 0xffff_ffff,
        0xfee7_800c,
        "dest[7:0] at 19:12, RH, DM"
    );
    assert_eq!(address >> 32, 0x1234_5600, "dest[31:8] in the high dword");
    assert_eq!(data, 0x41 | MSI_DATA_TRIGGER_LEVEL | MSI_DATA_LEVEL_ASSERT);
    let e = decode(irte_lo(0x22, 4, 0x0300), 0, false).unwrap();
    assert_eq!(e.message(), (0xfee0_3000, 0x22 | (4 << 8)), "NMI, edge");
}

#[test]
fn table_lookup_bounds_and_access_faults() {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irta = 0x8000 | 3; // 16 entries
    assert_eq!(table_entries(irta), 16);
    mem.write_obj(irte_lo(0x30, 0, 0x0100), GuestAddress(0x8000 + 5 * 16))
        .unwrap();
    assert_eq!(read_irte(&mem, irta, 5).unwrap().vector, 0x30);
    let f = read_irte(&mem, irta, 16).unwrap_err();
    assert_eq!(
        (f.reason, f.index),
        (FaultReason::IrIndexOutOfRange, Some(16))
    );
    assert_eq!(
        read_irte(&mem, irta, 4).unwrap_err().reason,
        FaultReason::IrteNotPresent
    );
    // FPD is honoured even on an entry that is otherwise bad.
    mem.write_obj(P | IRTE_FPD | (1 << 12), GuestAddress(0x8000 + 6 * 16))
        .unwrap();
    assert!(read_irte(&mem, irta, 6).unwrap_err().fpd);
    let f = read_irte(&mem, 0x20_0000 | 3, 1).unwrap_err();
    assert_eq!(f.reason, FaultReason::IrTableAccess, "table outside memory");
}

#[test]
fn compatibility_format_gating() {
    assert!(compatibility_allowed(true, 0x8000));
    assert!(!compatibility_allowed(false, 0x8000));
    assert!(!compatibility_allowed(true, 0x8000 | IRTA_EIME));
}
