//! Window arithmetic over the chunk-hashes route's answer: which bytes are dirty, which
//! edits each window takes, which base bytes to read, and the merged identity of a file.

use std::ops::Range;

use xet_client::cas_types::FileChunkHashesResponse;
use xet_core_structures::merklehash::{MerkleHash, MerkleHashSubtree};

use super::integrity;
use crate::remote::{ComposeEdit, RemoteResult};

/// The byte ranges of the base to declare dirty for `edits`. An insert dirties the byte it
/// goes before; one at EOF (an append) dirties the last byte, because the base's last chunk
/// ends at EOF rather than at a content-defined cut, so appended bytes may move that cut.
pub fn dirty_ranges(edits: &[ComposeEdit], size: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for e in edits {
        let r = &e.original_range;
        let d = if !r.is_empty() {
            r.clone()
        } else if r.start >= size {
            size - 1..size
        } else {
            r.start..r.start + 1
        };
        match out.last_mut() {
            Some(last) if d.start <= last.end => last.end = last.end.max(d.end),
            _ => out.push(d),
        }
    }
    out
}

/// The windows of `resp`, after checking that the answer fits a `size` byte file: windows
/// sorted, disjoint and inside the file, one more gap than windows, and a gap missing exactly
/// where a window touches the start or the end.
pub fn check_answer(resp: &FileChunkHashesResponse, size: u64) -> RemoteResult<Vec<Range<u64>>> {
    if resp.file_size != size {
        return Err(integrity(format!(
            "the CAS says the base has {} bytes, expected {size}",
            resp.file_size
        )));
    }
    let windows: Vec<Range<u64>> = resp
        .windows
        .iter()
        .map(|w| w.dirty_byte_range[0]..w.dirty_byte_range[1])
        .collect();
    if windows.is_empty() || resp.hash_ranges.len() != windows.len() + 1 {
        return Err(integrity(format!(
            "{} windows and {} gaps",
            windows.len(),
            resp.hash_ranges.len()
        )));
    }
    let mut prev = 0;
    for w in &windows {
        if w.start < prev || w.start >= w.end || w.end > size {
            return Err(integrity(format!(
                "window {w:?} out of order or out of the file"
            )));
        }
        prev = w.end;
    }
    let first_gap_empty = resp.hash_ranges[0].is_none();
    let last_gap_empty = resp.hash_ranges[windows.len()].is_none();
    if first_gap_empty != (windows[0].start == 0) || last_gap_empty != (prev == size) {
        return Err(integrity("the gaps do not match the windows"));
    }
    Ok(windows)
}

/// For each window, the edits it takes (a range of indices into `edits`): an edit goes to the
/// window that holds its whole base range; an insert at a window's end to the next window,
/// unless it is at EOF. Every edit must find one.
pub fn assign(
    edits: &[ComposeEdit],
    windows: &[Range<u64>],
    size: u64,
) -> RemoteResult<Vec<Range<usize>>> {
    let mut out = Vec::with_capacity(windows.len());
    let mut i = 0;
    for w in windows {
        let from = i;
        while let Some(e) = edits.get(i) {
            let r = &e.original_range;
            let inside = if r.is_empty() {
                r.start >= w.start && (r.start < w.end || (r.start == w.end && w.end == size))
            } else {
                r.start >= w.start && r.end <= w.end
            };
            if !inside {
                break;
            }
            i += 1;
        }
        out.push(from..i);
    }
    if i != edits.len() {
        return Err(integrity(format!(
            "edit {:?} lies in no window",
            edits[i].original_range
        )));
    }
    Ok(out)
}

/// The base ranges to read: each window widened to the terms it touches (`starts` holds
/// every term's first byte and then the size), merged where they meet.
pub fn read_ranges(windows: &[Range<u64>], starts: &[u64]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for w in windows {
        let first = starts.partition_point(|&s| s <= w.start) - 1;
        let last = starts.partition_point(|&s| s < w.end) - 1;
        let r = starts[first]..starts[last + 1];
        match out.last_mut() {
            Some(p) if r.start <= p.end => p.end = p.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The identity of the file whose chunks are the CAS's gaps interleaved with `windows` (each
/// window's chunks as (hash, length)): the merged aggregated hash, keyed as xet-core's
/// `file_hash` keys it.
pub fn merged_hash(
    gaps: &[Option<MerkleHashSubtree>],
    windows: &[Vec<(MerkleHash, u64)>],
) -> RemoteResult<MerkleHash> {
    let last = windows.len().saturating_sub(1);
    let first_at_start = gaps.first().is_some_and(|g| g.is_none());
    let last_at_end = gaps.last().is_some_and(|g| g.is_none());
    let mut seq = Vec::with_capacity(2 * windows.len() + 1);
    for (i, w) in windows.iter().enumerate() {
        if let Some(g) = &gaps[i] {
            seq.push(g.clone());
        }
        if !w.is_empty() {
            seq.push(MerkleHashSubtree::from_chunks(
                i == 0 && first_at_start,
                w,
                i == last && last_at_end,
            ));
        }
    }
    if let Some(Some(g)) = gaps.get(windows.len()) {
        seq.push(g.clone());
    }
    let merged = MerkleHashSubtree::merge(&seq).map_err(integrity)?;
    let h = merged
        .final_hash()
        .ok_or_else(|| integrity("the merged chunk tree is not closed at both ends"))?;
    Ok(h.hmac(MerkleHash::default()))
}
