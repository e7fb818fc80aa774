//! Hardening of `/api/v1`, in process over real HTTP: deny by default (a method ROUTES does
//! not list is a 405 with `Allow`, an unknown path a 404, both in the one error shape), bad
//! bodies, queries and paths answered 400/413/415/422 in that shape (never axum's plain
//! text), and abuse protection on both stores: bad credentials lock the address (429 +
//! Retry-After, the lock an anomaly for the audit log) across two server instances sharing
//! one store, a token's rate limit, the OAuth endpoints' rate per address, wrong user codes,
//! and a token used from a new address flagged.

mod common;

use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use telbase::abuse::{
    self, Abuse, AbuseConfig, AbuseDb, Limits, Rate, SecurityEvent, SecurityEvents,
    SecurityEventsError,
};
use telbase::control::api::{self, ControlState};
use telbase::control::model::{self, NewToken};
use telbase::control::roles::Role;
use telbase::control::secrets::{Kind, ServerKey};
use telbase::store::Store;

use common::pg::{TestStore, stores};

const NOW: i64 = 1_800_000_000_000;

/// Every abuse event handed to the sink (the server's is the audit log).
#[derive(Default)]
struct Sink(Mutex<Vec<SecurityEvent>>);

impl SecurityEvents for Sink {
    fn record(&self, event: &SecurityEvent) -> Result<(), SecurityEventsError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

impl Sink {
    fn kinds(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                SecurityEvent::Anomaly(a) => a.kind().to_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }
}

struct Server {
    base: String,
    http: reqwest::Client,
}

impl Server {
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text:?}"));
        (status, headers, body)
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }
}

/// A server on `store`; with `abuse`, its checks (on their own connection to the same
/// store, as a replica has). The client's address is the `x-test-address` header when
/// present (standing in for a trusted proxy's `X-Forwarded-For`), else the peer.
async fn serve(store: Store, key: ServerKey, abuse: Option<Arc<Abuse>>) -> Server {
    let mut state = ControlState::new(store, key, "http://telbase.test".into(), false);
    state.clock = Arc::new(|| NOW);
    state.abuse = abuse;
    state.client_address = Arc::new(|peer, headers| {
        headers
            .get("x-test-address")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(peer)
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

fn abuse_on(ts: &TestStore, limits: Limits, sink: Arc<Sink>) -> Arc<Abuse> {
    let db: Arc<dyn AbuseDb> = Arc::new(Mutex::new(ts.open()));
    let config = AbuseConfig {
        limits,
        events: Some(sink as Arc<dyn SecurityEvents>),
        ..AbuseConfig::default()
    };
    let clock: abuse::Clock = Arc::new(|| NOW);
    Arc::new(Abuse::new(db, config).with_clock(clock))
}

/// Team `acme` with its Owner and the Owner's API token (secret, id).
fn seed(s: &mut Store, key: &ServerKey) -> (String, String) {
    let team = model::create_team(s, "acme", NOW).unwrap().unwrap();
    let u = model::create_user(s, "owner@example.com", "owner", NOW).unwrap();
    model::add_member(s, &team.id, &u.id, Role::Owner, NOW).unwrap();
    let (row, secret) = model::create_token(
        s,
        key,
        &NewToken {
            kind: Kind::Api,
            team_id: &team.id,
            user_id: &u.id,
            name: "t",
            role_cap: Role::Owner,
            family: None,
            expires_at: None,
        },
        NOW,
    )
    .unwrap();
    (secret.expose_secret().to_owned(), row.id)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not the error shape: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_paths_not_listed_are_denied_in_the_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let loc = telbase::store::Location::Sqlite(dir.path().join("db"));
    let key = ServerKey::generate();
    let (token, _) = seed(&mut telbase::store::open(&loc).unwrap(), &key);
    let srv = serve(telbase::store::open(&loc).unwrap(), key, None).await;
    for (method, path, allow) in [
        (Method::HEAD, "/api/v1/me", "GET"),
        (Method::OPTIONS, "/api/v1/tokens", "GET, POST"),
        (Method::PUT, "/api/v1/me", "GET"),
        (Method::PATCH, "/api/v1/tokens/abc", "DELETE"),
        (Method::GET, "/api/v1/oauth/token", "POST"),
        (Method::TRACE, "/api/v1/teams/acme/members", "GET, POST"),
    ] {
        let resp = srv
            .req(method.clone(), path)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
        if method != Method::HEAD {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(error_code(&body), "method_not_allowed", "{method} {path}");
        }
    }
    for path in [
        "/api/v1",
        "/api/v1/",
        "/api/v1/nope",
        "/api/v1/teams/acme/nope/x",
    ] {
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let (status, _, body) = srv
                .send(srv.req(method.clone(), path).bearer_auth(&token))
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(error_code(&body), "not_found", "{method} {path}");
        }
    }
    // Listed routes still work.
    let (status, _, body) = srv
        .send(srv.req(Method::GET, "/api/v1/me").bearer_auth(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_queries_and_paths_are_4xx_in_the_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let loc = telbase::store::Location::Sqlite(dir.path().join("db"));
    let key = ServerKey::generate();
    let (token, _) = seed(&mut telbase::store::open(&loc).unwrap(), &key);
    let srv = serve(telbase::store::open(&loc).unwrap(), key, None).await;
    let post = || srv.req(Method::POST, "/api/v1/tokens").bearer_auth(&token);
    let json_type = ("content-type", "application/json");

    let big = format!(
        "{{\"name\": \"{}\", \"team\": \"acme\"}}",
        "a".repeat(api::MAX_BODY_BYTES + 1)
    );
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "over the limit",
            post().header(json_type.0, json_type.1).body(big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "malformed JSON",
            post().header(json_type.0, json_type.1).body("{\"name\": "),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "no content type",
            post().body("{\"name\": \"x\", \"team\": \"acme\"}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "a form where JSON is expected",
            post().form(&[("name", "x"), ("team", "acme")]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "JSON of the wrong shape",
            post().json(&json!({"name": 5, "team": "acme"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_request",
        ),
        (
            "an unknown field",
            post().json(&json!({"name": "x", "team": "acme", "admin": true})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_request",
        ),
        (
            "an empty limit",
            srv.req(Method::GET, "/api/v1/logins?limit=")
                .bearer_auth(&token),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "a fraction of a day",
            post().json(&json!({"name": "x", "team": "acme", "expires_in_days": 3.5})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_request",
        ),
        (
            "a bad limit",
            srv.req(Method::GET, "/api/v1/tokens?limit=abc")
                .bearer_auth(&token),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "a repeated query parameter axum cannot read",
            srv.req(Method::GET, "/api/v1/tokens?cursor=a&cursor=b")
                .bearer_auth(&token),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "a path that is not UTF-8",
            srv.req(Method::DELETE, "/api/v1/tokens/%FF%FE")
                .bearer_auth(&token),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (what, req, status, code) in cases {
        let (got, headers, body) = srv.send(req).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{what}"
        );
        assert_eq!(error_code(&body), code, "{what}: {body}");
    }
    // A whole number written as a float is an integer, as JSON Schema counts them.
    let (status, _, body) = srv
        .send(post().json(&json!({"name": "x", "team": "acme", "expires_in_days": 3.0})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The OAuth endpoints keep RFC 6749's shape for their bad bodies.
    let (status, _, body) = srv
        .send(
            srv.req(Method::POST, "/api/v1/oauth/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=%ZZ&&&="),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, _, body) = srv
        .send(
            srv.req(Method::POST, "/api/v1/oauth/device_authorization")
                .json(&json!({"client_id": "telbase-cli"})),
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(body["error"].is_string(), "{body}");
}

/// Bad bearer tokens from one address, half to each of two servers on one store: the
/// tenth failure locks the address on both (the next request is a 429 + Retry-After, before
/// any token is looked at, so a valid one is refused too while locked), and the lock is an
/// anomaly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_lock_the_address_across_replicas() {
    for ts in stores() {
        let key = ServerKey::generate();
        let (token, _) = seed(&mut ts.open(), &key);
        let sink = Arc::new(Sink::default());
        let a = serve(
            ts.open(),
            key.clone(),
            Some(abuse_on(&ts, Limits::default(), sink.clone())),
        )
        .await;
        let b = serve(
            ts.open(),
            key.clone(),
            Some(abuse_on(&ts, Limits::default(), sink.clone())),
        )
        .await;
        let bad = format!("tlb_pat_{}", "0".repeat(43));
        let mut statuses = Vec::new();
        for i in 0..11 {
            let srv = if i % 2 == 0 { &a } else { &b };
            let req = srv
                .req(Method::GET, "/api/v1/me")
                .bearer_auth(&bad)
                .header("x-test-address", "203.0.113.7");
            let (status, headers, body) = srv.send(req).await;
            if status == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(error_code(&body), "rate_limited");
                assert!(
                    headers["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        >= 1
                );
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{}: {body}", ts.name());
            }
            statuses.push(status);
        }
        assert_eq!(
            statuses
                .iter()
                .filter(|s| **s == StatusCode::UNAUTHORIZED)
                .count(),
            10,
            "{}: {statuses:?}",
            ts.name()
        );
        assert_eq!(statuses[10], StatusCode::TOO_MANY_REQUESTS, "{}", ts.name());
        // Locked on both replicas, even with a valid token; an invalid session cookie too.
        for srv in [&a, &b] {
            let (status, headers, _) = srv
                .send(
                    srv.req(Method::GET, "/api/v1/me")
                        .bearer_auth(&token)
                        .header("x-test-address", "203.0.113.7"),
                )
                .await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", ts.name());
            assert!(headers.contains_key("retry-after"));
            let (status, _, _) = srv
                .send(
                    srv.req(Method::GET, "/api/v1/me")
                        .header("cookie", "telbase_session=tlb_ses_nonsense")
                        .header("x-test-address", "203.0.113.7"),
                )
                .await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{}", ts.name());
        }
        // Another address is not affected.
        let (status, _, body) = a
            .send(
                a.req(Method::GET, "/api/v1/me")
                    .bearer_auth(&token)
                    .header("x-test-address", "198.51.100.1"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", ts.name());
        assert!(
            sink.kinds().iter().any(|k| k == "failure_burst"),
            "{}: {:?}",
            ts.name(),
            sink.kinds()
        );
    }
}

/// Invalid session cookies count like invalid tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_cookies_lock_the_address() {
    for ts in stores() {
        let key = ServerKey::generate();
        seed(&mut ts.open(), &key);
        let sink = Arc::new(Sink::default());
        let srv = serve(ts.open(), key, Some(abuse_on(&ts, Limits::default(), sink))).await;
        let cookie = format!("telbase_session=tlb_ses_{}", "1".repeat(43));
        let mut last = StatusCode::OK;
        for _ in 0..11 {
            let (status, _, _) = srv
                .send(
                    srv.req(Method::GET, "/api/v1/sessions")
                        .header("cookie", &cookie),
                )
                .await;
            last = status;
        }
        assert_eq!(last, StatusCode::TOO_MANY_REQUESTS, "{}", ts.name());
    }
}

/// A token's bucket: the burst, then 429 with Retry-After; the bucket is in the store, so
/// a second replica sees it drained too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_has_a_rate_limit_shared_by_replicas() {
    for ts in stores() {
        let key = ServerKey::generate();
        let (token, _) = seed(&mut ts.open(), &key);
        let limits = Limits {
            token: Rate {
                per_minute: 6,
                burst: 3,
            },
            ..Limits::default()
        };
        let sink = Arc::new(Sink::default());
        let a = serve(
            ts.open(),
            key.clone(),
            Some(abuse_on(&ts, limits, sink.clone())),
        )
        .await;
        let b = serve(ts.open(), key.clone(), Some(abuse_on(&ts, limits, sink))).await;
        for srv in [&a, &b, &a] {
            let (status, _, body) = srv
                .send(srv.req(Method::GET, "/api/v1/me").bearer_auth(&token))
                .await;
            assert_eq!(status, StatusCode::OK, "{}: {body}", ts.name());
        }
        let (status, headers, body) = b
            .send(b.req(Method::GET, "/api/v1/me").bearer_auth(&token))
            .await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}: {body}",
            ts.name()
        );
        assert_eq!(error_code(&body), "rate_limited");
        let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=10).contains(&wait), "{wait}");
    }
}

/// Anyone may call the OAuth endpoints, so each address has a rate there (RFC 6749's error
/// shape, with Retry-After).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oauth_endpoints_are_rate_limited_per_address() {
    for ts in stores() {
        let key = ServerKey::generate();
        let limits = Limits {
            address: Rate {
                per_minute: 6,
                burst: 2,
            },
            ..Limits::default()
        };
        let srv = serve(
            ts.open(),
            key,
            Some(abuse_on(&ts, limits, Arc::new(Sink::default()))),
        )
        .await;
        let form = [("client_id", "telbase-cli")];
        for _ in 0..2 {
            let (status, _, body) = srv
                .send(
                    srv.req(Method::POST, "/api/v1/oauth/device_authorization")
                        .form(&form),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{}: {body}", ts.name());
        }
        let (status, headers, body) = srv
            .send(
                srv.req(Method::POST, "/api/v1/oauth/token")
                    .form(&[("grant_type", "refresh_token")]),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}: {body}",
            ts.name()
        );
        assert_eq!(body["error"], "rate_limited");
        assert!(headers.contains_key("retry-after"));
        // Another address has its own bucket.
        let (status, _, body) = srv
            .send(
                srv.req(Method::POST, "/api/v1/oauth/device_authorization")
                    .form(&form)
                    .header("x-test-address", "198.51.100.9"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", ts.name());
    }
}

/// Wrong user codes count in abuse protection's counters per user: the burst locks
/// (429, Retry-After) and is flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_user_codes_lock_and_are_flagged() {
    for ts in stores() {
        let key = ServerKey::generate();
        let (token, _) = seed(&mut ts.open(), &key);
        let sink = Arc::new(Sink::default());
        let srv = serve(
            ts.open(),
            key,
            Some(abuse_on(&ts, Limits::default(), sink.clone())),
        )
        .await;
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let (status, _, body) = srv
                .send(
                    srv.req(Method::POST, "/api/v1/device/approve")
                        .bearer_auth(&token)
                        .json(&json!({"user_code": "BCDF-GHJK"})),
                )
                .await;
            assert!(status.is_client_error(), "{body}");
            statuses.push(status);
        }
        assert_eq!(statuses[0], StatusCode::BAD_REQUEST, "{}", ts.name());
        assert!(
            statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
            "{}: {statuses:?}",
            ts.name()
        );
        assert!(
            sink.kinds().iter().any(|k| k == "failure_burst"),
            "{:?}",
            sink.kinds()
        );
    }
}

/// A token used from an address it never was used from (after another) is an anomaly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_new_address_is_flagged() {
    for ts in stores() {
        let key = ServerKey::generate();
        let (token, _) = seed(&mut ts.open(), &key);
        let sink = Arc::new(Sink::default());
        let srv = serve(
            ts.open(),
            key,
            Some(abuse_on(&ts, Limits::default(), sink.clone())),
        )
        .await;
        for addr in ["192.0.2.1", "192.0.2.1", "203.0.113.50"] {
            let (status, _, body) = srv
                .send(
                    srv.req(Method::GET, "/api/v1/me")
                        .bearer_auth(&token)
                        .header("x-test-address", addr),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let kinds = sink.kinds();
        assert_eq!(
            kinds.iter().filter(|k| *k == "token_new_address").count(),
            1,
            "{}: {kinds:?}",
            ts.name()
        );
    }
}
