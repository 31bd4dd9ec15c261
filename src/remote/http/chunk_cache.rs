//! The on-disk chunk cache xet-core's `FileReconstructor` reads xorb chunks from before it
//! downloads them, and writes what it downloaded into.
//!
//! xet-core's own `DiskCache` keeps one item per put (a xorb chunk range) and hits only when
//! one stored item holds the whole requested range. Our reads ask for ranges whose bounds
//! depend on timing (kernel readahead, the read cache's runs), so a re-read after a remount
//! often straddled two stored items and downloaded again. This cache stores chunks one by one
//! instead: a get hits whenever every chunk of its range was stored, by any earlier puts.
//!
//! On disk, under the cache's directory:
//!
//! ```text
//! lock                     flock'ed by the process using the cache (one at a time)
//! xorbs/<hash>-<prefix>    one file per xorb: the xorb hash in hex, its key prefix hex-encoded
//! ```
//!
//! A xorb file is the 8-byte magic `XMCHUNK1` followed by records appended as chunks arrive:
//! `[chunk index: u32 LE][length: u32 LE][blake3(index, length, bytes): 32][bytes]`. The
//! index (xorb → chunk index → record) lives in memory and is rebuilt at startup from the
//! record headers alone (reading every byte of a 10 GB cache would delay every mount); a torn
//! or implausible record ends the file there and is cut off. Checksums are verified on every
//! read, and a record that does not verify drops its whole file: a miss, never wrong bytes.
//!
//! The total size of the files stays within the configured size: before an append, whole
//! xorb files are evicted, least recently used first (recency survives restarts through the
//! files' modification times, which a hit refreshes).
//!
//! The directory of xet-core's `DiskCache` (two-character prefix directories next to
//! `xorbs/`) is removed at startup, in the background: its items cannot be read here.
//!
//! Concurrency: the index sits behind a mutex held only for map updates (and the unlink of an
//! evicted file); file I/O runs on blocking threads. Appends, evictions and drops of corrupt
//! files are serialized by one writer lock, so an offset reserved for an append cannot be
//! reused and a file cannot be unlinked while it is written.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;
use xet_client::cas_types::{ChunkRange, Key};
use xet_client::chunk_cache::error::ChunkCacheError;
use xet_client::chunk_cache::{CacheRange, ChunkCache};
use xet_core_structures::merklehash::MerkleHash;

use super::room::Room;
use crate::lru::Lru;

const MAGIC: &[u8; 8] = b"XMCHUNK1";
/// Index, length, checksum.
const RECORD_HEADER: u64 = 4 + 4 + 32;
/// Xet chunks are at most 128 KiB; anything much larger in a header is corruption.
const MAX_CHUNK: u32 = 16 << 20;
const XORBS_DIR: &str = "xorbs";
/// Bytes of puts in flight of [`ChunkStore::open`] (the mount's budget sets its own).
pub const DEFAULT_WRITES_IN_FLIGHT: u64 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct XorbId {
    prefix: String,
    hash: MerkleHash,
}

impl XorbId {
    fn of(key: &Key) -> Self {
        XorbId {
            prefix: key.prefix.clone(),
            hash: key.hash,
        }
    }

    /// Hex for the prefix too: it is a free-form string, and file names must stay plain.
    fn file_name(&self) -> String {
        let prefix: String = self.prefix.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}-{prefix}", self.hash.hex())
    }

    fn parse(name: &str) -> Option<Self> {
        let (hash, prefix) = name.split_once('-')?;
        if prefix.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..prefix.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(prefix.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let id = XorbId {
            prefix: String::from_utf8(bytes).ok()?,
            hash: MerkleHash::from_hex(hash).ok()?,
        };
        // Only the canonical spelling, so that one xorb cannot have two files.
        (id.file_name() == name).then_some(id)
    }
}

/// Where a chunk's record starts in its xorb file, and the chunk's length.
#[derive(Clone, Copy, Debug)]
struct Loc {
    offset: u64,
    len: u32,
}

struct Xorb {
    chunks: HashMap<u32, Loc>,
    /// Length of its file, including appends reserved and under way.
    bytes: u64,
    /// Tells this entry from a later one for the same xorb (after an eviction or a drop), so
    /// that work planned against one does not land in the other.
    generation: u64,
}

struct State {
    /// Oldest first. Unbounded there (cost 0): eviction is `make_room`'s, which spares the
    /// xorb being appended to and unlinks files.
    xorbs: Lru<XorbId, Xorb>,
    /// Sum of the xorbs' `bytes`.
    total: u64,
    generations: u64,
}

impl State {
    /// Forget a xorb and unlink its file (under the lock, so that a later entry for the same
    /// xorb cannot be created before the old file is gone).
    fn remove(&mut self, dir: &Path, id: &XorbId) {
        if let Some(x) = self.xorbs.remove(id) {
            self.total -= x.bytes;
            if let Err(e) = std::fs::remove_file(dir.join(id.file_name())) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!("chunk cache: cannot remove {}: {e}", id.file_name());
                }
            }
        }
    }

    /// Evict least recently used xorbs other than `keep` until `need` more bytes fit in
    /// `limit`; false if they cannot.
    fn make_room(&mut self, dir: &Path, limit: u64, need: u64, keep: &XorbId) -> bool {
        while self.total + need > limit {
            let Some(victim) = self
                .xorbs
                .iter_lru()
                .map(|(id, _)| id)
                .find(|id| *id != keep)
                .cloned()
            else {
                return false;
            };
            self.remove(dir, &victim);
        }
        true
    }
}

/// The chunk cache in one directory; see the module documentation.
pub struct ChunkStore(Arc<Inner>);

struct Inner {
    /// The `xorbs` directory.
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    /// Serializes appends, evictions and drops (see the module documentation).
    writer: Mutex<()>,
    /// Puts in flight, and their completions: xet-core starts puts in the background and does
    /// not wait for them, so an unmount waits here instead of losing them.
    writing: AtomicUsize,
    written: tokio::sync::Notify,
    /// Bytes of puts waiting for or doing their write: a put waits for room before it
    /// copies its chunks, so a disk slower than the network holds back the downloads instead
    /// of piling their copies up in memory.
    write_room: Room,
    /// Whether a failed write has been reported at warn level already.
    warned: AtomicBool,
    /// Held (flock) while this store is open: two processes appending to the same files
    /// without sharing an index would corrupt each other's records.
    _lock: File,
}

/// Decrements the count of puts in flight however the put ends (xet-core's task may be
/// dropped mid-way at shutdown).
struct Writing(Arc<Inner>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.writing.fetch_sub(1, Ordering::SeqCst);
        self.0.written.notify_waiters();
    }
}

fn checksum(index: u32, data: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(&(data.len() as u32).to_le_bytes());
    h.update(data);
    *h.finalize().as_bytes()
}

fn append_record(out: &mut Vec<u8>, index: u32, data: &[u8]) {
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(index, data));
    out.extend_from_slice(data);
}

/// The records of one xorb file, from their headers; cuts a torn or implausible tail off.
/// `None`: not a xorb file (or nothing in it), to be removed.
fn scan_file(path: &Path) -> io::Result<Option<(HashMap<u32, Loc>, u64)>> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    let mut magic = [0u8; 8];
    if len < MAGIC.len() as u64 || f.read_exact_at(&mut magic, 0).is_err() || &magic != MAGIC {
        return Ok(None);
    }
    let mut chunks = HashMap::new();
    let mut pos = MAGIC.len() as u64;
    let mut header = [0u8; RECORD_HEADER as usize];
    while pos + RECORD_HEADER <= len {
        f.read_exact_at(&mut header, pos)?;
        let index = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let clen = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if clen == 0 || clen > MAX_CHUNK || pos + RECORD_HEADER + clen as u64 > len {
            break;
        }
        chunks.entry(index).or_insert(Loc {
            offset: pos,
            len: clen,
        });
        pos += RECORD_HEADER + clen as u64;
    }
    if chunks.is_empty() {
        return Ok(None);
    }
    if pos < len {
        tracing::debug!(
            "chunk cache: {} ends in {} bytes that are no record; cut off",
            path.display(),
            len - pos
        );
        f.set_len(pos)?;
    }
    Ok(Some((chunks, pos)))
}

/// Remove what xet-core's `DiskCache` left in `root`: its two-character prefix directories.
fn remove_old_layout(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let old: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().len() == 2 && e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    if old.is_empty() {
        return;
    }
    // Possibly gigabytes of small files: not something a mount should wait for.
    let spawned = std::thread::Builder::new()
        .name("chunk-cache-cleanup".into())
        .spawn(move || {
            for d in old {
                if let Err(e) = std::fs::remove_dir_all(&d) {
                    tracing::debug!("chunk cache: cannot remove {}: {e}", d.display());
                }
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("chunk cache: no thread to remove the old layout: {e}");
    }
}

impl ChunkStore {
    /// Open (creating it if need be) the cache in `root`, holding at most `limit` bytes, and
    /// rebuild its index from the files there. Blocking: reads every record header.
    pub fn open(root: &Path, limit: u64) -> io::Result<Self> {
        Self::open_with(root, limit, DEFAULT_WRITES_IN_FLIGHT)
    }

    /// [`Self::open`] with at most `writes_in_flight` bytes of puts held in memory.
    pub fn open_with(root: &Path, limit: u64, writes_in_flight: u64) -> io::Result<Self> {
        let dir = root.join(XORBS_DIR);
        std::fs::create_dir_all(&dir)?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join("lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "another process is using this chunk cache",
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        remove_old_layout(root);

        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let scanned = match entry.file_name().to_str().and_then(XorbId::parse) {
                Some(id) => scan_file(&path).map(|s| s.map(|s| (id, s))),
                None => Ok(None),
            };
            match scanned {
                Ok(Some((id, (chunks, bytes)))) => {
                    let mtime = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((mtime, id, chunks, bytes));
                }
                // Ours (the directory is): a file we cannot use only takes room.
                Ok(None) => {
                    tracing::debug!("chunk cache: removing {}", path.display());
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::debug!("chunk cache: removing {}: {e}", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        // Recency from the files' modification times: the oldest goes in first, as the least
        // recently used.
        found.sort_by_key(|f| f.0);
        let mut state = State {
            xorbs: Lru::new(u64::MAX),
            total: 0,
            generations: 0,
        };
        for (_, id, chunks, bytes) in found {
            state.generations += 1;
            state.total += bytes;
            let generation = state.generations;
            state.xorbs.insert(
                id,
                Xorb {
                    chunks,
                    bytes,
                    generation,
                },
                0,
            );
        }
        // A smaller --cache-size than last time.
        while state.total > limit {
            let Some(oldest) = state.xorbs.iter_lru().next().map(|(id, _)| id.clone()) else {
                break;
            };
            state.remove(&dir, &oldest);
        }
        Ok(ChunkStore(Arc::new(Inner {
            dir,
            limit,
            state: Mutex::new(state),
            writer: Mutex::new(()),
            writing: AtomicUsize::new(0),
            written: tokio::sync::Notify::new(),
            write_room: Room::new(writes_in_flight),
            warned: AtomicBool::new(false),
            _lock: lock,
        })))
    }

    /// Bytes of chunk files the index accounts for.
    pub fn total_bytes(&self) -> u64 {
        self.0.state.lock().total
    }

    /// Wait (at most `timeout`) until no put is in flight.
    pub async fn settle(&self, timeout: Duration) {
        let inner = &self.0;
        let wait = async {
            loop {
                let notified = inner.written.notified();
                if inner.writing.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }
}

impl Inner {
    /// A failed write (full disk, unwritable directory): the read it came from has its bytes
    /// anyway, so it is only reported, at warn level the first time.
    fn write_failed(&self, what: &str, e: &io::Error) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "chunk cache: {what}: {e} (not caching; further failures at debug level)"
            );
        } else {
            tracing::debug!("chunk cache: {what}: {e}");
        }
    }

    /// Drop a xorb whose file did not read back as written, unless it was replaced since.
    fn drop_xorb(&self, id: &XorbId, generation: u64) {
        let _w = self.writer.lock();
        let mut st = self.state.lock();
        if st
            .xorbs
            .peek(id)
            .is_some_and(|x| x.generation == generation)
        {
            st.remove(&self.dir, id);
        }
    }

    /// The chunks `[start, end)` of a xorb, if all are stored and verify. Blocking.
    fn get_blocking(&self, id: &XorbId, start: u32, end: u32) -> Option<CacheRange> {
        let (locs, generation) = {
            let mut st = self.state.lock();
            let x = st.xorbs.peek(id)?;
            let locs = (start..end)
                .map(|i| x.chunks.get(&i).copied())
                .collect::<Option<Vec<Loc>>>()?;
            let generation = x.generation;
            st.xorbs.touch(id);
            (locs, generation)
        };
        let path = self.dir.join(id.file_name());
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                // Evicted since the lookup, or removed behind our back.
                tracing::debug!("chunk cache: {}: {e}", path.display());
                if e.kind() == io::ErrorKind::NotFound {
                    self.drop_xorb(id, generation);
                }
                return None;
            }
        };
        let total: usize = locs.iter().map(|l| l.len as usize).sum();
        let mut data = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(locs.len() + 1);
        let mut record = Vec::new();
        for (index, loc) in (start..end).zip(&locs) {
            record.resize(RECORD_HEADER as usize + loc.len as usize, 0);
            let good = file.read_exact_at(&mut record, loc.offset).is_ok()
                && record[0..4] == index.to_le_bytes()
                && record[4..8] == loc.len.to_le_bytes()
                && record[8..40] == checksum(index, &record[40..]);
            if !good {
                tracing::warn!(
                    "chunk cache: chunk {index} of {} does not verify; dropping the file",
                    path.display()
                );
                self.drop_xorb(id, generation);
                return None;
            }
            offsets.push(data.len() as u32);
            data.extend_from_slice(&record[40..]);
        }
        offsets.push(data.len() as u32);
        // Recency for the next startup; losing it only makes eviction less exact.
        let _ = file.set_modified(SystemTime::now());
        Some(CacheRange {
            offsets,
            data,
            range: ChunkRange::new(start, end),
        })
    }

    /// Append the chunks of `data` (chunk `start + i` is `data[offsets[i]..offsets[i + 1]]`)
    /// not stored yet. Blocking.
    fn put_blocking(&self, id: &XorbId, start: u32, offsets: &[u32], data: &[u8]) {
        // Held throughout: no other append, eviction or drop can touch this xorb's entry or
        // file meanwhile, so what is planned below stays true while it is written.
        let _w = self.writer.lock();
        let (base, generation, stored) = {
            let mut st = self.state.lock();
            if !st.xorbs.contains_key(id) {
                st.generations += 1;
                let generation = st.generations;
                let fresh = Xorb {
                    chunks: HashMap::new(),
                    bytes: 0,
                    generation,
                };
                st.xorbs.insert(id.clone(), fresh, 0);
            }
            st.xorbs.touch(id);
            let x = st.xorbs.peek(id).expect("inserted above");
            let stored = (0..offsets.len() as u32 - 1)
                .map(|i| x.chunks.contains_key(&(start + i)))
                .collect::<Vec<bool>>();
            (x.bytes, x.generation, stored)
        };
        // Records built (and hashed) outside the index lock, which gets need.
        let mut body = Vec::with_capacity(data.len() + MAGIC.len());
        if base == 0 {
            body.extend_from_slice(MAGIC);
        }
        let mut locs = Vec::new();
        for (i, w) in offsets.windows(2).enumerate() {
            if stored[i] {
                continue;
            }
            let index = start + i as u32;
            let chunk = &data[w[0] as usize..w[1] as usize];
            let offset = base + body.len() as u64;
            locs.push((
                index,
                Loc {
                    offset,
                    len: chunk.len() as u32,
                },
            ));
            append_record(&mut body, index, chunk);
        }
        let need = body.len() as u64;
        {
            let mut st = self.state.lock();
            let fits = !locs.is_empty()
                && base + need <= self.limit
                && st.make_room(&self.dir, self.limit, need, id);
            if !fits {
                if st.xorbs.peek(id).is_some_and(|x| x.bytes == 0) {
                    st.remove(&self.dir, id);
                }
                return;
            }
            // Reserved before writing, so the total never exceeds the limit.
            st.total += need;
            st.xorbs.peek_mut(id).expect("kept by make_room").bytes += need;
        }
        let path = self.dir.join(id.file_name());
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|f| {
                let r = f.write_all_at(&body, base);
                if r.is_err() {
                    // Whatever part landed is not indexed: cut it off so that the file stays
                    // a sequence of whole records.
                    let _ = f.set_len(base);
                }
                r
            });
        let mut st = self.state.lock();
        let Some(x) = st.xorbs.peek_mut(id).filter(|x| x.generation == generation) else {
            return;
        };
        match written {
            Ok(()) => x.chunks.extend(locs),
            Err(e) => {
                x.bytes -= need;
                st.total -= need;
                if st.xorbs.peek(id).is_some_and(|x| x.bytes == 0) {
                    st.remove(&self.dir, id);
                }
                drop(st);
                self.write_failed(&format!("writing {}", path.display()), &e);
            }
        }
    }
}

/// Whether `offsets` describe chunks `range` of `data`, as the trait requires of a put.
fn valid_put(range: &ChunkRange, offsets: &[u32], data: &[u8]) -> bool {
    range.start < range.end
        && offsets.len() == (range.end - range.start) as usize + 1
        && offsets.first() == Some(&0)
        && offsets.last().map(|&o| o as usize) == Some(data.len())
        && offsets
            .windows(2)
            .all(|w| w[0] < w[1] && w[1] - w[0] <= MAX_CHUNK)
}

#[async_trait]
impl ChunkCache for ChunkStore {
    async fn get(
        &self,
        key: &Key,
        range: &ChunkRange,
    ) -> Result<Option<CacheRange>, ChunkCacheError> {
        if range.start >= range.end {
            return Ok(None);
        }
        let id = XorbId::of(key);
        {
            // Most misses need no thread.
            let st = self.0.state.lock();
            let Some(x) = st.xorbs.peek(&id) else {
                return Ok(None);
            };
            if !(range.start..range.end).all(|i| x.chunks.contains_key(&i)) {
                return Ok(None);
            }
        }
        let (start, end) = (range.start, range.end);
        let this = Arc::clone(&self.0);
        let got = tokio::task::spawn_blocking(move || this.get_blocking(&id, start, end)).await?;
        Ok(got)
    }

    async fn put(
        &self,
        key: &Key,
        range: &ChunkRange,
        chunk_byte_indices: &[u32],
        data: &[u8],
    ) -> Result<(), ChunkCacheError> {
        if !valid_put(range, chunk_byte_indices, data) {
            return Err(ChunkCacheError::InvalidArguments);
        }
        let id = XorbId::of(key);
        {
            // A range downloaded twice (two reads racing) is common enough to skip early.
            let st = self.0.state.lock();
            if st
                .xorbs
                .peek(&id)
                .is_some_and(|x| (range.start..range.end).all(|i| x.chunks.contains_key(&i)))
            {
                return Ok(());
            }
        }
        self.0.writing.fetch_add(1, Ordering::SeqCst);
        // Moved into the thread: the put counts as in flight until its write is done, even if
        // xet-core's task is dropped while waiting for it.
        let writing = Writing(Arc::clone(&self.0));
        let room = self
            .0
            .write_room
            .take(data.len())
            .await
            .map_err(|e| ChunkCacheError::General(e.to_string()))?;
        let (start, offsets, data) = (range.start, chunk_byte_indices.to_vec(), data.to_vec());
        tokio::task::spawn_blocking(move || {
            writing.0.put_blocking(&id, start, &offsets, &data);
            drop(room);
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        Key {
            prefix: "default".into(),
            hash: MerkleHash::from([n, 1, 2, 3]),
        }
    }

    /// Chunk `i` of xorb `n`: distinct bytes and lengths, so that any mix-up shows.
    fn chunk(n: u64, i: u32) -> Vec<u8> {
        let len = 100 + (i as usize * 37) % 50;
        (0..len)
            .map(|j| (n as usize * 31 + i as usize * 7 + j) as u8)
            .collect()
    }

    /// The put arguments for chunks `[s, e)` of xorb `n`.
    fn range_of(n: u64, s: u32, e: u32) -> (Vec<u32>, Vec<u8>) {
        let mut offsets = vec![0];
        let mut data = Vec::new();
        for i in s..e {
            data.extend(chunk(n, i));
            offsets.push(data.len() as u32);
        }
        (offsets, data)
    }

    async fn put(c: &ChunkStore, n: u64, s: u32, e: u32) {
        let (offsets, data) = range_of(n, s, e);
        c.put(&key(n), &ChunkRange::new(s, e), &offsets, &data)
            .await
            .unwrap();
    }

    async fn get(c: &ChunkStore, n: u64, s: u32, e: u32) -> Option<CacheRange> {
        c.get(&key(n), &ChunkRange::new(s, e)).await.unwrap()
    }

    /// Asserts that a get of `[s, e)` of xorb `n` hits with exactly its chunks.
    async fn hits(c: &ChunkStore, n: u64, s: u32, e: u32) {
        let got = get(c, n, s, e)
            .await
            .unwrap_or_else(|| panic!("xorb {n} [{s}, {e}) missed"));
        let (offsets, data) = range_of(n, s, e);
        assert_eq!(got.offsets, offsets);
        assert!(got.data == data, "xorb {n} [{s}, {e}): wrong bytes");
        assert_eq!((got.range.start, got.range.end), (s, e));
    }

    fn file_of(root: &Path, n: u64) -> PathBuf {
        root.join(XORBS_DIR).join(XorbId::of(&key(n)).file_name())
    }

    fn bytes_on_disk(root: &Path) -> u64 {
        std::fs::read_dir(root.join(XORBS_DIR))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[tokio::test]
    async fn a_get_across_two_puts_hits_with_the_right_bytes_and_offsets() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        put(&c, 1, 0, 4).await;
        put(&c, 1, 4, 8).await;
        hits(&c, 1, 2, 6).await;
        hits(&c, 1, 0, 8).await;
        hits(&c, 1, 7, 8).await;
        // Overlapping puts store nothing twice.
        let before = c.total_bytes();
        put(&c, 1, 3, 6).await;
        assert_eq!(c.total_bytes(), before);
        assert_eq!(bytes_on_disk(d.path()), before);
    }

    #[tokio::test]
    async fn a_get_touching_a_missing_chunk_misses() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        put(&c, 1, 0, 4).await;
        put(&c, 1, 5, 8).await;
        assert!(get(&c, 1, 3, 6).await.is_none());
        assert!(get(&c, 1, 4, 5).await.is_none());
        assert!(get(&c, 1, 7, 9).await.is_none());
        assert!(get(&c, 2, 0, 1).await.is_none());
        let other_prefix = Key {
            prefix: "other".into(),
            hash: key(1).hash,
        };
        let r = ChunkRange::new(0, 1);
        assert!(c.get(&other_prefix, &r).await.unwrap().is_none());
        hits(&c, 1, 0, 4).await;
        hits(&c, 1, 5, 8).await;
    }

    #[tokio::test]
    async fn puts_that_break_the_contract_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        let (offsets, data) = range_of(1, 0, 4);
        let k = key(1);
        // One range's worth of offsets for a longer range (xet-core's multi-range blocks).
        assert!(c
            .put(&k, &ChunkRange::new(0, 3), &offsets, &data)
            .await
            .is_err());
        assert!(c
            .put(&k, &ChunkRange::new(0, 4), &offsets, &data[1..])
            .await
            .is_err());
        assert!(c.put(&k, &ChunkRange::new(2, 2), &[0], &[]).await.is_err());
        assert!(get(&c, 1, 0, 1).await.is_none());
        assert_eq!(c.total_bytes(), 0);
    }

    #[tokio::test]
    async fn eviction_keeps_the_total_within_the_limit_and_drops_the_least_recently_used() {
        let d = tempfile::tempdir().unwrap();
        // Room for two xorbs of 8 chunks (about 1.3 KB each), not three.
        let one = MAGIC.len() as u64 + range_of(1, 0, 8).1.len() as u64 + 8 * RECORD_HEADER;
        let limit = 2 * one + one / 2;
        let c = ChunkStore::open(d.path(), limit).unwrap();
        put(&c, 1, 0, 8).await;
        put(&c, 2, 0, 8).await;
        hits(&c, 1, 0, 2).await; // 2 is now the least recently used
        put(&c, 3, 0, 8).await;
        assert!(get(&c, 2, 0, 1).await.is_none(), "xorb 2 was not evicted");
        assert!(!file_of(d.path(), 2).exists());
        hits(&c, 1, 0, 8).await;
        hits(&c, 3, 0, 8).await;
        assert!(c.total_bytes() <= limit);
        assert_eq!(bytes_on_disk(d.path()), c.total_bytes());

        // Growing a xorb evicts others, never itself.
        put(&c, 3, 8, 12).await;
        assert!(get(&c, 1, 0, 1).await.is_none());
        hits(&c, 3, 0, 12).await;
        assert!(bytes_on_disk(d.path()) <= limit);

        // Larger than the whole cache: not stored, nothing else lost.
        let (offsets, data) = range_of(4, 0, 40);
        c.put(&key(4), &ChunkRange::new(0, 40), &offsets, &data)
            .await
            .unwrap();
        assert!(get(&c, 4, 0, 1).await.is_none());
        assert!(!file_of(d.path(), 4).exists());
        hits(&c, 3, 0, 12).await;
    }

    #[tokio::test]
    async fn a_new_instance_on_the_same_dir_keeps_the_hits() {
        let d = tempfile::tempdir().unwrap();
        // What xet-core's DiskCache left: removed at startup.
        let old = d.path().join("AB").join("ABCDEF");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("0-4"), b"old item").unwrap();
        // A stray file among ours: removed.
        std::fs::create_dir_all(d.path().join(XORBS_DIR)).unwrap();
        std::fs::write(d.path().join(XORBS_DIR).join("junk"), b"x").unwrap();

        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        assert!(!d.path().join(XORBS_DIR).join("junk").exists());
        // The directory is taken while open.
        let second = ChunkStore::open(d.path(), 1 << 20);
        assert_eq!(
            second.err().map(|e| e.kind()),
            Some(io::ErrorKind::WouldBlock)
        );
        put(&c, 1, 0, 4).await;
        put(&c, 1, 4, 8).await;
        put(&c, 2, 10, 12).await;
        let total = c.total_bytes();
        drop(c);

        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        assert_eq!(c.total_bytes(), total);
        hits(&c, 1, 1, 7).await;
        hits(&c, 2, 10, 12).await;
        assert!(get(&c, 2, 9, 12).await.is_none());
        // Appending after a restart continues the file.
        put(&c, 2, 12, 14).await;
        drop(c);
        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        hits(&c, 2, 10, 14).await;
        for _ in 0..100 {
            if !d.path().join("AB").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!d.path().join("AB").exists(), "the old layout was kept");

        // A smaller limit at startup evicts down to it.
        drop(c);
        let c = ChunkStore::open(d.path(), total / 2).unwrap();
        assert!(c.total_bytes() <= total / 2);
        assert!(bytes_on_disk(d.path()) <= total / 2);
    }

    #[tokio::test]
    async fn a_corrupted_byte_gives_a_miss_not_wrong_data() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        put(&c, 1, 0, 4).await;
        put(&c, 2, 0, 4).await;
        // One byte in the body of chunk 2 of xorb 1.
        let path = file_of(d.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = MAGIC.len()
            + (0..2)
                .map(|i| RECORD_HEADER as usize + chunk(1, i).len())
                .sum::<usize>()
            + RECORD_HEADER as usize
            + 10;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        hits(&c, 1, 0, 2).await; // chunks before the bad one are still good
        assert!(get(&c, 1, 1, 4).await.is_none());
        // The file is dropped with its index: later gets miss without reading.
        assert!(!path.exists());
        assert!(get(&c, 1, 0, 1).await.is_none());
        hits(&c, 2, 0, 4).await;
        assert_eq!(c.total_bytes(), bytes_on_disk(d.path()));
        // And it can be stored again.
        put(&c, 1, 0, 4).await;
        hits(&c, 1, 0, 4).await;

        // A corrupt header (the chunk index) too.
        drop(c);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len()] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        assert!(get(&c, 1, 0, 4).await.is_none());
        assert!(get(&c, 1, 1, 2).await.is_none());
        hits(&c, 2, 0, 4).await;
    }

    #[tokio::test]
    async fn a_truncated_file_tail_is_tolerated() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        put(&c, 1, 0, 4).await;
        put(&c, 1, 4, 8).await;
        drop(c);
        // A crash in the middle of the record of chunk 7.
        let path = file_of(d.path(), 1);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 20).unwrap();
        drop(f);

        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        hits(&c, 1, 0, 7).await;
        assert!(get(&c, 1, 6, 8).await.is_none());
        let cut = len - RECORD_HEADER - chunk(1, 7).len() as u64;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), cut);
        assert_eq!(c.total_bytes(), cut);
        put(&c, 1, 6, 8).await;
        hits(&c, 1, 0, 8).await;
        drop(c);

        // Only part of the magic: not a file of ours any more.
        std::fs::write(&path, &MAGIC[..3]).unwrap();
        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        assert!(get(&c, 1, 0, 1).await.is_none());
        assert!(!path.exists());
        assert_eq!(c.total_bytes(), 0);
    }

    #[tokio::test]
    async fn a_put_that_cannot_be_written_fails_quietly() {
        let d = tempfile::tempdir().unwrap();
        let c = ChunkStore::open(d.path(), 1 << 20).unwrap();
        put(&c, 1, 0, 4).await;
        // The directory gone (as good as unwritable, also for root, which tests may run as).
        std::fs::remove_dir_all(d.path().join(XORBS_DIR)).unwrap();
        put(&c, 2, 0, 4).await;
        put(&c, 2, 4, 8).await;
        assert!(get(&c, 2, 0, 4).await.is_none());
        assert!(get(&c, 1, 0, 4).await.is_none());
        assert_eq!(c.total_bytes(), 0);
        c.settle(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_gets_and_puts_never_return_wrong_bytes() {
        let d = tempfile::tempdir().unwrap();
        // Small enough that evictions run all along.
        let limit = 20_000;
        let c = Arc::new(ChunkStore::open(d.path(), limit).unwrap());
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let c = Arc::clone(&c);
            tasks.push(tokio::spawn(async move {
                let mut hit = 0;
                for round in 0..60u64 {
                    let n = (t + round) % 6;
                    let s = ((t * 7 + round * 3) % 12) as u32;
                    let e = s + 1 + ((t + round) % 5) as u32;
                    if round % 2 == 0 {
                        put(&c, n, s, e).await;
                    } else if let Some(got) = get(&c, n, s, e).await {
                        let (offsets, data) = range_of(n, s, e);
                        assert_eq!(got.offsets, offsets);
                        assert!(got.data == data);
                        hit += 1;
                    }
                }
                hit
            }));
        }
        let mut hits = 0;
        for t in tasks {
            hits += t.await.unwrap();
        }
        c.settle(Duration::from_secs(5)).await;
        assert!(hits > 0);
        assert!(c.total_bytes() <= limit);
        assert_eq!(bytes_on_disk(d.path()), c.total_bytes());
    }

    #[tokio::test]
    async fn settle_waits_for_puts_in_flight() {
        let d = tempfile::tempdir().unwrap();
        let c = Arc::new(ChunkStore::open(d.path(), 1 << 30).unwrap());
        // A put xet-core would spawn and not wait for.
        let bg = Arc::clone(&c);
        let (offsets, data) = range_of(1, 0, 2000);
        tokio::spawn(async move {
            bg.put(&key(1), &ChunkRange::new(0, 2000), &offsets, &data)
                .await
                .unwrap();
        });
        tokio::task::yield_now().await;
        c.settle(Duration::from_secs(10)).await;
        hits(&c, 1, 0, 2000).await;
    }

    #[test]
    fn file_names_round_trip_and_stay_plain() {
        let id = XorbId {
            prefix: "de/fault ü".into(),
            hash: MerkleHash::from([9, 8, 7, 6]),
        };
        let name = id.file_name();
        assert!(name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
        assert_eq!(XorbId::parse(&name), Some(id));
        assert_eq!(XorbId::parse("junk"), None);
        assert_eq!(XorbId::parse(&name.to_uppercase()), None);
    }

    #[tokio::test]
    async fn puts_wait_for_room_before_they_copy_their_chunks() {
        let d = tempfile::tempdir().unwrap();
        // Room for one unit: every put holds all of it while it writes.
        let c = Arc::new(ChunkStore::open_with(d.path(), 1 << 20, 1).unwrap());
        let held = c.0.write_room.take(usize::MAX).await.unwrap();
        let waiting = {
            let c = c.clone();
            tokio::spawn(async move { put(&c, 1, 0, 3).await })
        };
        // The put cannot proceed (nor copy anything) while the room is taken.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        assert!(get(&c, 1, 0, 3).await.is_none());
        drop(held);
        waiting.await.unwrap();
        assert!(get(&c, 1, 0, 3).await.is_some());
        assert_eq!(c.0.write_room.available(), 1, "the put gave its room back");
    }
}
