//! Where repos are kept: the rows of a repo store, behind one trait with two implementations,
//! SQLite in the serve directory (`sqlite.rs`) and PostgreSQL shared by replicas
//! (`pg/repos.rs`). Everything a store holds is immutable and named by its content (commits,
//! trees, blobs) except the repo row and its refs; the only compare-and-swap is a branch's
//! move ([`RepoStore::advance`]), so the logic above (`Repos`) reads without transactions.

use async_trait::async_trait;

use super::{Commit, Ref, RefKind, RepoInfo};
use crate::remote::RemoteResult;

/// What one commit adds to a repo's store.
#[derive(Clone, Debug)]
pub struct Written {
    /// Regular files' contents (each named by its git blob id).
    pub blobs: Vec<Vec<u8>>,
    /// New trees: id and encoding.
    pub trees: Vec<(String, Vec<u8>)>,
    pub commit: Commit,
    /// The xet file hashes the commit names (what `references` answers from).
    pub bodies: Vec<String>,
}

/// All of one repo, to copy it between stores.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepoDump {
    pub key: String,
    pub private: bool,
    pub created_ms: i64,
    pub refs: Vec<(RefKind, Ref)>,
    pub commits: Vec<Commit>,
    pub trees: Vec<(String, Vec<u8>)>,
    /// Git blob id and content.
    pub blobs: Vec<(String, Vec<u8>)>,
    pub bodies: Vec<String>,
}

#[async_trait]
pub trait RepoStore: Send + Sync {
    /// How many repos there are.
    async fn count(&self) -> RemoteResult<u64>;

    /// Every repo's key, sorted.
    async fn keys(&self) -> RemoteResult<Vec<String>>;

    async fn info(&self, key: &str) -> RemoteResult<Option<RepoInfo>>;

    /// Make repo `info.key` with `first` as the head of branch `main`, in one transaction;
    /// `false`, with nothing written, if the repo exists.
    async fn create(&self, info: &RepoInfo, first: &Written) -> RemoteResult<bool>;

    /// Delete repo `key` and everything it holds; `false` if it did not exist.
    async fn delete(&self, key: &str) -> RemoteResult<bool>;

    /// The commit branch or tag `name` points at.
    async fn target(&self, key: &str, kind: RefKind, name: &str) -> RemoteResult<Option<String>>;

    /// Branches or tags, sorted by name.
    async fn refs(&self, key: &str, kind: RefKind) -> RemoteResult<Vec<Ref>>;

    /// Make branch or tag `name` point at `commit`; `false` if it exists already.
    async fn create_ref(
        &self,
        key: &str,
        kind: RefKind,
        name: &str,
        commit: &str,
    ) -> RemoteResult<bool>;

    /// Delete branch or tag `name`; `false` if it did not exist.
    async fn delete_ref(&self, key: &str, kind: RefKind, name: &str) -> RemoteResult<bool>;

    /// Up to `limit` ids of commits that start with `prefix` (lowercase hex).
    async fn commits_by_prefix(
        &self,
        key: &str,
        prefix: &str,
        limit: usize,
    ) -> RemoteResult<Vec<String>>;

    async fn commit(&self, key: &str, oid: &str) -> RemoteResult<Option<Commit>>;

    /// Up to `limit` commits from `from` back along first parents, skipping `skip`: one
    /// query.
    async fn history(
        &self,
        key: &str,
        from: &str,
        skip: usize,
        limit: usize,
    ) -> RemoteResult<Vec<Commit>>;

    /// The encodings of trees `oids`, in order (`None`: not stored).
    async fn trees(&self, key: &str, oids: &[String]) -> RemoteResult<Vec<Option<Vec<u8>>>>;

    /// The content of regular file `oid`.
    async fn blob(&self, key: &str, oid: &str) -> RemoteResult<Option<Vec<u8>>>;

    /// Whether some commit of repo `key` names xet file `hash`.
    async fn references(&self, key: &str, hash: &str) -> RemoteResult<bool>;

    /// The xet files uploaded with content hash `sha256` (usually one).
    async fn files_with_sha256(&self, sha256: &str) -> RemoteResult<Vec<String>>;

    /// Record (sha256, xet hash) pairs: the uploader's word, kept in a shard's metadata.
    async fn note_sha256(&self, pairs: &[(String, String)]) -> RemoteResult<()>;

    /// Every recorded (sha256, xet hash) pair.
    async fn sha256_pairs(&self) -> RemoteResult<Vec<(String, String)>>;

    /// Store `w` and move branch `branch` from `head` to `w.commit`, all or nothing; `false`,
    /// with nothing stored, if the branch does not point at `head` any more.
    async fn advance(&self, key: &str, branch: &str, head: &str, w: &Written)
        -> RemoteResult<bool>;

    /// All of repo `key`.
    async fn export(&self, key: &str) -> RemoteResult<Option<RepoDump>>;

    /// Store all of a repo, in one transaction; `false`, with nothing written, if it exists.
    async fn import(&self, dump: &RepoDump) -> RemoteResult<bool>;
}
