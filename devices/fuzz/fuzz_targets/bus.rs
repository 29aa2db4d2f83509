//! The whole-bus fuzzer (devices::fuzzing) driven by libFuzzer: the input bytes choose the
//! passed-through function's interrupt layout and every guest access. A failed oracle panics,
//! which libFuzzer reports with the input that reproduces it.
//!
//!   cd devices && cargo +nightly fuzz run bus -- -max_total_time=30

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = devices::fuzzing::run_bytes(data) {
        panic!("{finding}");
    }
});
