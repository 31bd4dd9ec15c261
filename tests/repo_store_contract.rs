//! One contract for both repo stores behind `serve`'s repos: SQLite in a serve directory and
//! PostgreSQL (a throwaway cluster from Debian's package). The same tests run against each
//! through `Repos`, the logic they share: commits and their trees, revisions of every kind,
//! compare-and-swap on branches under concurrent writers, history pages, deletion, and a
//! repo copied whole from one store to the other.

#[path = "common/pg.rs"]
mod pg;

use std::sync::Arc;

use xetmount::server::repos::sqlite::SqliteRepos;
use xetmount::server::repos::tree::{Change, FileNode, Node};
use xetmount::server::repos::{CommitError, RefKind, RepoStore, Repos, MAIN};

enum Kind {
    Sqlite,
    Pg,
}

/// A fresh store and what keeps it alive.
struct Store {
    repos: Arc<Repos>,
    _dir: tempfile::TempDir,
    _pg: Option<pg::Pg>,
}

async fn store_of(kind: &Kind) -> (Box<dyn RepoStore>, tempfile::TempDir, Option<pg::Pg>) {
    let dir = tempfile::tempdir().unwrap();
    match kind {
        Kind::Sqlite => (Box::new(SqliteRepos::open(dir.path()).unwrap()), dir, None),
        Kind::Pg => {
            let cluster = pg::Pg::start();
            let pool = xetmount::server::pg::connect(&cluster.url()).await.unwrap();
            let s = xetmount::server::pg::PgRepos::open(pool).await.unwrap();
            (Box::new(s), dir, Some(cluster))
        }
    }
}

async fn open(kind: Kind) -> Store {
    let (s, dir, pg) = store_of(&kind).await;
    Store {
        repos: Arc::new(Repos::new(s)),
        _dir: dir,
        _pg: pg,
    }
}

const KEY: &str = "models/alice/m";

fn put(path: &str, text: &str) -> (String, Change) {
    (
        path.to_string(),
        Change::Put(FileNode::regular(text.as_bytes())),
    )
}

fn lfs(path: &str, n: u8) -> (String, Change) {
    (
        path.to_string(),
        Change::Put(FileNode::lfs(
            1000 + n as u64,
            format!("{n:02x}").repeat(32),
            format!("{:02x}", n + 100).repeat(32),
        )),
    )
}

/// Commit `ops` with the regular files' contents taken from them.
async fn commit(
    r: &Repos,
    parent: Option<&str>,
    ops: &[(String, Change)],
    texts: &[&str],
) -> Result<xetmount::server::repos::Commit, CommitError> {
    let blobs: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
    r.commit(KEY, MAIN, parent, ops, &blobs, "t", "m", "alice")
        .await
}

/// Every path at commit `c`, folders with a trailing `/`.
async fn paths(r: &Repos, c: &xetmount::server::repos::Commit) -> Vec<String> {
    r.list(KEY, &c.tree, "", true, "", usize::MAX)
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|(p, n)| match n {
            Node::Dir(_) => format!("{p}/"),
            Node::File(_) => p,
        })
        .collect()
}

async fn commits_land_with_their_trees_and_every_kind_of_revision_resolves(kind: Kind) {
    let s = open(kind).await;
    let r = &s.repos;
    assert!(r.create(KEY, true, "alice").await.unwrap());
    assert!(!r.create(KEY, false, "bob").await.unwrap(), "made twice");
    let info = r.info(KEY).await.unwrap().unwrap();
    assert!(info.private && info.id == "alice/m");
    let first = r.resolve(KEY, MAIN).await.unwrap().unwrap();
    assert_eq!(paths(r, &first).await, [".gitattributes"]);

    let c1 = commit(
        r,
        Some(&first.oid),
        &[
            put("a/b/x.txt", "x"),
            put("a/y.txt", "y"),
            lfs("w/big.bin", 1),
        ],
        &["x", "y"],
    )
    .await
    .unwrap();
    assert_eq!(
        paths(r, &c1).await,
        [
            ".gitattributes",
            "a/",
            "a/b/",
            "a/b/x.txt",
            "a/y.txt",
            "w/",
            "w/big.bin"
        ]
    );
    let Some(Node::File(x)) = r.entry_at(KEY, &c1, "a/b/x.txt").await.unwrap() else {
        panic!("a/b/x.txt is not a file")
    };
    assert_eq!(r.blob(KEY, &x.oid).await.unwrap().unwrap(), b"x");
    assert!(r.references(KEY, &"65".repeat(32)).await.unwrap());
    assert!(!r
        .references("models/alice/other", &"65".repeat(32))
        .await
        .unwrap());

    // Every way of naming a commit.
    assert!(r
        .create_ref(KEY, RefKind::Tag, "v1", &c1.oid)
        .await
        .unwrap());
    assert!(!r
        .create_ref(KEY, RefKind::Tag, "v1", &first.oid)
        .await
        .unwrap());
    for rev in [
        "main",
        "refs/heads/main",
        "v1",
        "refs/tags/v1",
        &c1.oid,
        &c1.oid[..7],
    ] {
        assert_eq!(
            r.resolve(KEY, rev).await.unwrap().as_ref(),
            Some(&c1),
            "{rev}"
        );
    }
    assert_eq!(
        r.resolve(KEY, &c1.oid[..6]).await.unwrap(),
        None,
        "too short"
    );
    assert_eq!(r.resolve(KEY, "nope").await.unwrap(), None);

    // A later commit rewrites only its path; the tag keeps the old tree.
    let c2 = commit(
        r,
        None,
        &[("a/b/x.txt".into(), Change::DeleteFile), put("z", "z")],
        &["z"],
    )
    .await
    .unwrap();
    assert_eq!(c2.parent.as_deref(), Some(c1.oid.as_str()));
    assert_eq!(
        paths(r, &c2).await,
        [".gitattributes", "a/", "a/y.txt", "w/", "w/big.bin", "z"]
    );
    let tagged = r.resolve(KEY, "v1").await.unwrap().unwrap();
    assert!(r
        .entry_at(KEY, &tagged, "a/b/x.txt")
        .await
        .unwrap()
        .is_some());
    let branches = r.refs(KEY, RefKind::Branch).await.unwrap();
    assert_eq!(branches.len(), 1);
    assert_eq!(branches[0].commit, c2.oid);
    assert!(r.delete_ref(KEY, RefKind::Tag, "v1").await.unwrap());
    assert!(!r.delete_ref(KEY, RefKind::Tag, "v1").await.unwrap());

    // Refused changes leave the branch where it was.
    let e = commit(r, None, &[("nope".into(), Change::DeleteFile)], &[]).await;
    assert!(matches!(e, Err(CommitError::Tree(_))), "{e:?}");
    let e = r
        .commit(KEY, "dev", None, &[put("q", "q")], &[], "t", "m", "a")
        .await;
    assert!(matches!(e, Err(CommitError::NoBranch(_))), "{e:?}");
    assert_eq!(r.resolve(KEY, MAIN).await.unwrap().unwrap(), c2);
}

async fn a_stale_parent_is_refused_and_concurrent_writers_all_land_in_order(kind: Kind) {
    let s = open(kind).await;
    let r = &s.repos;
    r.create(KEY, false, "alice").await.unwrap();
    let first = r.resolve(KEY, MAIN).await.unwrap().unwrap();
    let c1 = commit(r, Some(&first.oid[..12]), &[put("a", "1")], &["1"])
        .await
        .unwrap();
    match commit(r, Some(&first.oid), &[put("a", "2")], &["2"]).await {
        Err(CommitError::Moved { head, .. }) => assert_eq!(head, c1.oid),
        other => panic!("a stale parent was taken: {other:?}"),
    }

    // Writers without a parent check all land, one after another; writers that all name
    // the same parent: exactly one lands.
    let n = 12;
    let mut tasks = Vec::new();
    for i in 0..n {
        let r = s.repos.clone();
        tasks.push(tokio::spawn(async move {
            let text = format!("{i}");
            commit(
                &r,
                None,
                &[put(&format!("d{}/f{i}", i % 3), &text)],
                &[&text],
            )
            .await
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("a commit without a parent check was refused");
    }
    let head = r.resolve(KEY, MAIN).await.unwrap().unwrap();
    let files = paths(r, &head).await;
    for i in 0..n {
        assert!(files.contains(&format!("d{}/f{i}", i % 3)), "f{i} lost");
    }
    let history = r.history(KEY, &head.oid, 0, 100).await.unwrap();
    assert_eq!(history.len(), n + 2, "{history:?}");
    for w in history.windows(2) {
        assert_eq!(w[0].parent.as_deref(), Some(w[1].oid.as_str()));
    }
    assert_eq!(history.last().unwrap().oid, first.oid);

    let mut racers = Vec::new();
    for i in 0..6 {
        let r = s.repos.clone();
        let parent = head.oid.clone();
        racers.push(tokio::spawn(async move {
            commit(
                &r,
                Some(&parent),
                &[put("race", &format!("{i}"))],
                &[&format!("{i}")],
            )
            .await
        }));
    }
    let mut landed = 0;
    for t in racers {
        match t.await.unwrap() {
            Ok(_) => landed += 1,
            Err(CommitError::Moved { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(landed, 1, "writers naming one parent: exactly one lands");

    // Pages of history.
    let all = r
        .history(
            KEY,
            &r.resolve(KEY, MAIN).await.unwrap().unwrap().oid,
            0,
            1000,
        )
        .await
        .unwrap();
    let page = r.history(KEY, &all[0].oid, 3, 4).await.unwrap();
    assert_eq!(page, all[3..7]);
    assert!(r
        .history(KEY, &all[0].oid, all.len(), 4)
        .await
        .unwrap()
        .is_empty());
    assert!(r.history(KEY, "0000000", 0, 4).await.unwrap().is_empty());
}

async fn deleted_repos_leave_nothing_and_the_sha256_index_is_kept(kind: Kind) {
    let s = open(kind).await;
    let r = &s.repos;
    r.create(KEY, false, "alice").await.unwrap();
    let c = commit(r, None, &[lfs("big", 7), put("t", "t")], &["t"])
        .await
        .unwrap();
    let pairs = vec![
        ("aa".repeat(32), "01".repeat(32)),
        ("aa".repeat(32), "02".repeat(32)),
    ];
    r.note_sha256(&pairs).await.unwrap();
    r.note_sha256(&pairs[..1]).await.unwrap();
    let mut found = r.files_with_sha256(&"aa".repeat(32)).await.unwrap();
    found.sort();
    assert_eq!(found, ["01".repeat(32), "02".repeat(32)]);

    assert!(r.delete(KEY).await.unwrap());
    assert!(!r.delete(KEY).await.unwrap());
    assert!(r.info(KEY).await.unwrap().is_none());
    assert!(r.resolve(KEY, &c.oid).await.unwrap().is_none());
    assert!(!r.references(KEY, &"6b".repeat(32)).await.unwrap());
    assert_eq!(r.store().count().await.unwrap(), 0);
    // Made again under its name: a new repo with only its first commit.
    r.create(KEY, false, "bob").await.unwrap();
    let again = r.resolve(KEY, MAIN).await.unwrap().unwrap();
    assert_eq!(paths(r, &again).await, [".gitattributes"]);
    assert!(r.history(KEY, &again.oid, 0, 10).await.unwrap().len() == 1);
}

async fn a_repo_copies_whole_to_the_other_store(kind: Kind) {
    let s = open(kind).await;
    let r = &s.repos;
    r.create(KEY, true, "alice").await.unwrap();
    commit(r, None, &[put("a/x", "x"), lfs("b/y", 3)], &["x"])
        .await
        .unwrap();
    let head = commit(r, None, &[put("a/z", "z")], &["z"]).await.unwrap();
    r.create_ref(KEY, RefKind::Tag, "v1", &head.oid)
        .await
        .unwrap();
    r.create_ref(KEY, RefKind::Branch, "dev", &head.parent.clone().unwrap())
        .await
        .unwrap();
    let dump = r.store().export(KEY).await.unwrap().unwrap();
    assert_eq!(dump.commits.len(), 3);
    assert_eq!(dump.refs.len(), 3);
    for other in [Kind::Sqlite, Kind::Pg] {
        let (to, _dir, _pg) = store_of(&other).await;
        assert!(to.import(&dump).await.unwrap());
        assert!(!to.import(&dump).await.unwrap(), "imported twice");
        assert_eq!(to.export(KEY).await.unwrap().unwrap(), dump);
        let copy = Repos::new(to);
        let c = copy.resolve(KEY, "v1").await.unwrap().unwrap();
        assert_eq!(c, head);
        assert_eq!(paths(&copy, &c).await, paths(r, &head).await);
        assert!(copy.info(KEY).await.unwrap().unwrap().private);
    }
}

macro_rules! contract {
    ($kind:ident) => {
        #[allow(non_snake_case)]
        mod $kind {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn commits_land_with_their_trees_and_every_kind_of_revision_resolves() {
                super::commits_land_with_their_trees_and_every_kind_of_revision_resolves(
                    Kind::$kind,
                )
                .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_stale_parent_is_refused_and_concurrent_writers_all_land_in_order() {
                super::a_stale_parent_is_refused_and_concurrent_writers_all_land_in_order(
                    Kind::$kind,
                )
                .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn deleted_repos_leave_nothing_and_the_sha256_index_is_kept() {
                super::deleted_repos_leave_nothing_and_the_sha256_index_is_kept(Kind::$kind).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_repo_copies_whole_to_the_other_store() {
                super::a_repo_copies_whole_to_the_other_store(Kind::$kind).await
            }
        }
    };
}

contract!(Sqlite);
contract!(Pg);
