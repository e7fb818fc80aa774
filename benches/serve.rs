//! `telbase serve` speed and size (`cargo bench --bench serve`), two of the GitHub App issue's
//! measurements (the third, webhook intake against adnanh/webhook, is
//! `benches/webhook-intake.sh`):
//!
//! - **Push-to-success latency** for a one-app project (a Next.js app on Vercel with a Neon
//!   database: the quickstart) against the emulator with 20 ms on every call, GitHub's
//!   included: from posting the signed push webhook to the moment the `success` commit
//!   status is recorded. The ideal is the project's chain of calls that had to wait for one
//!   another × 20 ms. The chain is read from the emulator's record of every call (when it
//!   arrived, when its answer was ready): the longest sequence of calls each of which
//!   started after the previous one finished. It is printed call by call, so whether each
//!   link is necessary can be judged; what the ratio exposes is everything else Telbase
//!   adds (queue pickup, reading and planning the file, the executor's waits). Target: within
//!   1.5× of the ideal. Median of five runs, each on a fresh emulator and server.
//! - **Memory**: resident size of a `telbase serve` process (the release binary) that
//!   watches 1,000 installed repositories, polling each one's production head every second
//!   against the fake GitHub, after ten poll rounds; beside it the same server watching none.
//!
//! A plain harness rather than criterion: each sample is a whole server run.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/serve_app.rs"]
mod serve_app;

use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::SecretString;
use serde_json::{Value, json};
use telbase::emulator::{Config, Exchange, Faults};
use telbase::github::webhook;
use telbase::serve;

use common::emu;
use serve_app::SECRET;

const LATENCY: Duration = Duration::from_millis(20);
const RUNS: usize = 5;
const SHA: &str = "1111111111111111111111111111111111111111";
const REPOS: usize = 1000;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let test = std::env::args().any(|a| a == "--test");
    let Some((pem, public)) = common::app_key() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(latency(pem, public, if test { 1 } else { RUNS }));
    rt.block_on(memory(pem, public, if test { 2 } else { 10 }));
}

fn seed(public: &[u8], repos: &[String]) -> Value {
    json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": repos}],
        "commits": repos.iter().map(|r| json!({
            "repo": r, "sha": SHA, "files": {"telbase.yaml": emu::quickstart("notes")},
        })).collect::<Vec<_>>(),
    })
}

fn push_body() -> Vec<u8> {
    let mut v = serve_app::push_main(SHA).expect("GitHub's push payload in ../shared");
    v["deleted"] = false.into();
    serde_json::to_vec(&v).unwrap()
}

/// The longest chain of calls each of which started after the one before it finished.
fn chain(calls: &[Exchange]) -> Vec<&Exchange> {
    let mut order: Vec<&Exchange> = calls.iter().collect();
    order.sort_by_key(|x| x.finished);
    let mut best: Vec<(usize, Option<usize>)> = Vec::with_capacity(order.len());
    for (i, x) in order.iter().enumerate() {
        let prev = (0..i)
            .filter(|&j| order[j].finished <= x.started)
            .max_by_key(|&j| best[j].0);
        best.push((prev.map_or(0, |j| best[j].0) + 1, prev));
    }
    let mut at = (0..order.len()).max_by_key(|&i| best[i].0);
    let mut out = Vec::new();
    while let Some(i) = at {
        out.push(order[i]);
        at = best[i].1;
    }
    out.reverse();
    out
}

async fn latency(pem: &str, public: &[u8], runs: usize) {
    let body = push_body();
    let sig = webhook::sign(&SecretString::from(SECRET.to_owned()), &body);
    let client = reqwest::Client::new();
    let (mut walls, mut ideals, mut printed) = (Vec::new(), Vec::new(), false);
    for _ in 0..runs {
        let emu = emu::start(Config {
            capture: true,
            faults: Faults {
                latency: LATENCY,
                ..Faults::default()
            },
            ..Config::default()
        })
        .await;
        emu.github_seed(&seed(public, &["acme/notes".into()]))
            .expect("seed");
        let dir = tempfile::tempdir().unwrap();
        let running = serve::start(serve_app::server_config(&emu, dir.path(), pem))
            .await
            .expect("serve starts");
        let t0 = Instant::now();
        let r = client
            .post(format!("http://{}/webhooks/github", running.addr))
            .header("x-github-event", "push")
            .header("x-github-delivery", "bench-push")
            .header("x-hub-signature-256", &sig)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 202);
        let deadline = Instant::now() + Duration::from_secs(120);
        let success = loop {
            let done = emu.exchanges().into_iter().find(|x| {
                x.provider == "github"
                    && x.method == "POST"
                    && x.path.contains("/statuses/")
                    && serde_json::from_slice::<Value>(&x.request_body)
                        .is_ok_and(|b| b["state"] == "success")
            });
            if let Some(x) = done {
                break x;
            }
            assert!(Instant::now() < deadline, "no success status");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let wall = success.finished.duration_since(t0);
        let calls: Vec<Exchange> = emu
            .exchanges()
            .into_iter()
            .filter(|x| x.finished <= success.finished)
            .collect();
        let links = chain(&calls);
        let ideal = LATENCY * links.len() as u32;
        if !printed {
            printed = true;
            println!(
                "push-to-success chain ({} calls of {} in all):",
                links.len(),
                calls.len()
            );
            // With the wait before each call: Telbase's own time between the links.
            let mut last = t0;
            for x in &links {
                println!(
                    "  +{:4.0} ms  {:7} {:5} {}",
                    x.started.saturating_duration_since(last).as_secs_f64() * 1e3,
                    x.provider,
                    x.method,
                    x.path
                );
                last = x.finished;
            }
            println!(
                "  +{:4.0} ms  (until the success status was recorded)",
                success
                    .finished
                    .saturating_duration_since(last)
                    .as_secs_f64()
                    * 1e3
            );
        }
        walls.push(wall.as_secs_f64());
        ideals.push(ideal.as_secs_f64());
        running.stop().await;
        emu.stop().await;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, i) = (median(walls), median(ideals));
    println!(
        "push-to-success over {runs} runs (medians): wall {:.0} ms, ideal {:.0} ms (chain × 20 ms), ratio {:.2} (target ≤ 1.5)",
        w * 1e3,
        i * 1e3,
        w / i
    );
}

/// Resident and peak resident size (kB) of `pid`.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn memory(pem: &str, public: &[u8], rounds: u64) {
    for repos in [0, REPOS] {
        let names: Vec<String> = (0..repos).map(|i| format!("acme/app{i:04}")).collect();
        let emu = emu::start(Config::default()).await;
        emu.github_seed(&seed(public, &names)).expect("seed");
        let dir = tempfile::tempdir().unwrap();
        // The repositories as an installed, reconciled App knows them.
        {
            let mut store =
                telbase::store::sqlite::SqliteStore::open(&dir.path().join("telbase.db"))
                    .expect("store");
            for n in &names {
                store.remember_repository(n, 7).unwrap();
                store
                    .record_reconciled(n, 7, "main", SHA, "*/15 * * * *")
                    .unwrap();
            }
        }
        let key = dir.path().join("app.pem");
        std::fs::write(&key, pem).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_telbase"))
            .arg("serve")
            .env(
                "TELBASE_DATABASE_URL",
                format!("sqlite:{}", dir.path().join("telbase.db").display()),
            )
            .env("TELBASE_LISTEN", "127.0.0.1:0")
            .env("TELBASE_POLL_SECONDS", "1")
            .env("TELBASE_SWEEP_SECONDS", "0")
            .env("TELBASE_UPTIME_SECONDS", "0")
            .env("TELBASE_EMULATOR", emu.url())
            .env("GITHUB_APP_ID", "42")
            .env("GITHUB_APP_PRIVATE_KEY_FILE", &key)
            .env("GITHUB_WEBHOOK_SECRET", SECRET)
            .env("GITHUB_API_URL", format!("{}/github", emu.url()))
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start telbase serve");
        // Ten poll rounds: every repository's production head read ten times.
        let github_reads = || {
            emu.counters()
                .by_provider
                .get("github")
                .map_or(0, |c| c.reads)
        };
        let reads_before = github_reads();
        tokio::time::sleep(Duration::from_secs(rounds) + Duration::from_millis(500)).await;
        let (now, peak) = rss(child.id());
        let reads = github_reads() - reads_before;
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "telbase serve watching {repos:5} repositories: resident {:6.1} MiB (peak {:6.1} MiB) after {rounds} s of polling every second ({reads} GitHub reads)",
            now as f64 / 1024.0,
            peak as f64 / 1024.0
        );
        emu.stop().await;
    }
}
