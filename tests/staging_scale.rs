//! Staging at scale: pending files pin no descriptors, and a full staging area makes writers
//! wait for the flusher instead of failing.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{random_bytes, Mount};

/// A ten-minute debounce and batch window: nothing is committed before unmount unless
/// staging needs room.
const LAZY: [&str; 4] = [
    "--flush-debounce-ms",
    "600000",
    "--flush-max-batch-window-ms",
    "600000",
];

fn body(i: u64) -> Vec<u8> {
    random_bytes(100 + (i as usize * 37) % 900, i)
}

/// Staging files (`*.stg`) left in `dir`, and the disk they occupy (allocated blocks).
fn staging_files(dir: &Path) -> (Vec<String>, u64) {
    let mut names = Vec::new();
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".stg") || name.ends_with(".log") {
            // A file the flusher removes between the listing and this look is gone: it
            // occupies nothing.
            if let (true, Ok(m)) = (name.ends_with(".stg"), e.metadata()) {
                bytes += m.blocks() * 512;
            }
            names.push(name);
        }
    }
    (names, bytes)
}

#[test]
fn three_thousand_pending_files_under_a_1024_descriptor_limit() {
    const FILES: u64 = 3000;
    let tmp = tempfile::tempdir().unwrap();
    let (store, mp) = (tmp.path().join("store"), tmp.path().join("mnt"));
    let m = Mount::start_limited(&store, &mp, &LAZY, 1024);
    for d in 0..10 {
        std::fs::create_dir(m.path(&format!("d{d}"))).unwrap();
    }
    for i in 0..FILES {
        let p = m.path(&format!("d{}/f{i}", i % 10));
        std::fs::write(&p, body(i)).unwrap_or_else(|e| panic!("writing file {i}: {e}"));
    }
    let (status, log) = m.unmount();
    assert!(status.success(), "mount exited with {status}: {log}");
    assert!(
        !log.contains("Too many open files"),
        "descriptors ran out: {}",
        log.lines()
            .filter(|l| l.contains("Too many open files"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let staging = store.join("staging");
    assert_eq!(staging_files(&staging).0, Vec::<String>::new());

    let m = Mount::start(&store, &mp, &[]);
    for i in 0..FILES {
        let p = m.path(&format!("d{}/f{i}", i % 10));
        let got = std::fs::read(&p).unwrap_or_else(|e| panic!("reading file {i}: {e}"));
        assert!(got == body(i), "file {i} differs after remount");
    }
    m.stop();
    assert_eq!(staging_files(&staging).0, Vec::<String>::new());
}

#[test]
fn writers_wait_for_the_flusher_when_staging_is_full() {
    const BUDGET: u64 = 1 << 20;
    const SIZE: usize = 384 << 10;
    const FILES: u64 = 10;
    let tmp = tempfile::tempdir().unwrap();
    let (store, mp) = (tmp.path().join("store"), tmp.path().join("mnt"));
    let mut args = LAZY.to_vec();
    args.extend(["--max-staging-size", "1M"]);
    let m = Mount::start(&store, &mp, &args);
    let staging = store.join("staging");
    let mut most = 0;
    for i in 0..FILES {
        // Every file is dirty until committed, and nothing falls due for ten minutes: past the
        // budget, only a commit the writer waits for makes room.
        std::fs::write(m.path(&format!("f{i}")), random_bytes(SIZE, i))
            .unwrap_or_else(|e| panic!("writing file {i}: {e}"));
        most = most.max(staging_files(&staging).1);
    }
    // Room is made before another file is staged: at most the budget plus the file written.
    assert!(
        most <= BUDGET + SIZE as u64 + (64 << 10),
        "staging held {most} bytes with a budget of {BUDGET}"
    );
    m.stop();
    let m = Mount::start(&store, &mp, &[]);
    for i in 0..FILES {
        let got = std::fs::read(m.path(&format!("f{i}"))).unwrap();
        assert!(got == random_bytes(SIZE, i), "f{i} differs after remount");
    }
    m.stop();
    assert_eq!(staging_files(&staging).0, Vec::<String>::new());
}
