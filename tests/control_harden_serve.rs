//! Abuse protection on `/api/v1` as `telbase serve` wires it: bad bearer tokens from one
//! address lock it (429 + Retry-After), and the lock's start lands in the audit log as a
//! `failure_burst` anomaly, alongside the `auth.failure` records of the failures.

mod common;
#[path = "common/serve_app.rs"]
mod serve_app;

use telbase::control::secrets::ServerKey;
use telbase::serve::{self, ControlConfig, EdgeConfig};

use common::{app_key, emu};
use serve_app::server_config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockout_on_the_api_is_in_the_audit_log() {
    let Some((pem, _)) = app_key() else {
        return;
    };
    let emu = emu::start(telbase::emulator::Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("telbase.db");
    let config = server_config(&emu, dir.path(), pem);
    let running = serve::start_with(
        config,
        EdgeConfig {
            control: Some(ControlConfig {
                key: ServerKey::generate(),
            }),
            audit: Some(telbase::audit::AuditLog::new(
                telbase::audit::AuditKeys::from_secret(&[3; 32]),
            )),
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    let bad = format!("tlb_pat_{}", "0".repeat(43));
    let mut statuses = Vec::new();
    for _ in 0..11 {
        let r = http
            .get(format!("{base}/api/v1/me"))
            .bearer_auth(&bad)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[..10], [401; 10]);
    assert_eq!(statuses[10], 429);
    running.stop().await;
    let mut store = telbase::store::open(&telbase::store::Location::Sqlite(db)).unwrap();
    let records =
        telbase::audit::AuditLog::list(&mut store, &telbase::audit::AuditFilter::default())
            .unwrap();
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert!(
        actions.iter().any(|a| a.contains("failure_burst")),
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "auth.failure").count(),
        10,
        "{actions:?}"
    );
}
