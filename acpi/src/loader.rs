//! The ACPI tables as firmware loads them from fw_cfg: `etc/acpi/tables` (every table in one
//! blob, pointers as offsets within it), `etc/acpi/rsdp`, and `etc/table-loader`, the
//! script QEMU's BIOS linker/loader defines (QEMU hw/acpi/bios-linker-loader.c; edk2
//! OvmfPkg/Include/IndustryStandard/QemuLoader.h). OVMF's AcpiPlatformDxe (QemuFwCfgAcpi.c)
//! allocates each blob, adds the pointee blob's address to every pointer field, computes the
//! checksums, and installs every table an ADD_POINTER points at (the DSDT through the FADT,
//! the others through the XSDT).
//!
//! Script, in order: ALLOCATE rsdp (16, FSEG) and tables (64, HIGH); for each table its
//! pointers (FADT X_DSDT, the XSDT entries), then its checksum; the RSDP's XSDT pointer,
//! then its checksum and extended checksum. Every pointer is 8 bytes, so OVMF may place the
//! tables anywhere.

use vm_memory::GuestAddress;

use crate::table::HEADER_LEN;
use crate::AcpiConfig;

/// fw_cfg file names (QEMU include/hw/acpi/aml-build.h ACPI_BUILD_*_FILE).
pub const TABLES_FILE: &str = "etc/acpi/tables";
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
pub const LOADER_FILE: &str = "etc/table-loader";
/// Loader commands (bios-linker-loader.c BIOS_LINKER_LOADER_COMMAND_*).
pub const COMMAND_ALLOCATE: u32 = 1;
pub const COMMAND_ADD_POINTER: u32 = 2;
pub const COMMAND_ADD_CHECKSUM: u32 = 3;
/// ALLOCATE zones: anywhere, or the F segment (below 1 MiB).
pub const ZONE_HIGH: u8 = 1;
pub const ZONE_FSEG: u8 = 2;
/// Every command is 128 bytes; file names are NUL-padded 56-byte fields.
pub const ENTRY_LEN: usize = 128;
pub const FILE_LEN: usize = 56;
/// Alignments: the RSDP's (ACPI 6.5 section 5.2.5.1) and QEMU's for the tables.
const RSDP_ALIGN: u32 = 16;
const TABLES_ALIGN: u32 = 64;
/// Offsets within tables (ACPI 6.5): the header checksum; FADT FIRMWARE_CTRL, DSDT,
/// X_FIRMWARE_CTRL, X_DSDT; RSDP checksum, XsdtAddress, extended checksum.
const CHECKSUM: usize = 9;
const FADT_FIRMWARE_CTRL: usize = 36;
const FADT_DSDT: usize = 40;
const FADT_X_FIRMWARE_CTRL: usize = 132;
const FADT_X_DSDT: usize = 140;
const RSDP_CHECKSUM: usize = 8;
const RSDP_V1_LEN: u32 = 20;
const RSDP_XSDT: usize = 24;
const RSDP_EXT_CHECKSUM: usize = 32;

/// The three fw_cfg files.
#[derive(Clone, Debug)]
pub struct FwCfgAcpi {
    pub rsdp: Vec<u8>,
    pub tables: Vec<u8>,
    pub loader: Vec<u8>,
}

fn file_field(name: &str) -> [u8; FILE_LEN] {
    let mut f = [0u8; FILE_LEN];
    f[..name.len()].copy_from_slice(name.as_bytes());
    f
}

/// Appends one 128-byte command.
fn command(out: &mut Vec<u8>, kind: u32, body: &[&[u8]]) {
    let start = out.len();
    out.extend_from_slice(&kind.to_le_bytes());
    for b in body {
        out.extend_from_slice(b);
    }
    out.resize(start + ENTRY_LEN, 0);
}

fn allocate(out: &mut Vec<u8>, file: &str, align: u32, zone: u8) {
    command(
        out,
        COMMAND_ALLOCATE,
        &[&file_field(file), &align.to_le_bytes(), &[zone]],
    );
}

fn add_pointer(out: &mut Vec<u8>, pointer_file: &str, pointee_file: &str, at: usize, size: u8) {
    command(
        out,
        COMMAND_ADD_POINTER,
        &[
            &file_field(pointer_file),
            &file_field(pointee_file),
            &(at as u32).to_le_bytes(),
            &[size],
        ],
    );
}

fn add_checksum(out: &mut Vec<u8>, file: &str, result: usize, start: usize, len: usize) {
    command(
        out,
        COMMAND_ADD_CHECKSUM,
        &[
            &file_field(file),
            &(result as u32).to_le_bytes(),
            &(start as u32).to_le_bytes(),
            &(len as u32).to_le_bytes(),
        ],
    );
}

fn le(bytes: &[u8], at: usize, size: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..size].copy_from_slice(&bytes[at..at + size]);
    u64::from_le_bytes(v)
}

/// The tables `cfg` describes, as the three fw_cfg files.
pub fn build(cfg: &AcpiConfig) -> FwCfgAcpi {
    // Laid out from 0, every pointer already holds its pointee's offset in the blob. The
    // RSDP is first; the blob keeps zeros where it was (nothing points there).
    let laid = crate::build_tables(GuestAddress(0), cfg);
    let (_, rsdp_bytes) = &laid[0];
    let end = laid
        .iter()
        .map(|(a, b)| *a as usize + b.len())
        .max()
        .unwrap_or(0);
    let mut tables = vec![0u8; end];
    let mut loader = Vec::new();
    allocate(&mut loader, RSDP_FILE, RSDP_ALIGN, ZONE_FSEG);
    allocate(&mut loader, TABLES_FILE, TABLES_ALIGN, ZONE_HIGH);
    for (addr, bytes) in &laid[1..] {
        let at = *addr as usize;
        tables[at..at + bytes.len()].copy_from_slice(bytes);
        tables[at + CHECKSUM] = 0;
        let mut pointers: Vec<(usize, u8)> = Vec::new();
        match &bytes[0..4] {
            b"FACP" => {
                for (field, size) in [
                    (FADT_FIRMWARE_CTRL, 4),
                    (FADT_DSDT, 4),
                    (FADT_X_FIRMWARE_CTRL, 8),
                    (FADT_X_DSDT, 8),
                ] {
                    if bytes.len() >= field + size && le(bytes, field, size) != 0 {
                        pointers.push((field, size as u8));
                    }
                }
            }
            b"XSDT" => {
                pointers.extend((HEADER_LEN..bytes.len()).step_by(8).map(|f| (f, 8)));
            }
            _ => {}
        }
        for (field, size) in pointers {
            add_pointer(&mut loader, TABLES_FILE, TABLES_FILE, at + field, size);
        }
        add_checksum(&mut loader, TABLES_FILE, at + CHECKSUM, at, bytes.len());
    }
    let mut rsdp = rsdp_bytes.clone();
    rsdp[RSDP_CHECKSUM] = 0;
    rsdp[RSDP_EXT_CHECKSUM] = 0;
    add_pointer(&mut loader, RSDP_FILE, TABLES_FILE, RSDP_XSDT, 8);
    add_checksum(
        &mut loader,
        RSDP_FILE,
        RSDP_CHECKSUM,
        0,
        RSDP_V1_LEN as usize,
    );
    add_checksum(&mut loader, RSDP_FILE, RSDP_EXT_CHECKSUM, 0, rsdp.len());
    FwCfgAcpi {
        rsdp,
        tables,
        loader,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::table::checksum;

    fn name(field: &[u8]) -> String {
        let n = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        String::from_utf8(field[..n].to_vec()).unwrap()
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Runs the script as OVMF's InstallQemuFwCfgTables does: each blob allocated (here at
    /// a fixed odd place, aligned as asked), each pointer incremented by its pointee's
    /// address, each checksum stored as 0 - sum. Returns blob name -> (address, bytes).
    fn execute(f: &FwCfgAcpi, bases: &[(&str, u64)]) -> BTreeMap<String, (u64, Vec<u8>)> {
        let files: BTreeMap<&str, &Vec<u8>> = [
            (RSDP_FILE, &f.rsdp),
            (TABLES_FILE, &f.tables),
            (LOADER_FILE, &f.loader),
        ]
        .into_iter()
        .collect();
        let mut mem: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
        assert_eq!(f.loader.len() % ENTRY_LEN, 0);
        for e in f.loader.chunks(ENTRY_LEN) {
            let b = &e[4..];
            match u32_at(e, 0) {
                COMMAND_ALLOCATE => {
                    let file = name(&b[..FILE_LEN]);
                    let align = u64::from(u32_at(b, FILE_LEN));
                    assert!(align.is_power_of_two() && align <= 4096, "OVMF's limit");
                    let zone = b[FILE_LEN + 4];
                    assert!(zone == ZONE_HIGH || zone == ZONE_FSEG);
                    let base = bases.iter().find(|(n, _)| *n == file).unwrap().1;
                    assert_eq!(base % align, 0);
                    mem.insert(file.clone(), (base, files[file.as_str()].clone()));
                }
                COMMAND_ADD_POINTER => {
                    let pointer = name(&b[..FILE_LEN]);
                    let pointee = name(&b[FILE_LEN..2 * FILE_LEN]);
                    let at = u32_at(b, 2 * FILE_LEN) as usize;
                    let size = b[2 * FILE_LEN + 4] as usize;
                    let base = mem[&pointee].0;
                    let blob = &mut mem.get_mut(&pointer).unwrap().1;
                    let v = le(blob, at, size) + base;
                    assert!(size == 8 || v >> (size * 8) == 0, "pointer fits");
                    blob[at..at + size].copy_from_slice(&v.to_le_bytes()[..size]);
                }
                COMMAND_ADD_CHECKSUM => {
                    let file = name(&b[..FILE_LEN]);
                    let result = u32_at(b, FILE_LEN) as usize;
                    let start = u32_at(b, FILE_LEN + 4) as usize;
                    let len = u32_at(b, FILE_LEN + 8) as usize;
                    let blob = &mut mem.get_mut(&file).unwrap().1;
                    assert_eq!(blob[result], 0, "checksum byte zero beforehand");
                    blob[result] = 0u8.wrapping_sub(checksum(&blob[start..start + len]));
                }
                other => panic!("unexpected command {other}"),
            }
        }
        mem
    }

    /// The bytes at guest address `addr` in the loaded blobs.
    fn at(mem: &BTreeMap<String, (u64, Vec<u8>)>, addr: u64) -> &[u8] {
        mem.values()
            .find(|(b, v)| (*b..*b + v.len() as u64).contains(&addr))
            .map(|(b, v)| &v[(addr - b) as usize..])
            .expect("pointer into a loaded blob")
    }

    fn table(bytes: &[u8]) -> &[u8] {
        &bytes[..u32_at(bytes, 4) as usize]
    }

    #[test]
    fn loader_tables_are_valid_after_relocation() {
        let f = build(&crate::tests::config(4, true));
        let mem = execute(&f, &[(RSDP_FILE, 0xf_5a30), (TABLES_FILE, 0x7fe8_1040)]);
        let rsdp = &mem[RSDP_FILE].1;
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(checksum(&rsdp[..20]), 0, "RSDP checksum");
        assert_eq!(checksum(&rsdp[..36]), 0, "RSDP extended checksum");
        let xsdt = table(at(&mem, le(rsdp, RSDP_XSDT, 8)));
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert_eq!(checksum(xsdt), 0);
        let mut seen = Vec::new();
        for e in (HEADER_LEN..xsdt.len()).step_by(8) {
            let t = table(at(&mem, le(xsdt, e, 8)));
            assert_eq!(checksum(t), 0, "{:?}", std::str::from_utf8(&t[0..4]));
            seen.push(String::from_utf8(t[0..4].to_vec()).unwrap());
            if &t[0..4] == b"FACP" {
                let dsdt = table(at(&mem, le(t, FADT_X_DSDT, 8)));
                assert_eq!(&dsdt[0..4], b"DSDT");
                assert_eq!(checksum(dsdt), 0);
            }
        }
        assert_eq!(seen, ["FACP", "APIC", "MCFG", "DMAR"]);
    }

    #[test]
    fn loader_tables_hold_offsets_and_zero_checksums() {
        let f = build(&crate::tests::config(1, false));
        // Before loading: the XSDT pointer is an offset in the tables blob.
        let xsdt = le(&f.rsdp, RSDP_XSDT, 8) as usize;
        assert_eq!(&f.tables[xsdt..xsdt + 4], b"XSDT");
        assert_eq!(f.rsdp[RSDP_CHECKSUM], 0);
        assert_eq!(f.tables[xsdt + CHECKSUM], 0);
        // Loading at 0 leaves every table as the direct-boot build at 0 made it.
        let mem = execute(&f, &[(RSDP_FILE, 0), (TABLES_FILE, 0)]);
        for (addr, bytes) in crate::build_tables(GuestAddress(0), &crate::tests::config(1, false))
            .iter()
            .skip(1)
        {
            let a = *addr as usize;
            assert_eq!(&mem[TABLES_FILE].1[a..a + bytes.len()], &bytes[..]);
        }
    }

    #[test]
    fn loader_commands_are_128_bytes_in_order() {
        let f = build(&crate::tests::config(2, true));
        let kinds: Vec<u32> = f.loader.chunks(ENTRY_LEN).map(|e| u32_at(e, 0)).collect();
        assert_eq!(&kinds[..2], &[COMMAND_ALLOCATE, COMMAND_ALLOCATE]);
        // The last three: the RSDP's pointer and its two checksums.
        assert_eq!(
            &kinds[kinds.len() - 3..],
            &[
                COMMAND_ADD_POINTER,
                COMMAND_ADD_CHECKSUM,
                COMMAND_ADD_CHECKSUM
            ]
        );
        // 6 tables (DSDT FACP APIC MCFG DMAR XSDT): 6 checksums; FADT X_DSDT + 4 XSDT
        // entries + RSDP: 6 pointers.
        let count = |k| kinds.iter().filter(|&&x| x == k).count();
        assert_eq!(count(COMMAND_ADD_CHECKSUM), 8);
        assert_eq!(count(COMMAND_ADD_POINTER), 6);
    }
}
