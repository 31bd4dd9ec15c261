//! The order of the syscalls around a commit, seen by `strace` (scripts/install-tools.sh
//! installs it): every xorb and shard file xet-core renames into the CAS, and the directory
//! naming it, is fsync'd before the catalog's next write, on a mount of a local store and on
//! `xetmount serve` taking uploads from the official `hf` client.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bin, hf_cli as hf, is_mounted, sh, wait_for};

/// `cmd` under `strace -f`, logging renames, fsyncs and positioned writes (SQLite's) with the
/// path behind each descriptor to `trace`.
fn traced(trace: &Path, cmd: &[&str]) -> Command {
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("strace is missing: run scripts/install-tools.sh");
    let mut c = Command::new(strace);
    c.args(["-f", "-y", "-qq", "-s", "0", "-e", "signal=none"])
        .args([
            "-e",
            "trace=rename,renameat,renameat2,fsync,fdatasync,pwrite64",
        ])
        .arg("-o")
        .arg(trace)
        .arg("--")
        .args(cmd);
    c
}

#[derive(Debug)]
enum Event {
    /// A rename that succeeded, to this path.
    Renamed(String),
    /// An fsync or fdatasync that succeeded, of this path.
    Synced(String),
    /// A write to this path.
    Wrote(String),
}

/// The events of a `strace -f -y` log, in the order the calls completed (a call another
/// thread interrupted is logged `<unfinished ...>` and completed by its `resumed` line).
fn events(trace: &str) -> Vec<Event> {
    let mut pending: std::collections::HashMap<&str, String> = Default::default();
    let mut out = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let call = if let Some(start) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, start.to_string());
            continue;
        } else if let Some(tail) = rest.strip_prefix("<... ") {
            let Some(start) = pending.remove(pid) else {
                continue;
            };
            let tail = tail.split_once(" resumed>").map_or("", |(_, t)| t);
            format!("{start}{tail}")
        } else {
            rest.to_string()
        };
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        let ok = call
            .rsplit_once(" = ")
            .is_some_and(|(_, r)| !r.trim_start().starts_with('-'));
        // `-y` prints a descriptor as `3</its/path>`; renames name their paths in quotes.
        let fd_path = || {
            args.split_once('<')
                .and_then(|(_, p)| p.split_once('>'))
                .map(|(p, _)| p.to_string())
        };
        let quoted: Vec<&str> = args.split('"').skip(1).step_by(2).collect();
        match name {
            "rename" | "renameat" | "renameat2" if ok => {
                if let Some(to) = quoted.get(1) {
                    out.push(Event::Renamed(to.to_string()));
                }
            }
            "fsync" | "fdatasync" if ok => out.extend(fd_path().map(Event::Synced)),
            "pwrite64" => out.extend(fd_path().map(Event::Wrote)),
            _ => {}
        }
    }
    out
}

/// A xorb (`…/xorbs/default.<hash>`) or shard (`…/shards/<hash>.mdb`) of xet-core's
/// `LocalClient`, not one of their sidecars.
fn is_cas_object(path: &str) -> bool {
    let p = Path::new(path);
    let dir = p
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str());
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match dir {
        Some("xorbs") => name.strip_prefix("default.").is_some_and(hex),
        Some("shards") => name.strip_suffix(".mdb").is_some_and(hex),
        _ => false,
    }
}

/// Every xorb and shard renamed into place is fsync'd, and so is its directory, after the
/// rename and before the next write to a file whose path ends with `catalog_wal`. Returns
/// (xorbs, shards) checked.
fn assert_synced_before_catalog(trace: &Path, catalog_wal: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(trace).unwrap();
    let ev = events(&text);
    let (mut xorbs, mut shards) = (0, 0);
    for (i, e) in ev.iter().enumerate() {
        let Event::Renamed(to) = e else { continue };
        if !is_cas_object(to) {
            continue;
        }
        let dir = Path::new(to).parent().unwrap().to_str().unwrap();
        let commit = ev[i..]
            .iter()
            .position(|e| matches!(e, Event::Wrote(p) if p.ends_with(catalog_wal)))
            .map(|n| i + n)
            .unwrap_or_else(|| panic!("no catalog write followed the rename to {to}"));
        let synced = |p: &str| {
            ev[i..commit]
                .iter()
                .any(|e| matches!(e, Event::Synced(s) if s == p))
        };
        assert!(
            synced(to),
            "{to} was not fsync'd before the catalog's next write (event {commit} of {})",
            ev.len()
        );
        assert!(
            synced(dir),
            "{dir} was not fsync'd after {to} was renamed into it, before the catalog's next write"
        );
        if to.ends_with(".mdb") {
            shards += 1;
        } else {
            xorbs += 1;
        }
    }
    (xorbs, shards)
}

/// 300 small files and one of 3 MB written at once, to be committed in one batch.
fn write_files(dir: &Path) {
    sh(
        dir,
        "for i in $(seq 1 300); do printf 'file %s\\n' $i > f$i.txt; done \
         && head -c 3000000 /dev/urandom > big.bin",
    );
}

#[test]
fn a_local_store_mount_syncs_xorbs_and_shards_before_the_catalog_names_them() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let (store, mp, trace) = (d.join("store"), d.join("mnt"), d.join("trace"));
    std::fs::create_dir_all(&mp).unwrap();
    // A debounce longer than the test: everything is committed together at unmount.
    let mut child: Child = traced(
        &trace,
        &[
            bin(),
            "mount",
            store.to_str().unwrap(),
            mp.to_str().unwrap(),
            "--flush-debounce-ms",
            "600000",
        ],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(d.join("mount.log")).unwrap())
    .spawn()
    .unwrap();
    wait_for("the mount", Duration::from_secs(60), || {
        is_mounted(&mp) || child.try_wait().unwrap().is_some()
    });
    assert!(
        is_mounted(&mp),
        "mount failed: {}",
        std::fs::read_to_string(d.join("mount.log")).unwrap_or_default()
    );
    write_files(&mp);
    let unmounted = Command::new(bin())
        .arg("unmount")
        .arg(&mp)
        .status()
        .unwrap();
    assert!(unmounted.success());
    assert!(child.wait().unwrap().success(), "the mount failed");

    let wal = format!("{}/catalog.db-wal", store.canonicalize().unwrap().display());
    let (xorbs, shards) = assert_synced_before_catalog(&trace, &wal);
    assert!(
        xorbs >= 1 && shards >= 1,
        "expected xorbs and a shard to be stored, saw {xorbs} xorbs and {shards} shards"
    );
    println!("checked {xorbs} xorbs and {shards} shards");
}

/// `xetmount serve` under strace; stops it with SIGTERM on drop.
struct TracedServe {
    strace: Child,
    url: String,
}

impl TracedServe {
    fn start(dir: &Path, trace: &Path, log: &Path) -> TracedServe {
        let mut strace = traced(
            trace,
            &[
                bin(),
                "serve",
                dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
        let url = common::announced_url(&mut strace, log);
        TracedServe { strace, url }
    }

    /// SIGTERM to the server (strace's child), then wait for both.
    fn stop(&mut self) {
        let children = format!("/proc/{0}/task/{0}/children", self.strace.id());
        if let Ok(pids) = std::fs::read_to_string(children) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill on the pid of the server this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let _ = self.strace.wait();
    }
}

impl Drop for TracedServe {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn serve_syncs_uploaded_xorbs_and_shards_before_answering() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let srv: PathBuf = d.join("srv");
    let trace = d.join("trace");
    let mut server = TracedServe::start(&srv, &trace, &d.join("serve.log"));
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);
    std::fs::create_dir_all(d.join("up")).unwrap();
    write_files(&d.join("up"));
    hf(
        &url,
        d,
        &["buckets", "sync", "up", "hf://buckets/local/data"],
    );
    server.stop();

    let wal = format!(
        "{}/buckets/local/data/catalog.db-wal",
        srv.canonicalize().unwrap().display()
    );
    let (xorbs, shards) = assert_synced_before_catalog(&trace, &wal);
    assert!(
        xorbs >= 1 && shards >= 1,
        "expected xorbs and a shard to be uploaded, saw {xorbs} xorbs and {shards} shards"
    );
    println!("checked {xorbs} xorbs and {shards} shards");
}

#[test]
fn the_trace_reader_pairs_interrupted_calls_and_keeps_completion_order() {
    let trace = "\
10 rename(\"/s/xorbs/.xorbs.A.tmp\", \"/s/xorbs/default.x\") = 0
11 fsync(5</s/xorbs/default.x> <unfinished ...>
10 pwrite64(7</s/catalog.db-wal>, \"\"..., 4096, 0) = 4096
11 <... fsync resumed>)          = 0
10 fsync(8</s/xorbs>)            = -1 EIO (Input/output error)
";
    let ev = events(trace);
    assert!(matches!(&ev[0], Event::Renamed(p) if p == "/s/xorbs/default.x"));
    assert!(matches!(&ev[1], Event::Wrote(p) if p == "/s/catalog.db-wal"));
    assert!(matches!(&ev[2], Event::Synced(p) if p == "/s/xorbs/default.x"));
    assert_eq!(ev.len(), 3, "a failed fsync is no sync: {ev:?}");
    let h = "ab".repeat(32);
    assert!(is_cas_object(&format!("/s/xorbs/default.{h}")));
    assert!(is_cas_object(&format!("/s/shards/{h}.mdb")));
    assert!(!is_cas_object(&format!("/s/xorbs/default.{h}.tagset")));
    assert!(!is_cas_object(&format!("/s/other/default.{h}")));
}
