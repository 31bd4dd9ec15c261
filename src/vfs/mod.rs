//! POSIX semantics over a [`Catalog`] and a [`Cas`]. Frontends (FUSE, NFS) translate their
//! protocol to these calls and never decide anything themselves.
//!
//! [`Vfs`] is a thin facade over parts that each hold their own state and locks:
//!
//! - [`namespace::Namespace`]: the inode table, the namespace log and the namespace lock;
//!   listings (with the subtree prefetch) and every namespace change, local first.
//! - [`write::WritePath`]: staging copies of files (`staging.rs`, `sparse.rs`, `ranges.rs`,
//!   `journal.rs`), writes and hole filling, the staging budget (`gc.rs`), start-up
//!   recovery (`recovery.rs`, which drives the namespace and the flusher too).
//! - [`read::ReadPath`]: reads of committed bodies through the read cache, with read-ahead.
//! - [`flush::Flusher`]: commits staged files and namespace changes (debounced queue,
//!   batches, conflicts, `fsync`, the commit at exit).
//! - [`refresh::Refresher`]: follows other writers' changes into the namespace.
//! - [`handles::Handles`]: the open-handle table.
//!
//! # Lock order
//!
//! Take locks only in this order, and never hold a std lock across an `.await` (each part
//! says what its locks guard):
//!
//! 1. `Staged::flush_lock` (tokio, per inode, `Flusher`): several in ascending inode order.
//! 2. `Flusher::commit_lock` (tokio): one catalog commit at a time.
//! 3. `Namespace::lock` (tokio): namespace changes and the snapshot a commit takes of them.
//! 4. `Staged` io lock (std, per inode, `staging.rs`).
//! 5. `Namespace::table` (std): the inode table.
//! 6. `Namespace::log` (std): pending namespace ops; taken alone.
//! 7. `Handles` (std): the open-handle table.
//! 8. The prefetch registry and the invalidation queue (std, `Namespace`): taken last.
//!
//! The staging descriptor cache (std, `write/staging.rs`) is taken alone, under an io lock.
//!
//! Namespace changes are local first (`namespace/log.rs`): they never wait for the store. A catalog
//! read (listing a directory not yet in the table) first commits the pending ops, so that the
//! catalog and the table agree on every path.

pub mod errno;
mod flush;
mod handles;
mod namespace;
mod read;
pub mod readcache;
mod refresh;
pub mod stats;
mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use errno::{Errno, VfsResult};
use flush::{FlushQueue, FlushSettings, Flusher};
use handles::Handles;
use namespace::inode::TableLimits;
pub use namespace::inode::{time_to_ns, Attr, Ino, Invalidation, ROOT_INO};
use namespace::log::NsLog;
use namespace::Namespace;
use read::ReadPath;
use readcache::ReadCache;
use refresh::Refresher;
pub use stats::{LastError, Pending, Stats, StatsSnapshot};
use write::staging::{Falloc, StagingArea};
use write::{Budget, WritePath};

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
    /// Largest read-ahead window, in cache blocks, and the most read-ahead has in flight
    /// across streams (a stream's window is also at most its part of half the cache). At
    /// 32 MiB, eight 4 MiB runs, enough to fill a 50 ms round trip at over 300 MiB/s.
    pub readahead_blocks: u64,
    /// Test mode: after every commit read the stored body back and compare it byte for byte
    /// with what was committed, and drop the clean staging copy so the next open starts
    /// sparse again (every reopen then exercises the compose route).
    pub paranoid: bool,
    /// Disk budget for staging files in bytes (0 = unlimited); clean copies are evicted to
    /// stay within it.
    pub max_staging_size: u64,
    /// Most staging files kept (their descriptors are opened on demand, through a bounded
    /// cache); clean copies beyond it are evicted, and past it writers wait for the flusher.
    pub max_staged_files: usize,
    /// How often to ask a catalog without a change feed whether others changed it (a feed is
    /// followed as changes come); zero turns change detection off.
    pub poll_interval: Duration,
    /// How long the kernel may keep attributes and names it was given. Every change this
    /// VFS learns of (its own, or other writers' through the feed or polling) invalidates
    /// what the kernel holds, so this only bounds how long a missed invalidation could last.
    pub attr_ttl: Duration,
    /// Above this many entries the mount drops listings nothing uses (0: never); see
    /// `InodeTable::trim`.
    pub inode_soft_limit: usize,
    /// The frontend names files by inode number without lookups (NFS file handles): entries
    /// dropped from the table must be found again by number.
    pub stateless_handles: bool,
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
            max_staged_files: 10_000,
            poll_interval: Duration::from_secs(30),
            attr_ttl: Duration::from_secs(3600),
            inode_soft_limit: 100_000,
            stateless_handles: false,
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

pub struct Vfs {
    config: VfsConfig,
    ns: Arc<Namespace>,
    files: Arc<WritePath>,
    reads: ReadPath,
    flusher: Arc<Flusher>,
    refresher: Arc<Refresher>,
    handles: Arc<Handles>,
    stats: Arc<Stats>,
}

/// Run blocking staging-file I/O off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> VfsResult<T> + Send + 'static,
) -> VfsResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Errno::EIO)?
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
        let (nslog, left) = NsLog::open(&config.staging_dir).map_err(|e| {
            anyhow::anyhow!("cannot open the namespace log in the staging directory: {e}")
        })?;
        if !left.is_empty() {
            let ops = left.into_replay(catalog.revision().await?);
            replay_namespace(catalog.as_ref(), ops).await?;
        }
        // Re-read the root: the replay may have changed it.
        let root = catalog.head("").await?.unwrap_or(root);
        let vfs = Arc::new(Self::assemble(
            catalog.clone(),
            cas,
            config,
            root,
            nslog,
            staging,
        ));
        vfs.start(catalog).await?;
        Ok(vfs)
    }

    /// The parts, wired together (nothing runs yet).
    fn assemble(
        catalog: Arc<dyn Catalog>,
        cas: Arc<dyn Cas>,
        config: VfsConfig,
        root: crate::remote::Entry,
        nslog: NsLog,
        staging: StagingArea,
    ) -> Self {
        let stats = Arc::new(Stats::default());
        let staging = Arc::new(staging);
        let cache = Arc::new(ReadCache::new(
            cas.clone(),
            stats.clone(),
            config.cache_block,
            config.cache_capacity,
            config.readahead_blocks * config.cache_block,
            config.read_timeout,
        ));
        let queue = FlushQueue::new(config.flush_debounce, config.flush_max_batch_window);
        let ns = Namespace::new(
            catalog.clone(),
            root,
            nslog,
            staging.clone(),
            queue.clone(),
            stats.clone(),
            config.read_only,
        );
        ns.table().set_limits(TableLimits {
            soft_limit: config.inode_soft_limit,
            keep_ghosts: config.stateless_handles,
        });
        let budget = Budget {
            bytes: config.max_staging_size,
            files: config.max_staged_files,
            wait: config.write_timeout,
        };
        let files = Arc::new(WritePath::new(
            ns.clone(),
            staging,
            cache.clone(),
            queue.clone(),
            stats.clone(),
            budget,
        ));
        let settings = FlushSettings {
            write_timeout: config.write_timeout,
            paranoid: config.paranoid,
            staging_dir: config.staging_dir.clone(),
        };
        let flusher = Flusher::new(
            catalog,
            cas,
            ns.clone(),
            files.clone(),
            queue,
            stats.clone(),
            settings,
        );
        let handles = Arc::new(Handles::default());
        let refresher = Refresher::new(
            ns.clone(),
            files.clone(),
            flusher.clone(),
            handles.clone(),
            stats.clone(),
            config.poll_interval,
        );
        Vfs {
            reads: ReadPath::new(cache, config.readahead_blocks, config.cache_capacity),
            config,
            ns,
            files,
            flusher,
            refresher,
            handles,
            stats,
        }
    }

    /// Recover what an earlier run left, then start the flusher and the refresher.
    async fn start(&self, catalog: Arc<dyn Catalog>) -> anyhow::Result<()> {
        let recovered = write::recovery::recover(&self.ns, &self.files, &self.flusher)
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
        if let Err(e) = self.ns.log().clear_leftovers() {
            tracing::warn!("cannot empty the namespace log: {e}");
        }
        self.flusher.spawn();
        for ino in self.files.dirty_inodes() {
            self.flusher.queue().schedule(ino);
        }
        if !self.config.poll_interval.is_zero() {
            let since = catalog.revision().await?;
            self.refresher.spawn(since);
        }
        // Every path starts at the root: list it now rather than on the first lookup (one
        // round trip less for it; a failure leaves it to that lookup).
        if let Err(e) = self.ns.ensure_listed(ROOT_INO).await {
            tracing::debug!("root not listed at mount ({e:?}); listed when first needed");
        }
        Ok(())
    }

    pub fn stats(&self) -> StatsSnapshot {
        Stats::set(&self.stats.inodes, self.ns.table().len() as u64);
        self.stats.snapshot()
    }

    pub fn config(&self) -> &VfsConfig {
        &self.config
    }

    /// What this mount holds that the store does not yet (for `status` and metrics). Walks
    /// the staged files only, not the whole table.
    pub fn pending(&self) -> Pending {
        let (files, bytes, oldest) = self.files.unsettled();
        Pending {
            files,
            bytes,
            namespace_changes: !self.ns.log().is_empty(),
            oldest,
            last_error: self.stats.last_error(),
        }
    }

    /// Bytes the read cache holds, and the staging files' allocated bytes.
    pub fn cache_usage(&self) -> (u64, u64) {
        (self.reads.cached_bytes(), self.files.area().usage().bytes())
    }

    /// Current attributes. A staged file's size lives in its staging state.
    pub fn getattr(&self, ino: Ino) -> VfsResult<Attr> {
        self.ns.getattr(ino)
    }

    /// Filesystem usage, from the disk that holds the staging directory.
    pub fn statfs(&self) -> VfsResult<libc::statvfs> {
        let dir = self.files.area().dir();
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
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
        self.ns.forget(ino, n)
    }

    /// Flush every dirty file and pending namespace change and wait, up to `timeout`, then
    /// let the store finish its background work (cache writes) for a moment. Returns the
    /// number of files still dirty (pending namespace changes count as one).
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        let left = self.flusher.commit_all(timeout).await;
        self.flusher.settle_store(Duration::from_secs(5)).await;
        // Clean copies are only a cache: their files go now, not at the next start.
        self.files.drop_clean_copies();
        left
    }

    /// The queue the frontend drains to drop kernel caches (one consumer; a second call
    /// replaces the first).
    pub fn invalidations(&self) -> std::sync::mpsc::Receiver<Invalidation> {
        self.ns.invalidations()
    }

    /// The frontend handled one queued invalidation.
    pub fn invalidation_done(&self) {
        self.ns.invalidation_done()
    }

    // ---- Namespace ----

    /// FUSE LOOKUP: `name` in `parent`, taking one kernel reference (released by `forget`).
    pub async fn lookup(&self, parent: Ino, name: &str) -> VfsResult<Attr> {
        self.ns.lookup(parent, name).await
    }

    /// `name` in `parent` without a kernel reference: for stateless frontends and internal
    /// path walks, which never send `forget` (a reference would pin unlinked inodes forever).
    pub async fn find(&self, parent: Ino, name: &str) -> VfsResult<Attr> {
        self.ns.find(parent, name).await
    }

    /// Walking a directory also starts prefetching the subtree below it.
    pub async fn opendir(&self, ino: Ino) -> VfsResult<u64> {
        let entries = self.ns.dir_entries(ino).await?;
        Ok(self.handles.open_dir(entries))
    }

    /// Entries of an open directory from index `offset` on (a snapshot taken at opendir).
    pub fn readdir(&self, fh: u64, offset: u64) -> VfsResult<Vec<DirEntry>> {
        self.handles.readdir(fh, offset)
    }

    /// A page of directory `ino`'s entries after the one numbered `after` (see
    /// `Namespace::dir_page`), and whether it is the last.
    pub async fn dir_page(
        &self,
        ino: Ino,
        after: Option<Ino>,
        limit: usize,
    ) -> VfsResult<(Vec<DirEntry>, bool)> {
        self.ns.dir_page(ino, after, limit).await
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.release_dir(fh)
    }

    /// Bring back inode `ino` if the table dropped it to stay within its soft limit (for
    /// frontends whose clients name files by number: NFS). ENOENT if it no longer exists.
    pub async fn revive(&self, ino: Ino) -> VfsResult<()> {
        self.ns.revive(ino).await
    }

    /// The directory holding `ino` (the root is its own parent).
    pub fn parent_of(&self, ino: Ino) -> VfsResult<Ino> {
        self.ns.parent_of(ino)
    }

    pub fn readlink(&self, ino: Ino) -> VfsResult<String> {
        self.ns.readlink(ino)
    }

    pub async fn mkdir(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        caller: Caller,
    ) -> VfsResult<Attr> {
        self.ns.mkdir(parent, name, mode, caller).await
    }

    /// `mknod(2)`: `mode` carries the file type. A regular file is created empty; FIFOs,
    /// sockets and device nodes are catalog entries without a body.
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> VfsResult<Attr> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => {
                let (attr, opened) = self.create(parent, name, mode, caller).await?;
                self.release(opened.fh)?;
                return Ok(attr);
            }
            libc::S_IFIFO => EntryKind::Fifo,
            libc::S_IFSOCK => EntryKind::Socket,
            libc::S_IFCHR => EntryKind::CharDevice(rdev),
            libc::S_IFBLK => EntryKind::BlockDevice(rdev),
            _ => return Err(Errno::EINVAL),
        };
        let ino = self
            .ns
            .create_entry(parent, name, kind, mode & 0o7777, None, caller)
            .await?;
        self.getattr(ino)
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &str,
        target: &str,
        caller: Caller,
    ) -> VfsResult<Attr> {
        self.ns.symlink(parent, name, target, caller).await
    }

    /// Remove `name` from `parent`: a file or symlink (`dir == false`) or an empty directory.
    pub async fn remove(&self, parent: Ino, name: &str, dir: bool) -> VfsResult<()> {
        self.ns.remove(parent, name, dir).await
    }

    /// `link(2)`: `new_parent/new_name` becomes another name of file `ino`, taking one kernel
    /// reference like a lookup. Only where the catalog can keep hard links.
    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &str) -> VfsResult<Attr> {
        self.ns.link(ino, new_parent, new_name).await
    }

    /// Rename `parent/name` to `new_parent/new_name`, replacing an existing target
    /// atomically. `noreplace` is RENAME_NOREPLACE.
    pub async fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        noreplace: bool,
    ) -> VfsResult<()> {
        self.ns
            .rename(parent, name, new_parent, new_name, noreplace)
            .await
    }

    /// Change attributes. Size changes go through staging like writes; metadata changes are
    /// namespace changes (local first, committed by the flusher).
    pub async fn setattr(&self, ino: Ino, set: SetAttr) -> VfsResult<Attr> {
        self.ns.check_setattr(ino, &set)?;
        if let Some(size) = set.size {
            self.files.truncate(ino, size).await?;
        }
        self.ns.set_meta(ino, &set).await?;
        self.getattr(ino)
    }

    /// `fsyncdir`: commit every namespace change made so far to the store.
    pub async fn sync_namespace(&self) -> VfsResult<()> {
        self.ns.drain().await
    }

    /// Make the namespace changes made so far survive a power loss (not yet committed): for
    /// NFS, whose namespace replies promise stable storage.
    pub async fn sync_namespace_journal(&self) -> VfsResult<()> {
        self.ns.sync_journal().await
    }

    // ---- File data ----

    pub async fn open(&self, ino: Ino, write: bool, truncate: bool) -> VfsResult<Opened> {
        let kind = self.ns.table().get(ino)?.kind;
        if kind == EntryKind::Dir && write {
            return Err(Errno::EISDIR);
        }
        if write {
            self.ns.check_writable()?;
            self.files.ensure_staged(ino).await?;
            if truncate {
                self.files.truncate(ino, 0).await?;
            }
        }
        self.ns.table().get_mut(ino)?.open_handles += 1;
        // O_TRUNC changed the file.
        let wrote_at = truncate.then(|| self.ns.next_event());
        let fh = self.handles.open_file(ino, write, wrote_at);
        // Changes to a body pass through this mount (and so through the kernel's page cache),
        // or come from other writers, whose changes invalidate the kernel's pages
        // (`refresh`): what the kernel cached from an earlier open is still right.
        Ok(Opened {
            fh,
            keep_cache: true,
        })
    }

    /// Create and open a new regular file.
    pub async fn create(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        caller: Caller,
    ) -> VfsResult<(Attr, Opened)> {
        // A full staging area makes the creator wait here, before the name exists.
        self.files.admit(true).await?;
        let ino = self
            .ns
            .create_entry(parent, name, EntryKind::File, mode, None, caller)
            .await?;
        match self.open(ino, true, false).await {
            Ok(opened) => Ok((self.getattr(ino)?, opened)),
            Err(e) => {
                self.undo_create(parent, name, ino).await;
                Err(e)
            }
        }
    }

    /// A create whose file could not be opened leaves no name behind (its staging files are
    /// removed where they failed, `Staged::create`).
    async fn undo_create(&self, parent: Ino, name: &str, ino: Ino) {
        let ours = self.ns.table().child(parent, name).ok().flatten() == Some(ino);
        if ours {
            if let Err(e) = self.ns.remove(parent, name, false).await {
                tracing::warn!(
                    parent,
                    name,
                    "cannot remove the entry of a failed create: {e}"
                );
            }
        }
        // The kernel never saw the entry: no FORGET will drop the reference the create took.
        self.ns.forget(ino, 1);
    }

    /// Reads of a staged file come from staging (holes filled on demand), of an unstaged one
    /// from the read cache with read-ahead.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> VfsResult<Bytes> {
        let ino = self.handles.ino(fh, false)?;
        let range = offset..offset.saturating_add(size as u64);
        let (staged, remote) = {
            let t = self.ns.table();
            let i = t.get(ino)?;
            if i.is_dir() {
                return Err(Errno::EISDIR);
            }
            (i.staged().cloned(), i.remote.clone())
        };
        match (staged, remote) {
            (Some(s), _) => self.files.read(s, range).await,
            (None, Some(id)) => {
                let claim = self
                    .handles
                    .read_ahead(fh, |ra| self.reads.advance(ra, &range));
                self.reads.read(&id, range, claim).await
            }
            (None, None) => Ok(Bytes::new()),
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Vec<u8>) -> VfsResult<u32> {
        let ino = self.handles.writer(fh, || self.ns.next_event())?;
        self.files.write(ino, offset, data).await
    }

    /// `fallocate(2)` through a writable handle: mode 0 and `FALLOC_FL_KEEP_SIZE` reserve
    /// space, `PUNCH_HOLE | KEEP_SIZE` and `ZERO_RANGE` zero a range (that is the user's data
    /// and is committed); other modes are not supported.
    pub async fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> VfsResult<()> {
        self.ns.check_writable()?;
        let op = Falloc::from_mode(mode).ok_or(Errno::EOPNOTSUPP)?;
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(Errno::EFBIG)?;
        let ino = self.handles.writer(fh, || self.ns.next_event())?;
        self.files.fallocate(ino, offset..end, op).await
    }

    /// Make what was written to `ino` durable in its staging file and journal (it survives a
    /// crash of this process or of the machine, and is committed by recovery).
    pub async fn sync_staging(&self, ino: Ino) -> VfsResult<()> {
        self.files.sync(ino).await
    }

    /// A write served on the caller's thread when the file already has its staging copy (the
    /// common case: every write after the first of an open). `None`: take the async path.
    /// It blocks only on the local staging file, like the async path's blocking section.
    pub fn try_write_now(&self, fh: u64, offset: u64, data: &[u8]) -> Option<VfsResult<u32>> {
        let ino = match self.handles.writer(fh, || self.ns.next_event()) {
            Ok(i) => i,
            Err(e) => return Some(Err(e)),
        };
        self.files.try_write_now(ino, offset, data)
    }

    /// close(2) of one file descriptor. Reports a background flush failure that put this
    /// handle's writes at risk (once per handle); a handle that only read, or that wrote
    /// after the failure, is not told. In paranoid mode, commit (and verify) the file first.
    pub async fn close(&self, fh: u64) -> VfsResult<()> {
        let ino = self.handles.ino(fh, false)?;
        if self.config.paranoid && self.handles.ino(fh, true).is_ok() {
            self.fsync(ino).await?;
        }
        let Some(err) = self.ns.table().get(ino)?.flush_error else {
            return Ok(());
        };
        match self.handles.take_failure(fh, err)? {
            true => Err(err.errno),
            false => Ok(()),
        }
    }

    /// Last reference to an open file handle dropped.
    pub fn release(&self, fh: u64) -> VfsResult<()> {
        let ino = self.handles.release_file(fh)?;
        let staged = {
            let mut t = self.ns.table();
            let i = t.get_mut(ino)?;
            i.open_handles = i.open_handles.saturating_sub(1);
            if i.linked && i.staged().is_some() {
                self.flusher.queue().schedule(ino);
            }
            t.reap(ino)
        };
        drop(staged);
        if self.config.paranoid {
            self.files.drop_clean_staging(ino);
        }
        self.files.collect_staging();
        Ok(())
    }

    /// Commit this file's current content to the store, or return why it cannot be. After a
    /// conflict (another writer replaced the file) the moved copy is committed before the
    /// conflict is reported: when `fsync` returns, this mount's version is in the store.
    pub async fn fsync(&self, ino: Ino) -> VfsResult<()> {
        self.flusher.sync_file(ino).await
    }

    // ---- Handles lent by stateless frontends (NFS) ----

    /// Open a handle for a stateless frontend's pool: unlike a kernel's open file, it does not
    /// hold back other writers' changes from the file's name.
    pub async fn open_pooled(&self, ino: Ino, write: bool) -> VfsResult<u64> {
        let o = self.open(ino, write, false).await?;
        let counted = self.ns.table().get_mut(ino).map(|i| i.pooled_handles += 1);
        if let Err(e) = counted {
            let _ = self.release(o.fh);
            return Err(e);
        }
        Ok(o.fh)
    }

    /// Release a handle opened by [`Self::open_pooled`].
    pub fn release_pooled(&self, ino: Ino, fh: u64) {
        if let Ok(i) = self.ns.table().get_mut(ino) {
            i.pooled_handles -= 1;
        }
        let _ = self.release(fh);
    }

    /// A write that is durable in the staging journal when it returns, its flush scheduled
    /// (a stateless frontend sends no close to do it).
    pub async fn write_stable(
        &self,
        fh: u64,
        ino: Ino,
        offset: u64,
        data: Vec<u8>,
    ) -> VfsResult<u32> {
        let n = self.write(fh, offset, data).await?;
        self.sync_staging(ino).await?;
        self.flusher.queue().schedule(ino);
        Ok(n)
    }
}

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
