//! Namespace changes not yet committed to the catalog, in order, with their journal.
//!
//! A namespace syscall (create, mkdir, unlink, rename, chmod, ...) changes the inode table and
//! appends its catalog ops here under `ns_lock`, at memory speed; the flusher commits them in
//! batches, before the file bodies that depend on them (see `flush/batch.rs`). Every op is
//! appended to `namespace.nslog` in the staging directory before the syscall returns, so a
//! killed process loses none: the next start commits what the log holds past its last
//! `Committed` mark. The log is emptied whenever nothing is pending.
//!
//! Record: `[kind u8][payload length u32][payload]`, like the staging journal; a torn last
//! record was never acknowledged and is ignored.
//!
//! Replaying ops that did reach the catalog is not harmless (a replayed create and rename
//! would put an empty file over the committed body), so before each commit the log records
//! the catalog revision it starts from (`Committing`); a `Committing` without its
//! `Committed` is decided at start-up by the catalog's revision: if it moved on, the commit
//! happened. (This mount is the only writer of the store while it holds it.)

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use crate::remote::record::{EntryRecord, OpRecord};
use crate::remote::{CatalogOp, Meta};
use crate::vfs::write::journal::{frame, frames};

const PUT: u8 = 1;
const DELETE: u8 = 2;
const RENAME: u8 = 3;
const LINK: u8 = 4;
const COMMITTED: u8 = 5;
const COMMITTING: u8 = 6;
const SETMETA: u8 = 7;
const EXPECT: u8 = 8;

/// Disk space kept allocated for the log, so that `rm` and `mv` still work on a full staging
/// disk (appends land in blocks the log already owns). The log is emptied once nothing is
/// pending and it has used half of it.
const RESERVE: u64 = 256 << 10;

pub struct NsLog {
    file: File,
    /// Ops appended and not yet committed, with their sequence numbers.
    pending: Vec<(u64, CatalogOp)>,
    next_seq: u64,
    /// Renames appended so far: a directory listing read from the catalog while one was
    /// appended may describe a path that moved.
    renames: u64,
}

impl NsLog {
    /// Open the log in `dir`; returns it (empty) and what an earlier run left uncommitted.
    pub fn open(dir: &Path) -> std::io::Result<(NsLog, Leftovers)> {
        let path = dir.join("namespace.nslog");
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let left = decode(&bytes).ok_or_else(|| {
            std::io::Error::other(format!("{} is not a namespace log", path.display()))
        })?;
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        reserve(&file);
        let log = NsLog {
            file,
            pending: Vec::new(),
            next_seq: 1,
            renames: 0,
        };
        Ok((log, left))
    }

    /// Append ops (one syscall's worth) to the journal and the pending list.
    pub fn push(&mut self, ops: Vec<CatalogOp>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for op in &ops {
            encode_op(&mut buf, self.next_seq, op);
        }
        self.file.write_all(&buf)?;
        for op in ops {
            if matches!(op, CatalogOp::Rename { .. }) {
                self.renames += 1;
            }
            self.pending.push((self.next_seq, op));
        }
        self.next_seq += 1;
        Ok(())
    }

    /// A handle to make every appended op durable on the local disk (`sync_data`), for use
    /// outside the lock.
    pub fn handle(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    pub fn renames(&self) -> u64 {
        self.renames
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The pending ops and the sequence number they run up to.
    pub fn snapshot(&self) -> (Vec<CatalogOp>, u64) {
        let ops = self.pending.iter().map(|(_, op)| op.clone()).collect();
        (ops, self.pending.last().map_or(0, |(s, _)| *s))
    }

    /// A commit of the ops up to `seq` starts from catalog revision `revision`.
    pub fn committing(&mut self, seq: u64, revision: u64) -> std::io::Result<()> {
        let mut p = Vec::new();
        put_u64(&mut p, seq);
        put_u64(&mut p, revision);
        let mut buf = Vec::new();
        frame(&mut buf, COMMITTING, &p);
        self.file.write_all(&buf)
    }

    /// The ops up to `seq` are in the catalog.
    pub fn committed(&mut self, seq: u64) -> std::io::Result<()> {
        self.pending.retain(|(s, _)| *s > seq);
        let mut buf = Vec::new();
        frame(&mut buf, COMMITTED, &seq.to_le_bytes());
        self.file.write_all(&buf)?;
        if self.pending.is_empty() && self.file.metadata()?.len() > RESERVE / 2 {
            self.empty()?;
        }
        Ok(())
    }

    /// Forget what an earlier run left (after it was committed at start-up).
    pub fn clear_leftovers(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            self.empty()?;
        }
        Ok(())
    }

    fn empty(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        reserve(&self.file);
        Ok(())
    }
}

/// Keep [`RESERVE`] bytes allocated past the end (best effort: not every file system can).
fn reserve(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open fd.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            RESERVE as libc::off_t,
        );
    }
}

fn put_str(p: &mut Vec<u8>, s: &str) {
    p.extend_from_slice(&(s.len() as u32).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

fn put_u64(p: &mut Vec<u8>, v: u64) {
    p.extend_from_slice(&v.to_le_bytes());
}

fn put_opt_str(p: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            p.push(1);
            put_str(p, s);
        }
        None => p.push(0),
    }
}

fn put_meta(p: &mut Vec<u8>, m: &Meta) {
    for v in [m.mode as u64, m.uid as u64, m.gid as u64] {
        put_u64(p, v);
    }
    for v in [m.atime_ns, m.mtime_ns, m.ctime_ns] {
        put_u64(p, v as u64);
    }
}

/// An op's record in the log: its shared flat form ([`OpRecord`], the one the catalog routes
/// send as JSON) written field by field, `[seq u64]` first. Strings are `[len u32][bytes]`, an
/// optional string `[0]` or `[1][string]`, the kind one byte, other numbers u64 LE (u32 metadata widened), `link` as
/// group + 1 (0: none). Binary rather than JSON: logs written since the first release must
/// replay (`tests/fixtures/format-v1`), and it is two thirds the size (the fixture's 16 ops:
/// 1,420 bytes framed, 2,171 as JSON).
fn encode_op(out: &mut Vec<u8>, seq: u64, op: &CatalogOp) {
    let mut p = Vec::new();
    put_u64(&mut p, seq);
    let kind = match OpRecord::from(op) {
        OpRecord::Put { entry: e } => {
            put_str(&mut p, &e.path);
            p.push(e.kind);
            put_u64(&mut p, e.rdev);
            put_opt_str(&mut p, e.hash.as_deref());
            put_u64(&mut p, e.size);
            put_opt_str(&mut p, e.target.as_deref());
            put_meta(&mut p, &e.meta);
            put_u64(&mut p, e.link.map_or(0, |l| l + 1));
            PUT
        }
        OpRecord::SetMeta { path, meta } => {
            put_str(&mut p, &path);
            put_meta(&mut p, &meta.meta);
            SETMETA
        }
        OpRecord::Delete { path } => {
            put_str(&mut p, &path);
            DELETE
        }
        OpRecord::Rename { from, to } => {
            put_str(&mut p, &from);
            put_str(&mut p, &to);
            RENAME
        }
        OpRecord::Link { from, to } => {
            put_str(&mut p, &from);
            put_str(&mut p, &to);
            LINK
        }
        OpRecord::Expect { path, hash, size } => {
            put_str(&mut p, &path);
            put_opt_str(&mut p, hash.as_deref());
            put_u64(&mut p, size);
            EXPECT
        }
    };
    frame(out, kind, &p);
}

/// A cursor over one record's payload.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = u32::from_le_bytes(self.bytes(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }
    fn meta(&mut self) -> Option<Meta> {
        let (mode, uid, gid) = (self.u64()? as u32, self.u64()? as u32, self.u64()? as u32);
        let (atime_ns, mtime_ns, ctime_ns) =
            (self.u64()? as i64, self.u64()? as i64, self.u64()? as i64);
        Some(Meta {
            mode,
            uid,
            gid,
            atime_ns,
            mtime_ns,
            ctime_ns,
        })
    }

    fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }
}

/// The op of a record of kind `kind` (see [`encode_op`]); `None` if malformed or of an
/// unknown entry kind.
fn decode_op(kind: u8, r: &mut Reader<'_>) -> Option<CatalogOp> {
    let record = match kind {
        PUT => {
            let (path, kind, rdev) = (r.str()?, r.u8()?, r.u64()?);
            let (hash, size, target) = (r.opt_str()?, r.u64()?, r.opt_str()?);
            let meta = r.meta()?;
            let link = r.u64()?.checked_sub(1);
            OpRecord::Put {
                entry: EntryRecord {
                    kind,
                    rdev,
                    hash,
                    size,
                    target,
                    link,
                    ..EntryRecord::of_meta(path, &meta)
                },
            }
        }
        SETMETA => {
            let path = r.str()?;
            let meta = EntryRecord::of_meta(path.clone(), &r.meta()?);
            OpRecord::SetMeta { path, meta }
        }
        DELETE => OpRecord::Delete { path: r.str()? },
        RENAME => OpRecord::Rename {
            from: r.str()?,
            to: r.str()?,
        },
        LINK => OpRecord::Link {
            from: r.str()?,
            to: r.str()?,
        },
        EXPECT => OpRecord::Expect {
            path: r.str()?,
            hash: r.opt_str()?,
            size: r.u64()?,
        },
        _ => return None,
    };
    record.op()
}

/// What an earlier run left in its log.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Ops past the last `Committed` mark, with their sequence numbers.
    ops: Vec<(u64, CatalogOp)>,
    /// A commit of the ops up to `.0` that started from catalog revision `.1` and never
    /// recorded its end.
    in_flight: Option<(u64, u64)>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The ops still to commit, given the catalog's current revision.
    pub fn into_replay(self, revision: u64) -> Vec<CatalogOp> {
        let done = match self.in_flight {
            Some((seq, from)) if revision > from => seq,
            _ => 0,
        };
        self.ops
            .into_iter()
            .filter(|(s, _)| *s > done)
            .map(|(_, op)| op)
            .collect()
    }
}

/// What a log holds past its last `Committed` mark. `None` if a complete record is malformed.
fn decode(bytes: &[u8]) -> Option<Leftovers> {
    let mut ops: Vec<(u64, CatalogOp)> = Vec::new();
    let mut in_flight = None;
    for (kind, payload) in frames(bytes) {
        let mut r = Reader(payload);
        let seq = r.u64()?;
        match kind {
            COMMITTED => {
                ops.retain(|(s, _)| *s > seq);
                in_flight = None;
            }
            COMMITTING => in_flight = Some((seq, r.u64()?)),
            _ => ops.push((seq, decode_op(kind, &mut r)?)),
        }
    }
    Some(Leftovers { ops, in_flight })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{Entry, EntryKind, FileId};

    fn put(path: &str) -> CatalogOp {
        CatalogOp::Put(Entry {
            path: path.into(),
            kind: EntryKind::CharDevice(0x0501),
            content: Some(FileId {
                hash: "abc".into(),
                size: 7,
            }),
            target: Some("t\narget".into()),
            meta: crate::remote::record::format_v1::meta(0),
            link: Some(0),
        })
    }

    fn same(a: &[CatalogOp], b: &[CatalogOp]) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn uncommitted_ops_survive_a_reopen_and_a_torn_tail_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let (mut log, left) = NsLog::open(d.path()).unwrap();
        assert!(left.is_empty());
        let first = vec![put("a/b"), CatalogOp::Delete { path: "x".into() }];
        log.push(first).unwrap();
        let (_, seq) = log.snapshot();
        let second = vec![
            CatalogOp::Rename {
                from: "a".into(),
                to: "é/c".into(),
            },
            CatalogOp::Link {
                from: "é/c/b".into(),
                to: "l".into(),
            },
            CatalogOp::SetMeta {
                path: "l".into(),
                meta: Meta {
                    mode: 0o600,
                    uid: 1,
                    gid: 2,
                    atime_ns: 3,
                    mtime_ns: -4,
                    ctime_ns: 5,
                },
            },
            CatalogOp::Expect {
                path: "l".into(),
                content: Some(FileId {
                    hash: "h".into(),
                    size: 9,
                }),
            },
            CatalogOp::Expect {
                path: "m".into(),
                content: None,
            },
        ];
        log.push(second.clone()).unwrap();
        log.committed(seq).unwrap();
        assert!(same(&log.snapshot().0, &second));
        // A crash in the middle of the next append.
        let mut torn = Vec::new();
        encode_op(&mut torn, 99, &put("z"));
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join("namespace.nslog"))
            .unwrap()
            .write_all(&torn[..torn.len() - 3])
            .unwrap();
        drop(log);
        let (mut log, left) = NsLog::open(d.path()).unwrap();
        assert!(same(&left.into_replay(0), &second));
        log.clear_leftovers().unwrap();
        assert_eq!(
            std::fs::metadata(d.path().join("namespace.nslog"))
                .unwrap()
                .len(),
            0
        );
        // Everything committed: the log is emptied.
        log.push(vec![put("q")]).unwrap();
        let (ops, seq) = log.snapshot();
        assert!(same(&ops, &[put("q")]));
        log.committed(seq).unwrap();
        assert!(log.is_empty());
        drop(log);
        let (_, left) = NsLog::open(d.path()).unwrap();
        assert!(left.is_empty(), "committed ops came back");
    }

    #[test]
    fn a_malformed_record_is_refused() {
        let mut bytes = Vec::new();
        frame(&mut bytes, 42, &1u64.to_le_bytes());
        assert!(decode(&bytes).is_none());
    }

    #[test]
    fn a_commit_cut_off_before_its_mark_is_decided_by_the_catalog_revision() {
        let d = tempfile::tempdir().unwrap();
        let open = || NsLog::open(d.path()).unwrap();
        let (mut log, _) = open();
        log.push(vec![put("a")]).unwrap();
        log.push(vec![put("b")]).unwrap();
        let (_, seq) = log.snapshot();
        log.committing(seq, 7).unwrap();
        log.push(vec![put("c")]).unwrap();
        drop(log);
        // The catalog moved past revision 7: the commit of a and b happened.
        assert!(same(&open().1.into_replay(8), &[put("c")]));
        // It did not: replay everything.
        assert!(same(
            &open().1.into_replay(7),
            &[put("a"), put("b"), put("c")]
        ));
    }

    /// A log as today's `NsLog` writes it: every op, a commit mark after the first push, a
    /// commit cut off (from revision 41) after the third, and a torn last record.
    fn write_format_1_log(dir: &Path) -> Vec<u8> {
        let ops = crate::remote::record::format_v1::ops();
        let (mut log, _) = NsLog::open(dir).unwrap();
        log.push(ops[..1].to_vec()).unwrap();
        log.push(ops[1..5].to_vec()).unwrap();
        log.committed(1).unwrap();
        log.push(ops[5..10].to_vec()).unwrap();
        let (_, seq) = log.snapshot();
        log.committing(seq, 41).unwrap();
        log.push(ops[10..].to_vec()).unwrap();
        drop(log);
        let mut torn = Vec::new();
        encode_op(&mut torn, 5, &ops[0]);
        let path = dir.join("namespace.nslog");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(&path, &bytes).unwrap();
        bytes
    }

    /// A log written by the code of 2026-12-05 (`tests/fixtures/format-v1/namespace.nslog`)
    /// still recovers, and today's code writes it byte for byte alike.
    #[test]
    fn the_format_1_log_fixture_recovers() {
        use crate::remote::record::format_v1::{ops, read, same};
        let bytes = read("namespace.nslog");
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("namespace.nslog"), &bytes).unwrap();
        let ops = ops();
        // The cut-off commit did not happen (the catalog is still at 41): replay all but the
        // first push.
        let (_, left) = NsLog::open(d.path()).unwrap();
        assert!(same(&left.into_replay(41), &ops[1..]));
        // It did: replay the last push only.
        let (_, left) = NsLog::open(d.path()).unwrap();
        assert!(same(&left.into_replay(42), &ops[10..]));
        let again = tempfile::tempdir().unwrap();
        assert_eq!(write_format_1_log(again.path()), bytes);
    }
}
