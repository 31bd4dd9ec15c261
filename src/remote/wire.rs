//! JSON forms of catalog entries and ops, for xetmount's own catalog routes on `xetmount
//! serve` (`/api/buckets/{id}/xetmount/...`): what the Hugging Face bucket API cannot carry
//! (modes, owners, times in nanoseconds, symlinks, special files, empty directories, hard
//! links, atomic renames); and how a path travels in a URL, the same way on both sides.

use serde::{Deserialize, Serialize};

/// Seconds since the epoch: the unit of token expiries (`exp`) on the wire, which the server
/// issues and the client checks.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Percent-encode `s` for a URL: everything but unreserved characters, and `/` too unless
/// `keep_slash` (a query value keeps it; a bucket path sent as one path segment does not).
pub fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

use super::{CatalogOp, Conflict, Entry, EntryKind, FileId, Meta, RemoteError};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WireEntry {
    pub path: String,
    /// `EntryKind::code`: 0 file, 1 dir, 2 symlink, 3 fifo, 4 socket, 5 char, 6 block device.
    pub kind: u8,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<&Entry> for WireEntry {
    fn from(e: &Entry) -> Self {
        let (kind, rdev) = e.kind.code();
        WireEntry {
            path: e.path.clone(),
            kind,
            rdev,
            hash: e.content.as_ref().map(|c| c.hash.clone()),
            size: e.content.as_ref().map_or(0, |c| c.size),
            target: e.target.clone(),
            mode: e.meta.mode,
            uid: e.meta.uid,
            gid: e.meta.gid,
            atime_ns: e.meta.atime_ns,
            mtime_ns: e.meta.mtime_ns,
            ctime_ns: e.meta.ctime_ns,
            link: e.link,
        }
    }
}

impl WireEntry {
    /// The entry, or `None` for an unknown kind.
    pub fn entry(self) -> Option<Entry> {
        let meta = self.meta();
        Some(Entry {
            kind: EntryKind::from_code(self.kind, self.rdev)?,
            content: self.hash.map(|hash| FileId {
                hash,
                size: self.size,
            }),
            target: self.target,
            meta,
            link: self.link,
            path: self.path,
        })
    }

    fn meta(&self) -> Meta {
        Meta {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            atime_ns: self.atime_ns,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum WireOp {
    Put {
        entry: WireEntry,
    },
    SetMeta {
        path: String,
        meta: WireEntry,
    },
    Link {
        from: String,
        to: String,
    },
    Delete {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    /// A file body as `WireEntry` carries it: no hash for an empty body.
    Expect {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<String>,
        #[serde(default)]
        size: u64,
    },
}

/// A refused commit's answer (HTTP 412): every path whose expectation failed, with what it
/// held at that point of the batch.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WireConflicts {
    pub error: String,
    pub conflicts: Vec<WireConflict>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WireConflict {
    pub path: String,
    pub current: Option<WireEntry>,
}

impl From<&[Conflict]> for WireConflicts {
    fn from(c: &[Conflict]) -> Self {
        WireConflicts {
            error: RemoteError::Conflict(c.to_vec()).to_string(),
            conflicts: c
                .iter()
                .map(|c| WireConflict {
                    path: c.path.clone(),
                    current: c.current.as_ref().map(WireEntry::from),
                })
                .collect(),
        }
    }
}

impl WireConflicts {
    pub fn conflicts(self) -> Vec<Conflict> {
        self.conflicts
            .into_iter()
            .map(|c| Conflict {
                path: c.path,
                current: c.current.and_then(WireEntry::entry),
            })
            .collect()
    }
}

impl From<&CatalogOp> for WireOp {
    fn from(op: &CatalogOp) -> Self {
        match op {
            CatalogOp::Put(e) => WireOp::Put { entry: e.into() },
            CatalogOp::SetMeta { path, meta } => WireOp::SetMeta {
                path: path.clone(),
                meta: WireEntry {
                    path: path.clone(),
                    kind: 0,
                    rdev: 0,
                    hash: None,
                    size: 0,
                    target: None,
                    mode: meta.mode,
                    uid: meta.uid,
                    gid: meta.gid,
                    atime_ns: meta.atime_ns,
                    mtime_ns: meta.mtime_ns,
                    ctime_ns: meta.ctime_ns,
                    link: None,
                },
            },
            CatalogOp::Link { from, to } => WireOp::Link {
                from: from.clone(),
                to: to.clone(),
            },
            CatalogOp::Delete { path } => WireOp::Delete { path: path.clone() },
            CatalogOp::Rename { from, to } => WireOp::Rename {
                from: from.clone(),
                to: to.clone(),
            },
            CatalogOp::Expect { path, content } => WireOp::Expect {
                path: path.clone(),
                hash: content.as_ref().map(|c| c.hash.clone()),
                size: content.as_ref().map_or(0, |c| c.size),
            },
        }
    }
}

impl WireOp {
    /// The op, or `None` for an entry of unknown kind.
    pub fn op(self) -> Option<CatalogOp> {
        Some(match self {
            WireOp::Put { entry } => CatalogOp::Put(entry.entry()?),
            WireOp::SetMeta { path, meta } => CatalogOp::SetMeta {
                path,
                meta: meta.meta(),
            },
            WireOp::Link { from, to } => CatalogOp::Link { from, to },
            WireOp::Delete { path } => CatalogOp::Delete { path },
            WireOp::Rename { from, to } => CatalogOp::Rename { from, to },
            WireOp::Expect { path, hash, size } => CatalogOp::Expect {
                path,
                content: hash.map(|hash| FileId { hash, size }),
            },
        })
    }
}

/// Every form of `Entry` and `CatalogOp`, as the fixtures in `tests/fixtures/format-v1/` hold
/// them: the namespace log, staging journals and wire JSON written by the code of 2026-12-05.
/// Whatever the codecs become, they must read these files back as these values.
#[cfg(test)]
pub(crate) mod format_v1 {
    use crate::remote::{CatalogOp, Conflict, Entry, EntryKind, FileId, Meta};

    pub fn read(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/format-v1")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    pub fn hash(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn meta(n: i64) -> Meta {
        Meta {
            mode: 0o4755 - n as u32,
            uid: 1000 + n as u32,
            gid: 100,
            atime_ns: -5 - n,
            mtime_ns: 1_700_000_000_123_456_789 + n,
            ctime_ns: 3 * n,
        }
    }

    fn entry(n: i64, path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            content: None,
            target: None,
            meta: meta(n),
            link: None,
        }
    }

    /// One entry of every kind, with and without a body and a hard-link group (group 0
    /// included: the log stores it shifted by one).
    pub fn entries() -> Vec<Entry> {
        vec![
            Entry {
                content: Some(FileId {
                    hash: hash(0xab),
                    size: 1 << 40,
                }),
                ..entry(0, "dir/é file", EntryKind::File)
            },
            entry(1, "empty", EntryKind::File),
            entry(2, "dir", EntryKind::Dir),
            Entry {
                target: Some("../tar\nget".into()),
                ..entry(3, "dir/ln", EntryKind::Symlink)
            },
            entry(4, "fifo", EntryKind::Fifo),
            entry(5, "sock", EntryKind::Socket),
            entry(6, "dev/c", EntryKind::CharDevice(0x0501)),
            entry(7, "dev/b", EntryKind::BlockDevice((259 << 32) | 7)),
            Entry {
                content: Some(FileId {
                    hash: hash(0x01),
                    size: 9,
                }),
                link: Some(0),
                ..entry(8, "hard/a", EntryKind::File)
            },
            Entry {
                link: Some(7),
                ..entry(9, "hard/b", EntryKind::File)
            },
        ]
    }

    /// A `Put` of every entry, then every other op (an expectation with and without a body).
    pub fn ops() -> Vec<CatalogOp> {
        let mut ops: Vec<CatalogOp> = entries().into_iter().map(CatalogOp::Put).collect();
        ops.extend([
            CatalogOp::SetMeta {
                path: "dir/é file".into(),
                meta: meta(10),
            },
            CatalogOp::Link {
                from: "hard/a".into(),
                to: "hard/c".into(),
            },
            CatalogOp::Delete {
                path: "sock".into(),
            },
            CatalogOp::Rename {
                from: "dir".into(),
                to: "dir2".into(),
            },
            CatalogOp::Expect {
                path: "dir2/é file".into(),
                content: Some(FileId {
                    hash: hash(0xab),
                    size: 1 << 40,
                }),
            },
            CatalogOp::Expect {
                path: "empty".into(),
                content: None,
            },
        ]);
        ops
    }

    /// A refused commit's conflicts: a file, a path that is gone, a directory.
    pub fn conflicts() -> Vec<Conflict> {
        let e = entries();
        vec![
            Conflict {
                path: e[0].path.clone(),
                current: Some(e[0].clone()),
            },
            Conflict {
                path: "gone".into(),
                current: None,
            },
            Conflict {
                path: "dir".into(),
                current: Some(e[2].clone()),
            },
        ]
    }

    /// Ops compared by their debug form (`CatalogOp` has no `PartialEq`).
    pub fn same(a: &[CatalogOp], b: &[CatalogOp]) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_ops_round_trip_through_json() {
        let e = Entry {
            path: "a/dev".into(),
            kind: EntryKind::CharDevice(0x0501),
            content: None,
            target: None,
            meta: Meta {
                mode: 0o4755,
                uid: 1000,
                gid: 100,
                atime_ns: -5,
                mtime_ns: 1_700_000_000_123_456_789,
                ctime_ns: 7,
            },
            link: Some(3),
        };
        let f = Entry {
            path: "x y/f".into(),
            kind: EntryKind::File,
            content: Some(FileId {
                hash: "ab".repeat(32),
                size: 1 << 40,
            }),
            link: None,
            ..e.clone()
        };
        for entry in [&e, &f] {
            let json = serde_json::to_string(&WireEntry::from(entry)).unwrap();
            let back: WireEntry = serde_json::from_str(&json).unwrap();
            assert_eq!(back.entry().as_ref(), Some(entry));
        }
        let ops = [
            CatalogOp::Put(f.clone()),
            CatalogOp::SetMeta {
                path: "p".into(),
                meta: e.meta,
            },
            CatalogOp::Link {
                from: "a".into(),
                to: "b".into(),
            },
            CatalogOp::Delete { path: "d".into() },
            CatalogOp::Rename {
                from: "r".into(),
                to: "s".into(),
            },
            CatalogOp::Expect {
                path: "x y/f".into(),
                content: f.content.clone(),
            },
            CatalogOp::Expect {
                path: "e".into(),
                content: None,
            },
        ];
        let wire: Vec<WireOp> = ops.iter().map(WireOp::from).collect();
        let json = serde_json::to_string(&wire).unwrap();
        let back: Vec<WireOp> = serde_json::from_str(&json).unwrap();
        let back: Vec<String> = back
            .into_iter()
            .map(|o| format!("{:?}", o.op().unwrap()))
            .collect();
        let want: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
        assert_eq!(back, want);
    }

    /// A commit request, a list answer and a conflict answer as today's client and server
    /// write them (the client sends `serde_json::to_value` of the ops: keys sorted).
    #[test]
    fn the_format_1_wire_fixtures_read_back_and_are_written_alike() {
        use format_v1::*;
        let request = String::from_utf8(read("commit_request.json")).unwrap();
        let wire: Vec<WireOp> = serde_json::from_str(&request).unwrap();
        let back: Vec<CatalogOp> = wire.into_iter().map(|w| w.op().unwrap()).collect();
        assert!(same(&back, &ops()), "{back:?}");
        let sent: Vec<WireOp> = ops().iter().map(WireOp::from).collect();
        let sent = serde_json::to_value(&sent).unwrap().to_string();
        assert_eq!(sent, request.trim_end());

        let list = String::from_utf8(read("entries.json")).unwrap();
        let got: Vec<WireEntry> = serde_json::from_str(&list).unwrap();
        let got: Vec<Entry> = got.into_iter().map(|w| w.entry().unwrap()).collect();
        assert_eq!(got, entries());
        let answered: Vec<WireEntry> = entries().iter().map(WireEntry::from).collect();
        assert_eq!(serde_json::to_string(&answered).unwrap(), list.trim_end());

        let refused = String::from_utf8(read("conflict_answer.json")).unwrap();
        let got: WireConflicts = serde_json::from_str(&refused).unwrap();
        assert_eq!(got.conflicts(), conflicts());
        let answered = WireConflicts::from(conflicts().as_slice());
        assert_eq!(
            serde_json::to_string(&answered).unwrap(),
            refused.trim_end()
        );
    }
}
