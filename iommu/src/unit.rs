//! The remapping hardware unit as a register state machine (VT-d spec chapter 11): global
//! command/status, root table pointer, register-based and queued invalidation, fault logging
//! and the two event interrupts, and DMA translation with context and IOTLB caches.
//!
//! Guest memory is passed to the calls that need it; events leave through [`InterruptSink`].

use std::collections::HashMap;
use std::sync::Arc;

use vm_memory::GuestMemoryBackend;

use crate::caching_mode::{MapEvent, MapTracker};
use crate::config::IommuConfig;
use crate::faults::{FaultLog, FaultRecord};
use crate::interrupt_remapping::Irte;
use crate::invalidation_queue::{self, Descriptor, QueueError};
use crate::iotlb::Iotlb;
use crate::limits::Limits;
use crate::registers::*;
use crate::translation::{self, ContextEntry, DmaFault, Translation, WalkConfig};
use crate::{Bdf, FaultReason, Iova};

/// Where the unit's own interrupts (fault event, invalidation completion event) go: an MSI
/// write of `data` to `address`, not remapped.
pub trait InterruptSink: Send {
    fn send(&self, address: u64, data: u32);
}

/// One event interrupt's registers (control, data, address, upper address).
#[derive(Debug, Default)]
struct EventRegs {
    ctl: u32,
    data: u32,
    addr: u32,
    uaddr: u32,
}

impl EventRegs {
    fn new() -> Self {
        EventRegs {
            ctl: ECTL_IM,
            ..Default::default()
        }
    }

    /// Signals the event now, or marks it pending if masked.
    fn fire(&mut self, sink: &dyn InterruptSink) {
        if self.ctl & ECTL_IM != 0 {
            self.ctl |= ECTL_IP;
        } else {
            self.ctl &= !ECTL_IP;
            sink.send(
                (u64::from(self.uaddr) << 32) | u64::from(self.addr),
                self.data,
            );
        }
    }

    /// A write to the control register: only IM is writable; unmasking sends a pending event.
    fn write_ctl(&mut self, v: u32, sink: &dyn InterruptSink) {
        self.ctl = (self.ctl & !ECTL_IM) | (v & ECTL_IM);
        if self.ctl & ECTL_IM == 0 && self.ctl & ECTL_IP != 0 {
            self.fire(sink);
        }
    }
}

/// The result of a DMA translation request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaOutcome {
    Translated(Translation),
    Blocked(FaultReason),
}

/// A VT-d remapping unit.
pub struct RemappingUnit {
    cfg: IommuConfig,
    walk: WalkConfig,
    limits: Limits,
    work: tracking::WalkWork,
    gsts: u32,
    rtaddr: u64,
    active_rtaddr: u64,
    ccmd: u64,
    fsts_q: u32,
    fault_event: EventRegs,
    faults: FaultLog,
    iqh: u64,
    iqt: u64,
    iqa: u64,
    ics: u32,
    inv_event: EventRegs,
    irta: u64,
    active_irta: u64,
    iva: u64,
    iotlb_reg: u64,
    context_cache: HashMap<Bdf, ContextEntry>,
    iotlb: Iotlb,
    /// Interrupt entry cache: decoded IRTEs by index.
    iec: HashMap<u32, Irte>,
    /// Set when the guest invalidated interrupt entries (or moved the table).
    interrupt_entries_changed: bool,
    tracker: MapTracker,
    map_events: Vec<(Bdf, MapEvent)>,
    /// How far the consumer has carried out the map events (see `host_effects_applied`).
    host: tracking::HostSync,
    sink: Box<dyn InterruptSink>,
    /// Translation caches outside the unit, told of every invalidation (`caches`).
    caches: Option<Arc<dyn TranslationCaches>>,
    /// Queued invalidations carried out, by descriptor type: count and total nanoseconds.
    invalidations: [(u64, u64); state::INVALIDATION_KINDS.len()],
}

fn merge32(old: u64, offset_in_qword: u64, v: u32) -> u64 {
    if offset_in_qword == 0 {
        (old & !0xffff_ffff) | u64::from(v)
    } else {
        (old & 0xffff_ffff) | (u64::from(v) << 32)
    }
}

impl RemappingUnit {
    pub fn new(cfg: IommuConfig, sink: Box<dyn InterruptSink>) -> Self {
        Self::with_limits(cfg, sink, Limits::default())
    }

    /// A unit with other bounds than [`Limits::default`] (tests use small ones).
    pub fn with_limits(cfg: IommuConfig, sink: Box<dyn InterruptSink>, limits: Limits) -> Self {
        let cap = cfg.cap();
        let device_tlb = cfg.device_iotlb;
        RemappingUnit {
            cfg,
            walk: WalkConfig {
                sagaw: (cap >> crate::registers::cap::SAGAW_SHIFT) & 0x1f,
                sllps: (cap >> crate::registers::cap::SLLPS_SHIFT) & 0xf,
                pass_through: true,
                device_tlb,
            },
            limits,
            work: tracking::WalkWork::default(),
            gsts: 0,
            rtaddr: 0,
            active_rtaddr: 0,
            ccmd: 0,
            fsts_q: 0,
            fault_event: EventRegs::new(),
            faults: FaultLog::default(),
            iqh: 0,
            iqt: 0,
            iqa: 0,
            ics: 0,
            inv_event: EventRegs::new(),
            irta: 0,
            active_irta: 0,
            iva: 0,
            iotlb_reg: 0,
            context_cache: HashMap::new(),
            iotlb: Iotlb::new(limits.iotlb_entries),
            iec: HashMap::new(),
            interrupt_entries_changed: false,
            tracker: MapTracker::default(),
            map_events: Vec::new(),
            invalidations: Default::default(),
            host: tracking::HostSync::default(),
            sink,
            caches: None,
        }
    }

    pub fn config(&self) -> &IommuConfig {
        &self.cfg
    }

    /// Whether DMA remapping is on (GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        self.gsts & GSTS_TES != 0
    }

    /// GSTS as the guest reads it (a command's status shows once its host effects are
    /// applied, see [`RemappingUnit::host_effects_applied`]).
    pub fn status(&self) -> u32 {
        self.shown_status()
    }

    /// The latched interrupt remapping table address (IRTA at the last SIRTP).
    pub fn active_irta(&self) -> u64 {
        self.active_irta
    }

    fn fsts(&self) -> u32 {
        self.faults.status() | self.fsts_q
    }

    fn read64(&self, offset: u64) -> u64 {
        let frcd_end = FRCD_REG + 16 * NUM_FRCD as u64;
        match offset {
            VER_REG => VER_VALUE.into(),
            CAP_REG => self.cfg.cap(),
            ECAP_REG => self.cfg.ecap(),
            GCMD_REG => u64::from(self.shown_status()) << 32,
            RTADDR_REG => self.rtaddr,
            CCMD_REG => self.ccmd,
            0x30 => u64::from(self.fsts()) << 32,
            FECTL_REG => u64::from(self.fault_event.ctl) | (u64::from(self.fault_event.data) << 32),
            FEADDR_REG => {
                u64::from(self.fault_event.addr) | (u64::from(self.fault_event.uaddr) << 32)
            }
            IQH_REG => self.iqh,
            IQT_REG => self.iqt,
            IQA_REG => self.iqa,
            0x98 => u64::from(self.ics) << 32,
            IECTL_REG => u64::from(self.inv_event.ctl) | (u64::from(self.inv_event.data) << 32),
            IEADDR_REG => u64::from(self.inv_event.addr) | (u64::from(self.inv_event.uaddr) << 32),
            IRTA_REG => self.irta,
            IVA_REG => self.iva,
            IOTLB_REG => self.iotlb_reg,
            o if (FRCD_REG..frcd_end).contains(&o) => {
                let (lo, hi) = self.faults.register(((o - FRCD_REG) / 16) as usize);
                if (o - FRCD_REG).is_multiple_of(16) {
                    lo
                } else {
                    hi
                }
            }
            _ => 0,
        }
    }

    /// A register read of 4 or 8 bytes; other sizes and unaligned accesses read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if !(len == 4 || len == 8) || !offset.is_multiple_of(len) || offset >= REG_SIZE {
            return;
        }
        let q = self.read64(offset & !7);
        let v = if offset % 8 == 4 { q >> 32 } else { q };
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
    }

    /// A register write of 4 or 8 bytes. An invalidation or command with host effects
    /// completes (wait descriptor, IVT, ICC, GSTS) only after the consumer has taken and
    /// acknowledged them: see [`RemappingUnit::host_effects_applied`].
    pub fn write<M: GuestMemoryBackend>(&mut self, mem: &M, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        if !(len == 4 || len == 8) || !offset.is_multiple_of(len) || offset >= REG_SIZE {
            return;
        }
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        self.begin_work();
        if len == 8 {
            self.write32(mem, offset, v as u32, Some(v));
            self.write32(mem, offset + 4, (v >> 32) as u32, Some(v));
        } else {
            self.write32(mem, offset, v as u32, None);
        }
    }

    /// One dword write; `whole` is the full qword when it came from an 8-byte access, so
    /// 64-bit command registers act once, on their upper half.
    fn write32<M: GuestMemoryBackend>(&mut self, mem: &M, offset: u64, v: u32, whole: Option<u64>) {
        let frcd_end = FRCD_REG + 16 * NUM_FRCD as u64;
        let q = offset & !7;
        let half = offset & 4;
        match offset {
            GCMD_REG => self.write_gcmd(mem, v),
            FSTS_REG => {
                if v & FSTS_PFO != 0 {
                    self.faults.clear_overflow();
                }
                self.fsts_q &= !(v & (FSTS_IQE | FSTS_ICE | FSTS_ITE));
            }
            FECTL_REG => self.fault_event.write_ctl(v, self.sink.as_ref()),
            FEDATA_REG => self.fault_event.data = v,
            FEADDR_REG => self.fault_event.addr = v & !0x3,
            FEUADDR_REG => self.fault_event.uaddr = v,
            ICS_REG => self.ics &= !(v & ICS_IWC),
            IECTL_REG => self.inv_event.write_ctl(v, self.sink.as_ref()),
            IEDATA_REG => self.inv_event.data = v,
            IEADDR_REG => self.inv_event.addr = v & !0x3,
            IEUADDR_REG => self.inv_event.uaddr = v,
            _ if q == RTADDR_REG => self.rtaddr = merge32(self.rtaddr, half, v),
            _ if q == IRTA_REG => self.irta = merge32(self.irta, half, v),
            _ if q == IQA_REG => self.iqa = merge32(self.iqa, half, v),
            _ if q == IVA_REG => self.iva = merge32(self.iva, half, v),
            _ if q == IQT_REG => {
                self.iqt = merge32(self.iqt, half, v) & IQ_INDEX_MASK;
                if half == 0 {
                    self.process_queue(mem);
                    self.end_queue_write();
                }
            }
            _ if q == CCMD_REG => {
                self.ccmd = whole.unwrap_or_else(|| merge32(self.ccmd, half, v));
                if half == 4 && self.ccmd & CCMD_ICC != 0 {
                    self.register_context_invalidation(mem);
                }
            }
            _ if q == IOTLB_REG => {
                self.iotlb_reg = whole.unwrap_or_else(|| merge32(self.iotlb_reg, half, v));
                if half == 4 && self.iotlb_reg & IOTLB_IVT != 0 {
                    self.register_iotlb_invalidation(mem);
                }
            }
            o if (FRCD_REG..frcd_end).contains(&o) && (o - FRCD_REG) % 16 == 12 => self
                .faults
                .write_high(((o - FRCD_REG) / 16) as usize, u64::from(v) << 32),
            _ => {}
        }
    }

    /// GCMD: the unit acts at once (its own translation and remapping follow the command);
    /// GSTS shows the change once the host effects are applied (`hold_status`).
    fn write_gcmd<M: GuestMemoryBackend>(&mut self, mem: &M, v: u32) {
        let shown_before = self.shown_status();
        let was_translating = self.translation_enabled();
        // Persistent enables follow the written value; one-shot commands act when set.
        for bit in [GCMD_TE, GCMD_QIE, GCMD_IRE, GCMD_CFI] {
            let on = v & bit != 0;
            if on == (self.gsts & bit != 0) {
                continue;
            }
            let supported = match bit {
                GCMD_IRE | GCMD_CFI => self.cfg.interrupt_remapping,
                _ => true,
            };
            if !supported {
                continue;
            }
            if bit == GCMD_QIE {
                if on {
                    // Enabling the queue starts it at its head (11.4.11.1).
                    self.iqh = 0;
                } else if self.iqh != self.iqt {
                    crate::warn_limited!(
                        "vt-d: guest disabled queued invalidation with work pending"
                    );
                }
            }
            if on {
                self.gsts |= bit;
            } else {
                self.gsts &= !bit;
            }
            if bit == GCMD_IRE || bit == GCMD_CFI {
                // Interrupts that were passed through are now remapped, or the reverse.
                self.interrupt_entries_changed = true;
            }
        }
        if was_translating != self.translation_enabled() || v & GCMD_SRTP != 0 {
            self.invalidate_caches(CacheInvalidation::All);
        }
        if v & GCMD_SRTP != 0 {
            self.active_rtaddr = self.rtaddr;
            self.flush_all();
            self.gsts |= GSTS_RTPS;
        }
        if v & GCMD_SIRTP != 0 && self.cfg.interrupt_remapping {
            self.active_irta = self.irta;
            self.gsts |= GSTS_IRTPS;
            self.invalidate_interrupt_entries(None);
        }
        if was_translating != self.translation_enabled() || v & GCMD_SRTP != 0 {
            self.resync_tracked(mem, |_| true, None);
        }
        let latched = self.gsts & (GSTS_RTPS | GSTS_IRTPS) & (v & (GCMD_SRTP | GCMD_SIRTP));
        self.hold_status(shown_before, latched);
    }

    fn flush_all(&mut self) {
        self.context_cache.clear();
        self.iotlb.clear();
    }

    /// CCMD with ICC: global (1), domain (2) or device (3) context-cache invalidation. The
    /// actual granularity reported (CAIG) equals the request.
    fn register_context_invalidation<M: GuestMemoryBackend>(&mut self, mem: &M) {
        let cirg = (self.ccmd >> CCMD_CIRG_SHIFT) & 3;
        let did = self.ccmd as u16;
        let sid = Bdf::from_raw((self.ccmd >> 16) as u16);
        let fm = (self.ccmd >> 32) & 3;
        self.invalidate_context(mem, cirg, did, sid, fm);
        self.ccmd = (self.ccmd & !(CCMD_ICC | (3 << CCMD_CAIG_SHIFT))) | (cirg << CCMD_CAIG_SHIFT);
        // ICC clears when the invalidation is complete, host effects included.
        if self.host_effects_outstanding() {
            self.ccmd |= CCMD_ICC;
            self.host.ccmd_pending = true;
        }
    }

    fn invalidate_context<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        granularity: u64,
        did: u16,
        sid: Bdf,
        fm: u64,
    ) {
        // FM masks the function bits of the source id (VT-d 11.4.7).
        let mask: u16 = match fm {
            1 => !0x4,
            2 => !0x6,
            3 => !0x7,
            _ => !0,
        };
        let hit = |b: Bdf, d: Option<u16>| match granularity {
            2 => d == Some(did),
            3 => b.raw() & mask == sid.raw() & mask,
            _ => true,
        };
        self.context_cache.retain(|b, c| !hit(*b, Some(c.did)));
        self.invalidate_caches(match granularity {
            2 => CacheInvalidation::Domain(did),
            3 => CacheInvalidation::Devices { sid, mask },
            _ => CacheInvalidation::All,
        });
        // A context change may move a tracked device between domains or modes; devices whose
        // last known domain was `did` are re-read, and so is any device that had none.
        self.resync_tracked(mem, |(b, d)| hit(b, d) || d.is_none(), None);
    }

    /// IOTLB register with IVT: global (1), domain (2) or page-selective (3, IVA.ADDR/AM).
    fn register_iotlb_invalidation<M: GuestMemoryBackend>(&mut self, mem: &M) {
        let iirg = (self.iotlb_reg >> IOTLB_IIRG_SHIFT) & 3;
        let did = (self.iotlb_reg >> IOTLB_DID_SHIFT) as u16;
        let (addr, am) = (self.iva & IVA_ADDR_MASK, self.iva & IVA_AM_MASK);
        self.invalidate_iotlb(mem, iirg, did, addr, am);
        self.iotlb_reg =
            (self.iotlb_reg & !(IOTLB_IVT | (3 << IOTLB_IAIG_SHIFT))) | (iirg << IOTLB_IAIG_SHIFT);
        // IVT clears when the invalidation is complete, host effects included.
        if self.host_effects_outstanding() {
            self.iotlb_reg |= IOTLB_IVT;
            self.host.iotlb_pending = true;
        }
    }

    fn invalidate_iotlb<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        granularity: u64,
        did: u16,
        addr: u64,
        am: u64,
    ) {
        match granularity {
            2 => {
                self.iotlb.invalidate_domain(did);
                self.invalidate_caches(CacheInvalidation::Domain(did));
                self.resync_tracked(mem, |(_, d)| d == Some(did), None);
            }
            3 => {
                // 2^AM pages from ADDR aligned down to their size (6.5.2.3); the range may
                // reach the top of the address space (end None).
                let span = 1u64 << (12 + am.min(63 - 12));
                let base = addr & !(span - 1);
                let end = base.checked_add(span);
                self.iotlb.invalidate_range(did, base, end);
                self.invalidate_caches(CacheInvalidation::Range {
                    did,
                    start: base,
                    end,
                });
                let end = end.unwrap_or(u64::MAX);
                self.resync_tracked(mem, |(_, d)| d == Some(did), Some((base, end)));
            }
            _ => {
                self.iotlb.clear();
                self.invalidate_caches(CacheInvalidation::All);
                self.resync_tracked(mem, |_| true, None);
            }
        }
    }

    /// Processes descriptors from IQH to IQT (bounded by the queue size). It stops at a wait
    /// descriptor while host effects are outstanding; `host_effects_applied` resumes it.
    pub(super) fn process_queue<M: GuestMemoryBackend>(&mut self, mem: &M) {
        if self.gsts & GSTS_QIES == 0 || self.fsts_q & FSTS_IQE != 0 {
            return;
        }
        let entries = 1u64 << (8 + (self.iqa & IQA_QS_MASK));
        let base = self.iqa & IQA_ADDR_MASK;
        let tail = self.iqt >> IQ_INDEX_SHIFT;
        let mut head = self.iqh >> IQ_INDEX_SHIFT;
        if tail >= entries || head >= entries {
            // A tail past the queue's end (6.5.2, 11.4.11.2), or a head left there by a
            // smaller QS: an invalidation queue error, not an index taken modulo the size.
            self.queue_error(head, &QueueError::BeyondQueue(tail));
            return;
        }
        let mut budget = entries;
        while head != tail && budget > 0 {
            budget -= 1;
            let step = base
                .checked_add(head * invalidation_queue::DESCRIPTOR_SIZE)
                .ok_or(QueueError::AddressOverflow(head, base))
                .and_then(|a| invalidation_queue::read(mem, a))
                .and_then(|d| {
                    if self.waits_for_host(&d) {
                        return Ok(false);
                    }
                    let kind = state::invalidation_kind(&d);
                    let started = std::time::Instant::now();
                    let done = self.execute(mem, d).map(|()| true);
                    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let slot = &mut self.invalidations[kind];
                    *slot = (slot.0.saturating_add(1), slot.1.saturating_add(ns));
                    done
                });
            match step {
                Ok(true) => head = (head + 1) % entries,
                // IQH stays at the wait: it has not completed (see `waits_for_host`).
                Ok(false) => break,
                Err(e) => {
                    self.queue_error(head, &e);
                    return;
                }
            }
        }
        self.iqh = head << IQ_INDEX_SHIFT;
    }

    /// An invalidation queue error (6.5.2.10): IQE set, the head left at the descriptor
    /// that caused it, the fault event raised; nothing more runs until software clears IQE.
    fn queue_error(&mut self, head: u64, e: &QueueError) {
        crate::warn_limited!("vt-d: invalidation queue error at descriptor {head}: {e}");
        self.fsts_q |= FSTS_IQE;
        self.iqh = (head << IQ_INDEX_SHIFT) & IQ_INDEX_MASK;
        self.fault_event.fire(self.sink.as_ref());
    }

    fn execute<M: GuestMemoryBackend>(&mut self, mem: &M, d: Descriptor) -> Result<(), QueueError> {
        match d {
            Descriptor::ContextCache {
                granularity,
                did,
                sid,
                fm,
            } => self.invalidate_context(mem, granularity, did, sid, fm),
            Descriptor::Iotlb {
                granularity,
                did,
                addr,
                am,
            } => self.invalidate_iotlb(mem, granularity, did, addr, am),
            Descriptor::DeviceIotlb { sid, range, .. } => {
                // Without device-TLB support the type is not one the unit knows: an
                // invalid descriptor (ECAP.DT, 11.4.3; 6.5.2.10).
                if !self.cfg.device_iotlb {
                    return Err(QueueError::Unsupported("device-TLB"));
                }
                // Only the requester's own cache (its ATC); the unit's IOTLB and the host
                // mappings of caching mode are the IOTLB descriptor's business (6.5.2.5).
                self.invalidate_caches(CacheInvalidation::DeviceRange {
                    sid,
                    start: range.start,
                    end: range.end,
                });
            }
            Descriptor::InterruptEntryCache { index } => self.invalidate_interrupt_entries(index),
            Descriptor::Wait {
                status_write,
                interrupt,
                data,
                address,
            } => {
                if status_write {
                    invalidation_queue::write_status(mem, address, data)?;
                }
                if interrupt {
                    self.ics |= ICS_IWC;
                    self.inv_event.fire(self.sink.as_ref());
                }
            }
        }
        Ok(())
    }

    fn report(&mut self, source: Bdf, iova: Iova, write: bool, f: DmaFault) {
        // Fault processing disabled (context FPD): neither recorded nor logged.
        if f.fpd {
            return;
        }
        crate::warn_limited!(
            "vt-d: DMA {} of {iova} by {source} blocked: {:?}",
            if write { "write" } else { "read" },
            f.reason
        );
        let rec = FaultRecord {
            source,
            reason: f.reason,
            info: iova.0,
            read: !write,
        };
        if self.faults.record(rec) {
            self.fault_event.fire(self.sink.as_ref());
        }
    }

    /// Translates a DMA request. With translation off, addresses pass through unchanged.
    /// Faults are recorded (unless the context entry sets FPD) and the fault event fires.
    pub fn translate<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        source: Bdf,
        iova: Iova,
        write: bool,
    ) -> DmaOutcome {
        self.translate_in_domain(mem, source, iova, write).0
    }

    /// As [`translate`](Self::translate), with the domain of the context that translated
    /// (None with translation off): a cache outside the unit tags what it keeps with it, for
    /// [`CacheInvalidation`].
    pub fn translate_in_domain<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        source: Bdf,
        iova: Iova,
        write: bool,
    ) -> (DmaOutcome, Option<u16>) {
        if !self.translation_enabled() {
            let identity = DmaOutcome::Translated(Translation {
                iova_base: iova.0 & !0xfff,
                gpa_base: iova.0 & !0xfff,
                page_size: 0x1000,
                read: true,
                write: true,
            });
            return (identity, None);
        }
        let ctx = match self.context_cache.get(&source) {
            Some(c) => *c,
            None => {
                match translation::lookup_context(mem, self.active_rtaddr, source, &self.walk) {
                    Ok(c) => {
                        self.context_cache.insert(source, c);
                        c
                    }
                    Err(f) => {
                        self.report(source, iova, write, f);
                        return (DmaOutcome::Blocked(f.reason), None);
                    }
                }
            }
        };
        if let Some(t) = self.iotlb.get(ctx.did, iova.0) {
            if t.permits(write) {
                return (DmaOutcome::Translated(t), Some(ctx.did));
            }
        }
        let outcome = match translation::translate(mem, &ctx, iova, write, &self.walk) {
            Ok(t) => {
                // Pass-through needs no walk, so nothing is cached for it (as in QEMU).
                if ctx.tt != translation::TranslationType::PassThrough {
                    self.iotlb.insert(ctx.did, t);
                }
                DmaOutcome::Translated(t)
            }
            Err(f) => {
                self.report(source, iova, write, f);
                DmaOutcome::Blocked(f.reason)
            }
        };
        (outcome, Some(ctx.did))
    }
}

mod caches;
mod state;
pub use self::caches::{CacheInvalidation, TranslationCaches};
pub use self::state::{
    coalesce, ContextState, FaultState, InvalidationStats, IrteState, LimitsState, MappedRange,
    TrackedState, UnitState,
};
mod interrupts;
pub use interrupts::InterruptOutcome;
mod tracking;
pub use tracking::{HostEffects, MapFailure};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bounds;
#[cfg(test)]
mod tests_caches;
#[cfg(test)]
mod tests_device_tlb;
#[cfg(test)]
mod tests_fuzz;
#[cfg(test)]
mod tests_host_effects;
#[cfg(test)]
mod tests_interrupts;
#[cfg(test)]
mod tests_limits;
#[cfg(test)]
mod tests_ordering;
#[cfg(test)]
mod tests_tracking;
