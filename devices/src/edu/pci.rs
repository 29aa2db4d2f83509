//! The edu device as a PCI function (QEMU docs/specs/edu.rst): 1234:11e8, class 00ff, one
//! 1 MiB 32-bit memory BAR, INTA, and a 64-bit single-vector MSI capability. The interrupt goes
//! out as MSI when the guest enabled it and as INTx otherwise; both need the command register's
//! consent (bus master for MSI and DMA, interrupt disable clear for INTx).

use std::sync::Arc;

use iommu::Bdf;

use super::registers::{EduInterrupt, EduRegisters};
use crate::dma::DmaAccess;
use crate::interrupt::{IrqLine, MsiMessage, MsiTrigger};
use crate::pci::configuration::{
    BarKind, BarSpec, PciConfiguration, PciIds, COMMAND_INTX_DISABLE, COMMAND_MASTER,
};
use crate::pci::msi::{MsiCap, CTL_64BIT};
use crate::pci::PciDevice;

pub const EDU_VENDOR: u16 = 0x1234;
pub const EDU_DEVICE: u16 = 0x11e8;
/// Class 00ff (unclassified, other), revision 0x10, as QEMU's edu reports.
const EDU_SUBCLASS: u8 = 0xff;
const EDU_REVISION: u8 = 0x10;
/// BAR0: the register file, 1 MiB.
pub const EDU_BAR0_SIZE: u64 = 1 << 20;
/// INTA.
const INTX_PIN: u8 = 1;

/// An edu PCI function.
pub struct EduDevice {
    config: PciConfiguration,
    msi: MsiCap,
    regs: EduRegisters,
    address: Bdf,
    msi_trigger: Arc<dyn MsiTrigger>,
    intx: Arc<dyn IrqLine>,
    intx_level: bool,
}

/// Routes the register file's interrupt changes per the current configuration.
struct Router<'a> {
    config: &'a PciConfiguration,
    msi: &'a MsiCap,
    address: Bdf,
    trigger: &'a dyn MsiTrigger,
    intx: &'a dyn IrqLine,
    intx_level: &'a mut bool,
}

impl EduInterrupt for Router<'_> {
    fn update(&mut self, pending: bool, raised: bool) {
        let command = self.config.command();
        if self.msi.enabled() {
            self.set_intx(false);
            // An unprogrammed address sends nothing (the shared model's rule).
            let message = self.msi.message(0);
            if let Some((address, data)) =
                message.filter(|_| raised && command & COMMAND_MASTER != 0)
            {
                let msg = MsiMessage {
                    address,
                    data,
                    source: self.address,
                };
                if let Err(e) = self.trigger.send_msi(msg) {
                    iommu::warn_limited!("edu {}: {e}", self.address);
                }
            }
        } else {
            self.set_intx(pending && command & COMMAND_INTX_DISABLE == 0);
        }
    }
}

impl Router<'_> {
    fn set_intx(&mut self, level: bool) {
        if *self.intx_level != level {
            *self.intx_level = level;
            self.intx.set_level(level);
        }
    }
}

impl EduDevice {
    /// An edu function at `address` whose DMA goes through `dma`.
    pub fn new(
        address: Bdf,
        dma: Arc<dyn DmaAccess>,
        msi_trigger: Arc<dyn MsiTrigger>,
        intx: Arc<dyn IrqLine>,
    ) -> Self {
        let mut config = PciConfiguration::new(
            PciIds {
                vendor: EDU_VENDOR,
                device: EDU_DEVICE,
                class: 0,
                subclass: EDU_SUBCLASS,
                prog_if: 0,
                revision: EDU_REVISION,
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
            },
            INTX_PIN,
        );
        // Both are fixed, valid layouts: these cannot fail on a fresh configuration space.
        config
            .add_bar(BarSpec {
                index: 0,
                size: EDU_BAR0_SIZE,
                kind: BarKind::Mem32,
            })
            .expect("BAR0 fits a fresh configuration space");
        // One vector, 64-bit, no per-vector masking.
        let msi =
            MsiCap::add_to(&mut config, CTL_64BIT).expect("MSI fits a fresh configuration space");
        EduDevice {
            config,
            msi,
            regs: EduRegisters::new(address, dma),
            address,
            msi_trigger,
            intx,
            intx_level: false,
        }
    }

    /// Transfers the IOMMU or range checks stopped.
    pub fn dma_errors(&self) -> u64 {
        self.regs.dma_errors
    }

    /// Interrupt Status follows a pending interrupt that would go out as INTx.
    fn update_interrupt_status(&mut self) {
        let intx_pending = self.regs.interrupt_status() != 0 && !self.msi.enabled();
        self.config.set_interrupt_status(intx_pending);
    }

    fn router(&mut self) -> (&mut EduRegisters, Router<'_>) {
        (
            &mut self.regs,
            Router {
                config: &self.config,
                msi: &self.msi,
                address: self.address,
                trigger: self.msi_trigger.as_ref(),
                intx: self.intx.as_ref(),
                intx_level: &mut self.intx_level,
            },
        )
    }
}

impl PciDevice for EduDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        let mut b = self.config.read_register(reg_idx).to_le_bytes();
        for (i, byte) in b.iter_mut().enumerate() {
            let off = reg_idx * 4 + i;
            if self.msi.contains(off) {
                // No per-vector masking: no pending bits either.
                *byte = self.msi.read_byte(off, *byte, 0);
            }
        }
        u32::from_le_bytes(b)
    }

    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        // The capability's bytes are read-only in `config`: the write reaches the model alone.
        self.config.write_register(reg_idx, offset, data);
        if offset as usize + data.len() <= 4 {
            for (i, v) in data.iter().enumerate() {
                let off = reg_idx * 4 + offset as usize + i;
                if self.msi.contains(off) {
                    self.msi.write_byte(off, *v);
                }
            }
        }
        self.regs
            .set_bus_master(self.config.command() & COMMAND_MASTER != 0);
        // Enabling MSI or setting interrupt disable moves a pending INTx.
        let pending = self.regs.interrupt_status() != 0;
        let (_, mut router) = self.router();
        router.update(pending, false);
        self.update_interrupt_status();
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == 0 {
            self.regs.read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == 0 {
            let (regs, mut router) = self.router();
            regs.write(offset, data, &mut router);
            self.update_interrupt_status();
        }
    }
}
