//! The read path of unstaged files: the read cache, and read-ahead for sequential streams.
//!
//! Sequential reads grow a read-ahead window (in cache blocks, from 1 MiB up to
//! `readahead_blocks`, at most a quarter of the cache); a seek resets it, so random reads
//! fetch only what they touch. The window is refilled once half of it was consumed, so
//! read-ahead goes out in large runs (each one fetch, [`MAX_RUN`] bytes at most) rather than
//! one small fetch per read; at 32 MiB, four to eight runs are in flight, enough to keep a
//! 50 ms round trip busy.
//!
//! [`MAX_RUN`]: crate::vfs::readcache::MAX_RUN

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::remote::FileId;
use crate::vfs::readcache::ReadCache;
use crate::vfs::VfsResult;

/// Sequential-read detection of one open handle.
#[derive(Default)]
pub(in crate::vfs) struct ReadAhead {
    next_offset: u64,
    /// Read-ahead window in cache blocks (0: not sequential).
    window: u64,
    /// Blocks before this one have been requested by read-ahead already.
    claimed_to: u64,
}

/// Reads of committed bodies through the cache, with read-ahead.
pub(in crate::vfs) struct ReadPath {
    cache: Arc<ReadCache>,
    /// Read-ahead window bounds, in cache blocks.
    min_window: u64,
    max_window: u64,
}

impl ReadPath {
    /// `readahead_blocks`: the largest window; read-ahead must not evict itself (nor
    /// everything else) from the cache, so it is also at most a quarter of it.
    pub(in crate::vfs) fn new(cache: Arc<ReadCache>, readahead_blocks: u64, capacity: u64) -> Self {
        let block = cache.block_size();
        let max_window = readahead_blocks.min(capacity / 4 / block).max(1);
        let min_window = ((1 << 20) / block).clamp(1, max_window);
        ReadPath {
            cache,
            min_window,
            max_window,
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
            ra.window = 0;
            ra.claimed_to = 0;
            return None;
        }
        ra.window = (ra.window * 2).clamp(self.min_window, self.max_window);
        let next = range.end.div_ceil(block);
        let from = ra.claimed_to.max(next);
        let to = next + ra.window;
        if to.saturating_sub(from) < ra.window.div_ceil(2) {
            return None;
        }
        ra.claimed_to = to;
        Some(from..to)
    }
}
