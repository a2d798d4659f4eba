//! The Kanban app's data model.
//!
//! - On the wire (plain serde data, shared by the server and its clients): the entities and request bodies
//!   (`api`), every write as one enum (`writes::WriteOp`), the streams (`boards`, `board:<id>`) and what a change
//!   says (`feed`), where a card goes when moved (`moves`), and input validation (`limits`).
//!
//! - For the sync engine (`model`): [`Kanban`] implements `syncline_engine::Model` — the queries and their data,
//!   how changes and written entities apply to cached boards (`apply`), the optimistic overlay — and
//!   [`KanbanViews`] is what the app reads through the engine.
//!
//! The generic protocol — cursors, changes, feed messages, write batches, errors — is `syncline_protocol`; the
//! aliases here (`Change`, `ServerMessage`, `Write`, `WriteBatch`) fill it in with Kanban types.

pub mod api;
pub mod apply;
pub mod feed;
pub mod limits;
pub mod model;
pub mod moves;
pub mod writes;

pub use api::*;
pub use feed::{Change, ChangeOp, ServerMessage, StreamId};
pub use model::{Kanban, KanbanViews, QueryData, QueryKey};
pub use syncline_protocol::{
    ApiError, ClientMessage, Cursor, ErrorCode, MAX_BATCH_WRITES, StreamCursor, StreamName, StreamPosition,
    WriteBatchResult, WriteOutcome,
};
pub use writes::{Write, WriteBatch, WriteOp};
