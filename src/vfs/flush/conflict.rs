//! A commit the store refused because another writer replaced a file this mount changed
//! (compare-and-swap, on catalogs that offer it).
//!
//! Policy: the other writer's version keeps the name; this mount's version is kept whole
//! beside it, under `NAME.conflict-HOST-TIME.EXT`, and committed there. The writers of the
//! file are told (`ESTALE` at their next `fsync`, or `close` if the flush came first), the log
//! names both versions and the new name, and `remote_conflicts` counts it. Nothing is lost and
//! no file ever holds a mix of two versions.
//!
//! The move (`Namespace::move_aside`) is a namespace change like any other: journaled in the namespace log (a new empty
//! file at the new name, which the body commit then fills) and in the staging journal (the
//! staged copy's new path), so a crash before the next commit loses nothing either.

use crate::remote::{body, Conflict, EntryKind, FileId};
use crate::vfs::namespace::inode::{FlushError, Ino};
use crate::vfs::{Errno, Stats};

use super::batch::{FlushResult, Prepared};
use super::failure::{FlushFailure, Step};
use super::{Flusher, Outcome};

/// A file this batch tried to commit: what it prepared, the body stored for it, and the path
/// its commit named.
pub(super) type Committing<'a> = (&'a Prepared, Option<FileId>, String);

impl Flusher {
    /// Settle a batch the store refused with `conflicts`: each conflicting file moves aside
    /// (see the module doc); everything else in the batch is simply tried again.
    pub(super) async fn resolve_conflicts(
        &self,
        conflicts: Vec<Conflict>,
        committing: Vec<Committing<'_>>,
    ) -> Vec<(Ino, FlushResult)> {
        let mut results = Vec::new();
        for (p, stored, path) in committing {
            let Some(c) = conflicts.iter().find(|c| c.path == path) else {
                results.push((p.ino, Ok(Outcome::Retry)));
                continue;
            };
            let current = c.current.as_ref();
            if body(stored.as_ref()).is_some()
                && current.is_some_and(|e| e.is_file_with(stored.as_ref()))
            {
                tracing::debug!(ino = p.ino, "/{path} already holds this body");
                // The store already holds exactly this body: an earlier attempt of this
                // mount landed though its answer was lost. Nothing to resolve.
                if let Ok(i) = self.ns.table().get_mut(p.ino) {
                    i.remote = stored.clone();
                }
                results.push((p.ino, Ok(Outcome::Retry)));
                continue;
            }
            let r = match self.ns.move_aside(p.ino, &path, c.current.clone()).await {
                Ok(Some(aside)) => {
                    Stats::add(&self.stats.remote_conflicts, 1);
                    // For every handle that wrote before now, whoever flushed (`Vfs::close`).
                    let at = self.ns.next_event();
                    if let Ok(i) = self.ns.table().get_mut(p.ino) {
                        i.flush_error = Some(FlushError {
                            errno: Errno::ESTALE,
                            at,
                            conflict: true,
                        });
                    }
                    let theirs = match current {
                        None => "deleted it".to_string(),
                        Some(e) if e.kind != EntryKind::File => "put a directory there".into(),
                        Some(e) => format!(
                            "wrote {}",
                            body(e.content.as_ref()).map_or("an empty file", |b| &b.hash)
                        ),
                    };
                    tracing::warn!(
                        ino = p.ino,
                        "conflict on /{path}: another writer {theirs} after this mount read it; \
                         this mount's version is kept as /{aside}"
                    );
                    Err(FlushFailure {
                        errno: Errno::ESTALE,
                        step: Step::Commit,
                        cause: format!(
                            "/{path} was changed by another writer; this version is kept as /{aside}"
                        ),
                        permanent: false,
                        conflict: true,
                    })
                }
                // Renamed or removed meanwhile: the next commit checks it where it is now.
                Ok(None) => {
                    tracing::debug!(
                        ino = p.ino,
                        "conflict on /{path}, now elsewhere; checked again"
                    );
                    Ok(Outcome::Retry)
                }
                Err(e) => Err(FlushFailure::local(Step::Commit, e)),
            };
            results.push((p.ino, r));
        }
        results
    }
}
