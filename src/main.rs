//! `xetmount` command line: mount (FUSE or NFS), serve-nfs, unmount, stats. The arguments
//! live in [`cli`], the choice and opening of a store in [`xetmount::remote::open`]; this is
//! the glue that runs a frontend over them.

mod cli;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use cli::{
    check_fuse, check_mountpoint, Cli, Command, HttpServeArgs, MountArgs, ServeArgs, StoreArgs,
    UserError,
};
use xetmount::frontend::fuse::{self, FuseOptions};
use xetmount::frontend::nfs::NfsFs;
use xetmount::vfs::Vfs;

/// A mount keeps descriptors open for its staging files and connections: take the whole
/// allowance the system grants (the soft limit is often 1024 of a far higher hard limit).
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "xetmount=info,fuser=error,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::fix_malloc_threshold();
    raise_open_file_limit();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Mount(args) => mount(args),
        Command::Unmount { mountpoint } => unmount(&mountpoint),
        Command::Stats { mountpoint } => stats(&mountpoint),
        Command::ServeNfs(args) => serve_nfs(args),
        Command::Serve(args) => serve_http(args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(UserError(msg)) => {
            eprintln!("xetmount: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime, the open store and the VFS over it.
struct Served {
    rt: tokio::runtime::Runtime,
    /// What is mounted: the store directory or the bucket URI.
    source: String,
    /// Mounted read-only: asked for, or the token may not write.
    read_only: bool,
    /// Keeps the store (or the staging directory) locked while the VFS runs.
    _hold: Box<dyn std::any::Any>,
    vfs: Arc<Vfs>,
    shutdown_timeout: Duration,
}

/// `nfs`: the store is served to NFS clients, whose file handles are inode numbers.
fn open_store(args: &StoreArgs, nfs: bool) -> Result<Served, UserError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("xetmount")
        .enable_all()
        .build()?;
    let ctx = xet_runtime::core::XetContext::from_external(rt.handle().clone(), args.xet_config());
    let opened = rt.block_on(xetmount::remote::open::open(ctx, &args.open_options()))?;
    let mut config = args.vfs_config(opened.staging_dir, opened.read_only, opened.shared);
    config.stateless_handles = nfs;
    let vfs = rt.block_on(Vfs::new(opened.catalog, opened.cas, config))?;
    // After opening: a store that cannot be opened gets its one sentence alone.
    tracing::info!("{}", args.memory().describe());
    if args.read_only {
        tracing::info!("read-only because of --read-only: writes fail with EROFS");
    }
    Ok(Served {
        rt,
        source: opened.source,
        read_only: opened.read_only,
        _hold: opened.hold,
        vfs,
        shutdown_timeout: Duration::from_millis(args.flush_shutdown_timeout_ms),
    })
}

impl Served {
    /// Commit everything pending; the error names what is left in the journal.
    fn drain(&self) -> Result<(), UserError> {
        let left = self.rt.block_on(self.vfs.shutdown(self.shutdown_timeout));
        if left > 0 {
            return Err(UserError(format!(
                "{left} pending change(s) could not be committed (files, and the namespace changes as one; the store refused them or the shutdown timeout passed, the log names them); they are journaled in {} and committed by the next mount of this store",
                self.vfs.config().staging_dir.display()
            )));
        }
        tracing::info!("every write is committed");
        Ok(())
    }
}

fn mount(args: MountArgs) -> Result<(), UserError> {
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    if args.nfs {
        return mount_nfs(&args, &mountpoint);
    }
    check_fuse()?;
    let served = open_store(&args.store, false)?;
    let opts = FuseOptions {
        fs_name: format!("xetmount:{}", served.source),
        read_only: served.read_only,
        allow_other: args.allow_other,
        threads: 4,
    };
    let (session, mut unmounter) = fuse::mount(
        served.vfs.clone(),
        served.rt.handle().clone(),
        &mountpoint,
        &opts,
    )
    .map_err(|e| UserError(format!("cannot mount on {}: {e}", mountpoint.display())))?;
    tracing::info!("mounted {} at {}", served.source, mountpoint.display());
    served.rt.spawn(async move {
        xetmount::signals::wait_for_signal().await;
        tracing::info!("signal received; unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::error!("unmount failed: {e}");
        }
    });
    let result = session.run();
    let drained = served.drain();
    result.map_err(|e| UserError(format!("the FUSE session ended with an error: {e}")))?;
    drained
}

/// Start the NFS server; returns its port.
fn start_nfs(served: &Served, port: u16) -> Result<(NfsFs, u16), UserError> {
    use nfsserve::tcp::{NFSTcp, NFSTcpListener};
    let fs = NfsFs::new(served.vfs.clone());
    let mut listener = served
        .rt
        .block_on(NFSTcpListener::bind(
            &format!("127.0.0.1:{port}"),
            fs.clone(),
        ))
        .map_err(|e| {
            UserError(format!(
                "cannot listen on 127.0.0.1:{port}: {e}; pick another --port"
            ))
        })?;
    listener.with_export_name(NFS_EXPORT);
    let port = listener.get_listen_port();
    served.rt.spawn(async move {
        if let Err(e) = listener.handle_forever().await {
            tracing::error!("NFS server stopped: {e}");
        }
    });
    Ok((fs, port))
}

/// The export path clients mount (`127.0.0.1:/bucket`).
const NFS_EXPORT: &str = "bucket";

fn nfs_url(port: u16) -> String {
    format!("nfs://127.0.0.1/{NFS_EXPORT}/?version=3&nfsport={port}&mountport={port}")
}

fn nfs_mount_command(port: u16, mp: &Path) -> String {
    format!(
        "mount -t nfs -o vers=3,tcp,port={port},mountport={port},nolock 127.0.0.1:/{NFS_EXPORT} {}",
        mp.display()
    )
}

fn serve_nfs(args: ServeArgs) -> Result<(), UserError> {
    let served = open_store(&args.store, true)?;
    let (fs, port) = start_nfs(&served, args.port)?;
    tracing::info!("serving {} over NFSv3 on 127.0.0.1:{port}", served.source);
    // A closed stdout (the caller stopped reading) must not stop the server.
    let _ = writeln!(
        std::io::stdout(),
        "NFSv3 server for {} on 127.0.0.1:{port}\nmount with:  {}\nlibnfs URL:  {}",
        served.source,
        nfs_mount_command(port, Path::new("<mountpoint>")),
        nfs_url(port)
    );
    served.rt.block_on(xetmount::signals::wait_for_signal());
    tracing::info!("signal received; stopping");
    fs.close_handles();
    served.drain()
}

fn mount_nfs(args: &MountArgs, mountpoint: &Path) -> Result<(), UserError> {
    let served = open_store(&args.store, true)?;
    let (fs, port) = start_nfs(&served, args.nfs_port)?;
    let status = std::process::Command::new("mount")
        .args(["-t", "nfs", "-o"])
        .arg(format!("vers=3,tcp,port={port},mountport={port},nolock"))
        .arg(format!("127.0.0.1:/{NFS_EXPORT}"))
        .arg(mountpoint)
        .output();
    let mounted = match status {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(UserError(format!(
            "the kernel NFS client could not mount the bucket ({}); install nfs-common, or run `xetmount serve-nfs` and use a user-space client",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("no reason given")
                .trim()
        ))),
        Err(e) => Err(UserError(format!(
            "cannot run mount ({e}); run `xetmount serve-nfs` and mount with a user-space client"
        ))),
    };
    if mounted.is_ok() {
        tracing::info!(
            "mounted {} at {} over NFSv3 (port {port})",
            served.source,
            mountpoint.display()
        );
        served.rt.block_on(xetmount::signals::wait_for_signal());
        let _ = std::process::Command::new("umount")
            .arg(mountpoint)
            .status();
    }
    // Mounted or not, the server may hold handles and dirty files: commit them before exit.
    fs.close_handles();
    served.drain()?;
    mounted
}

fn stats(mp: &Path) -> Result<(), UserError> {
    use std::os::fd::AsRawFd;
    let not_ours = || {
        UserError(format!(
            "{} is not an xetmount mount point; pass the directory a bucket is mounted on",
            mp.display()
        ))
    };
    let dir = std::fs::File::open(mp)
        .map_err(|e| UserError(format!("cannot open {}: {e}", mp.display())))?;
    let mut buf = vec![0u8; fuse::STATS_MAX];
    // SAFETY: the ioctl writes at most its size field's STATS_MAX bytes into `buf`.
    let n = unsafe { libc::ioctl(dir.as_raw_fd(), fuse::STATS_IOCTL as _, buf.as_mut_ptr()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::ENOSYS) | Some(libc::EINVAL) => Err(not_ours()),
            _ => Err(UserError(format!(
                "cannot read stats of {}: {e}",
                mp.display()
            ))),
        };
    }
    let _ = write!(
        std::io::stdout(),
        "{}",
        String::from_utf8_lossy(&buf[..n as usize])
    );
    Ok(())
}

fn unmount(mp: &Path) -> Result<(), UserError> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mp)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err(UserError(format!(
            "could not unmount {}; is it an xetmount mount point, and is no process using it?",
            mp.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(UserError(
            "fusermount3 was not found; install fuse3 (apt-get install fuse3)".into(),
        )),
        Err(e) => Err(UserError(format!("cannot run fusermount3: {e}"))),
    }
}

fn serve_http(args: HttpServeArgs) -> Result<(), UserError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("xetmount-serve")
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| {
                UserError(format!(
                    "cannot listen on {}: {e}; choose another address with --listen",
                    args.listen
                ))
            })?;
        let addr = listener.local_addr()?;
        let ctx = xet_runtime::core::XetContext::from_external(
            tokio::runtime::Handle::current(),
            xetmount::remote::local::xet_config(),
        );
        let opts = xetmount::server::ServeOptions {
            token_file: args.token_file.clone(),
            user: args.user.clone(),
            public_url: args
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}")),
            cas_token_ttl_secs: args.cas_token_ttl_secs,
            hub_rate_limit: args.hub_rate_limit,
            hub_only: args.hub_only,
        };
        let server = xetmount::server::Server::open(&args.dir, ctx, opts)
            .await
            .map_err(|e| UserError(e.to_string()))?;
        println!("xetmount serve: listening on {}", server.public_url);
        std::io::stdout().flush()?;
        xetmount::server::run(listener, server, xetmount::signals::wait_for_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}
