//! The read path of unstaged files: the read cache, and read-ahead for sequential streams.
//!
//! Sequential reads grow a read-ahead window (in cache blocks, from 4 MiB up to
//! `readahead_blocks`, and past 4 MiB never beyond what the stream has read so far: a model
//! loader that reads one tensor, then jumps to the next, fetches at most about twice each
//! tensor instead of a whole window past every one, and starts each tensor with 4 MiB in
//! flight rather than ramping up over round trips: bench/repo_load.sh); a seek resets it, so
//! random reads fetch only what they touch. What
//! streams fetched ahead waits in the cache until they read it, so the windows of the
//! streams reading at once share half the cache: a stream's read-ahead is never evicted by
//! another's before it is read (which would fetch it twice). The window is refilled once half of it was consumed, so
//! read-ahead goes out in large runs (each one fetch, [`MAX_RUN`] bytes at most) rather than
//! one small fetch per read; at 32 MiB, four to eight runs are in flight, enough to keep a
//! 50 ms round trip busy.
//!
//! [`MAX_RUN`]: crate::vfs::readcache::MAX_RUN

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::remote::FileId;
use crate::vfs::readcache::ReadCache;
use crate::vfs::VfsResult;

/// Runs shorter than this set no expectation for the next one: random reads stay exact.
const EXPECT_MIN: u64 = 1 << 20;
/// What a kernel client reads ahead of its reader (FUSE's `max_readahead` here): a run read
/// to its expected end shows up to this much more.
const READER_AHEAD: u64 = 1 << 20;

/// Sequential-read detection of one open handle.
#[derive(Default)]
pub(in crate::vfs) struct ReadAhead {
    next_offset: u64,
    /// Read-ahead window in cache blocks (0: not sequential).
    window: u64,
    /// Blocks before this one have been requested by read-ahead already.
    claimed_to: u64,
    /// Bytes read sequentially since the last seek (the read at the seek included).
    run: u64,
    /// Where the run in progress is expected to end (a byte offset; 0: no expectation): at
    /// the seek that started it, the run before was that long (see [`ReadPath::advance`]).
    expect_end: u64,
    /// Present while the handle reads sequentially: it is one of the streams sharing the cache.
    stream: Option<Stream>,
}

/// One sequential stream, counted in [`ReadPath`]'s `streams` while it lives.
struct Stream(Arc<AtomicU64>);

impl Stream {
    fn join(streams: &Arc<AtomicU64>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Stream(streams.clone())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads of committed bodies through the cache, with read-ahead.
pub(in crate::vfs) struct ReadPath {
    cache: Arc<ReadCache>,
    /// Read-ahead window bounds, in cache blocks.
    min_window: u64,
    max_window: u64,
    /// Half the cache, in blocks: what all streams' windows share.
    shared_blocks: u64,
    /// Handles reading sequentially now.
    streams: Arc<AtomicU64>,
}

impl ReadPath {
    pub(in crate::vfs) fn cached_bytes(&self) -> u64 {
        self.cache.used_bytes()
    }

    /// `readahead_blocks`: the largest window; read-ahead must not evict itself (nor
    /// everything else) from the cache, so the windows together are at most half of it.
    pub(in crate::vfs) fn new(cache: Arc<ReadCache>, readahead_blocks: u64, capacity: u64) -> Self {
        let block = cache.block_size();
        let shared_blocks = (capacity / 2 / block).max(1);
        let max_window = readahead_blocks.min(shared_blocks).max(1);
        let min_window = ((4 << 20) / block).clamp(1, max_window);
        ReadPath {
            cache,
            min_window,
            max_window,
            shared_blocks,
            streams: Arc::default(),
        }
    }

    /// Read `range` of `id`; `claim` is what read-ahead asked for (see [`Self::advance`]).
    pub(in crate::vfs) async fn read(
        &self,
        id: &FileId,
        range: Range<u64>,
        claim: Option<Range<u64>>,
    ) -> VfsResult<Bytes> {
        if let Some(blocks) = claim {
            self.cache.prefetch(id, blocks);
        }
        self.cache.read(id, range).await
    }

    /// Note a read of `range` on a handle with read-ahead state `ra`; returns the cache blocks
    /// to fetch ahead of it, if the window needs a refill.
    pub(in crate::vfs) fn advance(
        &self,
        ra: &mut ReadAhead,
        range: &Range<u64>,
    ) -> Option<Range<u64>> {
        let block = self.cache.block_size();
        let sequential = range.start == ra.next_offset;
        ra.next_offset = range.end;
        if !sequential {
            let ended = ra.run;
            ra.window = 0;
            ra.claimed_to = 0;
            ra.run = range.end - range.start;
            ra.expect_end = 0;
            ra.stream = None;
            // A handle that read a long run and jumped (a loader going to its next tensor)
            // likely reads another as long: fetch it now, in one round trip, not a ramp.
            if ended < EXPECT_MIN {
                return None;
            }
            ra.expect_end = range.start + ended.min(self.max_window * block);
            let (from, to) = (range.end.div_ceil(block), ra.expect_end.div_ceil(block));
            if to <= from {
                return None;
            }
            ra.claimed_to = to;
            return Some(from..to);
        }
        ra.run += range.end - range.start;
        if ra.stream.is_none() {
            ra.stream = Some(Stream::join(&self.streams));
        }
        let streams = self.streams.load(Ordering::Relaxed).max(1);
        let most = self
            .max_window
            .min(self.shared_blocks / streams)
            .min((ra.run / block).max(self.min_window))
            .max(1);
        ra.window = (ra.window * 2).clamp(self.min_window.min(most), most);
        let next = range.end.div_ceil(block);
        let from = ra.claimed_to.max(next);
        let mut to = next + ra.window;
        // Within the expected run, nothing past its end: past it, the window grows as usual.
        if range.end < ra.expect_end + READER_AHEAD {
            to = to.min(ra.expect_end.div_ceil(block));
        }
        if to.saturating_sub(from) < ra.window.div_ceil(2) {
            return None;
        }
        ra.claimed_to = to;
        Some(from..to)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::remote::mem::MemCas;
    use crate::vfs::stats::Stats;

    /// A path with 1 KiB blocks, a cache of `cache` bytes and windows (and read-ahead in
    /// flight) of at most `window` bytes.
    fn path_of(cache: u64, window: u64) -> ReadPath {
        let read_cache = ReadCache::new(
            Arc::new(MemCas::new()),
            Arc::new(Stats::default()),
            1 << 10,
            cache,
            window,
            Duration::from_secs(1),
        );
        ReadPath::new(Arc::new(read_cache), window >> 10, cache)
    }

    /// A path with 1 KiB blocks, a 64-block cache and windows of at most 16 blocks.
    fn path() -> ReadPath {
        path_of(64 << 10, 16 << 10)
    }

    /// 1 KiB blocks, windows from 4 MiB up to 16 MiB, a 64 MiB cache that does not limit them.
    fn large_path() -> ReadPath {
        path_of(64 << 20, 16 << 20)
    }

    /// Read `n` KiB sequentially from the start on `ra`; the last refill's window.
    fn stream(p: &ReadPath, ra: &mut ReadAhead, n: u64) -> u64 {
        for k in 0..n {
            p.advance(ra, &((k << 10)..((k + 1) << 10)));
        }
        ra.window
    }

    #[test]
    fn the_window_never_outgrows_what_the_stream_has_read() {
        let p = large_path();
        let mut ra = ReadAhead::default();
        // 128 KiB reads, as the kernel sends them.
        let read = |ra: &mut ReadAhead, k: u64| {
            p.advance(ra, &((k << 17)..((k + 1) << 17)));
            ra.window
        };
        assert_eq!(read(&mut ra, 0), 4096, "4 MiB to start with");
        let after_2m = (1..16).map(|k| read(&mut ra, k)).last().unwrap();
        assert_eq!(after_2m, 4096, "2 MiB read: still the least window");
        let after_8m = (16..64).map(|k| read(&mut ra, k)).last().unwrap();
        assert_eq!(after_8m, 8192, "8 MiB read: 8 MiB ahead at most");
        let after_16m = (64..128).map(|k| read(&mut ra, k)).last().unwrap();
        assert_eq!(after_16m, 16384, "the largest window once enough was read");
        // A seek starts over.
        p.advance(&mut ra, &(0..10));
        assert_eq!(read(&mut ra, 1000), 0);
        assert_eq!(read(&mut ra, 1001), 4096);
    }

    #[test]
    fn a_jump_after_a_long_run_fetches_a_run_as_long_and_nothing_past_it() {
        let p = large_path();
        let mut ra = ReadAhead::default();
        let kib = |n: u64| n << 10;
        // A tensor of 8 MiB at 100 MiB, read in 128 KiB pieces.
        let tensor = |ra: &mut ReadAhead, at: u64| -> Vec<Option<Range<u64>>> {
            (0..64)
                .map(|k| p.advance(ra, &(at + kib(128 * k)..at + kib(128 * (k + 1)))))
                .collect()
        };
        tensor(&mut ra, 100 << 20);
        // The next tensor: its first read fetches the rest of 8 MiB at once (blocks of
        // 1 KiB)...
        let first = tensor(&mut ra, 200 << 20);
        assert_eq!(first[0], Some((200 * 1024 + 128)..(208 * 1024)));
        // ...and nothing else is fetched within it.
        assert!(first[1..].iter().all(Option::is_none), "{first:?}");
        // Reading on past the expected end: the first MiB is taken for the kernel's own
        // read-ahead; then the window grows as usual.
        let at = |k: u64| (208 << 20) + kib(128 * k)..(208 << 20) + kib(128 * (k + 1));
        for k in 0..7 {
            assert_eq!(p.advance(&mut ra, &at(k)), None, "read {k} past the end");
        }
        let on = p.advance(&mut ra, &at(7));
        assert!(
            on.as_ref().is_some_and(|r| r.end >= 209 * 1024 + 4096),
            "{on:?}"
        );
        // Short runs (random reads) set no expectation.
        let mut r = ReadAhead::default();
        p.advance(&mut r, &(kib(4)..kib(8)));
        assert_eq!(p.advance(&mut r, &(kib(64)..kib(68))), None);
        assert_eq!(p.advance(&mut r, &(kib(640)..kib(644))), None);
    }

    #[test]
    fn the_streams_reading_at_once_share_half_the_cache() {
        let p = path();
        let mut a = ReadAhead::default();
        assert_eq!(
            stream(&p, &mut a, 10),
            16,
            "one stream gets the largest window"
        );
        let mut others: Vec<ReadAhead> = (0..3).map(|_| ReadAhead::default()).collect();
        for ra in &mut others {
            stream(&p, ra, 10);
        }
        assert_eq!(p.streams.load(Ordering::Relaxed), 4);
        // Four streams share 32 blocks: 8 each, so their unread read-ahead fits the cache.
        assert_eq!(stream(&p, &mut others[0], 12), 8);
        // A seek leaves the streams; a closed handle does too.
        p.advance(&mut others[1], &(0..10));
        drop(others.pop());
        assert_eq!(p.streams.load(Ordering::Relaxed), 2);
        let mut again = ReadAhead::default();
        assert_eq!(
            stream(&p, &mut again, 12),
            10,
            "three streams: 32 / 3 blocks"
        );
        drop(others);
        drop(again);
        assert_eq!(p.streams.load(Ordering::Relaxed), 1);
    }
}
