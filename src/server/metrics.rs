//! The server's Prometheus metrics: requests by route and status, their latency, and the
//! bytes of xorb data served, so tests and operators can see the load clients put on the
//! server (how many requests a poll round costs, whether a remount re-downloaded anything).
//! Served at `GET /v1/xetmount/metrics` and on `--metrics-listen`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Server;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route template (`/api/buckets/{namespace}/{name}/tree`), not the path.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Bytes answered on the fetch route and with chunk lists (which may carry stored chunks).
    fetch_bytes: Counter,
    /// Bytes of xorbs and shards clients sent to this server (not to an object store).
    upload_bytes: Counter,
    /// Bytes read back from the object store to check what clients uploaded there.
    pub verify_bytes: Counter,
}

fn latency_buckets() -> Histogram {
    // 100 µs to 13 s.
    Histogram::new(exponential_buckets(0.000_1, 4.0, 9))
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::new_with_constructor(latency_buckets as fn() -> Histogram);
        let fetch_bytes = Counter::default();
        let upload_bytes = Counter::default();
        let verify_bytes = Counter::default();
        let mut registry = Registry::default();
        registry.register(
            "xetmount_serve_requests",
            "Requests answered, by method, route and status",
            requests.clone(),
        );
        registry.register(
            "xetmount_serve_request_seconds",
            "Time to answer a request (until its body starts), by method and route",
            latency.clone(),
        );
        registry.register(
            "xetmount_serve_fetch_bytes",
            "Bytes of xorb data answered on the fetch and chunk-list routes",
            fetch_bytes.clone(),
        );
        registry.register(
            "xetmount_serve_upload_bytes",
            "Bytes of xorb and shard uploads clients sent to this server",
            upload_bytes.clone(),
        );
        registry.register(
            "xetmount_serve_verify_bytes",
            "Bytes read back from the object store to check uploads clients made there",
            verify_bytes.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            requests,
            latency,
            fetch_bytes,
            upload_bytes,
            verify_bytes,
        }
    }
}

impl Metrics {
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

/// Middleware (a route layer, so the matched route is known).
pub async fn count(State(s): State<Arc<Server>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let method = req.method().to_string();
    let fetch = route.starts_with("/fetch/") || route.starts_with("/v1/xetmount/chunks/");
    // Every route a client sends xorb or shard bytes to (a framed commit carries uploads).
    let upload = route.starts_with("/v1/xorbs/")
        || route.starts_with("/v1/shards")
        || route.starts_with("/v2/shards")
        || route.ends_with("/xetmount/commit");
    let sent: u64 = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    tracing::debug!("request {method} {route}");
    let started = Instant::now();
    let r = next.run(req).await;
    tracing::debug!("answered {method} {route}");
    let m = &s.metrics;
    m.latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: r.status().as_u16(),
        })
        .inc();
    if upload {
        m.upload_bytes.inc_by(sent);
    }
    if fetch {
        m.fetch_bytes
            .inc_by(r.body().size_hint().exact().unwrap_or(0));
    }
    r
}

/// `GET /v1/xetmount/metrics`.
pub async fn render(State(s): State<Arc<Server>>) -> Response {
    crate::telemetry::export::response(&s.metrics.registry)
}
