//! The emulated Vercel API: projects (with env vars and git link), project domains, and
//! deployments that build in a few polls and can be promoted. Paths, fields and the error
//! envelope (`{"error":{"code","message"}}`) follow ../shared/provider-apis/vercel.

use std::collections::BTreeMap;

/// Commits whose sha starts with this fail to build in the emulator (see docs/emulator.md).
pub(crate) const FAILING_SHA_PREFIX: &str = "badbadbad";

use axum::http::Method;
use serde_json::{Value, json};

use super::{Answer, Req, World, provider_error};
use crate::model::Provider;

#[derive(Default)]
pub(crate) struct State {
    projects: Vec<Project>,
    deployments: Vec<Deployment>,
}

struct Project {
    id: String,
    name: String,
    settings: BTreeMap<&'static str, Value>,
    link: Option<(String, String)>,
    env: Vec<Env>,
    domains: Vec<Dom>,
    created_at: u64,
    updated_at: u64,
    production: Option<String>,
}

struct Env {
    id: String,
    key: String,
    value: String,
    kind: String,
    target: Vec<String>,
    git_branch: Option<String>,
    comment: Option<String>,
    created_at: u64,
}

struct Dom {
    name: String,
    git_branch: Option<String>,
    created_at: u64,
}

struct Deployment {
    id: String,
    project_id: String,
    name: String,
    sha: String,
    git_ref: String,
    org: String,
    repo: String,
    target: Option<String>,
    state: &'static str,
    polls_left: u32,
    created_at: u64,
}

const SETTINGS: [&str; 6] = [
    "framework",
    "rootDirectory",
    "buildCommand",
    "installCommand",
    "outputDirectory",
    "nodeVersion",
];

fn err(status: u16, code: &str, message: &str) -> Answer {
    provider_error(Provider::Vercel, status, code, message)
}

fn id(w: &mut World, prefix: &str) -> String {
    let n = w.next();
    // Vercel ids are a prefix and 28 alphanumerics.
    format!("{prefix}_{n:0>28}")
}

fn env_json(e: &Env) -> Value {
    let mut v = json!({
        "id": e.id,
        "key": e.key,
        // Sensitive values are never returned.
        "value": if e.kind == "sensitive" { "" } else { e.value.as_str() },
        "type": e.kind,
        "target": e.target,
        "createdAt": e.created_at,
        "updatedAt": e.created_at,
        "decrypted": false,
    });
    if let Some(b) = &e.git_branch {
        v["gitBranch"] = json!(b);
    }
    if let Some(c) = &e.comment {
        v["comment"] = json!(c);
    }
    v
}

fn project_json(s: &State, p: &Project) -> Value {
    let mut v = json!({
        "accountId": "team_emulator",
        "directoryListing": false,
        "id": p.id,
        "name": p.name,
        "nodeVersion": p.settings.get("nodeVersion").cloned().unwrap_or(json!("22.x")),
        "resourceConfig": {"functionDefaultRegions": ["iad1"]},
        "defaultResourceConfig": {"functionDefaultRegions": ["iad1"]},
        "createdAt": p.created_at,
        "updatedAt": p.updated_at,
        "env": p.env.iter().map(env_json).collect::<Vec<_>>(),
        "framework": p.settings.get("framework").cloned().unwrap_or(Value::Null),
        "rootDirectory": p.settings.get("rootDirectory").cloned().unwrap_or(Value::Null),
        "buildCommand": p.settings.get("buildCommand").cloned().unwrap_or(Value::Null),
        "installCommand": p.settings.get("installCommand").cloned().unwrap_or(Value::Null),
        "outputDirectory": p.settings.get("outputDirectory").cloned().unwrap_or(Value::Null),
    });
    if let Some((org, repo)) = &p.link {
        v["link"] = json!({
            "type": "github",
            "org": org,
            "repo": repo,
            "repoId": 1_000_000,
            "gitCredentialId": "cred_emulator",
            "productionBranch": "main",
            "deployHooks": [],
            "createdAt": p.created_at,
        });
    }
    if let Some(d) = p
        .production
        .as_ref()
        .and_then(|id| s.deployments.iter().find(|d| &d.id == id))
    {
        v["targets"] = json!({"production": {
            "id": d.id,
            "createdAt": d.created_at,
            "createdIn": "iad1",
            "creator": null,
            "deploymentHostname": format!("{}-{}", d.name, &d.id[4..12]),
            "name": d.name,
            "plan": "pro",
            "private": true,
            "readyState": d.state,
            "type": "LAMBDAS",
            "url": deployment_host(d),
            "userId": "user_emulator",
            "meta": {"githubCommitSha": d.sha, "githubCommitRef": d.git_ref},
        }});
    }
    v
}

fn deployment_host(d: &Deployment) -> String {
    format!("{}-{}.vercel.app", d.name, d.id[4..12].to_ascii_lowercase())
}

fn deployment_json(d: &Deployment) -> Value {
    let mut v = json!({
        "id": d.id,
        "uid": d.id,
        "name": d.name,
        "url": deployment_host(d),
        "projectId": d.project_id,
        "readyState": d.state,
        "state": d.state,
        "status": d.state,
        "type": "LAMBDAS",
        "createdAt": d.created_at,
        "created": d.created_at,
        "buildingAt": d.created_at,
        "bootedAt": d.created_at,
        "createdIn": "iad1",
        "ownerId": "team_emulator",
        "plan": "pro",
        "public": false,
        "regions": ["iad1"],
        "version": 2,
        "routes": null,
        "meta": {"githubCommitSha": d.sha, "githubCommitRef": d.git_ref, "githubOrg": d.org, "githubRepo": d.repo},
        "creator": {"uid": "user_emulator"},
        "inspectorUrl": format!("https://vercel.com/emulator/{}/{}", d.name, d.id),
        "isInConcurrentBuildsQueue": false,
        "isInSystemBuildsQueue": false,
        "aliasAssigned": d.state == "READY",
        "buildSkipped": false,
        "build": {"env": []},
        "env": [],
        "projectSettings": {},
    });
    if let Some(t) = &d.target {
        v["target"] = json!(t);
    }
    if d.state == "ERROR" {
        v["errorMessage"] = json!("Command \"npm run build\" exited with 1");
    }
    v
}

fn find_project<'a>(s: &'a mut State, id_or_name: &str) -> Option<&'a mut Project> {
    s.projects
        .iter_mut()
        .find(|p| p.id == id_or_name || p.name == id_or_name)
}

fn str_of(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn targets_of(v: &Value) -> Vec<String> {
    match v.get("target") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn route(w: &mut World, r: &Req<'_>) -> Answer {
    let m = r.method;
    match r.segments.as_slice() {
        ["v10", "projects"] if m == Method::GET => list_projects(w, r),
        ["v11", "projects"] if m == Method::POST => create_project(w, r),
        ["v9", "projects", p] if m == Method::GET => {
            let s = &mut w.vercel;
            match s.projects.iter().find(|x| x.id == *p || x.name == *p) {
                Some(x) => Answer::ok(200, project_json(s, x)),
                None => err(404, "not_found", "Project not found"),
            }
        }
        ["v9", "projects", p] if m == Method::PATCH => update_project(w, p, r),
        ["v9", "projects", p] if m == Method::DELETE => {
            let s = &mut w.vercel;
            let Some(i) = s.projects.iter().position(|x| x.id == *p || x.name == *p) else {
                return err(404, "not_found", "Project not found");
            };
            let gone = s.projects.remove(i);
            s.deployments.retain(|d| d.project_id != gone.id);
            Answer::empty(204)
        }
        ["v10", "projects", p, "env"] if m == Method::POST => create_env(w, p, r),
        ["v10", "projects", p, "env"] if m == Method::GET => match find_project(&mut w.vercel, p) {
            Some(x) => Answer::ok(
                200,
                json!({"envs": x.env.iter().map(env_json).collect::<Vec<_>>()}),
            ),
            None => err(404, "not_found", "Project not found"),
        },
        ["v9", "projects", p, "env", e] if m == Method::DELETE => {
            let Some(x) = find_project(&mut w.vercel, p) else {
                return err(404, "not_found", "Project not found");
            };
            match x.env.iter().position(|v| v.id == *e) {
                Some(i) => Answer::ok(200, env_json(&x.env.remove(i))),
                None => err(404, "not_found", "Environment variable not found"),
            }
        }
        ["v9", "projects", p, "domains"] if m == Method::GET => list_domains(w, p, r),
        ["v10", "projects", p, "domains"] if m == Method::POST => add_domain(w, p, r),
        ["v9", "projects", p, "domains", d] if m == Method::GET => {
            let Some(x) = find_project(&mut w.vercel, p) else {
                return err(404, "not_found", "Project not found");
            };
            let pid = x.id.clone();
            match x.domains.iter().find(|v| v.name == *d) {
                Some(v) => Answer::ok(200, domain_json(&pid, v)),
                None => err(404, "not_found", "Domain not found"),
            }
        }
        ["v9", "projects", p, "domains", d] if m == Method::DELETE => {
            let Some(x) = find_project(&mut w.vercel, p) else {
                return err(404, "not_found", "Project not found");
            };
            match x.domains.iter().position(|v| v.name == *d) {
                Some(i) => {
                    x.domains.remove(i);
                    Answer::ok(200, json!({}))
                }
                None => err(404, "not_found", "Domain not found"),
            }
        }
        ["v13", "deployments"] if m == Method::POST => create_deployment(w, r),
        ["v13", "deployments", d] if m == Method::GET => {
            let s = &mut w.vercel;
            let Some(dep) = s
                .deployments
                .iter_mut()
                .find(|x| x.id == *d || deployment_host(x) == *d)
            else {
                return err(404, "not_found", "Deployment not found");
            };
            // Each look moves the build along: QUEUED → BUILDING → READY.
            if matches!(dep.state, "ERROR" | "CANCELED") {
                // Finished for good.
            } else if dep.polls_left > 0 {
                dep.polls_left -= 1;
                dep.state = "BUILDING";
            } else {
                dep.state = "READY";
            }
            Answer::ok(200, deployment_json(dep))
        }
        ["v6", "deployments"] if m == Method::GET => {
            let s = &w.vercel;
            let limit = r.limit();
            let project = r.q("projectId").map(|p| {
                s.projects
                    .iter()
                    .find(|x| x.id == p || x.name == p)
                    .map(|x| x.id.clone())
                    .unwrap_or_default()
            });
            let list: Vec<Value> = s
                .deployments
                .iter()
                .rev()
                .filter(|d| project.as_ref().is_none_or(|p| &d.project_id == p))
                .filter(|d| r.q("target").is_none_or(|t| d.target.as_deref() == Some(t)))
                .filter(|d| r.q("sha").is_none_or(|sha| d.sha == sha))
                .take(limit)
                .map(|d| {
                    let mut v = deployment_json(d);
                    // The list shape is the short one.
                    if let Some(o) = v.as_object_mut() {
                        o.retain(|k, _| {
                            matches!(
                                k.as_str(),
                                "uid"
                                    | "name"
                                    | "url"
                                    | "created"
                                    | "createdAt"
                                    | "state"
                                    | "readyState"
                                    | "type"
                                    | "creator"
                                    | "meta"
                                    | "target"
                                    | "projectId"
                                    | "inspectorUrl"
                                    | "buildingAt"
                            )
                        });
                    }
                    v
                })
                .collect();
            Answer::ok(
                200,
                json!({"deployments": list, "pagination": {"count": list.len(), "next": null, "prev": null}}),
            )
        }
        ["v10", "projects", p, "promote", d] if m == Method::POST => {
            let s = &mut w.vercel;
            let Some(dep) = s.deployments.iter().find(|x| x.id == *d) else {
                return err(404, "not_found", "Deployment not found");
            };
            if dep.state != "READY" {
                return err(409, "deployment_not_ready", "The deployment is not ready");
            }
            let dep_id = dep.id.clone();
            let dep_project = dep.project_id.clone();
            let Some(x) = find_project(s, p) else {
                return err(404, "not_found", "Project not found");
            };
            if x.id != dep_project {
                return err(
                    400,
                    "bad_request",
                    "The deployment belongs to another project",
                );
            }
            x.production = Some(dep_id);
            Answer::empty(201)
        }
        _ => err(
            404,
            "not_found",
            "The requested path does not exist in the emulator's Vercel API",
        ),
    }
}

fn list_projects(w: &mut World, r: &Req<'_>) -> Answer {
    let s = &w.vercel;
    let limit = r.limit();
    let search = r.q("search").unwrap_or("");
    // `from` is our continuation token: the index to start at.
    let start: usize = r
        .q("from")
        .and_then(|f| f.strip_prefix('o'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let matching: Vec<&Project> = s
        .projects
        .iter()
        .filter(|p| p.name.contains(search))
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|p| project_json(s, p))
        .collect();
    let next = (start + limit < matching.len()).then(|| format!("o{}", start + limit));
    Answer::ok(
        200,
        json!({"projects": page, "pagination": {"count": page.len(), "next": next}}),
    )
}

fn create_project(w: &mut World, r: &Req<'_>) -> Answer {
    let Some(body) = &r.body else {
        return err(400, "bad_request", "Missing body");
    };
    let Some(name) = str_of(body, "name").filter(|n| !n.is_empty() && n.len() <= 100) else {
        return err(400, "bad_request", "Invalid request: `name` is required");
    };
    if w.vercel.projects.iter().any(|p| p.name == name) {
        return err(409, "conflict", "A project with this name already exists");
    }
    let pid = id(w, "prj");
    let now = w.now_ms();
    let mut settings = BTreeMap::new();
    for k in SETTINGS {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            settings.insert(k, v.clone());
        }
    }
    let link = body.get("gitRepository").and_then(|g| {
        let (org, repo) = str_of(g, "repo")?
            .split_once('/')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))?;
        Some((org, repo))
    });
    let mut env = Vec::new();
    for e in body
        .get("environmentVariables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let eid = id(w, "env");
        env.push(Env {
            id: eid,
            key: str_of(e, "key").unwrap_or_default(),
            value: str_of(e, "value").unwrap_or_default(),
            kind: str_of(e, "type").unwrap_or_else(|| "encrypted".into()),
            target: targets_of(e),
            git_branch: str_of(e, "gitBranch"),
            comment: None,
            created_at: now,
        });
    }
    w.vercel.projects.push(Project {
        id: pid,
        name,
        settings,
        link,
        env,
        domains: Vec::new(),
        created_at: now,
        updated_at: now,
        production: None,
    });
    let s = &w.vercel;
    let p = s
        .projects
        .last()
        .map(|p| project_json(s, p))
        .unwrap_or_default();
    Answer::ok(200, p)
}

fn update_project(w: &mut World, p: &str, r: &Req<'_>) -> Answer {
    let now = w.now_ms();
    let body = r.body.clone().unwrap_or(json!({}));
    let s = &mut w.vercel;
    let Some(x) = find_project(s, p) else {
        return err(404, "not_found", "Project not found");
    };
    for k in SETTINGS {
        match body.get(k) {
            Some(Value::Null) => {
                x.settings.remove(k);
            }
            Some(v) => {
                x.settings.insert(k, v.clone());
            }
            None => {}
        }
    }
    x.updated_at = now;
    let id = x.id.clone();
    let p = s
        .projects
        .iter()
        .find(|p| p.id == id)
        .map(|p| project_json(s, p))
        .unwrap_or_default();
    Answer::ok(200, p)
}

fn create_env(w: &mut World, p: &str, r: &Req<'_>) -> Answer {
    let items: Vec<Value> = match &r.body {
        Some(Value::Array(a)) => a.clone(),
        Some(o @ Value::Object(_)) => vec![o.clone()],
        _ => return err(400, "bad_request", "Expected an env var or a list of them"),
    };
    let upsert = r.q("upsert") == Some("true");
    let now = w.now_ms();
    let mut ids = Vec::new();
    for _ in &items {
        ids.push(id(w, "env"));
    }
    let Some(x) = find_project(&mut w.vercel, p) else {
        return err(404, "not_found", "Project not found");
    };
    let mut created = Vec::new();
    for (item, eid) in items.iter().zip(ids) {
        let (Some(key), Some(value), Some(kind)) = (
            str_of(item, "key"),
            str_of(item, "value"),
            str_of(item, "type"),
        ) else {
            return err(400, "bad_request", "Each env var needs key, value and type");
        };
        let target = targets_of(item);
        let git_branch = str_of(item, "gitBranch");
        let comment = str_of(item, "comment");
        let clash = x.env.iter().position(|e| {
            e.key == key
                && e.git_branch == git_branch
                && e.target.iter().any(|t| target.contains(t))
        });
        let env = Env {
            id: eid,
            key,
            value,
            kind,
            target,
            git_branch,
            comment,
            created_at: now,
        };
        match clash {
            Some(i) if upsert => {
                let keep = x.env[i].id.clone();
                x.env[i] = Env { id: keep, ..env };
                created.push(env_json(&x.env[i]));
            }
            Some(_) => {
                return err(
                    409,
                    "ENV_ALREADY_EXISTS",
                    "A variable with the same key and target exists",
                );
            }
            None => {
                created.push(env_json(&env));
                x.env.push(env);
            }
        }
    }
    Answer::ok(201, json!({"created": created, "failed": []}))
}

fn domain_json(project_id: &str, d: &Dom) -> Value {
    let apex = d
        .name
        .rsplitn(3, '.')
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(".");
    let mut v = json!({
        "name": d.name,
        "apexName": apex,
        "projectId": project_id,
        "verified": true,
        "createdAt": d.created_at,
        "updatedAt": d.created_at,
    });
    if let Some(b) = &d.git_branch {
        v["gitBranch"] = json!(b);
    }
    v
}

fn list_domains(w: &mut World, p: &str, r: &Req<'_>) -> Answer {
    let limit = r.limit();
    let Some(x) = find_project(&mut w.vercel, p) else {
        return err(404, "not_found", "Project not found");
    };
    let until: Option<u64> = r.q("until").and_then(|u| u.parse().ok());
    // Newest first, paged by creation time as Vercel does.
    let mut all: Vec<&Dom> = x
        .domains
        .iter()
        .filter(|d| until.is_none_or(|u| d.created_at < u))
        .collect();
    all.sort_by_key(|d| std::cmp::Reverse(d.created_at));
    let page: Vec<&Dom> = all.iter().take(limit).copied().collect();
    let next = (all.len() > limit)
        .then(|| page.last().map(|d| d.created_at))
        .flatten();
    let pid = x.id.clone();
    Answer::ok(
        200,
        json!({
            "domains": page.iter().map(|d| domain_json(&pid, d)).collect::<Vec<_>>(),
            "pagination": {"count": page.len(), "next": next, "prev": null},
        }),
    )
}

fn add_domain(w: &mut World, p: &str, r: &Req<'_>) -> Answer {
    let Some(name) = r.body.as_ref().and_then(|b| str_of(b, "name")) else {
        return err(400, "bad_request", "`name` is required");
    };
    let git_branch = r.body.as_ref().and_then(|b| str_of(b, "gitBranch"));
    if w.vercel
        .projects
        .iter()
        .any(|x| x.domains.iter().any(|d| d.name == name))
    {
        return err(
            409,
            "domain_already_in_use",
            "The domain is already assigned to a project",
        );
    }
    let now = w.now_ms();
    let Some(x) = find_project(&mut w.vercel, p) else {
        return err(404, "not_found", "Project not found");
    };
    let d = Dom {
        name,
        git_branch,
        created_at: now,
    };
    let v = domain_json(&x.id, &d);
    x.domains.push(d);
    Answer::ok(200, v)
}

fn create_deployment(w: &mut World, r: &Req<'_>) -> Answer {
    let Some(body) = &r.body else {
        return err(400, "bad_request", "Missing body");
    };
    let Some(name) = str_of(body, "name") else {
        return err(400, "bad_request", "`name` is required");
    };
    let project = str_of(body, "project").unwrap_or_else(|| name.clone());
    let Some(pid) = w
        .vercel
        .projects
        .iter()
        .find(|p| p.id == project || p.name == project)
        .map(|p| p.id.clone())
    else {
        return err(404, "not_found", "Project not found");
    };
    let git = body.get("gitSource").cloned().unwrap_or(Value::Null);
    let (Some(org), Some(repo), Some(git_ref)) = (
        str_of(&git, "org"),
        str_of(&git, "repo"),
        str_of(&git, "ref"),
    ) else {
        return err(
            400,
            "bad_request",
            "The emulator deploys only from gitSource {type: github, org, repo, ref, sha}",
        );
    };
    let sha = str_of(&git, "sha").unwrap_or_else(|| "0".repeat(40));
    let did = id(w, "dpl");
    let now = w.now_ms();
    // A commit whose sha starts with "badbadbad" fails to build, so clients' error paths can
    // be exercised. Nine hex digits: a real commit (the demo's, a test's random one) hits it
    // once in 69 billion, where "bad" alone failed one demo run in 4,096.
    let fails = sha.starts_with(FAILING_SHA_PREFIX);
    let d = Deployment {
        id: did,
        project_id: pid,
        name,
        sha,
        git_ref,
        org,
        repo,
        target: str_of(body, "target"),
        state: if fails { "ERROR" } else { "QUEUED" },
        polls_left: r.async_polls,
        created_at: now,
    };
    let v = deployment_json(&d);
    w.vercel.deployments.push(d);
    Answer::ok(200, v)
}

pub(crate) fn inventory(s: &State, m: &mut BTreeMap<String, u64>) {
    m.insert("vercel.projects".into(), s.projects.len() as u64);
    m.insert("vercel.deployments".into(), s.deployments.len() as u64);
    m.insert(
        "vercel.env".into(),
        s.projects.iter().map(|p| p.env.len() as u64).sum(),
    );
    m.insert(
        "vercel.domains".into(),
        s.projects.iter().map(|p| p.domains.len() as u64).sum(),
    );
}

pub(crate) fn drift(w: &mut World, body: &Value) -> Result<Value, String> {
    let name = str_of(body, "project").ok_or("`project` (a Vercel project name) is required")?;
    let s = &mut w.vercel;
    if body.get("delete").and_then(Value::as_bool) == Some(true) {
        let before = s.projects.len();
        s.projects.retain(|p| p.name != name);
        return Ok(json!({"deleted": before - s.projects.len()}));
    }
    let x = find_project(s, &name).ok_or_else(|| format!("no Vercel project named {name}"))?;
    let mut changed = Vec::new();
    if let Some(set) = body.get("set").and_then(Value::as_object) {
        for (k, v) in set {
            let Some(key) = SETTINGS.iter().find(|s| **s == k.as_str()) else {
                return Err(format!(
                    "cannot set `{k}`; settable: {}",
                    SETTINGS.join(", ")
                ));
            };
            x.settings.insert(key, v.clone());
            changed.push(k.clone());
        }
    }
    if let Some(key) = body.get("remove_env").and_then(Value::as_str) {
        x.env.retain(|e| e.key != key);
        changed.push(format!("env {key}"));
    }
    if let Some(key) = body.get("set_env").and_then(Value::as_object) {
        for (k, v) in key {
            for e in x.env.iter_mut().filter(|e| &e.key == k) {
                e.value = v.as_str().unwrap_or_default().to_owned();
                e.kind = "plain".into();
                e.comment = None;
            }
            changed.push(format!("env {k}"));
        }
    }
    Ok(json!({"changed": changed}))
}
