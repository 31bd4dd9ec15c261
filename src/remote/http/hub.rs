//! The Hub half of a remote bucket or repo: HTTP requests to the bucket or repo API and to
//! xetmount's own catalog routes, with retries and the status → [`RemoteError`] mapping.
//!
//! Retried: 408, 429 and 5xx answers and connection failures, up to [`ATTEMPTS`] times,
//! waiting what `Retry-After` or `RateLimit: ...;t=N` asks (at most [`MAX_WAIT`]), else an
//! exponential backoff. Then: 401 → not authenticated, 403 → permission denied, 404 → not
//! found, 413/507 → quota, 429 → rate limited, anything else → a transient failure the
//! flusher retries later.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};

use super::SendTimed;
use serde_json::Value;

use crate::remote::{RemoteError, RemoteResult};

const ATTEMPTS: u32 = 5;
const MAX_WAIT: Duration = Duration::from_secs(30);

pub struct Hub {
    http: reqwest::Client,
    /// e.g. `https://huggingface.co`, no trailing slash.
    pub endpoint: String,
    token: Option<String>,
    /// `ns/name`.
    pub bucket: String,
    /// API routes start at `{endpoint}/{api_base}`: `api/buckets/ns/name`, `api/models/ns/name`.
    api_base: String,
    /// A repo's CAS tokens are asked for at a revision (percent-encoded); a bucket's are not.
    token_rev: Option<String>,
}

/// How long the server asked us to wait, if it did.
fn asked_wait(r: &Response) -> Option<Duration> {
    let h = r.headers();
    if let Some(secs) = h
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(Duration::from_secs(secs));
    }
    let rl = h.get("ratelimit")?.to_str().ok()?;
    let t = rl.split(';').find_map(|p| p.trim().strip_prefix("t="))?;
    t.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The `rel="next"` target of a `Link` header.
fn next_link(r: &Response) -> Option<String> {
    let link = r.headers().get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().trim_start_matches("rel=").trim_matches('"') == "next")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

fn status_error(status: StatusCode, what: &str, body: &str) -> RemoteError {
    if status == StatusCode::PRECONDITION_FAILED {
        // A compare-and-swap commit refused: the answer names every conflict.
        if let Ok(c) = serde_json::from_str::<crate::remote::wire::WireConflicts>(body) {
            return RemoteError::Conflict(c.conflicts());
        }
    }
    let msg = format!(
        "{what}: HTTP {status}: {}",
        body.chars().take(300).collect::<String>()
    );
    match status.as_u16() {
        401 => RemoteError::Unauthenticated(msg),
        403 => RemoteError::PermissionDenied(msg),
        404 => RemoteError::NotFound(msg),
        413 | 507 => RemoteError::Quota(msg),
        429 => RemoteError::RateLimited(msg),
        408 | 504 => RemoteError::Timeout(msg),
        _ => RemoteError::Other(msg),
    }
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500..=599) && status.as_u16() != 501
}

impl Hub {
    pub fn new(endpoint: &str, token: Option<String>, bucket: &str) -> RemoteResult<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("xetmount/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(RemoteError::other)?;
        Ok(Hub {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            bucket: bucket.to_string(),
            api_base: format!("api/buckets/{bucket}"),
            token_rev: None,
        })
    }

    /// The Hub of repo `id` of kind `plural` (`models`, `datasets`, `spaces`), whose CAS
    /// tokens are asked for at revision `rev`.
    pub fn for_repo(
        endpoint: &str,
        token: Option<String>,
        plural: &str,
        id: &str,
        rev: &str,
    ) -> RemoteResult<Self> {
        let mut hub = Hub::new(endpoint, token, id)?;
        hub.api_base = format!("api/{plural}/{id}");
        hub.token_rev = Some(crate::remote::wire::percent_encode(rev, false));
        Ok(hub)
    }

    /// `{endpoint}/api/buckets/{bucket}{suffix}` (or the repo's API).
    pub fn api(&self, suffix: &str) -> String {
        format!("{}/{}{suffix}", self.endpoint, self.api_base)
    }

    /// Send the request `build` makes, retrying transient failures; a non-2xx answer that is
    /// not retried (or still fails) becomes the mapped error.
    pub async fn send(
        &self,
        what: &'static str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> RemoteResult<Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = build(&self.http);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let backoff = Duration::from_millis(200 << attempt.min(5));
            match req.send_timed(what).await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) if retryable(r.status()) && attempt < ATTEMPTS => {
                    let wait = asked_wait(&r).unwrap_or(backoff).min(MAX_WAIT);
                    tracing::debug!(status = %r.status(), ?wait, "{what}: retrying");
                    tokio::time::sleep(wait).await;
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    return Err(status_error(status, what, &body));
                }
                Err(e)
                    if attempt < ATTEMPTS
                        && (e.is_connect() || e.is_timeout() || e.is_request()) =>
                {
                    tracing::debug!("{what}: {e}; retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) if e.is_timeout() => {
                    return Err(RemoteError::Timeout(format!("{what}: {e}")))
                }
                Err(e) => return Err(RemoteError::Other(format!("{what}: {e}"))),
            }
        }
    }

    pub async fn get_json(&self, what: &'static str, url: &str) -> RemoteResult<Value> {
        self.send(what, |c| c.get(url))
            .await?
            .json()
            .await
            .map_err(|e| RemoteError::Other(format!("{what}: bad answer: {e}")))
    }

    pub async fn post_json(
        &self,
        what: &'static str,
        url: &str,
        body: &Value,
    ) -> RemoteResult<Value> {
        self.send(what, |c| c.request(Method::POST, url).json(body))
            .await?
            .json()
            .await
            .map_err(|e| RemoteError::Other(format!("{what}: bad answer: {e}")))
    }

    /// Every page of a `Link`-paginated JSON array, starting at `url`.
    pub async fn get_pages(&self, what: &'static str, url: &str) -> RemoteResult<Vec<Value>> {
        let mut out = Vec::new();
        let mut next = Some(url.to_string());
        while let Some(url) = next.take() {
            let r = self.send(what, |c| c.get(&url)).await?;
            next = next_link(&r);
            match r.json::<Value>().await {
                Ok(Value::Array(items)) => out.extend(items),
                Ok(v) => return Err(RemoteError::Other(format!("{what}: bad answer: {v}"))),
                Err(e) => return Err(RemoteError::Other(format!("{what}: bad answer: {e}"))),
            }
        }
        Ok(out)
    }

    /// One page of a paged GET: its items and the URL of the next page (`Link: rel="next"`).
    pub async fn get_page(
        &self,
        what: &'static str,
        url: &str,
    ) -> RemoteResult<(Vec<Value>, Option<String>)> {
        let r = self.send(what, |c| c.get(url)).await?;
        let next = next_link(&r);
        match r.json::<Value>().await {
            Ok(Value::Array(items)) => Ok((items, next)),
            Ok(v) => Err(RemoteError::Other(format!("{what}: bad answer: {v}"))),
            Err(e) => Err(RemoteError::Other(format!("{what}: bad answer: {e}"))),
        }
    }

    /// POST an NDJSON body (one JSON value per line).
    pub async fn post_ndjson(
        &self,
        what: &'static str,
        url: &str,
        lines: &[Value],
    ) -> RemoteResult<Value> {
        let mut body = String::new();
        for l in lines {
            body.push_str(&l.to_string());
            body.push('\n');
        }
        self.send(what, |c| {
            c.request(Method::POST, url)
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
        })
        .await?
        .json()
        .await
        .map_err(|e| RemoteError::Other(format!("{what}: bad answer: {e}")))
    }

    /// The bucket's info (`GET /api/buckets/{id}`).
    pub async fn info(&self) -> RemoteResult<Value> {
        self.get_json("bucket info", &self.api("")).await
    }

    /// A CAS token: (CAS URL, token, expiry in unix seconds).
    pub async fn cas_token(&self, write: bool) -> RemoteResult<(String, String, u64)> {
        let route = if write {
            "/xet-write-token"
        } else {
            "/xet-read-token"
        };
        let route = match &self.token_rev {
            Some(rev) => format!("{route}/{rev}"),
            None => route.to_string(),
        };
        let v = self.get_json("CAS token", &self.api(&route)).await?;
        let field = |k: &str| v.get(k).cloned();
        match (
            field("casUrl").and_then(|x| x.as_str().map(str::to_string)),
            field("accessToken").and_then(|x| x.as_str().map(str::to_string)),
            field("exp").and_then(|x| x.as_u64()),
        ) {
            (Some(url), Some(tok), Some(exp)) => Ok((url, tok, exp)),
            _ => Err(RemoteError::Other(format!("the token route answered {v}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_errors_users_can_act_on() {
        let e = |s: u16| status_error(StatusCode::from_u16(s).unwrap(), "x", "");
        assert!(matches!(e(401), RemoteError::Unauthenticated(_)));
        assert!(matches!(e(403), RemoteError::PermissionDenied(_)));
        assert!(matches!(e(404), RemoteError::NotFound(_)));
        assert!(matches!(e(413), RemoteError::Quota(_)));
        assert!(matches!(e(507), RemoteError::Quota(_)));
        assert!(matches!(e(429), RemoteError::RateLimited(_)));
        assert!(e(503).is_transient());
        assert!(retryable(StatusCode::from_u16(503).unwrap()));
        assert!(!retryable(StatusCode::from_u16(501).unwrap()));
        assert!(!retryable(StatusCode::from_u16(404).unwrap()));
    }
}
