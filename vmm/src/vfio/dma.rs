//! A passed-through device's DMA on the host: the VFIO container follows what the guest lets
//! the device reach (all RAM at IOVA = GPA, or exactly the guest's mappings), and no failure
//! leaves the device able to reach more than the guest allows.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use devices::vfio::function::{HostFunction, CONFIG_REGION};
use iommu::{Bdf, MapEvent, Mapping};
use log::{debug, error};
use vfio_ioctls::VfioContainer;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::iommu::{ListenerError, MapListener};
use crate::state::VfioDmaState;

/// The host calls a device's DMA needs, behind a trait so that their failures can be tested
/// without /dev/vfio.
pub trait HostDma: Send + Sync {
    /// VFIO_IOMMU_MAP_DMA: `[iova, iova + size)` to the host memory at `host`.
    ///
    /// # Safety
    /// `host..host + size` must stay mapped, and only be accessed volatilely, until unmapped.
    unsafe fn map(
        &self,
        iova: u64,
        size: u64,
        host: *mut u8,
        read: bool,
        write: bool,
    ) -> io::Result<()>;
    /// VFIO_IOMMU_UNMAP_DMA of `[iova, iova + size)`, made of whole earlier maps.
    fn unmap(&self, iova: u64, size: u64) -> io::Result<()>;
    /// Stops the device reaching memory at all (a host mapping could not be removed).
    fn stop_device(&self);
}

/// Why a device's host mappings could not follow the guest's.
#[derive(Debug, thiserror::Error)]
pub enum VfioDmaError {
    #[error("VFIO: mapping guest memory for {0}: {1}")]
    Identity(String, String),
    #[error("VFIO_IOMMU_MAP_DMA {iova:#x}+{size:#x}: {err}")]
    Map {
        iova: u64,
        size: u64,
        err: io::Error,
    },
    #[error("Guest mapped IOVA {iova:#x} to {gpa:#x}, which is not RAM")]
    NotRam { iova: u64, gpa: u64 },
    #[error("VFIO_IOMMU_UNMAP_DMA {iova:#x}+{size:#x}: {err}; the device was stopped")]
    Unmap {
        iova: u64,
        size: u64,
        err: io::Error,
    },
}

impl From<VfioDmaError> for ListenerError {
    fn from(e: VfioDmaError) -> Self {
        ListenerError(e.to_string())
    }
}

/// One device's host container and what is mapped in it.
///
/// Failures never leave the device more than the guest allows: a map that fails part way is
/// undone and reported (the VT-d model then records a fault and retries on a later
/// invalidation); an unmap that fails stops the device (reset, bus mastering off, and bus
/// mastering refused from then on), since the guest believes the page is gone.
pub struct VfioDma {
    host: Arc<dyn HostDma>,
    mem: GuestMemoryMmap,
    device: String,
    state: Mutex<DmaState>,
    /// Signalled when a background identity mapping ends, however it ends.
    done: Condvar,
    /// Latched when the device was stopped because a host mapping could not be removed.
    stopped: AtomicBool,
}

#[derive(Default)]
struct DmaState {
    identity: bool,
    /// An identity mapping is being made on a background thread.
    pending: bool,
    /// The guest translates the device's DMA (the last pass-through event said so): it does
    /// not need the identity mapping.
    translated: bool,
    /// Why the last identity mapping failed.
    identity_error: Option<String>,
    /// Host mappings made for guest mappings (iova, size), for accounting.
    mappings: usize,
    /// Guest mappings the host refused.
    map_failures: u64,
    stats: DmaStats,
}

/// What following the guest's mappings has cost: VFIO calls made and the time spent in them.
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaStats {
    pub maps: u64,
    pub map_ns: u64,
    pub unmaps: u64,
    pub unmap_ns: u64,
    /// The largest single host mapping made for a guest mapping.
    pub largest: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ends a background identity mapping however its thread ends, by a panic too: the waiters
/// wake, and a failure is kept for them.
struct Settle<'a> {
    dma: &'a VfioDma,
    result: Option<Result<(), VfioDmaError>>,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.dma.state);
        st.pending = false;
        match self.result.take() {
            Some(Ok(())) => {
                st.identity = true;
                st.identity_error = None;
            }
            Some(Err(e)) => {
                error!("{e}; the device may not master until the guest translates its DMA");
                st.identity_error = Some(e.to_string());
            }
            None => {
                // What the thread had mapped is unknown: nothing can be trusted to be gone.
                st.identity_error = Some("the vfio-map thread panicked".into());
                drop(st);
                self.dma
                    .fail_closed("the vfio-map thread panicked while mapping guest RAM");
            }
        }
        self.dma.done.notify_all();
    }
}

impl VfioDma {
    pub fn new(host: Arc<dyn HostDma>, mem: GuestMemoryMmap, device: &str) -> Self {
        VfioDma {
            host,
            mem,
            device: device.to_string(),
            state: Mutex::new(DmaState::default()),
            done: Condvar::new(),
            stopped: AtomicBool::new(false),
        }
    }

    /// Waits until no background identity mapping is in flight; returns the state.
    fn settled(&self) -> MutexGuard<'_, DmaState> {
        let mut st = lock(&self.state);
        while st.pending {
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st
    }

    /// Stops the device reaching memory, once, with one line on stderr: a host mapping the
    /// guest believes gone could not be removed.
    fn fail_closed(&self, why: &str) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.host.stop_device();
        error!(
            "vfio {}: {why}; the device was reset and its bus mastering turned off for the rest of this run",
            self.device
        );
    }

    /// Starts mapping all guest RAM at IOVA = GPA on a thread of its own (pinning hundreds of
    /// MiB takes seconds, which the guest spends booting). Everything that changes the
    /// container, and the device's bus mastering (see `DmaGate`), waits for it.
    pub fn map_identity_in_background(self: &Arc<Self>) -> Result<(), VfioDmaError> {
        {
            let mut st = self.settled();
            if st.identity {
                return Ok(());
            }
            st.pending = true;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("vfio-map".into())
            .spawn(move || {
                crate::seccomp::device_thread_started("vfio-map");
                let mut settle = Settle {
                    dma: &me,
                    result: None,
                };
                let start = std::time::Instant::now();
                let r = me.map_ram();
                if r.is_ok() {
                    log::info!(
                        "vfio {}: guest RAM mapped at IOVA = GPA in {:.1}s",
                        me.device,
                        start.elapsed().as_secs_f64()
                    );
                }
                settle.result = Some(r);
            });
        if spawned.is_err() {
            lock(&self.state).pending = false;
            return self.map_identity();
        }
        Ok(())
    }

    /// Maps every region of guest RAM at IOVA = GPA, read-write; on failure, undoes the
    /// regions it mapped.
    fn map_ram(&self) -> Result<(), VfioDmaError> {
        let mut done = Vec::new();
        for region in self.mem.iter() {
            let gpa = region.start_addr().0;
            let r = match self.mem.get_host_address(region.start_addr()) {
                // SAFETY: guest RAM is mapped for the life of the VM and only ever accessed
                // through vm-memory's volatile accessors, never through Rust references, which
                // is what sharing it with a DMA-capable device requires. The mapping is removed
                // before the memory goes (unmap_identity, or the container's release at exit).
                Ok(host) => unsafe { self.host.map(gpa, region.len(), host, true, true) },
                Err(e) => Err(io::Error::other(e)),
            };
            if let Err(e) = r {
                self.undo(&done);
                return Err(VfioDmaError::Identity(self.device.clone(), e.to_string()));
            }
            done.push((gpa, region.len()));
        }
        Ok(())
    }

    /// Removes host mappings just made for a map that failed; one that will not go stops
    /// the device.
    fn undo(&self, done: &[(u64, u64)]) {
        for &(iova, size) in done {
            if let Err(e) = self.host.unmap(iova, size) {
                self.fail_closed(&format!(
                    "undoing a failed map: VFIO_IOMMU_UNMAP_DMA {iova:#x}+{size:#x}: {e}"
                ));
            }
        }
    }

    /// Maps all guest RAM at IOVA = GPA.
    pub fn map_identity(&self) -> Result<(), VfioDmaError> {
        let mut st = self.settled();
        if st.identity {
            return Ok(());
        }
        let r = self.map_ram();
        st.identity = r.is_ok();
        st.identity_error = r.as_ref().err().map(|e| e.to_string());
        r
    }

    /// Removes the identity mapping, every region of it; if a region will not go, the device
    /// is stopped and the mapping still counts as present.
    fn unmap_identity(&self, st: &mut DmaState) -> Result<(), VfioDmaError> {
        if !st.identity {
            return Ok(());
        }
        let mut failed = None;
        for region in self.mem.iter() {
            let (iova, size) = (region.start_addr().0, region.len());
            if let Err(err) = self.host.unmap(iova, size) {
                failed.get_or_insert(VfioDmaError::Unmap { iova, size, err });
            }
        }
        if let Some(e) = failed {
            self.fail_closed(&format!("removing the identity mapping of guest RAM: {e}"));
            return Err(e);
        }
        st.identity = false;
        Ok(())
    }

    /// Maps a guest mapping: each piece of its GPA range, which must all be RAM, at the
    /// matching IOVA. On failure nothing of it stays mapped.
    fn map(&self, m: &Mapping, st: &mut DmaState) -> Result<(), VfioDmaError> {
        let mut done = Vec::new();
        let r = self.map_pieces(m, st, &mut done);
        match r {
            Ok(()) => st.mappings += done.len(),
            Err(_) => {
                st.map_failures += 1;
                self.undo(&done);
            }
        }
        r
    }

    fn map_pieces(
        &self,
        m: &Mapping,
        st: &mut DmaState,
        done: &mut Vec<(u64, u64)>,
    ) -> Result<(), VfioDmaError> {
        let mut at = 0u64;
        while at < m.size {
            let (iova, gpa) = (m.iova.wrapping_add(at), m.gpa.checked_add(at));
            let not_ram = VfioDmaError::NotRam {
                iova,
                gpa: gpa.unwrap_or(u64::MAX),
            };
            let Some(gpa) = gpa.map(GuestAddress) else {
                return Err(not_ram);
            };
            let Some(region) = self.mem.find_region(gpa) else {
                return Err(not_ram);
            };
            let off = gpa.0 - region.start_addr().0;
            let len = (region.len() - off).min(m.size - at);
            let Ok(host) = self.mem.get_host_address(gpa) else {
                return Err(not_ram);
            };
            let t = std::time::Instant::now();
            // SAFETY: as in map_ram: guest RAM outlives the mapping and is only accessed
            // volatilely; the range lies within one region, checked above.
            let r = unsafe { self.host.map(iova, len, host, m.read, m.write) };
            st.stats.maps += 1;
            st.stats.map_ns += t.elapsed().as_nanos() as u64;
            r.map_err(|err| VfioDmaError::Map {
                iova,
                size: len,
                err,
            })?;
            st.stats.largest = st.stats.largest.max(len);
            done.push((iova, len));
            at += len;
        }
        Ok(())
    }

    fn unmap(&self, iova: u64, size: u64, st: &mut DmaState) -> Result<(), VfioDmaError> {
        let t = std::time::Instant::now();
        let r = self.host.unmap(iova, size);
        st.stats.unmaps += 1;
        st.stats.unmap_ns += t.elapsed().as_nanos() as u64;
        match r {
            Ok(()) => {
                st.mappings = st.mappings.saturating_sub(1);
                Ok(())
            }
            Err(err) => {
                let e = VfioDmaError::Unmap { iova, size, err };
                self.fail_closed(&e.to_string());
                Err(e)
            }
        }
    }

    /// What the container holds and what keeping it in step has cost.
    pub fn state(&self) -> VfioDmaState {
        let st = lock(&self.state);
        let avg = |ns: u64, n: u64| ns.checked_div(n).unwrap_or(0) / 1000;
        VfioDmaState {
            device: self.device.clone(),
            mappings: st.mappings,
            identity: st.identity,
            largest: st.stats.largest,
            maps: st.stats.maps,
            map_failures: st.map_failures,
            map_avg_us: avg(st.stats.map_ns, st.stats.maps),
            unmaps: st.stats.unmaps,
            unmap_avg_us: avg(st.stats.unmap_ns, st.stats.unmaps),
            identity_error: st.identity_error.clone(),
            stopped: self.stopped.load(Ordering::SeqCst),
        }
    }
}

impl devices::vfio::DmaGate for VfioDma {
    fn wait_ready(&self) -> bool {
        let st = self.settled();
        if self.stopped.load(Ordering::SeqCst) {
            iommu::warn_limited!(
                "vfio {}: bus mastering stays off: the device was stopped",
                self.device
            );
            return false;
        }
        if let (false, false, Some(e)) = (st.translated, st.identity, &st.identity_error) {
            iommu::warn_limited!(
                "vfio {}: bus mastering stays off: guest RAM is not mapped for its DMA ({e})",
                self.device
            );
            return false;
        }
        true
    }
}

impl MapListener for VfioDma {
    fn state(&self) -> Option<VfioDmaState> {
        Some(VfioDma::state(self))
    }

    fn map_event(&self, device: Bdf, event: MapEvent) -> Result<(), ListenerError> {
        debug!("vfio {} ({device}): {event:?}", self.device);
        if event == MapEvent::PassThrough(true) {
            let mut st = lock(&self.state);
            st.translated = false;
            if st.identity || st.pending {
                return Ok(());
            }
            drop(st);
            // Translation went off or the context became pass-through: the device may DMA
            // to any GPA from now on.
            return Ok(self.map_identity()?);
        }
        let mut st = self.settled();
        let r = match event {
            MapEvent::PassThrough(_) => {
                st.translated = true;
                self.unmap_identity(&mut st)
            }
            MapEvent::Map(m) => self.map(&m, &mut st),
            MapEvent::Unmap { iova, size } => self.unmap(iova, size, &mut st),
            MapEvent::RangeLimit { limit } => {
                error!(
                    "vfio {} ({device}): the guest mapped more than {limit} ranges; DMA to the rest is refused",
                    self.device
                );
                Ok(())
            }
        };
        Ok(r?)
    }
}

/// The real thing: a VFIO container and the function whose DMA it translates.
pub struct VfioHost {
    pub container: Arc<VfioContainer>,
    pub function: Arc<dyn HostFunction>,
}

/// VFIO_IOMMU_MAP_DMA (linux/vfio.h) with the guest's permissions: vfio-ioctls only maps
/// read-write, and a page the guest gave the device read-only must stay so.
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = 0x3b71; // _IO(';', 100 + 13)
/// Command register (PCI local bus spec 6.2.2), and its bus master enable bit.
const PCI_COMMAND: u64 = devices::pci::regs::COMMAND as u64;
use devices::pci::regs::COMMAND_MASTER as PCI_COMMAND_MASTER;

impl HostDma for VfioHost {
    unsafe fn map(
        &self,
        iova: u64,
        size: u64,
        host: *mut u8,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        use vfio_bindings::bindings::vfio::{
            vfio_iommu_type1_dma_map, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
        };
        let mut flags = 0;
        if read {
            flags |= VFIO_DMA_MAP_FLAG_READ;
        }
        if write {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        let map = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags,
            vaddr: host as u64,
            iova,
            size,
        };
        // SAFETY: the container fd is open for the life of `container`; the argument is a
        // valid, fully initialised vfio_iommu_type1_dma_map the kernel only reads; the memory
        // contract is the caller's.
        let ret = unsafe { libc::ioctl(self.container.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &map) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        let size = usize::try_from(size).map_err(io::Error::other)?;
        self.container
            .vfio_dma_unmap(iova, size)
            .map_err(io::Error::other)
    }

    /// VFIO_DEVICE_RESET (a function-level reset leaves bus mastering off), then bus
    /// mastering cleared through the config region in case the function cannot reset.
    fn stop_device(&self) {
        self.function.reset();
        let mut b = [0u8; 2];
        self.function.read(CONFIG_REGION, PCI_COMMAND, &mut b);
        let command = u16::from_le_bytes(b) & !PCI_COMMAND_MASTER;
        self.function
            .write(CONFIG_REGION, PCI_COMMAND, &command.to_le_bytes());
    }
}

#[cfg(test)]
mod tests;
