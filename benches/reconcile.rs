//! Observe + apply speed against the emulator (`cargo bench --bench reconcile`): 20 projects
//! reconciled concurrently as the server will, with 20 ms of latency on every call, in two
//! scenarios:
//!
//! - `vercel-neon`: 8 resources each (two Neon projects with their databases, two Vercel
//!   projects with a domain each);
//! - `every-provider`: 20 resources each at all seven providers (a Vercel app and a Cloud Run
//!   service, each with a domain behind Cloudflare, Neon, Turso and Cloud SQL databases,
//!   secrets in Secret Manager, the edge baseline and an Access policy and application).
//!
//! The issues' target: wall time within 1.5× of the ideal, where the ideal is the longest
//! chain of dependent calls × 20 ms plus all calls ÷ the concurrency limit × 20 ms. The
//! concurrency limit is the HTTP layer's in-flight limit per provider (16) times the
//! providers used, shared by all twenty runs as the server will share it. The chain is
//! measured, not guessed: one project alone, with nothing else in flight, takes chain × 20 ms
//! (plus our own overhead, which this rounds down). Also reported: the read calls of a
//! no-change reconcile (list endpoints, not one read per resource) and its write calls, which
//! must be zero.
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

/// One kind of project the bench reconciles twenty of.
struct Scenario {
    name: &'static str,
    config: fn(&str) -> String,
    /// Domains added after loading (the Vercel-only config has none in the file).
    domains: bool,
    providers: usize,
    resources: usize,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "vercel-neon",
        config,
        domains: true,
        providers: 2,
        resources: 8,
    },
    Scenario {
        name: "every-provider",
        config: every_provider,
        domains: false,
        providers: 7,
        resources: 20,
    },
];

fn every_provider(project: &str) -> String {
    format!(
        r#"version: 1
project: {project}
environments:
  production:
    branch: main
edge:
  zone: {project}.example.com
access:
  team:
    login: [google]
    allow_domains: [example.com]
apps:
  web:
    framework: nextjs
    domains: [www.{project}.example.com]
    access: public
    env:
      DATABASE_URL: {{ from: databases.main.url }}
  api:
    runtime: go
    image: us-docker.pkg.dev/acme/api:${{git.sha}}
    region: us-central1
    domains: [api.{project}.example.com]
    access: team
    env:
      LIBSQL_URL: {{ from: databases.cache.url }}
      LIBSQL_AUTH_TOKEN: {{ from: databases.cache.token }}
      LEDGER_URL: {{ from: databases.ledger.url }}
databases:
  main:
    engine: postgres
  cache:
    engine: sqlite
    location: aws-us-east-1
  ledger:
    engine: postgres
    provider: cloudsql
    region: us-central1
"#
    )
}

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

fn run_for(
    sc: &Scenario,
    project: &str,
    url: &str,
    http: &telbase::providers::http::Http,
) -> emu::Run {
    let mut run = emu::run_with(&(sc.config)(project), url, &"c".repeat(40), http.clone());
    if sc.domains {
        for app in ["web", "docs"] {
            run.add_domain(app, &format!("{app}.{project}.example.com"));
        }
    }
    run
}

struct Sample {
    wall: Duration,
    calls: u64,
    noop_reads: u64,
    noop_writes: u64,
    /// Reads of the no-change reconcile by provider and route.
    noop_routes: Vec<String>,
}

async fn sample(sc: &'static Scenario, projects: usize) -> Sample {
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
        .map(|i| run_for(sc, &format!("p{i:02}"), &url, &http))
        .collect();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for run in runs {
        tasks.spawn(async move {
            let (plan, actual) = run.plan().await.expect("observe");
            assert_eq!(plan.summary().create, sc.resources);
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
    let mut noop_routes = Vec::new();
    for (p, c) in &after.by_provider {
        for (route, n) in &c.routes {
            let was = before
                .by_provider
                .get(p)
                .and_then(|b| b.routes.get(route))
                .copied()
                .unwrap_or(0);
            if *n > was {
                noop_routes.push(format!("{p} {route} ×{}", n - was));
            }
        }
    }
    emu.stop().await;
    Sample {
        wall,
        calls,
        noop_reads: after.reads - before.reads,
        noop_writes: after.writes - before.writes,
        noop_routes,
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
    for sc in SCENARIOS {
        let one: Vec<Sample> = (0..runs).map(|_| rt.block_on(sample(sc, 1))).collect();
        let all: Vec<Sample> = (0..runs)
            .map(|_| rt.block_on(sample(sc, PROJECTS)))
            .collect();
        let t1 = median(one.iter().map(|s| s.wall).collect());
        let tn = median(all.iter().map(|s| s.wall).collect());
        let chain = (t1.as_secs_f64() / LATENCY.as_secs_f64()).floor();
        let calls = all[0].calls as f64;
        let limit = (IN_FLIGHT * sc.providers) as f64;
        let ideal = (chain + calls / limit) * LATENCY.as_secs_f64();
        let n = sc.resources;
        println!(
            "reconcile {}/1 project × {n} resources: median {:.0} ms over {runs} runs ({} calls) → longest chain ≈ {chain} calls",
            sc.name,
            t1.as_secs_f64() * 1e3,
            one[0].calls
        );
        println!(
            "reconcile {}/{PROJECTS} projects × {n} resources: median {:.0} ms over {runs} runs, {} calls, concurrency limit {limit}",
            sc.name,
            tn.as_secs_f64() * 1e3,
            all[0].calls
        );
        println!(
            "reconcile {}: ideal = chain {chain} × 20 ms + {calls} calls / {limit} × 20 ms = {:.0} ms; measured/ideal = {:.2} (target ≤ 1.5)",
            sc.name,
            ideal * 1e3,
            tn.as_secs_f64() / ideal
        );
        println!(
            "reconcile {}: no-change reconcile of one project ({n} resources): {} reads, {} writes",
            sc.name, all[0].noop_reads, all[0].noop_writes
        );
        for r in &all[0].noop_routes {
            println!("    {r}");
        }
    }
}
