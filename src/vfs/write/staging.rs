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

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::remote::{ComposeEdit, FileId};
use crate::vfs::errno::{Errno, VfsResult};
use crate::vfs::write::journal::{self, Record};
use crate::vfs::write::sparse::SparseState;

/// The body of an empty file has no CAS object; this identity stands for it.
pub fn empty_id() -> FileId {
    FileId {
        hash: String::new(),
        size: 0,
    }
}

pub struct StagedIo {
    pub file: File,
    pub state: SparseState,
    /// The journal of this staging file (see `journal.rs`).
    log: File,
    /// The path last written to the journal.
    journaled_path: Option<String>,
    /// Unlinked from the bucket: its content must never be recovered.
    unlinked: bool,
}

impl StagedIo {
    fn journal(&mut self, r: &Record) -> std::io::Result<()> {
        journal::append(&mut self.log, r)
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
}

/// Orders uses of staging files; only comparisons matter.
static TICK: AtomicU64 = AtomicU64::new(0);

impl Drop for Staged {
    fn drop(&mut self) {
        // A clean staging file is just a cache, an unlinked one is garbage; a dirty one (a
        // shutdown that timed out) stays, with its journal, for the next start to commit.
        let io = self.io.get_mut();
        if io.state.is_dirty() && !io.unlinked {
            return;
        }
        for p in [self.path.clone(), log_path(&self.path)] {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), "cannot remove staging file: {e}");
                }
            }
        }
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
    /// size with empty coverage.
    pub fn create(path: PathBuf, base: FileId) -> std::io::Result<Arc<Self>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.set_len(base.size)?;
        let mut log = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(log_path(&path))?;
        journal::append(&mut log, &Record::Base(base.clone()))?;
        Ok(Self::assemble(
            path,
            file,
            log,
            SparseState::from_base(base),
            None,
        ))
    }

    fn assemble(
        path: PathBuf,
        file: File,
        log: File,
        state: SparseState,
        journaled_path: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Staged {
            path,
            io: Mutex::new(StagedIo {
                file,
                state,
                log,
                journaled_path,
                unlinked: false,
            }),
            flush_lock: Arc::new(tokio::sync::Mutex::new(())),
            last_used: AtomicU64::new(TICK.fetch_add(1, Ordering::Relaxed)),
            compose_refused: AtomicBool::new(false),
        })
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

    /// What the staging file really occupies on disk (allocated blocks): a sparse copy with
    /// one 4 KiB edit costs about 4 KiB.
    pub fn allocated_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.io
            .lock()
            .file
            .metadata()
            .map_or(0, |m| m.blocks() * 512)
    }

    /// Reopen a staging file left by an earlier run, as its journal describes it. `None`: the
    /// journal does not vouch for a dirty file (missing, unreadable, clean or unlinked); the
    /// caller removes both files.
    pub fn recover(path: &Path) -> std::io::Result<Option<Found>> {
        let log = log_path(path);
        let Some(replayed) = Record::decode_all(&journal::read(&log)?)
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
            path.to_path_buf(),
            file,
            log,
            replayed.state,
            Some(bucket_path.clone()),
        );
        Ok(Some(Found {
            staged,
            path: bucket_path,
            landed: replayed.landed,
        }))
    }

    /// Make the staging file and its journal durable on the local disk.
    pub fn sync(&self) -> VfsResult<()> {
        let io = self.io.lock();
        io.file.sync_data()?;
        io.log.sync_data()?;
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
        io.journal(&Record::Commit(base))?;
        Ok(true)
    }

    pub fn size(&self) -> u64 {
        self.io.lock().state.size()
    }

    /// Run `f` under the io lock.
    pub fn with_io<T>(&self, f: impl FnOnce(&mut StagedIo) -> T) -> T {
        f(&mut self.io.lock())
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
        let mut edits = Vec::new();
        for e in io.state.edits() {
            let mut buf = vec![0u8; (e.new_range.end - e.new_range.start) as usize];
            io.file.read_exact_at(&mut buf, e.new_range.start)?;
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
        let range = offset..offset + data.len() as u64;
        for hole in io.state.holes(range) {
            let from = (hole.start - offset) as usize;
            let to = (hole.end - offset) as usize;
            io.file.write_all_at(&data[from..to], hole.start)?;
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
        let mut done = 0usize;
        while done < data.len() {
            match io.file.write_at(&data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if done == 0 {
                        // The failed write may have extended the file; put the size back.
                        let size = io.state.size();
                        let _ = io.file.set_len(size);
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
        let size = io.state.size();
        let grow_to = (!op.keep_size() && range.end > size).then_some(range.end);
        match op {
            Falloc::Allocate { .. } => {
                reserve(&io.file, range.clone())?;
            }
            Falloc::Zero { .. } => {
                let zero = range.start.min(size)..range.end.min(size);
                if !zero.is_empty() {
                    punch(&io.file, zero.clone())?;
                    io.state.track_write(zero.clone());
                    io.journal(&Record::Write(zero.start, zero.end))?;
                }
            }
        }
        if let Some(end) = grow_to {
            io.file.set_len(end)?;
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
        io.file.set_len(size)?;
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

/// The staging directory: names new staging files.
pub struct StagingArea {
    dir: PathBuf,
    /// Journals with a path or unlink record that may not be on disk yet.
    unsynced: Mutex<Vec<std::sync::Weak<Staged>>>,
    counter: AtomicU64,
    /// Distinguishes this mount's files from leftovers of earlier runs.
    epoch: u128,
}

impl StagingArea {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(StagingArea {
            dir: dir.to_path_buf(),
            unsynced: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            epoch,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
                .try_for_each(|s| s.io.lock().log.sync_data())
        };
        if result.is_err() {
            self.unsynced.lock().extend(changed);
        }
        result
    }

    pub fn create(&self, base: FileId) -> VfsResult<Arc<Staged>> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{}-{:x}-{n}.stg", std::process::id(), self.epoch));
        Ok(Staged::create(path, base)?)
    }
}
