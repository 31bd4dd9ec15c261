//! A repo's files at a commit, as git keeps them: one tree object per folder, named by the
//! hash of what it holds, so a commit that changes one file writes only the trees on that
//! file's path and shares every other folder with its parent. Folders exist while they hold
//! a file (an emptied folder disappears), as in git.
//!
//! Object ids are what the Hub shows: a file's `oid` is the git blob id of its content (a
//! regular file) or of its LFS pointer (a file stored with xet); a folder's `oid` is its
//! tree's id here (the sha1 of the tree's own encoding, not git's).

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// A file stored with xet (LFS upload mode): its content's sha256 and xet hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lfs {
    pub sha256: String,
    pub xet: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNode {
    pub size: u64,
    /// Git blob id: of the content, or of the LFS pointer for an LFS file.
    pub oid: String,
    /// `None`: a regular file, whose content is the blob `oid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfs: Option<Lfs>,
}

impl FileNode {
    pub fn regular(content: &[u8]) -> Self {
        FileNode {
            size: content.len() as u64,
            oid: blob_oid(content),
            lfs: None,
        }
    }

    pub fn lfs(size: u64, sha256: String, xet: String) -> Self {
        FileNode {
            size,
            oid: blob_oid(lfs_pointer(&sha256, size).as_bytes()),
            lfs: Some(Lfs { sha256, xet }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    #[serde(rename = "f")]
    File(FileNode),
    /// A folder: its tree's id.
    #[serde(rename = "d")]
    Dir(String),
}

/// One folder's entries by name.
pub type Tree = BTreeMap<String, Node>;

fn sha1_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Git's blob id of `content`.
pub fn blob_oid(content: &[u8]) -> String {
    sha1_hex(&[format!("blob {}\0", content.len()).as_bytes(), content])
}

/// The Git-LFS pointer file of a `size`-byte file with content hash `sha256`.
pub fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

/// A tree's encoding (stored) and id.
pub fn encode(t: &Tree) -> (Vec<u8>, String) {
    let body = serde_json::to_vec(t).expect("a tree serialises");
    let oid = sha1_hex(&[b"tree\n", &body]);
    (body, oid)
}

pub fn decode(body: &[u8]) -> Result<Tree, TreeError> {
    serde_json::from_slice(body).map_err(|e| TreeError::Store(format!("a stored tree: {e}")))
}

/// Where [`apply`] reads and writes trees, by id, without waiting on anything.
pub trait Trees {
    fn get(&self, oid: &str) -> Result<Tree, TreeError>;
    /// Keep `t`; returns its id.
    fn put(&mut self, t: &Tree) -> Result<String, TreeError>;
}

/// Where trees are read from, by id: a repo store (see `Repos::trees`), or memory.
#[async_trait::async_trait]
pub trait TreeSource: Sync {
    async fn get(&self, oid: &str) -> Result<Tree, TreeError>;

    /// Trees `oids`, in order; a store answers them in one query.
    async fn get_many(&self, oids: &[String]) -> Result<Vec<Tree>, TreeError> {
        let mut out = Vec::with_capacity(oids.len());
        for o in oids {
            out.push(self.get(o).await?);
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl<T: Trees + Sync> TreeSource for T {
    async fn get(&self, oid: &str) -> Result<Tree, TreeError> {
        Trees::get(self, oid)
    }
}

/// The trees one commit reads, fetched ahead by [`prefetch`], and the trees it writes: [`apply`]
/// runs on this in memory, and `written` is then stored with the commit in one transaction.
#[derive(Default)]
pub struct Staged {
    read: HashMap<String, Tree>,
    pub written: Vec<(String, Vec<u8>)>,
}

impl Trees for Staged {
    fn get(&self, oid: &str) -> Result<Tree, TreeError> {
        self.read
            .get(oid)
            .cloned()
            .ok_or_else(|| TreeError::Store(format!("tree {oid} was not read ahead")))
    }

    fn put(&mut self, t: &Tree) -> Result<String, TreeError> {
        let (body, oid) = encode(t);
        if !self.read.contains_key(&oid) {
            self.read.insert(oid.clone(), t.clone());
            self.written.push((oid.clone(), body));
        }
        Ok(oid)
    }
}

/// Everything [`apply`] of `ops` to tree `root` reads: the folders on the operations' paths
/// (each path's proper prefixes), fetched one level at a time, one query per level.
pub async fn prefetch(
    src: &dyn TreeSource,
    root: &str,
    ops: &[(String, Change)],
) -> Result<Staged, TreeError> {
    let mut wanted = HashSet::new();
    for (p, _) in ops {
        let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        for i in 1..parts.len() {
            wanted.insert(parts[..i].join("/"));
        }
    }
    let mut staged = Staged::default();
    let mut level = vec![(String::new(), root.to_string())];
    while !level.is_empty() {
        let oids: Vec<String> = level.iter().map(|(_, o)| o.clone()).collect();
        let trees = src.get_many(&oids).await?;
        let mut next = Vec::new();
        for ((path, oid), t) in level.into_iter().zip(trees) {
            for (name, node) in &t {
                let sub = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}/{name}")
                };
                if let Node::Dir(o) = node {
                    if wanted.contains(&sub) && !staged.read.contains_key(o) {
                        next.push((sub, o.clone()));
                    }
                }
            }
            staged.read.insert(oid, t);
        }
        level = next;
    }
    Ok(staged)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// A deletion names nothing of its kind.
    #[error("{0} does not exist")]
    Missing(String),
    /// A file where a folder is needed or the other way round.
    #[error("{0} is a folder and a file at once")]
    Clash(String),
    #[error("{0}")]
    Store(String),
}

/// What one commit operation does to one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(FileNode),
    DeleteFile,
    DeleteFolder,
}

/// The tree `root` with `ops` applied in order (a later operation on a path wins); returns
/// the new root's id. Only the trees on the changed paths are read and written.
pub fn apply(
    store: &mut dyn Trees,
    root: Option<&str>,
    ops: &[(String, Change)],
) -> Result<String, TreeError> {
    let ops: Vec<RelOp<'_>> = ops
        .iter()
        .map(|(p, c)| {
            let parts = p.split('/').filter(|s| !s.is_empty()).collect();
            (parts, c, p.as_str())
        })
        .collect();
    let t = apply_dir(store, root, ops, true)?;
    store.put(&t.unwrap_or_default())
}

/// An operation relative to a folder: the path's remaining parts, the change, the full path
/// (for messages).
type RelOp<'a> = (Vec<&'a str>, &'a Change, &'a str);

/// The folder `oid` (or a new one) with `ops` applied, each path relative to it; `None` for
/// a folder left empty (unless `root`).
fn apply_dir(
    store: &mut dyn Trees,
    oid: Option<&str>,
    ops: Vec<RelOp<'_>>,
    root: bool,
) -> Result<Option<Tree>, TreeError> {
    let mut t = match oid {
        Some(o) => store.get(o)?,
        None => Tree::new(),
    };
    // Operations by the entry of this folder they go through, in their order.
    let mut groups: BTreeMap<&str, Vec<RelOp<'_>>> = BTreeMap::new();
    for (parts, c, full) in ops {
        match parts.split_first() {
            Some((first, rest)) => groups
                .entry(first)
                .or_default()
                .push((rest.to_vec(), c, full)),
            // The folder itself: only deleting it all is meaningful.
            None if *c == Change::DeleteFolder => {
                t.clear();
                groups.clear();
            }
            None => return Err(TreeError::Clash(full.to_string())),
        }
    }
    for (name, list) in groups {
        let mut nested = Vec::new();
        for (rest, c, full) in list {
            if !rest.is_empty() {
                nested.push((rest, c, full));
                continue;
            }
            descend(store, &mut t, name, std::mem::take(&mut nested))?;
            match (c, t.get(name)) {
                (Change::Put(_), Some(Node::Dir(_))) => {
                    return Err(TreeError::Clash(full.to_string()))
                }
                (Change::Put(f), _) => {
                    t.insert(name.to_string(), Node::File(f.clone()));
                }
                (Change::DeleteFile, Some(Node::File(_)))
                | (Change::DeleteFolder, Some(Node::Dir(_))) => {
                    t.remove(name);
                }
                _ => return Err(TreeError::Missing(full.trim_end_matches('/').to_string())),
            }
        }
        descend(store, &mut t, name, nested)?;
    }
    Ok((root || !t.is_empty()).then_some(t))
}

/// Apply `nested` operations to the folder `name` of `t` (made if missing).
fn descend(
    store: &mut dyn Trees,
    t: &mut Tree,
    name: &str,
    nested: Vec<RelOp<'_>>,
) -> Result<(), TreeError> {
    if nested.is_empty() {
        return Ok(());
    }
    let sub = match t.get(name) {
        Some(Node::Dir(o)) => Some(o.clone()),
        Some(Node::File(_)) => return Err(TreeError::Clash(nested[0].2.to_string())),
        None => None,
    };
    match apply_dir(store, sub.as_deref(), nested, false)? {
        Some(new) => {
            let oid = store.put(&new)?;
            t.insert(name.to_string(), Node::Dir(oid));
        }
        None => {
            t.remove(name);
        }
    }
    Ok(())
}

/// The entry at `path` under tree `root` (`""`: the root folder itself).
pub async fn lookup(
    store: &dyn TreeSource,
    root: &str,
    path: &str,
) -> Result<Option<Node>, TreeError> {
    let mut node = Node::Dir(root.to_string());
    for part in path.split('/').filter(|s| !s.is_empty()) {
        let Node::Dir(oid) = node else {
            return Ok(None);
        };
        match store.get(&oid).await?.remove(part) {
            Some(n) => node = n,
            None => return Ok(None),
        }
    }
    Ok(Some(node))
}

/// Up to `limit` entries under folder `oid` (whose path is `prefix`), in pre-order with
/// names sorted, all the way down if `recursive`, starting after path `after` (a listing's
/// cursor). Each entry comes with its full path. The flag says whether more follow.
pub async fn list(
    store: &dyn TreeSource,
    oid: &str,
    prefix: &str,
    recursive: bool,
    after: &str,
    limit: usize,
) -> Result<(Vec<(String, Node)>, bool), TreeError> {
    let after: Vec<&str> = after
        .strip_prefix(prefix)
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = Vec::new();
    walk(
        store,
        oid,
        prefix,
        recursive,
        &after,
        limit.saturating_add(1),
        &mut out,
    )
    .await?;
    let more = out.len() > limit;
    out.truncate(limit);
    Ok((out, more))
}

fn walk<'a>(
    store: &'a dyn TreeSource,
    oid: &'a str,
    prefix: &'a str,
    recursive: bool,
    after: &'a [&'a str],
    limit: usize,
    out: &'a mut Vec<(String, Node)>,
) -> BoxFuture<'a, Result<(), TreeError>> {
    Box::pin(async move {
        let t = store.get(oid).await?;
        let from = after.first().copied().unwrap_or("");
        let from = (std::ops::Bound::Included(from), std::ops::Bound::Unbounded);
        for (name, node) in t.range::<str, _>(from) {
            if out.len() >= limit {
                return Ok(());
            }
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            // The cursor's own entry was listed; only what is under it may remain.
            let resumed = after.first() == Some(&name.as_str());
            if !resumed {
                out.push((path.clone(), node.clone()));
            }
            if let (true, Node::Dir(sub)) = (recursive, node) {
                let rest = if resumed { &after[1..] } else { &[][..] };
                walk(store, sub, &path, recursive, rest, limit, out).await?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Mem(HashMap<String, Vec<u8>>, usize);

    impl Trees for Mem {
        fn get(&self, oid: &str) -> Result<Tree, TreeError> {
            decode(self.0.get(oid).ok_or(TreeError::Store(oid.into()))?)
        }
        fn put(&mut self, t: &Tree) -> Result<String, TreeError> {
            let (body, oid) = encode(t);
            self.1 += 1;
            self.0.insert(oid.clone(), body);
            Ok(oid)
        }
    }

    fn put(p: &str, text: &str) -> (String, Change) {
        (p.into(), Change::Put(FileNode::regular(text.as_bytes())))
    }

    use futures::executor::block_on;

    fn paths(s: &Mem, root: &str) -> Vec<String> {
        block_on(list(s, root, "", true, "", usize::MAX))
            .unwrap()
            .0
            .into_iter()
            .map(|(p, n)| match n {
                Node::Dir(_) => format!("{p}/"),
                Node::File(_) => p,
            })
            .collect()
    }

    #[test]
    fn blob_and_pointer_ids_are_git_s() {
        // `printf hello | git hash-object --stdin`
        assert_eq!(
            blob_oid(b"hello"),
            "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0"
        );
        assert_eq!(blob_oid(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        let f = FileNode::lfs(3, "ab".repeat(32), "cd".repeat(32));
        assert_eq!(f.oid, blob_oid(lfs_pointer(&"ab".repeat(32), 3).as_bytes()));
    }

    #[test]
    fn commits_rewrite_only_the_trees_on_changed_paths_and_folders_follow_their_files() {
        let mut s = Mem::default();
        let r1 = apply(
            &mut s,
            None,
            &[
                put("a/x", "1"),
                put("a/y", "2"),
                put("b/c/z", "3"),
                put("top", "4"),
            ],
        )
        .unwrap();
        assert_eq!(
            paths(&s, &r1),
            ["a/", "a/x", "a/y", "b/", "b/c/", "b/c/z", "top"]
        );
        let b_before = block_on(lookup(&s, &r1, "b")).unwrap();
        let writes = s.1;
        let r2 = apply(&mut s, Some(&r1), &[put("a/x", "new")]).unwrap();
        assert_eq!(s.1 - writes, 2, "the folder a and the root, nothing else");
        assert_eq!(block_on(lookup(&s, &r2, "b")).unwrap(), b_before);
        // Deleting a folder's last file removes the folder; a later put on a path wins.
        let r3 = apply(
            &mut s,
            Some(&r2),
            &[
                ("b/c/z".into(), Change::DeleteFile),
                put("top", "x"),
                put("top", "y"),
            ],
        )
        .unwrap();
        assert_eq!(paths(&s, &r3), ["a/", "a/x", "a/y", "top"]);
        assert_eq!(
            block_on(lookup(&s, &r3, "top")).unwrap(),
            Some(Node::File(FileNode::regular(b"y")))
        );
        // The old commits' trees are untouched.
        assert_eq!(paths(&s, &r1).len(), 7);
        // A folder deleted and refilled in one commit holds only the new file.
        let r4 = apply(
            &mut s,
            Some(&r3),
            &[("a/".into(), Change::DeleteFolder), put("a/n", "n")],
        )
        .unwrap();
        assert_eq!(paths(&s, &r4), ["a/", "a/n", "top"]);
        // Same content, same id.
        let again = apply(&mut s, None, &[put("a/n", "n"), put("top", "y")]).unwrap();
        assert_eq!(again, r4);
    }

    #[test]
    fn a_commit_applied_to_the_trees_read_ahead_matches_one_applied_to_all_of_them() {
        let mut s = Mem::default();
        let ops: Vec<_> = ["a/1", "a/b/2", "a/b/c/3", "d/4", "e", "f/g/5"]
            .iter()
            .map(|p| put(p, p))
            .collect();
        let root = apply(&mut s, None, &ops).unwrap();
        let cases: Vec<Vec<(String, Change)>> = vec![
            vec![put("a/b/c/new", "n")],
            vec![("a/b/".into(), Change::DeleteFolder), put("a/b/x", "x")],
            vec![put("a/b/y", "y"), ("a/".into(), Change::DeleteFolder)],
            vec![("f/g/5".into(), Change::DeleteFile), put("top", "t")],
            vec![("/".into(), Change::DeleteFolder), put("z/z", "z")],
            vec![put("e/under-a-file", "clash")],
            vec![("d/nope".into(), Change::DeleteFile)],
        ];
        for ops in cases {
            let mut all = Mem(s.0.clone(), 0);
            let want = apply(&mut all, Some(&root), &ops);
            let mut staged = block_on(prefetch(&s, &root, &ops)).unwrap();
            // Only the folders on the operations' paths were read.
            assert!(staged.read.len() <= 4, "{ops:?}: {}", staged.read.len());
            assert_eq!(apply(&mut staged, Some(&root), &ops), want, "{ops:?}");
            if let Ok(new) = want {
                let mut written: Vec<_> = staged.written.iter().map(|(o, _)| o.clone()).collect();
                written.sort();
                assert!(written.binary_search(&new).is_ok());
                for (oid, body) in &staged.written {
                    assert_eq!(all.0.get(oid), Some(body), "{ops:?}");
                }
            }
        }
    }

    #[test]
    fn deletions_of_what_is_not_there_and_file_folder_clashes_are_refused() {
        let mut s = Mem::default();
        let r = apply(&mut s, None, &[put("a/x", "1"), put("f", "2")]).unwrap();
        let err = |ops: &[(String, Change)]| apply(&mut Mem(s.0.clone(), 0), Some(&r), ops);
        assert_eq!(
            err(&[("a/nope".into(), Change::DeleteFile)]),
            Err(TreeError::Missing("a/nope".into()))
        );
        assert_eq!(
            err(&[("a".into(), Change::DeleteFile)]),
            Err(TreeError::Missing("a".into()))
        );
        assert_eq!(
            err(&[("f/".into(), Change::DeleteFolder)]),
            Err(TreeError::Missing("f".into()))
        );
        assert_eq!(err(&[put("a", "x")]), Err(TreeError::Clash("a".into())));
        assert_eq!(err(&[put("f/y", "x")]), Err(TreeError::Clash("f/y".into())));
        // Deleting the root folder empties the repo.
        let empty = err(&[("/".into(), Change::DeleteFolder)]).unwrap();
        assert!(paths(&s, &r).len() == 3 && empty == encode(&Tree::new()).1);
    }

    #[test]
    fn pages_resume_after_their_cursor_at_any_depth() {
        let mut s = Mem::default();
        let ops: Vec<_> = ["a/1", "a/2", "a/b/3", "a/b/4", "c", "d/5", "e"]
            .iter()
            .map(|p| put(p, p))
            .collect();
        let r = apply(&mut s, None, &ops).unwrap();
        let all = paths(&s, &r);
        for limit in 1..all.len() + 1 {
            let (mut got, mut after) = (Vec::new(), String::new());
            loop {
                let (page, more) = block_on(list(&s, &r, "", true, &after, limit)).unwrap();
                after = page.last().map(|(p, _)| p.clone()).unwrap_or_default();
                got.extend(page.into_iter().map(|(p, n)| match n {
                    Node::Dir(_) => format!("{p}/"),
                    Node::File(_) => p,
                }));
                if !more {
                    break;
                }
            }
            assert_eq!(got, all, "pages of {limit}");
        }
        // A subfolder's listing, flat.
        let Some(Node::Dir(a)) = block_on(lookup(&s, &r, "a")).unwrap() else {
            panic!()
        };
        let (page, more) = block_on(list(&s, &a, "a", false, "", 10)).unwrap();
        let names: Vec<_> = page.into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            (names, more),
            (vec!["a/1".into(), "a/2".into(), "a/b".into()], false)
        );
    }
}
