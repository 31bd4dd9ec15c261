//! Open descriptors of staging files: one bounded, least-recently-used cache per process, so
//! a pending file holds no descriptor while idle (see `staging.rs`).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::lru::Lru;

/// Which of a staging file's two files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Part {
    Data,
    Log,
}

/// Open descriptors of staging files, the least recently used closed first: a pending file
/// pins none, so any number of them fits in the process's descriptor limit. One per process,
/// as the limit is. A descriptor in use when it is evicted stays open until that use ends.
pub struct FdCache {
    open: Mutex<Lru<(u64, Part), Arc<File>>>,
    pub(super) next_id: AtomicU64,
}

impl FdCache {
    /// A cache keeping at most `cap` descriptors open.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(FdCache {
            open: Mutex::new(Lru::new(cap as u64)),
            next_id: AtomicU64::new(0),
        })
    }

    /// The process's cache: a quarter of the soft descriptor limit (the rest is for the
    /// store, connections and the kernel channel), at most 512, at least 16.
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<FdCache>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: getrlimit with a valid pointer to a local struct.
                let soft = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } {
                    0 => lim.rlim_cur,
                    _ => 1024,
                };
                FdCache::new((soft / 4).clamp(16, 512) as usize)
            })
            .clone()
    }

    /// Descriptors open now (in use elsewhere or not).
    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        self.open.lock().len()
    }

    pub(super) fn get(&self, id: u64, part: Part, path: &Path) -> std::io::Result<Arc<File>> {
        if let Some(f) = self.open.lock().get(&(id, part)) {
            return Ok(f.clone());
        }
        // Opened outside the cache lock; the file's io lock keeps its other users out.
        let mut o = OpenOptions::new();
        match part {
            Part::Data => o.read(true).write(true),
            Part::Log => o.append(true),
        };
        let f = Arc::new(o.open(path)?);
        self.put(id, part, f.clone());
        Ok(f)
    }

    pub(super) fn put(&self, id: u64, part: Part, f: Arc<File>) {
        self.open.lock().insert((id, part), f, 1);
    }

    /// Drop a staging file's descriptors from the cache, handing back those that were open
    /// (data, journal).
    pub(super) fn forget(&self, id: u64) -> [Option<Arc<File>>; 2] {
        let mut g = self.open.lock();
        [g.remove(&(id, Part::Data)), g.remove(&(id, Part::Log))]
    }
}

/// One of a staging file's files, opened on demand through the [`FdCache`].
pub struct Fd {
    pub(super) fds: Arc<FdCache>,
    pub(super) id: u64,
    pub(super) part: Part,
    pub(super) path: PathBuf,
}

impl Fd {
    pub(super) fn get(&self) -> std::io::Result<Arc<File>> {
        self.fds.get(self.id, self.part, &self.path)
    }
}

/// Positioned I/O as on the open file (`read_exact_at` and the rest come with the trait).
impl FileExt for Fd {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.get()?.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<usize> {
        self.get()?.write_at(buf, offset)
    }
}
