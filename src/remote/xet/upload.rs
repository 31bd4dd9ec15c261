//! xet-core glue shared by every `Cas` built on xet-core's client (the local store and the
//! HTTP remote): uploading whole files through an upload session.

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use tokio::io::AsyncReadExt;
use xet_data::processing::configurations::TranslatorConfig;
use xet_data::processing::{FileUploadSession, Sha256Policy};

use super::xet_err;
use crate::remote::{FileId, RemoteError, RemoteResult, UploadItem, Uploaded};

/// Files of one upload batch processed at once, at most: each small file waits a round trip
/// for its global-dedup query (xet asks for every file's first chunk), so across a 50 ms link
/// an untar is bound by how many files are in flight, not by bandwidth.
const FILES_IN_FLIGHT: usize = 64;

/// Read size when streaming a staging file into the chunker.
const UPLOAD_BLOCK: usize = super::budget::UPLOAD_BLOCK as usize;

/// A spawned upload that stops when the batch that wants it is dropped (a timeout).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a read of `range` of `id` has bytes to return; an error if it runs past the end.
pub fn check_read(id: &FileId, range: &std::ops::Range<u64>) -> RemoteResult<bool> {
    if range.end > id.size {
        return Err(RemoteError::Other(format!(
            "read {range:?} past the end of a {} byte file",
            id.size
        )));
    }
    Ok(range.start < range.end)
}

/// `out`, read as bytes `range` of `id`, if it holds exactly that many bytes.
pub fn check_read_len(
    id: &FileId,
    range: &std::ops::Range<u64>,
    out: bytes::Bytes,
) -> RemoteResult<bytes::Bytes> {
    let want = range.end - range.start;
    if out.len() as u64 != want {
        return Err(RemoteError::Integrity(format!(
            "read {range:?} of {} returned {} bytes, expected {want}",
            id.hash,
            out.len()
        )));
    }
    Ok(out)
}

/// Store `items` in one upload session. The outer error fails the whole batch (nothing of it
/// may be committed); inner errors fail one file.
pub async fn upload_files(
    config: Arc<TranslatorConfig>,
    items: &[UploadItem<'_>],
) -> RemoteResult<Vec<RemoteResult<Uploaded>>> {
    // The memory budget's share for files being chunked: many small files at once, few
    // large ones (each holds its read buffer and up to a xorb of chunks).
    let budget = super::budget::upload_file_bytes(&config.ctx.config);
    let session = FileUploadSession::new(config).await.map_err(xet_err)?;
    // Each file on its own task, a few at a time: the cleaner does much of its work (dedup,
    // xorb assembly, compression) on the task that drives it, so files driven from one task
    // used one core for the whole batch.
    let jobs: Vec<(PathBuf, u64)> = items
        .iter()
        .map(|it| (it.path.to_path_buf(), it.len))
        .collect();
    let s = session.clone();
    let total_units = (budget as usize / BUFFER_UNIT).min(tokio::sync::Semaphore::MAX_PERMITS);
    let buffers = Arc::new(tokio::sync::Semaphore::new(total_units));
    let results: Vec<RemoteResult<Uploaded>> =
        futures::stream::iter(jobs.into_iter().map(move |(path, len)| {
            let (s, buffers) = (s.clone(), buffers.clone());
            async move {
                // The semaphore is never closed.
                let _buffer = buffers
                    .acquire_many_owned(buffer_units(len).min(total_units as u32))
                    .await
                    .map_err(RemoteError::other)?;
                let mut task = AbortOnDrop(tokio::spawn(upload_one(s, path, len)));
                (&mut task.0).await.map_err(RemoteError::other)?
            }
        }))
        .buffered(FILES_IN_FLIGHT)
        .collect()
        .await;
    // Finalize uploads the shard that makes the new files reconstructible; until it
    // succeeds none of them may be committed.
    session.finalize().await.map_err(xet_err)?;
    Ok(results)
}

/// The unit the upload share is counted in.
const BUFFER_UNIT: usize = 4 << 10;

/// Units a file of `len` bytes holds while it is chunked (at least one): its read buffer and
/// the chunks it collects until they fill a xorb.
fn buffer_units(len: u64) -> u32 {
    let per_file = (super::budget::XORB_BYTES + super::budget::UPLOAD_BLOCK) as usize;
    let bytes = (len as usize).clamp(1, per_file);
    bytes.div_ceil(BUFFER_UNIT) as u32
}

async fn upload_one(
    session: Arc<FileUploadSession>,
    path: PathBuf,
    len: u64,
) -> RemoteResult<Uploaded> {
    let item = UploadItem { path: &path, len };
    let mut file = tokio::fs::File::open(item.path).await?;
    let name: Arc<str> = Arc::from(item.path.to_string_lossy().as_ref());
    let (_id, mut cleaner) = session
        .start_clean(Some(name), Some(item.len), Sha256Policy::Skip)
        .map_err(xet_err)?;
    let mut remaining = item.len;
    let mut buf = vec![0u8; UPLOAD_BLOCK.min(item.len as usize).max(1)];
    while remaining > 0 {
        let want = buf.len().min(remaining as usize);
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(RemoteError::Other(format!(
                "{} is shorter than expected ({} bytes missing)",
                item.path.display(),
                remaining
            )));
        }
        cleaner.add_data(&buf[..n]).await.map_err(xet_err)?;
        remaining -= n as u64;
    }
    let (info, metrics) = cleaner.finish().await.map_err(xet_err)?;
    let size = info.file_size.unwrap_or(item.len);
    if size != item.len {
        return Err(RemoteError::Integrity(format!(
            "stored {size} bytes for a {} byte file",
            item.len
        )));
    }
    Ok(Uploaded {
        id: FileId {
            hash: info.hash,
            size,
        },
        new_bytes: metrics.new_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_file_fits_the_upload_share_and_small_files_share_it() {
        let mut c = xet_runtime::config::XetConfig::new();
        let memory = super::super::budget::MemoryBudget::default();
        memory.apply_xet(&mut c);
        let budget = (super::super::budget::upload_file_bytes(&c) as usize / BUFFER_UNIT) as u32;
        // A large file counts its read buffer and a xorb of chunks: the default budget
        // chunks as many at a time as its upload share holds (two).
        assert_eq!(
            budget / buffer_units(u64::MAX),
            memory.upload_files() as u32
        );
        assert_eq!(memory.upload_files(), 2);
        assert_eq!(buffer_units(0), 1);
        assert_eq!(buffer_units(1), 1);
        assert_eq!(buffer_units(BUFFER_UNIT as u64 + 1), 2);
        // Small files are not held to the count of large ones.
        assert!(budget / buffer_units(8 << 10) >= FILES_IN_FLIGHT as u32);
    }
}
