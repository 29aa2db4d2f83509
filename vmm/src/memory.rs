//! Guest RAM: its anonymous host mappings, and the KVM memory slots that RAM and BAR mappings
//! (later firmware flash) take from one allocator.

use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_allocator::IdAllocator;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use crate::config::MemoryConfig;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "--memory {requested} MiB is more than this host can give ({available} MiB available)"
    )]
    TooLarge { requested: u64, available: u64 },
    #[error("Cannot allocate guest RAM: {0}")]
    Allocate(String),
    #[error("Cannot register guest RAM with KVM: {0}")]
    Register(#[source] kvm_ioctls::Error),
    #[error("KVM memory slots: {0}")]
    Slots(#[source] vm_allocator::Error),
}

/// KVM memory slot numbers (0 .. KVM_CAP_NR_MEMSLOTS): RAM, BAR mappings and, later, firmware
/// flash all take theirs here, so no two owners can pick the same one.
pub struct MemSlots(Mutex<IdAllocator>);

impl MemSlots {
    /// `count` slots, as KVM_CAP_NR_MEMSLOTS reports.
    pub fn new(count: usize) -> Result<Self, MemoryError> {
        let last = u32::try_from(count)
            .ok()
            .and_then(|c| c.checked_sub(1))
            .ok_or(MemoryError::Slots(vm_allocator::Error::InvalidSize(
                count as u64,
            )))?;
        Ok(MemSlots(Mutex::new(
            IdAllocator::new(0, last).map_err(MemoryError::Slots)?,
        )))
    }

    /// A free slot.
    pub fn allocate(&self) -> Result<u32, MemoryError> {
        lock(&self.0).allocate_id().map_err(MemoryError::Slots)
    }

    /// Gives `slot` back.
    pub fn free(&self, slot: u32) {
        if let Err(e) = lock(&self.0).free_id(slot) {
            log::warn!("KVM memory slot {slot}: {e}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// MemAvailable + SwapFree from /proc/meminfo, in bytes (None if unreadable).
fn host_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}

/// Maps guest RAM in this process.
pub fn create(config: &MemoryConfig) -> Result<GuestMemoryMmap, MemoryError> {
    let size = config.size;
    if let Some(avail) = host_available() {
        if size > avail {
            return Err(MemoryError::TooLarge {
                requested: size >> 20,
                available: avail >> 20,
            });
        }
    }
    let ranges: Vec<(GuestAddress, usize)> = config
        .ram_ranges()
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges)
        .map_err(|e| MemoryError::Allocate(format!("{e:?}")))?;
    for region in mem.iter() {
        advise_huge_pages(region.as_ptr(), region.len() as usize);
    }
    Ok(mem)
}

/// Asks for transparent huge pages on guest RAM (hosts whose THP mode is `madvise` give them
/// only on request): fewer host page faults while the guest touches its memory, and fewer,
/// larger pages for VFIO to pin and map. Advice only: a host without THP keeps small pages.
fn advise_huge_pages(addr: *mut u8, len: usize) {
    // SAFETY: madvise with MADV_HUGEPAGE changes no memory contents and no mapping, only how
    // the kernel backs this range, which `mem` owns; a failure leaves everything as it was.
    let r = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
    if r != 0 {
        log::debug!(
            "guest RAM: no transparent huge pages ({})",
            std::io::Error::last_os_error()
        );
    }
}

/// Registers every RAM region as a KVM memory slot.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap, slots: &MemSlots) -> Result<(), MemoryError> {
    for region in mem.iter() {
        let r = kvm_userspace_memory_region {
            slot: slots.allocate()?,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| MemoryError::Allocate(e.to_string()))?
                as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mapping owned by `mem`, which the VM outlives only
        // after all vCPUs have stopped (the VMM drops the VM before the memory).
        unsafe { vm.set_user_memory_region(r) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

/// Maps a firmware image read-only so that it ends at 4 GiB (QEMU hw/i386/x86.c
/// x86_bios_rom_init): a KVM_MEM_READONLY slot, so guest reads come straight from it and
/// guest writes exit as MMIO writes, which nothing claims (dropped, as on a ROM). Returns the
/// mapping, which must outlive the VM.
pub fn map_firmware(
    vm: &VmFd,
    slots: &MemSlots,
    image: &[u8],
) -> Result<GuestMemoryMmap, MemoryError> {
    let size = image.len() as u64;
    let start = crate::layout::RAM_HIGH_START - size;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(start), image.len())])
        .map_err(|e| MemoryError::Allocate(format!("{e:?}")))?;
    mem.write_slice(image, GuestAddress(start))
        .map_err(|e| MemoryError::Allocate(e.to_string()))?;
    let region = mem
        .iter()
        .next()
        .ok_or_else(|| MemoryError::Allocate("no firmware region".into()))?;
    let r = kvm_userspace_memory_region {
        slot: slots.allocate()?,
        guest_phys_addr: start,
        memory_size: size,
        userspace_addr: region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Allocate(e.to_string()))? as u64,
        flags: kvm_bindings::KVM_MEM_READONLY,
    };
    // SAFETY: the host range is a live mapping owned by `mem`, which the caller keeps until
    // the VM is gone (as guest RAM).
    unsafe { vm.set_user_memory_region(r) }.map_err(MemoryError::Register)?;
    Ok(mem)
}

/// BARs mapped into the guest as KVM memory slots.
pub struct KvmMmioMapper {
    vm: Arc<VmFd>,
    slots: Arc<MemSlots>,
}

impl KvmMmioMapper {
    pub fn new(vm: Arc<VmFd>, slots: Arc<MemSlots>) -> Self {
        KvmMmioMapper { vm, slots }
    }

    fn set(&self, slot: u32, gpa: u64, size: u64, host: usize) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: `host..host + size` is a live mmap() of a VFIO region owned by the device,
        // which removes the slot (size 0 here) before it unmaps the region; a size of 0 only
        // deletes the slot.
        unsafe { self.vm.set_user_memory_region(region) }
    }
}

impl devices::vfio::GuestMmioMapper for KvmMmioMapper {
    fn map(&self, gpa: u64, size: u64, host: usize) -> Result<u32, String> {
        let slot = self.slots.allocate().map_err(|e| e.to_string())?;
        if let Err(e) = self.set(slot, gpa, size, host) {
            self.slots.free(slot);
            return Err(e.to_string());
        }
        Ok(slot)
    }

    fn unmap(&self, slot: u32) {
        if let Err(e) = self.set(slot, 0, 0, 0) {
            log::warn!("KVM: removing BAR memory slot {slot}: {e}");
        }
        self.slots.free(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memslots_are_unique_until_freed() {
        let slots = MemSlots::new(3).unwrap();
        let (a, b, c) = (
            slots.allocate().unwrap(),
            slots.allocate().unwrap(),
            slots.allocate().unwrap(),
        );
        assert_eq!((a, b, c), (0, 1, 2));
        assert!(matches!(slots.allocate(), Err(MemoryError::Slots(_))));
        slots.free(b);
        assert_eq!(slots.allocate().unwrap(), b);
    }

    #[test]
    fn memslots_zero_count_is_refused() {
        assert!(matches!(MemSlots::new(0), Err(MemoryError::Slots(_))));
    }

    #[test]
    fn guest_ram_asks_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            return; // no THP in this kernel: nothing to ask for
        }
        let mem = create(&MemoryConfig {
            size: 8 << 20,
            low_ram_end: crate::layout::LOW_RAM_END_MAX,
        })
        .unwrap();
        let start = mem.iter().next().unwrap().as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        // The VmFlags line of the mapping that starts at `start`.
        let header = format!("{start:x}-");
        let flags = smaps
            .lines()
            .skip_while(|l| !l.starts_with(&header))
            .find(|l| l.starts_with("VmFlags:"))
            .unwrap_or_default();
        assert!(
            flags.starts_with("VmFlags:") && flags.split_whitespace().any(|f| f == "hg"),
            "guest RAM at {start:#x} is not MADV_HUGEPAGE: {flags:?}"
        );
    }

    #[test]
    fn memory_larger_than_host_is_refused() {
        assert!(matches!(
            create(&MemoryConfig {
                size: 1 << 50,
                low_ram_end: crate::layout::LOW_RAM_END_MAX,
            }),
            Err(MemoryError::TooLarge { .. })
        ));
    }
}
