//! QEMU's fw_cfg interface over I/O ports (QEMU docs/specs/fw_cfg.rst): a 16-bit selector at
//! port 0x510 and an 8-bit data port at 0x511 (the traditional interface), and, when made
//! [`FwCfg::with_dma`], the DMA interface: a big-endian 64-bit address register at 0x514
//! (high half) / 0x518 (low half, whose write starts the transfer) pointing at a
//! `FWCfgDmaAccess { be32 control; be32 length; be64 address }` in guest memory. Items:
//! signature, ID, RAM size, CPU counts, and a file directory for named blobs (`etc/e820`,
//! the ACPI table loader, ... for firmware boot).

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::BusDevice;

/// Ports (offsets from 0x510): selector (16-bit write), data (8-bit read).
pub const FW_CFG_PORT_SIZE: u64 = 2;
/// Ports with the DMA address register (0x510..0x51C).
pub const FW_CFG_PORT_SIZE_DMA: u64 = 12;
const SELECTOR_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
/// DMA address register halves (fw_cfg.rst "DMA Address Register": 0x514 and 0x518).
const DMA_HIGH_OFFSET: u64 = 4;
const DMA_LOW_OFFSET: u64 = 8;
/// What the DMA address register reads: "QEMU CFG" (hw/nvram/fw_cfg.c FW_CFG_DMA_SIGNATURE).
const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";
/// FWCfgDmaAccess control bits (fw_cfg.rst "DMA interface").
pub const DMA_CTL_ERROR: u32 = 1 << 0;
pub const DMA_CTL_READ: u32 = 1 << 1;
pub const DMA_CTL_SKIP: u32 = 1 << 2;
pub const DMA_CTL_SELECT: u32 = 1 << 3;
pub const DMA_CTL_WRITE: u32 = 1 << 4;
/// Size of FWCfgDmaAccess.
const DMA_ACCESS_LEN: usize = 16;
/// Bytes moved per step of a DMA transfer (the length is the guest's, up to 4 GiB).
const DMA_CHUNK: usize = 4096;
/// Well-known selectors (fw_cfg.rst "Selector Register" and hw/nvram/fw_cfg.h).
pub const FW_CFG_SIGNATURE: u16 = 0x0000;
pub const FW_CFG_ID: u16 = 0x0001;
pub const FW_CFG_RAM_SIZE: u16 = 0x0003;
pub const FW_CFG_NB_CPUS: u16 = 0x0005;
pub const FW_CFG_MAX_CPUS: u16 = 0x000f;
pub const FW_CFG_FILE_DIR: u16 = 0x0019;
/// First selector given to files.
pub const FW_CFG_FILE_FIRST: u16 = 0x0020;
/// ID feature bits: traditional interface (bit 0), DMA (bit 1).
const FEATURE_TRADITIONAL: u32 = 1 << 0;
const FEATURE_DMA: u32 = 1 << 1;
/// Length of a file name field in a directory entry.
const FILE_NAME_LEN: usize = 56;

/// Why a file could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("fw_cfg file name {0:?} is longer than 55 bytes")]
    NameTooLong(String),
    #[error("fw_cfg file {0:?} already exists")]
    Duplicate(String),
    #[error("No fw_cfg selectors left")]
    Full,
}

/// The device.
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<(String, u16)>,
    selector: u16,
    offset: usize,
    /// Guest memory, with the DMA interface.
    dma: Option<GuestMemoryMmap>,
    /// The DMA address register's high half, as last written.
    dma_high: u32,
}

impl FwCfg {
    /// A device describing `ram_size` bytes of RAM and `cpus` vCPUs.
    pub fn new(ram_size: u64, cpus: u16) -> Self {
        let mut items = BTreeMap::new();
        items.insert(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        items.insert(FW_CFG_ID, FEATURE_TRADITIONAL.to_le_bytes().to_vec());
        items.insert(FW_CFG_RAM_SIZE, ram_size.to_le_bytes().to_vec());
        items.insert(FW_CFG_NB_CPUS, cpus.to_le_bytes().to_vec());
        items.insert(FW_CFG_MAX_CPUS, cpus.to_le_bytes().to_vec());
        let mut d = FwCfg {
            items,
            files: Vec::new(),
            selector: 0,
            offset: 0,
            dma: None,
            dma_high: 0,
        };
        d.rebuild_directory();
        d
    }

    /// The same with the DMA interface over guest memory `mem` (ID bit 1 set; the device then
    /// takes [`FW_CFG_PORT_SIZE_DMA`] ports).
    pub fn with_dma(ram_size: u64, cpus: u16, mem: GuestMemoryMmap) -> Self {
        let mut d = Self::new(ram_size, cpus);
        d.items.insert(
            FW_CFG_ID,
            (FEATURE_TRADITIONAL | FEATURE_DMA).to_le_bytes().to_vec(),
        );
        d.dma = Some(mem);
        d
    }

    /// A platform reset: the signature selected, as QEMU's fw_cfg_reset does.
    pub fn reset(&mut self) {
        self.select(FW_CFG_SIGNATURE);
    }

    fn select(&mut self, selector: u16) {
        self.selector = selector;
        self.offset = 0;
    }

    /// Runs the DMA request at `at` in guest memory and stores its completion (control 0,
    /// or the ERROR bit) back into it. A request that cannot be read gets ERROR written
    /// where it claims to be, as QEMU's fw_cfg_dma_transfer does; nothing here panics on
    /// what the guest wrote.
    fn dma_transfer(&mut self, at: u64) {
        let Some(mem) = self.dma.clone() else { return };
        let control_at = GuestAddress(at);
        let mut req = [0u8; DMA_ACCESS_LEN];
        if mem.read_slice(&mut req, GuestAddress(at)).is_err() {
            iommu::warn_limited!("fw_cfg: DMA request at {at:#x} is outside guest memory");
            let _ = mem.write_slice(&DMA_CTL_ERROR.to_be_bytes(), control_at);
            return;
        }
        let control = u32::from_be_bytes([req[0], req[1], req[2], req[3]]);
        let mut length = u32::from_be_bytes([req[4], req[5], req[6], req[7]]) as u64;
        let mut address = u64::from_be_bytes([
            req[8], req[9], req[10], req[11], req[12], req[13], req[14], req[15],
        ]);
        if control & DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let (read, write) = if control & DMA_CTL_READ != 0 {
            (true, false)
        } else if control & DMA_CTL_WRITE != 0 {
            (false, true)
        } else if control & DMA_CTL_SKIP != 0 {
            (false, false)
        } else {
            length = 0;
            (false, false)
        };
        let mut status = 0;
        let zeros = [0u8; DMA_CHUNK];
        while length > 0 && status == 0 {
            let item = self
                .items
                .get(&self.selector)
                .map_or(&[][..], Vec::as_slice);
            let left = item.len().saturating_sub(self.offset);
            let n = (length as usize).min(DMA_CHUNK);
            if write {
                // No item is writable (QEMU: !allow_write).
                status = DMA_CTL_ERROR;
                break;
            }
            let (bytes, moved): (&[u8], usize) = if left == 0 {
                // Past the end: reads zero-fill, skips just advance.
                (&zeros[..n], n)
            } else {
                let m = n.min(left);
                (&item[self.offset..self.offset + m], m)
            };
            if read && mem.write_slice(bytes, GuestAddress(address)).is_err() {
                status = DMA_CTL_ERROR;
            }
            self.offset = self.offset.saturating_add(moved);
            address = address.wrapping_add(moved as u64);
            length -= moved as u64;
        }
        if status != 0 {
            iommu::warn_limited!(
                "fw_cfg: DMA to {address:#x} (item {:#x}) failed",
                self.selector
            );
        }
        let _ = mem.write_slice(&status.to_be_bytes(), control_at);
    }

    /// Adds a named file (e.g. "etc/e820"); returns its selector.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.len() >= FILE_NAME_LEN {
            return Err(FwCfgError::NameTooLong(name.into()));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate(name.into()));
        }
        let sel = FW_CFG_FILE_FIRST
            .checked_add(self.files.len() as u16)
            .filter(|s| *s < 0x4000)
            .ok_or(FwCfgError::Full)?;
        self.items.insert(sel, data);
        self.files.push((name.into(), sel));
        self.rebuild_directory();
        Ok(sel)
    }

    /// FW_CFG_FILE_DIR: big-endian count, then {size BE32, select BE16, reserved, name[56]}.
    fn rebuild_directory(&mut self) {
        let mut dir = (self.files.len() as u32).to_be_bytes().to_vec();
        let mut files = self.files.clone();
        files.sort();
        for (name, sel) in files {
            let size = self.items.get(&sel).map_or(0, Vec::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&sel.to_be_bytes());
            dir.extend_from_slice(&0u16.to_be_bytes());
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.items.insert(FW_CFG_FILE_DIR, dir);
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if self.dma.is_some() && (DMA_HIGH_OFFSET..DMA_LOW_OFFSET + 4).contains(&offset) {
            for (i, b) in data.iter_mut().enumerate() {
                let at = (offset - DMA_HIGH_OFFSET) as usize + i;
                *b = DMA_SIGNATURE.get(at).copied().unwrap_or(0);
            }
            return;
        }
        if offset != DATA_OFFSET {
            return;
        }
        // Reads past the end of an item, and of unknown items, return 0.
        for b in data.iter_mut() {
            *b = self
                .items
                .get(&self.selector)
                .and_then(|v| v.get(self.offset))
                .copied()
                .unwrap_or(0);
            self.offset = self.offset.saturating_add(1);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (SELECTOR_OFFSET, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (DMA_HIGH_OFFSET, 4) if self.dma.is_some() => {
                self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            }
            (DMA_LOW_OFFSET, 4) if self.dma.is_some() => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let at = (u64::from(self.dma_high) << 32) | u64::from(low);
                self.dma_transfer(at);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(d: &mut FwCfg, sel: u16) {
        d.write(SELECTOR_OFFSET, &sel.to_le_bytes());
    }

    fn read_n(d: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                d.read(DATA_OFFSET, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn fw_cfg_signature_and_id() {
        let mut d = FwCfg::new(512 << 20, 2);
        select(&mut d, FW_CFG_SIGNATURE);
        assert_eq!(read_n(&mut d, 4), b"QEMU");
        select(&mut d, FW_CFG_ID);
        assert_eq!(
            read_n(&mut d, 4),
            vec![1, 0, 0, 0],
            "traditional only, no DMA"
        );
    }

    #[test]
    fn fw_cfg_ram_and_cpus() {
        let mut d = FwCfg::new(512 << 20, 3);
        select(&mut d, FW_CFG_RAM_SIZE);
        assert_eq!(read_n(&mut d, 8), (512u64 << 20).to_le_bytes());
        select(&mut d, FW_CFG_NB_CPUS);
        assert_eq!(read_n(&mut d, 2), vec![3, 0]);
    }

    #[test]
    fn fw_cfg_reads_past_end_and_unknown_items_are_zero() {
        let mut d = FwCfg::new(1, 1);
        select(&mut d, FW_CFG_SIGNATURE);
        assert_eq!(read_n(&mut d, 6), vec![b'Q', b'E', b'M', b'U', 0, 0]);
        select(&mut d, 0x1234);
        assert_eq!(read_n(&mut d, 3), vec![0, 0, 0]);
    }

    #[test]
    fn fw_cfg_file_directory_lists_files_big_endian() {
        let mut d = FwCfg::new(1, 1);
        let sel = d.add_file("etc/minivmm", vec![7; 5]).unwrap();
        assert_eq!(sel, FW_CFG_FILE_FIRST);
        select(&mut d, FW_CFG_FILE_DIR);
        let dir = read_n(&mut d, 4 + 64);
        assert_eq!(&dir[0..4], &[0, 0, 0, 1]);
        assert_eq!(&dir[4..8], &[0, 0, 0, 5], "size");
        assert_eq!(&dir[8..10], &sel.to_be_bytes());
        assert_eq!(&dir[12..23], b"etc/minivmm");
        select(&mut d, sel);
        assert_eq!(read_n(&mut d, 5), vec![7; 5]);
    }

    #[test]
    fn fw_cfg_bad_files_are_refused() {
        let mut d = FwCfg::new(1, 1);
        assert!(matches!(
            d.add_file(&"x".repeat(56), vec![]),
            Err(FwCfgError::NameTooLong(_))
        ));
        d.add_file("a", vec![]).unwrap();
        assert_eq!(
            d.add_file("a", vec![]),
            Err(FwCfgError::Duplicate("a".into()))
        );
    }

    fn dma_dev() -> (FwCfg, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut d = FwCfg::with_dma(1 << 30, 2, mem.clone());
        d.add_file("etc/e820", (0u8..40).collect()).unwrap();
        (d, mem)
    }

    /// Writes a FWCfgDmaAccess at `at` and starts it as OVMF does (high, then low half).
    fn dma(d: &mut FwCfg, mem: &GuestMemoryMmap, at: u64, control: u32, len: u32, to: u64) {
        let mut req = control.to_be_bytes().to_vec();
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(&to.to_be_bytes());
        mem.write_slice(&req, GuestAddress(at)).unwrap();
        d.write(DMA_HIGH_OFFSET, &((at >> 32) as u32).to_be_bytes());
        d.write(DMA_LOW_OFFSET, &(at as u32).to_be_bytes());
    }

    fn control(mem: &GuestMemoryMmap, at: u64) -> u32 {
        mem.read_obj::<u32>(GuestAddress(at)).unwrap().swap_bytes()
    }

    #[test]
    fn fw_cfg_dma_id_bit_and_signature() {
        let (mut d, _) = dma_dev();
        select(&mut d, FW_CFG_ID);
        assert_eq!(read_n(&mut d, 4), vec![3, 0, 0, 0], "traditional and DMA");
        let mut b = [0u8; 4];
        d.read(DMA_HIGH_OFFSET, &mut b);
        assert_eq!(&b, b"QEMU");
        d.read(DMA_LOW_OFFSET, &mut b);
        assert_eq!(&b, b" CFG");
    }

    #[test]
    fn fw_cfg_dma_select_and_read_completes_with_control_0() {
        let (mut d, mem) = dma_dev();
        let sel = u32::from(FW_CFG_FILE_FIRST);
        dma(
            &mut d,
            &mem,
            0x100,
            (sel << 16) | DMA_CTL_SELECT | DMA_CTL_READ,
            8,
            0x1000,
        );
        assert_eq!(control(&mem, 0x100), 0);
        let mut got = [0u8; 8];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, [0, 1, 2, 3, 4, 5, 6, 7]);
        // Skip 2, then the next read continues there; the port interface too.
        dma(&mut d, &mem, 0x100, DMA_CTL_SKIP, 2, 0);
        dma(&mut d, &mem, 0x100, DMA_CTL_READ, 2, 0x1000);
        mem.read_slice(&mut got[..2], GuestAddress(0x1000)).unwrap();
        assert_eq!(&got[..2], &[10, 11]);
        assert_eq!(read_n(&mut d, 1), vec![12]);
    }

    #[test]
    fn fw_cfg_dma_read_past_end_zero_fills() {
        let (mut d, mem) = dma_dev();
        mem.write_slice(&[0xaa; 16], GuestAddress(0x2000)).unwrap();
        let sel = u32::from(FW_CFG_SIGNATURE);
        dma(
            &mut d,
            &mem,
            0x100,
            (sel << 16) | DMA_CTL_SELECT | DMA_CTL_READ,
            16,
            0x2000,
        );
        assert_eq!(control(&mem, 0x100), 0);
        let mut got = [0u8; 16];
        mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(&got[..4], b"QEMU");
        assert_eq!(&got[4..], &[0; 12]);
    }

    #[test]
    fn fw_cfg_dma_read_outside_memory_sets_error() {
        let (mut d, mem) = dma_dev();
        let sel = u32::from(FW_CFG_FILE_FIRST);
        dma(
            &mut d,
            &mem,
            0x100,
            (sel << 16) | DMA_CTL_SELECT | DMA_CTL_READ,
            40,
            0xfff0,
        );
        assert_eq!(control(&mem, 0x100), DMA_CTL_ERROR);
        // A huge length into nothing ends too (chunked, no allocation of its size).
        dma(&mut d, &mem, 0x100, DMA_CTL_READ, u32::MAX, 0x1_0000_0000);
        assert_eq!(control(&mem, 0x100), DMA_CTL_ERROR);
    }

    #[test]
    fn fw_cfg_dma_write_to_read_only_item_sets_error() {
        let (mut d, mem) = dma_dev();
        dma(&mut d, &mem, 0x100, DMA_CTL_WRITE, 4, 0x1000);
        assert_eq!(control(&mem, 0x100), DMA_CTL_ERROR);
        // No operation bit: completes with nothing moved.
        dma(&mut d, &mem, 0x100, 0, 4, 0x1000);
        assert_eq!(control(&mem, 0x100), 0);
    }

    #[test]
    fn fw_cfg_dma_request_outside_memory_is_dropped() {
        let (mut d, _) = dma_dev();
        d.write(DMA_HIGH_OFFSET, &1u32.to_be_bytes());
        d.write(DMA_LOW_OFFSET, &0u32.to_be_bytes());
        // Nothing to complete into; the device still works.
        select(&mut d, FW_CFG_SIGNATURE);
        assert_eq!(read_n(&mut d, 4), b"QEMU");
    }

    #[test]
    fn fw_cfg_without_dma_ignores_the_dma_ports() {
        let mut d = FwCfg::new(1, 1);
        d.write(DMA_LOW_OFFSET, &0x100u32.to_be_bytes());
        let mut b = [0xffu8; 4];
        d.read(DMA_HIGH_OFFSET, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn fw_cfg_selector_needs_a_16bit_write() {
        let mut d = FwCfg::new(1, 1);
        select(&mut d, FW_CFG_ID);
        d.write(SELECTOR_OFFSET, &[0]);
        assert_eq!(
            read_n(&mut d, 1),
            vec![1],
            "byte write to the selector ignored"
        );
    }
}
