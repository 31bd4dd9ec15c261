//! Staging garbage collection and backpressure: keep what staging files occupy on disk within
//! `--max-staging-size`, and their number within `max_staged_files`, by forgetting clean
//! copies, least recently used first; when only dirty copies are left, a writer about to stage
//! another file (or dirty a clean one, for the byte budget) waits for the flusher to commit
//! some, bounded by the write timeout, instead of failing at once or growing without end.
//!
//! Never evicted: a dirty file (its staging copy is the only copy of the user's bytes), a file
//! with open handles, a file being flushed (its flush lock is held), an unlinked file. Usage is
//! charged as allocated blocks, so a sparse copy holding one 4 KiB edit costs about 4 KiB.
//!
//! Usage is a running total (`staging.rs`, `Usage`): checking the budget costs nothing, and the
//! staged files are walked only when staging is full and some copy is clean. Eviction goes
//! down to 7/8 of the budget, so that a walk is not repeated at every close at the limit.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::vfs::namespace::inode::Ino;
use crate::vfs::write::staging::Staged;
use crate::vfs::{Errno, Stats, VfsResult};

use super::{Budget, WritePath};

/// How often a waiting writer asks the flusher again (a commit that made no room, or a
/// request the flusher took while its queue was empty).
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// Which budget staging has reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::vfs) enum Full {
    Files,
    Bytes,
}

impl Full {
    fn errno(self) -> Errno {
        match self {
            Full::Files => Errno(libc::EDQUOT),
            Full::Bytes => Errno::ENOSPC,
        }
    }
}

impl WritePath {
    /// Which budget stops another staging copy (`new_file`) or another dirty one (the byte
    /// budget only: dirtying a copy adds no file) from being admitted now.
    pub(in crate::vfs) fn full(&self, new_file: bool) -> Option<Full> {
        let u = self.area.usage();
        if new_file && u.files() >= self.budget.files {
            return Some(Full::Files);
        }
        if self.budget.bytes > 0 && u.bytes() >= self.budget.bytes {
            return Some(Full::Bytes);
        }
        None
    }

    /// Evict clean staging copies, least recently used first, when staging is full: down to
    /// 7/8 of each budget.
    pub(in crate::vfs) fn collect_staging(&self) {
        let u = self.area.usage();
        if self.full(true).is_some() && u.clean() > 0 {
            self.evict_clean();
        }
        Stats::set(&self.stats.staging_bytes, self.area.usage().bytes());
    }

    fn evict_clean(&self) {
        let Budget {
            bytes: budget,
            files: max_files,
            ..
        } = self.budget;
        let (low_bytes, low_files) = (budget - budget / 8, max_files - max_files / 8);
        let above =
            |bytes: u64, files: usize| files > low_files || (budget > 0 && bytes > low_bytes);
        let mut candidates: Vec<(Ino, Arc<Staged>)> = {
            let t = self.ns.table();
            t.staged_inodes()
                .filter(|i| i.open_handles == 0 && i.linked)
                .filter_map(|i| Some((i.ino, i.staged()?.clone())))
                .collect()
        };
        candidates.sort_by_key(|(_, s)| s.last_used());
        let u = self.area.usage();
        let (mut bytes, mut files) = (u.bytes(), u.files());
        for (ino, s) in &candidates {
            if !above(bytes, files) {
                break;
            }
            // A flush in progress holds this; skip the file rather than wait.
            let Ok(_flushing) = s.flush_lock.try_lock() else {
                continue;
            };
            let charged = s.charged();
            if self.forget_clean_copy(*ino, s, false) {
                bytes = bytes.saturating_sub(charged);
                files = files.saturating_sub(1);
                Stats::add(&self.stats.staging_evictions, 1);
            }
        }
        // `candidates` drops here, outside every lock: evicted files are removed now.
    }

    /// Backpressure: wait until staging has room for another copy (`new_file`) or another
    /// dirty one, evicting clean copies and asking the flusher to commit now rather than after
    /// its debounce. Past the write timeout: EDQUOT (file budget) or ENOSPC (byte budget).
    pub(in crate::vfs) async fn admit(&self, new_file: bool) -> VfsResult<()> {
        if self.full(new_file).is_none() {
            return Ok(());
        }
        let deadline = Instant::now() + self.budget.wait;
        loop {
            let freed = self.area.usage().freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            self.collect_staging();
            let Some(full) = self.full(new_file) else {
                return Ok(());
            };
            let now = Instant::now();
            if now >= deadline {
                let u = self.area.usage();
                tracing::warn!(
                    "staging is full ({} files, {} bytes; budget {} files, {} bytes) and \
                     nothing could be committed to make room within {:?}: {}",
                    u.files(),
                    u.bytes(),
                    self.budget.files,
                    self.budget.bytes,
                    self.budget.wait,
                    full.errno()
                );
                return Err(full.errno());
            }
            // Every copy left is dirty, open or being flushed: only a commit makes room.
            self.queue.hurry();
            let _ = tokio::time::timeout((deadline - now).min(ASK_AGAIN), freed).await;
        }
    }

    /// Forget `s` as `ino`'s staging copy if it is clean, still current, linked, and (unless
    /// `even_if_open`) unopened. The io lock keeps writers out while it is checked, the inode
    /// table lock keeps openers out. Returns whether it was forgotten.
    pub(in crate::vfs) fn forget_clean_copy(
        &self,
        ino: Ino,
        s: &Arc<Staged>,
        even_if_open: bool,
    ) -> bool {
        s.with_io(|io| {
            if io.state.is_dirty() {
                return false;
            }
            let mut t = self.ns.table();
            match t.get(ino) {
                Ok(i) if (even_if_open || i.open_handles == 0) && i.linked && i.holds(s) => {
                    t.set_staged(ino, None).is_ok()
                }
                _ => false,
            }
        })
    }

    /// At shutdown, once everything is committed: forget every clean copy (a cache of what
    /// the store holds), so that its files go now rather than at the next start.
    pub(in crate::vfs) fn drop_clean_copies(&self) {
        let staged: Vec<(Ino, Arc<Staged>)> = {
            let t = self.ns.table();
            t.staged_inodes()
                .filter_map(|i| Some((i.ino, i.staged()?.clone())))
                .collect()
        };
        for (ino, s) in &staged {
            self.forget_clean_copy(*ino, s, true);
        }
        drop(staged);
        self.area().close_spares();
    }

    /// Paranoid mode: forget a clean staging copy, even of an open file. A writer that picked
    /// up the copy before it was forgotten redoes its write on the new one
    /// (`with_current_staging`).
    pub(in crate::vfs) fn drop_clean_staging(&self, ino: Ino) {
        let staged = self
            .ns
            .table()
            .get(ino)
            .ok()
            .and_then(|i| i.staged().cloned());
        if let Some(s) = staged {
            // `s` still holds a reference: the file goes when it is dropped, outside the locks.
            self.forget_clean_copy(ino, &s, true);
        }
    }
}
