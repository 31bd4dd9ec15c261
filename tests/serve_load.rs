//! A bounded load run against a `xetmount serve` child process on 127.0.0.1 (issue 20):
//! 32 concurrent clients for `XETMOUNT_LOAD_SECS` seconds (default 60) mixing real Xet
//! uploads (xorbs and shards through the CAS routes, then a batch `addFile`), paged tree
//! listings, reads (resolve with `Range`, and reconstruction + fetch through the CAS client),
//! and batches (copies by hash, deletes). Each client works in its own folder and keeps a
//! model of what the server told it is committed.
//!
//! Asserted: no request failed; every listing of a client's folder equals its model, and a
//! paged listing of the whole bucket names each of the client's files exactly once (they
//! existed for the whole listing); at the end every committed file reads back with the
//! bytes uploaded (hash, size, content) and no deleted one remains; the server's memory is
//! flat: RSS after the run at most 64 MiB above RSS after the warm-up. Printed: requests/s,
//! p50/p99 latency per kind, RSS before/after/peak.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Serve;
use serde_json::{json, Value};
use xetmount::remote::http::cas::HttpCas;
use xetmount::remote::http::hub::Hub;
use xetmount::remote::{Cas, FileId};

const CLIENTS: usize = 32;
/// A client stops after this many operations even if time remains.
const MAX_OPS: usize = 5_000;
/// Uploads per client; then its uploads turn into copies. What the server keeps per stored
/// file (catalog rows, the CAS's shard index) then stops growing however fast the machine
/// is, so the memory bound below measures leaks, not the data set.
const MAX_UPLOADS: u64 = 64;
const BUCKETS: [&str; 2] = ["alice/load-a", "alice/load-b"];
const TOKEN: &str = "alice-w";
/// How much the server's RSS may grow from the end of the warm-up to the end of the run.
/// What it needs for the traffic is there after the warm-up (runtime, connection buffers
/// for 32 clients, xet-core's upload and reconstruction buffers, the allocator's arenas);
/// what still grows is state per stored file (catalog pages, the CAS's shard index: about
/// 10 KiB per upload measured, ~20 MiB for the 2,048 uploads at most). A leak of a request
/// or of a body (uploads up to 2 MiB, tens of thousands of requests) passes the rest.
const RSS_GROWTH_LIMIT: u64 = 64 << 20;

#[derive(Clone, Debug)]
struct Stored {
    id: FileId,
    seed: u64,
}

fn content(s: &Stored) -> Vec<u8> {
    common::random_bytes(s.id.size as usize, s.seed)
}

/// A small deterministic generator per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct Outcome {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    errors: Vec<String>,
    model: BTreeMap<String, Stored>,
    ops: u64,
}

struct Client {
    n: usize,
    url: String,
    bucket: &'static str,
    folder: String,
    http: reqwest::Client,
    cas: HttpCas,
    staging: std::path::PathBuf,
    rng: Rng,
    next_file: u64,
    uploads: u64,
    out: Outcome,
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl Client {
    fn time(&mut self, kind: &'static str, since: Instant) {
        self.out
            .latencies
            .entry(kind)
            .or_default()
            .push(since.elapsed());
    }

    fn fail(&mut self, what: String) {
        self.out.errors.push(format!("client {}: {what}", self.n));
    }

    fn api(&self, suffix: &str) -> String {
        format!("{}/api/buckets/{}{suffix}", self.url, self.bucket)
    }

    /// POST a batch; the answer's JSON if it was 200 with nothing failed.
    async fn batch(&mut self, lines: &[Value]) -> Option<Value> {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let t = Instant::now();
        let r = self
            .http
            .post(self.api("/batch"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        self.time("batch", t);
        match r {
            Ok(r) => {
                let st = r.status();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if st.as_u16() == 200 && v["failed"].as_array().is_some_and(Vec::is_empty) {
                    Some(v)
                } else {
                    self.fail(format!("batch {lines:?}: {st} {v}"));
                    None
                }
            }
            Err(e) => {
                self.fail(format!("batch: {e}"));
                None
            }
        }
    }

    async fn upload(&mut self) {
        if self.uploads >= MAX_UPLOADS {
            return self.copy_and_delete().await;
        }
        self.uploads += 1;
        let size = if self.rng.below(10) == 0 {
            (1 << 20) + self.rng.below(1 << 20)
        } else {
            1 + self.rng.below(256 << 10)
        };
        let seed = ((self.n as u64) << 40) | self.next_file;
        let bytes = common::random_bytes(size as usize, seed);
        let t = Instant::now();
        let id = common::xet_upload(&self.cas, &self.staging, &[bytes])
            .await
            .remove(0);
        self.time("upload (xorbs + shard)", t);
        if id.size != size {
            self.fail(format!("uploaded {size} bytes, stored {}", id.size));
            return;
        }
        let path = format!("{}/f{}", self.folder, self.next_file);
        self.next_file += 1;
        let line = json!({"type": "addFile", "path": path, "xetHash": id.hash, "mtime": now_ms()});
        if self.batch(&[line]).await.is_some() {
            self.out.model.insert(path, Stored { id, seed });
        }
    }

    /// A batch copying one file by hash and deleting up to two others.
    async fn copy_and_delete(&mut self) {
        let names: Vec<String> = self.out.model.keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        let src = names[self.rng.below(names.len() as u64) as usize].clone();
        let stored = self.out.model[&src].clone();
        let path = format!("{}/c{}", self.folder, self.next_file);
        self.next_file += 1;
        let mut lines = vec![
            json!({"type": "addFile", "path": path, "xetHash": stored.id.hash, "mtime": now_ms()}),
        ];
        let mut dels = Vec::new();
        for _ in 0..self.rng.below(3) {
            let d = names[self.rng.below(names.len() as u64) as usize].clone();
            if !dels.contains(&d) && names.len() > 4 {
                lines.push(json!({"type": "deleteFile", "path": d}));
                dels.push(d);
            }
        }
        if self.batch(&lines).await.is_some() {
            self.out.model.insert(path, stored);
            for d in dels {
                self.out.model.remove(&d);
            }
        }
    }

    /// Every page of a listing; `Err` on a failed request.
    async fn pages(&mut self, first: String) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let t = Instant::now();
            let r = self
                .http
                .get(&url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let st = r.status();
            next = r
                .headers()
                .get("link")
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.split_once(';'))
                .map(|(u, _)| {
                    u.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string()
                });
            let v: Value = r.json().await.map_err(|e| format!("{url}: {e}"))?;
            self.time("tree page", t);
            if st.as_u16() != 200 {
                return Err(format!("{url}: {st} {v}"));
            }
            out.extend(v.as_array().cloned().unwrap_or_default());
        }
        Ok(out)
    }

    /// Compare a listing with the model: `whole` lists the whole bucket (other clients'
    /// files come and go; each of ours must be there exactly once).
    fn check_listing(&mut self, items: &[Value], whole: bool) {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for e in items {
            let p = e["path"].as_str().unwrap_or_default().to_string();
            if whole && !p.starts_with(&format!("{}/", self.folder)) {
                continue;
            }
            *seen.entry(p.clone()).or_default() += 1;
            match self.out.model.get(&p) {
                Some(s) if e["xetHash"] == s.id.hash && e["size"] == s.id.size => {}
                Some(s) => self.fail(format!("listing shows {p} as {e}, committed {s:?}")),
                None => self.fail(format!("listing shows {p}, which is not committed")),
            }
        }
        let kind = if whole {
            "paged listing of the bucket"
        } else {
            "listing of the folder"
        };
        for p in self.out.model.keys().cloned().collect::<Vec<_>>() {
            match seen.get(&p) {
                Some(1) => {}
                Some(n) => self.fail(format!("{kind} named {p} {n} times")),
                None => self.fail(format!("{kind} skipped {p}, which existed throughout")),
            }
        }
    }

    async fn list(&mut self) {
        let whole = self.rng.below(2) == 0;
        let first = if whole {
            let limit = 50 + self.rng.below(450);
            self.api(&format!("/tree?recursive=true&limit={limit}"))
        } else {
            let limit = 7 + self.rng.below(100);
            self.api(&format!(
                "/tree/{}?recursive=true&limit={limit}",
                self.folder
            ))
        };
        match self.pages(first).await {
            Ok(items) => self.check_listing(&items, whole),
            Err(e) => self.fail(e),
        }
    }

    async fn read(&mut self) {
        let names: Vec<String> = self.out.model.keys().cloned().collect();
        if names.is_empty() {
            return;
        }
        let p = names[self.rng.below(names.len() as u64) as usize].clone();
        let s = self.out.model[&p].clone();
        let size = s.id.size;
        let a = self.rng.below(size);
        let b = (a + self.rng.below(300_000)).min(size - 1);
        let want = &content(&s)[a as usize..=b as usize];
        if self.rng.below(2) == 0 {
            let t = Instant::now();
            let r = self
                .http
                .get(format!("{}/buckets/{}/resolve/{p}", self.url, self.bucket))
                .bearer_auth(TOKEN)
                .header("range", format!("bytes={a}-{b}"))
                .send()
                .await;
            let got = match r {
                Ok(r) if r.status().as_u16() == 206 => r.bytes().await.map_err(|e| e.to_string()),
                Ok(r) => Err(format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            };
            self.time("resolve with Range", t);
            match got {
                Ok(g) if g[..] == want[..] => {}
                Ok(g) => self.fail(format!(
                    "resolve {p} bytes={a}-{b}: {} bytes, differ",
                    g.len()
                )),
                Err(e) => self.fail(format!("resolve {p} bytes={a}-{b}: {e}")),
            }
        } else {
            let t = Instant::now();
            let got = self.cas.read_range(&s.id, a..b + 1).await;
            self.time("reconstruction + fetch", t);
            match got {
                Ok(g) if g[..] == want[..] => {}
                Ok(g) => self.fail(format!("CAS read {p} {a}..={b}: {} bytes, differ", g.len())),
                Err(e) => self.fail(format!("CAS read {p} {a}..={b}: {e}")),
            }
        }
    }

    async fn run(mut self, deadline: Instant) -> Outcome {
        while Instant::now() < deadline && (self.out.ops as usize) < MAX_OPS {
            self.out.ops += 1;
            match self.rng.below(100) {
                0..=24 => self.upload().await,
                25..=49 => self.list().await,
                50..=79 => self.read().await,
                _ => self.copy_and_delete().await,
            }
        }
        self.out
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

#[test]
fn thirty_two_clients_lose_nothing_and_server_memory_stays_flat() {
    let secs: u64 = std::env::var("XETMOUNT_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let tf = d.join("tokens");
    std::fs::write(&tf, format!("{TOKEN} alice write\n")).unwrap();
    let server = Serve::start(
        &d.join("srv"),
        &d.join("serve.log"),
        &["--token-file", tf.to_str().unwrap()],
    );
    let url = server.url.clone();
    let pid = server.pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let ctx = xet_runtime::core::XetContext::from_external(
        rt.handle().clone(),
        xetmount::remote::local::xet_config(),
    );
    let run_started = Instant::now();
    let (outcomes, rss, requests, elapsed) = rt.block_on(async {
        let http = reqwest::Client::new();
        for b in BUCKETS {
            let r = http
                .post(format!("{url}/api/buckets/{b}"))
                .bearer_auth(TOKEN)
                .json(&json!({"private": true}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "create {b}");
        }
        let mut clients = Vec::new();
        for n in 0..CLIENTS {
            let bucket = BUCKETS[n % BUCKETS.len()];
            let hub = Arc::new(Hub::new(&url, Some(TOKEN.into()), bucket).unwrap());
            let cas = HttpCas::open(ctx.clone(), hub, true, &d.join(format!("cache-{n}")), 0)
                .await
                .unwrap();
            clients.push(Client {
                n,
                url: url.clone(),
                bucket,
                folder: format!("c{n:02}"),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .unwrap(),
                cas,
                staging: d.join(format!("staging-{n}")),
                rng: Rng(0x9E37_79B9_7F4A_7C15 ^ ((n as u64 + 1) * 0x1234_5678_9ABC)),
                next_file: 0,
                uploads: 0,
                out: Outcome::default(),
            });
        }
        let count = |m: &BTreeMap<String, u64>| -> u64 {
            m.iter()
                .filter(|(k, _)| k.as_str() != "fetch_bytes")
                .map(|(_, v)| *v)
                .sum()
        };
        let requests_before = count(&common::serve_metrics(&url));
        // Memory: sampled every 100 ms; "before" once the warm-up (a sixth of the run, at
        // least 2 s) is over.
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let warm = Arc::new(AtomicU64::new(0));
        let warmup = Duration::from_secs((secs / 6).max(2));
        let sampler = {
            let (stop, peak, warm) = (stop.clone(), peak.clone(), warm.clone());
            tokio::spawn(async move {
                let t0 = Instant::now();
                let mut timeline = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = rss_of(pid);
                    peak.fetch_max(r, Ordering::Relaxed);
                    if t0.elapsed() >= warmup && warm.load(Ordering::Relaxed) == 0 {
                        warm.store(r, Ordering::Relaxed);
                    }
                    if t0.elapsed().as_secs() >= 5 * timeline.len() as u64 {
                        timeline.push(r >> 20);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                timeline
            })
        };
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(c.run(deadline)))
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        let elapsed = start.elapsed();
        let after = rss_of(pid);
        stop.store(true, Ordering::Relaxed);
        let timeline = sampler.await.unwrap();
        eprintln!("server RSS every 5 s (MiB): {timeline:?}");
        let requests = count(&common::serve_metrics(&url)) - requests_before;
        (
            outcomes,
            (
                warm.load(Ordering::Relaxed),
                after,
                peak.load(Ordering::Relaxed).max(after),
            ),
            requests,
            elapsed,
        )
    });

    // Every committed file reads back whole with the bytes uploaded; the folder lists
    // exactly the model.
    let mut errors: Vec<String> = outcomes.iter().flat_map(|o| o.errors.clone()).collect();
    let mut verified = 0u64;
    let mut verified_bytes = 0u64;
    rt.block_on(async {
        let http = reqwest::Client::new();
        for (n, o) in outcomes.iter().enumerate() {
            let bucket = BUCKETS[n % BUCKETS.len()];
            let r = http
                .get(format!("{url}/api/buckets/{bucket}/tree/c{n:02}?recursive=true&limit=10000"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let listed: Vec<Value> = r.json().await.unwrap_or_default();
            let names: Vec<&str> = listed.iter().filter_map(|e| e["path"].as_str()).collect();
            let want: Vec<&str> = o.model.keys().map(String::as_str).collect();
            if names != want {
                errors.push(format!(
                    "client {n}: the folder lists {} files, {} committed (extra {:?}, missing {:?})",
                    names.len(),
                    want.len(),
                    names.iter().filter(|p| !o.model.contains_key(**p)).take(5).collect::<Vec<_>>(),
                    want.iter().filter(|p| !names.contains(p)).take(5).collect::<Vec<_>>()
                ));
            }
            for e in &listed {
                let p = e["path"].as_str().unwrap_or_default();
                if let Some(s) = o.model.get(p) {
                    if e["xetHash"] != s.id.hash || e["size"] != s.id.size {
                        errors.push(format!("client {n}: {p} lists as {e}, committed {s:?}"));
                    }
                }
            }
            for (p, s) in &o.model {
                let r = http
                    .get(format!("{url}/buckets/{bucket}/resolve/{p}"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap();
                let st = r.status();
                let hash = r
                    .headers()
                    .get("x-xet-hash")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = r.bytes().await.unwrap();
                if st.as_u16() != 200
                    || hash.as_deref() != Some(s.id.hash.as_str())
                    || body[..] != content(s)[..]
                {
                    errors.push(format!(
                        "client {n}: {p} reads back {st}, hash {hash:?}, {} bytes; committed {s:?}",
                        body.len()
                    ));
                } else {
                    verified += 1;
                    verified_bytes += body.len() as u64;
                }
            }
        }
    });
    let run_time = run_started.elapsed();

    let mut all: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    for o in &outcomes {
        for (k, v) in &o.latencies {
            all.entry(k).or_default().extend(v);
        }
    }
    let ops: u64 = outcomes.iter().map(|o| o.ops).sum();
    let secs_f = elapsed.as_secs_f64();
    eprintln!(
        "load: {CLIENTS} clients, {secs_f:.1}s: {requests} HTTP requests served ({:.0}/s), {ops} client operations ({:.0}/s)",
        requests as f64 / secs_f,
        ops as f64 / secs_f
    );
    for (k, v) in all.iter_mut() {
        v.sort();
        eprintln!(
            "  {k:<24} {:>6} ({:>6.1}/s)  p50 {:>8.2} ms  p99 {:>8.2} ms",
            v.len(),
            v.len() as f64 / secs_f,
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }
    let (before, after, peak) = rss;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "server RSS: after warm-up {:.1} MiB, after the run {:.1} MiB, peak {:.1} MiB",
        mib(before),
        mib(after),
        mib(peak)
    );
    eprintln!(
        "verified: {verified} committed files ({:.1} MiB) read back byte-exact; {} errors; whole test {:.1}s",
        mib(verified_bytes),
        errors.len(),
        run_time.as_secs_f64()
    );
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    assert!(
        errors.is_empty(),
        "{} failures, first ones:\n{}",
        errors.len(),
        errors
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(verified > 0, "no file was committed");
    assert!(before > 0 && after > 0, "no RSS figures for pid {pid}");
    assert!(
        after <= before + RSS_GROWTH_LIMIT,
        "server RSS grew from {:.1} MiB after the warm-up to {:.1} MiB",
        mib(before),
        mib(after)
    );
    server.stop();
}
