//! Real FUSE mounts of the `xetmount` binary for whole-system tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_xetmount")
}

/// A two-worker runtime for a test that drives async code itself.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Whether `path` is a mount point right now.
pub fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(&*target)))
        .unwrap_or(false)
}

/// Wait until `cond` holds, polling every 10 ms; panics with `what` after `limit`. Returns
/// how long it took (tests that measure propagation print it).
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

pub struct Mount {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Mount {
    /// Mount `store` at `mountpoint` with extra CLI args; waits until the mount is live.
    pub fn start(store: &Path, mountpoint: &Path, extra: &[&str]) -> Mount {
        Self::start_with(store, mountpoint, extra, |_| {})
    }

    /// [`Mount::start`] of a process allowed `nofile` open descriptors (soft and hard limit).
    pub fn start_limited(store: &Path, mountpoint: &Path, extra: &[&str], nofile: u64) -> Mount {
        use std::os::unix::process::CommandExt;
        Self::start_with(store, mountpoint, extra, |cmd| {
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    fn start_with(
        store: &Path,
        mountpoint: &Path,
        extra: &[&str],
        tune: impl FnOnce(&mut Command),
    ) -> Mount {
        std::fs::create_dir_all(mountpoint).unwrap();
        let log = mountpoint.with_extension("log");
        let mut cmd = Command::new(bin());
        tune(&mut cmd);
        let child = cmd
            .arg("mount")
            .arg(store)
            .arg(mountpoint)
            .args(if extra.contains(&"--flush-debounce-ms") {
                &[][..]
            } else {
                &["--flush-debounce-ms", "50"][..]
            })
            .args(extra)
            .env("RUST_LOG", "xetmount=debug,warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn xetmount");
        let mut m = Mount {
            store: store.to_path_buf(),
            mountpoint: mountpoint.canonicalize().unwrap(),
            child: Some(child),
            log,
        };
        let mp = m.mountpoint.clone();
        let start = Instant::now();
        while !is_mounted(&mp) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("xetmount exited with {status}: {}", m.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "mount did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// Unmount and wait for the process to commit everything and exit; asserts exit 0.
    pub fn stop(mut self) {
        let status = Command::new(bin())
            .arg("unmount")
            .arg(&self.mountpoint)
            .status()
            .unwrap();
        assert!(status.success(), "xetmount unmount failed");
        let code = self.child.take().unwrap().wait().unwrap();
        assert!(
            code.success(),
            "mount exited with {code}: {}",
            self.log_text()
        );
    }
}

impl Mount {
    /// Unmount and wait for the process to exit, whatever its status; returns the status and
    /// the mount's log. `xetmount unmount` waits for the commits and reports the mount's
    /// outcome: it must agree with the mount's own exit status.
    pub fn unmount(mut self) -> (std::process::ExitStatus, String) {
        let said = Command::new(bin())
            .arg("unmount")
            .arg(&self.mountpoint)
            .output()
            .unwrap();
        let code = self.child.take().unwrap().wait().unwrap();
        assert_eq!(
            said.status.success(),
            code.success(),
            "xetmount unmount ({}) disagrees with the mount's exit ({code})",
            String::from_utf8_lossy(&said.stderr)
        );
        (code, self.log_text())
    }

    /// `kill -9` the mount process, then detach the dead mount point.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("mount already stopped");
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mountpoint)
            .status();
        wait_for("the dead mount to detach", Duration::from_secs(10), || {
            !is_mounted(&self.mountpoint)
        });
    }

    /// Send `sig` and wait for the process to exit; returns its status.
    pub fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("mount already stopped");
        // SAFETY: kill on our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        child.wait().unwrap()
    }

    /// Send SIGTERM and wait for the process to exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("mount already stopped");
        let pid = child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        child.wait().unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mountpoint)
                .status();
            let _ = c.wait();
        }
    }
}

/// Run a shell script with `cwd` as working directory; panics with its output on failure.
pub fn sh(cwd: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "script failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sha256sum` of every file below `dir`, sorted by path, plus file modes and link counts,
/// symlink targets and directory modes.
pub fn tree_digest(dir: &Path) -> String {
    sh(
        dir,
        "find . -mindepth 1 \\( -type f -exec sha256sum {} + -printf '%p %m %n\\n' \\) -o \\( -type l -printf '%p -> %l\\n' \\) -o \\( -type d -printf '%p/ %m\\n' \\) | sort",
    )
}

/// The URL a starting `xetmount serve` (or a wrapper of it) prints as its first line of
/// stdout; panics with the server's log `log` if it printed something else.
pub fn announced_url(child: &mut std::process::Child, log: &Path) -> String {
    use std::io::BufRead;
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    first
        .split_whitespace()
        .last()
        .filter(|u| u.starts_with("http://"))
        .unwrap_or_else(|| {
            panic!(
                "serve printed {first:?}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .to_string()
}

/// A running `xetmount serve` on 127.0.0.1 (any free port), stopped with SIGTERM on drop.
pub struct Serve {
    child: Option<std::process::Child>,
    pub url: String,
    pub log: PathBuf,
}

impl Serve {
    pub fn start(dir: &Path, log: &Path, extra: &[&str]) -> Serve {
        Self::start_on(dir, log, 0, extra)
    }

    /// A server with store `d/srv`, log `d/serve.log` and the token file `d/tokens` holding
    /// `tokens` (see `server::auth` for the line format).
    pub fn with_tokens(d: &Path, tokens: &str) -> Serve {
        let file = d.join("tokens");
        std::fs::write(&file, tokens).unwrap();
        Self::start(
            &d.join("srv"),
            &d.join("serve.log"),
            &["--token-file", file.to_str().unwrap()],
        )
    }

    /// On a given port (0: any free port).
    pub fn start_on(dir: &Path, log: &Path, port: u16, extra: &[&str]) -> Serve {
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["serve", dir.to_str().unwrap(), "--listen", &listen])
            .args(extra);
        Self::spawn(cmd, log)
    }

    /// A replica on shared stores: PostgreSQL at `catalog` and objects at `objects`, with
    /// `env` (an S3 server's endpoint and keys).
    pub fn start_shared(
        catalog: &str,
        objects: &str,
        env: &[(&str, String)],
        log: &Path,
        port: u16,
        extra: &[&str],
    ) -> Serve {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["serve", "--catalog", catalog, "--objects", objects])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        Self::spawn(cmd, log)
    }

    fn spawn(mut cmd: std::process::Command, log: &Path) -> Serve {
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let url = announced_url(&mut child, log);
        Serve {
            child: Some(child),
            url,
            log: log.to_path_buf(),
        }
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    /// SIGKILL: the server dies mid-request, as in a crash.
    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
    }

    fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
    }

    fn signal(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill on a pid we own.
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The venv with the official Hugging Face clients (scripts/install-tools.sh makes it).
pub fn hf_venv() -> PathBuf {
    let v = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/hf-venv/bin");
    assert!(
        v.join("python").exists(),
        "{} is missing: run scripts/install-tools.sh (it installs huggingface-hub 2.4.0 and hf-xet 1.8.0)",
        v.display()
    );
    v
}

/// Environment for the official clients against `url`, their state under `home`, quiet,
/// with `token` as `HF_TOKEN` (none: anonymous).
pub fn hf_env<'a>(
    cmd: &'a mut Command,
    url: &str,
    home: &Path,
    token: Option<&str>,
) -> &'a mut Command {
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.env("HF_ENDPOINT", url)
        .env("HF_HOME", home)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_UPDATE_CHECK", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("NO_COLOR", "1")
}

/// Run the official `hf` CLI against `url` in directory `cwd` (its state in `cwd/hfhome`);
/// panics with its output on failure.
pub fn hf_cli(url: &str, cwd: &Path, args: &[&str]) -> String {
    hf_cli_as(url, "anything", cwd, args)
}

/// [`hf_cli`] with token `token`.
pub fn hf_cli_as(url: &str, token: &str, cwd: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(hf_venv().join("hf"));
    cmd.args(args).current_dir(cwd);
    let out = hf_env(&mut cmd, url, &cwd.join("hfhome"), Some(token))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hf {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mount `hf://buckets/local/data` from `url` at `d/name`, with caches in `d/cache-name`.
pub fn mount_served(url: &str, d: &Path, name: &str, extra: &[&str]) -> Mount {
    let cache = d.join(format!("cache-{name}"));
    let mut args = vec!["--endpoint", url, "--cache-dir", cache.to_str().unwrap()];
    args.extend_from_slice(extra);
    Mount::start(Path::new("hf://buckets/local/data"), &d.join(name), &args)
}

/// The body of `GET route` on the server at `url` (HTTP/1.0, any token: serve's test mode).
pub fn http_get(url: &str, route: &str) -> String {
    let (_, body) = http(url, "GET", route, "anything", &[]);
    String::from_utf8_lossy(&body).into_owned()
}

/// One HTTP/1.0 request to the server at `url` with bearer `token`: (status, body bytes).
pub fn http(url: &str, method: &str, route: &str, token: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {route} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let status = String::from_utf8_lossy(&raw[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    (status, raw[split + 4..].to_vec())
}

/// `xetmount serve`'s request counts and fetched bytes (`GET /v1/xetmount/metrics`, in the
/// OpenMetrics format), as `"METHOD ROUTE" → count` (summed over statuses) plus `fetch_bytes`,
/// `upload_bytes` and `verify_bytes`.
pub fn serve_metrics(url: &str) -> std::collections::BTreeMap<String, u64> {
    let body = http_get(url, "/v1/xetmount/metrics");
    let mut out = std::collections::BTreeMap::new();
    for l in body.lines() {
        let label = |name: &str| {
            let at = l.find(&format!("{name}=\"",))? + name.len() + 2;
            Some(l[at..].split('"').next()?.to_string())
        };
        let Some((_, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = v.parse::<f64>() else { continue };
        if l.starts_with("xetmount_serve_requests_total{") {
            let (Some(m), Some(r)) = (label("method"), label("route")) else {
                continue;
            };
            *out.entry(format!("{m} {r}")).or_insert(0) += v as u64;
        } else if let Some(name) = ["fetch_bytes", "upload_bytes", "verify_bytes"]
            .into_iter()
            .find(|n| l.starts_with(&format!("xetmount_serve_{n}_total ")))
        {
            out.insert(name.to_string(), v as u64);
        }
    }
    for n in ["fetch_bytes", "upload_bytes", "verify_bytes"] {
        out.entry(n.to_string()).or_insert(0);
    }
    out
}

impl Serve {
    /// The server's process id (for its memory figures in /proc).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server stopped").id()
    }

    /// Whether the server process is still running (a panic that took it down, or an abort,
    /// shows here).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), different for every `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Upload `bodies` to the CAS behind `cas` (real Xet uploads: xorbs and a shard through the
/// server's CAS routes), staging them in `dir`; returns each body's file identity.
pub async fn xet_upload(
    cas: &xetmount::remote::http::cas::HttpCas,
    dir: &Path,
    bodies: &[Vec<u8>],
) -> Vec<xetmount::remote::FileId> {
    use xetmount::remote::{Cas, UploadItem};
    std::fs::create_dir_all(dir).unwrap();
    let paths: Vec<PathBuf> = bodies
        .iter()
        .map(|b| {
            let p = dir.join(uuid::Uuid::now_v7().to_string());
            std::fs::write(&p, b).unwrap();
            p
        })
        .collect();
    let items = paths
        .iter()
        .zip(bodies)
        .map(|(p, b)| UploadItem {
            path: p,
            len: b.len() as u64,
        })
        .collect();
    let out = cas.upload_batch(items).await.expect("upload session");
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    out.into_iter()
        .map(|r| r.expect("upload of one file").id)
        .collect()
}

/// Run the official-client script `tests/hf/SCRIPT` (huggingface_hub + hf_xet, from the venv)
/// against a server with alice's write token and bob's read token, in phases: `first`,
/// then, after the server restarts on its directory, `after-restart`. Each phase gets a
/// fresh `HF_HOME` (nothing from the client's own caches) and the scratch directory the
/// script keeps its expectations in; a failing phase panics with its output and the
/// server's log.
pub fn run_hf_script_across_a_restart(script: &str) {
    let first = |d: &Path, log: &str| {
        Serve::start(
            &d.join("srv"),
            &d.join(log),
            &["--token-file", d.join("tokens").to_str().unwrap()],
        )
    };
    run_hf_script_on(script, &first, &first);
}

/// [`run_hf_script_across_a_restart`] with the servers `first` and `second` start (given the
/// scratch directory, which holds `tokens`, and a log name): phase `first` runs against the
/// first, which is then stopped, and `after-restart` against the second.
pub fn run_hf_script_on(
    script: &str,
    first: &dyn Fn(&Path, &str) -> Serve,
    second: &dyn Fn(&Path, &str) -> Serve,
) {
    let venv = hf_venv();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("tokens"),
        "alice-token alice write\nreader-token bob read alice/*\n",
    )
    .unwrap();
    let server = first(d.path(), "serve.log");
    let scratch = d.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let run = |server: &Serve, phase: &str| {
        let mut cmd = Command::new(venv.join("python"));
        cmd.arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/hf")
                .join(script),
        )
        .arg(&scratch)
        .arg(phase)
        .env("READ_TOKEN", "reader-token");
        let home = d.path().join(format!("hfhome-{phase}"));
        hf_env(&mut cmd, &server.url, &home, Some("alice-token"));
        let out = cmd.output().unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{phase}: {text}\nserver log:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        eprintln!("{text}");
    };
    run(&server, "first");
    server.stop();
    let server = second(d.path(), "serve2.log");
    run(&server, "after-restart");
    server.stop();
}

/// Whether files `a` and `b` hold the same bytes (compared in pieces: they may be large).
pub fn same_file_contents(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Run tests/hf/repo_push.py `args` as alice against the server at `url` (its home in `d`);
/// its one line of output.
pub fn repo_push(url: &str, d: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(hf_venv().join("python"));
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf/repo_push.py"))
        .args(args);
    hf_env(&mut cmd, url, &d.join("hfhome"), Some("alice-token"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "repo_push.py {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
