//! Commands that talk to running mounts: `status`, `unmount` (which waits for the commits),
//! `stats`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use xetmount::frontend::fuse;
use xetmount::service::control::{self, LiveStatus};
use xetmount::service::state::{self, unix_secs, MountRecord};

use super::UserError;

/// `1.5 MiB`, `320 B`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3s`, `4m05s`, `2h03m`, `3d04h`.
fn span(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn now_secs() -> u64 {
    unix_secs(SystemTime::now())
}

/// The mountpoint as records name it (canonical, if it still resolves).
fn canonical(mp: &Path) -> PathBuf {
    mp.canonicalize()
        .unwrap_or_else(|_| std::path::absolute(mp).unwrap_or_else(|_| mp.to_path_buf()))
}

fn describe(s: &LiveStatus) -> String {
    let r = &s.record;
    let mut out = format!(
        "{}  {}  {} pid {}  up {}  {}\n",
        r.mountpoint.display(),
        r.source,
        r.frontend,
        r.pid,
        span(now_secs().saturating_sub(r.started)),
        s.phase
    );
    let ns = if s.pending_namespace_changes {
        " and namespace changes"
    } else {
        ""
    };
    match s.pending_files {
        0 if s.pending_namespace_changes => out.push_str("  pending: namespace changes\n"),
        0 => out.push_str("  pending: nothing\n"),
        n => out.push_str(&format!(
            "  pending: {n} file(s), {}{ns}; oldest waiting {}\n",
            bytes(s.pending_bytes),
            span(s.oldest_pending_secs.unwrap_or(0))
        )),
    }
    if let Some(e) = &s.last_error {
        out.push_str(&format!(
            "  last error: {} ago, {}: {}\n",
            span(now_secs().saturating_sub(e.at)),
            e.path,
            e.message
        ));
    }
    if s.since_last_poll_ms > 0 {
        out.push_str(&format!(
            "  remote: revision {}, checked {} ago\n",
            s.remote_revision,
            span(s.since_last_poll_ms / 1000)
        ));
    }
    if let Some(l) = &r.log_file {
        out.push_str(&format!("  log: {}\n", l.display()));
    }
    if let Some(m) = &r.metrics_listen {
        out.push_str(&format!("  metrics: http://{m}/metrics\n"));
    }
    out
}

/// A record whose process no longer answers.
fn describe_stopped(r: &MountRecord) -> String {
    let why = r.outcome.clone().unwrap_or_else(|| {
        format!(
            "the process (pid {}) ended without recording its commits; what it had not committed is journaled in {} and the next mount of {} commits it",
            r.pid,
            r.staging_dir.display(),
            r.source
        )
    });
    format!("{}  {}  stopped: {why}\n", r.mountpoint.display(), r.source)
}

pub fn status(mp: Option<&Path>, json: bool) -> Result<(), UserError> {
    xetmount::service::logging::init(Default::default(), None);
    let records = match mp {
        Some(mp) => {
            let mp = canonical(mp);
            vec![MountRecord::load(&mp).ok_or_else(|| {
                UserError(format!(
                    "no xetmount mount is recorded at {} (records live in {}); `xetmount status` lists them all",
                    mp.display(),
                    state::state_dir().display()
                ))
            })?]
        }
        None => MountRecord::list(),
    };
    let mut out = String::new();
    for r in records {
        let live = r
            .alive()
            .then(|| {
                control::query(&state::socket_path(&r.mountpoint), Duration::from_secs(5)).ok()
            })
            .flatten();
        match (live, json) {
            (Some(s), true) => out.push_str(&format!("{}\n", serde_json::to_string(&s)?)),
            (Some(s), false) => out.push_str(&describe(&s)),
            (None, true) => out.push_str(&format!(
                "{}\n",
                serde_json::json!({ "record": r, "phase": "stopped" })
            )),
            (None, false) => out.push_str(&describe_stopped(&r)),
        }
    }
    if out.is_empty() && !json {
        out = "no xetmount mounts\n".into();
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(())
}

/// Detach the mount from the kernel: `fusermount3 -u` for FUSE; for an NFS mount, ask the
/// process to stop (it unmounts the kernel's NFS client itself).
fn detach(mp: &Path, record: Option<&MountRecord>) -> Result<(), UserError> {
    if let Some(r) = record.filter(|r| r.frontend == "nfs" && r.alive()) {
        // SAFETY: kill with a pid from the mount's own record.
        if unsafe { libc::kill(r.pid as libc::pid_t, libc::SIGTERM) } != 0 {
            return Err(UserError(format!(
                "cannot stop the NFS mount process {}: {}",
                r.pid,
                std::io::Error::last_os_error()
            )));
        }
        return Ok(());
    }
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

pub fn unmount(mp: &Path, timeout_secs: Option<u64>) -> Result<(), UserError> {
    xetmount::service::logging::init(Default::default(), None);
    let canon = canonical(mp);
    let record = MountRecord::load(&canon).filter(|r| r.outcome.is_none());
    detach(mp, record.as_ref())?;
    // A mount without a record (or whose process is gone) has nothing to wait for.
    let Some(r) = record.filter(|r| r.alive()) else {
        return Ok(());
    };
    let timeout = Duration::from_secs(timeout_secs.unwrap_or(r.shutdown_timeout_ms / 1000 + 30));
    let started = Instant::now();
    let socket = state::socket_path(&r.mountpoint);
    let mut shown: Option<(usize, u64)> = None;
    let mut err = std::io::stderr();
    while r.alive() {
        if started.elapsed() >= timeout {
            let left = control::query(&socket, Duration::from_secs(2)).ok();
            let what = left.map_or("what is pending".to_string(), |s| {
                format!("{} file(s), {}", s.pending_files, bytes(s.pending_bytes))
            });
            return Err(UserError(format!(
                "{} is unmounted but its process (pid {}) is still committing {what} after {}s; they are journaled in {} and it keeps committing them (`xetmount status` shows what is left)",
                mp.display(),
                r.pid,
                timeout.as_secs(),
                r.staging_dir.display()
            )));
        }
        if started.elapsed() >= Duration::from_secs(1) {
            if let Ok(s) = control::query(&socket, Duration::from_secs(2)) {
                let now = (s.pending_files, s.pending_bytes);
                if shown != Some(now) {
                    let ns = if s.pending_namespace_changes {
                        " and namespace changes"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        err,
                        "xetmount: committing {}: {} file(s), {} left{ns}",
                        mp.display(),
                        now.0,
                        bytes(now.1)
                    );
                    shown = Some(now);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match MountRecord::load(&r.mountpoint) {
        Some(after) if after.pid == r.pid => Err(UserError(after.outcome.unwrap_or_else(|| {
            format!(
                "the mount process (pid {}) ended before it recorded its commits; what it had not committed is journaled in {} and the next mount of {} commits it",
                r.pid,
                r.staging_dir.display(),
                r.source
            )
        }))),
        _ => {
            if shown.is_some() {
                let _ = writeln!(err, "xetmount: {} unmounted; every write is committed", mp.display());
            }
            Ok(())
        }
    }
}

pub fn stats(mp: &Path) -> Result<(), UserError> {
    xetmount::service::logging::init(Default::default(), None);
    use std::os::fd::AsRawFd;
    // Any mount with a control socket answers there (NFS mounts too).
    if let Ok(s) = control::query(&state::socket_path(&canonical(mp)), Duration::from_secs(5)) {
        let _ = write!(std::io::stdout(), "{}", s.stats);
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_spans_read_well() {
        assert_eq!(bytes(320), "320 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(span(5), "5s");
        assert_eq!(span(245), "4m05s");
        assert_eq!(span(7380), "2h03m");
        assert_eq!(span(90000), "1d01h");
    }
}
