//! `RangeSet`: sorted, disjoint, non-empty, merged half-open byte ranges. The invariant is
//! kept by every method (the field is private); adjacent ranges coalesce.

use std::ops::Range;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range<u64>>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    pub fn from_range(r: Range<u64>) -> Self {
        let mut s = Self::new();
        s.insert(r);
        s
    }

    #[cfg(test)]
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Range<u64>> {
        self.ranges.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn len_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// Index of the first range that ends at or after `pos` (may touch it).
    fn first_touching(&self, pos: u64) -> usize {
        self.ranges.partition_point(|r| r.end < pos)
    }

    pub fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let lo = self.first_touching(r.start);
        let hi = self.ranges.partition_point(|x| x.start <= r.end);
        if lo >= hi {
            self.ranges.insert(lo, r);
            return;
        }
        let start = r.start.min(self.ranges[lo].start);
        let end = r.end.max(self.ranges[hi - 1].end);
        self.ranges.splice(lo..hi, std::iter::once(start..end));
    }

    pub fn remove(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let lo = self.ranges.partition_point(|x| x.end <= r.start);
        let hi = self.ranges.partition_point(|x| x.start < r.end);
        if lo >= hi {
            return;
        }
        let mut keep = Vec::with_capacity(2);
        if self.ranges[lo].start < r.start {
            keep.push(self.ranges[lo].start..r.start);
        }
        if self.ranges[hi - 1].end > r.end {
            keep.push(r.end..self.ranges[hi - 1].end);
        }
        self.ranges.splice(lo..hi, keep);
    }

    /// Drop everything at or beyond `len`.
    pub fn truncate(&mut self, len: u64) {
        self.remove(len..u64::MAX);
    }

    pub fn covers(&self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return true;
        }
        let i = self.ranges.partition_point(|x| x.end <= r.start);
        self.ranges
            .get(i)
            .is_some_and(|x| x.start <= r.start && x.end >= r.end)
    }

    /// Parts of `r` in the set, sorted.
    pub fn intersect(&self, r: Range<u64>) -> Vec<Range<u64>> {
        if r.start >= r.end {
            return Vec::new();
        }
        let lo = self.ranges.partition_point(|x| x.end <= r.start);
        self.ranges[lo..]
            .iter()
            .take_while(|x| x.start < r.end)
            .map(|x| x.start.max(r.start)..x.end.min(r.end))
            .collect()
    }

    /// Parts of `r` not in the set, sorted.
    pub fn gaps(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = r.start;
        for x in self.intersect(r.clone()) {
            if x.start > at {
                out.push(at..x.start);
            }
            at = x.end;
        }
        if at < r.end {
            out.push(at..r.end);
        }
        out
    }

    #[cfg(test)]
    pub fn subtract(&mut self, other: &RangeSet) {
        for r in other.iter() {
            self.remove(r.clone());
        }
    }

    #[cfg(test)]
    pub fn union_with(&mut self, other: &RangeSet) {
        for r in other.iter() {
            self.insert(r.clone());
        }
    }
}

#[cfg(test)]
// Expected range lists read best as slice literals, even with one element.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const U: u64 = 96;

    fn check_invariant(s: &RangeSet) {
        for w in s.ranges.windows(2) {
            assert!(w[0].end < w[1].start, "not merged/sorted: {:?}", s.ranges);
        }
        assert!(s.ranges.iter().all(|r| r.start < r.end));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
        Truncate(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..U, 0..U).prop_map(|(a, b)| Op::Insert(a.min(b), a.max(b))),
            (0..U, 0..U).prop_map(|(a, b)| Op::Remove(a.min(b), a.max(b))),
            (0..U).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        #[test]
        fn matches_per_byte_model(ops in proptest::collection::vec(op(), 1..40), q in (0..U, 0..U)) {
            let mut s = RangeSet::new();
            let mut model = [false; U as usize];
            for o in ops {
                match o {
                    Op::Insert(a, b) => { s.insert(a..b); (a..b).for_each(|i| model[i as usize] = true) }
                    Op::Remove(a, b) => { s.remove(a..b); (a..b).for_each(|i| model[i as usize] = false) }
                    Op::Truncate(n) => { s.truncate(n); (n..U).for_each(|i| model[i as usize] = false) }
                }
                check_invariant(&s);
                for i in 0..U {
                    prop_assert_eq!(s.covers(i..i + 1), model[i as usize]);
                }
            }
            let (a, b) = (q.0.min(q.1), q.0.max(q.1));
            prop_assert_eq!(s.covers(a..b), (a..b).all(|i| model[i as usize]));
            let inside: u64 = s.intersect(a..b).iter().map(|r| r.end - r.start).sum();
            let outside: u64 = s.gaps(a..b).iter().map(|r| r.end - r.start).sum();
            prop_assert_eq!(inside + outside, b - a);
            for g in s.gaps(a..b) { for i in g { prop_assert!(!model[i as usize]); } }
            prop_assert_eq!(s.len_bytes(), model.iter().filter(|x| **x).count() as u64);
        }
    }

    #[test]
    fn adjacent_ranges_merge_and_removal_splits() {
        let mut s = RangeSet::from_range(0..4);
        s.insert(4..8);
        assert_eq!(s.ranges(), &[0..8]);
        s.remove(2..3);
        assert_eq!(s.ranges(), &[0..2, 3..8]);
        s.insert(10..12);
        assert_eq!(s.gaps(0..14), vec![2..3, 8..10, 12..14]);
        s.truncate(11);
        assert_eq!(s.ranges(), &[0..2, 3..8, 10..11]);
        assert!(s.covers(3..8) && !s.covers(1..4) && s.covers(5..5));
        let mut t = RangeSet::from_range(0..100);
        t.subtract(&s);
        assert_eq!(t.ranges(), &[2..3, 8..10, 11..100]);
        t.union_with(&s);
        assert_eq!(t.ranges(), &[0..100]);
    }
}
