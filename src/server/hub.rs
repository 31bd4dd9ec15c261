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
use super::buckets::{now_ms, BucketInfo};
use super::Server;
use crate::remote::names::valid_bucket_name;
use crate::remote::{Catalog, CatalogOp, Entry, EntryKind, FileId, Meta};

pub use super::scope::EMPTY_HASH;
/// Tree entries per page unless the caller asks for another `limit` (at most 10,000).
const PAGE: usize = 1000;
/// Paths one `paths-info` request may ask about (the client sends 1,000 at most).
const MAX_PATHS_INFO: usize = 10_000;
/// Latest mtime a batch may set, in ms: the end of year 9999, where dates stop printing.
const MAX_MTIME_MS: i64 = 253_402_300_799_999;

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

/// A JSON request body; an empty body is the type's default. 400 for anything else.
fn json_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, None, format!("bad JSON body: {e}")))
}

/// A listing's next-page cursor: the last key returned, so the next page starts after it
/// whatever was added or removed meanwhile.
fn encode_cursor(last: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
}

fn decode_cursor(c: Option<&str>) -> Result<String, Response> {
    use base64::Engine;
    let Some(c) = c else {
        return Ok(String::new());
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                None,
                "the cursor is not one this server gave out",
            )
        })
}

/// Adds a `Link: <url>; rel="next"` header.
fn with_next(mut r: Response, url: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
        r.headers_mut().insert(header::LINK, v);
    }
    r
}

fn bad_path(what: &str, p: &str, why: crate::remote::names::BadPath) -> Response {
    let shown: String = p.chars().take(200).collect();
    error(
        StatusCode::BAD_REQUEST,
        None,
        format!("{what} {shown:?} is not a valid bucket path: {why}"),
    )
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

    /// The bucket, if the caller may `need` it. Refusals say what is wrong without telling
    /// a caller about a bucket it may not see: a missing bucket and a private one the caller
    /// holds no right on get the same answer (404 `RepoNotFound`; 401 with that code to an
    /// anonymous caller, who may have forgotten a token); 401 for an anonymous caller who
    /// needs a token to write; 403 for a caller who may read the bucket but not write it.
    pub(super) fn access(
        &self,
        headers: &HeaderMap,
        id: &str,
        need: Scope,
    ) -> Result<(BucketInfo, Option<Caller>), Response> {
        let caller = self.caller(headers)?;
        let hidden = || match caller {
            Some(_) => no_bucket(id),
            None => error(
                StatusCode::UNAUTHORIZED,
                Some("RepoNotFound"),
                format!("Bucket {id} does not exist, or it is private and needs a token"),
            ),
        };
        let Some(info) = self.buckets.info(id).map_err(internal)? else {
            return Err(hidden());
        };
        let scope = caller.as_ref().and_then(|c| c.scope_on(id));
        let can_read = scope.is_some() || !info.private;
        if scope >= Some(need) || (need == Scope::Read && can_read) {
            return Ok((info, caller));
        }
        Err(match (caller.is_some(), can_read) {
            (_, false) => hidden(),
            (false, true) => error(
                StatusCode::UNAUTHORIZED,
                None,
                format!("Writing to bucket {id} needs a token"),
            ),
            (true, true) => error(
                StatusCode::FORBIDDEN,
                None,
                format!("Your token may read bucket {id} but not write it"),
            ),
        })
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
    if !valid_bucket_name(&ns) || !valid_bucket_name(&name) {
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
    let body: CreateBody = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
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
    limit: Option<usize>,
    cursor: Option<String>,
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
    let mut after = match decode_cursor(q.cursor.as_deref()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let search = q.search.unwrap_or_default();
    let limit = q.limit.unwrap_or(PAGE).clamp(1, 10_000);
    let mut out = Vec::new();
    // Pages hold `limit` visible buckets; hidden ones are skipped over.
    let more = 'pages: loop {
        let page = match s.buckets.list_page(&ns, &search, &after, limit) {
            Ok(v) => v,
            Err(e) => return internal(e),
        };
        let (n, full) = (page.len(), page.len() == limit);
        for (i, b) in page.into_iter().enumerate() {
            after = b.id.clone();
            let visible = !b.private || caller.as_ref().and_then(|c| c.scope_on(&b.id)).is_some();
            if visible {
                match s.info_json(&b).await {
                    Ok(v) => out.push(v),
                    Err(r) => return r,
                }
                if out.len() == limit {
                    break 'pages full || i + 1 < n;
                }
            }
        }
        if !full {
            break false;
        }
    };
    let r = axum::Json(out).into_response();
    if !more {
        return r;
    }
    let search_q = if search.is_empty() {
        String::new()
    } else {
        format!(
            "&search={}",
            crate::remote::wire::percent_encode(&search, false)
        )
    };
    with_next(
        r,
        &format!(
            "{}/api/buckets/{ns}?limit={limit}&cursor={}{search_q}",
            s.public_url,
            encode_cursor(&after)
        ),
    )
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
    let v: Value = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(p) = v.get("private").and_then(Value::as_bool) {
        if let Err(e) = s.buckets.set_private(&id, p) {
            return internal(e);
        }
    }
    axum::Json(json!({})).into_response()
}

pub async fn move_repo(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    let v: Value = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
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
            .is_some_and(|(a, b)| valid_bucket_name(a) && valid_bucket_name(b))
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
    cursor: Option<String>,
}

pub async fn tree_root(
    state: S,
    Path((ns, name)): Path<(String, String)>,
    q: Query<TreeQuery>,
    headers: HeaderMap,
) -> Response {
    tree(state, Path((ns, name, String::new())), q, headers).await
}

/// One page of a bucket's tree: every file below the prefix (`recursive`, the default, as on
/// the Hub), or the files and non-empty folders directly in it. Pages are keyed by the last
/// path returned, so a listing sees every entry that exists for its whole duration exactly
/// once however the bucket changes between pages; each page is one indexed query.
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
    // A folder prefix may end with one '/' (the client's documented form, "models/").
    let prefix = prefix.strip_suffix('/').unwrap_or(&prefix).to_string();
    if !prefix.is_empty() {
        if let Err(why) = crate::remote::names::check_path(&prefix) {
            return bad_path("the prefix", &prefix, why);
        }
    }
    let recursive = match q.recursive.as_deref() {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                None,
                format!("recursive must be true or false, not {other:?}"),
            )
        }
    };
    let after = match decode_cursor(q.cursor.as_deref()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let limit = q.limit.unwrap_or(PAGE).clamp(1, 10_000);
    let mut items = Vec::new();
    // The last path this page looked at, when there may be more after it.
    let mut next_after = None;
    if recursive {
        // One more than the page holds says whether another page follows (a full last page
        // then needs no empty page after it).
        let mut files = match b.catalog.files_page(&prefix, &after, limit + 1).await {
            Ok(f) => f,
            Err(e) => return internal(e),
        };
        if files.len() > limit {
            files.truncate(limit);
            next_after = files.last().map(|e| e.path.clone());
        }
        items.extend(files.iter().map(file_json));
    } else {
        let at = match b.catalog.head(&prefix).await {
            Ok(e) => e,
            Err(e) => return internal(e),
        };
        match at {
            // A file named as the prefix is a listing of one entry: the first page holds it.
            Some(e) if e.kind == EntryKind::File && after.is_empty() => items.push(file_json(&e)),
            Some(e) if e.kind == EntryKind::Dir => {
                let mut children = match b.catalog.children_page(&prefix, &after, limit + 1).await {
                    Ok(c) => c,
                    Err(e) => return internal(e),
                };
                if children.len() > limit {
                    children.truncate(limit);
                    next_after = children.last().map(|e| e.path.clone());
                }
                for c in children {
                    match c.kind {
                        EntryKind::File => items.push(file_json(&c)),
                        EntryKind::Dir => match b.catalog.has_file_under(&c.path).await {
                            Ok(true) => items.push(json!({
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
            }
            _ => {}
        }
    }
    let r = axum::Json(items).into_response();
    let Some(last) = next_after else {
        return r;
    };
    let path = if prefix.is_empty() {
        String::new()
    } else {
        format!("/{}", crate::remote::wire::percent_encode(&prefix, false))
    };
    with_next(
        r,
        &format!(
            "{}/api/buckets/{id}/tree{path}?recursive={recursive}&limit={limit}&cursor={}",
            s.public_url,
            encode_cursor(&last)
        ),
    )
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
    if paths.len() > MAX_PATHS_INFO {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            format!("at most {MAX_PATHS_INFO} paths per request"),
        );
    }
    let mut out = Vec::new();
    // A path no bucket can hold names no file: it is left out of the answer, never rewritten
    // into one that does.
    let valid = paths
        .iter()
        .filter_map(Value::as_str)
        .filter(|p| crate::remote::names::check_path(p).is_ok());
    for p in valid {
        match b.catalog.head(p).await {
            Ok(Some(e)) if e.kind == EntryKind::File => out.push(file_json(&e)),
            Ok(_) => {}
            Err(e) => return internal(e),
        }
    }
    axum::Json(out).into_response()
}

/// What the batch's earlier lines made of each path they touched (`None`: deleted).
type Overlay = std::collections::HashMap<String, Option<EntryKind>>;

/// A batch line the server refuses: its path and why, as the client reports it.
struct Refused(String);

/// What an `addFile`/`copyFile` line asks for, once checked.
struct AddLine {
    content: Option<FileId>,
    mtime_ns: i64,
}

impl Server {
    /// The kind at `p` once the batch's earlier lines are applied.
    async fn kind_at(
        b: &super::buckets::Bucket,
        overlay: &Overlay,
        p: &str,
    ) -> Result<Option<EntryKind>, Response> {
        match overlay.get(p) {
            Some(k) => Ok(*k),
            None => Ok(b.catalog.head(p).await.map_err(internal)?.map(|e| e.kind)),
        }
    }

    /// Check an `addFile` or `copyFile` line into bucket `id`: its hash, its mtime, and that
    /// the caller may name that body (it may read it through this bucket, the copy's source,
    /// or, for `addFile`, any bucket).
    async fn check_add(
        &self,
        headers: &HeaderMap,
        id: &str,
        v: &Value,
        copy: bool,
        now_ns: i64,
    ) -> Result<Result<AddLine, Refused>, Response> {
        let refuse = |m: String| Ok(Err(Refused(m)));
        let Some(hash) = v.get("xetHash").and_then(Value::as_str) else {
            return refuse("xetHash is required".into());
        };
        if !super::scope::is_hash(hash) {
            return refuse("xetHash must be 64 lowercase hex digits".into());
        }
        let mtime_ns = match v.get("mtime") {
            None => now_ns,
            Some(m) => match m.as_i64() {
                Some(ms) if (-MAX_MTIME_MS..=MAX_MTIME_MS).contains(&ms) => ms * 1_000_000,
                _ => return refuse(
                    "mtime must be a whole number of milliseconds since 1970, before year 10000"
                        .into(),
                ),
            },
        };
        if copy {
            match v.get("sourceRepoType").and_then(Value::as_str) {
                None | Some("bucket") => {}
                Some(t) => return refuse(format!("this server hosts buckets only, not a {t}")),
            }
            let Some(src) = v.get("sourceRepoId").and_then(Value::as_str) else {
                return refuse("copyFile needs sourceRepoId".into());
            };
            if self.access(headers, src, Scope::Read).is_err() {
                return refuse(format!(
                    "source bucket {src} does not exist or you may not read it"
                ));
            }
            // A file there now, not a body once seen there: a copy names what the source holds.
            let catalog = &self.buckets.bucket(src).map_err(internal)?.catalog;
            let holds = if hash == EMPTY_HASH {
                catalog.has_empty_file().await
            } else {
                catalog.references(hash).await
            };
            if !holds.map_err(internal)? {
                return refuse(format!("bucket {src} holds no file with xetHash {hash}"));
            }
        } else if !self.may_add_body(headers, id, hash).await? {
            return refuse(format!(
                "xetHash {hash} was not uploaded to this bucket and is in no bucket you may read"
            ));
        }
        let content = if hash == EMPTY_HASH {
            None
        } else {
            match self.file_size(hash).await.map_err(internal)? {
                Some(size) => Some(FileId {
                    hash: hash.to_string(),
                    size,
                }),
                None => return refuse(format!("xet hash {hash} not found")),
            }
        };
        Ok(Ok(AddLine { content, mtime_ns }))
    }
}

/// `POST /api/buckets/{id}/batch`: NDJSON lines `addFile`, `copyFile`, `deleteFile`. Each line
/// is checked against the bucket as the earlier lines leave it; the lines that pass are
/// applied in one catalog transaction, the others reported in `failed` (422 if none passed).
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
    let mut lines = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => lines.push(v),
            _ => {
                let shown: String = line.chars().take(200).collect();
                return error(
                    StatusCode::BAD_REQUEST,
                    None,
                    format!("batch line {shown:?} is not a JSON object"),
                );
            }
        }
    }
    let _one_batch_at_a_time = b.batch_lock.lock().await;
    let mut overlay = Overlay::new();
    let mut ops = Vec::new();
    let mut added = Vec::new();
    let mut failed = Vec::new();
    let now_ns = now_ms() * 1_000_000;
    for v in &lines {
        let path = match v.get("path") {
            Some(Value::String(p)) => p.clone(),
            _ => String::new(),
        };
        let refused = match line_op(&s, &headers, &id, &b, &mut overlay, v, &path, now_ns).await {
            Ok(Ok(op)) => {
                if let CatalogOp::Put(Entry {
                    content: Some(c), ..
                }) = &op
                {
                    added.push(c.hash.clone());
                }
                ops.push(op);
                continue;
            }
            Ok(Err(Refused(why))) => why,
            Err(r) => return r,
        };
        failed.push(json!({"path": path, "error": refused}));
    }
    let processed = ops.len();
    if !ops.is_empty() {
        if let Err(e) = b.commit(ops).await {
            return internal(e);
        }
        if let Err(e) = s
            .buckets
            .note_hashes(&id, added.iter().map(String::as_str), false)
            .and_then(|()| s.buckets.touch(&id))
        {
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

/// The catalog op of one batch line, or why it is refused; records what it does in
/// `overlay` for the lines after it.
#[allow(clippy::too_many_arguments)]
async fn line_op(
    s: &Server,
    headers: &HeaderMap,
    id: &str,
    b: &super::buckets::Bucket,
    overlay: &mut Overlay,
    v: &Value,
    path: &str,
    now_ns: i64,
) -> Result<Result<CatalogOp, Refused>, Response> {
    let refuse = |m: String| Ok(Err(Refused(m)));
    if let Err(why) = crate::remote::names::check_path(path) {
        return refuse(format!("invalid path: {why}"));
    }
    let add = match v.get("type").and_then(Value::as_str) {
        Some("addFile") => false,
        Some("copyFile") => true,
        Some("deleteFile") => {
            return match Server::kind_at(b, overlay, path).await? {
                Some(EntryKind::File) => {
                    overlay.insert(path.to_string(), None);
                    Ok(Ok(CatalogOp::Delete {
                        path: path.to_string(),
                    }))
                }
                _ => refuse("file not found".into()),
            };
        }
        other => return refuse(format!("unknown operation type {other:?}")),
    };
    let line = match s.check_add(headers, id, v, add, now_ns).await? {
        Ok(l) => l,
        Err(r) => return Ok(Err(r)),
    };
    // Every ancestor must be (or become) a directory, the path itself no directory.
    let mut anc = crate::remote::local::parent_of(path);
    while !anc.is_empty() {
        if let Some(k) = Server::kind_at(b, overlay, anc).await? {
            if k != EntryKind::Dir {
                return refuse(format!("{anc} is a file"));
            }
        }
        anc = crate::remote::local::parent_of(anc);
    }
    let existing = b.catalog.head(path).await.map_err(internal)?;
    let kind = match overlay.get(path) {
        Some(k) => *k,
        None => existing.as_ref().map(|e| e.kind),
    };
    if kind == Some(EntryKind::Dir) {
        return refuse(format!("{path} is a directory"));
    }
    // A file replaced through the bucket API keeps the owner and mode it had.
    let (mode, uid, gid) = match existing {
        Some(e) if e.kind == EntryKind::File => (e.meta.mode, e.meta.uid, e.meta.gid),
        _ => (0o644, 0, 0),
    };
    let mut a = path;
    while !a.is_empty() {
        a = crate::remote::local::parent_of(a);
        overlay.entry(a.to_string()).or_insert(Some(EntryKind::Dir));
    }
    overlay.insert(path.to_string(), Some(EntryKind::File));
    Ok(Ok(CatalogOp::Put(Entry {
        path: path.to_string(),
        kind: EntryKind::File,
        content: line.content,
        target: None,
        meta: Meta {
            mode,
            uid,
            gid,
            atime_ns: line.mtime_ns,
            mtime_ns: line.mtime_ns,
            ctime_ns: now_ns,
        },
        link: None,
    })))
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
    if let Err(why) = crate::remote::names::check_path(&path) {
        return bad_path("the path", &path, why);
    }
    let entry = match b.catalog.head(&path).await {
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
