//! Helpers for the `telbase serve` tests (included with `#[path]` by those test files
//! only): the server's settings against the emulator, real
//! webhook payloads retargeted at the test repository, signing, and waiting for the queue.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::Value;
use telbase::github::webhook;
use telbase::providers::Credentials;
use telbase::serve::{self, ServeConfig};
use telbase::store::Location;

use crate::common::emu;

pub const SECRET: &str = "webhook-secret-for-tests";

/// Everything off but the workers; the caller turns on what it tests.
pub fn server_config(
    emu: &telbase::emulator::Handle,
    dir: &std::path::Path,
    pem: &str,
) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: Location::Sqlite(dir.join("telbase.db")),
        app: telbase::github::app::AppConfig {
            app_id: 42,
            private_key: SecretString::from(pem.to_owned()),
            base_url: format!("{}/github", emu.url()),
        },
        webhook_secrets: vec![SecretString::from(SECRET.to_owned())],
        credentials: Credentials {
            emulator: Some(emu.url()),
            ..Credentials::default()
        },
        http: emu::http_config(),
        opener: Arc::new(telbase::apply::NoIdentity),
        workers: 2,
        public_url: None,
        key_rotation: None,
        lease: Duration::from_secs(60),
        poll: None,
        drift_tick: None,
        sweep: None,
        watch: None,
    }
}

/// A real webhook payload from `../shared`, or `None` (skipped with a reason outside CI).
pub fn payload(name: &str) -> Option<Value> {
    let p = crate::common::root()
        .join("../shared/provider-apis/github/webhooks")
        .join(format!("{name}.payload.json"));
    if !p.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} missing: CI must provide ../shared",
            p.display()
        );
        eprintln!("skipping: {} not found", p.display());
        return None;
    }
    Some(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
}

/// Point a real payload at `acme/notes` and installation 7.
pub fn retarget(mut v: Value) -> Value {
    v["repository"]["full_name"] = "acme/notes".into();
    v["repository"]["id"] = 500_000.into();
    v["installation"]["id"] = 7.into();
    if v.get("pull_request").is_some() {
        v["pull_request"]["head"]["repo"]["id"] = 500_000.into();
        v["pull_request"]["head"]["repo"]["full_name"] = "acme/notes".into();
    }
    v
}

/// A push of `sha` to `main`, from GitHub's real payload.
pub fn push_main(sha: &str) -> Option<Value> {
    let mut v = retarget(payload("push.create-default-branch.with-installation")?);
    v["ref"] = "refs/heads/main".into();
    v["after"] = sha.into();
    Some(v)
}

/// Post `body` as GitHub does, signed with the tests' webhook secret.
pub async fn post(
    client: &reqwest::Client,
    base: &str,
    event: &str,
    delivery: &str,
    body: &Value,
) -> reqwest::Response {
    post_signed(client, base, event, delivery, body, SECRET).await
}

/// [`post`], signed with `secret` (a forged or rotated one).
pub async fn post_signed(
    client: &reqwest::Client,
    base: &str,
    event: &str,
    delivery: &str,
    body: &Value,
    secret: &str,
) -> reqwest::Response {
    let bytes = serde_json::to_vec(body).unwrap();
    let sig = webhook::sign(&SecretString::from(secret.to_owned()), &bytes);
    client
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sig)
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// Wait until no job is queued or running; every job, oldest first.
pub async fn settle(running: &serve::Running) -> Vec<telbase::store::sqlite::JobRow> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let jobs = running.queue.with(|s| s.jobs()).unwrap();
        if jobs
            .iter()
            .all(|j| j.state != "queued" && j.state != "running")
        {
            return jobs;
        }
        assert!(Instant::now() < deadline, "jobs did not finish: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (for a server that must know its own public URL before it starts).
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
