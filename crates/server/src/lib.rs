//! The syncline server: the Kanban HTTP API on SQLite, and the web app's static files.
//!
//! [`Server::start`] binds and serves in the background (tests and the browser harness use it in-process);
//! the `syncline-server` binary wraps it with command-line configuration and signal handling.

pub mod api;
pub mod error;
pub mod stats;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::services::{ServeDir, ServeFile};

pub use stats::{RequestRecord, Stats};
pub use store::Store;

/// Server configuration; every flag has an environment-variable equivalent.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "syncline-server", version, about = "syncline: Kanban board with background sync")]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SYNCLINE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// SQLite database file; created with its directory if missing.
    #[arg(long, env = "SYNCLINE_DB", default_value = "data/syncline.sqlite3")]
    pub db: PathBuf,
    /// Directory of the built web app (index.html, pkg/).
    #[arg(long, env = "SYNCLINE_STATIC_DIR", default_value = "target/dist")]
    pub static_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SYNCLINE_MAX_BODY_BYTES", default_value_t = syncline_protocol::limits::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
}

impl Config {
    /// A configuration for tests: loopback on a free port, the given database, no static files.
    pub fn for_tests(db: PathBuf) -> Config {
        Config {
            bind: "127.0.0.1:0".parse().expect("valid address"),
            db,
            static_dir: PathBuf::from("/nonexistent"),
            max_body_bytes: syncline_protocol::limits::DEFAULT_MAX_BODY_BYTES,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub stats: Arc<Stats>,
}

/// Builds the whole application: `/api/*` and the static web app.
pub fn app(state: AppState, config: &Config) -> Router {
    let index = config.static_dir.join("index.html");
    let static_files = ServeDir::new(&config.static_dir).not_found_service(ServeFile::new(index));
    Router::new()
        .nest("/api", api::router())
        .fallback_service(static_files)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.stats.clone(), stats::record_requests))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// A running server. Dropping it does not stop it; call [`Server::stop`].
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Opens the database, binds `config.bind` and serves in a background task.
    pub async fn start(config: &Config) -> anyhow::Result<Server> {
        let store = Store::open(&config.db)?;
        let listener = TcpListener::bind(config.bind).await?;
        Self::start_on(listener, store, config)
    }

    /// Serves on an already-bound listener (e.g. to restart on the same port).
    pub fn start_on(listener: TcpListener, store: Store, config: &Config) -> anyhow::Result<Server> {
        let addr = listener.local_addr()?;
        if !config.static_dir.join("index.html").exists() {
            tracing::warn!(dir = %config.static_dir.display(), "no index.html in the static directory; only /api is served");
        }
        let state = AppState { store, stats: Arc::new(Stats::default()) };
        let (shutdown, mut rx) = watch::channel(false);
        let app = app(state.clone(), config);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
        });
        Ok(Server { addr, state, shutdown, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.state.stats
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
