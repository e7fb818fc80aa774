//! Projects, environments, runs, env vars and the team's audit log under `/api/v1`, in
//! process over real HTTP, on SQLite and PostgreSQL (`stores()`): registration and its
//! server-wide uniqueness, another team's project or run answering exactly like a missing
//! one, keyset pagination that neither repeats nor skips while runs arrive, the filters and
//! their 400s, env vars masked with the value never in a response, security event, audit
//! record, log line or database file, and which audit records a team sees. (The role matrix
//! for these routes is the one in tests/control_api.rs.)

mod common;
#[path = "common/resources.rs"]
mod resources;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use telbase::audit::{AuditKeys, AuditLog};
use telbase::control::api::{self, ControlState};
use telbase::control::db::Db as _;
use telbase::control::model::{self, NewToken};
use telbase::control::roles::Role;
use telbase::control::secrets::{Kind, ServerKey};
use telbase::control::{SecurityEvent, SecurityEvents};
use telbase::store::{RunRows as _, SecretRows as _, Store};

use common::pg::{TestStore, stores};
use resources::{seed_env_var, seed_project, seed_run};

const NOW: i64 = 1_800_000_000_000;

/// Security events as `telbase serve` records them: converted like `ServerAudit` does and
/// sealed into the store's chained log; their `Debug` kept for the leak checks.
struct Sink {
    log: AuditLog,
    store: Mutex<Store>,
    seen: Mutex<Vec<String>>,
}

impl SecurityEvents for Sink {
    fn record(&self, e: &SecurityEvent) -> Result<(), String> {
        self.seen.lock().unwrap().push(format!("{e:?}"));
        let event = telbase::serve::audit::from_control(e).map_err(|e| e.to_string())?;
        let mut s = self.store.lock().unwrap();
        self.log
            .record(&mut *s, &event)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    // As `ServerAudit` does: inside the change's transaction (a second connection would
    // wait for the transaction's write lock on SQLite).
    fn record_in(
        &self,
        tx: &mut telbase::store::tx::Tx<'_>,
        e: &SecurityEvent,
    ) -> Result<(), String> {
        self.seen.lock().unwrap().push(format!("{e:?}"));
        let event = telbase::serve::audit::from_control(e).map_err(|e| e.to_string())?;
        self.log
            .record_with(&mut |seal| tx.append_audit(seal), &event)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Every log line of this test process, at every level.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct W(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || W(b.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(sub);
        buf
    })
    .clone()
}

struct Server {
    base: String,
    http: reqwest::Client,
    sink: Arc<Sink>,
    /// Every response body this server gave.
    bodies: Mutex<Vec<String>>,
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
        let text = resp.text().await.unwrap();
        self.bodies.lock().unwrap().push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, bearer: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, bearer, None).await
    }

    /// A raw body (not JSON-encoded by the client).
    async fn put_raw(&self, path: &str, bearer: &str, body: &str) -> (StatusCode, String) {
        let resp = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        self.bodies.lock().unwrap().push(text.clone());
        (status, text)
    }
}

async fn serve(ts: &TestStore, key: ServerKey) -> Server {
    let sink = Arc::new(Sink {
        log: AuditLog::new(AuditKeys::from_secret(&[7; 32])),
        store: Mutex::new(ts.open()),
        seen: Mutex::new(Vec::new()),
    });
    let mut state = ControlState::new(ts.open(), key, "http://telbase.test".into(), false);
    state.clock = Arc::new(|| NOW);
    state.master_keys = resources::master_keys();
    state.events = sink.clone();
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
        sink,
        bodies: Mutex::new(Vec::new()),
    }
}

/// `acme` with one user of each role, `other` with its Owner `eve`; a token each.
struct World {
    users: HashMap<&'static str, String>,
    tokens: HashMap<&'static str, String>,
    teams: HashMap<&'static str, String>,
}

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
        users: HashMap::new(),
        tokens: HashMap::new(),
        teams: HashMap::from([("acme", acme.id.clone()), ("other", other.id.clone())]),
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
        let (_, secret) = model::create_token(
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
    }
    w
}

fn setup(ts: &TestStore) -> (ServerKey, World) {
    let key = ServerKey::generate();
    let w = world(&mut ts.open(), &key);
    (key, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_are_registered_once_and_invisible_to_other_teams() {
    for ts in stores() {
        let (key, w) = setup(&ts);
        let srv = serve(&ts, key).await;
        let (owner, eve) = (&w.tokens["owner"], &w.tokens["eve"]);
        let create = |name: &str, repo: &str| json!({"name": name, "repo": repo});
        let (st, p) = srv
            .call(
                Method::POST,
                "/api/v1/teams/acme/projects",
                owner,
                Some(create("web", "Acme/Web")),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{p}");
        assert_eq!(p["name"], "web");
        assert_eq!(p["repo"], "acme/web", "kept lower-case");
        assert_eq!(p["config_path"], "telbase.yaml");
        assert_eq!(p["created_by"], w.users["owner"].as_str());
        assert!(p.get("team_id").is_none());
        // The name and the repository are the server's, whichever team asks.
        for body in [create("web", "other/site")] {
            let (st, e) = srv
                .call(
                    Method::POST,
                    "/api/v1/teams/other/projects",
                    eve,
                    Some(body.clone()),
                )
                .await;
            assert_eq!(st, StatusCode::CONFLICT, "{body}: {e}");
            assert_eq!(e["error"]["code"], "conflict");
            assert!(
                !e.to_string().contains("acme"),
                "no hint of who holds it: {e}"
            );
        }
        // A repository not granted to the team: refused whoever holds it, without a hint.
        let (st, e) = srv
            .call(
                Method::POST,
                "/api/v1/teams/other/projects",
                eve,
                Some(create("site", "ACME/web")),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{e}");
        assert_eq!(e["error"]["code"], "repository_not_granted");
        assert!(!e.to_string().contains("acme"), "{e}");
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/teams/other/projects",
                eve,
                Some(json!({"name": "site", "repo": "other/site", "config_path": "deploy/telbase.yml"})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        for bad in [
            json!({"name": "Web2", "repo": "acme/web2"}),
            json!({"name": "w", "repo": "acme/web2"}),
            json!({"name": "web2", "repo": "acme"}),
            json!({"name": "web2", "repo": "acme/web2/x"}),
            json!({"name": "web2", "repo": "acme/web2", "config_path": "../telbase.yaml"}),
            json!({"name": "web2", "repo": "acme/web2", "config_path": "/etc/x.yaml"}),
            json!({"name": "web2", "repo": "acme/web2", "team": "other"}),
            json!({"name": 5, "repo": "acme/web2"}),
        ] {
            let (st, e) = srv
                .call(
                    Method::POST,
                    "/api/v1/teams/acme/projects",
                    owner,
                    Some(bad.clone()),
                )
                .await;
            // The shared JSON body extractor answers a well-formed body of the wrong shape
            // with axum's 422; both are the one error shape's `bad_request`.
            assert!(
                st == StatusCode::BAD_REQUEST || st == StatusCode::UNPROCESSABLE_ENTITY,
                "{bad}: {st} {e}"
            );
            assert_eq!(e["error"]["code"], "bad_request", "{bad}");
        }
        // Another team's project is exactly a missing one, on every project route and for
        // every role: a 404 where the role may act, the same 403 where it may not (the role
        // is checked before anything is looked up, so neither answer tells them apart).
        let routes = [
            (Method::GET, "", None),
            (Method::GET, "/environments", None),
            (Method::GET, "/runs", None),
            (Method::GET, "/runs/aaaaaaaaaaaaaaaaaaaaaaaaaa", None),
            (Method::GET, "/environments/production/env-vars", None),
            (Method::DELETE, "", None),
            (
                Method::PUT,
                "/environments/production/env-vars/X",
                Some(json!({"value": "v"})),
            ),
            (Method::DELETE, "/environments/production/env-vars/X", None),
        ];
        for who in ["owner", "admin", "member", "viewer"] {
            for (method, suffix, body) in &routes {
                let mut answers = Vec::new();
                for project in ["site", "nope"] {
                    answers.push(
                        srv.call(
                            method.clone(),
                            &format!("/api/v1/teams/acme/projects/{project}{suffix}"),
                            &w.tokens[who],
                            body.clone(),
                        )
                        .await,
                    );
                }
                let ctx = format!("{who} {method} {suffix}");
                assert_eq!(answers[0], answers[1], "{ctx}");
                let (st, e) = &answers[0];
                assert!(
                    *st == StatusCode::NOT_FOUND || *st == StatusCode::FORBIDDEN,
                    "{ctx}: {st} {e}"
                );
                if *st == StatusCode::NOT_FOUND {
                    assert_eq!(e["error"]["message"], "project not found", "{ctx}");
                }
            }
        }
        // Undecodable path parameters: a 400 in the one shape.
        let (st, e) = srv.get("/api/v1/teams/acme/projects/%FF/runs", owner).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["error"]["code"], "bad_request");
        // Paging by name.
        for n in ["api", "docs", "zeta"] {
            let (st, _) = srv
                .call(
                    Method::POST,
                    "/api/v1/teams/acme/projects",
                    &w.tokens["admin"],
                    Some(create(n, &format!("acme/{n}"))),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED);
        }
        let mut names = Vec::new();
        let mut cursor = String::new();
        loop {
            let (st, page) = srv
                .get(
                    &format!("/api/v1/teams/acme/projects?limit=3&cursor={cursor}"),
                    &w.tokens["viewer"],
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{page}");
            names.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["name"].as_str().unwrap().to_owned()),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        assert_eq!(
            names,
            ["api", "docs", "web", "zeta"],
            "the other team's `site` is not listed"
        );
        // Deleting: Admin and up; it takes the project's stored env vars with it, so whoever
        // registers the name next does not inherit them.
        seed_env_var(&mut ts.open(), "web", "production", "TOKEN", "old-value");
        let (st, _) = srv
            .call(
                Method::DELETE,
                "/api/v1/teams/acme/projects/web",
                &w.tokens["member"],
                None,
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, _) = srv
            .call(
                Method::DELETE,
                "/api/v1/teams/acme/projects/web",
                owner,
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _) = srv.get("/api/v1/teams/acme/projects/web", owner).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert!(ts.open().list_values("web", None).unwrap().is_empty());
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/teams/other/projects",
                eve,
                Some(create("web", "acme/web")),
            )
            .await;
        assert_eq!(
            st,
            StatusCode::FORBIDDEN,
            "acme's repository stays acme's, registered or not"
        );
        let (st, _) = srv
            .call(
                Method::POST,
                "/api/v1/teams/other/projects",
                eve,
                Some(create("web", "other/web")),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "the name is free again");
        // Values stored under a name no project holds (`telbase env set`, or a deletion cut
        // short) keep the name from being registered: they are nobody's to hand out.
        seed_env_var(
            &mut ts.open(),
            "orphan",
            "production",
            "TOKEN",
            "left-behind",
        );
        let (st, e) = srv
            .call(
                Method::POST,
                "/api/v1/teams/acme/projects",
                owner,
                Some(create("orphan", "acme/orphan")),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{e}");
        assert!(!e.to_string().contains("left-behind"));
    }
}

const URL_REPORT: &str = r#"[{"key":"vercel_project.web","action":"create","outcome":"done","url":"https://web.example.com","millis":20},{"key":"neon_database.db","action":"update","outcome":"failed","error":"quota exceeded","millis":3},{"key":"vercel_env.web.DB","action":"create","outcome":"skipped","because":"neon_database.db","millis":0}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_and_runs_of_a_project() {
    for ts in stores() {
        let (key, w) = setup(&ts);
        let mut s = ts.open();
        let _web = seed_project(&mut s, "acme", "web");
        let api_p = seed_project(&mut s, "acme", "api");
        let site = seed_project(&mut s, "other", "site");
        // Runs are recorded with GitHub's spelling of the repository.
        let deployed = seed_run(&mut s, "Acme/Web", "production", NOW, "success", URL_REPORT);
        let drift = seed_run(&mut s, "acme/web", "production", NOW + 10, "success", "[]");
        let p7 = seed_run(
            &mut s,
            "acme/web",
            "preview-7",
            NOW + 20,
            "success",
            r#"[{"key":"vercel_project.web","action":"create","outcome":"done","url":"https://pr-7.web.example.com","millis":5}]"#,
        );
        let mut teardown =
            resources::run_record("acme/web", "preview-7", NOW + 30, "success", "[]");
        teardown.mode = "teardown".into();
        s.save_run(&teardown).unwrap();
        seed_run(&mut s, "acme/web", "preview-12", NOW + 5, "failure", "[]");
        let elsewhere = seed_run(&mut s, &site.repo, "production", NOW, "success", URL_REPORT);
        // A run of the repository from before the project was registered (at NOW): another
        // team's history, or nobody's; never this project's.
        let before_claim = seed_run(
            &mut s,
            "acme/web",
            "production",
            NOW - 1,
            "success",
            URL_REPORT,
        );
        let sibling = seed_run(&mut s, &api_p.repo, "production", NOW, "success", "[]");
        seed_run(&mut s, "acme/webx", "preview-99", NOW, "success", "[]");
        drop(s);
        let srv = serve(&ts, key).await;
        let viewer = &w.tokens["viewer"];
        let (st, envs) = srv
            .get("/api/v1/teams/acme/projects/web/environments", viewer)
            .await;
        assert_eq!(st, StatusCode::OK, "{envs}");
        let items = envs["items"].as_array().unwrap();
        let names: Vec<&str> = items.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["production", "preview-7", "preview-12"], "{envs}");
        assert_eq!(items[0]["kind"], "production");
        assert_eq!(items[0]["state"], "active");
        assert_eq!(items[0]["latest_run"]["id"], drift.id.as_str());
        assert_eq!(
            items[0]["urls"],
            json!(["https://web.example.com"]),
            "URLs from the newest run that reported any ({})",
            deployed.id
        );
        assert_eq!(items[1]["pull_request"], 7);
        assert_eq!(items[1]["state"], "torn_down");
        assert_eq!(items[1]["urls"], json!([]));
        assert_eq!(items[1]["latest_run"]["mode"], "teardown");
        assert_eq!(items[2]["latest_run"]["outcome"], "failure");
        // A project without runs still has production.
        let (_, envs) = srv
            .get("/api/v1/teams/acme/projects/api/environments", viewer)
            .await;
        assert_eq!(envs["items"][0]["latest_run"]["id"], sibling.id.as_str());
        let mut s = ts.open();
        seed_project(&mut s, "acme", "fresh");
        drop(s);
        let (_, envs) = srv
            .get("/api/v1/teams/acme/projects/fresh/environments", viewer)
            .await;
        assert_eq!(
            envs["items"],
            json!([{"name": "production", "kind": "production", "pull_request": null, "state": "never_run", "latest_run": null, "urls": []}])
        );
        // One run: status, plan, per-resource report.
        let (st, run) = srv
            .get(
                &format!("/api/v1/teams/acme/projects/web/runs/{}", deployed.id),
                viewer,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{run}");
        assert_eq!(run["run"]["outcome"], "success");
        assert_eq!(run["run"]["environment"], "production");
        assert_eq!(run["plan"], "vercel_project.web: create\n");
        assert_eq!(run["report"][0]["url"], "https://web.example.com");
        assert_eq!(run["report"][1]["error"], "quota exceeded");
        assert_eq!(run["report"][2]["because"], "neon_database.db");
        assert_eq!(run["report"][2]["outcome"], "skipped");
        let _ = p7;
        // Another team's run, a sibling project's run, a missing one, a malformed id: the
        // same 404.
        let (_, missing) = srv
            .get(
                "/api/v1/teams/acme/projects/web/runs/aaaaaaaaaaaaaaaaaaaaaaaaaa",
                viewer,
            )
            .await;
        assert_eq!(missing["error"]["message"], "run not found");
        for id in [
            elsewhere.id.as_str(),
            before_claim.id.as_str(),
            sibling.id.as_str(),
            "..%2F..%2Fx",
            "A",
        ] {
            let (st, e) = srv
                .get(
                    &format!("/api/v1/teams/acme/projects/web/runs/{id}"),
                    viewer,
                )
                .await;
            assert_eq!(st, StatusCode::NOT_FOUND, "{id}: {e}");
            assert_eq!(e, missing, "{id}");
        }
        // The other team's Owner cannot reach acme's run through their own project.
        let (st, _) = srv
            .get(
                &format!("/api/v1/teams/other/projects/site/runs/{}", deployed.id),
                &w.tokens["eve"],
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        // Nor through acme's path.
        let (st, e) = srv
            .get(
                &format!("/api/v1/teams/acme/projects/web/runs/{}", deployed.id),
                &w.tokens["eve"],
            )
            .await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(e["error"]["message"], "team not found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pages_neither_repeat_nor_skip_while_runs_arrive() {
    for ts in stores() {
        let (key, w) = setup(&ts);
        let mut s = ts.open();
        let web = seed_project(&mut s, "acme", "web");
        // 23 runs, three to a millisecond (ties are broken by id).
        let mut runs = Vec::new();
        for i in 0..23i64 {
            let env = if i % 4 == 0 {
                "preview-2"
            } else {
                "production"
            };
            let outcome = if i % 5 == 0 { "failure" } else { "success" };
            runs.push(seed_run(
                &mut s,
                &web.repo,
                env,
                NOW + 100_000 + (i / 3) * 1000,
                outcome,
                "[]",
            ));
        }
        drop(s);
        let mut expected = runs.clone();
        expected.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
        let srv = serve(&ts, key).await;
        let tok = &w.tokens["member"];
        let base = "/api/v1/teams/acme/projects/web/runs";
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut pages = 0;
        let mut late = Vec::new();
        loop {
            let (st, page) = srv
                .get(&format!("{base}?limit=5&cursor={cursor}"), tok)
                .await;
            assert_eq!(st, StatusCode::OK, "{page}");
            pages += 1;
            seen.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["id"].as_str().unwrap().to_owned()),
            );
            // Between pages, new runs start (newer than everything) and an old one is
            // imported (older than everything, though after the project's registration at
            // NOW: earlier runs are not the project's, see below).
            if pages == 1 {
                let mut s = ts.open();
                for k in 0..3 {
                    seed_run(
                        &mut s,
                        &web.repo,
                        "production",
                        NOW + 200_000 + k,
                        "running",
                        "[]",
                    );
                }
                late.push(seed_run(
                    &mut s,
                    &web.repo,
                    "production",
                    NOW + 50_000,
                    "success",
                    "[]",
                ));
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        let mut want: Vec<String> = expected.iter().map(|r| r.id.clone()).collect();
        want.push(late[0].id.clone());
        assert_eq!(
            seen, want,
            "every run once, newest first; newer arrivals not mixed in"
        );
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
        // Filters.
        let ids = |v: &Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect()
        };
        let (_, v) = srv
            .get(&format!("{base}?environment=preview-2&limit=200"), tok)
            .await;
        let want: Vec<String> = expected
            .iter()
            .filter(|r| r.environment == "preview-2")
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(ids(&v), want);
        let (_, v) = srv
            .get(&format!("{base}?outcome=failure&limit=200"), tok)
            .await;
        let want: Vec<String> = expected
            .iter()
            .filter(|r| r.outcome == "failure")
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(ids(&v), want);
        // since is inclusive, until exclusive: [+2s, +4s) holds the runs of i = 6..=11.
        const T0: i64 = NOW + 100_000;
        let t = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let (st, v) = srv
            .get(
                &format!(
                    "{base}?since={}&until={}&limit=200",
                    t(T0 + 2000).replace('+', "%2B"),
                    t(T0 + 4000)
                ),
                tok,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let want: Vec<String> = expected
            .iter()
            .filter(|r| (T0 + 2000..T0 + 4000).contains(&r.started_at))
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(want.len(), 6);
        assert_eq!(ids(&v), want);
        // Bad cursors and filters: 400 in the one shape.
        let foreign = telbase::control::secrets::encode_cursor("web");
        for (q, code) in [
            ("cursor=garbage!", "invalid_cursor"),
            (&*format!("cursor={foreign}"), "invalid_cursor"),
            ("environment=staging", "bad_request"),
            ("environment=preview-", "bad_request"),
            ("outcome=ok", "bad_request"),
            ("since=yesterday", "bad_request"),
            ("until=2026-13-01T00:00:00Z", "bad_request"),
            ("limit=0", "bad_request"),
            ("limit=201", "bad_request"),
            ("outcome=success&outcome=failure", "bad_request"),
        ] {
            let (st, e) = srv.get(&format!("{base}?{q}"), tok).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {e}");
            assert_eq!(e["error"]["code"], code, "{q}: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_vars_are_masked_and_the_value_never_leaves() {
    const VALUE: &str = "Zq8-very-secret-env-value-4417";
    const NUMERIC: &str = "987654321123";
    let logs = logs();
    for ts in stores() {
        let (key, w) = setup(&ts);
        let mut s = ts.open();
        seed_project(&mut s, "acme", "web");
        seed_project(&mut s, "other", "site");
        drop(s);
        let srv = serve(&ts, key).await;
        let member = &w.tokens["member"];
        let base = "/api/v1/teams/acme/projects/web/environments";
        let var = format!("{base}/production/env-vars/API_KEY");
        let (st, v) = srv
            .call(Method::PUT, &var, member, Some(json!({"value": VALUE})))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert_eq!(v["name"], "API_KEY");
        assert_eq!(v["environment"], "production");
        assert_eq!(v["value"], "••••••••");
        assert_eq!(v["version"], 1);
        let fp = v["fingerprint"].as_str().unwrap().to_owned();
        assert!(fp.starts_with("hmac:") && fp.len() == 21, "{fp}");
        let (st, v2) = srv
            .call(Method::PUT, &var, member, Some(json!({"value": VALUE})))
            .await;
        assert_eq!(st, StatusCode::OK, "a new version of a set name: {v2}");
        assert_eq!(v2["version"], 2);
        assert_eq!(
            v2["fingerprint"],
            fp.as_str(),
            "same value, same fingerprint"
        );
        let (st, list) = srv
            .get(&format!("{base}/production/env-vars"), &w.tokens["admin"])
            .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(list["items"][0]["value"], "••••••••");
        assert_eq!(list["items"][0]["version"], 2);
        let (_, list) = srv.get(&format!("{base}/preview/env-vars"), member).await;
        assert_eq!(list["items"], json!([]), "previews have their own set");
        // The stored value opens to exactly what was sent.
        let opened = telbase::secrets::stored::open_text(
            &mut ts.open(),
            &resources::keyring(),
            &telbase::store::SecretName {
                project: "web".into(),
                environment: "production".into(),
                name: "API_KEY".into(),
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(opened.expose_secret(), VALUE);
        // A Viewer neither sets nor sees env vars.
        let (st, _) = srv
            .call(
                Method::PUT,
                &var,
                &w.tokens["viewer"],
                Some(json!({"value": "viewer-was-here"})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, _) = srv
            .get(&format!("{base}/production/env-vars"), &w.tokens["viewer"])
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        // Bad input, answered without quoting the value.
        for (path, body, status) in [
            (
                format!("{base}/production/env-vars/1BAD"),
                json!({"value": "x"}),
                400,
            ),
            (
                format!("{base}/production/env-vars/A-B"),
                json!({"value": "x"}),
                400,
            ),
            (
                format!("{base}/production/env-vars/{}", "A".repeat(257)),
                json!({"value": "x"}),
                400,
            ),
            (
                format!("{base}/staging/env-vars/OK"),
                json!({"value": "x"}),
                404,
            ),
            (
                format!("{base}/preview-7/env-vars/OK"),
                json!({"value": "x"}),
                404,
            ),
            (var.clone(), json!({"value": ""}), 400),
            (
                var.clone(),
                json!({"value": NUMERIC.parse::<u64>().unwrap()}),
                400,
            ),
            (var.clone(), json!({"value": VALUE, "note": "x"}), 400),
            (var.clone(), json!([VALUE]), 400),
            (
                "/api/v1/teams/acme/projects/site/environments/production/env-vars/OK".into(),
                json!({"value": "x"}),
                404,
            ),
        ] {
            let (st, e) = srv
                .call(Method::PUT, &path, member, Some(body.clone()))
                .await;
            assert_eq!(st.as_u16(), status, "{path} {body}: {e}");
            assert!(e["error"]["code"].is_string(), "{e}");
        }
        let (st, text) = srv
            .put_raw(&var, member, &format!("{{\"value\": {NUMERIC}}}"))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(!text.contains(NUMERIC), "{text}");
        let (st, text) = srv
            .put_raw(&var, member, &format!("{{\"value\": \"{VALUE}"))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "truncated JSON");
        assert!(!text.contains("Zq8"), "{text}");
        // Unset; a second time there is nothing to unset.
        let (st, _) = srv.call(Method::DELETE, &var, member, None).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, e) = srv.call(Method::DELETE, &var, member, None).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(e["error"]["message"], "env var not found");
        let (_, list) = srv
            .get(&format!("{base}/production/env-vars"), member)
            .await;
        assert_eq!(list["items"], json!([]));
        // The changes are in the team's audit log, by name.
        let (st, audit) = srv
            .get(
                "/api/v1/teams/acme/audit-events?action=config.*",
                &w.tokens["owner"],
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{audit}");
        // Each change recorded before it ran (`started`) and then as it ended, newest first.
        let actions: Vec<(&str, &str)> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap(),
                    e["outcome"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            actions,
            [
                ("config.env_unset", "success"),
                ("config.env_unset", "started"),
                ("config.env_set", "success"),
                ("config.env_set", "started"),
                ("config.env_set", "success"),
                ("config.env_set", "started"),
            ]
        );
        let target = format!("{}/web/production/API_KEY", w.teams["acme"]);
        for e in audit["items"].as_array().unwrap() {
            assert_eq!(e["target"], json!({"type": "env_var", "id": target}));
            assert_eq!(e["actor"]["id"], w.users["member"].as_str());
            assert_eq!(e["category"], "configuration");
        }
        // The value is nowhere: no response, security event, audit row, log line, or (in
        // SQLite's file) byte of the database.
        for body in srv.bodies.lock().unwrap().iter() {
            assert!(!body.contains(VALUE), "a response held the value: {body}");
            assert!(!body.contains(NUMERIC), "a response held a value: {body}");
        }
        for e in srv.sink.seen.lock().unwrap().iter() {
            assert!(!e.contains(VALUE), "{e}");
        }
        let mut s = ts.open();
        let rows = s.rows("SELECT * FROM audit_records", &[]).unwrap();
        assert!(rows.len() >= 3);
        for r in rows {
            for v in r {
                assert!(!v.text().contains(VALUE));
            }
        }
        drop(s);
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(
            !text.is_empty(),
            "the log is captured (else this check means nothing)"
        );
        assert!(!text.contains(VALUE), "the value is in the log");
        assert!(!text.contains(NUMERIC), "a value is in the log");
        if let TestStore::Sqlite(dir) = &ts {
            for f in std::fs::read_dir(dir.path()).unwrap() {
                let bytes = std::fs::read(f.unwrap().path()).unwrap();
                assert!(
                    !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
                    "the value is in the database files"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_the_teams_own_filtered_and_paged() {
    for ts in stores() {
        let (key, w) = setup(&ts);
        let srv = serve(&ts, key).await;
        let (owner, eve) = (&w.tokens["owner"], &w.tokens["eve"]);
        for (team, tok, name) in [
            ("acme", owner, "alpha"),
            ("acme", &w.tokens["admin"], "beta"),
            ("other", eve, "omega"),
        ] {
            let (st, _) = srv
                .call(
                    Method::POST,
                    &format!("/api/v1/teams/{team}/projects"),
                    tok,
                    Some(json!({"name": name, "repo": format!("{team}/{name}")})),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED);
        }
        for (team, project, tok) in [
            ("acme", "alpha", &w.tokens["member"]),
            ("other", "omega", eve),
        ] {
            let (st, _) = srv
                .call(
                    Method::PUT,
                    &format!("/api/v1/teams/{team}/projects/{project}/environments/preview/env-vars/DB_URL"),
                    tok,
                    Some(json!({"value": "postgres://u:p@h/db"})),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED);
        }
        for (tok, team) in [(owner, "acme"), (eve, "other")] {
            let (st, _) = srv
                .call(
                    Method::POST,
                    "/api/v1/tokens",
                    tok,
                    Some(json!({"name": "ci", "team": team})),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED);
        }
        let (st, _) = srv
            .call(
                Method::DELETE,
                "/api/v1/teams/acme/projects/beta",
                owner,
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let all = |v: &Value| -> Vec<Value> { v["items"].as_array().unwrap().clone() };
        let (st, page) = srv.get("/api/v1/teams/acme/audit-events", owner).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        let acme = all(&page);
        // Every authenticated request is logged as `api.access` with its route; acme's
        // requests (and only acme's) are in acme's view.
        let accesses: Vec<&str> = acme
            .iter()
            .filter(|e| e["action"] == "api.access")
            .map(|e| e["target"]["id"].as_str().unwrap())
            .collect();
        assert!(
            accesses.contains(
                &format!("{}/POST:/api/v1/teams/{{team}}/projects", w.teams["acme"]).as_str()
            ),
            "{accesses:?}"
        );
        assert!(
            accesses
                .iter()
                .all(|t| t.starts_with(&format!("{}/", w.teams["acme"]))),
            "{accesses:?}"
        );
        let acme: Vec<Value> = acme
            .into_iter()
            .filter(|e| e["action"] != "api.access")
            .collect();
        let summary: Vec<(String, String)> = acme
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["target"]["id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let a = &w.teams["acme"];
        assert_eq!(
            summary.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
            [
                "config.project_delete",
                "config.project_delete",
                "access.token_create",
                "config.env_set",
                "config.env_set",
                "config.project_create",
                "config.project_create",
            ],
            "{summary:?}"
        );
        // The record-first changes come as `started`, then `success`.
        let outcomes: Vec<&str> = acme
            .iter()
            .map(|e| e["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(
            outcomes,
            [
                "success", "started", "success", "success", "started", "success", "success"
            ]
        );
        assert_eq!(summary[0].1, format!("{a}/beta"));
        assert_eq!(summary[3].1, format!("{a}/alpha/preview/DB_URL"));
        assert_eq!(summary[6].1, format!("{a}/alpha"));
        let text = page.to_string();
        assert!(
            !text.contains("omega") && !text.contains(&w.teams["other"]),
            "{text}"
        );
        assert!(!text.contains("postgres://"), "no value in the log: {text}");
        // Sequence numbers fall; times are RFC 3339.
        let seqs: Vec<i64> = acme.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|p| p[0] > p[1]), "{seqs:?}");
        assert!(chrono::DateTime::parse_from_rfc3339(acme[0]["time"].as_str().unwrap()).is_ok());
        // The other team sees its own only.
        let (_, theirs) = srv.get("/api/v1/teams/other/audit-events", eve).await;
        let theirs: Vec<Value> = all(&theirs)
            .into_iter()
            .filter(|e| e["action"] != "api.access")
            .collect();
        assert_eq!(theirs.len(), 4, "{theirs:?}");
        assert!(!Value::Array(theirs).to_string().contains(a.as_str()));
        // Filters.
        let count = |v: &Value| v["items"].as_array().unwrap().len();
        let (_, v) = srv
            .get(
                "/api/v1/teams/acme/audit-events?action=config.project_create",
                owner,
            )
            .await;
        assert_eq!(count(&v), 2);
        let (_, v) = srv
            .get("/api/v1/teams/acme/audit-events?action=config.", owner)
            .await;
        assert_eq!(
            count(&v),
            6,
            "two projects created, one deleted and one env var set: two records each for the latter two"
        );
        let (_, v) = srv
            .get("/api/v1/teams/acme/audit-events?action=access.*", owner)
            .await;
        assert_eq!(count(&v), 1);
        let (_, v) = srv
            .get(
                &format!(
                    "/api/v1/teams/acme/audit-events?actor={}&action=config.*",
                    w.users["admin"]
                ),
                &w.tokens["admin"],
            )
            .await;
        assert_eq!(v["items"][0]["action"], "config.project_create");
        assert_eq!(count(&v), 1);
        let now = chrono::Utc::now();
        let t = |d: chrono::DateTime<chrono::Utc>| d.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let (_, v) = srv
            .get(
                &format!(
                    "/api/v1/teams/acme/audit-events?since={}",
                    t(now + chrono::Duration::hours(1))
                ),
                owner,
            )
            .await;
        assert_eq!(count(&v), 0);
        let (_, v) = srv
            .get(
                &format!(
                    "/api/v1/teams/acme/audit-events?since={}&until={}",
                    t(now - chrono::Duration::hours(1)),
                    t(now + chrono::Duration::hours(1))
                ),
                owner,
            )
            .await;
        let changes = |v: &Value| {
            all(v)
                .into_iter()
                .filter(|e| e["action"] != "api.access")
                .count()
        };
        assert_eq!(changes(&v), 7);
        // Pages of two cover the same records once each.
        let mut paged = Vec::new();
        let mut cursor = String::new();
        loop {
            let (st, v) = srv
                .get(
                    &format!("/api/v1/teams/acme/audit-events?limit=2&cursor={cursor}"),
                    owner,
                )
                .await;
            assert_eq!(st, StatusCode::OK);
            paged.extend(all(&v).into_iter().map(|e| e["seq"].as_i64().unwrap()));
            match v["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        // The requests made meanwhile are logged too (newer, so never inside these pages);
        // the records of the first look are all there, once, in order.
        let first = seqs[0];
        let paged: Vec<i64> = paged
            .into_iter()
            .filter(|q| *q <= first && seqs.contains(q))
            .collect();
        assert_eq!(paged, seqs);
        for q in [
            "action=conf*ig",
            "action=*",
            "action=Config.env_set",
            "since=now",
            "cursor=zzz",
        ] {
            let (st, e) = srv
                .get(&format!("/api/v1/teams/acme/audit-events?{q}"), owner)
                .await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {e}");
        }
        // Owner and Admin only.
        for who in ["member", "viewer"] {
            let (st, _) = srv
                .get("/api/v1/teams/acme/audit-events", &w.tokens[who])
                .await;
            assert_eq!(st, StatusCode::FORBIDDEN, "{who}");
        }
    }
}

/// An operator taking a repository grant back takes the team's project of it out of reach
/// at once: its runs, env vars and deploy values (the worker's rule) are refused with a
/// clear 403, while an Admin can still unregister it, which removes its values. Granted
/// again, it is back as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_taken_back_takes_the_project_out_of_reach() {
    use telbase::control::projects::{grant_repos, registration, revoke_repos};
    use telbase::serve::worker::stored_values_allowed;
    for ts in stores() {
        let (key, w) = setup(&ts);
        let mut s = ts.open();
        seed_project(&mut s, "acme", "web");
        let srv = serve(&ts, key).await;
        let (member, admin) = (&w.tokens["member"], &w.tokens["admin"]);
        let project = "/api/v1/teams/acme/projects/web";
        let var = format!("{project}/environments/production/env-vars/API_KEY");
        let (st, v) = srv
            .call(Method::PUT, &var, member, Some(json!({"value": "v1"})))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let values = |s: &mut Store| s.list_values("web", None).unwrap().len();
        assert_eq!(values(&mut s), 1);

        let acme = &w.teams["acme"];
        assert!(revoke_repos(&mut s, acme, "acme/*").unwrap());
        let reg = registration(&mut s, "web").unwrap().unwrap();
        assert_eq!((reg.repo.as_str(), reg.granted), ("acme/web", false));
        assert!(stored_values_allowed(Some(("acme/web", reg.granted)), "acme/web", true).is_err());
        let reads = [
            project.to_owned(),
            format!("{project}/environments"),
            format!("{project}/runs"),
            format!("{project}/environments/production/env-vars"),
        ];
        for path in &reads {
            let (st, e) = srv.call(Method::GET, path, member, None).await;
            assert_eq!(st, StatusCode::FORBIDDEN, "{path}: {e}");
            assert_eq!(e["error"]["code"], "repository_not_granted", "{path}");
            assert!(
                e["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no longer granted"),
                "{e}"
            );
        }
        let (st, _) = srv
            .call(Method::PUT, &var, member, Some(json!({"value": "v2"})))
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        assert_eq!(values(&mut s), 1, "nothing changed");

        // Granted again: back as it was.
        grant_repos(&mut s, acme, "acme/web", NOW).unwrap().unwrap();
        for path in &reads {
            let (st, e) = srv.call(Method::GET, path, member, None).await;
            assert_eq!(st, StatusCode::OK, "{path}: {e}");
        }

        // Taken back again, the project can still be unregistered, and its values go.
        assert!(revoke_repos(&mut s, acme, "acme/web").unwrap());
        let (st, e) = srv.call(Method::DELETE, project, admin, None).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{e}");
        assert_eq!(values(&mut s), 0);
        assert_eq!(registration(&mut s, "web").unwrap(), None);
    }
}

#[test]
fn repository_grants_are_one_teams_and_never_overlap() {
    use telbase::control::projects::{
        GrantRefused, grant_repos, granted_repos, parse_repo_pattern, repo_granted, revoke_repos,
    };
    assert_eq!(parse_repo_pattern(" Acme/* ").as_deref(), Some("acme/*"));
    assert_eq!(parse_repo_pattern("acme/web").as_deref(), Some("acme/web"));
    for bad in ["acme", "*/web", "acme/*/x", "acme/..", "", "/*"] {
        assert_eq!(parse_repo_pattern(bad), None, "{bad}");
    }
    for ts in stores() {
        let mut s = ts.open();
        let a = model::create_team(&mut s, "ga", NOW).unwrap().unwrap();
        let b = model::create_team(&mut s, "gb", NOW).unwrap().unwrap();
        // `_` is a literal in the owner, not LIKE's wildcard: `myxorg` is someone else, so
        // b's `myxorg/web` does not overlap a's `my_org/*` (the LIKE query runs for a's
        // wildcard grant, after b's exact one).
        grant_repos(&mut s, &b.id, "myxorg/web", NOW)
            .unwrap()
            .unwrap();
        grant_repos(&mut s, &a.id, "my_org/*", NOW)
            .unwrap()
            .unwrap();
        grant_repos(&mut s, &a.id, "my_org/*", NOW)
            .unwrap()
            .unwrap();
        // The same pattern again for another team: refused, not reported as granted.
        assert_eq!(
            grant_repos(&mut s, &b.id, "my_org/*", NOW).unwrap(),
            Err(GrantRefused::Overlaps("my_org/*".into()))
        );
        assert_eq!(
            grant_repos(&mut s, &b.id, "my_org/web", NOW).unwrap(),
            Err(GrantRefused::Overlaps("my_org/*".into()))
        );
        grant_repos(&mut s, &b.id, "solo/app", NOW)
            .unwrap()
            .unwrap();
        assert_eq!(
            grant_repos(&mut s, &a.id, "solo/*", NOW).unwrap(),
            Err(GrantRefused::Overlaps("solo/app".into()))
        );
        assert!(repo_granted(&mut s, &a.id, "My_Org/Web").unwrap());
        assert!(!repo_granted(&mut s, &b.id, "my_org/web").unwrap());
        assert!(repo_granted(&mut s, &b.id, "solo/app").unwrap());
        assert!(!repo_granted(&mut s, &b.id, "solo/other").unwrap());
        assert_eq!(
            granted_repos(&mut s, &b.id).unwrap(),
            ["myxorg/web", "solo/app"]
        );
        assert!(revoke_repos(&mut s, &b.id, "solo/app").unwrap());
        assert!(!revoke_repos(&mut s, &b.id, "solo/app").unwrap());
        grant_repos(&mut s, &a.id, "solo/*", NOW).unwrap().unwrap();
    }
}

/// `telbase team repos`: grants through the CLI, an overlap refused with a clear message,
/// and each grant in the security log when the machine has the audit key.
#[test]
fn the_cli_grants_repositories_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("s.db").display());
    let key = dir.path().join("audit.key");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_telbase"))
            .args(args)
            .env("TELBASE_DATABASE_URL", &db)
            .env("TELBASE_AUDIT_KEY_FILE", &key)
            .output()
            .unwrap()
    };
    assert!(
        run(&["audit", "keygen", "--out", key.to_str().unwrap()])
            .status
            .success()
    );
    for (team, owner) in [("acme", "a@example.com"), ("other", "o@example.com")] {
        assert!(
            run(&["team", "create", team, "--owner", owner])
                .status
                .success()
        );
    }
    let ok = run(&["team", "repos", "add", "acme", "Acme-Inc/*"]);
    assert!(ok.status.success(), "{ok:?}");
    let clash = run(&["team", "repos", "add", "other", "acme-inc/web"]);
    assert!(!clash.status.success());
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(err.contains("overlaps acme-inc/*"), "{err}");
    let bad = run(&["team", "repos", "add", "other", "not-a-repo"]);
    assert!(!bad.status.success());
    let list = run(&["team", "repos", "list", "acme"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout), "acme-inc/*\n");
    let log = run(&["audit", "list"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert_eq!(log.matches("admin.repos_granted").count(), 1, "{log}");

    // An operator moves a repository to another team: the grant goes back, the project it
    // left behind is listed as not granted and unregistered (its values with it), and the
    // other team may then have it.
    {
        let mut s = telbase::store::open(&telbase::store::Location::parse(&db).unwrap()).unwrap();
        let t = model::team_by_name(&mut s, "acme").unwrap().unwrap();
        telbase::control::projects::create(
            &mut s,
            &telbase::control::projects::NewProject {
                team_id: &t.id,
                name: "web",
                repo: "acme-inc/web",
                config_path: "telbase.yaml",
                created_by: "seed",
            },
            NOW,
        )
        .unwrap()
        .unwrap();
    }
    let list = run(&["team", "projects", "list", "acme"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout), "web\tacme-inc/web\n");
    assert!(
        run(&["team", "repos", "remove", "acme", "acme-inc/*"])
            .status
            .success()
    );
    let list = run(&["team", "projects", "list", "acme"]);
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "web\tacme-inc/web\t(not granted)\n"
    );
    let missing = run(&["team", "projects", "remove", "acme", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("team acme has no project nope"));
    let gone = run(&["team", "projects", "remove", "acme", "web"]);
    assert!(gone.status.success(), "{gone:?}");
    assert!(String::from_utf8_lossy(&gone.stdout).contains("Unregistered project web"));
    assert_eq!(run(&["team", "projects", "list", "acme"]).stdout, b"");
    assert!(
        run(&["team", "repos", "add", "other", "acme-inc/web"])
            .status
            .success()
    );
    let log = run(&["audit", "list"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert_eq!(
        log.matches("config.project_delete").count(),
        2,
        "started, success: {log}"
    );
    assert!(
        !log.contains("nope"),
        "a missing project is not recorded: {log}"
    );
    assert!(run(&["audit", "verify"]).status.success());
}
