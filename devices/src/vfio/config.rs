//! The guest's view of a passed-through function's configuration space. The kernel's
//! vfio-pci already virtualises the header (BARs, command bits, interrupt line) and filters
//! what the device must not see; on top of that the VMM keeps the MSI and MSI-X capabilities
//! itself (the host kernel owns the device's real ones), hides the expansion ROM, and walks
//! the capability list once so it can present it unchanged around them.

use super::function::{HostFunction, CONFIG_REGION};
use crate::pci::msi::{MsiCap, MsiChange};
use crate::pci::msix::{MsixCap, MsixChange};
use crate::pci::regs::{
    CAPABILITIES as REG_CAPABILITIES, CAP_ID_MSI, CAP_ID_MSIX, CONFIG_SPACE, FIRST_CAPABILITY,
    INTERRUPT_PIN as REG_INTERRUPT_PIN, ROM as REG_ROM, STATUS as REG_STATUS,
};

/// Status register low byte: capabilities list.
const STATUS_CAP_LIST: u8 = crate::pci::regs::STATUS_CAP_LIST as u8;
/// Longest capability list a walk follows (a malformed device may loop).
const MAX_CAPS: usize = 48;

/// What a configuration write changed in the virtual capabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigChange {
    pub msi: MsiChange,
    pub msix: MsixChange,
}

/// The virtualised parts of configuration space.
#[derive(Debug)]
pub struct VirtualConfig {
    pub msi: Option<MsiCap>,
    pub msix: Option<MsixCap>,
    first_capability: u8,
    /// Whether the guest may see an interrupt pin (INTx is wired).
    intx: bool,
}

fn read_u8(host: &dyn HostFunction, offset: usize) -> u8 {
    let mut b = [0xffu8; 1];
    host.read(CONFIG_REGION, offset as u64, &mut b);
    b[0]
}

fn read_u16(host: &dyn HostFunction, offset: usize) -> u16 {
    let mut b = [0xffu8; 2];
    host.read(CONFIG_REGION, offset as u64, &mut b);
    u16::from_le_bytes(b)
}

fn read_u32(host: &dyn HostFunction, offset: usize) -> u32 {
    let mut b = [0xffu8; 4];
    host.read(CONFIG_REGION, offset as u64, &mut b);
    u32::from_le_bytes(b)
}

impl VirtualConfig {
    /// Whether the guest may see the interrupt pin (INTx is wired).
    pub fn set_intx(&mut self, wired: bool) {
        self.intx = wired;
    }

    /// Walks the device's capability list (bounded, so a looping list cannot hang us) and
    /// takes over its MSI and MSI-X capabilities. `intx` says whether INTx is wired.
    pub fn scan(host: &dyn HostFunction, intx: bool) -> Self {
        let mut cfg = VirtualConfig {
            msi: None,
            msix: None,
            first_capability: 0,
            intx,
        };
        if read_u8(host, REG_STATUS) & STATUS_CAP_LIST == 0 {
            return cfg;
        }
        cfg.first_capability = read_u8(host, REG_CAPABILITIES) & 0xfc;
        let mut ptr = cfg.first_capability;
        for _ in 0..MAX_CAPS {
            if usize::from(ptr) < FIRST_CAPABILITY {
                break;
            }
            let off = usize::from(ptr);
            match read_u8(host, off) {
                CAP_ID_MSI if cfg.msi.is_none() => {
                    cfg.msi = Some(MsiCap::new(off, read_u16(host, off + 2)));
                }
                CAP_ID_MSIX if cfg.msix.is_none() => {
                    cfg.msix = Some(MsixCap::new(
                        off,
                        read_u16(host, off + 2),
                        read_u32(host, off + 4),
                        read_u32(host, off + 8),
                    ));
                }
                _ => {}
            }
            ptr = read_u8(host, off + 1) & 0xfc;
        }
        cfg
    }

    /// Whether the guest's byte at `offset` is kept here rather than on the device.
    fn is_virtual(&self, offset: usize) -> bool {
        (REG_ROM..REG_ROM + 4).contains(&offset)
            || offset == REG_CAPABILITIES
            || offset == REG_INTERRUPT_PIN
            || self.msi.as_ref().is_some_and(|m| m.contains(offset))
            || self.msix.as_ref().is_some_and(|m| m.contains(offset))
    }

    /// The guest's view of byte `offset`, given the device's `physical` byte and the MSI
    /// pending bits.
    pub fn read_byte(&self, offset: usize, physical: u8, msi_pending: u32) -> u8 {
        match offset {
            // The expansion ROM is hidden: the BAR reads as unimplemented.
            _ if (REG_ROM..REG_ROM + 4).contains(&offset) => 0,
            REG_CAPABILITIES => self.first_capability,
            REG_INTERRUPT_PIN if !self.intx => 0,
            _ => match (&self.msi, &self.msix) {
                (Some(m), _) if m.contains(offset) => m.read_byte(offset, physical, msi_pending),
                (_, Some(m)) if m.contains(offset) => m.read_config_byte(offset, physical),
                _ => physical,
            },
        }
    }

    /// Applies a guest write of `data` at `offset`: virtual bytes change here, the rest is
    /// returned as (offset, bytes) runs to forward to the device.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> (ConfigChange, Vec<(usize, Vec<u8>)>) {
        let mut change = ConfigChange::default();
        let mut forward: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, &v) in data.iter().enumerate() {
            let off = offset + i;
            if off >= CONFIG_SPACE {
                break;
            }
            if !self.is_virtual(off) {
                match forward.last_mut() {
                    Some((start, bytes)) if *start + bytes.len() == off => bytes.push(v),
                    _ => forward.push((off, vec![v])),
                }
                continue;
            }
            if let Some(m) = self.msi.as_mut().filter(|m| m.contains(off)) {
                change.msi |= m.write_byte(off, v);
            } else if let Some(m) = self.msix.as_mut().filter(|m| m.contains(off)) {
                let c = m.write_config_byte(off, v);
                change.msix.control |= c.control;
            }
            // ROM BAR, capabilities pointer and interrupt pin: read-only here.
        }
        (change, forward)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::fake::FakeFunction;

    /// A config space with the capability chain 0x40 (PM) -> 0x50 (MSI) -> 0x70 (MSI-X).
    pub fn config_with_caps() -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..4].copy_from_slice(&0x11e8_1234u32.to_le_bytes());
        c[REG_STATUS] = STATUS_CAP_LIST;
        c[REG_CAPABILITIES] = 0x40;
        c[REG_INTERRUPT_PIN] = 1;
        c[0x30..0x34].copy_from_slice(&0xfffe_0001u32.to_le_bytes());
        c[0x40] = 0x01;
        c[0x41] = 0x50;
        c[0x50] = CAP_ID_MSI;
        c[0x51] = 0x70;
        c[0x52] = 0x80; // 64-bit
        c[0x70] = CAP_ID_MSIX;
        c[0x71] = 0x00;
        c[0x72] = 0x03; // 4 entries
        c[0x74..0x78].copy_from_slice(&0x2000u32.to_le_bytes()); // table: BAR 0 @ 0x2000
        c[0x78..0x7c].copy_from_slice(&0x3000u32.to_le_bytes()); // PBA: BAR 0 @ 0x3000
        c
    }

    fn scan(c: Vec<u8>, intx: bool) -> VirtualConfig {
        VirtualConfig::scan(&FakeFunction::with_config(c), intx)
    }

    #[test]
    fn scan_finds_msi_and_msix_and_keeps_the_chain() {
        let v = scan(config_with_caps(), true);
        assert_eq!(v.msi.as_ref().map(|m| m.offset()), Some(0x50));
        let x = v.msix.as_ref().unwrap();
        assert_eq!((x.offset(), x.vectors()), (0x70, 4));
        assert_eq!(x.table().offset, 0x2000);
        assert_eq!(v.read_byte(REG_CAPABILITIES, 0x40, 0), 0x40);
        assert_eq!(
            v.read_byte(0x51, 0x70, 0),
            0x70,
            "next pointers stay the device's"
        );
        assert_eq!(v.read_byte(0x30, 0x01, 0), 0, "the ROM BAR is hidden");
        assert_eq!(v.read_byte(REG_INTERRUPT_PIN, 1, 0), 1);
        assert_eq!(
            scan(config_with_caps(), false).read_byte(REG_INTERRUPT_PIN, 1, 0),
            0
        );
    }

    #[test]
    fn scan_stops_on_a_looping_list_and_without_cap_list_bit() {
        let mut c = config_with_caps();
        c[0x71] = 0x50; // MSI-X points back at MSI
        c[0x51] = 0x70;
        let v = scan(c.clone(), true);
        assert!(v.msi.is_some() && v.msix.is_some());
        c[REG_STATUS] = 0;
        let v = scan(c, true);
        assert!(v.msi.is_none() && v.msix.is_none());
        assert_eq!(v.read_byte(REG_CAPABILITIES, 0x40, 0), 0);
    }

    #[test]
    fn writes_split_into_virtual_and_forwarded_bytes() {
        let mut v = scan(config_with_caps(), true);
        // Command (forwarded) and a write across the ROM BAR (dropped).
        let (c, fwd) = v.write(0x04, &[0x06, 0x00]);
        assert_eq!(
            (c, fwd),
            (ConfigChange::default(), vec![(0x04, vec![0x06, 0x00])])
        );
        let (_, fwd) = v.write(0x2e, &[1, 2, 3, 4]);
        assert_eq!(fwd, vec![(0x2e, vec![1, 2])]);
        // MSI enable and MSI-X enable are changes, never forwarded.
        let (c, fwd) = v.write(0x52, &[0x81]);
        assert!(c.msi.enable && fwd.is_empty());
        let (c, fwd) = v.write(0x72, &[0x03, 0x80]);
        assert!(c.msix.control && fwd.is_empty());
        assert!(v.msix.as_ref().unwrap().enabled());
        let (_, fwd) = v.write(0xffe, &[1, 2, 3, 4]);
        assert_eq!(fwd, vec![(0xffe, vec![1, 2])], "nothing past 4 KiB");
    }
}
