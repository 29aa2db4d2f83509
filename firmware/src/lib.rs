//! Kernel loading and boot protocols for minivmm: a bzImage through the Linux 64-bit boot
//! protocol, or an ELF kernel through PVH. Output is plain register values
//! ([`BootCpuState`]) that the VMM loads into the boot vCPU; nothing here knows about KVM.
#![forbid(unsafe_code)]

pub mod cpu_state;
pub mod e820;
pub mod linux;
pub mod multiboot;
pub mod pvh;
pub mod reset_vector;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

pub use cpu_state::{BootCpuState, BootStructures, CpuMode, Segment};
pub use e820::{build_e820, E820Entry};

/// Why a guest could not be set up for boot.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("Cannot open kernel {0}: {1}")]
    KernelOpen(PathBuf, std::io::Error),
    #[error("Cannot open initramfs {0}: {1}")]
    InitramfsOpen(PathBuf, std::io::Error),
    #[error("{0} is not a bzImage, an ELF kernel with a PVH note, or a Multiboot image")]
    UnknownFormat(PathBuf),
    #[error("Cannot load the kernel: {0}")]
    Kernel(String),
    #[error("Initramfs of {size} bytes does not fit in guest RAM below {limit:#x}")]
    InitramfsTooBig { size: u64, limit: u64 },
    #[error("Kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("Cannot write the {0} into guest memory")]
    BootStructures(&'static str),
    #[error("Cannot read initramfs into guest memory: {0}")]
    InitramfsRead(String),
}

/// Where boot data goes in guest memory.
#[derive(Clone, Debug)]
pub struct BootLayout {
    pub structures: BootStructures,
    /// Zero page (bzImage) or hvm_start_info (PVH) or Multiboot info.
    pub boot_info: GuestAddress,
    pub cmdline: GuestAddress,
    pub cmdline_max: u64,
    /// Where the kernel's high memory starts (1 MiB).
    pub high_mem_start: GuestAddress,
    /// Guest RAM ranges (start, size) and reserved ranges for the E820 map.
    pub ram: Vec<(u64, u64)>,
    pub reserved: Vec<(u64, u64)>,
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootConfig<'a> {
    pub kernel: &'a Path,
    pub initramfs: Option<&'a Path>,
    pub cmdline: &'a str,
    pub layout: &'a BootLayout,
    /// The ACPI RSDP, passed to the kernel where the protocol allows.
    pub rsdp: Option<GuestAddress>,
}

/// Where the initramfs was put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitramfs {
    pub address: GuestAddress,
    pub size: u64,
}

/// Bytes of the image examined to detect its format (Multiboot headers are in the first 8 KiB).
const HEADER_PROBE: usize = 8192;
const PAGE_SIZE: u64 = 4096;

fn write_cmdline<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &BootConfig<'_>,
    max: usize,
) -> Result<u32, FirmwareError> {
    let len = cfg.cmdline.len();
    if len + 1 > max {
        return Err(FirmwareError::CmdlineTooLong {
            len,
            max: max.saturating_sub(1),
        });
    }
    let mut bytes = cfg.cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, cfg.layout.cmdline)
        .map_err(|_| FirmwareError::BootStructures("command line"))?;
    Ok(len as u32)
}

/// Loads the initramfs at the highest page-aligned address below `limit` that is in RAM and
/// above `floor`.
fn load_initramfs<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    floor: u64,
    limit: u64,
    ram: &[(u64, u64)],
) -> Result<LoadedInitramfs, FirmwareError> {
    let mut f = File::open(path).map_err(|e| FirmwareError::InitramfsOpen(path.into(), e))?;
    let size = f
        .metadata()
        .map_err(|e| FirmwareError::InitramfsOpen(path.into(), e))?
        .len();
    let too_big = || FirmwareError::InitramfsTooBig { size, limit };
    // The RAM range that contains the kernel's high memory, clipped to the limit.
    let top = ram
        .iter()
        .filter(|&&(s, _)| s <= floor)
        .map(|&(s, l)| (s + l).min(limit))
        .max()
        .ok_or_else(too_big)?;
    let address = top
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= floor)
        .ok_or_else(too_big)?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut f, size as usize)
        .map_err(|e| FirmwareError::InitramfsRead(e.to_string()))?;
    Ok(LoadedInitramfs {
        address: GuestAddress(address),
        size,
    })
}

/// Detects the kernel's format, loads it, the initramfs and the command line, writes the boot
/// protocol's structures, and returns the boot vCPU's state.
pub fn load<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &BootConfig<'_>,
) -> Result<BootCpuState, FirmwareError> {
    let open_err = |e| FirmwareError::KernelOpen(cfg.kernel.into(), e);
    let mut kernel = File::open(cfg.kernel).map_err(open_err)?;
    let mut header = Vec::with_capacity(HEADER_PROBE);
    (&mut kernel)
        .take(HEADER_PROBE as u64)
        .read_to_end(&mut header)
        .map_err(open_err)?;
    // The loaders read the image from its start.
    kernel.seek(SeekFrom::Start(0)).map_err(open_err)?;
    let e820 = build_e820(&cfg.layout.ram, &cfg.layout.reserved);
    let l = cfg.layout;

    if linux::is_bzimage(&header) {
        let (load, hdr) = linux::load_bzimage(mem, &mut kernel, l.high_mem_start)?;
        let max = (l.cmdline_max as usize).min(hdr.cmdline_size.max(256) as usize + 1);
        let cmdline_size = write_cmdline(mem, cfg, max)?;
        let kernel_end = load.0 + u64::from(hdr.init_size).max(1);
        let initramfs = cfg
            .initramfs
            .map(|p| load_initramfs(mem, p, kernel_end, linux::initrd_limit(&hdr), &l.ram))
            .transpose()?;
        linux::write_zero_page(
            mem,
            hdr,
            &linux::ZeroPage {
                address: l.boot_info,
                cmdline: l.cmdline,
                cmdline_size,
                initramfs,
                e820: &e820,
                rsdp: cfg.rsdp,
            },
        )?;
        let mut st = cpu_state::setup(mem, CpuMode::Long64, &l.structures)?;
        st.rip = linux::entry_64(load).0;
        st.rsi = l.boot_info.0;
        return Ok(st);
    }

    if let Some(mb) = multiboot::find_header(&header) {
        write_cmdline(mem, cfg, l.cmdline_max as usize)?;
        let image = multiboot::load(mem, &mut kernel, &header, &mb)?;
        let initramfs = cfg
            .initramfs
            .map(|p| load_initramfs(mem, p, image.end, u64::from(u32::MAX), &l.ram))
            .transpose()?;
        multiboot::write_info(
            mem,
            &multiboot::InfoConfig {
                address: l.boot_info,
                cmdline: l.cmdline,
                initramfs,
                e820: &e820,
            },
        )?;
        let mut st = cpu_state::setup(mem, CpuMode::Protected32, &l.structures)?;
        st.rip = image.entry;
        st.rax = u64::from(multiboot::BOOTLOADER_MAGIC);
        st.rbx = l.boot_info.0;
        return Ok(st);
    }

    if pvh::is_elf(&header) {
        let (entry, kernel_end) = pvh::load_elf(mem, &mut kernel, l.high_mem_start)?;
        write_cmdline(mem, cfg, l.cmdline_max as usize)?;
        let initramfs = cfg
            .initramfs
            .map(|p| load_initramfs(mem, p, kernel_end, u64::from(u32::MAX), &l.ram))
            .transpose()?;
        pvh::write_start_info(
            mem,
            &pvh::StartInfo {
                address: l.boot_info,
                cmdline: l.cmdline,
                initramfs,
                e820: &e820,
                rsdp: cfg.rsdp,
            },
        )?;
        let mut st = cpu_state::setup(mem, CpuMode::Protected32, &l.structures)?;
        st.rip = entry.0;
        st.rbx = l.boot_info.0;
        return Ok(st);
    }

    Err(FirmwareError::UnknownFormat(cfg.kernel.into()))
}
