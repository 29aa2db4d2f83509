//! The Linux x86 64-bit boot protocol (Documentation/arch/x86/boot.rst): a bzImage loaded by
//! linux-loader, the zero page (boot_params) filled here.

use std::fs::File;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::e820::E820Entry;
use crate::{FirmwareError, LoadedInitramfs};

/// "HdrS": setup header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot protocol 2.06: the first with cmdline_size and a 64-bit entry we rely on.
const MIN_BOOT_PROTOCOL: u16 = 0x0206;
/// type_of_loader: 0xff, "undefined" boot loader (boot.rst).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags: the protected-mode kernel is loaded at 0x100000.
const LOADED_HIGH: u8 = 0x01;
/// loadflags: heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// vid_mode: "normal" (boot.rst).
const VGA_NORMAL: u16 = 0xffff;
/// The 64-bit entry point is 0x200 bytes into the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Maximum E820 entries in the zero page.
const E820_MAX_ZEROPAGE: usize = 128;
/// heap_end_ptr: end of the setup heap relative to the real-mode code (boot.rst: 0xde00).
const HEAP_END: u16 = 0xfe00;

/// Result of loading a bzImage: the entry point and the zero page to pass in RSI.
pub struct LinuxBoot {
    pub entry: GuestAddress,
    pub zero_page: GuestAddress,
    /// Highest address the initramfs may end at (initrd_addr_max + 1).
    pub initrd_limit: u64,
}

/// Whether `file` starts like a bzImage (setup header magic at 0x202).
pub fn is_bzimage(header: &[u8]) -> bool {
    header
        .get(0x202..0x206)
        .is_some_and(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]) == HDRS_MAGIC)
}

/// Loads the protected-mode kernel and returns its setup header for the zero page.
pub fn load_bzimage<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
    highmem_start: GuestAddress,
) -> Result<(GuestAddress, linux_loader::loader::bootparam::setup_header), FirmwareError> {
    let r = BzImage::load(mem, None, kernel, Some(highmem_start))
        .map_err(|e| FirmwareError::Kernel(e.to_string()))?;
    let hdr = r
        .setup_header
        .ok_or_else(|| FirmwareError::Kernel("bzImage without a setup header".into()))?;
    if hdr.version < MIN_BOOT_PROTOCOL {
        return Err(FirmwareError::Kernel(format!(
            "boot protocol {}.{:02} is too old (2.06 or later needed)",
            hdr.version >> 8,
            hdr.version & 0xff
        )));
    }
    Ok((r.kernel_load, hdr))
}

/// Parameters of the zero page beyond the setup header.
pub struct ZeroPage<'a> {
    pub address: GuestAddress,
    pub cmdline: GuestAddress,
    pub cmdline_size: u32,
    pub initramfs: Option<LoadedInitramfs>,
    pub e820: &'a [E820Entry],
    pub rsdp: Option<GuestAddress>,
}

/// Writes the zero page.
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    hdr: linux_loader::loader::bootparam::setup_header,
    zp: &ZeroPage<'_>,
) -> Result<(), FirmwareError> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = HEAP_END;
    params.hdr.vid_mode = VGA_NORMAL;
    params.hdr.cmd_line_ptr = zp.cmdline.0 as u32;
    params.hdr.cmdline_size = zp.cmdline_size;
    if let Some(initrd) = zp.initramfs {
        params.hdr.ramdisk_image = initrd.address.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    if let Some(rsdp) = zp.rsdp {
        params.acpi_rsdp_addr = rsdp.0;
    }
    if zp.e820.len() > E820_MAX_ZEROPAGE {
        return Err(FirmwareError::BootStructures("E820 map (too many entries)"));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(zp.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = zp.e820.len() as u8;
    mem.write_obj(params, zp.address)
        .map_err(|_| FirmwareError::BootStructures("zero page"))
}

/// The 64-bit entry point of a kernel loaded at `load`.
pub fn entry_64(load: GuestAddress) -> GuestAddress {
    load.unchecked_add(ENTRY_64_OFFSET)
}

/// initrd_addr_max from the header (boot.rst: 0x37ffffff when not given).
pub fn initrd_limit(hdr: &linux_loader::loader::bootparam::setup_header) -> u64 {
    let max = if hdr.initrd_addr_max == 0 {
        0x37ff_ffff
    } else {
        hdr.initrd_addr_max
    };
    u64::from(max) + 1
}
