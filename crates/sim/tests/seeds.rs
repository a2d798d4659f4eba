//! Runs the simulation over many seeds (10,000 by default; `SYNCLINE_SIM_SEEDS=N` to change) on every core.
//! A failing seed prints the one command that replays it with a readable trace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[test]
fn every_seed_keeps_every_invariant() {
    let seeds: u64 = std::env::var("SYNCLINE_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let next = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds || failures.lock().unwrap().len() >= 5 {
                        break;
                    }
                    if let Err(v) = syncline_sim::run(seed, false) {
                        failures.lock().unwrap().push(v);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    eprintln!("simulated {seeds} seeds in {:.1?} on {threads} threads", started.elapsed());
    if !failures.is_empty() {
        for v in &failures {
            eprintln!("{v}\n  replay: cargo run -p syncline-sim -- --seed {} --trace", v.seed);
        }
        panic!("{} seed(s) broke an invariant (first: {})", failures.len(), failures[0]);
    }
}

#[test]
fn a_seed_replays_identically() {
    let a = syncline_sim::run(42, true).map(|s| (s.events, s.writes_accepted, s.http_requests));
    let b = syncline_sim::run(42, true).map(|s| (s.events, s.writes_accepted, s.http_requests));
    assert_eq!(a.ok(), b.ok(), "the same seed gives the same run");
}
