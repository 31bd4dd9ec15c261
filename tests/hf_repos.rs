//! Model and dataset repos on `xetmount serve`, judged by the official client:
//! `huggingface_hub` 2.4.0 with `hf_xet` 1.8.0, from PyPI (tests/hf/repos.py). Commits,
//! branches, tags, parent-commit checks, downloads at every kind of revision, HfFileSystem
//! ranged reads, access rights and typed errors, before and after a server restart (which
//! keeps every commit, branch, tag and visibility).

mod common;

#[test]
fn the_official_client_commits_branches_tags_and_downloads_repos_byte_exact() {
    common::run_hf_script_across_a_restart("repos.py");
}
