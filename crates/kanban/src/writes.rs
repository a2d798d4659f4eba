//! Kanban writes as data: every write the API accepts, as one enum, so the REST routes, the batch endpoint and a
//! client's outbox all describe a write the same way.

use serde::Serialize;
use uuid::Uuid;

use crate::{
    AddMember, CreateBoard, CreateCard, CreateColumn, MoveCard, MoveColumn, Rename, SetRole, UpdateCard, Version,
};

/// One write. `base_version` (where present) makes the write conditional on the entity's current version.
#[derive(Debug, Clone, PartialEq, Serialize, syncline_protocol::TagFirstDeserialize)]
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
        #[serde(default, deserialize_with = "crate::api::optional_version", skip_serializing_if = "Option::is_none")]
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
        #[serde(default, deserialize_with = "crate::api::optional_version", skip_serializing_if = "Option::is_none")]
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
        #[serde(default, deserialize_with = "crate::api::optional_version", skip_serializing_if = "Option::is_none")]
        base_version: Option<Version>,
    },
    /// An owner adds a member (owners only).
    AddMember {
        board_id: Uuid,
        #[serde(flatten)]
        body: AddMember,
    },
    /// An owner changes a member's role (a board keeps at least one owner).
    SetMemberRole {
        board_id: Uuid,
        user_id: Uuid,
        #[serde(flatten)]
        body: SetRole,
    },
    /// An owner removes a member, or a member leaves (a board keeps at least one owner).
    RemoveMember { board_id: Uuid, user_id: Uuid },
}

/// A Kanban write with its idempotency key.
pub type Write = syncline_protocol::Write<WriteOp>;
/// `POST /api/writes` with Kanban writes.
pub type WriteBatch = syncline_protocol::WriteBatch<WriteOp>;

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
