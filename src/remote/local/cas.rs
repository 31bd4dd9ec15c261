//! Xet CAS of the local store, through xet-core's `LocalClient`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_client::adaptive_concurrency::ConnectionPermit;
use xet_client::cas_client::{
    Client, LocalClient, ProgressCallback, ShardUploadProgressCallback, URLProvider,
};
use xet_client::cas_types::{
    BatchQueryReconstructionResponse, FileChunkHashesResponse, FileRange,
    QueryReconstructionResponseV2,
};
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::metadata_shard::file_structs::MDBFileInfo;
use xet_core_structures::metadata_shard::{get_shard_file_cache, ShardFileCache};
use xet_core_structures::xorb_object::SerializedXorbObject;
use xet_data::processing::configurations::TranslatorConfig;
use xet_runtime::config::XetConfig;
use xet_runtime::core::{XetContext, XetRuntime};
use xet_runtime::utils::ByteSize;

use super::compose;
use super::durable::Durable;
use super::reader::ChunkReader;
use super::shard_cache;
use crate::remote::xet::xet_err;
use crate::remote::{Cas, ComposeEdit, Composed, FileId, RemoteResult, UploadItem, Uploaded};

/// xet-core settings for a mount. Its defaults are sized for bulk transfers on a big machine
/// (download buffers of 1/16 of RAM, up to 64 xorbs of 64 MiB uploading at once); a mount
/// process must stay small whatever the machine, so the buffers are bounded here. Measured by
/// bench/foundation.sh (peak RSS).
pub fn xet_config() -> XetConfig {
    let mut c = XetConfig::new();
    c.reconstruction.download_buffer_size = ByteSize::new(64 << 20);
    c.reconstruction.download_buffer_perfile_size = ByteSize::new(16 << 20);
    c.reconstruction.download_buffer_limit = ByteSize::new(128 << 20);
    c.client.ac_initial_upload_concurrency = 1;
    c.client.ac_max_upload_concurrency = 2;
    c
}

pub struct XetCas {
    pub(super) config: Arc<TranslatorConfig>,
    pub(super) client: Arc<dyn Client>,
    /// Where `LocalClient` keeps xorb files (read for chunk hashes and new-byte accounting).
    pub(super) xorb_dir: PathBuf,
    /// Uploads and compositions run one at a time, so a xorb two of them store is counted as
    /// new by one only (see `NewXorbBytes`).
    upload_lock: tokio::sync::Mutex<()>,
    reader: Arc<ChunkReader>,
    xorbs: crate::remote::xet::assemble::XorbSettings,
    durable: Durable,
    /// What compacting the upload sessions' shard cache needs (see `shard_cache.rs`).
    runtime: Arc<XetRuntime>,
    shard_files: ShardFileCache,
}

impl XetCas {
    /// xet-core's client over the store's CAS (for a server speaking the CAS protocol).
    pub fn client(&self) -> &Arc<dyn Client> {
        &self.client
    }

    /// Which chunks stored bodies are made of.
    pub fn chunk_map(&self) -> compose::LocalChunks {
        compose::LocalChunks {
            client: self.client.clone(),
            xorb_dir: self.xorb_dir.clone(),
        }
    }

    /// fsyncs of the files `LocalClient` stored, for a server answering an upload.
    /// The verification hash of each stored `(xorb, chunk range)` (see
    /// `compose::range_hashes`); an error if a xorb is missing or a range runs past its end.
    pub async fn range_hashes(
        &self,
        ranges: Vec<(MerkleHash, std::ops::Range<u32>)>,
    ) -> RemoteResult<Vec<MerkleHash>> {
        compose::range_hashes(&self.xorb_dir, ranges).await
    }

    /// The xorbs stored, by hash (a migration copies them all).
    pub fn stored_xorbs(&self) -> RemoteResult<Vec<MerkleHash>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.xorb_dir)? {
            let name = e?.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_prefix("default.")) else {
                continue;
            };
            if let Ok(h) = MerkleHash::from_hex(hex) {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// The shard files `LocalClient` keeps (`*.mdb`).
    pub fn shard_files(&self) -> RemoteResult<Vec<PathBuf>> {
        let dir = self
            .xorb_dir
            .parent()
            .expect("xorbs/ has a parent")
            .join("shards");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "mdb") {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// Direct reads of the stored xorbs.
    pub fn reader(&self) -> &Arc<ChunkReader> {
        &self.reader
    }

    pub async fn open(ctx: XetContext, cas_root: &Path) -> RemoteResult<Self> {
        std::fs::create_dir_all(cas_root)?;
        let config = TranslatorConfig::local_config(&ctx, cas_root).map_err(xet_err)?;
        // The upload session opens `LocalClient` on exactly this path; clients on one path share
        // one database handle inside the process.
        let client_dir = cas_root.join("xet").join("xorbs");
        let client: Arc<dyn Client> = LocalClient::new(ctx.clone(), &client_dir)
            .await
            .map_err(xet_err)?;
        let xorb_dir = client_dir.join("xorbs");
        let xorbs = crate::remote::xet::assemble::XorbSettings {
            prefix: ctx.config.data.default_prefix.clone(),
            compression: ctx.config.xorb.compression_policy.as_str().to_string(),
            retest_interval: ctx.config.xorb.compression_scheme_retest_interval,
        };
        let runtime = ctx.runtime.clone();
        let shard_files = get_shard_file_cache(&ctx.common);
        let config = config.disable_progress_aggregation();
        // Before any session lists the cache (a compaction a crash cut short is finished).
        compact_shard_cache(&runtime, &shard_files, &config.shard_cache_directory).await;
        Ok(XetCas {
            runtime,
            shard_files,
            durable: Durable::new(&client_dir),
            xorbs,
            reader: Arc::new(ChunkReader::new(client.clone(), xorb_dir.clone())),
            config: Arc::new(config),
            client,
            xorb_dir,
            upload_lock: tokio::sync::Mutex::new(()),
        })
    }
}

#[async_trait]
impl Cas for XetCas {
    async fn read_range(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes> {
        if !crate::remote::xet::check_read(id, &range)? {
            return Ok(Bytes::new());
        }
        let hash = compose::parse_hash(&id.hash)?;
        let out = self.reader.read(id, hash, range.clone()).await?;
        crate::remote::xet::check_read_len(id, &range, out)
    }

    async fn upload_batch(
        &self,
        items: Vec<UploadItem<'_>>,
    ) -> RemoteResult<Vec<RemoteResult<Uploaded>>> {
        let one_at_a_time = self.upload_lock.lock().await;
        let results = crate::remote::xet::upload_files(self.config.clone(), &items).await;
        // Each batch's session left one more shard in the cache the next session lists.
        compact_shard_cache(
            &self.runtime,
            &self.shard_files,
            &self.config.shard_cache_directory,
        )
        .await;
        drop(one_at_a_time);
        let results = results?;
        // Before the caller's commit may name them (see durable.rs).
        let stored = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|u| u.id.size > 0)
            .map(|u| compose::parse_hash(&u.id.hash))
            .collect::<RemoteResult<Vec<_>>>()?;
        self.durable.bodies(self.client.as_ref(), stored).await?;
        Ok(results)
    }

    async fn compose(&self, base: &FileId, edits: Vec<ComposeEdit>) -> RemoteResult<Composed> {
        let _one_at_a_time = self.upload_lock.lock().await;
        let counted = Arc::new(NewXorbBytes {
            inner: self.client.clone(),
            xorb_dir: self.xorb_dir.clone(),
            added: AtomicU64::new(0),
        });
        let bytes = Arc::new(compose::Base {
            reader: self.reader.clone(),
            id: base.clone(),
            hash: compose::parse_hash(&base.hash)?,
        });
        let c = crate::remote::xet::compose::compose(
            &self.xorbs,
            counted.clone(),
            &self.chunk_map(),
            bytes,
            base,
            edits,
        )
        .await?;
        if c.id.size > 0 {
            let hash = compose::parse_hash(&c.id.hash)?;
            self.durable.bodies(self.client.as_ref(), [hash]).await?;
        }
        Ok(Composed {
            id: c.id,
            new_bytes: counted.added.load(Ordering::Relaxed),
            base_bytes_read: c.base_bytes_read,
            dirty_chunk_bytes: c.dirty_chunk_bytes,
            terms: c.terms,
            whole_upload: false,
            carried: None,
        })
    }
}

/// Merge the small shards of the shard cache `dir` if there are enough of them (see
/// `shard_cache.rs`). A failure costs dedup, never data: it is logged and the next batch tries
/// again.
async fn compact_shard_cache(runtime: &Arc<XetRuntime>, files: &ShardFileCache, dir: &Path) {
    let (runtime, files, dir) = (runtime.clone(), files.clone(), dir.to_path_buf());
    let done = tokio::task::spawn_blocking(move || shard_cache::compact(&runtime, &files, &dir))
        .await
        .map_err(crate::remote::RemoteError::other)
        .and_then(|r| r);
    if let Err(e) = done {
        tracing::warn!("could not compact the shard cache: {e}");
    }
}

/// The store's client, counting the bytes of the xorbs stored through it that the store did
/// not hold yet: what a composition adds to the store. (Measuring the growth of the xorb
/// directory instead listed and stat'ed every xorb twice per composition: ~40 ms at 20k xorbs.)
/// `LocalClient` rewrites a xorb it already holds and reports its size again, so whether the
/// xorb was there is looked up first (one `stat` of its path).
struct NewXorbBytes {
    inner: Arc<dyn Client>,
    xorb_dir: PathBuf,
    added: AtomicU64,
}

#[async_trait]
impl Client for NewXorbBytes {
    async fn get_file_reconstruction_info(
        &self,
        file_hash: &MerkleHash,
    ) -> xet_client::error::Result<Option<(MDBFileInfo, Option<MerkleHash>)>> {
        self.inner.get_file_reconstruction_info(file_hash).await
    }

    async fn get_reconstruction(
        &self,
        file_id: &MerkleHash,
        bytes_range: Option<FileRange>,
    ) -> xet_client::error::Result<Option<QueryReconstructionResponseV2>> {
        self.inner.get_reconstruction(file_id, bytes_range).await
    }

    async fn batch_get_reconstruction(
        &self,
        file_ids: &[MerkleHash],
    ) -> xet_client::error::Result<BatchQueryReconstructionResponse> {
        self.inner.batch_get_reconstruction(file_ids).await
    }

    async fn acquire_download_permit(&self) -> xet_client::error::Result<ConnectionPermit> {
        self.inner.acquire_download_permit().await
    }

    async fn get_file_term_data(
        &self,
        url_info: Box<dyn URLProvider>,
        download_permit: ConnectionPermit,
        progress_callback: Option<ProgressCallback>,
        uncompressed_size_if_known: Option<usize>,
    ) -> xet_client::error::Result<(Bytes, Vec<u32>)> {
        self.inner
            .get_file_term_data(
                url_info,
                download_permit,
                progress_callback,
                uncompressed_size_if_known,
            )
            .await
    }

    async fn query_for_global_dedup_shard(
        &self,
        prefix: &str,
        chunk_hash: &MerkleHash,
    ) -> xet_client::error::Result<Option<Bytes>> {
        self.inner
            .query_for_global_dedup_shard(prefix, chunk_hash)
            .await
    }

    async fn acquire_upload_permit(&self) -> xet_client::error::Result<ConnectionPermit> {
        self.inner.acquire_upload_permit().await
    }

    async fn upload_shard(
        &self,
        shard_data: Bytes,
        upload_permit: ConnectionPermit,
        progress_callback: Option<ShardUploadProgressCallback>,
    ) -> xet_client::error::Result<Option<MerkleHash>> {
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
    ) -> xet_client::error::Result<u64> {
        let held = compose::xorb_path(&self.xorb_dir, &serialized_xorb_object.hash).exists();
        let n = self
            .inner
            .upload_xorb(
                prefix,
                serialized_xorb_object,
                progress_callback,
                upload_permit,
            )
            .await?;
        if !held {
            self.added.fetch_add(n, Ordering::Relaxed);
        }
        Ok(n)
    }

    async fn get_file_chunk_hashes(
        &self,
        file_id: &MerkleHash,
        dirty_ranges: Vec<FileRange>,
    ) -> xet_client::error::Result<FileChunkHashesResponse> {
        self.inner
            .get_file_chunk_hashes(file_id, dirty_ranges)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upload_then_ranged_reads_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let ctx = XetContext::from_external(tokio::runtime::Handle::current(), xet_config());
        let cas = XetCas::open(ctx, &d.path().join("cas")).await.unwrap();
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let src = d.path().join("src");
        std::fs::write(&src, &data).unwrap();
        let res = cas
            .upload_batch(vec![UploadItem {
                path: &src,
                len: data.len() as u64,
            }])
            .await
            .unwrap();
        let up = res.into_iter().next().unwrap().unwrap();
        assert_eq!(up.id.size, data.len() as u64);
        assert!(up.new_bytes > 0);
        for r in [0..10u64, 1_000_000..1_004_096, 2_999_990..3_000_000] {
            let got = cas.read_range(&up.id, r.clone()).await.unwrap();
            assert_eq!(&got[..], &data[r.start as usize..r.end as usize]);
        }
        assert!(cas.read_range(&up.id, 0..3_000_001).await.is_err());
        // Re-uploading identical bytes dedups to the same identity and adds nothing.
        let again = crate::remote::testing::upload_one(&cas, &src, data.len() as u64).await;
        assert_eq!(again.id, up.id);
        assert_eq!(again.new_bytes, 0);
    }
}
