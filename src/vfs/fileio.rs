//! File data: open, read, write, truncate, close, fsync.
//!
//! A file opened for write gets a staging file that mirrors its committed body without
//! downloading it (a sparse file of the right size, empty coverage). Reads of a staged file
//! come from staging, filling holes from the body on demand; reads of an unstaged file come
//! from the read cache.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::remote::{EntryKind, FileId};
use crate::vfs::flush::NS_INO;
use crate::vfs::inode::{now_ns, Attr, Ino};
use crate::vfs::staging::{empty_id, Falloc, ReadPlan, Staged};
use crate::vfs::{Caller, Errno, Handle, HandleEntry, Opened, ReadAhead, Vfs, VfsResult};

/// Largest piece of a hole fetched into memory at once while filling staging.
const FILL_PIECE: u64 = 8 << 20;

/// Run blocking staging-file I/O off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> VfsResult<T> + Send + 'static,
) -> VfsResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Errno::EIO)?
}

impl Vfs {
    pub(super) fn new_handle(&self, e: HandleEntry) -> u64 {
        let mut h = self.handles.lock();
        h.next += 1;
        let fh = h.next;
        h.map.insert(fh, e);
        fh
    }

    /// The inode's staging, created on first need (nothing is downloaded).
    pub(super) async fn ensure_staged(&self, ino: Ino) -> VfsResult<Arc<Staged>> {
        loop {
            let base = {
                let t = self.inodes.lock();
                let i = t.get(ino)?;
                match i.kind {
                    EntryKind::Dir => return Err(Errno::EISDIR),
                    EntryKind::File => {}
                    // Symlinks, FIFOs, sockets and devices have no body to stage; the kernel
                    // opens FIFOs and devices itself.
                    _ => return Err(Errno::EINVAL),
                }
                if let Some(s) = &i.staged {
                    return Ok(s.clone());
                }
                i.remote.clone().unwrap_or_else(empty_id)
            };
            // Created outside the table lock (file I/O); installed only if nothing changed. The
            // namespace lock keeps the path journaled with it current until it is installed
            // (renames journal the paths of installed staging files).
            let _ns = self.ns_lock.lock().await;
            let fresh = self.staging.create(base.clone())?;
            let path = {
                let t = self.inodes.lock();
                let i = t.get(ino)?;
                i.linked.then(|| t.path_of(ino)).transpose()?
            };
            match path {
                Some(p) => {
                    fresh.note_path(&p)?;
                }
                None => fresh.note_unlinked()?,
            }
            self.staging.journal_changed(&fresh);
            let mut t = self.inodes.lock();
            let i = t.get_mut(ino)?;
            if let Some(s) = &i.staged {
                // Lost a race with another opener: ours is dropped and its file removed.
                return Ok(s.clone());
            }
            if i.remote.clone().unwrap_or_else(empty_id) == base {
                i.staged = Some(fresh.clone());
                return Ok(fresh);
            }
            // The body changed meanwhile: mirror the new one.
        }
    }

    pub async fn open(&self, ino: Ino, write: bool, truncate: bool) -> VfsResult<Opened> {
        let kind = self.inodes.lock().get(ino)?.kind;
        if kind == EntryKind::Dir && write {
            return Err(Errno::EISDIR);
        }
        if write {
            self.check_writable()?;
            self.ensure_staged(ino).await?;
            if truncate {
                self.truncate(ino, 0).await?;
            }
        }
        self.inodes.lock().get_mut(ino)?.open_handles += 1;
        let fh = self.new_handle(HandleEntry::File(Handle {
            ino,
            writable: write,
            ra: ReadAhead::default(),
            // O_TRUNC changed the file.
            wrote_at: truncate.then(|| self.next_event()),
            reported_at: 0,
        }));
        // Changes to a body pass through this mount (and so through the kernel's page cache),
        // or come from other writers, whose changes invalidate the kernel's pages
        // (`refresh`): what the kernel cached from an earlier open is still right.
        Ok(Opened {
            fh,
            keep_cache: true,
        })
    }

    /// Create and open a new regular file.
    pub async fn create(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        caller: Caller,
    ) -> VfsResult<(Attr, Opened)> {
        let ino = self
            .create_entry(parent, name, EntryKind::File, mode, None, caller)
            .await?;
        let opened = self.open(ino, true, false).await?;
        Ok((self.getattr(ino)?, opened))
    }

    fn handle_ino(&self, fh: u64, need_write: bool) -> VfsResult<Ino> {
        let h = self.handles.lock();
        match h.map.get(&fh) {
            Some(HandleEntry::File(h)) if !need_write || h.writable => Ok(h.ino),
            _ => Err(Errno::EBADF),
        }
    }

    /// The inode of a writable handle about to change the file; from now on the handle is
    /// told about flush failures.
    fn writer_ino(&self, fh: u64) -> VfsResult<Ino> {
        let mut h = self.handles.lock();
        match h.map.get_mut(&fh) {
            Some(HandleEntry::File(h)) if h.writable => {
                if h.wrote_at.is_none() {
                    h.wrote_at = Some(self.next_event());
                }
                Ok(h.ino)
            }
            _ => Err(Errno::EBADF),
        }
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> VfsResult<Bytes> {
        let ino = self.handle_ino(fh, false)?;
        let range = offset..offset.saturating_add(size as u64);
        let (staged, remote) = {
            let t = self.inodes.lock();
            let i = t.get(ino)?;
            if i.is_dir() {
                return Err(Errno::EISDIR);
            }
            (i.staged.clone(), i.remote.clone())
        };
        match (staged, remote) {
            (Some(s), _) => self.read_staged(s, range).await,
            (None, Some(id)) => {
                self.read_ahead(fh, &id, &range);
                self.cache.read(&id, range).await
            }
            (None, None) => Ok(Bytes::new()),
        }
    }

    /// Sequential reads grow a read-ahead window (in cache blocks, from 1 MiB up to
    /// `readahead_blocks`, at most a quarter of the cache); a seek resets it, so random reads
    /// fetch only what they touch. The window is refilled once half of it was consumed, so
    /// read-ahead goes out in large runs (each one fetch, [`MAX_RUN`] bytes at most) rather
    /// than one small fetch per read; at 32 MiB, four to eight runs are in flight, enough to
    /// keep a 50 ms round trip busy.
    ///
    /// [`MAX_RUN`]: crate::vfs::readcache::MAX_RUN
    fn read_ahead(&self, fh: u64, id: &FileId, range: &Range<u64>) {
        let block = self.cache.block_size();
        // Read-ahead must not evict itself (nor everything else) from the cache.
        let max_window = self
            .config
            .readahead_blocks
            .min(self.config.cache_capacity / 4 / block)
            .max(1);
        let min_window = ((1 << 20) / block).clamp(1, max_window);
        let claim = {
            let mut h = self.handles.lock();
            let Some(HandleEntry::File(h)) = h.map.get_mut(&fh) else {
                return;
            };
            let ra = &mut h.ra;
            let sequential = range.start == ra.next_offset;
            ra.next_offset = range.end;
            if !sequential {
                ra.window = 0;
                ra.claimed_to = 0;
                return;
            }
            ra.window = (ra.window * 2).clamp(min_window, max_window);
            let next = range.end.div_ceil(block);
            let from = ra.claimed_to.max(next);
            let to = next + ra.window;
            if to.saturating_sub(from) < ra.window.div_ceil(2) {
                return;
            }
            ra.claimed_to = to;
            from..to
        };
        self.cache.prefetch(id, claim);
    }

    async fn read_staged(&self, s: Arc<Staged>, range: Range<u64>) -> VfsResult<Bytes> {
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
    pub(super) async fn fill_hole(
        &self,
        s: &Arc<Staged>,
        base: &FileId,
        hole: Range<u64>,
    ) -> VfsResult<()> {
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

    pub async fn write(&self, fh: u64, offset: u64, data: Vec<u8>) -> VfsResult<u32> {
        let ino = self.writer_ino(fh)?;
        let data = Arc::new(data);
        let n = self
            .with_current_staging(ino, move |s| s.write(offset, &data))
            .await?;
        self.stamp_modified(ino)?;
        Ok(n as u32)
    }

    /// `fallocate(2)` through a writable handle: mode 0 and `FALLOC_FL_KEEP_SIZE` reserve
    /// space, `PUNCH_HOLE | KEEP_SIZE` and `ZERO_RANGE` zero a range (that is the user's data
    /// and is committed); other modes are not supported.
    pub async fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> VfsResult<()> {
        self.check_writable()?;
        let op = Falloc::from_mode(mode).ok_or(Errno::EOPNOTSUPP)?;
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(Errno::EFBIG)?;
        let ino = self.writer_ino(fh)?;
        let changed = self
            .with_current_staging(ino, move |s| s.fallocate(offset..end, op))
            .await?;
        if changed {
            self.stamp_modified(ino)?;
        }
        Ok(())
    }

    /// Make what was written to `ino` durable in its staging file and journal (it survives a
    /// crash of this process or of the machine, and is committed by recovery).
    pub async fn sync_staging(&self, ino: Ino) -> VfsResult<()> {
        let staged = self.inodes.lock().get(ino)?.staged.clone();
        match staged {
            Some(s) => blocking(move || s.sync()).await,
            None => Ok(()),
        }
    }

    /// A write served on the caller's thread when the file already has its staging copy (the
    /// common case: every write after the first of an open). `None`: take the async path.
    /// It blocks only on the local staging file, like the async path's blocking section.
    pub fn try_write_now(&self, fh: u64, offset: u64, data: &[u8]) -> Option<VfsResult<u32>> {
        let ino = match self.writer_ino(fh) {
            Ok(i) => i,
            Err(e) => return Some(Err(e)),
        };
        let s = self.inodes.lock().get(ino).ok()?.staged.clone()?;
        let r = s.write(offset, data);
        if !self.inodes.lock().get(ino).ok()?.holds(&s) {
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
            let (s2, f2) = (s.clone(), f.clone());
            let r = blocking(move || f2(&s2)).await?;
            if self.inodes.lock().get(ino)?.holds(&s) {
                return Ok(r);
            }
        }
    }

    fn stamp_modified(&self, ino: Ino) -> VfsResult<()> {
        let now = now_ns();
        let mut t = self.inodes.lock();
        let i = t.get_mut(ino)?;
        i.meta.mtime_ns = now;
        i.meta.ctime_ns = now;
        Ok(())
    }

    /// Change a file's size (truncate or extend with zeros).
    pub(super) async fn truncate(&self, ino: Ino, size: u64) -> VfsResult<()> {
        self.check_writable()?;
        self.with_current_staging(ino, move |s| s.resize(size))
            .await?;
        self.stamp_modified(ino)?;
        let idle = self.inodes.lock().get(ino)?.open_handles == 0;
        if idle {
            // No close will follow (truncate by path): schedule the flush now.
            self.flusher.schedule(ino);
        }
        Ok(())
    }

    /// close(2) of one file descriptor. Reports a background flush failure that put this
    /// handle's writes at risk (once per handle); a handle that only read, or that wrote
    /// after the failure, is not told. In paranoid mode, commit (and verify) the file first.
    pub async fn close(&self, fh: u64) -> VfsResult<()> {
        let ino = self.handle_ino(fh, false)?;
        if self.config.paranoid && self.handle_ino(fh, true).is_ok() {
            self.fsync(ino).await?;
        }
        self.take_flush_error(fh, ino)
    }

    /// The flush failure this handle has not been told about yet, if it concerns its writes.
    fn take_flush_error(&self, fh: u64, ino: Ino) -> VfsResult<()> {
        let Some(err) = self.inodes.lock().get(ino)?.flush_error else {
            return Ok(());
        };
        let mut h = self.handles.lock();
        let Some(HandleEntry::File(h)) = h.map.get_mut(&fh) else {
            return Err(Errno::EBADF);
        };
        let concerned = h.wrote_at.is_some_and(|w| w < err.at) && h.reported_at < err.at;
        if !concerned {
            return Ok(());
        }
        h.reported_at = err.at;
        Err(err.errno)
    }

    /// Last reference to an open file handle dropped.
    pub fn release(&self, fh: u64) -> VfsResult<()> {
        let handle = match self.handles.lock().map.remove(&fh) {
            Some(HandleEntry::File(h)) => h,
            Some(other) => {
                self.handles.lock().map.insert(fh, other);
                return Err(Errno::EBADF);
            }
            None => return Err(Errno::EBADF),
        };
        let staged = {
            let mut t = self.inodes.lock();
            let i = t.get_mut(handle.ino)?;
            i.open_handles = i.open_handles.saturating_sub(1);
            if i.linked && i.staged.is_some() {
                self.flusher.schedule(handle.ino);
            }
            t.reap(handle.ino)
        };
        drop(staged);
        if self.config.paranoid {
            self.drop_clean_staging(handle.ino);
        }
        self.collect_staging();
        Ok(())
    }

    /// Commit this file's current content to the store, or return why it cannot be. After a
    /// conflict (another writer replaced the file) the moved copy is committed before the
    /// conflict is reported: when `fsync` returns, this mount's version is in the store.
    pub async fn fsync(&self, ino: Ino) -> VfsResult<()> {
        let mut conflict = None;
        loop {
            let results = self.flush_batch(&[ino]).await;
            // The file's own result, or the failure of the namespace changes it depends on.
            let mine = results.iter().find(|(i, _)| *i == ino).map(|(_, r)| r);
            let ns = results.iter().find(|(i, _)| *i == NS_INO).map(|(_, r)| r);
            let r = match (mine, ns) {
                (Some(Err(f)), _) | (_, Some(Err(f))) => Err(f.clone()),
                (Some(Ok(o)), _) => Ok(*o),
                (None, _) => Ok(super::flush::Outcome::Clean),
            };
            match r {
                Ok(super::flush::Outcome::Retry) => continue,
                Ok(_) => {
                    if let Some(f) = conflict {
                        return Err(f);
                    }
                    self.inodes.lock().get_mut(ino)?.flush_error = None;
                    return Ok(());
                }
                Err(f) if f.conflict && conflict.is_none() => {
                    conflict = Some(f.errno);
                }
                Err(f) => {
                    let path = self.inodes.lock().path_of(ino).unwrap_or_default();
                    tracing::warn!(ino, "fsync of /{path}: {f}");
                    return Err(f.errno);
                }
            }
        }
    }

    /// Fill every hole of a staged file from its base (until none is left: a commit may move
    /// the base on meanwhile).
    pub(super) async fn fill_all_holes(&self, staged: &Arc<Staged>) -> VfsResult<()> {
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
}
