//! A stand-in for the BIOS at the real-mode reset vector. Linux falls back to "BIOS reboot"
//! (arch/x86/kernel/reboot.c, machine_real_restart: a far jump to F000:FFF0 in real mode) when
//! it believes EFI should reboot an ACPI hardware-reduced machine but finds no EFI runtime.
//! With nothing there the CPU would run zeros forever; this stub resets the machine through
//! the ACPI reset register instead, as a BIOS's reset path would.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::FirmwareError;

/// F000:FFF0, where real-mode execution starts after a reset.
pub const RESET_VECTOR: u64 = 0xffff0;

/// `mov dx, port; mov al, value; out dx, al; hlt; jmp $-1` (16-bit code).
pub fn stub(port: u16, value: u8) -> [u8; 10] {
    let [lo, hi] = port.to_le_bytes();
    [0xba, lo, hi, 0xb0, value, 0xee, 0xf4, 0xeb, 0xfd, 0x90]
}

/// Writes the stub at the reset vector.
pub fn write<M: GuestMemoryBackend>(mem: &M, port: u16, value: u8) -> Result<(), FirmwareError> {
    mem.write_slice(&stub(port, value), GuestAddress(RESET_VECTOR))
        .map_err(|_| FirmwareError::BootStructures("reset vector"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn reset_stub_writes_port_and_value() {
        assert_eq!(
            stub(0x604, 1),
            [0xba, 0x04, 0x06, 0xb0, 0x01, 0xee, 0xf4, 0xeb, 0xfd, 0x90]
        );
    }

    #[test]
    fn reset_stub_lands_at_f000_fff0_and_fits() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write(&mem, 0x604, 1).unwrap();
        let mut b = [0u8; 10];
        mem.read_slice(&mut b, GuestAddress(0xffff0)).unwrap();
        assert_eq!(b[0], 0xba);
        assert!(
            RESET_VECTOR + b.len() as u64 <= 0x10_0000,
            "within the first MiB"
        );
    }
}
