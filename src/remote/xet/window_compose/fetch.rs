//! Fetching a stored file's chunks: term data through the reconstruction's fetch URLs,
//! the neighbourhoods of the edits ahead, and the reconstruction itself.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_client::{Client, URLProvider};
use xet_client::cas_types::{
    FileRange, HexMerkleHash, HttpRange, QueryReconstructionResponseV2, XorbRangeDescriptor,
};
use xet_core_structures::merklehash::{compute_data_hash, MerkleHash};
use xet_core_structures::metadata_shard::file_structs::FileDataSequenceEntry;

use super::integrity;
use crate::remote::xet::assemble::ChunkRef;
use crate::remote::xet::rechunk::BaseChunk;
use crate::remote::xet::xet_err;
use crate::remote::{RemoteError, RemoteResult};

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
    pub(super) fn starting_at(&self, at: u64) -> Option<usize> {
        self.pos.binary_search(&at).ok()
    }

    /// Chunk `index` of `xorb` (`chunk`), starting at file offset `at`, after those held.
    pub(super) fn push(
        &mut self,
        chunk: BaseChunk,
        xorb: MerkleHash,
        index: u32,
        at: u64,
        data: Option<Bytes>,
    ) {
        self.chunks.push(chunk);
        self.refs.push(ChunkRef {
            xorb,
            flags: 0,
            index,
        });
        self.pos.push(at);
        self.data.push(data);
    }

    /// Each chunk's hash and length by its xorb and index.
    pub(super) fn by_ref(&self) -> HashMap<(MerkleHash, u32), (MerkleHash, u64)> {
        self.refs
            .iter()
            .zip(&self.chunks)
            .map(|(r, c)| ((r.xorb, r.index), (c.hash, c.len)))
            .collect()
    }

    /// `other`'s chunks after those held, and its bytes read counted.
    fn append(&mut self, other: Fetched) {
        self.read += other.read;
        self.chunks.extend(other.chunks);
        self.refs.extend(other.refs);
        self.data.extend(other.data);
        self.pos.extend(other.pos);
    }
}

/// Term data (chunks) of one stored range, decoded: the bytes and each chunk's offset in them
/// plus the end; `n` chunks are expected.
pub(super) async fn term_data(
    client: &Arc<dyn Client>,
    url: &str,
    range: HttpRange,
    n: usize,
    what: &(dyn std::fmt::Display + Sync),
) -> RemoteResult<(Bytes, Vec<u32>)> {
    let permit = client.acquire_download_permit().await.map_err(xet_err)?;
    let provider = Box::new(FetchUrl {
        url: url.to_string(),
        range,
    });
    let (data, idx) = client
        .get_file_term_data(provider, permit, None, None)
        .await
        .map_err(xet_err)?;
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
pub(super) async fn fetch_terms(
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
            let hash = compute_data_hash(&bytes);
            out.push(BaseChunk { hash, len }, term.hash.0, c, at, Some(bytes));
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
pub(super) async fn fetch_near(
    client: &Arc<dyn Client>,
    file: &MerkleHash,
    ranges: &[Range<u64>],
) -> Fetched {
    let got = futures::future::join_all(ranges.iter().map(|r| async move {
        let resp = client
            .get_reconstruction(file, Some(FileRange::new(r.start, r.end)))
            .await
            .map_err(xet_err)?
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
            Ok(f) => out.append(f),
            Err(e) => tracing::debug!("window compose: fetching {r:?} ahead: {e}"),
        }
    }
    out
}

/// The terms of a whole-file reconstruction, as a shard describes them.
pub(super) fn terms_in(resp: &QueryReconstructionResponseV2) -> Vec<FileDataSequenceEntry> {
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
pub(super) async fn reconstruction(
    client: &Arc<dyn Client>,
    file: &MerkleHash,
) -> RemoteResult<QueryReconstructionResponseV2> {
    client
        .get_reconstruction(file, None)
        .await
        .map_err(xet_err)?
        .ok_or_else(|| RemoteError::NotFound(format!("file {} is not stored", file.hex())))
}

/// The stored terms of `file`.
pub(super) async fn terms_of(
    client: &Arc<dyn Client>,
    file: &MerkleHash,
) -> RemoteResult<Vec<FileDataSequenceEntry>> {
    Ok(terms_in(&reconstruction(client, file).await?))
}
