//! The PCI root bus: the host bridge, the emulated devices, the configuration mechanisms
//! (ports 0xcf8/0xcfc and ECAM), BAR and INTx assignment, and the KVM ioeventfds that follow
//! BARs. Each BAR the guest enables is its own range on the MMIO or port bus (the root bus
//! moves it there: devices/src/pci/root/bars.rs).

use std::sync::{Arc, Mutex};

use devices::bus::lock;
use devices::dma::DeviceDma;
use devices::edu::EduDevice;
use devices::ioapic::IoapicPin;
use devices::pci::vectors::VectorWiring;
use devices::pci::{intx_gsi, IoEventRegistrar, PciConfigIo, PciConfigMmio, PrtRoute};
use devices::virtio::pci::{VirtioPciDevice, VirtioPciError};
use devices::virtio::rng::Rng;
use devices::virtio::VirtioDevice;
use devices::Bdf;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::{DeviceManager, DeviceManagerError};
use crate::config::{resolve_ats, DeviceConfig};
use crate::layout::*;
use crate::state::EmulatedDmaState;

/// An emulated device whose DMA is translated, as the state view shows it: its cache's
/// counters and, for a virtio function, its ATS Control register.
pub(super) struct EmulatedDma {
    name: String,
    dma: Arc<DeviceDma>,
    virtio: Option<Arc<Mutex<VirtioPciDevice>>>,
}

impl EmulatedDma {
    pub(super) fn state(&self) -> EmulatedDmaState {
        EmulatedDmaState {
            name: self.name.clone(),
            address: self.dma.source(),
            iotlb: self.dma.iotlb().stats(),
            ats_control: self.virtio.as_ref().and_then(|v| lock(v).ats_control()),
        }
    }
}

/// edu's interrupt pin (INTA, devices/src/edu/pci.rs).
const EDU_INTX_PIN: u8 = 1;
/// A virtio-pci function's interrupt pin (INTA, devices/src/virtio/pci.rs).
const VIRTIO_INTX_PIN: u8 = 1;

impl DeviceManager {
    /// An emulated device in the next free slot: its DMA goes through the IOMMU (if any), its
    /// MSIs through interrupt remapping, its INTx to the IOAPIC pin the _PRT gives it.
    pub(super) fn add_pci_device(&mut self, kind: &DeviceConfig) -> Result<(), DeviceManagerError> {
        match kind {
            DeviceConfig::Edu => self.add_edu(),
            DeviceConfig::Rng(rng) => {
                let dev = Rng::new().map_err(VirtioPciError::Worker)?;
                self.add_virtio_device(Box::new(dev), rng.iommu_platform, rng.ats)
            }
            DeviceConfig::Disk(disk) => {
                let dev = Box::new(disk.build()?);
                self.add_virtio_device(dev, disk.iommu_platform, disk.ats)
            }
            DeviceConfig::Net(net) => {
                self.add_virtio_device(Box::new(net.build()?), net.iommu_platform, None)
            }
        }
    }

    fn add_edu(&mut self) -> Result<(), DeviceManagerError> {
        let slot = self.resources.pci_slot()?;
        let address = Bdf::new(0, slot, 0);
        let dma = Arc::new(self.device_dma(address));
        self.emulated.push(EmulatedDma {
            name: "edu".into(),
            dma: dma.clone(),
            virtio: None,
        });
        let dev = EduDevice::new(
            address,
            dma,
            self.irq.msi.clone(),
            self.intx_line(slot, EDU_INTX_PIN),
        );
        lock(&self.pci).add_device(Arc::new(Mutex::new(dev)), Some(slot))?;
        log::info!("edu device at {address}");
        Ok(())
    }

    /// A virtio device over virtio-pci in the next free slot (made, with its worker threads,
    /// here during setup: the vCPUs that activate it run sandboxed and cannot start threads).
    /// With `iommu_platform` and an
    /// IOMMU, it offers ACCESS_PLATFORM and its DMA goes through the IOMMU with its own
    /// translation cache; its MSI-X vectors are irqfds on remapped routes (as a passed-through
    /// function's), its INTA goes to the IOAPIC pin the _PRT gives it.
    /// It has the ATS capability as its `ats=` option says, by default with `--iommu
    /// device-iotlb=on` (`config::resolve_ats`).
    pub(super) fn add_virtio_device(
        &mut self,
        device: Box<dyn VirtioDevice>,
        iommu_platform: bool,
        ats: Option<bool>,
    ) -> Result<(), DeviceManagerError> {
        let slot = self.resources.pci_slot()?;
        let address = Bdf::new(0, slot, 0);
        let kind = device.device_type();
        if kind == devices::virtio::TYPE_BLOCK {
            self.disk_slots.push(slot);
        }
        let dma = (iommu_platform && self.irq.iommu.is_some())
            .then(|| Arc::new(self.device_dma(address)));
        let translated = dma.is_some();
        let wiring = VectorWiring {
            source: address,
            trigger: self.irq.msi.clone(),
            routing: Some(self.irq.routing.clone()),
            watcher: None,
            name: format!("virtio {address}"),
        };
        let intx = self.intx_line(slot, VIRTIO_INTX_PIN);
        let iommu_config = self.irq.iommu.as_ref().map(|i| i.config());
        let ats = translated && resolve_ats(ats, iommu_platform, iommu_config.as_ref());
        let mut dev =
            VirtioPciDevice::new(address, device, self.mem.clone(), dma.clone(), wiring, intx)?;
        if ats {
            dev.add_ats()?;
        }
        if let Some(iommu) = &self.irq.iommu {
            iommu.add_interrupt_routes(dev.msix().routes());
        }
        let dev = Arc::new(Mutex::new(dev));
        self.virtio.push(dev.clone());
        if let Some(dma) = dma {
            self.emulated.push(EmulatedDma {
                name: format!("virtio type {kind}"),
                dma,
                virtio: Some(dev.clone()),
            });
        }
        // The driver's notifications reach the queues' eventfds through BAR writes; the bus
        // registers dev.notify_eventfds() as ioeventfds once it can.
        lock(&self.pci).add_device(dev, Some(slot))?;
        log::info!("virtio device type {kind} at {address} (ACCESS_PLATFORM: {translated})");
        if ats {
            log::info!("virtio device at {address}: ATS capability (device-TLB)");
        }
        Ok(())
    }

    /// The DMA of the device at `address`, with its own translation cache.
    fn device_dma(&self, address: Bdf) -> DeviceDma {
        DeviceDma::new(
            address,
            self.mem.clone(),
            self.dma.translator.clone(),
            &self.dma.caches,
        )
    }

    /// The IOAPIC pin INTx `pin` of device `slot` drives.
    fn intx_line(&self, slot: u8, pin: u8) -> Arc<IoapicPin> {
        Arc::new(IoapicPin {
            ioapic: self.irq.ioapic.clone(),
            pin: intx_gsi(slot, pin) as usize,
        })
    }

    /// Once every device is on the bus: the configuration mechanisms go on the buses, BARs
    /// get addresses (as firmware would) and decode, and the _PRT routes come back for the
    /// DSDT.
    pub(super) fn finish_pci(&mut self) -> Result<Vec<PrtRoute>, DeviceManagerError> {
        let pci = &self.pci;
        let config_io = match &self.rst_cnt {
            Some(rst) => PciConfigIo::with_cf9(pci.clone(), rst.clone()),
            None => PciConfigIo::new(pci.clone()),
        };
        self.pio
            .insert(PCI_CONFIG_PORT.into(), 8, Arc::new(Mutex::new(config_io)))?;
        self.mmio.insert(
            self.map.ecam.0,
            self.map.ecam.1,
            Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
        )?;
        let mut root = lock(pci);
        root.assign_resources()?;
        Ok(root.prt_routes())
    }
}

/// KVM ioeventfds for BAR notification addresses: a guest write of any size to the address
/// signals the eventfd in the kernel (KVM_IOEVENTFD with length 0, which kvm-ioctls asks for
/// when there is no datamatch; KVM_CAP_IOEVENTFD_ANY_LENGTH in Documentation/virt/kvm/api.rst).
pub(super) struct KvmIoEvents(pub Arc<VmFd>);

fn address(io: bool, addr: u64) -> IoEventAddress {
    if io {
        IoEventAddress::Pio(addr)
    } else {
        IoEventAddress::Mmio(addr)
    }
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, io: bool, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        self.0
            .register_ioevent(fd, &address(io, addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, io: bool, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        self.0
            .unregister_ioevent(fd, &address(io, addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}
