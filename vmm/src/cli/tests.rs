use super::*;
use crate::config::{DebugExitConfig, DeviceConfig, RngConfig, SerialConfig};
use crate::seccomp::SeccompMode;
use iommu::IommuConfig;

fn parse(args: &[&str]) -> Result<VmConfig, String> {
    Cli::try_parse_from(std::iter::once("minivmm").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?
        .into_config()
        .map_err(|e| e.to_string())
}

#[test]
fn cli_defaults() {
    let c = parse(&["--kernel", "bz"]).unwrap();
    assert_eq!(c.cpus, 1);
    assert_eq!(c.memory.size, 512 << 20);
    assert_eq!(c.memory.low_ram_end, crate::layout::MMIO32_START);
    let crate::config::BootSource::Kernel(k) = &c.boot else {
        panic!("direct kernel boot expected");
    };
    assert_eq!(k.cmdline, "console=ttyS0");
    assert_eq!(k.kernel, PathBuf::from("bz"));
    assert_eq!(c.debugcon, None);
    assert_eq!(c.serial, SerialConfig::Stdio);
    assert_eq!(c.debug_exit, None);
    assert_eq!(c.iommu, None);
    assert!(c.devices.is_empty());
    assert!(c.passthrough.is_empty());
    assert_eq!(c.seccomp, SeccompMode::On);
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn cli_seccomp_modes() {
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
fn cli_iommu_caching_mode_auto_is_on_with_vfio() {
    let c = parse(&["--kernel", "k", "--iommu", "--vfio", "00:04.0"]).unwrap();
    assert!(c.iommu.unwrap().caching_mode);
    assert_eq!(c.validate(), Ok(()));
    let c = parse(&["--kernel", "k", "--iommu", "caching-mode=on"]).unwrap();
    assert!(c.iommu.unwrap().caching_mode);
    let c = parse(&[
        "--kernel",
        "k",
        "--iommu",
        "caching-mode=off",
        "--vfio",
        "00:04.0",
    ])
    .unwrap();
    assert_eq!(
        c.validate(),
        Err(crate::config::ConfigError::VfioNeedsCachingMode)
    );
}

#[test]
fn cli_iommu_and_devices() {
    let c = parse(&[
        "--iommu", "--kernel", "k", "--device", "edu", "--device", "edu",
    ])
    .unwrap();
    let no_cm = IommuConfig {
        caching_mode: false,
        ..IommuConfig::default()
    };
    assert_eq!(
        c.iommu,
        Some(no_cm),
        "caching-mode=auto: off without --vfio"
    );
    assert_eq!(c.devices, vec![DeviceConfig::Edu, DeviceConfig::Edu]);
    let c = parse(&["--kernel", "k", "--iommu", "aw-bits=39,intremap=off"]).unwrap();
    let i = c.iommu.unwrap();
    assert_eq!((i.aw_bits, i.interrupt_remapping), (39, false));
    assert!(parse(&["--kernel", "k", "--iommu", "aw-bits=40"]).is_err());
    assert!(parse(&["--kernel", "k", "--device", "e1000"]).is_err());
}

#[test]
fn cli_rng_adds_a_virtio_rng_after_the_devices() {
    let c = parse(&["--kernel", "k", "--rng", "--device", "edu"]).unwrap();
    let rng = DeviceConfig::Rng(RngConfig {
        iommu_platform: true,
        ats: None,
    });
    assert_eq!(c.devices, vec![DeviceConfig::Edu, rng]);
}

#[test]
fn cli_rng_iommu_platform_off_is_kept() {
    let c = parse(&["--kernel", "k", "--rng", "iommu_platform=off"]).unwrap();
    let off = DeviceConfig::Rng(RngConfig {
        iommu_platform: false,
        ats: None,
    });
    assert_eq!(c.devices, vec![off]);
}

#[test]
fn cli_rng_unknown_option_names_the_flag() {
    let e = parse(&["--kernel", "k", "--rng", "rate=5"]).unwrap_err();
    assert!(e.contains("--rng"), "{e}");
}

#[test]
fn cli_option_error_names_flag_and_option() {
    let e = parse(&["--kernel", "k", "--iommu", "caching-mode=x"]).unwrap_err();
    assert_eq!(
        e,
        "invalid value 'x' for '--iommu caching-mode': expected auto or on or off"
    );
}

#[test]
fn cli_vfio_list_in_order() {
    let c = parse(&["--kernel", "k", "--vfio", "01:00.0", "--vfio", "02:00.0"]).unwrap();
    assert_eq!(c.passthrough, vec!["01:00.0", "02:00.0"]);
}

#[test]
fn cli_memory_suffixes() {
    for (arg, bytes) in [
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("65536k", 64 << 20),
        ("67108864", 64 << 20),
    ] {
        assert_eq!(
            parse(&["--kernel", "k", "--memory", arg])
                .unwrap()
                .memory
                .size,
            bytes
        );
    }
    for bad in [
        "",
        "M",
        "12X",
        "-1G",
        "1M",
        "99999999999999999G",
        "33554433",
    ] {
        assert!(parse(&["--kernel", "k", "--memory", bad]).is_err(), "{bad}");
    }
}

#[test]
fn cli_memory_low_ram_end() {
    let c = parse(&["--kernel", "k", "--memory", "size=4G,low-ram-end=2G"]).unwrap();
    assert_eq!((c.memory.size, c.memory.low_ram_end), (4 << 30, 2 << 30));
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
    assert_eq!(c.serial, SerialConfig::File("/tmp/x".into()));
    let c = parse(&["--kernel", "k", "--serial", "off"]).unwrap();
    assert_eq!(c.serial, SerialConfig::Off);
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

#[test]
fn cli_help_describes_every_flag() {
    let help = Cli::command().render_long_help().to_string();
    for flag in [
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--cpus",
        "--memory",
        "low-ram-end",
        "--serial",
        "--debug-exit",
        "--iommu",
        "caching-mode",
        "--device",
        "--vfio",
        "--disk",
        "readonly=on",
        "--rng",
        "iommu_platform",
        "--net",
        "tap=NAME",
        "--seccomp",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn cli_disks_repeat_in_order() {
    let c = parse(&[
        "--kernel",
        "k",
        "--disk",
        "path=a.img",
        "--disk",
        "path=b.img,readonly=on,serial=b",
    ])
    .unwrap();
    let disks: Vec<_> = c
        .devices
        .iter()
        .filter_map(|d| match d {
            DeviceConfig::Disk(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    let paths: Vec<_> = disks.iter().map(|d| d.path.clone()).collect();
    assert_eq!(paths, vec![PathBuf::from("a.img"), PathBuf::from("b.img")]);
    assert!(!disks[0].read_only && disks[1].read_only);
    assert_eq!(disks[1].serial.as_deref(), Some("b"));
    assert!(parse(&["--kernel", "k"]).unwrap().devices.is_empty());
    assert!(parse(&["--kernel", "k", "--disk", "file=a.img"]).is_err());
}

fn nets(c: &VmConfig) -> Vec<crate::config::NetConfig> {
    c.devices
        .iter()
        .filter_map(|d| match d {
            DeviceConfig::Net(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn cli_nets_repeat_in_order_with_distinct_default_macs() {
    let c = parse(&[
        "--kernel",
        "k",
        "--net",
        "tap=tap0",
        "--net",
        "tap=tap1,iommu_platform=off",
        "--net",
        "tap=tap2,mac=02:00:00:00:00:07",
    ])
    .unwrap();
    let n = nets(&c);
    let taps: Vec<_> = n
        .iter()
        .map(|n| match &n.backend {
            crate::config::NetBackendConfig::Tap(t) => t.as_str(),
            other => panic!("not a tap: {other:?}"),
        })
        .collect();
    assert_eq!(taps, ["tap0", "tap1", "tap2"]);
    assert_eq!(n[0].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(n[1].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x57]);
    assert_eq!(n[2].mac, [2, 0, 0, 0, 0, 7]);
    assert!(n[0].iommu_platform && !n[1].iommu_platform);
}

#[test]
fn cli_net_bad_mac_names_the_flag_and_option() {
    let e = parse(&["--kernel", "k", "--net", "tap=tap0,mac=52:54:00:12:34"]).unwrap_err();
    assert!(e.contains("'--net mac'"), "{e}");
    assert!(e.contains("52:54:00:12:34"), "{e}");
}

#[test]
fn cli_bios_boots_firmware_and_caps_low_ram() {
    let c = parse(&["--bios", "OVMF.fd", "--memory", "4G"]).unwrap();
    assert_eq!(
        c.boot,
        crate::config::BootSource::Firmware(crate::config::FirmwareBoot {
            image: PathBuf::from("OVMF.fd"),
            phys_bits: None,
        })
    );
    assert!(c.firmware());
    assert_eq!(c.memory.low_ram_end, crate::layout::FW_LOW_RAM_END_MAX);
    assert_eq!(c.memory.size, 4 << 30);
}

#[test]
fn cli_bios_and_kernel_are_exclusive_and_one_is_needed() {
    let e = parse(&["--bios", "OVMF.fd", "--kernel", "bz"]).unwrap_err();
    assert!(e.contains("cannot be used with"), "{e}");
    let e = parse(&["--bios", "OVMF.fd", "--cmdline", "x"]).unwrap_err();
    assert!(e.contains("cannot be used with"), "{e}");
    let e = parse(&["--cpus", "2"]).unwrap_err();
    assert!(e.contains("--kernel"), "{e}");
}

#[test]
fn cli_debugcon_file_stdio_and_iobase() {
    let c = parse(&["--bios", "f", "--debugcon", "file=debug.log"]).unwrap();
    assert_eq!(
        c.debugcon,
        Some(crate::config::DebugconConfig {
            file: Some(PathBuf::from("debug.log")),
            iobase: 0x402
        })
    );
    let c = parse(&["--bios", "f", "--debugcon", "stdio,iobase=0xe9"]).unwrap();
    assert_eq!(
        c.debugcon,
        Some(crate::config::DebugconConfig {
            file: None,
            iobase: 0xe9
        })
    );
    assert!(parse(&["--bios", "f", "--debugcon", "tcp"]).is_err());
    assert!(parse(&["--bios", "f", "--debugcon", "stdio,iobase=0x10000"]).is_err());
}

#[test]
fn cli_no_reboot_flag() {
    assert!(!parse(&["--bios", "f"]).unwrap().no_reboot);
    assert!(parse(&["--bios", "f", "--no-reboot"]).unwrap().no_reboot);
}
