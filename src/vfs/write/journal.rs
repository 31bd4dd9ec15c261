//! The staging journal: next to every staging file `X.stg`, an append-only log `X.log` of what
//! happened to it — the base it mirrors, the bucket path it belongs to, every write, fill,
//! resize and commit, and an unlink. Replaying the log rebuilds the exact [`SparseState`], so
//! after a crash (`kill -9`) the mount knows which bytes of the staging file are the user's,
//! which are cached copies of the base and which are holes, and can commit the file.
//!
//! A record is appended under the io lock right after the staging operation it describes and
//! before the operation is acknowledged, so every acknowledged write is in the log (the page
//! cache survives a killed process; the log is fsync'd when a file is first journaled and at
//! every path change). A staging file without a log, or with a log that does not parse, is
//! never trusted. A torn last record (a crash mid-append) is ignored: its operation was not
//! acknowledged.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use crate::remote::FileId;
use crate::vfs::write::sparse::SparseState;

const BASE: u8 = 1;
const PATH: u8 = 2;
const WRITE: u8 = 3;
const FILL: u8 = 4;
const RESIZE: u8 = 5;
const COMMIT: u8 = 6;
const UNLINKED: u8 = 7;
const LANDED: u8 = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The body this staging file mirrors when it was created.
    Base(FileId),
    /// The file's path in the bucket from now on.
    Path(String),
    Write(u64, u64),
    Fill(u64, u64),
    Resize(u64),
    /// The content was committed as this body; nothing is dirty any more.
    Commit(FileId),
    /// The file was unlinked: never recover it.
    Unlinked,
    /// The store holds this body at the file's path, committed by this mount from a state
    /// written to since (so not a [`Record::Commit`]: the dirty ranges stay against the base).
    /// Recovery takes it for this mount's own version, not another writer's.
    Landed(FileId),
}

fn put_id(out: &mut Vec<u8>, id: &FileId) {
    out.extend_from_slice(&id.size.to_le_bytes());
    out.extend_from_slice(id.hash.as_bytes());
}

impl Record {
    /// `[kind u8][payload length u32][payload]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        let kind = match self {
            Record::Base(id) => {
                put_id(&mut payload, id);
                BASE
            }
            Record::Path(p) => {
                payload.extend_from_slice(p.as_bytes());
                PATH
            }
            Record::Write(a, b) | Record::Fill(a, b) => {
                payload.extend_from_slice(&a.to_le_bytes());
                payload.extend_from_slice(&b.to_le_bytes());
                if matches!(self, Record::Write(..)) {
                    WRITE
                } else {
                    FILL
                }
            }
            Record::Resize(n) => {
                payload.extend_from_slice(&n.to_le_bytes());
                RESIZE
            }
            Record::Commit(id) => {
                put_id(&mut payload, id);
                COMMIT
            }
            Record::Unlinked => UNLINKED,
            Record::Landed(id) => {
                put_id(&mut payload, id);
                LANDED
            }
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        frame(&mut out, kind, &payload);
        out
    }

    /// Every complete record of a log, in order. `None` if a complete record is malformed.
    pub fn decode_all(bytes: &[u8]) -> Option<Vec<Record>> {
        let mut out = Vec::new();
        for (kind, p) in frames(bytes) {
            let u64_at = |i: usize| -> Option<u64> {
                Some(u64::from_le_bytes(p.get(i..i + 8)?.try_into().ok()?))
            };
            let id = || -> Option<FileId> {
                Some(FileId {
                    size: u64_at(0)?,
                    hash: String::from_utf8(p.get(8..)?.to_vec()).ok()?,
                })
            };
            out.push(match kind {
                BASE => Record::Base(id()?),
                PATH => Record::Path(String::from_utf8(p.to_vec()).ok()?),
                WRITE => Record::Write(u64_at(0)?, u64_at(8)?),
                FILL => Record::Fill(u64_at(0)?, u64_at(8)?),
                RESIZE => Record::Resize(u64_at(0)?),
                COMMIT => Record::Commit(id()?),
                UNLINKED => Record::Unlinked,
                LANDED => Record::Landed(id()?),
                _ => return None,
            });
        }
        Some(out)
    }
}

/// Append one record, framed `[kind u8][payload length u32 LE][payload]`: the framing of
/// both the staging journals and the namespace log.
pub(in crate::vfs) fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The complete records of a framed log, in order, as (kind, payload); a torn last record
/// (a crash mid-append: its operation was never acknowledged) ends the sequence.
pub(in crate::vfs) fn frames(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let head = bytes.get(at..at + 5)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let payload = bytes.get(at + 5..at + 5 + len)?;
        at += 5 + len;
        Some((head[0], payload))
    })
}

/// What a log says about its staging file.
#[derive(Debug)]
pub struct Replayed {
    pub state: SparseState,
    pub path: Option<String>,
    pub unlinked: bool,
    /// The last body this mount committed from a state written to since, if no commit of
    /// the whole state followed.
    pub landed: Option<FileId>,
}

/// Rebuild the state a log describes. `None`: the log is not usable.
pub fn replay(records: &[Record]) -> Option<Replayed> {
    let Some(Record::Base(base)) = records.first() else {
        return None;
    };
    let mut state = SparseState::from_base(base.clone());
    let mut path = None;
    let mut unlinked = false;
    let mut landed = None;
    for r in &records[1..] {
        match r {
            Record::Base(_) => return None,
            Record::Path(p) => path = Some(p.clone()),
            Record::Write(a, b) => state.track_write(*a..*b),
            Record::Fill(a, b) => state.track_fill(*a..*b),
            Record::Resize(n) => state.resize(*n),
            Record::Commit(id) => {
                let g = state.generation();
                state.commit(id.clone(), g);
                landed = None;
            }
            Record::Unlinked => unlinked = true,
            Record::Landed(id) => landed = Some(id.clone()),
        }
    }
    Some(Replayed {
        state,
        path,
        unlinked,
        landed,
    })
}

pub fn append(mut log: &File, r: &Record) -> std::io::Result<()> {
    log.write_all(&r.encode())
}

pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(path)?.read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn id(h: &str, size: u64) -> FileId {
        FileId {
            hash: h.into(),
            size,
        }
    }

    #[test]
    fn replay_rebuilds_the_state_and_ignores_a_torn_tail() {
        let recs = vec![
            Record::Base(id("abc", 100)),
            Record::Path("dir/file name\nwith newline".into()),
            Record::Fill(0, 10),
            Record::Write(5, 20),
            Record::Resize(150),
            Record::Commit(id("def", 150)),
            Record::Write(90, 95),
            Record::Path("moved".into()),
        ];
        let mut bytes: Vec<u8> = recs.iter().flat_map(|r| r.encode()).collect();
        let full = bytes.len();
        bytes.extend_from_slice(&Record::Write(1, 2).encode()[..7]);
        let decoded = Record::decode_all(&bytes).unwrap();
        assert_eq!(decoded, recs);
        assert_eq!(bytes.len() - full, 7);
        let r = replay(&decoded).unwrap();
        assert_eq!(r.path.as_deref(), Some("moved"));
        assert!(!r.unlinked);
        assert_eq!(r.state.base(), Some(&id("def", 150)));
        assert_eq!(r.state.dirty().ranges(), &[90..95]);
        assert_eq!(r.state.size(), 150);
        assert!(r.state.coverage().covers(0..20) && r.state.coverage().covers(100..150));
    }

    #[test]
    fn logs_without_a_base_or_with_garbage_are_refused() {
        assert!(replay(&[Record::Path("x".into())]).is_none());
        assert!(Record::decode_all(&[9, 0, 0, 0, 0]).is_none());
    }

    /// Two staging files as today's `Staged` journals them: one edited, committed, edited
    /// again and renamed (it recovers), one unlinked (it does not). Copied into `dir` as
    /// `live.*` and `unlinked.*`.
    fn write_format_1_journals(dir: &Path) {
        use crate::remote::record::format_v1::hash;
        use crate::vfs::write::staging::{log_path, StagingArea};
        let t = tempfile::tempdir().unwrap();
        let area = StagingArea::open(t.path()).unwrap();
        let keep = |s: &crate::vfs::write::staging::Staged, name: &str| {
            std::fs::copy(&s.path, dir.join(format!("{name}.stg"))).unwrap();
            std::fs::copy(log_path(&s.path), dir.join(format!("{name}.log"))).unwrap();
        };
        let base = id(&hash(0xcd), 100);
        let live = area.create(base.clone()).unwrap();
        live.fill(&base, 0, &[1; 10]).unwrap();
        live.write(5, &[2; 15]).unwrap();
        live.note_path("dir/é file").unwrap();
        live.resize(150).unwrap();
        let (generation, _, _) = live.snapshot_edits().unwrap();
        assert!(live.commit(id(&hash(0xef), 150), generation).unwrap());
        live.write(90, &[3; 5]).unwrap();
        live.note_path("moved").unwrap();
        keep(&live, "live");
        let gone = area.create(id(&hash(0x12), 8)).unwrap();
        gone.write(0, b"abc").unwrap();
        gone.note_path("gone").unwrap();
        gone.note_unlinked().unwrap();
        keep(&gone, "unlinked");
    }

    /// Journals written by the code of 2026-12-05 (`tests/fixtures/format-v1/`) still decode
    /// and recover, and today's code writes them byte for byte alike.
    #[test]
    fn the_format_1_journal_fixtures_recover() {
        use crate::remote::record::format_v1::{hash, read};
        use crate::vfs::write::staging::Staged;
        let live = Record::decode_all(&read("live.log")).unwrap();
        assert_eq!(
            live,
            [
                Record::Base(id(&hash(0xcd), 100)),
                Record::Fill(0, 10),
                Record::Write(5, 20),
                Record::Path("dir/é file".into()),
                Record::Resize(150),
                Record::Commit(id(&hash(0xef), 150)),
                Record::Write(90, 95),
                Record::Path("moved".into()),
            ]
        );
        let gone = Record::decode_all(&read("unlinked.log")).unwrap();
        assert_eq!(gone.last(), Some(&Record::Unlinked));

        let t = tempfile::tempdir().unwrap();
        for f in ["live.stg", "live.log", "unlinked.stg", "unlinked.log"] {
            std::fs::write(t.path().join(f), read(f)).unwrap();
        }
        let found = Staged::recover(&t.path().join("live.stg"))
            .unwrap()
            .unwrap();
        let staged = found.staged;
        assert_eq!(found.path, "moved");
        // Format 1 had no landing records.
        assert_eq!(found.landed, None);
        staged.with_io(|io| {
            assert_eq!(io.state.base(), Some(&id(&hash(0xef), 150)));
            assert_eq!(io.state.dirty().ranges(), &[90..95]);
            assert_eq!(io.state.size(), 150);
        });
        match staged.read(90..95).unwrap() {
            crate::vfs::write::staging::ReadPlan::Data(d) => assert_eq!(d, [3; 5]),
            crate::vfs::write::staging::ReadPlan::Holes { .. } => panic!("the edit is a hole"),
        }
        assert!(Staged::recover(&t.path().join("unlinked.stg"))
            .unwrap()
            .is_none());

        let again = tempfile::tempdir().unwrap();
        write_format_1_journals(again.path());
        for f in ["live.stg", "live.log", "unlinked.stg", "unlinked.log"] {
            assert_eq!(std::fs::read(again.path().join(f)).unwrap(), read(f), "{f}");
        }
    }
}
