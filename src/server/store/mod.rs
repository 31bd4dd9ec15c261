//! Where `serve` keeps what the Xet CAS protocol stores: xorbs (chunk bytes), shards (which
//! chunks make each file), and the indexes that answer from them. One interface, two stores:
//!
//! - [`local`]: xet-core's `LocalClient` over a directory (`serve DIR`, the single-machine
//!   deployment; the store format `serve` has always had).
//! - [`object`]: xorbs and shards as objects of an object store (a directory or an S3
//!   bucket, see `objects.rs`), indexed in PostgreSQL, so any number of replicas serve them
//!   and clients can move bytes straight to and from the store through signed URLs.
//!
//! The routes (`cas.rs`) check what callers may see and shape the answers; a store only keeps
//! and finds bytes. Both hold the CAS invariant: a xorb is listed only once all of it is
//! stored and checked against its hash, and a file only once every xorb it names is.

pub mod chunks;
pub mod collect;
pub mod local;
pub mod object;

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_types::{FileChunkHashesResponse, FileRange};
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::metadata_shard::streaming_shard::MDBMinimalShard;

pub use crate::remote::local::{Located, LocatedTerm};
use crate::remote::xet::compose::ChunkLists;
use crate::remote::{FileId, RemoteError, RemoteResult};

/// Why a store would not take an upload: the client's fault (answered 400) or the store's.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] RemoteError),
}

/// An upload grant: where a client may PUT one xorb itself, and the headers it must send.
pub struct Grant {
    pub id: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// What came of committing a grant.
pub enum GrantCommit {
    /// The xorb is stored (now, or it was already).
    Stored,
    /// Nothing (or not the promised bytes) was uploaded for the grant: ask for a new one.
    NotUploaded,
}

#[async_trait]
pub trait ServedCas: Send + Sync {
    /// Size of stored file `hash`, `None` if the store does not know it.
    async fn file_size(&self, hash: &MerkleHash) -> RemoteResult<Option<u64>>;
    /// The whole chunks that hold bytes `range` of file `hash` (clamped to its size; `None`
    /// for all of it), with where they are stored; `None` when the range starts past the end.
    async fn locate(
        &self,
        hash: MerkleHash,
        range: Option<Range<u64>>,
    ) -> RemoteResult<Option<Located>>;
    /// Bytes `range` of file `id`, which must lie within it.
    async fn read_range(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes>;
    /// Bytes of stored xorb `xorb` (chunks and footer), `None` if it is not stored.
    async fn xorb_len(&self, xorb: &MerkleHash) -> RemoteResult<Option<u64>>;
    /// Bytes `range` of stored xorb `xorb`, as stored.
    async fn xorb_bytes(&self, xorb: &MerkleHash, range: Range<u64>) -> RemoteResult<Bytes>;
    /// A URL the object store itself answers ranged GETs of xorb `xorb` at, valid for a
    /// while; `None` where the server must answer them (a directory store).
    async fn xorb_url(&self, xorb: &MerkleHash) -> RemoteResult<Option<String>>;
    /// Whether xorb `xorb` is stored.
    async fn has_xorb(&self, xorb: &MerkleHash) -> RemoteResult<bool>;
    /// Check serialized xorb `body` (with or without its footer) against `hash` and store it,
    /// durably before this returns; whether it was new.
    async fn put_xorb(&self, hash: MerkleHash, body: Bytes) -> Result<bool, PutError>;
    /// The verification hash of each stored `(xorb, chunk range)`; an error if a xorb is
    /// missing or a range runs past its end.
    async fn range_hashes(
        &self,
        ranges: Vec<(MerkleHash, Range<u32>)>,
    ) -> RemoteResult<Vec<MerkleHash>>;
    /// Keep shard `body` (already parsed as `shard`, its xorbs checked stored) and index its
    /// files and global-dedup chunks.
    async fn put_shard(&self, body: Bytes, shard: &MDBMinimalShard) -> Result<(), PutError>;
    /// A stored shard that holds chunk `chunk`, for global dedup.
    async fn dedup_shard(&self, prefix: &str, chunk: &MerkleHash) -> RemoteResult<Option<Bytes>>;
    /// The chunk windows of file `hash` around `dirty` (xet-core's file-chunk-hashes answer).
    async fn file_chunk_hashes(
        &self,
        hash: &MerkleHash,
        dirty: Vec<FileRange>,
    ) -> RemoteResult<FileChunkHashesResponse>;
    /// File `hash`'s terms with the hash and size of every chunk of each.
    async fn chunk_lists(&self, hash: &MerkleHash) -> RemoteResult<Option<ChunkLists>>;
    /// An upload grant for xorb `hash` of `length` bytes whose CRC64-NVME is `crc`: `None`
    /// where the store cannot take uploads straight from clients.
    async fn grant(&self, hash: MerkleHash, length: u64, crc: u64) -> RemoteResult<Option<Grant>>;
    /// Check what was uploaded for grant `id` of xorb `hash` and store it as that xorb.
    async fn commit_grant(&self, hash: MerkleHash, id: &str) -> Result<GrantCommit, PutError>;
    /// Keep files `hashes` from collection for a commit about to name them; those that are
    /// no longer stored. A store that collects nothing has nothing to claim.
    async fn claim_files(&self, hashes: &[String]) -> RemoteResult<Vec<String>> {
        let _ = hashes;
        Ok(Vec::new())
    }
}
