//! What a VM is made of, apart from where the settings came from (the command line today; a
//! config file or a control socket later). Each flag's option string is parsed here with the
//! one grammar of `crate::options`, and the whole configuration is checked once, by
//! `VmConfig::validate`, before anything is set up.

use std::path::PathBuf;

use iommu::IommuConfig;

use crate::layout;
use crate::options::{parse_size, OptionError, Options};
use crate::seccomp::SeccompMode;

/// A whole VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub boot: BootSource,
    pub memory: MemoryConfig,
    /// Number of vCPUs.
    pub cpus: u32,
    pub serial: SerialConfig,
    pub debug_exit: Option<DebugExitConfig>,
    /// QEMU's isa-debugcon (`--debugcon`), if any.
    pub debugcon: Option<DebugconConfig>,
    /// `--no-reboot`: a guest reset ends minivmm (status 0) instead of resetting the VM (as
    /// QEMU's -no-reboot). A reset is a VM reset only with firmware boot.
    pub no_reboot: bool,
    /// The emulated VT-d unit every PCI device sits behind, if any.
    pub iommu: Option<IommuConfig>,
    /// Emulated PCI devices, in slot order.
    pub devices: Vec<DeviceConfig>,
    /// Host PCI functions passed through with VFIO (BB:DD.F, DDDD:BB:DD.F or a sysfs path),
    /// after the emulated devices in slot order.
    pub passthrough: Vec<String>,
    pub seccomp: SeccompMode,
    /// The QMP and monitor sockets (`--qmp`, `--monitor`).
    pub control: crate::qmp::ControlConfig,
}

/// What the vCPUs boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootSource {
    /// `--kernel`: minivmm loads the kernel and enters it in its boot protocol's state.
    Kernel(KernelBoot),
    /// `--bios`: a firmware image mapped read-only below 4 GiB; the boot CPU starts at the
    /// reset vector on a Q35 look-alike platform.
    Firmware(FirmwareBoot),
}

/// Direct kernel boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
}

/// Firmware boot (`--bios PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareBoot {
    pub image: PathBuf,
    /// The guest's physical address width as its CPUID reports it (leaf 0x8000_0008), which
    /// OVMF places its 64-bit PCI window by: filled in from KVM by `Vm::build` (None: 36).
    pub phys_bits: Option<u8>,
}

/// `--debugcon file=PATH|stdio[,iobase=PORT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugconConfig {
    /// None: stdout.
    pub file: Option<PathBuf>,
    pub iobase: u16,
}

/// Guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Bytes of RAM.
    pub size: u64,
    /// Where RAM below 4 GiB ends (the rest continues at 4 GiB).
    pub low_ram_end: u64,
}

/// Smallest guest RAM minivmm boots.
pub const MIN_MEMORY: u64 = 32 << 20;
/// RAM below 4 GiB ends on a 2 MiB boundary (one large page), at least this high.
pub const LOW_RAM_END_ALIGN: u64 = 2 << 20;

impl MemoryConfig {
    /// RAM ranges (start, size): below `low_ram_end`, the rest from 4 GiB.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        if self.size <= self.low_ram_end {
            vec![(layout::RAM_START, self.size)]
        } else {
            vec![
                (layout::RAM_START, self.low_ram_end),
                (layout::RAM_HIGH_START, self.size - self.low_ram_end),
            ]
        }
    }
}

/// Where the guest's COM1 goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialConfig {
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

/// An emulated PCI device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    /// QEMU's edu DMA test device (PCI 1234:11e8).
    Edu,
    /// virtio-rng over virtio-pci (1af4:1044), from the host's getrandom.
    Rng(RngConfig),
    /// virtio-blk over virtio-pci (1af4:1042), over a raw image.
    Disk(DiskConfig),
    /// virtio-net over virtio-pci (1af4:1041), over a tap or passt.
    Net(NetConfig),
}

/// `--rng [iommu_platform=on|off][,ats=on|off]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngConfig {
    /// Offer VIRTIO_F_ACCESS_PLATFORM when the VM has an IOMMU (the device's DMA then goes
    /// through it); off: the device bypasses the IOMMU, as a device with no such feature.
    pub iommu_platform: bool,
    /// `ats=`: the ATS capability; None follows `--iommu device-iotlb` ([`resolve_ats`]).
    pub ats: Option<bool>,
}

/// A virtio-blk disk over a raw image (`--disk`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// The guest may not write (VIRTIO_BLK_F_RO); the image is opened read-only and shared.
    pub read_only: bool,
    /// The GET_ID answer, at most 20 bytes.
    pub serial: Option<String>,
    /// Offer VIRTIO_F_ACCESS_PLATFORM when the VM has an IOMMU (as `--rng`).
    pub iommu_platform: bool,
    /// `ats=` (as `--rng`).
    pub ats: Option<bool>,
}

/// The `ats=on|off` option of a virtio device flag: None when not given.
pub fn ats_option(o: &Options) -> Result<Option<bool>, OptionError> {
    o.get("ats").map(|_| o.on_off("ats", false)).transpose()
}

/// Whether a virtio device gets the ATS capability: as asked, else whenever its DMA goes
/// through a VT-d unit with device-TLB support (`--iommu device-iotlb=on`). Validated
/// first: `ats=on` needs both ([`VmConfig::validate`]).
pub fn resolve_ats(ats: Option<bool>, iommu_platform: bool, iommu: Option<&IommuConfig>) -> bool {
    let possible = iommu_platform && iommu.is_some_and(|c| c.device_iotlb);
    ats.unwrap_or(possible) && possible
}

/// A `--disk` that cannot be made: the image (missing, read-only asked read-write, locked by
/// another VM) or the device's threads. The message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("--disk: {0}")]
    Image(#[from] devices::virtio::block::BackendError),
    #[error("--disk path={}: cannot start the device's threads: {source}", path.display())]
    Threads {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl DiskConfig {
    /// Opens and locks the image and makes the virtio-blk device over it.
    pub fn build(&self) -> Result<devices::virtio::block::Block, DiskError> {
        let image = devices::virtio::block::DiskImage::open(&self.path, self.read_only)?;
        devices::virtio::block::Block::new(image, self.serial.as_deref()).map_err(|source| {
            DiskError::Threads {
                path: self.path.clone(),
                source,
            }
        })
    }
}

/// A virtio-net card (`--net`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub backend: NetBackendConfig,
    pub mac: [u8; 6],
    /// Offer VIRTIO_F_ACCESS_PLATFORM when the VM has an IOMMU (as `--rng`).
    pub iommu_platform: bool,
}

/// Where a `--net` card's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// `tap=NAME`: the tap interface (created if absent, which needs CAP_NET_ADMIN).
    Tap(String),
    /// `user[,hostfwd=...][,passt=PATH]`: a passt minivmm starts ([`crate::passt`]).
    User {
        hostfwd: Vec<crate::passt::HostFwd>,
        passt: Option<PathBuf>,
        /// `mtu=`: given to passt (DHCP option 26) and offered by the card
        /// (VIRTIO_NET_F_MTU); None: neither, the guest's 1500.
        mtu: Option<u16>,
    },
    /// `socket=PATH`: a passt (or any peer of its stream protocol) already listening there.
    Socket(PathBuf),
}

/// A `--net` that cannot be made: the tap (missing and not creatable, in use, permission),
/// passt (not installed, a host port taken), the socket, or the device's thread. The
/// message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("--net tap={tap}: {source}")]
    Tap {
        tap: String,
        source: devices::virtio::net::TapError,
    },
    #[error("--net user: {0}")]
    Passt(#[from] crate::passt::PasstError),
    #[error("--net socket: {0}")]
    Socket(#[from] devices::virtio::net::StreamError),
    #[error("--net: cannot start the device's thread: {0}")]
    Thread(std::io::Error),
}

impl NetConfig {
    /// Opens the backend (a tap; passt started, or its socket connected) and makes the
    /// virtio-net device over it.
    pub fn build(&self) -> Result<devices::virtio::net::Net, NetError> {
        use devices::virtio::net::{NetBackend, Stream, Tap};
        let mut mtu = None;
        let backend: std::sync::Arc<dyn NetBackend> = match &self.backend {
            NetBackendConfig::Tap(name) => {
                std::sync::Arc::new(Tap::open(name).map_err(|source| NetError::Tap {
                    tap: name.clone(),
                    source,
                })?)
            }
            NetBackendConfig::User {
                hostfwd,
                passt,
                mtu: m,
            } => {
                mtu = *m;
                let p = crate::passt::start(passt.as_deref(), hostfwd, *m)?;
                // Dropping the handle neither kills nor reaps: passt exits when the socket
                // closes (with the device, or with minivmm).
                drop(p.child);
                std::sync::Arc::new(Stream::new(p.sock, "passt")?)
            }
            NetBackendConfig::Socket(path) => std::sync::Arc::new(Stream::connect(path)?),
        };
        let net = devices::virtio::net::Net::new(backend, self.mac).map_err(NetError::Thread)?;
        Ok(match mtu {
            Some(m) => net.with_mtu(m),
            None => net,
        })
    }
}

/// Why a configuration cannot make a VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("--vfio behind --iommu needs caching-mode=on: without it the guest's mappings cannot be followed")]
    VfioNeedsCachingMode,
    #[error("{0} PCI devices do not fit on the root bus (at most {max})", max = PCI_SLOTS)]
    TooManyPciDevices(usize),
    #[error("--{0} ats=on needs --iommu device-iotlb=on (ATS is the device side of the VT-d device-TLB)")]
    AtsNeedsDeviceIotlb(&'static str),
    #[error("--{0} ats=on needs iommu_platform=on (a device that bypasses the IOMMU translates nothing)")]
    AtsNeedsIommuPlatform(&'static str),
    #[error("--bios needs RAM below 4 GiB to end at or below {max:#x} (OVMF's ECAM is there), not {0:#x}", max = layout::FW_LOW_RAM_END_MAX)]
    FirmwareLowRam(u64),
}

/// Root-bus slots for devices: slot 0 is the host bridge.
pub const PCI_SLOTS: usize = devices::pci::root::NUM_DEVICES - 1;

impl VmConfig {
    /// Whether the VM boots through firmware (`--bios`): the Q35 look-alike platform.
    pub fn firmware(&self) -> bool {
        matches!(self.boot, BootSource::Firmware(_))
    }

    /// The address map this VM's boot calls for.
    pub fn address_map(&self) -> layout::AddressMap {
        match &self.boot {
            BootSource::Firmware(f) => {
                let ram_end = self
                    .memory
                    .ram_ranges()
                    .iter()
                    .map(|(s, l)| s + l)
                    .max()
                    .unwrap_or(0);
                let bits = f.phys_bits.unwrap_or(layout::FW_PHYS_BITS_MIN);
                layout::AddressMap::firmware(ram_end, bits)
            }
            BootSource::Kernel(_) => layout::AddressMap::direct(),
        }
    }

    /// Checks what no single flag can: combinations, and whether everything fits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.passthrough.is_empty() && self.iommu.is_some_and(|c| !c.caching_mode) {
            return Err(ConfigError::VfioNeedsCachingMode);
        }
        for d in &self.devices {
            let (flag, ats, iommu_platform) = match d {
                DeviceConfig::Rng(r) => ("rng", r.ats, r.iommu_platform),
                DeviceConfig::Disk(d) => ("disk", d.ats, d.iommu_platform),
                _ => continue,
            };
            if ats != Some(true) {
                continue;
            }
            if !self.iommu.is_some_and(|c| c.device_iotlb) {
                return Err(ConfigError::AtsNeedsDeviceIotlb(flag));
            }
            if !iommu_platform {
                return Err(ConfigError::AtsNeedsIommuPlatform(flag));
            }
        }
        let ram = self.memory.ram_ranges();
        let low_end = ram.first().map_or(0, |(s, l)| s + l);
        if self.firmware() && low_end > layout::FW_LOW_RAM_END_MAX {
            return Err(ConfigError::FirmwareLowRam(low_end));
        }
        let pci = self.devices.len() + self.passthrough.len();
        if pci > PCI_SLOTS {
            return Err(ConfigError::TooManyPciDevices(pci));
        }
        Ok(())
    }
}

/// `--memory SIZE` or `--memory size=SIZE,low-ram-end=ADDR`.
pub fn memory_from_options(s: &str) -> Result<MemoryConfig, OptionError> {
    let o = Options::parse("memory", s, &["size", "low-ram-end"], true)?;
    let size_text = match (o.kind(), o.get("size")) {
        (Some(_), Some(_)) => {
            return Err(o.invalid("size", s, "give the size once, bare or as size=SIZE"))
        }
        (Some(v), None) | (None, Some(v)) => v,
        (None, None) => return Err(o.invalid("size", "", "expected a size such as 512M or 2G")),
    };
    let size = match parse_size(size_text) {
        Some(n) if n < MIN_MEMORY => {
            return Err(o.invalid("size", size_text, "at least 32M of RAM is needed"))
        }
        Some(n) if n % 4096 != 0 => {
            return Err(o.invalid("size", size_text, "expected a multiple of 4 KiB"))
        }
        Some(n) => n,
        None => {
            return Err(o.invalid(
                "size",
                size_text,
                "expected a size such as 512M or 2G (K, M, G suffixes)",
            ))
        }
    };
    let low_ram_end = match o.get("low-ram-end") {
        None => layout::LOW_RAM_END_MAX,
        Some(v) => match parse_size(v) {
            Some(n)
                if n % LOW_RAM_END_ALIGN == 0
                    && (MIN_MEMORY..=layout::LOW_RAM_END_MAX).contains(&n) =>
            {
                n
            }
            _ => {
                return Err(o.invalid(
                    "low-ram-end",
                    v,
                    &format!(
                        "expected a multiple of 2M from 32M to {:#x}",
                        layout::LOW_RAM_END_MAX
                    ),
                ))
            }
        },
    };
    Ok(MemoryConfig { size, low_ram_end })
}

/// `--serial stdio`, `--serial off` or `--serial file=PATH`.
pub fn serial_from_options(s: &str) -> Result<SerialConfig, OptionError> {
    let o = Options::parse("serial", s, &["file"], true)?;
    const EXPECTED: &str = "expected stdio, file=PATH or off";
    match (o.kind(), o.get("file")) {
        (Some("stdio"), None) => Ok(SerialConfig::Stdio),
        (Some("off"), None) => Ok(SerialConfig::Off),
        (None, Some(p)) if !p.is_empty() => Ok(SerialConfig::File(p.into())),
        (None, Some(p)) => Err(o.invalid("file", p, "expected a path")),
        _ => Err(o.invalid_kind(s, EXPECTED)),
    }
}

/// `--debug-exit [iobase=PORT,iosize=N]`.
pub fn debug_exit_from_options(s: &str) -> Result<DebugExitConfig, OptionError> {
    let o = Options::parse("debug-exit", s, &["iobase", "iosize"], false)?;
    let iobase = o.number("iobase", layout::DEBUG_EXIT_PORT.into(), 0..=0xffff)? as u16;
    let iosize = o.number("iosize", layout::DEBUG_EXIT_SIZE.into(), 1..=8)? as u16;
    if u32::from(iobase) + u32::from(iosize) > 0x1_0000 {
        return Err(o.invalid(
            "iosize",
            &iosize.to_string(),
            &format!("the ports from {iobase:#x} pass 0xffff"),
        ));
    }
    Ok(DebugExitConfig { iobase, iosize })
}

/// `--debugcon file=PATH|stdio[,iobase=PORT]` (QEMU's `-debugcon` with
/// `-global isa-debugcon.iobase=`; the default port is OVMF's, 0x402).
pub fn debugcon_from_options(s: &str) -> Result<DebugconConfig, OptionError> {
    let o = Options::parse("debugcon", s, &["file", "iobase"], true)?;
    let file = match (o.kind(), o.get("file")) {
        (Some("stdio"), None) => None,
        (None, Some(p)) if !p.is_empty() => Some(PathBuf::from(p)),
        (None, Some(p)) => return Err(o.invalid("file", p, "expected a path")),
        _ => return Err(o.invalid_kind(s, "expected file=PATH or stdio")),
    };
    let iobase = o.number(
        "iobase",
        devices::debugcon::DEBUGCON_DEFAULT_PORT.into(),
        0..=0xffff,
    )? as u16;
    Ok(DebugconConfig { file, iobase })
}

/// `--iommu caching-mode=`: CAP.CM (VT-d spec 6.1) forced on or off, or (`auto`, the
/// default) on exactly when a `--vfio` device needs the guest's mappings shadowed. Off, a
/// guest does not invalidate when it maps (not-present to present), which halves the
/// invalidations emulated devices cost it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachingMode {
    Auto,
    On,
    Off,
}

impl CachingMode {
    /// CAP.CM for a VM with (`vfio`) or without passed-through devices.
    pub fn resolve(self, vfio: bool) -> bool {
        match self {
            CachingMode::Auto => vfio,
            CachingMode::On => true,
            CachingMode::Off => false,
        }
    }
}

/// `--iommu [intremap=on|off,caching-mode=auto|on|off,aw-bits=39|48,device-iotlb=on|off,x2apic=on|off]`,
/// for a VM with (`vfio`) or without `--vfio` devices (which `caching-mode=auto` follows).
pub fn iommu_from_options(s: &str, vfio: bool) -> Result<IommuConfig, OptionError> {
    let o = Options::parse(
        "iommu",
        s,
        &[
            "intremap",
            "caching-mode",
            "aw-bits",
            "device-iotlb",
            "x2apic",
            "eim",
        ],
        false,
    )?;
    let d = IommuConfig::default();
    if o.get("x2apic").is_some() && o.get("eim").is_some() {
        return Err(o.invalid("eim", "", "eim is another name for x2apic: give one"));
    }
    let x2apic = match o.get("eim") {
        Some(_) => o.on_off("eim", d.x2apic)?,
        None => o.on_off("x2apic", d.x2apic)?,
    };
    Ok(IommuConfig {
        aw_bits: o.choice("aw-bits", d.aw_bits, &[("39", 39), ("48", 48)])?,
        interrupt_remapping: o.on_off("intremap", d.interrupt_remapping)?,
        caching_mode: o
            .choice(
                "caching-mode",
                CachingMode::Auto,
                &[
                    ("auto", CachingMode::Auto),
                    ("on", CachingMode::On),
                    ("off", CachingMode::Off),
                ],
            )?
            .resolve(vfio),
        device_iotlb: o.on_off("device-iotlb", d.device_iotlb)?,
        x2apic,
    })
}

/// The longest `--disk serial=`: the virtio-blk device ID is 20 bytes (virtio 1.2 section
/// 5.2.6, VIRTIO_BLK_ID_BYTES).
pub const DISK_SERIAL_MAX: usize = 20;

/// `--disk path=FILE[,readonly=on][,serial=ID][,iommu_platform=on|off][,ats=on|off]`. Whether the file opens (exists, is writable
/// when asked read-write, is not locked by another VM) is checked when the device is made.
pub fn disk_from_options(s: &str) -> Result<DiskConfig, OptionError> {
    let o = Options::parse(
        "disk",
        s,
        &["path", "readonly", "serial", "iommu_platform", "ats"],
        false,
    )?;
    let path = match o.get("path") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        Some(p) => return Err(o.invalid("path", p, "expected the path of a raw image")),
        None => return Err(o.invalid("path", "", "path=FILE is required")),
    };
    let serial = match o.get("serial") {
        Some(id) if id.len() > DISK_SERIAL_MAX || !id.is_ascii() => {
            return Err(o.invalid("serial", id, "expected at most 20 ASCII characters"))
        }
        Some(id) => Some(id.to_string()),
        None => None,
    };
    Ok(DiskConfig {
        path,
        read_only: o.on_off("readonly", false)?,
        serial,
        iommu_platform: o.on_off("iommu_platform", true)?,
        ats: ats_option(&o)?,
    })
}

/// `--device KIND[,OPTIONS]`.
pub fn device_from_options(s: &str) -> Result<DeviceConfig, OptionError> {
    let o = Options::parse("device", s, &[], true)?;
    match o.kind() {
        Some("edu") => Ok(DeviceConfig::Edu),
        _ => Err(o.invalid_kind(s, "expected a device kind (known: edu)")),
    }
}

/// `--rng [iommu_platform=on|off][,ats=on|off]`.
pub fn rng_from_options(s: &str) -> Result<RngConfig, OptionError> {
    let o = Options::parse("rng", s, &["iommu_platform", "ats"], false)?;
    Ok(RngConfig {
        iommu_platform: o.on_off("iommu_platform", true)?,
        ats: ats_option(&o)?,
    })
}

/// The MAC of the `index`th `--net` without `mac=`: QEMU's default 52:54:00:12:34:56 (a
/// locally administered unicast address), the last byte counting up per card.
pub fn default_mac(index: usize) -> [u8; 6] {
    [
        0x52,
        0x54,
        0x00,
        0x12,
        0x34,
        0x56u8.wrapping_add(index as u8),
    ]
}

/// `XX:XX:XX:XX:XX:XX`, a unicast address other than all zeros.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    let unicast = mac[0] & 1 == 0 && mac != [0; 6];
    (parts.next().is_none() && unicast).then_some(mac)
}

/// `--net tap=NAME|user[,hostfwd=...]...[,passt=PATH]|socket=PATH[,mac=MAC]
/// [,iommu_platform=on|off]`, the `index`th `--net` (which picks the default MAC). Whether
/// the tap opens, passt starts or the socket connects is checked when the device is made.
pub fn net_from_options(s: &str, index: usize) -> Result<NetConfig, OptionError> {
    // `hostfwd=` may repeat: taken out before the one-of-each grammar sees the rest.
    let mut hostfwd = Vec::new();
    let mut rest = Vec::new();
    for item in s.split(',') {
        match item.strip_prefix("hostfwd=") {
            Some(v) => hostfwd.push(v),
            None => rest.push(item),
        }
    }
    let rest = rest.join(",");
    let o = Options::parse(
        "net",
        &rest,
        &["tap", "socket", "passt", "mtu", "mac", "iommu_platform"],
        true,
    )?;
    let user = match o.kind() {
        None => false,
        Some("user") => true,
        Some(k) => return Err(o.invalid_kind(k, "expected user, tap=NAME or socket=PATH")),
    };
    let hostfwd = hostfwd
        .into_iter()
        .map(|v| crate::passt::HostFwd::parse(v).map_err(|e| o.invalid("hostfwd", v, &e)))
        .collect::<Result<Vec<_>, _>>()?;
    let user_only = |key: &'static str, given: bool| {
        if given && !user {
            Err(o.invalid(key, "", "only with --net user"))
        } else {
            Ok(())
        }
    };
    user_only("hostfwd", !hostfwd.is_empty())?;
    user_only("passt", o.get("passt").is_some())?;
    user_only("mtu", o.get("mtu").is_some())?;
    let max = u64::from(devices::virtio::net::MAX_MTU);
    let mtu = match o.get("mtu") {
        Some(_) => Some(o.number("mtu", 1500, 68..=max)? as u16),
        None => None,
    };
    let backend = match (user, o.get("tap"), o.get("socket")) {
        (true, None, None) => NetBackendConfig::User {
            hostfwd,
            passt: o.get("passt").map(PathBuf::from),
            mtu,
        },
        (false, Some(t), None) => {
            if t.is_empty() || t.len() >= devices::virtio::net::tap::IFNAMSIZ {
                return Err(o.invalid("tap", t, "expected an interface name of 1 to 15 bytes"));
            }
            NetBackendConfig::Tap(t.to_string())
        }
        (false, None, Some(p)) if !p.is_empty() => NetBackendConfig::Socket(PathBuf::from(p)),
        (false, None, Some(p)) => return Err(o.invalid("socket", p, "expected a path")),
        (false, None, None) => {
            return Err(o.invalid("tap", "", "tap=NAME, user or socket=PATH is required"))
        }
        _ => return Err(o.invalid_kind(s, "give one of user, tap=NAME and socket=PATH")),
    };
    let mac = match o.get("mac") {
        None => default_mac(index),
        Some(m) => parse_mac(m).ok_or_else(|| {
            o.invalid(
                "mac",
                m,
                "expected a unicast MAC address such as 52:54:00:12:34:56",
            )
        })?,
    };
    Ok(NetConfig {
        backend,
        mac,
        iommu_platform: o.on_off("iommu_platform", true)?,
    })
}

#[cfg(test)]
mod tests;
