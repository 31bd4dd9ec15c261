//! Read cache for committed file bodies: fixed-size blocks keyed by (content hash, block),
//! bounded in bytes, evicted least-recently-used. Concurrent misses on one block share one
//! fetch. Every fetch has a timeout, so a stalled store fails reads instead of wedging the
//! threads that wait on them.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

use crate::remote::{Cas, FileId, RemoteError};
use crate::vfs::errno::{Errno, VfsResult};
use crate::vfs::stats::Stats;

type Key = (Arc<str>, u64);
type Fetch = Shared<BoxFuture<'static, Result<Bytes, Errno>>>;

enum Slot {
    Ready { data: Bytes, tick: u64 },
    Loading(Fetch),
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    /// tick → key of every Ready slot; the smallest tick is the least recently used.
    lru: BTreeMap<u64, Key>,
    used: u64,
    tick: u64,
}

pub struct ReadCache {
    cas: Arc<dyn Cas>,
    stats: Arc<Stats>,
    inner: Mutex<Inner>,
    block: u64,
    capacity: u64,
    timeout: Duration,
}

impl ReadCache {
    pub fn new(
        cas: Arc<dyn Cas>,
        stats: Arc<Stats>,
        block: u64,
        capacity: u64,
        timeout: Duration,
    ) -> Self {
        ReadCache {
            cas,
            stats,
            inner: Mutex::new(Inner::default()),
            block,
            capacity,
            timeout,
        }
    }

    pub fn block_size(&self) -> u64 {
        self.block
    }

    /// Bytes `range` of `id`, clipped to its size.
    pub async fn read(&self, id: &FileId, range: Range<u64>) -> VfsResult<Bytes> {
        let end = range.end.min(id.size);
        if range.start >= end {
            return Ok(Bytes::new());
        }
        let first = range.start / self.block;
        let last = (end - 1) / self.block;
        let hash: Arc<str> = Arc::from(id.hash.as_str());
        if first == last {
            let b = self.block_data(&hash, id.size, first).await?;
            let off = first * self.block;
            return Ok(b.slice((range.start - off) as usize..(end - off) as usize));
        }
        let blocks = futures::future::try_join_all(
            (first..=last).map(|i| self.block_data(&hash, id.size, i)),
        )
        .await?;
        let mut out = BytesMut::with_capacity((end - range.start) as usize);
        for (i, b) in (first..=last).zip(blocks) {
            let off = i * self.block;
            let lo = range.start.max(off) - off;
            let hi = end.min(off + b.len() as u64) - off;
            out.extend_from_slice(&b[lo as usize..hi as usize]);
        }
        Ok(out.freeze())
    }

    /// Start fetching blocks `blocks` of `id` in the background (read-ahead).
    pub fn prefetch(self: &Arc<Self>, id: &FileId, blocks: Range<u64>) {
        let hash: Arc<str> = Arc::from(id.hash.as_str());
        let nblocks = id.size.div_ceil(self.block);
        for i in blocks.start..blocks.end.min(nblocks) {
            if self.inner.lock().slots.contains_key(&(hash.clone(), i)) {
                continue;
            }
            let this = self.clone();
            let (h, size) = (hash.clone(), id.size);
            tokio::spawn(async move {
                let _ = this.block_data(&h, size, i).await;
            });
        }
    }

    async fn block_data(&self, hash: &Arc<str>, size: u64, idx: u64) -> VfsResult<Bytes> {
        let key = (hash.clone(), idx);
        let fetch = {
            let mut g = self.inner.lock();
            g.tick += 1;
            let tick = g.tick;
            match g.slots.get_mut(&key) {
                Some(Slot::Ready { data, tick: t }) => {
                    let old = std::mem::replace(t, tick);
                    let data = data.clone();
                    g.lru.remove(&old);
                    g.lru.insert(tick, key);
                    return Ok(data);
                }
                Some(Slot::Loading(f)) => f.clone(),
                None => {
                    let f = self.fetch(hash, size, idx);
                    g.slots.insert(key.clone(), Slot::Loading(f.clone()));
                    f
                }
            }
        };
        let res = fetch.await;
        let mut g = self.inner.lock();
        let still_loading = matches!(g.slots.get(&key), Some(Slot::Loading(_)));
        if still_loading {
            match &res {
                Ok(data) => {
                    g.tick += 1;
                    let tick = g.tick;
                    g.used += data.len() as u64;
                    g.lru.insert(tick, key.clone());
                    g.slots.insert(
                        key,
                        Slot::Ready {
                            data: data.clone(),
                            tick,
                        },
                    );
                    self.evict(&mut g);
                }
                Err(_) => {
                    g.slots.remove(&key);
                }
            }
        }
        res
    }

    fn fetch(&self, hash: &Arc<str>, size: u64, idx: u64) -> Fetch {
        let cas = self.cas.clone();
        let stats = self.stats.clone();
        let id = FileId {
            hash: hash.to_string(),
            size,
        };
        let range = idx * self.block..((idx + 1) * self.block).min(size);
        let timeout = self.timeout;
        async move {
            let data = tokio::time::timeout(timeout, cas.read_range(&id, range.clone()))
                .await
                .map_err(|_| {
                    tracing::warn!(hash = %id.hash, ?range, "read from the store timed out");
                    Errno::from(RemoteError::Timeout(format!("{range:?}")))
                })?
                .map_err(|e| {
                    tracing::warn!(hash = %id.hash, ?range, "read from the store failed: {e}");
                    Errno::from(e)
                })?;
            Stats::add(&stats.bytes_fetched, data.len() as u64);
            Ok(data)
        }
        .boxed()
        .shared()
    }

    fn evict(&self, g: &mut Inner) {
        while g.used > self.capacity {
            let Some((_, key)) = g.lru.pop_first() else {
                break;
            };
            if let Some(Slot::Ready { data, .. }) = g.slots.remove(&key) {
                g.used -= data.len() as u64;
            }
        }
    }

    #[cfg(test)]
    fn used(&self) -> u64 {
        self.inner.lock().used
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
        assert_eq!(&c.read(&id, 5..37).await.unwrap()[..], &expect(5..37)[..]);
        assert_eq!(cas.calls.load(Ordering::SeqCst), 4);
        assert_eq!(&c.read(&id, 12..18).await.unwrap()[..], &expect(12..18)[..]);
        assert_eq!(cas.calls.load(Ordering::SeqCst), 4, "second read must hit");
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
}
