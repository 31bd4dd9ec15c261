//! SQLite catalog of the local store.
//!
//! Invariant held by `commit`: every entry's parent directory has a row (the root is the row
//! with path `""`). `Put` creates missing ancestors; `Delete` and `Rename` never remove the
//! parent of what they touch. Listing a directory is therefore one indexed query on `parent`.
//!
//! Hard links: rows with the same `link` are names of one file. Every row of a group holds the
//! same body and metadata: `Link` copies the row, `Put` writes to all rows of the path's group.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::remote::record::EntryRecord;
use crate::remote::{
    Capabilities, Catalog, CatalogOp, Changes, Conflict, Entry, EntryKind, Meta, RemoteError,
    RemoteResult, TreePage,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    path     TEXT PRIMARY KEY,
    parent   TEXT NOT NULL,
    kind     INTEGER NOT NULL,
    hash     TEXT,
    size     INTEGER NOT NULL,
    target   TEXT,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    rdev     INTEGER NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL,
    link     INTEGER
);
CREATE INDEX IF NOT EXISTS entries_parent_path ON entries(parent, path);
CREATE INDEX IF NOT EXISTS entries_hash ON entries(hash) WHERE hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_empty_files ON entries(path) WHERE kind = 0 AND hash IS NULL;
DROP INDEX IF EXISTS entries_parent;
CREATE TABLE IF NOT EXISTS changed (
    revision INTEGER NOT NULL,
    dir      TEXT NOT NULL,
    PRIMARY KEY (revision, dir)
) WITHOUT ROWID;
";

/// Entries per page of [`Catalog::list_tree`], as the Hub's tree listing pages.
pub const TREE_PAGE: usize = 1000;

/// A [`Catalog::list_tree`] page from up to `TREE_PAGE + 1` entries read: the one past the
/// page only says that another page follows, after the page's last path.
pub(crate) fn tree_page_of(mut entries: Vec<Entry>) -> TreePage {
    let next = (entries.len() > TREE_PAGE).then(|| {
        entries.truncate(TREE_PAGE);
        entries.last().map(|e| e.path.clone()).unwrap_or_default()
    });
    TreePage { entries, next }
}

/// Revisions of change history kept (`changed`); a reader further behind is told to re-list
/// everything.
const HISTORY: i64 = 100_000;

/// Stores of format 1 have no `link` column.
const LINK_MIGRATION: &str = "ALTER TABLE entries ADD COLUMN link INTEGER";
const LINK_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS entries_link ON entries(link) WHERE link IS NOT NULL";

/// Running totals of the files (rows of kind 0: each name of a hard-linked file counts, as a
/// listing shows it) and their bytes, kept by triggers in the transaction that changes
/// `entries`, so `totals` reads one row instead of counting every file. `put_row` replaces
/// rows (`INSERT OR REPLACE`), whose implicit delete fires no delete trigger (SQLite does that
/// only with `recursive_triggers` on, which is never set), so the insert trigger takes out the
/// row it replaces first. A catalog made before the totals gets them, counted once, in the
/// transaction that adds the triggers.
const TOTALS: &str = "
CREATE TABLE totals (
    id    INTEGER PRIMARY KEY CHECK (id = 0),
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT INTO totals (id, files, bytes)
    SELECT 0, COUNT(*), COALESCE(SUM(size), 0) FROM entries WHERE kind = 0;
CREATE TRIGGER totals_replace BEFORE INSERT ON entries BEGIN
    UPDATE totals SET
        files = files - (SELECT COUNT(*) FROM entries WHERE path = NEW.path AND kind = 0),
        bytes = bytes - (SELECT COALESCE(SUM(size), 0) FROM entries
                         WHERE path = NEW.path AND kind = 0)
        WHERE id = 0;
END;
CREATE TRIGGER totals_insert AFTER INSERT ON entries WHEN NEW.kind = 0 BEGIN
    UPDATE totals SET files = files + 1, bytes = bytes + NEW.size WHERE id = 0;
END;
CREATE TRIGGER totals_delete AFTER DELETE ON entries WHEN OLD.kind = 0 BEGIN
    UPDATE totals SET files = files - 1, bytes = bytes - OLD.size WHERE id = 0;
END;
CREATE TRIGGER totals_update AFTER UPDATE OF kind, size ON entries
    WHEN OLD.kind = 0 OR NEW.kind = 0 BEGIN
    UPDATE totals SET
        files = files - (OLD.kind = 0) + (NEW.kind = 0),
        bytes = bytes - (CASE WHEN OLD.kind = 0 THEN OLD.size ELSE 0 END)
                      + (CASE WHEN NEW.kind = 0 THEN NEW.size ELSE 0 END)
        WHERE id = 0;
END;
";

pub struct SqliteCatalog {
    conn: Arc<Mutex<Connection>>,
}

fn db_err(e: rusqlite::Error) -> RemoteError {
    RemoteError::Other(format!("catalog: {e}"))
}

pub(crate) fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// Kind column code and device number column.
fn kind_code(k: EntryKind) -> (i64, i64) {
    let (code, rdev) = k.code();
    (i64::from(code), rdev as i64)
}

/// Upper bound (exclusive) of the keys below `dir/`: `'/' + 1 == '0'`.
fn subtree_bounds(path: &str) -> (String, String) {
    (format!("{path}/"), format!("{path}0"))
}

const COLUMNS: &str =
    "path, kind, hash, size, target, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, rdev, link";

/// The entry of a row of [`COLUMNS`]: the columns are the fields of its shared record.
fn row_to_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let code = row.get::<_, i64>(1)?;
    let bad_kind = || rusqlite::Error::IntegralValueOutOfRange(1, code);
    let record = EntryRecord {
        path: row.get(0)?,
        kind: u8::try_from(code).map_err(|_| bad_kind())?,
        hash: row.get(2)?,
        size: row.get::<_, i64>(3)? as u64,
        target: row.get(4)?,
        meta: Meta {
            mode: row.get::<_, i64>(5)? as u32,
            uid: row.get::<_, i64>(6)? as u32,
            gid: row.get::<_, i64>(7)? as u32,
            atime_ns: row.get(8)?,
            mtime_ns: row.get(9)?,
            ctime_ns: row.get(10)?,
        },
        rdev: row.get::<_, i64>(11)? as u64,
        link: row.get::<_, Option<i64>>(12)?.map(|l| l as u64),
    };
    record.entry().ok_or_else(bad_kind)
}

impl SqliteCatalog {
    /// Let SQLite keep up to `mib` MiB of this catalog's pages (see [`Self::open`] for the
    /// default): a server holding a bucket of many files gives it more.
    pub fn set_page_cache_mib(&self, mib: i64) -> rusqlite::Result<()> {
        self.conn
            .lock()
            .pragma_update(None, "cache_size", -(mib * 1024))
    }

    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let mut conn = Connection::open(path)?;
        // WAL + FULL: a returned commit survives a crash or power loss.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 8 MiB of pages (SQLite's default is 2): the path and hash indexes of a 100k-entry
        // catalog, so a batch's inserts do not each read their pages back from the OS.
        conn.pragma_update(None, "cache_size", -8192)?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA)?;
        let has_link: bool = conn
            .query_row(
                "SELECT 1 FROM pragma_table_info('entries') WHERE name = 'link'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !has_link {
            conn.execute_batch(LINK_MIGRATION)?;
        }
        conn.execute_batch(LINK_INDEX)?;
        // History starts now for a store made before it was kept.
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) SELECT 'changes_from', \
             COALESCE((SELECT value FROM meta WHERE key = 'revision'), '0')",
            [],
        )?;
        add_totals(&mut conn)?;
        let has_root: bool = conn
            .query_row("SELECT 1 FROM entries WHERE path = ''", [], |_| Ok(()))
            .optional()?
            .is_some();
        if !has_root {
            // SAFETY: getters without preconditions.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            let root = Entry::dir(String::new(), Meta::now(0o755, uid, gid));
            put_row(&conn, &root, 0)?;
        }
        Ok(SqliteCatalog {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Every file at `path` or below it (`""`: the whole tree), in path order.
    pub async fn files_under(&self, path: &str) -> RemoteResult<Vec<Entry>> {
        let (lo, hi) = subtree_bounds(path);
        let path = path.to_string();
        self.with_conn(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM entries WHERE kind = 0 AND path != '' AND \
                     (path = ?1 OR ?1 = '' OR (path >= ?2 AND path < ?3)) ORDER BY path"
                ))
                .map_err(db_err)?;
            let rows = st
                .query_map(params![path, lo, hi], row_to_entry)
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    /// At most `limit` files of [`SqliteCatalog::files_under`] whose paths sort after
    /// `after`: one page of a listing that sees every file that exists for its whole duration
    /// exactly once, whatever changes between pages (the cursor is a path, not a position).
    pub async fn files_page(
        &self,
        path: &str,
        after: &str,
        limit: usize,
    ) -> RemoteResult<Vec<Entry>> {
        let (path, after) = (path.to_string(), after.to_string());
        self.with_conn(move |c| {
            // `path` itself, when it names a file: it sorts before everything below it.
            let mut out = Vec::new();
            if !path.is_empty() && path > after {
                out.extend(
                    one(
                        c,
                        &format!("SELECT {COLUMNS} FROM entries WHERE path = ?1 AND kind = 0"),
                        [&path],
                        row_to_entry,
                    )
                    .optional()
                    .map_err(db_err)?,
                );
            }
            let rest = limit.saturating_sub(out.len());
            out.extend(range_page(c, &path, &after, rest, " AND kind = 0").map_err(db_err)?);
            Ok(out)
        })
        .await
    }

    /// At most `limit` entries of directory `dir` whose paths sort after `after`, in path
    /// order (a page of [`Catalog::list_dir`], keyed like [`SqliteCatalog::files_page`]).
    pub async fn children_page(
        &self,
        dir: &str,
        after: &str,
        limit: usize,
    ) -> RemoteResult<Vec<Entry>> {
        let (dir, after) = (dir.to_string(), after.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM entries WHERE parent = ?1 AND path != '' AND path > ?2 \
                     ORDER BY path LIMIT ?3"
                ))
                .map_err(db_err)?;
            let rows = st
                .query_map(params![dir, after, limit], row_to_entry)
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    /// At most `limit` entries strictly below directory `dir` (`""`: the whole tree), at any
    /// depth and of every kind, whose paths sort after `after`, in path order: one page of a
    /// recursive listing, keyed like [`SqliteCatalog::files_page`], one range of the primary
    /// key per page.
    pub async fn tree_page(
        &self,
        dir: &str,
        after: &str,
        limit: usize,
    ) -> RemoteResult<Vec<Entry>> {
        let (dir, after) = (dir.to_string(), after.to_string());
        self.with_conn(move |c| range_page(c, &dir, &after, limit, "").map_err(db_err))
            .await
    }

    /// Whether some entry's body is `hash`.
    pub async fn references(&self, hash: &str) -> RemoteResult<bool> {
        let hash = hash.to_string();
        self.with_conn(move |c| {
            c.prepare_cached("SELECT 1 FROM entries WHERE hash = ?1")
                .and_then(|mut st| st.exists([hash]))
                .map_err(db_err)
        })
        .await
    }

    /// Whether some file is empty (its body has no hash).
    pub async fn has_empty_file(&self) -> RemoteResult<bool> {
        self.with_conn(move |c| {
            c.prepare_cached(EMPTY_FILE_SQL)
                .and_then(|mut st| st.exists([]))
                .map_err(db_err)
        })
        .await
    }

    /// The directories whose listings changed after revision `since`.
    pub async fn changes_since(&self, since: u64) -> RemoteResult<Changes> {
        self.with_conn(move |c| {
            let meta = |key: &str| {
                one(
                    c,
                    "SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?1",
                    [key],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|v| v.unwrap_or(0).max(0) as u64)
            };
            let revision = meta("revision").map_err(db_err)?;
            let from = meta("changes_from").map_err(db_err)?;
            if since > revision || since < from {
                return Ok(Changes::Reset { revision });
            }
            let mut st = c
                .prepare_cached(
                    "SELECT DISTINCT dir FROM changed WHERE revision > ?1 AND revision <= ?2",
                )
                .map_err(db_err)?;
            let dirs = st
                .query_map([since as i64, revision as i64], |r| r.get::<_, String>(0))
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            Ok(Changes::Dirs { revision, dirs })
        })
        .await
    }

    /// Number of files and their total size (kept as the catalog changes: see [`TOTALS`]).
    pub async fn totals(&self) -> RemoteResult<(u64, u64)> {
        self.with_conn(move |c| {
            one(c, TOTALS_SQL, [], |r| {
                Ok((
                    r.get::<_, i64>(0)?.max(0) as u64,
                    r.get::<_, i64>(1)?.max(0) as u64,
                ))
            })
            .map_err(db_err)
        })
        .await
    }

    /// Whether any file lies below directory `dir`.
    pub async fn has_file_under(&self, dir: &str) -> RemoteResult<bool> {
        let (lo, hi) = subtree_bounds(dir);
        self.with_conn(move |c| {
            one(
                c,
                "SELECT EXISTS(SELECT 1 FROM entries WHERE kind = 0 AND path >= ?1 AND path < ?2)",
                params![lo, hi],
                |r| r.get::<_, bool>(0),
            )
            .map_err(db_err)
        })
        .await
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> RemoteResult<T> + Send + 'static,
    ) -> RemoteResult<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(RemoteError::other)?
    }
}

/// Add the running totals ([`TOTALS`]) to a catalog that has none yet, all at once.
fn add_totals(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let has: bool = tx
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'totals'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has {
        tx.execute_batch(TOTALS)?;
    }
    tx.commit()
}

/// At most `limit` entries strictly below `dir` (`""`: the whole tree) whose paths sort after
/// `after` and that match `filter` (SQL added to the WHERE clause), in path order. One range
/// of the primary key from the later of `after` and the subtree's start to the subtree's end:
/// a page costs what it returns wherever it lies in the table. (A cursor condition alone,
/// with the subtree checked row by row, walked every row between the table's start or the
/// cursor and the subtree: up to the whole table per page.)
fn range_page(
    c: &Connection,
    dir: &str,
    after: &str,
    limit: usize,
    filter: &str,
) -> rusqlite::Result<Vec<Entry>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    if dir.is_empty() {
        let mut st = c.prepare_cached(&range_sql(true, filter))?;
        let rows = st.query_map(params![after, limit], row_to_entry)?;
        return rows.collect();
    }
    let (lo, hi) = subtree_bounds(dir);
    // `lo` ("dir/") names no entry, so "after it" is "from it".
    let from = if after > lo.as_str() { after } else { &lo };
    let mut st = c.prepare_cached(&range_sql(false, filter))?;
    let rows = st.query_map(params![from, hi, limit], row_to_entry)?;
    rows.collect()
}

/// The query of [`range_page`]: paths after `?1` (and before `?2` unless `whole_tree`), at
/// most `?2` / `?3` of them.
fn range_sql(whole_tree: bool, filter: &str) -> String {
    if whole_tree {
        format!("SELECT {COLUMNS} FROM entries WHERE path > ?1{filter} ORDER BY path LIMIT ?2")
    } else {
        format!(
            "SELECT {COLUMNS} FROM entries WHERE path > ?1 AND path < ?2{filter} \
             ORDER BY path LIMIT ?3"
        )
    }
}

/// Files and bytes of every file, from the running totals.
const TOTALS_SQL: &str = "SELECT files, bytes FROM totals WHERE id = 0";
/// Whether some file is empty (through `entries_empty_files`).
const EMPTY_FILE_SQL: &str = "SELECT 1 FROM entries WHERE kind = 0 AND hash IS NULL AND path != ''";
/// A hard-link group number no row uses (through the `link` index; a bare MAX(link) read every
/// row).
const NEXT_LINK_SQL: &str = "SELECT COALESCE(MAX(link), 0) + 1 FROM entries WHERE link IS NOT NULL";

/// `Connection::execute` through the statement cache: commits run the same few statements
/// thousands of times, and parsing them each time cost more than running them.
fn exec(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(p)
}

/// `Connection::query_row` through the statement cache.
fn one<T>(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(p, f)
}

fn put_row(conn: &Connection, e: &Entry, revision: i64) -> rusqlite::Result<()> {
    let size = e.size() as i64;
    let (kind, rdev) = kind_code(e.kind);
    exec(conn,
        "INSERT OR REPLACE INTO entries
           (path, parent, kind, hash, size, target, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, rdev, revision, link)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            e.path,
            parent_of(&e.path),
            kind,
            e.content.as_ref().map(|c| c.hash.as_str()),
            size,
            e.target,
            e.meta.mode as i64,
            e.meta.uid as i64,
            e.meta.gid as i64,
            e.meta.atime_ns,
            e.meta.mtime_ns,
            e.meta.ctime_ns,
            rdev,
            revision,
            e.link.map(|l| l as i64)
        ],
    )?;
    note_changed(conn, parent_of(&e.path), revision)
}

/// Record that the listing of directory `dir` changed in `revision`.
fn note_changed(conn: &Connection, dir: &str, revision: i64) -> rusqlite::Result<()> {
    exec(
        conn,
        "INSERT OR IGNORE INTO changed (revision, dir) VALUES (?1, ?2)",
        params![revision, dir],
    )?;
    Ok(())
}

/// The row at `path`, if any.
fn get_row(tx: &Transaction<'_>, path: &str) -> rusqlite::Result<Option<Entry>> {
    one(
        tx,
        &format!("SELECT {COLUMNS} FROM entries WHERE path = ?1"),
        [path],
        row_to_entry,
    )
    .optional()
}

/// Write `e`'s body and metadata to every row of hard-link group `link` (each keeps its
/// own path).
fn put_group(tx: &Transaction<'_>, e: &Entry, link: u64, revision: i64) -> rusqlite::Result<()> {
    let paths: Vec<String> = tx
        .prepare_cached("SELECT path FROM entries WHERE link = ?1")?
        .query_map([link as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for path in paths {
        let named = Entry {
            path,
            link: Some(link),
            ..e.clone()
        };
        put_row(tx, &named, revision)?;
    }
    Ok(())
}

/// Create rows for missing ancestor directories of `path`, inheriting owner and times from
/// `like`.
fn ensure_ancestors(
    tx: &Transaction<'_>,
    path: &str,
    like: &Meta,
    rev: i64,
) -> rusqlite::Result<()> {
    let mut dir = parent_of(path);
    while !dir.is_empty() {
        let exists = one(tx, "SELECT 1 FROM entries WHERE path = ?1", [dir], |_| {
            Ok(())
        })
        .optional()?
        .is_some();
        if exists {
            break;
        }
        let e = Entry::dir(
            dir.to_string(),
            Meta {
                mode: 0o755,
                ..*like
            },
        );
        put_row(tx, &e, rev)?;
        dir = parent_of(dir);
    }
    Ok(())
}

fn delete_tree(tx: &Transaction<'_>, path: &str, rev: i64) -> rusqlite::Result<usize> {
    note_changed(tx, parent_of(path), rev)?;
    let (lo, hi) = subtree_bounds(path);
    exec(
        tx,
        "DELETE FROM entries WHERE path = ?1 OR (path >= ?2 AND path < ?3)",
        params![path, lo, hi],
    )
}

/// A hard link `to` of `from`, which joins (or starts) `from`'s link group.
fn link(tx: &Transaction<'_>, from: &str, to: &str, rev: i64) -> RemoteResult<()> {
    let src = get_row(tx, from)
        .map_err(db_err)?
        .ok_or_else(|| RemoteError::NotFound(from.to_string()))?;
    if src.kind == EntryKind::Dir || to.is_empty() {
        return Err(RemoteError::Other(format!(
            "cannot link {from:?} to {to:?}"
        )));
    }
    if get_row(tx, to).map_err(db_err)?.is_some() {
        return Err(RemoteError::Other(format!("link target {to:?} exists")));
    }
    let link = match src.link {
        Some(l) => l,
        None => {
            let next: i64 = one(tx, NEXT_LINK_SQL, [], |r| r.get(0)).map_err(db_err)?;
            exec(
                tx,
                "UPDATE entries SET link = ?2 WHERE path = ?1",
                params![from, next],
            )
            .map_err(db_err)?;
            next as u64
        }
    };
    // The source's listing shows its new link count.
    note_changed(tx, parent_of(from), rev).map_err(db_err)?;
    ensure_ancestors(tx, to, &src.meta, rev).map_err(db_err)?;
    let named = Entry {
        path: to.to_string(),
        link: Some(link),
        ..src
    };
    put_row(tx, &named, rev).map_err(db_err)?;
    Ok(())
}

/// `from` and everything below it moved to `to`, replacing whatever was there.
fn rename(tx: &Transaction<'_>, from: &str, to: &str, rev: i64) -> RemoteResult<()> {
    if from.is_empty() || to.is_empty() || to.starts_with(&format!("{from}/")) {
        return Err(RemoteError::Other(format!(
            "cannot rename {from:?} to {to:?}"
        )));
    }
    if from == to {
        return Ok(());
    }
    let meta: Meta = one(
        tx,
        &format!("SELECT {COLUMNS} FROM entries WHERE path = ?1"),
        [from],
        row_to_entry,
    )
    .optional()
    .map_err(db_err)?
    .ok_or_else(|| RemoteError::NotFound(from.to_string()))?
    .meta;
    delete_tree(tx, to, rev).map_err(db_err)?;
    note_changed(tx, parent_of(from), rev).map_err(db_err)?;
    ensure_ancestors(tx, to, &meta, rev).map_err(db_err)?;
    exec(
        tx,
        "UPDATE entries SET path = ?2, parent = ?3, revision = ?4 WHERE path = ?1",
        params![from, to, parent_of(to), rev],
    )
    .map_err(db_err)?;
    let (lo, hi) = subtree_bounds(from);
    // `substr` and `length` count characters, not bytes: the prefix's length must be taken
    // in SQL too (a byte count cut names below a non-ASCII directory in the wrong place).
    exec(
        tx,
        "UPDATE entries SET
            path = ?1 || substr(path, length(?2) + 1),
            parent = ?1 || substr(parent, length(?2) + 1),
            revision = ?5
         WHERE path >= ?3 AND path < ?4",
        params![to, from, lo, hi, rev],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Apply `op` within the commit's transaction; a failed expectation is added to `conflicts`.
fn apply(
    tx: &Transaction<'_>,
    op: &CatalogOp,
    rev: i64,
    conflicts: &mut Vec<Conflict>,
) -> RemoteResult<()> {
    match op {
        CatalogOp::Expect { path, content } => {
            let current = get_row(tx, path).map_err(db_err)?;
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
            ensure_ancestors(tx, &e.path, &e.meta, rev).map_err(db_err)?;
            let link = get_row(tx, &e.path)
                .map_err(db_err)?
                .and_then(|old| old.link);
            // A Put never names a group: the path keeps the one it is in, or stays outside.
            let e = &Entry { link, ..e.clone() };
            match link {
                Some(link) => put_group(tx, e, link, rev).map_err(db_err)?,
                None => put_row(tx, e, rev).map_err(db_err)?,
            }
        }
        CatalogOp::SetMeta { path, meta } => {
            let row = get_row(tx, path)
                .map_err(db_err)?
                .ok_or_else(|| RemoteError::NotFound(path.clone()))?;
            let e = Entry { meta: *meta, ..row };
            match e.link {
                Some(link) => put_group(tx, &e, link, rev).map_err(db_err)?,
                None => put_row(tx, &e, rev).map_err(db_err)?,
            }
        }
        CatalogOp::Link { from, to } => link(tx, from, to, rev)?,
        CatalogOp::Delete { path } => {
            if path.is_empty() {
                return Err(RemoteError::Other("cannot delete the root".into()));
            }
            delete_tree(tx, path, rev).map_err(db_err)?;
        }
        CatalogOp::Rename { from, to } => rename(tx, from, to, rev)?,
    }
    Ok(())
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
        let dir = dir.to_string();
        self.with_conn(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM entries WHERE parent = ?1 AND path != '' ORDER BY path"
                ))
                .map_err(db_err)?;
            let rows = st.query_map([&dir], row_to_entry).map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
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
        self.with_conn(move |c| {
            let mut st = c
                .prepare_cached("SELECT path FROM entries WHERE link = ?1 ORDER BY path")
                .map_err(db_err)?;
            let rows = st
                .query_map([link as i64], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn head(&self, path: &str) -> RemoteResult<Option<Entry>> {
        let path = path.to_string();
        self.with_conn(move |c| {
            one(
                c,
                &format!("SELECT {COLUMNS} FROM entries WHERE path = ?1"),
                [&path],
                row_to_entry,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64> {
        self.with_conn(move |c| {
            let tx = c.transaction().map_err(db_err)?;
            let rev: i64 = one(
                &tx,
                "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'revision'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?
            .unwrap_or(0)
                + 1;
            // Every failed expectation is reported, not just the first: the writer handles
            // them all before it tries again.
            let mut conflicts = Vec::new();
            for op in &ops {
                apply(&tx, op, rev, &mut conflicts)?;
            }
            if !conflicts.is_empty() {
                // Dropping the transaction rolls every op back.
                return Err(RemoteError::Conflict(conflicts));
            }
            if rev > HISTORY && rev % 1000 == 0 {
                exec(
                    &tx,
                    "DELETE FROM changed WHERE revision <= ?1",
                    [rev - HISTORY],
                )
                .map_err(db_err)?;
                exec(
                    &tx,
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('changes_from', ?1)",
                    [(rev - HISTORY).to_string()],
                )
                .map_err(db_err)?;
            }
            exec(
                &tx,
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('revision', ?1)",
                [rev.to_string()],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(rev as u64)
        })
        .await
    }

    async fn revision(&self) -> RemoteResult<u64> {
        self.with_conn(|c| {
            one(
                c,
                "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'revision'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|r| r.unwrap_or(0) as u64)
            .map_err(db_err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::FileId;

    fn meta() -> Meta {
        Meta {
            mode: 0o644,
            uid: 1,
            gid: 2,
            atime_ns: 10,
            mtime_ns: 20,
            ctime_ns: 30,
        }
    }

    fn file(path: &str, hash: &str, size: u64) -> Entry {
        crate::remote::testing::file_entry(path, hash, size, meta())
    }

    fn names(v: &[Entry]) -> Vec<&str> {
        v.iter().map(|e| e.path.as_str()).collect()
    }

    #[tokio::test]
    async fn put_creates_ancestors_and_lists_by_parent() {
        let d = tempfile::tempdir().unwrap();
        let c = SqliteCatalog::open(&d.path().join("c.db")).unwrap();
        let r1 = c
            .commit(vec![CatalogOp::Put(file("a/b/c.bin", "h1", 5))])
            .await
            .unwrap();
        assert_eq!(names(&c.list_dir("").await.unwrap()), vec!["a"]);
        assert_eq!(names(&c.list_dir("a").await.unwrap()), vec!["a/b"]);
        let got = c.head("a/b/c.bin").await.unwrap().unwrap();
        assert_eq!(got, file("a/b/c.bin", "h1", 5));
        assert_eq!(c.head("a").await.unwrap().unwrap().kind, EntryKind::Dir);
        let r2 = c.commit(vec![]).await.unwrap();
        assert!(r2 > r1);
        assert_eq!(c.revision().await.unwrap(), r2);
    }

    #[tokio::test]
    async fn tree_pages_list_a_subtree_in_path_order_and_nothing_beside_it() {
        let d = tempfile::tempdir().unwrap();
        let c = SqliteCatalog::open(&d.path().join("c.db")).unwrap();
        let paths = ["a/x", "a/b/c", "a.txt", "a-b/y", "a/b/d", "b/z"];
        let ops = paths
            .iter()
            .map(|p| CatalogOp::Put(file(p, "h", 1)))
            .collect();
        c.commit(ops).await.unwrap();
        c.commit(vec![CatalogOp::Put(Entry::dir("a/empty".into(), meta()))])
            .await
            .unwrap();
        // Everything below `a`, directories included, never `a.txt` or `a-b` beside it.
        let want = ["a/b", "a/b/c", "a/b/d", "a/empty", "a/x"];
        assert_eq!(names(&c.tree_page("a", "", 100).await.unwrap()), want);
        let mut got = Vec::new();
        let mut after = String::new();
        loop {
            let page = c.tree_page("a", &after, 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.path.clone();
            got.extend(page);
        }
        assert_eq!(names(&got), want);
        let all = c.tree_page("", "", 100).await.unwrap();
        assert_eq!(all.len(), 11, "{:?}", names(&all));
        assert!(all.windows(2).all(|w| w[0].path < w[1].path));
    }

    #[tokio::test]
    async fn a_failed_expectation_refuses_the_whole_batch_and_names_every_conflict() {
        let d = tempfile::tempdir().unwrap();
        let c = SqliteCatalog::open(&d.path().join("c.db")).unwrap();
        let id = |h: &str, n: u64| {
            Some(FileId {
                hash: h.into(),
                size: n,
            })
        };
        let expect = |p: &str, content: Option<FileId>| CatalogOp::Expect {
            path: p.into(),
            content,
        };
        c.commit(vec![
            CatalogOp::Put(file("a", "h1", 5)),
            CatalogOp::Put(file("e", "", 0)),
        ])
        .await
        .unwrap();
        let r = c.revision().await.unwrap();
        // Held: the body, an empty body (absent content and size 0 are the same), and a
        // path that an earlier op of the same batch moved into place.
        c.commit(vec![
            expect("a", id("h1", 5)),
            CatalogOp::Put(file("a", "h2", 6)),
            expect("e", None),
            CatalogOp::Rename {
                from: "a".into(),
                to: "b".into(),
            },
            expect("b", id("h2", 6)),
        ])
        .await
        .unwrap();
        assert_eq!(c.head("b").await.unwrap().unwrap().content, id("h2", 6));
        // Stale: a changed body, a missing path, a directory. Nothing of the batch applies.
        let r2 = c.revision().await.unwrap();
        assert!(r2 > r);
        c.commit(vec![CatalogOp::Put(Entry {
            kind: EntryKind::Dir,
            content: None,
            ..file("dir", "", 0)
        })])
        .await
        .unwrap();
        let r3 = c.revision().await.unwrap();
        let err = c
            .commit(vec![
                CatalogOp::Put(file("new", "h9", 9)),
                expect("b", id("h1", 5)),
                expect("gone", None),
                expect("dir", None),
                CatalogOp::Delete { path: "b".into() },
            ])
            .await
            .unwrap_err();
        let RemoteError::Conflict(conflicts) = err else {
            panic!("not a conflict: {err}");
        };
        let paths: Vec<&str> = conflicts.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["b", "gone", "dir"]);
        assert_eq!(conflicts[0].current.as_ref().unwrap().content, id("h2", 6));
        assert!(conflicts[1].current.is_none());
        assert_eq!(conflicts[2].current.as_ref().unwrap().kind, EntryKind::Dir);
        assert_eq!(c.revision().await.unwrap(), r3);
        assert!(c.head("new").await.unwrap().is_none());
        assert!(c.head("b").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn changes_name_every_directory_whose_listing_changed() {
        let d = tempfile::tempdir().unwrap();
        let c = SqliteCatalog::open(&d.path().join("c.db")).unwrap();
        let dirs = |ch: Changes| match ch {
            Changes::Dirs { mut dirs, .. } => {
                dirs.sort();
                dirs
            }
            Changes::Reset { .. } => panic!("reset"),
        };
        let r0 = c.revision().await.unwrap();
        let r1 = c
            .commit(vec![CatalogOp::Put(file("a/b/c", "h", 1))])
            .await
            .unwrap();
        assert_eq!(dirs(c.changes_since(r0).await.unwrap()), ["", "a", "a/b"]);
        assert!(dirs(c.changes_since(r1).await.unwrap()).is_empty());
        let r2 = c
            .commit(vec![CatalogOp::Rename {
                from: "a/b".into(),
                to: "x/b".into(),
            }])
            .await
            .unwrap();
        assert_eq!(dirs(c.changes_since(r1).await.unwrap()), ["", "a", "x"]);
        c.commit(vec![CatalogOp::Link {
            from: "x/b/c".into(),
            to: "l".into(),
        }])
        .await
        .unwrap();
        let r4 = c
            .commit(vec![CatalogOp::Delete { path: "x/b".into() }])
            .await
            .unwrap();
        assert_eq!(dirs(c.changes_since(r2).await.unwrap()), ["", "x", "x/b"]);
        // From the future, or from before the history: re-list everything.
        assert_eq!(
            c.changes_since(r4 + 1).await.unwrap(),
            Changes::Reset { revision: r4 }
        );
    }

    #[tokio::test]
    async fn rename_moves_subtree_and_replaces_target() {
        let d = tempfile::tempdir().unwrap();
        let c = SqliteCatalog::open(&d.path().join("c.db")).unwrap();
        c.commit(vec![
            CatalogOp::Put(file("d/x", "hx", 1)),
            CatalogOp::Put(file("d/sub/y", "hy", 2)),
            CatalogOp::Put(file("e/old", "ho", 3)),
            CatalogOp::Put(file("dz", "hz", 4)), // sorts between "d/" and "d0": must not move
        ])
        .await
        .unwrap();
        c.commit(vec![CatalogOp::Rename {
            from: "d".into(),
            to: "e".into(),
        }])
        .await
        .unwrap();
        assert!(c.head("d").await.unwrap().is_none());
        assert!(c.head("e/old").await.unwrap().is_none());
        assert_eq!(
            c.head("e/sub/y")
                .await
                .unwrap()
                .unwrap()
                .content
                .unwrap()
                .hash,
            "hy"
        );
        assert_eq!(names(&c.list_dir("e").await.unwrap()), vec!["e/sub", "e/x"]);
        assert_eq!(names(&c.list_dir("e/sub").await.unwrap()), vec!["e/sub/y"]);
        assert!(c.head("dz").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn failed_batch_changes_nothing_and_state_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.db");
        {
            let c = SqliteCatalog::open(&p).unwrap();
            c.commit(vec![CatalogOp::Put(file("keep", "hk", 1))])
                .await
                .unwrap();
            let err = c
                .commit(vec![
                    CatalogOp::Delete {
                        path: "keep".into(),
                    },
                    CatalogOp::Rename {
                        from: "missing".into(),
                        to: "x".into(),
                    },
                ])
                .await
                .unwrap_err();
            assert!(matches!(err, RemoteError::NotFound(_)));
        }
        let c = SqliteCatalog::open(&p).unwrap();
        assert!(c.head("keep").await.unwrap().is_some());
        // Deleting a child keeps its (explicit) parent.
        c.commit(vec![
            CatalogOp::Put(file("p/q", "h", 1)),
            CatalogOp::Delete { path: "p/q".into() },
        ])
        .await
        .unwrap();
        assert_eq!(c.head("p").await.unwrap().unwrap().kind, EntryKind::Dir);
    }

    #[tokio::test]
    async fn hard_links_share_body_and_metadata_until_the_last_name_goes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.db");
        {
            let c = SqliteCatalog::open(&p).unwrap();
            c.commit(vec![CatalogOp::Put(file("a/f", "h1", 5))])
                .await
                .unwrap();
            c.commit(vec![CatalogOp::Link {
                from: "a/f".into(),
                to: "b/g".into(),
            }])
            .await
            .unwrap();
            let link = c.head("a/f").await.unwrap().unwrap().link.unwrap();
            assert_eq!(c.head("b/g").await.unwrap().unwrap().link, Some(link));
            assert_eq!(c.link_paths(link).await.unwrap(), vec!["a/f", "b/g"]);
            // A put through either name reaches both (its own `link` field is ignored).
            let mut e = file("b/g", "h2", 9);
            e.meta.mode = 0o600;
            c.commit(vec![CatalogOp::Put(e)]).await.unwrap();
            let f = c.head("a/f").await.unwrap().unwrap();
            assert_eq!(f.content.unwrap().hash, "h2");
            assert_eq!(f.meta.mode, 0o600);
            // Linking over an existing name or a directory is refused.
            for (from, to) in [("a/f", "b/g"), ("a", "c")] {
                let r = c
                    .commit(vec![CatalogOp::Link {
                        from: from.into(),
                        to: to.into(),
                    }])
                    .await;
                assert!(r.is_err(), "{from} -> {to}");
            }
            c.commit(vec![
                CatalogOp::Rename {
                    from: "b/g".into(),
                    to: "b/h".into(),
                },
                CatalogOp::Delete { path: "a/f".into() },
            ])
            .await
            .unwrap();
        }
        let c = SqliteCatalog::open(&p).unwrap();
        let h = c.head("b/h").await.unwrap().unwrap();
        assert_eq!(c.link_paths(h.link.unwrap()).await.unwrap(), vec!["b/h"]);
        assert_eq!(h.content.unwrap().hash, "h2");
    }

    #[tokio::test]
    async fn a_format_1_catalog_gains_the_link_column() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.db");
        {
            let conn = Connection::open(&p).unwrap();
            conn.execute_batch(&SCHEMA.replace(",\n    link     INTEGER", ""))
                .unwrap();
            conn.execute(
                "INSERT INTO entries (path, parent, kind, size, mode, uid, gid, atime_ns,
                   mtime_ns, ctime_ns, revision) VALUES ('old', '', 0, 0, 420, 0, 0, 1, 1, 1, 1)",
                [],
            )
            .unwrap();
        }
        let c = SqliteCatalog::open(&p).unwrap();
        assert_eq!(c.head("old").await.unwrap().unwrap().link, None);
        c.commit(vec![CatalogOp::Link {
            from: "old".into(),
            to: "new".into(),
        }])
        .await
        .unwrap();
        assert!(c.head("new").await.unwrap().unwrap().link.is_some());
    }

    /// Files and bytes counted row by row, what the running totals must equal.
    fn recount(p: &Path) -> (u64, u64) {
        Connection::open(p)
            .unwrap()
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries WHERE kind = 0",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .unwrap()
    }

    /// Random batches of every kind of op over a few paths (so they replace, move, link and
    /// delete each other's entries), some refused whole: after each, and after reopening, the
    /// running totals equal a recount.
    #[tokio::test]
    async fn running_totals_equal_a_recount_after_any_mix_of_batches_and_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.db");
        let paths = ["a", "a/b", "a/c", "a/b/d", "e", "e/f", "g"];
        let r = crate::remote::testing::random(40_000, 23);
        let mut next = r.iter().map(|&b| b as usize).cycle();
        let mut pick = |n: usize| next.next().unwrap() % n;
        let (mut applied, mut refused) = (0, 0);
        {
            let c = SqliteCatalog::open(&p).unwrap();
            assert_eq!(c.totals().await.unwrap(), (0, 0));
            for _ in 0..400 {
                let ops: Vec<CatalogOp> = (0..1 + pick(4))
                    .map(|_| {
                        let path = paths[pick(paths.len())].to_string();
                        let other = paths[pick(paths.len())].to_string();
                        match pick(9) {
                            0..=2 => CatalogOp::Put(file(&path, "h", pick(1000) as u64)),
                            3 => CatalogOp::Put(Entry::dir(path, meta())),
                            4 => CatalogOp::Put(Entry {
                                kind: EntryKind::Symlink,
                                content: None,
                                target: Some("somewhere".into()),
                                ..file(&path, "h", 0)
                            }),
                            5 => CatalogOp::Delete { path },
                            6 => CatalogOp::Rename {
                                from: path,
                                to: other,
                            },
                            7 => CatalogOp::Link {
                                from: path,
                                to: other,
                            },
                            _ => CatalogOp::SetMeta { path, meta: meta() },
                        }
                    })
                    .collect();
                match c.commit(ops).await {
                    Ok(_) => applied += 1,
                    Err(_) => refused += 1,
                }
                assert_eq!(c.totals().await.unwrap(), recount(&p));
            }
        }
        assert!(
            applied > 50 && refused > 50,
            "{applied} applied, {refused} refused"
        );
        let c = SqliteCatalog::open(&p).unwrap();
        let t = c.totals().await.unwrap();
        assert_eq!(t, recount(&p));
        assert!(t.0 > 0 || applied > 0);
    }

    /// A catalog made before the running totals gets them at open, counted once; they are
    /// then kept.
    #[tokio::test]
    async fn a_catalog_without_totals_counts_them_once_at_open() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.db");
        {
            let c = SqliteCatalog::open(&p).unwrap();
            c.commit(vec![
                CatalogOp::Put(file("a/x", "h", 7)),
                CatalogOp::Put(file("a/y", "h", 5)),
                CatalogOp::Put(Entry::dir("z".into(), meta())),
            ])
            .await
            .unwrap();
        }
        let conn = Connection::open(&p).unwrap();
        conn.execute_batch(
            "DROP TRIGGER totals_replace; DROP TRIGGER totals_insert;
             DROP TRIGGER totals_delete; DROP TRIGGER totals_update; DROP TABLE totals;",
        )
        .unwrap();
        drop(conn);
        let c = SqliteCatalog::open(&p).unwrap();
        assert_eq!(c.totals().await.unwrap(), (2, 12));
        c.commit(vec![
            CatalogOp::Put(file("a/x", "h", 100)),
            CatalogOp::Delete { path: "a/y".into() },
        ])
        .await
        .unwrap();
        assert_eq!(c.totals().await.unwrap(), (1, 100));
        drop(c);
        // Reopening does not count again (the kept totals stand) nor lose them.
        assert_eq!(
            SqliteCatalog::open(&p).unwrap().totals().await.unwrap(),
            (1, 100)
        );
    }

    /// The queries a server runs per request (bucket info, listing pages, copies of empty
    /// files, a first hard link) each read an index range or one row, never the whole table:
    /// their cost must not grow with the bucket.
    #[tokio::test]
    async fn per_request_queries_read_a_range_never_the_whole_table() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.db");
        let c = SqliteCatalog::open(&p).unwrap();
        let ops = (0..200)
            .map(|i| CatalogOp::Put(file(&format!("d{}/f{i}", i % 10), "h", 1)))
            .collect();
        c.commit(ops).await.unwrap();
        drop(c);
        let conn = Connection::open(&p).unwrap();
        conn.execute_batch("ANALYZE").unwrap();
        let plan = |sql: &str| -> Vec<String> {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            // Unbound: the plan must not depend on the values.
            let nulls = vec![rusqlite::types::Null; st.parameter_count()];
            st.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        for sql in [TOTALS_SQL, EMPTY_FILE_SQL, NEXT_LINK_SQL] {
            let p = plan(sql);
            assert!(
                p.iter().all(|d| !d.starts_with("SCAN entries")
                    || d.contains("USING INDEX entries_empty_files")),
                "{sql}: {p:?}"
            );
            assert!(!p.iter().any(|d| d == "SEARCH entries"), "{sql}: {p:?}");
        }
        for filter in ["", " AND kind = 0"] {
            let p = plan(&range_sql(false, filter));
            assert!(
                p.iter().any(|d| d.contains("(path>? AND path<?)")),
                "a subtree page must be one range of paths: {p:?}"
            );
            let p = plan(&range_sql(true, filter));
            assert!(
                p.iter().any(|d| d.contains("(path>?)")),
                "a whole-tree page must start at its cursor: {p:?}"
            );
        }
    }

    /// File pages of a prefix: the file the prefix names, then the files below it, never a
    /// path beside it, each once across pages.
    #[tokio::test]
    async fn file_pages_list_the_prefix_file_and_the_files_below_it() {
        let d = tempfile::tempdir().unwrap();
        let c = SqliteCatalog::open(&d.path().join("c.db")).unwrap();
        let paths = ["a/x", "a/b/c", "a.txt", "a-b/y", "a/b/d", "b/z", "z"];
        c.commit(
            paths
                .iter()
                .map(|p| CatalogOp::Put(file(p, "h", 1)))
                .collect(),
        )
        .await
        .unwrap();
        let all = |prefix: &'static str, size: usize| {
            let c = &c;
            async move {
                let (mut out, mut after) = (Vec::new(), String::new());
                loop {
                    let page = c.files_page(prefix, &after, size).await.unwrap();
                    let Some(last) = page.last() else { break };
                    after = last.path.clone();
                    out.extend(page.into_iter().map(|e| e.path));
                }
                out
            }
        };
        for size in [1, 2, 100] {
            assert_eq!(all("a", size).await, ["a/b/c", "a/b/d", "a/x"], "{size}");
            assert_eq!(all("a.txt", size).await, ["a.txt"], "{size}");
            assert_eq!(all("z", size).await, ["z"], "{size}");
            assert_eq!(all("", size).await.len(), paths.len(), "{size}");
        }
        // Directories are not files.
        assert!(c.files_page("a/b", "a/b/d", 10).await.unwrap().is_empty());
    }
}
