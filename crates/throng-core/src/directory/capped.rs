//! A set that remembers only its newest entries: the bounded memory of the hand-offs a directory
//! took ([`super::MAX_ADOPTIONS`]) and of the children it knows were removed
//! ([`super::MAX_TOMBSTONES`]). Both must recognize an entry seen before (a hand-off sent again, a
//! late copy of a removed child) without growing for ever, and both forget the oldest entry
//! first.

use std::collections::{BTreeSet, VecDeque};

/// A set of at most `cap` entries; inserting a new entry into a full set forgets the oldest one
/// (first in, first out). The order of insertion is kept, so the newest entries can be listed.
#[derive(Debug, Clone)]
pub(super) struct CappedSet<T> {
    /// The most entries held; at least 1.
    cap: usize,
    /// The entries, for lookups.
    set: BTreeSet<T>,
    /// The same entries, oldest first.
    order: VecDeque<T>,
}

impl<T: Ord + Clone> CappedSet<T> {
    /// An empty set holding at most `cap` entries (a `cap` of 0 is taken as 1).
    pub(super) fn new(cap: usize) -> Self {
        CappedSet {
            cap: cap.max(1),
            set: BTreeSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Adds `entry`, forgetting the oldest entry if the set is full. False (and nothing changes)
    /// if `entry` is held already.
    pub(super) fn insert(&mut self, entry: T) -> bool {
        self.insert_evicting(entry).0
    }

    /// Like [`CappedSet::insert`], and also returns the entry forgotten to make room, if any.
    pub(super) fn insert_evicting(&mut self, entry: T) -> (bool, Option<T>) {
        if self.set.contains(&entry) {
            return (false, None);
        }
        let mut evicted = None;
        if self.order.len() >= self.cap {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
                evicted = Some(oldest);
            }
        }
        self.set.insert(entry.clone());
        self.order.push_back(entry);
        (true, evicted)
    }

    /// The entries from `from` on, in order.
    pub(super) fn range_from<'a>(&'a self, from: &T) -> impl Iterator<Item = &'a T> + 'a {
        self.set.range(from.clone()..)
    }

    /// Whether `entry` is held.
    pub(super) fn contains(&self, entry: &T) -> bool {
        self.set.contains(entry)
    }

    /// How many entries are held.
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no entry is held.
    pub(super) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The entries, newest first.
    pub(super) fn newest_first(&self) -> impl Iterator<Item = &T> {
        self.order.iter().rev()
    }

    /// Whether the lookup set and the insertion order hold the same entries, at most `cap` of
    /// them. Always true; checked by [`super::Directory::check`].
    pub(super) fn is_consistent(&self) -> bool {
        self.order.len() == self.set.len()
            && self.order.len() <= self.cap
            && self.order.iter().all(|e| self.set.contains(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_inserted_twice_is_held_once() {
        let mut s = CappedSet::new(4);
        assert!(s.insert(1));
        assert!(!s.insert(1));
        assert_eq!(s.len(), 1);
        assert!(s.contains(&1));
        assert!(s.is_consistent());
    }

    #[test]
    fn a_full_set_forgets_its_oldest_entry() {
        let mut s = CappedSet::new(3);
        for i in 0..5 {
            assert!(s.insert(i));
            assert!(s.len() <= 3);
            assert!(s.is_consistent());
        }
        assert!(!s.contains(&0) && !s.contains(&1));
        assert!(s.contains(&2) && s.contains(&3) && s.contains(&4));
        assert_eq!(s.newest_first().copied().collect::<Vec<_>>(), [4, 3, 2]);
        // A forgotten entry is new again.
        assert!(s.insert(0));
        assert!(!s.contains(&2));
    }

    #[test]
    fn an_entry_seen_again_does_not_refresh_its_age() {
        let mut s = CappedSet::new(2);
        s.insert("a");
        s.insert("b");
        assert!(!s.insert("a"));
        s.insert("c");
        // "a" is still the oldest: it goes first, as the hand-written memories did.
        assert!(!s.contains(&"a"));
        assert!(s.contains(&"b") && s.contains(&"c"));
    }

    #[test]
    fn a_zero_cap_holds_one_entry() {
        let mut s = CappedSet::new(0);
        assert!(s.insert(1));
        assert!(s.insert(2));
        assert_eq!(s.len(), 1);
        assert!(s.contains(&2));
        assert!(!s.is_empty());
    }
}
