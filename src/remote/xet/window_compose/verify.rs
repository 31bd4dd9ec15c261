//! Checks of a composed file before it is returned: the terms written are those composed,
//! and the CAS stores exactly them.

use std::collections::HashMap;
use std::sync::Arc;

use xet_client::cas_client::Client;
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::metadata_shard::file_structs::FileDataSequenceEntry;

use super::compose::Part;
use super::fetch::terms_of;
use super::integrity;
use crate::remote::xet::compose::{known_chunk, parse_hash};
use crate::remote::{FileId, RemoteResult};

/// Whether two terms name the same chunks of the same xorb and the same length.
fn same_term(a: &FileDataSequenceEntry, b: &FileDataSequenceEntry) -> bool {
    (
        a.xorb_hash,
        a.chunk_index_start,
        a.chunk_index_end,
        a.unpacked_segment_bytes,
    ) == (
        b.xorb_hash,
        b.chunk_index_start,
        b.chunk_index_end,
        b.unpacked_segment_bytes,
    )
}

/// Refuse a composed file (`id`, `expected` bytes) whose terms as uploaded (`segments`) are
/// not what was composed (`parts`): each term either the next untouched base term as it is,
/// or a run of chunks, each known (`base`: by xorb and index, from the footers or the
/// whole-term read; `written`: the xorbs the composition stored) and equal to the next chunk
/// composed, adding up to the term's length; all of it adding up to `expected`.
pub fn check_written(
    segments: &[FileDataSequenceEntry],
    parts: &[Part],
    base: &HashMap<(MerkleHash, u32), (MerkleHash, u64)>,
    written: &HashMap<MerkleHash, Vec<(MerkleHash, u64)>>,
    id: &FileId,
    expected: u64,
) -> RemoteResult<()> {
    let bad = |msg: String| integrity(format!("composed file {}: {msg}", id.hash));
    if id.size != expected {
        return Err(bad(format!("{} bytes, expected {expected}", id.size)));
    }
    let mut next = parts.iter();
    let mut total = 0u64;
    for seg in segments {
        let len = u64::from(seg.unpacked_segment_bytes);
        match next.clone().next() {
            Some(Part::Term(t)) if same_term(t, seg) => {
                next.next();
                total += len;
                continue;
            }
            Some(Part::Term(_)) => {
                return Err(bad(format!(
                    "a term of xorb {} where an untouched term belongs",
                    seg.xorb_hash
                )));
            }
            _ => {}
        }
        let mut held = 0u64;
        for i in seg.chunk_index_start..seg.chunk_index_end {
            let c = known_chunk(written, base, &seg.xorb_hash, i).ok_or_else(|| {
                bad(format!(
                    "chunk {i} of xorb {} is neither the base's nor written",
                    seg.xorb_hash
                ))
            })?;
            if next.next() != Some(&Part::Chunk(c.0, c.1)) {
                return Err(bad(format!(
                    "chunk {i} of xorb {} is not the chunk composed there",
                    seg.xorb_hash
                )));
            }
            held += c.1;
        }
        if held != len {
            return Err(bad(format!(
                "a term of xorb {} claims {len} bytes but its chunks hold {held}",
                seg.xorb_hash
            )));
        }
        total += len;
    }
    if next.next().is_some() {
        return Err(bad("not everything composed was written".into()));
    }
    if total != expected {
        return Err(bad(format!("{total} bytes written, expected {expected}")));
    }
    Ok(())
}

/// Refuse a composed file unless its stored reconstruction is exactly the terms written
/// (`written`): the CAS registered the file as uploaded.
pub(super) async fn check_stored(
    client: &Arc<dyn Client>,
    id: &FileId,
    written: &[FileDataSequenceEntry],
) -> RemoteResult<()> {
    let hash = parse_hash(&id.hash)?;
    let stored = terms_of(client, &hash)
        .await
        .map_err(|e| integrity(format!("composed file {} was not stored: {e}", id.hash)))?;
    if stored.len() != written.len() || !stored.iter().zip(written).all(|(a, b)| same_term(a, b)) {
        return Err(integrity(format!(
            "composed file {} is stored as {} terms unlike the {} written",
            id.hash,
            stored.len(),
            written.len()
        )));
    }
    Ok(())
}
