//! `xetmount mount hf://buckets/...` against `xetmount serve` on 127.0.0.1, with the official
//! `hf` CLI (huggingface_hub 2.4.0 + hf_xet 1.8.0) on the other side: what `hf` uploads reads
//! byte-exact through the mount, and what the mount writes (new files, a sparse 4 KiB edit of
//! a 256 MiB file) downloads byte-exact with `hf`; a second mount with its own staging sees
//! the first one's commits, POSIX metadata included.

mod common;

use common::{hf_cli as hf, mount_served, sh, tree_digest, Serve};

#[test]
fn a_served_bucket_mounts_and_what_either_side_writes_the_other_reads_byte_exact() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &[]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);

    // hf → mount.
    sh(
        d,
        "mkdir -p up/sub && printf 'from hf\\n' > up/a.txt && head -c 3000000 /dev/urandom > up/sub/r.bin",
    );
    hf(
        &url,
        d,
        &["buckets", "sync", "up", "hf://buckets/local/data/up"],
    );
    let a = mount_served(&url, d, "a", &[]);
    sh(
        d,
        "cmp up/a.txt a/up/a.txt && cmp up/sub/r.bin a/up/sub/r.bin",
    );

    // mount → hf: new files, a directory tree, metadata only xetmount's catalog keeps.
    sh(
        d,
        "mkdir -p a/w/deep && head -c 5000000 /dev/urandom > w5.bin && cp w5.bin a/w/deep/w5.bin \
         && printf 'secret\\n' > a/w/private.txt && chmod 600 a/w/private.txt \
         && ln -s deep/w5.bin a/w/link && mkdir a/w/empty \
         && head -c 1000000 /dev/urandom > blk && cat blk blk blk > rep.bin && cp rep.bin a/w/rep.bin \
         && head -c $((256 << 20)) /dev/urandom > big.bin && cp big.bin a/big.bin",
    );
    a.stop();
    let a = mount_served(&url, d, "a", &[]);
    // A sparse 4 KiB edit of the 256 MiB file, committed by fsync.
    sh(
        d,
        "head -c 4096 /dev/urandom > patch.bin \
         && dd if=patch.bin of=a/big.bin bs=4096 seek=25600 conv=notrunc,fsync status=none \
         && dd if=patch.bin of=big.bin bs=4096 seek=25600 conv=notrunc status=none",
    );
    let stats = sh(d, &format!("{} stats a", common::bin()));
    assert!(stats.contains("files_composed 1"), "{stats}");
    // Composed chunk by chunk over HTTP: the chunks around the edit, not the 256 MiB body.
    let stat = |k: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {stats}"))
    };
    assert!(stat("compose_base_bytes_read") <= 1 << 20, "{stats}");
    assert!(stat("bytes_uploaded_new") <= 2 << 20, "{stats}");
    let digest_a = tree_digest(&a.mountpoint.join("w"));
    a.stop();
    hf(
        &url,
        d,
        &[
            "buckets",
            "cp",
            "hf://buckets/local/data/big.bin",
            "dl-big.bin",
        ],
    );
    hf(
        &url,
        d,
        &["buckets", "sync", "hf://buckets/local/data/w", "dl-w"],
    );
    sh(
        d,
        "cmp big.bin dl-big.bin && cmp w5.bin dl-w/deep/w5.bin && printf 'secret\\n' | cmp - dl-w/private.txt \
         && cmp rep.bin dl-w/rep.bin",
    );

    // A second mount (its own staging and caches) sees all of it, metadata included.
    let b = mount_served(&url, d, "b", &[]);
    assert_eq!(tree_digest(&b.mountpoint.join("w")), digest_a);
    sh(d, "cmp big.bin b/big.bin && test \"$(stat -c %a b/w/private.txt)\" = 600 && test -d b/w/empty");
    b.stop();
    server.stop();
}

/// What a mount downloaded once stays in its chunk cache (`--cache-size`): a remount reads it
/// again without fetching a byte of xorb data from the server; without the cache it would.
#[test]
fn a_remount_reads_from_the_chunk_cache_instead_of_downloading_again() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &[]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);
    sh(d, "head -c 20000000 /dev/urandom > r.bin");
    hf(
        &url,
        d,
        &["buckets", "cp", "r.bin", "hf://buckets/local/data/r.bin"],
    );
    let fetched = || common::serve_metrics(&url)["fetch_bytes"];

    let before = fetched();
    let m = mount_served(&url, d, "m", &[]);
    sh(d, "cmp r.bin m/r.bin");
    m.stop();
    let first = fetched() - before;
    assert!(first >= 20_000_000, "the first read fetched {first} bytes");

    let m = mount_served(&url, d, "m", &[]);
    sh(d, "cmp r.bin m/r.bin");
    m.stop();
    // The remount reads the xorb's footer again (where its chunks start: a few KiB, so that
    // cold reads are one fetch each), but no chunk data.
    let again = fetched() - before - first;
    assert!(
        again < 64 << 10,
        "the remount downloaded {again} bytes again"
    );

    // The same remount without a chunk cache downloads it all again.
    let m = mount_served(&url, d, "m", &["--cache-size", "0"]);
    sh(d, "cmp r.bin m/r.bin");
    m.stop();
    assert!(fetched() - before >= 2 * first - 1_000_000);
    server.stop();
}
