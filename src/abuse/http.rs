//! The HTTP side of abuse protection: the [`Guard`] extractor the API routes take before
//! they authenticate, the [`Unauthenticated`] form that also rate-limits the address, and
//! the one `429` answer:
//!
//! ```text
//! HTTP/1.1 429 Too Many Requests
//! Retry-After: 60
//! {"error": {"code": "rate_limited", "message": "…", "retry_after": 60}}
//! ```
//!
//! A locked address or account gets exactly this too, before its credentials are looked
//! at: answering 401 to a wrong guess and something else to a right one while locked would
//! tell a guesser when they had it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Abuse, AbuseError, Account, FailureKind, Realm};

/// A refusal: `429` with `Retry-After`, or `503` when the check itself could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Locked or over the rate: wait this many seconds.
    TooMany { retry_after: u64, message: String },
    /// The store did not answer (the request is not let through unchecked).
    Unavailable,
    /// The server cannot tell the client's address (no peer address: a router served
    /// without `into_make_service_with_connect_info`).
    NoAddress,
}

impl Refusal {
    pub fn locked(retry_after: u64) -> Refusal {
        Refusal::TooMany {
            retry_after,
            message: "too many failed attempts; try again later".into(),
        }
    }
    pub fn rate_limited(retry_after: u64) -> Refusal {
        Refusal::TooMany {
            retry_after,
            message: "too many requests; slow down".into(),
        }
    }
}

/// The `429` answer (also used by the webhook endpoint).
pub fn too_many(retry_after: u64, message: &str) -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({"error": {
            "code": "rate_limited",
            "message": message,
            "retry_after": retry_after,
        }})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::TooMany {
                retry_after,
                message,
            } => too_many(retry_after, &message),
            Refusal::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": {
                    "code": "unavailable",
                    "message": "the server cannot check this request right now; try again shortly",
                }})),
            )
                .into_response(),
            Refusal::NoAddress => (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": {
                    "code": "internal",
                    "message": "internal error",
                }})),
            )
                .into_response(),
        }
    }
}

impl From<AbuseError> for Refusal {
    fn from(e: AbuseError) -> Refusal {
        tracing::error!(error = %e, "abuse check failed");
        Refusal::Unavailable
    }
}

/// Taken by an API handler before it authenticates: the client's address (see
/// [`super::addr`]) and claimed account were checked against the locks, and the handler
/// reports what authentication found with [`Guard::failure`] / [`Guard::success`]. After
/// authenticating a token, [`Guard::token`] takes one request from its rate limit.
#[derive(Clone)]
pub struct Guard {
    abuse: Arc<Abuse>,
    /// The client's address (the peer, or from `X-Forwarded-For` via a trusted proxy).
    pub address: IpAddr,
    /// The account the request claimed, if the claim reader found one.
    pub claimed: Option<Account>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("address", &self.address)
            .field("claimed", &self.claimed)
            .finish()
    }
}

impl Guard {
    /// Checks the locks of `address` and `claimed` (for handlers built without the
    /// extractor, and for tests).
    pub async fn check(
        abuse: Arc<Abuse>,
        address: IpAddr,
        claimed: Option<Account>,
    ) -> Result<Guard, Refusal> {
        if let Some(wait) = abuse.check(Realm::Api, address, claimed.clone()).await? {
            return Err(Refusal::locked(wait));
        }
        Ok(Guard {
            abuse,
            address,
            claimed,
        })
    }

    /// Authentication failed. `account`: what the credentials named (a user, a token id),
    /// if anything; defaults to the claimed account. The answer to send is the caller's
    /// (401 for this failure) unless a lock is now in force: then the refusal (429).
    pub async fn failure(
        &self,
        kind: FailureKind,
        account: Option<Account>,
    ) -> Result<(), Refusal> {
        let account = account.or_else(|| self.claimed.clone());
        let r = self
            .abuse
            .failure(Realm::Api, kind, self.address, account)
            .await?;
        match r.refused {
            Some(wait) => Err(Refusal::locked(wait)),
            None => Ok(()),
        }
    }

    /// Authentication succeeded for `account`: its failures are forgotten (never the
    /// address's).
    pub async fn success(&self, account: Account) -> Result<(), Refusal> {
        Ok(self.abuse.success(Realm::Api, account).await?)
    }

    /// A user signed in (dashboard or device flow): forgets their failures and flags a
    /// first sign-in from a new network.
    pub async fn signed_in(&self, user: Account) -> Result<(), Refusal> {
        Ok(self.abuse.signed_in(user, self.address).await?)
    }

    /// An authenticated API token makes a request: its rate limit, and the new-address
    /// anomaly. Limited after authentication, not before: token ids are not secret, and a
    /// bucket drained by forged requests naming an id would stop the real token.
    pub async fn token(&self, token: Account) -> Result<(), Refusal> {
        match self.abuse.token_request(token, self.address).await? {
            Some(wait) => Err(Refusal::rate_limited(wait)),
            None => Ok(()),
        }
    }

    pub fn abuse(&self) -> &Arc<Abuse> {
        &self.abuse
    }
}

/// A router state that holds the abuse checks (the server's `AppState`, or the checks
/// themselves).
pub trait HasAbuse {
    fn abuse(&self) -> Arc<Abuse>;
}

impl HasAbuse for Arc<Abuse> {
    fn abuse(&self) -> Arc<Abuse> {
        self.clone()
    }
}

/// The peer address of a request served with `into_make_service_with_connect_info`.
fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

impl<S> FromRequestParts<S> for Guard
where
    S: HasAbuse + Send + Sync,
{
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let abuse = state.abuse();
        let Some(peer) = peer(parts) else {
            tracing::error!("no peer address: serve the router with connect info");
            return Err(Refusal::NoAddress);
        };
        let address = abuse.client_address(peer, &parts.headers);
        let claimed = abuse.config.claims.as_ref().and_then(|f| f(parts));
        Guard::check(abuse, address, claimed).await
    }
}

/// [`Guard`] for routes anyone may call without credentials (device authorization, token
/// exchange, sign-in callbacks): also takes one request from the address's rate limit.
#[derive(Debug, Clone)]
pub struct Unauthenticated(pub Guard);

impl<S> FromRequestParts<S> for Unauthenticated
where
    S: HasAbuse + Send + Sync,
{
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let guard = Guard::from_request_parts(parts, state).await?;
        if let Some(wait) = guard.abuse.address_request(guard.address).await? {
            return Err(Refusal::rate_limited(wait));
        }
        Ok(Unauthenticated(guard))
    }
}
