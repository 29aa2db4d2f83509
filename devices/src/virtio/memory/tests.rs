use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::testing::{guest_memory, translated_dma, PageTable, IOVA_SHIFT, PAGE};
use super::VirtioMemory;

fn translated() -> (VirtioMemory, vm_memory::GuestMemoryMmap, Arc<PageTable>) {
    let mem = guest_memory();
    let table = Arc::new(PageTable::default());
    let view = VirtioMemory::Translated(translated_dma(&mem, &table));
    (view, mem, table)
}

#[test]
fn translated_write_lands_at_the_translated_gpa() {
    let (view, mem, table) = translated();
    table.map(0x5000, PAGE);
    view.write_slice(&[1, 2, 3], GuestAddress(0x5010 + IOVA_SHIFT))
        .unwrap();
    let mut b = [0u8; 3];
    mem.read_slice(&mut b, GuestAddress(0x5010)).unwrap();
    assert_eq!(b, [1, 2, 3]);
}

#[test]
fn translated_write_across_an_unmapped_page_is_an_error_and_moves_no_byte() {
    let (view, mem, table) = translated();
    table.map(0x5000, PAGE);
    let at = GuestAddress(0x5ffe + IOVA_SHIFT);
    assert!(view.write_slice(&[7; 4], at).is_err());
    let mut b = [0u8; 4];
    mem.read_slice(&mut b, GuestAddress(0x5ffe)).unwrap();
    assert_eq!(b, [0; 4]);
    assert_eq!(table.faults(), 1);
}

#[test]
fn translated_check_range_of_an_unmapped_page_is_false() {
    let (view, _, table) = translated();
    table.map(0x5000, PAGE);
    assert!(view.check_range(GuestAddress(0x5000 + IOVA_SHIFT), 16, Permissions::Read));
    assert!(!view.check_range(GuestAddress(0x6000 + IOVA_SHIFT), 16, Permissions::Read));
}

#[test]
fn translated_gpa_without_mapping_is_refused() {
    let (view, _, table) = translated();
    table.map(0x5000, PAGE);
    // The guest-physical address itself is not an IOVA the device may use.
    assert!(view.read_obj::<u32>(GuestAddress(0x5000)).is_err());
}

#[test]
fn direct_view_is_guest_physical() {
    let mem = guest_memory();
    let view = VirtioMemory::Direct(mem.clone());
    view.write_obj(0xabcd_u32, GuestAddress(0x3000)).unwrap();
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x3000)).unwrap(), 0xabcd);
    assert!(view.physical_memory().is_some());
}
