//! Across a slow network (issue 21): `xetmount serve`, full and `--hub-only`, behind
//! `xetmount-delay-proxy` at 10 ms each way, with `--public-url` naming the proxy so that the
//! CAS fetches go through it too. A tree of a few hundred files and a few MiB file written
//! through an `hf://` mount survive the unmount and read back exact on a fresh mount.
//! Correctness only: bench/wan.sh measures the times.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::path::{Path, PathBuf};

use common::{mount_served, random_bytes, sh};
use proxy::serve_behind_proxy;

/// Files of the tree: 12 directories (two levels) of 20 files each, sizes from empty to
/// ~40 KiB, plus one 6 MiB file, and directories whose names sort between another directory
/// and its contents (`g`, `g-1`, `g.2`, `g/…`: a recursive listing in path order interleaves
/// them); `(relative path, content)`.
fn tree() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, d) in ["g", "g-1", "g.2", "g/h", "g/h-1"].iter().enumerate() {
        for f in ["a", "z"] {
            out.push((
                PathBuf::from(format!("{d}/{f}")),
                random_bytes(10 + i, i as u64),
            ));
        }
    }
    for d in 0..12u64 {
        let dir = PathBuf::from(format!("d{}/sub{}", d / 4, d % 4));
        for f in 0..20u64 {
            let seed = d * 100 + f;
            let len = (seed * 2_731 % 40_000) as usize;
            out.push((dir.join(format!("f{f}.bin")), random_bytes(len, seed + 1)));
        }
    }
    out.push((PathBuf::from("big.bin"), random_bytes(6 << 20, 4242)));
    out
}

/// `path size` of every entry below `dir` (directories as `path/`), then every file's
/// sha256, sorted: equal listings mean equal names, counts and bytes.
fn listing(dir: &Path) -> String {
    sh(
        dir,
        "find . -mindepth 1 \\( -type d -printf '%p/\\n' \\) -o -printf '%p %s\\n' | sort \
         && find . -type f -exec sha256sum {} + | sort",
    )
}

/// Server requests that list directories (per-directory and recursive, either API).
fn listing_requests(url: &str) -> u64 {
    common::serve_metrics(url)
        .iter()
        .filter(|(k, _)| {
            k.ends_with("/xetmount/list") || k.ends_with("/xetmount/tree") || k.contains("/tree")
        })
        .map(|(_, v)| v)
        .sum()
}

fn round_trip(extra: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let (proxy, _server) = serve_behind_proxy(d, 10, extra);
    assert_eq!(_server.url, proxy.url, "serve announces its public URL");

    let files = tree();
    let want = d.join("want");
    for (rel, body) in &files {
        std::fs::create_dir_all(want.join(rel).parent().unwrap()).unwrap();
        std::fs::write(want.join(rel), body).unwrap();
    }

    let m = mount_served(&proxy.url, d, "m", &[]);
    for (rel, body) in &files {
        std::fs::create_dir_all(m.path(rel.to_str().unwrap()).parent().unwrap()).unwrap();
        std::fs::write(m.path(rel.to_str().unwrap()), body).unwrap();
    }
    let full = extra.is_empty();
    if full {
        // What only the full catalog keeps: symlinks and empty directories.
        for root in [want.clone(), m.mountpoint.clone()] {
            std::os::unix::fs::symlink("h/a", root.join("g/link")).unwrap();
            std::fs::create_dir_all(root.join("g/h/empty")).unwrap();
            std::fs::create_dir_all(root.join("g-1/empty")).unwrap();
        }
    }
    // Exit 0 from the mount: everything written was committed through the proxy.
    m.stop();

    let m = mount_served(&proxy.url, d, "again", &[]);
    let before = listing_requests(&proxy.url);
    let got = listing(&m.mountpoint);
    // One recursive listing, not one request per directory (the root was listed at mount).
    let walked = listing_requests(&proxy.url) - before;
    let dirs = got.lines().filter(|l| l.ends_with('/')).count();
    assert!(
        dirs >= 20 && walked <= 3,
        "{walked} listing requests for {dirs} directories"
    );
    let expected = listing(&want);
    assert_eq!(got.lines().count(), expected.lines().count(), "find counts");
    assert_eq!(got, expected);
    // And byte for byte, not only by digest.
    for (rel, body) in &files {
        let read = std::fs::read(m.path(rel.to_str().unwrap())).unwrap();
        assert!(
            read == *body,
            "{} reads back different bytes",
            rel.display()
        );
    }
    m.stop();
}

#[test]
fn a_full_bucket_round_trips_through_a_10ms_proxy() {
    round_trip(&[]);
}

#[test]
fn a_plain_bucket_round_trips_through_a_10ms_proxy() {
    round_trip(&["--hub-only"]);
}
