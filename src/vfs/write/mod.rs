//! The write path: staging copies of files, written in place, filled from their committed
//! body on demand, and kept within their disk and file budgets (`gc.rs`: clean copies are
//! evicted, and writers wait for the flusher when only dirty ones are left).
//!
//! A file opened for write gets a staging file that mirrors its committed body without
//! downloading it (a sparse file of the right size, empty coverage). Reads of a staged file
//! come from staging, filling holes from the body on demand.
//!
//! Locks: a staged file's io lock (std, in `staging.rs`) is taken before the inode table's and
//! never across an `.await` (the staging descriptor cache's lock is taken under it, alone); creating a staging copy holds the namespace lock so that the path
//! journaled with it stays current until it is installed.

mod fds;
mod gc;
pub(in crate::vfs) mod journal;
pub mod ranges;
pub(in crate::vfs) mod recovery;
pub mod sparse;
pub mod staging;
#[cfg(test)]
mod tests_budget;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::remote::{EntryKind, FileId};
use crate::vfs::flush::FlushQueue;
use crate::vfs::namespace::inode::{now_ns, Ino};
use crate::vfs::namespace::Namespace;
use crate::vfs::readcache::ReadCache;
use crate::vfs::{blocking, Errno, Stats, VfsResult};
use staging::{empty_id, Falloc, ReadPlan, Staged, StagingArea};

/// Largest piece of a hole fetched into memory at once while filling staging.
const FILL_PIECE: u64 = 8 << 20;

/// What the write path may keep on disk.
#[derive(Clone, Copy, Debug)]
pub(in crate::vfs) struct Budget {
    /// Bytes of staging files (0 = unlimited).
    pub bytes: u64,
    /// Staging files.
    pub files: usize,
    /// Longest a writer waits for room in a full staging area (`gc.rs`).
    pub wait: std::time::Duration,
}

/// Staging copies of the mount's files and the operations on them.
pub(in crate::vfs) struct WritePath {
    ns: Arc<Namespace>,
    area: Arc<StagingArea>,
    /// Where holes are filled from.
    cache: Arc<ReadCache>,
    /// Where changed files are scheduled for commit.
    queue: Arc<FlushQueue>,
    stats: Arc<Stats>,
    budget: Budget,
}

impl WritePath {
    pub(in crate::vfs) fn new(
        ns: Arc<Namespace>,
        area: Arc<StagingArea>,
        cache: Arc<ReadCache>,
        queue: Arc<FlushQueue>,
        stats: Arc<Stats>,
        budget: Budget,
    ) -> Self {
        WritePath {
            ns,
            area,
            cache,
            queue,
            stats,
            budget,
        }
    }

    pub(in crate::vfs) fn area(&self) -> &Arc<StagingArea> {
        &self.area
    }

    /// The inode's staging, created on first need (nothing is downloaded).
    pub(in crate::vfs) async fn ensure_staged(&self, ino: Ino) -> VfsResult<Arc<Staged>> {
        loop {
            let base = {
                let t = self.ns.table();
                let i = t.get(ino)?;
                match i.kind {
                    EntryKind::Dir => return Err(Errno::EISDIR),
                    EntryKind::File => {}
                    // Symlinks, FIFOs, sockets and devices have no body to stage; the kernel
                    // opens FIFOs and devices itself.
                    _ => return Err(Errno::EINVAL),
                }
                if let Some(s) = i.staged() {
                    return Ok(s.clone());
                }
                i.remote.clone().unwrap_or_else(empty_id)
            };
            self.admit(true).await?;
            // Created outside the table lock (file I/O); installed only if nothing changed. The
            // namespace lock keeps the path journaled with it current until it is installed
            // (renames journal the paths of installed staging files).
            let _ns = self.ns.lock().await;
            let fresh = self.area.create(base.clone())?;
            let path = {
                let t = self.ns.table();
                let i = t.get(ino)?;
                i.linked.then(|| t.path_of(ino)).transpose()?
            };
            match path {
                Some(p) => {
                    fresh.note_path(&p)?;
                }
                None => fresh.note_unlinked()?,
            }
            self.area.journal_changed(&fresh);
            let mut t = self.ns.table();
            let i = t.get(ino)?;
            if let Some(s) = i.staged() {
                // Lost a race with another opener: ours is dropped and its file removed.
                return Ok(s.clone());
            }
            if i.remote.clone().unwrap_or_else(empty_id) == base {
                t.set_staged(ino, Some(fresh.clone()))?;
                return Ok(fresh);
            }
            // The body changed meanwhile: mirror the new one.
        }
    }

    /// Read `range` of a staged file, filling the holes it touches first.
    pub(in crate::vfs) async fn read(&self, s: Arc<Staged>, range: Range<u64>) -> VfsResult<Bytes> {
        loop {
            let s2 = s.clone();
            let r = range.clone();
            match blocking(move || s2.read(r)).await? {
                ReadPlan::Data(d) => return Ok(d.into()),
                ReadPlan::Holes { base, holes } => {
                    for h in holes {
                        self.fill_hole(&s, &base, h).await?;
                    }
                }
            }
        }
    }

    /// Fetch `hole` of `base` and write what is still a hole of it into staging.
    async fn fill_hole(&self, s: &Arc<Staged>, base: &FileId, hole: Range<u64>) -> VfsResult<()> {
        let mut at = hole.start;
        while at < hole.end {
            let end = (at + FILL_PIECE).min(hole.end);
            let data = self.cache.read(base, at..end).await?;
            let (s2, b2) = (s.clone(), base.clone());
            blocking(move || s2.fill(&b2, at, &data)).await?;
            at = end;
        }
        Ok(())
    }

    /// Fill every hole of a staged file from its base (until none is left: a commit may move
    /// the base on meanwhile).
    pub(in crate::vfs) async fn fill_all_holes(&self, staged: &Arc<Staged>) -> VfsResult<()> {
        loop {
            let (base, holes) = staged.with_io(|io| {
                let size = io.state.size();
                (io.state.base().cloned(), io.state.holes(0..size))
            });
            if holes.is_empty() {
                return Ok(());
            }
            let base = base.ok_or(Errno::EIO)?;
            for h in holes {
                self.fill_hole(staged, &base, h).await?;
            }
        }
    }

    /// Write `data` at `offset` of file `ino`.
    pub(in crate::vfs) async fn write(
        &self,
        ino: Ino,
        offset: u64,
        data: Vec<u8>,
    ) -> VfsResult<u32> {
        let data = Arc::new(data);
        let n = self
            .with_current_staging(ino, move |s| s.write(offset, &data))
            .await?;
        self.stamp_modified(ino)?;
        Ok(n as u32)
    }

    /// `fallocate(2)` of `offset..end` of file `ino` (see `Vfs::fallocate`).
    pub(in crate::vfs) async fn fallocate(
        &self,
        ino: Ino,
        range: Range<u64>,
        op: Falloc,
    ) -> VfsResult<()> {
        let changed = self
            .with_current_staging(ino, move |s| s.fallocate(range.clone(), op))
            .await?;
        if changed {
            self.stamp_modified(ino)?;
        }
        Ok(())
    }

    /// Make what was written to `ino` durable in its staging file and journal (it survives a
    /// crash of this process or of the machine, and is committed by recovery).
    pub(in crate::vfs) async fn sync(&self, ino: Ino) -> VfsResult<()> {
        let staged = self.ns.table().get(ino)?.staged().cloned();
        match staged {
            Some(s) => blocking(move || s.sync()).await,
            None => Ok(()),
        }
    }

    /// A write served on the caller's thread when the file already has its staging copy.
    /// `None`: take the async path.
    pub(in crate::vfs) fn try_write_now(
        &self,
        ino: Ino,
        offset: u64,
        data: &[u8],
    ) -> Option<VfsResult<u32>> {
        let s = self.ns.table().get(ino).ok()?.staged().cloned()?;
        if self.full(false).is_some() && !s.is_dirty() {
            // Dirtying another file in a full staging area waits (`admit`).
            return None;
        }
        let r = s.write(offset, data);
        if !self.ns.table().get(ino).ok()?.holds(&s) {
            // The copy was dropped meanwhile (see `with_current_staging`): redo it there.
            return None;
        }
        Some(r.and_then(|n| {
            self.stamp_modified(ino)?;
            Ok(n as u32)
        }))
    }

    /// Run a mutation of the inode's staging. A clean staging copy may be dropped at any time
    /// (nothing in it is unique); if that happened before `f` took the io lock, `f` changed a
    /// copy nobody will read, so it is run again on the current one.
    async fn with_current_staging<T: Send + 'static>(
        &self,
        ino: Ino,
        f: impl Fn(&Staged) -> VfsResult<T> + Send + Sync + 'static,
    ) -> VfsResult<T> {
        let f = Arc::new(f);
        loop {
            let s = self.ensure_staged(ino).await?;
            if self.full(false).is_some() && !s.is_dirty() {
                self.admit(false).await?;
            }
            let (s2, f2) = (s.clone(), f.clone());
            let r = blocking(move || f2(&s2)).await?;
            if self.ns.table().get(ino)?.holds(&s) {
                return Ok(r);
            }
        }
    }

    fn stamp_modified(&self, ino: Ino) -> VfsResult<()> {
        let now = now_ns();
        let mut t = self.ns.table();
        let i = t.get_mut(ino)?;
        i.meta.mtime_ns = now;
        i.meta.ctime_ns = now;
        Ok(())
    }

    /// Change a file's size (truncate or extend with zeros).
    pub(in crate::vfs) async fn truncate(&self, ino: Ino, size: u64) -> VfsResult<()> {
        self.ns.check_writable()?;
        self.with_current_staging(ino, move |s| s.resize(size))
            .await?;
        self.stamp_modified(ino)?;
        let idle = self.ns.table().get(ino)?.open_handles == 0;
        if idle {
            // No close will follow (truncate by path): schedule the flush now.
            self.queue.schedule(ino);
        }
        Ok(())
    }

    /// Linked files whose staging differs from what the store holds: how many, their bytes
    /// the store lacks, and since when the longest-waiting one has differed.
    pub(in crate::vfs) fn unsettled(&self) -> (usize, u64, Option<std::time::SystemTime>) {
        let staged: Vec<Arc<Staged>> = self
            .ns
            .table()
            .staged_inodes()
            .filter(|i| i.linked)
            .filter_map(|i| i.staged().cloned())
            .collect();
        let mut out = (0, 0, None);
        for s in staged {
            s.with_io(|io| {
                if let (true, Some(since)) = (io.state.is_dirty(), io.dirty_since()) {
                    out.0 += 1;
                    out.1 += io.state.unsettled_bytes();
                    out.2 = Some(out.2.map_or(since, |o: std::time::SystemTime| o.min(since)));
                }
            });
        }
        out
    }

    /// Linked inodes whose staging differs from what the store holds.
    pub(in crate::vfs) fn dirty_inodes(&self) -> Vec<Ino> {
        let staged: Vec<(Ino, Arc<Staged>)> = self
            .ns
            .table()
            .staged_inodes()
            .filter(|i| i.linked)
            .filter_map(|i| i.staged().map(|s| (i.ino, s.clone())))
            .collect();
        staged
            .into_iter()
            .filter(|(_, s)| s.with_io(|io| io.state.is_dirty()))
            .map(|(i, _)| i)
            .collect()
    }
}
