//! Queued-invalidation descriptors (VT-d spec 6.5.2), 128-bit format: decoding with the
//! reserved-field checks that make hardware report an invalidation queue error (IQE).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::Bdf;

/// Descriptor types (bits 3:0; 11:9 must be zero in 128-bit mode).
const TYPE_CONTEXT_CACHE: u64 = 0x1;
const TYPE_IOTLB: u64 = 0x2;
const TYPE_DEVICE_IOTLB: u64 = 0x3;
const TYPE_IEC: u64 = 0x4;
const TYPE_WAIT: u64 = 0x5;
const TYPE_HIGH_MASK: u64 = 0x7 << 9;
/// Invalidation wait descriptor fields: IF (4), SW (5), FN (6), status data (63:32).
const WAIT_IF: u64 = 1 << 4;
const WAIT_SW: u64 = 1 << 5;
const WAIT_FN: u64 = 1 << 6;
/// Device-TLB invalidate descriptor (6.5.2.5): reserved bits 8:4, 31:21 and 51:48 of the
/// low qword (PFSID is 15:12 and 63:52, MIP 20:16, SID 47:32); 11:1 of the high qword
/// (S is bit 0, ADDR 63:12).
const DEVICE_IOTLB_RESERVED_LO: u64 = 0x000f_0000_ffe0_01f0;
const DEVICE_IOTLB_RESERVED_HI: u64 = 0xffe;
const DEVICE_IOTLB_SIZE: u64 = 1;

/// Bytes per descriptor in 128-bit mode (6.5.2).
pub const DESCRIPTOR_SIZE: u64 = 16;

/// Why a descriptor could not be processed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("Descriptor at {0:#x} is outside guest memory")]
    Fetch(u64),
    #[error("Invalid descriptor type {0:#x}")]
    BadType(u64),
    #[error("Reserved bits set in a {0} descriptor")]
    Reserved(&'static str),
    #[error("{0} descriptor without the capability it needs")]
    Unsupported(&'static str),
    #[error("Status write to {0:#x} failed")]
    StatusWrite(u64),
    #[error("Queue tail {0} is beyond the queue")]
    BeyondQueue(u64),
    #[error("Descriptor {0} of the queue at {1:#x} lies past the top of the address space")]
    AddressOverflow(u64, u64),
}

/// A decoded descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// Granularity 1 global, 2 domain, 3 device (with function mask FM).
    ContextCache {
        granularity: u64,
        did: u16,
        sid: Bdf,
        fm: u64,
    },
    /// Granularity 1 global, 2 domain, 3 page (ADDR, AM).
    Iotlb {
        granularity: u64,
        did: u16,
        addr: u64,
        am: u64,
    },
    /// Device-TLB invalidation of requester `sid` (6.5.2.5), the range already decoded.
    DeviceIotlb {
        sid: Bdf,
        /// Max Invalidations Pending (the device's ATS queue depth, 0 = 32).
        max_invs_pend: u8,
        /// The physical function's source id (for a VF; its own otherwise).
        pfsid: u16,
        range: DeviceTlbRange,
    },
    /// Global (index None) or index-selective with a mask.
    InterruptEntryCache { index: Option<(u16, u8)> },
    Wait {
        status_write: bool,
        interrupt: bool,
        data: u32,
        address: u64,
    },
}

/// The IOVA range of a device-TLB invalidation: `[start, end)`, `end` None meaning to the
/// top of the address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTlbRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl DeviceTlbRange {
    /// ADDR (63:12) and S (bit 0) as the PCIe ATS invalidate request encodes them (PCIe
    /// base 10.2.3.2, VT-d 6.5.2.5): S clear is one 4 KiB page; S set makes the lowest clear
    /// bit of ADDR at or above bit 12 give the size, 2^(that bit + 1) bytes, with the ones
    /// below it not part of the address (0x1000 with S is 8 KiB at 0; bits 12..=62 set is the
    /// whole space).
    pub fn decode(hi: u64) -> DeviceTlbRange {
        let addr = hi & !0xfff;
        if hi & DEVICE_IOTLB_SIZE == 0 {
            return DeviceTlbRange {
                start: addr,
                end: addr.checked_add(0x1000),
            };
        }
        let shift = 13 + (addr >> 12).trailing_ones();
        if shift >= 64 {
            return DeviceTlbRange {
                start: 0,
                end: None,
            };
        }
        let size = 1u64 << shift;
        let start = addr & !(size - 1);
        DeviceTlbRange {
            start,
            end: start.checked_add(size),
        }
    }
}

/// Reads and decodes the descriptor at `addr`.
pub fn read<M: GuestMemoryBackend>(mem: &M, addr: u64) -> Result<Descriptor, QueueError> {
    let lo: u64 = mem
        .read_obj(GuestAddress(addr))
        .map_err(|_| QueueError::Fetch(addr))?;
    let hi: u64 = addr
        .checked_add(8)
        .and_then(|a| mem.read_obj(GuestAddress(a)).ok())
        .ok_or(QueueError::Fetch(addr))?;
    if lo & TYPE_HIGH_MASK != 0 {
        return Err(QueueError::BadType(lo & (0xf | TYPE_HIGH_MASK)));
    }
    match lo & 0xf {
        TYPE_CONTEXT_CACHE => {
            let granularity = (lo >> 4) & 3;
            if granularity == 0 || lo & 0xfffc_0000_0000_ffc0 != 0 || hi != 0 {
                return Err(QueueError::Reserved("context-cache"));
            }
            Ok(Descriptor::ContextCache {
                granularity,
                did: (lo >> 16) as u16,
                sid: Bdf::from_raw((lo >> 32) as u16),
                fm: (lo >> 48) & 3,
            })
        }
        TYPE_IOTLB => {
            let granularity = (lo >> 4) & 3;
            if granularity == 0 || lo & 0xffff_ffff_0000_ff00 != 0 || hi & 0xf80 != 0 {
                return Err(QueueError::Reserved("IOTLB"));
            }
            Ok(Descriptor::Iotlb {
                granularity,
                did: (lo >> 16) as u16,
                addr: hi & !0xfff,
                am: hi & 0x3f,
            })
        }
        TYPE_DEVICE_IOTLB => {
            if lo & DEVICE_IOTLB_RESERVED_LO != 0 || hi & DEVICE_IOTLB_RESERVED_HI != 0 {
                return Err(QueueError::Reserved("device-TLB"));
            }
            Ok(Descriptor::DeviceIotlb {
                sid: Bdf::from_raw((lo >> 32) as u16),
                max_invs_pend: ((lo >> 16) & 0x1f) as u8,
                pfsid: (((lo >> 12) & 0xf) | (((lo >> 52) & 0xfff) << 4)) as u16,
                range: DeviceTlbRange::decode(hi),
            })
        }
        TYPE_IEC => {
            if lo & 0xffff_0000_07ff_ffe0 != 0 || hi != 0 {
                return Err(QueueError::Reserved("interrupt entry cache"));
            }
            let index =
                ((lo >> 4) & 1 == 1).then_some(((lo >> 32) as u16, ((lo >> 27) & 0x1f) as u8));
            Ok(Descriptor::InterruptEntryCache { index })
        }
        TYPE_WAIT => {
            if lo & 0x0000_0000_ffff_ff80 != 0 || hi & 0x3 != 0 {
                return Err(QueueError::Reserved("invalidation wait"));
            }
            // FN (fence) orders later descriptors; processing is in order anyway.
            let _fence = lo & WAIT_FN != 0;
            Ok(Descriptor::Wait {
                status_write: lo & WAIT_SW != 0,
                interrupt: lo & WAIT_IF != 0,
                data: (lo >> 32) as u32,
                address: hi & !0x3,
            })
        }
        t => Err(QueueError::BadType(t)),
    }
}

/// The wait descriptor's status write.
pub fn write_status<M: GuestMemoryBackend>(
    mem: &M,
    address: u64,
    data: u32,
) -> Result<(), QueueError> {
    mem.write_obj(data, GuestAddress(address))
        .map_err(|_| QueueError::StatusWrite(address))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn at(lo: u64, hi: u64) -> Result<Descriptor, QueueError> {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        mem.write_obj(lo, GuestAddress(0x100)).unwrap();
        mem.write_obj(hi, GuestAddress(0x108)).unwrap();
        read(&mem, 0x100)
    }

    #[test]
    fn qi_context_descriptor_fields() {
        let d = at(0x1 | (3 << 4) | (7 << 16) | (0x18u64 << 32) | (2 << 48), 0).unwrap();
        assert_eq!(
            d,
            Descriptor::ContextCache {
                granularity: 3,
                did: 7,
                sid: Bdf::from_raw(0x18),
                fm: 2
            }
        );
    }

    #[test]
    fn qi_iotlb_page_descriptor_fields() {
        let d = at(0x2 | (3 << 4) | (9 << 16), 0x12_3000 | 4).unwrap();
        assert_eq!(
            d,
            Descriptor::Iotlb {
                granularity: 3,
                did: 9,
                addr: 0x12_3000,
                am: 4
            }
        );
    }

    #[test]
    fn qi_wait_descriptor_fields() {
        let d = at(0x5 | WAIT_SW | WAIT_IF | (0xabcdu64 << 32), 0x2000).unwrap();
        assert_eq!(
            d,
            Descriptor::Wait {
                status_write: true,
                interrupt: true,
                data: 0xabcd,
                address: 0x2000
            }
        );
    }

    #[test]
    fn qi_iec_global_and_selective() {
        assert_eq!(
            at(0x4, 0).unwrap(),
            Descriptor::InterruptEntryCache { index: None }
        );
        let d = at(0x4 | (1 << 4) | (2 << 27) | (0x40u64 << 32), 0).unwrap();
        assert_eq!(
            d,
            Descriptor::InterruptEntryCache {
                index: Some((0x40, 2))
            }
        );
    }

    fn dev_tlb(hi: u64) -> DeviceTlbRange {
        match at(0x3 | (0x18u64 << 32), hi) {
            Ok(Descriptor::DeviceIotlb { range, .. }) => range,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn qi_device_tlb_descriptor_fields() {
        // As Linux's qi_flush_dev_iotlb writes it: SID, QDEP, PFSID split in two.
        let pfsid: u64 = 0x1a3;
        let lo = 0x3 | (0x18u64 << 32) | (5 << 16) | ((pfsid & 0xf) << 12) | ((pfsid >> 4) << 52);
        assert_eq!(
            at(lo, 0x12_3000).unwrap(),
            Descriptor::DeviceIotlb {
                sid: Bdf::from_raw(0x18),
                max_invs_pend: 5,
                pfsid: 0x1a3,
                range: DeviceTlbRange {
                    start: 0x12_3000,
                    end: Some(0x12_4000)
                },
            }
        );
    }

    #[test]
    fn qi_device_tlb_size_clear_is_one_4k_page() {
        assert_eq!(
            dev_tlb(0x5000),
            DeviceTlbRange {
                start: 0x5000,
                end: Some(0x6000)
            }
        );
    }

    #[test]
    fn qi_device_tlb_size_set_bit12_clear_is_8k() {
        assert_eq!(
            dev_tlb(0x6000 | 1),
            DeviceTlbRange {
                start: 0x6000,
                end: Some(0x8000)
            }
        );
    }

    #[test]
    fn qi_device_tlb_size_set_lowest_clear_bit_20_is_2m() {
        // Bits 12..=19 set, 20 clear: 2^21 bytes at 0x40_0000.
        assert_eq!(
            dev_tlb(0x40_0000 | 0xf_f000 | 1),
            DeviceTlbRange {
                start: 0x40_0000,
                end: Some(0x60_0000)
            }
        );
    }

    #[test]
    fn qi_device_tlb_size_set_all_ones_is_the_whole_space() {
        // Linux's whole-device flush (mask 52): 0x7ffffffffffff001.
        let whole = DeviceTlbRange {
            start: 0,
            end: None,
        };
        assert_eq!(dev_tlb(0x7fff_ffff_ffff_f001), whole);
        assert_eq!(dev_tlb(0xffff_ffff_ffff_f001), whole);
    }

    #[test]
    fn qi_device_tlb_reserved_bits_are_errors() {
        for (lo, hi) in [
            (1 << 4, 0),
            (1 << 21, 0),
            (1 << 48, 0),
            (0, 1 << 1),
            (0, 1 << 11),
        ] {
            assert_eq!(
                at(0x3 | lo, hi),
                Err(QueueError::Reserved("device-TLB")),
                "{lo:#x} {hi:#x}"
            );
        }
    }

    #[test]
    fn qi_bad_type_and_reserved_bits_are_errors() {
        assert_eq!(at(0x0, 0), Err(QueueError::BadType(0)));
        assert_eq!(at(0x9, 0), Err(QueueError::BadType(9)));
        assert!(
            matches!(at(0x1, 0), Err(QueueError::Reserved(_))),
            "granularity 0"
        );
        assert!(matches!(
            at(0x5 | (1 << 8), 0),
            Err(QueueError::Reserved(_))
        ));
        assert!(matches!(
            at(0x2 | (1 << 4) | (1 << 40), 0),
            Err(QueueError::Reserved(_))
        ));
        assert!(matches!(at(0x1 | (1 << 9), 0), Err(QueueError::BadType(_))));
    }

    #[test]
    fn qi_descriptor_outside_memory_is_an_error() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(read(&mem, 0xff8), Err(QueueError::Fetch(0xff8)));
    }
}
