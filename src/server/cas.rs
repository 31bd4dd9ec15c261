//! The Xet CAS routes xet-client 1.8.0's `RemoteClient` calls (shared/protocol/
//! XET_CAS_AND_HUB_CLIENTS.md §2.3), over the server's store (`store/`).
//!
//! Reconstructions name whole chunks narrowed to the requested range, and hand out fetch URLs
//! with an expiry (no bearer token needed): the object store's own presigned URLs where it
//! signs them, else URLs of this server's fetch route, signed by it. Upload grants (presigned
//! PUTs to the object store) are offered where the store signs; elsewhere the grant route
//! answers 404 and the client uploads to `/v1/xorbs`. A shard is accepted only if every xorb
//! its files use is stored, so a file the catalog can name is always reconstructible.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use xet_client::cas_types::FileRange;
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::metadata_shard::streaming_shard::MDBMinimalShard;

use super::auth::now_secs;
use super::extract::{CasToken, Read, Write};
use super::hub::{error, internal};
use super::store::{GrantCommit, LocatedTerm, PutError};
use super::{Answer, Server};
use crate::remote::{cas_wire, RemoteError};

/// Lifetime of a fetch URL.
const FETCH_TTL_SECS: u64 = 3600;
/// How long a client may keep a keyed dedup answer.
const DEDUP_KEY_VALID_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

type S = State<Arc<Server>>;

fn remote_err(e: RemoteError) -> Response {
    match e {
        RemoteError::NotFound(m) => error(StatusCode::NOT_FOUND, None, m),
        e => internal(e),
    }
}

fn parse_hash(h: &str) -> Result<MerkleHash, Response> {
    let bad = || {
        let shown: String = h.chars().take(80).collect();
        error(
            StatusCode::BAD_REQUEST,
            None,
            format!("{shown:?} is not a hash (64 lowercase hex digits)"),
        )
    };
    if !super::scope::is_hash(h) {
        return Err(bad());
    }
    MerkleHash::from_hex(h).map_err(|_| bad())
}

/// `Range: bytes=S-E` / `bytes=S-` against a body of `size` bytes, as a half-open range;
/// `None` without the header; 416 for a range starting past the end.
pub fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<Range<u64>>, Response> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || {
        error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            None,
            "unsatisfiable range",
        )
    };
    let spec = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().strip_prefix("bytes="))
        .ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = if a.is_empty() {
        // The last N bytes.
        let n: u64 = b.trim().parse().map_err(|_| bad())?;
        (size.saturating_sub(n), size)
    } else {
        let start: u64 = a.trim().parse().map_err(|_| bad())?;
        let end = if b.trim().is_empty() {
            size
        } else {
            b.trim()
                .parse::<u64>()
                .map_err(|_| bad())?
                .saturating_add(1)
                .min(size)
        };
        (start, end)
    };
    if start >= size || start >= end {
        return Err(bad());
    }
    Ok(Some(start..end))
}

impl Server {
    /// File `file`'s hash, if a CAS token for `bucket` may read it: 404 for a body the
    /// bucket does not hold (the same answer as for a body the CAS lacks, so a hash alone
    /// tells nothing about other buckets).
    async fn readable_file(&self, bucket: &str, file: &str) -> Result<MerkleHash, Response> {
        let hash = parse_hash(file)?;
        match self.bucket_has_body(bucket, file).await {
            Ok(true) => Ok(hash),
            Ok(false) => Err(no_file(file)),
            Err(e) => Err(remote_err(e)),
        }
    }

    /// Keep bodies `hashes` from collection for a commit about to name them (the store
    /// collects what nothing names); 400 naming the first that is no longer stored.
    pub async fn claim_bodies(&self, hashes: &[String]) -> Result<(), Response> {
        let wanted: Vec<String> = hashes
            .iter()
            .filter(|h| h.as_str() != crate::server::scope::EMPTY_HASH)
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let gone = self.cas.claim_files(&wanted).await.map_err(remote_err)?;
        match gone.first() {
            None => Ok(()),
            Some(h) => Err(error(
                StatusCode::BAD_REQUEST,
                None,
                format!("xet hash {h} is no longer stored; upload it again"),
            )),
        }
    }

    /// Size of stored file `hash`, `None` if the CAS does not know it.
    pub async fn file_size(&self, hash: &str) -> Result<Option<u64>, RemoteError> {
        let h = MerkleHash::from_hex(hash)
            .map_err(|_| RemoteError::NotFound(format!("{hash} is not a hash")))?;
        self.cas.file_size(&h).await
    }

    /// Where a client GETs (ranges of) xorb `xorb`: the object store itself where it signs
    /// URLs, else this server's fetch route.
    async fn fetch_url(&self, xorb: &str) -> Result<String, Response> {
        let h = parse_hash(xorb)?;
        if let Some(url) = self.cas.xorb_url(&h).await.map_err(internal)? {
            return Ok(url);
        }
        let exp = now_secs() + FETCH_TTL_SECS;
        Ok(format!(
            "{}/fetch/{xorb}?{}",
            self.public_url,
            self.auth.sign_fetch(xorb, exp)
        ))
    }
}

/// A xorb chunk range and where those chunks are stored in it.
type Span = (Range<u32>, Range<u64>);

fn no_file(file: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        None,
        format!("file {file} not found"),
    )
}

async fn reconstruction(
    s: &Server,
    bucket: &str,
    file: &str,
    headers: &HeaderMap,
    v2: bool,
) -> Answer {
    let hash = s.readable_file(bucket, file).await?;
    let size = match s.file_size(file).await.map_err(remote_err)? {
        Some(n) => n,
        None => return Err(no_file(file)),
    };
    let range = parse_range(headers, size)?;
    let Some(located) = s.cas.locate(hash, range).await.map_err(remote_err)? else {
        return Err(error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            None,
            "range past the end",
        ));
    };
    let terms: Vec<Value> = located
        .terms
        .iter()
        .map(|t| {
            json!({
                "hash": t.xorb.hex(),
                "unpacked_length": t.unpacked_len,
                "range": {"start": t.chunks.start, "end": t.chunks.end},
            })
        })
        .collect();
    let per_xorb = fetch_ranges(&located.terms, v2);
    let offset = located.offset_into_first;
    let mut urls = Vec::with_capacity(per_xorb.len());
    for h in per_xorb.keys() {
        urls.push(s.fetch_url(h).await?);
    }
    let body = if v2 {
        let xorbs: serde_json::Map<String, Value> = per_xorb
            .into_iter()
            .zip(urls)
            .map(|((h, ranges), url)| (h, json!([{"url": url, "ranges": ranges}])))
            .collect();
        json!({"offset_into_first_range": offset, "terms": terms, "xorbs": xorbs})
    } else {
        let fetch: serde_json::Map<String, Value> = per_xorb
            .into_iter()
            .zip(urls)
            .map(|((h, ranges), url)| {
                let list: Vec<Value> = ranges
                    .into_iter()
                    .map(|mut r| {
                        r["url"] = json!(url);
                        r
                    })
                    .collect();
                (h, json!(list))
            })
            .collect();
        json!({"offset_into_first_range": offset, "terms": terms, "fetch_info": fetch})
    };
    Ok(axum::Json(body).into_response())
}

/// Per xorb, the chunk ranges to fetch (with their stored byte ranges), merged where they
/// overlap or touch: a body may use a xorb's chunks in several terms, even the same chunks
/// twice, and the client wants each xorb's fetch ranges disjoint. Written as the v2 or v1
/// answer has them.
fn fetch_ranges(terms: &[LocatedTerm], v2: bool) -> BTreeMap<String, Vec<Value>> {
    let mut spans: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for t in terms {
        spans
            .entry(t.xorb.hex())
            .or_default()
            .push((t.chunks.clone(), t.packed.clone()));
    }
    let mut per_xorb = BTreeMap::new();
    for (h, mut list) in spans {
        list.sort_by_key(|(c, _)| c.start);
        let mut merged: Vec<Span> = Vec::new();
        for (c, b) in list {
            match merged.last_mut() {
                Some((mc, mb)) if c.start <= mc.end => {
                    mc.end = mc.end.max(c.end);
                    mb.end = mb.end.max(b.end);
                }
                _ => merged.push((c, b)),
            }
        }
        per_xorb.insert(
            h,
            merged
                .into_iter()
                .map(|(c, b)| {
                    let chunks = json!({"start": c.start, "end": c.end});
                    let bytes = json!({"start": b.start, "end": b.end - 1});
                    if v2 {
                        json!({"chunks": chunks, "bytes": bytes})
                    } else {
                        json!({"range": chunks, "url_range": bytes})
                    }
                })
                .collect(),
        );
    }
    per_xorb
}

pub async fn reconstruction_v2(
    State(s): S,
    Path(file): Path<String>,
    t: CasToken<Read>,
    headers: HeaderMap,
) -> Answer {
    reconstruction(&s, &t.bucket, &file, &headers, true).await
}

pub async fn reconstruction_v1(
    State(s): S,
    Path(file): Path<String>,
    t: CasToken<Read>,
    headers: HeaderMap,
) -> Answer {
    reconstruction(&s, &t.bucket, &file, &headers, false).await
}

#[derive(Deserialize)]
pub struct FetchQuery {
    exp: u64,
    sig: String,
}

/// A signed fetch of stored xorb bytes (`Range` honoured).
pub async fn fetch(
    State(s): S,
    Path(xorb): Path<String>,
    Query(q): Query<FetchQuery>,
    headers: HeaderMap,
) -> Answer {
    if !s.auth.check_fetch(&xorb, q.exp, &q.sig) {
        return Err(error(
            StatusCode::FORBIDDEN,
            None,
            "fetch URL expired or not signed by this server",
        ));
    }
    let hash = parse_hash(&xorb)?;
    let Some(len) = s.cas.xorb_len(&hash).await.map_err(remote_err)? else {
        return Err(error(
            StatusCode::NOT_FOUND,
            None,
            format!("xorb {xorb} not found"),
        ));
    };
    let range = parse_range(&headers, len)?;
    let span = range.clone().unwrap_or(0..len);
    let bytes = s.cas.xorb_bytes(&hash, span).await.map_err(remote_err)?;
    Ok(match range {
        Some(r) => (
            StatusCode::PARTIAL_CONTENT,
            [(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end - 1),
            )],
            bytes,
        )
            .into_response(),
        None => bytes.into_response(),
    })
}

pub async fn dedup(
    State(s): S,
    Path((prefix, chunk)): Path<(String, String)>,
    _: CasToken<Read>,
) -> Answer {
    let hash = parse_hash(&chunk)?;
    let shard = match s.cas.dedup_shard(&prefix, &hash).await.map_err(internal)? {
        Some(shard) => shard,
        None => return Ok(StatusCode::NOT_FOUND.into_response()),
    };
    // Answered as the Hub answers: xorb sections only (no other file's hash or layout) and
    // chunk hashes keyed with a key of this server's, so a client recognises only chunks it
    // has the bytes of, and learns nothing it could claim in a shard of its own.
    let key = s.auth.dedup_key();
    let keyed = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        xet_core_structures::metadata_shard::shard_format::MDBShardInfo::export_as_keyed_shard_streaming(
            &mut std::io::Cursor::new(&shard[..]),
            &mut out,
            key,
            DEDUP_KEY_VALID_FOR,
            false,
            true,
            true,
        )
        .map(|_| out)
    })
    .await;
    Ok(match keyed {
        Ok(Ok(out)) => out.into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    })
}

/// `POST /v1/xorb-grants/{prefix}/{xorb}` with `{"length", "checksum": {"algo": "crc64nvme",
/// "value": "<decimal>"}}`: 201 with a grant (a presigned PUT to the object store) where the
/// store signs, 200 if the xorb is stored already, else 404 (the client then uploads to
/// `/v1/xorbs`).
pub async fn grant(
    State(s): S,
    Path((_prefix, xorb)): Path<(String, String)>,
    _: CasToken<Write>,
    axum::Json(req): axum::Json<xet_client::cas_types::XorbUploadGrantRequest>,
) -> Answer {
    let hash = parse_hash(&xorb)?;
    if s.cas.has_xorb(&hash).await.map_err(remote_err)? {
        return Ok(StatusCode::OK.into_response());
    }
    if req.length > MAX_XORB_BYTES {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            format!("a xorb holds at most {MAX_XORB_BYTES} bytes"),
        ));
    }
    let xet_client::cas_types::Checksum::Crc64Nvme(crc) = req.checksum;
    let Some(g) = s
        .cas
        .grant(hash, req.length, crc)
        .await
        .map_err(remote_err)?
    else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let grant = xet_client::cas_types::XorbUploadGrant {
        id: g.id,
        method: "PUT".into(),
        url: g.url,
        headers: g.headers.into_iter().collect(),
    };
    Ok((StatusCode::CREATED, axum::Json(grant)).into_response())
}

/// `POST /v1/xorb-commits/{prefix}/{xorb}/grant/{id}`: check what was uploaded for the grant
/// and store it as the xorb. 404 if nothing (or not the promised bytes) was uploaded: the
/// client asks for a new grant.
pub async fn commit_grant(
    State(s): S,
    Path((_prefix, xorb, id)): Path<(String, String, String)>,
    _: CasToken<Write>,
) -> Answer {
    let hash = parse_hash(&xorb)?;
    match s.cas.commit_grant(hash, &id).await {
        Ok(GrantCommit::Stored) => Ok(axum::Json(json!({"was_inserted": true})).into_response()),
        Ok(GrantCommit::NotUploaded) => Err(error(
            StatusCode::NOT_FOUND,
            None,
            format!("no upload for grant {id} of xorb {xorb}"),
        )),
        Err(e) => Err(put_err(e)),
    }
}

/// Largest serialized xorb a client may send (xet-core cuts them at 64 MiB of chunks).
const MAX_XORB_BYTES: u64 = 80 << 20;

fn put_err(e: PutError) -> Response {
    match e {
        PutError::Refused(m) => error(StatusCode::BAD_REQUEST, None, m),
        PutError::Store(e) => internal(e),
    }
}

pub async fn upload_xorb(
    State(s): S,
    Path((_prefix, xorb)): Path<(String, String)>,
    _: CasToken<Write>,
    body: Bytes,
) -> Response {
    match store_xorb(&s, &xorb, body).await {
        Ok(inserted) => axum::Json(json!({"was_inserted": inserted})).into_response(),
        Err(r) => r,
    }
}

/// Store serialized xorb `xorb` (checked against its hash), on disk before this returns:
/// the client's shard or commit naming it comes after. Whether it was new.
async fn store_xorb(s: &Server, xorb: &str, body: Bytes) -> Result<bool, Response> {
    let hash = parse_hash(xorb)?;
    s.cas.put_xorb(hash, body).await.map_err(put_err)
}

/// Store an upload's xorbs, then its shard, for `bucket`; how many xorbs were new.
pub(super) async fn store_upload(
    s: &Server,
    bucket: &str,
    head: &cas_wire::UploadHead,
    body: Bytes,
) -> Result<u64, Response> {
    let (xorbs, shard) = head
        .cut(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, None, e))?;
    let mut inserted = 0;
    for (x, bytes) in xorbs {
        inserted += u64::from(store_xorb(s, &x.hash, bytes).await?);
    }
    store_shard(s, bucket, shard).await?;
    Ok(inserted)
}

/// Check that every xorb the shard's files use is stored, then keep the shard and record its
/// files as uploaded to `bucket` (readable through it, addable to it).
async fn store_shard(s: &Server, bucket: &str, body: Bytes) -> Result<(), Response> {
    let shard = MDBMinimalShard::from_reader(&mut std::io::Cursor::new(&body), true, true)
        .map_err(|e| error(StatusCode::BAD_REQUEST, None, format!("not a shard: {e}")))?;
    let mut named = std::collections::BTreeSet::new();
    for i in 0..shard.num_files() {
        let f = shard.file(i).expect("index below num_files");
        named.extend((0..f.num_entries()).map(|k| f.entry(k).xorb_hash));
    }
    for x in named {
        if !s.cas.has_xorb(&x).await.map_err(remote_err)? {
            return Err(error(
                StatusCode::BAD_REQUEST,
                None,
                format!("shard names xorb {} which is not stored", x.hex()),
            ));
        }
    }
    // Every range of chunks a file names must come with the verification hash of those very
    // chunks: only a writer that knows them (has their bytes) can compute it, so a shard
    // cannot claim chunks of somebody else's xorb, learnt by hash, as part of a new file.
    let mut ranges = Vec::new();
    let mut claimed = Vec::new();
    for i in 0..shard.num_files() {
        let f = shard.file(i).expect("index below num_files");
        if f.num_entries() > 0 && !f.contains_verification() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                None,
                format!(
                    "the shard's file {} carries no verification hashes",
                    f.file_hash().hex()
                ),
            ));
        }
        for k in 0..f.num_entries() {
            let e = f.entry(k);
            ranges.push((e.xorb_hash, e.chunk_index_start..e.chunk_index_end));
            claimed.push((f.file_hash(), f.verification(k).range_hash));
        }
    }
    let actual = s.cas.range_hashes(ranges).await.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            None,
            format!("the shard names chunks that are not stored: {e}"),
        )
    })?;
    if let Some((file, _)) = claimed
        .iter()
        .zip(&actual)
        .find_map(|((f, c), a)| (c != a).then_some((f, a)))
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            format!(
                "the shard's file {} names chunks its verification hashes do not match",
                file.hex()
            ),
        ));
    }
    let files: Vec<String> = (0..shard.num_files())
        .map(|i| {
            shard
                .file(i)
                .expect("index below num_files")
                .file_hash()
                .hex()
        })
        .collect();
    // The sha256 the uploader gave each file: a repo commit names its LFS files by it.
    let shas: Vec<(String, String)> = (0..shard.num_files())
        .filter_map(|i| {
            let f = shard.file(i).expect("index below num_files");
            f.metadata_ext()
                .map(|m| (m.sha256.hex(), f.file_hash().hex()))
        })
        .collect();
    s.cas.put_shard(body, &shard).await.map_err(put_err)?;
    s.repos.note_sha256(&shas).await.map_err(internal)?;
    s.buckets
        .note_hashes(
            bucket,
            &files.iter().map(String::as_str).collect::<Vec<_>>(),
            true,
        )
        .await
        .map_err(internal)
}

pub async fn shard_v2(State(s): S, t: CasToken<Write>, body: Bytes) -> Response {
    match store_shard(&s, &t.bucket, body).await {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            )],
            "{\"type\":\"result\"}\n",
        )
            .into_response(),
        Err(r) => r,
    }
}

pub async fn shard_v1(State(s): S, t: CasToken<Write>, body: Bytes) -> Response {
    match store_shard(&s, &t.bucket, body).await {
        Ok(()) => axum::Json(json!({"result": 1})).into_response(),
        Err(r) => r,
    }
}

/// `GET /v2/file-chunk-hashes/{file}` with `X-Range-Dirty: bytes=a-b,c-d` (inclusive ends).
pub async fn file_chunk_hashes(
    State(s): S,
    Path(file): Path<String>,
    t: CasToken<Read>,
    headers: HeaderMap,
) -> Answer {
    let hash = s.readable_file(&t.bucket, &file).await?;
    let bad = || {
        error(
            StatusCode::BAD_REQUEST,
            None,
            "X-Range-Dirty must be bytes=a-b[,c-d...]",
        )
    };
    let Some(mut ranges) = headers
        .get("x-range-dirty")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .and_then(cas_wire::parse_ranges)
        .map(|v| {
            v.into_iter()
                .map(|r| FileRange::new(r.start, r.end))
                .collect::<Vec<_>>()
        })
    else {
        return Err(bad());
    };
    ranges.sort_by_key(|r| r.start);
    Ok(match s.cas.file_chunk_hashes(&hash, ranges).await {
        Ok(resp) => axum::Json(resp).into_response(),
        Err(e @ RemoteError::NotFound(_)) => error(StatusCode::NOT_FOUND, None, e.to_string()),
        Err(e) => internal(e),
    })
}

pub async fn telemetry() -> Response {
    StatusCode::OK.into_response()
}

/// `GET /v1/xetmount/chunks/{file}[?bytes=a-b,...]` (xetmount's own route): the file's
/// terms with the hash and size of every chunk in each, so a remote client can compose an
/// edited file from it chunk by chunk; with `bytes` (at most `cas_wire::MAX_PIECE_BYTES` in
/// all), also the stored chunks that hold those bytes, as the xorbs store them (so the client
/// has the base around an edit in the same round trip; `fetch` would hand out the same).
pub async fn chunk_lists(
    State(s): S,
    Path(file): Path<String>,
    Query(q): Query<ChunkListsQuery>,
    t: CasToken<Read>,
) -> Answer {
    let hash = s.readable_file(&t.bucket, &file).await?;
    let wanted = match q.bytes.as_deref().map(cas_wire::parse_ranges) {
        None => Vec::new(),
        Some(Some(r))
            if r.iter().map(|r| r.end - r.start).sum::<u64>() <= cas_wire::MAX_PIECE_BYTES =>
        {
            r
        }
        Some(_) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                None,
                format!(
                    "bytes must be a-b[,c-d...], at most {} bytes in all",
                    cas_wire::MAX_PIECE_BYTES
                ),
            ))
        }
    };
    let Some(lists) = s.cas.chunk_lists(&hash).await.map_err(remote_err)? else {
        return Err(no_file(&file));
    };
    let segments: Vec<cas_wire::WireSegment> = lists
        .segments
        .iter()
        .zip(&lists.chunks)
        .map(|(seg, chunks)| cas_wire::WireSegment {
            xorb: seg.xorb_hash.hex(),
            flags: seg.xorb_flags,
            start: seg.chunk_index_start,
            end: seg.chunk_index_end,
            chunks: chunks.iter().map(|(h, n)| (h.hex(), *n)).collect(),
        })
        .collect();
    if q.bytes.is_none() {
        return Ok(axum::Json(cas_wire::ChunkListsAnswer {
            segments,
            pieces: Vec::new(),
        })
        .into_response());
    }
    let (pieces, data) = stored_pieces(&s, hash, wanted).await?;
    let tail: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(cas_wire::FRAMED),
        )],
        cas_wire::frame(&cas_wire::ChunkListsAnswer { segments, pieces }, &tail),
    )
        .into_response())
}

/// The stored chunks that hold bytes `wanted` of file `hash`, as the xorbs store them, and
/// where each piece starts in the file.
async fn stored_pieces(
    s: &Server,
    hash: MerkleHash,
    wanted: Vec<Range<u64>>,
) -> Result<(Vec<cas_wire::WirePiece>, Vec<Bytes>), Response> {
    let mut pieces = Vec::new();
    let mut data: Vec<Bytes> = Vec::new();
    for r in wanted {
        let Some(located) = s
            .cas
            .locate(hash, Some(r.clone()))
            .await
            .map_err(remote_err)?
        else {
            continue;
        };
        let mut at = r.start - located.offset_into_first;
        for t in located.terms {
            let bytes = s
                .cas
                .xorb_bytes(&t.xorb, t.packed)
                .await
                .map_err(remote_err)?;
            pieces.push(cas_wire::WirePiece {
                at,
                len: bytes.len() as u64,
            });
            at += t.unpacked_len;
            data.push(bytes);
        }
    }
    Ok((pieces, data))
}

#[derive(Deserialize)]
pub struct ChunkListsQuery {
    bytes: Option<String>,
}
