//! Conformance: a run that uses every operation the Vercel and Neon clients know is
//! recorded by the emulator (`--record`), and every request Telbase sent and every response
//! the emulator gave is checked against the providers' published OpenAPI descriptions. A
//! client that sends a field the provider does not have, or an emulator that answers in a
//! shape the provider would not, fails here.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::emu;
use serde_json::{Value, json};
use telbase::conformance::{ApiDescription, Exchange};
use telbase::emulator::Config;
use telbase::model::{Domain, Environment, Kind, NeonBranch, ResourceKey, ResourceSpec};
use telbase::providers::{Change, Inputs, Scope};

const SHA: &str = "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e";

/// Every operation the clients use, as the descriptions name them.
const VERCEL_OPERATIONS: &[&str] = &[
    "GET /v10/projects",
    "POST /v11/projects",
    "GET /v9/projects/{idOrName}",
    "PATCH /v9/projects/{idOrName}",
    "DELETE /v9/projects/{idOrName}",
    "POST /v10/projects/{idOrName}/env",
    "DELETE /v9/projects/{idOrName}/env/{id}",
    "GET /v9/projects/{idOrName}/domains",
    "POST /v10/projects/{idOrName}/domains",
    "GET /v9/projects/{idOrName}/domains/{domain}",
    "DELETE /v9/projects/{idOrName}/domains/{domain}",
    "POST /v13/deployments",
    "GET /v13/deployments/{idOrUrl}",
    "GET /v6/deployments",
    "POST /v10/projects/{projectId}/promote/{deploymentId}",
];

const NEON_OPERATIONS: &[&str] = &[
    "GET /projects",
    "POST /projects",
    "DELETE /projects/{project_id}",
    "GET /projects/{project_id}/operations/{operation_id}",
    "GET /projects/{project_id}/branches",
    "POST /projects/{project_id}/branches",
    "PATCH /projects/{project_id}/branches/{branch_id}",
    "DELETE /projects/{project_id}/branches/{branch_id}",
    "GET /projects/{project_id}/branches/{branch_id}/databases",
    "POST /projects/{project_id}/branches/{branch_id}/databases",
    "GET /projects/{project_id}/branches/{branch_id}/databases/{database_name}",
    "PATCH /projects/{project_id}/branches/{branch_id}/databases/{database_name}",
    "DELETE /projects/{project_id}/branches/{branch_id}/databases/{database_name}",
    "GET /projects/{project_id}/branches/{branch_id}/roles/{role_name}",
    "POST /projects/{project_id}/branches/{branch_id}/roles",
    "GET /projects/{project_id}/connection_uri",
];

/// Statuses the real APIs send that their descriptions leave out, which the clients rely
/// on. Each is listed with the operation, so nothing else slips through.
const UNDECLARED_BUT_REAL: &[(&str, u16)] = &[
    // Vercel answers 404 for a project that does not exist; the description lists only
    // 200/400/401/403. The client's "adopt after a crash" check depends on it.
    ("GET /v9/projects/{idOrName}", 404),
    // A domain that is not on the project: same story.
    ("GET /v9/projects/{idOrName}/domains/{domain}", 404),
];

async fn scenario(url: &str) {
    // 1. Create everything, deploy, promote.
    let run = emu::run(&emu::quickstart("notes"), url, SHA, emu::http_config());
    run.converge(3).await.unwrap();
    let vercel = run.registry[&telbase::model::Provider::Vercel].clone();
    let neon = run.registry[&telbase::model::Provider::Neon].clone();

    // 2. Domains: add, add again (409, then the check), observe lists them, remove.
    let domain = telbase::model::Resource {
        key: ResourceKey::new(Kind::VercelDomain, "notes.example.com"),
        origin: "apps.web".into(),
        spec: ResourceSpec::VercelDomain(Domain {
            hostname: "notes.example.com".into(),
            target: ResourceKey::new(Kind::VercelProject, "notes-web"),
        }),
        depends_on: Default::default(),
        allow_data_loss: false,
    };
    let none = Inputs::default();
    for _ in 0..2 {
        vercel
            .apply(
                &run.scope,
                Change::Create { desired: &domain },
                &none,
                &run.desired,
            )
            .await
            .unwrap();
    }
    let seen = run.observe().await.unwrap();
    let observed_domain = seen.resources[&domain.key].clone();
    vercel
        .apply(
            &run.scope,
            Change::Delete {
                observed: &observed_domain,
            },
            &none,
            &run.desired,
        )
        .await
        .unwrap();

    // 3. Drift on settings, env and the database; then the file drops an env var and the
    // database changes owner (a new role) and name (a new database, the old one deleted).
    common_drift(url).await;
    run.converge(3).await.unwrap();
    let mut changed = emu::run(
        &emu::quickstart("notes").replace("      SITE: notes\n", ""),
        url,
        SHA,
        emu::http_config(),
    );
    for res in changed.desired.resources.values_mut() {
        if let ResourceSpec::NeonDatabase(db) = &mut res.spec {
            db.owner = "app_owner".into();
        }
    }
    changed.converge(3).await.unwrap();
    for res in changed.desired.resources.values_mut() {
        if let ResourceSpec::NeonDatabase(db) = &mut res.spec {
            db.database = "notes_v2".into();
        }
        res.allow_data_loss = true;
    }
    changed.converge(3).await.unwrap();

    // 4. A preview branch: create, fetch its connection string, observe, delete.
    let preview = Scope {
        environment: Environment::Preview { pull_request: 7 },
        ..run.scope.clone()
    };
    let branch = telbase::model::Resource {
        key: ResourceKey::new(Kind::NeonBranch, "notes-main/pr-7"),
        origin: "databases.main".into(),
        spec: ResourceSpec::NeonBranch(NeonBranch {
            project: ResourceKey::new(Kind::NeonProject, "notes-main"),
            parent: "main".into(),
        }),
        depends_on: Default::default(),
        allow_data_loss: false,
    };
    neon.apply(
        &preview,
        Change::Create { desired: &branch },
        &none,
        &run.desired,
    )
    .await
    .unwrap();
    let uri = neon
        .output(&preview, &branch, telbase::model::Output::Url)
        .await
        .unwrap();
    assert!(secrecy::ExposeSecret::expose_secret(&uri).contains("sslmode=require"));
    let seen = neon.observe(&preview).await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    neon.apply(
        &preview,
        Change::Delete { observed: &seen[0] },
        &none,
        &run.desired,
    )
    .await
    .unwrap();

    // 5. Per-branch preview values on the Vercel project: written for the preview's branch
    // only, invisible to production.
    let preview_git = Scope {
        git: Some(telbase::providers::GitRef {
            branch: "feature-x".into(),
            ..run.scope.git.clone().unwrap()
        }),
        ..preview.clone()
    };
    let web_key = ResourceKey::new(Kind::VercelProject, "notes-web");
    let mut web = changed.desired.resources[&web_key].clone();
    if let ResourceSpec::VercelProject(p) = &mut web.spec {
        p.env = vec![telbase::model::EnvVar {
            name: "PREVIEW_FLAG".into(),
            source: telbase::model::EnvSource::Plain("on".into()),
        }];
        p.preview_branch_of_pr = Some(7);
        p.production_commit = None;
    }
    let before = vercel.observe(&preview_git).await.unwrap();
    let observed_web = before.iter().find(|o| o.key == web_key).unwrap().clone();
    vercel
        .apply(
            &preview_git,
            Change::Update {
                desired: &web,
                observed: &observed_web,
                changes: &[],
            },
            &none,
            &run.desired,
        )
        .await
        .unwrap();
    let after = vercel.observe(&preview_git).await.unwrap();
    let seen = after.iter().find(|o| o.key == web_key).unwrap();
    assert_eq!(
        seen.spec, web.spec,
        "the preview sees exactly its own values"
    );
    let prod = run.observe().await.unwrap();
    let ResourceSpec::VercelProject(p) = &prod.resources[&web_key].spec else {
        panic!()
    };
    assert!(
        p.env.iter().all(|v| v.name != "PREVIEW_FLAG"),
        "{:?}",
        p.env
    );

    // 6. Tear down: every observed production resource deleted through its client.
    let actual = run.observe().await.unwrap();
    let mut all: Vec<_> = actual.resources.values().collect();
    all.sort_by_key(|o| o.key.kind.teardown_rank());
    for o in all {
        run.registry[&o.key.provider()]
            .apply(
                &run.scope,
                Change::Delete { observed: o },
                &none,
                &run.desired,
            )
            .await
            .unwrap();
    }
    assert!(run.observe().await.unwrap().resources.is_empty());
}

async fn common_drift(url: &str) {
    let client = reqwest::Client::new();
    for body in [
        json!({"provider": "vercel", "project": "notes-web", "set": {"buildCommand": "make"}, "set_env": {"SITE": "x"}}),
        json!({"provider": "neon", "project": "notes-main", "protected": false, "database_owner": "intruder"}),
    ] {
        let r = client
            .post(format!("{url}/_admin/drift"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_conforms_to_the_published_descriptions() {
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
    emu.stop().await;

    let vercel =
        ApiDescription::from_file(&apis.join("vercel/vercel-openapi.subset.json")).unwrap();
    let neon = ApiDescription::from_file(&apis.join("neon/neon-openapi.v2.json")).unwrap();
    let text = std::fs::read_to_string(&record).unwrap();
    let mut covered: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut exchanges = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v.get("fault").is_none(), "no faults were asked for: {line}");
        let provider = v["provider"].as_str().unwrap().to_owned();
        let ex: Exchange = serde_json::from_value(v).unwrap();
        exchanges += 1;
        let (desc, name) = match provider.as_str() {
            "vercel" => (&vercel, "vercel"),
            "neon" => (&neon, "neon"),
            other => panic!("unexpected provider {other}"),
        };
        let op = desc
            .operation_for(&ex.method, &ex.path)
            .unwrap_or_else(|| format!("{} {}", ex.method, ex.path));
        covered.entry(name).or_default().insert(op.clone());
        for violation in desc.check(&ex) {
            let allowed = UNDECLARED_BUT_REAL
                .iter()
                .any(|(o, s)| *o == op && *s == ex.status)
                && violation.message.contains("status");
            if !allowed {
                violations.push(format!(
                    "{name} {}: {}",
                    violation.operation, violation.message
                ));
            }
        }
    }
    assert!(exchanges > 50, "only {exchanges} exchanges recorded");
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    for (name, expected) in [("vercel", VERCEL_OPERATIONS), ("neon", NEON_OPERATIONS)] {
        let missing: Vec<_> = expected
            .iter()
            .filter(|o| !covered[name].contains(**o))
            .collect();
        assert!(
            missing.is_empty(),
            "{name}: the scenario never used {missing:?}"
        );
        let unexpected: Vec<_> = covered[name]
            .iter()
            .filter(|o| !expected.contains(&o.as_str()))
            .collect();
        assert!(
            unexpected.is_empty(),
            "{name}: the clients used operations this test does not list: {unexpected:?}"
        );
    }
    // Recordings never hold secret values.
    assert!(
        !text.contains("npg_"),
        "a Neon password reached the recording"
    );
    assert!(
        !text.contains("postgresql://"),
        "a connection string reached the recording"
    );
}
