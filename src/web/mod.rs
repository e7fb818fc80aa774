//! The dashboard: server-rendered HTML (maud, escaped by default; no JavaScript, no build
//! step) outside `/api/v1`. This module owns the framework every page plugs into: the
//! shared [`Web`] state, the [`layout`] (navigation, the signed-in user, the sign-out form),
//! the strict security headers, the signed-in [`Viewer`] resolved from the session cookie,
//! session rotation ([`rotate`]), the error pages, and the CSRF helpers ([`csrf`]). Sign-in
//! lives in [`oidc`], the identity pages in [`pages`], the project, run and env var pages
//! in [`projects`].
//!
//! Authorization is the control plane's: a page about a team asks [`Viewer::in_team`],
//! which reads the member's role with `model::role_in` and asks `roles::allows` — the one
//! permission table, the same as `/api/v1`. A page that hides a form from a role does so
//! for comfort only; the handler behind the form asks again.
//!
//! To add a page: a handler taking `State<Arc<Web>>` and a [`Viewer`], returning
//! `Result<Response, Page>`, rendering `layout(&viewer.nav(), "Title", body)`, with
//! `csrf::field(&viewer.csrf)` in each form and `viewer.check_form(&web, &headers, &form)`
//! first in each POST handler; then one `.route(…)` in [`router`].

pub mod csrf;
pub mod oidc;
pub mod pages;
pub mod projects;

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use secrecy::{ExposeSecret as _, SecretString};

use crate::control::SecurityEvent;
use crate::control::api::{ControlState, session_cookie, session_cookie_name};
use crate::control::model::{self, SessionRow, User};
use crate::control::roles::{self, Action, Role};
use crate::control::secrets::{self, Kind, ServerKey};
use crate::store::{Store, StoreError};

/// The dashboard's shared state.
pub struct Web {
    /// The control plane's state: store, key, clock, events, public URL, cookie mode.
    pub control: Arc<ControlState>,
    pub signin: oidc::SignIn,
    /// Failure counting and lockout for sign-in (`None`: not counted; tests).
    pub abuse: Option<Arc<crate::abuse::Abuse>>,
}

impl Web {
    pub fn new(control: Arc<ControlState>, providers: oidc::Providers) -> Web {
        Web {
            control,
            signin: oidc::SignIn::new(providers),
            abuse: None,
        }
    }
    pub fn now(&self) -> i64 {
        (self.control.clock)()
    }
    pub fn key(&self) -> &ServerKey {
        &self.control.key
    }
    /// This server's origin, for the CSRF origin check.
    pub fn origin(&self) -> String {
        csrf::origin_of(&self.control.public_url)
    }
    /// Records a security event; `Err` (an error page) when the log cannot be written.
    pub fn record(&self, event: SecurityEvent) -> Result<(), Page> {
        self.control.events.record(&event).map_err(|e| {
            tracing::error!(error = %e, action = event.action, "cannot record a security event");
            Page::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The security log cannot be written, so nothing was changed. Try again shortly.",
            )
        })
    }
}

/// The dashboard's answers to a failed audit write or store, for the control plane's
/// `api::db_audited` and `api::intent_first` (the same two mechanisms as the API's: a
/// change commits with its record, or its record comes first).
impl crate::control::api::AuditAnswer for Page {
    fn audit_unavailable() -> Self {
        Page::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The security log cannot be written, so nothing was changed. Try again shortly.",
        )
    }
    fn store_failed(e: StoreError) -> Self {
        tracing::error!(error = %e, "dashboard: the store failed");
        Page::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The store did not answer; try again.",
        )
    }
}

/// [`crate::control::api::db_audited`] on the dashboard's control plane.
pub async fn audited<T: Send + 'static>(
    web: &Arc<Web>,
    change: impl FnOnce(
        &mut crate::store::tx::Tx<'_>,
        &ServerKey,
    ) -> Result<Result<T, Page>, StoreError>
    + Send
    + 'static,
    event: impl FnOnce(&T) -> SecurityEvent + Send + 'static,
) -> Result<T, Page> {
    crate::control::api::db_audited(&web.control, change, event).await
}

/// [`crate::control::api::intent_first`] on the dashboard's control plane.
pub async fn intent_first<T>(
    web: &Arc<Web>,
    event: SecurityEvent,
    change: impl std::future::Future<Output = Result<T, Page>>,
) -> Result<T, Page> {
    crate::control::api::intent_first(&web.control, event, change).await
}

/// Runs `f` on the store off the async threads.
pub async fn db<T: Send + 'static>(
    web: &Arc<Web>,
    f: impl FnOnce(&mut Store, &ServerKey) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Page> {
    let web = web.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = web.control.store.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s, &web.control.key)
    })
    .await
    .map_err(|_| StoreError::Corrupt {
        path: "dashboard".into(),
        what: "a store task failed".into(),
    })
    .and_then(|r| r)
    .map_err(|e| {
        tracing::error!(error = %e, "dashboard: the store failed");
        Page::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The store did not answer; try again.",
        )
    })
}

/// An error page (its status and a sentence; never a secret).
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl Page {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Page {
        Page {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn not_found() -> Page {
        Page::new(StatusCode::NOT_FOUND, "Not found.")
    }
    pub fn forbidden() -> Page {
        Page::new(
            StatusCode::FORBIDDEN,
            "Your role in this team does not allow this.",
        )
    }
    pub fn bad(message: impl Into<String>) -> Page {
        Page::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error").to_owned();
        let body = html! {
            h1 { (title) }
            p.error { (self.message) }
            p { a href="/" { "Back to the dashboard" } }
        };
        let mut r = (self.status, html_page(layout(None, &title, body))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// What the navigation shows about the signed-in person.
pub struct Nav {
    pub email: String,
    pub csrf: String,
    pub teams: Vec<(String, Role)>,
}

/// The page frame: head, navigation (with the signed-in user and a sign-out form), main.
/// Every page, the later project/run/env-var pages included, renders through this.
pub fn layout(nav: Option<&Nav>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Telbase" }
                link rel="stylesheet" href="/assets/dashboard.css";
            }
            body {
                header {
                    nav {
                        a.brand href="/" { "Telbase" }
                        @if let Some(n) = nav {
                            a href="/device" { "Approve a CLI login" }
                            a href="/sessions" { "Sessions" }
                            a href="/tokens" { "API tokens" }
                            @for (team, role) in &n.teams {
                                @if roles::allows(*role, Action::ViewProject) {
                                    a href={ "/teams/" (team) "/projects" } { (team) " projects" }
                                }
                                @if roles::allows(*role, Action::ViewMembers) {
                                    a href={ "/teams/" (team) "/members" } { (team) " members" }
                                }
                                @if roles::allows(*role, Action::ViewAuditLog) {
                                    a href={ "/teams/" (team) "/audit" } { (team) " audit log" }
                                }
                            }
                            span.who { "Signed in as " strong { (n.email) } }
                            form.inline method="post" action="/auth/logout" {
                                (csrf::field(&n.csrf))
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An HTML response of a rendered page.
pub fn html_page(m: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

/// The headers of every dashboard answer: no script at all (the CSP allows none), no
/// framing, no referrer (callback URLs carry codes), no caching (pages show personal data).
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-frame-options", "DENY");
    // `same-origin`, not `no-referrer`: with `no-referrer` Chromium sends `Origin: null` on
    // same-origin form posts, which the CSRF origin check must refuse. Other sites still
    // get no referrer (callback URLs carry codes).
    set(h, "referrer-policy", "same-origin");
    set(h, "x-content-type-options", "nosniff");
    set(h, "cross-origin-opener-policy", "same-origin");
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24}
header nav{display:flex;gap:1em;align-items:center;flex-wrap:wrap;padding:.6em 1em;background:#f3f4f6;border-bottom:1px solid #d0d7de}
.brand{font-weight:bold}.who{margin-left:auto}main{padding:1em 2em;max-width:70em}
table{border-collapse:collapse}td,th{border-bottom:1px solid #d0d7de;padding:.3em .8em;text-align:left}
form.inline{display:inline}.error{color:#b00020}.note{color:#57606a}code.secret{background:#fff8c5;padding:.2em}
.providers a{display:block;margin:.5em 0;padding:.6em 1em;border:1px solid #d0d7de;width:16em;text-decoration:none}";

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

/// The dashboard's router (everything outside `/api/v1`).
pub fn router(web: Arc<Web>) -> Router {
    use axum::routing::{get, post};
    Router::new()
        .route("/", get(pages::home))
        .route("/assets/dashboard.css", get(css))
        .route("/signin", get(pages::signin))
        .route("/auth/{provider}/start", get(pages::auth_start))
        .route("/auth/{provider}/callback", get(pages::auth_callback))
        .route("/auth/logout", post(pages::logout))
        .route("/device", get(pages::device).post(pages::device_post))
        .route("/sessions", get(pages::sessions))
        .route("/sessions/revoke-all", post(pages::sessions_revoke_all))
        .route("/sessions/{id}/revoke", post(pages::session_revoke))
        .route("/tokens", get(pages::tokens).post(pages::token_create))
        .route("/tokens/{id}/revoke", post(pages::token_revoke))
        .route(
            "/teams/{team}/members",
            get(pages::members).post(pages::member_invite),
        )
        .route(
            "/teams/{team}/members/{user}/role",
            post(pages::member_role),
        )
        .route(
            "/teams/{team}/members/{user}/remove",
            post(pages::member_remove),
        )
        .route("/teams/{team}/audit", get(pages::audit))
        .route(
            "/teams/{team}/projects",
            get(projects::projects).post(projects::project_create),
        )
        .route("/teams/{team}/projects/{project}", get(projects::project))
        .route(
            "/teams/{team}/projects/{project}/delete",
            post(projects::project_delete),
        )
        .route("/teams/{team}/projects/{project}/runs", get(projects::runs))
        .route(
            "/teams/{team}/projects/{project}/runs/{run}",
            get(projects::run),
        )
        .route(
            "/teams/{team}/projects/{project}/env/{environment}",
            get(projects::env_vars).post(projects::env_var_set),
        )
        .route(
            "/teams/{team}/projects/{project}/env/{environment}/{name}/unset",
            post(projects::env_var_unset),
        )
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

/// The client's address as the control plane resolves it (trusted proxies included).
pub fn address(web: &Web, parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| (web.control.client_address)(c.0.ip(), &parts.headers).to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A cookie's value by exact name.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The signed-in person of a page request.
pub struct Viewer {
    pub user: User,
    pub session: SessionRow,
    /// The CSRF token of this session.
    pub csrf: String,
    pub address: String,
    pub user_agent: String,
    pub teams: Vec<(model::Team, Role)>,
}

/// Not signed in: pages send the person to the sign-in page; forms get a 401 page.
pub struct SignedOut {
    post: bool,
    /// The page asked for, to come back to after signing in.
    next: String,
}

impl IntoResponse for SignedOut {
    fn into_response(self) -> Response {
        if self.post {
            Page::new(
                StatusCode::UNAUTHORIZED,
                "Your session ended (signed out, revoked or expired). Sign in again.",
            )
            .into_response()
        } else {
            Redirect::to(&format!("/signin?next={}", oidc::form_encode(&self.next))).into_response()
        }
    }
}

impl FromRequestParts<Arc<Web>> for Viewer {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, web: &Arc<Web>) -> Result<Viewer, Response> {
        let post = parts.method != axum::http::Method::GET;
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let out = || {
            SignedOut {
                post,
                next: next.clone(),
            }
            .into_response()
        };
        let Some(secret) = cookie(
            &parts.headers,
            session_cookie_name(web.control.secure_cookies),
        )
        .filter(|c| secrets::well_formed(Kind::Session, c))
        .map(|c| SecretString::from(c.to_owned())) else {
            return Err(out());
        };
        let now = web.now();
        let found = db(web, move |s, key| {
            let Some(sess) = model::use_session(s, key, secret.expose_secret(), now)? else {
                return Ok(None);
            };
            let Some(user) = model::user(s, &sess.user_id)? else {
                return Ok(None);
            };
            let teams = model::memberships_of(s, &user.id)?;
            Ok(Some((sess, user, teams)))
        })
        .await
        .map_err(IntoResponse::into_response)?;
        let Some((session, user, teams)) = found else {
            return Err(out());
        };
        Ok(Viewer {
            csrf: csrf::token(web.key(), &session.id),
            address: address(web, parts),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            user,
            session,
            teams,
        })
    }
}

impl Viewer {
    pub fn nav(&self) -> Nav {
        Nav {
            email: self.user.email.clone(),
            csrf: self.csrf.clone(),
            teams: self
                .teams
                .iter()
                .map(|(t, r)| (t.name.clone(), *r))
                .collect(),
        }
    }

    /// The team `name` and this person's role there, if `action` is allowed: another
    /// team is a 404 (as in the API), a role that may not is a 403.
    pub fn in_team(&self, name: &str, action: Action) -> Result<(model::Team, Role), Page> {
        let (team, role) = self
            .teams
            .iter()
            .find(|(t, _)| t.name == name)
            .cloned()
            .ok_or_else(Page::not_found)?;
        if !roles::allows(role, action) {
            return Err(Page::forbidden());
        }
        Ok((team, role))
    }

    /// The CSRF check of a submitted form; a failure is recorded and answered 403.
    pub fn check_form(
        &self,
        web: &Web,
        headers: &HeaderMap,
        form: &std::collections::HashMap<String, String>,
    ) -> Result<(), Page> {
        match csrf::verify(
            web.key(),
            &self.session.id,
            form.get(csrf::FIELD).map(String::as_str),
            headers,
            &web.origin(),
        ) {
            Ok(()) => Ok(()),
            Err(e) => {
                web.record(SecurityEvent {
                    action: "auth.csrf_rejected",
                    actor: Some(self.user.id.clone()),
                    address: self.address.clone(),
                    target: None,
                    outcome: "failure",
                })?;
                Err(Page::new(
                    StatusCode::FORBIDDEN,
                    format!("This form was refused: {e}. Reload the page and try again."),
                ))
            }
        }
    }

    pub fn event(&self, action: &'static str, target: Option<String>) -> SecurityEvent {
        SecurityEvent {
            action,
            actor: Some(self.user.id.clone()),
            address: self.address.clone(),
            target,
            outcome: "success",
        }
    }
}

/// Ends `old` and starts a new session for the same person (a new secret; the old one is
/// dead at once): after sign-in and every sensitive action, so a session id seen before
/// the action (a shared machine, a fixated cookie) is worth nothing after it. The
/// `Set-Cookie` value of the new session; `v` is updated to it (its CSRF token too), so a
/// page rendered after the action carries working forms.
pub async fn rotate(web: &Arc<Web>, v: &mut Viewer) -> Result<String, Page> {
    let (uid, old, ua, addr, now) = (
        v.user.id.clone(),
        v.session.id.clone(),
        v.user_agent.clone(),
        v.address.clone(),
        web.now(),
    );
    let rotated = db(web, move |s, key| {
        crate::control::api::rotate_session_tx(s, key, &uid, &old, &ua, &addr, now)
    })
    .await?;
    // Ended meanwhile (a revoke-all from elsewhere): it stays ended.
    let Some((row, secret)) = rotated else {
        return Err(Page::new(
            StatusCode::UNAUTHORIZED,
            "Your session ended meanwhile; sign in again.",
        ));
    };
    v.csrf = csrf::token(web.key(), &row.id);
    v.session = row;
    Ok(session_cookie(&secret, web.control.secure_cookies))
}

/// A 303 to `to` with a `Set-Cookie`.
pub fn redirect_with_cookie(to: &str, cookie: &str) -> Response {
    with_cookie(Redirect::to(to).into_response(), cookie)
}

/// `r` setting `cookie` too (a rotated session's, after a sensitive action).
pub fn with_cookie(mut r: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Formats unix ms for a table cell (UTC).
pub fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}
