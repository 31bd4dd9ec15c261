//! Several machines on one bucket: two mounts A and B (separate staging and caches) and the
//! official `hf` client on one `xetmount serve`. What A or `hf` changes, B sees, listing and
//! bytes, including after B had the old bytes in its page cache; an open reader on B keeps
//! reading the version it opened; and on a plain bucket (no change feed) an idle poll round
//! costs one request. Propagation delays are printed (measured from the writer's fsync or
//! the `hf` command's return until B shows the change).

mod common;
#[path = "common/two_mounts.rs"]
mod two_mounts;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{hf_cli as hf, mount_served, sh, Serve};
use two_mounts::Policy;

/// Wait until `cond` holds (at most 20 s); returns how long it took.
fn delay(what: &str, cond: impl FnMut() -> bool) -> Duration {
    common::wait_for(what, Duration::from_secs(20), cond)
}

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

#[test]
fn changes_on_one_mount_or_through_hf_reach_the_other_mount() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &[]);
    hf(&server.url, d, &["buckets", "create", "local/data"]);
    two_mounts::changes_reach_the_other_mount(d, &server.url, &server.url);
    server.stop();
}

#[test]
fn a_plain_bucket_is_polled_with_one_request_per_idle_round() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &["--hub-only"]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);
    let poll = ["--poll-interval-secs", "1"];
    let a = mount_served(&url, d, "a", &poll);
    // 10,000 files in 100 directories.
    sh(
        d,
        "for i in $(seq 0 99); do mkdir a/d$i; for j in $(seq 0 99); do echo $i.$j > a/d$i/f$j; done; done",
    );
    a.stop();
    let b = mount_served(&url, d, "b", &poll);
    let listed = sh(d, "find b -type f | wc -l");
    assert_eq!(listed.trim(), "10000");

    // Idle rounds: each one asks for the revision (the bucket's info) and nothing else.
    let before = common::serve_metrics(&url);
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(3500));
    let after = common::serve_metrics(&url);
    let grew: Vec<(String, u64)> = after
        .iter()
        .filter(|(k, _)| k.as_str() != "fetch_bytes")
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    eprintln!(
        "polling: {:?} in {} ms of idle rounds at 1 s",
        grew,
        t.elapsed().as_millis()
    );
    assert!(
        grew.iter()
            .all(|(k, _)| k == "GET /api/buckets/{ns}/{name}"),
        "an idle round asked more than the revision: {grew:?}"
    );
    let rounds = grew.first().map_or(0, |(_, n)| *n);
    assert!(
        (2..=5).contains(&rounds),
        "{rounds} revision requests in 3.5 s"
    );

    // A change arrives within the interval (plus the listing), and B's empty directory, which
    // a plain bucket cannot hold, survives the refresh of its parent.
    std::fs::create_dir(b.mountpoint.join("keep")).unwrap();
    let a = mount_served(&url, d, "a", &poll);
    sh(d, "echo new > a/top.txt");
    sh(d, "echo changed > a/d7/f7");
    std::fs::File::open(a.mountpoint.join("d7/f7"))
        .unwrap()
        .sync_all()
        .unwrap();
    let pb = b.mountpoint.clone();
    let t = delay("polled change", || {
        read(&pb.join("d7/f7")).as_deref() == Some(b"changed\n")
    });
    eprintln!("polling at 1 s: propagation {} ms", t.as_millis());
    delay("top.txt", || pb.join("top.txt").exists());
    assert!(pb.join("keep").is_dir(), "B's empty directory was dropped");
    a.stop();
    b.stop();
    server.stop();
}

/// A and B edit one file, and no version the store ever holds mixes the two writers: B's
/// edit, pending while A committed its own, was composed against the base B opened.
///
/// On `xetmount serve` (compare-and-swap) the server refuses B's stale commit: B's `fsync`
/// fails with `ESTALE`, A's version keeps the name on both mounts and B's version is kept whole
/// as `f.conflict-…` (counted in `remote_conflicts`, logged). A file deleted on A while B edits
/// it is a conflict too. Whole-file rewrites racing from both sides leave only whole versions,
/// and both mounts agree.
#[test]
fn concurrent_writers_never_leave_a_mixed_file() {
    on_one_server(&[], &[], Policy::KeepBoth);
}

/// The same on a plain bucket, where mounts poll and commits cannot be refused: last writer
/// wins, counted in `remote_overwrites` and logged with both identities.
#[test]
fn concurrent_writers_on_a_plain_bucket_never_leave_a_mixed_file() {
    on_one_server(
        &["--hub-only"],
        &["--poll-interval-secs", "1"],
        Policy::LastWriterWins,
    );
}

fn on_one_server(serve_args: &[&str], mount_args: &[&str], policy: Policy) {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), serve_args);
    hf(&server.url, d, &["buckets", "create", "local/data"]);
    two_mounts::concurrent_writers(d, &server.url, &server.url, mount_args, policy);
    server.stop();
}
