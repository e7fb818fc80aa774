//! Brute-force and abuse protection (`telbase::abuse`), on SQLite and PostgreSQL: failures
//! lock after the threshold, locks expire and double up to the cap, a success never lifts
//! another account's or the address's lock, counts are shared by two store handles (two
//! replicas) and exact under concurrent failures, token buckets refuse with a wait; the HTTP
//! answers (429 + Retry-After + the JSON error shape, also before authentication for a
//! locked subject); the webhook endpoint (a locked address gets 429 while another address
//! and valid deliveries get through; X-Forwarded-For only from a trusted proxy); anomalies
//! fire once and reach the notification receiver and the security-events sink; the
//! `telbase abuse` CLI; and property tests of the CIDR and X-Forwarded-For parsing.

mod common;
#[path = "common/serve_app.rs"]
mod serve_app;

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::Value;
use telbase::abuse::{
    self, Abuse, AbuseConfig, AbuseDb, AbuseRows, Account, Cidr, Failure, FailureKind, Guard,
    Limits, Policies, Policy, Rate, Realm, Scope, SecurityEvent, SecurityEvents,
    SecurityEventsError, Subject, Take, TrustedProxies, Unauthenticated,
};
use telbase::github::webhook;
use telbase::serve::notify::{Notifier, NotifyConfig};
use telbase::serve::{self, EdgeConfig, ServeConfig};
use telbase::store::Store;

const MIN: i64 = 60_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn subject(scope: Scope, key: &str) -> Subject {
    Subject {
        realm: Realm::Api,
        scope,
        key: key.into(),
    }
}

/// A clock the test moves.
fn clock(start: i64) -> (Arc<AtomicI64>, abuse::Clock) {
    let t = Arc::new(AtomicI64::new(start));
    let c = t.clone();
    (t, Arc::new(move || c.load(Ordering::SeqCst)))
}

/// Every security event handed to the sink.
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

fn abuse_on(store: Store, config: AbuseConfig, start: i64) -> (Arc<Abuse>, Arc<AtomicI64>) {
    let (t, c) = clock(start);
    let db: Arc<dyn AbuseDb> = Arc::new(Mutex::new(store));
    (Arc::new(Abuse::new(db, config).with_clock(c)), t)
}

#[test]
fn failures_lock_at_the_threshold_and_locks_double_to_the_cap() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        let mut s = t.open();
        // A window longer than the doubling, so each failure after a lock re-locks.
        let p = Policy {
            threshold: 10,
            window_ms: 24 * 60 * MIN,
            base_lock_ms: MIN,
            max_lock_ms: 60 * MIN,
            memory_ms: 24 * 60 * MIN,
        };
        let a = subject(Scope::Address, "203.0.113.7/32");
        let mut now = 1_000_000;
        for n in 1..=9 {
            assert_eq!(
                s.record_failure(&a, now, &p).unwrap(),
                Failure::Counted {
                    count: n,
                    locked_until: None,
                    level: 0
                }
            );
        }
        assert_eq!(s.locked(std::slice::from_ref(&a), now).unwrap(), None);
        assert_eq!(
            s.record_failure(&a, now, &p).unwrap(),
            Failure::Counted {
                count: 10,
                locked_until: Some(now + MIN),
                level: 0
            }
        );
        assert_eq!(
            s.locked(std::slice::from_ref(&a), now).unwrap(),
            Some((a.clone(), now + MIN))
        );
        // While locked: refused, not counted.
        assert_eq!(
            s.record_failure(&a, now + 1, &p).unwrap(),
            Failure::Locked {
                until_ms: now + MIN
            }
        );
        // Each lock expires; the next failure locks twice as long, up to the hour.
        let mut length = MIN;
        let mut lengths = Vec::new();
        for _ in 0..8 {
            now += length;
            assert_eq!(s.locked(std::slice::from_ref(&a), now).unwrap(), None);
            match s.record_failure(&a, now, &p).unwrap() {
                Failure::Counted {
                    locked_until: Some(until),
                    ..
                } => length = until - now,
                other => panic!("expected a new lock, got {other:?}"),
            }
            lengths.push(length / MIN);
        }
        assert_eq!(lengths, [2, 4, 8, 16, 32, 60, 60, 60]);
        let rows = s.subjects(now).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].lockouts, 9);
        assert_eq!(rows[0].failures, 18);
        // A day after the last lock the backoff starts again at a minute.
        now += 25 * 60 * MIN;
        for _ in 0..9 {
            s.record_failure(&a, now, &p).unwrap();
        }
        match s.record_failure(&a, now, &p).unwrap() {
            Failure::Counted {
                locked_until: Some(until),
                level: 0,
                ..
            } => assert_eq!(until - now, MIN),
            other => panic!("expected a fresh one-minute lock, got {other:?}"),
        }
    }
}

#[test]
fn the_sliding_window_forgets_old_failures_and_pruning_keeps_what_matters() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        let mut s = t.open();
        let p = Policies::default().api_address;
        let a = subject(Scope::Address, "198.51.100.1/32");
        // Nine failures, then sixteen minutes of quiet: the window is empty again.
        for i in 0..9 {
            s.record_failure(&a, i * 1000, &p).unwrap();
        }
        let later = 16 * MIN;
        assert_eq!(
            s.record_failure(&a, later, &p).unwrap(),
            Failure::Counted {
                count: 1,
                locked_until: None,
                level: 0
            }
        );
        let pruned = s
            .prune(later, later - 15 * MIN, later - 24 * 60 * MIN, 0)
            .unwrap();
        assert_eq!(pruned.failures, 9);
        assert_eq!(
            pruned.subjects, 0,
            "a subject with a failure in its window stays"
        );
        let pruned = s.prune(later + 16 * MIN, later + MIN, later, 0).unwrap();
        assert_eq!((pruned.failures, pruned.subjects), (1, 1));
        assert!(s.subjects(later).unwrap().is_empty());
    }
}

#[test]
fn success_never_lifts_another_accounts_or_the_addresses_lock() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        let (abuse, _) = abuse_on(t.open(), AbuseConfig::default(), 10 * MIN);
        let attacker = ip("203.0.113.7");
        let victim = Account::user("1");
        // Five failures against user 1: the account locks (threshold 5)...
        for _ in 0..5 {
            abuse
                .failure_blocking(Realm::Api, FailureKind::BadToken, attacker, Some(&victim))
                .unwrap();
        }
        assert!(
            abuse
                .check_blocking(Realm::Api, ip("192.0.2.50"), Some(&victim))
                .unwrap()
                .is_some(),
            "the account is locked from every address"
        );
        // ...five more against other accounts: the address locks (threshold 10).
        for n in 2..=6 {
            abuse
                .failure_blocking(
                    Realm::Api,
                    FailureKind::BadToken,
                    attacker,
                    Some(&Account::user(&n.to_string())),
                )
                .unwrap();
        }
        let wait = abuse
            .check_blocking(Realm::Api, attacker, None)
            .unwrap()
            .expect("the address is locked");
        assert!((1..=60).contains(&wait), "{wait}");
        // The attacker signs in to an account of their own: neither lock lifts.
        let own = Account::user("666");
        abuse.success_blocking(Realm::Api, &own).unwrap();
        abuse.signed_in_blocking(&own, attacker).unwrap();
        assert!(
            abuse
                .check_blocking(Realm::Api, attacker, None)
                .unwrap()
                .is_some()
        );
        assert!(
            abuse
                .check_blocking(Realm::Api, ip("192.0.2.50"), Some(&victim))
                .unwrap()
                .is_some()
        );
        // Another address, another account: not locked.
        assert_eq!(
            abuse
                .check_blocking(Realm::Api, ip("192.0.2.50"), Some(&Account::user("7")))
                .unwrap(),
            None
        );
        // The webhook realm is separate.
        assert_eq!(
            abuse
                .check_blocking(Realm::Webhook, attacker, None)
                .unwrap(),
            None
        );
    }
}

#[test]
fn locks_expire_with_the_default_policy() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        let (abuse, time) = abuse_on(t.open(), AbuseConfig::default(), 100 * MIN);
        let a = ip("2001:db8:1:2::1");
        for _ in 0..10 {
            abuse
                .failure_blocking(Realm::Api, FailureKind::SignIn, a, None)
                .unwrap();
        }
        // Another address of the same /64 is the same subject.
        assert_eq!(
            abuse
                .check_blocking(Realm::Api, ip("2001:db8:1:2:ffff::9"), None)
                .unwrap(),
            Some(60)
        );
        // The refusal memory holds no longer than the lock.
        time.fetch_add(MIN, Ordering::SeqCst);
        assert_eq!(abuse.check_blocking(Realm::Api, a, None).unwrap(), None);
    }
}

#[test]
fn counts_are_shared_by_replicas_and_exact_under_concurrency() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        let p = Policy {
            threshold: 100,
            ..Policies::default().api_address
        };
        let a = subject(Scope::Address, "192.0.2.1/32");
        let location = t.location();
        // Eight threads, each with a store handle of its own (eight replicas' worth of
        // connections), 25 failures each, all at once.
        let results: Vec<Failure> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (location, a) = (location.clone(), a.clone());
                    scope.spawn(move || {
                        let mut s = telbase::store::open(&location).unwrap();
                        (0..25)
                            .map(|_| s.record_failure(&a, 5 * MIN, &p).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let counted: Vec<i64> = results
            .iter()
            .filter_map(|r| match r {
                Failure::Counted { count, .. } => Some(*count),
                _ => None,
            })
            .collect();
        let mut sorted = counted.clone();
        sorted.sort();
        assert_eq!(sorted, (1..=100).collect::<Vec<_>>(), "every count once");
        let started = results
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Failure::Counted {
                        locked_until: Some(_),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(started, 1, "exactly one failure starts the lock");
        let refused = results
            .iter()
            .filter(|r| matches!(r, Failure::Locked { .. }))
            .count();
        assert_eq!(refused, 100);
        // A second handle (another replica) sees the same lock and count.
        let mut other = t.open();
        assert!(
            other
                .locked(std::slice::from_ref(&a), 5 * MIN)
                .unwrap()
                .is_some()
        );
        assert_eq!(other.subjects(5 * MIN).unwrap()[0].failures, 100);
    }
}

#[test]
fn token_buckets_refuse_with_a_wait_and_are_shared() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        let (mut one, mut two) = (t.open(), t.open());
        // 60 a minute (one per second), bursts of 3.
        let now = 1_000_000;
        for i in 0..3 {
            let s = if i % 2 == 0 { &mut one } else { &mut two };
            assert_eq!(s.take("token:t1", now, 1000, 3).unwrap(), Take::Allowed);
        }
        assert_eq!(
            two.take("token:t1", now, 1000, 3).unwrap(),
            Take::Denied {
                retry_after_ms: 1000
            }
        );
        // Another bucket is untouched; a second later one more fits.
        assert_eq!(one.take("token:t2", now, 1000, 3).unwrap(), Take::Allowed);
        assert_eq!(
            one.take("token:t1", now + 1000, 1000, 3).unwrap(),
            Take::Allowed
        );
        assert!(matches!(
            one.take("token:t1", now + 1000, 1000, 3).unwrap(),
            Take::Denied { .. }
        ));
        // Concurrent takes from several handles: exactly the burst gets through.
        let location = t.location();
        let allowed: usize = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let location = location.clone();
                    scope.spawn(move || {
                        let mut s = telbase::store::open(&location).unwrap();
                        (0..10)
                            .filter(|_| {
                                s.take("address:x", 5 * MIN, MIN, 7).unwrap() == Take::Allowed
                            })
                            .count()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 7);
    }
}

/// What the notification receiver got: headers and the raw body.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

const NOTIFY_SECRET: &str = "notify-secret-for-tests";

async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push((headers, body));
                StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, got)
}

fn verified(headers: &HeaderMap, body: &[u8]) -> Value {
    let sig = headers
        .get("x-telbase-signature-256")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(
        sig,
        telbase::serve::notify::sign(&SecretString::from(NOTIFY_SECRET.to_owned()), body)
    );
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(headers.get("x-telbase-event").unwrap(), "security_anomaly");
    assert_eq!(v["event"], "security_anomaly");
    v
}

async fn wait_for(got: &Received, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let g = got.lock().unwrap();
            if g.len() >= n {
                return g.iter().map(|(h, b)| verified(h, b)).collect();
            }
        }
        assert!(Instant::now() < deadline, "notifications did not arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_fire_once_and_reach_the_sink_and_the_receiver() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        let (url, got) = receiver().await;
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let notifier = Notifier::start(
            NotifyConfig::new(url, SecretString::from(NOTIFY_SECRET.to_owned())),
            stop,
        )
        .unwrap();
        let sink = Arc::new(Sink::default());
        let config = AbuseConfig {
            events: Some(sink.clone()),
            ..AbuseConfig::default()
        };
        let (abuse, time) = abuse_on(t.open(), config, 10 * MIN);
        let abuse = Arc::new(
            Arc::into_inner(abuse)
                .unwrap()
                .with_notifier(Some(notifier)),
        );
        let user = Account::user("42");
        // The first sign-in ever is not an anomaly; the same /24 is not new.
        abuse
            .signed_in(user.clone(), ip("203.0.113.7"))
            .await
            .unwrap();
        abuse
            .signed_in(user.clone(), ip("203.0.113.99"))
            .await
            .unwrap();
        assert!(sink.kinds().is_empty());
        // Another network: once, however often, and from two replicas at once.
        let (a, b) = (abuse.clone(), abuse.clone());
        let (u1, u2) = (user.clone(), user.clone());
        let (r1, r2) = tokio::join!(
            a.signed_in(u1, ip("198.51.100.1")),
            b.signed_in(u2, ip("198.51.100.2"))
        );
        r1.unwrap();
        r2.unwrap();
        assert_eq!(sink.kinds(), ["new_network"]);
        // A token from a new address (not its first).
        let token = Account::token("tok_abc");
        assert_eq!(
            abuse
                .token_request(token.clone(), ip("192.0.2.1"))
                .await
                .unwrap(),
            None
        );
        abuse
            .token_request(token.clone(), ip("192.0.2.1"))
            .await
            .unwrap();
        assert_eq!(sink.kinds(), ["new_network"]);
        abuse
            .token_request(token.clone(), ip("192.0.2.2"))
            .await
            .unwrap();
        abuse
            .token_request(token.clone(), ip("192.0.2.2"))
            .await
            .unwrap();
        assert_eq!(sink.kinds(), ["new_network", "token_new_address"]);
        // A burst: the account locks at 5, the address at 10; each fires once.
        for _ in 0..12 {
            abuse
                .failure(
                    Realm::Api,
                    FailureKind::BadToken,
                    ip("198.51.100.200"),
                    Some(Account::user("9")),
                )
                .await
                .unwrap();
        }
        time.fetch_add(1, Ordering::SeqCst);
        assert_eq!(
            sink.kinds(),
            [
                "new_network",
                "token_new_address",
                "failure_burst",
                "failure_burst"
            ]
        );
        let bodies = wait_for(&got, 4).await;
        let kinds: Vec<&str> = bodies
            .iter()
            .map(|v| v["anomaly"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "new_network",
                "token_new_address",
                "failure_burst",
                "failure_burst"
            ]
        );
        assert_eq!(bodies[0]["account"], "user:42");
        assert_eq!(bodies[0]["network"], "198.51.100.0/24");
        assert_eq!(bodies[1]["address"], "192.0.2.2/32");
        assert_eq!(bodies[2]["scope"], "account");
        assert_eq!(bodies[2]["failures"], 5);
        assert_eq!(bodies[3]["scope"], "address");
        assert_eq!(bodies[3]["subject"], "198.51.100.200/32");
        assert!(
            bodies[3]["description"]
                .as_str()
                .unwrap()
                .contains("locked")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(got.lock().unwrap().len(), 4, "each anomaly once");
    }
}

/// A tiny API on the abuse layer: `GET /me` with `Authorization: Bearer ok` succeeds as
/// user 1; any other token fails. `POST /device` is unauthenticated.
fn api(abuse: Arc<Abuse>) -> axum::Router {
    async fn me(guard: Guard, headers: HeaderMap) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if token == "Bearer ok" {
            if let Err(r) = guard.success(Account::user("1")).await {
                return r.into_response();
            }
            if let Err(r) = guard.token(Account::token("ok")).await {
                return r.into_response();
            }
            return "hello".into_response();
        }
        match guard.failure(FailureKind::BadToken, None).await {
            Err(r) => r.into_response(),
            Ok(()) => StatusCode::UNAUTHORIZED.into_response(),
        }
    }
    async fn device(_: Unauthenticated) -> &'static str {
        "code"
    }
    axum::Router::new()
        .route("/me", axum::routing::get(me))
        .route("/device", axum::routing::post(device))
        .with_state(abuse)
}

async fn serve_api(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            l,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap()
    });
    base
}

fn assert_429(status: u16, headers: &reqwest::header::HeaderMap, body: &Value) -> u64 {
    assert_eq!(status, 429, "{body}");
    let after: u64 = headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after >= 1);
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["retry_after"], after);
    assert!(body["error"]["message"].as_str().unwrap().len() > 5);
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_answers_429_with_retry_after_before_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        telbase::store::open(&telbase::store::Location::Sqlite(dir.path().join("t.db"))).unwrap();
    let config = AbuseConfig {
        // The test client is the proxy; each request says which client it carries.
        trusted_proxies: TrustedProxies::parse("127.0.0.1").unwrap(),
        claims: Some(Arc::new(|parts: &axum::http::request::Parts| {
            parts
                .headers
                .get("x-claimed-user")
                .and_then(|v| v.to_str().ok())
                .map(Account::user)
        })),
        limits: Limits {
            address: Rate {
                per_minute: 1,
                burst: 3,
            },
            ..Limits::default()
        },
        ..AbuseConfig::default()
    };
    let (abuse, _) = abuse_on(store, config, chrono::Utc::now().timestamp_millis());
    let base = serve_api(api(abuse)).await;
    let c = reqwest::Client::new();
    let get = |token: &'static str, from: &'static str| {
        let c = c.clone();
        let base = base.clone();
        async move {
            let r = c
                .get(format!("{base}/me"))
                .header("authorization", token)
                .header("x-forwarded-for", from)
                .send()
                .await
                .unwrap();
            let (s, h) = (r.status().as_u16(), r.headers().clone());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (s, h, body)
        }
    };
    for _ in 0..10 {
        let (s, _, _) = get("Bearer guess", "203.0.113.7").await;
        assert_eq!(s, 401);
    }
    // Locked: 429 even with the right token (a lock must not confirm a guess).
    let (s, h, body) = get("Bearer ok", "203.0.113.7").await;
    let after = assert_429(s, &h, &body);
    assert!(after <= 60, "{after}");
    // Another client behind the same proxy is not locked.
    let (s, _, _) = get("Bearer ok", "198.51.100.4").await;
    assert_eq!(s, 200);
    // The claimed account locks after 5 failures, from any address.
    for n in 0..5 {
        let r = c
            .get(format!("{base}/me"))
            .header("authorization", "Bearer guess")
            .header("x-claimed-user", "77")
            .header("x-forwarded-for", format!("192.0.2.{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = c
        .get(format!("{base}/me"))
        .header("x-claimed-user", "77")
        .header("x-forwarded-for", "192.0.2.100")
        .send()
        .await
        .unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    assert_429(s, &h, &r.json().await.unwrap());
    // Unauthenticated routes: the address's bucket (bursts of 3).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = c
            .post(format!("{base}/device"))
            .header("x-forwarded-for", "192.0.2.200")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let h = r.headers().clone();
            let after = assert_429(429, &h, &r.json().await.unwrap());
            assert!((1..=60).contains(&after), "{after}");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
}

const WEBHOOK_SECRET: &str = serve_app::SECRET;

fn server_config(dir: &std::path::Path, pem: &str) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: telbase::store::Location::Sqlite(dir.join("telbase.db")),
        app: telbase::github::app::AppConfig {
            app_id: 42,
            private_key: SecretString::from(pem.to_owned()),
            // Nothing answers here: jobs fail and retry, which these tests do not look at.
            base_url: "http://127.0.0.1:9".into(),
        },
        webhook_secrets: vec![SecretString::from(WEBHOOK_SECRET.to_owned())],
        credentials: telbase::providers::Credentials::default(),
        http: common::emu::http_config(),
        opener: Arc::new(telbase::apply::NoIdentity),
        workers: 1,
        public_url: None,
        key_rotation: None,
        lease: Duration::from_secs(60),
        poll: None,
        drift_tick: None,
        sweep: None,
        watch: None,
    }
}

async fn deliver(
    client: &reqwest::Client,
    base: &str,
    delivery: &str,
    body: &Value,
    secret: &str,
    from: Option<&str>,
) -> reqwest::Response {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut r = client
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header(
            "x-hub-signature-256",
            webhook::sign(&SecretString::from(secret.to_owned()), &bytes),
        )
        .header("content-type", "application/json");
    if let Some(f) = from {
        r = r.header("x-forwarded-for", f);
    }
    r.body(bytes).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_locks_an_address_after_bad_signatures_and_lets_others_through() {
    let Some((pem, _)) = common::app_key() else {
        return;
    };
    let Some(push) = serve_app::push_main("1111111111111111111111111111111111111111") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start_with(
        server_config(dir.path(), pem),
        EdgeConfig {
            abuse: AbuseConfig {
                trusted_proxies: TrustedProxies::parse("127.0.0.0/8").unwrap(),
                ..AbuseConfig::default()
            },
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let c = reqwest::Client::new();
    let attacker = Some("6.6.6.6, 203.0.113.7");
    let mut statuses = Vec::new();
    for n in 0..23 {
        let r = deliver(&c, &base, &format!("d-bad-{n}"), &push, "guess", attacker).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let h = r.headers().clone();
            let after = assert_429(429, &h, &r.json().await.unwrap());
            assert!((1..=60).contains(&after), "{after}");
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    // Another address behind the same proxy is still answered 401, not 429.
    let r = deliver(&c, &base, "d-other", &push, "guess", Some("198.51.100.4")).await;
    assert_eq!(r.status(), 401);
    // A valid delivery from a fresh address queues; so does one from the locked address.
    let r = deliver(
        &c,
        &base,
        "d-good",
        &push,
        WEBHOOK_SECRET,
        Some("192.0.2.1"),
    )
    .await;
    assert_eq!(r.status(), 202);
    assert!(running.queue.with(|s| s.has_delivery("d-good")).unwrap());
    let r = deliver(&c, &base, "d-good-2", &push, WEBHOOK_SECRET, attacker).await;
    assert_eq!(r.status(), 202);
    assert!(!running.queue.with(|s| s.has_delivery("d-bad-22")).unwrap());
    // The lock is in the store, for every replica (and `abuse list`).
    let rows = running
        .queue
        .with_abuse_rows(|s| s.subjects(chrono::Utc::now().timestamp_millis()));
    let locked: Vec<_> = rows
        .iter()
        .filter(|r| r.locked_until_ms > 0)
        .map(|r| (r.subject.realm, r.subject.key.clone()))
        .collect();
    assert_eq!(locked, [(Realm::Webhook, "203.0.113.7/32".to_owned())]);
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"telbase_abuse_lockouts_total{realm="webhook",scope="address"} 1"#,
        r#"telbase_abuse_refusals_total{realm="webhook",reason="locked"} 3"#,
        r#"telbase_abuse_anomalies_total{kind="failure_burst"} 1"#,
        r#"telbase_webhook_deliveries_total{event="push",result="throttled"} 3"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let Some((pem, _)) = common::app_key() else {
        return;
    };
    let Some(push) = serve_app::push_main("2222222222222222222222222222222222222222") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // No trusted proxy: every request counts against the peer, 127.0.0.1, whatever it says.
    let running = serve::start_with(server_config(dir.path(), pem), EdgeConfig::default())
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    let c = reqwest::Client::new();
    let mut statuses = Vec::new();
    for n in 0..21 {
        let from = format!("198.51.100.{n}");
        let r = deliver(&c, &base, &format!("d-{n}"), &push, "guess", Some(&from)).await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[..20], [401; 20]);
    assert_eq!(statuses[20], 429);
    let rows = running
        .queue
        .with_abuse_rows(|s| s.subjects(chrono::Utc::now().timestamp_millis()));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].subject.key, "127.0.0.1/32");
    running.stop().await;
}

/// `StoreQueue::with_abuse` for a test's one-off read.
trait WithAbuseRows {
    fn with_abuse_rows<T>(
        &self,
        f: impl FnOnce(&mut dyn AbuseRows) -> Result<T, telbase::store::StoreError>,
    ) -> T;
}

impl WithAbuseRows for telbase::serve::queue::StoreQueue {
    fn with_abuse_rows<T>(
        &self,
        f: impl FnOnce(&mut dyn AbuseRows) -> Result<T, telbase::store::StoreError>,
    ) -> T {
        let mut f = Some(f);
        let mut out = None;
        self.with_abuse(&mut |rows| {
            out = Some((f.take().unwrap())(rows)?);
            Ok(())
        })
        .unwrap();
        out.unwrap()
    }
}

#[test]
fn the_cli_lists_and_unlocks_addresses_and_accounts() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        let url = match &t {
            common::pg::TestStore::Sqlite(dir) => {
                format!("sqlite:{}", dir.path().join("telbase.db").display())
            }
            common::pg::TestStore::Postgres(db) => db.url.clone(),
        };
        let (abuse, _) = abuse_on(
            t.open(),
            AbuseConfig::default(),
            chrono::Utc::now().timestamp_millis(),
        );
        for _ in 0..10 {
            abuse
                .failure_blocking(
                    Realm::Api,
                    FailureKind::BadToken,
                    ip("203.0.113.7"),
                    Some(&Account::token("tok_x")),
                )
                .unwrap();
        }
        let telbase = |args: &[&str]| {
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_telbase"))
                .args(args)
                .env("TELBASE_DATABASE_URL", &url)
                .output()
                .unwrap();
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        };
        let (code, out, err) = telbase(&["abuse", "list"]);
        assert_eq!(code, Some(0), "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("REALM"), "{out}");
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            out.contains("203.0.113.7/32") && out.contains("token:tok_x"),
            "{out}"
        );
        // The same rows as JSON, for scripts.
        let (code, out, err) = telbase(&["abuse", "list", "--format", "json"]);
        assert_eq!(code, Some(0), "{err}");
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 2, "{out}");
        let by_key = |k: &str| rows.iter().find(|r| r["key"] == k).unwrap();
        let addr = by_key("203.0.113.7/32");
        assert_eq!(addr["scope"], "address");
        assert_eq!(addr["locked"], true, "{addr}");
        assert!(
            addr["locked_until"].as_str().unwrap().ends_with('Z'),
            "{addr}"
        );
        assert!(addr["failures"].as_u64().unwrap() > 0, "{addr}");
        assert_eq!(by_key("token:tok_x")["locked"], true);
        let locked = |abuse: &Abuse| {
            (
                abuse
                    .check_blocking(Realm::Api, ip("203.0.113.7"), None)
                    .unwrap()
                    .is_some(),
                abuse
                    .check_blocking(Realm::Api, ip("192.0.2.9"), Some(&Account::token("tok_x")))
                    .unwrap()
                    .is_some(),
            )
        };
        // A fresh handle (no memory of refusals) sees both locks.
        let (fresh, _) = abuse_on(
            t.open(),
            AbuseConfig::default(),
            chrono::Utc::now().timestamp_millis(),
        );
        assert_eq!(locked(&fresh), (true, true));
        let (code, out, err) = telbase(&["abuse", "unlock", "--address", "203.0.113.7"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("unlocked address 203.0.113.7/32"), "{out}");
        let (fresh, _) = abuse_on(
            t.open(),
            AbuseConfig::default(),
            chrono::Utc::now().timestamp_millis(),
        );
        assert_eq!(locked(&fresh), (false, true));
        let (code, out, err) = telbase(&["abuse", "unlock", "--account", "token:tok_x"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("unlocked account token:tok_x"), "{out}");
        let (fresh, _) = abuse_on(
            t.open(),
            AbuseConfig::default(),
            chrono::Utc::now().timestamp_millis(),
        );
        assert_eq!(locked(&fresh), (false, false));
        // Bad input: a clear error, exit 1 (or clap's 2 for a missing choice).
        let (code, _, err) = telbase(&["abuse", "unlock", "--address", "not-an-ip"]);
        assert_eq!(code, Some(1));
        assert!(err.contains("not an IP address"), "{err}");
        let (code, _, err) = telbase(&["abuse", "unlock", "--account", "no colon"]);
        assert_eq!(code, Some(1));
        assert!(err.contains("account key"), "{err}");
        let (code, _, _) = telbase(&["abuse", "unlock"]);
        assert_eq!(code, Some(2));
        let (code, out, _) = telbase(&["abuse", "unlock", "--address", "192.0.2.77"]);
        assert_eq!(code, Some(0));
        assert!(out.contains("nothing to unlock"), "{out}");
    }
}

#[test]
fn serve_refuses_a_bad_trusted_proxy_list() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(["serve", "--trusted-proxies", "10.0.0.0/8, 10.0.0.0/33"])
        .env_remove("TELBASE_SERVE_CONFIG")
        .env_remove("TELBASE_TRUSTED_PROXIES")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--trusted-proxies") && err.contains("10.0.0.0/33"),
        "{err}"
    );
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

/// The reference rule, written the slow obvious way: the right-most hop that is not
/// trusted; all trusted: the left-most; no hops: the peer.
fn reference(trusted: &TrustedProxies, peer: IpAddr, hops: &[IpAddr]) -> IpAddr {
    let peer = abuse::addr::canonical(peer);
    if !trusted.trusts(peer) {
        return peer;
    }
    for h in hops.iter().rev() {
        if !trusted.trusts(*h) {
            return abuse::addr::canonical(*h);
        }
    }
    hops.first()
        .map(|h| abuse::addr::canonical(*h))
        .unwrap_or(peer)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn cidr_blocks_contain_their_addresses_and_print_back(addr in any_ip(), prefix in 0u8..=128) {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let mapped = matches!(addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
        let text = format!("{addr}/{prefix}");
        match Cidr::parse(&text) {
            Ok(c) => {
                prop_assert!(prefix <= bits);
                prop_assert!(!mapped || prefix >= 96);
                prop_assert!(c.contains(addr), "{text} → {c}");
                let again = Cidr::parse(&c.to_string()).unwrap();
                prop_assert_eq!(again, c);
            }
            Err(_) => prop_assert!(prefix > bits || (mapped && prefix < 96)),
        }
    }

    #[test]
    fn cidr_parsing_never_panics(s in "\\PC{0,60}") {
        let _ = Cidr::parse(&s);
        let _ = TrustedProxies::parse(&s);
    }

    #[test]
    fn forwarded_for_never_trusts_an_untrusted_peer(
        peer in any_ip(),
        header in "\\PC{0,80}",
    ) {
        let trusted = TrustedProxies::parse("10.0.0.0/8, fd00::/8").unwrap();
        let got = trusted.client(peer, &[header.as_str()]);
        if !trusted.trusts(peer) {
            prop_assert_eq!(got, abuse::addr::canonical(peer));
        }
    }

    #[test]
    fn forwarded_for_from_a_trusted_proxy_is_the_rightmost_untrusted_hop(
        proxy in 0u8..=255,
        hops in proptest::collection::vec(
            prop_oneof![
                any::<u8>().prop_map(|b| IpAddr::from([10, 0, 0, b])),
                any_ip(),
            ],
            0..6,
        ),
        split in any::<bool>(),
    ) {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let peer = IpAddr::from([10, 1, 2, proxy]);
        let texts: Vec<String> = hops.iter().map(|h| h.to_string()).collect();
        // One header, or one header per hop: the same list.
        let joined = texts.join(", ");
        let headers: Vec<&str> = if split {
            texts.iter().map(String::as_str).collect()
        } else if texts.is_empty() {
            Vec::new()
        } else {
            vec![joined.as_str()]
        };
        let got = trusted.client(peer, &headers);
        prop_assert_eq!(got, reference(&trusted, peer, &hops));
        // Whatever the header, the answer is the peer or one of the hops.
        prop_assert!(got == peer || hops.iter().any(|h| abuse::addr::canonical(*h) == got));
    }

    #[test]
    fn address_keys_group_ipv6_by_slash_64(a in any::<[u8; 16]>(), tail in any::<[u8; 8]>()) {
        let mut b = a;
        b[8..].copy_from_slice(&tail);
        let (x, y) = (IpAddr::from(a), IpAddr::from(b));
        // Mapped IPv4 addresses are IPv4; every other IPv6 address is counted by its /64.
        if abuse::addr::canonical(x).is_ipv6() && abuse::addr::canonical(y).is_ipv6() {
            prop_assert_eq!(abuse::address_key(x), abuse::address_key(y));
        }
        prop_assert!(abuse::address_key(x).ends_with("/64") || abuse::address_key(x).ends_with("/32"));
    }
}
