//! `close()` reports an error only when the caller's data is at risk. A file rewritten with
//! `O_TRUNC` in a loop races the flusher's uploads of its earlier content; losing that race
//! is a retry, never an error, for the writer or for a reader that opens and closes it
//! meanwhile. The last content is exact after a remount.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::Mount;

const BODY: usize = 8 << 20;

/// Iterations per run; `XETMOUNT_CLOSE_LOOPS=1000` for the long run.
fn loops() -> u64 {
    std::env::var("XETMOUNT_CLOSE_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

fn body(i: u64) -> Vec<u8> {
    let mut b = vec![0u8; BODY];
    for (k, chunk) in b.chunks_mut(8).enumerate() {
        let v = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i;
        chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
    }
    b
}

fn rewrite_loop(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&store, &mp, extra);
    let file = m.path("ckpt.bin");
    std::fs::write(&file, b"seed").unwrap();

    // A reader that only opens and closes the file while it is being rewritten.
    let stop = Arc::new(AtomicBool::new(false));
    let reader_errors = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, errors, file) = (stop.clone(), reader_errors.clone(), file.clone());
        std::thread::spawn(move || {
            let mut opens = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match std::fs::File::open(&file) {
                    // Dropping the file is close(2); std ignores its result, so close by hand.
                    Ok(f) => {
                        use std::os::fd::IntoRawFd;
                        // SAFETY: the fd was just taken out of the File and is closed once.
                        if unsafe { libc::close(f.into_raw_fd()) } != 0 {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        opens += 1;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            opens
        })
    };

    let n = loops();
    let mut failed = Vec::new();
    for i in 0..n {
        let data = body(i);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file)
            .unwrap();
        f.write_all(&data).unwrap();
        use std::os::fd::IntoRawFd;
        // SAFETY: as above.
        if unsafe { libc::close(f.into_raw_fd()) } != 0 {
            failed.push((i, std::io::Error::last_os_error()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let opens = reader.join().unwrap();
    let reader_errors = reader_errors.load(Ordering::Relaxed);
    println!(
        "{n} rewrites of {BODY} bytes: {} failed closes; reader: {opens} open/close, {reader_errors} errors",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "closes failed: {failed:?}\n{}",
        m.log_text()
    );
    assert_eq!(reader_errors, 0, "the reader's opens or closes failed");
    let store = m.store.clone();
    m.stop();

    let m = Mount::start(&store, &mp, extra);
    let got = std::fs::read(m.path("ckpt.bin")).unwrap();
    assert!(
        got == body(n - 1),
        "the last rewrite did not survive a remount"
    );
    m.stop();
}

#[test]
fn rewriting_a_file_in_a_loop_never_fails_close_without_debounce() {
    rewrite_loop(&["--flush-debounce-ms", "0"]);
}

#[test]
fn rewriting_a_file_in_a_loop_never_fails_close_with_defaults() {
    // Mount::start would shorten the debounce; this is the default.
    rewrite_loop(&["--flush-debounce-ms", "2000"]);
}

#[test]
fn rewriting_a_file_in_a_loop_never_fails_close_when_the_batch_window_cuts_in() {
    // The batch window forces flushes in the middle of rewrites (every 300 ms, not 30 s).
    rewrite_loop(&[
        "--flush-debounce-ms",
        "2000",
        "--flush-max-batch-window-ms",
        "300",
    ]);
}
