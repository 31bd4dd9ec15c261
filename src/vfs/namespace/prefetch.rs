//! Subtree prefetch: one request per page of entries, not one per directory.
//!
//! When a directory is first walked (`opendir`) and has subdirectories not yet listed, its
//! own listing has already been answered (one `list_dir`); a background task then reads its
//! whole subtree with [`Catalog::list_tree`], page by page in path order, and installs into
//! the inode table every directory whose listing the pages seen so far complete. In path
//! order the entries below `d/` are one contiguous run, so `d` is complete once an entry past
//! that run arrives (or the listing ends). A directory's inode exists only once its parent is
//! listed, so a completed listing whose parent is still incomplete is held until the parent
//! completes, then installed top-down with it.
//!
//! Invariant (what makes a prefetched listing as good as `list_dir`): a listing is installed
//! only into a directory that is still unlisted, found by its path while holding `ns_lock`,
//! and only if no rename of this mount happened since the prefetch started (the namespace ops
//! pending then were committed before the first page was read). Every other local change
//! needs the directory it changes to be listed first, and an installed listing never replaces
//! one: local changes win. Listings holding hard-linked entries are left to `list_dir` (which
//! lists every name of a group, see `inode.rs`).
//!
//! `ensure_listed` of a directory below a running prefetch that has not yet passed it waits
//! for the prefetch instead of sending its own request; once the prefetch ends, fails, is
//! abandoned, or passes the directory without installing it, it lists the directory itself.
//!
//! Memory: the task holds the page being read and the listings of directories not yet
//! complete (with the complete ones below them); it stops after [`PREFETCH_BUDGET`] entries,
//! leaving the rest to per-directory listing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::remote::{Entry, EntryKind, FixedOwner, Meta, RemoteError};
use crate::vfs::namespace::inode::{Ino, ROOT_INO};

use super::Namespace;

/// Most entries one prefetch reads; a bigger subtree is left to per-directory listing past it.
pub(super) const PREFETCH_BUDGET: usize = 50_000;
/// Most prefetches running at once.
const MAX_ACTIVE: usize = 4;

/// The prefetches of one mount.
pub(in crate::vfs) struct Prefetches {
    /// The namespace the tasks install into.
    ns: Weak<Namespace>,
    active: Mutex<Vec<Arc<Prefetch>>>,
    /// The catalog cannot list recursively.
    unsupported: AtomicBool,
    /// Directories found bigger than the budget: not prefetched again.
    too_big: Mutex<HashSet<String>>,
    /// Entries one prefetch reads at most ([`PREFETCH_BUDGET`]; tests lower it).
    budget: AtomicUsize,
}

impl Prefetches {
    pub(super) fn new(ns: Weak<Namespace>) -> Self {
        Prefetches {
            ns,
            active: Mutex::default(),
            unsupported: AtomicBool::new(false),
            too_big: Mutex::default(),
            budget: AtomicUsize::new(PREFETCH_BUDGET),
        }
    }
}

/// One running prefetch of the subtree below `top`.
struct Prefetch {
    top: String,
    /// The mount's rename count when it started.
    renames: u64,
    progress: watch::Sender<Progress>,
}

#[derive(Clone, Debug, Default)]
struct Progress {
    /// The last path read.
    last: Option<String>,
    ended: bool,
}

impl Prefetch {
    /// Whether `path` lies strictly below `top` and the prefetch has not passed it.
    fn covers(&self, path: &str) -> bool {
        let below = if self.top.is_empty() {
            !path.is_empty()
        } else {
            path.strip_prefix(&self.top)
                .is_some_and(|r| r.starts_with('/'))
        };
        let p = self.progress.borrow();
        below && !p.ended && !p.last.as_deref().is_some_and(|l| past_run(path, l))
    }

    fn end(&self) {
        self.progress.send_modify(|p| p.ended = true);
    }
}

/// Whether `last` sorts after every path below directory `dir` (`dir/` … `dir0`).
fn past_run(dir: &str, last: &str) -> bool {
    if dir.is_empty() {
        return false;
    }
    last.as_bytes() >= format!("{dir}0").as_bytes()
}

/// `path`'s parent directory (`""` for a top-level name).
fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// Whether `path` lies strictly below directory `dir`.
fn is_below(path: &str, dir: &str) -> bool {
    if dir.is_empty() {
        return !path.is_empty();
    }
    path.len() > dir.len() + 1 && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// A complete listing of one directory, ready to install.
#[derive(Debug, PartialEq)]
pub(super) struct Listing {
    pub path: String,
    pub entries: Vec<Entry>,
}

/// A directory being read: its entry (where the catalog listed one), its children so far,
/// and the complete listings below it, top-down, waiting for it.
struct OpenDir {
    path: String,
    entry: Option<Entry>,
    children: Vec<Entry>,
    /// Newest mtime below it: the time of a directory the catalog has no entry for.
    newest_ns: i64,
    held: Vec<Listing>,
}

/// Builds complete directory listings from the pages of a recursive listing of `top` (pure:
/// no I/O). Open directories are the ancestors of the last path read (a stack).
pub(super) struct TreeBuilder {
    top: String,
    fixed: Option<FixedOwner>,
    open: Vec<OpenDir>,
    last: Option<String>,
}

impl TreeBuilder {
    pub(super) fn new(top: &str, fixed: Option<FixedOwner>) -> Self {
        TreeBuilder {
            top: top.to_string(),
            fixed,
            open: Vec::new(),
            last: None,
        }
    }

    /// The directories still incomplete.
    pub(super) fn open_paths(&self) -> Vec<String> {
        self.open.iter().map(|d| d.path.clone()).collect()
    }

    /// Read one page (`end`: the last one). Returns the listings it completed whose parent is
    /// installed already (`top` or one returned before), parents before children. An entry
    /// out of path order, or outside `top`, is an error: the listing cannot be trusted.
    ///
    /// Open directories form a stack in which each ends its run before the one below it: an
    /// ancestor of the last entry, or a directory whose entry came before names sorting
    /// between it and its run (`d`, `d-x`, `d.y`, then `d/…`).
    pub(super) fn push_page(
        &mut self,
        entries: Vec<Entry>,
        end: bool,
    ) -> Result<Vec<Listing>, String> {
        let mut ready = Vec::new();
        for e in entries {
            if !is_below(&e.path, &self.top) {
                return Err(format!("{:?} is not below {:?}", e.path, self.top));
            }
            if self.last.as_ref().is_some_and(|l| e.path <= *l) {
                return Err(format!(
                    "{:?} came after {:?}: not in path order",
                    e.path,
                    self.last.as_deref().unwrap_or_default()
                ));
            }
            self.last = Some(e.path.clone());
            // Close what this path is past.
            while self.open.last().is_some_and(|d| past_run(&d.path, &e.path)) {
                self.close(&mut ready);
            }
            // Open the directories between the innermost open ancestor and the entry.
            let parent = parent_of(&e.path).to_string();
            let base = self
                .open
                .iter()
                .rev()
                .find(|d| is_below(&e.path, &d.path))
                .map_or(self.top.clone(), |d| d.path.clone());
            let mut missing = Vec::new();
            let mut p = parent.as_str();
            while p != base {
                missing.push(p.to_string());
                p = parent_of(p);
            }
            for path in missing.into_iter().rev() {
                self.open.push(OpenDir {
                    path,
                    entry: None,
                    children: Vec::new(),
                    newest_ns: i64::MIN,
                    held: Vec::new(),
                });
            }
            let at = self.open.iter().rposition(|d| d.path == parent);
            if let Some(i) = at {
                self.open[i].newest_ns = self.open[i].newest_ns.max(e.meta.mtime_ns);
            }
            if e.kind == EntryKind::Dir {
                self.open.push(OpenDir {
                    path: e.path.clone(),
                    entry: Some(e),
                    children: Vec::new(),
                    newest_ns: i64::MIN,
                    held: Vec::new(),
                });
            } else if let Some(i) = at {
                self.open[i].children.push(e);
            }
            // (An entry directly in `top` needs nothing: `top` is listed already.)
        }
        if end {
            while !self.open.is_empty() {
                self.close(&mut ready);
            }
        }
        Ok(ready)
    }

    /// Close the innermost open directory: its listing, with the complete ones below it,
    /// goes to its parent's held listings, or to `ready` when its parent is `top`; its entry
    /// joins its parent's children.
    fn close(&mut self, ready: &mut Vec<Listing>) {
        let Some(d) = self.open.pop() else { return };
        let entry = d.entry.unwrap_or_else(|| {
            // Implied by the paths below it: the catalog keeps no directories.
            let f = self.fixed;
            let t = if d.newest_ns == i64::MIN {
                0
            } else {
                d.newest_ns
            };
            let meta = Meta {
                mode: f.map_or(0o755, |f| f.dir_mode),
                uid: f.map_or(0, |f| f.uid),
                gid: f.map_or(0, |f| f.gid),
                atime_ns: t,
                mtime_ns: t,
                ctime_ns: t,
            };
            Entry::dir(d.path.clone(), meta)
        });
        let parent = parent_of(&d.path);
        let mut out = vec![Listing {
            path: d.path.clone(),
            entries: d.children,
        }];
        out.extend(d.held);
        match self.open.iter_mut().rev().find(|p| p.path == parent) {
            Some(p) => {
                p.newest_ns = p.newest_ns.max(d.newest_ns).max(entry.meta.mtime_ns);
                p.children.push(entry);
                p.held.extend(out);
            }
            None => ready.extend(out),
        }
    }
}

impl Namespace {
    /// Wait for a running prefetch to list directory `path` (`dir`). Returns once `dir` is
    /// listed, or when no prefetch is going to list it (the caller lists it itself).
    pub(super) async fn wait_for_prefetch(&self, dir: Ino, path: &str) {
        loop {
            let renames = self.log.lock().renames();
            let mut rx = {
                let active = self.prefetch.active.lock();
                match active
                    .iter()
                    .find(|p| p.renames == renames && p.covers(path))
                {
                    Some(p) => p.progress.subscribe(),
                    None => return,
                }
            };
            // Subscribed before looking: an install after this look wakes the wait.
            if self.table().is_listed(dir) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
            if self.table().is_listed(dir) {
                return;
            }
        }
    }

    /// Start prefetching the subtree below listed directory `dir` if it has subdirectories not
    /// listed yet, the catalog can list recursively, and no prefetch covers it already.
    pub(super) fn prefetch_below(&self, dir: Ino) {
        let pf = &self.prefetch;
        if pf.unsupported.load(Ordering::Relaxed) {
            return;
        }
        let ns = pf.ns.clone();
        let path = {
            let t = self.table();
            let Ok(d) = t.get(dir) else { return };
            if d.prefetched || !d.linked {
                return;
            }
            let unlisted_subdir = d.children.as_ref().is_some_and(|c| {
                c.values()
                    .any(|&c| t.get(c).is_ok_and(|i| i.is_dir() && i.children.is_none()))
            });
            if !unlisted_subdir {
                return;
            }
            let Ok(path) = t.path_of(dir) else { return };
            if pf.too_big.lock().contains(&path) {
                return;
            }
            path
        };
        let renames = self.log.lock().renames();
        let p = {
            let mut active = pf.active.lock();
            let covered = active
                .iter()
                .any(|p| p.renames == renames && (p.top == path || p.covers(&path)));
            if covered || active.len() >= MAX_ACTIVE {
                return;
            }
            let p = Arc::new(Prefetch {
                top: path,
                renames,
                progress: watch::channel(Progress::default()).0,
            });
            active.push(p.clone());
            p
        };
        if let Ok(d) = self.table().get_mut(dir) {
            d.prefetched = true;
        }
        tokio::spawn(async move {
            let running = Running { ns, p };
            if let Err(e) = run(&running.ns, &running.p).await {
                tracing::debug!("prefetch of /{} stopped: {e}", running.p.top);
            }
        });
    }

    /// Install complete listings read by prefetch `renames`; false when a rename since it
    /// started makes its paths unreliable. See the invariant at the top of this module.
    async fn install_prefetched(&self, renames: u64, listings: Vec<Listing>) -> bool {
        if listings.is_empty() {
            return true;
        }
        let _ns = self.lock.lock().await;
        if self.log.lock().renames() != renames {
            return false;
        }
        let mut t = self.table();
        for l in listings {
            let Some(dir) = t.unlisted_dir_at(&l.path) else {
                continue;
            };
            if l.entries.iter().any(|e| e.link.is_some()) {
                continue;
            }
            if t.install_listing(dir, l.entries).is_ok() {
                if let Ok(d) = t.get_mut(dir) {
                    d.prefetched = true;
                }
            }
        }
        self.trim_locked(&mut t, ROOT_INO);
        true
    }
}

/// A running prefetch task: however it ends (done, failed, or dropped with its runtime), its
/// waiters are woken and it leaves the active list, so nothing waits for it forever.
struct Running {
    ns: Weak<Namespace>,
    p: Arc<Prefetch>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.p.end();
        if let Some(v) = self.ns.upgrade() {
            v.prefetch
                .active
                .lock()
                .retain(|q| !Arc::ptr_eq(q, &self.p));
        }
    }
}

/// The prefetch task: page by page until the end, the budget, a failure or a rename.
async fn run(ns: &Weak<Namespace>, p: &Prefetch) -> Result<(), RemoteError> {
    let (catalog, fixed) = {
        let Some(v) = ns.upgrade() else {
            return Ok(());
        };
        // The catalog must hold every change made here before it is read.
        v.drain()
            .await
            .map_err(|e| RemoteError::Other(format!("pending changes not committed: {e:?}")))?;
        (v.catalog.clone(), v.catalog.capabilities().fixed_owner)
    };
    let mut b = TreeBuilder::new(&p.top, fixed);
    let mut cursor: Option<String> = None;
    let mut seen = 0usize;
    loop {
        let Some(page) = catalog.list_tree(&p.top, cursor.as_deref()).await? else {
            if let Some(v) = ns.upgrade() {
                v.prefetch.unsupported.store(true, Ordering::Relaxed);
            }
            return Ok(());
        };
        seen += page.entries.len();
        let last = page.entries.last().map(|e| e.path.clone());
        let end = page.next.is_none();
        let ready = b.push_page(page.entries, end).map_err(RemoteError::Other)?;
        let Some(v) = ns.upgrade() else {
            return Ok(());
        };
        if !v.install_prefetched(p.renames, ready).await {
            return Err(RemoteError::Other("a rename meanwhile".into()));
        }
        if let Some(last) = last {
            p.progress.send_modify(|pr| pr.last = Some(last));
        }
        if end {
            return Ok(());
        }
        let budget = v.prefetch.budget.load(Ordering::Relaxed);
        if seen >= budget {
            v.prefetch.too_big.lock().extend(b.open_paths());
            return Err(RemoteError::Other(format!(
                "more than {budget} entries; the rest is listed directory by directory"
            )));
        }
        cursor = page.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::FileId;

    fn meta(t: i64) -> Meta {
        Meta {
            mode: 0o644,
            uid: 1,
            gid: 1,
            atime_ns: t,
            mtime_ns: t,
            ctime_ns: t,
        }
    }

    fn file(path: &str, t: i64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            content: Some(FileId {
                hash: "h".into(),
                size: 1,
            }),
            target: None,
            meta: meta(t),
            link: None,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry::dir(path.into(), meta(7))
    }

    fn names(l: &Listing) -> (String, Vec<String>) {
        let mut n: Vec<String> = l
            .entries
            .iter()
            .map(|e| e.path.rsplit('/').next().unwrap().to_string())
            .collect();
        n.sort();
        (l.path.clone(), n)
    }

    fn all(ready: &[Listing]) -> Vec<(String, Vec<String>)> {
        ready.iter().map(names).collect()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn past_run_compares_against_the_end_of_the_directory_run() {
        assert!(!past_run("a", "a/z/z"));
        assert!(
            !past_run("a", "a-b"),
            "'-' sorts before '/': still before a/'s run"
        );
        assert!(!past_run("a", "a.b"), "'.' sorts before '/' too");
        assert!(past_run("a", "a0"));
        assert!(past_run("a", "b"));
        assert!(
            !past_run("", "zzz"),
            "the root's run never ends before the listing"
        );
    }

    #[test]
    fn a_directory_completes_when_a_page_passes_its_run_and_installs_after_its_parent() {
        // Plain: files only, directories implied.
        let mut b = TreeBuilder::new("t", None);
        let r = b
            .push_page(vec![file("t/a/x", 5), file("t/a/y/1", 9)], false)
            .unwrap();
        assert!(r.is_empty(), "a and a/y may still grow");
        let r = b
            .push_page(
                vec![file("t/a/y/2", 3), file("t/a0", 1), file("t/b/c/d", 1)],
                false,
            )
            .unwrap();
        // `t/a0` is past a's run: a completes, and a/y (complete earlier) follows it.
        assert_eq!(
            all(&r),
            vec![
                ("t/a".to_string(), s(&["x", "y"])),
                ("t/a/y".to_string(), s(&["1", "2"]))
            ]
        );
        // The implied directory shows the newest time below it.
        let y = &r[0].entries[1];
        assert_eq!((y.kind, y.meta.mtime_ns), (EntryKind::Dir, 9));
        let r = b.push_page(vec![], true).unwrap();
        assert_eq!(
            all(&r),
            vec![
                ("t/b".to_string(), s(&["c"])),
                ("t/b/c".to_string(), s(&["d"]))
            ]
        );
    }

    #[test]
    fn explicit_directories_keep_their_entries_and_empty_ones_list_empty() {
        let mut b = TreeBuilder::new("", None);
        // `a-x` sorts between `a` and `a/…`, `a/e-1` between `a/e` and `a/e/…`.
        let page = vec![
            dir("a"),
            file("a-x", 1),
            dir("a/e"),
            file("a/e-1", 1),
            file("a/e/z", 1),
            dir("a/f"),
            file("b", 1),
        ];
        let r = b.push_page(page, true).unwrap();
        assert_eq!(
            all(&r),
            vec![
                ("a".to_string(), s(&["e", "e-1", "f"])),
                ("a/e".to_string(), s(&["z"])),
                ("a/f".to_string(), s(&[]))
            ]
        );
        let e = r[0].entries.iter().find(|e| e.path == "a/e").unwrap();
        assert_eq!(*e, dir("a/e"), "the catalog's own entry, not a made-up one");
    }

    #[test]
    fn entries_out_of_order_or_outside_the_directory_are_refused() {
        let mut b = TreeBuilder::new("t", None);
        b.push_page(vec![file("t/b", 1)], false).unwrap();
        assert!(b.push_page(vec![file("t/a", 1)], false).is_err());
        let mut b = TreeBuilder::new("t", None);
        assert!(b.push_page(vec![file("u/a", 1)], false).is_err());
        assert!(b.push_page(vec![file("t", 1)], false).is_err());
    }

    #[test]
    fn covers_only_paths_below_the_top_not_yet_passed() {
        let p = Prefetch {
            top: "t".into(),
            renames: 0,
            progress: watch::channel(Progress::default()).0,
        };
        assert!(p.covers("t/a"));
        assert!(!p.covers("t"));
        assert!(!p.covers("t0/a"));
        assert!(!p.covers("u"));
        p.progress.send_modify(|pr| pr.last = Some("t/b/x".into()));
        assert!(!p.covers("t/a"), "passed");
        assert!(p.covers("t/b"), "inside its run");
        assert!(p.covers("t/c"));
        p.end();
        assert!(!p.covers("t/c"));
    }
}
#[cfg(test)]
mod vfs_tests {
    //! Against the local store (which lists trees in pages of 1,000): what a prefetch lists
    //! equals what per-directory listing gives, also when the mount changes the tree while a
    //! prefetch runs.
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;
    use tokio::sync::Semaphore;

    use crate::remote::{
        Catalog, CatalogOp, Changes, Entry, EntryKind, Meta, RemoteResult, TreePage,
    };
    use crate::vfs::tests::{mount_with, remount, resolve, tmp, write_file, ME};
    use crate::vfs::{Errno, Vfs};

    /// The store's catalog, counting listings; without `list_tree` when `tree` is false (as
    /// before prefetching), and holding every `list_tree` call until `gate` opens.
    struct Wrapped {
        inner: Arc<dyn Catalog>,
        tree: bool,
        gate: Semaphore,
        lists: AtomicU64,
        trees: AtomicU64,
    }

    impl Wrapped {
        fn new(inner: Arc<dyn Catalog>, tree: bool, open: bool) -> Arc<Wrapped> {
            let gate = Semaphore::new(if open { Semaphore::MAX_PERMITS } else { 0 });
            Arc::new(Wrapped {
                inner,
                tree,
                gate,
                lists: AtomicU64::new(0),
                trees: AtomicU64::new(0),
            })
        }

        fn open(&self) {
            self.gate.add_permits(Semaphore::MAX_PERMITS);
        }

        fn counts(&self) -> (u64, u64) {
            (
                self.lists.load(Ordering::SeqCst),
                self.trees.load(Ordering::SeqCst),
            )
        }
    }

    #[async_trait]
    impl Catalog for Wrapped {
        fn capabilities(&self) -> crate::remote::Capabilities {
            self.inner.capabilities()
        }
        async fn link_paths(&self, link: u64) -> RemoteResult<Vec<String>> {
            self.inner.link_paths(link).await
        }
        async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            self.inner.list_dir(dir).await
        }
        async fn list_tree(
            &self,
            dir: &str,
            cursor: Option<&str>,
        ) -> RemoteResult<Option<TreePage>> {
            if !self.tree {
                return Ok(None);
            }
            self.trees.fetch_add(1, Ordering::SeqCst);
            let _pass = self.gate.acquire().await.expect("gate");
            self.inner.list_tree(dir, cursor).await
        }
        async fn head(&self, path: &str) -> RemoteResult<Option<Entry>> {
            self.inner.head(path).await
        }
        async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64> {
            self.inner.commit(ops).await
        }
        async fn revision(&self) -> RemoteResult<u64> {
            self.inner.revision().await
        }
        async fn changes(
            &self,
            since: u64,
            wait: std::time::Duration,
        ) -> RemoteResult<Option<Changes>> {
            self.inner.changes(since, wait).await
        }
    }

    async fn mount(
        dir: &std::path::Path,
        tree: bool,
        open: bool,
    ) -> (crate::vfs::tests::Mounted, Arc<Wrapped>) {
        let mut w = None;
        let m = mount_with(
            dir,
            |_| {},
            |c, s| {
                let x = Wrapped::new(c, tree, open);
                w = Some(x.clone());
                (x as Arc<dyn Catalog>, s)
            },
        )
        .await;
        (m, w.unwrap())
    }

    /// Walk like `find`: opendir, then every child; `path kind size mode target` lines.
    async fn walk(v: &Vfs, from: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![(resolve(v, from).await.unwrap(), from.to_string())];
        while let Some((dir, path)) = todo.pop() {
            let fh = v.opendir(dir).await.unwrap();
            let entries = v.readdir(fh, 2).unwrap();
            v.releasedir(fh);
            for e in entries {
                let a = v.find(dir, &e.name).await.unwrap();
                let p = format!("{path}/{}", e.name);
                let target = if a.kind == EntryKind::Symlink {
                    v.readlink(a.ino).unwrap()
                } else {
                    String::new()
                };
                out.push(format!("{p} {:?} {} {:o} {target}", a.kind, a.size, a.mode));
                if a.kind == EntryKind::Dir {
                    todo.push((a.ino, p));
                }
            }
        }
        out.sort();
        out
    }

    fn meta(mode: u32) -> Meta {
        Meta::now(mode, 0, 0)
    }

    /// A tree over several pages whose names sort between a directory and its contents
    /// (`d`, `d-x`, `d.y`, `d/…`), with empty directories and symlinks.
    fn tree_ops() -> Vec<CatalogOp> {
        let mut ops = Vec::new();
        for a in 0..6 {
            for b in ["d", "d-x", "d.y", "e"] {
                let dir = format!("top/a{a}/{b}");
                ops.push(CatalogOp::Put(Entry::dir(
                    format!("{dir}/empty"),
                    meta(0o700),
                )));
                for f in 0..120 {
                    ops.push(CatalogOp::Put(Entry {
                        path: format!("{dir}/f{f}"),
                        kind: EntryKind::File,
                        content: None,
                        target: None,
                        meta: meta(0o640),
                        link: None,
                    }));
                }
                ops.push(CatalogOp::Put(Entry {
                    path: format!("{dir}-link"),
                    kind: EntryKind::Symlink,
                    content: None,
                    target: Some(format!("{b}/f1")),
                    meta: meta(0o777),
                    link: None,
                }));
            }
        }
        ops
    }

    async fn stored_tree(dir: &std::path::Path) {
        let (m, _) = mount(dir, false, true).await;
        m.vfs.ns.catalog().commit(tree_ops()).await.unwrap();
        m.vfs.shutdown(std::time::Duration::from_secs(30)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prefetched_tree_equals_the_tree_listed_directory_by_directory() {
        let (_d, dir) = tmp();
        stored_tree(&dir).await;
        let (m, per_dir_catalog) = mount(&dir, false, true).await;
        let per_dir = walk(&m.vfs, "top").await;
        let (lists, _) = per_dir_catalog.counts();
        assert_eq!(m.vfs.shutdown(std::time::Duration::from_secs(30)).await, 0);
        drop(m);
        let (m, w) = mount(&dir, true, true).await;
        let prefetched = walk(&m.vfs, "top").await;
        assert!(prefetched.len() > 2_000, "{}", prefetched.len());
        assert_eq!(prefetched, per_dir);
        // The root and `top` by `list_dir`, the rest in pages: far fewer requests.
        let (l, t) = w.counts();
        assert!(lists > 40, "{lists} listings directory by directory");
        assert_eq!((l, t), (2, 3), "listings, tree pages");
        // A name absent from a listed directory costs no request.
        assert_eq!(
            m.vfs
                .find(resolve(&m.vfs, "top/a1/d").await.unwrap(), "nope")
                .await,
            Err(Errno::ENOENT)
        );
        assert_eq!(w.counts(), (2, 3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_budget_the_rest_is_listed_directory_by_directory() {
        let (_d, dir) = tmp();
        stored_tree(&dir).await;
        let (m, _) = mount(&dir, false, true).await;
        let per_dir = walk(&m.vfs, "top").await;
        assert_eq!(m.vfs.shutdown(std::time::Duration::from_secs(30)).await, 0);
        drop(m);
        let (m, w) = mount(&dir, true, true).await;
        // One page, then it stops: `top` and the directory it was in are not prefetched
        // again; the directories not reached are listed (and prefetched) on their own.
        m.vfs.ns.prefetch.budget.store(1_000, Ordering::Relaxed);
        let got = walk(&m.vfs, "top").await;
        assert_eq!(got, per_dir);
        let too_big = m.vfs.ns.prefetch.too_big.lock().clone();
        assert!(too_big.contains("top/a2"), "{too_big:?}");
        let (lists, trees) = w.counts();
        assert!(
            lists > 2 && trees > 1,
            "{lists} listings, {trees} tree pages"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_made_while_a_prefetch_runs_win_and_a_rename_stops_it() {
        let (_d, dir) = tmp();
        stored_tree(&dir).await;
        let (m, w) = mount(&dir, true, false).await;
        let v = m.vfs.clone();
        let top = resolve(&v, "top").await.unwrap();
        v.releasedir(v.opendir(top).await.unwrap());
        // The prefetch of `top` waits at the gate; a lookup below it waits for the prefetch.
        let waiter = tokio::spawn({
            let v = v.clone();
            async move { walk(&v, "top/a2").await }
        });
        // A file made in a listed directory meanwhile needs no listing.
        write_file(&v, top, "new.txt", b"made meanwhile").await;
        w.open();
        let a2 = waiter.await.unwrap();
        assert_eq!(a2.len(), 4 * 123, "{}", a2.len());
        let (lists, _) = w.counts();
        assert_eq!(lists, 2, "top/a2 came from the prefetch");
        // Shut down, not just dropped: the first mount's flusher and refresher must not still
        // run against the store while the second mount uses it.
        assert_eq!(m.vfs.shutdown(std::time::Duration::from_secs(30)).await, 0);
        drop(m);

        // Again, with a rename while the prefetch is held: it installs nothing, and every
        // directory is listed as the rename left it.
        let (m, w) = mount(&dir, true, false).await;
        let v = m.vfs.clone();
        let top = resolve(&v, "top").await.unwrap();
        v.releasedir(v.opendir(top).await.unwrap());
        v.rename(top, "a1", top, "moved", false).await.unwrap();
        let a3 = resolve(&v, "top/a3").await.unwrap();
        write_file(&v, resolve(&v, "top/a3/d").await.unwrap(), "g", b"new").await;
        v.mkdir(a3, "made", 0o755, ME).await.unwrap();
        w.open();
        let got = walk(&v, "top").await;
        let m = remount(m, &dir).await;
        let again = walk(&m.vfs, "top").await;
        assert_eq!(got, again, "what the mount showed is what was stored");
        assert!(got.iter().any(|l| l.starts_with("top/moved/d/f7 File 0")));
        assert!(!got.iter().any(|l| l.starts_with("top/a1")));
        assert!(got.iter().any(|l| l.starts_with("top/a3/d/g File 3")));
        assert!(got.iter().any(|l| l.starts_with("top/a3/made Dir")));
        assert!(got.iter().any(|l| l.starts_with("top/new.txt File 14")));
    }
}
