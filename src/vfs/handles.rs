//! The open-handle table: which file or directory each handle names, how it was opened, its
//! read-ahead state, and which flush failures it has been told about. One std lock, taken
//! after the inode table's and never across an `.await`.

use std::collections::HashMap;
use std::ops::Range;

use parking_lot::Mutex;

use crate::vfs::namespace::inode::{FlushError, Ino};
use crate::vfs::read::ReadAhead;
use crate::vfs::{DirEntry, Errno, VfsResult};

struct Handle {
    ino: Ino,
    writable: bool,
    ra: ReadAhead,
    /// When this handle first changed the file (an event number, `Namespace::next_event`):
    /// flush failures after that concern its data.
    wrote_at: Option<u64>,
    /// The last flush failure reported to this handle (each is reported once).
    reported_at: u64,
}

enum HandleEntry {
    File(Handle),
    /// A directory's entries, snapshotted at opendir.
    Dir(Vec<DirEntry>),
}

#[derive(Default)]
struct Table {
    next: u64,
    map: HashMap<u64, HandleEntry>,
}

/// The open handles of one mount.
#[derive(Default)]
pub(in crate::vfs) struct Handles {
    table: Mutex<Table>,
}

impl Handles {
    fn insert(&self, e: HandleEntry) -> u64 {
        let mut h = self.table.lock();
        h.next += 1;
        let fh = h.next;
        h.map.insert(fh, e);
        fh
    }

    /// A new handle on file `ino`; `wrote_at` when opening it changed the file (`O_TRUNC`).
    pub(in crate::vfs) fn open_file(&self, ino: Ino, writable: bool, wrote_at: Option<u64>) -> u64 {
        self.insert(HandleEntry::File(Handle {
            ino,
            writable,
            ra: ReadAhead::default(),
            wrote_at,
            reported_at: 0,
        }))
    }

    /// A new handle on a directory listing.
    pub(in crate::vfs) fn open_dir(&self, entries: Vec<DirEntry>) -> u64 {
        self.insert(HandleEntry::Dir(entries))
    }

    /// Entries of an open directory from index `offset` on.
    pub(in crate::vfs) fn readdir(&self, fh: u64, offset: u64) -> VfsResult<Vec<DirEntry>> {
        match self.table.lock().map.get(&fh) {
            Some(HandleEntry::Dir(v)) => Ok(v.iter().skip(offset as usize).cloned().collect()),
            _ => Err(Errno::EBADF),
        }
    }

    pub(in crate::vfs) fn release_dir(&self, fh: u64) {
        self.table.lock().map.remove(&fh);
    }

    /// Forget file handle `fh`; returns its file.
    pub(in crate::vfs) fn release_file(&self, fh: u64) -> VfsResult<Ino> {
        let mut t = self.table.lock();
        match t.map.get(&fh) {
            Some(HandleEntry::File(h)) => {
                let ino = h.ino;
                t.map.remove(&fh);
                Ok(ino)
            }
            _ => Err(Errno::EBADF),
        }
    }

    /// The file of handle `fh`, which must be writable if `need_write`.
    pub(in crate::vfs) fn ino(&self, fh: u64, need_write: bool) -> VfsResult<Ino> {
        match self.table.lock().map.get(&fh) {
            Some(HandleEntry::File(h)) if !need_write || h.writable => Ok(h.ino),
            _ => Err(Errno::EBADF),
        }
    }

    /// The file of writable handle `fh`, about to change it: from now on the handle is told
    /// about flush failures (`event` numbers this first change).
    pub(in crate::vfs) fn writer(&self, fh: u64, event: impl FnOnce() -> u64) -> VfsResult<Ino> {
        let mut t = self.table.lock();
        match t.map.get_mut(&fh) {
            Some(HandleEntry::File(h)) if h.writable => {
                if h.wrote_at.is_none() {
                    h.wrote_at = Some(event());
                }
                Ok(h.ino)
            }
            _ => Err(Errno::EBADF),
        }
    }

    /// Run the read-ahead policy on handle `fh`'s state (`None` for a handle gone meanwhile).
    pub(in crate::vfs) fn read_ahead(
        &self,
        fh: u64,
        f: impl FnOnce(&mut ReadAhead) -> Option<Range<u64>>,
    ) -> Option<Range<u64>> {
        match self.table.lock().map.get_mut(&fh) {
            Some(HandleEntry::File(h)) => f(&mut h.ra),
            _ => None,
        }
    }

    /// Whether flush failure `err` of its file is news to handle `fh` and concerns its writes;
    /// if so, it is now reported.
    pub(in crate::vfs) fn take_failure(&self, fh: u64, err: FlushError) -> VfsResult<bool> {
        let mut t = self.table.lock();
        let Some(HandleEntry::File(h)) = t.map.get_mut(&fh) else {
            return Err(Errno::EBADF);
        };
        let concerned = h.wrote_at.is_some_and(|w| w < err.at) && h.reported_at < err.at;
        if concerned {
            h.reported_at = err.at;
        }
        Ok(concerned)
    }

    /// Whether a handle open for writing names `ino`.
    pub(in crate::vfs) fn open_for_writing(&self, ino: Ino) -> bool {
        self.table
            .lock()
            .map
            .values()
            .any(|h| matches!(h, HandleEntry::File(h) if h.ino == ino && h.writable))
    }
}
