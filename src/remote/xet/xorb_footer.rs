//! A stored xorb's footer (`XorbObjectInfoV1`) read from the last bytes of the xorb, as one
//! suffix-range fetch of its URL gets them: the boundary section alone (packed and unpacked
//! chunk ends, for planned reads) or the whole footer (also every chunk hash, for a
//! composition that keeps chunks of a term by reference).
//!
//! The serialized footer ends with a fixed tail: the number of chunks, the offsets from the end
//! of the hash and boundary sections, a nonce buffer, then (after the footer) its length. Both
//! parsers read the length they need from that tail and ask for a longer suffix when the one
//! given is short.

use std::io::Cursor;
use std::ops::Range;

use xet_core_structures::xorb_object::XorbObjectInfoV1;

/// Bytes of the fixed end of a xorb footer: the two section offsets, the nonce buffer and the
/// trailing `info_length`.
const FOOTER_FIXED_TAIL: usize = 4 + 4 + 16 + 4;
/// Bytes of the boundary section apart from its offsets (ident, version, chunk count, and the
/// fixed tail).
const BOUNDARY_SECTION_FIXED: usize = 7 + 1 + 4 + 4 + FOOTER_FIXED_TAIL;
/// Bytes of the whole footer apart from its per-chunk parts (ident, version and xorb hash,
/// the hash section's ident, version and count, the boundary section) plus `info_length`.
const FOOTER_FIXED: usize = 7 + 1 + 32 + 7 + 1 + 4 + BOUNDARY_SECTION_FIXED;
/// Sanity bound on a footer's length (a xorb holds at most a few thousand chunks).
const MAX_FOOTER: u64 = 1 << 30;

/// What the last bytes of a serialized xorb give.
#[derive(Debug)]
pub enum Suffix<T> {
    Parsed(T),
    /// The part asked for is longer: fetch this many bytes from the end.
    Need(u64),
}

/// A suffix long enough for the boundary section of a xorb of `chunks` chunks.
pub fn boundary_suffix_len(chunks: u32) -> u64 {
    (BOUNDARY_SECTION_FIXED + 8 * chunks as usize) as u64
}

/// A suffix long enough for the whole footer of a xorb of `chunks` chunks.
pub fn footer_suffix_len(chunks: u32) -> u64 {
    (FOOTER_FIXED + 40 * chunks as usize) as u64
}

/// Refuse chunk ends that are not strictly increasing from a non-zero first end (no chunk is
/// empty), or that do not list `n` chunks.
fn check_ends(info: &XorbObjectInfoV1) -> Result<(), String> {
    let n = info.num_chunks as usize;
    let increasing = |v: &[u32]| v.windows(2).all(|w| w[0] < w[1]) && v.first() != Some(&0);
    if info.chunk_boundary_offsets.len() != n
        || info.unpacked_chunk_offsets.len() != n
        || !increasing(&info.chunk_boundary_offsets)
        || !increasing(&info.unpacked_chunk_offsets)
    {
        return Err("xorb footer: chunk offsets not increasing".into());
    }
    Ok(())
}

/// The boundary section at the end of `tail` (the last bytes of a serialized xorb); the
/// result's `chunk_hashes` is empty.
pub fn boundaries(tail: &[u8]) -> Result<Suffix<XorbObjectInfoV1>, String> {
    if tail.len() < FOOTER_FIXED_TAIL {
        return Err(format!("{} bytes cannot end a xorb", tail.len()));
    }
    // boundary_section_offset_from_end sits before the nonce buffer and info_length.
    let at = tail.len() - 4 - 16 - 4;
    let off = u32::from_le_bytes(tail[at..at + 4].try_into().expect("4 bytes")) as u64;
    let need = off + 4;
    if need < BOUNDARY_SECTION_FIXED as u64 - 4 || need > MAX_FOOTER {
        return Err(format!("implausible boundary section of {off} bytes"));
    }
    if (tail.len() as u64) < need {
        return Ok(Suffix::Need(need));
    }
    let (info, _) = XorbObjectInfoV1::deserialize_only_boundaries_section(&mut Cursor::new(tail))
        .map_err(|e| format!("xorb footer: {e}"))?;
    check_ends(&info)?;
    Ok(Suffix::Parsed(info))
}

/// The whole footer at the end of `tail`: chunk hashes and both kinds of chunk ends. A
/// version 0 footer (no unpacked ends) is refused.
pub fn footer(tail: &[u8]) -> Result<Suffix<XorbObjectInfoV1>, String> {
    if tail.len() < FOOTER_FIXED_TAIL {
        return Err(format!("{} bytes cannot end a xorb", tail.len()));
    }
    let n = tail.len();
    let info_len = u32::from_le_bytes(tail[n - 4..].try_into().expect("4 bytes")) as u64;
    let need = info_len + 4;
    if need < FOOTER_FIXED as u64 || need > MAX_FOOTER {
        return Err(format!("implausible footer of {info_len} bytes"));
    }
    if (n as u64) < need {
        return Ok(Suffix::Need(need));
    }
    let body = &tail[n - need as usize..n - 4];
    let (info, read) = XorbObjectInfoV1::deserialize(&mut Cursor::new(body))
        .map_err(|e| format!("xorb footer: {e}"))?;
    if u64::from(read) != info_len {
        return Err(format!(
            "xorb footer: {read} bytes parsed of the {info_len} announced"
        ));
    }
    if info.chunk_hashes.len() != info.num_chunks as usize {
        return Err("xorb footer: not every chunk hash is listed".into());
    }
    check_ends(&info)?;
    Ok(Suffix::Parsed(info))
}

/// A xorb's chunk boundaries, from its footer.
#[derive(Debug, PartialEq, Eq)]
pub struct XorbIndex {
    /// Packed end offset of every chunk (header included).
    packed_ends: Vec<u32>,
    /// Unpacked end offset of every chunk.
    unpacked_ends: Vec<u32>,
}

/// The chunks a read needs: chunk indices, their stored bytes, their unpacked length, and
/// where the read's first byte is in their unpacked bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Located {
    pub chunks: Range<u32>,
    pub packed: Range<u64>,
    pub unpacked_len: u64,
    pub skip: u64,
}

impl XorbIndex {
    pub fn new(packed_ends: Vec<u32>, unpacked_ends: Vec<u32>) -> Self {
        XorbIndex {
            packed_ends,
            unpacked_ends,
        }
    }

    pub fn chunks(&self) -> u32 {
        self.packed_ends.len() as u32
    }

    pub fn cost(&self) -> u64 {
        (self.packed_ends.len() * 8 + 64) as u64
    }

    /// Where chunk `c` starts in the unpacked bytes.
    pub fn unpacked_start(&self, c: u32) -> u64 {
        match c {
            0 => 0,
            c => u64::from(self.unpacked_ends[c as usize - 1]),
        }
    }

    /// Where chunk `c` starts in the stored xorb.
    pub fn packed_start(&self, c: u32) -> u64 {
        match c {
            0 => 0,
            c => u64::from(self.packed_ends[c as usize - 1]),
        }
    }

    /// Unpacked length of chunk `c`.
    pub fn chunk_len(&self, c: u32) -> u64 {
        u64::from(self.unpacked_ends[c as usize]) - self.unpacked_start(c)
    }

    /// The chunks of term `term` holding its bytes `lo..hi` (relative to the term's start;
    /// `lo < hi`, within the term, and the term's chunks within this xorb).
    pub fn locate(&self, term: &Range<u32>, lo: u64, hi: u64) -> Located {
        let base = self.unpacked_start(term.start);
        let ends = &self.unpacked_ends[term.start as usize..term.end as usize];
        let c0 = term.start + ends.partition_point(|&e| u64::from(e) - base <= lo) as u32;
        let c1 = term.start + ends.partition_point(|&e| u64::from(e) - base < hi) as u32 + 1;
        Located {
            chunks: c0..c1,
            packed: self.packed_start(c0)..self.packed_start(c1),
            unpacked_len: self.unpacked_start(c1) - self.unpacked_start(c0),
            skip: base + lo - self.unpacked_start(c0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::http::plan::tests::xorb;
    use xet_core_structures::merklehash::xorb_hash;

    #[test]
    fn the_whole_footer_from_a_suffix() {
        let lens = [1000, 70_000, 5, 33_000, 64 << 10];
        for compression in ["none", "lz4"] {
            let (x, datas) = xorb(&lens, compression);
            let all = &x.serialized_data;
            let need = footer_suffix_len(lens.len() as u32) as usize;
            let Suffix::Parsed(info) = footer(&all[all.len() - need..]).unwrap() else {
                panic!("the estimated suffix is short");
            };
            assert_eq!(info.num_chunks as usize, lens.len());
            // The hashes and unpacked lengths are the xorb's: they hash to its name.
            let mut prev = 0;
            let chunks: Vec<_> = info
                .chunk_hashes
                .iter()
                .zip(&info.unpacked_chunk_offsets)
                .map(|(h, &e)| {
                    let c = (*h, u64::from(e - prev));
                    prev = e;
                    c
                })
                .collect();
            assert_eq!(xorb_hash(&chunks), x.hash);
            for (c, d) in chunks.iter().zip(&datas) {
                assert_eq!(c.1, d.len() as u64);
            }
            // A shorter suffix asks for exactly the footer.
            match footer(&all[all.len() - 100..]).unwrap() {
                Suffix::Need(n) => assert_eq!(n as usize, need),
                Suffix::Parsed(_) => panic!("100 bytes cannot hold the footer"),
            }
            // The boundary section alone from its own (shorter) suffix.
            let b = boundary_suffix_len(lens.len() as u32) as usize;
            let Suffix::Parsed(bi) = boundaries(&all[all.len() - b..]).unwrap() else {
                panic!("the estimated boundary suffix is short");
            };
            assert_eq!(bi.chunk_boundary_offsets, info.chunk_boundary_offsets);
            assert!(bi.chunk_hashes.is_empty());
        }
    }

    #[test]
    fn a_broken_footer_is_refused() {
        assert!(footer(&[0u8; 10]).is_err());
        let (x, _) = xorb(&[100, 200], "none");
        let all = &x.serialized_data;
        // A chunk stream without a footer.
        assert!(footer(&all[..x.footer_start.unwrap() as usize]).is_err());
        // A byte of the idents, versions, counts, section offsets or length changed (a
        // changed hash or offset value parses: the xorb hash check catches those).
        let start = x.footer_start.unwrap() as usize;
        let n = all.len();
        for at in [start, start + 7, n - 31, n - 27, n - 23, n - 2] {
            let mut bad = all.clone();
            bad[at] ^= 0x5a;
            assert!(
                !matches!(footer(&bad), Ok(Suffix::Parsed(_))),
                "byte {at} changed"
            );
        }
    }
}
