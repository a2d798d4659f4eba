//! Feed fan-out benchmark: N WebSocket subscribers on loopback follow one board; one write lands; how long
//! until every subscriber has it, and how much server memory each idle subscriber costs.
//!
//! The server runs as its own process (the release binary), so its resident memory is its own. Prints a
//! table. Not a test: it asserts nothing, it measures.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use syncline_kanban::{ClientMessage, ServerMessage, StreamCursor, StreamId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// The syncline-server binary to run.
    #[arg(long)]
    server: std::path::PathBuf,
    /// Subscriber counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    subscribers: Vec<usize>,
    /// Writes per subscriber count (each one is a fan-out sample).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

struct Server {
    child: tokio::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

async fn start_server(binary: &std::path::Path) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let mut child = tokio::process::Command::new(binary)
        .args(["--bind", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("bench.sqlite3"))
        .args(["--static-dir", "/nonexistent", "--heartbeat-secs", "3600"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.strip_prefix("syncline is serving on http://") {
            return Ok(Server { child, addr: url.trim().to_owned(), _dir: dir });
        }
    }
    bail!("the server exited before it said where it listens")
}

fn resident_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One subscriber: subscribes, reports when synced, then reports the arrival time of every change message.
async fn subscriber(
    addr: String,
    cookie: String,
    stream: StreamId,
    since: u64,
    ready: mpsc::Sender<()>,
    arrivals: mpsc::UnboundedSender<Instant>,
) -> Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/api/feed").into_client_request()?;
    request.headers_mut().insert("cookie", cookie.parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    let subscribe =
        ClientMessage::Subscribe { streams: vec![StreamCursor { stream: stream.into(), since }], log_id: None };
    ws.send(Message::text(serde_json::to_string(&subscribe)?)).await?;
    while let Some(frame) = ws.next().await {
        let Message::Text(text) = frame? else { continue };
        match serde_json::from_str::<ServerMessage>(&text)? {
            ServerMessage::Synced { .. } => {
                let _ = ready.send(()).await;
            }
            ServerMessage::Changes { .. } => {
                let _ = arrivals.send(Instant::now());
            }
            _ => {}
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!("feed fan-out on loopback: one write, N subscribers of its board; {} writes per row", args.rounds);
    println!(
        "{:>11} | {:>9} | {:>9} | {:>9} | {:>9} | {:>14}",
        "subscribers", "p50", "p99", "max", "connect", "server KiB/sub"
    );
    println!("{}", "-".repeat(76));
    for &n in &args.subscribers {
        let mut server = start_server(&args.server).await?;
        let base = format!("http://{}", server.addr);
        // One account: its session is shared by every subscriber (the feed needs a signed-in session).
        let resp = reqwest::Client::new()
            .post(format!("{base}/api/auth/signup"))
            .json(&json!({"username": "bench", "password": "bench password"}))
            .send()
            .await?;
        let set_cookie = resp.headers().get("set-cookie").context("a session cookie")?.to_str()?;
        let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("cookie", cookie.parse()?);
        let http = reqwest::Client::builder().default_headers(headers).build()?;
        let board: Value =
            http.post(format!("{base}/api/boards")).json(&json!({"title": "bench"})).send().await?.json().await?;
        let board_id = board["id"].as_str().context("board id")?.to_owned();
        let column: Value = http
            .post(format!("{base}/api/boards/{board_id}/columns"))
            .json(&json!({"title": "col"}))
            .send()
            .await?
            .json()
            .await?;
        let card: Value = http
            .post(format!("{base}/api/columns/{}/cards", column["id"].as_str().context("column id")?))
            .json(&json!({"title": "card"}))
            .send()
            .await?
            .json()
            .await?;
        let card_id = card["id"].as_str().context("card id")?.to_owned();
        let snapshot: Value = http.get(format!("{base}/api/boards/{board_id}")).send().await?.json().await?;
        let since = snapshot["cursor"].as_u64().context("cursor")?;
        let stream: StreamId = format!("board:{board_id}").parse().map_err(anyhow::Error::msg)?;

        let pid = server.child.id().context("server pid")?;
        let rss_before = resident_kib(pid)?;
        let (ready_tx, mut ready_rx) = mpsc::channel(n);
        let (arrive_tx, mut arrive_rx) = mpsc::unbounded_channel();
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tasks.push(tokio::spawn(subscriber(
                server.addr.clone(),
                cookie.clone(),
                stream,
                since,
                ready_tx.clone(),
                arrive_tx.clone(),
            )));
            // Pace the handshakes a little so the accept backlog never overflows.
            if i % 256 == 255 {
                tokio::task::yield_now().await;
            }
        }
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
                .await
                .context("subscribers never synced")?;
        }
        let connect = started.elapsed();
        // Let allocations settle before reading the server's memory.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let per_sub = (resident_kib(pid)?.saturating_sub(rss_before)) as f64 / n as f64;

        let mut latencies = Vec::with_capacity(n * args.rounds);
        for round in 0..args.rounds {
            let sent = Instant::now();
            let resp = http
                .patch(format!("{base}/api/cards/{card_id}"))
                .json(&json!({"title": format!("round {round}")}))
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("write failed: {}", resp.status());
            }
            for _ in 0..n {
                let at = tokio::time::timeout(Duration::from_secs(60), arrive_rx.recv())
                    .await
                    .context("a subscriber never got the change")?;
                latencies.push(at.context("arrivals closed")?.saturating_duration_since(sent));
            }
        }
        latencies.sort();
        println!(
            "{:>11} | {:>9.2?} | {:>9.2?} | {:>9.2?} | {:>9.2?} | {:>14.1}",
            n,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or_default(),
            connect,
            per_sub
        );
        for t in tasks {
            t.abort();
        }
        server.child.kill().await.ok();
    }
    println!("(latency: write request sent → change message received by a subscriber; includes the HTTP write itself)");
    Ok(())
}
