//! Conformance of the Turso client and emulator: a run that uses every Turso operation the
//! client knows (production with an app reading the database's URL and token, drift
//! corrected, a seeded preview created and torn down, the database and its group deleted)
//! is recorded, and every Turso exchange is checked against Turso's published OpenAPI
//! description (../shared/provider-apis/turso/turso-openapi.json).
//!
//! Deviations of the real API from its description that the client relies on, each one
//! listed here so nothing else slips through:
//! - (none the client relies on). Not described and UNVERIFIED, so the client does not
//!   depend on them: the status Turso sends when deleting a database that has
//!   `delete_protection` on (the client refuses before sending), and whether a group's
//!   `primary` carries the `aws-` prefix its `locations` have (the description's examples
//!   differ; the client reads `primary`, falling back to `locations[0]`).

mod common;

use std::collections::BTreeSet;

use common::emu;
use serde_json::{Value, json};
use telbase::conformance::{ApiDescription, Exchange};
use telbase::emulator::Config;
use telbase::model::{Environment, Kind, Output, ResourceKey};
use telbase::providers::Scope;

const SHA: &str = "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e";

/// Every Turso operation the client uses, as the description names them.
const TURSO_OPERATIONS: &[&str] = &[
    "GET /v1/organizations/{organizationSlug}/groups",
    "POST /v1/organizations/{organizationSlug}/groups",
    "DELETE /v1/organizations/{organizationSlug}/groups/{groupName}",
    "GET /v1/organizations/{organizationSlug}/databases",
    "POST /v1/organizations/{organizationSlug}/databases",
    "DELETE /v1/organizations/{organizationSlug}/databases/{databaseName}",
    "PATCH /v1/organizations/{organizationSlug}/databases/{databaseName}/configuration",
    "POST /v1/organizations/{organizationSlug}/databases/{databaseName}/auth/tokens",
];

/// Statuses the real API sends that its description leaves out and that the client relies
/// on, by operation. None so far: the client treats a 404 on `DELETE` (declared) as done and
/// a 409 on `POST` (declared) as "look again"; see the module comment for what is left
/// unverified.
const UNDECLARED_BUT_REAL: &[(&str, u16)] = &[];

const CONFIG: &str = r#"version: 1
project: notes
environments:
  production:
    branch: main
  preview:
    access: public
apps:
  web:
    framework: nextjs
    env:
      DB_URL: { from: databases.main.url }
      DB_TOKEN: { from: databases.main.token }
databases:
  main:
    engine: sqlite
    group: notes-group
    location: aws-us-east-1
    branch_per_preview: true
"#;

async fn scenario(url: &str) {
    // 1. Create the group, the database (marked, protected), the app with URL and token.
    let run = emu::run(CONFIG, url, SHA, emu::http_config());
    run.converge(3).await.unwrap();

    // 2. Drift on protection, corrected.
    emu_drift(
        url,
        json!({"provider": "turso", "database": "notes-main", "delete_protection": false}),
    )
    .await;
    run.converge(3).await.unwrap();

    // 3. A seeded preview: created, its token minted, torn down.
    let env = Environment::Preview { pull_request: 7 };
    let mut pr = emu::run(CONFIG, url, SHA, emu::http_config());
    pr.desired = telbase::config::load_str(CONFIG, env).unwrap().0;
    pr.desired
        .resources
        .retain(|k, _| k.provider() == telbase::model::Provider::Turso);
    pr.scope = Scope {
        environment: env,
        ..run.scope.clone()
    };
    pr.converge(3).await.unwrap();
    let turso = pr.registry[&telbase::model::Provider::Turso].clone();
    let key = ResourceKey::new(Kind::TursoDatabase, "notes-main-pr-7");
    let token = turso
        .output(&pr.scope, &pr.desired.resources[&key], Output::Token)
        .await
        .unwrap();
    assert!(!secrecy::ExposeSecret::expose_secret(&token).is_empty());
    pr.desired.resources.clear();
    pr.desired.reconcile.prune = true;
    pr.converge(3).await.unwrap();

    // 4. The database leaves the file after an apply allowing data loss: it, its marker,
    // and the group Telbase created are deleted.
    let mut allowing = emu::run(CONFIG, url, SHA, emu::http_config());
    for r in allowing.desired.resources.values_mut() {
        r.allow_data_loss = true;
        if let telbase::model::ResourceSpec::TursoDatabase(d) = &mut r.spec {
            d.deletion_protection = false;
        }
    }
    allowing.converge(3).await.unwrap();
    allowing
        .desired
        .resources
        .retain(|k, _| k.provider() != telbase::model::Provider::Turso);
    for r in allowing.desired.resources.values_mut() {
        if let telbase::model::ResourceSpec::VercelProject(p) = &mut r.spec {
            p.env.clear();
        }
        // As the file without the database lowers: nothing waits for it any more.
        r.depends_on.clear();
    }
    allowing.desired.reconcile.prune = true;
    let (plan, actual) = allowing.plan().await.unwrap();
    let report = allowing.apply(plan, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");
    allowing.converge(3).await.unwrap();
    let left = allowing.observe().await.unwrap();
    assert!(
        left.resources
            .keys()
            .all(|k| k.provider() != telbase::model::Provider::Turso),
        "{:?}",
        left.resources.keys()
    );
}

async fn emu_drift(url: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/_admin/drift"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_turso_operation_conforms_to_the_published_description() {
    let Some(apis) = common::provider_apis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("traffic.jsonl");
    let emu = emu::start(Config {
        record: Some(record.clone()),
        ..Config::default()
    })
    .await;
    scenario(&emu.url()).await;
    let inv = emu.inventory();
    assert_eq!(inv["turso.databases"], 0, "{inv:?}");
    assert_eq!(inv["turso.groups"], 0, "{inv:?}");
    emu.stop().await;

    let turso = ApiDescription::from_file(&apis.join("turso/turso-openapi.json")).unwrap();
    // The check has teeth: a field Turso does not have, or a wrong type, is a violation.
    let bad = Exchange {
        method: "POST".into(),
        path: "/v1/organizations/acme/databases".into(),
        query: vec![],
        request_body: Some(json!({"name": "x", "group": "g", "seed": {"type": "snapshot"}})),
        status: 200,
        response_body: Some(json!({"database": {"Name": 7}})),
    };
    assert!(turso.check(&bad).len() >= 2, "{:?}", turso.check(&bad));
    let text = std::fs::read_to_string(&record).unwrap();
    let mut covered = BTreeSet::new();
    let mut violations = Vec::new();
    let mut exchanges = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v.get("fault").is_none(), "no faults were asked for: {line}");
        // Vercel's exchanges are checked by tests/conformance.rs.
        if v["provider"] != "turso" {
            continue;
        }
        let ex: Exchange = serde_json::from_value(v).unwrap();
        exchanges += 1;
        let op = turso
            .operation_for(&ex.method, &ex.path)
            .unwrap_or_else(|| format!("{} {}", ex.method, ex.path));
        covered.insert(op.clone());
        for violation in turso.check(&ex) {
            let allowed = UNDECLARED_BUT_REAL
                .iter()
                .any(|(o, s)| *o == op && *s == ex.status)
                && violation.message.contains("status");
            if !allowed {
                violations.push(format!("{}: {}", violation.operation, violation.message));
            }
        }
    }
    assert!(exchanges > 20, "only {exchanges} Turso exchanges recorded");
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    let missing: Vec<_> = TURSO_OPERATIONS
        .iter()
        .filter(|o| !covered.contains(**o))
        .collect();
    assert!(missing.is_empty(), "the scenario never used {missing:?}");
    let unexpected: Vec<_> = covered
        .iter()
        .filter(|o| !TURSO_OPERATIONS.contains(&o.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "the client used operations this test does not list: {unexpected:?}"
    );
    // Tokens never reach the recording: the emulator's JWTs start like every JWT does.
    assert!(
        !text.contains("eyJ"),
        "a database token reached the recording"
    );
}
