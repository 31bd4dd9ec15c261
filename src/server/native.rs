//! xetmount's own catalog routes (`/api/buckets/{id}/xetmount/...`): the full namespace of a
//! bucket (POSIX metadata, symlinks, special files, empty directories, hard links) and
//! all-or-nothing commits, for `xetmount mount` against this server. A bucket's info
//! advertises them (`"xetmount": {"revision": N}`); the bucket API stays the plain view.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::cas::store_upload;
use super::extract::{OpenBucket, Read, Write};
use super::hub::error;
use super::{Answer, Server};
use crate::remote::cas_wire;
use crate::remote::names::check_posix_path;
use crate::remote::wire::{WireEntry, WireOp};
use crate::remote::{CatalogOp, Changes, FileId, RemoteError};

type S = State<Arc<Server>>;

fn remote_err(e: RemoteError) -> Response {
    match e {
        RemoteError::NotFound(m) => error(StatusCode::NOT_FOUND, Some("EntryNotFound"), m),
        RemoteError::Conflict(c) => (
            StatusCode::PRECONDITION_FAILED,
            axum::Json(crate::remote::wire::WireConflicts::from(c.as_slice())),
        )
            .into_response(),
        RemoteError::Other(m) | RemoteError::Integrity(m) => error(StatusCode::CONFLICT, None, m),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct DirQuery {
    #[serde(default)]
    dir: String,
}

pub async fn list(Query(q): Query<DirQuery>, b: OpenBucket<Read>) -> Answer {
    query_path(&q.dir)?;
    let v = b
        .bucket
        .catalog
        .list_dir(&q.dir)
        .await
        .map_err(remote_err)?;
    Ok(axum::Json(v.iter().map(WireEntry::from).collect::<Vec<_>>()).into_response())
}

#[derive(Deserialize)]
pub struct TreeQuery {
    #[serde(default)]
    dir: String,
    /// The last path of the previous page.
    #[serde(default)]
    after: String,
    limit: Option<usize>,
}

/// Entries per page of [`tree`] unless the caller asks for fewer or more (up to 10,000).
const TREE_PAGE: usize = crate::remote::local::TREE_PAGE;

/// One page of everything below a directory, at any depth and of every kind, with all that
/// `list` gives for each entry: `{"entries": [...], "next": PATH|null}`, in path order,
/// keyed by the last path (`after`), so a listing sees every entry that exists for its whole
/// duration exactly once however the bucket changes between pages. One indexed range query
/// per page.
pub async fn tree(Query(q): Query<TreeQuery>, b: OpenBucket<Read>) -> Answer {
    query_path(&q.dir)?;
    let limit = q.limit.unwrap_or(TREE_PAGE).clamp(1, 10_000);
    // One more than the page holds says whether another page follows.
    let mut v = b
        .bucket
        .catalog
        .tree_page(&q.dir, &q.after, limit + 1)
        .await
        .map_err(remote_err)?;
    let next = (v.len() > limit).then(|| {
        v.truncate(limit);
        v.last().map(|e| e.path.clone())
    });
    let entries: Vec<WireEntry> = v.iter().map(WireEntry::from).collect();
    Ok(axum::Json(json!({ "entries": entries, "next": next.flatten() })).into_response())
}

#[derive(Deserialize)]
pub struct PathQuery {
    #[serde(default)]
    path: String,
}

pub async fn head(Query(q): Query<PathQuery>, b: OpenBucket<Read>) -> Answer {
    query_path(&q.path)?;
    match b.bucket.catalog.head(&q.path).await.map_err(remote_err)? {
        Some(e) => Ok(axum::Json(WireEntry::from(&e)).into_response()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            Some("EntryNotFound"),
            format!("{} does not exist", q.path),
        )),
    }
}

#[derive(Deserialize)]
pub struct LinkQuery {
    link: u64,
}

pub async fn link_paths(Query(q): Query<LinkQuery>, b: OpenBucket<Read>) -> Answer {
    let v = b
        .bucket
        .catalog
        .link_paths(q.link)
        .await
        .map_err(remote_err)?;
    Ok(axum::Json(v).into_response())
}

pub async fn revision(b: OpenBucket<Read>) -> Answer {
    let r = b.bucket.catalog.revision().await.map_err(remote_err)?;
    Ok(axum::Json(json!({ "revision": r })).into_response())
}

#[derive(Deserialize)]
pub struct ChangesQuery {
    since: u64,
    /// Seconds to wait for a change when there is none yet.
    #[serde(default)]
    wait: u64,
}

/// Longest a change-feed request is held open.
const MAX_WAIT_SECS: u64 = 55;

/// The change feed: `{"revision": N, "dirs": [...]}`, the directories whose listings changed
/// after revision `since` (held open up to `wait` seconds until there is one), or
/// `{"revision": N, "reset": true}` when the history no longer reaches back that far.
pub async fn changes(Query(q): Query<ChangesQuery>, b: OpenBucket<Read>) -> Answer {
    let b = &b.bucket;
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_secs(q.wait.min(MAX_WAIT_SECS));
    // Subscribed before looking, so a commit in between is not missed.
    let mut committed = b.committed.subscribe();
    loop {
        let c = b.catalog.changes_since(q.since).await.map_err(remote_err)?;
        let answer = match &c {
            Changes::Reset { revision } => json!({ "revision": revision, "reset": true }),
            Changes::Dirs { revision, dirs } => json!({ "revision": revision, "dirs": dirs }),
        };
        let waiting = matches!(&c, Changes::Dirs { dirs, .. } if dirs.is_empty());
        let woken = waiting
            && matches!(
                tokio::time::timeout_at(deadline, committed.changed()).await,
                Ok(Ok(()))
            );
        if !woken {
            return Ok(axum::Json(answer).into_response());
        }
    }
}

/// Apply a JSON array of ops, all or none; answers the new revision. Three steps: [`parse`]
/// the body (storing the uploads a framed body carries), [`check_bodies`] of the ops, and
/// the commit.
pub async fn commit(State(s): S, b: OpenBucket<Write>, headers: HeaderMap, body: Bytes) -> Answer {
    let ops = parse(&s, &b.id, &headers, body).await?;
    if let Some(r) = refuse_paths(&ops) {
        return Err(r);
    }
    let added = check_bodies(&s, &headers, &b.id, &ops).await?;
    s.claim_bodies(&added).await?;
    let _one_batch_at_a_time = b.bucket.batch_lock.lock().await;
    let rev = b.bucket.commit(ops).await.map_err(remote_err)?;
    s.buckets
        .note_hashes(
            &b.id,
            &added.iter().map(String::as_str).collect::<Vec<_>>(),
            false,
        )
        .await
        .map_err(remote_err)?;
    s.buckets.touch(&b.id).await.map_err(remote_err)?;
    Ok(axum::Json(json!({ "revision": rev })).into_response())
}

/// The ops of a commit body. A framed body carries a composition's uploads with the ops
/// (`cas_wire::CommitHead`): they are stored first, whether the ops then apply or not.
async fn parse(
    s: &Server,
    id: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Vec<CatalogOp>, Response> {
    let framed = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == cas_wire::FRAMED.as_bytes());
    let parsed = if framed {
        let (head, mut rest) = cas_wire::unframe::<cas_wire::CommitHead>(body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, None, e))?;
        for u in &head.uploads {
            let n = (u.body_len() as usize).min(rest.len());
            store_upload(s, id, u, rest.split_to(n)).await?;
        }
        if !rest.is_empty() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                None,
                format!("{} bytes after the last upload", rest.len()),
            ));
        }
        serde_json::from_value(head.ops)
    } else {
        serde_json::from_slice(&body)
    };
    let wire: Vec<WireOp> =
        parsed.map_err(|e| error(StatusCode::BAD_REQUEST, None, format!("bad ops: {e}")))?;
    wire.into_iter()
        .map(|w| {
            w.op().ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    None,
                    "an entry has an unknown kind",
                )
            })
        })
        .collect()
}

/// Every body an op names must be written as a xet hash; every body a `Put` names must be
/// stored, of the size it says, and one the caller may name in bucket `id`. The bodies the
/// ops add.
async fn check_bodies(
    s: &Server,
    headers: &HeaderMap,
    id: &str,
    ops: &[CatalogOp],
) -> Result<Vec<String>, Response> {
    let mut added = Vec::new();
    for op in ops {
        let content = match op {
            CatalogOp::Put(e) => e.content.as_ref(),
            CatalogOp::Expect { content, .. } => content.as_ref(),
            _ => None,
        };
        let Some(c) = content else { continue };
        if !crate::server::scope::is_hash(&c.hash) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                None,
                format!("{:?} is not a xet hash (64 lowercase hex digits)", c.hash),
            ));
        }
        if !matches!(op, CatalogOp::Put(_)) {
            continue;
        }
        check_body(s, headers, id, c).await?;
        added.push(c.hash.clone());
    }
    Ok(added)
}

/// Body `c` of a `Put` in bucket `id`: one the caller may name there, stored, of its size.
async fn check_body(s: &Server, headers: &HeaderMap, id: &str, c: &FileId) -> Result<(), Response> {
    if !s.may_add_body(headers, id, &c.hash).await? {
        return Err(error(
            StatusCode::FORBIDDEN,
            None,
            format!(
                "xet hash {} was not uploaded to this bucket and is in no bucket you may read",
                c.hash
            ),
        ));
    }
    match s.file_size(&c.hash).await.map_err(remote_err)? {
        Some(n) if n == c.size => Ok(()),
        Some(n) => Err(error(
            StatusCode::BAD_REQUEST,
            None,
            format!("{} is {n} bytes, not {}", c.hash, c.size),
        )),
        None => Err(error(
            StatusCode::BAD_REQUEST,
            None,
            format!("xet hash {} not found", c.hash),
        )),
    }
}

/// 400 for the first op naming a path xetmount's catalog cannot hold (POSIX names: no empty,
/// `.` or `..` segment, no NUL, no slash at either end, within the length limits). The root
/// (`""`) may only have its metadata set.
fn refuse_paths(ops: &[CatalogOp]) -> Option<Response> {
    ops.iter().find_map(|op| {
        let (a, b) = match op {
            CatalogOp::Put(e) if e.path.is_empty() && e.kind == crate::remote::EntryKind::Dir => {
                return None
            }
            CatalogOp::SetMeta { path, .. } if path.is_empty() => return None,
            CatalogOp::Put(e) => (e.path.as_str(), None),
            CatalogOp::SetMeta { path, .. }
            | CatalogOp::Delete { path }
            | CatalogOp::Expect { path, .. } => (path.as_str(), None),
            CatalogOp::Link { from, to } | CatalogOp::Rename { from, to } => {
                (from.as_str(), Some(to.as_str()))
            }
        };
        [Some(a), b].into_iter().flatten().find_map(|p| {
            check_posix_path(p).err().map(|why| {
                let shown: String = p.chars().take(200).collect();
                error(
                    StatusCode::BAD_REQUEST,
                    None,
                    format!("{shown:?} is not a valid path: {why}"),
                )
            })
        })
    })
}

/// A directory or path named in a query: `""` is the root; anything else must be a path the
/// catalog could hold.
fn query_path(p: &str) -> Result<(), Response> {
    if p.is_empty() {
        return Ok(());
    }
    check_posix_path(p).map_err(|why| {
        let shown: String = p.chars().take(200).collect();
        error(
            StatusCode::BAD_REQUEST,
            None,
            format!("{shown:?} is not a valid path: {why}"),
        )
    })
}
