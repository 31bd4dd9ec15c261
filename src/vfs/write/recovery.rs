//! Start-up recovery: commit what an earlier run left dirty in the staging directory.
//!
//! Every staging file whose journal vouches for it (a base, a path, dirty ranges, not
//! unlinked) is installed on the inode of its path (created if the path is gone) and flushed
//! before the mount serves. The journal's base is still in the store, so the file is composed
//! against exactly what the user edited. If the path's body changed meanwhile (another
//! writer), a catalog with compare-and-swap refuses the commit and the recovered content is
//! kept beside the other version (see `flush/conflict.rs`); without it the recovered content
//! wins as the last writer and the log says so. Everything the journal does not vouch for is
//! deleted: a staging file without a journal (a crash while it was created), a journal without
//! its staging file, and the files of a clean or unlinked copy.

use std::path::PathBuf;

use crate::remote::EntryKind;
use crate::vfs::flush::Flusher;
use crate::vfs::namespace::inode::{Ino, ROOT_INO};
use crate::vfs::namespace::Namespace;
use crate::vfs::write::staging::{remove_pair, Found};
use crate::vfs::write::WritePath;
use crate::vfs::{Caller, Errno, VfsResult};

const RECOVERER: Caller = Caller { uid: 0, gid: 0 };

/// What start-up recovery did.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Paths committed from the journal.
    pub committed: Vec<String>,
    /// Paths still dirty after the attempt (kept; the flusher retries).
    pub pending: Vec<String>,
}

/// Bring back what an earlier run left in the staging directory: each journaled file is put
/// on its path (created if needed) and committed in one batch.
pub(in crate::vfs) async fn recover(
    ns: &Namespace,
    files: &WritePath,
    flusher: &Flusher,
) -> VfsResult<Recovered> {
    let mut found: Vec<Found> = Vec::new();
    let dir = files.area().dir().to_path_buf();
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    for p in &entries {
        match p.extension().and_then(|e| e.to_str()) {
            Some("stg") => match files.area().recover(p) {
                Ok(Some(found_one)) => found.push(found_one),
                Ok(None) => remove_pair(p),
                Err(e) => {
                    tracing::warn!(path = %p.display(), "unreadable staging file left as is: {e}")
                }
            },
            // A journal whose staging file is gone describes nothing.
            Some("log") if !p.with_extension("stg").exists() => {
                remove_pair(&p.with_extension("stg"))
            }
            _ => {}
        }
    }
    let mut out = Recovered::default();
    let mut inos = Vec::new();
    for f in found {
        let (staged, path) = (&f.staged, &f.path);
        match install_recovered(ns, &f).await {
            Ok(ino) => inos.push((ino, path.clone())),
            Err(e) => tracing::error!(
                "cannot restore {path} from {}: {e}; the staging file is kept",
                staged.path.display()
            ),
        }
    }
    if inos.is_empty() {
        return Ok(out);
    }
    let ids: Vec<Ino> = inos.iter().map(|(i, _)| *i).collect();
    // A failed or retried flush leaves the file dirty; the flusher takes it from there.
    for (ino, r) in flusher.flush_batch(&ids).await {
        if let Err(f) = r {
            let path = inos
                .iter()
                .find(|(i, _)| *i == ino)
                .map(|(_, p)| p.as_str());
            tracing::warn!(ino, "recovered /{}: {f}", path.unwrap_or_default());
        }
    }
    let still_dirty = files.dirty_inodes();
    for (ino, path) in inos {
        if !still_dirty.contains(&ino) {
            out.committed.push(path);
        } else {
            out.pending.push(path);
        }
    }
    Ok(out)
}

/// Put a recovered staging file on the inode of its path, creating the path if needed.
async fn install_recovered(ns: &Namespace, found: &Found) -> VfsResult<Ino> {
    let (staged, path) = (&found.staged, found.path.as_str());
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (last, dirs) = parts.split_last().ok_or(Errno::EINVAL)?;
    let mut dir = ROOT_INO;
    for d in dirs {
        dir = match ns.find(dir, d).await {
            Ok(a) if a.kind == EntryKind::Dir => a.ino,
            Ok(_) => return Err(Errno::ENOTDIR),
            Err(Errno::ENOENT) => {
                let ino = ns.mkdir(dir, d, 0o755, RECOVERER).await?.ino;
                ns.forget(ino, 1); // creation took a kernel reference; no kernel here
                ino
            }
            Err(e) => return Err(e),
        };
    }
    let ino = match ns.find(dir, last).await {
        Ok(a) if a.kind == EntryKind::File => a.ino,
        Ok(_) => return Err(Errno::EISDIR),
        Err(Errno::ENOENT) => {
            tracing::warn!("{path} was deleted from the store meanwhile; recreating it");
            let ino = ns
                .create_entry(dir, last, EntryKind::File, 0o644, None, RECOVERER)
                .await?;
            ns.forget(ino, 1);
            ino
        }
        Err(e) => return Err(e),
    };
    let base = staged.with_io(|io| io.state.base().cloned());
    let mut t = ns.table();
    let i = t.get_mut(ino)?;
    if i.staged().is_some() {
        return Err(Errno::EEXIST);
    }
    let current = i.remote.clone();
    // A body this mount committed from an earlier state is its own, not another writer's.
    let own = current == base || current == found.landed;
    if current.is_some() && base.is_some() && !own {
        if ns.catalog().capabilities().compare_and_swap {
            // Committed against the version it was edited from: the store refuses it
            // and the recovered content moves aside (flush/conflict.rs).
            i.remote = base.filter(|b| b.size > 0);
        } else {
            tracing::warn!(
                "{path} changed in the store since it was edited here; the recovered \
                 content replaces it (last writer wins)"
            );
        }
    }
    t.set_staged(ino, Some(staged.clone()))?;
    Ok(ino)
}
