//! The NFSv3 server against Debian's libnfs client (`nfs-cp`, `nfs-ls`, `nfs-cat`) on
//! 127.0.0.1, verified byte for byte after the server (and the store) is restarted.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::sh;

struct Server {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(store: &Path, log: &Path) -> Server {
        Self::start_with(store, log, &[])
    }

    fn start_with(store: &Path, log: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(common::bin())
            .args([
                "serve-nfs",
                store.to_str().unwrap(),
                "--flush-debounce-ms",
                "50",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no port in {first:?}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
        Server {
            child: Some(child),
            port,
            log: log.to_path_buf(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "nfs://127.0.0.1/bucket/{path}?version=3&nfsport={0}&mountport={0}",
            self.port
        )
    }

    /// SIGTERM, and wait for every pending write to be committed.
    fn stop(mut self) {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let st = c.wait().unwrap();
        assert!(
            st.success(),
            "{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn nfs(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn libnfs_copy_in_and_out_list_and_cat_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let store = d.join("store");
    sh(
        d,
        "head -c 100000 /dev/urandom > small.bin; head -c 268435456 /dev/urandom > big.bin",
    );
    let s = Server::start(&store, &d.join("nfs1.log"));
    nfs(&[
        "nfs-cp",
        d.join("small.bin").to_str().unwrap(),
        &s.url("small.bin"),
    ]);
    nfs(&[
        "nfs-cp",
        d.join("big.bin").to_str().unwrap(),
        &s.url("big.bin"),
    ]);
    let ls = nfs(&["nfs-ls", &s.url("")]);
    assert!(ls.contains("small.bin") && ls.contains("big.bin"), "{ls}");
    assert!(ls.contains("268435456"), "{ls}");
    let cat = Command::new("nfs-cat")
        .arg(s.url("small.bin"))
        .output()
        .unwrap();
    assert_eq!(cat.stdout, std::fs::read(d.join("small.bin")).unwrap());
    // nfs-cp creates GUARDED: it never overwrites (the read-then-write upgrade of a pooled
    // handle is covered by the handle pool's tests in src/vfs/handle_pool.rs).
    sh(d, "head -c 50000 /dev/urandom > small2.bin");
    let again = Command::new("nfs-cp")
        .args([d.join("small2.bin").to_str().unwrap(), &s.url("small.bin")])
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "a GUARDED create replaced an existing file"
    );
    nfs(&[
        "nfs-cp",
        d.join("small2.bin").to_str().unwrap(),
        &s.url("small2.bin"),
    ]);
    s.stop();

    let s = Server::start(&store, &d.join("nfs2.log"));
    nfs(&[
        "nfs-cp",
        &s.url("big.bin"),
        d.join("big.out").to_str().unwrap(),
    ]);
    nfs(&[
        "nfs-cp",
        &s.url("small.bin"),
        d.join("small.out").to_str().unwrap(),
    ]);
    nfs(&[
        "nfs-cp",
        &s.url("small2.bin"),
        d.join("small2.out").to_str().unwrap(),
    ]);
    assert!(std::fs::read(d.join("big.out")).unwrap() == std::fs::read(d.join("big.bin")).unwrap());
    assert_eq!(
        std::fs::read(d.join("small.out")).unwrap(),
        std::fs::read(d.join("small.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read(d.join("small2.out")).unwrap(),
        std::fs::read(d.join("small2.bin")).unwrap()
    );
    s.stop();
}

#[test]
fn serve_nfs_rejects_a_busy_port_with_one_sentence() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("a"), &tmp.path().join("a.log"));
    let out = Command::new(common::bin())
        .args([
            "serve-nfs",
            tmp.path().join("b").to_str().unwrap(),
            "--port",
        ])
        .arg(s.port.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen") && !err.contains("panicked"),
        "{err}"
    );
    s.stop();
}

/// An NFS server in front of a served bucket follows what another mount changes: new, replaced
/// and removed files, as libnfs clients see them.
#[test]
fn nfs_in_front_of_a_served_bucket_sees_other_writers_changes() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let serve = common::Serve::start(&d.join("srv"), &d.join("serve.log"), &[]);
    let url = serve.url.clone();
    common::hf_cli(&url, d, &["buckets", "create", "local/data"]);
    let a = common::mount_served(&url, d, "a", &[]);
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(20);
    let cache = d.join("cache-nfs");
    let server = Server::start_with(
        Path::new("hf://buckets/local/data"),
        &d.join("nfs.log"),
        &["--endpoint", &url, "--cache-dir", cache.to_str().unwrap()],
    );
    let cat = |name: &str| {
        Command::new("nfs-cat")
            .arg(server.url(name))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| o.stdout)
    };
    sh(
        d,
        "printf 'one\\n' > v1 && dd if=v1 of=a/f conv=fsync status=none",
    );
    common::wait_for("the new file over NFS", LIMIT, || {
        cat("f").as_deref() == Some(b"one\n")
    });
    let listed = |name: &str| {
        nfs(&["nfs-ls", &server.url("")])
            .lines()
            .any(|l| l.split_whitespace().last() == Some(name))
    };
    assert!(listed("f"));
    sh(
        d,
        "printf 'two, longer\\n' > v2 && dd if=v2 of=a/f conv=fsync status=none",
    );
    common::wait_for("the replaced file over NFS", LIMIT, || {
        cat("f").as_deref() == Some(b"two, longer\n")
    });
    sh(d, "rm a/f");
    std::fs::File::open(a.mountpoint.clone())
        .unwrap()
        .sync_all()
        .unwrap();
    common::wait_for("the removed file over NFS", LIMIT, || !listed("f"));
    server.stop();
    a.stop();
    serve.stop();
}
