//! Changes and their audit records commit together, and the control plane's check-then-act
//! rules hold under concurrency, on SQLite and PostgreSQL (`stores()`):
//! - an audited change whose audit record cannot be written leaves nothing behind (503
//!   `audit_unavailable`, the change rolled back), whether the log has no key or the audit
//!   table itself fails mid-transaction; when it can be written, the record is there;
//! - two Owners demoting (or removing) each other at the same time, through two server
//!   instances on one store, never leave the team without an Owner;
//! - two concurrent refreshes with one refresh token: exactly one gets new tokens, the other
//!   is told of reuse, and the whole family ends revoked, the winner's new tokens included.

mod common;
#[path = "common/resources.rs"]
mod resources;

use std::sync::{Arc, Barrier};

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use telbase::audit::{AuditFilter, AuditKeys, AuditLog};
use telbase::control::api::{self, ControlState};
use telbase::control::db::{Db, V};
use telbase::control::model::{self, NewToken, Refreshed};
use telbase::control::roles::Role;
use telbase::control::secrets::{Kind, ServerKey};
use telbase::serve::audit::ServerAudit;
use telbase::serve::queue::StoreQueue;
use telbase::store::Store;

use common::pg::{TestStore, stores};

const NOW: i64 = 1_800_000_000_000;

struct Server {
    base: String,
    http: reqwest::Client,
}

impl Server {
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// A server whose security events go into the real audit log on the same store (as
/// `telbase serve` wires it), with `log`'s key.
async fn serve(ts: &TestStore, key: ServerKey, log: AuditLog) -> Server {
    let mut state = ControlState::new(ts.open(), key, "http://telbase.test".into(), false);
    state.clock = Arc::new(|| NOW);
    state.events = Arc::new(ServerAudit {
        log,
        queue: Arc::new(StoreQueue::new(ts.open())),
    });
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
        http: reqwest::Client::new(),
    }
}

fn keyed_log() -> AuditLog {
    AuditLog::new(AuditKeys::from_secret(&[9; 32]))
}

/// A user of `team` with `role` and an uncapped API token; (user id, token).
fn member(s: &mut Store, key: &ServerKey, team: &str, email: &str, role: Role) -> (String, String) {
    let t = match model::team_by_name(s, team).unwrap() {
        Some(t) => t,
        None => model::create_team(s, team, NOW).unwrap().unwrap(),
    };
    let u = model::create_user(s, email, email, NOW).unwrap();
    model::add_member(s, &t.id, &u.id, role, NOW).unwrap();
    let (_, secret) = model::create_token(
        s,
        key,
        &NewToken {
            kind: Kind::Api,
            team_id: &t.id,
            user_id: &u.id,
            name: "t",
            role_cap: role,
            family: None,
            expires_at: None,
        },
        NOW,
    )
    .unwrap();
    (u.id, secret.expose_secret().to_owned())
}

fn count(s: &mut Store, sql: &str) -> i64 {
    s.row(sql, &[]).unwrap().unwrap()[0].int()
}

fn audit_actions(s: &mut Store) -> Vec<String> {
    AuditLog::list(s, &AuditFilter::default())
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audited_change_commits_with_its_record() {
    for ts in stores() {
        let key = ServerKey::generate();
        let mut s = ts.open();
        let (_, owner) = member(&mut s, &key, "acme", "owner@example.com", Role::Owner);
        let srv = serve(&ts, key, keyed_log()).await;
        let (st, body) = srv
            .call(
                Method::POST,
                "/api/v1/tokens",
                &owner,
                Some(json!({"name": "ci", "team": "acme"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{}: {body}", ts.name());
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/teams/acme/members",
                &owner,
                Some(json!({"email": "new@example.com", "role": "viewer"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{}", ts.name());
        let actions = audit_actions(&mut s);
        for a in ["access.token_create", "admin.member_invite"] {
            assert!(actions.iter().any(|x| x == a), "{}: {actions:?}", ts.name());
        }
        // The chain verifies with both records appended inside the changes' transactions.
        let v = keyed_log().verify(&mut s).unwrap();
        assert!(v.finding.is_none(), "{}: {:?}", ts.name(), v.finding);
    }
}

/// Every audited route, with an audit log that cannot be written: 503, and the store is as
/// it was. Once with a log without its key (the record cannot be sealed), once with the
/// audit table gone (the INSERT fails inside the transaction, after the change's own
/// statements ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_audit_write_leaves_no_change_behind() {
    for ts in stores() {
        for broken in ["no key", "no table"] {
            let key = ServerKey::generate();
            let ts = ts_fresh(&ts);
            let mut s = ts.open();
            let (_, owner) = member(&mut s, &key, "acme", "owner@example.com", Role::Owner);
            let (admin_id, _) = member(&mut s, &key, "acme", "admin@example.com", Role::Admin);
            let team_id = model::team_by_name(&mut s, "acme").unwrap().unwrap().id;
            let (tok, _) = model::create_token(
                &mut s,
                &key,
                &NewToken {
                    kind: Kind::Api,
                    team_id: &team_id,
                    user_id: &admin_id,
                    name: "victim",
                    role_cap: Role::Admin,
                    family: None,
                    expires_at: None,
                },
                NOW,
            )
            .unwrap();
            // A project with a stored value, for the project and env var routes.
            telbase::control::projects::grant_repos(&mut s, &team_id, "acme/*", NOW)
                .unwrap()
                .unwrap();
            resources::seed_project(&mut s, "acme", "web");
            resources::seed_env_var(&mut s, "web", "production", "OLD", "old-value");
            let log = if broken == "no key" {
                AuditLog::without_key()
            } else {
                s.exec("DROP TABLE audit_records", &[]).unwrap();
                keyed_log()
            };
            let srv = serve(&ts, key, log).await;
            let snapshot = |s: &mut Store| {
                (
                    count(s, "SELECT COUNT(*) FROM cp_tokens"),
                    count(
                        s,
                        "SELECT COUNT(*) FROM cp_tokens WHERE revoked_at IS NOT NULL",
                    ),
                    count(s, "SELECT COUNT(*) FROM cp_users"),
                    count(
                        s,
                        "SELECT COUNT(*) FROM cp_memberships WHERE role = 'admin'",
                    ),
                    count(s, "SELECT COUNT(*) FROM cp_memberships"),
                    count(s, "SELECT COUNT(*) FROM cp_projects"),
                    count(s, "SELECT COUNT(*) FROM secret_values"),
                )
            };
            let before = snapshot(&mut s);
            let tries: Vec<(Method, String, Option<Value>)> = vec![
                (
                    Method::POST,
                    "/api/v1/tokens".into(),
                    Some(json!({"name": "ci", "team": "acme"})),
                ),
                (Method::DELETE, format!("/api/v1/tokens/{}", tok.id), None),
                (
                    Method::POST,
                    "/api/v1/teams/acme/members".into(),
                    Some(json!({"email": "new@example.com", "role": "viewer"})),
                ),
                (
                    Method::PATCH,
                    format!("/api/v1/teams/acme/members/{admin_id}"),
                    Some(json!({"role": "viewer"})),
                ),
                (
                    Method::DELETE,
                    format!("/api/v1/teams/acme/members/{admin_id}"),
                    None,
                ),
                (Method::POST, "/api/v1/sessions/revoke-all".into(), None),
                (
                    Method::POST,
                    "/api/v1/teams/acme/projects".into(),
                    Some(json!({"name": "shop", "repo": "acme/shop"})),
                ),
                // The env var and project-deletion routes record their event before the
                // change (the secret store's statements cannot share the transaction).
                (
                    Method::PUT,
                    "/api/v1/teams/acme/projects/web/environments/production/env-vars/NEW".into(),
                    Some(json!({"value": "new-value"})),
                ),
                (
                    Method::DELETE,
                    "/api/v1/teams/acme/projects/web/environments/production/env-vars/OLD".into(),
                    None,
                ),
                (
                    Method::DELETE,
                    "/api/v1/teams/acme/projects/web".into(),
                    None,
                ),
            ];
            for (method, path, body) in tries {
                let (st, b) = srv.call(method.clone(), &path, &owner, body).await;
                let ctx = format!("{} ({broken}): {method} {path}", ts.name());
                assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{ctx}: {b}");
                assert_eq!(b["error"]["code"], "audit_unavailable", "{ctx}");
                assert_eq!(snapshot(&mut s), before, "{ctx}: the change stayed");
            }
        }
    }
}

/// A fresh store of the same backend as `ts` (each broken variant gets its own).
fn ts_fresh(ts: &TestStore) -> TestStore {
    match ts {
        TestStore::Sqlite(_) => TestStore::Sqlite(tempfile::tempdir().unwrap()),
        TestStore::Postgres(_) => {
            TestStore::Postgres(common::pg::TestDb::new().expect("PostgreSQL is configured"))
        }
    }
}

/// Two Owners demote (even rounds) or remove (odd rounds) each other at the same moment
/// through two servers on one store, ten rounds: the team always keeps exactly one Owner,
/// and exactly one of each round's two requests wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_owners_demoting_each_other_leave_one_owner() {
    for ts in stores() {
        let key = ServerKey::generate();
        let mut s = ts.open();
        let (a_id, _) = member(&mut s, &key, "acme", "a@example.com", Role::Owner);
        let (b_id, _) = member(&mut s, &key, "acme", "b@example.com", Role::Owner);
        let team = model::team_by_name(&mut s, "acme").unwrap().unwrap();
        let one = Arc::new(serve(&ts, key.clone(), keyed_log()).await);
        let two = Arc::new(serve(&ts, key.clone(), keyed_log()).await);
        for round in 0..10 {
            // Both Owners again, with fresh tokens (a removal revokes the removed member's).
            let mut token = |uid: &str| {
                model::add_member(&mut s, &team.id, uid, Role::Owner, NOW).unwrap();
                model::set_role(&mut s, &team.id, uid, Role::Owner).unwrap();
                model::create_token(
                    &mut s,
                    &key,
                    &NewToken {
                        kind: Kind::Api,
                        team_id: &team.id,
                        user_id: uid,
                        name: "t",
                        role_cap: Role::Owner,
                        family: None,
                        expires_at: None,
                    },
                    NOW,
                )
                .unwrap()
                .1
                .expose_secret()
                .to_owned()
            };
            let (a, b) = (token(&a_id), token(&b_id));
            let remove = round % 2 == 1;
            let go = |srv: Arc<Server>, who: String, target: String| async move {
                let path = format!("/api/v1/teams/acme/members/{target}");
                if remove {
                    srv.call(Method::DELETE, &path, &who, None).await.0
                } else {
                    srv.call(Method::PATCH, &path, &who, Some(json!({"role": "admin"})))
                        .await
                        .0
                }
            };
            let (x, y) = tokio::join!(
                tokio::spawn(go(one.clone(), a, b_id.clone())),
                tokio::spawn(go(two.clone(), b, a_id.clone()))
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            let owners = model::owners(&mut s, &team.id).unwrap();
            assert_eq!(owners, 1, "{} round {round}: {x} {y}", ts.name());
            let won = [x, y].iter().filter(|s| s.is_success()).count();
            assert_eq!(won, 1, "{} round {round}: {x} {y}", ts.name());
            // The loser was refused as the last Owner, or had already lost the right (or,
            // removed, the team: a team one is not in is a 404).
            for st in [x, y] {
                assert!(
                    st.is_success()
                        || st == StatusCode::CONFLICT
                        || st == StatusCode::FORBIDDEN
                        || st == StatusCode::NOT_FOUND
                        || st == StatusCode::UNAUTHORIZED,
                    "{} round {round}: {st}",
                    ts.name()
                );
            }
        }
    }
}

/// Two refreshes with the same refresh token at once, on two connections: exactly one
/// gets new tokens, the other is told of reuse, and the family ends fully revoked, the
/// winner's new tokens included (the reuse rule: nobody keeps the grant).
#[test]
fn concurrent_refreshes_with_one_token_revoke_the_whole_family() {
    for ts in stores() {
        let key = ServerKey::generate();
        let mut s = ts.open();
        let (uid, _) = member(&mut s, &key, "acme", "a@example.com", Role::Member);
        let team = model::team_by_name(&mut s, "acme").unwrap().unwrap();
        for round in 0..10 {
            let family = format!("fam{round}");
            let g = model::issue_grant(&mut s, &key, &family, &uid, &team.id, "telbase-cli", NOW)
                .unwrap();
            let rt = g.refresh.expose_secret().to_owned();
            let barrier = Arc::new(Barrier::new(2));
            let outs: Vec<Refreshed> = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..2)
                    .map(|_| {
                        let (barrier, key, rt) = (barrier.clone(), key.clone(), rt.clone());
                        let mut store = ts.open();
                        sc.spawn(move || {
                            barrier.wait();
                            model::refresh_once(&mut store, &key, &rt, NOW + 1).unwrap()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let new = outs
                .iter()
                .filter(|o| matches!(o, Refreshed::New(_)))
                .count();
            let reused = outs
                .iter()
                .filter(|o| matches!(o, Refreshed::Reused))
                .count();
            assert_eq!((new, reused), (1, 1), "{} round {round}", ts.name());
            let live = |s: &mut Store, table: &str| {
                s.row(
                    &format!(
                        "SELECT COUNT(*) FROM {table} WHERE family = $1 AND revoked_at IS NULL"
                    ),
                    &[V::from(&family)],
                )
                .unwrap()
                .unwrap()[0]
                    .int()
            };
            assert_eq!(live(&mut s, "cp_tokens"), 0, "{} round {round}", ts.name());
            assert_eq!(
                live(&mut s, "cp_refresh_tokens"),
                0,
                "{} round {round}",
                ts.name()
            );
        }
    }
}
