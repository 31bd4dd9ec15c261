//! The model, dataset and space repos a server hosts, in one SQLite database (`repos.db`):
//! the repos, their commits (immutable), branches and tags (a branch moves by
//! compare-and-swap on its head), their trees (see `tree.rs`), the content of their regular
//! files, and, for files stored with xet, the sha256 → xet hash index commits are resolved
//! through (a commit names an LFS file by sha256 only).
//!
//! A repo is named by its key, `models/ns/name` (`datasets/…`, `spaces/…`): that is what
//! token patterns, CAS tokens and the server's hash records name, so bucket `ns/name` and
//! model `ns/name` are different things.

pub mod tree;

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::remote::{RemoteError, RemoteResult};
use tree::{Change, FileNode, Node, Tree, TreeError, Trees};

/// The kinds of repos.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Model,
    Dataset,
    Space,
}

impl Kind {
    /// As in API paths: `models`, `datasets`, `spaces`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Model => "models",
            Kind::Dataset => "datasets",
            Kind::Space => "spaces",
        }
    }

    /// As in web paths (`resolve`, `commitUrl`): nothing for models.
    pub fn url_prefix(self) -> &'static str {
        match self {
            Kind::Model => "",
            Kind::Dataset => "datasets/",
            Kind::Space => "spaces/",
        }
    }

    pub fn from_plural(s: &str) -> Option<Self> {
        Some(match s {
            "models" => Kind::Model,
            "datasets" => Kind::Dataset,
            "spaces" => Kind::Space,
            _ => return None,
        })
    }

    /// As `create_repo` sends it (`type`; absent means a model).
    pub fn from_type(s: Option<&str>) -> Option<Self> {
        Some(match s {
            None | Some("model") => Kind::Model,
            Some("dataset") => Kind::Dataset,
            Some("space") => Kind::Space,
            _ => return None,
        })
    }
}

/// A repo's key: `models/ns/name`.
pub fn key(kind: Kind, id: &str) -> String {
    format!("{}/{id}", kind.plural())
}

/// Whether `key` names a repo (a bucket's key has two parts).
pub fn is_repo_key(key: &str) -> bool {
    key.split('/').count() == 3
}

#[derive(Clone, Debug)]
pub struct RepoInfo {
    pub key: String,
    pub kind: Kind,
    /// `ns/name`.
    pub id: String,
    pub private: bool,
    pub created_ms: i64,
}

#[derive(Clone, Debug)]
pub struct Commit {
    pub oid: String,
    pub parent: Option<String>,
    pub tree: String,
    pub title: String,
    pub message: String,
    pub author: String,
    pub date_ms: i64,
}

/// A branch or a tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    pub name: String,
    pub commit: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    Branch,
    Tag,
}

impl RefKind {
    fn as_str(self) -> &'static str {
        match self {
            RefKind::Branch => "branch",
            RefKind::Tag => "tag",
        }
    }
}

/// Why a commit was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("branch {0} does not exist")]
    NoBranch(String),
    #[error("the branch has moved: its head is {head}, not the parent commit {parent}")]
    Moved { head: String, parent: String },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Store(#[from] RemoteError),
}

/// The default branch every repo starts with.
pub const MAIN: &str = "main";

/// What a new repo's first commit holds, as on the Hub: the LFS patterns of large files.
pub const GITATTRIBUTES: &str = "*.bin filter=lfs diff=lfs merge=lfs -text\n\
*.safetensors filter=lfs diff=lfs merge=lfs -text\n\
*.parquet filter=lfs diff=lfs merge=lfs -text\n\
*.pt filter=lfs diff=lfs merge=lfs -text\n\
*.gguf filter=lfs diff=lfs merge=lfs -text\n\
*.zip filter=lfs diff=lfs merge=lfs -text\n";

pub struct Repos {
    db: Mutex<Connection>,
}

fn db_err(e: rusqlite::Error) -> RemoteError {
    RemoteError::Other(format!("repo registry: {e}"))
}

/// Trees of one repo, read and written inside a transaction.
struct TxTrees<'a, 'b> {
    tx: &'a Transaction<'b>,
    repo: &'a str,
}

impl Trees for TxTrees<'_, '_> {
    fn get(&self, oid: &str) -> Result<Tree, TreeError> {
        get_tree(self.tx, self.repo, oid)
    }
    fn put(&mut self, t: &Tree) -> Result<String, TreeError> {
        let (body, oid) = tree::encode(t);
        self.tx
            .prepare_cached("INSERT OR IGNORE INTO trees (repo, oid, body) VALUES (?1, ?2, ?3)")
            .and_then(|mut st| st.execute(params![self.repo, oid, body]))
            .map_err(|e| TreeError::Store(e.to_string()))?;
        Ok(oid)
    }
}

fn get_tree(c: &Connection, repo: &str, oid: &str) -> Result<Tree, TreeError> {
    let body: Vec<u8> = c
        .prepare_cached("SELECT body FROM trees WHERE repo = ?1 AND oid = ?2")
        .and_then(|mut st| st.query_row(params![repo, oid], |r| r.get(0)))
        .map_err(|e| TreeError::Store(format!("tree {oid}: {e}")))?;
    tree::decode(&body)
}

/// Trees of one repo, read outside any transaction.
pub struct ReadTrees<'a> {
    c: &'a Connection,
    repo: &'a str,
}

impl Trees for ReadTrees<'_> {
    fn get(&self, oid: &str) -> Result<Tree, TreeError> {
        get_tree(self.c, self.repo, oid)
    }
    fn put(&mut self, _: &Tree) -> Result<String, TreeError> {
        Err(TreeError::Store("trees are read-only here".into()))
    }
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

fn info_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RepoInfo> {
    let key: String = r.get(0)?;
    let (kind, id) = key.split_once('/').unwrap_or(("models", ""));
    Ok(RepoInfo {
        kind: Kind::from_plural(kind).unwrap_or(Kind::Model),
        id: id.to_string(),
        key: key.clone(),
        private: r.get(1)?,
        created_ms: r.get(2)?,
    })
}

impl Repos {
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
        Ok(Repos { db: Mutex::new(db) })
    }

    /// How many repos there are.
    pub fn count(&self) -> RemoteResult<u64> {
        self.db
            .lock()
            .query_row("SELECT count(*) FROM repos", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(db_err)
    }

    pub fn info(&self, key: &str) -> RemoteResult<Option<RepoInfo>> {
        self.db
            .lock()
            .query_row(
                "SELECT key, private, created_ms FROM repos WHERE key = ?1",
                [key],
                info_row,
            )
            .optional()
            .map_err(db_err)
    }

    /// Create repo `key` with its first commit on `main` (`.gitattributes`, as the Hub
    /// does); `false` if it exists.
    pub fn create(&self, key: &str, private: bool, author: &str) -> RemoteResult<bool> {
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(db_err)?;
        let now = crate::server::buckets::now_ms();
        let n = tx
            .execute(
                "INSERT OR IGNORE INTO repos (key, private, created_ms) VALUES (?1, ?2, ?3)",
                params![key, private, now],
            )
            .map_err(db_err)?;
        if n == 0 {
            return Ok(false);
        }
        let attrs = GITATTRIBUTES.as_bytes();
        put_blob(&tx, key, attrs)?;
        let ops = [(
            ".gitattributes".to_string(),
            Change::Put(FileNode::regular(attrs)),
        )];
        let root = tree::apply(&mut TxTrees { tx: &tx, repo: key }, None, &ops)
            .map_err(|e| RemoteError::Other(e.to_string()))?;
        let c = new_commit(None, root, "initial commit", "", author, now);
        insert_commit(&tx, key, &c)?;
        set_ref(&tx, key, RefKind::Branch, MAIN, &c.oid)?;
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Delete repo `key` and everything it holds; `false` if it did not exist.
    pub fn delete(&self, key: &str) -> RemoteResult<bool> {
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(db_err)?;
        let n = tx
            .execute("DELETE FROM repos WHERE key = ?1", [key])
            .map_err(db_err)?;
        for table in ["refs", "commits", "trees", "blobs", "bodies"] {
            tx.execute(&format!("DELETE FROM {table} WHERE repo = ?1"), [key])
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(n > 0)
    }

    /// The commit `rev` names in repo `key`: a branch, a tag (either also as
    /// `refs/heads/…`, `refs/tags/…`), a full commit id or an unambiguous prefix of one
    /// (at least 7 hex digits).
    pub fn resolve(&self, key: &str, rev: &str) -> RemoteResult<Option<Commit>> {
        let db = self.db.lock();
        let by_ref = |kind: RefKind, name: &str| -> RemoteResult<Option<String>> {
            db.prepare_cached(
                "SELECT commit_oid FROM refs WHERE repo = ?1 AND kind = ?2 AND name = ?3",
            )
            .and_then(|mut st| {
                st.query_row(params![key, kind.as_str(), name], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err)
        };
        let mut oid = by_ref(
            RefKind::Branch,
            rev.strip_prefix("refs/heads/").unwrap_or(rev),
        )?;
        if oid.is_none() {
            oid = by_ref(RefKind::Tag, rev.strip_prefix("refs/tags/").unwrap_or(rev))?;
        }
        if oid.is_none()
            && rev.len() >= 7
            && rev.len() <= 40
            && rev.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let lower = rev.to_ascii_lowercase();
            let mut st = db
                .prepare_cached(
                    "SELECT oid FROM commits WHERE repo = ?1 AND oid >= ?2 AND oid < ?3 LIMIT 2",
                )
                .map_err(db_err)?;
            let end = format!("{lower}g");
            let found: Vec<String> = st
                .query_map(params![key, lower, end], |r| r.get(0))
                .and_then(Iterator::collect)
                .map_err(db_err)?;
            if found.len() == 1 {
                oid = found.into_iter().next();
            }
        }
        let Some(oid) = oid else { return Ok(None) };
        get_commit(&db, key, &oid)
    }

    pub fn commit_of(&self, key: &str, oid: &str) -> RemoteResult<Option<Commit>> {
        get_commit(&self.db.lock(), key, oid)
    }

    /// Run `f` over repo `key`'s trees.
    pub fn with_trees<T>(&self, key: &str, f: impl FnOnce(&ReadTrees<'_>) -> T) -> T {
        let db = self.db.lock();
        f(&ReadTrees { c: &db, repo: key })
    }

    /// The content of regular file `oid` of repo `key`.
    pub fn blob(&self, key: &str, oid: &str) -> RemoteResult<Option<Vec<u8>>> {
        self.db
            .lock()
            .prepare_cached("SELECT data FROM blobs WHERE repo = ?1 AND oid = ?2")
            .and_then(|mut st| st.query_row(params![key, oid], |r| r.get(0)).optional())
            .map_err(db_err)
    }

    pub fn refs(&self, key: &str, kind: RefKind) -> RemoteResult<Vec<Ref>> {
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

    /// Make branch or tag `name` point at `commit`; `false` if it exists already.
    pub fn create_ref(
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

    /// Delete branch or tag `name`; `false` if it did not exist.
    pub fn delete_ref(&self, key: &str, kind: RefKind, name: &str) -> RemoteResult<bool> {
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

    /// Up to `limit` commits from `from` back along first parents, skipping `skip`.
    pub fn history(
        &self,
        key: &str,
        from: &str,
        skip: usize,
        limit: usize,
    ) -> RemoteResult<Vec<Commit>> {
        let db = self.db.lock();
        let mut out = Vec::new();
        let mut at = Some(from.to_string());
        let mut seen = 0;
        while let Some(oid) = at {
            let Some(c) = get_commit(&db, key, &oid)? else {
                break;
            };
            at = c.parent.clone();
            seen += 1;
            if seen > skip {
                out.push(c);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The xet files uploaded with content hash `sha256` (usually one).
    pub fn files_with_sha256(&self, sha256: &str) -> RemoteResult<Vec<String>> {
        let db = self.db.lock();
        let mut st = db
            .prepare_cached("SELECT hash FROM sha256_files WHERE sha256 = ?1")
            .map_err(db_err)?;
        st.query_map([sha256], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(db_err)
    }

    /// Record that uploaded file `hash` has content hash `sha256` (the uploader's word, kept
    /// in the shard's metadata).
    pub fn note_sha256<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> RemoteResult<()> {
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(db_err)?;
        for (sha, hash) in pairs {
            tx.prepare_cached("INSERT OR IGNORE INTO sha256_files (sha256, hash) VALUES (?1, ?2)")
                .and_then(|mut st| st.execute(params![sha, hash]))
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Whether some commit of repo `key` names body `hash`.
    pub fn references(&self, key: &str, hash: &str) -> RemoteResult<bool> {
        self.db
            .lock()
            .prepare_cached("SELECT 1 FROM bodies WHERE repo = ?1 AND hash = ?2")
            .and_then(|mut st| st.exists(params![key, hash]))
            .map_err(db_err)
    }

    /// Commit `ops` on branch `branch` of repo `key`: all or nothing. With `parent`, the
    /// branch must still point at it. `blobs` are the regular files' contents.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &self,
        key: &str,
        branch: &str,
        parent: Option<&str>,
        ops: &[(String, Change)],
        blobs: &[Vec<u8>],
        title: &str,
        message: &str,
        author: &str,
    ) -> Result<Commit, CommitError> {
        let mut db = self.db.lock();
        let tx = db.transaction().map_err(db_err)?;
        let head: String = tx
            .query_row(
                "SELECT commit_oid FROM refs WHERE repo = ?1 AND kind = 'branch' AND name = ?2",
                params![key, branch],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?
            .ok_or_else(|| CommitError::NoBranch(branch.to_string()))?;
        if let Some(p) = parent {
            let p = p.to_ascii_lowercase();
            if !head.starts_with(&p) {
                return Err(CommitError::Moved { head, parent: p });
            }
        }
        let base = get_commit(&tx, key, &head)?
            .ok_or_else(|| RemoteError::Other(format!("commit {head} is missing")))?;
        for b in blobs {
            put_blob(&tx, key, b)?;
        }
        let root = tree::apply(&mut TxTrees { tx: &tx, repo: key }, Some(&base.tree), ops)?;
        let c = new_commit(
            Some(head.clone()),
            root,
            title,
            message,
            author,
            crate::server::buckets::now_ms(),
        );
        insert_commit(&tx, key, &c)?;
        for (_, ch) in ops {
            if let Change::Put(FileNode { lfs: Some(l), .. }) = ch {
                tx.prepare_cached("INSERT OR IGNORE INTO bodies (repo, hash) VALUES (?1, ?2)")
                    .and_then(|mut st| st.execute(params![key, l.xet]))
                    .map_err(db_err)?;
            }
        }
        let moved = tx
            .execute(
                "UPDATE refs SET commit_oid = ?4 WHERE repo = ?1 AND kind = 'branch' AND name = ?2 \
                 AND commit_oid = ?3",
                params![key, branch, head, c.oid],
            )
            .map_err(db_err)?;
        if moved != 1 {
            return Err(CommitError::Moved {
                head,
                parent: parent.unwrap_or_default().to_string(),
            });
        }
        tx.commit().map_err(db_err)?;
        Ok(c)
    }
}

fn get_commit(c: &Connection, key: &str, oid: &str) -> RemoteResult<Option<Commit>> {
    c.prepare_cached(&format!(
        "SELECT {COMMIT_COLS} FROM commits WHERE repo = ?1 AND oid = ?2"
    ))
    .and_then(|mut st| st.query_row(params![key, oid], commit_row).optional())
    .map_err(db_err)
}

fn put_blob(tx: &Transaction<'_>, key: &str, data: &[u8]) -> RemoteResult<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO blobs (repo, oid, data) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(params![key, tree::blob_oid(data), data]))
        .map_err(db_err)?;
    Ok(())
}

fn set_ref(
    tx: &Transaction<'_>,
    key: &str,
    kind: RefKind,
    name: &str,
    oid: &str,
) -> RemoteResult<()> {
    tx.execute(
        "INSERT OR REPLACE INTO refs (repo, kind, name, commit_oid) VALUES (?1, ?2, ?3, ?4)",
        params![key, kind.as_str(), name, oid],
    )
    .map_err(db_err)?;
    Ok(())
}

fn insert_commit(tx: &Transaction<'_>, key: &str, c: &Commit) -> RemoteResult<()> {
    tx.execute(
        &format!(
            "INSERT INTO commits (repo, {COMMIT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![key, c.oid, c.parent, c.tree, c.title, c.message, c.author, c.date_ms],
    )
    .map_err(db_err)?;
    Ok(())
}

fn new_commit(
    parent: Option<String>,
    tree: String,
    title: &str,
    message: &str,
    author: &str,
    date_ms: i64,
) -> Commit {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(format!(
        "tree {tree}\nparent {}\nauthor {author} {date_ms}\nnonce {}\n\n{title}\n\n{message}",
        parent.as_deref().unwrap_or(""),
        uuid::Uuid::now_v7()
    ));
    Commit {
        oid: tree::hex(&h.finalize()),
        parent,
        tree,
        title: title.to_string(),
        message: message.to_string(),
        author: author.to_string(),
        date_ms,
    }
}

/// The entry at `path` of commit `c` of repo `key`.
pub fn entry_at(
    repos: &Repos,
    key: &str,
    c: &Commit,
    path: &str,
) -> Result<Option<Node>, TreeError> {
    repos.with_trees(key, |t| tree::lookup(t, &c.tree, path))
}
