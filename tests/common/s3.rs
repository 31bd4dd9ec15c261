//! A real S3-compatible server for tests: `s3s-fs` (crates.io, installed into .tools by
//! scripts/install-tools.sh) on 127.0.0.1, storing in a temporary directory, with fixed keys.
//! A bucket is a directory under its root.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "xetmount-test";
pub const SECRET_KEY: &str = "xetmount-test-secret";

pub struct S3 {
    child: Option<Child>,
    #[allow(dead_code)] // read by some of the test crates that include this file
    pub dir: tempfile::TempDir,
    pub endpoint: String,
}

fn binary() -> PathBuf {
    let b = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/s3s-fs");
    assert!(
        b.exists(),
        "{} is missing: run scripts/install-tools.sh (it installs s3s-fs 0.14.1)",
        b.display()
    );
    b
}

impl S3 {
    /// Start the server with the buckets `buckets`.
    pub fn start(buckets: &[&str]) -> S3 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for b in buckets {
            std::fs::create_dir_all(root.join(b)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("s3s.log")).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "s3s-fs did not start: {}",
                std::fs::read_to_string(dir.path().join("s3s.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        S3 {
            child: Some(child),
            dir,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The environment `object_store` (and `serve --objects s3://...`) reads.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
