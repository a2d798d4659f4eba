//! The change feed: what a committed write looks like to a client, and the messages of the live feed
//! (WebSocket) and its long-poll fallback. docs/protocol.md explains them with examples.
//!
//! Changes are grouped into *streams*, each with its own cursor that only grows:
//! - `boards`: the list of boards (created, renamed, deleted);
//! - `board:<id>`: everything on one board (the board itself, its columns and cards).
//!
//! A client keeps one cursor per stream it follows and resumes from it. Per-stream cursors (rather than one
//! global cursor) are what lets the log scale out: each stream's head is advanced under a lock on that
//! stream's row only, so on PostgreSQL two boards' writers never contend, and a stream's cursors become
//! visible in commit order (a global sequence can commit 11 before 10 and make readers skip 10).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Board, BoardId, Card, Column};

/// Position in a stream: the cursor of the last change applied. 0 = before the first change.
pub type Cursor = u64;

/// Names a stream of changes. Serialized as `"boards"` or `"board:<uuid>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamId {
    /// The list of boards.
    Boards,
    /// One board and everything on it.
    Board(BoardId),
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamId::Boards => f.write_str("boards"),
            StreamId::Board(id) => write!(f, "board:{id}"),
        }
    }
}

impl FromStr for StreamId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "boards" {
            return Ok(StreamId::Boards);
        }
        match s.strip_prefix("board:").map(Uuid::parse_str) {
            Some(Ok(id)) => Ok(StreamId::Board(id)),
            _ => Err(format!("unknown stream {s:?}: expected \"boards\" or \"board:<uuid>\"")),
        }
    }
}

impl Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What changed. Upserts carry the whole entity as committed, so a client can apply the change to its cached
/// data without asking the server again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ChangeOp {
    BoardUpserted {
        board: Board,
    },
    BoardDeleted {
        id: Uuid,
    },
    ColumnUpserted {
        column: Column,
    },
    /// The column's cards were deleted with it; each has its own `CardDeleted` change just before this one.
    ColumnDeleted {
        id: Uuid,
        board_id: Uuid,
    },
    CardUpserted {
        card: Card,
    },
    CardDeleted {
        id: Uuid,
        board_id: Uuid,
    },
}

/// One committed change, at `cursor` in `stream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    pub stream: StreamId,
    pub cursor: Cursor,
    /// Commit time, milliseconds since the Unix epoch (server clock).
    pub at_ms: u64,
    /// The idempotency key of the write that made this change, if it had one: lets the writer recognise its
    /// own changes coming back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<Uuid>,
    #[serde(flatten)]
    pub op: ChangeOp,
}

/// A stream and the cursor the client has for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamCursor {
    pub stream: StreamId,
    /// The last cursor the client applied (0 for "from the beginning").
    pub since: Cursor,
}

/// Client → server messages on the WebSocket feed (`GET /api/feed`, JSON text frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Follow these streams from these cursors. `log_id` is the one from `hello` (or from a snapshot) the
    /// cursors belong to; if the server's differs, every stream gets `reset`.
    Subscribe {
        streams: Vec<StreamCursor>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log_id: Option<Uuid>,
    },
    Unsubscribe {
        streams: Vec<StreamId>,
    },
    /// Answered by `pong` with the same nonce (browsers cannot send WebSocket ping frames).
    Ping {
        nonce: u64,
    },
}

/// Server → client messages on the WebSocket feed, and the body of a long-poll answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message on a socket.
    Hello {
        /// Identifies this change log. Cursors from another log (say, a restored database) are meaningless here.
        log_id: Uuid,
        /// The server pings this often; a client that hears nothing for two periods may assume the link is dead.
        heartbeat_ms: u64,
    },
    /// Changes of one stream, in cursor order, with no gap after the client's cursor.
    Changes {
        stream: StreamId,
        changes: Vec<Change>,
    },
    /// The stream is caught up: everything up to `cursor` has been sent; what follows is live.
    Synced {
        stream: StreamId,
        cursor: Cursor,
    },
    /// The client's cursor cannot be served (older than retention, from another log, or ahead of the log):
    /// refetch the stream's snapshot and resume from the cursor it carries.
    Reset {
        stream: StreamId,
        reason: String,
    },
    Pong {
        nonce: u64,
    },
}

/// Close codes the server uses on the feed (besides 1000 normal and 1001 going away).
pub mod close_code {
    /// A binary frame: the feed speaks JSON text only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame that is not a valid client message (not JSON, unknown type, missing fields).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A valid message the server will not honour (too many subscriptions).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame larger than the server accepts.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The client stopped answering pings.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_round_trip_as_strings() {
        let id = Uuid::from_u128(7);
        for s in [StreamId::Boards, StreamId::Board(id)] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<StreamId>(&json).unwrap(), s);
        }
        assert_eq!(serde_json::to_string(&StreamId::Board(id)).unwrap(), format!("\"board:{id}\""));
        assert!("board:nope".parse::<StreamId>().is_err());
        assert!("cards".parse::<StreamId>().is_err());
    }

    #[test]
    fn a_change_is_flat_json() {
        let change = Change {
            stream: StreamId::Boards,
            cursor: 3,
            at_ms: 1,
            write_id: None,
            op: ChangeOp::BoardDeleted { id: Uuid::from_u128(1) },
        };
        let v = serde_json::to_value(&change).unwrap();
        assert_eq!(v["op"], "board_deleted");
        assert_eq!(v["cursor"], 3);
        assert_eq!(serde_json::from_value::<Change>(v).unwrap(), change);
    }

    #[test]
    fn client_messages_refuse_unknown_shapes() {
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"subscribe","streams":[{"stream":"boards","since":0}]}"#)
                .is_ok()
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"shout"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"ping"}"#).is_err());
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for StreamId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^(boards|board:[0-9a-fA-F-]{36})$"))
            .description(Some("`boards` (the list of boards) or `board:<uuid>` (one board and everything on it)"))
            .examples(["board:0192f0c4-6d2e-7c1a-9d34-1b2c3d4e5f60"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for StreamId {}
