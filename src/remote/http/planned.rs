//! Reads through cached reconstruction plans and xorb indexes (plan.rs): one ranged fetch of
//! exactly the chunks a read needs, from the signed URL the plan holds, decoded with xet-core's
//! chunk deserializer and checked against the index (chunk count and lengths).
//!
//! Whatever this cannot do (no plan or index yet, a CAS that refuses a narrowed range, a fetch
//! that fails) returns `Ok(None)` or an error, and the caller reads that piece through a ranged
//! reconstruction instead, as before plans existed. Plans load in the background: the first
//! read of a file never waits for one.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use xet_client::cas_client::Client;
use xet_client::cas_types::{ChunkRange, Key};
use xet_client::chunk_cache::ChunkCache;
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::xorb_object::deserialize_chunks;

use super::plan::{suffix_len, Lru, Plan, Tail, XorbIndex};
use crate::server::auth::now_secs;

/// Memory for cached plans and for cached xorb indexes (each).
const PLAN_BUDGET: u64 = 16 << 20;
const INDEX_BUDGET: u64 = 16 << 20;
/// A stored range at most this long is fetched whole when its xorb has no index: one round
/// trip for a small file, without knowing where its chunks start.
const SMALL_SOURCE: u64 = 2 << 20;
/// Xorb indexes loaded as soon as a plan arrives (more load on first use).
const EAGER_INDEXES: usize = 32;
/// After a failed plan query, reads use reconstructions for this long before asking again.
const PLAN_RETRY_SECS: u64 = 30;
/// Extra chunks' worth of suffix asked for beyond the highest chunk a plan names, so that one
/// suffix fetch usually holds the whole boundary section.
const SUFFIX_SLACK_CHUNKS: u32 = 512;

type PlanLoad = Shared<BoxFuture<'static, Option<Arc<Plan>>>>;

enum Cached {
    Plan(Arc<Plan>),
    /// The query failed; ask again after this time (unix seconds).
    Failed(u64),
}

impl Clone for Cached {
    fn clone(&self) -> Self {
        match self {
            Cached::Plan(p) => Cached::Plan(p.clone()),
            Cached::Failed(t) => Cached::Failed(*t),
        }
    }
}

struct State {
    plans: Lru<MerkleHash, Cached>,
    /// `None`: the xorb's footer could not be used; its reads go the other ways.
    indexes: Lru<MerkleHash, Option<Arc<XorbIndex>>>,
    plan_loads: HashMap<MerkleHash, PlanLoad>,
    index_loads: HashSet<MerkleHash>,
}

pub struct PlannedReads {
    client: Arc<dyn Client>,
    http: reqwest::Client,
    chunk_cache: Option<Arc<dyn ChunkCache>>,
    prefix: String,
    state: Mutex<State>,
    /// The CAS refused a narrowed range (a URL signed for its exact ranges): fetch only the
    /// ranges the plan names from now on.
    refused: AtomicBool,
}

/// Why a planned fetch did not deliver.
#[derive(Debug)]
enum FetchError {
    /// 403 again after a fresh plan: narrowed ranges are not allowed by this CAS.
    Refused,
    Other(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Refused => write!(f, "narrowed range refused"),
            FetchError::Other(s) => write!(f, "{s}"),
        }
    }
}

impl PlannedReads {
    pub fn new(
        client: Arc<dyn Client>,
        chunk_cache: Option<Arc<dyn ChunkCache>>,
        prefix: String,
    ) -> Arc<Self> {
        // Kept-alive connections (reqwest pools them per host), timeouts so a stalled fetch
        // falls back rather than hangs.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Arc::new(PlannedReads {
            client,
            http,
            chunk_cache,
            prefix,
            state: Mutex::new(State {
                plans: Lru::new(PLAN_BUDGET),
                indexes: Lru::new(INDEX_BUDGET),
                plan_loads: HashMap::new(),
                index_loads: HashSet::new(),
            }),
            refused: AtomicBool::new(false),
        })
    }

    /// The plan of file `hash` (of `size` bytes) if one is cached and valid; otherwise its
    /// query starts in the background. A plan near expiry is renewed in the background.
    pub fn plan(self: &Arc<Self>, hash: &MerkleHash, size: u64) -> Option<Arc<Plan>> {
        let now = now_secs();
        let cached = self.state.lock().plans.get(hash);
        match cached {
            Some(Cached::Plan(p)) if !p.expired(now) => {
                if p.stale(now) {
                    let _running = self.load_plan(hash, size);
                }
                Some(p)
            }
            Some(Cached::Failed(until)) if now < until => None,
            _ => {
                let _running = self.load_plan(hash, size);
                None
            }
        }
    }

    /// A fresh plan (the cached one's URLs were refused).
    async fn reload(
        self: &Arc<Self>,
        hash: &MerkleHash,
        size: u64,
        old: &Arc<Plan>,
    ) -> Option<Arc<Plan>> {
        {
            let mut g = self.state.lock();
            if matches!(g.plans.get(hash), Some(Cached::Plan(p)) if Arc::ptr_eq(&p, old)) {
                g.plans.remove(hash);
            }
        }
        self.load_plan(hash, size).await
    }

    /// The query of `hash`'s plan, shared by everyone who needs it meanwhile.
    fn load_plan(self: &Arc<Self>, hash: &MerkleHash, size: u64) -> PlanLoad {
        let mut g = self.state.lock();
        if let Some(l) = g.plan_loads.get(hash) {
            return l.clone();
        }
        let me = self.clone();
        let h = *hash;
        let load = async move {
            let answer = me.client.get_reconstruction(&h, None).await;
            let now = now_secs();
            let plan = match answer {
                Ok(Some(r)) => Plan::from_v2(&r, size, now)
                    .map_err(
                        |e| tracing::warn!(file = %h.hex(), "unusable reconstruction plan: {e}"),
                    )
                    .ok()
                    .map(Arc::new),
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!(file = %h.hex(), "reconstruction plan: {e}");
                    None
                }
            };
            {
                let mut g = me.state.lock();
                g.plan_loads.remove(&h);
                match &plan {
                    Some(p) => g.plans.insert(h, Cached::Plan(p.clone()), p.cost),
                    None => g.plans.insert(h, Cached::Failed(now + PLAN_RETRY_SECS), 64),
                }
            }
            if let Some(p) = &plan {
                // The indexes of its large terms, so that the reads after this one are exact.
                let mut seen = HashSet::new();
                for t in &p.terms {
                    if seen.len() >= EAGER_INDEXES {
                        break;
                    }
                    let big = p
                        .source(&t.xorb, &t.chunks)
                        .is_some_and(|s| s.bytes.end - s.bytes.start > SMALL_SOURCE);
                    if big && seen.insert(t.xorb) {
                        me.index(p, &t.xorb);
                    }
                }
            }
            plan
        }
        .boxed()
        .shared();
        g.plan_loads.insert(*hash, load.clone());
        drop(g);
        // It must complete with nobody awaiting it.
        tokio::spawn(load.clone());
        load
    }

    /// The index of `xorb` if known; otherwise its footer is fetched in the background.
    fn index(self: &Arc<Self>, plan: &Arc<Plan>, xorb: &MerkleHash) -> Option<Arc<XorbIndex>> {
        let mut g = self.state.lock();
        if let Some(ix) = g.indexes.get(xorb) {
            return ix;
        }
        if !g.index_loads.insert(*xorb) {
            return None;
        }
        drop(g);
        let me = self.clone();
        let plan = plan.clone();
        let x = *xorb;
        tokio::spawn(async move {
            let ix = match me.load_index(&plan, &x).await {
                Ok(ix) => Some(Arc::new(ix)),
                Err(e) => {
                    tracing::info!(xorb = %x.hex(), "no chunk index for this xorb ({e}); its reads fetch whole ranges");
                    None
                }
            };
            let mut g = me.state.lock();
            g.index_loads.remove(&x);
            let cost = ix.as_ref().map_or(64, |i| i.cost());
            g.indexes.insert(x, ix, cost);
        });
        None
    }

    /// The boundary section of `xorb`'s footer, from a suffix of the stored xorb.
    async fn load_index(&self, plan: &Plan, xorb: &MerkleHash) -> Result<XorbIndex, String> {
        let sources = plan.sources.get(xorb).ok_or("not in the plan")?;
        let url = sources.first().ok_or("not in the plan")?.url.clone();
        let max_chunk = sources.iter().map(|s| s.chunks.end).max().unwrap_or(0);
        let mut want = suffix_len(max_chunk + SUFFIX_SLACK_CHUNKS);
        for _ in 0..2 {
            let tail = self.get(&url, format!("bytes=-{want}")).await?;
            match XorbIndex::from_tail(&tail)? {
                Tail::Index(ix) => {
                    if !ix.agrees(plan, xorb) {
                        return Err("its footer disagrees with the reconstruction plan".into());
                    }
                    return Ok(ix);
                }
                Tail::Need(n) if n > want => want = n,
                Tail::Need(_) => return Err("short suffix".into()),
            }
        }
        Err("footer longer than announced".into())
    }

    /// `GET url` with `Range: range`: the body of a 206 (or of a 200 for a body that fits).
    async fn get(&self, url: &str, range: String) -> Result<Bytes, String> {
        let r = self
            .http
            .get(url)
            .header(reqwest::header::RANGE, range)
            .send()
            .await
            .map_err(|e| format!("fetch: {e}"))?;
        let status = r.status();
        if !status.is_success() {
            return Err(format!("fetch: HTTP {status}"));
        }
        r.bytes().await.map_err(|e| format!("fetch: {e}"))
    }

    /// Bytes `lo..hi` of term `i` of `plan` (file `hash`), or `Ok(None)` if only a
    /// reconstruction can read them now.
    pub async fn read_piece(
        self: &Arc<Self>,
        hash: &MerkleHash,
        plan: &Arc<Plan>,
        i: usize,
        lo: u64,
        hi: u64,
    ) -> Result<Option<Bytes>, String> {
        let t = &plan.terms[i];
        let src = plan
            .source(&t.xorb, &t.chunks)
            .ok_or("term without a source")?;
        let index = self.index(plan, &t.xorb);
        let narrow = !self.refused.load(Ordering::Relaxed);
        // Either exactly the chunks holding lo..hi (with the index), or the whole stored range
        // the term lies in (small enough to fetch whole).
        let (chunks, packed, index, skip) = match index {
            Some(ix) if narrow => {
                let l = ix.locate(&t.chunks, lo, hi);
                (l.chunks, l.packed, Some(ix), Some(l.skip))
            }
            _ if src.bytes.end - src.bytes.start <= SMALL_SOURCE => {
                (src.chunks.clone(), src.bytes.clone(), None, None)
            }
            _ => return Ok(None),
        };
        let (data, offsets) = match self
            .fetch(
                hash,
                plan,
                &t.xorb,
                chunks.clone(),
                packed,
                index.as_deref(),
            )
            .await
        {
            Ok(d) => d,
            Err(FetchError::Refused) => {
                if !self.refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the CAS refuses narrowed fetch ranges; reads fetch the ranges it names"
                    );
                }
                return Ok(None);
            }
            Err(FetchError::Other(e)) => return Err(e),
        };
        let at = match skip {
            Some(s) => s,
            None => {
                // The term's chunks within the fetched range.
                let k = (t.chunks.start - chunks.start) as usize;
                let e = (t.chunks.end - chunks.start) as usize;
                let (base, end) = (u64::from(offsets[k]), u64::from(offsets[e]));
                if end - base != t.len {
                    return Err(format!(
                        "term decodes to {} bytes, the plan says {}",
                        end - base,
                        t.len
                    ));
                }
                base + lo
            }
        };
        let (a, b) = (at as usize, (at + hi - lo) as usize);
        if b > data.len() {
            return Err(format!("fetched {} bytes, need {b}", data.len()));
        }
        Ok(Some(data.slice(a..b)))
    }

    /// Chunks `chunks` of `xorb`, stored at bytes `packed`: from the chunk cache, or fetched
    /// (and then cached). Decoded bytes and the offset of every chunk in them (plus the end).
    async fn fetch(
        self: &Arc<Self>,
        hash: &MerkleHash,
        plan: &Arc<Plan>,
        xorb: &MerkleHash,
        chunks: Range<u32>,
        packed: Range<u64>,
        index: Option<&XorbIndex>,
    ) -> Result<(Bytes, Vec<u32>), FetchError> {
        let key = Key {
            prefix: self.prefix.clone(),
            hash: *xorb,
        };
        let crange = ChunkRange::new(chunks.start, chunks.end);
        if let Some(c) = &self.chunk_cache {
            if let Ok(Some(hit)) = c.get(&key, &crange).await {
                if check(&hit.offsets, hit.data.len(), &chunks, index).is_ok() {
                    return Ok((Bytes::from(hit.data), hit.offsets));
                }
            }
        }
        let mut plan = plan.clone();
        let range = format!("bytes={}-{}", packed.start, packed.end - 1);
        let mut refreshed = false;
        let body = loop {
            let url = plan
                .source(xorb, &chunks)
                .ok_or_else(|| FetchError::Other("chunks not in the plan".into()))?
                .url
                .clone();
            let r = self
                .http
                .get(&*url)
                .header(reqwest::header::RANGE, &range)
                .send()
                .await
                .map_err(|e| FetchError::Other(format!("fetch: {e}")))?;
            let status = r.status();
            if status == reqwest::StatusCode::FORBIDDEN {
                // Expired or revoked URL: once with a fresh plan; refused again means the
                // range itself is not allowed.
                if refreshed {
                    return Err(FetchError::Refused);
                }
                refreshed = true;
                plan = self
                    .reload(hash, plan.size, &plan)
                    .await
                    .ok_or_else(|| FetchError::Other("plan refresh failed".into()))?;
                continue;
            }
            if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
                return Err(FetchError::Refused);
            }
            if status != reqwest::StatusCode::PARTIAL_CONTENT {
                return Err(FetchError::Other(format!("fetch: HTTP {status}")));
            }
            break r
                .bytes()
                .await
                .map_err(|e| FetchError::Other(format!("fetch: {e}")))?;
        };
        if body.len() as u64 != packed.end - packed.start {
            return Err(FetchError::Other(format!(
                "fetch of {range} returned {} bytes",
                body.len()
            )));
        }
        let (data, offsets) =
            tokio::task::spawn_blocking(move || deserialize_chunks(&mut Cursor::new(&body[..])))
                .await
                .map_err(|e| FetchError::Other(e.to_string()))?
                .map_err(|e| FetchError::Other(format!("xorb chunks: {e}")))?;
        check(&offsets, data.len(), &chunks, index).map_err(FetchError::Other)?;
        let data = Bytes::from(data);
        if let Some(c) = &self.chunk_cache {
            let (c, data, offsets) = (c.clone(), data.clone(), offsets.clone());
            tokio::spawn(async move {
                if let Err(e) = c.put(&key, &crange, &offsets, &data).await {
                    tracing::debug!("chunk cache put: {e}");
                }
            });
        }
        Ok((data, offsets))
    }
}

/// Whether decoded chunks `chunks` (offsets, `len` bytes) are what the index says.
fn check(
    offsets: &[u32],
    len: usize,
    chunks: &Range<u32>,
    index: Option<&XorbIndex>,
) -> Result<(), String> {
    let n = (chunks.end - chunks.start) as usize;
    if offsets.len() != n + 1 || offsets[0] != 0 || offsets[n] as usize != len {
        return Err(format!(
            "decoded {} chunks, expected {n}",
            offsets.len().saturating_sub(1)
        ));
    }
    if let Some(ix) = index {
        for (k, w) in offsets.windows(2).enumerate() {
            if u64::from(w[1] - w[0]) != ix.chunk_len(chunks.start + k as u32) {
                return Err(format!(
                    "chunk {} decodes to {} bytes",
                    chunks.start + k as u32,
                    w[1] - w[0]
                ));
            }
        }
    }
    Ok(())
}
