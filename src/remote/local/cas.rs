//! Xet CAS of the local store, through xet-core's `LocalClient`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_client::{Client, LocalClient};
use xet_core_structures::merklehash::MerkleHash;
use xet_data::processing::configurations::TranslatorConfig;
use xet_runtime::config::XetConfig;
use xet_runtime::core::XetContext;
use xet_runtime::utils::ByteSize;

use super::compose;
use super::durable::Durable;
use super::reader::ChunkReader;
use crate::remote::xet::xet_err;
use crate::remote::{
    Cas, ComposeEdit, Composed, FileId, RemoteError, RemoteResult, UploadItem, Uploaded,
};

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
    /// Uploads and compositions run one at a time, so the xorb bytes each adds can be
    /// measured as the growth of `xorb_dir`.
    upload_lock: tokio::sync::Mutex<()>,
    reader: Arc<ChunkReader>,
    xorbs: crate::remote::xet::assemble::XorbSettings,
    durable: Durable,
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
        Ok(XetCas {
            durable: Durable::new(&client_dir),
            xorbs,
            reader: Arc::new(ChunkReader::new(client.clone(), xorb_dir.clone())),
            config: Arc::new(config.disable_progress_aggregation()),
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
        let results = crate::remote::xet::upload_files(self.config.clone(), &items).await?;
        drop(one_at_a_time);
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
        let before = xorb_bytes(&self.xorb_dir).await?;
        let bytes = Arc::new(compose::Base {
            reader: self.reader.clone(),
            id: base.clone(),
            hash: compose::parse_hash(&base.hash)?,
        });
        let c = crate::remote::xet::compose::compose(
            &self.xorbs,
            self.client.clone(),
            &self.chunk_map(),
            bytes,
            base,
            edits,
        )
        .await?;
        let after = xorb_bytes(&self.xorb_dir).await?;
        if c.id.size > 0 {
            let hash = compose::parse_hash(&c.id.hash)?;
            self.durable.bodies(self.client.as_ref(), [hash]).await?;
        }
        Ok(Composed {
            id: c.id,
            new_bytes: after.saturating_sub(before),
            base_bytes_read: c.base_bytes_read,
            dirty_chunk_bytes: c.dirty_chunk_bytes,
            terms: c.terms,
            whole_upload: false,
            carried: None,
        })
    }
}

/// Total size of the xorb files in `dir`.
async fn xorb_bytes(dir: &Path) -> RemoteResult<u64> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> RemoteResult<u64> {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut total = 0;
        for e in rd {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("default.") {
                total += e.metadata()?.len();
            }
        }
        Ok(total)
    })
    .await
    .map_err(RemoteError::other)?
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
        let again = cas
            .upload_batch(vec![UploadItem {
                path: &src,
                len: data.len() as u64,
            }])
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(again.id, up.id);
        assert_eq!(again.new_bytes, 0);
    }
}
