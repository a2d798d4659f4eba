//! The engine's maps and sets: sorted by key like `BTreeMap` and `BTreeSet` — their iteration order is part of the
//! engine's determinism (the simulation replays a seed exactly) — but stored as one sorted vector (`litemap`, a
//! map made for small code). Each `BTreeMap` key/value pair brings its own copy of the B-tree's node code into
//! the browser's wasm (insert, remove, merge, steal: ~6 KB a pair); the engine used fifteen pairs. Its maps are
//! small (queries, tabs, streams, requests in flight) or filled in key order (the outbox: write ids are UUIDv7,
//! so a new write goes at the end), where a sorted vector is also the faster of the two.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;

use litemap::LiteMap;

/// A sorted map.
pub type Map<K, V> = LiteMap<K, V>;

/// A sorted set (a [`Map`] to `()`), with `BTreeSet`'s names for what the engine uses.
#[derive(Clone, PartialEq, Eq)]
pub struct Set<T>(LiteMap<T, ()>);

impl<T> Set<T> {
    pub const fn new() -> Set<T> {
        Set(LiteMap::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear()
    }

    /// In order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        self.0.keys()
    }
}

impl<T: Ord> Set<T> {
    /// Adds `value`; false if it was there.
    pub fn insert(&mut self, value: T) -> bool {
        self.0.insert(value, ()).is_none()
    }

    /// Removes `value`; false if it was not there.
    pub fn remove<Q: Ord + ?Sized>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.0.remove(value).is_some()
    }

    pub fn contains<Q: Ord + ?Sized>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.0.contains_key(value)
    }
}

impl<T> Default for Set<T> {
    fn default() -> Set<T> {
        Set::new()
    }
}

impl<T: fmt::Debug> fmt::Debug for Set<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

// Collected one insert at a time: litemap's own `collect`/`extend` sorts, and every element type sorted brings its
// own copy of the standard library's sort (~2.5 KB). The engine's sets are small.
impl<T: Ord> FromIterator<T> for Set<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Set<T> {
        let mut set = Set::new();
        set.extend(iter);
        set
    }
}

impl<T: Ord> Extend<T> for Set<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        for value in iter {
            self.insert(value);
        }
    }
}

impl<T> IntoIterator for Set<T> {
    type Item = T;
    type IntoIter = std::iter::Map<std::vec::IntoIter<(T, ())>, fn((T, ())) -> T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_tuple_vec().into_iter().map(|(v, ())| v)
    }
}

impl<'a, T> IntoIterator for &'a Set<T> {
    type Item = &'a T;
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (T, ())>, fn(&'a (T, ())) -> &'a T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.as_slice().iter().map(|(v, ())| v)
    }
}

impl<T: Ord, const N: usize> From<[T; N]> for Set<T> {
    fn from(values: [T; N]) -> Set<T> {
        values.into_iter().collect()
    }
}

/// Sorts `items` by `compare`, stably, with one copy of the standard library's sort for the whole program: it sorts
/// positions (`u32`) through a `dyn` comparison, then moves the items into that order. `slice::sort_by` brings its
/// own copy of the sort (~2.5 KB) into the browser's wasm for every element type sorted; the engine and the Kanban
/// model sorted six. (A comparison costs an indirect call more; what is sorted here is at most a board's cards.)
pub fn sort_by<T>(items: &mut Vec<T>, mut compare: impl FnMut(&T, &T) -> Ordering) {
    if items.len() < 2 {
        return;
    }
    let len = u32::try_from(items.len()).expect("fewer than 2^32 items");
    let mut order: Vec<u32> = (0..len).collect();
    {
        let items = &*items;
        sort_positions(&mut order, &mut |a, b| compare(&items[a as usize], &items[b as usize]));
    }
    let mut taken: Vec<Option<T>> = std::mem::take(items).into_iter().map(Some).collect();
    items.extend(order.into_iter().map(|i| taken[i as usize].take().expect("each position once")));
}

fn sort_positions(order: &mut [u32], compare: &mut dyn FnMut(u32, u32) -> Ordering) {
    order.sort_by(|a, b| compare(*a, *b));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_sorted_and_unique_like_a_btree_set() {
        let mut set: Set<u32> = [5, 1, 3, 1].into();
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [1, 3, 5]);
        assert!(set.insert(2) && !set.insert(3));
        assert!(set.remove(&1) && !set.remove(&1));
        assert!(set.contains(&5) && !set.contains(&1));
        set.extend([9, 0]);
        assert!(set.remove(&3));
        assert_eq!(set.clone().into_iter().collect::<Vec<_>>(), [0, 2, 5, 9]);
        assert_eq!((&set).into_iter().count(), set.len());
        let mut map: Map<u32, &str> = [(2, "b"), (1, "a"), (2, "c")].into_iter().collect();
        assert_eq!(map.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), [(1, "a"), (2, "c")]);
        *map.entry(3).or_default() = "d";
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn sort_by_sorts_stably_as_the_standard_sort_does() {
        let mut rng = 7u64;
        for len in [0, 1, 2, 3, 10, 100, 1000] {
            let items: Vec<(u8, u32)> = (0..len)
                .map(|i| {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((rng >> 60) as u8, i)
                })
                .collect();
            let (mut ours, mut std) = (items.clone(), items);
            sort_by(&mut ours, |a, b| a.0.cmp(&b.0));
            std.sort_by_key(|a| a.0);
            assert_eq!(ours, std, "{len} items");
        }
    }
}
