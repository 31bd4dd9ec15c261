//! One contract for every remote behind `Catalog` and `Cas`: the same test functions run
//! against the in-memory reference (`remote::mem`, in POSIX and in plain-bucket mode), the
//! local store, `HttpCatalog`/`HttpCas` against a `xetmount serve` started here (on its
//! directory, and as a replica on PostgreSQL + an S3 server), and `PlainCatalog` against
//! `serve --hub-only`. Each test checks what the catalog's
//! `capabilities()` promise, so a catalog that keeps less is held to less, never to nothing.
//!
//! A new remote joins with one `contract!(name, Kind::…)` line (and its opener in `open`).

mod common;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/s3.rs"]
mod s3;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use xet_core_structures::merklehash::file_hash;
use xet_data::deduplication::Chunker;
use xetmount::remote::fault::{self, Faults};
use xetmount::remote::http::{BucketUri, RemoteOptions};
use xetmount::remote::local::LocalStore;
use xetmount::remote::mem::{MemCas, MemCatalog};
use xetmount::remote::{
    body, Capabilities, Cas, Catalog, CatalogOp, Changes, ComposeEdit, Entry, EntryKind, FileId,
    FixedOwner, Meta, RemoteError, UploadItem,
};

/// What a catalog without POSIX metadata shows (the mem plain mode and `PlainCatalog`).
const OWNER: FixedOwner = FixedOwner {
    uid: 4321,
    gid: 8765,
    file_mode: 0o640,
    dir_mode: 0o750,
};

/// Whole milliseconds, so a plain bucket keeps the mtime exactly.
const MTIME_NS: i64 = 1_700_000_000_123_000_000;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Mem,
    MemPlain,
    Local,
    Http,
    Plain,
    /// `serve`'s catalog on PostgreSQL (a throwaway cluster), with the in-memory CAS.
    Pg,
    /// `HttpCatalog`/`HttpCas` against a `serve` replica on PostgreSQL and `s3s-fs`.
    Shared,
}

/// One fresh remote, and what keeps it alive.
struct Remote {
    catalog: Arc<dyn Catalog>,
    cas: Arc<dyn Cas>,
    caps: Capabilities,
    dir: tempfile::TempDir,
    _store: Option<LocalStore>,
    _serve: Option<common::Serve>,
    _pg: Option<pg::Pg>,
    _s3: Option<s3::S3>,
}

async fn open(kind: Kind) -> Remote {
    let dir = tempfile::tempdir().unwrap();
    let mut postgres = None;
    let mut objects = None;
    let (catalog, cas, store, serve): (Arc<dyn Catalog>, Arc<dyn Cas>, _, _) = match kind {
        Kind::Pg => {
            let cluster = pg::Pg::start();
            let pool = xetmount::server::pg::connect(&cluster.url()).await.unwrap();
            // Another bucket beside it in the same tables: nothing of it may show.
            let other = xetmount::server::pg::PgCatalog::open(pool.clone(), "other/b")
                .await
                .unwrap();
            other
                .commit(vec![CatalogOp::Put(Entry::dir("r".into(), meta(0o700)))])
                .await
                .unwrap();
            let catalog = xetmount::server::pg::PgCatalog::open(pool, "local/data")
                .await
                .unwrap();
            postgres = Some(cluster);
            (
                Arc::new(catalog) as Arc<dyn Catalog>,
                Arc::new(MemCas::new()) as Arc<dyn Cas>,
                None,
                None,
            )
        }
        Kind::Mem => (
            Arc::new(MemCatalog::posix()),
            Arc::new(MemCas::new()),
            None,
            None,
        ),
        Kind::MemPlain => (
            Arc::new(MemCatalog::plain(OWNER)),
            Arc::new(MemCas::new()),
            None,
            None,
        ),
        Kind::Local => {
            let ctx = xet_runtime::core::XetContext::from_external(
                tokio::runtime::Handle::current(),
                xetmount::remote::local::xet_config(),
            );
            let store = LocalStore::open(&dir.path().join("store"), ctx)
                .await
                .unwrap();
            let (c, s) = (store.catalog.clone(), store.cas.clone());
            (c as Arc<dyn Catalog>, s as Arc<dyn Cas>, Some(store), None)
        }
        Kind::Http | Kind::Plain | Kind::Shared => {
            let d = dir.path();
            let serve = match kind {
                Kind::Plain => {
                    common::Serve::start(&d.join("srv"), &d.join("serve.log"), &["--hub-only"])
                }
                Kind::Shared => {
                    let (cluster, store) = (pg::Pg::start(), s3::S3::start(&["xet"]));
                    let serve = common::Serve::start_shared(
                        &cluster.url(),
                        "s3://xet/contract",
                        &store.env(),
                        &d.join("serve.log"),
                        0,
                        &[],
                    );
                    (postgres, objects) = (Some(cluster), Some(store));
                    serve
                }
                _ => common::Serve::start(&d.join("srv"), &d.join("serve.log"), &[]),
            };
            let r = reqwest::Client::new()
                .post(format!("{}/api/buckets/local/data", serve.url))
                .bearer_auth("anything")
                .json(&serde_json::json!({"private": true}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "create the bucket: {}", r.status());
            let ctx = xet_runtime::core::XetContext::from_external(
                tokio::runtime::Handle::current(),
                xetmount::remote::local::xet_config(),
            );
            let opened = xetmount::remote::http::open(
                ctx,
                &BucketUri::parse("hf://buckets/local/data").unwrap(),
                &RemoteOptions {
                    endpoint: serve.url.clone(),
                    token: Some("anything".into()),
                    write: true,
                    cache_dir: d.join("cache"),
                    chunk_cache_bytes: 0,
                    owner: OWNER,
                },
            )
            .await
            .unwrap();
            assert!(opened.writable);
            let cas: Arc<dyn Cas> = opened.cas;
            (opened.catalog, cas, None, Some(serve))
        }
    };
    let caps = catalog.capabilities();
    match kind {
        Kind::Mem | Kind::Local | Kind::Http | Kind::Pg | Kind::Shared => {
            assert_eq!(caps, Capabilities::POSIX)
        }
        Kind::MemPlain | Kind::Plain => assert_eq!(caps.fixed_owner, Some(OWNER)),
    }
    Remote {
        catalog,
        cas,
        caps,
        dir,
        _store: store,
        _serve: serve,
        _pg: postgres,
        _s3: objects,
    }
}

/// Run contract `f` on a fresh remote of `kind`, on a runtime of its own.
fn run<F, Fut>(kind: Kind, f: F)
where
    F: FnOnce(Remote) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    common::runtime().block_on(async { f(open(kind).await).await });
}

/// Every contract test, instantiated for one remote; `ignore: [test = "why"]` marks the
/// tests that remote is known to fail (each a finding to fix in that remote).
macro_rules! contract {
    ($name:ident, $kind:expr $(, ignore: [$($ig:ident = $why:literal),* $(,)?])?) => {
        contract!(@with ($) $name, $kind, [$($($ig = $why),*)?]);
    };
    (@with ($d:tt) $name:ident, $kind:expr, [$($ig:ident = $why:literal),*]) => {
        mod $name {
            use super::*;
            macro_rules! one {
                $( ($ig) => {
                    #[test]
                    #[ignore = $why]
                    fn $ig() {
                        run($kind, super::$ig)
                    }
                }; )*
                ($d t:ident) => {
                    #[test]
                    fn $d t() {
                        run($kind, super::$d t)
                    }
                };
            }
            one!(put_head_and_list);
            one!(tree_pages_run_in_path_order);
            one!(a_failed_expectation_applies_nothing_and_names_every_conflict);
            one!(rename_moves_a_subtree);
            one!(renaming_a_non_ascii_directory_moves_its_children_whole);
            one!(delete_removes_a_subtree_and_nothing_beside_it);
            one!(revisions_increase_and_changes_name_the_directories);
            one!(hard_links_share_a_body_or_are_refused);
            one!(a_put_ignores_the_link_its_entry_names);
            one!(metadata_changes_keep_the_body);
            one!(special_files_are_kept_or_refused);
            one!(reads_of_every_range);
            one!(composed_bodies_read_back_exactly);
            one!(names_are_held_exactly_where_check_path_allows);
            one!(a_name_check_path_refuses_is_not_found);
            one!(a_failed_batch_changes_nothing_visible);
            one!(a_failed_read_returns_the_typed_error);
        }
    };
}

contract!(mem, Kind::Mem);
contract!(mem_plain, Kind::MemPlain);
contract!(local, Kind::Local);
contract!(http, Kind::Http);
contract!(plain, Kind::Plain);
contract!(postgres, Kind::Pg);
contract!(shared, Kind::Shared);

// ---------------------------------------------------------------------------------------
// Helpers.

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 1234,
        gid: 5678,
        atime_ns: MTIME_NS - 7_000_000_000,
        mtime_ns: MTIME_NS,
        ctime_ns: MTIME_NS + 3_000_000_000,
    }
}

fn file(path: &str, content: Option<&FileId>) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File,
        content: content.cloned(),
        target: None,
        meta: meta(0o640),
        link: None,
    }
}

fn put(path: &str, content: Option<&FileId>) -> CatalogOp {
    CatalogOp::Put(file(path, content))
}

/// Deterministic pseudo-random bytes.
fn bytes_of(len: usize, seed: u64) -> Vec<u8> {
    common::random_bytes(len, seed)
}

/// The Xet identity of `data`: what every store must name these bytes by.
fn xet_id(data: &[u8]) -> FileId {
    let mut c = Chunker::default();
    let mut chunks = c.next_block(data, true);
    chunks.extend(c.finish());
    let list: Vec<_> = chunks
        .iter()
        .map(|c| (c.hash, c.data.len() as u64))
        .collect();
    FileId {
        hash: file_hash(&list).hex(),
        size: data.len() as u64,
    }
}

impl Remote {
    /// A staging file holding `data`, plus trailing bytes an upload of `data.len()` must not
    /// take.
    fn stage(&self, data: &[u8]) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("stage-{}", uuid::Uuid::now_v7()));
        let mut with_tail = data.to_vec();
        with_tail.extend_from_slice(b"tail that is not part of the body");
        std::fs::write(&p, with_tail).unwrap();
        p
    }

    /// Store `data` through the CAS; its identity.
    async fn upload(&self, data: &[u8]) -> FileId {
        let p = self.stage(data);
        let items = vec![UploadItem {
            path: &p,
            len: data.len() as u64,
        }];
        let mut out = self.cas.upload_batch(items).await.unwrap();
        assert_eq!(out.len(), 1);
        let up = out.remove(0).unwrap();
        assert_eq!(
            up.id,
            xet_id(data),
            "an upload is named by its Xet identity"
        );
        up.id
    }

    async fn commit(&self, ops: Vec<CatalogOp>) -> u64 {
        self.catalog.commit(ops).await.unwrap()
    }

    async fn head(&self, path: &str) -> Option<Entry> {
        self.catalog.head(path).await.unwrap()
    }

    async fn names(&self, dir: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .catalog
            .list_dir(dir)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        v.sort();
        v
    }

    /// The metadata the catalog shows for an entry of `kind` put with `meta`.
    fn shown(&self, kind: EntryKind, m: Meta) -> Meta {
        match self.caps.fixed_owner {
            None => m,
            Some(o) => Meta {
                mode: o.mode(kind),
                uid: o.uid,
                gid: o.gid,
                atime_ns: m.mtime_ns,
                mtime_ns: m.mtime_ns,
                ctime_ns: m.mtime_ns,
            },
        }
    }

    /// Whether a file is at `path` with body `content`.
    async fn holds(&self, path: &str, content: Option<&FileId>) -> bool {
        self.head(path)
            .await
            .is_some_and(|e| e.is_file_with(content))
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// The contract.

async fn put_head_and_list(r: Remote) {
    let a = r.upload(&bytes_of(10_000, 1)).await;
    r.commit(vec![
        CatalogOp::Put(Entry::dir("d".into(), meta(0o700))),
        put("d/f", Some(&a)),
        put("d/sub/g", None),
        put("top", Some(&a)),
    ])
    .await;
    let f = r.head("d/f").await.expect("d/f");
    assert_eq!(f.path, "d/f");
    assert_eq!(f.kind, EntryKind::File);
    assert_eq!(f.content.as_ref(), Some(&a));
    assert_eq!(f.size(), a.size);
    assert_eq!(f.meta, r.shown(EntryKind::File, meta(0o640)));
    let g = r.head("d/sub/g").await.expect("d/sub/g");
    assert_eq!(
        (g.kind, body(g.content.as_ref()), g.size()),
        (EntryKind::File, None, 0)
    );
    for dir in ["", "d", "d/sub"] {
        let e = r.head(dir).await.unwrap_or_else(|| panic!("{dir:?}"));
        assert_eq!((e.path.as_str(), e.kind), (dir, EntryKind::Dir));
    }
    assert!(r.head("missing").await.is_none());
    assert!(r.head("d/f/below-a-file").await.is_none());
    assert!(
        r.head("d/su").await.is_none(),
        "a prefix of a name is no entry"
    );
    assert_eq!(r.names("").await, strings(&["d", "top"]));
    assert_eq!(r.names("d").await, strings(&["d/f", "d/sub"]));
    assert_eq!(r.names("d/sub").await, strings(&["d/sub/g"]));
    assert!(r.names("missing").await.is_empty());
    let listed = r.catalog.list_dir("d").await.unwrap();
    let f2 = listed.iter().find(|e| e.path == "d/f").unwrap();
    assert_eq!(f2, &f, "a listing gives what head gives");
    // What only some catalogs keep.
    r.commit(vec![CatalogOp::Put(Entry::dir(
        "empty".into(),
        meta(0o755),
    ))])
    .await;
    assert_eq!(r.head("empty").await.is_some(), r.caps.empty_dirs);
    let link = Entry {
        path: "d/l".into(),
        kind: EntryKind::Symlink,
        content: None,
        target: Some("f".into()),
        meta: meta(0o777),
        link: None,
    };
    let res = r
        .catalog
        .commit(vec![put("d/with-symlink", Some(&a)), CatalogOp::Put(link)])
        .await;
    if r.caps.symlinks {
        res.unwrap();
        let l = r.head("d/l").await.unwrap();
        assert_eq!(
            (l.kind, l.target.as_deref()),
            (EntryKind::Symlink, Some("f"))
        );
    } else {
        assert!(res.is_err(), "a symlink where none is kept must be refused");
        assert!(r.head("d/l").await.is_none());
        assert!(
            r.head("d/with-symlink").await.is_none(),
            "a refused batch applies nothing"
        );
    }
}

async fn tree_pages_run_in_path_order(r: Remote) {
    let a = r.upload(&bytes_of(1000, 2)).await;
    // '.' < '/' < '0': the entries below `t/x` are not contiguous with `t/x.z` and `t/x0`
    // in a naive ordering of components.
    let mut files: Vec<String> = (0..2100).map(|i| format!("t/n/{i:05}")).collect();
    files.extend(strings(&["t/x.z", "t/x/y", "t/x0", "t0", "s/t"]));
    let ops = files.iter().map(|p| put(p, Some(&a))).collect();
    r.commit(ops).await;
    let mut want: BTreeSet<String> = files
        .iter()
        .filter(|p| p.starts_with("t/"))
        .cloned()
        .collect();
    if r.caps.empty_dirs {
        want.extend(strings(&["t/n", "t/x"]));
    }
    let Some(mut page) = r.catalog.list_tree("t", None).await.unwrap() else {
        // This catalog lists directory by directory only.
        assert_eq!(
            r.names("t").await,
            strings(&["t/n", "t/x", "t/x.z", "t/x0"])
        );
        return;
    };
    let mut got: Vec<Entry> = Vec::new();
    let mut pages = 1;
    loop {
        assert!(
            !page.entries.is_empty() || page.next.is_none(),
            "an empty page ends the list"
        );
        got.extend(page.entries);
        let Some(next) = page.next else { break };
        assert!(pages < 100, "the cursor does not advance");
        page = r
            .catalog
            .list_tree("t", Some(&next))
            .await
            .unwrap()
            .unwrap();
        pages += 1;
    }
    assert!(
        pages >= 3,
        "2100 entries in pages of at most 1000: {pages} pages"
    );
    let paths: Vec<&str> = got.iter().map(|e| e.path.as_str()).collect();
    assert!(
        paths.windows(2).all(|w| w[0] < w[1]),
        "in byte order, each once"
    );
    assert_eq!(
        paths.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>(),
        want
    );
    for e in &got {
        let head = r.head(&e.path).await.unwrap();
        if e.kind == EntryKind::File {
            assert_eq!(e, &head, "a tree entry holds what head gives");
        }
    }
    // The whole tree, from the root, holds what lies beside `t` too.
    let mut all: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = r
            .catalog
            .list_tree("", cursor.as_deref())
            .await
            .unwrap()
            .unwrap();
        all.extend(page.entries.into_iter().map(|e| e.path));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    for p in ["s/t", "t0", "t/x0", "t/n/02099"] {
        assert!(all.iter().any(|a| a == p), "{p} in the root's tree");
    }
    assert!(
        !all.iter().any(|a| a.is_empty()),
        "the root is not below itself"
    );
    let none = r.catalog.list_tree("no-such-dir", None).await.unwrap();
    assert_eq!(
        none,
        Some(Default::default()),
        "a missing directory has nothing below it"
    );
    let sub = r.catalog.list_tree("t/x", None).await.unwrap().unwrap();
    assert_eq!(sub.next, None);
    let sub: Vec<&str> = sub.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(sub, ["t/x/y"], "nothing beside the listed directory");
}

async fn a_failed_expectation_applies_nothing_and_names_every_conflict(r: Remote) {
    let a = r.upload(&bytes_of(5000, 3)).await;
    let b = r.upload(&bytes_of(6000, 4)).await;
    r.commit(vec![put("c/a", Some(&a)), put("c/b", Some(&b))])
        .await;
    let before = r.catalog.revision().await.unwrap();
    let batch = vec![
        put("c/new", Some(&a)),
        CatalogOp::Delete { path: "c/a".into() },
        CatalogOp::Expect {
            path: "c/b".into(),
            content: Some(a.clone()),
        },
        CatalogOp::Expect {
            path: "c/missing".into(),
            content: None,
        },
        // At this point of the batch `c/a` is gone.
        CatalogOp::Expect {
            path: "c/a".into(),
            content: Some(a.clone()),
        },
        CatalogOp::Expect {
            path: "c/b".into(),
            content: Some(b.clone()),
        },
    ];
    let res = r.catalog.commit(batch).await;
    if !r.caps.compare_and_swap {
        // Expectations are not kept: the batch applies.
        res.unwrap();
        assert!(r.holds("c/new", Some(&a)).await);
        assert!(r.head("c/a").await.is_none());
        return;
    }
    let conflicts = match res {
        Err(RemoteError::Conflict(c)) => c,
        other => panic!("expected a conflict, got {other:?}"),
    };
    let paths: Vec<&str> = conflicts.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        ["c/b", "c/missing", "c/a"],
        "every failed expectation, in order"
    );
    let cur = |p: &str| {
        conflicts
            .iter()
            .find(|c| c.path == p)
            .unwrap()
            .current
            .clone()
    };
    assert_eq!(cur("c/b").and_then(|e| e.content), Some(b.clone()));
    assert_eq!(cur("c/missing"), None);
    assert_eq!(
        cur("c/a"),
        None,
        "what the path holds at that point of the batch"
    );
    assert!(
        r.head("c/new").await.is_none(),
        "nothing of the batch applied"
    );
    assert!(r.holds("c/a", Some(&a)).await);
    assert_eq!(r.catalog.revision().await.unwrap(), before);
    // Held expectations let the batch through.
    r.commit(vec![
        CatalogOp::Expect {
            path: "c/b".into(),
            content: Some(b.clone()),
        },
        put("c/b", Some(&a)),
        CatalogOp::Expect {
            path: "c/b".into(),
            content: Some(a.clone()),
        },
    ])
    .await;
    assert!(r.holds("c/b", Some(&a)).await);
}

async fn rename_moves_a_subtree(r: Remote) {
    let a = r.upload(&bytes_of(3000, 5)).await;
    let b = r.upload(&bytes_of(4000, 6)).await;
    r.commit(vec![
        put("r/src/a", Some(&a)),
        put("r/src/sub/b", Some(&b)),
        put("r/src.txt", Some(&b)),
        put("r/dst/old", Some(&a)),
    ])
    .await;
    r.commit(vec![CatalogOp::Rename {
        from: "r/src".into(),
        to: "r/dst".into(),
    }])
    .await;
    assert!(r.head("r/src").await.is_none());
    assert!(r.head("r/src/a").await.is_none());
    assert!(r.holds("r/dst/a", Some(&a)).await);
    assert!(r.holds("r/dst/sub/b", Some(&b)).await);
    assert!(
        r.head("r/dst/old").await.is_none(),
        "the target is replaced"
    );
    assert!(
        r.holds("r/src.txt", Some(&b)).await,
        "a sibling sharing the prefix stays"
    );
    assert_eq!(r.names("r").await, strings(&["r/dst", "r/src.txt"]));
    assert_eq!(r.names("r/dst").await, strings(&["r/dst/a", "r/dst/sub"]));
    let moved = r.head("r/dst/sub/b").await.unwrap();
    assert_eq!(
        moved.meta,
        r.shown(EntryKind::File, meta(0o640)),
        "metadata moves along"
    );
    r.commit(vec![CatalogOp::Rename {
        from: "r/src.txt".into(),
        to: "r/dst/sub/b".into(),
    }])
    .await;
    assert!(r.head("r/src.txt").await.is_none());
    assert!(r.holds("r/dst/sub/b", Some(&b)).await);
}

async fn renaming_a_non_ascii_directory_moves_its_children_whole(r: Remote) {
    let a = r.upload(&bytes_of(1500, 9)).await;
    r.commit(vec![
        put("ü/café/a", Some(&a)),
        put("ü/café/日本/b", Some(&a)),
    ])
    .await;
    r.commit(vec![CatalogOp::Rename {
        from: "ü/café".into(),
        to: "ü/thé-vert".into(),
    }])
    .await;
    assert!(r.holds("ü/thé-vert/a", Some(&a)).await);
    assert!(r.holds("ü/thé-vert/日本/b", Some(&a)).await);
    assert_eq!(r.names("ü").await, strings(&["ü/thé-vert"]));
    assert_eq!(
        r.names("ü/thé-vert").await,
        strings(&["ü/thé-vert/a", "ü/thé-vert/日本"])
    );
    assert_eq!(
        r.names("ü/thé-vert/日本").await,
        strings(&["ü/thé-vert/日本/b"])
    );
    // And back, to a shorter ASCII name.
    r.commit(vec![CatalogOp::Rename {
        from: "ü/thé-vert".into(),
        to: "x".into(),
    }])
    .await;
    assert!(r.holds("x/日本/b", Some(&a)).await);
    assert_eq!(r.names("x").await, strings(&["x/a", "x/日本"]));
}

async fn delete_removes_a_subtree_and_nothing_beside_it(r: Remote) {
    let a = r.upload(&bytes_of(2000, 7)).await;
    r.commit(vec![
        put("del/a/x", Some(&a)),
        put("del/a/y/z", Some(&a)),
        put("del/a.b", Some(&a)),
        put("del/a0", Some(&a)),
        put("del/keep", None),
    ])
    .await;
    r.commit(vec![CatalogOp::Delete {
        path: "del/a".into(),
    }])
    .await;
    for gone in ["del/a", "del/a/x", "del/a/y", "del/a/y/z"] {
        assert!(r.head(gone).await.is_none(), "{gone}");
    }
    assert_eq!(
        r.names("del").await,
        strings(&["del/a.b", "del/a0", "del/keep"])
    );
    r.commit(vec![CatalogOp::Delete {
        path: "del/a.b".into(),
    }])
    .await;
    assert_eq!(r.names("del").await, strings(&["del/a0", "del/keep"]));
    assert!(r.holds("del/keep", None).await);
}

async fn revisions_increase_and_changes_name_the_directories(r: Remote) {
    let a = r.upload(&bytes_of(1500, 8)).await;
    let r0 = r.catalog.revision().await.unwrap();
    let c1 = r.commit(vec![put("rv/a/f", Some(&a))]).await;
    let r1 = r.catalog.revision().await.unwrap();
    let c2 = r.commit(vec![put("rv/b/g", Some(&a))]).await;
    let r2 = r.catalog.revision().await.unwrap();
    if c1 != 0 || c2 != 0 {
        // The commit's answer carries the revision it made.
        assert!(r0 < c1 && c1 < c2, "{r0} {c1} {c2}");
        assert_eq!((r1, r2), (c1, c2));
    } else {
        assert!(r0 <= r1 && r1 <= r2, "{r0} {r1} {r2}");
    }
    let Some(first) = r.catalog.changes(r0, Duration::ZERO).await.unwrap() else {
        return; // no change feed: the revision is polled instead
    };
    let dirs = |c: Changes| match c {
        Changes::Dirs { revision, dirs } => (revision, dirs.into_iter().collect::<BTreeSet<_>>()),
        Changes::Reset { revision } => panic!("reset at {revision}"),
    };
    let (rev, changed) = dirs(first);
    assert_eq!(rev, r2);
    assert!(
        changed.contains("rv/a") && changed.contains("rv/b"),
        "{changed:?}"
    );
    let (rev, changed) = dirs(
        r.catalog
            .changes(r1, Duration::ZERO)
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(rev, r2);
    assert!(
        changed.contains("rv/b") && !changed.contains("rv/a"),
        "{changed:?}"
    );
    let (rev, changed) = dirs(
        r.catalog
            .changes(r2, Duration::ZERO)
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(
        (rev, changed.len()),
        (r2, 0),
        "nothing changed after the latest"
    );
    // A waiting reader learns of a commit made while it waits.
    let waiting = r.catalog.changes(r2, Duration::from_secs(30));
    let writing = async {
        r.commit(vec![put("rv/c/h", Some(&a))]).await;
    };
    let (got, ()) = tokio::join!(waiting, writing);
    let (rev, changed) = dirs(got.unwrap().unwrap());
    assert!(rev > r2);
    assert!(
        changed.contains("rv/c") && !changed.contains("rv/b"),
        "{changed:?}"
    );
}

async fn hard_links_share_a_body_or_are_refused(r: Remote) {
    let a = r.upload(&bytes_of(2500, 9)).await;
    let b = r.upload(&bytes_of(2600, 10)).await;
    r.commit(vec![put("hl/a", Some(&a))]).await;
    let res = r
        .catalog
        .commit(vec![
            put("hl/other", Some(&a)),
            CatalogOp::Link {
                from: "hl/a".into(),
                to: "hl/sub/b".into(),
            },
        ])
        .await;
    if !r.caps.hard_links {
        assert!(res.is_err(), "a link where none is kept must be refused");
        assert!(r.head("hl/sub/b").await.is_none());
        assert!(
            r.head("hl/other").await.is_none(),
            "a refused batch applies nothing"
        );
        return;
    }
    res.unwrap();
    let linked = r.head("hl/sub/b").await.unwrap();
    let group = linked.link.expect("a link group");
    assert_eq!(r.head("hl/a").await.unwrap().link, Some(group));
    assert_eq!(
        r.catalog.link_paths(group).await.unwrap(),
        strings(&["hl/a", "hl/sub/b"])
    );
    r.commit(vec![put("hl/a", Some(&b))]).await;
    assert!(
        r.holds("hl/sub/b", Some(&b)).await,
        "a body reaches every name"
    );
    r.commit(vec![CatalogOp::SetMeta {
        path: "hl/sub/b".into(),
        meta: meta(0o600),
    }])
    .await;
    assert_eq!(r.head("hl/a").await.unwrap().meta, meta(0o600));
    let exists = r
        .catalog
        .commit(vec![CatalogOp::Link {
            from: "hl/a".into(),
            to: "hl/other".into(),
        }])
        .await;
    assert!(exists.is_err(), "a link onto an existing name is refused");
    r.commit(vec![CatalogOp::Delete {
        path: "hl/a".into(),
    }])
    .await;
    assert!(
        r.holds("hl/sub/b", Some(&b)).await,
        "the last name keeps the body"
    );
    assert_eq!(
        r.catalog.link_paths(group).await.unwrap(),
        strings(&["hl/sub/b"])
    );
}

async fn reads_of_every_range(r: Remote) {
    let len = 300_000usize;
    let data = bytes_of(len, 11);
    let id = r.upload(&data).await;
    assert_eq!(
        r.upload(&data).await,
        id,
        "the same bytes, the same identity"
    );
    let n = len as u64;
    for range in [
        0..1,
        0..n,
        1000..5000,
        65_000..200_000,
        n - 1..n,
        n - 4096..n,
    ] {
        let got = r.cas.read_range(&id, range.clone()).await.unwrap();
        assert_eq!(
            &got[..],
            &data[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    for empty in [0..0, 5..5, n..n] {
        let got = r.cas.read_range(&id, empty.clone()).await.unwrap();
        assert!(got.is_empty(), "{empty:?}");
    }
    for past in [0..n + 1, n - 10..n + 10, n + 10..n + 20] {
        assert!(
            r.cas.read_range(&id, past.clone()).await.is_err(),
            "{past:?} is past the end"
        );
    }
    // One file of a batch failing fails that file alone; an empty body is an empty file.
    let ok = r.stage(&data[..1000]);
    let empty = r.stage(&[]);
    let missing = r.dir.path().join("no-such-staging-file");
    let items = vec![
        UploadItem {
            path: &ok,
            len: 1000,
        },
        UploadItem {
            path: &missing,
            len: 10,
        },
        UploadItem {
            path: &empty,
            len: 0,
        },
    ];
    let out = r.cas.upload_batch(items).await.unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].as_ref().unwrap().id, xet_id(&data[..1000]));
    assert!(out[1].is_err());
    let e = out[2].as_ref().unwrap();
    assert_eq!(e.id.size, 0);
    assert!(r.cas.read_range(&e.id, 0..0).await.unwrap().is_empty());
}

fn apply(base: &[u8], edits: &[ComposeEdit]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    for e in edits {
        out.extend_from_slice(&base[pos..e.original_range.start as usize]);
        out.extend_from_slice(&e.data);
        pos = e.original_range.end as usize;
    }
    out.extend_from_slice(&base[pos..]);
    out
}

async fn composed_bodies_read_back_exactly(r: Remote) {
    let len = 3_000_000u64;
    let data = bytes_of(len as usize, 12);
    let base = r.upload(&data).await;
    r.commit(vec![put("cmp/f", Some(&base))]).await;
    let edit = |range: std::ops::Range<u64>, n: usize, seed: u64| ComposeEdit {
        original_range: range,
        data: Bytes::from(bytes_of(n, seed)),
    };
    let shapes: Vec<Vec<ComposeEdit>> = vec![
        // Overwrite in place near the start, insert in the middle, grow the end.
        vec![
            edit(100..200, 100, 13),
            edit(1_500_000..1_500_000, 10_000, 14),
            edit(len - 1000..len, 2000, 15),
        ],
        // Cut a range out.
        vec![edit(700_000..900_000, 0, 16)],
        // Append only.
        vec![edit(len..len, 70_000, 17)],
    ];
    let mut expect = Some(base.clone());
    for edits in shapes {
        let want = apply(&data, &edits);
        let c = r.cas.compose(&base, edits).await.unwrap();
        assert_eq!(c.id.size, want.len() as u64);
        let mut ops = vec![put("cmp/f", Some(&c.id))];
        if r.caps.compare_and_swap {
            ops.insert(
                0,
                CatalogOp::Expect {
                    path: "cmp/f".into(),
                    content: expect.clone(),
                },
            );
        }
        // A body the CAS left to go with its commit is stored by it.
        let carried: Vec<_> = c.carried.clone().into_iter().collect();
        r.catalog.commit_carrying(ops, carried).await.unwrap();
        expect = Some(c.id.clone());
        assert!(r.holds("cmp/f", Some(&c.id)).await);
        let got = r.cas.read_range(&c.id, 0..c.id.size).await.unwrap();
        assert!(
            got[..] == want[..],
            "the composed body reads back byte for byte"
        );
        let tail = r
            .cas
            .read_range(&c.id, c.id.size - 3000..c.id.size)
            .await
            .unwrap();
        assert_eq!(&tail[..], &want[want.len() - 3000..]);
        assert_eq!(
            c.id,
            xet_id(&want),
            "a composition is named as an upload of its bytes"
        );
    }
}

async fn metadata_changes_keep_the_body(r: Remote) {
    let a = r.upload(&bytes_of(1200, 18)).await;
    r.commit(vec![put("m/f", Some(&a))]).await;
    let changed = Meta {
        mode: 0o600,
        uid: 11,
        gid: 12,
        atime_ns: MTIME_NS + 1_000_000_000,
        mtime_ns: MTIME_NS + 2_000_000_000,
        ctime_ns: MTIME_NS + 3_000_000_000,
    };
    r.commit(vec![CatalogOp::SetMeta {
        path: "m/f".into(),
        meta: changed,
    }])
    .await;
    let f = r.head("m/f").await.unwrap();
    assert_eq!(f.content.as_ref(), Some(&a), "the body stays");
    assert_eq!(f.meta, r.shown(EntryKind::File, changed));
}

async fn special_files_are_kept_or_refused(r: Remote) {
    let a = r.upload(&bytes_of(900, 19)).await;
    let special = |path: &str, kind| Entry {
        path: path.into(),
        kind,
        content: None,
        target: None,
        meta: meta(0o600),
        link: None,
    };
    let res = r
        .catalog
        .commit(vec![
            put("sp/plain", Some(&a)),
            CatalogOp::Put(special("sp/fifo", EntryKind::Fifo)),
            CatalogOp::Put(special("sp/tty", EntryKind::CharDevice(0x0501))),
            CatalogOp::Put(special("sp/disk", EntryKind::BlockDevice(0x0803))),
            CatalogOp::Put(special("sp/sock", EntryKind::Socket)),
        ])
        .await;
    if !r.caps.special_files {
        assert!(
            res.is_err(),
            "special files where none are kept must be refused"
        );
        assert!(
            r.head("sp/plain").await.is_none(),
            "a refused batch applies nothing"
        );
        return;
    }
    res.unwrap();
    for (p, kind) in [
        ("sp/fifo", EntryKind::Fifo),
        ("sp/tty", EntryKind::CharDevice(0x0501)),
        ("sp/disk", EntryKind::BlockDevice(0x0803)),
        ("sp/sock", EntryKind::Socket),
    ] {
        let e = r.head(p).await.unwrap();
        assert_eq!((e.kind, e.meta), (kind, meta(0o600)), "{p}");
    }
}

/// `CatalogOp::Put`: "the path keeps its hard-link group (`entry.link` is ignored)".
async fn a_put_ignores_the_link_its_entry_names(r: Remote) {
    if !r.caps.hard_links {
        return; // no groups to join: covered by hard_links_share_a_body_or_are_refused
    }
    let a = r.upload(&bytes_of(2700, 20)).await;
    let b = r.upload(&bytes_of(2800, 21)).await;
    r.commit(vec![
        put("pl/a", Some(&a)),
        CatalogOp::Link {
            from: "pl/a".into(),
            to: "pl/b".into(),
        },
    ])
    .await;
    let group = r.head("pl/a").await.unwrap().link.expect("a link group");
    let foreign = Entry {
        link: Some(group),
        ..file("pl/fresh", Some(&b))
    };
    r.commit(vec![CatalogOp::Put(foreign)]).await;
    assert_eq!(r.head("pl/fresh").await.unwrap().link, None);
    assert_eq!(
        r.catalog.link_paths(group).await.unwrap(),
        strings(&["pl/a", "pl/b"])
    );
    // A put at a name of the group keeps it in the group, whatever its entry says.
    let unlinked = Entry {
        link: None,
        ..file("pl/b", Some(&b))
    };
    r.commit(vec![CatalogOp::Put(unlinked)]).await;
    assert_eq!(r.head("pl/b").await.unwrap().link, Some(group));
    assert!(r.holds("pl/a", Some(&b)).await);
}

/// `Catalog::check_path` says which names the catalog can hold: each it allows is stored and
/// found again under exactly that name; each it refuses fails the commit naming it.
async fn names_are_held_exactly_where_check_path_allows(r: Remote) {
    let a = r.upload(&bytes_of(800, 22)).await;
    let names = [
        "nm/sp ace",
        "nm/ünïcødé",
        "nm/ctl\u{1}name",
        "nm/tab\tname",
        "nm/q?#%&=+",
        "nm/back\\slash",
    ];
    for name in names {
        let allowed = r.catalog.check_path(name).is_ok();
        let res = r.catalog.commit(vec![put(name, Some(&a))]).await;
        if allowed {
            res.unwrap_or_else(|e| panic!("{name:?} is allowed but refused: {e}"));
            assert!(r.holds(name, Some(&a)).await, "{name:?}");
            assert!(
                r.names("nm").await.iter().any(|n| n == name),
                "{name:?} listed"
            );
        } else {
            assert!(
                res.is_err(),
                "{name:?} is refused by check_path but committed"
            );
            let head = r.catalog.head(name).await;
            assert!(!matches!(head, Ok(Some(_))), "{name:?}: {head:?}");
        }
    }
}

/// Looking up a name the catalog cannot hold finds nothing (a lookup is no error: the VFS
/// answers ENOENT, not EIO).
async fn a_name_check_path_refuses_is_not_found(r: Remote) {
    for name in ["nm/ctl\u{1}name", "nm/a\u{7f}b"] {
        if r.catalog.check_path(name).is_err() {
            assert_eq!(r.catalog.head(name).await.unwrap(), None, "{name:?}");
            assert!(
                r.catalog.list_dir(name).await.unwrap().is_empty(),
                "{name:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Faults (`remote::fault` around the remote under test).

impl Remote {
    /// The same remote behind the fault wrappers, and their switches.
    fn faulty(self) -> (Remote, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        let (catalog, cas) = fault::wrap(self.catalog, self.cas, faults.clone());
        let r = Remote {
            catalog,
            cas,
            ..self
        };
        (r, faults)
    }

    /// Everything below `dir`, each path with its kind, body and metadata.
    async fn everything(&self, dir: &str) -> Vec<(String, EntryKind, Option<FileId>, Meta)> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_string()];
        while let Some(d) = todo.pop() {
            for e in self.catalog.list_dir(&d).await.unwrap() {
                if e.kind == EntryKind::Dir {
                    todo.push(e.path.clone());
                }
                out.push((e.path, e.kind, e.content, e.meta));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

async fn a_failed_batch_changes_nothing_visible(r: Remote) {
    let (r, faults) = r.faulty();
    let a = r.upload(&bytes_of(5000, 11)).await;
    let b = r.upload(&bytes_of(7000, 12)).await;
    r.commit(vec![
        put("d/f", Some(&a)),
        put("d/g", Some(&b)),
        put("top", None),
    ])
    .await;
    let before = r.everything("").await;
    let revision = r.catalog.revision().await.unwrap();
    // A batch of every kind of op, failing with each kind of error a remote gives.
    let batch = || {
        vec![
            put("d/new", Some(&b)),
            put("top", Some(&a)),
            CatalogOp::Delete { path: "d/g".into() },
            CatalogOp::Rename {
                from: "d/f".into(),
                to: "e/f".into(),
            },
        ]
    };
    let errors = [
        RemoteError::Other("injected".into()),
        RemoteError::Timeout("injected".into()),
        RemoteError::RateLimited("injected".into()),
        RemoteError::Quota("injected".into()),
        RemoteError::PermissionDenied("injected".into()),
    ];
    for e in errors {
        let want = e.to_string();
        faults.commit.fail(1, e);
        let err = r.catalog.commit(batch()).await.unwrap_err();
        assert_eq!(err.to_string(), want, "the injected error, typed");
        assert_eq!(
            r.everything("").await,
            before,
            "a failed batch changed something"
        );
        assert_eq!(r.catalog.revision().await.unwrap(), revision);
    }
    // The same batch, retried once the remote recovers, applies exactly once.
    r.commit(batch()).await;
    assert!(r.holds("d/new", Some(&b)).await);
    assert!(r.holds("top", Some(&a)).await);
    assert!(r.head("d/g").await.is_none());
    assert!(r.head("d/f").await.is_none());
    assert!(r.holds("e/f", Some(&a)).await);
    assert_eq!(
        faults.commit.calls(),
        7,
        "one commit, five failures, one retry"
    );
}

async fn a_failed_read_returns_the_typed_error(r: Remote) {
    let (r, faults) = r.faulty();
    let data = bytes_of(20_000, 13);
    let id = r.upload(&data).await;
    faults
        .read
        .fail(1, RemoteError::NotFound("injected".into()));
    let err = r.cas.read_range(&id, 100..5000).await.unwrap_err();
    assert!(matches!(err, RemoteError::NotFound(_)), "{err:?}");
    assert_eq!(err.errno(), libc::ENOENT);
    faults
        .read
        .fail(1, RemoteError::Integrity("injected".into()));
    let err = r.cas.read_range(&id, 0..20_000).await.unwrap_err();
    assert!(matches!(err, RemoteError::Integrity(_)), "{err:?}");
    // The next read is served, exactly.
    let got = r.cas.read_range(&id, 100..5000).await.unwrap();
    assert_eq!(&got[..], &data[100..5000]);
    // A failed upload stores nothing the catalog could name, and is typed too.
    faults.upload.fail(1, RemoteError::Quota("injected".into()));
    let p = r.stage(&bytes_of(3000, 14));
    let err = r
        .cas
        .upload_batch(vec![UploadItem {
            path: &p,
            len: 3000,
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Quota(_)), "{err:?}");
    assert_eq!(err.errno(), libc::ENOSPC);
}
