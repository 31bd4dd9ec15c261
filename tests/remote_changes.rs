//! Several machines on one bucket: two mounts A and B (separate staging and caches) and the
//! official `hf` client on one `xetmount serve`. What A or `hf` changes, B sees, listing and
//! bytes, including after B had the old bytes in its page cache; an open reader on B keeps
//! reading the version it opened; and on a plain bucket (no change feed) an idle poll round
//! costs one request. Propagation delays are printed (measured from the writer's fsync or
//! the `hf` command's return until B shows the change).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{hf_cli as hf, mount_served, sh, Serve};

/// Wait until `cond` holds (at most 20 s); returns how long it took.
fn delay(what: &str, cond: impl FnMut() -> bool) -> Duration {
    common::wait_for(what, Duration::from_secs(20), cond)
}

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

/// fsync a directory: commits the namespace changes made in it (FUSE fsyncdir).
fn fsync_dir(p: &Path) {
    std::fs::File::open(p).unwrap().sync_all().unwrap();
}

fn report(label: &str, delays: &mut [(String, Duration)]) {
    for (what, d) in delays.iter() {
        eprintln!("{label}: {what}: {} ms", d.as_millis());
    }
    delays.sort_by_key(|(_, d)| *d);
    let p50 = delays[delays.len() / 2].1;
    eprintln!(
        "{label}: propagation p50 {} ms, max {} ms over {} changes",
        p50.as_millis(),
        delays.last().unwrap().1.as_millis(),
        delays.len()
    );
}

#[test]
fn changes_on_one_mount_or_through_hf_reach_the_other_mount() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &[]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);
    let a = mount_served(&url, d, "a", &[]);
    let b = mount_served(&url, d, "b", &[]);
    let (pa, pb) = (a.mountpoint.clone(), b.mountpoint.clone());
    assert!(std::fs::read_dir(&pb).unwrap().next().is_none());
    let mut delays = Vec::new();

    // Created on A.
    sh(
        d,
        "head -c 3000000 /dev/urandom > v1 && dd if=v1 of=a/f bs=1M conv=fsync status=none",
    );
    let v1 = std::fs::read(d.join("v1")).unwrap();
    let t = delay("create", || read(&pb.join("f")).as_ref() == Some(&v1));
    delays.push(("create".to_string(), t));

    // Rewritten on A while B has the old bytes cached.
    assert_eq!(std::fs::read(pb.join("f")).unwrap(), v1);
    sh(
        d,
        "head -c 2500000 /dev/urandom > v2 && dd if=v2 of=a/f bs=1M conv=fsync status=none",
    );
    let v2 = std::fs::read(d.join("v2")).unwrap();
    let t = delay("rewrite", || read(&pb.join("f")).as_ref() == Some(&v2));
    delays.push(("rewrite".to_string(), t));

    // A sparse 4 KiB edit on A.
    sh(
        d,
        "head -c 4096 /dev/urandom > p && dd if=p of=a/f bs=4096 seek=100 conv=notrunc,fsync status=none \
         && dd if=p of=v2 bs=4096 seek=100 conv=notrunc status=none",
    );
    let v3 = std::fs::read(d.join("v2")).unwrap();
    let t = delay("sparse edit", || read(&pb.join("f")).as_ref() == Some(&v3));
    delays.push(("sparse edit".to_string(), t));

    // Renamed into a new directory, then deleted, on A.
    sh(d, "mkdir a/dir && mv a/f a/dir/g");
    fsync_dir(&pa.join("dir"));
    let t = delay("rename", || {
        !pb.join("f").exists() && read(&pb.join("dir/g")).as_ref() == Some(&v3)
    });
    delays.push(("rename".to_string(), t));
    std::fs::remove_file(pa.join("dir/g")).unwrap();
    fsync_dir(&pa.join("dir"));
    let t = delay("delete", || {
        pb.join("dir").exists() && !pb.join("dir/g").exists()
    });
    delays.push(("delete".to_string(), t));

    // Uploaded and deleted with hf.
    sh(d, "printf 'from hf\\n' > h.txt");
    hf(
        &url,
        d,
        &[
            "buckets",
            "cp",
            "h.txt",
            "hf://buckets/local/data/dir/h.txt",
        ],
    );
    let t = delay("hf upload", || {
        read(&pb.join("dir/h.txt")).as_deref() == Some(b"from hf\n")
    });
    delays.push(("hf upload".to_string(), t));
    hf(&url, d, &["buckets", "rm", "-y", "local/data/dir/h.txt"]);
    let t = delay("hf delete", || !pb.join("dir/h.txt").exists());
    delays.push(("hf delete".to_string(), t));

    // An open reader on B keeps reading the version it opened while A replaces the file.
    sh(
        d,
        "head -c 4000000 /dev/urandom > old && dd if=old of=a/o bs=1M conv=fsync status=none",
    );
    let old = std::fs::read(d.join("old")).unwrap();
    delay("o", || read(&pb.join("o")).as_ref() == Some(&old));
    let mut reader = std::fs::File::open(pb.join("o")).unwrap();
    let mut head = vec![0u8; 1 << 20];
    reader.read_exact(&mut head).unwrap();
    sh(
        d,
        "head -c 4000000 /dev/urandom > new && dd if=new of=a/o bs=1M conv=fsync status=none",
    );
    let new = std::fs::read(d.join("new")).unwrap();
    let t = delay("replace", || read(&pb.join("o")).as_ref() == Some(&new));
    delays.push(("replace while open".to_string(), t));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    assert!(head == old, "the open reader mixed two versions");
    reader.seek(SeekFrom::Start(0)).unwrap();
    let mut again = Vec::new();
    reader.read_to_end(&mut again).unwrap();
    assert!(again == old, "the open reader's re-read changed");
    drop(reader);

    report("change feed", &mut delays);
    let stats = sh(d, &format!("{} stats b", common::bin()));
    assert!(stats.contains("pending_invalidations 0\n"), "{stats}");
    assert!(!stats.contains("remote_changes 0\n"), "{stats}");
    a.stop();
    b.stop();
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

/// A and B edit one file. The policy is last writer wins, and no committed version ever mixes
/// the two writers: B's edit, pending while A committed its own, is composed against the base
/// B opened, so it replaces A's version whole (counted in `remote_overwrites`, logged with
/// both identities); both mounts then read B's version. Whole-file rewrites racing from both
/// sides end with both mounts reading one writer's version, byte for byte.
#[test]
fn concurrent_writers_never_leave_a_mixed_file() {
    concurrent_writers(&[], &[]);
}

/// The same on a plain bucket, where mounts poll: the same policy holds.
#[test]
fn concurrent_writers_on_a_plain_bucket_never_leave_a_mixed_file() {
    concurrent_writers(&["--hub-only"], &["--poll-interval-secs", "1"]);
}

fn concurrent_writers(serve_args: &[&str], mount_args: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), serve_args);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);
    let a = mount_served(&url, d, "a", mount_args);
    // B's changes wait 3 s before they are committed, unless fsync'ed.
    let b_args = [mount_args, &["--flush-debounce-ms", "3000"]].concat();
    let b = mount_served(&url, d, "b", &b_args);
    let (pa, pb) = (a.mountpoint.clone(), b.mountpoint.clone());
    sh(
        d,
        "head -c 2000000 /dev/urandom > base && dd if=base of=a/f bs=1M conv=fsync status=none",
    );
    let base = std::fs::read(d.join("base")).unwrap();
    delay("base on B", || read(&pb.join("f")).as_ref() == Some(&base));

    // B edits block 10 (pending), then A edits block 20 and commits at once.
    sh(
        d,
        "head -c 4096 /dev/urandom > eb && head -c 4096 /dev/urandom > ea \
         && dd if=eb of=b/f bs=4096 seek=10 conv=notrunc status=none \
         && dd if=ea of=a/f bs=4096 seek=20 conv=notrunc,fsync status=none \
         && cp base with_a && dd if=ea of=with_a bs=4096 seek=20 conv=notrunc status=none \
         && cp base with_b && dd if=eb of=with_b bs=4096 seek=10 conv=notrunc status=none",
    );
    let with_a = std::fs::read(d.join("with_a")).unwrap();
    let with_b = std::fs::read(d.join("with_b")).unwrap();
    assert_eq!(std::fs::read(pa.join("f")).unwrap(), with_a);
    // B still reads its own version while its change is pending.
    assert_eq!(std::fs::read(pb.join("f")).unwrap(), with_b);
    // B's commit lands (debounce) and replaces A's version whole; A follows.
    delay("B's version on A", || {
        read(&pa.join("f")).as_ref() == Some(&with_b)
    });
    assert_eq!(std::fs::read(pb.join("f")).unwrap(), with_b);
    let stats = sh(d, &format!("{} stats b", common::bin()));
    assert!(stats.contains("remote_overwrites 1\n"), "{stats}");
    assert!(
        b.log_text().contains("last writer wins"),
        "the overwrite is not logged: {}",
        b.log_text()
    );

    // Whole-file rewrites from both sides at once.
    let mut versions = Vec::new();
    for i in 0..6 {
        let name = format!("v{i}");
        sh(d, &format!("head -c 1500000 /dev/urandom > {name}"));
        versions.push(std::fs::read(d.join(&name)).unwrap());
    }
    sh(
        d,
        "(for i in 0 2 4; do dd if=v$i of=a/f bs=1M conv=fsync status=none; done) & \
         (for i in 1 3 5; do dd if=v$i of=b/f bs=1M conv=fsync status=none; done); wait",
    );
    let t = delay("both mounts agree", || {
        let (x, y) = (read(&pa.join("f")), read(&pb.join("f")));
        x.is_some() && x == y
    });
    let settled = std::fs::read(pa.join("f")).unwrap();
    assert!(
        versions.contains(&settled),
        "the file both mounts read is no writer's version"
    );
    eprintln!(
        "racing rewrites: both mounts agree after {} ms",
        t.as_millis()
    );
    a.stop();
    b.stop();
    server.stop();
}
