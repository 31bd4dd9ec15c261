//! Handles for stateless protocols (NFSv3): READ and WRITE name a file, not an open file, so
//! the frontend keeps a bounded pool of open VFS handles per inode and lends them out.
//!
//! A lent handle is an `Arc<Pooled>`; the VFS handle is released when the last `Arc` drops.
//! Replacing or evicting a pool entry therefore never closes a handle another request is
//! using. A WRITE that finds only a read-only handle opens a writable one, performs its write
//! with it, and only then publishes it (replacing the read-only one), so the pool never holds
//! a writable handle whose open has not yet proven usable. Writes schedule a flush (there is
//! no close to do it) and are made durable in the staging journal before they are answered.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::vfs::{Ino, Vfs, VfsResult};

/// One open VFS handle, released when the last user lets go of it.
pub struct Pooled {
    vfs: Weak<Vfs>,
    ino: Ino,
    pub fh: u64,
    pub writable: bool,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(vfs) = self.vfs.upgrade() {
            vfs.release_pooled(self.ino, self.fh);
        }
    }
}

struct Slot {
    handle: Arc<Pooled>,
    last_used: u64,
}

/// The pool: at most one handle per inode (the writable one wins), at most `capacity` inodes.
pub struct HandlePool {
    capacity: usize,
    slots: Mutex<(HashMap<Ino, Slot>, u64)>,
}

impl HandlePool {
    pub fn new(capacity: usize) -> Self {
        HandlePool {
            capacity: capacity.max(1),
            slots: Mutex::new((HashMap::new(), 0)),
        }
    }

    fn lend(&self, ino: Ino, need_write: bool) -> Option<Arc<Pooled>> {
        let mut g = self.slots.lock();
        g.1 += 1;
        let tick = g.1;
        let slot = g.0.get_mut(&ino)?;
        if need_write && !slot.handle.writable {
            return None;
        }
        slot.last_used = tick;
        Some(slot.handle.clone())
    }

    /// Put `h` in the pool unless a handle at least as capable is already there. What is
    /// replaced or evicted is released once its last borrower is done.
    fn publish(&self, ino: Ino, h: Arc<Pooled>) {
        let dropped;
        {
            let mut g = self.slots.lock();
            g.1 += 1;
            let tick = g.1;
            let keep_existing =
                g.0.get(&ino)
                    .is_some_and(|s| s.handle.writable || !h.writable);
            if keep_existing {
                return;
            }
            let mut out = g.0.insert(
                ino,
                Slot {
                    handle: h,
                    last_used: tick,
                },
            );
            if g.0.len() > self.capacity {
                let oldest =
                    g.0.iter()
                        .filter(|(i, _)| **i != ino)
                        .min_by_key(|(_, s)| s.last_used)
                        .map(|(i, _)| *i);
                if let Some(o) = oldest {
                    out = out.or(g.0.remove(&o));
                }
            }
            dropped = out;
        }
        drop(dropped); // outside the pool lock: may release a VFS handle
    }

    /// Forget the handle of `ino` (e.g. it was removed).
    pub fn forget(&self, ino: Ino) {
        let out = self.slots.lock().0.remove(&ino);
        drop(out);
    }

    pub fn len(&self) -> usize {
        self.slots.lock().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the pooled handle of `ino` is writable (`None`: no handle).
    pub fn writable(&self, ino: Ino) -> Option<bool> {
        self.slots.lock().0.get(&ino).map(|s| s.handle.writable)
    }

    pub fn clear(&self) {
        let all: Vec<Slot> = self.slots.lock().0.drain().map(|(_, s)| s).collect();
        drop(all);
    }
}

impl HandlePool {
    async fn open(vfs: &Arc<Vfs>, ino: Ino, write: bool) -> VfsResult<Arc<Pooled>> {
        let fh = vfs.open_pooled(ino, write).await?;
        Ok(Arc::new(Pooled {
            vfs: Arc::downgrade(vfs),
            ino,
            fh,
            writable: write,
        }))
    }

    /// Stateless read: bytes and whether they reach the end of the file.
    pub async fn read(
        &self,
        vfs: &Arc<Vfs>,
        ino: Ino,
        offset: u64,
        count: u32,
    ) -> VfsResult<(Bytes, bool)> {
        let h = match self.lend(ino, false) {
            Some(h) => h,
            None => {
                let h = Self::open(vfs, ino, false).await?;
                self.publish(ino, h.clone());
                h
            }
        };
        let data = vfs.read(h.fh, offset, count).await?;
        let size = vfs.getattr(ino)?.size;
        let eof = offset + data.len() as u64 >= size;
        Ok((data, eof))
    }

    /// Stateless write, durable in the staging journal when it returns; schedules a flush.
    pub async fn write(
        &self,
        vfs: &Arc<Vfs>,
        ino: Ino,
        offset: u64,
        data: Vec<u8>,
    ) -> VfsResult<u32> {
        match self.lend(ino, true) {
            Some(h) => vfs.write_stable(h.fh, ino, offset, data).await,
            None => {
                // Upgrade: a fresh writable handle, published only once its write landed.
                let h = Self::open(vfs, ino, true).await?;
                let n = vfs.write_stable(h.fh, ino, offset, data).await?;
                self.publish(ino, h);
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::tests::{mount_at, read_all, remount, tmp, write_file, ME};
    use crate::vfs::ROOT_INO;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_then_write_upgrades_and_later_writes_reuse_the_writable_handle() {
        let (_d, dir) = tmp();
        let m = mount_at(&dir).await;
        let v = m.vfs.clone();
        let pool = HandlePool::new(8);
        let ino = write_file(&v, ROOT_INO, "f", b"0123456789").await;
        let (d, eof) = pool.read(&v, ino, 0, 4).await.unwrap();
        assert_eq!((&d[..], eof), (&b"0123"[..], false));
        assert_eq!(pool.writable(ino), Some(false));
        // The regression: a WRITE after a READ must upgrade, not fail.
        assert_eq!(pool.write(&v, ino, 2, b"ab".to_vec()).await.unwrap(), 2);
        assert_eq!(pool.writable(ino), Some(true));
        let fh = pool.lend(ino, true).unwrap().fh;
        pool.write(&v, ino, 8, b"YZ!".to_vec()).await.unwrap();
        assert_eq!(
            pool.lend(ino, true).unwrap().fh,
            fh,
            "a second write reopened"
        );
        // A read is served by the writable handle too.
        let (d, eof) = pool.read(&v, ino, 0, 100).await.unwrap();
        assert_eq!((&d[..], eof), (&b"01ab4567YZ!"[..], true));
        // A write with no prior read.
        let (g, o) = v.create(ROOT_INO, "g", 0o644, ME).await.unwrap();
        v.release(o.fh).unwrap();
        pool.write(&v, g.ino, 0, b"fresh".to_vec()).await.unwrap();
        assert_eq!(pool.writable(g.ino), Some(true));
        pool.clear();
        let m = remount(m, &dir).await;
        assert_eq!(read_all(&m.vfs, "f").await, b"01ab4567YZ!");
        assert_eq!(read_all(&m.vfs, "g").await, b"fresh");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_handle_stays_usable_by_its_borrower_and_the_pool_is_bounded() {
        let (_d, dir) = tmp();
        let m = mount_at(&dir).await;
        let v = m.vfs.clone();
        let pool = HandlePool::new(2);
        let ino = write_file(&v, ROOT_INO, "f", b"abc").await;
        pool.read(&v, ino, 0, 1).await.unwrap();
        let borrowed = pool.lend(ino, false).unwrap();
        // An upgrade replaces the read-only handle while it is borrowed...
        pool.write(&v, ino, 0, b"X".to_vec()).await.unwrap();
        // ...and the borrower can still use it: it is released only when dropped.
        assert_eq!(&v.read(borrowed.fh, 0, 3).await.unwrap()[..], b"Xbc");
        drop(borrowed);
        for n in 0..5 {
            let i = write_file(&v, ROOT_INO, &format!("g{n}"), b"x").await;
            pool.read(&v, i, 0, 1).await.unwrap();
        }
        assert!(pool.len() <= 2);
        pool.clear();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_concurrent_writers_at_distinct_offsets_all_land() {
        let (_d, dir) = tmp();
        let m = mount_at(&dir).await;
        let v = m.vfs.clone();
        let pool = Arc::new(HandlePool::new(16));
        let ino = write_file(&v, ROOT_INO, "f", b"").await;
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let (v, pool) = (v.clone(), pool.clone());
            tasks.push(tokio::spawn(async move {
                for k in 0..20u64 {
                    let off = (k * 8 + w) * 1000;
                    pool.write(&v, ino, off, vec![w as u8 + 1; 1000])
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        pool.clear();
        let m = remount(m, &dir).await;
        let got = read_all(&m.vfs, "f").await;
        assert_eq!(got.len(), 160_000);
        for (i, chunk) in got.chunks(1000).enumerate() {
            assert!(chunk.iter().all(|b| *b == (i % 8) as u8 + 1), "slot {i}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nfs_writes_to_a_committed_file_are_sparse() {
        let (_d, dir) = tmp();
        let m = mount_at(&dir).await;
        let data: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let ino = write_file(&m.vfs, ROOT_INO, "f", &data).await;
        m.vfs.fsync(ino).await.unwrap();
        let m = remount(m, &dir).await;
        let v = m.vfs.clone();
        let ino = crate::vfs::tests::resolve(&v, "f").await.unwrap();
        let pool = HandlePool::new(4);
        pool.write(&v, ino, 1_234_567, b"nfs edit".to_vec())
            .await
            .unwrap();
        assert_eq!(v.stats().bytes_fetched, 0, "the write downloaded data");
        pool.clear();
        v.fsync(ino).await.unwrap();
        assert_eq!(v.stats().files_composed, 1);
        let mut want = data;
        want[1_234_567..1_234_575].copy_from_slice(b"nfs edit");
        drop(v);
        let m = remount(m, &dir).await;
        assert!(read_all(&m.vfs, "f").await == want);
    }
}
