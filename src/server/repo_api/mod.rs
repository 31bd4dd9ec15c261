//! The Hugging Face repo API (models, datasets, spaces) as `huggingface_hub` 2.4.0 and
//! `hf_xet` 1.8.0 use it (docs/REPO_API.md): create and delete, info at a revision,
//! branches and tags, history, commits (preupload, NDJSON commit with regular and xet
//! files), tree and paths-info, `resolve`, and CAS tokens, over the server's repo store
//! (`repos/`). A revision in a path is percent-decoded (`refs%2Fpr%2F1`).

mod commit;
mod read;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Caller, Scope};
use super::extract::{Need, Read, Write};
use super::hub::{error, internal, iso};
use super::repos::tree::{FileNode, Node};
use super::repos::{key, Commit, Kind, RefKind, RepoInfo, MAIN};
use super::{Answer, Server};
use crate::remote::names::valid_bucket_name;

type S = State<Arc<Server>>;

/// Largest commit body: `upload_folder` sends up to 100 MB of regular files per commit,
/// base64 in NDJSON (4/3 of that, plus the lines around it).
const COMMIT_BODY_LIMIT: usize = 160 << 20;

/// Every repo route, for each kind.
pub fn routes(mut r: Router<Arc<Server>>) -> Router<Arc<Server>> {
    r = r
        .route("/api/repos/create", post(create))
        .route("/api/repos/delete", axum::routing::delete(delete))
        .route("/api/validate-yaml", post(validate_yaml));
    for kind in [Kind::Model, Kind::Dataset, Kind::Space] {
        let b = format!("/api/{}/{{ns}}/{{name}}", kind.plural());
        r = r
            .route(&b, get(info))
            .route(&format!("{b}/revision/{{rev}}"), get(info))
            .route(&format!("{b}/refs"), get(refs))
            .route(&format!("{b}/commits/{{rev}}"), get(commits))
            .route(
                &format!("{b}/branch/{{rev}}"),
                post(create_branch).delete(delete_branch),
            )
            .route(
                &format!("{b}/tag/{{rev}}"),
                post(create_tag).delete(delete_tag),
            )
            .route(&format!("{b}/tree/{{rev}}"), get(read::tree))
            .route(&format!("{b}/tree/{{rev}}/{{*path}}"), get(read::tree))
            .route(&format!("{b}/paths-info/{{rev}}"), post(read::paths_info))
            .route(&format!("{b}/preupload/{{rev}}"), post(commit::preupload))
            .route(
                &format!("{b}/commit/{{rev}}"),
                post(commit::commit).layer(DefaultBodyLimit::max(COMMIT_BODY_LIMIT)),
            )
            .route(&format!("{b}/xet-read-token/{{rev}}"), get(read_token))
            .route(&format!("{b}/xet-write-token/{{rev}}"), get(write_token))
            .route(
                &format!(
                    "/{}{{ns}}/{{name}}/resolve/{{rev}}/{{*path}}",
                    kind.url_prefix()
                ),
                get(read::resolve).head(read::resolve),
            );
    }
    r
}

/// The kind of repo a request's path names: `/api/datasets/…` and `/datasets/…` are
/// datasets, and so on; anything else is a model.
fn kind_of_path(path: &str) -> Kind {
    let rest = path.strip_prefix("/api").unwrap_or(path);
    let first = rest.trim_start_matches('/').split('/').next().unwrap_or("");
    Kind::from_plural(first).unwrap_or(Kind::Model)
}

/// The repo a route names, which its caller may use with scope `N`, and the route's other
/// path segments (`rev`, `path`), percent-decoded.
pub struct RepoAccess<N> {
    pub info: RepoInfo,
    pub caller: Option<Caller>,
    params: HashMap<String, String>,
    need: PhantomData<N>,
}

impl<N> RepoAccess<N> {
    fn param(&self, name: &str) -> &str {
        self.params.get(name).map_or("", String::as_str)
    }

    /// The route's revision (`main` when the route has none).
    fn rev(&self) -> &str {
        match self.param("rev") {
            "" => MAIN,
            r => r,
        }
    }

    fn key(&self) -> &str {
        &self.info.key
    }
}

impl<N: Need> FromRequestParts<Arc<Server>> for RepoAccess<N> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> Result<Self, Response> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, s)
            .await
            .map_err(IntoResponse::into_response)?;
        let kind = kind_of_path(parts.uri.path());
        let id = format!(
            "{}/{}",
            params.get("ns").map_or("", String::as_str),
            params.get("name").map_or("", String::as_str)
        );
        let key = key(kind, &id);
        let caller = s.caller(&parts.headers)?;
        let info = s.repos.info(&key).await.map_err(internal)?;
        Server::decide(
            caller.as_ref(),
            info.as_ref().map(|i| i.private),
            &key,
            &format!("Repository {id}"),
            N::SCOPE,
        )?;
        Ok(RepoAccess {
            info: info.expect("decide refuses a missing repo"),
            caller,
            params,
            need: PhantomData,
        })
    }
}

fn no_revision(rev: &str, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        Some("RevisionNotFound"),
        format!("Invalid rev id: {rev} is not a branch, tag or commit of {id}"),
    )
}

impl Server {
    /// The commit revision `rev` of `repo` names, or 404 `RevisionNotFound`.
    async fn commit_at(&self, repo: &RepoInfo, rev: &str) -> Result<Commit, Response> {
        self.repos
            .resolve(&repo.key, rev)
            .await
            .map_err(internal)?
            .ok_or_else(|| no_revision(rev, &repo.id))
    }

    fn repo_url(&self, repo: &RepoInfo) -> String {
        format!("{}/{}{}", self.public_url, repo.kind.url_prefix(), repo.id)
    }
}

/// A tree entry as `list_repo_tree` and `paths-info` give it.
fn entry_json(path: &str, node: &Node) -> Value {
    match node {
        Node::Dir(oid) => json!({"type": "directory", "path": path, "oid": oid}),
        Node::File(f) => file_json(path, f),
    }
}

fn file_json(path: &str, f: &FileNode) -> Value {
    let mut v = json!({"type": "file", "path": path, "size": f.size, "oid": f.oid});
    if let Some(l) = &f.lfs {
        let pointer = super::repos::tree::lfs_pointer(&l.sha256, f.size).len();
        v["lfs"] = json!({"oid": l.sha256, "size": f.size, "pointerSize": pointer});
        v["xetHash"] = json!(l.xet);
    }
    v
}

/// `POST /api/repos/create` and `DELETE /api/repos/delete`: the repo a body names.
#[derive(Deserialize, Default)]
struct RepoBody {
    name: Option<String>,
    organization: Option<String>,
    #[serde(rename = "type")]
    repo_type: Option<String>,
    visibility: Option<String>,
    private: Option<bool>,
}

impl RepoBody {
    /// The kind and `ns/name` the body names, `ns` defaulting to the caller's user.
    fn target(&self, caller: &Caller) -> Result<(Kind, String), Response> {
        let bad = |m: String| error(StatusCode::BAD_REQUEST, None, m);
        let kind = Kind::from_type(self.repo_type.as_deref())
            .ok_or_else(|| bad(format!("unknown repo type {:?}", self.repo_type)))?;
        let name = self.name.clone().unwrap_or_default();
        let ns = self
            .organization
            .clone()
            .unwrap_or_else(|| caller.user.clone());
        if !valid_bucket_name(&ns) || !valid_bucket_name(&name) {
            return Err(bad(format!("{ns}/{name} is not a valid repo id")));
        }
        Ok((kind, format!("{ns}/{name}")))
    }
}

fn body_of(body: &[u8]) -> Result<RepoBody, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RepoBody::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, None, format!("bad JSON body: {e}")))
}

fn needs_token(what: &str) -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        None,
        format!("{what} needs a token"),
    )
}

async fn create(State(s): S, headers: HeaderMap, body: Bytes) -> Answer {
    let caller = s
        .caller(&headers)?
        .ok_or_else(|| needs_token("Creating a repo"))?;
    let b = body_of(&body)?;
    let (kind, id) = b.target(&caller)?;
    let k = key(kind, &id);
    if caller.scope_on(&k) != Some(Scope::Write) {
        return Err(error(
            StatusCode::FORBIDDEN,
            None,
            format!(
                "You cannot create repos in {}",
                id.split('/').next().unwrap_or("")
            ),
        ));
    }
    let private = b.private.unwrap_or(false) || b.visibility.as_deref() == Some("private");
    let created = s
        .repos
        .create(&k, private, &caller.user)
        .await
        .map_err(internal)?;
    let info = s
        .repos
        .info(&k)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal("a created repo is missing"))?;
    let url = s.repo_url(&info);
    Ok(if created {
        axum::Json(json!({"url": url, "name": id, "id": id})).into_response()
    } else {
        (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": "You already created this repo", "url": url})),
        )
            .into_response()
    })
}

async fn delete(State(s): S, headers: HeaderMap, body: Bytes) -> Answer {
    let caller = s
        .caller(&headers)?
        .ok_or_else(|| needs_token("Deleting a repo"))?;
    let (kind, id) = body_of(&body)?.target(&caller)?;
    let k = key(kind, &id);
    let info = s.repos.info(&k).await.map_err(internal)?;
    let private = info.map(|i| i.private);
    Server::decide(
        Some(&caller),
        private,
        &k,
        &format!("Repository {id}"),
        Scope::Write,
    )?;
    s.repos.delete(&k).await.map_err(internal)?;
    s.buckets.forget(&k).await.map_err(internal)?;
    Ok(axum::Json(json!({})).into_response())
}

#[derive(Deserialize, Default)]
struct InfoQuery {
    blobs: Option<String>,
}

/// The `expand` values of a query (`expand=a&expand=b`, or `expand[]=a`): the fields asked
/// for, if any were named.
fn expanded(query: Option<&str>) -> Option<Vec<String>> {
    let asked: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| matches!(*k, "expand" | "expand[]" | "expand%5B%5D"))
        .filter_map(|(_, v)| crate::remote::wire::form_decode(v))
        .collect();
    (!asked.is_empty()).then_some(asked)
}

/// `GET …` and `GET …/revision/{rev}`: the repo at the revision. With `expand`, only the
/// fields named (and `id`): a caller asking for `sha` does not pay for a list of every file.
async fn info(
    State(s): S,
    r: RepoAccess<Read>,
    Query(q): Query<InfoQuery>,
    uri: axum::http::Uri,
) -> Answer {
    let c = s.commit_at(&r.info, r.rev()).await?;
    let only = expanded(uri.query());
    let wants = |f: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == f));
    let blobs = q.blobs.as_deref() == Some("true") || q.blobs.as_deref() == Some("1");
    let files = if wants("siblings") {
        s.repos
            .list(r.key(), &c.tree, "", true, "", usize::MAX)
            .await
            .map_err(internal)?
            .0
    } else {
        Vec::new()
    };
    let siblings: Vec<Value> = files
        .iter()
        .filter_map(|(path, n)| match n {
            Node::File(f) if blobs => {
                let mut v = json!({"rfilename": path, "size": f.size, "blobId": f.oid});
                if let Some(l) = &f.lfs {
                    let pointer = super::repos::tree::lfs_pointer(&l.sha256, f.size).len();
                    v["lfs"] = json!({"size": f.size, "sha256": l.sha256, "pointerSize": pointer});
                }
                Some(v)
            }
            Node::File(_) => Some(json!({"rfilename": path})),
            Node::Dir(_) => None,
        })
        .collect();
    let (ns, _) = r.info.id.split_once('/').unwrap_or_default();
    let mut v = json!({
        "id": r.info.id,
        "author": ns,
        "sha": c.oid,
        "lastModified": iso(c.date_ms),
        "createdAt": iso(r.info.created_ms),
        "private": r.info.private,
        "gated": false,
        "disabled": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
    });
    if r.info.kind == Kind::Space {
        v["sdk"] = json!("static");
    }
    if let (Some(only), Value::Object(m)) = (&only, &mut v) {
        m.retain(|k, _| k == "id" || only.iter().any(|x| x == k));
    }
    Ok(axum::Json(v).into_response())
}

fn ref_json(kind: &str, r: &super::repos::Ref) -> Value {
    json!({"name": r.name, "ref": format!("refs/{kind}/{}", r.name), "targetCommit": r.commit})
}

async fn refs(State(s): S, r: RepoAccess<Read>) -> Answer {
    let branches = s
        .repos
        .refs(r.key(), RefKind::Branch)
        .await
        .map_err(internal)?;
    let tags = s
        .repos
        .refs(r.key(), RefKind::Tag)
        .await
        .map_err(internal)?;
    Ok(axum::Json(json!({
        "branches": branches.iter().map(|b| ref_json("heads", b)).collect::<Vec<_>>(),
        "tags": tags.iter().map(|t| ref_json("tags", t)).collect::<Vec<_>>(),
        "converts": [],
        "pullRequests": [],
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
struct PageQuery {
    p: Option<usize>,
    limit: Option<usize>,
}

/// Commits per page of `list_repo_commits`.
const COMMITS_PAGE: usize = 50;

async fn commits(State(s): S, r: RepoAccess<Read>, Query(q): Query<PageQuery>) -> Answer {
    let head = s.commit_at(&r.info, r.rev()).await?;
    let page = q.p.unwrap_or(0);
    let limit = q.limit.unwrap_or(COMMITS_PAGE).clamp(1, 1000);
    let list = s
        .repos
        .history(r.key(), &head.oid, page.saturating_mul(limit), limit + 1)
        .await
        .map_err(internal)?;
    let more = list.len() > limit;
    let out: Vec<Value> = list
        .iter()
        .take(limit)
        .map(|c| {
            json!({
                "id": c.oid,
                "authors": [{"user": c.author}],
                "date": iso(c.date_ms),
                "title": c.title,
                "message": c.message,
                "formatted": {"title": c.title, "message": c.message},
            })
        })
        .collect();
    let resp = axum::Json(out).into_response();
    if !more {
        return Ok(resp);
    }
    let next = format!(
        "{}/api/{}/{}/commits/{}?p={}&limit={limit}",
        s.public_url,
        r.info.kind.plural(),
        r.info.id,
        crate::remote::wire::percent_encode(r.rev(), false),
        page + 1
    );
    Ok(super::hub::with_next(resp, &next))
}

#[derive(Deserialize, Default)]
struct BranchBody {
    #[serde(rename = "startingPoint")]
    starting_point: Option<String>,
}

#[derive(Deserialize, Default)]
struct TagBody {
    tag: Option<String>,
}

/// A branch or tag name: what a git ref may be, roughly (no `..`, no control characters,
/// no leading or trailing `/`), and not a commit id.
fn valid_ref_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 256
        && !n.starts_with('/')
        && !n.ends_with('/')
        && !n.contains("..")
        && !n.chars().any(|c| c.is_control() || " ~^:?*[\\".contains(c))
        && !(n.len() == 40 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        // Revisions are read with these prefixes taken off: such a ref could never be named.
        && !n.starts_with("refs/heads/")
        && !n.starts_with("refs/tags/")
}

async fn made_ref(s: &Server, r: &RepoInfo, kind: RefKind, name: &str, at: &Commit) -> Answer {
    if !valid_ref_name(name) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            format!("{name:?} is not a valid branch or tag name"),
        ));
    }
    if s.repos
        .create_ref(&r.key, kind, name, &at.oid)
        .await
        .map_err(internal)?
    {
        Ok(axum::Json(json!({})).into_response())
    } else {
        Err(error(
            StatusCode::CONFLICT,
            None,
            format!("Reference {name} already exists"),
        ))
    }
}

async fn create_branch(State(s): S, r: RepoAccess<Write>, body: Bytes) -> Answer {
    let b: BranchBody = super::hub::json_body(&body)?;
    let from = b.starting_point.as_deref().unwrap_or(MAIN);
    let at = s.commit_at(&r.info, from).await?;
    made_ref(&s, &r.info, RefKind::Branch, r.param("rev"), &at).await
}

async fn create_tag(State(s): S, r: RepoAccess<Write>, body: Bytes) -> Answer {
    let b: TagBody = super::hub::json_body(&body)?;
    let at = s.commit_at(&r.info, r.rev()).await?;
    let Some(tag) = b.tag else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            "the body names no tag",
        ));
    };
    made_ref(&s, &r.info, RefKind::Tag, &tag, &at).await
}

async fn deleted_ref(s: &Server, r: &RepoInfo, kind: RefKind, name: &str) -> Answer {
    if kind == RefKind::Branch && name == MAIN {
        return Err(error(
            StatusCode::FORBIDDEN,
            None,
            "the main branch cannot be deleted",
        ));
    }
    if s.repos
        .delete_ref(&r.key, kind, name)
        .await
        .map_err(internal)?
    {
        Ok(axum::Json(json!({})).into_response())
    } else {
        Err(no_revision(name, &r.id))
    }
}

async fn delete_branch(State(s): S, r: RepoAccess<Write>) -> Answer {
    deleted_ref(&s, &r.info, RefKind::Branch, r.param("rev")).await
}

async fn delete_tag(State(s): S, r: RepoAccess<Write>) -> Answer {
    deleted_ref(&s, &r.info, RefKind::Tag, r.param("rev")).await
}

/// A token for the CAS: reads need the revision to exist; a write token's revision is
/// checked by the commit (the client may send `None` there).
async fn read_token(State(s): S, r: RepoAccess<Read>) -> Answer {
    s.commit_at(&r.info, r.rev()).await?;
    Ok(super::hub::cas_token(&s, r.key(), Scope::Read))
}

async fn write_token(State(s): S, r: RepoAccess<Write>) -> Response {
    super::hub::cas_token(&s, r.key(), Scope::Write)
}

/// `POST /api/validate-yaml`: a model card's metadata. This server keeps no rules about
/// card metadata, so every card is accepted; the client needs the JSON answer.
async fn validate_yaml() -> Response {
    axum::Json(json!({"errors": [], "warnings": []})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_name_their_kind() {
        assert_eq!(kind_of_path("/api/models/a/b/tree/main"), Kind::Model);
        assert_eq!(kind_of_path("/api/datasets/a/b"), Kind::Dataset);
        assert_eq!(kind_of_path("/spaces/a/b/resolve/main/x"), Kind::Space);
        assert_eq!(kind_of_path("/a/b/resolve/main/x"), Kind::Model);
    }

    #[test]
    fn expand_names_the_fields_asked_for() {
        assert_eq!(expanded(None), None);
        assert_eq!(expanded(Some("blobs=true")), None);
        assert_eq!(
            expanded(Some("expand=sha&expand=lastModified")),
            Some(vec!["sha".to_string(), "lastModified".to_string()])
        );
        assert_eq!(
            expanded(Some("expand%5B%5D=sha")),
            Some(vec!["sha".to_string()])
        );
    }

    #[test]
    fn ref_names_are_checked() {
        for ok in ["dev", "v1.0", "refs/pr/1", "feature/x"] {
            assert!(valid_ref_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/x",
            "x/",
            "a..b",
            "a b",
            "a:b",
            &"a".repeat(40),
            "refs/heads/x",
        ] {
            assert!(!valid_ref_name(bad), "{bad}");
        }
    }
}
