//! The engine's maps and sets: sorted by key like `BTreeMap` and `BTreeSet` — their iteration order is part of the
//! engine's determinism (the simulation replays a seed exactly) — but stored as one sorted vector (`litemap`, a
//! map made for small code). Each `BTreeMap` key/value pair brings its own copy of the B-tree's node code into
//! the browser's wasm (insert, remove, merge, steal: ~6 KB a pair); the engine used fifteen pairs. Its maps are
//! small (queries, tabs, streams, requests in flight) or filled in key order (the outbox: write ids are UUIDv7,
//! so a new write goes at the end), where a sorted vector is also the faster of the two.

use std::borrow::Borrow;
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

    pub fn first(&self) -> Option<&T> {
        self.0.first().map(|(k, _)| k)
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

    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.0.retain(|k, _| keep(k))
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
        set.retain(|v| *v != 3);
        assert_eq!(set.first(), Some(&0));
        assert_eq!(set.clone().into_iter().collect::<Vec<_>>(), [0, 2, 5, 9]);
        assert_eq!((&set).into_iter().count(), set.len());
        let mut map: Map<u32, &str> = [(2, "b"), (1, "a"), (2, "c")].into_iter().collect();
        assert_eq!(map.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(), [(1, "a"), (2, "c")]);
        *map.entry(3).or_default() = "d";
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    }
}
