//! Composing an edited file from its base over the official CAS routes only: the
//! reconstruction queries (terms, and the fetch URLs of their chunks) and
//! `GET /v2/file-chunk-hashes/{file}`, which answers dirty byte ranges with chunk-aligned
//! windows to re-chunk, Merkle subtrees of the untouched chunks between them (`hashRanges`)
//! and the verification hash of every untouched term (`gapVerification`), but never a chunk
//! list.
//!
//! The new file is: the untouched terms as they are (with the verification hashes the CAS
//! gave), and around each window the chunks of the terms the window cuts. A term cut by a
//! window keeps its chunks on either side by reference, but its kept parts need verification
//! hashes of their own, which only their chunk hashes give, and the route hands out none.
//! Every stored xorb ends with a footer listing each chunk's hash, packed end and unpacked end
//! (`remote::xet::xorb_footer`): one suffix-range fetch of each touched xorb gives them (~40 bytes
//! a chunk). A footer counts only if its chunks hash to the xorb's name (so every hash and
//! length in it is the xorb's) and its lengths add up to the terms the reconstruction names.
//! Chunk *bytes* are then needed only for the windows: a ranged reconstruction of each edit's
//! neighbourhood (±512 KiB) is asked alongside the route and fetched alongside the footers,
//! and a window reaching past it gets its remaining chunks by the footer's packed offsets.
//! Every window chunk's bytes must hash to the footer's hash for it.
//!
//! Without a usable footer (none, refused, unparsable, or not agreeing with the
//! reconstruction) the composition reads the touched terms whole instead, chunk by chunk,
//! and hashes them here: bounded by the size of the terms touched (a fresh upload's terms are
//! up to a xorb, 64 MiB), not by the size of the file. xet-core's `upload_ranges` and
//! huggingface.js snap edits to term boundaries likewise, except that 1.8.0's `upload_ranges`
//! drops the rest of a term its window ends inside; here every cut term's tail is kept
//! (`windows_widen_to_the_terms_they_touch`, and `tests/remote_compose.rs` byte-compares
//! files whose windows end inside 64 MiB terms).
//!
//! Only the windows are re-chunked (each starts at a chunk boundary, and the CAS extends it
//! past the edits to where the chunker re-synchronises); their chunks are packed into new
//! xorbs unless the base already holds them. The file's identity is the merge of the CAS's
//! gap subtrees with the subtrees of the new windows' chunks, the way the route intends;
//! the same merge with the base's own window chunks must give the base's identity, which
//! checks the CAS's answer and our reading of it before anything is stored.
//!
//! Before the result is returned it is checked as `compose::verify_written` checks a chunk
//! list composition, as far as these routes allow: every term written is either an untouched
//! base term, in order, or a run of chunks known by hash and length (the base's, from the
//! footers or the whole-term read, or those of the xorbs just written), matching one by one
//! the chunks composed, with lengths adding up to the expected size; and the stored
//! reconstruction (one query) is exactly the terms written. The windows are not read back:
//! a xorb upload is content-addressed (the CAS checks its name against its chunks), so the
//! chunks named are the bytes sent, and the terms check proves the file was registered as
//! written.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_client::{Client, URLProvider};
use xet_client::cas_types::{
    FileChunkHashesResponse, FileRange, HexMerkleHash, HttpRange, QueryReconstructionResponseV2,
    XorbRangeDescriptor,
};
use xet_core_structures::merklehash::{
    compute_data_hash, xorb_hash, MerkleHash, MerkleHashSubtree,
};
use xet_core_structures::metadata_shard::file_structs::FileDataSequenceEntry;
use xet_core_structures::xorb_object::XorbObjectInfoV1;
use xet_data::deduplication::Chunker;

use super::assemble::{Assembler, ChunkRef, Packer, XorbSettings};
use super::compose::{known_chunk, parse_hash};
use super::rechunk::{BaseChunk, Piece, PieceSink};
use super::xorb_footer::{self, Suffix, XorbIndex};
use crate::remote::{ComposeEdit, Composed, FileId, RemoteError, RemoteResult};

/// Where `GET /v2/file-chunk-hashes/{file}` is asked, and stored xorb bytes fetched raw.
#[async_trait]
pub trait ChunkHashes: Send + Sync {
    /// The answer for `dirty` (sorted, disjoint, non-empty byte ranges of `file`); `None` when
    /// the CAS does not offer the route.
    async fn file_chunk_hashes(
        &self,
        file: &MerkleHash,
        dirty: &[Range<u64>],
    ) -> RemoteResult<Option<FileChunkHashesResponse>>;

    /// `GET url` (a fetch URL from a reconstruction: signed, no credentials) with
    /// `Range: range`, as it is stored (a xorb's footer is not chunk data, which is all
    /// `Client::get_file_term_data` decodes).
    async fn get_range(&self, url: &str, range: &str) -> RemoteResult<Bytes> {
        get_range(url, range).await
    }
}

/// The client for [`get_range`]: one per process, so that its connections are reused.
fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap_or_default()
    })
}

/// `GET url` with `Range: range`: the body of a 206. A server ignoring the range (200) is
/// refused rather than read: its body is the whole object.
pub async fn get_range(url: &str, range: &str) -> RemoteResult<Bytes> {
    let r = http()
        .get(url)
        .header(reqwest::header::RANGE, range)
        .send()
        .await
        .map_err(|e| RemoteError::Other(format!("fetch {range}: {e}")))?;
    let status = r.status();
    if status != reqwest::StatusCode::PARTIAL_CONTENT {
        return Err(RemoteError::Other(format!("fetch {range}: HTTP {status}")));
    }
    r.bytes()
        .await
        .map_err(|e| RemoteError::Other(format!("fetch {range}: {e}")))
}
fn integrity(msg: impl std::fmt::Display) -> RemoteError {
    RemoteError::Integrity(format!("window compose: {msg}"))
}

fn xet(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Other(format!("window compose: {e}"))
}

/// The byte ranges of the base to declare dirty for `edits`. An insert dirties the byte it
/// goes before; one at EOF (an append) dirties the last byte, because the base's last chunk
/// ends at EOF rather than at a content-defined cut, so appended bytes may move that cut.
pub fn dirty_ranges(edits: &[ComposeEdit], size: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for e in edits {
        let r = &e.original_range;
        let d = if !r.is_empty() {
            r.clone()
        } else if r.start >= size {
            size - 1..size
        } else {
            r.start..r.start + 1
        };
        match out.last_mut() {
            Some(last) if d.start <= last.end => last.end = last.end.max(d.end),
            _ => out.push(d),
        }
    }
    out
}

/// The windows of `resp`, after checking that the answer fits a `size` byte file: windows
/// sorted, disjoint and inside the file, one more gap than windows, and a gap missing exactly
/// where a window touches the start or the end.
pub fn check_answer(resp: &FileChunkHashesResponse, size: u64) -> RemoteResult<Vec<Range<u64>>> {
    if resp.file_size != size {
        return Err(integrity(format!(
            "the CAS says the base has {} bytes, expected {size}",
            resp.file_size
        )));
    }
    let windows: Vec<Range<u64>> = resp
        .windows
        .iter()
        .map(|w| w.dirty_byte_range[0]..w.dirty_byte_range[1])
        .collect();
    if windows.is_empty() || resp.hash_ranges.len() != windows.len() + 1 {
        return Err(integrity(format!(
            "{} windows and {} gaps",
            windows.len(),
            resp.hash_ranges.len()
        )));
    }
    let mut prev = 0;
    for w in &windows {
        if w.start < prev || w.start >= w.end || w.end > size {
            return Err(integrity(format!(
                "window {w:?} out of order or out of the file"
            )));
        }
        prev = w.end;
    }
    let first_gap_empty = resp.hash_ranges[0].is_none();
    let last_gap_empty = resp.hash_ranges[windows.len()].is_none();
    if first_gap_empty != (windows[0].start == 0) || last_gap_empty != (prev == size) {
        return Err(integrity("the gaps do not match the windows"));
    }
    Ok(windows)
}

/// For each window, the edits it takes (a range of indices into `edits`): an edit goes to the
/// window that holds its whole base range; an insert at a window's end to the next window,
/// unless it is at EOF. Every edit must find one.
pub fn assign(
    edits: &[ComposeEdit],
    windows: &[Range<u64>],
    size: u64,
) -> RemoteResult<Vec<Range<usize>>> {
    let mut out = Vec::with_capacity(windows.len());
    let mut i = 0;
    for w in windows {
        let from = i;
        while let Some(e) = edits.get(i) {
            let r = &e.original_range;
            let inside = if r.is_empty() {
                r.start >= w.start && (r.start < w.end || (r.start == w.end && w.end == size))
            } else {
                r.start >= w.start && r.end <= w.end
            };
            if !inside {
                break;
            }
            i += 1;
        }
        out.push(from..i);
    }
    if i != edits.len() {
        return Err(integrity(format!(
            "edit {:?} lies in no window",
            edits[i].original_range
        )));
    }
    Ok(out)
}

/// The base ranges to read: each window widened to the terms it touches (`starts` holds
/// every term's first byte and then the size), merged where they meet.
pub fn read_ranges(windows: &[Range<u64>], starts: &[u64]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for w in windows {
        let first = starts.partition_point(|&s| s <= w.start) - 1;
        let last = starts.partition_point(|&s| s < w.end) - 1;
        let r = starts[first]..starts[last + 1];
        match out.last_mut() {
            Some(p) if r.start <= p.end => p.end = p.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The identity of the file whose chunks are the CAS's gaps interleaved with `windows` (each
/// window's chunks as (hash, length)): the merged aggregated hash, keyed as xet-core's
/// `file_hash` keys it.
pub fn merged_hash(
    gaps: &[Option<MerkleHashSubtree>],
    windows: &[Vec<(MerkleHash, u64)>],
) -> RemoteResult<MerkleHash> {
    let last = windows.len().saturating_sub(1);
    let first_at_start = gaps.first().is_some_and(|g| g.is_none());
    let last_at_end = gaps.last().is_some_and(|g| g.is_none());
    let mut seq = Vec::with_capacity(2 * windows.len() + 1);
    for (i, w) in windows.iter().enumerate() {
        if let Some(g) = &gaps[i] {
            seq.push(g.clone());
        }
        if !w.is_empty() {
            seq.push(MerkleHashSubtree::from_chunks(
                i == 0 && first_at_start,
                w,
                i == last && last_at_end,
            ));
        }
    }
    if let Some(Some(g)) = gaps.get(windows.len()) {
        seq.push(g.clone());
    }
    let merged = MerkleHashSubtree::merge(&seq).map_err(integrity)?;
    let h = merged
        .final_hash()
        .ok_or_else(|| integrity("the merged chunk tree is not closed at both ends"))?;
    Ok(h.hmac(MerkleHash::default()))
}

/// A term-data URL, as the reconstruction handed it out.
struct FetchUrl {
    url: String,
    range: HttpRange,
}

#[async_trait]
impl URLProvider for FetchUrl {
    async fn retrieve_url(&self) -> xet_client::error::Result<(String, Vec<HttpRange>)> {
        Ok((self.url.clone(), vec![self.range]))
    }

    async fn refresh_url(&self) -> xet_client::error::Result<()> {
        // An expired URL fails the read; the composition is then retried as a whole.
        Ok(())
    }
}

/// Chunks of a stored file, in file order: each one's hash, length, place in its xorb and
/// file offset, and its bytes where they were fetched.
#[derive(Default)]
pub struct Fetched {
    pub chunks: Vec<BaseChunk>,
    pub refs: Vec<ChunkRef>,
    pub data: Vec<Option<Bytes>>,
    /// File offset of each chunk.
    pub pos: Vec<u64>,
    /// Chunk bytes fetched (decoded), for the caller's accounting.
    pub read: u64,
}

impl Fetched {
    /// Index of the chunk starting at `at`, if one does.
    fn starting_at(&self, at: u64) -> Option<usize> {
        self.pos.binary_search(&at).ok()
    }
}

/// Term data (chunks) of one stored range, decoded: the bytes and each chunk's offset in them
/// plus the end; `n` chunks are expected.
async fn term_data(
    client: &Arc<dyn Client>,
    url: &str,
    range: HttpRange,
    n: usize,
    what: &(dyn std::fmt::Display + Sync),
) -> RemoteResult<(Bytes, Vec<u32>)> {
    let permit = client.acquire_download_permit().await.map_err(xet)?;
    let provider = Box::new(FetchUrl {
        url: url.to_string(),
        range,
    });
    let (data, idx) = client
        .get_file_term_data(provider, permit, None, None)
        .await
        .map_err(xet)?;
    if idx.len() != n + 1 || idx.last().map(|&e| e as usize) != Some(data.len()) {
        return Err(integrity(format!(
            "term data of {what} holds {} chunks, expected {n}",
            idx.len().saturating_sub(1)
        )));
    }
    Ok((data, idx))
}

/// The chunks of terms `which` (ascending indices into `resp.terms`, the term at index `i`
/// starting at file offset `starts[i]`) appended to `out`, bytes and all, each hashed here,
/// from the term data `resp` points at: every fetch range they need requested at once.
async fn fetch_terms(
    client: &Arc<dyn Client>,
    resp: &QueryReconstructionResponseV2,
    which: &[usize],
    starts: &[u64],
    out: &mut Fetched,
) -> RemoteResult<()> {
    // The fetch range of each term, and each range once.
    let mut keys: Vec<(HexMerkleHash, u32)> = Vec::with_capacity(which.len());
    let mut wanted: HashMap<(HexMerkleHash, u32), (&String, &XorbRangeDescriptor)> = HashMap::new();
    for &i in which {
        let term = &resp.terms[i];
        let (url, desc) = resp
            .xorbs
            .get(&term.hash)
            .into_iter()
            .flatten()
            .flat_map(|f| f.ranges.iter().map(move |d| (&f.url, d)))
            .find(|(_, d)| d.chunks.start <= term.range.start && term.range.end <= d.chunks.end)
            .ok_or_else(|| integrity(format!("no fetch URL for a term of {}", term.hash)))?;
        let key = (term.hash, desc.chunks.start);
        keys.push(key);
        wanted.insert(key, (url, desc));
    }
    let fetched =
        futures::future::try_join_all(wanted.into_iter().map(|(key, (url, desc))| async move {
            let n = (desc.chunks.end - desc.chunks.start) as usize;
            let (data, idx) = term_data(client, url, desc.bytes, n, &key.0).await?;
            Ok::<_, RemoteError>((key, (data, idx, desc.chunks.start)))
        }))
        .await?;
    let cache: HashMap<_, _> = fetched.into_iter().collect();
    for (&i, key) in which.iter().zip(&keys) {
        let term = &resp.terms[i];
        let (data, idx, first) = &cache[key];
        let mut at = starts[i];
        let mut held = 0u64;
        for c in term.range.start..term.range.end {
            let j = (c - first) as usize;
            let bytes = data.slice(idx[j] as usize..idx[j + 1] as usize);
            let len = bytes.len() as u64;
            out.chunks.push(BaseChunk {
                hash: compute_data_hash(&bytes),
                len,
            });
            out.refs.push(ChunkRef {
                xorb: term.hash.0,
                flags: 0,
                index: c,
            });
            out.pos.push(at);
            out.data.push(Some(bytes));
            at += len;
            held += len;
        }
        if held != u64::from(term.unpacked_length) {
            return Err(integrity(format!(
                "a term of {} holds {held} bytes, the reconstruction says {}",
                term.hash, term.unpacked_length
            )));
        }
        out.read += held;
    }
    Ok(())
}

/// The chunks (bytes and all) holding bytes `ranges` of stored file `file`, through a ranged
/// reconstruction each: the CAS answers with whole chunks, the first of them starting
/// `offset_into_first_range` bytes before the range. A range that cannot be fetched is left
/// out (its windows' chunks are then fetched once the footers say where they are).
async fn fetch_near(client: &Arc<dyn Client>, file: &MerkleHash, ranges: &[Range<u64>]) -> Fetched {
    let got = futures::future::join_all(ranges.iter().map(|r| async move {
        let resp = client
            .get_reconstruction(file, Some(FileRange::new(r.start, r.end)))
            .await
            .map_err(xet)?
            .ok_or_else(|| integrity(format!("{r:?} of {} is past its end", file.hex())))?;
        let first = r
            .start
            .checked_sub(resp.offset_into_first_range)
            .ok_or_else(|| integrity("the first chunk starts before the file"))?;
        let mut starts = vec![first];
        for t in &resp.terms {
            starts.push(starts[starts.len() - 1] + u64::from(t.unpacked_length));
        }
        let all: Vec<usize> = (0..resp.terms.len()).collect();
        let mut out = Fetched::default();
        fetch_terms(client, &resp, &all, &starts, &mut out).await?;
        Ok::<_, RemoteError>(out)
    }))
    .await;
    let mut out = Fetched::default();
    for (r, got) in ranges.iter().zip(got) {
        match got {
            Ok(f) => {
                out.read += f.read;
                out.chunks.extend(f.chunks);
                out.refs.extend(f.refs);
                out.data.extend(f.data);
                out.pos.extend(f.pos);
            }
            Err(e) => tracing::debug!("window compose: fetching {r:?} ahead: {e}"),
        }
    }
    out
}

/// Chunks of a stored xorb, from its footer, checked against the xorb's name.
#[derive(Debug)]
pub struct Footer {
    pub hashes: Vec<MerkleHash>,
    pub index: XorbIndex,
}

/// The footer `info` of xorb `xorb`, if it is that xorb's and agrees with `terms` (chunk
/// ranges of the xorb with their unpacked lengths, as a reconstruction names them): its chunk
/// hashes and lengths must hash to the xorb's name, and each term's chunks must exist and add
/// up to its length.
pub fn check_footer(
    info: XorbObjectInfoV1,
    xorb: &MerkleHash,
    terms: &[(Range<u32>, u64)],
) -> Result<Footer, String> {
    let n = info.num_chunks;
    if info.chunk_hashes.len() != n as usize
        || info.unpacked_chunk_offsets.len() != n as usize
        || info.chunk_boundary_offsets.len() != n as usize
    {
        return Err("a footer without every chunk's hash and ends".into());
    }
    let f = Footer {
        hashes: info.chunk_hashes,
        index: XorbIndex::new(info.chunk_boundary_offsets, info.unpacked_chunk_offsets),
    };
    let chunks: Vec<(MerkleHash, u64)> = (0..n)
        .map(|c| (f.hashes[c as usize], f.index.chunk_len(c)))
        .collect();
    let named = xorb_hash(&chunks);
    if named != *xorb {
        return Err(format!("its chunks hash to {}", named.hex()));
    }
    for (r, len) in terms {
        if r.start >= r.end || r.end > n {
            return Err(format!("a term names chunks {r:?} of {n}"));
        }
        let held = f.index.unpacked_start(r.end) - f.index.unpacked_start(r.start);
        if held != *len {
            return Err(format!(
                "chunks {r:?} hold {held} bytes, the reconstruction says {len}"
            ));
        }
    }
    Ok(f)
}

/// Extra chunks' worth of suffix asked for beyond the highest chunk the reconstruction names
/// of a xorb, so that one fetch usually holds its whole footer.
const FOOTER_SLACK_CHUNKS: u32 = 64;

/// The footers of `xorbs` (each checked against every term of it in `recon`), fetched side by
/// side from the URLs `recon` gives; a footer that cannot be had says why.
async fn fetch_footers(
    route: &dyn ChunkHashes,
    recon: &QueryReconstructionResponseV2,
    xorbs: &[MerkleHash],
) -> HashMap<MerkleHash, Result<Footer, String>> {
    let got = futures::future::join_all(xorbs.iter().map(|x| async move {
        let terms: Vec<(Range<u32>, u64)> = recon
            .terms
            .iter()
            .filter(|t| t.hash.0 == *x)
            .map(|t| (t.range.start..t.range.end, u64::from(t.unpacked_length)))
            .collect();
        let fetches = recon.xorbs.get(&(*x).into());
        let url = fetches.and_then(|l| l.first()).map(|f| f.url.as_str());
        let top = fetches
            .into_iter()
            .flatten()
            .flat_map(|f| f.ranges.iter().map(|d| d.chunks.end))
            .chain(terms.iter().map(|t| t.0.end))
            .max()
            .unwrap_or(0);
        let r = async {
            let url = url.ok_or("no fetch URL")?;
            let mut want = xorb_footer::footer_suffix_len(top + FOOTER_SLACK_CHUNKS);
            for _ in 0..2 {
                let tail = route
                    .get_range(url, &format!("bytes=-{want}"))
                    .await
                    .map_err(|e| e.to_string())?;
                match xorb_footer::footer(&tail)? {
                    Suffix::Parsed(info) => return check_footer(info, x, &terms),
                    Suffix::Need(n) if n > want => want = n,
                    Suffix::Need(_) => return Err("short suffix".to_string()),
                }
            }
            Err("footer longer than announced".to_string())
        }
        .await;
        (*x, r)
    }))
    .await;
    got.into_iter().collect()
}

/// The xorbs of the terms of `recon` (starting at `starts`) that meet `ranges`.
fn xorbs_meeting(
    recon: &QueryReconstructionResponseV2,
    starts: &[u64],
    ranges: &[Range<u64>],
) -> Vec<MerkleHash> {
    let mut seen = HashSet::new();
    recon
        .terms
        .iter()
        .enumerate()
        .filter(|&(i, _)| {
            ranges
                .iter()
                .any(|r| starts[i] < r.end && r.start < starts[i + 1])
        })
        .map(|(_, t)| t.hash.0)
        .filter(|x| seen.insert(*x))
        .collect()
}

/// The chunks of terms `which` of `recon` (term `i` starting at `starts[i]`) from their
/// xorbs' footers (those in `footers`, the others fetched now), with bytes for every chunk
/// inside `windows`: from `near` where it holds them, the rest fetched by the footer's packed
/// offsets. `Err` says why the footers cannot serve (the caller then reads the terms whole).
#[allow(clippy::too_many_arguments)]
async fn by_footers(
    client: &Arc<dyn Client>,
    route: &dyn ChunkHashes,
    recon: &QueryReconstructionResponseV2,
    which: &[usize],
    starts: &[u64],
    windows: &[Range<u64>],
    mut footers: HashMap<MerkleHash, Result<Footer, String>>,
    near: Fetched,
) -> RemoteResult<Fetched> {
    let mut want: Vec<MerkleHash> = Vec::new();
    for &i in which {
        let x = recon.terms[i].hash.0;
        if !footers.contains_key(&x) && !want.contains(&x) {
            want.push(x);
        }
    }
    if !want.is_empty() {
        footers.extend(fetch_footers(route, recon, &want).await);
    }
    let mut out = Fetched {
        read: near.read,
        ..Default::default()
    };
    for &i in which {
        let t = &recon.terms[i];
        let f = match footers.get(&t.hash.0) {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(integrity(format!("footer of xorb {}: {e}", t.hash))),
            None => return Err(integrity(format!("no footer of xorb {}", t.hash))),
        };
        let mut at = starts[i];
        for c in t.range.start..t.range.end {
            let len = f.index.chunk_len(c);
            out.chunks.push(BaseChunk {
                hash: f.hashes[c as usize],
                len,
            });
            out.refs.push(ChunkRef {
                xorb: t.hash.0,
                flags: 0,
                index: c,
            });
            out.pos.push(at);
            out.data.push(None);
            at += len;
        }
    }
    // The bytes fetched ahead, wherever a chunk of the same content starts at the same place
    // (their hashes were computed from the bytes).
    for (k, &p) in near.pos.iter().enumerate() {
        if let Some(j) = out.starting_at(p) {
            if out.chunks[j] == near.chunks[k] {
                out.data[j] = near.data[k].clone();
            }
        }
    }
    // Window chunks still without bytes: runs of consecutive chunks of one xorb, each one
    // ranged fetch.
    let mut runs: Vec<(MerkleHash, Range<u32>, Range<usize>)> = Vec::new();
    for w in windows {
        let a = out.pos.partition_point(|&p| p < w.start);
        let b = out.pos.partition_point(|&p| p < w.end);
        for j in a..b {
            if out.data[j].is_some() {
                continue;
            }
            let r = out.refs[j];
            match runs.last_mut() {
                Some((x, c, ks)) if *x == r.xorb && c.end == r.index && ks.end == j => {
                    c.end += 1;
                    ks.end += 1;
                }
                _ => runs.push((r.xorb, r.index..r.index + 1, j..j + 1)),
            }
        }
    }
    let got = futures::future::try_join_all(runs.iter().map(|(x, c, ks)| {
        // Every touched term's footer was checked above.
        let range = footers.get(x).and_then(|f| f.as_ref().ok()).map(|f| {
            HttpRange::new(
                f.index.packed_start(c.start),
                f.index.packed_start(c.end) - 1,
            )
        });
        let url = recon
            .xorbs
            .get(&(*x).into())
            .and_then(|l| l.first())
            .map(|f| f.url.clone());
        async move {
            let (Some(url), Some(range)) = (url, range) else {
                return Err(integrity(format!("no fetch URL or footer for xorb {x}")));
            };
            let what = format!("chunks {c:?} of {x}");
            let (data, idx) = term_data(client, &url, range, c.len(), &what).await?;
            Ok::<_, RemoteError>((ks.clone(), data, idx))
        }
    }))
    .await?;
    for (ks, data, idx) in got {
        for (n, j) in ks.enumerate() {
            let bytes = data.slice(idx[n] as usize..idx[n + 1] as usize);
            if compute_data_hash(&bytes) != out.chunks[j].hash
                || bytes.len() as u64 != out.chunks[j].len
            {
                return Err(integrity(format!(
                    "chunk {} of {} does not hash as its footer says",
                    out.refs[j].index, out.refs[j].xorb
                )));
            }
            out.read += bytes.len() as u64;
            out.data[j] = Some(bytes);
        }
    }
    Ok(out)
}

/// The terms of a whole-file reconstruction, as a shard describes them.
fn terms_in(resp: &QueryReconstructionResponseV2) -> Vec<FileDataSequenceEntry> {
    resp.terms
        .iter()
        .map(|t| FileDataSequenceEntry {
            xorb_hash: t.hash.0,
            xorb_flags: 0,
            unpacked_segment_bytes: t.unpacked_length,
            chunk_index_start: t.range.start,
            chunk_index_end: t.range.end,
        })
        .collect()
}

/// The whole-file reconstruction of `file`.
async fn reconstruction(
    client: &Arc<dyn Client>,
    file: &MerkleHash,
) -> RemoteResult<QueryReconstructionResponseV2> {
    client
        .get_reconstruction(file, None)
        .await
        .map_err(xet)?
        .ok_or_else(|| RemoteError::NotFound(format!("file {} is not stored", file.hex())))
}

/// The stored terms of `file`.
async fn terms_of(
    client: &Arc<dyn Client>,
    file: &MerkleHash,
) -> RemoteResult<Vec<FileDataSequenceEntry>> {
    Ok(terms_in(&reconstruction(client, file).await?))
}

/// What the new file is made of, in order: a whole untouched term, or one chunk (hash,
/// length), of the base or new.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Term(FileDataSequenceEntry),
    Chunk(MerkleHash, u64),
}

/// A re-chunked window: its length and its chunks.
struct NewWindow {
    len: u64,
    chunks: Vec<(MerkleHash, u64)>,
}

/// Compose `base` with `edits` (sorted, disjoint, in base coordinates) over `route` and the
/// reconstruction and upload routes of `client`. `Ok(None)`: the CAS does not offer the
/// route, or the base or the result is empty (a whole upload is then the right thing). A
/// CAS answer that does not add up, or a result that does not verify, is an
/// [`RemoteError::Integrity`] error and nothing refers to what was stored.
pub async fn compose(
    settings: &XorbSettings,
    client: Arc<dyn Client>,
    route: &dyn ChunkHashes,
    base: &FileId,
    edits: Vec<ComposeEdit>,
) -> RemoteResult<Option<Composed>> {
    let size = base.size;
    let mut prev_end = 0;
    for e in &edits {
        let r = &e.original_range;
        if r.start > r.end || r.start < prev_end || r.end > size {
            return Err(RemoteError::Other(format!(
                "edit {r:?} is out of order or past the end of a {size} byte base"
            )));
        }
        prev_end = r.end;
    }
    let edits: Vec<ComposeEdit> = edits
        .into_iter()
        .filter(|e| !(e.original_range.is_empty() && e.data.is_empty()))
        .collect();
    let expected = edits.iter().fold(size, |s, e| {
        s - (e.original_range.end - e.original_range.start) + e.data.len() as u64
    });
    if edits.is_empty() {
        return Ok(Some(Composed {
            id: base.clone(),
            new_bytes: 0,
            base_bytes_read: 0,
            dirty_chunk_bytes: 0,
            terms: 0,
            whole_upload: false,
            carried: None,
        }));
    }
    if size == 0 || expected == 0 {
        return Ok(None);
    }
    let base_hash = parse_hash(&base.hash)?;
    let started = std::time::Instant::now();
    // One round trip for the windows, the base's terms (with their fetch URLs) and ranged
    // reconstructions of the edits' neighbourhoods; then, side by side, the footers of the
    // xorbs holding those neighbourhoods and the neighbourhoods' bytes.
    let dirty = dirty_ranges(&edits, size);
    let near = super::rechunk::near_ranges(size, &edits);
    let spots = if near.is_empty() { &dirty } else { &near };
    let terms_and_footers = async {
        let recon = reconstruction(&client, &base_hash).await?;
        let mut starts = vec![0u64];
        for t in &recon.terms {
            starts.push(starts[starts.len() - 1] + u64::from(t.unpacked_length));
        }
        let footers = if starts[recon.terms.len()] == size {
            fetch_footers(route, &recon, &xorbs_meeting(&recon, &starts, spots)).await
        } else {
            HashMap::new()
        };
        Ok::<_, RemoteError>((recon, footers))
    };
    let (resp, recon, near) = tokio::join!(
        route.file_chunk_hashes(&base_hash, &dirty),
        terms_and_footers,
        fetch_near(&client, &base_hash, &near)
    );
    let Some(resp) = resp? else {
        return Ok(None);
    };
    let (recon, footers) = recon?;
    tracing::debug!(
        "window compose: windows, terms, {} footers and {} bytes ahead in {:?}",
        footers.len(),
        near.read,
        started.elapsed()
    );
    let windows = check_answer(&resp, size)?;
    let per_window = assign(&edits, &windows, size)?;
    let terms = terms_in(&recon);
    let mut starts = vec![0u64];
    for t in &terms {
        starts.push(starts[starts.len() - 1] + u64::from(t.unpacked_segment_bytes));
    }
    if starts[terms.len()] != size {
        return Err(integrity(format!(
            "the base's terms add up to {} bytes, expected {size}",
            starts[terms.len()]
        )));
    }
    let reads = read_ranges(&windows, &starts);
    let untouched = terms
        .iter()
        .zip(&starts)
        .filter(|(_, &s)| !reads.iter().any(|r| r.start <= s && s < r.end))
        .count();
    if untouched != resp.gap_verification.len() {
        return Err(integrity(format!(
            "{untouched} untouched terms but {} verification hashes",
            resp.gap_verification.len()
        )));
    }
    // The chunks of the terms the reads cover: from their footers, with bytes for the
    // windows; without usable footers, read whole from the reconstruction in hand.
    let which: Vec<usize> = (0..terms.len())
        .filter(|&i| {
            reads
                .iter()
                .any(|r| r.start <= starts[i] && starts[i] < r.end)
        })
        .collect();
    let base_chunks = match by_footers(
        &client, route, &recon, &which, &starts, &windows, footers, near,
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(
                "compose of {}: {e}; reading the terms the edits touch whole",
                base.hash
            );
            let mut f = Fetched::default();
            fetch_terms(&client, &recon, &which, &starts, &mut f).await?;
            f
        }
    };
    tracing::debug!(
        "window compose: base chunks of {} terms in {:?}",
        which.len(),
        started.elapsed()
    );
    // The windows must be chunk-aligned and their bytes in hand, and the base's own window
    // chunks merged with the gaps must give the base's identity: the CAS's answer and our
    // reading of the base agree.
    let mut window_chunks = Vec::with_capacity(windows.len());
    for w in &windows {
        let a = base_chunks.starting_at(w.start);
        let b = base_chunks.pos.partition_point(|&p| p < w.end);
        let end_ok = base_chunks.pos.get(b) == Some(&w.end) || reads.iter().any(|r| r.end == w.end);
        let (Some(a), true) = (a, end_ok) else {
            return Err(integrity(format!("window {w:?} is not chunk-aligned")));
        };
        if base_chunks.data[a..b].iter().any(Option::is_none) {
            return Err(integrity(format!("window {w:?} was not fetched whole")));
        }
        window_chunks.push(a..b);
    }
    let lists: Vec<Vec<(MerkleHash, u64)>> = window_chunks
        .iter()
        .map(|k| {
            base_chunks.chunks[k.clone()]
                .iter()
                .map(|c| (c.hash, c.len))
                .collect()
        })
        .collect();
    let check = merged_hash(&resp.hash_ranges, &lists)?;
    if check != base_hash {
        return Err(integrity(format!(
            "the CAS's gaps and the base's window chunks hash to {}, not to the base {}",
            check.hex(),
            base.hash
        )));
    }
    let dirty_chunk_bytes = chunk_rounded(&base_chunks, &edits);

    // The new file, in order: untouched terms as they are; in each read range, the base's
    // chunks outside the windows and each window re-chunked with its edits.
    let packer = Packer::new(&base_chunks.chunks, &base_chunks.refs, true);
    let mut sink = Assembler::new(packer, client.clone(), settings.clone());
    let mut gaps_verification = resp.gap_verification.iter();
    let mut new_windows: Vec<NewWindow> = Vec::with_capacity(windows.len());
    let mut parts: Vec<Part> = Vec::new();
    let mut out_at = 0u64;
    let mut t = 0usize;
    let mut k = 0usize;
    let mut wi = 0usize;
    for r in &reads {
        while starts[t] < r.start {
            let v = gaps_verification.next().expect("counted above");
            sink.push_term(terms[t].clone(), v.0);
            parts.push(Part::Term(terms[t].clone()));
            out_at += u64::from(terms[t].unpacked_segment_bytes);
            t += 1;
        }
        while k < base_chunks.pos.len() && base_chunks.pos[k] < r.end {
            if wi < windows.len() && base_chunks.pos[k] == windows[wi].start {
                let (w, chunks) = rechunk_window(
                    &base_chunks,
                    window_chunks[wi].clone(),
                    &edits[per_window[wi].clone()],
                    &windows[wi],
                );
                for c in chunks {
                    sink.push(Piece::New(c)).await?;
                }
                parts.extend(w.chunks.iter().map(|&(h, n)| Part::Chunk(h, n)));
                out_at += w.len;
                new_windows.push(w);
                k = window_chunks[wi].end;
                wi += 1;
            } else {
                sink.push(Piece::Base(k)).await?;
                let c = base_chunks.chunks[k];
                parts.push(Part::Chunk(c.hash, c.len));
                out_at += c.len;
                k += 1;
            }
        }
        while t < terms.len() && starts[t] < r.end {
            t += 1;
        }
    }
    while t < terms.len() {
        let v = gaps_verification.next().expect("counted above");
        sink.push_term(terms[t].clone(), v.0);
        parts.push(Part::Term(terms[t].clone()));
        out_at += u64::from(terms[t].unpacked_segment_bytes);
        t += 1;
    }
    if wi != windows.len() || out_at != expected {
        return Err(integrity(format!(
            "composed {out_at} bytes from {wi} of {} windows, expected {expected}",
            windows.len()
        )));
    }
    let lists: Vec<Vec<(MerkleHash, u64)>> = new_windows.iter().map(|w| w.chunks.clone()).collect();
    let hash = merged_hash(&resp.hash_ranges, &lists)?;
    let (a, sent, written) = sink.finish_listed(Some(hash)).await?;
    let id = FileId {
        hash: hash.hex(),
        size: a.size,
    };
    let known: HashMap<(MerkleHash, u32), (MerkleHash, u64)> = base_chunks
        .refs
        .iter()
        .zip(&base_chunks.chunks)
        .map(|(r, c)| ((r.xorb, r.index), (c.hash, c.len)))
        .collect();
    tracing::debug!("window compose: stored in {:?}", started.elapsed());
    check_written(&a.file.segments, &parts, &known, &written, &id, expected)?;
    check_stored(&client, &id, &a.file.segments).await?;
    tracing::debug!("window compose: verified in {:?}", started.elapsed());
    Ok(Some(Composed {
        id,
        new_bytes: sent,
        base_bytes_read: base_chunks.read,
        dirty_chunk_bytes,
        terms: a.terms(),
        whole_upload: false,
        carried: None,
    }))
}

/// Window `w` (base chunks `ks`, whose bytes are in hand) with `edits` applied, re-chunked
/// from its start.
fn rechunk_window(
    base: &Fetched,
    ks: Range<usize>,
    edits: &[ComposeEdit],
    w: &Range<u64>,
) -> (NewWindow, Vec<xet_core_structures::xorb_object::Chunk>) {
    let old: Vec<u8> = base.data[ks]
        .iter()
        .flatten()
        .flat_map(|b| b.iter().copied())
        .collect();
    let mut bytes = Vec::with_capacity(old.len());
    let mut from = w.start;
    for e in edits {
        bytes.extend_from_slice(
            &old[(from - w.start) as usize..(e.original_range.start - w.start) as usize],
        );
        bytes.extend_from_slice(&e.data);
        from = e.original_range.end;
    }
    bytes.extend_from_slice(&old[(from - w.start) as usize..]);
    let mut chunker = Chunker::default();
    let mut chunks = chunker.next_block(&bytes, true);
    chunks.extend(chunker.finish());
    let list = chunks
        .iter()
        .map(|c| (c.hash, c.data.len() as u64))
        .collect();
    (
        NewWindow {
            len: bytes.len() as u64,
            chunks: list,
        },
        chunks,
    )
}

/// The edits rounded out to the base chunks they touch (an empty range touches the chunk
/// holding it), plus what they add beyond what they replace.
fn chunk_rounded(base: &Fetched, edits: &[ComposeEdit]) -> u64 {
    let mut total = 0;
    for e in edits {
        let r = &e.original_range;
        let hi = r.end.max(r.start + 1);
        total += base
            .pos
            .iter()
            .zip(&base.chunks)
            .filter(|(&p, c)| p < hi && r.start < p + c.len)
            .map(|(_, c)| c.len)
            .sum::<u64>();
        total += (e.data.len() as u64).saturating_sub(r.end - r.start);
    }
    total
}

/// Whether two terms name the same chunks of the same xorb and the same length.
fn same_term(a: &FileDataSequenceEntry, b: &FileDataSequenceEntry) -> bool {
    (
        a.xorb_hash,
        a.chunk_index_start,
        a.chunk_index_end,
        a.unpacked_segment_bytes,
    ) == (
        b.xorb_hash,
        b.chunk_index_start,
        b.chunk_index_end,
        b.unpacked_segment_bytes,
    )
}

/// Refuse a composed file (`id`, `expected` bytes) whose terms as uploaded (`segments`) are
/// not what was composed (`parts`): each term either the next untouched base term as it is,
/// or a run of chunks, each known (`base`: by xorb and index, from the footers or the
/// whole-term read; `written`: the xorbs the composition stored) and equal to the next chunk
/// composed, adding up to the term's length; all of it adding up to `expected`.
pub fn check_written(
    segments: &[FileDataSequenceEntry],
    parts: &[Part],
    base: &HashMap<(MerkleHash, u32), (MerkleHash, u64)>,
    written: &HashMap<MerkleHash, Vec<(MerkleHash, u64)>>,
    id: &FileId,
    expected: u64,
) -> RemoteResult<()> {
    let bad = |msg: String| integrity(format!("composed file {}: {msg}", id.hash));
    if id.size != expected {
        return Err(bad(format!("{} bytes, expected {expected}", id.size)));
    }
    let mut next = parts.iter();
    let mut total = 0u64;
    for seg in segments {
        let len = u64::from(seg.unpacked_segment_bytes);
        match next.clone().next() {
            Some(Part::Term(t)) if same_term(t, seg) => {
                next.next();
                total += len;
                continue;
            }
            Some(Part::Term(_)) => {
                return Err(bad(format!(
                    "a term of xorb {} where an untouched term belongs",
                    seg.xorb_hash
                )));
            }
            _ => {}
        }
        let mut held = 0u64;
        for i in seg.chunk_index_start..seg.chunk_index_end {
            let c = known_chunk(written, base, &seg.xorb_hash, i).ok_or_else(|| {
                bad(format!(
                    "chunk {i} of xorb {} is neither the base's nor written",
                    seg.xorb_hash
                ))
            })?;
            if next.next() != Some(&Part::Chunk(c.0, c.1)) {
                return Err(bad(format!(
                    "chunk {i} of xorb {} is not the chunk composed there",
                    seg.xorb_hash
                )));
            }
            held += c.1;
        }
        if held != len {
            return Err(bad(format!(
                "a term of xorb {} claims {len} bytes but its chunks hold {held}",
                seg.xorb_hash
            )));
        }
        total += len;
    }
    if next.next().is_some() {
        return Err(bad("not everything composed was written".into()));
    }
    if total != expected {
        return Err(bad(format!("{total} bytes written, expected {expected}")));
    }
    Ok(())
}

/// Refuse a composed file unless its stored reconstruction is exactly the terms written
/// (`written`): the CAS registered the file as uploaded.
async fn check_stored(
    client: &Arc<dyn Client>,
    id: &FileId,
    written: &[FileDataSequenceEntry],
) -> RemoteResult<()> {
    let hash = parse_hash(&id.hash)?;
    let stored = terms_of(client, &hash)
        .await
        .map_err(|e| integrity(format!("composed file {} was not stored: {e}", id.hash)))?;
    if stored.len() != written.len() || !stored.iter().zip(written).all(|(a, b)| same_term(a, b)) {
        return Err(integrity(format!(
            "composed file {} is stored as {} terms unlike the {} written",
            id.hash,
            stored.len(),
            written.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::testing::random;
    use crate::remote::xet::rechunk::tests::apply;
    use xet_client::cas_client::chunk_window_builder::build_file_chunk_hashes_response;
    use xet_core_structures::merklehash::file_hash;
    use xet_core_structures::metadata_shard::file_structs::MDBFileInfo;

    fn chunks_of(data: &[u8]) -> Vec<(MerkleHash, u64)> {
        let mut c = Chunker::default();
        let mut v = c.next_block(data, true);
        v.extend(c.finish());
        v.iter().map(|c| (c.hash, c.data.len() as u64)).collect()
    }

    fn edit(r: Range<u64>, len: usize, seed: u64) -> ComposeEdit {
        ComposeEdit {
            original_range: r,
            data: Bytes::from(random(len, seed)),
        }
    }

    /// The route's answer for `edits` of `base` (the state machine the CAS runs), the new
    /// windows re-chunked with the edits, and their merge with the gaps: the identity of the
    /// edited file, as a clean upload of it computes it.
    fn check(base: &[u8], edits: Vec<ComposeEdit>) {
        let size = base.len() as u64;
        let chunks = chunks_of(base);
        let info = MDBFileInfo {
            segments: vec![FileDataSequenceEntry {
                xorb_hash: MerkleHash::random_from_seed(7),
                xorb_flags: 0,
                unpacked_segment_bytes: size as u32,
                chunk_index_start: 0,
                chunk_index_end: chunks.len() as u32,
            }],
            ..Default::default()
        };
        let dirty: Vec<FileRange> = dirty_ranges(&edits, size)
            .into_iter()
            .map(|r| FileRange::new(r.start, r.end))
            .collect();
        let resp = build_file_chunk_hashes_response(&info, dirty, chunks.clone()).unwrap();
        let resp: FileChunkHashesResponse =
            serde_json::from_str(&serde_json::to_string(&resp).unwrap()).unwrap();
        let windows = check_answer(&resp, size).unwrap();
        let per_window = assign(&edits, &windows, size).unwrap();
        let mut base_lists = Vec::new();
        let mut new_lists = Vec::new();
        for (w, es) in windows.iter().zip(per_window) {
            base_lists.push(chunks_of(&base[w.start as usize..w.end as usize]));
            let shifted: Vec<ComposeEdit> = edits[es]
                .iter()
                .map(|e| ComposeEdit {
                    original_range: e.original_range.start - w.start
                        ..e.original_range.end - w.start,
                    data: e.data.clone(),
                })
                .collect();
            new_lists.push(chunks_of(&apply(
                &base[w.start as usize..w.end as usize],
                &shifted,
            )));
        }
        assert_eq!(
            merged_hash(&resp.hash_ranges, &base_lists).unwrap(),
            file_hash(&chunks)
        );
        assert_eq!(
            merged_hash(&resp.hash_ranges, &new_lists).unwrap(),
            file_hash(&chunks_of(&apply(base, &edits)))
        );
    }

    #[test]
    fn gaps_and_new_windows_hash_to_the_edited_file() {
        let base = random(3 << 20, 1);
        let n = base.len() as u64;
        check(&base, vec![edit(1_500_000..1_504_096, 4096, 2)]);
        check(&base, vec![edit(0..4096, 4096, 3)]);
        check(&base, vec![edit(n - 1..n, 4096, 4)]);
        check(&base, vec![edit(n..n, 4096, 5)]);
        check(&base, vec![edit(n - 500_000..n, 0, 0)]);
        check(
            &base,
            vec![
                edit(10_000..10_000, 77, 6),
                edit(1_000_000..1_000_100, 5, 7),
                edit(2_500_000..2_600_000, 100_000, 8),
            ],
        );
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn windows_widen_to_the_terms_they_touch() {
        let starts = [0, 100, 200, 300, 400];
        assert_eq!(read_ranges(&[150..160], &starts), vec![100..200]);
        // A window ending inside a term keeps reading to that term's end.
        assert_eq!(read_ranges(&[150..250], &starts), vec![100..300]);
        assert_eq!(read_ranges(&[100..200, 250..260], &starts), vec![100..300]);
        assert_eq!(
            read_ranges(&[0..10, 390..400], &starts),
            vec![0..100, 300..400]
        );
        let e = |r: Range<u64>| edit(r, 1, 0);
        assert_eq!(
            dirty_ranges(&[e(5..5), e(6..9), e(400..400)], 400),
            vec![5..9, 399..400]
        );
        let edits = [e(5..9), e(200..200), e(400..400)];
        assert_eq!(
            assign(&edits, &[0..100, 200..400], 400).unwrap(),
            vec![0..1, 1..3]
        );
        assert!(assign(&edits, &[0..100, 201..400], 400).is_err());
    }

    fn footer_of(x: &xet_core_structures::xorb_object::SerializedXorbObject) -> XorbObjectInfoV1 {
        match xorb_footer::footer(&x.serialized_data).unwrap() {
            Suffix::Parsed(info) => info,
            Suffix::Need(n) => panic!("the whole xorb is too short, need {n}"),
        }
    }

    #[test]
    fn a_footer_counts_only_if_it_is_the_xorbs_and_fits_the_terms() {
        use crate::remote::http::plan::tests::xorb;
        let (x, datas) = xorb(&[100, 200, 300, 400], "lz4");
        let len = |r: Range<usize>| datas[r].iter().map(|d| d.len() as u64).sum::<u64>();
        // Terms as a reconstruction names them: chunks 1..3, and the whole xorb.
        let good = [(1..3, len(1..3)), (0..4, len(0..4))];
        let f = check_footer(footer_of(&x), &x.hash, &good).unwrap();
        for (c, d) in datas.iter().enumerate() {
            assert_eq!(f.hashes[c], compute_data_hash(d));
            assert_eq!(f.index.chunk_len(c as u32), d.len() as u64);
        }
        // A term longer or shorter than its chunks, or past the last chunk.
        assert!(check_footer(footer_of(&x), &x.hash, &[(1..3, len(1..3) + 1)]).is_err());
        assert!(check_footer(footer_of(&x), &x.hash, &[(0..4, len(0..3))]).is_err());
        assert!(check_footer(footer_of(&x), &x.hash, &[(2..5, len(2..4))]).is_err());
        // Another xorb's footer, and one with a chunk hash or length changed.
        let (y, _) = xorb(&[100, 200, 300, 401], "lz4");
        assert!(check_footer(footer_of(&y), &x.hash, &[]).is_err());
        let mut info = footer_of(&x);
        info.chunk_hashes[2] = MerkleHash::random_from_seed(3);
        assert!(check_footer(info, &x.hash, &[]).is_err());
        let mut info = footer_of(&x);
        info.unpacked_chunk_offsets[1] += 1;
        assert!(check_footer(info, &x.hash, &[]).is_err());
    }

    #[test]
    fn what_was_written_must_be_what_was_composed() {
        let h = MerkleHash::random_from_seed;
        let (base_x, new_x) = (h(100), h(200));
        let untouched = FileDataSequenceEntry {
            xorb_hash: h(300),
            xorb_flags: 0,
            unpacked_segment_bytes: 1000,
            chunk_index_start: 0,
            chunk_index_end: 10,
        };
        let seg = |x: MerkleHash, c: Range<u32>, n: u32| FileDataSequenceEntry {
            xorb_hash: x,
            xorb_flags: 0,
            unpacked_segment_bytes: n,
            chunk_index_start: c.start,
            chunk_index_end: c.end,
        };
        let base: HashMap<(MerkleHash, u32), (MerkleHash, u64)> =
            [((base_x, 5), (h(1), 10)), ((base_x, 6), (h(2), 20))].into();
        let written: HashMap<MerkleHash, Vec<(MerkleHash, u64)>> =
            [(new_x, vec![(h(3), 30), (h(4), 40)])].into();
        // Untouched term, base chunks 5..7, new chunks 0..2.
        let parts = vec![
            Part::Term(untouched.clone()),
            Part::Chunk(h(1), 10),
            Part::Chunk(h(2), 20),
            Part::Chunk(h(3), 30),
            Part::Chunk(h(4), 40),
        ];
        let id = FileId {
            hash: h(9).hex(),
            size: 1100,
        };
        let good = vec![
            untouched.clone(),
            seg(base_x, 5..7, 30),
            seg(new_x, 0..2, 70),
        ];
        let check = |segs: &[FileDataSequenceEntry], parts: &[Part], size: u64| {
            check_written(segs, parts, &base, &written, &id, size)
        };
        check(&good, &parts, 1100).unwrap();
        // Wrong size, a term's length, chunks in another order, a chunk nobody knows, a
        // missing or extra part, an untouched term changed.
        assert!(check(&good, &parts, 1101).is_err());
        let mut bad = good.clone();
        bad[1].unpacked_segment_bytes = 31;
        assert!(check(&bad, &parts, 1100).is_err());
        let mut swapped = parts.clone();
        swapped.swap(3, 4);
        assert!(check(&good, &swapped, 1100).is_err());
        let mut bad = good.clone();
        bad[2] = seg(new_x, 0..3, 70);
        assert!(check(&bad, &parts, 1100).is_err());
        assert!(check(&good[..2], &parts, 1100).is_err());
        assert!(check(&good, &parts[..4], 1100).is_err());
        let mut bad = good.clone();
        bad[0].chunk_index_end = 11;
        assert!(check(&bad, &parts, 1100).is_err());
    }
}
