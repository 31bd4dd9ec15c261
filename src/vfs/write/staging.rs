//! Staging files: the local, sparse copy of a file being written.
//!
//! Each [`Staged`] pairs a staging file with its [`SparseState`] under one mutex, the
//! per-inode **io lock**: a `pwrite` and its `track_write`, a `pread` and the coverage check
//! that allowed it, a hole fill and its `track_fill`, and a `set_len` and its `resize` are each
//! atomic with respect to one another. The io lock is a std mutex: it is never held across an
//! `.await` or network I/O, only across local file I/O on the staging file.
//!
//! `flush_lock` (the per-inode staging lock) serialises flushes of one inode; it is a tokio
//! mutex held across the upload, and is taken before the io lock.
//!
//! A staging file holds no descriptor of its own: its data file and journal are opened on
//! demand through the process's [`FdCache`] (bounded, least recently used closed first), so
//! tens of thousands of pending files fit in a 1,024-descriptor limit. What the files occupy
//! is kept as running totals ([`Usage`]): each copy remembers what it was charged and is
//! charged the difference when its allocation changes, so the staging budget never walks
//! every staged file to measure it.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::remote::{ComposeEdit, FileId};
use crate::vfs::errno::{Errno, VfsResult};
use crate::vfs::write::fds::{Fd, FdCache, Part};
use crate::vfs::write::journal::{self, Record};
use crate::vfs::write::sparse::SparseState;

/// The body of an empty file has no CAS object; this identity stands for it.
pub fn empty_id() -> FileId {
    FileId {
        hash: String::new(),
        size: 0,
    }
}

/// What a staging area's files share: the descriptor cache, the running totals, the spares.
struct Shared {
    fds: Arc<FdCache>,
    usage: Usage,
    spares: Spares,
}

impl Shared {
    fn new(fds: Arc<FdCache>) -> Arc<Self> {
        Arc::new(Shared {
            fds,
            usage: Usage::default(),
            spares: Spares {
                paths: Mutex::new(Some(Vec::new())),
            },
        })
    }
}

/// Emptied staging pairs kept for the next new file. Creating a pair for every new file and
/// deleting it once the file is committed and evicted makes the file system allocate and free
/// two inodes per file, and ext4 without a journal steps over every inode freed in the last
/// minutes on each allocation (`recently_deleted`): creates grew 2.8x slower over 100k files.
/// A pair is emptied journal first, and an empty journal vouches for nothing, so a pair cut
/// off half-emptied, or left as a spare by a crash, is garbage that start-up recovery removes.
struct Spares {
    /// `None` once the area is closed: every pair goes from then on.
    paths: Mutex<Option<Vec<PathBuf>>>,
}

impl Spares {
    /// An eviction round frees an eighth of the default 10,000-file budget; a burst beyond
    /// this is deleted as before.
    const CAP: usize = 4096;

    /// Keep the pair at `path` (its open descriptors: data, journal) as a spare, or delete it.
    fn recycle(&self, path: &Path, [data, log]: [Option<Arc<File>>; 2]) {
        let empty = |p: PathBuf, f: Option<Arc<File>>| match f {
            Some(f) => f.set_len(0),
            None => OpenOptions::new().write(true).open(p)?.set_len(0),
        };
        let room = |g: &Option<Vec<PathBuf>>| g.as_ref().is_some_and(|v| v.len() < Self::CAP);
        if room(&self.paths.lock())
            && empty(log_path(path), log).is_ok()
            && empty(path.to_path_buf(), data).is_ok()
        {
            if let Some(v) = self.paths.lock().as_mut() {
                v.push(path.to_path_buf());
                return;
            }
        }
        remove_pair(path);
    }

    fn take(&self) -> Option<PathBuf> {
        self.paths.lock().as_mut()?.pop()
    }

    /// Delete the spares, and every pair recycled from now on.
    fn close(&self) {
        let kept = self.paths.lock().take();
        for p in kept.into_iter().flatten() {
            remove_pair(&p);
        }
    }
}

/// Spares outlive no staging area.
impl Drop for Spares {
    fn drop(&mut self) {
        self.close();
    }
}

/// Delete a staging file and its journal (either may be missing).
pub fn remove_pair(staging: &Path) {
    for p in [staging.to_path_buf(), log_path(staging)] {
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), "cannot remove staging file: {e}");
            }
        }
    }
}

/// What a staging area's files occupy, kept up to date as they change (never measured by
/// walking them: a close must not cost what is staged).
#[derive(Default)]
pub struct Usage {
    /// Allocated bytes of the staging files.
    bytes: AtomicU64,
    /// Live staging copies.
    files: AtomicUsize,
    /// Those of them that are clean (evictable, unless open or flushing).
    clean: AtomicUsize,
    /// Woken whenever a staging copy goes away: room for writers waiting for it.
    pub freed: tokio::sync::Notify,
}

impl Usage {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    pub fn files(&self) -> usize {
        self.files.load(Ordering::SeqCst)
    }

    pub fn clean(&self) -> usize {
        self.clean.load(Ordering::SeqCst)
    }
}

pub struct StagedIo {
    pub file: Fd,
    pub state: SparseState,
    /// The journal of this staging file (see `journal.rs`).
    log: Fd,
    /// The path last written to the journal.
    journaled_path: Option<String>,
    /// Unlinked from the bucket: its content must never be recovered.
    unlinked: bool,
    /// The allocated bytes of the data file charged to the area's [`Usage`].
    charged: u64,
    /// Since when this copy is counted dirty in the area's [`Usage`] (`None`: counted clean):
    /// how long its changes have waited for the store.
    dirty_since: Option<SystemTime>,
}

impl StagedIo {
    /// When the content last went from what the store holds to something else.
    pub fn dirty_since(&self) -> Option<SystemTime> {
        self.dirty_since
    }

    fn journal(&mut self, r: &Record) -> std::io::Result<()> {
        journal::append(&*self.log.get()?, r)
    }
}

pub struct Staged {
    pub path: PathBuf,
    io: Mutex<StagedIo>,
    pub flush_lock: Arc<tokio::sync::Mutex<()>>,
    /// When this copy was last read or written (a process-wide tick), for LRU eviction.
    last_used: AtomicU64,
    /// The store refused to compose this file (verification failed): flush it whole.
    compose_refused: AtomicBool,
    /// Its key in its area's descriptor cache.
    id: u64,
    area: Arc<Shared>,
}

/// Orders uses of staging files; only comparisons matter.
static TICK: AtomicU64 = AtomicU64::new(0);

impl Drop for Staged {
    fn drop(&mut self) {
        let open = self.area.fds.forget(self.id);
        // A clean staging file is just a cache (its pair is kept for a new file), an unlinked
        // one is garbage; a dirty one (a shutdown that timed out) stays, with its journal, for
        // the next start to commit.
        let io = self.io.get_mut();
        if io.unlinked {
            remove_pair(&self.path);
        } else if !io.state.is_dirty() {
            self.area.spares.recycle(&self.path, open);
        }
        let usage = &self.area.usage;
        usage.bytes.fetch_sub(io.charged, Ordering::SeqCst);
        usage.files.fetch_sub(1, Ordering::SeqCst);
        if io.dirty_since.is_none() {
            usage.clean.fetch_sub(1, Ordering::SeqCst);
        }
        usage.freed.notify_waiters();
    }
}

/// The journal next to a staging file.
pub fn log_path(staging: &Path) -> PathBuf {
    staging.with_extension("log")
}

/// What a locked read found.
pub enum ReadPlan {
    Data(Vec<u8>),
    /// These parts of the request are holes; fill them from `base` and retry.
    Holes {
        base: FileId,
        holes: Vec<Range<u64>>,
    },
}

/// A staging file an earlier run left, as its journal describes it.
pub struct Found {
    pub staged: Arc<Staged>,
    /// Its path in the bucket.
    pub path: String,
    /// What the journal says this mount last committed of it, if not the whole state
    /// ([`Record::Landed`]).
    pub landed: Option<FileId>,
}

impl Staged {
    /// A staging file mirroring `base` with nothing downloaded: a sparse file of the base's
    /// size with empty coverage (outside any [`StagingArea`]'s accounting).
    #[cfg(test)]
    pub fn create(path: PathBuf, base: FileId) -> std::io::Result<Arc<Self>> {
        Self::create_in(Shared::new(FdCache::global()), path, false, base)
    }

    /// As [`Self::create`], at `path`, or over the spare pair there (`spare`); a failure
    /// leaves neither file behind.
    fn create_in(
        area: Arc<Shared>,
        path: PathBuf,
        spare: bool,
        base: FileId,
    ) -> std::io::Result<Arc<Self>> {
        let mut made = Vec::new();
        let opened = match Self::create_files(&path, spare, &base, &mut made) {
            Ok(o) => o,
            Err(e) => {
                for p in made {
                    if let Err(e) = std::fs::remove_file(&p) {
                        tracing::warn!(path = %p.display(), "cannot remove staging file: {e}");
                    }
                }
                return Err(e);
            }
        };
        Ok(Self::assemble(
            area,
            path,
            opened,
            SparseState::from_base(base),
            None,
        ))
    }

    /// The staging file and its journal, each pushed on `made` once it exists (a spare
    /// pair's from the start).
    fn create_files(
        path: &Path,
        spare: bool,
        base: &FileId,
        made: &mut Vec<PathBuf>,
    ) -> std::io::Result<(File, File)> {
        let log = log_path(path);
        if spare {
            made.extend([path.to_path_buf(), log.clone()]);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(!spare)
            .truncate(spare)
            .open(path)?;
        if !spare {
            made.push(path.to_path_buf());
        }
        file.set_len(base.size)?;
        let journal = OpenOptions::new()
            .append(true)
            .create_new(!spare)
            .open(&log)?;
        if spare {
            journal.set_len(0)?;
        } else {
            made.push(log);
        }
        journal::append(&journal, &Record::Base(base.clone()))?;
        Ok((file, journal))
    }

    fn assemble(
        area: Arc<Shared>,
        path: PathBuf,
        (file, log): (File, File),
        state: SparseState,
        journaled_path: Option<String>,
    ) -> Arc<Self> {
        let fds = &area.fds;
        let id = fds.next_id.fetch_add(1, Ordering::Relaxed);
        let fd = |part| Fd {
            fds: fds.clone(),
            id,
            part,
            path: match part {
                Part::Data => path.clone(),
                Part::Log => log_path(&path),
            },
        };
        let io = StagedIo {
            file: fd(Part::Data),
            log: fd(Part::Log),
            state,
            journaled_path,
            unlinked: false,
            charged: 0,
            dirty_since: Some(SystemTime::now()),
        };
        fds.put(id, Part::Data, Arc::new(file));
        fds.put(id, Part::Log, Arc::new(log));
        area.usage.files.fetch_add(1, Ordering::SeqCst);
        let staged = Arc::new(Staged {
            path,
            io: Mutex::new(io),
            flush_lock: Arc::new(tokio::sync::Mutex::new(())),
            last_used: AtomicU64::new(TICK.fetch_add(1, Ordering::Relaxed)),
            compose_refused: AtomicBool::new(false),
            id,
            area,
        });
        staged.settle(&mut staged.io.lock(), true);
        staged
    }

    /// Charge the area's usage with what the data file occupies now (`measure`: one fstat)
    /// and whether the copy is clean. Run under the io lock after every operation that may
    /// change either, so the running totals equal a fresh walk of the staged files.
    fn settle(&self, io: &mut StagedIo, measure: bool) {
        if measure {
            match io.file.get().and_then(|f| f.metadata()) {
                Ok(m) => {
                    let now = m.blocks() * 512;
                    if now >= io.charged {
                        self.area
                            .usage
                            .bytes
                            .fetch_add(now - io.charged, Ordering::SeqCst);
                    } else {
                        self.area
                            .usage
                            .bytes
                            .fetch_sub(io.charged - now, Ordering::SeqCst);
                    }
                    io.charged = now;
                }
                Err(e) => tracing::debug!(path = %self.path.display(), "cannot measure: {e}"),
            }
        }
        let dirty = io.state.is_dirty();
        if dirty != io.dirty_since.is_some() {
            if dirty {
                self.area.usage.clean.fetch_sub(1, Ordering::SeqCst);
                io.dirty_since = Some(SystemTime::now());
            } else {
                self.area.usage.clean.fetch_add(1, Ordering::SeqCst);
                io.dirty_since = None;
            }
        }
    }

    fn touch(&self) {
        self.last_used
            .store(TICK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn refuse_compose(&self) {
        self.compose_refused.store(true, Ordering::Relaxed);
    }

    pub fn compose_refused(&self) -> bool {
        self.compose_refused.load(Ordering::Relaxed)
    }

    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// What this copy is charged in its area's usage: its allocated blocks when last
    /// changed (a sparse copy with one 4 KiB edit costs about 4 KiB).
    pub fn charged(&self) -> u64 {
        self.io.lock().charged
    }

    /// What the staging file occupies on disk now, measured afresh.
    #[cfg(test)]
    pub fn allocated_bytes(&self) -> u64 {
        let io = self.io.lock();
        io.file
            .get()
            .and_then(|f| f.metadata())
            .map_or(0, |m| m.blocks() * 512)
    }

    /// Reopen a staging file left by an earlier run, as its journal describes it (outside any
    /// [`StagingArea`]'s accounting; see [`StagingArea::recover`]).
    #[cfg(test)]
    pub fn recover(path: &Path) -> std::io::Result<Option<Found>> {
        Self::recover_in(Shared::new(FdCache::global()), path)
    }

    /// `None`: the journal does not vouch for a dirty file (missing, unreadable, clean or
    /// unlinked); the caller removes both files.
    fn recover_in(area: Arc<Shared>, path: &Path) -> std::io::Result<Option<Found>> {
        let log = log_path(path);
        let bytes = match journal::read(&log) {
            Ok(b) => b,
            // A crash between creating the staging file and its journal: nothing in it was
            // ever acknowledged.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(replayed) = Record::decode_all(&bytes)
            .as_deref()
            .and_then(journal::replay)
        else {
            return Ok(None);
        };
        let Some(bucket_path) = replayed.path.filter(|_| !replayed.unlinked) else {
            return Ok(None);
        };
        if !replayed.state.is_dirty() {
            return Ok(None);
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        // An operation cut off before it was journaled was never acknowledged: the journal's
        // size is the file's.
        file.set_len(replayed.state.size())?;
        let log = OpenOptions::new().append(true).open(&log)?;
        let staged = Self::assemble(
            area,
            path.to_path_buf(),
            (file, log),
            replayed.state,
            Some(bucket_path.clone()),
        );
        Ok(Some(Found {
            staged,
            path: bucket_path,
            landed: replayed.landed,
        }))
    }

    /// Make the staging file and its journal durable on the local disk. A descriptor opened
    /// after the write was evicted syncs it all the same (`fsync` is per file, not per
    /// descriptor, and reports write-back errors no descriptor has seen yet).
    pub fn sync(&self) -> VfsResult<()> {
        let io = self.io.lock();
        io.file.get()?.sync_data()?;
        io.log.get()?.sync_data()?;
        Ok(())
    }

    /// Journal the bucket path this file belongs to (first use, rename). Made durable before
    /// the catalog sees the change ([`StagingArea::sync_journals`]).
    /// Returns whether a record was added.
    pub fn note_path(&self, path: &str) -> VfsResult<bool> {
        let mut io = self.io.lock();
        if io.journaled_path.as_deref() == Some(path) {
            return Ok(false);
        }
        io.journal(&Record::Path(path.to_string()))?;
        io.journaled_path = Some(path.to_string());
        Ok(true)
    }

    /// Journal that the store now holds `body` at this file's path, committed from a state
    /// written to since (see [`Record::Landed`]).
    pub fn note_landed(&self, body: &FileId) -> VfsResult<()> {
        Ok(self.io.lock().journal(&Record::Landed(body.clone()))?)
    }

    /// Journal that the file left the bucket: it is never recovered. Made durable like
    /// [`Self::note_path`].
    pub fn note_unlinked(&self) -> VfsResult<()> {
        let mut io = self.io.lock();
        if io.unlinked {
            return Ok(());
        }
        io.unlinked = true;
        io.journal(&Record::Unlinked)?;
        Ok(())
    }

    /// The content at `generation` was committed as `base`. Applies (and is journaled) only if
    /// nothing changed since.
    pub fn commit(&self, base: FileId, generation: u64) -> VfsResult<bool> {
        let mut io = self.io.lock();
        if !io.state.commit(base.clone(), generation) {
            return Ok(false);
        }
        let r = io.journal(&Record::Commit(base));
        self.settle(&mut io, false);
        r?;
        Ok(true)
    }

    pub fn size(&self) -> u64 {
        self.io.lock().state.size()
    }

    /// Whether the content differs from what the store holds.
    pub fn is_dirty(&self) -> bool {
        self.io.lock().state.is_dirty()
    }

    /// Run `f` under the io lock.
    pub fn with_io<T>(&self, f: impl FnOnce(&mut StagedIo) -> T) -> T {
        let mut io = self.io.lock();
        let r = f(&mut io);
        self.settle(&mut io, false);
        r
    }

    /// Read `range` (clipped to the size) if it holds no holes; otherwise say which holes.
    pub fn read(&self, range: Range<u64>) -> VfsResult<ReadPlan> {
        self.touch();
        let io = self.io.lock();
        let end = range.end.min(io.state.size());
        if range.start >= end {
            return Ok(ReadPlan::Data(Vec::new()));
        }
        let holes = io.state.holes(range.start..end);
        if !holes.is_empty() {
            let base = io.state.base().cloned().ok_or(Errno::EIO)?;
            return Ok(ReadPlan::Holes { base, holes });
        }
        let mut buf = vec![0u8; (end - range.start) as usize];
        io.file.read_exact_at(&mut buf, range.start)?;
        Ok(ReadPlan::Data(buf))
    }

    /// Copy the bytes of every edit against the base out of staging, atomically with the
    /// generation they belong to. Returns `(generation, base, edits)`.
    pub fn snapshot_edits(&self) -> VfsResult<(u64, FileId, Vec<ComposeEdit>)> {
        let io = self.io.lock();
        let base = io.state.base().cloned().ok_or(Errno::EIO)?;
        let file = io.file.get()?;
        let mut edits = Vec::new();
        for e in io.state.edits() {
            let mut buf = vec![0u8; (e.new_range.end - e.new_range.start) as usize];
            file.read_exact_at(&mut buf, e.new_range.start)?;
            edits.push(ComposeEdit {
                original_range: e.original_range,
                data: buf.into(),
            });
        }
        Ok((io.state.generation(), base, edits))
    }

    /// Write bytes fetched from `base` at `offset` into the parts that are still holes (a
    /// writer may have filled some meanwhile, a shrink may have cut them, or a commit may have
    /// moved the base on).
    pub fn fill(&self, base: &FileId, offset: u64, data: &[u8]) -> VfsResult<()> {
        let mut io = self.io.lock();
        if io.state.base() != Some(base) {
            return Ok(());
        }
        let r = Self::fill_locked(&mut io, offset, data);
        self.settle(&mut io, true);
        r
    }

    fn fill_locked(io: &mut StagedIo, offset: u64, data: &[u8]) -> VfsResult<()> {
        let file = io.file.get()?;
        for hole in io.state.holes(offset..offset + data.len() as u64) {
            let from = (hole.start - offset) as usize;
            let to = (hole.end - offset) as usize;
            file.write_all_at(&data[from..to], hole.start)?;
            io.state.track_fill(hole.clone());
            io.journal(&Record::Fill(hole.start, hole.end))?;
        }
        Ok(())
    }

    /// Write user bytes. A partial write (disk full) is tracked for what landed and reported as
    /// a short count; nothing landed → the error.
    pub fn write(&self, offset: u64, data: &[u8]) -> VfsResult<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= i64::MAX as u64)
            .ok_or(Errno::EFBIG)?;
        self.touch();
        let mut io = self.io.lock();
        let r = Self::write_locked(&mut io, offset, data);
        self.settle(&mut io, true);
        r
    }

    fn write_locked(io: &mut StagedIo, offset: u64, data: &[u8]) -> VfsResult<usize> {
        let file = io.file.get()?;
        let mut done = 0usize;
        while done < data.len() {
            match file.write_at(&data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if done == 0 {
                        // The failed write may have extended the file; put the size back.
                        let _ = file.set_len(io.state.size());
                        return Err(e.into());
                    }
                    break;
                }
            }
        }
        io.state.track_write(offset..offset + done as u64);
        io.journal(&Record::Write(offset, offset + done as u64))?;
        Ok(done)
    }

    /// `fallocate(2)` on the file. Reserving space reserves it in the staging file (so later
    /// writes there do not run out of disk); zeroing punches the staging file (it stays
    /// sparse) and makes the range user data, committed like a write of zeros. Returns whether
    /// the file's content or size changed.
    pub fn fallocate(&self, range: Range<u64>, op: Falloc) -> VfsResult<bool> {
        self.touch();
        let mut io = self.io.lock();
        let r = Self::fallocate_locked(&mut io, range, op);
        self.settle(&mut io, true);
        r
    }

    fn fallocate_locked(io: &mut StagedIo, range: Range<u64>, op: Falloc) -> VfsResult<bool> {
        let file = io.file.get()?;
        let size = io.state.size();
        let grow_to = (!op.keep_size() && range.end > size).then_some(range.end);
        match op {
            Falloc::Allocate { .. } => {
                reserve(&file, range.clone())?;
            }
            Falloc::Zero { .. } => {
                let zero = range.start.min(size)..range.end.min(size);
                if !zero.is_empty() {
                    punch(&file, zero.clone())?;
                    io.state.track_write(zero.clone());
                    io.journal(&Record::Write(zero.start, zero.end))?;
                }
            }
        }
        if let Some(end) = grow_to {
            file.set_len(end)?;
            io.state.resize(end);
            io.journal(&Record::Resize(end))?;
        }
        Ok(grow_to.is_some() || matches!(op, Falloc::Zero { .. }) && range.start < size)
    }

    /// Truncate or extend to `size`.
    pub fn resize(&self, size: u64) -> VfsResult<()> {
        if size > i64::MAX as u64 {
            return Err(Errno::EFBIG);
        }
        let mut io = self.io.lock();
        let r = Self::resize_locked(&mut io, size);
        self.settle(&mut io, true);
        r
    }

    fn resize_locked(io: &mut StagedIo, size: u64) -> VfsResult<()> {
        io.file.get()?.set_len(size)?;
        io.state.resize(size);
        io.journal(&Record::Resize(size))?;
        Ok(())
    }
}

/// What `fallocate(2)` asks of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Falloc {
    /// Mode 0 or `FALLOC_FL_KEEP_SIZE`: reserve space (growing the file unless `keep_size`).
    Allocate { keep_size: bool },
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`, or `FALLOC_FL_ZERO_RANGE` (growing the
    /// file unless `keep_size`): the range reads as zeros.
    Zero { keep_size: bool },
}

impl Falloc {
    /// Decode a `fallocate(2)` mode; `None` for modes xetmount does not support.
    pub fn from_mode(mode: i32) -> Option<Falloc> {
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        Some(match mode {
            0 => Falloc::Allocate { keep_size: false },
            KEEP => Falloc::Allocate { keep_size: true },
            m if m == PUNCH | KEEP => Falloc::Zero { keep_size: true },
            ZERO => Falloc::Zero { keep_size: false },
            m if m == ZERO | KEEP => Falloc::Zero { keep_size: true },
            _ => return None,
        })
    }

    fn keep_size(self) -> bool {
        match self {
            Falloc::Allocate { keep_size } | Falloc::Zero { keep_size } => keep_size,
        }
    }
}

/// Reserve disk blocks for `range` of `file` without changing its size or content. A
/// staging file system that cannot reserve simply does not (nothing is promised then).
fn reserve(file: &File, range: Range<u64>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open fd; the range was checked to fit in an off_t.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            range.start as libc::off_t,
            (range.end - range.start) as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

/// Make `range` of `file` read as zeros, deallocating it where the file system can.
fn punch(file: &File, range: Range<u64>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: as in `reserve`.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            range.start as libc::off_t,
            (range.end - range.start) as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    // No hole punching here: write the zeros.
    let zeros = vec![0u8; (1 << 20).min(range.end - range.start) as usize];
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The staging directory: names new staging files, and keeps the running totals of what
/// they occupy.
pub struct StagingArea {
    dir: PathBuf,
    /// Journals with a path or unlink record that may not be on disk yet.
    unsynced: Mutex<Vec<std::sync::Weak<Staged>>>,
    counter: AtomicU64,
    /// Distinguishes this mount's files from leftovers of earlier runs.
    epoch: u128,
    shared: Arc<Shared>,
}

impl StagingArea {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Self::open_with(dir, FdCache::global())
    }

    /// A staging area whose files share the descriptors of `fds`.
    pub fn open_with(dir: &Path, fds: Arc<FdCache>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(StagingArea {
            dir: dir.to_path_buf(),
            unsynced: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            epoch,
            shared: Shared::new(fds),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What this area's staging files occupy now.
    pub fn usage(&self) -> &Usage {
        &self.shared.usage
    }

    /// `s`'s journal got a path or unlink record (`Staged::note_path`, `note_unlinked`).
    pub fn journal_changed(&self, s: &Arc<Staged>) {
        self.unsynced.lock().push(Arc::downgrade(s));
    }

    /// Make every journal's path and unlink records durable, before the catalog commits the
    /// namespace changes they follow: after a power loss the store is never ahead of them (a
    /// recovered file would come back under an old name, or come back after its unlink).
    /// A few journals are synced one by one; many (an untar) with one `syncfs` of the staging
    /// file system.
    pub fn sync_journals(&self) -> std::io::Result<()> {
        const ONE_BY_ONE: usize = 32;
        let changed = std::mem::take(&mut *self.unsynced.lock());
        let result = if changed.len() > ONE_BY_ONE {
            use std::os::fd::AsRawFd;
            let dir = File::open(&self.dir)?;
            // SAFETY: plain syscall on an open fd.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        } else {
            changed
                .iter()
                .filter_map(|w| w.upgrade())
                .try_for_each(|s| s.io.lock().log.get()?.sync_data())
        };
        if result.is_err() {
            self.unsynced.lock().extend(changed);
        }
        result
    }

    pub fn create(&self, base: FileId) -> VfsResult<Arc<Staged>> {
        let (path, spare) = match self.shared.spares.take() {
            Some(p) => (p, true),
            None => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let name = format!("{}-{:x}-{n}.stg", std::process::id(), self.epoch);
                (self.dir.join(name), false)
            }
        };
        Ok(Staged::create_in(self.shared.clone(), path, spare, base)?)
    }

    /// Delete the emptied pairs kept for new files, and from now on every pair that is no
    /// longer needed (at shutdown: nothing is left behind for the next start to clean).
    pub fn close_spares(&self) {
        self.shared.spares.close();
    }

    /// Reopen a staging file an earlier run left in this area (see `Staged::recover_in`).
    pub fn recover(&self, path: &Path) -> std::io::Result<Option<Found>> {
        Staged::recover_in(self.shared.clone(), path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(size: u64) -> FileId {
        FileId {
            hash: format!("{size:064x}"),
            size,
        }
    }

    /// Fifty staging files written and read back through a cache of four descriptors.
    #[test]
    fn staging_files_share_a_bounded_set_of_descriptors() {
        let d = tempfile::tempdir().unwrap();
        let fds = FdCache::new(4);
        let area = StagingArea::open_with(d.path(), fds.clone()).unwrap();
        let files: Vec<Arc<Staged>> = (0..50).map(|_| area.create(empty_id()).unwrap()).collect();
        assert!(fds.open_count() <= 4);
        for (n, s) in files.iter().enumerate() {
            s.write(0, format!("file {n}").as_bytes()).unwrap();
            s.note_path(&format!("f{n}")).unwrap();
            assert!(fds.open_count() <= 4);
        }
        for (n, s) in files.iter().enumerate().rev() {
            s.sync().unwrap();
            match s.read(0..100).unwrap() {
                ReadPlan::Data(d) => assert_eq!(d, format!("file {n}").as_bytes()),
                ReadPlan::Holes { .. } => panic!("file {n} has holes"),
            }
        }
        // The journals written through reopened descriptors recover.
        let found = area.recover(&files[0].path).unwrap().unwrap();
        assert_eq!(found.path, "f0");
        drop(found);
        assert!(fds.open_count() <= 4);
        drop(files);
        assert_eq!(
            fds.open_count(),
            0,
            "a dropped file's descriptors stay open"
        );
    }

    /// Sum of what the live files occupy, measured afresh, against the running totals.
    fn check_totals(area: &StagingArea, live: &[Arc<Staged>]) {
        let fresh: u64 = live.iter().map(|s| s.allocated_bytes()).sum();
        let clean = live.iter().filter(|s| !s.is_dirty()).count();
        let u = area.usage();
        assert_eq!(
            (u.bytes(), u.files(), u.clean()),
            (fresh, live.len(), clean)
        );
    }

    #[test]
    fn the_running_total_equals_a_fresh_sum_of_allocated_bytes() {
        let d = tempfile::tempdir().unwrap();
        let area = StagingArea::open(d.path()).unwrap();
        let mut live: Vec<Arc<Staged>> = Vec::new();
        let mb = 1u64 << 20;
        for n in 0..6u64 {
            live.push(area.create(id(n * mb)).unwrap());
            check_totals(&area, &live);
        }
        live[0].write(0, &vec![1; 300_000]).unwrap();
        live[1].fill(&id(mb), 0, &vec![2; mb as usize]).unwrap();
        live[2].write(5 * mb, &[3; 10]).unwrap();
        check_totals(&area, &live);
        live[2].resize(mb / 2).unwrap();
        live[3]
            .fill(&id(3 * mb), mb, &vec![4; mb as usize])
            .unwrap();
        live[3]
            .fallocate(mb..mb + 65536, Falloc::Zero { keep_size: true })
            .unwrap();
        live[4]
            .fallocate(0..mb, Falloc::Allocate { keep_size: true })
            .unwrap();
        check_totals(&area, &live);
        let (generation, _, _) = live[0].snapshot_edits().unwrap();
        assert!(live[0].commit(id(300_000), generation).unwrap());
        live[1].resize(0).unwrap();
        check_totals(&area, &live);
        // Evicted copies give back what they were charged.
        live.remove(3);
        live.remove(0);
        check_totals(&area, &live);
        live.clear();
        check_totals(&area, &live);
        assert_eq!(area.usage().bytes(), 0);
    }

    /// Staging files in `dir` (data files only).
    fn staging_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "stg"))
            .collect();
        v.sort();
        v
    }

    /// A committed copy's pair is emptied and reused by the next new file, which starts from
    /// nothing of the old one; a spare vouches for nothing at recovery; closing the area
    /// deletes the spares.
    #[test]
    fn evicted_pairs_are_emptied_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let area = StagingArea::open(d.path()).unwrap();
        let old = area.create(empty_id()).unwrap();
        old.write(0, &[7; 100_000]).unwrap();
        old.note_path("old").unwrap();
        let (generation, _, _) = old.snapshot_edits().unwrap();
        assert!(old.commit(id(100_000), generation).unwrap());
        let path = old.path.clone();
        drop(old);
        // Kept, empty, and not something recovery would bring back.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(std::fs::metadata(log_path(&path)).unwrap().len(), 0);
        assert!(area.recover(&path).unwrap().is_none());
        assert_eq!(area.usage().bytes(), 0);

        let new = area.create(id(50)).unwrap();
        assert_eq!(new.path, path, "the spare pair is reused");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 50);
        match new.read(0..50).unwrap() {
            ReadPlan::Holes { holes, .. } => assert_eq!(holes, vec![0..50]),
            ReadPlan::Data(_) => panic!("a reused pair covers nothing yet"),
        }
        new.write(0, b"fresh").unwrap();
        new.note_path("new").unwrap();
        let found = area.recover(&path).unwrap().unwrap();
        assert_eq!(found.path, "new");
        drop(found);
        assert_eq!(staging_files(d.path()), vec![path.clone()]);
        // A dirty copy is never recycled: its pair stays for recovery.
        drop(new);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 50);

        // An unlinked copy's pair goes at once; closing the area deletes the spares, and from
        // then on every pair no longer needed.
        let gone = area.create(empty_id()).unwrap();
        gone.write(0, b"x").unwrap();
        gone.note_unlinked().unwrap();
        drop(gone);
        assert_eq!(staging_files(d.path()), vec![path.clone()]);
        let spare = area.create(empty_id()).unwrap();
        drop(spare);
        assert_eq!(staging_files(d.path()).len(), 2);
        area.close_spares();
        assert_eq!(staging_files(d.path()), vec![path.clone()]);
        drop(area.create(empty_id()).unwrap());
        assert_eq!(staging_files(d.path()), vec![path]);
    }

    #[test]
    fn a_failed_create_leaves_no_file_and_a_file_without_journal_is_not_recovered() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("x.stg");
        // The journal cannot be created: the staging file made before it goes again.
        std::fs::create_dir(log_path(&path)).unwrap();
        assert!(Staged::create(path.clone(), empty_id()).is_err());
        assert!(!path.exists());
        // A crash between the two: the staging file alone vouches for nothing.
        std::fs::remove_dir(log_path(&path)).unwrap();
        std::fs::write(&path, b"half made").unwrap();
        let area = StagingArea::open(d.path()).unwrap();
        assert!(area.recover(&path).unwrap().is_none());
    }
}
