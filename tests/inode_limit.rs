//! A mount keeps about `--inode-soft-limit` entries in memory: listings the kernel has
//! forgotten are dropped and read again when needed, and everything reads back the same.

mod common;

use std::time::Duration;

use common::{sh, tree_digest, wait_for, Mount};

fn stat(m: &Mount, key: &str) -> u64 {
    let out = sh(
        &m.mountpoint,
        &format!("{} stats {}", common::bin(), m.mountpoint.display()),
    );
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("{key} missing from {out}"))
        .parse()
        .unwrap()
}

/// Entries the kernel forgot leave the table; what was dropped lists and reads again, a
/// write into a dropped directory commits, and a remount reads the same tree.
#[test]
fn listings_the_kernel_forgot_are_dropped_and_come_back() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test makes the kernel forget entries through /proc/sys/vm/drop_caches (root)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (store, mp) = (tmp.path().join("store"), tmp.path().join("mnt"));
    let m = Mount::start(&store, &mp, &[]);
    sh(
        &m.mountpoint,
        "for d in $(seq 0 9); do mkdir d$d; for f in $(seq 0 59); do \
         printf 'file %s/%s %0200d\\n' $d $f $f > d$d/f$f; done; done",
    );
    let want = tree_digest(&m.mountpoint);
    m.stop();

    let limit = "200";
    let m = Mount::start(&store, &mp, &["--inode-soft-limit", limit]);
    assert_eq!(tree_digest(&m.mountpoint), want);
    assert!(stat(&m, "inodes") > 200, "every entry was listed");
    // Forgotten by the kernel, the entries may go: the table shrinks below the limit.
    wait_for("listings to be dropped", Duration::from_secs(30), || {
        std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        stat(&m, "listings_dropped") > 0 && stat(&m, "inodes") <= 200
    });
    // Listed again on demand: the same tree, and a write into a dropped directory.
    assert_eq!(tree_digest(&m.mountpoint), want);
    sh(&m.mountpoint, "echo appended >> d3/f7 && mv d4/f1 d5/moved");
    let after = tree_digest(&m.mountpoint);
    assert_ne!(after, want);
    m.stop();
    let m = Mount::start(&store, &mp, &[]);
    assert_eq!(tree_digest(&m.mountpoint), after);
    let f7 = std::fs::read_to_string(m.path("d3/f7")).unwrap();
    assert!(
        f7.starts_with("file 3/7 ") && f7.ends_with("\nappended\n"),
        "{f7}"
    );
    assert!(m.path("d5/moved").exists() && !m.path("d4/f1").exists());
    m.stop();
}
