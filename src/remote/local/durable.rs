//! Durability of the CAS files a catalog commit names, and removal of the temporary files a
//! crash leaves in the CAS.
//!
//! xet-core's `LocalClient` writes each xorb (`xorbs/default.<hash>`) and shard
//! (`shards/<hash>.mdb`) to a temporary file in the same directory and renames it into place,
//! but never fsyncs either, so after a power loss a catalog row (SQLite, synchronous=FULL)
//! could name a body whose xorb never reached the disk. Before a commit may name a body, the
//! files it is made of and the directory entries naming them are fsync'd here, once per
//! upload batch whatever the number of files in it.
//!
//! Which files: the upload session opens its own `LocalClient`, so no wrapper of ours sees
//! what it writes, and listing the store's directories grows with the store. Instead the
//! bodies just stored are looked up in the store's index (one indexed lookup each): their
//! segments name their xorbs and the index names the shard holding their reconstruction.
//! That is exactly what a commit will reference; a xorb or shard written by an earlier
//! session and reused by dedup is synced again, which costs little when it is already clean.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use xet_client::cas_client::Client;
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::metadata_shard::utils::shard_file_name;

use super::compose::xorb_path;
use crate::remote::{RemoteError, RemoteResult};

/// Where `LocalClient` keeps its xorb and shard files (see the module comment).
pub struct Durable {
    xorb_dir: PathBuf,
    shard_dir: PathBuf,
}

impl Durable {
    /// For the `LocalClient` rooted at `client_dir`.
    pub(super) fn new(client_dir: &Path) -> Self {
        Durable {
            xorb_dir: client_dir.join("xorbs"),
            shard_dir: client_dir.join("shards"),
        }
    }

    /// Make the xorbs and shards holding the bodies `files` durable, with the directory
    /// entries naming them: one pass for the whole set, each file synced once.
    pub(super) async fn bodies(
        &self,
        client: &dyn Client,
        files: impl IntoIterator<Item = MerkleHash>,
    ) -> RemoteResult<()> {
        let mut xorbs = BTreeSet::new();
        let mut shards = BTreeSet::new();
        for file in files.into_iter().collect::<BTreeSet<_>>() {
            let (info, shard) = client
                .get_file_reconstruction_info(&file)
                .await
                .map_err(|e| RemoteError::Other(format!("xet: {e}")))?
                .ok_or_else(|| {
                    RemoteError::Other(format!(
                        "the store has no reconstruction of {} it just stored",
                        file.hex()
                    ))
                })?;
            let shard = shard.ok_or_else(|| {
                RemoteError::Other(format!("the store names no shard for {}", file.hex()))
            })?;
            xorbs.extend(info.segments.iter().map(|s| s.xorb_hash));
            shards.insert(shard);
        }
        let mut paths: Vec<PathBuf> = xorbs.iter().map(|h| xorb_path(&self.xorb_dir, h)).collect();
        paths.extend(
            shards
                .iter()
                .map(|h| self.shard_dir.join(shard_file_name(h))),
        );
        let mut dirs = Vec::new();
        if !xorbs.is_empty() {
            dirs.push(self.xorb_dir.clone());
        }
        if !shards.is_empty() {
            dirs.push(self.shard_dir.clone());
        }
        sync_pass(paths, dirs).await
    }

    /// Make the xorb `hash` just stored durable (for a server answering its upload).
    pub async fn xorb(&self, hash: &MerkleHash) -> RemoteResult<()> {
        sync_pass(
            vec![xorb_path(&self.xorb_dir, hash)],
            vec![self.xorb_dir.clone()],
        )
        .await
    }

    /// Make the shard just stored durable; `stored` is the hash `upload_shard` reported it
    /// under (the client re-serializes a shard, so its hash is known only from there).
    pub async fn shard(&self, stored: Option<MerkleHash>) -> RemoteResult<()> {
        let hash = stored.ok_or_else(|| {
            RemoteError::Other("the store did not say where it kept the shard".into())
        })?;
        sync_pass(
            vec![self.shard_dir.join(shard_file_name(&hash))],
            vec![self.shard_dir.clone()],
        )
        .await
    }
}

/// fsync `files`, then `dirs` (whose entries name them), off the async threads.
async fn sync_pass(files: Vec<PathBuf>, dirs: Vec<PathBuf>) -> RemoteResult<()> {
    if files.is_empty() && dirs.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let n = files.len();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let opened = files
            .iter()
            .map(|p| open(p))
            .collect::<std::io::Result<Vec<_>>>()?;
        // Start writeback of every file first, so the device gets them all at once and each
        // fsync below mostly waits for what is already under way.
        for f in &opened {
            // SAFETY: sync_file_range on a valid, owned descriptor; only a hint.
            unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        }
        for (f, p) in opened.iter().zip(&files) {
            f.sync_all().map_err(|e| with_path(e, p))?;
        }
        for d in &dirs {
            open(d)?.sync_all().map_err(|e| with_path(e, d))?;
        }
        Ok(())
    })
    .await
    .map_err(RemoteError::other)??;
    tracing::debug!(files = n, elapsed = ?started.elapsed(), "synced stored CAS files");
    Ok(())
}

fn open(p: &Path) -> std::io::Result<File> {
    File::open(p).map_err(|e| with_path(e, p))
}

fn with_path(e: std::io::Error, p: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("cannot sync {}: {e}", p.display()))
}

/// Remove the temporary files and directories xet-core leaves in the CAS at `cas_root` when
/// the process dies mid-write. Only for a store locked by the caller (no writer of its own is
/// running yet, and no other process may use it). Returns how many entries were removed.
///
/// - `xet/xorbs/xorbs/.xorbs.<10 alphanumerics>.tmp` and
///   `xet/xorbs/shards/.shards.<10 alphanumerics>.tmp`: a xorb, shard or tag set that was being
///   written (`SafeFileCreator` names its temporary file after the directory holding it).
/// - `xet/shard-session/.tmp<6 alphanumerics>/`: an upload session's own directory (a
///   `TempDir`), whose shards were either uploaded or belong to a batch that was never
///   committed and will be uploaded again.
/// - `.<uuid>.mdb_temp` in the shard cache and the session's xorb metadata directory: a shard
///   being written there.
pub fn remove_crash_leftovers(cas_root: &Path) -> std::io::Result<usize> {
    let xet = cas_root.join("xet");
    let mut removed = 0;
    for (dir, name) in [("xorbs/xorbs", "xorbs"), ("xorbs/shards", "shards")] {
        removed += remove_matching(&xet.join(dir), |f, is_dir| {
            !is_dir && is_safe_file_temp(f, name)
        })?;
    }
    removed += remove_matching(&xet.join("shard-session"), |f, is_dir| {
        is_dir && is_temp_dir(f)
    })?;
    for dir in ["shard-cache", "shard-session/xorb_metadata"] {
        removed += remove_matching(&xet.join(dir), |f, is_dir| {
            !is_dir && f.starts_with('.') && f.ends_with(".mdb_temp")
        })?;
    }
    if removed > 0 {
        tracing::info!(
            "removed {removed} temporary files an interrupted write left in {}",
            cas_root.display()
        );
    }
    Ok(removed)
}

/// `.<dir>.<10 alphanumerics>.tmp`, the name `SafeFileCreator` gives a file it writes in `dir`.
fn is_safe_file_temp(name: &str, dir: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|s| s.strip_prefix(dir))
        .and_then(|s| s.strip_prefix('.'))
        .and_then(|s| s.strip_suffix(".tmp"))
        .is_some_and(|r| r.len() == 10 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `.tmp<6 alphanumerics>`, the name of a `tempfile::TempDir`.
fn is_temp_dir(name: &str) -> bool {
    name.strip_prefix(".tmp")
        .is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Remove the entries of `dir` whose name and kind `pick` accepts; a missing `dir` holds none.
fn remove_matching(dir: &Path, pick: impl Fn(&str, bool) -> bool) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(with_path(e, dir)),
    };
    let mut removed = 0;
    for e in entries {
        let e = e?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Not following symlinks: a link is never one of ours.
        let kind = e.file_type()?;
        if kind.is_symlink() || !pick(&name, kind.is_dir()) {
            continue;
        }
        let path = e.path();
        if kind.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!("cannot remove {}: {err}", path.display()),
            )
        })?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::remote::local::{xet_config, LocalStore};
    use crate::remote::Cas;
    use xet_runtime::core::XetContext;

    /// What a crash mid-write leaves, planted below `cas` (paths relative to it), and what
    /// must survive: a name that only looks similar.
    const CRASH_LEFT: [&str; 5] = [
        "xet/xorbs/xorbs/.xorbs.Ab3dE6gH9j.tmp",
        "xet/xorbs/shards/.shards.0123456789.tmp",
        "xet/shard-session/.tmpA1b2C3/0a1b.mdb",
        "xet/shard-cache/.5f1c-uuid.mdb_temp",
        "xet/shard-session/xorb_metadata/.77-uuid.mdb_temp",
    ];
    const KEPT: &str = "xet/xorbs/xorbs/.xorbs.keep.tmp";

    pub(crate) fn plant(cas: &Path) {
        for p in CRASH_LEFT.iter().chain([&KEPT]) {
            let p = cas.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"half written").unwrap();
        }
    }

    pub(crate) fn assert_cleaned(cas: &Path) {
        for p in CRASH_LEFT {
            assert!(!cas.join(p).exists(), "{p} is still there");
        }
        assert!(
            !cas.join("xet/shard-session/.tmpA1b2C3").exists(),
            "the crashed session's directory is still there"
        );
        assert!(
            cas.join(KEPT).exists(),
            "a file not matching the pattern was removed"
        );
    }

    /// Name and bytes of every stored xorb.
    fn xorbs(cas: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(cas.join("xet/xorbs/xorbs"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with("default."))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opening_a_store_removes_what_a_crash_left_and_keeps_the_xorbs() {
        let d = tempfile::tempdir().unwrap();
        let ctx = || XetContext::from_external(tokio::runtime::Handle::current(), xet_config());
        let data: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let src = d.path().join("src");
        std::fs::write(&src, &data).unwrap();
        let root = d.path().join("store");
        let store = LocalStore::open(&root, ctx()).await.unwrap();
        let up = crate::remote::testing::upload_one(&*store.cas, &src, data.len() as u64).await;
        drop(store);
        let cas = root.join("cas");
        let before = xorbs(&cas);
        assert!(!before.is_empty());
        plant(&cas);

        let store = LocalStore::open(&root, ctx()).await.unwrap();
        assert_cleaned(&cas);
        assert_eq!(xorbs(&cas), before, "the stored xorbs changed");
        let back = store
            .cas
            .read_range(&up.id, 0..data.len() as u64)
            .await
            .unwrap();
        assert!(back[..] == data[..], "the stored file reads back different");
    }

    #[test]
    fn temp_names_are_recognised_exactly() {
        assert!(is_safe_file_temp(".xorbs.Ab3dE6gH9j.tmp", "xorbs"));
        assert!(is_safe_file_temp(".shards.0000000000.tmp", "shards"));
        for other in [
            "default.0123",
            ".xorbs.Ab3dE6gH9.tmp",
            ".xorbs.Ab3dE6gH9jk.tmp",
            ".xorbs.Ab3dE6gH-j.tmp",
            ".shards.Ab3dE6gH9j.tmp",
            "xorbs.Ab3dE6gH9j.tmp",
            ".xorbs.Ab3dE6gH9j.tmp.x",
        ] {
            assert!(!is_safe_file_temp(other, "xorbs"), "{other}");
        }
        assert!(is_temp_dir(".tmpA1b2C3"));
        assert!(!is_temp_dir(".tmpA1b2C"));
        assert!(!is_temp_dir("xorb_metadata"));
    }
}
