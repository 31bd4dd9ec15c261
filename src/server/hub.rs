//! The Hugging Face bucket API subset (`/api/buckets/...`, `/buckets/.../resolve/...`) as
//! `huggingface_hub` 2.4.0 and `hf_xet` 1.8.0 use it (shared/protocol/HF_BUCKET_API.md), over
//! the server's bucket catalogs.
//!
//! A plain bucket has files only; folders exist while a file lies under them. Entries only
//! xetmount's own protocol can make (symlinks, special files, empty directories) are left
//! out of these listings.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Caller, Scope};
use super::buckets::{now_ms, valid_name, BucketInfo};
use super::Server;
use crate::remote::{Catalog, CatalogOp, Entry, EntryKind, FileId, Meta};

/// The hash of the empty file.
pub const EMPTY_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Tree entries per page unless the caller asks for another `limit` (at most 10,000).
const PAGE: usize = 1000;

pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An error response the Python client understands: JSON `error`, and `X-Error-Code` where
/// the client maps it to an exception.
pub fn error(status: StatusCode, code: Option<&str>, msg: impl Into<String>) -> Response {
    let msg = msg.into();
    let mut r = (status, axum::Json(json!({ "error": msg }))).into_response();
    if let Some(c) = code {
        r.headers_mut()
            .insert("x-error-code", HeaderValue::from_str(c).expect("ascii"));
    }
    if let Ok(v) = HeaderValue::from_str(&msg.replace(['\r', '\n'], " ")) {
        r.headers_mut().insert("x-error-message", v);
    }
    r
}

/// A failure of the server itself: logged, and answered 500.
pub fn internal(e: impl std::fmt::Display) -> Response {
    tracing::warn!("serve: {e}");
    error(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string())
}

fn no_bucket(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        Some("RepoNotFound"),
        format!("Bucket {id} does not exist"),
    )
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

impl Server {
    /// The caller, or 401 for an unknown token.
    fn caller(&self, headers: &HeaderMap) -> Result<Option<Caller>, Response> {
        self.auth.caller(bearer(headers)).map_err(|()| {
            error(
                StatusCode::UNAUTHORIZED,
                None,
                "Invalid credentials in Authorization header",
            )
        })
    }

    /// The bucket, if the caller may `need` it: 404 (`RepoNotFound`) when it is missing or
    /// hidden from the caller, 401 for an anonymous caller of a private bucket, 403 when the
    /// caller may read but not write.
    fn access(
        &self,
        headers: &HeaderMap,
        id: &str,
        need: Scope,
    ) -> Result<(BucketInfo, Option<Caller>), Response> {
        let caller = self.caller(headers)?;
        let info = self
            .buckets
            .info(id)
            .map_err(internal)?
            .ok_or_else(|| no_bucket(id))?;
        let scope = caller.as_ref().and_then(|c| c.scope_on(id));
        let public_read = !info.private && need == Scope::Read;
        match (scope, caller.is_some()) {
            (Some(s), _) if s >= need => Ok((info, caller)),
            _ if public_read => Ok((info, caller)),
            (Some(_), _) => Err(error(
                StatusCode::FORBIDDEN,
                None,
                format!("You do not have write access to bucket {id}"),
            )),
            (None, false) if info.private => Err(error(
                StatusCode::UNAUTHORIZED,
                None,
                "This bucket is private; pass a token",
            )),
            (None, _) => Err(no_bucket(id)),
        }
    }

    /// The open bucket, if the caller may `need` it (see [`Server::access`]).
    pub(super) fn open_bucket(
        &self,
        headers: &HeaderMap,
        id: &str,
        need: Scope,
    ) -> Result<Arc<super::buckets::Bucket>, Response> {
        self.access(headers, id, need)?;
        self.buckets.bucket(id).map_err(internal)
    }

    fn bucket_url(&self, id: &str) -> String {
        format!("{}/buckets/{id}", self.public_url)
    }

    async fn info_json(&self, info: &BucketInfo) -> Result<Value, Response> {
        let b = self.buckets.bucket(&info.id).map_err(internal)?;
        let (files, size) = b.catalog.totals().await.map_err(internal)?;
        let revision = b.catalog.revision().await.map_err(internal)?;
        let mut v = json!({
            "id": info.id,
            "private": info.private,
            "createdAt": iso(info.created_ms),
            "updatedAt": iso(info.updated_ms),
            "size": size,
            "totalFiles": files,
        });
        if !self.hub_only {
            v["xetmount"] = json!({ "revision": revision });
        }
        Ok(v)
    }
}

type S = State<Arc<Server>>;

#[derive(Deserialize, Default)]
pub struct CreateBody {
    visibility: Option<String>,
    private: Option<bool>,
}

pub async fn create(
    State(s): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match s.caller(&headers) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                None,
                "Creating a bucket needs a token",
            )
        }
        Err(r) => return r,
    };
    let ns = if ns == "me" { caller.user.clone() } else { ns };
    if !valid_name(&ns) || !valid_name(&name) {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            format!("{ns}/{name} is not a valid bucket id"),
        );
    }
    let id = format!("{ns}/{name}");
    if caller.scope_on(&id) != Some(Scope::Write) {
        return error(
            StatusCode::FORBIDDEN,
            None,
            format!("You cannot create buckets in {ns}"),
        );
    }
    let body: CreateBody = serde_json::from_slice(&body).unwrap_or_default();
    let private = body.private.unwrap_or(false) || body.visibility.as_deref() == Some("private");
    match s.buckets.create(&id, private) {
        Ok(true) => {
            axum::Json(json!({"url": s.bucket_url(&id), "name": name, "id": id})).into_response()
        }
        Ok(false) => (
            StatusCode::CONFLICT,
            axum::Json(
                json!({"error": "You already created this bucket", "url": s.bucket_url(&id)}),
            ),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

pub async fn info(
    State(s): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let id = format!("{ns}/{name}");
    match s.access(&headers, &id, Scope::Read) {
        Ok((info, _)) => match s.info_json(&info).await {
            Ok(v) => axum::Json(v).into_response(),
            Err(r) => r,
        },
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    search: Option<String>,
}

pub async fn list(
    State(s): S,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let caller = match s.caller(&headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ns = match (ns.as_str(), &caller) {
        ("me", Some(c)) => c.user.clone(),
        ("me", None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                None,
                "Listing your buckets needs a token",
            )
        }
        _ => ns,
    };
    let all = match s.buckets.list(&ns, q.search.as_deref().unwrap_or("")) {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let mut out = Vec::new();
    for b in all {
        let visible = !b.private || caller.as_ref().and_then(|c| c.scope_on(&b.id)).is_some();
        if visible {
            match s.info_json(&b).await {
                Ok(v) => out.push(v),
                Err(r) => return r,
            }
        }
    }
    axum::Json(out).into_response()
}

pub async fn delete(
    State(s): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let id = format!("{ns}/{name}");
    if let Err(r) = s.access(&headers, &id, Scope::Write) {
        return r;
    }
    match s.buckets.delete(&id) {
        Ok(true) => axum::Json(json!({})).into_response(),
        Ok(false) => no_bucket(&id),
        Err(e) => internal(e),
    }
}

pub async fn settings(
    State(s): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = format!("{ns}/{name}");
    if let Err(r) = s.access(&headers, &id, Scope::Write) {
        return r;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(p) = v.get("private").and_then(Value::as_bool) {
        if let Err(e) = s.buckets.set_private(&id, p) {
            return internal(e);
        }
    }
    axum::Json(json!({})).into_response()
}

pub async fn move_repo(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(from), Some(to)) = (
        v.get("fromRepo").and_then(Value::as_str),
        v.get("toRepo").and_then(Value::as_str),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            "fromRepo and toRepo are required",
        );
    };
    if v.get("type").and_then(Value::as_str) != Some("bucket") {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            "only buckets can be moved here",
        );
    }
    let valid = |id: &str| {
        id.split_once('/')
            .is_some_and(|(a, b)| valid_name(a) && valid_name(b))
    };
    if !valid(to) {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            format!("{to} is not a valid bucket id"),
        );
    }
    if let Err(r) = s.access(&headers, from, Scope::Write) {
        return r;
    }
    match s.caller(&headers) {
        Ok(Some(c)) if c.scope_on(to) == Some(Scope::Write) => {}
        Ok(_) => {
            return error(
                StatusCode::FORBIDDEN,
                None,
                format!("You cannot write {to}"),
            )
        }
        Err(r) => return r,
    }
    match s.buckets.rename(from, to) {
        Ok(true) => axum::Json(json!({})).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            Some("RepoNotFound"),
            format!("{from} does not exist"),
        ),
        Err(e) => error(StatusCode::CONFLICT, None, e.to_string()),
    }
}

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
    cursor: Option<usize>,
}

pub async fn tree_root(
    state: S,
    Path((ns, name)): Path<(String, String)>,
    q: Query<TreeQuery>,
    headers: HeaderMap,
) -> Response {
    tree(state, Path((ns, name, String::new())), q, headers).await
}

pub async fn tree(
    State(s): S,
    Path((ns, name, prefix)): Path<(String, String, String)>,
    Query(q): Query<TreeQuery>,
    headers: HeaderMap,
) -> Response {
    let id = format!("{ns}/{name}");
    let b = match s.open_bucket(&headers, &id, Scope::Read) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let prefix = prefix.trim_matches('/').to_string();
    // Absent means recursive, as on the Hub.
    let recursive = q.recursive.as_deref() != Some("false");
    let items: Vec<Value> = if recursive {
        match b.catalog.files_under(&prefix).await {
            Ok(files) => files.iter().map(file_json).collect(),
            Err(e) => return internal(e),
        }
    } else {
        let at = match b.catalog.head(&prefix).await {
            Ok(e) => e,
            Err(e) => return internal(e),
        };
        match at {
            Some(e) if e.kind == EntryKind::File => vec![file_json(&e)],
            Some(e) if e.kind == EntryKind::Dir => {
                let children = match b.catalog.list_dir(&prefix).await {
                    Ok(c) => c,
                    Err(e) => return internal(e),
                };
                let mut out = Vec::new();
                for c in children {
                    match c.kind {
                        EntryKind::File => out.push(file_json(&c)),
                        EntryKind::Dir => match b.catalog.has_file_under(&c.path).await {
                            Ok(true) => out.push(json!({
                                "type": "directory",
                                "path": c.path,
                                "uploadedAt": iso(c.meta.ctime_ns / 1_000_000),
                            })),
                            Ok(false) => {}
                            Err(e) => return internal(e),
                        },
                        _ => {}
                    }
                }
                out
            }
            _ => Vec::new(),
        }
    };
    let limit = q.limit.unwrap_or(PAGE).clamp(1, 10_000);
    let from = q.cursor.unwrap_or(0).min(items.len());
    let to = (from + limit).min(items.len());
    let page: Vec<Value> = items[from..to].to_vec();
    let mut r = axum::Json(page).into_response();
    if to < items.len() {
        let enc = crate::remote::wire::percent_encode(&prefix, false);
        let path = if prefix.is_empty() {
            String::new()
        } else {
            format!("/{enc}")
        };
        let next = format!(
            "<{}/api/buckets/{id}/tree{path}?recursive={recursive}&limit={limit}&cursor={to}>; rel=\"next\"",
            s.public_url
        );
        if let Ok(v) = HeaderValue::from_str(&next) {
            r.headers_mut().insert(header::LINK, v);
        }
    }
    r
}

pub async fn paths_info(
    State(s): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = format!("{ns}/{name}");
    let b = match s.open_bucket(&headers, &id, Scope::Read) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, None, format!("bad JSON body: {e}")),
    };
    let Some(paths) = v.get("paths").and_then(Value::as_array) else {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            "the body must be {\"paths\": [...]}",
        );
    };
    let mut out = Vec::new();
    for p in paths.iter().filter_map(Value::as_str) {
        match b.catalog.head(p.trim_matches('/')).await {
            Ok(Some(e)) if e.kind == EntryKind::File => out.push(file_json(&e)),
            Ok(_) => {}
            Err(e) => return internal(e),
        }
    }
    axum::Json(out).into_response()
}

/// A path a bucket may hold: relative, no empty, `.` or `..` segments.
fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && seg.len() <= 255)
        && !p.contains('\0')
}

pub async fn batch(
    State(s): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let id = format!("{ns}/{name}");
    let b = match s.open_bucket(&headers, &id, Scope::Write) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => return error(StatusCode::BAD_REQUEST, None, "the batch is not UTF-8"),
    };
    let _one_batch_at_a_time = b.batch_lock.lock().await;
    // Validate every op against the catalog as the batch's earlier ops leave it; apply the
    // valid ones in one transaction.
    let mut overlay: std::collections::HashMap<String, Option<EntryKind>> = Default::default();
    let mut ops = Vec::new();
    let mut failed = Vec::new();
    let now_ns = now_ms() * 1_000_000;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    None,
                    format!("bad batch line {line:?}: {e}"),
                )
            }
        };
        let path = v
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        let mut fail = |msg: String| failed.push(json!({"path": path.clone(), "error": msg}));
        if !valid_path(&path) {
            fail("invalid path".into());
            continue;
        }
        let kind_at = |p: &str, overlay: &std::collections::HashMap<String, Option<EntryKind>>| {
            let p = p.to_string();
            let o = overlay.get(&p).copied();
            let cat = &b.catalog;
            async move {
                match o {
                    Some(k) => Ok(k),
                    None => cat.head(&p).await.map(|e| e.map(|e| e.kind)),
                }
            }
        };
        match v.get("type").and_then(Value::as_str) {
            Some("addFile") | Some("copyFile") => {
                let Some(hash) = v.get("xetHash").and_then(Value::as_str) else {
                    fail("xetHash is required".into());
                    continue;
                };
                let content = if hash == EMPTY_HASH {
                    None
                } else {
                    match s.file_size(hash).await {
                        Ok(Some(size)) => Some(FileId {
                            hash: hash.to_string(),
                            size,
                        }),
                        Ok(None) => {
                            fail(format!("xet hash {hash} not found"));
                            continue;
                        }
                        Err(e) => return internal(e),
                    }
                };
                // Every ancestor must be (or become) a directory, the path itself no directory.
                let mut blocked = None;
                let mut anc = crate::remote::local::parent_of(&path).to_string();
                while !anc.is_empty() {
                    match kind_at(&anc, &overlay).await {
                        Ok(None) | Ok(Some(EntryKind::Dir)) => {}
                        Ok(Some(_)) => blocked = Some(format!("{anc} is a file")),
                        Err(e) => return internal(e),
                    }
                    anc = crate::remote::local::parent_of(&anc).to_string();
                }
                let existing = match b.catalog.head(&path).await {
                    Ok(e) => e,
                    Err(e) => return internal(e),
                };
                // What the path is once the batch's earlier ops are applied.
                let kind = match overlay.get(&path) {
                    Some(k) => *k,
                    None => existing.as_ref().map(|e| e.kind),
                };
                if kind == Some(EntryKind::Dir) {
                    blocked = Some(format!("{path} is a directory"));
                }
                if let Some(msg) = blocked {
                    fail(msg);
                    continue;
                }
                let mtime_ns = v
                    .get("mtime")
                    .and_then(Value::as_i64)
                    .map_or(now_ns, |ms| ms.saturating_mul(1_000_000));
                // A file replaced through the bucket API keeps the owner and mode it had.
                let (mode, uid, gid) = match existing {
                    Some(e) if e.kind == EntryKind::File => (e.meta.mode, e.meta.uid, e.meta.gid),
                    _ => (0o644, 0, 0),
                };
                let mut a = path.clone();
                while !a.is_empty() {
                    a = crate::remote::local::parent_of(&a).to_string();
                    overlay.entry(a.clone()).or_insert(Some(EntryKind::Dir));
                }
                overlay.insert(path.clone(), Some(EntryKind::File));
                ops.push(CatalogOp::Put(Entry {
                    path: path.clone(),
                    kind: EntryKind::File,
                    content,
                    target: None,
                    meta: Meta {
                        mode,
                        uid,
                        gid,
                        atime_ns: mtime_ns,
                        mtime_ns,
                        ctime_ns: now_ns,
                    },
                    link: None,
                }));
            }
            Some("deleteFile") => match kind_at(&path, &overlay).await {
                Ok(Some(EntryKind::File)) => {
                    overlay.insert(path.clone(), None);
                    ops.push(CatalogOp::Delete { path: path.clone() });
                }
                Ok(_) => fail("file not found".into()),
                Err(e) => return internal(e),
            },
            other => fail(format!("unknown operation type {other:?}")),
        }
    }
    let processed = ops.len();
    if !ops.is_empty() {
        if let Err(e) = b.commit(ops).await {
            return internal(e);
        }
        if let Err(e) = s.buckets.touch(&id) {
            return internal(e);
        }
    }
    let status = if processed == 0 && !failed.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (
        status,
        axum::Json(json!({"success": failed.is_empty(), "processed": processed, "failed": failed})),
    )
        .into_response()
}

async fn token(
    s: Arc<Server>,
    ns: String,
    name: String,
    headers: HeaderMap,
    scope: Scope,
) -> Response {
    let id = format!("{ns}/{name}");
    if let Err(r) = s.access(&headers, &id, scope) {
        return r;
    }
    let (tok, exp) = s.auth.mint_cas_token(&id, scope);
    let mut r =
        axum::Json(json!({"casUrl": s.public_url, "accessToken": tok, "exp": exp})).into_response();
    let h = r.headers_mut();
    for (k, v) in [
        ("x-xet-cas-url", s.public_url.clone()),
        ("x-xet-access-token", tok),
        ("x-xet-token-expiration", exp.to_string()),
    ] {
        h.insert(k, HeaderValue::from_str(&v).expect("ascii"));
    }
    r
}

pub async fn read_token(
    State(s): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    token(s, ns, name, headers, Scope::Read).await
}

pub async fn write_token(
    State(s): S,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    token(s, ns, name, headers, Scope::Write).await
}

/// `HEAD`/`GET /buckets/{ns}/{name}/resolve/{path}`: the file's identity in headers, and for
/// `GET` its bytes (`Range` honoured).
pub async fn resolve(
    State(s): S,
    method: axum::http::Method,
    Path((ns, name, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let id = format!("{ns}/{name}");
    let b = match s.open_bucket(&headers, &id, Scope::Read) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let entry = match b.catalog.head(path.trim_matches('/')).await {
        Ok(Some(e)) if e.kind == EntryKind::File => e,
        Ok(_) => {
            return error(
                StatusCode::NOT_FOUND,
                Some("EntryNotFound"),
                format!("{path} does not exist in {id}"),
            )
        }
        Err(e) => return internal(e),
    };
    let size = entry.size();
    let hash = entry
        .content
        .as_ref()
        .map_or(EMPTY_HASH.to_string(), |c| c.hash.clone());
    let range = match super::cas::parse_range(&headers, size) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut hm = HeaderMap::new();
    let link = format!(
        "<{}/api/buckets/{id}/xet-read-token>; rel=\"xet-auth\"",
        s.public_url
    );
    for (k, v) in [
        ("x-xet-hash", hash.clone()),
        ("x-linked-size", size.to_string()),
        ("etag", format!("\"{hash}\"")),
        ("link", link),
        ("accept-ranges", "bytes".to_string()),
    ] {
        hm.insert(k, HeaderValue::from_str(&v).expect("ascii"));
    }
    let (status, span) = match range {
        Some(r) => {
            hm.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1))
                    .expect("ascii"),
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
        None => (StatusCode::OK, 0..size),
    };
    hm.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(span.end - span.start),
    );
    if method == axum::http::Method::HEAD || span.is_empty() {
        return (status, hm).into_response();
    }
    let Some(content) = entry.content else {
        return (status, hm).into_response();
    };
    // Streamed in 4 MiB pieces so a large file never sits in memory whole.
    let cas = s.cas.clone();
    let stream = futures::stream::unfold(span.start, move |at| {
        let cas = cas.clone();
        let content = content.clone();
        let end = span.end;
        async move {
            if at >= end {
                return None;
            }
            let to = (at + (4 << 20)).min(end);
            let piece = crate::remote::Cas::read_range(cas.as_ref(), &content, at..to)
                .await
                .map_err(std::io::Error::other);
            Some((piece, to))
        }
    });
    (status, hm, Body::from_stream(stream)).into_response()
}
