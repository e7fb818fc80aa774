//! Cloud Run and Secret Manager against the emulator: a container app reading a Neon
//! database converges, its connection string lives only in Secret Manager (the service
//! references it), a second plan is empty, drift is seen and corrected, a revision that fails
//! its health check is reported with Cloud Run's reason while traffic stays on the old one,
//! faults never make duplicates, and a generated secret is never rotated by a re-apply.

mod common;

use common::{assert_golden, emu, root};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use telbase::apply::Outcome;
use telbase::emulator::{Config, EMULATOR_TOKEN, Faults};
use telbase::model::{
    Domain, EnvSource, Kind, Provider, Resource, ResourceKey, ResourceSpec, Secret,
};
use telbase::plan::{self, Action};
use telbase::providers::{Change, Inputs};

const SHA: &str = "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e";
const SERVICE: &str =
    "/cloud-run/v2/projects/telbase-emulator/locations/us-east1/services/links-api";

/// examples/go-turso with a Neon database in place of Turso (no domains: those need the
/// Cloudflare edge, so tests add domain mappings to the lowered state directly).
fn config(project: &str) -> String {
    format!(
        r#"version: 1
project: {project}
environments:
  production:
    branch: main
apps:
  api:
    runtime: go
    image: us-east1-docker.pkg.dev/{project}-prod/containers/api:${{git.short_sha}}
    region: us-east1
    port: 8080
    resources:
      cpu: 1
      memory: 512Mi
    scaling:
      min: 0
      max: 20
      concurrency: 250
    health:
      path: /healthz
      interval: 15s
      timeout: 3s
    access: public
    env:
      DATABASE_URL: {{ from: databases.main.url }}
      LOG_FORMAT: json
databases:
  main:
    engine: postgres
    region: aws-us-east-2
    version: 17
"#
    )
}

async fn get(url: &str, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(EMULATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

fn set_image(run: &mut emu::Run, image: &str) {
    for r in run.desired.resources.values_mut() {
        if let ResourceSpec::CloudRunService(s) = &mut r.spec {
            s.image = image.into();
        }
    }
}

fn add_mapping(run: &mut emu::Run, host: &str) {
    let target = ResourceKey::new(
        Kind::CloudRunService,
        format!("{}-api", run.desired.project),
    );
    let key = ResourceKey::new(Kind::CloudRunDomainMapping, host);
    run.desired.resources.insert(
        key.clone(),
        Resource {
            key,
            origin: "apps.api".into(),
            spec: ResourceSpec::CloudRunDomainMapping(Domain {
                hostname: host.into(),
                target: target.clone(),
            }),
            depends_on: [target].into(),
            allow_data_loss: false,
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_with_secrets_only_in_secret_manager() {
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let mut run = emu::run(&config("links"), &url, SHA, emu::http_config());
    add_mapping(&mut run, "go.links.example");

    let (first, actual) = run.plan().await.unwrap();
    assert_golden(
        &root().join("tests/golden/plan/cloudrun-create.txt"),
        &plan::render_text(&first),
    );
    let report = run.apply(first, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");
    let service_url = report
        .steps
        .iter()
        .find(|s| s.key.kind == Kind::CloudRunService)
        .and_then(|s| match &s.outcome {
            Outcome::Done { url } => url.clone(),
            _ => None,
        })
        .expect("the service step reports its URL");
    assert!(
        service_url.starts_with("https://links-api-"),
        "{service_url}"
    );

    let (again, _) = run.plan().await.unwrap();
    assert!(
        !again.has_changes(),
        "second plan:\n{}",
        plan::render_text(&again)
    );

    let inv = emu.inventory();
    assert_eq!(inv["cloud_run.services"], 1, "{inv:?}");
    assert_eq!(inv["cloud_run.domain_mappings"], 1, "{inv:?}");
    assert_eq!(inv["secret_manager.secrets"], 1, "{inv:?}");
    assert_eq!(inv["secret_manager.versions_enabled"], 1, "{inv:?}");

    // The service: the image pinned to the commit, the URL only by reference.
    let svc = get(&url, SERVICE).await;
    let c = &svc["template"]["containers"][0];
    assert_eq!(
        c["image"],
        "us-east1-docker.pkg.dev/links-prod/containers/api:4f2a9c1"
    );
    let env = c["env"].as_array().unwrap();
    for e in env {
        let v = e.get("value").and_then(Value::as_str).unwrap_or("");
        assert!(
            !v.contains("postgresql://"),
            "plain env carries the URL: {e}"
        );
    }
    let db = env.iter().find(|e| e["name"] == "DATABASE_URL").unwrap();
    assert_eq!(
        db["valueSource"]["secretKeyRef"],
        json!({"secret": "links-api-DATABASE_URL", "version": "latest"})
    );
    assert_eq!(
        env.iter().find(|e| e["name"] == "LOG_FORMAT").unwrap()["value"],
        "json"
    );
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["periodSeconds"], 15);
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(svc["template"]["scaling"]["maxInstanceCount"], 20);
    assert_eq!(svc["template"]["maxInstanceRequestConcurrency"], 250);
    assert_eq!(svc["labels"]["telbase-project"], "links");
    let policy = get(&url, &format!("{SERVICE}:getIamPolicy")).await;
    assert_eq!(
        policy["bindings"],
        json!([{"role": "roles/run.invoker", "members": ["allUsers"]}])
    );

    // The secret holds the connection string, readable on demand.
    let secret =
        run.desired.resources[&ResourceKey::new(Kind::Secret, "links-api-DATABASE_URL")].clone();
    let value = run.registry[&Provider::SecretManager]
        .output(&run.scope, &secret, telbase::model::Output::Url)
        .await
        .unwrap();
    assert!(value.expose_secret().starts_with("postgresql://"));
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_detected_and_corrected() {
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let run = emu::run(&config("links"), &url, SHA, emu::http_config());
    run.converge(4).await.unwrap();
    for body in [
        json!({"provider": "cloud-run", "service": "links-api", "max_instances": 3, "remove_public": true, "set_env": {"LOG_FORMAT": "text"}}),
        json!({"provider": "secret-manager", "secret": "links-api-DATABASE_URL", "disable_all": true}),
    ] {
        emu.drift(&body).unwrap();
    }
    let (p, _) = run.plan().await.unwrap();
    assert_golden(
        &root().join("tests/golden/plan/cloudrun-drift.txt"),
        &plan::render_text(&p),
    );
    let service = p
        .steps
        .iter()
        .find(|s| s.key.kind == Kind::CloudRunService)
        .unwrap();
    assert_eq!(service.action, Action::Update);
    let paths: Vec<&str> = service.changes.iter().map(|c| c.path.as_str()).collect();
    for field in ["max_instances", "public", "env.LOG_FORMAT"] {
        assert!(paths.iter().any(|p| p.starts_with(field)), "{paths:?}");
    }
    let secret = p.steps.iter().find(|s| s.key.kind == Kind::Secret).unwrap();
    assert_eq!(secret.action, Action::Update);

    run.converge(3).await.unwrap();
    let (after, _) = run.plan().await.unwrap();
    assert!(!after.has_changes(), "{}", plan::render_text(&after));
    let policy = get(&url, &format!("{SERVICE}:getIamPolicy")).await;
    assert_eq!(policy["bindings"][0]["members"], json!(["allUsers"]));
    assert_eq!(emu.inventory()["secret_manager.versions_enabled"], 1);

    // Deleted behind Telbase's back: created again, once.
    emu.drift(&json!({"provider": "cloud-run", "service": "links-api", "delete": true}))
        .unwrap();
    run.converge(3).await.unwrap();
    assert_eq!(emu.inventory()["cloud_run.services"], 1);
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_is_reported_and_the_old_revision_keeps_traffic() {
    let emu = emu::start(Config {
        async_polls: 2,
        ..Config::default()
    })
    .await;
    let url = emu.url();
    let mut run = emu::run(&config("links"), &url, SHA, emu::http_config());
    run.converge(4).await.unwrap();
    let before = get(&url, SERVICE).await;
    let good = before["latestReadyRevision"].as_str().unwrap().to_owned();
    assert!(
        good.ends_with("links-api-00001-kqd") || good.contains("links-api-00001-"),
        "{good}"
    );

    set_image(
        &mut run,
        "us-east1-docker.pkg.dev/links-prod/containers/api:bad-build",
    );
    let (p, actual) = run.plan().await.unwrap();
    let report = run.apply(p, actual, 4).await;
    let step = report
        .steps
        .iter()
        .find(|s| s.key.kind == Kind::CloudRunService)
        .unwrap();
    match &step.outcome {
        Outcome::Failed { error } => {
            assert!(error.contains("cloud-run"), "{error}");
            assert!(
                error.contains("failed the configured startup probe"),
                "{error}"
            );
            assert!(error.contains("links-api-00002-"), "{error}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let svc = get(&url, SERVICE).await;
    assert_eq!(svc["latestReadyRevision"].as_str(), Some(good.as_str()));
    assert!(
        svc["latestCreatedRevision"]
            .as_str()
            .unwrap()
            .contains("00002")
    );
    assert_eq!(
        svc["trafficStatuses"][0]["revision"].as_str(),
        Some(ops_last(&good))
    );
    assert_eq!(svc["trafficStatuses"][0]["percent"], 100);
    // The next plan still wants the new image (and shows why it is not serving).
    let (p, _) = run.plan().await.unwrap();
    assert!(p.has_changes());
    assert!(
        plan::render_text(&p).contains("not serving"),
        "{}",
        plan::render_text(&p)
    );

    // A fixed image rolls forward.
    set_image(
        &mut run,
        "us-east1-docker.pkg.dev/links-prod/containers/api:fixed",
    );
    run.converge(3).await.unwrap();
    let svc = get(&url, SERVICE).await;
    assert!(
        svc["latestReadyRevision"]
            .as_str()
            .unwrap()
            .contains("00003")
    );
    emu.stop().await;
}

fn ops_last(name: &str) -> &str {
    name.rsplit('/').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_converge_without_duplicates() {
    let faults = Faults {
        rate_5xx: 0.15,
        rate_429: 0.08,
        rate_timeout: 0.04,
        rate_reset: 0.03,
        rate_garbage: 0.03,
        stall: std::time::Duration::from_millis(2000),
        seed: 11,
        ..Faults::default()
    };
    let emu = emu::start(Config {
        faults,
        async_polls: 2,
        ..Config::default()
    })
    .await;
    let projects = ["alpha", "bravo"];
    for p in projects {
        let mut run = emu::run(&config(p), &emu.url(), SHA, emu::http_config());
        add_mapping(&mut run, &format!("{p}.example.com"));
        run.converge(25)
            .await
            .unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    let c = emu.counters();
    assert!(c.faults.values().sum::<u64>() > 5, "{:?}", c.faults);
    let inv = emu.inventory();
    let n = projects.len() as u64;
    assert_eq!(inv["cloud_run.services"], n, "{inv:?}");
    assert_eq!(inv["cloud_run.domain_mappings"], n, "{inv:?}");
    assert_eq!(inv["secret_manager.secrets"], n, "{inv:?}");
    assert_eq!(inv["secret_manager.versions_enabled"], n, "{inv:?}");
    assert_eq!(inv["neon.projects"], n, "{inv:?}");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_secret_is_written_once() {
    let emu = emu::start(Config::default()).await;
    let mut run = emu::run(&config("links"), &emu.url(), SHA, emu::http_config());
    let key = ResourceKey::new(Kind::Secret, "links-main-password");
    let res = Resource {
        key: key.clone(),
        origin: "databases.main".into(),
        spec: ResourceSpec::Secret(Secret {
            env: "(Cloud SQL password)".into(),
            source: EnvSource::Generated,
        }),
        depends_on: Default::default(),
        allow_data_loss: false,
    };
    run.desired.resources.insert(key.clone(), res.clone());
    run.converge(4).await.unwrap();
    let sm = run.registry[&Provider::SecretManager].clone();
    let first = sm
        .output(&run.scope, &res, telbase::model::Output::Password)
        .await
        .unwrap();
    assert_eq!(first.expose_secret().len(), 43);

    // A re-run of the create (after a crash) and a forced update, each with a fresh value:
    // the password stays the one the database already uses.
    let observed = run.observe().await.unwrap().resources[&key].clone();
    for change in [
        Change::Create { desired: &res },
        Change::Update {
            desired: &res,
            observed: &observed,
            changes: &[],
        },
    ] {
        let mut inputs = Inputs::default();
        inputs.env.insert(
            "(Cloud SQL password)".into(),
            secrecy::SecretString::from("a-new-value-that-must-not-be-used"),
        );
        sm.apply(&run.scope, change, &inputs, &run.desired)
            .await
            .unwrap();
    }
    let again = sm
        .output(&run.scope, &res, telbase::model::Output::Password)
        .await
        .unwrap();
    assert_eq!(again.expose_secret(), first.expose_secret());
    let versions = get(
        &emu.url(),
        "/secret-manager/v1/projects/telbase-emulator/secrets/links-main-password/versions",
    )
    .await;
    assert!(versions.get("nextPageToken").is_none());
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "{versions}"
    );
    let (p, _) = run.plan().await.unwrap();
    assert!(!p.has_changes(), "{}", plan::render_text(&p));
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_made_lookalikes_are_refused_and_removed_resources_deleted() {
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    // Somebody's own secret with Telbase's name, without its labels.
    let r = reqwest::Client::new()
        .post(format!(
            "{url}/secret-manager/v1/projects/telbase-emulator/secrets?secretId=links-api-DATABASE_URL"
        ))
        .bearer_auth(EMULATOR_TOKEN)
        .json(&json!({"replication": {"automatic": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut run = emu::run(&config("links"), &url, SHA, emu::http_config());
    add_mapping(&mut run, "go.links.example");
    let (p, actual) = run.plan().await.unwrap();
    let report = run.apply(p, actual, 4).await;
    let outcome = |kind: Kind| {
        report
            .steps
            .iter()
            .find(|s| s.key.kind == kind)
            .map(|s| s.outcome.clone())
            .unwrap()
    };
    match outcome(Kind::Secret) {
        Outcome::Failed { error } => {
            assert!(error.contains("was not created by Telbase"), "{error}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The service needs its secret, so it waits; nothing was adopted.
    assert!(matches!(
        outcome(Kind::CloudRunService),
        Outcome::Skipped { .. }
    ));
    assert_eq!(emu.inventory()["cloud_run.services"], 0);
    assert!(
        run.observe()
            .await
            .unwrap()
            .resources
            .keys()
            .all(|k| k.kind != Kind::Secret)
    );

    // Without the lookalike it converges; dropping the mapping from the file removes it.
    reqwest::Client::new()
        .delete(format!(
            "{url}/secret-manager/v1/projects/telbase-emulator/secrets/links-api-DATABASE_URL"
        ))
        .bearer_auth(EMULATOR_TOKEN)
        .send()
        .await
        .unwrap();
    run.converge(4).await.unwrap();
    assert_eq!(emu.inventory()["cloud_run.domain_mappings"], 1);
    run.desired
        .resources
        .retain(|k, _| k.kind != Kind::CloudRunDomainMapping);
    run.desired.reconcile.prune = true;
    let (p, actual) = run.plan().await.unwrap();
    assert!(p.steps.iter().any(|s| s.action == Action::Delete));
    assert!(run.apply(p, actual, 4).await.succeeded());
    assert_eq!(emu.inventory()["cloud_run.domain_mappings"], 0);
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_and_production_never_see_each_other() {
    use telbase::model::Environment;
    use telbase::providers::{self, Credentials, GitRef, Scope};
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let src = r#"version: 1
project: links
environments:
  production:
    branch: main
  preview:
    ttl: 3d
    access: public
apps:
  api:
    runtime: docker
    image: r.example/links/api:${git.sha}
    region: europe-west1
    env:
      MODE: demo
"#;
    let prod = emu::run(src, &url, SHA, emu::http_config());
    prod.converge(3).await.unwrap();

    let (mut desired, _) =
        telbase::config::load_str(src, Environment::Preview { pull_request: 7 }).unwrap();
    desired.pin_git(Some("telbase-tests/links"), SHA);
    let creds = Credentials {
        emulator: Some(url.clone()),
        ..Credentials::default()
    };
    let http = telbase::providers::http::Http::new(emu::http_config()).unwrap();
    let registry = providers::registry_for(&desired, &creds, &http).unwrap();
    let scope = Scope {
        project: "links".into(),
        environment: desired.environment,
        git: Some(GitRef {
            repo: "telbase-tests/links".into(),
            sha: SHA.into(),
            branch: "feature".into(),
        }),
    };
    let preview = emu::Run {
        desired,
        scope,
        registry,
        http,
    };
    let key = ResourceKey::new(Kind::CloudRunService, "links-api-pr-7");
    assert!(preview.desired.resources.contains_key(&key));
    preview.converge(3).await.unwrap();
    assert_eq!(emu.inventory()["cloud_run.services"], 2);

    let seen_preview = preview.observe().await.unwrap();
    assert_eq!(
        seen_preview.resources.keys().collect::<Vec<_>>(),
        vec![&key]
    );
    let seen_prod = prod.observe().await.unwrap();
    assert!(!seen_prod.resources.contains_key(&key));
    assert!(!prod.plan().await.unwrap().0.has_changes());
    let svc = get(
        &url,
        "/cloud-run/v2/projects/telbase-emulator/locations/europe-west1/services/links-api-pr-7",
    )
    .await;
    assert_eq!(svc["labels"]["telbase-environment"], "pr-7");
    assert_eq!(
        svc["template"]["containers"][0]["image"],
        format!("r.example/links/api:{SHA}")
    );
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_made_service_is_refused() {
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let r = reqwest::Client::new()
        .post(format!(
            "{url}/cloud-run/v2/projects/telbase-emulator/locations/us-east1/services?serviceId=links-api"
        ))
        .bearer_auth(EMULATOR_TOKEN)
        .json(&json!({"template": {"containers": [{"image": "nginx:1.27"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let run = emu::run(&config("links"), &url, SHA, emu::http_config());
    let (p, actual) = run.plan().await.unwrap();
    let report = run.apply(p, actual, 4).await;
    let step = report
        .steps
        .iter()
        .find(|s| s.key.kind == Kind::CloudRunService)
        .unwrap();
    match &step.outcome {
        Outcome::Failed { error } => {
            assert!(error.contains("was not created by Telbase"), "{error}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let svc = get(&url, SERVICE).await;
    assert_eq!(svc["template"]["containers"][0]["image"], "nginx:1.27");
    assert!(svc.get("labels").is_none());
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_page_of_everything() {
    let emu = emu::start(Config::default()).await;
    let mut src = config("many");
    let app = src[src.find("  api:").unwrap()..src.find("databases:").unwrap()].to_owned();
    for name in ["two", "three", "four"] {
        let copy = app.replacen("  api:", &format!("  {name}:"), 1);
        src = src.replace("databases:", &format!("{copy}databases:"));
    }
    let run = emu::run(&src, &emu.url(), SHA, emu::http_config());
    assert_eq!(
        run.desired
            .resources
            .keys()
            .filter(|k| k.kind == Kind::CloudRunService)
            .count(),
        4
    );
    run.converge(4).await.unwrap();
    let inv = emu.inventory();
    assert_eq!(inv["cloud_run.services"], 4, "{inv:?}");
    assert_eq!(inv["secret_manager.secrets"], 4, "{inv:?}");
    let actual = run.observe().await.unwrap();
    assert_eq!(actual.resources.len(), run.desired.resources.len());
    assert!(!run.plan().await.unwrap().0.has_changes());
    let routes = &emu.counters().by_provider["secret-manager"].routes;
    assert!(
        routes.keys().any(|r| r == "GET /v1/projects/{id}/secrets"),
        "{routes:?}"
    );
    emu.stop().await;
}

/// examples/django-cloudsql: the service reaches Cloud SQL through the Cloud SQL connector.
/// It mounts the instance's Cloud SQL volume, and the secret behind `DATABASE_URL` holds the
/// URL through the mounted socket, never the instance's public address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_sql_is_reached_through_the_connector() {
    let src = std::fs::read_to_string(root().join("examples/django-cloudsql/telbase.yaml"))
        .expect("the example exists");
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let run = emu::run(&src, &url, SHA, emu::http_config());

    // Lowering: the service names its instance and depends on it; the secret asks for the
    // socket form of the URL.
    let service_key = ResourceKey::new(Kind::CloudRunService, "ledger-web");
    let instance = ResourceKey::new(Kind::CloudSqlInstance, "ledger-db");
    let service = &run.desired.resources[&service_key];
    let ResourceSpec::CloudRunService(spec) = &service.spec else {
        panic!("not a service: {service:?}");
    };
    assert_eq!(spec.cloud_sql.len(), 1);
    assert_eq!(spec.cloud_sql[0].instance, instance);
    assert_eq!(spec.cloud_sql[0].region, "us-central1");
    assert!(service.depends_on.contains(&instance));
    let secret_key = ResourceKey::new(Kind::Secret, "ledger-web-DATABASE_URL");
    let secret = run.desired.resources[&secret_key].clone();
    assert_eq!(
        secret.spec,
        ResourceSpec::Secret(Secret {
            env: "DATABASE_URL".into(),
            source: EnvSource::Output {
                resource: ResourceKey::new(Kind::CloudSqlDatabase, "ledger-db"),
                output: telbase::model::Output::SocketUrl,
            },
        })
    );

    run.converge(6).await.unwrap();
    let (again, _) = run.plan().await.unwrap();
    assert!(
        !again.has_changes(),
        "second plan:\n{}",
        plan::render_text(&again)
    );

    // The service as Cloud Run stores it: the Cloud SQL volume with the instance's
    // connection name (as Cloud SQL reports it), mounted at /cloudsql.
    let inst = get(
        &url,
        "/cloud-sql/v1/projects/telbase-emulator/instances/ledger-db",
    )
    .await;
    let connection = inst["connectionName"].as_str().unwrap().to_owned();
    assert_eq!(connection, "telbase-emulator:us-central1:ledger-db");
    let svc = get(
        &url,
        "/cloud-run/v2/projects/telbase-emulator/locations/us-central1/services/ledger-web",
    )
    .await;
    assert_eq!(
        svc["template"]["volumes"],
        json!([{"name": "cloudsql", "cloudSqlInstance": {"instances": [connection]}}])
    );
    assert_eq!(
        svc["template"]["containers"][0]["volumeMounts"],
        json!([{"name": "cloudsql", "mountPath": "/cloudsql"}])
    );

    // The secret: the socket URL, with no public address in it.
    let value = run.registry[&Provider::SecretManager]
        .output(&run.scope, &secret, telbase::model::Output::Url)
        .await
        .unwrap();
    let value = value.expose_secret();
    assert!(
        value.starts_with("postgresql://db_owner:")
            && value.ends_with(&format!("@/db?host=/cloudsql/{connection}")),
        "not the socket URL"
    );
    assert!(!value.contains("sslmode"), "sslmode on a socket URL");
    for a in inst["ipAddresses"].as_array().unwrap() {
        let ip = a["ipAddress"].as_str().unwrap();
        assert!(!value.contains(ip), "the secret names the address {ip}");
    }
    // Everyone else still gets the public address with TLS required.
    let db = run.desired.resources[&ResourceKey::new(Kind::CloudSqlDatabase, "ledger-db")].clone();
    let public = run.registry[&Provider::CloudSql]
        .output(&run.scope, &db, telbase::model::Output::Url)
        .await
        .unwrap();
    assert!(public.expose_secret().ends_with("/db?sslmode=require"));

    // A volume removed by hand is drift, and corrected.
    let mut body = svc.clone();
    body["template"].as_object_mut().unwrap().remove("volumes");
    body["template"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("volumeMounts");
    let r = reqwest::Client::new()
        .patch(format!(
            "{url}/cloud-run/v2/projects/telbase-emulator/locations/us-central1/services/ledger-web"
        ))
        .bearer_auth(EMULATOR_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (drift, _) = run.plan().await.unwrap();
    let text = plan::render_text(&drift);
    assert!(
        text.contains(r#"cloud_sql: [] → ["us-central1:ledger-db"]"#),
        "{text}"
    );
    assert!(
        drift
            .steps
            .iter()
            .any(|s| s.key == service_key && s.action == Action::Update),
        "{}",
        plan::render_text(&drift)
    );
    run.converge(4).await.unwrap();
    let svc = get(
        &url,
        "/cloud-run/v2/projects/telbase-emulator/locations/us-central1/services/ledger-web",
    )
    .await;
    assert_eq!(
        svc["template"]["volumes"][0]["cloudSqlInstance"]["instances"],
        json!([connection])
    );

    // The emulator refuses what Cloud Run refuses: a mount of an undeclared volume, a Cloud
    // SQL volume mounted elsewhere, an instance that is not a connection name.
    let service_url = format!(
        "{url}/cloud-run/v2/projects/telbase-emulator/locations/us-central1/services/ledger-web"
    );
    for (pointer, bad) in [
        ("/template/containers/0/volumeMounts/0/name", json!("nope")),
        (
            "/template/containers/0/volumeMounts/0/mountPath",
            json!("/sql"),
        ),
        (
            "/template/volumes/0/cloudSqlInstance/instances/0",
            json!("ledger-db"),
        ),
    ] {
        let mut body = svc.clone();
        *body.pointer_mut(pointer).unwrap() = bad;
        let r = reqwest::Client::new()
            .patch(&service_url)
            .bearer_auth(EMULATOR_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{pointer}");
    }
    emu.stop().await;
}

/// `socket-url` is lowering's own choice for Cloud Run consumers of Cloud SQL: a file cannot
/// ask for it, and a Vercel app reading the same database keeps the public URL.
#[test]
fn the_socket_url_is_not_for_files_to_ask() {
    use telbase::model::{Environment, Output};
    let src = std::fs::read_to_string(root().join("examples/django-cloudsql/telbase.yaml"))
        .expect("the example exists");
    let asked = src.replace("databases.db.url", "databases.db.socket-url");
    assert_ne!(asked, src);
    assert!(
        telbase::config::load_str(&asked, Environment::Production).is_err(),
        "a file asked for socket-url and was accepted"
    );
    let with_vercel = src.replacen(
        "\ndatabases:\n",
        "  site:\n    framework: nextjs\n    env:\n      DATABASE_URL: { from: databases.db.url }\n\ndatabases:\n",
        1,
    );
    assert_ne!(with_vercel, src);
    let (desired, _) = telbase::config::load_str(&with_vercel, Environment::Production).unwrap();
    let ResourceSpec::VercelProject(site) =
        &desired.resources[&ResourceKey::new(Kind::VercelProject, "ledger-site")].spec
    else {
        panic!("no Vercel project");
    };
    assert!(matches!(
        site.env[0].source,
        EnvSource::Output {
            output: Output::Url,
            ..
        }
    ));
}

/// A service deployed before Cloud Run used the connector (its secret read `url`, it mounted
/// nothing) moves over on the next apply: the secret gets a new version with the socket URL,
/// the service gains the volume, and nothing is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_deployment_moves_to_the_connector() {
    use telbase::model::Output;
    let src = std::fs::read_to_string(root().join("examples/django-cloudsql/telbase.yaml"))
        .expect("the example exists");
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let mut old = emu::run(&src, &url, SHA, emu::http_config());
    for r in old.desired.resources.values_mut() {
        match &mut r.spec {
            ResourceSpec::CloudRunService(s) if !s.cloud_sql.is_empty() => {
                s.cloud_sql.clear();
                for v in &mut s.env {
                    if let EnvSource::Output { output, .. } = &mut v.source {
                        *output = Output::Url;
                    }
                }
                r.depends_on.retain(|k| k.kind != Kind::CloudSqlInstance);
            }
            ResourceSpec::Secret(Secret {
                source: EnvSource::Output { output, .. },
                ..
            }) => *output = Output::Url,
            _ => {}
        }
    }
    old.converge(6).await.unwrap();
    let secret_key = ResourceKey::new(Kind::Secret, "ledger-web-DATABASE_URL");
    let read = |run: &emu::Run| {
        let secret = run.desired.resources[&secret_key].clone();
        let sm = run.registry[&Provider::SecretManager].clone();
        let scope = run.scope.clone();
        async move {
            sm.output(&scope, &secret, Output::Url)
                .await
                .unwrap()
                .expose_secret()
                .to_owned()
        }
    };
    assert!(read(&old).await.ends_with("?sslmode=require"));

    let new = emu::run(&src, &url, SHA, emu::http_config());
    let (p, _) = new.plan().await.unwrap();
    let text = plan::render_text(&p);
    assert!(text.contains("socket-url"), "{text}");
    new.converge(4).await.unwrap();
    let (again, _) = new.plan().await.unwrap();
    assert!(!again.has_changes(), "{}", plan::render_text(&again));
    assert!(read(&new).await.contains("@/db?host=/cloudsql/"));
    let inv = emu.inventory();
    assert_eq!(inv["cloud_run.services"], 1, "{inv:?}");
    assert_eq!(inv["secret_manager.secrets"], 2, "{inv:?}");
    assert_eq!(inv["cloud_sql.instances"], 1, "{inv:?}");
    emu.stop().await;
}
