//! Small value types shared by the whole workspace: PCI requester ids and I/O virtual addresses.

use std::fmt;
use std::str::FromStr;

/// A PCI requester id (bus/device/function), the "source-id" of VT-d spec section 3.4.1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf(u16);

/// Serialised as its text form, `bb:dd.f`.
impl serde::Serialize for Bdf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Bdf {
    /// Builds a requester id; `device` is masked to 5 bits and `function` to 3 bits.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Bdf(((bus as u16) << 8) | (((device & 0x1f) as u16) << 3) | ((function & 0x7) as u16))
    }

    /// Builds a requester id from its 16-bit encoding.
    pub const fn from_raw(raw: u16) -> Self {
        Bdf(raw)
    }

    /// The 16-bit encoding: bus in bits 15:8, device in 7:3, function in 2:0.
    pub const fn raw(self) -> u16 {
        self.0
    }

    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }

    pub const fn device(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }

    pub const fn function(self) -> u8 {
        (self.0 & 0x7) as u8
    }

    /// Device and function together (bits 7:0), the index into a context table.
    pub const fn devfn(self) -> u8 {
        (self.0 & 0xff) as u8
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus(),
            self.device(),
            self.function()
        )
    }
}

/// Why a string is not a PCI address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Invalid PCI address {0:?}: expected [DDDD:]BB:DD.F in hex")]
pub struct BdfParseError(pub String);

impl FromStr for Bdf {
    type Err = BdfParseError;

    /// Parses `BB:DD.F` or `DDDD:BB:DD.F` (hex; only PCI segment 0 is accepted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BdfParseError(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        let (bus, devfn) = match parts.as_slice() {
            [bus, devfn] => (*bus, *devfn),
            [seg, bus, devfn] => {
                if u16::from_str_radix(seg, 16).map_err(|_| err())? != 0 {
                    return Err(err());
                }
                (*bus, *devfn)
            }
            _ => return Err(err()),
        };
        let (dev, func) = devfn.split_once('.').ok_or_else(err)?;
        let bus = u8::from_str_radix(bus, 16).map_err(|_| err())?;
        let dev = u8::from_str_radix(dev, 16).map_err(|_| err())?;
        let func = u8::from_str_radix(func, 16).map_err(|_| err())?;
        if dev > 0x1f || func > 7 {
            return Err(err());
        }
        Ok(Bdf::new(bus, dev, func))
    }
}

/// An I/O virtual address: the address a device puts on the bus before remapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_fields_round_trip() {
        let b = Bdf::new(0xb3, 0x1f, 7);
        assert_eq!((b.bus(), b.device(), b.function()), (0xb3, 0x1f, 7));
        assert_eq!(b.raw(), 0xb3ff);
        assert_eq!(b.to_string(), "b3:1f.7");
    }

    #[test]
    fn bdf_parse_short_and_long_forms() {
        assert_eq!("b3:00.0".parse::<Bdf>(), Ok(Bdf::new(0xb3, 0, 0)));
        assert_eq!("0000:00:03.1".parse::<Bdf>(), Ok(Bdf::new(0, 3, 1)));
    }

    #[test]
    fn bdf_parse_rejects_garbage() {
        for s in [
            "",
            "b3",
            "b3:00",
            "b3:20.0",
            "b3:00.8",
            "0001:00:00.0",
            "zz:00.0",
            "1:2:3:4",
        ] {
            assert!(s.parse::<Bdf>().is_err(), "{s}");
        }
    }
}
