//! Shell workloads on a real FUSE mount, verified byte for byte after a remount and against
//! the same workload on a local directory.

mod common;

use common::{sh, tree_digest, Mount};

/// The workload: cp, cat, dd with seek and conv=notrunc, truncate, mv, mkdir -p, rm -r,
/// ln -s, append. Run identically in the mount and in a plain directory.
const WORKLOAD: &str = r#"
cp ../src.bin big.bin
cat big.bin > copy.bin
mkdir -p a/b/c
echo hello > a/b/c/greeting
for i in $(seq 1 20); do echo "line $i" >> a/log.txt; done
dd if=/dev/zero of=big.bin bs=4096 seek=100 count=3 conv=notrunc status=none
printf 'PATCH' | dd of=copy.bin bs=1 seek=2999990 conv=notrunc status=none
dd if=../src.bin of=sparse.bin bs=1000 seek=5000 count=2 status=none
cp copy.bin copy2.bin
truncate -s 12345 copy2.bin
truncate -s 2000000 copy.bin
mv a/b/c a/moved
mv copy2.bin a/moved/renamed.bin
mkdir -p trash/x/y && echo junk > trash/x/y/z && rm -r trash
ln -s a/moved/greeting link
ln -s /nonexistent/target dangling
echo appended >> a/moved/greeting
chmod 600 a/log.txt
cat link > via-link.txt
"#;

#[test]
fn shell_workload_survives_remount() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mp = tmp.path().join("mnt");
    let reference = tmp.path().join("ref");
    std::fs::create_dir_all(&reference).unwrap();

    let m = Mount::start(&store, &mp, &[]);
    // Same random input on both sides: generate once, outside both trees.
    sh(tmp.path(), "head -c 3000000 /dev/urandom > src.bin");
    sh(&reference, WORKLOAD);
    sh(&m.mountpoint, WORKLOAD);
    let want = tree_digest(&reference);
    assert_eq!(tree_digest(&m.mountpoint), want, "live mount differs");
    m.stop();

    let m = Mount::start(&store, &mp, &[]);
    assert_eq!(tree_digest(&m.mountpoint), want, "remounted tree differs");
    // ls -l shows the symlink and the chmod.
    let ls = sh(&m.mountpoint, "ls -l a/log.txt link | cut -c1-10");
    assert!(ls.contains("-rw-------"), "{ls}");
    assert!(ls.contains("lrwxrwxrwx"), "{ls}");
    m.stop();
}

#[test]
fn cli_rejects_bad_input_with_one_sentence() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let store = tmp.path().join("store");
    let missing = tmp.path().join("missing");
    let err = run(&["mount", store.to_str().unwrap(), missing.to_str().unwrap()]);
    assert!(err.contains("does not exist"), "{err}");

    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = run(&["mount", store.to_str().unwrap(), file.to_str().unwrap()]);
    assert!(err.contains("not a directory"), "{err}");

    let full = tmp.path().join("full");
    std::fs::create_dir_all(full.join("x")).unwrap();
    let err = run(&["mount", store.to_str().unwrap(), full.to_str().unwrap()]);
    assert!(err.contains("not empty"), "{err}");

    let mp = tmp.path().join("mp");
    std::fs::create_dir_all(&mp).unwrap();
    let err = run(&["mount", full.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(err.contains("neither empty nor an xetmount store"), "{err}");

    // --nfs on a machine without a kernel NFS client says what to do instead.
    if !std::path::Path::new("/sbin/mount.nfs").exists() {
        let nfs_mp = tmp.path().join("nfs-mp");
        std::fs::create_dir_all(&nfs_mp).unwrap();
        let err = run(&[
            "mount",
            "--nfs",
            tmp.path().join("nfs-store").to_str().unwrap(),
            nfs_mp.to_str().unwrap(),
        ]);
        let said: Vec<&str> = err.lines().filter(|l| l.starts_with("xetmount:")).collect();
        assert_eq!(said.len(), 1, "{err}");
        assert!(said[0].contains("serve-nfs"), "{err}");
    }

    // `stats` of a directory that is no mount says so.
    let err = run(&["stats", mp.to_str().unwrap()]);
    assert!(err.contains("not an xetmount mount point"), "{err}");

    // A store in use by a live mount names the holder's pid.
    let m = Mount::start(&store, &tmp.path().join("m1"), &[]);
    let err = run(&["mount", store.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(
        err.contains("already in use") && err.contains("pid"),
        "{err}"
    );
    // No extended attributes (the kernel answers for us after the first call); the counters
    // come through the stats ioctl.
    std::fs::write(m.mountpoint.join("f"), "x").unwrap();
    let path = std::ffi::CString::new(m.mountpoint.join("f").to_str().unwrap()).unwrap();
    // (The kernel reports "no ACL" as ENODATA.)
    for (name, want) in [
        (c"security.selinux", libc::EOPNOTSUPP),
        (c"user.x", libc::EOPNOTSUPP),
        (c"system.posix_acl_access", libc::ENODATA),
    ] {
        // SAFETY: NUL-terminated strings; a zero-size query writes nothing.
        let r = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(r, -1);
        let got = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(got, Some(want), "{name:?}");
    }
    let stats = sh(
        tmp.path(),
        &format!("{} stats {}", common::bin(), m.mountpoint.display()),
    );
    assert!(stats.lines().any(|l| l.starts_with("inodes ")), "{stats}");
    m.stop();
}

#[test]
fn read_only_mount_serves_reads_and_refuses_changes_with_erofs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&store, &mp, &[]);
    sh(&m.mountpoint, "mkdir d && echo content > d/f");
    m.stop();

    let m = Mount::start(&store, &mp, &["--read-only"]);
    assert_eq!(sh(&m.mountpoint, "cat d/f"), "content\n");
    for cmd in [
        "echo x > new",
        "echo x >> d/f",
        "rm d/f",
        "mkdir e",
        "mv d/f d/g",
        "chmod 600 d/f",
        "truncate -s 0 d/f",
        "ln -s d/f l",
    ] {
        let out = std::process::Command::new("bash")
            .args(["-c", &format!("( {cmd} ) 2>&1")])
            .current_dir(&m.mountpoint)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "{cmd} succeeded on a read-only mount"
        );
        assert!(text.contains("Read-only file system"), "{cmd}: {text}");
    }
    m.stop();
    let m = Mount::start(&store, &mp, &[]);
    assert_eq!(sh(&m.mountpoint, "cat d/f; ls"), "content\nd\n");
    m.stop();
}

#[test]
fn sigterm_commits_pending_writes_before_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mp = tmp.path().join("mnt");
    // A long debounce: the write is still pending when the signal arrives.
    let mut m = Mount::start(&store, &mp, &["--flush-debounce-ms", "600000"]);
    sh(tmp.path(), "head -c 5000000 /dev/urandom > src.bin");
    sh(&m.mountpoint, "cp ../src.bin f.bin");
    let status = m.terminate();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}: {}",
        m.log_text()
    );
    assert!(!common::is_mounted(&m.mountpoint));
    drop(m);
    let m = Mount::start(&store, &mp, &[]);
    assert_eq!(
        std::fs::read(m.path("f.bin")).unwrap(),
        std::fs::read(tmp.path().join("src.bin")).unwrap()
    );
    m.stop();
}

/// Sparse writes through the kernel: patching a committed file after a remount downloads
/// nothing and composes; `xetmount stats` reports it; the result survives another remount.
#[test]
fn patching_a_committed_file_downloads_nothing_and_composes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mp = tmp.path().join("mnt");
    sh(
        tmp.path(),
        "head -c 20000000 /dev/urandom > src.bin; cp src.bin want.bin",
    );
    let m = Mount::start(&store, &mp, &[]);
    sh(&m.mountpoint, "cp ../src.bin big.bin");
    m.stop();

    let m = Mount::start(&store, &mp, &[]);
    let patch = "for off in 0 7000000 19999000; do \
                   printf 'PATCHED' | dd of=$T bs=1 seek=$off conv=notrunc status=none; done";
    sh(&m.mountpoint, &patch.replace("$T", "big.bin"));
    sh(tmp.path(), &patch.replace("$T", "want.bin"));
    sh(&m.mountpoint, "sync big.bin");
    let stats = sh(
        tmp.path(),
        &format!("{} stats {}", common::bin(), m.mountpoint.display()),
    );
    let get = |k: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("{k} missing from {stats}"))
            .parse()
            .unwrap()
    };
    assert_eq!(get("bytes_fetched"), 0, "{stats}");
    assert_eq!(get("files_composed"), 1, "{stats}");
    assert_eq!(get("files_uploaded"), 0, "{stats}");
    assert!(get("bytes_uploaded_new") < 1 << 20, "{stats}");
    m.stop();

    let m = Mount::start(&store, &mp, &[]);
    assert_eq!(
        std::fs::read(m.path("big.bin")).unwrap(),
        std::fs::read(tmp.path().join("want.bin")).unwrap()
    );
    m.stop();
}

/// Staging on a full disk: the write that cannot land fails with ENOSPC, what was written
/// before is intact, and the mount keeps working once space is freed.
#[test]
fn full_staging_disk_fails_writes_with_enospc_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    // A small tmpfs as the staging disk (the test runs as root, like CI).
    sh(
        tmp.path(),
        "mount -t tmpfs -o size=8m xetmount-test-staging staging",
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _tmpfs = Unmount(staging.clone());
    let store = tmp.path().join("store");
    let mp = tmp.path().join("mnt");
    let staging_arg = staging.to_str().unwrap().to_string();
    let m = Mount::start(&store, &mp, &["--staging-dir", &staging_arg]);
    sh(tmp.path(), "head -c 2000000 /dev/urandom > keep.bin");
    sh(&m.mountpoint, "cp ../keep.bin keep.bin && sync keep.bin");

    let out = std::process::Command::new("bash")
        .args(["-c", "head -c 30000000 /dev/zero > too-big.bin"])
        .current_dir(&m.mountpoint)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a 30 MB write fit in 8 MB of staging"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");

    assert_eq!(
        std::fs::read(m.path("keep.bin")).unwrap(),
        std::fs::read(tmp.path().join("keep.bin")).unwrap()
    );
    sh(&m.mountpoint, "rm too-big.bin");
    // The kernel releases the file after `rm` returns; its staging copy goes with the
    // release. Wait for the space to come back, then write again.
    common::wait_for(
        "staging space to be freed",
        std::time::Duration::from_secs(20),
        || {
            let avail = sh(tmp.path(), "df -B1 --output=avail staging | tail -1");
            avail.trim().parse::<u64>().unwrap() > 4 << 20
        },
    );
    sh(&m.mountpoint, "echo after > after.txt; sync after.txt");
    m.stop();
    let m = Mount::start(&store, &mp, &["--staging-dir", &staging_arg]);
    assert_eq!(
        sh(&m.mountpoint, "cat after.txt; ls"),
        "after\nafter.txt\nkeep.bin\n"
    );
    assert_eq!(
        std::fs::read(m.path("keep.bin")).unwrap(),
        std::fs::read(tmp.path().join("keep.bin")).unwrap()
    );
    m.stop();
}

/// fallocate(1) in every supported mode, on new files and on a committed file (sparse
/// staging: the punched range is composed into the stored body), compared with the same
/// commands on a local directory, after remounts.
#[test]
fn fallocate_modes_match_a_local_file_system_after_remount() {
    const NEW_FILES: &str = r#"
fallocate -l 1M grown
head -c 300000 ../src.bin > punched
fallocate -p -o 4096 -l 8192 punched
fallocate -z -o 100000 -l 5000 punched
fallocate -z -o 290000 -l 20000 punched
fallocate -n -o 0 -l 2M punched
fallocate -z -n -o 305000 -l 100000 punched
cp ../src.bin committed
"#;
    const COMMITTED: &str = r#"
fallocate -p -o 1000000 -l 70000 committed
fallocate -z -o 2999000 -l 4000 committed
fallocate -o 0 -l 100 committed
"#;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mp = tmp.path().join("mnt");
    let reference = tmp.path().join("ref");
    std::fs::create_dir_all(&reference).unwrap();
    sh(tmp.path(), "head -c 3000000 /dev/urandom > src.bin");
    sh(&reference, NEW_FILES);
    sh(&reference, COMMITTED);
    let want = tree_digest(&reference);
    let sizes = "stat -c '%n %s' grown punched committed";
    let want_sizes = sh(&reference, sizes);

    let m = Mount::start(&store, &mp, &[]);
    sh(&m.mountpoint, NEW_FILES);
    m.stop();
    let m = Mount::start(&store, &mp, &[]);
    sh(&m.mountpoint, COMMITTED);
    assert_eq!(tree_digest(&m.mountpoint), want, "live mount differs");
    m.stop();

    let m = Mount::start(&store, &mp, &[]);
    assert_eq!(tree_digest(&m.mountpoint), want, "remounted tree differs");
    assert_eq!(sh(&m.mountpoint, sizes), want_sizes);
    // Other modes are refused, as on file systems without them.
    let out = std::process::Command::new("fallocate")
        .args(["--insert-range", "-o", "0", "-l", "4096"])
        .arg(m.path("grown"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.stop();
}

/// Hard links with ln(1): one inode, several names, link count, edits through either name,
/// across remounts.
#[test]
fn hard_links_keep_one_inode_across_remounts() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mp = tmp.path().join("mnt");
    let m = Mount::start(&store, &mp, &[]);
    sh(
        &m.mountpoint,
        "mkdir d && echo one > a && ln a d/b && ln d/b c && echo two >> d/b && rm c",
    );
    m.stop();
    let m = Mount::start(&store, &mp, &[]);
    let out = sh(
        &m.mountpoint,
        "stat -c '%h' a; [ \"$(stat -c %i a)\" = \"$(stat -c %i d/b)\" ] && echo same; cat a",
    );
    assert_eq!(out, "2\nsame\none\ntwo\n");
    sh(&m.mountpoint, "rm a && echo three >> d/b");
    m.stop();
    let m = Mount::start(&store, &mp, &[]);
    let out = sh(&m.mountpoint, "stat -c '%h' d/b; cat d/b; ls");
    assert_eq!(out, "1\none\ntwo\nthree\nd\n");
    m.stop();
}
