//! `telbase login`, `whoami` and `logout` (the real binary) against `telbase serve` with the
//! control plane on, end to end: the admin bootstrap `telbase team create`, the device
//! flow approved through `/api/v1/device/approve`, the 0600 credentials file, an automatic
//! refresh once the access token has expired, and a logout that revokes on the server.
//! (The OS keyring variant is tests/control_keyring.rs.)

mod common;
#[path = "common/login_world.rs"]
mod login_world;
#[path = "common/serve_app.rs"]
mod serve_app;

use std::ffi::OsString;
use std::process::Command;

use serde_json::Value;
use telbase::control::secrets::ServerKey;
use telbase::serve::{self, ControlConfig, EdgeConfig};

use common::{app_key, emu};
use login_world::{BIN, LoginWorld, audit_log};
use serve_app::server_config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_against_telbase_serve() {
    let Some(world) = LoginWorld::start().await else {
        return;
    };
    let bin = BIN;
    let again = Command::new(bin)
        .args(["team", "create", "acme", "--owner", "x@example.com"])
        .env("TELBASE_DATABASE_URL", &world.db)
        .output()
        .unwrap();
    assert!(!again.status.success(), "a second team of the same name");

    // The file, chosen explicitly: this test must never reach a developer's own keyring.
    let config_home = world.dir.path().join("config");
    let env = |home: &std::path::Path| {
        vec![
            ("XDG_CONFIG_HOME", OsString::from(home)),
            ("TELBASE_CREDENTIALS_STORE", OsString::from("file")),
        ]
    };
    let shown = world.login(&env(&config_home)).await;
    assert!(
        shown
            .iter()
            .any(|l| l.contains("kept in") && l.contains("credentials.json (mode 0600)")),
        "{shown:?}"
    );

    // The tokens are in a 0600 file, not the main config.
    let file = config_home.join("telbase/credentials.json");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let first_refresh = creds["refresh_token"].as_str().unwrap().to_owned();
    assert!(
        creds["access_token"]
            .as_str()
            .unwrap()
            .starts_with("tlb_at_")
    );

    let whoami = |home: &std::path::Path| {
        Command::new(bin)
            .arg("whoami")
            .envs(env(home))
            .output()
            .unwrap()
    };
    let out = whoami(&config_home);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("<ada@example.com>") && text.contains("acme (owner)"),
        "{text}"
    );

    // Pretend the access token expired: whoami refreshes it and rotates the refresh token.
    let mut expired = creds.clone();
    expired["expires_at"] = 0.into();
    std::fs::write(&file, expired.to_string()).unwrap();
    let out = whoami(&config_home);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds2: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_ne!(creds2["refresh_token"].as_str().unwrap(), first_refresh);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A damaged file is named in the error, and the error quotes none of its content.
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, r#"{"server": 5, "access_token": "tlb_at_leak"}"#).unwrap();
    let out = whoami(&config_home);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("credentials.json: unreadable"), "{err}");
    assert!(!err.contains("tlb_at_leak"), "{err}");
    std::fs::write(&file, good).unwrap();

    // Logout revokes on the server and deletes the file.
    let access = creds2["access_token"].as_str().unwrap().to_owned();
    let out = Command::new(bin)
        .arg("logout")
        .envs(env(&config_home))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Logged out"));
    assert!(!file.exists());
    assert!(!world.accepts(&access).await);
    let out = whoami(&config_home);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("telbase login"));
    let db = world.db.clone();
    world.running.stop().await;

    // Everything that happened is in the security log, in order, and the chain holds.
    let mut store = telbase::store::open(&telbase::store::Location::Sqlite(db)).unwrap();
    let records =
        telbase::audit::AuditLog::list(&mut store, &telbase::audit::AuditFilter::default())
            .unwrap();
    let actions: Vec<&str> = records.iter().rev().map(|r| r.action.as_str()).collect();
    for wanted in ["auth.device_approve", "auth.device_login", "auth.logout"] {
        assert!(actions.contains(&wanted), "{wanted} missing: {actions:?}");
    }
    let approve = records
        .iter()
        .find(|r| r.action == "auth.device_approve")
        .unwrap();
    assert_eq!(approve.source.as_deref(), Some("127.0.0.1"));
    assert_eq!(approve.actor_kind.as_str(), "user");
    assert_eq!(audit_log().verify(&mut store).unwrap().finding, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_there_is_no_api() {
    let Some((pem, _)) = app_key() else {
        return;
    };
    let emu = emu::start(telbase::emulator::Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start(server_config(&emu, dir.path(), pem))
        .await
        .unwrap();
    let r = reqwest::get(format!("http://{}/api/v1/openapi.json", running.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    running.stop().await;
}

/// Every control-plane action must be recorded, so a server asked for the control plane
/// without the security log's key refuses to start, saying which key, rather than answer
/// every request 503.
#[test]
fn the_control_plane_does_not_start_without_the_audit_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(["serve", "--control-plane", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env(
            "TELBASE_DATABASE_URL",
            format!("sqlite:{}", dir.path().join("db").display()),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TELBASE_AUDIT_KEY_FILE"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

/// Behind a trusted proxy, the control plane names the client (as abuse protection resolves
/// `X-Forwarded-For`), not the proxy, in its security events; from an untrusted peer the
/// header is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_events_name_the_client_behind_a_trusted_proxy() {
    let Some((pem, _)) = app_key() else {
        return;
    };
    let emu = emu::start(telbase::emulator::Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("telbase.db");
    let config = server_config(&emu, dir.path(), pem);
    let abuse = telbase::abuse::AbuseConfig::from_vars(|k| {
        (k == "TELBASE_TRUSTED_PROXIES").then(|| "127.0.0.1/32".to_owned())
    })
    .unwrap();
    let running = serve::start_with(
        config,
        EdgeConfig {
            control: Some(ControlConfig {
                key: ServerKey::generate(),
            }),
            audit: Some(audit_log()),
            abuse,
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/oauth/revoke"))
        .header("x-forwarded-for", "198.51.100.23, 203.0.113.9")
        .form(&[("token", "tlb_rt_not-a-live-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    running.stop().await;
    let mut store = telbase::store::open(&telbase::store::Location::Sqlite(db)).unwrap();
    let records =
        telbase::audit::AuditLog::list(&mut store, &telbase::audit::AuditFilter::default())
            .unwrap();
    let logout = records
        .iter()
        .find(|r| r.action == "auth.logout")
        .unwrap_or_else(|| panic!("{records:#?}"));
    // The right-most hop the trusted proxy (127.0.0.1) appended.
    assert_eq!(logout.source.as_deref(), Some("203.0.113.9"));
}

/// A token endpoint that is busy or failing while the person approves (503 in the API's
/// shape, 429 with `Retry-After`, a 500 with an HTML page) does not
/// throw the login away: the CLI asks again at the next interval and gets its tokens. A
/// server that keeps failing ends the login with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_polling_rides_out_a_failing_server_and_gives_up_on_a_broken_one() {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn serve(answers: Vec<(u16, &'static str)>) -> (String, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let count = polls.clone();
        let answers = Arc::new(answers);
        let app = axum::Router::new()
            .route(
                "/api/v1/oauth/device_authorization",
                axum::routing::post(|| async {
                    axum::Json(serde_json::json!({
                        "device_code": "dc", "user_code": "ABCD-EFGH",
                        "verification_uri": "http://x/device", "expires_in": 60, "interval": 1
                    }))
                }),
            )
            .route(
                "/api/v1/oauth/token",
                axum::routing::post(move || {
                    let (count, answers) = (count.clone(), answers.clone());
                    async move {
                        let i = count.fetch_add(1, Ordering::SeqCst);
                        let (status, body) =
                            answers.get(i).copied().unwrap_or(*answers.last().unwrap());
                        let mut headers = HeaderMap::new();
                        if status == 429 {
                            headers.insert(header::RETRY_AFTER, "1".parse().unwrap());
                        }
                        let r: Response =
                            (StatusCode::from_u16(status).unwrap(), headers, body).into_response();
                        r
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), polls)
    }
    let client = reqwest::Client::new();
    const OK: &str = r#"{"access_token":"tlb_at_x","refresh_token":"tlb_rt_x","expires_in":3600,"token_type":"Bearer"}"#;
    let (base, polls) = serve(vec![
        (
            503,
            r#"{"error":{"code":"audit_unavailable","message":"later"}}"#,
        ),
        (429, r#"{"error":{"code":"rate_limited","message":"slow"}}"#),
        (500, "<html>oops</html>"),
        (400, r#"{"error":"authorization_pending"}"#),
        (200, OK),
    ])
    .await;
    let c = telbase::control::cli::device_login(&client, &base, |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(c.access_token, "tlb_at_x");
    assert_eq!(polls.load(Ordering::SeqCst), 5);

    let (base, polls) = serve(vec![(503, "{}")]).await;
    let err = telbase::control::cli::device_login(&client, &base, |_, _, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("kept failing") && err.contains("503"), "{err}");
    assert_eq!(
        polls.load(Ordering::SeqCst),
        6,
        "five retries after the first"
    );
}
