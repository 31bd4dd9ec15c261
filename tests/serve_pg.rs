//! `serve`'s bucket catalog on PostgreSQL (a throwaway cluster from Debian's package), beyond
//! the `Catalog` contract (`catalog_contract.rs`, `postgres::*`): several replicas' pools
//! committing to one bucket at once never interleave a batch and keep compare-and-swap exact;
//! the running totals equal a recount; the change history names what changed; buckets do not
//! see each other.

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::collections::BTreeSet;
use std::sync::Arc;

use xetmount::remote::{Catalog, CatalogOp, Changes, Entry, EntryKind, FileId, Meta, RemoteError};
use xetmount::server::pg::{connect, PgCatalog};

fn meta() -> Meta {
    Meta {
        mode: 0o644,
        uid: 1,
        gid: 1,
        atime_ns: 1,
        mtime_ns: 2,
        ctime_ns: 3,
    }
}

fn body(n: u64) -> FileId {
    FileId {
        hash: format!("{n:064x}"),
        size: 100 + n,
    }
}

fn file_with(path: &str, content: Option<FileId>) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File,
        content,
        target: None,
        meta: meta(),
        link: None,
    }
}

fn file(path: &str, n: u64) -> Entry {
    file_with(path, Some(body(n)))
}

#[test]
fn batches_from_several_replicas_never_interleave_and_compare_and_swap_holds() {
    let cluster = pg::Pg::start();
    common::runtime().block_on(async {
        // Three replicas: three pools over one database, each with its catalog of the bucket.
        let mut replicas = Vec::new();
        for _ in 0..3 {
            let pool = connect(&cluster.url()).await.unwrap();
            replicas.push(Arc::new(PgCatalog::open(pool, "team/data").await.unwrap()));
        }
        replicas[0]
            .commit(vec![CatalogOp::Put(file("counter", 0))])
            .await
            .unwrap();
        // Every writer reads the counter and replaces it expecting what it read: a
        // read-modify-write each. Exactly one writer wins each step; the others are told the
        // current version, and retry.
        let mut tasks = Vec::new();
        for w in 0..6u64 {
            let c = replicas[w as usize % 3].clone();
            tasks.push(tokio::spawn(async move {
                let mut won = Vec::new();
                for _ in 0..5 {
                    loop {
                        let seen = c.head("counter").await.unwrap().unwrap();
                        let n = seen.content.as_ref().unwrap().size - 100;
                        let ops = vec![
                            CatalogOp::Expect {
                                path: "counter".into(),
                                content: seen.content.clone(),
                            },
                            CatalogOp::Put(file("counter", n + 1)),
                            CatalogOp::Put(file(&format!("log/{w}-{n}"), n)),
                        ];
                        match c.commit(ops).await {
                            Ok(rev) => {
                                won.push((rev, n + 1));
                                break;
                            }
                            Err(RemoteError::Conflict(c)) => {
                                assert_eq!(c.len(), 1);
                                assert!(c[0].current.is_some());
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                won
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        // 30 increments, each a distinct revision, each value exactly once: no lost update.
        assert_eq!(all.len(), 30);
        let revs: BTreeSet<u64> = all.iter().map(|(r, _)| *r).collect();
        let values: BTreeSet<u64> = all.iter().map(|(_, v)| *v).collect();
        assert_eq!(revs.len(), 30);
        assert_eq!(values, (1..=30).collect());
        let c = &replicas[1];
        assert_eq!(c.revision().await.unwrap(), 31);
        assert_eq!(
            c.head("counter").await.unwrap().unwrap().content,
            Some(body(30))
        );
        // Every batch's second Put landed with its first: 30 log entries, one per value.
        let logs = c.list_dir("log").await.unwrap();
        assert_eq!(logs.len(), 30);
    });
}

#[test]
fn totals_history_and_buckets_stay_exact() {
    let cluster = pg::Pg::start();
    common::runtime().block_on(async {
        let pool = connect(&cluster.url()).await.unwrap();
        let a = PgCatalog::open(pool.clone(), "ns/a").await.unwrap();
        let b = PgCatalog::open(pool.clone(), "ns/b").await.unwrap();
        let r1 = a
            .commit(vec![
                CatalogOp::Put(file("x/1", 1)),
                CatalogOp::Put(file("x/2", 2)),
                CatalogOp::Put(file("y/3", 3)),
                CatalogOp::Put(file_with("empty", None)),
            ])
            .await
            .unwrap();
        b.commit(vec![CatalogOp::Put(file("x/1", 9))])
            .await
            .unwrap();
        let r2 = a
            .commit(vec![
                CatalogOp::Rename {
                    from: "x".into(),
                    to: "z".into(),
                },
                CatalogOp::Put(file("z/1", 5)),
                CatalogOp::Link {
                    from: "y/3".into(),
                    to: "w/3".into(),
                },
            ])
            .await
            .unwrap();
        a.commit(vec![CatalogOp::Delete { path: "y".into() }])
            .await
            .unwrap();
        // Totals against a recount of what is listed.
        let files = a.files_under("").await.unwrap();
        let bytes: u64 = files.iter().map(|e| e.size()).sum();
        assert_eq!(a.totals().await.unwrap(), (files.len() as u64, bytes));
        assert_eq!(
            files.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["empty", "w/3", "z/1", "z/2"]
        );
        assert!(a.has_empty_file().await.unwrap());
        assert!(a.references(&body(3).hash).await.unwrap());
        assert!(
            !a.references(&body(9).hash).await.unwrap(),
            "b's body is b's"
        );
        assert_eq!(b.totals().await.unwrap(), (1, 109));
        assert!(b.head("z").await.unwrap().is_none());
        // History: the directories each span of revisions changed.
        match a.changes_since(r1).await.unwrap() {
            Changes::Dirs { revision, dirs } => {
                assert_eq!(revision, r2 + 1);
                let dirs: BTreeSet<String> = dirs.into_iter().collect();
                // `x` vanished (its parent's listing says so); `y` shows the new link
                // count; `w` and `z` gained entries.
                assert_eq!(
                    dirs,
                    ["", "w", "y", "z"].iter().map(|s| s.to_string()).collect()
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            a.changes_since(99).await.unwrap(),
            Changes::Reset { .. }
        ));
        // A second open of an existing bucket (another replica starting) keeps it whole.
        let again = PgCatalog::open(pool, "ns/a").await.unwrap();
        assert_eq!(again.revision().await.unwrap(), r2 + 1);
        assert_eq!(again.totals().await.unwrap(), a.totals().await.unwrap());
    });
}

/// The bucket registry on PostgreSQL keeps what `server.db` keeps (listing by namespace and
/// search, visibility, times, body records with duplicates in one call), and a rename or
/// delete moves or removes the bucket's catalog rows with it, totals included. Two replicas
/// opening the registry read one signing key.
#[test]
fn the_registry_moves_and_deletes_catalogs_whole_and_replicas_share_one_key() {
    use xetmount::server::buckets::Buckets;
    use xetmount::server::pg::PgBuckets;

    let cluster = pg::Pg::start();
    common::runtime().block_on(async {
        let pool = connect(&cluster.url()).await.unwrap();
        let first = PgBuckets::open(pool.clone()).await.unwrap();
        let second = PgBuckets::open(connect(&cluster.url()).await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            first.shared_secret().await.unwrap(),
            second.shared_secret().await.unwrap()
        );
        let b = Buckets::new(Box::new(first));
        assert!(b.create("alice/one", false).await.unwrap());
        assert!(!b.create("alice/one", true).await.unwrap());
        assert!(b.create("alice/two", true).await.unwrap());
        assert!(b.create("alicex/three", false).await.unwrap());
        assert!(b.create("ünï/cödé", false).await.unwrap());
        let ids = |v: Vec<xetmount::server::buckets::BucketInfo>| -> Vec<String> {
            v.into_iter().map(|i| i.id).collect()
        };
        assert_eq!(
            ids(b.list("alice", "").await.unwrap()),
            ["alice/one", "alice/two"]
        );
        assert_eq!(ids(b.list("alice", "tw").await.unwrap()), ["alice/two"]);
        assert_eq!(ids(b.list("ünï", "öd").await.unwrap()), ["ünï/cödé"]);
        assert_eq!(b.all_page("", 100).await.unwrap().len(), 4);
        let before = b.info("alice/one").await.unwrap().unwrap().updated_ms;
        b.touch("alice/one").await.unwrap();
        assert!(b.info("alice/one").await.unwrap().unwrap().updated_ms > before);

        let h = body(1).hash;
        b.note_hashes("alice/two", &[&h, &h], false).await.unwrap();
        b.note_hashes("alice/two", &[&h], true).await.unwrap();
        b.note_hashes("alice/two", &[&h], false).await.unwrap();
        assert!(b.was_uploaded("alice/two", &h).await.unwrap());
        assert_eq!(b.buckets_with(&h).await.unwrap(), ["alice/two"]);

        let two = b.bucket("alice/two").await.unwrap();
        two.commit(vec![
            CatalogOp::Put(Entry::dir("d".into(), meta())),
            CatalogOp::Put(file("d/f", 1)),
            CatalogOp::Put(file("g", 2)),
        ])
        .await
        .unwrap();
        assert_eq!(two.catalog.totals().await.unwrap(), (2, 203));
        assert!(b.rename("alice/two", "bob/two").await.unwrap());
        assert!(!b.rename("alice/two", "bob/x").await.unwrap());
        assert!(b.rename("alice/one", "bob/two").await.is_err());
        assert!(b.info("bob/two").await.unwrap().unwrap().private);
        assert_eq!(b.buckets_with(&h).await.unwrap(), ["bob/two"]);
        let moved = b.bucket("bob/two").await.unwrap();
        assert_eq!(moved.catalog.totals().await.unwrap(), (2, 203));
        assert!(moved.catalog.head("d/f").await.unwrap().is_some());
        // The old name opens empty if it is made again.
        assert!(b.create("alice/two", false).await.unwrap());
        let again = b.bucket("alice/two").await.unwrap();
        assert!(again.catalog.head("d/f").await.unwrap().is_none());
        assert_eq!(again.catalog.totals().await.unwrap(), (0, 0));

        assert!(b.delete("bob/two").await.unwrap());
        assert!(!b.delete("bob/two").await.unwrap());
        assert!(b.buckets_with(&h).await.unwrap().is_empty());
        assert!(b.create("bob/two", false).await.unwrap());
        let fresh = b.bucket("bob/two").await.unwrap();
        assert!(fresh.catalog.head("g").await.unwrap().is_none());
        assert_eq!(fresh.catalog.totals().await.unwrap(), (0, 0));
    });
}
