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
    DeviceIotlb,
    /// Global (index None) or index-selective with a mask.
    InterruptEntryCache {
        index: Option<(u16, u8)>,
    },
    Wait {
        status_write: bool,
        interrupt: bool,
        data: u32,
        address: u64,
    },
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
        TYPE_DEVICE_IOTLB => Ok(Descriptor::DeviceIotlb),
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
