//! Prometheus metrics. Latency histograms are process-wide ([`timings`]): a process runs one
//! mount or one server, and the remote client, the flusher and the frontends record into them
//! without a handle threaded through every constructor. Counters and gauges that already live
//! in a [`Vfs`](crate::vfs::Vfs)'s `Stats` are read at scrape time by [`MountCollector`], so
//! nothing is counted twice. [`export`] serves a registry over HTTP.
//!
//! Names follow Prometheus conventions: `xetmount_` prefix, base units (seconds, bytes),
//! counters named without `_total` (the OpenMetrics encoder adds it).

pub mod export;
mod mount;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use mount::MountCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `fuse` or `nfs`.
    pub frontend: &'static str,
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemoteLabels {
    /// What the request was for (`list`, `commit`, `reconstruction`, `fetch range`, ...).
    pub route: &'static str,
    /// The answer's status code, or `error` when none came (connection, timeout).
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommitLabels {
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The process-wide latency histograms.
pub struct Timings {
    ops: Histograms<OpLabels>,
    remote: Histograms<RemoteLabels>,
    commits: Histograms<CommitLabels>,
}

fn op_buckets() -> Histogram {
    // 10 µs (a cached lookup) to 10 s (a read that waited for a slow remote).
    Histogram::new(exponential_buckets(0.000_01, 4.0, 11))
}

fn remote_buckets() -> Histogram {
    // 1 ms to 32 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn commit_buckets() -> Histogram {
    // 5 ms to 80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

static TIMINGS: LazyLock<Timings> = LazyLock::new(|| Timings {
    ops: Family::new_with_constructor(op_buckets as fn() -> Histogram),
    remote: Family::new_with_constructor(remote_buckets as fn() -> Histogram),
    commits: Family::new_with_constructor(commit_buckets as fn() -> Histogram),
});

pub fn timings() -> &'static Timings {
    &TIMINGS
}

/// Records one frontend operation's latency when dropped.
pub struct OpTimer {
    labels: OpLabels,
    start: Instant,
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        TIMINGS
            .ops
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Timings {
    /// Time a frontend operation until the returned timer is dropped.
    pub fn op(&self, frontend: &'static str, op: &'static str) -> OpTimer {
        OpTimer {
            labels: OpLabels { frontend, op },
            start: Instant::now(),
        }
    }

    /// A request to the remote took `elapsed` and was answered with `status` (`None`: no
    /// answer).
    pub fn remote(&self, route: &'static str, status: Option<u16>, elapsed: Duration) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.remote
            .get_or_create(&RemoteLabels { route, status })
            .observe(elapsed.as_secs_f64());
    }

    /// A batch commit (upload or composition of its files, then the catalog commit) ended.
    pub fn commit(&self, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "failed" };
        self.commits
            .get_or_create(&CommitLabels { outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// Add the histograms to `registry` (they stay shared with this process's recorders).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "xetmount_op_seconds",
            "Latency of filesystem operations as the frontend answered them",
            self.ops.clone(),
        );
        registry.register(
            "xetmount_remote_request_seconds",
            "Latency of HTTP requests to the remote bucket, by purpose and status",
            self.remote.clone(),
        );
        registry.register(
            "xetmount_commit_seconds",
            "Duration of batch commits: upload or composition of the batch's files and the catalog commit",
            self.commits.clone(),
        );
    }
}

/// Resident memory of this process, in bytes (0 where /proc is missing).
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .map_or(0, |p| p * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read() {
        assert!(rss_bytes() > 1 << 20);
    }

    #[test]
    fn histograms_encode_with_their_labels() {
        let t = timings();
        drop(t.op("fuse", "lookup"));
        t.remote("list", Some(200), Duration::from_millis(3));
        t.remote("list", None, Duration::from_millis(30));
        t.commit(true, Duration::from_millis(40));
        let mut reg = Registry::default();
        t.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("xetmount_op_seconds_count{frontend=\"fuse\",op=\"lookup\"}"));
        assert!(
            out.contains("xetmount_remote_request_seconds_count{route=\"list\",status=\"200\"}")
        );
        assert!(
            out.contains("xetmount_remote_request_seconds_count{route=\"list\",status=\"error\"}")
        );
        assert!(out.contains("xetmount_commit_seconds_count{outcome=\"ok\"}"));
        assert!(out.ends_with("# EOF\n"));
    }
}
