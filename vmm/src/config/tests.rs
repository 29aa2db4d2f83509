use super::*;

fn config() -> VmConfig {
    VmConfig {
        boot: BootSource::Kernel(KernelBoot {
            kernel: "k".into(),
            initramfs: None,
            cmdline: String::new(),
        }),
        memory: memory_from_options("512M").unwrap(),
        cpus: 1,
        serial: SerialConfig::Stdio,
        debug_exit: None,
        debugcon: None,
        no_reboot: false,
        iommu: None,
        devices: Vec::new(),
        passthrough: Vec::new(),
        seccomp: SeccompMode::On,
        control: Default::default(),
    }
}

#[test]
fn memory_bare_size_uses_default_low_ram_end() {
    let m = memory_from_options("2G").unwrap();
    assert_eq!((m.size, m.low_ram_end), (2 << 30, layout::MMIO32_START));
    assert_eq!(memory_from_options("size=64M").unwrap().size, 64 << 20);
}

#[test]
fn memory_too_small_or_unaligned_is_refused() {
    assert_eq!(
        memory_from_options("1M").unwrap_err().to_string(),
        "invalid value '1M' for '--memory size': at least 32M of RAM is needed"
    );
    assert!(memory_from_options("33554433").is_err());
    assert!(memory_from_options("").is_err());
    assert!(memory_from_options("512M,size=512M").is_err());
    assert!(memory_from_options("-1G").is_err());
}

#[test]
fn memory_low_ram_end_splits_ram_at_the_boundary() {
    let m = memory_from_options("size=4G,low-ram-end=2G").unwrap();
    assert_eq!(
        m.ram_ranges(),
        vec![(0, 2 << 30), (layout::RAM_HIGH_START, 2 << 30)]
    );
}

#[test]
fn memory_low_ram_end_past_the_mmio32_window_is_refused() {
    assert!(memory_from_options("size=4G,low-ram-end=0xc0200000").is_err());
    assert!(memory_from_options("size=4G,low-ram-end=0x80001000").is_err());
    assert!(memory_from_options("size=4G,low-ram-end=16M").is_err());
}

#[test]
fn ram_below_hole_is_one_range() {
    let m = memory_from_options("512M").unwrap();
    assert_eq!(m.ram_ranges(), vec![(0, 512 << 20)]);
    let m = memory_from_options(&format!("{}", layout::MMIO32_START)).unwrap();
    assert_eq!(m.ram_ranges(), vec![(0, layout::MMIO32_START)]);
}

#[test]
fn ram_above_hole_continues_at_4g() {
    let m = memory_from_options("4G").unwrap();
    assert_eq!(
        m.ram_ranges(),
        vec![
            (0, layout::MMIO32_START),
            (layout::RAM_HIGH_START, (4 << 30) - layout::MMIO32_START)
        ]
    );
}

#[test]
fn serial_modes_and_errors() {
    assert_eq!(serial_from_options("stdio"), Ok(SerialConfig::Stdio));
    assert_eq!(serial_from_options("off"), Ok(SerialConfig::Off));
    assert_eq!(
        serial_from_options("file=/tmp/x"),
        Ok(SerialConfig::File("/tmp/x".into()))
    );
    assert_eq!(
        serial_from_options("tcp").unwrap_err().to_string(),
        "invalid value 'tcp' for '--serial': expected stdio, file=PATH or off"
    );
    assert!(serial_from_options("file=").is_err());
    assert!(serial_from_options("stdio,file=x").is_err());
}

#[test]
fn debug_exit_defaults_and_options() {
    assert_eq!(
        debug_exit_from_options(""),
        Ok(DebugExitConfig {
            iobase: 0xf4,
            iosize: 4
        })
    );
    assert_eq!(
        debug_exit_from_options("iobase=0x501,iosize=2"),
        Ok(DebugExitConfig {
            iobase: 0x501,
            iosize: 2
        })
    );
}

#[test]
fn debug_exit_bad_options_are_refused() {
    assert_eq!(
        debug_exit_from_options("iobase=0x10000")
            .unwrap_err()
            .to_string(),
        "invalid value '0x10000' for '--debug-exit iobase': expected a number from 0x0 to 0xffff"
    );
    assert!(debug_exit_from_options("iosize=9").is_err());
    assert!(debug_exit_from_options("iobase=0xfffe,iosize=4").is_err());
    assert!(debug_exit_from_options("speed=3").is_err());
}

#[test]
fn iommu_defaults_and_options() {
    assert_eq!(iommu_from_options("", true), Ok(IommuConfig::default()));
    let c = iommu_from_options(
        "intremap=off,aw-bits=39,caching-mode=off,device-iotlb=on,eim=off",
        false,
    )
    .unwrap();
    assert_eq!(
        c,
        IommuConfig {
            aw_bits: 39,
            interrupt_remapping: false,
            caching_mode: false,
            device_iotlb: true,
            x2apic: false,
        }
    );
}

#[test]
fn iommu_bad_value_names_flag_and_option() {
    assert_eq!(
        iommu_from_options("caching-mode=x", false)
            .unwrap_err()
            .to_string(),
        "invalid value 'x' for '--iommu caching-mode': expected auto or on or off"
    );
    assert_eq!(
        iommu_from_options("aw-bits=40", false)
            .unwrap_err()
            .to_string(),
        "invalid value '40' for '--iommu aw-bits': expected 39 or 48"
    );
    assert!(iommu_from_options("frobnicate=on", false).is_err());
    assert!(iommu_from_options("intremap", false).is_err());
    assert!(iommu_from_options("x2apic=on,eim=on", false).is_err());
}

#[test]
fn device_kinds() {
    assert_eq!(device_from_options("edu"), Ok(DeviceConfig::Edu));
    assert_eq!(
        device_from_options("e1000").unwrap_err().to_string(),
        "invalid value 'e1000' for '--device': expected a device kind (known: edu)"
    );
    assert!(device_from_options("edu,x=1").is_err());
}

#[test]
fn rng_defaults_to_iommu_platform_on() {
    assert_eq!(
        rng_from_options(""),
        Ok(RngConfig {
            iommu_platform: true,
            ats: None
        })
    );
    assert_eq!(
        rng_from_options("iommu_platform=off"),
        Ok(RngConfig {
            iommu_platform: false,
            ats: None
        })
    );
    assert!(rng_from_options("iommu_platform=maybe").is_err());
    assert!(rng_from_options("edu").is_err());
}

#[test]
fn iommu_caching_mode_auto_follows_vfio() {
    let cm = |s: &str, vfio: bool| iommu_from_options(s, vfio).unwrap().caching_mode;
    assert!(cm("", true), "auto with --vfio: on");
    assert!(!cm("", false), "auto without --vfio: off");
    assert!(cm("caching-mode=auto", true));
    assert!(!cm("caching-mode=auto", false));
    assert!(cm("caching-mode=on", false), "on is forced");
    assert!(
        !cm("caching-mode=off", true),
        "off is forced (and refused by validate)"
    );
}

#[test]
fn validate_vfio_with_caching_mode_auto_is_accepted() {
    let mut c = config();
    c.passthrough.push("00:04.0".into());
    c.iommu = Some(iommu_from_options("intremap=on", true).unwrap());
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn validate_vfio_without_caching_mode_is_refused() {
    let mut c = config();
    c.passthrough.push("00:04.0".into());
    assert_eq!(c.validate(), Ok(()));
    c.iommu = Some(iommu_from_options("caching-mode=off", true).unwrap());
    assert_eq!(c.validate(), Err(ConfigError::VfioNeedsCachingMode));
}

#[test]
fn validate_more_pci_devices_than_slots_is_refused() {
    let mut c = config();
    c.devices = vec![DeviceConfig::Edu; PCI_SLOTS];
    assert_eq!(c.validate(), Ok(()));
    c.passthrough.push("00:04.0".into());
    assert_eq!(
        c.validate(),
        Err(ConfigError::TooManyPciDevices(PCI_SLOTS + 1))
    );
}

#[test]
fn disk_path_readonly_and_serial() {
    let d = disk_from_options("path=/img/a.raw,readonly=on,serial=vol-1").unwrap();
    assert_eq!(
        d,
        DiskConfig {
            path: "/img/a.raw".into(),
            read_only: true,
            serial: Some("vol-1".into()),
            iommu_platform: true,
            ats: None,
        }
    );
    let d = disk_from_options("path=b.img,iommu_platform=off").unwrap();
    assert_eq!(
        (d.read_only, d.serial, d.iommu_platform),
        (false, None, false)
    );
}

#[test]
fn disk_without_path_is_refused_naming_the_option() {
    assert_eq!(
        disk_from_options("readonly=on").unwrap_err().to_string(),
        "invalid value '' for '--disk path': path=FILE is required"
    );
    assert!(disk_from_options("path=").is_err());
    assert!(disk_from_options("b.img").is_err());
}

#[test]
fn disk_serial_longer_than_20_bytes_is_refused() {
    assert!(disk_from_options("path=a,serial=12345678901234567890").is_ok());
    let e = disk_from_options("path=a,serial=123456789012345678901").unwrap_err();
    assert!(e.to_string().contains("'--disk serial'"), "{e}");
}

#[test]
fn disk_bad_readonly_value_is_refused() {
    assert_eq!(
        disk_from_options("path=a,readonly=yes")
            .unwrap_err()
            .to_string(),
        "invalid value 'yes' for '--disk readonly': expected on or off"
    );
}

#[test]
fn validate_disks_count_as_pci_devices() {
    let mut c = config();
    c.devices = vec![DeviceConfig::Edu; PCI_SLOTS - 1];
    c.devices
        .push(DeviceConfig::Disk(disk_from_options("path=a").unwrap()));
    assert_eq!(c.validate(), Ok(()));
    c.devices
        .push(DeviceConfig::Disk(disk_from_options("path=b").unwrap()));
    assert_eq!(
        c.validate(),
        Err(ConfigError::TooManyPciDevices(PCI_SLOTS + 1))
    );
}

#[test]
fn disk_build_missing_image_error_names_the_flag_and_file() {
    let d = disk_from_options("path=/nonexistent/minivmm-disk.img").unwrap();
    let e = d.build().err().unwrap().to_string();
    assert!(e.starts_with("--disk: "), "{e}");
    assert!(e.contains("/nonexistent/minivmm-disk.img"), "{e}");
}

#[test]
fn disk_build_second_user_of_an_image_is_refused_naming_the_lock() {
    let t = vmm_sys_util::tempfile::TempFile::new().unwrap();
    t.as_file().set_len(1 << 20).unwrap();
    let d = disk_from_options(&format!("path={}", t.as_path().display())).unwrap();
    let _first = d.build().unwrap();
    let e = d.build().err().unwrap().to_string();
    assert!(e.starts_with("--disk: "), "{e}");
    assert!(
        e.contains("locked by another process (flock LOCK_EX)"),
        "{e}"
    );
}

#[test]
fn net_mac_must_be_six_hex_pairs_and_unicast() {
    let mac = |m: &str| net_from_options(&format!("tap=t,mac={m}"), 0).map(|n| n.mac);
    assert_eq!(mac("52:54:00:AB:cd:01"), Ok([0x52, 0x54, 0, 0xab, 0xcd, 1]));
    for bad in [
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54:00:12:34:5",
        "52-54-00-12-34-56",
        "52:54:00:12:34:zz",
        // Multicast (bit 0 of the first byte) and all zeros are no card's address.
        "01:00:5e:00:00:01",
        "00:00:00:00:00:00",
    ] {
        let e = mac(bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("invalid value '{bad}' for '--net mac'")),
            "{e}"
        );
    }
}

#[test]
fn net_without_tap_or_with_a_long_name_is_refused() {
    assert_eq!(
        net_from_options("mac=52:54:00:12:34:56", 0)
            .unwrap_err()
            .to_string(),
        "invalid value '' for '--net tap': tap=NAME, user or socket=PATH is required"
    );
    assert!(net_from_options("tap=", 0).is_err());
    assert!(net_from_options("tap=0123456789abcdef", 0).is_err());
    assert!(net_from_options("tap=0123456789abcde", 0).is_ok());
}

#[test]
fn net_default_mac_is_locally_administered_and_per_index() {
    let a = net_from_options("tap=t", 0).unwrap().mac;
    let b = net_from_options("tap=t", 1).unwrap().mac;
    assert_ne!(a, b);
    // Locally administered (bit 1), unicast (bit 0 clear).
    assert_eq!(a[0] & 0b11, 0b10);
}

#[test]
fn net_build_with_an_unusable_tap_name_names_the_flag() {
    let n = NetConfig {
        backend: NetBackendConfig::Tap("bad/name".into()),
        mac: default_mac(0),
        iommu_platform: true,
    };
    let e = n.build().err().unwrap().to_string();
    assert!(e.starts_with("--net tap=bad/name: "), "{e}");
}

#[test]
fn ats_option_is_none_unless_given() {
    assert_eq!(rng_from_options("").unwrap().ats, None);
    assert_eq!(rng_from_options("ats=on").unwrap().ats, Some(true));
    assert_eq!(
        disk_from_options("path=a,ats=off").unwrap().ats,
        Some(false)
    );
    assert!(rng_from_options("ats=maybe").is_err());
}

#[test]
fn validate_ats_on_without_device_iotlb_is_refused_naming_the_flag() {
    let mut c = config();
    c.iommu = Some(iommu_from_options("", false).unwrap());
    c.devices = vec![DeviceConfig::Disk(
        disk_from_options("path=a.img,ats=on").unwrap(),
    )];
    let e = c.validate().unwrap_err();
    assert_eq!(e, ConfigError::AtsNeedsDeviceIotlb("disk"));
    assert!(e
        .to_string()
        .starts_with("--disk ats=on needs --iommu device-iotlb=on"));
    c.iommu = None;
    assert_eq!(c.validate(), Err(ConfigError::AtsNeedsDeviceIotlb("disk")));
    c.iommu = Some(iommu_from_options("device-iotlb=on", false).unwrap());
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn validate_ats_on_with_iommu_platform_off_is_refused() {
    let mut c = config();
    c.iommu = Some(iommu_from_options("device-iotlb=on", false).unwrap());
    c.devices = vec![DeviceConfig::Rng(
        rng_from_options("iommu_platform=off,ats=on").unwrap(),
    )];
    assert_eq!(c.validate(), Err(ConfigError::AtsNeedsIommuPlatform("rng")));
}

#[test]
fn resolve_ats_defaults_to_device_iotlb_and_follows_the_option() {
    let dt = iommu_from_options("device-iotlb=on", false).unwrap();
    let no_dt = iommu_from_options("", false).unwrap();
    assert!(resolve_ats(None, true, Some(&dt)));
    assert!(!resolve_ats(Some(false), true, Some(&dt)));
    assert!(!resolve_ats(None, true, Some(&no_dt)));
    assert!(
        !resolve_ats(None, false, Some(&dt)),
        "a device bypassing the IOMMU"
    );
    assert!(!resolve_ats(None, true, None));
}

#[test]
fn validate_firmware_boot_needs_low_ram_below_ovmf_ecam() {
    let mut c = config();
    c.boot = BootSource::Firmware(FirmwareBoot {
        image: "OVMF.fd".into(),
        phys_bits: None,
    });
    c.memory = memory_from_options("4G").unwrap();
    assert_eq!(
        c.validate(),
        Err(ConfigError::FirmwareLowRam(layout::LOW_RAM_END_MAX))
    );
    c.memory.low_ram_end = layout::FW_LOW_RAM_END_MAX;
    assert_eq!(c.validate(), Ok(()));
    // 512 MiB ends far below it whatever low-ram-end says.
    c.memory = memory_from_options("512M").unwrap();
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn net_user_takes_repeated_hostfwd_and_passt() {
    use crate::passt::{HostFwd, Proto};
    let n = net_from_options(
        "user,hostfwd=tcp::10022-:22,hostfwd=udp:127.0.0.1:5353-:53,passt=/opt/passt,mac=02:00:00:00:00:01",
        0,
    )
    .unwrap();
    assert_eq!(n.mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(
        n.backend,
        NetBackendConfig::User {
            hostfwd: vec![
                HostFwd {
                    proto: Proto::Tcp,
                    host_addr: None,
                    host_port: 10022,
                    guest_port: 22
                },
                HostFwd {
                    proto: Proto::Udp,
                    host_addr: Some("127.0.0.1".parse().unwrap()),
                    host_port: 5353,
                    guest_port: 53
                },
            ],
            passt: Some("/opt/passt".into()),
            mtu: None,
        }
    );
    assert!(matches!(
        net_from_options("user", 0).unwrap().backend,
        NetBackendConfig::User { ref hostfwd, passt: None, mtu: None } if hostfwd.is_empty()
    ));
}

#[test]
fn net_socket_takes_a_path() {
    assert_eq!(
        net_from_options("socket=/run/passt.sock", 0)
            .unwrap()
            .backend,
        NetBackendConfig::Socket("/run/passt.sock".into())
    );
    assert!(net_from_options("socket=", 0).is_err());
}

#[test]
fn net_hostfwd_without_user_or_with_two_backends_is_refused() {
    let e = net_from_options("tap=t,hostfwd=tcp::1-:2", 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid value '' for '--net hostfwd': only with --net user"
    );
    assert!(net_from_options("user,tap=t", 0).is_err());
    assert!(net_from_options("tap=t,socket=/s", 0).is_err());
    assert!(net_from_options("bridge", 0).is_err());
    assert!(net_from_options("socket=/s,passt=/p", 0).is_err());
}

#[test]
fn net_hostfwd_bad_forms_name_the_option() {
    for bad in [
        "tcp::10022",
        "tcp::0-:22",
        "tcp::70000-:22",
        "sctp::1-:2",
        "tcp:nohost:1-:2",
        "tcp::1-:x",
    ] {
        let e = net_from_options(&format!("user,hostfwd={bad}"), 0).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("invalid value '{bad}' for '--net hostfwd'")),
            "{e}"
        );
    }
    // passt has one guest: a guest address is refused, saying why.
    let e = net_from_options("user,hostfwd=tcp::1-10.0.2.15:2", 0).unwrap_err();
    assert!(e.to_string().contains("guest address"), "{e}");
}

#[test]
fn net_socket_build_to_a_missing_path_names_the_flag() {
    let n = NetConfig {
        backend: NetBackendConfig::Socket("/nonexistent/passt.sock".into()),
        mac: default_mac(0),
        iommu_platform: true,
    };
    let e = n.build().err().unwrap().to_string();
    assert!(
        e.starts_with("--net socket: Cannot connect to /nonexistent/passt.sock: "),
        "{e}"
    );
}

#[test]
fn net_user_mtu_is_bounded_and_user_only() {
    assert!(matches!(
        net_from_options("user,mtu=65520", 0).unwrap().backend,
        NetBackendConfig::User {
            mtu: Some(65520),
            ..
        }
    ));
    assert!(net_from_options("user,mtu=65521", 0).is_err());
    assert!(net_from_options("user,mtu=67", 0).is_err());
    assert!(net_from_options("tap=t,mtu=9000", 0).is_err());
}

#[test]
fn address_map_firmware_mmio64_window_follows_guest_phys_bits() {
    let mut c = config();
    c.memory = memory_from_options("1G").unwrap();
    let end = |c: &VmConfig| {
        let m = c.address_map();
        m.mmio64.0 + m.mmio64.1
    };
    c.boot = BootSource::Firmware(FirmwareBoot {
        image: "OVMF.fd".into(),
        phys_bits: Some(40),
    });
    // OVMF's window for a 40-bit guest is 896 GiB..1 TiB: it must decode.
    assert_eq!(end(&c), 1 << 40);
    assert_eq!(c.address_map().mmio64.0, 4 << 30);
    c.boot = BootSource::Firmware(FirmwareBoot {
        image: "OVMF.fd".into(),
        phys_bits: None,
    });
    assert_eq!(end(&c), 64 << 30, "36 bits when unknown");
}
