//! A plain bucket (what the Hugging Face Hub serves: files, bodies and mtimes only), played by
//! `xetmount serve --hub-only`, mounted with `xetmount mount hf://buckets/...` and checked
//! with the official `hf` CLI: what can be stored round-trips byte-exact (new files, edits,
//! renames of files and directories, deletes, mtimes), owner and mode come from the mount's
//! options, and what a plain bucket cannot keep fails with EPERM and a log line.

mod common;

use common::{hf_cli as hf, mount_served, sh, Serve};

/// `path size` of every file below `dir`, sorted, and the sha256 of each.
fn files(dir: &std::path::Path) -> String {
    sh(
        dir,
        "find . -type f -printf '%p %s\\n' | sort && find . -type f -exec sha256sum {} + | sort",
    )
}

#[test]
fn a_plain_bucket_keeps_files_and_refuses_what_it_cannot_store() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &["--hub-only"]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);
    sh(
        d,
        "mkdir -p up/logs up/keep/deep && printf 'hello\\n' > up/a.txt && : > up/empty \
         && head -c 3000000 /dev/urandom > up/logs/r.bin && printf 'x' > up/logs.json \
         && head -c 70000 /dev/urandom > up/keep/deep/k.bin && printf 'gone' > up/keep/del.txt \
         && head -c $((48 << 20)) /dev/urandom > up/big.bin",
    );
    hf(
        &url,
        d,
        &["buckets", "sync", "up", "hf://buckets/local/data"],
    );

    let owner = [
        "--uid",
        "1234",
        "--gid",
        "2345",
        "--file-mode",
        "640",
        "--dir-mode",
        "750",
    ];
    let m = mount_served(&url, d, "m", &owner);
    // What hf stored reads byte-exact, with the mount's owner and modes; `logs` does not pick
    // up `logs.json` though a server may match prefixes lexically.
    assert_eq!(files(&m.mountpoint), files(&d.join("up")));
    sh(
        d,
        "test \"$(stat -c '%u %g %a' m/a.txt)\" = '1234 2345 640' \
         && test \"$(stat -c '%u %g %a' m/logs)\" = '1234 2345 750' \
         && test \"$(ls m/logs)\" = r.bin",
    );

    // What a plain bucket cannot store: EPERM, with one log line saying why.
    sh(
        d,
        "! ln -s a.txt m/sym 2>err && grep -q 'not permitted' err \
         && ! mkfifo m/fifo 2>err && grep -q 'not permitted' err \
         && ! ln m/a.txt m/hard 2>err && grep -q 'not permitted' err \
         && ! chmod 600 m/a.txt 2>err && grep -q 'not permitted' err \
         && ! chown 0 m/a.txt 2>err && grep -q 'not permitted' err \
         && chmod 640 m/a.txt && chown 1234:2345 m/a.txt",
    );
    let log = m.log_text();
    for why in [
        "symbolic links",
        "FIFOs",
        "hard links",
        "keeps no owner or mode",
    ] {
        assert!(log.contains(why), "no log line about {why}: {log}");
    }

    // Every mutation a plain bucket can hold, mirrored in `want`.
    sh(
        d,
        "cp -a up want \
         && head -c 5000000 /dev/urandom > w5.bin \
         && mkdir -p m/new/deeper && cp w5.bin m/new/deeper/w5.bin \
         && mkdir -p want/new/deeper && cp w5.bin want/new/deeper/w5.bin \
         && printf 'more\\n' >> m/a.txt && printf 'more\\n' >> want/a.txt \
         && mv m/logs m/logs2 && mv want/logs want/logs2 \
         && mv m/logs.json m/logs2/moved.json && mv want/logs.json want/logs2/moved.json \
         && rm m/keep/del.txt && rm want/keep/del.txt \
         && rm -r m/keep/deep && rm -r want/keep/deep \
         && TZ=UTC touch -d '2001-02-03 04:05:06' m/empty \
         && mkdir m/only-here",
    );
    sh(d, "sync -f m/a.txt");
    assert_eq!(files(&m.mountpoint), files(&d.join("want")));

    // A sparse 4 KiB edit of the 48 MiB file hf uploaded: composed over the official
    // file-chunk-hashes route (no xetmount chunk lists on a plain bucket), not uploaded whole,
    // and with the chunk hashes of the 48 MiB term it cuts from its xorb's footer: the CAS
    // serves the edit's neighbourhood and the footer, not the term.
    let fetched = || common::serve_metrics(&url)["fetch_bytes"];
    let before = fetched();
    sh(
        d,
        "head -c 4096 /dev/urandom > patch \
         && dd if=patch of=m/big.bin bs=4096 seek=3000 conv=notrunc,fsync status=none \
         && dd if=patch of=want/big.bin bs=4096 seek=3000 conv=notrunc status=none",
    );
    let read = fetched() - before;
    assert!(read < 4 << 20, "the edit fetched {read} bytes of the base");
    let stats = sh(d, &format!("{} stats m", common::bin()));
    assert!(stats.contains("files_composed "), "{stats}");
    assert!(!stats.contains("files_composed 0\n"), "{stats}");
    assert!(stats.contains("compose_fallbacks 0\n"), "{stats}");
    // An empty directory lives in the mount that made it.
    sh(d, "test -d m/only-here && test -d m/keep");
    m.stop();

    // The bucket, as hf sees it, holds exactly that.
    hf(
        &url,
        d,
        &["buckets", "sync", "hf://buckets/local/data", "dl"],
    );
    assert_eq!(files(&d.join("dl")), files(&d.join("want")));
    let listing = sh(
        d,
        &format!(
            "HF_ENDPOINT={url} HF_TOKEN=x HF_HOME=hfhome {}/python -c \"
from huggingface_hub import HfApi
for f in HfApi().list_bucket_tree('local/data', recursive=True):
    print(f.path, f.mtime.isoformat() if f.mtime else None)
\"",
            common::hf_venv().display()
        ),
    );
    assert!(
        listing.contains("empty 2001-02-03T04:05:06"),
        "mtime of a touched file not kept: {listing}"
    );

    // A remount shows the same files, and no empty directories: a plain bucket has none.
    let m = mount_served(&url, d, "m", &owner);
    assert_eq!(files(&m.mountpoint), files(&d.join("want")));
    sh(
        d,
        "test ! -e m/only-here && test ! -e m/keep && test -d m/logs2 \
         && test \"$(stat -c %Y m/empty)\" = \"$(TZ=UTC date -d '2001-02-03 04:05:06' +%s)\"",
    );
    m.stop();
    server.stop();
}
