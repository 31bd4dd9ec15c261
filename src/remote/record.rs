//! The one flat form of an [`Entry`] and a [`CatalogOp`], shared by every place that stores or
//! sends them: the JSON of xetmount's catalog routes between `HttpCatalog` and `xetmount serve`
//! (`remote::wire`, through serde), the rows of the local store's `entries` table
//! (`local/catalog.rs`: one column a field) and the records of the namespace log
//! (`vfs/namespace/log.rs`: these fields in this order, in binary). The mapping between the typed
//! values and the flat fields (kind codes, a body as hash + size, metadata) is written here
//! only. A new field of `Entry` goes into [`EntryRecord`] with a serde default (older peers
//! omit it), a column, and a field at the end of the log's `Put` record.

use serde::{Deserialize, Serialize};

use super::{CatalogOp, Entry, EntryKind, FileId, Meta};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
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
    /// Inline: `mode`, `uid`, `gid`, `atime_ns`, `mtime_ns`, `ctime_ns`.
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<&Entry> for EntryRecord {
    fn from(e: &Entry) -> Self {
        let (kind, rdev) = e.kind.code();
        EntryRecord {
            kind,
            rdev,
            hash: e.content.as_ref().map(|c| c.hash.clone()),
            size: e.content.as_ref().map_or(0, |c| c.size),
            target: e.target.clone(),
            link: e.link,
            ..EntryRecord::of_meta(e.path.clone(), &e.meta)
        }
    }
}

impl EntryRecord {
    /// A record carrying only a path and metadata (the rest empty): how a `SetMeta` travels.
    pub fn of_meta(path: String, m: &Meta) -> EntryRecord {
        EntryRecord {
            path,
            kind: 0,
            rdev: 0,
            hash: None,
            size: 0,
            target: None,
            meta: *m,
            link: None,
        }
    }

    /// The entry, or `None` for an unknown kind.
    pub fn entry(self) -> Option<Entry> {
        Some(Entry {
            kind: EntryKind::from_code(self.kind, self.rdev)?,
            content: body(self.hash, self.size),
            target: self.target,
            meta: self.meta,
            link: self.link,
            path: self.path,
        })
    }
}

/// A body as the records carry it: no hash for an empty body (its size then means nothing).
fn body(hash: Option<String>, size: u64) -> Option<FileId> {
    hash.map(|hash| FileId { hash, size })
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum OpRecord {
    Put {
        entry: EntryRecord,
    },
    SetMeta {
        path: String,
        meta: EntryRecord,
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
    /// A file body as `EntryRecord` carries it: no hash for an empty body.
    Expect {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<String>,
        #[serde(default)]
        size: u64,
    },
}

impl From<&CatalogOp> for OpRecord {
    fn from(op: &CatalogOp) -> Self {
        match op {
            CatalogOp::Put(e) => OpRecord::Put { entry: e.into() },
            CatalogOp::SetMeta { path, meta } => OpRecord::SetMeta {
                path: path.clone(),
                meta: EntryRecord::of_meta(path.clone(), meta),
            },
            CatalogOp::Link { from, to } => OpRecord::Link {
                from: from.clone(),
                to: to.clone(),
            },
            CatalogOp::Delete { path } => OpRecord::Delete { path: path.clone() },
            CatalogOp::Rename { from, to } => OpRecord::Rename {
                from: from.clone(),
                to: to.clone(),
            },
            CatalogOp::Expect { path, content } => OpRecord::Expect {
                path: path.clone(),
                hash: content.as_ref().map(|c| c.hash.clone()),
                size: content.as_ref().map_or(0, |c| c.size),
            },
        }
    }
}

impl OpRecord {
    /// The op, or `None` for an entry of unknown kind.
    pub fn op(self) -> Option<CatalogOp> {
        Some(match self {
            OpRecord::Put { entry } => CatalogOp::Put(entry.entry()?),
            OpRecord::SetMeta { path, meta } => CatalogOp::SetMeta {
                path,
                meta: meta.meta,
            },
            OpRecord::Link { from, to } => CatalogOp::Link { from, to },
            OpRecord::Delete { path } => CatalogOp::Delete { path },
            OpRecord::Rename { from, to } => CatalogOp::Rename { from, to },
            OpRecord::Expect { path, hash, size } => CatalogOp::Expect {
                path,
                content: body(hash, size),
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

    pub fn meta(n: i64) -> Meta {
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
            let json = serde_json::to_string(&EntryRecord::from(entry)).unwrap();
            let back: EntryRecord = serde_json::from_str(&json).unwrap();
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
        let wire: Vec<OpRecord> = ops.iter().map(OpRecord::from).collect();
        let json = serde_json::to_string(&wire).unwrap();
        let back: Vec<OpRecord> = serde_json::from_str(&json).unwrap();
        let back: Vec<String> = back
            .into_iter()
            .map(|o| format!("{:?}", o.op().unwrap()))
            .collect();
        let want: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
        assert_eq!(back, want);
    }
}
