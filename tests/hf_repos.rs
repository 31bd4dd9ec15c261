//! Model and dataset repos on `xetmount serve`, judged by the official client:
//! `huggingface_hub` 2.4.0 with `hf_xet` 1.8.0, from PyPI (tests/hf/repos.py). Commits,
//! branches, tags, parent-commit checks, downloads at every kind of revision, HfFileSystem
//! ranged reads, access rights and typed errors, before and after a server restart.

mod common;

use std::path::Path;
use std::process::Command;

use common::Serve;

#[test]
fn the_official_client_commits_branches_tags_and_downloads_repos_byte_exact() {
    let venv = common::hf_venv();
    let d = tempfile::tempdir().unwrap();
    let server = Serve::with_tokens(
        d.path(),
        "alice-token alice write\nreader-token bob read alice/*\n",
    );
    let scratch = d.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let run = |server: &Serve, phase: &str| {
        let mut cmd = Command::new(venv.join("python"));
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf/repos.py"))
            .arg(&scratch)
            .arg(phase)
            .env("READ_TOKEN", "reader-token");
        // A fresh HF_HOME per phase: nothing comes from the client's own caches.
        let home = d.path().join(format!("hfhome-{phase}"));
        common::hf_env(&mut cmd, &server.url, &home, Some("alice-token"));
        let out = cmd.output().unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{phase}: {text}\nserver log:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        eprintln!("{text}");
    };
    run(&server, "first");
    // A restarted server (same directory) keeps every commit, branch, tag and visibility.
    server.stop();
    let server = Serve::start(
        &d.path().join("srv"),
        &d.path().join("serve2.log"),
        &["--token-file", d.path().join("tokens").to_str().unwrap()],
    );
    run(&server, "after-restart");
    server.stop();
}
