//! A plain Hugging Face bucket's namespace, through the public bucket API only: tree listings
//! (paged by `Link`), paths-info, and NDJSON batches. Such a bucket keeps files (path, body,
//! mtime in milliseconds) and nothing else: a directory exists while a file lies below it, and
//! mode and owner are the mount's (`FixedOwner`). [`Capabilities`] says so, and the VFS
//! refuses what cannot be kept before it reaches a commit.
//!
//! A commit is translated into the final state of every path it touches (`Plan`): a rename of
//! a directory becomes an add of every file below it at its new path and a delete at the old
//! one, a delete of a directory a delete of every file below it. The Hub applies a batch's
//! lines independently, so a commit interrupted half-way is retried whole; stating final
//! states (adds of what must be there, deletes only of what still is) makes the retry land on
//! the same result.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

use super::hub::Hub;
use super::Prefix;
use crate::remote::wire::percent_encode;
use crate::remote::{
    Capabilities, Catalog, CatalogOp, Entry, EntryKind, FileId, FixedOwner, Meta, RemoteError,
    RemoteResult, TreePage,
};

/// The hash the Hub gives the empty file.
const EMPTY_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Paths per paths-info request, as the official client sends them.
const PATHS_PER_REQUEST: usize = 1000;

/// A stored file: what an `addFile` line carries.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileState {
    hash: String,
    size: u64,
    mtime_ms: i64,
}

pub struct PlainCatalog {
    hub: Arc<Hub>,
    prefix: Prefix,
    owner: FixedOwner,
}

fn bad(what: &str, e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Other(format!("{what}: bad answer: {e}"))
}

/// Milliseconds since the epoch of an ISO-8601 time (`…Z`).
fn parse_ms(v: Option<&Value>) -> Option<i64> {
    let s = v?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl PlainCatalog {
    pub fn new(hub: Arc<Hub>, prefix: &str, owner: FixedOwner) -> Self {
        PlainCatalog {
            hub,
            prefix: Prefix::new(prefix),
            owner,
        }
    }

    fn meta(&self, kind: EntryKind, ms: i64) -> Meta {
        let ns = ms.saturating_mul(1_000_000);
        Meta {
            mode: self.owner.mode(kind),
            uid: self.owner.uid,
            gid: self.owner.gid,
            atime_ns: ns,
            mtime_ns: ns,
            ctime_ns: ns,
        }
    }

    /// `op` with bucket paths.
    fn bucket_op(&self, op: &CatalogOp) -> CatalogOp {
        let full = |p: &str| self.prefix.full(p);
        match op {
            CatalogOp::Put(e) => CatalogOp::Put(Entry {
                path: full(&e.path),
                ..e.clone()
            }),
            CatalogOp::SetMeta { path, meta } => CatalogOp::SetMeta {
                path: full(path),
                meta: *meta,
            },
            CatalogOp::Delete { path } => CatalogOp::Delete { path: full(path) },
            CatalogOp::Rename { from, to } => CatalogOp::Rename {
                from: full(from),
                to: full(to),
            },
            CatalogOp::Link { from, to } => CatalogOp::Link {
                from: full(from),
                to: full(to),
            },
            CatalogOp::Expect { path, content } => CatalogOp::Expect {
                path: full(path),
                content: content.clone(),
            },
        }
    }

    /// A tree or paths-info file item: its bucket path and state.
    fn file_item(item: &Value) -> Option<(String, FileState)> {
        if item.get("type").and_then(Value::as_str) != Some("file") {
            return None;
        }
        let path = item.get("path")?.as_str()?.to_string();
        let state = FileState {
            hash: item.get("xetHash")?.as_str()?.to_string(),
            size: item.get("size")?.as_u64()?,
            mtime_ms: parse_ms(item.get("mtime"))
                .or_else(|| parse_ms(item.get("uploadedAt")))
                .unwrap_or(0),
        };
        Some((path, state))
    }

    fn file_entry(&self, path: String, s: FileState) -> Entry {
        Entry {
            path,
            kind: EntryKind::File,
            content: (s.size > 0).then_some(FileId {
                hash: s.hash,
                size: s.size,
            }),
            target: None,
            meta: self.meta(EntryKind::File, s.mtime_ms),
            link: None,
        }
    }

    /// `GET tree/{dir}`: every page.
    async fn tree(&self, full_dir: &str, recursive: bool) -> RemoteResult<Vec<Value>> {
        let mut url = self.hub.api("/tree");
        if !full_dir.is_empty() {
            url.push('/');
            url.push_str(&percent_encode(full_dir, false));
        }
        url.push_str(if recursive {
            "?recursive=true"
        } else {
            "?recursive=false"
        });
        match self.hub.get_pages("tree listing", &url).await {
            // A folder nothing lies in any more.
            Err(RemoteError::NotFound(_)) if !full_dir.is_empty() => Ok(Vec::new()),
            r => r,
        }
    }

    /// Every stored file at or below bucket path `full_dir` (a directory).
    async fn files_below(&self, full_dir: &str) -> RemoteResult<Vec<(String, FileState)>> {
        let inside = |p: &str| full_dir.is_empty() || p.starts_with(&format!("{full_dir}/"));
        Ok(self
            .tree(full_dir, true)
            .await?
            .iter()
            .filter_map(Self::file_item)
            .filter(|(p, _)| inside(p))
            .collect())
    }

    /// The stored files among bucket paths `paths`: requests of at most
    /// [`PATHS_PER_REQUEST`] paths, several in flight.
    async fn paths_info(&self, paths: &[String]) -> RemoteResult<HashMap<String, FileState>> {
        let url = self.hub.api("/paths-info");
        let parts: Vec<Value> = paths
            .chunks(PATHS_PER_REQUEST)
            .map(|part| json!({ "paths": part }))
            .collect();
        let answers: Vec<Vec<(String, FileState)>> = futures::stream::iter(parts)
            .map(|body| {
                let url = url.clone();
                async move {
                    let v = self.hub.post_json("paths-info", &url, &body).await?;
                    let items = v.as_array().ok_or_else(|| bad("paths-info", &v))?;
                    Ok::<_, RemoteError>(items.iter().filter_map(Self::file_item).collect())
                }
            })
            .buffer_unordered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(answers.into_iter().flatten().collect())
    }
}

/// Requests in flight at once for the lookups of one commit.
const LOOKUPS_IN_FLIGHT: usize = 8;

/// The stored state a commit's plan reads: where `Plan` gets what the batch itself does not
/// say (the catalog; a map in the unit tests).
#[async_trait]
trait Stored: Sync {
    /// The stored files among bucket paths `paths` (any number).
    async fn paths_info(&self, paths: &[String]) -> RemoteResult<HashMap<String, FileState>>;
    /// Every stored file below bucket directory `full_dir`.
    async fn files_below(&self, full_dir: &str) -> RemoteResult<Vec<(String, FileState)>>;
}

#[async_trait]
impl Stored for PlainCatalog {
    async fn paths_info(&self, paths: &[String]) -> RemoteResult<HashMap<String, FileState>> {
        PlainCatalog::paths_info(self, paths).await
    }
    async fn files_below(&self, full_dir: &str) -> RemoteResult<Vec<(String, FileState)>> {
        PlainCatalog::files_below(self, full_dir).await
    }
}

/// The bucket paths whose stored state planning `ops` (bucket paths) needs, as far as the
/// ops alone tell: what a delete or a rename removes (its delete line is sent only if a file
/// is stored there), and what a metadata change touches unless the batch made it (a file
/// it put carries its new mtime in memory, a directory keeps no times). One pass asks for
/// them all, instead of one request per op.
fn paths_to_look_up(ops: &[CatalogOp]) -> Vec<String> {
    let mut made: HashSet<&str> = HashSet::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut out: Vec<String> = Vec::new();
    for op in ops {
        let need = match op {
            CatalogOp::Put(e) => {
                made.insert(&e.path);
                None
            }
            CatalogOp::SetMeta { path, .. } if !made.contains(path.as_str()) => Some(path),
            CatalogOp::Delete { path } => Some(path),
            CatalogOp::Rename { from, to } => {
                made.insert(to);
                Some(from)
            }
            _ => None,
        };
        if let Some(p) = need.filter(|p| seen.insert(p.as_str())) {
            out.push(p.clone());
        }
    }
    out
}

/// The directories whose stored files planning `ops` needs, given the stored state of the
/// paths [`paths_to_look_up`] named: a delete or rename of a path that holds no file (by
/// the store or by an earlier op of the batch) is one of a directory, which goes file by
/// file; a directory rename also replaces what lies below its new name.
fn dirs_to_list(ops: &[CatalogOp], stored: &HashMap<String, Option<FileState>>) -> Vec<String> {
    let mut files: HashSet<&str> = HashSet::new();
    let mut out: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let is_dir =
        |p: &str, files: &HashSet<&str>| !files.contains(p) && matches!(stored.get(p), Some(None));
    for op in ops {
        match op {
            CatalogOp::Put(e) if e.kind == EntryKind::File => {
                files.insert(&e.path);
            }
            CatalogOp::Delete { path } => {
                if is_dir(path, &files) && seen.insert(path) {
                    out.push(path.clone());
                }
                files.remove(path.as_str());
            }
            CatalogOp::Rename { from, to } => {
                if is_dir(from, &files) {
                    for d in [from, to] {
                        if seen.insert(d) {
                            out.push(d.clone());
                        }
                    }
                } else {
                    files.insert(to);
                }
                files.remove(from.as_str());
            }
            _ => {}
        }
    }
    out
}

/// The final state of the bucket paths one commit touches, built op by op in memory. The
/// stored state it needs is looked up beforehand in one pass (every path at once, then the
/// directories a delete or rename moves, side by side); a lookup the passes did not foresee
/// is still made, alone.
struct Plan<'a> {
    store: &'a dyn Stored,
    /// Bucket path → its state after the commit (`None`: deleted).
    after: BTreeMap<String, Option<FileState>>,
    /// Bucket path → its stored state, where looked up.
    stored: HashMap<String, Option<FileState>>,
    /// Bucket directory → the files stored below it, where listed.
    below: HashMap<String, Vec<(String, FileState)>>,
    /// Directories the batch made or moved in: no file is there and their times are not kept.
    dirs: HashSet<String>,
}

impl<'a> Plan<'a> {
    /// The plan of `ops` (bucket paths).
    async fn build(store: &'a dyn Stored, ops: &[CatalogOp]) -> RemoteResult<Plan<'a>> {
        let mut plan = Plan {
            store,
            after: BTreeMap::new(),
            stored: HashMap::new(),
            below: HashMap::new(),
            dirs: HashSet::new(),
        };
        plan.look_up(paths_to_look_up(ops)).await?;
        let dirs = dirs_to_list(ops, &plan.stored);
        let listed: Vec<(String, Vec<(String, FileState)>)> = futures::stream::iter(dirs)
            .map(|d| async move {
                let files = store.files_below(&d).await?;
                Ok::<_, RemoteError>((d, files))
            })
            .buffer_unordered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await?;
        plan.below.extend(listed);
        for op in ops {
            plan.apply(op).await?;
        }
        Ok(plan)
    }

    /// Record the stored state of `paths` (absent ones as `None`).
    async fn look_up(&mut self, paths: Vec<String>) -> RemoteResult<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let mut found = self.store.paths_info(&paths).await?;
        for p in paths {
            let s = found.remove(&p);
            self.stored.insert(p, s);
        }
        Ok(())
    }

    async fn stored_file(&mut self, full: &str) -> RemoteResult<Option<FileState>> {
        if !self.stored.contains_key(full) {
            self.look_up(vec![full.to_string()]).await?;
        }
        Ok(self.stored.get(full).cloned().flatten())
    }

    /// The file at `full` as of the ops planned so far.
    async fn file(&mut self, full: &str) -> RemoteResult<Option<FileState>> {
        match self.after.get(full) {
            Some(s) => Ok(s.clone()),
            None => self.stored_file(full).await,
        }
    }

    /// The files below directory `full_dir` as of the ops planned so far.
    async fn files_below(&mut self, full_dir: &str) -> RemoteResult<Vec<(String, FileState)>> {
        let stored = match self.below.get(full_dir) {
            Some(f) => f.clone(),
            None => {
                let f = self.store.files_below(full_dir).await?;
                self.below.insert(full_dir.to_string(), f.clone());
                f
            }
        };
        let mut files: BTreeMap<String, FileState> = BTreeMap::new();
        for (p, s) in stored {
            self.stored.insert(p.clone(), Some(s.clone()));
            files.insert(p, s);
        }
        let below = format!("{full_dir}/");
        for (p, s) in self.after.range(below.clone()..) {
            if !p.starts_with(&below) {
                break;
            }
            match s {
                Some(s) => files.insert(p.clone(), s.clone()),
                None => files.remove(p),
            };
        }
        Ok(files.into_iter().collect())
    }

    async fn apply(&mut self, op: &CatalogOp) -> RemoteResult<()> {
        match op {
            CatalogOp::Put(e) => match e.kind {
                EntryKind::File => {
                    let state = FileState {
                        hash: e
                            .content
                            .as_ref()
                            .map_or(EMPTY_HASH.to_string(), |c| c.hash.clone()),
                        size: e.size(),
                        mtime_ms: e.meta.mtime_ns.div_euclid(1_000_000),
                    };
                    self.dirs.remove(&e.path);
                    self.after.insert(e.path.clone(), Some(state));
                }
                // A directory is there while a file lies below it; its times are not kept.
                EntryKind::Dir => {
                    if !matches!(self.after.get(&e.path), Some(Some(_))) {
                        self.dirs.insert(e.path.clone());
                    }
                }
                kind => {
                    return Err(RemoteError::Other(format!(
                        "{}: a plain bucket cannot store a {kind:?}",
                        e.path
                    )))
                }
            },
            CatalogOp::SetMeta { path, meta } => {
                if self.dirs.contains(path) && !self.after.contains_key(path) {
                    return Ok(());
                }
                if let Some(mut s) = self.file(path).await? {
                    s.mtime_ms = meta.mtime_ns.div_euclid(1_000_000);
                    self.after.insert(path.clone(), Some(s));
                }
            }
            CatalogOp::Delete { path } => {
                self.dirs.remove(path);
                if self.file(path).await?.is_some() {
                    self.after.insert(path.clone(), None);
                    return Ok(());
                }
                for (p, _) in self.files_below(path).await? {
                    self.after.insert(p, None);
                }
            }
            CatalogOp::Rename { from, to } => {
                self.dirs.remove(from);
                if let Some(s) = self.file(from).await? {
                    self.after.insert(from.clone(), None);
                    self.after.insert(to.clone(), Some(s));
                    return Ok(());
                }
                // A directory moves file by file, replacing what was below its new name.
                for (p, _) in self.files_below(to).await? {
                    self.after.insert(p, None);
                }
                for (p, s) in self.files_below(from).await? {
                    let rel = &p[from.len()..];
                    self.after.insert(p.clone(), None);
                    self.after.insert(format!("{to}{rel}"), Some(s));
                }
                self.dirs.insert(to.clone());
            }
            CatalogOp::Link { from, .. } => {
                return Err(RemoteError::Other(format!(
                    "{from}: a plain bucket cannot store hard links"
                )))
            }
            // Not kept (no compare-and-swap, see `capabilities`).
            CatalogOp::Expect { .. } => {}
        }
        Ok(())
    }

    /// The batch lines: adds of every path that must hold a file, deletes of every path that
    /// must not and still does.
    async fn lines(mut self) -> RemoteResult<Vec<Value>> {
        let unknown: Vec<String> = self
            .after
            .iter()
            .filter(|(p, s)| s.is_none() && !self.stored.contains_key(*p))
            .map(|(p, _)| p.clone())
            .collect();
        self.look_up(unknown).await?;
        let mut adds = Vec::new();
        let mut deletes = Vec::new();
        for (path, s) in &self.after {
            match s {
                Some(s) => adds.push(json!({
                    "type": "addFile",
                    "path": path,
                    "xetHash": s.hash,
                    "mtime": s.mtime_ms,
                })),
                None if matches!(self.stored.get(path), Some(Some(_))) => {
                    deletes.push(json!({ "type": "deleteFile", "path": path }))
                }
                None => {}
            }
        }
        adds.extend(deletes);
        Ok(adds)
    }
}

#[async_trait]
impl Catalog for PlainCatalog {
    fn capabilities(&self) -> Capabilities {
        // The Hub's batch API has no preconditions: last writer wins.
        Capabilities::files_only(self.owner)
    }

    fn check_path(&self, path: &str) -> Result<(), crate::remote::names::BadPath> {
        crate::remote::names::check_path(&self.prefix.full(path))
    }

    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
        // A name the bucket cannot hold holds nothing (the tree route would answer 400).
        if !dir.is_empty() && self.check_path(dir).is_err() {
            return Ok(Vec::new());
        }
        let full_dir = self.prefix.full(dir);
        let parent_of = |p: &str| p.rfind('/').map_or("", |i| &p[..i]).to_string();
        let mut out = Vec::new();
        for item in self.tree(&full_dir, false).await? {
            let Some(path) = item.get("path").and_then(Value::as_str) else {
                continue;
            };
            // Servers may match the prefix lexically (`logs` also listing `logs.json`).
            if parent_of(path) != full_dir || path.is_empty() {
                continue;
            }
            let Some(local) = self.prefix.local(path) else {
                continue;
            };
            match item.get("type").and_then(Value::as_str) {
                Some("file") => {
                    if let Some((_, s)) = Self::file_item(&item) {
                        out.push(self.file_entry(local, s));
                    }
                }
                Some("directory") => {
                    let ms = parse_ms(item.get("uploadedAt").or_else(|| item.get("uploaded_at")))
                        .unwrap_or(0);
                    out.push(Entry::dir(local, self.meta(EntryKind::Dir, ms)));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Over the recursive tree route (files only, keyset-paged by the Hub): the cursor is the
    /// next page's URL. Directories are implied by the paths below them.
    async fn list_tree(&self, dir: &str, cursor: Option<&str>) -> RemoteResult<Option<TreePage>> {
        let full_dir = self.prefix.full(dir);
        let url = match cursor {
            Some(next) => next.to_string(),
            None => {
                let mut url = self.hub.api("/tree");
                if !full_dir.is_empty() {
                    url.push('/');
                    url.push_str(&percent_encode(&full_dir, false));
                }
                url.push_str("?recursive=true");
                url
            }
        };
        let (items, next) = match self.hub.get_page("tree listing", &url).await {
            Ok(page) => page,
            // A folder nothing lies in any more.
            Err(RemoteError::NotFound(_)) if !full_dir.is_empty() => (Vec::new(), None),
            Err(e) => return Err(e),
        };
        let below = format!("{full_dir}/");
        let entries = items
            .iter()
            .filter_map(Self::file_item)
            // Servers may match the prefix lexically (`logs` also listing `logs.json`).
            .filter(|(p, _)| full_dir.is_empty() || p.starts_with(&below))
            .filter_map(|(p, s)| Some(self.file_entry(self.prefix.local(&p)?, s)))
            .collect();
        Ok(Some(TreePage { entries, next }))
    }

    async fn head(&self, path: &str) -> RemoteResult<Option<Entry>> {
        let full = self.prefix.full(path);
        if full.is_empty() {
            let ms = self
                .hub
                .info()
                .await
                .ok()
                .and_then(|v| parse_ms(v.get("updatedAt")))
                .unwrap_or(0);
            return Ok(Some(Entry::dir(
                String::new(),
                self.meta(EntryKind::Dir, ms),
            )));
        }
        // A name the bucket cannot hold is not there: a lookup of it is ENOENT, not EIO.
        if self.check_path(path).is_err() {
            return Ok(None);
        }
        if !path.is_empty() {
            if let Some(s) = self
                .paths_info(std::slice::from_ref(&full))
                .await?
                .remove(&full)
            {
                return Ok(Some(self.file_entry(path.to_string(), s)));
            }
        }
        let below = format!("{full}/");
        let times: Vec<i64> = self
            .tree(&full, false)
            .await?
            .iter()
            .filter(|i| {
                i.get("path")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p.starts_with(&below))
            })
            .map(|i| parse_ms(i.get("uploadedAt").or_else(|| i.get("mtime"))).unwrap_or(0))
            .collect();
        // The mounted folder itself is there even before anything is stored in it.
        Ok((!times.is_empty() || path.is_empty()).then(|| {
            let ms = times.into_iter().max().unwrap_or(0);
            Entry::dir(path.to_string(), self.meta(EntryKind::Dir, ms))
        }))
    }

    /// Costs one round trip for the batch, plus one for the stored state of the paths it
    /// removes or retimes (all of them at once) and one for the directories it removes or
    /// moves (side by side), where it has any. The new revision is not asked for (nothing
    /// waits for it, and the bucket's `updatedAt` would cost a round trip more): 0.
    async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64> {
        let ops: Vec<CatalogOp> = ops.iter().map(|op| self.bucket_op(op)).collect();
        let lines = Plan::build(self, &ops).await?.lines().await?;
        if lines.is_empty() {
            return Ok(0);
        }
        let v = self
            .hub
            .post_ndjson("batch", &self.hub.api("/batch"), &lines)
            .await?;
        if let Some(failed) = v
            .get("failed")
            .and_then(Value::as_array)
            .filter(|f| !f.is_empty())
        {
            let first: Vec<String> = failed
                .iter()
                .take(3)
                .map(|f| {
                    format!(
                        "{}: {}",
                        f.get("path").and_then(Value::as_str).unwrap_or("?"),
                        f.get("error").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .collect();
            return Err(RemoteError::Other(format!(
                "the bucket refused {} of {} change(s): {}",
                failed.len(),
                lines.len(),
                first.join("; ")
            )));
        }
        Ok(0)
    }

    /// The bucket's `updatedAt`, in milliseconds: it moves with every change.
    async fn revision(&self) -> RemoteResult<u64> {
        let v = self.hub.info().await?;
        Ok(parse_ms(v.get("updatedAt")).map_or(0, |ms| ms.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::remote::{FileId, Meta};

    /// A stored bucket in memory, counting the requests a plan makes.
    #[derive(Default)]
    struct Mem {
        files: BTreeMap<String, FileState>,
        paths_info: AtomicUsize,
        listings: AtomicUsize,
    }

    #[async_trait]
    impl Stored for Mem {
        async fn paths_info(&self, paths: &[String]) -> RemoteResult<HashMap<String, FileState>> {
            self.paths_info.fetch_add(1, Ordering::SeqCst);
            Ok(paths
                .iter()
                .filter_map(|p| Some((p.clone(), self.files.get(p)?.clone())))
                .collect())
        }
        async fn files_below(&self, dir: &str) -> RemoteResult<Vec<(String, FileState)>> {
            self.listings.fetch_add(1, Ordering::SeqCst);
            let below = format!("{dir}/");
            Ok(self
                .files
                .iter()
                .filter(|(p, _)| p.starts_with(&below))
                .map(|(p, s)| (p.clone(), s.clone()))
                .collect())
        }
    }

    fn state(hash: &str, mtime_ms: i64) -> FileState {
        FileState {
            hash: hash.into(),
            size: 10,
            mtime_ms,
        }
    }

    fn meta(mtime_ms: i64) -> Meta {
        Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime_ns: 0,
            mtime_ns: mtime_ms * 1_000_000,
            ctime_ns: 0,
        }
    }

    fn put(path: &str, hash: &str, mtime_ms: i64) -> CatalogOp {
        CatalogOp::Put(Entry {
            path: path.into(),
            kind: EntryKind::File,
            content: Some(FileId {
                hash: hash.into(),
                size: 10,
            }),
            target: None,
            meta: meta(mtime_ms),
            link: None,
        })
    }

    fn mkdir(path: &str) -> CatalogOp {
        CatalogOp::Put(Entry::dir(path.into(), meta(1)))
    }

    fn set_meta(path: &str, mtime_ms: i64) -> CatalogOp {
        CatalogOp::SetMeta {
            path: path.into(),
            meta: meta(mtime_ms),
        }
    }

    fn rename(from: &str, to: &str) -> CatalogOp {
        CatalogOp::Rename {
            from: from.into(),
            to: to.into(),
        }
    }

    fn delete(path: &str) -> CatalogOp {
        CatalogOp::Delete { path: path.into() }
    }

    /// The batch lines as `add PATH HASH MTIME` / `delete PATH`.
    async fn plan(store: &Mem, ops: &[CatalogOp]) -> Vec<String> {
        Plan::build(store, ops)
            .await
            .unwrap()
            .lines()
            .await
            .unwrap()
            .iter()
            .map(|l| match l["type"].as_str().unwrap() {
                "addFile" => format!("add {} {} {}", l["path"], l["xetHash"], l["mtime"]),
                t => format!("{t} {}", l["path"]),
            })
            .map(|s| s.replace('"', ""))
            .collect()
    }

    #[tokio::test]
    async fn a_batch_of_mixed_ops_plans_in_one_lookup_pass() {
        let mut store = Mem::default();
        for (p, h) in [
            ("a", "ha"),
            ("old", "ho"),
            ("d/x", "hx"),
            ("d/sub/y", "hy"),
            ("n/stale", "hs"),
            ("e/z", "hz"),
            ("again", "hg"),
        ] {
            store.files.insert(p.into(), state(h, 1000));
        }
        let ops = vec![
            // A new file, retimed and moved within the batch.
            put("f", "hf", 2000),
            set_meta("f", 3000),
            // A file committed earlier, retimed (tar sets times after writing).
            set_meta("a", 4000),
            // A directory made here and retimed: nothing to store.
            mkdir("g"),
            set_meta("g", 5000),
            delete("old"),
            // A directory moved over one that holds a file.
            rename("d", "n"),
            rename("e/z", "e/w"),
            // Deleted, then made again.
            delete("again"),
            put("again", "hg2", 6000),
            // Nothing there.
            delete("nothing"),
            set_meta("never", 7000),
        ];
        let lines = plan(&store, &ops).await;
        assert_eq!(
            lines,
            [
                "add a ha 4000",
                "add again hg2 6000",
                "add e/w hz 1000",
                "add f hf 3000",
                "add n/sub/y hy 1000",
                "add n/x hx 1000",
                "deleteFile d/sub/y",
                "deleteFile d/x",
                "deleteFile e/z",
                "deleteFile n/stale",
                "deleteFile old",
            ]
        );
        // One paths-info pass for every path; the three directories (`d`, `n` and `nothing`)
        // listed side by side; nothing looked up one by one.
        assert_eq!(store.paths_info.load(Ordering::SeqCst), 1);
        assert_eq!(store.listings.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_file_put_and_deleted_in_one_batch_sends_no_delete_unless_stored() {
        let mut store = Mem::default();
        store.files.insert("kept".into(), state("h0", 1));
        let ops = vec![
            put("tmp", "h1", 1),
            delete("tmp"),
            put("kept", "h2", 2),
            rename("kept", "moved"),
        ];
        assert_eq!(
            plan(&store, &ops).await,
            ["add moved h2 2", "deleteFile kept"]
        );
        assert_eq!(store.paths_info.load(Ordering::SeqCst), 1);
        assert_eq!(store.listings.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn lookups_skip_what_the_batch_answers() {
        let ops = vec![
            put("new", "h", 1),
            set_meta("new", 2),
            mkdir("dir"),
            set_meta("dir", 2),
            set_meta("old", 2),
            delete("new"),
            rename("x", "y"),
            set_meta("y", 3),
            delete("old"),
        ];
        assert_eq!(paths_to_look_up(&ops), ["old", "new", "x"]);
        let mut stored = HashMap::new();
        stored.insert("old".to_string(), Some(state("h", 1)));
        stored.insert("new".to_string(), None);
        stored.insert("x".to_string(), None);
        // `new` was put in the batch, `old` is a stored file: only `x` (and where it goes)
        // may be a directory.
        assert_eq!(dirs_to_list(&ops, &stored), ["x", "y"]);
    }
}
