//! The command line: what each subcommand takes, and the checks of its arguments that come
//! before anything is opened. Every failure the user can act on is a [`UserError`].
//!
//! - `argv.rs`: the arguments as given, as `mount.xetmount`, and from config files;
//! - `run.rs`: the long-running commands (mount, serve-nfs, serve);
//! - `admin.rs`: the commands that talk to a running mount (status, unmount, stats).

pub mod admin;
pub mod argv;
pub mod run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use xetmount::remote::open::OpenOptions;
use xetmount::remote::xet::budget::{MemoryBudget, DEFAULT_MIB};
use xetmount::service::logging::LogFormat;
use xetmount::vfs::VfsConfig;

/// `xetmount --version`: the build, and the formats and protocols it speaks.
fn version() -> &'static str {
    static V: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "{} (local store format {}, serve store format {}; Xet CAS API with xet-core 1.8 clients; Hugging Face bucket and repo API as huggingface_hub 2.4 uses it)",
            env!("CARGO_PKG_VERSION"),
            xetmount::remote::local::FORMAT_VERSION,
            xetmount::server::FORMAT_VERSION,
        )
    });
    V.as_str()
}

#[derive(Parser)]
#[command(
    name = "xetmount",
    version = version(),
    about = "Mount a Xet-backed bucket as a POSIX filesystem"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Mount the bucket stored in STORE at MOUNTPOINT (in the foreground until unmounted, or
    /// in the background with --daemon).
    Mount(MountArgs),
    /// Unmount a mounted bucket and wait until the mount process has committed every pending
    /// write (showing what is left when that takes more than a second).
    Unmount {
        mountpoint: PathBuf,
        /// Longest wait for the commits, in seconds (default: the mount's own shutdown
        /// timeout plus 30 s); past it, unmount exits non-zero and the mount keeps committing.
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
    /// List live mounts (or one): source, pid, uptime, what is not committed yet, the last
    /// commit error, how fresh the view of the remote is.
    Status {
        mountpoint: Option<PathBuf>,
        /// One JSON object per mount, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a mount's counters (bytes fetched and stored, files uploaded and composed).
    Stats { mountpoint: PathBuf },
    /// Serve the bucket over NFSv3 on 127.0.0.1 without mounting it (for machines with a
    /// user-space NFS client only); prints the mount command and the libnfs URL.
    ServeNfs(ServeArgs),
    /// Host buckets over HTTP from DIR: the Hugging Face bucket API and the Xet CAS API on one
    /// address, for `huggingface_hub`/`hf` clients and for `xetmount mount hf://buckets/...`.
    Serve(HttpServeArgs),
    /// Copy a `serve` directory (stopped) into PostgreSQL and an object store, and check
    /// every file there: then serve the copy with `serve --catalog URL --objects URL`.
    ServeMigrate(MigrateArgs),
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The directory `xetmount serve DIR` served.
    pub dir: PathBuf,
    /// PostgreSQL connection string (as for `serve --catalog`).
    #[arg(long)]
    pub catalog: String,
    /// Object store for xorbs and shards (as for `serve --objects`).
    #[arg(long)]
    pub objects: String,
}

/// Options every long-running command takes.
#[derive(clap::Args, Clone)]
pub struct ServiceArgs {
    /// Read options from this TOML file (a table per command: [mount], [serve], [serve-nfs];
    /// keys are the long option names). Default: $XETMOUNT_CONFIG, else
    /// ~/.config/xetmount/config.toml (/etc/xetmount/config.toml for root) if it exists.
    /// Options on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write the log to this file instead of stderr (reopened on SIGHUP, for logrotate).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

#[derive(clap::Args)]
pub struct HttpServeArgs {
    /// Directory holding the served buckets; created if missing or empty. Not with
    /// --catalog postgres://...
    pub dir: Option<PathBuf>,
    /// Where bucket metadata lives: `sqlite:DIR` (the same as giving DIR) or a PostgreSQL
    /// connection string (`postgres://USER@HOST/DB`, `host=/run/postgresql dbname=DB`), which
    /// any number of replicas may share. With PostgreSQL, --objects is needed too.
    #[arg(long)]
    pub catalog: Option<String>,
    /// With --catalog postgres://...: where xorbs and shards live, a directory or
    /// `s3://BUCKET[/PREFIX]` of any S3-compatible store (AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY from the environment). S3 stores hand
    /// clients signed URLs, so bytes go straight between client and store.
    #[arg(long)]
    pub objects: Option<String>,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Bearer tokens, one per line: `TOKEN USER read|write [BUCKET-PATTERN ...]`. Without it
    /// the server is open: whoever reaches the address reads and writes every bucket.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Without --token-file: the user every caller is (the namespace `me` stands for).
    #[arg(long, default_value = "local")]
    pub user: String,
    /// URL clients reach this server at, if not http://LISTEN (behind a proxy).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Lifetime of the CAS tokens the token routes hand out, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub cas_token_ttl_secs: u64,
    /// Bucket-API requests per second before callers get 429 with Retry-After (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub hub_rate_limit: u32,
    /// Answer only what the Hugging Face Hub answers: no xetmount catalog or chunk-list
    /// routes, so clients see a plain bucket (for testing mounts against a Hub-like server).
    #[arg(long)]
    pub hub_only: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// TCP port (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[command(flatten)]
    pub service: ServiceArgs,
}

#[derive(clap::Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf unless root).
    #[arg(long)]
    pub allow_other: bool,
    /// Serve over NFSv3 on 127.0.0.1 and mount with the kernel's NFS client instead of FUSE.
    #[arg(long)]
    pub nfs: bool,
    /// With --nfs: the server's TCP port (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub nfs_port: u16,
    /// Run in the background: return once the mount is live (non-zero with the reason if it
    /// cannot mount), logging to --log-file or a file in the state directory. Ignored under
    /// systemd's Type=notify, which wants the process in the foreground.
    #[arg(long, short = 'd')]
    pub daemon: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// The bucket and how the VFS serves it (shared by every frontend).
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Directory of the local store (created if missing or empty), a remote bucket
    /// `hf://buckets/NAMESPACE/NAME[/PATH]`, or a model, dataset or space repo (read-only)
    /// `hf://[datasets/|spaces/]NAMESPACE/NAME[@REVISION][/PATH]`.
    pub store: PathBuf,
    /// For hf:// buckets: the Hub endpoint (default $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// For hf:// buckets: a file holding the token (default $HF_TOKEN, else the token
    /// `hf auth login` saved).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// For hf:// buckets: where xet caches and (by default) staging live
    /// (default ~/.cache/xetmount/NAMESPACE/NAME).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// For hf:// buckets: disk for the chunk cache in the cache directory (e.g. 10G, 500M;
    /// 0 = none): what was downloaded once is read from there, across remounts too.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub cache_size: u64,
    /// For plain buckets (which keep no owner or mode): the owner every entry shows
    /// (default: the user running xetmount).
    #[arg(long)]
    pub uid: Option<u32>,
    /// For plain buckets: the group every entry shows (default: the mounting user's group).
    #[arg(long)]
    pub gid: Option<u32>,
    /// For plain buckets: the permission bits every file shows, in octal.
    #[arg(long, default_value = "644", value_parser = parse_mode)]
    pub file_mode: u32,
    /// For plain buckets: the permission bits every directory shows, in octal.
    #[arg(long, default_value = "755", value_parser = parse_mode)]
    pub dir_mode: u32,
    /// For hf:// buckets: how often to ask whether other writers changed the bucket, in
    /// seconds, where the server offers no change feed (`xetmount serve` does: its changes
    /// arrive as they happen); 0 turns change detection off.
    #[arg(long, default_value_t = 30)]
    pub poll_interval_secs: u64,
    /// How long the kernel keeps attributes and names without asking again, in seconds.
    /// Changes, this mount's and other writers' (as they are detected), reach the kernel at
    /// once whatever this is; it only bounds how long a cached answer can live.
    #[arg(long, default_value_t = 3600)]
    pub attr_timeout_secs: u64,
    /// Entries the mount keeps in memory before it drops directory listings nothing uses
    /// (read again from the bucket when next needed); 0 keeps every entry it ever listed.
    #[arg(long, default_value_t = 100_000)]
    pub inode_soft_limit: usize,
    /// Where staging files live (default: STORE/staging).
    #[arg(long)]
    pub staging_dir: Option<PathBuf>,
    /// Quiet time after a close before the file is committed. Short enough that a bulk
    /// extraction uploads while it writes (a 2 s debounce left a 2 s untar's whole upload for
    /// the end: 6 s until durable, against 3 s at 1 s).
    #[arg(long, default_value_t = 1000)]
    pub flush_debounce_ms: u64,
    /// Longest a file waits for its commit however often it is closed again; files that fall
    /// due together share one catalog commit.
    #[arg(long, default_value_t = 30000)]
    pub flush_max_batch_window_ms: u64,
    /// How long unmount waits for pending commits.
    #[arg(long, default_value_t = 45000)]
    pub flush_shutdown_timeout_ms: u64,
    /// Limit for one read from the store before it fails with ETIMEDOUT.
    #[arg(long, default_value_t = 60000)]
    pub read_timeout_ms: u64,
    /// Limit for one upload, composition or catalog commit (plus 1 s per 8 MiB it carries);
    /// a call that takes longer fails and is retried.
    #[arg(long, default_value_t = 120000)]
    pub write_timeout_ms: u64,
    /// Memory budget, in MiB, for everything that holds file bytes in memory: the read cache
    /// (1/4), read-ahead in flight (1/8), remote buckets' reconstruction plans, xorb indexes,
    /// chunk-cache writes and download buffers, and uploads (the rest: files being chunked and
    /// xorbs in flight). The mount's RSS stays within this plus about 20 MiB of fixed cost;
    /// the default keeps it under 256 MiB.
    #[arg(long, default_value_t = DEFAULT_MIB, value_parser = parse_memory_mib)]
    pub memory_mib: u64,
    /// Memory for the read cache alone, in MiB (default: its share of --memory-mib). Given,
    /// it replaces that share and adds to the budget's other shares.
    #[arg(long)]
    pub cache_mib: Option<u64>,
    /// Read cache block, in KiB (4 to 1024, a power of two): the least a read of a cold
    /// range fetches. Sequential reads fetch far more through read-ahead.
    #[arg(long, default_value_t = 16, value_parser = parse_block_kib)]
    pub read_block_kib: u64,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// For hf:// repos: stay at the commit the branch pointed to at mount instead of
    /// following the branch (a tag or a commit never moves).
    #[arg(long)]
    pub pin: bool,
    /// Disk budget for staging files (e.g. 20G, 500M; 0 = unlimited). Clean copies are
    /// evicted, least recently used first; dirty, open and flushing files never are.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub max_staging_size: u64,
    /// Test mode: read every committed file back from the store and compare it with what was
    /// committed, and drop clean staging copies after each commit (slow).
    #[arg(long)]
    pub paranoid: bool,
}

/// Permission bits in octal (`644`, `0750`).
fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim(), 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode such as 644 or 0755")),
    }
}

/// A read-cache block in KiB: a power of two from 4 to 1024.
fn parse_block_kib(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (4..=1024).contains(&n) && n.is_power_of_two() => Ok(n),
        _ => Err(format!("{s:?} is not a power of two from 4 to 1024")),
    }
}

/// A memory budget in MiB, at least [`xetmount::remote::xet::budget::MIN_MIB`].
fn parse_memory_mib(s: &str) -> Result<u64, String> {
    let mib = s
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{s:?} is not a whole number of MiB"))?;
    MemoryBudget::from_mib(mib).map(|_| mib)
}

/// `123`, `64K`, `500M`, `20G`, `1T` (powers of 1024).
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

/// Allocations from this size up get their own mapping, returned to the system when freed.
const MMAP_THRESHOLD: i32 = 1 << 20;

/// Keep freed buffers from staying in the process. glibc raises its mmap threshold to the
/// size of every mapped block freed (up to 32 MiB), after which the 4 MiB read runs and
/// 16 MiB xorbs come from the heap arenas, whose freed space stays resident: a 1 GiB commit
/// peaked at 300-345 MiB of RSS with the threshold moving, 95-98 MiB with it fixed
/// (bench/memory.sh 1024). Setting it fixes it. Call before any thread starts. A threshold
/// the user set through glibc's own `MALLOC_MMAP_THRESHOLD_` is left as it is.
pub fn fix_malloc_threshold() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; no allocation is in progress on
    // another thread (none has started).
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) was refused");
        }
    }
}

/// A failure the user can act on: printed as one sentence.
pub struct UserError(pub String);

impl<E: std::fmt::Display> From<E> for UserError {
    fn from(e: E) -> Self {
        UserError(e.to_string())
    }
}

impl StoreArgs {
    /// The memory budget (`--memory-mib`, checked by its parser).
    pub fn memory(&self) -> MemoryBudget {
        MemoryBudget::from_mib(self.memory_mib).expect("checked when parsed")
    }

    /// xet-core's settings with the memory budget's shares in them; every remote is opened
    /// with a context holding these.
    pub fn xet_config(&self) -> xet_runtime::config::XetConfig {
        let mut c = xetmount::remote::local::xet_config();
        self.memory().apply_xet(&mut c);
        c
    }

    /// What the remote needs to open the store.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            store: self.store.clone(),
            endpoint: self.endpoint.clone(),
            token_file: self.token_file.clone(),
            cache_dir: self.cache_dir.clone(),
            chunk_cache_bytes: self.cache_size,
            uid: self.uid,
            gid: self.gid,
            file_mode: self.file_mode,
            dir_mode: self.dir_mode,
            staging_dir: self.staging_dir.clone(),
            read_only: self.read_only,
            pin: self.pin,
        }
    }

    /// How the VFS serves the opened store: `read_only` as it was opened, and changes by
    /// other writers polled for only in a `shared` store.
    pub fn vfs_config(&self, staging_dir: PathBuf, read_only: bool, shared: bool) -> VfsConfig {
        VfsConfig {
            read_only,
            flush_debounce: Duration::from_millis(self.flush_debounce_ms),
            flush_max_batch_window: Duration::from_millis(self.flush_max_batch_window_ms),
            read_timeout: Duration::from_millis(self.read_timeout_ms.max(1)),
            write_timeout: Duration::from_millis(self.write_timeout_ms.max(1)),
            cache_capacity: self
                .cache_mib
                .map_or_else(|| self.memory().read_cache(), |m| m << 20),
            cache_block: self.read_block_kib << 10,
            // Read-ahead has a quarter of the cache at most (see `ReadPath`): its share.
            readahead_blocks: (self.memory().readahead() >> 10)
                .div_ceil(self.read_block_kib)
                .max(1),
            paranoid: self.paranoid,
            attr_ttl: Duration::from_secs(self.attr_timeout_secs),
            inode_soft_limit: self.inode_soft_limit,
            max_staging_size: self.max_staging_size,
            // Only this process writes a local store (it is locked); a remote bucket is shared.
            poll_interval: if shared {
                Duration::from_secs(self.poll_interval_secs)
            } else {
                Duration::ZERO
            },
            ..VfsConfig::new(staging_dir)
        }
    }
}

pub fn check_mountpoint(mp: &Path) -> Result<PathBuf, UserError> {
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

pub fn check_fuse() -> Result<(), UserError> {
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
