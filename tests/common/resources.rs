//! Fixtures for the control plane's project resources, shared by the role matrix in
//! tests/control_api.rs (one matrix for every `/api/v1` route) and tests/control_resources.rs:
//! a fixed test keyring for env vars, projects and runs seeded through the store's own
//! APIs (`projects::create`, `RunRows::save_run`, `stored::set`), and the request the
//! matrix sends for each resource route.

#![allow(dead_code)]

use std::sync::Arc;

use serde_json::{Value, json};
use telbase::control::api::MasterKeys;
use telbase::control::model;
use telbase::control::projects::{self, NewProject, Project};
use telbase::secrets::envelope::Keyring;
use telbase::store::runs::RunRecord;
use telbase::store::{RunRows as _, SecretName, Store};

/// The test master key (base64 of 32 bytes).
pub const MASTER: &str = "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub fn keyring() -> Keyring {
    Keyring::parse(MASTER, "test keyring").unwrap()
}

/// [`MasterKeys`] that always hand out [`keyring`].
pub fn master_keys() -> MasterKeys {
    Arc::new(|| Ok(Box::new(keyring()) as Box<dyn telbase::secrets::envelope::KeyProvider>))
}

/// A fresh project name (unique server-wide, as names must be).
pub fn fresh_name() -> String {
    format!("p{}", &telbase::control::secrets::new_id()[..12])
}

/// A project `name` of team `team` on repository `team/name`, registered at the tests'
/// fixed time (1_800_000_000_000): it shows runs that start then or later.
pub fn seed_project(s: &mut Store, team: &str, name: &str) -> Project {
    seed_project_at(s, team, name, 1_800_000_000_000)
}

/// As [`seed_project`], registered at `at` (unix ms).
pub fn seed_project_at(s: &mut Store, team: &str, name: &str, at: i64) -> Project {
    let t = model::team_by_name(s, team).unwrap().unwrap();
    projects::create(
        s,
        &NewProject {
            team_id: &t.id,
            name,
            repo: &format!("{team}/{name}"),
            config_path: "telbase.yaml",
            created_by: "seed",
        },
        at,
    )
    .unwrap()
    .expect("a fresh project name and repository")
}

/// A finished run of `repo` in `environment`, started at `at`, saved.
pub fn seed_run(
    s: &mut Store,
    repo: &str,
    environment: &str,
    at: i64,
    outcome: &str,
    report: &str,
) -> RunRecord {
    let run = run_record(repo, environment, at, outcome, report);
    s.save_run(&run).unwrap();
    run
}

/// A finished apply of `repo` in `environment`, started at `at` (not saved).
pub fn run_record(
    repo: &str,
    environment: &str,
    at: i64,
    outcome: &str,
    report: &str,
) -> RunRecord {
    let pr = environment
        .strip_prefix("preview-")
        .map(|n| n.parse().unwrap());
    RunRecord {
        id: telbase::serve::runs::new_id(),
        repo: repo.to_owned(),
        environment: environment.to_owned(),
        pull_request: pr,
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        branch: if pr.is_some() { "feature" } else { "main" }.into(),
        trigger: if pr.is_some() { "pr" } else { "push" }.into(),
        mode: "apply".into(),
        job_id: None,
        started_at: at,
        ended_at: Some(at + 1_000),
        outcome: outcome.to_owned(),
        summary: format!("{outcome} at {at}"),
        plan: "vercel_project.web: create\n".into(),
        report: report.to_owned(),
        preview_ttl_seconds: None,
    }
}

/// Stores `value` for the project's env var through the envelope store.
pub fn seed_env_var(s: &mut Store, project: &str, environment: &str, name: &str, value: &str) {
    telbase::secrets::stored::set(
        s,
        &keyring(),
        &SecretName {
            project: project.to_owned(),
            environment: environment.to_owned(),
            name: name.to_owned(),
        },
        value.as_bytes(),
    )
    .unwrap();
}

/// The role matrix's request for a resource route of `team`: (path, body), with fresh
/// resources for the routes that change or read one; `None` for routes it does not know.
pub fn matrix_request(
    s: &mut Store,
    method: &str,
    path: &str,
    team: &str,
) -> Option<(String, Option<Value>)> {
    let project = |s: &mut Store| {
        let name = fresh_name();
        let p = seed_project(s, team, &name);
        (format!("/api/v1/teams/{team}/projects/{name}"), p)
    };
    Some(match (method, path) {
        ("GET", "/api/v1/teams/{team}/projects") => {
            (format!("/api/v1/teams/{team}/projects"), None)
        }
        ("POST", "/api/v1/teams/{team}/projects") => {
            let name = fresh_name();
            (
                format!("/api/v1/teams/{team}/projects"),
                Some(json!({"name": name, "repo": format!("{team}/{name}")})),
            )
        }
        ("GET" | "DELETE", "/api/v1/teams/{team}/projects/{project}") => (project(s).0, None),
        ("GET", "/api/v1/teams/{team}/projects/{project}/environments") => {
            (format!("{}/environments", project(s).0), None)
        }
        ("GET", "/api/v1/teams/{team}/projects/{project}/runs") => {
            (format!("{}/runs", project(s).0), None)
        }
        ("GET", "/api/v1/teams/{team}/projects/{project}/runs/{run}") => {
            let (base, p) = project(s);
            let run = seed_run(s, &p.repo, "production", 1_800_000_000_000, "success", "[]");
            (format!("{base}/runs/{}", run.id), None)
        }
        ("GET", "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars") => (
            format!("{}/environments/production/env-vars", project(s).0),
            None,
        ),
        (
            "PUT",
            "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars/{name}",
        ) => (
            format!("{}/environments/production/env-vars/API_KEY", project(s).0),
            Some(json!({"value": "matrix-value"})),
        ),
        (
            "DELETE",
            "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars/{name}",
        ) => {
            let (base, p) = project(s);
            seed_env_var(s, &p.name, "production", "API_KEY", "matrix-value");
            (
                format!("{base}/environments/production/env-vars/API_KEY"),
                None,
            )
        }
        ("GET", "/api/v1/teams/{team}/audit-events") => {
            (format!("/api/v1/teams/{team}/audit-events"), None)
        }
        _ => return None,
    })
}
