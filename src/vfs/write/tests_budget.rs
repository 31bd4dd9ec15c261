//! The staging budget against a real local store: writers wait for the flusher when staging
//! is full of dirty files, and fail cleanly (no name, no staging file) when nothing can be
//! committed in time.

use std::time::Duration;

use crate::remote::fault::{self, Faults};
use crate::remote::RemoteError;
use crate::vfs::tests::*;
use crate::vfs::{Errno, Vfs, VfsConfig, ROOT_INO};

/// Nothing falls due for ten minutes: only backpressure commits before shutdown.
fn lazy(c: &mut VfsConfig) {
    c.flush_debounce = Duration::from_secs(600);
    c.flush_max_batch_window = Duration::from_secs(600);
}

const MB: u64 = 1 << 20;

/// [`lazy`], with a staging byte budget.
fn lazy_within(c: &mut VfsConfig, bytes: u64) {
    lazy(c);
    c.max_staging_size = bytes;
}

/// The running totals against a fresh walk of the staged files. Copies the flusher has just
/// evicted are still counted until its last reference to them goes: poll until it has.
async fn check_totals(v: &Vfs) {
    let mut last = None;
    for _ in 0..2000 {
        let staged: Vec<_> = {
            let t = v.ns.table();
            t.staged_inodes()
                .filter_map(|i| i.staged().cloned())
                .collect()
        };
        let fresh: u64 = staged.iter().map(|s| s.allocated_bytes()).sum();
        let u = v.files.area().usage();
        let (totals, walked) = ((u.bytes(), u.files()), (fresh, staged.len()));
        if totals == walked {
            return;
        }
        last = Some((totals, walked));
        drop(staged);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("running totals, fresh walk: {last:?}");
}

fn stg_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("staging"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".stg")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_file_budget_makes_creators_wait_for_the_flusher() {
    let (_d, dir) = tmp();
    let m = mount_with(
        &dir,
        |c| {
            lazy(c);
            c.max_staged_files = 8;
        },
        |c, s| (c, s),
    )
    .await;
    let v = &m.vfs;
    for n in 0..40u32 {
        write_file(v, ROOT_INO, &format!("f{n}"), &pattern(5000, n)).await;
        assert!(v.files.area().usage().files() <= 8);
        check_totals(v).await;
    }
    // Room was made by committing early, then evicting the clean copies.
    assert!(v.stats().staging_evictions >= 32, "{:?}", v.stats());
    let m = remount(m, &dir).await;
    for n in 0..40u32 {
        assert_eq!(read_all(&m.vfs, &format!("f{n}")).await, pattern(5000, n));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_budget_makes_writers_of_another_file_wait_and_keeps_staging_within_it() {
    let (_d, dir) = tmp();
    let m = mount_with(&dir, |c| lazy_within(c, MB), |c, s| (c, s)).await;
    let v = &m.vfs;
    for n in 0..12u32 {
        write_file(v, ROOT_INO, &format!("f{n}"), &pattern(300_000, n)).await;
        let u = v.files.area().usage().bytes();
        assert!(
            u <= MB + 300_000 + 8192,
            "file {n}: staging holds {u} bytes"
        );
        check_totals(v).await;
    }
    let m = remount(m, &dir).await;
    for n in 0..12u32 {
        assert!(
            read_all(&m.vfs, &format!("f{n}")).await == pattern(300_000, n),
            "f{n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_finds_no_room_in_time_fails_and_leaves_nothing() {
    let (_d, dir) = tmp();
    let faults = std::sync::Arc::new(Faults::default());
    let f = faults.clone();
    let m = mount_with(
        &dir,
        |c| {
            lazy(c);
            c.max_staged_files = 4;
            c.write_timeout = Duration::from_millis(1500);
        },
        move |c, s| fault::wrap(c, s, f),
    )
    .await;
    let v = &m.vfs;
    faults
        .commit
        .fail(u32::MAX, RemoteError::Timeout("injected".into()));
    for n in 0..4u32 {
        write_file(v, ROOT_INO, &format!("f{n}"), &pattern(1000, n)).await;
    }
    // Nothing can be committed: the fifth create waits, then fails.
    let err = v.create(ROOT_INO, "f4", 0o644, ME).await.unwrap_err();
    assert_eq!(err, Errno(libc::EDQUOT));
    assert_eq!(v.lookup(ROOT_INO, "f4").await.unwrap_err(), Errno::ENOENT);
    assert_eq!(stg_files(&dir), 4);
    assert!(
        faults.commit.calls() > 0,
        "the flusher was not asked to commit"
    );
    check_totals(v).await;
    // Once the store takes commits again, everything written is there.
    faults.commit.fail(0, RemoteError::Timeout("none".into()));
    let m = remount(m, &dir).await;
    for n in 0..4u32 {
        assert_eq!(read_all(&m.vfs, &format!("f{n}")).await, pattern(1000, n));
    }
    assert_eq!(
        m.vfs.lookup(ROOT_INO, "f4").await.unwrap_err(),
        Errno::ENOENT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirtying_a_clean_copy_in_a_full_staging_area_waits_for_a_commit() {
    let (_d, dir) = tmp();
    let m = mount_with(&dir, |c| lazy_within(c, MB), |c, s| (c, s)).await;
    let v = &m.vfs;
    // A committed file whose clean copy stays staged: open, so it cannot be evicted.
    let a = write_file(v, ROOT_INO, "a", &pattern(200_000, 1)).await;
    v.fsync(a).await.unwrap();
    let o = v.open(a, true, false).await.unwrap();
    // Dirty files fill staging; nothing falls due for ten minutes.
    let b = write_file(v, ROOT_INO, "b", &pattern(450_000, 2)).await;
    let c = write_file(v, ROOT_INO, "c", &pattern(450_000, 3)).await;
    assert!(
        v.files.full(false).is_some(),
        "{} bytes",
        v.files.area().usage().bytes()
    );
    // Dirtying `a` waits until a commit made room.
    v.write(o.fh, 0, vec![9; 1000]).await.unwrap();
    let dirty = v.files.dirty_inodes();
    assert!(dirty.contains(&a), "{dirty:?}");
    assert!(
        !dirty.contains(&b) || !dirty.contains(&c),
        "nothing was committed: {dirty:?}"
    );
    v.release(o.fh).unwrap();
    let m = remount(m, &dir).await;
    let mut want = pattern(200_000, 1);
    want[..1000].fill(9);
    assert!(read_all(&m.vfs, "a").await == want);
    assert!(read_all(&m.vfs, "b").await == pattern(450_000, 2));
    assert!(read_all(&m.vfs, "c").await == pattern(450_000, 3));
}
