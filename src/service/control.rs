//! A mount's control socket: one request line, one JSON answer. `status` and `unmount` ask
//! it what is pending; it works the same for FUSE and NFS mounts (the stats ioctl is FUSE
//! only) and keeps answering while the mount commits on its way out.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::state::{unix_secs, MountRecord};
use crate::vfs::Vfs;

/// The live state of a mount, as the socket answers `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LiveStatus {
    pub record: MountRecord,
    /// `serving`, or `committing` once it was told to stop.
    pub phase: String,
    pub pending_files: usize,
    pub pending_bytes: u64,
    pub pending_namespace_changes: bool,
    /// Seconds the longest-waiting pending file has waited.
    pub oldest_pending_secs: Option<u64>,
    pub last_error: Option<ErrorReport>,
    /// The catalog revision the mount is up to date with, and how long ago it last asked
    /// the remote for changes (milliseconds; 0: change detection off).
    pub remote_revision: u64,
    pub since_last_poll_ms: u64,
    /// `name value` counters, as `xetmount stats` prints them.
    pub stats: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReport {
    /// Unix seconds.
    pub at: u64,
    pub path: String,
    pub message: String,
}

/// What the socket answers from.
pub struct Control {
    pub record: MountRecord,
    pub vfs: Arc<Vfs>,
    /// Set when the mount stops serving and commits what is left.
    pub committing: AtomicBool,
}

impl Control {
    pub fn status(&self) -> LiveStatus {
        let p = self.vfs.pending();
        let s = self.vfs.stats();
        LiveStatus {
            record: self.record.clone(),
            phase: if self.committing.load(Ordering::SeqCst) {
                "committing"
            } else {
                "serving"
            }
            .into(),
            pending_files: p.files,
            pending_bytes: p.bytes,
            pending_namespace_changes: p.namespace_changes,
            oldest_pending_secs: p.oldest.map(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .map_or(0, |d| d.as_secs())
            }),
            last_error: p.last_error.map(|e| ErrorReport {
                at: unix_secs(e.at),
                path: e.path,
                message: e.message,
            }),
            remote_revision: s.remote_revision,
            since_last_poll_ms: s.since_last_poll_ms,
            stats: s.to_text(),
        }
    }

    /// Listen on `path` (replacing a stale socket) and answer until the runtime stops.
    pub fn spawn(self: &Arc<Self>, path: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        // The answers name paths and errors: for the mount's owner only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut line = String::new();
                    let mut r = tokio::io::BufReader::new(r);
                    if r.read_line(&mut line).await.is_err() {
                        return;
                    }
                    let answer = match line.trim() {
                        "status" => serde_json::to_string(&me.status()).unwrap_or_default(),
                        other => {
                            serde_json::json!({ "error": format!("unknown request {other:?}") })
                                .to_string()
                        }
                    };
                    let _ = w.write_all(answer.as_bytes()).await;
                    let _ = w.write_all(b"\n").await;
                });
            }
        });
        Ok(())
    }
}

/// Ask the mount whose socket is `path` for its status (blocking, bounded by `timeout`).
pub fn query(path: &Path, timeout: Duration) -> std::io::Result<LiveStatus> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"status\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}
