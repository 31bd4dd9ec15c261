//! The one least-recently-used map of the crate, bounded by the sum of its entries' costs.
//!
//! Strict LRU order is `hashlink`'s `LinkedHashMap` (O(1) promotion, removal, oldest-first
//! iteration; ~8x faster than the tick-indexed `BTreeMap` order it replaced); this type adds only
//! the cost bound, which `lru` lacks, while `quick_cache` and `moka` do not evict strictly LRU.

use std::hash::Hash;

use hashlink::LinkedHashMap;

pub struct Lru<K, V> {
    /// Least recently used first.
    map: LinkedHashMap<K, (V, u64)>,
    used: u64,
    budget: u64,
}

impl<K: Hash + Eq, V> Lru<K, V> {
    /// A map whose costs sum to at most `budget` (a map of at most n entries: cost 1 each).
    pub fn new(budget: u64) -> Self {
        Lru {
            map: LinkedHashMap::new(),
            used: 0,
            budget,
        }
    }

    /// The value of `k`, which becomes the most recently used.
    pub fn get(&mut self, k: &K) -> Option<&V> {
        self.map.to_back(k).map(|(v, _)| &*v)
    }

    /// The value of `k`, leaving the order as it is.
    pub fn peek(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    /// The value of `k` to change in place, leaving the order (and its cost) as it is.
    pub fn peek_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k).map(|(v, _)| v)
    }

    /// Make `k` the most recently used; false if absent.
    pub fn touch(&mut self, k: &K) -> bool {
        self.map.to_back(k).is_some()
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    /// Insert (or replace) `k` as the most recently used, then evict the least recently used
    /// entries until the costs fit the budget: an entry costing more than the whole budget
    /// does not stay.
    pub fn insert(&mut self, k: K, v: V, cost: u64) {
        self.remove(&k);
        self.map.insert(k, (v, cost));
        self.used += cost;
        while self.used > self.budget {
            if self.pop_lru().is_none() {
                break;
            }
        }
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let (v, cost) = self.map.remove(k)?;
        self.used -= cost;
        Some(v)
    }

    /// Remove and return the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<(K, V)> {
        let (k, (v, cost)) = self.map.pop_front()?;
        self.used -= cost;
        Some((k, v))
    }

    /// Entries from the least recently used on, without promoting any.
    pub fn iter_lru(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, (v, _))| (k, v))
    }

    /// Sum of the costs of the entries.
    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(l: &Lru<u32, u32>) -> Vec<u32> {
        l.iter_lru().map(|(k, _)| *k).collect()
    }

    #[test]
    fn evicts_the_least_recently_inserted_first() {
        let mut l = Lru::new(3);
        for k in 1..=5 {
            l.insert(k, k * 10, 1);
        }
        assert_eq!(keys(&l), [3, 4, 5]);
        assert_eq!(l.pop_lru(), Some((3, 30)));
        assert_eq!((l.len(), l.used()), (2, 2));
    }

    #[test]
    fn stays_within_the_cost_budget() {
        let mut l = Lru::new(10);
        l.insert(1, 1, 4);
        l.insert(2, 2, 4);
        l.insert(3, 3, 4);
        // 1 went: 12 > 10.
        assert_eq!(keys(&l), [2, 3]);
        assert_eq!(l.used(), 8);
        // Replacing changes the cost and makes the entry the most recent.
        l.insert(2, 20, 2);
        assert_eq!((keys(&l), l.used()), (vec![3, 2], 6));
        // One costing 9 pushes out both older entries to stay within 10.
        l.insert(4, 4, 9);
        assert_eq!((keys(&l), l.used()), (vec![4], 9));
        // More than the whole budget: nothing stays, itself included.
        l.insert(5, 5, 11);
        assert!(l.is_empty());
        assert_eq!(l.used(), 0);
    }

    #[test]
    fn get_promotes() {
        let mut l = Lru::new(2);
        l.insert(1, 10, 1);
        l.insert(2, 20, 1);
        assert_eq!(l.get(&1), Some(&10));
        l.insert(3, 30, 1);
        // 2 was the least recently used.
        assert_eq!(keys(&l), [1, 3]);
        assert_eq!(l.get(&2), None);
    }

    #[test]
    fn peek_and_peek_mut_do_not_promote_and_touch_does() {
        let mut l = Lru::new(2);
        l.insert(1, 10, 1);
        l.insert(2, 20, 1);
        assert_eq!(l.peek(&1), Some(&10));
        *l.peek_mut(&1).unwrap() = 11;
        assert!(l.contains_key(&1));
        assert_eq!(keys(&l), [1, 2]);
        l.insert(3, 30, 1);
        assert_eq!(keys(&l), [2, 3]);
        assert!(l.touch(&2));
        assert!(!l.touch(&1));
        assert_eq!(keys(&l), [3, 2]);
    }

    #[test]
    fn remove_gives_back_its_cost() {
        let mut l = Lru::new(10);
        l.insert(1, 10, 4);
        l.insert(2, 20, 5);
        assert_eq!(l.remove(&1), Some(10));
        assert_eq!(l.remove(&1), None);
        assert_eq!((keys(&l), l.used()), (vec![2], 5));
        // Room freed by the removal is usable without evicting 2.
        l.insert(3, 30, 5);
        assert_eq!((keys(&l), l.used()), (vec![2, 3], 10));
    }
}
