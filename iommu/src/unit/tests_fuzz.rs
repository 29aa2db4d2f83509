//! The seeded run of the differential fuzzer (`crate::fuzzing`): seeds from 1 (or
//! `MINIVMM_FUZZ_FIRST`) for a few seconds by default, longer with `MINIVMM_FUZZ_SECS`.
//! `MINIVMM_FUZZ_SEED=<n>` replays one seed (printing its operations with `--nocapture`);
//! `MINIVMM_FUZZ_KEEP_GOING=1` surveys seeds past failures (hangs excepted);
//! `MINIVMM_FUZZ_ALLOW=F-SL-1,F-CTX-1,F-IR-2,F-QI-2,F-CM` looks past those known findings
//! (surveys only). Every failure prints its seed and the operations that led to it:
//!   MINIVMM_FUZZ_SECS=60 cargo test -p iommu --lib tests_fuzz -- --nocapture

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fuzzing::oracle::Allow;
use crate::fuzzing::{self, Failure};

/// Operations per seed.
const OPS: u64 = 500;
/// No single unit call may take longer (debug build, shared CI machine).
const SLOW: Duration = Duration::from_secs(2);
/// Default time budget, for `cargo test` in CI.
const DEFAULT_SECS: f64 = 3.0;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What the watchdog sees: the seed and operation in progress and when it started.
struct Progress {
    seed: u64,
    op: String,
    since: Instant,
}

#[test]
fn fuzz_random_guest_operations_match_reference_model() {
    let one = env_u64("MINIVMM_FUZZ_SEED");
    let secs = std::env::var("MINIVMM_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(DEFAULT_SECS);
    let keep_going = std::env::var("MINIVMM_FUZZ_KEEP_GOING").is_ok();
    let first = one.unwrap_or_else(|| env_u64("MINIVMM_FUZZ_FIRST").unwrap_or(1));
    let budget = Duration::from_secs_f64(secs);
    let allow = Allow::parse(&std::env::var("MINIVMM_FUZZ_ALLOW").unwrap_or_default());
    let progress = Arc::new(Mutex::new(Progress {
        seed: first,
        op: String::new(),
        since: Instant::now(),
    }));
    let shared = Arc::clone(&progress);
    let worker = std::thread::spawn(move || {
        let start = Instant::now();
        let (mut failures, mut seeds, mut total) = (Vec::new(), 0u64, fuzzing::Stats::default());
        for seed in first.. {
            if one.is_some_and(|s| s != seed) || (one.is_none() && start.elapsed() > budget) {
                break;
            }
            let mut report = |op: &str| {
                let mut p = shared.lock().unwrap();
                (p.seed, p.since) = (seed, Instant::now());
                p.op.clear();
                p.op.push_str(op);
                if one.is_some() {
                    println!("{op}");
                }
            };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fuzzing::run_seed(seed, OPS, SLOW, allow, &mut report)
            }));
            seeds += 1;
            match r {
                Ok(Ok(s)) => {
                    total.ops += s.ops;
                    total.checks += s.checks;
                    total.superpage_dmas += s.superpage_dmas;
                    total.partial_psis += s.partial_psis;
                    total.limit_hits += s.limit_hits;
                }
                Ok(Err(Failure { msg, log })) => {
                    eprintln!(
                        "MINIVMM_FUZZ_SEED={seed}: {msg}\nlast operations:\n  {}",
                        log.join("\n  ")
                    );
                    failures.push((seed, msg));
                }
                Err(_) => {
                    eprintln!("MINIVMM_FUZZ_SEED={seed}: panic (message above)");
                    failures.push((seed, "panic (message above)".to_string()));
                }
            }
            if !failures.is_empty() && !keep_going {
                break;
            }
        }
        (failures, seeds, total)
    });
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let p = progress.lock().unwrap();
        assert!(
            p.since.elapsed() < SLOW * 5,
            "MINIVMM_FUZZ_SEED={}: hang: `{}` running for {:?}",
            p.seed,
            p.op,
            p.since.elapsed()
        );
    }
    let (failures, seeds, total) = worker.join().unwrap();
    eprintln!("fuzz: {seeds} seeds, {total:?}");
    for (seed, msg) in &failures {
        eprintln!("  seed {seed}: {}", msg.lines().next().unwrap_or(""));
    }
    assert!(failures.is_empty(), "{} failing seeds", failures.len());
}
