//! `GET /metrics` over HTTP for a registry (`--metrics-listen`), in the OpenMetrics text format
//! Prometheus scrapes.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a collector.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!("cannot encode metrics: {e}");
    }
    out
}

/// An HTTP answer carrying the registry.
pub fn response(registry: &Registry) -> axum::response::Response {
    ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], render(registry)).into_response()
}

/// Bind `addr` for metrics; the error is one sentence naming the option.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}; choose another address with --metrics-listen"))
}

/// Answer `GET /metrics` on `listener` until the runtime stops.
pub fn spawn(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { response(&registry) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
}
