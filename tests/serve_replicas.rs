//! Two `telbase serve` processes (the built binary) on one PostgreSQL database, against the
//! emulator playing GitHub and every provider: a burst of deliveries, with redeliveries
//! posted to both replicas, is recorded once per delivery and each commit is reconciled at
//! most once, both replicas take part, and nothing is left queued. A replica killed with
//! SIGKILL in the middle of a reconcile leaves a lease; the other replica takes the job over
//! when it expires and production converges with nothing created twice.

mod common;
#[path = "common/serve_app.rs"]
mod serve_app;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::SecretString;
use serde_json::{Value, json};
use telbase::emulator::Config;
use telbase::github::webhook;

use common::pg::TestDb;
use common::{app_key, emu};
use serve_app::{SECRET, payload};

const MAIN_SHA: &str = "1111111111111111111111111111111111111111";

/// A real push payload, pointed at `repo` (installation 7) and commit `sha` of `main`.
fn push_to(push: &Value, repo: &str, sha: &str) -> Value {
    let mut v = push.clone();
    v["repository"]["full_name"] = repo.into();
    v["repository"]["id"] = 500_000.into();
    v["installation"]["id"] = 7.into();
    v["ref"] = "refs/heads/main".into();
    v["after"] = sha.into();
    v
}

async fn post(client: &reqwest::Client, base: &str, delivery: &str, body: &Value) -> u16 {
    let bytes = serde_json::to_vec(body).unwrap();
    let sig = webhook::sign(&SecretString::from(SECRET.to_owned()), &bytes);
    client
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sig)
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A `telbase serve` child process, killed when dropped (a failing test leaves none behind).
struct Replica {
    name: &'static str,
    child: Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts replica `name` (its lease owner names start with it) and waits until it is ready.
async fn start_replica(
    name: &'static str,
    dir: &Path,
    emu_url: &str,
    db: &TestDb,
    lease_seconds: u32,
) -> Replica {
    std::fs::write(dir.join("app.pem"), &app_key().unwrap().0).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("HOSTNAME", name)
        .env("GITHUB_APP_ID", "42")
        .env("GITHUB_APP_PRIVATE_KEY_FILE", dir.join("app.pem"))
        .env("GITHUB_WEBHOOK_SECRET_FILE", dir.join("secret"))
        .env("GITHUB_API_URL", format!("{emu_url}/github"))
        .env("TELBASE_EMULATOR", emu_url)
        .env("TELBASE_DATABASE_URL", &db.url)
        .env("TELBASE_WORKERS", "2")
        .env("TELBASE_POLL_SECONDS", "0")
        .env("TELBASE_KEY_ROTATION_DAYS", "0")
        .env("TELBASE_LEASE_SECONDS", lease_seconds.to_string())
        .env_remove("TELBASE_MASTER_KEY_FILE")
        .env_remove("TELBASE_IDENTITY_FILE")
        .env_remove("TELBASE_IDENTITY")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .expect("start telbase serve");
    let replica = Replica { name, child, base };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", replica.base)).send().await
            && r.status() == 200
        {
            return replica;
        }
        assert!(
            Instant::now() < deadline,
            "replica {name} did not become ready: {}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reconciles a replica finished, from its own /metrics.
async fn reconciles(client: &reqwest::Client, replica: &Replica) -> u64 {
    let text = client
        .get(format!("{}/metrics", replica.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("telbase_reconcile_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `SELECT` rows, off the async threads.
async fn rows(db: &TestDb, sql: &str) -> Vec<Vec<Option<String>>> {
    let (url, sql) = (db.url.clone(), sql.to_owned());
    tokio::task::spawn_blocking(move || common::pg::rows_at(&url, &sql))
        .await
        .unwrap()
}

/// Wait until nothing is queued or running; returns every job's (state, intent).
async fn settle(db: &TestDb, want: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs: Vec<(String, Value)> = rows(db, "SELECT state, intent FROM jobs ORDER BY id")
            .await
            .into_iter()
            .map(|r| {
                (
                    r[0].clone().unwrap(),
                    serde_json::from_str(r[1].as_deref().unwrap()).unwrap(),
                )
            })
            .collect();
        if jobs.len() >= want && jobs.iter().all(|(s, _)| s != "queued" && s != "running") {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not finish: {:?}",
            jobs.iter().map(|j| &j.0).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_burst_and_run_each_commit_once() {
    let Some((_, public)) = app_key() else {
        return;
    };
    let Some(push) = payload("push.create-default-branch.with-installation") else {
        return;
    };
    let Some(db) = TestDb::new() else {
        return;
    };
    let repos: Vec<String> = (0..20).map(|i| format!("acme/r{i}")).collect();
    // A little latency per call, so a reconcile takes long enough for both replicas to be
    // busy at once.
    let emu = emu::start(Config {
        capture: true,
        faults: telbase::emulator::Faults {
            latency: Duration::from_millis(5),
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    // Every commit has a telbase.yaml (one project per repository), so each job is a whole
    // reconcile, counted by the replica that ran it.
    let commits: Vec<Value> = (0..200u32)
        .map(|n| {
            json!({
                "repo": repos[(n % 20) as usize],
                "sha": format!("{:040x}", n + 1),
                "files": {"telbase.yaml": emu::quickstart(&format!("r{}", n % 20))},
            })
        })
        .collect();
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": repos}],
        "commits": commits,
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = start_replica("replica-a", dir.path(), &emu.url(), &db, 60).await;
    let b = start_replica("replica-b", dir.path(), &emu.url(), &db, 60).await;
    let client = reqwest::Client::new();

    // 200 distinct pushes (10 commits on main of each of 20 repositories), alternating
    // between the replicas, and 40 of them sent again to the other replica: shuffled.
    let mut sends: Vec<(String, Value, String)> = Vec::new();
    for n in 0..200u32 {
        let body = push_to(&push, &repos[(n % 20) as usize], &format!("{:040x}", n + 1));
        let to = if n % 2 == 0 { &a.base } else { &b.base };
        sends.push((format!("burst-{n}"), body, to.clone()));
    }
    for n in 0..40usize {
        let (id, body, to) = sends[n * 5].clone();
        let other = if to == a.base { &b.base } else { &a.base };
        sends.push((id, body, other.clone()));
    }
    fastrand::Rng::with_seed(11).shuffle(&mut sends);
    let results = futures_util::future::join_all(sends.chunks(12).map(|chunk| {
        let client = client.clone();
        let chunk = chunk.to_vec();
        async move {
            let mut out = Vec::new();
            for (id, body, to) in chunk {
                out.push((id.clone(), post(&client, &to, &id, &body).await));
            }
            out
        }
    }))
    .await;
    // Per delivery id: exactly one replica recorded it (202); a copy sent to the other one
    // was acknowledged as a duplicate (200).
    let mut by_id = BTreeMap::<String, Vec<u16>>::new();
    for (id, status) in results.into_iter().flatten() {
        by_id.entry(id).or_default().push(status);
    }
    assert_eq!(by_id.len(), 200);
    for (id, mut got) in by_id {
        got.sort();
        match got.len() {
            1 => assert_eq!(got, [202], "{id}"),
            _ => assert_eq!(got, [200, 202], "{id}"),
        }
    }

    let jobs = settle(&db, 200).await;
    assert_eq!(jobs.len(), 200, "one job per distinct delivery");
    let deliveries = rows(&db, "SELECT COUNT(*) FROM deliveries").await;
    assert_eq!(deliveries[0][0].as_deref(), Some("200"));
    assert!(
        jobs.iter().all(|(s, _)| s == "done" || s == "superseded"),
        "{:?}",
        jobs.iter().map(|j| &j.0).collect::<Vec<_>>()
    );
    // Every job that ran read its commit's file exactly once, and no other commit was read:
    // no commit was reconciled twice, and no superseded one at all.
    let done: BTreeSet<String> = jobs
        .iter()
        .filter(|(s, _)| s == "done")
        .map(|(_, i)| i["sha"].as_str().unwrap().to_owned())
        .collect();
    let mut reads = BTreeMap::<String, u32>::new();
    for x in emu.exchanges() {
        if x.provider == "github" && x.path.contains("/contents/") {
            let sha = x
                .query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ref="))
                .unwrap_or_default()
                .to_owned();
            *reads.entry(sha).or_default() += 1;
        }
    }
    assert_eq!(
        reads.keys().cloned().collect::<BTreeSet<_>>(),
        done,
        "the commits read are the commits run"
    );
    assert!(reads.values().all(|n| *n == 1), "{reads:?}");
    // The newest delivery of each repository (the last job queued for it) ran.
    let mut last = BTreeMap::<String, &(String, Value)>::new();
    for j in &jobs {
        last.insert(j.1["repo"].as_str().unwrap().to_owned(), j);
    }
    assert_eq!(last.len(), 20);
    assert!(last.values().all(|(s, _)| s == "done"), "{last:?}");
    // Both replicas did some of the work.
    let (ra, rb) = (reconciles(&client, &a).await, reconciles(&client, &b).await);
    assert!(ra > 0 && rb > 0, "replica-a ran {ra}, replica-b ran {rb}");
    assert_eq!(ra + rb, done.len() as u64, "{ra} + {rb}");
    drop((a, b));
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_reconcile_is_taken_over_by_the_other() {
    let Some((_, public)) = app_key() else {
        return;
    };
    let Some(push) = payload("push.create-default-branch.with-installation") else {
        return;
    };
    let Some(db) = TestDb::new() else {
        return;
    };
    // 40 ms per call: the reconcile takes long enough to be killed in the middle.
    let emu = emu::start(Config {
        faults: telbase::emulator::Faults {
            latency: Duration::from_millis(40),
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": ["acme/notes"]}],
        "commits": [{"repo": "acme/notes", "sha": MAIN_SHA, "files": {"telbase.yaml": emu::quickstart("notes")}}],
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = start_replica("replica-a", dir.path(), &emu.url(), &db, 3).await;
    let b = start_replica("replica-b", dir.path(), &emu.url(), &db, 3).await;
    let client = reqwest::Client::new();
    let status = post(
        &client,
        &a.base,
        "d-kill",
        &push_to(&push, "acme/notes", MAIN_SHA),
    )
    .await;
    assert_eq!(status, 202);

    // Once the reconcile has written at a provider, kill whichever replica runs it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let writes: u64 = emu
            .counters()
            .by_provider
            .iter()
            .filter(|(p, _)| p.as_str() != "github")
            .map(|(_, pc)| pc.writes)
            .sum();
        if writes >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the reconcile never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let owner = rows(&db, "SELECT lease_owner FROM jobs WHERE state = 'running'").await;
    let owner = owner[0][0].clone().expect("a running job has an owner");
    let (mut victim, survivor) = if owner.starts_with("replica-a:") {
        (a, b)
    } else {
        (b, a)
    };
    assert!(owner.starts_with(victim.name), "{owner}");
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    let partial = emu.inventory();
    assert!(
        partial.get("vercel.deployments").copied().unwrap_or(0) == 0,
        "killed too late to prove anything: {partial:?}"
    );

    // The survivor takes the job over once the lease (3 s) runs out, and finishes it.
    let jobs = settle(&db, 1).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].0, "done", "{jobs:?}");
    assert_eq!(reconciles(&client, &survivor).await, 1);
    let inv = emu.inventory();
    assert_eq!(inv["vercel.projects"], 1, "{inv:?}");
    assert_eq!(inv["neon.projects"], 1, "{inv:?}");
    assert_eq!(inv["vercel.deployments"], 1, "deployed once: {inv:?}");
    drop((victim, survivor));
    emu.stop().await;
}
