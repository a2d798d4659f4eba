//! Wire types shared by the syncline server and its clients.
//!
//! Everything here is plain data with serde derives: no I/O, no async, no clock. The server, the browser
//! runtime and the simulation all speak these types, so a change here is a protocol change.

pub mod api;
pub mod error;
pub mod feed;
pub mod limits;
pub mod moves;
pub mod writes;

pub use api::*;
pub use error::{ApiError, ErrorCode};
pub use feed::{Change, ChangeOp, ClientMessage, Cursor, ServerMessage, StreamCursor, StreamId};
pub use writes::{StreamPosition, Write, WriteBatch, WriteBatchResult, WriteOp, WriteOutcome};
