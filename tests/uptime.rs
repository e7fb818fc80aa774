//! Uptime probes, signed notifications and provider-call metrics of `telbase serve`, in
//! process. A local target server flips between 200 and 503: the `telbase_uptime_up` gauge
//! goes 1 → 0 after two failed probes and back, and a local receiver gets `down` then `up`
//! notifications whose signatures verify with the secret (a receiver error is retried with
//! the same delivery id). Against the emulator and the fake GitHub: a push reconciles
//! production, the deployed Vercel URL becomes an uptime target, `/metrics` counts provider
//! calls per provider; a push of an invalid file sends `reconcile_failed`.

mod common;
#[path = "common/serve_app.rs"]
mod serve_app;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;
use telbase::apply::NoIdentity;
use telbase::emulator::Config;
use telbase::github::webhook;
use telbase::providers::Credentials;
use telbase::serve::notify::NotifyConfig;
use telbase::serve::uptime::{State, UptimeConfig};
use telbase::serve::{self, EdgeConfig, ServeConfig};
use telbase::store::Location;

use common::{app_key, emu};
use serve_app::payload;

const NOTIFY_SECRET: &str = "notify-secret-for-tests";
const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";
const MAIN_SHA: &str = "1111111111111111111111111111111111111111";
const BAD_SHA: &str = "3333333333333333333333333333333333333333";

/// What the receiver got: headers and the raw body.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A notification receiver on loopback. It answers 503 to the first `fail_first`
/// deliveries, then 200.
async fn receiver(fail_first: usize) -> (String, Received) {
    let got: Received = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let g = g.clone();
            async move {
                let mut v = g.lock().unwrap();
                v.push((headers, body));
                if v.len() <= fail_first {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, got)
}

/// A target app on loopback answering with whatever status `status` holds.
async fn target(status: Arc<AtomicU16>) -> String {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let s = status.clone();
            async move { StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap() }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}

/// The receiver's check, as docs/serve.md shows it: HMAC-SHA256 of the raw body, compared
/// in constant time.
fn verify(headers: &HeaderMap, body: &[u8]) -> Value {
    let sig = headers
        .get("x-telbase-signature-256")
        .and_then(|v| v.to_str().ok())
        .expect("a signature header");
    let hex = sig.strip_prefix("sha256=").expect("sha256= prefix");
    let tag: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(NOTIFY_SECRET.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&tag)
        .expect("the signature verifies with the secret");
    // A forged body does not verify.
    let mut forged = Hmac::<Sha256>::new_from_slice(NOTIFY_SECRET.as_bytes()).unwrap();
    forged.update(&[body, b" "].concat());
    assert!(forged.verify_slice(&tag).is_err());
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        headers.get("x-telbase-event").unwrap().to_str().unwrap(),
        v["event"].as_str().unwrap()
    );
    assert_eq!(
        headers.get("x-telbase-delivery").unwrap().to_str().unwrap(),
        v["delivery"].as_str().unwrap()
    );
    let ts = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - ts.with_timezone(&chrono::Utc)).num_seconds() < 60);
    v
}

/// Wait for `cond` (polled every 20 ms) or fail after `secs`.
async fn until<T>(secs: u64, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the one sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn server_config(
    dir: &std::path::Path,
    pem: &str,
    github: String,
    emulator: Option<String>,
) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: Location::Sqlite(dir.join("telbase.db")),
        app: telbase::github::app::AppConfig {
            app_id: 42,
            private_key: SecretString::from(pem.to_owned()),
            base_url: github,
        },
        webhook_secrets: vec![SecretString::from(WEBHOOK_SECRET.to_owned())],
        credentials: Credentials {
            emulator,
            ..Credentials::default()
        },
        http: emu::http_config(),
        opener: Arc::new(NoIdentity),
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

fn notify_config(url: String) -> NotifyConfig {
    NotifyConfig {
        attempts: 4,
        backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        ..NotifyConfig::new(url, SecretString::from(NOTIFY_SECRET.to_owned()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_fails_twice_is_down_notified_signed_and_recovers() {
    let Some((pem, _)) = app_key() else {
        return;
    };
    let status = Arc::new(AtomicU16::new(200));
    let app_url = target(status.clone()).await;
    // The first delivery is refused with 503: it must come again, with the same id.
    let (hook, got) = receiver(1).await;
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start_with(
        server_config(dir.path(), pem, "http://127.0.0.1:9".into(), None),
        EdgeConfig {
            uptime: UptimeConfig {
                every: Some(Duration::from_millis(100)),
                timeout: Duration::from_secs(2),
            },
            notify: Some(notify_config(hook)),
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    running.uptime.set_target(
        "acme/notes",
        "production",
        "vercel/project/notes",
        Some(&app_url),
    );
    let gauge = format!(
        "telbase_uptime_up{{repository=\"acme/notes\",environment=\"production\",url=\"{app_url}\"}}"
    );

    // Up: the gauge is 1, and a first success is no news.
    let mut text = String::new();
    for _ in 0..200 {
        text = metrics(&base).await;
        if sample(&text, &gauge) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sample(&text, &gauge), Some(1.0), "{text}");
    assert!(sample(&text, "telbase_uptime_probes_total{result=\"up\"}").unwrap() >= 1.0);
    assert!(text.contains("telbase_uptime_probe_duration_seconds_count"));
    assert!(got.lock().unwrap().is_empty());

    // 503: down after two failed probes, not one.
    status.store(503, Ordering::SeqCst);
    let snap = until(10, "the URL to go down", || {
        let s = running.uptime.snapshot();
        (s[0].state == State::Down).then_some(s)
    })
    .await;
    assert!(snap[0].failures >= 2, "{snap:?}");
    assert_eq!(snap[0].last_result.as_deref(), Some("HTTP 503"));
    assert!(snap[0].last_change.is_some() && snap[0].last_check.is_some());
    let text = metrics(&base).await;
    assert_eq!(sample(&text, &gauge), Some(0.0), "{text}");
    assert!(sample(&text, "telbase_uptime_probes_total{result=\"http_error\"}").unwrap() >= 2.0);

    // The `down` notification: refused once by the receiver, delivered on the retry.
    let down = until(10, "the down notification to be retried", || {
        let g = got.lock().unwrap();
        (g.len() >= 2).then(|| g[..2].to_vec())
    })
    .await;
    assert_eq!(down[0].1, down[1].1, "a retry sends the same body");
    assert_eq!(
        down[0].0.get("x-telbase-delivery"),
        down[1].0.get("x-telbase-delivery")
    );
    let v = verify(&down[1].0, &down[1].1);
    assert_eq!(v["event"], "down");
    assert_eq!(v["status"], "down");
    assert_eq!(v["repository"], "acme/notes");
    assert_eq!(v["environment"], "production");
    assert_eq!(v["url"], app_url.as_str());
    assert!(
        v["description"].as_str().unwrap().contains("HTTP 503"),
        "{v}"
    );

    // Back to 200: up after one success, and an `up` notification with a new delivery id.
    status.store(200, Ordering::SeqCst);
    let up = until(10, "the up notification", || {
        let g = got.lock().unwrap();
        (g.len() >= 3).then(|| g[2].clone())
    })
    .await;
    let u = verify(&up.0, &up.1);
    assert_eq!(u["event"], "up");
    assert_ne!(u["delivery"], v["delivery"]);
    assert_eq!(running.uptime.snapshot()[0].state, State::Up);
    let text = metrics(&base).await;
    assert_eq!(sample(&text, &gauge), Some(1.0), "{text}");
    // Still up: no more notifications.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got.lock().unwrap().len(), 3);

    // A URL no longer deployed is no longer probed or reported.
    running
        .uptime
        .set_target("acme/notes", "production", "vercel/project/notes", None);
    assert!(running.uptime.snapshot().is_empty());
    assert!(!metrics(&base).await.contains("telbase_uptime_up{"));
    running.stop().await;
}

async fn push(client: &reqwest::Client, base: &str, template: &Value, delivery: &str, sha: &str) {
    let mut v = template.clone();
    v["repository"]["full_name"] = "acme/notes".into();
    v["repository"]["id"] = 500_000.into();
    v["installation"]["id"] = 7.into();
    v["ref"] = "refs/heads/main".into();
    v["after"] = sha.into();
    let bytes = serde_json::to_vec(&v).unwrap();
    let sig = webhook::sign(&SecretString::from(WEBHOOK_SECRET.to_owned()), &bytes);
    let r = client
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sig)
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_feed_uptime_targets_provider_metrics_and_failure_notifications() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let Some(template) = payload("push.create-default-branch.with-installation") else {
        return;
    };
    let emu = emu::start(Config::default()).await;
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": ["acme/notes"]}],
        "commits": [
            {"repo": "acme/notes", "sha": MAIN_SHA, "files": {"telbase.yaml": emu::quickstart("notes")}},
            {"repo": "acme/notes", "sha": BAD_SHA, "files": {"telbase.yaml": "version: 1\nproject: notes\nnot_a_key: true\n"}},
        ],
    }))
    .unwrap();
    let (hook, got) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    // Probing stays off: the emulator's deployment URLs are not on this machine.
    let running = serve::start_with(
        server_config(
            dir.path(),
            pem,
            format!("{}/github", emu.url()),
            Some(emu.url()),
        ),
        EdgeConfig {
            notify: Some(notify_config(hook)),
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();

    push(&client, &base, &template, "d-good", MAIN_SHA).await;
    let targets = until(60, "the deployed URL to become a target", || {
        let s = running.uptime.snapshot();
        (!s.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0].repository, "acme/notes");
    assert_eq!(targets[0].environment, "production");
    assert!(
        targets[0].url.starts_with("https://") && targets[0].url.ends_with(".vercel.app"),
        "{targets:?}"
    );
    assert_eq!(targets[0].state, State::Unknown);

    // Provider calls, per provider, from the HTTP layer's hook.
    let text = metrics(&base).await;
    for provider in ["vercel", "neon"] {
        let reads = sample(
            &text,
            &format!(
                "telbase_provider_calls_total{{provider=\"{provider}\",method=\"read\",result=\"ok\"}}"
            ),
        );
        let writes = sample(
            &text,
            &format!(
                "telbase_provider_calls_total{{provider=\"{provider}\",method=\"write\",result=\"ok\"}}"
            ),
        );
        assert!(reads.unwrap_or(0.0) >= 1.0, "{provider} reads:\n{text}");
        assert!(writes.unwrap_or(0.0) >= 1.0, "{provider} writes:\n{text}");
        assert!(
            text.contains(&format!(
                "telbase_provider_call_duration_seconds_count{{provider=\"{provider}\"}}"
            )),
            "{text}"
        );
    }
    // Labels are provider names and outcome words only: no URL, path or token.
    for line in text.lines().filter(|l| l.starts_with("telbase_provider_")) {
        assert!(!line.contains("http") || line.contains("http_"), "{line}");
        assert!(!line.contains('/'), "{line}");
    }
    assert!(
        got.lock().unwrap().is_empty(),
        "a good reconcile notifies nothing"
    );

    // An invalid file: the reconcile fails for good and says so.
    push(&client, &base, &template, "d-bad", BAD_SHA).await;
    let (headers, body) = until(60, "the reconcile_failed notification", || {
        got.lock().unwrap().first().cloned()
    })
    .await;
    let v = verify(&headers, &body);
    assert_eq!(v["event"], "reconcile_failed");
    assert_eq!(v["status"], "error");
    assert_eq!(v["repository"], "acme/notes");
    assert_eq!(v["environment"], "production");
    assert_eq!(v["commit"], BAD_SHA);
    assert!(v["run_id"].as_i64().unwrap() >= 1);
    assert!(
        v["description"]
            .as_str()
            .unwrap()
            .contains("telbase.yaml is invalid"),
        "{v}"
    );
    assert!(v.get("url").is_none());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_fails_the_reconcile_with_a_notification_and_error_metrics() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let Some(template) = payload("push.create-default-branch.with-installation") else {
        return;
    };
    // Every provider answers 5xx (the fake GitHub is not affected).
    let emu = emu::start(Config {
        faults: telbase::emulator::Faults {
            rate_5xx: 1.0,
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": ["acme/notes"]}],
        "commits": [
            {"repo": "acme/notes", "sha": MAIN_SHA, "files": {"telbase.yaml": emu::quickstart("notes")}},
        ],
    }))
    .unwrap();
    let (hook, got) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start_with(
        server_config(
            dir.path(),
            pem,
            format!("{}/github", emu.url()),
            Some(emu.url()),
        ),
        EdgeConfig {
            notify: Some(notify_config(hook)),
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    push(&client, &base, &template, "d-outage", MAIN_SHA).await;
    let (headers, body) = until(60, "the reconcile_failed notification", || {
        got.lock().unwrap().first().cloned()
    })
    .await;
    let v = verify(&headers, &body);
    assert_eq!(v["event"], "reconcile_failed");
    // Retried with backoff, so not final.
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["commit"], MAIN_SHA);
    assert!(
        v["description"].as_str().unwrap().contains("observing"),
        "{v}"
    );
    assert!(running.uptime.snapshot().is_empty(), "nothing was deployed");

    let text = metrics(&base).await;
    let failed = sample(
        &text,
        "telbase_provider_calls_total{provider=\"vercel\",method=\"read\",result=\"http_5xx\"}",
    );
    assert!(failed.unwrap_or(0.0) >= 2.0, "retried 5xx reads:\n{text}");
    assert!(
        sample(&text, "telbase_provider_errors_total{provider=\"vercel\"}").unwrap_or(0.0)
            >= failed.unwrap(),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "telbase_provider_calls_total{provider=\"vercel\",method=\"read\",result=\"ok\"}"
        ),
        None,
        "{text}"
    );
    running.stop().await;
}
