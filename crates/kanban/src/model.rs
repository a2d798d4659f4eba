//! The Kanban app's model for the sync engine: its queries (the board list, a board, a board's summary), their
//! data, its writes and changes — and the views the app reads through the engine.

use syncline_engine::collections::Set;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use syncline_engine::{Applied, Engine, Model, QueryOptions};
use syncline_protocol::{Cursor, StreamName};
use uuid::Uuid;

use crate::apply;
use crate::{Board, BoardList, BoardSnapshot, BoardSummary, Change, StreamId, WriteOp};

/// The Kanban app, as the sync engine's [`Model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kanban;

/// A query: what a view reads. Hierarchical: a board's summary is derived from the board's cards, so it depends on
/// the board query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum QueryKey {
    /// The list of boards (`GET /api/boards`), kept fresh by the `boards` stream.
    Boards,
    /// One board with its columns and cards (`GET /api/boards/{id}`), kept fresh by `board:<id>` deltas.
    Board(Uuid),
    /// Server-computed figures of a board (`GET /api/boards/{id}/summary`): no delta can update it, so it is
    /// invalidated (and refetched once per batch) whenever the board it depends on changes.
    BoardSummary(Uuid),
}

impl QueryKey {
    /// The stream whose changes concern this query.
    pub fn stream_id(self) -> StreamId {
        match self {
            QueryKey::Boards => StreamId::Boards,
            QueryKey::Board(id) | QueryKey::BoardSummary(id) => StreamId::Board(id),
        }
    }

    /// Path segments, e.g. `["board", "<id>", "summary"]`: the key's place in the hierarchy.
    pub fn segments(self) -> Vec<String> {
        match self {
            QueryKey::Boards => vec!["boards".into()],
            QueryKey::Board(id) => vec!["board".into(), id.to_string()],
            QueryKey::BoardSummary(id) => vec!["board".into(), id.to_string(), "summary".into()],
        }
    }
}

/// A query's data as the server last gave it (the optimistic overlay is applied on read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, syncline_protocol::TagFirstDeserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QueryData {
    Boards(BoardList),
    Board(BoardSnapshot),
    Summary(BoardSummary),
    /// The entity is gone (deleted on the server).
    Gone,
}

impl Model for Kanban {
    type Key = QueryKey;
    type Data = QueryData;
    type Op = WriteOp;
    type Change = crate::ChangeOp;

    fn stream(key: &QueryKey) -> StreamName {
        key.stream_id().name()
    }

    fn options(key: &QueryKey) -> QueryOptions {
        match key {
            QueryKey::Boards | QueryKey::Board(_) => QueryOptions { takes_deltas: true, persisted: true },
            QueryKey::BoardSummary(_) => QueryOptions { takes_deltas: false, persisted: false },
        }
    }

    fn depends_on(key: &QueryKey) -> Option<QueryKey> {
        match key {
            QueryKey::BoardSummary(id) => Some(QueryKey::Board(*id)),
            _ => None,
        }
    }

    fn fetch_path(key: &QueryKey) -> String {
        match key {
            QueryKey::Boards => "/api/boards".into(),
            QueryKey::Board(id) => format!("/api/boards/{id}"),
            QueryKey::BoardSummary(id) => format!("/api/boards/{id}/summary"),
        }
    }

    fn parse(key: &QueryKey, body: &str) -> Result<QueryData, String> {
        let bad = |e: serde_json::Error| e.to_string();
        Ok(match key {
            QueryKey::Boards => QueryData::Boards(serde_json::from_str(body).map_err(bad)?),
            QueryKey::Board(_) => {
                let mut snap: BoardSnapshot = serde_json::from_str(body).map_err(bad)?;
                apply::normalize(&mut snap);
                QueryData::Board(snap)
            }
            QueryKey::BoardSummary(_) => QueryData::Summary(serde_json::from_str(body).map_err(bad)?),
        })
    }

    fn gone(_: &QueryKey) -> QueryData {
        QueryData::Gone
    }

    fn is_gone(data: &QueryData) -> bool {
        matches!(data, QueryData::Gone)
    }

    fn cursor(data: &QueryData) -> Option<Cursor> {
        match data {
            QueryData::Boards(l) => Some(l.cursor),
            QueryData::Board(b) => Some(b.cursor),
            QueryData::Summary(s) => Some(s.cursor),
            QueryData::Gone => None,
        }
    }

    fn log_id(data: &QueryData) -> Option<Uuid> {
        match data {
            QueryData::Boards(l) => Some(l.log_id),
            QueryData::Board(b) => Some(b.log_id),
            QueryData::Summary(_) | QueryData::Gone => None,
        }
    }

    fn apply_change(data: &mut QueryData, change: &Change) -> Applied {
        apply::apply_change(data, change)
    }

    fn apply_entity(data: &mut QueryData, entity: &Value) -> Applied {
        apply::apply_entity(data, entity)
    }

    fn find_entity(data: &QueryData, id: Uuid) -> Option<Value> {
        match data {
            QueryData::Board(snap) => {
                if snap.board.id == id {
                    return serde_json::to_value(&snap.board).ok();
                }
                let column = snap.columns.iter().find(|c| c.id == id).map(serde_json::to_value);
                let card = || snap.cards.iter().find(|c| c.id == id).map(serde_json::to_value);
                let member = || snap.members.iter().find(|m| m.id == id).map(serde_json::to_value);
                column.or_else(card).or_else(member).and_then(Result::ok)
            }
            QueryData::Boards(list) => {
                list.boards.iter().find(|b| b.id == id).and_then(|b| serde_json::to_value(b).ok())
            }
            _ => None,
        }
    }

    fn created_by(key: &QueryKey) -> Option<Uuid> {
        match key {
            QueryKey::Board(id) | QueryKey::BoardSummary(id) => Some(*id),
            QueryKey::Boards => None,
        }
    }

    /// A board this browser created is, once confirmed, an empty board at cursor 0 of its own stream: the feed
    /// brings everything after that (its columns and cards), so there is nothing to fetch and no gap to show.
    fn seed(key: &QueryKey, entity: &Value, log_id: Uuid) -> Option<QueryData> {
        let board = serde_json::from_value::<Board>(entity.clone()).ok()?;
        (board.version == 1 && *key == QueryKey::Board(board.id)).then(|| {
            QueryData::Board(BoardSnapshot {
                board,
                columns: Vec::new(),
                cards: Vec::new(),
                members: Vec::new(),
                log_id,
                cursor: 0,
            })
        })
    }

    fn assign_ids(op: &mut WriteOp, new_id: &mut dyn FnMut() -> Uuid) {
        match op {
            WriteOp::CreateBoard { body } if body.id.is_none() => body.id = Some(new_id()),
            WriteOp::CreateColumn { body, .. } if body.id.is_none() => body.id = Some(new_id()),
            WriteOp::CreateCard { body, .. } if body.id.is_none() => body.id = Some(new_id()),
            _ => {}
        }
    }

    fn entity(op: &WriteOp) -> Uuid {
        apply::entity_of(op)
    }

    fn creates(op: &WriteOp) -> bool {
        matches!(op, WriteOp::CreateBoard { .. } | WriteOp::CreateColumn { .. } | WriteOp::CreateCard { .. })
    }

    fn base_version(op: &mut WriteOp) -> Option<&mut Option<u64>> {
        apply::base_version_slot(op)
    }

    fn fields_written(op: &WriteOp) -> Set<String> {
        apply::fields_written(op)
    }

    fn affects(key: &QueryKey, data: Option<&QueryData>, op: &WriteOp) -> bool {
        let entity = apply::entity_of(op);
        match (key, data) {
            (QueryKey::Boards, _) => {
                matches!(op, WriteOp::CreateBoard { .. } | WriteOp::RenameBoard { .. } | WriteOp::DeleteBoard { .. })
            }
            (QueryKey::Board(b), Some(QueryData::Board(snap))) => {
                *b == entity
                    || snap.columns.iter().any(|c| c.id == entity)
                    || snap.cards.iter().any(|c| c.id == entity)
                    || snap.members.iter().any(|m| m.id == entity)
                    || matches!(op, WriteOp::CreateColumn { board_id, .. } | WriteOp::AddMember { board_id, .. } if board_id == b)
                    || matches!(op, WriteOp::CreateCard { column_id, .. } if snap.columns.iter().any(|c| c.id == *column_id))
            }
            _ => false,
        }
    }

    fn overlay(key: &QueryKey, data: Option<&QueryData>, pending: &[&WriteOp]) -> Option<QueryData> {
        match (key, data) {
            (QueryKey::Board(_), Some(QueryData::Board(snap))) => {
                apply::overlay_board(snap, pending).map(QueryData::Board)
            }
            // Created here and not yet confirmed: an empty board from the pending write, with what follows on it.
            (QueryKey::Board(id), None) => {
                let created = pending.iter().find_map(|op| match op {
                    WriteOp::CreateBoard { body } if body.id == Some(*id) => Some(body),
                    _ => None,
                })?;
                let empty = BoardSnapshot {
                    board: Board { id: *id, title: created.title.clone(), version: 0 },
                    columns: Vec::new(),
                    cards: Vec::new(),
                    members: Vec::new(),
                    log_id: Uuid::nil(),
                    cursor: 0,
                };
                apply::overlay_board(&empty, pending).map(QueryData::Board)
            }
            (QueryKey::Boards, Some(QueryData::Boards(list))) => {
                Some(QueryData::Boards(apply::overlay_list(list, pending)))
            }
            (_, data) => data.cloned(),
        }
    }
}

/// What the Kanban app reads through the engine, by name.
pub trait KanbanViews {
    /// The board as the user should see it: server data with this browser's pending writes laid over (or, created
    /// here and not yet on the server, what the pending writes make of it).
    fn board(&self, id: Uuid) -> Option<BoardSnapshot>;
    /// The board's data as the server last gave it (no overlay).
    fn board_server_state(&self, id: Uuid) -> Option<&BoardSnapshot>;
    /// True when the board is known to be deleted.
    fn board_gone(&self, id: Uuid) -> bool;
    fn boards(&self) -> Option<BoardList>;
    fn summary(&self, id: Uuid) -> Option<&BoardSummary>;
}

impl KanbanViews for Engine<Kanban> {
    fn board(&self, id: Uuid) -> Option<BoardSnapshot> {
        match self.view(&QueryKey::Board(id))? {
            QueryData::Board(snap) => Some(snap),
            _ => None,
        }
    }

    fn board_server_state(&self, id: Uuid) -> Option<&BoardSnapshot> {
        match self.data(&QueryKey::Board(id))? {
            QueryData::Board(snap) => Some(snap),
            _ => None,
        }
    }

    fn board_gone(&self, id: Uuid) -> bool {
        matches!(self.data(&QueryKey::Board(id)), Some(QueryData::Gone))
    }

    fn boards(&self) -> Option<BoardList> {
        match self.view(&QueryKey::Boards)? {
            QueryData::Boards(list) => Some(list),
            _ => None,
        }
    }

    fn summary(&self, id: Uuid) -> Option<&BoardSummary> {
        match self.data(&QueryKey::BoardSummary(id))? {
            QueryData::Summary(s) => Some(s),
            _ => None,
        }
    }
}
