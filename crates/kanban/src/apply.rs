//! The Kanban data as the sync engine handles it: applying feed changes (deltas) and the entities writes
//! return to cached boards, and laying pending writes over server data (the optimistic view).
//!
//! Everything is version-checked: an entity is replaced only by a newer version of itself, so applying a change
//! twice, or a change older than a snapshot, changes nothing.

use syncline_engine::collections::{Set, sort_by};

use serde_json::Value;
use std::sync::Arc;

use syncline_engine::Applied;
use uuid::Uuid;

use crate::model::QueryData;
use crate::{Board, BoardList, BoardSnapshot, Card, Change, ChangeOp, Column, Member, WriteOp};

fn upsert<T: Clone>(list: &mut Vec<T>, item: &T, id: impl Fn(&T) -> Uuid, version: impl Fn(&T) -> u64) -> bool {
    let wanted = id(item);
    match list.iter_mut().find(|x| crate::same_id(id(x), wanted)) {
        Some(existing) if version(existing) >= version(item) => false,
        Some(existing) => {
            *existing = item.clone();
            true
        }
        None => {
            list.push(item.clone());
            true
        }
    }
}

fn remove<T>(list: &mut Vec<T>, target: Uuid, id: impl Fn(&T) -> Uuid) -> bool {
    let before = list.len();
    list.retain(|x| !crate::same_id(id(x), target));
    list.len() != before
}

/// Puts columns and cards back in display order: columns by (position, id); cards grouped by column order,
/// then by (position, id); members by role, then username.
pub fn normalize(snap: &mut BoardSnapshot) {
    // Members as the server lists them: owners, editors, viewers, each by username.
    let rank = |r: crate::Role| match r {
        crate::Role::Owner => 0,
        crate::Role::Editor => 1,
        crate::Role::Viewer => 2,
    };
    // Usernames are ASCII (the server refuses others), so ASCII case-folding is the same and keeps Unicode's case
    // tables out of the browser's wasm.
    // (`collections::sort_by`: one copy of the sort's code for every type sorted.)
    let member_key = |m: &Member| (rank(m.role), m.username.to_ascii_lowercase());
    sort_by(&mut snap.members, |a, b| member_key(a).cmp(&member_key(b)));
    sort_by(&mut snap.columns, |a, b| (&a.position, a.id).cmp(&(&b.position, b.id)));
    let column_index = |c: &Card| snap.columns.iter().position(|col| col.id == c.column_id).unwrap_or(usize::MAX);
    let mut cards = std::mem::take(&mut snap.cards);
    sort_by(&mut cards, |a, b| (column_index(a), &a.position, a.id).cmp(&(column_index(b), &b.position, b.id)));
    snap.cards = cards;
}

/// Applies one feed change to a query's data.
pub fn apply_change(data: &mut QueryData, change: &Change) -> Applied {
    let result = match data {
        QueryData::Boards(list) => apply_to_list(list, &change.op),
        QueryData::Board(snap) => match &change.op {
            ChangeOp::BoardDeleted { id } if *id == snap.board.id => {
                *data = QueryData::Gone;
                return Applied::Changed;
            }
            op => apply_to_board(snap, op),
        },
        QueryData::Summary(_) => Applied::CannotApply,
        QueryData::Gone => Applied::Unchanged,
    };
    match data {
        QueryData::Boards(l) => l.cursor = l.cursor.max(change.cursor),
        QueryData::Board(b) => b.cursor = b.cursor.max(change.cursor),
        _ => {}
    }
    result
}

fn changed(b: bool) -> Applied {
    if b { Applied::Changed } else { Applied::Unchanged }
}

fn apply_to_list(list: &mut BoardList, op: &ChangeOp) -> Applied {
    match op {
        ChangeOp::BoardUpserted { board } => changed(upsert(&mut list.boards, board, |b| b.id, |b| b.version)),
        ChangeOp::BoardDeleted { id } => changed(remove(&mut list.boards, *id, |b| b.id)),
        _ => Applied::Unchanged,
    }
}

fn apply_to_board(snap: &mut BoardSnapshot, op: &ChangeOp) -> Applied {
    let result = match op {
        ChangeOp::BoardUpserted { board } if board.id == snap.board.id => {
            if board.version > snap.board.version {
                snap.board = board.clone();
                Applied::Changed
            } else {
                Applied::Unchanged
            }
        }
        ChangeOp::ColumnUpserted { column } if column.board_id == snap.board.id => {
            changed(upsert(&mut snap.columns, column, |c| c.id, |c| c.version))
        }
        ChangeOp::ColumnDeleted { id, .. } => {
            let gone_cards = remove(&mut snap.cards, *id, |c| c.column_id);
            changed(remove(&mut snap.columns, *id, |c| c.id) || gone_cards)
        }
        ChangeOp::CardUpserted { card } if card.board_id == snap.board.id => {
            if !snap.columns.iter().any(|c| c.id == card.column_id) {
                return Applied::CannotApply;
            }
            changed(upsert(&mut snap.cards, &Arc::new(card.clone()), |c| c.id, |c| c.version))
        }
        ChangeOp::CardPatched { id, version, title, description, column_id, position } => {
            if column_id.is_some_and(|col| !snap.columns.iter().any(|c| c.id == col)) {
                return Applied::CannotApply;
            }
            let Some(card) = snap.cards.iter_mut().find(|c| crate::same_id(c.id, *id)) else {
                return Applied::CannotApply;
            };
            if card.version >= *version {
                return Applied::Unchanged; // already there (the write's own answer came first)
            }
            if card.version + 1 != *version {
                return Applied::CannotApply; // a change of this card is missing from this copy
            }
            // This card alone is copied, if another copy of the snapshot shares it.
            let card = Arc::make_mut(card);
            card.version = *version;
            if let Some(title) = title {
                card.title.clone_from(title);
            }
            if let Some(description) = description {
                card.description.clone_from(description);
            }
            if let Some(column_id) = column_id {
                card.column_id = *column_id;
            }
            if let Some(position) = position {
                card.position.clone_from(position);
            }
            Applied::Changed
        }
        ChangeOp::CardDeleted { id, .. } => changed(remove(&mut snap.cards, *id, |c| c.id)),
        ChangeOp::MemberUpserted { member } if member.board_id == snap.board.id => {
            changed(upsert(&mut snap.members, member, |m| m.id, |m| m.version))
        }
        ChangeOp::MemberRemoved { board_id, user_id } if *board_id == snap.board.id => {
            changed(remove(&mut snap.members, Member::id_of(*board_id, *user_id), |m| m.id))
        }
        _ => Applied::Unchanged,
    };
    // A patch of a card's text leaves the order as it was: no need to sort thousands of cards for it.
    let keeps_order = matches!(op, ChangeOp::CardPatched { column_id: None, position: None, .. });
    if result == Applied::Changed && !keeps_order {
        normalize(snap);
    }
    result
}

/// Applies the entity a confirmed write returned (it may arrive before its change on the feed).
pub fn apply_entity(data: &mut QueryData, entity: &Value) -> Applied {
    let op = if let Ok(member) = serde_json::from_value::<Member>(entity.clone()) {
        ChangeOp::MemberUpserted { member }
    } else if let Ok(card) = serde_json::from_value::<Card>(entity.clone()) {
        ChangeOp::CardUpserted { card }
    } else if let Ok(column) = serde_json::from_value::<Column>(entity.clone()) {
        ChangeOp::ColumnUpserted { column }
    } else if let Ok(board) = serde_json::from_value::<Board>(entity.clone()) {
        ChangeOp::BoardUpserted { board }
    } else {
        return Applied::Unchanged;
    };
    match data {
        QueryData::Boards(list) => apply_to_list(list, &op),
        QueryData::Board(snap) => apply_to_board(snap, &op),
        _ => Applied::Unchanged,
    }
}

/// The entity a write is about: its per-entity order and its pending marker key.
pub fn entity_of(op: &WriteOp) -> Uuid {
    match op {
        WriteOp::CreateBoard { body } => body.id.unwrap_or_default(),
        WriteOp::CreateColumn { body, .. } => body.id.unwrap_or_default(),
        WriteOp::CreateCard { body, .. } => body.id.unwrap_or_default(),
        WriteOp::RenameBoard { id, .. } | WriteOp::DeleteBoard { id, .. } => *id,
        WriteOp::RenameColumn { id, .. } | WriteOp::MoveColumn { id, .. } | WriteOp::DeleteColumn { id, .. } => *id,
        WriteOp::UpdateCard { id, .. } | WriteOp::MoveCard { id, .. } | WriteOp::DeleteCard { id, .. } => *id,
        // A member is added by username (its user id is the server's to know): named by board and username.
        WriteOp::AddMember { board_id, body } => {
            Uuid::new_v5(board_id, format!("username:{}", body.username.to_ascii_lowercase()).as_bytes())
        }
        WriteOp::SetMemberRole { board_id, user_id, .. } | WriteOp::RemoveMember { board_id, user_id } => {
            Member::id_of(*board_id, *user_id)
        }
    }
}

/// The fields a write changes, for conflict resolution ("*" = the whole entity).
pub fn fields_written(op: &WriteOp) -> Set<String> {
    let mut f = Set::new();
    match op {
        WriteOp::UpdateCard { body, .. } => {
            if body.title.is_some() {
                f.insert("title".into());
            }
            if body.description.is_some() {
                f.insert("description".into());
            }
        }
        WriteOp::MoveCard { .. } => {
            f.insert("column_id".into());
            f.insert("position".into());
        }
        WriteOp::MoveColumn { .. } => {
            f.insert("position".into());
        }
        WriteOp::RenameBoard { .. } | WriteOp::RenameColumn { .. } => {
            f.insert("title".into());
        }
        WriteOp::SetMemberRole { .. } => {
            f.insert("role".into());
        }
        _ => {
            f.insert("*".into());
        }
    }
    f
}

/// The `base_version` field of a write, for the kinds of write that have one (not creates).
pub fn base_version_slot(op: &mut WriteOp) -> Option<&mut Option<u64>> {
    match op {
        WriteOp::RenameBoard { body, .. } | WriteOp::RenameColumn { body, .. } => Some(&mut body.base_version),
        WriteOp::MoveColumn { body, .. } => Some(&mut body.base_version),
        WriteOp::UpdateCard { body, .. } => Some(&mut body.base_version),
        WriteOp::MoveCard { body, .. } => Some(&mut body.base_version),
        WriteOp::DeleteBoard { base_version, .. }
        | WriteOp::DeleteColumn { base_version, .. }
        | WriteOp::DeleteCard { base_version, .. } => Some(base_version),
        WriteOp::SetMemberRole { body, .. } => Some(&mut body.base_version),
        WriteOp::CreateBoard { .. }
        | WriteOp::CreateColumn { .. }
        | WriteOp::CreateCard { .. }
        | WriteOp::AddMember { .. }
        | WriteOp::RemoveMember { .. } => None,
    }
}

/// A position key that sorts after every real one (real keys are hex), for optimistic inserts.
fn pending_position(n: usize) -> String {
    format!("zz{n:08}")
}

/// The board as the user should see it: server data with pending writes laid over, in order.
pub fn overlay_board(snap: &BoardSnapshot, pending: &[&WriteOp]) -> Option<BoardSnapshot> {
    let mut view = snap.clone();
    for (n, w) in pending.iter().enumerate() {
        match w {
            WriteOp::RenameBoard { id, body } if *id == view.board.id => view.board.title = body.title.clone(),
            WriteOp::DeleteBoard { id, .. } if *id == view.board.id => return None,
            WriteOp::CreateColumn { board_id, body } if *board_id == view.board.id => {
                if let Some(id) = body.id.filter(|id| !view.columns.iter().any(|c| c.id == *id)) {
                    view.columns.push(Column {
                        id,
                        board_id: *board_id,
                        title: body.title.clone(),
                        position: pending_position(n),
                        version: 0,
                    });
                }
            }
            WriteOp::RenameColumn { id, body } => {
                if let Some(c) = view.columns.iter_mut().find(|c| c.id == *id) {
                    c.title = body.title.clone();
                }
            }
            WriteOp::MoveColumn { id, body } => {
                if let Some(i) = view.columns.iter().position(|c| c.id == *id) {
                    let col = view.columns.remove(i);
                    let at = match body.after_column_id {
                        None => 0,
                        Some(after) => {
                            view.columns.iter().position(|c| c.id == after).map_or(view.columns.len(), |i| i + 1)
                        }
                    };
                    view.columns.insert(at, col);
                }
            }
            WriteOp::DeleteColumn { id, .. } => {
                view.columns.retain(|c| c.id != *id);
                view.cards.retain(|c| c.column_id != *id);
            }
            WriteOp::CreateCard { column_id, body } => {
                let known_column = view.columns.iter().any(|c| c.id == *column_id);
                if let Some(id) = body.id.filter(|id| known_column && !view.cards.iter().any(|c| c.id == *id)) {
                    let card = Card {
                        id,
                        board_id: view.board.id,
                        column_id: *column_id,
                        title: body.title.clone(),
                        description: body.description.clone(),
                        position: pending_position(n),
                        version: 0,
                    };
                    let at =
                        view.cards.iter().rposition(|c| c.column_id == *column_id).map_or(view.cards.len(), |i| i + 1);
                    view.cards.insert(at, Arc::new(card));
                }
            }
            WriteOp::UpdateCard { id, body } => {
                if let Some(c) = view.cards.iter_mut().find(|c| c.id == *id) {
                    let c = Arc::make_mut(c);
                    if let Some(t) = &body.title {
                        c.title = t.clone();
                    }
                    if let Some(d) = &body.description {
                        c.description = d.clone();
                    }
                }
            }
            WriteOp::MoveCard { id, body } => {
                if !view.columns.iter().any(|c| c.id == body.column_id) {
                    continue;
                }
                if let Some(i) = view.cards.iter().position(|c| c.id == *id) {
                    let mut card = view.cards.remove(i);
                    Arc::make_mut(&mut card).column_id = body.column_id;
                    let at = match body.after_card_id {
                        Some(after) => view.cards.iter().position(|c| c.id == after).map(|i| i + 1),
                        None => None,
                    }
                    .or_else(|| {
                        // First in the column: before its first card, or where the column's cards would start.
                        view.cards.iter().position(|c| c.column_id == body.column_id)
                    })
                    .unwrap_or_else(|| {
                        let col = view.columns.iter().position(|c| c.id == body.column_id).unwrap_or(0);
                        view.cards
                            .iter()
                            .position(|c| view.columns.iter().position(|k| k.id == c.column_id).unwrap_or(0) > col)
                            .unwrap_or(view.cards.len())
                    });
                    view.cards.insert(at, card);
                }
            }
            WriteOp::DeleteCard { id, .. } => view.cards.retain(|c| c.id != *id),
            WriteOp::SetMemberRole { board_id, user_id, body } if *board_id == view.board.id => {
                if let Some(m) = view.members.iter_mut().find(|m| m.user_id == *user_id) {
                    m.role = body.role;
                }
            }
            WriteOp::RemoveMember { board_id, user_id } if *board_id == view.board.id => {
                view.members.retain(|m| m.user_id != *user_id);
            }
            _ => {}
        }
    }
    Some(view)
}

/// The list of boards with pending writes laid over.
pub fn overlay_list(list: &BoardList, pending: &[&WriteOp]) -> BoardList {
    let mut view = list.clone();
    for w in pending {
        match w {
            WriteOp::CreateBoard { body } => {
                if let Some(id) = body.id.filter(|id| !view.boards.iter().any(|b| b.id == *id)) {
                    view.boards.push(Board { id, title: body.title.clone(), version: 0 });
                }
            }
            WriteOp::RenameBoard { id, body } => {
                if let Some(b) = view.boards.iter_mut().find(|b| b.id == *id) {
                    b.title = body.title.clone();
                }
            }
            WriteOp::DeleteBoard { id, .. } => view.boards.retain(|b| b.id != *id),
            _ => {}
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreateCard, MoveCard, StreamId, UpdateCard};

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn board() -> BoardSnapshot {
        let col = |n: u128, pos: &str| Column {
            id: id(n),
            board_id: id(100),
            title: format!("c{n}"),
            position: pos.into(),
            version: 1,
        };
        let card = |n: u128, c: u128, pos: &str| Card {
            id: id(n),
            board_id: id(100),
            column_id: id(c),
            title: format!("card {n}"),
            description: String::new(),
            position: pos.into(),
            version: 1,
        };
        BoardSnapshot {
            board: Board { id: id(100), title: "b".into(), version: 1 },
            columns: vec![col(10, "80"), col(20, "81")],
            cards: vec![card(1, 10, "80").into(), card(2, 10, "81").into(), card(3, 20, "80").into()],
            members: vec![],
            log_id: id(0),
            cursor: 5,
        }
    }

    fn change(cursor: u64, op: ChangeOp) -> Change {
        Change { stream: StreamId::Board(id(100)).name(), cursor, at_ms: 0, write_id: None, op }
    }

    fn titles(snap: &BoardSnapshot) -> Vec<String> {
        snap.cards.iter().map(|c| c.title.clone()).collect()
    }

    #[test]
    fn a_card_change_is_applied_in_place_and_reordered() {
        let mut data = QueryData::Board(board());
        let mut moved = Card::clone(&board().cards[0]);
        moved.column_id = id(20);
        moved.position = "7f".into();
        moved.version = 2;
        assert_eq!(
            apply_change(&mut data, &change(6, ChangeOp::CardUpserted { card: moved.clone() })),
            Applied::Changed
        );
        let QueryData::Board(snap) = &data else { panic!() };
        assert_eq!(titles(snap), vec!["card 2", "card 1", "card 3"]);
        assert_eq!(snap.cursor, 6);
        // The same change again, or an older version, changes nothing.
        assert_eq!(
            apply_change(&mut data, &change(6, ChangeOp::CardUpserted { card: moved.clone() })),
            Applied::Unchanged
        );
        moved.version = 1;
        assert_eq!(apply_change(&mut data, &change(7, ChangeOp::CardUpserted { card: moved })), Applied::Unchanged);
    }

    fn patch(id_: u128, version: u64) -> ChangeOp {
        ChangeOp::CardPatched { id: id(id_), version, title: None, description: None, column_id: None, position: None }
    }

    #[test]
    fn a_card_patch_changes_only_its_fields_and_only_on_the_version_before_it() {
        let mut data = QueryData::Board(board());
        let mut renamed = patch(1, 2);
        if let ChangeOp::CardPatched { title, .. } = &mut renamed {
            *title = Some("renamed".into());
        }
        assert_eq!(apply_change(&mut data, &change(6, renamed.clone())), Applied::Changed);
        let QueryData::Board(snap) = &data else { panic!() };
        let card = snap.cards.iter().find(|c| c.id == id(1)).unwrap();
        assert_eq!((card.title.as_str(), card.version, card.column_id), ("renamed", 2, id(10)));
        // Already at that version (the write's own answer came first): nothing to do.
        let mut again = data.clone();
        if let QueryData::Board(s) = &mut again {
            s.cursor = 6;
        }
        assert_eq!(apply_change(&mut again, &change(7, renamed)), Applied::Unchanged);
        // A move: column and position, re-sorted.
        let mut moved = patch(1, 3);
        if let ChangeOp::CardPatched { column_id, position, .. } = &mut moved {
            *column_id = Some(id(20));
            *position = Some("7f".into());
        }
        assert_eq!(apply_change(&mut data, &change(7, moved)), Applied::Changed);
        let QueryData::Board(snap) = &data else { panic!() };
        assert_eq!(titles(snap), vec!["card 2", "renamed", "card 3"]);
        // A version skipped (a change of the card missing here), an unknown card, an unknown column: refetch.
        assert_eq!(apply_change(&mut data, &change(8, patch(1, 5))), Applied::CannotApply);
        let mut data = QueryData::Board(board());
        assert_eq!(apply_change(&mut data, &change(6, patch(42, 2))), Applied::CannotApply);
        let mut elsewhere = patch(1, 2);
        if let ChangeOp::CardPatched { column_id, .. } = &mut elsewhere {
            *column_id = Some(id(99));
        }
        assert_eq!(apply_change(&mut data, &change(6, elsewhere)), Applied::CannotApply);
    }

    #[test]
    fn a_card_in_an_unknown_column_cannot_be_applied() {
        let mut data = QueryData::Board(board());
        let mut card = Card::clone(&board().cards[0]);
        card.column_id = id(99);
        card.version = 2;
        assert_eq!(apply_change(&mut data, &change(6, ChangeOp::CardUpserted { card })), Applied::CannotApply);
    }

    #[test]
    fn deleting_a_column_drops_its_cards_and_deleting_the_board_empties_the_query() {
        let mut data = QueryData::Board(board());
        apply_change(&mut data, &change(6, ChangeOp::ColumnDeleted { id: id(10), board_id: id(100) }));
        let QueryData::Board(snap) = &data else { panic!() };
        assert_eq!(titles(snap), vec!["card 3"]);
        assert_eq!(apply_change(&mut data, &change(7, ChangeOp::BoardDeleted { id: id(100) })), Applied::Changed);
        assert_eq!(data, QueryData::Gone);
    }

    fn pending(op: WriteOp) -> WriteOp {
        op
    }

    #[test]
    fn pending_writes_are_laid_over_in_order() {
        let snap = board();
        let writes = [
            pending(WriteOp::CreateCard {
                column_id: id(20),
                body: CreateCard { id: Some(id(4)), title: "new".into(), description: String::new() },
            }),
            pending(WriteOp::UpdateCard {
                id: id(1),
                body: UpdateCard { title: Some("renamed".into()), ..Default::default() },
            }),
            pending(WriteOp::MoveCard {
                id: id(1),
                body: MoveCard { column_id: id(20), after_card_id: Some(id(3)), base_version: None },
            }),
        ];
        let refs: Vec<&WriteOp> = writes.iter().collect();
        let view = overlay_board(&snap, &refs).unwrap();
        assert_eq!(titles(&view), vec!["card 2", "card 3", "renamed", "new"]);
        assert_eq!(view.cards[2].column_id, id(20));
        assert_eq!(snap, board(), "the server data itself is untouched");
    }

    #[test]
    fn conflicts_compare_the_fields_each_side_changed() {
        let base = serde_json::to_value(&board().cards[0]).unwrap();
        let mut theirs = Card::clone(&board().cards[0]);
        theirs.description = "theirs".into();
        theirs.version = 2;
        let current = serde_json::to_value(&theirs).unwrap();
        let changed = syncline_engine::fields_changed(&base, &current);
        assert_eq!(changed, ["description".to_owned()].into());
        let mine =
            WriteOp::UpdateCard { id: id(1), body: UpdateCard { title: Some("x".into()), ..Default::default() } };
        assert!(fields_written(&mine).iter().all(|f| !changed.contains(f)), "title vs description: no overlap");
    }
}
