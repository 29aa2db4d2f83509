//! QEMU's fw_cfg interface over I/O ports (QEMU docs/specs/fw_cfg.rst), traditional (non-DMA)
//! access only: a 16-bit selector at port 0x510 and an 8-bit data port at 0x511. Items:
//! signature, ID, RAM size, CPU counts, and a file directory for named blobs — the start of
//! what firmware boot will need.

use std::collections::BTreeMap;

use crate::bus::BusDevice;

/// Ports (offsets from 0x510): selector (16-bit write), data (8-bit read).
pub const FW_CFG_PORT_SIZE: u64 = 2;
const SELECTOR_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
/// Well-known selectors (fw_cfg.rst "Selector Register" and hw/nvram/fw_cfg.h).
pub const FW_CFG_SIGNATURE: u16 = 0x0000;
pub const FW_CFG_ID: u16 = 0x0001;
pub const FW_CFG_RAM_SIZE: u16 = 0x0003;
pub const FW_CFG_NB_CPUS: u16 = 0x0005;
pub const FW_CFG_MAX_CPUS: u16 = 0x000f;
pub const FW_CFG_FILE_DIR: u16 = 0x0019;
/// First selector given to files.
pub const FW_CFG_FILE_FIRST: u16 = 0x0020;
/// ID feature bits: traditional interface (bit 0); DMA (bit 1) is not offered.
const FEATURE_TRADITIONAL: u32 = 1 << 0;
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
        };
        d.rebuild_directory();
        d
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
        if offset == SELECTOR_OFFSET && data.len() == 2 {
            self.selector = u16::from_le_bytes([data[0], data[1]]);
            self.offset = 0;
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
