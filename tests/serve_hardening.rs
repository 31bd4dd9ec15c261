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
    let server = Serve::with_tokens(
        d.path(),
        "alice-token alice write\nbob-token bob write\nreader-token carol read alice/*\n",
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

/// Shards must show that their writer knows the chunks each file names (the verification
/// hash of every range), and dedup answers hand out nothing a shard could claim: no other
/// file's hash or layout, chunk hashes only under the server's key. Without both, anyone with
/// the bytes of one chunk could learn its xorb and register a file made of that xorb's other
/// chunks, then read them.
#[test]
fn shards_must_prove_their_chunks_and_dedup_answers_reveal_nothing_to_claim() {
    use xet_core_structures::merklehash::MerkleHash;
    use xet_core_structures::metadata_shard::chunk_verification::range_hash_from_chunks;
    use xet_core_structures::metadata_shard::file_structs::{
        FileDataSequenceEntry, FileDataSequenceHeader, FileVerificationEntry, MDBFileInfo,
    };
    use xet_core_structures::metadata_shard::shard_in_memory::MDBInMemoryShard;
    use xet_core_structures::metadata_shard::streaming_shard::MDBMinimalShard;

    let d = tempfile::tempdir().unwrap();
    let server = Serve::start(&d.path().join("srv"), &d.path().join("serve.log"), &[]);
    let url = server.url.clone();
    let file = d.path().join("f.bin");
    std::fs::write(&file, common::random_bytes(3_000_000, 20)).unwrap();
    common::hf_cli(&url, d.path(), &["buckets", "create", "local/a"]);
    common::hf_cli(
        &url,
        d.path(),
        &[
            "buckets",
            "cp",
            file.to_str().unwrap(),
            "hf://buckets/local/a/f.bin",
        ],
    );
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    let tree = json(common::http_get(&url, "/api/buckets/local/a/tree").as_bytes());
    let hash = tree[0]["xetHash"].as_str().unwrap().to_string();
    let (_, tok) = common::http(
        &url,
        "GET",
        "/api/buckets/local/a/xet-write-token",
        "x",
        &[],
    );
    let cas = json(&tok)["accessToken"].as_str().unwrap().to_string();
    let (status, lists) = common::http(
        &url,
        "GET",
        &format!("/v1/xetmount/chunks/{hash}"),
        &cas,
        &[],
    );
    assert_eq!(status, 200);
    let seg = &json(&lists)["segments"][0];
    let xorb = MerkleHash::from_hex(seg["xorb"].as_str().unwrap()).unwrap();
    let (start, end) = (seg["start"].as_u64().unwrap(), seg["end"].as_u64().unwrap());
    let chunks: Vec<(MerkleHash, u64)> = seg["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                MerkleHash::from_hex(c[0].as_str().unwrap()).unwrap(),
                c[1].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(chunks.len() > 2, "a 3 MB file spans several chunks");

    // The dedup answer for the first chunk: no file section, and none of the raw chunk
    // hashes (nor the file's hash) anywhere in it.
    let (status, answer) = common::http(
        &url,
        "GET",
        &format!("/v1/chunks/default/{}", chunks[0].0.hex()),
        &cas,
        &[],
    );
    assert_eq!(status, 200);
    let shard =
        MDBMinimalShard::from_reader(&mut std::io::Cursor::new(&answer), true, true).unwrap();
    assert_eq!(shard.num_files(), 0, "a dedup answer names no file");
    let file_hash = MerkleHash::from_hex(&hash).unwrap();
    for h in chunks.iter().map(|(h, _)| *h).chain([file_hash]) {
        assert!(
            !answer.windows(32).any(|w| w == h.as_bytes()),
            "the dedup answer holds {} in the clear",
            h.hex()
        );
    }

    // A file claiming chunks 1.. of that xorb: refused with a wrong verification hash or
    // none, accepted with the right one (which only the chunks' hashes give).
    let claim = |verification: Option<MerkleHash>| {
        let bytes: u64 = chunks[1..].iter().map(|(_, n)| n).sum();
        let info = MDBFileInfo {
            metadata: FileDataSequenceHeader::new(
                MerkleHash::from_hex(&"ab".repeat(32)).unwrap(),
                1,
                verification.is_some(),
                false,
            ),
            segments: vec![FileDataSequenceEntry::new(xorb, bytes, start + 1, end)],
            verification: verification
                .map(FileVerificationEntry::new)
                .into_iter()
                .collect(),
            metadata_ext: None,
        };
        let mut mem = MDBInMemoryShard::default();
        mem.add_file_reconstruction_info(info).unwrap();
        let body = mem.to_bytes().unwrap();
        common::http(&url, "POST", "/v2/shards", &cas, &body)
    };
    let (status, text) = claim(Some(MerkleHash::default()));
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("verification"));
    let (status, text) = claim(None);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    let right: Vec<MerkleHash> = chunks[1..].iter().map(|(h, _)| *h).collect();
    let (status, text) = claim(Some(range_hash_from_chunks(&right)));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&text));
    server.stop();
}
