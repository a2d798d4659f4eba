//! Feed fan-out benchmark: N WebSocket subscribers on loopback follow one board; one write lands; how long
//! until every subscriber has it, and how much server memory each idle subscriber costs. Then write throughput:
//! W card creations from C concurrent clients.
//!
//! Side by side in one run (`--backends sqlite,postgres --instances 1,3`): the SQLite file, and PostgreSQL with
//! one or several instances on one database — subscribers spread evenly over the instances, every write sent
//! to the first, so with 3 instances two thirds of the subscribers get each change through the shared log
//! (another instance's tail). PostgreSQL is a throwaway cluster this program starts (Debian's package).
//!
//! The servers run as their own processes (the release binary), so their resident memory is their own. Past what
//! one process's descriptor limit allows, the subscribers are spread over worker processes (this program, run as
//! `feed-bench worker`), and the servers must be several instances (`--backends postgres --instances N`): each
//! instance holds its share. Prints tables. Not a test: it asserts nothing, it measures.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use syncline_kanban::{ClientMessage, ServerMessage, StreamCursor, StreamId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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
    /// Also measure the floor for each subscriber count: the same clients and change message from a server that
    /// only delivers (see `fan_out_floor`).
    #[arg(long)]
    floor: bool,
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

/// Handshakes one process has under way at once: 100,000 clients do not all connect in the same instant, and a
/// herd of them would only measure the accept queue (and run into the server's header-read timeout).
const HANDSHAKES_IN_FLIGHT: usize = 64;

/// Connects and upgrades (a few tries: under a connection storm a handshake may time out), one gate permit while
/// it is under way. A small read buffer: this process holds tens of thousands of idle clients.
async fn connect_feed(
    i: usize,
    addr: &str,
    cookie: &str,
    gate: &tokio::sync::Semaphore,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let mut last = None;
    for attempt in 0..5u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        }
        let _permit = gate.acquire().await?;
        let attempt = async {
            let mut request = format!("ws://{addr}/api/feed").into_client_request()?;
            request.headers_mut().insert("cookie", cookie.parse()?);
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1 + (i % SOURCE_ADDRESSES) as u8], 0)))?;
            let tcp = socket.connect(addr.parse()?).await?;
            let config = WebSocketConfig::default().read_buffer_size(4096);
            let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
            anyhow::Ok(ws)
        };
        match attempt.await {
            Ok(ws) => return Ok(ws),
            Err(e) => last = Some(e),
        }
    }
    let e = last.expect("tried");
    eprintln!("subscriber {i} could not connect: {e:#}");
    Err(e)
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    i: usize,
    addr: String,
    cookie: String,
    stream: StreamId,
    since: u64,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
    ready: mpsc::Sender<()>,
    arrivals: mpsc::UnboundedSender<Instant>,
) -> Result<()> {
    let mut ws = connect_feed(i, &addr, &cookie, &gate).await?;
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

/// Where subscribers report: each synced (`ready`), each change's arrival, and a subscriber that ended in an
/// error (it could not connect, or its socket failed).
struct Reports {
    ready: mpsc::Sender<()>,
    arrivals: mpsc::UnboundedSender<Instant>,
    failed: mpsc::UnboundedSender<String>,
}

/// Starts subscribers `range` (subscriber `i` goes to server `addrs[i % addrs.len()]`); they wait their turn to
/// connect, at most `HANDSHAKES_IN_FLIGHT` handshakes at once, so the accept backlog never overflows.
fn spawn_subscribers(
    range: std::ops::Range<usize>,
    addrs: &[String],
    cookie: &str,
    stream: StreamId,
    since: u64,
    reports: &Reports,
) -> Vec<tokio::task::JoinHandle<()>> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT));
    range
        .map(|i| {
            let addr = addrs[i % addrs.len()].clone();
            let (ready, arrivals) = (reports.ready.clone(), reports.arrivals.clone());
            let one = subscriber(i, addr, cookie.to_owned(), stream, since, gate.clone(), ready, arrivals);
            let failed = reports.failed.clone();
            tokio::spawn(async move {
                if let Err(e) = one.await {
                    let _ = failed.send(format!("subscriber {i}: {e:#}"));
                }
            })
        })
        .collect()
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

    fn pids(&self) -> Result<Vec<u32>> {
        self.servers.iter().map(|s| s.child.id().context("server pid")).collect()
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
    /// CPU time per change over the rounds (user + system, ms): of the server processes, and of the processes
    /// holding the subscribers — on one machine they share its cores, so both bound the latency.
    cpu_ms_per_change: (f64, f64),
}

impl FanOut {
    fn p(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    fn row(&self) -> String {
        format!(
            "{:>9.2?} | {:>9.2?} | {:>9.2?} | {:>9.2?} | {:>14.1} | {:>8.0} / {:>8.0}",
            self.p(0.50),
            self.p(0.99),
            self.latencies.last().copied().unwrap_or_default(),
            self.connect,
            self.kib_per_subscriber,
            self.cpu_ms_per_change.0,
            self.cpu_ms_per_change.1,
        )
    }
}

/// CPU time a process has used (user + system), in ms.
fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which is in parentheses and may hold spaces): utime and stime are the
    // 12th and 13th of them, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 * 10.0)
}

fn cpu_ms_of(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&p| cpu_ms(p)).sum()
}

/// Descriptors a process keeps for itself beyond its sockets (files, the runtime, an HTTP client, a database pool).
const DESCRIPTOR_MARGIN: u64 = 1_000;

/// Subscribers one process can hold under the descriptor hard limit.
fn subscribers_per_process() -> Result<usize> {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    Ok(hard.saturating_sub(DESCRIPTOR_MARGIN).max(1) as usize)
}

/// One row of the fan-out table.
async fn fan_out(setup: &Setup, n: usize, rounds: usize) -> Result<FanOut> {
    let base = setup.base();
    let snapshot: Value = setup.http.get(format!("{base}/api/boards/{}", setup.board_id)).send().await?.json().await?;
    let since = snapshot["cursor"].as_u64().context("cursor")?;
    let stream: StreamId = format!("board:{}", setup.board_id).parse().map_err(anyhow::Error::msg)?;
    let per_process = subscribers_per_process()?;
    let per_instance = n.div_ceil(setup.servers.len());
    if per_instance > per_process {
        bail!(
            "{n} subscribers over {} server instance(s) is {per_instance} sockets each; this machine's descriptor hard \
             limit allows {per_process} per process: use --backends postgres --instances {} (or more)",
            setup.servers.len(),
            n.div_ceil(per_process)
        );
    }
    if n > per_process {
        let workers = n.div_ceil(per_process);
        return fan_out_in_workers(&Target::of(setup)?, n, rounds, since, stream, workers, async |round| {
            rename_card(setup, round).await
        })
        .await;
    }
    let rss_before = setup.resident_kib()?;
    let (ready, mut ready_rx) = mpsc::channel(n);
    let (arrivals, mut arrive_rx) = mpsc::unbounded_channel();
    // (A subscriber that fails has said why on stderr; the wait for all to be ready times out.)
    let (failed, _) = mpsc::unbounded_channel();
    let started = Instant::now();
    let addrs: Vec<String> = setup.servers.iter().map(|s| s.addr.clone()).collect();
    let tasks = spawn_subscribers(0..n, &addrs, &setup.cookie, stream, since, &Reports { ready, arrivals, failed });
    let (connect, per_sub) = all_ready(n, &mut ready_rx, started, rss_before, || setup.resident_kib()).await?;

    let url = format!("{base}/api/cards/{}", setup.card_id);
    let (servers, clients) = (setup.pids()?, [std::process::id()]);
    let cpu_before = (cpu_ms_of(&servers)?, cpu_ms_of(&clients)?);
    let latencies = rounds_of(n, rounds, &mut arrive_rx, |round| {
        setup.http.patch(&url).json(&json!({"title": format!("round {round}")}))
    })
    .await?;
    let cpu = (cpu_ms_of(&servers)? - cpu_before.0, cpu_ms_of(&clients)? - cpu_before.1);
    for t in tasks {
        t.abort();
    }
    let cpu_ms_per_change = (cpu.0 / rounds as f64, cpu.1 / rounds as f64);
    Ok(FanOut { latencies, connect, kib_per_subscriber: per_sub, cpu_ms_per_change })
}

/// Where a fan-out's subscribers connect: the servers' addresses (subscriber `i` goes to `addrs[i % len]`), the
/// session cookie they present, and the server processes whose memory and CPU time are measured.
struct Target {
    addrs: Vec<String>,
    cookie: String,
    pids: Vec<u32>,
}

impl Target {
    fn of(setup: &Setup) -> Result<Target> {
        Ok(Target {
            addrs: setup.servers.iter().map(|s| s.addr.clone()).collect(),
            cookie: setup.cookie.clone(),
            pids: setup.pids()?,
        })
    }

    fn resident_kib(&self) -> Result<u64> {
        self.pids.iter().map(|&p| resident_kib(p)).sum()
    }
}

/// The fan-out with the subscribers in `workers` processes (`feed-bench worker`), each holding an equal share:
/// they say `ready` when all theirs are synced, then one `arrivals` line per change with every subscriber's
/// arrival time (wall clock, µs: the one clock the processes share). `fire(round)` makes round `round`'s change.
#[allow(clippy::too_many_arguments)]
async fn fan_out_in_workers(
    target: &Target,
    n: usize,
    rounds: usize,
    since: u64,
    stream: StreamId,
    workers: usize,
    mut fire: impl AsyncFnMut(usize) -> Result<()>,
) -> Result<FanOut> {
    let rss_before = target.resident_kib()?;
    let started = Instant::now();
    let mut children = Vec::new();
    let share = n.div_ceil(workers);
    for w in 0..workers {
        let first = w * share;
        let count = share.min(n.saturating_sub(first));
        if count == 0 {
            break;
        }
        let spec = json!({
            "addrs": target.addrs, "cookie": target.cookie, "stream": stream.to_string(), "since": since,
            "first": first, "count": count,
        });
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["worker", &spec.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        children.push((child, lines, count));
    }
    for (_, lines, _) in &mut children {
        let line = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
            .await
            .context("a worker's subscribers never got ready")??;
        if line.as_deref() != Some("ready") {
            bail!("a worker failed: {line:?}");
        }
    }
    let connect = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kib_per_subscriber = target.resident_kib()?.saturating_sub(rss_before) as f64 / n as f64;
    let clients: Vec<u32> = children.iter().filter_map(|(child, _, _)| child.id()).collect();
    let cpu_before = (cpu_ms_of(&target.pids)?, cpu_ms_of(&clients)?);
    let mut latencies = Vec::with_capacity(n * rounds);
    for round in 0..rounds {
        let sent = epoch_micros(std::time::SystemTime::now());
        fire(round).await.with_context(|| format!("round {round}"))?;
        for (_, lines, count) in &mut children {
            let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
                .await
                .context("a worker's subscribers never all got the change")??
                .context("a worker exited")?;
            let times = line.strip_prefix("arrivals ").with_context(|| format!("a worker said {line:?}"))?;
            let before = latencies.len();
            latencies.extend(
                times
                    .split(' ')
                    .filter_map(|t| t.parse::<u64>().ok())
                    .map(|t| Duration::from_micros(t.saturating_sub(sent))),
            );
            if latencies.len() - before != *count {
                bail!("a worker reported {} arrivals for {count} subscribers", latencies.len() - before);
            }
        }
    }
    let cpu = (cpu_ms_of(&target.pids)? - cpu_before.0, cpu_ms_of(&clients)? - cpu_before.1);
    for (mut child, _, _) in children {
        child.kill().await.ok();
    }
    latencies.sort();
    let cpu_ms_per_change = (cpu.0 / rounds as f64, cpu.1 / rounds as f64);
    Ok(FanOut { latencies, connect, kib_per_subscriber, cpu_ms_per_change })
}

/// Patches the bench card's title to `round {round}`: one change on the board's stream.
async fn rename_card(setup: &Setup, round: usize) -> Result<()> {
    let url = format!("{}/api/cards/{}", setup.base(), setup.card_id);
    let resp = setup.http.patch(&url).json(&json!({"title": format!("round {round}")})).send().await?;
    if !resp.status().is_success() {
        bail!("the write failed: {}", resp.status());
    }
    Ok(())
}

/// The floor: what the same clients get from a server that does nothing but deliver. `feed-bench floor-server`
/// is the least a Rust WebSocket server does for a fan-out — tokio-tungstenite, one task per connection, one
/// tokio broadcast channel, the socket settings syncline's feed uses — and it answers each subscription with the
/// `Synced` text syncline sent and each round with the `Changes` text syncline sent: no session, no authorisation,
/// no database, no cursor. Same subscribers, same worker processes, same descriptor limit per process (so as many
/// floor servers as syncline needs instances). What syncline costs above this row is what its own code can still
/// save; this row itself is the machine's (kernel loopback, the runtime, the clients sharing the cores).
async fn fan_out_floor(setup: &Setup, n: usize, rounds: usize) -> Result<FanOut> {
    let (synced, change, since, stream) = capture_messages(setup).await?;
    let per_process = subscribers_per_process()?;
    let spec = json!({ "synced": synced, "change": change }).to_string();
    let (mut children, mut stdins, mut addrs, mut pids) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n.div_ceil(per_process) {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["floor-server", &spec])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = lines.next_line().await?.context("a floor server exited")?;
        addrs.push(line.strip_prefix("listening on ").with_context(|| format!("a floor server said {line:?}"))?.into());
        pids.push(child.id().context("floor server pid")?);
        stdins.push(child.stdin.take().expect("piped"));
        children.push(child);
    }
    let target = Target { addrs, cookie: setup.cookie.clone(), pids };
    let workers = n.div_ceil(per_process);
    let run = fan_out_in_workers(&target, n, rounds, since, stream, workers, async |_| {
        for stdin in &mut stdins {
            stdin.write_all(b"change\n").await?;
            stdin.flush().await?;
        }
        Ok(())
    })
    .await;
    for mut child in children {
        child.kill().await.ok();
    }
    run
}

/// What syncline's feed sends one subscriber of the bench board: the `Synced` text, then (after one rename) the
/// `Changes` text; and the cursor and stream the subscribers ask for.
async fn capture_messages(setup: &Setup) -> Result<(String, String, u64, StreamId)> {
    let snapshot: Value =
        setup.http.get(format!("{}/api/boards/{}", setup.base(), setup.board_id)).send().await?.json().await?;
    let since = snapshot["cursor"].as_u64().context("cursor")?;
    let stream: StreamId = format!("board:{}", setup.board_id).parse().map_err(anyhow::Error::msg)?;
    let gate = tokio::sync::Semaphore::new(1);
    let mut ws = connect_feed(0, &setup.servers[0].addr, &setup.cookie, &gate).await?;
    let subscribe =
        ClientMessage::Subscribe { streams: vec![StreamCursor { stream: stream.into(), since }], log_id: None };
    ws.send(Message::text(serde_json::to_string(&subscribe)?)).await?;
    let mut synced = None;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
        let Message::Text(text) = frame? else { continue };
        match serde_json::from_str::<ServerMessage>(&text)? {
            ServerMessage::Synced { .. } if synced.is_none() => {
                synced = Some(text.to_string());
                rename_card(setup, 0).await?;
            }
            ServerMessage::Changes { .. } if synced.is_some() => {
                return Ok((synced.expect("checked"), text.to_string(), since, stream));
            }
            _ => {}
        }
    }
    bail!("the feed closed before it sent a change")
}

/// `feed-bench floor-server <spec>`: the floor server (see `fan_out_floor`). Says `listening on <addr>`, then
/// sends the change to every subscriber at each line on its standard input.
async fn floor_server(spec: &str) -> Result<()> {
    use tokio_tungstenite::tungstenite::Utf8Bytes;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let spec: Value = serde_json::from_str(spec)?;
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)?;
    let synced = Utf8Bytes::from(spec["synced"].as_str().context("synced")?.to_owned());
    let change = Utf8Bytes::from(spec["change"].as_str().context("change")?.to_owned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    let (tx, _) = tokio::sync::broadcast::channel::<Utf8Bytes>(16);
    let subscribe = tx.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (synced, mut changes) = (synced.clone(), subscribe.subscribe());
            tokio::spawn(async move {
                let config = WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(0);
                let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await?;
                ws.next().await.context("no subscription")??;
                ws.send(Message::Text(synced)).await?;
                loop {
                    tokio::select! {
                        change = changes.recv() => ws.send(Message::Text(change?)).await?,
                        frame = ws.next() => if !matches!(frame, Some(Ok(_))) { return Ok(()) },
                    }
                }
                #[allow(unreachable_code)]
                anyhow::Ok(())
            });
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while lines.next_line().await?.is_some() {
        let _ = tx.send(change.clone());
    }
    Ok(())
}

fn epoch_micros(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// `feed-bench worker <spec>`: holds `count` subscribers (numbered from `first`, so source addresses and server
/// instances are shared out as in one process), says `ready` once all are synced, then an `arrivals` line each
/// time every one of them got a change.
async fn worker(spec: &str) -> Result<()> {
    let spec: Value = serde_json::from_str(spec)?;
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)?;
    let addrs: Vec<String> =
        spec["addrs"].as_array().context("addrs")?.iter().filter_map(|a| a.as_str().map(str::to_owned)).collect();
    let cookie = spec["cookie"].as_str().context("cookie")?.to_owned();
    let stream: StreamId = spec["stream"].as_str().context("stream")?.parse().map_err(anyhow::Error::msg)?;
    let since = spec["since"].as_u64().context("since")?;
    let first = spec["first"].as_u64().context("first")? as usize;
    let count = spec["count"].as_u64().context("count")? as usize;
    let (ready, mut ready_rx) = mpsc::channel(count.max(1));
    let (arrivals, mut arrive_rx) = mpsc::unbounded_channel();
    let (failed, mut failed_rx) = mpsc::unbounded_channel();
    let _tasks =
        spawn_subscribers(first..first + count, &addrs, &cookie, stream, since, &Reports { ready, arrivals, failed });
    for _ in 0..count {
        tokio::select! {
            ready = tokio::time::timeout(Duration::from_secs(600), ready_rx.recv()) => {
                ready.context("subscribers never got ready")?;
            }
            Some(e) = failed_rx.recv() => {
                println!("failed {e}");
                return Ok(());
            }
        }
    }
    println!("ready");
    // The wall clock at one instant: arrivals (monotonic) are reported on it.
    let (origin, origin_wall) = (Instant::now(), epoch_micros(std::time::SystemTime::now()));
    loop {
        let mut line = String::from("arrivals");
        for _ in 0..count {
            // Every change is sent after `ready`, so it arrives after `origin`.
            let at: Instant = arrive_rx.recv().await.context("arrivals closed")?;
            let micros = origin_wall + at.saturating_duration_since(origin).as_micros() as u64;
            line.push(' ');
            line.push_str(&micros.to_string());
        }
        println!("{line}");
    }
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
    let cpu_before = (cpu_ms(pid)?, cpu_ms(std::process::id())?);
    let latencies =
        rounds_of(n, rounds, &mut arrive_rx, |round| http.post(&url).json(&json!({"title": format!("round {round}")})))
            .await?;
    let cpu = (cpu_ms(pid)? - cpu_before.0, cpu_ms(std::process::id())? - cpu_before.1);
    for t in tasks {
        t.abort();
    }
    peer.child.kill().await.ok();
    let cpu_ms_per_change = (cpu.0 / rounds as f64, cpu.1 / rounds as f64);
    Ok(FanOut { latencies, connect, kib_per_subscriber: per_sub, cpu_ms_per_change })
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
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("worker") {
        return worker(argv.get(2).context("feed-bench worker <spec>")?).await;
    }
    if argv.get(1).map(String::as_str) == Some("floor-server") {
        return floor_server(argv.get(2).context("feed-bench floor-server <spec>")?).await;
    }
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
            "{:<15} | {:>11} | {:>9} | {:>9} | {:>9} | {:>9} | {:>14} | {:>19}",
            "database", "subscribers", "p50", "p99", "max", "connect", "server KiB/sub", "CPU ms/change s / c"
        );
        println!("{}", "-".repeat(116));
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
    if args.floor
        && let Some((_, database, instances)) = configs.first()
    {
        for &n in &args.subscribers {
            let setup = Setup::start(&args.server, database, *instances).await?;
            let row = fan_out_floor(&setup, n, args.rounds).await?.row();
            println!("{:<15} | {n:>11} | {row}", "floor");
            setup.stop().await;
        }
    }
    if args.peer_socketio.is_none() {
        println!(
            "(latency: write request sent → change message received by a subscriber; includes the HTTP write itself;"
        );
        println!(
            " CPU: user + system time per change of the server processes (s) and of those holding the subscribers (c),"
        );
        println!(
            " which share this machine's cores; past one process's descriptor limit, in several worker processes)"
        );
        if args.floor {
            println!(
                " floor: a server that only delivers syncline's Synced and Changes texts to the same clients (tokio-"
            );
            println!(
                " tungstenite, a broadcast channel, no session, no database), as many processes as syncline's instances,"
            );
            println!(" the clients always in worker processes; the least any server pays on this machine");
        }
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
