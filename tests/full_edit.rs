//! A small edit of a large file on a full `xetmount serve`, until `fsync` returns: the round
//! trips it costs (counted by the server per route: the chunk lists with the base bytes
//! around the edit, then the commit carrying the new xorb and the shard), and the file read
//! back byte for byte after a remount.

mod common;

use common::{hf_cli as hf, mount_served, serve_metrics, sh, Serve};

fn count(m: &std::collections::BTreeMap<String, u64>, route: &str) -> u64 {
    m.get(route).copied().unwrap_or(0)
}

/// `xetmount serve` in `d` with bucket local/data holding `big.bin`, `len` random bytes (also
/// in `d/want.bin`), written through a mount that is stopped again.
fn served_file(d: &std::path::Path, len: u64) -> (Serve, String) {
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &[]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);
    let m = mount_served(&url, d, "m", &[]);
    sh(
        d,
        &format!("head -c {len} /dev/urandom > want.bin && cp want.bin m/big.bin"),
    );
    m.stop();
    (server, url)
}

#[test]
fn an_edit_costs_two_requests_and_reads_back_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (server, url) = served_file(d, 6 << 20);

    // Twice, each on a fresh mount (nothing of the file cached): the second edit lands on
    // the first one's chunks, so the bytes around it span three terms of two xorbs.
    for round in 0..2 {
        let m = mount_served(&url, d, "m", &[]);
        let before = serve_metrics(&url);
        // 4 KiB into the middle, in place (no truncation), then fsync.
        sh(
            d,
            "head -c 4096 /dev/urandom > patch \
             && dd if=patch of=m/big.bin bs=4096 seek=768 conv=notrunc,fsync status=none \
             && dd if=patch of=want.bin bs=4096 seek=768 conv=notrunc status=none",
        );
        let after = serve_metrics(&url);
        let delta = |r: &str| count(&after, r) - count(&before, r);
        // Composed, not uploaded whole: only the bytes around the edit were read, and they
        // came with the base's chunk lists, in one request (no reconstruction, no fetch).
        assert_eq!(
            delta("GET /v1/xetmount/chunks/{file}"),
            1,
            "{round}: {after:?}"
        );
        assert_eq!(
            delta("GET /v2/reconstructions/{file}"),
            0,
            "{round}: {after:?}"
        );
        assert_eq!(delta("GET /fetch/{xorb}"), 0, "{round}: {after:?}");
        assert!(
            delta("fetch_bytes") < 3 << 20,
            "{round}: read {} bytes of the base",
            delta("fetch_bytes")
        );
        // Its xorb and shard go with the commit, in one request; the composed file is
        // checked against the chunk lists and the xorbs written, not read back.
        assert_eq!(
            delta("POST /api/buckets/{ns}/{name}/xetmount/commit"),
            1,
            "{round}: {after:?}"
        );
        for r in [
            "POST /v1/xorbs/{prefix}/{xorb}",
            "POST /v2/shards",
            "POST /v1/xorb-grants/{prefix}/{xorb}",
        ] {
            assert_eq!(delta(r), 0, "{round}: {r}: {after:?}");
        }
        m.stop();
    }

    let m = mount_served(&url, d, "m", &[]);
    sh(d, "cmp m/big.bin want.bin");
    m.stop();
    server.stop();
}

#[test]
fn a_large_edit_sends_its_full_xorbs_first_and_the_last_with_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (server, url) = served_file(d, 100 << 20);

    let m = mount_served(&url, d, "m", &[]);
    let before = serve_metrics(&url);
    // 70 MiB of new bytes from 10 MiB on: more than one xorb holds (64 MiB).
    sh(
        d,
        "head -c 73400320 /dev/urandom > patch \
         && dd if=patch of=m/big.bin bs=1M seek=10 conv=notrunc,fsync status=none \
         && dd if=patch of=want.bin bs=1M seek=10 conv=notrunc status=none",
    );
    let after = serve_metrics(&url);
    let delta = |r: &str| count(&after, r) - count(&before, r);
    assert_eq!(delta("POST /v1/xorbs/{prefix}/{xorb}"), 1, "{after:?}");
    assert_eq!(delta("POST /v2/shards"), 0, "{after:?}");
    assert_eq!(
        delta("POST /api/buckets/{ns}/{name}/xetmount/commit"),
        1,
        "{after:?}"
    );
    m.stop();

    let m = mount_served(&url, d, "m", &[]);
    sh(d, "cmp m/big.bin want.bin");
    m.stop();
    server.stop();
}

#[test]
fn edits_past_the_carry_budget_go_to_the_cas_at_once_and_all_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (server, url) = served_file(d, 1 << 20);
    let m = mount_served(&url, d, "m", &[]);
    sh(
        d,
        "mkdir -p want m/many && for i in $(seq 1 24); do head -c 4194304 /dev/urandom > want/f$i; done \
         && cp want/* m/many/",
    );
    m.stop();

    // 1 MiB of new bytes in each of 24 files, committed together: more than the 16 MiB a
    // mount keeps for its commits, so some compositions store their xorb and shard at once.
    let m = mount_served(&url, d, "m", &["--flush-debounce-ms", "3000"]);
    let before = serve_metrics(&url);
    sh(
        d,
        "for i in $(seq 1 24); do head -c 1048576 /dev/urandom > p \
           && dd if=p of=m/many/f$i bs=1M seek=1 conv=notrunc status=none \
           && dd if=p of=want/f$i bs=1M seek=1 conv=notrunc status=none; done",
    );
    // The unmount commits them all.
    m.stop();
    let after = serve_metrics(&url);
    let delta = |r: &str| count(&after, r) - count(&before, r);
    assert!(delta("POST /v2/shards") > 0, "{after:?}");
    assert!(delta("POST /v2/shards") < 24, "{after:?}");

    let m = mount_served(&url, d, "m", &[]);
    sh(d, "for i in $(seq 1 24); do cmp m/many/f$i want/f$i; done");
    m.stop();
    server.stop();
}
