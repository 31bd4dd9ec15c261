//! Where log lines go: stderr, or a file (`--log-file`, and always for a background mount),
//! as text or one JSON object per line (`--log-format json`). A file is reopened on SIGHUP,
//! so logrotate can move it away (`postrotate kill -HUP PID`, no `copytruncate` needed).
//! `RUST_LOG` picks what is logged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// An append-only log file that can be reopened at the same path.
pub struct LogFile {
    path: PathBuf,
    file: RwLock<Arc<File>>,
    /// Also the process's stdout and stderr (a background mount: panics and the last error
    /// land in the file too).
    redirect_std: AtomicBool,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

impl LogFile {
    /// Open (creating) `path`; the error is one sentence naming it.
    pub fn open(path: &Path) -> Result<Arc<LogFile>, String> {
        let file = open_append(path).map_err(|e| {
            format!(
                "cannot open the log file {}: {e}; pass a writable path with --log-file",
                path.display()
            )
        })?;
        Ok(Arc::new(LogFile {
            path: path.to_path_buf(),
            file: RwLock::new(Arc::new(file)),
            redirect_std: AtomicBool::new(false),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Arc<File> {
        self.file.read().clone()
    }

    /// Make the file the process's stdout and stderr too, now and after every reopen (a
    /// background mount: panics land in the file).
    pub fn take_std(&self) {
        self.redirect_std.store(true, Ordering::SeqCst);
        self.redirect();
    }

    fn redirect(&self) {
        let fd = self.file.read().as_raw_fd();
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        unsafe {
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
        }
    }

    /// Open the path again (after logrotate moved the old file away).
    pub fn reopen(&self) -> std::io::Result<()> {
        let f = open_append(&self.path)?;
        *self.file.write() = Arc::new(f);
        if self.redirect_std.load(Ordering::SeqCst) {
            self.redirect();
        }
        Ok(())
    }

    /// Reopen on every SIGHUP, in the current tokio runtime.
    pub fn reopen_on_hangup(self: &Arc<Self>) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "cannot install a SIGHUP handler; the log file is not reopened on SIGHUP"
            );
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match me.reopen() {
                    Ok(()) => tracing::info!("log file {} reopened", me.path.display()),
                    Err(e) => {
                        tracing::error!("cannot reopen the log file {}: {e}", me.path.display())
                    }
                }
            }
        });
    }
}

/// One event's line, written with one `write` on the file current at the time.
struct LineWriter(Arc<File>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the subscriber: to `file` if given, else stderr.
pub fn init(format: LogFormat, file: Option<Arc<LogFile>>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "xetmount=info,fuser=error,warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match (format, file) {
        (LogFormat::Text, None) => builder.with_writer(std::io::stderr).init(),
        (LogFormat::Json, None) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .init(),
        (LogFormat::Text, Some(f)) => builder
            .with_ansi(false)
            .with_writer(move || LineWriter(f.current()))
            .init(),
        (LogFormat::Json, Some(f)) => builder
            .json()
            .flatten_event(true)
            .with_writer(move || LineWriter(f.current()))
            .init(),
    }
}
