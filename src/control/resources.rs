//! The control plane's project resources as plain functions: projects, their environments,
//! runs, env vars and the team's audit log, each returning typed data that serializes to
//! what `/api/v1` answers (and what the OpenAPI description says). Both the REST handlers
//! (`super::api::rest`) and the dashboard call these, so nothing here knows about HTTP:
//! the caller has already authorized the principal (`roles::allows`) and resolved the team;
//! these functions keep every read inside that team (another team's project or run is
//! [`ResourceError::NotFound`], exactly like a missing one).
//!
//! Env var VALUES never leave this module except into the envelope store: a value arrives
//! as a [`SecretString`], is sealed by [`crate::secrets::stored::set`], and what comes back
//! is a name, a version, a time, the mask and the store's short keyed fingerprint.

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use super::db::Db;
use super::projects::{self, AuditQuery, NewProject, Project, RunQuery};
use super::secrets;
use crate::secrets::envelope::KeyProvider;
use crate::store::runs::RunRecord;
use crate::store::{SecretName, SecretRows as _, Store, StoreError, StoredSecret};

/// What an env var's value is shown as: the same mask as `telbase env list`.
pub const MASK: &str = crate::cli::env::MASK;

/// The environments stored env vars are kept for (every preview shares `preview`).
pub const ENV_VAR_ENVIRONMENTS: [&str; 2] = ["production", "preview"];

/// Why a resource operation did not happen. Callers branch on the kind: the API maps
/// `NotFound` to 404, `Invalid` to 400, `InvalidCursor` to 400 `invalid_cursor`,
/// `Conflict` to 409 and `Unavailable`/`Store` to 503.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("not a cursor from this API")]
    InvalidCursor,
    #[error("{0}")]
    Conflict(String),
    /// The team may not do this with that input (a repository not granted to it).
    #[error("{0}")]
    Forbidden(String),
    /// The server cannot do this now (no master key to seal with, a fault it logged).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, ResourceError>;

/// A page of items, newest or alphabetically first; `next_cursor` is absent on the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProjectPage {
    pub items: Vec<Project>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RunPage {
    pub items: Vec<RunSummary>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEventPage {
    pub items: Vec<AuditEventView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EnvironmentList {
    pub items: Vec<EnvironmentView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EnvVarList {
    pub items: Vec<EnvVarView>,
}

/// One run without its plan and report (the list's row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub id: String,
    /// `production` or `preview-N`.
    pub environment: String,
    pub pull_request: Option<u64>,
    pub sha: String,
    pub branch: String,
    /// push, pr, poll, drift, install, teardown or sweep.
    pub trigger: String,
    /// apply, teardown or drift.
    pub mode: String,
    /// Unix ms.
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// running, success, failure (will be retried) or error (given up).
    pub outcome: String,
    pub summary: String,
}

impl From<&RunRecord> for RunSummary {
    fn from(r: &RunRecord) -> RunSummary {
        RunSummary {
            id: r.id.clone(),
            environment: r.environment.clone(),
            pull_request: r.pull_request,
            sha: r.sha.clone(),
            branch: r.branch.clone(),
            trigger: r.trigger.clone(),
            mode: r.mode.clone(),
            started_at: r.started_at,
            ended_at: r.ended_at,
            outcome: r.outcome.clone(),
            summary: r.summary.clone(),
        }
    }
}

/// One step of a run's per-resource report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReportStep {
    /// The resource (`vercel_project.web`, …).
    pub key: String,
    /// create, update, replace, delete, …
    pub action: String,
    /// done, failed or skipped.
    pub outcome: String,
    /// The URL a done step reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why a failed step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failed step a skipped one depended on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub because: Option<String>,
    pub millis: u64,
}

/// One run in full: its status, the plan and the per-resource report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    pub run: RunSummary,
    /// The plan as `telbase plan` rendered it when the run was made, stored as that text
    /// (secret values appear as keyed fingerprints only). Empty when no plan was made.
    pub plan: String,
    /// What the executor did to each resource, in order.
    pub report: Vec<ReportStep>,
}

/// One environment of a project: production, or the preview of a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EnvironmentView {
    /// `production` or `preview-N`.
    pub name: String,
    /// `production` or `preview`.
    pub kind: String,
    pub pull_request: Option<u64>,
    /// `active` (its latest run did not tear it down), `torn_down`, or `never_run`.
    pub state: String,
    /// Its newest run.
    pub latest_run: Option<RunSummary>,
    /// The URLs the newest run that reported any gave (a resource's URL is reported by the
    /// run that created or changed it); none once torn down.
    pub urls: Vec<String>,
}

/// A stored env var: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EnvVarView {
    pub name: String,
    /// `production` or `preview`.
    pub environment: String,
    pub version: i64,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// Always the mask `••••••••`: values are never shown.
    pub value: String,
    /// The store's keyed fingerprint of the value (`hmac:` and 16 hex digits): equal values
    /// have equal fingerprints within one name, and nothing about the value can be learnt
    /// from it without the store's fingerprint key.
    pub fingerprint: String,
    /// The master key that wraps its data key.
    pub key_id: String,
}

impl From<&StoredSecret> for EnvVarView {
    fn from(s: &StoredSecret) -> EnvVarView {
        EnvVarView {
            name: s.name.name.clone(),
            environment: s.name.environment.clone(),
            version: s.value.version,
            updated_at: s.value.updated_at.clone(),
            value: MASK.to_owned(),
            fingerprint: s.value.fingerprint.clone(),
            key_id: s.value.key_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditActorView {
    /// user, token, github, system or anonymous.
    pub kind: String,
    pub id: String,
    pub display: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditTargetView {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
}

/// One security-log record, in the shape of `telbase audit list --format json`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEventView {
    /// Its place in the chain; newer records have larger numbers.
    pub seq: i64,
    /// RFC 3339, UTC, milliseconds: the server's clock.
    pub time: String,
    pub actor: AuditActorView,
    /// `category.name`, e.g. `config.env_set`.
    pub action: String,
    /// authentication, api_access, administrative, configuration, access_control or anomaly.
    pub category: Option<String>,
    /// The client's address.
    pub source: Option<String>,
    pub target: Option<AuditTargetView>,
    /// success, failure, denied, or started (a change recorded before it ran; its success or
    /// failure follows).
    pub outcome: String,
    /// A small JSON object; never a secret.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// The record's MAC in the chain (`telbase audit verify` checks it).
    pub mac: String,
}

/// What a new project is (the body of `POST …/projects`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// The `project:` of its telbase.yaml.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,38}[a-z0-9]$")]
    pub name: String,
    /// `owner/name` on GitHub (each part 1 to 100 of letters, digits, `-`, `_`, `.`; not
    /// `.` or `..`). The patterns here are `projects::valid_repo` and
    /// `projects::valid_config_path` in regex form, so the description accepts exactly what
    /// the server does.
    #[schema(
        pattern = "^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}|\\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,98}|\\.\\.[A-Za-z0-9._-]{1,98})/(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}|\\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,98}|\\.\\.[A-Za-z0-9._-]{1,98})$"
    )]
    pub repo: String,
    /// The config inside the repository (default `telbase.yaml`): `/`-separated segments,
    /// ending `.yaml` or `.yml`, at most 256 characters.
    #[serde(default)]
    #[schema(
        max_length = 256,
        pattern = "^(?:(?:[A-Za-z0-9_-][A-Za-z0-9._-]*|\\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\\.\\.[A-Za-z0-9._-]+)/)*[A-Za-z0-9._-]*\\.ya?ml$"
    )]
    pub config_path: Option<String>,
}

/// Filters of a project's runs (query parameters).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunFilter {
    /// Only this environment: `production` or `preview-N` (empty: any).
    #[serde(default)]
    #[param(pattern = "^(production|preview-[0-9]{1,19})?$")]
    pub environment: Option<String>,
    /// Only this outcome: running, success, failure or error (empty: any).
    #[serde(default)]
    #[param(pattern = "^(running|success|failure|error)?$")]
    pub outcome: Option<String>,
    /// Started at or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Started before this time (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
}

/// Filters of the audit log (query parameters).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    /// At or after this time (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
    /// The actor's id (a user id) or display name, exactly.
    #[serde(default)]
    pub actor: Option<String>,
    /// An action (`config.env_set`), or a category or prefix ending in `.*` or `.`
    /// (`config.*`).
    #[serde(default)]
    pub action: Option<String>,
}

// ---- cursors ----

fn decode(cursor: Option<&str>) -> Result<Option<String>> {
    match cursor.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => secrets::parse_cursor(c)
            .map(Some)
            .ok_or(ResourceError::InvalidCursor),
    }
}

fn next<T>(items: &[T], limit: i64, last: impl Fn(&T) -> String) -> Option<String> {
    (items.len() as i64 == limit)
        .then(|| items.last().map(|l| secrets::encode_cursor(&last(l))))
        .flatten()
}

/// A runs cursor continues after (started_at, id).
fn run_after(decoded: &str) -> Result<(i64, String)> {
    let (at, id) = decoded
        .split_once('_')
        .ok_or(ResourceError::InvalidCursor)?;
    // Exactly as `format!` wrote it: digits, no sign, no leading zero.
    let canonical = !at.is_empty()
        && at.bytes().all(|b| b.is_ascii_digit())
        && (at == "0" || !at.starts_with('0'));
    let at = at
        .parse::<i64>()
        .ok()
        .filter(|_| canonical)
        .ok_or(ResourceError::InvalidCursor)?;
    if !crate::serve::runs::valid_id(id) {
        return Err(ResourceError::InvalidCursor);
    }
    Ok((at, id.to_owned()))
}

/// An RFC 3339 time as unix ms.
fn time(what: &str, v: Option<&str>) -> Result<Option<i64>> {
    match v.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| Some(d.timestamp_millis()))
            .map_err(|_| {
                ResourceError::Invalid(format!(
                    "{what}: not an RFC 3339 time (e.g. 2026-11-29T20:00:00Z)"
                ))
            }),
    }
}

// ---- projects ----

/// The team's projects by name.
pub fn list_projects(
    store: &mut Store,
    team_id: &str,
    cursor: Option<&str>,
    limit: i64,
) -> Result<ProjectPage> {
    let after = decode(cursor)?.unwrap_or_default();
    let items = projects::list(store, team_id, &after, limit)?;
    let next_cursor = next(&items, limit, |p| p.name.clone());
    Ok(ProjectPage { items, next_cursor })
}

/// The team's project `name`, to read or change: another team's is not found, and one whose
/// repository the team no longer holds a grant for is refused. Taking a grant back
/// (`telbase team repos remove`) thereby takes the repository's plans and deploy values out
/// of the team's reach at once, while the project stays for the team to unregister (or for
/// the grant to come back).
pub fn get_project(store: &mut Store, team_id: &str, name: &str) -> Result<Project> {
    let project = find_project(store, team_id, name)?;
    if !projects::repo_granted(store, team_id, &project.repo)? {
        return Err(ResourceError::Forbidden(format!(
            "the repository {} is no longer granted to this team: the project's runs and env vars are out of reach until a server operator grants it again (`telbase team repos add`); an Admin can still unregister it",
            project.repo
        )));
    }
    Ok(project)
}

/// The team's project `name` whether or not its repository is still granted: for
/// unregistering it. Another team's is not found.
pub fn find_project(store: &mut Store, team_id: &str, name: &str) -> Result<Project> {
    if !projects::valid_name(name) {
        return Err(ResourceError::NotFound("project"));
    }
    projects::by_name(store, team_id, name)?.ok_or(ResourceError::NotFound("project"))
}

/// Registers a project for the team: only a repository an operator granted to the team
/// (`projects::repo_granted`), and only a name no stored values are kept under already (values
/// set before any project held the name, with `telbase env set`, are not this team's to
/// read or replace). Generic over the store so the API runs it in the transaction of its
/// audit record.
pub fn create_project(
    db: &mut impl Db,
    team_id: &str,
    user_id: &str,
    body: &CreateProject,
    now: i64,
) -> Result<Project> {
    if !projects::valid_name(&body.name) {
        return Err(ResourceError::Invalid(
            "name: the config's `project:` (2 to 40 lowercase letters, digits and dashes, starting with a letter, not ending with a dash)".into(),
        ));
    }
    if !projects::valid_repo(&body.repo) {
        return Err(ResourceError::Invalid(
            "repo: a GitHub repository, `owner/name`".into(),
        ));
    }
    let config_path = body
        .config_path
        .as_deref()
        .unwrap_or(projects::DEFAULT_CONFIG_PATH);
    if !projects::valid_config_path(config_path) {
        return Err(ResourceError::Invalid(
            "config_path: a relative path inside the repository ending .yaml or .yml, without `..`"
                .into(),
        ));
    }
    if !projects::repo_granted(db, team_id, &body.repo)? {
        return Err(ResourceError::Forbidden(
            "this repository is not granted to the team; a server operator grants repositories with `telbase team repos add TEAM OWNER/NAME` (or `OWNER/*`)".into(),
        ));
    }
    if projects::registered_repo(db, &body.name)?.is_none()
        && projects::has_stored_values(db, &body.name)?
    {
        return Err(ResourceError::Conflict(
            "values are stored under this project name outside any project (`telbase env set`); an operator must unset them (`telbase env unset`) before a team can register the name".into(),
        ));
    }
    projects::create(
        db,
        &NewProject {
            team_id,
            name: &body.name,
            repo: &body.repo,
            config_path,
            created_by: user_id,
        },
        now,
    )?
    .ok_or_else(|| {
        // Deliberately not saying which team holds it.
        ResourceError::Conflict(
            "a project with this name or this repository is already registered on this server"
                .into(),
        )
    })
}

/// Deletes the team's project's stored env var values (both environments), then unregisters
/// it, so the next team to register the name cannot inherit them. In that order: cut short
/// after the values, the project stays registered (and can be deleted again); a value set
/// concurrently after the values went is removed again by [`set_env_var`]'s own check, and
/// anything still left under a name no project holds is nobody's: [`create_project`] refuses
/// the name and, with the control plane on, the worker hands such values to no repository.
/// Runs stay (the repository's history, expiring with the retention); a later claim sees
/// only runs that started after it (`projects::runs`).
pub fn delete_project(store: &mut Store, team_id: &str, name: &str) -> Result<Project> {
    let project = find_project(store, team_id, name)?;
    for v in store.list_values(&project.name, None)? {
        store.delete_value(&v.name)?;
    }
    if !projects::delete(store, team_id, name)? {
        return Err(ResourceError::NotFound("project"));
    }
    Ok(project)
}

// ---- environments and runs ----

/// Production and every preview seen in the project's runs, each with its newest run and
/// the URLs the runs reported.
pub fn environments(store: &mut Store, project: &Project) -> Result<EnvironmentList> {
    let latest = projects::latest_per_environment(store, &project.repo, project.created_at)?;
    let mut items = Vec::with_capacity(latest.len() + 1);
    if !latest.iter().any(|r| r.environment == "production") {
        items.push(EnvironmentView {
            name: "production".into(),
            kind: "production".into(),
            pull_request: None,
            state: "never_run".into(),
            latest_run: None,
            urls: Vec::new(),
        });
    }
    for run in &latest {
        let torn_down = run.mode == "teardown" && run.outcome == "success";
        let urls = if torn_down {
            Vec::new()
        } else {
            match projects::latest_with_urls(
                store,
                &project.repo,
                project.created_at,
                &run.environment,
            )? {
                Some(r) => report(&r.report)
                    .into_iter()
                    .filter(|s| s.outcome == "done")
                    .filter_map(|s| s.url)
                    .collect(),
                None => Vec::new(),
            }
        };
        items.push(EnvironmentView {
            name: run.environment.clone(),
            kind: if run.pull_request.is_some() {
                "preview".into()
            } else {
                "production".into()
            },
            pull_request: run.pull_request,
            state: if torn_down { "torn_down" } else { "active" }.into(),
            latest_run: Some(RunSummary::from(run)),
            urls,
        });
    }
    // Production first, then previews by pull request number.
    items.sort_by_key(|e| (e.pull_request.is_some(), e.pull_request, e.name.clone()));
    Ok(EnvironmentList { items })
}

/// A run-list filter checked and in the store's terms.
fn run_query(f: &RunFilter, after: Option<(i64, String)>) -> Result<RunQuery> {
    let environment = f.environment.clone().unwrap_or_default();
    if !environment.is_empty()
        && environment != "production"
        && !environment.strip_prefix("preview-").is_some_and(|n| {
            !n.is_empty() && n.len() <= 19 && n.bytes().all(|b| b.is_ascii_digit())
        })
    {
        return Err(ResourceError::Invalid(
            "environment: `production` or `preview-N`".into(),
        ));
    }
    let outcome = f.outcome.clone().unwrap_or_default();
    if !outcome.is_empty() && !["running", "success", "failure", "error"].contains(&&*outcome) {
        return Err(ResourceError::Invalid(
            "outcome: running, success, failure or error".into(),
        ));
    }
    Ok(RunQuery {
        environment,
        outcome,
        since: time("since", f.since.as_deref())?,
        until: time("until", f.until.as_deref())?,
        after,
    })
}

/// The project's runs, newest first, filtered.
pub fn runs(
    store: &mut Store,
    project: &Project,
    filter: &RunFilter,
    cursor: Option<&str>,
    limit: i64,
) -> Result<RunPage> {
    let after = decode(cursor)?.map(|c| run_after(&c)).transpose()?;
    let q = run_query(filter, after)?;
    let rows = projects::runs(store, &project.repo, project.created_at, &q, limit)?;
    let next_cursor = next(&rows, limit, |r| format!("{}_{}", r.started_at, r.id));
    Ok(RunPage {
        items: rows.iter().map(RunSummary::from).collect(),
        next_cursor,
    })
}

/// One run of the project; a run of another project (or team) is not found.
pub fn run(store: &mut Store, project: &Project, id: &str) -> Result<RunDetail> {
    if !crate::serve::runs::valid_id(id) {
        return Err(ResourceError::NotFound("run"));
    }
    let r = projects::run(store, &project.repo, project.created_at, id)?
        .ok_or(ResourceError::NotFound("run"))?;
    Ok(RunDetail {
        run: RunSummary::from(&r),
        plan: r.plan.clone(),
        report: report(&r.report),
    })
}

/// The stored report (the worker's JSON array of steps), leniently: a step missing a field
/// shows it empty rather than hiding the run.
fn report(json: &str) -> Vec<ReportStep> {
    let steps: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    let text = |v: &serde_json::Value, k: &str| match &v[k] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    };
    steps
        .iter()
        .map(|s| ReportStep {
            key: text(s, "key").unwrap_or_default(),
            action: text(s, "action").unwrap_or_default(),
            outcome: text(s, "outcome").unwrap_or_default(),
            url: text(s, "url"),
            error: text(s, "error"),
            because: text(s, "because"),
            millis: s["millis"].as_u64().unwrap_or(0),
        })
        .collect()
}

// ---- env vars ----

fn env_var_environment(environment: &str) -> Result<&'static str> {
    ENV_VAR_ENVIRONMENTS
        .into_iter()
        .find(|e| *e == environment)
        .ok_or(ResourceError::NotFound("environment"))
}

fn secret_name(project: &Project, environment: &str, name: &str) -> Result<SecretName> {
    let environment = env_var_environment(environment)?;
    if !crate::cli::env::valid_env_name(name) {
        return Err(ResourceError::Invalid(
            "name: letters, digits and `_`, not starting with a digit, at most 256 characters"
                .into(),
        ));
    }
    Ok(SecretName {
        project: project.name.clone(),
        environment: environment.to_owned(),
        name: name.to_owned(),
    })
}

/// The project's stored env vars of one environment (`production` or `preview`), by name:
/// names, versions, times, fingerprints; the value masked.
pub fn env_vars(store: &mut Store, project: &Project, environment: &str) -> Result<EnvVarList> {
    let environment = env_var_environment(environment)?;
    let items = store
        .list_values(&project.name, Some(environment))?
        .iter()
        .map(EnvVarView::from)
        .collect();
    Ok(EnvVarList { items })
}

/// What [`set_env_var`] would refuse of the input alone (name, environment, empty value),
/// checked before anything is recorded: a mistyped request is a 400, not an audit entry.
pub fn check_set(
    project: &Project,
    environment: &str,
    name: &str,
    value: &SecretString,
) -> Result<()> {
    secret_name(project, environment, name)?;
    if value.expose_secret().is_empty() {
        return Err(ResourceError::Invalid("value: must not be empty".into()));
    }
    Ok(())
}

/// What [`unset_env_var`] would refuse before changing anything: a bad name, or no value.
pub fn check_unset(
    store: &mut Store,
    project: &Project,
    environment: &str,
    name: &str,
) -> Result<()> {
    let key = secret_name(project, environment, name)?;
    match store.get_value(&key)? {
        Some(_) => Ok(()),
        None => Err(ResourceError::NotFound("env var")),
    }
}

/// Seals `value` as a new version of the env var through the envelope store. `true` with
/// the view when the name had no value before. The value goes from the [`SecretString`]
/// into the envelope and nowhere else.
pub fn set_env_var(
    store: &mut Store,
    keys: &dyn KeyProvider,
    project: &Project,
    environment: &str,
    name: &str,
    value: &SecretString,
) -> Result<(EnvVarView, bool)> {
    let key = secret_name(project, environment, name)?;
    if value.expose_secret().is_empty() {
        // As `telbase env set`: an empty value is almost always a variable that was not set.
        return Err(ResourceError::Invalid("value: must not be empty".into()));
    }
    let existed = store.get_value(&key)?.is_some();
    let sealed = crate::secrets::stored::set(store, keys, &key, value.expose_secret().as_bytes())
        .map_err(|e| match e {
        crate::secrets::stored::StoredError::Store(s) => ResourceError::Store(s),
        other => {
            // Key problems name keys and records, never values; they stay in the log.
            tracing::error!(error = %other, "cannot seal an env var");
            ResourceError::Unavailable(
                "the server cannot seal values now (its master keys; see the server's log)".into(),
            )
        }
    })?;
    // The project may have been unregistered meanwhile (its deletion removes the values it
    // sees, not one written after): then this value must not stay under a freed name.
    if projects::by_name(store, &project.team_id, &project.name)?.is_none() {
        store.delete_value(&key)?;
        return Err(ResourceError::NotFound("project"));
    }
    let view = EnvVarView::from(&StoredSecret {
        name: key,
        value: sealed,
    });
    Ok((view, !existed))
}

/// Deletes the env var's value; not found when it has none.
pub fn unset_env_var(
    store: &mut Store,
    project: &Project,
    environment: &str,
    name: &str,
) -> Result<()> {
    let key = secret_name(project, environment, name)?;
    if store.delete_value(&key)? {
        Ok(())
    } else {
        Err(ResourceError::NotFound("env var"))
    }
}

/// The audit target of a project: `TEAM_ID/NAME` (the team's prefix is how the team's
/// audit log finds it; the name, because ids mean nothing to a reader).
pub fn project_target(team_id: &str, project: &str) -> String {
    format!("{}{project}", projects::team_target_prefix(team_id))
}

/// The audit target of an env var: `TEAM_ID/PROJECT/ENVIRONMENT/NAME` (never its value).
pub fn env_var_target(team_id: &str, project: &str, environment: &str, name: &str) -> String {
    format!("{}/{environment}/{name}", project_target(team_id, project))
}

// ---- the audit log ----

/// An action filter: (exact action, prefix). `config.env_set` is exact; `config.*` and
/// `config.` are prefixes; `*` anywhere else is refused.
fn audit_action(a: &str) -> Result<(String, String)> {
    let bad = || {
        ResourceError::Invalid(
            "action: an action (`config.env_set`) or a prefix (`config.*`)".into(),
        )
    };
    if a.is_empty() {
        return Ok((String::new(), String::new()));
    }
    if a.len() > 80
        || !a.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'*')
        })
    {
        return Err(bad());
    }
    let (exact, prefix) = match a.strip_suffix(".*") {
        Some(p) => (String::new(), format!("{p}.")),
        None if a.ends_with('.') => (String::new(), a.to_owned()),
        None => (a.to_owned(), String::new()),
    };
    if exact.contains('*') || prefix.contains('*') || prefix == "." {
        return Err(bad());
    }
    Ok((exact, prefix))
}

/// The team's audit events, newest first, filtered (see [`projects::team_audit`] for which
/// records are the team's).
pub fn audit_events(
    store: &mut Store,
    team: &super::model::Team,
    filter: &AuditFilter,
    cursor: Option<&str>,
    limit: i64,
) -> Result<AuditEventPage> {
    let before_seq = decode(cursor)?
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(ResourceError::InvalidCursor)
        })
        .transpose()?;
    let actor = filter.actor.clone().unwrap_or_default();
    if actor.len() > 256 {
        return Err(ResourceError::Invalid(
            "actor: at most 256 characters".into(),
        ));
    }
    let (action, action_prefix) = audit_action(filter.action.as_deref().unwrap_or(""))?;
    let q = AuditQuery {
        since: time("since", filter.since.as_deref())?,
        until: time("until", filter.until.as_deref())?,
        actor,
        action,
        action_prefix,
        before_seq,
    };
    let rows = projects::team_audit(store, &team.id, &team.name, &q, limit)?;
    let next_cursor = next(&rows, limit, |r| r.seq.to_string());
    let items = rows
        .into_iter()
        .map(|r| {
            let category = crate::audit::Action::new(&r.action)
                .ok()
                .and_then(|a| serde_json::to_value(a.category()).ok())
                .and_then(|v| v.as_str().map(str::to_owned));
            AuditEventView {
                seq: r.seq,
                time: chrono::DateTime::from_timestamp_millis(r.at_ms)
                    .unwrap_or_default()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                actor: AuditActorView {
                    kind: r.actor_kind,
                    id: r.actor_id,
                    display: r.actor_display,
                },
                action: r.action,
                category,
                source: r.source,
                target: r.target_type.map(|kind| AuditTargetView {
                    kind,
                    id: r.target_id,
                }),
                outcome: r.outcome,
                details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::Null),
                mac: r.mac,
            }
        })
        .collect();
    Ok(AuditEventPage { items, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_cursors_round_trip_and_refuse_forgeries() {
        let id = crate::serve::runs::new_id();
        let c = secrets::encode_cursor(&format!("1800000000000_{id}"));
        let decoded = decode(Some(&c)).unwrap().unwrap();
        assert_eq!(run_after(&decoded).unwrap(), (1_800_000_000_000, id));
        for bad in [
            "x",
            "12_",
            "_abc",
            "-5_aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "1_../../x",
        ] {
            assert!(run_after(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            decode(Some("not a cursor!")),
            Err(ResourceError::InvalidCursor)
        ));
    }

    #[test]
    fn run_filters_are_checked() {
        let f = |e: &str, o: &str| RunFilter {
            environment: Some(e.into()),
            outcome: Some(o.into()),
            ..RunFilter::default()
        };
        assert!(run_query(&f("production", "success"), None).is_ok());
        assert!(run_query(&f("preview-12", ""), None).is_ok());
        for (e, o) in [
            ("staging", ""),
            ("preview-", ""),
            ("preview-x", ""),
            ("", "ok"),
        ] {
            assert!(
                matches!(run_query(&f(e, o), None), Err(ResourceError::Invalid(_))),
                "{e} {o}"
            );
        }
        let t = RunFilter {
            since: Some("yesterday".into()),
            ..RunFilter::default()
        };
        assert!(matches!(
            run_query(&t, None),
            Err(ResourceError::Invalid(_))
        ));
    }

    proptest::proptest! {
        /// Cursors and filters come from clients: any text is refused or understood, never
        /// a panic, and what is understood is exactly what this API hands out.
        #[test]
        fn outside_text_is_parsed_or_refused(
            text in "\\PC{0,80}|[-+0-9]{0,4}_[a-z2-7]{26}",
            at in 0i64..i64::MAX,
        ) {
            if let Ok((t, id)) = run_after(&text) {
                proptest::prop_assert_eq!(format!("{t}_{id}"), text.clone());
            }
            let id = crate::serve::runs::new_id();
            proptest::prop_assert_eq!(run_after(&format!("{at}_{id}")).unwrap(), (at, id));
            if let Ok((exact, prefix)) = audit_action(&text) {
                proptest::prop_assert!(!exact.contains('*') && !prefix.contains('*'));
                proptest::prop_assert!(prefix.is_empty() || prefix.ends_with('.'));
            }
            let _ = time("since", Some(&text));
            let _ = decode(Some(&text));
        }

        #[test]
        fn names_match_the_config_pattern(name in "[a-z0-9A-Z_-]{0,42}") {
            let re = regex::Regex::new(crate::config::file::PROJECT_PATTERN).unwrap();
            proptest::prop_assert_eq!(projects::valid_name(&name), re.is_match(&name));
        }

        #[test]
        fn accepted_config_paths_stay_inside(path in "[a-z./_-]{0,40}(\\.yaml)?") {
            if projects::valid_config_path(&path) {
                proptest::prop_assert!(!path.starts_with('/'));
                proptest::prop_assert!(path.split('/').all(|s| s != ".." && s != "." && !s.is_empty()));
            }
        }
    }

    #[test]
    fn reports_are_read_leniently() {
        let steps = report(
            r#"[{"key":"vercel_project.web","action":"create","outcome":"done","url":"https://web.example","millis":12},
                {"key":"neon_database.db","action":"update","outcome":"failed","error":"quota"},
                {"key":"x","action":"delete","outcome":"skipped","because":"neon_database.db","millis":0}]"#,
        );
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0].url.as_deref(), Some("https://web.example"));
        assert_eq!(steps[1].error.as_deref(), Some("quota"));
        assert_eq!(steps[1].millis, 0);
        assert_eq!(steps[2].because.as_deref(), Some("neon_database.db"));
        assert!(report("not json").is_empty());
    }
}
