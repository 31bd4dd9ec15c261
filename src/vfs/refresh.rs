//! Other writers' changes: following the catalog (its change feed where it has one, else
//! polling its revision), bringing the listed directories in line (`InodeTable::reconcile`),
//! and telling the frontend which kernel caches to drop.
//!
//! A directory is refreshed only when the catalog holds every namespace change of this mount
//! (it waits for the namespace flush a few times, then commits pending changes itself) and no
//! commit of this mount was in flight or landed between the listing and its use; otherwise it
//! is tried again, within 2 s. Kernel invalidations are queued to the frontend,
//! never sent while a VFS lock is held (the kernel may call back into the file system while
//! it handles one).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;

use crate::remote::{Catalog, Changes, EntryKind, Meta};
use crate::vfs::flush::{Flusher, NS_INO};
use crate::vfs::handles::Handles;
use crate::vfs::namespace::inode::Ino;
use crate::vfs::namespace::Namespace;
use crate::vfs::write::staging::Staged;
use crate::vfs::write::WritePath;
use crate::vfs::{Errno, Stats, VfsResult};

/// How long one change-feed request waits for a change.
const FEED_WAIT: Duration = Duration::from_secs(25);
/// Directories listed at once by a refresh.
const CONCURRENCY: usize = 8;
/// Waits after a failed feed or poll request, doubling up to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(60));
/// Wait before retrying directories whose refresh raced with a local change or met a file
/// open for writing, doubling up to `RETRY_MAX`: these are local conditions that pass, and
/// the mount should follow other writers within seconds once they do.
const RETRY: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Longest the refresher waits for a commit of this mount in flight before deciding whether
/// a change is its own.
const OWN_COMMIT_WAIT: Duration = Duration::from_secs(5);

/// Follows other writers' changes into the namespace.
pub(in crate::vfs) struct Refresher {
    catalog: Arc<dyn Catalog>,
    ns: Arc<Namespace>,
    files: Arc<WritePath>,
    flusher: Arc<Flusher>,
    handles: Arc<Handles>,
    stats: Arc<Stats>,
    /// How often to poll a catalog without a change feed; zero: not at all.
    poll_interval: Duration,
}

impl Refresher {
    pub(in crate::vfs) fn new(
        ns: Arc<Namespace>,
        files: Arc<WritePath>,
        flusher: Arc<Flusher>,
        handles: Arc<Handles>,
        stats: Arc<Stats>,
        poll_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Refresher {
            catalog: ns.catalog().clone(),
            ns,
            files,
            flusher,
            handles,
            stats,
            poll_interval,
        })
    }

    /// Follow other writers' changes from revision `since` (off when the poll interval is 0).
    pub(in crate::vfs) fn spawn(self: &Arc<Self>, since: u64) {
        if self.poll_interval.is_zero() {
            return;
        }
        Stats::set(&self.stats.remote_revision, since);
        self.stats.note_refresh();
        tokio::spawn(follow(Arc::downgrade(self), since));
    }

    /// Refresh the listed directories among `dirs`; returns those to try again. With
    /// `drain`, pending namespace changes of this mount are committed first; without, a
    /// directory waits for them (a busy mount's own commits, echoed by the change feed, must
    /// not cut its namespace batching short).
    async fn refresh(&self, dirs: Vec<String>, drain: bool) -> Vec<String> {
        let mut again = Vec::new();
        let mut results = futures::stream::iter(dirs)
            .map(|d| async move {
                let r = self.refresh_dir(&d, drain).await;
                (d, r)
            })
            .buffer_unordered(CONCURRENCY);
        while let Some((d, r)) = results.next().await {
            match r {
                Ok(()) => {}
                Err(e) => {
                    if e != Errno::EAGAIN {
                        tracing::debug!("refresh of /{d} failed ({e:?}); trying again");
                    }
                    again.push(d);
                }
            }
        }
        again
    }

    /// Bring directory `path` in line with the catalog, if it is listed here.
    async fn refresh_dir(&self, path: &str, drain: bool) -> VfsResult<()> {
        if self.ns.table().listed_dir_at(path).is_none() {
            return Ok(());
        }
        if drain && !self.flusher.queue().refused(NS_INO) {
            self.ns.drain().await?;
        } else if !self.ns.log().is_empty() {
            return Err(Errno::EAGAIN);
        }
        let epoch = self.flusher.commit_epoch();
        let entries = self.catalog.list_dir(path).await?;
        let dir = self.ns.table().listed_dir_at(path).ok_or(Errno::EAGAIN)?;
        let retry = self.drop_stale_copies(dir, &entries);
        let caps = self.catalog.capabilities();
        let fixed = caps.fixed_owner.is_some();
        let same_meta = |a: &Meta, b: &Meta| {
            if fixed {
                // Only the mtime is kept, in milliseconds.
                a.mtime_ns.div_euclid(1_000_000) == b.mtime_ns.div_euclid(1_000_000)
            } else {
                (a.mode, a.uid, a.gid, a.mtime_ns, a.ctime_ns)
                    == (b.mode, b.uid, b.gid, b.mtime_ns, b.ctime_ns)
            }
        };
        let done = {
            let _ns = self.ns.lock().await;
            if !self.ns.log().is_empty() || epoch % 2 == 1 || self.flusher.commit_epoch() != epoch {
                // A change of this mount is not in the listing yet, or a commit of it landed
                // in the store before the table shows it: this mount's own version would be
                // taken for another writer's.
                return Err(Errno::EAGAIN);
            }
            let mut t = self.ns.table();
            if t.listed_dir_at(path) != Some(dir) {
                return Err(Errno::EAGAIN);
            }
            let mut entries = entries;
            if fixed {
                // Such a catalog keeps no directory times: a listed directory's time (say, its
                // newest file's upload) is no change, and does not replace what this mount
                // shows (it made a mount's own commits look like other writers' changes).
                for e in entries.iter_mut().filter(|e| e.kind == EntryKind::Dir) {
                    let name = e.path.rsplit('/').next().unwrap_or("");
                    if let Some(i) = t.child(dir, name)?.and_then(|c| t.get(c).ok()) {
                        if i.is_dir() {
                            e.meta = i.meta;
                        }
                    }
                }
            }
            // A read-only mount made no directory of its own: one the listing lacks is gone.
            let keep_missing_dirs = !caps.empty_dirs && self.ns.check_writable().is_ok();
            t.reconcile(dir, entries, same_meta, keep_missing_dirs)?
        };
        if done.changed > 0 {
            tracing::debug!("/{path}: {} change(s) by other writers", done.changed);
        }
        Stats::add(&self.stats.remote_changes, done.changed);
        drop(done.reaped);
        for link in done.new_links {
            for other in self.catalog.link_paths(link).await? {
                let parent = other.rfind('/').map_or("", |i| &other[..i]);
                self.ns.ensure_path_listed(parent).await?;
            }
        }
        self.ns.invalidate(done.invalidations);
        if retry {
            return Err(Errno::EAGAIN);
        }
        Ok(())
    }

    /// Files of directory `dir` whose body changed in `entries` lose an idle clean staging
    /// copy first (its io lock before the table lock, as in gc): what keeps a copy then has
    /// changes of its own, a flush in progress, or an open handle. Returns whether a clean
    /// copy had to stay (the directory is tried again later).
    fn drop_stale_copies(&self, dir: Ino, entries: &[crate::remote::Entry]) -> bool {
        let stale: Vec<(Ino, Arc<Staged>)> = {
            let t = self.ns.table();
            entries
                .iter()
                .filter_map(|e| {
                    let name = e.path.rsplit('/').next()?;
                    let i = t.get(t.child(dir, name).ok()??).ok()?;
                    if i.remote == e.content {
                        return None;
                    }
                    Some((i.ino, i.staged()?.clone()))
                })
                .collect()
        };
        // A clean copy goes even while readers have the file open: the file then becomes an
        // orphan that keeps their version (from the store), and the name takes the new one,
        // so a file read again and again still follows other writers. A copy kept because a
        // flush is running or the file is open for writing is tried again later; a dirty one
        // is committed against its own base anyway.
        let mut retry = false;
        for (ino, s) in stale {
            let writers = self.handles.open_for_writing(ino);
            let forgotten = match s.flush_lock.try_lock() {
                Ok(_flushing) => self.files.forget_clean_copy(ino, &s, !writers),
                Err(_) => false,
            };
            retry |= !forgotten && !s.with_io(|io| io.state.is_dirty());
        }
        retry
    }
}

/// The refresher: the change feed while the catalog has one, else polling.
async fn follow(vfs: Weak<Refresher>, mut since: u64) {
    let Some(catalog) = vfs.upgrade().map(|v| v.catalog.clone()) else {
        return;
    };
    let mut backoff = BACKOFF.0;
    let mut retry_wait = RETRY;
    let mut pending: Vec<String> = Vec::new();
    loop {
        // The Vfs is not held while a request waits, so it can go away meanwhile.
        let wait = if pending.is_empty() {
            FEED_WAIT
        } else {
            Duration::ZERO
        };
        let answer = catalog.changes(since, wait).await;
        let Some(v) = vfs.upgrade() else { return };
        let (revision, dirs) = match answer {
            Ok(Some(Changes::Dirs { revision, dirs })) => (revision, dirs),
            Ok(Some(Changes::Reset { revision })) => (revision, v.ns.table().listed_dirs()),
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("change feed: {e}; trying again in {backoff:?}");
                drop(v);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        backoff = BACKOFF.0;
        // Directories only this mount's own commits changed show nothing new.
        let dirs = if !dirs.is_empty()
            && v.flusher
                .only_own_commits(since, revision, OWN_COMMIT_WAIT)
                .await
        {
            Vec::new()
        } else {
            dirs
        };
        pending.extend(dirs);
        pending.sort();
        pending.dedup();
        // Pending this long: stop waiting for the namespace flush.
        let drain = retry_wait >= RETRY_MAX;
        pending = v.refresh(std::mem::take(&mut pending), drain).await;
        since = revision;
        Stats::set(&v.stats.remote_revision, revision);
        v.stats.note_refresh();
        drop(v);
        if pending.is_empty() {
            retry_wait = RETRY;
        } else {
            // Files held open keep a directory pending: back off while they are.
            tracing::debug!("refresh of {pending:?} to be tried again in {retry_wait:?}");
            tokio::time::sleep(retry_wait).await;
            retry_wait = (retry_wait * 2).min(RETRY_MAX);
        }
    }
    poll(vfs, catalog, since).await;
}

/// Polling: one revision request per interval; only when it moved, every listed directory is
/// listed again.
async fn poll(vfs: Weak<Refresher>, catalog: Arc<dyn crate::remote::Catalog>, mut since: u64) {
    let Some(interval) = vfs.upgrade().map(|v| v.poll_interval) else {
        return;
    };
    let mut wait = interval;
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(wait).await;
        let revision = catalog.revision().await;
        let Some(v) = vfs.upgrade() else { return };
        match revision {
            Ok(r) => {
                failures = 0;
                wait = interval;
                if r != since {
                    let dirs = v.ns.table().listed_dirs();
                    let again = v.refresh(dirs, true).await;
                    if again.is_empty() {
                        since = r;
                    } else {
                        // The next round lists everything again.
                        wait = RETRY.max(interval / 10);
                    }
                }
                Stats::set(&v.stats.remote_revision, since);
                v.stats.note_refresh();
            }
            Err(e) => {
                // Rate limits and outages: back off, up to a minute past the interval.
                failures += 1;
                wait = interval + (BACKOFF.0 * 2u32.pow(failures.min(7))).min(BACKOFF.1);
                tracing::debug!("revision poll: {e}; next in {wait:?}");
            }
        }
    }
}
