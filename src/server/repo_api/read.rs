//! The read side of a repo at a revision: `tree` (paged, recursive or not, with the last
//! commit of each entry on `expand`), `paths-info`, and `resolve` (a file's identity in
//! headers, and its bytes with `Range` honoured: regular files from the repo store, xet
//! files from the CAS).

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{entry_json, RepoAccess, S};
use crate::remote::FileId;
use crate::server::cas::parse_range;
use crate::server::extract::Read;
use crate::server::hub::{error, internal, iso};
use crate::server::repos::tree::Node;
use crate::server::repos::{Commit, RepoInfo};
use crate::server::{Answer, Server};

/// Tree entries per page (the Hub's), and with `expand` (each needs a walk of history).
const PAGE: usize = 1000;
const EXPAND_PAGE: usize = 50;
/// Commits `expand` walks back to find an entry's last change before it gives up and names
/// the oldest one it reached.
const EXPAND_DEPTH: usize = 1000;
/// Paths one `paths-info` request may ask about (the client sends 1,000 at most).
const MAX_PATHS_INFO: usize = 10_000;

fn no_entry(path: &str, c: &Commit, id: &str) -> Response {
    let mut r = error(
        StatusCode::NOT_FOUND,
        Some("EntryNotFound"),
        format!("{path} does not exist in {id} at {}", c.oid),
    );
    r.headers_mut()
        .insert("x-repo-commit", HeaderValue::from_str(&c.oid).expect("hex"));
    r
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | "True"))
}

#[derive(Deserialize, Default)]
pub struct TreeQuery {
    recursive: Option<String>,
    expand: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

impl Server {
    /// The last commit (from `head` back) that changed `path` to what it is at `head`.
    async fn last_change(
        &self,
        repo: &RepoInfo,
        head: &Commit,
        path: &str,
        node: &Node,
    ) -> Result<Commit, Response> {
        let mut last = head.clone();
        for _ in 0..EXPAND_DEPTH {
            let Some(parent) = &last.parent else { break };
            let Some(p) = self
                .repos
                .commit_of(&repo.key, parent)
                .await
                .map_err(internal)?
            else {
                break;
            };
            let there = self
                .repos
                .entry_at(&repo.key, &p, path)
                .await
                .map_err(internal)?;
            if there.as_ref() != Some(node) {
                break;
            }
            last = p;
        }
        Ok(last)
    }

    async fn with_last_commit(
        &self,
        repo: &RepoInfo,
        head: &Commit,
        path: &str,
        node: &Node,
    ) -> Result<Value, Response> {
        let mut v = entry_json(path, node);
        let c = self.last_change(repo, head, path, node).await?;
        v["lastCommit"] = json!({"id": c.oid, "title": c.title, "date": iso(c.date_ms)});
        Ok(v)
    }
}

/// `GET …/tree/{rev}[/{path}]?recursive=&expand=`: the folder's entries, paged with a
/// `Link` header; 404 `EntryNotFound` for a path that is not a folder.
pub async fn tree(State(s): S, r: RepoAccess<Read>, Query(q): Query<TreeQuery>) -> Answer {
    let c = s.commit_at(&r.info, r.rev()).await?;
    let path = r.param("path").trim_matches('/').to_string();
    let folder = match s
        .repos
        .entry_at(r.key(), &c, &path)
        .await
        .map_err(internal)?
    {
        Some(Node::Dir(oid)) => oid,
        _ => return Err(no_entry(&path, &c, &r.info.id)),
    };
    let expand = truthy(&q.expand);
    let recursive = truthy(&q.recursive);
    let page = if expand { EXPAND_PAGE } else { PAGE };
    let limit = q.limit.unwrap_or(page).clamp(1, page);
    let after = crate::server::hub::decode_cursor(q.cursor.as_deref())?;
    let (entries, more) = s
        .repos
        .list(r.key(), &folder, &path, recursive, &after, limit)
        .await
        .map_err(internal)?;
    let mut out = Vec::with_capacity(entries.len());
    for (p, n) in &entries {
        out.push(if expand {
            s.with_last_commit(&r.info, &c, p, n).await?
        } else {
            entry_json(p, n)
        });
    }
    let resp = axum::Json(out).into_response();
    if !more {
        return Ok(resp);
    }
    let last = entries.last().map(|(p, _)| p.as_str()).unwrap_or("");
    let enc = |x: &str| crate::remote::wire::percent_encode(x, true);
    let sub = if path.is_empty() {
        String::new()
    } else {
        format!("/{}", enc(&path))
    };
    let next = format!(
        "{}/api/{}/{}/tree/{}{sub}?recursive={recursive}&expand={expand}&limit={limit}&cursor={}",
        s.public_url,
        r.info.kind.plural(),
        r.info.id,
        // The commit, not the revision: later pages list the same tree.
        c.oid,
        crate::server::hub::encode_cursor(last)
    );
    Ok(crate::server::hub::with_next(resp, &next))
}

#[derive(Deserialize, Default)]
struct PathsInfoJson {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    expand: bool,
}

/// The `paths` and `expand` of a `paths-info` body: form-encoded as the client sends it,
/// or JSON.
fn paths_info_body(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<String>, bool), Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        let b: PathsInfoJson = crate::server::hub::json_body(body)?;
        return Ok((b.paths, b.expand));
    }
    let (mut paths, mut expand) = (Vec::new(), false);
    let text = std::str::from_utf8(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, None, "the form is not UTF-8"))?;
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = crate::remote::wire::form_decode(v)
            .ok_or_else(|| error(StatusCode::BAD_REQUEST, None, "bad form encoding"))?;
        match k {
            "paths" | "paths%5B%5D" | "paths[]" => paths.push(v),
            "expand" => expand = v == "true" || v == "1" || v == "True",
            _ => {}
        }
    }
    Ok((paths, expand))
}

/// `POST …/paths-info/{rev}`: the entries of the paths that exist (others are left out).
pub async fn paths_info(
    State(s): S,
    r: RepoAccess<Read>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let c = s.commit_at(&r.info, r.rev()).await?;
    let (paths, expand) = paths_info_body(&headers, &body)?;
    if paths.len() > MAX_PATHS_INFO {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            format!("at most {MAX_PATHS_INFO} paths per request"),
        ));
    }
    let mut out = Vec::new();
    for p in paths {
        let p = p.trim_matches('/').to_string();
        if p.is_empty() {
            continue;
        }
        if let Some(n) = s.repos.entry_at(r.key(), &c, &p).await.map_err(internal)? {
            out.push(if expand {
                s.with_last_commit(&r.info, &c, &p, &n).await?
            } else {
                entry_json(&p, &n)
            });
        }
    }
    Ok(axum::Json(out).into_response())
}

/// `HEAD`/`GET /[datasets/|spaces/]{ns}/{name}/resolve/{rev}/{path}`.
pub async fn resolve(
    State(s): S,
    method: Method,
    r: RepoAccess<Read>,
    headers: HeaderMap,
) -> Answer {
    let c = s.commit_at(&r.info, r.rev()).await?;
    let path = r.param("path").to_string();
    let file = match s
        .repos
        .entry_at(r.key(), &c, &path)
        .await
        .map_err(internal)?
    {
        Some(Node::File(f)) => f,
        _ => return Err(no_entry(&path, &c, &r.info.id)),
    };
    let size = file.size;
    let range = parse_range(&headers, size)?;
    let mut hm = HeaderMap::new();
    let mut put = |k: &'static str, v: String| {
        hm.insert(k, HeaderValue::from_str(&v).expect("ascii"));
    };
    put("x-repo-commit", c.oid.clone());
    put("accept-ranges", "bytes".into());
    match &file.lfs {
        Some(l) => {
            put("etag", format!("\"{}\"", l.sha256));
            put("x-linked-etag", format!("\"{}\"", l.sha256));
            put("x-linked-size", size.to_string());
            put("x-xet-hash", l.xet.clone());
            put(
                "link",
                format!(
                    "<{}/api/{}/{}/xet-read-token/{}>; rel=\"xet-auth\"",
                    s.public_url,
                    r.info.kind.plural(),
                    r.info.id,
                    c.oid
                ),
            );
        }
        None => put("etag", format!("\"{}\"", file.oid)),
    }
    let (status, span) = crate::server::hub::resolve::answer_span(&mut hm, range, size);
    if method == Method::HEAD || span.is_empty() {
        return Ok((status, hm).into_response());
    }
    let body = match &file.lfs {
        Some(l) => crate::server::hub::resolve::stream(
            &s,
            FileId {
                hash: l.xet.clone(),
                size,
            },
            span,
        ),
        None => {
            let data = s
                .repos
                .blob(r.key(), &file.oid)
                .await
                .map_err(internal)?
                .ok_or_else(|| internal(format!("the content of {path} is missing")))?;
            Body::from(Bytes::from(data).slice(span.start as usize..span.end as usize))
        }
    };
    Ok((status, hm, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_info_forms_and_json_are_read() {
        let mut h = HeaderMap::new();
        let (p, e) = paths_info_body(&h, b"paths=a%2Fb.txt&paths=c+d&expand=true").unwrap();
        assert_eq!(
            (p, e),
            (vec!["a/b.txt".to_string(), "c d".to_string()], true)
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let (p, e) = paths_info_body(&h, br#"{"paths":["x"],"expand":false}"#).unwrap();
        assert_eq!((p, e), (vec!["x".to_string()], false));
    }
}
