//! Multiboot v1 (the Multiboot Specification 0.6.96), as QEMU's `-kernel` runs it: an ELF32
//! image or one described by the header's address fields (the "a.out kludge"), entered in
//! 32-bit protected mode with EAX = 0x2BADB002 and EBX = the Multiboot information structure.
//! Hand-written because linux-loader has no Multiboot support. Every header field is untrusted.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::e820::E820Entry;
use crate::{FirmwareError, LoadedInitramfs};

/// Header magic (spec 3.1.2).
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// Value in EAX at entry (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie within the first 8192 bytes, 32-bit aligned.
const HEADER_SEARCH: usize = 8192;
/// Header flag 16: the address fields are valid (a.out kludge).
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Required-feature bits we cannot honour: bit 2 (video mode) is ignored, as QEMU does;
/// any other unknown bit in 0..16 makes the image unbootable (spec 3.1.2).
const SUPPORTED_REQUIRED: u32 = 0b111;

/// Information structure flags (spec 3.3).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;
/// Offsets of the tables after the information structure.
const MODS_OFFSET: u64 = 0x100;
const MMAP_OFFSET: u64 = 0x200;
const NAME_OFFSET: u64 = 0x800;
const LOADER_NAME: &[u8] = b"minivmm\0";
/// ELF constants (System V ABI, i386 supplement).
const ELFCLASS32: u8 = 1;
const EM_386: u16 = 3;
const PT_LOAD: u32 = 1;

/// A parsed Multiboot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header in the file.
    pub offset: usize,
    pub flags: u32,
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Finds a valid Multiboot header (magic + flags + checksum == 0) in the first 8 KiB.
pub fn find_header(image: &[u8]) -> Option<Header> {
    let end = image.len().min(HEADER_SEARCH);
    (0..end.saturating_sub(11)).step_by(4).find_map(|off| {
        let magic = u32_at(image, off)?;
        let flags = u32_at(image, off + 4)?;
        let sum = u32_at(image, off + 8)?;
        if magic != HEADER_MAGIC || magic.wrapping_add(flags).wrapping_add(sum) != 0 {
            return None;
        }
        let f = |i: usize| u32_at(image, off + 12 + 4 * i).unwrap_or(0);
        Some(Header {
            offset: off,
            flags,
            header_addr: f(0),
            load_addr: f(1),
            load_end_addr: f(2),
            bss_end_addr: f(3),
            entry_addr: f(4),
        })
    })
}

/// Where the image went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    pub entry: u64,
    /// First byte after the image (and its bss).
    pub end: u64,
}

fn bad(msg: &str) -> FirmwareError {
    FirmwareError::Kernel(format!("Multiboot image: {msg}"))
}

fn copy_from_file<M: GuestMemoryBackend>(
    mem: &M,
    f: &mut File,
    file_off: u64,
    addr: u64,
    len: u64,
) -> Result<(), FirmwareError> {
    f.seek(SeekFrom::Start(file_off))
        .map_err(|e| bad(&e.to_string()))?;
    mem.read_exact_volatile_from(GuestAddress(addr), f, len as usize)
        .map_err(|_| {
            bad(&format!(
                "segment {addr:#x}+{len:#x} is outside guest RAM or the file"
            ))
        })
}

fn zero<M: GuestMemoryBackend>(mem: &M, addr: u64, len: u64) -> Result<(), FirmwareError> {
    if len == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; len.min(64 << 20) as usize];
    if len > zeros.len() as u64 {
        return Err(bad("bss is larger than 64 MiB"));
    }
    mem.write_slice(&zeros, GuestAddress(addr))
        .map_err(|_| bad(&format!("bss {addr:#x}+{len:#x} is outside guest RAM")))
}

/// Loads the image described by `hdr` (a.out kludge) or by its ELF32 program headers.
pub fn load<M: GuestMemoryBackend>(
    mem: &M,
    f: &mut File,
    probe: &[u8],
    hdr: &Header,
) -> Result<LoadedImage, FirmwareError> {
    let required = hdr.flags & 0xffff;
    if required & !SUPPORTED_REQUIRED != 0 {
        return Err(bad(&format!("requires unsupported features {required:#x}")));
    }
    if hdr.flags & FLAG_AOUT_KLUDGE != 0 {
        return load_aout(mem, f, hdr);
    }
    load_elf32(mem, f, probe)
}

fn load_aout<M: GuestMemoryBackend>(
    mem: &M,
    f: &mut File,
    h: &Header,
) -> Result<LoadedImage, FirmwareError> {
    let file_len = f.metadata().map_err(|e| bad(&e.to_string()))?.len();
    let hdr_delta = h
        .header_addr
        .checked_sub(h.load_addr)
        .ok_or_else(|| bad("header_addr below load_addr"))?;
    let file_off = (h.offset as u64)
        .checked_sub(u64::from(hdr_delta))
        .ok_or_else(|| bad("load_addr before the start of the file"))?;
    let load_len = if h.load_end_addr == 0 {
        file_len.saturating_sub(file_off)
    } else {
        u64::from(
            h.load_end_addr
                .checked_sub(h.load_addr)
                .ok_or_else(|| bad("load_end_addr below load_addr"))?,
        )
    };
    copy_from_file(mem, f, file_off, h.load_addr.into(), load_len)?;
    let load_end = u64::from(h.load_addr) + load_len;
    let end = if h.bss_end_addr != 0 {
        let bss_end = u64::from(h.bss_end_addr);
        zero(mem, load_end, bss_end.saturating_sub(load_end))?;
        bss_end.max(load_end)
    } else {
        load_end
    };
    Ok(LoadedImage {
        entry: h.entry_addr.into(),
        end,
    })
}

fn load_elf32<M: GuestMemoryBackend>(
    mem: &M,
    f: &mut File,
    probe: &[u8],
) -> Result<LoadedImage, FirmwareError> {
    if !probe.starts_with(b"\x7fELF") || probe.get(4) != Some(&ELFCLASS32) {
        return Err(bad("not ELF32 and no a.out kludge address fields"));
    }
    if u16_at(probe, 18) != Some(EM_386) {
        return Err(bad("ELF machine is not i386"));
    }
    let entry = u32_at(probe, 24).ok_or_else(|| bad("truncated ELF header"))?;
    let phoff = u32_at(probe, 28).ok_or_else(|| bad("truncated ELF header"))? as u64;
    let phentsize = u16_at(probe, 42).ok_or_else(|| bad("truncated ELF header"))? as u64;
    let phnum = u16_at(probe, 44).ok_or_else(|| bad("truncated ELF header"))? as u64;
    if phentsize < 32 || phnum == 0 {
        return Err(bad("no program headers"));
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff))
        .map_err(|e| bad(&e.to_string()))?;
    f.read_exact(&mut ph)
        .map_err(|_| bad("truncated program headers"))?;
    let mut end = 0u64;
    for i in 0..phnum as usize {
        let p = &ph[i * phentsize as usize..];
        let field = |o| u32_at(p, o).unwrap_or(0) as u64;
        if field(0) as u32 != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = (field(4), field(12), field(16), field(20));
        if filesz > memsz {
            return Err(bad("segment file size exceeds its memory size"));
        }
        copy_from_file(mem, f, offset, paddr, filesz)?;
        zero(mem, paddr + filesz, memsz - filesz)?;
        end = end.max(paddr + memsz);
    }
    if end == 0 {
        return Err(bad("no loadable segments"));
    }
    Ok(LoadedImage {
        entry: entry.into(),
        end,
    })
}

/// What the information structure describes.
pub struct InfoConfig<'a> {
    pub address: GuestAddress,
    pub cmdline: GuestAddress,
    pub initramfs: Option<LoadedInitramfs>,
    pub e820: &'a [E820Entry],
}

/// Writes the Multiboot information structure and the tables it points to.
pub fn write_info<M: GuestMemoryBackend>(mem: &M, c: &InfoConfig<'_>) -> Result<(), FirmwareError> {
    let err = |_| FirmwareError::BootStructures("Multiboot information");
    let base = c.address.0;
    // mem_lower: KiB of conventional memory; mem_upper: KiB of RAM from 1 MiB to the first hole.
    let kib = |e: &E820Entry| (e.size / 1024) as u32;
    let lower = c.e820.iter().find(|e| e.addr == 0).map_or(0, kib).min(640);
    let upper = c.e820.iter().find(|e| e.addr == 0x10_0000).map_or(0, kib);
    let mut flags = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME;
    let mut mods_count = 0u32;
    if let Some(m) = c.initramfs {
        flags |= INFO_MODS;
        mods_count = 1;
        let end = m.address.0 + m.size;
        let mut e = Vec::new();
        for v in [m.address.0 as u32, end as u32, 0, 0] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        mem.write_slice(&e, GuestAddress(base + MODS_OFFSET))
            .map_err(err)?;
    }
    let mut mmap = Vec::new();
    for e in c.e820 {
        mmap.extend_from_slice(&20u32.to_le_bytes());
        mmap.extend_from_slice(&e.addr.to_le_bytes());
        mmap.extend_from_slice(&e.size.to_le_bytes());
        mmap.extend_from_slice(&e.kind.to_le_bytes());
    }
    if MMAP_OFFSET + mmap.len() as u64 > NAME_OFFSET {
        return Err(FirmwareError::BootStructures(
            "Multiboot memory map (too many entries)",
        ));
    }
    mem.write_slice(&mmap, GuestAddress(base + MMAP_OFFSET))
        .map_err(err)?;
    mem.write_slice(LOADER_NAME, GuestAddress(base + NAME_OFFSET))
        .map_err(err)?;
    let mut info = [0u32; 22];
    info[0] = flags;
    info[1] = lower;
    info[2] = upper;
    info[4] = c.cmdline.0 as u32;
    info[5] = mods_count;
    info[6] = (base + MODS_OFFSET) as u32;
    info[11] = mmap.len() as u32;
    info[12] = (base + MMAP_OFFSET) as u32;
    info[16] = (base + NAME_OFFSET) as u32;
    let bytes: Vec<u8> = info.iter().flat_map(|v| v.to_le_bytes()).collect();
    mem.write_slice(&bytes, c.address).map_err(err)
}
