//! The memory budget (`--memory-mib`, issue 23): a budget below the least is refused before
//! anything is created, and at the least budget a file larger than the whole budget (and so
//! than every share of it: read cache, read-ahead, chunk-cache writes, the upload share) is
//! committed and read back exactly, on the local store and on a served bucket, so no
//! consumer waits for room it can never get. The shares' own bounds are unit tests next to
//! each consumer (`budget`, `readcache`, `chunk_cache`, `upload`); RSS is measured by
//! bench/memory.sh, not asserted here.

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, http, mount_served, random_bytes, Mount, Serve};

const MIB: usize = 1 << 20;
/// The least budget `--memory-mib` accepts.
const LEAST: &str = "150";

#[test]
fn a_budget_below_the_least_is_refused_before_anything_is_created() {
    let d = tempfile::tempdir().unwrap();
    let (store, mp) = (d.path().join("store"), d.path().join("mnt"));
    std::fs::create_dir(&mp).unwrap();
    for bad in ["100", "0", "lots"] {
        let out = Command::new(bin())
            .args(["mount", "--memory-mib", bad])
            .arg(&store)
            .arg(&mp)
            .output()
            .unwrap();
        assert!(!out.status.success(), "--memory-mib {bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--memory-mib"), "{bad}: {err}");
        assert!(!store.exists(), "--memory-mib {bad} created the store");
    }
    let help = Command::new(bin())
        .args(["mount", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--memory-mib"), "{help}");
}

/// Write `data` as `big` through a mount made by `mount`, unmount (which commits it),
/// remount with `mount` and read it back.
fn round_trip(data: &[u8], mount: impl Fn(&str) -> Mount) {
    let m = mount("w");
    assert!(
        m.log_text().contains("memory budget 150 MiB"),
        "the mount does not log its budget: {}",
        m.log_text()
    );
    std::fs::write(m.path("big"), data).unwrap();
    m.stop();
    let m = mount("r");
    let got = std::fs::read(m.path("big")).unwrap();
    assert!(got.len() == data.len(), "read {} bytes", got.len());
    assert!(got == data, "the file read back differs");
    m.stop();
}

#[test]
fn the_least_budget_commits_and_reads_a_file_larger_than_the_budget() {
    let data = random_bytes(150 * MIB, 23);
    let d = tempfile::tempdir().unwrap();
    let d = d.path();

    let store = d.join("store");
    round_trip(&data, |name| {
        Mount::start(&store, &d.join(name), &["--memory-mib", LEAST])
    });

    let serve = Serve::start(&d.join("srv"), &d.join("serve.log"), &[]);
    let (status, body) = http(&serve.url, "POST", "/api/buckets/local/data", "t", b"{}");
    assert!(status < 300, "{status}: {}", String::from_utf8_lossy(&body));
    // A fresh cache directory per mount: the read fetches everything (through the chunk
    // cache's writes, which hold a 32nd of the budget).
    round_trip(&data, |name| {
        mount_served(&serve.url, d, &format!("s{name}"), &["--memory-mib", LEAST])
    });
    assert_file_count_is_plausible(&d.join("srv"));
}

/// The served store received xorbs of at most 16 MiB: a 150 MiB file is ten or more.
fn assert_file_count_is_plausible(srv: &Path) {
    fn count(dir: &Path, n: &mut u64) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("staging") {
                    count(&p, n);
                }
            } else if p.parent().is_some_and(|q| q.ends_with("xorbs"))
                && p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with("default."))
            {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    count(srv, &mut n);
    assert!(
        n >= 10,
        "{n} xorbs for 150 MiB: the xorb size is not bounded"
    );
}
