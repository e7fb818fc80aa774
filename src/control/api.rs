//! The `/api/v1` routes and the one layer that authenticates and authorizes them.
//!
//! Every route is listed in [`ROUTES`] with the [`Action`] it performs (or none, for the
//! OAuth endpoints a client calls before it has a token). [`authorize`] runs before every
//! handler: it finds the route's entry, resolves the bearer token or session cookie to a
//! [`Principal`], resolves `{team}` to the principal's membership (a team they are not in is
//! a 404, exactly like a team that does not exist), and asks [`roles::allows`]. Handlers
//! only read the [`Principal`] it leaves in the request.
//!
//! Errors are `{"error": {"code", "message"}}` everywhere except the OAuth endpoints, which
//! answer in RFC 6749's shape (`{"error", "error_description"}`) because clients such as
//! the CLI and any OAuth library branch on those exact codes.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{
    DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, RawPathParams, Request, State,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::model::{self, Refreshed};
use super::openapi as doc;
use super::roles::{self, Action, Role};
use super::secrets::{self, Kind, ServerKey};
use super::{SecurityEvent, SecurityEvents};
use crate::abuse::{Abuse, Account, FailureKind, Realm};
use crate::store::tx::{Tx, TxError};
use crate::store::{Store, StoreError};

pub(crate) mod rest;

/// Request bodies larger than this are refused (413) before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// User-code entries that fail, per user and per address, before entry is refused for the
/// rest of the window.
pub const APPROVE_FAILURES: i64 = 10;
pub const APPROVE_WINDOW_MS: i64 = 15 * 60 * 1000;

/// One route: its method, its axum path, and the action it performs (`None`: no
/// authentication, the OAuth endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub action: Option<Action>,
}

const fn r(method: &'static str, path: &'static str, action: Option<Action>) -> RouteSpec {
    RouteSpec {
        method,
        path,
        action,
    }
}

/// Every `/api/v1` route. The router is checked against this list in a test, and the role
/// matrix test enumerates it.
pub const ROUTES: &[RouteSpec] = &[
    r("GET", "/api/v1/openapi.json", None),
    r("POST", "/api/v1/oauth/device_authorization", None),
    r("POST", "/api/v1/oauth/token", None),
    r("POST", "/api/v1/oauth/revoke", None),
    r(
        "POST",
        "/api/v1/device/approve",
        Some(Action::ApproveDevice),
    ),
    r("GET", "/api/v1/me", Some(Action::ViewSelf)),
    r("GET", "/api/v1/tokens", Some(Action::ManageOwnTokens)),
    r("POST", "/api/v1/tokens", Some(Action::ManageOwnTokens)),
    r(
        "DELETE",
        "/api/v1/tokens/{id}",
        Some(Action::ManageOwnTokens),
    ),
    r("GET", "/api/v1/sessions", Some(Action::ManageOwnSessions)),
    r(
        "DELETE",
        "/api/v1/sessions/{id}",
        Some(Action::ManageOwnSessions),
    ),
    r(
        "POST",
        "/api/v1/sessions/revoke-all",
        Some(Action::ManageOwnSessions),
    ),
    r("GET", "/api/v1/logins", Some(Action::ManageOwnSessions)),
    r(
        "DELETE",
        "/api/v1/logins/{id}",
        Some(Action::ManageOwnSessions),
    ),
    r(
        "GET",
        "/api/v1/teams/{team}/members",
        Some(Action::ViewMembers),
    ),
    r(
        "POST",
        "/api/v1/teams/{team}/members",
        Some(Action::InviteMembers),
    ),
    r(
        "PATCH",
        "/api/v1/teams/{team}/members/{user}",
        Some(Action::ChangeRoles),
    ),
    r(
        "DELETE",
        "/api/v1/teams/{team}/members/{user}",
        Some(Action::RemoveMembers),
    ),
    // Projects, environments, runs, env vars and the audit log (handlers in `rest`).
    r(
        "GET",
        "/api/v1/teams/{team}/projects",
        Some(Action::ViewProject),
    ),
    r(
        "POST",
        "/api/v1/teams/{team}/projects",
        Some(Action::ManageProjects),
    ),
    r(
        "GET",
        "/api/v1/teams/{team}/projects/{project}",
        Some(Action::ViewProject),
    ),
    r(
        "DELETE",
        "/api/v1/teams/{team}/projects/{project}",
        Some(Action::ManageProjects),
    ),
    r(
        "GET",
        "/api/v1/teams/{team}/projects/{project}/environments",
        Some(Action::ViewProject),
    ),
    r(
        "GET",
        "/api/v1/teams/{team}/projects/{project}/runs",
        Some(Action::ViewRuns),
    ),
    r(
        "GET",
        "/api/v1/teams/{team}/projects/{project}/runs/{run}",
        Some(Action::ViewRuns),
    ),
    r(
        "GET",
        "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars",
        Some(Action::ViewEnvVars),
    ),
    r(
        "PUT",
        "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars/{name}",
        Some(Action::ManageEnvVars),
    ),
    r(
        "DELETE",
        "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars/{name}",
        Some(Action::ManageEnvVars),
    ),
    r(
        "GET",
        "/api/v1/teams/{team}/audit-events",
        Some(Action::ViewAuditLog),
    ),
];

/// The session cookie's name: `__Host-` (bound to this host, Secure, path /) over TLS.
pub fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-telbase_session"
    } else {
        "telbase_session"
    }
}

/// The `Set-Cookie` value for a new session (for the sign-in to come).
pub fn session_cookie(secret: &secrecy::SecretString, secure: bool) -> String {
    format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax{}; Max-Age={}",
        session_cookie_name(secure),
        secret.expose_secret(),
        if secure { "; Secure" } else { "" },
        model::SESSION_IDLE_MS / 1000
    )
}

/// How the client's address is found from the peer and the request's headers.
pub type ClientAddress =
    Arc<dyn Fn(std::net::IpAddr, &HeaderMap) -> std::net::IpAddr + Send + Sync>;

/// Everything the control plane's handlers share.
pub struct ControlState {
    pub store: Mutex<Store>,
    pub key: ServerKey,
    pub events: Arc<dyn SecurityEvents>,
    /// Unix ms now (injectable: tests move time).
    pub clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// This server's public base URL, for `verification_uri`.
    pub public_url: String,
    /// Cookies are `Secure` and `__Host-` (the server speaks TLS, or sits behind a TLS proxy).
    pub secure_cookies: bool,
    /// The client's address from the peer's and the request's headers: `telbase serve`
    /// gives abuse protection's (`X-Forwarded-For` believed only from trusted proxies), so
    /// limits and security events name the client, not the proxy. Default: the peer.
    pub client_address: ClientAddress,
    /// The master keys env var values are sealed with, loaded when a value is set (so a
    /// keyring file rotated meanwhile is read afresh). Default: `TELBASE_MASTER_KEY_FILE` /
    /// `TELBASE_MASTER_KEY`, as the worker reads them; `Err` says why there are none.
    pub master_keys: MasterKeys,
    /// Failure counters, lockouts and rate limits (`crate::abuse`, in the store, shared by
    /// replicas): bad tokens and sessions per address, a token bucket per token, a rate per
    /// address on the OAuth endpoints and on user-code entry. `telbase serve` sets it;
    /// `None` (the default) checks nothing.
    pub abuse: Option<Arc<Abuse>>,
}

/// Loads the envelope store's master keys (see [`ControlState::master_keys`]).
pub type MasterKeys =
    Arc<dyn Fn() -> Result<Box<dyn crate::secrets::envelope::KeyProvider>, String> + Send + Sync>;

impl ControlState {
    pub fn new(store: Store, key: ServerKey, public_url: String, secure_cookies: bool) -> Self {
        ControlState {
            store: Mutex::new(store),
            key,
            events: Arc::new(super::TracingEvents),
            clock: Arc::new(|| chrono::Utc::now().timestamp_millis()),
            public_url: public_url.trim_end_matches('/').to_owned(),
            secure_cookies,
            client_address: Arc::new(|peer, _| peer),
            master_keys: Arc::new(|| {
                crate::secrets::envelope::key_provider_from_vars(|k| std::env::var(k).ok())
                    .map_err(|e| e.to_string())
            }),
            abuse: None,
        }
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }
}

/// The shared state handlers take.
pub type App = Arc<ControlState>;

/// An error in the one JSON shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 429 for a locked address or account (the same answer whatever the credentials).
    pub fn locked(wait: u64) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed attempts from this address; try again later",
        );
        e.retry_after = Some(i64::try_from(wait).unwrap_or(i64::MAX));
        e
    }
    fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, invalid, expired or revoked credentials: sign in again (`telbase login`)",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "control plane: the store failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the store did not answer; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"telbase\""),
            );
        }
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.max(1).to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// A JSON body whose every rejection (malformed, wrong type, too large, wrong content
/// type) is answered in the one error shape.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(e) => {
                let status = e.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "bad_request",
                };
                Err(ApiError::new(status, code, e.body_text()))
            }
        }
    }
}

/// An OAuth error (RFC 6749 5.2 / RFC 8628 3.5).
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

fn oauth(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        status: StatusCode::BAD_REQUEST,
        error,
        description: description.into(),
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> OAuthError {
        tracing::error!(error = %e, "control plane: the store failed");
        OAuthError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: "the store did not answer; try again".into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// A form body (the OAuth endpoints), rejections in OAuth's shape.
pub struct OForm<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for OForm<T> {
    type Rejection = OAuthError;
    async fn from_request(req: Request, state: &S) -> Result<Self, OAuthError> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(v)) => Ok(OForm(v)),
            Err(e) => Err(OAuthError {
                status: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                },
                error: "invalid_request",
                description: e.body_text(),
            }),
        }
    }
}

/// How a principal proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Via {
    /// A long-lived API token (by id) bound to a team.
    ApiToken { id: String, team_id: String },
    /// A device-flow access token, bound to a team; `family` is its grant.
    AccessToken {
        id: String,
        team_id: String,
        #[serde(skip)]
        family: Option<String>,
    },
    /// A browser session (by its public id).
    Session { id: String },
}

/// Who is asking, and with which role in the team the route is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: model::User,
    /// The team of `{team}` in the path (`None` for routes about oneself).
    pub team: Option<model::Team>,
    /// The role there, capped by the token's cap.
    pub role: Option<Role>,
    pub via: Via,
    pub address: String,
}

impl Principal {
    /// The security event of something this principal did successfully.
    fn succeeded(&self, action: &'static str, target: Option<String>) -> SecurityEvent {
        SecurityEvent {
            action,
            actor: Some(self.user.id.clone()),
            address: self.address.clone(),
            target,
            outcome: "success",
        }
    }

    /// The team a token is bound to (sessions are not bound to one).
    pub fn bound_team(&self) -> Option<&str> {
        match &self.via {
            Via::ApiToken { team_id, .. } | Via::AccessToken { team_id, .. } => Some(team_id),
            Via::Session { .. } => None,
        }
    }
}

/// Runs `f` on the store off the async threads.
async fn db<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&mut Store, &ServerKey) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = app.store.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s, &app.key)
    })
    .await
    .map_err(|e| StoreError::Corrupt {
        path: "control plane".into(),
        what: format!("a store task failed: {e}"),
    })?
}

/// Runs an audited change and its audit record in ONE store transaction: `change` runs on
/// the transaction (every `model::` function takes it, as it takes a [`Store`]); when it
/// answers `Ok(Ok(v))`, `event(&v)` is recorded in the audit log inside the same
/// transaction, and both commit together. A failed audit write rolls the change back and
/// answers 503 `audit_unavailable`, so a change is never done without its record (nor a
/// record written for a change that did not happen). `Ok(Err(e))` from `change` (a refusal:
/// not found, conflict...) rolls back and answers `e`, recording nothing; record a failure
/// with [`record`] if it needs one.
///
/// Use this for every request that changes something the audit log must show:
///
/// ```text
/// let row = db_audited(
///     &app,
///     move |tx, key| Ok(Ok(model::create_thing(tx, key, &args, now)?)),
///     move |row| p.succeeded("thing.create", Some(row.id.clone())),
/// )
/// .await?;
/// ```
pub async fn db_audited<T: Send + 'static, E: AuditAnswer>(
    app: &App,
    change: impl FnOnce(&mut Tx<'_>, &ServerKey) -> Result<Result<T, E>, StoreError> + Send + 'static,
    event: impl FnOnce(&T) -> SecurityEvent + Send + 'static,
) -> Result<T, E> {
    let app = app.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut s = app.store.lock().unwrap_or_else(|e| e.into_inner());
        let (key, events) = (&app.key, app.events.clone());
        s.transaction(|tx| {
            let v = change(tx, key)?.map_err(TxError::Abort)?;
            let ev = event(&v);
            events
                .record_in(tx, &ev)
                .map_err(|e| TxError::Abort(audit_failed(&ev, &e)))?;
            Ok(v)
        })
    })
    .await;
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(TxError::Abort(e))) => Err(e),
        Ok(Err(TxError::Store(e))) => Err(E::store_failed(e)),
        Err(e) => Err(E::store_failed(StoreError::Corrupt {
            path: "control plane".into(),
            what: format!("a store task failed: {e}"),
        })),
    }
}

/// For a change that cannot share a store transaction with its audit record (stored values
/// go through the secret store's own statements; [`db_audited`] is for the rest): a
/// `started` record of the event is written FIRST, so a log that cannot be written (503)
/// stops the change before it happens, as the must-write rule asks; then the change runs,
/// and its `success` or `failure` record follows. The log thus never claims a change that
/// did not happen: should the process stop in between, or the second write fail (logged
/// here), the `started` record stands alone and says just that. Check the input before
/// calling it: a mistyped request is an error, not an audit entry.
pub async fn intent_first<T, E: AuditAnswer>(
    app: &App,
    event: SecurityEvent,
    change: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = SecurityEvent {
        outcome: "started",
        ..event.clone()
    };
    if let Err(e) = app.events.record(&started) {
        return Err(audit_failed(&started, &e));
    }
    let out = change.await;
    let ended = SecurityEvent {
        outcome: if out.is_ok() {
            event.outcome
        } else {
            "failure"
        },
        ..event
    };
    if let Err(e) = app.events.record(&ended) {
        tracing::error!(error = %e, action = ended.action, outcome = ended.outcome, "cannot record the end of a change");
    }
    out
}

/// What an audited request answers when its record or the store fails: the API's JSON
/// error, or the dashboard's page (`crate::web::Page`), so [`db_audited`] and
/// [`intent_first`] serve both.
pub trait AuditAnswer: Send + 'static {
    /// The audit log cannot be written: nothing was changed (503).
    fn audit_unavailable() -> Self;
    /// The store failed (its error is logged by the implementation, never shown).
    fn store_failed(e: StoreError) -> Self;
}

impl AuditAnswer for ApiError {
    fn audit_unavailable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot be written; the request was not carried out",
        )
    }
    fn store_failed(e: StoreError) -> Self {
        e.into()
    }
}

fn audit_failed<E: AuditAnswer>(event: &SecurityEvent, e: &str) -> E {
    tracing::error!(error = %e, action = event.action, "cannot record a security event");
    E::audit_unavailable()
}

/// The audit target of a membership: `TEAM_ID/USER_ID`. The team's id leads, as in the
/// targets of its projects and env vars, so a team's audit view finds its own member
/// changes by prefix and never another team's (a person may be in several teams).
pub fn member_target(team_id: &str, user_id: &str) -> String {
    format!("{team_id}/{user_id}")
}

/// Records an event that has no change to go with (a failure, a refusal) on its own; a
/// change and its event go through [`db_audited`] instead.
pub fn record(app: &App, event: SecurityEvent) -> Result<(), ApiError> {
    app.events.record(&event).map_err(|e| {
        tracing::error!(error = %e, action = event.action, "cannot record a security event");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot be written; the request was not carried out",
        )
    })
}

fn peer_ip(app: &ControlState, req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| (app.client_address)(c.0.ip(), req.headers()))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The authentication and authorization layer (see the module doc).
pub async fn authorize(
    State(app): State<App>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    // Deny by default: only what ROUTES lists gets through. A path it does not list is a
    // 404 and a method it does not list on a known path a 405 naming the allowed ones, both
    // in the one error shape (axum would otherwise answer HEAD through the GET handler,
    // which has no principal, and unknown paths in plain text).
    let path = matched.map(|m| m.as_str().to_owned()).unwrap_or_default();
    let known: Vec<&RouteSpec> = ROUTES.iter().filter(|s| s.path == path).collect();
    if known.is_empty() {
        return ApiError::not_found("route").into_response();
    }
    let Some(spec) = known
        .iter()
        .find(|s| s.method == req.method().as_str())
        .copied()
    else {
        return method_not_allowed(&known);
    };
    let ip = peer_ip(&app, &req);
    let address = ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "unknown".into());
    let Some(action) = spec.action else {
        // The OAuth endpoints: anyone may call them, so each address has a rate limit.
        if let (Some(abuse), Some(ip)) = (&app.abuse, ip)
            && spec.path.starts_with("/api/v1/oauth/")
        {
            match abuse.address_request(ip).await {
                Ok(None) => {}
                Ok(Some(wait)) => return oauth_too_many(wait),
                Err(e) => {
                    tracing::error!(error = %e, "abuse check failed");
                    return OAuthError {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        error: "temporarily_unavailable",
                        description: "the server cannot check this request right now; try again"
                            .into(),
                    }
                    .into_response();
                }
            }
        }
        return next.run(req).await;
    };
    // A locked address is refused before its credentials are looked at (a lock must not
    // tell a guesser whether the guess was right). User-code entry also has a rate per
    // address: a user code is short, so guesses must be slow from anywhere.
    if let (Some(abuse), Some(ip)) = (&app.abuse, ip) {
        match abuse.check(Realm::Api, ip, None).await {
            Ok(None) => {}
            Ok(Some(wait)) => return ApiError::locked(wait).into_response(),
            Err(e) => return abuse_down(e).into_response(),
        }
        if action == Action::ApproveDevice {
            match abuse.address_request(ip).await {
                Ok(None) => {}
                Ok(Some(wait)) => {
                    let mut e = ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many codes entered from this address; slow down",
                    );
                    e.retry_after = Some(i64::try_from(wait).unwrap_or(i64::MAX));
                    return e.into_response();
                }
                Err(e) => return abuse_down(e).into_response(),
            }
        }
    }
    let team_name = params.ok().and_then(|p| {
        p.iter()
            .find(|(k, _)| *k == "team")
            .map(|(_, v)| v.to_owned())
    });
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|v| v.trim().to_owned());
    // Only the name this server sets: with `Secure` cookies a plain `telbase_session`
    // could be planted by a sibling subdomain or a plain-HTTP origin (login CSRF), which
    // the `__Host-` prefix rules out.
    let session = cookie(req.headers(), session_cookie_name(app.secure_cookies)).map(str::to_owned);
    let now = app.now();
    let addr = address.clone();
    let resolved = db(&app, move |s, key| {
        let (user_id, via, cap) = if let Some(token) = bearer {
            if !(secrets::well_formed(Kind::Api, &token)
                || secrets::well_formed(Kind::Access, &token))
            {
                return Ok(Err(ApiError::unauthorized()));
            }
            let Some(t) = model::use_token(s, key, &token, now, &addr)? else {
                return Ok(Err(ApiError::unauthorized()));
            };
            let via = if t.kind == "api" {
                Via::ApiToken {
                    id: t.id.clone(),
                    team_id: t.team_id.clone(),
                }
            } else {
                Via::AccessToken {
                    id: t.id.clone(),
                    team_id: t.team_id.clone(),
                    family: t.family.clone(),
                }
            };
            (t.user_id, via, Some((t.team_id, t.role_cap)))
        } else if let Some(cookie) = session.filter(|c| secrets::well_formed(Kind::Session, c)) {
            let Some(sess) = model::use_session(s, key, &cookie, now)? else {
                return Ok(Err(ApiError::unauthorized()));
            };
            (sess.user_id, Via::Session { id: sess.id }, None)
        } else {
            return Ok(Err(ApiError::unauthorized()));
        };
        let Some(user) = model::user(s, &user_id)? else {
            return Ok(Err(ApiError::unauthorized()));
        };
        let (team, role) = match &team_name {
            Some(name) => {
                let Some(team) = model::team_by_name(s, name)? else {
                    return Ok(Err(ApiError::not_found("team")));
                };
                let Some(mut role) = model::role_in(s, &team.id, &user.id)? else {
                    // Not a member: the team does not exist, as far as they can tell.
                    return Ok(Err(ApiError::not_found("team")));
                };
                if let Some((bound, c)) = &cap {
                    if *bound != team.id {
                        return Ok(Err(ApiError::not_found("team")));
                    }
                    role = role.min(*c);
                }
                (Some(team), Some(role))
            }
            None => match &cap {
                Some((bound, c)) => (None, model::role_in(s, bound, &user.id)?.map(|r| r.min(*c))),
                None => (None, None),
            },
        };
        Ok(Ok(Principal {
            user,
            team,
            role,
            via,
            address: addr,
        }))
    })
    .await;
    let principal = match resolved {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            if e.status == StatusCode::UNAUTHORIZED {
                let _ = app.events.record(&SecurityEvent {
                    action: "auth.failure",
                    actor: None,
                    address,
                    target: None,
                    outcome: "failure",
                });
                // Bad tokens and sessions count against the address (in the store, so
                // every replica sees them); the failure that starts a lock answers 429,
                // and the lock's start is an anomaly in the audit log.
                if let (Some(abuse), Some(ip)) = (&app.abuse, ip) {
                    match abuse
                        .failure(Realm::Api, FailureKind::BadToken, ip, None)
                        .await
                    {
                        Ok(r) => {
                            if let Some(wait) = r.refused {
                                return ApiError::locked(wait).into_response();
                            }
                        }
                        Err(e) => return abuse_down(e).into_response(),
                    }
                }
            }
            return e.into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    // A token whose team membership is gone has no role anywhere: refuse it outright.
    if principal.bound_team().is_some() && principal.role.is_none() {
        return ApiError::unauthorized().into_response();
    }
    // Routes about oneself need no team role: every role may do them (roles::allows says
    // so for all four), so the weakest role stands in.
    // API access is logged (security page 5.1, "all access is logged and auditable", and
    // 7.2, "API access logs"): the route, never its parameters' values. A team route's
    // target leads with the team's id, so the team's audit view holds its own accesses.
    let route_target = match &principal.team {
        Some(t) => format!("{}/{}:{}", t.id, spec.method, spec.path),
        None => format!("{}:{}", spec.method, spec.path),
    };
    if !roles::allows(principal.role.unwrap_or(Role::Viewer), action) {
        // Best effort: the refusal stands whether or not it could be recorded.
        let _ = app.events.record(&SecurityEvent {
            action: "api.denied",
            actor: Some(principal.user.id.clone()),
            address: principal.address.clone(),
            target: Some(route_target),
            outcome: "denied",
        });
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "your role ({}) does not allow this",
                principal.role.map(Role::as_str).unwrap_or("none")
            ),
        )
        .into_response();
    }
    // A token's rate limit (after authentication: token ids are not secret, so forged
    // requests naming one must not drain the real token's bucket); its first use from a
    // new address is flagged as an anomaly by the same call.
    if let (Some(abuse), Some(ip)) = (&app.abuse, ip) {
        let token = match &principal.via {
            Via::ApiToken { id, .. } | Via::AccessToken { id, .. } => Some(id.clone()),
            Via::Session { .. } => None,
        };
        if let Some(id) = token {
            match abuse.token_request(Account::token(&id), ip).await {
                Ok(None) => {}
                Ok(Some(wait)) => {
                    let mut e = ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many requests with this token; slow down",
                    );
                    e.retry_after = Some(i64::try_from(wait).unwrap_or(i64::MAX));
                    return e.into_response();
                }
                Err(e) => return abuse_down(e).into_response(),
            }
        }
    }
    // Recorded before the handler runs, and required: a request that cannot be logged is
    // not served (503), as for every audited request. Off the async threads: the write is
    // a store transaction, and one is made for every request.
    let access = SecurityEvent {
        action: "api.access",
        actor: Some(principal.user.id.clone()),
        address: principal.address.clone(),
        target: Some(route_target),
        outcome: "success",
    };
    let logger = app.clone();
    let logged = tokio::task::spawn_blocking(move || record(&logger, access)).await;
    match logged {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e.into_response(),
        Err(_) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit log cannot be written; the request was not carried out",
            )
            .into_response();
        }
    }
    // A sensitive change made with a browser session rotates it, as the dashboard does:
    // the session id seen before the change is dead after it, and the response carries
    // the new cookie.
    let rotation = match &principal.via {
        Via::Session { id } if rotates_session(spec) => Some((
            principal.user.id.clone(),
            id.clone(),
            principal.address.clone(),
            req.headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
        )),
        _ => None,
    };
    req.extensions_mut().insert(principal);
    let mut resp = next.run(req).await;
    if let Some((uid, old, addr, ua)) = rotation
        && resp.status().is_success()
    {
        let now = app.now();
        // A session ended meanwhile (a revoke-all elsewhere) stays ended.
        let rotated = db(&app, move |s, key| {
            rotate_session_tx(s, key, &uid, &old, &ua, &addr, now)
        })
        .await;
        match rotated {
            Ok(Some((_, secret))) => {
                if let Ok(v) = HeaderValue::from_str(&session_cookie(&secret, app.secure_cookies)) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            Ok(None) => {}
            // The change stands, and the old session with it (the rotation is one
            // transaction). Said in the log, never hidden.
            Err(e) => {
                tracing::error!(error = %e, "could not rotate the session after a sensitive change")
            }
        }
    }
    resp
}

/// [`model::rotate_session`] in a transaction of its own: the old session ends and the new
/// one starts together, under the user's lock.
pub fn rotate_session_tx(
    s: &mut Store,
    key: &ServerKey,
    user_id: &str,
    old: &str,
    user_agent: &str,
    address: &str,
    now: i64,
) -> Result<Option<(model::SessionRow, secrecy::SecretString)>, StoreError> {
    s.transaction(|tx| {
        model::rotate_session(tx, key, user_id, old, user_agent, address, now)
            .map_err(TxError::<std::convert::Infallible>::Store)
    })
    .map_err(|e| match e {
        TxError::Store(e) => e,
        TxError::Abort(never) => match never {},
    })
}

/// The changes after which a browser session is rotated (the dashboard's list): device
/// approval or denial, token creation and revocation, invitations, role changes and
/// removals. Not `revoke-all` or a session's own revocation: those end it.
fn rotates_session(spec: &RouteSpec) -> bool {
    spec.method != "GET"
        && matches!(
            spec.action,
            Some(
                Action::ApproveDevice
                    | Action::ManageOwnTokens
                    | Action::InviteMembers
                    | Action::ChangeRoles
                    | Action::RemoveMembers
            )
        )
}

/// The abuse check could not be made: the request is not let through unchecked (503).
fn abuse_down(e: crate::abuse::AbuseError) -> ApiError {
    tracing::error!(error = %e, "abuse check failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the server cannot check this request right now; try again",
    )
}

/// 405 for a method ROUTES does not list on a known path, with `Allow` naming the ones it
/// does.
fn method_not_allowed(known: &[&RouteSpec]) -> Response {
    let allow = known
        .iter()
        .map(|s| s.method)
        .collect::<Vec<_>>()
        .join(", ");
    let mut resp = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this method is not allowed here; allowed: {allow}"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&allow) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// 429 in OAuth's error shape, for the OAuth endpoints' address rate limit.
fn oauth_too_many(wait: u64) -> Response {
    let mut resp = OAuthError {
        status: StatusCode::TOO_MANY_REQUESTS,
        error: "rate_limited",
        description: "too many requests from this address; slow down".into(),
    }
    .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait.max(1)));
    resp
}

/// Rewrites any error answer that is not JSON (axum's own rejections of a path, query or
/// body it could not read, which are plain text) into the one error shape, so a client
/// never meets a second format. JSON answers (ours, and OAuth's) pass untouched.
async fn one_error_shape(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        s if s.is_server_error() => "unavailable",
        _ => "bad_request",
    };
    let message = if text.trim().is_empty() || status.is_server_error() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text.trim().to_owned()
    };
    let mut out = ApiError::new(status, code, message).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// The `/api/v1` router.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .route(
            "/api/v1/oauth/device_authorization",
            post(device_authorization),
        )
        .route("/api/v1/oauth/token", post(token))
        .route("/api/v1/oauth/revoke", post(revoke))
        .route("/api/v1/device/approve", post(approve))
        .route("/api/v1/me", get(me))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/sessions", get(list_sessions))
        .route("/api/v1/sessions/{id}", delete(revoke_session))
        .route("/api/v1/sessions/revoke-all", post(revoke_all))
        .route("/api/v1/logins", get(list_logins))
        .route("/api/v1/logins/{id}", delete(revoke_login))
        .route(
            "/api/v1/teams/{team}/members",
            get(list_members).post(invite_member),
        )
        .route(
            "/api/v1/teams/{team}/members/{user}",
            patch(change_role).delete(remove_member),
        )
        .merge(rest::routes())
        // Everything else under /api/v1 reaches `authorize`, which answers 404 for a path
        // ROUTES does not list and 405 for a method it does not list.
        .route("/api/v1", axum::routing::any(not_found))
        .route("/api/v1/", axum::routing::any(not_found))
        .route("/api/v1/{*rest}", axum::routing::any(not_found))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed here",
            )
        })
        .layer(axum::middleware::from_fn_with_state(app.clone(), authorize))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(one_error_shape))
        .layer(axum::middleware::map_response(no_store))
        .with_state(app)
}

async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc::json()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

/// API answers carry credentials and personal data: never cached.
async fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

// ---- OAuth: device authorization (RFC 8628), token (RFC 6749), revocation (RFC 7009) ----

#[derive(Deserialize, utoipa::ToSchema)]
pub struct DeviceRequest {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    client_id: String,
    #[serde(default)]
    #[schema(max_length = 200)]
    scope: Option<String>,
}

fn valid_client_id(c: &str) -> bool {
    (1..=64).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[utoipa::path(post, path = "/api/v1/oauth/device_authorization", tag = "oauth", security(()), request_body(content = DeviceRequest, content_type = "application/x-www-form-urlencoded"), responses((status = 200, description = "Codes for the device login (RFC 8628 3.2)", body = crate::control::openapi::DeviceAuthorization), (status = 400, description = "OAuth error", body = crate::control::openapi::OAuthErrorBody)))]
pub(crate) async fn device_authorization(
    State(app): State<App>,
    OForm(body): OForm<DeviceRequest>,
) -> Result<Response, OAuthError> {
    if !valid_client_id(&body.client_id) {
        return Err(oauth("invalid_client", "unknown client_id"));
    }
    let scope = body.scope.unwrap_or_default();
    if scope.len() > 200 {
        return Err(oauth("invalid_scope", "scope too long"));
    }
    let now = app.now();
    // Unauthenticated: `authorize` took one request from the address's bucket (abuse
    // protection) before this ran; expired authorizations are deleted on every creation.
    let (client, sc) = (body.client_id.clone(), scope.clone());
    let (device, user) = db(&app, move |s, key| {
        model::create_device(s, key, &client, &sc, now)
    })
    .await?;
    let verify = format!("{}/device", app.public_url);
    let user_code = user.expose_secret().to_owned();
    let mut resp = axum::Json(doc::DeviceAuthorization {
        device_code: device.expose_secret().to_owned(),
        verification_uri_complete: format!("{verify}?user_code={user_code}"),
        user_code,
        verification_uri: verify,
        expires_in: model::DEVICE_TTL_MS / 1000,
        interval: model::DEVICE_INTERVAL_S,
    })
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct TokenRequest {
    #[schema(pattern = "^(urn:ietf:params:oauth:grant-type:device_code|refresh_token)$")]
    grant_type: String,
    #[serde(default)]
    device_code: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn grant_response(g: &model::Grant) -> Response {
    let mut resp = axum::Json(doc::TokenAnswer {
        access_token: g.access.expose_secret().to_owned(),
        token_type: "Bearer".into(),
        expires_in: g.expires_in,
        refresh_token: g.refresh.expose_secret().to_owned(),
    })
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[utoipa::path(post, path = "/api/v1/oauth/token", tag = "oauth", security(()), request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"), responses((status = 200, description = "Tokens (RFC 6749 5.1)", body = crate::control::openapi::TokenAnswer), (status = 400, description = "OAuth error, e.g. authorization_pending or slow_down", body = crate::control::openapi::OAuthErrorBody)))]
pub(crate) async fn token(
    State(app): State<App>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    OForm(body): OForm<TokenRequest>,
) -> Result<Response, OAuthError> {
    let now = app.now();
    let address = address_of(&app, peer, &headers);
    match body.grant_type.as_str() {
        DEVICE_GRANT => {
            let code = body
                .device_code
                .filter(|c| secrets::well_formed(Kind::DeviceCode, c))
                .ok_or_else(|| oauth("invalid_grant", "unknown device_code"))?;
            let client = body.client_id.unwrap_or_default();
            let out = db(&app, move |s, key| {
                let Some(d) = model::device_by_code(s, key, &code)? else {
                    return Ok(Err(oauth("invalid_grant", "unknown device_code")));
                };
                if d.client_id != client {
                    return Ok(Err(oauth(
                        "invalid_grant",
                        "the device_code was issued to another client",
                    )));
                }
                if d.expires_at <= now {
                    return Ok(Err(oauth(
                        "expired_token",
                        "the device code expired; start `telbase login` again",
                    )));
                }
                if let Some(interval) = model::device_polled(s, &d, now)? {
                    return Ok(Err(oauth(
                        "slow_down",
                        format!("polling too fast; wait {interval} seconds between requests"),
                    )));
                }
                match d.status.as_str() {
                    "pending" => Ok(Err(oauth(
                        "authorization_pending",
                        "waiting for the user to approve",
                    ))),
                    "denied" => Ok(Err(oauth("access_denied", "the user denied the request"))),
                    "approved" if model::device_consume(s, &d.id)? => {
                        let (u, t) = (d.user_id.unwrap_or_default(), d.team_id.unwrap_or_default());
                        Ok(Ok(model::issue_grant(
                            s,
                            key,
                            &d.id,
                            &u,
                            &t,
                            &d.client_id,
                            now,
                        )?))
                    }
                    _ => Ok(Err(oauth(
                        "invalid_grant",
                        "the device code was already used",
                    ))),
                }
            })
            .await??;
            let _ = app.events.record(&SecurityEvent {
                action: "auth.device_login",
                actor: None,
                address: address.clone(),
                target: None,
                outcome: "success",
            });
            Ok(grant_response(&out))
        }
        "refresh_token" => {
            let rt = body
                .refresh_token
                .filter(|c| secrets::well_formed(Kind::Refresh, c))
                .ok_or_else(|| oauth("invalid_grant", "unknown refresh_token"))?;
            // One transaction: the winner's conditional UPDATE keeps the token's row locked
            // until its new grant is committed, so a concurrent reuse waits, then finds the
            // token used and revokes the family INCLUDING the grant just issued (run apart,
            // the reuse's revocation could land between them and miss it).
            match db(&app, move |s, key| model::refresh_once(s, key, &rt, now)).await? {
                Refreshed::New(g) => Ok(grant_response(&g)),
                Refreshed::Invalid => Err(oauth(
                    "invalid_grant",
                    "the refresh token is unknown, expired or revoked",
                )),
                Refreshed::Reused => {
                    let _ = app.events.record(&SecurityEvent {
                        action: "auth.refresh_reuse",
                        actor: None,
                        address: address.clone(),
                        target: None,
                        outcome: "failure",
                    });
                    Err(oauth(
                        "invalid_grant",
                        "the refresh token was already used; every token of this login is revoked — run `telbase login` again",
                    ))
                }
            }
        }
        _ => Err(oauth(
            "unsupported_grant_type",
            "grant_type must be the device code grant or refresh_token",
        )),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RevokeRequest {
    token: String,
    #[serde(default)]
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

/// RFC 7009: 200 whether or not the token was known (no oracle for token validity).
#[utoipa::path(post, path = "/api/v1/oauth/revoke", tag = "oauth", security(()), request_body(content = RevokeRequest, content_type = "application/x-www-form-urlencoded"), responses((status = 200, description = "Revoked, or was not a live token (RFC 7009)"), (status = 400, description = "OAuth error", body = crate::control::openapi::OAuthErrorBody)))]
pub(crate) async fn revoke(
    State(app): State<App>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    OForm(body): OForm<RevokeRequest>,
) -> Result<Response, OAuthError> {
    let now = app.now();
    let address = address_of(&app, peer, &headers);
    let t = body.token;
    db(&app, move |s, key| {
        if secrets::well_formed(Kind::Refresh, &t) {
            if let Some(f) = model::refresh_family(s, key, &t)? {
                model::revoke_family(s, &f, now)?;
            }
        } else if (secrets::well_formed(Kind::Access, &t) || secrets::well_formed(Kind::Api, &t))
            && let Some(row) = model::token_by_secret(s, key, &t)?
        {
            match &row.family {
                Some(f) => model::revoke_family(s, f, now)?,
                None => {
                    model::revoke_token(s, &row.id, now)?;
                }
            }
        }
        Ok(())
    })
    .await?;
    let _ = app.events.record(&SecurityEvent {
        action: "auth.logout",
        actor: None,
        address,
        target: None,
        outcome: "success",
    });
    Ok(StatusCode::OK.into_response())
}

fn address_of(
    app: &ControlState,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: &HeaderMap,
) -> String {
    peer.map(|p| (app.client_address)(p.0.0.ip(), headers).to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ApproveRequest {
    /// Eight letters of `BCDFGHJKLMNPQRSTVWXZ`, any case, optionally `XXXX-XXXX`.
    #[schema(
        pattern = "^[BCDFGHJKLMNPQRSTVWXZbcdfghjklmnpqrstvwxz]{4}[- ]?[BCDFGHJKLMNPQRSTVWXZbcdfghjklmnpqrstvwxz]{4}$"
    )]
    user_code: String,
    #[serde(default)]
    team: Option<String>,
    #[serde(default = "yes")]
    approve: bool,
}

fn yes() -> bool {
    true
}

/// The dashboard's approval of a device login. User codes have ~34.6 bits, so entry is
/// limited: [`APPROVE_FAILURES`] wrong codes per user and per address per window.
#[utoipa::path(post, path = "/api/v1/device/approve", tag = "device", request_body = ApproveRequest, responses((status = 200, description = "Approved or denied", body = crate::control::openapi::Approved), (status = 400, description = "Not a waiting code", body = crate::control::openapi::ErrorBody), (status = 404, description = "No such team of yours", body = crate::control::openapi::ErrorBody), (status = 429, description = "Too many wrong codes", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn approve(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Body(body): Body<ApproveRequest>,
) -> Result<Response, ApiError> {
    // A user locked by wrong codes is refused before the code is looked at (a right guess
    // must not be told apart while locked).
    if let (Some(abuse), Ok(ip)) = (&app.abuse, p.address.parse()) {
        match abuse
            .check(Realm::Api, ip, Some(Account::user(&p.user.id)))
            .await
        {
            Ok(None) => {}
            Ok(Some(wait)) => return Err(ApiError::locked(wait)),
            Err(e) => return Err(abuse_down(e)),
        }
    }
    let now = app.now();
    let keys = [format!("user:{}", p.user.id), format!("addr:{}", p.address)];
    let user_id = p.user.id.clone();
    let bound = p.bound_team().map(str::to_owned);
    // The login being approved gets the user's full role in the team, so a token capped
    // below that cannot approve one (it would hand itself an escalation); the dashboard's
    // session or an uncapped token can.
    let acting = bound.as_ref().map(|_| p.role.unwrap_or(Role::Viewer));
    let approve = body.approve;
    let outcome = db(&app, move |s, key| {
        // A second, fixed-window limit per user and per address on wrong codes, beside abuse
        // protection's (which `authorize` and the failure path below feed): it also holds
        // where no abuse protection is configured (tests, embedded use).
        for k in &keys {
            let (n, until) = model::failures(s, k, now, APPROVE_WINDOW_MS)?;
            if n >= APPROVE_FAILURES {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many wrong codes; wait before trying again",
                );
                e.retry_after = Some((until - now) / 1000);
                return Ok(Err(e));
            }
        }
        type Checked = Result<(String, model::Team), ApiError>;
        let fail = |s: &mut Store, msg: &str| -> Result<Checked, StoreError> {
            for k in &keys {
                model::record_failure(s, k, now, APPROVE_WINDOW_MS)?;
            }
            Ok(Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_user_code",
                msg,
            )))
        };
        let Some(code) = secrets::parse_user_code(&body.user_code) else {
            return fail(s, "not a user code (8 letters, shown as XXXX-XXXX)");
        };
        let Some(d) = model::device_by_user_code(s, key, &code)? else {
            return fail(s, "no login is waiting for this code");
        };
        if d.status != "pending" || d.expires_at <= now {
            return fail(s, "this code expired or was already used");
        }
        let team = match (&body.team, bound) {
            // A token bound to one team cannot approve a login for another.
            (Some(name), bound) => match model::team_by_name(s, name)? {
                Some(t)
                    if model::role_in(s, &t.id, &user_id)?.is_some()
                        && bound.as_ref().is_none_or(|b| *b == t.id) =>
                {
                    t
                }
                _ => return Ok(Err(ApiError::not_found("team"))),
            },
            (None, Some(b)) => match model::team(s, &b)? {
                Some(t) => t,
                None => return Ok(Err(ApiError::not_found("team"))),
            },
            (None, None) => match model::memberships_of(s, &user_id)?.into_iter().next() {
                Some((t, _)) => t,
                None => {
                    return Ok(Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "no_team",
                        "you are not a member of any team",
                    )));
                }
            },
        };
        if let Some(a) = acting
            && model::role_in(s, &team.id, &user_id)?.is_some_and(|full| !a.at_least(full))
        {
            return Ok(Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token's role is capped below yours, and the login would get your full role: approve it signed in, or with an uncapped token",
            )));
        }
        Ok(Ok((d.id, team)))
    })
    .await?;
    // The decision and its audit record in one transaction (the checks above only read,
    // and count failures, which must stay counted); the decision is conditional on the
    // login still pending, so a race with another approval is caught here.
    let outcome = match outcome {
        Ok((device, team)) => {
            let (uid, actor, address) = (p.user.id.clone(), p.user.id.clone(), p.address.clone());
            db_audited(
                &app,
                move |s, _| {
                    Ok(
                        if model::device_decide(s, &device, approve, &uid, &team.id)? {
                            Ok(team.name)
                        } else {
                            Err(ApiError::new(
                                StatusCode::BAD_REQUEST,
                                "invalid_user_code",
                                "this code expired or was already used",
                            ))
                        },
                    )
                },
                move |team| SecurityEvent {
                    action: if approve {
                        "device.approve"
                    } else {
                        "device.deny"
                    },
                    actor: Some(actor),
                    address,
                    target: Some(team.clone()),
                    outcome: "success",
                },
            )
            .await
        }
        Err(e) => Err(e),
    };
    let outcome = match outcome {
        Ok(team) => team,
        Err(e) => {
            // A wrong code also counts in abuse protection's store-shared counters, per
            // address and per user: a burst locks both and is flagged in the audit log.
            if e.code == "invalid_user_code"
                && let (Some(abuse), Ok(ip)) = (&app.abuse, p.address.parse())
            {
                match abuse
                    .failure(
                        Realm::Api,
                        FailureKind::BadUserCode,
                        ip,
                        Some(Account::user(&p.user.id)),
                    )
                    .await
                {
                    Ok(r) => {
                        if let Some(wait) = r.refused {
                            return Err(ApiError::locked(wait));
                        }
                    }
                    Err(e) => return Err(abuse_down(e)),
                }
            }
            return Err(e);
        }
    };
    Ok(axum::Json(doc::Approved {
        approved: approve,
        team: outcome,
    })
    .into_response())
}

// ---- /me, tokens, sessions ----

#[utoipa::path(get, path = "/api/v1/me", tag = "identity", responses((status = 200, description = "Who you are", body = crate::control::openapi::Me), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn me(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Response, ApiError> {
    let uid = p.user.id.clone();
    let teams = db(&app, move |s, _| model::memberships_of(s, &uid)).await?;
    Ok(axum::Json(doc::Me {
        user: p.user,
        teams: teams
            .into_iter()
            .map(|(t, role)| doc::TeamRole { name: t.name, role })
            .collect(),
        via: p.via,
    })
    .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// `next_cursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    /// Items per page, 1 to 200 (default 50).
    #[serde(default)]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

impl Page {
    /// (the id to continue after, the page size).
    fn parse(&self) -> Result<(String, i64), ApiError> {
        let after = match self.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => secrets::parse_cursor(c).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    "not a cursor from this API",
                )
            })?,
            None => String::new(),
        };
        let limit = match self.limit.as_deref() {
            None => 50,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=200).contains(n))
                .ok_or_else(|| ApiError::bad("limit must be a number from 1 to 200"))?,
        };
        Ok((after, limit))
    }
}

/// The cursor of the page after `items`, when there may be more.
fn next_cursor<T>(items: &[T], limit: i64, id: impl Fn(&T) -> String) -> Option<String> {
    (items.len() as i64 == limit)
        .then(|| items.last().map(|l| secrets::encode_cursor(&id(l))))
        .flatten()
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", params(Page), responses((status = 200, description = "Your API tokens", body = crate::control::openapi::TokenPage), (status = 400, description = "Bad cursor or limit", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn list_tokens(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<Page>,
) -> Result<Response, ApiError> {
    let (after, limit) = q.parse()?;
    let uid = p.user.id.clone();
    // A team-bound token sees its own team's tokens only.
    let team = p.bound_team().unwrap_or_default().to_owned();
    let rows = db(&app, move |s, _| {
        model::tokens_of(s, &uid, &team, &after, limit)
    })
    .await?;
    let next_cursor = next_cursor(&rows, limit, |t| t.id.clone());
    Ok(axum::Json(doc::TokenPage {
        items: rows,
        next_cursor,
    })
    .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1 to 100 characters, not only spaces.
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    name: String,
    team: String,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 3650)]
    expires_in_days: Option<u32>,
}

/// A JSON integer as JSON Schema counts them: `314.0` is the integer 314 (clients written in
/// languages without integers send that), `314.5` is not.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
                .map(|f| f as u64)
        })
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom("expected a whole number"))
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken, responses((status = 201, description = "Created; the secret is shown once", body = crate::control::openapi::CreatedToken), (status = 400, description = "Bad request", body = crate::control::openapi::ErrorBody), (status = 404, description = "No such team of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn create_token(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Body(body): Body<CreateToken>,
) -> Result<Response, ApiError> {
    if body.name.trim().is_empty() || body.name.chars().count() > 100 {
        return Err(ApiError::bad("name: 1 to 100 characters"));
    }
    if body.expires_in_days.is_some_and(|d| d == 0 || d > 3650) {
        return Err(ApiError::bad("expires_in_days: 1 to 3650"));
    }
    let now = app.now();
    let (uid, bound) = (p.user.id.clone(), p.bound_team().map(str::to_owned));
    // A token acts with its capped role: what it creates is capped by that too, or a
    // Viewer-capped (or stolen one-hour) token could mint a lasting Owner token.
    let acting = bound.as_ref().map(|_| p.role.unwrap_or(Role::Viewer));
    let out = db_audited(
        &app,
        move |s, key| {
            let Some(team) = model::team_by_name(s, &body.team)? else {
                return Ok(Err(ApiError::not_found("team")));
            };
            let Some(mut mine) = model::role_in(s, &team.id, &uid)? else {
                return Ok(Err(ApiError::not_found("team")));
            };
            if let Some(a) = acting {
                mine = mine.min(a);
            }
            if bound.as_ref().is_some_and(|b| *b != team.id) {
                return Ok(Err(ApiError::not_found("team")));
            }
            let cap = body.role.unwrap_or(mine);
            if !mine.at_least(cap) {
                return Ok(Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "a token cannot have a stronger role than yours",
                )));
            }
            let (row, secret) = model::create_token(
                s,
                key,
                &model::NewToken {
                    kind: Kind::Api,
                    team_id: &team.id,
                    user_id: &uid,
                    name: body.name.trim(),
                    role_cap: cap,
                    family: None,
                    expires_at: body
                        .expires_in_days
                        .map(|d| now + i64::from(d) * 86_400_000),
                },
                now,
            )?;
            Ok(Ok((row, secret)))
        },
        move |(row, _)| p.succeeded("token.create", Some(row.id.clone())),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(doc::CreatedToken {
            secret: out.1.expose_secret().to_owned(),
            token: out.0,
        }),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "Token id")), responses((status = 204, description = "Revoked"), (status = 404, description = "No such token of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn revoke_token(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let now = app.now();
    let uid = p.user.id.clone();
    let tid = id.clone();
    let bound = p.bound_team().map(|b| (b.to_owned(), p.role));
    db_audited(
        &app,
        move |s, _| {
            let gone = || Ok(Err(ApiError::not_found("token")));
            let Some(t) = model::token(s, &tid)? else {
                return gone();
            };
            // A team-bound token acts in its team only, with its capped role; a session with
            // the user's role in the token's team.
            let role = match &bound {
                Some((team, _)) if *team != t.team_id => return gone(),
                Some((_, role)) => *role,
                None => model::role_in(s, &t.team_id, &uid)?,
            };
            let allowed =
                t.user_id == uid || role.is_some_and(|r| roles::allows(r, Action::ManageAllTokens));
            if !allowed || t.kind != "api" {
                return gone();
            }
            model::revoke_token(s, &t.id, now)?;
            Ok(Ok(()))
        },
        move |_| p.succeeded("token.revoke", Some(id)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", params(Page), responses((status = 200, description = "Your live sessions", body = crate::control::openapi::SessionPage), (status = 400, description = "Bad cursor or limit", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn list_sessions(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<Page>,
) -> Result<Response, ApiError> {
    let (after, limit) = q.parse()?;
    let now = app.now();
    let uid = p.user.id.clone();
    let rows = db(&app, move |s, _| {
        model::sessions_of(s, &uid, now, &after, limit)
    })
    .await?;
    let next_cursor = next_cursor(&rows, limit, |t| t.id.clone());
    Ok(axum::Json(doc::SessionPage {
        items: rows,
        next_cursor,
    })
    .into_response())
}

#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "sessions", params(("id" = String, Path, description = "Session id")), responses((status = 204, description = "Revoked"), (status = 404, description = "No such session of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn revoke_session(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let now = app.now();
    let (uid, sid) = (p.user.id.clone(), id.clone());
    db_audited(
        &app,
        move |s, _| {
            Ok(if model::revoke_session(s, &uid, &sid, now)? {
                Ok(())
            } else {
                Err(ApiError::not_found("session"))
            })
        },
        move |_| p.succeeded("session.revoke", Some(id)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/api/v1/sessions/revoke-all", tag = "sessions", responses((status = 200, description = "Every session and CLI login revoked", body = crate::control::openapi::Revoked), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn revoke_all(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
) -> Result<Response, ApiError> {
    let now = app.now();
    let uid = p.user.id.clone();
    let n = db_audited::<_, ApiError>(
        &app,
        move |s, _| Ok(Ok(model::revoke_all(s, &uid, now)?)),
        move |_| p.succeeded("session.revoke_all", Some(p.user.id.clone())),
    )
    .await?;
    Ok(axum::Json(doc::Revoked { revoked: n }).into_response())
}

#[utoipa::path(get, path = "/api/v1/logins", tag = "sessions", params(Page), responses((status = 200, description = "Your live CLI logins", body = crate::control::openapi::LoginPage), (status = 400, description = "Bad cursor or limit", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn list_logins(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<Page>,
) -> Result<Response, ApiError> {
    let (after, limit) = q.parse()?;
    let now = app.now();
    let uid = p.user.id.clone();
    let rows = db(&app, move |s, _| {
        model::logins_of(s, &uid, now, &after, limit)
    })
    .await?;
    let next_cursor = next_cursor(&rows, limit, |t| t.id.clone());
    Ok(axum::Json(doc::LoginPage {
        items: rows,
        next_cursor,
    })
    .into_response())
}

#[utoipa::path(delete, path = "/api/v1/logins/{id}", tag = "sessions", params(("id" = String, Path, description = "Login id")), responses((status = 204, description = "Revoked: its access and refresh tokens stop working"), (status = 404, description = "No such login of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn revoke_login(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let now = app.now();
    let (uid, lid) = (p.user.id.clone(), id.clone());
    db_audited(
        &app,
        move |s, _| {
            Ok(if model::revoke_login(s, &uid, &lid, now)? {
                Ok(())
            } else {
                Err(ApiError::not_found("login"))
            })
        },
        move |_| p.succeeded("login.revoke", Some(id)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- members ----

fn team_of(p: &Principal) -> Result<(model::Team, Role), ApiError> {
    match (&p.team, p.role) {
        (Some(t), Some(r)) => Ok((t.clone(), r)),
        _ => Err(ApiError::not_found("team")),
    }
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/members", tag = "members", params(("team" = String, Path, description = "Team name"), Page), responses((status = 200, description = "Members", body = crate::control::openapi::MemberPage), (status = 400, description = "Bad cursor or limit", body = crate::control::openapi::ErrorBody), (status = 404, description = "No such team of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn list_members(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<Page>,
) -> Result<Response, ApiError> {
    let (after, limit) = q.parse()?;
    let (team, _) = team_of(&p)?;
    let rows = db(&app, move |s, _| model::members(s, &team.id, &after, limit)).await?;
    let next_cursor = next_cursor(&rows, limit, |m| m.user.id.clone());
    Ok(axum::Json(doc::MemberPage {
        items: rows,
        next_cursor,
    })
    .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    #[schema(max_length = 254, pattern = "^[^@\\s]+@[^\\s]*\\.[^\\s]*$")]
    email: String,
    role: Role,
    #[serde(default)]
    display_name: Option<String>,
}

fn valid_email(e: &str) -> bool {
    e.chars().count() <= 254
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !e.contains(char::is_whitespace)
        })
}

#[utoipa::path(post, path = "/api/v1/teams/{team}/members", tag = "members", params(("team" = String, Path, description = "Team name")), request_body = Invite, responses((status = 201, description = "Added", body = model::Member), (status = 400, description = "Bad request", body = crate::control::openapi::ErrorBody), (status = 404, description = "No such team of yours", body = crate::control::openapi::ErrorBody), (status = 409, description = "Already a member", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn invite_member(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Body(body): Body<Invite>,
) -> Result<Response, ApiError> {
    let (team, mine) = team_of(&p)?;
    if !valid_email(&body.email) {
        return Err(ApiError::bad("email: not an email address"));
    }
    if !roles::may_grant(mine, body.role) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "your role ({}) cannot grant {}",
                mine.as_str(),
                body.role.as_str()
            ),
        ));
    }
    let now = app.now();
    let role = body.role;
    let tid = team.id.clone();
    let team_id = team.id.clone();
    let user = db_audited(
        &app,
        move |s, _| {
            let name = body.display_name.unwrap_or_else(|| body.email.clone());
            let u = model::create_user(s, &body.email, &name, now)?;
            if !model::add_member(s, &tid, &u.id, role, now)? {
                return Ok(Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "already a member",
                )));
            }
            Ok(Ok(u))
        },
        move |u| p.succeeded("member.invite", Some(member_target(&team_id, &u.id))),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(model::Member { user, role }),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    role: Role,
}

#[utoipa::path(patch, path = "/api/v1/teams/{team}/members/{user}", tag = "members", params(("team" = String, Path, description = "Team name"), ("user" = String, Path, description = "User id")), request_body = ChangeRole, responses((status = 200, description = "Changed", body = crate::control::openapi::RoleChanged), (status = 404, description = "No such team or member", body = crate::control::openapi::ErrorBody), (status = 409, description = "The last Owner", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn change_role(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Path((_, user)): Path<(String, String)>,
    Body(body): Body<ChangeRole>,
) -> Result<Response, ApiError> {
    let (team, _) = team_of(&p)?;
    let (tid, uid, role) = (team.id.clone(), user.clone(), body.role);
    let target = member_target(&team.id, &user);
    // The last-Owner check and the change in one transaction, the team locked first: two
    // Owners demoting each other at once cannot leave the team without one.
    db_audited(
        &app,
        move |s, _| {
            model::lock_team(s, &tid)?;
            let Some(current) = model::role_in(s, &tid, &uid)? else {
                return Ok(Err(ApiError::not_found("member")));
            };
            if current == Role::Owner && role != Role::Owner && model::owners(s, &tid)? <= 1 {
                return Ok(Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "last_owner",
                    "a team keeps at least one Owner; make someone else Owner first",
                )));
            }
            model::set_role(s, &tid, &uid, role)?;
            Ok(Ok(()))
        },
        move |_| p.succeeded("member.role_change", Some(target)),
    )
    .await?;
    Ok(axum::Json(doc::RoleChanged { user, role }).into_response())
}

#[utoipa::path(delete, path = "/api/v1/teams/{team}/members/{user}", tag = "members", params(("team" = String, Path, description = "Team name"), ("user" = String, Path, description = "User id")), responses((status = 204, description = "Removed"), (status = 404, description = "No such team or member", body = crate::control::openapi::ErrorBody), (status = 409, description = "The last Owner", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn remove_member(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Path((_, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (team, _) = team_of(&p)?;
    let now = app.now();
    let (tid, uid) = (team.id.clone(), user.clone());
    let target = member_target(&team.id, &user);
    // As in change_role: the team locked, the check and the removal in one transaction.
    db_audited(
        &app,
        move |s, _| {
            model::lock_team(s, &tid)?;
            let Some(current) = model::role_in(s, &tid, &uid)? else {
                return Ok(Err(ApiError::not_found("member")));
            };
            if current == Role::Owner && model::owners(s, &tid)? <= 1 {
                return Ok(Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "last_owner",
                    "a team keeps at least one Owner",
                )));
            }
            model::remove_member(s, &tid, &uid, now)?;
            Ok(Ok(()))
        },
        move |_| p.succeeded("member.remove", Some(target)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The method of a [`RouteSpec`].
pub fn method_of(spec: &RouteSpec) -> Method {
    Method::from_bytes(spec.method.as_bytes()).unwrap_or(Method::GET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookies_are_locked_down() {
        let secret = secrets::new_secret(Kind::Session);
        let tls = session_cookie(&secret, true);
        assert!(tls.starts_with("__Host-telbase_session=tlb_ses_"));
        for attr in ["; Path=/", "; HttpOnly", "; SameSite=Lax", "; Secure"] {
            assert!(tls.contains(attr), "{attr} missing: {tls}");
        }
        // No Domain: `__Host-` cookies must not have one, and browsers refuse them if they do.
        assert!(!tls.contains("Domain"));
        let plain = session_cookie(&secret, false);
        assert!(plain.starts_with("telbase_session=") && !plain.contains("Secure"));
        assert!(plain.contains("; HttpOnly") && plain.contains("; SameSite=Lax"));
    }

    #[test]
    fn every_route_names_a_method_axum_knows() {
        for r in ROUTES {
            assert_eq!(method_of(r).as_str(), r.method);
            assert!(r.path.starts_with("/api/v1/"));
        }
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x_telbase_session=a; telbase_session=b"),
        );
        assert_eq!(cookie(&h, "telbase_session"), Some("b"));
        assert_eq!(cookie(&h, "__Host-telbase_session"), None);
    }
}
