//! Which chunks of an edited file are new: re-chunking only around the edits.
//!
//! A file's chunks are content-defined: the chunker cuts where a rolling hash of the bytes
//! just before the cut matches, and starts afresh (hash reset, minimum size skipped) after
//! every cut. Two facts follow, and this module rests on them:
//! - a cut depends only on the bytes since the previous cut, so re-chunking from any base
//!   chunk boundary before an edit reproduces the cuts a whole-file chunking would make;
//! - once the re-chunked stream cuts at a position that is also a base boundary, past the
//!   last edit, every later chunk up to the next edit is the base's own.
//!
//! The one exception is the base's last chunk, which ends at end-of-file rather than at a
//! match: bytes appended after it can move that cut, so an edit at EOF starts from the start
//! of the last chunk, and no window re-synchronises at EOF.
//!
//! So the new file is: the base's chunks up to the chunk holding an edit's first byte, the
//! chunks of a window re-chunked from there to the first re-synchronised cut after the edit
//! (covering every further edit it reaches first), the base's chunks again, and so on. The
//! composed identity is then exactly that of a clean upload of the new bytes.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::xorb_object::Chunk;
use xet_data::deduplication::Chunker;

use crate::remote::{ComposeEdit, RemoteError, RemoteResult};

/// One chunk of the base: its hash and length, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChunk {
    pub hash: MerkleHash,
    pub len: u64,
}

/// A chunk of the new file.
#[derive(Debug)]
pub enum Piece {
    /// The base's chunk with this index, unchanged and in the same place relative to its
    /// neighbours.
    Base(usize),
    /// A chunk the re-chunking produced.
    New(Chunk),
}

/// Where a window reads the base's bytes.
#[async_trait]
pub trait BaseBytes: Send + Sync {
    async fn read(&self, range: Range<u64>) -> RemoteResult<Bytes>;
}

/// Base reads issued ahead of the re-chunking, so that fetching (a disk seek, an HTTP round
/// trip) overlaps chunking and hashing instead of alternating with it.
const READ_AHEAD: usize = 8;

enum Slot {
    Pending(tokio::task::JoinHandle<RemoteResult<Bytes>>),
    Ready(Bytes),
}

/// The base ranges the windows will most likely read, fetched [`READ_AHEAD`] at a time in
/// order; a read they do not cover goes to the source directly.
struct Prefetch {
    source: Arc<dyn BaseBytes>,
    planned: std::vec::IntoIter<Range<u64>>,
    queue: VecDeque<(Range<u64>, Slot)>,
    /// Bytes read from the source, ahead or not, used or not.
    read: Arc<AtomicU64>,
}

impl Prefetch {
    fn new(source: Arc<dyn BaseBytes>, planned: Vec<Range<u64>>) -> Self {
        let mut p = Prefetch {
            source,
            planned: planned.into_iter(),
            queue: VecDeque::new(),
            read: Arc::new(AtomicU64::new(0)),
        };
        p.fill();
        p
    }

    fn fill(&mut self) {
        while self.queue.len() < READ_AHEAD {
            let Some(r) = self.planned.next() else { return };
            let src = self.source.clone();
            let range = r.clone();
            let read = self.read.clone();
            let h = tokio::spawn(async move {
                let bytes = src.read(range).await?;
                read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(bytes)
            });
            self.queue.push_back((r, Slot::Pending(h)));
        }
    }

    async fn read(&mut self, range: Range<u64>) -> RemoteResult<Bytes> {
        // Reads only move forward: planned ranges wholly behind this one are not needed.
        while self
            .queue
            .front()
            .is_some_and(|(r, _)| r.end <= range.start)
        {
            if let Some((_, Slot::Pending(h))) = self.queue.pop_front() {
                h.abort();
            }
        }
        self.fill();
        let covered = self
            .queue
            .front()
            .is_some_and(|(r, _)| r.start <= range.start && range.end <= r.end);
        if !covered {
            let bytes = self.source.read(range).await?;
            self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            return Ok(bytes);
        }
        let (r, slot) = self.queue.front_mut().expect("checked above");
        if let Slot::Pending(h) = slot {
            let bytes = h.await.map_err(RemoteError::other)??;
            *slot = Slot::Ready(bytes);
        }
        let Slot::Ready(bytes) = slot else {
            unreachable!("just resolved")
        };
        let lo = (range.start - r.start) as usize;
        let hi = (range.end - r.start) as usize;
        if hi > bytes.len() {
            return Err(RemoteError::Integrity(format!(
                "base read {r:?} returned {} bytes",
                bytes.len()
            )));
        }
        Ok(bytes.slice(lo..hi))
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        for (_, slot) in self.queue.drain(..) {
            if let Slot::Pending(h) = slot {
                h.abort();
            }
        }
    }
}

/// Where the new file's chunks go, in order, as they are decided (so that new chunks can be
/// packed and sent while later windows are still being re-chunked, and never all sit in
/// memory at once).
#[async_trait]
pub trait PieceSink: Send {
    async fn push(&mut self, piece: Piece) -> RemoteResult<()>;
}

#[derive(Debug, Default)]
pub struct Rechunked {
    /// Bytes of the base read to re-chunk the windows (including any read ahead but not
    /// needed in the end).
    pub base_bytes_read: u64,
    /// Windows re-chunked.
    pub windows: usize,
}

/// The chunks of `base` with `edits` applied, pushed to `sink`. `edits` must be sorted and
/// disjoint, in base coordinates (`prev.end <= next.start`); an edit with an empty range is
/// an insert.
pub async fn rechunk(
    base: &[BaseChunk],
    edits: &[ComposeEdit],
    bytes: Arc<dyn BaseBytes>,
    sink: &mut dyn PieceSink,
) -> RemoteResult<Rechunked> {
    let ends = Ends::of(base);
    let size = ends.size();
    check_edit_order(edits, size)?;
    let edits: Vec<&ComposeEdit> = edits
        .iter()
        .filter(|e| !(e.original_range.is_empty() && e.data.is_empty()))
        .collect();
    let mut bytes = Prefetch::new(bytes, planned_reads(&ends, &edits));

    let mut out = Rechunked::default();
    let mut next = 0usize; // first base chunk not yet emitted or replaced
    let mut i = 0usize; // first edit not yet fed
    while i < edits.len() {
        let first = edits[i].original_range.start;
        let k0 = if size == 0 {
            0
        } else {
            ends.chunk_at(first.min(size - 1))
        };
        if k0 < next {
            return Err(RemoteError::Other(format!(
                "rechunk: window at chunk {k0} starts before chunk {next}"
            )));
        }
        for k in next..k0 {
            sink.push(Piece::Base(k)).await?;
        }
        out.windows += 1;
        let mut window = Window::new(&ends, ends.start_of(k0));
        next = window.run(&edits, &mut i, &mut bytes, sink).await?;
    }
    for k in next..base.len() {
        sink.push(Piece::Base(k)).await?;
    }
    out.base_bytes_read = bytes.read.load(Ordering::Relaxed);
    Ok(out)
}

/// Refuse edits that are out of order, overlap, or reach past the end of a `size` byte base.
pub(crate) fn check_edit_order(edits: &[ComposeEdit], size: u64) -> RemoteResult<()> {
    let mut prev_end = 0;
    for e in edits {
        let r = &e.original_range;
        if r.start > r.end || r.start < prev_end || r.end > size {
            return Err(RemoteError::Other(format!(
                "edit {r:?} is out of order or past the end of a {size} byte base"
            )));
        }
        prev_end = r.end;
    }
    Ok(())
}

/// Where each base chunk ends, in file offsets.
struct Ends(Vec<u64>);

impl Ends {
    fn of(base: &[BaseChunk]) -> Self {
        let mut ends = Vec::with_capacity(base.len());
        let mut at = 0u64;
        for c in base {
            at += c.len;
            ends.push(at);
        }
        Ends(ends)
    }

    fn size(&self) -> u64 {
        self.0.last().copied().unwrap_or(0)
    }

    /// Index of the chunk holding byte `p` (< size).
    fn chunk_at(&self, p: u64) -> usize {
        self.0.partition_point(|&e| e <= p)
    }

    fn start_of(&self, k: usize) -> u64 {
        if k == 0 {
            0
        } else {
            self.0[k - 1]
        }
    }
}

/// Around each edit: the base bytes before it in its first chunk, and after it to the end of
/// the chunk it ends in. That is what its window reads unless the chunker takes longer to
/// re-synchronise (the bytes it replaces are never read).
fn planned_reads(ends: &Ends, edits: &[&ComposeEdit]) -> Vec<Range<u64>> {
    let size = ends.size();
    let mut planned: Vec<Range<u64>> = Vec::new();
    let mut plan = |range: Range<u64>| {
        if range.is_empty() {
            return;
        }
        match planned.last_mut() {
            Some(p) if p.end >= range.start => p.end = p.end.max(range.end),
            _ => planned.push(range),
        }
    };
    if size > 0 {
        for e in edits {
            let r = &e.original_range;
            plan(ends.start_of(ends.chunk_at(r.start.min(size - 1)))..r.start);
            if r.end < size {
                // One chunk more: the chunker seldom re-synchronises at the very cut it
                // lands next to, and a read that misses the plan costs a round trip alone.
                let k = ends.chunk_at(r.end);
                plan(r.end..ends.0[(k + 1).min(ends.0.len() - 1)]);
            }
        }
    }
    planned
}

/// One window being re-chunked from base offset `ws` (a chunk boundary).
struct Window<'a> {
    ends: &'a Ends,
    ws: u64,
    chunker: Chunker,
    /// Next base byte to feed.
    base_pos: u64,
    /// Window bytes fed to the chunker.
    fed: u64,
    /// Window bytes in the chunks emitted so far.
    cut: u64,
    /// After the last edit fed: the window offset its data ends at, and the window offset
    /// minus the base offset from there on.
    sync_from: u64,
    shift: i64,
}

impl<'a> Window<'a> {
    fn new(ends: &'a Ends, ws: u64) -> Self {
        Window {
            ends,
            ws,
            chunker: Chunker::default(),
            base_pos: ws,
            fed: 0,
            cut: 0,
            sync_from: u64::MAX,
            shift: 0,
        }
    }

    /// Feed the edits from `edits[*i]` on and the base bytes between them until the chunker
    /// re-synchronises with a base chunk boundary after the last edit fed, or the file ends;
    /// the new chunks go to `sink`. The index of the base chunk the window ends before.
    async fn run(
        &mut self,
        edits: &[&ComposeEdit],
        i: &mut usize,
        bytes: &mut Prefetch,
        sink: &mut dyn PieceSink,
    ) -> RemoteResult<usize> {
        let size = self.ends.size();
        loop {
            let chunks = if let Some(e) = edits
                .get(*i)
                .filter(|e| e.original_range.start == self.base_pos)
            {
                *i += 1;
                self.base_pos = e.original_range.end;
                self.fed += e.data.len() as u64;
                self.sync_from = self.fed;
                self.shift = self.fed as i64 - (self.base_pos - self.ws) as i64;
                self.chunker.next_block_bytes(&e.data, false)
            } else if self.base_pos < size {
                // One base chunk at a time (or up to the next edit), so a window reads at
                // most a chunk past its re-synchronising cut.
                let mut end = self.ends.0[self.ends.chunk_at(self.base_pos)];
                if let Some(e) = edits.get(*i) {
                    end = end.min(e.original_range.start);
                }
                let data = read_exact(bytes, self.base_pos..end).await?;
                self.base_pos = end;
                self.fed += data.len() as u64;
                self.chunker.next_block_bytes(&data, false)
            } else {
                // End of file: the window runs to the end.
                if let Some(c) = self.chunker.finish() {
                    sink.push(Piece::New(c)).await?;
                }
                return Ok(self.ends.0.len());
            };
            if let Some(k) = self.emit(chunks, sink).await? {
                return Ok(k);
            }
        }
    }

    /// Push `chunks`; the base chunk the window re-synchronised at, if one of them ends on a
    /// base chunk boundary past the last edit.
    async fn emit(
        &mut self,
        chunks: Vec<Chunk>,
        sink: &mut dyn PieceSink,
    ) -> RemoteResult<Option<usize>> {
        let size = self.ends.size();
        for c in chunks {
            self.cut += c.data.len() as u64;
            sink.push(Piece::New(c)).await?;
            if self.cut >= self.sync_from {
                let b = (self.ws as i64 + self.cut as i64 - self.shift) as u64;
                if b < size && self.ends.0.binary_search(&b).is_ok() {
                    return Ok(Some(self.ends.chunk_at(b)));
                }
            }
        }
        Ok(None)
    }
}

/// Base bytes `range`, refused unless all of them came.
async fn read_exact(bytes: &mut Prefetch, range: Range<u64>) -> RemoteResult<Bytes> {
    let data = bytes.read(range.clone()).await?;
    if data.len() as u64 != range.end - range.start {
        return Err(RemoteError::Integrity(format!(
            "base read {range:?} returned {} bytes",
            data.len()
        )));
    }
    Ok(data)
}

/// Base bytes on each side of an edit worth fetching before the windows are known (with the
/// request that finds them, instead of one round trip after it): a window runs from a stable
/// chunk boundary before its edits to a re-synchronised one after them, a few chunks (at most
/// 128 KiB each) away.
const NEAR_MARGIN: u64 = 512 << 10;
/// Nothing is fetched ahead when the neighbourhoods would add up to more than this (a large or
/// scattered edit fetches its windows once they are known).
const NEAR_MAX: u64 = 8 << 20;

/// The neighbourhoods of `edits` in a `size` byte base worth fetching ahead (merged, in
/// order; empty when too large).
pub fn near_ranges(size: u64, edits: &[ComposeEdit]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for e in edits {
        let r = e.original_range.start.saturating_sub(NEAR_MARGIN)
            ..(e.original_range.end + NEAR_MARGIN).min(size);
        if r.start >= r.end {
            continue;
        }
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    if out.iter().map(|r| r.end - r.start).sum::<u64>() > NEAR_MAX {
        return Vec::new();
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::remote::testing::random;

    #[test]
    fn neighbourhoods_of_the_edits_are_merged_clipped_and_bounded() {
        const M: u64 = NEAR_MARGIN;
        let e = |r: Range<u64>| ComposeEdit {
            original_range: r,
            data: Bytes::from_static(b"x"),
        };
        let size = 100 << 20;
        // Near the start and the end: clipped to the file.
        assert_eq!(
            near_ranges(size, &[e(10..20), e(size..size)]),
            vec![0..20 + M, size - M..size]
        );
        // Two edits closer than two margins: one range.
        let a = 10 << 20;
        assert_eq!(
            near_ranges(size, &[e(a..a + 4096), e(a + M..a + M + 1)]),
            vec![a - M..a + 2 * M + 1]
        );
        // Too much to fetch ahead: nothing.
        let many: Vec<ComposeEdit> = (0..20)
            .map(|i| e(i * (4 << 20)..i * (4 << 20) + 1))
            .collect();
        assert!(near_ranges(size, &many).is_empty());
        // An empty base.
        assert!(near_ranges(0, &[e(0..0)]).is_empty());
    }

    struct Mem(Vec<u8>);

    #[async_trait]
    impl PieceSink for Vec<Piece> {
        async fn push(&mut self, piece: Piece) -> RemoteResult<()> {
            Vec::push(self, piece);
            Ok(())
        }
    }

    #[async_trait]
    impl BaseBytes for Mem {
        async fn read(&self, r: Range<u64>) -> RemoteResult<Bytes> {
            Ok(Bytes::copy_from_slice(
                &self.0[r.start as usize..r.end as usize],
            ))
        }
    }

    fn chunks_of(data: &[u8]) -> Vec<Chunk> {
        let mut c = Chunker::default();
        let mut v = c.next_block(data, true);
        v.extend(c.finish());
        v
    }

    /// `model` with `edits` applied.
    pub(crate) fn apply(model: &[u8], edits: &[ComposeEdit]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        for e in edits {
            out.extend_from_slice(&model[pos..e.original_range.start as usize]);
            out.extend_from_slice(&e.data);
            pos = e.original_range.end as usize;
        }
        out.extend_from_slice(&model[pos..]);
        out
    }

    /// Re-chunking around the edits gives exactly the chunks of the whole new file.
    fn check(base: &[u8], edits: Vec<ComposeEdit>) -> Rechunked {
        let chunks: Vec<BaseChunk> = chunks_of(base)
            .iter()
            .map(|c| BaseChunk {
                hash: c.hash,
                len: c.data.len() as u64,
            })
            .collect();
        let want: Vec<(MerkleHash, u64)> = chunks_of(&apply(base, &edits))
            .iter()
            .map(|c| (c.hash, c.data.len() as u64))
            .collect();
        let src = Arc::new(Mem(base.to_vec()));
        let mut pieces: Vec<Piece> = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt
            .block_on(rechunk(&chunks, &edits, src, &mut pieces))
            .unwrap();
        let got_list: Vec<(MerkleHash, u64)> = pieces
            .iter()
            .map(|p| match p {
                Piece::Base(k) => (chunks[*k].hash, chunks[*k].len),
                Piece::New(c) => (c.hash, c.data.len() as u64),
            })
            .collect();
        assert_eq!(got_list, want);
        got
    }

    fn edit(r: Range<u64>, len: usize, seed: u64) -> ComposeEdit {
        ComposeEdit {
            original_range: r,
            data: Bytes::from(random(len, seed)),
        }
    }

    #[test]
    fn every_edit_shape_gives_the_chunks_of_the_new_file() {
        let base = random(3 << 20, 1);
        let n = base.len() as u64;
        let one = check(&base, vec![edit(1_500_000..1_504_096, 4096, 2)]);
        assert_eq!(one.windows, 1);
        assert!(one.base_bytes_read < 512 << 10, "{}", one.base_bytes_read);
        check(&base, vec![edit(0..1, 1, 3)]);
        check(&base, vec![edit(n - 1..n, 1, 4)]);
        check(&base, vec![edit(n..n, 100_000, 5)]);
        check(&base, vec![edit(n - 200_000..n, 0, 0)]);
        check(&base, vec![edit(1000..1000, 77, 6)]);
        check(&base, vec![edit(0..n, 0, 0), edit(n..n, 10, 7)]);
        check(&base, vec![edit(10..20, 0, 0), edit(20..20, 5, 8)]);
        check(&[], vec![edit(0..0, 300_000, 9)]);
        // A base whose last chunk ends on a real cut: an edit there re-synchronises at EOF,
        // and an append after it must still join the same window.
        let cut = chunks_of(&base)[..6]
            .iter()
            .map(|c| c.data.len())
            .sum::<usize>();
        let short = &base[..cut];
        let m = cut as u64;
        check(
            short,
            vec![edit(m - 100..m - 90, 10, 12), edit(m..m, 5000, 13)],
        );
        // Two edits close enough to share a window.
        let two = check(&base, vec![edit(100..200, 50, 10), edit(300..300, 9, 11)]);
        assert_eq!(two.windows, 1);
    }

    #[test]
    fn random_edits_give_the_chunks_of_the_new_file() {
        use proptest::prelude::*;
        let base = random(2 << 20, 20);
        let size = base.len() as u64;
        let edits = proptest::collection::vec((0..=size, 0u64..200_000, 0usize..200_000), 1..6);
        proptest::proptest!(ProptestConfig::with_cases(48), |(raw in edits)| {
            check(&base, disjoint_edits(raw, size));
        });
    }

    /// Sorted, disjoint edits of a `size` byte file from random (offset, bytes removed, bytes
    /// inserted) triples; overlapping ones are dropped.
    pub(crate) fn disjoint_edits(mut raw: Vec<(u64, u64, usize)>, size: u64) -> Vec<ComposeEdit> {
        raw.sort();
        let mut list = Vec::new();
        let mut next_free = 0;
        for (at, removed, inserted) in raw {
            if at < next_free {
                continue;
            }
            let end = (at + removed).min(size);
            list.push(edit(at..end, inserted, at ^ removed));
            next_free = end;
        }
        list
    }
}
