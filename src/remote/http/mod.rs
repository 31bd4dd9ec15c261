//! A remote bucket over HTTP: `hf://buckets/NS/NAME[/PREFIX]` on a Hugging Face endpoint or on
//! `xetmount serve`. The namespace goes through the endpoint's catalog routes (hub.rs,
//! catalog.rs), file bodies through the Xet CAS its token route names (cas.rs).

pub mod cas;
pub mod catalog;
pub mod chunk_cache;
pub mod hub;
pub mod plain;
pub mod plan;
pub mod planned;
pub mod repo;
mod room;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Send a request and record its latency and status under `route` (the metrics' purpose
/// label).
pub(crate) trait SendTimed {
    fn send_timed(
        self,
        route: &'static str,
    ) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send;
}

impl SendTimed for reqwest::RequestBuilder {
    async fn send_timed(self, route: &'static str) -> reqwest::Result<reqwest::Response> {
        let started = std::time::Instant::now();
        let answer = self.send().await;
        crate::telemetry::timings().remote(
            route,
            answer.as_ref().ok().map(|r| r.status().as_u16()),
            started.elapsed(),
        );
        answer
    }
}

use xet_runtime::core::XetContext;

use crate::remote::{Catalog, CatalogOp, Entry, FixedOwner, Meta, RemoteError, RemoteResult};

/// A parsed `hf://buckets/NS/NAME[/PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketUri {
    pub namespace: String,
    pub name: String,
    pub prefix: String,
}

impl BucketUri {
    /// `Err` is one sentence saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let usage = "write it as hf://buckets/NAMESPACE/NAME[/PATH]";
        let body = s
            .strip_prefix("hf://buckets/")
            .ok_or_else(|| format!("{s} is not a bucket URI; {usage}"))?;
        let body = body.trim_matches('/');
        let mut parts = body.splitn(3, '/');
        let ns = parts.next().unwrap_or("");
        let name = parts.next().unwrap_or("");
        let prefix = parts.next().unwrap_or("");
        let ok = |x: &str| super::names::valid_bucket_name(x);
        if !ok(ns) || !ok(name) {
            return Err(format!(
                "{s} does not name a bucket (NAMESPACE/NAME); {usage}"
            ));
        }
        if prefix.split('/').any(|seg| seg == ".." || seg == ".") || prefix.contains("//") {
            return Err(format!("{s} has an invalid path after the bucket; {usage}"));
        }
        Ok(BucketUri {
            namespace: ns.to_string(),
            name: name.to_string(),
            prefix: prefix.to_string(),
        })
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The mounted sub-directory of a bucket (`""`: the whole bucket), no slashes at the ends:
/// maps mount paths to bucket paths and back.
#[derive(Clone, Debug)]
pub struct Prefix(String);

impl Prefix {
    pub fn new(prefix: &str) -> Self {
        Prefix(prefix.trim_matches('/').to_string())
    }

    /// The bucket path of mount path `path`.
    pub fn full(&self, path: &str) -> String {
        match (self.0.is_empty(), path.is_empty()) {
            (true, _) => path.to_string(),
            (false, true) => self.0.clone(),
            (false, false) => format!("{}/{path}", self.0),
        }
    }

    /// The mount path of bucket path `full`; `None` if it lies outside the prefix.
    pub fn local(&self, full: &str) -> Option<String> {
        if self.0.is_empty() {
            return Some(full.to_string());
        }
        match full.strip_prefix(&self.0)? {
            "" => Some(String::new()),
            rest => rest.strip_prefix('/').map(str::to_string),
        }
    }
}

/// Percent-encode a query value.
pub fn q(s: &str) -> String {
    crate::remote::wire::percent_encode(s, true)
}

/// Where a mount finds its token: `--token-file`, else `HF_TOKEN`, else the file
/// `huggingface_hub` saves (`$HF_HOME/token`, `~/.cache/huggingface/token`).
pub fn find_token(token_file: Option<&Path>) -> Result<Option<String>, String> {
    if let Some(p) = token_file {
        return std::fs::read_to_string(p)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| format!("cannot read the token file {}: {e}", p.display()));
    }
    if let Ok(t) = std::env::var("HF_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(Some(t.trim().to_string()));
        }
    }
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")));
    Ok(home
        .and_then(|h| std::fs::read_to_string(h.join("token")).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// How to reach a remote bucket and what to keep locally.
pub struct RemoteOptions {
    pub endpoint: String,
    pub token: Option<String>,
    pub write: bool,
    /// Holds the xet caches.
    pub cache_dir: PathBuf,
    /// Disk for the chunk cache (0: none).
    pub chunk_cache_bytes: u64,
    /// What entries of a plain bucket (which keeps no mode or owner) show.
    pub owner: FixedOwner,
}

/// An opened remote bucket.
pub struct OpenedBucket {
    pub catalog: Arc<dyn Catalog>,
    pub cas: Arc<cas::HttpCas>,
    /// Whether the token may write: false when writing was asked for but the server refused
    /// the write token (403) while it hands out a read token, or when it was not asked for.
    pub writable: bool,
}

/// Open bucket `uri`: its catalog and CAS. Asked to write with a token that may only read
/// (the write-token route answers 403, the read-token route a token), or with no token a
/// bucket anyone may read, the bucket opens read-only and [`OpenedBucket::writable`] says so;
/// an unknown token (401) fails.
pub async fn open(
    ctx: XetContext,
    uri: &BucketUri,
    o: &RemoteOptions,
) -> RemoteResult<OpenedBucket> {
    let hub = Arc::new(hub::Hub::new(&o.endpoint, o.token.clone(), &uri.id())?);
    let info = hub.info().await?;
    let open_cas = |write: bool| {
        cas::HttpCas::open(
            ctx.clone(),
            hub.clone(),
            write,
            &o.cache_dir,
            o.chunk_cache_bytes,
        )
    };
    // A token that may only read is refused writing with 403; no token at all, with 401.
    let (cas, writable) = match open_cas(o.write).await {
        Ok(cas) => (cas, o.write),
        Err(RemoteError::PermissionDenied(why)) if o.write => {
            tracing::debug!("write token refused ({why}); trying to read");
            (open_cas(false).await?, false)
        }
        Err(RemoteError::Unauthenticated(why)) if o.write && o.token.is_none() => {
            tracing::debug!("writing needs a token ({why}); trying to read");
            (open_cas(false).await?, false)
        }
        Err(e) => return Err(e),
    };
    if info.get("xetmount").is_none() {
        // A plain bucket: files only, with the mount's owner and modes.
        let catalog = plain::PlainCatalog::new(hub, &uri.prefix, o.owner);
        cas.official_routes_only();
        return Ok(OpenedBucket {
            catalog: Arc::new(catalog),
            cas: Arc::new(cas),
            writable,
        });
    }
    let catalog = catalog::HttpCatalog::new(hub.clone(), &uri.prefix);
    cas.carry_uploads_with_commits();
    if !uri.prefix.is_empty() && catalog.head("").await?.is_none() {
        if !writable {
            return Err(RemoteError::Other(format!(
                "the folder {} does not exist and a read-only mount cannot create it",
                uri.prefix
            )));
        }
        // Mounting a folder that does not exist yet creates it.
        catalog
            .commit(vec![CatalogOp::Put(Entry::dir(
                String::new(),
                Meta::now(0o755, 0, 0),
            ))])
            .await?;
    }
    Ok(OpenedBucket {
        catalog: Arc::new(catalog),
        cas: Arc::new(cas),
        writable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_uris_parse_or_say_what_is_wrong() {
        let u = BucketUri::parse("hf://buckets/alice/data/ckpt/run1/").unwrap();
        assert_eq!(
            (u.id(), u.prefix.as_str()),
            ("alice/data".into(), "ckpt/run1")
        );
        assert_eq!(BucketUri::parse("hf://buckets/a/b").unwrap().prefix, "");
        for bad in [
            "hf://bucket/a/b",
            "s3://x/y",
            "hf://buckets/a",
            "hf://buckets/a/b/../c",
            "hf://buckets/-a/b",
        ] {
            let e = BucketUri::parse(bad).unwrap_err();
            assert!(e.contains("hf://buckets/NAMESPACE/NAME"), "{bad}: {e}");
        }
    }
}
