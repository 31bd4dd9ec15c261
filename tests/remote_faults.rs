//! A mount of a served bucket when the server misbehaves: it dies mid-upload and comes back,
//! its CAS tokens expire mid-session, it refuses the token. Nothing acknowledged is lost;
//! what the mount could not do it says.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{hf_cli, mount_served, sh, Serve};

#[test]
fn a_server_killed_mid_upload_comes_back_and_the_mount_commits_everything() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve1.log"), &[]);
    let (url, port) = (server.url.clone(), server.port());
    hf_cli(&url, d, &["buckets", "create", "local/data"]);
    let m = mount_served(&url, d, "a", &[]);
    sh(
        d,
        "head -c $((160 << 20)) /dev/urandom > big.bin && printf small > small.txt",
    );
    // The close schedules the commit 50 ms later; the upload of 160 MiB takes longer than
    // that, so the server dies while it runs (or just before: either way a commit fails).
    sh(d, "cp big.bin a/big.bin && cp small.txt a/small.txt");
    server.kill9();
    // The server stays down a while; xet-core's client retries its requests meanwhile.
    std::thread::sleep(Duration::from_secs(2));
    // The mount keeps serving what it has.
    sh(d, "cmp big.bin a/big.bin && cmp small.txt a/small.txt");
    let server = Serve::start_on(&d.join("srv"), &d.join("serve2.log"), port, &[]);
    m.stop(); // commits everything pending before it returns
    hf_cli(
        &url,
        d,
        &[
            "buckets",
            "cp",
            "hf://buckets/local/data/big.bin",
            "dl-big.bin",
        ],
    );
    hf_cli(
        &url,
        d,
        &[
            "buckets",
            "cp",
            "hf://buckets/local/data/small.txt",
            "dl-small.txt",
        ],
    );
    sh(d, "cmp big.bin dl-big.bin && cmp small.txt dl-small.txt");
    server.stop();
}

#[test]
fn cas_tokens_that_expire_mid_session_are_refreshed() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(
        &d.join("srv"),
        &d.join("serve.log"),
        &["--cas-token-ttl-secs", "2"],
    );
    let url = server.url.clone();
    hf_cli(&url, d, &["buckets", "create", "local/data"]);
    let m = mount_served(&url, d, "a", &[]);
    sh(d, "head -c 3000000 /dev/urandom > one.bin && dd if=one.bin of=a/one.bin bs=1M conv=fsync status=none");
    // Every token handed out so far has expired.
    std::thread::sleep(Duration::from_secs(3));
    sh(d, "head -c 3000000 /dev/urandom > two.bin && dd if=two.bin of=a/two.bin bs=1M conv=fsync status=none");
    sh(d, "head -c 4096 /dev/urandom > p.bin && dd if=p.bin of=a/one.bin bs=4096 seek=10 conv=notrunc,fsync status=none \
           && dd if=p.bin of=one.bin bs=4096 seek=10 conv=notrunc status=none");
    m.stop();
    std::thread::sleep(Duration::from_secs(3));
    let m = mount_served(&url, d, "b", &[]);
    sh(d, "cmp one.bin b/one.bin && cmp two.bin b/two.bin");
    m.stop();
    server.stop();
}

#[test]
fn a_refused_token_fails_the_mount_with_one_sentence() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    std::fs::write(d.join("tokens"), "good alice write\n").unwrap();
    std::fs::write(d.join("bad"), "not-a-token\n").unwrap();
    let tokens = d.join("tokens");
    let server = Serve::start(
        &d.join("srv"),
        &d.join("serve.log"),
        &["--token-file", tokens.to_str().unwrap()],
    );
    std::fs::create_dir_all(d.join("mnt")).unwrap();
    let out = Command::new(common::bin())
        .args(["mount", "hf://buckets/alice/data"])
        .arg(d.join("mnt"))
        .args(["--endpoint", &server.url, "--token-file"])
        .arg(d.join("bad"))
        .arg("--cache-dir")
        .arg(d.join("cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("refused the token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    server.stop();
}

#[test]
fn a_rate_limited_server_is_waited_for_and_nothing_fails() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(
        &d.join("srv"),
        &d.join("serve.log"),
        &["--hub-rate-limit", "5"],
    );
    let url = server.url.clone();
    hf_cli(&url, d, &["buckets", "create", "local/data"]);
    let m = mount_served(&url, d, "a", &[]);
    sh(
        d,
        "for i in $(seq 1 40); do mkdir -p a/d$i && echo \"file $i\" > a/d$i/f; done",
    );
    m.stop();
    // A fresh mount lists every directory: more bucket-API requests than the server admits
    // per second, so some are answered 429 and retried after the time it asks for.
    let m = mount_served(&url, d, "b", &[]);
    let listing = sh(d, "cd b && for i in $(seq 1 40); do cat d$i/f; done");
    let want: String = (1..=40).map(|i| format!("file {i}\n")).collect();
    assert_eq!(listing, want);
    let log = m.log_text();
    m.stop();
    assert!(
        log.contains("429") && log.contains("retrying"),
        "the server never answered 429: {log}"
    );
    server.stop();
}
