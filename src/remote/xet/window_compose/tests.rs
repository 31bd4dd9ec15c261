use std::collections::HashMap;
use std::ops::Range;

use xet_client::cas_client::chunk_window_builder::build_file_chunk_hashes_response;
use xet_client::cas_types::FileRange;
use xet_core_structures::merklehash::{compute_data_hash, file_hash, MerkleHash};
use xet_core_structures::metadata_shard::file_structs::{FileDataSequenceEntry, MDBFileInfo};
use xet_core_structures::xorb_object::XorbObjectInfoV1;
use xet_data::deduplication::Chunker;

use super::*;
use crate::remote::testing::random;
use crate::remote::xet::rechunk::tests::apply;
use crate::remote::xet::xorb_footer::{self, Suffix};
use crate::remote::{ComposeEdit, FileId};

fn chunks_of(data: &[u8]) -> Vec<(MerkleHash, u64)> {
    let mut c = Chunker::default();
    let mut v = c.next_block(data, true);
    v.extend(c.finish());
    v.iter().map(|c| (c.hash, c.data.len() as u64)).collect()
}

fn edit(r: Range<u64>, len: usize, seed: u64) -> ComposeEdit {
    ComposeEdit {
        original_range: r,
        data: Bytes::from(random(len, seed)),
    }
}

/// The route's answer for `edits` of `base` (the state machine the CAS runs), the new
/// windows re-chunked with the edits, and their merge with the gaps: the identity of the
/// edited file, as a clean upload of it computes it.
fn check(base: &[u8], edits: Vec<ComposeEdit>) {
    let size = base.len() as u64;
    let chunks = chunks_of(base);
    let info = MDBFileInfo {
        segments: vec![FileDataSequenceEntry {
            xorb_hash: MerkleHash::random_from_seed(7),
            xorb_flags: 0,
            unpacked_segment_bytes: size as u32,
            chunk_index_start: 0,
            chunk_index_end: chunks.len() as u32,
        }],
        ..Default::default()
    };
    let dirty: Vec<FileRange> = dirty_ranges(&edits, size)
        .into_iter()
        .map(|r| FileRange::new(r.start, r.end))
        .collect();
    let resp = build_file_chunk_hashes_response(&info, dirty, chunks.clone()).unwrap();
    let resp: FileChunkHashesResponse =
        serde_json::from_str(&serde_json::to_string(&resp).unwrap()).unwrap();
    let windows = check_answer(&resp, size).unwrap();
    let per_window = assign(&edits, &windows, size).unwrap();
    let mut base_lists = Vec::new();
    let mut new_lists = Vec::new();
    for (w, es) in windows.iter().zip(per_window) {
        base_lists.push(chunks_of(&base[w.start as usize..w.end as usize]));
        let shifted: Vec<ComposeEdit> = edits[es]
            .iter()
            .map(|e| ComposeEdit {
                original_range: e.original_range.start - w.start..e.original_range.end - w.start,
                data: e.data.clone(),
            })
            .collect();
        new_lists.push(chunks_of(&apply(
            &base[w.start as usize..w.end as usize],
            &shifted,
        )));
    }
    assert_eq!(
        merged_hash(&resp.hash_ranges, &base_lists).unwrap(),
        file_hash(&chunks)
    );
    assert_eq!(
        merged_hash(&resp.hash_ranges, &new_lists).unwrap(),
        file_hash(&chunks_of(&apply(base, &edits)))
    );
}

#[test]
fn gaps_and_new_windows_hash_to_the_edited_file() {
    let base = random(3 << 20, 1);
    let n = base.len() as u64;
    check(&base, vec![edit(1_500_000..1_504_096, 4096, 2)]);
    check(&base, vec![edit(0..4096, 4096, 3)]);
    check(&base, vec![edit(n - 1..n, 4096, 4)]);
    check(&base, vec![edit(n..n, 4096, 5)]);
    check(&base, vec![edit(n - 500_000..n, 0, 0)]);
    check(
        &base,
        vec![
            edit(10_000..10_000, 77, 6),
            edit(1_000_000..1_000_100, 5, 7),
            edit(2_500_000..2_600_000, 100_000, 8),
        ],
    );
}

#[test]
#[allow(clippy::single_range_in_vec_init)]
fn windows_widen_to_the_terms_they_touch() {
    let starts = [0, 100, 200, 300, 400];
    assert_eq!(read_ranges(&[150..160], &starts), vec![100..200]);
    // A window ending inside a term keeps reading to that term's end.
    assert_eq!(read_ranges(&[150..250], &starts), vec![100..300]);
    assert_eq!(read_ranges(&[100..200, 250..260], &starts), vec![100..300]);
    assert_eq!(
        read_ranges(&[0..10, 390..400], &starts),
        vec![0..100, 300..400]
    );
    let e = |r: Range<u64>| edit(r, 1, 0);
    assert_eq!(
        dirty_ranges(&[e(5..5), e(6..9), e(400..400)], 400),
        vec![5..9, 399..400]
    );
    let edits = [e(5..9), e(200..200), e(400..400)];
    assert_eq!(
        assign(&edits, &[0..100, 200..400], 400).unwrap(),
        vec![0..1, 1..3]
    );
    assert!(assign(&edits, &[0..100, 201..400], 400).is_err());
}

fn footer_of(x: &xet_core_structures::xorb_object::SerializedXorbObject) -> XorbObjectInfoV1 {
    match xorb_footer::footer(&x.serialized_data).unwrap() {
        Suffix::Parsed(info) => info,
        Suffix::Need(n) => panic!("the whole xorb is too short, need {n}"),
    }
}

#[test]
fn a_footer_counts_only_if_it_is_the_xorbs_and_fits_the_terms() {
    use crate::remote::http::plan::tests::xorb;
    let (x, datas) = xorb(&[100, 200, 300, 400], "lz4");
    let len = |r: Range<usize>| datas[r].iter().map(|d| d.len() as u64).sum::<u64>();
    // Terms as a reconstruction names them: chunks 1..3, and the whole xorb.
    let good = [(1..3, len(1..3)), (0..4, len(0..4))];
    let f = check_footer(footer_of(&x), &x.hash, &good).unwrap();
    for (c, d) in datas.iter().enumerate() {
        assert_eq!(f.hashes[c], compute_data_hash(d));
        assert_eq!(f.index.chunk_len(c as u32), d.len() as u64);
    }
    // A term longer or shorter than its chunks, or past the last chunk.
    assert!(check_footer(footer_of(&x), &x.hash, &[(1..3, len(1..3) + 1)]).is_err());
    assert!(check_footer(footer_of(&x), &x.hash, &[(0..4, len(0..3))]).is_err());
    assert!(check_footer(footer_of(&x), &x.hash, &[(2..5, len(2..4))]).is_err());
    // Another xorb's footer, and one with a chunk hash or length changed.
    let (y, _) = xorb(&[100, 200, 300, 401], "lz4");
    assert!(check_footer(footer_of(&y), &x.hash, &[]).is_err());
    let mut info = footer_of(&x);
    info.chunk_hashes[2] = MerkleHash::random_from_seed(3);
    assert!(check_footer(info, &x.hash, &[]).is_err());
    let mut info = footer_of(&x);
    info.unpacked_chunk_offsets[1] += 1;
    assert!(check_footer(info, &x.hash, &[]).is_err());
}

#[test]
fn what_was_written_must_be_what_was_composed() {
    let h = MerkleHash::random_from_seed;
    let (base_x, new_x) = (h(100), h(200));
    let untouched = FileDataSequenceEntry {
        xorb_hash: h(300),
        xorb_flags: 0,
        unpacked_segment_bytes: 1000,
        chunk_index_start: 0,
        chunk_index_end: 10,
    };
    let seg = |x: MerkleHash, c: Range<u32>, n: u32| FileDataSequenceEntry {
        xorb_hash: x,
        xorb_flags: 0,
        unpacked_segment_bytes: n,
        chunk_index_start: c.start,
        chunk_index_end: c.end,
    };
    let base: HashMap<(MerkleHash, u32), (MerkleHash, u64)> =
        [((base_x, 5), (h(1), 10)), ((base_x, 6), (h(2), 20))].into();
    let written: HashMap<MerkleHash, Vec<(MerkleHash, u64)>> =
        [(new_x, vec![(h(3), 30), (h(4), 40)])].into();
    // Untouched term, base chunks 5..7, new chunks 0..2.
    let parts = vec![
        Part::Term(untouched.clone()),
        Part::Chunk(h(1), 10),
        Part::Chunk(h(2), 20),
        Part::Chunk(h(3), 30),
        Part::Chunk(h(4), 40),
    ];
    let id = FileId {
        hash: h(9).hex(),
        size: 1100,
    };
    let good = vec![
        untouched.clone(),
        seg(base_x, 5..7, 30),
        seg(new_x, 0..2, 70),
    ];
    let check = |segs: &[FileDataSequenceEntry], parts: &[Part], size: u64| {
        check_written(segs, parts, &base, &written, &id, size)
    };
    check(&good, &parts, 1100).unwrap();
    // Wrong size, a term's length, chunks in another order, a chunk nobody knows, a
    // missing or extra part, an untouched term changed.
    assert!(check(&good, &parts, 1101).is_err());
    let mut bad = good.clone();
    bad[1].unpacked_segment_bytes = 31;
    assert!(check(&bad, &parts, 1100).is_err());
    let mut swapped = parts.clone();
    swapped.swap(3, 4);
    assert!(check(&good, &swapped, 1100).is_err());
    let mut bad = good.clone();
    bad[2] = seg(new_x, 0..3, 70);
    assert!(check(&bad, &parts, 1100).is_err());
    assert!(check(&good[..2], &parts, 1100).is_err());
    assert!(check(&good, &parts[..4], 1100).is_err());
    let mut bad = good.clone();
    bad[0].chunk_index_end = 11;
    assert!(check(&bad, &parts, 1100).is_err());
}
