//! One memory budget (`--memory-mib`) for everything a mount holds file bytes in: the read
//! cache and read-ahead, the WAN read path's plan and xorb-index caches and its chunk-cache
//! writes in flight, xet-core's download buffers, and uploads (files being chunked and xorbs
//! in flight). Each consumer gets a fixed share; what it holds is bounded by its share, so
//! the mount's memory is the process's fixed cost (code, runtime, catalog: about 20 MiB)
//! plus at most the budget.
//!
//! Uploads go through xet-core's upload session, which keeps every file being chunked in a
//! buffer of up to one xorb and hands full xorbs to one upload at a time (one uploading, one
//! serialized and waiting, one filling): its cost is counted in whole xorbs, and xorbs are cut
//! at [`XORB_BYTES`] (xet-core's default, 64 MiB, would make that floor alone 192 MiB).

use xet_runtime::config::XetConfig;
use xet_runtime::utils::ByteSize;

/// The default budget, in MiB: with the process's fixed cost, a mount stays under 256 MiB
/// of RSS whatever it reads and writes, and its read-ahead share (24 MiB) keeps a 50 ms
/// round trip busy (bench/wan.sh: 10 MiB at a 160 MiB budget halved cold sequential reads).
pub const DEFAULT_MIB: u64 = 192;
/// The smallest budget accepted: below it the upload share would not hold the session's xorbs
/// and one large file.
pub const MIN_MIB: u64 = 150;
/// Largest xorb uploads write (set in xet-core's config by [`MemoryBudget::apply_xet`]).
pub const XORB_BYTES: u64 = 16 << 20;
/// Xorbs an upload session holds however many files it uploads: one uploading, one
/// serialized and waiting for it, one filling.
pub const XORBS_IN_FLIGHT: u64 = 3;
/// Read size when streaming a staging file into the chunker.
pub const UPLOAD_BLOCK: u64 = 4 << 20;

/// How the budget is split; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    total: u64,
}

impl MemoryBudget {
    /// A budget of `mib` MiB; an error names the least accepted.
    pub fn from_mib(mib: u64) -> Result<Self, String> {
        if mib < MIN_MIB {
            return Err(format!(
                "a memory budget of {mib} MiB is too small; give --memory-mib at least {MIN_MIB}"
            ));
        }
        let total = mib
            .checked_mul(1 << 20)
            .ok_or_else(|| format!("a memory budget of {mib} MiB is too large"))?;
        Ok(MemoryBudget { total })
    }

    /// The budget [`Self::apply_xet`] configured `c` with: it travels to the remotes inside
    /// xet-core's config, which every remote is opened with. A config the budget did not set
    /// (xet-core's defaults) reads as the budget its download buffer limit implies.
    pub fn of_xet(c: &XetConfig) -> Self {
        let total = c
            .reconstruction
            .download_buffer_limit
            .as_u64()
            .saturating_mul(32)
            .max(MIN_MIB << 20);
        MemoryBudget { total }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The read cache of committed file bodies: 1/4.
    pub fn read_cache(&self) -> u64 {
        self.total / 4
    }

    /// Read-ahead fetches in flight, before their blocks land in the cache: 1/8. It is also
    /// the largest window of one stream (see `vfs::read`).
    pub fn readahead(&self) -> u64 {
        self.total / 8
    }

    /// Cached reconstruction plans of the WAN read path: 1/32.
    pub fn plans(&self) -> u64 {
        self.total / 32
    }

    /// Cached xorb indexes (chunk offsets) of the WAN read path: 1/32.
    pub fn indexes(&self) -> u64 {
        self.total / 32
    }

    /// Downloaded chunks waiting to be written to the on-disk chunk cache: 1/16 (half for the
    /// fetched chunks waiting for a put, half for the puts' copies being written). At 1/32 a
    /// 4 MiB fetch took the whole room at the default budget, so each fetch waited for the
    /// previous one's write.
    pub fn chunk_cache_writes(&self) -> u64 {
        self.total / 16
    }

    /// xet-core's download buffers (ranged reconstructions, only the WAN read path's
    /// fallback): 1/32.
    pub fn download_buffers(&self) -> u64 {
        self.total / 32
    }

    /// Uploads: what the shares above leave.
    pub fn uploads(&self) -> u64 {
        self.total
            - self.read_cache()
            - self.readahead()
            - self.plans()
            - self.indexes()
            - self.chunk_cache_writes()
            - self.download_buffers()
    }

    /// Large files chunked at once: each holds up to a xorb and a read block; what the
    /// session's own xorbs leave of the upload share (at least one file).
    pub fn upload_files(&self) -> u64 {
        let per_file = XORB_BYTES + UPLOAD_BLOCK;
        (self.uploads().saturating_sub(XORBS_IN_FLIGHT * XORB_BYTES) / per_file).max(1)
    }

    /// Set xet-core's memory settings from the budget: download buffers, xorb size, one xorb
    /// upload at a time, files chunked at once (read back by `upload_files`).
    pub fn apply_xet(&self, c: &mut XetConfig) {
        let d = self.download_buffers();
        c.reconstruction.download_buffer_size = ByteSize::new(d / 2);
        c.reconstruction.download_buffer_perfile_size = ByteSize::new(d / 4);
        c.reconstruction.download_buffer_limit = ByteSize::new(d);
        c.xorb.simulation_max_bytes = Some(ByteSize::new(XORB_BYTES));
        c.client.ac_initial_upload_concurrency = 1;
        c.client.ac_max_upload_concurrency = 1;
        c.data.max_concurrent_file_ingestion = self.upload_files() as usize;
    }

    /// One line for the log: the shares in MiB.
    pub fn describe(&self) -> String {
        let m = |b: u64| b >> 20;
        format!(
            "memory budget {} MiB: read cache {}, read-ahead {}, plans {}, xorb indexes {}, chunk-cache writes {}, download buffers {}, uploads {} ({} large file(s) at once, {} xorbs of {} MiB in flight)",
            m(self.total),
            m(self.read_cache()),
            m(self.readahead()),
            m(self.plans()),
            m(self.indexes()),
            m(self.chunk_cache_writes()),
            m(self.download_buffers()),
            m(self.uploads()),
            self.upload_files(),
            XORBS_IN_FLIGHT,
            m(XORB_BYTES),
        )
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::from_mib(DEFAULT_MIB).expect("the default budget is valid")
    }
}

/// Bytes of files an upload session chunks at once under the budget that configured `c`
/// ([`MemoryBudget::apply_xet`]); each file counts up to a xorb and a read block.
pub fn upload_file_bytes(c: &XetConfig) -> u64 {
    c.data.max_concurrent_file_ingestion.max(1) as u64 * (XORB_BYTES + UPLOAD_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_add_up_to_the_budget_and_uploads_fit_theirs() {
        for mib in [MIN_MIB, 160, DEFAULT_MIB, 256, 1024, 1 << 20] {
            let b = MemoryBudget::from_mib(mib).unwrap();
            let sum = b.read_cache()
                + b.readahead()
                + b.plans()
                + b.indexes()
                + b.chunk_cache_writes()
                + b.download_buffers()
                + b.uploads();
            assert_eq!(sum, b.total(), "{mib} MiB");
            // The upload session's xorbs and the files it chunks stay within the upload share
            // (one large file is always admitted, so the smallest budget must hold it too).
            let uploads =
                XORBS_IN_FLIGHT * XORB_BYTES + b.upload_files() * (XORB_BYTES + UPLOAD_BLOCK);
            assert!(uploads <= b.uploads(), "{mib} MiB: uploads need {uploads}");
            let mut c = XetConfig::new();
            b.apply_xet(&mut c);
            assert_eq!(
                upload_file_bytes(&c),
                b.upload_files() * (XORB_BYTES + UPLOAD_BLOCK)
            );
            assert!(c.reconstruction.download_buffer_limit.as_u64() <= b.download_buffers());
            assert_eq!(MemoryBudget::of_xet(&c), b, "{mib} MiB");
        }
    }

    #[test]
    fn a_budget_below_the_least_is_refused() {
        let e = MemoryBudget::from_mib(MIN_MIB - 1).unwrap_err();
        assert!(e.contains("--memory-mib at least 150"), "{e}");
        assert!(MemoryBudget::from_mib(u64::MAX).is_err());
        assert_eq!(MemoryBudget::default().total(), DEFAULT_MIB << 20);
    }
}
