//! Writes as data: every write the API accepts, as one enum, so the REST routes, the batch endpoint and a
//! client's outbox all describe a write the same way.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{CreateBoard, CreateCard, CreateColumn, MoveCard, MoveColumn, Rename, UpdateCard, Version};

/// One write. `base_version` (where present) makes the write conditional on the entity's current version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WriteOp {
    CreateBoard {
        #[serde(flatten)]
        body: CreateBoard,
    },
    RenameBoard {
        id: Uuid,
        #[serde(flatten)]
        body: Rename,
    },
    DeleteBoard {
        id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_version: Option<Version>,
    },
    CreateColumn {
        board_id: Uuid,
        #[serde(flatten)]
        body: CreateColumn,
    },
    RenameColumn {
        id: Uuid,
        #[serde(flatten)]
        body: Rename,
    },
    MoveColumn {
        id: Uuid,
        #[serde(flatten)]
        body: MoveColumn,
    },
    DeleteColumn {
        id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_version: Option<Version>,
    },
    CreateCard {
        column_id: Uuid,
        #[serde(flatten)]
        body: CreateCard,
    },
    UpdateCard {
        id: Uuid,
        #[serde(flatten)]
        body: UpdateCard,
    },
    MoveCard {
        id: Uuid,
        #[serde(flatten)]
        body: MoveCard,
    },
    DeleteCard {
        id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_version: Option<Version>,
    },
}

/// A write with its idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Write {
    /// Client-generated, unique per write. Sending the same id again returns the first outcome and applies
    /// nothing twice.
    pub write_id: Uuid,
    pub op: WriteOp,
}

/// `POST /api/writes`: several queued writes, applied in order, each on its own (one failing does not stop
/// the rest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WriteBatch {
    pub writes: Vec<Write>,
}

/// The outcome of one write: the HTTP status it had (or would have had alone) and its JSON body (the entity,
/// or an `ApiError`, with `current` for a conflict).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteOutcome {
    pub write_id: Uuid,
    pub status: u16,
    pub body: serde_json::Value,
    /// Where in each stream the entity in `body` stands: for an applied write, the cursor its last change in
    /// each stream it touched committed at; for a conflict, the stream's head when `current` was read. A client
    /// whose copy of a stream is already at or past that cursor has that state — and maybe something newer,
    /// such as a later delete — so it must not lay `body` over its copy. Empty for other refusals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at: Vec<StreamPosition>,
}

/// A cursor in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamPosition {
    pub stream: crate::StreamId,
    pub cursor: crate::Cursor,
}

impl StreamPosition {
    /// The last cursor per stream of a write's changes, in the order the streams first appear.
    pub fn of(changes: &[crate::Change]) -> Vec<StreamPosition> {
        let mut out: Vec<StreamPosition> = Vec::new();
        for c in changes {
            match out.iter_mut().find(|x| x.stream == c.stream) {
                Some(x) => x.cursor = x.cursor.max(c.cursor),
                None => out.push(StreamPosition { stream: c.stream, cursor: c.cursor }),
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteBatchResult {
    pub results: Vec<WriteOutcome>,
}

/// Most writes accepted in one batch.
pub const MAX_BATCH_WRITES: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_tagged_and_flat() {
        let json = r#"{"write_id":"00000000-0000-0000-0000-000000000001",
            "op":{"type":"update_card","id":"00000000-0000-0000-0000-000000000002","title":"x","base_version":3}}"#;
        let w: Write = serde_json::from_str(json).unwrap();
        match w.op {
            WriteOp::UpdateCard { body, .. } => {
                assert_eq!(body.title.as_deref(), Some("x"));
                assert_eq!(body.base_version, Some(3));
            }
            other => panic!("{other:?}"),
        }
    }
}
