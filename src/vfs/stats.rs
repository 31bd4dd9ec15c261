//! Per-mount counters. Tests and benchmarks read them to prove what crossed the wire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

#[derive(Default, Debug)]
pub struct Stats {
    /// Bytes read from the CAS (cache misses and hole fills).
    pub bytes_fetched: AtomicU64,
    /// Bytes of base read by compositions to re-chunk around edits.
    pub compose_base_bytes_read: AtomicU64,
    /// Compositions' edits rounded out to the base chunks they touch.
    pub compose_dirty_chunk_bytes: AtomicU64,
    /// Terms of the body the last composition stored, and the most any composition stored:
    /// how fragmented repeated edits leave a file (bounded by the defragmentation rule).
    pub compose_terms_last: AtomicU64,
    pub compose_terms_max: AtomicU64,
    /// Bytes of new chunk data stored by uploads (after dedup).
    pub bytes_uploaded_new: AtomicU64,
    /// Files committed by uploading their whole body.
    pub files_uploaded: AtomicU64,
    /// Files committed by composing the old body with the edits.
    pub files_composed: AtomicU64,
    /// Compositions the store could not do, done by reading the base and uploading the new
    /// body whole (counted in `files_composed` too).
    pub compose_fallbacks: AtomicU64,
    /// Catalog commits made by flushes.
    pub flush_commits: AtomicU64,
    /// Flush attempts that failed (each retried).
    pub flush_failures: AtomicU64,
    /// Paranoid mode: committed bodies that did not read back as committed.
    pub commit_verify_failures: AtomicU64,
    /// Disk space staging files occupied at the last collection (allocated blocks); collected
    /// only under a `--max-staging-size` budget.
    pub staging_bytes: AtomicU64,
    /// Clean staging copies evicted to stay within `--max-staging-size`.
    pub staging_evictions: AtomicU64,
    /// The catalog revision this mount's view is up to date with (other writers' changes).
    pub remote_revision: AtomicU64,
    /// Entries added, removed or changed by other writers and applied here.
    pub remote_changes: AtomicU64,
    /// Kernel cache invalidations queued to the frontend and not yet sent.
    pub pending_invalidations: AtomicU64,
    /// Commits that replaced a version another writer had committed after this mount's base
    /// (last writer wins; each is logged with both identities).
    pub remote_overwrites: AtomicU64,
    /// Commits refused because another writer replaced the file; the version moved aside.
    pub remote_conflicts: AtomicU64,
    /// Entries in the inode table.
    pub inodes: AtomicU64,
    /// Directory listings dropped to keep the inode table within `--inode-soft-limit`.
    pub listings_dropped: AtomicU64,
    /// When the catalog was last asked for changes successfully (unix ms).
    last_refresh_ms: AtomicU64,
    /// The most recent failed commit attempt.
    last_error: Mutex<Option<LastError>>,
}

/// A commit that failed: of which file (or the namespace changes), why, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastError {
    pub at: SystemTime,
    /// `/path`, or `(namespace changes)`.
    pub path: String,
    pub message: String,
}

/// What this mount holds that the store does not (`Vfs::pending`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Files whose content differs from the store's.
    pub files: usize,
    /// Their bytes the store lacks: whole new files, the edited ranges of the others.
    pub bytes: u64,
    /// Whether namespace changes (creates, renames, removals) wait for their commit.
    pub namespace_changes: bool,
    /// When the longest-waiting of those files started to differ.
    pub oldest: Option<SystemTime>,
    /// The most recent failed commit attempt (it may have succeeded since, on a retry).
    pub last_error: Option<LastError>,
}

impl Pending {
    /// Nothing waits for the store.
    pub fn is_empty(&self) -> bool {
        self.files == 0 && !self.namespace_changes
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A point-in-time copy of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub bytes_fetched: u64,
    pub compose_base_bytes_read: u64,
    pub compose_dirty_chunk_bytes: u64,
    pub compose_terms_last: u64,
    pub compose_terms_max: u64,
    pub bytes_uploaded_new: u64,
    pub files_uploaded: u64,
    pub files_composed: u64,
    pub compose_fallbacks: u64,
    pub flush_commits: u64,
    pub flush_failures: u64,
    pub commit_verify_failures: u64,
    pub staging_bytes: u64,
    pub staging_evictions: u64,
    pub remote_revision: u64,
    pub remote_changes: u64,
    pub pending_invalidations: u64,
    pub remote_overwrites: u64,
    pub remote_conflicts: u64,
    pub inodes: u64,
    pub listings_dropped: u64,
    /// Milliseconds since the catalog was last asked for changes successfully (0: change
    /// detection is off).
    pub since_last_poll_ms: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// A commit of `path` failed with `message`.
    pub fn note_error(&self, path: &str, message: String) {
        *self.last_error.lock() = Some(LastError {
            at: SystemTime::now(),
            path: path.to_string(),
            message,
        });
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().clone()
    }

    /// The catalog was just asked for changes successfully.
    pub fn note_refresh(&self) {
        self.last_refresh_ms.store(unix_ms(), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            bytes_fetched: g(&self.bytes_fetched),
            compose_base_bytes_read: g(&self.compose_base_bytes_read),
            compose_dirty_chunk_bytes: g(&self.compose_dirty_chunk_bytes),
            compose_terms_last: g(&self.compose_terms_last),
            compose_terms_max: g(&self.compose_terms_max),
            bytes_uploaded_new: g(&self.bytes_uploaded_new),
            files_uploaded: g(&self.files_uploaded),
            files_composed: g(&self.files_composed),
            compose_fallbacks: g(&self.compose_fallbacks),
            flush_commits: g(&self.flush_commits),
            flush_failures: g(&self.flush_failures),
            commit_verify_failures: g(&self.commit_verify_failures),
            staging_bytes: g(&self.staging_bytes),
            staging_evictions: g(&self.staging_evictions),
            remote_revision: g(&self.remote_revision),
            remote_changes: g(&self.remote_changes),
            pending_invalidations: g(&self.pending_invalidations),
            remote_overwrites: g(&self.remote_overwrites),
            remote_conflicts: g(&self.remote_conflicts),
            inodes: g(&self.inodes),
            listings_dropped: g(&self.listings_dropped),
            since_last_poll_ms: match g(&self.last_refresh_ms) {
                0 => 0,
                at => unix_ms().saturating_sub(at),
            },
        }
    }
}

impl StatsSnapshot {
    /// `key value` lines, the format of the stats file.
    pub fn to_text(&self) -> String {
        let fields = [
            ("bytes_fetched", self.bytes_fetched),
            ("compose_base_bytes_read", self.compose_base_bytes_read),
            ("compose_dirty_chunk_bytes", self.compose_dirty_chunk_bytes),
            ("compose_terms_last", self.compose_terms_last),
            ("compose_terms_max", self.compose_terms_max),
            ("bytes_uploaded_new", self.bytes_uploaded_new),
            ("files_uploaded", self.files_uploaded),
            ("files_composed", self.files_composed),
            ("compose_fallbacks", self.compose_fallbacks),
            ("flush_commits", self.flush_commits),
            ("flush_failures", self.flush_failures),
            ("commit_verify_failures", self.commit_verify_failures),
            ("staging_bytes", self.staging_bytes),
            ("staging_evictions", self.staging_evictions),
            ("remote_revision", self.remote_revision),
            ("remote_changes", self.remote_changes),
            ("pending_invalidations", self.pending_invalidations),
            ("remote_overwrites", self.remote_overwrites),
            ("remote_conflicts", self.remote_conflicts),
            ("inodes", self.inodes),
            ("listings_dropped", self.listings_dropped),
            ("since_last_poll_ms", self.since_last_poll_ms),
        ];
        fields.iter().map(|(k, v)| format!("{k} {v}\n")).collect()
    }
}
