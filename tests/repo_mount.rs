//! Model and dataset repos mounted read-only (`hf://NS/NAME@REV`, `hf://datasets/…`) from
//! `xetmount serve`, with the repos made by the official client (huggingface_hub 2.4.0 +
//! hf_xet, tests/hf/repo_push.py): every file reads back byte-exact at a tag and at a commit,
//! writes fail with EROFS, a mount of `main` follows a new commit and then shows that
//! commit's files only, and a private repo needs a token.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{bin, random_bytes, sh, wait_for, Mount, Serve};

const TOKENS: &str = "alice-token alice write\nreader-token bob read alice/*\n";

/// `sha256sum` of every file below `dir`, sorted by path, leaving out `.gitattributes` (the
/// server's first commit adds it, as the Hub does).
fn files(dir: &Path) -> String {
    sh(
        dir,
        "find . -type f ! -path ./.gitattributes -exec sha256sum {} + | sort -k2",
    )
}

/// A source tree: text files in folders, an empty file, a small binary and two large ones.
fn source(dir: &Path) {
    let w = |p: &str, b: &[u8]| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    };
    w("config.json", b"{\"hidden\": 64}\n");
    w("README.md", b"---\nlicense: mit\n---\n# a model\n");
    w("notes/a.txt", b"first note\n");
    w("notes/deep/b.txt", b"second note\n");
    w("empty", b"");
    w("small.bin", &[0u8, 1, 2, 3, 0, 0, 7]);
    w("model.safetensors", &random_bytes(12 << 20, 1));
    w("shards/part-0.bin", &random_bytes(11 << 20, 2));
}

fn mount_repo(
    url: &str,
    d: &Path,
    uri: &str,
    name: &str,
    token: Option<&str>,
    extra: &[&str],
) -> Mount {
    let cache = d.join(format!("cache-{name}"));
    let mut args = vec!["--endpoint", url, "--cache-dir", cache.to_str().unwrap()];
    let tf = d.join(format!("token-{name}"));
    if let Some(t) = token {
        std::fs::write(&tf, t).unwrap();
        args.extend_from_slice(&["--token-file", tf.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    Mount::start(Path::new(uri), &d.join(name), &args)
}

fn assert_read_only(m: &Mount) {
    for attempt in [
        std::fs::write(m.path("new.txt"), b"x").err(),
        std::fs::write(m.path("config.json"), b"x").err(),
        std::fs::remove_file(m.path("config.json")).err(),
        std::fs::create_dir(m.path("dir")).err(),
    ] {
        let e = attempt.expect("a write to a repo mount succeeded");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
}

#[test]
fn repos_mount_read_only_at_a_tag_a_commit_and_a_followed_branch() {
    let _venv = common::hf_venv();
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let serve = Serve::with_tokens(d, TOKENS);
    let url = serve.url.clone();
    let src: PathBuf = d.join("src");
    source(&src);
    common::repo_push(&url, d, &["create", "alice/m", "model"]);
    let first = common::repo_push(
        &url,
        d,
        &["upload", "alice/m", "model", src.to_str().unwrap()],
    );
    assert_eq!(
        common::repo_push(&url, d, &["tag", "alice/m", "model", "v1"]),
        first
    );
    let want_v1 = files(&src);

    // At a tag: every file byte-exact; writes refused.
    let m = mount_repo(&url, d, "hf://alice/m@v1", "tag", Some("reader-token"), &[]);
    assert_eq!(files(&m.mountpoint), want_v1);
    assert!(m.path(".gitattributes").exists());
    assert_read_only(&m);
    // A sub-folder of the repo.
    let sub = mount_repo(
        &url,
        d,
        "hf://alice/m@v1/notes",
        "sub",
        Some("reader-token"),
        &[],
    );
    assert_eq!(files(&sub.mountpoint), files(&src.join("notes")));
    sub.stop();

    // A followed branch: a new commit shows up, and then only its files.
    let main = mount_repo(
        &url,
        d,
        "hf://alice/m",
        "main",
        Some("reader-token"),
        &["--poll-interval-secs", "1"],
    );
    assert_eq!(files(&main.mountpoint), want_v1);
    let new_weights = d.join("new.safetensors");
    std::fs::write(&new_weights, random_bytes(12 << 20, 3)).unwrap();
    let second = common::repo_push(
        &url,
        d,
        &[
            "replace",
            "alice/m",
            "model",
            "model.safetensors",
            new_weights.to_str().unwrap(),
            "shards/part-0.bin",
        ],
    );
    assert_ne!(second, first);
    std::fs::copy(&new_weights, src.join("model.safetensors")).unwrap();
    std::fs::remove_dir_all(src.join("shards")).unwrap();
    let want_main = files(&src);
    let took = wait_for(
        "main to follow the new commit",
        Duration::from_secs(30),
        || !main.path("shards").exists(),
    );
    eprintln!("the branch mount followed the commit in {took:?}");
    assert_eq!(files(&main.mountpoint), want_main);
    // The tag did not move.
    assert_eq!(files(&m.mountpoint), want_v1);
    main.stop();
    m.stop();

    // Pinned at the first commit, and a dataset at a commit.
    let pinned = mount_repo(
        &url,
        d,
        &format!("hf://alice/m@{first}"),
        "sha",
        Some("reader-token"),
        &[],
    );
    assert_eq!(files(&pinned.mountpoint), want_v1);
    pinned.stop();
    let dsrc = d.join("dsrc");
    std::fs::create_dir_all(dsrc.join("data")).unwrap();
    std::fs::write(dsrc.join("data/train.csv"), b"a,b\n1,2\n").unwrap();
    std::fs::write(dsrc.join("data/blob.bin"), random_bytes(3 << 20, 4)).unwrap();
    common::repo_push(&url, d, &["create", "alice/ds", "dataset"]);
    let dc = common::repo_push(
        &url,
        d,
        &["upload", "alice/ds", "dataset", dsrc.to_str().unwrap()],
    );
    let ds = mount_repo(
        &url,
        d,
        &format!("hf://datasets/alice/ds@{dc}"),
        "ds",
        Some("reader-token"),
        &[],
    );
    assert_eq!(files(&ds.mountpoint), files(&dsrc));
    assert_read_only(&ds);
    ds.stop();
    // A revision with slashes, written as HfFileSystem accepts it.
    let convert = "refs/convert/parquet";
    assert_eq!(
        common::repo_push(&url, d, &["branch", "alice/ds", "dataset", convert]),
        dc
    );
    let conv = mount_repo(
        &url,
        d,
        &format!("hf://datasets/alice/ds@{convert}/data"),
        "conv",
        Some("reader-token"),
        &[],
    );
    assert_eq!(files(&conv.mountpoint), files(&dsrc.join("data")));
    conv.stop();

    // A private repo: refused in one sentence without a token, mounted with a read token.
    common::repo_push(&url, d, &["create", "alice/secret", "model", "private"]);
    let mp = d.join("anon");
    std::fs::create_dir_all(&mp).unwrap();
    let out = Command::new(bin())
        .args([
            "mount",
            "hf://alice/secret",
            mp.to_str().unwrap(),
            "--endpoint",
            &url,
        ])
        .args(["--cache-dir", d.join("cache-anon").to_str().unwrap()])
        .env_remove("HF_TOKEN")
        .env("HOME", d)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an anonymous mount of a private repo worked"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model alice/secret") && err.contains("needs a token"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let secret = mount_repo(
        &url,
        d,
        "hf://alice/secret",
        "secret",
        Some("reader-token"),
        &[],
    );
    assert!(secret.path(".gitattributes").exists());
    secret.stop();

    // A revision that does not exist is named.
    let out = Command::new(bin())
        .args([
            "mount",
            "hf://alice/m@nope",
            mp.to_str().unwrap(),
            "--endpoint",
            &url,
        ])
        .args(["--cache-dir", d.join("cache-nope").to_str().unwrap()])
        .env("HF_TOKEN", "reader-token")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no revision nope"), "{err}");
    serve.stop();
}
