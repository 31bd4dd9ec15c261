//! `xetmount-delay-proxy` for whole-system tests across a slow network.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::announced_url;

/// A running `xetmount-delay-proxy`, stopped with SIGTERM on drop.
pub struct Proxy {
    child: Child,
    pub url: String,
}

impl Proxy {
    pub fn start(upstream_port: u16, delay_ms: u64, log: &Path) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xetmount-delay-proxy"))
            .args(["--upstream", &format!("127.0.0.1:{upstream_port}")])
            .args(["--delay-ms", &delay_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn xetmount-delay-proxy");
        let url = announced_url(&mut child, log);
        Proxy { child, url }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SAFETY: kill on a pid we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now, for a server that must know its proxy's address
/// before it starts (`--public-url`) while the proxy must know the server's port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `xetmount serve` (with `extra` arguments) behind a proxy delaying `delay_ms` each way, its
/// `--public-url` naming the proxy so that CAS fetches cross it too, and a bucket
/// `local/data` made through the proxy with the official client. Logs go into `dir`.
pub fn serve_behind_proxy(
    dir: &Path,
    delay_ms: u64,
    extra: &[&str],
) -> (Proxy, crate::common::Serve) {
    let port = free_port();
    let proxy = Proxy::start(port, delay_ms, &dir.join("proxy.log"));
    let mut args = vec!["--public-url", proxy.url.as_str()];
    args.extend_from_slice(extra);
    let server =
        crate::common::Serve::start_on(&dir.join("srv"), &dir.join("serve.log"), port, &args);
    crate::common::hf_cli(&proxy.url, dir, &["buckets", "create", "local/data"]);
    (proxy, server)
}
