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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
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

    /// The stored files among bucket paths `paths`.
    async fn paths_info(&self, paths: &[String]) -> RemoteResult<HashMap<String, FileState>> {
        let mut out = HashMap::new();
        for part in paths.chunks(PATHS_PER_REQUEST) {
            let v = self
                .hub
                .post_json(
                    "paths-info",
                    &self.hub.api("/paths-info"),
                    &json!({ "paths": part }),
                )
                .await?;
            let items = v.as_array().ok_or_else(|| bad("paths-info", &v))?;
            out.extend(items.iter().filter_map(Self::file_item));
        }
        Ok(out)
    }
}

/// The final state of the bucket paths one commit touches, built op by op against the stored
/// state (looked up once per path and cached).
struct Plan<'a> {
    cat: &'a PlainCatalog,
    /// Bucket path → its state after the commit (`None`: deleted).
    after: BTreeMap<String, Option<FileState>>,
    /// Bucket path → its stored state, where looked up.
    stored: HashMap<String, Option<FileState>>,
}

impl Plan<'_> {
    async fn stored_file(&mut self, full: &str) -> RemoteResult<Option<FileState>> {
        if let Some(s) = self.stored.get(full) {
            return Ok(s.clone());
        }
        let s = self.cat.paths_info(&[full.to_string()]).await?.remove(full);
        self.stored.insert(full.to_string(), s.clone());
        Ok(s)
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
        let mut files: BTreeMap<String, FileState> = BTreeMap::new();
        for (p, s) in self.cat.files_below(full_dir).await? {
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
        let full = |p: &str| self.cat.prefix.full(p);
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
                    self.after.insert(full(&e.path), Some(state));
                }
                // A directory is there while a file lies below it; its times are not kept.
                EntryKind::Dir => {}
                kind => {
                    return Err(RemoteError::Other(format!(
                        "{}: a plain bucket cannot store a {kind:?}",
                        e.path
                    )))
                }
            },
            CatalogOp::SetMeta { path, meta } => {
                let full = full(path);
                if let Some(mut s) = self.file(&full).await? {
                    s.mtime_ms = meta.mtime_ns.div_euclid(1_000_000);
                    self.after.insert(full, Some(s));
                }
            }
            CatalogOp::Delete { path } => {
                let full = full(path);
                if self.file(&full).await?.is_some() {
                    self.after.insert(full, None);
                    return Ok(());
                }
                for (p, _) in self.files_below(&full).await? {
                    self.after.insert(p, None);
                }
            }
            CatalogOp::Rename { from, to } => {
                let (from, to) = (full(from), full(to));
                if let Some(s) = self.file(&from).await? {
                    self.after.insert(from, None);
                    self.after.insert(to, Some(s));
                    return Ok(());
                }
                // A directory moves file by file, replacing what was below its new name.
                for (p, _) in self.files_below(&to).await? {
                    self.after.insert(p, None);
                }
                for (p, s) in self.files_below(&from).await? {
                    let rel = &p[from.len()..];
                    self.after.insert(p.clone(), None);
                    self.after.insert(format!("{to}{rel}"), Some(s));
                }
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
        let found = self.cat.paths_info(&unknown).await?;
        for p in unknown {
            let s = found.get(&p).cloned();
            self.stored.insert(p, s);
        }
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
        Capabilities {
            hard_links: false,
            symlinks: false,
            special_files: false,
            empty_dirs: false,
            fixed_owner: Some(self.owner),
            // The Hub's batch API has no preconditions: last writer wins.
            compare_and_swap: false,
        }
    }

    fn check_path(&self, path: &str) -> Result<(), crate::remote::names::BadPath> {
        crate::remote::names::check_path(&self.prefix.full(path))
    }

    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
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

    async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64> {
        let mut plan = Plan {
            cat: self,
            after: BTreeMap::new(),
            stored: HashMap::new(),
        };
        for op in &ops {
            plan.apply(op).await?;
        }
        let lines = plan.lines().await?;
        if !lines.is_empty() {
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
        }
        self.revision().await
    }

    /// The bucket's `updatedAt`, in milliseconds: it moves with every change.
    async fn revision(&self) -> RemoteResult<u64> {
        let v = self.hub.info().await?;
        Ok(parse_ms(v.get("updatedAt")).map_or(0, |ms| ms.max(0) as u64))
    }
}
