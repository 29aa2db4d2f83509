//! What a remapping unit offers: address width, interrupt remapping, caching mode,
//! device-IOTLB. A plain value: the VMM builds it from its own configuration.

use crate::registers::{cap, ecap, FRCD_REG, IVA_REG, NUM_FRCD};

/// Remapping unit configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuConfig {
    /// Guest address width: 39 (3-level tables) or 48 (4-level).
    pub aw_bits: u8,
    pub interrupt_remapping: bool,
    /// CAP.CM: software must invalidate after every change, even not-present to present.
    pub caching_mode: bool,
    /// ECAP.DT: device-TLBs (ATS) supported; device-TLB invalidate descriptors honoured.
    pub device_iotlb: bool,
    /// ECAP.EIM: x2APIC destinations in IRTEs.
    pub x2apic: bool,
}

impl Default for IommuConfig {
    fn default() -> Self {
        IommuConfig {
            aw_bits: 48,
            interrupt_remapping: true,
            caching_mode: true,
            device_iotlb: false,
            x2apic: true,
        }
    }
}

impl IommuConfig {
    /// CAP_REG (VT-d 11.4.2).
    pub fn cap(&self) -> u64 {
        let sagaw = if self.aw_bits == 48 {
            cap::SAGAW_39 | cap::SAGAW_48
        } else {
            cap::SAGAW_39
        };
        let mut v = cap::ND_16BIT
            | (sagaw << cap::SAGAW_SHIFT)
            | (u64::from(self.aw_bits - 1) << cap::MGAW_SHIFT)
            | cap::ZLR
            | ((FRCD_REG / 16) << cap::FRO_SHIFT)
            | ((cap::SLLPS_2M | cap::SLLPS_1G) << cap::SLLPS_SHIFT)
            | cap::PSI
            | ((NUM_FRCD as u64 - 1) << cap::NFR_SHIFT)
            | (cap::MAMV << cap::MAMV_SHIFT)
            | cap::DWD
            | cap::DRD;
        if self.caching_mode {
            v |= cap::CM;
        }
        v
    }

    /// ECAP_REG (VT-d 11.4.3).
    pub fn ecap(&self) -> u64 {
        let mut v = ecap::QI | ecap::PT | ((IVA_REG / 16) << ecap::IRO_SHIFT) | ecap::C;
        if self.interrupt_remapping {
            v |= ecap::IR | (ecap::MHMV << ecap::MHMV_SHIFT);
            if self.x2apic {
                v |= ecap::EIM;
            }
        }
        if self.device_iotlb {
            v |= ecap::DT;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_for_48_and_39_bits() {
        let c48 = IommuConfig::default().cap();
        assert_eq!((c48 >> cap::SAGAW_SHIFT) & 0x1f, 0b110);
        assert_eq!((c48 >> cap::MGAW_SHIFT) & 0x3f, 47);
        assert_eq!((c48 >> cap::FRO_SHIFT) & 0x3ff, 0x20, "FRO = 0x200 / 16");
        assert_eq!((c48 >> cap::NFR_SHIFT) & 0xff, 7);
        assert_ne!(c48 & cap::CM, 0);
        let c39 = IommuConfig {
            aw_bits: 39,
            caching_mode: false,
            ..IommuConfig::default()
        }
        .cap();
        assert_eq!((c39 >> cap::SAGAW_SHIFT) & 0x1f, 0b010);
        assert_eq!((c39 >> cap::MGAW_SHIFT) & 0x3f, 38);
        assert_eq!(c39 & cap::CM, 0);
    }

    #[test]
    fn ecap_fields() {
        let e = IommuConfig::default().ecap();
        assert_ne!(e & ecap::QI, 0);
        assert_ne!(e & ecap::IR, 0);
        assert_ne!(e & ecap::EIM, 0);
        assert_eq!((e >> ecap::IRO_SHIFT) & 0x3ff, 0x10, "IRO = 0x100 / 16");
        let e = IommuConfig {
            interrupt_remapping: false,
            ..IommuConfig::default()
        }
        .ecap();
        assert_eq!(e & (ecap::IR | ecap::EIM), 0);
    }
}
