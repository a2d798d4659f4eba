//! The Kanban domain as it travels over HTTP: entities and request bodies.
//!
//! Every entity carries a `version`: 1 when created, +1 on every write. Columns and cards carry a `position`,
//! a fractional-index key: ordering is by `(position, id)` in byte order, so moving an item rewrites one row.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub type BoardId = Uuid;
pub type ColumnId = Uuid;
pub type CardId = Uuid;
/// Entity version: starts at 1, +1 on every write.
pub type Version = u64;

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

/// One board with all its columns and cards, each list in display order, as of `cursor` in the board's
/// stream (`board:<id>`): follow the feed from there to stay up to date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BoardSnapshot {
    pub board: Board,
    pub columns: Vec<Column>,
    pub cards: Vec<Card>,
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

/// `GET /api/boards`: every board, as of `cursor` in the `boards` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BoardList {
    pub boards: Vec<Board>,
    pub log_id: Uuid,
    pub cursor: syncline_protocol::Cursor,
}

impl BoardSnapshot {
    /// The cards of one column, in order.
    pub fn cards_in(&self, column: Uuid) -> impl Iterator<Item = &Card> {
        self.cards.iter().filter(move |c| c.column_id == column)
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
    pub title: String,
}

/// `PATCH /api/boards/{id}`, `PATCH /api/columns/{id}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Rename {
    pub title: String,
    /// When present, the write is refused with 409 unless the entity is still at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<Version>,
}

/// `POST /api/boards/{id}/columns` — appended after the last column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateColumn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    pub title: String,
}

/// `POST /api/columns/{id}/move` — place the column right after `after_column_id`, or first when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MoveColumn {
    #[serde(default)]
    pub after_column_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<Version>,
}

/// `POST /api/columns/{id}/cards` — appended at the end of the column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateCard {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    pub title: String,
    #[serde(default)]
    pub description: String,
}

/// `PATCH /api/cards/{id}` — only the fields present change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateCard {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    fn optional_fields_default() {
        let m: MoveCard = serde_json::from_str(r#"{"column_id":"6f1c0c39-3a53-4b8e-9d1e-3b8a2b1c0d11"}"#).unwrap();
        assert_eq!(m.after_card_id, None);
        assert_eq!(m.base_version, None);
    }
}
