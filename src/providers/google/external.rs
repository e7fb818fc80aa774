//! Workload identity federation: Google access tokens for a workload outside Google Cloud
//! (a GitHub Actions job, above all) without any stored key, the way Google's own auth
//! libraries do it for `external_account` credentials.
//!
//! This module owns the whole exchange, in three steps:
//! 1. the *subject token*: an OIDC JWT from the workload's identity provider, fetched fresh
//!    for every exchange: from the GitHub Actions runner (`ACTIONS_ID_TOKEN_REQUEST_URL`
//!    with `&audience=//iam.googleapis.com/<provider>`, bearer
//!    `ACTIONS_ID_TOKEN_REQUEST_TOKEN`, answer `{"value": jwt}`), or from an
//!    `external_account` file's `credential_source` (`file` or `url`, `format` text or json);
//! 2. the Security Token Service exchange (`POST https://sts.googleapis.com/v1/token`,
//!    RFC 8693 token exchange, as the JSON of sts.v1's
//!    `GoogleIdentityStsV1ExchangeTokenRequest`, the way google-github-actions/auth sends it)
//!    for a federated access token;
//! 3. optionally, impersonation of a service account through IAM Credentials
//!    (`POST https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`),
//!    which needs `roles/iam.workloadIdentityUser` for the federated principal.
//!
//! Configured either by `TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER` (+ optional
//! `TELBASE_GOOGLE_SERVICE_ACCOUNT`) in a workflow, or by an `external_account` file in
//! Application Default Credentials (what google-github-actions/auth writes). Executable and
//! AWS credential sources are refused with the reason: an executable source runs a command
//! named in a file, and Telbase does not run commands it reads from files.
//!
//! Every token (the runner's request token, the OIDC JWT, the federated and impersonated
//! access tokens) lives in a `SecretString`; errors quote Google's OAuth2 `error` /
//! `error_description` or the `{"error": {message}}` envelope, scrubbed of anything that
//! looks like a token, and never a request or response body as such. Caching and retries
//! are `auth::Adc`'s, as for every other source.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::SCOPE;
use crate::providers::ErrorKind;

/// Google's Security Token Service token endpoint.
pub const STS_TOKEN_URL: &str = "https://sts.googleapis.com/v1/token";

/// Google's IAM Service Account Credentials API.
pub const IAM_CREDENTIALS_URL: &str = "https://iamcredentials.googleapis.com";

/// The OAuth 2.0 token exchange grant (RFC 8693).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// What we ask STS for: a plain access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An OIDC JWT, the subject token type GitHub's tokens are.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The subject token types STS takes that this module can produce (a JWT or ID token from a
/// file or URL). AWS, SAML and mTLS subjects need sources we do not implement.
const SUBJECT_TOKEN_TYPES: &[&str] = &[JWT_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:id_token"];

/// Largest subject token file or response we read.
const MAX_SUBJECT: u64 = 64 * 1024;

/// The impersonated token's default lifetime, and the range Google's libraries accept for
/// `service_account_impersonation.token_lifetime_seconds`.
const DEFAULT_LIFETIME_SECS: u64 = 3600;
const LIFETIME_RANGE: std::ops::RangeInclusive<u64> = 600..=43200;

/// What a workflow sets for keyless auth without a credentials file.
#[derive(Clone, Default)]
pub struct WorkloadIdentityVars {
    /// `TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER`: the provider's full resource name.
    pub provider: String,
    /// `TELBASE_GOOGLE_SERVICE_ACCOUNT`: the service account to impersonate, if any.
    pub service_account: Option<String>,
    /// `ACTIONS_ID_TOKEN_REQUEST_URL`: set by the runner when the job may ask for an OIDC
    /// token (`permissions: id-token: write`).
    pub request_url: Option<String>,
    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`: the bearer token for that request.
    pub request_token: Option<SecretString>,
}

impl std::fmt::Debug for WorkloadIdentityVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentityVars")
            .field("provider", &self.provider)
            .field("service_account", &self.service_account)
            .field(
                "request_url",
                &self.request_url.as_deref().map(without_query),
            )
            .field(
                "request_token",
                &self.request_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Where STS and IAM Credentials are, for the variables above (an `external_account` file
/// names its own). Google's by default; tests point them at the emulator.
#[derive(Clone, Debug)]
pub struct FederationEndpoints {
    pub sts_token_url: String,
    /// Base URL of IAM Credentials, without the `/v1/…` path.
    pub iam_credentials_url: String,
}

impl Default for FederationEndpoints {
    fn default() -> Self {
        FederationEndpoints {
            sts_token_url: STS_TOKEN_URL.into(),
            iam_credentials_url: IAM_CREDENTIALS_URL.into(),
        }
    }
}

/// A failure of one step, before `Adc` names the source.
#[derive(Debug)]
pub(super) struct Fault {
    pub kind: ErrorKind,
    pub status: Option<u16>,
    pub message: String,
}

fn fault(kind: ErrorKind, status: Option<u16>, message: impl Into<String>) -> Fault {
    Fault {
        kind,
        status,
        message: message.into(),
    }
}

/// How a subject token is read out of a file or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Format {
    Text,
    /// A JSON object; the token is this field.
    Json(String),
}

/// Where the subject token comes from.
enum Subject {
    /// The GitHub Actions runner: the request URL with the audience added, its bearer token.
    Actions {
        url: reqwest::Url,
        token: SecretString,
    },
    /// `credential_source.file`.
    File { path: PathBuf, format: Format },
    /// `credential_source.url`; header values may be credentials (the runner's request
    /// token, when google-github-actions/auth wrote the file).
    Url {
        url: reqwest::Url,
        headers: Vec<(String, SecretString)>,
        format: Format,
    },
}

struct Impersonation {
    url: String,
    email: String,
    lifetime_secs: u64,
}

/// An external account: everything needed to exchange a subject token for an access token.
pub(super) struct External {
    audience: String,
    subject_token_type: String,
    token_url: String,
    subject: Subject,
    impersonation: Option<Impersonation>,
    /// Workforce pools bill this project (`options.userProject`).
    workforce_user_project: Option<String>,
}

/// What an `external_account` file or the workflow variables yield: the source, its name
/// for messages, the project it implies, and the quota project the file asks for.
pub(super) type Parsed = (External, String, Option<String>, Option<String>);

/// A workload identity provider's resource name, checked:
/// `projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER`, also
/// accepted with the `//iam.googleapis.com/` prefix of the STS audience. Returns the
/// audience STS expects.
pub fn provider_audience(name: &str) -> Result<String, String> {
    let shape = "projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL_ID/providers/PROVIDER_ID";
    let bare = name.trim();
    let bare = bare
        .strip_prefix("//iam.googleapis.com/")
        .or_else(|| bare.strip_prefix("https://iam.googleapis.com/"))
        .unwrap_or(bare);
    let parts: Vec<&str> = bare.split('/').collect();
    let shown = crate::config::diag::sanitize(name);
    let [
        "projects",
        number,
        "locations",
        location,
        "workloadIdentityPools",
        pool,
        "providers",
        provider,
    ] = parts.as_slice()
    else {
        return Err(format!(
            "TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER is {shown:?}, not a provider's full resource name {shape} (gcloud iam workload-identity-pools providers describe PROVIDER_ID --location=global --workload-identity-pool=POOL_ID --format='value(name)')"
        ));
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER names project {:?}; STS needs the project NUMBER, not its id (gcloud projects describe PROJECT_ID --format='value(projectNumber)')",
            crate::config::diag::sanitize(number)
        ));
    }
    if *location != "global" {
        return Err(format!(
            "TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER has location {:?}; workload identity pools live in \"global\"",
            crate::config::diag::sanitize(location)
        ));
    }
    // Google's rule for pool and provider ids: 4 to 32 lowercase letters, digits or
    // hyphens, not starting with "gcp-" (reserved).
    let id_ok = |id: &str| {
        (4..=32).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !id.starts_with('-')
            && !id.ends_with('-')
    };
    for (what, id) in [("pool", pool), ("provider", provider)] {
        if !id_ok(id) {
            return Err(format!(
                "TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER has {what} id {:?}; ids are 4 to 32 lowercase letters, digits and hyphens ({shape})",
                crate::config::diag::sanitize(id)
            ));
        }
    }
    Ok(format!("//iam.googleapis.com/{}", parts.join("/")))
}

/// A service account to impersonate: an email (or the numeric unique id IAM also takes),
/// safe to put in a URL path.
fn check_service_account(sa: &str) -> Result<(), String> {
    let ok_chars = sa
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'-' | b'_'));
    let email = sa.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && domain.contains('.') && !domain.contains('@')
    });
    let unique_id = !sa.is_empty() && sa.bytes().all(|b| b.is_ascii_digit());
    if ok_chars && (email || unique_id) {
        Ok(())
    } else {
        Err(format!(
            "TELBASE_GOOGLE_SERVICE_ACCOUNT is {:?}, not a service account email (NAME@PROJECT_ID.iam.gserviceaccount.com)",
            crate::config::diag::sanitize(sa)
        ))
    }
}

/// The project a service account belongs to, from its email
/// (`NAME@PROJECT_ID.iam.gserviceaccount.com`), as google-github-actions/auth derives it:
/// the fallback when `GOOGLE_CLOUD_PROJECT` is unset.
fn project_of(email: &str) -> Option<String> {
    let (_, domain) = email.split_once('@')?;
    domain
        .strip_suffix(".iam.gserviceaccount.com")
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
}

/// A Google endpoint credentials may be sent to: HTTPS on googleapis.com, or plain HTTP on
/// a loopback address (tests, the emulator).
fn google_url(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = u.host_str() else {
        return false;
    };
    match u.scheme() {
        "https" => host == "googleapis.com" || host.ends_with(".googleapis.com") || loopback(host),
        "http" => loopback(host),
        _ => false,
    }
}

fn loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A URL a subject token may be fetched from with the file's headers: HTTPS anywhere (the
/// runner's token service), plain HTTP only on loopback or the link-local metadata address
/// cloud VMs serve identity tokens on.
fn subject_url(url: &str) -> Option<reqwest::Url> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?.to_owned();
    match u.scheme() {
        "https" => Some(u),
        "http" if loopback(&host) || host == "169.254.169.254" => Some(u),
        _ => None,
    }
}

/// A URL with its query cut off, for messages (the runner's request URL carries nothing
/// secret in its query today, but a URL in a message needs no query).
fn without_query(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_owned()
}

impl External {
    /// From the workflow's variables: the GitHub Actions runner is the subject source.
    pub(super) fn from_vars(
        vars: &WorkloadIdentityVars,
        endpoints: &FederationEndpoints,
    ) -> Result<Parsed, String> {
        let audience = provider_audience(&vars.provider)?;
        let service_account = vars
            .service_account
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if let Some(sa) = service_account {
            check_service_account(sa)?;
        }
        let Some(request_url) = vars.request_url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Err("TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER is set but ACTIONS_ID_TOKEN_REQUEST_URL is not: the job needs `permissions: id-token: write` to get an OIDC token (keyless auth works only inside GitHub Actions)".into());
        };
        let Some(token) = vars.request_token.clone() else {
            return Err("ACTIONS_ID_TOKEN_REQUEST_URL is set but ACTIONS_ID_TOKEN_REQUEST_TOKEN is not: the runner sets both when the job has `permissions: id-token: write`".into());
        };
        let mut url = subject_url(request_url.trim()).ok_or_else(|| {
            "ACTIONS_ID_TOKEN_REQUEST_URL is not an https:// URL; the runner's token request carries a credential".to_owned()
        })?;
        url.query_pairs_mut().append_pair("audience", &audience);
        for (what, u) in [
            ("STS", &endpoints.sts_token_url),
            ("IAM Credentials", &endpoints.iam_credentials_url),
        ] {
            if !google_url(u) {
                return Err(format!(
                    "the {what} endpoint {} is not https:// on googleapis.com",
                    without_query(u)
                ));
            }
        }
        let impersonation = service_account.map(|sa| Impersonation {
            url: format!(
                "{}/v1/projects/-/serviceAccounts/{sa}:generateAccessToken",
                endpoints.iam_credentials_url.trim_end_matches('/')
            ),
            email: sa.to_owned(),
            lifetime_secs: DEFAULT_LIFETIME_SECS,
        });
        let name = format!(
            "TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER ({}{})",
            audience.trim_start_matches("//iam.googleapis.com/"),
            service_account
                .map(|s| format!(", impersonating {s}"))
                .unwrap_or_default()
        );
        let project = service_account.and_then(project_of);
        Ok((
            External {
                audience,
                subject_token_type: JWT_TOKEN_TYPE.into(),
                token_url: endpoints.sts_token_url.clone(),
                subject: Subject::Actions { url, token },
                impersonation,
                workforce_user_project: None,
            },
            name,
            project,
            None,
        ))
    }

    /// From an `external_account` credentials file's text. `origin` and `shown` name the
    /// variable and path for messages.
    pub(super) fn from_file(text: &str, origin: &str, shown: &str) -> Result<Parsed, String> {
        let bad = |what: &str| format!("{origin}: the external_account file {shown} {what}");
        let file: ExternalFile = serde_json::from_str(text)
            .map_err(|e| bad(&format!("does not have the expected fields ({e})")))?;
        let audience = file
            .audience
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("has no audience"))?;
        let subject_token_type = file
            .subject_token_type
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("has no subject_token_type"))?;
        let token_url = file.token_url.unwrap_or_else(|| STS_TOKEN_URL.into());
        if !google_url(&token_url) {
            return Err(bad(
                "names a token_url that is not https:// on googleapis.com (the subject token would go elsewhere)",
            ));
        }
        if file.client_id.is_some() || file.client_secret.is_some() {
            return Err(bad(
                "asks for STS client authentication (client_id/client_secret), which Telbase does not support; workload identity pools need none",
            ));
        }
        let source = file
            .credential_source
            .ok_or_else(|| bad("has no credential_source"))?;
        // Refused sources first, each with its reason.
        if source.executable.is_some() {
            return Err(bad(
                "uses credential_source.executable, which Telbase refuses: it runs a command named in the credentials file. Supported: credential_source.file or .url (what google-github-actions/auth writes), or TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER in GitHub Actions",
            ));
        }
        if source.environment_id.is_some() {
            return Err(bad(
                "is an AWS source (credential_source.environment_id), which Telbase does not support: it exchanges OIDC tokens read from credential_source.file or .url",
            ));
        }
        if source.certificate.is_some() {
            return Err(bad(
                "uses an X.509 certificate source (credential_source.certificate), which Telbase does not support: it exchanges OIDC tokens read from credential_source.file or .url",
            ));
        }
        if !SUBJECT_TOKEN_TYPES.contains(&subject_token_type.as_str()) {
            return Err(bad(&format!(
                "has subject_token_type {:?}; Telbase exchanges OIDC tokens ({})",
                crate::config::diag::sanitize(&subject_token_type),
                SUBJECT_TOKEN_TYPES.join(" or ")
            )));
        }
        let format = match source.format {
            None => Format::Text,
            Some(f) => match (f.kind.as_deref(), f.subject_token_field_name) {
                (None | Some("text"), _) => Format::Text,
                (Some("json"), Some(field)) if !field.is_empty() => Format::Json(field),
                (Some("json"), _) => {
                    return Err(bad(
                        "has credential_source.format.type \"json\" without subject_token_field_name",
                    ));
                }
                (Some(other), _) => {
                    return Err(bad(&format!(
                        "has credential_source.format.type {:?}; use \"text\" or \"json\"",
                        crate::config::diag::sanitize(other)
                    )));
                }
            },
        };
        let subject = match (source.file, source.url) {
            (Some(path), None) if !path.is_empty() => Subject::File {
                path: PathBuf::from(path),
                format,
            },
            (None, Some(url)) => {
                let url = subject_url(&url).ok_or_else(|| {
                    bad("has a credential_source.url that is not https:// (or plain HTTP on loopback)")
                })?;
                let headers = source
                    .headers
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, SecretString::from(v)))
                    .collect();
                Subject::Url {
                    url,
                    headers,
                    format,
                }
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "has both credential_source.file and credential_source.url; it must have one",
                ));
            }
            _ => {
                return Err(bad(
                    "has a credential_source with neither file nor url (Telbase supports those two)",
                ));
            }
        };
        let impersonation = match file.service_account_impersonation_url {
            None => None,
            Some(url) => {
                if !google_url(&url) {
                    return Err(bad(
                        "names a service_account_impersonation_url that is not https:// on googleapis.com",
                    ));
                }
                let email = impersonated_email(&url).ok_or_else(|| {
                    bad("has a service_account_impersonation_url that is not …/serviceAccounts/EMAIL:generateAccessToken")
                })?;
                let lifetime_secs = file
                    .service_account_impersonation
                    .and_then(|s| s.token_lifetime_seconds)
                    .unwrap_or(DEFAULT_LIFETIME_SECS);
                if !LIFETIME_RANGE.contains(&lifetime_secs) {
                    return Err(bad(&format!(
                        "asks for service_account_impersonation.token_lifetime_seconds {lifetime_secs}; Google accepts {} to {}",
                        LIFETIME_RANGE.start(),
                        LIFETIME_RANGE.end()
                    )));
                }
                Some(Impersonation {
                    url,
                    email,
                    lifetime_secs,
                })
            }
        };
        let name = format!(
            "{origin} (external account {}{}, {shown})",
            audience.trim_start_matches("//iam.googleapis.com/"),
            impersonation
                .as_ref()
                .map(|i| format!(", impersonating {}", i.email))
                .unwrap_or_default()
        );
        let project = impersonation.as_ref().and_then(|i| project_of(&i.email));
        Ok((
            External {
                audience,
                subject_token_type,
                token_url,
                subject,
                impersonation,
                workforce_user_project: file.workforce_pool_user_project.filter(|p| !p.is_empty()),
            },
            name,
            project,
            file.quota_project_id.filter(|p| !p.is_empty()),
        ))
    }

    /// One access token: a fresh subject token, the STS exchange, then impersonation if
    /// configured. Returns the token and how long it lives.
    pub(super) async fn token(
        &self,
        client: &reqwest::Client,
    ) -> Result<(SecretString, Option<Duration>), Fault> {
        let subject = self.subject_token(client).await?;
        let (federated, lifetime) = self.exchange(client, &subject).await?;
        match &self.impersonation {
            None => Ok((federated, lifetime)),
            Some(imp) => imp.generate(client, &federated).await,
        }
    }

    async fn subject_token(&self, client: &reqwest::Client) -> Result<SecretString, Fault> {
        match &self.subject {
            Subject::Actions { url, token } => {
                let req = client
                    .get(url.clone())
                    .bearer_auth(token.expose_secret())
                    .header("accept", "application/json");
                let (status, body) = send(req, "the GitHub Actions OIDC token request").await?;
                if !(200..300).contains(&status) {
                    let kind = match status {
                        401 | 403 => ErrorKind::Auth,
                        s => crate::providers::ProviderError::kind_for_status(s),
                    };
                    return Err(fault(
                        kind,
                        Some(status),
                        format!(
                            "the GitHub Actions OIDC token request was refused (HTTP {status}); the job needs `permissions: id-token: write`"
                        ),
                    ));
                }
                read_subject(&body, &Format::Json("value".into())).map_err(|m| {
                    fault(
                        ErrorKind::Transient,
                        Some(status),
                        format!("the GitHub Actions OIDC token response {m}"),
                    )
                })
            }
            Subject::File { path, format } => {
                let shown = path.display();
                let mut bytes = zeroize::Zeroizing::new(Vec::new());
                {
                    use std::io::Read as _;
                    std::fs::File::open(path)
                        .and_then(|f| f.take(MAX_SUBJECT + 1).read_to_end(&mut bytes))
                        .map_err(|e| {
                            fault(
                                ErrorKind::Permanent,
                                None,
                                format!("cannot read the subject token file {shown} (credential_source.file): {e}"),
                            )
                        })?;
                }
                if bytes.len() as u64 > MAX_SUBJECT {
                    return Err(fault(
                        ErrorKind::Permanent,
                        None,
                        format!(
                            "the subject token file {shown} is larger than {MAX_SUBJECT} bytes"
                        ),
                    ));
                }
                read_subject(&bytes, format).map_err(|m| {
                    fault(
                        ErrorKind::Permanent,
                        None,
                        format!("the subject token file {shown} {m}"),
                    )
                })
            }
            Subject::Url {
                url,
                headers,
                format,
            } => {
                let mut req = client.get(url.clone());
                for (k, v) in headers {
                    req = req.header(k.as_str(), v.expose_secret());
                }
                let shown = without_query(url.as_str());
                let (status, body) = send(req, "the subject token request").await?;
                if !(200..300).contains(&status) {
                    return Err(fault(
                        crate::providers::ProviderError::kind_for_status(status),
                        Some(status),
                        format!(
                            "the subject token URL {shown} (credential_source.url) answered HTTP {status}"
                        ),
                    ));
                }
                read_subject(&body, format).map_err(|m| {
                    fault(
                        ErrorKind::Transient,
                        Some(status),
                        format!("the subject token from {shown} (credential_source.url) {m}"),
                    )
                })
            }
        }
    }

    /// The STS token exchange. The body is the JSON form of
    /// `GoogleIdentityStsV1ExchangeTokenRequest`.
    async fn exchange(
        &self,
        client: &reqwest::Client,
        subject: &SecretString,
    ) -> Result<(SecretString, Option<Duration>), Fault> {
        let mut body = json!({
            "audience": self.audience,
            "grantType": TOKEN_EXCHANGE_GRANT,
            "requestedTokenType": ACCESS_TOKEN_TYPE,
            "scope": SCOPE,
            "subjectTokenType": self.subject_token_type,
            "subjectToken": subject.expose_secret(),
        });
        if let Some(p) = &self.workforce_user_project {
            body["options"] = json!(json!({"userProject": p}).to_string());
        }
        let body = zeroize::Zeroizing::new(body.to_string());
        let req = client
            .post(&self.token_url)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec());
        let (status, bytes) = send(req, "the STS token exchange").await?;
        if !(200..300).contains(&status) {
            // STS refuses an exchange in OAuth2 form; its front end (overload, outage)
            // answers with Google's usual envelope.
            let reason = serde_json::from_slice::<OAuthError>(&bytes)
                .ok()
                .and_then(|e| {
                    let hint = e.error.as_deref().map(sts_hint).unwrap_or_default();
                    let text = match (e.error, e.error_description) {
                        (Some(a), Some(b)) => format!("{a}: {b}"),
                        (Some(a), None) => a,
                        (None, Some(b)) => b,
                        (None, None) => return None,
                    };
                    Some(format!("{}{hint}", scrub(&text, &[subject])))
                })
                .or_else(|| {
                    let e = serde_json::from_slice::<GoogleError>(&bytes).ok()?.error?;
                    let text = match (e.status, e.message) {
                        (Some(s), Some(m)) => format!("{s}: {m}"),
                        (s, m) => s.or(m)?,
                    };
                    Some(scrub(&text, &[subject]))
                })
                .unwrap_or_else(|| "no OAuth2 error in the response".into());
            let kind = match status {
                400 | 401 | 403 => ErrorKind::Auth,
                s => crate::providers::ProviderError::kind_for_status(s),
            };
            return Err(fault(
                kind,
                Some(status),
                format!("STS refused the token exchange (HTTP {status}): {reason}"),
            ));
        }
        let parsed: StsResponse = serde_json::from_slice(&bytes).map_err(|_| {
            fault(
                ErrorKind::Transient,
                Some(status),
                "the STS response is not the expected JSON",
            )
        })?;
        let token = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| {
                fault(
                    ErrorKind::Transient,
                    Some(status),
                    "the STS response has no access_token",
                )
            })?;
        // STS states the lifetime; without it, assume its usual hour less a margin.
        let lifetime = parsed.expires_in.unwrap_or(3000);
        Ok((token, Some(Duration::from_secs(lifetime))))
    }
}

impl Impersonation {
    /// `generateAccessToken` with the federated token: `{scope, lifetime}` →
    /// `{accessToken, expireTime}`.
    async fn generate(
        &self,
        client: &reqwest::Client,
        federated: &SecretString,
    ) -> Result<(SecretString, Option<Duration>), Fault> {
        let req = client
            .post(&self.url)
            .bearer_auth(federated.expose_secret())
            .json(&json!({"scope": [SCOPE], "lifetime": format!("{}s", self.lifetime_secs)}));
        let what = format!("impersonating {}", self.email);
        let (status, bytes) = send(req, "the IAM Credentials request").await?;
        if !(200..300).contains(&status) {
            let (message, google_status) = serde_json::from_slice::<GoogleError>(&bytes)
                .ok()
                .and_then(|e| e.error)
                .map(|e| (e.message, e.status))
                .unwrap_or_default();
            let message = message
                .map(|m| scrub(&m, &[federated]))
                .unwrap_or_else(|| "no Google error in the response".into());
            let hint = match status {
                403 => format!(
                    "; grant the workload identity principal roles/iam.workloadIdentityUser on {} (see docs/keyless-google.md)",
                    self.email
                ),
                404 => "; does the service account exist?".into(),
                _ => String::new(),
            };
            let kind = match status {
                404 => ErrorKind::Permanent,
                s => crate::providers::ProviderError::kind_for_status(s),
            };
            let status_name = google_status.map(|s| format!(" {s}")).unwrap_or_default();
            return Err(fault(
                kind,
                Some(status),
                format!(
                    "IAM Credentials refused {what} (HTTP {status}{status_name}): {message}{hint}"
                ),
            ));
        }
        let parsed: GenerateResponse = serde_json::from_slice(&bytes).map_err(|_| {
            fault(
                ErrorKind::Transient,
                Some(status),
                format!("the IAM Credentials response for {what} is not the expected JSON"),
            )
        })?;
        let token = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| {
                fault(
                    ErrorKind::Transient,
                    Some(status),
                    format!("the IAM Credentials response for {what} has no accessToken"),
                )
            })?;
        let lifetime = parsed
            .expire_time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| {
                let left = t.timestamp() - chrono::Utc::now().timestamp();
                Duration::from_secs(left.max(0) as u64)
            })
            .unwrap_or(Duration::from_secs(self.lifetime_secs.saturating_sub(300)));
        Ok((token, Some(lifetime)))
    }
}

/// The email in `…/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`.
fn impersonated_email(url: &str) -> Option<String> {
    let path = reqwest::Url::parse(url).ok()?.path().to_owned();
    let rest = path.rsplit_once("/serviceAccounts/")?.1;
    let email = rest.strip_suffix(":generateAccessToken")?;
    check_service_account(email).ok()?;
    Some(email.to_owned())
}

/// What to do about an STS error, by its OAuth2 code.
fn sts_hint(code: &str) -> &'static str {
    match code {
        "invalid_target" => {
            " (the pool or provider does not exist, is disabled or deleted: check the project number, pool id and provider id)"
        }
        "unauthorized_client" => {
            " (the provider's attribute condition rejected this workflow: check which repository, branch or event it allows)"
        }
        "invalid_grant" => {
            " (the OIDC token was refused: its audience, issuer or expiry does not match the provider)"
        }
        _ => "",
    }
}

/// Send a request and read the whole answer; connection trouble is transient.
async fn send(
    req: reqwest::RequestBuilder,
    what: &str,
) -> Result<(u16, zeroize::Zeroizing<Vec<u8>>), Fault> {
    let resp = req.send().await.map_err(|e| {
        let how = if e.is_timeout() {
            "did not answer in time"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        // reqwest names the URL; without its query, nothing secret is left in it.
        let url = e
            .url()
            .map(|u| format!(" ({})", without_query(u.as_str())))
            .unwrap_or_default();
        fault(ErrorKind::Transient, None, format!("{what} {how}{url}"))
    })?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|_| {
        fault(
            ErrorKind::Transient,
            Some(status),
            format!("the answer to {what} was cut off"),
        )
    })?;
    Ok((status, zeroize::Zeroizing::new(bytes.to_vec())))
}

/// The subject token in a file or response body; the error says what is wrong, never the
/// content.
fn read_subject(bytes: &[u8], format: &Format) -> Result<SecretString, String> {
    let token = match format {
        Format::Text => std::str::from_utf8(bytes)
            .map_err(|_| "is not UTF-8 text".to_owned())?
            .trim()
            .to_owned(),
        Format::Json(field) => {
            let v: Value = serde_json::from_slice(bytes).map_err(|_| "is not JSON".to_owned())?;
            v.get(field)
                .and_then(Value::as_str)
                .map(|s| s.trim().to_owned())
                .ok_or_else(|| format!("has no string field {field:?}"))?
        }
    };
    if token.is_empty() {
        return Err("holds an empty token".into());
    }
    Ok(SecretString::from(token))
}

/// A message from Google with any secret we sent, and anything shaped like a JWT or an
/// access token, replaced: an error description may echo what it was given.
fn scrub(text: &str, secrets: &[&SecretString]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        let s = s.expose_secret();
        if s.len() >= 8 {
            out = out.replace(s, "[redacted]");
        }
    }
    let words: Vec<String> = out
        .split(' ')
        .map(|w| {
            let core = w.trim_matches(|c: char| "[]()\"',.;:".contains(c));
            let jwt = core.starts_with("eyJ") && core.matches('.').count() >= 2;
            let access = core.starts_with("ya29.");
            if jwt || access {
                w.replace(core, "[redacted]")
            } else {
                w.to_owned()
            }
        })
        .collect();
    crate::config::diag::sanitize_to(&words.join(" "), 400)
}

#[derive(Deserialize)]
struct ExternalFile {
    audience: Option<String>,
    subject_token_type: Option<String>,
    token_url: Option<String>,
    credential_source: Option<CredentialSource>,
    service_account_impersonation_url: Option<String>,
    service_account_impersonation: Option<ImpersonationOptions>,
    quota_project_id: Option<String>,
    workforce_pool_user_project: Option<String>,
    client_id: Option<serde::de::IgnoredAny>,
    client_secret: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct CredentialSource {
    file: Option<String>,
    url: Option<String>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    format: Option<FormatSpec>,
    executable: Option<Value>,
    environment_id: Option<String>,
    certificate: Option<Value>,
}

#[derive(Deserialize)]
struct FormatSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    subject_token_field_name: Option<String>,
}

#[derive(Deserialize)]
struct ImpersonationOptions {
    token_lifetime_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct StsResponse {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct GoogleError {
    error: Option<GoogleErrorBody>,
}

#[derive(Deserialize)]
struct GoogleErrorBody {
    message: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize)]
struct GenerateResponse {
    #[serde(rename = "accessToken")]
    access_token: Option<String>,
    #[serde(rename = "expireTime")]
    expire_time: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROVIDER: &str = "projects/123456789012/locations/global/workloadIdentityPools/github/providers/telbase-repo";

    #[test]
    fn provider_names_are_checked_with_a_reason() {
        assert_eq!(
            provider_audience(PROVIDER).unwrap(),
            format!("//iam.googleapis.com/{PROVIDER}")
        );
        assert_eq!(
            provider_audience(&format!("//iam.googleapis.com/{PROVIDER}")).unwrap(),
            format!("//iam.googleapis.com/{PROVIDER}")
        );
        let e = provider_audience("github/telbase-repo").unwrap_err();
        assert!(e.contains("not a provider's full resource name"), "{e}");
        let e = provider_audience(
            "projects/my-project/locations/global/workloadIdentityPools/github/providers/repo",
        )
        .unwrap_err();
        assert!(e.contains("project NUMBER"), "{e}");
        let e = provider_audience(
            "projects/1/locations/us-east1/workloadIdentityPools/github/providers/repo",
        )
        .unwrap_err();
        assert!(e.contains("\"global\""), "{e}");
        let e = provider_audience(
            "projects/1/locations/global/workloadIdentityPools/GitHub/providers/repo",
        )
        .unwrap_err();
        assert!(e.contains("pool id"), "{e}");
        let e = provider_audience(
            "projects/1/locations/global/workloadIdentityPools/github/providers/x",
        )
        .unwrap_err();
        assert!(e.contains("provider id"), "{e}");
        // Control characters in the value are shown escaped, not sent to the terminal.
        let e = provider_audience("\u{1b}[31mred").unwrap_err();
        assert!(!e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn service_accounts_and_their_projects() {
        assert!(check_service_account("deploy@links-prod.iam.gserviceaccount.com").is_ok());
        assert!(check_service_account("123456789012345678901").is_ok());
        assert!(check_service_account("deploy").is_err());
        assert!(check_service_account("a@b.com/../x").is_err());
        assert!(check_service_account("a@b.com:signBlob").is_err());
        assert_eq!(
            project_of("deploy@links-prod.iam.gserviceaccount.com").as_deref(),
            Some("links-prod")
        );
        assert_eq!(
            project_of("123-compute@developer.gserviceaccount.com"),
            None
        );
    }

    #[test]
    fn credentials_go_only_to_google_or_loopback() {
        assert!(google_url("https://sts.googleapis.com/v1/token"));
        assert!(google_url(
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/a@b.iam.gserviceaccount.com:generateAccessToken"
        ));
        assert!(google_url("http://127.0.0.1:9/sts/v1/token"));
        assert!(!google_url("http://sts.googleapis.com/v1/token"));
        assert!(!google_url(
            "https://sts.googleapis.com.evil.example/v1/token"
        ));
        assert!(!google_url("https://evil-googleapis.com/v1/token"));
        assert!(
            subject_url(
                "https://pipelines.actions.githubusercontent.com/x/idtoken?api-version=2.0"
            )
            .is_some()
        );
        assert!(subject_url("http://169.254.169.254/metadata/identity/oauth2/token").is_some());
        assert!(subject_url("http://example.com/token").is_none());
    }

    #[test]
    fn subject_tokens_by_format() {
        let t = read_subject(b" eyJ.a.b\n", &Format::Text).unwrap();
        assert_eq!(t.expose_secret(), "eyJ.a.b");
        let t = read_subject(
            br#"{"value": "eyJ.c.d", "count": 1}"#,
            &Format::Json("value".into()),
        )
        .unwrap();
        assert_eq!(t.expose_secret(), "eyJ.c.d");
        let e = read_subject(
            br#"{"token": "eyJ.secret.x"}"#,
            &Format::Json("value".into()),
        )
        .unwrap_err();
        assert!(e.contains("\"value\"") && !e.contains("secret"), "{e}");
        assert!(read_subject(b"  ", &Format::Text).is_err());
        assert!(read_subject(b"not json", &Format::Json("value".into())).is_err());
    }

    #[test]
    fn messages_lose_anything_token_shaped() {
        let sent = SecretString::from("opaque-subject-token-123".to_owned());
        let m = scrub(
            "bad token opaque-subject-token-123 near [eyJhbGciOi.eyJzdWIi.c2ln] and ya29.secret-access",
            &[&sent],
        );
        assert!(!m.contains("opaque-subject"), "{m}");
        assert!(!m.contains("eyJhbGciOi"), "{m}");
        assert!(!m.contains("ya29.secret"), "{m}");
        assert!(m.contains("[redacted]"), "{m}");
    }

    #[test]
    fn impersonation_urls_name_the_account() {
        assert_eq!(
            impersonated_email("https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/deploy@p.iam.gserviceaccount.com:generateAccessToken")
                .as_deref(),
            Some("deploy@p.iam.gserviceaccount.com")
        );
        assert_eq!(
            impersonated_email(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/deploy@p.iam.gserviceaccount.com:signBlob"
            ),
            None
        );
    }

    #[test]
    fn debug_of_the_variables_hides_the_request_token() {
        let v = WorkloadIdentityVars {
            provider: PROVIDER.into(),
            service_account: None,
            request_url: Some("https://runner.example/idtoken?api-version=2.0&sig=abc".into()),
            request_token: Some(SecretString::from("runner-request-token".to_owned())),
        };
        let d = format!("{v:?}");
        assert!(
            !d.contains("runner-request-token") && !d.contains("sig=abc"),
            "{d}"
        );
    }

    #[test]
    fn a_missing_id_token_permission_is_explained() {
        let v = WorkloadIdentityVars {
            provider: PROVIDER.into(),
            ..WorkloadIdentityVars::default()
        };
        let Err(e) = External::from_vars(&v, &FederationEndpoints::default()) else {
            panic!("accepted without a request URL");
        };
        assert!(e.contains("permissions: id-token: write"), "{e}");
        assert!(e.contains("GitHub Actions"), "{e}");
    }
}
