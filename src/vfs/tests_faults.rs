//! Fault injection behind the remote traits: uploads, compositions, commits and reads that
//! fail N times or hang, wrapped around a real local store. Every case checks the errno the
//! user sees, that the data stays dirty and is retried to success, and the content after a
//! remount.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::remote::{
    CatalogOp, ComposeEdit, Composed, Entry, FileId, RemoteError, RemoteResult, UploadItem,
    Uploaded,
};

/// Fails the next `n` calls of a kind with a given error; can also hang them.
#[derive(Default)]
struct Fault {
    remaining: AtomicU32,
    hang: AtomicBool,
    /// Added to every call.
    delay_ms: std::sync::atomic::AtomicU64,
    error: parking_lot::Mutex<Option<RemoteError>>,
}

impl Fault {
    fn fail(&self, n: u32, e: RemoteError) {
        *self.error.lock() = Some(e);
        self.remaining.store(n, Ordering::SeqCst);
    }

    async fn check(&self) -> RemoteResult<()> {
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.hang.load(Ordering::SeqCst) {
            futures::future::pending::<()>().await;
        }
        let took = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match took {
            Ok(_) => Err(self.error.lock().clone().expect("an error to inject")),
            Err(_) => Ok(()),
        }
    }
}

#[derive(Default)]
struct Faults {
    upload: Fault,
    compose: Fault,
    commit: Fault,
    read: Fault,
}

struct FaultyCas {
    inner: Arc<dyn Cas>,
    faults: Arc<Faults>,
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
}

struct FaultyCatalog {
    inner: Arc<dyn Catalog>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Catalog for FaultyCatalog {
    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
        self.inner.list_dir(dir).await
    }
    async fn head(&self, path: &str) -> RemoteResult<Option<Entry>> {
        self.inner.head(path).await
    }
    async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64> {
        self.faults.commit.check().await?;
        self.inner.commit(ops).await
    }
    async fn revision(&self) -> RemoteResult<u64> {
        self.inner.revision().await
    }
}

struct Faulty {
    m: Mounted,
    faults: Arc<Faults>,
}

async fn mount_faulty(dir: &Path) -> Faulty {
    let faults = Arc::new(Faults::default());
    let f = faults.clone();
    let m = mount_with(
        dir,
        |c| c.read_timeout = Duration::from_millis(300),
        move |catalog, cas| {
            let catalog: Arc<dyn Catalog> = Arc::new(FaultyCatalog {
                inner: catalog,
                faults: f.clone(),
            });
            let cas: Arc<dyn Cas> = Arc::new(FaultyCas {
                inner: cas,
                faults: f,
            });
            (catalog, cas)
        },
    )
    .await;
    Faulty { m, faults }
}

/// Poll (on the mount's own counters, not on time) until the background flusher has failed
/// at least `n` times.
async fn until_failures(v: &Vfs, n: u64) {
    for _ in 0..5000 {
        if v.stats().flush_failures >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the flusher never failed {n} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_uploads_surface_at_fsync_and_close_and_are_retried() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let v = &f.m.vfs;
    // fsync reports the store's answer itself.
    f.faults
        .upload
        .fail(1, RemoteError::Quota("bucket full".into()));
    let data = pattern(500_000, 1);
    let ino = write_file(v, ROOT_INO, "a", &data).await;
    assert_eq!(v.fsync(ino).await.unwrap_err(), Errno(libc::ENOSPC));
    assert!(
        v.dirty_inodes().contains(&ino),
        "a failure cleared dirty data"
    );
    v.fsync(ino).await.unwrap();

    // A background failure is reported by the next close of the file.
    f.faults
        .upload
        .fail(3, RemoteError::RateLimited("slow down".into()));
    let before = v.stats().flush_failures;
    let ino_b = write_file(v, ROOT_INO, "b", b"second file").await;
    until_failures(v, before + 1).await;
    let o = v.open(ino_b, false, false).await.unwrap();
    assert_eq!(v.close(o.fh).await.unwrap_err(), Errno(libc::EAGAIN));
    v.release(o.fh).unwrap();
    // fsync answers with the store's current error...
    assert_eq!(v.fsync(ino_b).await.unwrap_err(), Errno(libc::EAGAIN));
    // ...and the flusher's backoff keeps retrying until the store accepts the file.
    for _ in 0..5000 {
        if !v.dirty_inodes().contains(&ino_b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        !v.dirty_inodes().contains(&ino_b),
        "never retried to success"
    );
    v.fsync(ino_b).await.unwrap();

    let m = remount(f.m, &dir).await;
    assert_eq!(read_all(&m.vfs, "a").await, data);
    assert_eq!(read_all(&m.vfs, "b").await, b"second file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_compositions_and_commits_keep_the_edit() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let v = &f.m.vfs;
    let mut model = pattern(2_000_000, 2);
    let ino = write_file(v, ROOT_INO, "f", &model).await;
    v.fsync(ino).await.unwrap();
    let m = remount(f.m, &dir).await;
    drop(m);
    let f = mount_faulty(&dir).await;
    let v = &f.m.vfs;
    let ino = resolve(v, "f").await.unwrap();
    let o = v.open(ino, true, false).await.unwrap();
    v.write(o.fh, 700_000, vec![0xC3; 3000]).await.unwrap();
    model[700_000..703_000].fill(0xC3);
    v.release(o.fh).unwrap();

    f.faults
        .compose
        .fail(1, RemoteError::Timeout("store stalled".into()));
    assert_eq!(v.fsync(ino).await.unwrap_err(), Errno(libc::ETIMEDOUT));
    f.faults
        .commit
        .fail(1, RemoteError::PermissionDenied("token expired".into()));
    assert_eq!(v.fsync(ino).await.unwrap_err(), Errno(libc::EACCES));
    f.faults
        .upload
        .fail(1, RemoteError::Integrity("bad".into()));
    // A failure of another route's call does not matter: this file composes.
    v.fsync(ino).await.unwrap();
    assert_eq!(v.stats().files_composed, 1);

    let m = remount(f.m, &dir).await;
    assert!(read_all(&m.vfs, "f").await == model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_hanging_reads_return_errors_not_wedges() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let data = pattern(300_000, 3);
    let ino = write_file(&f.m.vfs, ROOT_INO, "r", &data).await;
    f.m.vfs.fsync(ino).await.unwrap();
    let m = remount(f.m, &dir).await;
    drop(m);
    let f = mount_faulty(&dir).await;
    let v = &f.m.vfs;
    let ino = resolve(v, "r").await.unwrap();
    let o = v.open(ino, false, false).await.unwrap();
    f.faults
        .read
        .fail(1, RemoteError::Other("disk error".into()));
    assert_eq!(v.read(o.fh, 0, 100).await.unwrap_err(), Errno::EIO);
    f.faults.read.hang.store(true, Ordering::SeqCst);
    assert_eq!(
        v.read(o.fh, 0, 100).await.unwrap_err(),
        Errno(libc::ETIMEDOUT)
    );
    f.faults.read.hang.store(false, Ordering::SeqCst);
    assert_eq!(&v.read(o.fh, 0, 100).await.unwrap()[..], &data[..100]);
    v.release(o.fh).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_at_shutdown_leaves_the_file_journaled_for_the_next_start() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    f.faults.upload.hang.store(true, Ordering::SeqCst);
    let data = pattern(400_000, 4);
    write_file(&f.m.vfs, ROOT_INO, "stuck", &data).await;
    assert_eq!(f.m.vfs.shutdown(Duration::from_millis(300)).await, 1);
    drop(f);
    // The next start finds the journal and commits the file before serving.
    let m = mount_at(&dir).await;
    assert!(m.vfs.dirty_inodes().is_empty());
    assert_eq!(read_all(&m.vfs, "stuck").await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_delays_commits_without_blocking_other_files() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let v = f.m.vfs.clone();
    let quick = write_file(&v, ROOT_INO, "quick", b"already here").await;
    v.fsync(quick).await.unwrap();
    f.faults.upload.delay_ms.store(1500, Ordering::SeqCst);
    let data = pattern(300_000, 9);
    let slow = write_file(&v, ROOT_INO, "slow", &data).await;
    let v2 = v.clone();
    let pending = tokio::spawn(async move { v2.fsync(slow).await });
    // While the upload crawls, other files stay readable and writable.
    assert_eq!(read_all(&v, "quick").await, b"already here");
    let o = v.open(quick, true, false).await.unwrap();
    v.write(o.fh, 0, b"ALREADY".to_vec()).await.unwrap();
    v.release(o.fh).unwrap();
    assert!(
        !pending.is_finished(),
        "the other file waited for the slow upload"
    );
    pending.await.unwrap().unwrap();
    f.faults.upload.delay_ms.store(0, Ordering::SeqCst);
    drop(v);
    let m = remount(f.m, &dir).await;
    assert_eq!(read_all(&m.vfs, "slow").await, data);
    assert_eq!(read_all(&m.vfs, "quick").await, b"ALREADY here");
}
