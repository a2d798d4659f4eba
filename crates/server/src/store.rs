//! SQLite storage of the Kanban domain.
//!
//! One connection behind a mutex, used from `spawn_blocking`: SQLite allows one writer at a time anyway, and
//! every write is a single short transaction, so a pool would add nothing but contention on the file lock.
//! Every write validates, then changes rows, inside one transaction: an error leaves nothing half-written.

use std::path::Path;
use std::sync::{Arc, Mutex};

use fractional_index::FractionalIndex;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use rusqlite_migration::{M, Migrations};
use syncline_protocol::limits::{validate_description, validate_title};
use syncline_protocol::{
    Board, BoardId, BoardSnapshot, Card, CardId, Column, ColumnId, CreateBoard, CreateCard, CreateColumn,
    MoveCard, MoveColumn, Rename, UpdateCard, Version,
};
use uuid::Uuid;

/// What a store operation can refuse, besides an internal failure.
#[derive(Debug)]
pub enum StoreError {
    NotFound(String),
    InvalidField { field: &'static str, message: String },
    /// The write's base version is not the current one; holds the current entity as JSON.
    Conflict { message: String, current: serde_json::Value },
    Internal(anyhow::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Internal(e.into())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(
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
    )])
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations().to_latest(&mut conn)?;
        Ok(Store { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `f` on the connection in a blocking thread, inside one transaction committed on success.
    pub async fn transaction<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the connection itself is still sound because the
            // transaction was rolled back when it dropped, so carry on with the inner value.
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Internal(e.into()))?
    }
}

// ---- row mapping -------------------------------------------------------------------------------------------

fn uuid_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let s: String = row.get(idx)?;
    Uuid::parse_str(&s).map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into()))
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

pub fn list_boards(tx: &Transaction<'_>) -> StoreResult<Vec<Board>> {
    let mut stmt = tx.prepare_cached(&format!("SELECT {BOARD_COLS} FROM boards ORDER BY rowid"))?;
    let rows = stmt.query_map([], board_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn get_board(tx: &Transaction<'_>, id: BoardId) -> StoreResult<Board> {
    tx.query_row(&format!("SELECT {BOARD_COLS} FROM boards WHERE id = ?1"), [id.to_string()], board_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no board with id {id}")))
}

pub fn get_column(tx: &Transaction<'_>, id: ColumnId) -> StoreResult<Column> {
    tx.query_row(&format!("SELECT {COLUMN_COLS} FROM columns WHERE id = ?1"), [id.to_string()], column_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no column with id {id}")))
}

pub fn get_card(tx: &Transaction<'_>, id: CardId) -> StoreResult<Card> {
    tx.query_row(&format!("SELECT {CARD_COLS} FROM cards WHERE id = ?1"), [id.to_string()], card_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no card with id {id}")))
}

pub fn board_snapshot(tx: &Transaction<'_>, id: BoardId) -> StoreResult<BoardSnapshot> {
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
    Ok(BoardSnapshot { board, columns, cards })
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
        (Some(b), Some(a)) => FractionalIndex::new_between(b, a).ok_or_else(|| {
            StoreError::Internal(anyhow::anyhow!("no key between equal positions {b:?} and {a:?}"))
        })?,
    };
    Ok(key.to_string())
}

/// Position for an item placed right after `after` (first when `None`) in an ordered sibling list given as
/// `(id, position)` pairs, the moving item itself excluded.
fn position_after(siblings: &[(Uuid, String)], after: Option<Uuid>) -> Option<StoreResult<String>> {
    let (lo, hi) = match after {
        None => (None, siblings.first()),
        Some(after) => {
            let i = siblings.iter().position(|(id, _)| *id == after)?;
            (Some(&siblings[i]), siblings.get(i + 1))
        }
    };
    // Equal neighbours (possible after concurrent inserts at one spot) have no key between them; place after
    // the lower one's key then, which keeps the (position, id) order total.
    match (lo, hi) {
        (Some(l), Some(h)) if l.1 == h.1 => Some(key_between(Some(&l.1), None)),
        _ => Some(key_between(lo.map(|l| l.1.as_str()), hi.map(|h| h.1.as_str()))),
    }
}

fn siblings(tx: &Transaction<'_>, sql: &str, parent: Uuid, except: Option<Uuid>) -> StoreResult<Vec<(Uuid, String)>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt
        .query_map([parent.to_string()], |r| Ok((uuid_col(r, 0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows.into_iter().filter(|(id, _)| Some(*id) != except).collect())
}

fn column_siblings(tx: &Transaction<'_>, board: BoardId, except: Option<ColumnId>) -> StoreResult<Vec<(Uuid, String)>> {
    siblings(tx, "SELECT id, position FROM columns WHERE board_id = ?1 ORDER BY position, id", board, except)
}

fn card_siblings(tx: &Transaction<'_>, column: ColumnId, except: Option<CardId>) -> StoreResult<Vec<(Uuid, String)>> {
    siblings(tx, "SELECT id, position FROM cards WHERE column_id = ?1 ORDER BY position, id", column, except)
}

fn last_position(siblings: &[(Uuid, String)]) -> StoreResult<String> {
    key_between(siblings.last().map(|s| s.1.as_str()), None)
}

fn new_id(requested: Option<Uuid>, tx: &Transaction<'_>, table: &str) -> StoreResult<Uuid> {
    match requested {
        None => Ok(Uuid::now_v7()),
        Some(id) => {
            let taken: bool = tx.query_row(
                &format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE id = ?1)"),
                [id.to_string()],
                |r| r.get(0),
            )?;
            if taken {
                Err(StoreError::InvalidField { field: "id", message: format!("id {id} is already in use") })
            } else {
                Ok(id)
            }
        }
    }
}

// ---- writes ------------------------------------------------------------------------------------------------

pub fn create_board(tx: &Transaction<'_>, req: CreateBoard) -> StoreResult<Board> {
    let title = title(&req.title)?;
    let id = new_id(req.id, tx, "boards")?;
    tx.execute("INSERT INTO boards (id, title, version) VALUES (?1, ?2, 1)", params![id.to_string(), title])?;
    get_board(tx, id)
}

pub fn rename_board(tx: &Transaction<'_>, id: BoardId, req: Rename) -> StoreResult<Board> {
    let current = get_board(tx, id)?;
    check_base_version("board", current.version, req.base_version, || serde_json::json!(current))?;
    let title = title(&req.title)?;
    tx.execute("UPDATE boards SET title = ?2, version = version + 1 WHERE id = ?1", params![id.to_string(), title])?;
    get_board(tx, id)
}

pub fn delete_board(tx: &Transaction<'_>, id: BoardId) -> StoreResult<()> {
    get_board(tx, id)?;
    tx.execute("DELETE FROM boards WHERE id = ?1", [id.to_string()])?;
    Ok(())
}

pub fn create_column(tx: &Transaction<'_>, board: BoardId, req: CreateColumn) -> StoreResult<Column> {
    get_board(tx, board)?;
    let title = title(&req.title)?;
    let id = new_id(req.id, tx, "columns")?;
    let position = last_position(&column_siblings(tx, board, None)?)?;
    tx.execute(
        "INSERT INTO columns (id, board_id, title, position, version) VALUES (?1, ?2, ?3, ?4, 1)",
        params![id.to_string(), board.to_string(), title, position],
    )?;
    get_column(tx, id)
}

pub fn rename_column(tx: &Transaction<'_>, id: ColumnId, req: Rename) -> StoreResult<Column> {
    let current = get_column(tx, id)?;
    check_base_version("column", current.version, req.base_version, || serde_json::json!(current))?;
    let title = title(&req.title)?;
    tx.execute("UPDATE columns SET title = ?2, version = version + 1 WHERE id = ?1", params![id.to_string(), title])?;
    get_column(tx, id)
}

pub fn move_column(tx: &Transaction<'_>, id: ColumnId, req: MoveColumn) -> StoreResult<Column> {
    let current = get_column(tx, id)?;
    check_base_version("column", current.version, req.base_version, || serde_json::json!(current))?;
    if req.after_column_id == Some(id) {
        return Err(StoreError::InvalidField {
            field: "after_column_id",
            message: "a column cannot be placed after itself".into(),
        });
    }
    let siblings = column_siblings(tx, current.board_id, Some(id))?;
    let position = position_after(&siblings, req.after_column_id).ok_or_else(|| StoreError::InvalidField {
        field: "after_column_id",
        message: format!("column {} is not on board {}", req.after_column_id.unwrap_or_default(), current.board_id),
    })??;
    tx.execute(
        "UPDATE columns SET position = ?2, version = version + 1 WHERE id = ?1",
        params![id.to_string(), position],
    )?;
    get_column(tx, id)
}

pub fn delete_column(tx: &Transaction<'_>, id: ColumnId) -> StoreResult<()> {
    get_column(tx, id)?;
    tx.execute("DELETE FROM columns WHERE id = ?1", [id.to_string()])?;
    Ok(())
}

pub fn create_card(tx: &Transaction<'_>, column: ColumnId, req: CreateCard) -> StoreResult<Card> {
    let col = get_column(tx, column)?;
    let title = title(&req.title)?;
    let description = validate_description(&req.description)
        .map_err(|message| StoreError::InvalidField { field: "description", message })?;
    let id = new_id(req.id, tx, "cards")?;
    let position = last_position(&card_siblings(tx, column, None)?)?;
    tx.execute(
        "INSERT INTO cards (id, board_id, column_id, title, description, position, version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
        params![id.to_string(), col.board_id.to_string(), column.to_string(), title, description, position],
    )?;
    get_card(tx, id)
}

pub fn update_card(tx: &Transaction<'_>, id: CardId, req: UpdateCard) -> StoreResult<Card> {
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
    get_card(tx, id)
}

pub fn move_card(tx: &Transaction<'_>, id: CardId, req: MoveCard) -> StoreResult<Card> {
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
    let siblings = card_siblings(tx, target.id, Some(id))?;
    let position = position_after(&siblings, req.after_card_id).ok_or_else(|| StoreError::InvalidField {
        field: "after_card_id",
        message: format!("card {} is not in column {}", req.after_card_id.unwrap_or_default(), target.id),
    })??;
    tx.execute(
        "UPDATE cards SET column_id = ?2, position = ?3, version = version + 1 WHERE id = ?1",
        params![id.to_string(), target.id.to_string(), position],
    )?;
    get_card(tx, id)
}

pub fn delete_card(tx: &Transaction<'_>, id: CardId) -> StoreResult<()> {
    get_card(tx, id)?;
    tx.execute("DELETE FROM cards WHERE id = ?1", [id.to_string()])?;
    Ok(())
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
    fn position_after_places_between_neighbours() {
        let a = key_between(None, None).unwrap();
        let b = key_between(Some(&a), None).unwrap();
        let (ia, ib) = (Uuid::now_v7(), Uuid::now_v7());
        let sibs = vec![(ia, a.clone()), (ib, b.clone())];
        let first = position_after(&sibs, None).unwrap().unwrap();
        let mid = position_after(&sibs, Some(ia)).unwrap().unwrap();
        let last = position_after(&sibs, Some(ib)).unwrap().unwrap();
        assert!(first < a && a < mid && mid < b && b < last);
        assert!(position_after(&sibs, Some(Uuid::now_v7())).is_none());
    }
}
