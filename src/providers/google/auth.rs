//! Application Default Credentials: where Google access tokens come from, in the order
//! Google's own libraries and gcloud look, so a team's existing setup just works:
//!
//! 1. an access token in the environment (`GOOGLE_OAUTH_ACCESS_TOKEN`, then
//!    `CLOUDSDK_AUTH_ACCESS_TOKEN`), used as is;
//! 2. keyless auth in GitHub Actions: `TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER` (and
//!    optionally `TELBASE_GOOGLE_SERVICE_ACCOUNT`) exchanges the job's OIDC token through
//!    workload identity federation (`external`). This Telbase-specific step comes before
//!    Google's file-based ones on purpose: a variable set for Telbase in the workflow is the
//!    more explicit choice, and wins over a `GOOGLE_APPLICATION_CREDENTIALS` left behind by
//!    another step;
//! 3. `GOOGLE_APPLICATION_CREDENTIALS` naming a JSON key file: a service-account key is
//!    exchanged for a token by the OAuth2 JWT-bearer grant (an RS256 assertion signed here
//!    with `ring`), an `authorized_user` file by the refresh-token grant, an
//!    `external_account` file (what google-github-actions/auth writes) by the STS token
//!    exchange in `external`;
//! 4. gcloud's well-known file (`application_default_credentials.json` under
//!    `$CLOUDSDK_CONFIG` or `~/.config/gcloud`), written by
//!    `gcloud auth application-default login`;
//! 5. the metadata server when running on Google Cloud (`GCE_METADATA_HOST` overrides its
//!    address). Off Google Cloud it is probed once with a short timeout, so a laptop without
//!    credentials gets a clear error quickly rather than a long hang.
//!
//! Tokens are cached until `refresh_margin` (60 s) before they expire; concurrent callers
//! wait on one refresh. The private key, refresh token, client secret and access tokens are
//! held in `secrecy` types (zeroized on drop) and never appear in `Debug`, errors or logs:
//! errors name the source that failed and why, never a credential. One `Adc` is shared by
//! the three Google clients (Cloud Run, Secret Manager, Cloud SQL) through `shared()`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::external::{External, FederationEndpoints, WorkloadIdentityVars};
use crate::model::Provider;
use crate::providers::http::TokenSource;
use crate::providers::{BoxFuture, ErrorKind, ProviderError, SetupError};

/// The scope every token asks for: Cloud Run, Secret Manager and Cloud SQL Admin all accept
/// it, and IAM decides what the principal may actually do.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Google's OAuth2 token endpoint, for `authorized_user` files that name none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The metadata server's name on Google Cloud.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// Largest credentials file we read.
const MAX_KEY_FILE: u64 = 256 * 1024;

/// Longest JWT assertion lifetime Google accepts.
const ASSERTION_LIFETIME_SECS: i64 = 3600;

/// Where Application Default Credentials look. `from_env` reads the real environment; tests
/// build one by hand so they never depend on (or race over) process-wide variables.
#[derive(Clone)]
pub struct AdcConfig {
    /// An access token from the environment, with the variable it came from.
    pub env_token: Option<(&'static str, SecretString)>,
    /// Keyless auth from a GitHub Actions workflow (`TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER`
    /// and the runner's OIDC request variables).
    pub workload_identity: Option<WorkloadIdentityVars>,
    /// Where STS and IAM Credentials are for `workload_identity`: Google's, or the
    /// emulator's in tests.
    pub federation: FederationEndpoints,
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    pub credentials_file: Option<PathBuf>,
    /// gcloud's `application_default_credentials.json` (used only if it exists).
    pub well_known_file: Option<PathBuf>,
    /// `GOOGLE_CLOUD_QUOTA_PROJECT`: the project user credentials bill API quota to.
    pub quota_project: Option<String>,
    /// `host[:port]` of the metadata server.
    pub metadata_host: String,
    /// We know we run on Google Cloud (or `GCE_METADATA_HOST` was set): no probe needed.
    pub on_google_cloud: bool,
    /// How long the metadata server may take to answer before we conclude we are not on
    /// Google Cloud.
    pub probe_timeout: Duration,
    /// One token request's limit.
    pub timeout: Duration,
    /// Refresh a token this long before it expires.
    pub refresh_margin: Duration,
}

impl std::fmt::Debug for AdcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdcConfig")
            .field("env_token", &self.env_token.as_ref().map(|(v, _)| v))
            .field("workload_identity", &self.workload_identity)
            .field("credentials_file", &self.credentials_file)
            .field("well_known_file", &self.well_known_file)
            .field("quota_project", &self.quota_project)
            .field("metadata_host", &self.metadata_host)
            .field("on_google_cloud", &self.on_google_cloud)
            .finish()
    }
}

impl Default for AdcConfig {
    fn default() -> Self {
        AdcConfig {
            env_token: None,
            workload_identity: None,
            federation: FederationEndpoints::default(),
            credentials_file: None,
            well_known_file: None,
            quota_project: None,
            metadata_host: DEFAULT_METADATA_HOST.into(),
            on_google_cloud: false,
            probe_timeout: Duration::from_millis(800),
            timeout: Duration::from_secs(30),
            refresh_margin: Duration::from_secs(60),
        }
    }
}

impl AdcConfig {
    /// From the environment, as Google's client libraries read it.
    pub fn from_env() -> Self {
        let dmi = std::fs::read_to_string("/sys/class/dmi/id/product_name")
            .is_ok_and(|p| p.contains("Google"));
        Self::from_vars(|k| std::env::var(k).ok(), dmi)
    }

    /// From variables looked up by `get` (the environment, or a map in tests); `dmi_google`
    /// says the machine's DMI product name is Google's (Compute Engine, GKE nodes).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>, dmi_google: bool) -> Self {
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let env_token = ["GOOGLE_OAUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN"]
            .into_iter()
            .find_map(|k| var(k).map(|t| (k, SecretString::from(t.trim().to_owned()))));
        let gcloud_dir = var("CLOUDSDK_CONFIG").map(PathBuf::from).or_else(|| {
            if cfg!(windows) {
                var("APPDATA").map(|d| Path::new(&d).join("gcloud"))
            } else {
                var("HOME").map(|h| Path::new(&h).join(".config").join("gcloud"))
            }
        });
        let metadata_env = var("GCE_METADATA_HOST");
        // Cheap signs of Google Cloud: the serverless runtimes set these.
        let serverless = [
            "K_SERVICE",
            "CLOUD_RUN_JOB",
            "FUNCTION_TARGET",
            "GAE_SERVICE",
        ]
        .iter()
        .any(|k| var(k).is_some());
        let workload_identity =
            var("TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER").map(|provider| WorkloadIdentityVars {
                provider,
                service_account: var("TELBASE_GOOGLE_SERVICE_ACCOUNT"),
                request_url: var("ACTIONS_ID_TOKEN_REQUEST_URL"),
                request_token: var("ACTIONS_ID_TOKEN_REQUEST_TOKEN").map(SecretString::from),
            });
        AdcConfig {
            env_token,
            workload_identity,
            credentials_file: var("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from),
            quota_project: var("GOOGLE_CLOUD_QUOTA_PROJECT"),
            well_known_file: gcloud_dir.map(|d| d.join("application_default_credentials.json")),
            on_google_cloud: metadata_env.is_some() || serverless || dmi_google,
            metadata_host: metadata_env.unwrap_or_else(|| DEFAULT_METADATA_HOST.into()),
            ..AdcConfig::default()
        }
    }
}

/// Why a token could not be had. Names the source and the reason; never a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Google credentials from {source_name}: {message}")]
pub struct AuthError {
    /// Which source failed: "GOOGLE_APPLICATION_CREDENTIALS (service account x@y)", ….
    pub source_name: String,
    pub kind: ErrorKind,
    pub status: Option<u16>,
    pub message: String,
}

/// A service-account key, parsed and checked.
struct ServiceAccount {
    client_email: String,
    private_key_id: Option<String>,
    /// PKCS#8 DER of the RSA private key.
    key_der: SecretSlice<u8>,
    token_uri: String,
}

/// A user's gcloud login (`authorized_user`).
struct AuthorizedUser {
    client_id: String,
    client_secret: SecretString,
    refresh_token: SecretString,
    token_uri: String,
}

enum Source {
    Env(SecretString),
    ServiceAccount(ServiceAccount),
    AuthorizedUser(AuthorizedUser),
    Metadata {
        host: String,
        probe: bool,
    },
    /// Workload identity federation (`external`).
    External(External),
}

struct Cached {
    token: SecretString,
    /// When to fetch a new one; `None`: never (a token from the environment).
    refresh_at: Option<Instant>,
    /// When it stops working.
    expires_at: Option<Instant>,
}

/// Application Default Credentials: one source, its cached token, and the client that
/// fetches new ones.
pub struct Adc {
    source: Source,
    /// For messages: which source this is, with the file it came from.
    source_name: String,
    project_id: Option<String>,
    /// Where user credentials bill quota: Cloud SQL Admin and other APIs refuse calls
    /// from user credentials without one.
    quota_project: Option<String>,
    client: reqwest::Client,
    config: AdcConfig,
    cache: tokio::sync::Mutex<Option<Cached>>,
    /// Set when the metadata probe found no server: asked again, the answer is the same,
    /// so every later caller fails at once instead of waiting out another probe.
    no_metadata: std::sync::OnceLock<AuthError>,
}

impl std::fmt::Debug for Adc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adc")
            .field("source", &self.source_name)
            .field("project_id", &self.project_id)
            .field("quota_project", &self.quota_project)
            .finish_non_exhaustive()
    }
}

/// The fields of a credentials file we read. Secret fields are moved into `secrecy` types
/// as soon as the file is parsed.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    project_id: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    client_email: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    token_uri: Option<String>,
    quota_project_id: Option<String>,
}

/// What a credentials file yields: the source, its name for messages, the project it
/// names and the quota project it asks for.
type FromFile = (Source, String, Option<String>, Option<String>);

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

/// A token endpoint we may send credentials to: HTTPS, or plain HTTP to a loopback address
/// (tests, local fakes).
fn acceptable_token_url(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = u.host_str() else {
        return false;
    };
    match u.scheme() {
        "https" => true,
        "http" => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost"
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// Decode a PEM `PRIVATE KEY` block into PKCS#8 DER, without ever copying the key into a
/// buffer that outlives this call unzeroized.
fn pem_to_der(pem: &str) -> Result<SecretSlice<u8>, String> {
    let begin = "-----BEGIN PRIVATE KEY-----";
    let end = "-----END PRIVATE KEY-----";
    let start = pem
        .find(begin)
        .ok_or("private_key is not a PEM \"PRIVATE KEY\" block (PKCS#8)")?
        + begin.len();
    let stop = pem[start..]
        .find(end)
        .ok_or("private_key has no PEM end line")?
        + start;
    let b64 = zeroize::Zeroizing::new(
        pem[start..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>(),
    );
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| "private_key is not valid base64 inside its PEM block".to_owned())?;
    Ok(SecretSlice::from(der))
}

impl Adc {
    /// Pick the first source that is configured, reading and checking any key file now so a
    /// bad one is reported at setup, before any call.
    pub fn discover(config: AdcConfig) -> Result<Adc, SetupError> {
        let invalid = |message: String| SetupError::Invalid {
            provider: "google",
            message,
        };
        let (source, source_name, project_id, file_quota) =
            if let Some((var, token)) = &config.env_token {
                (Source::Env(token.clone()), (*var).to_owned(), None, None)
            } else if let Some(vars) = &config.workload_identity {
                let (ext, name, project, quota) =
                    External::from_vars(vars, &config.federation).map_err(&invalid)?;
                (Source::External(ext), name, project, quota)
            } else if let Some(path) = &config.credentials_file {
                Self::from_file(path, "GOOGLE_APPLICATION_CREDENTIALS").map_err(&invalid)?
            } else if let Some(path) = config.well_known_file.as_ref().filter(|p| p.is_file()) {
                Self::from_file(path, "gcloud application-default credentials").map_err(&invalid)?
            } else {
                let host = config.metadata_host.clone();
                (
                    Source::Metadata {
                        probe: !config.on_google_cloud,
                        host: host.clone(),
                    },
                    format!("the metadata server ({host})"),
                    None,
                    None,
                )
            };
        let quota_project = config.quota_project.clone().or(file_quota);
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("telbase/", env!("CARGO_PKG_VERSION")))
            // A redirect could carry the assertion or refresh token somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| invalid(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Adc {
            source,
            source_name,
            project_id,
            quota_project,
            client,
            config,
            cache: tokio::sync::Mutex::new(None),
            no_metadata: std::sync::OnceLock::new(),
        })
    }

    /// Read and check a credentials file. The error names the file and what is wrong with
    /// it, never its contents.
    fn from_file(path: &Path, origin: &str) -> Result<FromFile, String> {
        let shown = path.display();
        // Key files are a few kilobytes; a cap keeps a mistaken path (a device, a log)
        // from being read without end.
        let mut text = zeroize::Zeroizing::new(String::new());
        {
            use std::io::Read as _;
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_string(&mut text))
                .map_err(|e| format!("{origin}: cannot read the key file {shown}: {e}"))?;
        }
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(format!(
                "{origin}: {shown} is larger than {MAX_KEY_FILE} bytes, too large to be a Google credentials file"
            ));
        }
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| {
            // serde's message names a line and column, not the text: safe to show.
            format!("{origin}: the key file {shown} is not valid JSON ({e})")
        })?;
        let KeyFile {
            kind,
            project_id,
            private_key_id,
            private_key,
            client_email,
            client_id,
            client_secret,
            refresh_token,
            token_uri,
            quota_project_id,
        } = file;
        let private_key = private_key.map(zeroize::Zeroizing::new);
        let client_secret = client_secret.map(SecretString::from);
        let refresh_token = refresh_token.map(SecretString::from);
        let bad = |what: &str| format!("{origin}: the key file {shown} {what}");
        match kind.as_deref() {
            Some("service_account") => {
                let client_email = client_email.ok_or_else(|| bad("has no client_email"))?;
                let pem = private_key.ok_or_else(|| bad("has no private_key"))?;
                let key_der = pem_to_der(&pem).map_err(|e| bad(&format!("is unusable: {e}")))?;
                // Parse once now so a corrupt key fails at setup, not at the first call.
                ring::signature::RsaKeyPair::from_pkcs8(key_der.expose_secret()).map_err(|e| {
                    bad(&format!(
                        "is unusable: private_key is not a PKCS#8 RSA key ring accepts ({e})"
                    ))
                })?;
                let token_uri = token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.into());
                if !acceptable_token_url(&token_uri) {
                    return Err(bad(
                        "names a token_uri that is not https:// (credentials never go over plain HTTP)",
                    ));
                }
                let name = format!("{origin} (service account {client_email}, {shown})");
                Ok((
                    Source::ServiceAccount(ServiceAccount {
                        client_email,
                        private_key_id,
                        key_der,
                        token_uri,
                    }),
                    name,
                    project_id.filter(|p| !p.is_empty()),
                    // A service account bills its own project.
                    None,
                ))
            }
            Some("authorized_user") => {
                let client_id = client_id.ok_or_else(|| bad("has no client_id"))?;
                let client_secret = client_secret.ok_or_else(|| bad("has no client_secret"))?;
                let refresh_token = refresh_token.ok_or_else(|| bad("has no refresh_token"))?;
                let token_uri = token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.into());
                if !acceptable_token_url(&token_uri) {
                    return Err(bad(
                        "names a token_uri that is not https:// (credentials never go over plain HTTP)",
                    ));
                }
                Ok((
                    Source::AuthorizedUser(AuthorizedUser {
                        client_id,
                        client_secret,
                        refresh_token,
                        token_uri,
                    }),
                    format!("{origin} (user credentials, {shown})"),
                    project_id.filter(|p| !p.is_empty()),
                    quota_project_id.filter(|p| !p.is_empty()),
                ))
            }
            Some("external_account") => {
                let (ext, name, project, quota) =
                    External::from_file(&text, origin, &shown.to_string())?;
                Ok((Source::External(ext), name, project, quota))
            }
            Some(other) => Err(bad(&format!(
                "has type {other:?}; Telbase supports \"service_account\", \"authorized_user\" and \"external_account\" files"
            ))),
            None => Err(bad(
                "has no \"type\" field; is it a Google credentials file?",
            )),
        }
    }

    /// Which source tokens come from, for messages.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The project named by the key file (`project_id`), the fallback when
    /// `GOOGLE_CLOUD_PROJECT` is unset.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    /// The project API quota is billed to, for user credentials (`GOOGLE_CLOUD_QUOTA_PROJECT`,
    /// else the gcloud file's `quota_project_id`). Sent as the `$userProject` system
    /// parameter, Google's query spelling of `X-Goog-User-Project`.
    pub fn quota_project(&self) -> Option<&str> {
        self.quota_project.as_deref()
    }

    /// A valid access token: the cached one, or a fresh one if it is near expiry. Callers
    /// arriving during a refresh wait for it rather than starting their own.
    pub async fn access_token(&self) -> Result<SecretString, AuthError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref()
            && c.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = match self.fetch_with_retries().await {
            Ok(t) => t,
            Err(e) => {
                // A refresh ahead of expiry that fails leaves a token that still works:
                // use it for now, and try again on the next call.
                if let Some(c) = cache.as_ref()
                    && c.expires_at
                        .is_some_and(|x| Instant::now() + Duration::from_secs(5) < x)
                {
                    tracing::warn!(source = %self.source_name, error = %e.message, "token refresh failed; using the current token until it expires");
                    return Ok(c.token.clone());
                }
                return Err(e);
            }
        };
        let now = Instant::now();
        let refresh_at = lifetime.map(|l| now + l.saturating_sub(self.config.refresh_margin));
        *cache = Some(Cached {
            token: token.clone(),
            refresh_at,
            expires_at: lifetime.map(|l| now + l),
        });
        Ok(token)
    }

    fn fail(&self, kind: ErrorKind, status: Option<u16>, message: impl Into<String>) -> AuthError {
        AuthError {
            source_name: self.source_name.clone(),
            kind,
            status,
            message: message.into(),
        }
    }

    /// Fetch, retrying failures that may pass (connection trouble, 5xx, 429) a few times.
    async fn fetch_with_retries(&self) -> Result<(SecretString, Option<Duration>), AuthError> {
        let mut wait = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.fetch().await {
                Ok(t) => return Ok(t),
                Err(e)
                    if attempt < 3
                        && matches!(e.kind, ErrorKind::Transient | ErrorKind::RateLimited) =>
                {
                    tracing::debug!(source = %self.source_name, error = %e.message, "token request failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One token request from the configured source: the token and how long it lives.
    async fn fetch(&self) -> Result<(SecretString, Option<Duration>), AuthError> {
        match &self.source {
            Source::Env(t) => Ok((t.clone(), None)),
            Source::ServiceAccount(sa) => {
                let assertion = self.assertion(sa)?;
                let req = self.client.post(&sa.token_uri).form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.expose_secret()),
                ]);
                self.token_call(req, None).await
            }
            Source::AuthorizedUser(u) => {
                let req = self.client.post(&u.token_uri).form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", u.client_id.as_str()),
                    ("client_secret", u.client_secret.expose_secret()),
                    ("refresh_token", u.refresh_token.expose_secret()),
                ]);
                self.token_call(req, None).await
            }
            Source::External(ext) => ext
                .token(&self.client)
                .await
                .map_err(|f| self.fail(f.kind, f.status, f.message)),
            Source::Metadata { host, probe } => {
                let url = format!("http://{host}{METADATA_TOKEN_PATH}");
                let req = self
                    .client
                    .get(&url)
                    .header("Metadata-Flavor", "Google")
                    .query(&[("scopes", SCOPE)]);
                // Off Google Cloud the probe is the first request: a short limit keeps a
                // laptop without credentials from hanging on an address nobody answers.
                if let Some(e) = self.no_metadata.get() {
                    return Err(e.clone());
                }
                let limit = probe.then_some(self.config.probe_timeout);
                self.token_call(req, limit).await.map_err(|mut e| {
                    if *probe && e.status.is_none() {
                        // The explanation first: messages are capped, and the socket error
                        // after it matters less.
                        e.kind = ErrorKind::Auth;
                        e.message = format!(
                            "none found: set GOOGLE_APPLICATION_CREDENTIALS to a key file, run `gcloud auth application-default login`, or set GOOGLE_OAUTH_ACCESS_TOKEN (off Google Cloud: the metadata server probe {})",
                            e.message
                        );
                        let _ = self.no_metadata.set(e.clone());
                    }
                    e
                })
            }
        }
    }

    /// The signed JWT for the JWT-bearer grant (RFC 7523): RS256 over header and claims.
    fn assertion(&self, sa: &ServiceAccount) -> Result<SecretString, AuthError> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = chrono::Utc::now().timestamp();
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &sa.private_key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": sa.client_email,
            "scope": SCOPE,
            "aud": sa.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let key = ring::signature::RsaKeyPair::from_pkcs8(sa.key_der.expose_secret())
            .map_err(|_| self.fail(ErrorKind::Permanent, None, "the private key is unusable"))?;
        let mut sig = vec![0u8; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signing_input.as_bytes(),
            &mut sig,
        )
        .map_err(|_| self.fail(ErrorKind::Permanent, None, "signing the assertion failed"))?;
        Ok(SecretString::from(format!(
            "{signing_input}.{}",
            b64.encode(sig)
        )))
    }

    /// Send a token request and read `{access_token, expires_in}`. Error messages carry
    /// the OAuth2 `error`/`error_description` fields only, never the body as such.
    async fn token_call(
        &self,
        req: reqwest::RequestBuilder,
        limit: Option<Duration>,
    ) -> Result<(SecretString, Option<Duration>), AuthError> {
        let req = match limit {
            Some(l) => req.timeout(l),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "did not answer in time"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "the connection failed"
            };
            // reqwest's messages name the URL, never the form body or headers.
            self.fail(
                ErrorKind::Transient,
                None,
                format!("token request {what} ({})", without_url_query(&e)),
            )
        })?;
        let status = resp.status().as_u16();
        let bytes = zeroize::Zeroizing::new(
            resp.bytes()
                .await
                .map_err(|_| {
                    self.fail(
                        ErrorKind::Transient,
                        Some(status),
                        "the token response was cut off",
                    )
                })?
                .to_vec(),
        );
        if !(200..300).contains(&status) {
            let reason = serde_json::from_slice::<OAuthError>(&bytes)
                .ok()
                .and_then(|e| match (e.error, e.error_description) {
                    (Some(a), Some(b)) => Some(format!("{a}: {b}")),
                    (Some(a), None) => Some(a),
                    (None, Some(b)) => Some(b),
                    (None, None) => None,
                })
                .unwrap_or_else(|| "no OAuth2 error in the response".into());
            let kind = match status {
                // invalid_grant and friends: the credentials themselves are refused.
                400 | 401 | 403 => ErrorKind::Auth,
                404 => ErrorKind::Permanent,
                s => ProviderError::kind_for_status(s),
            };
            let reason = crate::config::diag::sanitize(&reason);
            return Err(self.fail(
                kind,
                Some(status),
                format!("the token endpoint refused the request (HTTP {status}): {reason}"),
            ));
        }
        let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| {
            self.fail(
                ErrorKind::Transient,
                Some(status),
                "the token response is not the expected JSON",
            )
        })?;
        let token = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| {
                self.fail(
                    ErrorKind::Transient,
                    Some(status),
                    "the token response has no access_token",
                )
            })?;
        let lifetime = match parsed.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        // Without a stated lifetime, assume Google's usual hour minus a safety margin.
        .unwrap_or(3000);
        Ok((token, Some(Duration::from_secs(lifetime))))
    }
}

/// reqwest's error text with any query string of the URL dropped (the metadata URL's
/// `scopes` is harmless, but nothing else belongs in a message).
fn without_url_query(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url()
        && let Some(q) = u.query()
    {
        text = text.replace(&format!("?{q}"), "");
    }
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        src = cause.source();
    }
    text
}

/// The token source one Google client uses: the shared `Adc`, with errors naming that
/// client's provider.
pub struct ProviderTokens {
    pub adc: Arc<Adc>,
    pub provider: Provider,
}

impl TokenSource for ProviderTokens {
    fn token(&self) -> BoxFuture<'_, Result<SecretString, ProviderError>> {
        Box::pin(async move {
            self.adc.access_token().await.map_err(|e| {
                ProviderError::new(
                    self.provider,
                    e.kind,
                    "get a Google access token",
                    e.status,
                    e.to_string(),
                    None,
                    None,
                )
            })
        })
    }
}

/// The process-wide credentials, discovered once from the environment, shared by Cloud
/// Run, Secret Manager and Cloud SQL (and by every project a server reconciles), so one
/// token serves them all.
pub fn shared() -> Result<Arc<Adc>, SetupError> {
    static SHARED: OnceLock<Result<Arc<Adc>, SetupError>> = OnceLock::new();
    SHARED
        .get_or_init(|| Adc::discover(AdcConfig::from_env()).map(Arc::new))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> AdcConfig {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AdcConfig::from_vars(|k| map.get(k).cloned(), false)
    }

    #[test]
    fn the_environment_is_read_as_google_reads_it() {
        let c = vars(&[
            ("CLOUDSDK_AUTH_ACCESS_TOKEN", "ya29.b"),
            ("GOOGLE_OAUTH_ACCESS_TOKEN", " ya29.a "),
            ("HOME", "home-dev"),
        ]);
        let (var, token) = c.env_token.unwrap();
        assert_eq!(
            (var, token.expose_secret()),
            ("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.a")
        );
        if !cfg!(windows) {
            assert_eq!(
                c.well_known_file.unwrap(),
                Path::new("home-dev/.config/gcloud/application_default_credentials.json")
            );
        }
        assert!(!c.on_google_cloud);
        assert_eq!(c.metadata_host, DEFAULT_METADATA_HOST);

        let c = vars(&[
            ("GOOGLE_OAUTH_ACCESS_TOKEN", "  "),
            ("CLOUDSDK_CONFIG", "gcloud-cfg"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "keys/sa.json"),
            ("GCE_METADATA_HOST", "169.254.169.254:8080"),
            ("GOOGLE_CLOUD_QUOTA_PROJECT", "billing"),
        ]);
        assert!(c.env_token.is_none(), "blank counts as unset");
        assert_eq!(c.credentials_file.unwrap(), Path::new("keys/sa.json"));
        assert_eq!(
            c.well_known_file.unwrap(),
            Path::new("gcloud-cfg/application_default_credentials.json")
        );
        assert_eq!(c.metadata_host, "169.254.169.254:8080");
        assert!(
            c.on_google_cloud,
            "an explicit metadata host needs no probe"
        );
        assert_eq!(c.quota_project.as_deref(), Some("billing"));

        assert!(vars(&[("K_SERVICE", "web")]).on_google_cloud);
        assert!(AdcConfig::from_vars(|_| None, true).on_google_cloud);
    }

    #[test]
    fn keyless_variables_are_read_from_the_workflow() {
        let c = vars(&[
            (
                "TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER",
                "projects/1/locations/global/workloadIdentityPools/gh/providers/repo",
            ),
            (
                "TELBASE_GOOGLE_SERVICE_ACCOUNT",
                "d@p.iam.gserviceaccount.com",
            ),
            (
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                "https://runner.example/idtoken?api-version=2.0",
            ),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token"),
        ]);
        let w = c.workload_identity.unwrap();
        assert!(w.provider.ends_with("/providers/repo"));
        assert_eq!(
            w.service_account.as_deref(),
            Some("d@p.iam.gserviceaccount.com")
        );
        assert!(
            w.request_url
                .unwrap()
                .starts_with("https://runner.example/")
        );
        assert_eq!(w.request_token.unwrap().expose_secret(), "request-token");
        assert_eq!(
            c.federation.sts_token_url,
            super::super::external::STS_TOKEN_URL
        );
        // The action passes an empty input as an empty variable: not keyless.
        let c = vars(&[("TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER", "")]);
        assert!(c.workload_identity.is_none());
    }

    #[test]
    fn token_urls_must_be_https_or_loopback() {
        assert!(acceptable_token_url("https://oauth2.googleapis.com/token"));
        assert!(acceptable_token_url("http://127.0.0.1:8080/token"));
        assert!(acceptable_token_url("http://[::1]:8080/token"));
        assert!(acceptable_token_url("http://localhost/token"));
        assert!(!acceptable_token_url("http://oauth2.googleapis.com/token"));
        assert!(!acceptable_token_url("http://127.0.0.1.example.com/token"));
        assert!(!acceptable_token_url("ftp://x/token"));
        assert!(!acceptable_token_url("not a url"));
    }

    #[test]
    fn pem_blocks() {
        let der =
            pem_to_der("-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n")
                .unwrap();
        assert_eq!(der.expose_secret(), &[0, 1, 2, 3]);
        assert!(
            pem_to_der("-----BEGIN RSA PRIVATE KEY-----\nAAEC\n-----END RSA PRIVATE KEY-----")
                .is_err()
        );
        assert!(pem_to_der("-----BEGIN PRIVATE KEY-----\nAAEC").is_err());
        let e = pem_to_der("-----BEGIN PRIVATE KEY-----\n!!secret!!\n-----END PRIVATE KEY-----")
            .unwrap_err();
        assert!(!e.contains("secret!!"));
    }

    #[test]
    fn debug_shows_no_token() {
        let token = || {
            Some((
                "GOOGLE_OAUTH_ACCESS_TOKEN",
                SecretString::from("ya29.hidden"),
            ))
        };
        let adc = Adc::discover(AdcConfig {
            env_token: token(),
            ..AdcConfig::default()
        })
        .unwrap();
        assert!(!format!("{adc:?}").contains("hidden"));
        let cfg = AdcConfig {
            env_token: token(),
            ..AdcConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("hidden"));
    }
}
