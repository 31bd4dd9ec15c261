//! Staging garbage collection: keep what staging files occupy on disk within
//! `--max-staging-size`, and their number within `max_staged_files` (each holds two open
//! descriptors: writing tens of thousands of files must not exhaust them), by forgetting clean
//! copies, least recently used first.
//!
//! Never evicted: a dirty file (its staging copy is the only copy of the user's bytes), a file
//! with open handles, a file being flushed (its flush lock is held), an unlinked file. Usage is
//! charged as allocated blocks, the same way when it is measured and when it is released, so a
//! sparse copy holding one 4 KiB edit costs about 4 KiB.

use std::sync::Arc;

use crate::vfs::namespace::inode::Ino;
use crate::vfs::write::staging::Staged;
use crate::vfs::Stats;

use super::WritePath;

impl WritePath {
    /// Evict clean staging copies until usage is within the budget and their number within
    /// the limit.
    pub(in crate::vfs) fn collect_staging(&self) {
        let budget = self.budget.bytes;
        let max_files = self.budget.files;
        let staged: Vec<(Ino, Arc<Staged>, bool)> = {
            let t = self.ns.table();
            t.staged_inodes()
                .filter_map(|i| {
                    let s = i.staged()?.clone();
                    Some((i.ino, s, i.open_handles == 0 && i.linked))
                })
                .collect()
        };
        let mut count = staged.len();
        if budget == 0 && count <= max_files {
            return;
        }
        let sizes: Vec<u64> = if budget == 0 {
            vec![0; count]
        } else {
            staged.iter().map(|(_, s, _)| s.allocated_bytes()).collect()
        };
        let mut usage: u64 = sizes.iter().sum();
        let over = |usage: u64, count: usize| (budget > 0 && usage > budget) || count > max_files;
        if over(usage, count) {
            let mut candidates: Vec<(usize, u64)> = staged
                .iter()
                .enumerate()
                .filter(|(_, (_, _, idle))| *idle)
                .map(|(k, (_, s, _))| (k, s.last_used()))
                .collect();
            candidates.sort_by_key(|(_, used)| *used);
            for (k, _) in candidates {
                if !over(usage, count) {
                    break;
                }
                let (ino, s, _) = &staged[k];
                // A flush in progress holds this; skip the file rather than wait.
                let Ok(_flushing) = s.flush_lock.try_lock() else {
                    continue;
                };
                if self.forget_clean_copy(*ino, s, false) {
                    usage = usage.saturating_sub(sizes[k]);
                    count -= 1;
                    Stats::add(&self.stats.staging_evictions, 1);
                }
            }
        }
        if budget > 0 {
            Stats::set(&self.stats.staging_bytes, usage);
        }
        // `staged` drops here, outside every lock: evicted files are removed now.
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
