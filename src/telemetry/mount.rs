//! A mount's counters and gauges, read from its VFS at scrape time.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::vfs::Vfs;

/// Registers as a collector: every scrape reads the VFS's `Stats`, what is pending and the
/// process's memory.
pub struct MountCollector {
    vfs: Arc<Vfs>,
}

impl MountCollector {
    pub fn new(vfs: Arc<Vfs>) -> Self {
        MountCollector { vfs }
    }
}

impl std::fmt::Debug for MountCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MountCollector")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn age_secs(t: Option<SystemTime>) -> f64 {
    t.and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for MountCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.vfs.stats();
        let counters: [(&str, &str, u64); 15] = [
            (
                "xetmount_fetched_bytes",
                "Bytes read from the store (cache misses, hole fills)",
                s.bytes_fetched,
            ),
            (
                "xetmount_compose_base_read_bytes",
                "Bytes of old bodies read by compositions to re-chunk around edits",
                s.compose_base_bytes_read,
            ),
            (
                "xetmount_compose_dirty_chunk_bytes",
                "Edits rounded out to the chunks they touch",
                s.compose_dirty_chunk_bytes,
            ),
            (
                "xetmount_uploaded_new_bytes",
                "Bytes of new chunk data uploaded (after dedup)",
                s.bytes_uploaded_new,
            ),
            (
                "xetmount_files_uploaded",
                "Files committed by uploading their whole body",
                s.files_uploaded,
            ),
            (
                "xetmount_files_composed",
                "Files committed by composing the old body with the edits",
                s.files_composed,
            ),
            (
                "xetmount_compose_fallbacks",
                "Compositions done by a whole upload instead",
                s.compose_fallbacks,
            ),
            (
                "xetmount_flush_commits",
                "Catalog commits made by flushes",
                s.flush_commits,
            ),
            (
                "xetmount_flush_failures",
                "Flush attempts that failed (each is retried)",
                s.flush_failures,
            ),
            (
                "xetmount_commit_verify_failures",
                "Paranoid mode: commits that did not read back as committed",
                s.commit_verify_failures,
            ),
            (
                "xetmount_staging_evictions",
                "Clean staging copies evicted to stay within --max-staging-size",
                s.staging_evictions,
            ),
            (
                "xetmount_remote_changes",
                "Entries changed by other writers and applied here",
                s.remote_changes,
            ),
            (
                "xetmount_remote_overwrites",
                "Commits that replaced another writer's newer version (last writer wins)",
                s.remote_overwrites,
            ),
            (
                "xetmount_remote_conflicts",
                "Commits refused because another writer replaced the file",
                s.remote_conflicts,
            ),
            (
                "xetmount_listings_dropped",
                "Directory listings dropped to stay within --inode-soft-limit",
                s.listings_dropped,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut e, name, help, v)?;
        }
        let p = self.vfs.pending();
        let (cache, staging) = self.vfs.cache_usage();
        let gauges: [(&str, &str, f64); 13] = [
            (
                "xetmount_pending_files",
                "Files whose content the store does not hold yet",
                p.files as f64,
            ),
            (
                "xetmount_pending_bytes",
                "Bytes of those files the store lacks",
                p.bytes as f64,
            ),
            (
                "xetmount_pending_namespace_changes",
                "1 while creates, renames or removals wait for their commit",
                f64::from(u8::from(p.namespace_changes)),
            ),
            (
                "xetmount_pending_oldest_seconds",
                "How long the longest-waiting pending file has waited (0: none)",
                age_secs(p.oldest),
            ),
            (
                "xetmount_last_error_timestamp_seconds",
                "Unix time of the last failed commit attempt (0: none)",
                p.last_error
                    .as_ref()
                    .and_then(|e| e.at.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0.0, |d| d.as_secs_f64()),
            ),
            (
                "xetmount_read_cache_bytes",
                "Bytes the read cache holds (landed and in flight)",
                cache as f64,
            ),
            (
                "xetmount_staging_bytes",
                "Disk space the staging files occupy",
                staging as f64,
            ),
            (
                "xetmount_inodes",
                "Entries in the inode table",
                s.inodes as f64,
            ),
            (
                "xetmount_remote_revision",
                "The catalog revision this mount is up to date with",
                s.remote_revision as f64,
            ),
            (
                "xetmount_since_last_poll_seconds",
                "Seconds since the remote was last asked for changes (0: change detection off)",
                s.since_last_poll_ms as f64 / 1000.0,
            ),
            (
                "xetmount_compose_terms_max",
                "Most terms a composed body has had",
                s.compose_terms_max as f64,
            ),
            (
                "xetmount_invalidations_pending",
                "Kernel cache invalidations not yet sent",
                s.pending_invalidations as f64,
            ),
            (
                "xetmount_resident_memory_bytes",
                "Resident memory of the mount process",
                crate::telemetry::rss_bytes() as f64,
            ),
        ];
        for (name, help, v) in gauges {
            gauge(&mut e, name, help, v)?;
        }
        Ok(())
    }
}
