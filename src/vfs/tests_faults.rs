//! Fault injection behind the remote traits: uploads, compositions, commits and reads that
//! fail N times or hang, wrapped around a real local store. Every case checks the errno the
//! user sees, that the data stays dirty and is retried to success, and the content after a
//! remount.

use std::ops::Range;
use std::sync::atomic::Ordering;

use super::*;
use crate::remote::fault::{self, Faults};
use crate::remote::RemoteError;

struct Faulty {
    m: Mounted,
    faults: Arc<Faults>,
}

async fn mount_faulty(dir: &Path) -> Faulty {
    mount_faulty_with(dir, |c| c.read_timeout = Duration::from_millis(300)).await
}

async fn mount_faulty_with(dir: &Path, tune: impl FnOnce(&mut VfsConfig)) -> Faulty {
    let faults = Arc::new(Faults::default());
    let f = faults.clone();
    let m = mount_with(dir, tune, move |catalog, cas| fault::wrap(catalog, cas, f)).await;
    Faulty { m, faults }
}

/// Poll until `cond` holds (on state, not on time); panics after ~10 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("never happened: {what}");
}

/// A committed file `f` of `size` bytes, on a fresh faulty mount, with `edit` overwritten
/// (0xC3) and not yet committed: its flush composes. Returns the expected content.
async fn committed_then_edited(
    dir: &Path,
    size: usize,
    edit: Range<usize>,
) -> (Faulty, crate::vfs::Ino, Vec<u8>) {
    let mut model = pattern(size, 2);
    let m = mount_at(dir).await;
    let ino = write_file(&m.vfs, ROOT_INO, "f", &model).await;
    m.vfs.fsync(ino).await.unwrap();
    assert_eq!(m.vfs.shutdown(Duration::from_secs(30)).await, 0);
    drop(m);
    let f = mount_faulty(dir).await;
    let v = &f.m.vfs;
    let ino = resolve(v, "f").await.unwrap();
    let o = v.open(ino, true, false).await.unwrap();
    v.write(o.fh, edit.start as u64, vec![0xC3; edit.len()])
        .await
        .unwrap();
    model[edit].fill(0xC3);
    v.release(o.fh).unwrap();
    (f, ino, model)
}

/// Poll (on the mount's own counters, not on time) until the background flusher has failed
/// at least `n` times.
async fn until_failures(v: &Vfs, n: u64) {
    for _ in 0..5000 {
        if v.stats().flush_failures >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the flusher never failed {n} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_uploads_surface_at_fsync_and_close_and_are_retried() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let v = &f.m.vfs;
    // fsync reports the store's answer itself.
    f.faults
        .upload
        .fail(1, RemoteError::Quota("bucket full".into()));
    let data = pattern(500_000, 1);
    let ino = write_file(v, ROOT_INO, "a", &data).await;
    assert_eq!(v.fsync(ino).await.unwrap_err(), Errno(libc::ENOSPC));
    assert!(
        v.files.dirty_inodes().contains(&ino),
        "a failure cleared dirty data"
    );
    v.fsync(ino).await.unwrap();

    // A background failure is reported by the next close of a handle that wrote before it,
    // once; a reader's close is not concerned.
    f.faults
        .upload
        .fail(3, RemoteError::RateLimited("slow down".into()));
    let before = v.stats().flush_failures;
    let (attr, writer) = v.create(ROOT_INO, "b", 0o644, ME).await.unwrap();
    let ino_b = attr.ino;
    v.write(writer.fh, 0, b"second file".to_vec())
        .await
        .unwrap();
    let reader = v.open(ino_b, false, false).await.unwrap();
    // Another handle's close queues the flush while the writer stays open.
    let other = v.open(ino_b, false, false).await.unwrap();
    v.release(other.fh).unwrap();
    until_failures(v, before + 1).await;
    v.close(reader.fh).await.unwrap();
    v.release(reader.fh).unwrap();
    assert_eq!(v.close(writer.fh).await.unwrap_err(), Errno(libc::EAGAIN));
    v.close(writer.fh).await.unwrap();
    v.release(writer.fh).unwrap();
    // fsync answers with the store's current error...
    assert_eq!(v.fsync(ino_b).await.unwrap_err(), Errno(libc::EAGAIN));
    // ...and the flusher's backoff keeps retrying until the store accepts the file.
    for _ in 0..5000 {
        if !v.files.dirty_inodes().contains(&ino_b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        !v.files.dirty_inodes().contains(&ino_b),
        "never retried to success"
    );
    v.fsync(ino_b).await.unwrap();

    let m = remount(f.m, &dir).await;
    assert_eq!(read_all(&m.vfs, "a").await, data);
    assert_eq!(read_all(&m.vfs, "b").await, b"second file");
}

/// Log lines, captured for the whole test process (nextest runs each test in its own).
fn capture_logs() -> Arc<parking_lot::Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Sink(Arc<parking_lot::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .try_init()
        .expect("the only log subscriber of this test process");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_reaches_the_writer_only_and_says_why() {
    let logs = capture_logs();
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let v = &f.m.vfs;
    let dir_ino = v.mkdir(ROOT_INO, "runs", 0o755, ME).await.unwrap().ino;
    let (attr, writer) = v.create(dir_ino, "model.bin", 0o644, ME).await.unwrap();
    let ino = attr.ino;
    let data = pattern(300_000, 5);
    v.write(writer.fh, 0, data.clone()).await.unwrap();
    let reader = v.open(ino, false, false).await.unwrap();
    // A writer that only opened the file has not changed it.
    let idle_writer = v.open(ino, true, false).await.unwrap();

    f.faults.commit.fail(
        u32::MAX,
        RemoteError::PermissionDenied("token lacks write scope".into()),
    );
    let before = v.stats().flush_failures;
    let other = v.open(ino, false, false).await.unwrap();
    v.release(other.fh).unwrap();
    until_failures(v, before + 1).await;
    // Permanent: the flusher retries at its longest interval instead of hammering.
    until("the retry is scheduled a minute away", || {
        v.flusher
            .queue()
            .due_in(ino)
            .is_some_and(|d| d > Duration::from_secs(50))
    })
    .await;

    v.close(reader.fh).await.unwrap();
    v.release(reader.fh).unwrap();
    v.close(idle_writer.fh).await.unwrap();
    v.release(idle_writer.fh).unwrap();
    assert_eq!(v.close(writer.fh).await.unwrap_err(), Errno::EACCES);
    // Reported once per handle.
    v.close(writer.fh).await.unwrap();
    v.release(writer.fh).unwrap();
    // fsync reports the store's current answer.
    assert_eq!(v.fsync(ino).await.unwrap_err(), Errno::EACCES);
    let text = String::from_utf8_lossy(&logs.lock()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("/runs/model.bin"))
        .unwrap_or_else(|| panic!("no log line names the file:\n{text}"));
    assert!(
        line.contains("catalog commit") && line.contains("token lacks write scope"),
        "the log line does not say which step failed and why: {line}"
    );
    // Once the store accepts again, nothing was lost.
    f.faults.commit.fail(0, RemoteError::Other("unused".into()));
    v.fsync(ino).await.unwrap();
    let m = remount(f.m, &dir).await;
    assert!(read_all(&m.vfs, "runs/model.bin").await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_composition_falls_back_to_a_whole_upload() {
    let (_d, dir) = tmp();
    let (f, ino, model) = committed_then_edited(&dir, 1_500_000, 1000..1100).await;
    let v = &f.m.vfs;
    f.faults.compose.fail(
        u32::MAX,
        RemoteError::Integrity("composed size mismatch".into()),
    );
    // The first attempt is refused; the next one fills the holes and uploads whole.
    assert_eq!(v.fsync(ino).await.unwrap_err(), Errno::EIO);
    v.fsync(ino).await.unwrap();
    assert_eq!(v.stats().files_composed, 0);
    assert_eq!(v.stats().files_uploaded, 1);
    let m = remount(f.m, &dir).await;
    assert!(read_all(&m.vfs, "f").await == model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upload_times_out() {
    let (_d, dir) = tmp();
    let f = mount_faulty_with(&dir, |c| c.write_timeout = Duration::from_millis(300)).await;
    let v = &f.m.vfs;
    f.faults.upload.hang.store(true, Ordering::SeqCst);
    let stuck = write_file(v, ROOT_INO, "stuck", b"waiting").await;
    assert_eq!(v.fsync(stuck).await.unwrap_err(), Errno::ETIMEDOUT);
    assert!(v.files.dirty_inodes().contains(&stuck));
    f.faults.upload.release();
    v.fsync(stuck).await.unwrap();
    let m = remount(f.m, &dir).await;
    assert_eq!(read_all(&m.vfs, "stuck").await, b"waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_background_upload_does_not_hold_back_other_files() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let v = f.m.vfs.clone();
    f.faults.upload.hang.store(true, Ordering::SeqCst);
    let calls = f.faults.upload.calls.load(Ordering::SeqCst);
    let stuck = write_file(&v, ROOT_INO, "stuck", b"waiting").await;
    until("the stuck file's upload started", || {
        f.faults.upload.calls.load(Ordering::SeqCst) > calls
    })
    .await;
    // New calls go through; the one already made stays hung.
    f.faults.upload.hang.store(false, Ordering::SeqCst);
    let other = write_file(&v, ROOT_INO, "other", b"fine").await;
    until("the other file committed", || {
        !v.files.dirty_inodes().contains(&other)
    })
    .await;
    assert!(
        v.files.dirty_inodes().contains(&stuck),
        "the hung upload finished: the test proved nothing"
    );
    // The stuck file commits once its call returns.
    f.faults.upload.release();
    v.fsync(stuck).await.unwrap();
    drop(v);
    let m = remount(f.m, &dir).await;
    assert_eq!(read_all(&m.vfs, "stuck").await, b"waiting");
    assert_eq!(read_all(&m.vfs, "other").await, b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_compositions_and_commits_keep_the_edit() {
    let (_d, dir) = tmp();
    let (f, ino, model) = committed_then_edited(&dir, 2_000_000, 700_000..703_000).await;
    let v = &f.m.vfs;

    f.faults
        .compose
        .fail(1, RemoteError::Timeout("store stalled".into()));
    assert_eq!(v.fsync(ino).await.unwrap_err(), Errno(libc::ETIMEDOUT));
    f.faults
        .commit
        .fail(1, RemoteError::PermissionDenied("token expired".into()));
    assert_eq!(v.fsync(ino).await.unwrap_err(), Errno(libc::EACCES));
    f.faults
        .upload
        .fail(1, RemoteError::Integrity("bad".into()));
    // A failure of another route's call does not matter: this file composes.
    v.fsync(ino).await.unwrap();
    assert_eq!(v.stats().files_composed, 1);

    let m = remount(f.m, &dir).await;
    assert!(read_all(&m.vfs, "f").await == model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_hanging_reads_return_errors_not_wedges() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let data = pattern(300_000, 3);
    let ino = write_file(&f.m.vfs, ROOT_INO, "r", &data).await;
    f.m.vfs.fsync(ino).await.unwrap();
    let m = remount(f.m, &dir).await;
    drop(m);
    let f = mount_faulty(&dir).await;
    let v = &f.m.vfs;
    let ino = resolve(v, "r").await.unwrap();
    let o = v.open(ino, false, false).await.unwrap();
    // Every read fails (read-ahead fetches race the read itself for the store).
    f.faults
        .read
        .fail(u32::MAX, RemoteError::Other("disk error".into()));
    assert_eq!(v.read(o.fh, 0, 100).await.unwrap_err(), Errno::EIO);
    f.faults.read.fail(0, RemoteError::Other("unused".into()));
    f.faults.read.hang.store(true, Ordering::SeqCst);
    assert_eq!(
        v.read(o.fh, 0, 100).await.unwrap_err(),
        Errno(libc::ETIMEDOUT)
    );
    f.faults.read.hang.store(false, Ordering::SeqCst);
    assert_eq!(&v.read(o.fh, 0, 100).await.unwrap()[..], &data[..100]);
    v.release(o.fh).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_at_shutdown_leaves_the_file_journaled_for_the_next_start() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    f.faults.upload.hang.store(true, Ordering::SeqCst);
    let data = pattern(400_000, 4);
    write_file(&f.m.vfs, ROOT_INO, "stuck", &data).await;
    // The file, and the namespace change that created it (committed with its body).
    assert_eq!(f.m.vfs.shutdown(Duration::from_millis(300)).await, 2);
    drop(f);
    // The next start finds the journal and commits the file before serving.
    let m = mount_at(&dir).await;
    assert!(m.vfs.files.dirty_inodes().is_empty());
    assert_eq!(read_all(&m.vfs, "stuck").await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_delays_commits_without_blocking_other_files() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let v = f.m.vfs.clone();
    let quick = write_file(&v, ROOT_INO, "quick", b"already here").await;
    v.fsync(quick).await.unwrap();
    f.faults.upload.delay_ms.store(1500, Ordering::SeqCst);
    let data = pattern(300_000, 9);
    let slow = write_file(&v, ROOT_INO, "slow", &data).await;
    let v2 = v.clone();
    let pending = tokio::spawn(async move { v2.fsync(slow).await });
    // While the upload crawls, other files stay readable and writable.
    assert_eq!(read_all(&v, "quick").await, b"already here");
    let o = v.open(quick, true, false).await.unwrap();
    v.write(o.fh, 0, b"ALREADY".to_vec()).await.unwrap();
    v.release(o.fh).unwrap();
    assert!(
        !pending.is_finished(),
        "the other file waited for the slow upload"
    );
    pending.await.unwrap().unwrap();
    f.faults.upload.delay_ms.store(0, Ordering::SeqCst);
    drop(v);
    let m = remount(f.m, &dir).await;
    assert_eq!(read_all(&m.vfs, "slow").await, data);
    assert_eq!(read_all(&m.vfs, "quick").await, b"ALREADY here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_catalog_commit_blocks_no_namespace_change_read_or_write() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let v = f.m.vfs.clone();
    let kept = write_file(&v, ROOT_INO, "kept", b"committed before").await;
    v.fsync(kept).await.unwrap();
    let docs = v.mkdir(ROOT_INO, "docs", 0o755, ME).await.unwrap().ino;
    v.opendir(docs).await.unwrap();
    f.faults.commit.hang.store(true, Ordering::SeqCst);
    let calls = f.faults.commit.calls.load(Ordering::SeqCst);
    write_file(&v, ROOT_INO, "first", b"queued").await;
    until("a commit is hung", || {
        f.faults.commit.calls.load(Ordering::SeqCst) > calls
    })
    .await;
    // Everything below works while the commit hangs (each would wait for it otherwise).
    let sub = v.mkdir(docs, "sub", 0o700, ME).await.unwrap().ino;
    let n = write_file(&v, sub, "note", b"written meanwhile").await;
    v.rename(sub, "note", docs, "note", false).await.unwrap();
    chmod(&v, n, 0o600).await;
    v.remove(ROOT_INO, "first", false).await.unwrap();
    assert_eq!(read_all(&v, "kept").await, b"committed before");
    assert_eq!(read_all(&v, "docs/note").await, b"written meanwhile");
    let listing = v.opendir(docs).await.unwrap();
    let names: Vec<String> = v
        .readdir(listing, 2)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["note", "sub"]);
    assert!(
        v.files.dirty_inodes().contains(&n),
        "the hung commit finished: the test proved nothing"
    );
    f.faults.commit.release();
    drop(v);
    let m = remount(f.m, &dir).await;
    let v = &m.vfs;
    assert_eq!(read_all(v, "docs/note").await, b"written meanwhile");
    assert_eq!(
        v.getattr(resolve(v, "docs/note").await.unwrap())
            .unwrap()
            .mode,
        0o600
    );
    assert_eq!(resolve(v, "first").await.unwrap_err(), Errno::ENOENT);
    assert!(resolve(v, "docs/sub").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_changes_during_a_commit_never_commit_a_stale_body() {
    let (_d, dir) = tmp();
    let f = mount_faulty(&dir).await;
    let v = f.m.vfs.clone();
    let data = pattern(200_000, 8);
    // The commit of the file's body crawls; a hard link and a chmod are made meanwhile,
    // while the file's committed body is not known yet.
    f.faults.commit.delay_ms.store(600, Ordering::SeqCst);
    let calls = f.faults.commit.calls.load(Ordering::SeqCst);
    let ino = write_file(&v, ROOT_INO, "f", &data).await;
    until("the commit started", || {
        f.faults.commit.calls.load(Ordering::SeqCst) > calls
    })
    .await;
    v.link(ino, ROOT_INO, "g").await.unwrap();
    chmod(&v, ino, 0o600).await;
    let uploading = tokio::spawn({
        let v = v.clone();
        async move { v.fsync(ino).await }
    });
    uploading.await.unwrap().unwrap();
    f.faults.commit.delay_ms.store(0, Ordering::SeqCst);
    drop(v);
    let m = remount(f.m, &dir).await;
    assert!(
        read_all(&m.vfs, "f").await == data,
        "a stale body replaced the committed one"
    );
    assert!(read_all(&m.vfs, "g").await == data);
    assert_eq!(
        m.vfs
            .getattr(resolve(&m.vfs, "g").await.unwrap())
            .unwrap()
            .mode,
        0o600
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_refused_files_are_not_retried_and_transient_failures_are() {
    let (_d, dir) = tmp();
    // Nothing is committed before the shutdown.
    let f = mount_faulty_with(&dir, |c| c.flush_debounce = Duration::from_secs(600)).await;
    let v = &f.m.vfs;
    let a = pattern(200_000, 1);
    write_file(v, ROOT_INO, "a", &a).await;
    write_file(v, ROOT_INO, "b", b"bbb").await;
    let commits = || f.faults.commit.calls.load(Ordering::SeqCst);

    f.faults.commit.fail(
        u32::MAX,
        RemoteError::PermissionDenied("the token may not write".into()),
    );
    let before = commits();
    // Two files and the namespace changes are left, after one attempt.
    assert_eq!(v.shutdown(Duration::from_secs(30)).await, 3);
    assert_eq!(commits() - before, 1);

    // Transient failures are retried (with backoff) until they pass.
    f.faults
        .commit
        .fail(3, RemoteError::Other("connection reset".into()));
    let before = commits();
    assert_eq!(v.shutdown(Duration::from_secs(30)).await, 0);
    assert_eq!(commits() - before, 4);
    let m = remount(f.m, &dir).await;
    assert!(read_all(&m.vfs, "a").await == a);
    assert_eq!(read_all(&m.vfs, "b").await, b"bbb");
}

/// A commit that lands while its file is written again leaves the file dirty against its old
/// base. After a crash, recovery must take the landed body for this mount's own: it took it for
/// another writer's and moved the newest content aside as a conflict copy (found by the
/// reference-model test, `tests/vfs_model.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_commit_overtaken_by_a_write_keeps_the_newest_content_at_its_name() {
    let (_d, dir) = tmp();
    let f = mount_faulty_with(&dir, |c| c.flush_debounce = Duration::from_secs(3600)).await;
    let v = f.m.vfs.clone();
    let mut model = pattern(200_000, 5);
    let ino = write_file(&v, ROOT_INO, "f", &model).await;
    v.fsync(ino).await.unwrap();
    let o = v.open(ino, true, false).await.unwrap();
    v.write(o.fh, 1_000, vec![1; 100]).await.unwrap();
    model[1_000..1_100].fill(1);
    f.faults.commit.hang.store(true, Ordering::SeqCst);
    let calls = f.faults.commit.calls();
    let syncing = tokio::spawn({
        let v = v.clone();
        async move { v.fsync(ino).await }
    });
    until("the commit is hung", || f.faults.commit.calls() > calls).await;
    v.write(o.fh, 50_000, vec![2; 100]).await.unwrap();
    model[50_000..50_100].fill(2);
    // The hung commit lands; nothing after it reaches the store.
    let down = || RemoteError::Other("store down".into());
    f.faults.upload.fail(u32::MAX, down());
    f.faults.compose.fail(u32::MAX, down());
    f.faults.commit.release();
    assert!(
        syncing.await.unwrap().is_err(),
        "the second write was committed"
    );
    v.release(o.fh).unwrap();
    assert!(v.files.dirty_inodes().contains(&ino));
    // The crash: no shutdown, no flush.
    drop(v);
    drop(f);

    let m = mount_at(&dir).await;
    let v = &m.vfs;
    assert!(read_all(v, "f").await == model, "f lost the last write");
    let root = v.opendir(ROOT_INO).await.unwrap();
    let names: Vec<String> = v
        .readdir(root, 2)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        vec!["f"],
        "a conflict copy was made of this mount's own version"
    );
    assert_eq!(m.vfs.shutdown(Duration::from_secs(30)).await, 0);
}
