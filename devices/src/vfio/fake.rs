//! Test doubles for the VFIO device model: a host function with a configuration space and
//! BARs in memory, and recorders for the interrupt seams.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use super::function::{HostFunction, IrqError, MappedArea, RegionInfo, CONFIG_REGION};
use super::interrupts::FdWatcher;
use crate::interrupt::{InterruptError, IrqLine, IrqfdRouting, MsiMessage, MsiTrigger};

/// A host function: config space and regions as byte arrays, interrupt enables recorded.
#[derive(Default)]
pub struct FakeFunction {
    pub regions: Mutex<BTreeMap<u32, (RegionInfo, Vec<u8>)>>,
    pub irq_counts: HashMap<u32, u32>,
    /// (index, eventfd duplicates) per enable call; None for a disable.
    pub irq_calls: Mutex<Vec<(u32, Option<usize>)>>,
    pub enabled_fds: Mutex<HashMap<u32, Vec<EventFd>>>,
    pub unmasks: Mutex<u32>,
    pub resets: Mutex<u32>,
    pub fail_enable: bool,
}

impl FakeFunction {
    pub fn with_config(config: Vec<u8>) -> Self {
        let f = FakeFunction::default();
        f.add_region(CONFIG_REGION, config, vec![]);
        f
    }

    pub fn add_region(&self, index: u32, bytes: Vec<u8>, mmap: Vec<(u64, u64)>) {
        let info = RegionInfo {
            size: bytes.len() as u64,
            mmap,
        };
        self.regions.lock().unwrap().insert(index, (info, bytes));
    }

    pub fn region_bytes(&self, index: u32) -> Vec<u8> {
        self.regions.lock().unwrap()[&index].1.clone()
    }

    /// Signals interrupt `i` of `index` as the host kernel would.
    pub fn fire(&self, index: u32, i: usize) {
        self.enabled_fds.lock().unwrap()[&index][i]
            .write(1)
            .unwrap();
    }
}

struct HeapArea(Box<[u8]>);

impl MappedArea for HeapArea {
    fn host_address(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

impl HostFunction for FakeFunction {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        self.regions
            .lock()
            .unwrap()
            .get(&index)
            .map(|r| r.0.clone())
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        if let Some((_, b)) = self.regions.lock().unwrap().get(&index) {
            for (i, d) in data.iter_mut().enumerate() {
                if let Some(v) = b.get(offset as usize + i) {
                    *d = *v;
                }
            }
        }
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        if let Some((_, b)) = self.regions.lock().unwrap().get_mut(&index) {
            for (i, d) in data.iter().enumerate() {
                if let Some(v) = b.get_mut(offset as usize + i) {
                    *v = *d;
                }
            }
        }
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.irq_counts.get(&index).copied().unwrap_or(0)
    }

    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> Result<(), IrqError> {
        if self.fail_enable {
            return Err(IrqError {
                what: "enable",
                err: "refused".into(),
            });
        }
        self.irq_calls
            .lock()
            .unwrap()
            .push((index, Some(fds.len())));
        let dup = fds.iter().map(|f| f.try_clone().unwrap()).collect();
        self.enabled_fds.lock().unwrap().insert(index, dup);
        Ok(())
    }

    fn disable_irq(&self, index: u32) -> Result<(), IrqError> {
        self.irq_calls.lock().unwrap().push((index, None));
        self.enabled_fds.lock().unwrap().remove(&index);
        Ok(())
    }

    fn unmask_intx(&self) -> Result<(), IrqError> {
        *self.unmasks.lock().unwrap() += 1;
        Ok(())
    }

    fn reset(&self) {
        *self.resets.lock().unwrap() += 1;
    }

    fn mmap(&self, _index: u32, _offset: u64, size: u64) -> Option<Box<dyn MappedArea>> {
        Some(Box::new(HeapArea(
            vec![0u8; size as usize].into_boxed_slice(),
        )))
    }
}

/// Records MSIs sent through the VMM.
#[derive(Default)]
pub struct Sent(pub Mutex<Vec<MsiMessage>>);

impl MsiTrigger for Sent {
    fn send_msi(&self, msg: MsiMessage) -> Result<(), InterruptError> {
        self.0.lock().unwrap().push(msg);
        Ok(())
    }
}

impl Sent {
    pub fn data(&self) -> Vec<u32> {
        self.0.lock().unwrap().iter().map(|m| m.data).collect()
    }
}

/// In-hypervisor routes by eventfd number; refuses messages whose data is in `blocked`.
#[derive(Default)]
pub struct Routes {
    pub routes: Mutex<HashMap<i32, MsiMessage>>,
    pub blocked: Mutex<HashSet<u32>>,
}

impl IrqfdRouting for Routes {
    fn route(&self, fd: &EventFd, msg: MsiMessage) -> bool {
        let mut r = self.routes.lock().unwrap();
        if self.blocked.lock().unwrap().contains(&msg.data) {
            r.remove(&fd.as_raw_fd());
            return false;
        }
        r.insert(fd.as_raw_fd(), msg);
        true
    }

    fn unroute(&self, fd: &EventFd) {
        self.routes.lock().unwrap().remove(&fd.as_raw_fd());
    }
}

impl Routes {
    pub fn data(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .routes
            .lock()
            .unwrap()
            .values()
            .map(|m| m.data)
            .collect();
        v.sort();
        v
    }
}

/// The relay's watch set, by token.
#[derive(Default)]
pub struct Watched(pub Mutex<HashMap<i32, u64>>);

impl FdWatcher for Watched {
    fn watch(&self, fd: &EventFd, token: u64) {
        self.0.lock().unwrap().insert(fd.as_raw_fd(), token);
    }
    fn unwatch(&self, fd: &EventFd) {
        self.0.lock().unwrap().remove(&fd.as_raw_fd());
    }
}

impl Watched {
    pub fn tokens(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.0.lock().unwrap().values().copied().collect();
        v.sort();
        v
    }
}

/// A level-triggered line's history.
#[derive(Default)]
pub struct Line(pub Mutex<Vec<bool>>);

impl IrqLine for Line {
    fn set_level(&self, level: bool) {
        self.0.lock().unwrap().push(level);
    }
}
