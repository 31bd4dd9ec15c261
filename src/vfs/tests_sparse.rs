//! Sparse writes (issue 3) against a real local store: what crosses the wire, proven with the
//! mount's counters, and every result read back byte for byte after a remount.

use super::*;
use crate::vfs::StatsSnapshot;

/// One user action on an open file, applied to the VFS and to a byte model.
#[derive(Clone, Debug)]
enum Op {
    Write(u64, Vec<u8>),
    Resize(u64),
}

fn apply(model: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(off, d) => {
            let end = *off as usize + d.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[*off as usize..end].copy_from_slice(d);
        }
        Op::Resize(n) => model.resize(*n as usize, 0),
    }
}

/// Open `path` for writing, run `ops`, close, fsync. Returns the counters' growth.
async fn edit(v: &Vfs, path: &str, ops: &[Op], model: &mut Vec<u8>) -> StatsSnapshot {
    let before = v.stats();
    let ino = resolve(v, path).await.unwrap();
    let o = v.open(ino, true, false).await.unwrap();
    for op in ops {
        match op {
            Op::Write(off, d) => {
                assert_eq!(
                    v.write(o.fh, *off, d.clone()).await.unwrap() as usize,
                    d.len()
                );
            }
            Op::Resize(n) => {
                v.setattr(
                    ino,
                    SetAttr {
                        size: Some(*n),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            }
        }
        apply(model, op);
    }
    v.close(o.fh).await.unwrap();
    v.release(o.fh).unwrap();
    v.fsync(ino).await.unwrap();
    delta(before, v.stats())
}

fn delta(a: StatsSnapshot, b: StatsSnapshot) -> StatsSnapshot {
    StatsSnapshot {
        bytes_fetched: b.bytes_fetched - a.bytes_fetched,
        compose_base_bytes_read: b.compose_base_bytes_read - a.compose_base_bytes_read,
        compose_dirty_chunk_bytes: b.compose_dirty_chunk_bytes - a.compose_dirty_chunk_bytes,
        compose_terms_last: b.compose_terms_last,
        compose_terms_max: b.compose_terms_max,
        bytes_uploaded_new: b.bytes_uploaded_new - a.bytes_uploaded_new,
        files_uploaded: b.files_uploaded - a.files_uploaded,
        files_composed: b.files_composed - a.files_composed,
        compose_fallbacks: b.compose_fallbacks - a.compose_fallbacks,
        flush_commits: b.flush_commits - a.flush_commits,
        flush_failures: b.flush_failures - a.flush_failures,
        commit_verify_failures: b.commit_verify_failures - a.commit_verify_failures,
        staging_bytes: b.staging_bytes,
        staging_evictions: b.staging_evictions - a.staging_evictions,
        ..b
    }
}

async fn committed_file(dir: &Path, len: usize) -> (Mounted, Vec<u8>) {
    let m = mount_at(dir).await;
    let data = random(len, 11);
    let ino = write_file(&m.vfs, ROOT_INO, "f", &data).await;
    m.vfs.fsync(ino).await.unwrap();
    (remount(m, dir).await, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_compose_without_downloading_and_survive_remount() {
    let (_d, dir) = tmp();
    let (mut m, mut model) = committed_file(&dir, 3_000_000).await;
    let cases: Vec<(&str, Vec<Op>)> = vec![
        ("start", vec![Op::Write(0, vec![1; 4096])]),
        ("middle", vec![Op::Write(1_500_000, vec![2; 4096])]),
        ("end", vec![Op::Write(3_000_000 - 100, vec![3; 100])]),
        ("append", vec![Op::Write(3_000_000, vec![4; 70_000])]),
        ("past eof", vec![Op::Write(3_200_000, vec![5; 10])]),
        ("grow", vec![Op::Resize(3_500_000)]),
        ("shrink", vec![Op::Resize(2_000_000)]),
        (
            "shrink through a dirty range",
            vec![Op::Write(1_000_000, vec![6; 50_000]), Op::Resize(1_020_000)],
        ),
        (
            "scattered",
            vec![
                Op::Write(10, vec![7; 10]),
                Op::Write(500_000, vec![8; 4096]),
                Op::Write(1_000_000, vec![9; 1]),
            ],
        ),
    ];
    for (name, ops) in cases {
        let d = edit(&m.vfs, "f", &ops, &mut model).await;
        assert_eq!(d.bytes_fetched, 0, "{name}: the edit downloaded data");
        assert_eq!((d.files_composed, d.files_uploaded), (1, 0), "{name}");
        assert!(
            d.bytes_uploaded_new < 1 << 20,
            "{name}: stored {} new bytes",
            d.bytes_uploaded_new
        );
        m = remount(m, &dir).await;
        assert!(
            read_all(&m.vfs, "f").await == model,
            "{name}: content differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_for_write_and_hole_reads_fetch_only_what_is_read_once() {
    let (_d, dir) = tmp();
    let (m, data) = committed_file(&dir, 3_000_000).await;
    let v = &m.vfs;
    let ino = resolve(v, "f").await.unwrap();
    let before = v.stats();
    let o = v.open(ino, true, false).await.unwrap();
    assert_eq!(
        v.stats().bytes_fetched,
        before.bytes_fetched,
        "open fetched"
    );
    let got = v.read(o.fh, 1_000_000, 4096).await.unwrap();
    assert_eq!(&got[..], &data[1_000_000..1_004_096]);
    let after_first = v.stats().bytes_fetched;
    assert!(after_first > before.bytes_fetched);
    // The fill landed in staging: the same range again costs nothing.
    let again = v.read(o.fh, 1_000_000, 4096).await.unwrap();
    assert_eq!(again, got);
    assert_eq!(v.stats().bytes_fetched, after_first);
    // A read that straddles a write sees both.
    v.write(o.fh, 1_002_000, vec![0xAB; 100]).await.unwrap();
    let mixed = v.read(o.fh, 1_001_900, 300).await.unwrap();
    assert_eq!(&mixed[..100], &data[1_001_900..1_002_000]);
    assert!(mixed[100..200].iter().all(|b| *b == 0xAB));
    assert_eq!(&mixed[200..], &data[1_002_100..1_002_200]);
    v.release(o.fh).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_reopen_commits_nothing_and_keeps_the_identity() {
    let (_d, dir) = tmp();
    let (m, data) = committed_file(&dir, 1_000_000).await;
    let v = &m.vfs;
    let ino = resolve(v, "f").await.unwrap();
    let before = v.stats();
    let o = v.open(ino, true, false).await.unwrap();
    v.read(o.fh, 0, 10).await.unwrap();
    v.release(o.fh).unwrap();
    v.fsync(ino).await.unwrap();
    let d = delta(before, v.stats());
    assert_eq!(
        (d.flush_commits, d.files_composed, d.files_uploaded),
        (0, 0, 0)
    );
    assert_eq!(read_all(v, "f").await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o_trunc_then_write_then_reopen_uploads_the_new_body_whole() {
    let (_d, dir) = tmp();
    let (m, _) = committed_file(&dir, 1_000_000).await;
    let v = &m.vfs;
    let ino = resolve(v, "f").await.unwrap();
    let before = v.stats();
    let o = v.open(ino, true, true).await.unwrap();
    v.write(o.fh, 0, b"fresh".to_vec()).await.unwrap();
    v.release(o.fh).unwrap();
    // Reopen while dirty: the state (no base, fully covered) carries over.
    let o = v.open(ino, true, false).await.unwrap();
    v.write(o.fh, 5, b" body".to_vec()).await.unwrap();
    v.release(o.fh).unwrap();
    v.fsync(ino).await.unwrap();
    let d = delta(before, v.stats());
    assert_eq!(d.bytes_fetched, 0);
    assert_eq!((d.files_uploaded, d.files_composed), (1, 0));
    let m = remount(m, &dir).await;
    assert_eq!(read_all(&m.vfs, "f").await, b"fresh body");
}

/// The xet-core 1.8.0 `upload_ranges` truncation, end to end: an edit in the first of
/// several segments must not lose the segments after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_before_the_last_segment_keeps_every_byte() {
    let (_d, dir) = tmp();
    let (m, mut model) = committed_file(&dir, 140 << 20).await;
    let d = edit(
        &m.vfs,
        "f",
        &[Op::Write(10 << 20, vec![0x5A; 4096])],
        &mut model,
    )
    .await;
    assert_eq!(d.files_composed, 1);
    // About one segment (64 MiB) re-chunked, not the 130 MiB after the edit.
    assert!(
        d.compose_base_bytes_read <= 70 << 20,
        "re-chunked {} bytes of the base",
        d.compose_base_bytes_read
    );
    let m = remount(m, &dir).await;
    assert!(read_all(&m.vfs, "f").await == model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_slots_on_a_committed_file_with_fsyncs_and_reopens() {
    let (_d, dir) = tmp();
    let (m, base) = committed_file(&dir, 2_000_000).await;
    let v = m.vfs.clone();
    let ino = resolve(&v, "f").await.unwrap();
    const SLOT: u64 = 100_000;
    let mut tasks = Vec::new();
    for n in 0..8u64 {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(SLOT as usize / 2, 100 + n as u32);
            let start = n * 2 * SLOT + 1234;
            for (round, c) in data.chunks(9_000).enumerate() {
                let o = v.open(ino, true, false).await.unwrap();
                let off = start + (round * 9_000) as u64;
                v.write(o.fh, off, c.to_vec()).await.unwrap();
                // Read back our own slot, through holes and staging alike.
                let got = v.read(o.fh, off, c.len() as u32).await.unwrap();
                assert_eq!(&got[..], c);
                v.release(o.fh).unwrap();
                if round % 3 == 0 {
                    v.fsync(ino).await.unwrap();
                }
            }
            (start, data)
        }));
    }
    let mut model = base;
    for t in tasks {
        let (start, data) = t.await.unwrap();
        model[start as usize..start as usize + data.len()].copy_from_slice(&data);
    }
    v.fsync(ino).await.unwrap();
    drop(v);
    let m = remount(m, &dir).await;
    assert!(read_all(&m.vfs, "f").await == model);
}

/// Mount with flushes that never fire on their own, so a "crash" (dropping the VFS without a
/// shutdown, as `kill -9` would) leaves dirty files behind.
async fn mount_lazy(dir: &Path) -> Mounted {
    mount_with(
        dir,
        |c| c.flush_debounce = Duration::from_secs(3600),
        |c, s| (c, s),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_acknowledged_write() {
    let (_d, dir) = tmp();
    let (m, big) = committed_file(&dir, 3_000_000).await;
    drop(m);
    let m = mount_lazy(&dir).await;
    let v = &m.vfs;
    // A sparse edit of a committed file, a new file, a file renamed after its write, a file
    // in a directory renamed after the write, and a dirty file that was then unlinked.
    let mut edited = big.clone();
    edit_no_flush(
        v,
        "f",
        &[Op::Write(1_000_000, vec![0xEE; 5000])],
        &mut edited,
    )
    .await;
    write_file(v, ROOT_INO, "new", b"brand new").await;
    write_file(v, ROOT_INO, "before", b"renamed later").await;
    v.rename(ROOT_INO, "before", ROOT_INO, "after", false)
        .await
        .unwrap();
    let d = v.mkdir(ROOT_INO, "d", 0o755, ME).await.unwrap();
    write_file(v, d.ino, "inner", b"inside a moved dir").await;
    v.rename(ROOT_INO, "d", ROOT_INO, "d2", false)
        .await
        .unwrap();
    write_file(v, ROOT_INO, "gone", b"unlinked while dirty").await;
    v.remove(ROOT_INO, "gone", false).await.unwrap();
    assert!(!v.files.dirty_inodes().is_empty(), "nothing was left dirty");
    // The crash: no shutdown, no flush.
    drop(m);

    let m = mount_lazy(&dir).await;
    let v = &m.vfs;
    assert!(
        v.files.dirty_inodes().is_empty(),
        "recovery left files dirty"
    );
    assert!(read_all(v, "f").await == edited);
    assert_eq!(read_all(v, "new").await, b"brand new");
    assert_eq!(read_all(v, "after").await, b"renamed later");
    assert_eq!(read_all(v, "d2/inner").await, b"inside a moved dir");
    for gone in ["gone", "before", "d"] {
        assert_eq!(
            v.lookup(ROOT_INO, gone).await.unwrap_err(),
            Errno::ENOENT,
            "{gone}"
        );
    }
    // The staging directory holds nothing the journal no longer needs.
    drop(m);
    let left: Vec<_> = std::fs::read_dir(dir.join("staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "namespace.nslog")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Like `edit`, without the fsync: the change stays dirty.
async fn edit_no_flush(v: &Vfs, path: &str, ops: &[Op], model: &mut Vec<u8>) {
    let ino = resolve(v, path).await.unwrap();
    let o = v.open(ino, true, false).await.unwrap();
    for op in ops {
        if let Op::Write(off, d) = op {
            v.write(o.fh, *off, d.clone()).await.unwrap();
        }
        apply(model, op);
    }
    v.release(o.fh).unwrap();
}

async fn mount_with_budget(dir: &Path, budget: u64) -> Mounted {
    mount_with(dir, |c| c.max_staging_size = budget, |c, s| (c, s)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_stays_within_its_budget_without_evicting_dirty_or_open_files() {
    let (_d, dir) = tmp();
    const MB: usize = 1 << 20;
    let m = mount_with_budget(&dir, 3 * MB as u64).await;
    let v = &m.vfs;
    // An open file with unflushed writes: never evicted, whatever the budget says.
    let (held, o) = v.create(ROOT_INO, "held", 0o644, ME).await.unwrap();
    let held_data = random(MB, 99);
    v.write(o.fh, 0, held_data.clone()).await.unwrap();
    let mut files = Vec::new();
    for n in 0..8 {
        let data = random(MB, n);
        let ino = write_file(v, ROOT_INO, &format!("f{n}"), &data).await;
        v.fsync(ino).await.unwrap();
        v.files.collect_staging();
        let s = v.stats();
        assert!(
            s.staging_bytes <= 3 * MB as u64 + MB as u64,
            "after file {n}: staging holds {} bytes",
            s.staging_bytes
        );
        files.push(data);
    }
    let s = v.stats();
    assert!(s.staging_evictions >= 4, "{s:?}");
    assert!(
        v.files.dirty_inodes().contains(&held.ino),
        "the open dirty file lost its staging"
    );
    assert_eq!(
        &v.read(o.fh, 0, MB as u32).await.unwrap()[..],
        &held_data[..]
    );
    for (n, data) in files.iter().enumerate() {
        assert!(&read_all(v, &format!("f{n}")).await == data, "f{n}");
    }
    v.release(o.fh).unwrap();
    v.fsync(held.ino).await.unwrap();

    // Sparse copies are charged what they occupy: a 4 KiB edit of a 3 MB file, not 3 MB.
    let big = random(3 * MB, 7);
    let ino = write_file(v, ROOT_INO, "big", &big).await;
    v.fsync(ino).await.unwrap();
    drop(m);
    let m = mount_with_budget(&dir, 3 * MB as u64).await;
    let v = &m.vfs;
    let mut model = big;
    edit(v, "big", &[Op::Write(MB as u64, vec![1; 4096])], &mut model).await;
    v.files.collect_staging();
    assert!(v.stats().staging_bytes < 64 * 1024, "{:?}", v.stats());
    assert_eq!(v.stats().staging_evictions, 0);
    let m = remount(m, &dir).await;
    assert!(read_all(&m.vfs, "big").await == model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_or_unlink_of_a_dirty_file_never_resurrects_the_old_path() {
    let (_d, dir) = tmp();
    let m = mount_lazy(&dir).await;
    let v = &m.vfs;
    // Written, renamed, then flushed: only the new path exists, with the content.
    let a = write_file(v, ROOT_INO, "old-name", b"payload").await;
    v.rename(ROOT_INO, "old-name", ROOT_INO, "new-name", false)
        .await
        .unwrap();
    v.fsync(a).await.unwrap();
    // Open, written, unlinked while open, then flushed: nothing is committed.
    let (b, o) = v.create(ROOT_INO, "doomed", 0o644, ME).await.unwrap();
    v.write(o.fh, 0, b"never committed".to_vec()).await.unwrap();
    v.remove(ROOT_INO, "doomed", false).await.unwrap();
    // Still readable through the open handle (orphan semantics).
    assert_eq!(&v.read(o.fh, 0, 100).await.unwrap()[..], b"never committed");
    v.fsync(b.ino).await.unwrap();
    v.release(o.fh).unwrap();
    // Rename over a dirty target: the target's pending content is gone for good.
    write_file(v, ROOT_INO, "target", b"pending").await;
    write_file(v, ROOT_INO, "winner", b"winner").await;
    v.rename(ROOT_INO, "winner", ROOT_INO, "target", false)
        .await
        .unwrap();
    let m = remount(m, &dir).await;
    let v = &m.vfs;
    assert_eq!(read_all(v, "new-name").await, b"payload");
    assert_eq!(read_all(v, "target").await, b"winner");
    for gone in ["old-name", "doomed", "winner"] {
        assert_eq!(
            v.lookup(ROOT_INO, gone).await.unwrap_err(),
            Errno::ENOENT,
            "{gone}"
        );
    }
}

/// Many files edited at once: flushes of several files share batches (one upload session,
/// one catalog commit), some files compose and some upload whole, while writers keep going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_across_files_share_flush_batches() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let mut models = Vec::new();
    for f in 0..4u64 {
        let data = random(600_000, 50 + f);
        let ino = write_file(&m.vfs, ROOT_INO, &format!("f{f}"), &data).await;
        m.vfs.fsync(ino).await.unwrap();
        models.push(data);
    }
    // A fresh mount: every file starts sparse.
    let m = remount(m, &dir).await;
    let v = m.vfs.clone();
    let commits_before = v.stats().flush_commits;
    let mut tasks = Vec::new();
    for f in 0..4u64 {
        let ino = resolve(&v, &format!("f{f}")).await.unwrap();
        for w in 0..3u64 {
            let v = v.clone();
            tasks.push(tokio::spawn(async move {
                let mut writes = Vec::new();
                for k in 0..12u64 {
                    let off = (k * 3 + w) * 15_000 + 7;
                    let data = random(3_000, f * 1000 + w * 100 + k);
                    let o = v.open(ino, true, false).await.unwrap();
                    v.write(o.fh, off, data.clone()).await.unwrap();
                    v.release(o.fh).unwrap();
                    if k % 5 == 4 {
                        v.fsync(ino).await.unwrap();
                    }
                    writes.push((off, data));
                }
                (f, writes)
            }));
        }
    }
    for t in tasks {
        let (f, writes) = t.await.unwrap();
        for (off, data) in writes {
            models[f as usize][off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
    }
    let s = v.stats();
    drop(v);
    let m = remount(m, &dir).await;
    for (f, model) in models.iter().enumerate() {
        assert!(&read_all(&m.vfs, &format!("f{f}")).await == model, "f{f}");
    }
    assert!(s.files_composed > 0, "{s:?}");
    assert!(s.flush_commits > commits_before);
}

/// Another writer changed the file while this mount was down with an uncommitted edit: the
/// recovered edit is composed against the body it was made on, the store refuses it over the
/// other writer's version (compare-and-swap), and it is kept whole beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_the_store_changed_meanwhile_keeps_both_versions() {
    let (_d, dir) = tmp();
    let (m, big) = committed_file(&dir, 1_000_000).await;
    drop(m);
    let m = mount_lazy(&dir).await;
    let mut edited = big.clone();
    edit_no_flush(
        &m.vfs,
        "f",
        &[Op::Write(500_000, vec![0xAA; 100])],
        &mut edited,
    )
    .await;
    drop(m); // crash with the edit uncommitted

    // Another writer replaces the file in the store meanwhile.
    {
        let store = open_store(&dir).await;
        let other = dir.join("other.bin");
        std::fs::write(&other, random(700_000, 77)).unwrap();
        let up = store
            .cas
            .upload_batch(vec![crate::remote::UploadItem {
                path: &other,
                len: 700_000,
            }])
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        let mut e = store.catalog.head("f").await.unwrap().unwrap();
        e.content = Some(up.id);
        store
            .catalog
            .commit(vec![crate::remote::CatalogOp::Put(e)])
            .await
            .unwrap();
    }

    let m = mount_lazy(&dir).await;
    let theirs = random(700_000, 77);
    assert!(read_all(&m.vfs, "f").await == theirs);
    let aside = |v: Arc<Vfs>| async move {
        let fh = v.opendir(crate::vfs::ROOT_INO).await.unwrap();
        let names: Vec<String> = v
            .readdir(fh, 0)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n.starts_with("f.conflict-"))
            .collect();
        v.releasedir(fh);
        assert_eq!(names.len(), 1, "{names:?}");
        names[0].clone()
    };
    let name = aside(m.vfs.clone()).await;
    assert!(read_all(&m.vfs, &name).await == edited);
    assert_eq!(m.vfs.stats().remote_conflicts, 1);
    // Both are in the store.
    let m = remount(m, &dir).await;
    assert!(read_all(&m.vfs, "f").await == theirs);
    assert_eq!(aside(m.vfs.clone()).await, name);
    assert!(read_all(&m.vfs, &name).await == edited);
}
