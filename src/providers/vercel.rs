//! Vercel: projects (settings, git link, env vars), project domains, and production
//! deployments from git. Wire shapes follow the Vercel OpenAPI description
//! (../shared/provider-apis/vercel); `map_project` and `map_domain` turn them into model
//! specs, normalized so that only real differences show in a plan.
//!
//! Env vars: non-secret values are written as `plain` and read back; secret ones (sealed
//! values, connection strings) as `sensitive`, which Vercel never returns, so their comment
//! records where the value came from (`telbase sealed sha256:…` or `telbase from
//! neon/database/notes-main url`) and that is what gets compared.

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::http::{Call, Endpoint, Http, Paging, Retry};
use super::owner::{self, COMMENT_PREFIX, VERCEL_MARKER_ENV};
use super::{Applied, BoxFuture, Change, ErrorKind, Inputs, Provider, ProviderError, Scope};
use crate::model::{
    self, Domain, EnvSource, EnvVar, Environment, Kind, Observed, Output, Resource, ResourceKey,
    ResourceSpec, Sealed, VercelProject,
};

pub struct Vercel {
    http: Http,
    ep: Endpoint,
}

const P: model::Provider = model::Provider::Vercel;

fn err(kind: ErrorKind, what: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::new(P, kind, what, None, message, None, None)
}

/// The env targets a scope writes to, and the git branch for a preview.
fn env_target(scope: &Scope) -> (Vec<&'static str>, Option<String>) {
    match scope.environment {
        Environment::Production => (vec!["production"], None),
        Environment::Preview { .. } => (
            vec!["preview"],
            scope.git.as_ref().map(|g| g.branch.clone()),
        ),
    }
}

/// The comment that records a secret value's source, so it can be compared without
/// reading the value back.
pub fn source_comment(source: &EnvSource) -> Option<String> {
    match source {
        EnvSource::Plain(_) => None,
        EnvSource::Sealed(s) => Some(format!("{COMMENT_PREFIX} sealed {}", s.fingerprint())),
        EnvSource::Output { resource, output } => Some(format!(
            "{COMMENT_PREFIX} from {resource} {}",
            serde_json::to_value(output)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        )),
        EnvSource::Generated => Some(format!("{COMMENT_PREFIX} generated")),
        EnvSource::Stored { name, fingerprint } => Some(format!(
            "{COMMENT_PREFIX} stored {name} {}",
            fingerprint.as_deref().unwrap_or("unknown")
        )),
    }
}

fn parse_comment(comment: &str) -> Option<EnvSource> {
    let rest = comment.strip_prefix(COMMENT_PREFIX)?.strip_prefix(' ')?;
    if rest == "generated" {
        return Some(EnvSource::Generated);
    }
    if let Some(fp) = rest.strip_prefix("sealed ") {
        return Some(EnvSource::Sealed(Sealed::from_fingerprint(fp)));
    }
    if let Some(stored) = rest.strip_prefix("stored ") {
        let (name, fp) = stored.split_once(' ')?;
        return Some(EnvSource::Stored {
            name: name.to_owned(),
            fingerprint: Some(fp.to_owned()),
        });
    }
    let rest = rest.strip_prefix("from ")?;
    let (key, output) = rest.rsplit_once(' ')?;
    let output: Output = serde_json::from_value(Value::String(output.to_owned())).ok()?;
    Some(EnvSource::Output {
        resource: ResourceKey::parse(key)?,
        output,
    })
}

/// Whether a project carries this scope's ownership marker.
fn owned(project: &Value, scope: &Scope) -> bool {
    let name = project.get("name").and_then(Value::as_str).unwrap_or("");
    owner::has_prefix(&scope.project, name)
        && project
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|e| {
                e.get("key").and_then(Value::as_str) == Some(VERCEL_MARKER_ENV)
                    && e.get("value").and_then(Value::as_str) == Some(scope.project.as_str())
            })
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Whether an env var belongs to this scope: production vars target production with no
/// branch; a preview's target preview on its branch.
fn env_in_scope(e: &Value, scope: &Scope) -> bool {
    let (targets, branch) = env_target(scope);
    let has_target = match e.get("target") {
        Some(Value::Array(a)) => a
            .iter()
            .any(|t| targets.contains(&t.as_str().unwrap_or(""))),
        Some(Value::String(t)) => targets.contains(&t.as_str()),
        _ => false,
    };
    has_target && str_field(e, "gitBranch") == branch
}

/// A Vercel project as the model sees it.
pub fn map_project(p: &Value, scope: &Scope) -> VercelProject {
    let mut env: Vec<EnvVar> = p
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("key").and_then(Value::as_str) != Some(VERCEL_MARKER_ENV))
        .filter(|e| env_in_scope(e, scope))
        .filter_map(|e| {
            let name = str_field(e, "key")?;
            let from_comment = e
                .get("comment")
                .and_then(Value::as_str)
                .and_then(parse_comment);
            let source = match (from_comment, e.get("type").and_then(Value::as_str)) {
                (Some(s), _) => s,
                (None, Some("plain")) => {
                    EnvSource::Plain(str_field(e, "value").unwrap_or_default().into())
                }
                // Written by someone else and unreadable: show it as such, so the plan
                // rewrites it with what the file says.
                (None, _) => EnvSource::Plain("(unreadable value not written by Telbase)".into()),
            };
            Some(EnvVar {
                name: name.into(),
                source,
            })
        })
        .collect();
    env.sort_by(|a, b| a.name.cmp(&b.name));
    let link = p
        .get("link")
        .filter(|l| l.get("type").and_then(Value::as_str) == Some("github"));
    VercelProject {
        framework: str_field(p, "framework"),
        root_directory: str_field(p, "rootDirectory"),
        build_command: str_field(p, "buildCommand"),
        install_command: str_field(p, "installCommand"),
        output_directory: str_field(p, "outputDirectory"),
        node_version: str_field(p, "nodeVersion"),
        production_branch: link
            .and_then(|l| str_field(l, "productionBranch"))
            .unwrap_or_else(|| "main".into()),
        env,
        preview_branch_of_pr: match scope.environment {
            Environment::Production => None,
            Environment::Preview { pull_request } => Some(pull_request),
        },
        git_repository: link.and_then(|l| {
            Some(format!(
                "{}/{}",
                str_field(l, "org")?,
                str_field(l, "repo")?
            ))
        }),
        production_commit: match scope.environment {
            Environment::Production => p
                .pointer("/targets/production/meta/githubCommitSha")
                .and_then(Value::as_str)
                .map(str::to_owned),
            Environment::Preview { .. } => None,
        },
    }
}

/// The settings part of a create or update body.
fn settings_body(spec: &VercelProject) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: &Option<String>| {
        m.insert(
            k.into(),
            v.clone().map(Value::String).unwrap_or(Value::Null),
        );
    };
    put("framework", &spec.framework);
    put("rootDirectory", &spec.root_directory);
    put("buildCommand", &spec.build_command);
    put("installCommand", &spec.install_command);
    put("outputDirectory", &spec.output_directory);
    m
}

impl Vercel {
    pub fn new(http: Http, ep: Endpoint) -> Self {
        Vercel { http, ep }
    }

    async fn list_projects(&self, scope: &Scope) -> Result<Vec<Value>, ProviderError> {
        let call = Call::get("/v10/projects", "list projects")
            .query("search", format!("{}-", scope.project))
            .query("limit", "100");
        let all = self
            .http
            .list(&self.ep, call, "/projects", Paging::VercelNext("from"))
            .await?;
        Ok(all.into_iter().filter(|p| owned(p, scope)).collect())
    }

    async fn get_project(&self, name: &str) -> Result<Option<Value>, ProviderError> {
        let call = Call::get(
            format!("/v9/projects/{}", enc(name)),
            format!("read project {name}"),
        );
        match self.http.json(&self.ep, &call).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_project(
        &self,
        scope: &Scope,
        res: &Resource,
        spec: &VercelProject,
        inputs: &Inputs,
    ) -> Result<Applied, ProviderError> {
        let name = &res.key.name;
        let what = format!("create project {name}");
        // After a crash the project may already be there: adopt it if it is ours.
        let id_of = |p: &Value| str_field(p, "id").unwrap_or_else(|| name.to_string());
        let id = if let Some(existing) = self.get_project(name).await? {
            if !owned(&existing, scope) {
                return Err(foreign(&what, name));
            }
            id_of(&existing)
        } else {
            let mut body = settings_body(spec);
            body.insert("name".into(), json!(name));
            if let Some(repo) = &spec.git_repository {
                body.insert(
                    "gitRepository".into(),
                    json!({"type": "github", "repo": repo}),
                );
            }
            // The marker goes in with the project, so there is never an unmarked project.
            body.insert(
                "environmentVariables".into(),
                json!([{
                    "key": VERCEL_MARKER_ENV,
                    "value": scope.project,
                    "type": "plain",
                    "target": ["production", "preview", "development"],
                }]),
            );
            // Vercel refuses a second project of the same name (409), so a retry after an
            // ambiguous failure cannot make a duplicate.
            let call = Call::new(Method::POST, "/v11/projects", what.clone())
                .json(Value::Object(body))
                .retry(Retry::Always);
            match self.http.send(&self.ep, &call).await {
                Ok(r) => id_of(&r.body),
                Err(e) if e.kind == ErrorKind::Conflict => match self.get_project(name).await? {
                    Some(p) if owned(&p, scope) => id_of(&p),
                    _ => return Err(foreign(&what, name)),
                },
                Err(e) => return Err(e),
            }
        };
        if spec.node_version.is_some() {
            self.patch_settings(name, spec, true).await?;
        }
        self.write_env(scope, name, spec, inputs, &[]).await?;
        self.deploy_if_needed(scope, &id, name, spec, None).await
    }

    async fn patch_settings(
        &self,
        name: &str,
        spec: &VercelProject,
        node_only: bool,
    ) -> Result<(), ProviderError> {
        let mut body = if node_only {
            serde_json::Map::new()
        } else {
            settings_body(spec)
        };
        if let Some(n) = &spec.node_version {
            body.insert("nodeVersion".into(), json!(n));
        }
        let call = Call::new(
            Method::PATCH,
            format!("/v9/projects/{}", enc(name)),
            format!("update project {name}"),
        )
        .json(Value::Object(body))
        // Setting the same fields twice is harmless.
        .retry(Retry::Always);
        self.http.send(&self.ep, &call).await.map(drop)
    }

    /// Upsert every desired env var of this scope and remove the ones the file dropped.
    async fn write_env(
        &self,
        scope: &Scope,
        name: &str,
        spec: &VercelProject,
        inputs: &Inputs,
        observed_env: &[Value],
    ) -> Result<(), ProviderError> {
        let (targets, branch) = env_target(scope);
        if !spec.env.is_empty() {
            let mut items = Vec::with_capacity(spec.env.len());
            for var in &spec.env {
                let (value, kind) = match &var.source {
                    EnvSource::Plain(v) => (SecretString::from(v.as_str()), "plain"),
                    _ => {
                        let v = inputs.env.get(var.name.as_str()).ok_or_else(|| {
                            err(
                                ErrorKind::Permanent,
                                &format!("write env {} of {name}", var.name),
                                "its value was not resolved before apply",
                            )
                        })?;
                        (v.clone(), "sensitive")
                    }
                };
                let mut item = json!({
                    "key": var.name,
                    // Exposed only into the request body, which is sent and dropped.
                    "value": value.expose_secret(),
                    "type": kind,
                    "target": targets,
                });
                if let Some(b) = &branch {
                    item["gitBranch"] = json!(b);
                }
                if let Some(c) = source_comment(&var.source) {
                    item["comment"] = json!(c);
                }
                items.push(item);
            }
            let call = Call::new(
                Method::POST,
                format!("/v10/projects/{}/env", enc(name)),
                format!("write env of {name}"),
            )
            .query("upsert", "true")
            .json(Value::Array(items))
            // Upsert: the same write twice leaves the same state.
            .retry(Retry::Always);
            self.http.send(&self.ep, &call).await?;
        }
        let wanted: std::collections::BTreeSet<&str> =
            spec.env.iter().map(|v| v.name.as_str()).collect();
        for e in observed_env {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            if key == VERCEL_MARKER_ENV || wanted.contains(key) || !env_in_scope(e, scope) {
                continue;
            }
            let Some(id) = e.get("id").and_then(Value::as_str) else {
                continue;
            };
            let call = Call::new(
                Method::DELETE,
                format!("/v9/projects/{}/env/{}", enc(name), enc(id)),
                format!("remove env {key} of {name}"),
            );
            match self.http.send(&self.ep, &call).await {
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deploy the pinned commit to production unless it already runs there: create the
    /// deployment (or find the one an earlier, interrupted run created), wait until it is
    /// ready or failed, then promote it.
    async fn deploy_if_needed(
        &self,
        scope: &Scope,
        id: &str,
        name: &str,
        spec: &VercelProject,
        observed_commit: Option<&str>,
    ) -> Result<Applied, ProviderError> {
        let url = format!("https://{name}.vercel.app");
        let (Some(sha), Environment::Production) = (&spec.production_commit, scope.environment)
        else {
            return Ok(Applied {
                provider_id: name.to_owned(),
                url: Some(url),
            });
        };
        if observed_commit == Some(sha.as_str()) {
            return Ok(Applied {
                provider_id: name.to_owned(),
                url: Some(url),
            });
        }
        let what = format!("deploy {} to {name}", short(sha));
        let git = scope.git.as_ref();
        let repo = spec.git_repository.as_deref().ok_or_else(|| {
            err(
                ErrorKind::Permanent,
                &what,
                "Vercel deploys from GitHub: the repository has no GitHub `origin` remote",
            )
        })?;
        let (org, repo_name) = repo.split_once('/').ok_or_else(|| {
            err(
                ErrorKind::Permanent,
                &what,
                format!("`{repo}` is not owner/name"),
            )
        })?;
        let branch = git
            .map(|g| g.branch.clone())
            .unwrap_or_else(|| spec.production_branch.clone());

        let existing = self
            .http
            .json(
                &self.ep,
                &Call::get("/v6/deployments", format!("find deployments of {name}"))
                    .query("projectId", id)
                    .query("target", "production")
                    .query("sha", sha.clone())
                    .query("limit", "5"),
            )
            .await?;
        let reusable = existing
            .get("deployments")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|d| {
                !matches!(
                    d.get("state")
                        .or_else(|| d.get("readyState"))
                        .and_then(Value::as_str),
                    Some("ERROR" | "CANCELED")
                )
            })
            .and_then(|d| d.get("uid").and_then(Value::as_str).map(str::to_owned));
        let deployment = match reusable {
            Some(d) => d,
            None => {
                let body = json!({
                    "name": name,
                    "project": id,
                    "target": "production",
                    "gitSource": {"type": "github", "org": org, "repo": repo_name, "ref": branch, "sha": sha},
                });
                // Each POST makes a new deployment; a retry after an ambiguous failure is
                // resolved by the next run's lookup above.
                let call = Call::new(Method::POST, "/v13/deployments", what.clone()).json(body);
                let d = self.http.json(&self.ep, &call).await?;
                d.get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        err(
                            ErrorKind::Transient,
                            &what,
                            "the response has no deployment id",
                        )
                    })?
            }
        };
        let ready_url = self
            .http
            .poll(P, &what, || async {
                let d = self
                    .http
                    .json(
                        &self.ep,
                        &Call::get(
                            format!("/v13/deployments/{}", enc(&deployment)),
                            what.clone(),
                        ),
                    )
                    .await?;
                match d.get("readyState").and_then(Value::as_str) {
                    Some("READY") => Ok(Some(str_field(&d, "url"))),
                    Some(state @ ("ERROR" | "CANCELED")) => {
                        let reason = d
                            .get("errorMessage")
                            .and_then(Value::as_str)
                            .unwrap_or("no reason given");
                        Err(err(
                            ErrorKind::Permanent,
                            &what,
                            format!("the build ended {state}: {reason}"),
                        ))
                    }
                    _ => Ok(None),
                }
            })
            .await?;
        let call = Call::new(
            Method::POST,
            format!("/v10/projects/{}/promote/{}", enc(id), enc(&deployment)),
            format!("promote {} on {name}", short(sha)),
        )
        // Promoting the same deployment twice leaves it promoted.
        .retry(Retry::Always);
        self.http.send(&self.ep, &call).await?;
        Ok(Applied {
            provider_id: deployment,
            url: ready_url.map(|u| format!("https://{u}")).or(Some(url)),
        })
    }

    async fn delete_project(&self, name: &str) -> Result<Applied, ProviderError> {
        let call = Call::new(
            Method::DELETE,
            format!("/v9/projects/{}", enc(name)),
            format!("delete project {name}"),
        );
        match self.http.send(&self.ep, &call).await {
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Applied::default())
    }

    async fn add_domain(&self, scope: &Scope, domain: &Domain) -> Result<Applied, ProviderError> {
        let project = &domain.target.name;
        let what = format!("add domain {} to {project}", domain.hostname);
        let mut body = json!({"name": domain.hostname});
        if let (_, Some(b)) = env_target(scope) {
            body["gitBranch"] = json!(b);
        }
        let call = Call::new(
            Method::POST,
            format!("/v10/projects/{}/domains", enc(project)),
            what.clone(),
        )
        .json(body)
        // A second add of the same domain is a 409, handled below.
        .retry(Retry::Always);
        match self.http.send(&self.ep, &call).await {
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::Conflict => {
                // Ours already (an earlier run), or another project's: only the first is fine.
                let check = Call::get(
                    format!(
                        "/v9/projects/{}/domains/{}",
                        enc(project),
                        enc(&domain.hostname)
                    ),
                    what.clone(),
                );
                match self.http.send(&self.ep, &check).await {
                    Ok(_) => {}
                    Err(inner) if inner.kind == ErrorKind::NotFound => return Err(e),
                    Err(inner) => return Err(inner),
                }
            }
            Err(e) => return Err(e),
        }
        Ok(Applied {
            provider_id: domain.hostname.to_string(),
            url: Some(format!("https://{}", domain.hostname)),
        })
    }

    async fn remove_domain(&self, project: &str, host: &str) -> Result<Applied, ProviderError> {
        let call = Call::new(
            Method::DELETE,
            format!("/v9/projects/{}/domains/{}", enc(project), enc(host)),
            format!("remove domain {host} from {project}"),
        );
        match self.http.send(&self.ep, &call).await {
            Ok(_)
            | Err(ProviderError {
                kind: ErrorKind::NotFound,
                ..
            }) => Ok(Applied::default()),
            Err(e) => Err(e),
        }
    }

    async fn observe_all(&self, scope: &Scope) -> Result<Vec<Observed>, ProviderError> {
        let projects = self.list_projects(scope).await?;
        let mut out = Vec::new();
        let (_, branch) = env_target(scope);
        for p in &projects {
            let Some(name) = str_field(p, "name") else {
                continue;
            };
            let id = str_field(p, "id").unwrap_or_else(|| name.clone());
            let key = ResourceKey::new(Kind::VercelProject, name.clone());
            out.push(Observed {
                key: key.clone(),
                spec: ResourceSpec::VercelProject(Box::new(map_project(p, scope))),
                provider_id: id,
                deletion_allowed: false,
            });
            let call = Call::get(
                format!("/v9/projects/{}/domains", enc(&name)),
                format!("list domains of {name}"),
            )
            .query("limit", "100");
            let domains = self
                .http
                .list(&self.ep, call, "/domains", Paging::VercelNext("until"))
                .await?;
            for d in domains {
                let Some(host) = str_field(&d, "name") else {
                    continue;
                };
                if str_field(&d, "gitBranch") != branch {
                    continue;
                }
                out.push(Observed {
                    key: ResourceKey::new(Kind::VercelDomain, host.clone()),
                    spec: ResourceSpec::VercelDomain(Domain {
                        hostname: host.as_str().into(),
                        target: key.clone(),
                    }),
                    provider_id: host,
                    deletion_allowed: false,
                });
            }
        }
        Ok(out)
    }

    async fn apply_change(
        &self,
        scope: &Scope,
        change: Change<'_>,
        inputs: &Inputs,
    ) -> Result<Applied, ProviderError> {
        match change {
            Change::Create { desired } | Change::Replace { desired, .. } => {
                if let Change::Replace { observed, .. } = change {
                    self.delete_observed(observed).await?;
                }
                match &desired.spec {
                    ResourceSpec::VercelProject(spec) => {
                        self.create_project(scope, desired, spec, inputs).await
                    }
                    ResourceSpec::VercelDomain(d) => self.add_domain(scope, d).await,
                    _ => Err(unsupported(&desired.key)),
                }
            }
            Change::Update {
                desired,
                observed,
                changes,
            } => match (&desired.spec, &observed.spec) {
                (ResourceSpec::VercelProject(spec), ResourceSpec::VercelProject(before)) => {
                    let name = &desired.key.name;
                    let settings_changed = changes.iter().any(|c| {
                        let top = c.path.split('.').next().unwrap_or("");
                        !matches!(
                            top,
                            "env" | "production_commit" | "git_repository" | "preview_branch_of_pr"
                        )
                    });
                    if settings_changed {
                        self.patch_settings(name, spec, false).await?;
                    }
                    if spec.env != before.env {
                        let current = self.get_project(name).await?.ok_or_else(|| {
                            err(
                                ErrorKind::NotFound,
                                &format!("update project {name}"),
                                "the project is gone",
                            )
                        })?;
                        let env: Vec<Value> = current
                            .get("env")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        self.write_env(scope, name, spec, inputs, &env).await?;
                    }
                    self.deploy_if_needed(
                        scope,
                        &observed.provider_id,
                        name,
                        spec,
                        before.production_commit.as_deref(),
                    )
                    .await
                }
                (ResourceSpec::VercelDomain(d), _) => self.add_domain(scope, d).await,
                _ => Err(unsupported(&desired.key)),
            },
            Change::Delete { observed } => self.delete_observed(observed).await,
        }
    }

    async fn delete_observed(&self, observed: &Observed) -> Result<Applied, ProviderError> {
        match &observed.spec {
            ResourceSpec::VercelProject(_) => self.delete_project(&observed.key.name).await,
            ResourceSpec::VercelDomain(d) => self.remove_domain(&d.target.name, &d.hostname).await,
            _ => Err(unsupported(&observed.key)),
        }
    }
}

fn unsupported(key: &ResourceKey) -> ProviderError {
    err(
        ErrorKind::Permanent,
        &format!("change {key}"),
        "not a Vercel resource",
    )
}

fn foreign(what: &str, name: &str) -> ProviderError {
    ProviderError::new(
        P,
        ErrorKind::Conflict,
        what,
        Some(409),
        format!(
            "a Vercel project named `{name}` exists but was not created by Telbase for this project; rename the app or remove that project"
        ),
        None,
        None,
    )
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// Percent-encode one path segment (names are validated, but ids come from outside).
pub(crate) fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Provider for Vercel {
    fn provider(&self) -> model::Provider {
        P
    }

    fn observe<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<Observed>, ProviderError>> {
        Box::pin(self.observe_all(scope))
    }

    fn apply<'a>(
        &'a self,
        scope: &'a Scope,
        change: Change<'a>,
        inputs: &'a Inputs,
        _desired: &'a model::DesiredState,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(self.apply_change(scope, change, inputs))
    }

    fn output<'a>(
        &'a self,
        _scope: &'a Scope,
        resource: &'a Resource,
        output: Output,
    ) -> BoxFuture<'a, Result<SecretString, ProviderError>> {
        Box::pin(async move {
            let host = format!("{}.vercel.app", resource.key.name);
            match output {
                Output::Url => Ok(SecretString::from(format!("https://{host}"))),
                Output::Host => Ok(SecretString::from(host)),
                other => Err(err(
                    ErrorKind::Permanent,
                    &format!("read {other:?} of {}", resource.key),
                    "Vercel projects offer only url and host",
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip() {
        let sealed = EnvSource::Sealed(Sealed::new("-----BEGIN AGE ENCRYPTED FILE-----".into()));
        let c = source_comment(&sealed).unwrap();
        assert_eq!(parse_comment(&c), Some(sealed));
        let stored = EnvSource::Stored {
            name: "API_KEY".into(),
            fingerprint: Some("hmac:0123456789abcdef".into()),
        };
        let c = source_comment(&stored).unwrap();
        assert_eq!(c, "telbase stored API_KEY hmac:0123456789abcdef");
        assert_eq!(parse_comment(&c), Some(stored));
        let out = EnvSource::Output {
            resource: ResourceKey::new(Kind::NeonDatabase, "notes-main"),
            output: Output::Url,
        };
        let c = source_comment(&out).unwrap();
        assert_eq!(c, "telbase from neon/database/notes-main url");
        assert_eq!(parse_comment(&c), Some(out));
        assert_eq!(parse_comment("hand-written"), None);
        assert_eq!(parse_comment("telbase from nowhere url"), None);
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(enc("a/b c"), "a%2Fb%20c");
        assert_eq!(enc("prj_1.x-y"), "prj_1.x-y");
    }
}
