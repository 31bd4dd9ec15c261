//! The local store's side of composing (see `remote::xet::compose`): which chunks a stored body
//! is made of, read from its xorbs' footers, and the base's bytes through the chunk reader.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_client::Client;
use xet_core_structures::merklehash::{ChunkHashList, MerkleHash};
use xet_core_structures::metadata_shard::file_structs::MDBFileInfo;
use xet_core_structures::xorb_object::XorbObject;

use super::reader::ChunkReader;
use crate::remote::xet::compose::{ChunkLists, ChunkMap};
use crate::remote::xet::rechunk::BaseBytes;
use crate::remote::xet::xet_err;
use crate::remote::{FileId, RemoteError, RemoteResult};

pub(super) use crate::remote::xet::compose::parse_hash;

/// A body's bytes, through the chunk reader.
pub struct Base {
    pub reader: Arc<ChunkReader>,
    pub id: FileId,
    pub hash: MerkleHash,
}

#[async_trait]
impl BaseBytes for Base {
    async fn read(&self, range: Range<u64>) -> RemoteResult<Bytes> {
        self.reader.read(&self.id, self.hash, range).await
    }
}

/// Chunk lists from the store's file infos and xorb footers.
pub struct LocalChunks {
    pub client: Arc<dyn Client>,
    pub xorb_dir: PathBuf,
}

#[async_trait]
impl ChunkMap for LocalChunks {
    async fn chunk_lists(&self, hash: &MerkleHash) -> RemoteResult<Option<ChunkLists>> {
        let Some((mdb, _)) = self
            .client
            .get_file_reconstruction_info(hash)
            .await
            .map_err(xet_err)?
        else {
            return Ok(None);
        };
        load(&mdb, &self.xorb_dir).await.map(Some)
    }
}

async fn load(mdb: &MDBFileInfo, xorb_dir: &Path) -> RemoteResult<ChunkLists> {
    let segments = mdb.segments.clone();
    let dir = xorb_dir.to_path_buf();
    let chunks = tokio::task::spawn_blocking(move || -> RemoteResult<Vec<ChunkHashList>> {
        let mut footers: HashMap<MerkleHash, XorbObject> = HashMap::new();
        let mut out = Vec::with_capacity(segments.len());
        for s in &segments {
            let footer = match footers.entry(s.xorb_hash) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(read_footer(&dir, &s.xorb_hash)?)
                }
            };
            let list = footer
                .chunk_hash_sizes(s.chunk_index_start, s.chunk_index_end)
                .map_err(xet_err)?;
            out.push(list);
        }
        Ok(out)
    })
    .await
    .map_err(RemoteError::other)??;
    Ok(ChunkLists {
        segments: mdb.segments.clone(),
        chunks,
    })
}

/// For each `(xorb, chunks)` range, the verification hash of its stored chunks (xet-core's
/// `range_hash_from_chunks` over their hashes, read from each xorb's footer): what a shard
/// naming that range must carry to show its writer knew those chunks.
pub(super) async fn range_hashes(
    xorb_dir: &Path,
    ranges: Vec<(MerkleHash, std::ops::Range<u32>)>,
) -> RemoteResult<Vec<MerkleHash>> {
    let dir = xorb_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut footers: HashMap<MerkleHash, XorbObject> = HashMap::new();
        let mut out = Vec::with_capacity(ranges.len());
        for (xorb, chunks) in ranges {
            let footer = match footers.entry(xorb) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(read_footer(&dir, &xorb)?),
            };
            let hashes: Vec<MerkleHash> = footer
                .chunk_hash_sizes(chunks.start, chunks.end)
                .map_err(xet_err)?
                .into_iter()
                .map(|(h, _)| h)
                .collect();
            out.push(
                xet_core_structures::metadata_shard::chunk_verification::range_hash_from_chunks(
                    &hashes,
                ),
            );
        }
        Ok(out)
    })
    .await
    .map_err(RemoteError::other)?
}

pub(super) fn xorb_path(dir: &Path, hash: &MerkleHash) -> PathBuf {
    // LocalClient's naming: `default.<hex>`.
    dir.join(format!("default.{hash:?}"))
}

fn read_footer(dir: &Path, hash: &MerkleHash) -> RemoteResult<XorbObject> {
    let path = xorb_path(dir, hash);
    let f = std::fs::File::open(&path)
        .map_err(|e| RemoteError::Integrity(format!("xorb {} unreadable: {e}", path.display())))?;
    XorbObject::deserialize(&mut std::io::BufReader::new(f)).map_err(xet_err)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::remote::local::{xet_config, XetCas};
    use crate::remote::xet::rechunk::tests::{apply, disjoint_edits};
    use crate::remote::{Cas, ComposeEdit, Composed};
    use bytes::Bytes;
    use xet_data::processing::{upload_ranges, DirtyInput};
    use xet_runtime::core::XetContext;

    const MIB: u64 = 1 << 20;

    use crate::remote::testing::random;

    pub(in crate::remote::local) async fn store_with(dir: &Path, data: &[u8]) -> (XetCas, FileId) {
        let ctx = XetContext::from_external(tokio::runtime::Handle::current(), xet_config());
        let cas = XetCas::open(ctx, &dir.join("cas")).await.unwrap();
        let src = dir.join("src");
        std::fs::write(&src, data).unwrap();
        let up = crate::remote::testing::upload_one(&cas, &src, data.len() as u64).await;
        (cas, up.id)
    }

    async fn read_back(cas: &XetCas, id: &FileId) -> Vec<u8> {
        let mut out = Vec::with_capacity(id.size as usize);
        let mut off = 0;
        while off < id.size {
            let end = (off + 32 * MIB).min(id.size);
            out.extend_from_slice(&cas.read_range(id, off..end).await.unwrap());
            off = end;
        }
        out
    }

    /// The xet-core 1.8.0 bug this module exists for: an edit outside the last segment,
    /// composed by plain `upload_ranges`, stores a shorter file under a plausible identity.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_upload_ranges_truncates_an_edit_before_the_last_segment() {
        let d = tempfile::tempdir().unwrap();
        let data = random((150 * MIB) as usize, 1);
        let (cas, base) = store_with(d.path(), &data).await;
        let hash = parse_hash(&base.hash).unwrap();
        let (mdb, _) = cas
            .client
            .get_file_reconstruction_info(&hash)
            .await
            .unwrap()
            .unwrap();
        assert!(mdb.segments.len() >= 3, "want a multi-segment base");
        let edit = vec![DirtyInput {
            original_range: 10 * MIB..10 * MIB + 4096,
            new_length: 4096,
            reader: Box::pin(std::io::Cursor::new(vec![7u8; 4096])),
        }];
        let info = upload_ranges(
            cas.config.clone(),
            cas.client.clone(),
            hash,
            base.size,
            edit,
        )
        .await
        .unwrap();
        // The identity claims the full size...
        assert_eq!(info.file_size(), Some(base.size));
        // ...but the stored reconstruction is short by (at least) a segment.
        let new = parse_hash(info.hash()).unwrap();
        let (stored, _) = cas
            .client
            .get_file_reconstruction_info(&new)
            .await
            .unwrap()
            .unwrap();
        assert!(
            stored.file_size() < base.size,
            "xet-core no longer truncates ({} of {} bytes): revisit compose.rs",
            stored.file_size(),
            base.size
        );
        // Our verification refuses exactly this.
        let id = FileId {
            hash: info.hash().to_string(),
            size: base.size,
        };
        let err = crate::remote::xet::compose::verify(&cas.chunk_map(), &id, base.size)
            .await
            .unwrap_err();
        assert!(matches!(err, RemoteError::Integrity(_)), "{err}");
    }

    /// Every edit of a fresh multi-segment file, composed: the content and identity of a
    /// clean upload of the same bytes, at the cost of the chunks around the edit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compose_is_exact_and_reads_only_the_chunks_around_the_edits() {
        let d = tempfile::tempdir().unwrap();
        let data = random((150 * MIB) as usize, 2);
        let (cas, base) = store_with(d.path(), &data).await;
        let size = base.size;
        let (mdb, _) = cas
            .client
            .get_file_reconstruction_info(&parse_hash(&base.hash).unwrap())
            .await
            .unwrap()
            .unwrap();
        let seg_end = u64::from(mdb.segments[0].unpacked_segment_bytes);
        assert!(mdb.segments.len() >= 2 && seg_end < size);
        let cases: Vec<(&str, Vec<ComposeEdit>)> = vec![
            ("offset 0", vec![edit(0..4096, 4096, 3)]),
            ("middle", vec![edit(70 * MIB..70 * MIB + 4096, 4096, 4)]),
            ("EOF-1", vec![edit(size - 1..size, 1, 5)]),
            (
                "across a segment boundary",
                vec![edit(seg_end - 2048..seg_end + 2048, 4096, 10)],
            ),
            ("append", vec![edit(size..size, 1_000_000, 6)]),
            ("shrink", vec![edit(size - 3 * MIB..size, 0, 0)]),
            ("grow in place", vec![edit(MIB..MIB + 100, 5000, 11)]),
            ("insert", vec![edit(90 * MIB..90 * MIB, 777, 12)]),
            (
                "scattered",
                vec![
                    edit(MIB..MIB + 10, 10, 7),
                    edit(65 * MIB..65 * MIB + 5000, 5000, 8),
                    edit(140 * MIB..140 * MIB + 1, 1, 9),
                ],
            ),
        ];
        for (name, edits) in cases {
            let want = apply(&data, &edits);
            let n = edits.len() as u64;
            let c = cas.compose(&base, edits).await.unwrap();
            assert_eq!(c.id.size, want.len() as u64, "{name}");
            assert!(
                read_back(&cas, &c.id).await == want,
                "{name}: content differs"
            );
            let (_, clean) = store_with(&d.path().join(name), &want).await;
            assert_eq!(clean.hash, c.id.hash, "{name}: composed hash differs");
            eprintln!(
                "{name}: base read {} KiB, new {} KiB, {} terms",
                c.base_bytes_read >> 10,
                c.new_bytes >> 10,
                c.terms
            );
            // The chunks around each edit and the few after it the chunker needs to re-sync.
            assert!(
                c.base_bytes_read <= n * MIB,
                "{name}: read {} bytes of the base",
                c.base_bytes_read
            );
            assert!(
                c.new_bytes <= n * MIB + 1_000_000,
                "{name}: stored {} new bytes",
                c.new_bytes
            );
        }
    }

    /// The defragmentation rule: a region that many edits cut into more than
    /// `crate::remote::xet::defrag::MAX_TERMS` terms is rewritten whole by the next edit inside it; other regions
    /// are left alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fragmented_region_is_rewritten_by_the_next_edit_inside_it() {
        let d = tempfile::tempdir().unwrap();
        let data = random((80 * MIB) as usize, 20);
        let (cas, base) = store_with(d.path(), &data).await;
        // Rounds of 150 small edits 400 KiB apart (far enough that their windows stay apart),
        // all in the first region, each round between the earlier ones' edits, until the
        // region is over the limit.
        let (mut id, mut want1, mut c1) = (base.clone(), data.clone(), None);
        for round in 0..10u64 {
            if c1
                .as_ref()
                .is_some_and(|c: &Composed| c.terms > crate::remote::xet::defrag::MAX_TERMS as u64)
            {
                break;
            }
            let scattered: Vec<ComposeEdit> = (0..150u64)
                .map(|i| {
                    let at = MIB + i * 400 * 1024 + (round * 137 * 1024) % (400 * 1024);
                    edit(at..at + 100, 100, 100 + i + 1000 * round)
                })
                .collect();
            want1 = apply(&want1, &scattered);
            let c = cas.compose(&id, scattered).await.unwrap();
            id = c.id.clone();
            c1 = Some(c);
        }
        let c1 = c1.unwrap();
        assert!(
            c1.terms > crate::remote::xet::defrag::MAX_TERMS as u64,
            "the first region should be fragmented: {} terms",
            c1.terms
        );
        // One more edit in that region rewrites it whole...
        let e2 = vec![edit(30 * MIB..30 * MIB + 4096, 4096, 21)];
        let want2 = apply(&want1, &e2);
        let c2 = cas.compose(&c1.id, e2).await.unwrap();
        assert!(
            c2.terms <= crate::remote::xet::defrag::MAX_TERMS as u64 / 4,
            "{} terms after the rewrite",
            c2.terms
        );
        assert!(
            c2.base_bytes_read >= crate::remote::xet::defrag::REGION - MIB
                && c2.base_bytes_read <= crate::remote::xet::defrag::REGION + 2 * MIB,
            "read {} bytes rewriting a region",
            c2.base_bytes_read
        );
        assert!(read_back(&cas, &c2.id).await == want2, "content differs");
        let (_, clean) = store_with(&d.path().join("clean"), &want2).await;
        assert_eq!(clean.hash, c2.id.hash, "composed hash differs");
        // ...and an edit in the unfragmented region does not.
        let e3 = vec![edit(70 * MIB..70 * MIB + 4096, 4096, 22)];
        let want3 = apply(&want2, &e3);
        let c3 = cas.compose(&c2.id, e3).await.unwrap();
        assert!(c3.base_bytes_read <= MIB, "read {}", c3.base_bytes_read);
        assert!(read_back(&cas, &c3.id).await == want3, "content differs");
    }

    /// Random edits of an already-composed (multi-term) base: content and identity always
    /// those of a clean upload of the same bytes.
    #[test]
    fn composed_identity_equals_a_clean_upload_for_random_edits() {
        use proptest::prelude::*;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let d = tempfile::tempdir().unwrap();
        let data = random(3 << 20, 30);
        let (cas, base, data) = rt.block_on(async {
            let (cas, fresh) = store_with(d.path(), &data).await;
            let first = vec![edit(MIB..MIB + 3000, 2000, 31)];
            let want = apply(&data, &first);
            let c = cas.compose(&fresh, first).await.unwrap();
            assert!(c.terms > 1);
            (cas, c.id, want)
        });
        let size = data.len() as u64;
        let edits = proptest::collection::vec((0..size, 0u64..20_000, 0usize..20_000), 1..4);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 12,
            ..ProptestConfig::default()
        });
        let n = std::sync::atomic::AtomicU64::new(0);
        runner
            .run(&edits, |raw| {
                let list = disjoint_edits(raw, size);
                let want = apply(&data, &list);
                let k = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (got, clean) = rt.block_on(async {
                    let c = cas.compose(&base, list).await.unwrap();
                    let got = read_back(&cas, &c.id).await;
                    let (_, clean) = store_with(&d.path().join(format!("clean{k}")), &want).await;
                    (c.id, (got == want, clean))
                });
                prop_assert!(clean.0, "content differs");
                prop_assert_eq!(got.hash, clean.1.hash);
                Ok(())
            })
            .unwrap();
    }

    fn edit(original_range: Range<u64>, len: usize, seed: u64) -> ComposeEdit {
        ComposeEdit {
            original_range,
            data: Bytes::from(random(len, seed)),
        }
    }
}
