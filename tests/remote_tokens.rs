//! A mount of a served bucket with tokens that may read but not write: it mounts read-only
//! by itself and says why, and writes pending when the token loses its write right are not
//! retried in a loop at unmount: the mount exits at once naming them, and the next mount
//! with a token that may write commits them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{hf_cli_as, serve_metrics, sh, Mount, Serve};

/// Mount `hf://buckets/alice/data` from `url` at `d/name` with the token in file `token`,
/// caches (and staging) in `d/cache-{cache}`.
fn mount_as(url: &str, d: &Path, name: &str, token: &Path, cache: &str, extra: &[&str]) -> Mount {
    let cache = d.join(format!("cache-{cache}"));
    let mut args = vec![
        "--endpoint",
        url,
        "--token-file",
        token.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Mount::start(Path::new("hf://buckets/alice/data"), &d.join(name), &args)
}

fn write(d: &Path, name: &str, text: &str) -> PathBuf {
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_token_that_can_read_but_not_write_mounts_read_only_and_says_why() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let tokens = write(d, "tokens", "wtok alice write\nrtok alice read\n");
    let (w, r) = (write(d, "w", "wtok\n"), write(d, "r", "rtok\n"));
    let server = Serve::start(
        &d.join("srv"),
        &d.join("serve.log"),
        &["--token-file", tokens.to_str().unwrap()],
    );
    let url = server.url.clone();
    hf_cli_as(&url, "wtok", d, &["buckets", "create", "alice/data"]);
    let m = mount_as(&url, d, "a", &w, "a", &[]);
    sh(
        d,
        "head -c 300000 /dev/urandom > f.bin && mkdir a/dir && cp f.bin a/dir/f.bin",
    );
    m.stop();

    // No --read-only: the mount finds out by itself.
    let m = mount_as(&url, d, "b", &r, "b", &[]);
    sh(
        d,
        "cmp f.bin b/dir/f.bin \
         && ! touch b/new 2>err && grep -q 'Read-only file system' err \
         && ! mkdir b/newdir 2>err && grep -q 'Read-only file system' err \
         && ! sh -c 'echo more >> b/dir/f.bin' 2>err && grep -q 'Read-only file system' err \
         && cmp f.bin b/dir/f.bin",
    );
    let log = m.log_text();
    m.stop();
    let why = "the token can read but not write bucket alice/data: mounted read-only";
    assert_eq!(log.matches(why).count(), 1, "{log}");

    // --read-only says so once, too.
    let m = mount_as(&url, d, "c", &w, "c", &["--read-only"]);
    sh(d, "cmp f.bin c/dir/f.bin && ! touch c/new 2>/dev/null");
    let log = m.log_text();
    m.stop();
    assert_eq!(
        log.matches("read-only because of --read-only").count(),
        1,
        "{log}"
    );
    assert!(!log.contains(why), "{log}");

    // No token at all (none passed, none in the environment or saved): a public bucket mounts
    // read-only and says why; once private, the mount fails in one sentence.
    std::env::remove_var("HF_TOKEN");
    std::env::set_var("HF_HOME", d.join("no-hf-home"));
    let anon = |name: &str| {
        let cache = d.join(format!("cache-{name}"));
        let args = ["--endpoint", &url, "--cache-dir", cache.to_str().unwrap()];
        (args.map(str::to_string), d.join(name))
    };
    let (args, mp) = anon("f");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = Mount::start(Path::new("hf://buckets/alice/data"), &mp, &args);
    sh(
        d,
        "cmp f.bin f/dir/f.bin && ! touch f/new 2>err && grep -q 'Read-only file system' err",
    );
    let log = m.log_text();
    m.stop();
    assert_eq!(
        log.matches("no token: bucket alice/data mounted read-only")
            .count(),
        1,
        "{log}"
    );
    hf_cli_as(
        &url,
        "wtok",
        d,
        &["buckets", "settings", "alice/data", "--private"],
    );
    std::fs::create_dir_all(d.join("g")).unwrap();
    let out = Command::new(common::bin())
        .args(["mount", "hf://buckets/alice/data"])
        .arg(d.join("g"))
        .args(["--endpoint", &url, "--cache-dir"])
        .arg(d.join("cache-g"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("needs a token (it is private, or does not exist)"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // An unknown token still fails the mount, in one sentence.
    let bad = write(d, "bad", "nobody-knows-me\n");
    std::fs::create_dir_all(d.join("e")).unwrap();
    let out = Command::new(common::bin())
        .args(["mount", "hf://buckets/alice/data"])
        .arg(d.join("e"))
        .args(["--endpoint", &url, "--token-file"])
        .arg(&bad)
        .arg("--cache-dir")
        .arg(d.join("cache-e"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("refused the token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    server.stop();
}

/// Requests the server answered on routes whose key contains `route`.
fn requests(url: &str, route: &str) -> u64 {
    serve_metrics(url)
        .iter()
        .filter(|(k, _)| k.contains(route))
        .map(|(_, n)| n)
        .sum()
}

#[test]
fn writes_refused_for_good_at_unmount_are_not_retried_and_the_next_mount_commits_them() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let writable = write(d, "tokens-rw", "wtok alice write\n");
    let read_only = write(d, "tokens-ro", "wtok alice read\n");
    let w = write(d, "w", "wtok\n");
    let srv = d.join("srv");
    let rw = ["--token-file", writable.to_str().unwrap()];
    let ro = ["--token-file", read_only.to_str().unwrap()];
    let server = Serve::start(&srv, &d.join("serve1.log"), &rw);
    let (url, port) = (server.url.clone(), server.port());
    hf_cli_as(&url, "wtok", d, &["buckets", "create", "alice/data"]);
    // Nothing is committed before the unmount.
    let slow = [
        "--flush-debounce-ms",
        "600000",
        "--flush-max-batch-window-ms",
        "600000",
        "--flush-shutdown-timeout-ms",
        "45000",
    ];
    let m = mount_as(&url, d, "a", &w, "main", &slow);
    let names = ["one.bin", "two.bin", "three.txt"];
    sh(
        d,
        "head -c 2000000 /dev/urandom > one.bin && head -c 70000 /dev/urandom > two.bin \
         && printf 'three\\n' > three.txt && mkdir a/sub \
         && cp one.bin a/one.bin && cp two.bin a/sub/two.bin && cp three.txt a/three.txt",
    );
    // The token loses its write right while the files are pending.
    server.kill9();
    let server = Serve::start_on(&srv, &d.join("serve2.log"), port, &ro);

    let start = Instant::now();
    let (status, log) = m.unmount();
    let took = start.elapsed();
    println!("unmount with writes refused for good took {took:?}");
    assert!(
        !status.success(),
        "the mount must report what it left: {log}"
    );
    assert!(
        took < Duration::from_millis(22_500),
        "exit took {took:?}, not well within the 45 s shutdown timeout: {log}"
    );
    for (name, path) in names.iter().zip(["/one.bin", "/sub/two.bin", "/three.txt"]) {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("{path} not committed")))
            .collect();
        assert_eq!(lines.len(), 1, "{name}: {log}");
        assert!(lines[0].contains("stays journaled"), "{}", lines[0]);
    }
    let refusals = log.lines().filter(|l| l.contains("not committed")).count();
    assert!(refusals <= names.len() + 1, "{refusals} lines: {log}");
    let (commits, shards) = (requests(&url, "/commit"), requests(&url, "/shards"));
    println!("while the token could not write: {commits} commit(s), {shards} shard upload(s)");
    assert!(
        commits <= 2 && shards <= 2,
        "{commits} commits, {shards} shards"
    );

    // The write right is back: the next mount (same staging) commits the files.
    server.kill9();
    let server = Serve::start_on(&srv, &d.join("serve3.log"), port, &rw);
    let m = mount_as(&url, d, "b", &w, "main", &[]);
    sh(
        d,
        "cmp one.bin b/one.bin && cmp two.bin b/sub/two.bin && cmp three.txt b/three.txt",
    );
    let log = m.log_text();
    m.stop();
    assert!(log.contains("recovered"), "{log}");
    // What a fresh cache reads is what the bucket holds.
    let m = mount_as(&url, d, "c", &w, "fresh", &[]);
    sh(
        d,
        "cmp one.bin c/one.bin && cmp two.bin c/sub/two.bin && cmp three.txt c/three.txt",
    );
    m.stop();
    server.stop();
}
