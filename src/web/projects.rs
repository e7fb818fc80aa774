//! The dashboard's project pages: a team's projects (list; register and unregister for
//! Admin and up), one project with its environments (state, newest run, URLs), a project's
//! runs (filtered by environment, outcome and time, paged by "Older"), one run (its plan as
//! rendered when it was made and the per-resource results), and the env vars of an
//! environment (names, versions, fingerprints, the value always masked; set and unset for
//! Member and up).
//!
//! Every read and change goes through [`crate::control::resources`], the functions the
//! `/api/v1` handlers call, so a page shows what the API answers and refuses what it
//! refuses; every change records the same security event as the API's handler
//! (`project.create`, `project.delete`, `env.set`, `env.unset`, same targets). Permission is
//! `roles::allows` through [`Viewer::in_team`] with the action the API route names in
//! `api::ROUTES`; each POST checks CSRF first and the role second, whatever the page showed.
//! A Viewer lacks `ViewEnvVars`, so the env var page is a 403 and no env var name appears
//! on any page they can open.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::oidc::form_encode;
use super::{Page, Viewer, Web, audited, csrf, db, html_page, intent_first, layout, when};
use crate::control::api::rest::EnvValue;
use crate::control::projects::{DEFAULT_CONFIG_PATH, Project};
use crate::control::resources::{
    self as res, CreateProject, ENV_VAR_ENVIRONMENTS, ResourceError, RunFilter,
};
use crate::control::roles::{self, Action};
use crate::store::Store;

type St = State<Arc<Web>>;

/// Rows per page of the projects and runs lists.
const PAGE: i64 = 50;

impl From<ResourceError> for Page {
    fn from(e: ResourceError) -> Page {
        match e {
            ResourceError::NotFound(_) => Page::not_found(),
            ResourceError::Invalid(m) => Page::bad(m),
            ResourceError::InvalidCursor => Page::bad("Not a page of this list."),
            ResourceError::Conflict(m) => Page::new(StatusCode::CONFLICT, m),
            ResourceError::Forbidden(m) => Page::new(StatusCode::FORBIDDEN, m),
            ResourceError::Unavailable(m) => Page::new(StatusCode::SERVICE_UNAVAILABLE, m),
            ResourceError::Store(e) => {
                tracing::error!(error = %e, "dashboard: the store failed");
                Page::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The store did not answer; try again.",
                )
            }
        }
    }
}

/// Runs a resource function on the store off the async threads.
async fn with_store<T: Send + 'static>(
    web: &Arc<Web>,
    f: impl FnOnce(&mut Store) -> Result<T, ResourceError> + Send + 'static,
) -> Result<T, Page> {
    Ok(db(web, move |s, _| Ok(f(s))).await??)
}

/// The CSRF check for a typed form (only its token is looked at).
fn check(v: &Viewer, web: &Web, headers: &HeaderMap, token: &str) -> Result<(), Page> {
    let fields = HashMap::from([(csrf::FIELD.to_owned(), token.to_owned())]);
    v.check_form(web, headers, &fields)
}

/// A submitted form, CSRF-checked. Every field has a default, so only a body that is not
/// form-encoded fails to parse; it carries no token we can trust: it is checked as tokenless, which never
/// passes (refused and recorded), so a malformed POST is a 403 like any other forgery. A
/// real form of ours always parses, since it has every field.
fn checked<T: HasToken>(
    v: &Viewer,
    web: &Web,
    headers: &HeaderMap,
    f: Result<axum::extract::Form<T>, FormRejection>,
) -> Result<T, Page> {
    match f {
        Ok(f) => {
            check(v, web, headers, f.0.token())?;
            Ok(f.0)
        }
        Err(_) => {
            check(v, web, headers, "")?;
            Err(Page::bad(
                "This form is incomplete; reload the page and try again.",
            ))
        }
    }
}

trait HasToken {
    fn token(&self) -> &str;
}

macro_rules! has_token {
    ($($t:ty),*) => { $(impl HasToken for $t { fn token(&self) -> &str { &self.csrf } })* };
}
has_token!(CreateForm, DeleteForm, SetForm, TokenForm);

/// Only web URLs become links (a report's URL comes from a provider's answer).
fn link(url: &str) -> Markup {
    if url.starts_with("https://") || url.starts_with("http://") {
        html! { a href=(url) rel="noreferrer" { (url) } }
    } else {
        html! { (url) }
    }
}

fn project_base(team: &str, project: &str) -> String {
    format!("/teams/{team}/projects/{project}")
}

/// The env var set an environment reads: every preview shares `preview`.
fn env_set_of(environment: &str) -> &'static str {
    if environment == "production" {
        "production"
    } else {
        "preview"
    }
}

async fn project_of(web: &Arc<Web>, team_id: &str, name: String) -> Result<Project, Page> {
    let tid = team_id.to_owned();
    with_store(web, move |s| res::get_project(s, &tid, &name)).await
}

// ---- the team's projects ----

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    cursor: Option<String>,
}

pub async fn projects(
    State(web): St,
    v: Viewer,
    Path(team): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, Page> {
    let (team, mine) = v.in_team(&team, Action::ViewProject)?;
    let tid = team.id.clone();
    let page = with_store(&web, move |s| {
        res::list_projects(s, &tid, q.cursor.as_deref(), PAGE)
    })
    .await?;
    let manage = roles::allows(mine, Action::ManageProjects);
    let base = format!("/teams/{}/projects", team.name);
    let body = html! {
        h1 { "Projects of " (team.name) }
        (team_links(&team.name, mine))
        @if page.items.is_empty() { p.note { "No projects yet." } }
        table #projects {
            tr { th { "Project" } th { "Repository" } th { "Config" } th { "Registered" } @if manage { th {} } }
            @for p in &page.items {
                tr {
                    td { a href=(project_base(&team.name, &p.name)) { (p.name) } }
                    td { (p.repo) }
                    td { code { (p.config_path) } }
                    td { (when(p.created_at)) }
                    @if manage {
                        td {
                            form.inline method="post" action={ (project_base(&team.name, &p.name)) "/delete" } {
                                (csrf::field(&v.csrf))
                                label { "Type " code { (p.name) } " to unregister " input type="text" name="confirm" required size="12"; }
                                button type="submit" { "Unregister" }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(c) = &page.next_cursor {
            p { a #more href={ (base) "?cursor=" (form_encode(c)) } { "More" } }
        }
        @if manage {
            h2 { "Register a project" }
            p.note { "Its name is the " code { "project:" } " of the repository's telbase.yaml. Unregistering deletes its stored env vars; its runs stay." }
            form #create method="post" action=(base) {
                (csrf::field(&v.csrf))
                p { label { "Name " input type="text" name="name" required pattern="[a-z][a-z0-9-]{0,38}[a-z0-9]"; } }
                p { label { "Repository (owner/name) " input type="text" name="repo" required; } }
                p { label { "Config path " input type="text" name="config_path" value=(DEFAULT_CONFIG_PATH); } }
                button type="submit" { "Register" }
            }
        }
    };
    Ok(html_page(layout(Some(&v.nav()), "Projects", body)))
}

/// The links from a team's projects page to its other pages the role may open.
fn team_links(team: &str, role: roles::Role) -> Markup {
    html! {
        p.note {
            @if roles::allows(role, Action::ViewMembers) { a href={ "/teams/" (team) "/members" } { "Members" } " · " }
            @if roles::allows(role, Action::ViewAuditLog) { a href={ "/teams/" (team) "/audit" } { "Audit log" } }
        }
    }
}

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    repo: String,
    #[serde(default)]
    config_path: String,
}

pub async fn project_create(
    State(web): St,
    v: Viewer,
    Path(team): Path<String>,
    headers: HeaderMap,
    f: Result<axum::extract::Form<CreateForm>, FormRejection>,
) -> Result<Response, Page> {
    // CSRF before anything else, even before looking at the form's fields.
    let f = checked(&v, &web, &headers, f)?;
    let (team, _) = v.in_team(&team, Action::ManageProjects)?;
    let body = CreateProject {
        name: f.name.trim().to_owned(),
        repo: f.repo.trim().to_owned(),
        config_path: Some(f.config_path.trim().to_owned()).filter(|c| !c.is_empty()),
    };
    let (tid, uid, now) = (team.id.clone(), v.user.id.clone(), web.now());
    let (team_id, base) = (team.id.clone(), v.event("project.create", None));
    let project = audited(
        &web,
        move |s, _| Ok(res::create_project(s, &tid, &uid, &body, now).map_err(Page::from)),
        move |project: &Project| crate::control::SecurityEvent {
            target: Some(res::project_target(&team_id, &project.name)),
            ..base
        },
    )
    .await?;
    Ok(Redirect::to(&project_base(&team.name, &project.name)).into_response())
}

#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

pub async fn project_delete(
    State(web): St,
    v: Viewer,
    Path((team, project)): Path<(String, String)>,
    headers: HeaderMap,
    f: Result<axum::extract::Form<DeleteForm>, FormRejection>,
) -> Result<Response, Page> {
    let f = checked(&v, &web, &headers, f)?;
    let (team, _) = v.in_team(&team, Action::ManageProjects)?;
    if f.confirm.trim() != project {
        return Err(Page::bad(
            "Type the project's name to unregister it; nothing was changed.",
        ));
    }
    // Not found before anything is recorded. A project whose repository grant was taken
    // back can still be unregistered.
    let project = {
        let tid = team.id.clone();
        with_store(&web, move |s| res::find_project(s, &tid, &project))
            .await?
            .name
    };
    let tid = team.id.clone();
    let event = v.event(
        "project.delete",
        Some(res::project_target(&team.id, &project)),
    );
    intent_first(
        &web,
        event,
        with_store(&web, move |s| res::delete_project(s, &tid, &project)),
    )
    .await?;
    Ok(Redirect::to(&format!("/teams/{}/projects", team.name)).into_response())
}

// ---- one project and its environments ----

pub async fn project(
    State(web): St,
    v: Viewer,
    Path((team, project)): Path<(String, String)>,
) -> Result<Response, Page> {
    let (team, mine) = v.in_team(&team, Action::ViewProject)?;
    let project = project_of(&web, &team.id, project).await?;
    let p = project.clone();
    let envs = with_store(&web, move |s| res::environments(s, &p)).await?;
    let base = project_base(&team.name, &project.name);
    let env_vars = roles::allows(mine, Action::ViewEnvVars);
    let runs = roles::allows(mine, Action::ViewRuns);
    let body = html! {
        p.note { a href={ "/teams/" (team.name) "/projects" } { "← Projects of " (team.name) } }
        h1 { (project.name) }
        p { "Repository " code { (project.repo) } ", config " code { (project.config_path) } }
        @if runs { p { a #runs-link href={ (base) "/runs" } { "All runs" } } }
        h2 { "Environments" }
        table #environments {
            tr { th { "Environment" } th { "State" } th { "Latest run" } th { "URLs" } @if env_vars { th { "Env vars" } } }
            @for e in &envs.items {
                tr {
                    td { (e.name) }
                    td { (e.state.replace('_', " ")) }
                    td {
                        @if let Some(r) = &e.latest_run {
                            @if runs {
                                a href={ (base) "/runs/" (r.id) } { (r.outcome) }
                            } @else { (r.outcome) }
                            " · " (r.mode) " · " (when(r.started_at))
                        } @else { span.note { "none yet" } }
                    }
                    td { @for u in &e.urls { (link(u)) br; } }
                    @if env_vars {
                        td { a href={ (base) "/env/" (env_set_of(&e.name)) } { (env_set_of(&e.name)) } }
                    }
                }
            }
        }
        @if env_vars {
            p.note { "Env vars are kept for " code { "production" } " and " code { "preview" } " (every preview shares one set)." }
        }
    };
    Ok(html_page(layout(Some(&v.nav()), &project.name, body)))
}

// ---- runs ----

#[derive(Deserialize)]
pub struct RunsQuery {
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

pub async fn runs(
    State(web): St,
    v: Viewer,
    Path((team, project)): Path<(String, String)>,
    q: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Page> {
    let (team, _) = v.in_team(&team, Action::ViewRuns)?;
    let q = q
        .map(|q| q.0)
        .map_err(|_| Page::bad("These filters are not understood."))?;
    let project = project_of(&web, &team.id, project).await?;
    let trim = |o: &Option<String>| o.as_deref().map(str::trim).unwrap_or("").to_owned();
    let filter = RunFilter {
        environment: Some(trim(&q.environment)),
        outcome: Some(trim(&q.outcome)),
        since: Some(trim(&q.since)),
        until: Some(trim(&q.until)),
    };
    let (p, f, cursor) = (project.clone(), filter.clone(), q.cursor.clone());
    let page = with_store(&web, move |s| res::runs(s, &p, &f, cursor.as_deref(), PAGE)).await?;
    let base = project_base(&team.name, &project.name);
    let field = |o: &Option<String>| o.clone().unwrap_or_default();
    let (env, outcome, since, until) = (
        field(&filter.environment),
        field(&filter.outcome),
        field(&filter.since),
        field(&filter.until),
    );
    let older = page.next_cursor.as_ref().map(|c| {
        format!(
            "{base}/runs?environment={}&outcome={}&since={}&until={}&cursor={}",
            form_encode(&env),
            form_encode(&outcome),
            form_encode(&since),
            form_encode(&until),
            form_encode(c)
        )
    });
    let body = html! {
        p.note { a href=(base) { "← " (project.name) } }
        h1 { "Runs of " (project.name) }
        form #filters method="get" action={ (base) "/runs" } {
            label { "Environment " input type="text" name="environment" value=(env) placeholder="production or preview-N" size="16"; } " "
            label { "Outcome "
                select name="outcome" {
                    @for o in ["", "running", "success", "failure", "error"] {
                        option value=(o) selected[o == outcome] { @if o.is_empty() { "any" } @else { (o) } }
                    }
                }
            } " "
            label { "Since " input type="text" name="since" value=(since) placeholder="2026-11-29T20:00:00Z" size="22"; } " "
            label { "Until " input type="text" name="until" value=(until) size="22"; } " "
            button type="submit" { "Filter" }
        }
        @if page.items.is_empty() { p.note { "No runs match." } }
        table #runs {
            tr { th { "Started" } th { "Environment" } th { "Outcome" } th { "Trigger" } th { "Mode" } th { "Commit" } th { "Summary" } }
            @for r in &page.items {
                tr {
                    td { a href={ (base) "/runs/" (r.id) } { (when(r.started_at)) } }
                    td { (r.environment) }
                    td { (r.outcome) }
                    td { (r.trigger) }
                    td { (r.mode) }
                    td { code { (r.sha.get(..7).unwrap_or(&r.sha)) } " " (r.branch) }
                    td { (r.summary) }
                }
            }
        }
        @if let Some(o) = &older { p { a #older href=(o) { "Older" } } }
    };
    Ok(html_page(layout(Some(&v.nav()), "Runs", body)))
}

pub async fn run(
    State(web): St,
    v: Viewer,
    Path((team, project, run)): Path<(String, String, String)>,
) -> Result<Response, Page> {
    let (team, _) = v.in_team(&team, Action::ViewRuns)?;
    let project = project_of(&web, &team.id, project).await?;
    let p = project.clone();
    let d = with_store(&web, move |s| res::run(s, &p, &run)).await?;
    let base = project_base(&team.name, &project.name);
    let r = &d.run;
    let body = html! {
        p.note { a href={ (base) "/runs" } { "← Runs of " (project.name) } }
        h1 { "Run " code { (r.id) } }
        table #run {
            tr { th { "Outcome" } td #outcome { (r.outcome) } }
            tr { th { "Summary" } td { (r.summary) } }
            tr { th { "Environment" } td { (r.environment) } }
            tr { th { "Mode" } td { (r.mode) } }
            tr { th { "Trigger" } td { (r.trigger) } }
            tr { th { "Commit" } td { code { (r.sha) } " on " (r.branch) } }
            @if let Some(pr) = r.pull_request { tr { th { "Pull request" } td { "#" (pr) } } }
            tr { th { "Started" } td { (when(r.started_at)) } }
            tr { th { "Ended" } td { @if let Some(e) = r.ended_at { (when(e)) } @else { "still running" } } }
        }
        h2 { "Plan" }
        @if d.plan.is_empty() { p.note { "No plan was made." } }
        @else { pre #plan { (d.plan) } }
        h2 { "Results" }
        @if d.report.is_empty() { p.note { "No resource was changed." } }
        @else {
            table #report {
                tr { th { "Resource" } th { "Action" } th { "Result" } th { "Detail" } th { "Time" } }
                @for s in &d.report {
                    tr {
                        td { code { (s.key) } }
                        td { (s.action) }
                        td.{ "outcome-" (s.outcome) } { (s.outcome) }
                        td {
                            @if let Some(u) = &s.url { (link(u)) }
                            @if let Some(e) = &s.error { span.error { (e) } }
                            @if let Some(b) = &s.because { "because " code { (b) } " failed" }
                        }
                        td { (s.millis) " ms" }
                    }
                }
            }
        }
    };
    Ok(html_page(layout(Some(&v.nav()), "Run", body)))
}

// ---- env vars ----

pub async fn env_vars(
    State(web): St,
    v: Viewer,
    Path((team, project, environment)): Path<(String, String, String)>,
) -> Result<Response, Page> {
    let (team, mine) = v.in_team(&team, Action::ViewEnvVars)?;
    let project = project_of(&web, &team.id, project).await?;
    let (p, e) = (project.clone(), environment.clone());
    let list = with_store(&web, move |s| res::env_vars(s, &p, &e)).await?;
    let manage = roles::allows(mine, Action::ManageEnvVars);
    let base = format!(
        "{}/env/{environment}",
        project_base(&team.name, &project.name)
    );
    let body = html! {
        p.note { a href=(project_base(&team.name, &project.name)) { "← " (project.name) } }
        h1 { "Env vars of " (project.name) ", " (environment) }
        p.note {
            @for other in ENV_VAR_ENVIRONMENTS {
                @if other != environment {
                    "See also " a href={ (project_base(&team.name, &project.name)) "/env/" (other) } { (other) } "."
                }
            }
            " Values are stored encrypted and never shown again; equal fingerprints mean equal values."
        }
        @if list.items.is_empty() { p.note { "None set." } }
        table #env-vars {
            tr { th { "Name" } th { "Value" } th { "Version" } th { "Fingerprint" } th { "Updated" } @if manage { th {} } }
            @for e in &list.items {
                tr {
                    td { code { (e.name) } }
                    td { code.masked { (e.value) } }
                    td { (e.version) }
                    td { code { (e.fingerprint) } }
                    td { (e.updated_at) }
                    @if manage {
                        td {
                            form.inline method="post" action={ (base) "/" (e.name) "/unset" } {
                                (csrf::field(&v.csrf))
                                button type="submit" { "Unset" }
                            }
                        }
                    }
                }
            }
        }
        @if manage {
            h2 { "Set a value" }
            p.note { "A new value replaces the old one as a new version." }
            form #set-env method="post" action=(base) autocomplete="off" {
                (csrf::field(&v.csrf))
                p { label { "Name " input type="text" name="name" required pattern="[A-Za-z_][A-Za-z0-9_]*" maxlength="256"; } }
                p { label { "Value " input type="password" name="value" required autocomplete="new-password"; } }
                button type="submit" { "Set" }
            }
        }
    };
    Ok(html_page(layout(Some(&v.nav()), "Env vars", body)))
}

/// The set form: the value goes straight into a `SecretString` (redacted `Debug`).
#[derive(Deserialize)]
pub struct SetForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    /// Absent is refused like empty (by `set_env_var`).
    #[serde(default)]
    value: Option<EnvValue>,
}

pub async fn env_var_set(
    State(web): St,
    v: Viewer,
    Path((team, project, environment)): Path<(String, String, String)>,
    headers: HeaderMap,
    f: Result<axum::extract::Form<SetForm>, FormRejection>,
) -> Result<Response, Page> {
    let f = checked(&v, &web, &headers, f)?;
    let (team, _) = v.in_team(&team, Action::ManageEnvVars)?;
    let project = project_of(&web, &team.id, project).await?;
    let name = f.name.trim().to_owned();
    let target = res::env_var_target(&team.id, &project.name, &environment, &name);
    let keys = web.control.master_keys.clone();
    let value = f
        .value
        .map(|v| v.0)
        .unwrap_or_else(|| secrecy::SecretString::from(String::new()));
    res::check_set(&project, &environment, &name, &value)?;
    let (p, e) = (project.clone(), environment.clone());
    let change = with_store(&web, move |s| {
        let keys = keys().map_err(|e| {
            tracing::error!(error = %e, "no master keys to seal env vars with");
            ResourceError::Unavailable(
                "The server has no master key to seal values with; see the server's log.".into(),
            )
        })?;
        res::set_env_var(s, keys.as_ref(), &p, &e, &name, &value)
    });
    intent_first(&web, v.event("env.set", Some(target)), change).await?;
    Ok(Redirect::to(&format!(
        "{}/env/{environment}",
        project_base(&team.name, &project.name)
    ))
    .into_response())
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: String,
}

pub async fn env_var_unset(
    State(web): St,
    v: Viewer,
    Path((team, project, environment, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    f: Result<axum::extract::Form<TokenForm>, FormRejection>,
) -> Result<Response, Page> {
    checked(&v, &web, &headers, f)?;
    let (team, _) = v.in_team(&team, Action::ManageEnvVars)?;
    let project = project_of(&web, &team.id, project).await?;
    let target = res::env_var_target(&team.id, &project.name, &environment, &name);
    let (p, e, n) = (project.clone(), environment.clone(), name.clone());
    with_store(&web, move |s| res::check_unset(s, &p, &e, &n)).await?;
    let (p, e) = (project.clone(), environment.clone());
    let change = with_store(&web, move |s| res::unset_env_var(s, &p, &e, &name));
    intent_first(&web, v.event("env.unset", Some(target)), change).await?;
    Ok(Redirect::to(&format!(
        "{}/env/{environment}",
        project_base(&team.name, &project.name)
    ))
    .into_response())
}
