//! Finding a host PCI device for passthrough and checking, before anything is opened, that
//! VFIO can take it: it exists, the host has an IOMMU, it is bound to vfio-pci, its IOMMU group
//! is viable and its group file may be opened. Each failure is one clear sentence.

use std::fs;
use std::path::{Path, PathBuf};

/// Why a device cannot be passed through.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostDeviceError {
    #[error("{0:?} is not a PCI address: expected BB:DD.F, DDDD:BB:DD.F or a sysfs device path")]
    BadAddress(String),
    #[error("PCI device {0} does not exist on this host")]
    NoSuchDevice(String),
    #[error("PCI device {dev} is bound to {driver}, not vfio-pci; rebind it: echo {dev} > /sys/bus/pci/devices/{dev}/driver/unbind; echo vfio-pci > /sys/bus/pci/devices/{dev}/driver_override; echo {dev} > /sys/bus/pci/drivers_probe")]
    WrongDriver { dev: String, driver: String },
    #[error("PCI device {0} has no driver; bind it to vfio-pci: echo vfio-pci > /sys/bus/pci/devices/{0}/driver_override; echo {0} > /sys/bus/pci/drivers_probe")]
    NoDriver(String),
    #[error("PCI device {0} is in no IOMMU group: this host has no IOMMU enabled (turn on VT-d/AMD-Vi in firmware and boot with intel_iommu=on or amd_iommu=on)")]
    NoIommu(String),
    #[error("IOMMU group {group} of {dev} is not viable: {others} must be bound to vfio-pci (or unbound) too")]
    GroupNotViable {
        dev: String,
        group: u32,
        others: String,
    },
    #[error("No permission to open /dev/vfio/{group} (for {dev}): run as root or give this user the group file")]
    GroupPermission { dev: String, group: u32 },
    #[error("Cannot open /dev/vfio/{group} (for {dev}): {err}")]
    GroupOpen {
        dev: String,
        group: u32,
        err: String,
    },
}

/// A host PCI device that passed the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// Full address, `DDDD:BB:DD.F`.
    pub name: String,
    /// `/sys/bus/pci/devices/DDDD:BB:DD.F`.
    pub sysfs: PathBuf,
    pub group: u32,
}

/// Normalises `b3:00.0`, `0000:b3:00.0` or a sysfs path to `DDDD:BB:DD.F`.
pub fn normalise(spec: &str) -> Result<String, HostDeviceError> {
    let bad = || HostDeviceError::BadAddress(spec.to_string());
    let last = Path::new(spec.trim_end_matches('/'))
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(bad)?;
    let parts: Vec<&str> = last.split(':').collect();
    let (seg, bus, devfn) = match parts.as_slice() {
        [b, df] => ("0000", *b, *df),
        [s, b, df] => (*s, *b, *df),
        _ => return Err(bad()),
    };
    let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, max: u32| {
        u32::from_str_radix(s, 16)
            .ok()
            .filter(|v| *v <= max && !s.is_empty())
    };
    match (
        hex(seg, 0xffff),
        hex(bus, 0xff),
        hex(dev, 0x1f),
        hex(func, 7),
    ) {
        (Some(s), Some(b), Some(d), Some(f)) => Ok(format!("{s:04x}:{b:02x}:{d:02x}.{f}")),
        _ => Err(bad()),
    }
}

fn link_name(p: &Path) -> Option<String> {
    fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

/// Checks `spec` under the sysfs root `sys` (normally `/sys`) and `dev_vfio` (normally
/// `/dev/vfio`).
pub fn check_at(spec: &str, sys: &Path, dev_vfio: &Path) -> Result<HostDevice, HostDeviceError> {
    let name = normalise(spec)?;
    let sysfs = sys.join("bus/pci/devices").join(&name);
    if !sysfs.exists() {
        return Err(HostDeviceError::NoSuchDevice(name));
    }
    // No IOMMU first: without one, no driver binding can help.
    let group = link_name(&sysfs.join("iommu_group"))
        .and_then(|g| g.parse::<u32>().ok())
        .ok_or_else(|| HostDeviceError::NoIommu(name.clone()))?;
    match link_name(&sysfs.join("driver")) {
        None => return Err(HostDeviceError::NoDriver(name)),
        Some(d) if d != "vfio-pci" => {
            return Err(HostDeviceError::WrongDriver {
                dev: name,
                driver: d,
            })
        }
        Some(_) => {}
    }
    let members = sys.join(format!("kernel/iommu_groups/{group}/devices"));
    let mut others = Vec::new();
    if let Ok(entries) = fs::read_dir(&members) {
        for e in entries.flatten() {
            let other = e.file_name().to_string_lossy().into_owned();
            if other == name {
                continue;
            }
            // Bridges may stay with pcieport; endpoints must be with vfio-pci or driverless.
            match link_name(&e.path().join("driver")) {
                None => {}
                Some(d) if d == "vfio-pci" || d == "pcieport" => {}
                Some(d) => others.push(format!("{other} (driver {d})")),
            }
        }
    }
    if !others.is_empty() {
        others.sort();
        return Err(HostDeviceError::GroupNotViable {
            dev: name,
            group,
            others: others.join(", "),
        });
    }
    let file = dev_vfio.join(group.to_string());
    if let Err(e) = fs::OpenOptions::new().read(true).write(true).open(&file) {
        return Err(match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                HostDeviceError::GroupPermission { dev: name, group }
            }
            _ => HostDeviceError::GroupOpen {
                dev: name,
                group,
                err: e.to_string(),
            },
        });
    }
    Ok(HostDevice { name, sysfs, group })
}

/// Checks `spec` on this host.
pub fn check(spec: &str) -> Result<HostDevice, HostDeviceError> {
    check_at(spec, Path::new("/sys"), Path::new("/dev/vfio"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn addresses_normalise() {
        assert_eq!(normalise("b3:00.0").unwrap(), "0000:b3:00.0");
        assert_eq!(normalise("0000:B3:1f.7").unwrap(), "0000:b3:1f.7");
        assert_eq!(
            normalise("/sys/bus/pci/devices/0000:00:01.0/").unwrap(),
            "0000:00:01.0"
        );
        for bad in [
            "", "b3", "b3:20.0", "b3:00.8", "zz:00.0", "1:2:3:4", "b3:.0",
        ] {
            assert!(normalise(bad).is_err(), "{bad}");
        }
    }

    /// A fake sysfs: device `dev` with `driver` and group 7 holding `others` (name, driver).
    fn fake(driver: Option<&str>, group: bool, others: &[(&str, Option<&str>)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "minivmm-host-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let devs = root.join("sys/bus/pci/devices");
        let drivers = root.join("sys/bus/pci/drivers");
        let grp = root.join("sys/kernel/iommu_groups/7/devices");
        fs::create_dir_all(&grp).unwrap();
        fs::create_dir_all(root.join("dev/vfio")).unwrap();
        fs::write(root.join("dev/vfio/7"), b"").unwrap();
        let mut all = vec![("0000:00:01.0", driver)];
        all.extend_from_slice(others);
        for (name, drv) in all {
            let d = devs.join(name);
            fs::create_dir_all(&d).unwrap();
            if let Some(drv) = drv {
                fs::create_dir_all(drivers.join(drv)).unwrap();
                symlink(drivers.join(drv), d.join("driver")).unwrap();
            }
            if group {
                symlink(
                    root.join("sys/kernel/iommu_groups/7"),
                    d.join("iommu_group"),
                )
                .unwrap();
                symlink(&d, grp.join(name)).unwrap();
            }
        }
        root
    }

    fn check_fake(root: &Path, spec: &str) -> Result<HostDevice, HostDeviceError> {
        check_at(spec, &root.join("sys"), &root.join("dev/vfio"))
    }

    #[test]
    fn host_device_checks_in_order() {
        let ok = fake(Some("vfio-pci"), true, &[("0000:00:01.1", None)]);
        assert_eq!(check_fake(&ok, "00:01.0").unwrap().group, 7);
        assert_eq!(
            check_fake(&ok, "00:02.0"),
            Err(HostDeviceError::NoSuchDevice("0000:00:02.0".into()))
        );
        let e1000 = fake(Some("e1000e"), true, &[]);
        let msg = check_fake(&e1000, "00:01.0").unwrap_err().to_string();
        assert!(msg.contains("bound to e1000e, not vfio-pci"), "{msg}");
        assert!(msg.contains("driver_override"), "{msg}");
        let none = fake(None, true, &[]);
        assert!(matches!(
            check_fake(&none, "00:01.0"),
            Err(HostDeviceError::NoDriver(_))
        ));
        let no_iommu = fake(Some("vfio-pci"), false, &[]);
        assert!(matches!(
            check_fake(&no_iommu, "00:01.0"),
            Err(HostDeviceError::NoIommu(_))
        ));
        let no_iommu_native = fake(Some("e1000e"), false, &[]);
        assert!(
            matches!(
                check_fake(&no_iommu_native, "00:01.0"),
                Err(HostDeviceError::NoIommu(_))
            ),
            "no IOMMU is reported before the driver binding"
        );
        let shared = fake(
            Some("vfio-pci"),
            true,
            &[("0000:00:01.1", Some("snd_hda_intel"))],
        );
        let msg = check_fake(&shared, "00:01.0").unwrap_err().to_string();
        assert!(
            msg.contains("group 7") && msg.contains("0000:00:01.1 (driver snd_hda_intel)"),
            "{msg}"
        );
        let missing_file = fake(Some("vfio-pci"), true, &[]);
        fs::remove_file(missing_file.join("dev/vfio/7")).unwrap();
        assert!(matches!(
            check_fake(&missing_file, "00:01.0"),
            Err(HostDeviceError::GroupOpen { .. })
        ));
        for r in [
            ok,
            e1000,
            none,
            no_iommu,
            no_iommu_native,
            shared,
            missing_file,
        ] {
            let _ = fs::remove_dir_all(r);
        }
    }
}
