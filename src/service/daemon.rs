//! Running in the background: `--daemon` forks before any thread exists (a tokio runtime
//! does not survive `fork`), and the parent waits on a pipe until the child says the mount is
//! live, or why it is not; under systemd (`$NOTIFY_SOCKET`) the process stays in the
//! foreground and says the same through `sd_notify`.
//!
//! The pipe's write end is process-wide ([`report_ready`], [`report_failure`]): a process
//! mounts once, and the places that know it is live (the FUSE readiness probe, the NFS
//! mount) and the place that knows it failed (`main`) are far apart.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use parking_lot::Mutex;

static PIPE: Mutex<Option<File>> = Mutex::new(None);

/// Which side of the fork this is.
pub enum Forked {
    /// The parent: the child's pid, and what it reported.
    Parent {
        pid: u32,
        report: Report,
    },
    Child,
}

pub enum Report {
    /// The mount is live.
    Ready,
    /// The child's one-sentence reason.
    Failed(String),
    /// The child died without a word (crash, signal).
    Died(String),
}

/// Whether systemd runs us as `Type=notify`: then we stay in the foreground.
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Fork. The child starts a new session and reads from /dev/null (the caller points its
/// output at the log); the parent waits for the child's report. Must be called before any
/// other thread exists.
pub fn fork() -> std::io::Result<Forked> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptors were just created and are owned here alone.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists (the caller's contract), so the child inherits a
    // consistent process.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(r);
            // SAFETY: plain syscalls on descriptors this process owns.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    libc::dup2(null, 0);
                    libc::close(null);
                }
            }
            *PIPE.lock() = Some(File::from(w));
            Ok(Forked::Child)
        }
        pid => {
            drop(w);
            let mut said = String::new();
            let _ = File::from(r).read_to_string(&mut said);
            let report = match said.strip_prefix("OK\n") {
                Some(_) => Report::Ready,
                None if !said.trim().is_empty() => Report::Failed(said.trim().to_string()),
                None => Report::Died(wait_status(pid)),
            };
            Ok(Forked::Parent {
                pid: pid as u32,
                report,
            })
        }
    }
}

/// How a child that said nothing ended.
fn wait_status(pid: libc::pid_t) -> String {
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return "it exited".into();
    }
    if libc::WIFSIGNALED(status) {
        format!("it was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("it exited with status {}", libc::WEXITSTATUS(status))
    }
}

/// The mount is live: tell the waiting parent (which then exits) and systemd.
pub fn report_ready(status: &str) {
    if let Some(mut p) = PIPE.lock().take() {
        let _ = p.write_all(b"OK\n");
    }
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// The mount failed before it was live: the parent prints `msg` and exits non-zero.
pub fn report_failure(msg: &str) {
    if let Some(mut p) = PIPE.lock().take() {
        let _ = p.write_all(msg.as_bytes());
    }
}

/// Tell systemd the service is stopping and what it is doing meanwhile.
pub fn report_stopping(status: &str) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Make `p` absolute against the current directory (a daemon moves to `/`).
pub fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
