//! Writes as data, with their idempotency keys, and their outcomes: the batch endpoint (`POST /api/writes`) and a
//! client's outbox describe a write the same way. What a write does (`op`) is the app's: these types are generic
//! over it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Change, Cursor, StreamName};

/// A write with its idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Write<Op> {
    /// Client-generated, unique per write. Sending the same id again returns the first outcome and applies
    /// nothing twice. A UUIDv7 carries the time it was made: the server refuses one older than it remembers
    /// write ids (`write_expired`).
    pub write_id: Uuid,
    pub op: Op,
}

/// `POST /api/writes`: several queued writes, applied in order, each on its own (one failing does not stop
/// the rest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WriteBatch<Op> {
    pub writes: Vec<Write<Op>>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamPosition {
    pub stream: StreamName,
    pub cursor: Cursor,
}

impl StreamPosition {
    /// The last cursor per stream of a write's changes, in the order the streams first appear.
    pub fn of<Op>(changes: &[Change<Op>]) -> Vec<StreamPosition> {
        let mut out: Vec<StreamPosition> = Vec::new();
        for c in changes {
            match out.iter_mut().find(|x| x.stream == c.stream) {
                Some(x) => x.cursor = x.cursor.max(c.cursor),
                None => out.push(StreamPosition { stream: c.stream.clone(), cursor: c.cursor }),
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
