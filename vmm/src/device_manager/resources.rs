//! Every fixed region of the address map, every port range and legacy interrupt line, and the
//! root bus's slots, handed out by vm-allocator: two devices cannot be given the same one,
//! and a clash (a `--debug-exit` port on COM1, a window on RAM) is an error at startup
//! instead of a silently shadowed device.
//!
//! vm-allocator 0.1.4's `AllocPolicy::ExactMatch` looks up the node that contains the start
//! address without checking that the node is free, so an exact claim inside an allocated range
//! succeeds. `Space` keeps the claims next to the allocator and checks overlaps itself.

use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator, RangeInclusive};

use crate::layout;

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("{what} at {base:#x} (size {size:#x}) overlaps another device or region: {source}")]
    Address {
        what: &'static str,
        base: u64,
        size: u64,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("{what} at {base:#x} (size {size:#x}) overlaps {other}")]
    Overlap {
        what: &'static str,
        base: u64,
        size: u64,
        other: &'static str,
    },
    #[error("{what}: IOAPIC pin {pin} is taken or out of range: {source}")]
    Irq {
        what: &'static str,
        pin: u32,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("no free slot on the PCI root bus: {0}")]
    PciSlot(#[source] vm_allocator::Error),
    #[error("cannot set up the resource allocators: {0}")]
    Setup(#[source] vm_allocator::Error),
}

/// An address space and what has been claimed in it, by name.
struct Space {
    allocator: AddressAllocator,
    claims: Vec<(RangeInclusive, &'static str)>,
}

impl Space {
    fn new(base: u64, size: u64) -> Result<Self, ResourceError> {
        Ok(Space {
            allocator: AddressAllocator::new(base, size).map_err(ResourceError::Setup)?,
            claims: Vec::new(),
        })
    }

    /// Claims exactly `base..base + size` for `what`.
    fn claim(&mut self, what: &'static str, base: u64, size: u64) -> Result<(), ResourceError> {
        let address = |source| ResourceError::Address {
            what,
            base,
            size,
            source,
        };
        let end = size
            .checked_sub(1)
            .and_then(|s| base.checked_add(s))
            .ok_or(address(vm_allocator::Error::InvalidSize(size)))?;
        let range = RangeInclusive::new(base, end).map_err(address)?;
        if let Some((_, other)) = self.claims.iter().find(|(r, _)| r.overlaps(&range)) {
            return Err(ResourceError::Overlap {
                what,
                base,
                size,
                other,
            });
        }
        self.allocator
            .allocate(size, 1, AllocPolicy::ExactMatch(base))
            .map_err(address)?;
        self.claims.push((range, what));
        Ok(())
    }
}

/// The resources of one machine.
pub struct Resources {
    /// Guest-physical addresses, up to the widest address space a firmware-boot 64-bit
    /// window may reach ([`layout::FW_PHYS_BITS_MAX`]).
    mmio: Space,
    /// The 64 KiB of port I/O.
    pio: Space,
    /// IOAPIC pins.
    irqs: Space,
    /// Root-bus device numbers (slot 0 is the host bridge's).
    pci_slots: IdAllocator,
}

impl Resources {
    pub fn new() -> Result<Self, ResourceError> {
        Ok(Resources {
            mmio: Space::new(0, 1 << layout::FW_PHYS_BITS_MAX)?,
            pio: Space::new(0, 0x1_0000)?,
            irqs: Space::new(0, layout::IOAPIC_NUM_PINS as u64)?,
            pci_slots: IdAllocator::new(1, (devices::pci::root::NUM_DEVICES - 1) as u32)
                .map_err(ResourceError::Setup)?,
        })
    }

    /// Claims guest-physical `base..base + size` for `what`.
    pub fn reserve_mmio(
        &mut self,
        what: &'static str,
        base: u64,
        size: u64,
    ) -> Result<(), ResourceError> {
        self.mmio.claim(what, base, size)
    }

    /// Claims ports `base..base + size` for `what`.
    pub fn reserve_pio(
        &mut self,
        what: &'static str,
        base: u16,
        size: u64,
    ) -> Result<(), ResourceError> {
        self.pio.claim(what, base.into(), size)
    }

    /// Claims `count` IOAPIC pins from `pin` for `what`.
    pub fn reserve_irqs(
        &mut self,
        what: &'static str,
        pin: u32,
        count: u32,
    ) -> Result<(), ResourceError> {
        match self.irqs.claim(what, pin.into(), count.into()) {
            Err(ResourceError::Address { source, .. }) => {
                Err(ResourceError::Irq { what, pin, source })
            }
            r => r,
        }
    }

    /// The next free device number on the root bus.
    pub fn pci_slot(&mut self) -> Result<u8, ResourceError> {
        let id = self
            .pci_slots
            .allocate_id()
            .map_err(ResourceError::PciSlot)?;
        u8::try_from(id).map_err(|_| ResourceError::PciSlot(vm_allocator::Error::Overflow))
    }

    /// Claims the fixed part of the address map: RAM, the firmware area, KVM's pages, the
    /// APICs, ECAM and the PCI windows (as `map` places them).
    pub fn reserve_address_map(
        &mut self,
        ram: &[(u64, u64)],
        map: &layout::AddressMap,
    ) -> Result<(), ResourceError> {
        for &(base, size) in ram {
            self.reserve_mmio("RAM", base, size)?;
        }
        let fixed = [
            ("PCI 32-bit window", map.mmio32.0, map.mmio32.1),
            ("PCIe ECAM", map.ecam.0, map.ecam.1),
            ("IOAPIC", layout::IOAPIC_START, layout::IOAPIC_SIZE),
            ("local APICs", layout::LAPIC_START, layout::LAPIC_SIZE),
            ("KVM identity map", layout::KVM_IDENTITY_MAP_START, 0x1000),
            ("KVM TSS", layout::KVM_TSS_START, layout::KVM_TSS_SIZE),
            ("firmware area", map.firmware_area.0, map.firmware_area.1),
            ("PCI 64-bit window", map.mmio64.0, map.mmio64.1),
        ];
        for (what, base, size) in fixed {
            self.reserve_mmio(what, base, size)?;
        }
        self.reserve_pio("PCI I/O window", map.pci_io.0, map.pci_io.1.into())?;
        self.reserve_pio("PCI config ports", layout::PCI_CONFIG_PORT, 8)?;
        // PCI INTx lines are shared (the _PRT swizzle), so they are claimed as one block.
        self.reserve_irqs(
            "PCI INTx",
            layout::PCI_INTX_FIRST_PIN,
            layout::PCI_INTX_PINS,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_map() -> Resources {
        let mut r = Resources::new().unwrap();
        r.reserve_address_map(&[(0, 512 << 20)], &layout::AddressMap::direct())
            .unwrap();
        r
    }

    #[test]
    fn resources_address_map_has_no_overlaps() {
        let mut r = Resources::new().unwrap();
        r.reserve_address_map(
            &[
                (0, layout::LOW_RAM_END_MAX),
                (layout::RAM_HIGH_START, 8 << 30),
            ],
            &layout::AddressMap::direct(),
        )
        .unwrap();
    }

    #[test]
    fn resources_firmware_address_map_has_no_overlaps() {
        let ram = [
            (0, layout::FW_LOW_RAM_END_MAX),
            (layout::RAM_HIGH_START, 8 << 30),
        ];
        let mut r = Resources::new().unwrap();
        r.reserve_address_map(&ram, &layout::AddressMap::firmware((12 << 30) + 1, 40))
            .unwrap();
        // RAM up to 0xc0000000 would run into OVMF's ECAM.
        let mut r = Resources::new().unwrap();
        assert!(matches!(
            r.reserve_address_map(
                &[(0, layout::LOW_RAM_END_MAX)],
                &layout::AddressMap::firmware(layout::LOW_RAM_END_MAX, 40)
            ),
            Err(ResourceError::Overlap {
                what: "PCIe ECAM",
                ..
            })
        ));
    }

    #[test]
    fn resources_ram_into_the_mmio32_window_is_refused() {
        let mut r = Resources::new().unwrap();
        assert!(matches!(
            r.reserve_address_map(
                &[(0, layout::MMIO32_START + 0x1000)],
                &layout::AddressMap::direct()
            ),
            Err(ResourceError::Overlap {
                what: "PCI 32-bit window",
                other: "RAM",
                ..
            })
        ));
    }

    #[test]
    fn resources_mmio_in_the_firmware_area_is_refused() {
        let mut r = with_map();
        assert!(matches!(
            r.reserve_mmio("flash", 0xffff_0000, 0x1000),
            Err(ResourceError::Overlap {
                other: "firmware area",
                ..
            })
        ));
        assert!(r.reserve_mmio("below", 0xffd0_0000, 0x1000).is_ok());
    }

    #[test]
    fn resources_overlapping_ports_are_refused() {
        let mut r = with_map();
        r.reserve_pio("COM1", layout::COM1_PORT, 8).unwrap();
        assert!(r
            .reserve_pio("debug-exit", layout::COM1_PORT + 4, 4)
            .is_err());
        assert!(r
            .reserve_pio("in the PCI window", layout::PCI_IO_START, 1)
            .is_err());
    }

    #[test]
    fn resources_irq_taken_twice_is_refused() {
        let mut r = with_map();
        r.reserve_irqs("COM1", layout::COM1_IRQ, 1).unwrap();
        assert!(r.reserve_irqs("again", layout::COM1_IRQ, 1).is_err());
        assert!(r.reserve_irqs("INTx", 16, 1).is_err());
        assert!(r.reserve_irqs("past the pins", 24, 1).is_err());
        assert!(
            r.reserve_irqs("last pin", 23, 1).is_err(),
            "INTx holds 16..24"
        );
    }

    #[test]
    fn resources_intx_block_covers_every_swizzled_line() {
        let block = layout::PCI_INTX_FIRST_PIN..layout::PCI_INTX_FIRST_PIN + layout::PCI_INTX_PINS;
        for device in 0..32 {
            for pin in 1..=4 {
                assert!(block.contains(&devices::pci::intx_gsi(device, pin)));
            }
        }
    }

    #[test]
    fn resources_pci_slots_run_out_after_31() {
        let mut r = with_map();
        for want in 1..=31 {
            assert_eq!(r.pci_slot().unwrap(), want);
        }
        assert!(matches!(r.pci_slot(), Err(ResourceError::PciSlot(_))));
    }
}
