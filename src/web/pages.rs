//! The identity pages of the dashboard: sign-in (provider buttons, the OIDC/OAuth start and
//! callback, sign-out), the device-login approval page `/device` that `telbase login` sends
//! people to, sessions (list, revoke one, revoke all), API tokens (list, create, revoke),
//! team members and roles, and the team's audit log. Every POST checks CSRF first
//! ([`Viewer::check_form`]) and its permission second ([`Viewer::in_team`] →
//! `roles::allows`), whatever the page showed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use secrecy::{ExposeSecret as _, SecretString};

use super::oidc::{self, ProviderKind};
use super::{
    Page, Viewer, Web, audited, csrf, db, html_page, layout, redirect_with_cookie, rotate, when,
    with_cookie,
};
use crate::control::SecurityEvent;
use crate::control::api::{
    APPROVE_FAILURES, APPROVE_WINDOW_MS, session_cookie, session_cookie_name,
};
use crate::control::model::{self, NewToken};
use crate::control::roles::{self, Action, Role};
use crate::control::secrets::{self, Kind};

type Form = axum::extract::Form<HashMap<String, String>>;
type St = State<Arc<Web>>;

fn binding_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-telbase_signin"
    } else {
        "telbase_signin"
    }
}

fn binding_cookie(value: &str, secure: bool, max_age: i64) -> String {
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax{}; Max-Age={max_age}",
        binding_cookie_name(secure),
        if secure { "; Secure" } else { "" },
    )
}

/// A local path to come back to after sign-in (never another site: `//host` and `/\host`
/// are refused, so the parameter cannot be an open redirect).
fn local_path(p: Option<&String>) -> String {
    match p {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && p.len() <= 512
                && !p.chars().any(char::is_control) =>
        {
            p.clone()
        }
        _ => "/".into(),
    }
}

pub async fn home(v: Result<Viewer, Response>) -> Response {
    let v = match v {
        Ok(v) => v,
        Err(_) => return Redirect::to("/signin").into_response(),
    };
    let body = html! {
        h1 { "Welcome, " (v.user.display_name) }
        h2 { "Your teams" }
        @if v.teams.is_empty() { p.note { "You are not a member of any team." } }
        table {
            tr { th { "Team" } th { "Your role" } }
            @for (t, r) in &v.teams {
                tr { td { a href={ "/teams/" (t.name) "/projects" } { (t.name) } } td { (r.as_str()) } }
            }
        }
    };
    html_page(layout(Some(&v.nav()), "Dashboard", body))
}

pub async fn signin(State(web): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let next = local_path(q.get("next"));
    let body = html! {
        h1 { "Sign in to Telbase" }
        @if web.signin.providers.0.is_empty() {
            p.error { "No sign-in provider is configured on this server (see docs/dashboard.md)." }
        }
        div.providers {
            @for p in &web.signin.providers.0 {
                a id={ "signin-" (p.kind.slug()) }
                  href={ "/auth/" (p.kind.slug()) "/start?next=" (oidc::form_encode(&next)) } {
                    "Sign in with " (p.kind.label())
                }
            }
        }
        p.note { "Only people a team has invited can sign in: the email the provider verified must be the invited one." }
    };
    html_page(layout(None, "Sign in", body))
}

fn redirect_uri(web: &Web, kind: ProviderKind) -> String {
    format!("{}/auth/{}/callback", web.control.public_url, kind.slug())
}

fn provider(web: &Web, slug: &str) -> Result<oidc::Provider, Page> {
    ProviderKind::parse(slug)
        .and_then(|k| web.signin.providers.get(k).cloned())
        .ok_or_else(Page::not_found)
}

pub async fn auth_start(
    State(web): St,
    Path(slug): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    req: axum::extract::Request,
) -> Result<Response, Page> {
    let p = provider(&web, &slug)?;
    // Each start writes a flow row: a locked address is refused, and starts take from the
    // address's request bucket, so a loop cannot fill the table.
    if let Some(a) = web.abuse.clone() {
        let (parts, _) = req.into_parts();
        let addr = ip(&super::address(&web, &parts));
        let refused = tokio::task::spawn_blocking(move || {
            match a.check_blocking(crate::abuse::rows::Realm::Api, addr, None)? {
                Some(wait) => Ok(Some(wait)),
                None => a.address_request_blocking(addr),
            }
        })
        .await;
        match refused {
            Ok(Ok(Some(wait))) => return Ok(too_many(wait)),
            Ok(Ok(None)) => {}
            _ => {
                return Err(Page::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server cannot start a sign-in right now; try again shortly.",
                ));
            }
        }
    }
    let next = local_path(q.get("next"));
    let (state, binding) = (oidc::random_value(), oidc::random_value());
    let now = web.now();
    let url = web
        .signin
        .authorize_url(&p, web.key(), &state, &redirect_uri(&web, p.kind), now)
        .await
        .map_err(|e| Page::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let (s2, b2, kind) = (state.clone(), binding.clone(), p.kind);
    db(&web, move |s, key| {
        oidc::begin_flow(s, key, kind, &s2, &b2, &next, now)
    })
    .await?;
    let mut r = Redirect::to(&url).into_response();
    if let Ok(v) = HeaderValue::from_str(&binding_cookie(
        binding.expose_secret(),
        web.control.secure_cookies,
        oidc::FLOW_TTL_MS / 1000,
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// The client address as an IP (abuse protection keys on it).
fn ip(address: &str) -> std::net::IpAddr {
    address
        .parse()
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// A failed sign-in: counted by abuse protection (maybe locking the address), recorded,
/// and answered with a page that says why.
async fn sign_in_failed(
    web: &Arc<Web>,
    address: &str,
    status: StatusCode,
    message: String,
) -> Response {
    let mut locked = None;
    if let Some(a) = web.abuse.clone() {
        let addr = ip(address);
        locked = tokio::task::spawn_blocking(move || {
            a.failure_blocking(
                crate::abuse::rows::Realm::Api,
                crate::abuse::FailureKind::SignIn,
                addr,
                None,
            )
        })
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|r| r.refused);
    }
    if let Err(p) = web.record(SecurityEvent {
        action: "auth.failure",
        actor: None,
        address: address.to_owned(),
        target: None,
        outcome: "failure",
    }) {
        return p.into_response();
    }
    if let Some(wait) = locked {
        return too_many(wait);
    }
    Page::new(status, message).into_response()
}

fn too_many(wait: u64) -> Response {
    let mut p = Page::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("Too many failed sign-ins from your address. Try again in {wait} seconds."),
    );
    p.retry_after = Some(wait.max(1));
    p.into_response()
}

pub async fn auth_callback(
    State(web): St,
    Path(slug): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Response {
    let (parts, _) = req.into_parts();
    let address = super::address(&web, &parts);
    let p = match provider(&web, &slug) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    // A locked address is refused before anything of the answer is looked at.
    if let Some(a) = web.abuse.clone() {
        let addr = ip(&address);
        let locked = tokio::task::spawn_blocking(move || {
            a.check_blocking(crate::abuse::rows::Realm::Api, addr, None)
        })
        .await;
        match locked {
            Ok(Ok(Some(wait))) => return too_many(wait),
            Ok(Ok(None)) => {}
            _ => {
                return Page::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server cannot check this sign-in right now; try again shortly.",
                )
                .into_response();
            }
        }
    }
    if let Some(err) = q.get("error") {
        let code: String = err
            .chars()
            .filter(|c| c.is_ascii_lowercase() || *c == '_')
            .take(64)
            .collect();
        return sign_in_failed(
            &web,
            &address,
            StatusCode::UNAUTHORIZED,
            format!("{} refused the sign-in ({code}).", p.kind.label()),
        )
        .await;
    }
    let secure = web.control.secure_cookies;
    let (Some(state), Some(code), Some(binding)) = (
        q.get("state").map(|s| SecretString::from(s.clone())),
        q.get("code").map(|s| SecretString::from(s.clone())),
        super::cookie(&headers, binding_cookie_name(secure)).map(str::to_owned),
    ) else {
        return sign_in_failed(
            &web,
            &address,
            StatusCode::BAD_REQUEST,
            oidc::SignInError::BadState.to_string(),
        )
        .await;
    };
    let now = web.now();
    let (st, kind) = (state.clone(), p.kind);
    let flow = db(&web, move |s, key| {
        oidc::consume_flow(s, key, kind, st.expose_secret(), &binding, now)
    })
    .await;
    let next = match flow {
        Ok(Some(n)) => n,
        Ok(None) => {
            return sign_in_failed(
                &web,
                &address,
                StatusCode::BAD_REQUEST,
                oidc::SignInError::BadState.to_string(),
            )
            .await;
        }
        Err(p) => return p.into_response(),
    };
    let identity = match web
        .signin
        .finish(
            &p,
            web.key(),
            &state,
            &code,
            &redirect_uri(&web, p.kind),
            now,
        )
        .await
    {
        Ok(i) => i,
        Err(e) => {
            tracing::info!(provider = p.kind.slug(), error = %e, "sign-in failed");
            return sign_in_failed(&web, &address, StatusCode::UNAUTHORIZED, e.to_string()).await;
        }
    };
    // Who may sign in: a user already in cp_users (a team created or invited them) whose
    // email is the one the provider verified; after the first sign-in the provider's
    // subject is linked and identifies them even if the address changes at the provider.
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let old = super::cookie(&headers, session_cookie_name(secure))
        .filter(|c| secrets::well_formed(Kind::Session, c))
        .map(|c| SecretString::from(c.to_owned()));
    let (id2, addr2) = (identity.clone(), address.clone());
    let made = db(&web, move |s, key| {
        let user_id = match oidc::user_of_subject(s, id2.provider, &id2.subject)? {
            Some(u) => u,
            None => match model::user_by_email(s, &id2.email)? {
                Some(u) => {
                    model::link_subject(s, id2.provider.slug(), &id2.subject, &u.id, now)?;
                    u.id
                }
                None => return Ok(None),
            },
        };
        // The browser's previous session (if any) ends: one browser, one session.
        if let Some(old) = old
            && let Some(prev) = model::use_session(s, key, old.expose_secret(), now)?
        {
            model::revoke_session(s, &prev.user_id, &prev.id, now)?;
        }
        let (row, secret) = model::create_session(s, key, &user_id, &ua, &addr2, now)?;
        Ok(Some((user_id, row.id, secret)))
    })
    .await;
    let (user_id, session_id, secret) = match made {
        Ok(Some(x)) => x,
        Ok(None) => {
            return sign_in_failed(
                &web,
                &address,
                StatusCode::FORBIDDEN,
                format!(
                    "{} has no Telbase account. Ask a team's Owner or Admin to invite this exact address, then sign in again.",
                    identity.email
                ),
            )
            .await;
        }
        Err(p) => return p.into_response(),
    };
    if let Some(a) = web.abuse.clone() {
        let (u, addr) = (user_id.clone(), ip(&address));
        // The first sign-in from a new network is flagged (audit + notification) there.
        let _ = tokio::task::spawn_blocking(move || {
            a.signed_in_blocking(&crate::abuse::Account::user(&u), addr)
        })
        .await;
    }
    if let Err(p) = web.record(SecurityEvent {
        action: "auth.login",
        actor: Some(user_id),
        address,
        target: Some(session_id),
        outcome: "success",
    }) {
        return p.into_response();
    }
    let mut r = redirect_with_cookie(&next, &session_cookie(&secret, secure));
    if let Ok(v) = HeaderValue::from_str(&binding_cookie("", secure, 0)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn clear_session_cookie(secure: bool) -> String {
    format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax{}; Max-Age=0",
        session_cookie_name(secure),
        if secure { "; Secure" } else { "" }
    )
}

pub async fn logout(
    State(web): St,
    v: Viewer,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, Page> {
    v.check_form(&web, &headers, &form)?;
    let (uid, sid, now) = (v.user.id.clone(), v.session.id.clone(), web.now());
    let event = v.event("auth.logout", Some(v.session.id.clone()));
    audited(
        &web,
        move |s, _| {
            model::revoke_session(s, &uid, &sid, now)?;
            Ok(Ok(()))
        },
        move |_| event,
    )
    .await?;
    Ok(redirect_with_cookie(
        "/signin",
        &clear_session_cookie(web.control.secure_cookies),
    ))
}

// ---- /device ----

pub async fn device(v: Viewer, Query(q): Query<HashMap<String, String>>) -> Response {
    let code = q
        .get("user_code")
        .and_then(|c| secrets::parse_user_code(c))
        .map(|c| display_code(&c))
        .unwrap_or_default();
    html_page(layout(
        Some(&v.nav()),
        "Approve a CLI login",
        device_form(&v, &code, None),
    ))
}

/// `BCDFGHJK` as the CLI shows it: `BCDF-GHJK`.
fn display_code(c: &str) -> String {
    if c.len() == 8 {
        format!("{}-{}", &c[..4], &c[4..])
    } else {
        c.to_owned()
    }
}

fn device_form(v: &Viewer, code: &str, message: Option<Markup>) -> Markup {
    html! {
        h1 { "Approve a CLI login" }
        @if let Some(m) = message { (m) }
        p { "Compare the code with the one your terminal shows (" code { "telbase login" } "). Approve only a login you started yourself." }
        form method="post" action="/device" {
            (csrf::field(&v.csrf))
            p { label { "Code " input name="user_code" id="user_code" value=(code) autocomplete="off" required; } }
            p { label { "Team "
                select name="team" id="team" {
                    @for (t, r) in &v.teams { option value=(t.name) { (t.name) " (" (r.as_str()) ")" } }
                }
            } }
            button type="submit" name="decision" value="approve" id="approve" { "Approve" }
            " "
            button type="submit" name="decision" value="deny" id="deny" { "Deny" }
        }
    }
}

pub async fn device_post(
    State(web): St,
    v: Viewer,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, Page> {
    v.check_form(&web, &headers, &form)?;
    let approve = match form.get("decision").map(String::as_str) {
        Some("approve") => true,
        Some("deny") => false,
        _ => return Err(Page::bad("Choose Approve or Deny.")),
    };
    let team_name = form.get("team").cloned().unwrap_or_default();
    let (team, _) = v.in_team(&team_name, Action::ApproveDevice)?;
    let entered = form.get("user_code").cloned().unwrap_or_default();
    let now = web.now();
    // The same counters as `POST /api/v1/device/approve`: one limit on guessing codes,
    // whichever door it comes through.
    let keys = [format!("user:{}", v.user.id), format!("addr:{}", v.address)];
    let (uid, tid) = (v.user.id.clone(), team.id.clone());
    let outcome = db(&web, move |s, key| {
        for k in &keys {
            let (n, until) = model::failures(s, k, now, APPROVE_WINDOW_MS)?;
            if n >= APPROVE_FAILURES {
                return Ok(Err(Some((until - now) / 1000)));
            }
        }
        let fail = |s: &mut crate::store::Store| -> Result<Result<String, Option<i64>>, _> {
            for k in &keys {
                model::record_failure(s, k, now, APPROVE_WINDOW_MS)?;
            }
            Ok(Err(None))
        };
        let Some(code) = secrets::parse_user_code(&entered) else {
            return fail(s);
        };
        let Some(d) = model::device_by_user_code(s, key, &code)? else {
            return fail(s);
        };
        if d.status != "pending" || d.expires_at <= now {
            return fail(s);
        }
        Ok(Ok(d.id))
    })
    .await?;
    match outcome {
        Ok(device) => {
            // The decision commits with its record (a wrong code above is counted, not
            // rolled back); a code decided meanwhile by someone else changes nothing.
            let event = v.event(
                if approve {
                    "device.approve"
                } else {
                    "device.deny"
                },
                Some(team.name.clone()),
            );
            audited(
                &web,
                move |s, _| {
                    Ok(if model::device_decide(s, &device, approve, &uid, &tid)? {
                        Ok(())
                    } else {
                        Err(Page::bad(
                            "This login was decided meanwhile; nothing was changed.",
                        ))
                    })
                },
                move |_| event,
            )
            .await?;
        }
        Err(Some(wait)) => {
            let mut p = Page::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many wrong codes; wait before trying again.",
            );
            p.retry_after = Some(wait.max(1) as u64);
            return Err(p);
        }
        Err(None) => {
            let entered = form.get("user_code").cloned().unwrap_or_default();
            let msg = html! { p.error { "No login is waiting for this code, or it expired or was already used." } };
            let mut r = html_page(layout(
                Some(&v.nav()),
                "Approve a CLI login",
                device_form(
                    &v,
                    &secrets::parse_user_code(&entered)
                        .map(|c| display_code(&c))
                        .unwrap_or_default(),
                    Some(msg),
                ),
            ));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(r);
        }
    }
    let mut v = v;
    let cookie = rotate(&web, &mut v).await?;
    let body = html! {
        h1 { "Approve a CLI login" }
        @if approve {
            p #result { "Approved: the CLI is signed in to " strong { (team.name) } ". You can close this page." }
        } @else {
            p #result { "Denied: the CLI login was refused." }
        }
    };
    Ok(with_cookie(
        html_page(layout(Some(&v.nav()), "Approve a CLI login", body)),
        &cookie,
    ))
}

// ---- sessions ----

pub async fn sessions(
    State(web): St,
    v: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Page> {
    let revoked_all = q.get("revoked").is_some_and(|r| r == "all");
    let (uid, now) = (v.user.id.clone(), web.now());
    let (rows, logins) = db(&web, move |s, _| {
        Ok((
            model::sessions_of(s, &uid, now, "", 200)?,
            model::logins_of(s, &uid, now, "", 200)?,
        ))
    })
    .await?;
    let body = html! {
        h1 { "Sessions" }
        @if revoked_all {
            p #revoked { "Every other session and CLI login was signed out." }
        }
        table #sessions {
            tr { th { "Signed in" } th { "Last seen" } th { "Address" } th { "Browser" } th {} }
            @for s in &rows {
                tr {
                    td { (when(s.created_at)) }
                    td { (when(s.last_seen_at)) }
                    td { (s.address) }
                    td { (s.user_agent.chars().take(60).collect::<String>()) }
                    td {
                        @if s.id == v.session.id { strong { "this browser" } }
                        @else {
                            form.inline method="post" action={ "/sessions/" (s.id) "/revoke" } {
                                (csrf::field(&v.csrf))
                                button type="submit" { "Revoke" }
                            }
                        }
                    }
                }
            }
        }
        p { (logins.len()) " CLI login(s) active." }
        form method="post" action="/sessions/revoke-all" {
            (csrf::field(&v.csrf))
            button #revoke-all type="submit" { "Sign out everywhere else (every other session and CLI login)" }
        }
    };
    Ok(html_page(layout(Some(&v.nav()), "Sessions", body)))
}

pub async fn session_revoke(
    State(web): St,
    v: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, Page> {
    v.check_form(&web, &headers, &form)?;
    let (uid, sid, now) = (v.user.id.clone(), id.clone(), web.now());
    let event = v.event("session.revoke", Some(id.clone()));
    audited(
        &web,
        move |s, _| {
            Ok(if model::revoke_session(s, &uid, &sid, now)? {
                Ok(())
            } else {
                Err(Page::not_found())
            })
        },
        move |_| event,
    )
    .await?;
    if id == v.session.id {
        return Ok(redirect_with_cookie(
            "/signin",
            &clear_session_cookie(web.control.secure_cookies),
        ));
    }
    Ok(Redirect::to("/sessions").into_response())
}

pub async fn sessions_revoke_all(
    State(web): St,
    v: Viewer,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, Page> {
    v.check_form(&web, &headers, &form)?;
    let (uid, now) = (v.user.id.clone(), web.now());
    let (ua, addr) = (v.user_agent.clone(), v.address.clone());
    // Every session (this one too) and CLI login ends at once; this browser gets a fresh
    // session, so the person is not signed out of the page they are on.
    let event = v.event("session.revoke_all", Some(v.user.id.clone()));
    let secret = audited(
        &web,
        move |s, key| {
            model::revoke_all(s, &uid, now)?;
            Ok(Ok(model::create_session(s, key, &uid, &ua, &addr, now)?.1))
        },
        move |_| event,
    )
    .await?;
    Ok(redirect_with_cookie(
        "/sessions?revoked=all",
        &session_cookie(&secret, web.control.secure_cookies),
    ))
}

// ---- API tokens ----

pub async fn tokens(State(web): St, v: Viewer) -> Result<Response, Page> {
    let body = tokens_body(&web, &v, None).await?;
    Ok(html_page(layout(Some(&v.nav()), "API tokens", body)))
}

async fn tokens_body(
    web: &Arc<Web>,
    v: &Viewer,
    created: Option<&SecretString>,
) -> Result<Markup, Page> {
    let uid = v.user.id.clone();
    let rows = db(web, move |s, _| model::tokens_of(s, &uid, "", "", 200)).await?;
    let team_names: HashMap<&str, &str> = v
        .teams
        .iter()
        .map(|(t, _)| (t.id.as_str(), t.name.as_str()))
        .collect();
    Ok(html! {
        h1 { "API tokens" }
        @if let Some(s) = created {
            p { "Your new token (shown once; copy it now): " code.secret #new-token { (s.expose_secret()) } }
        }
        table #tokens {
            tr { th { "Name" } th { "Team" } th { "Role cap" } th { "Created" } th { "Last used" } th { "Expires" } th {} }
            @for t in &rows {
                tr {
                    td { (t.name) }
                    td { (team_names.get(t.team_id.as_str()).copied().unwrap_or("?")) }
                    td { (t.role_cap.as_str()) }
                    td { (when(t.created_at)) }
                    td { @if let Some(u) = t.last_used_at { (when(u)) } @else { "never" } }
                    td { @if let Some(e) = t.expires_at { (when(e)) } @else { "never" } }
                    td {
                        @if t.revoked_at.is_some() { "revoked" } @else {
                            form.inline method="post" action={ "/tokens/" (t.id) "/revoke" } {
                                (csrf::field(&v.csrf))
                                button type="submit" { "Revoke" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "New token" }
        form method="post" action="/tokens" {
            (csrf::field(&v.csrf))
            p { label { "Name " input name="name" required maxlength="100"; } }
            p { label { "Team "
                select name="team" { @for (t, _) in &v.teams { option value=(t.name) { (t.name) } } }
            } }
            p { label { "Role cap "
                select name="role" { @for r in Role::ALL { option value=(r.as_str()) { (r.as_str()) } } }
            } " (at most your own role)" }
            p { label { "Expires in days " input name="expires_in_days" value="90"; } }
            button type="submit" { "Create" }
        }
    })
}

pub async fn token_create(
    State(web): St,
    v: Viewer,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, Page> {
    v.check_form(&web, &headers, &form)?;
    let name = form
        .get("name")
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    if name.is_empty() || name.len() > 100 {
        return Err(Page::bad("Name: 1 to 100 characters."));
    }
    let (team, mine) = v.in_team(
        form.get("team").map(String::as_str).unwrap_or_default(),
        Action::ManageOwnTokens,
    )?;
    let cap = match form.get("role").map(String::as_str) {
        None | Some("") => mine,
        Some(r) => Role::parse(r).ok_or_else(|| Page::bad("Unknown role."))?,
    };
    if !mine.at_least(cap) {
        return Err(Page::new(
            StatusCode::FORBIDDEN,
            "A token cannot have a stronger role than yours.",
        ));
    }
    let days = match form.get("expires_in_days").map(|d| d.trim()) {
        None | Some("") => None,
        Some(d) => Some(
            d.parse::<i64>()
                .ok()
                .filter(|d| (1..=3650).contains(d))
                .ok_or_else(|| Page::bad("Expires in days: 1 to 3650."))?,
        ),
    };
    let now = web.now();
    let uid = v.user.id.clone();
    let base = v.event("token.create", None);
    let (_row, secret) = audited(
        &web,
        move |s, key| {
            Ok(Ok(model::create_token(
                s,
                key,
                &NewToken {
                    kind: Kind::Api,
                    team_id: &team.id,
                    user_id: &uid,
                    name: &name,
                    role_cap: cap,
                    family: None,
                    expires_at: days.map(|d| now + d * 86_400_000),
                },
                now,
            )?))
        },
        move |(row, _)| SecurityEvent {
            target: Some(row.id.clone()),
            ..base
        },
    )
    .await?;
    // The page is rendered with the rotated session's CSRF token, so its forms still work.
    let mut v = v;
    let cookie = rotate(&web, &mut v).await?;
    let body = tokens_body(&web, &v, Some(&secret)).await?;
    Ok(with_cookie(
        html_page(layout(Some(&v.nav()), "API tokens", body)),
        &cookie,
    ))
}

pub async fn token_revoke(
    State(web): St,
    v: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, Page> {
    v.check_form(&web, &headers, &form)?;
    let (uid, tid, now) = (v.user.id.clone(), id.clone(), web.now());
    let event = v.event("token.revoke", Some(id));
    audited(
        &web,
        move |s, _| {
            let Some(t) = model::token(s, &tid)? else {
                return Ok(Err(Page::not_found()));
            };
            let role = model::role_in(s, &t.team_id, &uid)?;
            let allowed =
                t.user_id == uid || role.is_some_and(|r| roles::allows(r, Action::ManageAllTokens));
            if !allowed || t.kind != "api" || !model::revoke_token(s, &t.id, now)? {
                return Ok(Err(Page::not_found()));
            }
            Ok(Ok(()))
        },
        move |_| event,
    )
    .await?;
    Ok(Redirect::to("/tokens").into_response())
}

// ---- members ----

pub async fn members(
    State(web): St,
    v: Viewer,
    Path(team): Path<String>,
) -> Result<Response, Page> {
    let (team, mine) = v.in_team(&team, Action::ViewMembers)?;
    let tid = team.id.clone();
    let rows = db(&web, move |s, _| model::members(s, &tid, "", 200)).await?;
    let change = roles::allows(mine, Action::ChangeRoles);
    let remove = roles::allows(mine, Action::RemoveMembers);
    let invite = roles::allows(mine, Action::InviteMembers);
    let base = format!("/teams/{}/members", team.name);
    let body = html! {
        h1 { "Members of " (team.name) }
        table #members {
            tr { th { "Name" } th { "Email" } th { "Role" } th {} }
            @for m in &rows {
                tr {
                    td { (m.user.display_name) }
                    td { (m.user.email) }
                    td {
                        @if change {
                            form.inline method="post" action={ (base) "/" (m.user.id) "/role" } {
                                (csrf::field(&v.csrf))
                                select name="role" {
                                    @for r in Role::ALL {
                                        option value=(r.as_str()) selected[r == m.role] { (r.as_str()) }
                                    }
                                }
                                button type="submit" { "Change" }
                            }
                        } @else { (m.role.as_str()) }
                    }
                    td {
                        @if remove {
                            form.inline method="post" action={ (base) "/" (m.user.id) "/remove" } {
                                (csrf::field(&v.csrf))
                                button type="submit" { "Remove" }
                            }
                        }
                    }
                }
            }
        }
        @if invite {
            h2 { "Invite" }
            p.note { "The invited person signs in with Google, Microsoft or GitHub using exactly this email address (verified by the provider)." }
            form #invite method="post" action=(base) {
                (csrf::field(&v.csrf))
                p { label { "Email " input type="email" name="email" required; } }
                p { label { "Role "
                    select name="role" {
                        @for r in Role::ALL { @if roles::may_grant(mine, r) { option value=(r.as_str()) { (r.as_str()) } } }
                    }
                } }
                button type="submit" { "Invite" }
            }
        }
    };
    Ok(html_page(layout(Some(&v.nav()), "Members", body)))
}

pub async fn member_invite(
    State(web): St,
    v: Viewer,
    Path(team): Path<String>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, Page> {
    v.check_form(&web, &headers, &form)?;
    let (team, mine) = v.in_team(&team, Action::InviteMembers)?;
    let email = form
        .get("email")
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !(email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !email.contains(char::is_whitespace))
    {
        return Err(Page::bad("Not an email address."));
    }
    let role = form
        .get("role")
        .and_then(|r| Role::parse(r))
        .ok_or_else(|| Page::bad("Unknown role."))?;
    if !roles::may_grant(mine, role) {
        return Err(Page::forbidden());
    }
    let (tid, now) = (team.id.clone(), web.now());
    let (team_id, base) = (team.id.clone(), v.event("member.invite", None));
    audited(
        &web,
        move |s, _| {
            let u = model::create_user(s, &email, &email, now)?;
            if !model::add_member(s, &tid, &u.id, role, now)? {
                return Ok(Err(Page::new(StatusCode::CONFLICT, "Already a member.")));
            }
            Ok(Ok(u))
        },
        move |u| SecurityEvent {
            target: Some(crate::control::api::member_target(&team_id, &u.id)),
            ..base
        },
    )
    .await?;
    Ok(Redirect::to(&format!("/teams/{}/members", team.name)).into_response())
}

pub async fn member_role(
    State(web): St,
    v: Viewer,
    Path((team, user)): Path<(String, String)>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, Page> {
    v.check_form(&web, &headers, &form)?;
    let (team, _) = v.in_team(&team, Action::ChangeRoles)?;
    let role = form
        .get("role")
        .and_then(|r| Role::parse(r))
        .ok_or_else(|| Page::bad("Unknown role."))?;
    let (tid, uid) = (team.id.clone(), user.clone());
    // Check and change under the team's lock, with the record, in one transaction: two
    // Owners demoting each other at once (two replicas) cannot leave the team without one.
    let event = v.event(
        "member.role_change",
        Some(crate::control::api::member_target(&team.id, &user)),
    );
    audited(
        &web,
        move |s, _| {
            model::lock_team(s, &tid)?;
            let Some(current) = model::role_in(s, &tid, &uid)? else {
                return Ok(Err(Page::not_found()));
            };
            if current == Role::Owner && role != Role::Owner && model::owners(s, &tid)? <= 1 {
                return Ok(Err(Page::new(
                    StatusCode::CONFLICT,
                    "A team keeps at least one Owner; make someone else Owner first.",
                )));
            }
            model::set_role(s, &tid, &uid, role)?;
            Ok(Ok(()))
        },
        move |_| event,
    )
    .await?;
    let mut v = v;
    let cookie = rotate(&web, &mut v).await?;
    Ok(redirect_with_cookie(
        &format!("/teams/{}/members", team.name),
        &cookie,
    ))
}

pub async fn member_remove(
    State(web): St,
    v: Viewer,
    Path((team, user)): Path<(String, String)>,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, Page> {
    v.check_form(&web, &headers, &form)?;
    let (team, _) = v.in_team(&team, Action::RemoveMembers)?;
    let (tid, uid, now) = (team.id.clone(), user.clone(), web.now());
    let event = v.event(
        "member.remove",
        Some(crate::control::api::member_target(&team.id, &user)),
    );
    audited(
        &web,
        move |s, _| {
            model::lock_team(s, &tid)?;
            let Some(current) = model::role_in(s, &tid, &uid)? else {
                return Ok(Err(Page::not_found()));
            };
            if current == Role::Owner && model::owners(s, &tid)? <= 1 {
                return Ok(Err(Page::new(
                    StatusCode::CONFLICT,
                    "A team keeps at least one Owner.",
                )));
            }
            model::remove_member(s, &tid, &uid, now)?;
            Ok(Ok(()))
        },
        move |_| event,
    )
    .await?;
    Ok(Redirect::to(&format!("/teams/{}/members", team.name)).into_response())
}

// ---- audit log ----

const AUDIT_PAGE: i64 = 50;

/// The team's audit log: exactly the records `GET /api/v1/teams/{team}/audit-events`
/// shows (`resources::audit_events`: one scoping rule for both, so a record of another team
/// never reaches this page), newest first, filtered by action (exact or `auth.*`) and
/// actor, paginated by the API's cursor.
pub async fn audit(
    State(web): St,
    v: Viewer,
    Path(team): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Page> {
    use crate::control::resources::{self as res, ResourceError};
    let (team, _) = v.in_team(&team, Action::ViewAuditLog)?;
    let field = |k: &str| {
        q.get(k)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let (action, actor, before) = (field("action"), field("actor"), field("before"));
    let filter = res::AuditFilter {
        since: None,
        until: None,
        actor: actor.clone(),
        action: action.clone(),
    };
    let t = team.clone();
    let found = db(&web, move |s, _| {
        Ok(res::audit_events(
            s,
            &t,
            &filter,
            before.as_deref(),
            AUDIT_PAGE,
        ))
    })
    .await?;
    let page = found.map_err(|e| match e {
        ResourceError::InvalidCursor => Page::bad("Not a page of this log."),
        other => Page::from(other),
    })?;
    let rows = page.items;
    let next = page.next_cursor;
    let more = |cursor: &str| {
        let mut u = format!(
            "/teams/{}/audit?before={}",
            team.name,
            oidc::form_encode(cursor)
        );
        if let Some(a) = &action {
            u.push_str(&format!("&action={}", oidc::form_encode(a)));
        }
        if let Some(a) = &actor {
            u.push_str(&format!("&actor={}", oidc::form_encode(a)));
        }
        u
    };
    let body = html! {
        h1 { "Audit log of " (team.name) }
        form method="get" {
            label { "Action " input name="action" value=(action.clone().unwrap_or_default()) placeholder="auth.*"; }
            " "
            label { "Actor id " input name="actor" value=(actor.clone().unwrap_or_default()); }
            " "
            button type="submit" { "Filter" }
        }
        table #audit {
            tr { th { "#" } th { "Time" } th { "Actor" } th { "Action" } th { "Source" } th { "Target" } th { "Outcome" } }
            @for r in &rows {
                tr {
                    td { (r.seq) }
                    td { (r.time) }
                    td {
                        (r.actor.display)
                        @if r.actor.id != r.actor.display { " (" (r.actor.id) ")" }
                    }
                    td { (r.action) }
                    td { (r.source.clone().unwrap_or_default()) }
                    td {
                        @if let Some(t) = &r.target { (t.kind) " " (t.id.clone().unwrap_or_default()) }
                    }
                    td { (r.outcome) }
                }
            }
        }
        @if rows.is_empty() { p.note { "No records." } }
        @if let Some(n) = &next { p { a #older href=(more(n)) { "Older" } } }
    };
    Ok(html_page(layout(Some(&v.nav()), "Audit log", body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_on_this_site() {
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "",
            "x",
        ] {
            assert_eq!(local_path(Some(&bad.to_owned())), "/", "{bad}");
        }
        assert_eq!(
            local_path(Some(&"/device?user_code=X".to_owned())),
            "/device?user_code=X"
        );
        assert_eq!(local_path(None), "/");
    }

    proptest::proptest! {
        #[test]
        fn any_return_path_is_local(s in ".{0,80}") {
            let p = local_path(Some(&s));
            proptest::prop_assert!(p.starts_with('/'));
            proptest::prop_assert!(!p.starts_with("//") && !p.starts_with("/\\"));
            proptest::prop_assert!(!p.chars().any(char::is_control));
        }

        #[test]
        fn form_encoding_round_trips(s in ".{0,80}") {
            let e = oidc::form_encode(&s);
            proptest::prop_assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
            let back: Vec<(String, String)> =
                serde_urlencoded_pairs(&format!("k={e}"));
            proptest::prop_assert_eq!(&back[0].1, &s);
        }
    }

    /// Decodes `application/x-www-form-urlencoded` with axum's own parser.
    fn serde_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
        let uri: axum::http::Uri = format!("/?{q}").parse().unwrap();
        let Query(v): Query<Vec<(String, String)>> = Query::try_from_uri(&uri).unwrap();
        v
    }
}
