//! Conformance of the Cloud SQL client and emulator: a scenario that uses every Cloud SQL
//! operation the client knows is recorded by the emulator, and every request and response
//! is checked against Google's Discovery document for the Cloud SQL Admin API v1
//! (../shared/provider-apis/gcp-cloud-sql/sqladmin.v1.discovery.json).
//!
//! The document is read by the crate's Discovery loader (`src/conformance/discovery.rs`),
//! which closes every object schema, so a field the API does not have (a misspelled
//! `sslMode`) is a violation, and gives every operation Google's error envelope
//! (`{"error": {"code", "message", "status"}}`) as its default response, since Discovery
//! documents declare none. No other deviation is relied on.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use secrecy::SecretString;
use serde_json::{Value, json};

use common::emu;
use telbase::conformance::{ApiDescription, Exchange};
use telbase::emulator::{self, EMULATOR_TOKEN};
use telbase::model::{Environment, Kind, Observed, Provider as P, ResourceSpec};
use telbase::plan::{self, Action};
use telbase::providers::google::CloudSql;
use telbase::providers::http::Http;
use telbase::providers::{Change, Credentials, Inputs, Provider, Scope};

/// Every Cloud SQL operation the client (and so the emulator) uses.
const OPERATIONS: &[&str] = &[
    "GET /v1/projects/{project}/instances",
    "POST /v1/projects/{project}/instances",
    "GET /v1/projects/{project}/instances/{instance}",
    "PATCH /v1/projects/{project}/instances/{instance}",
    "DELETE /v1/projects/{project}/instances/{instance}",
    "GET /v1/projects/{project}/instances/{instance}/databases",
    "POST /v1/projects/{project}/instances/{instance}/databases",
    "GET /v1/projects/{project}/instances/{instance}/databases/{database}",
    "DELETE /v1/projects/{project}/instances/{instance}/databases/{database}",
    "GET /v1/projects/{project}/instances/{instance}/users",
    "POST /v1/projects/{project}/instances/{instance}/users",
    "PUT /v1/projects/{project}/instances/{instance}/users",
    "GET /v1/projects/{project}/instances/{instance}/users/{name}",
    "GET /v1/projects/{project}/operations",
    "GET /v1/projects/{project}/operations/{operation}",
];

fn discovery() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/provider-apis/gcp-cloud-sql/sqladmin.v1.discovery.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the Discovery document"))
        .expect("valid JSON")
}

const CONFIG: &str = r#"
version: 1
project: ledger
environments:
  production:
    branch: main
databases:
  db:
    engine: postgres
    provider: cloudsql
    region: us-central1
    version: 16
    tier: db-custom-1-3840
    disk_gb: 20
"#;

async fn scenario(url: &str) {
    let creds = Credentials {
        emulator: Some(url.to_owned()),
        ..Credentials::default()
    };
    let sql = CloudSql::new(
        Http::new(emu::http_config()).unwrap(),
        creds.endpoint(P::CloudSql).unwrap(),
        &creds,
    )
    .unwrap();
    let (mut desired, _) = telbase::config::load_str(CONFIG, Environment::Production).unwrap();
    let scope = Scope {
        project: desired.project.clone(),
        environment: Environment::Production,
        git: None,
    };
    let mut inputs = Inputs::default();
    inputs
        .env
        .insert("password".into(), SecretString::from("pw-conformance"));
    let converge = |desired: telbase::model::DesiredState| {
        let sql = &sql;
        let scope = &scope;
        let inputs = &inputs;
        async move {
            for _ in 0..4 {
                let actual = telbase::model::ActualState {
                    resources: sql
                        .observe(scope)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|o| (o.key.clone(), o))
                        .collect(),
                };
                let p = plan::plan(&desired, &actual);
                let mut any = false;
                for st in p.steps.iter().filter(|s| s.key.provider() == P::CloudSql) {
                    let change = match st.action {
                        Action::NoOp => continue,
                        Action::Create => Change::Create {
                            desired: &desired.resources[&st.key],
                        },
                        Action::Update => Change::Update {
                            desired: &desired.resources[&st.key],
                            observed: &actual.resources[&st.key],
                            changes: &st.changes,
                        },
                        Action::Replace => Change::Replace {
                            desired: &desired.resources[&st.key],
                            observed: &actual.resources[&st.key],
                        },
                        Action::Delete => Change::Delete {
                            observed: &actual.resources[&st.key],
                        },
                    };
                    sql.apply(scope, change, inputs, &desired).await.unwrap();
                    any = true;
                }
                if !any {
                    return;
                }
            }
            panic!("not converged");
        }
    };

    // Someone else's instance beside ours, so lists page and lookalikes are skipped.
    let http = reqwest::Client::new();
    http.post(format!("{url}/cloud-sql/v1/projects/telbase-emulator/instances"))
        .bearer_auth(EMULATOR_TOKEN)
        .json(&json!({"name": "other-db", "databaseVersion": "POSTGRES_15", "settings": {"tier": "db-f1-micro"}}))
        .send()
        .await
        .unwrap();

    // 1. Create instance, user and database; again (existing user: PUT).
    converge(desired.clone()).await;
    let user = desired
        .resources
        .values()
        .find(|r| r.key.kind == Kind::CloudSqlUser)
        .unwrap()
        .clone();
    sql.apply(&scope, Change::Create { desired: &user }, &inputs, &desired)
        .await
        .unwrap();

    // 2. Drift, corrected by PATCH; a database deleted behind our back, made again.
    let drift = |body: Value| {
        let url = url.to_owned();
        async move {
            reqwest::Client::new()
                .post(format!("{url}/_admin/drift"))
                .json(&body)
                .send()
                .await
                .unwrap();
        }
    };
    drift(json!({"provider": "cloud-sql", "instance": "ledger-db", "backups": false, "delete_database": "db"})).await;
    converge(desired.clone()).await;

    // 3. The file allows data loss and turns protection off; then drops the database.
    for r in desired.resources.values_mut() {
        r.allow_data_loss = r.spec.holds_data();
        if let ResourceSpec::CloudSqlInstance(i) = &mut r.spec {
            i.deletion_protection = false;
        }
    }
    converge(desired.clone()).await;
    let observed: Vec<Observed> = sql.observe(&scope).await.unwrap();
    let mut order = observed.clone();
    order.sort_by_key(|o| o.key.kind.teardown_rank());
    for o in &order {
        sql.apply(&scope, Change::Delete { observed: o }, &inputs, &desired)
            .await
            .unwrap();
    }
    assert!(sql.observe(&scope).await.unwrap().is_empty());
}

#[tokio::test]
async fn cloud_sql_traffic_matches_the_discovery_document() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("traffic.jsonl");
    let emu = emu::start(emulator::Config {
        page_size: 1,
        async_polls: 1,
        record: Some(record.clone()),
        ..emulator::Config::default()
    })
    .await;
    scenario(&emu.url()).await;
    emu.stop().await;

    let api = ApiDescription::from_discovery(&discovery()).expect("the Discovery document loads");
    let report = api.compile_all();
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    let text = std::fs::read_to_string(&record).unwrap();
    let mut used = BTreeSet::new();
    let mut violations = Vec::new();
    let mut n = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["provider"] != "cloud-sql" {
            continue;
        }
        n += 1;
        let ex = Exchange {
            method: v["method"].as_str().unwrap().to_owned(),
            path: v["path"].as_str().unwrap().to_owned(),
            query: serde_json::from_value(v["query"].clone()).unwrap(),
            request_body: v.get("request_body").filter(|b| !b.is_null()).cloned(),
            status: v["status"].as_u64().unwrap() as u16,
            response_body: v.get("response_body").filter(|b| !b.is_null()).cloned(),
        };
        if let Some(op) = api.operation_for(&ex.method, &ex.path) {
            used.insert(op);
        }
        for viol in api.check(&ex) {
            violations.push(format!("{} {}: {viol:?}", ex.method, ex.path));
        }
    }
    assert!(n > 30, "the scenario made {n} calls");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    for op in OPERATIONS {
        assert!(used.contains(*op), "{op} was not exercised; used: {used:?}");
    }
    // No password on record.
    assert!(!text.contains("pw-conformance"));
}

#[test]
fn the_checker_catches_fields_the_api_does_not_have() {
    let api = ApiDescription::from_discovery(&discovery()).unwrap();
    let ex = |body: Value| Exchange {
        method: "POST".into(),
        path: "/v1/projects/p/instances".into(),
        query: vec![],
        request_body: Some(body),
        status: 200,
        response_body: Some(json!({"kind": "sql#operation", "name": "op-1", "status": "PENDING"})),
    };
    let good = json!({"name": "x", "databaseVersion": "POSTGRES_16", "settings": {"tier": "db-f1-micro", "ipConfiguration": {"sslMode": "ENCRYPTED_ONLY"}}});
    assert!(api.check(&ex(good)).is_empty());
    let misspelled = json!({"name": "x", "settings": {"tier": "db-f1-micro", "ipConfiguration": {"ssl_mode": "ENCRYPTED_ONLY"}}});
    assert!(!api.check(&ex(misspelled)).is_empty());
    let wrong_type = json!({"name": "x", "settings": {"deletionProtectionEnabled": "yes"}});
    assert!(!api.check(&ex(wrong_type)).is_empty());
    let wrong_enum = json!({"name": "x", "settings": {"ipConfiguration": {"sslMode": "ALWAYS"}}});
    assert!(!api.check(&ex(wrong_enum)).is_empty());
}
