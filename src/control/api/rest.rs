//! The `/api/v1/teams/{team}/…` routes of projects, environments, runs, env vars and the
//! team's audit log: thin HTTP handlers over [`crate::control::resources`], which holds
//! every rule (so the dashboard, calling the same functions, answers the same). Each route
//! is in [`super::ROUTES`] with its `Action`; [`super::authorize`] has already resolved the
//! team and checked the role when a handler runs. Every change (project create/delete, env
//! var set/unset) is recorded as a security event naming ids and names, never a value.

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use secrecy::SecretString;
use serde::Deserialize;

use super::{ApiError, App, Body, Page, Principal, db, db_audited, intent_first, team_of};
use crate::control::projects::Project;
use crate::control::resources::{
    self as res, AuditFilter, CreateProject, ResourceError, RunFilter,
};

/// The routes, mounted by [`super::router`] (inside its authorization layer).
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route(
            "/api/v1/teams/{team}/projects",
            get(list_projects).post(create_project),
        )
        .route(
            "/api/v1/teams/{team}/projects/{project}",
            get(get_project).delete(delete_project),
        )
        .route(
            "/api/v1/teams/{team}/projects/{project}/environments",
            get(list_environments),
        )
        .route(
            "/api/v1/teams/{team}/projects/{project}/runs",
            get(list_runs),
        )
        .route(
            "/api/v1/teams/{team}/projects/{project}/runs/{run}",
            get(get_run),
        )
        .route(
            "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars",
            get(list_env_vars),
        )
        .route(
            "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars/{name}",
            put(set_env_var).delete(unset_env_var),
        )
        .route("/api/v1/teams/{team}/audit-events", get(list_audit_events))
}

impl From<ResourceError> for ApiError {
    fn from(e: ResourceError) -> ApiError {
        match e {
            ResourceError::NotFound(what) => ApiError::not_found(what),
            ResourceError::Invalid(m) => ApiError::bad(m),
            ResourceError::InvalidCursor => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "not a cursor from this API",
            ),
            ResourceError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ResourceError::Forbidden(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "repository_not_granted", m)
            }
            ResourceError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            ResourceError::Store(s) => ApiError::from(s),
        }
    }
}

/// Query parameters, with a malformed query string (a repeated parameter, a value of the
/// wrong shape) answered in the one error shape rather than axum's plain text.
pub(crate) struct Q<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}

/// Path parameters, with an undecodable one (`%FF`) answered in the one error shape.
pub(crate) struct P<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}

/// Runs `f` with the store and turns both kinds of failure into the API's.
async fn with_store<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&mut crate::store::Store) -> Result<T, ResourceError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(db(app, move |s, _| Ok(f(s))).await??)
}

/// The limit of `page` (1–200, default 50); its cursor is checked by the resource itself.
fn limit_of(page: &Page) -> Result<(Option<String>, i64), ApiError> {
    let (_, limit) = page.parse()?;
    Ok((page.cursor.clone(), limit))
}

/// The principal's team's project `name` (another team's: 404).
async fn project_of(app: &App, p: &Principal, name: String) -> Result<Project, ApiError> {
    let (team, _) = team_of(p)?;
    with_store(app, move |s| res::get_project(s, &team.id, &name)).await
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/projects", tag = "projects", params(("team" = String, Path, description = "Team name"), Page), responses((status = 200, description = "The team's projects, by name", body = res::ProjectPage), (status = 400, description = "Bad cursor or limit", body = crate::control::openapi::ErrorBody), (status = 404, description = "No such team of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn list_projects(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Q(q): Q<Page>,
) -> Result<Response, ApiError> {
    let (cursor, limit) = limit_of(&q)?;
    let (team, _) = team_of(&p)?;
    let page = with_store(&app, move |s| {
        res::list_projects(s, &team.id, cursor.as_deref(), limit)
    })
    .await?;
    Ok(axum::Json(page).into_response())
}

#[utoipa::path(post, path = "/api/v1/teams/{team}/projects", tag = "projects", params(("team" = String, Path, description = "Team name")), request_body = CreateProject, responses((status = 201, description = "Registered", body = Project), (status = 400, description = "Bad request", body = crate::control::openapi::ErrorBody), (status = 404, description = "No such team of yours", body = crate::control::openapi::ErrorBody), (status = 409, description = "The name or the repository is registered already (to any team)", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn create_project(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Body(body): Body<CreateProject>,
) -> Result<Response, ApiError> {
    let (team, _) = team_of(&p)?;
    let now = app.now();
    let (tid, uid) = (team.id.clone(), p.user.id.clone());
    // The registration and its audit record commit together (or neither does).
    let event_of = p.clone();
    let project = db_audited(
        &app,
        move |tx, _| Ok(res::create_project(tx, &tid, &uid, &body, now).map_err(ApiError::from)),
        move |project: &Project| {
            event_of.succeeded(
                "project.create",
                Some(res::project_target(&team.id, &project.name)),
            )
        },
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(project)).into_response())
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/projects/{project}", tag = "projects", params(("team" = String, Path, description = "Team name"), ("project" = String, Path, description = "Project name")), responses((status = 400, description = "An undecodable path parameter", body = crate::control::openapi::ErrorBody), (status = 200, description = "The project", body = Project), (status = 404, description = "No such team or project of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn get_project(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    P((_, project)): P<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(project_of(&app, &p, project).await?).into_response())
}

#[utoipa::path(delete, path = "/api/v1/teams/{team}/projects/{project}", tag = "projects", params(("team" = String, Path, description = "Team name"), ("project" = String, Path, description = "Project name")), responses((status = 400, description = "An undecodable path parameter", body = crate::control::openapi::ErrorBody), (status = 204, description = "Unregistered; its stored env vars are deleted, its runs stay"), (status = 404, description = "No such team or project of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn delete_project(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    P((_, project)): P<(String, String)>,
) -> Result<Response, ApiError> {
    let (team, _) = team_of(&p)?;
    // Not found before anything is recorded; then the event first (see `intent_first`).
    // A project whose repository grant was taken back can still be unregistered.
    let project = {
        let tid = team.id.clone();
        with_store(&app, move |s| res::find_project(s, &tid, &project))
            .await?
            .name
    };
    let tid = team.id.clone();
    let event = p.succeeded(
        "project.delete",
        Some(res::project_target(&team.id, &project)),
    );
    let change = with_store(&app, move |s| res::delete_project(s, &tid, &project));
    intent_first(&app, event, change).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/projects/{project}/environments", tag = "projects", params(("team" = String, Path, description = "Team name"), ("project" = String, Path, description = "Project name")), responses((status = 400, description = "An undecodable path parameter", body = crate::control::openapi::ErrorBody), (status = 200, description = "Production and every preview seen in the runs, with the newest run and URLs", body = res::EnvironmentList), (status = 404, description = "No such team or project of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn list_environments(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    P((_, project)): P<(String, String)>,
) -> Result<Response, ApiError> {
    let project = project_of(&app, &p, project).await?;
    let list = with_store(&app, move |s| res::environments(s, &project)).await?;
    Ok(axum::Json(list).into_response())
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/projects/{project}/runs", tag = "runs", params(("team" = String, Path, description = "Team name"), ("project" = String, Path, description = "Project name"), Page, RunFilter), responses((status = 200, description = "The project's runs, newest first", body = res::RunPage), (status = 400, description = "Bad cursor, limit or filter", body = crate::control::openapi::ErrorBody), (status = 404, description = "No such team or project of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn list_runs(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    P((_, project)): P<(String, String)>,
    Q(q): Q<Page>,
    Q(filter): Q<RunFilter>,
) -> Result<Response, ApiError> {
    let (cursor, limit) = limit_of(&q)?;
    let project = project_of(&app, &p, project).await?;
    let page = with_store(&app, move |s| {
        res::runs(s, &project, &filter, cursor.as_deref(), limit)
    })
    .await?;
    Ok(axum::Json(page).into_response())
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/projects/{project}/runs/{run}", tag = "runs", params(("team" = String, Path, description = "Team name"), ("project" = String, Path, description = "Project name"), ("run" = String, Path, description = "Run id")), responses((status = 400, description = "An undecodable path parameter", body = crate::control::openapi::ErrorBody), (status = 200, description = "The run: status, plan and per-resource report", body = res::RunDetail), (status = 404, description = "No such team, project or run of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn get_run(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    P((_, project, run)): P<(String, String, String)>,
) -> Result<Response, ApiError> {
    let project = project_of(&app, &p, project).await?;
    let detail = with_store(&app, move |s| res::run(s, &project, &run)).await?;
    Ok(axum::Json(detail).into_response())
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars", tag = "env vars", params(("team" = String, Path, description = "Team name"), ("project" = String, Path, description = "Project name"), ("environment" = String, Path, description = "`production` or `preview` (every preview shares one set)")), responses((status = 400, description = "An undecodable path parameter", body = crate::control::openapi::ErrorBody), (status = 200, description = "Names, versions and fingerprints; values masked", body = res::EnvVarList), (status = 404, description = "No such team, project or environment of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn list_env_vars(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    P((_, project, environment)): P<(String, String, String)>,
) -> Result<Response, ApiError> {
    let project = project_of(&app, &p, project).await?;
    let list = with_store(&app, move |s| res::env_vars(s, &project, &environment)).await?;
    Ok(axum::Json(list).into_response())
}

/// An env var's value, straight into a [`SecretString`]: its `Debug` is redacted, and it
/// is never serialized.
pub struct EnvValue(pub SecretString);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| EnvValue(SecretString::from(s)))
    }
}

/// The body of `PUT …/env-vars/{name}`: exactly `{"value": "…"}`.
#[derive(utoipa::ToSchema)]
// Read by utoipa only (the Deserialize below is by hand and refuses unknown fields): the
// description says `additionalProperties: false`, as the server behaves.
#[serde(deny_unknown_fields)]
pub struct SetEnvVar {
    /// The value (UTF-8 text, not empty). Stored encrypted; never shown again.
    #[schema(value_type = String, format = Password)]
    value: EnvValue,
}

/// By hand rather than derived: a derived struct also accepts a JSON array (`["…"]`), and
/// this body is an object with one field, nothing else.
impl<'de> Deserialize<'de> for SetEnvVar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = SetEnvVar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object {\"value\": \"…\"}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SetEnvVar, A::Error> {
                let mut value = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "value" if value.is_none() => value = Some(map.next_value::<EnvValue>()?),
                        "value" => return Err(A::Error::duplicate_field("value")),
                        other => return Err(A::Error::unknown_field(other, &["value"])),
                    }
                }
                value
                    .map(|value| SetEnvVar { value })
                    .ok_or_else(|| A::Error::missing_field("value"))
            }
        }
        d.deserialize_map(Object)
    }
}

/// A JSON body that may hold a secret: any rejection is answered without the parser's
/// text, which can quote the input (`invalid type: integer `1234``).
pub(crate) struct SecretBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for SecretBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(SecretBody(v)),
            Err(e) => Err(match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    e.status(),
                    "payload_too_large",
                    "the body is larger than 16 KiB",
                ),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                    e.status(),
                    "unsupported_media_type",
                    "the body must be JSON (Content-Type: application/json)",
                ),
                _ => ApiError::bad(
                    "the body must be a JSON object {\"value\": \"…\"} with the value as a string",
                ),
            }),
        }
    }
}

#[utoipa::path(put, path = "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars/{name}", tag = "env vars", params(("team" = String, Path, description = "Team name"), ("project" = String, Path, description = "Project name"), ("environment" = String, Path, description = "`production` or `preview`"), ("name" = String, Path, description = "Variable name: letters, digits and `_`, not starting with a digit")), request_body = SetEnvVar, responses((status = 200, description = "A new version replaced the value (masked here)", body = res::EnvVarView), (status = 201, description = "Set for the first time (masked here)", body = res::EnvVarView), (status = 400, description = "Bad name or value", body = crate::control::openapi::ErrorBody), (status = 404, description = "No such team, project or environment of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn set_env_var(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    P((_, project, environment, name)): P<(String, String, String, String)>,
    SecretBody(body): SecretBody<SetEnvVar>,
) -> Result<Response, ApiError> {
    let (team, _) = team_of(&p)?;
    let project = project_of(&app, &p, project).await?;
    let target = res::env_var_target(&team.id, &project.name, &environment, &name);
    let keys = app.master_keys.clone();
    res::check_set(&project, &environment, &name, &body.value.0)?;
    let change = with_store(&app, move |s| {
        let keys = keys().map_err(|e| {
            tracing::error!(error = %e, "no master keys to seal env vars with");
            ResourceError::Unavailable(
                "the server has no master key to seal values with (TELBASE_MASTER_KEY_FILE); see the server's log".into(),
            )
        })?;
        res::set_env_var(
            s,
            keys.as_ref(),
            &project,
            &environment,
            &name,
            &body.value.0,
        )
    });
    let (view, created) = intent_first(&app, p.succeeded("env.set", Some(target)), change).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/teams/{team}/projects/{project}/environments/{environment}/env-vars/{name}", tag = "env vars", params(("team" = String, Path, description = "Team name"), ("project" = String, Path, description = "Project name"), ("environment" = String, Path, description = "`production` or `preview`"), ("name" = String, Path, description = "Variable name")), responses((status = 204, description = "Deleted"), (status = 400, description = "Bad name", body = crate::control::openapi::ErrorBody), (status = 404, description = "No such team, project, environment or set variable of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn unset_env_var(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    P((_, project, environment, name)): P<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let (team, _) = team_of(&p)?;
    let project = project_of(&app, &p, project).await?;
    let target = res::env_var_target(&team.id, &project.name, &environment, &name);
    let (p2, e2, n2) = (project.clone(), environment.clone(), name.clone());
    with_store(&app, move |s| res::check_unset(s, &p2, &e2, &n2)).await?;
    let change = with_store(&app, move |s| {
        res::unset_env_var(s, &project, &environment, &name)
    });
    intent_first(&app, p.succeeded("env.unset", Some(target)), change).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/audit-events", tag = "audit", params(("team" = String, Path, description = "Team name"), Page, AuditFilter), responses((status = 200, description = "The team's security-log records, newest first", body = res::AuditEventPage), (status = 400, description = "Bad cursor, limit or filter", body = crate::control::openapi::ErrorBody), (status = 404, description = "No such team of yours", body = crate::control::openapi::ErrorBody), (status = 401, description = "No valid credentials", body = crate::control::openapi::ErrorBody), (status = 403, description = "The role does not allow this", body = crate::control::openapi::ErrorBody)))]
pub(crate) async fn list_audit_events(
    State(app): State<App>,
    axum::Extension(p): axum::Extension<Principal>,
    Q(q): Q<Page>,
    Q(filter): Q<AuditFilter>,
) -> Result<Response, ApiError> {
    let (cursor, limit) = limit_of(&q)?;
    let (team, _) = team_of(&p)?;
    let page = with_store(&app, move |s| {
        res::audit_events(s, &team, &filter, cursor.as_deref(), limit)
    })
    .await?;
    Ok(axum::Json(page).into_response())
}
