//! Coalesced port I/O (KVM_REGISTER_COALESCED_MMIO with the PIO flag, Documentation/virt/kvm
//! api.rst 4.116): guest writes to a chosen port go into a ring shared with KVM instead of
//! exiting, and minivmm applies them, in order, before it handles any exit (and on its
//! event-loop tick). Used for the UART's data register while the guest polls the line status:
//! each character Linux's console prints then costs one exit (the status poll) instead of two.

use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use devices::bus::{lock, Bus};
use devices::serial::TxBatching;
use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};
use kvm_ioctls::{IoEventAddress, VcpuFd, VmFd};
use log::warn;

/// The VM's coalesced I/O ring (one page shared with KVM).
pub struct CoalescedRing {
    ring: NonNull<kvm_coalesced_mmio_ring>,
    page_size: usize,
    /// Drains are serialised: vCPU threads and the event loop all drain.
    drain: Mutex<()>,
}

// SAFETY: the ring page is shared memory with no thread affinity; every access to it goes
// through `drain`, which holds the mutex, so the pointer may move to and be shared by threads.
unsafe impl Send for CoalescedRing {}
// SAFETY: as above: all reads and writes of the page happen under `drain`'s mutex.
unsafe impl Sync for CoalescedRing {}

impl CoalescedRing {
    /// Maps the ring through a vCPU's file descriptor (any vCPU gives the VM's ring).
    pub fn map(vcpu: &VcpuFd) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: sysconf with a valid name has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page_size <= 0 {
            return Err(std::io::Error::last_os_error());
        }
        let page_size = page_size as usize;
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * page_size as libc::off_t;
        // SAFETY: a fresh shared mapping of one page of the vCPU fd at the offset KVM documents
        // for the coalesced ring; the result is checked, and unmapped in Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ring = NonNull::new(addr.cast()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(CoalescedRing {
            ring,
            page_size,
            drain: Mutex::new(()),
        })
    }

    fn capacity(&self) -> u32 {
        ((self.page_size - std::mem::size_of::<kvm_coalesced_mmio_ring>())
            / std::mem::size_of::<kvm_coalesced_mmio>()) as u32
    }

    /// Whether entries are waiting (a peek without the lock).
    fn pending(&self) -> bool {
        let ring = self.ring.as_ptr();
        // SAFETY: `ring` points at the live ring page; these are plain volatile reads of two
        // u32 fields the kernel and `drain` update.
        let (first, last) = unsafe {
            (
                std::ptr::addr_of!((*ring).first).read_volatile(),
                std::ptr::addr_of!((*ring).last).read_volatile(),
            )
        };
        first != last
    }

    /// Applies every pending write to `pio`, oldest first.
    pub fn drain(&self, pio: &Bus) {
        if !self.pending() {
            return;
        }
        let _g = lock(&self.drain);
        let ring = self.ring.as_ptr();
        let max = self.capacity();
        loop {
            // SAFETY: `ring` points at the live ring page (mapped in `map`); the kernel writes
            // `last` and the entries, we own `first`; volatile accesses because the kernel
            // changes them behind our back.
            let (first, last) = unsafe {
                (
                    std::ptr::addr_of!((*ring).first).read_volatile(),
                    std::ptr::addr_of!((*ring).last).read_volatile(),
                )
            };
            if first == last || first >= max {
                return;
            }
            // The entry was written before `last` moved past it.
            fence(Ordering::Acquire);
            // SAFETY: `first < max`, so the entry lies inside the page.
            let e: kvm_coalesced_mmio = unsafe {
                std::ptr::addr_of!((*ring).coalesced_mmio)
                    .cast::<kvm_coalesced_mmio>()
                    .add(first as usize)
                    .read_volatile()
            };
            let len = (e.len as usize).min(e.data.len());
            pio.write(e.phys_addr, &e.data[..len]);
            fence(Ordering::Release);
            // SAFETY: as above; publishing our new `first` frees the slot for the kernel.
            unsafe { std::ptr::addr_of_mut!((*ring).first).write_volatile((first + 1) % max) };
        }
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        // SAFETY: the page was mapped in `map` with this size and is not used after this.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.page_size) };
    }
}

/// One port's writes batched through the ring while its device allows it.
pub struct CoalescedPort {
    vm: Arc<VmFd>,
    port: u16,
    ring: OnceLock<CoalescedRing>,
    registered: Mutex<bool>,
}

impl CoalescedPort {
    /// Batching for `port`, if KVM offers coalesced port I/O.
    pub fn new(kvm: &kvm_ioctls::Kvm, vm: Arc<VmFd>, port: u16) -> Option<Arc<Self>> {
        kvm.check_extension(kvm_ioctls::Cap::CoalescedPio).then(|| {
            Arc::new(CoalescedPort {
                vm,
                port,
                ring: OnceLock::new(),
                registered: Mutex::new(false),
            })
        })
    }

    /// Maps the ring (needs a vCPU); until then nothing is batched.
    pub fn attach(&self, vcpu: &VcpuFd) {
        match CoalescedRing::map(vcpu) {
            Ok(r) => {
                let _ = self.ring.set(r);
            }
            Err(e) => warn!("coalesced port I/O unavailable: {e}"),
        }
    }

    /// Applies what the guest wrote to the port so far.
    pub fn drain(&self, pio: &Bus) {
        if let Some(r) = self.ring.get() {
            r.drain(pio);
        }
    }
}

impl TxBatching for CoalescedPort {
    fn set(&self, on: bool) {
        if self.ring.get().is_none() && on {
            return;
        }
        let mut registered = lock(&self.registered);
        if *registered == on {
            return;
        }
        let addr = IoEventAddress::Pio(self.port.into());
        let r = if on {
            self.vm.register_coalesced_mmio(addr, 1)
        } else {
            self.vm.unregister_coalesced_mmio(addr, 1)
        };
        match r {
            Ok(()) => *registered = on,
            Err(e) => warn!("coalesced port I/O for {:#x}: {e}", self.port),
        }
    }
}
