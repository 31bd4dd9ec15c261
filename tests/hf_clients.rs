//! Protocol conformance of `xetmount serve`, judged by the official clients: the
//! `huggingface_hub` 2.4.0 API and `hf` CLI with `hf_xet` 1.8.0, from PyPI (tests/hf/).

mod common;

/// A restarted server (same directory, same port or not) keeps everything committed, and
/// the clients' cached dedup state still matches it.
#[test]
fn the_official_clients_create_upload_list_and_download_byte_exact() {
    common::run_hf_script_across_a_restart("conformance.py");
}
