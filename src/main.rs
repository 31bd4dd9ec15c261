//! `xetmount` command line: mount (FUSE or NFS), serve-nfs, unmount, stats.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use xetmount::frontend::fuse::{self, FuseOptions};
use xetmount::frontend::nfs::NfsFs;
use xetmount::remote::http::{find_token, BucketUri, RemoteOptions};
use xetmount::remote::local::LocalStore;
use xetmount::remote::{Cas, Catalog, FixedOwner, RemoteError};
use xetmount::vfs::{Vfs, VfsConfig};

#[derive(Parser)]
#[command(
    name = "xetmount",
    version,
    about = "Mount a Xet-backed bucket as a POSIX filesystem"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount the bucket stored in STORE at MOUNTPOINT (runs in the foreground until unmounted).
    Mount(MountArgs),
    /// Unmount a mounted bucket; the mount process commits pending writes, then exits.
    Unmount { mountpoint: PathBuf },
    /// Print a mount's counters (bytes fetched and stored, files uploaded and composed).
    Stats { mountpoint: PathBuf },
    /// Serve the bucket over NFSv3 on 127.0.0.1 without mounting it (for machines with a
    /// user-space NFS client only); prints the mount command and the libnfs URL.
    ServeNfs(ServeArgs),
    /// Host buckets over HTTP from DIR: the Hugging Face bucket API and the Xet CAS API on one
    /// address, for `huggingface_hub`/`hf` clients and for `xetmount mount hf://buckets/...`.
    Serve(HttpServeArgs),
}

#[derive(clap::Args)]
struct HttpServeArgs {
    /// Directory holding the served buckets; created if missing or empty.
    dir: PathBuf,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Bearer tokens, one per line: `TOKEN USER read|write [BUCKET-PATTERN ...]`. Without it
    /// the server is open: whoever reaches the address reads and writes every bucket.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Without --token-file: the user every caller is (the namespace `me` stands for).
    #[arg(long, default_value = "local")]
    user: String,
    /// URL clients reach this server at, if not http://LISTEN (behind a proxy).
    #[arg(long)]
    public_url: Option<String>,
    /// Lifetime of the CAS tokens the token routes hand out, in seconds.
    #[arg(long, default_value_t = 3600)]
    cas_token_ttl_secs: u64,
    /// Bucket-API requests per second before callers get 429 with Retry-After (0: no limit).
    #[arg(long, default_value_t = 0)]
    hub_rate_limit: u32,
    /// Answer only what the Hugging Face Hub answers: no xetmount catalog or chunk-list
    /// routes, so clients see a plain bucket (for testing mounts against a Hub-like server).
    #[arg(long)]
    hub_only: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// TCP port (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[derive(clap::Args)]
struct MountArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Empty directory to mount on.
    mountpoint: PathBuf,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf unless root).
    #[arg(long)]
    allow_other: bool,
    /// Serve over NFSv3 on 127.0.0.1 and mount with the kernel's NFS client instead of FUSE.
    #[arg(long)]
    nfs: bool,
    /// With --nfs: the server's TCP port (0 = any free port).
    #[arg(long, default_value_t = 0)]
    nfs_port: u16,
}

/// The bucket and how the VFS serves it (shared by every frontend).
#[derive(clap::Args)]
struct StoreArgs {
    /// Directory of the local store (created if missing or empty), or a remote bucket
    /// `hf://buckets/NAMESPACE/NAME[/PATH]`.
    store: PathBuf,
    /// For hf:// buckets: the Hub endpoint (default $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
    /// For hf:// buckets: a file holding the token (default $HF_TOKEN, else the token
    /// `hf auth login` saved).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// For hf:// buckets: where xet caches and (by default) staging live
    /// (default ~/.cache/xetmount/NAMESPACE/NAME).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// For hf:// buckets: disk for the chunk cache in the cache directory (e.g. 10G, 500M;
    /// 0 = none): what was downloaded once is read from there, across remounts too.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    cache_size: u64,
    /// For plain buckets (which keep no owner or mode): the owner every entry shows
    /// (default: the user running xetmount).
    #[arg(long)]
    uid: Option<u32>,
    /// For plain buckets: the group every entry shows (default: the mounting user's group).
    #[arg(long)]
    gid: Option<u32>,
    /// For plain buckets: the permission bits every file shows, in octal.
    #[arg(long, default_value = "644", value_parser = parse_mode)]
    file_mode: u32,
    /// For plain buckets: the permission bits every directory shows, in octal.
    #[arg(long, default_value = "755", value_parser = parse_mode)]
    dir_mode: u32,
    /// For hf:// buckets: how often to ask whether other writers changed the bucket, in
    /// seconds, where the server offers no change feed (`xetmount serve` does: its changes
    /// arrive as they happen); 0 turns change detection off.
    #[arg(long, default_value_t = 30)]
    poll_interval_secs: u64,
    /// Where staging files live (default: STORE/staging).
    #[arg(long)]
    staging_dir: Option<PathBuf>,
    /// Quiet time after a close before the file is committed. Short enough that a bulk
    /// extraction uploads while it writes (a 2 s debounce left a 2 s untar's whole upload for
    /// the end: 6 s until durable, against 3 s at 1 s).
    #[arg(long, default_value_t = 1000)]
    flush_debounce_ms: u64,
    /// Longest a file waits for its commit however often it is closed again; files that fall
    /// due together share one catalog commit.
    #[arg(long, default_value_t = 30000)]
    flush_max_batch_window_ms: u64,
    /// How long unmount waits for pending commits.
    #[arg(long, default_value_t = 45000)]
    flush_shutdown_timeout_ms: u64,
    /// Limit for one read from the store before it fails with ETIMEDOUT.
    #[arg(long, default_value_t = 60000)]
    read_timeout_ms: u64,
    /// Limit for one upload, composition or catalog commit (plus 1 s per 8 MiB it carries);
    /// a call that takes longer fails and is retried.
    #[arg(long, default_value_t = 120000)]
    write_timeout_ms: u64,
    /// Memory for the read cache, in MiB.
    #[arg(long, default_value_t = 128)]
    cache_mib: u64,
    /// Read cache block, in KiB (4 to 1024, a power of two): the least a read of a cold
    /// range fetches. Sequential reads fetch far more through read-ahead.
    #[arg(long, default_value_t = 16, value_parser = parse_block_kib)]
    read_block_kib: u64,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
    /// Disk budget for staging files (e.g. 20G, 500M; 0 = unlimited). Clean copies are
    /// evicted, least recently used first; dirty, open and flushing files never are.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    max_staging_size: u64,
    /// Test mode: read every committed file back from the store and compare it with what was
    /// committed, and drop clean staging copies after each commit (slow).
    #[arg(long)]
    paranoid: bool,
}

/// Permission bits in octal (`644`, `0750`).
fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim(), 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode such as 644 or 0755")),
    }
}

/// `123`, `64K`, `500M`, `20G`, `1T` (powers of 1024).
fn parse_block_kib(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (4..=1024).contains(&n) && n.is_power_of_two() => Ok(n),
        _ => Err(format!("{s:?} is not a power of two from 4 to 1024")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix in {s:?}; use K, M, G or T")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. 500M or 20G"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A failure the user can act on: printed as one sentence.
struct UserError(String);

impl<E: std::fmt::Display> From<E> for UserError {
    fn from(e: E) -> Self {
        UserError(e.to_string())
    }
}

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

fn check_mountpoint(mp: &Path) -> Result<PathBuf, UserError> {
    let meta = std::fs::metadata(mp).map_err(|e| {
        UserError(if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "mountpoint {} does not exist; create it with mkdir -p",
                mp.display()
            )
        } else {
            format!("cannot use mountpoint {}: {e}", mp.display())
        })
    })?;
    if !meta.is_dir() {
        return Err(UserError(format!(
            "mountpoint {} is not a directory; pass an empty directory",
            mp.display()
        )));
    }
    let mut entries = std::fs::read_dir(mp)
        .map_err(|e| UserError(format!("cannot read mountpoint {}: {e}", mp.display())))?;
    if entries.next().is_some() {
        return Err(UserError(format!(
            "mountpoint {} is not empty (or is already mounted); pass an empty directory",
            mp.display()
        )));
    }
    Ok(mp.canonicalize()?)
}

fn check_fuse() -> Result<(), UserError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(UserError(
            "FUSE is not available (/dev/fuse is missing); install fuse3 (apt-get install fuse3) or load the fuse module".into(),
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has_fusermount = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()));
    if !root && !has_fusermount {
        return Err(UserError(
            "fusermount3 was not found; install fuse3 (apt-get install fuse3)".into(),
        ));
    }
    Ok(())
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

fn open_store(args: &StoreArgs) -> Result<Served, UserError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("xetmount")
        .enable_all()
        .build()?;
    let ctx = xet_runtime::core::XetContext::from_external(
        rt.handle().clone(),
        xetmount::remote::local::xet_config(),
    );
    let store_arg = args.store.to_string_lossy().to_string();
    let remote = store_arg.starts_with("hf://");
    let mut read_only = args.read_only;
    let (catalog, cas, staging_dir, source, hold): Opened = if remote {
        let uri = BucketUri::parse(&store_arg).map_err(UserError)?;
        let endpoint = args
            .endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_else(|| "https://huggingface.co".to_string());
        let token = find_token(args.token_file.as_deref()).map_err(UserError)?;
        let anonymous = token.is_none();
        let cache = args
            .cache_dir
            .clone()
            .unwrap_or_else(|| default_cache_dir(&uri));
        let staging_dir = args
            .staging_dir
            .clone()
            .unwrap_or_else(|| cache.join("staging"));
        std::fs::create_dir_all(&staging_dir).map_err(|e| {
            UserError(format!(
                "cannot create the staging directory {}: {e}",
                staging_dir.display()
            ))
        })?;
        let lock = xetmount::remote::local::lock_store(&staging_dir)?;
        let opened = rt
            .block_on(xetmount::remote::http::open(
                ctx,
                &uri,
                &RemoteOptions {
                    endpoint: endpoint.clone(),
                    token,
                    write: !args.read_only,
                    cache_dir: cache,
                    chunk_cache_bytes: args.cache_size,
                    owner: FixedOwner {
                        // SAFETY: getuid/getgid cannot fail.
                        uid: args.uid.unwrap_or_else(|| unsafe { libc::getuid() }),
                        gid: args.gid.unwrap_or_else(|| unsafe { libc::getgid() }),
                        file_mode: args.file_mode,
                        dir_mode: args.dir_mode,
                    },
                },
            ))
            .map_err(|e| remote_open_error(&e, &uri, &endpoint, anonymous))?;
        if !opened.writable && !read_only {
            read_only = true;
            if anonymous {
                tracing::warn!(
                    "no token: bucket {} mounted read-only (writes fail with EROFS; pass a token that may write with --token-file or HF_TOKEN)",
                    uri.id()
                );
            } else {
                tracing::warn!(
                    "the token can read but not write bucket {}: mounted read-only (writes fail with EROFS)",
                    uri.id()
                );
            }
        }
        let cas: Arc<dyn Cas> = opened.cas;
        (opened.catalog, cas, staging_dir, store_arg, Box::new(lock))
    } else {
        let store = rt.block_on(LocalStore::open(&args.store, ctx))?;
        let staging_dir = args
            .staging_dir
            .clone()
            .unwrap_or_else(|| store.default_staging_dir());
        let catalog: Arc<dyn Catalog> = store.catalog.clone();
        let cas: Arc<dyn Cas> = store.cas.clone();
        let source = store.root().display().to_string();
        (catalog, cas, staging_dir, source, Box::new(store))
    };
    let config = VfsConfig {
        read_only,
        flush_debounce: Duration::from_millis(args.flush_debounce_ms),
        flush_max_batch_window: Duration::from_millis(args.flush_max_batch_window_ms),
        read_timeout: Duration::from_millis(args.read_timeout_ms.max(1)),
        write_timeout: Duration::from_millis(args.write_timeout_ms.max(1)),
        cache_capacity: args.cache_mib << 20,
        cache_block: args.read_block_kib << 10,
        paranoid: args.paranoid,
        max_staging_size: args.max_staging_size,
        // Only this process writes a local store (it is locked); a remote bucket is shared.
        poll_interval: if remote {
            Duration::from_secs(args.poll_interval_secs)
        } else {
            Duration::ZERO
        },
        ..VfsConfig::new(staging_dir)
    };
    let vfs = rt.block_on(Vfs::new(catalog, cas, config))?;
    if args.read_only {
        tracing::info!("read-only because of --read-only: writes fail with EROFS");
    }
    Ok(Served {
        rt,
        source,
        read_only,
        _hold: hold,
        vfs,
        shutdown_timeout: Duration::from_millis(args.flush_shutdown_timeout_ms),
    })
}

/// A bucket opened for the VFS: its catalog and CAS, the staging directory, what to call it,
/// and what keeps it locked.
type Opened = (
    Arc<dyn Catalog>,
    Arc<dyn Cas>,
    PathBuf,
    String,
    Box<dyn std::any::Any>,
);

/// `~/.cache/xetmount/<ns>/<name>` (or under `$XDG_CACHE_HOME`).
fn default_cache_dir(uri: &BucketUri) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    base.join("xetmount").join(&uri.namespace).join(&uri.name)
}

/// One sentence for a remote bucket that could not be opened.
fn remote_open_error(
    e: &RemoteError,
    uri: &BucketUri,
    endpoint: &str,
    anonymous: bool,
) -> UserError {
    UserError(match e {
        RemoteError::Unauthenticated(_) if anonymous => format!(
            "bucket {} on {endpoint} needs a token (it is private, or does not exist); pass one with --token-file or HF_TOKEN",
            uri.id()
        ),
        RemoteError::NotFound(_) => format!(
            "bucket {} does not exist on {endpoint} (or your token cannot see it); create it with `hf buckets create {}`",
            uri.id(),
            uri.id()
        ),
        RemoteError::Unauthenticated(_) => format!(
            "{endpoint} refused the token for bucket {}; pass a valid one with --token-file or HF_TOKEN",
            uri.id()
        ),
        RemoteError::PermissionDenied(_) => format!(
            "the token may not read bucket {} on {endpoint}; pass one with read access with --token-file or HF_TOKEN",
            uri.id()
        ),
        RemoteError::Other(m) if m.contains("error sending request") || m.contains("connect") => {
            format!("cannot reach {endpoint}: {m}; check --endpoint / HF_ENDPOINT and the network")
        }
        e => format!("cannot open bucket {} on {endpoint}: {e}", uri.id()),
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
    let served = open_store(&args.store)?;
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
    let served = open_store(&args.store)?;
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
    let served = open_store(&args.store)?;
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
    use std::os::unix::ffi::OsStrExt;
    let not_ours = || {
        UserError(format!(
            "{} is not an xetmount mount point; pass the directory a bucket is mounted on",
            mp.display()
        ))
    };
    let path = std::ffi::CString::new(mp.as_os_str().as_bytes()).map_err(|_| not_ours())?;
    let name = std::ffi::CString::new(xetmount::vfs::STATS_XATTR).expect("no NUL in the name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and `buf` is valid for `buf.len()` bytes.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Err(not_ours()),
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
