//! A model, dataset or space repo mounted read-only at a revision:
//! `hf://[models/|datasets/|spaces/]NS/NAME[@REVISION][/PATH]`, the forms `huggingface_hub`'s
//! HfFileSystem accepts.
//!
//! The revision is resolved to a commit when the mount opens, and the mount shows that
//! commit's files. A branch is followed (unless pinned): each poll asks where the branch
//! points, and when it moved, the catalog switches to the new commit at once, so every
//! listing after the switch is of the new commit, never of a mix. A tag or a commit never
//! moves. Files stored with xet are read through the CAS like bucket files; regular files
//! (the small text files a commit carries inline) are read through `resolve` at the commit,
//! ranged.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;

use super::hub::Hub;
use crate::remote::names::valid_bucket_name;
use crate::remote::wire::percent_encode;
use crate::remote::{
    Capabilities, Cas, Catalog, CatalogOp, ComposeEdit, Composed, Entry, EntryKind, FileId,
    FixedOwner, Meta, RemoteError, RemoteResult, UploadItem, Uploaded,
};

/// A parsed repo URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoUri {
    /// `models`, `datasets` or `spaces`.
    pub plural: &'static str,
    /// `ns/name`.
    pub id: String,
    /// Branch, tag or commit; `main` if the URI names none.
    pub revision: String,
    /// The mounted folder (`""`: the whole repo).
    pub prefix: String,
}

impl RepoUri {
    /// `Err` is one sentence saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let usage =
            "write it as hf://[datasets/|spaces/]NAMESPACE/NAME[@REVISION][/PATH] (or hf://buckets/NAMESPACE/NAME for a bucket)";
        let body = s
            .strip_prefix("hf://")
            .ok_or_else(|| format!("{s} is not an hf:// URI; {usage}"))?;
        let (plural, body) = match body.split_once('/') {
            Some(("models", rest)) => ("models", rest),
            Some(("datasets", rest)) => ("datasets", rest),
            Some(("spaces", rest)) => ("spaces", rest),
            _ => ("models", body),
        };
        let mut parts = body.splitn(2, '/');
        let ns = parts.next().unwrap_or("");
        let rest = parts.next().unwrap_or("");
        let (name_rev, after) = rest.split_once('/').unwrap_or((rest, ""));
        let (name, revision, prefix) = match name_rev.split_once('@') {
            None => (name_rev, "main".to_string(), after.to_string()),
            Some((name, rev)) => {
                // `refs/pr/N` and `refs/convert/NAME` may be written with their slashes.
                let special =
                    rev == "refs" && (after.starts_with("pr/") || after.starts_with("convert/"));
                if special {
                    let mut segs = after.splitn(3, '/');
                    let kind = segs.next().unwrap_or("");
                    let which = segs.next().unwrap_or("");
                    let rest = segs.next().unwrap_or("");
                    (name, format!("refs/{kind}/{which}"), rest.to_string())
                } else {
                    let rev = crate::remote::wire::form_decode(&rev.replace('+', "%2B"))
                        .ok_or_else(|| format!("{s} has a badly encoded revision; {usage}"))?;
                    (name, rev, after.to_string())
                }
            }
        };
        if !valid_bucket_name(ns) || !valid_bucket_name(name) {
            return Err(format!(
                "{s} does not name a repo (NAMESPACE/NAME); {usage}"
            ));
        }
        if revision.is_empty() {
            return Err(format!("{s} has an empty revision after @; {usage}"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|seg| seg == ".." || seg == ".") || prefix.contains("//") {
            return Err(format!("{s} has an invalid path after the repo; {usage}"));
        }
        Ok(RepoUri {
            plural,
            id: format!("{ns}/{name}"),
            revision,
            prefix,
        })
    }

    /// How messages name it: "model alice/m", "dataset alice/d".
    pub fn describe(&self) -> String {
        format!("{} {}", self.plural.trim_end_matches('s'), self.id)
    }

    /// Whether the revision may move (a branch): a full commit id never does; tags are
    /// told apart when the revision is resolved.
    fn is_commit_id(&self) -> bool {
        self.revision.len() == 40 && self.revision.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// The commit the mount shows.
#[derive(Clone, Debug)]
struct Shown {
    sha: String,
    /// Its date, nanoseconds since the epoch: every entry's times.
    time_ns: i64,
    /// Counts the switches: the catalog's revision.
    revision: u64,
}

/// Where the regular files seen so far live: blob id → (commit, repo path).
type Regular = Arc<Mutex<HashMap<String, (String, String)>>>;

/// The namespace of a repo at a commit (read-only).
pub struct RepoCatalog {
    hub: Arc<Hub>,
    uri: RepoUri,
    /// A branch that is followed: not pinned, and not a tag or a commit.
    follows: bool,
    shown: Mutex<Shown>,
    owner: FixedOwner,
    regular: Regular,
}

/// The commit `rev` of the repo names, and its date: `GET …/revision/{rev}`, asking for
/// those two fields only (not the list of every file).
async fn resolve(hub: &Hub, rev: &str) -> RemoteResult<(String, i64)> {
    let url = hub.api(&format!(
        "/revision/{}?expand=sha&expand=lastModified",
        percent_encode(rev, false)
    ));
    let v = hub.get_json("repo revision", &url).await?;
    let sha = v
        .get("sha")
        .and_then(Value::as_str)
        .ok_or_else(|| RemoteError::Other(format!("the repo info names no commit: {v}")))?
        .to_string();
    let time_ns = v
        .get("lastModified")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(0);
    Ok((sha, time_ns))
}

/// The file `rel` (relative to the mounted folder) in the repo.
fn repo_path(prefix: &str, rel: &str) -> String {
    match (prefix.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}/{rel}"),
    }
}

/// The FileId of a regular (non-xet) file: its blob id, marked so the CAS side tells it from
/// a xet hash.
const GIT_BLOB: &str = "git-blob:";

impl RepoCatalog {
    fn meta(&self, kind: EntryKind, time_ns: i64) -> Meta {
        Meta::at(
            self.owner.mode(kind),
            self.owner.uid,
            self.owner.gid,
            time_ns,
        )
    }

    /// A tree entry as the mount shows it, `None` for one outside the mounted folder.
    fn entry(&self, v: &Value, shown: &Shown) -> Option<Entry> {
        let path = v.get("path")?.as_str()?;
        let rel = if self.uri.prefix.is_empty() {
            path
        } else if path == self.uri.prefix {
            ""
        } else {
            path.strip_prefix(&self.uri.prefix)?.strip_prefix('/')?
        };
        if v.get("type").and_then(Value::as_str) != Some("file") {
            return Some(Entry::dir(
                rel.to_string(),
                self.meta(EntryKind::Dir, shown.time_ns),
            ));
        }
        let size = v.get("size")?.as_u64()?;
        let content = match v.get("xetHash").and_then(Value::as_str) {
            _ if size == 0 => None,
            Some(h) => Some(FileId {
                hash: h.to_string(),
                size,
            }),
            None => {
                let oid = v.get("oid")?.as_str()?;
                self.regular
                    .lock()
                    .insert(oid.to_string(), (shown.sha.clone(), path.to_string()));
                Some(FileId {
                    hash: format!("{GIT_BLOB}{oid}"),
                    size,
                })
            }
        };
        Some(Entry {
            path: rel.to_string(),
            kind: EntryKind::File,
            content,
            target: None,
            meta: self.meta(EntryKind::File, shown.time_ns),
            link: None,
        })
    }
}

#[async_trait]
impl Catalog for RepoCatalog {
    fn capabilities(&self) -> Capabilities {
        Capabilities::files_only(self.owner)
    }

    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
        let shown = self.shown.lock().clone();
        let path = repo_path(&self.uri.prefix, dir);
        let sub = if path.is_empty() {
            String::new()
        } else {
            format!("/{}", percent_encode(&path, false))
        };
        let url = self.hub.api(&format!(
            "/tree/{}{sub}?recursive=false&expand=false",
            shown.sha
        ));
        let items = match self.hub.get_pages("repo tree", &url).await {
            Ok(items) => items,
            // Not a folder at this commit (any more): nothing is below it.
            Err(RemoteError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(items.iter().filter_map(|v| self.entry(v, &shown)).collect())
    }

    async fn head(&self, path: &str) -> RemoteResult<Option<Entry>> {
        let shown = self.shown.lock().clone();
        let full = repo_path(&self.uri.prefix, path);
        if full.is_empty() {
            return Ok(Some(Entry::dir(
                String::new(),
                self.meta(EntryKind::Dir, shown.time_ns),
            )));
        }
        let url = self.hub.api(&format!("/paths-info/{}", shown.sha));
        let form = format!("paths={}&expand=false", percent_encode(&full, false));
        let r = self
            .hub
            .send("repo paths-info", |c| {
                c.post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form.clone())
            })
            .await?;
        let items: Vec<Value> = r
            .json()
            .await
            .map_err(|e| RemoteError::Other(format!("repo paths-info: bad answer: {e}")))?;
        let mut e = items.iter().find_map(|v| self.entry(v, &shown));
        if let Some(e) = &mut e {
            e.path = path.to_string();
        }
        Ok(e)
    }

    async fn commit(&self, _ops: Vec<CatalogOp>) -> RemoteResult<u64> {
        Err(RemoteError::PermissionDenied(format!(
            "{} is mounted read-only",
            self.uri.describe()
        )))
    }

    /// Where the followed branch points now; a move switches the mount to the new commit.
    async fn revision(&self) -> RemoteResult<u64> {
        if !self.follows {
            return Ok(self.shown.lock().revision);
        }
        let (sha, time_ns) = resolve(&self.hub, &self.uri.revision).await?;
        let mut shown = self.shown.lock();
        if shown.sha != sha {
            tracing::info!(
                "{} moved from {} to {sha}: showing the new commit",
                self.uri.describe(),
                shown.sha
            );
            *shown = Shown {
                sha,
                time_ns,
                revision: shown.revision + 1,
            };
        }
        Ok(shown.revision)
    }
}

/// File bodies of a repo: xet files through the CAS, regular files through `resolve`.
pub struct RepoCas {
    hub: Arc<Hub>,
    xet: Arc<dyn Cas>,
    /// `""`, `datasets/` or `spaces/`.
    web_prefix: &'static str,
    regular: Regular,
}

#[async_trait]
impl Cas for RepoCas {
    async fn read_range(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes> {
        let Some(oid) = id.hash.strip_prefix(GIT_BLOB) else {
            return self.xet.read_range(id, range).await;
        };
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let (commit, path) = self
            .regular
            .lock()
            .get(oid)
            .cloned()
            .ok_or_else(|| RemoteError::NotFound(format!("file {oid} was never listed")))?;
        let url = format!(
            "{}/{}{}/resolve/{commit}/{}",
            self.hub.endpoint,
            self.web_prefix,
            self.hub.bucket,
            percent_encode(&path, true)
        );
        let want = range.end - range.start;
        let r = self
            .hub
            .send("repo file", |c| {
                c.get(&url)
                    .header("range", format!("bytes={}-{}", range.start, range.end - 1))
            })
            .await?;
        let body = r
            .bytes()
            .await
            .map_err(|e| RemoteError::Other(format!("repo file {path}: {e}")))?;
        if body.len() as u64 != want {
            return Err(RemoteError::Other(format!(
                "repo file {path}: asked for {want} bytes, got {}",
                body.len()
            )));
        }
        Ok(body)
    }

    async fn upload_batch(
        &self,
        _items: Vec<UploadItem<'_>>,
    ) -> RemoteResult<Vec<RemoteResult<Uploaded>>> {
        Err(RemoteError::PermissionDenied(
            "a repo mount is read-only".into(),
        ))
    }

    async fn compose(&self, _base: &FileId, _edits: Vec<ComposeEdit>) -> RemoteResult<Composed> {
        Err(RemoteError::PermissionDenied(
            "a repo mount is read-only".into(),
        ))
    }

    async fn settle(&self, timeout: std::time::Duration) {
        self.xet.settle(timeout).await
    }
}

/// A repo opened for mounting.
pub struct OpenedRepo {
    pub catalog: Arc<RepoCatalog>,
    pub cas: Arc<RepoCas>,
    /// The commit shown first.
    pub commit: String,
}

/// Open repo `uri` read-only at its revision; `pin`: never follow a branch.
pub async fn open(
    ctx: xet_runtime::core::XetContext,
    uri: &RepoUri,
    o: &super::RemoteOptions,
    pin: bool,
) -> RemoteResult<OpenedRepo> {
    let probe = Hub::for_repo(
        &o.endpoint,
        o.token.clone(),
        uri.plural,
        &uri.id,
        &uri.revision,
    )?;
    let (sha, time_ns) = match resolve(&probe, &uri.revision).await {
        Err(RemoteError::NotFound(m)) => {
            // The repo is there but the revision is not: say which.
            probe.get_json("repo info", &probe.api("")).await?;
            tracing::debug!("revision {}: {m}", uri.revision);
            return Err(RemoteError::NotFound(format!(
                "{}revision {}",
                crate::remote::open::NO_REVISION,
                uri.revision
            )));
        }
        r => r?,
    };
    // CAS tokens are asked for at the first commit, which stays readable whatever happens to
    // the branch or tag named.
    let hub = Arc::new(Hub::for_repo(
        &o.endpoint,
        o.token.clone(),
        uri.plural,
        &uri.id,
        &sha,
    )?);
    // Only a branch moves; a tag is named like one, so ask.
    let name = uri
        .revision
        .strip_prefix("refs/heads/")
        .unwrap_or(&uri.revision);
    let branch = !pin && !uri.is_commit_id() && {
        let refs = hub.get_json("repo refs", &hub.api("/refs")).await?;
        refs.get("branches")
            .and_then(Value::as_array)
            .is_some_and(|b| {
                b.iter()
                    .any(|r| r.get("name").and_then(Value::as_str) == Some(name))
            })
    };
    let xet = super::cas::HttpCas::open(ctx, hub.clone(), false, &o.cache_dir, o.chunk_cache_bytes)
        .await?;
    xet.official_routes_only();
    let regular = Regular::default();
    let catalog = RepoCatalog {
        hub: hub.clone(),
        uri: uri.clone(),
        follows: branch,
        shown: Mutex::new(Shown {
            sha: sha.clone(),
            time_ns,
            revision: 1,
        }),
        owner: o.owner,
        regular: regular.clone(),
    };
    if !uri.prefix.is_empty() {
        match catalog.head("").await? {
            Some(e) if e.kind == EntryKind::Dir => {}
            _ => {
                return Err(RemoteError::NotFound(format!(
                    "{}folder {} at {}",
                    crate::remote::open::NO_REVISION,
                    uri.prefix,
                    uri.revision
                )))
            }
        }
    }
    let web_prefix = match uri.plural {
        "datasets" => "datasets/",
        "spaces" => "spaces/",
        _ => "",
    };
    Ok(OpenedRepo {
        catalog: Arc::new(catalog),
        cas: Arc::new(RepoCas {
            hub,
            xet: Arc::new(xet),
            web_prefix,
            regular,
        }),
        commit: sha,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_uris_parse_as_hf_file_system_writes_them() {
        let u = RepoUri::parse("hf://alice/m").unwrap();
        assert_eq!(
            (
                u.plural,
                u.id.as_str(),
                u.revision.as_str(),
                u.prefix.as_str()
            ),
            ("models", "alice/m", "main", "")
        );
        let u = RepoUri::parse("hf://datasets/alice/d@v1.0/data/train").unwrap();
        assert_eq!(
            (u.plural, u.revision.as_str(), u.prefix.as_str()),
            ("datasets", "v1.0", "data/train")
        );
        let u = RepoUri::parse("hf://spaces/a/s@refs%2Fpr%2F3").unwrap();
        assert_eq!((u.plural, u.revision.as_str()), ("spaces", "refs/pr/3"));
        let u = RepoUri::parse("hf://models/a/m@refs/convert/parquet/sub").unwrap();
        assert_eq!(
            (u.revision.as_str(), u.prefix.as_str()),
            ("refs/convert/parquet", "sub")
        );
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert!(RepoUri::parse(&format!("hf://a/m@{sha}"))
            .unwrap()
            .is_commit_id());
        assert_eq!(RepoUri::parse("hf://a/m").unwrap().describe(), "model a/m");
        for bad in [
            "hf://only",
            "hf://a/m@",
            "hf://a/m/../x",
            "s3://a/b",
            "hf://-a/m",
        ] {
            assert!(RepoUri::parse(bad).is_err(), "{bad}");
        }
    }
}
