//! Where a card goes when it is moved by keyboard or dropped: pure functions on a [`BoardSnapshot`], shared by
//! every client so they all place cards the same way.

use crate::{BoardSnapshot, CardId, ColumnId, MoveCard};

/// A keyboard move of one card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// One place up within its column.
    Up,
    /// One place down within its column.
    Down,
    /// To the column on the left, at the same index (or last).
    Left,
    /// To the column on the right, at the same index (or last).
    Right,
}

impl BoardSnapshot {
    /// The move that takes `card` one step in `direction`, or `None` at an edge (or for an unknown card).
    pub fn keyboard_move(&self, card: CardId, direction: Direction) -> Option<MoveCard> {
        let current = self.cards.iter().find(|c| c.id == card)?;
        let column: Vec<CardId> = self.cards_in(current.column_id).map(|c| c.id).collect();
        let index = column.iter().position(|&id| id == card)?;
        match direction {
            Direction::Up => {
                let target = index.checked_sub(1)?;
                // After the card two above, or first.
                let after = target.checked_sub(1).map(|i| column[i]);
                Some(self.move_to(current.column_id, after))
            }
            Direction::Down => {
                let below = *column.get(index + 1)?;
                Some(self.move_to(current.column_id, Some(below)))
            }
            Direction::Left | Direction::Right => {
                let col_index = self.columns.iter().position(|c| c.id == current.column_id)?;
                let target_index = if direction == Direction::Left { col_index.checked_sub(1)? } else { col_index + 1 };
                let target = self.columns.get(target_index)?.id;
                let target_cards: Vec<CardId> = self.cards_in(target).map(|c| c.id).collect();
                // Same index: after the card just above that index, or first.
                let after = index.min(target_cards.len()).checked_sub(1).map(|i| target_cards[i]);
                Some(self.move_to(target, after))
            }
        }
    }

    /// The move that drops `card` into `column` just before `before` (a card of that column), or at the end
    /// when `before` is `None`.
    pub fn drop_move(&self, card: CardId, column: ColumnId, before: Option<CardId>) -> Option<MoveCard> {
        let others: Vec<CardId> = self.cards_in(column).map(|c| c.id).filter(|&id| id != card).collect();
        let after = match before {
            None => others.last().copied(),
            Some(before) if before == card => return None,
            Some(before) => {
                let i = others.iter().position(|&id| id == before)?;
                i.checked_sub(1).map(|i| others[i])
            }
        };
        Some(self.move_to(column, after))
    }

    fn move_to(&self, column_id: ColumnId, after_card_id: Option<CardId>) -> MoveCard {
        MoveCard { column_id, after_card_id, base_version: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Board, Card, Column};
    use uuid::Uuid;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Columns 10 and 20; column 10 holds cards 1, 2, 3; column 20 holds card 4.
    fn snapshot() -> BoardSnapshot {
        let col = |n: u128, pos: &str| Column {
            id: id(n),
            board_id: id(100),
            title: format!("c{n}"),
            position: pos.into(),
            version: 1,
        };
        let card = |n: u128, column: u128, pos: &str| Card {
            id: id(n),
            board_id: id(100),
            column_id: id(column),
            title: format!("card {n}"),
            description: String::new(),
            position: pos.into(),
            version: 1,
        };
        BoardSnapshot {
            board: Board { id: id(100), title: "b".into(), version: 1 },
            columns: vec![col(10, "80"), col(20, "81")],
            cards: [card(1, 10, "80"), card(2, 10, "81"), card(3, 10, "82"), card(4, 20, "80")].map(Into::into).into(),
            members: vec![],
            log_id: id(0),
            cursor: 0,
        }
    }

    fn mv(column: u128, after: Option<u128>) -> Option<MoveCard> {
        Some(MoveCard { column_id: id(column), after_card_id: after.map(id), base_version: None })
    }

    #[test]
    fn up_and_down_within_a_column() {
        let s = snapshot();
        assert_eq!(s.keyboard_move(id(1), Direction::Up), None, "already first");
        assert_eq!(s.keyboard_move(id(2), Direction::Up), mv(10, None));
        assert_eq!(s.keyboard_move(id(3), Direction::Up), mv(10, Some(1)));
        assert_eq!(s.keyboard_move(id(1), Direction::Down), mv(10, Some(2)));
        assert_eq!(s.keyboard_move(id(3), Direction::Down), None, "already last");
    }

    #[test]
    fn left_and_right_keep_the_index_when_they_can() {
        let s = snapshot();
        assert_eq!(s.keyboard_move(id(1), Direction::Right), mv(20, None), "index 0 -> first");
        assert_eq!(s.keyboard_move(id(3), Direction::Right), mv(20, Some(4)), "index 2 -> last of a short column");
        assert_eq!(s.keyboard_move(id(4), Direction::Left), mv(10, None));
        assert_eq!(s.keyboard_move(id(1), Direction::Left), None, "no column on the left");
        assert_eq!(s.keyboard_move(id(4), Direction::Right), None, "no column on the right");
    }

    #[test]
    fn drops_land_before_the_target_card_or_at_the_end() {
        let s = snapshot();
        assert_eq!(s.drop_move(id(4), id(10), Some(id(2))), mv(10, Some(1)));
        assert_eq!(s.drop_move(id(4), id(10), Some(id(1))), mv(10, None));
        assert_eq!(s.drop_move(id(4), id(10), None), mv(10, Some(3)));
        assert_eq!(s.drop_move(id(1), id(10), None), mv(10, Some(3)), "the moving card is not its own neighbour");
        assert_eq!(s.drop_move(id(1), id(10), Some(id(1))), None, "dropped on itself");
    }
}
