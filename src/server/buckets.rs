//! The buckets a server hosts: a registry (`server.db`: id, visibility, creation and update
//! times) and one SQLite catalog per bucket (`buckets/<ns>/<name>/catalog.db`). Every
//! bucket's bodies live in the server's one CAS.
//!
//! Bodies are shared, but what a caller may read is not (see `scope.rs`): `server.db` also
//! records, per file body (xet hash), the buckets it was uploaded to (a shard accepted under
//! a write token for the bucket) or committed in (`hash_buckets`). An upload record stands
//! for itself; a commit record only says where to look, since the file may be gone since.
//! Records go with their bucket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use crate::remote::local::SqliteCatalog;
use crate::remote::{RemoteError, RemoteResult};
use crate::server::catalog::ServedCatalog;

/// One hosted bucket.
pub struct Bucket {
    pub id: String,
    pub catalog: Arc<dyn ServedCatalog>,
    /// Held while a batch is validated and applied: batches of one bucket run one at a time.
    pub batch_lock: tokio::sync::Mutex<()>,
    /// The revision of the last commit made through this server: change-feed readers wait
    /// on it.
    pub committed: tokio::sync::watch::Sender<u64>,
}

impl Bucket {
    /// Apply `ops` all or none, and wake whoever waits for a change.
    pub async fn commit(&self, ops: Vec<crate::remote::CatalogOp>) -> RemoteResult<u64> {
        let rev = self.catalog.commit(ops).await?;
        self.committed.send_replace(rev);
        Ok(rev)
    }
}

#[derive(Clone, Debug)]
pub struct BucketInfo {
    pub id: String,
    pub private: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
}

pub struct Buckets {
    root: PathBuf,
    db: Mutex<Connection>,
    open: Mutex<HashMap<String, Arc<Bucket>>>,
}

fn db_err(e: rusqlite::Error) -> RemoteError {
    RemoteError::Other(format!("server registry: {e}"))
}

/// SQLite page cache of each open bucket's catalog, MiB: a 100k-file bucket's indexes, so a
/// batch's inserts and the change feed's reads stay in memory (serve CPU per 10k files grew
/// 3x over 100k files with SQLite's 2 MiB default, 2x with this).
const BUCKET_PAGE_CACHE_MIB: i64 = 32;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Buckets {
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
        Ok(Buckets {
            root: root.to_path_buf(),
            db: Mutex::new(db),
            open: Mutex::new(HashMap::new()),
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

    pub fn info(&self, id: &str) -> RemoteResult<Option<BucketInfo>> {
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
    pub fn create(&self, id: &str, private: bool) -> RemoteResult<bool> {
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

    /// Buckets of namespace `ns` whose name contains `search`, in id order.
    pub fn list(&self, ns: &str, search: &str) -> RemoteResult<Vec<BucketInfo>> {
        self.list_page(ns, search, "", usize::MAX)
    }

    /// At most `limit` buckets of [`Buckets::list`] whose ids come after `after`: a page of a
    /// listing that stays exact whatever is created or deleted between pages.
    pub fn list_page(
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
                    ns.len() as i64 + 2,
                    search,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                Self::row,
            )
            .map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    /// Record that bodies `hashes` were uploaded to (`uploaded`) or committed in bucket `id`.
    pub fn note_hashes<'a>(
        &self,
        id: &str,
        hashes: impl IntoIterator<Item = &'a str>,
        uploaded: bool,
    ) -> RemoteResult<()> {
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
    pub fn was_uploaded(&self, id: &str, hash: &str) -> RemoteResult<bool> {
        self.db
            .lock()
            .prepare_cached(
                "SELECT 1 FROM hash_buckets WHERE hash = ?1 AND bucket = ?2 AND uploaded = 1",
            )
            .and_then(|mut st| st.exists(params![hash, id]))
            .map_err(db_err)
    }

    /// The buckets body `hash` was uploaded to or committed in.
    pub fn buckets_with(&self, hash: &str) -> RemoteResult<Vec<String>> {
        let db = self.db.lock();
        let mut st = db
            .prepare_cached("SELECT bucket FROM hash_buckets WHERE hash = ?1")
            .map_err(db_err)?;
        let rows = st.query_map([hash], |r| r.get(0)).map_err(db_err)?;
        rows.collect::<Result<Vec<String>, _>>().map_err(db_err)
    }

    pub fn set_private(&self, id: &str, private: bool) -> RemoteResult<()> {
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
    pub fn touch(&self, id: &str) -> RemoteResult<()> {
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
    pub fn forget(&self, key: &str) -> RemoteResult<()> {
        self.db
            .lock()
            .execute("DELETE FROM hash_buckets WHERE bucket = ?1", [key])
            .map_err(db_err)?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> RemoteResult<bool> {
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
        self.open.lock().remove(id);
        if n == 1 {
            match std::fs::remove_dir_all(self.dir(id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(n == 1)
    }

    /// Rename bucket `from` to `to` (which must not exist); `false` if `from` is missing.
    pub fn rename(&self, from: &str, to: &str) -> RemoteResult<bool> {
        let db = self.db.lock();
        let mut open = self.open.lock();
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
        open.remove(from);
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

    /// The open catalog of bucket `id` (which must exist).
    pub fn bucket(&self, id: &str) -> RemoteResult<Arc<Bucket>> {
        if let Some(b) = self.open.lock().get(id) {
            return Ok(b.clone());
        }
        let path = self.dir(id).join("catalog.db");
        let catalog = SqliteCatalog::open(&path)
            .and_then(|c| c.set_page_cache_mib(BUCKET_PAGE_CACHE_MIB).map(|()| c))
            .map_err(|e| RemoteError::Other(format!("catalog of {id}: {e}")))?;
        let b = Arc::new(Bucket {
            id: id.to_string(),
            catalog: Arc::new(catalog),
            batch_lock: tokio::sync::Mutex::new(()),
            committed: tokio::sync::watch::Sender::new(0),
        });
        Ok(self.open.lock().entry(id.to_string()).or_insert(b).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_survives_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let b = Buckets::open(d.path()).unwrap();
        assert!(b.create("alice/one", false).unwrap());
        assert!(!b.create("alice/one", true).unwrap());
        assert!(b.create("alice/two", true).unwrap());
        assert!(b.create("alicex/three", false).unwrap());
        let before = b.info("alice/one").unwrap().unwrap().updated_ms;
        b.touch("alice/one").unwrap();
        assert!(b.info("alice/one").unwrap().unwrap().updated_ms > before);
        drop(b);
        let b = Buckets::open(d.path()).unwrap();
        let ids: Vec<String> = b
            .list("alice", "")
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["alice/one", "alice/two"]);
        assert_eq!(b.list("alice", "tw").unwrap().len(), 1);
        assert!(b.rename("alice/two", "bob/two").unwrap());
        assert!(b.info("bob/two").unwrap().unwrap().private);
        assert!(b.delete("bob/two").unwrap());
        assert!(!b.delete("bob/two").unwrap());
    }
}
