//! SQLite storage of the Kanban domain.
//!
//! One connection behind a mutex, used from `spawn_blocking`: SQLite allows one writer at a time anyway, and
//! every write is a single short transaction, so a pool would add nothing but contention on the file lock.
//! Every write validates, then changes rows, inside one transaction: an error leaves nothing half-written.

use std::path::Path;
use std::sync::{Arc, Mutex};

use fractional_index::FractionalIndex;
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};
use syncline_kanban::limits::{validate_description, validate_title};
use syncline_kanban::{
    Board, BoardId, BoardList, BoardSnapshot, BoardSummary, Card, CardId, ChangeOp, Column, ColumnId, ColumnSummary,
    CreateBoard, CreateCard, CreateColumn, MoveCard, MoveColumn, Rename, StreamId, UpdateCard, UserId, Version,
};
use uuid::Uuid;

use crate::access;
use crate::feed::{Hub, Recorder, record, stream_head};

/// What a store operation can refuse, besides an internal failure.
#[derive(Debug)]
pub enum StoreError {
    NotFound(String),
    /// A member whose role does not allow the write (a non-member gets `NotFound`: a board's existence is not
    /// revealed to those who may not see it).
    Forbidden(String),
    InvalidField {
        field: &'static str,
        message: String,
    },
    /// The write's base version is not the current one; holds the current entity as JSON.
    Conflict {
        message: String,
        current: serde_json::Value,
    },
    Internal(anyhow::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Internal(e.into())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

fn migrations() -> Migrations<'static> {
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
    ])
}

/// Opens a database (`:memory:` for a throwaway one), applies the migrations, and returns it with its log id.
/// [`Store`] wraps this for the server; the simulation drives the same connection synchronously.
pub fn open_connection(path: &Path) -> anyhow::Result<(Connection, Uuid)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrations().to_latest(&mut conn)?;
    // The log's identity: created once with the database, so cursors from another database are refused.
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('log_id', ?1)", [Uuid::new_v4().to_string()])?;
    let log_id: String = conn.query_row("SELECT value FROM meta WHERE key = 'log_id'", [], |r| r.get(0))?;
    Ok((conn, Uuid::parse_str(&log_id)?))
}

/// The database plus the in-process fan-out of what it commits.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    log_id: Uuid,
    hub: Arc<Hub>,
    write_id_ttl_ms: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("log_id", &self.log_id).finish_non_exhaustive()
    }
}

/// Write ids are remembered this long unless configured otherwise (`--write-id-ttl-secs`).
pub const DEFAULT_WRITE_ID_TTL_MS: u64 = 24 * 3600 * 1000;

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let (conn, log_id) = open_connection(path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            log_id,
            hub: Arc::new(Hub::default()),
            write_id_ttl_ms: DEFAULT_WRITE_ID_TTL_MS,
        })
    }

    /// The same store, remembering write ids for `ttl` (writes with older UUIDv7 ids are refused).
    pub fn with_write_id_ttl(mut self, ttl: std::time::Duration) -> Store {
        self.write_id_ttl_ms = ttl.as_millis() as u64;
        self
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

    /// Runs `f` on the connection in a blocking thread, inside one transaction committed on success.
    pub async fn transaction<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Runs `f` with the connection locked, in a blocking thread. Whatever `f` publishes to the hub is
    /// published while the lock is held, so notifications leave in commit order.
    pub async fn with_conn<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the connection itself is still sound because any
            // transaction was rolled back when it dropped, so carry on with the inner value.
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Internal(e.into()))?
    }
}

// ---- row mapping -------------------------------------------------------------------------------------------

fn uuid_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let s: String = row.get(idx)?;
    Uuid::parse_str(&s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into()))
}

fn version_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Version> {
    Ok(row.get::<_, i64>(idx)? as Version)
}

fn board_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Board> {
    Ok(Board { id: uuid_col(row, 0)?, title: row.get(1)?, version: version_col(row, 2)? })
}

fn column_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Column> {
    Ok(Column {
        id: uuid_col(row, 0)?,
        board_id: uuid_col(row, 1)?,
        title: row.get(2)?,
        position: row.get(3)?,
        version: version_col(row, 4)?,
    })
}

fn card_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Card> {
    Ok(Card {
        id: uuid_col(row, 0)?,
        board_id: uuid_col(row, 1)?,
        column_id: uuid_col(row, 2)?,
        title: row.get(3)?,
        description: row.get(4)?,
        position: row.get(5)?,
        version: version_col(row, 6)?,
    })
}

const BOARD_COLS: &str = "id, title, version";
const COLUMN_COLS: &str = "id, board_id, title, position, version";
const CARD_COLS: &str = "id, board_id, column_id, title, description, position, version";

// ---- reads -------------------------------------------------------------------------------------------------

/// The boards `user` is a member of, as of their `boards` stream's cursor.
pub fn list_boards(tx: &Connection, user: UserId, log_id: Uuid) -> StoreResult<BoardList> {
    let boards = access::boards_of(tx, user)?;
    Ok(BoardList { boards, log_id, cursor: stream_head(tx, access::user_stream(user))? })
}

pub fn get_board(tx: &Connection, id: BoardId) -> StoreResult<Board> {
    tx.query_row(&format!("SELECT {BOARD_COLS} FROM boards WHERE id = ?1"), [id.to_string()], board_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no board with id {id}")))
}

pub fn get_column(tx: &Connection, id: ColumnId) -> StoreResult<Column> {
    tx.query_row(&format!("SELECT {COLUMN_COLS} FROM columns WHERE id = ?1"), [id.to_string()], column_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no column with id {id}")))
}

pub fn get_card(tx: &Connection, id: CardId) -> StoreResult<Card> {
    tx.query_row(&format!("SELECT {CARD_COLS} FROM cards WHERE id = ?1"), [id.to_string()], card_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no card with id {id}")))
}

pub fn board_snapshot(tx: &Connection, id: BoardId, log_id: Uuid) -> StoreResult<BoardSnapshot> {
    let board = get_board(tx, id)?;
    let columns = tx
        .prepare_cached(&format!("SELECT {COLUMN_COLS} FROM columns WHERE board_id = ?1 ORDER BY position, id"))?
        .query_map([id.to_string()], column_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut cards = tx
        .prepare_cached(&format!("SELECT {CARD_COLS} FROM cards WHERE board_id = ?1 ORDER BY position, id"))?
        .query_map([id.to_string()], card_row)?
        .collect::<Result<Vec<_>, _>>()?;
    // Group by column in column order, keeping each column's card order.
    let column_index = |c: &Card| columns.iter().position(|col| col.id == c.column_id).unwrap_or(usize::MAX);
    cards.sort_by_key(|c| column_index(c));
    let members = access::members_of(tx, id)?;
    let cursor = stream_head(tx, StreamId::Board(id))?;
    Ok(BoardSnapshot { board, columns, cards, members, log_id, cursor })
}

pub fn board_summary(tx: &Connection, id: BoardId) -> StoreResult<BoardSummary> {
    get_board(tx, id)?;
    let mut stmt = tx.prepare_cached(
        "SELECT c.id, c.title, COUNT(k.id) FROM columns c LEFT JOIN cards k ON k.column_id = c.id
         WHERE c.board_id = ?1 GROUP BY c.id ORDER BY c.position, c.id",
    )?;
    let columns = stmt
        .query_map([id.to_string()], |r| {
            Ok(ColumnSummary { column_id: uuid_col(r, 0)?, title: r.get(1)?, cards: r.get::<_, i64>(2)? as u64 })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let described: i64 =
        tx.query_row("SELECT COUNT(*) FROM cards WHERE board_id = ?1 AND description != ''", [id.to_string()], |r| {
            r.get(0)
        })?;
    Ok(BoardSummary {
        board_id: id,
        total_cards: columns.iter().map(|c| c.cards).sum(),
        columns,
        described_cards: described as u64,
        cursor: stream_head(tx, StreamId::Board(id))?,
    })
}

// ---- helpers for writes ------------------------------------------------------------------------------------

fn check_base_version(
    kind: &str,
    current: Version,
    base: Option<Version>,
    current_json: impl FnOnce() -> serde_json::Value,
) -> StoreResult<()> {
    match base {
        Some(base) if base != current => Err(StoreError::Conflict {
            message: format!("{kind} is at version {current}, the write was based on version {base}"),
            current: current_json(),
        }),
        _ => Ok(()),
    }
}

fn title(value: &str) -> StoreResult<String> {
    validate_title(value).map_err(|message| StoreError::InvalidField { field: "title", message })
}

fn parse_key(key: &str) -> StoreResult<FractionalIndex> {
    FractionalIndex::from_string(key)
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("corrupt position key {key:?}: {e:?}")))
}

/// A key strictly between `before` and `after` (either may be open).
fn key_between(before: Option<&str>, after: Option<&str>) -> StoreResult<String> {
    let before = before.map(parse_key).transpose()?;
    let after = after.map(parse_key).transpose()?;
    let key = match (&before, &after) {
        (None, None) => FractionalIndex::default(),
        (Some(b), None) => FractionalIndex::new_after(b),
        (None, Some(a)) => FractionalIndex::new_before(a),
        (Some(b), Some(a)) => FractionalIndex::new_between(b, a)
            .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("no key between equal positions {b:?} and {a:?}")))?,
    };
    Ok(key.to_string())
}

/// The key for an item placed between `lo` and `hi` (either may be open), given as `(id, position)`.
fn key_for(lo: Option<&(Uuid, String)>, hi: Option<&(Uuid, String)>) -> StoreResult<String> {
    match (lo, hi) {
        // Equal neighbours (possible after concurrent inserts at one spot) have no key between them; place
        // after the lower one's key then, which keeps the (position, id) order total.
        (Some(l), Some(h)) if l.1 == h.1 => key_between(Some(&l.1), None),
        _ => key_between(lo.map(|l| l.1.as_str()), hi.map(|h| h.1.as_str())),
    }
}

/// The ordered children of one parent: cards of a column, or columns of a board. Neighbours are found with
/// indexed queries, so placing an item costs the same in a column of 10 or 10,000 cards.
#[derive(Clone, Copy)]
enum Siblings {
    CardsOf(ColumnId),
    ColumnsOf(BoardId),
}

impl Siblings {
    fn table_and_parent(self) -> (&'static str, &'static str, Uuid) {
        match self {
            Siblings::CardsOf(c) => ("cards", "column_id", c),
            Siblings::ColumnsOf(b) => ("columns", "board_id", b),
        }
    }

    fn query(
        self,
        tx: &Connection,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> StoreResult<Option<(Uuid, String)>> {
        let (table, parent, _) = self.table_and_parent();
        let sql = format!("SELECT id, position FROM {table} WHERE {parent} = ?1 {filter} LIMIT 1");
        Ok(tx.prepare_cached(&sql)?.query_row(params, |r| Ok((uuid_col(r, 0)?, r.get(1)?))).optional()?)
    }

    /// Key after the last item.
    fn last_key(self, tx: &Connection) -> StoreResult<String> {
        let (_, _, parent) = self.table_and_parent();
        let last = self.query(tx, "ORDER BY position DESC, id DESC", &[&parent.to_string()])?;
        key_for(last.as_ref(), None)
    }

    /// Key for `moving` placed right after `after` (first when `None`); `None` when `after` is not a sibling.
    fn key_after(self, tx: &Connection, moving: Uuid, after: Option<Uuid>) -> StoreResult<Option<String>> {
        let (_, _, parent) = self.table_and_parent();
        let (parent, moving) = (parent.to_string(), moving.to_string());
        let lo = match after {
            None => None,
            Some(after) => match self.query(tx, "AND id = ?2", &[&parent, &after.to_string()])? {
                None => return Ok(None),
                found => found,
            },
        };
        let hi = match &lo {
            None => self.query(tx, "AND id != ?2 ORDER BY position, id", &[&parent, &moving])?,
            Some((lo_id, lo_pos)) => self.query(
                tx,
                "AND id != ?2 AND (position, id) > (?3, ?4) ORDER BY position, id",
                &[&parent, &moving, lo_pos, &lo_id.to_string()],
            )?,
        };
        key_for(lo.as_ref(), hi.as_ref()).map(Some)
    }

    fn ids(self, tx: &Connection) -> StoreResult<Vec<Uuid>> {
        let (table, parent_col, parent) = self.table_and_parent();
        let sql = format!("SELECT id FROM {table} WHERE {parent_col} = ?1 ORDER BY position, id");
        let mut stmt = tx.prepare_cached(&sql)?;
        let ids = stmt.query_map([parent.to_string()], |r| uuid_col(r, 0))?.collect::<Result<_, _>>()?;
        Ok(ids)
    }
}

fn new_id(requested: Option<Uuid>, tx: &Connection, table: &str) -> StoreResult<Uuid> {
    match requested {
        None => Ok(Uuid::now_v7()),
        Some(id) => {
            let taken: bool =
                tx.query_row(&format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE id = ?1)"), [id.to_string()], |r| {
                    r.get(0)
                })?;
            if taken {
                Err(StoreError::InvalidField { field: "id", message: format!("id {id} is already in use") })
            } else {
                Ok(id)
            }
        }
    }
}

// ---- writes ------------------------------------------------------------------------------------------------
//
// Each write validates, changes rows and records its changes in the log through `rec`, all on the caller's
// transaction. Upserts record the entity as committed, so clients can apply them without a refetch.

fn board_changed(tx: &Connection, rec: &mut Recorder, board: &Board) -> StoreResult<()> {
    record(tx, rec, StreamId::Board(board.id), ChangeOp::BoardUpserted { board: board.clone() })
}

fn column_changed(tx: &Connection, rec: &mut Recorder, column: &Column) -> StoreResult<()> {
    record(tx, rec, StreamId::Board(column.board_id), ChangeOp::ColumnUpserted { column: column.clone() })
}

fn card_changed(tx: &Connection, rec: &mut Recorder, card: &Card) -> StoreResult<()> {
    record(tx, rec, StreamId::Board(card.board_id), ChangeOp::CardUpserted { card: card.clone() })
}

/// Creates a board; `creator` becomes its owner.
pub fn create_board(tx: &Connection, rec: &mut Recorder, creator: UserId, req: CreateBoard) -> StoreResult<Board> {
    let title = title(&req.title)?;
    let id = new_id(req.id, tx, "boards")?;
    tx.execute("INSERT INTO boards (id, title, version) VALUES (?1, ?2, 1)", params![id.to_string(), title])?;
    let board = get_board(tx, id)?;
    board_changed(tx, rec, &board)?;
    access::board_created(tx, rec, id, creator)?;
    Ok(board)
}

pub fn rename_board(tx: &Connection, rec: &mut Recorder, id: BoardId, req: Rename) -> StoreResult<Board> {
    let current = get_board(tx, id)?;
    check_base_version("board", current.version, req.base_version, || serde_json::json!(current))?;
    let title = title(&req.title)?;
    tx.execute("UPDATE boards SET title = ?2, version = version + 1 WHERE id = ?1", params![id.to_string(), title])?;
    let board = get_board(tx, id)?;
    board_changed(tx, rec, &board)?;
    access::board_renamed(tx, rec, &board)?;
    Ok(board)
}

pub fn delete_board(
    tx: &Connection,
    rec: &mut Recorder,
    id: BoardId,
    base_version: Option<Version>,
) -> StoreResult<()> {
    let current = get_board(tx, id)?;
    check_base_version("board", current.version, base_version, || serde_json::json!(current))?;
    access::board_deleting(tx, rec, id)?;
    tx.execute("DELETE FROM boards WHERE id = ?1", [id.to_string()])?;
    record(tx, rec, StreamId::Board(id), ChangeOp::BoardDeleted { id })
}

pub fn create_column(tx: &Connection, rec: &mut Recorder, board: BoardId, req: CreateColumn) -> StoreResult<Column> {
    get_board(tx, board)?;
    let title = title(&req.title)?;
    let id = new_id(req.id, tx, "columns")?;
    let position = Siblings::ColumnsOf(board).last_key(tx)?;
    tx.execute(
        "INSERT INTO columns (id, board_id, title, position, version) VALUES (?1, ?2, ?3, ?4, 1)",
        params![id.to_string(), board.to_string(), title, position],
    )?;
    let column = get_column(tx, id)?;
    column_changed(tx, rec, &column)?;
    Ok(column)
}

pub fn rename_column(tx: &Connection, rec: &mut Recorder, id: ColumnId, req: Rename) -> StoreResult<Column> {
    let current = get_column(tx, id)?;
    check_base_version("column", current.version, req.base_version, || serde_json::json!(current))?;
    let title = title(&req.title)?;
    tx.execute("UPDATE columns SET title = ?2, version = version + 1 WHERE id = ?1", params![id.to_string(), title])?;
    let column = get_column(tx, id)?;
    column_changed(tx, rec, &column)?;
    Ok(column)
}

pub fn move_column(tx: &Connection, rec: &mut Recorder, id: ColumnId, req: MoveColumn) -> StoreResult<Column> {
    let current = get_column(tx, id)?;
    check_base_version("column", current.version, req.base_version, || serde_json::json!(current))?;
    if req.after_column_id == Some(id) {
        return Err(StoreError::InvalidField {
            field: "after_column_id",
            message: "a column cannot be placed after itself".into(),
        });
    }
    let position = Siblings::ColumnsOf(current.board_id).key_after(tx, id, req.after_column_id)?.ok_or_else(|| {
        StoreError::InvalidField {
            field: "after_column_id",
            message: format!("column {} is not on board {}", req.after_column_id.unwrap_or_default(), current.board_id),
        }
    })?;
    tx.execute(
        "UPDATE columns SET position = ?2, version = version + 1 WHERE id = ?1",
        params![id.to_string(), position],
    )?;
    let column = get_column(tx, id)?;
    column_changed(tx, rec, &column)?;
    Ok(column)
}

pub fn delete_column(
    tx: &Connection,
    rec: &mut Recorder,
    id: ColumnId,
    base_version: Option<Version>,
) -> StoreResult<()> {
    let current = get_column(tx, id)?;
    check_base_version("column", current.version, base_version, || serde_json::json!(current))?;
    let board_id = current.board_id;
    // Each card deleted with the column is its own change, so a client applies them one by one.
    for card in Siblings::CardsOf(id).ids(tx)? {
        record(tx, rec, StreamId::Board(board_id), ChangeOp::CardDeleted { id: card, board_id })?;
    }
    tx.execute("DELETE FROM columns WHERE id = ?1", [id.to_string()])?;
    record(tx, rec, StreamId::Board(board_id), ChangeOp::ColumnDeleted { id, board_id })
}

pub fn create_card(tx: &Connection, rec: &mut Recorder, column: ColumnId, req: CreateCard) -> StoreResult<Card> {
    let col = get_column(tx, column)?;
    let title = title(&req.title)?;
    let description = validate_description(&req.description)
        .map_err(|message| StoreError::InvalidField { field: "description", message })?;
    let id = new_id(req.id, tx, "cards")?;
    let position = Siblings::CardsOf(column).last_key(tx)?;
    tx.execute(
        "INSERT INTO cards (id, board_id, column_id, title, description, position, version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
        params![id.to_string(), col.board_id.to_string(), column.to_string(), title, description, position],
    )?;
    let card = get_card(tx, id)?;
    card_changed(tx, rec, &card)?;
    Ok(card)
}

pub fn update_card(tx: &Connection, rec: &mut Recorder, id: CardId, req: UpdateCard) -> StoreResult<Card> {
    let current = get_card(tx, id)?;
    check_base_version("card", current.version, req.base_version, || serde_json::json!(current))?;
    if req.title.is_none() && req.description.is_none() {
        return Err(StoreError::InvalidField {
            field: "title",
            message: "nothing to change: give a title, a description or both".into(),
        });
    }
    let title = req.title.as_deref().map(title).transpose()?.unwrap_or(current.title);
    let description = req
        .description
        .as_deref()
        .map(validate_description)
        .transpose()
        .map_err(|message| StoreError::InvalidField { field: "description", message })?
        .unwrap_or(current.description);
    tx.execute(
        "UPDATE cards SET title = ?2, description = ?3, version = version + 1 WHERE id = ?1",
        params![id.to_string(), title, description],
    )?;
    let card = get_card(tx, id)?;
    card_changed(tx, rec, &card)?;
    Ok(card)
}

pub fn move_card(tx: &Connection, rec: &mut Recorder, id: CardId, req: MoveCard) -> StoreResult<Card> {
    let current = get_card(tx, id)?;
    check_base_version("card", current.version, req.base_version, || serde_json::json!(current))?;
    let target = match get_column(tx, req.column_id) {
        Ok(c) => c,
        Err(StoreError::NotFound(message)) => {
            return Err(StoreError::InvalidField { field: "column_id", message });
        }
        Err(e) => return Err(e),
    };
    if target.board_id != current.board_id {
        return Err(StoreError::InvalidField {
            field: "column_id",
            message: format!("column {} is on another board; cards move only within their board", target.id),
        });
    }
    if req.after_card_id == Some(id) {
        return Err(StoreError::InvalidField {
            field: "after_card_id",
            message: "a card cannot be placed after itself".into(),
        });
    }
    let position =
        Siblings::CardsOf(target.id).key_after(tx, id, req.after_card_id)?.ok_or_else(|| StoreError::InvalidField {
            field: "after_card_id",
            message: format!("card {} is not in column {}", req.after_card_id.unwrap_or_default(), target.id),
        })?;
    tx.execute(
        "UPDATE cards SET column_id = ?2, position = ?3, version = version + 1 WHERE id = ?1",
        params![id.to_string(), target.id.to_string(), position],
    )?;
    let card = get_card(tx, id)?;
    card_changed(tx, rec, &card)?;
    Ok(card)
}

pub fn delete_card(tx: &Connection, rec: &mut Recorder, id: CardId, base_version: Option<Version>) -> StoreResult<()> {
    let current = get_card(tx, id)?;
    check_base_version("card", current.version, base_version, || serde_json::json!(current))?;
    tx.execute("DELETE FROM cards WHERE id = ?1", [id.to_string()])?;
    record(tx, rec, StreamId::Board(current.board_id), ChangeOp::CardDeleted { id, board_id: current.board_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_keys_sort_as_strings_like_the_indexes_they_encode() {
        let mut keys = vec![key_between(None, None).unwrap()];
        // Insert repeatedly at the front, the back and in the middle; string order must follow.
        for i in 0..200 {
            let k = match i % 3 {
                0 => key_between(None, Some(&keys[0])).unwrap(),
                1 => key_between(Some(keys.last().unwrap()), None).unwrap(),
                _ => {
                    let m = keys.len() / 2;
                    key_between(Some(&keys[m - 1]), Some(&keys[m])).unwrap()
                }
            };
            keys.push(k);
            keys.sort();
        }
        let mut dedup = keys.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), keys.len(), "keys must be distinct");
        for w in keys.windows(2) {
            assert!(parse_key(&w[0]).unwrap() < parse_key(&w[1]).unwrap());
        }
    }

    #[test]
    fn keys_fall_between_neighbours_even_equal_ones() {
        let a = key_between(None, None).unwrap();
        let b = key_between(Some(&a), None).unwrap();
        let (la, lb) = ((Uuid::now_v7(), a.clone()), (Uuid::now_v7(), b.clone()));
        let first = key_for(None, Some(&la)).unwrap();
        let mid = key_for(Some(&la), Some(&lb)).unwrap();
        let last = key_for(Some(&lb), None).unwrap();
        assert!(first < a && a < mid && mid < b && b < last);
        let twin = (Uuid::now_v7(), a.clone());
        assert!(key_for(Some(&la), Some(&twin)).unwrap() > a, "equal neighbours still get a key");
    }
}
