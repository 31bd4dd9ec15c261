//! Helpers for the tests of `remote` and of the layers above it.

use crate::remote::{Cas, Entry, EntryKind, FileId, Meta, UploadItem, Uploaded};

/// Incompressible bytes, so that big files really span several xorbs and segments.
pub(crate) fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A file entry at `path` holding `size` bytes of content `hash`.
pub(crate) fn file_entry(path: &str, hash: &str, size: u64, meta: Meta) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File,
        content: Some(FileId {
            hash: hash.into(),
            size,
        }),
        target: None,
        meta,
        link: None,
    }
}

/// Upload the file at `path` (`len` bytes) alone in one batch; panics on failure.
pub(crate) async fn upload_one(cas: &dyn Cas, path: &std::path::Path, len: u64) -> Uploaded {
    cas.upload_batch(vec![UploadItem { path, len }])
        .await
        .unwrap()
        .remove(0)
        .unwrap()
}
