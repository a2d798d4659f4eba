//! The `syncline-server` binary: see `syncline_server::cli`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    syncline_server::cli::serve().await
}
