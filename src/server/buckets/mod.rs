//! The buckets a server hosts: a registry (id, visibility, creation and update times) and a
//! catalog per bucket. Every bucket's bodies live in the server's one CAS.
//!
//! Bodies are shared, but what a caller may read is not (see `scope.rs`): the registry also
//! records, per file body (xet hash), the buckets it was uploaded to (a shard accepted under
//! a write token for the bucket) or committed in. An upload record stands for itself; a
//! commit record only says where to look, since the file may be gone since. Records go with
//! their bucket.
//!
//! Two stores keep all this ([`BucketStore`]): [`sqlite`] (`server.db` and a SQLite catalog
//! per bucket in the serve directory) and `pg::PgBuckets` (shared tables in PostgreSQL, for
//! several replicas).

pub mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::remote::RemoteResult;
use crate::server::catalog::ServedCatalog;

/// One hosted bucket.
pub struct Bucket {
    pub id: String,
    pub catalog: Arc<dyn ServedCatalog>,
    /// Held while a batch is validated and applied: batches of one bucket run one at a time.
    pub batch_lock: tokio::sync::Mutex<()>,
    /// The revision of the last commit seen by this server (its own, or another replica's
    /// announced through the database): change-feed readers wait on it.
    pub committed: tokio::sync::watch::Sender<u64>,
}

impl Bucket {
    /// Apply `ops` all or none, and wake whoever waits for a change.
    pub async fn commit(&self, ops: Vec<crate::remote::CatalogOp>) -> RemoteResult<u64> {
        let rev = self.catalog.commit(ops).await?;
        self.announce(rev);
        Ok(rev)
    }

    /// Revision `rev` was committed (here or on another replica): wake the readers, unless
    /// they have seen a later one (announcements from replicas may come out of order).
    pub fn announce(&self, rev: u64) {
        self.committed.send_if_modified(|r| {
            let newer = rev > *r;
            *r = (*r).max(rev);
            newer
        });
    }
}

#[derive(Clone, Debug)]
pub struct BucketInfo {
    pub id: String,
    pub private: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Where the registry and the catalogs are kept.
#[async_trait]
pub trait BucketStore: Send + Sync {
    async fn info(&self, id: &str) -> RemoteResult<Option<BucketInfo>>;
    /// Create bucket `id`; `false` if it exists.
    async fn create(&self, id: &str, private: bool) -> RemoteResult<bool>;
    /// At most `limit` buckets of namespace `ns` whose names contain `search` and whose ids
    /// come after `after`, in id order: a page of a listing that stays exact whatever is
    /// created or deleted between pages.
    async fn list_page(
        &self,
        ns: &str,
        search: &str,
        after: &str,
        limit: usize,
    ) -> RemoteResult<Vec<BucketInfo>>;
    /// At most `limit` buckets of every namespace whose ids come after `after`, in id order.
    async fn all_page(&self, after: &str, limit: usize) -> RemoteResult<Vec<BucketInfo>>;
    /// Bucket `info.id` as given (visibility and times), replacing what is there: a migration.
    async fn import(&self, info: &BucketInfo) -> RemoteResult<()>;
    /// The body records of bucket `id`: (hash, uploaded).
    async fn hash_records(&self, id: &str) -> RemoteResult<Vec<(String, bool)>>;
    /// Record that bodies `hashes` were uploaded to (`uploaded`) or committed in bucket `id`.
    async fn note_hashes(&self, id: &str, hashes: &[&str], uploaded: bool) -> RemoteResult<()>;
    /// Whether body `hash` was uploaded to bucket `id`.
    async fn was_uploaded(&self, id: &str, hash: &str) -> RemoteResult<bool>;
    /// The buckets body `hash` was uploaded to or committed in.
    async fn buckets_with(&self, hash: &str) -> RemoteResult<Vec<String>>;
    async fn set_private(&self, id: &str, private: bool) -> RemoteResult<()>;
    /// Record a change of bucket `id` now.
    async fn touch(&self, id: &str) -> RemoteResult<()>;
    /// Drop the hash records of owner `key` (a deleted repo's).
    async fn forget(&self, key: &str) -> RemoteResult<()>;
    /// Delete bucket `id`, its hash records and its catalog; `false` if it does not exist.
    async fn delete(&self, id: &str) -> RemoteResult<bool>;
    /// Rename bucket `from` to `to` (which must not exist), with its records and catalog;
    /// `false` if `from` is missing.
    async fn rename(&self, from: &str, to: &str) -> RemoteResult<bool>;
    /// The catalog of bucket `id` (which must exist).
    async fn open_catalog(&self, id: &str) -> RemoteResult<Arc<dyn ServedCatalog>>;
}

/// The registry, with each bucket's catalog opened once.
pub struct Buckets {
    store: Box<dyn BucketStore>,
    open: Mutex<HashMap<String, Arc<Bucket>>>,
}

impl std::ops::Deref for Buckets {
    type Target = dyn BucketStore;
    fn deref(&self) -> &Self::Target {
        self.store.as_ref()
    }
}

impl Buckets {
    pub fn new(store: Box<dyn BucketStore>) -> Self {
        Buckets {
            store,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Buckets of namespace `ns` whose name contains `search`, in id order.
    pub async fn list(&self, ns: &str, search: &str) -> RemoteResult<Vec<BucketInfo>> {
        self.store.list_page(ns, search, "", usize::MAX).await
    }

    pub async fn delete(&self, id: &str) -> RemoteResult<bool> {
        self.open.lock().remove(id);
        let gone = self.store.delete(id).await;
        self.open.lock().remove(id);
        gone
    }

    pub async fn rename(&self, from: &str, to: &str) -> RemoteResult<bool> {
        self.open.lock().remove(from);
        let moved = self.store.rename(from, to).await;
        // A lookup racing the rename may have reopened either name's old catalog.
        let mut open = self.open.lock();
        open.remove(from);
        open.remove(to);
        moved
    }

    /// The open catalog of bucket `id` (which must exist).
    pub async fn bucket(&self, id: &str) -> RemoteResult<Arc<Bucket>> {
        if let Some(b) = self.open.lock().get(id) {
            return Ok(b.clone());
        }
        let catalog = self.store.open_catalog(id).await?;
        let b = Arc::new(Bucket {
            id: id.to_string(),
            catalog,
            batch_lock: tokio::sync::Mutex::new(()),
            committed: tokio::sync::watch::Sender::new(0),
        });
        Ok(self.open.lock().entry(id.to_string()).or_insert(b).clone())
    }

    /// Bucket `id` if this server has its catalog open (for change announcements).
    pub fn opened(&self, id: &str) -> Option<Arc<Bucket>> {
        self.open.lock().get(id).cloned()
    }

    /// Stop keeping bucket `id` open (another replica deleted or renamed it); what was kept.
    pub fn forget_opened(&self, id: &str) -> Option<Arc<Bucket>> {
        self.open.lock().remove(id)
    }

    /// Every bucket whose catalog this server has open.
    pub fn all_opened(&self) -> Vec<Arc<Bucket>> {
        self.open.lock().values().cloned().collect()
    }
}
