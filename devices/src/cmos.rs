//! A minimal MC146818 RTC and CMOS memory at ports 0x70/0x71 (MC146818A datasheet; CMOS layout
//! as QEMU's hw/rtc/mc146818rtc.c and hw/i386/pc.c pc_cmos_init fill it).
//!
//! The clock reads the host's UTC time at each access, in BCD or binary and 24-hour mode as
//! register B says; the update-in-progress bit is never set and register D's valid-RAM-and-time
//! bit always is, so OVMF's PcRtc (PcatRealTimeClockRuntimeDxe) reads the time at once
//! instead of timing out. Writes to the time registers are dropped (the guest cannot move
//! the host's clock; SetTime does not persist). Alarms and periodic interrupts are not
//! emulated (register C reads 0). The memory-size bytes are what QEMU stores, for firmware
//! that sizes RAM from CMOS.
//!
//! The date arithmetic (days since 1970 to a civil date) is the ten-line algorithm of
//! H. Hinnant's "chrono-Compatible Low-Level Date Algorithms", rather than a date crate for
//! one conversion.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Ports 0x70 (index, bit 7 masks NMI) and 0x71 (data).
pub const CMOS_PORT: u16 = 0x70;
pub const CMOS_PORT_SIZE: u64 = 2;
/// Register indexes (MC146818A table 2).
const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const DAY_OF_WEEK: usize = 0x06;
const DAY_OF_MONTH: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
pub const REG_A: usize = 0x0a;
pub const REG_B: usize = 0x0b;
pub const REG_C: usize = 0x0c;
pub const REG_D: usize = 0x0d;
/// Century (the byte QEMU and the ACPI FADT CENTURY field use).
pub const CENTURY: usize = 0x32;
/// Register A: UIP (bit 7, never set here); the rest (divider, rate) stores. Reset value as
/// QEMU's: 32.768 kHz divider, 1024 Hz rate.
const REG_A_UIP: u8 = 1 << 7;
const REG_A_DEFAULT: u8 = 0x26;
/// Register B: DM (bit 2, binary instead of BCD), 24/12 (bit 1, 24-hour).
const REG_B_DM_BINARY: u8 = 1 << 2;
const REG_B_24H: u8 = 1 << 1;
const REG_B_DEFAULT: u8 = REG_B_24H;
/// Register D: VRT (bit 7), valid RAM and time.
const REG_D_VRT: u8 = 1 << 7;
/// Memory-size bytes (QEMU pc_cmos_init).
const BASE_MEM_KB: usize = 0x15;
const EXT_MEM_KB: usize = 0x17;
const EXT_MEM_KB_ALT: usize = 0x30;
const MEM_ABOVE_16M: usize = 0x34;
const MEM_ABOVE_4G: usize = 0x5b;
const SMP_CPUS: usize = 0x5f;

/// A clock giving the time since the Unix epoch (a fixed one in tests).
pub type WallClock = Box<dyn Fn() -> Duration + Send>;

pub struct Cmos {
    index: usize,
    mem: [u8; 128],
    clock: WallClock,
}

impl Cmos {
    /// CMOS describing `low_ram` bytes below 4 GiB, `high_ram` above, and `cpus` CPUs, with
    /// the clock on the host's time.
    pub fn new(low_ram: u64, high_ram: u64, cpus: u8) -> Self {
        Self::with_clock(
            low_ram,
            high_ram,
            cpus,
            Box::new(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
            }),
        )
    }

    pub fn with_clock(low_ram: u64, high_ram: u64, cpus: u8, clock: WallClock) -> Self {
        let mut mem = [0u8; 128];
        mem[REG_A] = REG_A_DEFAULT;
        mem[REG_B] = REG_B_DEFAULT;
        mem[REG_D] = REG_D_VRT;
        mem[BASE_MEM_KB..BASE_MEM_KB + 2].copy_from_slice(&640u16.to_le_bytes());
        let ext_kb = (low_ram / 1024).saturating_sub(1024).min(0xffff) as u16;
        mem[EXT_MEM_KB..EXT_MEM_KB + 2].copy_from_slice(&ext_kb.to_le_bytes());
        mem[EXT_MEM_KB_ALT..EXT_MEM_KB_ALT + 2].copy_from_slice(&ext_kb.to_le_bytes());
        let above_16m = (low_ram.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        mem[MEM_ABOVE_16M..MEM_ABOVE_16M + 2].copy_from_slice(&above_16m.to_le_bytes());
        let above_4g = (high_ram >> 16).min(0xff_ffff) as u32;
        mem[MEM_ABOVE_4G..MEM_ABOVE_4G + 3].copy_from_slice(&above_4g.to_le_bytes()[..3]);
        mem[SMP_CPUS] = cpus.saturating_sub(1);
        Cmos {
            index: 0,
            mem,
            clock,
        }
    }

    /// A time register's value in the format register B selects.
    fn encode(&self, v: u8) -> u8 {
        if self.mem[REG_B] & REG_B_DM_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn hours(&self, h: u8) -> u8 {
        if self.mem[REG_B] & REG_B_24H != 0 {
            return self.encode(h);
        }
        // 12-hour mode: 12, 1..11, PM in bit 7.
        let twelve = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(twelve) | if h >= 12 { 0x80 } else { 0 }
    }

    fn read_register(&self, index: usize) -> u8 {
        let secs = (self.clock)().as_secs();
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        match index {
            SECONDS => self.encode((rem % 60) as u8),
            MINUTES => self.encode((rem / 60 % 60) as u8),
            HOURS => self.hours((rem / 3600) as u8),
            // 1970-01-01 was a Thursday; Sunday is 1.
            DAY_OF_WEEK => self.encode(((days + 4).rem_euclid(7) + 1) as u8),
            DAY_OF_MONTH => self.encode(d),
            MONTH => self.encode(m),
            YEAR => self.encode((y % 100) as u8),
            CENTURY => self.encode((y / 100) as u8),
            REG_A => self.mem[REG_A] & !REG_A_UIP,
            REG_C => 0,
            REG_D => REG_D_VRT,
            i => self.mem[i & 0x7f],
        }
    }

    fn write_register(&mut self, index: usize, v: u8) {
        match index {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {}
            REG_A => self.mem[REG_A] = v & !REG_A_UIP,
            REG_C | REG_D => {}
            i => self.mem[i & 0x7f] = v,
        }
    }
}

/// (year, month 1..=12, day 1..=31) of `days` since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset == 1 {
            data[0] = self.read_register(self.index);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            // Bit 7 masks NMI; there is no NMI source to mask.
            0 => self.index = usize::from(data[0] & 0x7f),
            1 => self.write_register(self.index, data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05 07:21:30 UTC, a Saturday.
    const NOW: u64 = 1_796_455_290;

    fn cmos() -> Cmos {
        Cmos::with_clock(
            0xb000_0000,
            1 << 30,
            4,
            Box::new(|| Duration::from_secs(NOW)),
        )
    }

    fn reg(c: &mut Cmos, i: u8) -> u8 {
        c.write(0, &[i | 0x80]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn cmos_time_reads_bcd_24h_from_the_clock() {
        let mut c = cmos();
        let got: Vec<u8> = [0u8, 2, 4, 6, 7, 8, 9, 0x32]
            .iter()
            .map(|&i| reg(&mut c, i))
            .collect();
        assert_eq!(got, vec![0x30, 0x21, 0x07, 0x07, 0x05, 0x12, 0x26, 0x20]);
    }

    #[test]
    fn cmos_binary_and_12_hour_modes_follow_register_b() {
        let mut c = cmos();
        c.write(0, &[REG_B as u8]);
        c.write(1, &[REG_B_DM_BINARY]);
        assert_eq!(reg(&mut c, 0), 30);
        assert_eq!(reg(&mut c, 4), 7, "7 AM, 12-hour binary");
        assert_eq!(reg(&mut c, 9), 26);
    }

    #[test]
    fn cmos_status_registers_say_valid_and_never_updating() {
        let mut c = cmos();
        assert_eq!(reg(&mut c, REG_A as u8), 0x26);
        c.write(0, &[REG_A as u8]);
        c.write(1, &[0xa6]);
        assert_eq!(reg(&mut c, REG_A as u8), 0x26, "UIP cannot be set");
        assert_eq!(reg(&mut c, REG_B as u8), 0x02);
        assert_eq!(reg(&mut c, REG_C as u8), 0);
        assert_eq!(reg(&mut c, REG_D as u8), 0x80);
    }

    #[test]
    fn cmos_time_writes_are_dropped_memory_writes_store() {
        let mut c = cmos();
        c.write(0, &[0]);
        c.write(1, &[0x59]);
        assert_eq!(reg(&mut c, 0), 0x30);
        // PlatformPei's boot mode byte 0x0F.
        c.write(0, &[0x0f]);
        c.write(1, &[0xfe]);
        assert_eq!(reg(&mut c, 0x0f), 0xfe);
    }

    #[test]
    fn cmos_memory_size_bytes_as_qemu_fills_them() {
        let mut c = cmos();
        // (0xB0000000 - 16 MiB) / 64 KiB = 0xAF00.
        assert_eq!((reg(&mut c, 0x34), reg(&mut c, 0x35)), (0x00, 0xaf));
        // 1 GiB above 4 GiB / 64 KiB = 0x4000.
        let high: Vec<u8> = (0x5bu8..=0x5d).map(|i| reg(&mut c, i)).collect();
        assert_eq!(high, vec![0x00, 0x40, 0x00]);
        assert_eq!(
            (reg(&mut c, 0x15), reg(&mut c, 0x16)),
            (0x80, 0x02),
            "640 KiB"
        );
        assert_eq!(
            (reg(&mut c, 0x17), reg(&mut c, 0x18)),
            (0xff, 0xff),
            "capped"
        );
        assert_eq!(reg(&mut c, 0x5f), 3);
    }

    #[test]
    fn cmos_civil_dates_cross_leap_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
    }
}
