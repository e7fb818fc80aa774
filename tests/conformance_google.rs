//! Conformance for Google: a run that uses every Cloud Run and Secret Manager operation the
//! clients know is recorded by the emulator, and every exchange is checked against Google's
//! Discovery documents (Cloud Run v2 and v1, Secret Manager v1), translated by
//! `conformance::discovery`. A client field Google does not have, or an emulator answer in a
//! shape Google would not send, fails here. The Cloud SQL document must load too.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::emu;
use serde_json::{Value, json};
use telbase::conformance::{ApiDescription, Exchange};
use telbase::emulator::Config;
use telbase::model::{
    CloudSqlMount, Domain, EnvSource, Kind, Output, Provider, Resource, ResourceKey, ResourceSpec,
    Secret,
};
use telbase::providers::{Change, Inputs};

const SHA: &str = "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e";

const RUN_V2: &[&str] = &[
    "GET /v2/projects/{projectsId}/locations/{locationsId}/services",
    "POST /v2/projects/{projectsId}/locations/{locationsId}/services",
    "GET /v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}",
    "PATCH /v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}",
    "DELETE /v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}",
    "GET /v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}:getIamPolicy",
    "POST /v2/projects/{projectsId}/locations/{locationsId}/services/{servicesId}:setIamPolicy",
    "GET /v2/projects/{projectsId}/locations/{locationsId}/operations/{operationsId}",
];

const RUN_V1: &[&str] = &[
    "GET /apis/serving.knative.dev/v1/namespaces/{namespacesId}/services",
    "GET /apis/domains.cloudrun.com/v1/namespaces/{namespacesId}/domainmappings",
    "POST /apis/domains.cloudrun.com/v1/namespaces/{namespacesId}/domainmappings",
    "GET /apis/domains.cloudrun.com/v1/namespaces/{namespacesId}/domainmappings/{domainmappingsId}",
    "DELETE /apis/domains.cloudrun.com/v1/namespaces/{namespacesId}/domainmappings/{domainmappingsId}",
];

const SECRET_MANAGER: &[&str] = &[
    "GET /v1/projects/{projectsId}/secrets",
    "POST /v1/projects/{projectsId}/secrets",
    "GET /v1/projects/{projectsId}/secrets/{secretsId}",
    "PATCH /v1/projects/{projectsId}/secrets/{secretsId}",
    "DELETE /v1/projects/{projectsId}/secrets/{secretsId}",
    "POST /v1/projects/{projectsId}/secrets/{secretsId}:addVersion",
    "GET /v1/projects/{projectsId}/secrets/{secretsId}/versions",
    "POST /v1/projects/{projectsId}/secrets/{secretsId}/versions/{versionsId}:disable",
    "GET /v1/projects/{projectsId}/secrets/{secretsId}/versions/{versionsId}:access",
];

/// Where the real APIs depart from their Discovery documents in ways the clients or the
/// emulator rely on: `(operation, what the violation message contains, why)`. Empty today;
/// an entry needs a reason a reviewer can check.
const DEVIATIONS: &[(&str, &str, &str)] = &[];

fn config() -> String {
    r#"version: 1
project: links
environments:
  production:
    branch: main
apps:
  api:
    runtime: go
    image: us-east1-docker.pkg.dev/links-prod/containers/api:${git.short_sha}
    region: us-east1
    port: 8080
    command: [/app/api]
    args: [serve, --json]
    resources:
      cpu: 1
      memory: 1Gi
    scaling:
      min: 1
      max: 20
      concurrency: 250
    health:
      path: /healthz
      interval: 15s
      timeout: 3s
    access: public
    env:
      DATABASE_URL: { from: databases.main.url }
      LOG_FORMAT: json
databases:
  main:
    engine: postgres
    region: aws-us-east-2
    version: 17
"#
    .to_owned()
}

async fn scenario(emu: &telbase::emulator::Handle) {
    let url = emu.url();
    let mut run = emu::run(&config(), &url, SHA, emu::http_config());
    let service = ResourceKey::new(Kind::CloudRunService, "links-api");
    let host = ResourceKey::new(Kind::CloudRunDomainMapping, "go.links.example");
    run.desired.resources.insert(
        host.clone(),
        Resource {
            key: host.clone(),
            origin: "apps.api".into(),
            spec: ResourceSpec::CloudRunDomainMapping(Domain {
                hostname: "go.links.example".into(),
                target: service.clone(),
            }),
            depends_on: [service.clone()].into(),
            allow_data_loss: false,
        },
    );
    let password = ResourceKey::new(Kind::Secret, "links-main-password");
    let generated = Resource {
        key: password.clone(),
        origin: "databases.main".into(),
        spec: ResourceSpec::Secret(Secret {
            env: "(Cloud SQL password)".into(),
            source: EnvSource::Generated,
        }),
        depends_on: Default::default(),
        allow_data_loss: false,
    };
    run.desired
        .resources
        .insert(password.clone(), generated.clone());

    // The service also mounts a Cloud SQL instance (the volume and its mount are checked
    // against the v2 schema; Cloud Run does not look the instance up when deploying).
    if let ResourceSpec::CloudRunService(s) =
        &mut run.desired.resources.get_mut(&service).unwrap().spec
    {
        s.cloud_sql = vec![CloudSqlMount {
            instance: ResourceKey::new(Kind::CloudSqlInstance, "links-main"),
            region: "us-east1".into(),
        }];
    }

    // 1. Create everything; a second apply of the mapping finds it in place.
    run.converge(4).await.unwrap();
    let cr = run.registry[&Provider::CloudRun].clone();
    cr.apply(
        &run.scope,
        Change::Create {
            desired: &run.desired.resources[&host],
        },
        &Inputs::default(),
        &run.desired,
    )
    .await
    .unwrap();
    let sm = run.registry[&Provider::SecretManager].clone();
    sm.output(&run.scope, &generated, Output::Password)
        .await
        .unwrap();

    // 2. Drift: scaling, public access, a secret's versions and its annotations.
    for body in [
        json!({"provider": "cloud-run", "service": "links-api", "max_instances": 3, "remove_public": true}),
        json!({"provider": "secret-manager", "secret": "links-api-DATABASE_URL", "clear_annotations": true}),
        json!({"provider": "secret-manager", "secret": "links-main-password", "disable_all": true}),
    ] {
        emu.drift(&body).unwrap();
    }
    run.converge(3).await.unwrap();

    // 3. A revision that fails its health check, then a fixed one.
    let set_image = |run: &mut emu::Run, image: &str| {
        if let ResourceSpec::CloudRunService(s) =
            &mut run.desired.resources.get_mut(&service).unwrap().spec
        {
            s.image = image.into();
        }
    };
    set_image(
        &mut run,
        "us-east1-docker.pkg.dev/links-prod/containers/api:bad-1",
    );
    let (p, actual) = run.plan().await.unwrap();
    assert!(!run.apply(p, actual, 4).await.succeeded());
    set_image(
        &mut run,
        "us-east1-docker.pkg.dev/links-prod/containers/api:good-2",
    );
    run.converge(3).await.unwrap();

    // 4. Tear down through the clients.
    let actual = run.observe().await.unwrap();
    let mut all: Vec<_> = actual.resources.values().collect();
    all.sort_by_key(|o| o.key.kind.teardown_rank());
    for o in all {
        run.registry[&o.key.provider()]
            .apply(
                &run.scope,
                Change::Delete { observed: o },
                &Inputs::default(),
                &run.desired,
            )
            .await
            .unwrap();
    }
    assert!(run.observe().await.unwrap().resources.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_traffic_conforms_to_the_discovery_documents() {
    let Some(apis) = common::provider_apis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("traffic.jsonl");
    let emu = emu::start(Config {
        record: Some(record.clone()),
        async_polls: 2,
        ..Config::default()
    })
    .await;
    scenario(&emu).await;
    emu.stop().await;

    let load = |p: &str| ApiDescription::from_discovery_file(&apis.join(p)).unwrap();
    let v2 = load("gcp-cloud-run/run.v2.discovery.json");
    let v1 = load("gcp-cloud-run/run.v1.discovery.json");
    let sm = load("gcp-secret-manager/secretmanager.v1.discovery.json");
    let text = std::fs::read_to_string(&record).unwrap();
    let mut covered: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut exchanges = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let provider = v["provider"].as_str().unwrap().to_owned();
        let ex: Exchange = serde_json::from_value(v).unwrap();
        let (desc, name) = match provider.as_str() {
            "cloud-run" if ex.path.starts_with("/v2/") => (&v2, "run.v2"),
            "cloud-run" => (&v1, "run.v1"),
            "secret-manager" => (&sm, "secretmanager.v1"),
            "neon" => continue,
            other => panic!("unexpected provider {other}"),
        };
        exchanges += 1;
        let op = desc
            .operation_for(&ex.method, &ex.path)
            .unwrap_or_else(|| format!("{} {}", ex.method, ex.path));
        covered.entry(name).or_default().insert(op.clone());
        for violation in desc.check(&ex) {
            let excused = DEVIATIONS
                .iter()
                .any(|(o, m, _)| *o == op && violation.message.contains(m));
            if !excused {
                violations.push(format!(
                    "{name} {} ({} {}): {}",
                    violation.operation, ex.method, ex.path, violation.message
                ));
            }
        }
    }
    assert!(exchanges > 60, "only {exchanges} exchanges recorded");
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    for (name, expected) in [
        ("run.v2", RUN_V2),
        ("run.v1", RUN_V1),
        ("secretmanager.v1", SECRET_MANAGER),
    ] {
        let got = covered.get(name).cloned().unwrap_or_default();
        let missing: Vec<_> = expected.iter().filter(|o| !got.contains(**o)).collect();
        assert!(missing.is_empty(), "{name}: never used {missing:?}");
        let unexpected: Vec<_> = got
            .iter()
            .filter(|o| !expected.contains(&o.as_str()))
            .collect();
        assert!(
            unexpected.is_empty(),
            "{name}: the clients used operations this test does not list: {unexpected:?}"
        );
    }
    assert!(
        text.contains(
            r#""cloudSqlInstance":{"instances":["telbase-emulator:us-east1:links-main"]}"#
        ),
        "the Cloud SQL volume was never exchanged"
    );
    // Recordings never hold secret values: payloads and connection strings are redacted.
    assert!(
        !text.contains("postgresql://"),
        "a connection string reached the recording"
    );
    assert!(text.contains("[redacted]"));
    for line in text
        .lines()
        .filter(|l| l.contains(":access") || l.contains(":addVersion"))
    {
        let v: Value = serde_json::from_str(line).unwrap();
        for body in [&v["request_body"], &v["response_body"]] {
            if let Some(data) = body.pointer("/payload/data") {
                assert_eq!(data, "[redacted]", "{line}");
            }
        }
    }
}

#[test]
fn every_google_discovery_document_loads_and_compiles() {
    let Some(apis) = common::provider_apis() else {
        return;
    };
    for p in [
        "gcp-cloud-run/run.v2.discovery.json",
        "gcp-cloud-run/run.v1.discovery.json",
        "gcp-secret-manager/secretmanager.v1.discovery.json",
        "gcp-cloud-sql/sqladmin.v1.discovery.json",
    ] {
        let api = ApiDescription::from_discovery_file(&apis.join(p)).unwrap();
        assert!(api.operations().count() > 5, "{p}");
        let report = api.compile_all();
        assert!(report.failed.is_empty(), "{p}: {:?}", report.failed);
        assert!(report.compiled > 10, "{p}");
    }
    let sql =
        ApiDescription::from_discovery_file(&apis.join("gcp-cloud-sql/sqladmin.v1.discovery.json"))
            .unwrap();
    assert_eq!(
        sql.operation_for("GET", "/v1/projects/p/instances/i/databases")
            .as_deref(),
        Some("GET /v1/projects/{project}/instances/{instance}/databases")
    );
}
