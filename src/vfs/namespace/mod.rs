//! The namespace part: the inode table, the namespace log and the lock that orders changes
//! to both. Each mutation is validated against the table and applied to it under the
//! namespace lock, together with the append of its catalog ops to the namespace log
//! (`log.rs`); the flusher commits them. Directories an operation needs are listed before
//! the lock is taken (a listing may commit pending ops first, which takes the flusher's
//! commit lock).
//!
//! # Locks held here (their place in the whole order is in `vfs/mod.rs`)
//!
//! - `lock` (tokio): serialises namespace changes (table update + log append) and the
//!   snapshot a commit takes of them with the file entries. Never held across store I/O;
//!   taken after the flusher's commit lock, never before it.
//! - `table` (std): the inode table. Never held across file or network I/O; taken after a
//!   staged file's io lock.
//! - `log` (std): pending namespace ops; taken alone.
//! - `invalidator` and the prefetch registry (std): taken last, never across an `.await`.

mod aside;
pub mod inode;
pub(in crate::vfs) mod log;
mod prefetch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};

use crate::remote::{Catalog, CatalogOp, Entry, EntryKind, Meta};
use crate::vfs::flush::{FlushQueue, NS_INO};
use crate::vfs::namespace::inode::{now_ns, Attr, Ino, Inode, InodeTable, Invalidation, ROOT_INO};
use crate::vfs::namespace::log::NsLog;
use crate::vfs::write::staging::{Staged, StagingArea};
use crate::vfs::{Caller, DirEntry, Errno, SetAttr, Stats, TimeSet, VfsResult, NAME_MAX};

pub(in crate::vfs) use prefetch::Prefetches;

const S_ISGID: u32 = libc::S_ISGID;

/// What commits the pending namespace ops (the flusher): a catalog read needs them in the
/// catalog first, so that the catalog and the table agree on every path.
#[async_trait]
pub(in crate::vfs) trait Drain: Send + Sync {
    /// Commit every pending namespace change now.
    async fn drain(&self) -> VfsResult<()>;
}

/// The mount's namespace: which entries exist, under which names, with which metadata, and
/// the changes made here that the catalog does not hold yet.
pub(in crate::vfs) struct Namespace {
    catalog: Arc<dyn Catalog>,
    read_only: bool,
    lock: tokio::sync::Mutex<()>,
    table: Mutex<InodeTable>,
    log: Mutex<NsLog>,
    /// Staging files journal the paths of their files: renames and unlinks update them.
    staging: Arc<StagingArea>,
    /// Where pending namespace changes are scheduled for commit ([`NS_INO`]).
    queue: Arc<FlushQueue>,
    stats: Arc<Stats>,
    drainer: OnceLock<Weak<dyn Drain>>,
    /// Orders writes through handles and flush failures (see `Handle::wrote_at`).
    events: AtomicU64,
    /// Where kernel cache invalidations go (the frontend's queue), once it asked.
    invalidator: Mutex<Option<std::sync::mpsc::Sender<Invalidation>>>,
    /// Subtree listings in the background (`prefetch.rs`).
    prefetch: Prefetches,
}

/// EINVAL for `.`, `..`, empty names and names with a slash; ENAMETOOLONG past [`NAME_MAX`].
pub(in crate::vfs) fn check_name(name: &str) -> VfsResult<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Errno::EINVAL);
    }
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl Namespace {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::vfs) fn new(
        catalog: Arc<dyn Catalog>,
        root: Entry,
        log: NsLog,
        staging: Arc<StagingArea>,
        queue: Arc<FlushQueue>,
        stats: Arc<Stats>,
        read_only: bool,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me: &Weak<Namespace>| Namespace {
            catalog,
            read_only,
            lock: tokio::sync::Mutex::new(()),
            table: Mutex::new(InodeTable::new(root)),
            log: Mutex::new(log),
            staging,
            queue,
            stats,
            drainer: OnceLock::new(),
            events: AtomicU64::new(0),
            invalidator: Mutex::new(None),
            prefetch: Prefetches::new(me.clone()),
        })
    }

    /// Name what commits pending changes (once, when the flusher exists).
    pub(in crate::vfs) fn set_drainer(&self, d: Weak<dyn Drain>) {
        let _ = self.drainer.set(d);
    }

    /// The inode table.
    pub(in crate::vfs) fn table(&self) -> MutexGuard<'_, InodeTable> {
        self.table.lock()
    }

    /// The namespace log.
    pub(in crate::vfs) fn log(&self) -> MutexGuard<'_, NsLog> {
        self.log.lock()
    }

    /// The namespace lock (see the module doc).
    pub(in crate::vfs) async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    pub(in crate::vfs) fn catalog(&self) -> &Arc<dyn Catalog> {
        &self.catalog
    }

    /// The next event number (see `Handle::wrote_at`).
    pub(in crate::vfs) fn next_event(&self) -> u64 {
        self.events.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(in crate::vfs) fn check_writable(&self) -> VfsResult<()> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Current attributes. A staged file's size lives in its staging state.
    pub(in crate::vfs) fn getattr(&self, ino: Ino) -> VfsResult<Attr> {
        let (staged, attr) = {
            let t = self.table();
            let i = t.get(ino)?;
            (i.staged().cloned(), i.attr(i.remote_size()))
        };
        Ok(match staged {
            Some(s) => Attr {
                size: s.size(),
                ..attr
            },
            None => attr,
        })
    }

    /// The kernel dropped `n` references to `ino`.
    pub(in crate::vfs) fn forget(&self, ino: Ino, n: u64) {
        let staged = {
            let mut t = self.table();
            if let Ok(i) = t.get_mut(ino) {
                i.nlookup = i.nlookup.saturating_sub(n);
            }
            t.note_forgotten(1);
            t.reap(ino)
        };
        drop(staged);
        self.trim(ROOT_INO);
    }

    /// Keep the inode table near its soft limit (see [`InodeTable::trim`]), keeping `dir`'s
    /// listing. Only under the namespace lock, so a namespace change never finds a listing
    /// it checked gone; skipped when the lock is busy (the next listing or forget retries).
    /// Readers without the lock re-check that their listing is there (`listed_child`).
    pub(in crate::vfs) fn trim(&self, dir: Ino) {
        let Ok(_ns) = self.lock.try_lock() else {
            return;
        };
        self.trim_locked(&mut self.table(), dir);
    }

    /// [`Self::trim`] with the namespace lock held.
    pub(in crate::vfs) fn trim_locked(&self, t: &mut InodeTable, dir: Ino) {
        let trimmed = t.trim(dir);
        if trimmed.listings > 0 {
            Stats::add(&self.stats.listings_dropped, trimmed.listings);
            tracing::debug!(
                "dropped {} listings ({} entries) to stay near the inode soft limit",
                trimmed.listings,
                trimmed.inodes
            );
        }
    }

    /// Bring back the entries a frontend names by number (an NFS file handle) if the table
    /// dropped them (see [`InodeTable::trim`]): list their directories again, outermost
    /// first. An entry gone meanwhile stays unknown (ENOENT).
    pub(in crate::vfs) async fn revive(&self, ino: Ino) -> VfsResult<()> {
        loop {
            // The outermost dropped entry on the way up from `ino`, and its directory.
            let (mut outermost, mut dir) = (None, ino);
            while let Some((parent, _)) = self.table().ghost(dir) {
                outermost = Some(dir);
                dir = parent;
            }
            let Some(outermost) = outermost else {
                return Ok(());
            };
            self.ensure_listed(dir).await?;
            if self.table().ghost(outermost).is_some() {
                // Listing a directory takes its ghosts back; never loop on one that stays.
                return Err(Errno::ENOENT);
            }
        }
    }

    /// The queue the frontend drains to drop kernel caches (one consumer; a second call
    /// replaces the first).
    pub(in crate::vfs) fn invalidations(&self) -> std::sync::mpsc::Receiver<Invalidation> {
        let (tx, rx) = std::sync::mpsc::channel();
        *self.invalidator.lock() = Some(tx);
        rx
    }

    /// The frontend handled one queued invalidation.
    pub(in crate::vfs) fn invalidation_done(&self) {
        self.stats
            .pending_invalidations
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Queue kernel cache invalidations for the frontend.
    pub(in crate::vfs) fn invalidate(&self, v: Vec<Invalidation>) {
        let tx = self.invalidator.lock().clone();
        let Some(tx) = tx else { return };
        for inv in v {
            if tx.send(inv).is_ok() {
                Stats::add(&self.stats.pending_invalidations, 1);
            }
        }
    }

    /// Make sure directory `dir`'s children are in the table, and every name of the
    /// hard-linked files among them (see the invariant in `inode.rs`). Never called with
    /// `ns_lock` held. A directory below a running subtree prefetch is listed by it (`prefetch.rs`).
    pub(in crate::vfs) async fn ensure_listed(&self, dir: Ino) -> VfsResult<()> {
        let entries = loop {
            let path = {
                let mut t = self.table();
                t.dir(dir)?;
                if t.use_listing(dir) {
                    return Ok(());
                }
                t.path_of(dir)?
            };
            self.wait_for_prefetch(dir, &path).await;
            if self.table().is_listed(dir) {
                return Ok(());
            }
            // Counted before the drain: a rename pushed during it may not be committed.
            let renames = self.log.lock().renames();
            // The catalog is read only once it holds every change made here.
            self.drain().await?;
            let path = self.table().path_of(dir)?;
            let entries = self.catalog.list_dir(&path).await?;
            if self.log.lock().renames() == renames {
                break entries;
            }
            // A rename meanwhile may have moved the directory: list it again.
        };
        let new_links = self.table().install_listing(dir, entries)?;
        self.trim(dir);
        for link in new_links {
            for other in self.catalog.link_paths(link).await? {
                let parent = other.rfind('/').map_or("", |i| &other[..i]);
                Box::pin(self.ensure_path_listed(parent)).await?;
            }
        }
        Ok(())
    }

    /// Make the namespace changes made so far survive a power loss (not yet committed): for
    /// NFS, whose namespace replies promise stable storage.
    pub(in crate::vfs) async fn sync_journal(&self) -> VfsResult<()> {
        let file = self.log.lock().handle()?;
        crate::vfs::blocking(move || Ok(file.sync_data()?)).await
    }

    /// Take `ns_lock` with every directory a change needs in the table: `dirs`, and the entry
    /// at `slot` if that is a directory. Listing may commit pending ops (`commit_lock`), so it
    /// happens before the lock is taken, and again if the slot became an unlisted directory
    /// meanwhile. Returns the guard and the entry at `slot`.
    async fn lock_listed(
        &self,
        dirs: &[Ino],
        (dir, name): (Ino, &str),
    ) -> VfsResult<(tokio::sync::MutexGuard<'_, ()>, Option<Ino>)> {
        let unlisted_dir =
            |t: &InodeTable, i: Ino| t.get(i).is_ok_and(|n| n.is_dir() && !t.is_listed(i));
        loop {
            for d in dirs {
                self.ensure_listed(*d).await?;
            }
            let child = self.table().child(dir, name)?;
            if let Some(c) = child.filter(|c| unlisted_dir(&self.table(), *c)) {
                self.ensure_listed(c).await?;
            }
            let ns = self.lock.lock().await;
            let child = {
                let t = self.table();
                let child = t.child(dir, name)?;
                let listed = dirs.iter().all(|d| t.is_listed(*d));
                (listed && !child.is_some_and(|c| unlisted_dir(&t, c))).then_some(child)
            };
            if let Some(child) = child {
                return Ok((ns, child));
            }
        }
    }

    /// Commit every pending namespace change now.
    pub(in crate::vfs) async fn drain(&self) -> VfsResult<()> {
        if self.log.lock().is_empty() {
            return Ok(());
        }
        let drainer = self.drainer.get().and_then(Weak::upgrade);
        // Without a flusher (being torn down) nothing can commit: the catalog is behind.
        drainer.ok_or(Errno::EIO)?.drain().await
    }

    /// Record a namespace change: journaled before this returns, committed by the flusher.
    /// Called under `ns_lock`, after the change was validated and before the table shows it.
    pub(in crate::vfs) fn push_ns(&self, ops: Vec<CatalogOp>) -> VfsResult<()> {
        self.log.lock().push(ops)?;
        self.queue.schedule(NS_INO);
        Ok(())
    }

    /// List every directory from the root down to the directory at `path`.
    pub(in crate::vfs) async fn ensure_path_listed(&self, path: &str) -> VfsResult<()> {
        let mut dir = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir = self.listed_child(dir, part).await?.ok_or(Errno::ENOENT)?;
        }
        self.ensure_listed(dir).await
    }

    /// `name` in directory `dir`, listing it first if needed. Checked under the same table
    /// lock as the listing's presence: a listing dropped meanwhile (`trim`) is listed again
    /// rather than taken for an empty directory.
    async fn listed_child(&self, dir: Ino, name: &str) -> VfsResult<Option<Ino>> {
        loop {
            self.ensure_listed(dir).await?;
            let t = self.table();
            if t.is_listed(dir) {
                return t.child(dir, name);
            }
        }
    }

    /// The namespace lock, taken once every directory of `dirs` is listed (a listing a trim
    /// dropped before the lock was taken is listed again).
    async fn lock_with_listed(&self, dirs: &[Ino]) -> VfsResult<tokio::sync::MutexGuard<'_, ()>> {
        loop {
            for d in dirs {
                self.ensure_listed(*d).await?;
            }
            let ns = self.lock.lock().await;
            if dirs.iter().all(|d| self.table().is_listed(*d)) {
                return Ok(ns);
            }
        }
    }

    /// FUSE LOOKUP: `name` in `parent`, taking one kernel reference (released by `forget`).
    pub(in crate::vfs) async fn lookup(&self, parent: Ino, name: &str) -> VfsResult<Attr> {
        let attr = self.find(parent, name).await?;
        self.table().get_mut(attr.ino)?.nlookup += 1;
        Ok(attr)
    }

    /// `name` in `parent` without a kernel reference: for stateless frontends and internal
    /// path walks, which never send `forget` (a reference would pin unlinked inodes forever).
    pub(in crate::vfs) async fn find(&self, parent: Ino, name: &str) -> VfsResult<Attr> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = self
            .listed_child(parent, name)
            .await?
            .ok_or(Errno::ENOENT)?;
        self.getattr(ino)
    }

    /// Walking a directory also starts prefetching the subtree below it (`prefetch.rs`).
    pub(in crate::vfs) async fn dir_entries(&self, ino: Ino) -> VfsResult<Vec<DirEntry>> {
        self.ensure_listed(ino).await?;
        self.prefetch_below(ino);
        loop {
            if let Some(v) = self.listed_entries(ino)? {
                return Ok(v);
            }
            // Dropped meanwhile (`trim`): list it again.
            self.ensure_listed(ino).await?;
        }
    }

    /// The entries of directory `ino` with `.` and `..`, if its listing is in the table.
    fn listed_entries(&self, ino: Ino) -> VfsResult<Option<Vec<DirEntry>>> {
        let t = self.table();
        let Some((children, _)) = Self::page_of(&t, ino, None, usize::MAX)? else {
            return Ok(None);
        };
        let dots = [(ino, "."), (t.dir(ino)?.parent, "..")].map(|(ino, name)| DirEntry {
            ino,
            name: name.into(),
            kind: EntryKind::Dir,
        });
        Ok(Some(dots.into_iter().chain(children).collect()))
    }

    /// Up to `limit` entries of directory `ino` (without `.` and `..`) in name order, after
    /// the entry numbered `after` (from the first if `None`), and whether they run to the
    /// end. Costs the page, not the directory, for clients that list page by page and resume
    /// after an entry (NFS). ENOENT if `after` is no longer in the directory.
    pub(in crate::vfs) async fn dir_page(
        &self,
        ino: Ino,
        after: Option<Ino>,
        limit: usize,
    ) -> VfsResult<(Vec<DirEntry>, bool)> {
        self.ensure_listed(ino).await?;
        if after.is_none() {
            self.prefetch_below(ino);
        }
        loop {
            if let Some(page) = self.listed_page(ino, after, limit)? {
                return Ok(page);
            }
            // Dropped meanwhile (`trim`): list it again.
            self.ensure_listed(ino).await?;
        }
    }

    /// [`Self::dir_page`] if the listing of `ino` is in the table.
    fn listed_page(
        &self,
        ino: Ino,
        after: Option<Ino>,
        limit: usize,
    ) -> VfsResult<Option<(Vec<DirEntry>, bool)>> {
        Self::page_of(&self.table(), ino, after, limit)
    }

    /// [`Self::listed_page`] under the table lock `t`.
    fn page_of(
        t: &InodeTable,
        ino: Ino,
        after: Option<Ino>,
        limit: usize,
    ) -> VfsResult<Option<(Vec<DirEntry>, bool)>> {
        use std::ops::Bound;
        let Some(children) = &t.dir(ino)?.children else {
            return Ok(None);
        };
        let from = match after {
            None => Bound::Unbounded,
            Some(a) => {
                let i = t.get(a)?;
                // An entry with two names here resumes after the first: a file id names no
                // one name (NFS's cookie is one).
                let name = std::iter::once((i.parent, &i.name))
                    .chain(i.other_names.iter().map(|(d, n)| (*d, n)))
                    .filter(|(d, n)| *d == ino && children.get(n.as_str()) == Some(&a))
                    .map(|(_, n)| n.as_str())
                    .min()
                    .ok_or(Errno::ENOENT)?;
                Bound::Excluded(name)
            }
        };
        let mut page = Vec::new();
        let mut rest = children.range::<str, _>((from, Bound::Unbounded));
        for (name, &child) in rest.by_ref().take(limit) {
            page.push(DirEntry {
                ino: child,
                name: name.clone(),
                kind: t.get(child)?.kind,
            });
        }
        let end = rest.next().is_none();
        Ok(Some((page, end)))
    }

    /// The directory holding `ino` (the root is its own parent).
    pub(in crate::vfs) fn parent_of(&self, ino: Ino) -> VfsResult<Ino> {
        Ok(self.table().get(ino)?.parent)
    }

    pub(in crate::vfs) fn readlink(&self, ino: Ino) -> VfsResult<String> {
        let t = self.table();
        let i = t.get(ino)?;
        i.target.clone().ok_or(Errno::EINVAL)
    }

    /// Metadata for a new entry of `kind` created by `caller` in `parent`. Where the catalog
    /// keeps no owner or mode, the entry shows what every other entry shows.
    fn new_meta(&self, parent: Ino, kind: EntryKind, mode: u32, caller: Caller) -> VfsResult<Meta> {
        if let Some(fixed) = self.catalog.capabilities().fixed_owner {
            return Ok(Meta::now(fixed.mode(kind), fixed.uid, fixed.gid));
        }
        let t = self.table();
        let p = t.dir(parent)?;
        let inherit_gid = p.meta.mode & S_ISGID != 0;
        let gid = if inherit_gid { p.meta.gid } else { caller.gid };
        Ok(Meta::now(mode & 0o7777, caller.uid, gid))
    }

    /// EPERM, with one log line saying why, for an entry `kind` the catalog cannot keep.
    fn check_storable(&self, kind: EntryKind) -> VfsResult<()> {
        let caps = self.catalog.capabilities();
        let what = match kind {
            EntryKind::Symlink if !caps.symlinks => "symbolic links",
            EntryKind::Fifo | EntryKind::Socket if !caps.special_files => "FIFOs and sockets",
            EntryKind::CharDevice(_) | EntryKind::BlockDevice(_) if !caps.special_files => {
                "device nodes"
            }
            _ => return Ok(()),
        };
        tracing::warn!("refused with EPERM: this bucket cannot store {what}");
        Err(Errno::EPERM)
    }

    /// Refuse the name `parent/name` where the catalog could not hold its path (a plain
    /// bucket's path rules, its mounted folder included), with the errno the rule gives and
    /// one log line, rather than at a commit that would then fail for good. A directory
    /// `moved` there brings the paths below it along: the longest this mount knows is checked.
    fn check_holdable(&self, parent: Ino, name: &str, moved: Option<Ino>) -> VfsResult<()> {
        let path = {
            let t = self.table();
            let mut path = t.child_path(parent, name)?;
            if let Some(src) = moved {
                if let Some((_, deepest)) = Self::deepest_below(&t, src, 0) {
                    let (from, below) = (t.path_of(src)?, t.path_of(deepest)?);
                    path.push_str(below.get(from.len()..).unwrap_or_default());
                }
            }
            path
        };
        self.catalog.check_path(&path).map_err(|why| {
            tracing::warn!(
                "refused {path:?} with {}: {why}; this bucket cannot hold such a path",
                std::io::Error::from_raw_os_error(why.errno())
            );
            Errno(why.errno())
        })
    }

    /// The entry below directory `dir` (as far as this mount has listed it) with the longest
    /// path, and that path's length below `dir` plus `depth`.
    fn deepest_below(t: &InodeTable, dir: Ino, depth: usize) -> Option<(usize, Ino)> {
        let children = t.get(dir).ok()?.children.as_ref()?;
        children
            .iter()
            .map(|(name, &c)| {
                let len = depth + 1 + name.len();
                Self::deepest_below(t, c, len).unwrap_or((len, c))
            })
            .max_by_key(|(len, _)| *len)
    }

    /// The catalog op that records directory `dir` with its mtime/ctime set to `now`.
    fn touched_dir_op(t: &InodeTable, dir: Ino, now: i64) -> VfsResult<CatalogOp> {
        let mut e = t.entry_of(dir, None)?;
        e.meta.mtime_ns = now;
        e.meta.ctime_ns = now;
        Ok(CatalogOp::Put(e))
    }

    /// Apply what [`Self::touched_dir_op`] committed.
    fn touch_dir(t: &mut InodeTable, dir: Ino, now: i64) -> VfsResult<()> {
        let d = t.get_mut(dir)?;
        d.meta.mtime_ns = now;
        d.meta.ctime_ns = now;
        Ok(())
    }

    /// Create a new entry `name` in `parent` (file, directory or symlink). Returns its inode.
    pub(in crate::vfs) async fn create_entry(
        &self,
        parent: Ino,
        name: &str,
        kind: EntryKind,
        mode: u32,
        target: Option<String>,
        caller: Caller,
    ) -> VfsResult<Ino> {
        self.check_writable()?;
        check_name(name)?;
        self.check_storable(kind)?;
        self.check_holdable(parent, name, None)?;
        let _ns = self.lock_with_listed(&[parent]).await?;
        let meta = self.new_meta(parent, kind, mode, caller)?;
        let (entry, parent_op) = {
            let t = self.table();
            if t.child(parent, name)?.is_some() {
                return Err(Errno::EEXIST);
            }
            let entry = Entry {
                path: t.child_path(parent, name)?,
                kind,
                content: None,
                target,
                meta,
                link: None,
            };
            (entry, Self::touched_dir_op(&t, parent, meta.mtime_ns)?)
        };
        self.push_ns(vec![CatalogOp::Put(entry.clone()), parent_op])?;
        let mut t = self.table();
        Self::touch_dir(&mut t, parent, meta.mtime_ns)?;
        let ino = t.insert_child(parent, name, entry)?;
        t.get_mut(ino)?.nlookup += 1;
        Ok(ino)
    }

    pub(in crate::vfs) async fn mkdir(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        caller: Caller,
    ) -> VfsResult<Attr> {
        let ino = self
            .create_entry(parent, name, EntryKind::Dir, mode, None, caller)
            .await?;
        self.getattr(ino)
    }

    pub(in crate::vfs) async fn symlink(
        &self,
        parent: Ino,
        name: &str,
        target: &str,
        caller: Caller,
    ) -> VfsResult<Attr> {
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() > libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = self
            .create_entry(
                parent,
                name,
                EntryKind::Symlink,
                0o777,
                Some(target.into()),
                caller,
            )
            .await?;
        self.getattr(ino)
    }

    /// Remove `name` from `parent`: a file or symlink (`dir == false`) or an empty directory.
    pub(in crate::vfs) async fn remove(&self, parent: Ino, name: &str, dir: bool) -> VfsResult<()> {
        self.check_writable()?;
        let (_ns, ino) = self.lock_listed(&[parent], (parent, name)).await?;
        let ino = ino.ok_or(Errno::ENOENT)?;
        let is_dir = self.table().get(ino)?.is_dir();
        match (dir, is_dir) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        let nonempty = |c: &inode::Children| !c.is_empty();
        if is_dir
            && self
                .table()
                .get(ino)?
                .children
                .as_ref()
                .is_some_and(nonempty)
        {
            return Err(Errno::ENOTEMPTY);
        }
        let now = now_ns();
        let ops = {
            let t = self.table();
            let path = t.child_path(parent, name)?;
            let mut ops = vec![
                CatalogOp::Delete { path },
                Self::touched_dir_op(&t, parent, now)?,
            ];
            // A file with other names stays, with a new ctime.
            ops.extend(Self::survivor_op(&t, ino, (parent, name), now)?);
            ops
        };
        self.push_ns(ops)?;
        let (still_linked, staged, reaped) = {
            let mut t = self.table();
            Self::touch_dir(&mut t, parent, now)?;
            t.get_mut(ino)?.meta.ctime_ns = now;
            let still_linked = t.unlink_name(ino, parent, name)?;
            (still_linked, t.get(ino)?.staged().cloned(), t.reap(ino))
        };
        self.journal_name_change(ino, still_linked, staged);
        drop(reaped);
        Ok(())
    }

    /// For a file losing the name `parent/name`: the op recording its new ctime under a name
    /// it keeps, if it keeps one.
    fn survivor_op(
        t: &InodeTable,
        ino: Ino,
        (parent, name): (Ino, &str),
        now: i64,
    ) -> VfsResult<Option<CatalogOp>> {
        let Some(path) = t.other_path(ino, parent, name)? else {
            return Ok(None);
        };
        let mut meta = t.get(ino)?.meta;
        meta.ctime_ns = now;
        Ok(Some(CatalogOp::SetMeta { path, meta }))
    }

    /// After file `ino` lost a name: journal that it left the bucket, or the path it keeps.
    fn journal_name_change(&self, ino: Ino, still_linked: bool, staged: Option<Arc<Staged>>) {
        if still_linked {
            self.journal_paths(ino);
        } else {
            self.journal_unlinked(staged);
        }
    }

    /// `link(2)`: `new_parent/new_name` becomes another name of file `ino`, taking one kernel
    /// reference like a lookup. Only where the catalog can keep hard links.
    pub(in crate::vfs) async fn link(
        &self,
        ino: Ino,
        new_parent: Ino,
        new_name: &str,
    ) -> VfsResult<Attr> {
        self.check_writable()?;
        check_name(new_name)?;
        if !self.catalog.capabilities().hard_links {
            tracing::warn!(
                "link(2) refused with EPERM: this store keeps one name per file (no hard links)"
            );
            return Err(Errno::EPERM);
        }
        self.check_holdable(new_parent, new_name, None)?;
        let _ns = self.lock_with_listed(&[new_parent]).await?;
        let now = now_ns();
        let ops = {
            let t = self.table();
            let i = t.get(ino)?;
            if i.is_dir() {
                return Err(Errno::EPERM);
            }
            if !i.linked {
                return Err(Errno::ENOENT);
            }
            if t.child(new_parent, new_name)?.is_some() {
                return Err(Errno::EEXIST);
            }
            let from = t.path_of(ino)?;
            let to = t.child_path(new_parent, new_name)?;
            let mut meta = i.meta;
            meta.ctime_ns = now;
            vec![
                CatalogOp::Link {
                    from: from.clone(),
                    to,
                },
                CatalogOp::SetMeta { path: from, meta },
                Self::touched_dir_op(&t, new_parent, now)?,
            ]
        };
        self.push_ns(ops)?;
        {
            let mut t = self.table();
            Self::touch_dir(&mut t, new_parent, now)?;
            t.add_name(ino, new_parent, new_name)?;
            let i = t.get_mut(ino)?;
            i.meta.ctime_ns = now;
            i.nlookup += 1;
        }
        self.getattr(ino)
    }

    /// Rename `parent/name` to `new_parent/new_name`, replacing an existing target
    /// atomically. `noreplace` is RENAME_NOREPLACE.
    pub(in crate::vfs) async fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        noreplace: bool,
    ) -> VfsResult<()> {
        self.check_writable()?;
        check_name(new_name)?;
        let (_ns, dst) = self
            .lock_listed(&[parent, new_parent], (new_parent, new_name))
            .await?;
        let src = self.table().child(parent, name)?.ok_or(Errno::ENOENT)?;
        if dst == Some(src) {
            return Ok(());
        }
        let src_dir = self.table().get(src)?.is_dir();
        if src_dir && self.table().is_within(new_parent, src) {
            return Err(Errno::EINVAL);
        }
        self.check_holdable(new_parent, new_name, src_dir.then_some(src))?;
        if let Some(dst) = dst {
            if noreplace {
                return Err(Errno::EEXIST);
            }
            let dst_dir = self.table().get(dst)?.is_dir();
            match (src_dir, dst_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => {
                    let t = self.table();
                    if t.get(dst)?.children.as_ref().is_some_and(|c| !c.is_empty()) {
                        return Err(Errno::ENOTEMPTY);
                    }
                }
                (false, false) => {}
            }
        }
        let now = now_ns();
        let ops = {
            let t = self.table();
            let from = t.child_path(parent, name)?;
            let to = t.child_path(new_parent, new_name)?;
            let mut ops = vec![
                CatalogOp::Rename { from, to },
                Self::touched_dir_op(&t, parent, now)?,
            ];
            if new_parent != parent {
                ops.push(Self::touched_dir_op(&t, new_parent, now)?);
            }
            if let Some(dst) = dst {
                // A replaced file with other names stays, with a new ctime.
                ops.extend(Self::survivor_op(&t, dst, (new_parent, new_name), now)?);
            }
            ops
        };
        self.push_ns(ops)?;
        let (replaced, reaped) = {
            let mut t = self.table();
            Self::touch_dir(&mut t, parent, now)?;
            Self::touch_dir(&mut t, new_parent, now)?;
            let replaced = match dst {
                Some(dst) => {
                    t.get_mut(dst)?.meta.ctime_ns = now;
                    let still_linked = t.unlink_name(dst, new_parent, new_name)?;
                    (still_linked, t.get(dst)?.staged().cloned(), t.reap(dst))
                }
                None => (true, None, None),
            };
            t.move_name(src, (parent, name), (new_parent, new_name))?;
            t.get_mut(src)?.meta.ctime_ns = now;
            ((replaced.0, replaced.1), replaced.2)
        };
        match dst {
            // A replaced file that keeps another name: that name may now be its primary.
            Some(dst) if replaced.0 => self.journal_paths(dst),
            _ => self.journal_unlinked(replaced.1),
        }
        drop(reaped);
        // The renamed file, or every file below a renamed directory, has a new path.
        self.journal_paths(src);
        Ok(())
    }

    /// A file left the bucket: its journal must never bring it back.
    fn journal_unlinked(&self, staged: Option<Arc<Staged>>) {
        if let Some(s) = staged {
            if let Err(e) = s.note_unlinked() {
                tracing::warn!("cannot journal an unlink: {e:?}");
            }
            self.staging.journal_changed(&s);
        }
    }

    /// Journal the current path of every staged file at or below `moved` (a file that got
    /// a new name, or a directory that did). A file costs one lookup; a directory what is
    /// staged, not what is listed.
    pub(in crate::vfs) fn journal_paths(&self, moved: Ino) {
        let staged: Vec<(Arc<Staged>, String)> = {
            let t = self.table();
            let journaled = |i: &Inode| Some((i.staged()?.clone(), t.path_of(i.ino).ok()?));
            match t.get(moved) {
                Ok(m) if m.is_dir() => t
                    .staged_inodes()
                    .filter(|i| i.linked && t.is_within(i.ino, moved))
                    .filter_map(journaled)
                    .collect(),
                Ok(m) if m.linked => journaled(m).into_iter().collect(),
                _ => Vec::new(),
            }
        };
        for (s, p) in staged {
            match s.note_path(&p) {
                Ok(true) => self.staging.journal_changed(&s),
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot journal a rename: {e:?}"),
            }
        }
    }

    /// Whether `set` may be applied to `ino` at all (checked before any part of it is):
    /// EROFS on a read-only mount, EPERM for an owner or mode a fixed-owner catalog cannot keep.
    pub(in crate::vfs) fn check_setattr(&self, ino: Ino, set: &SetAttr) -> VfsResult<()> {
        if meta_change(set) || set.size.is_some() {
            self.check_writable()?;
        }
        if let Some(fixed) = self.catalog.capabilities().fixed_owner {
            // Owner and mode are the mount's; setting them to what they are is allowed (cp -p,
            // tar and rsync do), changing them is not.
            let kind = self.table().get(ino)?.kind;
            let changes = set.mode.is_some_and(|m| m & 0o7777 != fixed.mode(kind))
                || set.uid.is_some_and(|u| u != fixed.uid)
                || set.gid.is_some_and(|g| g != fixed.gid);
            if changes {
                tracing::warn!(
                    "chmod/chown refused with EPERM: this bucket keeps no owner or mode (every entry shows uid {} gid {} mode {:o}/{:o}, set at mount)",
                    fixed.uid, fixed.gid, fixed.file_mode, fixed.dir_mode
                );
                return Err(Errno::EPERM);
            }
        }
        Ok(())
    }

    /// Apply the metadata part of `set` (checked by [`Self::check_setattr`]): a namespace
    /// change, local first, committed by the flusher.
    pub(in crate::vfs) async fn set_meta(&self, ino: Ino, set: &SetAttr) -> VfsResult<()> {
        if meta_change(set) {
            let _ns = self.lock.lock().await;
            let now = now_ns();
            let (meta, commit) = {
                let t = self.table();
                let i = t.get(ino)?;
                let mut m = i.meta;
                if let Some(mode) = set.mode {
                    m.mode = mode & 0o7777;
                }
                if let Some(uid) = set.uid {
                    m.uid = uid;
                }
                if let Some(gid) = set.gid {
                    m.gid = gid;
                }
                let at = |ts: TimeSet| match ts {
                    TimeSet::Now => now,
                    TimeSet::At(ns) => ns,
                };
                if let Some(a) = set.atime {
                    m.atime_ns = at(a);
                }
                if let Some(mt) = set.mtime {
                    m.mtime_ns = at(mt);
                }
                m.ctime_ns = now;
                let commit = if i.linked {
                    Some(CatalogOp::SetMeta {
                        path: t.path_of(ino)?,
                        meta: m,
                    })
                } else {
                    None
                };
                (m, commit)
            };
            if let Some(op) = commit {
                self.push_ns(vec![op])?;
            }
            self.table().get_mut(ino)?.meta = meta;
        }
        Ok(())
    }
}

/// Whether `set` changes metadata (anything but the size).
fn meta_change(set: &SetAttr) -> bool {
    set.mode.is_some()
        || set.uid.is_some()
        || set.gid.is_some()
        || set.atime.is_some()
        || set.mtime.is_some()
}
