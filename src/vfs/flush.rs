//! Flushing staged files to the store: a debounced queue, a background flusher that retries
//! failures with exponential backoff, and `flush_batch`, which uploads a batch of files in one
//! upload session and commits them in one catalog transaction.
//!
//! A commit applies only if the file's generation still equals the one snapshotted before its
//! upload: the upload read the staging file without the io lock, so a write during it may have
//! torn what was read. A file that changed is left dirty and flushed again.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::remote::{CatalogOp, ComposeEdit, FileId, UploadItem};
use crate::vfs::fileio::blocking;
use crate::vfs::inode::Ino;
use crate::vfs::staging::{empty_id, Staged};
use crate::vfs::{Errno, Stats, Vfs, VfsResult};

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to commit: the store already holds this content (or the file is gone).
    Clean,
    /// The content was committed.
    Committed,
    /// The file changed during the flush; flush it again.
    Retry,
}

/// Files waiting for their debounce to expire.
pub(super) struct FlushQueue {
    debounce: Duration,
    /// A file closed again and again is still flushed this long after it first queued.
    max_window: Duration,
    /// When each queued file falls due, and when it first queued.
    due: Mutex<HashMap<Ino, (Instant, Instant)>>,
    wake: Notify,
    stopped: AtomicBool,
}

impl FlushQueue {
    pub fn new(debounce: Duration, max_window: Duration) -> Arc<Self> {
        Arc::new(FlushQueue {
            debounce,
            max_window,
            due: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
        })
    }

    /// Flush `ino` once it has been quiet for the debounce time.
    pub fn schedule(&self, ino: Ino) {
        self.schedule_at(ino, Instant::now() + self.debounce);
    }

    fn schedule_at(&self, ino: Ino, at: Instant) {
        let now = Instant::now();
        let mut g = self.due.lock();
        let first = g.get(&ino).map_or(now, |(_, first)| *first);
        g.insert(ino, (at.min(first + self.max_window), first));
        drop(g);
        self.wake.notify_one();
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Remove and return the files due at `now`, and when the next one falls due.
    fn take_due(&self, now: Instant) -> (Vec<Ino>, Option<Instant>) {
        let mut g = self.due.lock();
        let due: Vec<Ino> = g
            .iter()
            .filter(|(_, (t, _))| *t <= now)
            .map(|(i, _)| *i)
            .collect();
        for i in &due {
            g.remove(i);
        }
        (due, g.values().map(|(t, _)| *t).min())
    }
}

pub(super) fn spawn_flusher(vfs: &Arc<Vfs>) {
    let weak = Arc::downgrade(vfs);
    let queue = vfs.flusher.clone();
    tokio::spawn(async move {
        let mut backoff: HashMap<Ino, Duration> = HashMap::new();
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
            let Some(vfs) = weak.upgrade() else { return };
            let results = vfs.flush_batch(&due).await;
            vfs.collect_staging();
            for (ino, r) in results {
                match r {
                    Ok(Outcome::Retry) => queue.schedule(ino),
                    Ok(_) => {
                        backoff.remove(&ino);
                    }
                    Err(e) => {
                        let b = backoff
                            .get(&ino)
                            .map_or(BACKOFF_MIN, |b| (*b * 2).min(BACKOFF_MAX));
                        backoff.insert(ino, b);
                        tracing::warn!(ino, "flush failed ({e}); retrying in {b:?}");
                        if let Ok(i) = vfs.inodes.lock().get_mut(ino) {
                            i.flush_error = Some(e);
                        }
                        queue.schedule_at(ino, Instant::now() + b);
                    }
                }
            }
        }
    });
}

/// Above this many dirty bytes a partly covered file is filled and uploaded whole rather
/// than composed: composition holds the dirty bytes in memory.
const COMPOSE_MAX_DIRTY: u64 = 256 << 20;

/// How a file's new body reaches the store. Chosen from the coverage alone (DESIGN.md §3).
enum Route {
    /// Staging holds every byte: upload the staging file (dedup makes unchanged chunks free).
    Whole,
    /// Staging has holes: compose the base with the edits, snapshotted under the io lock.
    Compose {
        base: FileId,
        edits: Vec<ComposeEdit>,
    },
}

/// A file ready to upload: its staging content at `generation` is `size` bytes.
struct Prepared {
    ino: Ino,
    staged: Arc<Staged>,
    generation: u64,
    size: u64,
    route: Route,
}

impl Vfs {
    /// Linked inodes whose staging differs from what the store holds.
    pub(super) fn dirty_inodes(&self) -> Vec<Ino> {
        let staged: Vec<(Ino, Arc<Staged>)> = self
            .inodes
            .lock()
            .iter()
            .filter(|i| i.linked)
            .filter_map(|i| i.staged.clone().map(|s| (i.ino, s)))
            .collect();
        staged
            .into_iter()
            .filter(|(_, s)| s.with_io(|io| io.state.is_dirty()))
            .map(|(i, _)| i)
            .collect()
    }

    /// Flush the given files: one upload session, one catalog commit.
    pub(super) async fn flush_batch(&self, inos: &[Ino]) -> Vec<(Ino, VfsResult<Outcome>)> {
        let mut inos = inos.to_vec();
        inos.sort_unstable();
        inos.dedup();
        let mut results = Vec::new();
        let mut work = Vec::new();
        for ino in inos {
            let staged = {
                let t = self.inodes.lock();
                t.get(ino)
                    .ok()
                    .filter(|i| i.linked)
                    .and_then(|i| i.staged.clone())
            };
            match staged {
                Some(s) => work.push((ino, s)),
                None => results.push((ino, Ok(Outcome::Clean))),
            }
        }
        // Flush locks in ascending inode order (see the lock order in vfs/mod.rs).
        let mut guards = Vec::with_capacity(work.len());
        for (_, s) in &work {
            guards.push(s.flush_lock.clone().lock_owned().await);
        }
        let mut ready = Vec::new();
        for (ino, staged) in work {
            match self.prepare(ino, staged).await {
                Ok(Some(p)) => ready.push(p),
                Ok(None) => results.push((ino, Ok(Outcome::Clean))),
                Err(e) => results.push((ino, Err(e))),
            }
        }
        if !ready.is_empty() {
            results.extend(self.upload_and_commit(ready).await);
        }
        for (_, r) in &results {
            if r.is_err() {
                Stats::add(&self.stats.flush_failures, 1);
            }
        }
        drop(guards);
        results
    }

    /// Decide what to upload for one file. `None`: nothing to do.
    async fn prepare(&self, ino: Ino, staged: Arc<Staged>) -> VfsResult<Option<Prepared>> {
        if !staged.with_io(|io| io.state.is_dirty()) {
            return Ok(None);
        }
        let (covered, dirty_bytes) =
            staged.with_io(|io| (io.state.is_fully_covered(), io.state.dirty().len_bytes()));
        if !covered && dirty_bytes > COMPOSE_MAX_DIRTY {
            // Too much to hold in memory: complete the staging copy, then upload it whole.
            loop {
                let (base, holes) = staged.with_io(|io| {
                    let size = io.state.size();
                    (io.state.base().cloned(), io.state.holes(0..size))
                });
                if holes.is_empty() {
                    break;
                }
                let base = base.ok_or(Errno::EIO)?;
                for h in holes {
                    self.fill_hole(&staged, &base, h).await?;
                }
            }
        }
        let covered = staged.with_io(|io| io.state.is_fully_covered());
        if covered {
            let (generation, size) = staged.with_io(|io| (io.state.generation(), io.state.size()));
            return Ok(Some(Prepared {
                ino,
                staged,
                generation,
                size,
                route: Route::Whole,
            }));
        }
        let s2 = staged.clone();
        let (generation, base, edits) = blocking(move || s2.snapshot_edits()).await?;
        let size = staged.with_io(|io| io.state.size());
        Ok(Some(Prepared {
            ino,
            staged,
            generation,
            size,
            route: Route::Compose { base, edits },
        }))
    }

    async fn upload_and_commit(&self, ready: Vec<Prepared>) -> Vec<(Ino, VfsResult<Outcome>)> {
        let mut results = Vec::new();
        let mut bodies: HashMap<Ino, Option<FileId>> = HashMap::new();
        let mut whole: Vec<&Prepared> = Vec::new();
        for p in &ready {
            match &p.route {
                _ if p.size == 0 => {
                    bodies.insert(p.ino, None);
                }
                Route::Whole => whole.push(p),
                Route::Compose { base, edits } => {
                    match self.cas.compose(base, edits.clone()).await {
                        Ok(c) => {
                            Stats::add(&self.stats.bytes_uploaded_new, c.new_bytes);
                            Stats::add(&self.stats.compose_base_bytes_read, c.base_bytes_read);
                            Stats::add(&self.stats.compose_dirty_chunk_bytes, c.dirty_chunk_bytes);
                            bodies.insert(p.ino, Some(c.id));
                        }
                        Err(e) => {
                            tracing::warn!(ino = p.ino, "compose failed: {e}");
                            results.push((p.ino, Err(e.into())));
                        }
                    }
                }
            }
        }
        // Whole bodies go up in one upload session.
        if !whole.is_empty() {
            let items = whole
                .iter()
                .map(|p| UploadItem {
                    path: &p.staged.path,
                    len: p.size,
                })
                .collect();
            match self.cas.upload_batch(items).await {
                Ok(res) => {
                    for (p, r) in whole.iter().zip(res) {
                        match r {
                            Ok(up) => {
                                Stats::add(&self.stats.bytes_uploaded_new, up.new_bytes);
                                bodies.insert(p.ino, Some(up.id));
                            }
                            Err(e) => results.push((p.ino, Err(e.into()))),
                        }
                    }
                }
                Err(e) => {
                    let errno = Errno::from(e);
                    results.extend(whole.iter().map(|p| (p.ino, Err(errno))));
                }
            }
        }

        let _ns = self.ns_lock.lock().await;
        let mut ops = Vec::new();
        let mut committing = Vec::new();
        for p in &ready {
            let Some(body) = bodies.get(&p.ino) else {
                continue;
            };
            if p.staged.with_io(|io| io.state.generation()) != p.generation {
                results.push((p.ino, Ok(Outcome::Retry)));
                continue;
            }
            let entry = {
                let t = self.inodes.lock();
                match t.get(p.ino) {
                    Ok(i) if i.linked => t.entry_of(p.ino, body.clone()),
                    // Unlinked meanwhile: an orphan is never committed.
                    _ => {
                        results.push((p.ino, Ok(Outcome::Clean)));
                        continue;
                    }
                }
            };
            match entry {
                Ok(e) => {
                    ops.push(CatalogOp::Put(e));
                    committing.push((p, body.clone()));
                }
                Err(e) => results.push((p.ino, Err(e))),
            }
        }
        if committing.is_empty() {
            return results;
        }
        if let Err(e) = self.catalog.commit(ops).await {
            let errno = Errno::from(e);
            results.extend(committing.iter().map(|(p, _)| (p.ino, Err(errno))));
            return results;
        }
        Stats::add(&self.stats.flush_commits, 1);
        for (p, body) in committing {
            if let Ok(i) = self.inodes.lock().get_mut(p.ino) {
                i.remote = body.clone();
                i.flush_error = None;
            }
            let base = body.clone().unwrap_or_else(empty_id);
            let applied = p.staged.commit(base, p.generation).unwrap_or_else(|e| {
                // The store has the content; only the journal entry is missing, so a crash
                // would merely commit it again.
                tracing::warn!(ino = p.ino, "cannot journal a commit: {e:?}");
                false
            });
            // Not applied: written since the snapshot. The store holds the snapshot; staging
            // keeps its dirty ranges against the old base, which stays readable in the CAS.
            let outcome = if applied {
                match p.route {
                    _ if p.size == 0 => {}
                    Route::Whole => Stats::add(&self.stats.files_uploaded, 1),
                    Route::Compose { .. } => Stats::add(&self.stats.files_composed, 1),
                }
                Outcome::Committed
            } else {
                Outcome::Retry
            };
            if applied && self.config.paranoid {
                if let Some(body) = &body {
                    if let Err(e) = self.verify_commit(p, body).await {
                        Stats::add(&self.stats.commit_verify_failures, 1);
                        tracing::error!(ino = p.ino, "committed body does not read back: {e}");
                    }
                }
                self.drop_clean_staging(p.ino);
            }
            results.push((p.ino, Ok(outcome)));
        }
        results
    }

    /// Paranoid mode: read `body` back from the store and compare it with staging (holes:
    /// with the base they mirror). Stops quietly if the file changes meanwhile.
    async fn verify_commit(&self, p: &Prepared, body: &FileId) -> Result<(), String> {
        const PIECE: u64 = 4 << 20;
        let old_base = match &p.route {
            Route::Compose { base, .. } => Some(base.clone()),
            Route::Whole => None,
        };
        let mut off = 0;
        while off < body.size {
            let end = (off + PIECE).min(body.size);
            let stored = self
                .cas
                .read_range(body, off..end)
                .await
                .map_err(|e| e.to_string())?;
            let local = p.staged.with_io(|io| {
                if io.state.generation() != p.generation {
                    return Ok(None);
                }
                let mut buf = vec![0u8; (end - off) as usize];
                io.file.read_exact_at(&mut buf, off)?;
                Ok::<_, std::io::Error>(Some((buf, io.state.holes(off..end))))
            });
            let Some((mut buf, holes)) = local.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            for h in holes {
                let base = old_base
                    .as_ref()
                    .ok_or_else(|| format!("hole {h:?} in a whole-file upload"))?;
                let data = self
                    .cas
                    .read_range(base, h.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                buf[(h.start - off) as usize..(h.end - off) as usize].copy_from_slice(&data);
            }
            if buf[..] != stored[..] {
                let at = buf.iter().zip(stored.iter()).position(|(a, b)| a != b);
                return Err(format!("bytes differ in {off}..{end} (first at {at:?})"));
            }
            off = end;
        }
        Ok(())
    }

    /// Paranoid mode: forget a clean staging copy, even of an open file. A writer that picked
    /// up the copy before it was forgotten redoes its write on the new one
    /// (`with_current_staging`).
    pub(super) fn drop_clean_staging(&self, ino: Ino) {
        let staged = self
            .inodes
            .lock()
            .get(ino)
            .ok()
            .and_then(|i| i.staged.clone());
        if let Some(s) = staged {
            // `s` still holds a reference: the file goes when it is dropped, outside the locks.
            self.forget_clean_copy(ino, &s, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
