//! Moving a file aside after a conflict (see `flush/conflict.rs` for the policy): its version
//! takes a free conflict name beside it, and the other writer's version shows at its name.

use crate::remote::{CatalogOp, Entry, EntryKind};
use crate::vfs::namespace::inode::{Ino, Invalidation};

use super::Namespace;

impl Namespace {
    /// Move file `ino`, still at `path`, to a free conflict name beside it, and show
    /// `current` (what the store holds) at `path`. `None`: the file is no longer at `path`.
    pub(in crate::vfs) async fn move_aside(
        &self,
        ino: Ino,
        path: &str,
        current: Option<Entry>,
    ) -> crate::vfs::VfsResult<Option<String>> {
        let _ns = self.lock.lock().await;
        let (parent, name, aside, entry) = {
            let t = self.table();
            let i = t.get(ino)?;
            if !i.linked || t.path_of(ino)? != path {
                return Ok(None);
            }
            let (parent, name) = (i.parent, i.name.clone());
            let aside = (0..)
                .map(|n| conflict_name(&name, n))
                .find(|a| !matches!(t.child(parent, a), Ok(Some(_))))
                .expect("an unbounded search finds a free name");
            let entry = Entry {
                path: t.child_path(parent, &aside)?,
                kind: EntryKind::File,
                content: None,
                target: None,
                meta: i.meta,
                link: None,
            };
            (parent, name, aside, entry)
        };
        self.push_ns(vec![CatalogOp::Put(entry.clone())])?;
        {
            let mut t = self.table();
            t.move_name(ino, (parent, &name), (parent, &aside))?;
            let i = t.get_mut(ino)?;
            // A new file here: its commit expects the empty file the namespace change makes.
            i.remote = None;
            i.overwritten = None;
            if let Some(mut e) = current {
                e.path = path.to_string();
                t.add_listed(parent, name.clone(), e)?;
            }
        }
        self.journal_paths(ino);
        self.invalidate(vec![
            Invalidation::Entry {
                parent,
                name: name.clone(),
            },
            Invalidation::Entry {
                parent,
                name: aside.clone(),
            },
            Invalidation::Inode(parent),
        ]);
        Ok(Some(entry.path))
    }
}

/// The `n`th candidate conflict name for `name`: `stem.conflict-HOST-UTCTIME-MOUNT[-n].ext`,
/// the extension kept so the copy opens with the same program; at most 255 bytes. `MOUNT`
/// tells apart mounts on one host (containers share host names), so two of them never put
/// their copies at one name.
fn conflict_name(name: &str, n: u32) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    let mut tag = format!(
        ".conflict-{}-{}-{}",
        host(),
        chrono::Utc::now().format("%Y%m%d-%H%M%S"),
        mount_tag()
    );
    if n > 0 {
        tag.push_str(&format!("-{n}"));
    }
    let room = 255usize.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{tag}{ext}", &stem[..cut])
}

/// Six hex digits drawn once per process.
fn mount_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let id = uuid::Uuid::now_v7().as_u128();
        format!("{:06x}", id & 0xff_ffff)
    })
}

/// This machine's name, as a file name part.
fn host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // fails.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let raw = if ok {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let clean: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(64)
        .collect();
    if clean.is_empty() {
        "host".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_keep_the_extension_and_fit_a_name() {
        let a = conflict_name("model.safetensors", 0);
        assert!(a.starts_with("model.conflict-"), "{a}");
        assert!(a.ends_with(".safetensors"), "{a}");
        assert!(conflict_name("model.safetensors", 2).ends_with("-2.safetensors"));
        let dot = conflict_name(".bashrc", 0);
        assert!(dot.starts_with(".bashrc.conflict-"), "{dot}");
        let plain = conflict_name("README", 0);
        assert!(plain.starts_with("README.conflict-"), "{plain}");
        assert!(
            plain
                .rsplit('-')
                .next()
                .unwrap()
                .chars()
                .all(|c| c.is_ascii_hexdigit()),
            "no extension invented: {plain}"
        );
        let long = conflict_name(&format!("{}.bin", "é".repeat(126)), 0);
        assert!(
            long.len() <= 255 && long.ends_with(".bin"),
            "{}",
            long.len()
        );
    }
}
