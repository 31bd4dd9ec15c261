//! A bucket's catalog in PostgreSQL: the same semantics as the SQLite catalog
//! (`remote/local/catalog.rs`, whose invariants hold here too: every entry's parent has a row,
//! hard links are rows sharing a `link` number and one body), over tables every bucket
//! shares, keyed by bucket.
//!
//! - `catalog_heads`: one row per bucket: its revision, where its change history starts, and
//!   running totals of its files and bytes (kept by a trigger on `catalog_entries`).
//! - `catalog_entries`: one row per name. Paths sort bytewise (`COLLATE "C"`), as the
//!   subtree ranges need (`dir/` ..< `dir0`).
//! - `catalog_changed`: the directories whose listing each revision changed.
//!
//! A commit locks its bucket's head row for the whole transaction: batches of one bucket run
//! one at a time whichever replica takes them, and a failed batch rolls back whole.

use async_trait::async_trait;
use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::Row;

use super::{db_err, SCHEMA_LOCK};
use crate::remote::local::{parent_of, tree_page_of, TREE_PAGE};
use crate::remote::record::EntryRecord;
use crate::remote::{
    Capabilities, Catalog, CatalogOp, Changes, Conflict, Entry, EntryKind, Meta, RemoteError,
    RemoteResult, TreePage,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS catalog_heads (
    bucket       TEXT PRIMARY KEY,
    revision     BIGINT NOT NULL,
    changes_from BIGINT NOT NULL,
    files        BIGINT NOT NULL DEFAULT 0,
    bytes        BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS catalog_entries (
    bucket   TEXT NOT NULL,
    path     TEXT COLLATE "C" NOT NULL,
    parent   TEXT COLLATE "C" NOT NULL,
    kind     SMALLINT NOT NULL,
    hash     TEXT,
    size     BIGINT NOT NULL,
    target   TEXT,
    mode     BIGINT NOT NULL,
    uid      BIGINT NOT NULL,
    gid      BIGINT NOT NULL,
    atime_ns BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    ctime_ns BIGINT NOT NULL,
    rdev     BIGINT NOT NULL DEFAULT 0,
    revision BIGINT NOT NULL,
    link     BIGINT,
    PRIMARY KEY (bucket, path)
);
CREATE INDEX IF NOT EXISTS catalog_entries_parent ON catalog_entries (bucket, parent, path);
CREATE INDEX IF NOT EXISTS catalog_entries_hash ON catalog_entries (bucket, hash)
    WHERE hash IS NOT NULL;
-- For collection: whether any bucket names a body (pg/cas_index.rs).
CREATE INDEX IF NOT EXISTS catalog_entries_by_hash ON catalog_entries (hash)
    WHERE hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS catalog_entries_link ON catalog_entries (bucket, link)
    WHERE link IS NOT NULL;
CREATE INDEX IF NOT EXISTS catalog_entries_empty ON catalog_entries (bucket, path)
    WHERE kind = 0 AND hash IS NULL;
CREATE TABLE IF NOT EXISTS catalog_changed (
    bucket   TEXT NOT NULL,
    revision BIGINT NOT NULL,
    dir      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (bucket, revision, dir)
);
CREATE OR REPLACE FUNCTION catalog_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A renamed bucket's rows move with its head row, totals and all.
    IF TG_OP = 'UPDATE' AND OLD.bucket <> NEW.bucket THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.kind = 0 THEN
        UPDATE catalog_heads SET files = files - 1, bytes = bytes - OLD.size
            WHERE bucket = OLD.bucket;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.kind = 0 THEN
        UPDATE catalog_heads SET files = files + 1, bytes = bytes + NEW.size
            WHERE bucket = NEW.bucket;
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER catalog_totals AFTER INSERT OR UPDATE OR DELETE ON catalog_entries
    FOR EACH ROW EXECUTE FUNCTION catalog_totals();
"#;

/// Revisions of change history kept (as the SQLite catalog keeps).
const HISTORY: i64 = 100_000;

const COLUMNS: &str =
    "path, kind, hash, size, target, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, rdev, link";

pub struct PgCatalog {
    pool: Pool,
    bucket: String,
}

fn row_to_entry(row: &Row) -> RemoteResult<Entry> {
    let code: i16 = row.get(1);
    let bad_kind = || RemoteError::Other(format!("catalog database: bad kind {code}"));
    let record = EntryRecord {
        path: row.get(0),
        kind: u8::try_from(code).map_err(|_| bad_kind())?,
        hash: row.get(2),
        size: row.get::<_, i64>(3) as u64,
        target: row.get(4),
        meta: Meta {
            mode: row.get::<_, i64>(5) as u32,
            uid: row.get::<_, i64>(6) as u32,
            gid: row.get::<_, i64>(7) as u32,
            atime_ns: row.get(8),
            mtime_ns: row.get(9),
            ctime_ns: row.get(10),
        },
        rdev: row.get::<_, i64>(11) as u64,
        link: row.get::<_, Option<i64>>(12).map(|l| l as u64),
    };
    record.entry().ok_or_else(bad_kind)
}

fn entries(rows: Vec<Row>) -> RemoteResult<Vec<Entry>> {
    rows.iter().map(row_to_entry).collect()
}

/// `dir/` ..< `dir0` (`'/' + 1 == '0'`): the keys strictly below `dir`.
fn subtree_bounds(path: &str) -> (String, String) {
    (format!("{path}/"), format!("{path}0"))
}

impl PgCatalog {
    /// Create the tables every bucket's catalog shares, if they are missing.
    pub async fn create_schema(pool: &Pool) -> RemoteResult<()> {
        super::create_schema(pool, SCHEMA).await
    }

    /// The catalog of bucket `bucket` (created empty, with its root, if new).
    pub async fn open(pool: Pool, bucket: &str) -> RemoteResult<Self> {
        let mut c = pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(db_err)?;
        tx.batch_execute(SCHEMA).await.map_err(db_err)?;
        let created = tx
            .execute(
                "INSERT INTO catalog_heads (bucket, revision, changes_from) VALUES ($1, 0, 0) \
                 ON CONFLICT (bucket) DO NOTHING",
                &[&bucket],
            )
            .await
            .map_err(db_err)?;
        if created == 1 {
            // SAFETY: getters without preconditions.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            let root = Entry::dir(String::new(), Meta::now(0o755, uid, gid));
            put_row(&tx, bucket, &root, 0).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(PgCatalog {
            pool,
            bucket: bucket.to_string(),
        })
    }

    /// Replace bucket `bucket`'s catalog with `entries` (the root among them) at revision
    /// `revision`, in one transaction: a migration, rerun as often as needed. The change
    /// history starts afresh at `revision` (readers older than it re-list).
    pub async fn import(
        pool: &Pool,
        bucket: &str,
        entries: &[Entry],
        revision: u64,
    ) -> RemoteResult<()> {
        let mut c = pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        delete_rows(&tx, bucket).await?;
        let rev = revision as i64;
        tx.execute(
            "INSERT INTO catalog_heads (bucket, revision, changes_from) VALUES ($1, $2, $2)",
            &[&bucket, &rev],
        )
        .await
        .map_err(db_err)?;
        for e in entries {
            put_row(&tx, bucket, e, rev).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    /// Whether `sql` finds a row.
    async fn exists(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> RemoteResult<bool> {
        Ok(!self.query(sql, params).await?.is_empty())
    }

    async fn query(
        &self,
        sql: &str,
        params: super::Params<'_>,
    ) -> RemoteResult<Vec<tokio_postgres::Row>> {
        super::query(&self.pool, sql, params).await
    }

    /// Every file at `path` or below it (`""`: the whole tree), in path order.
    pub async fn files_under(&self, path: &str) -> RemoteResult<Vec<Entry>> {
        let (lo, hi) = subtree_bounds(path);
        entries(
            self.query(
                &format!(
                    "SELECT {COLUMNS} FROM catalog_entries WHERE bucket = $1 AND kind = 0 \
                     AND path <> '' AND (path = $2 OR $2 = '' OR (path >= $3 AND path < $4)) \
                     ORDER BY path"
                ),
                &[&self.bucket, &path, &lo, &hi],
            )
            .await?,
        )
    }

    /// At most `limit` files at or below `path` whose paths sort after `after` (a page of
    /// [`Self::files_under`], keyed by path as the SQLite catalog's).
    pub async fn files_page(
        &self,
        path: &str,
        after: &str,
        limit: usize,
    ) -> RemoteResult<Vec<Entry>> {
        let mut out = Vec::new();
        if !path.is_empty() && path > after {
            out.extend(entries(
                self.query(
                    &format!(
                        "SELECT {COLUMNS} FROM catalog_entries WHERE bucket = $1 AND path = $2 \
                         AND kind = 0"
                    ),
                    &[&self.bucket, &path],
                )
                .await?,
            )?);
        }
        let rest = limit.saturating_sub(out.len());
        out.extend(self.range_page(path, after, rest, " AND kind = 0").await?);
        Ok(out)
    }

    /// At most `limit` entries of directory `dir` whose paths sort after `after`.
    pub async fn children_page(
        &self,
        dir: &str,
        after: &str,
        limit: usize,
    ) -> RemoteResult<Vec<Entry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        entries(
            self.query(
                &format!(
                    "SELECT {COLUMNS} FROM catalog_entries WHERE bucket = $1 AND parent = $2 \
                     AND path <> '' AND path > $3 ORDER BY path LIMIT $4"
                ),
                &[&self.bucket, &dir, &after, &limit],
            )
            .await?,
        )
    }

    /// At most `limit` entries strictly below `dir` (`""`: the whole tree) after `after`.
    pub async fn tree_page(
        &self,
        dir: &str,
        after: &str,
        limit: usize,
    ) -> RemoteResult<Vec<Entry>> {
        self.range_page(dir, after, limit, "").await
    }

    /// One range of the primary key per page: what it costs is what it returns.
    async fn range_page(
        &self,
        dir: &str,
        after: &str,
        limit: usize,
        filter: &str,
    ) -> RemoteResult<Vec<Entry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        if dir.is_empty() {
            return entries(
                self.query(
                    &format!(
                        "SELECT {COLUMNS} FROM catalog_entries WHERE bucket = $1 AND path > $2\
                         {filter} ORDER BY path LIMIT $3"
                    ),
                    &[&self.bucket, &after, &limit],
                )
                .await?,
            );
        }
        let (lo, hi) = subtree_bounds(dir);
        let from = if after > lo.as_str() { after } else { &lo };
        entries(
            self.query(
                &format!(
                    "SELECT {COLUMNS} FROM catalog_entries WHERE bucket = $1 AND path > $2 \
                     AND path < $3{filter} ORDER BY path LIMIT $4"
                ),
                &[&self.bucket, &from, &hi, &limit],
            )
            .await?,
        )
    }

    /// Whether some entry's body is `hash`.
    pub async fn references(&self, hash: &str) -> RemoteResult<bool> {
        self.exists(
            "SELECT 1 FROM catalog_entries WHERE bucket = $1 AND hash = $2 LIMIT 1",
            &[&self.bucket, &hash],
        )
        .await
    }

    /// Whether some file is empty (its body has no hash).
    pub async fn has_empty_file(&self) -> RemoteResult<bool> {
        self.exists(
            "SELECT 1 FROM catalog_entries WHERE bucket = $1 AND kind = 0 AND hash IS NULL \
                 AND path <> '' LIMIT 1",
            &[&self.bucket],
        )
        .await
    }

    /// The directories whose listings changed after revision `since`.
    pub async fn changes_since(&self, since: u64) -> RemoteResult<Changes> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        // One snapshot for the head and the history.
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_err)?;
        let head = tx
            .query_one(
                "SELECT revision, changes_from FROM catalog_heads WHERE bucket = $1",
                &[&self.bucket],
            )
            .await
            .map_err(db_err)?;
        let (revision, from) = (head.get::<_, i64>(0) as u64, head.get::<_, i64>(1) as u64);
        if since > revision || since < from {
            return Ok(Changes::Reset { revision });
        }
        let rows = tx
            .query(
                "SELECT DISTINCT dir FROM catalog_changed WHERE bucket = $1 AND revision > $2 \
                 AND revision <= $3",
                &[&self.bucket, &(since as i64), &(revision as i64)],
            )
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Changes::Dirs {
            revision,
            dirs: rows.iter().map(|r| r.get(0)).collect(),
        })
    }

    /// Number of files and their total size (kept by the `catalog_totals` trigger).
    pub async fn totals(&self) -> RemoteResult<(u64, u64)> {
        let rows = self
            .query(
                "SELECT files, bytes FROM catalog_heads WHERE bucket = $1",
                &[&self.bucket],
            )
            .await?;
        let r = rows.first().ok_or_else(|| {
            RemoteError::Other("catalog database: the bucket has no head row".into())
        })?;
        Ok((
            r.get::<_, i64>(0).max(0) as u64,
            r.get::<_, i64>(1).max(0) as u64,
        ))
    }

    /// Whether any file lies below directory `dir`.
    pub async fn has_file_under(&self, dir: &str) -> RemoteResult<bool> {
        let (lo, hi) = subtree_bounds(dir);
        self.exists(
            "SELECT 1 FROM catalog_entries WHERE bucket = $1 AND kind = 0 AND path >= $2 \
                 AND path < $3 LIMIT 1",
            &[&self.bucket, &lo, &hi],
        )
        .await
    }
}

type PgResult<T> = Result<T, tokio_postgres::Error>;

/// The tables a bucket's catalog has rows in. The head row goes first, so the totals trigger
/// finds no head to update for each entry deleted after it.
pub(crate) const TABLES: [&str; 3] = ["catalog_heads", "catalog_entries", "catalog_changed"];

/// Delete every row of bucket `bucket`'s catalog, in transaction `tx`.
pub(crate) async fn delete_rows(tx: &Transaction<'_>, bucket: &str) -> RemoteResult<()> {
    for t in TABLES {
        tx.execute(&format!("DELETE FROM {t} WHERE bucket = $1"), &[&bucket])
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

async fn put_row(tx: &Transaction<'_>, bucket: &str, e: &Entry, revision: i64) -> PgResult<()> {
    let (code, rdev) = e.kind.code();
    let st = tx
        .prepare_cached(
            "INSERT INTO catalog_entries (bucket, path, parent, kind, hash, size, target, mode, \
             uid, gid, atime_ns, mtime_ns, ctime_ns, rdev, revision, link) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (bucket, path) DO UPDATE SET parent = EXCLUDED.parent, \
             kind = EXCLUDED.kind, hash = EXCLUDED.hash, size = EXCLUDED.size, \
             target = EXCLUDED.target, mode = EXCLUDED.mode, uid = EXCLUDED.uid, \
             gid = EXCLUDED.gid, atime_ns = EXCLUDED.atime_ns, mtime_ns = EXCLUDED.mtime_ns, \
             ctime_ns = EXCLUDED.ctime_ns, rdev = EXCLUDED.rdev, revision = EXCLUDED.revision, \
             link = EXCLUDED.link",
        )
        .await?;
    tx.execute(
        &st,
        &[
            &bucket,
            &e.path,
            &parent_of(&e.path),
            &i16::from(code),
            &e.content.as_ref().map(|c| c.hash.as_str()),
            &(e.size() as i64),
            &e.target,
            &i64::from(e.meta.mode),
            &i64::from(e.meta.uid),
            &i64::from(e.meta.gid),
            &e.meta.atime_ns,
            &e.meta.mtime_ns,
            &e.meta.ctime_ns,
            &(rdev as i64),
            &revision,
            &e.link.map(|l| l as i64),
        ],
    )
    .await?;
    note_changed(tx, bucket, parent_of(&e.path), revision).await
}

async fn note_changed(
    tx: &Transaction<'_>,
    bucket: &str,
    dir: &str,
    revision: i64,
) -> PgResult<()> {
    let st = tx
        .prepare_cached(
            "INSERT INTO catalog_changed (bucket, revision, dir) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&st, &[&bucket, &revision, &dir]).await?;
    Ok(())
}

async fn get_row(tx: &Transaction<'_>, bucket: &str, path: &str) -> RemoteResult<Option<Entry>> {
    let st = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM catalog_entries WHERE bucket = $1 AND path = $2"
        ))
        .await
        .map_err(db_err)?;
    tx.query_opt(&st, &[&bucket, &path])
        .await
        .map_err(db_err)?
        .map(|r| row_to_entry(&r))
        .transpose()
}

/// Write `e`'s body and metadata to every row of hard-link group `link`.
async fn put_group(
    tx: &Transaction<'_>,
    bucket: &str,
    e: &Entry,
    link: u64,
    rev: i64,
) -> RemoteResult<()> {
    let paths: Vec<String> = tx
        .query(
            "SELECT path FROM catalog_entries WHERE bucket = $1 AND link = $2",
            &[&bucket, &(link as i64)],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for path in paths {
        let named = Entry {
            path,
            link: Some(link),
            ..e.clone()
        };
        put_row(tx, bucket, &named, rev).await.map_err(db_err)?;
    }
    Ok(())
}

/// Rows for missing ancestors of `path`, owned and timed like `like`.
async fn ensure_ancestors(
    tx: &Transaction<'_>,
    bucket: &str,
    path: &str,
    like: &Meta,
    rev: i64,
) -> RemoteResult<()> {
    let mut dir = parent_of(path);
    while !dir.is_empty() {
        if get_row(tx, bucket, dir).await?.is_some() {
            break;
        }
        let e = Entry::dir(
            dir.to_string(),
            Meta {
                mode: 0o755,
                ..*like
            },
        );
        put_row(tx, bucket, &e, rev).await.map_err(db_err)?;
        dir = parent_of(dir);
    }
    Ok(())
}

async fn delete_tree(tx: &Transaction<'_>, bucket: &str, path: &str, rev: i64) -> RemoteResult<()> {
    note_changed(tx, bucket, parent_of(path), rev)
        .await
        .map_err(db_err)?;
    let (lo, hi) = subtree_bounds(path);
    tx.execute(
        "DELETE FROM catalog_entries WHERE bucket = $1 AND (path = $2 OR (path >= $3 AND path < $4))",
        &[&bucket, &path, &lo, &hi],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn link(
    tx: &Transaction<'_>,
    bucket: &str,
    from: &str,
    to: &str,
    rev: i64,
) -> RemoteResult<()> {
    let src = get_row(tx, bucket, from)
        .await?
        .ok_or_else(|| RemoteError::NotFound(from.to_string()))?;
    if src.kind == EntryKind::Dir || to.is_empty() {
        return Err(RemoteError::Other(format!(
            "cannot link {from:?} to {to:?}"
        )));
    }
    if get_row(tx, bucket, to).await?.is_some() {
        return Err(RemoteError::Other(format!("link target {to:?} exists")));
    }
    let link = match src.link {
        Some(l) => l,
        None => {
            let next: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(link), 0) + 1 FROM catalog_entries \
                     WHERE bucket = $1 AND link IS NOT NULL",
                    &[&bucket],
                )
                .await
                .map_err(db_err)?
                .get(0);
            tx.execute(
                "UPDATE catalog_entries SET link = $3 WHERE bucket = $1 AND path = $2",
                &[&bucket, &from, &next],
            )
            .await
            .map_err(db_err)?;
            next as u64
        }
    };
    note_changed(tx, bucket, parent_of(from), rev)
        .await
        .map_err(db_err)?;
    ensure_ancestors(tx, bucket, to, &src.meta, rev).await?;
    let named = Entry {
        path: to.to_string(),
        link: Some(link),
        ..src
    };
    put_row(tx, bucket, &named, rev).await.map_err(db_err)
}

async fn rename(
    tx: &Transaction<'_>,
    bucket: &str,
    from: &str,
    to: &str,
    rev: i64,
) -> RemoteResult<()> {
    if from.is_empty() || to.is_empty() || to.starts_with(&format!("{from}/")) {
        return Err(RemoteError::Other(format!(
            "cannot rename {from:?} to {to:?}"
        )));
    }
    if from == to {
        return Ok(());
    }
    let meta = get_row(tx, bucket, from)
        .await?
        .ok_or_else(|| RemoteError::NotFound(from.to_string()))?
        .meta;
    delete_tree(tx, bucket, to, rev).await?;
    note_changed(tx, bucket, parent_of(from), rev)
        .await
        .map_err(db_err)?;
    ensure_ancestors(tx, bucket, to, &meta, rev).await?;
    tx.execute(
        "UPDATE catalog_entries SET path = $3, parent = $4, revision = $5 \
         WHERE bucket = $1 AND path = $2",
        &[&bucket, &from, &to, &parent_of(to), &rev],
    )
    .await
    .map_err(db_err)?;
    let (lo, hi) = subtree_bounds(from);
    // `substr` and `char_length` count characters, as the prefix must be cut.
    tx.execute(
        "UPDATE catalog_entries SET \
            path = $3 || substr(path, char_length($2) + 1), \
            parent = $3 || substr(parent, char_length($2) + 1), \
            revision = $6 \
         WHERE bucket = $1 AND path >= $4 AND path < $5",
        &[&bucket, &from, &to, &lo, &hi, &rev],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn apply(
    tx: &Transaction<'_>,
    bucket: &str,
    op: &CatalogOp,
    rev: i64,
    conflicts: &mut Vec<Conflict>,
) -> RemoteResult<()> {
    match op {
        CatalogOp::Expect { path, content } => {
            let current = get_row(tx, bucket, path).await?;
            if !current
                .as_ref()
                .is_some_and(|e| e.is_file_with(content.as_ref()))
            {
                conflicts.push(Conflict {
                    path: path.clone(),
                    current,
                });
            }
        }
        CatalogOp::Put(e) => {
            if e.path.is_empty() && e.kind != EntryKind::Dir {
                return Err(RemoteError::Other("the root must stay a directory".into()));
            }
            ensure_ancestors(tx, bucket, &e.path, &e.meta, rev).await?;
            let link = get_row(tx, bucket, &e.path).await?.and_then(|old| old.link);
            let e = &Entry { link, ..e.clone() };
            match link {
                Some(link) => put_group(tx, bucket, e, link, rev).await?,
                None => put_row(tx, bucket, e, rev).await.map_err(db_err)?,
            }
        }
        CatalogOp::SetMeta { path, meta } => {
            let row = get_row(tx, bucket, path)
                .await?
                .ok_or_else(|| RemoteError::NotFound(path.clone()))?;
            let e = Entry { meta: *meta, ..row };
            match e.link {
                Some(link) => put_group(tx, bucket, &e, link, rev).await?,
                None => put_row(tx, bucket, &e, rev).await.map_err(db_err)?,
            }
        }
        CatalogOp::Link { from, to } => link(tx, bucket, from, to, rev).await?,
        CatalogOp::Delete { path } => {
            if path.is_empty() {
                return Err(RemoteError::Other("cannot delete the root".into()));
            }
            delete_tree(tx, bucket, path, rev).await?;
        }
        CatalogOp::Rename { from, to } => rename(tx, bucket, from, to, rev).await?,
    }
    Ok(())
}

#[async_trait]
impl Catalog for PgCatalog {
    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
        entries(
            self.query(
                &format!(
                    "SELECT {COLUMNS} FROM catalog_entries WHERE bucket = $1 AND parent = $2 \
                     AND path <> '' ORDER BY path"
                ),
                &[&self.bucket, &dir],
            )
            .await?,
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::POSIX
    }

    async fn list_tree(&self, dir: &str, cursor: Option<&str>) -> RemoteResult<Option<TreePage>> {
        let entries = self
            .tree_page(dir, cursor.unwrap_or(""), TREE_PAGE + 1)
            .await?;
        Ok(Some(tree_page_of(entries)))
    }

    async fn link_paths(&self, link: u64) -> RemoteResult<Vec<String>> {
        Ok(self
            .query(
                "SELECT path FROM catalog_entries WHERE bucket = $1 AND link = $2 ORDER BY path",
                &[&self.bucket, &(link as i64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn head(&self, path: &str) -> RemoteResult<Option<Entry>> {
        self.query(
            &format!("SELECT {COLUMNS} FROM catalog_entries WHERE bucket = $1 AND path = $2"),
            &[&self.bucket, &path],
        )
        .await?
        .first()
        .map(row_to_entry)
        .transpose()
    }

    async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64> {
        let bucket = self.bucket.as_str();
        let mut c = self.pool.get().await.map_err(db_err)?;
        let tx = c.transaction().await.map_err(db_err)?;
        // The bucket's head row, locked until the end: one batch of a bucket at a time, on
        // every replica.
        let rev = tx
            .query_one(
                "SELECT revision FROM catalog_heads WHERE bucket = $1 FOR UPDATE",
                &[&bucket],
            )
            .await
            .map_err(db_err)?
            .get::<_, i64>(0)
            + 1;
        let mut conflicts = Vec::new();
        for op in &ops {
            apply(&tx, bucket, op, rev, &mut conflicts).await?;
        }
        if !conflicts.is_empty() {
            // Dropping the transaction rolls every op back.
            return Err(RemoteError::Conflict(conflicts));
        }
        if rev > HISTORY && rev % 1000 == 0 {
            tx.execute(
                "DELETE FROM catalog_changed WHERE bucket = $1 AND revision <= $2",
                &[&bucket, &(rev - HISTORY)],
            )
            .await
            .map_err(db_err)?;
            tx.execute(
                "UPDATE catalog_heads SET changes_from = $2 WHERE bucket = $1",
                &[&bucket, &(rev - HISTORY)],
            )
            .await
            .map_err(db_err)?;
        }
        tx.execute(
            "UPDATE catalog_heads SET revision = $2 WHERE bucket = $1",
            &[&bucket, &rev],
        )
        .await
        .map_err(db_err)?;
        // Delivered to every replica's listener when (and only if) the batch commits.
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[
                &super::feed::CHANNEL,
                &super::feed::payload(bucket, rev as u64),
            ],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rev as u64)
    }

    async fn revision(&self) -> RemoteResult<u64> {
        let rows = self
            .query(
                "SELECT revision FROM catalog_heads WHERE bucket = $1",
                &[&self.bucket],
            )
            .await?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
    }
}
