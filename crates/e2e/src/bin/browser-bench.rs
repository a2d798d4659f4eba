//! `cargo xtask bench browser`: one browser with N tabs (one visible) on a board while the server makes one change
//! per second. Measures, as the server saw it, HTTP requests per minute and WebSockets; and change → DOM latency
//! in the visible tab and in a hidden one (wall clock on both sides). Then, on a 1,000-card board, the main-thread
//! time each change costs (Chromium's own `Performance.getMetrics` task time, idle time subtracted) and the long
//! tasks. Prints tables; asserts nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chromiumoxide::cdp::browser_protocol::performance::EnableParams;
use syncline_e2e::{Harness, Tab, TestBrowser};
use syncline_kanban::{CreateBoard, CreateCard, CreateColumn, UpdateCard, WriteOp};
use uuid::Uuid;

fn wall_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

const OBSERVE: &str = r#"(() => {
  window.__seen = [];
  const target = () => document.querySelector('.card .card-title');
  new MutationObserver(() => {
    const t = target();
    if (t && t.textContent.startsWith('bench ') && !window.__seen.some(s => s[0] === t.textContent)) {
      window.__seen.push([t.textContent, Date.now()]);
    }
  }).observe(document.body, { subtree: true, childList: true, characterData: true });
})()"#;

/// A board with one column and one card (titled "start"): their ids.
async fn board_with_a_card(h: &Harness) -> anyhow::Result<(Uuid, Uuid, Uuid)> {
    let id = |v: serde_json::Value| Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
    let board = id(h.write(WriteOp::CreateBoard { body: CreateBoard { id: None, title: "Bench".into() } }).await?);
    let column = id(h
        .write(WriteOp::CreateColumn { board_id: board, body: CreateColumn { id: None, title: "Col".into() } })
        .await?);
    let body = CreateCard { id: None, title: "start".into(), description: String::new() };
    let card = id(h.write(WriteOp::CreateCard { column_id: column, body }).await?);
    Ok((board, column, card))
}

/// Renames `card` to "bench 0", "bench 1", … once a second for `seconds`: each title with when it was written.
async fn rename_every_second(h: &Harness, card: Uuid, seconds: u64) -> anyhow::Result<Vec<(String, f64)>> {
    let mut sent = Vec::new();
    for i in 0..seconds {
        let title = format!("bench {i}");
        sent.push((title.clone(), wall_ms()));
        h.write(WriteOp::UpdateCard { id: card, body: UpdateCard { title: Some(title), ..Default::default() } })
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(sent)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    // `BENCH_ONLY=first-load` measures only the first load.
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "first-load") {
        return first_load().await;
    }
    // `BENCH_ONLY=hidden` measures only what hidden tabs cost.
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "hidden") {
        return hidden_tabs(seconds).await;
    }
    // `BENCH_ONLY=peers`: the app side by side with a TanStack Query page (`cargo xtask bench peers`).
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "peers") {
        return peers(seconds).await;
    }
    // `BENCH_ONLY=big-board` measures only big boards (`BENCH_CARDS=10,1000,5000` by default).
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "big-board") {
        return big_board().await;
    }
    println!("browser sync: 1 change/s for {seconds} s; one browser, N tabs, the first visible, the rest hidden");
    println!(
        "{:>4} | {:>13} | {:>10} | {:>22} | {:>22}",
        "tabs", "HTTP req/min", "WebSockets", "visible tab p50/p99 ms", "hidden tab p50/p99 ms"
    );
    println!("{}", "-".repeat(84));
    for tabs in [1usize, 4, 8] {
        let h = Harness::start().await?;
        let (board, _, card) = board_with_a_card(&h).await?;
        let browser = TestBrowser::launch().await?;
        let url = h.url(&format!("/#/boards/{board}"));
        let mut open = Vec::new();
        for i in 0..tabs {
            let tab = browser.open(&url).await?;
            tab.wait_for("document.querySelector('.card')", Duration::from_secs(10)).await?;
            tab.exec(OBSERVE).await?;
            if i > 0 {
                tab.hide().await?;
            }
            open.push(tab);
        }
        open[0].show().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = h.stats().requests_total();
        let sent = rename_every_second(&h, card, seconds).await?;
        let requests = h.stats().requests_total() - before;
        let sockets = h.open_websockets();
        let latency = |seen: Vec<(String, f64)>| -> Vec<f64> {
            seen.iter().filter_map(|(t, at)| sent.iter().find(|(s, _)| s == t).map(|(_, w)| at - w)).collect()
        };
        let visible: Vec<(String, f64)> = open[0].eval("window.__seen").await?;
        let mut v = latency(visible);
        let mut hid = if tabs > 1 { latency(open[tabs - 1].eval("window.__seen").await?) } else { Vec::new() };
        println!(
            "{:>4} | {:>13.1} | {:>10} | {:>10.1} / {:>9.1} | {:>10.1} / {:>9.1}",
            tabs,
            requests as f64 * 60.0 / seconds as f64,
            sockets,
            pct(&mut v, 0.5),
            pct(&mut v, 0.99),
            pct(&mut hid, 0.5),
            pct(&mut hid, 0.99)
        );
        browser.close().await;
        h.stop().await;
    }
    println!("(hidden tabs render when the browser lets them; their latency includes background timer throttling)");
    first_load().await?;
    hidden_tabs(seconds).await?;
    big_board().await
}

/// The boards to measure, in cards (`BENCH_CARDS=1,1000` instead of `default`), and the biggest.
fn board_sizes(default: &[usize]) -> (Vec<usize>, usize) {
    let sizes: Vec<usize> = std::env::var("BENCH_CARDS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec());
    let biggest = sizes.iter().copied().max().unwrap_or(0);
    (sizes, biggest)
}

/// What a hidden follower costs per change (Chromium's main-thread task time of that tab, 4 tabs, one change a
/// second on boards of one card, 1,000 and 5,000), and how soon a hidden tab shows the current board once it is
/// shown.
async fn hidden_tabs(seconds: u64) -> anyhow::Result<()> {
    println!();
    // `BENCH_SETTLE_SECONDS` (3 by default): how long the followers stay hidden before the measured span (with
    // changes, and in the control without) — a minute or more measures a tab hidden for a while rather than one
    // just hidden (a page just hidden collects its garbage, once).
    let settle: u64 = std::env::var("BENCH_SETTLE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    println!(
        "hidden followers: 4 tabs (1 visible leader, 3 hidden followers, hidden {settle} s before), 1 change/s for {seconds} s"
    );
    println!(
        "{:>12} | {:>20} | {:>20} | {:>20} | {:>20} | {:>29}",
        "board",
        "hidden ms/change",
        "minus no changes",
        "hidden script ms",
        "visible ms/change",
        "shown → current (in the page)"
    );
    println!("{}", "-".repeat(138));
    let (sizes, biggest) = board_sizes(&[1, 1000, 5000]);
    let sizes_min = sizes.iter().min().copied();
    for cards_n in sizes {
        let h = Harness::start().await?;
        let id = |v: serde_json::Value| Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
        let board =
            id(h.write(WriteOp::CreateBoard { body: CreateBoard { id: None, title: "Hidden".into() } }).await?);
        let mut cards = Vec::new();
        let columns = if cards_n == 1 { 1 } else { 5 };
        for c in 0..columns {
            let column = id(h
                .write(WriteOp::CreateColumn {
                    board_id: board,
                    body: CreateColumn { id: None, title: format!("C{c}") },
                })
                .await?);
            for i in 0..cards_n / columns {
                let body = CreateCard { id: None, title: format!("card {c}-{i}"), description: String::new() };
                cards.push(id(h.write(WriteOp::CreateCard { column_id: column, body }).await?));
            }
        }
        let url = h.url(&format!("/#/boards/{board}"));
        // The control: the same tabs, hidden as long, with no changes at all — what being hidden costs by itself
        // (a page just hidden collects its garbage, and Chromium reduces its memory, once), and the page's own
        // clock and heartbeats.
        let quiet_per_s = {
            let (browser, tabs) = open_hidden(&url, cards_n, settle).await?;
            let (q0, _) = busy_ms(&tabs[3]).await?;
            let started = std::time::Instant::now();
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let (q1, _) = busy_ms(&tabs[3]).await?;
            let per_s = (q1 - q0) / started.elapsed().as_secs_f64();
            browser.close().await;
            per_s
        };
        let (browser, tabs) = open_hidden(&url, cards_n, settle).await?;
        let watched = &tabs[3];
        // `BENCH_PROFILE=FILE`: a CPU profile of the hidden follower on the biggest board (of the visible leader
        // with `BENCH_PROFILE_TAB=leader`).
        let profile = std::env::var("BENCH_PROFILE").ok().filter(|_| cards_n == biggest);
        let profiled = if std::env::var("BENCH_PROFILE_TAB").is_ok_and(|t| t == "leader") { &tabs[0] } else { watched };
        if profile.is_some() {
            use chromiumoxide::cdp::js_protocol::profiler;
            profiled.page().execute(profiler::EnableParams::default()).await?;
            profiled.page().execute(profiler::SetSamplingIntervalParams::new(100)).await?;
            profiled.page().execute(profiler::StartParams::default()).await?;
        }
        // `BENCH_TRACE=FILE`: a Chromium trace over the changes on the smallest board (every tab's renderer).
        let trace = match std::env::var("BENCH_TRACE") {
            Ok(file) if Some(&cards_n) == sizes_min.as_ref() => Some((file, start_trace(watched).await?)),
            _ => None,
        };
        let (h0, hs0) = busy_ms(watched).await?;
        let (v0, _) = busy_ms(&tabs[0]).await?;
        if std::env::var("BENCH_CHANNEL").is_ok() {
            watched.exec("(() => { const ns = JSON.parse(window.__syncline()).namespace; window.__chan = []; const c = new BroadcastChannel(ns); c.onmessage = e => window.__chan.push([typeof e.data === 'string' ? e.data.slice(0, 60) : 'obj', typeof e.data === 'string' ? e.data.length : 0]); })()").await?;
        }
        let started = std::time::Instant::now();
        let card = cards[cards.len() / 2];
        for i in 0..seconds {
            let body = UpdateCard { title: Some(format!("hidden bench {i}")), ..Default::default() };
            h.write(WriteOp::UpdateCard { id: card, body }).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let last = format!("hidden bench {}", seconds - 1);
        tabs[0]
            .wait_for(
                &format!("[...document.querySelectorAll('.card-title')].some(e => e.textContent === {last:?})"),
                Duration::from_secs(10),
            )
            .await?;
        let secs = started.elapsed().as_secs_f64();
        let (h1, hs1) = busy_ms(watched).await?;
        let (v1, _) = busy_ms(&tabs[0]).await?;
        if let Some((file, collect)) = trace {
            end_trace(watched, &file, collect).await?;
        }
        if std::env::var("BENCH_CHANNEL").is_ok() {
            let seen: serde_json::Value = watched.eval("window.__chan").await?;
            let mut kinds: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
            for m in seen.as_array().unwrap() {
                let text = m[0].as_str().unwrap_or("");
                let kind = text.split(',').next().unwrap_or("").to_string();
                let e = kinds.entry(kind).or_default();
                e.0 += 1;
                e.1 += m[1].as_u64().unwrap_or(0);
            }
            eprintln!("channel messages: {kinds:#?}");
        }
        if let Some(file) = &profile {
            let stopped =
                profiled.page().execute(chromiumoxide::cdp::js_protocol::profiler::StopParams::default()).await?;
            std::fs::write(file, serde_json::to_vec(&stopped.result.profile)?)?;
        }
        let hidden = (h1 - h0) / seconds as f64;
        let subtracted = ((h1 - h0) - quiet_per_s * secs) / seconds as f64;
        // Shown: how long until it shows the last change.
        // In the page too: from the `visibilitychange` event to the last change in the DOM (no CDP round trip).
        watched.exec(&format!("window.__shownWait = null; {}", in_page_shown(card, &last))).await?;
        let shown_at = std::time::Instant::now();
        watched.show().await?;
        watched
            .wait_for(
                &format!("[...document.querySelectorAll('.card-title')].some(e => e.textContent === {last:?})"),
                Duration::from_secs(10),
            )
            .await?;
        let to_current = shown_at.elapsed().as_secs_f64() * 1000.0;
        watched.wait_for("window.__currentAt !== undefined", Duration::from_secs(10)).await?;
        let in_page: f64 = watched.eval("window.__currentAt - window.__visibleAt").await?;
        println!(
            "{:>12} | {:>20.3} | {:>20.3} | {:>20.3} | {:>20.3} | {:>9.0} ms ({:>3.0} ms in the page)",
            format!("{cards_n} cards"),
            hidden,
            subtracted,
            (hs1 - hs0) / seconds as f64,
            (v1 - v0) / seconds as f64,
            to_current,
            in_page
        );
        browser.close().await;
        h.stop().await;
    }
    println!(
        "(ms/change: the tab's main-thread task time over the run / changes; minus no changes: minus what the same"
    );
    println!(
        " tab costs hidden as long with no changes (a separate run, the same tabs); script: of which JavaScript/wasm"
    );
    println!(" ran (CDP ScriptDuration); shown → current includes the CDP round trip of showing the window and");
    println!(" polling the DOM; in the page: from the visibilitychange event to the last change's title in the DOM)");
    Ok(())
}

/// A browser with 4 tabs on `url` (a board of `cards_n` cards), the first visible, the others hidden `settle`
/// seconds ago.
async fn open_hidden(url: &str, cards_n: usize, settle: u64) -> anyhow::Result<(TestBrowser, Vec<Tab>)> {
    let browser = TestBrowser::launch().await?;
    let mut tabs = Vec::new();
    for i in 0..4 {
        let tab = browser.open(url).await?;
        tab.wait_for(&format!("document.querySelectorAll('.card').length === {cards_n}"), Duration::from_secs(30))
            .await?;
        tab.page().execute(EnableParams::default()).await?;
        if i > 0 {
            tab.hide().await?;
        }
        tabs.push(tab);
    }
    tabs[0].show().await?;
    tokio::time::sleep(Duration::from_secs(settle)).await;
    Ok((browser, tabs))
}

/// Sets `window.__visibleAt` when the page becomes visible and `window.__currentAt` when `card`'s title reads
/// `last` (checked on every DOM mutation after that).
fn in_page_shown(card: Uuid, last: &str) -> String {
    format!(
        r#"(() => {{
  const last = {last:?};
  const title = () => document.querySelector('[data-card-id="{card}"] .card-title');
  document.addEventListener('visibilitychange', () => {{
    if (document.hidden || window.__visibleAt !== undefined) return;
    window.__visibleAt = performance.now();
    const done = () => title()?.textContent === last;
    if (done()) {{ window.__currentAt = performance.now(); return; }}
    const obs = new MutationObserver(() => {{
      if (done()) {{ window.__currentAt = performance.now(); obs.disconnect(); }}
    }});
    obs.observe(document, {{ subtree: true, childList: true, characterData: true }});
  }});
}})()"#
    )
}

/// Records when the boards list first appears, from the start of the navigation.
const SHOWN: &str = r#"(() => {
  new MutationObserver((_, obs) => {
    if (document.querySelector('.board-list')) { window.__shownAt = performance.now(); obs.disconnect(); }
  }).observe(document, { subtree: true, childList: true });
})()"#;

/// Bytes over the network for this page (navigation + resources; 0 for a cache hit) and requests that went out.
const TRANSFER: &str = r#"JSON.stringify((() => {
  const all = [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')];
  const assets = all.filter(e => e.initiatorType !== 'fetch' && e.initiatorType !== 'xmlhttprequest');
  const sum = list => list.reduce((n, e) => n + e.transferSize, 0);
  return [sum(assets), sum(all), all.filter(e => e.transferSize > 0).length, window.__shownAt || -1];
})())"#;

/// First load of the boards screen on emulated links: cold (empty cache) and a repeat visit.
async fn first_load() -> anyhow::Result<()> {
    println!();
    println!("first load of the boards screen (fresh profile, then a repeat visit), Chromium network emulation");
    println!(
        "{:>22} | {:>17} | {:>8} | {:>9} | {:>17} | {:>8} | {:>9}",
        "link", "cold KB asset/all", "requests", "shown ms", "again KB asset/all", "requests", "shown ms"
    );
    println!("{}", "-".repeat(108));
    for (name, latency, down, up) in [
        ("loopback", 0.0, -1.0, -1.0),
        ("9 Mbit/s, 40 ms", 40.0, 9_000.0, 9_000.0),
        ("1.6 Mbit/s, 150 ms", 150.0, 1_600.0, 750.0),
    ] {
        let h = Harness::start().await?;
        for i in 0..3 {
            h.write(WriteOp::CreateBoard { body: CreateBoard { id: None, title: format!("Board {i}") } }).await?;
        }
        let browser = TestBrowser::launch().await?;
        // Signs in (on a small page of the origin), then the measured navigations.
        let tab = browser.open(&h.url("/healthz")).await?;
        if down > 0.0 {
            tab.set_link(latency, down, up).await?;
        }
        tab.page().evaluate_on_new_document(SHOWN).await?;
        let mut row = Vec::new();
        for _ in 0..2 {
            tab.goto("about:blank").await?;
            tab.goto(&h.url("/")).await?;
            tab.wait_for("window.__shownAt", Duration::from_secs(60)).await?;
            let text: String = tab.eval(TRANSFER).await?;
            let (assets, all, requests, shown): (f64, f64, u32, f64) = serde_json::from_str(&text)?;
            row.push(format!("{:>8.1} / {:>6.1} | {:>8} | {:>9.0}", assets / 1000.0, all / 1000.0, requests, shown));
        }
        println!("{name:>22} | {} | {}", row[0], row[1]);
        browser.close().await;
        h.stop().await;
    }
    println!("(KB: bytes on the wire incl. headers, from the page's Resource Timing; a cache hit counts 0)");
    Ok(())
}

/// Chromium's cumulative main-thread task and script time of the page, in ms.
async fn busy_ms(tab: &Tab) -> anyhow::Result<(f64, f64)> {
    let metrics = tab.page().metrics().await?;
    let get = |name: &str| metrics.iter().find(|m| m.name == name).map_or(0.0, |m| m.value * 1000.0);
    Ok((get("TaskDuration"), get("ScriptDuration")))
}

/// Records when the first card and the last of `window.__expectCards` cards appear, from the start of navigation.
const CARDS_SHOWN: &str = r#"(() => {
  new MutationObserver((_, obs) => {
    const n = document.querySelectorAll('.card').length;
    if (n > 0 && !window.__firstCardAt) window.__firstCardAt = performance.now();
    if (window.__expectCards && n >= window.__expectCards) { window.__allCardsAt = performance.now(); obs.disconnect(); }
  }).observe(document, { subtree: true, childList: true });
})()"#;

/// Sets the title of 100 cards (the paced changes' cards), 100 ms apart, straight on their text nodes; resolves
/// 500 ms after the last.
const FLOOR_CHANGES: &str = r#"new Promise(done => {
  const titles = [...document.querySelectorAll('.card-title')];
  let i = 0;
  const step = () => {
    const title = titles[(i * 7919) % titles.length];
    (title.firstChild || title).nodeValue = `floor ${i}`;
    i += 1;
    if (i < 100) setTimeout(step, 100); else setTimeout(() => done(true), 500);
  };
  step();
})"#;

/// Scrolls the page down 100 px a frame for 120 frames; returns the frame intervals (ms), sorted.
const SCROLL: &str = r#"new Promise(done => {
  const times = [];
  window.scrollTo(0, 0);
  const step = t => {
    times.push(t);
    if (times.length > 120) {
      const gaps = times.slice(1).map((t, i) => t - times[i]).sort((a, b) => a - b);
      done(JSON.stringify(gaps));
      return;
    }
    window.scrollBy(0, 100);
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
})"#;

/// Big boards in the visible (leader) tab: how long one takes to open, and the main-thread time each change costs
/// — the same table for 10, 1,000 and 5,000 cards, so what grows with the board shows.
async fn big_board() -> anyhow::Result<()> {
    println!();
    println!(
        "big boards, one visible tab: opening, and main-thread time per change (Chromium task time, idle subtracted)"
    );
    println!(
        "{:>11} | {:>15} | {:>12} | {:>12} | {:>22} | {:>16} | {:>22} | {:>20} | {:>19} | {:>17} | {:>9}",
        "board",
        "first cards ms",
        "all cards ms",
        "long tasks",
        "task ms/change paced",
        "script ms/change",
        "task ms/change burst",
        "floor task ms/change",
        "scroll fps (p99 ms)",
        "heap MB JS + DOM",
        "listeners"
    );
    println!("{}", "-".repeat(207));
    let profile = std::env::var("BENCH_PROFILE").ok();
    let (sizes, biggest) = board_sizes(&[10, 1000, 5000]);
    let sizes_min = sizes.iter().min().copied();
    for n in sizes {
        // `BENCH_TRACE` traces the smallest board measured.
        let traced = Some(n) == sizes_min;
        let h = Harness::start().await?;
        let id = |v: serde_json::Value| Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
        let board = id(h.write(WriteOp::CreateBoard { body: CreateBoard { id: None, title: "Big".into() } }).await?);
        let mut cards = Vec::new();
        for c in 0..5 {
            let column = id(h
                .write(WriteOp::CreateColumn {
                    board_id: board,
                    body: CreateColumn { id: None, title: format!("Col {c}") },
                })
                .await?);
            for i in 0..n.div_ceil(5) {
                let body = CreateCard { id: None, title: format!("card {c}-{i}"), description: "a description".into() };
                cards.push(id(h.write(WriteOp::CreateCard { column_id: column, body }).await?));
            }
        }
        let n = cards.len();
        let browser = TestBrowser::launch().await?;
        // Signed in on a small page of the origin, then the measured navigation (the app's files from the cache,
        // as for anyone who used the app before; the board's data fetched).
        let tab = browser.open(&h.url("/healthz")).await?;
        tab.goto(&h.url("/")).await?;
        tab.wait_for("document.querySelector('.board-list')", Duration::from_secs(20)).await?;
        tab.page().evaluate_on_new_document(CARDS_SHOWN).await?;
        tab.page().evaluate_on_new_document(format!("window.__expectCards = {n}")).await?;
        tab.goto("about:blank").await?;
        tab.goto(&h.url(&format!("/#/boards/{board}"))).await?;
        tab.wait_for("window.__allCardsAt", Duration::from_secs(60)).await?;
        let (first, all): (f64, f64) = tab.eval("[window.__firstCardAt, window.__allCardsAt]").await?;
        let long: serde_json::Value = serde_json::from_str(&tab.eval::<String>("window.__syncline()").await?)?;
        let open_long = format!(
            "{} (max {:.0} ms)",
            long["long_tasks"]["count"].as_u64().unwrap_or(0),
            long["long_tasks"]["max_ms"].as_f64().unwrap_or(0.0)
        );
        tab.page().execute(EnableParams::default()).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // What the open board holds, after a full collection: the JS heap, the DOM's (Blink's own collected heap),
        // and the event listeners registered on it.
        let memory = {
            use chromiumoxide::cdp::browser_protocol::memory::GetDomCountersParams;
            use chromiumoxide::cdp::js_protocol::{heap_profiler::CollectGarbageParams, runtime::GetHeapUsageParams};
            tab.page().execute(CollectGarbageParams::default()).await?;
            let heap = tab.page().execute(GetHeapUsageParams::default()).await?.result;
            let counters = tab.page().execute(GetDomCountersParams::default()).await?.result;
            let mb = |b: f64| b / 1_048_576.0;
            (
                format!("{:.1} + {:.1}", mb(heap.used_size), mb(heap.embedder_heap_used_size)),
                counters.js_event_listeners,
            )
        };
        // `BENCH_TRACE_SCROLL=FILE`: a Chromium trace of the scrolling on the biggest board.
        let trace = match std::env::var("BENCH_TRACE_SCROLL") {
            Ok(file) if n >= biggest => Some((file, start_trace(&tab).await?)),
            _ => None,
        };
        let gaps: Vec<f64> = serde_json::from_str(&tab.eval::<String>(SCROLL).await?)?;
        if let Some((file, collect)) = trace {
            end_trace(&tab, &file, collect).await?;
        }
        let scroll = format!(
            "{:.0} ({:.0})",
            1000.0 * gaps.len() as f64 / gaps.iter().sum::<f64>().max(1.0),
            gaps[((gaps.len() - 1) as f64 * 0.99).round() as usize]
        );
        tab.exec("window.scrollTo(0, 0)").await?;
        // What the page costs doing nothing (its 1 s clock, presence heartbeats), per second.
        let (t0, s0) = busy_ms(&tab).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (t1, s1) = busy_ms(&tab).await?;
        let idle = ((t1 - t0) / 5.0, (s1 - s0) / 5.0);
        let mut row = Vec::new();
        for (label, gap) in [("paced", Some(Duration::from_millis(100))), ("burst", None)] {
            // `BENCH_PROFILE=FILE` writes a CPU profile (Chromium's `.cpuprofile`; open it in DevTools) of the
            // paced changes on the biggest board.
            let profiling = profile.is_some() && gap.is_some() && n >= biggest;
            if profiling {
                use chromiumoxide::cdp::js_protocol::profiler;
                tab.page().execute(profiler::EnableParams::default()).await?;
                tab.page().execute(profiler::SetSamplingIntervalParams::new(100)).await?;
                tab.page().execute(profiler::StartParams::default()).await?;
            }
            let trace = match std::env::var("BENCH_TRACE") {
                Ok(file) if gap.is_some() && traced => Some((file, start_trace(&tab).await?)),
                _ => None,
            };
            let (t0, s0) = busy_ms(&tab).await?;
            let started = std::time::Instant::now();
            for i in 0..100 {
                let card = cards[(i * 7919) % n];
                let body = UpdateCard { title: Some(format!("{label} {i}")), ..Default::default() };
                h.write(WriteOp::UpdateCard { id: card, body }).await?;
                if let Some(gap) = gap {
                    tokio::time::sleep(gap).await;
                }
            }
            let last = format!("{label} 99");
            tab.wait_for(
                &format!("[...document.querySelectorAll('.card-title')].some(e => e.textContent === {last:?})"),
                Duration::from_secs(20),
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let secs = started.elapsed().as_secs_f64();
            let (t1, s1) = busy_ms(&tab).await?;
            if let Some((file, collect)) = trace {
                end_trace(&tab, &file, collect).await?;
            }
            if let (true, Some(file)) = (profiling, &profile) {
                let stopped =
                    tab.page().execute(chromiumoxide::cdp::js_protocol::profiler::StopParams::default()).await?;
                std::fs::write(file, serde_json::to_vec(&stopped.result.profile)?)?;
            }
            row.push((((t1 - t0) - idle.0 * secs).max(0.0) / 100.0, ((s1 - s0) - idle.1 * secs).max(0.0) / 100.0));
        }
        // The floor: the same visible change (a card's title, the same cards, 100 ms apart) made by a page's own
        // timer setting the title's text node directly — what the browser costs per change with no framework and
        // no sync at all, on the same DOM and stylesheet.
        let floor = {
            let (t0, _) = busy_ms(&tab).await?;
            let started = std::time::Instant::now();
            tab.eval::<bool>(FLOOR_CHANGES).await?;
            let secs = started.elapsed().as_secs_f64();
            let (t1, _) = busy_ms(&tab).await?;
            ((t1 - t0) - idle.0 * secs).max(0.0) / 100.0
        };
        println!(
            "{:>11} | {:>15.0} | {:>12.0} | {:>12} | {:>22.2} | {:>16.2} | {:>22.2} | {:>20.2} | {:>19} | {:>17} | {:>9}",
            format!("{n} cards"),
            first,
            all,
            open_long,
            row[0].0,
            row[0].1,
            row[1].0,
            floor,
            scroll,
            memory.0,
            memory.1
        );
        browser.close().await;
        h.stop().await;
    }
    println!("(first/all cards: from navigation to the first card and to all cards in the DOM, app files cached;");
    println!(" long tasks: > 50 ms while opening; paced: 100 changes 100 ms apart; burst: 100 at once; per change;");
    println!(" floor: the same 100 paced title changes made by a timer setting the text directly, no app involved;");
    println!(" scroll: the page scrolled 100 px a frame for 120 frames, frames per second and the slowest 1 %)");
    Ok(())
}

type TraceEvents = tokio::task::JoinHandle<Vec<serde_json::Value>>;

/// `BENCH_TRACE=FILE`: a Chromium trace (open it in DevTools' Performance panel or Perfetto) of the paced changes
/// on the smallest board measured — where the main thread's time goes besides script.
async fn start_trace(tab: &Tab) -> anyhow::Result<TraceEvents> {
    use chromiumoxide::cdp::browser_protocol::tracing as tr;
    use futures::StreamExt;
    let mut data = tab.page().event_listener::<tr::EventDataCollected>().await?;
    let mut complete = tab.page().event_listener::<tr::EventTracingComplete>().await?;
    let collect = tokio::spawn(async move {
        let mut events = Vec::new();
        loop {
            tokio::select! {
                Some(batch) = data.next() => events.extend(batch.value.iter().cloned()),
                _ = complete.next() => break,
            }
        }
        while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(200), data.next()).await {
            events.extend(batch.value.iter().cloned());
        }
        events
    });
    let categories = ["devtools.timeline", "disabled-by-default-devtools.timeline", "v8.execute", "blink", "cc"];
    let params = tr::StartParams {
        transfer_mode: Some(tr::StartTransferMode::ReportEvents),
        trace_config: Some(tr::TraceConfig {
            included_categories: Some(categories.iter().map(|c| c.to_string()).collect()),
            ..Default::default()
        }),
        ..Default::default()
    };
    tab.page().execute(params).await?;
    Ok(collect)
}

async fn end_trace(tab: &Tab, file: &str, collect: TraceEvents) -> anyhow::Result<()> {
    tab.page().execute(chromiumoxide::cdp::browser_protocol::tracing::EndParams::default()).await?;
    let events = collect.await?;
    std::fs::write(file, serde_json::to_vec(&serde_json::json!({ "traceEvents": events }))?)?;
    Ok(())
}

/// What one page kept fresh its board with, over one run.
struct PeerRow {
    requests_per_min: f64,
    sockets: i64,
    kb_per_min: f64,
    latency: Vec<f64>,
    /// Main-thread task time of a hidden tab per change (none with one tab).
    hidden_ms: Option<f64>,
    missed: usize,
}

/// Bytes the page's own requests took on the wire since `window.__from` (Resource Timing; WebSocket frames are
/// counted on the server).
const FETCHED_BYTES: &str = r#"performance.getEntriesByType('resource').filter(e => e.startTime >= window.__from && (e.initiatorType === 'fetch' || e.initiatorType === 'xmlhttprequest')).reduce((n, e) => n + e.transferSize, 0)"#;

/// `cargo xtask bench peers`, in the browser: the same server and board, kept fresh by (a) a page using TanStack
/// Query v5 (polling every 5 s, the broadcast plugin sharing results across tabs; `crates/bench/peers/`) and (b)
/// syncline's app; 1, 4 and 8 tabs (the first visible), one change a second.
async fn peers(seconds: u64) -> anyhow::Result<()> {
    println!(
        "side by side in Chromium: one browser, N tabs (the first visible), a {PEER_BOARD_CARDS}-card board, 1 change/s for {seconds} s"
    );
    println!(
        "{:>4} | {:<16} | {:>8} | {:>7} | {:>9} | {:>22} | {:>8} | {:>16}",
        "tabs", "page", "req/min", "sockets", "KB/min", "change → screen p50/p99", "missed", "hidden ms/change"
    );
    println!("{}", "-".repeat(112));
    let mut ratios = Vec::new();
    for tabs in [1usize, 4, 8] {
        let mut rows = Vec::new();
        for page in ["TanStack Query v5", "syncline"] {
            let row = peer_run(page, tabs, seconds).await?;
            let (mut l50, mut l99) = (row.latency.clone(), row.latency.clone());
            println!(
                "{:>4} | {:<16} | {:>8.1} | {:>7} | {:>9.1} | {:>10.0} / {:>9.0} | {:>8} | {:>16}",
                tabs,
                page,
                row.requests_per_min,
                row.sockets,
                row.kb_per_min,
                pct(&mut l50, 0.5),
                pct(&mut l99, 0.99),
                row.missed,
                row.hidden_ms.map_or("-".to_owned(), |v| format!("{v:.2}"))
            );
            rows.push(row);
        }
        ratios.push((tabs, rows));
    }
    println!();
    println!("syncline / TanStack Query (lower is better)");
    println!(
        "{:>4} | {:>12} | {:>12} | {:>14} | {:>14} | {:>16}",
        "tabs", "requests", "bytes", "latency p50", "latency p99", "hidden ms/change"
    );
    println!("{}", "-".repeat(88));
    for (tabs, rows) in ratios {
        let (theirs, ours) = (&rows[0], &rows[1]);
        let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.3}", a / b) } else { "-".to_owned() };
        let (mut o, mut t) = (ours.latency.clone(), theirs.latency.clone());
        let (o50, t50) = (pct(&mut o, 0.5), pct(&mut t, 0.5));
        let (o99, t99) = (pct(&mut o, 0.99), pct(&mut t, 0.99));
        println!(
            "{:>4} | {:>12} | {:>12} | {:>14} | {:>14} | {:>16}",
            tabs,
            ratio(ours.requests_per_min, theirs.requests_per_min),
            ratio(ours.kb_per_min, theirs.kb_per_min),
            ratio(o50, t50),
            ratio(o99, t99),
            match (ours.hidden_ms, theirs.hidden_ms) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => "-".to_owned(),
            }
        );
    }
    println!(
        "(requests and bytes as the server and the pages saw them, WebSocket frames included; change → screen: the"
    );
    println!(" write committed → the visible tab's DOM shows it or a later one; missed: changes the visible tab never");
    println!(
        " showed, a later one replacing them first; hidden ms/change: one hidden tab's main-thread task time / changes)"
    );
    Ok(())
}

/// Cards on the board of the side-by-side run.
const PEER_BOARD_CARDS: usize = 100;

async fn peer_run(page: &str, tabs: usize, seconds: u64) -> anyhow::Result<PeerRow> {
    let h = Harness::start().await?;
    let (board, column, card) = board_with_a_card(&h).await?;
    // A board of a small team: the changed card first, 99 more after it.
    for i in 1..PEER_BOARD_CARDS {
        let body = CreateCard { id: None, title: format!("card {i}"), description: "a short description".into() };
        h.write(WriteOp::CreateCard { column_id: column, body }).await?;
    }
    let browser = TestBrowser::launch().await?;
    let url = if page == "syncline" {
        h.url(&format!("/#/boards/{board}"))
    } else {
        h.url(&format!("/peers/tanstack.html?board={board}"))
    };
    let mut open = Vec::new();
    for i in 0..tabs {
        let tab = browser.open(&url).await?;
        tab.wait_for(
            &format!("document.querySelectorAll('.card').length === {PEER_BOARD_CARDS}"),
            Duration::from_secs(20),
        )
        .await?;
        tab.exec(OBSERVE).await?;
        tab.exec("performance.setResourceTimingBufferSize(100000)").await?;
        tab.page().execute(EnableParams::default()).await?;
        if i > 0 {
            tab.hide().await?;
        }
        open.push(tab);
    }
    open[0].show().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for tab in &open {
        tab.exec("window.__from = performance.now()").await?;
    }
    let requests_before = h.stats().requests_total();
    let ws_before = h.metrics().ws_bytes_out.get();
    let hidden_before = match open.last() {
        Some(tab) if tabs > 1 => Some(busy_ms(tab).await?.0),
        _ => None,
    };
    let sent = rename_every_second(&h, card, seconds).await?;
    let requests = h.stats().requests_total() - requests_before;
    let ws_bytes = h.metrics().ws_bytes_out.get() - ws_before;
    let mut fetched = 0.0;
    for tab in &open {
        fetched += tab.eval::<f64>(FETCHED_BYTES).await?;
    }
    let hidden_ms = match (hidden_before, open.last()) {
        (Some(before), Some(tab)) => Some((busy_ms(tab).await?.0 - before) / seconds as f64),
        _ => None,
    };
    let sockets = h.open_websockets();
    // The last change gets the polling interval to show up.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let seen: Vec<(String, f64)> = open[0].eval("window.__seen").await?;
    // A change is on screen once the screen shows it or a later one (a poll that skips a change still shows the
    // user something at least as new): for each change, the first time the visible tab showed it or a later one.
    let shown: Vec<(usize, f64)> =
        seen.iter().filter_map(|(t, at)| sent.iter().position(|(s, _)| s == t).map(|i| (i, *at))).collect();
    let latency: Vec<f64> = sent
        .iter()
        .enumerate()
        .filter_map(|(i, (_, w))| {
            shown.iter().filter(|(j, _)| *j >= i).map(|(_, at)| *at).min_by(|a, b| a.total_cmp(b)).map(|at| at - w)
        })
        .collect();
    let missed = sent.len() - shown.len();
    let minutes = seconds as f64 / 60.0;
    browser.close().await;
    h.stop().await;
    Ok(PeerRow {
        requests_per_min: requests as f64 / minutes,
        sockets,
        kb_per_min: (fetched + ws_bytes as f64) / 1000.0 / minutes,
        missed,
        latency,
        hidden_ms,
    })
}
