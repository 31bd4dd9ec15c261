//! What the VFS needs from the outside world: a [`Catalog`] (the namespace: path → entry)
//! and a [`Cas`] (content-addressed file bodies). The VFS sees only these traits; the
//! embedded local store and (later) the HTTP remote implement them.

pub mod cas_wire;
pub mod fault;
pub mod http;
pub mod local;
pub mod mem;
pub mod names;
pub mod open;
pub mod record;
#[cfg(test)]
pub(crate) mod testing;
pub mod wire;
pub mod xet;

use std::ops::Range;
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;

/// The remote identity of a file body: its Xet Merkle hash (hex) and its size.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub hash: String,
    pub size: u64,
}

/// Typed remote failures. Mapped to an errno in exactly one place ([`RemoteError::errno`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("not found: {0}")]
    NotFound(String),
    /// The server does not know the caller (HTTP 401: an unknown or missing token).
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The server knows the caller, who may not do this (HTTP 403: e.g. a read-only token
    /// asking to write).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("quota exceeded: {0}")]
    Quota(String),
    #[error("rate limited: {0}")]
    RateLimited(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// A commit refused as a whole: these paths no longer hold what the batch's
    /// [`CatalogOp::Expect`] ops said they would.
    #[error("changed by another writer: {}", conflict_paths(.0))]
    Conflict(Vec<Conflict>),
    #[error("{0}")]
    Other(String),
}

impl RemoteError {
    pub fn errno(&self) -> i32 {
        match self {
            RemoteError::NotFound(_) => libc::ENOENT,
            RemoteError::Unauthenticated(_) | RemoteError::PermissionDenied(_) => libc::EACCES,
            RemoteError::Quota(_) => libc::ENOSPC,
            RemoteError::RateLimited(_) => libc::EAGAIN,
            RemoteError::Timeout(_) => libc::ETIMEDOUT,
            // The handle's view of the file went stale: another writer replaced it.
            RemoteError::Conflict(_) => libc::ESTALE,
            RemoteError::Integrity(_) | RemoteError::Other(_) => libc::EIO,
        }
    }

    /// Whether trying again later may succeed without anyone acting: a timeout, a rate limit,
    /// an unclassified failure (a dropped connection, a server error). Authentication,
    /// permission, quota, integrity and not-found need a change first (a new token, space,
    /// another route).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RemoteError::RateLimited(_) | RemoteError::Timeout(_) | RemoteError::Other(_)
        )
    }

    pub fn other(e: impl std::fmt::Display) -> Self {
        RemoteError::Other(e.to_string())
    }
}

impl From<std::io::Error> for RemoteError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => RemoteError::Quota(e.to_string()),
            Some(libc::EACCES) | Some(libc::EPERM) => RemoteError::PermissionDenied(e.to_string()),
            _ if e.kind() == std::io::ErrorKind::NotFound => RemoteError::NotFound(e.to_string()),
            _ => RemoteError::Other(e.to_string()),
        }
    }
}

pub type RemoteResult<T> = Result<T, RemoteError>;

/// A path whose [`CatalogOp::Expect`] failed, and what it held at that point of the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub path: String,
    pub current: Option<Entry>,
}

fn conflict_paths(c: &[Conflict]) -> String {
    let paths: Vec<&str> = c.iter().map(|c| c.path.as_str()).collect();
    paths.join(", ")
}

/// A body as a catalog compares it: an empty body is no body.
pub fn body(content: Option<&FileId>) -> Option<&FileId> {
    content.filter(|c| c.size > 0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    /// Device nodes carry their device number (`rdev`).
    CharDevice(u64),
    BlockDevice(u64),
}

impl EntryKind {
    /// A stable number for the kind, and the device number (0 for non-devices): how stores
    /// and journals persist it.
    pub fn code(self) -> (u8, u64) {
        match self {
            EntryKind::File => (0, 0),
            EntryKind::Dir => (1, 0),
            EntryKind::Symlink => (2, 0),
            EntryKind::Fifo => (3, 0),
            EntryKind::Socket => (4, 0),
            EntryKind::CharDevice(rdev) => (5, rdev),
            EntryKind::BlockDevice(rdev) => (6, rdev),
        }
    }

    pub fn from_code(code: u8, rdev: u64) -> Option<EntryKind> {
        Some(match code {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            3 => EntryKind::Fifo,
            4 => EntryKind::Socket,
            5 => EntryKind::CharDevice(rdev),
            6 => EntryKind::BlockDevice(rdev),
            _ => return None,
        })
    }
}

/// POSIX metadata persisted with every entry. Times are nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (no file-type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Meta {
    /// `mode`, `uid` and `gid`, with every time set to now.
    pub fn now(mode: u32, uid: u32, gid: u32) -> Meta {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        Meta::at(mode, uid, gid, t)
    }

    /// `mode`, `uid` and `gid`, with every time set to `t_ns` (nanoseconds since the epoch).
    pub fn at(mode: u32, uid: u32, gid: u32, t_ns: i64) -> Meta {
        Meta {
            mode,
            uid,
            gid,
            atime_ns: t_ns,
            mtime_ns: t_ns,
            ctime_ns: t_ns,
        }
    }
}

/// One catalog entry. `path` is relative, `/`-separated, without a leading slash; the root
/// directory is `""`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    /// File body; `None` for an empty file, a directory or a symlink.
    pub content: Option<FileId>,
    /// Symlink target.
    pub target: Option<String>,
    pub meta: Meta,
    /// Hard links: entries with the same `link` are names of one file and share its body and
    /// metadata (see [`CatalogOp::Link`]). `None` for a file that never had a second name.
    pub link: Option<u64>,
}

impl Entry {
    /// A directory at `path`.
    pub fn dir(path: String, meta: Meta) -> Entry {
        Entry {
            path,
            kind: EntryKind::Dir,
            content: None,
            target: None,
            meta,
            link: None,
        }
    }

    /// Whether this is a regular file with body `content` (empty and absent are the same):
    /// what [`CatalogOp::Expect`] checks.
    pub fn is_file_with(&self, content: Option<&FileId>) -> bool {
        self.kind == EntryKind::File
            && body(self.content.as_ref()).map(|c| &c.hash) == body(content).map(|c| &c.hash)
    }

    pub fn size(&self) -> u64 {
        match self.kind {
            EntryKind::File => self.content.as_ref().map_or(0, |c| c.size),
            EntryKind::Symlink => self.target.as_ref().map_or(0, |t| t.len() as u64),
            _ => 0,
        }
    }
}

/// One mutation of the namespace. A commit applies a batch of them atomically.
#[derive(Clone, Debug)]
pub enum CatalogOp {
    /// Create or replace the entry at `entry.path`. Missing ancestor directories are created.
    /// The path keeps its hard-link group (`entry.link` is ignored), and the body and
    /// metadata reach every name of the group.
    Put(Entry),
    /// Replace the metadata of the entry at `path` (and of every name of its hard-link
    /// group), keeping its body: a metadata change never carries a body that may be stale by
    /// the time it is committed.
    SetMeta { path: String, meta: Meta },
    /// Make `to` (which must not exist) another name of the file at `from` (not a
    /// directory): a hard link. Only for catalogs whose capabilities include hard links.
    Link { from: String, to: String },
    /// Remove the entry and everything below it. The parent directory stays.
    Delete { path: String },
    /// Move an entry (and, for a directory, everything below it), replacing whatever was at
    /// `to`.
    Rename { from: String, to: String },
    /// Compare-and-swap: refuse the whole commit unless `path` holds, at this point of the
    /// batch, a regular file whose body is `content` (`None`: empty). A catalog without
    /// [`Capabilities::compare_and_swap`] ignores it.
    Expect {
        path: String,
        content: Option<FileId>,
    },
}

/// What a catalog can keep beyond paths, file bodies and file modification times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Several names for one file ([`CatalogOp::Link`], [`Catalog::link_paths`]).
    pub hard_links: bool,
    pub symlinks: bool,
    /// FIFOs, sockets and device nodes.
    pub special_files: bool,
    /// Directories with nothing below them. Without this a directory exists while a file lies
    /// below it; an empty one lives only in the mount that made it.
    pub empty_dirs: bool,
    /// `None`: every entry keeps its mode, owner and times. `Some`: the catalog keeps none of
    /// them but a file's mtime, and every entry shows this owner and mode.
    pub fixed_owner: Option<FixedOwner>,
    /// Commits honour [`CatalogOp::Expect`]: a writer can be refused instead of replacing
    /// a version it never saw.
    pub compare_and_swap: bool,
}

impl Capabilities {
    /// What a Hub bucket or repo keeps: files (with an mtime) under folders implied by them;
    /// every entry shows `owner`, and writers are not checked against each other.
    pub fn files_only(owner: FixedOwner) -> Capabilities {
        Capabilities {
            hard_links: false,
            symlinks: false,
            special_files: false,
            empty_dirs: false,
            fixed_owner: Some(owner),
            compare_and_swap: false,
        }
    }

    /// Everything a POSIX file system keeps.
    pub const POSIX: Capabilities = Capabilities {
        hard_links: true,
        symlinks: true,
        special_files: true,
        empty_dirs: true,
        fixed_owner: None,
        compare_and_swap: true,
    };
}

/// The owner and modes every entry of a catalog without POSIX metadata shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedOwner {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of files and of directories.
    pub file_mode: u32,
    pub dir_mode: u32,
}

impl FixedOwner {
    /// The mode an entry of `kind` shows.
    pub fn mode(&self, kind: EntryKind) -> u32 {
        match kind {
            EntryKind::Dir => self.dir_mode,
            _ => self.file_mode,
        }
    }
}

/// What changed in a catalog after a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// The directories (paths) whose listings changed, up to and including `revision`.
    Dirs { revision: u64, dirs: Vec<String> },
    /// The catalog no longer knows what changed since then: any listing may have.
    Reset { revision: u64 },
}

/// One page of a recursive listing ([`Catalog::list_tree`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreePage {
    /// Entries strictly below the listed directory, at any depth, in byte order of `path`
    /// (so the entries below any directory `d` form one contiguous run, from `d/` up to
    /// `d0`). A catalog with [`Capabilities::empty_dirs`] lists every directory as an entry of
    /// its own; one without lists files only, and a directory is implied by the paths below it.
    pub entries: Vec<Entry>,
    /// Where the next page starts (opaque), or `None` after the last page.
    pub next: Option<String>,
}

/// The namespace of a bucket.
#[async_trait]
pub trait Catalog: Send + Sync {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            hard_links: false,
            compare_and_swap: false,
            ..Capabilities::POSIX
        }
    }
    /// Whether the catalog can hold an entry at `path` (a mount path, as in [`Entry::path`]):
    /// `Err` says why not. A plain bucket refuses what its path rules do ([`names`]), its
    /// mounted folder included; other catalogs hold any POSIX name.
    fn check_path(&self, _path: &str) -> Result<(), names::BadPath> {
        Ok(())
    }
    /// Every name of hard-link group `link`.
    async fn link_paths(&self, link: u64) -> RemoteResult<Vec<String>> {
        Err(RemoteError::NotFound(format!("hard-link group {link}")))
    }
    /// Immediate children of directory `dir` (`""` is the root).
    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>>;
    /// One page of everything below directory `dir` (`""` is the root), from `cursor` (the
    /// `next` of the previous page; `None` for the first): one request per page instead of
    /// one per directory. Entries hold what [`Catalog::list_dir`] gives for them. `Ok(None)`:
    /// this catalog cannot list recursively (list directory by directory instead).
    async fn list_tree(&self, _dir: &str, _cursor: Option<&str>) -> RemoteResult<Option<TreePage>> {
        Ok(None)
    }
    async fn head(&self, path: &str) -> RemoteResult<Option<Entry>>;
    /// Apply all ops or none; returns the new revision where the commit's answer carries
    /// it, else 0 (a catalog that learns it only by asking [`Catalog::revision`] does not
    /// spend a round trip on it: no caller waits for it). With a change feed
    /// ([`Catalog::changes`]) it must be the revision this commit produced, one no other
    /// commit shares: a mount skips the feed's reports of its own commits by it.
    async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64>;
    /// [`Catalog::commit`], storing `uploads` (compositions the CAS left to go with the
    /// commit, see [`Composed::carried`]) before the ops apply, even if they are then refused.
    /// Only a catalog whose CAS hands out such uploads gets any.
    async fn commit_carrying(
        &self,
        ops: Vec<CatalogOp>,
        uploads: Vec<cas_wire::Carried>,
    ) -> RemoteResult<u64> {
        if !uploads.is_empty() {
            return Err(RemoteError::Other(
                "this catalog cannot store uploads with a commit".into(),
            ));
        }
        self.commit(ops).await
    }
    async fn revision(&self) -> RemoteResult<u64>;
    /// What changed after revision `since`, waiting up to `wait` for a change (an empty
    /// `Dirs` when nothing did). `Ok(None)`: this catalog has no change feed; poll
    /// [`Catalog::revision`] instead.
    async fn changes(
        &self,
        _since: u64,
        _wait: std::time::Duration,
    ) -> RemoteResult<Option<Changes>> {
        Ok(None)
    }
}

/// The result of storing one file body.
#[derive(Clone, Debug)]
pub struct Uploaded {
    pub id: FileId,
    /// Bytes of new xorb data this upload added to the store (after dedup).
    pub new_bytes: u64,
}

/// A file body to store: the first `len` bytes of the file at `path`.
#[derive(Clone, Debug)]
pub struct UploadItem<'a> {
    pub path: &'a Path,
    pub len: u64,
}

/// One edit for [`Cas::compose`]: replace `original_range` of the base with `data`.
#[derive(Clone, Debug)]
pub struct ComposeEdit {
    pub original_range: Range<u64>,
    pub data: Bytes,
}

/// The result of composing a new body from a base and edits.
#[derive(Clone, Debug)]
pub struct Composed {
    pub id: FileId,
    /// Bytes of new xorb data this composition added to the store.
    pub new_bytes: u64,
    /// Bytes of the base read to re-chunk the regions around the edits.
    pub base_bytes_read: u64,
    /// The edits rounded out to the base chunks they touch, plus any growth: the least a
    /// content-defined store must write for them.
    pub dirty_chunk_bytes: u64,
    /// Terms (runs of one xorb's chunks) the new body is made of: how fragmented it is.
    pub terms: u64,
    /// The store could not compose and the new body was uploaded whole (its base read).
    pub whole_upload: bool,
    /// The xorbs and shard that make the body reconstructible, when the CAS left them to go
    /// with the commit naming it ([`Catalog::commit_carrying`]): until then `id` names
    /// nothing stored.
    pub carried: Option<cas_wire::Carried>,
}

/// Content-addressed storage of file bodies.
#[async_trait]
pub trait Cas: Send + Sync {
    /// Bytes `range` of file `id`; `range` must lie within `0..id.size`.
    async fn read_range(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes>;
    /// Store a batch of files in one upload session. The outer error fails the whole batch;
    /// inner errors fail one file.
    async fn upload_batch(
        &self,
        items: Vec<UploadItem<'_>>,
    ) -> RemoteResult<Vec<RemoteResult<Uploaded>>>;
    /// Store the body that is `base` with `edits` applied (sorted, disjoint, in base
    /// coordinates), uploading only data around the edits. The result is verified to
    /// reconstruct to the expected size before it is returned.
    async fn compose(&self, base: &FileId, edits: Vec<ComposeEdit>) -> RemoteResult<Composed>;
    /// Wait, at most `timeout`, for background work of this store (such as cache writes) to
    /// land: called before the process exits.
    async fn settle(&self, _timeout: std::time::Duration) {}
}
