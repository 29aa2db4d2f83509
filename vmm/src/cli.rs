//! Command-line interface.

use std::path::PathBuf;

use clap::Parser;
use iommu::IommuConfig;

/// A small VMM for KVM guests with an emulated Intel VT-d IOMMU and VFIO passthrough.
///
/// Boots a Linux bzImage (64-bit boot protocol), an ELF kernel with a PVH note, or a Multiboot
/// image on KVM with a split irqchip. The guest's serial console (COM1) is on stdout; `poweroff`
/// or `reboot` in the guest end minivmm with status 0, a guest crash with a non-zero status.
#[derive(Parser, Debug)]
#[command(name = "minivmm", version)]
pub struct Cli {
    /// Kernel image: bzImage, vmlinux with a PVH note, or a Multiboot (v1) image.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initial ramdisk (initramfs), or the Multiboot module.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "STRING", default_value = "console=ttyS0")]
    pub cmdline: String,

    /// Number of vCPUs (1 to 255).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub cpus: u32,

    /// Guest RAM, with an optional K, M or G suffix (bytes without one).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,

    /// Where the guest's COM1 goes: stdio, file=PATH, or off.
    #[arg(long, value_name = "MODE", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialMode,

    /// Add an isa-debug-exit port: a guest write of V ends minivmm with status (V << 1) | 1.
    /// Optional settings: iobase=PORT,iosize=N (defaults 0xf4 and 4).
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "", value_parser = parse_debug_exit)]
    pub debug_exit: Option<DebugExitConfig>,

    /// Put every PCI device behind an emulated Intel VT-d IOMMU (DMAR table, DRHD registers at
    /// 0xfed90000). Options, comma-separated: intremap=on|off (interrupt remapping, default
    /// on), caching-mode=on|off (default on), aw-bits=39|48 (default 48), device-iotlb=on|off
    /// (default off), x2apic=on|off (extended interrupt mode, default on).
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "", value_parser = parse_iommu)]
    pub iommu: Option<IommuConfig>,

    /// Add an emulated PCI device; repeatable. Kinds: edu (QEMU-compatible DMA test device,
    /// PCI 1234:11e8, whose DMA goes through the IOMMU when there is one).
    #[arg(long = "device", value_name = "KIND", value_parser = parse_device)]
    pub devices: Vec<DeviceKind>,

    /// Pass a host PCI device through with VFIO; repeatable. The device (BB:DD.F,
    /// DDDD:BB:DD.F or its sysfs path) must be bound to vfio-pci. With --iommu it sits behind
    /// the emulated VT-d unit (which then needs caching-mode=on); without, all guest RAM is
    /// mapped for its DMA at IOVA = guest-physical address.
    #[arg(long = "vfio", value_name = "DEVICE")]
    pub vfio: Vec<String>,

    /// The seccomp sandbox: each thread (vCPUs, device threads, the main loop) may make only
    /// the system calls it needs once the guest runs. on: a forbidden call ends minivmm with
    /// a line naming the thread and the call (status 159); log: it is allowed and the kernel
    /// logs it (audit log / dmesg); off: no filter.
    #[arg(long, value_name = "MODE", default_value = "on")]
    pub seccomp: crate::seccomp::SeccompMode,
}

/// An emulated device `--device` adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Edu,
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    match s {
        "edu" => Ok(DeviceKind::Edu),
        _ => Err(format!("unknown device {s:?} (known: edu)")),
    }
}

fn parse_iommu(s: &str) -> Result<IommuConfig, String> {
    IommuConfig::parse(s).map_err(|e| e.to_string())
}

/// Destination of the serial console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    Stdio,
    File(PathBuf),
    Off,
}

/// isa-debug-exit port settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugExitConfig {
    pub iobase: u16,
    pub iosize: u16,
}

/// Parses `512M`, `2G`, `65536K`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 512M, 2G)"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes < 32 << 20 {
        return Err(format!("{s:?} is too small: at least 32M of RAM is needed"));
    }
    if bytes % 4096 != 0 {
        return Err(format!("{s:?} is not a multiple of 4 KiB"));
    }
    Ok(bytes)
}

fn parse_serial(s: &str) -> Result<SerialMode, String> {
    match s {
        "stdio" => Ok(SerialMode::Stdio),
        "off" => Ok(SerialMode::Off),
        _ => match s.strip_prefix("file=") {
            Some(p) if !p.is_empty() => Ok(SerialMode::File(p.into())),
            _ => Err(format!("{s:?}: expected stdio, file=PATH or off")),
        },
    }
}

fn parse_int(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_debug_exit(s: &str) -> Result<DebugExitConfig, String> {
    let mut cfg = DebugExitConfig {
        iobase: 0xf4,
        iosize: 4,
    };
    for kv in s.split(',').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("{kv:?}: expected KEY=VALUE"))?;
        let v = parse_int(v).ok_or_else(|| format!("{kv:?}: not a number"))?;
        match k {
            "iobase" => {
                cfg.iobase = u16::try_from(v).map_err(|_| format!("iobase {v:#x} is not a port"))?
            }
            "iosize" if (1..=8).contains(&v) => cfg.iosize = v as u16,
            "iosize" => return Err(format!("iosize {v} must be 1 to 8")),
            _ => return Err(format!("unknown debug-exit option {k:?} (iobase, iosize)")),
        }
    }
    if u32::from(cfg.iobase) + u32::from(cfg.iosize) > 0x1_0000 {
        return Err("debug-exit port range passes 0xffff".into());
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("minivmm").chain(args.iter().copied()))
    }

    #[test]
    fn cli_defaults() {
        let c = parse(&["--kernel", "bz"]).unwrap();
        assert_eq!(c.cpus, 1);
        assert_eq!(c.memory, 512 << 20);
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!(c.serial, SerialMode::Stdio);
        assert_eq!(c.debug_exit, None);
        assert_eq!(c.iommu, None);
        assert!(c.devices.is_empty());
        assert_eq!(c.seccomp, crate::seccomp::SeccompMode::On);
    }

    #[test]
    fn cli_seccomp_modes() {
        use crate::seccomp::SeccompMode;
        for (arg, mode) in [
            ("on", SeccompMode::On),
            ("log", SeccompMode::Log),
            ("off", SeccompMode::Off),
        ] {
            let c = parse(&["--kernel", "k", &format!("--seccomp={arg}")]).unwrap();
            assert_eq!(c.seccomp, mode);
        }
        assert!(parse(&["--kernel", "k", "--seccomp=strict"]).is_err());
    }

    #[test]
    fn cli_iommu_and_devices() {
        let c = parse(&[
            "--iommu", "--kernel", "k", "--device", "edu", "--device", "edu",
        ])
        .unwrap();
        assert_eq!(c.iommu, Some(IommuConfig::default()));
        assert_eq!(c.devices, vec![DeviceKind::Edu, DeviceKind::Edu]);
        let c = parse(&["--kernel", "k", "--iommu", "aw-bits=39,intremap=off"]).unwrap();
        let i = c.iommu.unwrap();
        assert_eq!((i.aw_bits, i.interrupt_remapping), (39, false));
        assert!(parse(&["--kernel", "k", "--iommu", "aw-bits=40"]).is_err());
        assert!(parse(&["--kernel", "k", "--device", "e1000"]).is_err());
    }

    #[test]
    fn cli_memory_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("65536k"), Ok(64 << 20));
        assert_eq!(parse_size("67108864"), Ok(64 << 20));
        for bad in [
            "",
            "M",
            "12X",
            "-1G",
            "1M",
            "99999999999999999G",
            "33554433",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_rejects_bad_values_and_unknown_flags() {
        assert!(parse(&["--kernel", "bz", "--cpus", "0"]).is_err());
        assert!(parse(&["--kernel", "bz", "--cpus", "256"]).is_err());
        assert!(parse(&["--kernel", "bz", "--serial", "tcp"]).is_err());
        assert!(parse(&["--kernel", "bz", "--frobnicate"]).is_err());
        assert!(parse(&["--cpus", "2"]).is_err(), "kernel is required");
    }

    #[test]
    fn cli_serial_modes() {
        let c = parse(&["--kernel", "k", "--serial", "file=/tmp/x"]).unwrap();
        assert_eq!(c.serial, SerialMode::File("/tmp/x".into()));
        let c = parse(&["--kernel", "k", "--serial", "off"]).unwrap();
        assert_eq!(c.serial, SerialMode::Off);
    }

    #[test]
    fn cli_debug_exit_options() {
        let c = parse(&["--kernel", "k", "--debug-exit"]).unwrap();
        assert_eq!(
            c.debug_exit,
            Some(DebugExitConfig {
                iobase: 0xf4,
                iosize: 4
            })
        );
        let c = parse(&["--kernel", "k", "--debug-exit", "iobase=0x501,iosize=2"]).unwrap();
        assert_eq!(
            c.debug_exit,
            Some(DebugExitConfig {
                iobase: 0x501,
                iosize: 2
            })
        );
        assert!(parse(&["--kernel", "k", "--debug-exit", "iobase=0x10000"]).is_err());
        assert!(parse(&["--kernel", "k", "--debug-exit", "speed=3"]).is_err());
    }
}
