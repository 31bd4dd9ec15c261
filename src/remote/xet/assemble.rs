//! Turning a re-chunked file (see rechunk.rs) into what a Xet CAS stores: the new chunks
//! packed into xorbs, the file's reconstruction (runs of xorb chunks, each with its
//! verification hash) and its identity, uploaded as xorbs first and then one shard that makes
//! the file reconstructible.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use xet_client::cas_client::Client;
use xet_core_structures::merklehash::{file_hash, MerkleHash};
use xet_core_structures::metadata_shard::chunk_verification::range_hash_from_chunks;
use xet_core_structures::metadata_shard::file_structs::{
    FileDataSequenceEntry, FileDataSequenceHeader, FileVerificationEntry, MDBFileInfo,
};
use xet_core_structures::metadata_shard::shard_in_memory::MDBInMemoryShard;
use xet_core_structures::xorb_object::constants::{MAX_XORB_BYTES, MAX_XORB_CHUNKS};
use xet_core_structures::xorb_object::{Chunk, RawXorbData, SerializedXorbObject};

use super::rechunk::{BaseChunk, Piece, PieceSink};
use crate::remote::{RemoteError, RemoteResult};

/// Where a chunk is stored: chunk `index` of xorb `xorb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub xorb: MerkleHash,
    pub flags: u32,
    pub index: u32,
}

/// How new xorbs are written: the CAS prefix and xet-core's compression settings.
#[derive(Clone, Debug)]
pub struct XorbSettings {
    pub prefix: String,
    pub compression: String,
    pub retest_interval: usize,
}

/// A composed file's reconstruction and size.
pub struct Assembled {
    pub file: MDBFileInfo,
    pub size: u64,
}

impl Assembled {
    pub fn hash(&self) -> MerkleHash {
        self.file.metadata.file_hash
    }

    pub fn terms(&self) -> u64 {
        self.file.segments.len() as u64
    }
}

fn other(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Other(format!("xet assemble: {e}"))
}

/// Where a chunk of the new file is, before the new xorbs have their hashes.
#[derive(Clone, Copy)]
enum Loc {
    Stored(ChunkRef),
    /// Chunk `index` of the `xorb`-th new xorb.
    New {
        xorb: usize,
        index: u32,
    },
    /// The `k`-th whole stored term given by [`Packer::push_term`].
    Term(usize),
}

/// Packs the new file's chunks, in order: new chunks into xorbs (each handed out as soon as
/// it is full), every chunk into the file's list. A new chunk the base already holds
/// (`dedup_base`) or that appeared earlier among the new ones is referenced instead of
/// stored again; a composition that rewrites a fragmented region turns `dedup_base` off, or
/// the region's chunks would be referenced right back where they were.
pub struct Packer<'a> {
    base: &'a [BaseChunk],
    refs: &'a [ChunkRef],
    in_base: HashMap<MerkleHash, usize>,
    seen: HashMap<MerkleHash, Loc>,
    open: Vec<Chunk>,
    open_bytes: usize,
    /// Hashes of the xorbs handed out so far.
    closed: Vec<MerkleHash>,
    list: Vec<(MerkleHash, u64, Loc)>,
    /// Whole stored terms taken as they are, with their verification hashes: a composer that
    /// does not know their chunks (see `window_compose`) still describes the file through them.
    terms: Vec<(FileDataSequenceEntry, MerkleHash)>,
}

impl<'a> Packer<'a> {
    pub fn new(base: &'a [BaseChunk], refs: &'a [ChunkRef], dedup_base: bool) -> Self {
        let in_base = if dedup_base {
            base.iter().enumerate().map(|(k, c)| (c.hash, k)).collect()
        } else {
            HashMap::new()
        };
        Packer {
            base,
            refs,
            in_base,
            seen: HashMap::new(),
            open: Vec::new(),
            open_bytes: 0,
            closed: Vec::new(),
            list: Vec::with_capacity(base.len()),
            terms: Vec::new(),
        }
    }

    /// Take a whole stored term next, whose chunks the caller does not know: it becomes one
    /// term of the file with the verification hash given, and the file's identity must then
    /// be given to [`Packer::finish_with_hash`].
    pub fn push_term(&mut self, term: FileDataSequenceEntry, verification: MerkleHash) {
        let len = u64::from(term.unpacked_segment_bytes);
        self.list
            .push((MerkleHash::default(), len, Loc::Term(self.terms.len())));
        self.terms.push((term, verification));
    }

    /// Take the next chunk; returns a xorb that is now full.
    pub fn push(&mut self, p: Piece) -> Option<RawXorbData> {
        let c = match p {
            Piece::Base(k) => {
                let b = self.base[k];
                self.list.push((b.hash, b.len, Loc::Stored(self.refs[k])));
                return None;
            }
            Piece::New(c) => c,
        };
        let len = c.data.len() as u64;
        if let Some(&k) = self.in_base.get(&c.hash) {
            self.list.push((c.hash, len, Loc::Stored(self.refs[k])));
            return None;
        }
        if let Some(&loc) = self.seen.get(&c.hash) {
            self.list.push((c.hash, len, loc));
            return None;
        }
        let full = (self.open.len() == *MAX_XORB_CHUNKS
            || self.open_bytes + c.data.len() > *MAX_XORB_BYTES)
            .then(|| self.close());
        let loc = Loc::New {
            xorb: self.closed.len(),
            index: self.open.len() as u32,
        };
        self.seen.insert(c.hash, loc);
        self.list.push((c.hash, len, loc));
        self.open_bytes += c.data.len();
        self.open.push(c);
        full
    }

    fn close(&mut self) -> RawXorbData {
        let x = RawXorbData::from_chunks(&std::mem::take(&mut self.open), vec![0]);
        self.open_bytes = 0;
        self.closed.push(x.hash());
        x
    }

    /// The last, partly filled xorb (if any) and the file.
    pub fn finish(self) -> RemoteResult<(Option<RawXorbData>, Assembled)> {
        self.finish_with_hash(None)
    }

    /// [`Packer::finish`], with the file's identity computed by the caller (`Some`), which
    /// it must be when whole terms were taken: their chunk hashes are not known here.
    pub fn finish_with_hash(
        mut self,
        hash: Option<MerkleHash>,
    ) -> RemoteResult<(Option<RawXorbData>, Assembled)> {
        let last = (!self.open.is_empty()).then(|| self.close());
        let resolve = |loc: Loc| match loc {
            Loc::Stored(r) => r,
            Loc::New { xorb, index } => ChunkRef {
                xorb: self.closed[xorb],
                flags: 0,
                index,
            },
            Loc::Term(_) => unreachable!("whole terms are taken before resolving"),
        };
        // Runs of consecutive chunks of one xorb become one term.
        let mut segments: Vec<FileDataSequenceEntry> = Vec::new();
        let mut verification = Vec::new();
        let mut run: Vec<MerkleHash> = Vec::new();
        let mut size = 0u64;
        // The segment last pushed is a whole term: nothing may extend it (its verification
        // hash covers exactly its chunks).
        let mut after_term = false;
        for &(hash, len, loc) in &self.list {
            if let Loc::Term(k) = loc {
                if !run.is_empty() {
                    verification.push(FileVerificationEntry::new(range_hash_from_chunks(&run)));
                    run.clear();
                }
                let (term, v) = &self.terms[k];
                segments.push(term.clone());
                verification.push(FileVerificationEntry::new(*v));
                size += len;
                after_term = true;
                continue;
            }
            let r = resolve(loc);
            let len32 = u32::try_from(len).map_err(other)?;
            size += len;
            if let Some(s) = segments.last_mut().filter(|_| !after_term) {
                if s.xorb_hash == r.xorb && s.chunk_index_end == r.index {
                    s.chunk_index_end += 1;
                    s.unpacked_segment_bytes += len32;
                    run.push(hash);
                    continue;
                }
                verification.push(FileVerificationEntry::new(range_hash_from_chunks(&run)));
                run.clear();
            }
            after_term = false;
            segments.push(FileDataSequenceEntry {
                xorb_hash: r.xorb,
                xorb_flags: r.flags,
                unpacked_segment_bytes: len32,
                chunk_index_start: r.index,
                chunk_index_end: r.index + 1,
            });
            run.push(hash);
        }
        if !run.is_empty() {
            verification.push(FileVerificationEntry::new(range_hash_from_chunks(&run)));
        }
        let hash = match hash {
            Some(h) => h,
            None if self.terms.is_empty() => {
                let hashes: Vec<(MerkleHash, u64)> =
                    self.list.iter().map(|&(h, n, _)| (h, n)).collect();
                file_hash(&hashes)
            }
            None => return Err(other("a file with whole terms needs its identity given")),
        };
        let file = MDBFileInfo {
            metadata: FileDataSequenceHeader::new(hash, segments.len(), true, false),
            segments,
            verification,
            metadata_ext: None,
        };
        Ok((last, Assembled { file, size }))
    }
}

/// Where a composition's last xorbs and its shard go together instead of to the CAS one by
/// one (a commit that stores them: one round trip less on the path of a small edit).
#[async_trait]
pub trait ShardWithXorbs: Send + Sync {
    /// Take `xorbs` (under `prefix`), then `shard`. `Ok(false)`: not taken; the caller
    /// uploads them one by one.
    async fn upload(
        &self,
        prefix: &str,
        xorbs: &[SerializedXorbObject],
        shard: Bytes,
    ) -> RemoteResult<bool>;
}

/// A [`Packer`] that uploads each xorb as it fills, one at a time in the background while
/// re-chunking goes on, and at the end the shard that makes the file reconstructible
/// (after every xorb it names is stored). Given a [`ShardWithXorbs`], the last xorb goes with
/// the shard.
pub struct Assembler<'a> {
    packer: Packer<'a>,
    client: Arc<dyn Client>,
    bundle: Option<Arc<dyn ShardWithXorbs>>,
    settings: XorbSettings,
    shard: MDBInMemoryShard,
    sending: Option<tokio::task::JoinHandle<RemoteResult<u64>>>,
    /// Xorb bytes sent so far.
    pub sent: u64,
    /// The (hash, size) of every chunk of each xorb sent, for checking the file against.
    written: HashMap<MerkleHash, Vec<(MerkleHash, u64)>>,
}

impl<'a> Assembler<'a> {
    pub fn new(packer: Packer<'a>, client: Arc<dyn Client>, settings: XorbSettings) -> Self {
        Assembler {
            packer,
            client,
            bundle: None,
            settings,
            shard: MDBInMemoryShard::default(),
            sending: None,
            sent: 0,
            written: HashMap::new(),
        }
    }

    /// Send the last xorb with the shard through `bundle`.
    pub fn with_bundle(mut self, bundle: Option<Arc<dyn ShardWithXorbs>>) -> Self {
        self.bundle = bundle;
        self
    }

    async fn wait_sent(&mut self) -> RemoteResult<()> {
        if let Some(h) = self.sending.take() {
            self.sent += h.await.map_err(other)??;
        }
        Ok(())
    }

    /// Note xorb `raw` in the shard and in `written`, and serialize it for upload.
    fn record(&mut self, raw: &RawXorbData) -> RemoteResult<()> {
        let info = &raw.xorb_info;
        self.written.insert(
            info.metadata.xorb_hash,
            info.chunks
                .iter()
                .map(|c| (c.chunk_hash, u64::from(c.unpacked_segment_bytes)))
                .collect(),
        );
        self.shard
            .add_xorb_block(raw.xorb_info.clone())
            .map_err(other)
    }

    async fn serialize(s: &XorbSettings, raw: RawXorbData) -> RemoteResult<SerializedXorbObject> {
        let s = s.clone();
        tokio::task::spawn_blocking(move || {
            SerializedXorbObject::from_xorb(raw, false, &s.compression, s.retest_interval)
        })
        .await
        .map_err(other)?
        .map_err(other)
    }

    async fn send(&mut self, raw: RawXorbData) -> RemoteResult<()> {
        self.record(&raw)?;
        self.wait_sent().await?;
        let client = self.client.clone();
        let s = self.settings.clone();
        self.sending = Some(tokio::spawn(async move {
            let obj = Self::serialize(&s, raw).await?;
            let permit = client.acquire_upload_permit().await.map_err(other)?;
            client
                .upload_xorb(&s.prefix, obj, None, permit)
                .await
                .map_err(other)
        }));
        Ok(())
    }

    /// [`Packer::push_term`].
    pub fn push_term(&mut self, term: FileDataSequenceEntry, verification: MerkleHash) {
        self.packer.push_term(term, verification);
    }

    /// Store the rest and the shard; returns the file.
    pub async fn finish(self) -> RemoteResult<(Assembled, u64)> {
        self.finish_with_hash(None).await
    }

    /// [`Assembler::finish`] with the file's identity given (see [`Packer::finish_with_hash`]).
    pub async fn finish_with_hash(
        self,
        hash: Option<MerkleHash>,
    ) -> RemoteResult<(Assembled, u64)> {
        self.finish_listed(hash).await.map(|(a, sent, _)| (a, sent))
    }

    /// [`Assembler::finish_with_hash`], also returning the chunks of every xorb it wrote.
    pub async fn finish_listed(
        mut self,
        hash: Option<MerkleHash>,
    ) -> RemoteResult<(Assembled, u64, HashMap<MerkleHash, Vec<(MerkleHash, u64)>>)> {
        let (last, a) = std::mem::replace(&mut self.packer, Packer::new(&[], &[], false))
            .finish_with_hash(hash)?;
        let held = match (last, self.bundle.is_some()) {
            (Some(x), true) => {
                self.record(&x)?;
                Some(Self::serialize(&self.settings, x).await?)
            }
            (Some(x), false) => {
                self.send(x).await?;
                None
            }
            (None, _) => None,
        };
        self.wait_sent().await?;
        self.shard
            .add_file_reconstruction_info(a.file.clone())
            .map_err(other)?;
        let shard = Bytes::from(self.shard.to_bytes().map_err(other)?);
        if let Some(x) = held {
            let bundled = match &self.bundle {
                Some(b) => {
                    b.upload(
                        &self.settings.prefix,
                        std::slice::from_ref(&x),
                        shard.clone(),
                    )
                    .await?
                }
                None => false,
            };
            if bundled {
                self.sent += x.serialized_data.len() as u64;
                return Ok((a, self.sent, std::mem::take(&mut self.written)));
            }
            let permit = self.client.acquire_upload_permit().await.map_err(other)?;
            self.sent += self
                .client
                .upload_xorb(&self.settings.prefix, x, None, permit)
                .await
                .map_err(other)?;
        }
        let permit = self.client.acquire_upload_permit().await.map_err(other)?;
        self.client
            .upload_shard(shard, permit, None)
            .await
            .map_err(other)?;
        Ok((a, self.sent, std::mem::take(&mut self.written)))
    }
}

impl Drop for Assembler<'_> {
    fn drop(&mut self) {
        // A composition abandoned half-way stops uploading; what it stored is unreferenced.
        if let Some(h) = self.sending.take() {
            h.abort();
        }
    }
}

#[async_trait]
impl PieceSink for Assembler<'_> {
    async fn push(&mut self, piece: Piece) -> RemoteResult<()> {
        match self.packer.push(piece) {
            Some(full) => self.send(full).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::testing::random;
    use xet_data::deduplication::Chunker;

    fn chunks(seed: u64, len: usize) -> Vec<Chunk> {
        let mut c = Chunker::default();
        let mut v = c.next_block(&random(len, seed), true);
        v.extend(c.finish());
        v
    }

    fn pack(
        pieces: Vec<Piece>,
        base: &[BaseChunk],
        refs: &[ChunkRef],
        dedup_base: bool,
    ) -> (Vec<RawXorbData>, Assembled) {
        let mut p = Packer::new(base, refs, dedup_base);
        let mut xorbs: Vec<RawXorbData> = pieces.into_iter().filter_map(|x| p.push(x)).collect();
        let (last, a) = p.finish().unwrap();
        xorbs.extend(last);
        (xorbs, a)
    }

    #[test]
    fn runs_of_one_xorb_are_one_term_and_repeats_are_stored_once() {
        let base: Vec<Chunk> = chunks(1, 1 << 20);
        let n = base.len();
        assert!(n > 6);
        let xorb = MerkleHash::random_from_seed(9);
        let base_chunks: Vec<BaseChunk> = base
            .iter()
            .map(|c| BaseChunk {
                hash: c.hash,
                len: c.data.len() as u64,
            })
            .collect();
        let refs: Vec<ChunkRef> = (0..n as u32)
            .map(|index| ChunkRef {
                xorb,
                flags: 0,
                index,
            })
            .collect();
        let fresh = chunks(2, 300_000);
        // base[0..2], new chunks, base[3] again as a "new" chunk, base[4..], the first new
        // chunk once more.
        let mut pieces: Vec<Piece> = vec![Piece::Base(0), Piece::Base(1)];
        pieces.extend(fresh.iter().cloned().map(Piece::New));
        pieces.push(Piece::New(base[3].clone()));
        pieces.extend((4..n).map(Piece::Base));
        pieces.push(Piece::New(fresh[0].clone()));
        let (xorbs, a) = pack(pieces, &base_chunks, &refs, true);
        assert_eq!(xorbs.len(), 1);
        assert_eq!(xorbs[0].data.len(), fresh.len());
        let new = xorbs[0].hash();
        let terms: Vec<(MerkleHash, u32, u32)> = a
            .file
            .segments
            .iter()
            .map(|s| (s.xorb_hash, s.chunk_index_start, s.chunk_index_end))
            .collect();
        assert_eq!(
            terms,
            vec![
                (xorb, 0, 2),
                (new, 0, fresh.len() as u32),
                (xorb, 3, n as u32),
                (new, 0, 1),
            ]
        );
        let mut all: Vec<(MerkleHash, u64)> = Vec::new();
        for c in base[..2]
            .iter()
            .chain(&fresh)
            .chain(&base[3..])
            .chain(&fresh[..1])
        {
            all.push((c.hash, c.data.len() as u64));
        }
        assert_eq!(a.hash(), file_hash(&all));
        assert_eq!(a.size, all.iter().map(|x| x.1).sum::<u64>());
        assert_eq!(a.file.verification.len(), a.file.segments.len());
        // Without base dedup the repeated base chunk is stored anew.
        let mut pieces: Vec<Piece> = vec![Piece::Base(0), Piece::New(base[1].clone())];
        pieces.extend((2..n).map(Piece::Base));
        let (xorbs, a) = pack(pieces, &base_chunks, &refs, false);
        assert_eq!(xorbs.len(), 1);
        assert_eq!(a.terms(), 3);
    }
}
