//! What a vCPU does with a KVM exit: a free function over the buses, testable without a VM.

use devices::bus::Bus;
use log::{debug, trace};

/// The subset of KVM exits minivmm handles, with their data, independent of kvm-ioctls types.
#[derive(Debug)]
pub enum Exit<'a> {
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    /// KVM_EXIT_IOAPIC_EOI: a level-triggered vector was EOIed in a local APIC.
    IoapicEoi(u8),
    /// KVM_EXIT_SHUTDOWN: triple fault.
    Shutdown,
    /// KVM_EXIT_SYSTEM_EVENT with its type.
    SystemEvent(u32),
    Hlt,
    /// Interrupted by a signal (a kick): check for a stop request.
    Interrupted,
}

/// What the vCPU loop should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// The guest asked to stop the VM.
    Stop(StopReason),
}

/// Why a guest stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    PowerOff,
    Reset,
    GuestPanic,
    /// The CPU shut down (a triple fault); the vCPU's last port or MMIO access, if any.
    TripleFault(Option<LastAccess>),
    DebugExit(u32),
    /// minivmm was asked to stop (SIGTERM, SIGINT, SIGHUP).
    Signal(i32),
    /// A vCPU failed in a way the guest cannot continue from.
    Error(String),
    /// The monitor's `quit`.
    Quit,
    /// The monitor's `system_reset`: minivmm resets by ending, as for a guest reboot.
    HostReset,
}

impl StopReason {
    /// The process exit status minivmm ends with.
    pub fn exit_status(&self) -> i32 {
        match self {
            StopReason::PowerOff | StopReason::Reset | StopReason::Quit | StopReason::HostReset => {
                0
            }
            StopReason::GuestPanic | StopReason::TripleFault(_) | StopReason::Error(_) => 1,
            StopReason::DebugExit(code) => *code as i32,
            StopReason::Signal(sig) => 128 + sig,
        }
    }

    /// The line printed on stderr when the VM ends, if any.
    pub fn message(&self) -> Option<String> {
        match self {
            StopReason::PowerOff
            | StopReason::Reset
            | StopReason::DebugExit(_)
            | StopReason::Quit
            | StopReason::HostReset => None,
            StopReason::GuestPanic => Some("the guest kernel panicked".into()),
            StopReason::TripleFault(last) => Some(format!(
                "the guest triple-faulted (CPU shutdown); last device access: {}",
                last.map_or("none".into(), |a| a.to_string())
            )),
            StopReason::Error(e) => Some(format!("error: {e}")),
            StopReason::Signal(sig) => Some(format!("stopped by signal {sig}; devices released")),
        }
    }
}

/// A vCPU's port or MMIO access, kept so that a triple fault can name the last one (what an
/// early firmware fault was doing with the platform).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastAccess {
    pub mmio: bool,
    pub write: bool,
    pub addr: u64,
    pub len: usize,
    /// The value written (little-endian, `len` bytes), for writes.
    pub value: u64,
}

impl LastAccess {
    /// The access `exit` makes, if it is a port or MMIO access.
    pub fn of(exit: &Exit<'_>) -> Option<LastAccess> {
        let value = |d: &[u8]| {
            let mut v = [0u8; 8];
            let n = d.len().min(8);
            v[..n].copy_from_slice(&d[..n]);
            u64::from_le_bytes(v)
        };
        let (mmio, write, addr, len, value) = match exit {
            Exit::IoIn(p, d) => (false, false, u64::from(*p), d.len(), 0),
            Exit::IoOut(p, d) => (false, true, u64::from(*p), d.len(), value(d)),
            Exit::MmioRead(a, d) => (true, false, *a, d.len(), 0),
            Exit::MmioWrite(a, d) => (true, true, *a, d.len(), value(d)),
            _ => return None,
        };
        Some(LastAccess {
            mmio,
            write,
            addr,
            len,
            value,
        })
    }
}

impl std::fmt::Display for LastAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let space = if self.mmio { "MMIO" } else { "port" };
        if self.write {
            write!(
                f,
                "{}-byte {space} write of {:#x} to {:#x}",
                self.len, self.value, self.addr
            )
        } else {
            write!(f, "{}-byte {space} read at {:#x}", self.len, self.addr)
        }
    }
}

/// KVM_SYSTEM_EVENT types (include/uapi/linux/kvm.h).
pub const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
pub const SYSTEM_EVENT_RESET: u32 = 2;
pub const SYSTEM_EVENT_CRASH: u32 = 3;

/// Receives IOAPIC EOIs (the userspace IOAPIC).
pub trait EoiHandler {
    fn end_of_interrupt(&self, vector: u8);
}

/// Handles one exit against the port-I/O and MMIO buses. Unclaimed reads return all-ones and
/// unclaimed writes are dropped, as on a PC with nothing decoding the address.
pub fn handle_exit(exit: Exit<'_>, pio: &Bus, mmio: &Bus, eoi: &dyn EoiHandler) -> Action {
    trace!("exit {exit:?}");
    match exit {
        Exit::IoIn(port, data) => {
            if !pio.read(port.into(), data) {
                data.fill(0xff);
            }
        }
        Exit::IoOut(port, data) => {
            if !pio.write(port.into(), data) {
                debug!("unclaimed port write {port:#x} {data:x?}");
            }
        }
        Exit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                debug!("unclaimed MMIO read {addr:#x}");
                data.fill(0xff);
            }
        }
        Exit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                debug!("unclaimed MMIO write {addr:#x} {data:x?}");
            }
        }
        Exit::IoapicEoi(vector) => eoi.end_of_interrupt(vector),
        Exit::Shutdown => return Action::Stop(StopReason::TripleFault(None)),
        Exit::SystemEvent(SYSTEM_EVENT_SHUTDOWN) => return Action::Stop(StopReason::PowerOff),
        Exit::SystemEvent(SYSTEM_EVENT_RESET) => return Action::Stop(StopReason::Reset),
        Exit::SystemEvent(SYSTEM_EVENT_CRASH) => return Action::Stop(StopReason::GuestPanic),
        Exit::SystemEvent(other) => {
            return Action::Stop(StopReason::Error(format!(
                "unknown KVM system event {other}"
            )))
        }
        // With the LAPIC in KVM, HLT is handled in the kernel; seeing it means a halted vCPU
        // with nothing to wake it, which is not an error by itself.
        Exit::Hlt | Exit::Interrupted => {}
    }
    Action::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::BusDevice;
    use std::cell::Cell;
    use std::sync::{Arc, Mutex};

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[derive(Default)]
    struct Eoi(Cell<Option<u8>>);
    impl EoiHandler for Eoi {
        fn end_of_interrupt(&self, vector: u8) {
            self.0.set(Some(vector));
        }
    }

    fn buses() -> (Bus, Bus) {
        let pio = Bus::new();
        pio.insert(0x3f8, 8, Arc::new(Mutex::new(Reg(0x11))))
            .unwrap();
        let mmio = Bus::new();
        mmio.insert(0xfec0_0000, 0x1000, Arc::new(Mutex::new(Reg(0x22))))
            .unwrap();
        (pio, mmio)
    }

    #[test]
    fn exit_pio_goes_to_device_and_unclaimed_reads_all_ones() {
        let (pio, mmio) = buses();
        let eoi = Eoi::default();
        let mut b = [0u8; 1];
        assert_eq!(
            handle_exit(Exit::IoIn(0x3f8, &mut b), &pio, &mmio, &eoi),
            Action::Continue
        );
        assert_eq!(b, [0x11]);
        let mut b = [0u8; 2];
        handle_exit(Exit::IoIn(0x80, &mut b), &pio, &mmio, &eoi);
        assert_eq!(b, [0xff, 0xff]);
        handle_exit(Exit::IoOut(0x3f9, &[0x33]), &pio, &mmio, &eoi);
        let mut b = [0u8; 1];
        handle_exit(Exit::IoIn(0x3f8, &mut b), &pio, &mmio, &eoi);
        assert_eq!(b, [0x33]);
    }

    #[test]
    fn exit_mmio_unclaimed_read_is_all_ones() {
        let (pio, mmio) = buses();
        let eoi = Eoi::default();
        let mut b = [0u8; 4];
        handle_exit(Exit::MmioRead(0xfec0_0010, &mut b), &pio, &mmio, &eoi);
        assert_eq!(b, [0x22; 4]);
        handle_exit(Exit::MmioRead(0xd000_0000, &mut b), &pio, &mmio, &eoi);
        assert_eq!(b, [0xff; 4]);
        assert_eq!(
            handle_exit(Exit::MmioWrite(0xd000_0000, &[1]), &pio, &mmio, &eoi),
            Action::Continue
        );
    }

    #[test]
    fn exit_reaches_a_range_inserted_and_misses_one_removed_while_running() {
        let (pio, mmio) = buses();
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        let manager = mmio.clone();
        let eoi = Eoi::default();
        let mut b = [0u8; 4];
        handle_exit(Exit::MmioRead(0xc000_0000, &mut b), &pio, &mmio, &eoi);
        assert_eq!(b, [0xff; 4]);
        manager
            .insert(0xc000_0000, 0x1000, Arc::new(Mutex::new(Reg(0x44))))
            .unwrap();
        handle_exit(Exit::MmioRead(0xc000_0000, &mut b), &pio, &mmio, &eoi);
        assert_eq!(b, [0x44; 4]);
        assert!(manager.remove(0xc000_0000).is_some());
        handle_exit(Exit::MmioRead(0xc000_0000, &mut b), &pio, &mmio, &eoi);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn exit_ioapic_eoi_reaches_ioapic() {
        let (pio, mmio) = buses();
        let eoi = Eoi::default();
        handle_exit(Exit::IoapicEoi(0x41), &pio, &mmio, &eoi);
        assert_eq!(eoi.0.get(), Some(0x41));
    }

    #[test]
    fn exit_shutdown_and_system_events_stop_with_status() {
        let (pio, mmio) = buses();
        let eoi = Eoi::default();
        let stop = |e| match handle_exit(e, &pio, &mmio, &eoi) {
            Action::Stop(r) => r,
            Action::Continue => panic!("expected a stop"),
        };
        assert_eq!(stop(Exit::Shutdown), StopReason::TripleFault(None));
        assert_eq!(
            stop(Exit::SystemEvent(SYSTEM_EVENT_SHUTDOWN)),
            StopReason::PowerOff
        );
        assert_eq!(
            stop(Exit::SystemEvent(SYSTEM_EVENT_RESET)),
            StopReason::Reset
        );
        assert_eq!(
            stop(Exit::SystemEvent(SYSTEM_EVENT_CRASH)),
            StopReason::GuestPanic
        );
        assert!(matches!(stop(Exit::SystemEvent(99)), StopReason::Error(_)));
    }

    #[test]
    fn stop_reason_exit_status() {
        assert_eq!(StopReason::PowerOff.exit_status(), 0);
        assert_eq!(StopReason::Reset.exit_status(), 0);
        assert_eq!(StopReason::GuestPanic.exit_status(), 1);
        assert_eq!(StopReason::TripleFault(None).exit_status(), 1);
        assert_eq!(StopReason::DebugExit(7).exit_status(), 7);
        assert!(StopReason::TripleFault(None).message().is_some());
        assert!(StopReason::PowerOff.message().is_none());
    }

    #[test]
    fn triple_fault_message_names_the_last_access() {
        let w = LastAccess::of(&Exit::IoOut(0x604, &[0x00, 0x20])).unwrap();
        let m = StopReason::TripleFault(Some(w)).message().unwrap();
        assert!(
            m.ends_with("last device access: 2-byte port write of 0x2000 to 0x604"),
            "{m}"
        );
        let mut b = [0u8; 4];
        let r = LastAccess::of(&Exit::MmioRead(0xfed4_0000, &mut b)).unwrap();
        assert_eq!(r.to_string(), "4-byte MMIO read at 0xfed40000");
        assert_eq!(LastAccess::of(&Exit::Hlt), None);
        let none = StopReason::TripleFault(None).message().unwrap();
        assert!(none.ends_with("last device access: none"), "{none}");
    }
}
