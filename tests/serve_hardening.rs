//! `xetmount serve` under hostile and unlucky clients (issue 20): keyed listing pages, copies
//! and reconstructions scoped to what the caller may read, 403 vs 404, and 4xx (never 5xx,
//! never a rewritten path) for malformed input. Judged by the official client from PyPI and
//! raw HTTP (tests/hf/hardening.py).

mod common;

use std::path::Path;
use std::process::Command;

use common::Serve;

#[test]
fn serve_refuses_what_it_must_and_pages_exactly() {
    let venv = common::hf_venv();
    let d = tempfile::tempdir().unwrap();
    let tokens = d.path().join("tokens");
    std::fs::write(
        &tokens,
        "alice-token alice write\nbob-token bob write\nreader-token carol read alice/*\n",
    )
    .unwrap();
    let server = Serve::start(
        &d.path().join("srv"),
        &d.path().join("serve.log"),
        &["--token-file", tokens.to_str().unwrap()],
    );
    let scratch = d.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut cmd = Command::new(venv.join("python"));
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf/hardening.py"))
        .arg(&scratch);
    let out = common::hf_env(&mut cmd, &server.url, &d.path().join("hfhome"), None)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(out.status.success(), "{text}\nserver log:\n{log}");
    eprintln!("{text}");
    // Nothing a client sent made the server fail on its side.
    assert!(
        !log.contains("serve:"),
        "the server logged a failure of its own:\n{log}"
    );
    server.stop();
}
