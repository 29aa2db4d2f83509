//! The ICH9 power-management I/O block at the LPC bridge's PMBASE (ICH9 datasheet section
//! 13.8.3; offsets as QEMU include/hw/acpi/ich9.h ICH9_PMIO_*): PM1 status/enable/control,
//! the ACPI PM timer and GPE0. OVMF takes every delay from the PM timer (edk2
//! OvmfPkg/Library/AcpiTimerLib) and powers off through PM1_CNT (ResetSystemLib
//! DxeResetShutdown.c: SLP_TYP 0 with SLP_EN).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::BusDevice;
use crate::vm_control::{ExitHandler, VmExitRequest};

/// Ports the block decodes (ICH9 datasheet: PMBASE is 128-byte aligned).
pub const PMIO_SIZE: u64 = 0x80;
/// Register offsets (QEMU ich9.h).
pub const PM1_STS: u64 = 0x00;
pub const PM1_EN: u64 = 0x02;
pub const PM1_CNT: u64 = 0x04;
pub const PM_TMR: u64 = 0x08;
pub const GPE0_STS: u64 = 0x20;
pub const GPE0_LEN: u64 = 0x10;
/// ACPI PM timer frequency (ACPI 6.5 section 4.8.3.3): 3.579545 MHz.
pub const PM_TIMER_HZ: u128 = 3_579_545;
/// The timer counts 24 bits (FADT TMR_VAL_EXT clear), as QEMU's.
const PM_TIMER_MASK: u32 = 0x00ff_ffff;
/// PM1_CNT bits (ACPI 6.5 table 4.13): SCI_EN, SLP_TYP (12:10), SLP_EN (13, write-only).
pub const PM1_CNT_SCI_EN: u16 = 1 << 0;
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7;
/// The SLP_TYP value that means S5 (soft off): 0 on QEMU's q35 (hw/acpi/core.c
/// acpi_pm1_cnt_write; the q35 DSDT's \_S5 is 0).
pub const S5_SLP_TYP: u16 = 0;

/// A monotonic clock the timer reads (a fake one in tests).
pub type Clock = Box<dyn Fn() -> Duration + Send>;

pub struct Ich9Pm {
    exit: Arc<dyn ExitHandler>,
    clock: Clock,
    /// Plain storage for the block; the timer and the write-1-to-clear bits are special.
    regs: [u8; PMIO_SIZE as usize],
}

impl Ich9Pm {
    /// The block with its timer on the host's monotonic clock.
    pub fn new(exit: Arc<dyn ExitHandler>) -> Self {
        let start = Instant::now();
        Self::with_clock(exit, Box::new(move || start.elapsed()))
    }

    pub fn with_clock(exit: Arc<dyn ExitHandler>, clock: Clock) -> Self {
        Ich9Pm {
            exit,
            clock,
            regs: [0; PMIO_SIZE as usize],
        }
    }

    /// A platform reset: every register cleared (the timer runs on).
    pub fn reset(&mut self) {
        self.regs = [0; PMIO_SIZE as usize];
    }

    /// The PM timer's value now: 3.579545 MHz ticks since the clock's zero, 24 bits.
    pub fn timer(&self) -> u32 {
        let ticks = (self.clock)().as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        (ticks as u32) & PM_TIMER_MASK
    }

    fn pm1_cnt(&self) -> u16 {
        u16::from_le_bytes([self.regs[PM1_CNT as usize], self.regs[PM1_CNT as usize + 1]])
    }

    fn byte(&self, at: u64, timer: u32) -> u8 {
        match at {
            PM_TMR..=0x0b => timer.to_le_bytes()[(at - PM_TMR) as usize],
            _ => self.regs.get(at as usize).copied().unwrap_or(0),
        }
    }
}

/// Status registers whose bits the guest clears by writing 1.
fn write_one_to_clear(at: u64) -> bool {
    at < PM1_EN || (GPE0_STS..GPE0_STS + GPE0_LEN / 2).contains(&at)
}

impl BusDevice for Ich9Pm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let timer = self.timer();
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.byte(offset + i as u64, timer);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let at = offset + i as u64;
            let Some(r) = self.regs.get_mut(at as usize) else {
                continue;
            };
            match at {
                PM_TMR..=0x0b => {} // read-only
                _ if write_one_to_clear(at) => *r &= !v,
                _ => *r = v,
            }
        }
        let cnt = self.pm1_cnt();
        if cnt & PM1_CNT_SLP_EN != 0 {
            // SLP_EN reads 0: it starts the transition and clears itself.
            self.regs[PM1_CNT as usize + 1] &= !((PM1_CNT_SLP_EN >> 8) as u8);
            let typ = (cnt >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
            if typ == S5_SLP_TYP {
                self.exit.request_exit(VmExitRequest::PowerOff);
            } else {
                iommu::warn_limited!("ICH9 PM1_CNT: sleep type {typ} is not supported; dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_control::test_utils::RecordingExit;
    use std::sync::Mutex;

    fn dev() -> (Ich9Pm, Arc<RecordingExit>, Arc<Mutex<Duration>>) {
        let rec = Arc::new(RecordingExit::default());
        let now = Arc::new(Mutex::new(Duration::ZERO));
        let n = now.clone();
        let d = Ich9Pm::with_clock(rec.clone(), Box::new(move || *n.lock().unwrap()));
        (d, rec, now)
    }

    fn read32(d: &mut Ich9Pm, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn pm_timer_counts_at_3579545_hz_in_24_bits() {
        let (mut d, _, now) = dev();
        assert_eq!(read32(&mut d, PM_TMR), 0);
        *now.lock().unwrap() = Duration::from_secs(1);
        assert_eq!(read32(&mut d, PM_TMR), 3_579_545 & PM_TIMER_MASK);
        *now.lock().unwrap() = Duration::from_micros(1000);
        assert_eq!(read32(&mut d, PM_TMR), 3579);
        // 2^24 ticks = 4.687 s: the counter wraps.
        *now.lock().unwrap() = Duration::from_secs(5);
        assert_eq!(read32(&mut d, PM_TMR), (5 * 3_579_545) & PM_TIMER_MASK);
    }

    #[test]
    fn pm_timer_writes_are_ignored() {
        let (mut d, _, now) = dev();
        *now.lock().unwrap() = Duration::from_millis(2);
        d.write(PM_TMR, &[0xff; 4]);
        assert_eq!(read32(&mut d, PM_TMR), 7159);
    }

    #[test]
    fn pm1_cnt_sci_en_stores_without_sleeping() {
        let (mut d, rec, _) = dev();
        // OVMF's PciAcpiInitialization: IoOr16(PMBASE + 4, SCI_EN).
        d.write(PM1_CNT, &PM1_CNT_SCI_EN.to_le_bytes());
        let mut b = [0u8; 2];
        d.read(PM1_CNT, &mut b);
        assert_eq!(u16::from_le_bytes(b), PM1_CNT_SCI_EN);
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn pm1_cnt_slp_en_with_type_0_powers_off() {
        let (mut d, rec, _) = dev();
        d.write(PM1_CNT, &(PM1_CNT_SCI_EN | PM1_CNT_SLP_EN).to_le_bytes());
        assert_eq!(*rec.0.lock().unwrap(), vec![VmExitRequest::PowerOff]);
        let mut b = [0u8; 2];
        d.read(PM1_CNT, &mut b);
        assert_eq!(u16::from_le_bytes(b), PM1_CNT_SCI_EN, "SLP_EN reads 0");
    }

    #[test]
    fn pm1_cnt_other_sleep_types_are_dropped() {
        let (mut d, rec, _) = dev();
        d.write(
            PM1_CNT,
            &((1 << SLP_TYP_SHIFT) | PM1_CNT_SLP_EN).to_le_bytes(),
        );
        assert!(rec.0.lock().unwrap().is_empty(), "S3 is not supported");
    }

    #[test]
    fn pm1_sts_is_write_one_to_clear_and_en_stores() {
        let (mut d, _, _) = dev();
        d.regs[0] = 0x31;
        d.write(PM1_STS, &[0x01, 0x00]);
        assert_eq!(d.regs[0], 0x30);
        d.write(PM1_EN, &[0x20, 0x01]);
        let mut b = [0u8; 2];
        d.read(PM1_EN, &mut b);
        assert_eq!(b, [0x20, 0x01]);
    }
}
