//! One flush of a batch of files: prepare each (pick its route), store the bodies (one upload
//! session for whole files, compositions beside it, each under a timeout), commit them in one
//! catalog transaction, settle the staging state.
//!
//! A commit applies only if the file's generation still equals the one snapshotted before its
//! upload: the upload read the staging file without the io lock, so a write during it may have
//! torn what was read. For the same reason a failed upload of a file that changed meanwhile
//! (typically `O_TRUNC` while the old content was uploading) is no failure: it is retried
//! with the new content, and nobody is told about it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::remote::cas_wire::Carried;
use crate::remote::{CatalogOp, ComposeEdit, FileId, RemoteError, RemoteResult, UploadItem};
use crate::vfs::namespace::inode::Ino;
use crate::vfs::write::staging::{empty_id, Staged};
use crate::vfs::{blocking, Stats};

use super::conflict::Committing;
use super::failure::{FlushFailure, Step};
use super::{Flusher, Outcome, NS_INO};

pub(in crate::vfs) type FlushResult = Result<Outcome, FlushFailure>;

/// Above this many dirty bytes a partly covered file is filled and uploaded whole rather
/// than composed: composition holds the dirty bytes in memory.
const COMPOSE_MAX_DIRTY: u64 = 256 << 20;

/// Store calls get the configured write timeout plus this long per byte they carry, so a
/// hung call fails while a large healthy one is not cut off (at least 8 MiB/s).
const MIN_STORE_RATE: u64 = 8 << 20;

/// Own commit revisions remembered for the refresher (see `Flusher::own_revisions`).
const OWN_REVISIONS_KEPT: usize = 4096;

/// Makes `Flusher::commit_epoch` odd while alive.
struct Epoch<'a>(&'a AtomicU64);

impl<'a> Epoch<'a> {
    fn enter(e: &'a AtomicU64) -> Self {
        e.fetch_add(1, Ordering::SeqCst);
        Epoch(e)
    }
}

impl Drop for Epoch<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The stored body of each file, or why it could not be stored.
type Bodies = HashMap<Ino, Result<Option<FileId>, FlushFailure>>;

/// One catalog commit being put together (`Flusher::gather`).
struct Batch<'a> {
    ops: Vec<CatalogOp>,
    /// The namespace log's sequence number the ops reach, and how many of them it gave.
    ns_seq: u64,
    ns_ops: usize,
    committing: Vec<Committing<'a>>,
    uploads: Vec<Carried>,
    /// Files already decided.
    results: Vec<(Ino, FlushResult)>,
}

/// Why a batch's commit did not apply.
enum Refused {
    /// Files another writer replaced meanwhile (compare-and-swap).
    Conflicts(Vec<crate::remote::Conflict>),
    Failed(FlushFailure),
}

/// How a file's new body reaches the store. Chosen from the coverage alone (DESIGN.md §3).
pub(super) enum Route {
    /// Staging holds every byte: upload the staging file (dedup makes unchanged chunks free).
    Whole,
    /// Staging has holes: compose the base with the edits, snapshotted under the io lock.
    Compose {
        base: FileId,
        edits: Vec<ComposeEdit>,
    },
}

/// A file ready to upload: its staging content at `generation` is `size` bytes.
pub(super) struct Prepared {
    pub ino: Ino,
    pub staged: Arc<Staged>,
    pub generation: u64,
    pub size: u64,
    pub route: Route,
}

impl Flusher {
    /// Flush the given files: one upload session, one catalog commit that also carries every
    /// pending namespace change. [`NS_INO`] stands for the namespace changes alone.
    pub(in crate::vfs) async fn flush_batch(&self, inos: &[Ino]) -> Vec<(Ino, FlushResult)> {
        let mut inos = inos.to_vec();
        inos.sort_unstable();
        inos.dedup();
        let mut results = Vec::new();
        let mut work = Vec::new();
        for ino in inos {
            if ino == NS_INO {
                continue;
            }
            let staged = {
                let t = self.ns.table();
                t.get(ino)
                    .ok()
                    .filter(|i| i.linked)
                    .and_then(|i| i.staged().cloned())
            };
            match staged {
                Some(s) => work.push((ino, s)),
                None => results.push((ino, Ok(Outcome::Clean))),
            }
        }
        // Flush locks in ascending inode order (see the lock order in vfs/mod.rs).
        let mut guards = Vec::with_capacity(work.len());
        for (_, s) in &work {
            guards.push(s.flush_lock.clone().lock_owned().await);
        }
        let mut ready = Vec::new();
        for (ino, staged) in work {
            match self.prepare(ino, staged).await {
                Ok(Some(p)) => ready.push(p),
                Ok(None) => results.push((ino, Ok(Outcome::Clean))),
                Err(e) => results.push((ino, Err(FlushFailure::local(Step::Prepare, e)))),
            }
        }
        if !ready.is_empty() || !self.ns.log().is_empty() {
            let started = std::time::Instant::now();
            let committed = self.upload_and_commit(ready).await;
            let ok = committed.iter().all(|(_, r)| r.is_ok());
            crate::telemetry::timings().commit(ok, started.elapsed());
            results.extend(committed);
        }
        for (_, r) in &results {
            if r.is_err() {
                Stats::add(&self.stats.flush_failures, 1);
            }
        }
        drop(guards);
        results
    }

    /// Decide what to upload for one file. `None`: nothing to do.
    async fn prepare(
        &self,
        ino: Ino,
        staged: Arc<Staged>,
    ) -> crate::vfs::VfsResult<Option<Prepared>> {
        if !staged.with_io(|io| io.state.is_dirty()) {
            return Ok(None);
        }
        let (covered, dirty_bytes) =
            staged.with_io(|io| (io.state.is_fully_covered(), io.state.dirty().len_bytes()));
        if !covered && (dirty_bytes > COMPOSE_MAX_DIRTY || staged.compose_refused()) {
            // Too much to hold in memory, or the store refused the composition: complete the
            // staging copy, then upload it whole.
            self.files.fill_all_holes(&staged).await?;
        }
        let covered = staged.with_io(|io| io.state.is_fully_covered());
        if covered {
            let (generation, size) = staged.with_io(|io| (io.state.generation(), io.state.size()));
            return Ok(Some(Prepared {
                ino,
                staged,
                generation,
                size,
                route: Route::Whole,
            }));
        }
        let s2 = staged.clone();
        let (generation, base, edits) = blocking(move || s2.snapshot_edits()).await?;
        let size = staged.with_io(|io| io.state.size());
        Ok(Some(Prepared {
            ino,
            staged,
            generation,
            size,
            route: Route::Compose { base, edits },
        }))
    }

    /// A store call bounded by the write timeout, stretched for the bytes it carries.
    async fn bounded<T>(
        &self,
        bytes: u64,
        what: &str,
        call: impl Future<Output = RemoteResult<T>>,
    ) -> RemoteResult<T> {
        let limit = self.settings.write_timeout + Duration::from_secs(bytes / MIN_STORE_RATE);
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(RemoteError::Timeout(format!(
                "{what} did not finish within {limit:?}"
            ))),
        }
    }

    /// Whether `p` no longer describes the file: written, truncated or replaced since it was
    /// prepared. A failure to store such a snapshot loses nothing.
    fn superseded(&self, p: &Prepared) -> bool {
        p.staged.with_io(|io| io.state.generation()) != p.generation
            || !self
                .ns
                .table()
                .get(p.ino)
                .is_ok_and(|i| i.linked && i.holds(&p.staged))
    }

    /// Store the bodies of `ready`: compositions and one upload session for whole files run
    /// side by side. Also what compositions left for the commit to carry.
    async fn store_bodies(&self, ready: &[Prepared]) -> (Bodies, HashMap<Ino, Carried>) {
        let mut bodies = HashMap::new();
        let mut carried = HashMap::new();
        let mut whole: Vec<&Prepared> = Vec::new();
        let mut composes = Vec::new();
        for p in ready {
            match &p.route {
                _ if p.size == 0 => {
                    bodies.insert(p.ino, Ok(None));
                }
                Route::Whole => whole.push(p),
                Route::Compose { base, edits } => {
                    let bytes: u64 = edits.iter().map(|e| e.data.len() as u64).sum();
                    composes.push(async move {
                        let r = self
                            .bounded(bytes, "compose", self.cas.compose(base, edits.clone()))
                            .await;
                        (p, r)
                    });
                }
            }
        }
        let upload = async {
            if whole.is_empty() {
                return Ok(Vec::new());
            }
            let bytes = whole.iter().map(|p| p.size).sum();
            let items = whole
                .iter()
                .map(|p| UploadItem {
                    path: &p.staged.path,
                    len: p.size,
                })
                .collect();
            self.bounded(bytes, "upload", self.cas.upload_batch(items))
                .await
        };
        let (composed, uploaded) = futures::join!(futures::future::join_all(composes), upload);
        for (p, r) in composed {
            let r = match r {
                Ok(c) => {
                    Stats::add(&self.stats.bytes_uploaded_new, c.new_bytes);
                    Stats::add(&self.stats.compose_base_bytes_read, c.base_bytes_read);
                    Stats::add(&self.stats.compose_dirty_chunk_bytes, c.dirty_chunk_bytes);
                    Stats::add(&self.stats.compose_fallbacks, u64::from(c.whole_upload));
                    Stats::set(&self.stats.compose_terms_last, c.terms);
                    self.stats
                        .compose_terms_max
                        .fetch_max(c.terms, std::sync::atomic::Ordering::Relaxed);
                    if let Some(u) = c.carried {
                        carried.insert(p.ino, u);
                    }
                    Ok(Some(c.id))
                }
                Err(e) => {
                    let refused = matches!(e, RemoteError::Integrity(_));
                    let mut f = FlushFailure::remote(Step::Compose, e);
                    if refused {
                        // The next attempt fills the holes and uploads the file whole.
                        p.staged.refuse_compose();
                        f.permanent = false;
                    }
                    Err(f)
                }
            };
            bodies.insert(p.ino, r);
        }
        match uploaded {
            Ok(res) => {
                for (p, r) in whole.iter().zip(res) {
                    let r = match r {
                        Ok(up) => {
                            Stats::add(&self.stats.bytes_uploaded_new, up.new_bytes);
                            Ok(Some(up.id))
                        }
                        Err(e) => Err(FlushFailure::remote(Step::Upload, e)),
                    };
                    bodies.insert(p.ino, r);
                }
            }
            Err(e) => {
                for p in &whole {
                    bodies.insert(p.ino, Err(FlushFailure::remote(Step::Upload, e.clone())));
                }
            }
        }
        (bodies, carried)
    }

    /// Before a commit carrying the namespace ops up to `ns_seq`: the staging journals'
    /// path and unlink records are made durable, and the log records the catalog revision
    /// the commit starts from, so that a crash before its end is decided right.
    async fn before_namespace_commit(&self, ns_seq: u64) -> Result<(), FlushFailure> {
        let staging = self.files.area().clone();
        blocking(move || Ok(staging.sync_journals()?))
            .await
            .map_err(|e| FlushFailure::local(Step::Commit, e))?;
        let rev = self
            .bounded(0, "revision", self.catalog.revision())
            .await
            .map_err(|e| FlushFailure::remote(Step::Commit, e))?;
        self.ns
            .log()
            .committing(ns_seq, rev)
            .map_err(|e| FlushFailure::local(Step::Commit, e.into()))
    }

    async fn upload_and_commit(&self, ready: Vec<Prepared>) -> Vec<(Ino, FlushResult)> {
        let (bodies, carried) = self.store_bodies(&ready).await;
        // Commits in order: the pending namespace ops, then the bodies at the paths those ops
        // lead to, snapshotted together under the namespace lock and committed after it.
        let _commit = self.commit_lock.lock().await;
        let Batch {
            ops,
            ns_seq,
            ns_ops,
            committing,
            uploads,
            mut results,
        } = self.gather(&ready, bodies, carried).await;
        if ops.is_empty() {
            return results;
        }
        // Until this returns, the store may hold what the table does not show yet.
        let _epoch = Epoch::enter(&self.commit_epoch);
        let commit = async {
            if ns_ops > 0 {
                self.before_namespace_commit(ns_seq)
                    .await
                    .map_err(Refused::Failed)?;
            }
            let bytes = uploads.iter().map(|u| u.bytes.len() as u64).sum();
            let commit = self.catalog.commit_carrying(ops, uploads);
            match self.bounded(bytes, "commit", commit).await {
                Ok(rev) => Ok(rev),
                Err(RemoteError::Conflict(c)) => Err(Refused::Conflicts(c)),
                Err(e) => Err(Refused::Failed(FlushFailure::remote(Step::Commit, e))),
            }
        };
        match commit.await {
            // Noted while the commit epoch is still odd: a refresher that waits for it to
            // turn even knows this revision for its own.
            Ok(rev) => {
                let mut own = self.own_revisions.lock();
                own.insert(rev);
                // Without a change feed nothing forgets them: keep the latest.
                if own.len() > OWN_REVISIONS_KEPT {
                    own.pop_first();
                }
            }
            Err(Refused::Conflicts(c)) => {
                // Nothing applied; the namespace changes go with the next commit.
                results.extend(self.resolve_conflicts(c, committing).await);
                if ns_ops > 0 {
                    results.push((NS_INO, Ok(Outcome::Retry)));
                }
                return results;
            }
            Err(Refused::Failed(f)) => {
                results.extend(committing.iter().map(|(p, ..)| (p.ino, Err(f.clone()))));
                if ns_ops > 0 {
                    results.push((NS_INO, Err(f)));
                }
                return results;
            }
        }
        Stats::add(&self.stats.flush_commits, 1);
        if ns_ops > 0 {
            if let Err(e) = self.ns.log().committed(ns_seq) {
                // Committed; a crash before the mark is decided by the `Committing` mark.
                tracing::warn!("cannot mark namespace changes committed: {e}");
            }
            results.push((NS_INO, Ok(Outcome::Committed)));
        }
        for (p, body, _) in committing {
            let outcome = self.committed(p, body).await;
            results.push((p.ino, Ok(outcome)));
        }
        results
    }

    /// Under the namespace lock: the pending namespace ops and, after them, a `Put` (with its
    /// expectation) of every file whose body was stored and that is still what was stored.
    async fn gather<'a>(
        &self,
        ready: &'a [Prepared],
        mut bodies: Bodies,
        mut carried: HashMap<Ino, Carried>,
    ) -> Batch<'a> {
        let _ns = self.ns.lock().await;
        let (ops, ns_seq) = self.ns.log().snapshot();
        let mut b = Batch {
            ns_ops: ops.len(),
            ops,
            ns_seq,
            committing: Vec::new(),
            uploads: Vec::new(),
            results: Vec::new(),
        };
        let cas = self.catalog.capabilities().compare_and_swap;
        for p in ready {
            let body = match bodies.remove(&p.ino) {
                Some(Ok(body)) => body,
                Some(Err(e)) => {
                    if self.superseded(p) {
                        tracing::debug!(
                            ino = p.ino,
                            "{e} for content replaced meanwhile; retrying"
                        );
                        b.results.push((p.ino, Ok(Outcome::Retry)));
                    } else {
                        b.results.push((p.ino, Err(e)));
                    }
                    continue;
                }
                None => continue,
            };
            if p.staged.with_io(|io| io.state.generation()) != p.generation {
                tracing::debug!(ino = p.ino, "written during its upload; flushed again");
                b.results.push((p.ino, Ok(Outcome::Retry)));
                continue;
            }
            let entry = {
                let t = self.ns.table();
                match t.get(p.ino) {
                    // The body replaces the version this mount's changes started from, and
                    // only that one. A file with several names is not checked: its version
                    // could not move aside alone.
                    Ok(i) if i.linked => t.entry_of(p.ino, body.clone()).map(|e| {
                        let expect = (cas && i.link.is_none()).then(|| CatalogOp::Expect {
                            path: e.path.clone(),
                            content: i.remote.clone(),
                        });
                        (e, expect)
                    }),
                    // Unlinked meanwhile: an orphan is never committed.
                    _ => {
                        b.results.push((p.ino, Ok(Outcome::Clean)));
                        continue;
                    }
                }
            };
            match entry {
                Ok((e, expect)) => {
                    let path = e.path.clone();
                    b.ops.extend(expect);
                    b.ops.push(CatalogOp::Put(e));
                    b.uploads.extend(carried.remove(&p.ino));
                    b.committing.push((p, body, path));
                }
                Err(e) => b
                    .results
                    .push((p.ino, Err(FlushFailure::local(Step::Commit, e)))),
            }
        }
        b
    }

    /// File `p` was committed with `body`: show it in the table and settle its staging copy.
    async fn committed(&self, p: &Prepared, body: Option<FileId>) -> Outcome {
        let overwritten = {
            let mut t = self.ns.table();
            let path = t.path_of(p.ino).unwrap_or_default();
            t.get_mut(p.ino).ok().and_then(|i| {
                i.remote = body.clone();
                // A conflict stays reported: this commit put the version aside.
                if i.flush_error.is_some_and(|e| !e.conflict) {
                    i.flush_error = None;
                }
                Some((path, i.overwritten.take()?))
            })
        };
        if let Some((path, other)) = overwritten {
            Stats::add(&self.stats.remote_overwrites, 1);
            tracing::warn!(
                "/{path}: replaced another writer's version ({other}) with this mount's ({}); last writer wins",
                body.as_ref().map_or("empty", |b| b.hash.as_str())
            );
        }
        let base = body.clone().unwrap_or_else(empty_id);
        let applied = p.staged.commit(base, p.generation).unwrap_or_else(|e| {
            // The store has the content; only the journal entry is missing, so a crash
            // would merely commit it again.
            tracing::warn!(ino = p.ino, "cannot journal a commit: {e:?}");
            false
        });
        if !applied {
            // Written since the snapshot. The store holds the snapshot; staging keeps its
            // dirty ranges against the old base, which stays readable in the CAS. The journal
            // notes that the stored body is this mount's, or recovery after a crash would take
            // it for another writer's and move this version aside.
            if let Some(b) = &body {
                if let Err(e) = p.staged.note_landed(b) {
                    tracing::warn!(ino = p.ino, "cannot journal a commit: {e:?}");
                }
            }
            tracing::debug!(ino = p.ino, "written during its commit; flushed again");
            return Outcome::Retry;
        }
        match p.route {
            _ if p.size == 0 => {}
            Route::Whole => Stats::add(&self.stats.files_uploaded, 1),
            Route::Compose { .. } => Stats::add(&self.stats.files_composed, 1),
        }
        if self.settings.paranoid {
            if let Some(body) = &body {
                if let Err(e) = self.verify_commit(p, body).await {
                    Stats::add(&self.stats.commit_verify_failures, 1);
                    tracing::error!(ino = p.ino, "committed body does not read back: {e}");
                }
            }
            self.files.drop_clean_staging(p.ino);
        }
        Outcome::Committed
    }
}
