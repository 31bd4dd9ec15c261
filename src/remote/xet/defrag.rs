//! The defragmentation rule for composed files.
//!
//! Every composition splits the base around its edits, so a file edited again and again is
//! made of more and more terms (runs of one xorb's chunks): slower to plan and read, larger
//! shards. The rule that bounds it: the file is cut into aligned regions of [`REGION`] bytes;
//! a region whose base holds more than [`MAX_TERMS`] terms (on average less than two 64 KiB
//! chunks per term) is rewritten whole by the next composition that edits inside it: its
//! bytes are re-chunked and stored afresh, contiguously, a few terms (such a composition does
//! not deduplicate against the base, or it would point back at the old pieces). So a
//! region holds at most [`MAX_TERMS`] plus what one composition adds; the price, one
//! region's bytes re-read and stored, is paid once per few hundred edits of that region.
//! Regions nobody edits keep their terms and cost nothing.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use xet_core_structures::metadata_shard::file_structs::FileDataSequenceEntry;

use super::rechunk::BaseBytes;
use crate::remote::{ComposeEdit, RemoteResult};

/// Size of a defragmentation region (the size of a full xorb).
pub const REGION: u64 = 64 << 20;
/// Terms a region may hold before the next edit inside it rewrites it: on average two chunks
/// (128 KiB) per term. A 1% patch of a checkpoint in 4 KiB writes leaves about 330 terms per
/// region, so a checkpoint patched that way is rewritten a region at a time every third
/// patch or so; fragmentation finer than this only makes reads issue more, smaller fetches.
pub const MAX_TERMS: usize = 512;

/// The regions edited by `edits` that hold too many terms in `base`, as byte ranges.
fn fragmented_regions(
    segments: &[FileDataSequenceEntry],
    size: u64,
    edits: &[ComposeEdit],
) -> Vec<Range<u64>> {
    let nregions = size.div_ceil(REGION).max(1) as usize;
    let mut terms = vec![0usize; nregions];
    let mut at = 0u64;
    for s in segments {
        let end = at + u64::from(s.unpacked_segment_bytes);
        if end > at {
            for count in &mut terms[(at / REGION) as usize..=((end - 1) / REGION) as usize] {
                *count += 1;
            }
        }
        at = end;
    }
    let mut out: Vec<Range<u64>> = Vec::new();
    for e in edits {
        let r = &e.original_range;
        // A pure insert touches the region holding its position (at EOF, the last one).
        let first = (r.start.min(size.saturating_sub(1)) / REGION) as usize;
        let last = (r.end.max(r.start + 1).min(size).saturating_sub(1) / REGION) as usize;
        for (k, &count) in terms
            .iter()
            .enumerate()
            .take(last.max(first) + 1)
            .skip(first)
        {
            if count > MAX_TERMS {
                let region = k as u64 * REGION..((k as u64 + 1) * REGION).min(size);
                if out.last() != Some(&region) {
                    out.push(region);
                }
            }
        }
    }
    out
}

/// Whether edit `r` must be folded into `span` (it overlaps it, or is an insert inside or at
/// either end of it).
fn touches(span: &Range<u64>, r: &Range<u64>) -> bool {
    if r.start == r.end {
        span.start <= r.start && r.start <= span.end
    } else {
        r.start < span.end && r.end > span.start
    }
}

/// `edits` (sorted, disjoint, in base coordinates) with every fragmented region they edit
/// turned into one edit that rewrites the whole region: the region's base bytes, read here,
/// with the edits inside applied. Returns the new edits and the base bytes read.
pub async fn apply_rule(
    bytes: &dyn BaseBytes,
    size: u64,
    segments: &[FileDataSequenceEntry],
    edits: Vec<ComposeEdit>,
) -> RemoteResult<(Vec<ComposeEdit>, u64)> {
    let regions = fragmented_regions(segments, size, &edits);
    if regions.is_empty() {
        return Ok((edits, 0));
    }
    // Spans to rewrite: the regions, merged when adjacent, widened over edits that straddle
    // their ends (which may merge them further).
    let mut spans: Vec<Range<u64>> = Vec::new();
    for r in regions {
        match spans.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => spans.push(r),
        }
    }
    loop {
        let mut changed = false;
        for span in &mut spans {
            for e in &edits {
                let r = &e.original_range;
                if touches(span, r) && (r.start < span.start || r.end > span.end) {
                    span.start = span.start.min(r.start);
                    span.end = span.end.max(r.end);
                    changed = true;
                }
            }
        }
        let mut merged: Vec<Range<u64>> = Vec::new();
        for s in spans.drain(..) {
            match merged.last_mut() {
                Some(last) if last.end >= s.start => last.end = last.end.max(s.end),
                _ => merged.push(s),
            }
        }
        spans = merged;
        if !changed {
            break;
        }
    }
    let mut read = 0u64;
    let mut out = Vec::with_capacity(edits.len());
    let mut pending = edits.into_iter().peekable();
    for span in spans {
        while let Some(e) = pending.next_if(|e| !touches(&span, &e.original_range)) {
            out.push(e);
        }
        let mut data = BytesMut::new();
        let mut cursor = span.start;
        while let Some(e) = pending.next_if(|e| touches(&span, &e.original_range)) {
            if cursor < e.original_range.start {
                let piece = bytes.read(cursor..e.original_range.start).await?;
                read += piece.len() as u64;
                data.extend_from_slice(&piece);
            }
            data.extend_from_slice(&e.data);
            cursor = e.original_range.end;
        }
        if cursor < span.end {
            let piece = bytes.read(cursor..span.end).await?;
            read += piece.len() as u64;
            data.extend_from_slice(&piece);
        }
        tracing::debug!(?span, "compose: rewriting a fragmented region whole");
        out.push(ComposeEdit {
            original_range: span,
            data: Bytes::from(data),
        });
    }
    out.extend(pending);
    Ok((out, read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xet_core_structures::merklehash::MerkleHash;
    use xet_core_structures::metadata_shard::file_structs::{FileDataSequenceHeader, MDBFileInfo};

    /// A file of `n` equal terms of `len` bytes each.
    fn mdb(n: usize, len: u32) -> MDBFileInfo {
        let seg = FileDataSequenceEntry {
            xorb_hash: MerkleHash::default(),
            xorb_flags: 0,
            unpacked_segment_bytes: len,
            chunk_index_start: 0,
            chunk_index_end: 1,
        };
        MDBFileInfo {
            metadata: FileDataSequenceHeader::new(MerkleHash::default(), n, false, false),
            segments: vec![seg; n],
            verification: Vec::new(),
            metadata_ext: None,
        }
    }

    fn edit(r: Range<u64>) -> ComposeEdit {
        ComposeEdit {
            original_range: r,
            data: Bytes::new(),
        }
    }

    #[test]
    fn only_edited_regions_over_the_limit_are_rewritten() {
        // 2,000 terms of 64 KiB: 125 MiB, two regions, each over the limit.
        let m = mdb(2000, 64 << 10);
        let size = 2000 * (64 << 10);
        assert_eq!(
            fragmented_regions(&m.segments, size, &[edit(10..20)]),
            vec![0..REGION]
        );
        assert_eq!(
            fragmented_regions(&m.segments, size, &[edit(size..size)]),
            vec![REGION..size]
        );
        assert_eq!(
            fragmented_regions(&m.segments, size, &[edit(REGION - 1..REGION + 1)]),
            vec![0..REGION, REGION..size]
        );
        // 1,000 terms of 128 KiB: 512 per region, at the limit, nothing to rewrite.
        let m = mdb(1000, 128 << 10);
        assert!(fragmented_regions(&m.segments, 1000 << 17, &[edit(0..1)]).is_empty());
    }

    #[test]
    fn an_insert_at_a_span_end_is_folded_into_it() {
        assert!(touches(&(0..10), &(10..10)));
        assert!(touches(&(0..10), &(0..0)));
        assert!(!touches(&(0..10), &(10..12)));
        assert!(touches(&(0..10), &(9..12)));
    }
}
