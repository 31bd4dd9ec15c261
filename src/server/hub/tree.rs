//! Listings of a bucket: `tree` (recursive or one folder, paged) and `paths-info`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    bad_path, decode_cursor, encode_cursor, error, internal, iso, object_fields, with_next, Field,
    EMPTY_HASH, MAX_PATHS_INFO, PAGE, S,
};
use crate::remote::{Entry, EntryKind};
use crate::server::catalog::ServedCatalog;
use crate::server::extract::{OpenBucket, Read};
use crate::server::{Answer, Server};

fn file_json(e: &Entry) -> Value {
    let hash = e.content.as_ref().map_or(EMPTY_HASH, |c| c.hash.as_str());
    json!({
        "type": "file",
        "path": e.path,
        "size": e.size(),
        "xetHash": hash,
        "mtime": iso(e.meta.mtime_ns / 1_000_000),
        "uploadedAt": iso(e.meta.ctime_ns / 1_000_000),
    })
}

#[derive(Deserialize)]
pub struct TreeQuery {
    recursive: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn tree_root(State(s): S, Query(q): Query<TreeQuery>, b: OpenBucket<Read>) -> Answer {
    tree_page(&s, String::new(), q, b).await
}

/// One page of a bucket's tree: every file below the prefix (`recursive`, the default, as on
/// the Hub), or the files and non-empty folders directly in it. Pages are keyed by the last
/// path returned, so a listing sees every entry that exists for its whole duration exactly
/// once however the bucket changes between pages; each page is one indexed query.
pub async fn tree(
    State(s): S,
    Path((_, _, prefix)): Path<(String, String, String)>,
    Query(q): Query<TreeQuery>,
    b: OpenBucket<Read>,
) -> Answer {
    tree_page(&s, prefix, q, b).await
}

async fn tree_page(s: &Server, prefix: String, q: TreeQuery, b: OpenBucket<Read>) -> Answer {
    // A folder prefix may end with one '/' (the client's documented form, "models/").
    let prefix = prefix.strip_suffix('/').unwrap_or(&prefix).to_string();
    if !prefix.is_empty() {
        if let Err(why) = crate::remote::names::check_path(&prefix) {
            return Err(bad_path("the prefix", &prefix, why));
        }
    }
    let recursive = match q.recursive.as_deref() {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(other) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                None,
                format!("recursive must be true or false, not {other:?}"),
            ))
        }
    };
    let after = decode_cursor(q.cursor.as_deref())?;
    let limit = q.limit.unwrap_or(PAGE).clamp(1, 10_000);
    let catalog = b.bucket.catalog.as_ref();
    let (items, next_after) = if recursive {
        files_below(catalog, &prefix, &after, limit).await?
    } else {
        entries_in(catalog, &prefix, &after, limit).await?
    };
    let r = axum::Json(items).into_response();
    let Some(last) = next_after else {
        return Ok(r);
    };
    let path = if prefix.is_empty() {
        String::new()
    } else {
        format!("/{}", crate::remote::wire::percent_encode(&prefix, false))
    };
    Ok(with_next(
        r,
        &format!(
            "{}/api/buckets/{}/tree{path}?recursive={recursive}&limit={limit}&cursor={}",
            s.public_url,
            b.id,
            encode_cursor(&last)
        ),
    ))
}

/// A tree page's items and, when there may be more, the last path it looked at.
type TreeItems = (Vec<Value>, Option<String>);

/// A recursive page: every file below `prefix` after `after`.
async fn files_below(
    catalog: &dyn ServedCatalog,
    prefix: &str,
    after: &str,
    limit: usize,
) -> Result<TreeItems, Response> {
    // One more than the page holds says whether another page follows (a full last page
    // then needs no empty page after it).
    let mut files = catalog
        .files_page(prefix, after, limit + 1)
        .await
        .map_err(internal)?;
    let mut next_after = None;
    if files.len() > limit {
        files.truncate(limit);
        next_after = files.last().map(|e| e.path.clone());
    }
    Ok((files.iter().map(file_json).collect(), next_after))
}

/// A page of the files and non-empty folders directly in `prefix`.
async fn entries_in(
    catalog: &dyn ServedCatalog,
    prefix: &str,
    after: &str,
    limit: usize,
) -> Result<TreeItems, Response> {
    let mut items = Vec::new();
    let mut next_after = None;
    match catalog.head(prefix).await.map_err(internal)? {
        // A file named as the prefix is a listing of one entry: the first page holds it.
        Some(e) if e.kind == EntryKind::File && after.is_empty() => items.push(file_json(&e)),
        Some(e) if e.kind == EntryKind::Dir => {
            let mut children = catalog
                .children_page(prefix, after, limit + 1)
                .await
                .map_err(internal)?;
            if children.len() > limit {
                children.truncate(limit);
                next_after = children.last().map(|e| e.path.clone());
            }
            for c in children {
                match c.kind {
                    EntryKind::File => items.push(file_json(&c)),
                    EntryKind::Dir
                        if catalog.has_file_under(&c.path).await.map_err(internal)? =>
                    {
                        items.push(json!({
                            "type": "directory",
                            "path": c.path,
                            "uploadedAt": iso(c.meta.ctime_ns / 1_000_000),
                        }))
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Ok((items, next_after))
}

/// `POST .../paths-info` (unknown fields are ignored).
#[derive(Deserialize, Default)]
struct PathsInfoBody {
    /// Paths that are not strings name nothing.
    #[serde(default)]
    paths: Field<Vec<Field<String>>>,
}

pub async fn paths_info(b: OpenBucket<Read>, body: Bytes) -> Answer {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, None, format!("bad JSON body: {e}")))?;
    let body: PathsInfoBody = object_fields(v);
    let Some(paths) = body.paths.given() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            "the body must be {\"paths\": [...]}",
        ));
    };
    if paths.len() > MAX_PATHS_INFO {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            format!("at most {MAX_PATHS_INFO} paths per request"),
        ));
    }
    let mut out = Vec::new();
    // A path no bucket can hold names no file: it is left out of the answer, never rewritten
    // into one that does.
    let valid = paths
        .iter()
        .filter_map(Field::given)
        .filter(|p| crate::remote::names::check_path(p).is_ok());
    for p in valid {
        match b.bucket.catalog.head(p).await.map_err(internal)? {
            Some(e) if e.kind == EntryKind::File => out.push(file_json(&e)),
            _ => {}
        }
    }
    Ok(axum::Json(out).into_response())
}
