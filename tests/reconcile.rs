//! The reconcile loop end to end against the emulator: apply converges, a second plan is
//! empty, drift made behind Telbase's back is detected and corrected, ownership keeps
//! foreign resources out, and faults (5xx, 429, timeouts, resets, garbage) never leave
//! duplicates behind.

mod common;

use common::emu;
use serde_json::json;
use telbase::apply::Outcome;
use telbase::emulator::{Config, Faults};
use telbase::plan::Action;

const SHA: &str = "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_converges_then_plans_nothing_and_writes_nothing() {
    let emu = emu::start(Config::default()).await;
    let run = emu::run(
        &emu::quickstart("notes"),
        &emu.url(),
        SHA,
        emu::http_config(),
    );
    let (plan, actual) = run.plan().await.unwrap();
    assert_eq!(plan.summary().create, 3, "{plan:?}");
    let report = run.apply(plan, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");
    let inv = emu.inventory();
    assert_eq!(inv["vercel.projects"], 1);
    assert_eq!(inv["vercel.deployments"], 1);
    assert_eq!(inv["neon.projects"], 1);
    assert_eq!(inv["neon.databases"], 1, "no stray neondb beside ours");

    let writes_before = emu.counters().writes;
    let reads_before = emu.counters().reads;
    let (plan, _) = run.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    let c = emu.counters();
    assert_eq!(
        c.writes, writes_before,
        "a no-change plan makes no write calls"
    );
    // Vercel: list projects, list domains. Neon: list projects (two pages: the cursor
    // page and the empty one after it), branches, databases.
    let reads = c.reads - reads_before;
    assert!(reads <= 6, "{reads} reads for one project");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_detected_and_corrected() {
    let emu = emu::start(Config::default()).await;
    let run = emu::run(
        &emu::quickstart("notes"),
        &emu.url(),
        SHA,
        emu::http_config(),
    );
    run.converge(3).await.unwrap();
    emu.drift(&json!({"provider": "vercel", "project": "notes-web", "set": {"buildCommand": "make", "framework": "vite"}, "set_env": {"SITE": "hacked"}}))
        .unwrap();
    emu.drift(&json!({"provider": "neon", "project": "notes-main", "protected": false, "database_owner": "intruder"}))
        .unwrap();
    let (plan, actual) = run.plan().await.unwrap();
    let changed: Vec<_> = plan
        .steps
        .iter()
        .filter(|s| s.action == Action::Update)
        .flat_map(|s| {
            s.changes
                .iter()
                .map(move |c| format!("{} {}", s.key, c.path))
        })
        .collect();
    assert_eq!(
        changed,
        [
            "neon/project/notes-main deletion_protection",
            "neon/database/notes-main owner",
            "vercel/project/notes-web build_command",
            "vercel/project/notes-web env.SITE.plain",
            "vercel/project/notes-web framework",
        ]
    );
    let report = run.apply(plan, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");
    let (plan, _) = run.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    // Correcting settings never redeploys: the commit did not change.
    assert_eq!(emu.inventory()["vercel.deployments"], 1);
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_commit_deploys_and_promotes() {
    let emu = emu::start(Config::default()).await;
    let run = emu::run(
        &emu::quickstart("notes"),
        &emu.url(),
        SHA,
        emu::http_config(),
    );
    run.converge(3).await.unwrap();
    let next = emu::run(
        &emu::quickstart("notes"),
        &emu.url(),
        "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
        emu::http_config(),
    );
    let (plan, actual) = next.plan().await.unwrap();
    let step = plan
        .steps
        .iter()
        .find(|s| s.action == Action::Update)
        .expect("an update");
    assert_eq!(step.changes[0].path, "production_commit");
    let report = next.apply(plan, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(emu.inventory()["vercel.deployments"], 2);
    let (plan, _) = next.plan().await.unwrap();
    assert!(!plan.has_changes());
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_fails_its_step_with_the_build_error() {
    let emu = emu::start(Config::default()).await;
    // The emulator fails builds of commits whose sha starts with "badbadbad".
    let run = emu::run(
        &emu::quickstart("notes"),
        &emu.url(),
        "badbadbad0000000000000000000000000000000",
        emu::http_config(),
    );
    let (plan, actual) = run.plan().await.unwrap();
    let report = run.apply(plan, actual, 4).await;
    let web = report
        .steps
        .iter()
        .find(|s| s.key.name == "notes-web")
        .unwrap();
    match &web.outcome {
        Outcome::Failed { error } => {
            assert!(error.contains("the build ended ERROR"), "{error}");
            assert!(error.contains("npm run build"), "{error}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // What the app stands on was created; only the app's own step failed.
    assert_eq!(report.count(|o| matches!(o, Outcome::Done { .. })), 2);
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_never_see_each_other_or_hand_made_lookalikes() {
    let emu = emu::start(Config::default()).await;
    let a = emu::run(
        &emu::quickstart("notes"),
        &emu.url(),
        SHA,
        emu::http_config(),
    );
    let b = emu::run(
        &emu::quickstart("notesapp"),
        &emu.url(),
        SHA,
        emu::http_config(),
    );
    a.converge(3).await.unwrap();
    b.converge(3).await.unwrap();
    // "notes-" prefix matches "notesapp-…"? No: the marker says which project owns it.
    let seen: Vec<_> = a
        .observe()
        .await
        .unwrap()
        .resources
        .into_keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        seen,
        [
            "vercel/project/notes-web",
            "neon/project/notes-main",
            "neon/database/notes-main"
        ]
    );

    // A project somebody made by hand with our name is not adopted and not touched.
    let c = emu::run(
        &emu::quickstart("shop"),
        &emu.url(),
        SHA,
        emu::http_config(),
    );
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/vercel/v11/projects", emu.url()))
        .bearer_auth(telbase::emulator::EMULATOR_TOKEN)
        .json(&json!({"name": "shop-web"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (plan, actual) = c.plan().await.unwrap();
    let report = c.apply(plan, actual, 4).await;
    let web = report
        .steps
        .iter()
        .find(|s| s.key.name == "shop-web")
        .unwrap();
    match &web.outcome {
        Outcome::Failed { error } => {
            assert!(error.contains("was not created by Telbase"), "{error}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_never_leave_duplicates_and_apply_converges() {
    let faults = Faults {
        rate_5xx: 0.20,
        rate_429: 0.10,
        rate_timeout: 0.05,
        rate_reset: 0.03,
        rate_garbage: 0.03,
        stall: std::time::Duration::from_millis(2000),
        seed: 7,
        ..Faults::default()
    };
    let emu = emu::start(Config {
        faults,
        ..Config::default()
    })
    .await;
    let projects = ["alpha", "bravo", "charlie"];
    for p in projects {
        let run = emu::run(&emu::quickstart(p), &emu.url(), SHA, emu::http_config());
        let rounds = run
            .converge(25)
            .await
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(rounds >= 1);
    }
    let c = emu.counters();
    assert!(
        c.faults.get("5xx").copied().unwrap_or(0) > 5,
        "faults were injected: {:?}",
        c.faults
    );
    assert!(
        c.faults.get("timeout").copied().unwrap_or(0) > 0,
        "{:?}",
        c.faults
    );
    let inv = emu.inventory();
    let n = projects.len() as u64;
    assert_eq!(inv["vercel.projects"], n, "{inv:?}");
    assert_eq!(inv["neon.projects"], n, "{inv:?}");
    assert_eq!(inv["neon.databases"], n, "{inv:?}");
    assert_eq!(
        inv["vercel.deployments"], n,
        "one deployment per project: {inv:?}"
    );
    // Each project: the marker and two env vars, never doubled.
    assert_eq!(inv["vercel.env"], 3 * n, "{inv:?}");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_stops_only_what_depends_on_it() {
    use telbase::model::{Kind, ResourceKey};
    let emu = emu::start(Config::default()).await;
    let src =
        emu::quickstart("shop").replace("databases:", "  docs:\n    framework: astro\ndatabases:");
    let mut run = emu::run(&src, &emu.url(), SHA, emu::http_config());
    for app in ["web", "docs"] {
        run.add_domain(app, &format!("{app}.shop.example"));
    }
    // Somebody's hand-made `shop-web` makes Telbase's `shop-web` step fail.
    let r = reqwest::Client::new()
        .post(format!("{}/vercel/v11/projects", emu.url()))
        .bearer_auth(telbase::emulator::EMULATOR_TOKEN)
        .json(&json!({"name": "shop-web"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (plan, actual) = run.plan().await.unwrap();
    let report = run.apply(plan, actual, 4).await;
    let outcome = |name: &str| {
        report
            .steps
            .iter()
            .find(|s| s.key.name == name)
            .map(|s| s.outcome.clone())
            .unwrap()
    };
    assert!(matches!(outcome("shop-web"), Outcome::Failed { .. }));
    assert_eq!(
        outcome("web.shop.example"),
        Outcome::Skipped {
            because: ResourceKey::new(Kind::VercelProject, "shop-web")
        }
    );
    assert!(matches!(outcome("shop-docs"), Outcome::Done { .. }));
    assert!(matches!(outcome("docs.shop.example"), Outcome::Done { .. }));
    assert!(matches!(outcome("shop-main"), Outcome::Done { .. }));
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_longer_than_a_page_are_followed_to_the_end() {
    // Five databases and four apps: more than the emulator's three per page everywhere.
    let mut src = String::from(
        "version: 1\nproject: big\nenvironments:\n  production:\n    branch: main\napps:\n",
    );
    for a in ["a1", "a2", "a3", "a4"] {
        src += &format!("  {a}:\n    framework: vite\n");
    }
    src += "databases:\n";
    for d in ["d1", "d2", "d3", "d4", "d5"] {
        src += &format!("  {d}:\n    engine: postgres\n");
    }
    let emu = emu::start(Config::default()).await;
    let run = emu::run(&src, &emu.url(), SHA, emu::http_config());
    run.converge(3).await.unwrap();
    let seen = run.observe().await.unwrap();
    assert_eq!(
        seen.resources.len(),
        4 + 5 * 2,
        "{:?}",
        seen.resources.keys()
    );
    emu.stop().await;
}
