//! A mount on a full `xetmount serve` does not list directories again because of its own
//! commits (the change feed reports every commit's directories, this mount's too), and still
//! sees another writer's change made between two of its commits.

mod common;

use std::time::Duration;

use common::{hf_cli as hf, mount_served, serve_metrics, sh, Serve};

fn lists(url: &str) -> u64 {
    serve_metrics(url)
        .get("GET /api/buckets/{ns}/{name}/xetmount/list")
        .copied()
        .unwrap_or(0)
}

fn revision(url: &str) -> u64 {
    let body = common::http_get(url, "/api/buckets/local/data/xetmount/revision");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["revision"].as_u64().unwrap()
}

/// Wait until mount `m` has followed the bucket up to its current revision (or past it:
/// the mount may commit more meanwhile).
fn caught_up(url: &str, m: &common::Mount) {
    let want = revision(url);
    common::wait_for(
        "the mount to follow the bucket",
        Duration::from_secs(20),
        || {
            let stats = sh(
                std::path::Path::new("/"),
                &format!("{} stats {}", common::bin(), m.mountpoint.display()),
            );
            stats
                .lines()
                .find_map(|l| l.strip_prefix("remote_revision "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n >= want)
        },
    );
}

#[test]
fn own_commits_are_not_listed_again_and_others_between_them_are_seen() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &[]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);

    let m = mount_served(&url, d, "m", &[]);
    sh(
        d,
        "mkdir m/a && for i in $(seq 1 20); do mkdir m/a/d$i && echo x > m/a/d$i/f; done \
         && sync -f m/a && ls -R m >/dev/null",
    );
    caught_up(&url, &m);

    // New files in 20 listed directories, committed: the feed reports all 20 (and their
    // parent), and the old code listed each again (soon after, once its namespace flush
    // was done). Then ours, another writer's, ours: the other writer's file shows in a
    // listed directory, which costs a listing or two.
    let before = lists(&url);
    sh(
        d,
        "for i in $(seq 1 20); do echo y > m/a/d$i/g; done && sync -f m/a",
    );
    caught_up(&url, &m);
    sh(d, "echo 1 > m/a/d1/ours1 && sync -f m/a");
    sh(d, "echo foreign > foreign.txt");
    hf(
        &url,
        d,
        &[
            "buckets",
            "cp",
            "foreign.txt",
            "hf://buckets/local/data/a/d2/foreign.txt",
        ],
    );
    sh(d, "echo 2 > m/a/d3/ours2 && sync -f m/a");
    common::wait_for(
        "the other writer's file to show",
        Duration::from_secs(20),
        || sh(d, "ls m/a/d2").contains("foreign.txt"),
    );
    caught_up(&url, &m);
    let listed = lists(&url) - before;
    assert!(
        listed < 5,
        "{listed} directories listed for two own commits and one other writer's"
    );
    assert_eq!(sh(d, "cat m/a/d2/foreign.txt"), "foreign\n");
    m.stop();

    // Everything, read back after a remount.
    let m = mount_served(&url, d, "m", &[]);
    assert_eq!(
        sh(
            d,
            "cat m/a/d1/ours1 m/a/d3/ours2 m/a/d20/g m/a/d2/foreign.txt"
        ),
        "1\n2\ny\nforeign\n"
    );
    m.stop();
    server.stop();
}
