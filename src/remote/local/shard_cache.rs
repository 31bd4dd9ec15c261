//! Compaction of the upload sessions' shard cache.
//!
//! Every upload session (one per upload batch) leaves a copy of the shard it uploaded in the
//! shard cache (`cas/xet/shard-cache`), so that later sessions dedup against it, and every new
//! session lists and registers that whole directory (xet-core's `refresh_shard_dir`): with one
//! tiny shard per batch, the cost of a batch grew with the number of batches ever made
//! (~4 µs per cached shard, 30 ms a batch at 7,000). Small shards are therefore merged into
//! larger ones (xet-core's `merge_shards`, up to its 64 MiB target), which keeps the directory
//! to a few dozen files whatever the history.
//!
//! Crash safety: the cache only speeds up dedup (reads go through the CAS's own index and
//! shards), and at every point each of its shards is whole. The small shards are first moved
//! (renamed) into `.compacting/`, where sessions do not look; the merged shards are written to
//! a temporary file and renamed into the cache; then `.compacting/` is removed. A crash leaves
//! at worst shards in `.compacting/` (merged by the next compaction) or merged shards next to
//! the staged originals (merged again: duplicates of cached dedup information, never a loss of
//! stored data). Temporary files are removed at open (`durable::remove_crash_leftovers`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use xet_core_structures::metadata_shard::session_directory::merge_shards;
use xet_core_structures::metadata_shard::{ShardFileCache, MDB_SHARD_TARGET_SIZE};
use xet_runtime::core::XetRuntime;

use crate::remote::{RemoteError, RemoteResult};

/// Shards below this size are merged.
const SMALL: u64 = 1 << 20;
/// Compact once the cache holds this many small shards: each compaction rewrites at most one
/// small merged shard plus these, so its cost stays bounded and is shared by as many batches.
pub const MAX_SMALL: usize = 32;
/// Where shards being merged wait (a name no shard has, so sessions ignore it).
const STAGING: &str = ".compacting";

/// Merge the small shards of the shard cache `dir` when there are [`MAX_SMALL`] of them or a
/// compaction was interrupted. Returns how many shards were merged. Only while no upload
/// session of this store runs (the caller holds the upload lock).
pub fn compact(
    runtime: &Arc<XetRuntime>,
    cache: &ShardFileCache,
    dir: &Path,
) -> RemoteResult<usize> {
    let staging = dir.join(STAGING);
    let staged = shard_files(&staging)?;
    let small: Vec<PathBuf> = shard_files(dir)?
        .into_iter()
        .filter(|(_, len)| *len < SMALL)
        .map(|(p, _)| p)
        .collect();
    if small.len() < MAX_SMALL && staged.is_empty() {
        return Ok(0);
    }
    std::fs::create_dir_all(&staging)?;
    for p in &small {
        let name = p.file_name().expect("listed files have names");
        std::fs::rename(p, staging.join(name))?;
    }
    let merged = merge_shards(runtime, &staging, dir, *MDB_SHARD_TARGET_SIZE, true, cache)
        .map_err(|e| RemoteError::Other(format!("merging cached shards: {e}")))?;
    let n = merged.obsolete_shards.len() + merged.skipped_shards.len();
    // Each merged shard was renamed into place whole; what is staged is now redundant.
    std::fs::remove_dir_all(&staging)?;
    tracing::debug!(
        merged = n,
        into = merged.merged_shards.len(),
        "compacted the shard cache"
    );
    Ok(n)
}

/// Shard files (`<hash>.mdb`) of `dir` with their sizes; none if `dir` is missing.
fn shard_files(dir: &Path) -> RemoteResult<Vec<(PathBuf, u64)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".mdb") || !e.file_type()?.is_file() {
            continue;
        }
        out.push((e.path(), e.metadata()?.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::local::{xet_config, LocalStore};
    use crate::remote::testing::random;
    use crate::remote::{Cas, FileId, UploadItem};
    use xet_runtime::core::XetContext;

    fn cache_dir(root: &Path) -> PathBuf {
        root.join("cas/xet/shard-cache")
    }

    fn count(dir: &Path) -> usize {
        shard_files(dir).unwrap().len()
    }

    /// Upload `n` small files, one batch each; returns their ids and contents.
    async fn upload(store: &LocalStore, dir: &Path, n: usize, seed: u64) -> Vec<(FileId, Vec<u8>)> {
        let mut out = Vec::new();
        for i in 0..n {
            let data = random(3000 + i, seed + i as u64);
            let src = dir.join(format!("src{seed}-{i}"));
            std::fs::write(&src, &data).unwrap();
            let up = crate::remote::testing::upload_one(&*store.cas, &src, data.len() as u64).await;
            out.push((up.id, data));
        }
        out
    }

    async fn read_all(store: &LocalStore, files: &[(FileId, Vec<u8>)]) {
        for (id, data) in files {
            let got = store.cas.read_range(id, 0..id.size).await.unwrap();
            assert!(got[..] == data[..], "{} reads back different", id.hash);
        }
    }

    /// Many batches leave the shard cache a bounded number of files, and dedup against what
    /// was merged still works (an identical upload adds nothing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_leave_a_bounded_shard_cache_that_still_dedups() {
        let d = tempfile::tempdir().unwrap();
        let ctx = || XetContext::from_external(tokio::runtime::Handle::current(), xet_config());
        let root = d.path().join("store");
        let store = LocalStore::open(&root, ctx()).await.unwrap();
        let files = upload(&store, d.path(), 3 * MAX_SMALL, 1).await;
        let n = count(&cache_dir(&root));
        assert!(
            n <= MAX_SMALL + 1,
            "{n} shards cached after {} batches",
            3 * MAX_SMALL
        );
        read_all(&store, &files).await;
        // The first file's chunks are known only from a merged shard by now.
        let src = d.path().join("again");
        std::fs::write(&src, &files[0].1).unwrap();
        let again = store
            .cas
            .upload_batch(vec![UploadItem {
                path: &src,
                len: files[0].1.len() as u64,
            }])
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(again.id, files[0].0);
        assert_eq!(again.new_bytes, 0, "the merged cache no longer dedups");
    }

    /// A compaction cut short at each step (shards staged but not merged; merged but the
    /// staged originals not yet removed; a merged shard half written) leaves a store that
    /// opens, reads every committed file, and finishes the compaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compaction_cut_short_anywhere_leaves_a_store_that_opens_and_reads() {
        for cut in ["staged", "merged", "half-written"] {
            let d = tempfile::tempdir().unwrap();
            let ctx = || XetContext::from_external(tokio::runtime::Handle::current(), xet_config());
            let root = d.path().join("store");
            let store = LocalStore::open(&root, ctx()).await.unwrap();
            let files = upload(&store, d.path(), MAX_SMALL - 1, 100).await;
            drop(store);
            // Replay a compaction by hand up to `cut`.
            let dir = cache_dir(&root);
            let staging = dir.join(STAGING);
            std::fs::create_dir_all(&staging).unwrap();
            let small = shard_files(&dir).unwrap();
            assert_eq!(small.len(), MAX_SMALL - 1, "{cut}");
            for (p, _) in &small {
                std::fs::rename(p, staging.join(p.file_name().unwrap())).unwrap();
            }
            match cut {
                "staged" => {}
                "merged" => {
                    let ctx = ctx();
                    let cache =
                        xet_core_structures::metadata_shard::get_shard_file_cache(&ctx.common);
                    merge_shards(
                        &ctx.runtime,
                        &staging,
                        &dir,
                        *MDB_SHARD_TARGET_SIZE,
                        true,
                        &cache,
                    )
                    .unwrap();
                }
                _ => std::fs::write(dir.join(".0f1e-uuid.mdb_temp"), b"half a shard").unwrap(),
            }
            let store = LocalStore::open(&root, ctx()).await.unwrap();
            read_all(&store, &files).await;
            // The next batch finishes the compaction.
            let more = upload(&store, d.path(), 1, 200).await;
            assert!(
                !staging.exists(),
                "{cut}: the staged shards are still there"
            );
            assert!(count(&dir) <= 2, "{cut}: {} shards cached", count(&dir));
            assert!(!dir.join(".0f1e-uuid.mdb_temp").exists(), "{cut}");
            read_all(&store, &files).await;
            read_all(&store, &more).await;
        }
    }
}
