//! JSON forms of catalog entries and ops, for xetmount's own catalog routes on `xetmount
//! serve` (`/api/buckets/{id}/xetmount/...`): what the Hugging Face bucket API cannot carry
//! (modes, owners, times in nanoseconds, symlinks, special files, empty directories, hard
//! links, atomic renames); and how a path travels in a URL, the same way on both sides.

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

/// A value of an `application/x-www-form-urlencoded` body: `+` is a space, `%XX` a byte;
/// `None` for a bad escape or bytes that are not UTF-8.
pub fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

use serde::{Deserialize, Serialize};

use super::{Conflict, RemoteError};

/// Entries and ops travel as their shared records (`remote::record`), as JSON.
pub use super::record::{EntryRecord as WireEntry, OpRecord as WireOp};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::record::format_v1;
    use crate::remote::{CatalogOp, Entry};

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
