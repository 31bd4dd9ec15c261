//! Read cache for committed file bodies: small fixed-size blocks keyed by (content hash,
//! block), bounded in bytes, evicted least-recently-used.
//!
//! Reads are sized to the access pattern: a read fetches only the blocks it touches (a cold
//! 4 KiB random read costs one fetch of one block, 16 KiB by default: 64 KiB blocks cost 20%
//! of random-read IOPS in copying), and consecutive missing blocks — a large read, or the
//! read-ahead of a sequential stream — are fetched as one run of up to [`MAX_RUN`] bytes. Concurrent misses on a block share its run's fetch; the fetch itself files every
//! block of its run into the cache, so read-ahead that nobody waited for is kept too. Every
//! fetch has a timeout, so a stalled store fails reads instead of wedging the threads that
//! wait on them.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

use crate::lru::Lru;
use crate::remote::{Cas, FileId, RemoteError};
use crate::vfs::errno::{Errno, VfsResult};
use crate::vfs::stats::Stats;

/// Largest fetch of consecutive blocks in one store call.
pub const MAX_RUN: u64 = 4 << 20;

type Key = (Arc<str>, u64);
type Fetch = Shared<BoxFuture<'static, Result<Bytes, Errno>>>;

/// A block whose run is being fetched: part of run `run`, whose bytes start at this block's
/// offset minus `at`.
struct Loading {
    run: u64,
    fetch: Fetch,
    at: usize,
}

struct Inner {
    /// Blocks with their bytes, each costing its length; the capacity is the budget.
    ready: Lru<Key, Bytes>,
    /// Blocks being fetched: not in the LRU order until their bytes arrive.
    loading: HashMap<Key, Loading>,
    /// Bytes of the blocks in `loading`: read-ahead stops claiming at [`ReadCache`]'s
    /// `ahead_limit` (however many streams read ahead), reads that wait never do.
    loading_bytes: u64,
    runs: u64,
}

pub struct ReadCache {
    cas: Arc<dyn Cas>,
    stats: Arc<Stats>,
    inner: Arc<Mutex<Inner>>,
    block: u64,
    /// Most bytes read-ahead may have in flight: the share `--memory-mib` gives it beside
    /// the cache.
    ahead_limit: u64,
    timeout: Duration,
}

/// What a block needs: its bytes, or a wait for a run.
enum Need {
    Ready(Bytes),
    Wait(Fetch, usize),
}

impl ReadCache {
    pub fn new(
        cas: Arc<dyn Cas>,
        stats: Arc<Stats>,
        block: u64,
        capacity: u64,
        ahead_limit: u64,
        timeout: Duration,
    ) -> Self {
        ReadCache {
            cas,
            stats,
            inner: Arc::new(Mutex::new(Inner {
                ready: Lru::new(capacity),
                loading: HashMap::new(),
                loading_bytes: 0,
                runs: 0,
            })),
            block,
            ahead_limit,
            timeout,
        }
    }

    pub fn block_size(&self) -> u64 {
        self.block
    }

    /// Bytes held (landed blocks and read-ahead in flight).
    pub fn used_bytes(&self) -> u64 {
        let g = self.inner.lock();
        g.ready.used() + g.loading_bytes
    }

    /// Bytes `range` of `id`, clipped to its size.
    pub async fn read(&self, id: &FileId, range: Range<u64>) -> VfsResult<Bytes> {
        let end = range.end.min(id.size);
        if range.start >= end {
            return Ok(Bytes::new());
        }
        let first = range.start / self.block;
        let last = (end - 1) / self.block;
        let needs = self.claim(id, first..last + 1, true);
        // Every run this read waits for is fetched at the same time.
        let blocks = futures::future::try_join_all((first..=last).zip(needs).map(|(i, need)| {
            let len = self.block_len(id.size, i) as usize;
            async move {
                match need {
                    Need::Ready(d) => Ok(d),
                    Need::Wait(fetch, at) => Ok::<_, Errno>(fetch.await?.slice(at..at + len)),
                }
            }
        }))
        .await?;
        let mut out = BytesMut::with_capacity((end - range.start) as usize);
        for (i, data) in (first..=last).zip(blocks) {
            let off = i * self.block;
            let lo = range.start.max(off) - off;
            let hi = end.min(off + data.len() as u64) - off;
            if first == last {
                return Ok(data.slice(lo as usize..hi as usize));
            }
            out.extend_from_slice(&data[lo as usize..hi as usize]);
        }
        Ok(out.freeze())
    }

    /// Start fetching blocks `blocks` of `id` in the background (read-ahead).
    pub fn prefetch(&self, id: &FileId, blocks: Range<u64>) {
        let nblocks = id.size.div_ceil(self.block);
        let blocks = blocks.start.min(nblocks)..blocks.end.min(nblocks);
        if !blocks.is_empty() {
            self.claim(id, blocks, false);
        }
    }

    fn block_len(&self, size: u64, idx: u64) -> u64 {
        ((idx + 1) * self.block).min(size) - idx * self.block
    }

    /// For each block of `blocks`: its bytes, or the run fetch to wait for. Missing blocks are
    /// grouped into runs of consecutive blocks, each fetched by one store call. With `want`
    /// false (read-ahead) nothing is returned.
    fn claim(&self, id: &FileId, blocks: Range<u64>, want: bool) -> Vec<Need> {
        let hash: Arc<str> = Arc::from(id.hash.as_str());
        let per_run = (MAX_RUN / self.block).max(1);
        let mut needs = Vec::new();
        let mut g = self.inner.lock();
        let mut run: Option<(u64, Range<u64>, Fetch)> = None;
        for i in blocks {
            let key = (hash.clone(), i);
            if let Some(data) = g.ready.get(&key) {
                needs.push(Need::Ready(data.clone()));
                run = None;
                continue;
            }
            match g.loading.get(&key) {
                Some(l) => {
                    needs.push(Need::Wait(l.fetch.clone(), l.at));
                    run = None;
                }
                None if !want && g.loading_bytes + self.block > self.ahead_limit => {
                    // Read-ahead's share is in flight: the rest waits for a later refill.
                    break;
                }
                None => {
                    let extend = run
                        .as_ref()
                        .is_some_and(|(_, r, _)| r.end == i && r.end - r.start < per_run);
                    if !extend {
                        g.runs += 1;
                        let n = g.runs;
                        let span = i..(i + per_run).min(id.size.div_ceil(self.block));
                        run = Some((n, i..i, self.fetch(&hash, id.size, n, span)));
                    }
                    let (n, r, fetch) = run.as_mut().expect("a run was just started");
                    let at = ((i - r.start) * self.block) as usize;
                    r.end = i + 1;
                    g.loading_bytes += self.block_len(id.size, i);
                    g.loading.insert(
                        key,
                        Loading {
                            run: *n,
                            fetch: fetch.clone(),
                            at,
                        },
                    );
                    needs.push(Need::Wait(fetch.clone(), at));
                }
            }
        }
        drop(g);
        if !want {
            // Read-ahead: the runs must make progress with nobody awaiting them.
            for need in needs {
                if let Need::Wait(fetch, 0) = need {
                    tokio::spawn(async move {
                        let _ = fetch.await;
                    });
                }
            }
            return Vec::new();
        }
        needs
    }

    /// The fetch of run `run`: blocks `span` of the body `hash` (a run may end up claiming
    /// fewer blocks than its span; it fetches only those, as its slots say when it starts).
    fn fetch(&self, hash: &Arc<str>, size: u64, run: u64, span: Range<u64>) -> Fetch {
        let cas = self.cas.clone();
        let stats = self.stats.clone();
        let inner = self.inner.clone();
        let (block, timeout) = (self.block, self.timeout);
        let hash = hash.clone();
        async move {
            // The blocks this run claimed (consecutive from the span's start).
            let claimed = {
                let g = inner.lock();
                span.clone()
                    .take_while(|i| {
                        g.loading
                            .get(&(hash.clone(), *i))
                            .is_some_and(|l| l.run == run)
                    })
                    .count() as u64
            };
            let range = span.start * block..((span.start + claimed) * block).min(size);
            let id = FileId {
                hash: hash.to_string(),
                size,
            };
            let result =
                match tokio::time::timeout(timeout, cas.read_range(&id, range.clone())).await {
                    Err(_) => {
                        tracing::warn!(hash = %id.hash, ?range, "read from the store timed out");
                        Err(Errno::from(RemoteError::Timeout(format!("{range:?}"))))
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(hash = %id.hash, ?range, "read from the store failed: {e}");
                        Err(Errno::from(e))
                    }
                    Ok(Ok(data)) => Ok(data),
                };
            // File the run's blocks (or drop them, on failure) where they still wait for it;
            // filing evicts the least recently used blocks beyond the capacity.
            let mut g = inner.lock();
            for i in span.start..span.start + claimed {
                let key = (hash.clone(), i);
                if g.loading.get(&key).is_none_or(|l| l.run != run) {
                    continue;
                }
                g.loading.remove(&key);
                g.loading_bytes -= ((i + 1) * block).min(size) - i * block;
                if let Ok(data) = &result {
                    let lo = ((i - span.start) * block) as usize;
                    let hi = (lo + block as usize).min(data.len());
                    let piece = data.slice(lo..hi);
                    let cost = piece.len() as u64;
                    g.ready.insert(key, piece, cost);
                }
            }
            drop(g);
            let data = result?;
            Stats::add(&stats.bytes_fetched, data.len() as u64);
            Ok(data)
        }
        .boxed()
        .shared()
    }

    #[cfg(test)]
    fn used(&self) -> u64 {
        self.inner.lock().ready.used()
    }

    #[cfg(test)]
    fn loading_bytes(&self) -> u64 {
        self.inner.lock().loading_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{RemoteResult, UploadItem, Uploaded};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A CAS whose file `id.hash` holds byte `i % 251` at offset `i`, counting calls.
    struct Pattern {
        calls: AtomicU64,
        stall: bool,
    }

    #[async_trait::async_trait]
    impl Cas for Pattern {
        async fn read_range(&self, _id: &FileId, r: Range<u64>) -> RemoteResult<Bytes> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.stall {
                futures::future::pending::<()>().await;
            }
            Ok(r.map(|i| (i % 251) as u8).collect::<Vec<_>>().into())
        }
        async fn upload_batch(
            &self,
            _items: Vec<UploadItem<'_>>,
        ) -> RemoteResult<Vec<RemoteResult<Uploaded>>> {
            unreachable!("read-only test double")
        }
        async fn compose(
            &self,
            _base: &FileId,
            _edits: Vec<crate::remote::ComposeEdit>,
        ) -> RemoteResult<crate::remote::Composed> {
            unreachable!("read-only test double")
        }
    }

    fn cache(stall: bool, capacity: u64) -> (Arc<Pattern>, ReadCache) {
        let cas = Arc::new(Pattern {
            calls: AtomicU64::new(0),
            stall,
        });
        let c = ReadCache::new(
            cas.clone(),
            Arc::new(Stats::default()),
            10,
            capacity,
            capacity / 4,
            Duration::from_millis(200),
        );
        (cas, c)
    }

    fn expect(r: Range<u64>) -> Vec<u8> {
        r.map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn reads_across_blocks_and_hits_cache() {
        let (cas, c) = cache(false, 1000);
        let id = FileId {
            hash: "h".into(),
            size: 95,
        };
        // Four missing blocks: one run, one store call.
        assert_eq!(&c.read(&id, 5..37).await.unwrap()[..], &expect(5..37)[..]);
        assert_eq!(cas.calls.load(Ordering::SeqCst), 1);
        assert_eq!(&c.read(&id, 12..18).await.unwrap()[..], &expect(12..18)[..]);
        assert_eq!(cas.calls.load(Ordering::SeqCst), 1, "second read must hit");
        // A read around a cached block fetches the missing blocks on each side separately.
        assert_eq!(&c.read(&id, 45..52).await.unwrap()[..], &expect(45..52)[..]);
        assert_eq!(&c.read(&id, 25..62).await.unwrap()[..], &expect(25..62)[..]);
        assert_eq!(cas.calls.load(Ordering::SeqCst), 3);
        // Clipped at EOF, and the last block is short.
        assert_eq!(
            &c.read(&id, 90..200).await.unwrap()[..],
            &expect(90..95)[..]
        );
        assert!(c.read(&id, 95..100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn evicts_to_capacity() {
        let (_cas, c) = cache(false, 30);
        let id = FileId {
            hash: "h".into(),
            size: 1000,
        };
        for i in 0..10 {
            c.read(&id, i * 10..i * 10 + 1).await.unwrap();
            assert!(c.used() <= 30);
        }
    }

    #[tokio::test]
    async fn stalled_store_times_out_and_is_retried() {
        let (cas, c) = cache(true, 1000);
        let id = FileId {
            hash: "h".into(),
            size: 100,
        };
        let e = c.read(&id, 0..5).await.unwrap_err();
        assert_eq!(e, Errno::ETIMEDOUT);
        let _ = c.read(&id, 0..5).await;
        assert_eq!(
            cas.calls.load(Ordering::SeqCst),
            2,
            "a failed fetch is not cached"
        );
    }

    #[tokio::test]
    async fn read_ahead_is_fetched_in_runs_and_kept_without_a_reader() {
        let (cas, c) = cache(false, 10_000);
        let id = FileId {
            hash: "h".into(),
            size: 2000,
        };
        c.prefetch(&id, 0..100);
        // The runs complete in the background and land in the cache.
        for _ in 0..1000 {
            if c.used() == 1000 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(c.used(), 1000);
        let calls = cas.calls.load(Ordering::SeqCst);
        assert_eq!(
            &c.read(&id, 0..1000).await.unwrap()[..],
            &expect(0..1000)[..]
        );
        assert_eq!(
            cas.calls.load(Ordering::SeqCst),
            calls,
            "read-ahead was not kept"
        );
    }

    #[tokio::test]
    async fn read_ahead_in_flight_stays_within_its_share_across_streams() {
        // Capacity 400: read-ahead may have 100 bytes (ten 10-byte blocks) in flight.
        let (_cas, c) = cache(true, 400);
        for f in 0..5 {
            let id = FileId {
                hash: format!("f{f}"),
                size: 1000,
            };
            c.prefetch(&id, 0..100);
            assert!(c.loading_bytes() <= 100, "{}", c.loading_bytes());
        }
        assert_eq!(c.loading_bytes(), 100, "read-ahead claimed its whole share");
        // A read that waits is not held to the share.
        let id = FileId {
            hash: "g".into(),
            size: 1000,
        };
        let r = tokio::time::timeout(Duration::from_millis(10), c.read(&id, 0..50)).await;
        assert!(r.is_err(), "the stalled store answers nothing");
        assert!(c.loading_bytes() > 100);
    }

    #[tokio::test]
    async fn loading_bytes_return_to_zero_when_runs_land_or_fail() {
        let (_cas, c) = cache(false, 1000);
        let id = FileId {
            hash: "h".into(),
            size: 95,
        };
        c.read(&id, 0..95).await.unwrap();
        assert_eq!(c.loading_bytes(), 0);
        let (_cas, stalled) = cache(true, 1000);
        assert_eq!(
            stalled.read(&id, 0..95).await.unwrap_err(),
            Errno::ETIMEDOUT
        );
        assert_eq!(stalled.loading_bytes(), 0);
    }
}
