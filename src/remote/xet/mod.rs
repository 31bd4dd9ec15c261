//! The xet compose engine and the glue to xet-core's client that every `Cas` built on it
//! shares: chunking edits into a base file ([`rechunk`], [`compose`], [`window_compose`]),
//! packing new chunks into xorbs and shards ([`assemble`]), rewriting fragmented regions
//! ([`defrag`]), reading xorb footers ([`xorb_footer`]) and uploading whole files ([`upload`]).

pub mod assemble;
pub mod budget;
pub mod compose;
pub mod defrag;
pub mod rechunk;
pub mod upload;
pub mod window_compose;
pub mod xorb_footer;

pub use upload::{check_read, check_read_len, upload_files};

use crate::remote::RemoteError;

/// The one conversion of xet-core's errors (client, upload session, xorb parsing) into a
/// [`RemoteError`]: an HTTP status named in the message keeps its meaning (the client
/// reports statuses only as text), anything else is `Other`.
pub fn xet_err(e: impl std::fmt::Display) -> RemoteError {
    let s = e.to_string();
    if s.contains("401") || s.contains("Unauthorized") {
        RemoteError::Unauthenticated(s)
    } else if s.contains("403") || s.contains("Forbidden") {
        RemoteError::PermissionDenied(s)
    } else if s.contains("413") || s.contains("507") {
        RemoteError::Quota(s)
    } else if s.contains("429") {
        RemoteError::RateLimited(s)
    } else {
        RemoteError::Other(format!("xet: {s}"))
    }
}
