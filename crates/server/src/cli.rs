//! The server as a program: logging, configuration from flags and environment, graceful shutdown on SIGINT
//! or SIGTERM. The `syncline-server` binary is this; tests that need a real process to kill (the chaos test)
//! run it too.

use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::{Config, Server};

/// Parses the command line, serves until SIGINT/SIGTERM, then stops gracefully (open feeds get 1001).
pub async fn serve() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let mut config = Config::parse();
    if let Some(crate::Command::Backup { to }) = &config.command {
        if config.database_url.is_some() {
            anyhow::bail!("backup copies the SQLite file; for PostgreSQL use pg_dump");
        }
        crate::schema::backup(&config.db, to)?;
        println!("backed up {} to {}", config.db.display(), to.display());
        return Ok(());
    }
    // Every connection is a descriptor: raise the soft limit to the hard one (a default of 1,024 would be the
    // real connection cap).
    if let Some(limit) = crate::serve::raise_descriptor_limit() {
        // Keep the cap under the limit (with room for the database and log files), so that a flood is refused
        // with a clear 503 rather than by failing accepts.
        let fits = (limit as usize).saturating_sub(64).max(1);
        if config.max_connections > fits {
            config.max_connections = fits;
        }
        tracing::info!(open_files = limit, max_connections = config.max_connections, "open-file limit raised");
    }
    let server = Server::start(&config).await?;
    match &config.database_url {
        Some(_) => tracing::info!("PostgreSQL database ready"),
        None => tracing::info!(db = %config.db.display(), "database ready"),
    }
    println!("syncline is serving on {}", server.url());
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
