//! The served CAS in an object store, indexed in PostgreSQL (see `pg/cas_index.rs`), so any
//! number of replicas serve it. Objects:
//!
//! ```text
//! xorbs/<hash>    a xorb as stored: its chunks, then the footer rebuilt from them
//! shards/<hash>   a shard as re-serialized here (its hash is of these bytes)
//! grants/<id>     what a client uploaded for an upload grant, until the grant is committed
//! ```
//!
//! Order of writes: an object first, then its index row. A crash between the two leaves an
//! object nothing names (collected later), never a row naming a missing or partial object.
//! Objects are written whole (S3 PUTs; the directory store renames a finished temporary
//! file), so a reader never sees part of one.
//!
//! A grant upload is checked before it becomes a xorb: its length and CRC64-NVME must be what
//! the grant promised (the store also refuses a PUT whose checksum does not match), and its
//! chunks must hash to the xorb's name. That check reads the upload back once; those bytes
//! are counted apart from client traffic (`xetmount_serve_verify_bytes_total`).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use xet_client::cas_client::chunk_window_builder::build_file_chunk_hashes_response;
use xet_client::cas_types::{FileChunkHashesResponse, FileRange};
use xet_core_structures::merklehash::{HashedWrite, MerkleHash};
use xet_core_structures::metadata_shard::chunk_verification::range_hash_from_chunks;
use xet_core_structures::metadata_shard::file_structs::MDBFileInfo;
use xet_core_structures::metadata_shard::streaming_shard::MDBMinimalShard;

use super::chunks::{self, Footer};
use super::{Grant, GrantCommit, Located, PutError, ServedCas};
use crate::lru::Lru;
use crate::remote::xet::compose::ChunkLists;
use crate::remote::{FileId, RemoteError, RemoteResult};
use crate::server::objects::{crc64nvme, crc64nvme_value_header, Objects};
use crate::server::pg::cas_index::{CasIndex, IndexedFile};

/// Footers kept in memory (each ~50 bytes per chunk, ~1,000 chunks for a full xorb).
const FOOTERS: u64 = 1024;
/// File descriptions kept in memory (a few KiB for a multi-GiB file).
const FILES: u64 = 4096;
/// How long a signed GET or an upload grant's PUT URL stays valid.
pub const URL_TTL: Duration = Duration::from_secs(3600);

pub(super) fn xorb_key(h: &MerkleHash) -> String {
    format!("xorbs/{}", h.hex())
}

pub(super) fn shard_key(h: &str) -> String {
    format!("shards/{h}")
}

pub(super) fn grant_key(id: &str) -> String {
    format!("grants/{id}")
}

pub struct ObjectCas {
    pub(super) objects: Arc<Objects>,
    pub(super) index: CasIndex,
    pub(super) footers: Mutex<Lru<MerkleHash, Arc<Footer>>>,
    pub(super) files: Mutex<Lru<MerkleHash, Arc<MDBFileInfo>>>,
    /// Bytes read back from the store to check grant uploads.
    verify_bytes: Counter,
}

impl ObjectCas {
    pub fn new(objects: Arc<Objects>, index: CasIndex, verify_bytes: Counter) -> Self {
        ObjectCas {
            objects,
            index,
            footers: Mutex::new(Lru::new(FOOTERS)),
            files: Mutex::new(Lru::new(FILES)),
            verify_bytes,
        }
    }

    pub fn objects(&self) -> &Arc<Objects> {
        &self.objects
    }

    async fn footer(&self, h: &MerkleHash) -> RemoteResult<Arc<Footer>> {
        if let Some(f) = self.footers.lock().get(h).cloned() {
            return Ok(f);
        }
        let (len, bytes) = self
            .index
            .xorb(&h.hex())
            .await?
            .ok_or_else(|| RemoteError::NotFound(format!("xorb {}", h.hex())))?;
        let f = Arc::new(Footer::parse(len, &bytes)?);
        self.footers.lock().insert(*h, f.clone(), 1);
        Ok(f)
    }

    /// The footers of every xorb file `info` names, by hash: those not in memory in one
    /// query (a file of many xorbs costs one round trip to the database, not one each).
    async fn footers_of(
        &self,
        info: &MDBFileInfo,
    ) -> RemoteResult<std::collections::HashMap<MerkleHash, Arc<Footer>>> {
        let mut out = std::collections::HashMap::new();
        let mut missing = Vec::new();
        {
            let mut cached = self.footers.lock();
            for s in &info.segments {
                if out.contains_key(&s.xorb_hash) {
                    continue;
                }
                match cached.get(&s.xorb_hash).cloned() {
                    Some(f) => {
                        out.insert(s.xorb_hash, f);
                    }
                    None if !missing.contains(&s.xorb_hash) => missing.push(s.xorb_hash),
                    None => {}
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let wanted: Vec<String> = missing.iter().map(MerkleHash::hex).collect();
        for (hex, len, bytes) in self.index.xorbs(&wanted).await? {
            let h = MerkleHash::from_hex(&hex)
                .map_err(|_| RemoteError::Integrity(format!("the index names xorb {hex:?}")))?;
            let f = Arc::new(Footer::parse(len, &bytes)?);
            self.footers.lock().insert(h, f.clone(), 1);
            out.insert(h, f);
        }
        if let Some(h) = missing.iter().find(|h| !out.contains_key(h)) {
            return Err(RemoteError::NotFound(format!("xorb {}", h.hex())));
        }
        Ok(out)
    }

    async fn file(&self, h: &MerkleHash) -> RemoteResult<Option<Arc<MDBFileInfo>>> {
        if let Some(f) = self.files.lock().get(h).cloned() {
            return Ok(Some(f));
        }
        let Some((_, bytes)) = self.index.file(&h.hex()).await? else {
            return Ok(None);
        };
        let info = Arc::new(decode_file(&h.hex(), &bytes)?);
        self.files.lock().insert(*h, info.clone(), 1);
        Ok(Some(info))
    }

    async fn known_file(&self, h: &MerkleHash) -> RemoteResult<Arc<MDBFileInfo>> {
        self.file(h)
            .await?
            .ok_or_else(|| RemoteError::NotFound(format!("file {}", h.hex())))
    }

    /// Store checked xorb bytes and index them; whether the xorb was new.
    async fn keep(&self, hash: &MerkleHash, checked: chunks::Checked) -> RemoteResult<bool> {
        let footer = checked.stored.slice(checked.footer_at..);
        let len = checked.stored.len() as u64;
        self.objects.put(&xorb_key(hash), checked.stored).await?;
        self.index.add_xorb(&hash.hex(), len, &footer).await
    }
}

/// File `hex`'s description as the index keeps it.
pub(super) fn decode_file(hex: &str, bytes: &[u8]) -> RemoteResult<MDBFileInfo> {
    MDBFileInfo::deserialize(&mut &bytes[..])
        .ok()
        .flatten()
        .ok_or_else(|| {
            RemoteError::Integrity(format!("the index's description of file {hex} is bad"))
        })
}

/// The distinct xorbs file `info` uses.
pub(super) fn xorbs_of(info: &MDBFileInfo) -> Vec<String> {
    let mut out: Vec<String> = info.segments.iter().map(|s| s.xorb_hash.hex()).collect();
    out.sort();
    out.dedup();
    out
}

/// Check `body` against `hash` off the runtime's threads (it hashes every chunk).
async fn check(hash: MerkleHash, body: Bytes) -> Result<chunks::Checked, PutError> {
    tokio::task::spawn_blocking(move || chunks::check_xorb(&hash, &body))
        .await
        .map_err(RemoteError::other)?
        .map_err(PutError::Refused)
}

#[async_trait]
impl ServedCas for ObjectCas {
    async fn file_size(&self, hash: &MerkleHash) -> RemoteResult<Option<u64>> {
        Ok(self.file(hash).await?.map(|f| f.file_size()))
    }

    async fn locate(
        &self,
        hash: MerkleHash,
        range: Option<Range<u64>>,
    ) -> RemoteResult<Option<Located>> {
        let info = self.known_file(&hash).await?;
        let footers = self.footers_of(&info).await?;
        chunks::locate(
            &info,
            |h| {
                footers
                    .get(h)
                    .map(|f| f.as_ref())
                    .ok_or_else(|| RemoteError::NotFound(format!("xorb {}", h.hex())))
            },
            range,
        )
    }

    async fn read_range(&self, id: &FileId, range: Range<u64>) -> RemoteResult<Bytes> {
        if !crate::remote::xet::check_read(id, &range)? {
            return Ok(Bytes::new());
        }
        let hash = MerkleHash::from_hex(&id.hash)
            .map_err(|_| RemoteError::NotFound(format!("{} is not a hash", id.hash)))?;
        let Some(located) = self.locate(hash, Some(range.clone())).await? else {
            return Ok(Bytes::new());
        };
        let mut out = BytesMut::new();
        for t in &located.terms {
            let packed = self
                .objects
                .get_range(&xorb_key(&t.xorb), t.packed.clone())
                .await?;
            chunks::unpack(&packed, t.unpacked_len, &mut out)?;
        }
        let at = located.offset_into_first as usize;
        let want = (range.end - range.start) as usize;
        if out.len() < at + want {
            return Err(RemoteError::Integrity(format!(
                "file {} holds fewer bytes than its description",
                id.hash
            )));
        }
        let out = out.freeze().slice(at..at + want);
        crate::remote::xet::check_read_len(id, &range, out)
    }

    async fn xorb_len(&self, xorb: &MerkleHash) -> RemoteResult<Option<u64>> {
        match self.footer(xorb).await {
            Ok(f) => Ok(Some(f.len)),
            Err(RemoteError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn xorb_bytes(&self, xorb: &MerkleHash, range: Range<u64>) -> RemoteResult<Bytes> {
        self.objects.get_range(&xorb_key(xorb), range).await
    }

    async fn xorb_url(&self, xorb: &MerkleHash) -> RemoteResult<Option<String>> {
        self.objects.presigned_get(&xorb_key(xorb), URL_TTL).await
    }

    async fn has_xorb(&self, xorb: &MerkleHash) -> RemoteResult<bool> {
        // The index, never the footer cache: another replica may have collected the xorb,
        // and a client told it is stored would not upload it again.
        self.index.has_xorb(&xorb.hex()).await
    }

    async fn put_xorb(&self, hash: MerkleHash, body: Bytes) -> Result<bool, PutError> {
        if self.has_xorb(&hash).await? {
            return Ok(false);
        }
        let checked = check(hash, body).await?;
        Ok(self.keep(&hash, checked).await?)
    }

    async fn range_hashes(
        &self,
        ranges: Vec<(MerkleHash, Range<u32>)>,
    ) -> RemoteResult<Vec<MerkleHash>> {
        let mut out = Vec::with_capacity(ranges.len());
        for (xorb, chunks) in ranges {
            let f = self.footer(&xorb).await?;
            out.push(range_hash_from_chunks(f.chunk_hashes(&chunks)?));
        }
        Ok(out)
    }

    async fn put_shard(&self, _: Bytes, shard: &MDBMinimalShard) -> Result<(), PutError> {
        // Stored as re-serialized here, under the hash of those bytes (as the Hub's CAS does),
        // so a client's bytes beyond what the shard means are not kept.
        let with_verification = (0..shard.num_files())
            .all(|i| shard.file(i).is_some_and(|f| f.contains_verification()));
        let mut bytes = Vec::with_capacity(shard.serialized_size(with_verification));
        let mut w = HashedWrite::new(&mut bytes);
        shard
            .serialize(&mut w, with_verification, None)
            .map_err(|e| PutError::Refused(format!("shard refused: {e}")))?;
        std::io::Write::flush(&mut w).map_err(RemoteError::from)?;
        let shard_hash = w.hash().hex();
        let mut files = Vec::with_capacity(shard.num_files());
        for i in 0..shard.num_files() {
            let f = shard.file(i).expect("index below num_files");
            let mut info = Vec::with_capacity(f.byte_size(true));
            f.serialize(&mut info, true).map_err(RemoteError::from)?;
            let size = (0..f.num_entries())
                .map(|k| u64::from(f.entry(k).unpacked_segment_bytes))
                .sum();
            let mut xorbs: Vec<String> = (0..f.num_entries())
                .map(|k| f.entry(k).xorb_hash.hex())
                .collect();
            xorbs.sort();
            xorbs.dedup();
            files.push(IndexedFile {
                hash: f.file_hash().hex(),
                size,
                info,
                xorbs,
            });
        }
        let described: Vec<String> = (0..shard.num_xorb())
            .filter_map(|i| shard.xorb(i))
            .map(|x| x.xorb_hash().hex())
            .collect();
        let dedup: Vec<String> = shard
            .global_dedup_eligible_chunks()
            .iter()
            .map(|h| h.hex())
            .collect();
        self.objects
            .put(&shard_key(&shard_hash), Bytes::from(bytes))
            .await?;
        self.index
            .add_shard(&shard_hash, &files, &described, &dedup)
            .await?
            .map_err(|x| PutError::Refused(format!("shard names xorb {x} which is not stored")))
    }

    async fn dedup_shard(&self, _: &str, chunk: &MerkleHash) -> RemoteResult<Option<Bytes>> {
        let Some(shard) = self.index.dedup(&chunk.hex()).await? else {
            return Ok(None);
        };
        if !self.index.touch_shard(&shard).await? {
            return Ok(None);
        }
        self.objects.get(&shard_key(&shard)).await
    }

    async fn file_chunk_hashes(
        &self,
        hash: &MerkleHash,
        dirty: Vec<FileRange>,
    ) -> RemoteResult<FileChunkHashesResponse> {
        let info = self.known_file(hash).await?;
        let lists = self.lists(&info).await?;
        build_file_chunk_hashes_response(&info, dirty, lists.into_iter().flatten())
            .map_err(|e| RemoteError::Other(format!("chunk windows of {}: {e}", hash.hex())))
    }

    async fn chunk_lists(&self, hash: &MerkleHash) -> RemoteResult<Option<ChunkLists>> {
        let Some(info) = self.file(hash).await? else {
            return Ok(None);
        };
        let chunks = self.lists(&info).await?;
        Ok(Some(ChunkLists {
            segments: info.segments.clone(),
            chunks,
        }))
    }

    async fn grant(&self, hash: MerkleHash, length: u64, crc: u64) -> RemoteResult<Option<Grant>> {
        if !self.objects.signs() {
            return Ok(None);
        }
        let id = crate::server::auth::random_id();
        let Some((url, headers)) = self
            .objects
            .presigned_put(&grant_key(&id), URL_TTL, &crc64nvme_value_header(crc))
            .await?
        else {
            return Ok(None);
        };
        self.index.add_grant(&id, &hash.hex(), length, crc).await?;
        Ok(Some(Grant { id, url, headers }))
    }

    async fn claim_files(&self, hashes: &[String]) -> RemoteResult<Vec<String>> {
        self.index.claim_files(hashes).await
    }

    async fn commit_grant(&self, hash: MerkleHash, id: &str) -> Result<GrantCommit, PutError> {
        let Some(g) = self.index.grant(id).await? else {
            return Ok(GrantCommit::NotUploaded);
        };
        if g.xorb != hash.hex() {
            return Ok(GrantCommit::NotUploaded);
        }
        let key = grant_key(id);
        let done = |this: &Self| {
            let key = key.clone();
            let objects = this.objects.clone();
            let index = this.index.clone();
            let id = id.to_string();
            async move {
                objects.delete(&key).await?;
                index.drop_grant(&id).await
            }
        };
        if self.has_xorb(&hash).await? {
            done(self).await?;
            return Ok(GrantCommit::Stored);
        }
        let Some(body) = self.objects.get(&key).await? else {
            return Ok(GrantCommit::NotUploaded);
        };
        self.verify_bytes.inc_by(body.len() as u64);
        if body.len() as u64 != g.length || crc64nvme(&body) != g.crc {
            // Not what was promised (a client bug, or a store that did not check): the
            // client asks for a new grant and uploads again.
            self.objects.delete(&key).await?;
            return Ok(GrantCommit::NotUploaded);
        }
        let checked = check(hash, body.clone()).await?;
        if checked.stored == body {
            // The upload is exactly what the store keeps: the store copies it in place.
            let footer = checked.stored.slice(checked.footer_at..);
            self.objects.copy(&key, &xorb_key(&hash)).await?;
            self.index
                .add_xorb(&hash.hex(), body.len() as u64, &footer)
                .await?;
        } else {
            self.keep(&hash, checked).await?;
        }
        done(self).await?;
        Ok(GrantCommit::Stored)
    }
}

impl ObjectCas {
    /// Hash and size of every chunk of each of `info`'s segments.
    async fn lists(&self, info: &MDBFileInfo) -> RemoteResult<Vec<Vec<(MerkleHash, u64)>>> {
        let footers = self.footers_of(info).await?;
        info.segments
            .iter()
            .map(|s| {
                footers[&s.xorb_hash]
                    .xorb
                    .chunk_hash_sizes(s.chunk_index_start, s.chunk_index_end)
                    .map_err(|e| RemoteError::Integrity(format!("xorb {}: {e}", s.xorb_hash.hex())))
            })
            .collect()
    }
}
