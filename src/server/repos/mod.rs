//! The model, dataset and space repos a server hosts: the repos, their commits (immutable),
//! branches and tags (a branch moves by compare-and-swap on its head), their trees (see
//! `tree.rs`), the content of their regular files, and, for files stored with xet, the
//! sha256 → xet hash index commits are resolved through (a commit names an LFS file by
//! sha256 only). The rows live in a [`RepoStore`] (SQLite in a serve directory, or
//! PostgreSQL shared by replicas); the logic over them is [`Repos`], the same for both.
//!
//! A repo is named by its key, `models/ns/name` (`datasets/…`, `spaces/…`): that is what
//! token patterns, CAS tokens and the server's hash records name, so bucket `ns/name` and
//! model `ns/name` are different things.

pub mod sqlite;
pub mod store;
pub mod tree;

use std::sync::Arc;

use parking_lot::Mutex;

use crate::remote::{RemoteError, RemoteResult};
pub use store::{RepoDump, RepoStore, Written};
use tree::{Change, FileNode, Node, Tree, TreeError, TreeSource};

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoInfo {
    pub key: String,
    pub kind: Kind,
    /// `ns/name`.
    pub id: String,
    pub private: bool,
    pub created_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Branch => "branch",
            RefKind::Tag => "tag",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "branch" => Some(RefKind::Branch),
            "tag" => Some(RefKind::Tag),
            _ => None,
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

/// The repos a server hosts, over a [`RepoStore`]: the logic both stores share (revisions,
/// commits with their trees, reading trees through a cache).
pub struct Repos {
    store: Box<dyn RepoStore>,
    /// Decoded trees by id. A tree's id is the hash of its content, so an entry is never
    /// stale; only ids reached from a repo's own commits are looked up.
    cache: Mutex<TreeCache>,
}

/// Bytes of decoded trees kept (counted by their encodings).
const TREE_CACHE_BYTES: usize = 16 << 20;

/// How often a commit without a parent check is redone when another commit moved the branch
/// while it was being built.
const COMMIT_RETRIES: usize = 64;

struct TreeCache {
    trees: hashlink::LruCache<String, (Arc<Tree>, usize)>,
    bytes: usize,
}

impl TreeCache {
    fn get(&mut self, oid: &str) -> Option<Arc<Tree>> {
        self.trees.get(oid).map(|(t, _)| t.clone())
    }

    fn put(&mut self, oid: String, t: Arc<Tree>, size: usize) {
        if size > TREE_CACHE_BYTES / 4 {
            return;
        }
        if let Some((_, old)) = self.trees.insert(oid, (t, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > TREE_CACHE_BYTES {
            match self.trees.remove_lru() {
                Some((_, (_, n))) => self.bytes -= n,
                None => break,
            }
        }
    }
}

/// Repo `key`'s trees, read through the cache.
pub struct RepoTrees<'a> {
    repos: &'a Repos,
    key: &'a str,
}

#[async_trait::async_trait]
impl TreeSource for RepoTrees<'_> {
    async fn get(&self, oid: &str) -> Result<Tree, TreeError> {
        let mut all = self.get_many(&[oid.to_string()]).await?;
        Ok(all.pop().unwrap_or_default())
    }

    async fn get_many(&self, oids: &[String]) -> Result<Vec<Tree>, TreeError> {
        let mut found: Vec<Option<Arc<Tree>>> = {
            let mut c = self.repos.cache.lock();
            oids.iter().map(|o| c.get(o)).collect()
        };
        let missing: Vec<String> = oids
            .iter()
            .zip(&found)
            .filter(|(_, t)| t.is_none())
            .map(|(o, _)| o.clone())
            .collect();
        if !missing.is_empty() {
            let bodies = self
                .repos
                .store
                .trees(self.key, &missing)
                .await
                .map_err(|e| TreeError::Store(e.to_string()))?;
            let mut fetched = std::collections::HashMap::new();
            for (oid, body) in missing.into_iter().zip(bodies) {
                let body =
                    body.ok_or_else(|| TreeError::Store(format!("tree {oid} is missing")))?;
                let t = Arc::new(tree::decode(&body)?);
                self.repos
                    .cache
                    .lock()
                    .put(oid.clone(), t.clone(), body.len());
                fetched.insert(oid, t);
            }
            for (o, slot) in oids.iter().zip(found.iter_mut()) {
                if slot.is_none() {
                    *slot = fetched.get(o).cloned();
                }
            }
        }
        Ok(found
            .into_iter()
            .map(|t| t.map(|t| (*t).clone()).unwrap_or_default())
            .collect())
    }
}

impl Repos {
    pub fn new(store: Box<dyn RepoStore>) -> Self {
        Repos {
            store,
            cache: Mutex::new(TreeCache {
                trees: hashlink::LruCache::new_unbounded(),
                bytes: 0,
            }),
        }
    }

    /// The store, for what needs no logic above it.
    pub fn store(&self) -> &dyn RepoStore {
        &*self.store
    }

    /// Repo `key`'s trees.
    pub fn trees<'a>(&'a self, key: &'a str) -> RepoTrees<'a> {
        RepoTrees { repos: self, key }
    }

    pub async fn info(&self, key: &str) -> RemoteResult<Option<RepoInfo>> {
        self.store.info(key).await
    }

    /// Create repo `key` with its first commit on `main` (`.gitattributes`, as the Hub
    /// does); `false` if it exists.
    pub async fn create(&self, key: &str, private: bool, author: &str) -> RemoteResult<bool> {
        let now = crate::server::buckets::now_ms();
        let attrs = GITATTRIBUTES.as_bytes().to_vec();
        let ops = [(
            ".gitattributes".to_string(),
            Change::Put(FileNode::regular(&attrs)),
        )];
        let mut staged = tree::Staged::default();
        let root = tree::apply(&mut staged, None, &ops).map_err(tree_err)?;
        let commit = new_commit(None, root, "initial commit", "", author, now);
        let info = info_of(key, private, now);
        let first = Written {
            blobs: vec![attrs],
            trees: staged.written,
            commit,
            bodies: Vec::new(),
        };
        self.store.create(&info, &first).await
    }

    /// Delete repo `key` and everything it holds; `false` if it did not exist.
    pub async fn delete(&self, key: &str) -> RemoteResult<bool> {
        self.store.delete(key).await
    }

    /// The commit `rev` names in repo `key`: a branch, a tag (either also as
    /// `refs/heads/…`, `refs/tags/…`), a full commit id or an unambiguous prefix of one
    /// (at least 7 hex digits).
    pub async fn resolve(&self, key: &str, rev: &str) -> RemoteResult<Option<Commit>> {
        let branch = rev.strip_prefix("refs/heads/").unwrap_or(rev);
        let mut oid = self.store.target(key, RefKind::Branch, branch).await?;
        if oid.is_none() {
            let tag = rev.strip_prefix("refs/tags/").unwrap_or(rev);
            oid = self.store.target(key, RefKind::Tag, tag).await?;
        }
        if oid.is_none()
            && rev.len() >= 7
            && rev.len() <= 40
            && rev.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let found = self
                .store
                .commits_by_prefix(key, &rev.to_ascii_lowercase(), 2)
                .await?;
            if found.len() == 1 {
                oid = found.into_iter().next();
            }
        }
        let Some(oid) = oid else { return Ok(None) };
        self.store.commit(key, &oid).await
    }

    pub async fn commit_of(&self, key: &str, oid: &str) -> RemoteResult<Option<Commit>> {
        self.store.commit(key, oid).await
    }

    /// The entry at `path` of commit `c` of repo `key`.
    pub async fn entry_at(
        &self,
        key: &str,
        c: &Commit,
        path: &str,
    ) -> Result<Option<Node>, TreeError> {
        tree::lookup(&self.trees(key), &c.tree, path).await
    }

    /// Up to `limit` entries under folder `oid` of repo `key` (see [`tree::list`]).
    pub async fn list(
        &self,
        key: &str,
        oid: &str,
        prefix: &str,
        recursive: bool,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<(String, Node)>, bool), TreeError> {
        tree::list(&self.trees(key), oid, prefix, recursive, after, limit).await
    }

    /// The content of regular file `oid` of repo `key`.
    pub async fn blob(&self, key: &str, oid: &str) -> RemoteResult<Option<Vec<u8>>> {
        self.store.blob(key, oid).await
    }

    pub async fn refs(&self, key: &str, kind: RefKind) -> RemoteResult<Vec<Ref>> {
        self.store.refs(key, kind).await
    }

    /// Make branch or tag `name` point at `commit`; `false` if it exists already.
    pub async fn create_ref(
        &self,
        key: &str,
        kind: RefKind,
        name: &str,
        commit: &str,
    ) -> RemoteResult<bool> {
        self.store.create_ref(key, kind, name, commit).await
    }

    /// Delete branch or tag `name`; `false` if it did not exist.
    pub async fn delete_ref(&self, key: &str, kind: RefKind, name: &str) -> RemoteResult<bool> {
        self.store.delete_ref(key, kind, name).await
    }

    /// Up to `limit` commits from `from` back along first parents, skipping `skip`.
    pub async fn history(
        &self,
        key: &str,
        from: &str,
        skip: usize,
        limit: usize,
    ) -> RemoteResult<Vec<Commit>> {
        self.store.history(key, from, skip, limit).await
    }

    /// The xet files uploaded with content hash `sha256` (usually one).
    pub async fn files_with_sha256(&self, sha256: &str) -> RemoteResult<Vec<String>> {
        self.store.files_with_sha256(sha256).await
    }

    /// Record that uploaded files have these content hashes: (sha256, xet hash) pairs.
    pub async fn note_sha256(&self, pairs: &[(String, String)]) -> RemoteResult<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        self.store.note_sha256(pairs).await
    }

    /// Whether some commit of repo `key` names body `hash`.
    pub async fn references(&self, key: &str, hash: &str) -> RemoteResult<bool> {
        self.store.references(key, hash).await
    }

    /// Commit `ops` on branch `branch` of repo `key`: all or nothing. With `parent`, the
    /// branch must still point at it; without, the commit goes on whatever the branch's head
    /// is when it lands (built again if another commit landed first). `blobs` are the
    /// regular files' contents.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit(
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
        let parent = parent.map(str::to_ascii_lowercase);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let head = self
                .store
                .target(key, RefKind::Branch, branch)
                .await?
                .ok_or_else(|| CommitError::NoBranch(branch.to_string()))?;
            if let Some(p) = &parent {
                if !head.starts_with(p.as_str()) {
                    return Err(CommitError::Moved {
                        head,
                        parent: p.clone(),
                    });
                }
            }
            let base = self
                .store
                .commit(key, &head)
                .await?
                .ok_or_else(|| RemoteError::Other(format!("commit {head} is missing")))?;
            let mut staged = tree::prefetch(&self.trees(key), &base.tree, ops).await?;
            let root = tree::apply(&mut staged, Some(&base.tree), ops)?;
            let c = new_commit(
                Some(head.clone()),
                root,
                title,
                message,
                author,
                crate::server::buckets::now_ms(),
            );
            let bodies = ops
                .iter()
                .filter_map(|(_, ch)| match ch {
                    Change::Put(FileNode { lfs: Some(l), .. }) => Some(l.xet.clone()),
                    _ => None,
                })
                .collect();
            let w = Written {
                blobs: blobs.to_vec(),
                trees: staged.written,
                commit: c,
                bodies,
            };
            if self.store.advance(key, branch, &head, &w).await? {
                return Ok(w.commit);
            }
            if parent.is_some() || attempts >= COMMIT_RETRIES {
                let now = self
                    .store
                    .target(key, RefKind::Branch, branch)
                    .await?
                    .unwrap_or_default();
                return Err(CommitError::Moved {
                    head: now,
                    parent: parent.unwrap_or(head),
                });
            }
        }
    }
}

fn tree_err(e: TreeError) -> RemoteError {
    RemoteError::Other(e.to_string())
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

/// `RepoInfo` of key `key` (`models/ns/name`).
pub fn info_of(key: &str, private: bool, created_ms: i64) -> RepoInfo {
    let (kind, id) = key.split_once('/').unwrap_or(("models", ""));
    RepoInfo {
        kind: Kind::from_plural(kind).unwrap_or(Kind::Model),
        id: id.to_string(),
        key: key.to_string(),
        private,
        created_ms,
    }
}
