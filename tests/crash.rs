//! `kill -9` of a live mount: on restart, every byte a write returned for is there.

mod common;

use std::time::Duration;

use common::{sh, tree_digest, Mount};

/// The same edits, run in the mount and in a reference directory: new files small and large,
/// sparse edits of a committed file, appends, a truncate, renames of a file and a directory,
/// namespace changes alone (a deep tree made and renamed, chmod, symlink, hard link, unlink,
/// rmdir).
fn workload(round: u32) -> String {
    format!(
        r#"
head -c {small} ../rand.bin > small-{round}.txt
head -c 9000000 ../rand.bin | tail -c 8000000 > big-{round}.bin
printf 'round {round}' | dd of=ckpt.bin bs=1 seek={off1} conv=notrunc status=none
dd if=../rand.bin of=ckpt.bin bs=4096 count=3 seek={blk} skip={round} conv=notrunc status=none
echo "line {round}" >> log.txt
mkdir -p dir-{round} && echo inner > dir-{round}/f && mv dir-{round} moved-{round}
cp small-{round}.txt tmp-{round} && mv tmp-{round} renamed-{round}.txt
truncate -s {trunc} big-{round}.bin
mkdir -p deep-{round}/a/b/c/d && echo deep > deep-{round}/a/b/c/d/leaf && mv deep-{round} deeper-{round}
chmod 640 small-{round}.txt && chmod 700 moved-{round}
ln -s renamed-{round}.txt link-{round} && ln renamed-{round}.txt hard-{round}.txt
echo gone > gone-{round} && rm gone-{round} && mkdir empty-{round} && rmdir empty-{round}
"#,
        small = 1000 + round * 777,
        off1 = 1_000_000 + u64::from(round) * 2_345_678,
        blk = 100 + round * 997,
        trunc = 5_000_000 + round * 12_345,
    )
}

fn setup(tmp: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let store = tmp.join("store");
    let mp = tmp.join("mnt");
    let reference = tmp.join("ref");
    std::fs::create_dir_all(&reference).unwrap();
    sh(tmp, "head -c 20000000 /dev/urandom > rand.bin");
    let m = Mount::start(&store, &mp, &[]);
    for dir in [&reference, &m.mountpoint] {
        sh(
            dir,
            "head -c 20000000 ../rand.bin > ckpt.bin; echo start > log.txt",
        );
    }
    m.stop();
    (store, mp, reference)
}

#[test]
fn kill_before_any_flush_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, mp, reference) = setup(tmp.path());
    let m = Mount::start(&store, &mp, &["--flush-debounce-ms", "3600000"]);
    sh(&m.mountpoint, &workload(1));
    sh(&reference, &workload(1));
    m.kill9();
    let m = Mount::start(&store, &mp, &[]);
    assert!(m.log_text().contains("recovered"), "{}", m.log_text());
    assert_eq!(tree_digest(&m.mountpoint), tree_digest(&reference));
    m.stop();
}

#[test]
fn kill_at_random_points_of_flushing_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, mp, reference) = setup(tmp.path());
    // A fixed pseudo-random sequence of kill delays: some land before the flush starts, some
    // during the upload, some between upload and commit, some after.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 2..8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(x % 400);
        let m = Mount::start(&store, &mp, &["--flush-debounce-ms", "0"]);
        sh(&m.mountpoint, &workload(round));
        sh(&reference, &workload(round));
        std::thread::sleep(delay);
        m.kill9();
        let m = Mount::start(&store, &mp, &[]);
        assert_eq!(
            tree_digest(&m.mountpoint),
            tree_digest(&reference),
            "round {round}, killed {delay:?} after the writes:\n{}",
            m.log_text()
        );
        m.stop();
    }
}
