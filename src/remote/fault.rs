//! Failure injection for any remote: [`FaultyCatalog`] and [`FaultyCas`] wrap an
//! `Arc<dyn Catalog>` / `Arc<dyn Cas>` and pass every call through, except that the calls of a
//! kind (upload, compose, commit, read) can be made to fail N times with a chosen error, to
//! hang until released, or to take longer. Tests use them to check what a mount does when its
//! remote misbehaves; nothing in production builds them.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    cas_wire, names, Capabilities, Cas, Catalog, CatalogOp, Changes, ComposeEdit, Composed, Entry,
    FileId, RemoteError, RemoteResult, TreePage, UploadItem, Uploaded,
};

/// One kind of call: fails the next `n` calls with a given error, can hang them or delay
/// them. The fields are public so a test can read the count and flip the switches at any
/// moment.
#[derive(Default)]
pub struct Fault {
    /// Calls made so far.
    pub calls: AtomicU32,
    /// Bumped to let go of the calls hung so far.
    pub released: AtomicU32,
    /// Calls still to fail.
    pub remaining: AtomicU32,
    /// New calls hang until [`Fault::release`].
    pub hang: AtomicBool,
    /// Added to every call.
    pub delay_ms: AtomicU64,
    error: parking_lot::Mutex<Option<RemoteError>>,
}

impl Fault {
    /// New calls no longer hang, and those hung so far return.
    pub fn release(&self) {
        self.hang.store(false, Ordering::SeqCst);
        self.released.fetch_add(1, Ordering::SeqCst);
    }

    /// The next `n` calls fail with `e` (`n` = 0: none do).
    pub fn fail(&self, n: u32, e: RemoteError) {
        *self.error.lock() = Some(e);
        self.remaining.store(n, Ordering::SeqCst);
    }

    /// Calls made so far.
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Count the call, wait as told, and fail it if failures remain.
    pub async fn check(&self) -> RemoteResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        // A call made while `hang` is set stays hung until `release` (or forever).
        if self.hang.load(Ordering::SeqCst) {
            let r = self.released.load(Ordering::SeqCst);
            while self.released.load(Ordering::SeqCst) == r {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let took = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match took {
            Ok(_) => Err(self
                .error
                .lock()
                .clone()
                .unwrap_or_else(|| RemoteError::Other("injected failure".into()))),
            Err(_) => Ok(()),
        }
    }
}

/// The faults of one remote, by kind of call.
#[derive(Default)]
pub struct Faults {
    /// [`Cas::upload_batch`].
    pub upload: Fault,
    /// [`Cas::compose`].
    pub compose: Fault,
    /// [`Catalog::commit`] and [`Catalog::commit_carrying`].
    pub commit: Fault,
    /// [`Cas::read_range`].
    pub read: Fault,
}

/// Wrap a catalog and a CAS so that `faults` governs both.
pub fn wrap(
    catalog: Arc<dyn Catalog>,
    cas: Arc<dyn Cas>,
    faults: Arc<Faults>,
) -> (Arc<dyn Catalog>, Arc<dyn Cas>) {
    (
        Arc::new(FaultyCatalog {
            inner: catalog,
            faults: faults.clone(),
        }),
        Arc::new(FaultyCas { inner: cas, faults }),
    )
}

/// A [`Cas`] whose uploads, compositions and reads obey [`Faults`].
pub struct FaultyCas {
    pub inner: Arc<dyn Cas>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Cas for FaultyCas {
    async fn read_range(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes> {
        self.faults.read.check().await?;
        self.inner.read_range(id, range).await
    }
    async fn upload_batch(
        &self,
        items: Vec<UploadItem<'_>>,
    ) -> RemoteResult<Vec<RemoteResult<Uploaded>>> {
        self.faults.upload.check().await?;
        self.inner.upload_batch(items).await
    }
    async fn compose(&self, base: &FileId, edits: Vec<ComposeEdit>) -> RemoteResult<Composed> {
        self.faults.compose.check().await?;
        self.inner.compose(base, edits).await
    }
    async fn settle(&self, timeout: Duration) {
        self.inner.settle(timeout).await
    }
}

/// A [`Catalog`] whose commits obey [`Faults`]; everything else passes straight through.
pub struct FaultyCatalog {
    pub inner: Arc<dyn Catalog>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Catalog for FaultyCatalog {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn check_path(&self, path: &str) -> Result<(), names::BadPath> {
        self.inner.check_path(path)
    }
    async fn link_paths(&self, link: u64) -> RemoteResult<Vec<String>> {
        self.inner.link_paths(link).await
    }
    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
        self.inner.list_dir(dir).await
    }
    async fn list_tree(&self, dir: &str, cursor: Option<&str>) -> RemoteResult<Option<TreePage>> {
        self.inner.list_tree(dir, cursor).await
    }
    async fn head(&self, path: &str) -> RemoteResult<Option<Entry>> {
        self.inner.head(path).await
    }
    async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64> {
        self.faults.commit.check().await?;
        self.inner.commit(ops).await
    }
    async fn commit_carrying(
        &self,
        ops: Vec<CatalogOp>,
        uploads: Vec<cas_wire::Carried>,
    ) -> RemoteResult<u64> {
        self.faults.commit.check().await?;
        self.inner.commit_carrying(ops, uploads).await
    }
    async fn revision(&self) -> RemoteResult<u64> {
        self.inner.revision().await
    }
    async fn changes(&self, since: u64, wait: Duration) -> RemoteResult<Option<Changes>> {
        self.inner.changes(since, wait).await
    }
}
