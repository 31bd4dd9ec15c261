//! From the process's arguments to a parsed [`Cli`]: as `mount.xetmount` (mount(8)'s helper,
//! a symlink to this binary), and with the options of a config file put before the command
//! line's so that the command line wins.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches};
use xetmount::service::config;

use super::{Cli, UserError};

/// The command with the settings parsing needs: a later option replaces an earlier one (the
/// command line's replace the config file's).
fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for sub in config::CONFIGURABLE {
        cmd = cmd.mut_subcommand(sub, |c| c.args_override_self(true));
    }
    cmd
}

/// The value of `--config` on the command line, if any.
fn config_flag(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Whether the command line gives the subcommand any positional argument.
fn has_positionals(argv: &[OsString], sub: &str) -> bool {
    let Ok(m) = command().ignore_errors(true).try_get_matches_from(argv) else {
        return false;
    };
    let Some(sm) = m.subcommand_matches(sub) else {
        return false;
    };
    let cmd = command();
    let Some(sc) = cmd.find_subcommand(sub) else {
        return false;
    };
    let given = sc
        .get_positionals()
        .any(|p| sm.try_get_raw(p.get_id().as_str()).ok().flatten().is_some());
    given
}

/// Parse the process's arguments. Clap's own errors (and `--help`) exit here.
pub fn parse() -> Result<Cli, UserError> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let called_as = argv
        .first()
        .and_then(|a| {
            Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    if called_as == "mount.xetmount" {
        argv = config::helper_argv(&command(), &argv[1..]).map_err(UserError)?;
    }
    let sub = argv
        .get(1)
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_string();
    if config::CONFIGURABLE.contains(&sub.as_str()) {
        let path = config_flag(&argv[2..]).or_else(config::default_path);
        if let Some(path) = path {
            let pairs = config::read_file(&path, &sub).map_err(UserError)?;
            let origin = format!("[{sub}] of {}", path.display());
            let (opts, positionals) =
                config::to_args(&command(), &sub, &pairs, &origin).map_err(UserError)?;
            let take_positionals = !positionals.is_empty() && !has_positionals(&argv, &sub);
            let rest = argv.split_off(2);
            argv.extend(opts);
            if take_positionals {
                argv.extend(positionals);
            }
            argv.extend(rest);
        }
    }
    let matches = command().get_matches_from(argv);
    Cli::from_arg_matches(&matches).map_err(|e| UserError(e.to_string()))
}
