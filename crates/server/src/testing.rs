//! Test support: which database the server's own tests (and the browser harness) run on.
//!
//! By default a temporary SQLite file. With `SYNCLINE_TEST_POSTGRES=postgres://user@host:port` (the test command
//! sets it, with a throwaway cluster it starts), every server a test starts gets a fresh PostgreSQL database of
//! its own on that cluster, so the same tests run against both backends.

/// A fresh database URL on the test cluster, or `None` to use SQLite.
pub fn database_url() -> Option<String> {
    let base = std::env::var("SYNCLINE_TEST_POSTGRES").ok().filter(|s| !s.is_empty())?;
    Some(create_database(&base))
}

/// Creates a database with a fresh name on the cluster at `base` (`postgres://user@host:port`); returns its URL.
/// Panics when the cluster cannot be reached: this is for tests.
pub fn create_database(base: &str) -> String {
    let base = base.trim_end_matches('/').to_owned();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = format!("{base}/postgres");
    let create = format!("CREATE DATABASE {name}");
    // The blocking client in a thread of its own: callers may be inside an async runtime.
    let created = std::thread::spawn(move || -> Result<(), postgres::Error> {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)?;
        client.batch_execute(&create)?;
        Ok(())
    });
    match created.join() {
        Ok(Ok(())) => format!("{base}/{name}"),
        other => panic!("could not create a test database on {base}: {other:?}"),
    }
}
