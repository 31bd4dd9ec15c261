//! Commits on a plain bucket (`xetmount serve --hub-only`: what the Hugging Face Hub offers),
//! read back through the official client: one commit of mixed namespace changes leaves exactly
//! the expected files, bodies and mtimes, and costs one lookup pass, not a request per op; a
//! create and a delete of one path in successive commits ends deleted; a mount polling the
//! bucket does not take its own commits for other writers' changes, and still sees theirs.

mod common;

use common::{hf_cli as hf, mount_served, serve_metrics, sh, Serve};

/// `path size sha256 mtime-seconds` of every file of the bucket, as the official client lists
/// it (recursive tree listing), sorted.
fn bucket(url: &str, d: &std::path::Path) -> String {
    sh(d, "rm -rf dl");
    hf(
        url,
        d,
        &["buckets", "sync", "hf://buckets/local/data", "dl"],
    );
    let bodies = sh(
        d,
        "cd dl && find . -type f -printf '%P %s ' -exec sh -c 'sha256sum < \"$1\" | cut -c1-16' _ {} \\; | sort",
    );
    let times = sh(
        d,
        &format!(
            "HF_ENDPOINT={url} HF_TOKEN=x HF_HOME=hfhome {}/python -c \"
from huggingface_hub import HfApi
for f in sorted(HfApi().list_bucket_tree('local/data', recursive=True), key=lambda f: f.path):
    print(f.path, int(f.mtime.timestamp()))
\"",
            common::hf_venv().display()
        ),
    );
    format!("{bodies}--\n{times}")
}

/// The same for a local directory.
fn local(d: &std::path::Path, dir: &str) -> String {
    let bodies = sh(
        d,
        &format!(
            "cd {dir} && find . -type f -printf '%P %s ' -exec sh -c 'sha256sum < \"$1\" | cut -c1-16' _ {{}} \\; | sort"
        ),
    );
    let times = sh(
        d,
        &format!("cd {dir} && find . -type f -printf '%P %T@\\n' | sed 's/\\.[0-9]*$//' | sort"),
    );
    format!("{bodies}--\n{times}")
}

fn count(m: &std::collections::BTreeMap<String, u64>, route: &str) -> u64 {
    m.get(route).copied().unwrap_or(0)
}

#[test]
fn one_plain_commit_of_mixed_changes_leaves_exactly_the_expected_bucket() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &["--hub-only"]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);

    // Committed files to change, mirrored in `want`.
    let m = mount_served(&url, d, "m", &[]);
    sh(
        d,
        "mkdir -p want/dir/sub want/keep \
         && printf 'a\\n' > want/a.txt && printf 'old' > want/old.txt \
         && head -c 70000 /dev/urandom > want/dir/y.bin && printf 'z' > want/dir/sub/z \
         && printf 'x' > want/keep/x && printf 'first' > want/again.txt \
         && TZ=UTC touch -d '2000-01-01 00:00:00' want/a.txt want/keep/x want/dir/y.bin want/dir/sub/z \
         && cp -a want/. m/",
    );
    // A create, committed by its fsync, then a delete in a later commit: it ends deleted.
    sh(
        d,
        "printf 'brief' > m/tmp.txt && sync m/tmp.txt && rm m/tmp.txt",
    );
    m.stop();
    assert_eq!(bucket(&url, d), local(d, "want"));

    // Every change in one commit (nothing falls due before the unmount drains them).
    let slow = [
        "--flush-debounce-ms",
        "600000",
        "--flush-max-batch-window-ms",
        "600000",
    ];
    let m = mount_served(&url, d, "m", &slow);
    // Listed first: a directory's first listing commits the changes made before it.
    sh(d, "ls -R m >/dev/null");
    let before = serve_metrics(&url);
    let changes = "printf 'new\\n' > DIR/new.txt \
         && TZ=UTC touch -d '2001-02-03 04:05:06' DIR/a.txt \
         && rm DIR/old.txt \
         && mv DIR/dir DIR/moved \
         && mv DIR/keep/x DIR/keep/x2 \
         && rm DIR/again.txt && printf 'second' > DIR/again.txt \
         && TZ=UTC touch -d '2002-02-03 04:05:06' DIR/again.txt DIR/new.txt";
    sh(d, &changes.replace("DIR", "m"));
    sh(d, &changes.replace("DIR", "want"));
    m.stop();
    let after = serve_metrics(&url);
    let delta = |r: &str| count(&after, r) - count(&before, r);
    assert_eq!(delta("POST /api/buckets/{ns}/{name}/batch"), 1, "{after:?}");
    // The stored state of every path the commit removes or retimes, in one request.
    assert_eq!(
        delta("POST /api/buckets/{ns}/{name}/paths-info"),
        1,
        "{after:?}"
    );
    assert_eq!(bucket(&url, d), local(d, "want"));

    // A remount reads the same back.
    let m = mount_served(&url, d, "m", &[]);
    assert_eq!(local(d, "m"), local(d, "want"));
    m.stop();
    server.stop();
}

/// The value of `key` in `xetmount stats` of mount point `m`.
fn stat(d: &std::path::Path, m: &str, key: &str) -> u64 {
    let out = sh(d, &format!("{} stats {m}", common::bin()));
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} "))?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

#[test]
fn a_plain_mount_does_not_take_its_own_commits_for_other_writers() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &["--hub-only"]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);
    // Paranoid: clean staging copies go after each commit, so no local copy shields the
    // directories from the refresh.
    let m = mount_served(&url, d, "m", &["--poll-interval-secs", "1", "--paranoid"]);
    let start = stat(d, "m", "remote_revision");
    // Directory times: the bucket keeps none, its listing shows its newest file's upload.
    sh(
        d,
        "mkdir -p m/t/u && printf 'x' > m/t/u/f \
         && TZ=UTC touch -d '2003-01-01 00:00:00' m/t/u m/t && sync m/t/u/f",
    );
    let dir_time = "test \"$(stat -c %Y m/t)\" = \"$(TZ=UTC date -d '2003-01-01 00:00:00' +%s)\"";
    sh(d, dir_time);
    // The poller saw the bucket move (this mount's commit) and brought its listings in line.
    common::wait_for(
        "the poller to follow the commit",
        std::time::Duration::from_secs(30),
        || stat(d, "m", "remote_revision") != start,
    );
    assert_eq!(stat(d, "m", "remote_changes"), 0, "{}", m.log_text());
    sh(d, dir_time);

    // Another writer's file shows up, counted as a change.
    sh(d, "printf 'other' > other.txt");
    hf(
        &url,
        d,
        &[
            "buckets",
            "cp",
            "other.txt",
            "hf://buckets/local/data/t/other.txt",
        ],
    );
    common::wait_for(
        "another writer's file in the mount",
        std::time::Duration::from_secs(30),
        || d.join("m/t/other.txt").exists(),
    );
    // The counter follows the table's update (the file can show a moment before it counts).
    common::wait_for(
        "another writer's file counted as a change",
        std::time::Duration::from_secs(30),
        || stat(d, "m", "remote_changes") >= 1,
    );
    sh(d, "test \"$(cat m/t/other.txt)\" = other");
    m.stop();
    server.stop();
}
