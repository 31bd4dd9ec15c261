//! Composing an edited file from its base without re-uploading it, over any xet-core client:
//! the base's chunks (from a [`ChunkMap`]), only the windows around the edits re-chunked (see
//! `rechunk`), the new chunks packed into fresh xorbs and the file described as runs of old
//! and new chunks (see `assemble`), under the defragmentation rule (see `defrag`).
//!
//! xet-core's own `upload_ranges` is not used: in 1.8.0 it silently truncates a composed file
//! whose re-chunked window ends inside a later segment (a test in `local::compose` keeps
//! watching that), and it opens an upload session, a cleaner and a xorb per window, which made
//! a 1% scattered patch of a 1 GiB file slower than rewriting it.
//!
//! Whatever builds it, a composed file is checked before anyone may commit it: its
//! reconstruction must add up to the expected size, every term must match the chunks its xorb
//! really holds, and those chunks must hash to the file's identity. Here the chunks a xorb
//! holds are known without asking the store again: the store listed the base's, and the
//! composition wrote the new ones (a read-back would be one more round trip before every
//! commit).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use xet_client::cas_client::Client;
use xet_core_structures::merklehash::{file_hash, ChunkHashList, MerkleHash};
use xet_core_structures::metadata_shard::file_structs::FileDataSequenceEntry;

use super::assemble::{Assembler, ChunkRef, Packer, ShardWithXorbs, XorbSettings};
use super::defrag;
use super::rechunk::{self, BaseBytes, BaseChunk};
use crate::remote::{ComposeEdit, FileId, RemoteError, RemoteResult};

/// A stored body's terms and the (hash, size) of every chunk in each.
pub struct ChunkLists {
    pub segments: Vec<FileDataSequenceEntry>,
    pub chunks: Vec<ChunkHashList>,
}

impl ChunkLists {
    pub fn size(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| u64::from(s.unpacked_segment_bytes))
            .sum()
    }

    /// Bytes of the chunks the edits touch (an empty range touches the chunk holding it),
    /// plus the bytes an edit adds beyond what it replaces.
    pub fn chunk_rounded(&self, edits: &[ComposeEdit]) -> u64 {
        let mut bounds = Vec::new(); // (start, end) of every chunk
        let mut at = 0;
        for (_, n) in self.chunks.iter().flatten() {
            bounds.push((at, at + n));
            at += n;
        }
        let mut total = 0;
        for e in edits {
            let r = &e.original_range;
            let first = bounds.partition_point(|c| c.1 <= r.start);
            total += bounds[first..]
                .iter()
                .take_while(|c| c.0 < r.end.max(r.start + 1))
                .map(|c| c.1 - c.0)
                .sum::<u64>();
            total += (e.data.len() as u64).saturating_sub(r.end - r.start);
        }
        total
    }
}

/// Where a store says which chunks its bodies are made of.
#[async_trait]
pub trait ChunkMap: Send + Sync {
    /// `None` if the store does not know body `hash`.
    async fn chunk_lists(&self, hash: &MerkleHash) -> RemoteResult<Option<ChunkLists>>;
}

/// Outcome of one composition.
pub struct Planned {
    pub id: FileId,
    /// Bytes of the base read to re-chunk the windows.
    pub base_bytes_read: u64,
    /// The edits rounded out to the base chunks they touch, plus any growth.
    pub dirty_chunk_bytes: u64,
    /// Terms of the composed body.
    pub terms: u64,
    /// Xorb bytes sent.
    pub sent: u64,
}

pub fn parse_hash(hex: &str) -> RemoteResult<MerkleHash> {
    MerkleHash::from_hex(hex).map_err(|e| RemoteError::Other(format!("bad file hash {hex}: {e}")))
}

/// Compose `base` with `edits` (sorted, disjoint, in base coordinates); `bytes` reads the base.
pub async fn compose(
    settings: &XorbSettings,
    client: Arc<dyn Client>,
    map: &dyn ChunkMap,
    bytes: Arc<dyn BaseBytes>,
    base: &FileId,
    edits: Vec<ComposeEdit>,
) -> RemoteResult<Planned> {
    let view = map
        .chunk_lists(&parse_hash(&base.hash)?)
        .await?
        .ok_or_else(|| RemoteError::NotFound(format!("base {} is not in the store", base.hash)))?;
    compose_with(settings, client, None, Some(map), view, bytes, base, edits).await
}

/// [`compose`], given the base's chunk lists (`view`) already; the last xorb goes with the
/// shard through `bundle`, if given. The result is checked against the chunks known here,
/// and, given a `map`, also read back from the store (where that is cheap: a local store).
#[allow(clippy::too_many_arguments)]
pub async fn compose_with(
    settings: &XorbSettings,
    client: Arc<dyn Client>,
    bundle: Option<Arc<dyn ShardWithXorbs>>,
    map: Option<&dyn ChunkMap>,
    view: ChunkLists,
    bytes: Arc<dyn BaseBytes>,
    base: &FileId,
    edits: Vec<ComposeEdit>,
) -> RemoteResult<Planned> {
    let expected_size = edits.iter().fold(base.size, |s, e| {
        s - (e.original_range.end - e.original_range.start) + e.data.len() as u64
    });
    let started = std::time::Instant::now();
    if view.size() != base.size {
        return Err(RemoteError::Integrity(format!(
            "base {} reconstructs to {} bytes, expected {}",
            base.hash,
            view.size(),
            base.size
        )));
    }
    let dirty_chunk_bytes = view.chunk_rounded(&edits);
    let (edits, defrag_read) =
        defrag::apply_rule(bytes.as_ref(), base.size, &view.segments, edits).await?;
    let mut chunks = Vec::new();
    let mut refs = Vec::new();
    for (seg, list) in view.segments.iter().zip(&view.chunks) {
        for (j, &(hash, len)) in list.iter().enumerate() {
            chunks.push(BaseChunk { hash, len });
            refs.push(ChunkRef {
                xorb: seg.xorb_hash,
                flags: seg.xorb_flags,
                index: seg.chunk_index_start + j as u32,
            });
        }
    }
    let packer = Packer::new(&chunks, &refs, defrag_read == 0);
    let mut sink = Assembler::new(packer, client.clone(), settings.clone()).with_bundle(bundle);
    let r = rechunk::rechunk(&chunks, &edits, bytes, &mut sink).await?;
    tracing::debug!(
        windows = r.windows,
        base_bytes_read = r.base_bytes_read,
        "compose: re-chunked in {:?}",
        started.elapsed()
    );
    let (a, sent, written) = sink.finish_listed(None).await?;
    if a.size != expected_size {
        return Err(RemoteError::Integrity(format!(
            "composed {} bytes, expected {expected_size}",
            a.size
        )));
    }
    let id = FileId {
        hash: a.hash().hex(),
        size: a.size,
    };
    tracing::debug!("compose: uploaded in {:?}", started.elapsed());
    let mut terms = verify_written(&view, &written, &a.file.segments, &id, expected_size)?;
    if let Some(map) = map {
        terms = verify(map, &id, expected_size).await?;
    }
    tracing::debug!("compose: verified in {:?}", started.elapsed());
    Ok(Planned {
        id,
        base_bytes_read: r.base_bytes_read + defrag_read,
        dirty_chunk_bytes,
        terms,
        sent,
    })
}

/// Chunk `i` of xorb `xorb` (hash, length) as a composition knows it: from the xorbs it wrote
/// (`written`, each xorb's chunks in order) or from the base (`base`, by xorb and index).
pub fn known_chunk(
    written: &HashMap<MerkleHash, Vec<(MerkleHash, u64)>>,
    base: &HashMap<(MerkleHash, u32), (MerkleHash, u64)>,
    xorb: &MerkleHash,
    i: u32,
) -> Option<(MerkleHash, u64)> {
    written
        .get(xorb)
        .and_then(|l| l.get(i as usize).copied())
        .or_else(|| base.get(&(*xorb, i)).copied())
}

/// [`verify`] from what is known already: the base's chunk lists (`view`, as the store gave
/// them) and the chunks of the xorbs the composition wrote; `segments` is the file's
/// reconstruction as uploaded.
fn verify_written(
    view: &ChunkLists,
    written: &HashMap<MerkleHash, Vec<(MerkleHash, u64)>>,
    segments: &[FileDataSequenceEntry],
    id: &FileId,
    expected: u64,
) -> RemoteResult<u64> {
    if id.size != expected {
        return Err(RemoteError::Integrity(format!(
            "composed file {} claims {} bytes, expected {expected}",
            id.hash, id.size
        )));
    }
    let mut base = HashMap::new();
    for (seg, list) in view.segments.iter().zip(&view.chunks) {
        for (j, c) in list.iter().enumerate() {
            base.insert((seg.xorb_hash, seg.chunk_index_start + j as u32), *c);
        }
    }
    let mut all: Vec<(MerkleHash, u64)> = Vec::new();
    for seg in segments {
        let mut held = 0u64;
        for i in seg.chunk_index_start..seg.chunk_index_end {
            let c = known_chunk(written, &base, &seg.xorb_hash, i).ok_or_else(|| {
                    RemoteError::Integrity(format!(
                        "composed file {} refers to chunk {i} of xorb {}, which neither the base nor the composition holds",
                        id.hash, seg.xorb_hash
                    ))
                })?;
            held += c.1;
            all.push(c);
        }
        if held != u64::from(seg.unpacked_segment_bytes) {
            return Err(RemoteError::Integrity(format!(
                "composed file {}: a segment of xorb {} claims {} bytes but its chunks hold {held}",
                id.hash, seg.xorb_hash, seg.unpacked_segment_bytes
            )));
        }
    }
    let total: u64 = all.iter().map(|c| c.1).sum();
    if total != expected {
        return Err(RemoteError::Integrity(format!(
            "composed file {} reconstructs to {total} bytes, expected {expected}",
            id.hash
        )));
    }
    if expected > 0 && file_hash(&all) != parse_hash(&id.hash)? {
        return Err(RemoteError::Integrity(format!(
            "composed file {}: its chunks hash to {}",
            id.hash,
            file_hash(&all)
        )));
    }
    Ok(segments.len() as u64)
}

/// Refuse a composed file whose stored reconstruction does not add up to `expected` bytes:
/// its segments must sum to the size, every segment must match the chunks its xorb really
/// holds (so the bytes a reader gets add up too), and those chunks must hash to the file's
/// identity. Returns the file's term count.
pub async fn verify(map: &dyn ChunkMap, id: &FileId, expected: u64) -> RemoteResult<u64> {
    if id.size != expected {
        return Err(RemoteError::Integrity(format!(
            "composed file {} claims {} bytes, expected {expected}",
            id.hash, id.size
        )));
    }
    if expected == 0 {
        return Ok(0);
    }
    let hash = parse_hash(&id.hash)?;
    let view = map.chunk_lists(&hash).await?.ok_or_else(|| {
        RemoteError::Integrity(format!("composed file {} was not stored", id.hash))
    })?;
    if view.size() != expected {
        return Err(RemoteError::Integrity(format!(
            "composed file {} reconstructs to {} bytes, expected {expected}",
            id.hash,
            view.size()
        )));
    }
    for (seg, chunks) in view.segments.iter().zip(&view.chunks) {
        let held: u64 = chunks.iter().map(|(_, n)| n).sum();
        if held != u64::from(seg.unpacked_segment_bytes) {
            return Err(RemoteError::Integrity(format!(
                "composed file {}: a segment of xorb {} claims {} bytes but its chunks hold {held}",
                id.hash, seg.xorb_hash, seg.unpacked_segment_bytes
            )));
        }
    }
    let all: Vec<(MerkleHash, u64)> = view.chunks.iter().flatten().copied().collect();
    if file_hash(&all) != hash {
        return Err(RemoteError::Integrity(format!(
            "composed file {}: its stored chunks hash to {}",
            id.hash,
            file_hash(&all)
        )));
    }
    Ok(view.segments.len() as u64)
}
