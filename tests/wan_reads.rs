//! Reads across a slow network (issue 21, items 2 and 3): `xetmount serve`, full and
//! `--hub-only`, behind `xetmount-delay-proxy` at 10 ms each way (fetch URLs through it too).
//! Random and sequential reads of files that span several xorbs and several terms (a file
//! made of pieces of another deduplicates into terms over both files' xorbs) return exactly
//! the right bytes: cold, at EOF, after a remount (chunk cache warm), and after the file is
//! replaced (a new version, so a new plan). Cold random reads go through the cached plan: the
//! CAS sees a handful of reconstruction queries, not one per read.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::os::unix::fs::FileExt;

use common::{mount_served, random_bytes, serve_metrics, Mount};
use proxy::serve_behind_proxy;

const MIB: usize = 1 << 20;

/// Reconstruction queries (V1 and V2) the server answered so far.
fn reconstructions(url: &str) -> u64 {
    serve_metrics(url)
        .iter()
        .filter(|(k, _)| k.contains("/reconstructions/"))
        .map(|(_, v)| v)
        .sum()
}

/// `n` reads of `len` bytes at pseudo-random offsets of `m`'s file `name` (plus reads at
/// `edges`), each compared with `want`.
fn random_reads(m: &Mount, name: &str, want: &[u8], n: u64, len: usize, edges: &[u64]) {
    let f = std::fs::File::open(m.path(name)).unwrap();
    let size = want.len() as u64;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let offsets: Vec<u64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % size
        })
        .chain(edges.iter().copied())
        .collect();
    for off in offsets {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        // A read may return short before EOF only if the filesystem splits it; gather all.
        loop {
            let k = f.read_at(&mut buf[got..], off + got as u64).unwrap();
            if k == 0 {
                break;
            }
            got += k;
            if got == len {
                break;
            }
        }
        let end = (off as usize + len).min(want.len()).max(off as usize);
        assert!(
            buf[..got] == want[off.min(size) as usize..end],
            "{name}: {len} bytes at {off} differ ({got} read)"
        );
    }
}

fn reads(extra: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let (proxy, server) = serve_behind_proxy(d, 10, extra);

    // `a` spans two xorbs (they hold at most 64 MiB); `b` is pieces of `a` around new bytes,
    // so its terms point into both of `a`'s xorbs and its own.
    let a = random_bytes(70 * MIB, 1);
    let mut b = a[..3 * MIB].to_vec();
    b.extend_from_slice(&random_bytes(MIB + 12_345, 2));
    b.extend_from_slice(&a[10 * MIB..14 * MIB]);
    b.extend_from_slice(&a[60 * MIB..70 * MIB]);
    let small = random_bytes(100_000, 3);
    let m = mount_served(&proxy.url, d, "w", &[]);
    std::fs::write(m.path("a.bin"), &a).unwrap();
    std::fs::write(m.path("b.bin"), &b).unwrap();
    std::fs::write(m.path("small.bin"), &small).unwrap();
    m.stop();

    // Cold random reads, then reads across the term and xorb boundaries and at EOF.
    let m = mount_served(&proxy.url, d, "r", &[]);
    let before = reconstructions(&proxy.url);
    let n = 80;
    random_reads(&m, "a.bin", &a, n, 4096, &[]);
    let queried = reconstructions(&proxy.url) - before;
    assert!(
        queried <= n / 2,
        "{queried} reconstruction queries for {n} cold random reads: the plan is not cached"
    );
    let a_edges = [
        0,
        64 * MIB as u64 - 3000,
        a.len() as u64 - 100,
        a.len() as u64,
    ];
    random_reads(&m, "a.bin", &a, 20, 200_000, &a_edges);
    let b_len = b.len() as u64;
    let b_edges = [
        3 * MIB as u64 - 5000,
        (4 * MIB + 12_345) as u64 - 1000,
        (8 * MIB + 12_345) as u64 - 7000,
        b_len - 1,
        b_len,
    ];
    random_reads(&m, "b.bin", &b, 40, 10_000, &b_edges);
    random_reads(&m, "small.bin", &small, 10, 5000, &[99_999]);
    // Sequentially, whole.
    assert!(
        std::fs::read(m.path("b.bin")).unwrap() == b,
        "b.bin read whole"
    );
    m.stop();

    // A remount with the same cache directory: chunks come from the chunk cache.
    let m = mount_served(&proxy.url, d, "r", &[]);
    random_reads(&m, "b.bin", &b, 40, 70_000, &b_edges);
    assert!(
        std::fs::read(m.path("a.bin")).unwrap() == a,
        "a.bin read whole"
    );
    // Replaced: a new version of the file, read through its own plan.
    let a2 = random_bytes(5 * MIB + 7, 9);
    std::fs::write(m.path("a.bin"), &a2).unwrap();
    m.stop();
    let m = mount_served(&proxy.url, d, "r", &[]);
    random_reads(&m, "a.bin", &a2, 30, 4096, &[a2.len() as u64 - 1]);
    assert!(
        std::fs::read(m.path("a.bin")).unwrap() == a2,
        "new a.bin read whole"
    );
    m.stop();
    drop(server);
}

#[test]
fn full_bucket_reads_exact_through_a_10ms_proxy() {
    reads(&[]);
}

#[test]
fn plain_bucket_reads_exact_through_a_10ms_proxy() {
    reads(&["--hub-only"]);
}
