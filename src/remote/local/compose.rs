//! Composing an edited file from its base without re-uploading it: xet-core's `upload_ranges`
//! re-chunks only the segments around the edits and splices them between the base's untouched
//! segments.
//!
//! The trap (xet-core 1.8.0): after an edit, the chunk-window builder extends each window past
//! the requested segment end until the chunker re-syncs, so the window ends a few chunks
//! *inside* the next segment. `upload_ranges` splices whole segments only: it drops the
//! segment the window ends in, and the stored file silently loses up to a segment of data.
//! Widening the request to the next segment end does not help (the window overshoots again,
//! all the way to EOF).
//!
//! What we do instead: plan the windows ourselves with the same window builder, and hand
//! `upload_ranges` a view of the base in which every segment a window ends inside is split at
//! the window end (two segments over the same xorb, with verification hashes computed from
//! the xorb's chunk hashes). Every window then ends on a segment boundary, composition keeps
//! the tail piece, and the re-chunked region stays the edited segments plus a few chunks.
//! The result is checked against the expected size before anyone may commit it.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_client::adaptive_concurrency::ConnectionPermit;
use xet_client::cas_client::chunk_window_builder::build_file_chunk_hashes_response;
use xet_client::cas_client::{Client, ProgressCallback, ShardUploadProgressCallback, URLProvider};
use xet_client::cas_types::{
    BatchQueryReconstructionResponse, FileChunkHashesResponse, FileRange,
    QueryReconstructionResponseV2,
};
use xet_client::error::{ClientError, Result as ClientResult};
use xet_core_structures::merklehash::{ChunkHashList, MerkleHash};
use xet_core_structures::metadata_shard::chunk_verification::range_hash_from_chunks;
use xet_core_structures::metadata_shard::file_structs::{
    FileDataSequenceEntry, FileDataSequenceHeader, FileVerificationEntry, MDBFileInfo,
};
use xet_core_structures::xorb_object::{SerializedXorbObject, XorbObject};
use xet_data::processing::configurations::TranslatorConfig;
use xet_data::processing::{upload_ranges, DirtyInput};

use super::defrag;
use super::reader::ChunkReader;
use crate::remote::{ComposeEdit, FileId, RemoteError, RemoteResult};

/// Outcome of one composition.
pub struct Planned {
    pub id: FileId,
    /// Bytes of the base read to re-chunk the windows.
    pub base_bytes_read: u64,
    /// The edits rounded out to the base chunks they touch, plus any growth.
    pub dirty_chunk_bytes: u64,
    /// Terms of the composed body.
    pub terms: u64,
}

fn xet_err(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Other(format!("xet compose: {e}"))
}

pub(super) fn parse_hash(hex: &str) -> RemoteResult<MerkleHash> {
    MerkleHash::from_hex(hex).map_err(|e| RemoteError::Other(format!("bad file hash {hex}: {e}")))
}

/// Compose `base` with `edits` (sorted, disjoint, in base coordinates).
/// `configs`: the usual upload settings, and those for a composition that rewrites a
/// fragmented region.
pub async fn compose(
    configs: [Arc<TranslatorConfig>; 2],
    client: Arc<dyn Client>,
    reader: &ChunkReader,
    xorb_dir: &Path,
    base: &FileId,
    edits: Vec<ComposeEdit>,
) -> RemoteResult<Planned> {
    let base_hash = parse_hash(&base.hash)?;
    let expected_size = edits.iter().fold(base.size, |s, e| {
        s - (e.original_range.end - e.original_range.start) + e.data.len() as u64
    });
    let (original, shard) = client
        .get_file_reconstruction_info(&base_hash)
        .await
        .map_err(xet_err)?
        .ok_or_else(|| RemoteError::NotFound(format!("base {} is not in the store", base.hash)))?;
    if original.file_size() != base.size {
        return Err(RemoteError::Integrity(format!(
            "base {} reconstructs to {} bytes, expected {}",
            base.hash,
            original.file_size(),
            base.size
        )));
    }
    let started = std::time::Instant::now();
    let view = SegmentView::load(&original, xorb_dir).await?;
    tracing::debug!(
        segments = original.segments.len(),
        "compose: footers read in {:?}",
        started.elapsed()
    );
    let dirty_chunk_bytes = view.chunk_rounded(&edits);
    let (edits, defrag_read) = defrag::apply_rule(reader, base, &original, edits).await?;
    let [usual, rewrite] = configs;
    let config = if defrag_read > 0 { rewrite } else { usual };
    let ranges: Vec<Range<u64>> = edits.iter().map(|e| e.original_range.clone()).collect();
    let view = view
        .split_around(&ranges, base.size)?
        .split_at_window_ends(&ranges, base.size)?;
    tracing::debug!(
        segments = view.segments.len(),
        "compose: planned in {:?}",
        started.elapsed()
    );
    let planned = Arc::new(PlannedClient {
        inner: client.clone(),
        file: base_hash,
        mdb: view.mdb(&original),
        boundaries: view.starts(),
        shard,
        chunks: view.chunks.iter().flatten().copied().collect(),
        base_bytes_read: AtomicU64::new(0),
    });
    let inputs = edits
        .into_iter()
        .map(|e| DirtyInput {
            original_range: e.original_range,
            new_length: e.data.len() as u64,
            reader: Box::pin(std::io::Cursor::new(e.data)),
        })
        .collect();
    let planned_dyn: Arc<dyn Client> = planned.clone();
    let info = upload_ranges(config, planned_dyn, base_hash, base.size, inputs)
        .await
        .map_err(xet_err)?;
    let id = FileId {
        hash: info.hash().to_string(),
        size: info.file_size().unwrap_or(expected_size),
    };
    tracing::debug!("compose: uploaded in {:?}", started.elapsed());
    let terms = verify(&client, xorb_dir, &id, expected_size).await?;
    tracing::debug!("compose: verified in {:?}", started.elapsed());
    Ok(Planned {
        id,
        base_bytes_read: planned.base_bytes_read.load(Ordering::Relaxed) + defrag_read,
        dirty_chunk_bytes,
        terms,
    })
}

/// Refuse a composed file whose stored reconstruction does not add up to `expected` bytes:
/// its segments must sum to the size, and every segment must match the chunks its xorb
/// really holds (so the bytes a reader gets add up too). Returns the file's term count.
async fn verify(
    client: &Arc<dyn Client>,
    xorb_dir: &Path,
    id: &FileId,
    expected: u64,
) -> RemoteResult<u64> {
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
    let (mdb, _) = client
        .get_file_reconstruction_info(&hash)
        .await
        .map_err(xet_err)?
        .ok_or_else(|| {
            RemoteError::Integrity(format!("composed file {} was not stored", id.hash))
        })?;
    if mdb.file_size() != expected {
        return Err(RemoteError::Integrity(format!(
            "composed file {} reconstructs to {} bytes, expected {expected}",
            id.hash,
            mdb.file_size()
        )));
    }
    let view = SegmentView::load(&mdb, xorb_dir).await?;
    for (seg, chunks) in view.segments.iter().zip(&view.chunks) {
        let held: u64 = chunks.iter().map(|(_, n)| n).sum();
        if held != u64::from(seg.unpacked_segment_bytes) {
            return Err(RemoteError::Integrity(format!(
                "composed file {}: a segment of xorb {} claims {} bytes but its chunks hold {held}",
                id.hash, seg.xorb_hash, seg.unpacked_segment_bytes
            )));
        }
    }
    Ok(view.segments.len() as u64)
}

/// The base's segments with the (hash, size) of every chunk in each.
struct SegmentView {
    segments: Vec<FileDataSequenceEntry>,
    chunks: Vec<ChunkHashList>,
}

impl SegmentView {
    async fn load(mdb: &MDBFileInfo, xorb_dir: &Path) -> RemoteResult<Self> {
        let segments = mdb.segments.clone();
        let dir = xorb_dir.to_path_buf();
        let chunks = tokio::task::spawn_blocking(move || -> RemoteResult<Vec<ChunkHashList>> {
            let mut footers: HashMap<MerkleHash, XorbObject> = HashMap::new();
            let mut out = Vec::with_capacity(segments.len());
            for s in &segments {
                let footer = match footers.entry(s.xorb_hash) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(read_footer(&dir, &s.xorb_hash)?)
                    }
                };
                let list = footer
                    .chunk_hash_sizes(s.chunk_index_start, s.chunk_index_end)
                    .map_err(xet_err)?;
                out.push(list);
            }
            Ok(out)
        })
        .await
        .map_err(RemoteError::other)??;
        Ok(SegmentView {
            segments: mdb.segments.clone(),
            chunks,
        })
    }

    /// Bytes of the chunks the edits touch (an empty range touches the chunk holding it),
    /// plus the bytes an edit adds beyond what it replaces.
    fn chunk_rounded(&self, edits: &[ComposeEdit]) -> u64 {
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

    fn starts(&self) -> Vec<u64> {
        let mut acc = 0;
        let mut v = vec![0];
        for s in &self.segments {
            acc += u64::from(s.unpacked_segment_bytes);
            v.push(acc);
        }
        v
    }

    /// The ranges `upload_ranges` will ask windows for: each edit snapped out to whole
    /// segments (a pure insert to the segment holding it, or the last one at EOF), merged.
    fn snapped(&self, edits: &[Range<u64>], size: u64) -> Vec<FileRange> {
        let starts = self.starts();
        let n = self.segments.len();
        let seg_of = |b: u64| {
            starts
                .partition_point(|&s| s <= b)
                .saturating_sub(1)
                .min(n - 1)
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in edits {
            let (s, e) = if r.start == r.end && r.start == size {
                (starts[n - 1], starts[n])
            } else {
                let last = if r.start == r.end { r.start } else { r.end - 1 };
                (starts[seg_of(r.start)], starts[seg_of(last) + 1])
            };
            match out.last_mut() {
                Some(prev) if s <= prev.1 => prev.1 = prev.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out.into_iter().map(|(s, e)| FileRange::new(s, e)).collect()
    }

    /// Split segments at the chunk boundaries that enclose each edit, so that `upload_ranges`,
    /// which snaps every edit out to whole segments, snaps it only to the chunks it touches:
    /// the re-chunked window is those chunks plus the few the chunker needs to re-sync,
    /// instead of the whole (up to 64 MiB) segment around the edit. Splitting at a chunk
    /// boundary is exact: the chunker restarts at every boundary, so re-chunking from one
    /// gives the boundaries a clean upload of the new bytes would.
    fn split_around(mut self, edits: &[Range<u64>], size: u64) -> RemoteResult<Self> {
        let mut ends = Vec::new(); // end offset of every chunk
        let mut at = 0;
        for (_, n) in self.chunks.iter().flatten() {
            at += n;
            ends.push(at);
        }
        let mut cuts = Vec::new();
        for r in edits {
            // The chunks holding the edit; a pure insert, the chunk holding its position (at
            // EOF, the last chunk).
            let (first, last) = match (r.start == r.end, r.start >= size) {
                (true, true) => (size.saturating_sub(1), size.saturating_sub(1)),
                (true, false) => (r.start, r.start),
                (false, _) => (r.start, r.end - 1),
            };
            let i = ends.partition_point(|&e| e <= first);
            let j = ends.partition_point(|&e| e <= last);
            cuts.push(if i == 0 { 0 } else { ends[i - 1] });
            cuts.push(ends.get(j).copied().unwrap_or(size));
        }
        cuts.sort_unstable();
        cuts.dedup();
        for cut in cuts {
            if cut > 0 && cut < size && self.starts().binary_search(&cut).is_err() {
                self.split(cut)?;
            }
        }
        Ok(self)
    }

    /// Split segments until every window the builder returns ends on a segment boundary.
    fn split_at_window_ends(mut self, edits: &[Range<u64>], size: u64) -> RemoteResult<Self> {
        // Each pass splits at least one segment; a window end can only move forward.
        for _ in 0..=self.segments.len() + edits.len() + 2 {
            let resp = self.respond(self.snapped(edits, size))?;
            let starts = self.starts();
            let inside: Vec<u64> = resp
                .windows
                .iter()
                .map(|w| w.dirty_byte_range[1])
                .filter(|end| starts.binary_search(end).is_err())
                .collect();
            if inside.is_empty() {
                return Ok(self);
            }
            for end in inside {
                self.split(end)?;
            }
        }
        Err(RemoteError::Other(
            "compose planning did not converge on segment-aligned windows".into(),
        ))
    }

    /// Split the segment holding byte `at` (a chunk boundary) into two.
    fn split(&mut self, at: u64) -> RemoteResult<()> {
        let starts = self.starts();
        let j = starts.partition_point(|&s| s <= at) - 1;
        let mut off = starts[j];
        let list = &self.chunks[j];
        let mut k = 0;
        while off < at && k < list.len() {
            off += list[k].1;
            k += 1;
        }
        if off != at || k == 0 || k == list.len() {
            return Err(RemoteError::Integrity(format!(
                "window end {at} is not a chunk boundary inside segment {j}"
            )));
        }
        let seg = &self.segments[j];
        let head_bytes = (off - starts[j]) as u32;
        let head = FileDataSequenceEntry {
            unpacked_segment_bytes: head_bytes,
            chunk_index_end: seg.chunk_index_start + k as u32,
            ..seg.clone()
        };
        let tail = FileDataSequenceEntry {
            unpacked_segment_bytes: seg.unpacked_segment_bytes - head_bytes,
            chunk_index_start: seg.chunk_index_start + k as u32,
            ..seg.clone()
        };
        let (a, b) = list.split_at(k);
        let (a, b) = (a.to_vec(), b.to_vec());
        self.segments.splice(j..=j, [head, tail]);
        self.chunks.splice(j..=j, [a, b]);
        Ok(())
    }

    fn respond(&self, ranges: Vec<FileRange>) -> RemoteResult<FileChunkHashesResponse> {
        build_file_chunk_hashes_response(
            &self.mdb_raw(),
            ranges,
            self.chunks.iter().flatten().copied(),
        )
        .map_err(xet_err)
    }

    /// The view as file info, with a verification entry per segment computed from its chunks.
    fn mdb_with(&self, hash: MerkleHash, ext: Option<&MDBFileInfo>) -> MDBFileInfo {
        let verification = self
            .chunks
            .iter()
            .map(|c| {
                let hashes: Vec<MerkleHash> = c.iter().map(|(h, _)| *h).collect();
                FileVerificationEntry::new(range_hash_from_chunks(&hashes))
            })
            .collect();
        let metadata_ext = ext.and_then(|m| m.metadata_ext.clone());
        MDBFileInfo {
            metadata: FileDataSequenceHeader::new(
                hash,
                self.segments.len(),
                true,
                metadata_ext.is_some(),
            ),
            segments: self.segments.clone(),
            verification,
            metadata_ext,
        }
    }

    fn mdb_raw(&self) -> MDBFileInfo {
        self.mdb_with(MerkleHash::default(), None)
    }

    fn mdb(&self, original: &MDBFileInfo) -> MDBFileInfo {
        self.mdb_with(original.metadata.file_hash, Some(original))
    }
}

pub(super) fn xorb_path(dir: &Path, hash: &MerkleHash) -> PathBuf {
    // LocalClient's naming: `default.<hex>`.
    dir.join(format!("default.{hash:?}"))
}

fn read_footer(dir: &Path, hash: &MerkleHash) -> RemoteResult<XorbObject> {
    let path = xorb_path(dir, hash);
    let f = std::fs::File::open(&path)
        .map_err(|e| RemoteError::Integrity(format!("xorb {} unreadable: {e}", path.display())))?;
    XorbObject::deserialize(&mut std::io::BufReader::new(f)).map_err(xet_err)
}

/// The store's client, except that the base file is seen through the split view, and reads
/// of base data are counted.
struct PlannedClient {
    inner: Arc<dyn Client>,
    file: MerkleHash,
    mdb: MDBFileInfo,
    /// Byte offsets where the view's segments start, and its end.
    boundaries: Vec<u64>,
    shard: Option<MerkleHash>,
    chunks: ChunkHashList,
    base_bytes_read: AtomicU64,
}

#[async_trait]
impl Client for PlannedClient {
    async fn get_file_reconstruction_info(
        &self,
        file_hash: &MerkleHash,
    ) -> ClientResult<Option<(MDBFileInfo, Option<MerkleHash>)>> {
        if *file_hash == self.file {
            return Ok(Some((self.mdb.clone(), self.shard)));
        }
        self.inner.get_file_reconstruction_info(file_hash).await
    }

    async fn get_reconstruction(
        &self,
        file_id: &MerkleHash,
        bytes_range: Option<FileRange>,
    ) -> ClientResult<Option<QueryReconstructionResponseV2>> {
        self.inner.get_reconstruction(file_id, bytes_range).await
    }

    async fn batch_get_reconstruction(
        &self,
        file_ids: &[MerkleHash],
    ) -> ClientResult<BatchQueryReconstructionResponse> {
        self.inner.batch_get_reconstruction(file_ids).await
    }

    async fn acquire_download_permit(&self) -> ClientResult<ConnectionPermit> {
        self.inner.acquire_download_permit().await
    }

    async fn get_file_term_data(
        &self,
        url_info: Box<dyn URLProvider>,
        download_permit: ConnectionPermit,
        progress_callback: Option<ProgressCallback>,
        uncompressed_size_if_known: Option<usize>,
    ) -> ClientResult<(Bytes, Vec<u32>)> {
        let r = self
            .inner
            .get_file_term_data(
                url_info,
                download_permit,
                progress_callback,
                uncompressed_size_if_known,
            )
            .await?;
        self.base_bytes_read
            .fetch_add(r.0.len() as u64, Ordering::Relaxed);
        Ok(r)
    }

    async fn query_for_global_dedup_shard(
        &self,
        prefix: &str,
        chunk_hash: &MerkleHash,
    ) -> ClientResult<Option<Bytes>> {
        self.inner
            .query_for_global_dedup_shard(prefix, chunk_hash)
            .await
    }

    async fn acquire_upload_permit(&self) -> ClientResult<ConnectionPermit> {
        self.inner.acquire_upload_permit().await
    }

    async fn upload_shard(
        &self,
        shard_data: Bytes,
        upload_permit: ConnectionPermit,
        progress_callback: Option<ShardUploadProgressCallback>,
    ) -> ClientResult<Option<MerkleHash>> {
        self.inner
            .upload_shard(shard_data, upload_permit, progress_callback)
            .await
    }

    async fn upload_xorb(
        &self,
        prefix: &str,
        serialized_xorb_object: SerializedXorbObject,
        progress_callback: Option<ProgressCallback>,
        upload_permit: ConnectionPermit,
    ) -> ClientResult<u64> {
        self.inner
            .upload_xorb(
                prefix,
                serialized_xorb_object,
                progress_callback,
                upload_permit,
            )
            .await
    }

    async fn get_file_chunk_hashes(
        &self,
        file_id: &MerkleHash,
        dirty_ranges: Vec<FileRange>,
    ) -> ClientResult<FileChunkHashesResponse> {
        if *file_id != self.file {
            return self
                .inner
                .get_file_chunk_hashes(file_id, dirty_ranges)
                .await;
        }
        let resp =
            build_file_chunk_hashes_response(&self.mdb, dirty_ranges, self.chunks.iter().copied())?;
        // Composition splices whole segments: a window ending inside one would lose data.
        for w in &resp.windows {
            if self
                .boundaries
                .binary_search(&w.dirty_byte_range[1])
                .is_err()
            {
                return Err(ClientError::Other(format!(
                    "window ends at {} inside a segment; refusing to compose",
                    w.dirty_byte_range[1]
                )));
            }
        }
        Ok(resp)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::remote::local::{xet_config, XetCas};
    use crate::remote::{Cas, Composed, UploadItem};
    use xet_runtime::core::XetContext;

    const MIB: u64 = 1 << 20;

    use crate::vfs::tests::random;

    pub(in crate::remote::local) async fn store_with(dir: &Path, data: &[u8]) -> (XetCas, FileId) {
        let ctx = XetContext::from_external(tokio::runtime::Handle::current(), xet_config());
        let cas = XetCas::open(ctx, &dir.join("cas")).await.unwrap();
        let src = dir.join("src");
        std::fs::write(&src, data).unwrap();
        let up = cas
            .upload_batch(vec![UploadItem {
                path: &src,
                len: data.len() as u64,
            }])
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        (cas, up.id)
    }

    async fn read_back(cas: &XetCas, id: &FileId) -> Vec<u8> {
        let mut out = Vec::with_capacity(id.size as usize);
        let mut off = 0;
        while off < id.size {
            let end = (off + 32 * MIB).min(id.size);
            out.extend_from_slice(&cas.read_range(id, off..end).await.unwrap());
            off = end;
        }
        out
    }

    fn apply(model: &[u8], edits: &[ComposeEdit]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        for e in edits {
            out.extend_from_slice(&model[pos..e.original_range.start as usize]);
            out.extend_from_slice(&e.data);
            pos = e.original_range.end as usize;
        }
        out.extend_from_slice(&model[pos..]);
        out
    }

    /// The xet-core 1.8.0 bug this module exists for: an edit outside the last segment,
    /// composed by plain `upload_ranges`, stores a shorter file under a plausible identity.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_upload_ranges_truncates_an_edit_before_the_last_segment() {
        let d = tempfile::tempdir().unwrap();
        let data = random((150 * MIB) as usize, 1);
        let (cas, base) = store_with(d.path(), &data).await;
        let hash = parse_hash(&base.hash).unwrap();
        let (mdb, _) = cas
            .client
            .get_file_reconstruction_info(&hash)
            .await
            .unwrap()
            .unwrap();
        assert!(mdb.segments.len() >= 3, "want a multi-segment base");
        let edit = vec![DirtyInput {
            original_range: 10 * MIB..10 * MIB + 4096,
            new_length: 4096,
            reader: Box::pin(std::io::Cursor::new(vec![7u8; 4096])),
        }];
        let info = upload_ranges(
            cas.config.clone(),
            cas.client.clone(),
            hash,
            base.size,
            edit,
        )
        .await
        .unwrap();
        // The identity claims the full size...
        assert_eq!(info.file_size(), Some(base.size));
        // ...but the stored reconstruction is short by (at least) a segment.
        let new = parse_hash(info.hash()).unwrap();
        let (stored, _) = cas
            .client
            .get_file_reconstruction_info(&new)
            .await
            .unwrap()
            .unwrap();
        assert!(
            stored.file_size() < base.size,
            "xet-core no longer truncates ({} of {} bytes): revisit compose.rs",
            stored.file_size(),
            base.size
        );
        // Our verification refuses exactly this.
        let id = FileId {
            hash: info.hash().to_string(),
            size: base.size,
        };
        let err = verify(&cas.client, &cas.xorb_dir, &id, base.size)
            .await
            .unwrap_err();
        assert!(matches!(err, RemoteError::Integrity(_)), "{err}");
    }

    /// Every edit of a fresh multi-segment file, composed: the content and identity of a
    /// clean upload of the same bytes, at the cost of the chunks around the edit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compose_is_exact_and_reads_only_the_chunks_around_the_edits() {
        let d = tempfile::tempdir().unwrap();
        let data = random((150 * MIB) as usize, 2);
        let (cas, base) = store_with(d.path(), &data).await;
        let size = base.size;
        let (mdb, _) = cas
            .client
            .get_file_reconstruction_info(&parse_hash(&base.hash).unwrap())
            .await
            .unwrap()
            .unwrap();
        let seg_end = u64::from(mdb.segments[0].unpacked_segment_bytes);
        assert!(mdb.segments.len() >= 2 && seg_end < size);
        let cases: Vec<(&str, Vec<ComposeEdit>)> = vec![
            ("offset 0", vec![edit(0..4096, 4096, 3)]),
            ("middle", vec![edit(70 * MIB..70 * MIB + 4096, 4096, 4)]),
            ("EOF-1", vec![edit(size - 1..size, 1, 5)]),
            (
                "across a segment boundary",
                vec![edit(seg_end - 2048..seg_end + 2048, 4096, 10)],
            ),
            ("append", vec![edit(size..size, 1_000_000, 6)]),
            ("shrink", vec![edit(size - 3 * MIB..size, 0, 0)]),
            ("grow in place", vec![edit(MIB..MIB + 100, 5000, 11)]),
            ("insert", vec![edit(90 * MIB..90 * MIB, 777, 12)]),
            (
                "scattered",
                vec![
                    edit(MIB..MIB + 10, 10, 7),
                    edit(65 * MIB..65 * MIB + 5000, 5000, 8),
                    edit(140 * MIB..140 * MIB + 1, 1, 9),
                ],
            ),
        ];
        for (name, edits) in cases {
            let want = apply(&data, &edits);
            let n = edits.len() as u64;
            let c = cas.compose(&base, edits).await.unwrap();
            assert_eq!(c.id.size, want.len() as u64, "{name}");
            assert!(
                read_back(&cas, &c.id).await == want,
                "{name}: content differs"
            );
            let (_, clean) = store_with(&d.path().join(name), &want).await;
            assert_eq!(clean.hash, c.id.hash, "{name}: composed hash differs");
            eprintln!(
                "{name}: base read {} KiB, new {} KiB, {} terms",
                c.base_bytes_read >> 10,
                c.new_bytes >> 10,
                c.terms
            );
            // The chunks around each edit and the few after it the chunker needs to re-sync.
            assert!(
                c.base_bytes_read <= n * MIB,
                "{name}: read {} bytes of the base",
                c.base_bytes_read
            );
            assert!(
                c.new_bytes <= n * MIB + 1_000_000,
                "{name}: stored {} new bytes",
                c.new_bytes
            );
        }
    }

    /// The defragmentation rule: a region that many edits cut into more than
    /// `defrag::MAX_TERMS` terms is rewritten whole by the next edit inside it; other regions
    /// are left alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fragmented_region_is_rewritten_by_the_next_edit_inside_it() {
        let d = tempfile::tempdir().unwrap();
        let data = random((80 * MIB) as usize, 20);
        let (cas, base) = store_with(d.path(), &data).await;
        // Rounds of 150 small edits 400 KiB apart (far enough that their windows stay apart),
        // all in the first region, each round between the earlier ones' edits, until the
        // region is over the limit.
        let (mut id, mut want1, mut c1) = (base.clone(), data.clone(), None);
        for round in 0..10u64 {
            if c1
                .as_ref()
                .is_some_and(|c: &Composed| c.terms > defrag::MAX_TERMS as u64)
            {
                break;
            }
            let scattered: Vec<ComposeEdit> = (0..150u64)
                .map(|i| {
                    let at = MIB + i * 400 * 1024 + (round * 137 * 1024) % (400 * 1024);
                    edit(at..at + 100, 100, 100 + i + 1000 * round)
                })
                .collect();
            want1 = apply(&want1, &scattered);
            let c = cas.compose(&id, scattered).await.unwrap();
            id = c.id.clone();
            c1 = Some(c);
        }
        let c1 = c1.unwrap();
        assert!(
            c1.terms > defrag::MAX_TERMS as u64,
            "the first region should be fragmented: {} terms",
            c1.terms
        );
        // One more edit in that region rewrites it whole...
        let e2 = vec![edit(30 * MIB..30 * MIB + 4096, 4096, 21)];
        let want2 = apply(&want1, &e2);
        let c2 = cas.compose(&c1.id, e2).await.unwrap();
        assert!(
            c2.terms <= defrag::MAX_TERMS as u64 / 4,
            "{} terms after the rewrite",
            c2.terms
        );
        assert!(
            c2.base_bytes_read >= defrag::REGION - MIB
                && c2.base_bytes_read <= defrag::REGION + 2 * MIB,
            "read {} bytes rewriting a region",
            c2.base_bytes_read
        );
        assert!(read_back(&cas, &c2.id).await == want2, "content differs");
        let (_, clean) = store_with(&d.path().join("clean"), &want2).await;
        assert_eq!(clean.hash, c2.id.hash, "composed hash differs");
        // ...and an edit in the unfragmented region does not.
        let e3 = vec![edit(70 * MIB..70 * MIB + 4096, 4096, 22)];
        let want3 = apply(&want2, &e3);
        let c3 = cas.compose(&c2.id, e3).await.unwrap();
        assert!(c3.base_bytes_read <= MIB, "read {}", c3.base_bytes_read);
        assert!(read_back(&cas, &c3.id).await == want3, "content differs");
    }

    /// Random edits of an already-composed (multi-term) base: content and identity always
    /// those of a clean upload of the same bytes.
    #[test]
    fn composed_identity_equals_a_clean_upload_for_random_edits() {
        use proptest::prelude::*;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let d = tempfile::tempdir().unwrap();
        let data = random(3 << 20, 30);
        let (cas, base, data) = rt.block_on(async {
            let (cas, fresh) = store_with(d.path(), &data).await;
            let first = vec![edit(MIB..MIB + 3000, 2000, 31)];
            let want = apply(&data, &first);
            let c = cas.compose(&fresh, first).await.unwrap();
            assert!(c.terms > 1);
            (cas, c.id, want)
        });
        let size = data.len() as u64;
        let edits = proptest::collection::vec((0..size, 0u64..20_000, 0usize..20_000), 1..4);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 12,
            ..ProptestConfig::default()
        });
        let n = std::sync::atomic::AtomicU64::new(0);
        runner
            .run(&edits, |raw| {
                // Sorted, disjoint edits from random (offset, removed, inserted).
                let mut raw = raw;
                raw.sort();
                let mut list = Vec::new();
                let mut next_free = 0;
                for (at, removed, inserted) in raw {
                    if at < next_free {
                        continue;
                    }
                    let end = (at + removed).min(size);
                    list.push(edit(at..end, inserted, at ^ removed));
                    next_free = end + 1;
                }
                let want = apply(&data, &list);
                let k = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (got, clean) = rt.block_on(async {
                    let c = cas.compose(&base, list).await.unwrap();
                    let got = read_back(&cas, &c.id).await;
                    let (_, clean) = store_with(&d.path().join(format!("clean{k}")), &want).await;
                    (c.id, (got == want, clean))
                });
                prop_assert!(clean.0, "content differs");
                prop_assert_eq!(got.hash, clean.1.hash);
                Ok(())
            })
            .unwrap();
    }

    fn edit(original_range: Range<u64>, len: usize, seed: u64) -> ComposeEdit {
        ComposeEdit {
            original_range,
            data: Bytes::from(random(len, seed)),
        }
    }
}
