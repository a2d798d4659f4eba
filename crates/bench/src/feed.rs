//! Feed fan-out benchmark: N WebSocket subscribers on loopback follow one board; one write lands; how long
//! until every subscriber has it, and how much server memory each idle subscriber costs. Then write throughput:
//! W card creations from C concurrent clients.
//!
//! Side by side in one run (`--backends sqlite,postgres --instances 1,3`): the SQLite file, and PostgreSQL with
//! one or several instances on one database — subscribers spread evenly over the instances, every write sent
//! to the first, so with 3 instances two thirds of the subscribers get each change through the shared log
//! (another instance's tail). PostgreSQL is a throwaway cluster this program starts (Debian's package).
//!
//! The servers run as their own processes (the release binary), so their resident memory is their own. Prints
//! tables. Not a test: it asserts nothing, it measures.

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
    /// Databases to compare: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite")]
    backends: Vec<String>,
    /// Server instances on one database (PostgreSQL only beyond 1).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    instances: Vec<usize>,
    /// Card creations for the throughput table (0: skip it).
    #[arg(long, default_value_t = 2000)]
    writes: usize,
    /// Concurrent writers for the throughput table.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Compare with socket.io 4: the peer server script (`cargo xtask bench peers` installs and passes it).
    #[arg(long)]
    peer_socketio: Option<std::path::PathBuf>,
    /// Cards on the big board of the reads-versus-writes table (0: skip it).
    #[arg(long, default_value_t = 0)]
    big_board: usize,
}

/// Where a configuration keeps its data.
#[derive(Clone)]
enum Database {
    Sqlite,
    Postgres(String),
}

struct Server {
    child: tokio::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

async fn start_server(binary: &std::path::Path, database: &Database) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let mut command = tokio::process::Command::new(binary);
    command.args(["--bind", "127.0.0.1:0"]);
    match database {
        Database::Sqlite => command.arg("--db").arg(dir.path().join("bench.sqlite3")),
        Database::Postgres(url) => command.args(["--database-url", url]),
    };
    let mut child = command
        .args(["--static-dir", "/nonexistent", "--heartbeat-secs", "3600"])
        // Every subscriber signs in from loopback with one account: no sign-in limit in the way.
        .args(["--signin-attempts-per-address", "1000000"])
        // Every subscriber comes from one loopback address.
        .args(["--max-connections", "1000000", "--max-connections-per-address", "1000000"])
        // ...and one user: no per-user socket cap or write rate in the way of measuring fan-out and throughput.
        .args(["--max-sockets-per-user", "1000000", "--max-longpolls-per-user", "1000000"])
        .args(["--writes-per-second-per-user", "1000000", "--write-burst-per-user", "1000000"])
        .args(["--writes-per-second-per-address", "1000000", "--write-burst-per-address", "1000000"])
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
/// Client connections come from this many loopback addresses (127.0.0.1, .2, …): one source address has ~28,000
/// ephemeral ports towards one server port, so 100,000 subscribers need several.
const SOURCE_ADDRESSES: usize = 8;

async fn subscriber(
    i: usize,
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
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1 + (i % SOURCE_ADDRESSES) as u8], 0)))?;
    let tcp = socket.connect(addr.parse()?).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await?;
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

/// The servers of one configuration and a signed-in client with a board, a column and a card.
struct Setup {
    servers: Vec<Server>,
    http: reqwest::Client,
    cookie: String,
    board_id: String,
    column_id: String,
    card_id: String,
}

impl Setup {
    async fn start(binary: &std::path::Path, database: &Database, instances: usize) -> Result<Setup> {
        let mut servers = Vec::new();
        for _ in 0..instances {
            servers.push(start_server(binary, database).await?);
        }
        let base = format!("http://{}", servers[0].addr);
        // One account: its session is shared by every subscriber (the feed needs a signed-in session).
        let account = json!({"username": "bench", "password": "bench password"});
        let mut resp = reqwest::Client::new().post(format!("{base}/api/auth/signup")).json(&account).send().await?;
        if resp.status() == 409 {
            // The database of an earlier table.
            resp = reqwest::Client::new().post(format!("{base}/api/auth/signin")).json(&account).send().await?;
        }
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
        let column_id = column["id"].as_str().context("column id")?.to_owned();
        let card: Value = http
            .post(format!("{base}/api/columns/{column_id}/cards"))
            .json(&json!({"title": "card"}))
            .send()
            .await?
            .json()
            .await?;
        let card_id = card["id"].as_str().context("card id")?.to_owned();
        Ok(Setup { servers, http, cookie, board_id, column_id, card_id })
    }

    fn base(&self) -> String {
        format!("http://{}", self.servers[0].addr)
    }

    fn resident_kib(&self) -> Result<u64> {
        let mut total = 0;
        for s in &self.servers {
            total += resident_kib(s.child.id().context("server pid")?)?;
        }
        Ok(total)
    }

    async fn stop(mut self) {
        for s in &mut self.servers {
            s.child.kill().await.ok();
        }
    }
}

/// What one fan-out run measured.
struct FanOut {
    latencies: Vec<Duration>,
    connect: Duration,
    kib_per_subscriber: f64,
}

impl FanOut {
    fn p(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    fn row(&self) -> String {
        format!(
            "{:>9.2?} | {:>9.2?} | {:>9.2?} | {:>9.2?} | {:>14.1}",
            self.p(0.50),
            self.p(0.99),
            self.latencies.last().copied().unwrap_or_default(),
            self.connect,
            self.kib_per_subscriber
        )
    }
}

/// One row of the fan-out table.
async fn fan_out(setup: &Setup, n: usize, rounds: usize) -> Result<FanOut> {
    let base = setup.base();
    let snapshot: Value = setup.http.get(format!("{base}/api/boards/{}", setup.board_id)).send().await?.json().await?;
    let since = snapshot["cursor"].as_u64().context("cursor")?;
    let stream: StreamId = format!("board:{}", setup.board_id).parse().map_err(anyhow::Error::msg)?;
    let rss_before = setup.resident_kib()?;
    let (ready_tx, mut ready_rx) = mpsc::channel(n);
    let (arrive_tx, mut arrive_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let addr = setup.servers[i % setup.servers.len()].addr.clone();
        tasks.push(tokio::spawn(subscriber(
            i,
            addr,
            setup.cookie.clone(),
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
    let (connect, per_sub) = all_ready(n, &mut ready_rx, started, rss_before, || setup.resident_kib()).await?;

    let url = format!("{base}/api/cards/{}", setup.card_id);
    let latencies = rounds_of(n, rounds, &mut arrive_rx, |round| {
        setup.http.patch(&url).json(&json!({"title": format!("round {round}")}))
    })
    .await?;
    for t in tasks {
        t.abort();
    }
    Ok(FanOut { latencies, connect, kib_per_subscriber: per_sub })
}

/// Waits for all `n` subscribers to say they are ready: how long connecting them took since `started`, and the
/// server memory each costs (`resident` now, less `rss_before`, once allocations settle).
async fn all_ready(
    n: usize,
    ready: &mut mpsc::Receiver<()>,
    started: Instant,
    rss_before: u64,
    resident: impl Fn() -> Result<u64>,
) -> Result<(Duration, f64)> {
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(120), ready.recv()).await.context("subscribers never got ready")?;
    }
    let connect = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((connect, resident()?.saturating_sub(rss_before) as f64 / n as f64))
}

/// `rounds` times: sends the request `round` makes and waits for all `n` subscribers to report its arrival; the
/// latency of each arrival from the request's start, sorted.
async fn rounds_of(
    n: usize,
    rounds: usize,
    arrivals: &mut mpsc::UnboundedReceiver<Instant>,
    request: impl Fn(usize) -> reqwest::RequestBuilder,
) -> Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(n * rounds);
    for round in 0..rounds {
        let sent = Instant::now();
        let resp = request(round).send().await?;
        if !resp.status().is_success() {
            bail!("round {round} failed: {}", resp.status());
        }
        for _ in 0..n {
            let at = tokio::time::timeout(Duration::from_secs(60), arrivals.recv())
                .await
                .context("a subscriber never got the change")?;
            latencies.push(at.context("arrivals closed")?.saturating_duration_since(sent));
        }
    }
    latencies.sort();
    Ok(latencies)
}

/// The peer: socket.io 4 on Node (`crates/bench/peers/socketio-server.js`), every client in one room.
struct SocketIo {
    child: tokio::process::Child,
    port: u16,
}

impl SocketIo {
    async fn start(script: &std::path::Path) -> Result<SocketIo> {
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .current_dir(script.parent().context("the script's directory")?)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node (the socket.io peer)")?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        while let Some(line) = lines.next_line().await? {
            if let Some(port) = line.strip_prefix("listening on ") {
                return Ok(SocketIo { child, port: port.trim().parse()? });
            }
        }
        bail!("the socket.io server exited before it said where it listens")
    }
}

/// One socket.io client, speaking Engine.IO v4 over a WebSocket (what `socket.io-client` does with
/// `transports: ['websocket']`): open, connect to the default namespace, answer pings; reports when connected
/// and the arrival time of every `change` event.
async fn socketio_subscriber(
    i: usize,
    port: u16,
    ready: mpsc::Sender<()>,
    arrivals: mpsc::UnboundedSender<Instant>,
) -> Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1 + (i % SOURCE_ADDRESSES) as u8], 0)))?;
    let tcp = socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
    while let Some(frame) = ws.next().await {
        let Message::Text(text) = frame? else { continue };
        let text = text.as_str();
        if text.starts_with("42") {
            let _ = arrivals.send(Instant::now());
        } else if text.starts_with("40") {
            let _ = ready.send(()).await;
        } else if text.starts_with('0') {
            ws.send(Message::text("40")).await?;
        } else if text == "2" {
            ws.send(Message::text("3")).await?;
        }
    }
    Ok(())
}

/// The fan-out run against socket.io: the same clients, the same rounds; a round is one `POST /emit`.
async fn fan_out_socketio(script: &std::path::Path, n: usize, rounds: usize) -> Result<FanOut> {
    let mut peer = SocketIo::start(script).await?;
    let pid = peer.child.id().context("node pid")?;
    let rss_before = resident_kib(pid)?;
    let (ready_tx, mut ready_rx) = mpsc::channel(n);
    let (arrive_tx, mut arrive_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tasks.push(tokio::spawn(socketio_subscriber(i, peer.port, ready_tx.clone(), arrive_tx.clone())));
        if i % 256 == 255 {
            tokio::task::yield_now().await;
        }
    }
    let (connect, per_sub) = all_ready(n, &mut ready_rx, started, rss_before, || resident_kib(pid)).await?;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/emit", peer.port);
    let latencies =
        rounds_of(n, rounds, &mut arrive_rx, |round| http.post(&url).json(&json!({"title": format!("round {round}")})))
            .await?;
    for t in tasks {
        t.abort();
    }
    peer.child.kill().await.ok();
    Ok(FanOut { latencies, connect, kib_per_subscriber: per_sub })
}

/// One row of the throughput table: `writes` card creations from `concurrency` clients, spread over the
/// instances.
async fn throughput(setup: &Setup, writes: usize, concurrency: usize) -> Result<String> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let (http, next) = (setup.http.clone(), next.clone());
        let url =
            format!("http://{}/api/columns/{}/cards", setup.servers[c % setup.servers.len()].addr, setup.column_id);
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < writes {
                let t = Instant::now();
                let resp = http.post(&url).json(&json!({"title": "t"})).send().await?;
                if resp.status() != 201 {
                    bail!("write failed: {}", resp.status());
                }
                took.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(took)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = started.elapsed();
    all.sort();
    Ok(format!(
        "{:>9.0} | {:>9.2?} | {:>9.2?}",
        all.len() as f64 / wall.as_secs_f64(),
        percentile(&all, 0.50),
        percentile(&all, 0.99)
    ))
}

/// Rows of the reads-versus-writes table: small writes alone, then while 4 clients re-read a big board.
async fn reads_versus_writes(setup: &Setup, cards: usize) -> Result<Vec<String>> {
    let base = setup.base();
    for chunk in 0..cards.div_ceil(100) {
        let writes: Vec<Value> = (0..100.min(cards - chunk * 100))
            .map(|i| {
                json!({"write_id": uuid::Uuid::new_v4(), "op": {"type": "create_card", "column_id": setup.column_id,
                       "title": format!("card {}", chunk * 100 + i), "description": "a short description"}})
            })
            .collect();
        let resp = setup.http.post(format!("{base}/api/writes")).json(&json!({ "writes": writes })).send().await?;
        if !resp.status().is_success() {
            bail!("seeding failed: {}", resp.status());
        }
    }
    let snapshot = setup.http.get(format!("{base}/api/boards/{}", setup.board_id)).send().await?.bytes().await?;
    let mut rows = Vec::new();
    for readers in [0usize, 4] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..readers {
            let (http, stop, reads) = (setup.http.clone(), stop.clone(), reads.clone());
            let url = format!("{base}/api/boards/{}", setup.board_id);
            tasks.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(resp) = http.get(&url).send().await {
                        let _ = resp.bytes().await;
                        reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut took = Vec::new();
        for i in 0..200 {
            let t = Instant::now();
            let resp = setup
                .http
                .patch(format!("{base}/api/cards/{}", setup.card_id))
                .json(&json!({"title": format!("w{i}")}))
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("write failed: {}", resp.status());
            }
            took.push(t.elapsed());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        took.sort();
        rows.push(format!(
            "{:>14} | {:>9.2?} | {:>9.2?} | {:>12}",
            format!("{readers} ({} KB)", snapshot.len() / 1000),
            percentile(&took, 0.5),
            percentile(&took, 0.99),
            reads.load(std::sync::atomic::Ordering::Relaxed)
        ));
    }
    Ok(rows)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Every subscriber is a descriptor here and one in the server (which inherits this limit and raises its own
    // soft limit to it): as root, raise the hard limit for 100k+ subscribers; otherwise use what the hard limit
    // allows.
    let want = (*args.subscribers.iter().max().unwrap_or(&0) as u64 + 10_000).max(20_000);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    println!("open-file limit: {soft} (hard {hard}); subscribers connect from {SOURCE_ADDRESSES} loopback addresses");
    let mut configs: Vec<(String, Database, usize)> = Vec::new();
    let mut _cluster = None;
    for backend in &args.backends {
        match backend.as_str() {
            "sqlite" => configs.push(("SQLite".into(), Database::Sqlite, 1)),
            "postgres" => {
                syncline_devcluster::ensure_packages()?;
                let dir = std::env::temp_dir().join("syncline-bench");
                let cluster = syncline_devcluster::Postgres::start(&dir)?;
                for &n in &args.instances {
                    let url = cluster.create_database(&format!("bench{}", configs.len()))?;
                    configs.push((format!("PostgreSQL x{n}"), Database::Postgres(url), n.max(1)));
                }
                _cluster = Some(cluster);
            }
            other => bail!("unknown backend {other} (sqlite, postgres)"),
        }
    }
    println!("feed fan-out on loopback: one write, N subscribers of its board; {} writes per row", args.rounds);
    if args.peer_socketio.is_none() {
        println!(
            "{:<15} | {:>11} | {:>9} | {:>9} | {:>9} | {:>9} | {:>14}",
            "database", "subscribers", "p50", "p99", "max", "connect", "server KiB/sub"
        );
        println!("{}", "-".repeat(94));
    }
    // With a peer to compare with, the side-by-side table below is the fan-out table.
    let plain = if args.peer_socketio.is_some() { &[][..] } else { &configs[..] };
    for (name, database, instances) in plain {
        for &n in &args.subscribers {
            let setup = Setup::start(&args.server, database, *instances).await?;
            let row = fan_out(&setup, n, args.rounds).await?.row();
            println!("{name:<15} | {n:>11} | {row}");
            setup.stop().await;
        }
    }
    if args.peer_socketio.is_none() {
        println!(
            "(latency: write request sent → change message received by a subscriber; includes the HTTP write itself)"
        );
    }
    if let Some(script) = &args.peer_socketio {
        println!();
        println!(
            "side by side: syncline's feed (SQLite) and socket.io 4 (Node), one event to N clients, same client code"
        );
        println!(
            "{:>11} | {:>21} | {:>21} | {:>21} | {:>9} | {:>9}",
            "subscribers",
            "syncline p50 / p99",
            "socket.io p50 / p99",
            "KiB/conn syncline/s.io",
            "p99 ratio",
            "KiB ratio"
        );
        println!("{}", "-".repeat(108));
        for &n in &args.subscribers {
            let setup = Setup::start(&args.server, &Database::Sqlite, 1).await?;
            let ours = fan_out(&setup, n, args.rounds).await?;
            setup.stop().await;
            let peer = fan_out_socketio(script, n, args.rounds).await?;
            println!(
                "{n:>11} | {:>9.1?} / {:>9.1?} | {:>9.1?} / {:>9.1?} | {:>10.1} / {:>8.1} | {:>9.2} | {:>9.2}",
                ours.p(0.5),
                ours.p(0.99),
                peer.p(0.5),
                peer.p(0.99),
                ours.kib_per_subscriber,
                peer.kib_per_subscriber,
                ours.p(0.99).as_secs_f64() / peer.p(0.99).as_secs_f64().max(1e-9),
                ours.kib_per_subscriber / peer.kib_per_subscriber.max(1e-9),
            );
        }
        println!(
            "(syncline's latency includes its write: an authorised HTTP PATCH committed to SQLite, then the fan-out;"
        );
        println!(
            " socket.io's is an HTTP POST that emits at once, nothing stored. Ratios: syncline / socket.io, lower is better)"
        );
    }
    if args.big_board > 0 {
        println!();
        println!(
            "small writes (200 card renames, one at a time) alone and while 4 clients re-read a {}-card board",
            args.big_board
        );
        println!("{:<15} | {:>14} | {:>9} | {:>9} | {:>12}", "database", "readers", "p50", "p99", "reads done");
        println!("{}", "-".repeat(70));
        for (name, database, instances) in &configs {
            let setup = Setup::start(&args.server, database, *instances).await?;
            let rows = reads_versus_writes(&setup, args.big_board).await?;
            for row in rows {
                println!("{name:<15} | {row}");
            }
            setup.stop().await;
        }
    }
    if args.writes > 0 {
        println!();
        println!("write throughput: {} card creations from {} concurrent clients", args.writes, args.concurrency);
        println!("{:<15} | {:>9} | {:>9} | {:>9}", "database", "writes/s", "p50", "p99");
        println!("{}", "-".repeat(52));
        for (name, database, instances) in &configs {
            let setup = Setup::start(&args.server, database, *instances).await?;
            let row = throughput(&setup, args.writes, args.concurrency).await?;
            println!("{name:<15} | {row}");
            setup.stop().await;
        }
    }
    Ok(())
}
