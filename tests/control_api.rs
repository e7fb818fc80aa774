//! The control plane's `/api/v1`, in process over real HTTP, on SQLite and PostgreSQL
//! (`stores()`): the full role matrix (every route × every role × own team and another
//! team's resource: 404, never 403), the device flow with its polling rules, refresh
//! rotation and reuse detection, revocation, user-code brute force, session idle expiry
//! and revoke-all, the one error shape for bad input, and no secret in the database.

mod common;
#[path = "common/resources.rs"]
mod resources;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use telbase::control::api::{self, ControlState, ROUTES};
use telbase::control::model::{self, NewToken};
use telbase::control::roles::{self, Action, Role};
use telbase::control::secrets::{Kind, ServerKey};
use telbase::store::Store;

use common::pg::{TestStore, stores};

const DAY: i64 = 86_400_000;

struct Server {
    base: String,
    clock: Arc<AtomicI64>,
    http: reqwest::Client,
}

impl Server {
    fn advance(&self, ms: i64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn form(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

async fn serve(store: Store, key: ServerKey) -> Server {
    let clock = Arc::new(AtomicI64::new(1_800_000_000_000));
    let mut state = ControlState::new(store, key, "http://telbase.test".into(), false);
    let c = clock.clone();
    state.clock = Arc::new(move || c.load(Ordering::SeqCst));
    state.master_keys = resources::master_keys();
    let app = api::router(Arc::new(state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Server {
        base: format!("http://{addr}"),
        clock,
        http: reqwest::Client::new(),
    }
}

/// Two teams: `acme` with one user of each role, `other` with its own Owner. Every user has
/// an API token for their team. Returns (user id by name, token by name).
struct World {
    users: std::collections::HashMap<&'static str, String>,
    tokens: std::collections::HashMap<&'static str, String>,
    token_ids: std::collections::HashMap<&'static str, String>,
}

const NOW: i64 = 1_800_000_000_000;

fn world(s: &mut Store, key: &ServerKey) -> World {
    let acme = model::create_team(s, "acme", NOW).unwrap().unwrap();
    let other = model::create_team(s, "other", NOW).unwrap().unwrap();
    // Each team may register its own account's repositories (an operator's grant).
    for t in [&acme, &other] {
        let pattern = format!("{}/*", t.name);
        telbase::control::projects::grant_repos(s, &t.id, &pattern, NOW)
            .unwrap()
            .unwrap();
    }
    let mut w = World {
        users: Default::default(),
        tokens: Default::default(),
        token_ids: Default::default(),
    };
    for (name, team, role) in [
        ("owner", &acme, Role::Owner),
        ("admin", &acme, Role::Admin),
        ("member", &acme, Role::Member),
        ("viewer", &acme, Role::Viewer),
        ("eve", &other, Role::Owner),
    ] {
        let u = model::create_user(s, &format!("{name}@example.com"), name, NOW).unwrap();
        model::add_member(s, &team.id, &u.id, role, NOW).unwrap();
        let (row, secret) = model::create_token(
            s,
            key,
            &NewToken {
                kind: Kind::Api,
                team_id: &team.id,
                user_id: &u.id,
                name: "t",
                role_cap: role,
                family: None,
                expires_at: None,
            },
            NOW,
        )
        .unwrap();
        w.users.insert(name, u.id);
        w.tokens.insert(name, secret.expose_secret().to_owned());
        w.token_ids.insert(name, row.id);
    }
    w
}

/// The security page's table (5.2) for the routes' actions, written out independently of
/// `roles::allows` so a change to either is caught.
fn expected(role: Role, action: Action) -> bool {
    let allowed: &[Role] = match action {
        Action::ViewSelf
        | Action::ManageOwnTokens
        | Action::ManageOwnSessions
        | Action::ApproveDevice => &Role::ALL,
        Action::ViewMembers => &[Role::Owner, Role::Admin, Role::Member],
        Action::InviteMembers => &[Role::Owner, Role::Admin],
        Action::ChangeRoles | Action::RemoveMembers => &[Role::Owner],
        Action::ViewProject | Action::ViewRuns => &Role::ALL,
        Action::ViewEnvVars | Action::ManageEnvVars => &[Role::Owner, Role::Admin, Role::Member],
        Action::ManageProjects | Action::ViewAuditLog => &[Role::Owner, Role::Admin],
        other => panic!("no expectation written for {other:?}"),
    };
    allowed.contains(&role)
}

fn role_name(r: Role) -> &'static str {
    r.as_str()
}

/// Every route × every role × own team / another team's resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix_on_every_route() {
    for ts in stores() {
        let key = ServerKey::generate();
        let mut s = ts.open();
        let w = world(&mut s, &key);
        // Fresh targets for the destructive routes, in both teams.
        let srv = serve(ts.open(), key.clone()).await;
        let mut checked = 0;
        for spec in ROUTES {
            let Some(action) = spec.action else { continue };
            for role in Role::ALL {
                let who = role_name(role);
                let bearer = w.tokens[who].clone();
                for own in [true, false] {
                    let team = if own { "acme" } else { "other" };
                    let (status, body, team_scoped) =
                        call_route(&srv, &ts, &key, &w, spec, who, &bearer, team, own).await;
                    let Some(status) = status else { continue };
                    checked += 1;
                    let ctx = format!(
                        "{} {} as {who} ({}, {})",
                        spec.method,
                        spec.path,
                        if own { "own team" } else { "other team" },
                        ts.name()
                    );
                    assert_ne!(status, StatusCode::UNAUTHORIZED, "{ctx}: {body}");
                    if !own && team_scoped {
                        assert_eq!(status, StatusCode::NOT_FOUND, "{ctx}: {body}");
                        assert_eq!(body["error"]["code"], "not_found", "{ctx}");
                    } else if expected(role, action) {
                        assert!(roles::allows(role, action));
                        assert!(status.is_success(), "{ctx}: {status} {body}");
                    } else {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{ctx}: {body}");
                        assert_eq!(body["error"]["code"], "forbidden", "{ctx}");
                    }
                }
            }
        }
        assert_eq!(checked, 160, "every route × role × team case ran");
        // An Admin invites Members and Viewers, not Owners.
        let (st, body) = srv
            .call(
                Method::POST,
                "/api/v1/teams/acme/members",
                Some(&w.tokens["admin"]),
                Some(json!({"email": "boss@example.com", "role": "owner"})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
        // The last Owner cannot be demoted.
        let (st, body) = srv
            .call(
                Method::PATCH,
                &format!("/api/v1/teams/acme/members/{}", w.users["owner"]),
                Some(&w.tokens["owner"]),
                Some(json!({"role": "viewer"})),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "last_owner");
    }
}

/// Sends one request for `spec` as `who`: the team route with `team`, or for the routes
/// about oneself, a resource of one's own (own) or of the other team's user (not own).
/// Returns None when the case does not exist (listing routes have no other-team variant).
#[allow(clippy::too_many_arguments)]
async fn call_route(
    srv: &Server,
    ts: &TestStore,
    key: &ServerKey,
    w: &World,
    spec: &api::RouteSpec,
    who: &str,
    bearer: &str,
    team: &str,
    own: bool,
) -> (Option<StatusCode>, Value, bool) {
    let method = Method::from_bytes(spec.method.as_bytes()).unwrap();
    let team_scoped = spec.path.contains("{team}");
    let mut s = ts.open();
    let fresh_member = |s: &mut Store, team: &str| -> String {
        let t = model::team_by_name(s, team).unwrap().unwrap();
        let u = model::create_user(
            s,
            &format!("{}@example.com", telbase::control::secrets::new_id()),
            "x",
            NOW,
        )
        .unwrap();
        model::add_member(s, &t.id, &u.id, Role::Viewer, NOW).unwrap();
        u.id
    };
    let (path, body): (String, Option<Value>) = match (spec.method, spec.path) {
        ("POST", "/api/v1/device/approve") => {
            let (_, code) = model::create_device(&mut s, key, "telbase-cli", "", NOW).unwrap();
            (
                spec.path.into(),
                Some(json!({"user_code": code.expose_secret(), "team": team})),
            )
        }
        ("GET", "/api/v1/me")
        | ("GET", "/api/v1/tokens")
        | ("GET", "/api/v1/sessions")
        | ("GET", "/api/v1/logins")
        | ("POST", "/api/v1/sessions/revoke-all") => {
            if !own {
                return (None, Value::Null, false);
            }
            (spec.path.into(), None)
        }
        ("POST", "/api/v1/tokens") => (spec.path.into(), Some(json!({"name": "ci", "team": team}))),
        ("DELETE", "/api/v1/tokens/{id}") => {
            // Own: a token of one's own; not own: the other team's Owner's token.
            let owner = if own { who } else { "eve" };
            let t = model::team_by_name(&mut s, if own { "acme" } else { "other" })
                .unwrap()
                .unwrap();
            let (row, _) = model::create_token(
                &mut s,
                key,
                &NewToken {
                    kind: Kind::Api,
                    team_id: &t.id,
                    user_id: &w.users[owner],
                    name: "spare",
                    role_cap: Role::Viewer,
                    family: None,
                    expires_at: None,
                },
                NOW,
            )
            .unwrap();
            (format!("/api/v1/tokens/{}", row.id), None)
        }
        ("DELETE", "/api/v1/sessions/{id}") => {
            let owner = if own { who } else { "eve" };
            let (row, _) =
                model::create_session(&mut s, key, &w.users[owner], "test", "127.0.0.1", NOW)
                    .unwrap();
            (format!("/api/v1/sessions/{}", row.id), None)
        }
        ("DELETE", "/api/v1/logins/{id}") => {
            let owner = if own { who } else { "eve" };
            let t = model::team_by_name(&mut s, if own { "acme" } else { "other" })
                .unwrap()
                .unwrap();
            let family = telbase::control::secrets::new_id();
            model::issue_grant(&mut s, key, &family, &w.users[owner], &t.id, "cli", NOW).unwrap();
            (format!("/api/v1/logins/{family}"), None)
        }
        ("GET", "/api/v1/teams/{team}/members") => (format!("/api/v1/teams/{team}/members"), None),
        ("POST", "/api/v1/teams/{team}/members") => (
            format!("/api/v1/teams/{team}/members"),
            Some(
                json!({"email": format!("{}@example.com", telbase::control::secrets::new_id()), "role": "viewer"}),
            ),
        ),
        ("PATCH", "/api/v1/teams/{team}/members/{user}") => {
            let target = fresh_member(&mut s, team);
            (
                format!("/api/v1/teams/{team}/members/{target}"),
                Some(json!({"role": "member"})),
            )
        }
        ("DELETE", "/api/v1/teams/{team}/members/{user}") => {
            let target = fresh_member(&mut s, team);
            (format!("/api/v1/teams/{team}/members/{target}"), None)
        }
        (method, path) => resources::matrix_request(&mut s, method, path, team)
            .unwrap_or_else(|| panic!("the matrix does not know route {method} {path}: add it")),
    };
    drop(s);
    // Routes about oneself carry "another team" in their resource, which is a 404 too.
    let about_other = !own && !team_scoped;
    let (status, v) = srv.call(method, &path, Some(bearer), body).await;
    if about_other {
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{} {} as {who} on the other team's resource: {v}",
            spec.method,
            spec.path
        );
        return (None, v, team_scoped);
    }
    (Some(status), v, team_scoped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_refresh_rotation_reuse_and_revocation() {
    for ts in stores() {
        let key = ServerKey::generate();
        let mut s = ts.open();
        let w = world(&mut s, &key);
        let srv = serve(ts.open(), key.clone()).await;
        let (st, start) = srv
            .form(
                "/api/v1/oauth/device_authorization",
                &[("client_id", "telbase-cli"), ("scope", "api")],
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{start}");
        let device = start["device_code"].as_str().unwrap().to_owned();
        let user_code = start["user_code"].as_str().unwrap().to_owned();
        assert!(device.starts_with("tlb_dc_"));
        assert_eq!(user_code.len(), 9);
        assert_eq!(&user_code[4..5], "-");
        assert_eq!(start["verification_uri"], "http://telbase.test/device");
        assert_eq!(
            start["verification_uri_complete"],
            format!("http://telbase.test/device?user_code={user_code}")
        );
        assert_eq!(start["interval"], 5);
        assert_eq!(start["expires_in"], 900);
        let poll = [
            ("grant_type", api::DEVICE_GRANT),
            ("device_code", device.as_str()),
            ("client_id", "telbase-cli"),
        ];
        let (st, e) = srv.form("/api/v1/oauth/token", &poll).await;
        assert_eq!(
            (st, e["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("authorization_pending"))
        );
        // Polled again at once: slow down, and the interval is now 10 s.
        srv.advance(1_000);
        let (_, e) = srv.form("/api/v1/oauth/token", &poll).await;
        assert_eq!(e["error"], "slow_down", "{e}");
        srv.advance(6_000);
        let (_, e) = srv.form("/api/v1/oauth/token", &poll).await;
        assert_eq!(
            e["error"], "slow_down",
            "5 s is no longer enough after a slow_down: {e}"
        );
        srv.advance(16_000);
        let (_, e) = srv.form("/api/v1/oauth/token", &poll).await;
        assert_eq!(e["error"], "authorization_pending", "{e}");
        // Another client cannot use this device code.
        srv.advance(16_000);
        let (_, e) = srv
            .form(
                "/api/v1/oauth/token",
                &[
                    ("grant_type", api::DEVICE_GRANT),
                    ("device_code", &device),
                    ("client_id", "other"),
                ],
            )
            .await;
        assert_eq!(e["error"], "invalid_grant");
        // The Member approves (typed in lowercase without the dash).
        let typed = user_code.replace('-', "").to_lowercase();
        let (st, body) = srv
            .call(
                Method::POST,
                "/api/v1/device/approve",
                Some(&w.tokens["member"]),
                Some(json!({"user_code": typed})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(body["team"], "acme");
        srv.advance(16_000);
        let (st, tok) = srv.form("/api/v1/oauth/token", &poll).await;
        assert_eq!(st, StatusCode::OK, "{tok}");
        assert_eq!(tok["token_type"], "Bearer");
        assert_eq!(tok["expires_in"], 3600);
        let access = tok["access_token"].as_str().unwrap().to_owned();
        let refresh = tok["refresh_token"].as_str().unwrap().to_owned();
        assert!(access.starts_with("tlb_at_") && refresh.starts_with("tlb_rt_"));
        // The device code is used up.
        srv.advance(16_000);
        let (_, e) = srv.form("/api/v1/oauth/token", &poll).await;
        assert_eq!(e["error"], "invalid_grant");
        let (st, me) = srv
            .call(Method::GET, "/api/v1/me", Some(&access), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{me}");
        assert_eq!(me["user"]["email"], "member@example.com");
        assert_eq!(me["via"]["kind"], "access_token");
        // The access token carries the Member's role: no invites.
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/teams/acme/members",
                Some(&access),
                Some(json!({"email": "x@example.com", "role": "viewer"})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        // An hour later the access token is expired; the refresh token rotates.
        srv.advance(3_600_001);
        let (st, _) = srv
            .call(Method::GET, "/api/v1/me", Some(&access), None)
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, tok2) = srv
            .form(
                "/api/v1/oauth/token",
                &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{tok2}");
        let access2 = tok2["access_token"].as_str().unwrap().to_owned();
        let refresh2 = tok2["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(refresh2, refresh);
        let (st, _) = srv
            .call(Method::GET, "/api/v1/me", Some(&access2), None)
            .await;
        assert_eq!(st, StatusCode::OK);
        // The old refresh token again: reuse. The whole family is revoked.
        let (st, e) = srv
            .form(
                "/api/v1/oauth/token",
                &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            )
            .await;
        assert_eq!(
            (st, e["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        let (st, _) = srv
            .call(Method::GET, "/api/v1/me", Some(&access2), None)
            .await;
        assert_eq!(
            st,
            StatusCode::UNAUTHORIZED,
            "the reuse revoked the current access token"
        );
        let (_, e) = srv
            .form(
                "/api/v1/oauth/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh2),
                ],
            )
            .await;
        assert_eq!(e["error"], "invalid_grant", "and the current refresh token");

        // A second login, denied; a third, logged out through RFC 7009 revocation.
        let (_, start) = srv
            .form(
                "/api/v1/oauth/device_authorization",
                &[("client_id", "telbase-cli")],
            )
            .await;
        let d2 = start["device_code"].as_str().unwrap().to_owned();
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/device/approve",
                Some(&w.tokens["viewer"]),
                Some(json!({"user_code": start["user_code"], "approve": false})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        let (_, e) = srv
            .form(
                "/api/v1/oauth/token",
                &[
                    ("grant_type", api::DEVICE_GRANT),
                    ("device_code", &d2),
                    ("client_id", "telbase-cli"),
                ],
            )
            .await;
        assert_eq!(e["error"], "access_denied");
        let (_, start) = srv
            .form(
                "/api/v1/oauth/device_authorization",
                &[("client_id", "telbase-cli")],
            )
            .await;
        let d3 = start["device_code"].as_str().unwrap().to_owned();
        srv.call(
            Method::POST,
            "/api/v1/device/approve",
            Some(&w.tokens["viewer"]),
            Some(json!({"user_code": start["user_code"]})),
        )
        .await;
        let (_, tok3) = srv
            .form(
                "/api/v1/oauth/token",
                &[
                    ("grant_type", api::DEVICE_GRANT),
                    ("device_code", &d3),
                    ("client_id", "telbase-cli"),
                ],
            )
            .await;
        let (a3, r3) = (
            tok3["access_token"].as_str().unwrap(),
            tok3["refresh_token"].as_str().unwrap(),
        );
        let (st, _) = srv
            .form(
                "/api/v1/oauth/revoke",
                &[("token", r3), ("token_type_hint", "refresh_token")],
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        let (st, _) = srv.call(Method::GET, "/api/v1/me", Some(a3), None).await;
        assert_eq!(
            st,
            StatusCode::UNAUTHORIZED,
            "logout revokes the access token too"
        );
        let (st, _) = srv
            .form("/api/v1/oauth/revoke", &[("token", "tlb_rt_unknown")])
            .await;
        assert_eq!(
            st,
            StatusCode::OK,
            "RFC 7009: unknown tokens are not an error"
        );

        // The dashboard lists the viewer's CLI logins and revokes one.
        let (_, start) = srv
            .form(
                "/api/v1/oauth/device_authorization",
                &[("client_id", "telbase-cli")],
            )
            .await;
        let d5 = start["device_code"].as_str().unwrap().to_owned();
        srv.call(
            Method::POST,
            "/api/v1/device/approve",
            Some(&w.tokens["viewer"]),
            Some(json!({"user_code": start["user_code"]})),
        )
        .await;
        let (_, tok5) = srv
            .form(
                "/api/v1/oauth/token",
                &[
                    ("grant_type", api::DEVICE_GRANT),
                    ("device_code", &d5),
                    ("client_id", "telbase-cli"),
                ],
            )
            .await;
        let a5 = tok5["access_token"].as_str().unwrap().to_owned();
        let (st, list) = srv
            .call(
                Method::GET,
                "/api/v1/logins",
                Some(&w.tokens["viewer"]),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{list}");
        let items = list["items"].as_array().unwrap();
        assert_eq!(
            items.len(),
            1,
            "only the live login (the logged-out one is gone): {list}"
        );
        assert_eq!(items[0]["team"], "acme");
        let id = items[0]["id"].as_str().unwrap();
        let (st, _) = srv.call(Method::GET, "/api/v1/me", Some(&a5), None).await;
        assert_eq!(st, StatusCode::OK);
        let (st, _) = srv
            .call(
                Method::DELETE,
                &format!("/api/v1/logins/{id}"),
                Some(&w.tokens["member"]),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "someone else's login");
        let (st, _) = srv
            .call(
                Method::DELETE,
                &format!("/api/v1/logins/{id}"),
                Some(&w.tokens["viewer"]),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _) = srv.call(Method::GET, "/api/v1/me", Some(&a5), None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);

        // An unapproved code expires after 15 minutes.
        let (_, start) = srv
            .form(
                "/api/v1/oauth/device_authorization",
                &[("client_id", "telbase-cli")],
            )
            .await;
        let d4 = start["device_code"].as_str().unwrap().to_owned();
        srv.advance(15 * 60 * 1000 + 1);
        let (_, e) = srv
            .form(
                "/api/v1/oauth/token",
                &[
                    ("grant_type", api::DEVICE_GRANT),
                    ("device_code", &d4),
                    ("client_id", "telbase-cli"),
                ],
            )
            .await;
        assert_eq!(e["error"], "expired_token");
        let (_, e) = srv
            .form("/api/v1/oauth/token", &[("grant_type", "password")])
            .await;
        assert_eq!(e["error"], "unsupported_grant_type");

        // No secret handed out above is anywhere in the database.
        let secrets = [
            &device,
            &access,
            &refresh,
            &access2,
            &refresh2,
            &w.tokens["owner"],
            &user_code.replace('-', ""),
        ];
        assert_no_secret_stored(&ts, &secrets);
    }
}

fn assert_no_secret_stored(ts: &TestStore, secrets: &[&String]) {
    let dump: String = match ts {
        TestStore::Sqlite(dir) => {
            // The database file and its WAL, as bytes.
            let mut all = Vec::new();
            for e in std::fs::read_dir(dir.path()).unwrap() {
                all.extend(std::fs::read(e.unwrap().path()).unwrap());
            }
            String::from_utf8_lossy(&all).into_owned()
        }
        TestStore::Postgres(db) => {
            let mut out = String::new();
            for t in [
                "cp_tokens",
                "cp_sessions",
                "cp_device_codes",
                "cp_refresh_tokens",
                "cp_users",
                "cp_failures",
            ] {
                for row in db.rows(&format!("SELECT * FROM {t}")) {
                    for v in row.into_iter().flatten() {
                        out.push_str(&v);
                        out.push('\n');
                    }
                }
            }
            out
        }
    };
    assert!(
        dump.len() > 100,
        "the dump is empty: the check would prove nothing"
    );
    for s in secrets {
        // The random part (the prefix alone is in every row's neighbourhood of course not).
        let tail = &s[s.len().saturating_sub(20)..];
        assert!(
            !dump.contains(tail),
            "a secret is stored in plain text ({})",
            ts.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_code_entry_is_rate_limited() {
    for ts in stores() {
        let key = ServerKey::generate();
        let mut s = ts.open();
        let w = world(&mut s, &key);
        let (_, real) = model::create_device(&mut s, &key, "telbase-cli", "", NOW).unwrap();
        let srv = serve(ts.open(), key.clone()).await;
        for i in 0..api::APPROVE_FAILURES {
            let (st, body) = srv
                .call(
                    Method::POST,
                    "/api/v1/device/approve",
                    Some(&w.tokens["viewer"]),
                    Some(json!({"user_code": "BBBB-BBBB"})),
                )
                .await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "attempt {i}: {body}");
            assert_eq!(body["error"]["code"], "invalid_user_code");
        }
        // Even the right code is refused now, with a Retry-After.
        let resp = srv
            .http
            .post(format!("{}/api/v1/device/approve", srv.base))
            .bearer_auth(&w.tokens["viewer"])
            .json(&json!({"user_code": real.expose_secret()}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: i64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=900).contains(&retry), "{retry}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
        // Another user from the same address is limited too (per-address counter).
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/device/approve",
                Some(&w.tokens["owner"]),
                Some(json!({"user_code": real.expose_secret()})),
            )
            .await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
        // After the window, the right code works.
        srv.advance(api::APPROVE_WINDOW_MS + 1);
        let (_, code2) = model::create_device(
            &mut s,
            &key,
            "telbase-cli",
            "",
            NOW + api::APPROVE_WINDOW_MS,
        )
        .unwrap();
        let (st, body) = srv
            .call(
                Method::POST,
                "/api/v1/device/approve",
                Some(&w.tokens["viewer"]),
                Some(json!({"user_code": code2.expose_secret()})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_when_idle_and_revoke_all_is_immediate() {
    for ts in stores() {
        let key = ServerKey::generate();
        let mut s = ts.open();
        let w = world(&mut s, &key);
        let srv = serve(ts.open(), key.clone()).await;
        let (_, cookie) =
            model::create_session(&mut s, &key, &w.users["viewer"], "Firefox", "10.0.0.1", NOW)
                .unwrap();
        let (_, cookie2) =
            model::create_session(&mut s, &key, &w.users["viewer"], "Chrome", "10.0.0.2", NOW)
                .unwrap();
        let me = |c: String| {
            let (http, base) = (srv.http.clone(), srv.base.clone());
            async move {
                let r = http
                    .get(format!("{base}/api/v1/me"))
                    .header("cookie", format!("telbase_session={c}"))
                    .send()
                    .await
                    .unwrap();
                r.status()
            }
        };
        let c1 = cookie.expose_secret().to_owned();
        let c2 = cookie2.expose_secret().to_owned();
        assert_eq!(me(c1.clone()).await, StatusCode::OK);
        // Used every 29 days, it lives on.
        srv.advance(29 * DAY);
        assert_eq!(me(c1.clone()).await, StatusCode::OK);
        srv.advance(29 * DAY);
        assert_eq!(me(c1.clone()).await, StatusCode::OK);
        // The other one was idle 58 days: gone.
        assert_eq!(me(c2.clone()).await, StatusCode::UNAUTHORIZED);
        // The session list shows the live one with its user agent.
        let r = srv
            .http
            .get(format!("{}/api/v1/sessions", srv.base))
            .header("cookie", format!("telbase_session={c1}"))
            .send()
            .await
            .unwrap();
        let list: Value = r.json().await.unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list["items"][0]["user_agent"], "Firefox");
        // 30 days and a bit without use: expired.
        srv.advance(30 * DAY + 1);
        assert_eq!(me(c1.clone()).await, StatusCode::UNAUTHORIZED);
        // Revoke-all from one session ends the others on their next request.
        let (_, a) = model::create_session(
            &mut s,
            &key,
            &w.users["viewer"],
            "A",
            "10.0.0.1",
            NOW + 89 * DAY,
        )
        .unwrap();
        let (_, b) = model::create_session(
            &mut s,
            &key,
            &w.users["viewer"],
            "B",
            "10.0.0.1",
            NOW + 89 * DAY,
        )
        .unwrap();
        let (a, b) = (a.expose_secret().to_owned(), b.expose_secret().to_owned());
        assert_eq!(me(b.clone()).await, StatusCode::OK);
        let r = srv
            .http
            .post(format!("{}/api/v1/sessions/revoke-all", srv.base))
            .header("cookie", format!("telbase_session={a}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(me(b).await, StatusCode::UNAUTHORIZED);
        assert_eq!(me(a).await, StatusCode::UNAUTHORIZED);
        // The API token is not a session: it still works.
        let (st, _) = srv
            .call(Method::GET, "/api/v1/me", Some(&w.tokens["viewer"]), None)
            .await;
        assert_eq!(st, StatusCode::OK);
    }
}

/// A sensitive change made through the API with a browser session rotates the session, as
/// the dashboard does: the response sets a new cookie, and the old one is dead. Reads and
/// refused changes leave it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_api_changes_rotate_the_browser_session() {
    for ts in stores() {
        let key = ServerKey::generate();
        let mut s = ts.open();
        let w = world(&mut s, &key);
        let srv = serve(ts.open(), key.clone()).await;
        let (_, cookie) =
            model::create_session(&mut s, &key, &w.users["member"], "Firefox", "10.0.0.1", NOW)
                .unwrap();
        let send = |method: Method, path: &str, cookie: &str, body: Option<Value>| {
            let mut req = srv
                .http
                .request(method, format!("{}{path}", srv.base))
                .header("cookie", format!("telbase_session={cookie}"))
                .header("user-agent", "Firefox");
            if let Some(b) = body {
                req = req.json(&b);
            }
            req.send()
        };
        let new_cookie = |r: &reqwest::Response| {
            r.headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| {
                    v.strip_prefix("telbase_session=")
                        .map(|rest| rest.split(';').next().unwrap().to_owned())
                })
        };
        let c0 = cookie.expose_secret().to_owned();
        // A read: same session, no cookie.
        let r = send(Method::GET, "/api/v1/me", &c0, None).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(new_cookie(&r), None);
        // A refused change (a token stronger than the role): nothing rotates.
        let r = send(
            Method::POST,
            "/api/v1/tokens",
            &c0,
            Some(json!({"name": "x", "team": "acme", "role": "owner"})),
        )
        .await
        .unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
        assert_eq!(new_cookie(&r), None);
        // Creating a token: a new session, the old one dead at once.
        let r = send(
            Method::POST,
            "/api/v1/tokens",
            &c0,
            Some(json!({"name": "ci", "team": "acme", "role": "viewer"})),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let c1 = new_cookie(&r).expect("a rotated session cookie");
        assert_ne!(c1, c0);
        let me = |c: String| async move {
            send(Method::GET, "/api/v1/me", &c, None)
                .await
                .unwrap()
                .status()
        };
        assert_eq!(me(c0.clone()).await, StatusCode::UNAUTHORIZED);
        assert_eq!(me(c1.clone()).await, StatusCode::OK);
        // The new session keeps the user agent, so the session list still names it.
        let r = send(Method::GET, "/api/v1/sessions", &c1, None)
            .await
            .unwrap();
        let list: Value = r.json().await.unwrap();
        assert_eq!(list["items"][0]["user_agent"], "Firefox", "{list}");
        // Revoke-all ends the session and sets no new one.
        let r = send(Method::POST, "/api/v1/sessions/revoke-all", &c1, None)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(new_cookie(&r), None);
        assert_eq!(me(c1).await, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_shown_once_paginated_and_revocable() {
    for ts in stores() {
        let key = ServerKey::generate();
        let mut s = ts.open();
        let w = world(&mut s, &key);
        let srv = serve(ts.open(), key.clone()).await;
        let mut secrets = Vec::new();
        for i in 0..5 {
            let (st, body) = srv
                .call(
                    Method::POST,
                    "/api/v1/tokens",
                    Some(&w.tokens["member"]),
                    Some(json!({"name": format!("t{i}"), "team": "acme", "role": "viewer"})),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED, "{body}");
            assert!(body["secret"].as_str().unwrap().starts_with("tlb_pat_"));
            assert_eq!(body["token"]["role_cap"], "viewer");
            assert!(body["token"].get("secret_hash").is_none());
            secrets.push(body["secret"].as_str().unwrap().to_owned());
        }
        // A token stronger than its maker's role is refused.
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(&w.tokens["member"]),
                Some(json!({"name": "x", "team": "acme", "role": "owner"})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        // Pages of 2: 6 tokens (5 + the world's) in 3 pages, no repeats, no secrets.
        let mut seen = std::collections::HashSet::new();
        let mut cursor = String::new();
        let mut pages = 0;
        loop {
            let (st, page) = srv
                .call(
                    Method::GET,
                    &format!("/api/v1/tokens?limit=2&cursor={cursor}"),
                    Some(&w.tokens["member"]),
                    None,
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{page}");
            pages += 1;
            for t in page["items"].as_array().unwrap() {
                assert!(seen.insert(t["id"].as_str().unwrap().to_owned()));
                assert!(!t.to_string().contains("tlb_pat_"));
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
            assert!(pages < 10);
        }
        assert_eq!(seen.len(), 6);
        let (st, e) = srv
            .call(
                Method::GET,
                "/api/v1/tokens?cursor=not-a-cursor",
                Some(&w.tokens["member"]),
                None,
            )
            .await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_cursor"))
        );
        let (st, _) = srv
            .call(
                Method::GET,
                "/api/v1/tokens?limit=0",
                Some(&w.tokens["member"]),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        // The new token works, then is revoked and stops at once.
        let (st, _) = srv
            .call(Method::GET, "/api/v1/me", Some(&secrets[0]), None)
            .await;
        assert_eq!(st, StatusCode::OK);
        let row = model::use_token(&mut s, &key, &secrets[0], NOW, "x")
            .unwrap()
            .unwrap();
        // Someone else's token: 404 (the Viewer is in the same team but is not an Owner).
        let (st, _) = srv
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{}", row.id),
                Some(&w.tokens["viewer"]),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _) = srv
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{}", row.id),
                Some(&w.tokens["member"]),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, e) = srv
            .call(Method::GET, "/api/v1/me", Some(&secrets[0]), None)
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        assert_eq!(e["error"]["code"], "unauthorized");
        // The team's Owner may revoke a member's token (ManageAllTokens).
        let row = model::use_token(&mut s, &key, &secrets[1], NOW, "x")
            .unwrap()
            .unwrap();
        let (st, _) = srv
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{}", row.id),
                Some(&w.tokens["owner"]),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        // A removed member's tokens stop working.
        let (st, _) = srv
            .call(
                Method::DELETE,
                &format!("/api/v1/teams/acme/members/{}", w.users["member"]),
                Some(&w.tokens["owner"]),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _) = srv
            .call(Method::GET, "/api/v1/me", Some(&secrets[2]), None)
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let stored: Vec<&String> = secrets.iter().collect();
        assert_no_secret_stored(&ts, &stored);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_in_one_shape() {
    let ts = TestStore::Sqlite(tempfile::tempdir().unwrap());
    let key = ServerKey::generate();
    let mut s = ts.open();
    let w = world(&mut s, &key);
    let srv = serve(ts.open(), key.clone()).await;
    let tok = Some(w.tokens["owner"].as_str());
    let shape = |st: StatusCode, v: &Value, want: StatusCode| {
        assert_eq!(st, want, "{v}");
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{v}"
        );
    };
    // No credentials, a malformed one, a well-formed unknown one, a wrong scheme.
    let (st, v) = srv.call(Method::GET, "/api/v1/me", None, None).await;
    shape(st, &v, StatusCode::UNAUTHORIZED);
    let (st, v) = srv
        .call(Method::GET, "/api/v1/me", Some("garbage"), None)
        .await;
    shape(st, &v, StatusCode::UNAUTHORIZED);
    let fake = format!("tlb_pat_{}", "A".repeat(43));
    let (st, v) = srv.call(Method::GET, "/api/v1/me", Some(&fake), None).await;
    shape(st, &v, StatusCode::UNAUTHORIZED);
    // Malformed JSON, wrong types, unknown fields, no content type, too large.
    let r = srv
        .http
        .post(format!("{}/api/v1/tokens", srv.base))
        .bearer_auth(&w.tokens["owner"])
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    let st = r.status();
    shape(st, &r.json().await.unwrap(), StatusCode::BAD_REQUEST);
    let (st, v) = srv
        .call(
            Method::POST,
            "/api/v1/tokens",
            tok,
            Some(json!({"name": 5, "team": "acme"})),
        )
        .await;
    assert!(st.is_client_error());
    assert!(v["error"]["code"].is_string());
    let (st, v) = srv
        .call(
            Method::POST,
            "/api/v1/tokens",
            tok,
            Some(json!({"name": "a", "team": "acme", "admin": true})),
        )
        .await;
    assert!(st.is_client_error(), "{v}");
    let r = srv
        .http
        .post(format!("{}/api/v1/tokens", srv.base))
        .bearer_auth(&w.tokens["owner"])
        .body("name=a")
        .send()
        .await
        .unwrap();
    let st = r.status();
    shape(
        st,
        &r.json().await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    );
    let big = json!({"name": "x".repeat(64 * 1024), "team": "acme"});
    let (st, v) = srv
        .call(Method::POST, "/api/v1/tokens", tok, Some(big))
        .await;
    shape(st, &v, StatusCode::PAYLOAD_TOO_LARGE);
    let (st, v) = srv
        .call(
            Method::POST,
            "/api/v1/teams/acme/members",
            tok,
            Some(json!({"email": "nope", "role": "viewer"})),
        )
        .await;
    shape(st, &v, StatusCode::BAD_REQUEST);
    let (st, v) = srv
        .call(
            Method::POST,
            "/api/v1/teams/acme/members",
            tok,
            Some(json!({"email": "a@b.c", "role": "god"})),
        )
        .await;
    assert!(st.is_client_error(), "{v}");
    // Unknown routes and methods.
    let (st, v) = srv
        .call(Method::GET, "/api/v1/nothing-here", tok, None)
        .await;
    shape(st, &v, StatusCode::NOT_FOUND);
    let (st, v) = srv.call(Method::PUT, "/api/v1/me", tok, None).await;
    shape(st, &v, StatusCode::METHOD_NOT_ALLOWED);
    // OAuth endpoints: their own RFC shape.
    let r = srv
        .http
        .post(format!("{}/api/v1/oauth/token", srv.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("%%%")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request", "{v}");
    let (st, v) = srv
        .form(
            "/api/v1/oauth/device_authorization",
            &[("client_id", "bad client!")],
        )
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_client"))
    );
    let (_, v) = srv
        .form(
            "/api/v1/oauth/token",
            &[
                ("grant_type", api::DEVICE_GRANT),
                ("device_code", "tlb_dc_x"),
            ],
        )
        .await;
    assert_eq!(v["error"], "invalid_grant");
}

#[test]
fn every_route_is_in_the_router_and_has_a_place_in_the_table() {
    // Each action a route names must be decided for every role (the table is total by
    // construction; this proves the ROUTES list names only real actions and covers the
    // issue's list).
    let named: std::collections::HashSet<_> = ROUTES.iter().filter_map(|r| r.action).collect();
    for a in [
        Action::ViewSelf,
        Action::ManageOwnTokens,
        Action::ManageOwnSessions,
        Action::ViewMembers,
        Action::InviteMembers,
        Action::ChangeRoles,
        Action::RemoveMembers,
        Action::ApproveDevice,
    ] {
        assert!(named.contains(&a), "{a:?}");
    }
    let unique: std::collections::HashSet<_> = ROUTES.iter().map(|r| (r.method, r.path)).collect();
    assert_eq!(unique.len(), ROUTES.len());
}

#[test]
fn debug_output_never_shows_a_secret() {
    let key = ServerKey::generate();
    assert_eq!(format!("{key:?}"), "ServerKey(..)");
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        telbase::store::open(&telbase::store::Location::Sqlite(dir.path().join("db"))).unwrap();
    let team = model::create_team(&mut s, "t", NOW).unwrap().unwrap();
    let u = model::create_user(&mut s, "a@b.c", "a", NOW).unwrap();
    model::add_member(&mut s, &team.id, &u.id, Role::Owner, NOW).unwrap();
    let g = model::issue_grant(&mut s, &key, "fam", &u.id, &team.id, "cli", NOW).unwrap();
    let shown = format!("{g:?}");
    assert!(
        !shown.contains(g.access.expose_secret()) && !shown.contains(g.refresh.expose_secret()),
        "{shown}"
    );
    let (row, secret) = model::create_session(&mut s, &key, &u.id, "ua", "1.2.3.4", NOW).unwrap();
    assert!(!format!("{row:?}").contains(secret.expose_secret()));
    let c = telbase::control::cli::Credentials {
        server: "https://x".into(),
        access_token: g.access.expose_secret().to_owned(),
        refresh_token: g.refresh.expose_secret().to_owned(),
        expires_at: 0,
    };
    assert!(!format!("{c:?}").contains("tlb_"));
}

/// Collects events; fails every record when `broken`.
#[derive(Default)]
struct Events {
    seen: std::sync::Mutex<Vec<telbase::control::SecurityEvent>>,
    broken: std::sync::atomic::AtomicBool,
}

impl telbase::control::SecurityEvents for Events {
    fn record(&self, e: &telbase::control::SecurityEvent) -> Result<(), String> {
        if self.broken.load(Ordering::SeqCst) {
            return Err("the audit log is down".into());
        }
        self.seen.lock().unwrap().push(e.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_events_are_recorded_without_secrets_and_required() {
    let ts = TestStore::Sqlite(tempfile::tempdir().unwrap());
    let key = ServerKey::generate();
    let mut s = ts.open();
    let w = world(&mut s, &key);
    let events = Arc::new(Events::default());
    let mut state = ControlState::new(ts.open(), key.clone(), "http://t".into(), false);
    state.events = events.clone();
    let app = api::router(Arc::new(state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let srv = Server {
        base: format!("http://{addr}"),
        clock: Arc::new(AtomicI64::new(NOW)),
        http: reqwest::Client::new(),
    };
    let (st, body) = srv
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&w.tokens["owner"]),
            Some(json!({"name": "ci", "team": "acme"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let secret = body["secret"].as_str().unwrap().to_owned();
    let (st, _) = srv
        .call(Method::GET, "/api/v1/me", Some("tlb_pat_wrong"), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    {
        let seen = events.seen.lock().unwrap();
        let create = seen
            .iter()
            .find(|e| e.action == "token.create")
            .expect("token.create recorded");
        assert_eq!(create.actor.as_deref(), Some(w.users["owner"].as_str()));
        assert_eq!(create.address, "127.0.0.1");
        assert_eq!(create.target.as_deref(), body["token"]["id"].as_str());
        assert!(
            seen.iter()
                .any(|e| e.action == "auth.failure" && e.outcome == "failure")
        );
        let all = format!("{seen:?}");
        assert!(
            !all.contains(&secret) && !all.contains(&w.tokens["owner"]),
            "a secret in an event"
        );
    }
    // The audit log cannot be written: the administrative request fails.
    events.broken.store(true, Ordering::SeqCst);
    let (st, e) = srv
        .call(
            Method::POST,
            "/api/v1/sessions/revoke-all",
            Some(&w.tokens["owner"]),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e["error"]["code"], "audit_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_bound_token_stays_in_its_team_and_under_its_cap() {
    for ts in stores() {
        let key = ServerKey::generate();
        let mut s = ts.open();
        let w = world(&mut s, &key);
        // The acme Owner is also an Owner of `other`.
        let other = model::team_by_name(&mut s, "other").unwrap().unwrap();
        let acme = model::team_by_name(&mut s, "acme").unwrap().unwrap();
        model::add_member(&mut s, &other.id, &w.users["owner"], Role::Owner, NOW).unwrap();
        let mk = |s: &mut Store, team: &str, user: &str, cap: Role| {
            model::create_token(
                s,
                &key,
                &NewToken {
                    kind: Kind::Api,
                    team_id: team,
                    user_id: user,
                    name: "x",
                    role_cap: cap,
                    family: None,
                    expires_at: None,
                },
                NOW,
            )
            .unwrap()
        };
        let (other_row, _) = mk(&mut s, &other.id, &w.users["owner"], Role::Owner);
        let (_, capped) = mk(&mut s, &acme.id, &w.users["owner"], Role::Viewer);
        let capped = capped.expose_secret().to_owned();
        let (_, session) =
            model::create_session(&mut s, &key, &w.users["owner"], "ua", "127.0.0.1", NOW).unwrap();
        let srv = serve(ts.open(), key.clone()).await;
        let acme_token = Some(w.tokens["owner"].as_str());
        let (st, _) = srv
            .call(Method::GET, "/api/v1/teams/other/members", acme_token, None)
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{}", ts.name());
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/tokens",
                acme_token,
                Some(json!({"name": "x", "team": "other"})),
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (_, code) = model::create_device(&mut s, &key, "telbase-cli", "", NOW).unwrap();
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/device/approve",
                acme_token,
                Some(json!({"user_code": code.expose_secret(), "team": "other"})),
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (_, list) = srv
            .call(Method::GET, "/api/v1/tokens", acme_token, None)
            .await;
        assert!(
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["team_id"] == acme.id.as_str()),
            "{list}"
        );
        let (st, _) = srv
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{}", other_row.id),
                acme_token,
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        // A Viewer-capped token of an Owner cannot revoke a Member's token.
        let (st, _) = srv
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{}", w.token_ids["member"]),
                Some(&capped),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _) = srv
            .call(
                Method::GET,
                "/api/v1/teams/acme/members",
                Some(&capped),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "capped at Viewer");
        // Nor can it mint a stronger token, explicitly or by default...
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(&capped),
                Some(json!({"name": "up", "team": "acme", "role": "owner"})),
            )
            .await;
        assert_eq!(
            st,
            StatusCode::FORBIDDEN,
            "a capped token minted an Owner token"
        );
        let (st, made) = srv
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(&capped),
                Some(json!({"name": "same", "team": "acme"})),
            )
            .await;
        assert!(st.is_success(), "{made}");
        let minted = made["secret"].as_str().unwrap().to_owned();
        let (st, _) = srv
            .call(
                Method::GET,
                "/api/v1/teams/acme/members",
                Some(&minted),
                None,
            )
            .await;
        assert_eq!(
            st,
            StatusCode::FORBIDDEN,
            "the new token is capped at Viewer too"
        );
        // ...nor approve a device login, which would get the Owner's full role.
        let (_, code) = model::create_device(&mut s, &key, "telbase-cli", "", NOW).unwrap();
        let (st, body) = srv
            .call(
                Method::POST,
                "/api/v1/device/approve",
                Some(&capped),
                Some(json!({"user_code": code.expose_secret()})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
        // The browser session is not bound: it works in both teams.
        let r = srv
            .http
            .delete(format!("{}/api/v1/tokens/{}", srv.base, other_row.id))
            .header(
                "cookie",
                format!("telbase_session={}", session.expose_secret()),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}
