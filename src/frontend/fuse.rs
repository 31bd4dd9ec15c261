//! FUSE adapter (fuser). Each callback converts its arguments, hands the work to the VFS's
//! tokio runtime and replies from there: a FUSE thread never waits on the store.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::Context;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Config, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, SessionACL, SessionUnmounter, TimeOrNow,
    WriteFlags,
};
use tokio::runtime::Handle;

use crate::remote::EntryKind;
use crate::telemetry::OpTimer;
use crate::vfs::time_to_ns;
use crate::vfs::Invalidation;
use crate::vfs::{Attr, Caller, Errno, SetAttr, TimeSet, Vfs};

/// The most bytes of counters [`STATS_IOCTL`] returns (its size field has 14 bits).
pub const STATS_MAX: usize = (1 << 14) - 1;

/// `ioctl` on the mount root that reads the mount's counters as `name value` lines
/// (`_IOR('x', 1, [u8; STATS_MAX])`; its return value is their length). An ioctl rather than
/// an extended attribute: a file system that answers getxattr at all gets two of them per
/// file from `ls -l`, each a round trip; answering none lets the kernel stop asking.
pub const STATS_IOCTL: u32 = (2 << 30) | ((STATS_MAX as u32) << 16) | ((b'x' as u32) << 8) | 1;

/// The FUSE file system: a thin adapter over the VFS.
pub struct FuseFs {
    vfs: Arc<Vfs>,
    rt: Handle,
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn file_type(k: EntryKind) -> FileType {
    match k {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
        EntryKind::CharDevice(_) => FileType::CharDevice,
        EntryKind::BlockDevice(_) => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: match a.kind {
            EntryKind::CharDevice(r) | EntryKind::BlockDevice(r) => r as u32,
            _ => 0,
        },
        blksize: 4096,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(time_to_ns(t)),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Names are stored as UTF-8 in the catalog.
fn utf8(name: &OsStr) -> Result<String, fuser::Errno> {
    name.to_str()
        .map(str::to_owned)
        .ok_or(fuser::Errno::from_i32(libc::EINVAL))
}

impl FuseFs {
    pub fn new(vfs: Arc<Vfs>, rt: Handle) -> Self {
        FuseFs { vfs, rt }
    }

    /// Serve one request. Most complete without waiting (a cached read, a lookup, a
    /// namespace change journalled locally), so the request is first polled here on the FUSE
    /// thread, and handed to the runtime only if it has to wait: that saves two thread
    /// hand-offs on the common path (cold 4 KiB random reads: 15k -> 19k IOPS). The runtime
    /// context is entered so timers, spawns and blocking tasks work; a future that waits
    /// registers the runtime's waker when the runtime polls it again.
    /// `timer` records the request's latency when it is answered.
    fn run<F>(&self, timer: OpTimer, f: impl FnOnce(Arc<Vfs>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let _runtime = self.rt.enter();
        let inner = f(self.vfs.clone());
        let mut fut = Box::pin(async move {
            inner.await;
            drop(timer);
        });
        let waker = futures::task::noop_waker();
        // A panic must not unwind the FUSE thread (a spawned task's panic is contained by the
        // runtime); the request's reply is dropped with its future, which answers EIO.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fut.as_mut().poll(&mut Context::from_waker(&waker))
        }));
        if matches!(polled, Ok(std::task::Poll::Pending)) {
            self.rt.spawn(fut);
        }
    }
}

/// Replies carry the VFS's attribute lifetime (`VfsConfig::attr_ttl`): the VFS invalidates
/// what the kernel holds whenever something changes.
fn reply_entry(reply: ReplyEntry, vfs: &Vfs, r: Result<Attr, Errno>) {
    match r {
        Ok(a) => reply.entry(&vfs.config().attr_ttl, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_attr(reply: ReplyAttr, vfs: &Vfs, r: Result<Attr, Errno>) {
    match r {
        Ok(a) => reply.attr(&vfs.config().attr_ttl, &file_attr(&a)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // FUSE_ATOMIC_O_TRUNC is deliberately not requested: with it the kernel sends O_TRUNC
        // inside OPEN and checks for a running executable (ETXTBSY) only afterwards, so
        // `open(O_TRUNC)` of a binary being executed would truncate it under the process.
        // Without it the kernel checks first and truncates with a separate SETATTR.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let t = crate::telemetry::timings().op("fuse", "lookup");
        let name = match utf8(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.run(t, |vfs| async move {
            reply_entry(reply, &vfs, vfs.lookup(parent.0, &name).await)
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = crate::telemetry::timings().op("fuse", "getattr");
        reply_attr(reply, &self.vfs, self.vfs.getattr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let t = crate::telemetry::timings().op("fuse", "setattr");
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        self.run(t, |vfs| async move {
            reply_attr(reply, &vfs, vfs.setattr(ino.0, set).await)
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _t = crate::telemetry::timings().op("fuse", "readlink");
        match self.vfs.readlink(ino.0) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let t = crate::telemetry::timings().op("fuse", "mknod");
        let name = match utf8(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let who = caller(req);
        self.run(t, |vfs| async move {
            reply_entry(
                reply,
                &vfs,
                vfs.mknod(parent.0, &name, mode, u64::from(rdev), who).await,
            )
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let t = crate::telemetry::timings().op("fuse", "mkdir");
        let name = match utf8(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let who = caller(req);
        self.run(t, |vfs| async move {
            reply_entry(reply, &vfs, vfs.mkdir(parent.0, &name, mode, who).await)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let t = crate::telemetry::timings().op("fuse", "unlink");
        let name = match utf8(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.run(t, |vfs| async move {
            reply_empty(reply, vfs.remove(parent.0, &name, false).await)
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let t = crate::telemetry::timings().op("fuse", "rmdir");
        let name = match utf8(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.run(t, |vfs| async move {
            reply_empty(reply, vfs.remove(parent.0, &name, true).await)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let t = crate::telemetry::timings().op("fuse", "symlink");
        let (name, target) = match (utf8(link_name), utf8(target.as_os_str())) {
            (Ok(n), Ok(t)) => (n, t),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let who = caller(req);
        self.run(t, |vfs| async move {
            reply_entry(
                reply,
                &vfs,
                vfs.symlink(parent.0, &name, &target, who).await,
            )
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let t = crate::telemetry::timings().op("fuse", "rename");
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(fuser::Errno::from_i32(libc::EINVAL));
        }
        let (name, newname) = match (utf8(name), utf8(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        self.run(t, |vfs| async move {
            reply_empty(
                reply,
                vfs.rename(parent.0, &name, newparent.0, &newname, noreplace)
                    .await,
            )
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let t = crate::telemetry::timings().op("fuse", "link");
        let name = match utf8(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.run(t, |vfs| async move {
            reply_entry(reply, &vfs, vfs.link(ino.0, newparent.0, &name).await)
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let t = crate::telemetry::timings().op("fuse", "open");
        let acc = flags.0 & libc::O_ACCMODE;
        let write = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        self.run(t, |vfs| async move {
            match vfs.open(ino.0, write, truncate).await {
                Ok(o) => {
                    let f = if o.keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(o.fh), f)
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let t = crate::telemetry::timings().op("fuse", "read");
        self.run(t, |vfs| async move {
            match vfs.read(fh.0, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let t = crate::telemetry::timings().op("fuse", "write");
        // Most writes land in an existing staging copy: do those right here, without a copy
        // of the data or a hop to the runtime.
        if let Some(r) = self.vfs.try_write_now(fh.0, offset, data) {
            return match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            };
        }
        let data = data.to_vec();
        self.run(t, |vfs| async move {
            match vfs.write(fh.0, offset, data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let t = crate::telemetry::timings().op("fuse", "flush");
        self.run(
            t,
            |vfs| async move { reply_empty(reply, vfs.close(fh.0).await) },
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = crate::telemetry::timings().op("fuse", "release");
        reply_empty(reply, self.vfs.release(fh.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let t = crate::telemetry::timings().op("fuse", "fsync");
        self.run(t, |vfs| async move {
            reply_empty(reply, vfs.fsync(ino.0).await)
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let t = crate::telemetry::timings().op("fuse", "fallocate");
        self.run(t, |vfs| async move {
            reply_empty(reply, vfs.fallocate(fh.0, offset, length, mode).await)
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let t = crate::telemetry::timings().op("fuse", "opendir");
        self.run(t, |vfs| async move {
            match vfs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _t = crate::telemetry::timings().op("fuse", "readdir");
        match self.vfs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    let next = offset + i as u64 + 1;
                    if reply.add(INodeNo(e.ino), next, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _t = crate::telemetry::timings().op("fuse", "releasedir");
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let t = crate::telemetry::timings().op("fuse", "fsyncdir");
        // The directory's entries are namespace changes: commit them.
        self.run(t, |vfs| async move {
            reply_empty(reply, vfs.sync_namespace().await)
        });
    }

    // No extended attributes: ENOSYS tells the kernel so once, and it answers every later
    // call itself (EOPNOTSUPP) instead of asking for each file `ls -l` or `cp -a` looks at.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(fuser::Errno::from_i32(libc::ENOSYS));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(fuser::Errno::from_i32(libc::ENOSYS));
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        if ino.0 != crate::vfs::ROOT_INO || cmd != STATS_IOCTL {
            return reply.error(fuser::Errno::from_i32(libc::ENOTTY));
        }
        let text = self.vfs.stats().to_text();
        if text.len() > (out_size as usize).min(STATS_MAX) {
            return reply.error(fuser::Errno::from_i32(libc::E2BIG));
        }
        reply.ioctl(text.len() as i32, text.as_bytes());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = crate::telemetry::timings().op("fuse", "statfs");
        match self.vfs.statfs() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                crate::vfs::NAME_MAX as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _t = crate::telemetry::timings().op("fuse", "access");
        // Permission checks are the kernel's (default_permissions); this only says it exists.
        reply_empty(reply, self.vfs.getattr(ino.0).map(|_| ()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let t = crate::telemetry::timings().op("fuse", "create");
        let name = match utf8(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let who = caller(req);
        self.run(t, |vfs| async move {
            match vfs.create(parent.0, &name, mode, who).await {
                Ok((a, o)) => reply.created(
                    &vfs.config().attr_ttl,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(o.fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(e)),
            }
        });
    }
}

/// Options of a FUSE mount.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    pub fs_name: String,
    pub read_only: bool,
    pub allow_other: bool,
    pub threads: usize,
}

/// Mount `vfs` at `mountpoint`. Returns the session (run it to serve) and a handle that
/// unmounts it from another thread.
pub fn mount(
    vfs: Arc<Vfs>,
    rt: Handle,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> std::io::Result<(Session<FuseFs>, SessionUnmounter)> {
    let mut mount_options = vec![
        MountOption::FSName(opts.fs_name.clone()),
        MountOption::Subtype("xetmount".into()),
        // The kernel checks permissions against the modes and owners we report.
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.read_only {
        mount_options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = opts.threads > 1;
    let invalidations = vfs.invalidations();
    let mut session = Session::new(FuseFs::new(vfs.clone(), rt), mountpoint, &config)?;
    let notifier = session.notifier();
    // Other writers' changes reach the kernel from a thread of their own, never from a
    // request handler or with a VFS lock held (the kernel may call back into us meanwhile).
    // It ends when the VFS drops the queue.
    std::thread::Builder::new()
        .name("xetmount-inval".into())
        .spawn(move || {
            for inv in invalidations {
                let r = match &inv {
                    Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
                    Invalidation::Entry { parent, name } => {
                        notifier.inval_entry(INodeNo(*parent), OsStr::new(name))
                    }
                };
                // ENOENT: the kernel holds nothing for it, which is fine.
                if let Err(e) = r {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::debug!("kernel invalidation {inv:?}: {e}");
                    }
                }
                vfs.invalidation_done();
            }
        })?;
    let unmounter = session.unmount_callable();
    Ok((session, unmounter))
}
