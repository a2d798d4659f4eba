//! Storage of the Kanban domain, on SQLite or PostgreSQL (`db.rs`; schemas in `schema.rs`).
//!
//! SQLite: one connection behind a mutex, used from `spawn_blocking` — SQLite allows one writer at a time anyway,
//! and every write is a single short transaction, so a pool would add nothing but contention on the file lock.
//! PostgreSQL: a pool; writers run concurrently, a stream's head row lock keeps its cursors in commit order.
//! Every write validates, then changes rows, inside one transaction: an error leaves nothing half-written.

use crate::args;
use crate::db::{Conn, Row};
use fractional_index::FractionalIndex;
use syncline_kanban::limits::{validate_description, validate_title};
use syncline_kanban::{
    Board, BoardId, BoardList, BoardSnapshot, BoardSummary, Card, CardId, ChangeOp, Column, ColumnId, ColumnSummary,
    CreateBoard, CreateCard, CreateColumn, MoveCard, MoveColumn, Rename, StreamId, UpdateCard, UserId, Version,
};
use uuid::Uuid;

use crate::access;
use crate::feed::{Recorder, record, stream_head};

/// What a store operation can refuse, besides an internal failure.
#[derive(Debug)]
pub enum StoreError {
    NotFound(String),
    /// A member whose role does not allow the write (a non-member gets `NotFound`: a board's existence is not
    /// revealed to those who may not see it).
    Forbidden(String),
    /// A value not of the accepted form (`invalid_field`).
    InvalidField {
        field: &'static str,
        message: String,
    },
    /// A well-formed value that what it names or the current state does not allow (`refused`).
    Refused {
        field: &'static str,
        message: String,
    },
    /// The write's base version is not the current one; holds the current entity as JSON.
    Conflict {
        message: String,
        current: serde_json::Value,
    },
    /// A quota would be exceeded (`limit` names it, e.g. `cards_per_board`).
    QuotaExceeded {
        limit: &'static str,
        message: String,
    },
    Internal(anyhow::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Internal(e.into())
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Internal(e.into())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

pub use crate::schema::{DEFAULT_WRITE_ID_TTL_MS, Store, open_connection};

// ---- row mapping -------------------------------------------------------------------------------------------

fn board_row(r: &Row) -> StoreResult<Board> {
    Ok(Board { id: r.uuid(0)?, title: r.text(1)?, version: r.u64(2)? })
}

fn column_row(r: &Row) -> StoreResult<Column> {
    Ok(Column { id: r.uuid(0)?, board_id: r.uuid(1)?, title: r.text(2)?, position: r.text(3)?, version: r.u64(4)? })
}

fn card_row(r: &Row) -> StoreResult<Card> {
    Ok(Card {
        id: r.uuid(0)?,
        board_id: r.uuid(1)?,
        column_id: r.uuid(2)?,
        title: r.text(3)?,
        description: r.text(4)?,
        position: r.text(5)?,
        version: r.u64(6)?,
    })
}

const BOARD_COLS: &str = "id, title, version";
const COLUMN_COLS: &str = "id, board_id, title, position, version";
const CARD_COLS: &str = "id, board_id, column_id, title, description, position, version";

// ---- reads -------------------------------------------------------------------------------------------------

/// The boards `user` is a member of, as of their `boards` stream's cursor.
pub fn list_boards(tx: &dyn Conn, user: UserId, log_id: Uuid) -> StoreResult<BoardList> {
    let boards = access::boards_of(tx, user)?;
    Ok(BoardList { boards, log_id, cursor: stream_head(tx, access::user_stream(user))? })
}

pub fn get_board(tx: &dyn Conn, id: BoardId) -> StoreResult<Board> {
    match tx.query_opt(&format!("SELECT {BOARD_COLS} FROM boards WHERE id = ?1"), args![id])? {
        Some(r) => board_row(&r),
        None => Err(StoreError::NotFound(format!("no board with id {id}"))),
    }
}

pub fn get_column(tx: &dyn Conn, id: ColumnId) -> StoreResult<Column> {
    match tx.query_opt(&format!("SELECT {COLUMN_COLS} FROM columns WHERE id = ?1"), args![id])? {
        Some(r) => column_row(&r),
        None => Err(StoreError::NotFound(format!("no column with id {id}"))),
    }
}

pub fn get_card(tx: &dyn Conn, id: CardId) -> StoreResult<Card> {
    match tx.query_opt(&format!("SELECT {CARD_COLS} FROM cards WHERE id = ?1"), args![id])? {
        Some(r) => card_row(&r),
        None => Err(StoreError::NotFound(format!("no card with id {id}"))),
    }
}

pub fn board_snapshot(tx: &dyn Conn, id: BoardId, log_id: Uuid) -> StoreResult<BoardSnapshot> {
    let board = get_board(tx, id)?;
    let columns = tx
        .query(&format!("SELECT {COLUMN_COLS} FROM columns WHERE board_id = ?1 ORDER BY position, id"), args![id])?
        .iter()
        .map(column_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let mut cards = tx
        .query(&format!("SELECT {CARD_COLS} FROM cards WHERE board_id = ?1 ORDER BY position, id"), args![id])?
        .iter()
        .map(card_row)
        .collect::<StoreResult<Vec<_>>>()?;
    // Group by column in column order, keeping each column's card order.
    let column_index = |c: &Card| columns.iter().position(|col| col.id == c.column_id).unwrap_or(usize::MAX);
    cards.sort_by_key(|c| column_index(c));
    let members = access::members_of(tx, id)?;
    let cursor = stream_head(tx, StreamId::Board(id))?;
    let cards = cards.into_iter().map(std::sync::Arc::new).collect();
    Ok(BoardSnapshot { board, columns, cards, members, log_id, cursor })
}

pub fn board_summary(tx: &dyn Conn, id: BoardId) -> StoreResult<BoardSummary> {
    get_board(tx, id)?;
    let columns = tx
        .query(
            "SELECT c.id, c.title, COUNT(k.id) FROM columns c LEFT JOIN cards k ON k.column_id = c.id
             WHERE c.board_id = ?1 GROUP BY c.id ORDER BY c.position, c.id",
            args![id],
        )?
        .iter()
        .map(|r| Ok(ColumnSummary { column_id: r.uuid(0)?, title: r.text(1)?, cards: r.u64(2)? }))
        .collect::<StoreResult<Vec<_>>>()?;
    let described =
        tx.query_one("SELECT COUNT(*) FROM cards WHERE board_id = ?1 AND description != ''", args![id])?.i64(0)?;
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

    fn query(self, tx: &dyn Conn, filter: &str, params: &[crate::db::Value]) -> StoreResult<Option<(Uuid, String)>> {
        let (table, parent, _) = self.table_and_parent();
        let sql = format!("SELECT id, position FROM {table} WHERE {parent} = ?1 {filter} LIMIT 1");
        tx.query_opt(&sql, params)?.map(|r| Ok((r.uuid(0)?, r.text(1)?))).transpose()
    }

    /// Key after the last item.
    fn last_key(self, tx: &dyn Conn) -> StoreResult<String> {
        let (_, _, parent) = self.table_and_parent();
        let last = self.query(tx, "ORDER BY position DESC, id DESC", args![parent])?;
        key_for(last.as_ref(), None)
    }

    /// Key for `moving` placed right after `after` (first when `None`); `None` when `after` is not a sibling.
    fn key_after(self, tx: &dyn Conn, moving: Uuid, after: Option<Uuid>) -> StoreResult<Option<String>> {
        let (_, _, parent) = self.table_and_parent();
        let lo = match after {
            None => None,
            Some(after) => match self.query(tx, "AND id = ?2", args![parent, after])? {
                None => return Ok(None),
                found => found,
            },
        };
        let hi = match &lo {
            None => self.query(tx, "AND id != ?2 ORDER BY position, id", args![parent, moving])?,
            Some((lo_id, lo_pos)) => self.query(
                tx,
                "AND id != ?2 AND (position, id) > (?3, ?4) ORDER BY position, id",
                args![parent, moving, lo_pos, lo_id],
            )?,
        };
        key_for(lo.as_ref(), hi.as_ref()).map(Some)
    }

    fn ids(self, tx: &dyn Conn) -> StoreResult<Vec<Uuid>> {
        let (table, parent_col, parent) = self.table_and_parent();
        let sql = format!("SELECT id FROM {table} WHERE {parent_col} = ?1 ORDER BY position, id");
        tx.query(&sql, args![parent])?.iter().map(|r| r.uuid(0)).collect()
    }
}

fn new_id(requested: Option<Uuid>, tx: &dyn Conn, table: &str) -> StoreResult<Uuid> {
    match requested {
        None => Ok(Uuid::now_v7()),
        Some(id) => {
            let taken =
                tx.query_one(&format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE id = ?1)"), args![id])?.bool(0)?;
            if taken {
                Err(StoreError::Refused { field: "id", message: format!("id {id} is already in use") })
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

fn board_changed(tx: &dyn Conn, rec: &mut Recorder, board: &Board) -> StoreResult<()> {
    record(tx, rec, StreamId::Board(board.id), ChangeOp::BoardUpserted { board: board.clone() })
}

fn column_changed(tx: &dyn Conn, rec: &mut Recorder, column: &Column) -> StoreResult<()> {
    record(tx, rec, StreamId::Board(column.board_id), ChangeOp::ColumnUpserted { column: column.clone() })
}

fn card_changed(tx: &dyn Conn, rec: &mut Recorder, card: &Card) -> StoreResult<()> {
    record(tx, rec, StreamId::Board(card.board_id), ChangeOp::CardUpserted { card: card.clone() })
}

/// A card's change as the fields that differ from `before` (compact changes: a title edit does not carry the
/// description).
fn card_patched(tx: &dyn Conn, rec: &mut Recorder, before: &Card, after: &Card) -> StoreResult<()> {
    let differs = |a: &String, b: &String| (a != b).then(|| b.clone());
    let op = ChangeOp::CardPatched {
        id: after.id,
        version: after.version,
        title: differs(&before.title, &after.title),
        description: differs(&before.description, &after.description),
        column_id: (before.column_id != after.column_id).then_some(after.column_id),
        position: differs(&before.position, &after.position),
    };
    record(tx, rec, StreamId::Board(after.board_id), op)
}

/// Creates a board; `creator` becomes its owner.
pub fn create_board(tx: &dyn Conn, rec: &mut Recorder, creator: UserId, req: CreateBoard) -> StoreResult<Board> {
    let title = title(&req.title)?;
    let id = new_id(req.id, tx, "boards")?;
    tx.execute(
        "INSERT INTO boards (id, title, version, created_ms) VALUES (?1, ?2, 1, ?3)",
        args![id, title, rec.at_ms()],
    )?;
    let board = get_board(tx, id)?;
    board_changed(tx, rec, &board)?;
    access::board_created(tx, rec, id, creator)?;
    Ok(board)
}

pub fn rename_board(tx: &dyn Conn, rec: &mut Recorder, id: BoardId, req: Rename) -> StoreResult<Board> {
    let current = get_board(tx, id)?;
    check_base_version("board", current.version, req.base_version, || serde_json::json!(current))?;
    let title = title(&req.title)?;
    tx.execute("UPDATE boards SET title = ?2, version = version + 1 WHERE id = ?1", args![id, title])?;
    let board = get_board(tx, id)?;
    board_changed(tx, rec, &board)?;
    access::board_renamed(tx, rec, &board)?;
    Ok(board)
}

pub fn delete_board(tx: &dyn Conn, rec: &mut Recorder, id: BoardId, base_version: Option<Version>) -> StoreResult<()> {
    let current = get_board(tx, id)?;
    check_base_version("board", current.version, base_version, || serde_json::json!(current))?;
    // The board's stream first, then its members' lists: every write takes the board's stream before users'
    // streams, so concurrent writers (PostgreSQL) never wait on each other in a cycle.
    record(tx, rec, StreamId::Board(id), ChangeOp::BoardDeleted { id })?;
    access::board_deleting(tx, rec, id)?;
    tx.execute("DELETE FROM boards WHERE id = ?1", args![id])?;
    Ok(())
}

pub fn create_column(tx: &dyn Conn, rec: &mut Recorder, board: BoardId, req: CreateColumn) -> StoreResult<Column> {
    get_board(tx, board)?;
    let title = title(&req.title)?;
    let id = new_id(req.id, tx, "columns")?;
    let position = Siblings::ColumnsOf(board).last_key(tx)?;
    tx.execute(
        "INSERT INTO columns (id, board_id, title, position, version) VALUES (?1, ?2, ?3, ?4, 1)",
        args![id, board, title, position],
    )?;
    let column = get_column(tx, id)?;
    column_changed(tx, rec, &column)?;
    Ok(column)
}

pub fn rename_column(tx: &dyn Conn, rec: &mut Recorder, id: ColumnId, req: Rename) -> StoreResult<Column> {
    let current = get_column(tx, id)?;
    check_base_version("column", current.version, req.base_version, || serde_json::json!(current))?;
    let title = title(&req.title)?;
    tx.execute("UPDATE columns SET title = ?2, version = version + 1 WHERE id = ?1", args![id, title])?;
    let column = get_column(tx, id)?;
    column_changed(tx, rec, &column)?;
    Ok(column)
}

pub fn move_column(tx: &dyn Conn, rec: &mut Recorder, id: ColumnId, req: MoveColumn) -> StoreResult<Column> {
    let current = get_column(tx, id)?;
    check_base_version("column", current.version, req.base_version, || serde_json::json!(current))?;
    if req.after_column_id == Some(id) {
        return Err(StoreError::Refused {
            field: "after_column_id",
            message: "a column cannot be placed after itself".into(),
        });
    }
    let position = Siblings::ColumnsOf(current.board_id).key_after(tx, id, req.after_column_id)?.ok_or_else(|| {
        StoreError::Refused {
            field: "after_column_id",
            message: format!("column {} is not on board {}", req.after_column_id.unwrap_or_default(), current.board_id),
        }
    })?;
    tx.execute("UPDATE columns SET position = ?2, version = version + 1 WHERE id = ?1", args![id, position])?;
    let column = get_column(tx, id)?;
    column_changed(tx, rec, &column)?;
    Ok(column)
}

pub fn delete_column(
    tx: &dyn Conn,
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
    tx.execute("DELETE FROM columns WHERE id = ?1", args![id])?;
    record(tx, rec, StreamId::Board(board_id), ChangeOp::ColumnDeleted { id, board_id })
}

pub fn create_card(tx: &dyn Conn, rec: &mut Recorder, column: ColumnId, req: CreateCard) -> StoreResult<Card> {
    let col = get_column(tx, column)?;
    let title = title(&req.title)?;
    let description = validate_description(&req.description)
        .map_err(|message| StoreError::InvalidField { field: "description", message })?;
    let id = new_id(req.id, tx, "cards")?;
    let position = Siblings::CardsOf(column).last_key(tx)?;
    tx.execute(
        "INSERT INTO cards (id, board_id, column_id, title, description, position, version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
        args![id, col.board_id, column, title, description, position],
    )?;
    let card = get_card(tx, id)?;
    card_changed(tx, rec, &card)?;
    Ok(card)
}

pub fn update_card(tx: &dyn Conn, rec: &mut Recorder, id: CardId, req: UpdateCard) -> StoreResult<Card> {
    let current = get_card(tx, id)?;
    check_base_version("card", current.version, req.base_version, || serde_json::json!(current))?;
    if req.title.is_none() && req.description.is_none() {
        // An empty patch changes nothing (as a role set to the role a member has): the card as it is.
        return Ok(current);
    }
    let title = req.title.as_deref().map(title).transpose()?.unwrap_or_else(|| current.title.clone());
    let description = req
        .description
        .as_deref()
        .map(validate_description)
        .transpose()
        .map_err(|message| StoreError::InvalidField { field: "description", message })?
        .unwrap_or_else(|| current.description.clone());
    tx.execute(
        "UPDATE cards SET title = ?2, description = ?3, version = version + 1 WHERE id = ?1",
        args![id, title, description],
    )?;
    let card = get_card(tx, id)?;
    card_patched(tx, rec, &current, &card)?;
    Ok(card)
}

pub fn move_card(tx: &dyn Conn, rec: &mut Recorder, id: CardId, req: MoveCard) -> StoreResult<Card> {
    let current = get_card(tx, id)?;
    check_base_version("card", current.version, req.base_version, || serde_json::json!(current))?;
    let target = match get_column(tx, req.column_id) {
        Ok(c) => c,
        Err(StoreError::NotFound(message)) => {
            return Err(StoreError::Refused { field: "column_id", message });
        }
        Err(e) => return Err(e),
    };
    if target.board_id != current.board_id {
        return Err(StoreError::Refused {
            field: "column_id",
            message: format!("column {} is on another board; cards move only within their board", target.id),
        });
    }
    if req.after_card_id == Some(id) {
        return Err(StoreError::Refused {
            field: "after_card_id",
            message: "a card cannot be placed after itself".into(),
        });
    }
    let position =
        Siblings::CardsOf(target.id).key_after(tx, id, req.after_card_id)?.ok_or_else(|| StoreError::Refused {
            field: "after_card_id",
            message: format!("card {} is not in column {}", req.after_card_id.unwrap_or_default(), target.id),
        })?;
    tx.execute(
        "UPDATE cards SET column_id = ?2, position = ?3, version = version + 1 WHERE id = ?1",
        args![id, target.id, position],
    )?;
    let card = get_card(tx, id)?;
    card_patched(tx, rec, &current, &card)?;
    Ok(card)
}

pub fn delete_card(tx: &dyn Conn, rec: &mut Recorder, id: CardId, base_version: Option<Version>) -> StoreResult<()> {
    let current = get_card(tx, id)?;
    check_base_version("card", current.version, base_version, || serde_json::json!(current))?;
    tx.execute("DELETE FROM cards WHERE id = ?1", args![id])?;
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
