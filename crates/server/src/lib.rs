//! The syncline server: the Kanban HTTP API on SQLite, and the web app's static files.
//!
//! [`Server::start`] binds and serves in the background (tests and the browser harness use it in-process);
//! the `syncline-server` binary wraps it with command-line configuration and signal handling.

pub mod access;
pub mod api;
pub mod auth;
pub mod cli;
pub mod db;
pub mod error;
pub mod feed;
pub mod guard;
pub mod metrics;
pub mod schema;
pub mod serve;
pub mod session;
pub mod stats;
pub mod store;
pub mod tail;
pub mod testing;
pub mod usage;
pub mod writes;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::services::{ServeDir, ServeFile};

pub use feed::Retention;
pub use metrics::Metrics;
pub use stats::{Delivery, RequestRecord, Stats};
pub use store::Store;

/// Server configuration; every flag has an environment-variable equivalent.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "syncline-server", version, about = "syncline: Kanban board with background sync")]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SYNCLINE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// SQLite database file; created with its directory if missing (unless `--database-url` is given).
    #[arg(long, env = "SYNCLINE_DB", default_value = "data/syncline.sqlite3")]
    pub db: PathBuf,
    /// How hard SQLite syncs each commit: `normal` (survives the process being killed; a power loss may lose the
    /// last commits) or `full` (survives a power loss; slower writes).
    #[arg(long, env = "SYNCLINE_SYNCHRONOUS", value_enum, default_value_t = schema::Synchronous::Normal)]
    pub synchronous: schema::Synchronous,
    /// PostgreSQL instead of the SQLite file: `postgres://user@host:port/database`. Several instances may share
    /// one database (each delivers the others' changes to its own clients).
    #[arg(long, env = "SYNCLINE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory of the built web app (index.html, pkg/).
    #[arg(long, env = "SYNCLINE_STATIC_DIR", default_value = "target/dist")]
    pub static_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SYNCLINE_MAX_BODY_BYTES", default_value_t = syncline_protocol::limits::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// The origin(s) users reach this server at, e.g. https://kanban.example.com (repeatable). Requests naming
    /// another Host are refused; cookies are Secure when one is HTTPS. Default: the bind address and its
    /// localhost forms.
    #[arg(long = "public-origin", env = "SYNCLINE_PUBLIC_ORIGINS", value_delimiter = ',')]
    pub public_origins: Vec<String>,
    /// Origins (besides the server's own) allowed to open the WebSocket feed, e.g. https://app.example.com.
    #[arg(long = "allowed-origin", env = "SYNCLINE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Addresses of reverse proxies / load balancers in front of this server (repeatable). A request from one of
    /// them is attributed to the last address its `X-Forwarded-For` names (HAProxy: `option forwardfor`), for
    /// the per-address sign-in limit; without this every user behind the proxy would share one limit.
    #[arg(long = "trusted-proxy", env = "SYNCLINE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Open connections at most (each is a file descriptor; the server raises its own limit to the hard limit).
    #[arg(long, env = "SYNCLINE_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// Open connections from one client address at most (a trusted proxy's are not counted as one client's).
    #[arg(long, env = "SYNCLINE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 4_096)]
    pub max_connections_per_address: usize,
    /// Seconds a client may take to send a request's headers; also how long an idle keep-alive connection stays.
    #[arg(long, env = "SYNCLINE_HEADER_READ_TIMEOUT_SECS", default_value_t = 10.0)]
    pub header_read_timeout_secs: f64,
    /// Largest request head (request line and headers), in bytes; larger gets 431.
    #[arg(long, env = "SYNCLINE_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Seconds a client may take to send a request's body.
    #[arg(long, env = "SYNCLINE_BODY_TIMEOUT_SECS", default_value_t = 30.0)]
    pub body_timeout_secs: f64,
    /// Where to serve Prometheus metrics (`/metrics`), e.g. 127.0.0.1:9090; not served when unset (never on the
    /// public address).
    #[arg(long, env = "SYNCLINE_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// Sign-in attempts per account before 429 (one more every minute after that).
    #[arg(long, env = "SYNCLINE_SIGNIN_ATTEMPTS_PER_ACCOUNT", default_value_t = 5)]
    pub signin_attempts_per_account: u32,
    /// Sign-in and sign-up attempts per address before 429 (one more every 10 seconds after that).
    #[arg(long, env = "SYNCLINE_SIGNIN_ATTEMPTS_PER_ADDRESS", default_value_t = 30)]
    pub signin_attempts_per_address: u32,
    /// Seconds between server pings on the feed; a client silent for two periods is dropped.
    #[arg(long, env = "SYNCLINE_HEARTBEAT_SECS", default_value_t = 25.0)]
    pub heartbeat_secs: f64,
    /// Streams one feed connection may follow.
    #[arg(long, env = "SYNCLINE_MAX_SUBSCRIPTIONS", default_value_t = 64)]
    pub max_subscriptions: usize,
    /// Largest WebSocket frame or message accepted from a client, in bytes.
    #[arg(long, env = "SYNCLINE_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Longest a long-poll may wait, in seconds (clients asking for more get this).
    #[arg(long, env = "SYNCLINE_LONGPOLL_MAX_WAIT_SECS", default_value_t = 30.0)]
    pub longpoll_max_wait_secs: f64,
    /// Changes kept per stream; a cursor older than that gets `reset`.
    #[arg(long, env = "SYNCLINE_RETENTION_CHANGES", default_value_t = 100_000)]
    pub retention_changes: u64,
    /// Changes older than this many seconds are dropped (default 7 days).
    #[arg(long, env = "SYNCLINE_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub retention_secs: u64,
    /// Write ids (idempotency keys) are remembered at least this many seconds (default 24 h).
    #[arg(long, env = "SYNCLINE_WRITE_ID_TTL_SECS", default_value_t = 24 * 3600)]
    pub write_id_ttl_secs: u64,
    /// Refuse WebSocket upgrades; clients use the long-poll fallback.
    #[arg(long, env = "SYNCLINE_NO_WEBSOCKET")]
    pub no_websocket: bool,
    /// With PostgreSQL: seconds between two reads of the shared log for changes other instances committed, when
    /// no commit hint (NOTIFY) wakes the instance sooner. The most a lost hint delays a change.
    #[arg(long, env = "SYNCLINE_TAIL_INTERVAL_SECS", default_value_t = 0.25)]
    pub tail_interval_secs: f64,
    /// Instead of serving: `backup --to <file>` copies the SQLite database while a server may be running.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Boards one user may own.
    #[arg(long, env = "SYNCLINE_MAX_BOARDS_PER_USER", default_value_t = 1_000)]
    pub max_boards_per_user: u64,
    /// Columns on one board.
    #[arg(long, env = "SYNCLINE_MAX_COLUMNS_PER_BOARD", default_value_t = 200)]
    pub max_columns_per_board: u64,
    /// Cards on one board.
    #[arg(long, env = "SYNCLINE_MAX_CARDS_PER_BOARD", default_value_t = 50_000)]
    pub max_cards_per_board: u64,
    /// Writes one user may make per second, sustained (REST writes and batch entries alike; 429 beyond).
    #[arg(long, env = "SYNCLINE_WRITES_PER_SECOND_PER_USER", default_value_t = 30)]
    pub writes_per_second_per_user: u32,
    /// Writes one user may make at once before the per-second rate applies (a batch counts each write).
    #[arg(long, env = "SYNCLINE_WRITE_BURST_PER_USER", default_value_t = 500)]
    pub write_burst_per_user: u32,
    /// Writes per second from one client address, all its users together.
    #[arg(long, env = "SYNCLINE_WRITES_PER_SECOND_PER_ADDRESS", default_value_t = 100)]
    pub writes_per_second_per_address: u32,
    /// Writes at once from one client address before its per-second rate applies.
    #[arg(long, env = "SYNCLINE_WRITE_BURST_PER_ADDRESS", default_value_t = 2_000)]
    pub write_burst_per_address: u32,
    /// Feed WebSockets one user may hold open (one per browser is the norm).
    #[arg(long, env = "SYNCLINE_MAX_SOCKETS_PER_USER", default_value_t = 64)]
    pub max_sockets_per_user: usize,
    /// Long-polls one user may have waiting at once.
    #[arg(long, env = "SYNCLINE_MAX_LONGPOLLS_PER_USER", default_value_t = 64)]
    pub max_longpolls_per_user: usize,
    /// Seconds between retention sweeps.
    #[arg(long, env = "SYNCLINE_PRUNE_INTERVAL_SECS", default_value_t = 60.0)]
    pub prune_interval_secs: f64,
}

/// What the program does instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Copies the SQLite database (`--db`) into a new file, consistently, while the server keeps running.
    Backup {
        /// The file to write (must not exist).
        #[arg(long)]
        to: PathBuf,
    },
}

impl Config {
    /// A configuration for tests: loopback on a free port, the given database, no static files.
    pub fn for_tests(db: PathBuf) -> Config {
        Config {
            bind: "127.0.0.1:0".parse().expect("valid address"),
            database_url: testing::database_url(),
            synchronous: schema::Synchronous::Normal,
            command: None,
            max_boards_per_user: 1_000,
            max_columns_per_board: 200,
            max_cards_per_board: 50_000,
            // Tests write in bursts far beyond a person (10,000 cards in seconds); the tests of these limits set
            // their own.
            writes_per_second_per_user: 1_000_000,
            write_burst_per_user: 1_000_000,
            writes_per_second_per_address: 1_000_000,
            write_burst_per_address: 1_000_000,
            max_sockets_per_user: 64,
            max_longpolls_per_user: 64,
            db,
            static_dir: PathBuf::from("/nonexistent"),
            max_body_bytes: syncline_protocol::limits::DEFAULT_MAX_BODY_BYTES,
            public_origins: Vec::new(),
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_connections: 50_000,
            max_connections_per_address: 4_096,
            header_read_timeout_secs: 10.0,
            max_header_bytes: 32 * 1024,
            body_timeout_secs: 30.0,
            metrics_bind: None,
            signin_attempts_per_account: 5,
            signin_attempts_per_address: 30,
            heartbeat_secs: 25.0,
            max_subscriptions: 64,
            max_frame_bytes: 64 * 1024,
            longpoll_max_wait_secs: 30.0,
            retention_changes: 100_000,
            retention_secs: 7 * 24 * 3600,
            write_id_ttl_secs: 24 * 3600,
            prune_interval_secs: 60.0,
            tail_interval_secs: 0.25,
            no_websocket: false,
        }
    }

    pub fn retention(&self) -> Retention {
        Retention {
            max_changes_per_stream: self.retention_changes,
            max_change_age: Duration::from_secs(self.retention_secs),
            write_ttl: Duration::from_secs(self.write_id_ttl_secs),
        }
    }

    fn feed(&self) -> FeedConfig {
        FeedConfig {
            heartbeat: Duration::from_secs_f64(self.heartbeat_secs.max(0.01)),
            max_subscriptions: self.max_subscriptions,
            max_frame_bytes: self.max_frame_bytes,
            longpoll_max_wait: Duration::from_secs_f64(self.longpoll_max_wait_secs.max(0.0)),
            allowed_origins: self.allowed_origins.clone(),
            page_size: 500,
        }
    }
}

/// Settings of the feed (WebSocket and long-poll).
#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub heartbeat: Duration,
    pub max_subscriptions: usize,
    pub max_frame_bytes: usize,
    pub longpoll_max_wait: Duration,
    pub allowed_origins: Vec<String>,
    /// Changes per message when replaying from the log.
    pub page_size: usize,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub stats: Arc<Stats>,
    pub metrics: Arc<Metrics>,
    pub feed: Arc<FeedConfig>,
    /// Becomes true when the server stops: long-lived connections close.
    pub shutdown: watch::Receiver<bool>,
    /// When false, WebSocket upgrades are refused (503) and clients stay fresh by long-poll: for operating
    /// behind a proxy that breaks WebSockets, and for testing the fallback.
    pub websockets: Arc<std::sync::atomic::AtomicBool>,
    /// Sign-in attempt limits.
    pub auth: auth::Limits,
    /// Write rates, open sockets and long-polls per user and address.
    pub usage: Arc<usage::Usage>,
    /// The origins this server answers as.
    pub origins: Arc<guard::Origins>,
    /// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxy`).
    pub trusted_proxies: Arc<[std::net::IpAddr]>,
}

/// Builds the whole application: `/api/*` (with sessions) and the static web app, behind the Host / same-site
/// guard and the security headers.
pub fn app(state: AppState, config: &Config) -> Router {
    let index = config.static_dir.join("index.html");
    // Precompressed copies (`.br`, `.gz`, written by the build) by content negotiation; cache headers by path.
    let static_files = ServeDir::new(&config.static_dir)
        .precompressed_br()
        .precompressed_gzip()
        .not_found_service(ServeFile::new(index).precompressed_br().precompressed_gzip());
    let static_files =
        tower::ServiceBuilder::new().layer(axum::middleware::from_fn(cache_headers)).service(static_files);
    let sessions = auth::session_layer(&state.store, state.origins.https());
    Router::new()
        .nest("/api", api::router().layer(sessions))
        .route("/healthz", axum::routing::get(health))
        .fallback_service(static_files)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(Duration::from_secs_f64(
            config.body_timeout_secs.clamp(0.1, 3600.0),
        )))
        .layer(error::catch_panic())
        .layer(axum::middleware::from_fn_with_state(state.clone(), stats::record_requests))
        .layer(axum::middleware::from_fn_with_state(state.origins.clone(), guard::guard))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Cache headers for the web app: files under `/assets/` are content-addressed (a new build is a new directory),
/// so they are `immutable` for a year; everything else (`index.html`, which names the current directory) is
/// revalidated on every load (`no-cache`: a 304 when unchanged, thanks to `Last-Modified`).
async fn cache_headers(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let immutable = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let value =
        if immutable && response.status().is_success() { "public, max-age=31536000, immutable" } else { "no-cache" };
    let headers = response.headers_mut();
    headers.insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static(value));
    // The body depends on Accept-Encoding (precompressed copies): shared caches must key on it.
    headers.insert(axum::http::header::VARY, axum::http::HeaderValue::from_static("accept-encoding"));
    response
}

/// `GET /healthz`: the instance serves and its database answers (load balancers' health check).
async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match state.store.read(|tx| tx.query_one("SELECT 1", &[]).map(|_| ())).await {
        Ok(()) => "ok".into_response(),
        Err(_) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response(),
    }
}

/// `/metrics` alone, for the metrics address.
fn metrics_app(state: AppState) -> Router {
    Router::new().route("/metrics", axum::routing::get(api::metrics)).with_state(state)
}

/// A running server. Dropping it does not stop it; call [`Server::stop`].
pub struct Server {
    pub addr: SocketAddr,
    /// Where `/metrics` is served (`--metrics-bind`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Opens the database, binds `config.bind` and serves in a background task.
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        let store = match &config.database_url {
            Some(url) => {
                let url = url.clone();
                tokio::task::spawn_blocking(move || Store::connect(&url)).await??
            }
            None => Store::open_with(&config.db, config.synchronous)?,
        };
        let listener = TcpListener::bind(config.bind).await?;
        Self::start_on(listener, store, config)
    }

    /// Serves on an already-bound listener (e.g. to restart on the same port).
    pub fn start_on(listener: TcpListener, store: Store, config: &Config) -> anyhow::Result<Server> {
        let addr = listener.local_addr()?;
        let store = store.with_write_id_ttl(config.retention().write_ttl).with_quotas(writes::Quotas {
            boards_per_user: config.max_boards_per_user,
            columns_per_board: config.max_columns_per_board,
            cards_per_board: config.max_cards_per_board,
        });
        if !config.static_dir.join("index.html").exists() {
            tracing::warn!(dir = %config.static_dir.display(), "no index.html in the static directory; only /api is served");
        }
        let (shutdown, rx) = watch::channel(false);
        let state = AppState {
            store,
            stats: Arc::new(Stats::default()),
            metrics: Arc::new(Metrics::default()),
            feed: Arc::new(config.feed()),
            shutdown: rx.clone(),
            websockets: Arc::new(std::sync::atomic::AtomicBool::new(!config.no_websocket)),
            auth: Arc::new(auth::AuthLimits::new(
                config.signin_attempts_per_account,
                60,
                config.signin_attempts_per_address,
                10,
            )),
            usage: usage::Usage::new(usage::UsageSettings {
                writes_per_second_per_user: config.writes_per_second_per_user,
                write_burst_per_user: config.write_burst_per_user,
                writes_per_second_per_address: config.writes_per_second_per_address,
                write_burst_per_address: config.write_burst_per_address,
                sockets_per_user: config.max_sockets_per_user,
                longpolls_per_user: config.max_longpolls_per_user,
            }),
            origins: Arc::new(guard::Origins::new(&config.public_origins, addr, &config.allowed_origins)),
            trusted_proxies: config.trusted_proxies.clone().into(),
        };
        tokio::spawn(prune_periodically(state.clone(), config.retention(), config.prune_interval_secs));
        tokio::spawn(tail::run(
            state.store.clone(),
            Duration::from_secs_f64(config.tail_interval_secs.clamp(0.01, 60.0)),
            rx.clone(),
        ));
        let metrics_addr = match config.metrics_bind {
            None => None,
            Some(bind) => {
                let std_listener = std::net::TcpListener::bind(bind)?;
                std_listener.set_nonblocking(true)?;
                let listener = TcpListener::from_std(std_listener)?;
                let metrics_addr = listener.local_addr()?;
                let (app, mut stop) = (metrics_app(state.clone()), rx.clone());
                tokio::spawn(async move {
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let _ = axum::serve(listener, app).with_graceful_shutdown(stopped).await;
                });
                Some(metrics_addr)
            }
        };
        let app = app(state.clone(), config);
        let limits = serve::Limits {
            max_connections: config.max_connections.max(1),
            max_connections_per_address: config.max_connections_per_address.max(1),
            header_read_timeout: Duration::from_secs_f64(config.header_read_timeout_secs.clamp(0.1, 3600.0)),
            max_header_bytes: config.max_header_bytes.clamp(8 * 1024, 1 << 20),
            trusted_proxies: state.trusted_proxies.clone(),
        };
        let task = tokio::spawn(async move {
            serve::serve(listener, app, limits, rx).await;
            Ok(())
        });
        Ok(Server { addr, metrics_addr, state, shutdown, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.state.stats
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// Resolves when the server has stopped (after [`Server::stop`] or a fatal error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await??;
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then drops what is left.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

/// Applies retention now and then until the server stops.
async fn prune_periodically(state: AppState, retention: Retention, every_secs: f64) {
    let mut shutdown = state.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(every_secs.max(0.01)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        let now = feed::now_ms();
        let expired = state.store.transaction(move |tx| auth::prune_sessions(tx, (now / 1000) as i64)).await;
        if let Err(e) = expired {
            tracing::warn!(error = ?e, "could not prune expired sessions");
        }
        state.auth.sweep();
        state.usage.sweep();
        match state.store.transaction(move |tx| feed::prune(tx, &retention, now)).await {
            Ok((changes, writes)) => {
                state.metrics.changes_pruned.inc_by(changes as u64);
                if changes + writes > 0 {
                    tracing::debug!(changes, writes, "retention pruned the log");
                }
            }
            Err(e) => tracing::warn!(error = ?e, "retention sweep failed"),
        }
        state.store.hub().sweep();
    }
}

/// Resolves once the server is stopping.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it at once.
    let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
}
