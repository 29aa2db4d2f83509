//! The vCPU state a boot protocol starts the kernel in, as plain values (no KVM types), plus
//! the GDT and identity page tables it needs in guest memory.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::FirmwareError;

/// Where the boot structures go (defaults: the VMM's layout.rs).
#[derive(Clone, Copy, Debug)]
pub struct BootStructures {
    pub gdt: GuestAddress,
    pub idt: GuestAddress,
    pub pml4: GuestAddress,
    pub pdpte: GuestAddress,
    pub pde: GuestAddress,
    pub stack_pointer: u64,
}

/// The processor mode the kernel is entered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// 64-bit long mode with paging (Linux 64-bit boot protocol).
    Long64,
    /// 32-bit protected mode, paging off (PVH, Multiboot).
    Protected32,
}

/// A segment register as KVM describes it (kvm_segment), decoded from a GDT entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub type_: u8,
    pub present: u8,
    pub dpl: u8,
    pub db: u8,
    pub s: u8,
    pub l: u8,
    pub g: u8,
    pub avl: u8,
}

/// Everything the VMM loads into the boot vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootCpuState {
    pub mode: CpuMode,
    pub rip: u64,
    pub rsp: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rsi: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub idt_base: u64,
    pub idt_limit: u16,
    pub code: Segment,
    pub data: Segment,
    pub tss: Segment,
}

/// CR0.PE: protection enable (Intel SDM vol. 3 section 2.5).
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (always 1).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME / EFER.LMA: long mode enable / active (SDM vol. 3 section 2.2.1).
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
/// Page-table entry bits: present, writable, page size (SDM vol. 3 section 4.5).
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_PAGE_SIZE: u64 = 1 << 7;
/// Size of a 2 MiB page and the entries in one table.
const PAGE_2M: u64 = 2 << 20;
const TABLE_ENTRIES: u64 = 512;

/// GDT entry layout (SDM vol. 3 section 3.4.5): flags are bits 55:52 and access byte 47:40,
/// passed here as one 16-bit `flags` value (flags << 12 | access).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | (((flags as u64) & 0xf0ff) << 40)
}

/// Decodes a GDT entry into a segment register value with the given selector index.
pub fn segment_from_gdt(entry: u64, index: u16) -> Segment {
    let limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    Segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        // With G=1 the limit counts 4 KiB units; KVM wants it in bytes.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
    }
}

/// The GDT for a mode: null, code, data, TSS (selectors 0x8, 0x10, 0x18).
pub fn gdt_for(mode: CpuMode) -> [u64; 4] {
    let code = match mode {
        // Present, DPL 0, code execute/read accessed; L=1 for 64-bit, D=1 for 32-bit; G=1.
        CpuMode::Long64 => gdt_entry(0xa09b, 0, 0xfffff),
        CpuMode::Protected32 => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        // 32-bit busy TSS; KVM needs a valid task register to enter the guest.
        gdt_entry(0x008b, 0, 0xfffff),
    ]
}

/// Writes the GDT and an empty IDT, and for long mode identity page tables for the first
/// 1 GiB (2 MiB pages), and returns the register state with `rip` and the mode's argument
/// registers left for the caller to fill.
pub fn setup<M: GuestMemoryBackend>(
    mem: &M,
    mode: CpuMode,
    s: &BootStructures,
) -> Result<BootCpuState, FirmwareError> {
    let gdt = gdt_for(mode);
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, s.gdt.unchecked_add(i as u64 * 8))
            .map_err(|_| FirmwareError::BootStructures("GDT"))?;
    }
    mem.write_obj(0u64, s.idt)
        .map_err(|_| FirmwareError::BootStructures("IDT"))?;
    let (cr0, cr3, cr4, efer) = match mode {
        CpuMode::Long64 => {
            write_identity_tables(mem, s)?;
            (
                X86_CR0_PE | X86_CR0_ET | X86_CR0_PG,
                s.pml4.0,
                X86_CR4_PAE,
                EFER_LME | EFER_LMA,
            )
        }
        CpuMode::Protected32 => (X86_CR0_PE | X86_CR0_ET, 0, 0, 0),
    };
    Ok(BootCpuState {
        mode,
        rip: 0,
        rsp: s.stack_pointer,
        rax: 0,
        rbx: 0,
        rsi: 0,
        cr0,
        cr3,
        cr4,
        efer,
        gdt_base: s.gdt.0,
        gdt_limit: (gdt.len() * 8 - 1) as u16,
        idt_base: s.idt.0,
        idt_limit: 7,
        code: segment_from_gdt(gdt[1], 1),
        data: segment_from_gdt(gdt[2], 2),
        tss: segment_from_gdt(gdt[3], 3),
    })
}

fn write_identity_tables<M: GuestMemoryBackend>(
    mem: &M,
    s: &BootStructures,
) -> Result<(), FirmwareError> {
    let err = |_| FirmwareError::BootStructures("page tables");
    mem.write_obj(s.pdpte.0 | PTE_PRESENT | PTE_WRITABLE, s.pml4)
        .map_err(err)?;
    mem.write_obj(s.pde.0 | PTE_PRESENT | PTE_WRITABLE, s.pdpte)
        .map_err(err)?;
    for i in 0..TABLE_ENTRIES {
        mem.write_obj(
            (i * PAGE_2M) | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE,
            s.pde.unchecked_add(i * 8),
        )
        .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn structures() -> BootStructures {
        BootStructures {
            gdt: GuestAddress(0x500),
            idt: GuestAddress(0x520),
            pml4: GuestAddress(0x9000),
            pdpte: GuestAddress(0xa000),
            pde: GuestAddress(0xb000),
            stack_pointer: 0x8ff0,
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entry_round_trips_through_segment() {
        let s = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((s.base, s.limit, s.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (s.type_, s.present, s.dpl, s.s, s.l, s.db, s.g),
            (0xb, 1, 0, 1, 1, 0, 1)
        );
        let d = segment_from_gdt(gdt_entry(0xc093, 0x1234_5678, 0xabcde), 2);
        assert_eq!(
            (d.base, d.limit, d.db, d.l, d.type_),
            (0x1234_5678, 0xabcd_efff, 1, 0, 3)
        );
    }

    #[test]
    fn long_mode_state_has_paging_and_64bit_code() {
        let m = mem();
        let st = setup(&m, CpuMode::Long64, &structures()).unwrap();
        assert_eq!(st.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(st.efer, EFER_LME | EFER_LMA);
        assert_eq!(st.cr3, 0x9000);
        assert_eq!((st.code.l, st.code.db), (1, 0));
        let gdt1: u64 = m.read_obj(GuestAddress(0x508)).unwrap();
        assert_eq!(gdt1, gdt_for(CpuMode::Long64)[1]);
    }

    #[test]
    fn long_mode_identity_maps_first_gib() {
        let m = mem();
        setup(&m, CpuMode::Long64, &structures()).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(pml4 & !0xfff, 0xa000);
        let last: u64 = m.read_obj(GuestAddress(0xb000 + 511 * 8)).unwrap();
        assert_eq!(last & !0xfff, 511 * PAGE_2M);
        assert_ne!(last & PTE_PAGE_SIZE, 0);
    }

    #[test]
    fn protected_mode_state_has_no_paging() {
        let m = mem();
        let st = setup(&m, CpuMode::Protected32, &structures()).unwrap();
        assert_eq!(st.cr0 & X86_CR0_PG, 0);
        assert_eq!(st.efer, 0);
        assert_eq!((st.code.l, st.code.db), (0, 1));
        let pml4: u64 = m.read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(pml4, 0, "no page tables written");
    }

    #[test]
    fn setup_fails_cleanly_without_memory_there() {
        let m: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(setup(&m, CpuMode::Long64, &structures()).is_err());
    }
}
