//! A TCP proxy that delays every byte by a fixed time in each direction, optionally capping
//! the bandwidth, to measure the mount and the official clients as if the server were across
//! the internet (bench/wan.sh, tests/wan.rs).
//!
//! Each direction is a pipe: a reader stamps every chunk it reads with `read time + delay`, a
//! writer releases the chunks in order when their time comes. Reading never waits for writing,
//! so the delay adds latency without limiting throughput (a sleep per read would serialise the
//! stream to one chunk per delay).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Parser)]
#[command(
    name = "xetmount-delay-proxy",
    about = "Forward TCP connections to an upstream address, delaying every byte by a fixed time in each direction"
)]
struct Args {
    /// Address to listen on (port 0: any free port; the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Address to forward each connection to (HOST:PORT).
    #[arg(long)]
    upstream: String,
    /// One-way delay in milliseconds, applied to every byte in each direction.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Bandwidth cap in bytes per second for each direction of each connection (0: none).
    #[arg(long, default_value_t = 0)]
    bandwidth: u64,
}

/// How one direction of a connection is shaped.
#[derive(Clone, Copy, Debug)]
struct Shape {
    delay: Duration,
    /// Bytes per second; 0 means unlimited.
    bandwidth: u64,
}

impl Shape {
    /// Largest chunk read at once: with a cap, small enough that one chunk is ~1 ms of the
    /// link, so the pacing stays smooth instead of bursting 64 KiB at a time.
    fn chunk_len(&self) -> usize {
        const MAX: usize = 64 * 1024;
        if self.bandwidth == 0 {
            MAX
        } else {
            ((self.bandwidth / 1000) as usize).clamp(1024, MAX)
        }
    }

    /// How long `len` bytes occupy the link.
    fn transmit_time(&self, len: usize) -> Duration {
        if self.bandwidth == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(len as f64 / self.bandwidth as f64)
        }
    }
}

/// What travels from a direction's reader to its writer.
enum Item {
    Data(Instant, Bytes),
    /// The source ended (EOF or error): shut the destination's write side at this time.
    End(Instant),
}

/// Chunks in flight per direction: bounds memory when the destination stops reading (as a
/// TCP window would), yet holds 25 ms of several GB/s at 64 KiB chunks.
const IN_FLIGHT: usize = 2048;

/// Copy `src` to `dst`, each chunk released `shape.delay` after it was read, in order, paced
/// to `shape.bandwidth`; `dst` is shut down after the source ends. Returns the bytes copied.
async fn pipe<R, W>(mut src: R, mut dst: W, shape: Shape) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<Item>(IN_FLIGHT);
    let reader = async move {
        let mut buf = vec![0u8; shape.chunk_len()];
        loop {
            let n = match src.read(&mut buf).await {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let due = Instant::now() + shape.delay;
            let item = if n == 0 {
                Item::End(due)
            } else {
                Item::Data(due, Bytes::copy_from_slice(&buf[..n]))
            };
            // The writer is gone (its destination failed): nothing more to carry.
            if tx.send(item).await.is_err() || n == 0 {
                return;
            }
        }
    };
    let writer = async move {
        let mut copied = 0u64;
        // When the link is free again after the previous chunk (bandwidth cap).
        let mut link_free = Instant::now();
        while let Some(item) = rx.recv().await {
            match item {
                Item::Data(due, data) => {
                    let start = due.max(link_free);
                    link_free = start + shape.transmit_time(data.len());
                    tokio::time::sleep_until(start).await;
                    dst.write_all(&data).await?;
                    copied += data.len() as u64;
                }
                Item::End(due) => {
                    tokio::time::sleep_until(due.max(link_free)).await;
                    // The peer may have closed already; the copy itself is complete.
                    let _ = dst.shutdown().await;
                    return Ok(copied);
                }
            }
        }
        Ok(copied)
    };
    let ((), copied) = tokio::join!(reader, writer);
    copied
}

/// Carry one client connection to `upstream` and back.
async fn relay(client: TcpStream, upstream: SocketAddr, shape: Shape) {
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot connect to upstream {upstream}: {e}");
            return;
        }
    };
    // The delay is the only latency wanted: no Nagle coalescing on either leg.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let (up, down) = tokio::join!(pipe(cr, sw, shape), pipe(sr, cw, shape));
    if let Err(e) = up.and(down) {
        tracing::debug!("connection ended: {e}");
    }
}

async fn run(args: Args) -> Result<(), String> {
    let upstream = tokio::net::lookup_host(&args.upstream)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            format!(
                "cannot resolve upstream {:?}; pass --upstream HOST:PORT",
                args.upstream
            )
        })?;
    let listener = TcpListener::bind(&args.listen).await.map_err(|e| {
        format!(
            "cannot listen on {}: {e}; choose another address with --listen",
            args.listen
        )
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let shape = Shape {
        delay: Duration::from_millis(args.delay_ms),
        bandwidth: args.bandwidth,
    };
    // Printed as a URL so that scripts and tests read it like `xetmount serve`'s announcement.
    println!("xetmount-delay-proxy: listening on http://{addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let stop = xetmount::signals::wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    tokio::spawn(relay(client, upstream, shape));
                }
                // Out of descriptors and the like: keep serving the connections we have.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xetmount-delay-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xetmount-delay-proxy: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Sends `body` into a pipe with `shape` in chunks of `chunk` bytes, all at once, and
    /// returns what came out plus the (virtual) time of the first byte and of the end.
    async fn through(body: &[u8], chunk: usize, shape: Shape) -> (Vec<u8>, Duration, Duration) {
        let (mut client, proxy_in) = tokio::io::duplex(1 << 20);
        let (proxy_out, mut server) = tokio::io::duplex(1 << 20);
        let t0 = Instant::now();
        let piped = tokio::spawn(pipe(proxy_in, proxy_out, shape));
        let send = {
            let body = body.to_vec();
            tokio::spawn(async move {
                for c in body.chunks(chunk) {
                    client.write_all(c).await.unwrap();
                }
                client.shutdown().await.unwrap();
                // Keep our end open until the pipe has read everything.
                client
            })
        };
        let mut got = Vec::new();
        let mut first = None;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            first.get_or_insert_with(|| t0.elapsed());
            got.extend_from_slice(&buf[..n]);
        }
        let end = t0.elapsed();
        drop(send.await.unwrap());
        assert_eq!(piped.await.unwrap().unwrap(), body.len() as u64);
        (got, first.unwrap_or(end), end)
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_arrive_exact_and_in_order_after_the_delay() {
        let body = data(3 << 20);
        let shape = Shape {
            delay: Duration::from_millis(25),
            bandwidth: 0,
        };
        let (got, first, _) = through(&body, 1000, shape).await;
        assert_eq!(got.len(), body.len());
        assert!(got == body, "bytes changed or reordered in the pipe");
        assert!(first >= shape.delay, "first byte after {first:?}");
    }

    /// Many chunks read at once all come out one delay later, not one delay per chunk: the
    /// clock is virtual, so this is exact, not a timing guess.
    #[tokio::test(start_paused = true)]
    async fn the_delay_is_latency_not_a_throughput_limit() {
        let body = data(1 << 20);
        let shape = Shape {
            delay: Duration::from_millis(50),
            bandwidth: 0,
        };
        let (got, _, end) = through(&body, 4096, shape).await;
        assert!(got == body);
        assert!(
            end < shape.delay * 2,
            "256 chunks took {end:?} at a {:?} delay",
            shape.delay
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_bandwidth_cap_paces_the_stream() {
        let body = data(1 << 20);
        let shape = Shape {
            delay: Duration::from_millis(10),
            bandwidth: 4 << 20,
        };
        let (got, _, end) = through(&body, 64 * 1024, shape).await;
        assert!(got == body);
        // 1 MiB at 4 MiB/s: a quarter second on the link, plus the delay.
        assert!(end >= Duration::from_millis(250), "took {end:?}");
        assert!(end < Duration::from_millis(400), "took {end:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_stream_ends_after_the_delay() {
        let shape = Shape {
            delay: Duration::from_millis(30),
            bandwidth: 0,
        };
        let (got, _, end) = through(&[], 1, shape).await;
        assert!(got.is_empty());
        assert!(end >= shape.delay, "EOF after {end:?}");
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(Args::try_parse_from(["p", "--upstream", "x:1", "--delay-ms", "-3"]).is_err());
        assert!(Args::try_parse_from(["p", "--upstream", "x:1", "--bandwidth", "fast"]).is_err());
        assert!(Args::try_parse_from(["p"]).is_err());
        let a =
            Args::try_parse_from(["p", "--upstream", "127.0.0.1:9", "--delay-ms", "25"]).unwrap();
        assert_eq!(
            (a.delay_ms, a.bandwidth, a.listen.as_str()),
            (25, 0, "127.0.0.1:0")
        );
    }

    #[test]
    fn a_capped_link_reads_small_chunks() {
        let s = |bandwidth| Shape {
            delay: Duration::ZERO,
            bandwidth,
        };
        assert_eq!(s(0).chunk_len(), 64 * 1024);
        assert_eq!(s(1000).chunk_len(), 1024);
        assert_eq!(s(10_000_000).chunk_len(), 10_000);
        assert_eq!(
            s(2_000_000).transmit_time(1_000_000),
            Duration::from_millis(500)
        );
    }
}
