//! File bodies of a remote bucket, through xet-core's `RemoteClient` against the CAS the
//! bucket's token route names, with CAS tokens fetched (and refreshed before they expire)
//! from that route.
//!
//! Compositions are not yet done remotely: `compose` reads the base, applies the edits and
//! uploads the result whole (content-defined chunking still stores only the changed chunks;
//! the cost is reading the base). `compose_fallbacks` counts them.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use xet_client::cas_client::auth::{AuthConfig, AuthError, TokenInfo, TokenRefresher};
use xet_client::cas_client::Client;
use xet_client::cas_types::FileRange;
use xet_core_structures::merklehash::MerkleHash;
use xet_data::file_reconstruction::FileReconstructor;
use xet_data::processing::configurations::{SessionContext, TranslatorConfig};
use xet_data::processing::create_remote_client;
use xet_runtime::core::XetContext;

use super::hub::Hub;
use crate::remote::{
    Cas, ComposeEdit, Composed, FileId, RemoteError, RemoteResult, UploadItem, Uploaded,
};

/// Fetches CAS tokens from the bucket's token route.
struct HubTokens {
    hub: Arc<Hub>,
    write: bool,
}

#[async_trait]
impl TokenRefresher for HubTokens {
    async fn refresh(&self) -> Result<TokenInfo, AuthError> {
        let (_, tok, exp) = self
            .hub
            .cas_token(self.write)
            .await
            .map_err(AuthError::token_refresh_failure)?;
        Ok((tok, exp))
    }
}

pub struct HttpCas {
    ctx: XetContext,
    config: Arc<TranslatorConfig>,
    client: Arc<dyn Client>,
    staging: PathBuf,
    /// Compositions done by reading the base and uploading the result whole.
    pub compose_fallbacks: AtomicU64,
}

fn xet_err(e: impl std::fmt::Display) -> RemoteError {
    let s = e.to_string();
    if s.contains("401")
        || s.contains("403")
        || s.contains("Unauthorized")
        || s.contains("Forbidden")
    {
        RemoteError::PermissionDenied(s)
    } else if s.contains("413") || s.contains("507") {
        RemoteError::Quota(s)
    } else if s.contains("429") {
        RemoteError::RateLimited(s)
    } else {
        RemoteError::Other(format!("xet: {s}"))
    }
}

/// A `Write` into a shared buffer (the reconstructor wants an owned writer).
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl HttpCas {
    /// Connect to the CAS of the bucket `hub` names; `cache` holds xet-core's shard cache and
    /// the scratch files of composed uploads.
    pub async fn open(
        ctx: XetContext,
        hub: Arc<Hub>,
        write: bool,
        cache: &Path,
    ) -> RemoteResult<Self> {
        let (cas_url, tok, exp) = hub.cas_token(write).await?;
        std::fs::create_dir_all(cache)?;
        let refresher: Arc<dyn TokenRefresher> = Arc::new(HubTokens { hub, write });
        let session_id = uuid::Uuid::now_v7().to_string();
        let session = SessionContext {
            endpoint: cas_url,
            auth: AuthConfig::maybe_new(Some(tok), Some(exp), Some(refresher)),
            custom_headers: None,
            repo_paths: vec!["".into()],
            session_id: Some(session_id.clone()),
            cache_root: Some(cache.join("xet")),
        };
        let config = Arc::new(
            TranslatorConfig::new(&ctx, session)
                .map_err(xet_err)?
                .disable_progress_aggregation(),
        );
        let client = create_remote_client(&config, &session_id, false)
            .await
            .map_err(xet_err)?;
        let staging = cache.join("compose");
        std::fs::create_dir_all(&staging)?;
        Ok(HttpCas {
            ctx,
            config,
            client,
            staging,
            compose_fallbacks: AtomicU64::new(0),
        })
    }
}

impl HttpCas {
    /// Append bytes `range` of `base` to `f`; returns how many.
    async fn copy_base(
        &self,
        base: &FileId,
        range: Range<u64>,
        f: &mut std::fs::File,
    ) -> RemoteResult<u64> {
        let mut pos = range.start;
        while pos < range.end {
            let end = (pos + (16 << 20)).min(range.end);
            let bytes = self.read_range(base, pos..end).await?;
            f.write_all(&bytes)?;
            pos = end;
        }
        Ok(range.end - range.start)
    }
}

#[async_trait]
impl Cas for HttpCas {
    async fn read_range(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes> {
        if !crate::remote::xet::check_read(id, &range)? {
            return Ok(Bytes::new());
        }
        let hash = MerkleHash::from_hex(&id.hash)
            .map_err(|e| RemoteError::Other(format!("bad file hash {}: {e}", id.hash)))?;
        let sink = Sink::default();
        FileReconstructor::new(&self.ctx, &self.client, hash)
            .with_byte_range(FileRange::new(range.start, range.end))
            .reconstruct_to_writer(sink.clone())
            .await
            .map_err(xet_err)?;
        let out = std::mem::take(&mut *sink.0.lock());
        let want = range.end - range.start;
        if out.len() as u64 != want {
            return Err(RemoteError::Integrity(format!(
                "read {range:?} of {} returned {} bytes, expected {want}",
                id.hash,
                out.len()
            )));
        }
        Ok(Bytes::from(out))
    }

    async fn upload_batch(
        &self,
        items: Vec<UploadItem<'_>>,
    ) -> RemoteResult<Vec<RemoteResult<Uploaded>>> {
        crate::remote::xet::upload_files(self.config.clone(), &items).await
    }

    async fn compose(&self, base: &FileId, edits: Vec<ComposeEdit>) -> RemoteResult<Composed> {
        // The new body, written out: base pieces between the edits, and the edits.
        let path = self.staging.join(uuid::Uuid::now_v7().to_string());
        let result = async {
            let mut f = std::fs::File::create(&path)?;
            let mut at = 0u64;
            let mut read = 0u64;
            for e in &edits {
                read += self
                    .copy_base(base, at..e.original_range.start, &mut f)
                    .await?;
                f.write_all(&e.data)?;
                at = e.original_range.end;
            }
            read += self.copy_base(base, at..base.size, &mut f).await?;
            f.sync_all()?;
            let len = f.metadata()?.len();
            let up = self
                .upload_batch(vec![UploadItem { path: &path, len }])
                .await?
                .remove(0)?;
            self.compose_fallbacks.fetch_add(1, Ordering::Relaxed);
            Ok::<Composed, RemoteError>(Composed {
                id: up.id,
                new_bytes: up.new_bytes,
                base_bytes_read: read,
                dirty_chunk_bytes: edits.iter().map(|e| e.data.len() as u64).sum(),
                terms: 0,
            })
        }
        .await;
        let _ = std::fs::remove_file(&path);
        result
    }
}
