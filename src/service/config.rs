//! Options from a TOML file (`--config`, or the default file) and from `mount -o` (the
//! `mount.xetmount` helper), turned into command-line arguments so that the command line's
//! own parsers check them and flags given on the command line win.
//!
//! A config file has one table per subcommand, keyed by the long option names:
//!
//! ```toml
//! [mount]
//! source = "hf://buckets/alice/data"   # the positional arguments, when the command line has none
//! mountpoint = "/mnt/data"
//! token-file = "/etc/xetmount/token"
//! cache-size = "20G"
//! read-only = true
//!
//! [serve]
//! listen = "0.0.0.0:8080"
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Command};

/// The subcommands a config file may configure.
pub const CONFIGURABLE: [&str; 3] = ["mount", "serve", "serve-nfs"];

/// The default config file: `$XETMOUNT_CONFIG`, else `$XDG_CONFIG_HOME/xetmount/config.toml`
/// (`~/.config/...`) for users and `/etc/xetmount/config.toml` for root, if it exists.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("XETMOUNT_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    // SAFETY: geteuid has no preconditions.
    let path = if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/etc/xetmount/config.toml")
    } else if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        PathBuf::from(d).join("xetmount/config.toml")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".config/xetmount/config.toml")
    };
    path.exists().then_some(path)
}

/// A value from a file or an `-o` list.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(String),
    Flag(bool),
}

/// Arguments for options `pairs` of subcommand `sub` (`origin` names where they came from,
/// for errors). Positional arguments come back apart: `(options, positionals)`.
pub fn to_args(
    cmd: &Command,
    sub: &str,
    pairs: &[(String, Value)],
    origin: &str,
) -> Result<(Vec<OsString>, Vec<OsString>), String> {
    let sc = cmd
        .find_subcommand(sub)
        .ok_or_else(|| format!("{origin}: there is no subcommand {sub}"))?;
    let mut opts = Vec::new();
    let mut positionals: Vec<(usize, OsString)> = Vec::new();
    for (raw_key, value) in pairs {
        let key = raw_key.replace('_', "-");
        if key == "token" {
            return Err(format!(
                "a token in {origin} would show in process lists; put it in a file and name that file with token-file"
            ));
        }
        let arg = sc.get_arguments().find(|a| {
            a.get_long() == Some(key.as_str())
                || (a.is_positional()
                    && positional_names(a.get_id().as_str()).contains(&key.as_str()))
        });
        let Some(arg) =
            arg.filter(|a| !["config", "help", "version"].contains(&a.get_id().as_str()))
        else {
            return Err(format!(
                "unknown option `{raw_key}` in {origin}; the keys are the long options of `xetmount {sub} --help`"
            ));
        };
        let takes_value = !matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        let text = match (value, takes_value) {
            (Value::Flag(on), false) => {
                if *on {
                    opts.push(OsString::from(format!("--{key}")));
                }
                continue;
            }
            (Value::Flag(_), true) => {
                return Err(format!(
                    "`{raw_key}` in {origin} needs a value, not true or false"
                ))
            }
            (Value::Text(_), false) => {
                return Err(format!(
                    "`{raw_key}` in {origin} is a switch: write {key} = true (or leave it out)"
                ))
            }
            (Value::Text(t), true) => t,
        };
        // The option's own parser judges the value, so the error names the file and key.
        let probe = Command::new("xetmount")
            .no_binary_name(true)
            .arg(arg.clone().required(false));
        let flag = format!("--{key}");
        let probe_args: Vec<&str> = if arg.is_positional() {
            vec![text.as_str()]
        } else {
            vec![flag.as_str(), text.as_str()]
        };
        if let Err(e) = probe.try_get_matches_from(probe_args) {
            let why = e.to_string();
            let why = why
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            return Err(format!("bad value for `{raw_key}` in {origin}: {why}"));
        }
        if arg.is_positional() {
            // In declaration order (the file's keys come sorted by name).
            let at = sc
                .get_positionals()
                .position(|p| p.get_id() == arg.get_id());
            positionals.push((at.unwrap_or(0), text.into()));
        } else {
            opts.push(OsString::from(format!("--{key}")));
            opts.push(text.into());
        }
    }
    positionals.sort_by_key(|(i, _)| *i);
    Ok((opts, positionals.into_iter().map(|(_, v)| v).collect()))
}

/// The names a positional argument goes by in a file: its id, and `source` for the store.
fn positional_names(id: &str) -> Vec<&str> {
    match id {
        "store" => vec!["store", "source"],
        other => vec![other],
    }
}

/// The `[sub]` table of the TOML file `path` as pairs. Errors are one sentence naming the
/// file (and the line, for a syntax error).
pub fn read_file(path: &Path, sub: &str) -> Result<Vec<(String, Value)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the config file {}: {e}; pass an existing file with --config",
            path.display()
        )
    })?;
    parse(&text, sub, &path.display().to_string())
}

fn parse(text: &str, sub: &str, origin: &str) -> Result<Vec<(String, Value)>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let what = e.message().trim().to_string();
        match line {
            Some(l) => format!("{origin} line {l} is not valid TOML: {what}"),
            None => format!("{origin} is not valid TOML: {what}"),
        }
    })?;
    for (k, v) in &table {
        if !v.is_table() {
            return Err(format!(
                "`{k}` in {origin} is outside a table; put options under [mount], [serve] or [serve-nfs]"
            ));
        }
        if !CONFIGURABLE.contains(&k.as_str()) {
            return Err(format!(
                "unknown table [{k}] in {origin}; the tables are [mount], [serve] and [serve-nfs]"
            ));
        }
    }
    let Some(section) = table.get(sub).and_then(|t| t.as_table()) else {
        return Ok(Vec::new());
    };
    section
        .iter()
        .map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => Value::Text(s.clone()),
                toml::Value::Integer(i) => Value::Text(i.to_string()),
                toml::Value::Float(f) => Value::Text(f.to_string()),
                toml::Value::Boolean(b) => Value::Flag(*b),
                _ => {
                    return Err(format!(
                        "`{k}` in [{sub}] of {origin} must be a string, a number or true/false"
                    ))
                }
            };
            Ok((k.clone(), v))
        })
        .collect()
}

/// `mount -o` options: `ro`, `rw`, `key=value`, `flag`; the ones mount(8) and fstab use for
/// themselves are dropped (`_netdev`, `nofail`, `defaults`, `noauto`, `x-*`, ...).
pub fn mount_options(list: &str) -> Vec<(String, Value)> {
    const IGNORED: [&str; 20] = [
        "rw",
        "defaults",
        "_netdev",
        "nofail",
        "auto",
        "noauto",
        "user",
        "users",
        "nouser",
        "owner",
        "noatime",
        "relatime",
        "atime",
        "strictatime",
        "nodev",
        "dev",
        "nosuid",
        "suid",
        "exec",
        "noexec",
    ];
    list.split(',')
        .map(str::trim)
        .filter(|o| {
            !o.is_empty()
                && !IGNORED.contains(o)
                && !o.starts_with("x-")
                && !o.starts_with("comment=")
        })
        .map(|o| match o.split_once('=') {
            _ if o == "ro" => ("read-only".to_string(), Value::Flag(true)),
            Some((k, v)) => (k.to_string(), Value::Text(v.to_string())),
            None => (o.to_string(), Value::Flag(true)),
        })
        .collect()
}

/// The `xetmount` arguments for `mount.xetmount SOURCE DIR [-sfnv] [-N NS] [-o OPTS]` as
/// mount(8) calls it: a background mount with the options mapped.
pub fn helper_argv(cmd: &Command, args: &[OsString]) -> Result<Vec<OsString>, String> {
    let mut positional = Vec::new();
    let mut opts = String::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => {
                let o = it
                    .next()
                    .ok_or("mount.xetmount: -o needs a list of options")?;
                if !opts.is_empty() {
                    opts.push(',');
                }
                opts.push_str(&o.to_string_lossy());
            }
            Some("-N") => {
                it.next();
            }
            Some(f) if f.starts_with('-') && f.len() > 1 => {} // -s -f -n -v: nothing to do
            _ => positional.push(a.clone()),
        }
    }
    let [source, dir] = positional.as_slice() else {
        return Err("usage: mount.xetmount SOURCE MOUNTPOINT [-o OPTIONS]".into());
    };
    let (flags, _) = to_args(cmd, "mount", &mount_options(&opts), "the mount options")?;
    let mut argv: Vec<OsString> = vec!["xetmount".into(), "mount".into(), "--daemon".into()];
    argv.extend(flags);
    argv.push(source.clone());
    argv.push(dir.clone());
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cli() -> Command {
        Command::new("xetmount").subcommand(
            Command::new("mount")
                .arg(Arg::new("store").required(true))
                .arg(Arg::new("mountpoint").required(true))
                .arg(Arg::new("config").long("config"))
                .arg(
                    Arg::new("cache_size")
                        .long("cache-size")
                        .value_parser(|s: &str| {
                            s.trim_end_matches('G')
                                .parse::<u64>()
                                .map_err(|_| "not a size".to_string())
                        }),
                )
                .arg(Arg::new("token_file").long("token-file"))
                .arg(
                    Arg::new("read_only")
                        .long("read-only")
                        .action(ArgAction::SetTrue),
                )
                .arg(Arg::new("daemon").long("daemon").action(ArgAction::SetTrue)),
        )
    }

    fn strs(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn a_file_becomes_arguments() {
        let text = "[mount]\nsource = \"hf://buckets/a/b\"\nmountpoint = \"/mnt/x\"\ncache-size = \"20G\"\nread_only = true\n[serve]\nlisten = \"x\"\n";
        let pairs = parse(text, "mount", "f.toml").unwrap();
        let (opts, pos) = to_args(&cli(), "mount", &pairs, "f.toml").unwrap();
        assert_eq!(strs(&opts), ["--cache-size", "20G", "--read-only"]);
        assert_eq!(strs(&pos), ["hf://buckets/a/b", "/mnt/x"]);
    }

    #[test]
    fn bad_keys_and_values_are_one_sentence() {
        let e = to_args(
            &cli(),
            "mount",
            &parse("[mount]\ncache-sise = 1\n", "mount", "f.toml").unwrap(),
            "f.toml",
        )
        .unwrap_err();
        assert!(
            e.starts_with("unknown option `cache-sise` in f.toml;"),
            "{e}"
        );
        let e = to_args(
            &cli(),
            "mount",
            &parse("[mount]\ncache-size = \"lots\"\n", "mount", "f.toml").unwrap(),
            "f.toml",
        )
        .unwrap_err();
        assert!(
            e.starts_with("bad value for `cache-size` in f.toml:"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = to_args(
            &cli(),
            "mount",
            &parse("[mount]\nread-only = \"yes\"\n", "mount", "f.toml").unwrap(),
            "f.toml",
        )
        .unwrap_err();
        assert!(e.contains("is a switch"), "{e}");
        let e = parse("[mount]\ncache-size = \n", "mount", "f.toml").unwrap_err();
        assert!(e.starts_with("f.toml line 2 is not valid TOML"), "{e}");
        let e = parse("cache-size = 1\n", "mount", "f.toml").unwrap_err();
        assert!(e.contains("outside a table"), "{e}");
        let e = parse("[mnt]\n", "mount", "f.toml").unwrap_err();
        assert!(e.contains("unknown table [mnt]"), "{e}");
        let e = to_args(
            &cli(),
            "mount",
            &[("config".into(), Value::Text("x".into()))],
            "f",
        )
        .unwrap_err();
        assert!(e.contains("unknown option"), "{e}");
    }

    #[test]
    fn mount_helper_maps_fstab_options() {
        let args: Vec<OsString> = [
            "hf://buckets/a/b",
            "/mnt/x",
            "-s",
            "-o",
            "rw,_netdev,nofail,x-systemd.automount,token_file=/etc/t,cache-size=5G,ro,noatime",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let argv = helper_argv(&cli(), &args).unwrap();
        assert_eq!(
            strs(&argv),
            [
                "xetmount",
                "mount",
                "--daemon",
                "--token-file",
                "/etc/t",
                "--cache-size",
                "5G",
                "--read-only",
                "hf://buckets/a/b",
                "/mnt/x"
            ]
        );
        let e = helper_argv(
            &cli(),
            &["a".into(), "b".into(), "-o".into(), "bogus=1".into()],
        )
        .unwrap_err();
        assert!(e.contains("unknown option `bogus`"), "{e}");
        assert!(helper_argv(&cli(), &["a".into()])
            .unwrap_err()
            .starts_with("usage"));
    }
}
