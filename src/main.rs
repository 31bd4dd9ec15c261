//! `xetmount` command line: mount (FUSE or NFS, foreground or background), serve-nfs, serve,
//! status, unmount, stats; also `mount.xetmount`, mount(8)'s helper, when called by that
//! name. The arguments live in [`cli`], the choice and opening of a store in
//! [`xetmount::remote::open`]; this is the glue.

mod cli;

use std::process::ExitCode;

use cli::{Command, UserError};

/// A mount keeps descriptors open for its staging files and connections: take the whole
/// allowance the system grants (the soft limit is often 1024 of a far higher hard limit).
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> ExitCode {
    // Nothing here starts a thread before `mount --daemon` forks (run.rs).
    cli::fix_malloc_threshold();
    raise_open_file_limit();
    let r = cli::argv::parse().and_then(|cli| match cli.command {
        Command::Mount(args) => cli::run::mount_command(args),
        Command::ServeNfs(args) => cli::run::serve_nfs(args),
        Command::Serve(args) => cli::run::serve_http(args),
        Command::ServeMigrate(args) => cli::run::serve_migrate(args),
        Command::Unmount {
            mountpoint,
            timeout_secs,
        } => cli::admin::unmount(&mountpoint, timeout_secs),
        Command::Status { mountpoint, json } => cli::admin::status(mountpoint.as_deref(), json),
        Command::Stats { mountpoint } => cli::admin::stats(&mountpoint),
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(UserError(msg)) => {
            eprintln!("xetmount: {msg}");
            ExitCode::FAILURE
        }
    }
}
