//! The OpenAPI 3.1 description of `/api/v1`, generated from the handlers' `#[utoipa::path]`
//! annotations and the types below, which are also what the handlers serialize (so the
//! description and the answers cannot drift apart). Served at `/api/v1/openapi.json`;
//! `docs/openapi.json` is the committed copy and a test keeps the two equal and checks that
//! every route of [`super::api::ROUTES`] is described with its method.

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::api;
use super::model::{LoginRow, Member, SessionRow, TokenRow, User};
use super::roles::Role;

/// The one error shape of every `/api/v1` route except the OAuth endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unauthorized`, `forbidden`, `not_found`, `bad_request`,
    /// `invalid_cursor`, `invalid_user_code`, `rate_limited`, `conflict`, `last_owner`,
    /// `payload_too_large`, `unsupported_media_type`, `method_not_allowed`, `unavailable`, ...
    pub code: String,
    /// For people; may change.
    pub message: String,
}

/// RFC 6749 5.2's error shape, used by the OAuth endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `authorization_pending`, `slow_down`, `expired_token`, `access_denied`,
    /// `invalid_grant`, `invalid_request`, `invalid_client`, `unsupported_grant_type`, ...
    pub error: String,
    pub error_description: String,
}

/// RFC 8628 3.2.
#[derive(Serialize, ToSchema)]
pub struct DeviceAuthorization {
    pub device_code: String,
    /// Eight letters from `BCDFGHJKLMNPQRSTVWXZ`, shown as `XXXX-XXXX`.
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub expires_in: i64,
    pub interval: i64,
}

/// RFC 6749 5.1.
#[derive(Serialize, ToSchema)]
pub struct TokenAnswer {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_in: i64,
    pub refresh_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct TeamRole {
    pub name: String,
    pub role: Role,
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub user: User,
    pub teams: Vec<TeamRole>,
    pub via: api::Via,
}

#[derive(Serialize, ToSchema)]
pub struct TokenPage {
    pub items: Vec<TokenRow>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionPage {
    pub items: Vec<SessionRow>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LoginPage {
    pub items: Vec<LoginRow>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberPage {
    pub items: Vec<Member>,
    pub next_cursor: Option<String>,
}

/// A new API token: `secret` is shown this once and stored nowhere.
#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    pub token: TokenRow,
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct Approved {
    pub approved: bool,
    /// The team the login is for.
    pub team: String,
}

#[derive(Serialize, ToSchema)]
pub struct Revoked {
    pub revoked: u64,
}

#[derive(Serialize, ToSchema)]
pub struct RoleChanged {
    pub user: String,
    pub role: Role,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`tlb_pat_…`) or a device-flow access token (`tlb_at_…`).",
                    ))
                    .build(),
            ),
        );
        let errors = |desc: &str, oauth: bool| {
            utoipa::openapi::ResponseBuilder::new()
                .description(desc)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name(if oauth {
                            "OAuthErrorBody"
                        } else {
                            "ErrorBody"
                        })))
                        .build(),
                )
                .build()
        };
        // What any operation may also answer: the store not answering (503), and for those
        // with a body, a body too large (413), unreadable (400) or not JSON (415).
        for (path, item) in openapi.paths.paths.iter_mut() {
            let oauth = path.starts_with("/api/v1/oauth/");
            for op in [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                let r = &mut op.responses.responses;
                let mut add = |code: &str, desc: &str| {
                    r.entry(code.to_owned())
                        .or_insert_with(|| errors(desc, oauth).into());
                };
                add("503", "The store did not answer; try again");
                add(
                    "429",
                    "Rate limited or locked out after failures (see docs/abuse.md); wait Retry-After seconds",
                );
                if op.request_body.is_some() {
                    add("400", "Malformed body");
                    add("413", "Body larger than 64 KiB");
                    if !oauth {
                        add("415", "Body is not JSON");
                        add("422", "Body is JSON but not of the described shape");
                    }
                }
            }
        }
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "__Host-telbase_session",
                "The dashboard's session cookie (`telbase_session` without TLS).",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Telbase control plane",
        description = "Users, teams and roles, API tokens, sessions, the device login; projects, environments, runs, env vars and the audit log. See docs/control-plane.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        api::device_authorization,
        api::token,
        api::revoke,
        api::approve,
        api::me,
        api::list_tokens,
        api::create_token,
        api::revoke_token,
        api::list_sessions,
        api::revoke_session,
        api::revoke_all,
        api::list_logins,
        api::revoke_login,
        api::list_members,
        api::invite_member,
        api::change_role,
        api::remove_member,
        api::rest::list_projects,
        api::rest::create_project,
        api::rest::get_project,
        api::rest::delete_project,
        api::rest::list_environments,
        api::rest::list_runs,
        api::rest::get_run,
        api::rest::list_env_vars,
        api::rest::set_env_var,
        api::rest::unset_env_var,
        api::rest::list_audit_events,
    ),
    modifiers(&Security),
    security(("bearer" = []), ("session" = []))
)]
pub struct ApiDoc;

/// The description as served and committed (pretty JSON, newline-terminated).
pub fn json() -> String {
    let mut doc = ApiDoc::openapi();
    // The version field is the crate's; a new build must not change the committed file.
    doc.info.version = "1".into();
    let mut text = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
