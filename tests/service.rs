//! Running xetmount as a service, through the real binary: background mounts (`--daemon`),
//! `status`, `unmount` waiting for the commits with progress, stops by SIGTERM and by the
//! kernel's umount, `mount -t xetmount` through the `mount.xetmount` helper and fstab lines
//! applied by `mount -a`, Prometheus metrics judged by the official Python client's parser,
//! JSON logs, SIGHUP reopening, config files, the systemd unit template, and `serve-nfs`
//! where `/dev/fuse` does not exist.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{bin, hf_cli, is_mounted, random_bytes, sh, wait_for, Mount, Serve};
use serde_json::Value;

/// `xetmount ARGS` with the state directory `state`.
fn xm(state: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("XETMOUNT_STATE_DIR", state)
        .env("RUST_LOG", "xetmount=debug,warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The pid a background mount announced: `... (pid N, log L) ...`.
fn announced_pid(stdout: &str) -> u32 {
    stdout
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout:?}"))
}

/// Whether `pid` runs (a zombie no longer does: a daemon's parent has exited, and what
/// reaps orphans here may not).
fn alive(pid: u32) -> bool {
    xetmount::service::state::pid_alive(pid)
}

fn wait_gone(pid: u32, limit: Duration) {
    wait_for("the mount process to exit", limit, || !alive(pid));
}

fn status_json(state: &Path) -> Vec<Value> {
    let out = xm(state, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Detaches what a failing test left mounted: background mounts outlive the test's panic.
struct Detach(Vec<PathBuf>);

impl Drop for Detach {
    fn drop(&mut self) {
        for p in &self.0 {
            if is_mounted(p) {
                let _ = Command::new("fusermount3").arg("-uz").arg(p).status();
            }
        }
    }
}

/// A one-sentence error: one `xetmount:` line, containing `want`.
fn assert_one_sentence(out: &Output, want: &str) {
    assert!(!out.status.success(), "expected a failure");
    let err = text(&out.stderr);
    let said: Vec<&str> = err.lines().filter(|l| l.starts_with("xetmount:")).collect();
    assert_eq!(said.len(), 1, "one sentence expected: {err}");
    assert!(said[0].contains(want), "{want:?} not in {err}");
}

/// A background mount of the served bucket `local/data` at `mp` where nothing commits before
/// the unmount (the debounce outlasts the test).
fn daemon_mount_served(state: &Path, url: &str, mp: &Path, cache: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "mount",
        "--daemon",
        "hf://buckets/local/data",
        mp.to_str().unwrap(),
        "--endpoint",
        url,
        "--cache-dir",
        cache.to_str().unwrap(),
        "--flush-debounce-ms",
        "600000",
    ];
    args.extend_from_slice(extra);
    xm(state, &args)
}

#[test]
fn a_background_mount_reports_its_state_and_unmount_waits_for_its_commits() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    // 150 ms each way: a commit of a few requests takes well over the second after which
    // unmount shows progress.
    let (proxy, _server) = proxy::serve_behind_proxy(d, 150, &[]);
    let state = d.join("state");
    let mp = d.join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let _detach = Detach(vec![mp.clone()]);
    let cache = d.join("cache");
    let metrics_port = proxy::free_port().to_string();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let out = daemon_mount_served(
        &state,
        &proxy.url,
        &mp,
        &cache,
        &[
            "--flush-max-batch-window-ms",
            "600000",
            "--metrics-listen",
            &metrics,
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let pid = announced_pid(&stdout);
    // Returned once live: the mount answers at once.
    assert!(is_mounted(&mp.canonicalize().unwrap()), "{stdout}");
    let log = state.join("log").join(format!(
        "{}.log",
        mp.canonicalize()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_matches('/')
            .replace('/', "-")
    ));
    assert!(stdout.contains(log.to_str().unwrap()), "{stdout}");

    let big = random_bytes(6 << 20, 7);
    std::fs::write(mp.join("big.bin"), &big).unwrap();
    std::fs::write(mp.join("note.txt"), b"pending\n").unwrap();

    let s = status_json(&state);
    assert_eq!(s.len(), 1, "{s:?}");
    let s = &s[0];
    assert_eq!(s["record"]["pid"], pid);
    assert_eq!(s["record"]["source"], "hf://buckets/local/data");
    assert_eq!(s["phase"], "serving");
    assert_eq!(s["pending_files"], 2);
    assert_eq!(s["pending_bytes"], (6 << 20) + 8);
    assert_eq!(s["pending_namespace_changes"], true);
    assert!(s["oldest_pending_secs"].as_u64().is_some());
    let human = text(&xm(&state, &["status", mp.to_str().unwrap()]).stdout);
    for want in [
        "hf://buckets/local/data",
        &format!("fuse pid {pid}"),
        "pending: 2 file(s), 6.0 MiB and namespace changes; oldest waiting",
        "remote: revision",
        &format!("log: {}", log.display()),
        &format!("metrics: http://{metrics}/metrics"),
    ] {
        assert!(human.contains(want), "{want:?} not in:\n{human}");
    }

    let out = xm(&state, &["unmount", mp.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Over a second of commits: unmount said what was left, then that it is done.
    assert!(
        err.contains("xetmount: committing") && err.contains("file(s)"),
        "no progress shown: {err}"
    );
    assert!(err.contains("every write is committed"), "{err}");
    assert!(
        !alive(pid),
        "unmount returned before the mount process exited"
    );
    assert!(!is_mounted(&mp), "still mounted");
    assert!(
        status_json(&state).is_empty(),
        "the record outlived the mount"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("every write is committed"), "{logged}");

    // Everything reached the server: a fresh mount (new cache) reads it back.
    let m = common::mount_served(&proxy.url, d, "again", &[]);
    assert!(std::fs::read(m.path("big.bin")).unwrap() == big);
    assert_eq!(std::fs::read(m.path("note.txt")).unwrap(), b"pending\n");
    m.stop();

    // An unmount whose own timeout passes first says what stays journaled, and the mount
    // finishes its commits in the background.
    let out = daemon_mount_served(&state, &proxy.url, &mp, &cache, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = announced_pid(&text(&out.stdout));
    let second = random_bytes(4 << 20, 8);
    std::fs::write(mp.join("second.bin"), &second).unwrap();
    let out = xm(
        &state,
        &["unmount", mp.to_str().unwrap(), "--timeout-secs", "0"],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("still committing") && err.contains("journaled in") && err.contains("staging"),
        "{err}"
    );
    wait_gone(pid, Duration::from_secs(60));
    assert!(status_json(&state).is_empty(), "the commits did not finish");
    let m = common::mount_served(&proxy.url, d, "third", &[]);
    assert!(std::fs::read(m.path("second.bin")).unwrap() == second);
    m.stop();
}

#[test]
fn a_background_mount_that_cannot_mount_exits_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let state = d.join("state");
    // A busy store: another mount holds it.
    let store = d.join("store");
    let held = Mount::start(&store, &d.join("first"), &[]);
    let mp = d.join("second");
    std::fs::create_dir_all(&mp).unwrap();
    let out = xm(
        &state,
        &["mount", "-d", store.to_str().unwrap(), mp.to_str().unwrap()],
    );
    assert_one_sentence(&out, "already in use by another process");
    assert!(!is_mounted(&mp));
    held.stop();

    // A token the server does not know.
    let server = Serve::with_tokens(d, "good alice write\n");
    let token = d.join("bad-token");
    std::fs::write(&token, "wrong\n").unwrap();
    let out = xm(
        &state,
        &[
            "mount",
            "-d",
            "hf://buckets/alice/data",
            mp.to_str().unwrap(),
            "--endpoint",
            &server.url,
            "--token-file",
            token.to_str().unwrap(),
            "--cache-dir",
            d.join("cache").to_str().unwrap(),
        ],
    );
    assert_one_sentence(&out, "token");
    assert!(!is_mounted(&mp));
    assert!(status_json(&state).is_empty());

    // A mountpoint that is not there fails before anything forks.
    let out = xm(
        &state,
        &["mount", "-d", store.to_str().unwrap(), "/nonexistent/mp"],
    );
    assert_one_sentence(&out, "does not exist");
}

/// What a stop leaves: the write made just before it is committed (read back from the store
/// by a new mount).
fn mount_write_stop(d: &Path, state: &Path, name: &str, stop: impl FnOnce(&Path, u32)) {
    let store = d.join("store");
    let mp = d.join(name);
    std::fs::create_dir_all(&mp).unwrap();
    let _detach = Detach(vec![mp.clone()]);
    let out = xm(
        state,
        &[
            "mount",
            "--daemon",
            store.to_str().unwrap(),
            mp.to_str().unwrap(),
            "--flush-debounce-ms",
            "600000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = announced_pid(&text(&out.stdout));
    let body = random_bytes(3 << 20, name.len() as u64);
    std::fs::write(mp.join(format!("{name}.bin")), &body).unwrap();
    stop(&mp, pid);
    wait_gone(pid, Duration::from_secs(60));
    assert!(!is_mounted(&mp));
    let m = Mount::start(&store, &d.join(format!("check-{name}")), &[]);
    assert!(
        std::fs::read(m.path(&format!("{name}.bin"))).unwrap() == body,
        "{name}: the write before the stop was not committed"
    );
    m.stop();
}

#[test]
fn sigterm_and_umount_commit_what_was_just_written() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let state = d.join("state");
    // What systemd's stop does: SIGTERM to the main process.
    mount_write_stop(d, &state, "term", |_, pid| {
        // SAFETY: kill on the pid the mount announced.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    });
    // The kernel's umount (what `umount`, fstab and systemd mount units do).
    mount_write_stop(d, &state, "umount", |mp, _| {
        let ok = Command::new("umount").arg(mp).status().unwrap();
        assert!(ok.success());
    });
    assert!(status_json(&state).is_empty());
}

#[test]
fn a_foreground_mount_whose_terminal_hangs_up_unmounts_and_commits() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let store = d.join("store");
    // Logging to its terminal (no --log-file): SIGHUP is the terminal going away.
    let mut m = Mount::start(&store, &d.join("mnt"), &["--flush-debounce-ms", "600000"]);
    std::fs::write(m.path("h.txt"), b"before the hangup\n").unwrap();
    let status = m.signal(libc::SIGHUP);
    assert!(status.success(), "{status}: {}", m.log_text());
    assert!(!is_mounted(&m.mountpoint), "left mounted");
    let check = Mount::start(&store, &d.join("check"), &[]);
    assert_eq!(
        std::fs::read(check.path("h.txt")).unwrap(),
        b"before the hangup\n"
    );
    check.stop();
}

fn scrape(url: &str) -> Value {
    let py = common::hf_venv().join("python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ops/scrape.py");
    let out = Command::new(py).arg(script).arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused {url}: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sample(s: &Value, name: &str, labels: &str) -> f64 {
    s["samples"][name][labels].as_f64().unwrap_or(0.0)
}

/// Sum of `name` over every label set containing every one of `parts` (`k=v`).
fn sample_sum(s: &Value, name: &str, parts: &[&str]) -> f64 {
    s["samples"][name]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| parts.iter().all(|p| k.split(',').any(|kv| kv == *p)))
                .filter_map(|(_, v)| v.as_f64())
                .sum()
        })
        .unwrap_or(0.0)
}

#[test]
fn metrics_parse_with_the_prometheus_parser_and_follow_a_write_workload() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let serve_metrics = format!("127.0.0.1:{}", proxy::free_port());
    let server = Serve::start(
        &d.join("srv"),
        &d.join("serve.log"),
        &["--metrics-listen", &serve_metrics],
    );
    hf_cli(&server.url, d, &["buckets", "create", "local/data"]);
    let port = proxy::free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = common::mount_served(
        &server.url,
        d,
        "m",
        &["--metrics-listen", &addr, "--flush-debounce-ms", "2000"],
    );
    let url = format!("http://{addr}/metrics");
    let first = scrape(&url);
    assert_eq!(first["types"]["xetmount_op_seconds"], "histogram");
    assert_eq!(first["types"]["xetmount_fetched_bytes"], "counter");
    assert_eq!(first["types"]["xetmount_pending_files"], "gauge");
    assert!(sample(&first, "xetmount_resident_memory_bytes", "") > 1e6);

    // The workload: files written while scrapes run.
    let mut during = Vec::new();
    for i in 0..6 {
        std::fs::write(m.path(&format!("f{i}.bin")), random_bytes(1 << 20, i)).unwrap();
        during.push(scrape(&url));
    }
    let busy = during.last().unwrap();
    assert!(
        during
            .iter()
            .any(|s| sample(s, "xetmount_pending_files", "") >= 1.0),
        "pending files never showed"
    );
    assert!(during
        .iter()
        .any(|s| sample(s, "xetmount_pending_bytes", "") >= (1 << 20) as f64));
    let writes = |s: &Value| sample(s, "xetmount_op_seconds_count", "frontend=fuse,op=write");
    assert!(
        writes(busy) > writes(&first),
        "the write counter did not move"
    );
    assert!(sample(busy, "xetmount_op_seconds_sum", "frontend=fuse,op=write") > 0.0);
    assert!(
        sample_sum(busy, "xetmount_op_seconds_bucket", &["op=write", "le=+Inf"]) == writes(busy),
        "the +Inf bucket holds every sample"
    );

    // After the commit the pending gauges go back to 0, and the commit was timed.
    wait_for("the commit", Duration::from_secs(60), || {
        let s = scrape(&url);
        sample(&s, "xetmount_pending_files", "") == 0.0
            && sample(&s, "xetmount_pending_bytes", "") == 0.0
            && sample(&s, "xetmount_pending_namespace_changes", "") == 0.0
    });
    let after = scrape(&url);
    assert!(sample(&after, "xetmount_commit_seconds_count", "outcome=ok") >= 1.0);
    assert!(sample(&after, "xetmount_files_uploaded_total", "") >= 6.0);
    assert!(sample(&after, "xetmount_uploaded_new_bytes_total", "") >= (6 << 20) as f64);
    assert!(
        sample_sum(
            &after,
            "xetmount_remote_request_seconds_count",
            &["status=200"]
        ) >= 1.0,
        "remote requests were not timed: {:?}",
        after["samples"]["xetmount_remote_request_seconds_count"]
    );
    assert_eq!(sample(&after, "xetmount_flush_failures_total", ""), 0.0);

    // The server's own endpoint: requests by route and status, fetch bytes.
    let s = scrape(&format!("http://{serve_metrics}/metrics"));
    assert_eq!(s["types"]["xetmount_serve_requests"], "counter");
    assert!(sample_sum(&s, "xetmount_serve_requests_total", &["status=200"]) >= 1.0);
    assert!(sample_sum(&s, "xetmount_serve_request_seconds_count", &["method=POST"]) >= 1.0);
    // The old route answers the same exposition.
    let old = scrape(&format!("{}/v1/xetmount/metrics", server.url));
    assert!(old["samples"]["xetmount_serve_requests_total"].is_object());
    m.stop();
}

#[test]
fn logs_are_json_lines_reopened_on_sighup_and_config_files_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let state = d.join("state");
    let store = d.join("store");
    let mp = d.join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let _detach = Detach(vec![mp.clone()]);
    let log = d.join("logs/x.log");
    // A config file holding the positional arguments and options; the command line adds to it.
    let config = d.join("x.toml");
    std::fs::write(
        &config,
        format!(
            "[mount]\nsource = {:?}\nmountpoint = {:?}\nlog-file = {:?}\nlog_format = \"json\"\nflush-debounce-ms = 600000\nread-only = false\n\n[serve]\nlisten = \"127.0.0.1:0\"\n",
            store.to_str().unwrap(),
            mp.to_str().unwrap(),
            log.to_str().unwrap()
        ),
    )
    .unwrap();
    // The command line wins over the file (a shorter debounce).
    let out = xm(
        &state,
        &[
            "mount",
            "--config",
            config.to_str().unwrap(),
            "--daemon",
            "--flush-debounce-ms",
            "50",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = announced_pid(&text(&out.stdout));
    std::fs::write(mp.join("a.txt"), b"a\n").unwrap();
    wait_for(
        "the short debounce's commit",
        Duration::from_secs(30),
        || status_json(&state)[0]["pending_files"] == 0,
    );

    // logrotate: move the file away, SIGHUP, and the mount writes a new one.
    let rotated = d.join("logs/x.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    // SAFETY: kill on the pid the mount announced.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    wait_for("the reopened log", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("reopened"))
    });
    let out = xm(&state, &["unmount", mp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut lines = 0;
    for f in [&rotated, &log] {
        for l in std::fs::read_to_string(f).unwrap().lines() {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
            assert!(v["message"].is_string(), "{l}");
            lines += 1;
        }
    }
    assert!(lines >= 4, "{lines} log lines");
    let all = std::fs::read_to_string(&log).unwrap();
    assert!(all.contains("every write is committed"), "{all}");

    // Bad files: one sentence naming the file and the key.
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "[mount]\ncache-sise = \"10G\"\n").unwrap();
    let args = [
        "mount",
        "--config",
        bad.to_str().unwrap(),
        store.to_str().unwrap(),
        mp.to_str().unwrap(),
    ];
    assert_one_sentence(
        &xm(&state, &args),
        "unknown option `cache-sise` in [mount] of",
    );
    std::fs::write(&bad, "[mount]\ncache-size = \"lots\"\n").unwrap();
    assert_one_sentence(&xm(&state, &args), "bad value for `cache-size`");
    std::fs::write(&bad, "[mount]\ntoken = \"hf_x\"\n").unwrap();
    assert_one_sentence(&xm(&state, &args), "token-file");
    std::fs::write(&bad, "[mount\n").unwrap();
    assert_one_sentence(&xm(&state, &args), "line 1 is not valid TOML");
    // The default file ($XETMOUNT_CONFIG here) is read too.
    let out = Command::new(bin())
        .args(["mount", store.to_str().unwrap(), mp.to_str().unwrap()])
        .env("XETMOUNT_STATE_DIR", &state)
        .env("XETMOUNT_CONFIG", &bad)
        .output()
        .unwrap();
    assert_one_sentence(&out, "not valid TOML");
    assert!(!is_mounted(&mp));
}

/// `/sbin/mount.xetmount` pointing at this build for the test's length (restored after).
struct Helper {
    path: PathBuf,
    before: Option<PathBuf>,
}

impl Helper {
    fn install() -> Helper {
        let path = PathBuf::from("/sbin/mount.xetmount");
        let before = std::fs::read_link(&path).ok();
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(bin(), &path).unwrap();
        Helper { path, before }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(b) = &self.before {
            let _ = std::os::unix::fs::symlink(b, &self.path);
        }
    }
}

fn mount_t(state: &Path, args: &[&str]) -> Output {
    Command::new("mount")
        .args(args)
        .env("XETMOUNT_STATE_DIR", state)
        .output()
        .unwrap()
}

#[test]
fn mount_t_xetmount_and_fstab_lines_work_through_the_helper() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let state = d.join("state");
    let _helper = Helper::install();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &[]);
    hf_cli(&server.url, d, &["buckets", "create", "local/data"]);
    std::fs::write(d.join("seed.txt"), b"from the official client\n").unwrap();
    hf_cli(
        &server.url,
        d,
        &[
            "buckets",
            "cp",
            "seed.txt",
            "hf://buckets/local/data/seed.txt",
        ],
    );
    let token = d.join("token");
    std::fs::write(&token, "anything\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let store = d.join("store");
    let (local, remote) = (d.join("local"), d.join("remote"));
    for p in [&local, &remote] {
        std::fs::create_dir_all(p).unwrap();
    }
    let _detach = Detach(vec![local.clone(), remote.clone()]);

    // mount -t xetmount, a local store: options map to flags, mount(8)'s own are dropped.
    let out = mount_t(
        &state,
        &[
            "-t",
            "xetmount",
            store.to_str().unwrap(),
            local.to_str().unwrap(),
            "-o",
            "noatime,_netdev,nofail,flush_debounce_ms=50,memory-mib=160",
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    std::fs::write(local.join("x.txt"), b"through mount -t\n").unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(local.to_str().unwrap()))
        .unwrap_or_else(|| panic!("not in /proc/self/mounts:\n{mounts}"));
    assert!(line.starts_with(&format!("{} ", store.display())), "{line}");
    assert!(line.contains(" fuse"), "{line}");
    let out = xm(&state, &["unmount", local.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A served bucket, read-only, with the token from a file.
    let out = mount_t(
        &state,
        &[
            "-t",
            "xetmount",
            "hf://buckets/local/data",
            remote.to_str().unwrap(),
            "-o",
            &format!(
                "ro,endpoint={},token_file={},cache_dir={}",
                server.url,
                token.display(),
                d.join("cache").display()
            ),
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read(remote.join("seed.txt")).unwrap(),
        b"from the official client\n"
    );
    let e = std::fs::write(remote.join("no.txt"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let out = xm(&state, &["unmount", remote.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // An unknown option is refused in one sentence, and nothing is mounted.
    let out = mount_t(
        &state,
        &[
            "-t",
            "xetmount",
            store.to_str().unwrap(),
            local.to_str().unwrap(),
            "-o",
            "cache_sise=1G",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown option `cache_sise`"),
        "{}",
        text(&out.stderr)
    );
    assert!(!is_mounted(&local));

    // fstab lines, applied by mount -a on a scratch fstab (twice: the second is a no-op).
    let fstab = d.join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# scratch fstab\n{} {} xetmount defaults,_netdev,nofail,flush_debounce_ms=50 0 0\nhf://buckets/local/data {} xetmount ro,_netdev,nofail,x-systemd.automount,endpoint={},token_file={},cache_dir={} 0 0\n",
            store.display(),
            local.display(),
            remote.display(),
            server.url,
            token.display(),
            d.join("cache").display()
        ),
    )
    .unwrap();
    for _ in 0..2 {
        let out = mount_t(&state, &["-T", fstab.to_str().unwrap(), "-a"]);
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(is_mounted(&local) && is_mounted(&remote));
    }
    assert_eq!(status_json(&state).len(), 2);
    assert_eq!(
        std::fs::read(local.join("x.txt")).unwrap(),
        b"through mount -t\n"
    );
    assert_eq!(
        std::fs::read(remote.join("seed.txt")).unwrap(),
        b"from the official client\n"
    );
    std::fs::write(local.join("y.txt"), b"through fstab\n").unwrap();
    for p in [&local, &remote] {
        let out = xm(&state, &["unmount", p.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let m = Mount::start(&store, &d.join("check"), &[]);
    assert_eq!(std::fs::read(m.path("y.txt")).unwrap(), b"through fstab\n");
    m.stop();
}

#[test]
fn the_systemd_unit_template_verifies() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd/xetmount@.service"),
    )
    .unwrap();
    // The template names the installed binary; verify it against this build.
    let unit = unit.replace("/usr/local/bin/xetmount", bin());
    let path = d.join("xetmount@data.service");
    std::fs::write(&path, &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/install-tools.sh installs it)");
    let err = text(&out.stderr);
    // Unknown keys and bad values are warnings with exit 0: the check is an empty stderr.
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec");
    assert!(
        stop >= 45 + 15,
        "TimeoutStopSec must cover the 45 s shutdown timeout"
    );
    assert!(unit.contains("Type=notify"));
}

#[test]
fn serve_nfs_works_without_dev_fuse() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let store = d.join("store");
    std::fs::write(d.join("in.bin"), random_bytes(2 << 20, 3)).unwrap();
    // A private mount namespace whose /dev has no fuse device, as in an unprivileged
    // container; serve-nfs there, and the libnfs client copies through it.
    let script = format!(
        r#"
        unshare --mount --propagation private bash -euo pipefail -c '
          mount -t tmpfs tmpfs /dev
          mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/urandom c 1 9
          test ! -e /dev/fuse
          {bin} serve-nfs {store} --flush-debounce-ms 50 > port.txt 2> serve.log &
          pid=$!
          for _ in $(seq 1 200); do grep -q "libnfs URL" port.txt 2>/dev/null && break; sleep 0.05; done
          port=$(head -1 port.txt | sed "s/.*://")
          url="nfs://127.0.0.1/bucket/in.bin?version=3&nfsport=$port&mountport=$port"
          nfs-cp in.bin "$url"
          nfs-cp "$url" out.bin
          kill -TERM $pid; wait $pid
          cmp in.bin out.bin
          echo same
        '
        "#,
        bin = bin(),
        store = store.display()
    );
    let out = sh(d, &script);
    assert!(out.contains("same"), "{out}");
    // The store holds the file: read back through FUSE outside the namespace.
    let m = Mount::start(&store, &d.join("check"), &[]);
    assert!(std::fs::read(m.path("in.bin")).unwrap() == std::fs::read(d.join("in.bin")).unwrap());
    m.stop();
}

#[test]
fn under_systemd_the_mount_stays_in_the_foreground_and_notifies() {
    use std::os::unix::net::UnixDatagram;
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let state = d.join("state");
    let sock_path = d.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let store = d.join("store");
    let mp = d.join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    // What systemd's Type=notify does: NOTIFY_SOCKET set; --daemon is then ignored.
    let mut child = Command::new(bin())
        .args([
            "mount",
            "--daemon",
            store.to_str().unwrap(),
            mp.to_str().unwrap(),
        ])
        .env("XETMOUNT_STATE_DIR", &state)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("mount.log")).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap();
    let ready = text(&buf[..n]);
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving"), "{ready}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "it left the foreground"
    );
    assert!(is_mounted(&mp.canonicalize().unwrap()));
    std::fs::write(mp.join("f.txt"), b"under systemd\n").unwrap();
    // systemctl stop: SIGTERM.
    // SAFETY: kill on our child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let n = sock.recv(&mut buf).unwrap();
    assert!(
        text(&buf[..n]).contains("STOPPING=1"),
        "{}",
        text(&buf[..n])
    );
    assert!(child.wait().unwrap().success());
    let m = Mount::start(&store, &d.join("check"), &[]);
    assert_eq!(std::fs::read(m.path("f.txt")).unwrap(), b"under systemd\n");
    m.stop();
}
