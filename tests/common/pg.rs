//! A throwaway PostgreSQL cluster from Debian's package, for tests of `serve` on PostgreSQL:
//! `initdb` in a temporary directory and `postgres` as a child of the test, listening only on
//! a unix socket in that directory. PostgreSQL refuses to run as root: as root, both run as
//! `nobody`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pg {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

/// The directory of Debian's PostgreSQL server binaries (`/usr/lib/postgresql/N/bin`).
fn bindir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (scripts/install-tools.sh installs postgresql)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").exists())
        .collect();
    found.sort();
    found.pop().expect("no /usr/lib/postgresql/*/bin/postgres")
}

/// Run as `nobody` when root (PostgreSQL refuses root).
fn unprivileged(cmd: &mut Command) -> &mut Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    cmd
}

impl Pg {
    pub fn start() -> Pg {
        let bin = bindir();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
        }
        let data = run.join("data");
        let out = unprivileged(Command::new(bin.join("initdb")).args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "xetmount",
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        ]))
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = 5432;
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        let child = unprivileged(Command::new(bin.join("postgres")).args([
            "-D",
            data.to_str().unwrap(),
            "-k",
            run.to_str().unwrap(),
            "-c",
            "listen_addresses=",
            "-p",
            &port.to_string(),
            "-F",
        ]))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
        let pg = Pg {
            child: Some(child),
            dir,
            port,
        };
        let start = Instant::now();
        while !pg.run_dir().join(format!(".s.PGSQL.{port}")).exists()
            || !Command::new(bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    pg.run_dir().to_str().unwrap(),
                    "-p",
                    &port.to_string(),
                ])
                .status()
                .unwrap()
                .success()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(pg.dir.path().join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pg
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A connection string for `serve --catalog` and `server::pg::connect`.
    pub fn url(&self) -> String {
        format!(
            "host={} port={} user=xetmount dbname=postgres",
            self.run_dir().display(),
            self.port
        )
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            // SAFETY: kill on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }
}
