//! The audit log inside `telbase serve`: a webhook delivery with a bad signature is recorded as
//! `auth.webhook_signature_failed` with the sender's address (a good one is not), the leader's
//! scheduled prune applies the retention and records itself, and the chain still verifies.

mod common;

#[path = "common/serve_app.rs"]
mod serve_app;

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use telbase::audit::{Action, Actor, AuditEvent, AuditFilter, AuditKeys, AuditLog, Outcome};
use telbase::serve::{self, EdgeConfig};

use common::{app_key, emu};
use serve_app::{post, post_signed, server_config};

fn log() -> AuditLog {
    AuditLog::new(AuditKeys::from_secret(&[3; 32]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_recorded_and_the_leader_prunes() {
    let Some((pem, _)) = app_key() else {
        return;
    };
    let emu = emu::start(telbase::emulator::Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = server_config(&emu, dir.path(), pem);
    // Old records for the retention to find.
    {
        let mut s = telbase::store::open(&config.store).unwrap();
        for i in 0..3 {
            log()
                .record(
                    &mut s,
                    &AuditEvent::new(
                        Actor::user("u1", "User 1"),
                        Action::AUTH_LOGIN,
                        Outcome::Success,
                    )
                    .at(Utc::now() - chrono::Duration::days(100 + i)),
                )
                .unwrap();
        }
    }
    let location = config.store.clone();
    let running = serve::start_with(
        config,
        EdgeConfig {
            audit: Some(log()),
            audit_prune_every: Some(Duration::from_millis(200)),
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let body = json!({"zen": "hello"});
    let r = post_signed(&client, &base, "ping", "d-forged", &body, "not-the-secret").await;
    assert_eq!(r.status(), 401);
    // Signed right (its body is not a ping GitHub would send, so 400): not a signature failure.
    let r = post(&client, &base, "ping", "d-good", &body).await;
    assert_ne!(r.status(), 401);

    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let records = tokio::task::spawn_blocking({
            let location = location.clone();
            move || {
                let mut s = telbase::store::open(&location).unwrap();
                AuditLog::list(&mut s, &AuditFilter::default()).unwrap()
            }
        })
        .await
        .unwrap();
        let signature = records
            .iter()
            .any(|r| r.action == "auth.webhook_signature_failed");
        let pruned = records.iter().any(|r| r.action == "admin.audit_pruned");
        if signature && pruned {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "not recorded in time: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failed: Vec<_> = records
        .iter()
        .filter(|r| r.action == "auth.webhook_signature_failed")
        .collect();
    assert_eq!(failed.len(), 1, "only the forged delivery: {failed:#?}");
    let f = failed[0];
    assert_eq!(f.source.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        (f.actor_kind.as_str(), f.outcome.as_str()),
        ("anonymous", "failure")
    );
    assert_eq!(
        (f.target_type.as_deref(), f.target_id.as_deref()),
        (Some("webhook"), Some("github"))
    );
    assert!(f.details.contains("\"event\":\"ping\""), "{}", f.details);
    assert!(!f.details.contains("not-the-secret"), "{}", f.details);
    // The three old logins went; the prune recorded itself; the rest verifies.
    assert!(
        !records.iter().any(|r| r.action == "auth.login"),
        "{records:#?}"
    );
    running.stop().await;
    let mut s = telbase::store::open(&location).unwrap();
    let v = log().verify(&mut s).unwrap();
    assert_eq!(v.finding, None);
    assert!(v.checkpoints >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_must_be_audited_fails_without_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        telbase::store::open(&telbase::store::Location::Sqlite(dir.path().join("t.db"))).unwrap();
    let queue = std::sync::Arc::new(serve::queue::StoreQueue::new(store));
    let event = || {
        AuditEvent::new(
            Actor::user("u1", "User 1"),
            Action::CONFIG_ENV_SET,
            Outcome::Success,
        )
    };
    let without = std::sync::Arc::new(serve::audit::ServerAudit {
        log: AuditLog::without_key(),
        queue: queue.clone(),
    });
    let resp = without.must_record(event()).await.unwrap_err();
    assert_eq!(resp.status(), 503);
    let with = std::sync::Arc::new(serve::audit::ServerAudit { log: log(), queue });
    assert_eq!(with.must_record(event()).await.unwrap(), 1);
}

/// Abuse protection's anomalies reach the security log: enough forged deliveries from one
/// address start a lock, which is recorded as a failure burst with that address, and the
/// refusals after it are not recorded one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockout_is_flagged_in_the_security_log() {
    let Some((pem, _)) = app_key() else {
        return;
    };
    let emu = emu::start(telbase::emulator::Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = server_config(&emu, dir.path(), pem);
    let location = config.store.clone();
    let running = serve::start_with(
        config,
        EdgeConfig {
            audit: Some(log()),
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let body = json!({"zen": "hello"});
    let mut statuses = Vec::new();
    for i in 0..30 {
        let id = format!("d-forged-{i}");
        let r = post_signed(&client, &base, "ping", &id, &body, "not-the-secret").await;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "never locked: {statuses:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let records = tokio::task::spawn_blocking({
            let location = location.clone();
            move || {
                let mut s = telbase::store::open(&location).unwrap();
                AuditLog::list(&mut s, &AuditFilter::default()).unwrap()
            }
        })
        .await
        .unwrap();
        if records.iter().any(|r| r.action == "anomaly.failure_burst") {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "no anomaly recorded: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let burst = records
        .iter()
        .find(|r| r.action == "anomaly.failure_burst")
        .unwrap();
    assert_eq!(burst.source.as_deref(), Some("127.0.0.1"));
    assert_eq!(burst.actor_kind.as_str(), "system");
    let failures = records
        .iter()
        .filter(|r| r.action == "auth.webhook_signature_failed")
        .count();
    let unlocked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        failures <= unlocked,
        "refusals while locked were recorded one by one: {failures} records for {unlocked} unlocked refusals"
    );
    running.stop().await;
    let mut s = telbase::store::open(&location).unwrap();
    assert_eq!(log().verify(&mut s).unwrap().finding, None);
}
