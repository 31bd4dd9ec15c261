//! Composing an edited file from its base over the official CAS routes only: the
//! reconstruction queries (terms, and the fetch URLs of their chunks) and
//! `GET /v2/file-chunk-hashes/{file}`, which answers dirty byte ranges with chunk-aligned
//! windows to re-chunk, Merkle subtrees of the untouched chunks between them (`hashRanges`)
//! and the verification hash of every untouched term (`gapVerification`), but never a chunk
//! list.
//!
//! The new file is: the untouched terms as they are (with the verification hashes the CAS
//! gave), and around each window the chunks of the terms the window cuts. A term cut by a
//! window keeps its chunks on either side by reference, but its kept parts need verification
//! hashes of their own, which only their chunk hashes give, and the route hands out none.
//! Every stored xorb ends with a footer listing each chunk's hash, packed end and unpacked end
//! (`remote::xet::xorb_footer`): one suffix-range fetch of each touched xorb gives them (~40 bytes
//! a chunk). A footer counts only if its chunks hash to the xorb's name (so every hash and
//! length in it is the xorb's) and its lengths add up to the terms the reconstruction names.
//! Chunk *bytes* are then needed only for the windows: a ranged reconstruction of each edit's
//! neighbourhood (±512 KiB) is asked alongside the route and fetched alongside the footers,
//! and a window reaching past it gets its remaining chunks by the footer's packed offsets.
//! Every window chunk's bytes must hash to the footer's hash for it.
//!
//! Without a usable footer (none, refused, unparsable, or not agreeing with the
//! reconstruction) the composition reads the touched terms whole instead, chunk by chunk,
//! and hashes them here: bounded by the size of the terms touched (a fresh upload's terms are
//! up to a xorb, 64 MiB), not by the size of the file. xet-core's `upload_ranges` and
//! huggingface.js snap edits to term boundaries likewise, except that 1.8.0's `upload_ranges`
//! drops the rest of a term its window ends inside; here every cut term's tail is kept
//! (`windows_widen_to_the_terms_they_touch`, and `tests/remote_compose.rs` byte-compares
//! files whose windows end inside 64 MiB terms).
//!
//! Only the windows are re-chunked (each starts at a chunk boundary, and the CAS extends it
//! past the edits to where the chunker re-synchronises); their chunks are packed into new
//! xorbs unless the base already holds them. The file's identity is the merge of the CAS's
//! gap subtrees with the subtrees of the new windows' chunks, the way the route intends;
//! the same merge with the base's own window chunks must give the base's identity, which
//! checks the CAS's answer and our reading of it before anything is stored.
//!
//! Before the result is returned it is checked as `compose::verify_written` checks a chunk
//! list composition, as far as these routes allow: every term written is either an untouched
//! base term, in order, or a run of chunks known by hash and length (the base's, from the
//! footers or the whole-term read, or those of the xorbs just written), matching one by one
//! the chunks composed, with lengths adding up to the expected size; and the stored
//! reconstruction (one query) is exactly the terms written. The windows are not read back:
//! a xorb upload is content-addressed (the CAS checks its name against its chunks), so the
//! chunks named are the bytes sent, and the terms check proves the file was registered as
//! written.

mod compose;
mod fetch;
mod footers;
#[cfg(test)]
mod tests;
mod verify;
mod windows;

pub use compose::{compose, Part};
pub use fetch::Fetched;
pub use footers::{check_footer, Footer};
pub use verify::check_written;
pub use windows::{assign, check_answer, dirty_ranges, merged_hash, read_ranges};

use std::ops::Range;
use std::sync::OnceLock;

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_types::FileChunkHashesResponse;
use xet_core_structures::merklehash::MerkleHash;

use crate::remote::{RemoteError, RemoteResult};

/// Where `GET /v2/file-chunk-hashes/{file}` is asked, and stored xorb bytes fetched raw.
#[async_trait]
pub trait ChunkHashes: Send + Sync {
    /// The answer for `dirty` (sorted, disjoint, non-empty byte ranges of `file`); `None` when
    /// the CAS does not offer the route.
    async fn file_chunk_hashes(
        &self,
        file: &MerkleHash,
        dirty: &[Range<u64>],
    ) -> RemoteResult<Option<FileChunkHashesResponse>>;

    /// `GET url` (a fetch URL from a reconstruction: signed, no credentials) with
    /// `Range: range`, as it is stored (a xorb's footer is not chunk data, which is all
    /// `Client::get_file_term_data` decodes).
    async fn get_range(&self, url: &str, range: &str) -> RemoteResult<Bytes> {
        get_range(url, range).await
    }
}

/// The client for [`get_range`]: one per process, so that its connections are reused.
fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap_or_default()
    })
}

/// `GET url` with `Range: range`: the body of a 206. A server ignoring the range (200) is
/// refused rather than read: its body is the whole object.
pub async fn get_range(url: &str, range: &str) -> RemoteResult<Bytes> {
    let r = http()
        .get(url)
        .header(reqwest::header::RANGE, range)
        .send()
        .await
        .map_err(|e| RemoteError::Other(format!("fetch {range}: {e}")))?;
    let status = r.status();
    if status != reqwest::StatusCode::PARTIAL_CONTENT {
        return Err(RemoteError::Other(format!("fetch {range}: HTTP {status}")));
    }
    r.bytes()
        .await
        .map_err(|e| RemoteError::Other(format!("fetch {range}: {e}")))
}
fn integrity(msg: impl std::fmt::Display) -> RemoteError {
    RemoteError::Integrity(format!("window compose: {msg}"))
}
