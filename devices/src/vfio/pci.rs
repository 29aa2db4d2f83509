//! A host PCI function passed through with VFIO (Linux Documentation/driver-api/vfio.rst):
//! configuration space through the VFIO config region with MSI, MSI-X and the ROM
//! virtualised ([`super::config`]), BARs mapped into the guest where VFIO allows it and
//! forwarded otherwise ([`super::bars`]), the MSI-X table and PBA emulated
//! ([`super::msix`]), and interrupts delivered by the hypervisor or the relay
//! ([`super::interrupts`]).

use std::sync::Arc;

use iommu::Bdf;
use log::info;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

use super::bars::{BarMaps, GuestMmioMapper, PAGE_SIZE};
use super::config::VirtualConfig;
use super::function::{HostFunction, VfioFunction, CONFIG_REGION};
use super::host::HostDevice;
use super::interrupts::{InterruptWiring, Interrupts, Mode};
use super::relay::{EpollWatcher, Relay};
use crate::interrupt::{IrqLine, IrqfdRouting, MsiTrigger};
use crate::pci::regs::{
    COMMAND as REG_COMMAND, COMMAND_MASTER, CONFIG_DWORDS, INTERRUPT_PIN as REG_INTERRUPT_PIN,
};
use crate::pci::PciDevice;

/// Command register low byte: bus master enable.
const COMMAND_BUS_MASTER: u8 = COMMAND_MASTER as u8;

/// What the device waits on before the guest may turn bus mastering on: its DMA mappings
/// being in place (the VMM may still be making them).
pub trait DmaGate: Send + Sync {
    /// Waits until the mappings are settled; false if the device must not master at all (its
    /// mappings could not be made, or it was stopped after a host unmap failed): the write
    /// then leaves bus mastering off.
    fn wait_ready(&self) -> bool;
}

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    #[error("VFIO: cannot open the container /dev/vfio/vfio: {0}")]
    Container(vfio_ioctls::VfioError),
    #[error("VFIO: cannot open {0}: {1}")]
    Device(String, vfio_ioctls::VfioError),
    #[error("VFIO: cannot start the interrupt relay of {0}: {1}")]
    Relay(String, std::io::Error),
}

/// What a passed-through function is wired to in the VM.
pub struct VfioPciWiring {
    /// Its address in the guest (the requester id of its MSIs).
    pub address: Bdf,
    /// MSIs the VMM sends (through interrupt remapping, if any).
    pub trigger: Arc<dyn MsiTrigger>,
    /// In-hypervisor delivery of its vectors (KVM irqfds); None relays them all.
    pub routing: Option<Arc<dyn IrqfdRouting>>,
    /// Maps BARs into the guest; None traps every BAR access.
    pub mapper: Option<Arc<dyn GuestMmioMapper>>,
}

/// A passed-through PCI function.
pub struct VfioPciDevice {
    host: Arc<dyn HostFunction>,
    name: String,
    address: Bdf,
    config: VirtualConfig,
    interrupts: Interrupts,
    bars: Option<BarMaps>,
    gate: Option<Arc<dyn DmaGate>>,
    relay: Option<Relay>,
}

impl VfioPciDevice {
    /// Opens `host` (already checked) in a container of its own and resets it. Returns the
    /// device and the container that will hold its DMA mappings.
    pub fn open(
        host: &HostDevice,
        wiring: VfioPciWiring,
    ) -> Result<(Self, Arc<VfioContainer>), VfioPciError> {
        let container = Arc::new(VfioContainer::new(None).map_err(VfioPciError::Container)?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device = VfioDevice::new(&host.sysfs, ops, false)
            .map_err(|e| VfioPciError::Device(host.name.clone(), e))?;
        let function: Arc<dyn HostFunction> = Arc::new(VfioFunction(Arc::new(device)));
        let dev = VfioPciDevice::new(function, &host.name, wiring)?;
        info!(
            "vfio: {} (group {}) at guest {}",
            host.name,
            host.group,
            dev.address()
        );
        Ok((dev, container))
    }

    /// The device model over a host function: resets it, takes over its MSI and MSI-X
    /// capabilities and maps its BARs' mappable parts. Its interrupts are off until
    /// [`VfioPciDevice::wire_intx`] or the guest enables MSI or MSI-X.
    pub fn new(
        host: Arc<dyn HostFunction>,
        name: &str,
        wiring: VfioPciWiring,
    ) -> Result<Self, VfioPciError> {
        host.reset();
        let watcher = EpollWatcher::new().map_err(|e| VfioPciError::Relay(name.into(), e))?;
        let address = wiring.address;
        let interrupts = Interrupts::new(InterruptWiring {
            host: host.clone(),
            source: wiring.address,
            trigger: wiring.trigger,
            routing: wiring.routing,
            watcher: watcher.clone(),
            name: name.to_string(),
        });
        let config = VirtualConfig::scan(host.as_ref(), false);
        let trapped: Vec<(usize, u64, u64)> = config
            .msix
            .iter()
            .flat_map(|m| [m.table(), m.pba()])
            .map(|l| (l.bar, l.offset, l.offset + l.size))
            .collect();
        let bars = wiring
            .mapper
            .map(|m| BarMaps::new(host.as_ref(), m, &trapped, name));
        let relay = Relay::start(watcher, interrupts.clone())
            .map_err(|e| VfioPciError::Relay(name.into(), e))?;
        let dev = VfioPciDevice {
            host,
            name: name.to_string(),
            address,
            config,
            interrupts,
            bars,
            gate: None,
            relay: Some(relay),
        };
        info!(
            "vfio {name}: MSI {}, MSI-X {}",
            dev.config
                .msi
                .as_ref()
                .map_or("absent".into(), |m| format!("at {:#x}", m.offset())),
            dev.config
                .msix
                .as_ref()
                .map_or("absent".into(), |m| format!(
                    "at {:#x} ({} vectors, table in BAR {})",
                    m.offset(),
                    m.vectors(),
                    m.table().bar
                )),
        );
        Ok(dev)
    }

    /// The function's interrupt pin (1 = INTA .. 4 = INTD; 0: none).
    pub fn interrupt_pin(&self) -> u8 {
        let mut b = [0u8; 1];
        self.host
            .read(CONFIG_REGION, REG_INTERRUPT_PIN as u64, &mut b);
        if b[0] > 4 {
            0
        } else {
            b[0]
        }
    }

    /// Wires the INTx pin to `line` (the interrupt controller input it drives); without a
    /// pin, or without INTx at the host, the guest sees no interrupt pin. Returns whether
    /// INTx is in use.
    pub fn wire_intx(&mut self, line: Arc<dyn IrqLine>) -> bool {
        let wired = self.interrupt_pin() != 0 && self.interrupts.wire_intx(line);
        self.config.set_intx(wired);
        self.sync_interrupts();
        info!(
            "vfio {}: INTx {}",
            self.name,
            if wired { "wired" } else { "absent" }
        );
        wired
    }

    /// Its address in the guest.
    pub fn address(&self) -> Bdf {
        self.address
    }

    /// The host function, for whoever must stop its DMA when the host's mappings fail.
    pub fn host_function(&self) -> Arc<dyn HostFunction> {
        self.host.clone()
    }

    /// Command register writes that turn bus mastering on wait for `gate` first.
    pub fn set_dma_gate(&mut self, gate: Arc<dyn DmaGate>) {
        self.gate = Some(gate);
    }

    /// The interrupt state, for the interrupt controller (INTx resampling) and the IOMMU
    /// (re-routing after interrupt entry invalidations).
    pub fn interrupts(&self) -> Interrupts {
        self.interrupts.clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Puts the host's interrupts in the mode and with the vectors the guest programmed.
    fn sync_interrupts(&mut self) {
        let msix = self.config.msix.as_ref().filter(|m| m.enabled());
        let msi = self.config.msi.as_ref().filter(|m| m.enabled());
        let (mode, n) = match (msix, msi) {
            (Some(m), _) => (Mode::Msix, m.vectors()),
            (None, Some(m)) => (Mode::Msi, m.vectors()),
            _ if self.interrupts.has_intx() => (Mode::Intx, 0),
            _ => (Mode::Off, 0),
        };
        self.interrupts.set_mode(mode, n);
        for i in 0..n {
            self.sync_vector(mode, i);
        }
    }

    fn sync_vector(&self, mode: Mode, i: usize) {
        let (msg, masked) = match (mode, &self.config.msix, &self.config.msi) {
            (Mode::Msix, Some(m), _) => (m.message(i), m.masked(i)),
            (Mode::Msi, _, Some(m)) => (m.message(i), m.masked(i)),
            _ => return,
        };
        self.interrupts.update_vector(i, msg, masked);
    }

    fn msi_pending_bits(&self) -> u32 {
        match self.interrupts.mode() {
            Mode::Msi => (0..32)
                .filter(|i| self.interrupts.pending(*i))
                .fold(0, |acc, i| acc | (1 << i)),
            _ => 0,
        }
    }
}

impl PciDevice for VfioPciDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        if reg_idx >= CONFIG_DWORDS {
            return 0xffff_ffff;
        }
        let mut b = [0xffu8; 4];
        self.host.read(CONFIG_REGION, (reg_idx * 4) as u64, &mut b);
        let pending = self.msi_pending_bits();
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = self.config.read_byte(reg_idx * 4 + i, *byte, pending);
        }
        u32::from_le_bytes(b)
    }

    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        if reg_idx >= CONFIG_DWORDS || offset as usize + data.len() > 4 {
            return;
        }
        let base = reg_idx * 4 + offset as usize;
        // Turning bus mastering on waits until the device's DMA mappings are in place.
        let command = REG_COMMAND.checked_sub(base).filter(|i| *i < data.len());
        let mut data = data.to_vec();
        if let Some(i) = command.filter(|i| data[*i] & COMMAND_BUS_MASTER != 0) {
            if let Some(g) = &self.gate {
                if !g.wait_ready() {
                    data[i] &= !COMMAND_BUS_MASTER;
                }
            }
        }
        let (change, forward) = self.config.write(base, &data);
        for (off, bytes) in forward {
            self.host.write(CONFIG_REGION, off as u64, &bytes);
        }
        if change.msi.enable || change.msix.control {
            self.sync_interrupts();
        } else if (change.msi.message || change.msi.mask) && self.interrupts.mode() == Mode::Msi {
            // With MSI-X on, the host vectors are MSI-X's: the MSI capability's message and
            // mask must not touch them (robustness review F-VFIO-1).
            let n = self.config.msi.as_ref().map_or(0, |m| m.vectors());
            for i in 0..n {
                self.sync_vector(Mode::Msi, i);
            }
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let Some(m) = &self.config.msix {
            let irq = &self.interrupts;
            let msix_mode = irq.mode() == Mode::Msix;
            if m.read_bar(bar, offset, data, |i| msix_mode && irq.pending(i)) {
                return;
            }
        }
        self.host.read(bar as u32, offset, data);
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some(m) = self.config.msix.as_mut() {
            if let Some(change) = m.write_bar(bar, offset, data) {
                if let Some(i) = change.entry {
                    self.sync_vector(self.interrupts.mode(), i);
                }
                return;
            }
        }
        self.host.write(bar as u32, offset, data);
    }

    fn bar_moved(&mut self, bar: usize, base: Option<u64>) {
        if let Some(b) = self.bars.as_mut() {
            b.moved(bar, base.filter(|b| b % PAGE_SIZE == 0));
        }
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.interrupts.set_mode(Mode::Off, 0);
        self.relay = None;
        self.bars = None;
        // Leave the device quiet for whoever takes it next.
        self.host.reset();
        info!("vfio: {} reset and released", self.name);
    }
}

#[cfg(test)]
mod tests;
