//! Which remote a store argument names, and opening it: a local store directory, or a bucket
//! `hf://buckets/NAMESPACE/NAME[/PATH]` on a Hub-compatible server. Every frontend (FUSE,
//! NFS) mounts what this opens.

use std::path::PathBuf;
use std::sync::Arc;

use xet_runtime::core::XetContext;

use super::http::repo::RepoUri;
use super::http::{find_token, BucketUri, RemoteOptions};
use super::local::{lock_store, LocalStore, StoreError};
use super::{Cas, Catalog, FixedOwner, RemoteError};

/// What to open and how.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Directory of the local store (created if missing or empty), or a bucket URI.
    pub store: PathBuf,
    /// For buckets: the Hub endpoint (default `$HF_ENDPOINT`, else https://huggingface.co).
    pub endpoint: Option<String>,
    /// For buckets: a file holding the token (default `$HF_TOKEN`, else the saved login).
    pub token_file: Option<PathBuf>,
    /// For buckets: where xet caches and (by default) staging live (default
    /// [`default_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// For buckets: disk for the chunk cache (0: none).
    pub chunk_cache_bytes: u64,
    /// For plain buckets: the owner every entry shows (default: the running user and group).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// For plain buckets: the permission bits every file and every directory shows.
    pub file_mode: u32,
    pub dir_mode: u32,
    /// Where staging files live (default: the store's or the cache directory's `staging`).
    pub staging_dir: Option<PathBuf>,
    /// Read-only was asked for: no write token is requested.
    pub read_only: bool,
    /// For repos: do not follow a branch.
    pub pin: bool,
}

/// A store opened for the VFS.
pub struct Opened {
    pub catalog: Arc<dyn Catalog>,
    pub cas: Arc<dyn Cas>,
    pub staging_dir: PathBuf,
    /// What is mounted: the store directory or the bucket URI.
    pub source: String,
    /// Read-only: asked for, or the token may not write.
    pub read_only: bool,
    /// A remote bucket, which other writers share (a local store is locked by this process).
    pub shared: bool,
    /// Keeps the store (or the staging directory) locked while it is held.
    pub hold: Box<dyn std::any::Any>,
}

/// Why a store could not be opened; each message is one sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    BadUri(String),
    #[error("{0}")]
    Token(String),
    #[error("cannot create the staging directory {}: {source}", dir.display())]
    StagingDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}", remote_sentence(.error, .what, .endpoint, *.anonymous))]
    Remote {
        error: RemoteError,
        /// What was opened: "bucket NAMESPACE/NAME", "model NAMESPACE/NAME", …
        what: String,
        endpoint: String,
        /// No token was found.
        anonymous: bool,
    },
}

/// Open the store `o.store` names.
pub async fn open(ctx: XetContext, o: &OpenOptions) -> Result<Opened, OpenError> {
    let store_arg = o.store.to_string_lossy().to_string();
    if store_arg.starts_with("hf://buckets/") {
        open_bucket(ctx, o, store_arg).await
    } else if store_arg.starts_with("hf://") {
        open_repo(ctx, o, store_arg).await
    } else {
        let store = LocalStore::open(&o.store, ctx).await?;
        let staging_dir = o
            .staging_dir
            .clone()
            .unwrap_or_else(|| store.default_staging_dir());
        let catalog: Arc<dyn Catalog> = store.catalog.clone();
        let cas: Arc<dyn Cas> = store.cas.clone();
        let source = store.root().display().to_string();
        Ok(Opened {
            catalog,
            cas,
            staging_dir,
            source,
            read_only: o.read_only,
            shared: false,
            hold: Box::new(store),
        })
    }
}

async fn open_bucket(
    ctx: XetContext,
    o: &OpenOptions,
    store_arg: String,
) -> Result<Opened, OpenError> {
    let uri = BucketUri::parse(&store_arg).map_err(OpenError::BadUri)?;
    let cache = o
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&uri.namespace, &uri.name));
    let RemoteSetup {
        endpoint,
        anonymous,
        staging_dir,
        lock,
        options,
    } = remote_setup(o, cache, !o.read_only)?;
    let opened = super::http::open(ctx, &uri, &options)
        .await
        .map_err(|error| OpenError::Remote {
            error,
            what: format!("bucket {}", uri.id()),
            endpoint: endpoint.clone(),
            anonymous,
        })?;
    let mut read_only = o.read_only;
    if !opened.writable && !read_only {
        read_only = true;
        if anonymous {
            tracing::warn!(
                "no token: bucket {} mounted read-only (writes fail with EROFS; pass a token that may write with --token-file or HF_TOKEN)",
                uri.id()
            );
        } else {
            tracing::warn!(
                "the token can read but not write bucket {}: mounted read-only (writes fail with EROFS)",
                uri.id()
            );
        }
    }
    let cas: Arc<dyn Cas> = opened.cas;
    Ok(Opened {
        catalog: opened.catalog,
        cas,
        staging_dir,
        source: store_arg,
        read_only,
        shared: true,
        hold: Box::new(lock),
    })
}

/// What opening a bucket or a repo starts with: the endpoint and token, and the staging
/// directory under the cache directory, locked.
struct RemoteSetup {
    endpoint: String,
    /// No token was found.
    anonymous: bool,
    staging_dir: PathBuf,
    lock: std::fs::File,
    options: RemoteOptions,
}

fn remote_setup(o: &OpenOptions, cache: PathBuf, write: bool) -> Result<RemoteSetup, OpenError> {
    let endpoint = o
        .endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok())
        .unwrap_or_else(|| "https://huggingface.co".to_string());
    let token = find_token(o.token_file.as_deref()).map_err(OpenError::Token)?;
    let staging_dir = o
        .staging_dir
        .clone()
        .unwrap_or_else(|| cache.join("staging"));
    std::fs::create_dir_all(&staging_dir).map_err(|source| OpenError::StagingDir {
        dir: staging_dir.clone(),
        source,
    })?;
    let lock = lock_store(&staging_dir)?;
    Ok(RemoteSetup {
        anonymous: token.is_none(),
        options: RemoteOptions {
            endpoint: endpoint.clone(),
            token,
            write,
            cache_dir: cache,
            chunk_cache_bytes: o.chunk_cache_bytes,
            owner: FixedOwner {
                // SAFETY: getuid/getgid cannot fail.
                uid: o.uid.unwrap_or_else(|| unsafe { libc::getuid() }),
                gid: o.gid.unwrap_or_else(|| unsafe { libc::getgid() }),
                file_mode: o.file_mode,
                dir_mode: o.dir_mode,
            },
        },
        endpoint,
        staging_dir,
        lock,
    })
}

/// `~/.cache/xetmount/<ns>/<name>` (or under `$XDG_CACHE_HOME`); a repo's `ns` is
/// `models+NS` (`datasets+NS`, …).
pub fn default_cache_dir(ns: &str, name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    base.join("xetmount").join(ns).join(name)
}

/// One sentence for a remote bucket or repo (`what`) that could not be opened.
fn remote_sentence(e: &RemoteError, what: &str, endpoint: &str, anonymous: bool) -> String {
    let bucket = what.strip_prefix("bucket ");
    match e {
        RemoteError::Unauthenticated(_) if anonymous => format!(
            "{what} on {endpoint} needs a token (it is private, or does not exist); pass one with --token-file or HF_TOKEN"
        ),
        RemoteError::NotFound(m) if m.starts_with(NO_REVISION) => {
            format!("{what} on {endpoint} has no {}", &m[NO_REVISION.len()..])
        }
        RemoteError::NotFound(_) => match bucket {
            Some(b) => format!(
                "{what} does not exist on {endpoint} (or your token cannot see it); create it with `hf buckets create {b}`"
            ),
            None => format!("{what} does not exist on {endpoint} (or your token cannot see it)"),
        },
        RemoteError::Unauthenticated(_) => format!(
            "{endpoint} refused the token for {what}; pass a valid one with --token-file or HF_TOKEN"
        ),
        RemoteError::PermissionDenied(_) => format!(
            "the token may not read {what} on {endpoint}; pass one with read access with --token-file or HF_TOKEN"
        ),
        RemoteError::Other(m) if m.contains("error sending request") || m.contains("connect") => {
            format!("cannot reach {endpoint}: {m}; check --endpoint / HF_ENDPOINT and the network")
        }
        e => format!("cannot open {what} on {endpoint}: {e}"),
    }
}

/// How a repo's missing revision (or folder) is told apart from a missing repo.
pub const NO_REVISION: &str = "no revision: ";

async fn open_repo(
    ctx: XetContext,
    o: &OpenOptions,
    store_arg: String,
) -> Result<Opened, OpenError> {
    let uri = RepoUri::parse(&store_arg).map_err(OpenError::BadUri)?;
    let (ns, name) = uri.id.split_once('/').unwrap_or_default();
    // `+` is in no name: a repo's cache never meets a bucket's.
    let cache = o
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&format!("{}+{ns}", uri.plural), name));
    // Nothing is staged, but the VFS keeps its (empty) staging area, locked as a bucket
    // mount's is, so two mounts of one cache directory do not share it.
    let RemoteSetup {
        endpoint,
        anonymous,
        staging_dir,
        lock,
        options,
    } = remote_setup(o, cache, false)?;
    let opened = super::http::repo::open(ctx, &uri, &options, o.pin)
        .await
        .map_err(|error| OpenError::Remote {
            error,
            what: uri.describe(),
            endpoint: endpoint.clone(),
            anonymous,
        })?;
    tracing::info!(
        "{} at {} (commit {}): read-only, writes fail with EROFS",
        uri.describe(),
        uri.revision,
        opened.commit
    );
    Ok(Opened {
        catalog: opened.catalog,
        cas: opened.cas,
        staging_dir,
        source: store_arg,
        read_only: true,
        shared: true,
        hold: Box::new(lock),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn remote_failures_read_as_one_sentence_naming_the_bucket() {
        let s = |e: RemoteError, anonymous| {
            OpenError::Remote {
                error: e,
                what: "bucket ns/b".into(),
                endpoint: "http://h".into(),
                anonymous,
            }
            .to_string()
        };
        let private = s(RemoteError::Unauthenticated("401".into()), true);
        assert!(
            private.starts_with("bucket ns/b on http://h needs a token"),
            "{private}"
        );
        let refused = s(RemoteError::Unauthenticated("401".into()), false);
        assert!(
            refused.starts_with("http://h refused the token for bucket ns/b"),
            "{refused}"
        );
        let missing = s(RemoteError::NotFound("x".into()), false);
        assert!(missing.contains("`hf buckets create ns/b`"), "{missing}");
        let down = s(RemoteError::Other("error sending request".into()), false);
        assert!(down.starts_with("cannot reach http://h: "), "{down}");
        let other = s(RemoteError::Quota("full".into()), false);
        assert_eq!(
            other,
            "cannot open bucket ns/b on http://h: quota exceeded: full"
        );
    }

    #[test]
    fn a_bad_uri_is_refused_before_anything_is_created() {
        let d = tempfile::tempdir().unwrap();
        let o = OpenOptions {
            store: PathBuf::from("hf://buckets/only-namespace"),
            endpoint: Some("http://127.0.0.1:1".into()),
            token_file: None,
            cache_dir: Some(d.path().join("cache")),
            chunk_cache_bytes: 0,
            uid: None,
            gid: None,
            file_mode: 0o644,
            dir_mode: 0o755,
            staging_dir: None,
            read_only: false,
            pin: false,
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ctx = XetContext::from_external(rt.handle().clone(), super::super::local::xet_config());
        let err = rt
            .block_on(open(ctx, &o))
            .err()
            .expect("a bad URI opens nothing");
        assert!(matches!(err, OpenError::BadUri(_)), "{err}");
        assert!(!d.path().join("cache").exists());
    }

    #[test]
    fn a_bucket_caches_under_its_namespace_and_name() {
        let uri = BucketUri::parse("hf://buckets/ns/b").unwrap();
        assert!(default_cache_dir(&uri.namespace, &uri.name).ends_with(Path::new("xetmount/ns/b")));
    }
}
