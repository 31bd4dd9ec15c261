//! The composition itself: ask the CAS, check its answer against the base, assemble the new
//! file from untouched terms, kept base chunks and re-chunked windows, and verify it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use xet_client::cas_client::Client;
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::metadata_shard::file_structs::FileDataSequenceEntry;
use xet_data::deduplication::Chunker;

use super::fetch::{fetch_near, fetch_terms, reconstruction, terms_in, Fetched};
use super::footers::{by_footers, fetch_footers, xorbs_meeting};
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
    let near = crate::remote::xet::rechunk::near_ranges(size, &edits);
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
