//! `cargo run -p syncline-sim --release -- --seed N [--trace]` replays one seed (with a readable trace);
//! `--seeds A..B` runs a range and reports; `--bug <name>` switches on an injected bug (see
//! `syncline_sim::INJECTED_BUGS`: new-leader-drops-outbox, hidden-tabs-count-as-active, followers-fetch,
//! follower-persists-after-broadcasting, ignores-tab-gone, feed-drops-batches-during-catch-up,
//! feed-authorizes-only-at-subscribe, tail-forgets-streams-on-reconnect, tail-starts-at-head).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let trace = args.iter().any(|a| a == "--trace");
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let bug = value("--bug")
        .map(|name| syncline_sim::bug_named(&name).unwrap_or_else(|| panic!("no injected bug named {name}")));
    if let Some(seed) = value("--seed") {
        let seed: u64 = seed.parse().expect("--seed takes a number");
        match syncline_sim::run_with(seed, trace, bug) {
            Ok(stats) => println!("seed {seed}: ok {stats:?}"),
            Err(v) => {
                for line in &v.trace {
                    println!("{line}");
                }
                println!("{v}");
                std::process::exit(1);
            }
        }
        return;
    }
    let range = value("--seeds").unwrap_or_else(|| "0..1000".into());
    let (a, b) = range.split_once("..").expect("--seeds A..B");
    let (a, b): (u64, u64) = (a.parse().expect("start"), b.parse().expect("end"));
    let started = std::time::Instant::now();
    let mut failed = 0;
    let mut total = syncline_sim::RunStats::default();
    for seed in a..b {
        match syncline_sim::run_with(seed, false, bug) {
            Ok(s) => {
                total.browsers += s.browsers;
                total.events += s.events;
                total.writes_accepted += s.writes_accepted;
                total.writes_applied += s.writes_applied;
                total.surfaced += s.surfaced;
                total.http_requests += s.http_requests;
                total.max_long_polls_per_min = total.max_long_polls_per_min.max(s.max_long_polls_per_min);
            }
            Err(v) => {
                failed += 1;
                println!("{v}");
            }
        }
    }
    println!("{} seeds, {failed} failed, in {:.1?}", b - a, started.elapsed());
    println!(
        "totals: {} browsers, {} events, {} user writes accepted, {} writes applied, {} surfaced as conflicts or refusals, {} requests; at most {} long-polls/min in a browser",
        total.browsers,
        total.events,
        total.writes_accepted,
        total.writes_applied,
        total.surfaced,
        total.http_requests,
        total.max_long_polls_per_min
    );
}
