//! Why one file's flush failed: the errno its writers see, the step that failed and the
//! underlying cause for the log, and whether retrying soon can help.

use std::fmt;

use crate::remote::RemoteError;
use crate::vfs::Errno;

/// The step of a flush that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading the staging file or its journal, filling holes from the base.
    Prepare,
    /// Uploading the whole staging file.
    Upload,
    /// Composing the new body from the base and the edits.
    Compose,
    /// The catalog transaction.
    Commit,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Prepare => "prepare (staging file)",
            Step::Upload => "upload",
            Step::Compose => "compose",
            Step::Commit => "catalog commit",
        })
    }
}

#[derive(Clone, Debug)]
pub struct FlushFailure {
    pub errno: Errno,
    pub step: Step,
    /// The underlying error's own text (the store's message, the I/O error).
    pub cause: String,
    /// Retrying soon cannot help: the store refused for a reason someone must fix
    /// (permission, quota, integrity, a base that no longer exists).
    pub permanent: bool,
    /// Another writer replaced the file; this version was moved aside (`flush/conflict.rs`).
    pub conflict: bool,
}

impl FlushFailure {
    pub fn remote(step: Step, e: RemoteError) -> Self {
        FlushFailure {
            errno: Errno::from(e.clone()),
            step,
            permanent: !e.is_transient(),
            cause: e.to_string(),
            conflict: false,
        }
    }

    /// A local failure (staging I/O). Disk full is the one the user must fix.
    pub fn local(step: Step, e: Errno) -> Self {
        FlushFailure {
            errno: e,
            step,
            cause: e.to_string(),
            permanent: e == Errno::ENOSPC,
            conflict: false,
        }
    }
}

impl fmt::Display for FlushFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step, self.cause)
    }
}
