//! The shared HTTP layer against a small local server: every pagination style our providers
//! use, `Retry-After`, which failures are retried for calls that could act twice, error
//! envelopes without tokens, refused redirects and foreign next-page links, and polling
//! deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use telbase::model::Provider;
use telbase::providers::http::{Call, Endpoint, Http, HttpConfig, Paging};
use telbase::providers::{ErrorKind, RetryPolicy};

const TOKEN: &str = "tok_very_secret_123";

#[derive(Default)]
struct Hits {
    n: AtomicUsize,
}

type Q = Query<std::collections::HashMap<String, String>>;

fn page(q: &Q, key: &str) -> usize {
    q.get(key)
        .and_then(|v| v.trim_start_matches('p').parse().ok())
        .unwrap_or(0)
}

async fn server() -> (String, Arc<Hits>) {
    let hits = Arc::new(Hits::default());
    let app = axum::Router::new()
        .route("/google", get(|q: Q| async move {
            let p = page(&q, "pageToken");
            let mut v = json!({"items": [p * 2, p * 2 + 1]});
            if p < 2 { v["nextPageToken"] = json!(format!("p{}", p + 1)); }
            axum::Json(v)
        }))
        .route("/cloudflare", get(|q: Q| async move {
            let p = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1usize);
            axum::Json(json!({"success": true, "result": [p], "result_info": {"page": p, "per_page": 1, "total_pages": 3}}))
        }))
        .route("/vercel", get(|q: Q| async move {
            let p = page(&q, "from");
            axum::Json(json!({"projects": [p], "pagination": {"count": 1, "next": if p < 2 { json!(format!("p{}", p + 1)) } else { Value::Null }}}))
        }))
        .route("/neon", get(|q: Q| async move {
            // Like Neon: a cursor on every non-empty page; the page after the last is empty.
            let after: usize = q.get("cursor").and_then(|c| c.parse().ok()).map(|c: usize| c + 1).unwrap_or(0);
            let items: Vec<usize> = (after..3).take(2).collect();
            let mut v = json!({"projects": items});
            if let Some(last) = items.last() { v["pagination"] = json!({"cursor": last.to_string()}); }
            axum::Json(v)
        }))
        .route("/github", get(|State(base): State<String>, q: Q| async move {
            let p: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
            let mut h = HeaderMap::new();
            if p < 3 {
                h.insert("link", format!("<{base}/github?page={}>; rel=\"next\", <{base}/github?page=3>; rel=\"last\"", p + 1).parse().unwrap());
            }
            (h, axum::Json(json!([p])))
        }))
        .route("/github-evil", get(|| async {
            let mut h = HeaderMap::new();
            h.insert("link", "<https://evil.example/steal>; rel=\"next\"".parse().unwrap());
            (h, axum::Json(json!([1])))
        }))
        .route("/limited", get(|State(hits): State<Arc<Hits>>| async move {
            if hits.n.fetch_add(1, Ordering::SeqCst) == 0 {
                (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "{\"error\":{\"code\":\"rate_limited\",\"message\":\"slow down\"}}").into_response()
            } else {
                axum::Json(json!({"ok": true})).into_response()
            }
        }).with_state(hits.clone()))
        .route("/flaky-post", post(|State(hits): State<Arc<Hits>>| async move {
            hits.n.fetch_add(1, Ordering::SeqCst);
            (StatusCode::SERVICE_UNAVAILABLE, "{\"code\":\"\",\"message\":\"try later\"}")
        }).with_state(hits.clone()))
        .route("/garbage-then-ok", get(|State(hits): State<Arc<Hits>>| async move {
            if hits.n.fetch_add(1, Ordering::SeqCst) < 2 { "{\"items\": [tr".into_response() } else { axum::Json(json!({"items": []})).into_response() }
        }).with_state(hits.clone()))
        .route("/denied", get(|| async {
            (StatusCode::FORBIDDEN, [("x-request-id", "req-42")], "{\"error\":{\"code\":\"forbidden\",\"message\":\"Not authorized: token lacks scope\"}}")
        }))
        .route("/redirect", get(|| async { (StatusCode::FOUND, [("location", "https://evil.example/")]) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = app.with_state(base.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, hits)
}

fn http() -> Http {
    Http::new(HttpConfig {
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            deadline: Duration::from_secs(10),
        },
        poll_interval: Duration::from_millis(10),
        poll_max_interval: Duration::from_millis(20),
        poll_deadline: Duration::from_millis(200),
        max_in_flight: 4,
    })
    .unwrap()
}

fn ep(base: &str) -> Endpoint {
    Endpoint::new(Provider::Vercel, base, SecretString::from(TOKEN), vec![]).unwrap()
}

#[tokio::test]
async fn every_pagination_style_collects_every_item_in_order() {
    let (base, _) = server().await;
    let h = http();
    let e = ep(&base);
    let all = |v: Vec<Value>| {
        v.into_iter()
            .map(|x| x.as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let g = h
        .list(
            &e,
            Call::get("/google", "list"),
            "/items",
            Paging::GoogleToken,
        )
        .await
        .unwrap();
    assert_eq!(all(g), [0, 1, 2, 3, 4, 5]);
    let c = h
        .list(
            &e,
            Call::get("/cloudflare", "list"),
            "/result",
            Paging::CloudflarePage { per_page: 1 },
        )
        .await
        .unwrap();
    assert_eq!(all(c), [1, 2, 3]);
    let v = h
        .list(
            &e,
            Call::get("/vercel", "list"),
            "/projects",
            Paging::VercelNext("from"),
        )
        .await
        .unwrap();
    assert_eq!(all(v), [0, 1, 2]);
    let n = h
        .list(
            &e,
            Call::get("/neon", "list"),
            "/projects",
            Paging::NeonCursor { limit: 2 },
        )
        .await
        .unwrap();
    assert_eq!(all(n), [0, 1, 2]);
    let gh = h
        .list(&e, Call::get("/github", "list"), "", Paging::GithubLink)
        .await
        .unwrap();
    assert_eq!(all(gh), [1, 2, 3]);
}

#[tokio::test]
async fn a_next_link_to_another_host_is_refused() {
    let (base, _) = server().await;
    let err = http()
        .list(
            &ep(&base),
            Call::get("/github-evil", "list repos"),
            "",
            Paging::GithubLink,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("refusing to follow a link to another host"),
        "{err}"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (base, hits) = server().await;
    let t = Instant::now();
    let v = http()
        .json(&ep(&base), &Call::get("/limited", "read"))
        .await
        .unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(hits.n.load(Ordering::SeqCst), 2);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "waited only {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_post_that_may_have_acted_is_not_sent_twice() {
    let (base, hits) = server().await;
    let err = http()
        .send(
            &ep(&base),
            &Call::new(Method::POST, "/flaky-post", "create thing"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        hits.n.load(Ordering::SeqCst),
        1,
        "a 503 on a POST is not retried blindly"
    );
    assert_eq!(err.kind, ErrorKind::Transient);
    assert!(err.to_string().contains("try later"), "{err}");
}

#[tokio::test]
async fn garbage_json_on_a_read_is_retried() {
    let (base, hits) = server().await;
    let v = http()
        .json(&ep(&base), &Call::get("/garbage-then-ok", "read"))
        .await
        .unwrap();
    assert_eq!(v["items"], json!([]));
    assert_eq!(hits.n.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn errors_carry_the_message_and_request_id_but_never_the_token() {
    let (base, _) = server().await;
    let err = http()
        .send(&ep(&base), &Call::get("/denied", "read project notes-web"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth);
    let text = err.to_string();
    assert_eq!(
        text,
        "vercel: read project notes-web failed (not authorized, HTTP 403): Not authorized: token lacks scope [forbidden] (request id req-42)"
    );
    assert!(!format!("{text} {err:?}").contains(TOKEN));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (base, _) = server().await;
    let err = http()
        .send(&ep(&base), &Call::get("/redirect", "read"))
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(302));
    assert_eq!(err.kind, ErrorKind::Permanent);
}

#[tokio::test]
async fn polling_gives_up_at_the_deadline_with_a_clear_message() {
    let h = http();
    let polls = AtomicUsize::new(0);
    let t = Instant::now();
    let err = h
        .poll(Provider::Neon, "wait for operation op-1", || async {
            polls.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<()>, _>(None)
        })
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(polls.load(Ordering::SeqCst) >= 3);
    assert!(err.to_string().contains("still not finished"), "{err}");
    assert_eq!(err.kind, ErrorKind::Transient);
}
