//! The index of a CAS whose bytes live in an object store (`store/object.rs`), shared by
//! every replica:
//!
//! - `cas_xorbs`: each stored xorb's size and footer (where its chunks start, their hashes).
//!   A row is written only after the object is stored whole and checked, so a row is the
//!   proof a xorb may be named.
//! - `cas_files`: each file's segments as its shard gave them (xet-core's file info bytes,
//!   verification included), and the shard that brought it.
//! - `cas_shards`: the shards stored.
//! - `cas_dedup`: for each global-dedup-eligible chunk, a shard that holds it.
//! - `cas_grants`: upload grants handed out and not yet committed or collected.

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
CREATE TABLE IF NOT EXISTS cas_files (
    hash  TEXT PRIMARY KEY,
    size  BIGINT NOT NULL,
    info  BYTEA NOT NULL,
    shard TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cas_shards (
    hash      TEXT PRIMARY KEY,
    stored_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS cas_dedup (
    chunk TEXT PRIMARY KEY,
    shard TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cas_grants (
    id         TEXT PRIMARY KEY,
    xorb       TEXT NOT NULL,
    length     BIGINT NOT NULL,
    crc        BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
"#;

/// A file as its shard described it.
pub struct IndexedFile {
    pub hash: String,
    pub size: u64,
    /// xet-core's serialized file info (segments and verification).
    pub info: Vec<u8>,
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
    /// reconstruct the same bytes) and its global-dedup chunks, in one transaction.
    pub async fn add_shard(
        &self,
        shard: &str,
        files: &[IndexedFile],
        dedup: &[String],
    ) -> RemoteResult<()> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        tx.execute(
            "INSERT INTO cas_shards (hash, stored_ms) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
            &[&shard, &crate::server::buckets::now_ms()],
        )
        .await
        .map_err(db_err)?;
        let file = tx
            .prepare_cached(
                "INSERT INTO cas_files (hash, size, info, shard) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (hash) DO NOTHING",
            )
            .await
            .map_err(db_err)?;
        for f in files {
            tx.execute(&file, &[&f.hash, &(f.size as i64), &f.info, &shard])
                .await
                .map_err(db_err)?;
        }
        // One statement for the chunks: a shard of a large upload names thousands.
        tx.execute(
            "INSERT INTO cas_dedup (chunk, shard) SELECT DISTINCT c, $2::text FROM unnest($1::text[]) AS c \
             ON CONFLICT (chunk) DO UPDATE SET shard = EXCLUDED.shard",
            &[&dedup, &shard],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
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
