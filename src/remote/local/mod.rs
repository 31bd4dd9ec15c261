//! The embedded local store: a directory holding a Xet CAS (xet-core's `LocalClient`) and a
//! SQLite catalog. Layout:
//!
//! ```text
//! <store>/XETMOUNT_STORE   marker with the format version
//! <store>/catalog.db       SQLite catalog
//! <store>/cas/             Xet CAS root (cas/xet/xorbs, shards, …)
//! <store>/staging/         default staging directory of a mount
//! <store>/lock             flock'ed while a process uses the store; holds its pid
//! ```

mod cas;
mod catalog;
mod compose;
pub(crate) mod durable;
mod reader;
mod shard_cache;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cas::{xet_config, XetCas};
pub(crate) use catalog::{parent_of, tree_page_of};
pub use catalog::{SqliteCatalog, TREE_PAGE};
pub use durable::{remove_crash_leftovers, Durable};
pub use reader::{ChunkReader, Located, LocatedTerm};
use xet_runtime::core::XetContext;

/// Store format written by this build. Stores with a larger number are refused.
/// 2: hard links (the catalog's `link` column, added to format 1 stores when opened).
pub const FORMAT_VERSION: u32 = 2;
const MARKER: &str = "XETMOUNT_STORE";

/// Why a store could not be opened; each variant's message is one sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{0} is not a directory; pass a new or empty directory, or an existing xetmount store"
    )]
    NotADirectory(PathBuf),
    #[error("{0} is neither empty nor an xetmount store; pass a new or empty directory, or an existing store")]
    NotAStore(PathBuf),
    #[error("{path} was written by a newer xetmount (store format {found}, this build reads up to {FORMAT_VERSION}); upgrade xetmount")]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("{path} has an unreadable store marker ({detail}); check the directory is an xetmount store")]
    BadMarker { path: PathBuf, detail: String },
    #[error("the store {path} is already in use by another process{}; stop it or use another store", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse { path: PathBuf, pid: Option<u32> },
    #[error("cannot use the store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store's content storage at {path}: {detail}")]
    Cas { path: PathBuf, detail: String },
    #[error("cannot open the store's catalog at {path}: {detail}")]
    Catalog { path: PathBuf, detail: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An opened local store. Holds the exclusive lock for as long as it lives.
pub struct LocalStore {
    root: PathBuf,
    pub catalog: Arc<SqliteCatalog>,
    pub cas: Arc<XetCas>,
    _lock: File,
}

impl LocalStore {
    /// Open the store at `root`, creating it if the directory is missing or empty. Must be
    /// called inside the tokio runtime that `ctx` wraps.
    pub async fn open(root: &Path, ctx: XetContext) -> Result<Self, StoreError> {
        let root = prepare_dir(root)?;
        let lock = lock_store(&root)?;
        let catalog_path = root.join("catalog.db");
        let catalog = SqliteCatalog::open(&catalog_path).map_err(|e| StoreError::Catalog {
            path: catalog_path.clone(),
            detail: e.to_string(),
        })?;
        let cas_root = root.join("cas");
        // Safe only now that the lock keeps every other writer out.
        remove_crash_leftovers(&cas_root).map_err(io_err(&cas_root))?;
        let cas = XetCas::open(ctx, &cas_root)
            .await
            .map_err(|e| StoreError::Cas {
                path: cas_root.clone(),
                detail: e.to_string(),
            })?;
        Ok(LocalStore {
            root,
            catalog: Arc::new(catalog),
            cas: Arc::new(cas),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn default_staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }
}

/// Validate or initialise the store directory; returns its canonical path.
fn prepare_dir(root: &Path) -> Result<PathBuf, StoreError> {
    match std::fs::metadata(root) {
        Ok(m) if !m.is_dir() => return Err(StoreError::NotADirectory(root.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(root).map_err(io_err(root))?
        }
        Err(e) => return Err(io_err(root)(e)),
    }
    let root = root.canonicalize().map_err(io_err(root))?;
    let marker = root.join(MARKER);
    match std::fs::read_to_string(&marker) {
        Ok(text) => {
            let found = parse_marker(&text).ok_or_else(|| StoreError::BadMarker {
                path: root.clone(),
                detail: format!("{MARKER} does not name a format version"),
            })?;
            if found > FORMAT_VERSION {
                return Err(StoreError::NewerFormat { path: root, found });
            }
            if found < FORMAT_VERSION {
                // The catalog upgrades itself when opened; older builds must then refuse it.
                write_marker(&marker).map_err(io_err(&root))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let empty = std::fs::read_dir(&root)
                .map_err(io_err(&root))?
                .next()
                .is_none();
            if !empty {
                return Err(StoreError::NotAStore(root));
            }
            write_marker(&marker).map_err(io_err(&root))?;
        }
        Err(e) => return Err(io_err(&root)(e)),
    }
    Ok(root)
}

fn parse_marker(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("format "))
        .and_then(|v| v.trim().parse().ok())
}

fn write_marker(path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "xetmount store\nformat {FORMAT_VERSION}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Take the store's exclusive lock (flock, released by the kernel when the process dies) and
/// record our pid in it so a second user can be told who holds it.
pub fn lock_store(root: &Path) -> Result<File, StoreError> {
    let path = root.join("lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock on a valid, owned file descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            return Err(StoreError::InUse {
                path: root.to_path_buf(),
                pid: s.trim().parse().ok(),
            });
        }
        return Err(io_err(&path)(err));
    }
    f.set_len(0).map_err(io_err(&path))?;
    f.rewind().map_err(io_err(&path))?;
    write!(f, "{}", std::process::id()).map_err(io_err(&path))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        assert_eq!(parse_marker("xetmount store\nformat 1\n"), Some(1));
        assert_eq!(parse_marker("garbage"), None);
    }

    #[test]
    fn refuses_non_empty_foreign_dir_and_newer_format() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"hi").unwrap();
        assert!(matches!(
            prepare_dir(d.path()),
            Err(StoreError::NotAStore(_))
        ));

        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(MARKER), "xetmount store\nformat 99\n").unwrap();
        let err = prepare_dir(d.path()).unwrap_err();
        assert!(matches!(err, StoreError::NewerFormat { found: 99, .. }));
        assert!(err.to_string().contains("upgrade xetmount"));
    }

    #[test]
    fn creates_missing_dir_and_locks_exclusively() {
        let d = tempfile::tempdir().unwrap();
        let root = prepare_dir(&d.path().join("new/store")).unwrap();
        assert!(root.join(MARKER).exists());
        // Idempotent on an existing store.
        prepare_dir(&root).unwrap();
        let _held = lock_store(&root).unwrap();
        // flock locks belong to the open file description, so a second open in the same
        // process conflicts just like another process would.
        match lock_store(&root) {
            Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected InUse, got {:?}", other.map(|_| ())),
        }
    }
}
