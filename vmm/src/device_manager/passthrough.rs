//! Host PCI functions passed through with VFIO, after the emulated devices on the root bus.

use std::sync::Arc;

use devices::vfio::HostDevice;

use super::{DeviceManager, DeviceManagerError};
use crate::vfio::{attach, Wiring};

impl DeviceManager {
    /// Opens `host` and puts it in the next free slot (see `crate::vfio::attach`).
    pub(super) fn add_passthrough(&mut self, host: &HostDevice) -> Result<(), DeviceManagerError> {
        let slot = self.resources.pci_slot()?;
        let wiring = Wiring {
            mem: &self.mem,
            msi: self.irq.msi.clone(),
            routing: self.irq.routing.clone(),
            ioapic: &self.irq.ioapic,
            iommu: self.irq.iommu.as_ref(),
            mapper: Arc::clone(&self.mapper) as _,
        };
        let attached = attach(&self.pci, host, slot, &wiring)?;
        self.passthrough.push(attached);
        Ok(())
    }
}
