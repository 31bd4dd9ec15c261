//! `xetmount serve-migrate DIR --catalog postgres://... --objects URL`: copy a single-directory
//! deployment into shared stores, then check every file of every bucket there.
//!
//! What moves: every xorb (each checked against its hash as the object store takes it, its
//! footer rebuilt from its chunks), every shard (its files and dedup chunks indexed), every
//! bucket with its visibility, times, body records and catalog (all entries, hard links and
//! metadata, at the same revision), every repo with all its commits, branches, tags, trees and
//! regular files, and the sha256 index repo commits resolve LFS files through. A rerun replaces each bucket's catalog and skips stored
//! xorbs, so an interrupted migration is finished by running it again. The directory is
//! locked throughout: `serve` must be stopped.
//!
//! The check: for each file a catalog names, the object store's index must describe it with
//! its size, and its xet hash, recomputed from the hashes of the chunks the index lists (each
//! checked against its bytes when its xorb was stored), must be its name. The same for every
//! xet file any tree of any repo commit names; a regular file's content must hash to its id.

use std::sync::Arc;

use xet_core_structures::merklehash::{file_hash, MerkleHash};
use xet_core_structures::metadata_shard::streaming_shard::MDBMinimalShard;
use xet_runtime::core::XetContext;

use super::buckets::sqlite::SqliteBuckets;
use super::buckets::BucketStore;
use super::repos::sqlite::SqliteRepos;
use super::repos::tree::{self, Node};
use super::repos::{RepoDump, RepoStore};
use super::store::object::ObjectCas;
use super::store::ServedCas;
use super::{objects, pg};
use crate::remote::local::{lock_store, XetCas};
use crate::remote::{Entry, EntryKind};

/// What a migration did.
#[derive(Debug, Default)]
pub struct Migrated {
    pub buckets: u64,
    pub repos: u64,
    pub files: u64,
    pub bytes: u64,
    pub xorbs: u64,
    pub shards: u64,
}

/// Rows of a registry or catalog read per query.
const PAGE: usize = 1000;

/// Migrate directory deployment `dir` into `catalog` + `objects`; `progress` hears a line per
/// step. The error is one sentence.
pub async fn migrate(
    dir: &std::path::Path,
    catalog: &str,
    objects_url: &str,
    ctx: XetContext,
    progress: &dyn Fn(&str),
) -> Result<Migrated, String> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: crate::remote::RemoteError| format!("{what}: {e}")
    };
    if !dir.join(super::MARKER).exists() {
        return Err(format!(
            "{} is not a store made by `xetmount serve`",
            dir.display()
        ));
    }
    let _lock = lock_store(dir).map_err(|e| e.to_string())?;
    let source_repos = SqliteRepos::open(dir).map_err(fail("cannot read repos.db"))?;
    let source_cas = XetCas::open(ctx, &dir.join("cas"))
        .await
        .map_err(fail("cannot open the directory's CAS"))?;
    let source = SqliteBuckets::open(dir).map_err(fail("cannot open server.db"))?;

    let pool = pg::connect(catalog).await?;
    let registry = pg::PgBuckets::open(pool.clone())
        .await
        .map_err(fail("cannot set up the catalog database"))?;
    let dest_repos = pg::PgRepos::open(pool.clone())
        .await
        .map_err(fail("cannot set up the repo tables"))?;
    let index = pg::CasIndex::open(pool.clone())
        .await
        .map_err(fail("cannot set up the CAS index"))?;
    let objects = Arc::new(objects::Objects::open(objects_url)?);
    let dest = ObjectCas::new(objects, index, Default::default());
    let mut done = Migrated::default();

    // Xorbs first, then the shards that name them (a shard is taken only once they are in).
    let xorbs = source_cas
        .stored_xorbs()
        .map_err(fail("cannot list the xorbs"))?;
    progress(&format!("copying {} xorbs", xorbs.len()));
    for h in &xorbs {
        if dest.has_xorb(h).await.map_err(fail("index"))? {
            continue;
        }
        let len = source_cas
            .xorb_len(h)
            .await
            .map_err(fail("cannot read a xorb"))?
            .unwrap_or(0);
        let body = source_cas
            .xorb_bytes(h, 0..len)
            .await
            .map_err(fail("cannot read a xorb"))?;
        dest.put_xorb(*h, body)
            .await
            .map_err(|e| format!("xorb {} was not taken: {e}", h.hex()))?;
        done.xorbs += 1;
    }
    let shards = source_cas
        .shard_files()
        .map_err(fail("cannot list the shards"))?;
    progress(&format!("indexing {} shards", shards.len()));
    for p in &shards {
        let bytes = bytes::Bytes::from(
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        );
        let shard = MDBMinimalShard::from_reader(&mut std::io::Cursor::new(&bytes), true, true)
            .map_err(|e| format!("{} is not a shard: {e}", p.display()))?;
        dest.put_shard(bytes, &shard)
            .await
            .map_err(|e| format!("shard {} was not taken: {e}", p.display()))?;
        done.shards += 1;
    }

    let mut after = String::new();
    loop {
        let page = source
            .all_page(&after, PAGE)
            .await
            .map_err(fail("cannot list the buckets"))?;
        let Some(last) = page.last() else { break };
        after = last.id.clone();
        for info in page {
            let (files, bytes) = migrate_bucket(&source, &registry, &pool, &dest, &info).await?;
            progress(&format!(
                "{}: {files} files, {bytes} bytes, checked",
                info.id
            ));
            done.buckets += 1;
            done.files += files;
            done.bytes += bytes;
        }
    }

    let pairs = source_repos
        .sha256_pairs()
        .await
        .map_err(fail("cannot read the sha256 index"))?;
    for chunk in pairs.chunks(PAGE) {
        dest_repos
            .note_sha256(chunk)
            .await
            .map_err(fail("cannot copy the sha256 index"))?;
    }
    for key in source_repos
        .keys()
        .await
        .map_err(fail("cannot list the repos"))?
    {
        let dump = source_repos
            .export(&key)
            .await
            .map_err(fail("cannot read a repo"))?
            .ok_or_else(|| format!("repo {key} vanished while it was being migrated"))?;
        let (files, bytes) = check_repo(&dest, &dump)
            .await
            .map_err(|m| format!("repo {key}: {m}"))?;
        let fail = |e: crate::remote::RemoteError| format!("repo {key}: {e}");
        // A rerun replaces what an earlier run copied.
        if dest_repos.export(&key).await.map_err(fail)?.as_ref() != Some(&dump) {
            dest_repos.delete(&key).await.map_err(fail)?;
            dest_repos.import(&dump).await.map_err(fail)?;
        }
        progress(&format!(
            "{key}: {} commits, {files} distinct files, {bytes} bytes, checked",
            dump.commits.len()
        ));
        done.repos += 1;
        done.files += files;
        done.bytes += bytes;
    }
    Ok(done)
}

/// Check every file of every commit of repo `d`: its xet files against `dest`'s index, its
/// regular files against their ids. The distinct files and their bytes.
async fn check_repo(dest: &ObjectCas, d: &RepoDump) -> Result<(u64, u64), String> {
    let mut seen = std::collections::HashSet::new();
    let (mut files, mut bytes) = (0, 0);
    for (oid, data) in &d.blobs {
        if tree::blob_oid(data) != *oid {
            return Err(format!("the content stored as {oid} does not hash to it"));
        }
    }
    for (oid, body) in &d.trees {
        let t = tree::decode(body).map_err(|e| format!("tree {oid}: {e}"))?;
        for (name, node) in t {
            let Node::File(f) = node else { continue };
            if !seen.insert(f.oid.clone()) {
                continue;
            }
            match &f.lfs {
                Some(l) => check_body(dest, &name, &l.xet, f.size).await?,
                None if !d.blobs.iter().any(|(o, _)| *o == f.oid) => {
                    return Err(format!("{name}: its content {} is missing", f.oid))
                }
                None => {}
            }
            files += 1;
            bytes += f.size;
        }
    }
    Ok((files, bytes))
}

/// Copy one bucket's registry row, body records and catalog, then check its files in `dest`.
async fn migrate_bucket(
    source: &SqliteBuckets,
    registry: &pg::PgBuckets,
    pool: &deadpool_postgres::Pool,
    dest: &ObjectCas,
    info: &super::buckets::BucketInfo,
) -> Result<(u64, u64), String> {
    let id = &info.id;
    let fail = |e: crate::remote::RemoteError| format!("bucket {id}: {e}");
    let catalog = source.open_catalog(id).await.map_err(fail)?;
    let revision = catalog.revision().await.map_err(fail)?;
    let root = catalog
        .head("")
        .await
        .map_err(fail)?
        .ok_or_else(|| format!("bucket {id} has no root"))?;
    let mut entries = vec![root];
    let mut after = String::new();
    loop {
        let page = catalog.tree_page("", &after, PAGE).await.map_err(fail)?;
        let Some(last) = page.last() else { break };
        after = last.path.clone();
        entries.extend(page);
    }
    let (mut files, mut bytes) = (0, 0);
    for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
        check_file(dest, e)
            .await
            .map_err(|m| format!("bucket {id}: {m}"))?;
        files += 1;
        bytes += e.size();
    }
    registry.import(info).await.map_err(fail)?;
    let records = source.hash_records(id).await.map_err(fail)?;
    for uploaded in [false, true] {
        let hashes: Vec<&str> = records
            .iter()
            .filter(|(_, u)| *u == uploaded)
            .map(|(h, _)| h.as_str())
            .collect();
        registry
            .note_hashes(id, &hashes, uploaded)
            .await
            .map_err(fail)?;
    }
    pg::PgCatalog::import(pool, id, &entries, revision)
        .await
        .map_err(fail)?;
    Ok((files, bytes))
}

/// Check file `e` against the object store's index: its size, and its hash recomputed from
/// the chunks the index lists.
async fn check_file(dest: &ObjectCas, e: &Entry) -> Result<(), String> {
    match &e.content {
        Some(c) => check_body(dest, &e.path, &c.hash, c.size).await,
        None => Ok(()),
    }
}

/// Check body `hex` of `size` bytes (named `path` in messages) against `dest`'s index.
async fn check_body(dest: &ObjectCas, path: &str, hex: &str, size: u64) -> Result<(), String> {
    if hex == super::scope::EMPTY_HASH && size == 0 {
        return Ok(());
    }
    let hash =
        MerkleHash::from_hex(hex).map_err(|_| format!("{path} names {hex:?}, not a hash"))?;
    let lists = dest
        .chunk_lists(&hash)
        .await
        .map_err(|err| format!("{path}: {err}"))?
        .ok_or_else(|| format!("{path}: its body {hex} is in no shard"))?;
    let chunks: Vec<(MerkleHash, u64)> = lists.chunks.into_iter().flatten().collect();
    let found: u64 = chunks.iter().map(|(_, n)| n).sum();
    if found != size || file_hash(&chunks) != hash {
        return Err(format!(
            "{path}: the migrated body does not reproduce {hex} ({found} bytes, {size} expected)"
        ));
    }
    Ok(())
}
