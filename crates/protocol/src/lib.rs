//! The syncline protocol: what the server and its clients say to each other about streams of changes, cursors,
//! writes with idempotency keys, and errors — whatever the app's data is. The app's own types (for the Kanban
//! app: boards, columns, cards, its writes and its changes) fill in the generic parameters (`syncline-kanban`).
//!
//! Everything here is plain data with serde derives: no I/O, no async, no clock.

pub mod error;
pub mod feed;
pub mod limits;
pub mod tag_first;
pub mod writes;

// The derive names this crate by path (`::syncline_protocol::tag_first`), also from inside it.
extern crate self as syncline_protocol;

pub use error::{ApiError, ErrorCode};
pub use feed::{Change, ClientMessage, Cursor, ServerMessage, StreamCursor, StreamName};
pub use syncline_derive::TagFirstDeserialize;
pub use writes::{MAX_BATCH_WRITES, StreamPosition, Write, WriteBatch, WriteBatchResult, WriteOutcome};
