//! The PVH boot protocol (xen/include/public/arch-x86/hvm/start_info.h): an ELF kernel with a
//! XEN_ELFNOTE_PHYS32_ENTRY note, entered in 32-bit protected mode with EBX = start_info.

use std::fs::File;

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::e820::E820Entry;
use crate::{FirmwareError, LoadedInitramfs};

/// hvm_start_info.magic.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// The start_info version with the memory map fields.
const START_INFO_VERSION: u32 = 1;
/// Size of hvm_start_info, hvm_modlist_entry and hvm_memmap_table_entry.
const START_INFO_SIZE: u64 = 56;
const MODLIST_ENTRY_SIZE: u64 = 32;

/// Whether the header starts with the ELF magic.
pub fn is_elf(header: &[u8]) -> bool {
    header.starts_with(b"\x7fELF")
}

/// Loads an ELF kernel and returns its PVH entry point and the end of the loaded image.
pub fn load_elf<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
    highmem_start: GuestAddress,
) -> Result<(GuestAddress, u64), FirmwareError> {
    let r = Elf::load(mem, None, kernel, Some(highmem_start))
        .map_err(|e| FirmwareError::Kernel(e.to_string()))?;
    match r.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok((entry, r.kernel_end)),
        _ => Err(FirmwareError::Kernel(
            "ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)".into(),
        )),
    }
}

/// Where start_info and its tables go, and what they describe.
pub struct StartInfo<'a> {
    pub address: GuestAddress,
    pub cmdline: GuestAddress,
    pub initramfs: Option<LoadedInitramfs>,
    pub e820: &'a [E820Entry],
    pub rsdp: Option<GuestAddress>,
}

/// Writes hvm_start_info, followed by the module list and the memory map.
pub fn write_start_info<M: GuestMemoryBackend>(
    mem: &M,
    si: &StartInfo<'_>,
) -> Result<(), FirmwareError> {
    let modlist = si.address.unchecked_add(START_INFO_SIZE);
    let nr_modules = u32::from(si.initramfs.is_some());
    let memmap = modlist.unchecked_add(u64::from(nr_modules) * MODLIST_ENTRY_SIZE);
    let mut b = Vec::with_capacity(56);
    b.extend_from_slice(&XEN_HVM_START_MAGIC_VALUE.to_le_bytes());
    b.extend_from_slice(&START_INFO_VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // flags
    b.extend_from_slice(&nr_modules.to_le_bytes());
    b.extend_from_slice(&modlist.0.to_le_bytes());
    b.extend_from_slice(&si.cmdline.0.to_le_bytes());
    b.extend_from_slice(&si.rsdp.map_or(0, |a| a.0).to_le_bytes());
    b.extend_from_slice(&memmap.0.to_le_bytes());
    b.extend_from_slice(&(si.e820.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // reserved
    if let Some(initrd) = si.initramfs {
        b.extend_from_slice(&initrd.address.0.to_le_bytes());
        b.extend_from_slice(&initrd.size.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // cmdline_paddr
        b.extend_from_slice(&0u64.to_le_bytes()); // reserved
    }
    for e in si.e820 {
        b.extend_from_slice(&e.addr.to_le_bytes());
        b.extend_from_slice(&e.size.to_le_bytes());
        b.extend_from_slice(&e.kind.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
    }
    mem.write_slice(&b, si.address)
        .map_err(|_| FirmwareError::BootStructures("PVH start_info"))
}
