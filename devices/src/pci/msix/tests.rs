use super::*;

fn cap(vectors: u16) -> MsixCap {
    // Table in BAR 1 at 0, PBA in BAR 1 at 0x800 (as QEMU's virtio devices have it).
    MsixCap::new(0x98, vectors - 1, 1, 0x801)
}

fn write32(m: &mut MsixCap, off: u64, v: u32) -> MsixChange {
    m.write_table(off, &v.to_le_bytes())
}

fn read32(m: &MsixCap, off: u64) -> u32 {
    let mut b = [0u8; 4];
    m.read_table(off, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn msix_locations_from_bir_and_offset() {
    let m = cap(3);
    assert_eq!(
        m.table(),
        Location {
            bar: 1,
            offset: 0,
            size: 48
        }
    );
    assert_eq!(
        m.pba(),
        Location {
            bar: 1,
            offset: 0x800,
            size: 8
        }
    );
    assert!(m.pba().contains(1, 0x807) && !m.pba().contains(1, 0x808));
    assert!(!m.table().contains(2, 0));
}

#[test]
fn msix_entries_start_masked_and_hold_messages() {
    let mut m = cap(2);
    assert!(m.masked(0) && m.masked(1));
    assert_eq!(read32(&m, 12), 1);
    assert_eq!(write32(&mut m, 16, 0xfee0_100f).entry, Some(1));
    write32(&mut m, 20, 0x1);
    write32(&mut m, 24, 0x4055);
    assert_eq!(
        m.message(1),
        Some((0x1_fee0_100c, 0x4055)),
        "address bits 1:0 reserved"
    );
    assert_eq!(m.message(0), None);
    assert_eq!(write32(&mut m, 28, 0xffff_fffe).entry, Some(1));
    assert!(!m.masked(1), "only bit 0 of vector control is defined");
    assert_eq!(read32(&m, 28), 0);
    assert_eq!(write32(&mut m, 28, 0).entry, None, "no change, no event");
}

#[test]
fn msix_qword_access_and_bad_accesses() {
    let mut m = cap(1);
    let c = m.write_table(0, &0x0000_0001_fee0_0000u64.to_le_bytes());
    assert_eq!(c.entry, Some(0));
    let mut q = [0u8; 8];
    m.read_table(0, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x1_fee0_0000);
    assert_eq!(m.write_table(2, &[1, 2]).entry, None, "unaligned");
    assert_eq!(write32(&mut m, 64, 5).entry, None, "past the table");
    assert_eq!(read32(&m, 64), 0);
}

#[test]
fn msix_control_only_enable_and_function_mask_writable() {
    let mut m = cap(4);
    assert_eq!(m.read_config_byte(0x9a, 0), 3, "table size - 1");
    let c = m.write_config_byte(0x9b, 0xff);
    assert!(c.control && m.enabled());
    assert_eq!(m.read_config_byte(0x9b, 0), 0xc0);
    assert_eq!(m.write_config_byte(0x9a, 0xff), MsixChange::default());
    assert_eq!(m.read_config_byte(0x9a, 0), 3);
    write32(&mut m, 12, 0);
    assert!(m.masked(0), "the function mask masks every vector");
    m.write_config_byte(0x9b, 0x80);
    assert!(!m.masked(0) && m.masked(1));
    assert_eq!(m.read_config_byte(0x9c, 0), 1, "table BIR");
    assert_eq!(m.read_config_byte(0x98, 0x11), 0x11);
}

#[test]
fn msix_pba_reports_pending_vectors() {
    let m = MsixCap::new(0x40, 69, 0, 0x1000);
    let mut b = [0u8; 16];
    m.read_pba(0, &mut b, |i| i == 3 || i == 69 || i == 70);
    assert_eq!(b[0], 0b1000);
    assert_eq!(b[8], 0b0010_0000, "vector 69; 70 is past the table");
    assert_eq!(m.pba().size, 16);
}

#[test]
fn msix_emulated_places_table_and_pba_by_bir() {
    let m = MsixCap::emulated(0x40, 3, (2, 0x1000), (2, 0x1800));
    assert_eq!(m.vectors(), 3);
    assert_eq!(
        m.table(),
        Location {
            bar: 2,
            offset: 0x1000,
            size: 48
        }
    );
    assert_eq!(
        m.pba(),
        Location {
            bar: 2,
            offset: 0x1800,
            size: 8
        }
    );
    assert_eq!(m.read_config_byte(0x44, 0), 0x02, "table BIR in bits 2:0");
    assert_eq!(m.read_config_byte(0x45, 0), 0x10);
}

#[test]
fn msix_emulated_table_size_is_clamped_to_2048() {
    assert_eq!(
        MsixCap::emulated(0x40, 4096, (0, 0), (0, 0x8000)).vectors(),
        2048
    );
    assert_eq!(MsixCap::emulated(0x40, 0, (0, 0), (0, 0x8000)).vectors(), 1);
}

#[test]
fn msix_table_byte_and_word_writes_are_dropped() {
    let mut m = cap(1);
    assert_eq!(m.write_table(12, &[0]).entry, None);
    assert_eq!(m.write_table(12, &[0, 0]).entry, None);
    assert!(m.masked(0), "the mask bit is unchanged");
}

#[test]
fn msix_table_odd_sized_reads_return_zero() {
    let m = cap(1);
    let mut b = [0xffu8; 2];
    m.read_table(12, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 3];
    m.read_table(12, &mut b);
    assert_eq!(b, [0; 3]);
}

#[test]
fn msix_table_unaligned_qword_is_dropped() {
    let mut m = cap(2);
    assert_eq!(m.write_table(4, &[0; 8]).entry, None);
    let mut q = [0xffu8; 8];
    m.read_table(4, &mut q);
    assert_eq!(q, [0; 8]);
}

#[test]
fn msix_qword_write_of_data_and_control_unmasks() {
    let mut m = cap(1);
    let c = m.write_table(8, &0x0000_0000_0000_4041u64.to_le_bytes());
    assert_eq!(c.entry, Some(0));
    assert!(!m.masked(0));
}

#[test]
fn msix_function_mask_does_not_change_entry_mask_bits() {
    let mut m = cap(1);
    write32(&mut m, 12, 0);
    m.write_config_byte(0x9b, 0xc0);
    assert!(m.masked(0));
    assert_eq!(read32(&m, 12), 0, "the entry's own bit stays clear");
    m.write_config_byte(0x9b, 0x80);
    assert!(!m.masked(0));
}

#[test]
fn msix_table_and_pba_registers_are_read_only() {
    let mut m = cap(4);
    for off in 0x9c..0xa4 {
        assert_eq!(m.write_config_byte(off, 0xff), MsixChange::default());
    }
    assert_eq!(m.read_config_byte(0x9c, 0), 1);
    assert_eq!(m.read_config_byte(0xa0, 0), 1);
    assert_eq!(m.read_config_byte(0xa1, 0), 0x08);
}

#[test]
fn msix_pba_read_at_an_offset_and_past_the_vectors() {
    let m = cap(9);
    let mut b = [0xffu8; 2];
    m.read_pba(1, &mut b, |i| i == 8);
    assert_eq!(b, [1, 0], "byte 1 holds vectors 8..16; 9.. do not exist");
}

#[test]
fn msix_bar_access_dispatches_to_table_and_pba_only() {
    let mut m = cap(2);
    let mut b = [0xffu8; 4];
    assert!(m.read_bar(1, 12, &mut b, |_| false));
    assert_eq!(u32::from_le_bytes(b), 1, "entry 0 starts masked");
    assert!(m.read_bar(1, 0x800, &mut b, |i| i == 1));
    assert_eq!(b[0], 0b10);
    assert!(
        !m.read_bar(1, 0x400, &mut b, |_| false),
        "between table and PBA"
    );
    assert!(!m.read_bar(0, 0, &mut b, |_| false), "another BAR");
    assert_eq!(
        m.write_bar(1, 12, &0u32.to_le_bytes())
            .and_then(|c| c.entry),
        Some(0)
    );
    assert_eq!(
        m.write_bar(1, 0x800, &[0xff; 4]),
        Some(MsixChange::default()),
        "PBA: dropped"
    );
    assert_eq!(m.write_bar(1, 0x808, &[0xff; 4]), None);
}
