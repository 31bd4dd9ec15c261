//! File bodies of a remote bucket, through xet-core's `RemoteClient` against the CAS the
//! bucket's token route names, with CAS tokens fetched (and refreshed before they expire)
//! from that route.
//!
//! Compositions run chunk by chunk (`remote::xet::compose`) where the CAS says which chunks a body
//! is made of (`xetmount serve`'s `/v1/xetmount/chunks/{file}`): only the chunks around each
//! edit are downloaded and uploaded. A small edit costs two requests there, its commit
//! included: the chunk lists come with the stored chunks around the edit (`?bytes=`), and the
//! last xorb and the shard go with the commit (`Composed::carried`; see `remote::cas_wire`). A CAS with only the official routes composes by windows
//! (`remote::xet::window_compose`, over `GET /v2/file-chunk-hashes/{file}`): only the terms the
//! edits touch are read and only new chunks uploaded. A CAS without either route, or a
//! window composition that does not verify, gets the base read and the result uploaded whole
//! (content-defined chunking still stores only the changed chunks; the cost is reading the
//! base); the mount's `compose_fallbacks` counter counts those.

use crate::remote::http::SendTimed;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use xet_client::cas_client::auth::{AuthConfig, AuthError, TokenInfo, TokenRefresher};
use xet_client::cas_client::Client;
use xet_client::cas_types::{FileChunkHashesResponse, FileRange};
use xet_client::chunk_cache::ChunkCache;
use xet_core_structures::merklehash::{compute_data_hash, MerkleHash};
use xet_core_structures::metadata_shard::file_structs::FileDataSequenceEntry;
use xet_core_structures::xorb_object::{deserialize_chunks, SerializedXorbObject};
use xet_data::file_reconstruction::FileReconstructor;
use xet_data::processing::configurations::{SessionContext, TranslatorConfig};
use xet_data::processing::create_remote_client;
use xet_runtime::core::XetContext;

use super::chunk_cache::ChunkStore;
use super::hub::Hub;
use super::planned::PlannedReads;
use crate::remote::cas_wire;
use crate::remote::xet::assemble::{ShardWithXorbs, XorbSettings};
use crate::remote::xet::compose::{parse_hash, ChunkLists, ChunkMap};
use crate::remote::xet::rechunk::{near_ranges, BaseBytes};
use crate::remote::xet::window_compose::{self, ChunkHashes};
use crate::remote::xet::xet_err;
use crate::remote::{
    Cas, ComposeEdit, Composed, FileId, RemoteError, RemoteResult, UploadItem, Uploaded,
};

/// Fetches CAS tokens from the bucket's token route.
struct HubTokens {
    hub: Arc<Hub>,
    write: bool,
}

#[async_trait]
impl TokenRefresher for HubTokens {
    async fn refresh(&self) -> Result<TokenInfo, AuthError> {
        let (_, tok, exp) = self
            .hub
            .cas_token(self.write)
            .await
            .map_err(AuthError::token_refresh_failure)?;
        Ok((tok, exp))
    }
}

/// Reads of stored bodies: through the file's cached reconstruction plan, one ranged fetch of
/// the chunks a read needs (`planned`); what that cannot serve yet (the first read of a file,
/// while its plan loads) through a ranged reconstruction (a query, then the fetches). Both keep
/// xorb ranges in the on-disk chunk cache (if any), so that what was read once is not
/// downloaded again, across remounts too.
///
/// Round trips of a cold read: 1 (one ranged fetch) once the file's plan and its xorbs'
/// indexes are cached; 2 (query, fetch) for the first read of a file, while the plan (1) and
/// the footers (1 more) load behind it. Plans are renewed in the background before their URLs
/// expire, so that stays off the read path.
struct Reader {
    ctx: XetContext,
    client: Arc<dyn Client>,
    chunk_cache: Option<Arc<dyn ChunkCache>>,
    planned: Arc<PlannedReads>,
}

impl Reader {
    async fn read(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes> {
        if !crate::remote::xet::check_read(id, &range)? {
            return Ok(Bytes::new());
        }
        let hash = parse_hash(&id.hash)?;
        let want = range.end - range.start;
        let out = match self.planned.plan(&hash, id.size) {
            Some(plan) => {
                let pieces = plan.pieces(range.clone());
                let parts = futures::future::try_join_all(pieces.into_iter().map(|(i, r)| {
                    let plan = plan.clone();
                    async move {
                        match self.planned.read_piece(&hash, &plan, i, r.start, r.end).await {
                            Ok(Some(b)) => Ok(b),
                            other => {
                                if let Err(e) = other {
                                    tracing::debug!(file = %id.hash, "planned read: {e}; reconstructing");
                                }
                                let at = plan.terms[i].start;
                                self.reconstruct(&hash, at + r.start..at + r.end).await
                            }
                        }
                    }
                }))
                .await?;
                if parts.len() == 1 {
                    parts.into_iter().next().expect("one part")
                } else {
                    let mut b = bytes::BytesMut::with_capacity(want as usize);
                    for p in parts {
                        b.extend_from_slice(&p);
                    }
                    b.freeze()
                }
            }
            None => self.reconstruct(&hash, range.clone()).await?,
        };
        crate::remote::xet::check_read_len(id, &range, out)
    }

    /// Bytes `range` of `hash` through a ranged reconstruction (query + fetches).
    async fn reconstruct(&self, hash: &MerkleHash, range: Range<u64>) -> RemoteResult<Bytes> {
        let sink = Sink::default();
        let mut r = FileReconstructor::new(&self.ctx, &self.client, *hash)
            .with_byte_range(FileRange::new(range.start, range.end));
        if let Some(c) = &self.chunk_cache {
            r = r.with_chunk_cache(c.clone());
        }
        r.reconstruct_to_writer(sink.clone())
            .await
            .map_err(xet_err)?;
        let out = std::mem::take(&mut *sink.0.lock());
        Ok(Bytes::from(out))
    }
}

/// One body's bytes, for the composer.
struct BaseReader {
    reader: Arc<Reader>,
    id: FileId,
    /// Base bytes that came with the chunk lists: (offset, bytes).
    ahead: Vec<(u64, Bytes)>,
}

#[async_trait]
impl BaseBytes for BaseReader {
    async fn read(&self, range: Range<u64>) -> RemoteResult<Bytes> {
        for (at, b) in &self.ahead {
            if range.start >= *at && range.end <= at + b.len() as u64 {
                return Ok(b.slice((range.start - at) as usize..(range.end - at) as usize));
            }
        }
        self.reader.read(&self.id, range).await
    }
}

/// A CAS token this close to its expiry (seconds) is renewed in the background while it is
/// still used, so that no composition waits for the token route.
const TOKEN_AHEAD_SECS: u64 = 300;

/// Chunk lists from the CAS's `/v1/xetmount/chunks/{file}`, with a CAS token of our own.
struct RemoteChunks {
    hub: Arc<Hub>,
    write: bool,
    cas_url: String,
    http: reqwest::Client,
    token: Arc<Mutex<Option<(String, u64)>>>,
    /// A refresh of `token` running in the background.
    refreshing: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the CAS is known to lack `/v1/xetmount/chunks` (a plain Hub's): a composition
    /// then goes to the official route without asking.
    no_lists: std::sync::atomic::AtomicBool,
}

impl RemoteChunks {
    async fn token(&self) -> RemoteResult<String> {
        let now = crate::remote::wire::now_secs();
        if let Some((t, exp)) = self.token.lock().clone() {
            if exp > now + TOKEN_AHEAD_SECS {
                return Ok(t);
            }
            if exp > now + 30 {
                // Still good for a while: use it, and fetch the next one off the critical
                // path.
                self.refresh_behind();
                return Ok(t);
            }
        }
        let (_, t, exp) = self.hub.cas_token(self.write).await?;
        *self.token.lock() = Some((t.clone(), exp));
        Ok(t)
    }

    fn refresh_behind(&self) {
        use std::sync::atomic::Ordering;
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (hub, write) = (self.hub.clone(), self.write);
        let (slot, flag) = (self.token.clone(), self.refreshing.clone());
        tokio::spawn(async move {
            match hub.cas_token(write).await {
                Ok((_, t, exp)) => *slot.lock() = Some((t, exp)),
                Err(e) => tracing::debug!("CAS token refresh: {e}; trying again at the next use"),
            }
            flag.store(false, Ordering::SeqCst);
        });
    }
}

impl RemoteChunks {
    /// The chunk lists of body `hash` and, for each of `around` (byte ranges of it), the
    /// stored chunks holding those bytes, decoded and checked against the lists: (offset,
    /// bytes), in one request. `None` if the CAS does not know the body.
    async fn lists_and_bytes(
        &self,
        hash: &MerkleHash,
        around: &[Range<u64>],
    ) -> RemoteResult<Option<(ChunkLists, Vec<(u64, Bytes)>)>> {
        let mut url = format!("{}/v1/xetmount/chunks/{}", self.cas_url, hash.hex());
        if !around.is_empty() {
            url.push_str("?bytes=");
            url.push_str(&cas_wire::format_ranges(around));
        }
        let r = self
            .http
            .get(&url)
            .bearer_auth(self.token().await?)
            .send_timed("chunk lists")
            .await
            .map_err(|e| RemoteError::Other(format!("chunk lists: {e}")))?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            let status = r.status();
            return Err(status_error(status, format!("chunk lists: HTTP {status}")));
        }
        let framed = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == cas_wire::FRAMED.as_bytes());
        let body = r
            .bytes()
            .await
            .map_err(|e| RemoteError::Other(format!("chunk lists: {e}")))?;
        let bad = |e: String| RemoteError::Other(format!("chunk lists of {}: {e}", hash.hex()));
        let (answer, tail) = if framed {
            cas_wire::unframe::<cas_wire::ChunkListsAnswer>(body).map_err(bad)?
        } else {
            let a = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
            (a, Bytes::new())
        };
        let lists = lists_of(&answer.segments).map_err(bad)?;
        let pieces = pieces_of(&lists, &answer.pieces, tail).map_err(bad)?;
        Ok(Some((lists, pieces)))
    }
}

/// The lists an answer names.
fn lists_of(segments: &[cas_wire::WireSegment]) -> Result<ChunkLists, String> {
    let hash = |h: &str| MerkleHash::from_hex(h).map_err(|e| format!("bad hash {h}: {e}"));
    let mut out = ChunkLists {
        segments: Vec::with_capacity(segments.len()),
        chunks: Vec::with_capacity(segments.len()),
    };
    for seg in segments {
        let list = seg
            .chunks
            .iter()
            .map(|(h, n)| Ok((hash(h)?, *n)))
            .collect::<Result<Vec<_>, String>>()?;
        let bytes: u64 = list.iter().map(|(_, n)| n).sum();
        out.segments.push(FileDataSequenceEntry {
            xorb_hash: hash(&seg.xorb)?,
            xorb_flags: seg.flags,
            unpacked_segment_bytes: u32::try_from(bytes)
                .map_err(|_| format!("a segment of {bytes} bytes"))?,
            chunk_index_start: seg.start,
            chunk_index_end: seg.end,
        });
        out.chunks.push(list);
    }
    Ok(out)
}

/// The base bytes of stored chunk `pieces` (their serialized chunks one after another in
/// `tail`), each chunk decoded and checked against the hash `lists` give at its offset.
fn pieces_of(
    lists: &ChunkLists,
    pieces: &[cas_wire::WirePiece],
    mut tail: Bytes,
) -> Result<Vec<(u64, Bytes)>, String> {
    // Every chunk's offset in the body, with its hash and length.
    let mut at = 0u64;
    let mut offsets = Vec::new();
    for (h, n) in lists.chunks.iter().flatten() {
        offsets.push((at, *h, *n));
        at += n;
    }
    let mut out: Vec<(u64, Bytes)> = Vec::with_capacity(pieces.len());
    for p in pieces {
        if p.len > tail.len() as u64 {
            return Err(format!("a piece of {} bytes, {} left", p.len, tail.len()));
        }
        let raw = tail.split_to(p.len as usize);
        let (data, ends) = deserialize_chunks(&mut std::io::Cursor::new(&raw[..]))
            .map_err(|e| format!("stored chunks at {}: {e}", p.at))?;
        let first = offsets.partition_point(|c| c.0 < p.at);
        let mut from = 0usize;
        for (k, &end) in (first..).zip(ends.iter().skip(1)) {
            let chunk = &data[from..end as usize];
            match offsets.get(k) {
                Some(&(o, h, n)) if o == p.at + from as u64 && n == chunk.len() as u64 => {
                    if compute_data_hash(chunk) != h {
                        return Err(format!("the chunk at {o} does not hash to {}", h.hex()));
                    }
                }
                _ => return Err(format!("no chunk of the lists at {}", p.at + from as u64)),
            }
            from = end as usize;
        }
        // Pieces that meet (a neighbourhood spanning several terms) become one run, so that
        // a read across their seam is served from them.
        match out.last_mut() {
            Some((at, run)) if *at + run.len() as u64 == p.at => {
                let mut joined = Vec::with_capacity(run.len() + data.len());
                joined.extend_from_slice(run);
                joined.extend_from_slice(&data);
                *run = Bytes::from(joined);
            }
            _ => out.push((p.at, Bytes::from(data))),
        }
    }
    if !tail.is_empty() {
        return Err(format!("{} bytes after the last piece", tail.len()));
    }
    Ok(out)
}

#[async_trait]
impl ChunkMap for RemoteChunks {
    async fn chunk_lists(&self, hash: &MerkleHash) -> RemoteResult<Option<ChunkLists>> {
        Ok(self.lists_and_bytes(hash, &[]).await?.map(|(l, _)| l))
    }
}

/// Bytes of compositions waiting in memory for their commits, all files of the mount
/// together. Within it a small edit's xorb and shard go with its commit; past it they go to
/// the CAS at once. It bounds both the memory they hold and a commit's body (a batch may
/// compose a thousand files; `serve` takes bodies up to 80 MiB).
const CARRY_BUDGET: u64 = 16 << 20;

/// Keeps a composition's last xorb and its shard for the commit to carry (see
/// [`crate::remote::Catalog::commit_carrying`]) instead of sending them, within the mount's
/// [`CARRY_BUDGET`].
struct Holder {
    held: Mutex<Option<cas_wire::Carried>>,
    budget: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait]
impl ShardWithXorbs for Holder {
    async fn upload(
        &self,
        prefix: &str,
        xorbs: &[SerializedXorbObject],
        shard: Bytes,
    ) -> RemoteResult<bool> {
        let len = xorbs
            .iter()
            .map(|x| x.serialized_data.len() as u64)
            .sum::<u64>()
            + shard.len() as u64;
        let Some(r) = cas_wire::Reserved::take(&self.budget, len, CARRY_BUDGET) else {
            return Ok(false);
        };
        let mut c = cas_wire::Carried::new(prefix, xorbs, &shard);
        c.reserved = Some(Arc::new(r));
        *self.held.lock() = Some(c);
        Ok(true)
    }
}

/// A CAS answer `status` as the error it means.
fn status_error(status: reqwest::StatusCode, msg: String) -> RemoteError {
    match status.as_u16() {
        401 => RemoteError::Unauthenticated(msg),
        403 => RemoteError::PermissionDenied(msg),
        413 | 507 => RemoteError::Quota(msg),
        429 => RemoteError::RateLimited(msg),
        _ => RemoteError::Other(msg),
    }
}

#[async_trait]
impl ChunkHashes for RemoteChunks {
    async fn file_chunk_hashes(
        &self,
        file: &MerkleHash,
        dirty: &[Range<u64>],
    ) -> RemoteResult<Option<FileChunkHashesResponse>> {
        let url = format!("{}/v2/file-chunk-hashes/{}", self.cas_url, file.hex());
        let r = self
            .http
            .get(&url)
            .bearer_auth(self.token().await?)
            .header(
                "X-Range-Dirty",
                format!("bytes={}", cas_wire::format_ranges(dirty)),
            )
            .send_timed("file chunk hashes")
            .await
            .map_err(|e| RemoteError::Other(format!("file chunk hashes: {e}")))?;
        let status = r.status();
        // 404 (no such route, or a file this token's bucket does not know) and 501 mean the
        // route cannot help: the caller uploads the result whole, as huggingface.js does.
        if status == reqwest::StatusCode::NOT_FOUND
            || status == reqwest::StatusCode::NOT_IMPLEMENTED
        {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_error(
                status,
                format!("file chunk hashes: HTTP {status}"),
            ));
        }
        r.json()
            .await
            .map(Some)
            .map_err(|e| RemoteError::Other(format!("file chunk hashes: {e}")))
    }
}

pub struct HttpCas {
    /// The on-disk chunk cache (also in `reader`), for `settle`.
    chunk_cache: Option<Arc<ChunkStore>>,
    config: Arc<TranslatorConfig>,
    /// The session's client (its reads go through `reader`), uploading xorbs without asking
    /// for a grant first (see `direct_client`).
    compose_client: Arc<dyn Client>,
    reader: Arc<Reader>,
    chunks: RemoteChunks,
    /// Whether compositions leave their last xorb and shard to the commit (the catalog is
    /// `xetmount serve`'s own, which stores them with the commit).
    carry: std::sync::atomic::AtomicBool,
    /// Bytes of compositions held for their commits (within [`CARRY_BUDGET`]).
    carried_bytes: Arc<std::sync::atomic::AtomicU64>,
    xorbs: XorbSettings,
    staging: PathBuf,
}

/// A `Write` into a shared buffer (the reconstructor wants an owned writer).
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl HttpCas {
    /// Connect to the CAS of the bucket `hub` names; `cache` holds xet-core's shard cache, the
    /// chunk cache (at most `chunk_cache_bytes`; 0: none) and the scratch files of composed
    /// uploads.
    pub async fn open(
        ctx: XetContext,
        hub: Arc<Hub>,
        write: bool,
        cache: &Path,
        chunk_cache_bytes: u64,
    ) -> RemoteResult<Self> {
        let (cas_url, tok, exp) = hub.cas_token(write).await?;
        std::fs::create_dir_all(cache)?;
        let chunks = RemoteChunks {
            hub: hub.clone(),
            write,
            cas_url: cas_url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            token: Arc::new(Mutex::new(Some((tok.clone(), exp)))),
            refreshing: Arc::default(),
            no_lists: std::sync::atomic::AtomicBool::new(false),
        };
        let refresher: Arc<dyn TokenRefresher> = Arc::new(HubTokens { hub, write });
        let session_id = uuid::Uuid::now_v7().to_string();
        let session = SessionContext {
            endpoint: cas_url,
            auth: AuthConfig::maybe_new(Some(tok), Some(exp), Some(refresher)),
            custom_headers: None,
            repo_paths: vec!["".into()],
            session_id: Some(session_id.clone()),
            cache_root: Some(cache.join("xet")),
        };
        let config = Arc::new(
            TranslatorConfig::new(&ctx, session.clone())
                .map_err(xet_err)?
                .disable_progress_aggregation(),
        );
        let client = create_remote_client(&config, &session_id, false)
            .await
            .map_err(xet_err)?;
        let compose_client = direct_client(&ctx, &session, &session_id).await?;
        let staging = cache.join("compose");
        std::fs::create_dir_all(&staging)?;
        let xorbs = XorbSettings {
            prefix: ctx.config.data.default_prefix.clone(),
            compression: ctx.config.xorb.compression_policy.as_str().to_string(),
            retest_interval: ctx.config.xorb.compression_scheme_retest_interval,
        };
        let memory = crate::remote::xet::budget::MemoryBudget::of_xet(&ctx.config);
        let chunk_cache = if chunk_cache_bytes == 0 {
            None
        } else {
            // Without a usable chunk cache (unwritable directory, another process using it)
            // reads still work, from the network.
            let dir = cache.join("chunks");
            let opened = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    ChunkStore::open_with(&dir, chunk_cache_bytes, memory.chunk_cache_writes() / 2)
                })
                .await
                .map_err(|e| RemoteError::Other(format!("chunk cache: {e}")))?
            };
            match opened {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    tracing::warn!(
                        "not using the chunk cache {}: {e}; reads go to the network",
                        dir.display()
                    );
                    None
                }
            }
        };
        let chunk_cache_dyn = chunk_cache.clone().map(|c| c as Arc<dyn ChunkCache>);
        let planned = PlannedReads::with_budget(
            Box::new(client.clone()),
            chunk_cache_dyn.clone(),
            ctx.config.data.default_prefix.clone(),
            memory.plans(),
            memory.indexes(),
            memory.chunk_cache_writes() / 2,
        );
        Ok(HttpCas {
            chunk_cache,
            reader: Arc::new(Reader {
                ctx,
                client: client.clone(),
                chunk_cache: chunk_cache_dyn,
                planned,
            }),
            config,
            compose_client,
            chunks,
            carry: std::sync::atomic::AtomicBool::new(false),
            carried_bytes: Arc::default(),
            xorbs,
            staging,
        })
    }
}

/// A client of the same CAS session that uploads xorbs straight to the xorb route, without
/// the grant request hf_xet 1.8.0 makes first. Only compositions use it (by chunk lists and by
/// windows alike): the grant is one more round trip before every edit's commit (two or three
/// on a CAS that grants), for the few small xorbs of the windows around an edit, and
/// `POST /v1/xorbs` is the route hf_xet itself falls back to, so every CAS takes it.
async fn direct_client(
    ctx: &XetContext,
    session: &SessionContext,
    session_id: &str,
) -> RemoteResult<Arc<dyn Client>> {
    let mut c = (*ctx.config).clone();
    c.client.legacy_direct_xorb_upload = true;
    let direct = XetContext {
        runtime: ctx.runtime.clone(),
        config: Arc::new(c),
        common: ctx.common.clone(),
    };
    let config = TranslatorConfig::new(&direct, session.clone())
        .map_err(xet_err)?
        .disable_progress_aggregation();
    create_remote_client(&config, session_id, false)
        .await
        .map_err(xet_err)
}

impl HttpCas {
    /// This CAS offers only the official routes (a plain bucket's): compositions skip the
    /// request for xetmount's chunk lists, one round trip that could only answer 404.
    pub fn official_routes_only(&self) {
        self.chunks
            .no_lists
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The catalog stores uploads with its commits: compositions leave their last xorb and
    /// shard to the commit (one round trip less per small edit).
    pub fn carry_uploads_with_commits(&self) {
        self.carry.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Append bytes `range` of `base` to `f`; returns how many.
    async fn copy_base(
        &self,
        base: &FileId,
        range: Range<u64>,
        f: &mut std::fs::File,
    ) -> RemoteResult<u64> {
        let mut pos = range.start;
        while pos < range.end {
            let end = (pos + (16 << 20)).min(range.end);
            let bytes = self.read_range(base, pos..end).await?;
            f.write_all(&bytes)?;
            pos = end;
        }
        Ok(range.end - range.start)
    }
}

impl HttpCas {
    /// `base` with `edits`, written out (base pieces between the edits, and the edits) and
    /// uploaded whole.
    async fn compose_whole(&self, base: &FileId, edits: &[ComposeEdit]) -> RemoteResult<Composed> {
        let path = self.staging.join(uuid::Uuid::now_v7().to_string());
        let result = async {
            let mut f = std::fs::File::create(&path)?;
            let mut at = 0u64;
            let mut read = 0u64;
            for e in edits {
                read += self
                    .copy_base(base, at..e.original_range.start, &mut f)
                    .await?;
                f.write_all(&e.data)?;
                at = e.original_range.end;
            }
            read += self.copy_base(base, at..base.size, &mut f).await?;
            f.sync_all()?;
            let len = f.metadata()?.len();
            let up = self
                .upload_batch(vec![UploadItem { path: &path, len }])
                .await?
                .remove(0)?;
            Ok::<Composed, RemoteError>(Composed {
                id: up.id,
                new_bytes: up.new_bytes,
                base_bytes_read: read,
                dirty_chunk_bytes: edits.iter().map(|e| e.data.len() as u64).sum(),
                terms: 0,
                whole_upload: true,
                carried: None,
            })
        }
        .await;
        let _ = std::fs::remove_file(&path);
        result
    }
}

#[async_trait]
impl Cas for HttpCas {
    async fn read_range(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes> {
        self.reader.read(id, range).await
    }

    async fn upload_batch(
        &self,
        items: Vec<UploadItem<'_>>,
    ) -> RemoteResult<Vec<RemoteResult<Uploaded>>> {
        crate::remote::xet::upload_files(self.config.clone(), &items).await
    }

    async fn settle(&self, timeout: std::time::Duration) {
        if let Some(c) = &self.chunk_cache {
            c.settle(timeout).await;
        }
    }

    async fn compose(&self, base: &FileId, edits: Vec<ComposeEdit>) -> RemoteResult<Composed> {
        // Ok(None): this CAS cannot list a body's chunks; any other failure is reported, so a
        // transient one is retried rather than turned into a download of the whole base.
        let lists = if self
            .chunks
            .no_lists
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            None
        } else {
            // The base bytes around the edits come with the chunk lists (instead of one
            // round trip after them).
            let hash = parse_hash(&base.hash)?;
            self.chunks
                .lists_and_bytes(&hash, &near_ranges(base.size, &edits))
                .await?
        };
        if let Some((view, ahead)) = lists {
            let bytes = Arc::new(BaseReader {
                reader: self.reader.clone(),
                id: base.clone(),
                ahead,
            });
            let held = self
                .carry
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| {
                    Arc::new(Holder {
                        held: Mutex::new(None),
                        budget: self.carried_bytes.clone(),
                    })
                });
            let c = crate::remote::xet::compose::compose_with(
                &self.xorbs,
                self.compose_client.clone(),
                held.clone().map(|h| h as Arc<dyn ShardWithXorbs>),
                None,
                view,
                bytes,
                base,
                edits,
            )
            .await?;
            return Ok(Composed {
                id: c.id,
                new_bytes: c.sent,
                base_bytes_read: c.base_bytes_read,
                dirty_chunk_bytes: c.dirty_chunk_bytes,
                terms: c.terms,
                whole_upload: false,
                carried: held.and_then(|h| h.held.lock().take()),
            });
        }
        // No chunk lists: compose by windows over the official route, unless the CAS lacks
        // it or what it composed does not verify (then nothing refers to what was stored).
        match window_compose::compose(
            &self.xorbs,
            self.compose_client.clone(),
            &self.chunks,
            base,
            edits.clone(),
        )
        .await
        {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => {}
            Err(RemoteError::Integrity(e)) => {
                tracing::warn!("compose of {}: {e}; uploading it whole", base.hash);
            }
            Err(e) => return Err(e),
        }
        self.compose_whole(base, &edits).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_chunks_with_the_lists_are_checked_against_them() {
        let (x, datas) = super::super::plan::tests::xorb(&[1000, 2000, 3000], "none");
        let stream = Bytes::from(x.serialized_data[..x.footer_start.unwrap() as usize].to_vec());
        let list: Vec<(MerkleHash, u64)> = datas
            .iter()
            .map(|d| (compute_data_hash(d), d.len() as u64))
            .collect();
        let lists = ChunkLists {
            segments: vec![FileDataSequenceEntry {
                xorb_hash: x.hash,
                xorb_flags: 0,
                unpacked_segment_bytes: 6000,
                chunk_index_start: 0,
                chunk_index_end: 3,
            }],
            chunks: vec![list],
        };
        let piece = |at, len| cas_wire::WirePiece { at, len };
        let n = stream.len() as u64;
        let got = pieces_of(&lists, &[piece(0, n)], stream.clone()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 0);
        assert_eq!(&got[0].1[..], &datas.concat()[..]);
        // The same bytes as two pieces that meet (as a range across two terms comes): one run,
        // so a read across the seam finds them.
        let first = 8 + datas[0].len() as u64; // the first chunk, stored uncompressed
        let two = pieces_of(
            &lists,
            &[piece(0, first), piece(1000, n - first)],
            stream.clone(),
        );
        assert_eq!(two.unwrap(), got);
        // The same chunks claimed at another offset, a changed byte, bytes left over, a piece
        // longer than what came: all refused.
        assert!(pieces_of(&lists, &[piece(1000, n)], stream.clone()).is_err());
        let mut bad = stream.to_vec();
        bad[20] ^= 1;
        assert!(pieces_of(&lists, &[piece(0, n)], Bytes::from(bad)).is_err());
        let mut more = stream.to_vec();
        more.push(0);
        assert!(pieces_of(&lists, &[piece(0, n)], Bytes::from(more)).is_err());
        assert!(pieces_of(&lists, &[piece(0, n + 1)], stream).is_err());
    }
}
