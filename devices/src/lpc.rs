//! The ICH9 LPC bridge at 00:1f.0 (8086:2918, class 06/01/00) of the Q35 look-alike used for
//! firmware boot, and the reset control register at port 0xCF9.
//!
//! OVMF programs PMBASE (0x40) and sets ACPI_EN in ACPI_CNTL (0x44) in SEC, before its first
//! delay (edk2 OvmfPkg/Library/AcpiTimerLib/BaseRomAcpiTimerLib.c); the PM I/O block
//! ([`pmio::Ich9Pm`]) then decodes at PMBASE on the port bus, as QEMU's ich9_pm_iospace_update
//! places it. PIRQ routing (0x60..0x63, 0x68..0x6B), RCBA (0xF0) and the other
//! device-specific registers store what is written. Its class (ISA bridge) is also what
//! OVMF's SioBusDxe looks for before it drives COM1.

pub mod pmio;

use std::sync::{Arc, Mutex};

use crate::bus::{Bus, BusDevice};
use crate::pci::configuration::{PciConfiguration, PciIds};
use crate::pci::host_bridge::byte_shift;
use crate::pci::PciDevice;
use crate::vm_control::{ExitHandler, VmExitRequest};

/// Intel ICH9 LPC interface controller (QEMU hw/isa/lpc_ich9.c, edk2 Q35MchIch9.h).
pub const LPC_VENDOR: u16 = 0x8086;
pub const LPC_DEVICE: u16 = 0x2918;
/// The LPC bridge's device number on bus 0 (function 0).
pub const LPC_SLOT: u8 = 0x1f;
/// Class 06/01/00: bridge device, ISA bridge.
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_ISA: u8 = 0x01;
/// PMBASE (ICH9 datasheet 13.1.15): bits 15:7 the base, bit 0 reads 1 (I/O space).
pub const ICH9_PMBASE: usize = 0x40;
const PMBASE_MASK: u32 = 0xff80;
const PMBASE_RTE: u32 = 1;
/// ACPI_CNTL (datasheet 13.1.16): bit 7 ACPI_EN turns the PM I/O block on.
pub const ICH9_ACPI_CNTL: usize = 0x44;
pub const ACPI_CNTL_ACPI_EN: u8 = 1 << 7;
/// PIRQA..D and PIRQE..H route control; reset value 0x80 (routing disabled).
const PIRQ_A: usize = 0x60;
const PIRQ_E: usize = 0x68;
const PIRQ_DEFAULT: u32 = 0x8080_8080;
/// Device-specific registers 0x40..0xFF.
const SPECIFIC_START: usize = 0x40;
const SPECIFIC_END: usize = 0x100;
const SPECIFIC_DWORDS: usize = (SPECIFIC_END - SPECIFIC_START) / 4;

pub struct Ich9Lpc {
    config: PciConfiguration,
    specific: [u32; SPECIFIC_DWORDS],
    pio: Arc<Bus>,
    pm: Arc<Mutex<pmio::Ich9Pm>>,
    /// Where the PM block decodes now.
    pm_at: Option<u16>,
}

impl Ich9Lpc {
    /// The bridge; its PM block `pm` goes on `pio` once the guest enables it.
    pub fn new(pio: Arc<Bus>, pm: Arc<Mutex<pmio::Ich9Pm>>) -> Self {
        Ich9Lpc {
            config: PciConfiguration::new(
                PciIds {
                    vendor: LPC_VENDOR,
                    device: LPC_DEVICE,
                    class: CLASS_BRIDGE,
                    subclass: SUBCLASS_ISA,
                    prog_if: 0,
                    revision: 2,
                    subsystem_vendor: 0x1af4,
                    subsystem: 0x1100,
                },
                0,
            ),
            specific: Self::specific_defaults(),
            pio,
            pm,
            pm_at: None,
        }
    }

    fn specific_defaults() -> [u32; SPECIFIC_DWORDS] {
        let mut specific = [0; SPECIFIC_DWORDS];
        specific[(ICH9_PMBASE - SPECIFIC_START) / 4] = PMBASE_RTE;
        specific[(PIRQ_A - SPECIFIC_START) / 4] = PIRQ_DEFAULT;
        specific[(PIRQ_E - SPECIFIC_START) / 4] = PIRQ_DEFAULT;
        specific
    }

    /// A platform reset: the device-specific registers back to their defaults (the PM block
    /// leaves the port bus until the guest enables it again) and the PM registers cleared.
    pub fn reset(&mut self) {
        self.specific = Self::specific_defaults();
        self.place_pm();
        crate::bus::lock(&self.pm).reset();
    }

    fn reg(&self, offset: usize) -> u32 {
        self.specific[(offset - SPECIFIC_START) / 4]
    }

    /// Where the PM block should decode: PMBASE with ACPI_EN set.
    fn pm_base(&self) -> Option<u16> {
        let base = (self.reg(ICH9_PMBASE) & PMBASE_MASK) as u16;
        let enabled = self.reg(ICH9_ACPI_CNTL) as u8 & ACPI_CNTL_ACPI_EN != 0;
        (enabled && base != 0).then_some(base)
    }

    /// Moves the PM block to where PMBASE and ACPI_EN say.
    fn place_pm(&mut self) {
        let want = self.pm_base();
        if want == self.pm_at {
            return;
        }
        if let Some(old) = self.pm_at.take() {
            self.pio.remove(old.into());
        }
        if let Some(base) = want {
            match self
                .pio
                .insert(base.into(), pmio::PMIO_SIZE, self.pm.clone())
            {
                Ok(()) => {
                    log::info!(
                        "ICH9 LPC: PM block at {base:#x} (PM timer at {:#x})",
                        base + 8
                    );
                    self.pm_at = Some(base);
                }
                Err(e) => iommu::warn_limited!("ICH9 LPC: PMBASE {base:#x}: {e}; PM block off"),
            }
        }
    }

    /// The port the PM block decodes at, if any.
    pub fn pm_base_decoded(&self) -> Option<u16> {
        self.pm_at
    }
}

impl PciDevice for Ich9Lpc {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        match reg_idx.checked_mul(4) {
            Some(at) if (SPECIFIC_START..SPECIFIC_END).contains(&at) => self.reg(at),
            _ => self.config.read_register(reg_idx),
        }
    }

    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        let at = match reg_idx.checked_mul(4) {
            Some(at) if (SPECIFIC_START..SPECIFIC_END).contains(&at) => at,
            _ => return self.config.write_register(reg_idx, offset, data),
        };
        let Some(shift) = byte_shift(offset, data.len()) else {
            return;
        };
        let i = (at - SPECIFIC_START) / 4;
        let mut bytes = self.specific[i].to_le_bytes();
        bytes[shift..shift + data.len()].copy_from_slice(data);
        let mut v = u32::from_le_bytes(bytes);
        if at == ICH9_PMBASE {
            v = (v & PMBASE_MASK) | PMBASE_RTE;
        }
        self.specific[i] = v;
        if at == ICH9_PMBASE || at == ICH9_ACPI_CNTL {
            self.place_pm();
        }
    }

    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

impl Drop for Ich9Lpc {
    fn drop(&mut self) {
        if let Some(old) = self.pm_at.take() {
            self.pio.remove(old.into());
        }
    }
}

/// The reset control register (ICH9 datasheet 13.7.5, RST_CNT at port 0xCF9).
pub const RST_CNT_PORT: u16 = 0xcf9;
/// RST_CNT bits: SYS_RST (1) and FULL_RST (3) store; RST_CPU (2) resets.
const RST_CNT_SYS_RST: u8 = 1 << 1;
const RST_CNT_RST_CPU: u8 = 1 << 2;
const RST_CNT_FULL_RST: u8 = 1 << 3;

pub struct ResetControl {
    exit: Arc<dyn ExitHandler>,
    value: u8,
}

impl ResetControl {
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        ResetControl { exit, value: 0 }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.value;
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let v = data[0];
        if v & RST_CNT_RST_CPU != 0 {
            // As QEMU's ich9_rst_cnt_write: any reset type is a full machine reset.
            self.value = 0;
            self.exit.request_exit(VmExitRequest::Reset);
        } else {
            self.value = v & (RST_CNT_SYS_RST | RST_CNT_FULL_RST);
        }
    }
}

/// A shared handle to the PM block the LPC bridge places (for the device manager).
pub fn shared_pm(exit: Arc<dyn ExitHandler>) -> Arc<Mutex<pmio::Ich9Pm>> {
    Arc::new(Mutex::new(pmio::Ich9Pm::new(exit)))
}

/// Reads the PM timer through the port bus (for tests of the placement).
#[cfg(test)]
fn bus_read32(bus: &Bus, port: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    bus.read(port, &mut b).then(|| u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_control::test_utils::RecordingExit;

    fn lpc() -> (Ich9Lpc, Arc<Bus>, Arc<RecordingExit>) {
        let bus = Arc::new(Bus::new());
        let rec = Arc::new(RecordingExit::default());
        (Ich9Lpc::new(bus.clone(), shared_pm(rec.clone())), bus, rec)
    }

    fn write32(d: &mut Ich9Lpc, at: usize, v: u32) {
        d.write_config_register(at / 4, 0, &v.to_le_bytes());
    }

    #[test]
    fn lpc_reads_ich9_id_and_isa_bridge_class() {
        let (mut d, _, _) = lpc();
        assert_eq!(d.read_config_register(0), 0x2918_8086);
        assert_eq!(d.read_config_register(2) >> 8, 0x06_01_00);
    }

    #[test]
    fn lpc_pmbase_defaults_to_rte_and_masks_low_bits() {
        let (mut d, _, _) = lpc();
        assert_eq!(d.read_config_register(ICH9_PMBASE / 4), 1);
        write32(&mut d, ICH9_PMBASE, 0x0601);
        assert_eq!(d.read_config_register(ICH9_PMBASE / 4), 0x601);
        write32(&mut d, ICH9_PMBASE, 0xffff_ffff);
        assert_eq!(d.read_config_register(ICH9_PMBASE / 4), 0xff81);
    }

    #[test]
    fn lpc_pm_block_decodes_only_with_acpi_en() {
        let (mut d, bus, _) = lpc();
        // OVMF's SEC sequence: PMBASE = 0x600, then ACPI_CNTL |= ACPI_EN.
        write32(&mut d, ICH9_PMBASE, 0x601);
        assert_eq!(bus_read32(&bus, 0x608), None, "not decoded before ACPI_EN");
        d.write_config_register(ICH9_ACPI_CNTL / 4, 0, &[ACPI_CNTL_ACPI_EN]);
        assert_eq!(d.pm_base_decoded(), Some(0x600));
        assert!(bus_read32(&bus, 0x608).is_some(), "PM timer at PMBASE + 8");
        // Moving PMBASE moves the block.
        write32(&mut d, ICH9_PMBASE, 0xb001);
        assert_eq!(bus_read32(&bus, 0x608), None);
        assert!(bus_read32(&bus, 0xb008).is_some());
        d.write_config_register(ICH9_ACPI_CNTL / 4, 0, &[0]);
        assert_eq!(bus_read32(&bus, 0xb008), None, "ACPI_EN clear: off");
    }

    #[test]
    fn lpc_pm1_cnt_at_pmbase_powers_off() {
        let (mut d, bus, rec) = lpc();
        write32(&mut d, ICH9_PMBASE, 0x601);
        d.write_config_register(ICH9_ACPI_CNTL / 4, 0, &[ACPI_CNTL_ACPI_EN]);
        // OVMF ResetShutdown: PM1_CNT = SLP_TYP 0, then | SLP_EN.
        assert!(bus.write(0x604, &0u16.to_le_bytes()));
        assert!(bus.write(0x604, &pmio::PM1_CNT_SLP_EN.to_le_bytes()));
        assert_eq!(*rec.0.lock().unwrap(), vec![VmExitRequest::PowerOff]);
    }

    #[test]
    fn lpc_pirq_rcba_store_with_defaults() {
        let (mut d, _, _) = lpc();
        assert_eq!(d.read_config_register(PIRQ_A / 4), PIRQ_DEFAULT);
        d.write_config_register(PIRQ_A / 4, 0, &[0x0a, 0x0a, 0x0b, 0x0b]);
        assert_eq!(d.read_config_register(PIRQ_A / 4), 0x0b0b_0a0a);
        write32(&mut d, 0xf0, 0xfed1_c001);
        assert_eq!(d.read_config_register(0xf0 / 4), 0xfed1_c001);
    }

    #[test]
    fn lpc_command_register_takes_io_and_memory() {
        let (mut d, _, _) = lpc();
        d.write_config_register(1, 0, &[0x07, 0x00]);
        assert_eq!(
            d.read_config_register(1) & 0x3,
            0x3,
            "SioBusDxe wants IO+MEM"
        );
    }

    #[test]
    fn rst_cnt_bit2_resets_and_other_bits_store() {
        let rec = Arc::new(RecordingExit::default());
        let mut r = ResetControl::new(rec.clone());
        r.write(0, &[0x02]);
        let mut b = [0u8];
        r.read(0, &mut b);
        assert_eq!(b[0], 0x02);
        assert!(rec.0.lock().unwrap().is_empty());
        // OVMF ResetCold writes 0x06.
        r.write(0, &[0x06]);
        assert_eq!(*rec.0.lock().unwrap(), vec![VmExitRequest::Reset]);
    }

    #[test]
    fn lpc_reset_turns_the_pm_block_off_and_restores_defaults() {
        let (mut d, bus, _) = lpc();
        write32(&mut d, ICH9_PMBASE, 0x601);
        d.write_config_register(ICH9_ACPI_CNTL / 4, 0, &[ACPI_CNTL_ACPI_EN]);
        assert!(bus.write(0x604, &pmio::PM1_CNT_SCI_EN.to_le_bytes()));
        d.write_config_register(PIRQ_A / 4, 0, &[0x0a]);
        d.reset();
        assert_eq!(bus_read32(&bus, 0x608), None, "PM block off");
        assert_eq!(d.read_config_register(ICH9_PMBASE / 4), 1);
        assert_eq!(d.read_config_register(PIRQ_A / 4), PIRQ_DEFAULT);
        write32(&mut d, ICH9_PMBASE, 0x601);
        d.write_config_register(ICH9_ACPI_CNTL / 4, 0, &[ACPI_CNTL_ACPI_EN]);
        let mut b = [0u8; 2];
        assert!(bus.read(0x604, &mut b));
        assert_eq!(b, [0, 0], "SCI_EN cleared");
    }

    #[test]
    fn lpc_drop_takes_pm_block_off_the_bus() {
        let (mut d, bus, _) = lpc();
        write32(&mut d, ICH9_PMBASE, 0x601);
        d.write_config_register(ICH9_ACPI_CNTL / 4, 0, &[ACPI_CNTL_ACPI_EN]);
        drop(d);
        assert_eq!(bus_read32(&bus, 0x608), None);
    }
}
