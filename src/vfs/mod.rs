//! POSIX semantics over a [`Catalog`] and a [`Cas`]. Frontends (FUSE, NFS) translate their
//! protocol to these calls and never decide anything themselves.
//!
//! # Lock order
//!
//! Take locks only in this order, and never hold a std lock across an `.await`:
//!
//! 1. `Staged::flush_lock` (tokio, per inode): one flush of an inode at a time. Several are
//!    taken in ascending inode order.
//! 2. `commit_lock` (tokio): one catalog commit at a time, so pending namespace ops reach the
//!    catalog in order. Held across the commit; never taken while holding `ns_lock`.
//! 3. `ns_lock` (tokio): serialises namespace changes (table update + `nslog` append) and the
//!    snapshot a commit takes of them with the file entries. Never held across store I/O.
//! 4. `Staged` io lock (std, per inode): staging file I/O paired with its `SparseState`.
//! 5. `inodes` (std): the inode table. Never held across file or network I/O.
//! 6. `nslog` (std): pending namespace ops; taken alone.
//! 7. `handles` (std): the open-handle table.
//! 8. The subtree prefetch's registry (`prefetch.rs`, std): taken last, never across an
//!    `.await`.
//!
//! Namespace changes are local first (`nslog.rs`): they never wait for the store. A catalog
//! read (listing a directory not yet in the table) first commits the pending ops, so that the
//! catalog and the table agree on every path.

pub mod errno;
mod fileio;
mod flush;
mod gc;
pub mod handle_pool;
pub mod inode;
mod journal;
mod namespace;
mod nslog;
mod prefetch;
pub mod ranges;
pub mod readcache;
mod recovery;
mod refresh;
pub mod sparse;
pub mod staging;
pub mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use errno::{Errno, VfsResult};
use inode::InodeTable;
pub use inode::{Attr, Ino, Invalidation, ROOT_INO};
use readcache::ReadCache;
use staging::StagingArea;
pub use stats::{Stats, StatsSnapshot};

/// The extended attribute of the mount root that holds the counters.
pub const STATS_XATTR: &str = "user.xetmount.stats";

use crate::remote::{Cas, Catalog, EntryKind};

/// Longest name of one path component.
pub const NAME_MAX: usize = 255;

#[derive(Clone, Debug)]
pub struct VfsConfig {
    pub staging_dir: PathBuf,
    pub read_only: bool,
    /// Quiet time after a close before the file is flushed.
    pub flush_debounce: Duration,
    /// Longest a queued file waits, however often it is closed again.
    pub flush_max_batch_window: Duration,
    /// Limit for one read from the store.
    pub read_timeout: Duration,
    /// Limit for one upload, composition or catalog commit, stretched by 1 s per 8 MiB the
    /// call carries: a hung call fails and is retried instead of holding its files forever.
    pub write_timeout: Duration,
    /// Read cache block size and capacity in bytes.
    pub cache_block: u64,
    pub cache_capacity: u64,
    /// Largest read-ahead window, in cache blocks (also at most a quarter of the cache). It
    /// bounds the bytes a sequential stream has in flight: at 32 MiB, eight 4 MiB runs, enough
    /// to fill a 50 ms round trip at over 300 MiB/s.
    pub readahead_blocks: u64,
    /// Test mode: after every commit read the stored body back and compare it byte for byte
    /// with what was committed, and drop the clean staging copy so the next open starts
    /// sparse again (every reopen then exercises the compose route).
    pub paranoid: bool,
    /// Disk budget for staging files in bytes (0 = unlimited); clean copies are evicted to
    /// stay within it.
    pub max_staging_size: u64,
    /// Most staging files kept (each holds two open descriptors); clean copies beyond it are
    /// evicted.
    pub max_staged_files: usize,
    /// How often to ask a catalog without a change feed whether others changed it (a feed is
    /// followed as changes come); zero turns change detection off.
    pub poll_interval: Duration,
}

impl VfsConfig {
    pub fn new(staging_dir: PathBuf) -> Self {
        VfsConfig {
            staging_dir,
            read_only: false,
            flush_debounce: Duration::from_millis(1000),
            flush_max_batch_window: Duration::from_millis(30000),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(120),
            cache_block: 16 << 10,
            cache_capacity: 128 << 20,
            readahead_blocks: 2048,
            paranoid: false,
            max_staging_size: 0,
            max_staged_files: 1000,
            poll_interval: Duration::from_secs(30),
        }
    }
}

/// The identity of the process making a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Attribute changes requested by `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(i64),
}

/// One directory entry as listed by `readdir`.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub ino: Ino,
    pub name: String,
    pub kind: EntryKind,
}

/// What `open`/`create` tell the frontend.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep its page cache of this file from earlier opens.
    pub keep_cache: bool,
}

/// Sequential-read detection of one handle.
#[derive(Default)]
struct ReadAhead {
    next_offset: u64,
    /// Read-ahead window in cache blocks (0: not sequential).
    window: u64,
    /// Blocks before this one have been requested by read-ahead already.
    claimed_to: u64,
}

struct Handle {
    ino: Ino,
    writable: bool,
    ra: ReadAhead,
    /// When this handle first changed the file (a `Vfs` event number): flush failures after
    /// that concern its data.
    wrote_at: Option<u64>,
    /// The last flush failure reported to this handle (each is reported once).
    reported_at: u64,
}

enum HandleEntry {
    File(Handle),
    Dir(Vec<DirEntry>),
}

#[derive(Default)]
struct Handles {
    next: u64,
    map: HashMap<u64, HandleEntry>,
}

pub struct Vfs {
    catalog: Arc<dyn Catalog>,
    cas: Arc<dyn Cas>,
    config: VfsConfig,
    ns_lock: tokio::sync::Mutex<()>,
    commit_lock: tokio::sync::Mutex<()>,
    /// Odd while a catalog commit is in flight or its result is not yet in the table, bumped
    /// again once it is: a refresh whose listing spans a change of it may mistake this
    /// mount's own commit for another writer's, and tries again.
    commit_epoch: std::sync::atomic::AtomicU64,
    /// Revisions this mount's own commits produced that the change feed has not reported
    /// yet: the refresher skips what only they changed.
    own_revisions: Mutex<std::collections::BTreeSet<u64>>,
    nslog: Mutex<nslog::NsLog>,
    inodes: Mutex<InodeTable>,
    handles: Mutex<Handles>,
    staging: Arc<StagingArea>,
    cache: Arc<ReadCache>,
    stats: Arc<Stats>,
    flusher: Arc<flush::FlushQueue>,
    /// Orders writes through handles and flush failures (see `Handle::wrote_at`).
    events: std::sync::atomic::AtomicU64,
    /// Where kernel cache invalidations go (the frontend's queue), once it asked.
    invalidator: Mutex<Option<std::sync::mpsc::Sender<inode::Invalidation>>>,
    /// Subtree listings in the background (`prefetch.rs`).
    prefetch: prefetch::Prefetches,
}

impl Vfs {
    /// Build the VFS over a catalog and a CAS. Must be called inside a tokio runtime; the
    /// background flusher runs on it.
    pub async fn new(
        catalog: Arc<dyn Catalog>,
        cas: Arc<dyn Cas>,
        config: VfsConfig,
    ) -> anyhow::Result<Arc<Self>> {
        let root = catalog
            .head("")
            .await?
            .ok_or_else(|| anyhow::anyhow!("the catalog has no root directory"))?;
        let staging = StagingArea::open(&config.staging_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot use staging directory {}: {e}",
                config.staging_dir.display()
            )
        })?;
        let (nslog, left) = nslog::NsLog::open(&config.staging_dir).map_err(|e| {
            anyhow::anyhow!("cannot open the namespace log in the staging directory: {e}")
        })?;
        if !left.is_empty() {
            let ops = left.into_replay(catalog.revision().await?);
            replay_namespace(catalog.as_ref(), ops).await?;
        }
        // Re-read the root: the replay may have changed it.
        let root = catalog.head("").await?.unwrap_or(root);
        let stats = Arc::new(Stats::default());
        let cache = Arc::new(ReadCache::new(
            cas.clone(),
            stats.clone(),
            config.cache_block,
            config.cache_capacity,
            config.read_timeout,
        ));
        let vfs = Arc::new(Vfs {
            catalog,
            cas,
            flusher: flush::FlushQueue::new(config.flush_debounce, config.flush_max_batch_window),
            config,
            ns_lock: tokio::sync::Mutex::new(()),
            commit_lock: tokio::sync::Mutex::new(()),
            commit_epoch: std::sync::atomic::AtomicU64::new(0),
            own_revisions: Mutex::default(),
            nslog: Mutex::new(nslog),
            inodes: Mutex::new(InodeTable::new(root)),
            handles: Mutex::new(Handles::default()),
            staging: Arc::new(staging),
            cache,
            stats,
            events: std::sync::atomic::AtomicU64::new(0),
            invalidator: Mutex::new(None),
            prefetch: prefetch::Prefetches::default(),
        });
        vfs.prefetch.set_vfs(Arc::downgrade(&vfs));
        let recovered = vfs
            .recover()
            .await
            .map_err(|e| anyhow::anyhow!("cannot recover the staging directory: {e}"))?;
        if !recovered.committed.is_empty() {
            tracing::info!(
                "recovered {} file(s) left uncommitted by an earlier run and committed them: {}",
                recovered.committed.len(),
                recovered.committed.join(", ")
            );
        }
        if !recovered.pending.is_empty() {
            tracing::warn!(
                "recovered {} file(s) from an earlier run that could not be committed yet (retrying): {}",
                recovered.pending.len(),
                recovered.pending.join(", ")
            );
        }
        if let Err(e) = vfs.nslog.lock().clear_leftovers() {
            tracing::warn!("cannot empty the namespace log: {e}");
        }
        flush::spawn_flusher(&vfs);
        for ino in vfs.dirty_inodes() {
            vfs.flusher.schedule(ino);
        }
        if !vfs.config.poll_interval.is_zero() {
            let since = vfs.catalog.revision().await?;
            vfs.spawn_refresher(since);
        }
        // Every path starts at the root: list it now rather than on the first lookup (one
        // round trip less for it; a failure leaves it to that lookup).
        if let Err(e) = vfs.ensure_listed(ROOT_INO).await {
            tracing::debug!("root not listed at mount ({e:?}); listed when first needed");
        }
        Ok(vfs)
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Extended attributes. The only one is [`STATS_XATTR`] on the root: the mount's counters
    /// as `name value` lines (read by `xetmount stats`).
    pub fn getxattr(&self, ino: Ino, name: &str) -> VfsResult<Vec<u8>> {
        self.inodes.lock().get(ino)?;
        if ino == ROOT_INO && name == STATS_XATTR {
            return Ok(self.stats.snapshot().to_text().into_bytes());
        }
        Err(Errno::ENODATA)
    }

    fn next_event(&self) -> u64 {
        self.events
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    pub fn config(&self) -> &VfsConfig {
        &self.config
    }

    fn check_writable(&self) -> VfsResult<()> {
        if self.config.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn check_name(name: &str) -> VfsResult<()> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Errno::EINVAL);
        }
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(())
    }

    /// Current attributes. A staged file's size lives in its staging state.
    pub fn getattr(&self, ino: Ino) -> VfsResult<Attr> {
        let (staged, attr) = {
            let t = self.inodes.lock();
            let i = t.get(ino)?;
            (i.staged.clone(), i.attr(i.remote_size()))
        };
        Ok(match staged {
            Some(s) => Attr {
                size: s.size(),
                ..attr
            },
            None => attr,
        })
    }

    /// Filesystem usage, from the disk that holds the staging directory.
    pub fn statfs(&self) -> VfsResult<libc::statvfs> {
        let path = std::ffi::CString::new(self.staging.dir().as_os_str().as_encoded_bytes())
            .map_err(|_| Errno::EINVAL)?;
        // SAFETY: statvfs writes into the zeroed struct; the path is a valid C string.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(path.as_ptr(), &mut st) != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Ok(st)
        }
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        let staged = {
            let mut t = self.inodes.lock();
            if let Ok(i) = t.get_mut(ino) {
                i.nlookup = i.nlookup.saturating_sub(n);
            }
            t.reap(ino)
        };
        drop(staged);
    }

    /// Flush every dirty file and pending namespace change and wait, up to `timeout`, then
    /// let the store finish its background work (cache writes) for a moment. Returns the
    /// number of files still dirty (pending namespace changes count as one).
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        let left = self.commit_all(timeout).await;
        self.cas.settle(Duration::from_secs(5)).await;
        left
    }

    /// Commit what is dirty, retrying transient failures with backoff until `timeout`. A file
    /// the store refuses for good (permission, quota, integrity) is not retried: it is named
    /// once in the log and stays journaled in staging for the next mount. Returns the number
    /// of files left dirty (pending namespace changes count as one).
    async fn commit_all(&self, timeout: Duration) -> usize {
        self.flusher.stop();
        let deadline = tokio::time::Instant::now() + timeout;
        let unsettled = || self.dirty_inodes().len() + usize::from(!self.nslog.lock().is_empty());
        let mut refused: std::collections::HashSet<Ino> = std::collections::HashSet::new();
        let mut backoff = SHUTDOWN_BACKOFF.0;
        // What is still to try: dirty files and pending namespace changes not refused.
        let work = |refused: &std::collections::HashSet<Ino>| {
            let todo: Vec<Ino> = self
                .dirty_inodes()
                .into_iter()
                .filter(|i| !refused.contains(i))
                .collect();
            let ns = !self.nslog.lock().is_empty() && !refused.contains(&flush::NS_INO);
            (!todo.is_empty() || ns).then_some(todo)
        };
        let Some(mut todo) = work(&refused) else {
            return unsettled();
        };
        loop {
            tracing::info!("committing {} file(s) before exit", todo.len());
            todo.push(flush::NS_INO);
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return unsettled();
            }
            let Ok(results) = tokio::time::timeout(remaining, self.flush_batch(&todo)).await else {
                return unsettled();
            };
            let mut transient = false;
            for (ino, r) in results {
                let Err(f) = r else { continue };
                let path = match ino {
                    flush::NS_INO => "(namespace changes)".to_string(),
                    _ => format!("/{}", self.inodes.lock().path_of(ino).unwrap_or_default()),
                };
                if f.permanent {
                    tracing::error!(
                        ino,
                        "{path} not committed: {f}; not retried before exit, it stays journaled in {} and the next mount commits it",
                        self.config.staging_dir.display()
                    );
                    refused.insert(ino);
                } else {
                    tracing::warn!(
                        ino,
                        "{path} not committed yet: {f}; retrying in {backoff:?}"
                    );
                    transient = true;
                }
            }
            let Some(next) = work(&refused) else {
                return unsettled();
            };
            todo = next;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if transient {
                tokio::time::sleep(backoff.min(remaining)).await;
                backoff = (backoff * 2).min(SHUTDOWN_BACKOFF.1);
            } else {
                // Files changed during their flush (or moved aside on a conflict) go again at
                // once, but never in a tight loop.
                tokio::time::sleep(Duration::from_millis(50).min(remaining)).await;
            }
        }
    }
}

/// The first and the longest wait between shutdown attempts of files that failed transiently.
const SHUTDOWN_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(8));

/// Commit namespace ops an earlier run left in its log. Ops that no longer apply (the run
/// committed them but died before marking them) are skipped one by one.
/// A store that is unreachable now fails the start and keeps the log.
async fn replay_namespace(
    catalog: &dyn Catalog,
    ops: Vec<crate::remote::CatalogOp>,
) -> anyhow::Result<()> {
    let n = ops.len();
    if n == 0 {
        return Ok(());
    }
    if catalog.commit(ops.clone()).await.is_ok() {
        tracing::info!("committed {n} namespace change(s) left by an earlier run");
        return Ok(());
    }
    for op in ops {
        match catalog.commit(vec![op.clone()]).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => anyhow::bail!(
                "cannot commit the namespace changes an earlier run left ({e}); they are kept for the next start"
            ),
            Err(e) => tracing::warn!("namespace change left by an earlier run skipped ({e}): {op:?}"),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
