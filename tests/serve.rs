//! `telbase serve` end to end, in process: GitHub's real webhook payloads (edited to name the
//! test repository), signed as GitHub signs them, posted to the server; the emulator plays
//! GitHub (App JWT, installation tokens, file contents, commit statuses) and every provider.
//! A push to the production branch converges production and sets a success status; a
//! redelivery is acknowledged and not re-run; a pull request gets its preview and closing it
//! tears the preview down; forged and unknown deliveries are refused or ignored; metrics,
//! health and readiness answer. The queue's own rules (dedup, supersede, leases, retries)
//! are tested against the store directly.

mod common;
#[path = "common/serve_app.rs"]
mod serve_app;

use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::SecretString;
use serde_json::{Value, json};
use telbase::emulator::Config;
use telbase::github::webhook;
use telbase::serve::{self, ServeConfig};
use telbase::store::sqlite::SqliteStore;
use telbase::store::{JobEnd, Location, MAX_ATTEMPTS, QueueRows as _};

use common::{app_key, emu};
use serve_app::post_signed as post;
use serve_app::{SECRET, payload, retarget, server_config, settle};

const MAIN_SHA: &str = "1111111111111111111111111111111111111111";
const PR_SHA: &str = "2222222222222222222222222222222222222222";
fn config_text() -> String {
    emu::quickstart("notes").replace(
        "    version: 17\n",
        "    version: 17\n    branch_per_preview: true\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_pull_requests_reconcile_through_the_app() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let (Some(push), Some(opened), Some(closed)) = (
        payload("push.create-default-branch.with-installation"),
        payload("pull_request.opened"),
        payload("pull_request.closed"),
    ) else {
        return;
    };
    let emu = emu::start(Config {
        capture: true,
        ..Config::default()
    })
    .await;
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": ["acme/notes"]}],
        "commits": [
            {"repo": "acme/notes", "sha": MAIN_SHA, "files": {"telbase.yaml": config_text()}},
            {"repo": "acme/notes", "sha": PR_SHA, "files": {"telbase.yaml": config_text()}},
        ],
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start(ServeConfig {
        public_url: Some("https://telbase.example".into()),
        poll: Some(Duration::from_millis(200)),
        ..server_config(&emu, dir.path(), pem)
    })
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();

    // A push to main: 202, and production converges.
    let mut main = retarget(push.clone());
    main["ref"] = "refs/heads/main".into();
    main["after"] = MAIN_SHA.into();
    let r = post(&client, &base, "push", "d-push-1", &main, SECRET).await;
    assert_eq!(r.status(), 202);
    assert!(r.headers().contains_key("strict-transport-security"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["jobs"], 1);
    // The same delivery again (GitHub's redelivery): acknowledged, not queued.
    let r = post(&client, &base, "push", "d-push-1", &main, SECRET).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["duplicate"], true);

    let jobs = settle(&running).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].state, "done", "{jobs:?}");
    assert!(
        jobs[0].summary.as_deref().unwrap().starts_with("Applied"),
        "{jobs:?}"
    );
    let inv = emu.inventory();
    assert_eq!(inv["vercel.projects"], 1, "{inv:?}");
    assert_eq!(
        inv["github/status"], 2,
        "pending then success on the commit: {inv:?}"
    );

    // A push to another branch is recorded and does nothing.
    let mut feature = main.clone();
    feature["ref"] = "refs/heads/feature".into();
    let r = post(&client, &base, "push", "d-push-2", &feature, SECRET).await;
    assert_eq!(r.status(), 202);
    let jobs = settle(&running).await;
    assert!(
        jobs[1]
            .summary
            .as_deref()
            .unwrap()
            .contains("not the production branch"),
        "{jobs:?}"
    );

    // A pull request: its preview appears (a Neon branch for the database), and closing
    // the pull request removes exactly it.
    let before = emu.inventory();
    let mut pr = retarget(opened);
    pr["number"] = 7.into();
    pr["pull_request"]["number"] = 7.into();
    pr["pull_request"]["head"]["sha"] = PR_SHA.into();
    let r = post(&client, &base, "pull_request", "d-pr-open", &pr, SECRET).await;
    assert_eq!(r.status(), 202);
    let jobs = settle(&running).await;
    assert_eq!(jobs[2].state, "done", "{jobs:?}");
    let during = emu.inventory();
    assert!(
        during["neon.branches"] > before["neon.branches"],
        "{before:?} → {during:?}"
    );
    assert!(
        during["vercel.env"] > before["vercel.env"],
        "the preview's branch-scoped env vars: {before:?} → {during:?}"
    );
    assert_eq!(
        during["github/comment"], 1,
        "one comment on the pull request"
    );
    let mut pr_closed = retarget(closed);
    pr_closed["number"] = 7.into();
    pr_closed["pull_request"]["number"] = 7.into();
    pr_closed["pull_request"]["head"]["sha"] = PR_SHA.into();
    let r = post(
        &client,
        &base,
        "pull_request",
        "d-pr-close",
        &pr_closed,
        SECRET,
    )
    .await;
    assert_eq!(r.status(), 202);
    let jobs = settle(&running).await;
    assert_eq!(jobs[3].state, "done", "{jobs:?}");
    let after = emu.inventory();
    assert_eq!(
        after["neon.branches"], before["neon.branches"],
        "the preview's branch is gone"
    );
    assert_eq!(after["vercel.projects"], 1, "production stays");
    assert_eq!(
        after["vercel.env"], before["vercel.env"],
        "the preview's env vars are gone, production's stay"
    );
    assert_eq!(after["neon.projects"], before["neon.projects"]);
    // The same comment, updated in place: first the plan, then the teardown.
    assert_eq!(after["github/comment"], 1);
    let comments: Vec<String> = emu
        .exchanges()
        .into_iter()
        .filter(|x| x.provider == "github" && x.path.contains("/comments") && x.method != "GET")
        .map(|x| String::from_utf8_lossy(&x.request_body).into_owned())
        .collect();
    assert_eq!(comments.len(), 2, "{comments:?}");
    assert!(
        comments[0].contains("Applied") && comments[0].contains("to create"),
        "{}",
        comments[0]
    );
    assert!(comments[0].contains(serve::worker::PREVIEW_MARKER));
    assert!(comments[1].contains("torn down"), "{}", comments[1]);

    // A push whose webhook never arrives (dropped on purpose): the poll sees main's head
    // move past the reconciled commit and reconciles it, once.
    const DROPPED_SHA: &str = "3333333333333333333333333333333333333333";
    emu.github_seed(&json!({
        "commits": [{"repo": "acme/notes", "sha": DROPPED_SHA, "files": {"telbase.yaml": config_text().replace("SITE: notes", "SITE: notes-v2")}}],
        "branches": [{"repo": "acme/notes", "branch": "main", "sha": DROPPED_SHA}],
    }))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let jobs = loop {
        let jobs = settle(&running).await;
        if jobs.len() == 5 {
            break jobs;
        }
        assert!(
            Instant::now() < deadline,
            "the poll never caught up: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        jobs[4].delivery_id,
        format!("poll:acme/notes@{DROPPED_SHA}")
    );
    assert_eq!(jobs[4].state, "done", "{jobs:?}");
    assert!(
        jobs[4].summary.as_deref().unwrap().starts_with("Applied"),
        "{jobs:?}"
    );
    // Later rounds see the head reconciled and queue nothing more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(settle(&running).await.len(), 5);

    // Someone changes production by hand; the file's drift schedule (the default, every 15
    // minutes) comes due: a drift check runs at the reconciled commit and corrects it.
    emu.drift(
        &json!({"provider": "vercel", "project": "notes-web", "set": {"buildCommand": "make"}}),
    )
    .unwrap();
    let later = chrono::Utc::now() + chrono::Duration::minutes(20);
    assert_eq!(serve::drift_once(&running.queue, later), Ok(1));
    assert_eq!(
        serve::drift_once(&running.queue, later),
        Ok(0),
        "one check per repository per due time"
    );
    let jobs = settle(&running).await;
    assert_eq!(jobs.len(), 6, "{jobs:?}");
    assert!(
        jobs[5].delivery_id.starts_with("drift:acme/notes@3333"),
        "{jobs:?}"
    );
    assert_eq!(jobs[5].state, "done", "{jobs:?}");
    assert!(
        jobs[5].summary.as_deref().unwrap().contains("1 updated"),
        "the drift was corrected: {jobs:?}"
    );

    // A commit whose telbase.yaml does not validate: a failure status naming the first
    // error, and no provider call.
    const BAD_SHA: &str = "4444444444444444444444444444444444444444";
    emu.github_seed(
        &json!({"commits": [{"repo": "acme/notes", "sha": BAD_SHA, "files": {
        "telbase.yaml": "version: 1\nproject: notes\napps:\n  web:\n    framework: nope\n"}}]}),
    )
    .unwrap();
    let provider_calls = |emu: &telbase::emulator::Handle| -> u64 {
        emu.counters()
            .by_provider
            .iter()
            .filter(|(p, _)| p.as_str() != "github")
            .map(|(_, c)| c.reads + c.writes)
            .sum()
    };
    let calls_before = provider_calls(&emu);
    let mut bad = main.clone();
    bad["after"] = BAD_SHA.into();
    let r = post(&client, &base, "push", "d-bad-config", &bad, SECRET).await;
    assert_eq!(r.status(), 202);
    let jobs = settle(&running).await;
    assert_eq!(jobs[6].state, "failed", "{jobs:?}");
    assert!(
        jobs[6].error.as_deref().unwrap().contains("line 5"),
        "{jobs:?}"
    );
    assert_eq!(provider_calls(&emu), calls_before, "no provider was called");
    let last_status: Value = emu
        .exchanges()
        .into_iter()
        .filter(|x| x.provider == "github" && x.path.ends_with(&format!("/statuses/{BAD_SHA}")))
        .map(|x| serde_json::from_slice(&x.request_body).unwrap())
        .next_back()
        .expect("a status on the bad commit");
    assert_eq!(last_status["state"], "failure");
    assert!(
        last_status["description"]
            .as_str()
            .unwrap()
            .contains("invalid"),
        "{last_status}"
    );

    // A body over GitHub's 25 MB limit is refused before anything else.
    let huge = vec![b' '; 25 * 1024 * 1024 + 1];
    let r = client
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-huge")
        .header(
            "x-hub-signature-256",
            webhook::sign(&SecretString::from(SECRET.to_owned()), &huge),
        )
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Forged and unknown deliveries.
    let r = post(&client, &base, "push", "d-forged", &main, "not-the-secret").await;
    assert_eq!(r.status(), 401);
    let r = post(&client, &base, "check_run", "d-other", &json!({}), SECRET).await;
    assert_eq!(r.status(), 204);
    let r = client
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-unsigned")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Health, readiness and metrics.
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["queue_depth"], 0);
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"telbase_webhook_deliveries_total{event="push",result="accepted"} 3"#,
        r#"telbase_webhook_deliveries_total{event="push",result="duplicate"} 1"#,
        r#"telbase_webhook_deliveries_total{event="push",result="bad_signature"} 2"#,
        r#"telbase_webhook_deliveries_total{event="check_run",result="ignored"} 1"#,
        "telbase_queue_depth 0",
        "telbase_github_rate_limit_remaining 4",
        "telbase_reconcile_duration_seconds_count{environment=\"production\",result=\"success\"} 3",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    // Signed but not the JSON GitHub sends: 400, and recorded as a failed delivery.
    let garbage = b"{\"ref\": 7}".to_vec();
    let r = client
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-garbage")
        .header(
            "x-hub-signature-256",
            webhook::sign(&SecretString::from(SECRET.to_owned()), &garbage),
        )
        .body(garbage)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(running.queue.with(|s| s.has_delivery("d-garbage")).unwrap());

    // An address that keeps sending bad signatures is told to slow down (429) for the rest
    // of the window; a good signature from the same address (behind a proxy, every
    // delivery shares one) is still accepted.
    let mut statuses = Vec::new();
    for n in 0..25 {
        let r = post(
            &client,
            &base,
            "push",
            &format!("d-brute-{n}"),
            &main,
            "guess",
        )
        .await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        18,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        7,
        "{statuses:?}"
    );
    let r = post(&client, &base, "push", "d-after-brute", &main, SECRET).await;
    assert_eq!(r.status(), 202);
    assert!(
        !running
            .queue
            .with(|s| s.has_delivery("d-brute-24"))
            .unwrap()
    );

    running.stop().await;
    emu.stop().await;
}

/// The queue's rules, on the store itself (SQLite and PostgreSQL).
#[test]
fn the_queue_deduplicates_supersedes_leases_and_gives_up() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        queue_rules_on(&t);
    }
}

fn queue_rules_on(t: &common::pg::TestStore) {
    let mut s = t.open();
    let job = |sha: &str| {
        (
            "acme/notes".to_owned(),
            "push:main".to_owned(),
            format!(
                r#"{{"kind":"push","installation":7,"repo":"acme/notes","branch":"main","sha":"{sha}"}}"#
            ),
        )
    };
    assert_eq!(
        s.record_delivery("a", "push", "", &[job("1")]).unwrap(),
        Some(1)
    );
    assert_eq!(
        s.record_delivery("a", "push", "", &[job("1")]).unwrap(),
        None
    );
    // A delivery recorded as unreadable is not a duplicate when it comes again readable.
    assert_eq!(
        s.record_delivery("z", "push", "failed: not JSON", &[])
            .unwrap(),
        Some(0)
    );
    assert_eq!(s.record_delivery("z", "push", "", &[]).unwrap(), Some(0));
    assert_eq!(s.record_delivery("z", "push", "", &[]).unwrap(), None);
    s.record_delivery("b", "push", "", &[job("2")]).unwrap();
    s.record_delivery("c", "push", "", &[job("3")]).unwrap();
    assert!(s.has_delivery("b").unwrap());
    assert_eq!(s.queue_depth().unwrap(), 3);

    // Three queued pushes of one branch: the newest runs, the older two are superseded.
    let c = s.claim_job("w1", 60_000).unwrap().unwrap();
    assert!(c.intent.contains(r#""sha":"3""#), "{c:?}");
    let states: Vec<String> = s.jobs().unwrap().into_iter().map(|j| j.state).collect();
    assert_eq!(states, ["superseded", "superseded", "running"]);
    // Nothing else may run for that key while it holds a live lease.
    s.record_delivery("d", "push", "", &[job("4")]).unwrap();
    assert_eq!(s.claim_job("w2", 60_000).unwrap(), None);

    // A lease that runs out (the worker died) hands the job to another worker, and the
    // dead worker's late result is not recorded over the new run.
    let c = s.claim_job("w1", 60_000);
    assert!(c.unwrap().is_none());
    drop(s);
    let mut s = t.open();
    let running = s
        .jobs()
        .unwrap()
        .into_iter()
        .find(|j| j.state == "running")
        .unwrap();
    assert!(s.renew_job(running.id, "w1", -1).unwrap(), "w1 holds it");
    let again = s.claim_job("w2", 60_000).unwrap().unwrap();
    assert_ne!(again.id, running.id, "the newer queued job of the key wins");
    s.end_job(again.id, "w2", JobEnd::Done("ok")).unwrap();
    s.end_job(running.id, "w1", JobEnd::Done("late")).unwrap();
    let rows = s.jobs().unwrap();
    let late = rows.iter().find(|j| j.id == running.id).unwrap();
    assert_ne!(late.summary.as_deref(), Some("late"), "{rows:?}");

    // Retries back off, then give up after MAX_ATTEMPTS.
    let other = |n: u32| {
        (
            "acme/other".to_owned(),
            "push:main".to_owned(),
            format!(
                r#"{{"kind":"push","installation":7,"repo":"acme/other","branch":"main","sha":"{n}"}}"#
            ),
        )
    };
    s.record_delivery("e", "push", "", &[other(1)]).unwrap();
    let mut last = None;
    for attempt in 0..MAX_ATTEMPTS {
        let c = loop {
            if let Some(c) = s.claim_job("w3", 60_000).unwrap() {
                if c.intent.contains("acme/other") {
                    break c;
                }
                s.end_job(c.id, "w3", JobEnd::Done("")).unwrap();
            } else {
                panic!("attempt {attempt}: nothing to claim");
            }
        };
        assert_eq!(c.attempts, attempt);
        s.end_job(
            c.id,
            "w3",
            JobEnd::Retry {
                error: "provider down",
                after_ms: 0,
            },
        )
        .unwrap();
        last = Some(c.id);
    }
    let row = s
        .jobs()
        .unwrap()
        .into_iter()
        .find(|j| Some(j.id) == last)
        .unwrap();
    assert_eq!(row.state, "failed");
    assert_eq!(row.attempts, MAX_ATTEMPTS);
    assert_eq!(row.error.as_deref(), Some("provider down"));
}

/// "Encryption keys rotated regularly": the server's schedule runs the same resumable
/// rotation as `telbase keys rotate`, only when the keyring is older than the interval.
#[test]
fn the_server_rotates_the_master_key_on_schedule() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("telbase.yaml"),
        "version: 1\nproject: notes\napps:\n  web:\n    framework: nextjs\n",
    )
    .unwrap();
    let db = dir.path().join("telbase.db");
    let keyring = dir.path().join("master.keys");
    let telbase = |args: &[&str], stdin: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_telbase"))
            .args(args)
            .current_dir(dir.path())
            .env("TELBASE_DATABASE_URL", format!("sqlite:{}", db.display()))
            .env("TELBASE_MASTER_KEY_FILE", &keyring)
            .env_remove("TELBASE_MASTER_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    telbase(&["keys", "rotate", "--generate"], b"");
    telbase(&["env", "set", "API_KEY"], b"sk_live_0123456789abcdef");
    let location = Location::Sqlite(db.clone());
    let keys_before = std::fs::read_to_string(&keyring).unwrap();

    // Not due: nothing happens.
    let rotation = serve::KeyRotation {
        keyring: keyring.clone(),
        every: Duration::from_secs(3600),
        check: Duration::from_secs(3600),
    };
    assert_eq!(serve::rotate_if_due(&rotation, &location), Ok(false));
    assert_eq!(std::fs::read_to_string(&keyring).unwrap(), keys_before);

    // Due: a new key, every value re-wrapped onto it, the old key retired.
    let due = serve::KeyRotation {
        every: Duration::ZERO,
        ..rotation
    };
    assert_eq!(serve::rotate_if_due(&due, &location), Ok(true));
    let list = telbase(&["keys", "list"], b"");
    assert!(list.contains("retired"), "{list}");
    let mut store = SqliteStore::open(&db).unwrap();
    let keys = telbase::secrets::envelope::key_provider_from_vars(|k| {
        (k == "TELBASE_MASTER_KEY_FILE").then(|| keyring.display().to_string())
    })
    .unwrap();
    let name = telbase::store::SecretName {
        project: "notes".into(),
        environment: "production".into(),
        name: "API_KEY".into(),
    };
    let value = telbase::secrets::stored::open_text(&mut store, keys.as_ref(), &name)
        .unwrap()
        .unwrap();
    use secrecy::ExposeSecret as _;
    assert_eq!(value.expose_secret(), "sk_live_0123456789abcdef");
}

/// `telbase serve` as its own process, killed with SIGKILL in the middle of a reconcile and
/// started again on the same store: the job's lease runs out, the restarted server takes the
/// job over, and production converges with nothing created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_reconcile_then_restart_converges_without_duplicates() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let Some(push) = payload("push.create-default-branch.with-installation") else {
        return;
    };
    // 40 ms per call: the first reconcile takes long enough to be killed in the middle.
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
        "commits": [{"repo": "acme/notes", "sha": MAIN_SHA, "files": {"telbase.yaml": config_text()}}],
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.pem"), pem).unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let db = dir.path().join("telbase.db");
    let spawn_cmd = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_telbase"));
        c.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("GITHUB_APP_ID", "42")
            .env("GITHUB_APP_PRIVATE_KEY_FILE", dir.path().join("app.pem"))
            .env("GITHUB_WEBHOOK_SECRET_FILE", dir.path().join("secret"))
            .env("GITHUB_API_URL", format!("{}/github", emu.url()))
            .env("TELBASE_EMULATOR", emu.url())
            .env("TELBASE_DATABASE_URL", format!("sqlite:{}", db.display()))
            .env("TELBASE_LEASE_SECONDS", "3")
            .env_remove("TELBASE_MASTER_KEY_FILE")
            .env_remove("TELBASE_IDENTITY_FILE")
            .env_remove("TELBASE_IDENTITY")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let spawn = || spawn_cmd().spawn().expect("start telbase serve");
    let client = reqwest::Client::new();
    let ready = |client: reqwest::Client, base: String| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("telbase serve did not become ready");
    };

    let mut server = spawn();
    ready(client.clone(), base.clone()).await;
    let mut main = retarget(push);
    main["ref"] = "refs/heads/main".into();
    main["after"] = MAIN_SHA.into();
    let r = post(&client, &base, "push", "d-kill", &main, SECRET).await;
    assert_eq!(r.status(), 202);
    // Kill it once the reconcile has written something at a provider, before it is done.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = emu.counters();
        let provider_writes: u64 = c
            .by_provider
            .iter()
            .filter(|(p, _)| p.as_str() != "github")
            .map(|(_, pc)| pc.writes)
            .sum();
        if provider_writes >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the reconcile never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let partial = emu.inventory();
    assert!(
        partial.get("vercel.deployments").copied().unwrap_or(0) == 0,
        "killed too late to prove anything: {partial:?}"
    );

    // Restart on the same store: the delivery is not lost, the job is taken over after its
    // lease, and the run finishes. Its logs (stderr is not a terminal) are JSON lines.
    let log = dir.path().join("serve.log");
    let mut server = {
        let mut c = spawn_cmd();
        c.stderr(std::fs::File::create(&log).unwrap());
        c.spawn().expect("restart telbase serve")
    };
    ready(client.clone(), base.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let jobs = loop {
        let jobs = SqliteStore::open(&db).unwrap().jobs().unwrap();
        if jobs
            .iter()
            .all(|j| j.state == "done" || j.state == "failed")
        {
            break jobs;
        }
        assert!(
            Instant::now() < deadline,
            "not finished after restart: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.kill().unwrap();
    server.wait().unwrap();
    let lines = std::fs::read_to_string(&log).unwrap();
    let parsed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        parsed
            .iter()
            .any(|v| v["level"] == "INFO" && v["fields"]["message"].is_string()),
        "{lines}"
    );
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].state, "done", "{jobs:?}");
    let inv = emu.inventory();
    assert_eq!(inv["vercel.projects"], 1, "{inv:?}");
    assert_eq!(inv["neon.projects"], 1, "{inv:?}");
    assert_eq!(inv["vercel.deployments"], 1, "deployed once: {inv:?}");
    emu.stop().await;
}

/// A burst of 1,000 deliveries (5% redeliveries, 5% bad signatures) sent 16 at a time:
/// every good one is recorded with its job, nothing is queued twice, and no commit's
/// reconcile runs twice (older queued commits of a branch are superseded by newer ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_deliveries_loses_nothing_and_runs_each_commit_once() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let Some(push) = payload("push.create-default-branch.with-installation") else {
        return;
    };
    let repos: Vec<String> = (0..10).map(|i| format!("acme/r{i}")).collect();
    let emu = emu::start(Config {
        capture: true,
        ..Config::default()
    })
    .await;
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": repos}],
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start(ServeConfig {
        ..server_config(&emu, dir.path(), pem)
    })
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();

    // 900 distinct pushes (90 commits on main of each of 10 repositories), 50 of them sent
    // twice, and 50 forged: shuffled with a fixed seed.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut sends: Vec<(String, Value, &str, u16)> = Vec::new();
    for n in 0..900u32 {
        let mut p = retarget(push.clone());
        p["repository"]["full_name"] = repos[(n % 10) as usize].clone().into();
        p["ref"] = "refs/heads/main".into();
        // +1: an all-zero sha means a deleted branch, which queues nothing.
        p["after"] = format!("{:040x}", n + 1).into();
        sends.push((format!("burst-{n}"), p, SECRET, 202));
    }
    for n in 0..50u32 {
        let (id, p, _, _) = sends[(n * 17) as usize].clone();
        sends.push((id, p, SECRET, 200));
        let (_, p, _, _) = sends[(n * 13) as usize].clone();
        sends.push((format!("forged-{n}"), p, "wrong", 401));
    }
    rng.shuffle(&mut sends);
    let results = futures_util::future::join_all(sends.chunks(16).map(|chunk| {
        let client = client.clone();
        let base = base.clone();
        let chunk = chunk.to_vec();
        async move {
            let mut out = Vec::new();
            for (id, body, secret, want) in chunk {
                let r = post(&client, &base, "push", &id, &body, secret).await;
                out.push((id, r.status().as_u16(), want));
            }
            out
        }
    }))
    .await;
    // Sent concurrently, either copy of a redelivered id may arrive first: per id, exactly
    // one 202, and the other copy 200.
    let mut by_id = std::collections::BTreeMap::<String, Vec<u16>>::new();
    for (id, got, want) in results.into_iter().flatten() {
        if want == 401 {
            assert!(got == 401 || got == 429, "{id}: {got}");
        } else {
            by_id.entry(id).or_default().push(got);
        }
    }
    assert_eq!(by_id.len(), 900);
    for (id, mut got) in by_id {
        got.sort();
        match got.len() {
            1 => assert_eq!(got, [202], "{id}"),
            _ => assert_eq!(got, [200, 202], "{id}"),
        }
    }

    let jobs = settle(&running).await;
    assert_eq!(jobs.len(), 900, "one job per distinct delivery");
    assert!(
        jobs.iter()
            .all(|j| j.state == "done" || j.state == "superseded"),
        "{:?}",
        jobs.iter()
            .filter(|j| j.state != "done" && j.state != "superseded")
            .collect::<Vec<_>>()
    );
    // Each commit's file was read at most once: no commit reconciled twice.
    let mut reads = std::collections::BTreeMap::<String, u32>::new();
    for x in emu.exchanges() {
        if x.provider == "github" && x.path.contains("/contents/") {
            *reads.entry(format!("{}?{}", x.path, x.query)).or_default() += 1;
        }
    }
    assert!(!reads.is_empty());
    assert!(reads.values().all(|n| *n == 1), "{reads:?}");
    running.stop().await;
    emu.stop().await;
}

/// Installing the App on a repository reconciles it at its default branch's head, when the
/// file there says that branch is production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installing_the_app_reconciles_each_repository_with_a_telbase_yaml() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let Some(installed) = payload("installation.created") else {
        return;
    };
    let emu = emu::start(Config::default()).await;
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": ["acme/notes", "acme/empty"]}],
        "commits": [{"repo": "acme/notes", "sha": MAIN_SHA, "files": {"telbase.yaml": config_text()}}],
        "branches": [
            {"repo": "acme/notes", "branch": "main", "sha": MAIN_SHA},
            {"repo": "acme/empty", "branch": "main", "sha": PR_SHA},
        ],
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start(ServeConfig {
        workers: 1,
        ..server_config(&emu, dir.path(), pem)
    })
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let mut body = installed;
    body["installation"]["id"] = 7.into();
    body["installation"]["account"]["login"] = "acme".into();
    body["repositories"] = json!([
        {"id": 500000, "node_id": "R_1", "name": "notes", "full_name": "acme/notes", "private": true},
        {"id": 500001, "node_id": "R_2", "name": "empty", "full_name": "acme/empty", "private": true},
    ]);
    let r = post(
        &reqwest::Client::new(),
        &base,
        "installation",
        "d-install",
        &body,
        SECRET,
    )
    .await;
    assert_eq!(r.status(), 202);
    let jobs = settle(&running).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].state, "done", "{jobs:?}");
    let summary = jobs[0].summary.clone().unwrap();
    assert!(summary.contains("acme/notes: Applied"), "{summary}");
    assert!(summary.contains("acme/empty: no telbase.yaml"), "{summary}");
    assert_eq!(emu.inventory()["vercel.projects"], 1);
    let repos = running.queue.with(|s| s.production_repositories()).unwrap();
    assert_eq!(repos.len(), 1);
    assert_eq!(repos[0].reconciled.as_deref(), Some(MAIN_SHA));
    running.stop().await;
    emu.stop().await;
}

/// With the control plane on, the App reads the file at the config path the repository's
/// project was registered with, not `telbase.yaml` at the root: a monorepo registers
/// `deploy/telbase.yaml`, and the root file (here one that does not validate) is not read.
/// A repository no project holds is still read at `telbase.yaml`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_reads_the_config_path_the_project_was_registered_with() {
    use telbase::control::{model, projects};
    let Some((pem, public)) = app_key() else {
        return;
    };
    let Some(main) = serve_app::push_main(MAIN_SHA) else {
        return;
    };
    let emu = emu::start(Config::default()).await;
    let broken = "project: notes\nthis is: [not valid\n";
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": ["acme/notes", "acme/other"]}],
        "commits": [
            {"repo": "acme/notes", "sha": MAIN_SHA, "files": {
                "telbase.yaml": broken,
                "deploy/telbase.yaml": config_text(),
            }},
            {"repo": "acme/other", "sha": PR_SHA, "files": {
                "telbase.yaml": broken,
                "deploy/telbase.yaml": config_text(),
            }},
        ],
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = server_config(&emu, dir.path(), pem);
    {
        // Registered as an Admin would through the API: the team, its grant, the project.
        let mut s = telbase::store::open(&config.store).unwrap();
        let team = model::create_team(&mut s, "acme", 0).unwrap().unwrap();
        projects::grant_repos(&mut s, &team.id, "acme/*", 0)
            .unwrap()
            .unwrap();
        projects::create(
            &mut s,
            &projects::NewProject {
                team_id: &team.id,
                name: "notes",
                repo: "Acme/Notes",
                config_path: "deploy/telbase.yaml",
                created_by: "test",
            },
            0,
        )
        .unwrap()
        .unwrap();
    }
    let running = serve::start_with(
        config,
        serve::EdgeConfig {
            control: Some(serve::ControlConfig {
                key: telbase::control::secrets::ServerKey::generate(),
            }),
            ..serve::EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();

    let r = post(&client, &base, "push", "d-registered", &main, SECRET).await;
    assert_eq!(r.status(), 202);
    let jobs = settle(&running).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].state, "done", "{jobs:?}");
    assert!(
        jobs[0].summary.as_deref().unwrap().starts_with("Applied"),
        "the registered file, not the broken root one: {jobs:?}"
    );
    assert_eq!(emu.inventory()["vercel.projects"], 1);

    // The unregistered repository: its root file, which does not validate.
    let mut other = main.clone();
    other["repository"]["full_name"] = "acme/other".into();
    other["repository"]["id"] = 500_001.into();
    other["after"] = PR_SHA.into();
    let r = post(&client, &base, "push", "d-unregistered", &other, SECRET).await;
    assert_eq!(r.status(), 202);
    let jobs = settle(&running).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[1].state, "failed", "{jobs:?}");
    assert!(
        jobs[1]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("telbase.yaml is invalid"),
        "{jobs:?}"
    );
    running.stop().await;
    emu.stop().await;
    // GitHub's names ignore case, and so does the lookup.
    let mut s = telbase::store::open(&telbase::store::Location::Sqlite(
        dir.path().join("telbase.db"),
    ))
    .unwrap();
    assert_eq!(
        projects::registered_config_path(&mut s, "ACME/notes").unwrap(),
        Some("deploy/telbase.yaml".to_owned())
    );
    assert_eq!(
        projects::registered_config_path(&mut s, "acme/other").unwrap(),
        None
    );
}
