//! A small edit of a large file on a full `xetmount serve`, until `fsync` returns: the round
//! trips it costs (counted by the server per route), and the file read back byte for byte
//! after a remount.

mod common;

use common::{hf_cli as hf, mount_served, serve_metrics, sh, Serve};

fn count(m: &std::collections::BTreeMap<String, u64>, route: &str) -> u64 {
    m.get(route).copied().unwrap_or(0)
}

#[test]
fn an_edit_asks_for_the_base_chunk_lists_once_and_reads_back_exact() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &[]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);

    let m = mount_served(&url, d, "m", &[]);
    sh(
        d,
        "head -c 6291456 /dev/urandom > want.bin && cp want.bin m/big.bin",
    );
    m.stop();

    // A fresh mount: nothing of the file is cached.
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
    // Composed (one shard), not uploaded whole: only the bytes around the edit were read.
    assert_eq!(delta("POST /v2/shards"), 1, "{after:?}");
    assert!(
        delta("fetch_bytes") < 3 << 20,
        "read {} bytes of the base",
        delta("fetch_bytes")
    );
    // The base's chunk lists, once: the composed file is checked against them and the xorbs
    // the composition wrote, not read back from the server (the old code asked twice).
    assert_eq!(delta("GET /v1/xetmount/chunks/{file}"), 1, "{after:?}");
    // Its xorb straight to the xorb route, without a grant request first.
    assert_eq!(delta("POST /v1/xorbs/{prefix}/{xorb}"), 1, "{after:?}");
    assert_eq!(
        delta("POST /v1/xorb-grants/{prefix}/{xorb}"),
        0,
        "{after:?}"
    );
    m.stop();

    let m = mount_served(&url, d, "m", &[]);
    sh(d, "cmp m/big.bin want.bin");
    m.stop();
    server.stop();
}
