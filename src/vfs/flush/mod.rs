//! Flushing staged files to the store: a debounced queue and a background flusher that runs
//! due files in batches (several batches in flight, so one slow store call does not hold back
//! other files), retries failures with backoff and records them for the files' writers.
//!
//! - `batch.rs`: one batch: prepare, upload/compose, commit, settle.
//! - `conflict.rs`: a commit refused because another writer replaced a file (compare-and-swap).
//! - `failure.rs`: what a failure was, for the log and for the writers it is reported to.
//! - `sync.rs`: what callers wait for: `fsync` of a file, the commit of everything at exit.
//! - `verify.rs`: paranoid mode's read-back of every commit.
//!
//! # Locks held here (their place in the whole order is in `vfs/mod.rs`)
//!
//! - `Staged::flush_lock` (tokio, per inode): one flush of an inode at a time; several are
//!   taken in ascending inode order. Taken first of all.
//! - `commit_lock` (tokio): one catalog commit at a time, so pending namespace ops reach the
//!   catalog in order. Held across the commit; taken before the namespace lock, never while
//!   holding it.
//! - `own_revisions` and the queue's locks (std): taken alone, never across an `.await`.

mod batch;
mod conflict;
mod failure;
mod sync;
mod verify;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

pub(in crate::vfs) use batch::FlushResult;

use crate::remote::{Cas, Catalog};
use crate::vfs::namespace::inode::{FlushError, Ino};
use crate::vfs::namespace::{Drain, Namespace};
use crate::vfs::write::WritePath;
use crate::vfs::{Stats, VfsResult};

/// Stands for the pending namespace changes in the flush queue and in flush results (no inode
/// has number 0).
pub(in crate::vfs) const NS_INO: Ino = 0;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Also the retry interval after a permanent failure: the data is kept and retried now and
/// then (and at once when the file is written or synced again), but the store is not hammered.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Most files in one batch (one upload session, one catalog commit).
const MAX_BATCH: usize = 1024;
/// Batches the background flusher runs at once.
const BATCHES_IN_FLIGHT: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to commit: the store already holds this content (or the file is gone).
    Clean,
    /// The content was committed.
    Committed,
    /// The file changed during the flush; flush it again.
    Retry,
}

/// The queued files: when each falls due and when it first queued, and the same ordered by due
/// time (the flusher takes from the front; both always hold the same files).
#[derive(Default)]
struct Due {
    times: HashMap<Ino, (Instant, Instant)>,
    order: BTreeSet<(Instant, Ino)>,
}

impl Due {
    /// Queue (or requeue) `ino` due at `at`; returns whether it is now the earliest.
    fn insert(&mut self, ino: Ino, at: Instant, first: Instant) -> bool {
        if let Some((old, _)) = self.times.insert(ino, (at, first)) {
            self.order.remove(&(old, ino));
        }
        self.order.insert((at, ino));
        self.order.first() == Some(&(at, ino))
    }
}

/// Files waiting for their debounce to expire.
pub(in crate::vfs) struct FlushQueue {
    debounce: Duration,
    /// A file closed again and again is still flushed this long after it first queued.
    max_window: Duration,
    due: Mutex<Due>,
    /// The current retry delay of files whose last flush failed, and whether it failed for
    /// good (the store refused it).
    backoff: Mutex<HashMap<Ino, (Duration, bool)>>,
    wake: Notify,
    stopped: AtomicBool,
    /// Staging is full: the next batch goes now, whatever its due time (`write/gc.rs`).
    hurried: AtomicBool,
}

impl FlushQueue {
    pub fn new(debounce: Duration, max_window: Duration) -> Arc<Self> {
        Arc::new(FlushQueue {
            debounce,
            max_window,
            due: Mutex::new(Due::default()),
            backoff: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            hurried: AtomicBool::new(false),
        })
    }

    /// Flush `ino` once it has been quiet for the debounce time.
    pub fn schedule(&self, ino: Ino) {
        self.schedule_at(ino, Instant::now() + self.debounce);
    }

    fn schedule_at(&self, ino: Ino, at: Instant) {
        let now = Instant::now();
        let mut g = self.due.lock();
        let first = g.times.get(&ino).map_or(now, |(_, first)| *first);
        let earliest = g.insert(ino, at.min(first + self.max_window), first);
        drop(g);
        // The flusher sleeps until the earliest due time; it needs waking only for an earlier one.
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Retry `ino` at `at` (a backoff: the batch window does not shorten it).
    fn retry_at(&self, ino: Ino, at: Instant) {
        if self.due.lock().insert(ino, at, at) {
            self.wake.notify_one();
        }
    }

    /// Commit now: the next batch (the files due first) is taken at once instead of after
    /// its debounce. For writers waiting for room in a full staging area.
    pub fn hurry(&self) {
        self.hurried.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Remove and return the files of the next batch, and when the next one falls due. Once
    /// a file is due, files due within a quarter of the debounce join it, so that thousands
    /// of files closed one after another (an untar, a dataset export) go out in a few large
    /// batches instead of one per wake-up; a batch holds at most [`MAX_BATCH`] files.
    fn take_due(&self, now: Instant) -> (Vec<Ino>, Option<Instant>) {
        let mut g = self.due.lock();
        let hurried = self.hurried.swap(false, Ordering::SeqCst);
        if !hurried && g.order.first().is_none_or(|(t, _)| *t > now) {
            return (Vec::new(), g.order.first().map(|(t, _)| *t));
        }
        let horizon = match g.order.last() {
            Some((last, _)) if hurried => (*last).max(now),
            _ => now + self.debounce / 4,
        };
        let mut due = Vec::new();
        while due.len() < MAX_BATCH {
            match g.order.first() {
                Some(&(t, ino)) if t <= horizon => {
                    g.order.pop_first();
                    g.times.remove(&ino);
                    due.push(ino);
                }
                _ => break,
            }
        }
        (due, g.order.first().map(|(t, _)| *t))
    }

    /// How long until `ino` falls due, if it is queued.
    #[cfg(test)]
    pub fn due_in(&self, ino: Ino) -> Option<Duration> {
        let g = self.due.lock();
        g.times
            .get(&ino)
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
    }

    /// The delay before retrying a file that just failed.
    fn next_backoff(&self, ino: Ino, permanent: bool) -> Duration {
        let mut g = self.backoff.lock();
        let b = if permanent {
            BACKOFF_MAX
        } else {
            g.get(&ino)
                .map_or(BACKOFF_MIN, |(b, _)| (*b * 2).min(BACKOFF_MAX))
        };
        g.insert(ino, (b, permanent));
        b
    }

    /// Whether the last flush of `ino` was refused for good: other paths that would commit
    /// it (the refresher draining the namespace changes) leave it to the flusher's backoff.
    pub fn refused(&self, ino: Ino) -> bool {
        self.backoff.lock().get(&ino).is_some_and(|(_, p)| *p)
    }
}

/// How flushes behave, from the mount's configuration.
#[derive(Clone, Debug)]
pub(in crate::vfs) struct FlushSettings {
    /// Limit for one store call, stretched by the bytes it carries (`batch.rs`).
    pub write_timeout: Duration,
    /// Read every commit back and drop clean copies (`verify.rs`).
    pub paranoid: bool,
    /// Named in the log for what stays journaled.
    pub staging_dir: PathBuf,
}

/// Commits staged files and pending namespace changes to the store: in the background as
/// they fall due, and at once for `fsync`, listings and exit.
pub(in crate::vfs) struct Flusher {
    catalog: Arc<dyn Catalog>,
    cas: Arc<dyn Cas>,
    ns: Arc<Namespace>,
    files: Arc<WritePath>,
    queue: Arc<FlushQueue>,
    stats: Arc<Stats>,
    settings: FlushSettings,
    commit_lock: tokio::sync::Mutex<()>,
    /// Odd while a catalog commit is in flight or its result is not yet in the table, bumped
    /// again once it is: a refresh whose listing spans a change of it may mistake this
    /// mount's own commit for another writer's, and tries again.
    commit_epoch: AtomicU64,
    /// Revisions this mount's own commits produced that the change feed has not reported
    /// yet: the refresher skips what only they changed.
    own_revisions: Mutex<BTreeSet<u64>>,
}

impl Flusher {
    #[allow(clippy::too_many_arguments)]
    pub(in crate::vfs) fn new(
        catalog: Arc<dyn Catalog>,
        cas: Arc<dyn Cas>,
        ns: Arc<Namespace>,
        files: Arc<WritePath>,
        queue: Arc<FlushQueue>,
        stats: Arc<Stats>,
        settings: FlushSettings,
    ) -> Arc<Self> {
        let f = Arc::new(Flusher {
            catalog,
            cas,
            ns,
            files,
            queue,
            stats,
            settings,
            commit_lock: tokio::sync::Mutex::new(()),
            commit_epoch: AtomicU64::new(0),
            own_revisions: Mutex::default(),
        });
        let drainer: Weak<dyn Drain> = Arc::downgrade(&f) as Weak<dyn Drain>;
        f.ns.set_drainer(drainer);
        f
    }

    pub(in crate::vfs) fn queue(&self) -> &Arc<FlushQueue> {
        &self.queue
    }

    /// The commit epoch (see the field): odd while a commit is in flight.
    pub(in crate::vfs) fn commit_epoch(&self) -> u64 {
        self.commit_epoch.load(Ordering::SeqCst)
    }

    /// Whether every revision after `since` up to `revision` is one of this mount's own
    /// commits (forgetting those up to `revision`). A commit in flight is waited for first (it
    /// may be the one the feed reports, its answer not in yet); past `wait` the answer is no.
    pub(in crate::vfs) async fn only_own_commits(
        &self,
        since: u64,
        revision: u64,
        wait: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while self.commit_epoch() % 2 == 1 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut own = self.own_revisions.lock();
        let all = all_own(&own, since, revision);
        *own = own.split_off(&(revision + 1));
        all
    }

    /// Run due files in batches in the background until the queue is stopped or the
    /// flusher dropped.
    pub(in crate::vfs) fn spawn(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let queue = self.queue.clone();
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        tokio::spawn(async move {
            loop {
                let wake = queue.wake.notified();
                tokio::pin!(wake);
                wake.as_mut().enable();
                if queue.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let (due, next) = queue.take_due(Instant::now());
                if due.is_empty() {
                    match next {
                        Some(at) => {
                            tokio::select! {
                                _ = wake => {}
                                _ = tokio::time::sleep_until(at) => {}
                            }
                        }
                        None => wake.await,
                    }
                    continue;
                }
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(f) = weak.upgrade() else { return };
                tokio::spawn(async move {
                    let results = f.flush_batch(&due).await;
                    f.files.collect_staging();
                    f.settle(results);
                    drop(slot);
                });
            }
        });
    }

    /// After a background flush: reschedule what changed meanwhile, back off and record what
    /// failed (for the next `close`/`fsync` of the file's writers).
    fn settle(&self, results: Vec<(Ino, FlushResult)>) {
        let queue = &self.queue;
        for (ino, r) in results {
            match r {
                Ok(Outcome::Retry) => queue.schedule(ino),
                Ok(_) => {
                    queue.backoff.lock().remove(&ino);
                }
                Err(f) => {
                    let b = queue.next_backoff(ino, f.permanent);
                    let at = self.ns.next_event();
                    let path = {
                        let mut t = self.ns.table();
                        let path = match ino {
                            NS_INO => "(namespace changes)".into(),
                            _ => t.path_of(ino).unwrap_or_else(|_| "(unlinked)".into()),
                        };
                        if let Ok(i) = t.get_mut(ino) {
                            i.flush_error = Some(FlushError {
                                errno: f.errno,
                                at,
                                conflict: f.conflict,
                            });
                        }
                        path
                    };
                    let shown = match ino {
                        NS_INO => path.clone(),
                        _ => format!("/{path}"),
                    };
                    self.stats.note_error(&shown, f.to_string());
                    if f.permanent {
                        tracing::error!(
                            ino,
                            "cannot commit /{path}: {f}; the data is kept in staging and retried every {b:?}"
                        );
                    } else {
                        tracing::warn!(ino, "cannot commit /{path} yet: {f}; retrying in {b:?}");
                    }
                    queue.retry_at(ino, Instant::now() + b);
                }
            }
        }
    }
}

#[async_trait]
impl Drain for Flusher {
    async fn drain(&self) -> VfsResult<()> {
        for (ino, r) in self.flush_batch(&[NS_INO]).await {
            if ino == NS_INO {
                r.map_err(|f| f.errno)?;
            }
        }
        Ok(())
    }
}

/// Whether `own` holds every revision in `since + 1..=revision` (catalog revisions count
/// commits one by one, so any other writer's commit in that span is one missing from it).
fn all_own(own: &BTreeSet<u64>, since: u64, revision: u64) -> bool {
    revision > since
        && revision - since <= own.len() as u64
        && (since + 1..=revision).all(|r| own.contains(&r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_own_only_if_every_revision_in_it_is() {
        let own = [5, 6, 8].into_iter().collect();
        assert!(all_own(&own, 4, 6));
        assert!(all_own(&own, 5, 6));
        assert!(all_own(&own, 7, 8));
        // Another writer's revision 7 between two of ours.
        assert!(!all_own(&own, 4, 8));
        assert!(!all_own(&own, 6, 8));
        // Before ours, or nothing new.
        assert!(!all_own(&own, 3, 6));
        assert!(!all_own(&own, 6, 6));
        assert!(!all_own(&Default::default(), 4, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_closed_again_and_again_still_falls_due_within_the_window() {
        let q = FlushQueue::new(Duration::from_secs(10), Duration::from_secs(30));
        let start = Instant::now();
        // Closed every 5 s: the debounce alone would never expire.
        for _ in 0..6 {
            q.schedule(7);
            q.schedule(8);
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        assert!(q.take_due(start + Duration::from_secs(29)).0.is_empty());
        let (mut due, next) = q.take_due(start + Duration::from_secs(30));
        due.sort_unstable();
        assert_eq!(due, vec![7, 8], "both fall due together, for one batch");
        assert_eq!(next, None);
        // A quiet file falls due after the debounce.
        q.schedule(9);
        let t = Instant::now();
        assert!(q.take_due(t + Duration::from_secs(9)).0.is_empty());
        assert_eq!(q.take_due(t + Duration::from_secs(10)).0, vec![9]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hurried_queue_hands_out_its_next_batch_before_it_falls_due() {
        let q = FlushQueue::new(Duration::from_secs(600), Duration::from_secs(600));
        for ino in 1..=3 {
            q.schedule(ino);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(q.take_due(Instant::now()).0.is_empty());
        q.hurry();
        assert_eq!(q.take_due(Instant::now()).0, vec![1, 2, 3]);
        // Once only: what is queued later waits for its debounce again.
        q.schedule(4);
        assert!(q.take_due(Instant::now()).0.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn files_closed_one_after_another_share_a_batch() {
        let q = FlushQueue::new(Duration::from_secs(2), Duration::from_secs(30));
        let start = Instant::now();
        // A file closed every 10 ms: the first falls due at 2 s, those closed within the next
        // 0.5 s join it; the rest wait for their own batch.
        for ino in 1..=100 {
            q.schedule(ino);
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(q.take_due(start + Duration::from_millis(1999)).0.is_empty());
        let (first, next) = q.take_due(start + Duration::from_secs(2));
        assert_eq!(first, (1..=51).collect::<Vec<_>>());
        assert_eq!(next, Some(start + Duration::from_millis(2510)));
        let (second, _) = q.take_due(start + Duration::from_millis(2510));
        assert_eq!(second, (52..=100).collect::<Vec<_>>());
    }
}

/// The flusher alone, over the in-memory remote: no `Vfs`, no mount, no background task;
/// each flush is driven by the test.
#[cfg(test)]
mod part_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::remote::mem::{MemCas, MemCatalog};
    use crate::remote::EntryKind;
    use crate::vfs::namespace::inode::ROOT_INO;
    use crate::vfs::namespace::log::NsLog;
    use crate::vfs::readcache::ReadCache;
    use crate::vfs::write::staging::StagingArea;
    use crate::vfs::write::Budget;
    use crate::vfs::Caller;

    struct Parts {
        catalog: Arc<MemCatalog>,
        cas: Arc<MemCas>,
        ns: Arc<Namespace>,
        files: Arc<WritePath>,
        flusher: Arc<Flusher>,
        stats: Arc<Stats>,
        _dir: tempfile::TempDir,
    }

    async fn parts() -> Parts {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(MemCatalog::posix());
        let cas = Arc::new(MemCas::new());
        let stats = Arc::new(Stats::default());
        let area = Arc::new(StagingArea::open(dir.path()).unwrap());
        let (log, left) = NsLog::open(dir.path()).unwrap();
        assert!(left.is_empty());
        let queue = FlushQueue::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let root = catalog.head("").await.unwrap().unwrap();
        let ns = Namespace::new(
            catalog.clone(),
            root,
            log,
            area.clone(),
            queue.clone(),
            stats.clone(),
            false,
        );
        let cache = Arc::new(ReadCache::new(
            cas.clone(),
            stats.clone(),
            16 << 10,
            8 << 20,
            2 << 20,
            Duration::from_secs(60),
        ));
        let budget = Budget {
            bytes: 0,
            files: 100,
            wait: Duration::from_secs(60),
        };
        let files = Arc::new(WritePath::new(
            ns.clone(),
            area,
            cache,
            queue.clone(),
            stats.clone(),
            budget,
        ));
        let settings = FlushSettings {
            write_timeout: Duration::from_secs(60),
            paranoid: false,
            staging_dir: dir.path().to_path_buf(),
        };
        let flusher = Flusher::new(
            catalog.clone(),
            cas.clone(),
            ns.clone(),
            files.clone(),
            queue,
            stats.clone(),
            settings,
        );
        Parts {
            catalog,
            cas,
            ns,
            files,
            flusher,
            stats,
            _dir: dir,
        }
    }

    const ME: Caller = Caller { uid: 0, gid: 0 };

    #[tokio::test]
    async fn a_batch_commits_namespace_changes_and_bodies_together_and_a_small_edit_composes() {
        let p = parts().await;
        let ino =
            p.ns.create_entry(ROOT_INO, "f.bin", EntryKind::File, 0o644, None, ME)
                .await
                .unwrap();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        p.files.write(ino, 0, body.clone()).await.unwrap();
        // Local first: nothing reached the catalog yet.
        assert!(p.catalog.head("f.bin").await.unwrap().is_none());
        assert_eq!(p.files.dirty_inodes(), vec![ino]);

        let results = p.flusher.flush_batch(&[ino]).await;
        let committed = |ino| {
            results
                .iter()
                .any(|(i, r)| *i == ino && matches!(r, Ok(Outcome::Committed)))
        };
        assert!(committed(ino) && committed(NS_INO), "{results:?}");
        assert!(p.files.dirty_inodes().is_empty());
        let stored = p.catalog.head("f.bin").await.unwrap().unwrap();
        let id = stored.content.clone().unwrap();
        let back = p.cas.read_range(&id, 0..id.size).await.unwrap();
        assert!(back[..] == body[..], "the stored body differs");

        // Once the clean copy is gone (as the staging budget would drop it), a 4 KiB edit
        // stages sparse and is composed from the old body, not uploaded whole.
        p.files.drop_clean_staging(ino);
        p.files
            .write(ino, 1_000_000, vec![0xEE; 4096])
            .await
            .unwrap();
        let results = p.flusher.flush_batch(&[ino]).await;
        assert!(
            matches!(results[..], [(i, Ok(Outcome::Committed))] if i == ino),
            "{results:?}"
        );
        let snap = p.stats.snapshot();
        assert_eq!((snap.files_composed, snap.compose_fallbacks), (1, 0));
        let mut expect = body;
        expect[1_000_000..1_004_096].fill(0xEE);
        let id = p
            .catalog
            .head("f.bin")
            .await
            .unwrap()
            .unwrap()
            .content
            .unwrap();
        let back = p.cas.read_range(&id, 0..id.size).await.unwrap();
        assert!(back[..] == expect[..], "the composed body differs");
    }
}
