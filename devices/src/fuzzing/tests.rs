//! The bus fuzzer in `cargo test`: a few seconds by default; longer, or one seed replayed,
//! with environment variables:
//!   MINIVMM_FUZZ_SECS=300 cargo test -p devices --lib fuzzing -- --nocapture
//!   MINIVMM_FUZZ_SEED=0x1234 cargo test -p devices --lib fuzzing -- --nocapture
//! MINIVMM_FUZZ_FIRST_SEED sets where a timed run starts; MINIVMM_FUZZ_SLOW_MS the bound on
//! one access.

use super::*;

/// Accesses per seed.
const OPS_PER_SEED: usize = 2000;
/// Default time budget of the whole run.
const DEFAULT_SECS: u64 = 3;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn bus_fuzz_seeds_break_no_oracle() {
    let limits = Limits {
        max_ops: OPS_PER_SEED,
        slow_access: env_u64("MINIVMM_FUZZ_SLOW_MS").map_or(SLOW_ACCESS, Duration::from_millis),
        ..Limits::default()
    };
    if let Some(seed) = env_u64("MINIVMM_FUZZ_SEED") {
        let s = run_seed(seed, limits).unwrap_or_else(|f| panic!("seed {seed:#x}: {f}"));
        eprintln!("seed {seed:#x}: {s:?}");
        return;
    }
    let secs = env_u64("MINIVMM_FUZZ_SECS").unwrap_or(DEFAULT_SECS);
    let end = Instant::now() + Duration::from_secs(secs);
    let first = env_u64("MINIVMM_FUZZ_FIRST_SEED").unwrap_or(0);
    let mut total = Summary::default();
    let mut seeds = 0;
    while Instant::now() < end {
        let seed = first + seeds;
        let limits = Limits {
            deadline: Some(end),
            ..limits
        };
        let s = run_seed(seed, limits).unwrap_or_else(|f| {
            panic!("seed {seed:#x} (replay: MINIVMM_FUZZ_SEED={seed:#x}): {f}")
        });
        total.ops += s.ops;
        total.dma_transfers += s.dma_transfers;
        total.msis += s.msis;
        total.slowest = total.slowest.max(s.slowest);
        seeds += 1;
    }
    eprintln!("{seeds} seeds from {first:#x}: {total:?}");
    assert!(total.ops > 0);
}

#[test]
fn bus_fuzz_same_seed_replays_the_same_run() {
    let limits = Limits {
        max_ops: 300,
        ..Limits::default()
    };
    let a = run_seed(7, limits).map(|s| (s.ops, s.dma_transfers, s.msis));
    let b = run_seed(7, limits).map(|s| (s.ops, s.dma_transfers, s.msis));
    assert_eq!(a, b);
}

#[test]
fn bus_fuzz_bytes_drive_a_bounded_run() {
    let data: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let s = run_bytes(&data).unwrap();
    assert!(s.ops > 0 && s.ops < data.len());
    assert_eq!(run_bytes(&[]).map(|s| s.ops), Ok(0));
}
