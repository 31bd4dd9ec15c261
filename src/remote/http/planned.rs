//! Reads through cached reconstruction plans and xorb indexes (plan.rs): one ranged fetch of
//! exactly the chunks a read needs, from the signed URL the plan holds, decoded with xet-core's
//! chunk deserializer and checked against the index (chunk count and lengths).
//!
//! Whatever this cannot do (no plan or index yet, a CAS that refuses a narrowed range, a fetch
//! that fails) returns `Ok(None)` or an error, and the caller reads that piece through a ranged
//! reconstruction instead, as before plans existed. Plans load in the background: the first
//! read of a file never waits for one.

use crate::remote::http::SendTimed;
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
use xet_client::cas_types::{ChunkRange, Key, QueryReconstructionResponseV2};
use xet_client::chunk_cache::ChunkCache;
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::xorb_object::deserialize_chunks;

use super::plan::{suffix_len, Plan, Tail, XorbIndex};
use super::room::Room;
use crate::lru::Lru;
use crate::remote::wire::now_secs;

/// Memory for cached plans, for cached xorb indexes and for fetched chunks waiting to be put
/// in the chunk cache, of [`PlannedReads::new`] (a mount's budget sets its own: see
/// [`PlannedReads::with_budget`]).
const PLAN_BUDGET: u64 = 16 << 20;
const INDEX_BUDGET: u64 = 16 << 20;
const PUT_BUDGET: u64 = 16 << 20;
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

/// Where plans come from: the CAS's reconstruction route, without a range.
#[async_trait::async_trait]
pub trait PlanQuery: Send + Sync {
    async fn query(
        &self,
        file: &MerkleHash,
    ) -> Result<Option<QueryReconstructionResponseV2>, String>;
}

#[async_trait::async_trait]
impl PlanQuery for Arc<dyn Client> {
    async fn query(
        &self,
        file: &MerkleHash,
    ) -> Result<Option<QueryReconstructionResponseV2>, String> {
        self.get_reconstruction(file, None)
            .await
            .map_err(|e| e.to_string())
    }
}

pub struct PlannedReads {
    query: Box<dyn PlanQuery>,
    http: reqwest::Client,
    chunk_cache: Option<Arc<dyn ChunkCache>>,
    prefix: String,
    state: Mutex<State>,
    /// The CAS refused a narrowed range (a URL signed for its exact ranges): fetch only the
    /// ranges the plan names from now on.
    refused: AtomicBool,
    /// Whether a missing xorb index was logged (once per mount, not once per xorb).
    told_no_index: AtomicBool,
    /// Fetched chunks on their way to the chunk cache: a fetch waits for room before it
    /// hands its chunks to a background put, so puts slower than the network hold back reads
    /// instead of keeping their chunks in memory.
    puts: Room,
}

/// A failed `GET`.
#[derive(Debug)]
enum Got {
    Forbidden,
    Other(String),
}

impl std::fmt::Display for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Got::Forbidden => write!(f, "fetch: HTTP 403"),
            Got::Other(s) => write!(f, "{s}"),
        }
    }
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
        query: Box<dyn PlanQuery>,
        chunk_cache: Option<Arc<dyn ChunkCache>>,
        prefix: String,
    ) -> Arc<Self> {
        Self::with_budget(
            query,
            chunk_cache,
            prefix,
            PLAN_BUDGET,
            INDEX_BUDGET,
            PUT_BUDGET,
        )
    }

    /// [`Self::new`] holding at most `plans` bytes of plans, `indexes` of xorb indexes and
    /// `puts` of fetched chunks waiting for the chunk cache.
    pub fn with_budget(
        query: Box<dyn PlanQuery>,
        chunk_cache: Option<Arc<dyn ChunkCache>>,
        prefix: String,
        plans: u64,
        indexes: u64,
        puts: u64,
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
            query,
            http,
            chunk_cache,
            prefix,
            state: Mutex::new(State {
                plans: Lru::new(plans),
                indexes: Lru::new(indexes),
                plan_loads: HashMap::new(),
                index_loads: HashSet::new(),
            }),
            refused: AtomicBool::new(false),
            told_no_index: AtomicBool::new(false),
            puts: Room::new(puts),
        })
    }

    /// The plan of file `hash` (of `size` bytes) if one is cached and valid; otherwise its
    /// query starts in the background. A plan near expiry is renewed in the background.
    pub fn plan(self: &Arc<Self>, hash: &MerkleHash, size: u64) -> Option<Arc<Plan>> {
        let now = now_secs();
        let cached = self.state.lock().plans.get(hash).cloned();
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
            if matches!(g.plans.get(hash), Some(Cached::Plan(p)) if Arc::ptr_eq(p, old)) {
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
            let answer = me.query.query(&h).await;
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
                        me.index(&h, p, &t.xorb);
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
    fn index(
        self: &Arc<Self>,
        file: &MerkleHash,
        plan: &Arc<Plan>,
        xorb: &MerkleHash,
    ) -> Option<Arc<XorbIndex>> {
        let mut g = self.state.lock();
        if let Some(ix) = g.indexes.get(xorb) {
            return ix.clone();
        }
        if !g.index_loads.insert(*xorb) {
            return None;
        }
        drop(g);
        let me = self.clone();
        let plan = plan.clone();
        let (x, f) = (*xorb, *file);
        tokio::spawn(async move {
            let ix = match me.load_index(&f, &plan, &x).await {
                Ok(ix) => Some(Arc::new(ix)),
                Err(e) => {
                    if !me.told_no_index.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            "no chunk index for xorb {} ({e}); reads in its large terms go \
                             through reconstructions (2 round trips)",
                            x.hex()
                        );
                    }
                    tracing::debug!(xorb = %x.hex(), "no chunk index: {e}");
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

    /// The boundary section of `xorb`'s footer, from a suffix of the stored xorb (with a
    /// fresh plan once if the URL was refused).
    async fn load_index(
        self: &Arc<Self>,
        file: &MerkleHash,
        plan: &Arc<Plan>,
        xorb: &MerkleHash,
    ) -> Result<XorbIndex, String> {
        let mut plan = plan.clone();
        let mut renewed = false;
        let max_chunk = plan
            .sources
            .get(xorb)
            .and_then(|l| l.iter().map(|s| s.chunks.end).max())
            .ok_or("not in the plan")?;
        let mut want = suffix_len(max_chunk + SUFFIX_SLACK_CHUNKS);
        for _ in 0..3 {
            let url = plan
                .sources
                .get(xorb)
                .and_then(|l| l.first())
                .ok_or("not in the plan")?
                .url
                .clone();
            let tail = match self.get(&url, format!("bytes=-{want}")).await {
                Ok(t) => t,
                Err(Got::Forbidden) if !renewed => {
                    renewed = true;
                    plan = self
                        .reload(file, plan.size, &plan)
                        .await
                        .ok_or("plan refresh failed")?;
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            match XorbIndex::from_tail(&tail)? {
                Tail::Index(ix) => {
                    if !ix.agrees(&plan, xorb) {
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
    async fn get(&self, url: &str, range: String) -> Result<Bytes, Got> {
        let r = self
            .http
            .get(url)
            .header(reqwest::header::RANGE, range)
            .send_timed("fetch range")
            .await
            .map_err(|e| Got::Other(format!("fetch: {e}")))?;
        let status = r.status();
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(Got::Forbidden);
        }
        if !status.is_success() {
            return Err(Got::Other(format!("fetch: HTTP {status}")));
        }
        r.bytes()
            .await
            .map_err(|e| Got::Other(format!("fetch: {e}")))
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
        let index = self.index(hash, plan, &t.xorb);
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
                .send_timed("fetch range")
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
            let room = self
                .puts
                .take(data.len())
                .await
                .map_err(|e| FetchError::Other(e.to_string()))?;
            let (c, data, offsets) = (c.clone(), data.clone(), offsets.clone());
            tokio::spawn(async move {
                if let Err(e) = c.put(&key, &crange, &offsets, &data).await {
                    tracing::debug!("chunk cache put: {e}");
                }
                drop(room);
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use std::sync::atomic::AtomicU64;
    use xet_client::cas_types::{
        HttpRange, XorbMultiRangeFetch, XorbRangeDescriptor, XorbReconstructionTerm,
    };

    /// What the test CAS's fetch URL does.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// Any range of the stored xorb, footer included (xetmount serve).
        Footer,
        /// Only chunk data (no footer to read).
        NoFooter,
        /// Only the exact ranges the plan names (URLs signed for their ranges).
        ExactOnly,
    }

    struct Cas {
        xorb: Vec<u8>,
        chunk_bytes: u64,
        mode: Mode,
        /// URLs signed with `sig=old` are refused (expired).
        requests: Mutex<Vec<String>>,
    }

    #[derive(serde::Deserialize)]
    struct Sig {
        sig: String,
    }

    async fn fetch(State(c): State<Arc<Cas>>, q: Query<Sig>, h: HeaderMap) -> Response {
        let range = h
            .get("range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        c.requests.lock().push(range.clone());
        if q.sig == "old" {
            return StatusCode::FORBIDDEN.into_response();
        }
        let len = match c.mode {
            Mode::NoFooter => c.chunk_bytes,
            _ => c.xorb.len() as u64,
        };
        let spec = range.strip_prefix("bytes=").unwrap_or("");
        let (a, b) = spec.split_once('-').unwrap_or(("", ""));
        let (start, end) = if a.is_empty() {
            (len.saturating_sub(b.parse().unwrap_or(0)), len)
        } else {
            (
                a.parse().unwrap_or(0),
                (b.parse::<u64>().unwrap_or(0) + 1).min(len),
            )
        };
        if c.mode == Mode::ExactOnly && (start, end) != (0, c.chunk_bytes) {
            return StatusCode::FORBIDDEN.into_response();
        }
        (
            StatusCode::PARTIAL_CONTENT,
            c.xorb[start as usize..end as usize].to_vec(),
        )
            .into_response()
    }

    /// Plans naming the test CAS's xorb, signed `old` the first time if asked.
    struct Plans {
        answer: QueryReconstructionResponseV2,
        url: String,
        expired_first: bool,
        queries: AtomicU64,
    }

    #[async_trait::async_trait]
    impl PlanQuery for Plans {
        async fn query(
            &self,
            _file: &MerkleHash,
        ) -> Result<Option<QueryReconstructionResponseV2>, String> {
            let n = self.queries.fetch_add(1, Ordering::SeqCst);
            let sig = if self.expired_first && n == 0 {
                "old"
            } else {
                "new"
            };
            let mut a = self.answer.clone();
            for list in a.xorbs.values_mut() {
                for f in list {
                    f.url = format!("{}?sig={sig}", self.url);
                }
            }
            Ok(Some(a))
        }
    }

    struct Setup {
        reads: Arc<PlannedReads>,
        cas: Arc<Cas>,
        plans: Arc<Plans>,
        body: Vec<u8>,
        file: MerkleHash,
    }

    /// A xorb of `n` chunks of 64 KiB behind a test CAS in `mode`; the file is the whole xorb.
    async fn setup(n: usize, mode: Mode, expired_first: bool) -> Setup {
        let (x, datas) = super::super::plan::tests::xorb(&vec![64 << 10; n], "none");
        let chunk_bytes = x.footer_start.unwrap();
        let body: Vec<u8> = datas.concat();
        let cas = Arc::new(Cas {
            xorb: x.serialized_data.clone(),
            chunk_bytes,
            mode,
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/x", axum::routing::get(fetch))
            .with_state(cas.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        let answer = QueryReconstructionResponseV2 {
            offset_into_first_range: 0,
            terms: vec![XorbReconstructionTerm {
                hash: x.hash.into(),
                unpacked_length: body.len() as u32,
                range: ChunkRange::new(0, n as u32),
            }],
            xorbs: [(
                x.hash.into(),
                vec![XorbMultiRangeFetch {
                    url: String::new(),
                    ranges: vec![XorbRangeDescriptor {
                        chunks: ChunkRange::new(0, n as u32),
                        bytes: HttpRange::new(0, chunk_bytes - 1),
                    }],
                }],
            )]
            .into_iter()
            .collect(),
        };
        let plans = Arc::new(Plans {
            answer,
            url,
            expired_first,
            queries: AtomicU64::new(0),
        });
        let reads = PlannedReads::new(Box::new(plans.clone()), None, "default".into());
        Setup {
            reads,
            cas,
            plans,
            body,
            file: MerkleHash::from([7u64; 4]),
        }
    }

    #[async_trait::async_trait]
    impl PlanQuery for Arc<Plans> {
        async fn query(
            &self,
            file: &MerkleHash,
        ) -> Result<Option<QueryReconstructionResponseV2>, String> {
            (**self).query(file).await
        }
    }

    /// The plan, once its query (in the background) answered.
    async fn plan(s: &Setup) -> Arc<Plan> {
        poll(|| s.reads.plan(&s.file, s.body.len() as u64)).await
    }

    async fn poll<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "not ready in 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn piece(s: &Setup, p: &Arc<Plan>, lo: u64, hi: u64) -> Option<Bytes> {
        s.reads.read_piece(&s.file, p, 0, lo, hi).await.unwrap()
    }

    #[tokio::test]
    async fn with_the_footer_a_read_is_one_exact_fetch() {
        let s = setup(48, Mode::Footer, false).await;
        let p = plan(&s).await;
        let x = p.terms[0].xorb;
        poll(|| s.reads.state.lock().indexes.get(&x).cloned().flatten()).await;
        for (lo, hi) in [
            (0u64, 4096u64),
            (65_530, 65_546),
            (1 << 20, 3 << 20),
            (3_145_000, 3_145_728),
        ] {
            let before = s.cas.requests.lock().len();
            let got = piece(&s, &p, lo, hi).await.expect("served from the plan");
            assert_eq!(&got[..], &s.body[lo as usize..hi as usize]);
            let reqs = s.cas.requests.lock()[before..].to_vec();
            // One request, for only the chunks holding the range (64 KiB + 8 bytes of header
            // per chunk).
            assert_eq!(reqs.len(), 1, "{reqs:?}");
            let (a, b) = reqs[0]
                .strip_prefix("bytes=")
                .unwrap()
                .split_once('-')
                .unwrap();
            let fetched = b.parse::<u64>().unwrap() + 1 - a.parse::<u64>().unwrap();
            let chunks = hi.div_ceil(64 << 10) - lo / (64 << 10);
            assert_eq!(fetched, chunks * ((64 << 10) + 8));
        }
    }

    /// Wait until the reads know that xorb `x` has no usable index.
    async fn index_known_missing(s: &Setup, x: &MerkleHash) {
        poll(|| {
            s.reads
                .state
                .lock()
                .indexes
                .get(x)
                .map(|ix| ix.is_none())
                .filter(|&m| m)
        })
        .await;
    }

    #[tokio::test]
    async fn without_a_footer_large_terms_fall_back_and_small_ones_are_fetched_whole() {
        let s = setup(48, Mode::NoFooter, false).await;
        let p = plan(&s).await;
        let x = p.terms[0].xorb;
        // The footer cannot be read: the index is known to be missing.
        index_known_missing(&s, &x).await;
        assert!(
            piece(&s, &p, 0, 4096).await.is_none(),
            "a 3 MiB term is not fetched whole"
        );
        let s = setup(8, Mode::NoFooter, false).await;
        let p = plan(&s).await;
        let got = piece(&s, &p, 70_000, 200_000)
            .await
            .expect("a small term is fetched whole");
        assert_eq!(&got[..], &s.body[70_000..200_000]);
    }

    #[tokio::test]
    async fn a_cas_that_refuses_narrowed_ranges_gets_only_the_ranges_it_named() {
        let s = setup(8, Mode::ExactOnly, false).await;
        let p = plan(&s).await;
        let x = p.terms[0].xorb;
        // Its footer suffix is refused too, so there is no index; the whole range works.
        let got = piece(&s, &p, 5, 100_000).await.unwrap();
        assert_eq!(&got[..], &s.body[5..100_000]);
        index_known_missing(&s, &x).await;
        // With an index but a refused narrowed range: the read is left to the caller once, and
        // from then on whole ranges are asked for.
        let s = setup(8, Mode::ExactOnly, false).await;
        let p = plan(&s).await;
        let tail = &s.cas.xorb[s.cas.chunk_bytes as usize..];
        let Tail::Index(ix) = XorbIndex::from_tail(tail).unwrap() else {
            panic!("the footer holds the index")
        };
        s.reads
            .state
            .lock()
            .indexes
            .insert(x, Some(Arc::new(ix)), 1);
        assert!(piece(&s, &p, 0, 10).await.is_none());
        assert!(s.reads.refused.load(Ordering::Relaxed));
        let p = plan(&s).await;
        let got = piece(&s, &p, 0, 10).await.unwrap();
        assert_eq!(&got[..], &s.body[0..10]);
    }

    #[tokio::test]
    async fn an_expired_url_is_renewed_once() {
        let s = setup(8, Mode::Footer, true).await;
        let p = plan(&s).await;
        let got = piece(&s, &p, 1000, 2000).await.unwrap();
        assert_eq!(&got[..], &s.body[1000..2000]);
        assert!(
            s.plans.queries.load(Ordering::SeqCst) >= 2,
            "the plan was asked for again"
        );
        let fresh = plan(&s).await;
        assert!(
            !Arc::ptr_eq(&fresh, &p),
            "the renewed plan replaced the refused one"
        );
    }
}
