//! Turso end to end against the emulator: a database (and its group) converge and then plan
//! nothing, drift is corrected, a preview gets a database seeded from production's and loses
//! it again, faults never leave duplicates, lookalikes made by hand are never adopted or
//! deleted, a database holding data is deleted only when the file allows data loss, and an
//! apply stopped after any of its writes is finished by the next one.
//! Plan goldens for Turso creates, updates and deletes live in tests/golden/plan/turso-*.

mod common;

use common::emu;
use secrecy::ExposeSecret as _;
use serde_json::json;
use telbase::apply::Outcome;
use telbase::emulator::{Config, Faults};
use telbase::model::{Environment, Kind, Output, ResourceKey};
use telbase::plan::Action;
use telbase::providers::{Change, Inputs, Scope};

const SHA: &str = "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e";

/// A Next.js app reading a Turso database's URL and token.
fn with_app(project: &str) -> String {
    format!(
        r#"version: 1
project: {project}
environments:
  production:
    branch: main
  preview:
    access: public
apps:
  web:
    framework: nextjs
    env:
      DB_URL: {{ from: databases.main.url }}
      DB_TOKEN: {{ from: databases.main.token }}
databases:
  main:
    engine: sqlite
    location: aws-us-east-1
    branch_per_preview: true
"#
    )
}

/// The database alone.
fn db_only(project: &str) -> String {
    format!(
        r#"version: 1
project: {project}
environments:
  production:
    branch: main
  preview:
    access: public
databases:
  main:
    engine: sqlite
    location: aws-us-east-1
    branch_per_preview: true
"#
    )
}

fn db_key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::TursoDatabase, name)
}

/// The same file in the preview of pull request `pr`.
fn preview(src: &str, url: &str, pr: u64) -> emu::Run {
    let mut run = emu::run(src, url, SHA, emu::http_config());
    let env = Environment::Preview { pull_request: pr };
    let (desired, _) = telbase::config::load_str(src, env).expect("valid");
    run.desired = desired;
    run.scope = Scope {
        environment: env,
        ..run.scope.clone()
    };
    run
}

/// A database (and its group, when missing) made by hand through the API.
async fn hand_made(url: &str, group: &str, name: &str) {
    let client = reqwest::Client::new();
    let base = format!("{url}/turso/v1/organizations/telbase-emulator");
    let r = client
        .post(format!("{base}/groups"))
        .bearer_auth(telbase::emulator::EMULATOR_TOKEN)
        .json(&json!({"name": group, "location": "aws-us-east-1"}))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 200 || r.status() == 409, "{}", r.status());
    let r = client
        .post(format!("{base}/databases"))
        .bearer_auth(telbase::emulator::EMULATOR_TOKEN)
        .json(&json!({"name": name, "group": group}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_then_plans_nothing_and_fetches_outputs_on_demand() {
    let emu = emu::start(Config::default()).await;
    let run = emu::run(&with_app("notes"), &emu.url(), SHA, emu::http_config());
    let (plan, actual) = run.plan().await.unwrap();
    let creates: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| s.action == Action::Create)
        .map(|s| s.key.to_string())
        .collect();
    assert_eq!(
        creates,
        [
            "turso/group/default",
            "turso/database/notes-main",
            "vercel/project/notes-web"
        ]
    );
    let report = run.apply(plan, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");
    let inv = emu.inventory();
    assert_eq!(inv["turso.groups"], 1);
    // The database, its marker, and the group's marker.
    assert_eq!(inv["turso.databases"], 3, "{inv:?}");
    assert_eq!(
        inv["turso.tokens_minted"], 1,
        "one token, for the app's env"
    );

    let before = emu.counters();
    let (plan, _) = run.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    let after = emu.counters();
    assert_eq!(
        after.writes, before.writes,
        "a no-change plan writes nothing"
    );
    let turso_reads = after.by_provider["turso"].reads - before.by_provider["turso"].reads;
    assert_eq!(
        turso_reads, 2,
        "observe lists groups and databases, nothing else"
    );
    assert_eq!(
        emu.inventory()["turso.tokens_minted"],
        1,
        "observe mints nothing"
    );

    let turso = run.registry[&telbase::model::Provider::Turso].clone();
    let db = &run.desired.resources[&db_key("notes-main")];
    let url = turso.output(&run.scope, db, Output::Url).await.unwrap();
    assert_eq!(
        url.expose_secret(),
        "libsql://notes-main-telbase-emulator.turso.io"
    );
    let token = turso.output(&run.scope, db, Output::Token).await.unwrap();
    assert_eq!(token.expose_secret().split('.').count(), 3, "a JWT");
    assert!(!format!("{token:?}").contains(token.expose_secret()));
    let e = turso
        .output(&run.scope, db, Output::Password)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("url and token"), "{e}");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_detected_and_corrected() {
    let emu = emu::start(Config::default()).await;
    let run = emu::run(&db_only("notes"), &emu.url(), SHA, emu::http_config());
    run.converge(3).await.unwrap();

    emu.drift(&json!({"provider": "turso", "database": "notes-main", "delete_protection": false}))
        .unwrap();
    let (plan, actual) = run.plan().await.unwrap();
    let changed: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| s.action != Action::NoOp)
        .flat_map(|s| {
            s.changes
                .iter()
                .map(move |c| format!("{} {}", s.key, c.path))
        })
        .collect();
    assert_eq!(changed, ["turso/database/notes-main deletion_protection"]);
    assert!(run.apply(plan, actual, 4).await.succeeded());
    let (plan, _) = run.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));

    // Deleted behind Telbase's back: its marker still says it was ours, so it is recreated.
    emu.drift(&json!({"provider": "turso", "database": "notes-main", "delete": true}))
        .unwrap();
    let (plan, actual) = run.plan().await.unwrap();
    let step = plan
        .steps
        .iter()
        .find(|s| s.key == db_key("notes-main"))
        .unwrap();
    assert_eq!(step.action, Action::Create);
    assert!(run.apply(plan, actual, 4).await.succeeded());
    assert_eq!(run.converge(2).await.unwrap(), 0);
    assert_eq!(emu.inventory()["turso.databases"], 3);
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_gets_a_seeded_database_and_loses_it_again() {
    let emu = emu::start(Config::default()).await;
    let src = db_only("notes");
    let prod = emu::run(&src, &emu.url(), SHA, emu::http_config());
    prod.converge(3).await.unwrap();

    let mut pr = preview(&src, &emu.url(), 7);
    let (plan, actual) = pr.plan().await.unwrap();
    assert_eq!(plan.summary().create, 2, "{plan:?}");
    assert!(pr.apply(plan, actual, 4).await.succeeded());
    let inv = emu.inventory();
    assert_eq!(inv["turso.databases.seeded"], 1, "{inv:?}");
    // Production's three, the preview's database and its marker; the group is reused.
    assert_eq!(inv["turso.databases"], 5, "{inv:?}");
    assert_eq!(inv["turso.groups"], 1);
    let (plan, _) = pr.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));

    // Each environment sees only its own database.
    let seen: Vec<String> = pr
        .observe()
        .await
        .unwrap()
        .resources
        .into_keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        seen,
        ["turso/group/default", "turso/database/notes-main-pr-7"]
    );
    let (plan, _) = prod.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));

    let turso = pr.registry[&telbase::model::Provider::Turso].clone();
    let db = &pr.desired.resources[&db_key("notes-main-pr-7")];
    let url = turso.output(&pr.scope, db, Output::Url).await.unwrap();
    assert_eq!(
        url.expose_secret(),
        "libsql://notes-main-pr-7-telbase-emulator.turso.io"
    );

    // The pull request closes: everything of the preview goes, production's group stays.
    pr.desired.resources.clear();
    pr.desired.reconcile.prune = true;
    let (plan, actual) = pr.plan().await.unwrap();
    // Only the preview's database: the group is production's, which a preview never
    // deletes (the planner skips what a preview shares with production).
    assert_eq!(plan.summary().delete, 1, "{plan:?}");
    assert!(pr.apply(plan, actual, 4).await.succeeded());
    // The preview sees the group only through its own databases: nothing is left to see.
    assert!(pr.observe().await.unwrap().resources.is_empty());
    let inv = emu.inventory();
    assert_eq!(inv["turso.databases"], 3, "{inv:?}");
    assert_eq!(inv["turso.groups"], 1, "{inv:?}");
    let (plan, _) = prod.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_never_leave_duplicates() {
    let faults = Faults {
        rate_5xx: 0.20,
        rate_429: 0.10,
        rate_timeout: 0.05,
        // Acted on, then cut off or garbled: as ambiguous as a timeout.
        rate_reset: 0.03,
        rate_garbage: 0.03,
        stall: std::time::Duration::from_millis(2000),
        seed: 11,
        ..Faults::default()
    };
    let emu = emu::start(Config {
        faults,
        ..Config::default()
    })
    .await;
    let projects = ["alpha", "bravo", "charlie"];
    for p in projects {
        let src = if p == "alpha" {
            with_app(p)
        } else {
            db_only(p)
        };
        let run = emu::run(&src, &emu.url(), SHA, emu::http_config());
        run.converge(25)
            .await
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        let pr = preview(&db_only(p), &emu.url(), 3);
        pr.converge(25)
            .await
            .unwrap_or_else(|e| panic!("{p} preview: {e}"));
    }
    let c = emu.counters();
    assert!(
        c.faults.get("5xx").copied().unwrap_or(0) > 5,
        "{:?}",
        c.faults
    );
    assert!(
        c.faults.get("timeout").copied().unwrap_or(0) > 0,
        "{:?}",
        c.faults
    );
    let inv = emu.inventory();
    assert_eq!(inv["turso.groups"], 1, "one shared group: {inv:?}");
    // Per project: production's database and preview's, each with its marker; plus the
    // group's marker of whichever project created it. Never more.
    assert_eq!(inv["turso.databases"], 3 * 4 + 1, "{inv:?}");
    assert_eq!(inv["turso.databases.seeded"], 3, "{inv:?}");
    assert_eq!(inv["vercel.projects"], 1, "{inv:?}");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookalikes_are_never_adopted_or_deleted() {
    let emu = emu::start(Config::default()).await;
    // Hand-made: the group `default` and a database with exactly Telbase's name.
    hand_made(&emu.url(), "default", "shop-main").await;
    let mut run = emu::run(&db_only("shop"), &emu.url(), SHA, emu::http_config());
    let (plan, actual) = run.plan().await.unwrap();
    let report = run.apply(plan, actual, 4).await;
    let outcome = |key: &str| {
        report
            .steps
            .iter()
            .find(|s| s.key.to_string() == key)
            .map(|s| s.outcome.clone())
            .unwrap()
    };
    match outcome("turso/database/shop-main") {
        Outcome::Failed { error } => {
            assert!(error.contains("was not created by Telbase"), "{error}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The existing group is used as it is, not claimed.
    assert_eq!(outcome("turso/group/default"), Outcome::Done { url: None });
    assert!(run.observe().await.unwrap().resources.is_empty());
    let e = run.registry[&telbase::model::Provider::Turso]
        .output(
            &run.scope,
            &run.desired.resources[&db_key("shop-main")],
            Output::Token,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not Telbase's"), "{e}");

    // Another project whose name starts like ours: `shop-web-main` is not `shop`'s.
    let other = emu::run(&db_only("shop-web"), &emu.url(), SHA, emu::http_config());
    other.converge(3).await.unwrap();
    assert!(run.observe().await.unwrap().resources.is_empty());

    // Pruning everything deletes nothing that is not ours: the hand-made database and
    // group stay, and so does the other project's database.
    run.desired.resources.clear();
    run.desired.reconcile.prune = true;
    let (plan, _) = run.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    let seen = other.observe().await.unwrap();
    assert!(seen.resources.contains_key(&db_key("shop-web-main")));
    assert_eq!(emu.inventory()["turso.groups"], 1);

    // And a group Telbase only uses is never deleted, even when asked to.
    let group = other.observe().await.unwrap().resources
        [&ResourceKey::new(Kind::TursoGroup, "default")]
        .clone();
    let turso = other.registry[&telbase::model::Provider::Turso].clone();
    turso
        .apply(
            &other.scope,
            Change::Delete { observed: &group },
            &Inputs::default(),
            &other.desired,
        )
        .await
        .unwrap();
    assert_eq!(emu.inventory()["turso.groups"], 1, "left in place");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_deleted_only_when_the_file_allows_it() {
    let emu = emu::start(Config::default()).await;
    let mut run = emu::run(&db_only("notes"), &emu.url(), SHA, emu::http_config());
    run.converge(3).await.unwrap();
    let full = run.desired.clone();
    let turso = run.registry[&telbase::model::Provider::Turso].clone();

    // Removed from the file with prune on: held back, and the client refuses too.
    run.desired.resources.clear();
    run.desired.reconcile.prune = true;
    let (plan, actual) = run.plan().await.unwrap();
    assert_eq!(plan.held_back.len(), 1, "{plan:?}");
    assert_eq!(plan.held_back[0].key, db_key("notes-main"));
    let observed = &actual.resources[&db_key("notes-main")];
    assert!(!observed.deletion_allowed);
    let e = turso
        .apply(
            &run.scope,
            Change::Delete { observed },
            &Inputs::default(),
            &run.desired,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("it holds data"), "{e}");
    // The group holds our database, so deleting it is refused as well.
    let group = &actual.resources[&ResourceKey::new(Kind::TursoGroup, "default")];
    let e = turso
        .apply(
            &run.scope,
            Change::Delete { observed: group },
            &Inputs::default(),
            &run.desired,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("holds nothing else"), "{e}");
    assert!(
        e.to_string()
            .contains("it still holds notes-main, 1 Telbase marker(s)"),
        "{e}"
    );
    assert_eq!(emu.inventory()["turso.databases"], 3);

    // Applied once with allow_data_loss, but Turso's delete protection is still on.
    let mut allowing = full.clone();
    for r in allowing.resources.values_mut() {
        r.allow_data_loss = true;
    }
    run.desired = allowing.clone();
    run.desired.reconcile.prune = false;
    let (plan, actual) = run.plan().await.unwrap();
    assert!(!plan.has_changes());
    // A no-change plan does not rewrite markers: an update does. Turn protection off
    // in the same apply, as a user would before removing the database.
    for r in run.desired.resources.values_mut() {
        if let telbase::model::ResourceSpec::TursoDatabase(d) = &mut r.spec {
            d.deletion_protection = false;
        }
    }
    let (plan, actual2) = run.plan().await.unwrap();
    drop(actual);
    assert_eq!(plan.summary().update, 1, "{plan:?}");
    assert!(run.apply(plan, actual2, 4).await.succeeded());
    let seen = run.observe().await.unwrap();
    assert!(seen.resources[&db_key("notes-main")].deletion_allowed);

    // Protection turned back on behind Telbase's back: the client refuses the delete.
    emu.drift(&json!({"provider": "turso", "database": "notes-main", "delete_protection": true}))
        .unwrap();
    let seen = run.observe().await.unwrap();
    let e = turso
        .apply(
            &run.scope,
            Change::Delete {
                observed: &seen.resources[&db_key("notes-main")],
            },
            &Inputs::default(),
            &run.desired,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("delete protection is on"), "{e}");
    emu.drift(&json!({"provider": "turso", "database": "notes-main", "delete_protection": false}))
        .unwrap();

    // Now removing it from the file deletes it, its marker, and the group Telbase made.
    run.desired.resources.clear();
    run.desired.reconcile.prune = true;
    let (plan, actual) = run.plan().await.unwrap();
    assert!(plan.held_back.is_empty(), "{plan:?}");
    assert_eq!(plan.summary().delete, 2);
    assert!(run.apply(plan, actual, 4).await.succeeded());
    let inv = emu.inventory();
    assert_eq!(inv["turso.databases"], 0, "{inv:?}");
    assert_eq!(inv["turso.groups"], 0, "{inv:?}");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_goldens() {
    let dir = common::root().join("tests/golden/plan");
    let emu = emu::start(Config::default()).await;
    let run = emu::run(&with_app("notes"), &emu.url(), SHA, emu::http_config());
    let (plan, actual) = run.plan().await.unwrap();
    common::assert_golden(
        &dir.join("turso-create.txt"),
        &telbase::plan::render_text(&plan),
    );
    assert!(run.apply(plan, actual, 4).await.succeeded());

    emu.drift(&json!({"provider": "turso", "database": "notes-main", "delete_protection": false}))
        .unwrap();
    let (plan, _) = run.plan().await.unwrap();
    common::assert_golden(
        &dir.join("turso-update.txt"),
        &telbase::plan::render_text(&plan),
    );

    let mut gone = emu::run(&with_app("notes"), &emu.url(), SHA, emu::http_config());
    gone.desired
        .resources
        .retain(|k, _| k.provider() != telbase::model::Provider::Turso);
    for r in gone.desired.resources.values_mut() {
        if let telbase::model::ResourceSpec::VercelProject(p) = &mut r.spec {
            p.env.clear();
        }
        // As the file without the database lowers: nothing waits for it any more.
        r.depends_on.clear();
    }
    gone.desired.reconcile.prune = true;
    let (plan, _) = gone.plan().await.unwrap();
    common::assert_golden(
        &dir.join("turso-delete-held-back.txt"),
        &telbase::plan::render_text(&plan),
    );

    // Applied once allowing data loss (and without Turso's protection), then removed. The
    // marker records `allow_data_loss` when the database is created or updated, so the
    // protection drift is undone first to make this apply an update.
    emu.drift(&json!({"provider": "turso", "database": "notes-main", "delete_protection": true}))
        .unwrap();
    let mut allowing = emu::run(&with_app("notes"), &emu.url(), SHA, emu::http_config());
    for r in allowing.desired.resources.values_mut() {
        r.allow_data_loss = true;
        if let telbase::model::ResourceSpec::TursoDatabase(d) = &mut r.spec {
            d.deletion_protection = false;
        }
    }
    allowing.converge(3).await.unwrap();
    let (plan, _) = gone.plan().await.unwrap();
    common::assert_golden(
        &dir.join("turso-delete.txt"),
        &telbase::plan::render_text(&plan),
    );
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_stopped_at_any_write_finishes_on_the_next_without_duplicates() {
    // Writes in a fresh apply: the group, its marker, the database's marker, the
    // database, its protection.
    for stop_after in 1u64..=5 {
        let emu = emu::start(Config {
            faults: Faults {
                latency: std::time::Duration::from_millis(30),
                ..Faults::default()
            },
            ..Config::default()
        })
        .await;
        let run = std::sync::Arc::new(emu::run(
            &db_only("notes"),
            &emu.url(),
            SHA,
            emu::http_config(),
        ));
        let (plan, actual) = run.plan().await.unwrap();
        let r = run.clone();
        let task = tokio::spawn(async move { r.apply(plan, actual, 4).await });
        while emu.counters().writes < stop_after && !task.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // Dropped mid-flight, like a killed process: no cleanup.
        task.abort();
        let _ = task.await;
        let stopped_at = emu.counters().writes;

        run.converge(3)
            .await
            .unwrap_or_else(|e| panic!("stopped at {stopped_at} writes: {e}"));
        let inv = emu.inventory();
        assert_eq!(inv["turso.groups"], 1, "stopped at {stopped_at}: {inv:?}");
        // The database and its marker; the group's marker unless the stop fell between
        // creating the group and marking it (then the group is used, never claimed).
        assert!(
            (2..=3).contains(&inv["turso.databases"]),
            "stopped at {stopped_at}: {inv:?}"
        );
        let seen = run.observe().await.unwrap();
        assert!(
            seen.resources.contains_key(&db_key("notes-main")),
            "stopped at {stopped_at}"
        );
        emu.stop().await;
    }
}
