//! The inode table: the mounted namespace as the kernel sees it.
//!
//! A directory's `children` is `None` until it is listed from the catalog once; after that
//! the table is authoritative for it (every namespace change goes through the VFS, which
//! commits to the catalog and then updates the table under the namespace lock).
//!
//! Hard links: a file inode has a primary name (`parent`, `name`: the path its commits use)
//! and `other_names`. Invariant: once an inode of a hard-link group is in the table, every
//! name of the group is (the VFS lists the directories holding them, `Vfs::ensure_listed`),
//! so the link count is the number of names and unlinking one name never strands the file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::remote::{Entry, EntryKind, FileId, Meta};
use crate::vfs::errno::{Errno, VfsResult};
use crate::vfs::write::staging::Staged;

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

/// A listed directory's entries by name, and how many of them are directories (a
/// directory's link count is 2 + that). Read through `Deref`; changed only through
/// [`Children::insert`] and [`Children::remove`], which keep the count. An inode's kind never
/// changes in place (a different kind is a new inode), so the count stays true.
#[derive(Clone, Debug, Default)]
pub struct Children {
    names: BTreeMap<String, Ino>,
    dirs: u32,
}

impl Children {
    /// Add `name` (a free slot) for `ino`, a directory or not.
    pub fn insert(&mut self, name: String, ino: Ino, is_dir: bool) {
        if self.names.insert(name, ino).is_none() && is_dir {
            self.dirs += 1;
        }
    }

    /// Remove `name`, whose inode is a directory or not.
    pub fn remove(&mut self, name: &str, is_dir: bool) -> Option<Ino> {
        let gone = self.names.remove(name);
        if gone.is_some() && is_dir {
            self.dirs -= 1;
        }
        gone
    }

    /// How many entries are directories.
    pub fn subdirs(&self) -> u32 {
        self.dirs
    }
}

impl std::ops::Deref for Children {
    type Target = BTreeMap<String, Ino>;
    fn deref(&self) -> &Self::Target {
        &self.names
    }
}

impl IntoIterator for Children {
    type Item = (String, Ino);
    type IntoIter = std::collections::btree_map::IntoIter<String, Ino>;
    fn into_iter(self) -> Self::IntoIter {
        self.names.into_iter()
    }
}

pub struct Inode {
    pub ino: Ino,
    /// The primary name.
    pub parent: Ino,
    pub name: String,
    /// Further names (hard links), as (directory, name).
    pub other_names: Vec<(Ino, String)>,
    /// The catalog's hard-link group of this file, once it has had a second name.
    pub link: Option<u64>,
    pub kind: EntryKind,
    pub meta: Meta,
    /// Files: the body the catalog holds for this path (`None` = empty file).
    pub remote: Option<FileId>,
    /// Symlinks: the target.
    pub target: Option<String>,
    /// Directories: name → child, once listed.
    pub children: Option<Children>,
    /// Directories: a prefetch of the subtree below it was started, or listed it (see
    /// `prefetch.rs`): no new one is started for it.
    pub prefetched: bool,
    /// Listed directories: when the listing was last used (the table's clock), so the
    /// least recently used listings are the first dropped (see [`InodeTable::trim`]).
    used: u64,
    /// Files opened for write, or written and not yet evicted: the staging file. Set only
    /// through [`InodeTable::set_staged`], which keeps the table's index of staged inodes.
    staged: Option<Arc<Staged>>,
    pub open_handles: u32,
    /// Those of `open_handles` a stateless frontend (NFS) keeps for its own use. They do not
    /// pin a version: an NFS client names the file, not an open of it, so another writer's
    /// body reaches it in place.
    pub pooled_handles: u32,
    /// Kernel references (lookup count); the inode may be dropped when it reaches zero
    /// after it was unlinked.
    pub nlookup: u64,
    /// False once its last name was unlinked or replaced: an orphan that lives until its
    /// last close.
    pub linked: bool,
    /// The last background flush failure, until a commit succeeds. Reported once to each
    /// handle that wrote before it happened (see `Vfs::close`).
    pub flush_error: Option<FlushError>,
    /// Another writer's version of this file, seen while this mount had changes of its own
    /// pending: its hash, or `deleted`. The next commit replaces it (last writer wins) and
    /// reports that it did.
    pub overwritten: Option<String>,
}

/// A failed background flush: its errno and when it happened (a `Vfs` event number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushError {
    pub errno: Errno,
    pub at: u64,
    /// The file was moved aside after a conflict: news for its writers even once the moved
    /// copy commits, so a commit does not clear it.
    pub conflict: bool,
}

/// Attributes as the frontends need them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

pub fn ns_to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

pub fn time_to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

pub fn now_ns() -> i64 {
    time_to_ns(SystemTime::now())
}

impl Inode {
    fn from_entry(ino: Ino, parent: Ino, name: String, e: Entry) -> Self {
        Inode {
            ino,
            parent,
            name,
            other_names: Vec::new(),
            link: e.link,
            kind: e.kind,
            meta: e.meta,
            remote: e.content,
            target: e.target,
            children: None,
            prefetched: false,
            used: 0,
            staged: None,
            open_handles: 0,
            pooled_handles: 0,
            nlookup: 0,
            linked: true,
            flush_error: None,
            overwritten: None,
        }
    }

    /// Attributes, given the file's current size (which lives in staging when staged).
    pub fn attr(&self, file_size: u64) -> Attr {
        let names = if self.linked {
            1 + self.other_names.len() as u32
        } else {
            0
        };
        let (size, nlink) = match self.kind {
            EntryKind::File => (file_size, names),
            EntryKind::Fifo
            | EntryKind::Socket
            | EntryKind::CharDevice(_)
            | EntryKind::BlockDevice(_) => (0, names),
            EntryKind::Symlink => (self.target.as_ref().map_or(0, |t| t.len() as u64), names),
            // Unlisted, the number of subdirectories is not known: 1 says so (as btrfs does),
            // where 2 would tell `find` and `fts` there are none to descend into.
            EntryKind::Dir => (4096, self.children.as_ref().map_or(1, |c| 2 + c.subdirs())),
        };
        Attr {
            ino: self.ino,
            kind: self.kind,
            size,
            mode: self.meta.mode,
            nlink,
            uid: self.meta.uid,
            gid: self.meta.gid,
            atime: ns_to_time(self.meta.atime_ns),
            mtime: ns_to_time(self.meta.mtime_ns),
            ctime: ns_to_time(self.meta.ctime_ns),
        }
    }

    /// Size of the committed body (what a file reads as when it has no staging).
    pub fn remote_size(&self) -> u64 {
        self.remote.as_ref().map_or(0, |r| r.size)
    }

    /// The staging copy, if the file has one.
    pub fn staged(&self) -> Option<&Arc<Staged>> {
        self.staged.as_ref()
    }

    /// Whether `s` is this inode's current staging copy (it may have been replaced).
    pub fn holds(&self, s: &Arc<Staged>) -> bool {
        self.staged.as_ref().is_some_and(|c| Arc::ptr_eq(c, s))
    }

    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
}

/// What the kernel must forget after other writers changed the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Attributes and cached pages of an inode.
    Inode(Ino),
    /// The name `name` in directory `parent`.
    Entry { parent: Ino, name: String },
}

/// The outcome of [`InodeTable::reconcile`].
#[derive(Default)]
pub struct Reconciled {
    pub invalidations: Vec<Invalidation>,
    /// Entries added, removed or changed.
    pub changed: u64,
    /// Staging of inodes that left the table (dropped outside the table lock).
    pub reaped: Vec<Arc<Staged>>,
    /// Hard-link groups new to the table (the caller loads their other names).
    pub new_links: Vec<u64>,
}

/// How many inodes the table keeps, and what it remembers of those it drops.
#[derive(Clone, Copy, Debug)]
pub struct TableLimits {
    /// Above this many inodes, listings nothing references are dropped (0: never).
    pub soft_limit: usize,
    /// Remember where dropped entries were (a ghost per entry), so a frontend that names
    /// files by inode number without lookups (NFS file handles) can have them found again.
    pub keep_ghosts: bool,
}

/// What the table remembers of an entry it dropped: its directory and name. Looking that
/// name up again gives the entry back its number.
struct Ghosts {
    of: HashMap<Ino, (Ino, Arc<str>)>,
    /// The same, by directory then name.
    in_dir: HashMap<Ino, HashMap<Arc<str>, Ino>>,
}

impl Ghosts {
    fn add(&mut self, ino: Ino, dir: Ino, name: &str) {
        let name: Arc<str> = Arc::from(name);
        self.in_dir
            .entry(dir)
            .or_default()
            .insert(name.clone(), ino);
        self.of.insert(ino, (dir, name));
    }

    /// The number a dropped `dir/name` had, taken back.
    fn take(&mut self, dir: Ino, name: &str) -> Option<Ino> {
        let names = self.in_dir.get_mut(&dir)?;
        let ino = names.remove(name)?;
        if names.is_empty() {
            self.in_dir.remove(&dir);
        }
        self.of.remove(&ino);
        Some(ino)
    }

    /// Forget every ghost of `dir` (it was listed afresh, or is gone): the entries not in
    /// its new listing no longer exist.
    fn clear_dir(&mut self, dir: Ino) {
        for (_, ino) in self.in_dir.remove(&dir).into_iter().flatten() {
            self.of.remove(&ino);
        }
    }
}

pub struct InodeTable {
    map: HashMap<Ino, Inode>,
    next: Ino,
    /// The inode of each hard-link group in the table.
    by_link: HashMap<u64, Ino>,
    /// Invariant: exactly the inodes whose `staged` is set. Walks over staged files (the
    /// staging budget, renames, refreshes) cost what is staged, not what was ever listed.
    staged: HashSet<Ino>,
    limits: TableLimits,
    ghosts: Ghosts,
    /// Ticks at each use of a listing (see `Inode::used`).
    clock: u64,
    /// Inodes added or forgotten by the kernel since the last trim: a trim runs only after
    /// a tenth of the limit changed, so its walk over listed directories costs O(1) per
    /// operation amortised.
    since_trim: usize,
}

/// The outcome of [`InodeTable::trim`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub listings: u64,
    pub inodes: u64,
}

impl InodeTable {
    pub fn new(root: Entry) -> Self {
        let mut map = HashMap::new();
        let mut r = Inode::from_entry(ROOT_INO, ROOT_INO, String::new(), root);
        r.nlookup = 1;
        map.insert(ROOT_INO, r);
        InodeTable {
            map,
            next: ROOT_INO + 1,
            by_link: HashMap::new(),
            staged: HashSet::new(),
            limits: TableLimits {
                soft_limit: 0,
                keep_ghosts: false,
            },
            ghosts: Ghosts {
                of: HashMap::new(),
                in_dir: HashMap::new(),
            },
            clock: 0,
            since_trim: 0,
        }
    }

    pub fn set_limits(&mut self, limits: TableLimits) {
        self.limits = limits;
    }

    /// Inodes in the table.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Where a dropped entry was: its directory (in the table, or itself a ghost) and name.
    pub fn ghost(&self, ino: Ino) -> Option<(Ino, Arc<str>)> {
        self.ghosts.of.get(&ino).cloned()
    }

    /// Whether listed directory `dir`'s listing is installed; if so, mark it used now.
    pub fn use_listing(&mut self, dir: Ino) -> bool {
        self.clock += 1;
        let now = self.clock;
        match self.map.get_mut(&dir) {
            Some(d) if d.children.is_some() => {
                d.used = now;
                true
            }
            _ => false,
        }
    }

    /// The kernel dropped references to `n` inodes: they may now be trimmed.
    pub fn note_forgotten(&mut self, n: usize) {
        self.since_trim += n;
    }

    /// Keep the table near its soft limit: when over it (and a tenth of the limit changed
    /// since the last try), drop the least recently used listings whose entries nothing
    /// holds (no kernel reference, no open handle, no staging copy, no listing below, no
    /// other name) down to nine tenths of the limit. A dropped listing is read from the
    /// catalog again when next needed (after pending changes are committed, as any listing);
    /// the directory itself stays; so does the listing of `keep` (the one in use). Returns
    /// what was dropped.
    pub fn trim(&mut self, keep: Ino) -> Trimmed {
        let limit = self.limits.soft_limit;
        let mut out = Trimmed::default();
        if limit == 0 || self.map.len() <= limit || self.since_trim < limit.div_ceil(10) {
            return out;
        }
        self.since_trim = 0;
        let target = limit - limit / 10;
        let mut dirs: Vec<(u64, Ino)> = self
            .map
            .values()
            .filter(|i| i.children.is_some() && i.ino != keep)
            .map(|i| (i.used, i.ino))
            .collect();
        dirs.sort_unstable();
        // Leaves first: a directory's listing can go once those below it went, so a few
        // passes empty a cold subtree bottom up.
        loop {
            let before = out.listings;
            dirs.retain(|&(_, d)| {
                if self.map.len() <= target || !self.droppable(d) {
                    return true;
                }
                out.inodes += self.drop_listing(d) as u64;
                out.listings += 1;
                false
            });
            if out.listings == before || self.map.len() <= target {
                return out;
            }
        }
    }

    /// Whether every entry of listed directory `dir` can leave the table.
    fn droppable(&self, dir: Ino) -> bool {
        let Some(children) = self.map.get(&dir).and_then(|d| d.children.as_ref()) else {
            return false;
        };
        children.values().all(|c| {
            self.map.get(c).is_some_and(|c| {
                c.nlookup == 0
                    && c.open_handles == 0
                    && c.staged.is_none()
                    && c.linked
                    && c.link.is_none()
                    && c.other_names.is_empty()
                    && c.children.is_none()
            })
        })
    }

    /// Drop `dir`'s listing and its entries (see [`Self::droppable`]); returns how many.
    fn drop_listing(&mut self, dir: Ino) -> usize {
        let Some(children) = self.map.get_mut(&dir).and_then(|d| d.children.take()) else {
            return 0;
        };
        let n = children.len();
        for (name, c) in children {
            self.map.remove(&c);
            if self.limits.keep_ghosts {
                self.ghosts.add(c, dir, &name);
            }
        }
        n
    }

    pub fn get(&self, ino: Ino) -> VfsResult<&Inode> {
        self.map.get(&ino).ok_or(Errno::ENOENT)
    }

    pub fn get_mut(&mut self, ino: Ino) -> VfsResult<&mut Inode> {
        self.map.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    pub fn dir(&self, ino: Ino) -> VfsResult<&Inode> {
        let i = self.get(ino)?;
        if !i.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(i)
    }

    /// Catalog path of a linked inode (`""` for the root).
    pub fn path_of(&self, ino: Ino) -> VfsResult<String> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let i = self.get(cur)?;
            if !i.linked {
                return Err(Errno::ENOENT);
            }
            parts.push(i.name.as_str());
            cur = i.parent;
        }
        parts.reverse();
        Ok(parts.join("/"))
    }

    /// Path of `name` inside directory `parent`.
    pub fn child_path(&self, parent: Ino, name: &str) -> VfsResult<String> {
        let p = self.path_of(parent)?;
        Ok(if p.is_empty() {
            name.to_string()
        } else {
            format!("{p}/{name}")
        })
    }

    /// The child of a listed directory.
    pub fn child(&self, parent: Ino, name: &str) -> VfsResult<Option<Ino>> {
        let d = self.dir(parent)?;
        Ok(d.children.as_ref().and_then(|c| c.get(name).copied()))
    }

    pub fn is_listed(&self, dir: Ino) -> bool {
        self.map.get(&dir).is_some_and(|d| d.children.is_some())
    }

    /// Install a directory listing fetched from the catalog. A listing that lost the race
    /// against another one is dropped: the table is already authoritative. A name of a
    /// hard-link group already in the table becomes another name of its inode. Returns the
    /// groups new to the table (the caller loads their other names).
    pub fn install_listing(&mut self, dir: Ino, entries: Vec<Entry>) -> VfsResult<Vec<u64>> {
        if self.dir(dir)?.children.is_some() {
            return Ok(Vec::new());
        }
        self.get_mut(dir)?.children = Some(Children::default());
        self.since_trim += entries.len();
        let mut new_links = Vec::new();
        for e in entries {
            let name = e.path.rsplit('/').next().unwrap_or("").to_string();
            let (_, new_link) = self.add_listed(dir, name, e)?;
            new_links.extend(new_link);
        }
        // Dropped entries the new listing lacks are gone from the catalog.
        self.ghosts.clear_dir(dir);
        self.use_listing(dir);
        Ok(new_links)
    }

    /// Add catalog entry `e` as `dir/name` (a free slot of a listed directory); a directory
    /// comes unlisted. A name of a hard-link group already in the table becomes another name
    /// of its inode. Returns the inode, and the group if it is new to the table.
    pub(in crate::vfs) fn add_listed(
        &mut self,
        dir: Ino,
        name: String,
        e: Entry,
    ) -> VfsResult<(Ino, Option<u64>)> {
        let known = e.link.and_then(|l| self.by_link.get(&l).copied());
        let is_dir = e.kind == EntryKind::Dir;
        let (ino, new_link) = match known {
            Some(ino) => {
                self.get_mut(ino)?.other_names.push((dir, name.clone()));
                (ino, None)
            }
            None => {
                // An entry dropped earlier gets its number back (NFS handles name it).
                let ino = match self.ghosts.take(dir, &name) {
                    Some(ino) => ino,
                    None => self.alloc(),
                };
                if let Some(l) = e.link {
                    self.by_link.insert(l, ino);
                }
                self.map
                    .insert(ino, Inode::from_entry(ino, dir, name.clone(), e.clone()));
                (ino, e.link)
            }
        };
        self.get_mut(dir)?
            .children
            .as_mut()
            .ok_or(Errno::EIO)?
            .insert(name, ino, is_dir);
        Ok((ino, new_link))
    }

    /// Inodes holding changes of this mount that a refresh must not touch: every file with a
    /// staging copy (dirty, being flushed or open: idle clean copies are dropped before a
    /// refresh), and every directory above one.
    fn local_changes(&self) -> HashSet<Ino> {
        let mut keep = HashSet::new();
        for i in self.staged_inodes().filter(|i| i.linked) {
            keep.insert(i.ino);
            let names = std::iter::once(i.parent).chain(i.other_names.iter().map(|(p, _)| *p));
            for mut dir in names {
                while keep.insert(dir) && dir != ROOT_INO {
                    match self.map.get(&dir) {
                        Some(d) => dir = d.parent,
                        None => break,
                    }
                }
            }
        }
        keep
    }

    /// Bring listed directory `dir` in line with a fresh catalog listing of it, made by other
    /// writers. Entries holding changes of this mount stay as they are (they will be
    /// committed over the remote ones: last writer wins). A removed name disappears; an
    /// open file keeps living as an orphan until closed. A file whose body changed while open
    /// keeps that body (its name moves to a new inode), so an open reader never mixes two
    /// versions; one not open takes the new body in place. `same_meta` says whether two
    /// metadata are the same as far as the catalog keeps them. With `keep_missing_dirs` (a
    /// catalog without empty directories) a directory the listing lacks stays: it may just
    /// have no file left, and this mount keeps empty directories until it unmounts.
    pub fn reconcile(
        &mut self,
        dir: Ino,
        entries: Vec<Entry>,
        same_meta: impl Fn(&Meta, &Meta) -> bool,
        keep_missing_dirs: bool,
    ) -> VfsResult<Reconciled> {
        let old = self.dir(dir)?.children.clone().ok_or(Errno::EIO)?;
        let keep = self.local_changes();
        let mut fresh: BTreeMap<String, Entry> = entries
            .into_iter()
            .map(|e| (e.path.rsplit('/').next().unwrap_or("").to_string(), e))
            .collect();
        let mut out = Reconciled::default();
        for (name, ino) in old {
            let e = fresh.remove(&name);
            if keep.contains(&ino) {
                let i = self.get_mut(ino)?;
                if i.kind == EntryKind::File && i.staged.is_some() {
                    match &e {
                        None => i.overwritten = Some("deleted".into()),
                        Some(e) if e.content != i.remote => {
                            i.overwritten = Some(
                                e.content
                                    .as_ref()
                                    .map_or("empty".into(), |c| c.hash.clone()),
                            );
                        }
                        Some(_) => {}
                    }
                }
                continue;
            }
            let i = self.get(ino)?;
            let replace = match &e {
                None if keep_missing_dirs && i.is_dir() => false,
                None => true,
                Some(e) => {
                    let body_changed = i.remote != e.content || i.target != e.target;
                    let open = i.open_handles > i.pooled_handles;
                    if e.kind != i.kind || (body_changed && open) {
                        true
                    } else if body_changed || !same_meta(&i.meta, &e.meta) || i.link != e.link {
                        let i = self.get_mut(ino)?;
                        i.remote = e.content.clone();
                        i.target = e.target.clone();
                        i.meta = e.meta;
                        out.invalidations.push(Invalidation::Inode(ino));
                        out.changed += 1;
                        false
                    } else {
                        false
                    }
                }
            };
            if replace {
                // Its own caches go too (a stateless frontend lets its handle go).
                out.invalidations.push(Invalidation::Inode(ino));
                self.unlink_name(ino, dir, &name)?;
                out.reaped.extend(self.reap(ino));
                if let Some(e) = e {
                    let (_, link) = self.add_listed(dir, name.clone(), e)?;
                    out.new_links.extend(link);
                }
                out.invalidations
                    .push(Invalidation::Entry { parent: dir, name });
                out.changed += 1;
            }
        }
        for (name, e) in fresh {
            let (_, link) = self.add_listed(dir, name.clone(), e)?;
            out.new_links.extend(link);
            out.invalidations
                .push(Invalidation::Entry { parent: dir, name });
            out.changed += 1;
        }
        if out.changed > 0 {
            out.invalidations.push(Invalidation::Inode(dir));
        }
        Ok(out)
    }

    /// The listed directory at catalog path `path`, if the table has it.
    pub fn listed_dir_at(&self, path: &str) -> Option<Ino> {
        let mut dir = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir = self.child(dir, part).ok()??;
        }
        self.is_listed(dir).then_some(dir)
    }

    /// The directory at catalog path `path` if the table has it and it is not listed yet (its
    /// parent is).
    pub fn unlisted_dir_at(&self, path: &str) -> Option<Ino> {
        let mut dir = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir = self.child(dir, part).ok()??;
        }
        let d = self.get(dir).ok()?;
        (d.is_dir() && d.children.is_none()).then_some(dir)
    }

    /// The paths of every listed directory.
    pub fn listed_dirs(&self) -> Vec<String> {
        self.map
            .values()
            .filter(|i| i.is_dir() && i.children.is_some() && i.linked)
            .filter_map(|i| self.path_of(i.ino).ok())
            .collect()
    }

    fn alloc(&mut self) -> Ino {
        let ino = self.next;
        self.next += 1;
        ino
    }

    /// Add a new entry under a listed directory.
    pub fn insert_child(&mut self, parent: Ino, name: &str, e: Entry) -> VfsResult<Ino> {
        let ino = self.alloc();
        let mut node = Inode::from_entry(ino, parent, name.to_string(), e);
        let is_dir = node.is_dir();
        if is_dir {
            node.children = Some(Children::default());
        }
        self.map.insert(ino, node);
        self.get_mut(parent)?
            .children
            .as_mut()
            .ok_or(Errno::EIO)?
            .insert(name.to_string(), ino, is_dir);
        Ok(ino)
    }

    /// Remove the name `parent/name` of `ino`. Without names left the inode is an orphan
    /// (readable and writable through open handles until the last close). Returns whether it
    /// is still linked.
    pub fn unlink_name(&mut self, ino: Ino, parent: Ino, name: &str) -> VfsResult<bool> {
        let is_dir = self.get(ino)?.is_dir();
        if let Some(c) = self.get_mut(parent)?.children.as_mut() {
            c.remove(name, is_dir);
        }
        let i = self.get_mut(ino)?;
        if i.parent == parent && i.name == name {
            if i.other_names.is_empty() {
                i.linked = false;
            } else {
                (i.parent, i.name) = i.other_names.remove(0);
            }
        } else {
            i.other_names.retain(|(p, n)| !(*p == parent && n == name));
        }
        Ok(i.linked)
    }

    /// Add `parent/name` (a free slot of a listed directory) as another name of `ino`. (The
    /// catalog assigns the group's number when it commits the link; the table learns it at the
    /// next mount: every name is in the table already.)
    pub fn add_name(&mut self, ino: Ino, parent: Ino, name: &str) -> VfsResult<()> {
        let is_dir = self.get(ino)?.is_dir();
        self.get_mut(parent)?
            .children
            .as_mut()
            .ok_or(Errno::EIO)?
            .insert(name.to_string(), ino, is_dir);
        self.get_mut(ino)?
            .other_names
            .push((parent, name.to_string()));
        Ok(())
    }

    /// Move the name `parent/name` of `ino` to `new_parent/new_name` (a free slot).
    pub fn move_name(
        &mut self,
        ino: Ino,
        (parent, name): (Ino, &str),
        (new_parent, new_name): (Ino, &str),
    ) -> VfsResult<()> {
        let is_dir = self.get(ino)?.is_dir();
        if let Some(c) = self.get_mut(parent)?.children.as_mut() {
            c.remove(name, is_dir);
        }
        self.get_mut(new_parent)?
            .children
            .as_mut()
            .ok_or(Errno::EIO)?
            .insert(new_name.to_string(), ino, is_dir);
        let i = self.get_mut(ino)?;
        let slot = if i.parent == parent && i.name == name {
            Some((&mut i.parent, &mut i.name))
        } else {
            i.other_names
                .iter_mut()
                .find(|(p, n)| *p == parent && n == name)
                .map(|(p, n)| (p, n))
        };
        let (p, n) = slot.ok_or(Errno::ENOENT)?;
        *p = new_parent;
        *n = new_name.to_string();
        Ok(())
    }

    /// The path of a name of `ino` other than `parent/name`, if it has one.
    pub fn other_path(&self, ino: Ino, parent: Ino, name: &str) -> VfsResult<Option<String>> {
        let i = self.get(ino)?;
        if !i.linked {
            return Ok(None);
        }
        if !(i.parent == parent && i.name == name) {
            return self.path_of(ino).map(Some);
        }
        match i.other_names.first() {
            Some((p, n)) => self.child_path(*p, n).map(Some),
            None => Ok(None),
        }
    }

    /// Drop an orphan that nothing references any more; returns its staging, if any, so
    /// the caller can delete the file outside the table lock.
    pub fn reap(&mut self, ino: Ino) -> Option<Arc<Staged>> {
        let i = self.map.get(&ino)?;
        if i.linked || i.open_handles > 0 || i.nlookup > 0 || ino == ROOT_INO {
            return None;
        }
        let i = self.map.remove(&ino)?;
        self.staged.remove(&ino);
        self.ghosts.clear_dir(ino);
        if let Some(l) = i.link {
            if self.by_link.get(&l) == Some(&ino) {
                self.by_link.remove(&l);
            }
        }
        i.staged
    }

    /// Whether `ino` is `anc` or lies below it.
    pub fn is_within(&self, mut ino: Ino, anc: Ino) -> bool {
        loop {
            if ino == anc {
                return true;
            }
            match self.map.get(&ino) {
                Some(i) if ino != ROOT_INO => ino = i.parent,
                _ => return false,
            }
        }
    }

    /// Give `ino` staging copy `s` (or none); returns the one it replaces.
    pub fn set_staged(
        &mut self,
        ino: Ino,
        s: Option<Arc<Staged>>,
    ) -> VfsResult<Option<Arc<Staged>>> {
        let i = self.map.get_mut(&ino).ok_or(Errno::ENOENT)?;
        match &s {
            Some(_) => self.staged.insert(ino),
            None => self.staged.remove(&ino),
        };
        Ok(std::mem::replace(&mut i.staged, s))
    }

    /// Every inode with a staging copy, linked or not, in no particular order.
    pub fn staged_inodes(&self) -> impl Iterator<Item = &Inode> {
        self.staged.iter().filter_map(|ino| self.map.get(ino))
    }

    /// The catalog entry for a linked inode, with `content` as its body.
    pub fn entry_of(&self, ino: Ino, content: Option<FileId>) -> VfsResult<Entry> {
        let i = self.get(ino)?;
        Ok(Entry {
            path: self.path_of(ino)?,
            kind: i.kind,
            content,
            target: i.target.clone(),
            meta: i.meta,
            link: i.link,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mtime_ns: i64) -> Meta {
        Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime_ns: 0,
            mtime_ns,
            ctime_ns: mtime_ns,
        }
    }

    fn file(path: &str, hash: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            content: Some(FileId {
                hash: hash.into(),
                size: 1,
            }),
            target: None,
            meta: meta(1),
            link: None,
        }
    }

    fn same(a: &Meta, b: &Meta) -> bool {
        a == b
    }

    #[test]
    fn reconcile_follows_other_writers_but_keeps_local_changes_and_open_versions() {
        let d = tempfile::tempdir().unwrap();
        let mut t = InodeTable::new(Entry::dir(String::new(), meta(0)));
        let names = ["same", "gone", "changed", "open", "local", "dir"];
        let mut listing: Vec<Entry> = names.iter().map(|n| file(n, "h0")).collect();
        listing[5] = Entry::dir("dir".into(), meta(0));
        t.install_listing(ROOT_INO, listing).unwrap();
        let ino = |t: &InodeTable, n: &str| t.child(ROOT_INO, n).unwrap();
        let open = ino(&t, "open").unwrap();
        t.get_mut(open).unwrap().open_handles = 1;
        let local = ino(&t, "local").unwrap();
        let staged = Staged::create(
            d.path().join("s"),
            FileId {
                hash: "h0".into(),
                size: 1,
            },
        )
        .unwrap();
        t.set_staged(local, Some(staged)).unwrap();
        let changed = ino(&t, "changed").unwrap();

        // Another writer: removed `gone` and `dir`, changed three bodies, added `new`.
        let fresh = vec![
            file("same", "h0"),
            file("changed", "h1"),
            file("open", "h1"),
            file("local", "h1"),
            file("new", "h1"),
        ];
        let r = t.reconcile(ROOT_INO, fresh.clone(), same, true).unwrap();
        assert!(ino(&t, "gone").is_none());
        assert!(
            ino(&t, "dir").is_some(),
            "kept: the catalog has no empty dirs"
        );
        assert!(ino(&t, "new").is_some());
        // Not open: the new body in place, the kernel's pages dropped.
        assert_eq!(ino(&t, "changed"), Some(changed));
        assert_eq!(t.get(changed).unwrap().remote.as_ref().unwrap().hash, "h1");
        assert!(r.invalidations.contains(&Invalidation::Inode(changed)));
        // Open: the name moves to a new inode; the open one keeps its version, unlinked.
        let reopened = ino(&t, "open").unwrap();
        assert_ne!(reopened, open);
        let old = t.get(open).unwrap();
        assert!(!old.linked && old.remote.as_ref().unwrap().hash == "h0");
        // Local changes stay, and the other version is remembered for the commit's report.
        assert_eq!(ino(&t, "local"), Some(local));
        let l = t.get(local).unwrap();
        assert_eq!(l.remote.as_ref().unwrap().hash, "h0");
        assert_eq!(l.overwritten.as_deref(), Some("h1"));
        assert_eq!(r.changed, 4);

        // The same listing again changes nothing; without the empty-dir rule `dir` goes.
        let r = t.reconcile(ROOT_INO, fresh.clone(), same, true).unwrap();
        assert_eq!((r.changed, r.invalidations.len()), (0, 0));
        t.reconcile(ROOT_INO, fresh, same, false).unwrap();
        assert!(ino(&t, "dir").is_none());
    }

    #[test]
    fn a_directory_links_its_subdirectories_only_and_says_unknown_until_listed() {
        let mut t = InodeTable::new(Entry::dir(String::new(), meta(0)));
        let nlink = |t: &InodeTable, ino: Ino| t.get(ino).unwrap().attr(0).nlink;
        assert_eq!(nlink(&t, ROOT_INO), 1, "not listed yet");
        let dir = |p: &str| Entry::dir(p.into(), meta(0));
        t.install_listing(ROOT_INO, vec![dir("a"), dir("b"), file("f", "h")])
            .unwrap();
        assert_eq!(nlink(&t, ROOT_INO), 4);
        let a = t.child(ROOT_INO, "a").unwrap().unwrap();
        assert_eq!(nlink(&t, a), 1);
        t.install_listing(a, vec![file("a/x", "h")]).unwrap();
        assert_eq!(nlink(&t, a), 2);
        // mkdir and create; a directory and a file moved; a directory removed.
        let c = t.insert_child(a, "c", dir("a/c")).unwrap();
        let y = t.insert_child(a, "y", file("a/y", "h")).unwrap();
        assert_eq!(nlink(&t, a), 3);
        t.move_name(c, (a, "c"), (ROOT_INO, "c")).unwrap();
        t.move_name(y, (a, "y"), (ROOT_INO, "y")).unwrap();
        assert_eq!((nlink(&t, a), nlink(&t, ROOT_INO)), (2, 5));
        let b = t.child(ROOT_INO, "b").unwrap().unwrap();
        t.unlink_name(b, ROOT_INO, "b").unwrap();
        assert_eq!(nlink(&t, ROOT_INO), 4);
        // Another writer made `c` a file and added a directory `d`.
        let fresh = vec![
            dir("a"),
            file("c", "h"),
            file("f", "h"),
            dir("d"),
            file("y", "h"),
        ];
        t.reconcile(ROOT_INO, fresh, same, false).unwrap();
        assert_eq!(nlink(&t, ROOT_INO), 4);
    }

    #[test]
    fn trim_drops_cold_unreferenced_listings_and_ghosts_give_numbers_back() {
        let mut t = InodeTable::new(Entry::dir(String::new(), meta(0)));
        t.set_limits(TableLimits {
            soft_limit: 40,
            keep_ghosts: true,
        });
        let dirs: Vec<Entry> = (0..4)
            .map(|d| Entry::dir(format!("d{d}"), meta(0)))
            .collect();
        t.install_listing(ROOT_INO, dirs).unwrap();
        let dir = |t: &InodeTable, d: usize| t.child(ROOT_INO, &format!("d{d}")).unwrap().unwrap();
        let files = |d: usize| -> Vec<Entry> {
            (0..20).map(|f| file(&format!("d{d}/f{f}"), "h")).collect()
        };
        for d in 0..4 {
            t.install_listing(dir(&t, d), files(d)).unwrap();
        }
        // d0 is the coldest listing, but one of its files is held by the kernel; d1 is next.
        let held = t.child(dir(&t, 0), "f3").unwrap().unwrap();
        t.get_mut(held).unwrap().nlookup = 1;
        let d1_f7 = t.child(dir(&t, 1), "f7").unwrap().unwrap();
        t.use_listing(dir(&t, 3));
        assert_eq!(t.len(), 85);
        let r = t.trim(ROOT_INO);
        assert!(r.listings >= 2 && t.len() <= 36, "{r:?}, {} left", t.len());
        assert!(t.is_listed(dir(&t, 0)), "a held entry keeps its listing");
        assert!(!t.is_listed(dir(&t, 1)), "the next coldest went");
        assert!(
            t.is_listed(ROOT_INO),
            "directories below it are still in the table"
        );
        assert!(t.get(d1_f7).is_err());
        assert_eq!(
            t.ghost(d1_f7).map(|(p, n)| (p, n.to_string())),
            Some((dir(&t, 1), "f7".into()))
        );

        // Listed again, f7 gets its number back; a name gone from the catalog stays unknown.
        let d1 = dir(&t, 1);
        let mut again = files(1);
        again.retain(|e| e.path != "d1/f8");
        t.install_listing(d1, again).unwrap();
        assert_eq!(t.child(d1, "f7").unwrap(), Some(d1_f7));
        assert!(t.ghost(d1_f7).is_none());
        assert!(t.child(d1, "f8").unwrap().is_none());
        assert!(
            !t.ghosts.of.values().any(|(p, _)| *p == d1),
            "no ghost of d1 is left after it was listed"
        );
    }

    #[test]
    fn trim_without_ghosts_forgets_and_runs_only_after_enough_changed() {
        let mut t = InodeTable::new(Entry::dir(String::new(), meta(0)));
        t.set_limits(TableLimits {
            soft_limit: 100,
            keep_ghosts: false,
        });
        t.install_listing(ROOT_INO, vec![Entry::dir("a".into(), meta(0))])
            .unwrap();
        let a = t.child(ROOT_INO, "a").unwrap().unwrap();
        t.install_listing(a, (0..150).map(|f| file(&format!("a/f{f}"), "h")).collect())
            .unwrap();
        let f0 = t.child(a, "f0").unwrap().unwrap();
        assert_eq!(t.trim(ROOT_INO).listings, 1);
        assert_eq!(t.len(), 2);
        assert!(t.ghosts.of.is_empty());
        assert!(t.ghost(f0).is_none());
        // Over the limit again, but nothing changed since: no walk.
        t.install_listing(a, (0..150).map(|f| file(&format!("a/f{f}"), "h")).collect())
            .unwrap();
        t.since_trim = 0;
        assert_eq!(t.trim(ROOT_INO), Trimmed::default());
        t.note_forgotten(10);
        assert_eq!(t.trim(ROOT_INO).listings, 1);
    }
}
