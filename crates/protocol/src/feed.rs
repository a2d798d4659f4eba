//! The change feed: what a committed write looks like to a client, and the messages of the live feed
//! (WebSocket) and its long-poll fallback. docs/protocol.md explains them with examples.
//!
//! Changes are grouped into *streams*, each with its own cursor that only grows. A stream has a name the app
//! chooses (the Kanban app: `boards`, `board:<id>`); the feed does not look inside it. A client keeps one cursor
//! per stream it follows and resumes from it. Per-stream cursors (rather than one global cursor) are what lets the
//! log scale out: each stream's head is advanced under a lock on that stream's row only, so on PostgreSQL two
//! streams' writers never contend, and a stream's cursors become visible in commit order (a global sequence can
//! commit 11 before 10 and make readers skip 10).
//!
//! The change itself (`Change::op`) is the app's: these types are generic over it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Position in a stream: the cursor of the last change applied. 0 = before the first change.
pub type Cursor = u64;

/// Longest stream name.
pub const MAX_STREAM_NAME: usize = 128;

/// Names a stream of changes: 1 to 128 characters of `[A-Za-z0-9:_.-]`, e.g. `boards` or `board:<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// A stream name, if `name` is a valid one.
    pub fn new(name: impl Into<String>) -> Result<StreamName, String> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_STREAM_NAME
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-'));
        if valid { Ok(StreamName(name)) } else { Err(format!("{name:?} is not a stream name")) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StreamName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StreamName::new(s)
    }
}

impl Serialize for StreamName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StreamName::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for StreamName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[A-Za-z0-9:_.-]{1,128}$"))
            .description(Some("A stream of changes, e.g. `boards` or `board:<uuid>`"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for StreamName {}

/// One committed change, at `cursor` in `stream`; `op` is the app's description of it. (Its `Deserialize` is
/// written below: serde's for a flattened field buffers every change.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change<Op> {
    pub stream: StreamName,
    pub cursor: Cursor,
    /// Commit time, milliseconds since the Unix epoch (server clock).
    pub at_ms: u64,
    /// The idempotency key of the write that made this change, if it had one: lets the writer recognise its
    /// own changes coming back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<Uuid>,
    #[serde(flatten)]
    pub op: Op,
}

/// A stream and the cursor the client has for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamCursor {
    pub stream: StreamName,
    /// The last cursor the client applied (0 for "from the beginning").
    pub since: Cursor,
}

/// A change's own fields are read as they come; the first other key starts the op's fields, which the op reads
/// from the same map (`tag_first::flattened`). serde's `flatten` would copy each change into its private buffer
/// and read the op again from there — every change of every message.
impl<'de, Op: Deserialize<'de>> Deserialize<'de> for Change<Op> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (own, op) = crate::tag_first::flattened::<D, ChangeFields, Op>(deserializer, false)?;
        Ok(Change {
            stream: own.stream.ok_or_else(|| D::Error::missing_field("stream"))?,
            cursor: own.cursor.ok_or_else(|| D::Error::missing_field("cursor"))?,
            at_ms: own.at_ms.ok_or_else(|| D::Error::missing_field("at_ms"))?,
            write_id: own.write_id.flatten(),
            op,
        })
    }
}

#[derive(Default)]
struct ChangeFields {
    stream: Option<StreamName>,
    cursor: Option<Cursor>,
    at_ms: Option<u64>,
    write_id: Option<Option<Uuid>>,
}

impl<'de> crate::tag_first::OwnFields<'de> for ChangeFields {
    fn take<A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        use crate::tag_first::take_once;
        match key {
            "stream" => take_once(&mut self.stream, "stream", map),
            "cursor" => take_once(&mut self.cursor, "cursor", map),
            "at_ms" => take_once(&mut self.at_ms, "at_ms", map),
            "write_id" => take_once(&mut self.write_id, "write_id", map),
            _ => Ok(false),
        }
    }
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
        streams: Vec<StreamName>,
    },
    /// Answered by `pong` with the same nonce (browsers cannot send WebSocket ping frames).
    Ping {
        nonce: u64,
    },
}

/// Server → client messages on the WebSocket feed, and the body of a long-poll answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, crate::TagFirstDeserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<Op> {
    /// First message on a socket.
    Hello {
        /// Identifies this change log. Cursors from another log (say, a restored database) are meaningless here.
        log_id: Uuid,
        /// The server pings this often; a client that hears nothing for two periods may assume the link is dead.
        heartbeat_ms: u64,
    },
    /// Changes of one stream, in cursor order, with no gap after the client's cursor.
    Changes {
        stream: StreamName,
        changes: Vec<Change<Op>>,
    },
    /// The stream is caught up: everything up to `cursor` has been sent; what follows is live.
    Synced {
        stream: StreamName,
        cursor: Cursor,
    },
    /// The client's cursor cannot be served (older than retention, from another log, or ahead of the log):
    /// refetch the stream's snapshot and resume from the cursor it carries.
    Reset {
        stream: StreamName,
        reason: String,
    },
    /// The client may not follow this stream (any more): its access was removed, or it never had it. Nothing
    /// more of the stream comes on this connection; the client drops what it holds of it.
    Revoked {
        stream: StreamName,
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
    /// The connection's session ended (signed out, or expired): sign in again.
    pub const SESSION_ENDED: u16 = 4001;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_checked_strings() {
        let id = Uuid::from_u128(7);
        let name = StreamName::new(format!("board:{id}")).unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), format!("\"board:{id}\""));
        assert_eq!(serde_json::from_str::<StreamName>(&format!("\"board:{id}\"")).unwrap(), name);
        assert!(serde_json::from_str::<StreamName>("\"\"").is_err());
        assert!(serde_json::from_str::<StreamName>("\"a b\"").is_err());
        assert!(StreamName::new("x".repeat(129)).is_err());
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    enum Op {
        Renamed { title: String },
    }

    #[test]
    fn a_change_is_flat_json() {
        let change = Change {
            stream: StreamName::new("boards").unwrap(),
            cursor: 3,
            at_ms: 1,
            write_id: None,
            op: Op::Renamed { title: "x".into() },
        };
        let v = serde_json::to_value(&change).unwrap();
        assert_eq!(v["op"], "renamed");
        assert_eq!(v["cursor"], 3);
        assert_eq!(serde_json::from_value::<Change<Op>>(v).unwrap(), change);
    }

    /// A change as serde's `flatten` reads it: the reference for the hand-written `Deserialize`.
    #[derive(Debug, PartialEq, Deserialize)]
    struct Flattened<Op> {
        stream: StreamName,
        cursor: Cursor,
        at_ms: u64,
        #[serde(default)]
        write_id: Option<Uuid>,
        #[serde(flatten)]
        op: Op,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, crate::TagFirstDeserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    enum TagFirstOp {
        Renamed { title: String },
        Moved { to: u32 },
    }

    #[test]
    fn a_change_reads_as_serde_s_flatten_would_in_any_order() {
        fn same<Op: for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(json: &str) {
            let reference = serde_json::from_str::<Flattened<Op>>(json);
            let ours = serde_json::from_str::<Change<Op>>(json);
            match (reference, ours) {
                (Ok(r), Ok(o)) => {
                    assert_eq!(
                        (r.stream, r.cursor, r.at_ms, r.write_id, r.op),
                        (o.stream, o.cursor, o.at_ms, o.write_id, o.op),
                        "{json}"
                    )
                }
                (Err(_), Err(_)) => {}
                (r, o) => panic!("{json}: serde says {r:?}, ours {o:?}"),
            }
        }
        let id = Uuid::from_u128(5);
        for json in [
            r#"{"stream":"boards","cursor":3,"at_ms":1,"op":"renamed","title":"x"}"#.to_owned(),
            format!(r#"{{"stream":"boards","cursor":3,"at_ms":1,"write_id":"{id}","op":"moved","to":2}}"#),
            r#"{"stream":"boards","cursor":3,"at_ms":1,"write_id":null,"op":"renamed","title":"x"}"#.to_owned(),
            r#"{"op":"renamed","title":"x","stream":"boards","cursor":3,"at_ms":1}"#.to_owned(),
            r#"{"cursor":3,"title":"x","stream":"boards","op":"renamed","at_ms":1}"#.to_owned(),
            r#"{"at_ms":1,"to":7,"cursor":3,"op":"moved","stream":"boards"}"#.to_owned(),
            // Refused alike: a missing field of either, a duplicate, a bad stream name, an unknown op, not a map.
            r#"{"cursor":3,"at_ms":1,"op":"renamed","title":"x"}"#.to_owned(),
            r#"{"stream":"boards","cursor":3,"at_ms":1}"#.to_owned(),
            r#"{"stream":"boards","cursor":3,"at_ms":1,"op":"renamed"}"#.to_owned(),
            r#"{"stream":"boards","cursor":3,"cursor":4,"at_ms":1,"op":"renamed","title":"x"}"#.to_owned(),
            r#"{"stream":"boards","cursor":3,"at_ms":1,"op":"renamed","title":"x","cursor":4}"#.to_owned(),
            r#"{"stream":"no spaces","cursor":3,"at_ms":1,"op":"renamed","title":"x"}"#.to_owned(),
            r#"{"stream":"boards","cursor":3,"at_ms":1,"op":"shouted","title":"x"}"#.to_owned(),
            r#"{"stream":"boards","cursor":-3,"at_ms":1,"op":"renamed","title":"x"}"#.to_owned(),
            r#"[1,2]"#.to_owned(),
        ] {
            same::<Op>(&json);
            same::<TagFirstOp>(&json);
        }
    }

    #[test]
    fn server_messages_round_trip_tag_first_and_from_values() {
        let change = Change {
            stream: StreamName::new("boards").unwrap(),
            cursor: 3,
            at_ms: 1,
            write_id: Some(Uuid::from_u128(9)),
            op: TagFirstOp::Moved { to: 4 },
        };
        for msg in [
            ServerMessage::Hello { log_id: Uuid::from_u128(1), heartbeat_ms: 30_000 },
            ServerMessage::Changes { stream: change.stream.clone(), changes: vec![change.clone(), change] },
            ServerMessage::Synced { stream: StreamName::new("boards").unwrap(), cursor: 8 },
            ServerMessage::Revoked { stream: StreamName::new("boards").unwrap(), reason: "gone".into() },
            ServerMessage::Pong { nonce: 2 },
        ] {
            let text = serde_json::to_string(&msg).unwrap();
            assert!(text.starts_with(r#"{"type":"#), "{text}");
            assert_eq!(serde_json::from_str::<ServerMessage<TagFirstOp>>(&text).unwrap(), msg);
            let value = serde_json::to_value(&msg).unwrap();
            assert_eq!(serde_json::from_value::<ServerMessage<TagFirstOp>>(value).unwrap(), msg);
        }
        assert!(serde_json::from_str::<ServerMessage<TagFirstOp>>(r#"{"type":"pong"}"#).is_err());
        assert!(serde_json::from_str::<ServerMessage<TagFirstOp>>(r#"{"type":"shout","nonce":1}"#).is_err());
    }

    #[test]
    fn client_messages_refuse_unknown_shapes() {
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"subscribe","streams":[{"stream":"boards","since":0}]}"#)
                .is_ok()
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"shout"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"ping"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"unsubscribe","streams":["no spaces"]}"#).is_err());
    }
}
