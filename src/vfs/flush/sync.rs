//! What callers wait for: the commit of one file (`fsync`), and of everything at exit.

use std::collections::HashSet;
use std::time::Duration;

use crate::vfs::namespace::inode::Ino;
use crate::vfs::VfsResult;

use super::{Flusher, Outcome, NS_INO};

/// The first and the longest wait between shutdown attempts of files that failed transiently.
const SHUTDOWN_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(8));

impl Flusher {
    /// Commit this file's current content to the store, or return why it cannot be. After a
    /// conflict (another writer replaced the file) the moved copy is committed before the
    /// conflict is reported: when this returns, this mount's version is in the store.
    pub(in crate::vfs) async fn sync_file(&self, ino: Ino) -> VfsResult<()> {
        let mut conflict = None;
        loop {
            let results = self.flush_batch(&[ino]).await;
            // The file's own result, or the failure of the namespace changes it depends on.
            let mine = results.iter().find(|(i, _)| *i == ino).map(|(_, r)| r);
            let ns = results.iter().find(|(i, _)| *i == NS_INO).map(|(_, r)| r);
            let r = match (mine, ns) {
                (Some(Err(f)), _) | (_, Some(Err(f))) => Err(f.clone()),
                (Some(Ok(o)), _) => Ok(*o),
                (None, _) => Ok(Outcome::Clean),
            };
            match r {
                Ok(Outcome::Retry) => continue,
                Ok(_) => {
                    if let Some(f) = conflict {
                        return Err(f);
                    }
                    self.ns.table().get_mut(ino)?.flush_error = None;
                    return Ok(());
                }
                Err(f) if f.conflict && conflict.is_none() => {
                    conflict = Some(f.errno);
                }
                Err(f) => {
                    let path = self.ns.table().path_of(ino).unwrap_or_default();
                    self.stats.note_error(&format!("/{path}"), f.to_string());
                    tracing::warn!(ino, "fsync of /{path}: {f}");
                    return Err(f.errno);
                }
            }
        }
    }

    /// Files and namespace changes not yet committed (pending namespace changes count as one).
    pub(in crate::vfs) fn unsettled(&self) -> usize {
        self.files.dirty_inodes().len() + usize::from(!self.ns.log().is_empty())
    }

    /// What is still to try: dirty files and pending namespace changes not `refused`; `None`
    /// when nothing is.
    fn work(&self, refused: &HashSet<Ino>) -> Option<Vec<Ino>> {
        let todo: Vec<Ino> = self
            .files
            .dirty_inodes()
            .into_iter()
            .filter(|i| !refused.contains(i))
            .collect();
        let ns = !self.ns.log().is_empty() && !refused.contains(&NS_INO);
        (!todo.is_empty() || ns).then_some(todo)
    }

    /// Commit what is dirty, retrying transient failures with backoff until `timeout`. A file
    /// the store refuses for good (permission, quota, integrity) is not retried: it is named
    /// once in the log and stays journaled in staging for the next mount. Returns the number
    /// of files left dirty (pending namespace changes count as one).
    pub(in crate::vfs) async fn commit_all(&self, timeout: Duration) -> usize {
        self.queue.stop();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut refused: HashSet<Ino> = HashSet::new();
        let mut backoff = SHUTDOWN_BACKOFF.0;
        let Some(mut todo) = self.work(&refused) else {
            return self.unsettled();
        };
        loop {
            tracing::info!("committing {} file(s) before exit", todo.len());
            todo.push(NS_INO);
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return self.unsettled();
            }
            let Ok(results) = tokio::time::timeout(remaining, self.flush_batch(&todo)).await else {
                return self.unsettled();
            };
            let mut transient = false;
            for (ino, r) in results {
                let Err(f) = r else { continue };
                let path = match ino {
                    NS_INO => "(namespace changes)".to_string(),
                    _ => format!("/{}", self.ns.table().path_of(ino).unwrap_or_default()),
                };
                self.stats.note_error(&path, f.to_string());
                if f.permanent {
                    tracing::error!(
                        ino,
                        "{path} not committed: {f}; not retried before exit, it stays journaled in {} and the next mount commits it",
                        self.settings.staging_dir.display()
                    );
                    refused.insert(ino);
                } else {
                    tracing::warn!(
                        ino,
                        "{path} not committed yet: {f}; retrying in {backoff:?}"
                    );
                    transient = true;
                }
            }
            let Some(next) = self.work(&refused) else {
                return self.unsettled();
            };
            todo = next;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if transient {
                tokio::time::sleep(backoff.min(remaining)).await;
                backoff = (backoff * 2).min(SHUTDOWN_BACKOFF.1);
            } else {
                // Files changed during their flush (or moved aside on a conflict) go again at
                // once, but never in a tight loop.
                tokio::time::sleep(Duration::from_millis(50).min(remaining)).await;
            }
        }
    }

    /// Let the store finish its background work (cache writes) for up to `wait`.
    pub(in crate::vfs) async fn settle_store(&self, wait: Duration) {
        self.cas.settle(wait).await;
    }
}
