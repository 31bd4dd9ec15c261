//! The long-running commands: `mount` (FUSE or NFS, foreground or background), `serve-nfs`
//! and `serve`. Each opens what it serves, announces itself (state record, control socket,
//! metrics, readiness to a waiting parent or systemd), runs until it is stopped, and then
//! commits what is pending before it exits.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use xetmount::frontend::fuse::{self, FuseOptions};
use xetmount::frontend::nfs::NfsFs;
use xetmount::service::control::Control;
use xetmount::service::daemon::{self, Forked, Report};
use xetmount::service::logging::{self, LogFile};
use xetmount::service::state::{self, unix_secs, MountRecord};
use xetmount::telemetry::{self, MountCollector};
use xetmount::vfs::Vfs;

use super::{
    check_fuse, check_mountpoint, HttpServeArgs, MigrateArgs, MountArgs, ServeArgs, ServiceArgs,
    StoreArgs, UserError,
};

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

fn runtime(name: &str) -> Result<tokio::runtime::Runtime, UserError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// `nfs`: the store is served to NFS clients, whose file handles are inode numbers.
fn open_store(args: &StoreArgs, nfs: bool) -> Result<Served, UserError> {
    let rt = runtime("xetmount")?;
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

    /// Serve the mount's metrics on `--metrics-listen` (if given), and reopen the log file on
    /// SIGHUP (if there is one).
    fn start_service(
        &self,
        service: &ServiceArgs,
        log: Option<&Arc<LogFile>>,
    ) -> Result<(), UserError> {
        let listener = match service.metrics_listen.as_deref() {
            Some(addr) => Some(
                self.rt
                    .block_on(telemetry::export::bind(addr))
                    .map_err(UserError)?,
            ),
            None => None,
        };
        let _g = self.rt.enter();
        if let Some(l) = log {
            l.reopen_on_hangup();
        }
        if let Some(listener) = listener {
            let mut registry = Registry::default();
            telemetry::timings().register(&mut registry);
            registry.register_collector(Box::new(MountCollector::new(self.vfs.clone())));
            tracing::info!("metrics at http://{}/metrics", listener.local_addr()?);
            telemetry::export::spawn(listener, Arc::new(registry));
        }
        Ok(())
    }

    /// Write the state record and open the control socket (a mount `status` cannot see is
    /// still a mount: failures are logged, not fatal).
    fn announce(
        &self,
        mountpoint: &Path,
        frontend: &str,
        service: &ServiceArgs,
        log: Option<&Arc<LogFile>>,
    ) -> Arc<Control> {
        let record = MountRecord {
            pid: std::process::id(),
            source: self.source.clone(),
            mountpoint: mountpoint.to_path_buf(),
            frontend: frontend.into(),
            started: unix_secs(std::time::SystemTime::now()),
            log_file: log.map(|l| l.path().to_path_buf()),
            metrics_listen: service.metrics_listen.clone(),
            staging_dir: self.vfs.config().staging_dir.clone(),
            shutdown_timeout_ms: self.shutdown_timeout.as_millis() as u64,
            outcome: None,
        };
        let control = Arc::new(Control {
            record: record.clone(),
            vfs: self.vfs.clone(),
            committing: Default::default(),
        });
        let socket = state::socket_path(mountpoint);
        let saved = record.save().and_then(|()| {
            let _g = self.rt.enter();
            control.spawn(&socket)
        });
        if let Err(e) = saved {
            tracing::warn!(
                "cannot write the mount's record in {} ({e}); `xetmount status` will not list it",
                state::state_dir().display()
            );
        }
        control
    }

    /// After the drain: drop the record, or keep it with what is left (for `unmount` and
    /// `status`).
    fn retire(&self, control: &Control, drained: &Result<(), UserError>) {
        match drained {
            Ok(()) => MountRecord::remove(&control.record.mountpoint),
            Err(e) => {
                let mut r = control.record.clone();
                r.outcome = Some(e.0.clone());
                let _ = std::fs::remove_file(state::socket_path(&r.mountpoint));
                if let Err(e) = r.save() {
                    tracing::warn!("cannot record the outcome: {e}");
                }
            }
        }
    }
}

/// Log to `--log-file` (or, in the background, the state directory's file for this
/// mountpoint).
fn open_log(
    service: &ServiceArgs,
    background_default: Option<PathBuf>,
) -> Result<Option<Arc<LogFile>>, UserError> {
    service
        .log_file
        .as_deref()
        .map(daemon::absolute)
        .or(background_default)
        .map(|p| LogFile::open(&p).map_err(UserError))
        .transpose()
}

/// Paths the user gave relative to the current directory, made absolute before a background
/// mount leaves it.
fn absolutize(args: &mut MountArgs) {
    let s = &mut args.store;
    if !s.store.to_string_lossy().starts_with("hf://") {
        s.store = daemon::absolute(&s.store);
    }
    for p in [&mut s.token_file, &mut s.cache_dir, &mut s.staging_dir]
        .into_iter()
        .flatten()
    {
        *p = daemon::absolute(p);
    }
}

pub fn mount_command(mut args: MountArgs) -> Result<(), UserError> {
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    if !args.nfs {
        check_fuse()?;
    }
    let background = args.daemon && !daemon::under_systemd();
    let log = open_log(
        &args.service,
        background.then(|| state::default_log(&mountpoint)),
    )?;
    if background {
        absolutize(&mut args);
        let log_path = log
            .as_ref()
            .map(|l| l.path().display().to_string())
            .unwrap_or_default();
        match daemon::fork()? {
            Forked::Parent { pid, report } => {
                return match report {
                    Report::Ready => {
                        let _ = writeln!(
                            std::io::stdout(),
                            "mounted {} at {} in the background (pid {pid}, log {log_path}); `xetmount unmount {}` stops it",
                            args.store.store.display(),
                            mountpoint.display(),
                            mountpoint.display()
                        );
                        Ok(())
                    }
                    Report::Failed(msg) => Err(UserError(msg)),
                    Report::Died(how) => Err(UserError(format!(
                        "the background mount process ended before the mount was live ({how}); its log is {log_path}"
                    ))),
                };
            }
            Forked::Child => {
                if let Some(l) = &log {
                    l.take_std();
                }
                let _ = std::env::set_current_dir("/");
            }
        }
    }
    logging::init(args.service.log_format, log.clone());
    let r = if args.nfs {
        mount_nfs(&args, &mountpoint, log.as_ref())
    } else {
        mount_fuse(&args, &mountpoint, log.as_ref())
    };
    if let Err(e) = &r {
        daemon::report_failure(&e.0);
    }
    r
}

/// Once the kernel answers for the mount (its first request waits for FUSE_INIT, which the
/// session answers once it runs), tell whoever waits.
fn report_when_live(mountpoint: PathBuf, source: String) {
    std::thread::spawn(move || match std::fs::metadata(&mountpoint) {
        Ok(_) => {
            tracing::info!("mounted {source} at {}", mountpoint.display());
            daemon::report_ready(&format!("serving {source} at {}", mountpoint.display()));
        }
        Err(e) => tracing::warn!("the mount at {} does not answer: {e}", mountpoint.display()),
    });
}

fn mount_fuse(
    args: &MountArgs,
    mountpoint: &Path,
    log: Option<&Arc<LogFile>>,
) -> Result<(), UserError> {
    let served = open_store(&args.store, false)?;
    served.start_service(&args.service, log)?;
    let opts = FuseOptions {
        fs_name: served.source.clone(),
        read_only: served.read_only,
        allow_other: args.allow_other,
        threads: 4,
    };
    let (session, mut unmounter) = fuse::mount(
        served.vfs.clone(),
        served.rt.handle().clone(),
        mountpoint,
        &opts,
    )
    .map_err(|e| UserError(format!("cannot mount on {}: {e}", mountpoint.display())))?;
    let control = served.announce(mountpoint, "fuse", &args.service, log);
    report_when_live(mountpoint.to_path_buf(), served.source.clone());
    let c = control.clone();
    let hangup_stops = log.is_none();
    served.rt.spawn(async move {
        xetmount::signals::wait_for_stop(hangup_stops).await;
        tracing::info!("signal received; unmounting");
        c.committing.store(true, Ordering::SeqCst);
        if let Err(e) = unmounter.unmount() {
            tracing::error!("unmount failed: {e}");
        }
    });
    let result = session.run();
    control.committing.store(true, Ordering::SeqCst);
    daemon::report_stopping("committing pending writes");
    let drained = served.drain();
    served.retire(&control, &drained);
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

pub fn serve_nfs(args: ServeArgs) -> Result<(), UserError> {
    let log = open_log(&args.service, None)?;
    logging::init(args.service.log_format, log.clone());
    let served = open_store(&args.store, true)?;
    served.start_service(&args.service, log.as_ref())?;
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
    daemon::report_ready(&format!(
        "serving {} over NFSv3 on 127.0.0.1:{port}",
        served.source
    ));
    served
        .rt
        .block_on(xetmount::signals::wait_for_stop(log.is_none()));
    tracing::info!("signal received; stopping");
    daemon::report_stopping("committing pending writes");
    fs.close_handles();
    served.drain()
}

fn mount_nfs(
    args: &MountArgs,
    mountpoint: &Path,
    log: Option<&Arc<LogFile>>,
) -> Result<(), UserError> {
    let served = open_store(&args.store, true)?;
    served.start_service(&args.service, log)?;
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
    let mut control = None;
    if mounted.is_ok() {
        tracing::info!(
            "mounted {} at {} over NFSv3 (port {port})",
            served.source,
            mountpoint.display()
        );
        let c = served.announce(mountpoint, "nfs", &args.service, log);
        daemon::report_ready(&format!(
            "serving {} at {}",
            served.source,
            mountpoint.display()
        ));
        served
            .rt
            .block_on(xetmount::signals::wait_for_stop(log.is_none()));
        c.committing.store(true, Ordering::SeqCst);
        daemon::report_stopping("committing pending writes");
        let _ = std::process::Command::new("umount")
            .arg(mountpoint)
            .status();
        control = Some(c);
    }
    // Mounted or not, the server may hold handles and dirty files: commit them before exit.
    fs.close_handles();
    let drained = served.drain();
    if let Some(c) = &control {
        served.retire(c, &drained);
    }
    drained?;
    mounted
}

pub fn serve_migrate(args: MigrateArgs) -> Result<(), UserError> {
    logging::init(Default::default(), None);
    let rt = runtime("xetmount-migrate")?;
    rt.block_on(async {
        let ctx = xet_runtime::core::XetContext::from_external(
            tokio::runtime::Handle::current(),
            xetmount::remote::local::xet_config(),
        );
        let started = std::time::Instant::now();
        let done = xetmount::server::migrate::migrate(
            &args.dir,
            &args.catalog,
            &args.objects,
            ctx,
            &|line| println!("{line}"),
        )
        .await
        .map_err(UserError)?;
        println!(
            "migrated {} buckets and {} repos: {} files ({} bytes), {} xorbs copied, {} shards indexed, every file checked, in {:.1} s",
            done.buckets,
            done.repos,
            done.files,
            done.bytes,
            done.xorbs,
            done.shards,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

/// The stores `serve` was pointed at; the error is one sentence.
fn serve_stores(args: &HttpServeArgs) -> Result<xetmount::server::Stores, UserError> {
    use xetmount::server::Stores;
    let catalog = args.catalog.as_deref();
    let sqlite = catalog.and_then(|c| c.strip_prefix("sqlite:"));
    match (&args.dir, catalog, sqlite, &args.objects) {
        (Some(_), Some(_), _, _) => Err(UserError(
            "give either a directory or --catalog, not both".into(),
        )),
        (Some(_), None, _, Some(_)) | (None, Some(_), Some(_), Some(_)) => Err(UserError(
            "--objects needs --catalog postgres://...; a directory store keeps its objects inside it"
                .into(),
        )),
        (Some(dir), None, _, None) => Ok(Stores::Dir(dir.clone())),
        (None, Some(_), Some(dir), None) => Ok(Stores::Dir(dir.into())),
        (None, Some(c), None, Some(o)) => Ok(Stores::Shared {
            catalog: c.to_string(),
            objects: o.clone(),
        }),
        (None, Some(_), None, None) => Err(UserError(
            "--catalog postgres://... needs --objects DIR|s3://BUCKET[/PREFIX] for the file bytes"
                .into(),
        )),
        (None, None, _, _) => Err(UserError(
            "give the directory to serve, or --catalog postgres://... and --objects URL".into(),
        )),
    }
}

pub fn serve_http(args: HttpServeArgs) -> Result<(), UserError> {
    let stores = serve_stores(&args)?;
    let log = open_log(&args.service, None)?;
    logging::init(args.service.log_format, log.clone());
    let rt = runtime("xetmount-serve")?;
    rt.block_on(async {
        if let Some(l) = &log {
            l.reopen_on_hangup();
        }
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| {
                UserError(format!(
                    "cannot listen on {}: {e}; choose another address with --listen",
                    args.listen
                ))
            })?;
        let metrics_listener = match &args.service.metrics_listen {
            Some(a) => Some(telemetry::export::bind(a).await.map_err(UserError)?),
            None => None,
        };
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
        let server = xetmount::server::Server::open(&stores, ctx, opts)
            .await
            .map_err(|e| UserError(e.to_string()))?;
        if let Some(l) = metrics_listener {
            telemetry::export::spawn(l, server.metrics.registry());
        }
        println!("xetmount serve: listening on {}", server.public_url);
        std::io::stdout().flush()?;
        daemon::report_ready(&format!("serving on {}", server.public_url));
        let stop = xetmount::signals::wait_for_stop(log.is_none());
        xetmount::server::run(listener, server, stop).await?;
        tracing::info!("stopped");
        Ok(())
    })
}
