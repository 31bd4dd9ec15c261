//! The composition itself: ask the CAS, check its answer against the base, assemble the new
//! file from untouched terms, kept base chunks and re-chunked windows, and verify it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use xet_client::cas_client::Client;
use xet_client::cas_types::{
    FileChunkHashesResponse, HexMerkleHash, QueryReconstructionResponseV2,
};
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::metadata_shard::file_structs::FileDataSequenceEntry;
use xet_data::deduplication::Chunker;

use super::fetch::{fetch_near, fetch_terms, reconstruction, terms_in, Fetched};
use super::footers::{fetch_footers, xorbs_meeting, ByFooters, Footer};
use super::verify::{check_stored, check_written};
use super::windows::{assign, check_answer, dirty_ranges, merged_hash, read_ranges};
use super::{integrity, ChunkHashes};
use crate::remote::xet::assemble::{Assembler, Packer, XorbSettings};
use crate::remote::xet::compose::parse_hash;
use crate::remote::xet::rechunk::{Piece, PieceSink};
use crate::remote::{ComposeEdit, Composed, FileId, RemoteError, RemoteResult};

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
    let edits = checked_edits(edits, size)?;
    let expected = edits.iter().fold(size, |s, e| {
        s - (e.original_range.end - e.original_range.start) + e.data.len() as u64
    });
    if edits.is_empty() {
        return Ok(Some(unchanged(base)));
    }
    if size == 0 || expected == 0 {
        return Ok(None);
    }
    let base_hash = parse_hash(&base.hash)?;
    let started = std::time::Instant::now();
    let Some(asked) = ask(&client, route, &base_hash, size, &edits).await? else {
        return Ok(None);
    };
    tracing::debug!(
        "window compose: windows, terms, {} footers and {} bytes ahead in {:?}",
        asked.footers.len(),
        asked.near.read,
        started.elapsed()
    );
    let plan = Plan::new(&asked.resp, &asked.recon, &edits, size)?;
    let Asked {
        resp,
        recon,
        footers,
        near,
    } = asked;
    let from = BaseSources {
        recon: &recon,
        footers,
        near,
    };
    let base_chunks = base_chunks(&client, route, from, &plan, &base.hash).await?;
    tracing::debug!(
        "window compose: base chunks of {} terms in {:?}",
        plan.which.len(),
        started.elapsed()
    );
    let window_chunks = window_chunks(&plan, &base_chunks, &resp, &base_hash)?;
    let dirty_chunk_bytes = chunk_rounded(&base_chunks, &edits);

    let packer = Packer::new(&base_chunks.chunks, &base_chunks.refs, true);
    let sink = Assembler::new(packer, client.clone(), settings.clone());
    let mut new = NewFile::new(sink, &resp.gap_verification);
    new.build(&plan, &base_chunks, &window_chunks, &edits)
        .await?;
    if new.windows.len() != plan.windows.len() || new.len != expected {
        return Err(integrity(format!(
            "composed {} bytes from {} of {} windows, expected {expected}",
            new.len,
            new.windows.len(),
            plan.windows.len()
        )));
    }
    let lists: Vec<Vec<(MerkleHash, u64)>> = new.windows.iter().map(|w| w.chunks.clone()).collect();
    let hash = merged_hash(&resp.hash_ranges, &lists)?;
    let (a, sent, written) = new.sink.finish_listed(Some(hash)).await?;
    let id = FileId {
        hash: hash.hex(),
        size: a.size,
    };
    let known = base_chunks.by_ref();
    tracing::debug!("window compose: stored in {:?}", started.elapsed());
    check_written(
        &a.file.segments,
        &new.parts,
        &known,
        &written,
        &id,
        expected,
    )?;
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

/// The composition of no edits: the base itself, nothing stored.
fn unchanged(base: &FileId) -> Composed {
    Composed {
        id: base.clone(),
        new_bytes: 0,
        base_bytes_read: 0,
        dirty_chunk_bytes: 0,
        terms: 0,
        whole_upload: false,
        carried: None,
    }
}

/// `edits` without those that change nothing; an error if they are out of order or reach
/// past the end of a `size` byte base.
fn checked_edits(edits: Vec<ComposeEdit>, size: u64) -> RemoteResult<Vec<ComposeEdit>> {
    crate::remote::xet::rechunk::check_edit_order(&edits, size)?;
    Ok(edits
        .into_iter()
        .filter(|e| !(e.original_range.is_empty() && e.data.is_empty()))
        .collect())
}

/// What the CAS said of the base, in one round trip and what follows it side by side.
struct Asked {
    /// The chunk-hashes route's answer for the dirty ranges.
    resp: FileChunkHashesResponse,
    /// The base's whole-file reconstruction.
    recon: QueryReconstructionResponseV2,
    /// Footers of the xorbs holding the edits' neighbourhoods.
    footers: HashMap<MerkleHash, Result<Footer, String>>,
    /// The neighbourhoods' chunks, bytes and all.
    near: Fetched,
}

/// Ask for the windows, the base's terms (with their fetch URLs) and ranged reconstructions
/// of the edits' neighbourhoods at once; then, side by side, the footers of the xorbs holding
/// those neighbourhoods and the neighbourhoods' bytes. `None`: no chunk-hashes route.
async fn ask(
    client: &Arc<dyn Client>,
    route: &dyn ChunkHashes,
    base_hash: &MerkleHash,
    size: u64,
    edits: &[ComposeEdit],
) -> RemoteResult<Option<Asked>> {
    let dirty = dirty_ranges(edits, size);
    let near = crate::remote::xet::rechunk::near_ranges(size, edits);
    let spots = if near.is_empty() { &dirty } else { &near };
    let terms_and_footers = async {
        let recon = reconstruction(client, base_hash).await?;
        let starts = term_starts(recon.terms.iter().map(|t| t.unpacked_length));
        let footers = if starts[recon.terms.len()] == size {
            fetch_footers(route, &recon, &xorbs_meeting(&recon, &starts, spots)).await
        } else {
            HashMap::new()
        };
        Ok::<_, RemoteError>((recon, footers))
    };
    let (resp, recon, near) = tokio::join!(
        route.file_chunk_hashes(base_hash, &dirty),
        terms_and_footers,
        fetch_near(client, base_hash, &near)
    );
    let Some(resp) = resp? else {
        return Ok(None);
    };
    let (recon, footers) = recon?;
    Ok(Some(Asked {
        resp,
        recon,
        footers,
        near,
    }))
}

/// The file offset where each term starts, and the end.
fn term_starts(lens: impl Iterator<Item = u32>) -> Vec<u64> {
    let mut starts = vec![0u64];
    for len in lens {
        starts.push(starts[starts.len() - 1] + u64::from(len));
    }
    starts
}

/// The CAS's answer read against the base: the windows and the edits each takes, the base's
/// terms and where they start, the ranges to read and the terms they cover.
struct Plan {
    windows: Vec<Range<u64>>,
    /// For each window, the range of `edits` it takes.
    per_window: Vec<Range<usize>>,
    terms: Vec<FileDataSequenceEntry>,
    /// Where each term starts, and the end.
    starts: Vec<u64>,
    reads: Vec<Range<u64>>,
    /// The terms the reads cover (indices into `terms`).
    which: Vec<usize>,
}

impl Plan {
    /// Refused unless the terms add up to the base and every untouched term has its
    /// verification hash.
    fn new(
        resp: &FileChunkHashesResponse,
        recon: &QueryReconstructionResponseV2,
        edits: &[ComposeEdit],
        size: u64,
    ) -> RemoteResult<Self> {
        let windows = check_answer(resp, size)?;
        let per_window = assign(edits, &windows, size)?;
        let terms = terms_in(recon);
        let starts = term_starts(terms.iter().map(|t| t.unpacked_segment_bytes));
        if starts[terms.len()] != size {
            return Err(integrity(format!(
                "the base's terms add up to {} bytes, expected {size}",
                starts[terms.len()]
            )));
        }
        let reads = read_ranges(&windows, &starts);
        let read = |s: u64| reads.iter().any(|r| r.start <= s && s < r.end);
        let which: Vec<usize> = (0..terms.len()).filter(|&i| read(starts[i])).collect();
        let untouched = terms.len() - which.len();
        if untouched != resp.gap_verification.len() {
            return Err(integrity(format!(
                "{untouched} untouched terms but {} verification hashes",
                resp.gap_verification.len()
            )));
        }
        Ok(Plan {
            windows,
            per_window,
            terms,
            starts,
            reads,
            which,
        })
    }
}

/// What the base's chunks are read from: its reconstruction, the footers and the bytes
/// fetched ahead.
struct BaseSources<'a> {
    recon: &'a QueryReconstructionResponseV2,
    footers: HashMap<MerkleHash, Result<Footer, String>>,
    near: Fetched,
}

/// The chunks of the terms the reads cover: from their footers, with bytes for the windows;
/// without usable footers, read whole from the reconstruction in hand.
async fn base_chunks(
    client: &Arc<dyn Client>,
    route: &dyn ChunkHashes,
    from: BaseSources<'_>,
    plan: &Plan,
    base: &str,
) -> RemoteResult<Fetched> {
    let by_footers = ByFooters {
        client,
        route,
        recon: from.recon,
        which: &plan.which,
        starts: &plan.starts,
        windows: &plan.windows,
    };
    match by_footers.fetch(from.footers, from.near).await {
        Ok(f) => Ok(f),
        Err(e) => {
            tracing::info!("compose of {base}: {e}; reading the terms the edits touch whole");
            let mut f = Fetched::default();
            fetch_terms(client, from.recon, &plan.which, &plan.starts, &mut f).await?;
            Ok(f)
        }
    }
}

/// The base chunks of each window. The windows must be chunk-aligned and their bytes in
/// hand, and the base's own window chunks merged with the gaps must give the base's identity:
/// the CAS's answer and our reading of the base agree.
fn window_chunks(
    plan: &Plan,
    base_chunks: &Fetched,
    resp: &FileChunkHashesResponse,
    base_hash: &MerkleHash,
) -> RemoteResult<Vec<Range<usize>>> {
    let mut window_chunks = Vec::with_capacity(plan.windows.len());
    for w in &plan.windows {
        let a = base_chunks.starting_at(w.start);
        let b = base_chunks.pos.partition_point(|&p| p < w.end);
        let end_ok =
            base_chunks.pos.get(b) == Some(&w.end) || plan.reads.iter().any(|r| r.end == w.end);
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
    if check != *base_hash {
        return Err(integrity(format!(
            "the CAS's gaps and the base's window chunks hash to {}, not to the base {}",
            check.hex(),
            base_hash.hex()
        )));
    }
    Ok(window_chunks)
}

/// The new file as it is assembled: what it is made of (for [`check_written`]), its
/// re-chunked windows and its length so far.
struct NewFile<'a, 'v> {
    sink: Assembler<'a>,
    /// The verification hash of each untouched term, in order.
    gaps_verification: std::slice::Iter<'v, HexMerkleHash>,
    parts: Vec<Part>,
    windows: Vec<NewWindow>,
    len: u64,
}

impl<'a, 'v> NewFile<'a, 'v> {
    fn new(sink: Assembler<'a>, gaps_verification: &'v [HexMerkleHash]) -> Self {
        NewFile {
            sink,
            gaps_verification: gaps_verification.iter(),
            parts: Vec::new(),
            windows: Vec::new(),
            len: 0,
        }
    }

    /// The new file, in order: untouched terms as they are; in each read range, the base's
    /// chunks outside the windows and each window re-chunked with its edits.
    async fn build(
        &mut self,
        plan: &Plan,
        base_chunks: &Fetched,
        window_chunks: &[Range<usize>],
        edits: &[ComposeEdit],
    ) -> RemoteResult<()> {
        let (mut t, mut k, mut wi) = (0usize, 0usize, 0usize);
        for r in &plan.reads {
            while plan.starts[t] < r.start {
                self.push_term(&plan.terms[t]);
                t += 1;
            }
            while k < base_chunks.pos.len() && base_chunks.pos[k] < r.end {
                let w = plan.windows.get(wi);
                if w.is_some_and(|w| base_chunks.pos[k] == w.start) {
                    let edits = &edits[plan.per_window[wi].clone()];
                    let ks = window_chunks[wi].clone();
                    self.push_window(rechunk_window(base_chunks, ks, edits, &plan.windows[wi]))
                        .await?;
                    k = window_chunks[wi].end;
                    wi += 1;
                } else {
                    self.push_base(base_chunks, k).await?;
                    k += 1;
                }
            }
            while t < plan.terms.len() && plan.starts[t] < r.end {
                t += 1;
            }
        }
        for term in &plan.terms[t..] {
            self.push_term(term);
        }
        Ok(())
    }

    /// An untouched base term, with the verification hash the CAS gave for it.
    fn push_term(&mut self, term: &FileDataSequenceEntry) {
        let v = self.gaps_verification.next().expect("counted in Plan::new");
        self.sink.push_term(term.clone(), v.0);
        self.parts.push(Part::Term(term.clone()));
        self.len += u64::from(term.unpacked_segment_bytes);
    }

    /// A re-chunked window and its chunks' bytes.
    async fn push_window(
        &mut self,
        (w, chunks): (NewWindow, Vec<xet_core_structures::xorb_object::Chunk>),
    ) -> RemoteResult<()> {
        for c in chunks {
            self.sink.push(Piece::New(c)).await?;
        }
        self.parts
            .extend(w.chunks.iter().map(|&(h, n)| Part::Chunk(h, n)));
        self.len += w.len;
        self.windows.push(w);
        Ok(())
    }

    /// Base chunk `k`, kept by reference.
    async fn push_base(&mut self, base_chunks: &Fetched, k: usize) -> RemoteResult<()> {
        self.sink.push(Piece::Base(k)).await?;
        let c = base_chunks.chunks[k];
        self.parts.push(Part::Chunk(c.hash, c.len));
        self.len += c.len;
        Ok(())
    }
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
