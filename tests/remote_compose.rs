//! Composing edited files against a CAS with only the official routes (`xetmount serve
//! --hub-only`: no `/v1/xetmount/chunks`), through `GET /v2/file-chunk-hashes/{file}`: a
//! 256 MiB file uploaded with the official `hf` CLI, edited in every shape; each result read
//! back byte for byte through the CAS, one downloaded with `hf` after a batch `addFile`, and
//! no composition falls back to a whole upload. The touched terms' chunk hashes come from
//! their xorbs' footers (a composition reads its windows' neighbourhoods, not whole 64 MiB
//! terms); a CAS whose footers cannot be used gets the terms read whole, still exactly.

mod common;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use common::{hf_cli as hf, sh, Serve};
use serde_json::Value;
use xet_client::cas_client::auth::AuthConfig;
use xet_client::cas_client::Client;
use xet_client::cas_types::{FileChunkHashesResponse, FileRange};
use xet_core_structures::merklehash::MerkleHash;
use xet_data::processing::configurations::{SessionContext, TranslatorConfig};
use xet_data::processing::create_remote_client;
use xetmount::remote::http::cas::HttpCas;
use xetmount::remote::http::hub::Hub;
use xetmount::remote::xet::assemble::XorbSettings;
use xetmount::remote::xet::window_compose::{self, ChunkHashes};
use xetmount::remote::{Cas, ComposeEdit, FileId, RemoteError, RemoteResult};

const MIB: u64 = 1 << 20;

fn edit(r: std::ops::Range<u64>, len: usize, seed: u64) -> ComposeEdit {
    ComposeEdit {
        original_range: r,
        data: Bytes::from(common::random_bytes(len, seed)),
    }
}

fn apply(model: &[u8], edits: &[ComposeEdit]) -> Vec<u8> {
    let mut out = Vec::with_capacity(model.len());
    let mut pos = 0usize;
    for e in edits {
        out.extend_from_slice(&model[pos..e.original_range.start as usize]);
        out.extend_from_slice(&e.data);
        pos = e.original_range.end as usize;
    }
    out.extend_from_slice(&model[pos..]);
    out
}

/// Term lengths of stored file `hash`, from the CAS's v2 reconstruction.
async fn term_lengths(hub: &Hub, hash: &str) -> Vec<u64> {
    let (cas_url, tok, _) = hub.cas_token(false).await.unwrap();
    let v: Value = reqwest::Client::new()
        .get(format!("{cas_url}/v2/reconstructions/{hash}"))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["terms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["unpacked_length"].as_u64().unwrap())
        .collect()
}

#[test]
fn edits_compose_over_the_official_file_chunk_hashes_route() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let server = Serve::start(&d.join("srv"), &d.join("serve.log"), &["--hub-only"]);
    let url = server.url.clone();
    hf(&url, d, &["buckets", "create", "local/data"]);
    std::fs::write(
        d.join("big.bin"),
        common::random_bytes((256 * MIB) as usize, 1),
    )
    .unwrap();
    hf(
        &url,
        d,
        &[
            "buckets",
            "cp",
            "big.bin",
            "hf://buckets/local/data/big.bin",
        ],
    );
    let model = std::fs::read(d.join("big.bin")).unwrap();
    let size = model.len() as u64;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ctx = xet_runtime::core::XetContext::from_external(
        rt.handle().clone(),
        xetmount::remote::local::xet_config(),
    );
    rt.block_on(async {
        let hub = Arc::new(Hub::new(&url, Some("anything".into()), "local/data").unwrap());
        let tree = hub.get_json("tree", &hub.api("/tree")).await.unwrap();
        let hash = tree
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == "big.bin")
            .and_then(|e| e["xetHash"].as_str())
            .unwrap()
            .to_string();
        let base = FileId { hash, size };
        let terms = term_lengths(&hub, &base.hash).await;
        assert!(terms.len() >= 4, "{terms:?}");
        let boundary = terms[0];
        let max_term = *terms.iter().max().unwrap();
        let cas = HttpCas::open(ctx.clone(), hub.clone(), true, &d.join("cache"), 0)
            .await
            .unwrap();

        let cases: Vec<(&str, Vec<ComposeEdit>)> = vec![
            (
                "middle",
                vec![edit(100 * MIB + 12345..100 * MIB + 12345 + 4096, 4096, 2)],
            ),
            ("offset 0", vec![edit(0..4096, 4096, 3)]),
            ("at EOF-1", vec![edit(size - 1..size, 4096, 4)]),
            ("append", vec![edit(size..size, 4096, 5)]),
            ("shrink", vec![edit(size - 3 * MIB - 7..size, 0, 0)]),
            (
                "scattered",
                vec![
                    edit(MIB..MIB + 4096, 4096, 6),
                    edit(70 * MIB..70 * MIB + 10, 4096, 7),
                    edit(130 * MIB + 5..130 * MIB + 5, 4096, 8),
                    edit(200 * MIB..200 * MIB + 4096, 100, 9),
                    edit(size..size, 4096, 10),
                ],
            ),
            (
                "straddling a term boundary",
                vec![edit(boundary - 2048..boundary + 2048, 4096, 11)],
            ),
            // Windows longer than the neighbourhood fetched ahead: 2 MiB replaced, and 9 MiB
            // (too much to fetch ahead at all: every window chunk is fetched by the footer's
            // packed offsets).
            (
                "2 MiB edit",
                vec![edit(40 * MIB + 777..42 * MIB + 777, 2 * MIB as usize, 13)],
            ),
            (
                "9 MiB edit",
                vec![edit(150 * MIB + 5..159 * MIB + 5, 9 * MIB as usize, 14)],
            ),
        ];
        let mut first = None;
        for (name, edits) in cases {
            let want = apply(&model, &edits);
            let c = cas.compose(&base, edits.clone()).await.unwrap();
            eprintln!(
                "{name}: base bytes read {}, new bytes stored {}, terms {}",
                c.base_bytes_read, c.new_bytes, c.terms
            );
            assert_eq!(c.id.size, want.len() as u64, "{name}");
            let back = cas.read_range(&c.id, 0..c.id.size).await.unwrap();
            assert!(back[..] == want[..], "{name}: composed bytes differ");
            let replaced: u64 = edits_len(&edits);
            assert!(
                c.new_bytes <= 2 * MIB + replaced,
                "{name}: stored {}",
                c.new_bytes
            );
            // With the footers: each edit's neighbourhood (1 MiB) and its window, never the
            // terms it touches (64 MiB each).
            assert!(
                c.base_bytes_read <= 2 * MIB * edits.len() as u64 + 2 * replaced,
                "{name}: read {}",
                c.base_bytes_read
            );
            assert!(!c.whole_upload, "{name}: uploaded whole");
            first.get_or_insert((c.id.clone(), want));
        }

        // A CAS whose footers cannot be used (a suffix range refused, or a footer not
        // matching its xorb): the touched terms are read whole, and the result is exact.
        let client = xet_client(&ctx, &hub, &d.join("cache2")).await;
        let settings = XorbSettings {
            prefix: ctx.config.data.default_prefix.clone(),
            compression: ctx.config.xorb.compression_policy.as_str().to_string(),
            retest_interval: ctx.config.xorb.compression_scheme_retest_interval,
        };
        for (mode, seed) in [(Footers::Refused, 15), (Footers::Garbled, 16)] {
            let route = Route {
                client: client.clone(),
                footers: mode,
            };
            let edits = vec![edit(100 * MIB + 999..100 * MIB + 999 + 4096, 4096, seed)];
            let want = apply(&model, &edits);
            let c = window_compose::compose(&settings, client.clone(), &route, &base, edits)
                .await
                .unwrap()
                .unwrap();
            let back = cas.read_range(&c.id, 0..c.id.size).await.unwrap();
            assert!(back[..] == want[..], "{mode:?}: composed bytes differ");
            assert!(
                c.base_bytes_read >= max_term.min(16 * MIB) && c.base_bytes_read <= max_term,
                "{mode:?}: read {}, expected the touched term whole",
                c.base_bytes_read
            );
        }

        // An edit of a composed file, next to its first edit.
        let (mid, mid_bytes) = first.unwrap();
        let edits = vec![edit(100 * MIB + 20000..100 * MIB + 24096, 4096, 12)];
        let want = apply(&mid_bytes, &edits);
        let c = cas.compose(&mid, edits).await.unwrap();
        eprintln!(
            "second generation: base bytes read {}, new bytes stored {}, terms {}",
            c.base_bytes_read, c.new_bytes, c.terms
        );
        let back = cas.read_range(&c.id, 0..c.id.size).await.unwrap();
        assert!(back[..] == want[..], "second generation differs");
        assert!(!c.whole_upload, "second generation: uploaded whole");

        // The hub takes the composed file by its hash, and `hf` downloads it byte-exact.
        let line = serde_json::json!({"type": "addFile", "path": "m.bin", "xetHash": c.id.hash});
        let r = reqwest::Client::new()
            .post(hub.api("/batch"))
            .bearer_auth("anything")
            .body(format!("{line}\n"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        std::fs::write(d.join("want.bin"), &want).unwrap();
    });
    hf(
        &url,
        d,
        &["buckets", "cp", "hf://buckets/local/data/m.bin", "m.bin"],
    );
    sh(d, "cmp want.bin m.bin");
    // A clean upload of the same bytes has the composed file's identity.
    hf(
        &url,
        d,
        &[
            "buckets",
            "cp",
            "want.bin",
            "hf://buckets/local/data/clean.bin",
        ],
    );
    let out = hf(
        &url,
        d,
        &["buckets", "ls", "local/data", "--format", "json"],
    );
    let hash_of = |name: &str| -> Option<String> {
        let v: Value = serde_json::from_str(&out).ok()?;
        v.as_array()?
            .iter()
            .find(|e| e["path"] == name)
            .and_then(|e| e["xet_hash"].as_str().or(e["xetHash"].as_str()))
            .map(str::to_string)
    };
    let (a, b) = (hash_of("m.bin"), hash_of("clean.bin"));
    assert!(
        a.is_some() && a == b,
        "composed {a:?} vs clean upload {b:?}"
    );
}

/// Base bytes the edits replace.
fn edits_len(edits: &[ComposeEdit]) -> u64 {
    edits
        .iter()
        .map(|e| e.original_range.end - e.original_range.start)
        .sum()
}

/// How a test route treats footer fetches.
#[derive(Clone, Copy, Debug)]
enum Footers {
    /// As a CAS that refuses suffix ranges.
    Refused,
    /// One chunk hash in every footer changed: it parses, but is not its xorb's.
    Garbled,
}

/// The official route through xet-core's own client, and footer fetches spoilt as `footers`
/// says.
struct Route {
    client: Arc<dyn Client>,
    footers: Footers,
}

#[async_trait::async_trait]
impl ChunkHashes for Route {
    async fn file_chunk_hashes(
        &self,
        file: &MerkleHash,
        dirty: &[Range<u64>],
    ) -> RemoteResult<Option<FileChunkHashesResponse>> {
        let ranges = dirty
            .iter()
            .map(|r| FileRange::new(r.start, r.end))
            .collect();
        self.client
            .get_file_chunk_hashes(file, ranges)
            .await
            .map(Some)
            .map_err(|e| RemoteError::Other(e.to_string()))
    }

    async fn get_range(&self, url: &str, range: &str) -> RemoteResult<Bytes> {
        match self.footers {
            Footers::Refused => Err(RemoteError::Other(format!("{range}: HTTP 416"))),
            Footers::Garbled => {
                let mut b = window_compose::get_range(url, range).await?.to_vec();
                // The footer (its length is the last 4 bytes) starts with ident, version and
                // xorb hash (40 bytes), then the hash section's ident, version and count (12):
                // the first chunk hash follows.
                let n = b.len();
                let info = u32::from_le_bytes(b[n - 4..].try_into().unwrap()) as usize;
                if let Some(at) = (n - 4).checked_sub(info) {
                    b[at + 52] ^= 0xff;
                }
                Ok(Bytes::from(b))
            }
        }
    }
}

/// A xet-core client of the bucket's CAS, as `HttpCas` makes one.
async fn xet_client(
    ctx: &xet_runtime::core::XetContext,
    hub: &Hub,
    cache: &std::path::Path,
) -> Arc<dyn Client> {
    let (cas_url, tok, exp) = hub.cas_token(true).await.unwrap();
    let session = SessionContext {
        endpoint: cas_url,
        auth: AuthConfig::maybe_new(Some(tok), Some(exp), None),
        custom_headers: None,
        repo_paths: vec!["".into()],
        session_id: Some("remote-compose-test".into()),
        cache_root: Some(cache.to_path_buf()),
    };
    let config = TranslatorConfig::new(ctx, session)
        .unwrap()
        .disable_progress_aggregation();
    create_remote_client(&config, "remote-compose-test", false)
        .await
        .unwrap()
}
