//! Collection in the object-store CAS (`object.rs`), run by every replica every
//! [`COLLECT_EVERY`](crate::server) (each step is idempotent, so replicas may overlap):
//!
//! - what was left behind ([`ObjectCas::collect`]): grants never committed and their
//!   uploads, uploads under no grant, objects a crash stored without their index row;
//! - what nothing uses any more ([`ObjectCas::collect_unused`]): files no bucket and no repo
//!   names, then the xorbs no remaining file uses, then the shards that describe nothing
//!   stored. The rules that keep this from taking what a commit or an upload is about to
//!   name are in `pg/cas_index.rs`.
//!
//! What nothing uses waits out a [`Retention`]: xet clients keep the shards they uploaded,
//! and the dedup answers they were given, and dedup against them without asking, so a xorb
//! stays for as long as a client may still name it that way; and a body stays named-by-nothing
//! for a grace period first, which must outlast the longest upload-then-commit a client makes
//! and the time between two collections.

use std::sync::Arc;
use std::time::Duration;

use xet_core_structures::merklehash::MerkleHash;

use super::object::{decode_file, grant_key, shard_key, xorb_key, xorbs_of, ObjectCas};
use crate::remote::RemoteResult;
use xet_core_structures::metadata_shard::streaming_shard::MDBMinimalShard;

/// Rows looked at per query.
const BATCH: i64 = 1000;

/// How long xet-core 1.8's upload sessions keep the shards they uploaded in their local
/// cache and dedup against them (`MDB_SHARD_LOCAL_CACHE_EXPIRATION`, 3 weeks), plus a day
/// for clocks. Longer than a dedup answer's key lives (`DEDUP_KEY_VALID_FOR` in `cas.rs`).
pub const CLIENT_SHARD_CACHE: Duration = Duration::from_secs(22 * 24 * 3600);

/// How long what nothing uses is kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Since a body was last named by a catalog or a repo.
    pub unnamed: Duration,
    /// Since a body or a xorb was last uploaded, or named by an accepted shard or a dedup
    /// answer: [`CLIENT_SHARD_CACHE`] for xet clients.
    pub uploaded: Duration,
}

/// What one pass of [`ObjectCas::collect_unused`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unused {
    pub files: usize,
    pub xorbs: usize,
    pub shards: usize,
}

impl ObjectCas {
    /// Remove what was left behind more than `grace` ago: grants never committed (and what
    /// was uploaded for them), uploads under no grant, and xorbs and shards a crash stored
    /// without their index row. Returns how many objects and grants went.
    ///
    /// `grace` must outlast a grant URL ([`URL_TTL`](super::object::URL_TTL)) and a store-then-index step, so nothing
    /// in flight is taken; replicas may collect at once (each removal is idempotent).
    pub async fn collect(&self, grace: Duration) -> RemoteResult<usize> {
        let before_ms = crate::server::buckets::now_ms() - grace.as_millis() as i64;
        let before = chrono::Utc::now() - grace;
        let mut gone = 0;
        loop {
            let stale = self.index.stale_grants(before_ms).await?;
            for id in &stale {
                self.objects.delete(&grant_key(id)).await?;
                self.index.drop_grant(id).await?;
            }
            gone += stale.len();
            if stale.is_empty() {
                break;
            }
        }
        // Uploads whose grant row is gone (committed or collected) but whose object stayed.
        for key in self.objects.list_older("grants", before).await? {
            let id = key.trim_start_matches("grants/");
            if self.index.grant(id).await?.is_none() {
                self.objects.delete(&key).await?;
                gone += 1;
            }
        }
        for prefix in ["xorbs", "shards"] {
            let old = self.objects.list_older(prefix, before).await?;
            for chunk in old.chunks(1000) {
                for key in self.index.unindexed(chunk).await? {
                    self.objects.delete(&key).await?;
                    gone += 1;
                }
            }
        }
        Ok(gone)
    }

    /// One pass of collecting what nothing uses: mark the files no catalog and no repo names
    /// (last uploaded more than `keep.uploaded` ago), forget those marked more than
    /// `keep.unnamed` ago, then delete the xorbs no remaining file uses and nothing named
    /// within `keep.uploaded`, then the shards that describe nothing stored. A file goes two
    /// passes after its last name does, at the earliest.
    pub async fn collect_unused(&self, keep: Retention) -> RemoteResult<Unused> {
        self.fill_usage().await?;
        let now = crate::server::buckets::now_ms();
        let unnamed = now - keep.unnamed.as_millis() as i64;
        let cutoff = now - keep.uploaded.as_millis() as i64;
        let mut done = Unused::default();
        for hex in self.index.drop_unused_files(unnamed).await? {
            if let Ok(h) = MerkleHash::from_hex(&hex) {
                self.files.lock().remove(&h);
            }
            done.files += 1;
        }
        self.index.mark_unused(now, cutoff).await?;
        loop {
            let unused = self.index.unused_xorbs(cutoff, BATCH).await?;
            let mut went = 0;
            for hex in &unused {
                if !self.index.drop_xorb(hex, cutoff).await? {
                    continue;
                }
                let Ok(h) = MerkleHash::from_hex(hex) else {
                    continue;
                };
                self.footers.lock().remove(&h);
                self.objects.delete(&xorb_key(&h)).await?;
                went += 1;
            }
            done.xorbs += went;
            if (unused.len() as i64) < BATCH || went == 0 {
                break;
            }
        }
        loop {
            let shards = self.index.unused_shards(cutoff, BATCH).await?;
            for s in &shards {
                self.index.drop_shard(s).await?;
                self.objects.delete(&shard_key(s)).await?;
            }
            done.shards += shards.len();
            if (shards.len() as i64) < BATCH {
                break;
            }
        }
        Ok(done)
    }

    /// Record which xorbs each file uses and each shard describes, for what was indexed
    /// before the index recorded them (deployments made before collection of unused xorbs).
    async fn fill_usage(&self) -> RemoteResult<()> {
        loop {
            let files = self.index.unfilled_files(BATCH).await?;
            for (hex, info) in &files {
                let xorbs = xorbs_of(&decode_file(hex, info)?);
                self.index.fill_file(hex, &xorbs).await?;
            }
            if (files.len() as i64) < BATCH {
                break;
            }
        }
        loop {
            let shards = self.index.unfilled_shards(BATCH).await?;
            for s in &shards {
                let xorbs = match self.objects.get(&shard_key(s)).await? {
                    Some(bytes) => {
                        let shard = MDBMinimalShard::from_reader(
                            &mut std::io::Cursor::new(&bytes),
                            false,
                            true,
                        )
                        .map_err(|e| {
                            crate::remote::RemoteError::Integrity(format!("shard {s}: {e}"))
                        })?;
                        (0..shard.num_xorb())
                            .filter_map(|i| shard.xorb(i))
                            .map(|x| x.xorb_hash().hex())
                            .collect()
                    }
                    None => Vec::new(),
                };
                self.index.fill_shard(s, &xorbs).await?;
            }
            if (shards.len() as i64) < BATCH {
                break;
            }
        }
        Ok(())
    }

    /// Run [`Self::collect`] with grace `grace` and [`Self::collect_unused`] keeping what
    /// `keep` says, every `every`, for the life of the process.
    pub fn spawn_collector(self: &Arc<Self>, every: Duration, grace: Duration, keep: Retention) {
        debug_assert!(
            keep.unnamed > every,
            "a grace period shorter than the interval"
        );
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(cas) = me.upgrade() else { return };
                match cas.collect(grace).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("collected {n} abandoned uploads and grants"),
                    Err(e) => tracing::warn!("collecting abandoned uploads: {e}"),
                }
                match cas.collect_unused(keep).await {
                    Ok(u) if u == Unused::default() => {}
                    Ok(u) => tracing::info!(
                        "collected what nothing uses: {} files, {} xorbs, {} shards",
                        u.files,
                        u.xorbs,
                        u.shards
                    ),
                    Err(e) => tracing::warn!("collecting unused xorbs: {e}"),
                }
            }
        });
    }
}
