//! ACPI tables for minivmm (ACPI 6.5, VT-d chapter 8): RSDP, XSDT, FADT (hardware-reduced),
//! MADT, MCFG, DSDT and, with an IOMMU, DMAR; written into guest memory.
#![forbid(unsafe_code)]

pub mod dmar;
pub mod dsdt;
pub mod fadt;
pub mod loader;
pub mod madt;
pub mod mcfg;
pub mod table;

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

pub use dmar::DmarConfig;
pub use dsdt::{DsdtConfig, PciHostInfo, PowerButtonInfo, PrtEntry};
pub use fadt::PmRegisters;
pub use madt::IoApicInfo;
use table::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("ACPI tables need {needed} bytes but the region holds {size}")]
    TooLarge { needed: u64, size: u64 },
    #[error("Cannot write ACPI tables at {0:#x}")]
    Write(u64),
}

/// Everything the tables describe.
#[derive(Clone, Debug)]
pub struct AcpiConfig {
    pub cpus: u32,
    pub ioapic: IoApicInfo,
    pub pm: PmRegisters,
    pub dsdt: DsdtConfig,
    pub dmar: Option<DmarConfig>,
}

/// Tables are 16-byte aligned (ACPI requires 8 for the XSDT's 64-bit pointers; 16 for RSDP).
const ALIGN: u64 = 16;

fn align(v: u64) -> u64 {
    v.div_ceil(ALIGN) * ALIGN
}

/// The tables laid out from `start`: (address, bytes), RSDP first.
pub fn build_tables(start: GuestAddress, cfg: &AcpiConfig) -> Vec<(u64, Vec<u8>)> {
    let rsdp_addr = align(start.0);
    let mut next = align(rsdp_addr + Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>, out: &mut Vec<(u64, Vec<u8>)>| {
        let a = next;
        next = align(a + bytes.len() as u64);
        out.push((a, bytes));
        a
    };
    let mut tables = Vec::new();
    let dsdt = place(dsdt::build(&cfg.dsdt), &mut tables);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(place(fadt::build(dsdt, &cfg.pm), &mut tables));
    xsdt.add_entry(place(madt::build(cfg.cpus, &cfg.ioapic), &mut tables));
    xsdt.add_entry(place(
        mcfg::build(cfg.dsdt.pci.ecam_base, 0, cfg.dsdt.pci.end_bus),
        &mut tables,
    ));
    if let Some(d) = &cfg.dmar {
        xsdt.add_entry(place(dmar::build(d), &mut tables));
    }
    let mut xb = Vec::new();
    xsdt.to_aml_bytes(&mut xb);
    let xsdt_addr = place(xb, &mut tables);
    let mut rb = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rb);
    tables.insert(0, (rsdp_addr, rb));
    tables
}

/// Writes the tables into `[start, start + size)` and returns the RSDP's address.
pub fn create_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    start: GuestAddress,
    size: u64,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    let tables = build_tables(start, cfg);
    let end = tables
        .iter()
        .map(|(a, b)| a + b.len() as u64)
        .max()
        .unwrap_or(start.0);
    if end - start.0 > size {
        return Err(AcpiError::TooLarge {
            needed: end - start.0,
            size,
        });
    }
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|_| AcpiError::Write(*addr))?;
    }
    Ok(GuestAddress(tables[0].0))
}

#[cfg(test)]
mod tests;
