//! The bucket registry in PostgreSQL (`serve --catalog postgres://...`): the same records as
//! `server.db` (buckets; which buckets each body was uploaded to or committed in), in tables
//! every replica shares, plus the server's settings (the key CAS tokens and fetch URLs are
//! signed with, so a token minted by one replica is honoured by all). Deleting or renaming
//! a bucket moves its catalog rows in the same transaction.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::{create_schema, db_err, PgCatalog};
use crate::remote::{RemoteError, RemoteResult};
use crate::server::buckets::{now_ms, BucketInfo, BucketStore};
use crate::server::catalog::ServedCatalog;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS serve_buckets (
    id         TEXT COLLATE "C" PRIMARY KEY,
    private    BOOLEAN NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS serve_hash_buckets (
    hash     TEXT NOT NULL,
    bucket   TEXT COLLATE "C" NOT NULL,
    uploaded BOOLEAN NOT NULL,
    PRIMARY KEY (hash, bucket)
);
CREATE INDEX IF NOT EXISTS serve_hash_buckets_bucket ON serve_hash_buckets (bucket);
CREATE TABLE IF NOT EXISTS serve_settings (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
"#;

pub struct PgBuckets {
    pool: Pool,
}

fn row(r: &Row) -> BucketInfo {
    BucketInfo {
        id: r.get(0),
        private: r.get(1),
        created_ms: r.get(2),
        updated_ms: r.get(3),
    }
}

impl PgBuckets {
    pub async fn open(pool: Pool) -> RemoteResult<Self> {
        create_schema(&pool, SCHEMA).await?;
        // The catalog tables too, so delete and rename find them before any bucket is opened.
        PgCatalog::create_schema(&pool).await?;
        Ok(PgBuckets { pool })
    }

    /// The key every replica signs with: made by the first replica to start, then read.
    pub async fn shared_secret(&self) -> RemoteResult<[u8; 32]> {
        let c = self.pool.get().await.map_err(db_err)?;
        let key = crate::server::auth::random_key();
        c.execute(
            "INSERT INTO serve_settings (name, value) VALUES ('secret', $1) \
             ON CONFLICT (name) DO NOTHING",
            &[&&key[..]],
        )
        .await
        .map_err(db_err)?;
        let r = c
            .query_one(
                "SELECT value FROM serve_settings WHERE name = 'secret'",
                &[],
            )
            .await
            .map_err(db_err)?;
        <[u8; 32]>::try_from(r.get::<_, &[u8]>(0)).map_err(|_| {
            RemoteError::Other("catalog database: the stored key is not 32 bytes".into())
        })
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
}

#[async_trait]
impl BucketStore for PgBuckets {
    async fn info(&self, id: &str) -> RemoteResult<Option<BucketInfo>> {
        Ok(self
            .query(
                "SELECT id, private, created_ms, updated_ms FROM serve_buckets WHERE id = $1",
                &[&id],
            )
            .await?
            .first()
            .map(row))
    }

    async fn create(&self, id: &str, private: bool) -> RemoteResult<bool> {
        let n = self
            .execute(
                "INSERT INTO serve_buckets VALUES ($1, $2, $3, $3) ON CONFLICT (id) DO NOTHING",
                &[&id, &private, &now_ms()],
            )
            .await?;
        Ok(n == 1)
    }

    async fn list_page(
        &self,
        ns: &str,
        search: &str,
        after: &str,
        limit: usize,
    ) -> RemoteResult<Vec<BucketInfo>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .query(
                "SELECT id, private, created_ms, updated_ms FROM serve_buckets \
                 WHERE id >= $1 AND id < $2 AND id > $3 \
                 AND strpos(substr(id, char_length($4) + 2), $5) > 0 ORDER BY id LIMIT $6",
                &[
                    &format!("{ns}/"),
                    &format!("{ns}0"),
                    &after,
                    &ns,
                    &search,
                    &limit,
                ],
            )
            .await?
            .iter()
            .map(row)
            .collect())
    }

    async fn all_page(&self, after: &str, limit: usize) -> RemoteResult<Vec<BucketInfo>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .query(
                "SELECT id, private, created_ms, updated_ms FROM serve_buckets WHERE id > $1 \
                 ORDER BY id LIMIT $2",
                &[&after, &limit],
            )
            .await?
            .iter()
            .map(row)
            .collect())
    }

    async fn import(&self, info: &BucketInfo) -> RemoteResult<()> {
        self.execute(
            "INSERT INTO serve_buckets VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE \
             SET private = EXCLUDED.private, created_ms = EXCLUDED.created_ms, \
             updated_ms = EXCLUDED.updated_ms",
            &[&info.id, &info.private, &info.created_ms, &info.updated_ms],
        )
        .await
        .map(|_| ())
    }

    async fn hash_records(&self, id: &str) -> RemoteResult<Vec<(String, bool)>> {
        Ok(self
            .query(
                "SELECT hash, uploaded FROM serve_hash_buckets WHERE bucket = $1",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn note_hashes(&self, id: &str, hashes: &[&str], uploaded: bool) -> RemoteResult<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        self.execute(
            "INSERT INTO serve_hash_buckets (hash, bucket, uploaded) \
             SELECT DISTINCT h, $2::text, $3::boolean FROM unnest($1::text[]) AS h \
             ON CONFLICT (hash, bucket) DO UPDATE \
             SET uploaded = serve_hash_buckets.uploaded OR EXCLUDED.uploaded",
            &[&hashes, &id, &uploaded],
        )
        .await
        .map(|_| ())
    }

    async fn was_uploaded(&self, id: &str, hash: &str) -> RemoteResult<bool> {
        Ok(!self
            .query(
                "SELECT 1 FROM serve_hash_buckets WHERE hash = $1 AND bucket = $2 AND uploaded",
                &[&hash, &id],
            )
            .await?
            .is_empty())
    }

    async fn buckets_with(&self, hash: &str) -> RemoteResult<Vec<String>> {
        Ok(self
            .query(
                "SELECT bucket FROM serve_hash_buckets WHERE hash = $1",
                &[&hash],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn set_private(&self, id: &str, private: bool) -> RemoteResult<()> {
        self.execute(
            "UPDATE serve_buckets SET private = $2 WHERE id = $1",
            &[&id, &private],
        )
        .await
        .map(|_| ())
    }

    async fn touch(&self, id: &str) -> RemoteResult<()> {
        self.execute(
            "UPDATE serve_buckets SET updated_ms = greatest(updated_ms + 1, $2) WHERE id = $1",
            &[&id, &now_ms()],
        )
        .await
        .map(|_| ())
    }

    async fn forget(&self, key: &str) -> RemoteResult<()> {
        self.execute("DELETE FROM serve_hash_buckets WHERE bucket = $1", &[&key])
            .await
            .map(|_| ())
    }

    async fn delete(&self, id: &str) -> RemoteResult<bool> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        let n = tx
            .execute("DELETE FROM serve_buckets WHERE id = $1", &[&id])
            .await
            .map_err(db_err)?;
        tx.execute("DELETE FROM serve_hash_buckets WHERE bucket = $1", &[&id])
            .await
            .map_err(db_err)?;
        super::catalog::delete_rows(&tx, id).await?;
        super::feed::notify_gone(&tx, id).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(n == 1)
    }

    async fn rename(&self, from: &str, to: &str) -> RemoteResult<bool> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        // Row locks on both names: a concurrent create of `to` or rename of `from` waits.
        let exists = |id: &str| {
            let tx = &tx;
            let id = id.to_string();
            async move {
                tx.query(
                    "SELECT 1 FROM serve_buckets WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map(|r| !r.is_empty())
                .map_err(db_err)
            }
        };
        if !exists(from).await? {
            return Ok(false);
        }
        if exists(to).await? {
            return Err(RemoteError::Other(format!("bucket {to} already exists")));
        }
        tx.execute(
            "UPDATE serve_buckets SET id = $2 WHERE id = $1",
            &[&from, &to],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            "UPDATE serve_hash_buckets SET bucket = $2 WHERE bucket = $1",
            &[&from, &to],
        )
        .await
        .map_err(db_err)?;
        for t in super::catalog::TABLES {
            tx.execute(
                &format!("UPDATE {t} SET bucket = $2 WHERE bucket = $1"),
                &[&from, &to],
            )
            .await
            .map_err(db_err)?;
        }
        super::feed::notify_gone(&tx, from).await?;
        super::feed::notify_gone(&tx, to).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn open_catalog(&self, id: &str) -> RemoteResult<Arc<dyn ServedCatalog>> {
        Ok(Arc::new(PgCatalog::open(self.pool.clone(), id).await?))
    }
}
