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

/// Whether two ids are the same, as two 64-bit comparisons. `Uuid`'s own `==` compares its 16 bytes with a call to
/// `memcmp`, which in the size-optimised browser build is a byte loop: finding one card among 1,000 by id that way
/// was ~35 µs of every change on a big board. Used where a change scans a board's cards.
#[inline]
pub fn same_id(a: uuid::Uuid, b: uuid::Uuid) -> bool {
    u128::from_ne_bytes(*a.as_bytes()) == u128::from_ne_bytes(*b.as_bytes())
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    #[test]
    fn same_id_is_uuid_equality() {
        let a = Uuid::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert!(super::same_id(a, a));
        for bit in 0..128 {
            let b = Uuid::from_u128(a.as_u128() ^ (1 << bit));
            assert!(!super::same_id(a, b), "ids differing in bit {bit}");
        }
    }
}
