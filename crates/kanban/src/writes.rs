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

    /// Every write reads back as written — from text (the type first, the fast path) and from a `Value` (keys
    /// sorted, the slow path) — and the refusals the API promises still come (unknown fields, missing ones).
    #[test]
    fn every_write_reads_back_in_any_key_order_and_bad_ones_are_refused() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let ops = [
            WriteOp::CreateBoard { body: CreateBoard { id: Some(a), title: "b".into() } },
            WriteOp::RenameBoard { id: a, body: Rename { title: "r".into(), base_version: Some(2) } },
            WriteOp::DeleteBoard { id: a, base_version: None },
            WriteOp::CreateColumn { board_id: a, body: CreateColumn { id: None, title: "c".into() } },
            WriteOp::RenameColumn { id: a, body: Rename { title: "r".into(), base_version: None } },
            WriteOp::MoveColumn { id: a, body: MoveColumn { after_column_id: Some(b), base_version: Some(1) } },
            WriteOp::DeleteColumn { id: a, base_version: Some(4) },
            WriteOp::CreateCard {
                column_id: a,
                body: CreateCard { id: Some(b), title: "t".into(), description: "d".into() },
            },
            WriteOp::UpdateCard {
                id: a,
                body: UpdateCard { title: None, description: Some("d".into()), base_version: Some(3) },
            },
            WriteOp::MoveCard { id: a, body: MoveCard { column_id: b, after_card_id: None, base_version: None } },
            WriteOp::DeleteCard { id: a, base_version: None },
            WriteOp::AddMember { board_id: a, body: AddMember { username: "u".into(), role: crate::Role::Editor } },
            WriteOp::SetMemberRole {
                board_id: a,
                user_id: b,
                body: SetRole { role: crate::Role::Viewer, base_version: None },
            },
            WriteOp::RemoveMember { board_id: a, user_id: b },
        ];
        for op in ops {
            let text = serde_json::to_string(&op).unwrap();
            assert_eq!(serde_json::from_str::<WriteOp>(&text).unwrap(), op, "{text}");
            assert_eq!(serde_json::from_value::<WriteOp>(serde_json::to_value(&op).unwrap()).unwrap(), op, "{text}");
        }
        let card = format!(r#""column_id":"{a}","title":"t""#);
        for (json, error) in [
            (format!(r#"{{"type":"create_card",{card},"titel":"x"}}"#), "unknown field `titel`"),
            (format!(r#"{{"titel":"x",{card},"type":"create_card"}}"#), "unknown field `titel`"),
            (r#"{"type":"create_card","title":"t"}"#.to_owned(), "missing field `column_id`"),
            (format!(r#"{{"type":"create_card","column_id":"{a}"}}"#), "missing field `title`"),
            (format!(r#"{{"type":"create_card",{card},"column_id":"{a}"}}"#), "duplicate field `column_id`"),
            (format!(r#"{{"type":"create_cart",{card}}}"#), "unknown variant `create_cart`"),
            (format!(r#"{{"type":"delete_card","id":"{a}","extra":1}}"#), "unknown field `extra`"),
        ] {
            let e = serde_json::from_str::<WriteOp>(&json).expect_err(&json).to_string();
            assert!(e.contains(error), "{json}: {e}");
        }
    }
}
