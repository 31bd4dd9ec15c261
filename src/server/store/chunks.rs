//! Xorb arithmetic for a store that keeps xorbs as opaque objects: checking an upload and
//! rebuilding its footer, finding the chunks that hold a byte range of a file from the file's
//! segments and the xorbs' footers, and unpacking fetched chunks.

use std::io::Cursor;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use xet_core_structures::merklehash::MerkleHash;
use xet_core_structures::metadata_shard::file_structs::MDBFileInfo;
use xet_core_structures::xorb_object::{
    deserialize_chunk, reconstruct_xorb_with_footer, XorbObject,
};

use super::{Located, LocatedTerm};
use crate::remote::{RemoteError, RemoteResult};

/// A xorb's footer: where every chunk starts, packed and unpacked, and its hash.
pub struct Footer {
    /// Bytes of the whole stored xorb.
    pub len: u64,
    pub xorb: XorbObject,
}

impl Footer {
    /// Parse `bytes`, the footer as stored at the end of a xorb of `len` bytes.
    pub fn parse(len: u64, bytes: &[u8]) -> RemoteResult<Footer> {
        let xorb = XorbObject::deserialize(&mut Cursor::new(bytes))
            .map_err(|e| RemoteError::Integrity(format!("a stored xorb footer is bad: {e}")))?;
        let info = &xorb.info;
        let n = info.num_chunks as usize;
        if info.chunk_boundary_offsets.len() != n
            || info.unpacked_chunk_offsets.len() != n
            || info.chunk_hashes.len() != n
        {
            return Err(RemoteError::Integrity(format!(
                "xorb {} footer lists {n} chunks but not as many offsets and hashes",
                info.xorb_hash.hex()
            )));
        }
        Ok(Footer { len, xorb })
    }

    fn chunks(&self) -> u32 {
        self.xorb.info.num_chunks
    }

    fn unpacked_start(&self, chunk: u32) -> u64 {
        match chunk {
            0 => 0,
            c => u64::from(self.xorb.info.unpacked_chunk_offsets[c as usize - 1]),
        }
    }

    fn packed_start(&self, chunk: u32) -> u64 {
        match chunk {
            0 => 0,
            c => u64::from(self.xorb.info.chunk_boundary_offsets[c as usize - 1]),
        }
    }

    /// The hashes of chunks `range`; an error if the range runs past the end.
    pub fn chunk_hashes(&self, range: &Range<u32>) -> RemoteResult<&[MerkleHash]> {
        if range.start > range.end || range.end > self.chunks() {
            return Err(RemoteError::Integrity(format!(
                "chunks {range:?} of xorb {}, which has {}",
                self.xorb.info.xorb_hash.hex(),
                self.chunks()
            )));
        }
        Ok(&self.xorb.info.chunk_hashes[range.start as usize..range.end as usize])
    }
}

/// What a checked upload becomes: the xorb as the store keeps it (chunks, then the footer
/// rebuilt from them) and where its footer starts.
pub struct Checked {
    pub stored: Bytes,
    pub footer_at: usize,
}

/// Rebuild the footer of serialized xorb `body` (its chunks, with or without a footer) from
/// its chunks, and check that they hash to `hash`: a body that does not is refused (`Err` is
/// the reason, for the client).
pub fn check_xorb(hash: &MerkleHash, body: &[u8]) -> Result<Checked, String> {
    let mut out = Vec::with_capacity(body.len() + (body.len() >> 6) + 1024);
    let (xorb, computed) = reconstruct_xorb_with_footer(&mut out, body)
        .map_err(|e| format!("xorb {} is not a serialized xorb: {e}", hash.hex()))?;
    if computed != *hash {
        return Err(format!(
            "xorb {} holds chunks that hash to {}",
            hash.hex(),
            computed.hex()
        ));
    }
    if xorb.info.num_chunks == 0 {
        return Err(format!("xorb {} holds no chunks", hash.hex()));
    }
    let footer_at = out.len() - xorb.info_length as usize - size_of::<u32>();
    Ok(Checked {
        stored: Bytes::from(out),
        footer_at,
    })
}

/// The whole chunks that hold bytes `range` of `file` (`None`: all of it), given the footer
/// of every xorb it names (`footer`); `None` when the range is empty or past the end.
pub fn locate<'a>(
    file: &MDBFileInfo,
    footer: impl Fn(&MerkleHash) -> RemoteResult<&'a Footer>,
    range: Option<Range<u64>>,
) -> RemoteResult<Option<Located>> {
    let size: u64 = file
        .segments
        .iter()
        .map(|s| u64::from(s.unpacked_segment_bytes))
        .sum();
    let range = match range {
        Some(r) => r.start..r.end.min(size),
        None => 0..size,
    };
    if range.start >= range.end {
        return Ok(None);
    }
    let mut out = Located {
        size,
        offset_into_first: 0,
        terms: Vec::new(),
    };
    let mut at = 0u64;
    for s in &file.segments {
        let len = u64::from(s.unpacked_segment_bytes);
        let (t0, t1) = (at, at + len);
        at = t1;
        if t1 <= range.start {
            continue;
        }
        if t0 >= range.end {
            break;
        }
        let x = footer(&s.xorb_hash)?;
        let chunks = s.chunk_index_start..s.chunk_index_end;
        if chunks.start >= chunks.end || chunks.end > x.chunks() {
            return Err(RemoteError::Integrity(format!(
                "a file names chunks {chunks:?} of xorb {}, which has {}",
                s.xorb_hash.hex(),
                x.chunks()
            )));
        }
        let base = x.unpacked_start(chunks.start);
        if x.unpacked_start(chunks.end) - base != len {
            return Err(RemoteError::Integrity(format!(
                "chunks {chunks:?} of xorb {} hold {} bytes, the file says {len}",
                s.xorb_hash.hex(),
                x.unpacked_start(chunks.end) - base
            )));
        }
        let lo = base + range.start.max(t0) - t0;
        let hi = base + range.end.min(t1) - t0;
        let ends = &x.xorb.info.unpacked_chunk_offsets[chunks.start as usize..chunks.end as usize];
        let c0 = chunks.start + ends.partition_point(|&e| u64::from(e) <= lo) as u32;
        let c1 = chunks.start + ends.partition_point(|&e| u64::from(e) < hi) as u32 + 1;
        if out.terms.is_empty() {
            out.offset_into_first = lo - x.unpacked_start(c0);
        }
        out.terms.push(LocatedTerm {
            xorb: s.xorb_hash,
            chunks: c0..c1,
            unpacked_len: x.unpacked_start(c1) - x.unpacked_start(c0),
            packed: x.packed_start(c0)..x.packed_start(c1),
        });
    }
    Ok(Some(out))
}

/// Unpack `packed`, whole stored chunks that unpack to `unpacked_len` bytes, into `out`.
pub fn unpack(packed: &[u8], unpacked_len: u64, out: &mut BytesMut) -> RemoteResult<()> {
    let start = out.len();
    let mut r = Cursor::new(packed);
    while (r.position() as usize) < packed.len() {
        let (data, _, _) = deserialize_chunk(&mut r)
            .map_err(|e| RemoteError::Integrity(format!("a stored chunk is bad: {e}")))?;
        out.extend_from_slice(&data);
    }
    let got = (out.len() - start) as u64;
    if got != unpacked_len {
        return Err(RemoteError::Integrity(format!(
            "stored chunks unpack to {got} bytes, the footer says {unpacked_len}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xet_core_structures::xorb_object::xorb_format_test_utils::{
        build_and_verify_xorb_object, build_raw_xorb, ChunkSize,
    };
    use xet_core_structures::xorb_object::CompressionScheme;

    #[test]
    fn a_checked_xorb_reads_back_chunk_by_chunk_and_a_wrong_name_is_refused() {
        let raw = build_raw_xorb(7, ChunkSize::Random(512, 8192));
        let data: Vec<u8> = raw.data.iter().flatten().copied().collect();
        let hash = raw.hash();
        let obj = build_and_verify_xorb_object(raw, CompressionScheme::LZ4);
        let checked = check_xorb(&hash, &obj.serialized_data).unwrap();
        let footer = Footer::parse(
            checked.stored.len() as u64,
            &checked.stored[checked.footer_at..],
        )
        .unwrap();
        assert_eq!(footer.chunks(), 7);
        assert_eq!(footer.chunk_hashes(&(0..7)).unwrap().len(), 7);
        assert!(footer.chunk_hashes(&(3..8)).is_err());
        // Every chunk unpacks from where the footer says it is stored.
        let mut out = BytesMut::new();
        for c in 0..7 {
            let packed = &checked.stored
                [footer.packed_start(c) as usize..footer.packed_start(c + 1) as usize];
            let len = footer.unpacked_start(c + 1) - footer.unpacked_start(c);
            unpack(packed, len, &mut out).unwrap();
        }
        assert_eq!(&out[..], &data[..]);
        // The same body under another name, or cut short, is refused.
        let other = MerkleHash::from_hex(&"ab".repeat(32)).unwrap();
        assert!(check_xorb(&other, &obj.serialized_data).is_err());
        assert!(check_xorb(&hash, &obj.serialized_data[..obj.serialized_data.len() / 2]).is_err());
    }
}
