use super::*;

fn write(m: &mut MsiCap, off: usize, bytes: &[u8]) -> MsiChange {
    let mut c = MsiChange::default();
    for (i, b) in bytes.iter().enumerate() {
        c |= m.write_byte(m.offset + off + i, *b);
    }
    c
}

fn read(m: &MsiCap, off: usize, len: usize) -> Vec<u8> {
    (off..off + len)
        .map(|i| m.read_byte(m.offset + i, 0xee, 0xa5a5_a5a5))
        .collect()
}

#[test]
fn msi_64bit_layout_and_writable_bits() {
    let mut m = MsiCap::new(0x50, CTL_64BIT);
    assert_eq!(m.size(), 14);
    write(&mut m, 4, &0xfee0_1007u32.to_le_bytes());
    write(&mut m, 8, &0x1u32.to_le_bytes());
    write(&mut m, 12, &0x4041u16.to_le_bytes());
    let c = write(&mut m, 2, &0xffffu16.to_le_bytes());
    assert!(c.enable);
    assert_eq!(m.address, 0x1_fee0_1004, "address bits 1:0 are reserved");
    assert_eq!(
        read(&m, 0, 2),
        vec![0xee, 0xee],
        "ID and next from the device"
    );
    assert_eq!(
        u16::from_le_bytes([read(&m, 2, 1)[0], read(&m, 3, 1)[0]]),
        CTL_64BIT | CTL_ENABLE | CTL_MME_MASK,
        "MMC stays 0: one vector"
    );
    assert_eq!(
        m.vectors(),
        1,
        "MME beyond MMC enables only what the device has"
    );
    assert_eq!(m.message(0), Some((0x1_fee0_1004, 0x4041)));
}

#[test]
fn msi_32bit_without_masking_has_no_mask_registers() {
    let mut m = MsiCap::new(0x40, 0);
    assert_eq!(m.size(), 10);
    write(&mut m, 4, &0xfee0_0000u32.to_le_bytes());
    write(&mut m, 8, &0x30u16.to_le_bytes());
    assert_eq!(m.message(0), Some((0xfee0_0000, 0x30)));
    write(&mut m, 12, &[0xff; 4]);
    assert!(!m.masked(0));
    assert!(!m.contains(0x40 + 12));
}

#[test]
fn msi_multiple_messages_replace_low_data_bits() {
    // MMC = 2 (4 vectors), 64-bit, per-vector masking.
    let mut m = MsiCap::new(0x60, CTL_64BIT | CTL_PVM | (2 << CTL_MMC_SHIFT));
    assert_eq!(m.size(), 24);
    write(&mut m, 4, &0xfee0_0000u32.to_le_bytes());
    write(&mut m, 12, &0x0043u16.to_le_bytes());
    write(&mut m, 2, &[CTL_ENABLE as u8 | (2 << 4) as u8]);
    assert_eq!(m.vectors(), 4);
    assert_eq!(m.message(1), Some((0xfee0_0000, 0x41)));
    assert_eq!(m.message(3), Some((0xfee0_0000, 0x43)));
    let c = write(&mut m, 16, &0b0100u32.to_le_bytes());
    assert!(c.mask && !c.message);
    assert!(m.masked(2) && !m.masked(1));
    assert_eq!(
        read(&m, 20, 4),
        vec![0xa5; 4],
        "pending bits come from the caller"
    );
    write(&mut m, 20, &[0; 4]);
    assert_eq!(read(&m, 20, 1), vec![0xa5], "pending bits are read-only");
}

#[test]
fn msi_without_address_has_no_message() {
    let mut m = MsiCap::new(0x50, CTL_64BIT);
    write(&mut m, 2, &[CTL_ENABLE as u8]);
    assert_eq!(m.message(0), None);
    assert!(
        !write(&mut m, 2, &[CTL_ENABLE as u8]).enable,
        "no change, no event"
    );
}

/// Reads a little-endian value of `len` bytes at `off` from the capability start.
fn read_le(m: &MsiCap, off: usize, len: usize) -> u64 {
    read(m, off, len)
        .iter()
        .rev()
        .fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

#[test]
fn msi_single_vector_64bit_data_is_16_bits() {
    // The edu's instance: one vector, 64-bit, no masking.
    let mut m = MsiCap::new(0x40, CTL_64BIT);
    assert!(!m.enabled());
    write(&mut m, 4, &0xfee0_1004u32.to_le_bytes());
    write(&mut m, 8, &0x1u32.to_le_bytes());
    write(&mut m, 12, &0xffff_4041u32.to_le_bytes());
    write(&mut m, 2, &[0x01, 0x00]);
    assert!(m.enabled());
    assert_eq!(
        m.message(0),
        Some((0x1_fee0_1004, 0x4041)),
        "data is 16 bits"
    );
    assert_eq!(read_le(&m, 14, 2), 0, "nothing past the data register");
}

#[test]
fn msi_control_read_only_bits_ignore_writes() {
    let mut m = MsiCap::new(0x40, CTL_64BIT);
    write(&mut m, 2, &[0x00, 0xff]);
    assert_eq!(
        read_le(&m, 2, 2),
        u64::from(CTL_64BIT),
        "64-bit capable stays, no PVM"
    );
    write(&mut m, 2, &[0x0e, 0x00]);
    assert_eq!(read_le(&m, 2, 2), u64::from(CTL_64BIT), "MMC is read-only");
}

#[test]
fn msi_address_low_bits_are_reserved() {
    let mut m = MsiCap::new(0x40, CTL_64BIT);
    write(&mut m, 4, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(read(&m, 4, 1), vec![0xfc], "address is dword aligned");
}

#[test]
fn msi_32bit_layout_has_data_at_8_and_mask_at_12() {
    let mut m = MsiCap::new(0x40, CTL_PVM);
    assert_eq!(m.size(), 20);
    write(&mut m, 4, &0xfee0_0000u32.to_le_bytes());
    write(&mut m, 8, &0x0051u16.to_le_bytes());
    write(&mut m, 12, &1u32.to_le_bytes());
    assert_eq!(m.message(0), Some((0xfee0_0000, 0x51)));
    assert!(m.masked(0));
    assert_eq!(read_le(&m, 2, 2), u64::from(CTL_PVM), "not 64-bit capable");
}

#[test]
fn msi_32bit_upper_address_is_not_writable() {
    // Bytes 8..12 of a 32-bit capability are the data register, never address bits 63:32.
    let mut m = MsiCap::new(0x40, 0);
    write(&mut m, 4, &0xfee0_0000u32.to_le_bytes());
    write(&mut m, 8, &0xffff_0030u32.to_le_bytes());
    assert_eq!(m.message(0), Some((0xfee0_0000, 0x30)));
}

#[test]
fn msi_multiple_message_enable_is_bounded_by_capable() {
    // MMC = 3 (8 vectors); MME = 7 (128) enables only 8.
    let mut m = MsiCap::new(0x40, CTL_64BIT | (3 << CTL_MMC_SHIFT));
    write(&mut m, 2, &[CTL_ENABLE as u8 | 0x70]);
    assert_eq!(m.vectors(), 8);
    write(&mut m, 2, &[CTL_ENABLE as u8 | 0x10]);
    assert_eq!(m.vectors(), 2);
}

#[test]
fn msi_capable_beyond_32_vectors_is_clamped() {
    // MMC 6 and 7 are reserved: at most 32 vectors (6.8.1.3).
    let m = MsiCap::new(0x40, 7 << CTL_MMC_SHIFT);
    assert_eq!(read_le(&m, 2, 2) >> CTL_MMC_SHIFT & 7, 5);
}

#[test]
fn msi_disabled_has_no_vectors() {
    let mut m = MsiCap::new(0x40, CTL_64BIT | (2 << CTL_MMC_SHIFT));
    write(&mut m, 2, &[0x20]);
    assert_eq!(m.vectors(), 0);
}

#[test]
fn msi_mask_bits_without_per_vector_masking_mask_nothing() {
    let mut m = MsiCap::new(0x40, CTL_64BIT);
    let c = write(&mut m, 16, &[0xff; 4]);
    assert!(!c.mask && !m.masked(0));
    assert_eq!(read(&m, 16, 4), vec![0; 4], "not part of the capability");
}

#[test]
fn msi_mask_past_vector_31_is_never_masked() {
    let m = MsiCap::new(0x40, CTL_64BIT | CTL_PVM);
    assert!(!m.masked(32) && !m.masked(usize::MAX));
}
