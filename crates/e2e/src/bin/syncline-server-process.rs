//! The syncline server as its own process, for tests that kill it with SIGKILL (the chaos test): the same
//! program as the `syncline-server` binary, built with the test crate so its path is known to the tests.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    syncline_server::cli::serve().await
}
