//! Drives the VT-d unit from arbitrary bytes through the same structure-aware operations and
//! oracles as the seeded test (`iommu::fuzzing`); an oracle failure panics with the
//! operations that led to it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    iommu::fuzzing::run_bytes(data);
});
