//! Request counts per route, and the bytes of xorb data served: what `GET /v1/xetmount/metrics`
//! answers, so tests and operators can see the load clients put on the server (how many
//! requests a poll round costs, whether a remount re-downloaded anything).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use parking_lot::Mutex;

use super::Server;

#[derive(Default)]
pub struct Metrics {
    /// "METHOD /route/{template}" → requests answered.
    requests: Mutex<BTreeMap<String, u64>>,
    /// Bytes answered on the fetch route and with chunk lists (which may carry stored chunks).
    fetch_bytes: AtomicU64,
}

impl Metrics {
    /// One line per route, `METHOD ROUTE COUNT`, then `fetch_bytes N`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (route, n) in self.requests.lock().iter() {
            out.push_str(&format!("{route} {n}\n"));
        }
        out.push_str(&format!(
            "fetch_bytes {}\n",
            self.fetch_bytes.load(Ordering::Relaxed)
        ));
        out
    }
}

/// Middleware (a route layer, so the matched route is known).
pub async fn count(State(s): State<Arc<Server>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let key = format!("{} {route}", req.method());
    let fetch = route.starts_with("/fetch/") || route.starts_with("/v1/xetmount/chunks/");
    tracing::debug!("request {key}");
    let r = next.run(req).await;
    tracing::debug!("answered {key}");
    *s.metrics.requests.lock().entry(key).or_default() += 1;
    if fetch {
        let len = r.body().size_hint().exact().unwrap_or(0);
        s.metrics.fetch_bytes.fetch_add(len, Ordering::Relaxed);
    }
    r
}

/// `GET /v1/xetmount/metrics`.
pub async fn render(State(s): State<Arc<Server>>) -> String {
    s.metrics.render()
}
