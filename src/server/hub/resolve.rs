//! `HEAD`/`GET /buckets/{ns}/{name}/resolve/{path}`: a file's identity in headers, and for
//! `GET` its bytes (`Range` honoured).

use std::ops::Range;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::IntoResponse;

use super::{bad_path, error, internal, EMPTY_HASH, S};
use crate::remote::{EntryKind, FileId};
use crate::server::cas::parse_range;
use crate::server::extract::{OpenBucket, Read};
use crate::server::{Answer, Server};

pub async fn resolve(
    State(s): S,
    method: Method,
    Path((_, _, path)): Path<(String, String, String)>,
    b: OpenBucket<Read>,
    headers: HeaderMap,
) -> Answer {
    if let Err(why) = crate::remote::names::check_path(&path) {
        return Err(bad_path("the path", &path, why));
    }
    let entry = match b.bucket.catalog.head(&path).await.map_err(internal)? {
        Some(e) if e.kind == EntryKind::File => e,
        _ => {
            return Err(error(
                StatusCode::NOT_FOUND,
                Some("EntryNotFound"),
                format!("{path} does not exist in {}", b.id),
            ))
        }
    };
    let size = entry.size();
    let hash = entry
        .content
        .as_ref()
        .map_or(EMPTY_HASH.to_string(), |c| c.hash.clone());
    let range = parse_range(&headers, size)?;
    let mut hm = identity_headers(&s, &b.id, &hash, size);
    let (status, span) = answer_span(&mut hm, range, size);
    if method == Method::HEAD || span.is_empty() {
        return Ok((status, hm).into_response());
    }
    let Some(content) = entry.content else {
        return Ok((status, hm).into_response());
    };
    Ok((status, hm, stream(&s, content, span)).into_response())
}

/// The status and byte span answering `range` (`None`: the whole body) of a `size`-byte body,
/// with its `Content-Range` (for a range) and `Content-Length` added to `hm`.
pub(crate) fn answer_span(
    hm: &mut HeaderMap,
    range: Option<Range<u64>>,
    size: u64,
) -> (StatusCode, Range<u64>) {
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
    (status, span)
}

/// What names file `hash` of bucket `id` to a client: its hash, size, etag, and where a
/// token to read it through the CAS comes from.
fn identity_headers(s: &Server, id: &str, hash: &str, size: u64) -> HeaderMap {
    let mut hm = HeaderMap::new();
    let link = format!(
        "<{}/api/buckets/{id}/xet-read-token>; rel=\"xet-auth\"",
        s.public_url
    );
    for (k, v) in [
        ("x-xet-hash", hash.to_string()),
        ("x-linked-size", size.to_string()),
        ("etag", format!("\"{hash}\"")),
        ("link", link),
        ("accept-ranges", "bytes".to_string()),
    ] {
        hm.insert(k, HeaderValue::from_str(&v).expect("ascii"));
    }
    hm
}

/// Bytes `span` of `content`, streamed in 4 MiB pieces so a large file never sits in memory
/// whole.
pub(crate) fn stream(s: &Server, content: FileId, span: Range<u64>) -> Body {
    let cas: Arc<_> = s.cas.clone();
    let stream = futures::stream::unfold(span.start, move |at| {
        let cas = cas.clone();
        let content = content.clone();
        let end = span.end;
        async move {
            if at >= end {
                return None;
            }
            let to = (at + (4 << 20)).min(end);
            let piece = cas
                .read_range(&content, at..to)
                .await
                .map_err(std::io::Error::other);
            Some((piece, to))
        }
    });
    Body::from_stream(stream)
}
