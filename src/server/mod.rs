//! `xetmount serve`: hosts buckets and repos and speaks the protocols their clients need: the
//! Hugging Face bucket API (hub/), the repo API (repo_api/) and the Xet CAS API (cas.rs), on
//! one listener. Two deployments ([`Stores`]):
//!
//! - one directory on one machine (SQLite catalogs, xet-core's local CAS), laid out below;
//! - shared stores for any number of replicas: metadata in PostgreSQL (`pg/`: registry,
//!   catalogs, repos, the CAS index) and xorbs and shards in an object store
//!   (`store/object.rs`).
//!
//! Layout of the directory:
//!
//! ```text
//! <dir>/XETMOUNT_SERVE          marker with the format version
//! <dir>/server.db               bucket registry (visibility, creation and update times)
//! <dir>/buckets/<ns>/<name>/    one SQLite catalog per bucket
//! <dir>/repos.db                model, dataset and space repos: commits, refs, trees
//! <dir>/cas/                    the Xet CAS every bucket's bodies live in
//! <dir>/secret                  key for CAS tokens and fetch URLs (0600)
//! <dir>/lock                    flock'ed by the serving process
//! ```

// Route helpers return `Result<_, Response>` so a handler can answer an error with `?`-like
// early returns; the response is the error, and boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod buckets;
pub mod cas;
pub mod catalog;
pub mod extract;
pub mod hub;
pub mod limit;
pub mod metrics;
pub mod migrate;
pub mod native;
pub mod objects;
pub mod pg;
pub mod repo_api;
pub mod repos;
pub mod scope;
pub mod store;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use xet_runtime::core::XetContext;

use crate::remote::local::{lock_store, XetCas};
use store::ServedCas;

/// A handler's answer: `Err` is an early refusal, answered as it is.
pub type Answer = Result<axum::response::Response, axum::response::Response>;

const MARKER: &str = "XETMOUNT_SERVE";

/// How often a replica on shared stores collects abandoned uploads, and how old they must be:
/// twice the life of a grant URL, so an upload still allowed is never taken.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const COLLECT_GRACE: std::time::Duration = store::object::URL_TTL.saturating_mul(2);
pub const FORMAT_VERSION: u32 = 1;

/// Where a server keeps what it hosts.
pub enum Stores {
    /// One directory (see the module's documentation).
    Dir(PathBuf),
    /// PostgreSQL (a connection string) and an object store (`objects.rs`'s URL), shared
    /// by every replica started with the same two.
    Shared { catalog: String, objects: String },
}

pub struct ServeOptions {
    pub token_file: Option<PathBuf>,
    /// The user of an open server (no token file).
    pub user: String,
    /// Base URL clients reach this server at (default: http://<listen address>).
    pub public_url: String,
    pub cas_token_ttl_secs: u64,
    /// Bucket-API requests per second (0: unlimited).
    pub hub_rate_limit: u32,
    /// Leave out xetmount's own routes (catalog, chunk lists): a plain, Hub-like bucket.
    pub hub_only: bool,
}

/// Why `serve` could not start: one sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "{0} is neither empty nor a store made by `xetmount serve`; pass a new or empty directory"
    )]
    NotAServeStore(PathBuf),
    #[error("{path} was written by a newer xetmount (serve format {found}); upgrade xetmount")]
    Newer { path: PathBuf, found: u32 },
    #[error("cannot use {path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error(transparent)]
    Store(#[from] crate::remote::local::StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// A shared store could not be reached or set up: the sentence says which and why.
    #[error("{0}")]
    Shared(String),
}

pub struct Server {
    pub buckets: buckets::Buckets,
    pub repos: repos::Repos,
    pub cas: Arc<dyn ServedCas>,
    pub auth: auth::Auth,
    pub public_url: String,
    hub_rate_limit: u32,
    pub hub_only: bool,
    pub metrics: metrics::Metrics,
    /// The serve directory's lock, held while serving one.
    _lock: Option<File>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |e| ServeError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

impl Server {
    /// Open (or create) the stores. Must run inside the runtime `ctx` wraps.
    pub async fn open(
        stores: &Stores,
        ctx: XetContext,
        opts: ServeOptions,
    ) -> Result<Arc<Self>, ServeError> {
        match stores {
            Stores::Dir(root) => Self::open_dir(root, ctx, opts).await,
            Stores::Shared { catalog, objects } => Self::open_shared(catalog, objects, opts).await,
        }
    }

    async fn open_shared(
        catalog: &str,
        objects: &str,
        opts: ServeOptions,
    ) -> Result<Arc<Self>, ServeError> {
        let shared = |what: &str| {
            let what = what.to_string();
            move |e: crate::remote::RemoteError| ServeError::Shared(format!("{what}: {e}"))
        };
        let pool = pg::connect(catalog).await.map_err(ServeError::Shared)?;
        let feed_url = catalog.to_string();
        let registry = pg::PgBuckets::open(pool.clone())
            .await
            .map_err(shared("cannot set up the catalog database"))?;
        let key = registry
            .shared_secret()
            .await
            .map_err(shared("cannot read the signing key"))?;
        let repos = pg::PgRepos::open(pool.clone())
            .await
            .map_err(shared("cannot set up the repo tables"))?;
        let index = pg::CasIndex::open(pool)
            .await
            .map_err(shared("cannot set up the CAS index"))?;
        let objects = Arc::new(objects::Objects::open(objects).map_err(ServeError::Shared)?);
        let metrics = metrics::Metrics::default();
        let cas = Arc::new(store::object::ObjectCas::new(
            objects,
            index,
            metrics.verify_bytes.clone(),
        ));
        cas.spawn_collector(
            COLLECT_EVERY,
            COLLECT_GRACE,
            store::collect::Retention {
                unnamed: COLLECT_GRACE,
                uploaded: store::collect::CLIENT_SHARD_CACHE,
            },
        );
        let auth = auth::Auth::new(
            opts.token_file.as_deref(),
            opts.user,
            key,
            opts.cas_token_ttl_secs,
        )?;
        let server = Arc::new(Server {
            buckets: buckets::Buckets::new(Box::new(registry)),
            repos: repos::Repos::new(Box::new(repos)),
            cas,
            auth,
            public_url: opts.public_url.trim_end_matches('/').to_string(),
            hub_rate_limit: opts.hub_rate_limit,
            hub_only: opts.hub_only,
            metrics,
            _lock: None,
        });
        pg::feed::spawn(feed_url, Arc::new(FeedWaker(Arc::downgrade(&server))));
        Ok(server)
    }

    async fn open_dir(
        root: &Path,
        ctx: XetContext,
        opts: ServeOptions,
    ) -> Result<Arc<Self>, ServeError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let root = root.canonicalize().map_err(io(root))?;
        let marker = root.join(MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(text) => {
                let found: u32 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("format "))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| ServeError::NotAServeStore(root.clone()))?;
                if found > FORMAT_VERSION {
                    return Err(ServeError::Newer { path: root, found });
                }
            }
            Err(_) => {
                let empty = std::fs::read_dir(&root)
                    .map_err(io(&root))?
                    .next()
                    .is_none();
                if !empty {
                    return Err(ServeError::NotAServeStore(root));
                }
                std::fs::write(
                    &marker,
                    format!("xetmount serve store\nformat {FORMAT_VERSION}\n"),
                )
                .map_err(io(&root))?;
            }
        }
        let lock = lock_store(&root)?;
        let cas_root = root.join("cas");
        crate::remote::local::remove_crash_leftovers(&cas_root).map_err(io(&cas_root))?;
        let cas = XetCas::open(ctx, &cas_root)
            .await
            .map_err(|e| ServeError::Io {
                path: cas_root.clone(),
                detail: e.to_string(),
            })?;
        let buckets = buckets::sqlite::SqliteBuckets::open(&root).map_err(|e| ServeError::Io {
            path: root.join("server.db"),
            detail: e.to_string(),
        })?;
        let repos = repos::sqlite::SqliteRepos::open(&root).map_err(|e| ServeError::Io {
            path: root.join("repos.db"),
            detail: e.to_string(),
        })?;
        let auth = auth::Auth::new(
            opts.token_file.as_deref(),
            opts.user,
            auth::load_or_create_secret(&root.join("secret"))?,
            opts.cas_token_ttl_secs,
        )?;
        Ok(Arc::new(Server {
            buckets: buckets::Buckets::new(Box::new(buckets)),
            repos: repos::Repos::new(Box::new(repos)),
            cas: Arc::new(cas),
            auth,
            public_url: opts.public_url.trim_end_matches('/').to_string(),
            hub_rate_limit: opts.hub_rate_limit,
            hub_only: opts.hub_only,
            metrics: metrics::Metrics::default(),
            _lock: Some(lock),
        }))
    }
}

/// Wakes this replica's change-feed readers when any replica commits.
struct FeedWaker(std::sync::Weak<Server>);

impl pg::feed::Listener for FeedWaker {
    fn committed(&self, bucket: &str, revision: u64) {
        let Some(s) = self.0.upgrade() else { return };
        if revision == 0 {
            // Gone: readers of the old catalog look again (and find it gone); the name opens
            // afresh next time.
            if let Some(b) = s.buckets.forget_opened(bucket) {
                b.committed.send_modify(|_| {});
            }
        } else if let Some(b) = s.buckets.opened(bucket) {
            b.announce(revision);
        }
    }

    fn resync(&self) {
        let Some(s) = self.0.upgrade() else { return };
        for b in s.buckets.all_opened() {
            b.committed.send_modify(|_| {});
        }
    }
}

/// Every route of both protocols.
pub fn router(state: Arc<Server>) -> Router {
    let b = "/api/buckets/{ns}/{name}";
    let limit = state.hub_rate_limit;
    let mut r = Router::new()
        // Hub: bucket API.
        .route("/api/buckets/{ns}", get(hub::list))
        .route(b, get(hub::info).post(hub::create).delete(hub::delete))
        .route(&format!("{b}/settings"), axum::routing::put(hub::settings))
        .route(&format!("{b}/tree"), get(hub::tree_root))
        .route(&format!("{b}/tree/{{*prefix}}"), get(hub::tree))
        .route(&format!("{b}/paths-info"), post(hub::paths_info))
        .route(&format!("{b}/batch"), post(hub::batch))
        .route(&format!("{b}/xet-read-token"), get(hub::read_token))
        .route(&format!("{b}/xet-write-token"), get(hub::write_token))
        .route("/api/repos/move", post(hub::move_repo))
        .route(
            "/buckets/{ns}/{name}/resolve/{*path}",
            get(hub::resolve).head(hub::resolve),
        )
        // CAS.
        .route("/v2/reconstructions/{file}", get(cas::reconstruction_v2))
        .route("/v1/reconstructions/{file}", get(cas::reconstruction_v1))
        .route("/fetch/{xorb}", get(cas::fetch))
        .route("/v1/chunks/{prefix}/{chunk}", get(cas::dedup))
        .route("/v1/xorb-grants/{prefix}/{xorb}", post(cas::grant))
        .route(
            "/v1/xorb-commits/{prefix}/{xorb}/grant/{id}",
            post(cas::commit_grant),
        )
        .route("/v1/xorbs/{prefix}/{xorb}", post(cas::upload_xorb))
        .route("/v2/shards", post(cas::shard_v2))
        .route("/v1/shards", post(cas::shard_v1))
        .route("/v2/file-chunk-hashes/{file}", get(cas::file_chunk_hashes))
        .route("/v1/telemetry", post(cas::telemetry));
    r = repo_api::routes(r);
    if !state.hub_only {
        r = r
            // xetmount's own catalog routes.
            .route(&format!("{b}/xetmount/list"), get(native::list))
            .route(&format!("{b}/xetmount/tree"), get(native::tree))
            .route(&format!("{b}/xetmount/head"), get(native::head))
            .route(&format!("{b}/xetmount/links"), get(native::link_paths))
            .route(&format!("{b}/xetmount/revision"), get(native::revision))
            .route(&format!("{b}/xetmount/changes"), get(native::changes))
            .route(&format!("{b}/xetmount/commit"), post(native::commit))
            .route("/v1/xetmount/chunks/{file}", get(cas::chunk_lists));
    }
    // Xorbs are up to 64 MiB, shards a few MiB; NDJSON batches of 1,000 ops are small.
    let r = r
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .route("/v1/xetmount/metrics", get(metrics::render))
        .layer(DefaultBodyLimit::max(80 << 20))
        .with_state(state);
    if limit == 0 {
        return r;
    }
    r.layer(axum::middleware::from_fn_with_state(
        Arc::new(limit::RateLimit::new(limit)),
        limit::limit,
    ))
}

/// Serve on `listener` until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Arc<Server>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::local::durable::tests::{assert_cleaned, plant};
    use crate::remote::local::xet_config;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_startup_removes_what_a_crash_left() {
        let d = tempfile::tempdir().unwrap();
        let stores = Stores::Dir(d.path().to_path_buf());
        let open = || {
            Server::open(
                &stores,
                XetContext::from_external(tokio::runtime::Handle::current(), xet_config()),
                ServeOptions {
                    token_file: None,
                    user: "u".into(),
                    public_url: "http://127.0.0.1:1".into(),
                    cas_token_ttl_secs: 60,
                    hub_rate_limit: 0,
                    hub_only: false,
                },
            )
        };
        drop(open().await.unwrap());
        plant(&d.path().join("cas"));
        let _server = open().await.unwrap();
        assert_cleaned(&d.path().join("cas"));
    }
}
