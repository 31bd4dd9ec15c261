//! Who may use the bucket a route names. Every bucket route starts the same way: resolve
//! `{ns}/{name}` (or the CAS token's bucket) and check the caller's scope on it. These
//! extractors do that once, so a handler runs only for a caller it may serve; a refusal is
//! the extractor's rejection, answered before the handler (and its body) is looked at.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::{Caller, Scope};
use super::buckets::{Bucket, BucketInfo};
use super::hub::{bearer, error, internal};
use super::Server;

/// The scope a route needs, as a type so an extractor names it.
pub trait Need: Send + Sync + 'static {
    const SCOPE: Scope;
}

/// Reading a bucket (a write token also reads).
pub struct Read;
/// Writing a bucket.
pub struct Write;

impl Need for Read {
    const SCOPE: Scope = Scope::Read;
}

impl Need for Write {
    const SCOPE: Scope = Scope::Write;
}

/// The `{ns}` and `{name}` of a bucket route (other segments, such as a file path, are the
/// handler's).
#[derive(Deserialize)]
struct BucketPath {
    ns: String,
    name: String,
}

/// The bucket a route names, which its caller may use with scope `N` (see
/// [`Server::access`] for the refusals).
pub struct BucketAccess<N> {
    /// `ns/name`.
    pub id: String,
    pub info: BucketInfo,
    need: PhantomData<N>,
}

impl<N: Need> FromRequestParts<Arc<Server>> for BucketAccess<N> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> Result<Self, Response> {
        let Path(p) = Path::<BucketPath>::from_request_parts(parts, s)
            .await
            .map_err(IntoResponse::into_response)?;
        let id = format!("{}/{}", p.ns, p.name);
        let (info, _) = s.access(&parts.headers, &id, N::SCOPE).await?;
        Ok(BucketAccess {
            id,
            info,
            need: PhantomData,
        })
    }
}

/// [`BucketAccess`] with the bucket's catalog opened.
pub struct OpenBucket<N> {
    /// `ns/name`.
    pub id: String,
    pub bucket: Arc<Bucket>,
    need: PhantomData<N>,
}

impl<N: Need> FromRequestParts<Arc<Server>> for OpenBucket<N> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> Result<Self, Response> {
        let a = BucketAccess::<N>::from_request_parts(parts, s).await?;
        let bucket = s.buckets.bucket(&a.id).await.map_err(internal)?;
        Ok(OpenBucket {
            id: a.id,
            bucket,
            need: PhantomData,
        })
    }
}

/// The bucket a CAS route's token was minted for, with scope `N`: 401 without a valid
/// token, 403 for a read-only token on a write route.
pub struct CasToken<N> {
    pub bucket: String,
    need: PhantomData<N>,
}

impl<N: Need> FromRequestParts<Arc<Server>> for CasToken<N> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Server>) -> Result<Self, Response> {
        let Some((bucket, scope)) = bearer(&parts.headers).and_then(|t| s.auth.check_cas_token(t))
        else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                None,
                "missing, invalid or expired CAS token",
            ));
        };
        if scope < N::SCOPE {
            return Err(error(
                StatusCode::FORBIDDEN,
                None,
                "this CAS token is read-only",
            ));
        }
        Ok(CasToken {
            bucket,
            need: PhantomData,
        })
    }
}

impl Server {
    /// The caller, or 401 for an unknown token.
    pub(super) fn caller(&self, headers: &HeaderMap) -> Result<Option<Caller>, Response> {
        self.auth.caller(bearer(headers)).map_err(|()| {
            error(
                StatusCode::UNAUTHORIZED,
                None,
                "Invalid credentials in Authorization header",
            )
        })
    }

    /// The bucket, if the caller may `need` it (see [`Self::decide`] for the refusals).
    pub(super) async fn access(
        &self,
        headers: &HeaderMap,
        id: &str,
        need: Scope,
    ) -> Result<(BucketInfo, Option<Caller>), Response> {
        let caller = self.caller(headers)?;
        let info = self.buckets.info(id).await.map_err(internal)?;
        let private = info.as_ref().map(|i| i.private);
        Self::decide(caller.as_ref(), private, id, &format!("Bucket {id}"), need)?;
        Ok((info.expect("decide refuses a missing bucket"), caller))
    }

    /// Whether `caller` may `need` what `key` names (`what` in messages: "Bucket a/b"),
    /// given whether it exists and is private (`private`). Refusals say what is wrong without telling a
    /// caller about something it may not see: a missing bucket or repo and a private one the
    /// caller holds no right on get the same answer (404 `RepoNotFound`; 401 with that code
    /// to an anonymous caller, who may have forgotten a token); 401 for an anonymous caller
    /// who needs a token to write; 403 for a caller who may read but not write.
    pub(super) fn decide(
        caller: Option<&Caller>,
        private: Option<bool>,
        key: &str,
        what: &str,
        need: Scope,
    ) -> Result<(), Response> {
        let hidden = || match caller {
            Some(_) => error(
                StatusCode::NOT_FOUND,
                Some("RepoNotFound"),
                format!("{what} does not exist"),
            ),
            None => error(
                StatusCode::UNAUTHORIZED,
                Some("RepoNotFound"),
                format!("{what} does not exist, or it is private and needs a token"),
            ),
        };
        let Some(private) = private else {
            return Err(hidden());
        };
        let scope = caller.and_then(|c| c.scope_on(key));
        let can_read = scope.is_some() || !private;
        if scope >= Some(need) || (need == Scope::Read && can_read) {
            return Ok(());
        }
        Err(match (caller.is_some(), can_read) {
            (_, false) => hidden(),
            (false, true) => error(
                StatusCode::UNAUTHORIZED,
                None,
                format!("Writing to {} needs a token", lower_first(what)),
            ),
            (true, true) => error(
                StatusCode::FORBIDDEN,
                None,
                format!("Your token may read {} but not write it", lower_first(what)),
            ),
        })
    }
}

/// `what` with its first letter in lower case ("Bucket a/b" → "bucket a/b").
fn lower_first(what: &str) -> String {
    let mut c = what.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}
