//! Names a catalog cannot hold are refused when they are made, not at a commit that would
//! fail for good: a catalog with a plain bucket's path rules (mounted at folder `p`) over a
//! real local store, against the local store's own POSIX names.

use async_trait::async_trait;

use super::*;
use crate::remote::http::Prefix;
use crate::remote::names::{check_path, BadPath};
use crate::remote::{CatalogOp, Entry, RemoteResult};

/// The local catalog with the path rules of a plain bucket mounted at folder `p`.
struct BucketRules {
    inner: Arc<dyn Catalog>,
    prefix: Prefix,
}

#[async_trait]
impl Catalog for BucketRules {
    fn capabilities(&self) -> crate::remote::Capabilities {
        self.inner.capabilities()
    }
    fn check_path(&self, path: &str) -> Result<(), BadPath> {
        check_path(&self.prefix.full(path))
    }
    async fn link_paths(&self, link: u64) -> RemoteResult<Vec<String>> {
        self.inner.link_paths(link).await
    }
    async fn list_dir(&self, dir: &str) -> RemoteResult<Vec<Entry>> {
        self.inner.list_dir(dir).await
    }
    async fn head(&self, path: &str) -> RemoteResult<Option<Entry>> {
        self.inner.head(path).await
    }
    async fn commit(&self, ops: Vec<CatalogOp>) -> RemoteResult<u64> {
        self.inner.commit(ops).await
    }
    async fn revision(&self) -> RemoteResult<u64> {
        self.inner.revision().await
    }
}

async fn mount_with_rules(dir: &Path) -> Mounted {
    mount_with(
        dir,
        |_| {},
        |catalog, cas| {
            let rules: Arc<dyn Catalog> = Arc::new(BucketRules {
                inner: catalog,
                prefix: Prefix::new("p"),
            });
            (rules, cas)
        },
    )
    .await
}

/// The 255-byte name of nested directory `i` (below 16).
fn level(i: usize) -> String {
    format!("{i:x}").repeat(255)
}

/// `depth` nested directories of 255-byte names below `parent`; returns the deepest.
async fn nest(v: &Vfs, mut parent: u64, depth: usize) -> u64 {
    for i in 0..depth {
        parent = v.mkdir(parent, &level(i), 0o755, ME).await.unwrap().ino;
    }
    parent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_with_path_rules_refuses_names_it_cannot_hold_at_create_time() {
    let (_d, dir) = tmp();
    let m = mount_with_rules(&dir).await;
    let v = &m.vfs;
    let bad = "a\u{1}b";
    assert_eq!(
        v.create(ROOT_INO, bad, 0o644, ME).await.unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        v.mkdir(ROOT_INO, bad, 0o755, ME).await.unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        v.mknod(ROOT_INO, bad, libc::S_IFREG | 0o644, 0, ME)
            .await
            .unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(
        v.symlink(ROOT_INO, bad, "t", ME).await.unwrap_err(),
        Errno::EINVAL
    );
    let ok = write_file(v, ROOT_INO, "ok.txt", b"kept").await;
    assert_eq!(
        v.rename(ROOT_INO, "ok.txt", ROOT_INO, bad, false)
            .await
            .unwrap_err(),
        Errno::EINVAL
    );
    assert_eq!(v.link(ok, ROOT_INO, bad).await.unwrap_err(), Errno::EINVAL);

    // The bucket path `p/s` + 15 × (`/` + 255 bytes) is 3,843 bytes: a 253-byte name below
    // makes 4,097 (one too many), a 252-byte one exactly 4,096.
    let s = v.mkdir(ROOT_INO, "s", 0o755, ME).await.unwrap().ino;
    let deep = nest(v, s, 15).await;
    assert_eq!(
        v.create(deep, &"f".repeat(253), 0o644, ME)
            .await
            .unwrap_err(),
        Errno::ENAMETOOLONG
    );
    assert_eq!(
        v.mkdir(deep, &"f".repeat(253), 0o755, ME)
            .await
            .unwrap_err(),
        Errno::ENAMETOOLONG
    );
    write_file(v, deep, &"f".repeat(252), b"at the limit").await;
    // The directory renamed to a longer name would push that file past the limit.
    assert_eq!(
        v.rename(ROOT_INO, "s", ROOT_INO, "ss", false)
            .await
            .unwrap_err(),
        Errno::ENAMETOOLONG
    );
    // A file renamed into the deep directory under a too long name, too.
    assert_eq!(
        v.rename(ROOT_INO, "ok.txt", deep, &"g".repeat(253), false)
            .await
            .unwrap_err(),
        Errno::ENAMETOOLONG
    );

    // Nothing refused reached the store; everything else did.
    assert_eq!(m.vfs.shutdown(Duration::from_secs(30)).await, 0);
    drop(m);
    let m = mount_with_rules(&dir).await;
    let v = &m.vfs;
    assert_eq!(read_all(v, "ok.txt").await, b"kept");
    assert_eq!(v.lookup(ROOT_INO, bad).await.unwrap_err(), Errno::ENOENT);
    let mut path = vec!["s".to_string()];
    path.extend((0..15).map(level));
    path.push("f".repeat(252));
    let path = path.join("/");
    assert_eq!(format!("p/{path}").len(), 4096);
    assert_eq!(read_all(v, &path).await, b"at the limit");
    assert_eq!(v.lookup(ROOT_INO, "ss").await.unwrap_err(), Errno::ENOENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_store_keeps_any_posix_name() {
    let (_d, dir) = tmp();
    let m = mount_at(&dir).await;
    let v = &m.vfs;
    write_file(v, ROOT_INO, "a\u{1}b", b"control").await;
    let deep = nest(v, ROOT_INO, 16).await;
    write_file(v, deep, &"f".repeat(255), b"long").await;
    let m = remount(m, &dir).await;
    assert_eq!(read_all(&m.vfs, "a\u{1}b").await, b"control");
}
