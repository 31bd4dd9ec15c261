//! VFS behaviour against a real temporary local store; every mutation is read back after a
//! remount (a new VFS over a reopened store).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::remote::local::LocalStore;
use crate::remote::{Cas, Catalog};
use crate::vfs::{Caller, Errno, SetAttr, TimeSet, Vfs, VfsConfig, ROOT_INO};

pub(crate) const ME: Caller = Caller { uid: 0, gid: 0 };

pub(crate) struct Mounted {
    pub(crate) vfs: Arc<Vfs>,
    pub(crate) _store: LocalStore,
}

pub(crate) async fn mount_at(dir: &Path) -> Mounted {
    mount_with(dir, |_| {}, |c, s| (c, s)).await
}

/// The store under `dir`, opened on the test's runtime.
pub(crate) async fn open_store(dir: &Path) -> LocalStore {
    let ctx = xet_runtime::core::XetContext::from_external(
        tokio::runtime::Handle::current(),
        crate::remote::local::xet_config(),
    );
    LocalStore::open(&dir.join("store"), ctx).await.unwrap()
}

/// A VFS over the store under `dir`: `tune` adjusts the configuration (20 ms debounce by
/// default), `wrap` may put the remote traits behind test wrappers.
pub(crate) async fn mount_with(
    dir: &Path,
    tune: impl FnOnce(&mut VfsConfig),
    wrap: impl FnOnce(Arc<dyn Catalog>, Arc<dyn Cas>) -> (Arc<dyn Catalog>, Arc<dyn Cas>),
) -> Mounted {
    let store = open_store(dir).await;
    let mut config = VfsConfig {
        flush_debounce: Duration::from_millis(20),
        ..VfsConfig::new(dir.join("staging"))
    };
    tune(&mut config);
    let (catalog, cas) = wrap(store.catalog.clone(), store.cas.clone());
    let vfs = Vfs::new(catalog, cas, config).await.unwrap();
    Mounted { vfs, _store: store }
}

pub(crate) use crate::remote::testing::random;

/// Drain, drop and reopen: what the next mount sees.
pub(crate) async fn remount(m: Mounted, dir: &Path) -> Mounted {
    assert_eq!(m.vfs.shutdown(Duration::from_secs(30)).await, 0);
    drop(m);
    mount_at(dir).await
}

/// Resolve a `/`-separated path to an inode.
pub(crate) async fn resolve(vfs: &Vfs, path: &str) -> Result<u64, Errno> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = vfs.lookup(ino, part).await?.ino;
    }
    Ok(ino)
}

pub(crate) async fn write_file(vfs: &Vfs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, o) = vfs.create(parent, name, 0o644, ME).await.unwrap();
    let mut off = 0;
    for chunk in data.chunks(100_000) {
        assert_eq!(
            vfs.write(o.fh, off, chunk.to_vec()).await.unwrap() as usize,
            chunk.len()
        );
        off += chunk.len() as u64;
    }
    vfs.close(o.fh).await.unwrap();
    vfs.release(o.fh).unwrap();
    attr.ino
}

pub(crate) async fn chmod(vfs: &Vfs, ino: u64, mode: u32) {
    vfs.setattr(
        ino,
        SetAttr {
            mode: Some(mode),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

pub(crate) async fn read_all(vfs: &Vfs, path: &str) -> Vec<u8> {
    let ino = resolve(vfs, path).await.unwrap();
    let size = vfs.getattr(ino).unwrap().size;
    let o = vfs.open(ino, false, false).await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let d = vfs.read(o.fh, out.len() as u64, 131072).await.unwrap();
        assert!(!d.is_empty(), "short read at {}", out.len());
        out.extend_from_slice(&d);
    }
    assert!(vfs.read(o.fh, size, 10).await.unwrap().is_empty());
    vfs.release(o.fh).unwrap();
    out
}

pub(crate) fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

pub(crate) fn tmp() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_path_buf();
    (d, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_dirs_symlinks_survive_remount() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = &m.vfs;
    let a = v.mkdir(ROOT_INO, "a", 0o750, ME).await.unwrap();
    let b = v.mkdir(a.ino, "b", 0o755, ME).await.unwrap();
    v.mkdir(ROOT_INO, "empty", 0o700, ME).await.unwrap();
    let big = pattern(3_000_000, 1);
    write_file(v, b.ino, "big.bin", &big).await;
    write_file(v, ROOT_INO, "small.txt", b"hello\n").await;
    write_file(v, ROOT_INO, "zero", b"").await;
    v.symlink(ROOT_INO, "link", "a/b/big.bin", ME)
        .await
        .unwrap();
    let f = resolve(v, "small.txt").await.unwrap();
    v.setattr(
        f,
        SetAttr {
            mode: Some(0o600),
            uid: Some(1234),
            gid: Some(99),
            mtime: Some(TimeSet::At(1_500_000_000_123_456_789)),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let m = remount(m, &dir).await;
    let v = &m.vfs;
    assert_eq!(read_all(v, "a/b/big.bin").await, big);
    assert_eq!(read_all(v, "small.txt").await, b"hello\n");
    assert_eq!(read_all(v, "zero").await, b"");
    let l = resolve(v, "link").await.unwrap();
    assert_eq!(v.readlink(l).unwrap(), "a/b/big.bin");
    let e = resolve(v, "empty").await.unwrap();
    assert_eq!(v.getattr(e).unwrap().mode, 0o700);
    assert_eq!(
        v.getattr(resolve(v, "a").await.unwrap()).unwrap().mode,
        0o750
    );
    let s = v.getattr(resolve(v, "small.txt").await.unwrap()).unwrap();
    assert_eq!((s.mode, s.uid, s.gid), (0o600, 1234, 99));
    assert_eq!(
        crate::vfs::namespace::inode::time_to_ns(s.mtime),
        1_500_000_000_123_456_789
    );
    let fh = v.opendir(ROOT_INO).await.unwrap();
    let mut names: Vec<String> = v
        .readdir(fh, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".", "..", "a", "empty", "link", "small.txt", "zero"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_existing_and_whole_directories() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = &m.vfs;
    write_file(v, ROOT_INO, "src", b"new contents").await;
    write_file(v, ROOT_INO, "dst", b"old").await;
    v.rename(ROOT_INO, "src", ROOT_INO, "dst", false)
        .await
        .unwrap();
    assert_eq!(v.lookup(ROOT_INO, "src").await.unwrap_err(), Errno::ENOENT);
    let d = v.mkdir(ROOT_INO, "d", 0o755, ME).await.unwrap();
    let sub = v.mkdir(d.ino, "sub", 0o755, ME).await.unwrap();
    write_file(v, sub.ino, "f", b"deep").await;
    v.rename(ROOT_INO, "d", ROOT_INO, "moved", false)
        .await
        .unwrap();
    // NOREPLACE refuses an existing target; a directory cannot move into itself.
    write_file(v, ROOT_INO, "x", b"x").await;
    assert_eq!(
        v.rename(ROOT_INO, "x", ROOT_INO, "dst", true)
            .await
            .unwrap_err(),
        Errno::EEXIST
    );
    let moved = resolve(v, "moved").await.unwrap();
    let sub = resolve(v, "moved/sub").await.unwrap();
    assert_eq!(
        v.rename(ROOT_INO, "moved", sub, "in", false)
            .await
            .unwrap_err(),
        Errno::EINVAL
    );
    // Directory over non-empty directory, file over directory.
    let other = v.mkdir(ROOT_INO, "other", 0o755, ME).await.unwrap();
    write_file(v, other.ino, "o", b"o").await;
    assert_eq!(
        v.rename(ROOT_INO, "moved", ROOT_INO, "other", false)
            .await
            .unwrap_err(),
        Errno::ENOTEMPTY
    );
    assert_eq!(
        v.rename(ROOT_INO, "x", ROOT_INO, "other", false)
            .await
            .unwrap_err(),
        Errno::EISDIR
    );
    let _ = moved;

    let m = remount(m, &dir).await;
    let v = &m.vfs;
    assert_eq!(read_all(v, "dst").await, b"new contents");
    assert_eq!(read_all(v, "moved/sub/f").await, b"deep");
    assert_eq!(resolve(v, "d").await.unwrap_err(), Errno::ENOENT);
    assert_eq!(read_all(v, "x").await, b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_open_file_stays_usable_until_last_close() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = &m.vfs;
    write_file(v, ROOT_INO, "f", b"committed body").await;
    v.fsync(resolve(v, "f").await.unwrap()).await.unwrap();
    let ino = resolve(v, "f").await.unwrap();
    let o = v.open(ino, true, false).await.unwrap();
    v.remove(ROOT_INO, "f", false).await.unwrap();
    assert_eq!(v.lookup(ROOT_INO, "f").await.unwrap_err(), Errno::ENOENT);
    assert_eq!(&v.read(o.fh, 0, 100).await.unwrap()[..], b"committed body");
    v.write(o.fh, 0, b"ORPHAN".to_vec()).await.unwrap();
    assert_eq!(&v.read(o.fh, 0, 100).await.unwrap()[..], b"ORPHANted body");
    assert_eq!(v.getattr(ino).unwrap().nlink, 0);
    // A new file of the same name is independent of the orphan.
    write_file(v, ROOT_INO, "f", b"fresh").await;
    v.release(o.fh).unwrap();
    let m = remount(m, &dir).await;
    assert_eq!(read_all(&m.vfs, "f").await, b"fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_up_down_and_write_past_eof() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = &m.vfs;
    let base = pattern(1_000_000, 7);
    let ino = write_file(v, ROOT_INO, "f", &base).await;
    v.fsync(ino).await.unwrap();
    let mut expect = base.clone();
    // Shrink, grow (zeros), write past EOF (zero gap), overwrite in the middle.
    v.setattr(
        ino,
        SetAttr {
            size: Some(600_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    expect.truncate(600_000);
    v.setattr(
        ino,
        SetAttr {
            size: Some(700_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    expect.resize(700_000, 0);
    let o = v.open(ino, true, false).await.unwrap();
    v.write(o.fh, 900_000, b"tail".to_vec()).await.unwrap();
    expect.resize(900_000, 0);
    expect.extend_from_slice(b"tail");
    v.write(o.fh, 100, b"MID".to_vec()).await.unwrap();
    expect[100..103].copy_from_slice(b"MID");
    assert_eq!(v.getattr(ino).unwrap().size, 900_004);
    v.release(o.fh).unwrap();
    assert_eq!(read_all(v, "f").await, expect);
    // O_TRUNC then write then reopen.
    write_file(v, ROOT_INO, "t", b"to be truncated").await;
    let t = resolve(v, "t").await.unwrap();
    let o = v.open(t, true, true).await.unwrap();
    v.write(o.fh, 0, b"new".to_vec()).await.unwrap();
    v.release(o.fh).unwrap();

    let m = remount(m, &dir).await;
    assert_eq!(read_all(&m.vfs, "f").await, expect);
    assert_eq!(read_all(&m.vfs, "t").await, b"new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_for_bad_requests() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = &m.vfs;
    let long = "n".repeat(256);
    assert_eq!(
        v.create(ROOT_INO, &long, 0o644, ME).await.unwrap_err(),
        Errno::ENAMETOOLONG
    );
    assert_eq!(
        v.lookup(ROOT_INO, &long).await.unwrap_err(),
        Errno::ENAMETOOLONG
    );
    write_file(v, ROOT_INO, "f", b"x").await;
    assert_eq!(
        v.create(ROOT_INO, "f", 0o644, ME).await.unwrap_err(),
        Errno::EEXIST
    );
    let d = v.mkdir(ROOT_INO, "d", 0o755, ME).await.unwrap();
    write_file(v, d.ino, "inner", b"x").await;
    assert_eq!(
        v.remove(ROOT_INO, "d", true).await.unwrap_err(),
        Errno::ENOTEMPTY
    );
    assert_eq!(
        v.remove(ROOT_INO, "d", false).await.unwrap_err(),
        Errno::EISDIR
    );
    assert_eq!(
        v.remove(ROOT_INO, "f", true).await.unwrap_err(),
        Errno::ENOTDIR
    );
    assert_eq!(
        v.remove(ROOT_INO, "nope", false).await.unwrap_err(),
        Errno::ENOENT
    );
    let f = resolve(v, "f").await.unwrap();
    let ro = v.open(f, false, false).await.unwrap();
    assert_eq!(
        v.write(ro.fh, 0, b"x".to_vec()).await.unwrap_err(),
        Errno::EBADF
    );
    assert_eq!(v.read(9999, 0, 1).await.unwrap_err(), Errno::EBADF);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mount_refuses_mutation() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    write_file(&m.vfs, ROOT_INO, "f", b"data").await;
    assert_eq!(m.vfs.shutdown(Duration::from_secs(30)).await, 0);
    drop(m);
    let ctx = xet_runtime::core::XetContext::from_external(
        tokio::runtime::Handle::current(),
        crate::remote::local::xet_config(),
    );
    let store = LocalStore::open(&dir.join("store"), ctx).await.unwrap();
    let config = VfsConfig {
        read_only: true,
        ..VfsConfig::new(dir.join("staging"))
    };
    let v = Vfs::new(store.catalog.clone(), store.cas.clone(), config)
        .await
        .unwrap();
    let f = resolve(&v, "f").await.unwrap();
    assert_eq!(v.open(f, true, false).await.unwrap_err(), Errno::EROFS);
    assert_eq!(
        v.mkdir(ROOT_INO, "d", 0o755, ME).await.unwrap_err(),
        Errno::EROFS
    );
    assert_eq!(
        v.remove(ROOT_INO, "f", false).await.unwrap_err(),
        Errno::EROFS
    );
    assert_eq!(read_all(&v, "f").await, b"data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_for_write_downloads_nothing_and_flush_uploads_once() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = &m.vfs;
    let data = pattern(2_000_000, 3);
    let ino = write_file(v, ROOT_INO, "f", &data).await;
    v.fsync(ino).await.unwrap();
    let m = remount(m, &dir).await;
    let v = &m.vfs;
    let ino = resolve(v, "f").await.unwrap();
    let before = v.stats();
    let o = v.open(ino, true, false).await.unwrap();
    assert_eq!(
        v.stats().bytes_fetched,
        before.bytes_fetched,
        "open fetched bytes"
    );
    // Nothing written: closing commits nothing.
    v.release(o.fh).unwrap();
    v.fsync(ino).await.unwrap();
    assert_eq!(v.stats().flush_commits, before.flush_commits);
    // A second read of the same range is served locally.
    let o = v.open(ino, true, false).await.unwrap();
    v.read(o.fh, 4096, 4096).await.unwrap();
    let after_first = v.stats().bytes_fetched;
    assert!(after_first > before.bytes_fetched);
    v.read(o.fh, 4096, 4096).await.unwrap();
    assert_eq!(v.stats().bytes_fetched, after_first);
    v.release(o.fh).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_disjoint_slots() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = m.vfs.clone();
    let (attr, o) = v.create(ROOT_INO, "shared", 0o644, ME).await.unwrap();
    v.release(o.fh).unwrap();
    const SLOT: usize = 50_000;
    let mut tasks = Vec::new();
    for n in 0..8u32 {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            let o = v.open(attr.ino, true, false).await.unwrap();
            let data = pattern(SLOT, n);
            for (i, c) in data.chunks(7_000).enumerate() {
                let off = n as u64 * SLOT as u64 + (i * 7_000) as u64;
                v.write(o.fh, off, c.to_vec()).await.unwrap();
                if i % 3 == 0 {
                    v.fsync(attr.ino).await.unwrap();
                }
                let back = v.read(o.fh, off, c.len() as u32).await.unwrap();
                assert_eq!(&back[..], c);
            }
            v.release(o.fh).unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = remount(m, &dir).await;
    let got = read_all(&m.vfs, "shared").await;
    for n in 0..8u32 {
        let s = n as usize * SLOT;
        assert_eq!(&got[s..s + SLOT], &pattern(SLOT, n)[..], "slot {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_keep_type_and_device_number_across_remount() {
    use crate::remote::EntryKind;
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = &m.vfs;
    let dev = libc::makedev(4, 64);
    v.mknod(ROOT_INO, "fifo", libc::S_IFIFO | 0o640, 0, ME)
        .await
        .unwrap();
    v.mknod(ROOT_INO, "sock", libc::S_IFSOCK | 0o600, 0, ME)
        .await
        .unwrap();
    v.mknod(ROOT_INO, "tty", libc::S_IFCHR | 0o620, dev, ME)
        .await
        .unwrap();
    v.mknod(ROOT_INO, "disk", libc::S_IFBLK | 0o660, dev, ME)
        .await
        .unwrap();
    v.mknod(ROOT_INO, "plain", libc::S_IFREG | 0o644, 0, ME)
        .await
        .unwrap();
    assert_eq!(
        v.mknod(ROOT_INO, "fifo", libc::S_IFIFO | 0o640, 0, ME)
            .await
            .unwrap_err(),
        Errno::EEXIST
    );

    let m = remount(m, &dir).await;
    let v = &m.vfs;
    for (name, kind, mode) in [
        ("fifo", EntryKind::Fifo, 0o640),
        ("sock", EntryKind::Socket, 0o600),
        ("tty", EntryKind::CharDevice(dev), 0o620),
        ("disk", EntryKind::BlockDevice(dev), 0o660),
        ("plain", EntryKind::File, 0o644),
    ] {
        let a = v.getattr(resolve(v, name).await.unwrap()).unwrap();
        assert_eq!((a.kind, a.mode, a.size), (kind, mode, 0), "{name}");
    }
    // Special files have no body to open through the VFS (the kernel opens them itself).
    let fifo = resolve(v, "fifo").await.unwrap();
    assert_eq!(v.open(fifo, true, false).await.unwrap_err(), Errno::EINVAL);
    v.remove(ROOT_INO, "tty", false).await.unwrap();
    let m = remount(m, &dir).await;
    assert_eq!(
        m.vfs.lookup(ROOT_INO, "tty").await.unwrap_err(),
        Errno::ENOENT
    );
}

#[path = "tests_sparse.rs"]
mod sparse;

#[path = "tests_faults.rs"]
mod faults;

#[path = "tests_links.rs"]
mod links;

#[path = "tests_names.rs"]
mod names;
