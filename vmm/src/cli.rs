//! The command line: clap's flags, each option string handed to `crate::config`, which gives
//! the `VmConfig` the rest of minivmm works from.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

use crate::config::{self, VmConfig};
use crate::options::OptionError;

/// A small VMM for KVM guests with an emulated Intel VT-d IOMMU and VFIO passthrough.
///
/// Boots a Linux bzImage (64-bit boot protocol), an ELF kernel with a PVH note, or a Multiboot
/// image on KVM with a split irqchip, or a UEFI firmware image (OVMF.fd) with --bios. The
/// guest's serial console (COM1) is on stdout; `poweroff` or `reboot` in the guest end minivmm
/// with status 0, a guest crash with a non-zero status.
#[derive(Parser, Debug)]
#[command(name = "minivmm", version)]
pub struct Cli {
    /// Kernel image: bzImage, vmlinux with a PVH note, or a Multiboot (v1) image.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "bios",
        conflicts_with = "bios"
    )]
    pub kernel: Option<PathBuf>,

    /// Firmware image (e.g. /usr/share/ovmf/OVMF.fd), mapped read-only so that it ends at
    /// 4 GiB; the boot CPU starts at its reset vector on a Q35-like platform (ICH9 LPC and PM
    /// timer, fw_cfg with the ACPI tables, ECAM at 0xb0000000). RAM below 4 GiB then ends at
    /// or below 0xb0000000. Instead of --kernel.
    #[arg(long, value_name = "PATH")]
    pub bios: Option<PathBuf>,

    /// Initial ramdisk (initramfs), or the Multiboot module.
    #[arg(long, value_name = "PATH", conflicts_with = "bios")]
    pub initramfs: Option<PathBuf>,

    /// Kernel command line (default console=ttyS0).
    #[arg(long, value_name = "STRING", conflicts_with = "bios")]
    pub cmdline: Option<String>,

    /// QEMU's isa-debugcon: bytes the guest writes to the port go to file=PATH or stdio
    /// (OVMF debug builds log there); iobase=PORT moves it (default 0x402, OVMF's).
    #[arg(long, value_name = "OPTIONS")]
    pub debugcon: Option<String>,

    /// A guest reset (reboot) ends minivmm with status 0 instead of resetting the VM, as
    /// QEMU's -no-reboot. With --bios a reset otherwise runs the firmware again in the same
    /// process; with --kernel a reset always ends minivmm.
    #[arg(long)]
    pub no_reboot: bool,

    /// Number of vCPUs (1 to 255).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub cpus: u32,

    /// Guest RAM: SIZE with an optional K, M or G suffix (bytes without one), or
    /// size=SIZE,low-ram-end=ADDR to also set where RAM below 4 GiB ends (a multiple of 2M, at
    /// most and by default 0xc0000000); the rest of the RAM is placed from 4 GiB.
    #[arg(long, value_name = "SIZE|OPTIONS", default_value = "512M")]
    pub memory: String,

    /// Where the guest's COM1 goes: stdio, file=PATH, or off.
    #[arg(long, value_name = "MODE", default_value = "stdio")]
    pub serial: String,

    /// Add an isa-debug-exit port: a guest write of V ends minivmm with status (V << 1) | 1.
    /// Optional settings: iobase=PORT,iosize=N (defaults 0xf4 and 4).
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "", )]
    pub debug_exit: Option<String>,

    /// Put every PCI device behind an emulated Intel VT-d IOMMU (DMAR table, DRHD registers at
    /// 0xfed90000). Options, comma-separated: intremap=on|off (interrupt remapping, default
    /// on), caching-mode=auto|on|off (default auto: on with --vfio, off otherwise), aw-bits=39|48
    /// (default 48), device-iotlb=on|off
    /// (default off), x2apic=on|off (extended interrupt mode, also spelled eim=, default on).
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "", )]
    pub iommu: Option<String>,

    /// Add an emulated PCI device; repeatable. Kinds: edu (QEMU-compatible DMA test device,
    /// PCI 1234:11e8, whose DMA goes through the IOMMU when there is one).
    #[arg(long = "device", value_name = "KIND")]
    pub devices: Vec<String>,

    /// Add a virtio-rng device (virtio-pci 1af4:1044) fed from the host's getrandom. With
    /// --iommu it offers VIRTIO_F_ACCESS_PLATFORM and its DMA goes through the IOMMU; option
    /// iommu_platform=off (default on) makes it bypass the IOMMU instead. ats=on|off: the PCIe
    /// ATS capability (default on with --iommu device-iotlb=on, refused without it).
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "")]
    pub rng: Option<String>,

    /// Pass a host PCI device through with VFIO; repeatable. The device (BB:DD.F,
    /// DDDD:BB:DD.F or its sysfs path) must be bound to vfio-pci. With --iommu it sits behind
    /// the emulated VT-d unit (which then needs caching-mode=on); without, all guest RAM is
    /// mapped for its DMA at IOVA = guest-physical address.
    #[arg(long = "vfio", value_name = "DEVICE")]
    pub vfio: Vec<String>,

    /// Add a virtio-blk disk (virtio-pci 1af4:1042) over a raw image; repeatable.
    /// path=FILE[,readonly=on][,serial=ID][,iommu_platform=on|off][,ats=on|off]: the image is locked
    /// (flock) so no second VM opens it; readonly=on offers the guest a read-only disk and
    /// shares the image; serial= is the disk's ID (at most 20 characters); with --iommu the
    /// disk offers ACCESS_PLATFORM unless iommu_platform=off; ats as for --rng. The capacity is
    /// the file size in whole 512-byte sectors.
    #[arg(long = "disk", value_name = "OPTIONS")]
    pub disks: Vec<String>,

    /// Add a virtio-net card (virtio-pci 1af4:1041); repeatable. tap=NAME: over a tap
    /// interface, created if absent (which needs CAP_NET_ADMIN; make it beforehand with
    /// `ip tuntap add dev NAME mode tap user USER` to run unprivileged).
    /// user[,hostfwd=tcp::HOSTPORT-:GUESTPORT]...[,hostfwd=udp::...][,passt=PATH][,mtu=N]:
    /// user-mode networking through passt, which minivmm starts (DHCP, DNS, forwards; no root
    /// needed; mtu= up to 65520 is given to passt and offered to the guest).
    /// socket=PATH: a passt (or any peer of its stream protocol) listening at PATH. Also
    /// [,mac=MAC][,iommu_platform=on|off]; mac= defaults to 52:54:00:12:34:56, the last byte counting up per
    /// card; with --iommu the card offers ACCESS_PLATFORM unless iommu_platform=off.
    #[arg(long = "net", value_name = "OPTIONS")]
    pub nets: Vec<String>,

    /// The seccomp sandbox: each thread (vCPUs, device threads, the main loop) may make only
    /// the system calls it needs once the guest runs. on: a forbidden call ends minivmm with
    /// a line naming the thread and the call (status 159); log: it is allowed and the kernel
    /// logs it (audit log / dmesg); off: no filter.
    #[arg(long, value_name = "MODE", default_value = "on")]
    pub seccomp: crate::seccomp::SeccompMode,

    /// A QMP control socket (QEMU's machine protocol, for qemu.qmp, qmp-shell, libvirt):
    /// unix:PATH,server[,wait=off] or tcp:HOST:PORT,server[,wait=off] (an empty HOST is
    /// 127.0.0.1). Without wait=off the guest starts once the first client connected. Clients
    /// are served one after another.
    #[arg(long, value_name = "SOCKET")]
    pub qmp: Option<String>,

    /// A human monitor (QEMU's HMP: info status|pci|iommu|mtree, stop, cont,
    /// system_powerdown, system_reset, quit, help) on a socket: telnet:HOST:PORT,server,nowait,
    /// tcp:... or unix:..., as for --qmp.
    #[arg(long, value_name = "SOCKET")]
    pub monitor: Option<String>,
}

impl Cli {
    /// The VM these flags describe (each option string parsed; combinations are checked by
    /// `VmConfig::validate`).
    pub fn into_config(self) -> Result<VmConfig, OptionError> {
        let mut memory = config::memory_from_options(&self.memory)?;
        let boot = match (self.kernel, self.bios) {
            (_, Some(image)) => {
                // OVMF's ECAM is at 0xb0000000: RAM below 4 GiB stops there.
                memory.low_ram_end = memory.low_ram_end.min(crate::layout::FW_LOW_RAM_END_MAX);
                config::BootSource::Firmware(config::FirmwareBoot {
                    image,
                    phys_bits: None,
                })
            }
            (kernel, None) => config::BootSource::Kernel(config::KernelBoot {
                // clap requires one of --kernel and --bios.
                kernel: kernel.unwrap_or_default(),
                initramfs: self.initramfs,
                cmdline: self.cmdline.unwrap_or_else(|| "console=ttyS0".into()),
            }),
        };
        Ok(VmConfig {
            boot,
            memory,
            cpus: self.cpus,
            serial: config::serial_from_options(&self.serial)?,
            debug_exit: self
                .debug_exit
                .as_deref()
                .map(config::debug_exit_from_options)
                .transpose()?,
            no_reboot: self.no_reboot,
            debugcon: self
                .debugcon
                .as_deref()
                .map(config::debugcon_from_options)
                .transpose()?,
            iommu: self
                .iommu
                .as_deref()
                .map(|s| config::iommu_from_options(s, !self.vfio.is_empty()))
                .transpose()?,
            devices: self
                .devices
                .iter()
                .map(|d| config::device_from_options(d))
                .chain(
                    self.rng
                        .as_deref()
                        .map(|r| config::rng_from_options(r).map(config::DeviceConfig::Rng)),
                )
                .chain(
                    self.disks
                        .iter()
                        .map(|d| config::disk_from_options(d).map(config::DeviceConfig::Disk)),
                )
                .chain(
                    self.nets.iter().enumerate().map(|(i, n)| {
                        config::net_from_options(n, i).map(config::DeviceConfig::Net)
                    }),
                )
                .collect::<Result<_, _>>()?,
            passthrough: self.vfio,
            seccomp: self.seccomp,
            control: crate::qmp::ControlConfig {
                qmp: self
                    .qmp
                    .as_deref()
                    .map(|s| socket_option("qmp", s))
                    .transpose()?,
                monitor: self
                    .monitor
                    .as_deref()
                    .map(|s| socket_option("monitor", s))
                    .transpose()?,
            },
        })
    }
}

/// A `--qmp` or `--monitor` socket.
fn socket_option(flag: &'static str, s: &str) -> Result<crate::qmp::SocketSpec, OptionError> {
    crate::qmp::parse_socket(s).map_err(|expected| OptionError::InvalidKind {
        flag,
        value: s.into(),
        expected,
    })
}

/// Parses the process's command line; a bad flag or option ends minivmm as clap does (the
/// message, the usage line, status 2).
pub fn parse() -> VmConfig {
    match Cli::parse().into_config() {
        Ok(c) => c,
        Err(e) => Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit(),
    }
}

#[cfg(test)]
mod tests;
