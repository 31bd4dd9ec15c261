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
//! hashes of their own, which only their chunk hashes give, and the route hands out none: so
//! the terms a window touches are read whole (chunk by chunk, from their xorbs) and hashed
//! here. That bounds what is read by the size of the terms touched (a fresh upload's terms
//! are up to a xorb, 64 MiB), not by the size of the file. xet-core's `upload_ranges` and
//! huggingface.js do the same (they snap edits to term boundaries), except that 1.8.0's
//! `upload_ranges` drops the rest of a term its window ends inside; here every cut term's
//! tail is kept (`windows_widen_to_the_terms_they_touch`, and `tests/remote_compose.rs`
//! byte-compares files whose windows end inside 64 MiB terms).
//!
//! Only the windows are re-chunked (each starts at a chunk boundary, and the CAS extends it
//! past the edits to where the chunker re-synchronises); their chunks are packed into new
//! xorbs unless the base already holds them. The file's identity is the merge of the CAS's
//! gap subtrees with the subtrees of the new windows' chunks, the way the route intends;
//! the same merge with the base's own window chunks must give the base's identity, which
//! checks the CAS's answer and our reading of it before anything is stored.
//!
//! Before the result is returned it is checked as `compose::verify` would, as far as these
//! routes allow: its size, its stored reconstruction (terms exactly the ones written, adding
//! up to the expected size), and every re-chunked window read back from the store, chunk by
//! chunk, equal to what was written.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_client::{Client, URLProvider};
use xet_client::cas_types::{
    FileChunkHashesResponse, FileRange, HexMerkleHash, HttpRange, QueryReconstructionResponseV2,
    XorbRangeDescriptor,
};
use xet_core_structures::merklehash::{compute_data_hash, MerkleHash, MerkleHashSubtree};
use xet_core_structures::metadata_shard::file_structs::FileDataSequenceEntry;
use xet_data::deduplication::Chunker;

use super::assemble::{Assembler, ChunkRef, Packer, XorbSettings};
use super::compose::parse_hash;
use super::rechunk::{BaseChunk, Piece, PieceSink};
use super::{ComposeEdit, Composed, FileId, RemoteError, RemoteResult};

/// Where `GET /v2/file-chunk-hashes/{file}` is asked.
#[async_trait]
pub trait ChunkHashes: Send + Sync {
    /// The answer for `dirty` (sorted, disjoint, non-empty byte ranges of `file`); `None` when
    /// the CAS does not offer the route.
    async fn file_chunk_hashes(
        &self,
        file: &MerkleHash,
        dirty: &[Range<u64>],
    ) -> RemoteResult<Option<FileChunkHashesResponse>>;
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

/// Chunks read from a stored file, in file order.
#[derive(Default)]
pub struct Fetched {
    pub chunks: Vec<BaseChunk>,
    pub refs: Vec<ChunkRef>,
    pub data: Vec<Bytes>,
    /// File offset of each chunk.
    pub pos: Vec<u64>,
}

impl Fetched {
    fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.len).sum()
    }

    /// Index of the chunk starting at `at`, if one does.
    fn starting_at(&self, at: u64) -> Option<usize> {
        self.pos.binary_search(&at).ok()
    }
}

/// The chunks of bytes `range` of stored file `file`, which must start and end on chunk
/// boundaries: each one's data, hash and place in its xorb, from the term data the
/// reconstruction points at.
pub async fn fetch_chunks(
    client: &Arc<dyn Client>,
    file: &MerkleHash,
    range: Range<u64>,
    out: &mut Fetched,
) -> RemoteResult<()> {
    let resp = client
        .get_reconstruction(file, Some(FileRange::new(range.start, range.end)))
        .await
        .map_err(xet)?
        .ok_or_else(|| integrity(format!("{range:?} of {} is past its end", file.hex())))?;
    if resp.offset_into_first_range != 0 {
        return Err(integrity(format!(
            "{range:?} of {} does not start on a chunk boundary",
            file.hex()
        )));
    }
    let mut starts = vec![range.start];
    for t in &resp.terms {
        starts.push(starts[starts.len() - 1] + u64::from(t.unpacked_length));
    }
    let all: Vec<usize> = (0..resp.terms.len()).collect();
    fetch_terms(client, &resp, &all, &starts, out).await?;
    let at = starts[resp.terms.len()];
    if at != range.end {
        return Err(integrity(format!(
            "{range:?} of {} reads back as {} bytes",
            file.hex(),
            at - range.start
        )));
    }
    Ok(())
}

/// The chunks of terms `which` (ascending indices into `resp.terms`, the term at index `i`
/// starting at file offset `starts[i]`) appended to `out`, from the term data `resp` points
/// at: every fetch range they need requested at once.
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
    let fetched = futures::future::try_join_all(wanted.into_iter().map(|(key, (url, desc))| {
        let client = client.clone();
        async move {
            let permit = client.acquire_download_permit().await.map_err(xet)?;
            let provider = Box::new(FetchUrl {
                url: url.clone(),
                range: desc.bytes,
            });
            let (data, idx) = client
                .get_file_term_data(provider, permit, None, None)
                .await
                .map_err(xet)?;
            let n = (desc.chunks.end - desc.chunks.start) as usize;
            if idx.len() != n + 1 || idx.last().map(|&e| e as usize) != Some(data.len()) {
                return Err(integrity(format!(
                    "term data of {} holds {} chunks, expected {n}",
                    key.0,
                    idx.len().saturating_sub(1)
                )));
            }
            Ok::<_, RemoteError>((key, (data, idx, desc.chunks.start)))
        }
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
            out.data.push(bytes);
            at += len;
            held += len;
        }
        if held != u64::from(term.unpacked_length) {
            return Err(integrity(format!(
                "a term of {} holds {held} bytes, the reconstruction says {}",
                term.hash, term.unpacked_length
            )));
        }
    }
    Ok(())
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

/// A re-chunked window: where it lies in the new file, its bytes and its chunks.
struct NewWindow {
    at: u64,
    bytes: Bytes,
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
    // The windows and the base's terms (with their fetch URLs) side by side: one round trip.
    let dirty = dirty_ranges(&edits, size);
    let (resp, recon) = tokio::join!(
        route.file_chunk_hashes(&base_hash, &dirty),
        reconstruction(&client, &base_hash)
    );
    let Some(resp) = resp? else {
        return Ok(None);
    };
    let recon = recon?;
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
    // The terms the reads cover, fetched from the reconstruction already in hand, all at once.
    let which: Vec<usize> = (0..terms.len())
        .filter(|&i| {
            reads
                .iter()
                .any(|r| r.start <= starts[i] && starts[i] < r.end)
        })
        .collect();
    let mut base_chunks = Fetched::default();
    fetch_terms(&client, &recon, &which, &starts, &mut base_chunks).await?;
    // The windows must be chunk-aligned, and the base's own window chunks merged with the
    // gaps must give the base's identity: the CAS's answer and our reading of the base agree.
    let mut window_chunks = Vec::with_capacity(windows.len());
    for w in &windows {
        let a = base_chunks.starting_at(w.start);
        let b = base_chunks.pos.partition_point(|&p| p < w.end);
        let end_ok = base_chunks.pos.get(b) == Some(&w.end) || reads.iter().any(|r| r.end == w.end);
        let (Some(a), true) = (a, end_ok) else {
            return Err(integrity(format!("window {w:?} is not chunk-aligned")));
        };
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
    let mut out_at = 0u64;
    let mut t = 0usize;
    let mut k = 0usize;
    let mut wi = 0usize;
    for r in &reads {
        while starts[t] < r.start {
            let v = gaps_verification.next().expect("counted above");
            sink.push_term(terms[t].clone(), v.0);
            out_at += u64::from(terms[t].unpacked_segment_bytes);
            t += 1;
        }
        while k < base_chunks.pos.len() && base_chunks.pos[k] < r.end {
            if wi < windows.len() && base_chunks.pos[k] == windows[wi].start {
                let w = rechunk_window(
                    &base_chunks,
                    window_chunks[wi].clone(),
                    &edits[per_window[wi].clone()],
                    &windows[wi],
                    out_at,
                );
                for c in w.1 {
                    sink.push(Piece::New(c)).await?;
                }
                out_at += w.0.bytes.len() as u64;
                new_windows.push(w.0);
                k = window_chunks[wi].end;
                wi += 1;
            } else {
                sink.push(Piece::Base(k)).await?;
                out_at += base_chunks.chunks[k].len;
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
    let (a, sent) = sink.finish_with_hash(Some(hash)).await?;
    let id = FileId {
        hash: hash.hex(),
        size: a.size,
    };
    verify(&client, &id, expected, &a.file.segments, &new_windows).await?;
    Ok(Some(Composed {
        id,
        new_bytes: sent,
        base_bytes_read: base_chunks.bytes(),
        dirty_chunk_bytes,
        terms: a.terms(),
        whole_upload: false,
        carried: None,
    }))
}

/// Window `w` (base chunks `ks`) with `edits` applied, re-chunked from its start; `at` is
/// where it begins in the new file.
fn rechunk_window(
    base: &Fetched,
    ks: Range<usize>,
    edits: &[ComposeEdit],
    w: &Range<u64>,
    at: u64,
) -> (NewWindow, Vec<xet_core_structures::xorb_object::Chunk>) {
    let old: Vec<u8> = base.data[ks]
        .iter()
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
            at,
            bytes: Bytes::from(bytes),
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

/// Refuse a composed file unless it is stored as written: its size, its reconstruction (the
/// terms written, adding up to `expected`), and each re-chunked window read back chunk by
/// chunk with the bytes and chunk hashes written.
async fn verify(
    client: &Arc<dyn Client>,
    id: &FileId,
    expected: u64,
    written: &[FileDataSequenceEntry],
    windows: &[NewWindow],
) -> RemoteResult<()> {
    if id.size != expected {
        return Err(integrity(format!(
            "composed file {} claims {} bytes, expected {expected}",
            id.hash, id.size
        )));
    }
    let hash = parse_hash(&id.hash)?;
    // The stored terms and every window read back, side by side.
    let windows: Vec<&NewWindow> = windows.iter().filter(|w| !w.bytes.is_empty()).collect();
    let reads = futures::future::try_join_all(windows.iter().map(|w| {
        let range = w.at..w.at + w.bytes.len() as u64;
        async move {
            let mut back = Fetched::default();
            fetch_chunks(client, &hash, range.clone(), &mut back).await?;
            Ok::<_, RemoteError>((range, back))
        }
    }));
    let (stored, reads) = tokio::join!(terms_of(client, &hash), reads);
    let stored =
        stored.map_err(|e| integrity(format!("composed file {} was not stored: {e}", id.hash)))?;
    let reads = reads?;
    let total: u64 = stored
        .iter()
        .map(|t| u64::from(t.unpacked_segment_bytes))
        .sum();
    if total != expected {
        return Err(integrity(format!(
            "composed file {} reconstructs to {total} bytes, expected {expected}",
            id.hash
        )));
    }
    let same = |a: &FileDataSequenceEntry, b: &FileDataSequenceEntry| {
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
    };
    if stored.len() != written.len() || !stored.iter().zip(written).all(|(a, b)| same(a, b)) {
        return Err(integrity(format!(
            "composed file {} is stored as {} terms unlike the {} written",
            id.hash,
            stored.len(),
            written.len()
        )));
    }
    for (w, (range, back)) in windows.iter().zip(reads) {
        let hashes: Vec<(MerkleHash, u64)> = back.chunks.iter().map(|c| (c.hash, c.len)).collect();
        let same_bytes = back.data.iter().flat_map(|b| b.iter()).eq(w.bytes.iter());
        if hashes != w.chunks || !same_bytes {
            return Err(integrity(format!(
                "bytes {range:?} of composed file {} read back unlike what was written",
                id.hash
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::rechunk::tests::apply;
    use crate::vfs::tests::random;
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
}
