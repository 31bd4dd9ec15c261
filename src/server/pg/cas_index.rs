//! The index of a CAS whose bytes live in an object store (`store/object.rs`), shared by
//! every replica:
//!
//! - `cas_xorbs`: each stored xorb's size and footer (where its chunks start, their hashes),
//!   and when a shard last named it. A row is written only after the object is stored whole
//!   and checked, so a row is the proof a xorb may be named.
//! - `cas_files`: each file's segments as its shard gave them (xet-core's file info bytes,
//!   verification included), the shard that brought it, when, and since when nothing names
//!   it (see [`CasIndex::mark_unused`]); `cas_file_xorbs`: the xorbs each file uses.
//! - `cas_shards`: the shards stored; `cas_shard_xorbs`: the xorbs each describes.
//! - `cas_dedup`: for each global-dedup-eligible chunk, a shard that holds it.
//! - `cas_grants`: upload grants handed out and not yet committed or collected.
//!
//! Collection of what no file uses holds one rule: a xorb row goes only in a statement that
//! finds it unclaimed for the grace period and used by no file, and a file row only in one
//! that finds it unused for the grace period; claims (a shard naming a xorb, a catalog or a
//! repo commit naming a file) update the same rows first and fail if they are gone. Row
//! locks order the two, so nothing is claimed and collected at once.

use bytes::Bytes;
use deadpool_postgres::Pool;

use super::{create_schema, db_err};
use crate::remote::RemoteResult;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cas_xorbs (
    hash      TEXT PRIMARY KEY,
    length    BIGINT NOT NULL,
    footer    BYTEA NOT NULL,
    stored_ms BIGINT NOT NULL
);
ALTER TABLE cas_xorbs ADD COLUMN IF NOT EXISTS used_ms BIGINT;
CREATE TABLE IF NOT EXISTS cas_files (
    hash  TEXT PRIMARY KEY,
    size  BIGINT NOT NULL,
    info  BYTEA NOT NULL,
    shard TEXT NOT NULL
);
ALTER TABLE cas_files ADD COLUMN IF NOT EXISTS stored_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cas_files ADD COLUMN IF NOT EXISTS unused_ms BIGINT;
CREATE INDEX IF NOT EXISTS cas_files_shard ON cas_files (shard);
CREATE INDEX IF NOT EXISTS cas_files_unused ON cas_files (unused_ms) WHERE unused_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS cas_file_xorbs (
    file TEXT NOT NULL,
    xorb TEXT NOT NULL,
    PRIMARY KEY (file, xorb)
);
CREATE INDEX IF NOT EXISTS cas_file_xorbs_xorb ON cas_file_xorbs (xorb);
CREATE TABLE IF NOT EXISTS cas_shard_xorbs (
    shard TEXT NOT NULL,
    xorb  TEXT NOT NULL,
    PRIMARY KEY (shard, xorb)
);
CREATE INDEX IF NOT EXISTS cas_shard_xorbs_xorb ON cas_shard_xorbs (xorb);
CREATE TABLE IF NOT EXISTS cas_shards (
    hash      TEXT PRIMARY KEY,
    stored_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS cas_dedup (
    chunk TEXT PRIMARY KEY,
    shard TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cas_dedup_shard ON cas_dedup (shard);
CREATE TABLE IF NOT EXISTS cas_grants (
    id         TEXT PRIMARY KEY,
    xorb       TEXT NOT NULL,
    length     BIGINT NOT NULL,
    crc        BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
"#;

/// The advisory lock a replica holds while it marks unused files.
const MARK_LOCK: i64 = super::SCHEMA_LOCK + 1;

/// A file as its shard described it.
pub struct IndexedFile {
    pub hash: String,
    pub size: u64,
    /// xet-core's serialized file info (segments and verification).
    pub info: Vec<u8>,
    /// The xorbs its segments are in.
    pub xorbs: Vec<String>,
}

/// A grant as it was handed out.
pub struct GrantRow {
    pub xorb: String,
    pub length: u64,
    pub crc: u64,
    pub created_ms: i64,
}

#[derive(Clone)]
pub struct CasIndex {
    pool: Pool,
}

impl CasIndex {
    pub async fn open(pool: Pool) -> RemoteResult<Self> {
        create_schema(&pool, SCHEMA).await?;
        Ok(CasIndex { pool })
    }

    async fn query(
        &self,
        sql: &str,
        params: super::Params<'_>,
    ) -> RemoteResult<Vec<tokio_postgres::Row>> {
        super::query(&self.pool, sql, params).await
    }

    async fn execute(&self, sql: &str, params: super::Params<'_>) -> RemoteResult<u64> {
        super::execute(&self.pool, sql, params).await
    }

    /// Size and footer of stored xorb `hash`.
    pub async fn xorb(&self, hash: &str) -> RemoteResult<Option<(u64, Bytes)>> {
        let rows = self
            .query(
                "SELECT length, footer FROM cas_xorbs WHERE hash = $1",
                &[&hash],
            )
            .await?;
        Ok(rows.first().map(|r| {
            (
                r.get::<_, i64>(0) as u64,
                Bytes::from(r.get::<_, Vec<u8>>(1)),
            )
        }))
    }

    /// Hash, size and footer of those of xorbs `hashes` that are stored, in one query.
    pub async fn xorbs(&self, hashes: &[String]) -> RemoteResult<Vec<(String, u64, Bytes)>> {
        let rows = self
            .query(
                "SELECT hash, length, footer FROM cas_xorbs WHERE hash = ANY($1)",
                &[&hashes],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get::<_, i64>(1) as u64,
                    Bytes::from(r.get::<_, Vec<u8>>(2)),
                )
            })
            .collect())
    }

    pub async fn has_xorb(&self, hash: &str) -> RemoteResult<bool> {
        Ok(!self
            .query("SELECT 1 FROM cas_xorbs WHERE hash = $1", &[&hash])
            .await?
            .is_empty())
    }

    /// Record stored xorb `hash`; whether it was new.
    pub async fn add_xorb(&self, hash: &str, length: u64, footer: &[u8]) -> RemoteResult<bool> {
        let n = self
            .execute(
                "INSERT INTO cas_xorbs (hash, length, footer, stored_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (hash) DO NOTHING",
                &[
                    &hash,
                    &(length as i64),
                    &footer,
                    &crate::server::buckets::now_ms(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Size and serialized file info of file `hash`.
    pub async fn file(&self, hash: &str) -> RemoteResult<Option<(u64, Bytes)>> {
        let rows = self
            .query("SELECT size, info FROM cas_files WHERE hash = $1", &[&hash])
            .await?;
        Ok(rows.first().map(|r| {
            (
                r.get::<_, i64>(0) as u64,
                Bytes::from(r.get::<_, Vec<u8>>(1)),
            )
        }))
    }

    /// Record shard `shard`'s files (a file already known keeps its first description: both
    /// reconstruct the same bytes), the xorbs it describes (`xorbs`) and its global-dedup
    /// chunks, in one transaction that first claims every xorb the files use; `Err(xorb)`,
    /// with nothing recorded, if one of them is not stored (or was just collected).
    pub async fn add_shard(
        &self,
        shard: &str,
        files: &[IndexedFile],
        xorbs: &[String],
        dedup: &[String],
    ) -> RemoteResult<Result<(), String>> {
        let now = crate::server::buckets::now_ms();
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        let mut used: Vec<String> = files.iter().flat_map(|f| f.xorbs.clone()).collect();
        used.sort();
        used.dedup();
        let claimed: Vec<String> = tx
            .query(
                "UPDATE cas_xorbs SET used_ms = $2 WHERE hash = ANY($1) RETURNING hash",
                &[&used, &now],
            )
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(missing) = used.iter().find(|x| !claimed.contains(x)) {
            return Ok(Err(missing.clone()));
        }
        tx.execute(
            "INSERT INTO cas_shards (hash, stored_ms) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
            &[&shard, &now],
        )
        .await
        .map_err(db_err)?;
        let file = tx
            .prepare_cached(
                "INSERT INTO cas_files (hash, size, info, shard, stored_ms) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (hash) DO UPDATE SET unused_ms = NULL, stored_ms = EXCLUDED.stored_ms",
            )
            .await
            .map_err(db_err)?;
        let (mut pair_files, mut pair_xorbs) = (Vec::new(), Vec::new());
        for f in files {
            tx.execute(&file, &[&f.hash, &(f.size as i64), &f.info, &shard, &now])
                .await
                .map_err(db_err)?;
            for x in &f.xorbs {
                pair_files.push(f.hash.clone());
                pair_xorbs.push(x.clone());
            }
        }
        tx.execute(
            "INSERT INTO cas_file_xorbs SELECT * FROM unnest($1::text[], $2::text[]) \
             ON CONFLICT DO NOTHING",
            &[&pair_files, &pair_xorbs],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            "INSERT INTO cas_shard_xorbs SELECT $1, x FROM unnest($2::text[]) AS x \
             ON CONFLICT DO NOTHING",
            &[&shard, &xorbs],
        )
        .await
        .map_err(db_err)?;
        // One statement for the chunks: a shard of a large upload names thousands.
        tx.execute(
            "INSERT INTO cas_dedup (chunk, shard) SELECT DISTINCT c, $2::text FROM unnest($1::text[]) AS c \
             ON CONFLICT (chunk) DO UPDATE SET shard = EXCLUDED.shard",
            &[&dedup, &shard],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Ok(()))
    }

    /// Note that a dedup answer naming shard `hash` goes out now (the client may dedup against
    /// its xorbs for as long as it keeps the answer); `false` if one of them was collected,
    /// and the answer must not go out.
    pub async fn touch_shard(&self, hash: &str) -> RemoteResult<bool> {
        let rows = self
            .query(
                "WITH described AS (SELECT xorb FROM cas_shard_xorbs WHERE shard = $1 AND xorb <> ''), \
                 touched AS (UPDATE cas_xorbs SET used_ms = $2 \
                     WHERE hash IN (SELECT xorb FROM described) RETURNING 1) \
                 SELECT (SELECT count(*) FROM described) = (SELECT count(*) FROM touched)",
                &[&hash, &crate::server::buckets::now_ms()],
            )
            .await?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    /// A shard holding global-dedup chunk `chunk`.
    pub async fn dedup(&self, chunk: &str) -> RemoteResult<Option<String>> {
        let rows = self
            .query("SELECT shard FROM cas_dedup WHERE chunk = $1", &[&chunk])
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub async fn add_grant(&self, id: &str, xorb: &str, length: u64, crc: u64) -> RemoteResult<()> {
        self.execute(
            "INSERT INTO cas_grants (id, xorb, length, crc, created_ms) VALUES ($1, $2, $3, $4, $5)",
            &[&id, &xorb, &(length as i64), &(crc as i64), &crate::server::buckets::now_ms()],
        )
        .await
        .map(|_| ())
    }

    pub async fn grant(&self, id: &str) -> RemoteResult<Option<GrantRow>> {
        let rows = self
            .query(
                "SELECT xorb, length, crc, created_ms FROM cas_grants WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(rows.first().map(|r| GrantRow {
            xorb: r.get(0),
            length: r.get::<_, i64>(1) as u64,
            crc: r.get::<_, i64>(2) as u64,
            created_ms: r.get(3),
        }))
    }

    pub async fn drop_grant(&self, id: &str) -> RemoteResult<()> {
        self.execute("DELETE FROM cas_grants WHERE id = $1", &[&id])
            .await
            .map(|_| ())
    }

    /// Of `keys` (`xorbs/<hash>` or `shards/<hash>` object keys), those no index row names.
    pub async fn unindexed(&self, keys: &[String]) -> RemoteResult<Vec<String>> {
        let mut out = Vec::new();
        for (prefix, table) in [("xorbs/", "cas_xorbs"), ("shards/", "cas_shards")] {
            let hashes: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix(prefix)).collect();
            if hashes.is_empty() {
                continue;
            }
            let rows = self
                .query(
                    &format!(
                        "SELECT h FROM unnest($1::text[]) AS h \
                         WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE hash = h)"
                    ),
                    &[&hashes],
                )
                .await?;
            out.extend(
                rows.iter()
                    .map(|r| format!("{prefix}{}", r.get::<_, String>(0))),
            );
        }
        Ok(out)
    }

    /// Claim files `hashes` for a commit about to name them (they are not collected while
    /// it lands: see [`Self::mark_unused`]); those no longer stored.
    pub async fn claim_files(&self, hashes: &[String]) -> RemoteResult<Vec<String>> {
        let claimed: Vec<String> = self
            .query(
                "UPDATE cas_files SET unused_ms = NULL WHERE hash = ANY($1) RETURNING hash",
                &[&hashes],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(hashes
            .iter()
            .filter(|h| !claimed.contains(h))
            .cloned()
            .collect())
    }

    /// Note, at `now_ms`, which files last uploaded before `cutoff_ms` nothing names: no entry of
    /// any bucket's catalog, no commit of any repo (a repo keeps every commit). A file named
    /// again is unmarked. (The one place the CAS index reads the catalog and repo tables.)
    ///
    /// A file is forgotten once marked for the whole grace period ([`Self::drop_unused_files`]);
    /// a commit claims what it names first ([`Self::claim_files`]), and the grace period
    /// outlasts the time between two marks, so a file named by a commit that landed after a
    /// mark is unmarked before it can go. Returns how many files were marked, `None` if
    /// another replica is marking.
    pub async fn mark_unused(&self, now_ms: i64, cutoff_ms: i64) -> RemoteResult<Option<u64>> {
        const NAMED: &str = "(EXISTS (SELECT 1 FROM catalog_entries e WHERE e.hash = f.hash) \
             OR EXISTS (SELECT 1 FROM repo_bodies b WHERE b.hash = f.hash))";
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        // One replica marks at a time (the pass reads every file); the others skip it.
        let mine: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&MARK_LOCK])
            .await
            .map_err(db_err)?
            .get(0);
        if !mine {
            return Ok(None);
        }
        tx.execute(
            &format!(
                "UPDATE cas_files f SET unused_ms = NULL WHERE unused_ms IS NOT NULL AND {NAMED}"
            ),
            &[],
        )
        .await
        .map_err(db_err)?;
        let marked = tx
            .execute(
                &format!(
                    "UPDATE cas_files f SET unused_ms = $1 \
                     WHERE unused_ms IS NULL AND stored_ms < $2 AND NOT {NAMED}"
                ),
                &[&now_ms, &cutoff_ms],
            )
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(marked))
    }

    /// Forget the files marked unused before `cutoff_ms`; their hashes.
    pub async fn drop_unused_files(&self, cutoff_ms: i64) -> RemoteResult<Vec<String>> {
        let rows = self
            .query(
                "WITH gone AS (DELETE FROM cas_files WHERE unused_ms < $1 RETURNING hash), \
                 pairs AS (DELETE FROM cas_file_xorbs WHERE file IN (SELECT hash FROM gone)) \
                 SELECT hash FROM gone",
                &[&cutoff_ms],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Up to `limit` xorbs no file uses and no shard or dedup answer named since `cutoff_ms`.
    pub async fn unused_xorbs(&self, cutoff_ms: i64, limit: i64) -> RemoteResult<Vec<String>> {
        let rows = self
            .query(
                "SELECT hash FROM cas_xorbs x WHERE COALESCE(used_ms, stored_ms) < $1 \
                 AND NOT EXISTS (SELECT 1 FROM cas_file_xorbs u WHERE u.xorb = x.hash) LIMIT $2",
                &[&cutoff_ms, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Forget xorb `hash` if it is still unused (as [`Self::unused_xorbs`] found it), with the
    /// dedup answers of every shard that describes it (they would offer its chunks); whether
    /// it went. Its object is the caller's to delete, after.
    pub async fn drop_xorb(&self, hash: &str, cutoff_ms: i64) -> RemoteResult<bool> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        let n = tx
            .execute(
                "DELETE FROM cas_xorbs x WHERE hash = $1 AND COALESCE(used_ms, stored_ms) < $2 \
                 AND NOT EXISTS (SELECT 1 FROM cas_file_xorbs u WHERE u.xorb = x.hash)",
                &[&hash, &cutoff_ms],
            )
            .await
            .map_err(db_err)?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM cas_dedup WHERE shard IN \
             (SELECT shard FROM cas_shard_xorbs WHERE xorb = $1)",
            &[&hash],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    /// Up to `limit` shards stored before `cutoff_ms` that describe no stored xorb and no
    /// file: nothing is found through them any more.
    pub async fn unused_shards(&self, cutoff_ms: i64, limit: i64) -> RemoteResult<Vec<String>> {
        let rows = self
            .query(
                "SELECT hash FROM cas_shards s WHERE stored_ms < $1 \
                 AND NOT EXISTS (SELECT 1 FROM cas_files f WHERE f.shard = s.hash) \
                 AND NOT EXISTS (SELECT 1 FROM cas_shard_xorbs sx JOIN cas_xorbs x \
                     ON x.hash = sx.xorb WHERE sx.shard = s.hash) LIMIT $2",
                &[&cutoff_ms, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Forget shard `hash` and its dedup answers (its object is the caller's to delete).
    pub async fn drop_shard(&self, hash: &str) -> RemoteResult<()> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        for sql in [
            "DELETE FROM cas_dedup WHERE shard = $1",
            "DELETE FROM cas_shard_xorbs WHERE shard = $1",
            "DELETE FROM cas_shards WHERE hash = $1",
        ] {
            tx.execute(sql, &[&hash]).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    /// Up to `limit` files indexed before the index knew which xorbs files use (`stored_ms`
    /// 0): hash and description, for [`Self::fill_file`].
    pub async fn unfilled_files(&self, limit: i64) -> RemoteResult<Vec<(String, Vec<u8>)>> {
        let rows = self
            .query(
                "SELECT hash, info FROM cas_files WHERE stored_ms = 0 LIMIT $1",
                &[&limit],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Record that file `hash` uses `xorbs` (and its shard describes them).
    pub async fn fill_file(&self, hash: &str, xorbs: &[String]) -> RemoteResult<()> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        for sql in [
            "INSERT INTO cas_file_xorbs SELECT $1, x FROM unnest($2::text[]) AS x \
             ON CONFLICT DO NOTHING",
            "INSERT INTO cas_shard_xorbs SELECT f.shard, x FROM cas_files f, unnest($2::text[]) AS x \
             WHERE f.hash = $1 ON CONFLICT DO NOTHING",
        ] {
            tx.execute(sql, &[&hash, &xorbs]).await.map_err(db_err)?;
        }
        tx.execute(
            "UPDATE cas_files SET stored_ms = 1 WHERE hash = $1",
            &[&hash],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    /// Up to `limit` shards whose described xorbs are not recorded (stored before the index
    /// recorded them).
    pub async fn unfilled_shards(&self, limit: i64) -> RemoteResult<Vec<String>> {
        let rows = self
            .query(
                "SELECT hash FROM cas_shards s WHERE NOT EXISTS \
                 (SELECT 1 FROM cas_shard_xorbs sx WHERE sx.shard = s.hash) LIMIT $1",
                &[&limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Record the xorbs shard `hash` describes (a row with no xorb, `''`, for a shard that
    /// describes none, so it is not looked at again).
    pub async fn fill_shard(&self, hash: &str, xorbs: &[String]) -> RemoteResult<()> {
        let none = [String::new()];
        let xorbs = if xorbs.is_empty() { &none[..] } else { xorbs };
        self.execute(
            "INSERT INTO cas_shard_xorbs SELECT $1, x FROM unnest($2::text[]) AS x \
             ON CONFLICT DO NOTHING",
            &[&hash, &xorbs],
        )
        .await
        .map(|_| ())
    }

    /// Grants handed out before `before_ms`: uploads that were never committed.
    pub async fn stale_grants(&self, before_ms: i64) -> RemoteResult<Vec<String>> {
        let rows = self
            .query(
                "SELECT id FROM cas_grants WHERE created_ms < $1 ORDER BY created_ms LIMIT 1000",
                &[&before_ms],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
