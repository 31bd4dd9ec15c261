//! A commit the store refused because another writer replaced a file this mount changed
//! (compare-and-swap, on catalogs that offer it).
//!
//! Policy: the other writer's version keeps the name; this mount's version is kept whole
//! beside it, under `NAME.conflict-HOST-TIME.EXT`, and committed there. The writers of the
//! file are told (`ESTALE` at their next `fsync`, or `close` if the flush came first), the log
//! names both versions and the new name, and `remote_conflicts` counts it. Nothing is lost and
//! no file ever holds a mix of two versions.
//!
//! The move is a namespace change like any other: journaled in the namespace log (a new empty
//! file at the new name, which the body commit then fills) and in the staging journal (the
//! staged copy's new path), so a crash before the next commit loses nothing either.

use crate::remote::{body, CatalogOp, Conflict, Entry, EntryKind, FileId};
use crate::vfs::inode::{FlushError, Ino, Invalidation};
use crate::vfs::{Errno, Stats, Vfs};

use super::batch::{FlushResult, Prepared};
use super::failure::{FlushFailure, Step};
use super::Outcome;

/// A file this batch tried to commit: what it prepared, the body stored for it, and the path
/// its commit named.
pub(super) type Committing<'a> = (&'a Prepared, Option<FileId>, String);

impl Vfs {
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
                if let Ok(i) = self.inodes.lock().get_mut(p.ino) {
                    i.remote = stored.clone();
                }
                results.push((p.ino, Ok(Outcome::Retry)));
                continue;
            }
            let r = match self.move_aside(p.ino, &path, c.current.clone()).await {
                Ok(Some(aside)) => {
                    Stats::add(&self.stats.remote_conflicts, 1);
                    // For every handle that wrote before now, whoever flushed (`Vfs::close`).
                    let at = self.next_event();
                    if let Ok(i) = self.inodes.lock().get_mut(p.ino) {
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

    /// Move file `ino`, still at `path`, to a free conflict name beside it, and show
    /// `current` (what the store holds) at `path`. `None`: the file is no longer at `path`.
    async fn move_aside(
        &self,
        ino: Ino,
        path: &str,
        current: Option<Entry>,
    ) -> crate::vfs::VfsResult<Option<String>> {
        let _ns = self.ns_lock.lock().await;
        let (parent, name, aside, entry) = {
            let t = self.inodes.lock();
            let i = t.get(ino)?;
            if !i.linked || t.path_of(ino)? != path {
                return Ok(None);
            }
            let (parent, name) = (i.parent, i.name.clone());
            let aside = (0..)
                .map(|n| conflict_name(&name, n))
                .find(|a| !matches!(t.child(parent, a), Ok(Some(_))))
                .expect("an unbounded search finds a free name");
            let entry = Entry {
                path: t.child_path(parent, &aside)?,
                kind: EntryKind::File,
                content: None,
                target: None,
                meta: i.meta,
                link: None,
            };
            (parent, name, aside, entry)
        };
        self.push_ns(vec![CatalogOp::Put(entry.clone())])?;
        {
            let mut t = self.inodes.lock();
            t.move_name(ino, (parent, &name), (parent, &aside))?;
            let i = t.get_mut(ino)?;
            // A new file here: its commit expects the empty file the namespace change makes.
            i.remote = None;
            i.overwritten = None;
            if let Some(mut e) = current {
                e.path = path.to_string();
                t.add_listed(parent, name.clone(), e)?;
            }
        }
        self.journal_paths();
        self.invalidate(vec![
            Invalidation::Entry {
                parent,
                name: name.clone(),
            },
            Invalidation::Entry {
                parent,
                name: aside.clone(),
            },
            Invalidation::Inode(parent),
        ]);
        Ok(Some(entry.path))
    }
}

/// The `n`th candidate conflict name for `name`: `stem.conflict-HOST-UTCTIME-MOUNT[-n].ext`,
/// the extension kept so the copy opens with the same program; at most 255 bytes. `MOUNT`
/// tells apart mounts on one host (containers share host names), so two of them never put
/// their copies at one name.
fn conflict_name(name: &str, n: u32) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    let mut tag = format!(
        ".conflict-{}-{}-{}",
        host(),
        chrono::Utc::now().format("%Y%m%d-%H%M%S"),
        mount_tag()
    );
    if n > 0 {
        tag.push_str(&format!("-{n}"));
    }
    let room = 255usize.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{tag}{ext}", &stem[..cut])
}

/// Six hex digits drawn once per process.
fn mount_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let id = uuid::Uuid::now_v7().as_u128();
        format!("{:06x}", id & 0xff_ffff)
    })
}

/// This machine's name, as a file name part.
fn host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // fails.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let raw = if ok {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let clean: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(64)
        .collect();
    if clean.is_empty() {
        "host".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_keep_the_extension_and_fit_a_name() {
        let a = conflict_name("model.safetensors", 0);
        assert!(a.starts_with("model.conflict-"), "{a}");
        assert!(a.ends_with(".safetensors"), "{a}");
        assert!(conflict_name("model.safetensors", 2).ends_with("-2.safetensors"));
        let dot = conflict_name(".bashrc", 0);
        assert!(dot.starts_with(".bashrc.conflict-"), "{dot}");
        let plain = conflict_name("README", 0);
        assert!(plain.starts_with("README.conflict-"), "{plain}");
        assert!(
            plain
                .rsplit('-')
                .next()
                .unwrap()
                .chars()
                .all(|c| c.is_ascii_hexdigit()),
            "no extension invented: {plain}"
        );
        let long = conflict_name(&format!("{}.bin", "é".repeat(126)), 0);
        assert!(
            long.len() <= 255 && long.ends_with(".bin"),
            "{}",
            long.len()
        );
    }
}
