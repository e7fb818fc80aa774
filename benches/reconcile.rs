//! Observe + apply speed against the emulator (`cargo bench --bench reconcile`): 20 projects
//! × 8 resources (two Neon projects with their databases, two Vercel projects with a domain
//! each), reconciled concurrently as the server will, with 20 ms of latency on every call.
//!
//! The issue's target: wall time within 1.5× of the ideal, where the ideal is the longest
//! chain of dependent calls × 20 ms plus all calls ÷ the concurrency limit × 20 ms. The
//! concurrency limit is the HTTP layer's in-flight limit per provider (16) times the two
//! providers, shared by all twenty runs as the server will share it. The chain
//! is measured, not guessed: one project alone, with nothing else in flight, takes
//! chain × 20 ms (plus our own overhead, which this rounds down). Also reported: the read
//! calls of a no-change reconcile (list endpoints, not one read per resource) and its write
//! calls, which must be zero.
//!
//! A plain harness rather than criterion: each sample is seconds long and needs a fresh
//! emulator; we report the median of five runs.

#[path = "../tests/common/emu.rs"]
mod emu;

use std::time::{Duration, Instant};

use telbase::emulator::{Config, Faults};

const LATENCY: Duration = Duration::from_millis(20);
const PROJECTS: usize = 20;
const RUNS: usize = 5;
/// Steps in flight at once per provider, per project run (the executor's limit).
const CONCURRENCY: usize = 8;
/// Calls in flight at once per provider across all runs (the HTTP layer's limit).
const IN_FLIGHT: usize = 16;

fn config(project: &str) -> String {
    format!(
        r#"version: 1
project: {project}
environments:
  production:
    branch: main
apps:
  web:
    framework: nextjs
    env:
      DATABASE_URL: {{ from: databases.main.url }}
  docs:
    framework: astro
    env:
      DATABASE_URL: {{ from: databases.search.url }}
databases:
  main:
    engine: postgres
  search:
    engine: postgres
"#
    )
}

fn run_for(project: &str, url: &str, http: &telbase::providers::http::Http) -> emu::Run {
    let mut run = emu::run_with(&config(project), url, &"c".repeat(40), http.clone());
    for app in ["web", "docs"] {
        run.add_domain(app, &format!("{app}.{project}.example.com"));
    }
    run
}

struct Sample {
    wall: Duration,
    calls: u64,
    noop_reads: u64,
    noop_writes: u64,
}

async fn sample(projects: usize) -> Sample {
    let emu = emu::start(Config {
        faults: Faults {
            latency: LATENCY,
            ..Faults::default()
        },
        page_size: 100,
        ..Config::default()
    })
    .await;
    let url = emu.url();
    // One client for every project, as the server shares one: its per-provider in-flight
    // limit is the concurrency limit of the ideal schedule.
    let http = telbase::providers::http::Http::new(telbase::providers::http::HttpConfig {
        max_in_flight: IN_FLIGHT,
        ..emu::http_config()
    })
    .expect("http");
    let runs: Vec<emu::Run> = (0..projects)
        .map(|i| run_for(&format!("p{i:02}"), &url, &http))
        .collect();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for run in runs {
        tasks.spawn(async move {
            let (plan, actual) = run.plan().await.expect("observe");
            assert_eq!(plan.summary().create, 8);
            let report = run.apply(plan, actual, CONCURRENCY).await;
            assert!(report.succeeded(), "{report:?}");
            run
        });
    }
    let mut done = Vec::new();
    while let Some(r) = tasks.join_next().await {
        done.push(r.expect("task"));
    }
    let wall = start.elapsed();
    let calls = emu.counters().requests;
    // A no-change reconcile of one project: reads counted, writes must be zero.
    let before = emu.counters();
    let (plan, _) = done[0].plan().await.expect("observe");
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    let after = emu.counters();
    emu.stop().await;
    Sample {
        wall,
        calls,
        noop_reads: after.reads - before.reads,
        noop_writes: after.writes - before.writes,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs benches once in test mode; keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    let runs = if quick { 1 } else { RUNS };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let one: Vec<Sample> = (0..runs).map(|_| rt.block_on(sample(1))).collect();
    let all: Vec<Sample> = (0..runs).map(|_| rt.block_on(sample(PROJECTS))).collect();
    let t1 = median(one.iter().map(|s| s.wall).collect());
    let tn = median(all.iter().map(|s| s.wall).collect());
    let chain = (t1.as_secs_f64() / LATENCY.as_secs_f64()).floor();
    let calls = all[0].calls as f64;
    // IN_FLIGHT per provider, two providers.
    let limit = (IN_FLIGHT * 2) as f64;
    let ideal = (chain + calls / limit) * LATENCY.as_secs_f64();
    println!(
        "reconcile/1 project × 8 resources: median {:.0} ms over {runs} runs ({} calls) → longest chain ≈ {chain} calls",
        t1.as_secs_f64() * 1e3,
        one[0].calls
    );
    println!(
        "reconcile/{PROJECTS} projects × 8 resources: median {:.0} ms over {runs} runs, {} calls, concurrency limit {limit}",
        tn.as_secs_f64() * 1e3,
        all[0].calls
    );
    println!(
        "ideal = chain {chain} × 20 ms + {calls} calls / {limit} × 20 ms = {:.0} ms; measured/ideal = {:.2} (target ≤ 1.5)",
        ideal * 1e3,
        tn.as_secs_f64() / ideal
    );
    println!(
        "no-change reconcile of one project (8 resources): {} reads, {} writes",
        all[0].noop_reads, all[0].noop_writes
    );
}
