//! Scale-out in a real Chromium: three server processes on one PostgreSQL database behind HAProxy (Debian's
//! packages, nothing mocked). Two browsers reach the cluster only through the load balancer, their feeds on
//! different instances:
//! - a card written in one browser shows in the other, whose instance learned it from the shared log;
//! - an instance holding a feed is killed with SIGKILL while both browsers keep writing: the tabs reconnect
//!   through the load balancer to the survivors, resume from their cursors and are live again, every accepted
//!   write is in the database exactly once, and both browsers show the database's board.
//!
//! PostgreSQL: the cluster the test command started (`SYNCLINE_CLUSTER_POSTGRES`), else one of its own (needs
//! root, PostgreSQL and HAProxy installed: `cargo xtask test` sees to all three).

mod common;
use common::{add_card, post, signed_up, state};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncline_devcluster::{Haproxy, Postgres, free_port};
use syncline_e2e::{ServerProcess, Tab, TestBrowser, repo_root};

const WAIT: Duration = Duration::from_secs(15);
/// A change committed through one instance shows in a browser fed by another within this.
const CROSS_INSTANCE_BOUND: Duration = Duration::from_secs(2);
/// After an instance dies, every tab is live again (through another instance) within this: HAProxy's health
/// check takes it out within ~1 s, the engine's reconnect backoff does the rest.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

struct Instance {
    process: ServerProcess,
    metrics_port: u16,
}

impl Instance {
    /// Open feed WebSockets on this instance (its Prometheus metrics); `None` once it is dead.
    async fn websockets(&self) -> Option<i64> {
        let text =
            reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port)).await.ok()?.text().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix("syncline_websockets_open ")).and_then(|v| v.trim().parse().ok())
    }
}

async fn wait_live(tabs: &[&Tab], bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < bound {
        let mut all = true;
        for tab in tabs {
            all &= state(tab).await["status"]["state"] == "live";
        }
        if all {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn shown_titles(tab: &Tab) -> Vec<String> {
    let js = r#"JSON.stringify(Array.from(document.querySelectorAll('[data-card-id] .card-title')).map(e => e.textContent))"#;
    let text: String = tab.eval(js).await.expect("read the board");
    let mut titles: Vec<String> = serde_json::from_str(&text).expect("titles");
    titles.sort();
    titles
}

async fn wait_shown(tab: &Tab, title: &str, bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < bound {
        if shown_titles(tab).await.iter().any(|t| t == title) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Which instance holds each browser's feed: the instance whose open-WebSocket count went up when it connected.
async fn feeds(instances: &[Instance]) -> Vec<i64> {
    let mut counts = Vec::new();
    for i in instances {
        counts.push(i.websockets().await.unwrap_or(0));
    }
    counts
}

#[tokio::test]
async fn three_instances_behind_haproxy_deliver_across_instances_and_survive_losing_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut own_cluster: Option<Postgres> = None;
    let base = match std::env::var("SYNCLINE_CLUSTER_POSTGRES").ok().filter(|s| !s.is_empty()) {
        Some(base) => base,
        None => {
            syncline_devcluster::ensure_packages().expect("PostgreSQL and HAProxy (run `cargo xtask test`)");
            let pg = Postgres::start(dir.path()).expect("a throwaway PostgreSQL cluster");
            let base = pg.base_url();
            own_cluster = Some(pg);
            base
        }
    };
    let database = syncline_server::testing::create_database(&base);
    let lb_port = free_port().unwrap();
    let public = format!("http://127.0.0.1:{lb_port}");
    let program = Path::new(env!("CARGO_BIN_EXE_syncline-server-process"));
    let mut instances = Vec::new();
    for _ in 0..3 {
        let metrics_port = free_port().unwrap();
        let args = ["--database-url", &database, "--public-origin", &public, "--trusted-proxy", "127.0.0.1"]
            .into_iter()
            .map(String::from)
            .chain(["--metrics-bind".into(), format!("127.0.0.1:{metrics_port}")])
            .collect();
        instances.push(Instance {
            process: ServerProcess::start_with(program, args).await.expect("instance"),
            metrics_port,
        });
    }
    let ports: Vec<u16> = instances.iter().map(|i| i.process.port()).collect();
    let _haproxy = Haproxy::start(&repo_root(), dir.path(), lb_port, &ports).expect("HAProxy");

    // Everything below goes through the load balancer.
    let http = signed_up(&public).await;
    let board = post(&http, &format!("{public}/api/boards"), json!({"title": "Cluster"})).await;
    let board_id = board["id"].as_str().unwrap().to_owned();
    let column = post(&http, &format!("{public}/api/boards/{board_id}/columns"), json!({"title": "Todo"})).await;
    let column = column["id"].as_str().unwrap().to_owned();
    let url = format!("{public}/#/boards/{board_id}");

    let alice = TestBrowser::launch().await.expect("Chromium");
    let a = alice.open(&url).await.expect("tab");
    wait_live(&[&a], WAIT).await.expect("the first browser is live");
    let a_instance = feeds(&instances).await.iter().position(|n| *n == 1).expect("one feed, on one instance");
    // The second browser's feed on another instance (HAProxy balances each request round-robin; reload until).
    let bob = TestBrowser::launch().await.expect("Chromium");
    let b = bob.open(&url).await.expect("tab");
    let mut b_instance = None;
    for _ in 0..12 {
        wait_live(&[&b], WAIT).await.expect("the second browser is live");
        let counts = feeds(&instances).await;
        if let Some(i) = (0..3).find(|i| *i != a_instance && counts[*i] == 1) {
            b_instance = Some(i);
            break;
        }
        b.reload().await.expect("reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b_instance = b_instance.expect("the second browser's feed on another instance than the first's");
    println!("feeds: first browser on instance {a_instance}, second on instance {b_instance}");

    // Live across instances, both ways.
    assert!(add_card(&a, &column, "from a").await);
    let took = wait_shown(&b, "from a", CROSS_INSTANCE_BOUND).await;
    assert!(took.is_some(), "a card written in the first browser reached the second, fed by another instance");
    assert!(add_card(&b, &column, "from b").await);
    let took_back = wait_shown(&a, "from b", CROSS_INSTANCE_BOUND).await;
    assert!(took_back.is_some(), "and back");
    println!("cross-instance change to screen: {:?} and {:?}", took.unwrap(), took_back.unwrap());

    // Both write while the first browser's instance dies.
    let mut accepted = vec!["from a".to_owned(), "from b".to_owned()];
    let mut killed_at = None;
    for i in 0..30 {
        for (name, tab) in [("a", &a), ("b", &b)] {
            let title = format!("{name} {i}");
            if add_card(tab, &column, &title).await {
                accepted.push(title);
            }
        }
        if i == 10 {
            instances[a_instance].process.kill();
            killed_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed_at = killed_at.unwrap();
    let live = wait_live(&[&a, &b], FAILOVER_BOUND).await;
    assert!(
        live.is_some(),
        "every tab live again after an instance died: {:?} / {:?}",
        state(&a).await,
        state(&b).await
    );
    println!("live again {:?} after the kill", killed_at.elapsed());

    // The outboxes drain; the database has every accepted write once; both browsers show it.
    let drained = Instant::now();
    while drained.elapsed() < WAIT {
        let pending =
            state(&a).await["pending"].as_u64().unwrap_or(1) + state(&b).await["pending"].as_u64().unwrap_or(1);
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored: Value = http
        .get(format!("{public}/api/boards/{board_id}"))
        .send()
        .await
        .expect("GET board")
        .json()
        .await
        .expect("JSON");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for card in stored["cards"].as_array().expect("cards") {
        *counts.entry(card["title"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let missing: Vec<&String> = accepted.iter().filter(|t| !counts.contains_key(*t)).collect();
    let doubled: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "accepted writes missing from the database: {missing:?}");
    assert!(doubled.is_empty(), "writes applied twice: {doubled:?}");
    let want: Vec<String> = counts.keys().cloned().collect();
    for (name, tab) in [("first", &a), ("second", &b)] {
        let start = Instant::now();
        while shown_titles(tab).await != want && start.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(shown_titles(tab).await, want, "the {name} browser shows the database's board");
    }
    assert!(instances[a_instance].websockets().await.is_none(), "the killed instance is gone");
    let survivors: i64 =
        futures::future::join_all(instances.iter().map(Instance::websockets)).await.into_iter().flatten().sum();
    assert_eq!(survivors, 2, "both feeds on the surviving instances");
    for (name, browser) in [("first", &a), ("second", &b)] {
        assert!(browser.exceptions().is_empty(), "the {name} browser threw: {:?}", browser.exceptions());
    }
    println!("{} writes, each in the database once", accepted.len());
    drop(own_cluster);
}
