//! The Kanban app's streams and changes (the feed itself is `syncline_protocol::feed`):
//! - `boards`: the signed-in user's list of boards (created, renamed, deleted; added to, removed from) — each
//!   user's own stream, which the server serves under this one name;
//! - `board:<id>`: everything on one board (the board itself, its columns, cards and members).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use syncline_protocol::StreamName;

use crate::{Board, BoardId, Card, Column, Member};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, syncline_protocol::TagFirstDeserialize)]
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
    /// A card created (or, from older servers, changed): the whole card.
    CardUpserted {
        card: Card,
    },
    /// A card changed: only the fields that changed, and its new `version` (the copy it applies to must be at
    /// `version - 1`, else it cannot be applied and the board is refetched). A title edit of a card with a long
    /// description does not send the description to every subscriber. (Its board is the stream's.)
    CardPatched {
        id: Uuid,
        version: crate::Version,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        column_id: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<String>,
    },
    CardDeleted {
        id: Uuid,
        board_id: Uuid,
    },
    /// A member was added, or their role changed.
    MemberUpserted {
        member: Member,
    },
    /// A member was removed: from this change on, nothing of the board reaches them.
    MemberRemoved {
        board_id: Uuid,
        user_id: Uuid,
    },
}

/// A committed Kanban change.
pub type Change = syncline_protocol::Change<ChangeOp>;
/// A feed message carrying Kanban changes.
pub type ServerMessage = syncline_protocol::ServerMessage<ChangeOp>;

impl From<StreamId> for StreamName {
    fn from(id: StreamId) -> StreamName {
        StreamName::new(id.to_string()).expect("Kanban stream names are valid")
    }
}

impl TryFrom<&StreamName> for StreamId {
    type Error = String;

    fn try_from(name: &StreamName) -> Result<StreamId, String> {
        name.as_str().parse()
    }
}

impl StreamId {
    /// The stream's name on the wire.
    pub fn name(self) -> StreamName {
        self.into()
    }
}

impl PartialEq<StreamId> for StreamName {
    fn eq(&self, other: &StreamId) -> bool {
        StreamId::try_from(self).is_ok_and(|id| id == *other)
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
            stream: StreamId::Boards.name(),
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
}
