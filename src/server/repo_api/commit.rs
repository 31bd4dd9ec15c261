//! Commits: `preupload` (which upload mode each file takes, and what is there already) and
//! the NDJSON `commit` (regular files inline, xet files by sha256, deletions), applied all or
//! nothing on a branch, which moves only if it still points where the commit's
//! `parentCommit` says.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{RepoAccess, S};
use crate::server::extract::Write;
use crate::server::hub::{error, internal};
use crate::server::repos::tree::{Change, FileNode, Node, TreeError};
use crate::server::repos::{CommitError, RefKind};
use crate::server::{Answer, Server};

/// Files above this size are uploaded through xet whatever they hold (the Hub's rule of
/// thumb); smaller ones too when their first bytes say they are binary.
const LFS_ABOVE: u64 = 10 << 20;
/// Files one preupload request may ask about (the client sends 256 at most).
const MAX_PREUPLOAD: usize = 10_000;

#[derive(Deserialize)]
struct PreFile {
    path: String,
    #[serde(default)]
    sample: String,
    #[serde(default)]
    size: u64,
}

#[derive(Deserialize, Default)]
struct PreBody {
    #[serde(default)]
    files: Vec<PreFile>,
}

fn bad(msg: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, None, msg)
}

fn check_path(p: &str) -> Result<(), Response> {
    crate::remote::names::check_path(p)
        .map_err(|why| bad(format!("{p:?} is not a valid path in a repo: {why}")))
}

/// `POST …/preupload/{rev}`: `lfs` for large or binary files, `regular` otherwise, and each
/// path's current `oid` at the revision (sha256 of an LFS file, git blob id of a regular
/// one), so the client skips files that did not change.
pub async fn preupload(
    State(s): S,
    r: RepoAccess<Write>,
    axum::extract::Query(q): axum::extract::Query<CommitQuery>,
    body: Bytes,
) -> Answer {
    refuse_pull_requests(&q)?;
    let b: PreBody = crate::server::hub::json_body(&body)?;
    if b.files.len() > MAX_PREUPLOAD {
        return Err(bad(format!("at most {MAX_PREUPLOAD} files per preupload")));
    }
    // A new branch of a PR has nothing yet; its files are all new.
    let at = s.repos.resolve(r.key(), r.rev()).await.map_err(internal)?;
    let mut out = Vec::with_capacity(b.files.len());
    for f in &b.files {
        check_path(&f.path)?;
        let sample = base64::engine::general_purpose::STANDARD
            .decode(f.sample.as_bytes())
            .unwrap_or_default();
        let lfs = f.size > LFS_ABOVE || sample.contains(&0);
        let oid = match &at {
            Some(c) => match s
                .repos
                .entry_at(r.key(), c, &f.path)
                .await
                .map_err(internal)?
            {
                Some(Node::File(n)) => {
                    Some(n.lfs.as_ref().map_or(n.oid.clone(), |l| l.sha256.clone()))
                }
                _ => None,
            },
            None => None,
        };
        out.push(json!({
            "path": f.path,
            "uploadMode": if lfs { "lfs" } else { "regular" },
            "shouldIgnore": false,
            "oid": oid,
        }));
    }
    Ok(axum::Json(json!({ "files": out })).into_response())
}

/// One line of the NDJSON commit body.
#[derive(Deserialize)]
struct Line {
    key: String,
    #[serde(default)]
    value: Value,
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default)]
    summary: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "parentCommit")]
    parent_commit: Option<String>,
}

#[derive(Deserialize)]
struct RegularFile {
    path: String,
    content: String,
    #[serde(default)]
    encoding: Option<String>,
}

#[derive(Deserialize)]
struct LfsFile {
    path: String,
    oid: String,
    #[serde(default)]
    algo: Option<String>,
    size: Option<u64>,
}

#[derive(Deserialize)]
struct Deleted {
    path: String,
}

fn field<T: serde::de::DeserializeOwned>(line: usize, v: Value) -> Result<T, Response> {
    serde_json::from_value(v).map_err(|e| bad(format!("line {line} of the commit: {e}")))
}

/// The commit a body describes: its header, operations and the regular files' contents.
struct Parsed {
    header: Header,
    ops: Vec<(String, Change)>,
    blobs: Vec<Vec<u8>>,
}

impl Server {
    /// The xet file with content hash `sha256` the caller may name in repo `key` (one
    /// uploaded there first), checked against `size` if given.
    async fn lfs_file(
        &self,
        headers: &HeaderMap,
        key: &str,
        sha256: &str,
        size: Option<u64>,
    ) -> Result<FileNode, Response> {
        let candidates = self
            .repos
            .files_with_sha256(sha256)
            .await
            .map_err(internal)?;
        // Bodies uploaded to this repo first: they stand for themselves.
        let mut ranked = Vec::with_capacity(candidates.len());
        for h in candidates {
            let own = self.buckets.was_uploaded(key, &h).await.map_err(internal)?;
            ranked.push((!own, h));
        }
        ranked.sort_by_key(|(later, _)| *later);
        for (_, hash) in ranked {
            if !self.may_add_body(headers, key, &hash).await? {
                continue;
            }
            let Some(stored) = self.file_size(&hash).await.map_err(internal)? else {
                continue;
            };
            if size.is_some_and(|n| n != stored) {
                continue;
            }
            return Ok(FileNode::lfs(stored, sha256.to_string(), hash));
        }
        Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            format!(
                "no file with sha256 {sha256}{} was uploaded for this repo; upload it first",
                size.map(|n| format!(" and size {n}")).unwrap_or_default()
            ),
        ))
    }

    async fn parse_commit(
        &self,
        headers: &HeaderMap,
        key: &str,
        body: &[u8],
    ) -> Result<Parsed, Response> {
        let mut p = Parsed {
            header: Header::default(),
            ops: Vec::new(),
            blobs: Vec::new(),
        };
        let text = std::str::from_utf8(body).map_err(|_| bad("the commit is not UTF-8"))?;
        for (i, raw) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let n = i + 1;
            let line: Line = serde_json::from_str(raw)
                .map_err(|e| bad(format!("line {n} of the commit is not JSON: {e}")))?;
            match line.key.as_str() {
                "header" => p.header = field(n, line.value)?,
                "file" => {
                    let f: RegularFile = field(n, line.value)?;
                    check_path(&f.path)?;
                    let data = match f.encoding.as_deref() {
                        Some("base64") => base64::engine::general_purpose::STANDARD
                            .decode(f.content.as_bytes())
                            .map_err(|e| bad(format!("line {n}: bad base64: {e}")))?,
                        None | Some("utf-8") => f.content.into_bytes(),
                        Some(other) => {
                            return Err(bad(format!("line {n}: unknown encoding {other}")))
                        }
                    };
                    p.ops.push((f.path, Change::Put(FileNode::regular(&data))));
                    p.blobs.push(data);
                }
                "lfsFile" => {
                    let f: LfsFile = field(n, line.value)?;
                    check_path(&f.path)?;
                    if f.algo.as_deref().is_some_and(|a| a != "sha256") {
                        return Err(bad(format!("line {n}: only sha256 names LFS files")));
                    }
                    let sha = f.oid.to_ascii_lowercase();
                    let node = self.lfs_file(headers, key, &sha, f.size).await?;
                    p.ops.push((f.path, Change::Put(node)));
                }
                "deletedFile" => {
                    let f: Deleted = field(n, line.value)?;
                    p.ops.push((f.path, Change::DeleteFile));
                }
                "deletedFolder" => {
                    let f: Deleted = field(n, line.value)?;
                    p.ops.push((f.path, Change::DeleteFolder));
                }
                other => return Err(bad(format!("line {n}: unknown operation {other:?}"))),
            }
        }
        Ok(p)
    }
}

#[derive(Deserialize, Default)]
pub struct CommitQuery {
    create_pr: Option<String>,
}

/// Pull requests are not hosted: refused before anything is uploaded (at preupload).
fn refuse_pull_requests(q: &CommitQuery) -> Result<(), Response> {
    if q.create_pr
        .as_deref()
        .is_some_and(|v| v == "1" || v == "true")
    {
        return Err(bad(
            "this server does not host pull requests; commit to a branch",
        ));
    }
    Ok(())
}

/// `POST …/commit/{rev}`: `rev` must be a branch.
pub async fn commit(
    State(s): S,
    r: RepoAccess<Write>,
    axum::extract::Query(q): axum::extract::Query<CommitQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    refuse_pull_requests(&q)?;
    let branch = r
        .rev()
        .strip_prefix("refs/heads/")
        .unwrap_or(r.rev())
        .to_string();
    let is_branch = s
        .repos
        .refs(r.key(), RefKind::Branch)
        .await
        .map_err(internal)?
        .iter()
        .any(|b| b.name == branch);
    if !is_branch {
        return Err(
            match s.repos.resolve(r.key(), r.rev()).await.map_err(internal)? {
                Some(_) => bad(format!("{branch} is not a branch; commits go to branches")),
                None => super::no_revision(&branch, &r.info.id),
            },
        );
    }
    let p = s.parse_commit(&headers, r.key(), &body).await?;
    if p.header.summary.trim().is_empty() {
        return Err(bad("the commit has no summary"));
    }
    let author = r
        .caller
        .as_ref()
        .map_or("", |c| c.user.as_str())
        .to_string();
    let xet: Vec<String> = p
        .ops
        .iter()
        .filter_map(|(_, c)| match c {
            Change::Put(FileNode { lfs: Some(l), .. }) => Some(l.xet.clone()),
            _ => None,
        })
        .collect();
    s.claim_bodies(&xet).await?;
    let done = s
        .repos
        .commit(
            r.key(),
            &branch,
            p.header.parent_commit.as_deref(),
            &p.ops,
            &p.blobs,
            &p.header.summary,
            &p.header.description,
            &author,
        )
        .await;
    let c = match done {
        Ok(c) => c,
        Err(CommitError::NoBranch(b)) => return Err(super::no_revision(&b, &r.info.id)),
        Err(e @ CommitError::Moved { .. }) => {
            return Err(error(StatusCode::PRECONDITION_FAILED, None, e.to_string()))
        }
        Err(CommitError::Tree(TreeError::Missing(path))) => {
            return Err(error(
                StatusCode::NOT_FOUND,
                Some("EntryNotFound"),
                format!("A file with this name doesn't exist: {path}"),
            ))
        }
        Err(CommitError::Tree(TreeError::Clash(path))) => {
            return Err(error(
                StatusCode::CONFLICT,
                None,
                format!("{path} would be a file and a folder at once"),
            ))
        }
        Err(e) => return Err(internal(e)),
    };
    // Where to look for these bodies when someone names them elsewhere (scope.rs).
    s.buckets
        .note_hashes(
            r.key(),
            &xet.iter().map(String::as_str).collect::<Vec<_>>(),
            false,
        )
        .await
        .map_err(internal)?;
    let url = format!("{}/commit/{}", s.repo_url(&r.info), c.oid);
    Ok(axum::Json(json!({"success": true, "commitOid": c.oid, "commitUrl": url})).into_response())
}
