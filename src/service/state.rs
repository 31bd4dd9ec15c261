//! The state directory: one record per live mount (what `status` lists and `unmount` waits
//! on), its control socket, and the default place of background mounts' logs.
//!
//! - root: `/run/xetmount` (gone at reboot, as the mounts are), logs in `/var/log/xetmount`;
//! - other users: `$XDG_RUNTIME_DIR/xetmount`, else `~/.local/state/xetmount`, logs in `log/`
//!   below it;
//! - `XETMOUNT_STATE_DIR` overrides both (logs in its `log/`).
//!
//! A record is named by a hash of the mountpoint (a socket path must stay under 108 bytes);
//! it is written when the mount is live and removed when everything is committed. A mount
//! that exits with changes left rewrites it with the outcome, so `unmount` and `status` can
//! say what stays journaled.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What a mount says about itself in its record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountRecord {
    pub pid: u32,
    pub source: String,
    pub mountpoint: PathBuf,
    /// `fuse` or `nfs`.
    pub frontend: String,
    /// Unix seconds.
    pub started: u64,
    pub log_file: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub staging_dir: PathBuf,
    /// How long the mount waits for its commits when it stops, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Set when the process exited with changes left: the sentence saying what stays
    /// journaled where.
    #[serde(default)]
    pub outcome: Option<String>,
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The state directory (see the module comment); not created.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XETMOUNT_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if is_root() {
        return PathBuf::from("/run/xetmount");
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("xetmount");
    }
    home().join(".local/state/xetmount")
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

/// Where background mounts log unless `--log-file` says otherwise.
pub fn log_dir() -> PathBuf {
    if std::env::var_os("XETMOUNT_STATE_DIR").is_some_and(|d| !d.is_empty()) || !is_root() {
        return state_dir().join("log");
    }
    PathBuf::from("/var/log/xetmount")
}

/// `/mnt/data/x` → `mnt-data-x` (a readable file name for the mountpoint's log).
pub fn escape(mountpoint: &Path) -> String {
    let s = mountpoint.to_string_lossy();
    let t = s.trim_matches('/');
    if t.is_empty() {
        return "root".into();
    }
    t.chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || "._-".contains(c) => c,
            _ => '_',
        })
        .collect()
}

fn key(mountpoint: &Path) -> String {
    let h = blake3::hash(mountpoint.as_os_str().as_encoded_bytes());
    h.to_hex()[..16].to_string()
}

fn mounts_dir() -> PathBuf {
    state_dir().join("mounts")
}

pub fn record_path(mountpoint: &Path) -> PathBuf {
    mounts_dir().join(format!("{}.json", key(mountpoint)))
}

pub fn socket_path(mountpoint: &Path) -> PathBuf {
    mounts_dir().join(format!("{}.sock", key(mountpoint)))
}

/// The default log file of a background mount on `mountpoint`.
pub fn default_log(mountpoint: &Path) -> PathBuf {
    log_dir().join(format!("{}.log", escape(mountpoint)))
}

impl MountRecord {
    /// Write (or replace) the record, atomically.
    pub fn save(&self) -> std::io::Result<()> {
        let dir = mounts_dir();
        std::fs::create_dir_all(&dir)?;
        let path = record_path(&self.mountpoint);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }

    pub fn load(mountpoint: &Path) -> Option<MountRecord> {
        let data = std::fs::read(record_path(mountpoint)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    pub fn remove(mountpoint: &Path) {
        let _ = std::fs::remove_file(record_path(mountpoint));
        let _ = std::fs::remove_file(socket_path(mountpoint));
    }

    /// Every record in the state directory, sorted by mountpoint.
    pub fn list() -> Vec<MountRecord> {
        let Ok(dir) = std::fs::read_dir(mounts_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<MountRecord> = dir
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
        out
    }

    /// Whether the process that wrote the record still runs.
    pub fn alive(&self) -> bool {
        pid_alive(self.pid)
    }
}

/// Whether `pid` runs. A zombie (exited, not yet reaped by its parent, e.g. a test that
/// started the mount and waits for `unmount` first) counts as gone.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    let exists = r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    // `pid (comm) S ...`: the state follows the last `)`.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    exists && !zombie
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_readable_and_short() {
        assert_eq!(escape(Path::new("/mnt/data/x")), "mnt-data-x");
        assert_eq!(escape(Path::new("/")), "root");
        assert_eq!(escape(Path::new("/a b/ü")), "a_b-_");
        let long = PathBuf::from(format!("/{}", "d/".repeat(200)));
        // The socket path stays well under the 108 bytes of sun_path under a normal state dir.
        assert_eq!(socket_path(&long).file_name().unwrap().len(), 21);
        assert_ne!(key(Path::new("/a")), key(Path::new("/b")));
    }
}
