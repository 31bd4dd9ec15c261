//! `--hub-rate-limit N`: at most N bucket-API requests per second (a burst of N), the rest
//! answered 429 with `Retry-After` and the IETF `RateLimit` header, as the Hub does, so a
//! server shared by many mounts is not overrun and clients back off the way they would
//! against the Hub. CAS routes are not limited.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

/// A token bucket of `rate` tokens per second.
pub struct RateLimit {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(per_sec: u32) -> Self {
        RateLimit {
            rate: f64::from(per_sec.max(1)),
            state: Mutex::new((f64::from(per_sec.max(1)), Instant::now())),
        }
    }

    /// Take a token; `Err(secs)` to wait when there is none.
    fn take(&self) -> Result<(), u64> {
        let mut s = self.state.lock();
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - s.0) / self.rate).ceil() as u64).max(1))
        }
    }
}

pub async fn limit(
    State(rl): State<std::sync::Arc<RateLimit>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let hub = path.starts_with("/api/") || path.starts_with("/buckets/");
    if hub {
        if let Err(wait) = rl.take() {
            let mut r =
                (StatusCode::TOO_MANY_REQUESTS, "rate limited; retry later").into_response();
            let h = r.headers_mut();
            h.insert("retry-after", HeaderValue::from(wait));
            if let Ok(v) = HeaderValue::from_str(&format!("\"api\";r=0;t={wait}")) {
                h.insert("ratelimit", v);
            }
            return r;
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_callers_are_told_to_wait() {
        let rl = RateLimit::new(3);
        assert!(rl.take().is_ok() && rl.take().is_ok() && rl.take().is_ok());
        assert_eq!(rl.take(), Err(1));
    }
}
