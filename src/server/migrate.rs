//! `xetmount serve-migrate DIR --catalog postgres://... --objects URL`: copy a single-directory
//! deployment into shared stores, then check every file of every bucket there.
//!
//! What moves: every xorb (each checked against its hash as the object store takes it, its
//! footer rebuilt from its chunks), every shard (its files and dedup chunks indexed), every
//! bucket with its visibility, times, body records and catalog (all entries, hard links and
//! metadata, at the same revision). A rerun replaces each bucket's catalog and skips stored
//! xorbs, so an interrupted migration is finished by running it again. The directory is
//! locked throughout: `serve` must be stopped.
//!
//! The check: for each file a catalog names, the object store's index must describe it with
//! its size, and its xet hash, recomputed from the hashes of the chunks the index lists (each
//! checked against its bytes when its xorb was stored), must be its name.

use std::sync::Arc;

use xet_core_structures::merklehash::{file_hash, MerkleHash};
use xet_core_structures::metadata_shard::streaming_shard::MDBMinimalShard;
use xet_runtime::core::XetContext;

use super::buckets::sqlite::SqliteBuckets;
use super::buckets::BucketStore;
use super::store::object::ObjectCas;
use super::store::ServedCas;
use super::{objects, pg};
use crate::remote::local::{lock_store, XetCas};
use crate::remote::{Entry, EntryKind};

/// What a migration did.
#[derive(Debug, Default)]
pub struct Migrated {
    pub buckets: u64,
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
    let repos = super::repos::Repos::open(dir).map_err(fail("cannot read the repos"))?;
    if repos.count().map_err(fail("cannot read the repos"))? > 0 {
        return Err(format!(
            "{} hosts repos, which PostgreSQL deployments do not hold yet; nothing was migrated",
            dir.display()
        ));
    }
    let source_cas = XetCas::open(ctx, &dir.join("cas"))
        .await
        .map_err(fail("cannot open the directory's CAS"))?;
    let source = SqliteBuckets::open(dir).map_err(fail("cannot open server.db"))?;

    let pool = pg::connect(catalog).await?;
    let registry = pg::PgBuckets::open(pool.clone())
        .await
        .map_err(fail("cannot set up the catalog database"))?;
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
    Ok(done)
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
    let Some(content) = &e.content else {
        return Ok(());
    };
    let hash = MerkleHash::from_hex(&content.hash)
        .map_err(|_| format!("{} names {:?}, not a hash", e.path, content.hash))?;
    let lists = dest
        .chunk_lists(&hash)
        .await
        .map_err(|err| format!("{}: {err}", e.path))?
        .ok_or_else(|| format!("{}: its body {} is in no shard", e.path, content.hash))?;
    let chunks: Vec<(MerkleHash, u64)> = lists.chunks.into_iter().flatten().collect();
    let size: u64 = chunks.iter().map(|(_, n)| n).sum();
    if size != content.size || file_hash(&chunks) != hash {
        return Err(format!(
            "{}: the migrated body does not reproduce {} ({size} bytes, {} expected)",
            e.path, content.hash, content.size
        ));
    }
    Ok(())
}
