//! The Hugging Face bucket API subset (`/api/buckets/...`, `/buckets/.../resolve/...`) as
//! `huggingface_hub` 2.4.0 and `hf_xet` 1.8.0 use it (shared/protocol/HF_BUCKET_API.md), over
//! the server's bucket catalogs.
//!
//! A plain bucket has files only; folders exist while a file lies under them. Entries only
//! xetmount's own protocol can make (symlinks, special files, empty directories) are left
//! out of these listings.

mod batch;
pub(crate) mod resolve;
mod tree;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

pub use batch::batch;
pub use resolve::resolve;
pub use tree::{paths_info, tree, tree_root};

use super::auth::{Caller, Scope};
use super::buckets::BucketInfo;
use super::extract::{BucketAccess, Need, Read, Write};
use super::{Answer, Server};
use crate::remote::names::valid_bucket_name;

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

pub(super) fn no_bucket(id: &str) -> Response {
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
pub(crate) fn json_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, None, format!("bad JSON body: {e}")))
}

/// A field of a JSON body: absent, of the type it should have, or something else. A body
/// is read as leniently as the Hub reads it: a field of another type is as good as absent
/// unless the route refuses it with its own reason, and one odd field never makes the whole
/// body unreadable.
#[derive(Default)]
enum Field<T> {
    #[default]
    Absent,
    Given(T),
    Other,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(serde_json::from_value(v).map_or(Field::Other, Field::Given))
    }
}

impl<T> Field<T> {
    fn given(&self) -> Option<&T> {
        match self {
            Field::Given(t) => Some(t),
            _ => None,
        }
    }
}

/// The fields of a JSON object as `T` names them; any other JSON value has none. `T`'s
/// fields are [`Field`]s (or defaulted), so this never fails.
fn object_fields<T: DeserializeOwned + Default>(v: Value) -> T {
    match v {
        Value::Object(m) => serde_json::from_value(Value::Object(m)).unwrap_or_default(),
        _ => T::default(),
    }
}

/// A listing's next-page cursor: the last key returned, so the next page starts after it
/// whatever was added or removed meanwhile.
pub(crate) fn encode_cursor(last: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
}

pub(crate) fn decode_cursor(c: Option<&str>) -> Result<String, Response> {
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
pub(crate) fn with_next(mut r: Response, url: &str) -> Response {
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
    fn bucket_url(&self, id: &str) -> String {
        format!("{}/buckets/{id}", self.public_url)
    }

    async fn info_json(&self, info: &BucketInfo) -> Result<Value, Response> {
        let b = self.buckets.bucket(&info.id).await.map_err(internal)?;
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
) -> Answer {
    let Some(caller) = s.caller(&headers)? else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            None,
            "Creating a bucket needs a token",
        ));
    };
    let ns = if ns == "me" { caller.user.clone() } else { ns };
    if !valid_bucket_name(&ns) || !valid_bucket_name(&name) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            format!("{ns}/{name} is not a valid bucket id"),
        ));
    }
    let id = format!("{ns}/{name}");
    if caller.scope_on(&id) != Some(Scope::Write) {
        return Err(error(
            StatusCode::FORBIDDEN,
            None,
            format!("You cannot create buckets in {ns}"),
        ));
    }
    let body: CreateBody = json_body(&body)?;
    let private = body.private.unwrap_or(false) || body.visibility.as_deref() == Some("private");
    Ok(match s.buckets.create(&id, private).await {
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
    })
}

pub async fn info(State(s): S, b: BucketAccess<Read>) -> Answer {
    Ok(axum::Json(s.info_json(&b.info).await?).into_response())
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
) -> Answer {
    let caller = s.caller(&headers)?;
    let ns = match (ns.as_str(), &caller) {
        ("me", Some(c)) => c.user.clone(),
        ("me", None) => {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                None,
                "Listing your buckets needs a token",
            ))
        }
        _ => ns,
    };
    let mut after = decode_cursor(q.cursor.as_deref())?;
    let search = q.search.unwrap_or_default();
    let limit = q.limit.unwrap_or(PAGE).clamp(1, 10_000);
    let (out, more) = visible_buckets(&s, caller.as_ref(), &ns, &search, &mut after, limit).await?;
    let r = axum::Json(out).into_response();
    if !more {
        return Ok(r);
    }
    let search_q = if search.is_empty() {
        String::new()
    } else {
        format!(
            "&search={}",
            crate::remote::wire::percent_encode(&search, false)
        )
    };
    Ok(with_next(
        r,
        &format!(
            "{}/api/buckets/{ns}?limit={limit}&cursor={}{search_q}",
            s.public_url,
            encode_cursor(&after)
        ),
    ))
}

/// Up to `limit` buckets of `ns` after `after` that `caller` may see, and whether more may
/// follow; `after` is left at the last bucket looked at. Pages hold `limit` visible buckets;
/// hidden ones are skipped over.
async fn visible_buckets(
    s: &Server,
    caller: Option<&Caller>,
    ns: &str,
    search: &str,
    after: &mut String,
    limit: usize,
) -> Result<(Vec<Value>, bool), Response> {
    let mut out = Vec::new();
    let more = 'pages: loop {
        let page = s
            .buckets
            .list_page(ns, search, after, limit)
            .await
            .map_err(internal)?;
        let (n, full) = (page.len(), page.len() == limit);
        for (i, b) in page.into_iter().enumerate() {
            *after = b.id.clone();
            let visible = !b.private || caller.and_then(|c| c.scope_on(&b.id)).is_some();
            if visible {
                out.push(s.info_json(&b).await?);
                if out.len() == limit {
                    break 'pages full || i + 1 < n;
                }
            }
        }
        if !full {
            break false;
        }
    };
    Ok((out, more))
}

pub async fn delete(State(s): S, b: BucketAccess<Write>) -> Response {
    match s.buckets.delete(&b.id).await {
        Ok(true) => axum::Json(json!({})).into_response(),
        Ok(false) => no_bucket(&b.id),
        Err(e) => internal(e),
    }
}

/// `PUT .../settings`: what may change (unknown fields are ignored).
#[derive(Deserialize, Default)]
struct SettingsBody {
    #[serde(default)]
    private: Field<bool>,
}

pub async fn settings(State(s): S, b: BucketAccess<Write>, body: Bytes) -> Answer {
    let body: SettingsBody = object_fields(json_body(&body)?);
    if let Some(p) = body.private.given() {
        s.buckets.set_private(&b.id, *p).await.map_err(internal)?;
    }
    Ok(axum::Json(json!({})).into_response())
}

/// `POST /api/repos/move` (unknown fields are ignored).
#[derive(Deserialize, Default)]
struct MoveBody {
    #[serde(default, rename = "fromRepo")]
    from_repo: Field<String>,
    #[serde(default, rename = "toRepo")]
    to_repo: Field<String>,
    #[serde(default, rename = "type")]
    repo_type: Field<String>,
}

pub async fn move_repo(State(s): S, headers: HeaderMap, body: Bytes) -> Answer {
    let body: MoveBody = object_fields(json_body(&body)?);
    let (Some(from), Some(to)) = (body.from_repo.given(), body.to_repo.given()) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            "fromRepo and toRepo are required",
        ));
    };
    if body.repo_type.given().map(String::as_str) != Some("bucket") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            "only buckets can be moved here",
        ));
    }
    let valid = |id: &str| {
        id.split_once('/')
            .is_some_and(|(a, b)| valid_bucket_name(a) && valid_bucket_name(b))
    };
    if !valid(to) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            format!("{to} is not a valid bucket id"),
        ));
    }
    s.access(&headers, from, Scope::Write).await?;
    match s.caller(&headers)? {
        Some(c) if c.scope_on(to) == Some(Scope::Write) => {}
        _ => {
            return Err(error(
                StatusCode::FORBIDDEN,
                None,
                format!("You cannot write {to}"),
            ))
        }
    }
    Ok(match s.buckets.rename(from, to).await {
        Ok(true) => axum::Json(json!({})).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            Some("RepoNotFound"),
            format!("{from} does not exist"),
        ),
        Err(e) => error(StatusCode::CONFLICT, None, e.to_string()),
    })
}

/// A CAS token for the bucket, with the scope the caller asked for (and may hold).
fn token<N: Need>(s: &Server, b: BucketAccess<N>) -> Response {
    cas_token(s, &b.id, N::SCOPE)
}

/// A CAS token for bucket or repo `key` with `scope`, as JSON and as `X-Xet-*` headers.
pub(crate) fn cas_token(s: &Server, key: &str, scope: Scope) -> Response {
    let (tok, exp) = s.auth.mint_cas_token(key, scope);
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

pub async fn read_token(State(s): S, b: BucketAccess<Read>) -> Response {
    token(&s, b)
}

pub async fn write_token(State(s): S, b: BucketAccess<Write>) -> Response {
    token(&s, b)
}
