//! Two mounts on one bucket, each through its own URL (one `xetmount serve`, or two replicas
//! of one deployment): the scenarios `remote_changes.rs` runs on one server and
//! `serve_shared.rs` across replicas.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{hf_cli as hf, mount_served, sh};

/// Wait until `cond` holds (at most 20 s); returns how long it took.
fn delay(what: &str, cond: impl FnMut() -> bool) -> Duration {
    crate::common::wait_for(what, Duration::from_secs(20), cond)
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

/// Mount A on `url_a` and B on `url_b` (one server, or two replicas of one deployment) in `d`,
/// change bucket `local/data` (which must exist) on A and with `hf` (through `url_a`) in every
/// way, and check that B shows each change; returns how long each took to reach B.
pub fn changes_reach_the_other_mount(
    d: &Path,
    url_a: &str,
    url_b: &str,
) -> Vec<(String, Duration)> {
    let url = url_a.to_string();
    let a = mount_served(url_a, d, "a", &[]);
    let b = mount_served(url_b, d, "b", &[]);
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
    let stats = sh(d, &format!("{} stats b", crate::common::bin()));
    assert!(stats.contains("pending_invalidations 0\n"), "{stats}");
    assert!(!stats.contains("remote_changes 0\n"), "{stats}");
    a.stop();
    b.stop();
    delays
}

/// A and B edit one file, and no version the store ever holds mixes the two writers: B's
/// edit, pending while A committed its own, was composed against the base B opened.
///
/// On `xetmount serve` (compare-and-swap) the server refuses B's stale commit: B's `fsync`
/// fails with `ESTALE`, A's version keeps the name on both mounts and B's version is kept whole
/// as `f.conflict-…` (counted in `remote_conflicts`, logged). A file deleted on A while B edits
/// it is a conflict too. Whole-file rewrites racing from both sides leave only whole versions,
/// and both mounts agree.
/// A on `url_a`, B on `url_b` (one server, or two replicas), bucket `local/data` existing.
pub fn concurrent_writers(d: &Path, url_a: &str, url_b: &str, mount_args: &[&str], policy: Policy) {
    let url = url_a.to_string();
    let a = mount_served(url_a, d, "a", mount_args);
    // B's changes wait for an fsync (the debounce outlasts the test's steps).
    let b_args = [mount_args, &["--flush-debounce-ms", "60000"]].concat();
    let b = mount_served(url_b, d, "b", &b_args);
    let (pa, pb) = (a.mountpoint.clone(), b.mountpoint.clone());
    sh(
        d,
        "head -c 2000000 /dev/urandom > base && dd if=base of=a/f bs=1M conv=fsync status=none \
         && cp base a/g && sync a/g",
    );
    let base = std::fs::read(d.join("base")).unwrap();
    delay("base on B", || read(&pb.join("f")).as_ref() == Some(&base));
    delay("g on B", || read(&pb.join("g")).as_ref() == Some(&base));

    // B edits block 10 (pending), then A edits block 20 and commits at once.
    sh(
        d,
        "head -c 4096 /dev/urandom > eb && head -c 4096 /dev/urandom > ea \
         && dd if=eb of=b/f bs=4096 seek=10 conv=notrunc status=none \
         && dd if=eb of=b/g bs=4096 seek=10 conv=notrunc status=none \
         && dd if=ea of=a/f bs=4096 seek=20 conv=notrunc,fsync status=none \
         && cp base with_a && dd if=ea of=with_a bs=4096 seek=20 conv=notrunc status=none \
         && cp base with_b && dd if=eb of=with_b bs=4096 seek=10 conv=notrunc status=none",
    );
    let with_a = std::fs::read(d.join("with_a")).unwrap();
    let with_b = std::fs::read(d.join("with_b")).unwrap();
    assert_eq!(std::fs::read(pa.join("f")).unwrap(), with_a);
    // B still reads its own version while its change is pending.
    assert_eq!(std::fs::read(pb.join("f")).unwrap(), with_b);
    // B has seen A's version (the feed, or a poll) before it commits.
    let stats = |m: &crate::common::Mount| {
        sh(
            d,
            &format!("{} stats {}", crate::common::bin(), m.mountpoint.display()),
        )
    };
    let revision = bucket_revision(&url, policy == Policy::LastWriterWins);
    delay("A's commit seen by B", || {
        stats(&b).contains(&format!("remote_revision {revision}\n"))
    });
    match policy {
        Policy::KeepBoth => {
            assert_eq!(fsync_errno(&pb.join("f")), Some(libc::ESTALE));
            // A's version keeps the name everywhere; B's is kept whole beside it.
            delay("A's version on B", || {
                read(&pb.join("f")).as_ref() == Some(&with_a)
            });
            for m in [&pa, &pb] {
                delay("B's version kept aside", || {
                    let aside = files_like(m, "f.conflict-");
                    aside.len() == 1 && aside[0].1 == with_b
                });
                assert_eq!(std::fs::read(m.join("f")).unwrap(), with_a);
            }
            // A deletes g while B edits it: the edit is kept under a conflict name.
            std::fs::remove_file(pa.join("g")).unwrap();
            fsync_dir(&pa);
            let revision = bucket_revision(&url, false);
            delay("A's delete seen by B", || {
                stats(&b).contains(&format!("remote_revision {revision}\n"))
            });
            // B's own change keeps g on B until it is committed.
            assert_eq!(std::fs::read(pb.join("g")).unwrap(), with_b);
            assert_eq!(fsync_errno(&pb.join("g")), Some(libc::ESTALE));
            for m in [&pa, &pb] {
                delay("B's g kept aside", || {
                    let aside = files_like(m, "g.conflict-");
                    aside.len() == 1 && aside[0].1 == with_b && !m.join("g").exists()
                });
            }
            let stats = stats(&b);
            assert!(stats.contains("remote_conflicts 2\n"), "{stats}");
            assert!(stats.contains("remote_overwrites 0\n"), "{stats}");
            let log = b.log_text();
            assert!(
                log.contains("conflict on /f: another writer wrote")
                    && log.contains("conflict on /g: another writer deleted it"),
                "the conflicts are not logged: {log}"
            );
        }
        Policy::LastWriterWins => {
            assert_eq!(fsync_errno(&pb.join("f")), None);
            // B's commit replaced A's version whole; A follows.
            delay("B's version on A", || {
                read(&pa.join("f")).as_ref() == Some(&with_b)
            });
            assert_eq!(std::fs::read(pb.join("f")).unwrap(), with_b);
            let stats = stats(&b);
            assert!(stats.contains("remote_overwrites 1\n"), "{stats}");
            assert!(
                b.log_text().contains("last writer wins"),
                "the overwrite is not logged: {}",
                b.log_text()
            );
        }
    }

    // Whole-file rewrites from both sides at once (a refused fsync does not stop a loop).
    let mut versions = Vec::new();
    for i in 0..6 {
        let name = format!("v{i}");
        sh(d, &format!("head -c 1500000 /dev/urandom > {name}"));
        versions.push(std::fs::read(d.join(&name)).unwrap());
    }
    sh(
        d,
        "(for i in 0 2 4; do dd if=v$i of=a/h bs=1M conv=fsync status=none || true; done) & \
         (for i in 1 3 5; do dd if=v$i of=b/h bs=1M conv=fsync status=none || true; done); wait",
    );
    // B's loop is done: anything it left pending is committed (or moved aside) now.
    fsync_errno(&pb.join("h"));
    let agree = || {
        let (x, y) = (files_like(&pa, "h"), files_like(&pb, "h"));
        !x.is_empty() && x == y
    };
    let start = Instant::now();
    while !agree() {
        if start.elapsed() > Duration::from_secs(20) {
            let show = |m: &Path| {
                let v: Vec<(String, usize, u8)> = files_like(m, "h")
                    .into_iter()
                    .map(|(n, b)| (n, b.len(), b.first().copied().unwrap_or(0)))
                    .collect();
                format!("{v:?}")
            };
            panic!(
                "the mounts disagree:\nA {}\nB {}\nA's stats {}\nB's stats {}\nA's log {}\nB's log {}",
                show(&pa),
                show(&pb),
                stats(&a),
                stats(&b),
                a.log_text(),
                b.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = start.elapsed();
    for (name, bytes) in files_like(&pa, "h") {
        assert!(
            versions.contains(&bytes),
            "{name}, as both mounts read it, is no writer's version"
        );
    }
    eprintln!(
        "racing rewrites: both mounts agree after {} ms ({} file(s))",
        t.as_millis(),
        files_like(&pa, "h").len()
    );
    a.stop();
    b.stop();
}

#[derive(PartialEq)]
pub enum Policy {
    KeepBoth,
    LastWriterWins,
}

/// The names in `dir` starting with `prefix`, and their bytes.
fn files_like(dir: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.starts_with(prefix)
                .then(|| Some((name.clone(), std::fs::read(dir.join(&name)).ok()?)))?
        })
        .collect();
    out.sort();
    out
}

/// The bucket's revision as a mount sees it: the catalog revision on `xetmount serve`, the
/// bucket's `updatedAt` in milliseconds on a plain bucket.
fn bucket_revision(url: &str, plain: bool) -> u64 {
    let route = if plain {
        "/api/buckets/local/data"
    } else {
        "/api/buckets/local/data/xetmount/revision"
    };
    let body = crate::common::http_get(url, route);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    if plain {
        let at = v["updatedAt"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp_millis() as u64
    } else {
        v["revision"].as_u64().unwrap()
    }
}

/// fsync `path` (open for reading): commits its pending changes; returns the errno.
fn fsync_errno(path: &Path) -> Option<i32> {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().err().map(|e| e.raw_os_error().unwrap())
}
