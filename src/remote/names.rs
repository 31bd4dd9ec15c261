//! Which paths a bucket can hold. One rule for both sides: `xetmount serve` refuses any other
//! path (never rewriting it), and a mount of a plain bucket refuses to create a name the
//! bucket could not take, at the syscall rather than at a commit that would fail forever.

/// Longest bucket path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest path segment (one file or directory name), in bytes.
pub const MAX_SEGMENT: usize = 255;

/// Whether `s` is a valid namespace or bucket name (the Hub's repository-name rules): what
/// `xetmount serve` accepts and a bucket URI may name.
pub fn valid_bucket_name(s: &str) -> bool {
    (1..=96).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

/// Why a path cannot be a bucket path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the path is empty")]
    Empty,
    #[error("the path is longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("a name in the path is longer than {MAX_SEGMENT} bytes")]
    SegmentTooLong,
    #[error("the path starts or ends with '/'")]
    EdgeSlash,
    #[error("the path has an empty segment ('//')")]
    EmptySegment,
    #[error("the path has a '.' or '..' segment")]
    DotSegment,
    #[error("the path holds a control character")]
    Control,
}

impl BadPath {
    /// The errno a syscall creating such a name answers.
    pub fn errno(&self) -> i32 {
        match self {
            BadPath::TooLong | BadPath::SegmentTooLong => libc::ENAMETOOLONG,
            _ => libc::EINVAL,
        }
    }
}

/// Check one name (a path segment) a bucket path could contain.
pub fn check_segment(seg: &str) -> Result<(), BadPath> {
    check_name(seg, false)
}

fn check_name(seg: &str, posix: bool) -> Result<(), BadPath> {
    if seg.is_empty() {
        return Err(BadPath::EmptySegment);
    }
    if seg.len() > MAX_SEGMENT {
        return Err(BadPath::SegmentTooLong);
    }
    if seg == "." || seg == ".." {
        return Err(BadPath::DotSegment);
    }
    let control = |c: char| if posix { c == '\0' } else { c.is_control() };
    if seg.chars().any(control) {
        return Err(BadPath::Control);
    }
    Ok(())
}

/// Check a whole bucket path: relative, `/`-separated, no empty, `.` or `..` segment, no
/// control character, within the length limits.
pub fn check_path(p: &str) -> Result<(), BadPath> {
    check(p, false)
}

/// Check a path of xetmount's own catalog, which keeps POSIX names: as [`check_path`], but
/// any character other than NUL may stand in a name.
pub fn check_posix_path(p: &str) -> Result<(), BadPath> {
    check(p, true)
}

fn check(p: &str, posix: bool) -> Result<(), BadPath> {
    if p.is_empty() {
        return Err(BadPath::Empty);
    }
    if p.len() > MAX_PATH {
        return Err(BadPath::TooLong);
    }
    if p.starts_with('/') || p.ends_with('/') {
        return Err(BadPath::EdgeSlash);
    }
    p.split('/').try_for_each(|seg| check_name(seg, posix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_hub_rules() {
        for ok in ["a", "my-bucket", "x_1.2", "A9"] {
            assert!(valid_bucket_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a.",
            "a--b",
            "a..b",
            "a/b",
            "a b",
            &"x".repeat(97),
        ] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }

    #[test]
    fn paths_are_refused_never_rewritten() {
        for ok in [
            "a",
            "dir/file.txt",
            "é/ü 1",
            "a/.hidden",
            "a/..b",
            &"x".repeat(255),
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        let long_seg = "x".repeat(256);
        let long_path = ["y"; 2049].join("/");
        for (bad, why) in [
            ("", BadPath::Empty),
            ("/leading.txt", BadPath::EdgeSlash),
            ("dir/", BadPath::EdgeSlash),
            ("a//b", BadPath::EmptySegment),
            ("a/./b", BadPath::DotSegment),
            ("..", BadPath::DotSegment),
            ("a\u{1}b", BadPath::Control),
            ("tab\there", BadPath::Control),
            ("nul\0", BadPath::Control),
            ("del\u{7f}", BadPath::Control),
            (long_seg.as_str(), BadPath::SegmentTooLong),
            (long_path.as_str(), BadPath::TooLong),
        ] {
            assert_eq!(check_path(bad), Err(why.clone()), "{bad:?}");
        }
        assert_eq!(check_posix_path("tab\there/\u{1}"), Ok(()));
        assert_eq!(check_posix_path("nul\0"), Err(BadPath::Control));
        assert_eq!(check_posix_path("/a"), Err(BadPath::EdgeSlash));
        assert_eq!(BadPath::SegmentTooLong.errno(), libc::ENAMETOOLONG);
        assert_eq!(BadPath::Control.errno(), libc::EINVAL);
    }
}
