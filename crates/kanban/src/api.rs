//! The Kanban domain as it travels over HTTP: entities and request bodies.
//!
//! Every entity carries a `version`: 1 when created, +1 on every write. Columns and cards carry a `position`,
//! a fractional-index key: ordering is by `(position, id)` in byte order, so moving an item rewrites one row.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub type BoardId = Uuid;
pub type ColumnId = Uuid;
pub type CardId = Uuid;
/// Entity version: starts at 1, +1 on every write.
pub type Version = u64;

/// Reads an optional `base_version`: a JSON integer, or a number with no fraction (`3.0`, which JSON Schema
/// counts as the integer 3 and some encoders write), from 0 to 2^63 − 1 (what the databases store). serde's
/// `u64` alone refuses `3.0` and accepts values no version reaches.
pub fn optional_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Version>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    let value = match (n.as_u64(), n.as_f64()) {
        (Some(v), _) => Some(v),
        (None, Some(f)) if f.fract() == 0.0 && (0.0..9.223_372_036_854_775e18).contains(&f) => Some(f as u64),
        _ => None,
    };
    match value {
        Some(v) if v <= i64::MAX as u64 => Ok(Some(v)),
        _ => Err(D::Error::custom(format_args!("base_version must be an integer from 0 to 2^63-1, not {n}"))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Board {
    pub id: Uuid,
    pub title: String,
    pub version: Version,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Column {
    pub id: Uuid,
    pub board_id: Uuid,
    pub title: String,
    /// Fractional-index key; compare as bytes.
    pub position: String,
    pub version: Version,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Card {
    pub id: Uuid,
    pub board_id: Uuid,
    pub column_id: Uuid,
    pub title: String,
    pub description: String,
    /// Fractional-index key within the column; compare as bytes.
    pub position: String,
    pub version: Version,
}

pub type UserId = Uuid;

/// What a member may do on a board. Ordered: an owner may do all an editor may, an editor all a viewer may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees the board live; changes nothing.
    Viewer,
    /// Changes the board's columns and cards, and its title.
    Editor,
    /// All of that, plus the members and deleting the board. A board always has at least one.
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// A user's membership of a board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    /// The membership's own id (derived from board and user: `Member::id_of`).
    pub id: Uuid,
    pub board_id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub role: Role,
    pub version: Version,
}

impl Member {
    /// The id of `user`'s membership of `board`: the same on every server and client, so a write can name a
    /// membership before it exists.
    pub fn id_of(board: BoardId, user: UserId) -> Uuid {
        Uuid::new_v5(&board, user.as_bytes())
    }
}

/// A signed-in user, as `GET /api/auth/me` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: Uuid,
    pub username: String,
}

/// `POST /api/auth/signup`, `POST /api/auth/signin`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_.-]{3,32}$"))]
    pub username: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 8, max_length = 256))]
    pub password: String,
}

/// `POST /api/auth/password`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 8, max_length = 256))]
    pub new_password: String,
}

/// `POST /api/boards/{id}/members`: adds a user, by username, with a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_.-]{3,32}$"))]
    pub username: String,
    pub role: Role,
}

/// `PATCH /api/boards/{id}/members/{user_id}`: changes a member's role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    pub role: Role,
    #[serde(default, deserialize_with = "optional_version", skip_serializing_if = "Option::is_none")]
    pub base_version: Option<Version>,
}

/// One board with all its columns, cards and members, each list in display order, as of `cursor` in the board's
/// stream (`board:<id>`): follow the feed from there to stay up to date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BoardSnapshot {
    pub board: Board,
    pub columns: Vec<Column>,
    /// Shared, not copied: a copy of a snapshot (a view with pending writes over it, a memo's previous value)
    /// shares its cards with the original, and a change copies only the card it changes (`Arc::make_mut`).
    /// Comparing two copies compares pointers first (`Arc<T: Eq>`), so an unchanged card costs no string compare.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Card>))]
    pub cards: Vec<Arc<Card>>,
    /// Who may see the board, and do what (by username).
    #[serde(default)]
    pub members: Vec<Member>,
    /// The change log this snapshot belongs to.
    pub log_id: Uuid,
    pub cursor: syncline_protocol::Cursor,
}

/// `GET /api/boards/{id}/summary`: figures the server computes over a board (a query a client cannot bring up
/// to date from a change alone, so it is refetched when the board changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BoardSummary {
    pub board_id: Uuid,
    pub columns: Vec<ColumnSummary>,
    pub total_cards: u64,
    /// Cards with a non-empty description.
    pub described_cards: u64,
    pub cursor: syncline_protocol::Cursor,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ColumnSummary {
    pub column_id: Uuid,
    pub title: String,
    pub cards: u64,
}

/// `GET /api/boards`: the boards the signed-in user is a member of, as of `cursor` in their `boards` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BoardList {
    pub boards: Vec<Board>,
    pub log_id: Uuid,
    pub cursor: syncline_protocol::Cursor,
}

impl BoardSnapshot {
    /// `user`'s role on this board, if a member.
    pub fn role_of(&self, user: UserId) -> Option<Role> {
        self.members.iter().find(|m| m.user_id == user).map(|m| m.role)
    }

    /// The cards of one column, in order.
    pub fn cards_in(&self, column: Uuid) -> impl Iterator<Item = &Card> {
        self.cards.iter().map(|c| &**c).filter(move |c| crate::same_id(c.column_id, column))
    }
}

/// `POST /api/boards`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateBoard {
    /// Client-chosen id (lets an offline client refer to what it created); the server picks one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S", max_length = 200))]
    pub title: String,
}

/// `PATCH /api/boards/{id}`, `PATCH /api/columns/{id}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Rename {
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S", max_length = 200))]
    pub title: String,
    /// When present, the write is refused with 409 unless the entity is still at this version.
    #[serde(default, deserialize_with = "optional_version", skip_serializing_if = "Option::is_none")]
    pub base_version: Option<Version>,
}

/// `POST /api/boards/{id}/columns` — appended after the last column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateColumn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S", max_length = 200))]
    pub title: String,
}

/// `POST /api/columns/{id}/move` — place the column right after `after_column_id`, or first when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MoveColumn {
    #[serde(default)]
    pub after_column_id: Option<Uuid>,
    #[serde(default, deserialize_with = "optional_version", skip_serializing_if = "Option::is_none")]
    pub base_version: Option<Version>,
}

/// `POST /api/columns/{id}/cards` — appended at the end of the column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateCard {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S", max_length = 200))]
    pub title: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 10000))]
    pub description: String,
}

/// `PATCH /api/cards/{id}` — only the fields present change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateCard {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S", max_length = 200))]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 10000))]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "optional_version", skip_serializing_if = "Option::is_none")]
    pub base_version: Option<Version>,
}

/// `POST /api/cards/{id}/move` — into `column_id` (same board), right after `after_card_id`, or first when
/// absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MoveCard {
    pub column_id: Uuid,
    #[serde(default)]
    pub after_card_id: Option<Uuid>,
    #[serde(default, deserialize_with = "optional_version", skip_serializing_if = "Option::is_none")]
    pub base_version: Option<Version>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<CreateBoard>(r#"{"title":"x","titel":"y"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn a_base_version_may_be_written_as_an_integral_number_and_stays_within_what_is_stored() {
        let v = |json: &str| serde_json::from_str::<UpdateCard>(json).map(|u| u.base_version);
        assert_eq!(v(r#"{"base_version": 3}"#).unwrap(), Some(3));
        assert_eq!(v(r#"{"base_version": 3.0}"#).unwrap(), Some(3));
        assert_eq!(v(r#"{"base_version": null}"#).unwrap(), None);
        assert_eq!(v(r#"{}"#).unwrap(), None);
        assert_eq!(v(r#"{"base_version": 9223372036854775807}"#).unwrap(), Some(i64::MAX as u64));
        // Found by the schema fuzzer: serde_json's default float parser read this as ...305.5 and refused it
        // (the server turns on `float_roundtrip`).
        assert_eq!(v(r#"{"base_version": 3798805622191306.0}"#).unwrap(), Some(3_798_805_622_191_306));
        for refused in ["3.5", "-1", "9223372036854775808", "1e300", "\"3\""] {
            assert!(v(&format!(r#"{{"base_version": {refused}}}"#)).is_err(), "{refused} was accepted");
        }
        let op: crate::WriteOp = serde_json::from_str(
            r#"{"type":"delete_card","id":"6f1c0c39-3a53-4b8e-9d1e-3b8a2b1c0d11","base_version":2.0}"#,
        )
        .unwrap();
        assert!(matches!(op, crate::WriteOp::DeleteCard { base_version: Some(2), .. }));
    }

    #[test]
    fn optional_fields_default() {
        let m: MoveCard = serde_json::from_str(r#"{"column_id":"6f1c0c39-3a53-4b8e-9d1e-3b8a2b1c0d11"}"#).unwrap();
        assert_eq!(m.after_card_id, None);
        assert_eq!(m.base_version, None);
    }
}
