//! Opening the database, its schema, and the [`Store`] handle the server runs every transaction through.
//!
//! SQLite's schema grows by `rusqlite_migration` steps (the file records its `user_version`). PostgreSQL's is the
//! same tables and columns — text for ids and strings, `BIGINT` for numbers, `COLLATE "C"` where the order is
//! bytewise (positions) — created by its own list of steps in `schema_version`, under an advisory lock so
//! instances starting together migrate once.

use std::path::Path;
use std::sync::{Arc, Mutex};

use r2d2_postgres::PostgresConnectionManager;
use r2d2_postgres::postgres::NoTls;
use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};
use uuid::Uuid;

use crate::args;
use crate::db::{Conn, Dialect};
use crate::feed::Hub;
use crate::store::{StoreError, StoreResult};

/// SQLite's migrations, in order (`user_version` records how far a file is).
fn sqlite_migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE boards (
            id TEXT PRIMARY KEY NOT NULL,
            title TEXT NOT NULL,
            version INTEGER NOT NULL
        );
        CREATE TABLE columns (
            id TEXT PRIMARY KEY NOT NULL,
            board_id TEXT NOT NULL REFERENCES boards(id) ON DELETE CASCADE,
            title TEXT NOT NULL,
            position TEXT NOT NULL,
            version INTEGER NOT NULL
        );
        CREATE INDEX columns_by_board ON columns(board_id, position);
        CREATE TABLE cards (
            id TEXT PRIMARY KEY NOT NULL,
            board_id TEXT NOT NULL REFERENCES boards(id) ON DELETE CASCADE,
            column_id TEXT NOT NULL REFERENCES columns(id) ON DELETE CASCADE,
            title TEXT NOT NULL,
            description TEXT NOT NULL,
            position TEXT NOT NULL,
            version INTEGER NOT NULL
        );
        CREATE INDEX cards_by_column ON cards(column_id, position);
        CREATE INDEX cards_by_board ON cards(board_id);",
        ),
        // The change log. `streams.head` is the last cursor handed out in a stream; a writer bumps it under
        // the row's lock, so a stream's cursors commit in order. `writes` remembers the outcome of every
        // write that carried an idempotency key.
        M::up(
            "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
        CREATE TABLE streams (stream TEXT PRIMARY KEY NOT NULL, head INTEGER NOT NULL);
        CREATE TABLE changes (
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at_ms INTEGER NOT NULL,
            write_id TEXT,
            body TEXT NOT NULL,
            PRIMARY KEY (stream, seq)
        ) WITHOUT ROWID;
        CREATE INDEX changes_by_age ON changes(at_ms);
        CREATE TABLE writes (
            write_id TEXT PRIMARY KEY NOT NULL,
            at_ms INTEGER NOT NULL,
            request TEXT NOT NULL,
            status INTEGER NOT NULL,
            body TEXT NOT NULL
        );
        CREATE INDEX writes_by_age ON writes(at_ms);",
        ),
        // Where each outcome's entity stands in its streams (JSON `[{stream, cursor}]`), so a replayed outcome
        // tells the client whether its copy already has it. `at_ms` is from then on the time the record is kept
        // from (see `writes::WriteContext`).
        M::up("ALTER TABLE writes ADD COLUMN positions TEXT NOT NULL DEFAULT '[]';"),
        // Accounts, memberships and sessions (`access.rs`, `auth.rs`). A write's outcome is kept for its author
        // only (`writes.user_id`): another account replaying the id learns nothing.
        M::up(
            "CREATE TABLE users (
            id TEXT PRIMARY KEY NOT NULL,
            username TEXT NOT NULL,
            username_key TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            created_at INTEGER NOT NULL
        );
        CREATE TABLE members (
            board_id TEXT NOT NULL REFERENCES boards(id) ON DELETE CASCADE,
            user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'owner')),
            version INTEGER NOT NULL,
            PRIMARY KEY (board_id, user_id)
        ) WITHOUT ROWID;
        CREATE INDEX members_by_user ON members(user_id);
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY NOT NULL,
            user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
            data TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        );
        CREATE INDEX sessions_by_user ON sessions(user_id);
        CREATE INDEX sessions_by_expiry ON sessions(expires_at);
        ALTER TABLE writes ADD COLUMN user_id TEXT;",
        ),
        // Boards keep their creation order without `rowid` (which PostgreSQL has not).
        M::up(
            "ALTER TABLE boards ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
        UPDATE boards SET created_ms = rowid;",
        ),
    ])
}

/// PostgreSQL's schema steps, in order; step `n` runs once, recorded in `schema_version`.
const POSTGRES_STEPS: &[&str] = &["CREATE TABLE boards (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        version BIGINT NOT NULL,
        created_ms BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE columns (
        id TEXT PRIMARY KEY,
        board_id TEXT NOT NULL REFERENCES boards(id) ON DELETE CASCADE,
        title TEXT NOT NULL,
        position TEXT COLLATE \"C\" NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE INDEX columns_by_board ON columns(board_id, position, id);
    CREATE TABLE cards (
        id TEXT PRIMARY KEY,
        board_id TEXT NOT NULL REFERENCES boards(id) ON DELETE CASCADE,
        column_id TEXT NOT NULL REFERENCES columns(id) ON DELETE CASCADE,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        position TEXT COLLATE \"C\" NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE INDEX cards_by_column ON cards(column_id, position, id);
    CREATE INDEX cards_by_board ON cards(board_id);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE streams (stream TEXT PRIMARY KEY, head BIGINT NOT NULL);
    CREATE TABLE changes (
        stream TEXT NOT NULL,
        seq BIGINT NOT NULL,
        at_ms BIGINT NOT NULL,
        write_id TEXT,
        body TEXT NOT NULL,
        PRIMARY KEY (stream, seq)
    );
    CREATE INDEX changes_by_age ON changes(at_ms);
    CREATE TABLE writes (
        write_id TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        request TEXT NOT NULL,
        status BIGINT NOT NULL,
        body TEXT NOT NULL,
        positions TEXT NOT NULL DEFAULT '[]',
        user_id TEXT
    );
    CREATE INDEX writes_by_age ON writes(at_ms);
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        username_key TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE members (
        board_id TEXT NOT NULL REFERENCES boards(id) ON DELETE CASCADE,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'owner')),
        version BIGINT NOT NULL,
        PRIMARY KEY (board_id, user_id)
    );
    CREATE INDEX members_by_user ON members(user_id);
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
        data TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX sessions_by_user ON sessions(user_id);
    CREATE INDEX sessions_by_expiry ON sessions(expires_at);"];

/// How hard SQLite syncs commits to disk (`--synchronous`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Synchronous {
    /// In WAL mode: a commit survives the process being killed, not necessarily a power loss or an OS crash (the
    /// last commits may roll back; the database stays consistent). Fast.
    #[default]
    Normal,
    /// Every commit is synced to disk before it is acknowledged: survives a power loss too. Slower writes.
    Full,
}

/// Opens a SQLite database (`:memory:` for a throwaway one), applies the migrations, and returns it with its log
/// id. [`Store`] wraps this for the server; the simulation drives the same connection synchronously.
pub fn open_connection(path: &Path) -> anyhow::Result<(Connection, Uuid)> {
    open_connection_with(path, Synchronous::Normal)
}

pub fn open_connection_with(path: &Path, synchronous: Synchronous) -> anyhow::Result<(Connection, Uuid)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let level = match synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    sqlite_migrations().to_latest(&mut conn)?;
    let log_id = log_id(&conn).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((conn, log_id))
}

/// The log's identity: made once with the database, so cursors from another database are refused.
fn log_id(conn: &dyn Conn) -> StoreResult<Uuid> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('log_id', ?1) ON CONFLICT (key) DO NOTHING",
        args![Uuid::new_v4()],
    )?;
    conn.query_one("SELECT value FROM meta WHERE key = 'log_id'", &[])?.uuid(0)
}

type PgPool = r2d2::Pool<crate::db::PgManager>;

/// The pool, dropped in a thread of its own: closing a `postgres` client blocks, which must not happen on an
/// async worker (the last handle may go with the server's state, on the runtime).
struct PoolHandle(Option<PgPool>);

impl Drop for PoolHandle {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            std::thread::spawn(move || drop(pool));
        }
    }
}

impl PoolHandle {
    fn pool(&self) -> &PgPool {
        self.0.as_ref().expect("present until dropped")
    }
}

/// Read-only SQLite connections beside the one writer: in WAL mode they read a consistent snapshot while it
/// writes, so a big snapshot read never holds up a write (nor a write a read).
struct Readers {
    /// `None` for an in-memory database (a second connection would see another database): reads use the writer.
    path: Option<std::path::PathBuf>,
    idle: Mutex<Vec<Connection>>,
}

/// Idle read connections kept (more are opened under load, and closed when returned past this).
const IDLE_READERS: usize = 8;

impl Readers {
    fn take(&self) -> Option<Connection> {
        let path = self.path.as_ref()?;
        if let Some(conn) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Some(conn);
        }
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags).ok()?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).ok()?;
        Some(conn)
    }

    fn give(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Mutex<Connection>>, Arc<Readers>),
    /// The pool, and the URL (for the tail task's own listening connection).
    Postgres(Arc<PoolHandle>, Arc<str>),
}

/// The database plus the in-process fan-out of what it commits.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    log_id: Uuid,
    hub: Arc<Hub>,
    write_id_ttl_ms: u64,
    quotas: crate::writes::Quotas,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("log_id", &self.log_id).field("dialect", &self.dialect()).finish_non_exhaustive()
    }
}

/// Write ids are remembered this long unless configured otherwise (`--write-id-ttl-secs`).
pub const DEFAULT_WRITE_ID_TTL_MS: u64 = 24 * 3600 * 1000;

/// Connections per instance to PostgreSQL.
const POOL_SIZE: u32 = 16;

impl Store {
    /// Opens (creating if needed) the SQLite file and brings its schema up to date.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        Store::open_with(path, Synchronous::Normal)
    }

    /// [`open`](Store::open) with a chosen durability.
    pub fn open_with(path: &Path, synchronous: Synchronous) -> anyhow::Result<Store> {
        let (conn, log_id) = open_connection_with(path, synchronous)?;
        let in_memory = path.as_os_str() == ":memory:" || path.as_os_str().is_empty();
        let readers = Readers { path: (!in_memory).then(|| path.to_path_buf()), idle: Mutex::new(Vec::new()) };
        Ok(Store::with_backend(Backend::Sqlite(Arc::new(Mutex::new(conn)), Arc::new(readers)), log_id))
    }

    /// Connects to PostgreSQL (`postgres://user@host:port/db`), brings its schema up to date, and pools
    /// connections. Blocking: call it before the runtime serves, or from a blocking thread.
    pub fn connect(url: &str) -> anyhow::Result<Store> {
        let config: postgres::Config = url.parse()?;
        let manager = crate::db::PgManager(PostgresConnectionManager::new(config, NoTls));
        let pool = r2d2::Pool::builder().max_size(POOL_SIZE).build(manager)?;
        let mut client = pool.get()?;
        let log_id = {
            let conn = client.transaction().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            // One instance migrates at a time; the others wait here, then find nothing left to do.
            conn.query("SELECT pg_advisory_xact_lock(7263533)", &[]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            migrate_postgres(&conn).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let id = log_id(&conn).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            conn.commit().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            id
        };
        drop(client);
        Ok(Store::with_backend(Backend::Postgres(Arc::new(PoolHandle(Some(pool))), Arc::from(url)), log_id))
    }

    fn with_backend(backend: Backend, log_id: Uuid) -> Store {
        Store {
            backend,
            log_id,
            hub: Arc::new(Hub::default()),
            write_id_ttl_ms: DEFAULT_WRITE_ID_TTL_MS,
            quotas: crate::writes::Quotas::default(),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(..) => Dialect::Sqlite,
            Backend::Postgres(..) => Dialect::Postgres,
        }
    }

    /// The PostgreSQL URL, when that is the backend.
    pub fn postgres_url(&self) -> Option<String> {
        match &self.backend {
            Backend::Postgres(_, url) => Some(url.to_string()),
            Backend::Sqlite(..) => None,
        }
    }

    /// The same store, remembering write ids for `ttl` (writes with older UUIDv7 ids are refused).
    pub fn with_write_id_ttl(mut self, ttl: std::time::Duration) -> Store {
        self.write_id_ttl_ms = ttl.as_millis() as u64;
        self
    }

    /// The same store, with these creation quotas.
    pub fn with_quotas(mut self, quotas: crate::writes::Quotas) -> Store {
        self.quotas = quotas;
        self
    }

    pub fn quotas(&self) -> crate::writes::Quotas {
        self.quotas
    }

    pub fn write_id_ttl_ms(&self) -> u64 {
        self.write_id_ttl_ms
    }

    /// Identifies this database's change log.
    pub fn log_id(&self) -> Uuid {
        self.log_id
    }

    /// Live notifications of committed changes.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Runs `f` in one transaction in a blocking thread, committed on success, rolled back otherwise.
    pub async fn transaction<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Conn) -> StoreResult<T> + Send + 'static,
    {
        self.write(move |tx| Ok((f(tx)?, Vec::new()))).await
    }

    /// Runs a read in one transaction (a consistent snapshot) in a blocking thread: on SQLite on a read-only
    /// connection beside the writer, so it neither waits for writes nor holds them up; on PostgreSQL on the pool.
    /// Nothing it does is committed.
    pub async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Conn) -> StoreResult<T> + Send + 'static,
    {
        let Backend::Sqlite(writer, readers) = &self.backend else {
            return self.transaction(f).await;
        };
        let (writer, readers) = (writer.clone(), readers.clone());
        tokio::task::spawn_blocking(move || match readers.take() {
            Some(mut conn) => {
                let out = {
                    let tx = conn.transaction()?;
                    f(&*tx)
                    // dropped: rolled back (it changed nothing)
                };
                readers.give(conn);
                out
            }
            // In memory (or the file could not be opened again): the writer's connection.
            None => {
                let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
                let tx = conn.transaction()?;
                f(&*tx)
            }
        })
        .await
        .map_err(|e| StoreError::Internal(e.into()))?
    }

    /// Runs a write in one transaction, then publishes the changes it returns to this instance's hub once it
    /// committed. On SQLite the connection lock is held until they are published, so notifications leave in
    /// commit order; on PostgreSQL writers commit concurrently and a reader that sees a batch out of order fills
    /// the gap from the log (`session.rs`).
    pub async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Conn) -> StoreResult<(T, Vec<syncline_kanban::Change>)> + Send + 'static,
    {
        let backend = self.backend.clone();
        let hub = self.hub.clone();
        tokio::task::spawn_blocking(move || match backend {
            Backend::Sqlite(conn, _) => {
                // A panic while holding the lock poisons it; the connection itself is still sound because any
                // transaction was rolled back when it dropped, so carry on with the inner value.
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                let tx = conn.transaction()?;
                let (out, changes) = f(&*tx)?;
                tx.commit()?;
                hub.publish(&changes);
                Ok(out)
            }
            Backend::Postgres(pool, _) => {
                let mut client = pool.pool().get().map_err(|e| StoreError::Internal(e.into()))?;
                let conn = client.transaction()?;
                let (out, changes) = f(&conn)?;
                conn.commit()?;
                hub.publish(&changes);
                if !changes.is_empty() {
                    // A hint to the other instances, after the commit and outside the transaction (NOTIFY inside it
                    // would serialise every writer at commit). Lost, it costs them a tail interval, nothing more.
                    let _ = client.batch_execute(&format!("NOTIFY {}", crate::tail::CHANNEL));
                }
                Ok(out)
            }
        })
        .await
        .map_err(|e| StoreError::Internal(e.into()))?
    }
}

fn migrate_postgres(conn: &dyn Conn) -> StoreResult<()> {
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)", &[])?;
    let done = conn.query_opt("SELECT version FROM schema_version", &[])?.map(|r| r.i64(0)).transpose()?;
    let done = match done {
        Some(v) => v as usize,
        None => {
            conn.execute("INSERT INTO schema_version (version) VALUES (0)", &[])?;
            0
        }
    };
    for (n, step) in POSTGRES_STEPS.iter().enumerate().skip(done) {
        for statement in step.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            conn.execute(statement, &[])?;
        }
        conn.execute("UPDATE schema_version SET version = ?1", args![(n + 1) as i64])?;
    }
    Ok(())
}

/// Copies the SQLite database at `db` into a new file `to`, consistently, while the server may be writing to it:
/// SQLite's online backup in one step, under a read transaction (in WAL mode that never blocks the writer).
/// Refuses to overwrite an existing file.
pub fn backup(db: &Path, to: &Path) -> anyhow::Result<()> {
    use rusqlite::OpenFlags;
    if to.exists() {
        anyhow::bail!("{} exists; choose a new file", to.display());
    }
    let source = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    source.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut target = Connection::open(to)?;
    {
        let backup = rusqlite::backup::Backup::new(&source, &mut target)?;
        // All pages in one step: one consistent snapshot.
        backup.step(-1)?;
    }
    let check: String = target.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        anyhow::bail!("the copy failed its integrity check: {check}");
    }
    Ok(())
}
