//! Cloud SQL through the `Provider` trait against the emulator: create an instance, its user
//! (with a password passed as an input, as the executor does) and its database; observe them
//! back equal to the desired specs; correct drift; converge under faults without duplicates;
//! refuse deletes that deletion protection or the plan forbid; refuse a hand-made lookalike;
//! and compose the connection string with the password read from Secret Manager.

mod common;

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use common::emu;
use telbase::emulator::{self, Faults, Handle};
use telbase::model::{
    ActualState, DesiredState, Environment, Kind, Observed, Output, Provider as P, Resource,
    ResourceSpec,
};
use telbase::plan::{self, Action};
use telbase::providers::google::CloudSql;
use telbase::providers::http::{Endpoint, Http};
use telbase::providers::{Change, Credentials, Inputs, Provider, Scope};

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
    deletion_protection: true
"#;

const PASSWORD: &str = "pw-Zx9_generated-secret";

struct Setup {
    emu: Handle,
    sql: CloudSql,
    desired: DesiredState,
    scope: Scope,
}

async fn setup(config: emulator::Config) -> Setup {
    let emu = emu::start(config).await;
    let creds = Credentials {
        emulator: Some(emu.url()),
        ..Credentials::default()
    };
    let http = Http::new(emu::http_config()).unwrap();
    let sql = CloudSql::new(http, creds.endpoint(P::CloudSql).unwrap(), &creds).unwrap();
    let (desired, _) = telbase::config::load_str(CONFIG, Environment::Production).unwrap();
    let scope = Scope {
        project: desired.project.clone(),
        environment: Environment::Production,
        git: None,
    };
    Setup {
        emu,
        sql,
        desired,
        scope,
    }
}

fn inputs() -> Inputs {
    let mut i = Inputs::default();
    i.env
        .insert("password".into(), SecretString::from(PASSWORD.to_owned()));
    i
}

impl Setup {
    fn resource(&self, kind: Kind) -> &Resource {
        self.desired
            .resources
            .values()
            .find(|r| r.key.kind == kind)
            .expect("the config has it")
    }

    async fn actual(&self) -> Result<ActualState, telbase::providers::ProviderError> {
        let observed = self.sql.observe(&self.scope).await?;
        Ok(ActualState {
            resources: observed.into_iter().map(|o| (o.key.clone(), o)).collect(),
        })
    }

    /// The Cloud SQL steps of a plan against what is observed now.
    async fn steps(&self) -> Result<Vec<plan::Step>, telbase::providers::ProviderError> {
        let actual = self.actual().await?;
        Ok(plan::plan(&self.desired, &actual)
            .steps
            .into_iter()
            .filter(|s| s.key.provider() == P::CloudSql)
            .collect())
    }

    /// Carry out the Cloud SQL steps of one plan in order; stop at the first failure.
    async fn apply_once(&self) -> Result<usize, String> {
        let actual = self.actual().await.map_err(|e| e.to_string())?;
        let p = plan::plan(&self.desired, &actual);
        let mut done = 0;
        for step in p.steps.iter().filter(|s| s.key.provider() == P::CloudSql) {
            let desired = self.desired.resources.get(&step.key);
            let observed = actual.resources.get(&step.key);
            let change = match (step.action, desired, observed) {
                (Action::NoOp, ..) => continue,
                (Action::Create, Some(d), _) => Change::Create { desired: d },
                (Action::Update, Some(d), Some(o)) => Change::Update {
                    desired: d,
                    observed: o,
                    changes: &step.changes,
                },
                (Action::Replace, Some(d), Some(o)) => Change::Replace {
                    desired: d,
                    observed: o,
                },
                (Action::Delete, _, Some(o)) => Change::Delete { observed: o },
                other => return Err(format!("unexpected step {other:?}")),
            };
            self.sql
                .apply(&self.scope, change, &inputs(), &self.desired)
                .await
                .map_err(|e| e.to_string())?;
            done += 1;
        }
        Ok(done)
    }

    /// Plan and apply until nothing is left, at most `rounds` times.
    async fn converge(&self, rounds: usize) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..rounds {
            match self.apply_once().await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        Err(format!(
            "not converged after {rounds} rounds; last error: {last}"
        ))
    }

    fn count(&self, what: &str) -> u64 {
        self.emu.inventory().get(what).copied().unwrap_or(0)
    }
}

fn quick() -> emulator::Config {
    emulator::Config {
        page_size: 2,
        async_polls: 2,
        ..emulator::Config::default()
    }
}

#[tokio::test]
async fn create_then_observe_equal() {
    let s = setup(quick()).await;
    assert!(s.actual().await.unwrap().resources.is_empty());
    let steps = s.steps().await.unwrap();
    assert_eq!(steps.len(), 3);
    assert!(steps.iter().all(|st| st.action == Action::Create));

    s.converge(3).await.unwrap();
    let actual = s.actual().await.unwrap();
    assert_eq!(actual.resources.len(), 3, "{actual:#?}");
    for o in actual.resources.values() {
        let want = &s.desired.resources[&o.key];
        assert_eq!(o.spec, want.spec, "{} observed as desired", o.key);
        assert!(!o.deletion_allowed);
    }
    // A second look plans nothing for Cloud SQL.
    assert!(
        s.steps()
            .await
            .unwrap()
            .iter()
            .all(|st| st.action == Action::NoOp)
    );
    assert_eq!(s.count("cloud_sql.instances"), 1);
    // Postgres's own `postgres` database and user, and ours.
    assert_eq!(s.count("cloud_sql.databases"), 2);
    assert_eq!(s.count("cloud_sql.users"), 2);

    // Applying the same creates again (a rerun after a crash) makes nothing new.
    for kind in [
        Kind::CloudSqlInstance,
        Kind::CloudSqlUser,
        Kind::CloudSqlDatabase,
    ] {
        s.sql
            .apply(
                &s.scope,
                Change::Create {
                    desired: s.resource(kind),
                },
                &inputs(),
                &s.desired,
            )
            .await
            .unwrap();
    }
    assert_eq!(s.count("cloud_sql.instances"), 1);
    assert_eq!(s.count("cloud_sql.databases"), 2);
    assert_eq!(s.count("cloud_sql.users"), 2);
}

#[tokio::test]
async fn the_instance_is_created_safe() {
    let s = setup(quick()).await;
    s.converge(3).await.unwrap();
    // Read it as the API shows it: protected, backed up, TLS only, labelled.
    let http = reqwest::Client::new();
    let v: Value = http
        .get(format!(
            "{}/cloud-sql/v1/projects/telbase-emulator/instances/ledger-db",
            s.emu.url()
        ))
        .bearer_auth(emulator::EMULATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "RUNNABLE");
    assert_eq!(v["databaseVersion"], "POSTGRES_16");
    assert_eq!(v["settings"]["deletionProtectionEnabled"], true);
    assert_eq!(v["settings"]["backupConfiguration"]["enabled"], true);
    assert_eq!(
        v["settings"]["backupConfiguration"]["pointInTimeRecoveryEnabled"],
        true
    );
    assert_eq!(
        v["settings"]["ipConfiguration"]["sslMode"],
        "ENCRYPTED_ONLY"
    );
    assert_eq!(v["settings"]["edition"], "ENTERPRISE");
    assert_eq!(v["settings"]["userLabels"]["telbase-project"], "ledger");
    assert_eq!(
        v["settings"]["userLabels"]["telbase-environment"],
        "production"
    );
    assert_eq!(v["settings"]["userLabels"]["telbase-database"], "db");
}

#[tokio::test]
async fn drift_is_detected_and_corrected() {
    let s = setup(quick()).await;
    s.converge(3).await.unwrap();
    s.emu
        .drift(&json!({"provider": "cloud-sql", "instance": "ledger-db", "backups": false, "deletion_protection": false, "ssl_mode": "ALLOW_UNENCRYPTED_AND_ENCRYPTED"}))
        .unwrap();
    let steps = s.steps().await.unwrap();
    let inst = steps
        .iter()
        .find(|st| st.key.kind == Kind::CloudSqlInstance)
        .unwrap();
    assert_eq!(inst.action, Action::Update);
    let paths: Vec<&str> = inst.changes.iter().map(|c| c.path.as_str()).collect();
    for p in ["backups", "deletion_protection", "ssl_required"] {
        assert!(paths.iter().any(|x| x.ends_with(p)), "{p} in {paths:?}");
    }

    s.emu
        .drift(&json!({"provider": "cloud-sql", "instance": "ledger-db", "delete_database": "db"}))
        .unwrap();
    let steps = s.steps().await.unwrap();
    assert!(
        steps
            .iter()
            .any(|st| st.key.kind == Kind::CloudSqlDatabase && st.action == Action::Create)
    );

    s.converge(4).await.unwrap();
    let actual = s.actual().await.unwrap();
    let ResourceSpec::CloudSqlInstance(i) = &actual
        .resources
        .values()
        .find(|o| o.key.kind == Kind::CloudSqlInstance)
        .unwrap()
        .spec
    else {
        panic!()
    };
    assert!(i.backups && i.deletion_protection && i.ssl_required);
    assert_eq!(s.count("cloud_sql.databases"), 2);
}

#[tokio::test]
async fn faults_converge_without_duplicates() {
    let s = setup(emulator::Config {
        page_size: 2,
        async_polls: 2,
        faults: Faults {
            rate_429: 0.08,
            rate_5xx: 0.08,
            rate_timeout: 0.04,
            rate_reset: 0.05,
            rate_garbage: 0.05,
            stall: Duration::from_secs(2),
            seed: 7,
            ..Faults::default()
        },
        ..emulator::Config::default()
    })
    .await;
    s.converge(40).await.unwrap();
    assert_eq!(s.count("cloud_sql.instances"), 1);
    assert_eq!(s.count("cloud_sql.databases"), 2);
    assert_eq!(s.count("cloud_sql.users"), 2);
    let faults: u64 = s.emu.counters().faults.values().sum();
    assert!(faults > 0, "the run saw faults");
}

#[tokio::test]
async fn deletes_respect_protection_and_the_plan() {
    let s = setup(quick()).await;
    s.converge(3).await.unwrap();
    let actual = s.actual().await.unwrap();
    let inst: Observed = actual
        .resources
        .values()
        .find(|o| o.key.kind == Kind::CloudSqlInstance)
        .unwrap()
        .clone();

    // The plan never allowed data loss: refused before any call.
    let e = s
        .sql
        .apply(
            &s.scope,
            Change::Delete { observed: &inst },
            &Inputs::default(),
            &s.desired,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("data loss"), "{e}");

    // Allowed by the plan, but deletion protection is on at Cloud SQL.
    let allowed = Observed {
        deletion_allowed: true,
        ..inst.clone()
    };
    let e = s
        .sql
        .apply(
            &s.scope,
            Change::Delete { observed: &allowed },
            &Inputs::default(),
            &s.desired,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("deletion protection"), "{e}");
    assert_eq!(s.count("cloud_sql.instances"), 1);

    // A database delete the plan did not allow is refused too.
    let db = actual
        .resources
        .values()
        .find(|o| o.key.kind == Kind::CloudSqlDatabase)
        .unwrap();
    assert!(
        s.sql
            .apply(
                &s.scope,
                Change::Delete { observed: db },
                &Inputs::default(),
                &s.desired
            )
            .await
            .is_err()
    );
    assert_eq!(s.count("cloud_sql.databases"), 2);

    // Protection off and loss allowed: it goes.
    s.emu
        .drift(&json!({"provider": "cloud-sql", "instance": "ledger-db", "deletion_protection": false}))
        .unwrap();
    s.sql
        .apply(
            &s.scope,
            Change::Delete { observed: &allowed },
            &Inputs::default(),
            &s.desired,
        )
        .await
        .unwrap();
    assert_eq!(s.count("cloud_sql.instances"), 0);
}

#[tokio::test]
async fn a_lookalike_is_never_adopted() {
    let s = setup(quick()).await;
    let http = reqwest::Client::new();
    // Someone's own instances, one under our name, and enough others to need pages.
    for name in ["ledger-db", "other-a", "other-b", "other-c"] {
        let r = http
            .post(format!(
                "{}/cloud-sql/v1/projects/telbase-emulator/instances",
                s.emu.url()
            ))
            .bearer_auth(emulator::EMULATOR_TOKEN)
            .json(&json!({"name": name, "databaseVersion": "POSTGRES_16", "region": "us-central1", "settings": {"tier": "db-f1-micro"}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    assert!(s.actual().await.unwrap().resources.is_empty());
    let e = s
        .sql
        .apply(
            &s.scope,
            Change::Create {
                desired: s.resource(Kind::CloudSqlInstance),
            },
            &inputs(),
            &s.desired,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not created by Telbase"), "{e}");
    assert_eq!(s.count("cloud_sql.instances"), 4);
}

#[tokio::test]
async fn a_user_needs_its_password() {
    let s = setup(quick()).await;
    s.sql
        .apply(
            &s.scope,
            Change::Create {
                desired: s.resource(Kind::CloudSqlInstance),
            },
            &inputs(),
            &s.desired,
        )
        .await
        .unwrap();
    let e = s
        .sql
        .apply(
            &s.scope,
            Change::Create {
                desired: s.resource(Kind::CloudSqlUser),
            },
            &Inputs::default(),
            &s.desired,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("password"), "{e}");
    assert_eq!(s.count("cloud_sql.users"), 1);
}

/// A stand-in for Secret Manager's `versions/latest:access` (its emulator lives with the
/// Secret Manager client): answers the one secret the connection string needs.
async fn fake_secret_manager() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use base64::Engine as _;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let seen = seen2.clone();
        async move {
            seen.lock().unwrap().push(uri.path().to_owned());
            let data = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
            axum::Json(json!({
                "name": "projects/123/secrets/ledger-db-password/versions/1",
                "payload": {"data": data},
            }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn the_connection_string_is_composed_on_demand() {
    let s = setup(quick()).await;
    s.converge(3).await.unwrap();
    let (sm, seen) = fake_secret_manager().await;
    let creds = Credentials {
        emulator: Some(s.emu.url()),
        ..Credentials::default()
    };
    let sql = CloudSql::new(
        Http::new(emu::http_config()).unwrap(),
        creds.endpoint(P::CloudSql).unwrap(),
        &creds,
    )
    .unwrap()
    .with_secrets(
        Endpoint::new(
            P::SecretManager,
            &sm,
            SecretString::from(emulator::EMULATOR_TOKEN),
            vec![],
        )
        .unwrap(),
    );
    let db = s.resource(Kind::CloudSqlDatabase);
    let url = sql.output(&s.scope, db, Output::Url).await.unwrap();
    let url = url.expose_secret();
    assert!(
        url.starts_with(&format!("postgresql://db_owner:{PASSWORD}@34.")),
        "{}",
        url.replace(PASSWORD, "***")
    );
    assert!(url.ends_with(":5432/db?sslmode=require"));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["/v1/projects/telbase-emulator/secrets/ledger-db-password/versions/latest:access"]
    );
    assert_eq!(
        sql.output(&s.scope, db, Output::Port)
            .await
            .unwrap()
            .expose_secret(),
        "5432"
    );
    assert_eq!(
        sql.output(&s.scope, db, Output::User)
            .await
            .unwrap()
            .expose_secret(),
        "db_owner"
    );
}

/// A Cloud SQL that misbehaves: operations that end in error, lists that are not lists.
async fn broken_cloud_sql() -> String {
    let app = axum::Router::new().fallback(
        |method: axum::http::Method, uri: axum::http::Uri| async move {
            let path = uri.path().to_owned();
            let body = match (method.as_str(), path.as_str()) {
                ("GET", p) if p.ends_with("/instances") => json!({"items": "not a list"}),
                ("GET", p) if p.ends_with("/operations") => json!({"kind": "sql#operationsList"}),
                ("POST", p) if p.ends_with("/instances") => json!({
                    "kind": "sql#operation", "name": "op-1", "status": "RUNNING", "operationType": "CREATE",
                }),
                ("GET", p) if p.ends_with("/operations/op-1") => json!({
                    "kind": "sql#operation", "name": "op-1", "status": "DONE", "operationType": "CREATE",
                    "error": {"kind": "sql#operationErrors", "errors": [{"kind": "sql#operationError", "code": "INVALID_TIER", "message": "Invalid tier for this edition"}]},
                }),
                _ => {
                    return (
                        axum::http::StatusCode::NOT_FOUND,
                        axum::Json(json!({"error": {"code": 404, "message": "The Cloud SQL instance does not exist.", "status": "NOT_FOUND"}})),
                    );
                }
            };
            (axum::http::StatusCode::OK, axum::Json(body))
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn failed_operations_and_garbage_are_clear_errors() {
    let url = broken_cloud_sql().await;
    let creds = Credentials {
        emulator: Some(url.clone()),
        ..Credentials::default()
    };
    let ep = Endpoint::new(
        P::CloudSql,
        &url,
        SecretString::from(emulator::EMULATOR_TOKEN),
        vec![],
    )
    .unwrap();
    let sql = CloudSql::new(Http::new(emu::http_config()).unwrap(), ep, &creds).unwrap();
    let (desired, _) = telbase::config::load_str(CONFIG, Environment::Production).unwrap();
    let scope = Scope {
        project: "ledger".into(),
        environment: Environment::Production,
        git: None,
    };
    let e = sql.observe(&scope).await.unwrap_err();
    assert_eq!(e.provider, "cloud-sql");
    assert!(e.to_string().contains("not a list"), "{e}");

    let inst = desired
        .resources
        .values()
        .find(|r| r.key.kind == Kind::CloudSqlInstance)
        .unwrap();
    let e = sql
        .apply(
            &scope,
            Change::Create { desired: inst },
            &inputs(),
            &desired,
        )
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("create instance ledger-db"), "{text}");
    assert!(text.contains("INVALID_TIER"), "{text}");
    assert!(text.contains("Invalid tier for this edition"), "{text}");
}

#[tokio::test]
async fn renaming_the_database_with_data_loss_allowed_replaces_it() {
    let mut s = setup(quick()).await;
    s.converge(3).await.unwrap();
    for r in s.desired.resources.values_mut() {
        r.allow_data_loss = r.spec.holds_data();
        if let ResourceSpec::CloudSqlDatabase(d) = &mut r.spec {
            d.database = "ledger_v2".into();
        }
    }
    let steps = s.steps().await.unwrap();
    let db = steps
        .iter()
        .find(|st| st.key.kind == Kind::CloudSqlDatabase)
        .unwrap();
    assert_eq!(db.action, Action::Replace);
    s.converge(3).await.unwrap();
    let actual = s.actual().await.unwrap();
    let ResourceSpec::CloudSqlDatabase(d) = &actual
        .resources
        .values()
        .find(|o| o.key.kind == Kind::CloudSqlDatabase)
        .unwrap()
        .spec
    else {
        panic!()
    };
    assert_eq!(d.database, "ledger_v2");
    // The old one is gone, not left beside the new one.
    assert_eq!(s.count("cloud_sql.databases"), 2);
    assert!(actual.resources.values().all(|o| o.deletion_allowed));
}
