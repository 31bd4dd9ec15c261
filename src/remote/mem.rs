//! An in-memory remote: a [`Catalog`] ([`MemCatalog`]) and a [`Cas`] ([`MemCas`]) kept in
//! maps. It is the reference the other remotes are held to (tests/catalog_contract.rs), so
//! it is written to be obviously right rather than fast: a commit applies its ops to a copy
//! of the namespace and keeps the copy only if every op succeeded and every expectation held.
//!
//! [`MemCatalog::posix`] keeps what the local store keeps; [`MemCatalog::plain`] keeps what a
//! plain bucket keeps (files with a millisecond mtime; directories implied by the files below
//! them) and refuses or translates the rest as `PlainCatalog` does.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use xet_core_structures::merklehash::{file_hash, MerkleHash};
use xet_data::deduplication::Chunker;

use super::{
    names, Capabilities, Cas, Catalog, CatalogOp, Changes, ComposeEdit, Composed, Conflict, Entry,
    EntryKind, FileId, FixedOwner, Meta, RemoteError, RemoteResult, TreePage, UploadItem, Uploaded,
};

/// Entries per page of [`Catalog::list_tree`] unless set with [`MemCatalog::with_page`].
pub const TREE_PAGE: usize = 1000;

fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// Whether `path` is `dir` itself or lies below it (`""`: everything).
fn at_or_below(path: &str, dir: &str) -> bool {
    dir.is_empty() || path == dir || strictly_below(path, dir)
}

/// Whether `path` lies below directory `dir` (`""`: everything but the root).
fn strictly_below(path: &str, dir: &str) -> bool {
    if dir.is_empty() {
        return !path.is_empty();
    }
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

fn refused(what: String) -> RemoteError {
    RemoteError::Other(what)
}

/// The namespace and its history.
#[derive(Clone, Default)]
struct State {
    /// Path → entry. POSIX mode: every directory has an entry (the root is `""`). Plain
    /// mode: files only.
    entries: BTreeMap<String, Entry>,
    revision: u64,
    /// Revision → the directories whose listings changed in it (POSIX mode).
    changed: BTreeMap<u64, BTreeSet<String>>,
    /// The last hard-link group handed out.
    last_link: u64,
}

/// An in-memory [`Catalog`].
pub struct MemCatalog {
    caps: Capabilities,
    page: usize,
    state: Mutex<State>,
    /// The revision, for [`Catalog::changes`] waiters.
    revision: tokio::sync::watch::Sender<u64>,
}

impl MemCatalog {
    /// A catalog keeping everything a POSIX file system keeps, like the local store. Its
    /// root directory is owned by `0:0`, mode 0755, times 0.
    pub fn posix() -> Self {
        let mut state = State::default();
        let root = Entry::dir(String::new(), Meta::at(0o755, 0, 0, 0));
        state.entries.insert(String::new(), root);
        Self::with(Capabilities::POSIX, state)
    }

    /// A catalog keeping what a plain bucket keeps, every entry showing `owner`.
    pub fn plain(owner: FixedOwner) -> Self {
        Self::with(Capabilities::files_only(owner), State::default())
    }

    fn with(caps: Capabilities, state: State) -> Self {
        MemCatalog {
            caps,
            page: TREE_PAGE,
            state: Mutex::new(state),
            revision: tokio::sync::watch::channel(0).0,
        }
    }

    /// Pages of `page` entries from [`Catalog::list_tree`] (at least one).
    pub fn with_page(mut self, page: usize) -> Self {
        self.page = page.max(1);
        self
    }

    fn plain_mode(&self) -> Option<FixedOwner> {
        self.caps.fixed_owner
    }

    /// A plain bucket's metadata of an entry of `kind` with mtime `ms` milliseconds.
    fn plain_meta(owner: &FixedOwner, kind: EntryKind, ms: i64) -> Meta {
        Meta::at(
            owner.mode(kind),
            owner.uid,
            owner.gid,
            ms.saturating_mul(1_000_000),
        )
    }

    /// The directories directly below `dir` implied by plain-mode files, each with the
    /// newest mtime below it.
    fn implied_dirs(owner: &FixedOwner, s: &State, dir: &str) -> Vec<Entry> {
        let mut dirs: BTreeMap<String, i64> = BTreeMap::new();
        for (p, e) in s.entries.iter().filter(|(p, _)| strictly_below(p, dir)) {
            let rest = if dir.is_empty() {
                &p[..]
            } else {
                &p[dir.len() + 1..]
            };
            if let Some(i) = rest.find('/') {
                let d = if dir.is_empty() {
                    rest[..i].to_string()
                } else {
                    format!("{dir}/{}", &rest[..i])
                };
                let ms = e.meta.mtime_ns.div_euclid(1_000_000);
                let t = dirs.entry(d).or_insert(ms);
                *t = (*t).max(ms);
            }
        }
        dirs.into_iter()
            .map(|(p, ms)| Entry::dir(p, Self::plain_meta(owner, EntryKind::Dir, ms)))
            .collect()
    }
}

/// One commit in progress on a copy of the state (POSIX mode).
struct Tx<'a> {
    s: &'a mut State,
    changed: BTreeSet<String>,
    conflicts: Vec<Conflict>,
}

impl Tx<'_> {
    /// Store `e` as is, noting its parent's listing changed.
    fn put_row(&mut self, e: Entry) {
        self.changed.insert(parent_of(&e.path).to_string());
        self.s.entries.insert(e.path.clone(), e);
    }

    fn group(&self, link: u64) -> Vec<String> {
        let paths = self.s.entries.values().filter(|e| e.link == Some(link));
        paths.map(|e| e.path.clone()).collect()
    }

    /// Write `e`'s body and metadata to every name of `e`'s hard-link group (or to `e.path`
    /// alone).
    fn put_group(&mut self, e: &Entry) {
        let paths = match e.link {
            Some(link) => self.group(link),
            None => vec![e.path.clone()],
        };
        for path in paths {
            self.put_row(Entry { path, ..e.clone() });
        }
    }

    /// Directories for the missing ancestors of `path`, owned and timed like `like`.
    fn ensure_ancestors(&mut self, path: &str, like: &Meta) {
        let mut dir = parent_of(path);
        while !dir.is_empty() && !self.s.entries.contains_key(dir) {
            let meta = Meta {
                mode: 0o755,
                ..*like
            };
            self.put_row(Entry::dir(dir.to_string(), meta));
            dir = parent_of(dir);
        }
    }

    fn delete_tree(&mut self, path: &str) {
        self.changed.insert(parent_of(path).to_string());
        self.s.entries.retain(|p, _| !at_or_below(p, path));
    }

    /// A hard link `to` of `from`, which joins (or starts) `from`'s link group.
    fn link(&mut self, from: &str, to: &str) -> RemoteResult<()> {
        let src = self
            .s
            .entries
            .get(from)
            .cloned()
            .ok_or_else(|| RemoteError::NotFound(from.to_string()))?;
        if src.kind == EntryKind::Dir || to.is_empty() {
            return Err(refused(format!("cannot link {from:?} to {to:?}")));
        }
        if self.s.entries.contains_key(to) {
            return Err(refused(format!("link target {to:?} exists")));
        }
        let link = match src.link {
            Some(l) => l,
            None => {
                self.s.last_link += 1;
                let l = self.s.last_link;
                if let Some(e) = self.s.entries.get_mut(from) {
                    e.link = Some(l);
                }
                l
            }
        };
        // The source's listing shows its new link count.
        self.changed.insert(parent_of(from).to_string());
        self.ensure_ancestors(to, &src.meta);
        self.put_row(Entry {
            path: to.to_string(),
            link: Some(link),
            ..src
        });
        Ok(())
    }

    /// `from` and everything below it moved to `to`, replacing whatever was there.
    fn rename(&mut self, from: &str, to: &str) -> RemoteResult<()> {
        if from.is_empty() || to.is_empty() || strictly_below(to, from) {
            return Err(refused(format!("cannot rename {from:?} to {to:?}")));
        }
        if from == to {
            return Ok(());
        }
        let meta = self
            .s
            .entries
            .get(from)
            .ok_or_else(|| RemoteError::NotFound(from.to_string()))?
            .meta;
        self.delete_tree(to);
        self.changed.insert(parent_of(from).to_string());
        self.ensure_ancestors(to, &meta);
        let moved: Vec<String> = self
            .s
            .entries
            .keys()
            .filter(|p| at_or_below(p, from))
            .cloned()
            .collect();
        for old in moved {
            let mut e = self.s.entries.remove(&old).expect("listed above");
            e.path = format!("{to}{}", &old[from.len()..]);
            self.s.entries.insert(e.path.clone(), e);
        }
        Ok(())
    }

    fn apply(&mut self, op: &CatalogOp) -> RemoteResult<()> {
        match op {
            CatalogOp::Expect { path, content } => {
                let current = self.s.entries.get(path).cloned();
                if !current
                    .as_ref()
                    .is_some_and(|e| e.is_file_with(content.as_ref()))
                {
                    self.conflicts.push(Conflict {
                        path: path.clone(),
                        current,
                    });
                }
            }
            CatalogOp::Put(e) => {
                if e.path.is_empty() && e.kind != EntryKind::Dir {
                    return Err(refused("the root must stay a directory".into()));
                }
                self.ensure_ancestors(&e.path, &e.meta);
                // The path keeps its own hard-link group; the entry's is ignored.
                let link = self.s.entries.get(&e.path).and_then(|old| old.link);
                self.put_group(&Entry { link, ..e.clone() });
            }
            CatalogOp::SetMeta { path, meta } => {
                let e = self
                    .s
                    .entries
                    .get(path)
                    .cloned()
                    .ok_or_else(|| RemoteError::NotFound(path.clone()))?;
                self.put_group(&Entry { meta: *meta, ..e });
            }
            CatalogOp::Link { from, to } => self.link(from, to)?,
            CatalogOp::Delete { path } => {
                if path.is_empty() {
                    return Err(refused("cannot delete the root".into()));
                }
                self.delete_tree(path);
            }
            CatalogOp::Rename { from, to } => self.rename(from, to)?,
        }
        Ok(())
    }
}

/// The plain-bucket translation of one op (files only), as `PlainCatalog` plans it.
fn apply_plain(owner: &FixedOwner, s: &mut State, op: &CatalogOp) -> RemoteResult<()> {
    let check = |p: &str| {
        names::check_path(p).map_err(|e| refused(format!("{p:?} cannot be a bucket path: {e}")))
    };
    let files_below = |s: &State, dir: &str| -> Vec<String> {
        let below = s.entries.keys().filter(|p| strictly_below(p, dir));
        below.cloned().collect()
    };
    match op {
        CatalogOp::Put(e) => match e.kind {
            EntryKind::File => {
                check(&e.path)?;
                let ms = e.meta.mtime_ns.div_euclid(1_000_000);
                let file = Entry {
                    path: e.path.clone(),
                    kind: EntryKind::File,
                    content: super::body(e.content.as_ref()).cloned(),
                    target: None,
                    meta: MemCatalog::plain_meta(owner, EntryKind::File, ms),
                    link: None,
                };
                s.entries.insert(e.path.clone(), file);
            }
            // A directory is there while a file lies below it.
            EntryKind::Dir => {}
            kind => {
                return Err(refused(format!(
                    "{}: a plain bucket cannot store a {kind:?}",
                    e.path
                )))
            }
        },
        CatalogOp::SetMeta { path, meta } => {
            if let Some(e) = s.entries.get_mut(path) {
                let ms = meta.mtime_ns.div_euclid(1_000_000);
                e.meta = MemCatalog::plain_meta(owner, EntryKind::File, ms);
            }
        }
        CatalogOp::Delete { path } => {
            if s.entries.remove(path).is_none() {
                for p in files_below(s, path) {
                    s.entries.remove(&p);
                }
            }
        }
        CatalogOp::Rename { from, to } => {
            if let Some(mut e) = s.entries.remove(from) {
                check(to)?;
                e.path = to.clone();
                s.entries.insert(to.clone(), e);
                return Ok(());
            }
            // A directory moves file by file, replacing what was below its new name.
            for p in files_below(s, to) {
                s.entries.remove(&p);
            }
            for p in files_below(s, from) {
                let mut e = s.entries.remove(&p).expect("listed above");
                e.path = format!("{to}{}", &p[from.len()..]);
                check(&e.path)?;
                s.entries.insert(e.path.clone(), e);
            }
        }
        CatalogOp::Link { from, .. } => {
            return Err(refused(format!(
                "{from}: a plain bucket cannot store hard links"
            )))
        }
        // Not kept: a plain bucket has no compare-and-swap.
        CatalogOp::Expect { .. } => {}
    }
    Ok(())
}

#[async_trait]
impl Catalog for MemCatalog {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn check_path(&self, path: &str) -> Result<(), names::BadPath> {
        match self.plain_mode() {
            Some(_) => names::check_path(path),
            None => Ok(()),
        }
    }

    async fn link_paths(&self, link: u64) -> RemoteResult<Vec<String>> {
        if !self.caps.hard_links {
            return Err(RemoteError::NotFound(format!("hard-link group {link}")));
        }
        let s = self.state.lock();
        let paths = s.entries.values().filter(|e| e.link == Some(link));
        Ok(paths.map(|e| e.path.clone()).collect())
    }

    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
        let s = self.state.lock();
        let mut out: Vec<Entry> = s
            .entries
            .values()
            .filter(|e| !e.path.is_empty() && parent_of(&e.path) == dir)
            .cloned()
            .collect();
        if let Some(owner) = self.plain_mode() {
            out.extend(Self::implied_dirs(&owner, &s, dir));
            out.sort_by(|a, b| a.path.cmp(&b.path));
        }
        Ok(out)
    }

    async fn list_tree(&self, dir: &str, cursor: Option<&str>) -> RemoteResult<Option<TreePage>> {
        let s = self.state.lock();
        let after = cursor.unwrap_or("");
        let mut entries: Vec<Entry> = s
            .entries
            .values()
            .filter(|e| strictly_below(&e.path, dir) && e.path.as_str() > after)
            .take(self.page + 1)
            .cloned()
            .collect();
        let next = (entries.len() > self.page).then(|| {
            entries.truncate(self.page);
            entries.last().map(|e| e.path.clone()).unwrap_or_default()
        });
        Ok(Some(TreePage { entries, next }))
    }

    async fn head(&self, path: &str) -> RemoteResult<Option<Entry>> {
        let s = self.state.lock();
        let Some(owner) = self.plain_mode() else {
            return Ok(s.entries.get(path).cloned());
        };
        if let Some(e) = s.entries.get(path) {
            return Ok(Some(e.clone()));
        }
        let below = s.entries.values().filter(|e| strictly_below(&e.path, path));
        let newest = below.map(|e| e.meta.mtime_ns.div_euclid(1_000_000)).max();
        Ok((newest.is_some() || path.is_empty()).then(|| {
            let meta = Self::plain_meta(&owner, EntryKind::Dir, newest.unwrap_or(0));
            Entry::dir(path.to_string(), meta)
        }))
    }

    async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64> {
        let mut s = self.state.lock();
        let mut next = s.clone();
        let revision = s.revision + 1;
        next.revision = revision;
        if let Some(owner) = self.plain_mode() {
            for op in &ops {
                apply_plain(&owner, &mut next, op)?;
            }
            // A plain bucket's commit answer carries no revision.
            let changed = next.entries != s.entries;
            if changed {
                *s = next;
                self.revision.send_replace(revision);
            }
            return Ok(0);
        }
        let mut tx = Tx {
            s: &mut next,
            changed: BTreeSet::new(),
            conflicts: Vec::new(),
        };
        for op in &ops {
            tx.apply(op)?;
        }
        if !tx.conflicts.is_empty() {
            return Err(RemoteError::Conflict(tx.conflicts));
        }
        let changed = std::mem::take(&mut tx.changed);
        next.changed.insert(revision, changed);
        *s = next;
        self.revision.send_replace(revision);
        Ok(revision)
    }

    async fn revision(&self) -> RemoteResult<u64> {
        Ok(self.state.lock().revision)
    }

    async fn changes(&self, since: u64, wait: Duration) -> RemoteResult<Option<Changes>> {
        if self.plain_mode().is_some() {
            return Ok(None);
        }
        let mut rx = self.revision.subscribe();
        // A timeout is the empty answer, not an error.
        let _ = tokio::time::timeout(wait, rx.wait_for(|r| *r > since)).await;
        let s = self.state.lock();
        let revision = s.revision;
        if since > revision {
            return Ok(Some(Changes::Reset { revision }));
        }
        // `range` panics on an empty range: `since == revision` changed nothing.
        let dirs: BTreeSet<&String> = match since < revision {
            true => s
                .changed
                .range(since + 1..=revision)
                .flat_map(|(_, d)| d)
                .collect(),
            false => BTreeSet::new(),
        };
        Ok(Some(Changes::Dirs {
            revision,
            dirs: dirs.into_iter().cloned().collect(),
        }))
    }
}

/// An in-memory [`Cas`]: bodies stored whole under their Xet file hash (the chunking and
/// Merkle hash the other stores give the same bytes).
#[derive(Default)]
pub struct MemCas {
    inner: Mutex<CasState>,
}

#[derive(Default)]
struct CasState {
    bodies: HashMap<String, Bytes>,
    /// Every chunk stored, to count what an upload adds after dedup.
    chunks: HashSet<MerkleHash>,
}

/// The chunks of `data`: (hash, length) each.
fn chunk(data: &[u8]) -> Vec<(MerkleHash, u64)> {
    let mut c = Chunker::default();
    let mut chunks = c.next_block(data, true);
    chunks.extend(c.finish());
    chunks
        .iter()
        .map(|c| (c.hash, c.data.len() as u64))
        .collect()
}

impl MemCas {
    pub fn new() -> Self {
        Self::default()
    }

    /// Store `data`; its identity and the bytes of chunks the store did not hold yet.
    fn store(&self, data: Bytes) -> Uploaded {
        let chunks = chunk(&data);
        let id = FileId {
            hash: file_hash(&chunks).hex(),
            size: data.len() as u64,
        };
        let mut s = self.inner.lock();
        let mut new_bytes = 0;
        for (h, len) in chunks {
            if s.chunks.insert(h) {
                new_bytes += len;
            }
        }
        if id.size > 0 {
            s.bodies.insert(id.hash.clone(), data);
        }
        Uploaded { id, new_bytes }
    }

    fn body(&self, id: &FileId) -> RemoteResult<Bytes> {
        if id.size == 0 {
            return Ok(Bytes::new());
        }
        let s = self.inner.lock();
        let b = s
            .bodies
            .get(&id.hash)
            .ok_or_else(|| RemoteError::NotFound(format!("file {} is not stored", id.hash)))?;
        if b.len() as u64 != id.size {
            return Err(RemoteError::Integrity(format!(
                "file {} holds {} bytes, not {}",
                id.hash,
                b.len(),
                id.size
            )));
        }
        Ok(b.clone())
    }
}

/// `base` with `edits` applied; an error unless the edits are sorted, disjoint and inside it.
fn apply_edits(base: &[u8], edits: &[ComposeEdit]) -> RemoteResult<Vec<u8>> {
    let mut out = Vec::with_capacity(base.len());
    let mut pos = 0u64;
    for e in edits {
        let r = &e.original_range;
        if r.start < pos || r.end < r.start || r.end > base.len() as u64 {
            return Err(RemoteError::Other(format!(
                "edit {r:?} is out of order or outside a {} byte base",
                base.len()
            )));
        }
        out.extend_from_slice(&base[pos as usize..r.start as usize]);
        out.extend_from_slice(&e.data);
        pos = r.end;
    }
    out.extend_from_slice(&base[pos as usize..]);
    Ok(out)
}

/// The edits rounded out to the base chunks they touch, plus each edit's growth.
fn chunk_rounded(base: &[(MerkleHash, u64)], edits: &[ComposeEdit]) -> u64 {
    let mut bounds = Vec::with_capacity(base.len());
    let mut at = 0;
    for (_, n) in base {
        bounds.push(at..at + n);
        at += n;
    }
    let mut total = 0;
    for e in edits {
        let r = &e.original_range;
        let hi = r.end.max(r.start + 1);
        let touched = bounds.iter().filter(|c| c.start < hi && r.start < c.end);
        total += touched.map(|c| c.end - c.start).sum::<u64>();
        total += (e.data.len() as u64).saturating_sub(r.end - r.start);
    }
    total
}

#[async_trait]
impl Cas for MemCas {
    async fn read_range(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes> {
        if !super::xet::check_read(id, &range)? {
            return Ok(Bytes::new());
        }
        let b = self.body(id)?;
        super::xet::check_read_len(
            id,
            &range,
            b.slice(range.start as usize..range.end as usize),
        )
    }

    async fn upload_batch(
        &self,
        items: Vec<UploadItem<'_>>,
    ) -> RemoteResult<Vec<RemoteResult<Uploaded>>> {
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            let one = match tokio::fs::read(it.path).await {
                Ok(mut data) if data.len() as u64 >= it.len => {
                    data.truncate(it.len as usize);
                    Ok(self.store(Bytes::from(data)))
                }
                Ok(data) => Err(RemoteError::Other(format!(
                    "{} is shorter than expected ({} bytes missing)",
                    it.path.display(),
                    it.len - data.len() as u64
                ))),
                Err(e) => Err(e.into()),
            };
            out.push(one);
        }
        Ok(out)
    }

    async fn compose(&self, base: &FileId, edits: Vec<ComposeEdit>) -> RemoteResult<Composed> {
        let old = self.body(base)?;
        let new = apply_edits(&old, &edits)?;
        let dirty_chunk_bytes = chunk_rounded(&chunk(&old), &edits);
        let stored = self.store(Bytes::from(new));
        Ok(Composed {
            terms: u64::from(stored.id.size > 0),
            id: stored.id,
            new_bytes: stored.new_bytes,
            // The base is read whole to apply the edits.
            base_bytes_read: base.size,
            dirty_chunk_bytes,
            whole_upload: false,
            carried: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta::at(0o644, 1, 2, 5_000_000_123)
    }

    fn file(path: &str, hash: &str, size: u64) -> Entry {
        crate::remote::testing::file_entry(path, hash, size, meta())
    }

    fn paths(v: &[Entry]) -> Vec<&str> {
        v.iter().map(|e| e.path.as_str()).collect()
    }

    #[tokio::test]
    async fn a_failed_batch_applies_nothing_and_revisions_count_commits() {
        let c = MemCatalog::posix();
        assert_eq!(
            c.commit(vec![CatalogOp::Put(file("a/b", "h1", 3))])
                .await
                .unwrap(),
            1
        );
        let err = c
            .commit(vec![
                CatalogOp::Delete { path: "a".into() },
                CatalogOp::Expect {
                    path: "a/b".into(),
                    content: None,
                },
                CatalogOp::Expect {
                    path: "x".into(),
                    content: None,
                },
            ])
            .await
            .unwrap_err();
        let RemoteError::Conflict(c2) = err else {
            panic!("{err:?}")
        };
        assert_eq!(
            c2.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
            ["a/b", "x"]
        );
        assert!(c.head("a/b").await.unwrap().is_some());
        assert_eq!(c.revision().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn plain_mode_keeps_files_and_implies_directories() {
        let owner = FixedOwner {
            uid: 7,
            gid: 8,
            file_mode: 0o644,
            dir_mode: 0o755,
        };
        let c = MemCatalog::plain(owner);
        c.commit(vec![
            CatalogOp::Put(Entry::dir("d".into(), meta())),
            CatalogOp::Put(file("d/e/f", "h", 1)),
        ])
        .await
        .unwrap();
        assert_eq!(paths(&c.list_dir("").await.unwrap()), ["d"]);
        assert_eq!(paths(&c.list_dir("d").await.unwrap()), ["d/e"]);
        let f = c.head("d/e/f").await.unwrap().unwrap();
        assert_eq!(
            (f.meta.uid, f.meta.mode, f.meta.mtime_ns),
            (7, 0o644, 5_000_000_000)
        );
        let link = CatalogOp::Link {
            from: "d/e/f".into(),
            to: "g".into(),
        };
        assert!(c.commit(vec![link]).await.is_err());
        c.commit(vec![CatalogOp::Delete { path: "d".into() }])
            .await
            .unwrap();
        assert!(c.head("d").await.unwrap().is_none());
        assert!(c.head("").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn composing_applies_edits_and_reads_back() {
        let cas = MemCas::new();
        let data: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let base = cas.store(Bytes::from(data.clone()));
        assert_eq!(base.new_bytes, data.len() as u64);
        let edits = vec![
            ComposeEdit {
                original_range: 10..20,
                data: Bytes::from_static(b"hello"),
            },
            ComposeEdit {
                original_range: 100_000..100_000,
                data: Bytes::from_static(b"inserted"),
            },
        ];
        let c = cas.compose(&base.id, edits).await.unwrap();
        let mut want = data[..10].to_vec();
        want.extend_from_slice(b"hello");
        want.extend_from_slice(&data[20..100_000]);
        want.extend_from_slice(b"inserted");
        want.extend_from_slice(&data[100_000..]);
        assert_eq!(c.id.size, want.len() as u64);
        let got = cas.read_range(&c.id, 0..c.id.size).await.unwrap();
        assert_eq!(&got[..], &want[..]);
        assert!(c.dirty_chunk_bytes > 0 && c.dirty_chunk_bytes < data.len() as u64);
        let bad = vec![ComposeEdit {
            original_range: 5..3_000_000,
            data: Bytes::new(),
        }];
        assert!(cas.compose(&base.id, bad).await.is_err());
    }
}
