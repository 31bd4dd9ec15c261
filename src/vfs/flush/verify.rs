//! Paranoid mode: every commit is read back from the store and compared byte for byte with
//! what was committed, and clean staging copies are dropped so that every reopen is sparse.

use std::os::unix::fs::FileExt;

use crate::remote::FileId;

use super::batch::{Prepared, Route};
use super::Flusher;

impl Flusher {
    /// Paranoid mode: read `body` back from the store and compare it with staging (holes:
    /// with the base they mirror). Stops quietly if the file changes meanwhile.
    pub(super) async fn verify_commit(&self, p: &Prepared, body: &FileId) -> Result<(), String> {
        const PIECE: u64 = 4 << 20;
        let old_base = match &p.route {
            Route::Compose { base, .. } => Some(base.clone()),
            Route::Whole => None,
        };
        let mut off = 0;
        while off < body.size {
            let end = (off + PIECE).min(body.size);
            let stored = self
                .cas
                .read_range(body, off..end)
                .await
                .map_err(|e| e.to_string())?;
            let local = p.staged.with_io(|io| {
                if io.state.generation() != p.generation {
                    return Ok(None);
                }
                let mut buf = vec![0u8; (end - off) as usize];
                io.file.read_exact_at(&mut buf, off)?;
                Ok::<_, std::io::Error>(Some((buf, io.state.holes(off..end))))
            });
            let Some((mut buf, holes)) = local.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            for h in holes {
                let base = old_base
                    .as_ref()
                    .ok_or_else(|| format!("hole {h:?} in a whole-file upload"))?;
                let data = self
                    .cas
                    .read_range(base, h.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                buf[(h.start - off) as usize..(h.end - off) as usize].copy_from_slice(&data);
            }
            if buf[..] != stored[..] {
                let at = buf.iter().zip(stored.iter()).position(|(a, b)| a != b);
                return Err(format!("bytes differ in {off}..{end} (first at {at:?})"));
            }
            off = end;
        }
        Ok(())
    }
}
