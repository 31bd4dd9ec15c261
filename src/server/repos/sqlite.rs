//! Repos in one SQLite database of the serve directory (`repos.db`).

use std::path::Path;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::store::{RepoDump, RepoStore, Written};
use super::{info_of, tree, Commit, Ref, RefKind, RepoInfo};
use crate::remote::{RemoteError, RemoteResult};

pub struct SqliteRepos {
    db: Mutex<Connection>,
}

fn db_err(e: rusqlite::Error) -> RemoteError {
    RemoteError::Other(format!("repo registry: {e}"))
}

const COMMIT_COLS: &str = "oid, parent, tree, title, message, author, date_ms";

fn commit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Commit> {
    Ok(Commit {
        oid: r.get(0)?,
        parent: r.get(1)?,
        tree: r.get(2)?,
        title: r.get(3)?,
        message: r.get(4)?,
        author: r.get(5)?,
        date_ms: r.get(6)?,
    })
}

/// The tables a repo's rows are in (besides `repos`), all keyed by `repo` first.
const TABLES: [&str; 5] = ["refs", "commits", "trees", "blobs", "bodies"];

impl SqliteRepos {
    pub fn open(root: &Path) -> RemoteResult<Self> {
        let db = Connection::open(root.join("repos.db")).map_err(db_err)?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA cache_size=-16384;
             CREATE TABLE IF NOT EXISTS repos (
                 key TEXT PRIMARY KEY, private INTEGER NOT NULL, created_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS refs (
                 repo TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
                 commit_oid TEXT NOT NULL, PRIMARY KEY (repo, kind, name)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS commits (
                 repo TEXT NOT NULL, oid TEXT NOT NULL, parent TEXT, tree TEXT NOT NULL,
                 title TEXT NOT NULL, message TEXT NOT NULL, author TEXT NOT NULL,
                 date_ms INTEGER NOT NULL, PRIMARY KEY (repo, oid)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS trees (
                 repo TEXT NOT NULL, oid TEXT NOT NULL, body BLOB NOT NULL,
                 PRIMARY KEY (repo, oid)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS blobs (
                 repo TEXT NOT NULL, oid TEXT NOT NULL, data BLOB NOT NULL,
                 PRIMARY KEY (repo, oid)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS bodies (
                 repo TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (repo, hash)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS sha256_files (
                 sha256 TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (sha256, hash))
                 WITHOUT ROWID;",
        )
        .map_err(db_err)?;
        Ok(SqliteRepos { db: Mutex::new(db) })
    }
}

fn get_commit(c: &Connection, key: &str, oid: &str) -> RemoteResult<Option<Commit>> {
    c.prepare_cached(&format!(
        "SELECT {COMMIT_COLS} FROM commits WHERE repo = ?1 AND oid = ?2"
    ))
    .and_then(|mut st| st.query_row(params![key, oid], commit_row).optional())
    .map_err(db_err)
}

fn strings(c: &Connection, sql: &str, p: impl rusqlite::Params) -> RemoteResult<Vec<String>> {
    let mut st = c.prepare_cached(sql).map_err(db_err)?;
    st.query_map(p, |r| r.get(0))
        .and_then(Iterator::collect)
        .map_err(db_err)
}

fn put_blob(tx: &Transaction<'_>, key: &str, oid: &str, data: &[u8]) -> RemoteResult<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO blobs (repo, oid, data) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(params![key, oid, data]))
        .map_err(db_err)?;
    Ok(())
}

fn put_tree(tx: &Transaction<'_>, key: &str, oid: &str, body: &[u8]) -> RemoteResult<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO trees (repo, oid, body) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(params![key, oid, body]))
        .map_err(db_err)?;
    Ok(())
}

fn put_body(tx: &Transaction<'_>, key: &str, hash: &str) -> RemoteResult<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO bodies (repo, hash) VALUES (?1, ?2)")
        .and_then(|mut st| st.execute(params![key, hash]))
        .map_err(db_err)?;
    Ok(())
}

fn put_commit(tx: &Transaction<'_>, key: &str, c: &Commit) -> RemoteResult<()> {
    tx.prepare_cached(&format!(
        "INSERT OR IGNORE INTO commits (repo, {COMMIT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            key, c.oid, c.parent, c.tree, c.title, c.message, c.author, c.date_ms
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

fn put_ref(tx: &Transaction<'_>, key: &str, kind: RefKind, r: &Ref) -> RemoteResult<()> {
    tx.execute(
        "INSERT OR REPLACE INTO refs (repo, kind, name, commit_oid) VALUES (?1, ?2, ?3, ?4)",
        params![key, kind.as_str(), r.name, r.commit],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Store what a commit adds (the branch is moved by the caller).
fn write(tx: &Transaction<'_>, key: &str, w: &Written) -> RemoteResult<()> {
    for b in &w.blobs {
        put_blob(tx, key, &tree::blob_oid(b), b)?;
    }
    for (oid, body) in &w.trees {
        put_tree(tx, key, oid, body)?;
    }
    put_commit(tx, key, &w.commit)?;
    for h in &w.bodies {
        put_body(tx, key, h)?;
    }
    Ok(())
}

/// Insert the repo row; `false` if it exists.
fn insert_repo(
    tx: &Transaction<'_>,
    key: &str,
    private: bool,
    created_ms: i64,
) -> RemoteResult<bool> {
    let n = tx
        .execute(
            "INSERT OR IGNORE INTO repos (key, private, created_ms) VALUES (?1, ?2, ?3)",
            params![key, private, created_ms],
        )
        .map_err(db_err)?;
    Ok(n > 0)
}

#[async_trait]
impl RepoStore for SqliteRepos {
    async fn count(&self) -> RemoteResult<u64> {
        self.db
            .lock()
            .query_row("SELECT count(*) FROM repos", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(db_err)
    }

    async fn keys(&self) -> RemoteResult<Vec<String>> {
        strings(&self.db.lock(), "SELECT key FROM repos ORDER BY key", [])
    }

    async fn info(&self, key: &str) -> RemoteResult<Option<RepoInfo>> {
        self.db
            .lock()
            .query_row(
                "SELECT private, created_ms FROM repos WHERE key = ?1",
                [key],
                |r| Ok(info_of(key, r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)
    }

    async fn create(&self, info: &RepoInfo, first: &Written) -> RemoteResult<bool> {
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(db_err)?;
        if !insert_repo(&tx, &info.key, info.private, info.created_ms)? {
            return Ok(false);
        }
        write(&tx, &info.key, first)?;
        let main = Ref {
            name: super::MAIN.into(),
            commit: first.commit.oid.clone(),
        };
        put_ref(&tx, &info.key, RefKind::Branch, &main)?;
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    async fn delete(&self, key: &str) -> RemoteResult<bool> {
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(db_err)?;
        let n = tx
            .execute("DELETE FROM repos WHERE key = ?1", [key])
            .map_err(db_err)?;
        for table in TABLES {
            tx.execute(&format!("DELETE FROM {table} WHERE repo = ?1"), [key])
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(n > 0)
    }

    async fn target(&self, key: &str, kind: RefKind, name: &str) -> RemoteResult<Option<String>> {
        self.db
            .lock()
            .prepare_cached(
                "SELECT commit_oid FROM refs WHERE repo = ?1 AND kind = ?2 AND name = ?3",
            )
            .and_then(|mut st| {
                st.query_row(params![key, kind.as_str(), name], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err)
    }

    async fn refs(&self, key: &str, kind: RefKind) -> RemoteResult<Vec<Ref>> {
        let db = self.db.lock();
        let mut st = db
            .prepare_cached(
                "SELECT name, commit_oid FROM refs WHERE repo = ?1 AND kind = ?2 ORDER BY name",
            )
            .map_err(db_err)?;
        st.query_map(params![key, kind.as_str()], |r| {
            Ok(Ref {
                name: r.get(0)?,
                commit: r.get(1)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(db_err)
    }

    async fn create_ref(
        &self,
        key: &str,
        kind: RefKind,
        name: &str,
        commit: &str,
    ) -> RemoteResult<bool> {
        let n = self
            .db
            .lock()
            .execute(
                "INSERT OR IGNORE INTO refs (repo, kind, name, commit_oid) VALUES (?1, ?2, ?3, ?4)",
                params![key, kind.as_str(), name, commit],
            )
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn delete_ref(&self, key: &str, kind: RefKind, name: &str) -> RemoteResult<bool> {
        let n = self
            .db
            .lock()
            .execute(
                "DELETE FROM refs WHERE repo = ?1 AND kind = ?2 AND name = ?3",
                params![key, kind.as_str(), name],
            )
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn commits_by_prefix(
        &self,
        key: &str,
        prefix: &str,
        limit: usize,
    ) -> RemoteResult<Vec<String>> {
        // Hex digits sort before `g`: the ids from `prefix` up to `prefix` + "g".
        strings(
            &self.db.lock(),
            "SELECT oid FROM commits WHERE repo = ?1 AND oid >= ?2 AND oid < ?3 LIMIT ?4",
            params![key, prefix, format!("{prefix}g"), limit as i64],
        )
    }

    async fn commit(&self, key: &str, oid: &str) -> RemoteResult<Option<Commit>> {
        get_commit(&self.db.lock(), key, oid)
    }

    async fn history(
        &self,
        key: &str,
        from: &str,
        skip: usize,
        limit: usize,
    ) -> RemoteResult<Vec<Commit>> {
        let db = self.db.lock();
        let mut st = db
            .prepare_cached(&format!(
                "WITH RECURSIVE h(oid, n) AS (
                     SELECT ?2, 0
                     UNION ALL
                     SELECT c.parent, h.n + 1 FROM h JOIN commits c
                         ON c.repo = ?1 AND c.oid = h.oid
                     WHERE c.parent IS NOT NULL AND h.n + 1 < ?3 + ?4)
                 SELECT {} FROM h JOIN commits c ON c.repo = ?1 AND c.oid = h.oid
                 WHERE h.n >= ?3 ORDER BY h.n",
                prefixed("c.")
            ))
            .map_err(db_err)?;
        st.query_map(params![key, from, skip as i64, limit as i64], commit_row)
            .and_then(Iterator::collect)
            .map_err(db_err)
    }

    async fn trees(&self, key: &str, oids: &[String]) -> RemoteResult<Vec<Option<Vec<u8>>>> {
        let db = self.db.lock();
        let mut st = db
            .prepare_cached("SELECT body FROM trees WHERE repo = ?1 AND oid = ?2")
            .map_err(db_err)?;
        oids.iter()
            .map(|o| {
                st.query_row(params![key, o], |r| r.get(0))
                    .optional()
                    .map_err(db_err)
            })
            .collect()
    }

    async fn blob(&self, key: &str, oid: &str) -> RemoteResult<Option<Vec<u8>>> {
        self.db
            .lock()
            .prepare_cached("SELECT data FROM blobs WHERE repo = ?1 AND oid = ?2")
            .and_then(|mut st| st.query_row(params![key, oid], |r| r.get(0)).optional())
            .map_err(db_err)
    }

    async fn references(&self, key: &str, hash: &str) -> RemoteResult<bool> {
        self.db
            .lock()
            .prepare_cached("SELECT 1 FROM bodies WHERE repo = ?1 AND hash = ?2")
            .and_then(|mut st| st.exists(params![key, hash]))
            .map_err(db_err)
    }

    async fn files_with_sha256(&self, sha256: &str) -> RemoteResult<Vec<String>> {
        strings(
            &self.db.lock(),
            "SELECT hash FROM sha256_files WHERE sha256 = ?1",
            [sha256],
        )
    }

    async fn note_sha256(&self, pairs: &[(String, String)]) -> RemoteResult<()> {
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(db_err)?;
        for (sha, hash) in pairs {
            tx.prepare_cached("INSERT OR IGNORE INTO sha256_files (sha256, hash) VALUES (?1, ?2)")
                .and_then(|mut st| st.execute(params![sha, hash]))
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    async fn sha256_pairs(&self) -> RemoteResult<Vec<(String, String)>> {
        let db = self.db.lock();
        let mut st = db
            .prepare("SELECT sha256, hash FROM sha256_files ORDER BY sha256, hash")
            .map_err(db_err)?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(db_err)
    }

    async fn advance(
        &self,
        key: &str,
        branch: &str,
        head: &str,
        w: &Written,
    ) -> RemoteResult<bool> {
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(db_err)?;
        let moved = tx
            .execute(
                "UPDATE refs SET commit_oid = ?4 WHERE repo = ?1 AND kind = 'branch' AND name = ?2 \
                 AND commit_oid = ?3",
                params![key, branch, head, w.commit.oid],
            )
            .map_err(db_err)?;
        if moved != 1 {
            return Ok(false);
        }
        write(&tx, key, w)?;
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    async fn export(&self, key: &str) -> RemoteResult<Option<RepoDump>> {
        let Some(info) = self.info(key).await? else {
            return Ok(None);
        };
        let db = self.db.lock();
        let pairs = |sql: &str| -> RemoteResult<Vec<(String, Vec<u8>)>> {
            let mut st = db.prepare(sql).map_err(db_err)?;
            st.query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect)
                .map_err(db_err)
        };
        let trees = pairs("SELECT oid, body FROM trees WHERE repo = ?1 ORDER BY oid")?;
        let blobs = pairs("SELECT oid, data FROM blobs WHERE repo = ?1 ORDER BY oid")?;
        let mut refs = Vec::new();
        for kind in [RefKind::Branch, RefKind::Tag] {
            let mut st = db
                .prepare(
                    "SELECT name, commit_oid FROM refs WHERE repo = ?1 AND kind = ?2 ORDER BY name",
                )
                .map_err(db_err)?;
            let rows: Vec<Ref> = st
                .query_map(params![key, kind.as_str()], |r| {
                    Ok(Ref {
                        name: r.get(0)?,
                        commit: r.get(1)?,
                    })
                })
                .and_then(Iterator::collect)
                .map_err(db_err)?;
            refs.extend(rows.into_iter().map(|r| (kind, r)));
        }
        let mut st = db
            .prepare(&format!(
                "SELECT {COMMIT_COLS} FROM commits WHERE repo = ?1 ORDER BY oid"
            ))
            .map_err(db_err)?;
        let commits = st
            .query_map([key], commit_row)
            .and_then(Iterator::collect)
            .map_err(db_err)?;
        let bodies = strings(
            &db,
            "SELECT hash FROM bodies WHERE repo = ?1 ORDER BY hash",
            [key],
        )?;
        Ok(Some(RepoDump {
            key: key.to_string(),
            private: info.private,
            created_ms: info.created_ms,
            refs,
            commits,
            trees,
            blobs,
            bodies,
        }))
    }

    async fn import(&self, d: &RepoDump) -> RemoteResult<bool> {
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(db_err)?;
        if !insert_repo(&tx, &d.key, d.private, d.created_ms)? {
            return Ok(false);
        }
        for (oid, data) in &d.blobs {
            put_blob(&tx, &d.key, oid, data)?;
        }
        for (oid, body) in &d.trees {
            put_tree(&tx, &d.key, oid, body)?;
        }
        for c in &d.commits {
            put_commit(&tx, &d.key, c)?;
        }
        for h in &d.bodies {
            put_body(&tx, &d.key, h)?;
        }
        for (kind, r) in &d.refs {
            put_ref(&tx, &d.key, *kind, r)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(true)
    }
}

/// The commit columns, each with `p` before it.
fn prefixed(p: &str) -> String {
    COMMIT_COLS
        .split(", ")
        .map(|c| format!("{p}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}
