//! Neon: a project per database (with its default branch, role, database and compute
//! endpoint, created in one call), the database's owner role, preview branches, and the
//! connection string fetched on demand from `connection_uri`. Wire shapes follow the Neon
//! API v2 description (../shared/provider-apis/neon).
//!
//! Ownership: the project's name carries the project prefix and its default branch carries
//! `telbase-project` / `telbase-environment` annotations, set in the create call. Every
//! mutation returns `operations[]`; we wait for them to finish before going on, as Neon
//! asks. Neon lets two projects share a name, so a create that failed ambiguously (a
//! timeout after sending) is resolved by looking for the project before trying again.

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::http::{Call, Endpoint, Http, Paging, Retry};
use super::owner::{
    self, NEON_DELETION_ANNOTATION, NEON_ENVIRONMENT_ANNOTATION, NEON_PROJECT_ANNOTATION,
};
use super::vercel::enc;
use super::{Applied, BoxFuture, Change, ErrorKind, Inputs, Provider, ProviderError, Scope};
use crate::model::{
    self, DesiredState, Environment, Kind, NamedDatabase, NeonBranch, NeonProject, Observed,
    Output, Resource, ResourceKey, ResourceSpec,
};

pub struct Neon {
    http: Http,
    ep: Endpoint,
    /// What observe and creates learned about our projects, for the rest of this run: it
    /// saves a list and a branch read per step. A client lives for one reconcile, so the
    /// cache never outlives the observation it came from; mutations that change a project's
    /// branches drop its entry.
    cache: std::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// Scopes (by project) whose Neon projects were all listed: a name missing from
    /// `projects` is known not to exist.
    listed: std::collections::BTreeSet<String>,
    /// Known projects; the flag says a mutation may have changed its branches since.
    projects: std::collections::BTreeMap<(String, String), (Owned, bool)>,
}

const P: model::Provider = model::Provider::Neon;

/// Neon's default branch name; previews branch from it.
const DEFAULT_BRANCH: &str = "main";

fn err(kind: ErrorKind, what: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::new(P, kind, what, None, message, None, None)
}

fn s(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A Neon project that Telbase owns, with what observe learned about it.
#[derive(Clone)]
struct Owned {
    id: String,
    name: String,
    project: Value,
    default_branch: Value,
    /// Every branch, with its annotations merged in under `annotations`.
    branches: Vec<Value>,
}

/// Make a connection string require TLS: keep `verify-full`/`verify-ca`/`require`, replace
/// anything weaker (or nothing) with `sslmode=require`.
pub fn require_tls(uri: &str) -> String {
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let strong = [
        "sslmode=require",
        "sslmode=verify-ca",
        "sslmode=verify-full",
    ];
    if !params.iter().any(|p| strong.contains(&p.as_str())) {
        params.retain(|p| !p.starts_with("sslmode="));
        params.push("sslmode=require".into());
    }
    format!("{base}?{}", params.join("&"))
}

impl Neon {
    pub fn new(http: Http, ep: Endpoint) -> Self {
        Neon {
            http,
            ep,
            cache: Default::default(),
        }
    }

    /// Projects whose name has the prefix and whose default branch carries our marker.
    async fn owned_projects(&self, scope: &Scope) -> Result<Vec<Owned>, ProviderError> {
        let call =
            Call::get("/projects", "list projects").query("search", format!("{}-", scope.project));
        let projects = self
            .http
            .list(
                &self.ep,
                call,
                "/projects",
                Paging::NeonCursor { limit: 400 },
            )
            .await?;
        let mut out = Vec::new();
        for p in projects {
            let (Some(id), Some(name)) = (s(&p, "id"), s(&p, "name")) else {
                continue;
            };
            if !owner::has_prefix(&scope.project, &name) {
                continue;
            }
            let branches = self.branches(&id).await?;
            let Some(default) = branches
                .iter()
                .find(|b| b.get("default").and_then(Value::as_bool) == Some(true))
                .cloned()
            else {
                continue;
            };
            if default
                .pointer(&format!("/annotations/{NEON_PROJECT_ANNOTATION}"))
                .and_then(Value::as_str)
                != Some(scope.project.as_str())
            {
                continue;
            }
            out.push(Owned {
                id,
                name,
                project: p,
                default_branch: default,
                branches,
            });
        }
        if let Ok(mut c) = self.cache.lock() {
            c.projects
                .retain(|(scope_project, _), _| scope_project != &scope.project);
            for o in &out {
                c.projects
                    .insert((scope.project.clone(), o.name.clone()), (o.clone(), false));
            }
            c.listed.insert(scope.project.clone());
        }
        Ok(out)
    }

    /// After a mutation: a known project is re-read (its branches) on next use; an unknown
    /// name sends the next lookup back to the full list.
    fn forget(&self, scope: &Scope, name: &str) {
        if let Ok(mut c) = self.cache.lock() {
            match c
                .projects
                .get_mut(&(scope.project.clone(), name.to_owned()))
            {
                Some(entry) => entry.1 = true,
                None => {
                    c.listed.remove(&scope.project);
                }
            }
        }
    }

    async fn branches(&self, project_id: &str) -> Result<Vec<Value>, ProviderError> {
        let call = Call::get(
            format!("/projects/{}/branches", enc(project_id)),
            format!("list branches of {project_id}"),
        );
        let resp = self.http.json(&self.ep, &call).await?;
        let annotations = resp.get("annotations").cloned().unwrap_or(Value::Null);
        let mut branches: Vec<Value> = resp
            .get("branches")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| {
                err(
                    ErrorKind::Transient,
                    &call.what,
                    "the response has no `branches` list",
                )
            })?;
        for b in &mut branches {
            let id = s(b, "id").unwrap_or_default();
            let a = annotations
                .pointer(&format!("/{id}/value"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            b["annotations"] = a;
        }
        Ok(branches)
    }

    async fn databases(
        &self,
        project_id: &str,
        branch_id: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let call = Call::get(
            format!(
                "/projects/{}/branches/{}/databases",
                enc(project_id),
                enc(branch_id)
            ),
            format!("list databases of {project_id}"),
        );
        self.http
            .list(&self.ep, call, "/databases", Paging::None)
            .await
    }

    /// Wait for the operations a mutation started.
    async fn wait(&self, project_id: &str, resp: &Value, what: &str) -> Result<(), ProviderError> {
        let ops: Vec<String> = resp
            .get("operations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|o| s(o, "id"))
            .collect();
        for op in ops {
            let path = format!("/projects/{}/operations/{}", enc(project_id), enc(&op));
            self.http
                .poll(P, what, || async {
                    let v = self
                        .http
                        .json(&self.ep, &Call::get(path.clone(), what.to_owned()))
                        .await?;
                    match v.pointer("/operation/status").and_then(Value::as_str) {
                        Some("finished" | "skipped") => Ok(Some(())),
                        Some(st @ ("failed" | "error" | "cancelled")) => Err(err(
                            ErrorKind::Permanent,
                            what,
                            format!(
                                "operation {op} ended {st}: {}",
                                v.pointer("/operation/error")
                                    .and_then(Value::as_str)
                                    .unwrap_or("no reason given")
                            ),
                        )),
                        _ => Ok(None),
                    }
                })
                .await?;
        }
        Ok(())
    }

    async fn find(&self, scope: &Scope, name: &str) -> Result<Option<Owned>, ProviderError> {
        let key = (scope.project.clone(), name.to_owned());
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|c| match c.projects.get(&key) {
                Some((o, stale)) => Some(Some((o.clone(), *stale))),
                None if c.listed.contains(&scope.project) => Some(None),
                None => None,
            });
        match cached {
            Some(Some((o, false))) => return Ok(Some(o)),
            Some(Some((mut o, true))) => {
                // One read of its branches brings it up to date.
                match self.branches(&o.id).await {
                    Ok(branches) => {
                        if let Some(d) = branches
                            .iter()
                            .find(|b| b.get("default").and_then(Value::as_bool) == Some(true))
                        {
                            o.default_branch = d.clone();
                        }
                        o.branches = branches;
                        if let Ok(mut c) = self.cache.lock() {
                            c.projects.insert(key, (o.clone(), false));
                        }
                        return Ok(Some(o));
                    }
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        if let Ok(mut c) = self.cache.lock() {
                            c.projects.remove(&key);
                        }
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(None) => return Ok(None),
            None => {}
        }
        Ok(self
            .owned_projects(scope)
            .await?
            .into_iter()
            .find(|o| o.name == name))
    }

    async fn create_project(
        &self,
        scope: &Scope,
        res: &Resource,
        spec: &NeonProject,
        desired: &DesiredState,
    ) -> Result<Applied, ProviderError> {
        let name = &res.key.name;
        let what = format!("create project {name}");
        // The database that stands on this project, created in the same call so Neon makes
        // no stray `neondb` beside it.
        let db = desired.resources.values().find_map(|r| match &r.spec {
            ResourceSpec::NeonDatabase(d) if r.depends_on.contains(&res.key) => Some(d.clone()),
            _ => None,
        });
        let mut annotations = json!({
            NEON_PROJECT_ANNOTATION: scope.project,
            NEON_ENVIRONMENT_ANNOTATION: owner::environment_label(scope.environment),
        });
        if res.allow_data_loss {
            annotations[NEON_DELETION_ANNOTATION] = json!("true");
        }
        let mut branch = json!({"name": DEFAULT_BRANCH, "annotations": annotations});
        if let Some(d) = &db {
            branch["database_name"] = json!(d.database);
            branch["role_name"] = json!(d.owner);
        }
        let body = json!({"project": {
            "name": name,
            "region_id": spec.region,
            "pg_version": spec.pg_version,
            "branch": branch,
        }});
        let mut attempts = 0;
        let owned = loop {
            attempts += 1;
            if let Some(found) = self.find(scope, name).await? {
                break found;
            }
            let call = Call::new(Method::POST, "/projects", what.clone()).json(body.clone());
            match self.http.json(&self.ep, &call).await {
                Ok(resp) => {
                    let id = resp
                        .pointer("/project/id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            err(
                                ErrorKind::Transient,
                                &what,
                                "the response has no project id",
                            )
                        })?
                        .to_owned();
                    self.wait(&id, &resp, &what).await?;
                    self.forget(scope, name);
                    match self.find(scope, name).await? {
                        Some(found) => break found,
                        None => {
                            return Err(err(
                                ErrorKind::Transient,
                                &what,
                                "the new project is not listed yet",
                            ));
                        }
                    }
                }
                // Maybe created, maybe not: look (really look) before sending it again.
                Err(e) if e.kind == ErrorKind::Transient && attempts < 4 => {
                    self.forget(scope, name);
                    tracing::debug!(what = %what, error = %e, "ambiguous failure; looking before retrying");
                }
                Err(e) => return Err(e),
            }
        };
        self.set_protection(&owned, spec.deletion_protection)
            .await?;
        Ok(Applied {
            provider_id: owned.id,
            url: None,
        })
    }

    async fn set_protection(&self, owned: &Owned, protect: bool) -> Result<(), ProviderError> {
        if owned
            .default_branch
            .get("protected")
            .and_then(Value::as_bool)
            == Some(protect)
        {
            return Ok(());
        }
        let branch_id = s(&owned.default_branch, "id").unwrap_or_default();
        let what = format!("set deletion protection of {}", owned.name);
        let call = Call::new(
            Method::PATCH,
            format!("/projects/{}/branches/{}", enc(&owned.id), enc(&branch_id)),
            what.clone(),
        )
        .json(json!({"branch": {"protected": protect}}))
        .retry(Retry::Always);
        let resp = self.http.json(&self.ep, &call).await?;
        self.wait(&owned.id, &resp, &what).await
    }

    async fn project_for(
        &self,
        scope: &Scope,
        key: &ResourceKey,
        project: &str,
    ) -> Result<Owned, ProviderError> {
        self.find(scope, project).await?.ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                &format!("change {key}"),
                format!(
                    "the Neon project `{project}` it belongs to is not there (or not Telbase's)"
                ),
            )
        })
    }

    async fn ensure_database(
        &self,
        scope: &Scope,
        key: &ResourceKey,
        db: &NamedDatabase,
    ) -> Result<Applied, ProviderError> {
        let owned = self.project_for(scope, key, &key.name).await?;
        let branch_id = s(&owned.default_branch, "id").unwrap_or_default();
        let base = format!("/projects/{}/branches/{}", enc(&owned.id), enc(&branch_id));
        // The owner role first.
        let role_what = format!("create role {} in {}", db.owner, owned.name);
        match self
            .http
            .send(
                &self.ep,
                &Call::get(
                    format!("{base}/roles/{}", enc(&db.owner)),
                    role_what.clone(),
                ),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {
                let call = Call::new(Method::POST, format!("{base}/roles"), role_what.clone())
                    .json(json!({"role": {"name": db.owner}}));
                // The response holds the new role's password; it is dropped unread.
                match self.http.json(&self.ep, &call).await {
                    Ok(resp) => self.wait(&owned.id, &resp, &role_what).await?,
                    Err(e) if e.kind == ErrorKind::Conflict => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        let what = format!("create database {} in {}", db.database, owned.name);
        let existing = self
            .http
            .send(
                &self.ep,
                &Call::get(
                    format!("{base}/databases/{}", enc(&db.database)),
                    what.clone(),
                ),
            )
            .await;
        let resp = match existing {
            Ok(r) => {
                if r.body
                    .pointer("/database/owner_name")
                    .and_then(Value::as_str)
                    == Some(db.owner.as_str())
                {
                    return Ok(Applied {
                        provider_id: db.database.to_string(),
                        url: None,
                    });
                }
                let call = Call::new(
                    Method::PATCH,
                    format!("{base}/databases/{}", enc(&db.database)),
                    format!("set owner of {}", db.database),
                )
                .json(json!({"database": {"owner_name": db.owner}}))
                .retry(Retry::Always);
                self.http.json(&self.ep, &call).await?
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                let call = Call::new(Method::POST, format!("{base}/databases"), what.clone())
                    .json(json!({"database": {"name": db.database, "owner_name": db.owner}}));
                match self.http.json(&self.ep, &call).await {
                    Ok(r) => r,
                    // Created by the attempt whose answer we lost.
                    Err(e) if e.kind == ErrorKind::Conflict => Value::Null,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        self.wait(&owned.id, &resp, &what).await?;
        Ok(Applied {
            provider_id: db.database.to_string(),
            url: None,
        })
    }

    async fn delete_database(
        &self,
        scope: &Scope,
        observed: &Observed,
        db: &NamedDatabase,
    ) -> Result<Applied, ProviderError> {
        let Some(owned) = self.find(scope, &observed.key.name).await? else {
            return Ok(Applied::default());
        };
        let branch_id = s(&owned.default_branch, "id").unwrap_or_default();
        let what = format!("delete database {} in {}", db.database, owned.name);
        let call = Call::new(
            Method::DELETE,
            format!(
                "/projects/{}/branches/{}/databases/{}",
                enc(&owned.id),
                enc(&branch_id),
                enc(&db.database)
            ),
            what.clone(),
        );
        self.delete_and_wait(&owned.id, &call).await
    }

    /// Send a DELETE and wait for the operations it starts; already gone counts as done.
    async fn delete_and_wait(
        &self,
        project_id: &str,
        call: &Call,
    ) -> Result<Applied, ProviderError> {
        match self.http.json(&self.ep, call).await {
            Ok(resp) => self.wait(project_id, &resp, &call.what).await?,
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Applied::default())
    }

    async fn delete_project(&self, scope: &Scope, name: &str) -> Result<Applied, ProviderError> {
        let Some(owned) = self.find(scope, name).await? else {
            return Ok(Applied::default());
        };
        let call = Call::new(
            Method::DELETE,
            format!("/projects/{}", enc(&owned.id)),
            format!("delete project {name}"),
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

    fn branch_name(scope: &Scope) -> String {
        owner::environment_label(scope.environment)
    }

    async fn create_branch(
        &self,
        scope: &Scope,
        key: &ResourceKey,
        spec: &NeonBranch,
    ) -> Result<Applied, ProviderError> {
        let owned = self.project_for(scope, key, &spec.project.name).await?;
        let name = Self::branch_name(scope);
        if let Some(b) = owned
            .branches
            .iter()
            .find(|b| s(b, "name").as_deref() == Some(name.as_str()))
        {
            return Ok(Applied {
                provider_id: s(b, "id").unwrap_or_default(),
                url: None,
            });
        }
        let what = format!("create branch {name} of {}", owned.name);
        let body = json!({
            "branch": {"name": name, "parent_id": s(&owned.default_branch, "id")},
            "endpoints": [{"type": "read_write"}],
            "annotation_value": {
                NEON_PROJECT_ANNOTATION: scope.project,
                NEON_ENVIRONMENT_ANNOTATION: owner::environment_label(scope.environment),
            },
        });
        let call = Call::new(
            Method::POST,
            format!("/projects/{}/branches", enc(&owned.id)),
            what.clone(),
        )
        .json(body);
        let resp = self.http.json(&self.ep, &call).await?;
        self.wait(&owned.id, &resp, &what).await?;
        Ok(Applied {
            provider_id: resp
                .pointer("/branch/id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            url: None,
        })
    }

    async fn delete_branch(
        &self,
        scope: &Scope,
        observed: &Observed,
    ) -> Result<Applied, ProviderError> {
        let ResourceSpec::NeonBranch(spec) = &observed.spec else {
            return Ok(Applied::default());
        };
        let Some(owned) = self.find(scope, &spec.project.name).await? else {
            return Ok(Applied::default());
        };
        let what = format!("delete branch {}", observed.key.name);
        let call = Call::new(
            Method::DELETE,
            format!(
                "/projects/{}/branches/{}",
                enc(&owned.id),
                enc(&observed.provider_id)
            ),
            what.clone(),
        );
        self.delete_and_wait(&owned.id, &call).await
    }

    async fn observe_all(&self, scope: &Scope) -> Result<Vec<Observed>, ProviderError> {
        let mut out = Vec::new();
        let label = owner::environment_label(scope.environment);
        for o in self.owned_projects(scope).await? {
            let project_key = ResourceKey::new(Kind::NeonProject, o.name.clone());
            let deletion_allowed = o
                .default_branch
                .pointer(&format!("/annotations/{NEON_DELETION_ANNOTATION}"))
                .and_then(Value::as_str)
                == Some("true");
            match scope.environment {
                Environment::Production => {
                    out.push(Observed {
                        key: project_key.clone(),
                        spec: ResourceSpec::NeonProject(NeonProject {
                            region: s(&o.project, "region_id").unwrap_or_default().into(),
                            pg_version: o
                                .project
                                .get("pg_version")
                                .and_then(Value::as_u64)
                                .unwrap_or(0) as u32,
                            deletion_protection: o
                                .default_branch
                                .get("protected")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                        }),
                        provider_id: o.id.clone(),
                        deletion_allowed,
                    });
                    let branch_id = s(&o.default_branch, "id").unwrap_or_default();
                    let mut dbs = self.databases(&o.id, &branch_id).await?;
                    // The first one made is ours (created with the project); later ones
                    // are someone else's business.
                    dbs.sort_by(|a, b| {
                        (s(a, "created_at"), s(a, "name")).cmp(&(s(b, "created_at"), s(b, "name")))
                    });
                    if let Some(db) = dbs.first() {
                        out.push(Observed {
                            key: ResourceKey::new(Kind::NeonDatabase, o.name.clone()),
                            spec: ResourceSpec::NeonDatabase(NamedDatabase {
                                database: s(db, "name").unwrap_or_default().into(),
                                owner: s(db, "owner_name").unwrap_or_default().into(),
                            }),
                            provider_id: s(db, "name").unwrap_or_default(),
                            deletion_allowed,
                        });
                    }
                }
                Environment::Preview { .. } => {
                    for b in &o.branches {
                        if b.pointer(&format!("/annotations/{NEON_ENVIRONMENT_ANNOTATION}"))
                            .and_then(Value::as_str)
                            != Some(label.as_str())
                        {
                            continue;
                        }
                        out.push(Observed {
                            key: ResourceKey::new(Kind::NeonBranch, format!("{}/{label}", o.name)),
                            spec: ResourceSpec::NeonBranch(NeonBranch {
                                project: project_key.clone(),
                                parent: DEFAULT_BRANCH.into(),
                            }),
                            provider_id: s(b, "id").unwrap_or_default(),
                            deletion_allowed: true,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Carry out a change, then drop what the cache knew about the project it touched.
    async fn apply_and_forget(
        &self,
        scope: &Scope,
        change: Change<'_>,
        desired: &DesiredState,
    ) -> Result<Applied, ProviderError> {
        let spec = match change {
            Change::Create { desired: r }
            | Change::Update { desired: r, .. }
            | Change::Replace { desired: r, .. } => &r.spec,
            Change::Delete { observed } => &observed.spec,
        };
        let project = match spec {
            ResourceSpec::NeonBranch(b) => b.project.name.clone(),
            _ => change.key().name.clone(),
        };
        let result = self.apply_change(scope, change, desired).await;
        self.forget(scope, &project);
        result
    }

    async fn apply_change(
        &self,
        scope: &Scope,
        change: Change<'_>,
        desired: &DesiredState,
    ) -> Result<Applied, ProviderError> {
        match change {
            Change::Create { desired: res } | Change::Replace { desired: res, .. } => {
                if let Change::Replace { observed, .. } = change {
                    self.delete_observed(scope, observed).await?;
                }
                match &res.spec {
                    ResourceSpec::NeonProject(p) => {
                        self.create_project(scope, res, p, desired).await
                    }
                    ResourceSpec::NeonDatabase(d) => self.ensure_database(scope, &res.key, d).await,
                    ResourceSpec::NeonBranch(b) => self.create_branch(scope, &res.key, b).await,
                    _ => Err(unsupported(&res.key)),
                }
            }
            Change::Update { desired: res, .. } => match &res.spec {
                ResourceSpec::NeonProject(p) => {
                    let owned = self.project_for(scope, &res.key, &res.key.name).await?;
                    self.set_protection(&owned, p.deletion_protection).await?;
                    Ok(Applied {
                        provider_id: owned.id,
                        url: None,
                    })
                }
                ResourceSpec::NeonDatabase(d) => self.ensure_database(scope, &res.key, d).await,
                ResourceSpec::NeonBranch(b) => self.create_branch(scope, &res.key, b).await,
                _ => Err(unsupported(&res.key)),
            },
            Change::Delete { observed } => self.delete_observed(scope, observed).await,
        }
    }

    async fn delete_observed(
        &self,
        scope: &Scope,
        observed: &Observed,
    ) -> Result<Applied, ProviderError> {
        match &observed.spec {
            ResourceSpec::NeonProject(_) => self.delete_project(scope, &observed.key.name).await,
            ResourceSpec::NeonDatabase(d) => self.delete_database(scope, observed, d).await,
            ResourceSpec::NeonBranch(_) => self.delete_branch(scope, observed).await,
            _ => Err(unsupported(&observed.key)),
        }
    }

    async fn connection_uri(
        &self,
        scope: &Scope,
        resource: &Resource,
        output: Output,
    ) -> Result<SecretString, ProviderError> {
        let what = format!("fetch the connection string of {}", resource.key);
        let (project, branch, db) = match &resource.spec {
            ResourceSpec::NeonDatabase(db) => (resource.key.name.clone(), None, Some(db.clone())),
            ResourceSpec::NeonBranch(b) => {
                (b.project.name.clone(), Some(Self::branch_name(scope)), None)
            }
            _ => return Err(unsupported(&resource.key)),
        };
        let owned = self.project_for(scope, &resource.key, &project).await?;
        let branch_id = match &branch {
            Some(name) => Some(
                owned
                    .branches
                    .iter()
                    .find(|b| s(b, "name").as_deref() == Some(name.as_str()))
                    .and_then(|b| s(b, "id"))
                    .ok_or_else(|| {
                        err(
                            ErrorKind::NotFound,
                            &what,
                            format!("branch {name} is not there yet"),
                        )
                    })?,
            ),
            None => None,
        };
        let db = match db {
            Some(d) => d,
            None => {
                let dbs = self
                    .databases(&owned.id, branch_id.as_deref().unwrap_or_default())
                    .await?;
                let first = dbs
                    .first()
                    .ok_or_else(|| err(ErrorKind::NotFound, &what, "the branch has no database"))?;
                NamedDatabase {
                    database: s(first, "name").unwrap_or_default().into(),
                    owner: s(first, "owner_name").unwrap_or_default().into(),
                }
            }
        };
        let mut call = Call::get(
            format!("/projects/{}/connection_uri", enc(&owned.id)),
            what.clone(),
        )
        .query("database_name", db.database.clone())
        .query("role_name", db.owner.clone());
        if let Some(b) = branch_id {
            call = call.query("branch_id", b);
        }
        let resp = self.http.json(&self.ep, &call).await?;
        let uri = resp
            .get("uri")
            .and_then(Value::as_str)
            .ok_or_else(|| err(ErrorKind::Transient, &what, "the response has no `uri`"))?;
        let uri = require_tls(uri);
        let value = match output {
            Output::Url => uri,
            Output::Database => db.database.to_string(),
            Output::User => db.owner.to_string(),
            other => {
                return Err(err(
                    ErrorKind::Permanent,
                    &what,
                    format!("Neon databases offer url, database and user, not {other:?}"),
                ));
            }
        };
        Ok(SecretString::from(value))
    }
}

fn unsupported(key: &ResourceKey) -> ProviderError {
    err(
        ErrorKind::Permanent,
        &format!("change {key}"),
        "not a Neon resource",
    )
}

impl Provider for Neon {
    fn provider(&self) -> model::Provider {
        P
    }

    fn observe<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<Observed>, ProviderError>> {
        Box::pin(self.observe_all(scope))
    }

    fn preview_environments<'a>(
        &'a self,
        project: &'a str,
    ) -> BoxFuture<'a, Result<Vec<u64>, ProviderError>> {
        Box::pin(async move {
            let scope = Scope {
                project: project.to_owned(),
                environment: Environment::Production,
                git: None,
            };
            let mut out = std::collections::BTreeSet::new();
            // Owned projects only (both marks), and of those only branches annotated with
            // a preview environment.
            for o in self.owned_projects(&scope).await? {
                for b in &o.branches {
                    if let Some(n) = b
                        .pointer(&format!("/annotations/{NEON_ENVIRONMENT_ANNOTATION}"))
                        .and_then(Value::as_str)
                        .and_then(|l| l.strip_prefix("pr-"))
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        out.insert(n);
                    }
                }
            }
            Ok(out.into_iter().collect())
        })
    }

    fn apply<'a>(
        &'a self,
        scope: &'a Scope,
        change: Change<'a>,
        _inputs: &'a Inputs,
        desired: &'a DesiredState,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(self.apply_and_forget(scope, change, desired))
    }

    fn output<'a>(
        &'a self,
        scope: &'a Scope,
        resource: &'a Resource,
        output: Output,
    ) -> BoxFuture<'a, Result<SecretString, ProviderError>> {
        Box::pin(self.connection_uri(scope, resource, output))
    }
}

#[cfg(test)]
mod tests {
    use super::require_tls;

    #[test]
    fn tls_is_always_required() {
        assert_eq!(
            require_tls("postgresql://u:p@h/db"),
            "postgresql://u:p@h/db?sslmode=require"
        );
        assert_eq!(
            require_tls("postgresql://u:p@h/db?sslmode=disable&x=1"),
            "postgresql://u:p@h/db?x=1&sslmode=require"
        );
        assert_eq!(
            require_tls("postgresql://u:p@h/db?sslmode=prefer"),
            "postgresql://u:p@h/db?sslmode=require"
        );
        assert_eq!(
            require_tls("postgresql://u:p@h/db?sslmode=verify-full"),
            "postgresql://u:p@h/db?sslmode=verify-full"
        );
    }
}
