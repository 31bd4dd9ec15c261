//! NFSv3 frontend (nfsserve): a thin adapter from the protocol's stateless calls to the VFS.
//! READ and WRITE borrow VFS handles from a [`HandlePool`]; every decision (staging,
//! flushing, durability) stays in `vfs`.
//!
//! Stability: nfsserve 0.11 answers every WRITE as `FILE_SYNC` and does not route COMMIT to
//! the file system. The VFS makes that answer true: `Vfs::write_stable` returns only once the bytes
//! and the journal record are fsync'd in staging, from where a restart recovers and commits
//! them (DESIGN.md §4); the commit to the store follows through the debounced flusher.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nfsserve::nfs::{
    fattr3, fileid3, filename3, ftype3, nfspath3, nfsstat3, nfstime3, sattr3, set_atime, set_gid3,
    set_mode3, set_mtime, set_size3, set_uid3, specdata3,
};
use nfsserve::vfs::{DirEntry, NFSFileSystem, ReadDirResult, VFSCapabilities};

use crate::frontend::handle_pool::HandlePool;
use crate::remote::EntryKind;
use crate::vfs::{Attr, Caller, Errno, Invalidation, SetAttr, TimeSet, Vfs, ROOT_INO};

/// Inodes with a pooled handle at a time.
const POOL_CAPACITY: usize = 1024;

/// Cheap to clone: the server and the shutdown path share one pool.
#[derive(Clone)]
pub struct NfsFs {
    vfs: Arc<Vfs>,
    pool: Arc<HandlePool>,
    /// Who owns what NFS clients create (nfsserve passes no credentials).
    owner: Caller,
}

impl NfsFs {
    pub fn new(vfs: Arc<Vfs>) -> Self {
        // SAFETY: geteuid/getegid have no preconditions.
        let owner = unsafe {
            Caller {
                uid: libc::geteuid(),
                gid: libc::getegid(),
            }
        };
        let pool = Arc::new(HandlePool::new(POOL_CAPACITY));
        // Another writer changed or removed a file: its pooled handle goes, so a removed
        // file's inode is reaped (its handle then answers STALE) and nothing pins an old
        // version. A thread of its own, ending when the VFS drops the queue.
        let invalidations = vfs.invalidations();
        let (v, p) = (Arc::downgrade(&vfs), pool.clone());
        let spawned = std::thread::Builder::new()
            .name("xetmount-nfs-inval".into())
            .spawn(move || {
                for inv in invalidations {
                    if let Invalidation::Inode(ino) = inv {
                        p.forget(ino);
                    }
                    match v.upgrade() {
                        Some(v) => v.invalidation_done(),
                        None => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the NFS invalidation thread: {e}");
        }
        NfsFs { vfs, pool, owner }
    }

    /// NFS keeps no kernel-style references: drop the one a creation took, so an unlinked
    /// file is reaped when its last handle goes.
    fn unref(&self, ino: u64) {
        self.vfs.forget(ino, 1);
    }

    /// Create an empty regular file; NFS keeps neither the handle nor the reference.
    /// NFSv3 namespace replies promise stable storage: the change is journaled durably (the
    /// store commit follows through the flusher, as for writes).
    async fn stable(&self) -> Result<(), nfsstat3> {
        self.vfs.sync_namespace_journal().await.map_err(stat)
    }

    async fn create_file(&self, dirid: fileid3, name: &str, mode: u32) -> Result<Attr, Errno> {
        let (a, o) = self.vfs.create(dirid, name, mode, self.owner).await?;
        self.vfs.release(o.fh)?;
        self.unref(a.ino);
        Ok(a)
    }

    /// A file handle names an inode number, which the VFS may have dropped from memory
    /// since (`--inode-soft-limit`): bring it back, or answer STALE if the file is gone.
    async fn known(&self, id: fileid3) -> Result<(), nfsstat3> {
        self.vfs.revive(id).await.map_err(by_handle)
    }

    /// Release every pooled handle (before shutdown, so their flushes are scheduled).
    pub fn close_handles(&self) {
        self.pool.clear();
    }
}

/// errno → NFS status for a call naming a file by handle: an inode this mount no longer
/// knows (removed, here or by another writer, and reaped) is a stale handle.
fn by_handle(e: Errno) -> nfsstat3 {
    match e {
        Errno::ENOENT => nfsstat3::NFS3ERR_STALE,
        e => stat(e),
    }
}

/// errno → NFS status. EBADF (a handle problem of ours) is never reported as STALE: the
/// file handle the client holds is fine.
fn stat(e: Errno) -> nfsstat3 {
    match e.0 {
        libc::ENOENT => nfsstat3::NFS3ERR_NOENT,
        libc::EACCES => nfsstat3::NFS3ERR_ACCES,
        libc::EPERM => nfsstat3::NFS3ERR_PERM,
        libc::ENOSPC => nfsstat3::NFS3ERR_NOSPC,
        libc::EDQUOT => nfsstat3::NFS3ERR_DQUOT,
        libc::EEXIST => nfsstat3::NFS3ERR_EXIST,
        libc::ENOTDIR => nfsstat3::NFS3ERR_NOTDIR,
        libc::EISDIR => nfsstat3::NFS3ERR_ISDIR,
        libc::ENOTEMPTY => nfsstat3::NFS3ERR_NOTEMPTY,
        libc::ENAMETOOLONG => nfsstat3::NFS3ERR_NAMETOOLONG,
        libc::EROFS => nfsstat3::NFS3ERR_ROFS,
        libc::EINVAL => nfsstat3::NFS3ERR_INVAL,
        libc::EFBIG => nfsstat3::NFS3ERR_FBIG,
        libc::EXDEV => nfsstat3::NFS3ERR_XDEV,
        libc::EAGAIN | libc::ETIMEDOUT => nfsstat3::NFS3ERR_JUKEBOX,
        _ => nfsstat3::NFS3ERR_IO,
    }
}

fn name(n: &filename3) -> Result<String, nfsstat3> {
    String::from_utf8(n.0.clone()).map_err(|_| nfsstat3::NFS3ERR_INVAL)
}

fn nfs_time(t: SystemTime) -> nfstime3 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    nfstime3 {
        seconds: d.as_secs() as u32,
        nseconds: d.subsec_nanos(),
    }
}

fn fattr(a: &Attr) -> fattr3 {
    let (ftype, rdev) = match a.kind {
        EntryKind::File => (ftype3::NF3REG, 0),
        EntryKind::Dir => (ftype3::NF3DIR, 0),
        EntryKind::Symlink => (ftype3::NF3LNK, 0),
        EntryKind::Fifo => (ftype3::NF3FIFO, 0),
        EntryKind::Socket => (ftype3::NF3SOCK, 0),
        EntryKind::CharDevice(r) => (ftype3::NF3CHR, r),
        EntryKind::BlockDevice(r) => (ftype3::NF3BLK, r),
    };
    fattr3 {
        ftype,
        mode: a.mode & 0o7777,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        used: a.size.div_ceil(4096) * 4096,
        rdev: specdata3 {
            specdata1: libc::major(rdev),
            specdata2: libc::minor(rdev),
        },
        fsid: 0,
        fileid: a.ino,
        atime: nfs_time(a.atime),
        mtime: nfs_time(a.mtime),
        ctime: nfs_time(a.ctime),
    }
}

fn set_time(t: &nfstime3) -> TimeSet {
    TimeSet::At(i64::from(t.seconds) * 1_000_000_000 + i64::from(t.nseconds))
}

fn setattr_of(s: &sattr3) -> SetAttr {
    SetAttr {
        mode: match s.mode {
            set_mode3::mode(m) => Some(m),
            set_mode3::Void => None,
        },
        uid: match s.uid {
            set_uid3::uid(u) => Some(u),
            set_uid3::Void => None,
        },
        gid: match s.gid {
            set_gid3::gid(g) => Some(g),
            set_gid3::Void => None,
        },
        size: match s.size {
            set_size3::size(n) => Some(n),
            set_size3::Void => None,
        },
        atime: match &s.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => Some(TimeSet::Now),
            set_atime::SET_TO_CLIENT_TIME(t) => Some(set_time(t)),
        },
        mtime: match &s.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => Some(TimeSet::Now),
            set_mtime::SET_TO_CLIENT_TIME(t) => Some(set_time(t)),
        },
    }
}

fn is_noop(s: &SetAttr) -> bool {
    s.mode.is_none()
        && s.uid.is_none()
        && s.gid.is_none()
        && s.size.is_none()
        && s.atime.is_none()
        && s.mtime.is_none()
}

#[async_trait]
impl NFSFileSystem for NfsFs {
    fn capabilities(&self) -> VFSCapabilities {
        if self.vfs.config().read_only {
            VFSCapabilities::ReadOnly
        } else {
            VFSCapabilities::ReadWrite
        }
    }

    fn root_dir(&self) -> fileid3 {
        ROOT_INO
    }

    async fn lookup(&self, dirid: fileid3, filename: &filename3) -> Result<fileid3, nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "lookup");
        self.known(dirid).await?;
        let n = name(filename)?;
        match n.as_str() {
            "." => Ok(dirid),
            ".." => self.vfs.parent_of(dirid).map_err(stat),
            _ => self.vfs.find(dirid, &n).await.map(|a| a.ino).map_err(stat),
        }
    }

    async fn getattr(&self, id: fileid3) -> Result<fattr3, nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "getattr");
        self.known(id).await?;
        self.vfs.getattr(id).map(|a| fattr(&a)).map_err(by_handle)
    }

    async fn setattr(&self, id: fileid3, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "setattr");
        self.known(id).await?;
        let s = setattr_of(&setattr);
        if is_noop(&s) {
            return self.getattr(id).await;
        }
        let a = self.vfs.setattr(id, s).await.map_err(by_handle)?;
        self.stable().await?;
        Ok(fattr(&a))
    }

    async fn read(
        &self,
        id: fileid3,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "read");
        self.known(id).await?;
        let (data, eof) = self
            .pool
            .read(&self.vfs, id, offset, count)
            .await
            .map_err(by_handle)?;
        Ok((data.to_vec(), eof))
    }

    async fn write(&self, id: fileid3, offset: u64, data: &[u8]) -> Result<fattr3, nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "write");
        self.known(id).await?;
        self.pool
            .write(&self.vfs, id, offset, data.to_vec())
            .await
            .map_err(by_handle)?;
        self.getattr(id).await
    }

    async fn create(
        &self,
        dirid: fileid3,
        filename: &filename3,
        attr: sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "create");
        self.known(dirid).await?;
        let n = name(filename)?;
        let mut s = setattr_of(&attr);
        let mode = s.mode.take().unwrap_or(0o644);
        // nfsserve has already refused GUARDED creates of an existing name, so an existing
        // file here is an UNCHECKED create: it is opened as is, with the given attributes
        // (typically size 0) applied.
        let a = match self.create_file(dirid, &n, mode).await {
            Ok(a) => a,
            Err(Errno::EEXIST) => {
                let a = self.vfs.find(dirid, &n).await.map_err(stat)?;
                if a.kind != EntryKind::File {
                    return Err(nfsstat3::NFS3ERR_EXIST);
                }
                a
            }
            Err(e) => return Err(stat(e)),
        };
        let a = if is_noop(&s) {
            a
        } else {
            self.vfs.setattr(a.ino, s).await.map_err(stat)?
        };
        self.stable().await?;
        Ok((a.ino, fattr(&a)))
    }

    async fn create_exclusive(
        &self,
        dirid: fileid3,
        filename: &filename3,
    ) -> Result<fileid3, nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "create_exclusive");
        self.known(dirid).await?;
        let n = name(filename)?;
        let a = self.create_file(dirid, &n, 0o644).await.map_err(stat)?;
        self.stable().await?;
        Ok(a.ino)
    }

    async fn mkdir(
        &self,
        dirid: fileid3,
        dirname: &filename3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "mkdir");
        self.known(dirid).await?;
        let n = name(dirname)?;
        let a = self
            .vfs
            .mkdir(dirid, &n, 0o755, self.owner)
            .await
            .map_err(stat)?;
        self.unref(a.ino);
        self.stable().await?;
        Ok((a.ino, fattr(&a)))
    }

    async fn remove(&self, dirid: fileid3, filename: &filename3) -> Result<(), nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "remove");
        self.known(dirid).await?;
        let n = name(filename)?;
        let a = self.vfs.find(dirid, &n).await.map_err(stat)?;
        let is_dir = a.kind == EntryKind::Dir;
        // NFS has no close: let go of the pooled handle so the orphan can be reaped.
        self.pool.forget(a.ino);
        self.vfs.remove(dirid, &n, is_dir).await.map_err(stat)?;
        self.stable().await
    }

    async fn rename(
        &self,
        from_dirid: fileid3,
        from_filename: &filename3,
        to_dirid: fileid3,
        to_filename: &filename3,
    ) -> Result<(), nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "rename");
        self.known(from_dirid).await?;
        self.known(to_dirid).await?;
        let (from, to) = (name(from_filename)?, name(to_filename)?);
        if let Ok(replaced) = self.vfs.find(to_dirid, &to).await {
            self.pool.forget(replaced.ino);
        }
        self.vfs
            .rename(from_dirid, &from, to_dirid, &to, false)
            .await
            .map_err(stat)?;
        self.stable().await
    }

    async fn readdir(
        &self,
        dirid: fileid3,
        start_after: fileid3,
        max_entries: usize,
    ) -> Result<ReadDirResult, nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "readdir");
        self.known(dirid).await?;
        // The cookie is the last entry's file id: the next page starts after its name.
        let after = (start_after != 0).then_some(start_after);
        let (page, end) = match self.vfs.dir_page(dirid, after, max_entries).await {
            Err(Errno::ENOENT) if after.is_some() => return Err(nfsstat3::NFS3ERR_BAD_COOKIE),
            r => r.map_err(stat)?,
        };
        let mut out = ReadDirResult {
            entries: Vec::with_capacity(page.len()),
            end,
        };
        for e in page {
            let attr = self.vfs.getattr(e.ino).map_err(stat)?;
            out.entries.push(DirEntry {
                fileid: e.ino,
                name: e.name.into_bytes().into(),
                attr: fattr(&attr),
            });
        }
        Ok(out)
    }

    async fn symlink(
        &self,
        dirid: fileid3,
        linkname: &filename3,
        symlink: &nfspath3,
        _attr: &sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "symlink");
        self.known(dirid).await?;
        let n = name(linkname)?;
        let target = name(symlink)?;
        let a = self
            .vfs
            .symlink(dirid, &n, &target, self.owner)
            .await
            .map_err(stat)?;
        self.unref(a.ino);
        self.stable().await?;
        Ok((a.ino, fattr(&a)))
    }

    async fn readlink(&self, id: fileid3) -> Result<nfspath3, nfsstat3> {
        let _t = crate::telemetry::timings().op("nfs", "readlink");
        self.known(id).await?;
        let t = self.vfs.readlink(id).map_err(by_handle)?;
        Ok(t.into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::tests::{mount_at, tmp};

    fn staging_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir.join("staging"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "namespace.nslog")
            .count()
    }

    /// Another writer's changes reach an NFS client through the handle it already holds: a
    /// new body in place (same file id; the pooled handle pins no old version), a removal as
    /// a stale handle. A is the other writer, B a second VFS on the same store (polling),
    /// served through NFS.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handles_held_by_a_client_follow_other_writers() {
        use crate::vfs::tests::{random, write_file};
        use crate::vfs::VfsConfig;
        use std::time::Duration;

        async fn until<F: std::future::Future<Output = bool>>(
            what: &str,
            mut f: impl FnMut() -> F,
        ) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !f().await {
                assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        let (_d, dir) = tmp();
        let a = mount_at(&dir).await;
        let config = VfsConfig {
            poll_interval: Duration::from_millis(20),
            ..VfsConfig::new(dir.join("staging-b"))
        };
        let b = Vfs::new(a._store.catalog.clone(), a._store.cas.clone(), config)
            .await
            .unwrap();
        let fs = NfsFs::new(b.clone());
        let name: filename3 = b"f".to_vec().into();
        let (v1, v2) = (random(300_000, 1), random(200_000, 2));
        let ino = write_file(&a.vfs, ROOT_INO, "f", &v1).await;
        a.vfs.fsync(ino).await.unwrap();
        until("f on B", || async {
            fs.lookup(ROOT_INO, &name).await.is_ok()
        })
        .await;
        let id = fs.lookup(ROOT_INO, &name).await.unwrap();
        let read = |id| {
            let fs = fs.clone();
            async move { fs.read(id, 0, 1 << 20).await.map(|(d, _)| d) }
        };
        assert_eq!(read(id).await.unwrap(), v1);

        // A rewrites f: the handle B's client holds reads the new body.
        let o = a.vfs.open(ino, true, true).await.unwrap();
        a.vfs.write(o.fh, 0, v2.clone()).await.unwrap();
        a.vfs.close(o.fh).await.unwrap();
        a.vfs.release(o.fh).unwrap();
        a.vfs.fsync(ino).await.unwrap();
        until("the new body through the old handle", || async {
            read(id).await.is_ok_and(|d| d == v2)
        })
        .await;
        assert_eq!(fs.getattr(id).await.unwrap().size, v2.len() as u64);
        assert_eq!(fs.lookup(ROOT_INO, &name).await.unwrap(), id);

        // A removes f: the handle goes stale, the name is gone.
        a.vfs.remove(ROOT_INO, "f", false).await.unwrap();
        a.vfs.sync_namespace().await.unwrap();
        until("a stale handle", || async {
            matches!(fs.getattr(id).await, Err(nfsstat3::NFS3ERR_STALE))
        })
        .await;
        assert!(matches!(read(id).await, Err(nfsstat3::NFS3ERR_STALE)));
        assert!(matches!(
            fs.lookup(ROOT_INO, &name).await,
            Err(nfsstat3::NFS3ERR_NOENT)
        ));
        b.shutdown(Duration::from_secs(10)).await;
    }

    /// A directory listed page by page, each page resuming after the last entry of the one
    /// before: every name once, in order, the end on the last page only; a page resuming
    /// after a removed entry says its cookie is bad; a file with two names resumes after the
    /// first of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readdir_pages_resume_after_their_last_entry() {
        let (_d, dir) = tmp();
        let m = mount_at(&dir).await;
        let fs = NfsFs::new(m.vfs.clone());
        let n = |s: &str| -> filename3 { s.as_bytes().to_vec().into() };
        let (d, _) = fs.mkdir(ROOT_INO, &n("d")).await.unwrap();
        let mut want: Vec<String> = (0..250).map(|i| format!("f{i:03}")).collect();
        for name in &want {
            fs.create(d, &n(name), sattr3::default()).await.unwrap();
        }
        let first = fs.lookup(d, &n("f000")).await.unwrap();
        m.vfs.link(first, d, "link").await.unwrap();
        want.push("link".into());
        want.sort();

        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let page = fs.readdir(d, after, 40).await.unwrap();
            assert!(page.entries.len() <= 40);
            got.extend(page.entries.iter().map(|e| e.name.0.clone()));
            if page.end {
                break;
            }
            assert_eq!(page.entries.len(), 40, "a short page that is not the end");
            after = page.entries.last().unwrap().fileid;
        }
        let got: Vec<String> = got
            .into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        assert_eq!(got, want);

        // After "f000", which is also "link": resumes after the first name, at "f001".
        let page = fs.readdir(d, first, 1).await.unwrap();
        assert_eq!(page.entries[0].name.0, b"f001");
        let cursor = fs.lookup(d, &n("f100")).await.unwrap();
        fs.remove(d, &n("f100")).await.unwrap();
        assert!(matches!(
            fs.readdir(d, cursor, 10).await,
            Err(nfsstat3::NFS3ERR_BAD_COOKIE)
        ));
    }

    /// NFS never sends FORGET: lookups and creations must not pin inodes, or a removed file
    /// would keep its staging copy (and its inode) until unmount.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_removed_over_nfs_leaves_nothing_behind() {
        let (_d, dir) = tmp();
        let m = mount_at(&dir).await;
        let fs = NfsFs::new(m.vfs.clone());
        let name: filename3 = b"f".to_vec().into();
        let (ino, _) = fs.create(ROOT_INO, &name, sattr3::default()).await.unwrap();
        fs.write(ino, 0, b"some bytes").await.unwrap();
        assert_eq!(fs.lookup(ROOT_INO, &name).await.unwrap(), ino);
        assert!(staging_files(&dir) > 0);
        fs.remove(ROOT_INO, &name).await.unwrap();
        assert_eq!(
            staging_files(&dir),
            0,
            "the removed file's staging copy lingers"
        );
        assert!(matches!(
            fs.getattr(ino).await,
            Err(nfsstat3::NFS3ERR_STALE)
        ));
    }

    /// NFS file handles are inode numbers and NFS never forgets them: entries the VFS
    /// dropped to stay within its inode soft limit are found again by number, keep it, and
    /// read the same bytes; one removed meanwhile by another writer answers STALE.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handles_outlive_the_inode_limit() {
        use crate::vfs::tests::{random, remount, write_file};

        let (_d, dir) = tmp();
        let a = mount_at(&dir).await;
        let mut bodies = Vec::new();
        for d in 0..6 {
            let name = format!("d{d}");
            let sub = a.vfs.mkdir(ROOT_INO, &name, 0o755, crate::vfs::tests::ME);
            let sub = sub.await.unwrap().ino;
            for f in 0..40 {
                let body = random(100 + f * 7, (d * 100 + f) as u64);
                write_file(&a.vfs, sub, &format!("f{f}"), &body).await;
                bodies.push((d, f, body));
            }
        }
        let a = remount(a, &dir).await;
        let config = crate::vfs::VfsConfig {
            inode_soft_limit: 60,
            stateless_handles: true,
            ..crate::vfs::VfsConfig::new(dir.join("staging-b"))
        };
        let b = Vfs::new(a._store.catalog.clone(), a._store.cas.clone(), config)
            .await
            .unwrap();
        let fs = NfsFs::new(b.clone());
        let n = |s: &str| -> filename3 { s.as_bytes().to_vec().into() };
        let d0 = fs.lookup(ROOT_INO, &n("d0")).await.unwrap();
        let held = fs.lookup(d0, &n("f5")).await.unwrap();
        let gone = fs.lookup(d0, &n("f6")).await.unwrap();
        // (Not read yet: a pooled read handle would keep d0's listing in the table.)
        assert_eq!(
            fs.getattr(held).await.unwrap().size,
            bodies[5].2.len() as u64
        );
        // Walking the other directories pushes d0's listing out of the table.
        for d in 1..6 {
            let id = fs.lookup(ROOT_INO, &n(&format!("d{d}"))).await.unwrap();
            assert_eq!(fs.readdir(id, 0, 1000).await.unwrap().entries.len(), 40);
        }
        let s = b.stats();
        assert!(s.listings_dropped > 0 && s.inodes < 100, "{s:?}");
        assert!(
            matches!(b.getattr(held), Err(Errno::ENOENT)),
            "d0's listing was dropped"
        );
        // Another writer removes d0/f6 while d0 is out of the table.
        a.vfs
            .remove(d0_of(&a.vfs).await, "f6", false)
            .await
            .unwrap();
        a.vfs.sync_namespace().await.unwrap();

        assert_eq!(
            fs.getattr(held).await.unwrap().size,
            bodies[5].2.len() as u64
        );
        assert_eq!(fs.read(held, 0, 1 << 20).await.unwrap().0, bodies[5].2);
        assert_eq!(fs.lookup(d0, &n("f5")).await.unwrap(), held);
        assert!(matches!(
            fs.getattr(gone).await,
            Err(nfsstat3::NFS3ERR_STALE)
        ));
        // Files of the other dropped listings read back through fresh lookups.
        for (d, f, body) in bodies.iter().filter(|(d, f, _)| *d > 0 && f % 13 == 0) {
            let id = fs.lookup(ROOT_INO, &n(&format!("d{d}"))).await.unwrap();
            let id = fs.lookup(id, &n(&format!("f{f}"))).await.unwrap();
            assert_eq!(&fs.read(id, 0, 1 << 20).await.unwrap().0, body);
        }

        async fn d0_of(v: &Vfs) -> u64 {
            crate::vfs::tests::resolve(v, "d0").await.unwrap()
        }
    }
}
