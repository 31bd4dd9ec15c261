//! `SparseState`: what a staging file holds relative to the remote body it mirrors.
//!
//! Each byte of `[0, size)` is in exactly one state:
//! 1. in `dirty` (hence in `coverage`): written by the user, authoritative;
//! 2. in `coverage`, not in `dirty`: a cached copy of the base's bytes;
//! 3. outside `coverage`: a hole, read from the base on demand.
//!
//! Invariants, kept by every method: `dirty ⊆ coverage ⊆ [0, size)`; holes exist only below
//! `base.size` (growth is always dirty), so a hole always has a base to be filled from; with
//! no base the whole file is covered.

use std::ops::Range;

use crate::remote::FileId;
use crate::vfs::write::ranges::RangeSet;

#[derive(Clone, Debug)]
pub struct SparseState {
    base: Option<FileId>,
    size: u64,
    coverage: RangeSet,
    dirty: RangeSet,
    /// Bumped by every user mutation; a flush commits only the generation it snapshotted.
    generation: u64,
}

/// One step of composing the new body from the base: replace `original_range` of the base
/// with bytes `new_range` of the staging file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    pub original_range: Range<u64>,
    pub new_range: Range<u64>,
}

impl SparseState {
    /// An existing body, nothing downloaded yet.
    pub fn from_base(base: FileId) -> Self {
        SparseState {
            size: base.size,
            base: Some(base),
            coverage: RangeSet::new(),
            dirty: RangeSet::new(),
            generation: 0,
        }
    }

    pub fn base(&self) -> Option<&FileId> {
        self.base.as_ref()
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    #[cfg(test)]
    pub fn coverage(&self) -> &RangeSet {
        &self.coverage
    }
    pub fn dirty(&self) -> &RangeSet {
        &self.dirty
    }
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The user wrote bytes `r`. A gap between the old end and `r` reads as zeros and is
    /// user content too.
    pub fn track_write(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let from = r.start.min(self.size);
        self.coverage.insert(from..r.end);
        self.dirty.insert(from..r.end);
        self.size = self.size.max(r.end);
        self.generation += 1;
    }

    /// Bytes `r` were copied from the base into staging.
    pub fn track_fill(&mut self, r: Range<u64>) {
        let end = r.end.min(self.size);
        if r.start < end {
            self.coverage.insert(r.start..end);
        }
    }

    /// Truncate or extend. Extension is zeros written by the user; `resize(0)` leaves
    /// nothing of the base, so the base is dropped.
    pub fn resize(&mut self, new_size: u64) {
        if new_size == 0 {
            self.base = None;
        }
        if new_size < self.size {
            self.coverage.truncate(new_size);
            self.dirty.truncate(new_size);
        } else if new_size > self.size {
            self.coverage.insert(self.size..new_size);
            self.dirty.insert(self.size..new_size);
        }
        self.size = new_size;
        self.generation += 1;
    }

    /// Parts of `r` (clipped to the size) that are holes.
    pub fn holes(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let end = r.end.min(self.size);
        if r.start >= end {
            return Vec::new();
        }
        self.coverage.gaps(r.start..end)
    }

    pub fn is_fully_covered(&self) -> bool {
        self.coverage.covers(0..self.size)
    }

    /// Bytes the store does not hold yet: the whole file without a base, else what was
    /// written (growth included: it is always dirty).
    pub fn unsettled_bytes(&self) -> u64 {
        match self.base {
            None => self.size,
            Some(_) => self.dirty.len_bytes(),
        }
    }

    /// Whether the content differs from the base (no base counts as different).
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || self.base.as_ref().map(|b| b.size) != Some(self.size)
    }

    /// The plan that turns the base into the current content (empty without a base). Sorted
    /// and disjoint in base coordinates; adjacent steps are merged.
    pub fn edits(&self) -> Vec<Edit> {
        let Some(base) = &self.base else {
            return Vec::new();
        };
        let common = base.size.min(self.size);
        let mut out: Vec<Edit> = self
            .dirty
            .intersect(0..common)
            .into_iter()
            .map(|d| Edit {
                original_range: d.clone(),
                new_range: d,
            })
            .collect();
        if self.size != base.size {
            // Growth (all dirty) appends; a shrink deletes the base's tail.
            out.push(Edit {
                original_range: common..base.size,
                new_range: common..self.size,
            });
        }
        let mut merged: Vec<Edit> = Vec::with_capacity(out.len());
        for e in out {
            match merged.last_mut() {
                Some(prev) if prev.original_range.end == e.original_range.start => {
                    prev.original_range.end = e.original_range.end;
                    prev.new_range.end = e.new_range.end;
                }
                _ => merged.push(e),
            }
        }
        merged
    }

    /// The content at `snapshot_generation` was committed as `new_base`. Applies only if
    /// nothing changed since; coverage stays as a cache of the new base.
    pub fn commit(&mut self, new_base: FileId, snapshot_generation: u64) -> bool {
        if self.generation != snapshot_generation {
            return false;
        }
        debug_assert_eq!(new_base.size, self.size);
        self.base = Some(new_base);
        self.dirty = RangeSet::new();
        true
    }
}

#[cfg(test)]
// Expected range lists read best as slice literals, even with one element.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(size: u64) -> FileId {
        FileId {
            hash: format!("h{size}"),
            size,
        }
    }

    /// Per-byte model: the file's bytes and each byte's state.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum B {
        Dirty(u8),
        Cached(u8),
        Hole,
    }

    fn base_byte(i: u64) -> u8 {
        (i * 7 + 3) as u8
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write(u64, u64, u8),
        Fill(u64, u64),
        Resize(u64),
        Commit,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..120, 1u64..20, any::<u8>()).prop_map(|(a, n, v)| Op::Write(a, a + n, v)),
            (0u64..120, 0u64..40).prop_map(|(a, n)| Op::Fill(a, a + n)),
            (0u64..130).prop_map(Op::Resize),
            Just(Op::Commit),
        ]
    }

    fn check(s: &SparseState, model: &[B]) {
        assert_eq!(s.size as usize, model.len());
        let mut cov = s.coverage.clone();
        cov.subtract(&RangeSet::from_range(0..s.size));
        assert!(cov.is_empty(), "coverage past size");
        let mut d = s.dirty.clone();
        d.subtract(&s.coverage);
        assert!(d.is_empty(), "dirty not within coverage");
        for (i, b) in model.iter().enumerate() {
            let i = i as u64;
            let (c, dd) = (s.coverage.covers(i..i + 1), s.dirty.covers(i..i + 1));
            match b {
                B::Dirty(_) => assert!(c && dd),
                B::Cached(_) => assert!(c && !dd),
                B::Hole => {
                    assert!(!c);
                    assert!(i < s.base.as_ref().expect("hole without base").size);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn matches_per_byte_model(start in 0u64..100, ops in proptest::collection::vec(op(), 1..30)) {
            let mut s = SparseState::from_base(id(start));
            // The base's bytes, for hole reads and for applying edits.
            let mut base_bytes: Vec<u8> = (0..start).map(base_byte).collect();
            let mut model = vec![B::Hole; start as usize];
            for o in ops {
                match o {
                    Op::Write(a, b, v) => {
                        s.track_write(a..b);
                        if model.len() < a as usize { model.resize(a as usize, B::Dirty(0)); }
                        if model.len() < b as usize { model.resize(b as usize, B::Hole); }
                        for i in a..b { model[i as usize] = B::Dirty(v); }
                    }
                    Op::Fill(a, b) => {
                        let holes = s.holes(a..b);
                        for h in &holes { s.track_fill(h.clone()); }
                        for h in holes { for i in h {
                            prop_assert_eq!(model[i as usize], B::Hole);
                            model[i as usize] = B::Cached(base_bytes[i as usize]);
                        } }
                    }
                    Op::Resize(n) => {
                        s.resize(n);
                        if n == 0 { base_bytes.clear(); }
                        model.resize(n as usize, B::Dirty(0));
                    }
                    Op::Commit => {
                        // Apply the compose plan to the base and compare with the model.
                        let content: Vec<Option<u8>> = model.iter().map(|b| match b {
                            B::Dirty(v) | B::Cached(v) => Some(*v),
                            B::Hole => None,
                        }).collect();
                        let mut out: Vec<Option<u8>> = Vec::new();
                        if s.base().is_some() {
                            let mut at = 0u64;
                            for e in s.edits() {
                                prop_assert!(e.original_range.start >= at);
                                out.extend((at..e.original_range.start).map(|i| Some(base_bytes[i as usize])));
                                out.extend(e.new_range.clone().map(|i| content[i as usize]));
                                at = e.original_range.end;
                            }
                            out.extend((at..base_bytes.len() as u64).map(|i| Some(base_bytes[i as usize])));
                            let want: Vec<Option<u8>> = model.iter().enumerate().map(|(i, b)| match b {
                                B::Hole => Some(base_bytes[i]),
                                B::Dirty(v) | B::Cached(v) => Some(*v),
                            }).collect();
                            prop_assert_eq!(out.clone(), want);
                        } else {
                            prop_assert!(s.is_fully_covered());
                        }
                        let g = s.generation();
                        let size = s.size();
                        prop_assert!(s.commit(id(size), g));
                        base_bytes = model.iter().enumerate().map(|(i, b)| match b {
                            B::Hole => base_bytes[i],
                            B::Dirty(v) | B::Cached(v) => *v,
                        }).collect();
                        for b in model.iter_mut() {
                            if let B::Dirty(v) = *b { *b = B::Cached(v); }
                        }
                        prop_assert!(!s.is_dirty());
                    }
                }
                check(&s, &model);
            }
        }
    }

    #[test]
    fn write_past_eof_marks_the_gap_dirty() {
        let mut s = SparseState::from_base(id(10));
        s.track_write(20..25);
        assert_eq!(s.size(), 25);
        assert_eq!(s.dirty().ranges(), &[10..25]);
        assert_eq!(s.holes(0..25), vec![0..10]);
        assert_eq!(
            s.edits(),
            vec![Edit {
                original_range: 10..10,
                new_range: 10..25
            }]
        );
    }

    #[test]
    fn shrink_through_dirty_and_fill_never_touches_dirty() {
        let mut s = SparseState::from_base(id(100));
        s.track_write(40..60);
        s.track_fill(0..100);
        assert_eq!(s.dirty().ranges(), &[40..60]);
        s.resize(50);
        assert_eq!(s.dirty().ranges(), &[40..50]);
        assert_eq!(
            s.edits(),
            vec![Edit {
                original_range: 40..100,
                new_range: 40..50
            }]
        );
        s.resize(0);
        assert!(s.base().is_none() && s.is_fully_covered() && s.is_dirty());
    }

    #[test]
    fn stale_commit_changes_nothing() {
        let mut s = SparseState::from_base(id(10));
        s.track_write(0..4);
        let g = s.generation();
        s.track_write(4..8);
        assert!(!s.commit(id(10), g));
        assert_eq!(s.base(), Some(&id(10)));
        assert_eq!(s.dirty().ranges(), &[0..8]);
        assert!(s.commit(id(10), s.generation()));
        assert!(!s.is_dirty());
        assert_eq!(s.coverage().ranges(), &[0..8]);
    }
}
