//! DMA for passed-through devices: the host VFIO container follows what the guest lets the
//! device reach. Without an IOMMU, or while the guest's unit passes the device's DMA through,
//! all guest RAM is mapped at IOVA = GPA; once the guest translates, the container holds exactly
//! the guest's mappings, fed by the VT-d model's caching-mode notifications.

use std::sync::{Arc, Condvar, Mutex};

use devices::interrupt::{IrqfdRouting, MsiTrigger};
use devices::ioapic::{Ioapic, IoapicPin};
use devices::pci::{intx_gsi, PciRoot};
use devices::vfio::{GuestMmioMapper, HostDevice, Interrupts, VfioPciDevice, VfioPciWiring};
use iommu::{Bdf, MapEvent, Mapping};
use log::{debug, warn};
use vfio_ioctls::VfioContainer;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::iommu::{Iommu, MapListener};
use crate::vm::VmError;

/// What passed-through functions are wired to in the VM.
pub struct Wiring<'a> {
    pub mem: &'a GuestMemoryMmap,
    /// MSIs the VMM sends (through interrupt remapping, if any).
    pub msi: Arc<dyn MsiTrigger>,
    /// In-KVM delivery of vectors (irqfds), remapped if there is an IOMMU.
    pub routing: Arc<dyn IrqfdRouting>,
    pub ioapic: &'a Arc<Mutex<Ioapic>>,
    pub iommu: Option<&'a Arc<Iommu>>,
    pub mapper: Arc<dyn GuestMmioMapper>,
}

/// A passed-through function as the state dump sees it.
pub struct Attached {
    name: String,
    address: Bdf,
    interrupts: Interrupts,
    dma: Arc<VfioDma>,
}

impl Attached {
    pub fn dump(&self) -> String {
        format!(
            "passthrough {} at {}:\n{}  {}",
            self.name,
            self.address,
            self.interrupts.dump(),
            self.dma.summary()
        )
    }
}

/// Opens `host` and puts it at device `slot` of the root bus: its DMA follows the guest's
/// IOMMU (or all RAM, without one), its INTx drives the IOAPIC pin the _PRT gives it and is
/// resampled at EOI, and its vectors are re-routed when the guest invalidates interrupt
/// entries.
pub fn attach(
    pci: &Mutex<PciRoot>,
    host: &HostDevice,
    slot: u8,
    w: &Wiring,
) -> Result<Attached, VmError> {
    let address = Bdf::new(0, slot, 0);
    let (mut dev, container) = VfioPciDevice::open(
        host,
        VfioPciWiring {
            address,
            trigger: w.msi.clone(),
            routing: Some(w.routing.clone()),
            mapper: Some(w.mapper.clone()),
        },
    )?;
    let pin = dev.interrupt_pin();
    if pin != 0 {
        let gsi = intx_gsi(slot, pin) as usize;
        let line = Arc::new(IoapicPin {
            ioapic: w.ioapic.clone(),
            pin: gsi,
        });
        if dev.wire_intx(line) {
            lock(w.ioapic).set_resample(gsi, Some(Arc::new(dev.interrupts())));
        }
    }
    let dma = Arc::new(VfioDma::new(container, w.mem.clone(), &host.name));
    // Guest RAM is mapped for the device's DMA while the guest boots; the guest's first
    // command register write (bus mastering) waits for it.
    dma.map_identity_in_background()?;
    dev.set_dma_gate(dma.clone());
    if let Some(i) = w.iommu {
        i.track(address, dma.clone());
        i.add_interrupt_routes(Arc::new(dev.interrupts()));
    }
    let interrupts = dev.interrupts();
    lock(pci).add_device(Arc::new(Mutex::new(dev)), Some(slot))?;
    log::info!("host device {} at {address}", host.name);
    Ok(Attached {
        name: host.name.clone(),
        address,
        interrupts,
        dma,
    })
}

/// One device's host container and what is mapped in it.
pub struct VfioDma {
    container: Arc<VfioContainer>,
    mem: GuestMemoryMmap,
    device: String,
    state: Mutex<DmaState>,
    /// Signalled when a background identity mapping completes.
    done: Condvar,
}

#[derive(Default)]
struct DmaState {
    identity: bool,
    /// An identity mapping is being made on a background thread.
    pending: bool,
    /// Host mappings made for guest mappings (iova, size), for accounting.
    mappings: usize,
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

/// Why the container could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("VFIO: mapping guest memory for {0}: {1}")]
pub struct VfioDmaError(String, vfio_ioctls::VfioError);

impl VfioDma {
    pub fn new(container: Arc<VfioContainer>, mem: GuestMemoryMmap, device: &str) -> Self {
        VfioDma {
            container,
            mem,
            device: device.to_string(),
            state: Mutex::new(DmaState::default()),
            done: Condvar::new(),
        }
    }

    /// Waits until no background identity mapping is in flight; returns the state.
    fn settled(&self) -> std::sync::MutexGuard<'_, DmaState> {
        let mut st = lock(&self.state);
        while st.pending {
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st
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
                let r = me.map_identity_now();
                let mut st = lock(&me.state);
                st.pending = false;
                match r {
                    Ok(()) => st.identity = true,
                    Err(e) => warn!("{e}"),
                }
                me.done.notify_all();
            });
        if spawned.is_err() {
            lock(&self.state).pending = false;
            return self.map_identity();
        }
        Ok(())
    }

    fn map_identity_now(&self) -> Result<(), VfioDmaError> {
        let start = std::time::Instant::now();
        // SAFETY: guest RAM is mapped for the life of the VM and only ever accessed through
        // vm-memory's volatile accessors, never through Rust references, which is what
        // sharing it with a DMA-capable device requires. The mapping is removed before the
        // memory goes (unmap_identity, or the container's release at exit).
        unsafe { self.container.vfio_map_guest_memory(&self.mem) }
            .map_err(|e| VfioDmaError(self.device.clone(), e))?;
        log::info!(
            "vfio {}: guest RAM mapped at IOVA = GPA in {:.1}s",
            self.device,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Maps all guest RAM at IOVA = GPA.
    pub fn map_identity(&self) -> Result<(), VfioDmaError> {
        let mut st = self.settled();
        if st.identity {
            return Ok(());
        }
        // SAFETY: guest RAM is mapped for the life of the VM and only ever accessed through
        // vm-memory's volatile accessors, never through Rust references, which is what
        // sharing it with a DMA-capable device requires. The mapping is removed before the
        // memory goes (unmap_identity, or the container's release at exit).
        unsafe { self.container.vfio_map_guest_memory(&self.mem) }
            .map_err(|e| VfioDmaError(self.device.clone(), e))?;
        st.identity = true;
        Ok(())
    }

    fn unmap_identity(&self, st: &mut DmaState) {
        if !st.identity {
            return;
        }
        if let Err(e) = self.container.vfio_unmap_guest_memory(&self.mem) {
            warn!("vfio {}: unmapping guest RAM: {e}", self.device);
        }
        st.identity = false;
    }

    /// Maps a guest mapping: each piece of its GPA range that is RAM, at the matching IOVA.
    fn map(&self, m: &Mapping, st: &mut DmaState) {
        let mut done = 0u64;
        while done < m.size {
            let gpa = GuestAddress(m.gpa + done);
            let Some(region) = self.mem.find_region(gpa) else {
                warn!(
                    "vfio {}: guest mapped IOVA {:#x} to {:#x}, which is not RAM; not mapped",
                    self.device,
                    m.iova + done,
                    gpa.0
                );
                return;
            };
            let off = gpa.0 - region.start_addr().0;
            let len = (region.len() - off).min(m.size - done);
            let Ok(host) = self.mem.get_host_address(gpa) else {
                return;
            };
            let t = std::time::Instant::now();
            // SAFETY: as in map_identity: guest RAM outlives the mapping and is only accessed
            // volatilely; the range lies within one region, checked above.
            let r = unsafe { map_dma(&self.container, m.iova + done, len, host, m.read, m.write) };
            st.stats.maps += 1;
            st.stats.map_ns += t.elapsed().as_nanos() as u64;
            match r {
                Ok(()) => {
                    st.mappings += 1;
                    st.stats.largest = st.stats.largest.max(len);
                }
                Err(e) => warn!(
                    "vfio {}: VFIO_IOMMU_MAP_DMA {:#x}+{len:#x}: {e}",
                    self.device,
                    m.iova + done
                ),
            }
            done += len;
        }
    }

    fn unmap(&self, iova: u64, size: u64, st: &mut DmaState) {
        let t = std::time::Instant::now();
        let r = self.container.vfio_dma_unmap(iova, size as usize);
        st.stats.unmaps += 1;
        st.stats.unmap_ns += t.elapsed().as_nanos() as u64;
        match r {
            Ok(()) => st.mappings = st.mappings.saturating_sub(1),
            Err(e) => warn!(
                "vfio {}: VFIO_IOMMU_UNMAP_DMA {iova:#x}+{size:#x}: {e}",
                self.device
            ),
        }
    }
}

/// VFIO_IOMMU_MAP_DMA (linux/vfio.h) with the guest's permissions: vfio-ioctls only maps
/// read-write, and a page the guest gave the device read-only must stay so.
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = 0x3b71; // _IO(';', 100 + 13)

/// # Safety
/// `host..host + size` must stay mapped, and only be accessed volatilely, until unmapped.
unsafe fn map_dma(
    container: &VfioContainer,
    iova: u64,
    size: u64,
    host: *mut u8,
    read: bool,
    write: bool,
) -> std::io::Result<()> {
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
    // SAFETY: the container fd is open for the life of `container`; the argument is a valid,
    // fully initialised vfio_iommu_type1_dma_map the kernel only reads; the memory contract is
    // the caller's.
    let ret = unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &map) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VfioDma {
    /// A line on what the container holds and what keeping it in step has cost.
    pub fn summary(&self) -> String {
        let st = lock(&self.state);
        let avg = |ns: u64, n: u64| ns.checked_div(n).unwrap_or(0) / 1000;
        format!(
            "vfio {}: {} host mappings{} (largest {:#x}); {} VFIO_IOMMU_MAP_DMA (avg {} us), {} VFIO_IOMMU_UNMAP_DMA (avg {} us)\n",
            self.device,
            st.mappings,
            if st.identity { " + all RAM at IOVA = GPA" } else { "" },
            st.stats.largest,
            st.stats.maps,
            avg(st.stats.map_ns, st.stats.maps),
            st.stats.unmaps,
            avg(st.stats.unmap_ns, st.stats.unmaps),
        )
    }
}

impl devices::vfio::DmaGate for VfioDma {
    fn wait_ready(&self) {
        drop(self.settled());
    }
}

impl MapListener for VfioDma {
    fn summary(&self) -> String {
        VfioDma::summary(self)
    }

    fn map_event(&self, device: Bdf, event: MapEvent) {
        debug!("vfio {} ({device}): {event:?}", self.device);
        if event == MapEvent::PassThrough(true) {
            let st = lock(&self.state);
            if st.identity || st.pending {
                return;
            }
            drop(st);
            // Translation went off or the context became pass-through: the device may DMA
            // to any GPA from now on.
            if let Err(e) = self.map_identity() {
                warn!("{e}");
            }
            return;
        }
        let mut st = self.settled();
        match event {
            MapEvent::PassThrough(_) => self.unmap_identity(&mut st),
            MapEvent::Map(m) => self.map(&m, &mut st),
            MapEvent::Unmap { iova, size } => self.unmap(iova, size, &mut st),
            MapEvent::RangeLimit { limit } => log::error!(
                "vfio {} ({device}): the guest mapped more than {limit} ranges; DMA to the rest is refused",
                self.device
            ),
        }
    }
}

/// BARs mapped into the guest as KVM memory slots.
pub struct KvmMmioMapper {
    vm: Arc<kvm_ioctls::VmFd>,
    /// Slot numbers in use by BAR mappings (RAM takes the first ones).
    used: Mutex<Vec<u32>>,
}

/// First KVM memory slot for BAR mappings; RAM uses slots 0 and 1.
const FIRST_MMIO_SLOT: u32 = 8;

impl KvmMmioMapper {
    pub fn new(vm: Arc<kvm_ioctls::VmFd>) -> Self {
        KvmMmioMapper {
            vm,
            used: Mutex::new(Vec::new()),
        }
    }

    fn set(&self, slot: u32, gpa: u64, size: u64, host: usize) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_bindings::kvm_userspace_memory_region {
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
        let mut used = lock(&self.used);
        let slot = (FIRST_MMIO_SLOT..)
            .find(|s| !used.contains(s))
            .ok_or("no free memory slot")?;
        self.set(slot, gpa, size, host).map_err(|e| e.to_string())?;
        used.push(slot);
        Ok(slot)
    }

    fn unmap(&self, slot: u32) {
        if let Err(e) = self.set(slot, 0, 0, 0) {
            warn!("KVM: removing BAR memory slot {slot}: {e}");
        }
        lock(&self.used).retain(|s| *s != slot);
    }
}
