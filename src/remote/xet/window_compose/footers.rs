//! The base's chunks from its xorbs' footers: fetching and checking footers, and the bytes
//! of the window chunks by the footers' packed offsets.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use xet_client::cas_client::Client;
use xet_client::cas_types::{HttpRange, QueryReconstructionResponseV2};
use xet_core_structures::merklehash::{compute_data_hash, xorb_hash, MerkleHash};
use xet_core_structures::xorb_object::XorbObjectInfoV1;

use super::fetch::{term_data, Fetched};
use super::{integrity, ChunkHashes};
use crate::remote::xet::rechunk::BaseChunk;
use crate::remote::xet::xorb_footer::{self, Suffix, XorbIndex};
use crate::remote::{RemoteError, RemoteResult};

/// Chunks of a stored xorb, from its footer, checked against the xorb's name.
#[derive(Debug)]
pub struct Footer {
    pub hashes: Vec<MerkleHash>,
    pub index: XorbIndex,
}

/// The footer `info` of xorb `xorb`, if it is that xorb's and agrees with `terms` (chunk
/// ranges of the xorb with their unpacked lengths, as a reconstruction names them): its chunk
/// hashes and lengths must hash to the xorb's name, and each term's chunks must exist and add
/// up to its length.
pub fn check_footer(
    info: XorbObjectInfoV1,
    xorb: &MerkleHash,
    terms: &[(Range<u32>, u64)],
) -> Result<Footer, String> {
    let n = info.num_chunks;
    if info.chunk_hashes.len() != n as usize
        || info.unpacked_chunk_offsets.len() != n as usize
        || info.chunk_boundary_offsets.len() != n as usize
    {
        return Err("a footer without every chunk's hash and ends".into());
    }
    let f = Footer {
        hashes: info.chunk_hashes,
        index: XorbIndex::new(info.chunk_boundary_offsets, info.unpacked_chunk_offsets),
    };
    let chunks: Vec<(MerkleHash, u64)> = (0..n)
        .map(|c| (f.hashes[c as usize], f.index.chunk_len(c)))
        .collect();
    let named = xorb_hash(&chunks);
    if named != *xorb {
        return Err(format!("its chunks hash to {}", named.hex()));
    }
    for (r, len) in terms {
        if r.start >= r.end || r.end > n {
            return Err(format!("a term names chunks {r:?} of {n}"));
        }
        let held = f.index.unpacked_start(r.end) - f.index.unpacked_start(r.start);
        if held != *len {
            return Err(format!(
                "chunks {r:?} hold {held} bytes, the reconstruction says {len}"
            ));
        }
    }
    Ok(f)
}

/// Extra chunks' worth of suffix asked for beyond the highest chunk the reconstruction names
/// of a xorb, so that one fetch usually holds its whole footer.
const FOOTER_SLACK_CHUNKS: u32 = 64;

/// The footers of `xorbs` (each checked against every term of it in `recon`), fetched side by
/// side from the URLs `recon` gives; a footer that cannot be had says why.
pub(super) async fn fetch_footers(
    route: &dyn ChunkHashes,
    recon: &QueryReconstructionResponseV2,
    xorbs: &[MerkleHash],
) -> HashMap<MerkleHash, Result<Footer, String>> {
    let got = futures::future::join_all(xorbs.iter().map(|x| async move {
        let terms: Vec<(Range<u32>, u64)> = recon
            .terms
            .iter()
            .filter(|t| t.hash.0 == *x)
            .map(|t| (t.range.start..t.range.end, u64::from(t.unpacked_length)))
            .collect();
        let fetches = recon.xorbs.get(&(*x).into());
        let url = fetches.and_then(|l| l.first()).map(|f| f.url.as_str());
        let top = fetches
            .into_iter()
            .flatten()
            .flat_map(|f| f.ranges.iter().map(|d| d.chunks.end))
            .chain(terms.iter().map(|t| t.0.end))
            .max()
            .unwrap_or(0);
        let r = async {
            let url = url.ok_or("no fetch URL")?;
            let mut want = xorb_footer::footer_suffix_len(top + FOOTER_SLACK_CHUNKS);
            for _ in 0..2 {
                let tail = route
                    .get_range(url, &format!("bytes=-{want}"))
                    .await
                    .map_err(|e| e.to_string())?;
                match xorb_footer::footer(&tail)? {
                    Suffix::Parsed(info) => return check_footer(info, x, &terms),
                    Suffix::Need(n) if n > want => want = n,
                    Suffix::Need(_) => return Err("short suffix".to_string()),
                }
            }
            Err("footer longer than announced".to_string())
        }
        .await;
        (*x, r)
    }))
    .await;
    got.into_iter().collect()
}

/// The xorbs of the terms of `recon` (starting at `starts`) that meet `ranges`.
pub(super) fn xorbs_meeting(
    recon: &QueryReconstructionResponseV2,
    starts: &[u64],
    ranges: &[Range<u64>],
) -> Vec<MerkleHash> {
    let mut seen = HashSet::new();
    recon
        .terms
        .iter()
        .enumerate()
        .filter(|&(i, _)| {
            ranges
                .iter()
                .any(|r| starts[i] < r.end && r.start < starts[i + 1])
        })
        .map(|(_, t)| t.hash.0)
        .filter(|x| seen.insert(*x))
        .collect()
}

/// Where the base's chunks are read from their xorbs' footers: terms `which` of `recon`
/// (term `i` starting at `starts[i]`), with bytes for every chunk inside `windows`.
pub(super) struct ByFooters<'a> {
    pub client: &'a Arc<dyn Client>,
    pub route: &'a dyn ChunkHashes,
    pub recon: &'a QueryReconstructionResponseV2,
    pub which: &'a [usize],
    pub starts: &'a [u64],
    pub windows: &'a [Range<u64>],
}

/// Consecutive chunks of one xorb that a window needs the bytes of: the xorb, its chunk
/// indices, and where they are in the [`Fetched`] being filled.
type Run = (MerkleHash, Range<u32>, Range<usize>);

impl ByFooters<'_> {
    /// The chunks, from their xorbs' footers (those in `footers`, the others fetched now),
    /// with window bytes from `near` where it holds them, the rest fetched by the footer's
    /// packed offsets. `Err` says why the footers cannot serve (the caller then reads the
    /// terms whole).
    pub async fn fetch(
        &self,
        mut footers: HashMap<MerkleHash, Result<Footer, String>>,
        near: Fetched,
    ) -> RemoteResult<Fetched> {
        self.fetch_missing_footers(&mut footers).await;
        let mut out = self.listed(&footers)?;
        out.read = near.read;
        take_near_bytes(&mut out, &near);
        let runs = runs_without_bytes(&out, self.windows);
        self.fetch_runs(&footers, &runs, &mut out).await?;
        Ok(out)
    }

    /// The footers of the xorbs of terms `which` not yet in `footers`, added to it.
    async fn fetch_missing_footers(
        &self,
        footers: &mut HashMap<MerkleHash, Result<Footer, String>>,
    ) {
        let mut want: Vec<MerkleHash> = Vec::new();
        for &i in self.which {
            let x = self.recon.terms[i].hash.0;
            if !footers.contains_key(&x) && !want.contains(&x) {
                want.push(x);
            }
        }
        if !want.is_empty() {
            footers.extend(fetch_footers(self.route, self.recon, &want).await);
        }
    }

    /// Every chunk of terms `which` as its footer lists it, without bytes.
    fn listed(
        &self,
        footers: &HashMap<MerkleHash, Result<Footer, String>>,
    ) -> RemoteResult<Fetched> {
        let mut out = Fetched::default();
        for &i in self.which {
            let t = &self.recon.terms[i];
            let f = match footers.get(&t.hash.0) {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Err(integrity(format!("footer of xorb {}: {e}", t.hash))),
                None => return Err(integrity(format!("no footer of xorb {}", t.hash))),
            };
            let mut at = self.starts[i];
            for c in t.range.start..t.range.end {
                let len = f.index.chunk_len(c);
                let hash = f.hashes[c as usize];
                out.push(BaseChunk { hash, len }, t.hash.0, c, at, None);
                at += len;
            }
        }
        Ok(out)
    }

    /// The bytes of `runs`, one ranged fetch each by the footer's packed offsets, each chunk
    /// checked against the footer's hash and length and put into `out`.
    async fn fetch_runs(
        &self,
        footers: &HashMap<MerkleHash, Result<Footer, String>>,
        runs: &[Run],
        out: &mut Fetched,
    ) -> RemoteResult<()> {
        let got = futures::future::try_join_all(runs.iter().map(|(x, c, ks)| {
            // Every touched term's footer was checked by `listed`.
            let range = footers.get(x).and_then(|f| f.as_ref().ok()).map(|f| {
                HttpRange::new(
                    f.index.packed_start(c.start),
                    f.index.packed_start(c.end) - 1,
                )
            });
            let url = self
                .recon
                .xorbs
                .get(&(*x).into())
                .and_then(|l| l.first())
                .map(|f| f.url.clone());
            async move {
                let (Some(url), Some(range)) = (url, range) else {
                    return Err(integrity(format!("no fetch URL or footer for xorb {x}")));
                };
                let what = format!("chunks {c:?} of {x}");
                let (data, idx) = term_data(self.client, &url, range, c.len(), &what).await?;
                Ok::<_, RemoteError>((ks.clone(), data, idx))
            }
        }))
        .await?;
        for (ks, data, idx) in got {
            for (n, j) in ks.enumerate() {
                let bytes = data.slice(idx[n] as usize..idx[n + 1] as usize);
                if compute_data_hash(&bytes) != out.chunks[j].hash
                    || bytes.len() as u64 != out.chunks[j].len
                {
                    return Err(integrity(format!(
                        "chunk {} of {} does not hash as its footer says",
                        out.refs[j].index, out.refs[j].xorb
                    )));
                }
                out.read += bytes.len() as u64;
                out.data[j] = Some(bytes);
            }
        }
        Ok(())
    }
}

/// The bytes fetched ahead (`near`) put into `out` wherever a chunk of the same content
/// starts at the same place (their hashes were computed from the bytes).
fn take_near_bytes(out: &mut Fetched, near: &Fetched) {
    for (k, &p) in near.pos.iter().enumerate() {
        if let Some(j) = out.starting_at(p) {
            if out.chunks[j] == near.chunks[k] {
                out.data[j] = near.data[k].clone();
            }
        }
    }
}

/// The chunks inside `windows` still without bytes, as runs of consecutive chunks of one
/// xorb (each one ranged fetch).
fn runs_without_bytes(out: &Fetched, windows: &[Range<u64>]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for w in windows {
        let a = out.pos.partition_point(|&p| p < w.start);
        let b = out.pos.partition_point(|&p| p < w.end);
        for j in a..b {
            if out.data[j].is_some() {
                continue;
            }
            let r = out.refs[j];
            match runs.last_mut() {
                Some((x, c, ks)) if *x == r.xorb && c.end == r.index && ks.end == j => {
                    c.end += 1;
                    ks.end += 1;
                }
                _ => runs.push((r.xorb, r.index..r.index + 1, j..j + 1)),
            }
        }
    }
    runs
}
