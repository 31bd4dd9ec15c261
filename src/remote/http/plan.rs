//! Reconstruction plans and xorb chunk indexes, so that a cold read costs one ranged fetch.
//!
//! A file version's plan (its terms, and per xorb the signed URLs with the byte ranges of the
//! chunks it uses) is asked for once, kept under a byte budget, and asked for again in the
//! background before its URLs expire (or at once when a fetch is refused with 403). A term can
//! be a whole 64 MiB xorb, so a read inside it also needs each chunk's byte offset in the
//! serialized xorb: the xorb's footer holds them (boundary section: packed and unpacked chunk
//! ends), read once per xorb with a suffix range. With both, a read maps its byte range to the
//! chunks that hold it and fetches exactly their bytes.
//!
//! Round trips of a cold read: plan and index known → 1 (the fetch). Unknown → the caller reads
//! through a ranged reconstruction (2) while the plan and indexes load behind it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use xet_client::cas_types::QueryReconstructionResponseV2;
use xet_core_structures::merklehash::MerkleHash;

use crate::remote::xet::xorb_footer::{self, Suffix};
pub use crate::remote::xet::xorb_footer::{Located, XorbIndex};

/// Lifetime assumed for a fetch URL whose expiry cannot be read from it.
pub const DEFAULT_URL_LIFE_SECS: u64 = 300;
/// A plan is asked for again once its URLs expire within this many seconds (or within a tenth
/// of their lifetime, if that is shorter).
pub const REFRESH_MARGIN_SECS: u64 = 120;

/// One term: chunks `chunks` of `xorb`, file bytes `start..start + len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub xorb: MerkleHash,
    pub chunks: Range<u32>,
    pub start: u64,
    pub len: u64,
}

/// Where chunks `chunks` of a xorb are stored: bytes `bytes` (half-open) at `url`.
#[derive(Clone, Debug)]
pub struct Source {
    pub url: Arc<str>,
    pub chunks: Range<u32>,
    pub bytes: Range<u64>,
}

/// A file version's reconstruction.
#[derive(Debug)]
pub struct Plan {
    pub size: u64,
    pub terms: Vec<Term>,
    pub sources: HashMap<MerkleHash, Vec<Source>>,
    /// Unix seconds at which the first of its URLs expires.
    pub expires: u64,
    /// When it was made (unix seconds), for the refresh margin.
    pub made: u64,
    /// Approximate memory it holds, for the cache budget.
    pub cost: u64,
}

impl Plan {
    /// The plan of a file of `size` bytes from the CAS's answer to a reconstruction query
    /// without a range; `Err` says what does not add up.
    pub fn from_v2(r: &QueryReconstructionResponseV2, size: u64, now: u64) -> Result<Plan, String> {
        if r.offset_into_first_range != 0 {
            return Err(format!(
                "offset_into_first_range {} in a whole-file answer",
                r.offset_into_first_range
            ));
        }
        let mut terms = Vec::with_capacity(r.terms.len());
        let mut at = 0u64;
        for t in &r.terms {
            if t.range.start >= t.range.end || t.unpacked_length == 0 {
                return Err(format!("empty term {:?}", t.range));
            }
            terms.push(Term {
                xorb: t.hash.0,
                chunks: t.range.start..t.range.end,
                start: at,
                len: u64::from(t.unpacked_length),
            });
            at += u64::from(t.unpacked_length);
        }
        if at != size {
            return Err(format!("terms add up to {at} bytes, the file has {size}"));
        }
        let mut sources: HashMap<MerkleHash, Vec<Source>> = HashMap::new();
        let mut expires = u64::MAX;
        let mut cost = (terms.len() * std::mem::size_of::<Term>()) as u64;
        for (h, fetches) in &r.xorbs {
            let list = sources.entry(h.0).or_default();
            for f in fetches {
                let url: Arc<str> = Arc::from(f.url.as_str());
                expires = expires.min(url_expiry(&f.url).unwrap_or(now + DEFAULT_URL_LIFE_SECS));
                cost += f.url.len() as u64;
                for d in &f.ranges {
                    if d.chunks.start >= d.chunks.end || d.bytes.end < d.bytes.start {
                        return Err(format!("bad fetch range {:?} / {:?}", d.chunks, d.bytes));
                    }
                    list.push(Source {
                        url: url.clone(),
                        chunks: d.chunks.start..d.chunks.end,
                        bytes: d.bytes.start..d.bytes.end + 1,
                    });
                    cost += std::mem::size_of::<Source>() as u64;
                }
            }
            list.sort_by_key(|s| s.chunks.start);
        }
        let plan = Plan {
            size,
            terms,
            sources,
            expires: if expires == u64::MAX {
                now + DEFAULT_URL_LIFE_SECS
            } else {
                expires
            },
            made: now,
            cost,
        };
        for t in &plan.terms {
            if plan.source(&t.xorb, &t.chunks).is_none() {
                return Err(format!(
                    "no fetch URL for chunks {:?} of xorb {}",
                    t.chunks,
                    t.xorb.hex()
                ));
            }
        }
        Ok(plan)
    }

    /// The terms holding file bytes `range`, each with the part of it (relative to the term's
    /// first byte) the range covers.
    pub fn pieces(&self, range: Range<u64>) -> Vec<(usize, Range<u64>)> {
        let end = range.end.min(self.size);
        let mut out = Vec::new();
        let mut i = self
            .terms
            .partition_point(|t| t.start + t.len <= range.start);
        while i < self.terms.len() && self.terms[i].start < end {
            let t = &self.terms[i];
            let lo = range.start.max(t.start) - t.start;
            let hi = end.min(t.start + t.len) - t.start;
            out.push((i, lo..hi));
            i += 1;
        }
        out
    }

    /// The stored range holding chunks `chunks` of `xorb`.
    pub fn source(&self, xorb: &MerkleHash, chunks: &Range<u32>) -> Option<&Source> {
        self.sources
            .get(xorb)?
            .iter()
            .find(|s| s.chunks.start <= chunks.start && chunks.end <= s.chunks.end)
    }

    /// Whether its URLs should be renewed now (unix seconds).
    pub fn stale(&self, now: u64) -> bool {
        let life = self.expires.saturating_sub(self.made);
        now + REFRESH_MARGIN_SECS.min(life / 10) >= self.expires
    }

    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires
    }
}

/// Expiry (unix seconds) a signed URL states: `exp=` (xetmount serve), `Expires=` (CloudFront
/// and S3 query-string v2), or `X-Amz-Date` + `X-Amz-Expires` (S3 SigV4).
pub fn url_expiry(url: &str) -> Option<u64> {
    let query = url.split_once('?')?.1;
    let mut amz_date = None;
    let mut amz_expires = None;
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "exp" | "Expires" => return v.parse().ok(),
            "X-Amz-Date" => amz_date = Some(v),
            "X-Amz-Expires" => amz_expires = v.parse::<u64>().ok(),
            _ => {}
        }
    }
    Some(amz_time(amz_date?)? + amz_expires?)
}

/// `YYYYMMDDTHHMMSSZ` as unix seconds.
fn amz_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hh * 3600 + mm * 60 + ss)
}

/// A suffix long enough for the boundary section of a xorb of `chunks` chunks.
pub fn suffix_len(chunks: u32) -> u64 {
    xorb_footer::boundary_suffix_len(chunks)
}

/// What the last bytes of a serialized xorb say.
#[derive(Debug)]
pub enum Tail {
    Index(XorbIndex),
    /// The boundary section is longer: fetch this many bytes from the end.
    Need(u64),
}

impl XorbIndex {
    /// The boundary section at the end of `tail` (the last bytes of a serialized xorb).
    pub fn from_tail(tail: &[u8]) -> Result<Tail, String> {
        Ok(match xorb_footer::boundaries(tail)? {
            Suffix::Parsed(info) => Tail::Index(XorbIndex::new(
                info.chunk_boundary_offsets,
                info.unpacked_chunk_offsets,
            )),
            Suffix::Need(n) => Tail::Need(n),
        })
    }

    /// Whether it agrees with everything `plan` says of `xorb` (term lengths, stored ranges).
    pub fn agrees(&self, plan: &Plan, xorb: &MerkleHash) -> bool {
        let n = self.chunks();
        let terms = plan.terms.iter().filter(|t| &t.xorb == xorb).all(|t| {
            t.chunks.end <= n
                && self.unpacked_start(t.chunks.end) - self.unpacked_start(t.chunks.start) == t.len
        });
        let sources = plan.sources.get(xorb).is_none_or(|list| {
            list.iter().all(|s| {
                s.chunks.end <= n
                    && self.packed_start(s.chunks.start) == s.bytes.start
                    && self.packed_start(s.chunks.end) == s.bytes.end
            })
        });
        terms && sources
    }
}

#[cfg(test)]
pub(in crate::remote) mod tests {
    use super::*;
    use bytes::Bytes;
    use std::io::Cursor;
    use xet_client::cas_types::{
        ChunkRange, HexMerkleHash, HttpRange, XorbMultiRangeFetch, XorbRangeDescriptor,
        XorbReconstructionTerm,
    };
    use xet_core_structures::xorb_object::{
        deserialize_chunks, Chunk, RawXorbData, SerializedXorbObject,
    };

    /// A xorb of chunks of the given lengths (byte `i % 251` of chunk `k` is `(i + k) % 251`),
    /// serialized with its footer, and each chunk's bytes.
    pub(in crate::remote) fn xorb(
        lens: &[usize],
        compression: &str,
    ) -> (SerializedXorbObject, Vec<Vec<u8>>) {
        let datas: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| ((i + k * 7) % 251) as u8).collect())
            .collect();
        let chunks: Vec<Chunk> = datas
            .iter()
            .map(|d| Chunk::new(Bytes::from(d.clone())))
            .collect();
        let raw = RawXorbData::from_chunks(&chunks, vec![0]);
        let x = SerializedXorbObject::from_xorb(raw, true, compression, 16).unwrap();
        (x, datas)
    }

    fn index_of(x: &SerializedXorbObject) -> XorbIndex {
        match XorbIndex::from_tail(&x.serialized_data).unwrap() {
            Tail::Index(ix) => ix,
            Tail::Need(n) => panic!("whole xorb is too short, need {n}"),
        }
    }

    #[test]
    fn footer_suffix_gives_the_chunk_boundaries() {
        let lens = [1000, 70_000, 5, 33_000, 64 << 10];
        for compression in ["none", "lz4"] {
            let (x, datas) = xorb(&lens, compression);
            let ix = index_of(&x);
            assert_eq!(ix.chunks(), lens.len() as u32);
            // The estimated suffix for this many chunks is enough, and a shorter one asks
            // for exactly that much.
            let need = suffix_len(lens.len() as u32) as usize;
            let all = &x.serialized_data;
            let tail = &all[all.len() - need..];
            assert!(matches!(XorbIndex::from_tail(tail).unwrap(), Tail::Index(ref i) if *i == ix));
            match XorbIndex::from_tail(&all[all.len() - 40..]).unwrap() {
                Tail::Need(n) => assert_eq!(n as usize, need),
                Tail::Index(_) => panic!("40 bytes cannot hold the boundary section"),
            }
            // Every chunk decodes from exactly the bytes the index names.
            for (c, d) in datas.iter().enumerate() {
                let c = c as u32;
                let l = ix.locate(&(c..c + 1), 0, d.len() as u64);
                let bytes = &all[l.packed.start as usize..l.packed.end as usize];
                let (out, idx) = deserialize_chunks(&mut Cursor::new(bytes)).unwrap();
                assert_eq!(&out, d);
                assert_eq!(idx, vec![0, d.len() as u32]);
                assert_eq!(ix.chunk_len(c), d.len() as u64);
            }
        }
    }

    #[test]
    fn footer_garbage_is_refused() {
        assert!(XorbIndex::from_tail(&[0u8; 10]).is_err());
        // A chunk stream without a footer.
        let (x, _) = xorb(&[100, 200], "none");
        let no_footer = &x.serialized_data[..x.footer_start.unwrap() as usize];
        assert!(XorbIndex::from_tail(no_footer).is_err());
        let mut bad = x.serialized_data.clone();
        let n = bad.len();
        bad[n - 30] ^= 0xff;
        assert!(!matches!(XorbIndex::from_tail(&bad), Ok(Tail::Index(_))));
    }

    #[test]
    fn locate_maps_term_bytes_to_chunks() {
        let (x, datas) = xorb(&[100, 200, 300, 400], "none");
        let ix = index_of(&x);
        // Term = chunks 1..4 (900 bytes): byte 0 is chunk 1's first.
        let t = 1..4;
        let l = ix.locate(&t, 0, 1);
        assert_eq!((l.chunks.clone(), l.skip, l.unpacked_len), (1..2, 0, 200));
        let l = ix.locate(&t, 199, 201);
        assert_eq!((l.chunks.clone(), l.skip, l.unpacked_len), (1..3, 199, 500));
        let l = ix.locate(&t, 200, 500);
        assert_eq!((l.chunks.clone(), l.skip), (2..3, 0));
        let l = ix.locate(&t, 850, 900);
        assert_eq!((l.chunks.clone(), l.skip), (3..4, 350));
        // The located bytes decode to what the term holds there.
        let term: Vec<u8> = datas[1..4].concat();
        let all = &x.serialized_data;
        for (lo, hi) in [(0u64, 900u64), (150, 650), (499, 501), (10, 11)] {
            let l = ix.locate(&t, lo, hi);
            let bytes = &all[l.packed.start as usize..l.packed.end as usize];
            let (out, _) = deserialize_chunks(&mut Cursor::new(bytes)).unwrap();
            assert_eq!(out.len() as u64, l.unpacked_len);
            let s = l.skip as usize;
            assert_eq!(
                &out[s..s + (hi - lo) as usize],
                &term[lo as usize..hi as usize]
            );
        }
    }

    fn answer(terms: &[(MerkleHash, Range<u32>, u32)], url: &str) -> QueryReconstructionResponseV2 {
        let mut xorbs: HashMap<HexMerkleHash, Vec<XorbMultiRangeFetch>> = HashMap::new();
        for (h, c, _) in terms {
            xorbs
                .entry((*h).into())
                .or_default()
                .push(XorbMultiRangeFetch {
                    url: url.to_string(),
                    ranges: vec![XorbRangeDescriptor {
                        chunks: ChunkRange::new(c.start, c.end),
                        bytes: HttpRange::new(u64::from(c.start) * 10, u64::from(c.end) * 10 - 1),
                    }],
                });
        }
        QueryReconstructionResponseV2 {
            offset_into_first_range: 0,
            terms: terms
                .iter()
                .map(|(h, c, n)| XorbReconstructionTerm {
                    hash: (*h).into(),
                    unpacked_length: *n,
                    range: ChunkRange::new(c.start, c.end),
                })
                .collect(),
            xorbs,
        }
    }

    #[test]
    fn plan_pieces_and_sources() {
        let (a, b) = (MerkleHash::from([1u64; 4]), MerkleHash::from([2u64; 4]));
        let r = answer(
            &[(a, 0..4, 100), (b, 2..3, 50), (a, 4..6, 30)],
            "http://x/fetch/a?exp=5000&sig=s",
        );
        let p = Plan::from_v2(&r, 180, 1000).unwrap();
        assert_eq!(p.expires, 5000);
        assert_eq!(p.pieces(0..180).len(), 3);
        assert_eq!(p.pieces(99..101), vec![(0, 99..100), (1, 0..1)]);
        assert_eq!(p.pieces(150..1000), vec![(2, 0..30)]);
        assert_eq!(p.pieces(100..150), vec![(1, 0..50)]);
        assert!(p.pieces(180..200).is_empty());
        assert_eq!(p.source(&b, &(2..3)).unwrap().bytes, 20..30);
        assert!(p.source(&b, &(1..3)).is_none());
        // A size that the terms do not add up to, and a term without a URL, are refused.
        assert!(Plan::from_v2(&r, 181, 1000).is_err());
        let mut r2 = r.clone();
        r2.xorbs.remove(&b.into());
        assert!(Plan::from_v2(&r2, 180, 1000).is_err());
    }

    #[test]
    fn plan_expiry_from_urls() {
        assert_eq!(url_expiry("http://h/fetch/x?exp=123&sig=ab"), Some(123));
        assert_eq!(
            url_expiry("https://cdn/x?Expires=1700000000&Signature=z"),
            Some(1_700_000_000)
        );
        assert_eq!(
            url_expiry(
                "https://s3/x?X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-Signature=q"
            ),
            Some(1_704_067_200 + 3600)
        );
        assert_eq!(
            url_expiry("https://s3/x?X-Amz-Date=garbage&X-Amz-Expires=3600"),
            None
        );
        assert_eq!(url_expiry("https://s3/x"), None);
        // Without a stated expiry a plan lives DEFAULT_URL_LIFE_SECS, and is stale in time to
        // be renewed before it expires.
        let a = MerkleHash::from([1u64; 4]);
        let p = Plan::from_v2(&answer(&[(a, 0..1, 10)], "http://x/y"), 10, 1000).unwrap();
        assert_eq!(p.expires, 1000 + DEFAULT_URL_LIFE_SECS);
        assert!(!p.stale(1000));
        assert!(p.stale(p.expires - 1) && !p.expired(p.expires - 1));
        assert!(p.expired(p.expires));
        let p = Plan::from_v2(&answer(&[(a, 0..1, 10)], "http://x/y?exp=4600"), 10, 1000).unwrap();
        assert!(!p.stale(4600 - REFRESH_MARGIN_SECS - 1));
        assert!(p.stale(4600 - REFRESH_MARGIN_SECS));
    }

    #[test]
    fn index_agrees_only_with_a_matching_plan() {
        let (x, _) = xorb(&[100, 200, 300], "none");
        let ix = index_of(&x);
        let h = x.hash;
        let b1 = ix.packed_start(1);
        let b3 = ix.packed_start(3);
        let mk = |len: u32, bytes: Range<u64>| QueryReconstructionResponseV2 {
            offset_into_first_range: 0,
            terms: vec![XorbReconstructionTerm {
                hash: h.into(),
                unpacked_length: len,
                range: ChunkRange::new(1, 3),
            }],
            xorbs: [(
                h.into(),
                vec![XorbMultiRangeFetch {
                    url: "http://x/y".into(),
                    ranges: vec![XorbRangeDescriptor {
                        chunks: ChunkRange::new(1, 3),
                        bytes: HttpRange::new(bytes.start, bytes.end - 1),
                    }],
                }],
            )]
            .into_iter()
            .collect(),
        };
        let good = Plan::from_v2(&mk(500, b1..b3), 500, 0).unwrap();
        assert!(ix.agrees(&good, &h));
        let wrong_len = Plan::from_v2(&mk(499, b1..b3), 499, 0).unwrap();
        assert!(!ix.agrees(&wrong_len, &h));
        let wrong_bytes = Plan::from_v2(&mk(500, b1..b3 + 1), 500, 0).unwrap();
        assert!(!ix.agrees(&wrong_bytes, &h));
    }
}
