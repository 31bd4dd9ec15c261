//! A mount of a folder of a plain bucket (`xetmount serve --hub-only`) refuses, when it is
//! made, a name the bucket cannot hold (a control character, a bucket path over 4,096
//! bytes with the folder included), with EINVAL or ENAMETOOLONG and a log line, instead of a
//! commit that would fail for good; everything else is committed.

mod common;

use std::path::Path;

use common::{hf_cli, sh, Mount, Serve};

fn mount(url: &str, d: &Path, name: &str) -> Mount {
    let cache = d.join(format!("cache-{name}"));
    Mount::start(
        Path::new("hf://buckets/local/data/p"),
        &d.join(name),
        &["--endpoint", url, "--cache-dir", cache.to_str().unwrap()],
    )
}

#[test]
fn a_plain_bucket_mount_refuses_names_the_bucket_cannot_hold() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &["--hub-only"]);
    let url = server.url.clone();
    hf_cli(&url, d, &["buckets", "create", "local/data"]);
    let m = mount(&url, d, "m");
    // `p` + 15 × (`/` + 255 bytes) is 3,841 bytes: a 255-byte name below is one byte too
    // many, a 254-byte one makes exactly 4,096.
    sh(
        d,
        "echo kept > m/ok.txt \
         && ! touch m/$'a\\x01b' 2>err && grep -q 'Invalid argument' err \
         && ! mkdir m/$'a\\x01b' 2>err && grep -q 'Invalid argument' err \
         && ! mv m/ok.txt m/$'b\\x01' && test -f m/ok.txt \
         && n=$(printf 'd%.0s' $(seq 255)) && e=$PWD/err \
         && cd m && for i in $(seq 15); do mkdir $n && cd $n; done \
         && ! touch $(printf 'f%.0s' $(seq 255)) 2>$e && grep -q 'File name too long' $e \
         && echo deep > $(printf 'f%.0s' $(seq 254))",
    );
    let log = m.log_text();
    m.stop();
    let refused = |what: &str| {
        log.lines()
            .any(|l| l.contains(what) && l.contains("this bucket cannot hold such a path"))
    };
    for what in [
        "\"a\\u{1}b\" with Invalid argument",
        "\"b\\u{1}\" with Invalid argument",
        "ffff\" with File name too long",
    ] {
        assert!(refused(what), "no log line for {what}: {log}");
    }
    let m = mount(&url, d, "fresh");
    sh(
        d,
        "test \"$(cat fresh/ok.txt)\" = kept && test \"$(ls fresh | wc -l)\" = 2 \
         && cd fresh && for i in $(seq 15); do cd $(printf 'd%.0s' $(seq 255)); done \
         && test \"$(cat $(printf 'f%.0s' $(seq 254)))\" = deep",
    );
    m.stop();
    server.stop();
}
