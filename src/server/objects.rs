//! Where `serve` can keep xorb and shard bytes (`--objects URL`): a local directory, or a
//! bucket of any S3-compatible store (`s3://BUCKET[/PREFIX]`; endpoint, region and
//! credentials from the usual `AWS_*` environment variables, `AWS_ENDPOINT_URL` for a store
//! other than AWS). Both sit behind `object_store`'s one interface; an S3 store also signs
//! URLs, so that clients move bytes straight to and from it (presigned ranged GETs for
//! reconstructions, presigned PUTs carrying a CRC64-NVME checksum for upload grants).
//!
//! Writes are whole-object and atomic in both (S3 PUTs; the directory writes a temporary file
//! and renames it): a reader never sees half an object.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::signer::{HeaderName, HeaderValue, Method, SignedUrlOptions, Signer};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::remote::{RemoteError, RemoteResult};

/// The checksum header of an upload grant's PUT (S3's name for it).
pub const CHECKSUM_HEADER: &str = "x-amz-checksum-crc64nvme";

pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// An S3 store: signs URLs for its objects (under `prefix`).
    signer: Option<(Arc<AmazonS3>, Path)>,
    /// For messages: the URL it was opened from.
    pub url: String,
}

fn err(what: &str, e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Other(format!("object store: {what}: {e}"))
}

/// The CRC64-NVME of `bytes`, as S3 wants it in [`CHECKSUM_HEADER`]: base64 of its 8
/// big-endian bytes.
pub fn crc64nvme_header(bytes: &[u8]) -> String {
    crc64nvme_value_header(crc64nvme(bytes))
}

/// The CRC64-NVME of `bytes` (what xet-core's upload grant requests carry, in decimal).
pub fn crc64nvme(bytes: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, bytes)
}

/// CRC64-NVME `crc` as S3 wants it in [`CHECKSUM_HEADER`].
pub fn crc64nvme_value_header(crc: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

impl Objects {
    /// Open `url`: `s3://BUCKET[/PREFIX]`, `file:///DIR` or a directory path (created if
    /// missing). The error is one sentence.
    pub fn open(url: &str) -> Result<Objects, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "{url:?} names no bucket; write s3://BUCKET[/PREFIX]"
                ));
            }
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                b = b
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_endpoint(endpoint);
            }
            let s3 = Arc::new(
                b.build()
                    .map_err(|e| format!("cannot use {url}: {e}; set AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"))?,
            );
            let prefix = Path::from(prefix.trim_matches('/'));
            let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
                s3.clone()
            } else {
                Arc::new(PrefixStore::new(s3.clone(), prefix.clone()))
            };
            return Ok(Objects {
                store,
                signer: Some((s3, prefix)),
                url: url.to_string(),
            });
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the object directory {dir}: {e}"))?;
        let fs = LocalFileSystem::new_with_prefix(FsPath::new(dir))
            .map_err(|e| format!("cannot use the object directory {dir}: {e}"))?;
        Ok(Objects {
            store: Arc::new(fs),
            signer: None,
            url: url.to_string(),
        })
    }

    /// Whether clients can be sent straight to the store (presigned URLs).
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// Store `bytes` at `key`, replacing what is there.
    pub async fn put(&self, key: &str, bytes: Bytes) -> RemoteResult<()> {
        self.store
            .put(&Path::from(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| err(key, e))
    }

    /// Store `bytes` at `key` unless an object is there already; returns whether it stored.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> RemoteResult<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&Path::from(key), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(err(key, e)),
        }
    }

    /// The whole object, if there is one.
    pub async fn get(&self, key: &str) -> RemoteResult<Option<Bytes>> {
        match self.store.get(&Path::from(key)).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|e| err(key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(key, e)),
        }
    }

    /// Bytes `range` of the object at `key`.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> RemoteResult<Bytes> {
        match self.store.get_range(&Path::from(key), range).await {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => Err(RemoteError::NotFound(key.into())),
            Err(e) => Err(err(key, e)),
        }
    }

    /// The object's size, if there is one.
    pub async fn size(&self, key: &str) -> RemoteResult<Option<u64>> {
        match self.store.head(&Path::from(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(key, e)),
        }
    }

    /// Copy object `from` to `to`, inside the store (an S3 CopyObject: no bytes pass here).
    pub async fn copy(&self, from: &str, to: &str) -> RemoteResult<()> {
        self.store
            .copy(&Path::from(from), &Path::from(to))
            .await
            .map_err(|e| err(from, e))
    }

    /// Remove the object (absent already is fine).
    pub async fn delete(&self, key: &str) -> RemoteResult<()> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(err(key, e)),
        }
    }

    /// Keys and sizes of the objects under `prefix/`, in no set order.
    pub async fn list(&self, prefix: &str) -> RemoteResult<Vec<(String, u64)>> {
        let p = Path::from(prefix);
        self.store
            .list(Some(&p))
            .map_ok(|m| (m.location.to_string(), m.size))
            .try_collect()
            .await
            .map_err(|e| err(prefix, e))
    }

    /// Keys of the objects under `prefix/` last written before `before`, in no set order.
    pub async fn list_older(
        &self,
        prefix: &str,
        before: chrono::DateTime<chrono::Utc>,
    ) -> RemoteResult<Vec<String>> {
        let p = Path::from(prefix);
        self.store
            .list(Some(&p))
            .try_filter_map(|m| async move {
                Ok((m.last_modified < before).then(|| m.location.to_string()))
            })
            .try_collect()
            .await
            .map_err(|e| err(prefix, e))
    }

    fn full(&self, key: &str) -> Option<(&AmazonS3, Path)> {
        let (s3, prefix) = self.signer.as_ref()?;
        let path = if prefix.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{prefix}/{key}"))
        };
        Some((s3, path))
    }

    /// A URL anyone holding it may GET (with a `Range`) for `ttl`: `None` when the store
    /// cannot sign (a directory; the server answers such reads itself).
    pub async fn presigned_get(&self, key: &str, ttl: Duration) -> RemoteResult<Option<String>> {
        let Some((s3, path)) = self.full(key) else {
            return Ok(None);
        };
        s3.signed_url(Method::GET, &path, ttl)
            .await
            .map(|u| Some(u.to_string()))
            .map_err(|e| err(key, e))
    }

    /// A URL anyone holding it may PUT `key` with for `ttl`, and the headers the PUT must
    /// carry: the body's CRC64-NVME (`crc_header`, from [`crc64nvme_header`]), signed into
    /// the URL so the store refuses a body that does not match it. `None` when the store
    /// cannot sign.
    pub async fn presigned_put(
        &self,
        key: &str,
        ttl: Duration,
        crc_header: &str,
    ) -> RemoteResult<Option<(String, Vec<(String, String)>)>> {
        let Some((s3, path)) = self.full(key) else {
            return Ok(None);
        };
        let value = HeaderValue::from_str(crc_header).map_err(|e| err(key, e))?;
        let opts = SignedUrlOptions::default()
            .with_signed_header(HeaderName::from_static(CHECKSUM_HEADER), value);
        let url = s3
            .signed_url_opts(Method::PUT, &path, ttl, &opts)
            .await
            .map_err(|e| err(key, e))?;
        Ok(Some((
            url.to_string(),
            vec![(CHECKSUM_HEADER.to_string(), crc_header.to_string())],
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_header_is_s3s_encoding() {
        // The CRC-64/NVME check value of "123456789" is 0xAE8B14860A799888.
        assert_eq!(crc64nvme_header(b"123456789"), "rosUhgp5mIg=");
    }
}
