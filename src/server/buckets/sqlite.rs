//! The registry and catalogs of a single-machine `serve`: `server.db` (buckets and the
//! hash-to-bucket records) and one SQLite catalog per bucket (`buckets/<ns>/<name>/catalog.db`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use super::{now_ms, BucketInfo, BucketStore};
use crate::remote::local::SqliteCatalog;
use crate::remote::{RemoteError, RemoteResult};
use crate::server::catalog::ServedCatalog;

pub struct SqliteBuckets {
    root: PathBuf,
    db: Mutex<Connection>,
}

fn db_err(e: rusqlite::Error) -> RemoteError {
    RemoteError::Other(format!("server registry: {e}"))
}

/// SQLite page cache of each open bucket's catalog, MiB: a 100k-file bucket's indexes, so a
/// batch's inserts and the change feed's reads stay in memory (serve CPU per 10k files grew
/// 3x over 100k files with SQLite's 2 MiB default, 2x with this).
const BUCKET_PAGE_CACHE_MIB: i64 = 32;

impl SqliteBuckets {
    pub fn open(root: &Path) -> RemoteResult<Self> {
        std::fs::create_dir_all(root.join("buckets"))?;
        let db = Connection::open(root.join("server.db")).map_err(db_err)?;
        // 32 MiB of pages: the hash-to-bucket index is keyed by random hashes, so every
        // commit's inserts land on pages all over it; past SQLite's 2 MiB default each one
        // was read back from the OS (serve CPU per 10k files grew 3x over 100k files).
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA cache_size=-32768;
             CREATE TABLE IF NOT EXISTS buckets (
                 id TEXT PRIMARY KEY, private INTEGER NOT NULL,
                 created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS hash_buckets (
                 hash TEXT NOT NULL, bucket TEXT NOT NULL, uploaded INTEGER NOT NULL,
                 PRIMARY KEY (hash, bucket)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS hash_buckets_bucket ON hash_buckets(bucket);",
        )
        .map_err(db_err)?;
        Ok(SqliteBuckets {
            root: root.to_path_buf(),
            db: Mutex::new(db),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join("buckets").join(id)
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BucketInfo> {
        Ok(BucketInfo {
            id: r.get(0)?,
            private: r.get(1)?,
            created_ms: r.get(2)?,
            updated_ms: r.get(3)?,
        })
    }
}

#[async_trait]
impl BucketStore for SqliteBuckets {
    async fn info(&self, id: &str) -> RemoteResult<Option<BucketInfo>> {
        self.db
            .lock()
            .query_row(
                "SELECT id, private, created_ms, updated_ms FROM buckets WHERE id = ?1",
                [id],
                Self::row,
            )
            .optional()
            .map_err(db_err)
    }

    /// Create bucket `id`; `false` if it exists.
    async fn create(&self, id: &str, private: bool) -> RemoteResult<bool> {
        std::fs::create_dir_all(self.dir(id))?;
        let now = now_ms();
        let n = self
            .db
            .lock()
            .execute(
                "INSERT OR IGNORE INTO buckets VALUES (?1, ?2, ?3, ?3)",
                params![id, private, now],
            )
            .map_err(db_err)?;
        Ok(n == 1)
    }

    async fn list_page(
        &self,
        ns: &str,
        search: &str,
        after: &str,
        limit: usize,
    ) -> RemoteResult<Vec<BucketInfo>> {
        let db = self.db.lock();
        let mut st = db
            .prepare_cached(
                "SELECT id, private, created_ms, updated_ms FROM buckets \
                 WHERE id >= ?1 AND id < ?2 AND id > ?3 AND instr(substr(id, ?4), ?5) > 0 \
                 ORDER BY id LIMIT ?6",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(
                params![
                    format!("{ns}/"),
                    format!("{ns}0"),
                    after,
                    // substr counts characters.
                    ns.chars().count() as i64 + 2,
                    search,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                Self::row,
            )
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    async fn all_page(&self, after: &str, limit: usize) -> RemoteResult<Vec<BucketInfo>> {
        let db = self.db.lock();
        let mut st = db
            .prepare_cached(
                "SELECT id, private, created_ms, updated_ms FROM buckets WHERE id > ?1 \
                 ORDER BY id LIMIT ?2",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(
                params![after, i64::try_from(limit).unwrap_or(i64::MAX)],
                Self::row,
            )
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    async fn import(&self, info: &BucketInfo) -> RemoteResult<()> {
        std::fs::create_dir_all(self.dir(&info.id))?;
        self.db
            .lock()
            .execute(
                "INSERT OR REPLACE INTO buckets VALUES (?1, ?2, ?3, ?4)",
                params![info.id, info.private, info.created_ms, info.updated_ms],
            )
            .map_err(db_err)?;
        Ok(())
    }

    async fn hash_records(&self, id: &str) -> RemoteResult<Vec<(String, bool)>> {
        let db = self.db.lock();
        let mut st = db
            .prepare_cached("SELECT hash, uploaded FROM hash_buckets WHERE bucket = ?1")
            .map_err(db_err)?;
        let rows = st
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    /// Record that bodies `hashes` were uploaded to (`uploaded`) or committed in bucket `id`.
    async fn note_hashes(&self, id: &str, hashes: &[&str], uploaded: bool) -> RemoteResult<()> {
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(db_err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO hash_buckets (hash, bucket, uploaded) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (hash, bucket) DO UPDATE SET uploaded = max(uploaded, ?3)",
                )
                .map_err(db_err)?;
            for h in hashes {
                st.execute(params![h, id, uploaded]).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Whether body `hash` was uploaded to bucket `id`.
    async fn was_uploaded(&self, id: &str, hash: &str) -> RemoteResult<bool> {
        self.db
            .lock()
            .prepare_cached(
                "SELECT 1 FROM hash_buckets WHERE hash = ?1 AND bucket = ?2 AND uploaded = 1",
            )
            .and_then(|mut st| st.exists(params![hash, id]))
            .map_err(db_err)
    }

    /// The buckets body `hash` was uploaded to or committed in.
    async fn buckets_with(&self, hash: &str) -> RemoteResult<Vec<String>> {
        let db = self.db.lock();
        let mut st = db
            .prepare_cached("SELECT bucket FROM hash_buckets WHERE hash = ?1")
            .map_err(db_err)?;
        let rows = st.query_map([hash], |r| r.get(0)).map_err(db_err)?;
        rows.collect::<Result<Vec<String>, _>>().map_err(db_err)
    }

    async fn set_private(&self, id: &str, private: bool) -> RemoteResult<()> {
        self.db
            .lock()
            .execute(
                "UPDATE buckets SET private = ?2 WHERE id = ?1",
                params![id, private],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Record a change of bucket `id` now.
    async fn touch(&self, id: &str) -> RemoteResult<()> {
        self.db
            .lock()
            .execute(
                "UPDATE buckets SET updated_ms = max(updated_ms + 1, ?2) WHERE id = ?1",
                params![id, now_ms()],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Drop the hash records of owner `key` (a deleted repo's).
    async fn forget(&self, key: &str) -> RemoteResult<()> {
        self.db
            .lock()
            .execute("DELETE FROM hash_buckets WHERE bucket = ?1", [key])
            .map_err(db_err)?;
        Ok(())
    }

    async fn delete(&self, id: &str) -> RemoteResult<bool> {
        let n = {
            let mut db = self.db.lock();
            let tx = db.transaction().map_err(db_err)?;
            let n = tx
                .execute("DELETE FROM buckets WHERE id = ?1", [id])
                .map_err(db_err)?;
            tx.execute("DELETE FROM hash_buckets WHERE bucket = ?1", [id])
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            n
        };
        if n == 1 {
            match std::fs::remove_dir_all(self.dir(id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(n == 1)
    }

    /// Rename bucket `from` to `to` (which must not exist); `false` if `from` is missing.
    async fn rename(&self, from: &str, to: &str) -> RemoteResult<bool> {
        let db = self.db.lock();
        let exists = |id: &str| -> RemoteResult<bool> {
            db.query_row("SELECT 1 FROM buckets WHERE id = ?1", [id], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
                .map_err(db_err)
        };
        if !exists(from)? {
            return Ok(false);
        }
        if exists(to)? {
            return Err(RemoteError::Other(format!("bucket {to} already exists")));
        }
        std::fs::create_dir_all(self.dir(to).parent().expect("bucket dirs have a parent"))?;
        std::fs::rename(self.dir(from), self.dir(to))?;
        db.execute_batch("BEGIN").map_err(db_err)?;
        let moved = db
            .execute("UPDATE buckets SET id = ?2 WHERE id = ?1", [from, to])
            .and_then(|_| {
                db.execute(
                    "UPDATE hash_buckets SET bucket = ?2 WHERE bucket = ?1",
                    [from, to],
                )
            })
            .and_then(|_| db.execute_batch("COMMIT"));
        if let Err(e) = moved {
            let _ = db.execute_batch("ROLLBACK");
            return Err(db_err(e));
        }
        Ok(true)
    }

    async fn open_catalog(&self, id: &str) -> RemoteResult<Arc<dyn ServedCatalog>> {
        let path = self.dir(id).join("catalog.db");
        let catalog = SqliteCatalog::open(&path)
            .and_then(|c| c.set_page_cache_mib(BUCKET_PAGE_CACHE_MIB).map(|()| c))
            .map_err(|e| RemoteError::Other(format!("catalog of {id}: {e}")))?;
        Ok(Arc::new(catalog))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::buckets::Buckets;

    #[tokio::test]
    async fn the_registry_survives_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let open = || Buckets::new(Box::new(SqliteBuckets::open(d.path()).unwrap()));
        let b = open();
        assert!(b.create("alice/one", false).await.unwrap());
        assert!(!b.create("alice/one", true).await.unwrap());
        assert!(b.create("alice/two", true).await.unwrap());
        assert!(b.create("alicex/three", false).await.unwrap());
        assert!(b.create("ünï/cödé", false).await.unwrap());
        let before = b.info("alice/one").await.unwrap().unwrap().updated_ms;
        b.touch("alice/one").await.unwrap();
        assert!(b.info("alice/one").await.unwrap().unwrap().updated_ms > before);
        drop(b);
        let b = open();
        let ids: Vec<String> = b
            .list("alice", "")
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["alice/one", "alice/two"]);
        assert_eq!(b.list("alice", "tw").await.unwrap().len(), 1);
        assert_eq!(b.list("ünï", "öd").await.unwrap().len(), 1);
        assert!(b.rename("alice/two", "bob/two").await.unwrap());
        assert!(b.info("bob/two").await.unwrap().unwrap().private);
        assert!(b.delete("bob/two").await.unwrap());
        assert!(!b.delete("bob/two").await.unwrap());
    }
}
