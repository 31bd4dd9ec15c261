//! Hard links on the local store: one inode under several names, shared body and metadata,
//! link counts, unlink and rename of single names, across remounts and crash recovery.

use super::*;

async fn nlink(v: &Vfs, path: &str) -> u32 {
    v.getattr(resolve(v, path).await.unwrap()).unwrap().nlink
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_share_one_inode_its_body_and_metadata_across_remounts() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = &m.vfs;
    let a = v.mkdir(ROOT_INO, "a", 0o755, ME).await.unwrap().ino;
    let b = v.mkdir(ROOT_INO, "b", 0o755, ME).await.unwrap().ino;
    let ino = write_file(v, a, "f", b"first body").await;
    let attr = v.link(ino, b, "g").await.unwrap();
    assert_eq!(attr.ino, ino);
    assert_eq!(attr.nlink, 2);
    v.link(ino, ROOT_INO, "h").await.unwrap();
    assert_eq!(v.link(ino, b, "g").await.unwrap_err(), Errno::EEXIST);
    assert_eq!(v.link(a, b, "dir").await.unwrap_err(), Errno::EPERM);
    // A write through one name (before its commit) and a chmod reach every name.
    let o = v
        .open(resolve(v, "b/g").await.unwrap(), true, false)
        .await
        .unwrap();
    v.write(o.fh, 0, b"SECOND".to_vec()).await.unwrap();
    v.release(o.fh).unwrap();
    chmod(v, ino, 0o600).await;
    assert_eq!(read_all(v, "h").await, b"SECONDbody");

    let m = remount(m, &dir).await;
    let v = &m.vfs;
    let (f, g, h) = (
        resolve(v, "a/f").await.unwrap(),
        resolve(v, "b/g").await.unwrap(),
        resolve(v, "h").await.unwrap(),
    );
    assert!(f == g && g == h, "one inode for every name after a remount");
    assert_eq!(v.getattr(f).unwrap().nlink, 3);
    assert_eq!(v.getattr(f).unwrap().mode, 0o600);
    assert_eq!(read_all(v, "a/f").await, b"SECONDbody");

    // Unlinking names keeps the others; the file goes with its last name.
    v.remove(a, "f", false).await.unwrap();
    assert_eq!(nlink(v, "h").await, 2);
    let o = v.open(h, true, false).await.unwrap();
    v.write(o.fh, 10, b" + more".to_vec()).await.unwrap();
    v.release(o.fh).unwrap();
    let m = remount(m, &dir).await;
    let v = &m.vfs;
    assert_eq!(resolve(v, "a/f").await.unwrap_err(), Errno::ENOENT);
    assert_eq!(nlink(v, "b/g").await, 2);
    assert_eq!(read_all(v, "b/g").await, b"SECONDbody + more");
    v.remove(ROOT_INO, "h", false).await.unwrap();
    let b = resolve(v, "b").await.unwrap();
    v.remove(b, "g", false).await.unwrap();
    let m = remount(m, &dir).await;
    let listed = m.vfs.opendir(ROOT_INO).await.unwrap();
    let names: Vec<String> = m
        .vfs
        .readdir(listed, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec![".", "..", "a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_a_link_and_of_a_link() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = &m.vfs;
    let x = write_file(v, ROOT_INO, "x", b"xxx").await;
    v.link(x, ROOT_INO, "x2").await.unwrap();
    let y = write_file(v, ROOT_INO, "y", b"yyy").await;
    // Renaming one name onto another name of the same file changes nothing.
    v.rename(ROOT_INO, "x", ROOT_INO, "x2", false)
        .await
        .unwrap();
    assert_eq!(nlink(v, "x").await, 2);
    // Renaming y over x2 leaves x with one name.
    v.rename(ROOT_INO, "y", ROOT_INO, "x2", false)
        .await
        .unwrap();
    assert_eq!(v.getattr(x).unwrap().nlink, 1);
    assert_eq!(resolve(v, "x2").await.unwrap(), y);
    // A linked name moved elsewhere is still a name of its file.
    v.link(x, ROOT_INO, "x3").await.unwrap();
    let d = v.mkdir(ROOT_INO, "d", 0o755, ME).await.unwrap().ino;
    v.rename(ROOT_INO, "x", d, "moved", false).await.unwrap();
    let m = remount(m, &dir).await;
    let v = &m.vfs;
    assert_eq!(read_all(v, "x2").await, b"yyy");
    assert_eq!(nlink(v, "x2").await, 1);
    assert_eq!(
        resolve(v, "d/moved").await.unwrap(),
        resolve(v, "x3").await.unwrap()
    );
    assert_eq!(nlink(v, "x3").await, 2);
    assert_eq!(read_all(v, "d/moved").await, b"xxx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncommitted_write_to_a_linked_file_is_recovered_under_every_name() {
    let (_d, dir) = tmp();
    let m = mount_with(
        &dir,
        |c| c.flush_debounce = Duration::from_secs(3600),
        |c, s| (c, s),
    )
    .await;
    let v = m.vfs.clone();
    let ino = write_file(&v, ROOT_INO, "orig", b"0123456789").await;
    v.fsync(ino).await.unwrap();
    v.link(ino, ROOT_INO, "alias").await.unwrap();
    // The primary name goes; the edit is journaled under the name that stays.
    v.remove(ROOT_INO, "orig", false).await.unwrap();
    let o = v.open(ino, true, false).await.unwrap();
    v.write(o.fh, 2, b"AB".to_vec()).await.unwrap();
    v.sync_staging(ino).await.unwrap();
    // A crash: the VFS goes away without flushing.
    drop(v);
    drop(m);
    let m = mount_at(&dir).await;
    assert_eq!(read_all(&m.vfs, "alias").await, b"01AB456789");
    assert_eq!(resolve(&m.vfs, "orig").await.unwrap_err(), Errno::ENOENT);
}
