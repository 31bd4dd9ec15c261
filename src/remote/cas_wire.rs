//! Bodies of xetmount's own CAS routes on `xetmount serve`, shared by the server and the HTTP
//! client: a stored body's chunk lists (with, on request, the stored bytes of the chunks
//! around an edit), and a composition's last xorbs sent with its shard in one request. Both
//! save a round trip on the path of a small edit (see `remote::http::cas`).
//!
//! A body that carries bytes is *framed*: one line of JSON (the head, which says how the rest
//! is cut), then the bytes as they are. Serialized JSON never holds a raw newline, so the
//! first `\n` ends the head.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use xet_core_structures::xorb_object::SerializedXorbObject;

/// Content type of a framed body.
pub const FRAMED: &str = "application/x-xetmount-framed";

/// Most stored bytes one chunk-list answer carries.
pub const MAX_PIECE_BYTES: u64 = 16 << 20;

/// `head` as one line of JSON, then `tail`.
pub fn frame<T: Serialize>(head: &T, tail: &[&[u8]]) -> Vec<u8> {
    let mut out = serde_json::to_vec(head).expect("a plain struct serializes");
    out.push(b'\n');
    for t in tail {
        out.extend_from_slice(t);
    }
    out
}

/// The head and the bytes after it.
pub fn unframe<T: DeserializeOwned>(body: Bytes) -> Result<(T, Bytes), String> {
    let nl = body
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("a framed body without its head line")?;
    let head = serde_json::from_slice(&body[..nl]).map_err(|e| format!("framed head: {e}"))?;
    Ok((head, body.slice(nl + 1..)))
}

/// One term of a stored body, with the (hash hex, length) of each of its chunks.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireSegment {
    pub xorb: String,
    pub flags: u32,
    pub start: u32,
    pub end: u32,
    pub chunks: Vec<(String, u64)>,
}

/// Stored bytes of whole chunks: the serialized chunks (headers and packed data, as the xorb
/// stores them) of the body's bytes from `at` on, `len` bytes of the tail.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WirePiece {
    pub at: u64,
    pub len: u64,
}

/// `GET /v1/xetmount/chunks/{file}[?bytes=a-b,c-d]`: plain JSON without `bytes`, framed with
/// the pieces (in order, their bytes one after another) with it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChunkListsAnswer {
    pub segments: Vec<WireSegment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pieces: Vec<WirePiece>,
}

/// A serialized xorb (no footer) in an upload.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireXorb {
    pub prefix: String,
    pub hash: String,
    pub len: u64,
}

/// `POST /v1/xetmount/upload` (framed): the xorbs' bytes in order, then `shard` bytes of
/// shard. The server stores the xorbs, then takes the shard as `/v2/shards` does.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UploadHead {
    pub xorbs: Vec<WireXorb>,
    pub shard: u64,
}

/// A composition's xorbs and shard not sent yet: they go with the commit that names the file
/// (`Catalog::commit_carrying`), which stores them before it applies its ops, so that a small
/// edit costs one request less. `bytes` holds the xorbs then the shard, as `head` cuts them.
#[derive(Clone, Debug)]
pub struct Carried {
    pub head: UploadHead,
    pub bytes: Bytes,
    /// Its share of the holder's memory budget, given back when the last copy is dropped.
    pub reserved: Option<Arc<Reserved>>,
}

/// Bytes taken from a shared budget (a count of bytes in use) while this lives.
#[derive(Debug)]
pub struct Reserved {
    pool: Arc<AtomicU64>,
    bytes: u64,
}

impl Reserved {
    /// `bytes` more from `pool`, if that keeps it within `limit`.
    pub fn take(pool: &Arc<AtomicU64>, bytes: u64, limit: u64) -> Option<Self> {
        pool.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
            used.checked_add(bytes).filter(|&n| n <= limit)
        })
        .ok()
        .map(|_| Reserved {
            pool: pool.clone(),
            bytes,
        })
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl Carried {
    pub fn new(prefix: &str, xorbs: &[SerializedXorbObject], shard: &[u8]) -> Self {
        let head = UploadHead {
            xorbs: xorbs
                .iter()
                .map(|x| WireXorb {
                    prefix: prefix.to_string(),
                    hash: x.hash.hex(),
                    len: x.serialized_data.len() as u64,
                })
                .collect(),
            shard: shard.len() as u64,
        };
        let mut bytes = Vec::with_capacity(head.body_len() as usize);
        for x in xorbs {
            bytes.extend_from_slice(&x.serialized_data);
        }
        bytes.extend_from_slice(shard);
        Carried {
            head,
            bytes: Bytes::from(bytes),
            reserved: None,
        }
    }
}

/// An upload's xorbs (each with its bytes) and its shard.
pub type Cut<'a> = (Vec<(&'a WireXorb, Bytes)>, Bytes);

impl UploadHead {
    /// Bytes the upload announces, `u64::MAX` if they overflow (no body is that long).
    pub fn body_len(&self) -> u64 {
        self.xorbs
            .iter()
            .try_fold(self.shard, |n, x| n.checked_add(x.len))
            .unwrap_or(u64::MAX)
    }

    /// The xorbs' bytes and the shard's, cut from `body` (which must be exactly as long).
    pub fn cut(&self, mut body: Bytes) -> Result<Cut<'_>, String> {
        if self.body_len() != body.len() as u64 {
            return Err(format!(
                "an upload announcing {} bytes came with {}",
                self.body_len(),
                body.len()
            ));
        }
        let xorbs = self
            .xorbs
            .iter()
            .map(|x| (x, body.split_to(x.len as usize)))
            .collect();
        Ok((xorbs, body))
    }
}

/// The framed body of a commit carrying uploads: its ops (as the JSON body of an ordinary
/// commit holds them) and the uploads, whose bytes follow one after another.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CommitHead {
    pub ops: serde_json::Value,
    pub uploads: Vec<UploadHead>,
}

/// `a-b,c-d` (inclusive ends, as in an HTTP range header after `bytes=`) as half-open
/// ranges; `None` if malformed.
pub fn parse_ranges(list: &str) -> Option<Vec<std::ops::Range<u64>>> {
    let mut out = Vec::new();
    for part in list.trim().split(',') {
        let (a, b) = part.trim().split_once('-')?;
        let (a, b) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
        out.push(a..b.checked_add(1).filter(|_| a <= b)?);
    }
    Some(out)
}

/// Half-open ranges as `a-b,c-d`.
pub fn format_ranges(ranges: &[std::ops::Range<u64>]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end - 1))
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_bodies_round_trip_and_bad_ones_are_refused() {
        let head = UploadHead {
            xorbs: vec![WireXorb {
                prefix: "default".into(),
                hash: "ab".into(),
                len: 3,
            }],
            shard: 2,
        };
        // Bytes after the head may hold newlines of their own.
        let body = Bytes::from(frame(&head, &[b"x\ny", b"\n\n"]));
        let (back, tail) = unframe::<UploadHead>(body).unwrap();
        assert_eq!(back, head);
        assert_eq!(&tail[..], b"x\ny\n\n");
        assert!(unframe::<UploadHead>(Bytes::from_static(b"{\"xorbs\":[]}")).is_err());
        assert!(unframe::<UploadHead>(Bytes::from_static(b"not json\nrest")).is_err());
    }

    #[test]
    fn a_carried_upload_cuts_back_into_its_xorbs_and_shard() {
        let xorb = |h: u64, data: &[u8]| SerializedXorbObject {
            hash: xet_core_structures::merklehash::MerkleHash::random_from_seed(h),
            serialized_data: data.to_vec(),
            raw_num_bytes: data.len() as u64,
            num_chunks: 0,
            footer_start: None,
        };
        let c = Carried::new("default", &[xorb(1, b"abc"), xorb(2, b"de")], b"shard");
        assert_eq!(c.head.body_len(), 10);
        let (xorbs, shard) = c.head.cut(c.bytes.clone()).unwrap();
        let got: Vec<(&str, &[u8])> = xorbs
            .iter()
            .map(|(x, b)| (x.prefix.as_str(), &b[..]))
            .collect();
        assert_eq!(got, vec![("default", &b"abc"[..]), ("default", &b"de"[..])]);
        assert_eq!(&shard[..], b"shard");
        // A body shorter or longer than the head says is refused.
        assert!(c.head.cut(c.bytes.slice(1..)).is_err());
        let mut more = c.bytes.to_vec();
        more.push(0);
        assert!(c.head.cut(Bytes::from(more)).is_err());
    }

    #[test]
    fn reservations_stay_within_the_limit_and_are_given_back_on_drop() {
        let pool = Arc::new(AtomicU64::new(0));
        let a = Reserved::take(&pool, 6, 10).unwrap();
        assert!(Reserved::take(&pool, 5, 10).is_none());
        let b = Reserved::take(&pool, 4, 10).unwrap();
        assert_eq!(pool.load(Ordering::SeqCst), 10);
        drop(a);
        assert_eq!(pool.load(Ordering::SeqCst), 4);
        drop(b);
        assert_eq!(pool.load(Ordering::SeqCst), 0);
        assert!(Reserved::take(&pool, 11, 10).is_none());
    }

    #[test]
    fn byte_ranges_parse_as_http_ranges() {
        assert_eq!(parse_ranges("0-9, 20-20"), Some(vec![0..10, 20..21]));
        assert_eq!(format_ranges(&[0..10, 20..21]), "0-9,20-20");
        for bad in ["", "bytes=0-9", "9-0", "a-b", "1", "0-18446744073709551615"] {
            assert_eq!(parse_ranges(bad), None, "{bad}");
        }
    }
}
