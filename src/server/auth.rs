//! Who may do what on `xetmount serve`.
//!
//! - **Hub tokens** (what `HF_TOKEN` holds) come from `--token-file`: one per line,
//!   `TOKEN USER read|write [PATTERN ...]`, where a pattern is `ns/name`, `ns/*` or `*`
//!   (default: `USER/*`), optionally typed: `buckets/ns/*`, `models/ns/name`, `datasets/…`,
//!   `spaces/…`. An untyped pattern covers buckets and repos of every type alike; a typed one
//!   only its type, so bucket `alice/x` and model `alice/x` can be granted apart. A write
//!   token also reads. Without a token file the server is open:
//!   every caller writes everything, as user `--user`.
//! - **CAS tokens** are minted by the bucket's `xet-read-token`/`xet-write-token` routes for a
//!   caller the Hub half admitted: `xmc1.<payload>.<mac>`, the payload naming the bucket, the
//!   scope and the expiry, the MAC keyed with the server's secret (kept in the store, so
//!   tokens outlive a restart). The CAS checks them on every route except fetches.
//! - **Fetch URLs** carry their own expiry and MAC over the xorb and the expiry, so they can be
//!   handed to clients that send no `Authorization`.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

/// Read or write access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
}

#[derive(Clone, Debug)]
struct HubToken {
    token: String,
    user: String,
    scope: Scope,
    patterns: Vec<String>,
}

/// The caller of a Hub route, as its bearer token says.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: String,
    grants: Vec<(String, Scope)>,
}

impl Caller {
    /// The best scope this caller holds on `key`: a bucket's `ns/name`, or a repo's
    /// `models/ns/name` (`datasets/…`, `spaces/…`).
    pub fn scope_on(&self, key: &str) -> Option<Scope> {
        self.grants
            .iter()
            .filter(|(p, _)| pattern_covers(p, key))
            .map(|(_, s)| *s)
            .max()
    }
}

/// Whether token pattern `p` covers `key` (see the module documentation).
fn pattern_covers(p: &str, key: &str) -> bool {
    if p == "*" {
        return true;
    }
    let split = |s: &str| -> Option<(Option<String>, String, String)> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [ns, name] => Some((None, ns.into(), name.into())),
            [kind, ns, name] => Some((Some(kind.into()), ns.into(), name.into())),
            _ => None,
        }
    };
    let (Some((pk, pns, pname)), Some((kk, kns, kname))) = (split(p), split(key)) else {
        return false;
    };
    let kind = kk.unwrap_or_else(|| "buckets".into());
    pk.is_none_or(|k| k == kind) && pns == kns && (pname == "*" || pname == kname)
}

/// The server issues CAS token expiries by the clock the client checks them with.
pub use crate::remote::wire::now_secs;

/// Why a token file could not be used: one sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line} of the token file {path} is not `TOKEN USER read|write [PATTERN ...]`")]
    Syntax { path: String, line: usize },
    #[error("cannot create the server secret {path}: {source}")]
    Secret {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct Auth {
    /// `None`: an open server.
    tokens: Option<Vec<HubToken>>,
    default_user: String,
    key: [u8; 32],
    /// Lifetime of minted CAS tokens.
    pub cas_token_ttl_secs: u64,
}

impl Auth {
    pub fn new(
        token_file: Option<&Path>,
        default_user: String,
        key: [u8; 32],
        cas_token_ttl_secs: u64,
    ) -> Result<Self, AuthError> {
        let tokens = token_file.map(parse_token_file).transpose()?;
        Ok(Auth {
            tokens,
            default_user,
            key,
            cas_token_ttl_secs,
        })
    }

    /// The caller holding `bearer`: `Ok(None)` for an anonymous caller of a server with
    /// tokens, `Err(())` for a token the server does not know.
    #[allow(clippy::result_unit_err)]
    pub fn caller(&self, bearer: Option<&str>) -> Result<Option<Caller>, ()> {
        let Some(tokens) = &self.tokens else {
            return Ok(Some(Caller {
                user: self.default_user.clone(),
                grants: vec![("*".into(), Scope::Write)],
            }));
        };
        let Some(b) = bearer else { return Ok(None) };
        let t = tokens.iter().find(|t| t.token == b).ok_or(())?;
        Ok(Some(Caller {
            user: t.user.clone(),
            grants: t.patterns.iter().map(|p| (p.clone(), t.scope)).collect(),
        }))
    }

    fn mac(&self, msg: &[u8]) -> String {
        B64.encode(&blake3::keyed_hash(&self.key, msg).as_bytes()[..24])
    }

    /// A CAS token for `bucket` with `scope`, and its expiry (unix seconds).
    pub fn mint_cas_token(&self, bucket: &str, scope: Scope) -> (String, u64) {
        let exp = now_secs() + self.cas_token_ttl_secs;
        let w = if scope == Scope::Write { "w" } else { "r" };
        let payload = B64.encode(format!("{bucket}\n{w}\n{exp}"));
        let mac = self.mac(payload.as_bytes());
        (format!("xmc1.{payload}.{mac}"), exp)
    }

    /// The bucket and scope of a valid, unexpired CAS token.
    pub fn check_cas_token(&self, token: &str) -> Option<(String, Scope)> {
        let rest = token.strip_prefix("xmc1.")?;
        let (payload, mac) = rest.split_once('.')?;
        if !constant_time_eq(self.mac(payload.as_bytes()).as_bytes(), mac.as_bytes()) {
            return None;
        }
        let text = String::from_utf8(B64.decode(payload).ok()?).ok()?;
        let mut parts = text.split('\n');
        let bucket = parts.next()?.to_string();
        let scope = match parts.next()? {
            "w" => Scope::Write,
            "r" => Scope::Read,
            _ => return None,
        };
        let exp: u64 = parts.next()?.parse().ok()?;
        (exp > now_secs()).then_some((bucket, scope))
    }

    /// The key dedup answers carry their chunk hashes under (derived from the secret, so it
    /// outlives a restart as the clients' cached answers do).
    pub fn dedup_key(&self) -> xet_core_structures::merklehash::MerkleHash {
        let k = blake3::keyed_hash(&self.key, b"xetmount dedup chunk key");
        xet_core_structures::merklehash::MerkleHash::from(k.as_bytes())
    }

    /// Query string authorising a fetch of xorb `xorb` until `exp`.
    pub fn sign_fetch(&self, xorb: &str, exp: u64) -> String {
        format!(
            "exp={exp}&sig={}",
            self.mac(format!("fetch\n{xorb}\n{exp}").as_bytes())
        )
    }

    pub fn check_fetch(&self, xorb: &str, exp: u64, sig: &str) -> bool {
        exp > now_secs()
            && constant_time_eq(
                self.mac(format!("fetch\n{xorb}\n{exp}").as_bytes())
                    .as_bytes(),
                sig.as_bytes(),
            )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_token_file(path: &Path) -> Result<Vec<HubToken>, AuthError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = || AuthError::Syntax {
            path: shown.clone(),
            line: i + 1,
        };
        let mut w = line.split_whitespace();
        let (Some(token), Some(user), Some(scope)) = (w.next(), w.next(), w.next()) else {
            return Err(syntax());
        };
        let scope = match scope {
            "read" => Scope::Read,
            "write" => Scope::Write,
            _ => return Err(syntax()),
        };
        let mut patterns: Vec<String> = w.map(str::to_string).collect();
        if patterns.is_empty() {
            patterns.push(format!("{user}/*"));
        }
        out.push(HubToken {
            token: token.to_string(),
            user: user.to_string(),
            scope,
            patterns,
        });
    }
    Ok(out)
}

/// 32 bytes no one can guess: the kernel's randomness, mixed with the time and process.
pub fn random_key() -> [u8; 32] {
    let seed = format!(
        "{:?}{}{:?}",
        SystemTime::now(),
        std::process::id(),
        std::thread::current().id()
    );
    let mut urandom = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut urandom);
    }
    let mut h = blake3::Hasher::new();
    h.update(seed.as_bytes());
    h.update(&urandom);
    *h.finalize().as_bytes()
}

/// A fresh identifier no one can guess (32 hex digits), for upload grants.
pub fn random_id() -> String {
    random_key()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key in `path` (32 bytes), made and written there (0600) first if there is none.
pub fn load_or_create_secret(path: &Path) -> Result<[u8; 32], AuthError> {
    let err = |source| AuthError::Secret {
        path: path.display().to_string(),
        source,
    };
    if let Ok(bytes) = std::fs::read(path) {
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(key);
        }
    }
    let key = random_key();
    let tmp = path.with_extension("tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&key).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_scope_and_expire() {
        let d = tempfile::tempdir().unwrap();
        let tf = d.path().join("tokens");
        std::fs::write(
            &tf,
            "# comment\nabc alice write\nro bob read alice/shared *\n",
        )
        .unwrap();
        let a = Auth::new(
            Some(&tf),
            "local".into(),
            load_or_create_secret(&d.path().join("secret")).unwrap(),
            60,
        )
        .unwrap();
        let alice = a.caller(Some("abc")).unwrap().unwrap();
        assert_eq!(alice.scope_on("alice/x"), Some(Scope::Write));
        assert_eq!(alice.scope_on("bob/x"), None);
        let bob = a.caller(Some("ro")).unwrap().unwrap();
        assert_eq!(bob.scope_on("alice/shared"), Some(Scope::Read));
        assert_eq!(bob.scope_on("carol/y"), Some(Scope::Read));
        assert!(a.caller(Some("nope")).is_err());
        // Untyped patterns cover every kind; typed ones their own.
        assert_eq!(alice.scope_on("models/alice/x"), Some(Scope::Write));
        assert_eq!(bob.scope_on("datasets/alice/shared"), Some(Scope::Read));
        let typed = Caller {
            user: "t".into(),
            grants: vec![
                ("models/alice/*".into(), Scope::Write),
                ("buckets/alice/b".into(), Scope::Read),
            ],
        };
        assert_eq!(typed.scope_on("models/alice/m"), Some(Scope::Write));
        assert_eq!(typed.scope_on("alice/m"), None);
        assert_eq!(typed.scope_on("datasets/alice/m"), None);
        assert_eq!(typed.scope_on("alice/b"), Some(Scope::Read));
        assert_eq!(typed.scope_on("models/alice/b"), Some(Scope::Write));
        assert!(a.caller(None).unwrap().is_none());
        let (t, _) = a.mint_cas_token("alice/x", Scope::Write);
        assert_eq!(
            a.check_cas_token(&t),
            Some(("alice/x".into(), Scope::Write))
        );
        let mut forged = t.clone();
        forged.replace_range(6..7, if &t[6..7] == "A" { "B" } else { "A" });
        assert_eq!(a.check_cas_token(&forged), None);
        // The secret persists: a restarted server accepts the token.
        let b = Auth::new(
            Some(&tf),
            "local".into(),
            load_or_create_secret(&d.path().join("secret")).unwrap(),
            60,
        )
        .unwrap();
        assert!(b.check_cas_token(&t).is_some());
        let exp = now_secs() + 10;
        let q = a.sign_fetch("ab12", exp);
        let sig = q.split("sig=").nth(1).unwrap();
        assert!(a.check_fetch("ab12", exp, sig));
        assert!(!a.check_fetch("ab13", exp, sig));
        assert!(!a.check_fetch("ab12", exp + 1, sig));
        let expired = Auth::new(
            None,
            "local".into(),
            load_or_create_secret(&d.path().join("secret")).unwrap(),
            0,
        )
        .unwrap();
        let (t, _) = expired.mint_cas_token("a/b", Scope::Read);
        assert_eq!(expired.check_cas_token(&t), None);
        std::fs::write(&tf, "abc alice admin\n").unwrap();
        assert!(Auth::new(
            Some(&tf),
            "l".into(),
            load_or_create_secret(&d.path().join("secret")).unwrap(),
            1
        )
        .is_err());
    }
}
