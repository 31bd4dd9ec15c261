//! Which file bodies a caller may read or name. The CAS is shared by every bucket, so a
//! hash alone must not open a body: a body is readable through bucket B while B's catalog
//! names it, and from the moment it was uploaded to B (a shard accepted under a write token
//! for B: its uploader had the bytes). A body deleted from B is no longer readable through it
//! (unless it was uploaded there), so making a bucket public later reveals only what it holds.

use axum::http::HeaderMap;
use axum::response::Response;

use super::auth::Scope;
use super::hub::internal;
use super::repos::is_repo_key;
use super::Server;
use crate::remote::RemoteResult;

/// The hash of an empty body: every bucket holds it.
pub const EMPTY_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether `h` is written as a xet hash is: 64 lowercase hex digits.
pub fn is_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Server {
    /// Whether body `hash` may be read through bucket or repo `id`.
    pub async fn bucket_has_body(&self, id: &str, hash: &str) -> RemoteResult<bool> {
        if hash == EMPTY_HASH || self.buckets.was_uploaded(id, hash).await? {
            return Ok(true);
        }
        if is_repo_key(id) {
            return self.repos.references(id, hash).await;
        }
        if self.buckets.info(id).await?.is_none() {
            return Ok(false);
        }
        self.buckets
            .bucket(id)
            .await?
            .catalog
            .references(hash)
            .await
    }

    /// Whether the caller of `headers` may name body `hash` in bucket `id` (which it may
    /// write): the body is already readable through `id`, or through some bucket the caller
    /// may read.
    pub async fn may_add_body(
        &self,
        headers: &HeaderMap,
        id: &str,
        hash: &str,
    ) -> Result<bool, Response> {
        if self.bucket_has_body(id, hash).await.map_err(internal)? {
            return Ok(true);
        }
        // The buckets the body was ever recorded in; each is checked as it is now.
        for other in self.buckets.buckets_with(hash).await.map_err(internal)? {
            if other != id
                && self.may_read(headers, &other).await?
                && self.bucket_has_body(&other, hash).await.map_err(internal)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the caller of `headers` may read bucket or repo `key`.
    pub async fn may_read(&self, headers: &HeaderMap, key: &str) -> Result<bool, Response> {
        let caller = self.caller(headers)?;
        let private = if is_repo_key(key) {
            self.repos
                .info(key)
                .await
                .map_err(internal)?
                .map(|i| i.private)
        } else {
            self.buckets
                .info(key)
                .await
                .map_err(internal)?
                .map(|i| i.private)
        };
        Ok(Self::decide(caller.as_ref(), private, key, key, Scope::Read).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_64_lowercase_hex_digits() {
        assert!(is_hash(EMPTY_HASH));
        assert!(is_hash(&"a1".repeat(32)));
        for bad in ["zz", &"a".repeat(63), &"A".repeat(64), &"a".repeat(65), ""] {
            assert!(!is_hash(bad), "{bad}");
        }
    }
}
