//! Fuzzing `xetmount serve` over its whole route table (issue 20): proptest generates
//! requests (methods, awkward paths, bodies, NDJSON batch lines, Range and X-Range-Dirty
//! values, every kind of token) and sends them raw over one keep-alive connection to a
//! server child process. Every answer must be below 500, the process must stay up with no
//! panic in its log, and buckets must change only as the request legitimately allows:
//!
//! - a refused request (4xx) leaves every bucket as it was (listing, hashes, mtimes,
//!   visibility, revision), and the buckets no caller may write in a request stay unchanged;
//! - a batch applies no malformed line and rewrites no path: what changed in the bucket comes
//!   from lines whose path `remote::names::check_path` accepts, with a hash the writer may
//!   read (copies: from a source it may read that holds the hash), and each malformed line is
//!   reported in `failed`;
//! - no bucket ever holds a path `check_path` refuses;
//! - a CAS token answers reconstructions only for hashes of the bucket it names;
//! - a private bucket answers a caller who may not read it exactly as a missing bucket does
//!   (nothing tells it exists), and a bucket the caller may read never answers
//!   `RepoNotFound`; bucket lists show only what the caller may see;
//! - a tree prefix or resolve path with a control character, a `.`/`..` segment or over the
//!   length limits answers 4xx.
//!
//! Every violation is collected (grouped by property, route and status) and the test fails at
//! the end listing them all, each with one request that shows it.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Serve;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};
use xetmount::remote::names::check_path;
use xetmount::server::auth::{Auth, Scope};

/// Proptest cases, and requests generated per case: 40 × 520 = 20,800 requests.
const CASES: u32 = 40;
const PER_CASE: usize = 520;

const EMPTY_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: the fuzzer must send paths byte for byte ('..', '//', '%00'),
// which an URL-normalising client would rewrite.

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Clone, Debug)]
struct Wire {
    method: String,
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Wire {
    fn get(target: &str, auth: &str) -> Wire {
        Wire {
            method: "GET".into(),
            target: target.as_bytes().to_vec(),
            headers: vec![("Authorization".into(), auth.as_bytes().to_vec())],
            body: Vec::new(),
        }
    }

    fn bytes(&self, host: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(format!(" HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// One line for a report: method, target (shortened), headers, body (shortened).
    fn show(&self) -> String {
        let short = |b: &[u8], n: usize| {
            let s = String::from_utf8_lossy(b);
            if s.len() > n {
                let mut cut = n;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                format!("{}…({} bytes)", &s[..cut], b.len())
            } else {
                s.into_owned()
            }
        };
        let hs: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", short(v, 60)))
            .collect();
        format!(
            "{} {} [{}] body={:?}",
            self.method,
            short(&self.target, 200),
            hs.join("; "),
            short(&self.body, 4000)
        )
    }
}

struct Raw {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Raw {
    fn new(url: &str) -> Raw {
        Raw {
            addr: url.trim_start_matches("http://").to_string(),
            conn: None,
        }
    }

    fn connect(&self) -> Result<BufReader<TcpStream>, String> {
        let s = TcpStream::connect(&self.addr).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_nodelay(true).unwrap();
        Ok(BufReader::new(s))
    }

    /// Send `w`; `Err` when no answer came (the connection closed or timed out).
    fn send(&mut self, w: &Wire) -> Result<Resp, String> {
        let bytes = w.bytes(&self.addr);
        for _ in 0..2 {
            let reused = self.conn.is_some();
            let mut c = match self.conn.take() {
                Some(c) => c,
                None => self.connect()?,
            };
            if let Err(e) = c.get_mut().write_all(&bytes) {
                if reused {
                    continue;
                }
                return Err(format!("write: {e}"));
            }
            match read_response(&mut c, w.method == "HEAD") {
                Ok((r, keep)) => {
                    if keep {
                        self.conn = Some(c);
                    }
                    return Ok(r);
                }
                // A kept connection the server had closed: once more on a new one.
                Err(None) if reused => continue,
                Err(e) => return Err(e.unwrap_or_else(|| "connection closed, no answer".into())),
            }
        }
        Err("connection closed, no answer".into())
    }
}

/// `Err(None)`: the connection closed before any byte of an answer.
fn read_response(c: &mut BufReader<TcpStream>, head: bool) -> Result<(Resp, bool), Option<String>> {
    let mut line = Vec::new();
    let n = c
        .read_until(b'\n', &mut line)
        .map_err(|e| Some(format!("read: {e}")))?;
    if n == 0 {
        return Err(None);
    }
    let status_line = String::from_utf8_lossy(&line).trim().to_string();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Some(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        c.read_until(b'\n', &mut line)
            .map_err(|e| Some(format!("read headers: {e}")))?;
        let l = String::from_utf8_lossy(&line).trim_end().to_string();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let hv = |k: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut keep = hv("connection").as_deref() != Some("close");
    let mut body = Vec::new();
    let bodyless = head || status < 200 || status == 204 || status == 304;
    if bodyless {
    } else if hv("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            line.clear();
            c.read_until(b'\n', &mut line)
                .map_err(|e| Some(format!("read chunk: {e}")))?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&line)
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or(""),
                16,
            )
            .map_err(|_| {
                Some(format!(
                    "bad chunk size {:?}",
                    String::from_utf8_lossy(&line)
                ))
            })?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    c.read_until(b'\n', &mut line)
                        .map_err(|e| Some(format!("read trailer: {e}")))?;
                    if line == b"\r\n" || line.is_empty() {
                        break;
                    }
                }
                break;
            }
            let at = body.len();
            body.resize(at + size + 2, 0);
            c.read_exact(&mut body[at..])
                .map_err(|e| Some(format!("read chunk body: {e}")))?;
            body.truncate(at + size);
        }
    } else if let Some(n) = hv("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        c.read_exact(&mut body)
            .map_err(|e| Some(format!("read body: {e}")))?;
    } else {
        c.read_to_end(&mut body)
            .map_err(|e| Some(format!("read body: {e}")))?;
        keep = false;
    }
    Ok((
        Resp {
            status,
            headers,
            body,
        },
        keep,
    ))
}

// ---------------------------------------------------------------------------------------
// Percent-encoding as the fuzzer wants it.

/// Encode `s` for a URL path: '/' stays a separator; '%' stays literal when `raw_percent`
/// (so '%00', '%zz', '%2F' reach the server's decoder), else becomes '%25'.
fn enc_path(s: &str, raw_percent: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'%' if raw_percent => out.push('%'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            b'!' | b'$' | b'\'' | b'(' | b')' | b'*' | b',' | b';' | b':' | b'@' | b'=' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn enc_query(s: &str, raw_percent: bool) -> String {
    enc_path(s, raw_percent)
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// What the server's percent-decoder makes of `s`.
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = h {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// A tree prefix or resolve path no bucket can hold whatever the server makes of edge
/// slashes: a control character, a '.'/'..' segment, a name or path over the limits.
fn clearly_malformed(p: &str) -> bool {
    p.len() > xetmount::remote::names::MAX_PATH
        || p.chars().any(char::is_control)
        || p.split('/')
            .any(|s| s == "." || s == ".." || s.len() > xetmount::remote::names::MAX_SEGMENT)
}

// ---------------------------------------------------------------------------------------
// The world: buckets, tokens, what the setup stored.

/// Bucket ids the generator names: the five real ones first, then ones that never exist
/// (each namespace's ghost answers for a private bucket's twin), then awkward ids.
const REAL: [&str; 5] = [
    "alice/pub",
    "alice/priv",
    "bob/secret",
    "alice/sandbox",
    "bob/box",
];
const PRIVATE: [bool; 5] = [false, true, true, true, true];
/// Buckets a legitimate request may change (each user's own sandbox).
const SANDBOX_OF_ALICE: usize = 3;
const SANDBOX_OF_BOB: usize = 4;
const GHOSTS: [&str; 3] = ["alice/ghost", "bob/ghost", "carol/none"];
fn awkward_ids() -> Vec<String> {
    vec![
        "alice/%00".into(),
        "..%2F../x".into(),
        format!("{}/y", "x".repeat(5000)),
        "me/pub".into(),
        "alice/pub%2Fx".into(),
        "alice/ pub".into(),
        "ALICE/pub".into(),
        "alice/p%C3%BCb".into(),
        "alice/.pub".into(),
        "%FF/%FE".into(),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Anonymous,
    Unknown,
    Hub(usize),
    /// A CAS token; `Some((bucket index in REAL, scope))` for a valid one.
    Cas(Option<(usize, Scope)>),
}

/// Hub tokens of the token file (the admin one only takes snapshots).
const HUB: [(&str, &str, Scope, &str); 3] = [
    ("alice-w", "alice", Scope::Write, "alice/*"),
    ("ro-token", "carol", Scope::Read, "alice/*"),
    ("bob-w", "bob", Scope::Write, "bob/*"),
];
const ADMIN: &str = "Bearer admin-token";

fn scope_of(who: Who, id: &str) -> Option<Scope> {
    let Who::Hub(i) = who else { return None };
    let (_, _, scope, pat) = HUB[i];
    let ns = id.split('/').next().unwrap_or("");
    (pat.strip_suffix("/*") == Some(ns)).then_some(scope)
}

/// The sandbox a writer's legitimate changes go to.
fn sandbox_of(who: Who) -> Option<usize> {
    match who {
        Who::Hub(0) => Some(SANDBOX_OF_ALICE),
        Who::Hub(2) => Some(SANDBOX_OF_BOB),
        _ => None,
    }
}

struct Token {
    header: Vec<u8>,
    who: Who,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileRow {
    size: u64,
    hash: String,
    mtime: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Snap {
    private: bool,
    revision: Value,
    files: BTreeMap<String, FileRow>,
}

struct World {
    url: String,
    tokens: Vec<Token>,
    /// Hashes of stored files, with the real bucket each was uploaded to.
    files: Vec<(String, usize)>,
    xorbs: Vec<String>,
    chunks: Vec<String>,
    /// A valid fetch query per xorb, and an expired one.
    fetch_ok: HashMap<String, String>,
    fetch_expired: HashMap<String, String>,
    /// Paths the setup stored, for generated paths that hit them.
    paths: Vec<String>,
    ids: Vec<String>,
}

/// What the checks track between requests.
struct Model {
    snaps: Vec<Option<Snap>>,
    /// Every hash ever in each real bucket (a CAS token for it may reconstruct these).
    ever: Vec<BTreeSet<String>>,
    /// Per Hub token: hashes it could read at some point (an addFile may add these).
    readable: Vec<BTreeSet<String>>,
    made: u64,
}

impl Model {
    fn observe(&mut self, b: usize, snap: &Option<Snap>) {
        if let Some(s) = snap {
            for f in s.files.values() {
                self.ever[b].insert(f.hash.to_lowercase());
                for (t, set) in self.readable.iter_mut().enumerate() {
                    if !s.private || scope_of(Who::Hub(t), REAL[b]).is_some() {
                        set.insert(f.hash.to_lowercase());
                    }
                }
            }
        }
        self.snaps[b] = snap.clone();
    }
}

fn snapshot(admin: &mut Raw, id: &str) -> Result<Option<Snap>, String> {
    let info = admin.send(&Wire::get(&format!("/api/buckets/{id}"), ADMIN))?;
    if info.status == 404 {
        return Ok(None);
    }
    let v = info
        .json()
        .filter(|_| info.status == 200)
        .ok_or_else(|| format!("info of {id}: {} {}", info.status, info.text()))?;
    let mut files = BTreeMap::new();
    let mut next = Some(format!("/api/buckets/{id}/tree?recursive=true&limit=10000"));
    while let Some(target) = next.take() {
        let r = admin.send(&Wire::get(&target, ADMIN))?;
        let list = r
            .json()
            .and_then(|v| v.as_array().cloned())
            .filter(|_| r.status == 200)
            .ok_or_else(|| format!("tree of {id}: {} {}", r.status, r.text()))?;
        for e in list {
            let p = e["path"].as_str().unwrap_or_default().to_string();
            files.insert(
                p,
                FileRow {
                    size: e["size"].as_u64().unwrap_or(u64::MAX),
                    hash: e["xetHash"].as_str().unwrap_or_default().to_string(),
                    mtime: e["mtime"].to_string(),
                },
            );
        }
        next = r.header("link").and_then(|l| {
            let (u, _) = l.split_once(';')?;
            let u = u.trim().trim_start_matches('<').trim_end_matches('>');
            let at = u.find("/api/")?;
            Some(u[at..].to_string())
        });
    }
    Ok(Some(Snap {
        private: v["private"].as_bool().unwrap_or(false),
        revision: v["xetmount"]["revision"].clone(),
        files,
    }))
}

// ---------------------------------------------------------------------------------------
// Generation.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    ListNs,
    Info,
    Create,
    Delete,
    Settings,
    TreeRoot,
    Tree,
    PathsInfo,
    Batch,
    ReadToken,
    WriteToken,
    Move,
    Resolve,
    ReconV2,
    ReconV1,
    Fetch,
    Dedup,
    Grants,
    Xorb,
    ShardV2,
    ShardV1,
    ChunkHashes,
    Telemetry,
    NList,
    NHead,
    NLinks,
    NRevision,
    NChanges,
    NCommit,
    NChunks,
    Metrics,
    Unknown,
}

use Route::*;

/// Every route with its weight and own method.
const ROUTES: [(Route, u32, &str); 32] = [
    (ListNs, 2, "GET"),
    (Info, 3, "GET"),
    (Create, 2, "POST"),
    (Delete, 2, "DELETE"),
    (Settings, 2, "PUT"),
    (TreeRoot, 3, "GET"),
    (Tree, 5, "GET"),
    (PathsInfo, 3, "POST"),
    (Batch, 12, "POST"),
    (ReadToken, 2, "GET"),
    (WriteToken, 2, "GET"),
    (Move, 2, "POST"),
    (Resolve, 5, "GET"),
    (ReconV2, 4, "GET"),
    (ReconV1, 3, "GET"),
    (Fetch, 4, "GET"),
    (Dedup, 2, "GET"),
    (Grants, 1, "POST"),
    (Xorb, 2, "POST"),
    (ShardV2, 2, "POST"),
    (ShardV1, 1, "POST"),
    (ChunkHashes, 3, "GET"),
    (Telemetry, 1, "POST"),
    (NList, 2, "GET"),
    (NHead, 2, "GET"),
    (NLinks, 1, "GET"),
    (NRevision, 1, "GET"),
    (NChanges, 2, "GET"),
    (NCommit, 4, "POST"),
    (NChunks, 2, "GET"),
    (Metrics, 1, "GET"),
    (Unknown, 1, "GET"),
];

fn names_bucket(r: Route) -> bool {
    matches!(
        r,
        Info | Create
            | Delete
            | Settings
            | TreeRoot
            | Tree
            | PathsInfo
            | Batch
            | ReadToken
            | WriteToken
            | Resolve
            | NList
            | NHead
            | NLinks
            | NRevision
            | NChanges
            | NCommit
    )
}

fn is_cas(r: Route) -> bool {
    matches!(
        r,
        ReconV2
            | ReconV1
            | Fetch
            | Dedup
            | Grants
            | Xorb
            | ShardV2
            | ShardV1
            | ChunkHashes
            | NChunks
            | Telemetry
    )
}

/// A generated request, before the world turns it into bytes.
#[derive(Clone, Debug)]
struct Gen {
    route: usize,
    /// `Some`: a method other than the route's own.
    method: Option<String>,
    bucket: usize,
    /// Index into tokens: `(prefer the route's kind, index)`.
    token: (bool, usize),
    hash: HashArg,
    path: String,
    raw_percent: bool,
    query: Vec<(String, String)>,
    json: Value,
    body_kind: u8,
    junk: Vec<u8>,
    lines: Vec<Line>,
    range: Option<String>,
    dirty: Option<String>,
    move_ids: (usize, usize),
}

#[derive(Clone, Debug)]
enum HashArg {
    File(usize),
    Xorb(usize),
    Chunk(usize),
    Upper(usize),
    Text(String),
}

#[derive(Clone, Debug)]
struct Line {
    kind: Option<Value>,
    path: Option<Value>,
    hash: Option<HashArg>,
    mtime: Option<Value>,
    source: Option<usize>,
    source_type: Option<Value>,
    extra: bool,
    /// Not JSON at all (the whole batch is malformed).
    broken: Option<String>,
}

fn seg() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "a", "b.txt", "dir", "sub", "f1", "f2", "x.bin", "deep", "s", "p.txt", "seed.txt",
        ])
        .prop_map(str::to_string),
        2 => "[a-z]{1,8}",
        4 => prop::sample::select(vec![
            "", ".", "..", "\0", "\u{1}", "\t", "\n", "\u{7f}", "é", "日本語", "🙂", " lead",
            "trail ", "%", "%00", "%zz", "%2F", "%2e%2e", "a b", "?", "#", "\\", "\u{202e}",
            "\u{FFFD}", "CON", "\u{85}", "%C3%28",
        ])
        .prop_map(str::to_string),
        1 => (250usize..260).prop_map(|n| "n".repeat(n)),
        1 => Just("x".repeat(5000)),
        1 => "\\PC{1,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(seg(), 1..4), 0u8..10).prop_map(|(segs, edge)| {
        let p = segs.join("/");
        match edge {
            0 => format!("/{p}"),
            1 => format!("{p}/"),
            2 => p.replacen('/', "//", 1),
            _ => p,
        }
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e300f64..1e300).prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        path().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(vec![
                            "op", "path", "entry", "kind", "mode", "hash", "size", "private",
                            "paths", "fromRepo", "toRepo", "type", "from", "to", "uid", "gid",
                            "mtime_ns", "atime_ns", "ctime_ns", "target", "link",
                        ])
                        .prop_map(str::to_string),
                        "[a-z]{1,6}",
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn hash_arg() -> impl Strategy<Value = HashArg> {
    prop_oneof![
        5 => (0usize..64).prop_map(HashArg::File),
        2 => (0usize..64).prop_map(HashArg::Xorb),
        1 => (0usize..64).prop_map(HashArg::Chunk),
        1 => (0usize..64).prop_map(HashArg::Upper),
        3 => prop_oneof![
            Just(EMPTY_HASH.to_string()),
            Just("zz".to_string()),
            "[0-9a-f]{63}",
            "[0-9a-f]{65}",
            "[0-9a-f]{64}",
            "[0-9a-fA-Z]{64}",
            Just(String::new()),
            Just("%00".to_string()),
            Just("x".repeat(5000)),
            Just("..".to_string()),
            Just("-1".to_string()),
            "\\PC{1,8}",
        ]
        .prop_map(HashArg::Text),
    ]
}

fn mtime() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => Just(None),
        3 => (1_600_000_000_000i64..1_900_000_000_000).prop_map(|n| Some(json!(n))),
        3 => prop_oneof![
            Just(json!(0)),
            Just(json!(-1)),
            Just(json!(i64::MIN)),
            Just(json!(i64::MAX)),
            Just(json!(u64::MAX)),
            Just(json!(1e20)),
            Just(json!(1.5)),
            Just(json!("abc")),
            Just(json!("1700000000000")),
            Just(json!("2024-01-01T00:00:00Z")),
            Just(Value::Null),
            Just(json!(true)),
            Just(json!([1])),
            Just(json!({"ms": 1})),
        ]
        .prop_map(Some),
    ]
}

fn line() -> impl Strategy<Value = Line> {
    (
        prop_oneof![
            6 => prop::sample::select(vec!["addFile", "copyFile", "deleteFile"])
                .prop_map(|s| Some(json!(s))),
            1 => prop_oneof![
                Just(None),
                Just(Some(json!("addfile"))),
                Just(Some(json!(7))),
                Just(Some(json!("renameFile"))),
            ],
        ],
        prop_oneof![
            8 => path().prop_map(|p| Some(json!(p))),
            2 => (0usize..64).prop_map(|i| Some(json!(format!("@{i}")))),
            1 => prop_oneof![Just(None), Just(Some(json!(5))), Just(Some(Value::Null))],
        ],
        prop_oneof![8 => hash_arg().prop_map(Some), 1 => Just(None)],
        mtime(),
        (0usize..16),
        prop_oneof![
            4 => Just(Some(json!("bucket"))),
            1 => Just(None),
            1 => Just(Some(json!("model"))),
            1 => Just(Some(json!(3))),
        ],
        any::<bool>(),
        prop_oneof![
            30 => Just(None),
            1 => prop_oneof![
                Just("{".to_string()),
                Just("not json".to_string()),
                Just("{\"type\":\"addFile\",\"path\":\"a\"".to_string()),
                Just("[1,2]".to_string()),
                Just("\"str\"".to_string()),
                Just("\u{0}\u{1}".to_string()),
            ]
            .prop_map(Some),
        ],
    )
        .prop_map(
            |(kind, path, hash, mtime, source, source_type, extra, broken)| Line {
                kind,
                path,
                hash,
                mtime,
                source: Some(source),
                source_type,
                extra,
                broken,
            },
        )
}

fn range() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        3 => (0u64..400_000, 0u64..400_000).prop_map(|(a, b)| Some(format!("bytes={a}-{b}"))),
        1 => (0u64..400_000).prop_map(|a| Some(format!("bytes={a}-"))),
        1 => (0u64..400_000).prop_map(|a| Some(format!("bytes=-{a}"))),
        2 => prop::sample::select(vec![
            "bytes=0-", "bytes=0-0", "bytes=5-2", "bytes=-0", "bytes=99999999999-",
            "bytes=0-18446744073709551615", "bytes=18446744073709551616-", "bytes=1-2,4-5",
            "bytes=", "bits=0-1", "bytes=a-b", "bytes=--1", "bytes= 1 - 2 ", "bytes=-",
            "bytes=0--1", "bytes=18446744073709551615-18446744073709551615",
        ])
        .prop_map(|s| Some(s.to_string())),
        1 => "[ -~]{0,20}".prop_map(Some),
    ]
}

fn dirty() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        3 => prop::collection::vec((0u64..400_000, 0u64..400_000), 1..5).prop_map(|v| {
            let parts: Vec<String> = v.iter().map(|(a, b)| format!("{a}-{b}")).collect();
            Some(format!("bytes={}", parts.join(",")))
        }),
        2 => prop::sample::select(vec![
            "bytes=0-18446744073709551615", "bytes=18446744073709551615-18446744073709551615",
            "bytes=5-2", "bytes=", "bytes=,", "bytes=1-", "bytes=-1", "bytes=0-0,0-0,0-0",
            "bytes=99999999999-99999999999", "nope", "bytes=0-1;2-3",
        ])
        .prop_map(|s| Some(s.to_string())),
        1 => (1usize..2000).prop_map(|n| {
            let parts: Vec<String> = (0..n).map(|i| format!("{i}-{i}")).collect();
            Some(format!("bytes={}", parts.join(",")))
        }),
    ]
}

fn query() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop::sample::select(vec![
        "recursive",
        "limit",
        "cursor",
        "dir",
        "path",
        "link",
        "since",
        "wait",
        "search",
        "exp",
        "sig",
        "expand",
        "",
    ]);
    let val = prop_oneof![
        prop::sample::select(vec![
            "",
            "true",
            "false",
            "0",
            "1",
            "5",
            "10000",
            "10001",
            "-1",
            "x",
            "18446744073709551616",
            "999999",
            "%00",
            "1e3",
            "a/b",
            "..",
        ])
        .prop_map(str::to_string),
        path(),
        "[0-9]{1,25}",
    ];
    prop::collection::vec((key.prop_map(str::to_string), val), 0..4)
}

fn gen() -> impl Strategy<Value = Gen> {
    let weights: Vec<(u32, usize)> = ROUTES.iter().enumerate().map(|(i, r)| (r.1, i)).collect();
    let route = prop::strategy::Union::new_weighted(
        weights
            .into_iter()
            .map(|(w, i)| (w, Just(i).boxed()))
            .collect(),
    );
    (
        (
            route,
            prop_oneof![
                12 => Just(None),
                1 => prop::sample::select(vec![
                    "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "TRACE", "FOO",
                ])
                .prop_map(|m| Some(m.to_string())),
            ],
            prop_oneof![6 => 0usize..5, 2 => 5usize..8, 1 => 8usize..18],
            (prop::bool::weighted(0.75), 0usize..64),
            hash_arg(),
            path(),
            prop::bool::weighted(0.3),
        ),
        (
            query(),
            json_value(),
            0u8..10,
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(line(), 0..6),
            range(),
            dirty(),
            (0usize..18, 0usize..24),
        ),
    )
        .prop_map(
            |(
                (route, method, bucket, token, hash, path, raw_percent),
                (query, json, body_kind, junk, lines, range, dirty, move_ids),
            )| Gen {
                route,
                method,
                bucket,
                token,
                hash,
                path,
                raw_percent,
                query,
                json,
                body_kind,
                junk,
                lines,
                range,
                dirty,
                move_ids,
            },
        )
}

// ---------------------------------------------------------------------------------------
// Rendering a generated request against the world, with what the checks need to know.

/// What a batch line is, by the issue's rules, for the bucket's writer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// May be applied: (path, lowercase hash or None for a delete).
    May(String, Option<String>),
    /// Must not be applied and must be reported in `failed`.
    Never,
}

struct Rendered {
    wire: Wire,
    route: Route,
    who: Who,
    /// Index into `World::ids` of the bucket the path names.
    bucket: Option<usize>,
    /// Real buckets the request may change if it succeeds (snapshot them after it).
    touches: Vec<usize>,
    verdicts: Vec<Verdict>,
    /// A file hash asked of a CAS route.
    cas_hash: Option<String>,
    /// A tree prefix / resolve path (decoded) that is clearly malformed.
    malformed_path: bool,
}

impl World {
    fn hash_text(&self, h: &HashArg) -> String {
        let pick = |v: &Vec<String>, i: usize| {
            if v.is_empty() {
                EMPTY_HASH.to_string()
            } else {
                v[i % v.len()].clone()
            }
        };
        match h {
            HashArg::File(i) => self.files[i % self.files.len()].0.clone(),
            HashArg::Xorb(i) => pick(&self.xorbs, *i),
            HashArg::Chunk(i) => pick(&self.chunks, *i),
            HashArg::Upper(i) => self.files[i % self.files.len()].0.to_uppercase(),
            HashArg::Text(t) => t.clone(),
        }
    }

    fn token_for(&self, g: &Gen, route: Route) -> &Token {
        let (prefer, i) = g.token;
        let cas: Vec<usize> = (0..self.tokens.len())
            .filter(|&t| matches!(self.tokens[t].who, Who::Cas(Some(_))))
            .collect();
        let hub: Vec<usize> = (0..self.tokens.len())
            .filter(|&t| matches!(self.tokens[t].who, Who::Hub(_)))
            .collect();
        let idx = match (prefer, is_cas(route)) {
            (true, true) => cas[i % cas.len()],
            (true, false) => hub[i % hub.len()],
            (false, _) => i % self.tokens.len(),
        };
        &self.tokens[idx]
    }

    fn render(&self, g: &Gen, model: &mut Model) -> Rendered {
        let (route, _, own_method) = ROUTES[g.route];
        let method = g.method.clone().unwrap_or_else(|| own_method.to_string());
        let own = g.method.is_none() || g.method.as_deref() == Some(own_method);
        let tok = self.token_for(g, route);
        let who = tok.who;
        let mut bucket = g.bucket % self.ids.len();
        // The route the server sees: another method on a bucket's own path is another route.
        let eff = match (route, method.as_str()) {
            (Info | Create | Delete, "POST") => Some(Create),
            (Info | Create | Delete, "DELETE") => Some(Delete),
            (Info | Create | Delete, "GET" | "HEAD") => Some(Info),
            _ if own => Some(route),
            _ => None,
        };
        let mutating = matches!(eff, Some(Delete | Settings | Batch | NCommit));
        // A writer's legitimate change of a bucket the checks hold constant goes to its
        // sandbox instead.
        if mutating
            && bucket < REAL.len()
            && scope_of(who, &self.ids[bucket]) == Some(Scope::Write)
            && sandbox_of(who) != Some(bucket)
        {
            bucket = sandbox_of(who).expect("only sandbox owners write");
        }
        let mut id = self.ids[bucket].clone();
        // Creating a ghost would make it exist: a writer creates a new bucket instead.
        if eff == Some(Create) && scope_of(who, &id) == Some(Scope::Write) {
            let ns = id.split('/').next().unwrap_or("x").to_string();
            model.made += 1;
            id = format!("{ns}/made-{}", model.made);
        }
        let rp = g.raw_percent;
        let p = enc_path(&g.path, rp);
        let hash = self.hash_text(&g.hash);
        let hash_enc = enc_path(&hash, rp).replace('/', "%2F");
        let q = |keys: &[&str]| -> String {
            let parts: Vec<String> = g
                .query
                .iter()
                .filter(|(k, _)| keys.contains(&k.as_str()) || k.is_empty())
                .map(|(k, v)| format!("{k}={}", enc_query(v, rp)))
                .collect();
            if parts.is_empty() {
                String::new()
            } else {
                format!("?{}", parts.join("&"))
            }
        };
        let b = format!("/api/buckets/{}", enc_path(&id, true));
        let mut body = Vec::new();
        let mut verdicts = Vec::new();
        let mut cas_hash = None;
        let mut malformed_path = false;
        let mut touches = Vec::new();
        let json_body = |shaped: Value| -> Vec<u8> {
            match g.body_kind {
                0..=5 => shaped.to_string().into_bytes(),
                6 | 7 => g.json.to_string().into_bytes(),
                8 => {
                    let s = shaped.to_string();
                    s.as_bytes()[..s.len() / 2].to_vec()
                }
                _ => g.junk.clone(),
            }
        };
        let target = match route {
            ListNs => {
                let ns = id.split('/').next().unwrap_or("");
                format!("/api/buckets/{ns}{}", q(&["search"]))
            }
            Info => b.clone(),
            Create => {
                body = json_body(json!({"private": g.json.is_null(), "visibility": "private"}));
                b.clone()
            }
            Delete => b.clone(),
            Settings => {
                body = json_body(json!({"private": g.junk.len().is_multiple_of(2)}));
                format!("{b}/settings")
            }
            TreeRoot => format!("{b}/tree{}", q(&["recursive", "limit", "cursor", "expand"])),
            Tree => {
                let decoded = String::from_utf8_lossy(&decode(&p)).into_owned();
                malformed_path = clearly_malformed(&decoded);
                format!(
                    "{b}/tree/{p}{}",
                    q(&["recursive", "limit", "cursor", "expand"])
                )
            }
            PathsInfo => {
                let paths: Vec<Value> = g
                    .lines
                    .iter()
                    .filter_map(|l| l.path.clone())
                    .chain([json!(g.path)])
                    .collect();
                body = json_body(json!({ "paths": paths }));
                format!("{b}/paths-info")
            }
            Batch => {
                let writer = sandbox_of(who).filter(|s| *s == bucket).map(|_| who);
                let mut text = String::new();
                for l in &g.lines {
                    let (line, verdict) = self.render_line(l, writer, model);
                    text.push_str(&line);
                    text.push('\n');
                    verdicts.push(verdict);
                }
                body = if g.body_kind == 9 {
                    // Junk instead of the lines: nothing of them may land.
                    verdicts.clear();
                    g.junk.clone()
                } else {
                    text.into_bytes()
                };
                format!("{b}/batch")
            }
            ReadToken => format!("{b}/xet-read-token"),
            WriteToken => format!("{b}/xet-write-token"),
            Move => {
                let all: Vec<String> = self
                    .ids
                    .iter()
                    .filter(|i| !GHOSTS.contains(&i.as_str()))
                    .cloned()
                    .chain(["alice/moved".into(), "bob/moved".into(), "x".into()])
                    .collect();
                let mut from = all[g.move_ids.0 % all.len()].clone();
                let to = all[g.move_ids.1 % all.len()].clone();
                if let Some(fi) = REAL.iter().position(|r| *r == from) {
                    if scope_of(who, &from) == Some(Scope::Write) && sandbox_of(who) != Some(fi) {
                        from = REAL[sandbox_of(who).unwrap()].to_string();
                    }
                }
                for x in [&from, &to] {
                    if let Some(i) = REAL.iter().position(|r| r == x) {
                        touches.push(i);
                    }
                }
                body = json_body(json!({"fromRepo": from, "toRepo": to, "type": "bucket"}));
                "/api/repos/move".into()
            }
            Resolve => {
                let decoded = String::from_utf8_lossy(&decode(&p)).into_owned();
                malformed_path = clearly_malformed(&decoded);
                format!("/buckets/{id}/resolve/{p}")
            }
            ReconV2 | ReconV1 | ChunkHashes | NChunks => {
                cas_hash = Some(hash.clone());
                let base = match route {
                    ReconV2 => "/v2/reconstructions",
                    ReconV1 => "/v1/reconstructions",
                    ChunkHashes => "/v2/file-chunk-hashes",
                    _ => "/v1/xetmount/chunks",
                };
                format!("{base}/{hash_enc}")
            }
            Fetch => {
                let qs = match g.body_kind {
                    0..=5 => self.fetch_ok.get(&hash).cloned(),
                    6 => self.fetch_expired.get(&hash).cloned(),
                    7 => self
                        .fetch_ok
                        .values()
                        .nth(g.junk.len() % self.fetch_ok.len().max(1))
                        .cloned(),
                    _ => None,
                }
                .unwrap_or_else(|| q(&["exp", "sig"]).trim_start_matches('?').to_string());
                format!("/fetch/{hash_enc}?{qs}")
            }
            Dedup => format!("/v1/chunks/default/{hash_enc}"),
            Grants => format!("/v1/xorb-grants/default/{hash_enc}"),
            Xorb => {
                body = g.junk.clone();
                format!("/v1/xorbs/default/{hash_enc}")
            }
            ShardV2 => {
                body = g.junk.clone();
                "/v2/shards".into()
            }
            ShardV1 => {
                body = g.junk.clone();
                "/v1/shards".into()
            }
            Telemetry => {
                body = json_body(json!({"event": "x"}));
                "/v1/telemetry".into()
            }
            NList => format!("{b}/xetmount/list{}", q(&["dir"])),
            NHead => format!("{b}/xetmount/head{}", q(&["path"])),
            NLinks => format!("{b}/xetmount/links{}", q(&["link"])),
            NRevision => format!("{b}/xetmount/revision"),
            NChanges => {
                // A wait only with since=0, which answers at once: a held request would
                // stall the fuzzer.
                let since = g
                    .query
                    .iter()
                    .find(|(k, _)| k == "since")
                    .map(|(_, v)| enc_query(v, rp));
                let wait = g
                    .query
                    .iter()
                    .find(|(k, _)| k == "wait")
                    .map(|(_, v)| v.clone());
                let mut parts = Vec::new();
                match (since, wait) {
                    (s, Some(w)) if w.parse::<u64>().is_ok_and(|n| n > 0) => {
                        parts.push("since=0".to_string());
                        parts.push(format!("wait={w}"));
                        let _ = s;
                    }
                    (s, w) => {
                        if let Some(s) = s {
                            parts.push(format!("since={s}"));
                        }
                        if let Some(w) = w {
                            parts.push(format!("wait={}", enc_query(&w, rp)));
                        }
                    }
                }
                format!("{b}/xetmount/changes?{}", parts.join("&"))
            }
            NCommit => {
                body = json_body(self.commit_ops(g));
                format!("{b}/xetmount/commit")
            }
            Metrics => "/v1/xetmount/metrics".into(),
            Unknown => format!("/{p}"),
        };
        if matches!(eff, Some(Create | Delete | Settings | Batch | NCommit)) {
            if let Some(i) = REAL.iter().position(|r| *r == id) {
                touches.push(i);
            }
        }
        let mut headers = vec![("Authorization".to_string(), tok.header.clone())];
        if let Some(r) = &g.range {
            if matches!(route, Resolve | ReconV1 | ReconV2 | Fetch) {
                headers.push(("Range".into(), r.clone().into_bytes()));
            }
        }
        if let Some(d) = &g.dirty {
            if route == ChunkHashes {
                headers.push(("X-Range-Dirty".into(), d.clone().into_bytes()));
            }
        }
        if matches!(route, Batch) {
            headers.push(("Content-Type".into(), b"application/x-ndjson".to_vec()));
        } else if !body.is_empty() && g.body_kind < 8 {
            headers.push(("Content-Type".into(), b"application/json".to_vec()));
        }
        let bucket_idx = self.ids.iter().position(|x| *x == id);
        Rendered {
            wire: Wire {
                method,
                target: target.into_bytes(),
                headers,
                body,
            },
            route,
            who,
            bucket: bucket_idx.filter(|_| names_bucket(route)),
            touches,
            verdicts,
            cas_hash,
            malformed_path: malformed_path && own,
        }
    }

    fn commit_ops(&self, g: &Gen) -> Value {
        let ops: Vec<Value> = g
            .lines
            .iter()
            .map(|l| {
                let p = l.path.clone().unwrap_or(Value::Null);
                let hash = l.hash.as_ref().map(|h| self.hash_text(h));
                match l.source.unwrap_or(0) % 5 {
                    0 => json!({"op": "put", "entry": {
                        "path": p, "kind": l.source.unwrap_or(0) % 9, "hash": hash,
                        "size": g.junk.len(), "mode": 0o644, "uid": 0, "gid": 0,
                        "atime_ns": 0, "mtime_ns": l.mtime.clone().unwrap_or(json!(0)),
                        "ctime_ns": 0, "target": "../../etc/passwd"}}),
                    1 => json!({"op": "delete", "path": p}),
                    2 => json!({"op": "rename", "from": p, "to": g.path}),
                    3 => json!({"op": "link", "from": p, "to": g.path}),
                    _ => json!({"op": "expect", "path": p, "hash": hash, "size": 3}),
                }
            })
            .collect();
        Value::Array(ops)
    }

    /// One NDJSON line and its verdict for `writer` (the sandbox owner, if the caller is).
    fn render_line(&self, l: &Line, writer: Option<Who>, model: &Model) -> (String, Verdict) {
        if let Some(b) = &l.broken {
            return (b.clone(), Verdict::Never);
        }
        let mut o = serde_json::Map::new();
        if let Some(k) = &l.kind {
            o.insert("type".into(), k.clone());
        }
        // "@i": a path the setup stored.
        let path = l.path.clone().map(|p| match p.as_str() {
            Some(s) if s.starts_with('@') => {
                let i: usize = s[1..].parse().unwrap_or(0);
                json!(self.paths[i % self.paths.len()])
            }
            _ => p,
        });
        if let Some(p) = &path {
            o.insert("path".into(), p.clone());
        }
        let hash = l.hash.as_ref().map(|h| self.hash_text(h));
        if let Some(h) = &hash {
            o.insert("xetHash".into(), json!(h));
        }
        if let Some(m) = &l.mtime {
            o.insert("mtime".into(), m.clone());
        }
        let kind = l.kind.as_ref().and_then(Value::as_str).unwrap_or("");
        let source = l.source.map(|s| self.ids[s % self.ids.len()].clone());
        if kind == "copyFile" {
            if let Some(t) = &l.source_type {
                o.insert("sourceRepoType".into(), t.clone());
            }
            if let Some(s) = &source {
                o.insert("sourceRepoId".into(), json!(s));
            }
        }
        if l.extra {
            o.insert("contentType".into(), json!("text/plain"));
        }
        let text = Value::Object(o).to_string();
        let Some(who) = writer else {
            return (text, Verdict::Never);
        };
        let p = path.as_ref().and_then(Value::as_str);
        let Some(p) = p.filter(|p| check_path(p).is_ok()) else {
            return (text, Verdict::Never);
        };
        let readable = |h: &str| {
            h == EMPTY_HASH
                || matches!(who, Who::Hub(t) if model.readable[t].contains(&h.to_lowercase()))
        };
        let mtime_ok = match &l.mtime {
            None => true,
            Some(v) => v.is_number() || v.is_null(),
        };
        match kind {
            "deleteFile" => (text, Verdict::May(p.to_string(), None)),
            "addFile" | "copyFile" => {
                let Some(h) = hash.as_deref() else {
                    return (text, Verdict::Never);
                };
                let hex = h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit());
                if !hex || !readable(h) || !mtime_ok {
                    return (text, Verdict::Never);
                }
                if kind == "copyFile" {
                    // The source must be a bucket the writer may read that holds the hash.
                    let ok_type = matches!(
                        l.source_type.as_ref().and_then(Value::as_str),
                        Some("bucket") | None
                    );
                    let src = source
                        .as_deref()
                        .and_then(|s| REAL.iter().position(|r| *r == s));
                    let holds = src.is_some_and(|s| {
                        let visible = model.snaps[s]
                            .as_ref()
                            .is_some_and(|snap| !snap.private || scope_of(who, REAL[s]).is_some());
                        visible
                            && model.snaps[s].as_ref().is_some_and(|snap| {
                                snap.files.values().any(|f| f.hash.eq_ignore_ascii_case(h))
                            })
                    });
                    if !ok_type || !holds {
                        return (text, Verdict::Never);
                    }
                }
                (text, Verdict::May(p.to_string(), Some(h.to_lowercase())))
            }
            _ => (text, Verdict::Never),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checks.

#[derive(Default)]
struct Findings {
    /// (property, route, status) → (count, first example).
    groups: BTreeMap<(String, String, String), (u64, String)>,
}

impl Findings {
    fn add(&mut self, prop: &str, r: &Rendered, status: &str, detail: String) {
        let key = (
            prop.to_string(),
            format!("{:?}", r.route),
            status.to_string(),
        );
        let e = self
            .groups
            .entry(key)
            .or_insert_with(|| (0, format!("{}\n      -> {detail}", r.wire.show())));
        e.0 += 1;
    }

    fn report(&self) -> String {
        let mut s = String::new();
        for ((prop, route, status), (n, ex)) in &self.groups {
            s.push_str(&format!(
                "[{prop}] route {route}, answer {status}: {n} times; e.g.\n    {ex}\n"
            ));
        }
        s
    }
}

/// An error text with the request's own strings and hex runs masked, to group by wording.
fn mask(s: &str, body: &[u8]) -> String {
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(x) if !x.is_empty() => out.push(x.clone()),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut inputs = Vec::new();
    for l in String::from_utf8_lossy(body).lines() {
        if let Ok(v) = serde_json::from_str::<Value>(l) {
            strings(&v, &mut inputs);
        }
    }
    let s: Vec<String> = s
        .split(' ')
        .map(|w| {
            let hit = inputs
                .iter()
                .any(|x| w == x || (x.len() >= 8 && w.contains(x.as_str())));
            if hit {
                "<input>".to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    let s = s.join(" ");
    let mut out = String::new();
    let mut run = String::new();
    for c in s.chars().chain(['\u{0}']) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() >= 8 {
            out.push_str("<hex>");
        } else {
            out.push_str(&run);
        }
        run.clear();
        if c != '\u{0}' {
            out.push(c);
        }
    }
    out.chars().take(160).collect()
}

fn brief(r: &Resp) -> String {
    let t = r.text();
    let t: String = t.chars().take(300).collect();
    format!("{} {t}", r.status)
}

/// Compare a bucket after a batch with before: what changed must come from lines that may
/// apply, with their hashes.
fn batch_changes_ok(before: &Snap, after: &Snap, verdicts: &[Verdict]) -> Result<(), String> {
    let mut bad = Vec::new();
    for (p, f) in &after.files {
        if before.files.get(p) == Some(f) {
            continue;
        }
        let ok = verdicts.iter().any(|v| match v {
            Verdict::May(vp, Some(h)) => {
                vp == p && (h.eq_ignore_ascii_case(&f.hash) || (h == EMPTY_HASH && f.size == 0))
            }
            _ => false,
        });
        if !ok {
            bad.push(format!("{p:?} became {f:?}"));
        }
    }
    for p in before.files.keys() {
        if !after.files.contains_key(p)
            && !verdicts
                .iter()
                .any(|v| matches!(v, Verdict::May(vp, None) if vp == p))
        {
            bad.push(format!("{p:?} vanished"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

struct Fuzz {
    world: World,
    model: Model,
    raw: Raw,
    admin: Raw,
    findings: Findings,
    statuses: BTreeMap<u16, u64>,
    sent: u64,
    extra: u64,
}

impl Fuzz {
    fn send(&mut self, r: &Rendered) -> Option<Resp> {
        match self.raw.send(&r.wire) {
            Ok(resp) => {
                *self.statuses.entry(resp.status).or_default() += 1;
                if resp.status >= 500 {
                    // Grouped by the error's wording; a batch shown by its one line that
                    // fails alone, where there is one.
                    let key = format!("{} {}", resp.status, mask(&resp.text(), &r.wire.body));
                    let mut shown = Rendered {
                        wire: r.wire.clone(),
                        route: r.route,
                        who: r.who,
                        bucket: None,
                        touches: Vec::new(),
                        verdicts: Vec::new(),
                        cas_hash: None,
                        malformed_path: false,
                    };
                    let mut answer = brief(&resp);
                    if r.route == Batch {
                        let text = String::from_utf8_lossy(&r.wire.body).into_owned();
                        // Tried in a scratch bucket of the same namespace: a line that
                        // applies alone must not touch the buckets the checks follow.
                        let t = String::from_utf8_lossy(&r.wire.target).into_owned();
                        let scratch = t
                            .strip_prefix("/api/buckets/")
                            .and_then(|x| x.split_once('/'))
                            .map(|(ns, _)| format!("/api/buckets/{ns}/scratch/batch"));
                        for l in text.lines().filter(|_| scratch.is_some()) {
                            let mut w = r.wire.clone();
                            w.target = scratch.clone().unwrap_or_default().into_bytes();
                            w.body = format!("{l}\n").into_bytes();
                            if let Ok(x) = self.raw.send(&w) {
                                if x.status >= 500 {
                                    shown.wire = w;
                                    answer = brief(&x);
                                    break;
                                }
                            }
                        }
                    }
                    self.findings.add("5xx", &shown, &key, answer);
                }
                Some(resp)
            }
            Err(e) => {
                self.findings.add("no answer (panic?)", r, "none", e);
                None
            }
        }
    }

    fn snap(&mut self, b: usize) -> Option<Snap> {
        snapshot(&mut self.admin, REAL[b])
            .unwrap_or_else(|e| panic!("snapshot of {}: {e}", REAL[b]))
    }

    /// The sandbox exists again (after a legitimate delete or move), with a seed file.
    fn restore(&mut self, b: usize) {
        if self.model.snaps[b].is_some() {
            return;
        }
        let owner = if b == SANDBOX_OF_ALICE {
            "alice-w"
        } else {
            "bob-w"
        };
        let mut w = Wire::get(
            &format!("/api/buckets/{}", REAL[b]),
            &format!("Bearer {owner}"),
        );
        w.method = "POST".into();
        w.body = br#"{"private": true}"#.to_vec();
        let r = self.admin.send(&w).expect("recreate sandbox");
        assert!(r.status == 200, "recreate {}: {}", REAL[b], brief(&r));
        // A seed file, so the bucket has a revision (a change-feed request with since=0
        // answers at once).
        w.target = format!("/api/buckets/{}/batch", REAL[b]).into_bytes();
        w.body = format!(
            "{}\n",
            json!({"type": "addFile", "path": "seed.txt", "xetHash": EMPTY_HASH})
        )
        .into_bytes();
        let r = self.admin.send(&w).expect("seed sandbox");
        assert!(r.status == 200, "seed {}: {}", REAL[b], brief(&r));
        let s = self.snap(b);
        self.model.observe(b, &s);
    }

    fn one(&mut self, g: &Gen) {
        let r = self.world.render(g, &mut self.model);
        let before: Vec<Option<Snap>> = r
            .touches
            .iter()
            .map(|&b| self.model.snaps[b].clone())
            .collect();
        self.sent += 1;
        let Some(resp) = self.send(&r) else { return };
        let st = resp.status;
        let refused = (400..500).contains(&st);

        // A bucket the caller may read never answers RepoNotFound; a private one it may not
        // read answers as a missing bucket does.
        if let Some(bi) = r.bucket.filter(|&b| b < REAL.len()) {
            let exists = self.model.snaps[bi].is_some();
            let private = self.model.snaps[bi].as_ref().is_some_and(|s| s.private);
            let reads = scope_of(r.who, REAL[bi]).is_some() || !private;
            let code = resp.header("x-error-code").map(str::to_string);
            if exists && reads && st == 404 && code.as_deref() == Some("RepoNotFound") {
                self.findings.add(
                    "RepoNotFound for a bucket the caller may read",
                    &r,
                    "404",
                    brief(&resp),
                );
            }
            if exists && !reads && r.who != Who::Unknown {
                let ghost = if REAL[bi].starts_with("alice/") {
                    GHOSTS[0]
                } else {
                    GHOSTS[1]
                };
                let mut twin = r.wire.clone();
                let t = String::from_utf8_lossy(&twin.target).replacen(REAL[bi], ghost, 1);
                twin.target = t.into_bytes();
                self.extra += 1;
                if let Ok(tr) = self.raw.send(&twin) {
                    let tcode = tr.header("x-error-code").map(str::to_string);
                    if (tr.status, &tcode) != (st, &code) {
                        self.findings.add(
                            "a private bucket answers unlike a missing one",
                            &r,
                            &st.to_string(),
                            format!(
                                "{} (code {code:?}) where the missing {ghost} answers {} (code {tcode:?})",
                                brief(&resp),
                                tr.status
                            ),
                        );
                    }
                }
            }
        }
        if r.route == ListNs && st == 200 {
            for v in resp
                .json()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
            {
                let id = v["id"].as_str().unwrap_or_default();
                if let Some(bi) = REAL.iter().position(|x| *x == id) {
                    let private = self.model.snaps[bi].as_ref().is_some_and(|s| s.private);
                    if private && scope_of(r.who, id).is_none() {
                        self.findings.add(
                            "a list shows a hidden private bucket",
                            &r,
                            "200",
                            id.into(),
                        );
                    }
                }
            }
        }
        if r.malformed_path && (200..300).contains(&st) {
            self.findings.add(
                "a malformed tree prefix or path is answered 2xx",
                &r,
                &st.to_string(),
                brief(&resp),
            );
        }
        // A CAS token answers only for hashes of the bucket it names.
        if let (Some(h), Who::Cas(Some((bi, _)))) = (&r.cas_hash, r.who) {
            if (200..300).contains(&st)
                && h.len() == 64
                && !self.model.ever[bi].contains(&h.to_lowercase())
                && self.world.files.iter().any(|(f, _)| f == h)
            {
                let owner = self.world.files.iter().find(|(f, _)| f == h).unwrap().1;
                let detail = format!("token for {}, hash of {}", REAL[bi], REAL[owner]);
                self.findings.add(
                    "a CAS token reads a hash outside its bucket",
                    &r,
                    &st.to_string(),
                    detail,
                );
            }
        }
        // What the request changed.
        let mut gone = Vec::new();
        for (k, &b) in r.touches.iter().enumerate() {
            self.extra += 2;
            let after = self.snap(b);
            let was = &before[k];
            if refused && after != *was {
                self.findings.add(
                    "a refused request changed a bucket",
                    &r,
                    &st.to_string(),
                    format!(
                        "{}: {} ; before {:?}\n         after {:?}",
                        REAL[b],
                        brief(&resp),
                        short_snap(was),
                        short_snap(&after)
                    ),
                );
            }
            let sandbox = b == SANDBOX_OF_ALICE || b == SANDBOX_OF_BOB;
            if !sandbox && after != *was {
                self.findings.add(
                    "a bucket no request may change changed",
                    &r,
                    &st.to_string(),
                    format!("{}: {}", REAL[b], brief(&resp)),
                );
            }
            if r.route == Batch {
                if let (Some(x), Some(y)) = (was, &after) {
                    if let Err(e) = batch_changes_ok(x, y, &r.verdicts) {
                        self.findings.add(
                            "a batch applied a line it must refuse (or rewrote a path)",
                            &r,
                            &st.to_string(),
                            format!("{e}; answer {}", brief(&resp)),
                        );
                    }
                }
                let never = r.verdicts.iter().filter(|v| **v == Verdict::Never).count();
                if let Some(failed) = resp
                    .json()
                    .and_then(|v| v["failed"].as_array().map(Vec::len))
                {
                    if failed < never {
                        self.findings.add(
                            "a batch did not report every malformed line in failed",
                            &r,
                            &st.to_string(),
                            format!(
                                "{never} malformed lines, {failed} reported: {}",
                                brief(&resp)
                            ),
                        );
                    }
                }
            }
            if let Some(s) = &after {
                let new_path =
                    |p: &&String| !was.as_ref().is_some_and(|w| w.files.contains_key(*p));
                if let Some(p) = s
                    .files
                    .keys()
                    .filter(new_path)
                    .find(|p| check_path(p).is_err())
                {
                    self.findings.add(
                        "a bucket holds a path no bucket can hold",
                        &r,
                        &st.to_string(),
                        format!("{}: {p:?}", REAL[b]),
                    );
                }
            }
            self.model.observe(b, &after);
            if after.is_none() {
                assert!(
                    sandbox,
                    "{} vanished after {}: {}",
                    REAL[b],
                    r.wire.show(),
                    brief(&resp)
                );
                gone.push(b);
            }
        }
        for b in gone {
            self.restore(b);
        }
    }
}

fn short_snap(s: &Option<Snap>) -> String {
    match s {
        None => "missing".into(),
        Some(s) => format!(
            "private={} revision={} files={:?}",
            s.private,
            s.revision,
            s.files.keys().take(12).collect::<Vec<_>>()
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Setup.

fn setup(server: &Serve, d: &std::path::Path) -> (World, Model) {
    let url = server.url.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ctx = xet_runtime::core::XetContext::from_external(
        rt.handle().clone(),
        xetmount::remote::local::xet_config(),
    );
    let contents: [(usize, &[(&str, usize)]); 5] = [
        (
            0,
            &[
                ("a.txt", 1000),
                ("dir/b.bin", 200_000),
                ("dir/sub/c.bin", 70_000),
                ("empty.txt", 0),
            ],
        ),
        (1, &[("p.txt", 3000), ("deep/x/y.bin", 150_000)]),
        (2, &[("s.txt", 2000), ("s/big.bin", 300_000)]),
        (3, &[("seed.txt", 500)]),
        (4, &[("b.txt", 700)]),
    ];
    let http = reqwest::Client::new();
    let mut files = Vec::new();
    let mut paths = Vec::new();
    let mut seed = 1u64;
    rt.block_on(async {
        for (b, list) in contents {
            let id = REAL[b];
            let owner = if id.starts_with("alice/") { "alice-w" } else { "bob-w" };
            let r = http
                .post(format!("{url}/api/buckets/{id}"))
                .bearer_auth(owner)
                .json(&json!({"private": PRIVATE[b]}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "create {id}: {}", r.text().await.unwrap());
            let hub = Arc::new(
                xetmount::remote::http::hub::Hub::new(&url, Some(owner.into()), id).unwrap(),
            );
            let cas = xetmount::remote::http::cas::HttpCas::open(
                ctx.clone(),
                hub.clone(),
                true,
                &d.join(format!("cache-{b}")),
                0,
            )
            .await
            .unwrap();
            let bodies: Vec<Vec<u8>> = list
                .iter()
                .map(|(_, n)| {
                    seed += 1;
                    common::random_bytes(*n, seed)
                })
                .collect();
            let nonempty: Vec<Vec<u8>> = bodies.iter().filter(|b| !b.is_empty()).cloned().collect();
            let mut ids = common::xet_upload(&cas, &d.join("staging"), &nonempty)
                .await
                .into_iter();
            let mut lines = String::new();
            for ((p, n), _) in list.iter().zip(&bodies) {
                let hash = if *n == 0 {
                    EMPTY_HASH.to_string()
                } else {
                    let h = ids.next().unwrap().hash;
                    files.push((h.clone(), b));
                    h
                };
                paths.push(p.to_string());
                lines.push_str(&format!(
                    "{}\n",
                    json!({"type": "addFile", "path": p, "xetHash": hash, "mtime": 1_700_000_000_000i64})
                ));
            }
            let r = http
                .post(format!("{url}/api/buckets/{id}/batch"))
                .bearer_auth(owner)
                .body(lines)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "batch {id}: {}", r.text().await.unwrap());
        }
    });

    // CAS tokens from the token routes, and what the server's own key makes: expired ones,
    // one for a bucket that does not exist; forged ones.
    let mut tokens = vec![
        Token {
            header: Vec::new(),
            who: Who::Anonymous,
        },
        Token {
            header: b"Bearer unknown-token".to_vec(),
            who: Who::Unknown,
        },
        Token {
            header: b"bearer alice-w".to_vec(),
            who: Who::Anonymous,
        },
        Token {
            header: b"Basic YWxpY2U6eA==".to_vec(),
            who: Who::Anonymous,
        },
        Token {
            header: b"Bearer \xff\xfe".to_vec(),
            who: Who::Anonymous,
        },
        Token {
            header: format!("Bearer {}", "t".repeat(5000)).into_bytes(),
            who: Who::Unknown,
        },
        Token {
            header: b"Bearer alice-w extra".to_vec(),
            who: Who::Unknown,
        },
    ];
    for (i, (t, ..)) in HUB.iter().enumerate() {
        tokens.push(Token {
            header: format!("Bearer {t}").into_bytes(),
            who: Who::Hub(i),
        });
    }
    let mut admin = Raw::new(&url);
    let mut valid = Vec::new();
    for (b, id) in REAL.iter().enumerate() {
        let owner = if id.starts_with("alice/") {
            "alice-w"
        } else {
            "bob-w"
        };
        for (route, scope) in [
            ("xet-read-token", Scope::Read),
            ("xet-write-token", Scope::Write),
        ] {
            let r = admin
                .send(&Wire::get(
                    &format!("/api/buckets/{id}/{route}"),
                    &format!("Bearer {owner}"),
                ))
                .unwrap();
            let tok = r
                .json()
                .and_then(|v| v["accessToken"].as_str().map(str::to_string));
            let tok = tok.unwrap_or_else(|| panic!("{route} of {id}: {}", brief(&r)));
            valid.push((tok.clone(), b, scope));
            tokens.push(Token {
                header: format!("Bearer {tok}").into_bytes(),
                who: Who::Cas(Some((b, scope))),
            });
        }
    }
    let own_key = Auth::new(
        None,
        "x".into(),
        xetmount::server::auth::load_or_create_secret(&d.join("srv/secret")).unwrap(),
        3600,
    )
    .unwrap();
    let expired = Auth::new(
        None,
        "x".into(),
        xetmount::server::auth::load_or_create_secret(&d.join("srv/secret")).unwrap(),
        0,
    )
    .unwrap();
    for (id, a) in [
        ("alice/pub", &expired),
        ("bob/secret", &expired),
        ("alice/ghost", &own_key),
        ("", &own_key),
    ] {
        let (t, _) = a.mint_cas_token(id, Scope::Write);
        tokens.push(Token {
            header: format!("Bearer {t}").into_bytes(),
            who: Who::Cas(None),
        });
    }
    for (t, ..) in valid.iter().take(4) {
        let mut forged = t.clone();
        let at = forged.len() - 3;
        let c = if &forged[at..at + 1] == "A" { "B" } else { "A" };
        forged.replace_range(at..at + 1, c);
        tokens.push(Token {
            header: format!("Bearer {forged}").into_bytes(),
            who: Who::Cas(None),
        });
        tokens.push(Token {
            header: format!("Bearer {}", &t[..t.len() / 2]).into_bytes(),
            who: Who::Cas(None),
        });
    }
    tokens.push(Token {
        header: b"Bearer xmc1.".to_vec(),
        who: Who::Cas(None),
    });
    tokens.push(Token {
        header: b"Bearer xmc1.e30.AAAA".to_vec(),
        who: Who::Cas(None),
    });

    // Xorbs, fetch URLs and chunk hashes of the stored files.
    let mut xorbs = BTreeSet::new();
    let mut fetch_ok = HashMap::new();
    let mut fetch_expired = HashMap::new();
    let mut chunks = BTreeSet::new();
    for (h, b) in &files {
        let tok = &valid
            .iter()
            .find(|(_, vb, s)| vb == b && *s == Scope::Read)
            .unwrap()
            .0;
        let r = admin
            .send(&Wire::get(
                &format!("/v2/reconstructions/{h}"),
                &format!("Bearer {tok}"),
            ))
            .unwrap();
        let v = r
            .json()
            .unwrap_or_else(|| panic!("reconstruction: {}", brief(&r)));
        for (x, list) in v["xorbs"].as_object().unwrap() {
            xorbs.insert(x.clone());
            let u = list[0]["url"].as_str().unwrap();
            fetch_ok.insert(x.clone(), u.split_once('?').unwrap().1.to_string());
            fetch_expired.insert(x.clone(), own_key.sign_fetch(x, auth_now() - 5));
        }
        let r = admin
            .send(&Wire::get(
                &format!("/v1/xetmount/chunks/{h}"),
                &format!("Bearer {tok}"),
            ))
            .unwrap();
        let v = r.json().unwrap_or_else(|| panic!("chunks: {}", brief(&r)));
        for s in v["segments"].as_array().unwrap() {
            for c in s["chunks"].as_array().unwrap().iter().take(3) {
                chunks.insert(c[0].as_str().unwrap().to_string());
            }
        }
    }
    for (id, owner) in [("alice/scratch", "alice-w"), ("bob/scratch", "bob-w")] {
        let mut w = Wire::get(&format!("/api/buckets/{id}"), &format!("Bearer {owner}"));
        w.method = "POST".into();
        w.body = br#"{"private": true}"#.to_vec();
        let r = admin.send(&w).unwrap();
        assert!(r.status == 200, "create {id}: {}", brief(&r));
    }
    let mut ids: Vec<String> = REAL.iter().map(|s| s.to_string()).collect();
    ids.extend(GHOSTS.iter().map(|s| s.to_string()));
    ids.extend(awkward_ids());
    let world = World {
        url,
        tokens,
        files,
        xorbs: xorbs.into_iter().collect(),
        chunks: chunks.into_iter().collect(),
        fetch_ok,
        fetch_expired,
        paths,
        ids,
    };
    let mut model = Model {
        snaps: vec![None; REAL.len()],
        ever: vec![BTreeSet::new(); REAL.len()],
        readable: vec![BTreeSet::new(); HUB.len()],
        made: 0,
    };
    for (b, id) in REAL.iter().enumerate() {
        let s = snapshot(&mut admin, id).unwrap();
        assert!(s.is_some(), "{id} was not created");
        model.observe(b, &s);
    }
    drop(rt);
    (world, model)
}

fn auth_now() -> u64 {
    xetmount::server::auth::now_secs()
}

#[test]
fn fuzzed_requests_get_no_5xx_no_panic_and_refused_ones_change_nothing() {
    let started = Instant::now();
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let tf = d.join("tokens");
    std::fs::write(
        &tf,
        "alice-w alice write\nro-token carol read alice/*\nbob-w bob write\nadmin-token root write *\n",
    )
    .unwrap();
    let mut server = Serve::start(
        &d.join("srv"),
        &d.join("serve.log"),
        &["--token-file", tf.to_str().unwrap()],
    );
    let (world, model) = setup(&server, d);
    eprintln!(
        "setup: {} files, {} xorbs, {} chunk hashes, {} tokens ({:.1}s)",
        world.files.len(),
        world.xorbs.len(),
        world.chunks.len(),
        world.tokens.len(),
        started.elapsed().as_secs_f64()
    );
    let url = world.url.clone();
    let fz = Fuzz {
        world,
        model,
        raw: Raw::new(&url),
        admin: Raw::new(&url),
        findings: Findings::default(),
        statuses: BTreeMap::new(),
        sent: 0,
        extra: 0,
    };
    // A seed from XETMOUNT_FUZZ_SEED replays a run; otherwise a new one, printed.
    let seed: u64 = std::env::var("XETMOUNT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("XETMOUNT_FUZZ_SEED={seed}");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let fz = std::cell::RefCell::new(fz);
    let server_cell = std::cell::RefCell::new(&mut server);
    let log = d.join("serve.log");
    let result = runner.run(&prop::collection::vec(gen(), PER_CASE), |gens| {
        let mut fz = fz.borrow_mut();
        let before: Vec<Option<Snap>> = fz.model.snaps.clone();
        for g in &gens {
            fz.one(g);
        }
        // The buckets nothing may change are as they were; the process is up, its log
        // holds no panic.
        for b in 0..REAL.len() {
            if b == SANDBOX_OF_ALICE || b == SANDBOX_OF_BOB {
                continue;
            }
            let now = fz.snap(b);
            prop_assert_eq!(&now, &before[b], "{} changed during the case", REAL[b]);
        }
        prop_assert!(server_cell.borrow_mut().alive(), "the server process died");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        prop_assert!(!text.contains("panicked"), "the server panicked:\n{}", text);
        Ok(())
    });
    let fz = fz.into_inner();
    let total: u64 = fz.statuses.values().sum();
    eprintln!(
        "fuzz: {} generated requests ({} more: twins and snapshots), {:.1}s",
        fz.sent,
        fz.extra,
        started.elapsed().as_secs_f64()
    );
    eprintln!("status histogram of the generated requests ({total} answered):");
    for (s, n) in &fz.statuses {
        eprintln!("  {s}: {n}");
    }
    let report = fz.findings.report();
    if !report.is_empty() {
        eprintln!("violations:\n{report}");
    }
    if let Err(e) = result {
        panic!("{e}\n{report}");
    }
    assert!(fz.sent >= 20_000, "only {} requests", fz.sent);
    assert!(
        report.is_empty(),
        "violations of the issue's properties:\n{report}"
    );
}
