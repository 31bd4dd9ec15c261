//! Repos in PostgreSQL (`serve --catalog postgres://...`), the same rows as `repos.db` in
//! tables every replica shares. A branch moves by an `UPDATE ... WHERE commit_oid = head` in
//! the transaction that stores the commit: under concurrent replicas the second update waits
//! for the first, finds the head changed and moves nothing, so commits never interleave.

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::{Row, Transaction};

use super::{create_schema, db_err, execute, query};
use crate::remote::RemoteResult;
use crate::server::repos::store::{RepoDump, RepoStore, Written};
use crate::server::repos::{info_of, tree, Commit, Ref, RefKind, RepoInfo, MAIN};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS repo_repos (
    key        TEXT COLLATE "C" PRIMARY KEY,
    private    BOOLEAN NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS repo_refs (
    repo       TEXT COLLATE "C" NOT NULL,
    kind       TEXT NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    commit_oid TEXT NOT NULL,
    PRIMARY KEY (repo, kind, name)
);
CREATE TABLE IF NOT EXISTS repo_commits (
    repo    TEXT COLLATE "C" NOT NULL,
    oid     TEXT COLLATE "C" NOT NULL,
    parent  TEXT,
    tree    TEXT NOT NULL,
    title   TEXT NOT NULL,
    message TEXT NOT NULL,
    author  TEXT NOT NULL,
    date_ms BIGINT NOT NULL,
    PRIMARY KEY (repo, oid)
);
CREATE TABLE IF NOT EXISTS repo_trees (
    repo TEXT COLLATE "C" NOT NULL,
    oid  TEXT COLLATE "C" NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (repo, oid)
);
CREATE TABLE IF NOT EXISTS repo_blobs (
    repo TEXT COLLATE "C" NOT NULL,
    oid  TEXT COLLATE "C" NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (repo, oid)
);
CREATE TABLE IF NOT EXISTS repo_bodies (
    repo TEXT COLLATE "C" NOT NULL,
    hash TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (repo, hash)
);
-- For collection: whether any repo names a body (pg/cas_index.rs).
CREATE INDEX IF NOT EXISTS repo_bodies_by_hash ON repo_bodies (hash);
CREATE TABLE IF NOT EXISTS repo_sha256 (
    sha256 TEXT COLLATE "C" NOT NULL,
    hash   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (sha256, hash)
);
"#;

/// The tables a repo's rows are in (besides `repo_repos`), all keyed by `repo` first.
const TABLES: [&str; 5] = [
    "repo_refs",
    "repo_commits",
    "repo_trees",
    "repo_blobs",
    "repo_bodies",
];

const COMMIT_COLS: &str = "oid, parent, tree, title, message, author, date_ms";

pub struct PgRepos {
    pool: Pool,
}

fn commit_row(r: &Row) -> Commit {
    Commit {
        oid: r.get(0),
        parent: r.get(1),
        tree: r.get(2),
        title: r.get(3),
        message: r.get(4),
        author: r.get(5),
        date_ms: r.get(6),
    }
}

fn ref_row(r: &Row) -> Ref {
    Ref {
        name: r.get(0),
        commit: r.get(1),
    }
}

impl PgRepos {
    pub async fn open(pool: Pool) -> RemoteResult<Self> {
        create_schema(&pool, SCHEMA).await?;
        Ok(PgRepos { pool })
    }
}

/// Store rows of one repo in `tx`, each kind in one statement (existing rows stay).
async fn put_rows(
    tx: &Transaction<'_>,
    key: &str,
    blobs: &[(String, Vec<u8>)],
    trees: &[(String, Vec<u8>)],
    commits: &[Commit],
    bodies: &[String],
) -> RemoteResult<()> {
    let split = |rows: &[(String, Vec<u8>)]| -> (Vec<String>, Vec<Vec<u8>>) {
        rows.iter().cloned().unzip()
    };
    for (table, rows) in [("repo_blobs", blobs), ("repo_trees", trees)] {
        if rows.is_empty() {
            continue;
        }
        let (oids, data) = split(rows);
        tx.execute(
            &format!(
                "INSERT INTO {table} SELECT $1, o, d FROM unnest($2::text[], $3::bytea[]) AS x(o, d) \
                 ON CONFLICT DO NOTHING"
            ),
            &[&key, &oids, &data],
        )
        .await
        .map_err(db_err)?;
    }
    for c in commits {
        tx.execute(
            &format!(
                "INSERT INTO repo_commits (repo, {COMMIT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT DO NOTHING"
            ),
            &[
                &key, &c.oid, &c.parent, &c.tree, &c.title, &c.message, &c.author, &c.date_ms,
            ],
        )
        .await
        .map_err(db_err)?;
    }
    if !bodies.is_empty() {
        tx.execute(
            "INSERT INTO repo_bodies SELECT $1, h FROM unnest($2::text[]) AS x(h) \
             ON CONFLICT DO NOTHING",
            &[&key, &bodies],
        )
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// What a commit adds, as rows.
async fn put_written(tx: &Transaction<'_>, key: &str, w: &Written) -> RemoteResult<()> {
    let blobs: Vec<(String, Vec<u8>)> = w
        .blobs
        .iter()
        .map(|b| (tree::blob_oid(b), b.clone()))
        .collect();
    put_rows(
        tx,
        key,
        &blobs,
        &w.trees,
        std::slice::from_ref(&w.commit),
        &w.bodies,
    )
    .await
}

async fn insert_repo(
    tx: &Transaction<'_>,
    key: &str,
    private: bool,
    created_ms: i64,
) -> RemoteResult<bool> {
    let n = tx
        .execute(
            "INSERT INTO repo_repos VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
            &[&key, &private, &created_ms],
        )
        .await
        .map_err(db_err)?;
    Ok(n == 1)
}

async fn put_ref(tx: &Transaction<'_>, key: &str, kind: RefKind, r: &Ref) -> RemoteResult<()> {
    tx.execute(
        "INSERT INTO repo_refs VALUES ($1, $2, $3, $4) \
         ON CONFLICT (repo, kind, name) DO UPDATE SET commit_oid = EXCLUDED.commit_oid",
        &[&key, &kind.as_str(), &r.name, &r.commit],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

impl PgRepos {
    async fn strings(&self, sql: &str, params: super::Params<'_>) -> RemoteResult<Vec<String>> {
        Ok(query(&self.pool, sql, params)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}

#[async_trait]
impl RepoStore for PgRepos {
    async fn count(&self) -> RemoteResult<u64> {
        let rows = query(&self.pool, "SELECT count(*) FROM repo_repos", &[]).await?;
        Ok(rows[0].get::<_, i64>(0) as u64)
    }

    async fn keys(&self) -> RemoteResult<Vec<String>> {
        self.strings("SELECT key FROM repo_repos ORDER BY key", &[])
            .await
    }

    async fn info(&self, key: &str) -> RemoteResult<Option<RepoInfo>> {
        let rows = query(
            &self.pool,
            "SELECT private, created_ms FROM repo_repos WHERE key = $1",
            &[&key],
        )
        .await?;
        Ok(rows.first().map(|r| info_of(key, r.get(0), r.get(1))))
    }

    async fn create(&self, info: &RepoInfo, first: &Written) -> RemoteResult<bool> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        if !insert_repo(&tx, &info.key, info.private, info.created_ms).await? {
            return Ok(false);
        }
        put_written(&tx, &info.key, first).await?;
        let main = Ref {
            name: MAIN.into(),
            commit: first.commit.oid.clone(),
        };
        put_ref(&tx, &info.key, RefKind::Branch, &main).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn delete(&self, key: &str) -> RemoteResult<bool> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        let n = tx
            .execute("DELETE FROM repo_repos WHERE key = $1", &[&key])
            .await
            .map_err(db_err)?;
        for table in TABLES {
            tx.execute(&format!("DELETE FROM {table} WHERE repo = $1"), &[&key])
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(n == 1)
    }

    async fn target(&self, key: &str, kind: RefKind, name: &str) -> RemoteResult<Option<String>> {
        Ok(self
            .strings(
                "SELECT commit_oid FROM repo_refs WHERE repo = $1 AND kind = $2 AND name = $3",
                &[&key, &kind.as_str(), &name],
            )
            .await?
            .pop())
    }

    async fn refs(&self, key: &str, kind: RefKind) -> RemoteResult<Vec<Ref>> {
        Ok(query(
            &self.pool,
            "SELECT name, commit_oid FROM repo_refs WHERE repo = $1 AND kind = $2 ORDER BY name",
            &[&key, &kind.as_str()],
        )
        .await?
        .iter()
        .map(ref_row)
        .collect())
    }

    async fn create_ref(
        &self,
        key: &str,
        kind: RefKind,
        name: &str,
        commit: &str,
    ) -> RemoteResult<bool> {
        let n = execute(
            &self.pool,
            "INSERT INTO repo_refs VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&key, &kind.as_str(), &name, &commit],
        )
        .await?;
        Ok(n == 1)
    }

    async fn delete_ref(&self, key: &str, kind: RefKind, name: &str) -> RemoteResult<bool> {
        let n = execute(
            &self.pool,
            "DELETE FROM repo_refs WHERE repo = $1 AND kind = $2 AND name = $3",
            &[&key, &kind.as_str(), &name],
        )
        .await?;
        Ok(n == 1)
    }

    async fn commits_by_prefix(
        &self,
        key: &str,
        prefix: &str,
        limit: usize,
    ) -> RemoteResult<Vec<String>> {
        // Hex digits sort before `g` (the column compares bytes).
        self.strings(
            "SELECT oid FROM repo_commits WHERE repo = $1 AND oid >= $2 AND oid < $3 LIMIT $4",
            &[&key, &prefix, &format!("{prefix}g"), &(limit as i64)],
        )
        .await
    }

    async fn commit(&self, key: &str, oid: &str) -> RemoteResult<Option<Commit>> {
        Ok(query(
            &self.pool,
            &format!("SELECT {COMMIT_COLS} FROM repo_commits WHERE repo = $1 AND oid = $2"),
            &[&key, &oid],
        )
        .await?
        .first()
        .map(commit_row))
    }

    async fn history(
        &self,
        key: &str,
        from: &str,
        skip: usize,
        limit: usize,
    ) -> RemoteResult<Vec<Commit>> {
        let cols: Vec<String> = COMMIT_COLS.split(", ").map(|c| format!("c.{c}")).collect();
        let sql = format!(
            "WITH RECURSIVE h(oid, n) AS (
                 SELECT $2::text COLLATE \"C\", 0::bigint
                 UNION ALL
                 SELECT c.parent COLLATE \"C\", h.n + 1 FROM h JOIN repo_commits c
                     ON c.repo = $1 AND c.oid = h.oid
                 WHERE c.parent IS NOT NULL AND h.n + 1 < $3::bigint + $4::bigint)
             SELECT {} FROM h JOIN repo_commits c ON c.repo = $1 AND c.oid = h.oid
             WHERE h.n >= $3::bigint ORDER BY h.n",
            cols.join(", ")
        );
        Ok(query(
            &self.pool,
            &sql,
            &[&key, &from, &(skip as i64), &(limit as i64)],
        )
        .await?
        .iter()
        .map(commit_row)
        .collect())
    }

    async fn trees(&self, key: &str, oids: &[String]) -> RemoteResult<Vec<Option<Vec<u8>>>> {
        let rows = query(
            &self.pool,
            "SELECT oid, body FROM repo_trees WHERE repo = $1 AND oid = ANY($2::text[])",
            &[&key, &oids],
        )
        .await?;
        let mut found: std::collections::HashMap<String, Vec<u8>> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(oids.iter().map(|o| found.remove(o)).collect())
    }

    async fn blob(&self, key: &str, oid: &str) -> RemoteResult<Option<Vec<u8>>> {
        Ok(query(
            &self.pool,
            "SELECT data FROM repo_blobs WHERE repo = $1 AND oid = $2",
            &[&key, &oid],
        )
        .await?
        .first()
        .map(|r| r.get(0)))
    }

    async fn references(&self, key: &str, hash: &str) -> RemoteResult<bool> {
        Ok(!query(
            &self.pool,
            "SELECT 1 FROM repo_bodies WHERE repo = $1 AND hash = $2",
            &[&key, &hash],
        )
        .await?
        .is_empty())
    }

    async fn files_with_sha256(&self, sha256: &str) -> RemoteResult<Vec<String>> {
        self.strings("SELECT hash FROM repo_sha256 WHERE sha256 = $1", &[&sha256])
            .await
    }

    async fn note_sha256(&self, pairs: &[(String, String)]) -> RemoteResult<()> {
        let (shas, hashes): (Vec<String>, Vec<String>) = pairs.iter().cloned().unzip();
        execute(
            &self.pool,
            "INSERT INTO repo_sha256 SELECT * FROM unnest($1::text[], $2::text[]) \
             ON CONFLICT DO NOTHING",
            &[&shas, &hashes],
        )
        .await?;
        Ok(())
    }

    async fn sha256_pairs(&self) -> RemoteResult<Vec<(String, String)>> {
        Ok(query(
            &self.pool,
            "SELECT sha256, hash FROM repo_sha256 ORDER BY sha256, hash",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    async fn advance(
        &self,
        key: &str,
        branch: &str,
        head: &str,
        w: &Written,
    ) -> RemoteResult<bool> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        let moved = tx
            .execute(
                "UPDATE repo_refs SET commit_oid = $4 \
                 WHERE repo = $1 AND kind = 'branch' AND name = $2 AND commit_oid = $3",
                &[&key, &branch, &head, &w.commit.oid],
            )
            .await
            .map_err(db_err)?;
        if moved != 1 {
            return Ok(false);
        }
        put_written(&tx, key, w).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn export(&self, key: &str) -> RemoteResult<Option<RepoDump>> {
        let Some(info) = self.info(key).await? else {
            return Ok(None);
        };
        let pairs = |sql: &'static str| async move {
            Ok::<_, crate::remote::RemoteError>(
                query(&self.pool, sql, &[&key])
                    .await?
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                    .collect::<Vec<_>>(),
            )
        };
        let trees = pairs("SELECT oid, body FROM repo_trees WHERE repo = $1 ORDER BY oid").await?;
        let blobs = pairs("SELECT oid, data FROM repo_blobs WHERE repo = $1 ORDER BY oid").await?;
        let mut refs = Vec::new();
        for kind in [RefKind::Branch, RefKind::Tag] {
            refs.extend(self.refs(key, kind).await?.into_iter().map(|r| (kind, r)));
        }
        let commits = query(
            &self.pool,
            &format!("SELECT {COMMIT_COLS} FROM repo_commits WHERE repo = $1 ORDER BY oid"),
            &[&key],
        )
        .await?
        .iter()
        .map(commit_row)
        .collect();
        let bodies = self
            .strings(
                "SELECT hash FROM repo_bodies WHERE repo = $1 ORDER BY hash",
                &[&key],
            )
            .await?;
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
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        if !insert_repo(&tx, &d.key, d.private, d.created_ms).await? {
            return Ok(false);
        }
        put_rows(&tx, &d.key, &d.blobs, &d.trees, &d.commits, &d.bodies).await?;
        for (kind, r) in &d.refs {
            put_ref(&tx, &d.key, *kind, r).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }
}
