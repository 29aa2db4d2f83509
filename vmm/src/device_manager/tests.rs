//! The device manager's wiring, at register level, on a real KVM VM (no vCPU runs).

use super::*;
use crate::config::{DebugExitConfig, DeviceConfig, SerialConfig};
use crate::layout::*;
use devices::pci::IoEventRegistrar;

/// A device manager for `cfg` on a fresh VM with its RAM, finished.
fn build(cfg: &VmConfig) -> Result<(DeviceManager, Vec<PrtRoute>), DeviceManagerError> {
    let kvm = kvm_ioctls::Kvm::new().expect("these tests need /dev/kvm");
    let vm = Arc::new(kvm.create_vm().unwrap());
    let slots = Arc::new(MemSlots::new(kvm.get_nr_memslots()).unwrap());
    let mem = crate::memory::create(&cfg.memory).unwrap();
    let (control, _stopped) = VmControl::new().unwrap();
    let mut dm = DeviceManager::create(vm, &mem, slots, Arc::new(control), cfg, &[])?;
    let prt = dm.finish()?;
    Ok((dm, prt))
}

fn config() -> VmConfig {
    VmConfig {
        boot: crate::config::BootSource::Kernel(crate::config::KernelBoot {
            kernel: "k".into(),
            initramfs: None,
            cmdline: String::new(),
        }),
        memory: crate::config::memory_from_options("64M").unwrap(),
        cpus: 1,
        serial: SerialConfig::Off,
        debug_exit: None,
        debugcon: None,
        no_reboot: false,
        iommu: None,
        devices: Vec::new(),
        passthrough: Vec::new(),
        seccomp: crate::seccomp::SeccompMode::Off,
        control: Default::default(),
    }
}

/// Configuration mechanism #1 (PCI Local Bus 3.0 section 3.2.2.3.2): dword 0 of `device`.
fn vendor_device(dm: &DeviceManager, device: u8) -> u32 {
    let address = 0x8000_0000u32 | (u32::from(device) << 11);
    assert!(dm
        .pio()
        .write(PCI_CONFIG_PORT.into(), &address.to_le_bytes()));
    let mut data = [0u8; 4];
    assert!(dm.pio().read(u64::from(PCI_CONFIG_PORT) + 4, &mut data));
    u32::from_le_bytes(data)
}

#[test]
fn device_manager_edu_devices_take_slots_in_order() {
    let mut cfg = config();
    cfg.devices = vec![DeviceConfig::Edu, DeviceConfig::Edu];
    let (dm, prt) = build(&cfg).unwrap();
    assert_eq!(
        vendor_device(&dm, 0) & 0xffff,
        0x1b36,
        "host bridge at 00:00.0"
    );
    assert_eq!(vendor_device(&dm, 1), 0x11e8_1234);
    assert_eq!(vendor_device(&dm, 2), 0x11e8_1234);
    assert_eq!(vendor_device(&dm, 3), 0xffff_ffff, "nothing at 00:03.0");
    assert!(prt.iter().any(|r| r.device == 2));
}

#[test]
fn device_manager_drhd_only_with_an_iommu() {
    let mut data = [0u8; 4];
    let (dm, _) = build(&config()).unwrap();
    assert!(!dm.mmio().read(DRHD_START, &mut data));
    let mut cfg = config();
    cfg.iommu = Some(iommu::IommuConfig::default());
    let (dm, _) = build(&cfg).unwrap();
    assert!(dm.mmio().read(DRHD_START, &mut data), "VER_REG decodes");
    assert!(dm.mmio().read(IOAPIC_START, &mut data));
}

#[test]
fn device_manager_serial_and_debug_exit_only_when_asked() {
    let mut data = [0u8; 1];
    let (dm, _) = build(&config()).unwrap();
    assert!(!dm.pio().read(COM1_PORT.into(), &mut data));
    assert!(!dm.pio().read(DEBUG_EXIT_PORT.into(), &mut data));
    assert!(dm.serial().is_none());
    let mut cfg = config();
    let log = std::env::temp_dir().join(format!("minivmm-dm-serial-{}.log", std::process::id()));
    cfg.serial = SerialConfig::File(log.clone());
    cfg.debug_exit = Some(DebugExitConfig {
        iobase: DEBUG_EXIT_PORT,
        iosize: DEBUG_EXIT_SIZE,
    });
    let (dm, _) = build(&cfg).unwrap();
    assert!(dm.pio().read(COM1_PORT.into(), &mut data));
    assert!(dm.pio().read(DEBUG_EXIT_PORT.into(), &mut data));
    assert!(dm.serial().is_some());
    drop(dm);
    let _ = std::fs::remove_file(log);
}

#[test]
fn device_manager_debug_exit_on_pci_config_ports_is_refused() {
    let mut cfg = config();
    cfg.debug_exit = Some(DebugExitConfig {
        iobase: PCI_CONFIG_PORT,
        iosize: 4,
    });
    assert!(matches!(
        build(&cfg),
        Err(DeviceManagerError::Resources(ResourceError::Overlap {
            what: "isa-debug-exit",
            other: "PCI config ports",
            ..
        }))
    ));
}

#[test]
fn device_manager_acpi_config_follows_the_devices() {
    let mut cfg = config();
    let a = acpi_config(&cfg, &[]);
    assert!(a.dmar.is_none());
    assert!(a.dsdt.serial.is_none());
    cfg.iommu = Some(iommu::IommuConfig::default());
    cfg.serial = SerialConfig::Stdio;
    let a = acpi_config(&cfg, &[]);
    assert_eq!(a.dmar.map(|d| d.register_base), Some(DRHD_START));
    assert_eq!(a.dsdt.serial, Some((COM1_PORT, COM1_IRQ)));
}

/// A dword of MMIO at `addr`, if anything decodes it.
fn mmio_dword(dm: &DeviceManager, addr: u64) -> Option<u32> {
    let mut data = [0u8; 4];
    dm.mmio()
        .read(addr, &mut data)
        .then(|| u32::from_le_bytes(data))
}

#[test]
fn device_manager_edu_bar_decodes_where_the_guest_moves_it() {
    let mut cfg = config();
    cfg.devices = vec![DeviceConfig::Edu];
    let (dm, _) = build(&cfg).unwrap();
    let ident = devices::edu::registers::IDENT_VALUE;
    assert_eq!(mmio_dword(&dm, MMIO32_START), Some(ident), "BAR 0 assigned");
    // BAR 0 of 00:01.0 (PCI Local Bus 3.0 section 6.2.5.1) through ECAM.
    let to = MMIO32_START + 0x100_0000;
    assert!(dm
        .mmio()
        .write(ECAM_START + (1 << 15) + 0x10, &(to as u32).to_le_bytes()));
    assert_eq!(mmio_dword(&dm, MMIO32_START), None, "old place");
    assert_eq!(mmio_dword(&dm, to), Some(ident), "new place");
}

#[test]
fn device_manager_drop_releases_the_buses() {
    let mut cfg = config();
    cfg.devices = vec![DeviceConfig::Edu];
    let (dm, _) = build(&cfg).unwrap();
    let (pio, mmio) = (dm.pio().clone(), dm.mmio().clone());
    drop(dm);
    assert_eq!(Arc::strong_count(&pio), 1, "the PCI root let go of it");
    assert_eq!(Arc::strong_count(&mmio), 1);
}

#[test]
fn device_manager_kvm_ioeventfds_register_at_any_length_and_unregister() {
    let kvm = kvm_ioctls::Kvm::new().expect("these tests need /dev/kvm");
    let events = KvmIoEvents(Arc::new(kvm.create_vm().unwrap()));
    let fd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let (mmio, pio) = (MMIO32_START + 8, u64::from(PCI_IO_START) + 2);
    events.register(false, mmio, &fd).unwrap();
    events.register(true, pio, &fd).unwrap();
    let again = events.register(false, mmio, &fd).unwrap_err();
    assert_eq!(again.raw_os_error(), Some(libc::EEXIST));
    events.unregister(false, mmio, &fd).unwrap();
    events.unregister(true, pio, &fd).unwrap();
    let gone = events.unregister(false, mmio, &fd).unwrap_err();
    assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn device_manager_firmware_boot_has_the_q35_look_alike() {
    let mut cfg = config();
    cfg.boot = crate::config::BootSource::Firmware(crate::config::FirmwareBoot {
        image: "OVMF.fd".into(),
        phys_bits: None,
    });
    let (dm, _) = build(&cfg).unwrap();
    assert_eq!(vendor_device(&dm, 0), 0x29c0_8086, "Q35 MCH at 00:00.0");
    assert_eq!(vendor_device(&dm, 0x1f), 0x2918_8086, "ICH9 LPC at 00:1f.0");
    // ECAM at OVMF's base reaches the same functions; nothing at the direct-boot base.
    let mut d = [0u8; 4];
    assert!(dm.mmio().read(FW_ECAM_START + (0x1f << 15), &mut d));
    assert_eq!(u32::from_le_bytes(d), 0x2918_8086);
    assert!(!dm.mmio().read(ECAM_START, &mut d));
    // RTC/CMOS, and fw_cfg's DMA register reads its signature.
    assert!(dm.pio().write(0x70, &[0x0d]));
    let mut b = [0u8; 1];
    assert!(dm.pio().read(0x71, &mut b));
    assert_eq!(b[0], 0x80);
    assert!(dm.pio().read(u64::from(FW_CFG_PORT) + 4, &mut d));
    assert_eq!(&d, b"QEMU");
    // The PM block is not decoded until the guest enables it; the HW-reduced block moved.
    assert!(!dm.pio().read(0x608, &mut d));
    assert!(dm.pio().read(u64::from(FW_ACPI_PM_PORT), &mut b));
}

#[test]
fn device_manager_bootorder_names_virtio_disks() {
    assert_eq!(
        legacy::bootorder(&[1, 0x1a]),
        b"/pci@i0cf8/scsi@1/disk@0,0\n/pci@i0cf8/scsi@1a/disk@0,0\0".to_vec()
    );
}

#[test]
fn device_manager_e820_lists_ram_entries_only() {
    let e = legacy::e820(&[(0, 0xb000_0000), (RAM_HIGH_START, 1 << 30)]);
    assert_eq!(e.len(), 40, "two 20-byte entries");
    assert_eq!(&e[0..8], &0u64.to_le_bytes());
    assert_eq!(&e[8..16], &0xb000_0000u64.to_le_bytes());
    assert_eq!(&e[16..20], &1u32.to_le_bytes(), "E820_RAM");
    assert_eq!(&e[20..28], &RAM_HIGH_START.to_le_bytes());
    assert_eq!(&e[28..36], &(1u64 << 30).to_le_bytes());
}

#[test]
fn device_manager_vm_reset_turns_vtd_translation_off_and_the_pm_block_off() {
    let mut cfg = config();
    cfg.boot = crate::config::BootSource::Firmware(crate::config::FirmwareBoot {
        image: "OVMF.fd".into(),
        phys_bits: None,
    });
    cfg.iommu = Some(iommu::IommuConfig::default());
    let (dm, _) = build(&cfg).unwrap();
    let gsts = |dm: &DeviceManager| {
        let mut d = [0u8; 4];
        assert!(dm
            .mmio()
            .read(DRHD_START + iommu::registers::GSTS_REG, &mut d));
        u32::from_le_bytes(d)
    };
    let te = iommu::registers::GCMD_TE;
    assert!(dm
        .mmio()
        .write(DRHD_START + iommu::registers::GCMD_REG, &te.to_le_bytes()));
    assert_ne!(gsts(&dm) & iommu::registers::GSTS_TES, 0, "translating");
    // The guest enables the PM block at 0x600 (00:1f.0 PMBASE, ACPI_EN).
    for (reg, v) in [(0x40u32, 0x601u32), (0x44, 0x80)] {
        let address = 0x8000_0000u32 | (0x1f << 11) | reg;
        assert!(dm
            .pio()
            .write(PCI_CONFIG_PORT.into(), &address.to_le_bytes()));
        assert!(dm
            .pio()
            .write(u64::from(PCI_CONFIG_PORT) + 4, &v.to_le_bytes()));
    }
    let mut d = [0u8; 4];
    assert!(dm.pio().read(0x608, &mut d), "PM timer decodes");
    dm.reset_handle().reset();
    assert_eq!(gsts(&dm) & iommu::registers::GSTS_TES, 0, "translation off");
    assert!(!dm.pio().read(0x608, &mut d), "PM block off the bus");
}
