//! The served CAS in one directory: xet-core's `LocalClient` (xorb files, shard files and its
//! own index), read directly by `ChunkReader`. Uploads are checked by `LocalClient` (a xorb
//! is rebuilt from its chunks and must hash to its name) and fsynced before they are answered.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_types::{FileChunkHashesResponse, FileRange};
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::metadata_shard::streaming_shard::MDBMinimalShard;
use xet_core_structures::xorb_object::SerializedXorbObject;

use super::{Grant, GrantCommit, Located, PutError, ServedCas};
use crate::remote::local::XetCas;
use crate::remote::xet::compose::{ChunkLists, ChunkMap};
use crate::remote::{Cas, FileId, RemoteError, RemoteResult};

fn xet(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Other(format!("xet: {e}"))
}

#[async_trait]
impl ServedCas for XetCas {
    async fn file_size(&self, hash: &MerkleHash) -> RemoteResult<Option<u64>> {
        match self.reader().body_size(*hash).await {
            Ok(n) => Ok(Some(n)),
            Err(RemoteError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn locate(
        &self,
        hash: MerkleHash,
        range: Option<Range<u64>>,
    ) -> RemoteResult<Option<Located>> {
        self.reader().locate(hash, range).await
    }

    async fn read_range(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes> {
        Cas::read_range(self, id, range).await
    }

    async fn xorb_len(&self, xorb: &MerkleHash) -> RemoteResult<Option<u64>> {
        if !self.reader().has_xorb(xorb) {
            return Ok(None);
        }
        self.reader().raw_len(xorb).map(Some)
    }

    async fn xorb_bytes(&self, xorb: &MerkleHash, range: Range<u64>) -> RemoteResult<Bytes> {
        let reader = self.reader().clone();
        let xorb = *xorb;
        tokio::task::spawn_blocking(move || reader.raw(&xorb, range))
            .await
            .map_err(RemoteError::other)?
    }

    async fn xorb_url(&self, _: &MerkleHash) -> RemoteResult<Option<String>> {
        Ok(None)
    }

    async fn has_xorb(&self, xorb: &MerkleHash) -> RemoteResult<bool> {
        Ok(self.reader().has_xorb(xorb))
    }

    async fn put_xorb(&self, hash: MerkleHash, body: Bytes) -> Result<bool, PutError> {
        let existed = self.reader().has_xorb(&hash);
        // `footer_start: None` makes `LocalClient` rebuild the footer from the chunks and
        // refuse a body that does not hash to `hash`.
        let obj = SerializedXorbObject {
            raw_num_bytes: body.len() as u64,
            serialized_data: body.to_vec(),
            hash,
            num_chunks: 0,
            footer_start: None,
        };
        let client = self.client();
        let permit = client.acquire_upload_permit().await.map_err(xet)?;
        client
            .upload_xorb("default", obj, None, permit)
            .await
            .map_err(|e| PutError::Refused(format!("xorb {} refused: {e}", hash.hex())))?;
        self.durable().xorb(&hash).await?;
        Ok(!existed)
    }

    async fn range_hashes(
        &self,
        ranges: Vec<(MerkleHash, Range<u32>)>,
    ) -> RemoteResult<Vec<MerkleHash>> {
        XetCas::range_hashes(self, ranges).await
    }

    async fn put_shard(&self, body: Bytes, _: &MDBMinimalShard) -> Result<(), PutError> {
        let client = self.client();
        let permit = client.acquire_upload_permit().await.map_err(xet)?;
        let stored = client
            .upload_shard(body, permit, None)
            .await
            .map_err(|e| PutError::Refused(format!("shard refused: {e}")))?;
        self.durable().shard(stored).await?;
        Ok(())
    }

    async fn dedup_shard(&self, prefix: &str, chunk: &MerkleHash) -> RemoteResult<Option<Bytes>> {
        self.client()
            .query_for_global_dedup_shard(prefix, chunk)
            .await
            .map_err(xet)
    }

    async fn file_chunk_hashes(
        &self,
        hash: &MerkleHash,
        dirty: Vec<FileRange>,
    ) -> RemoteResult<FileChunkHashesResponse> {
        self.client()
            .get_file_chunk_hashes(hash, dirty)
            .await
            .map_err(|e| RemoteError::NotFound(e.to_string()))
    }

    async fn chunk_lists(&self, hash: &MerkleHash) -> RemoteResult<Option<ChunkLists>> {
        self.chunk_map().chunk_lists(hash).await
    }

    async fn grant(&self, _: MerkleHash, _: u64, _: u64) -> RemoteResult<Option<Grant>> {
        // Clients upload through `/v1/xorbs`: the bytes come to this process either way.
        Ok(None)
    }

    async fn commit_grant(&self, _: MerkleHash, _: &str) -> Result<GrantCommit, PutError> {
        Ok(GrantCommit::NotUploaded)
    }
}
