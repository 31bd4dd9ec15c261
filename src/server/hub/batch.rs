//! `POST /api/buckets/{id}/batch`: NDJSON lines `addFile`, `copyFile`, `deleteFile`, in three
//! steps: [`parse`] the body into lines, [`validate`] each line against the bucket as the
//! earlier lines leave it, [`apply`] the lines that pass in one catalog transaction.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error, internal, Field, EMPTY_HASH, MAX_MTIME_MS, S};
use crate::remote::{CatalogOp, Entry, EntryKind, FileId, Meta};
use crate::server::buckets::{now_ms, Bucket};
use crate::server::extract::{OpenBucket, Write};
use crate::server::{auth::Scope, Answer, Server};

/// One batch line as the client sends it (unknown fields are ignored).
#[derive(Deserialize)]
struct Line {
    #[serde(default, rename = "type")]
    op: Field<String>,
    #[serde(default)]
    path: Field<String>,
    #[serde(default, rename = "xetHash")]
    xet_hash: Field<String>,
    /// Milliseconds since 1970.
    #[serde(default)]
    mtime: Field<i64>,
    #[serde(default, rename = "sourceRepoType")]
    source_repo_type: Field<String>,
    #[serde(default, rename = "sourceRepoId")]
    source_repo_id: Field<String>,
}

impl Line {
    /// The line's path; one that is not a string is refused as an invalid path.
    fn path(&self) -> &str {
        self.path.given().map_or("", String::as_str)
    }
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

/// The lines of a batch once checked: the ops of those that pass, in order, and why the
/// others are refused.
struct Checked {
    ops: Vec<CatalogOp>,
    /// Bodies the ops add to the bucket.
    added: Vec<String>,
    failed: Vec<Value>,
}

/// Each line is checked against the bucket as the earlier lines leave it; the lines that
/// pass are applied in one catalog transaction, the others reported in `failed` (422 if
/// none passed).
pub async fn batch(State(s): S, headers: HeaderMap, b: OpenBucket<Write>, body: Bytes) -> Answer {
    let lines = parse(&body)?;
    let _one_batch_at_a_time = b.bucket.batch_lock.lock().await;
    let checked = validate(&s, &headers, &b, &lines).await?;
    apply(&s, &b, checked).await
}

/// The body's non-blank lines, each a JSON object; 400 for anything else.
fn parse(body: &[u8]) -> Result<Vec<Line>, Response> {
    let text = std::str::from_utf8(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, None, "the batch is not UTF-8"))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            serde_json::from_str::<serde_json::Map<String, Value>>(line)
                .ok()
                .and_then(|m| serde_json::from_value(Value::Object(m)).ok())
                .ok_or_else(|| {
                    let shown: String = line.chars().take(200).collect();
                    error(
                        StatusCode::BAD_REQUEST,
                        None,
                        format!("batch line {shown:?} is not a JSON object"),
                    )
                })
        })
        .collect()
}

/// Every line's op, or why it is refused.
async fn validate(
    s: &Server,
    headers: &HeaderMap,
    b: &OpenBucket<Write>,
    lines: &[Line],
) -> Result<Checked, Response> {
    let mut overlay = Overlay::new();
    let mut checked = Checked {
        ops: Vec::new(),
        added: Vec::new(),
        failed: Vec::new(),
    };
    let now_ns = now_ms() * 1_000_000;
    for line in lines {
        match line_op(s, headers, b, &mut overlay, line, now_ns).await? {
            Ok(op) => {
                if let CatalogOp::Put(Entry {
                    content: Some(c), ..
                }) = &op
                {
                    checked.added.push(c.hash.clone());
                }
                checked.ops.push(op);
            }
            Err(Refused(why)) => checked
                .failed
                .push(json!({"path": line.path(), "error": why})),
        }
    }
    Ok(checked)
}

/// Commit the ops that passed and answer what became of every line.
async fn apply(s: &Server, b: &OpenBucket<Write>, c: Checked) -> Answer {
    let processed = c.ops.len();
    if !c.ops.is_empty() {
        s.claim_bodies(&c.added).await?;
        b.bucket.commit(c.ops).await.map_err(internal)?;
        let added: Vec<&str> = c.added.iter().map(String::as_str).collect();
        s.buckets
            .note_hashes(&b.id, &added, false)
            .await
            .map_err(internal)?;
        s.buckets.touch(&b.id).await.map_err(internal)?;
    }
    let status = if processed == 0 && !c.failed.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let success = c.failed.is_empty();
    Ok((
        status,
        axum::Json(json!({"success": success, "processed": processed, "failed": c.failed})),
    )
        .into_response())
}

/// The kind at `p` once the batch's earlier lines are applied.
async fn kind_at(b: &Bucket, overlay: &Overlay, p: &str) -> Result<Option<EntryKind>, Response> {
    match overlay.get(p) {
        Some(k) => Ok(*k),
        None => Ok(b.catalog.head(p).await.map_err(internal)?.map(|e| e.kind)),
    }
}

/// The catalog op of one batch line, or why it is refused; records what it does in
/// `overlay` for the lines after it.
async fn line_op(
    s: &Server,
    headers: &HeaderMap,
    b: &OpenBucket<Write>,
    overlay: &mut Overlay,
    line: &Line,
    now_ns: i64,
) -> Result<Result<CatalogOp, Refused>, Response> {
    let refuse = |m: String| Ok(Err(Refused(m)));
    let path = line.path();
    if let Err(why) = crate::remote::names::check_path(path) {
        return refuse(format!("invalid path: {why}"));
    }
    let copy = match line.op.given().map(String::as_str) {
        Some("addFile") => false,
        Some("copyFile") => true,
        Some("deleteFile") => return delete_op(&b.bucket, overlay, path).await,
        other => return refuse(format!("unknown operation type {other:?}")),
    };
    let add = match check_add(s, headers, &b.id, line, copy, now_ns).await? {
        Ok(l) => l,
        Err(r) => return Ok(Err(r)),
    };
    put_op(&b.bucket, overlay, path, add, now_ns).await
}

/// A `deleteFile` line: the path must be a file.
async fn delete_op(
    b: &Bucket,
    overlay: &mut Overlay,
    path: &str,
) -> Result<Result<CatalogOp, Refused>, Response> {
    match kind_at(b, overlay, path).await? {
        Some(EntryKind::File) => {
            overlay.insert(path.to_string(), None);
            Ok(Ok(CatalogOp::Delete {
                path: path.to_string(),
            }))
        }
        _ => Ok(Err(Refused("file not found".into()))),
    }
}

/// An `addFile`/`copyFile` line, checked: a file at `path`, where every ancestor is (or
/// becomes) a directory and the path itself no directory.
async fn put_op(
    b: &Bucket,
    overlay: &mut Overlay,
    path: &str,
    line: AddLine,
    now_ns: i64,
) -> Result<Result<CatalogOp, Refused>, Response> {
    let refuse = |m: String| Ok(Err(Refused(m)));
    let mut anc = crate::remote::local::parent_of(path);
    while !anc.is_empty() {
        if let Some(k) = kind_at(b, overlay, anc).await? {
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

/// Check an `addFile` or `copyFile` line into bucket `id`: its hash, its mtime, and that the
/// caller may name that body (it may read it through this bucket, the copy's source, or,
/// for `addFile`, any bucket).
async fn check_add(
    s: &Server,
    headers: &HeaderMap,
    id: &str,
    line: &Line,
    copy: bool,
    now_ns: i64,
) -> Result<Result<AddLine, Refused>, Response> {
    let refuse = |m: String| Ok(Err(Refused(m)));
    let Some(hash) = line.xet_hash.given().map(String::as_str) else {
        return refuse("xetHash is required".into());
    };
    if !crate::server::scope::is_hash(hash) {
        return refuse("xetHash must be 64 lowercase hex digits".into());
    }
    let mtime_ns = match line.mtime {
        Field::Absent => now_ns,
        Field::Given(ms) if (-MAX_MTIME_MS..=MAX_MTIME_MS).contains(&ms) => ms * 1_000_000,
        _ => {
            return refuse(
                "mtime must be a whole number of milliseconds since 1970, before year 10000".into(),
            )
        }
    };
    let readable = if copy {
        check_copy_source(s, headers, line, hash).await?
    } else if !s.may_add_body(headers, id, hash).await? {
        Err(Refused(format!(
            "xetHash {hash} was not uploaded to this bucket and is in no bucket you may read"
        )))
    } else {
        Ok(())
    };
    if let Err(r) = readable {
        return Ok(Err(r));
    }
    let content = if hash == EMPTY_HASH {
        None
    } else {
        match s.file_size(hash).await.map_err(internal)? {
            Some(size) => Some(FileId {
                hash: hash.to_string(),
                size,
            }),
            None => return refuse(format!("xet hash {hash} not found")),
        }
    };
    Ok(Ok(AddLine { content, mtime_ns }))
}

/// A `copyFile` line's source: a bucket the caller may read that holds a file with `hash`
/// now (not a body once seen there: a copy names what the source holds).
async fn check_copy_source(
    s: &Server,
    headers: &HeaderMap,
    line: &Line,
    hash: &str,
) -> Result<Result<(), Refused>, Response> {
    let refuse = |m: String| Ok(Err(Refused(m)));
    let Some(src) = line.source_repo_id.given() else {
        return refuse("copyFile needs sourceRepoId".into());
    };
    let repo = match &line.source_repo_type {
        // Not a string: what `as_str` made of it before, no type at all.
        Field::Absent | Field::Other => None,
        Field::Given(t) if t == "bucket" => None,
        Field::Given(t) => match crate::server::repos::Kind::from_type(Some(t)) {
            Some(kind) => Some(crate::server::repos::key(kind, src)),
            None => return refuse(format!("{t} is not a kind of repo")),
        },
    };
    if let Some(key) = repo {
        // A repo source: readable by the caller, and some commit of it names the body.
        let holds = hash == EMPTY_HASH || s.repos.references(&key, hash).await.map_err(internal)?;
        if !s.may_read(headers, &key).await? || !holds {
            return refuse(format!(
                "{key} does not exist, you may not read it, or it holds no file with xetHash {hash}"
            ));
        }
        return Ok(Ok(()));
    }
    if s.access(headers, src, Scope::Read).await.is_err() {
        return refuse(format!(
            "source bucket {src} does not exist or you may not read it"
        ));
    }
    let catalog = &s.buckets.bucket(src).await.map_err(internal)?.catalog;
    let holds = if hash == EMPTY_HASH {
        catalog.has_empty_file().await
    } else {
        catalog.references(hash).await
    };
    if !holds.map_err(internal)? {
        return refuse(format!("bucket {src} holds no file with xetHash {hash}"));
    }
    Ok(Ok(()))
}
