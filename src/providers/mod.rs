//! Provider clients, behind one `Provider` trait: observe what this project owns at a
//! provider, carry out one planned change, and resolve an output (a connection string) at
//! the moment it is needed. One file per provider holds its wire mapping and client
//! (`vercel.rs`, `neon.rs`); what all of them share lives here and beside it: the HTTP layer
//! (`http`), the typed error (`error`), the retry policy (`retry`), ownership markers
//! (`owner`) and credentials (`Credentials`). Providers never decide what to change; that is
//! `plan`'s job, and the order is `apply`'s.

pub mod cloudflare;
pub mod error;
pub mod google;
pub mod http;
pub mod neon;
pub mod observe;
pub mod owner;
pub mod retry;
pub mod turso;
pub mod vercel;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use secrecy::SecretString;

pub use error::{ErrorKind, ProviderError};
pub use retry::{Decision, RetryPolicy};

use crate::model::{DesiredState, Environment, Observed, Output, Resource, ResourceKey};
use crate::plan::FieldChange;

/// A boxed future, so `Provider` can be used as a trait object (one executor, many
/// providers) without a macro crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The git commit a reconcile makes true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRef {
    /// `owner/name` on GitHub.
    pub repo: String,
    pub sha: String,
    /// The branch the commit was taken from.
    pub branch: String,
}

/// Who a call acts for. Ownership markers are derived from it, so one project never sees
/// or touches another's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The `project:` of telbase.yaml.
    pub project: String,
    pub environment: Environment,
    pub git: Option<GitRef>,
}

/// Values opened or fetched at apply time for one resource, by env var name. Held only for
/// the call that hands them to the provider, then dropped (and zeroized: `SecretString`).
#[derive(Default)]
pub struct Inputs {
    pub env: BTreeMap<String, SecretString>,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One change to carry out, with everything the client needs to do it.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    Create {
        desired: &'a Resource,
    },
    Update {
        desired: &'a Resource,
        observed: &'a Observed,
        changes: &'a [FieldChange],
    },
    /// Delete then create (or the provider's equivalent).
    Replace {
        desired: &'a Resource,
        observed: &'a Observed,
    },
    Delete {
        observed: &'a Observed,
    },
}

impl Change<'_> {
    pub fn key(&self) -> &ResourceKey {
        match self {
            Change::Create { desired }
            | Change::Update { desired, .. }
            | Change::Replace { desired, .. } => &desired.key,
            Change::Delete { observed } => &observed.key,
        }
    }
}

/// What a carried-out change reports back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The provider's id of the resource (empty after a delete).
    pub provider_id: String,
    /// A URL people can open (a deployment, a console page), when there is one.
    pub url: Option<String>,
}

/// One provider: Vercel, Neon, ….
pub trait Provider: Send + Sync {
    fn provider(&self) -> crate::model::Provider;

    /// Every resource at this provider that carries this scope's ownership marker, mapped
    /// to model terms and normalized. Nothing else is ever returned.
    fn observe<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<Observed>, ProviderError>>;

    /// The pull-request numbers of `project`'s preview environments that have resources
    /// here, read from the ownership markers (so only what Telbase made for this project is
    /// named). The preview sweep tears each one whose pull request is not open down through
    /// the planner. Providers whose markers do not name the environment in a listable way
    /// (Turso's are hashes) report none; the other providers of the same preview are still
    /// cleaned by that teardown.
    fn preview_environments<'a>(
        &'a self,
        project: &'a str,
    ) -> BoxFuture<'a, Result<Vec<u64>, ProviderError>> {
        let _ = project;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Carry out one change. One idempotent attempt: run again after a crash, it finishes
    /// the work without creating a second copy. `desired` is the whole state, for clients
    /// that create several of their resources in one call (a Neon project with its
    /// database).
    fn apply<'a>(
        &'a self,
        scope: &'a Scope,
        change: Change<'a>,
        inputs: &'a Inputs,
        desired: &'a DesiredState,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>>;

    /// Fetch an output of one of this provider's resources (a connection string) on demand.
    /// The value is never stored by Telbase.
    fn output<'a>(
        &'a self,
        scope: &'a Scope,
        resource: &'a Resource,
        output: Output,
    ) -> BoxFuture<'a, Result<SecretString, ProviderError>>;
}

/// The providers a run can use, by `model::Provider`.
pub type Registry = BTreeMap<crate::model::Provider, Arc<dyn Provider>>;

/// Where provider credentials and addresses come from.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The emulator's base URL (`--emulator`, `TELBASE_EMULATOR`): every provider goes there.
    pub emulator: Option<String>,
    pub vercel_token: Option<SecretString>,
    pub vercel_team_id: Option<String>,
    pub neon_api_key: Option<SecretString>,
    pub turso_api_token: Option<SecretString>,
    /// The Turso organization slug (`TURSO_ORG`).
    pub turso_org: Option<String>,
    pub cloudflare_api_token: Option<SecretString>,
    /// The Cloudflare account that holds Access applications and policies.
    pub cloudflare_account_id: Option<String>,
    /// The Google Cloud project (`GOOGLE_CLOUD_PROJECT`, else the key file's `project_id`).
    pub google_project: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("emulator", &self.emulator)
            .field("vercel_token", &self.vercel_token.as_ref().map(|_| "[set]"))
            .field("vercel_team_id", &self.vercel_team_id)
            .field("neon_api_key", &self.neon_api_key.as_ref().map(|_| "[set]"))
            .field(
                "turso_api_token",
                &self.turso_api_token.as_ref().map(|_| "[set]"),
            )
            .field("turso_org", &self.turso_org)
            .field(
                "cloudflare_api_token",
                &self.cloudflare_api_token.as_ref().map(|_| "[set]"),
            )
            .field("cloudflare_account_id", &self.cloudflare_account_id)
            .field("google_project", &self.google_project)
            .finish()
    }
}

/// Why a provider could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error(
        "{provider} needs credentials: set {vars}, or point Telbase at the built-in emulator with --emulator URL or TELBASE_EMULATOR (start one with `telbase emulate`)"
    )]
    Missing {
        provider: &'static str,
        vars: &'static str,
    },
    /// Credentials are set but unusable (an unreadable key file, a malformed value).
    #[error("{provider}: {message}")]
    Invalid {
        provider: &'static str,
        message: String,
    },
    #[error(transparent)]
    Endpoint(#[from] http::EndpointError),
}

impl Credentials {
    /// From the conventional variables: `VERCEL_TOKEN`, `VERCEL_TEAM_ID`, `NEON_API_KEY`,
    /// `TURSO_API_TOKEN`, `TURSO_ORG`, `CLOUDFLARE_API_TOKEN`, `CLOUDFLARE_ACCOUNT_ID`,
    /// `GOOGLE_CLOUD_PROJECT` (or `CLOUDSDK_CORE_PROJECT`, as gcloud sets it),
    /// `TELBASE_EMULATOR`. Empty values count as unset. Google credentials themselves are
    /// found by `google::auth` (Application Default Credentials).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Credentials {
            emulator: var("TELBASE_EMULATOR"),
            vercel_token: var("VERCEL_TOKEN").map(SecretString::from),
            vercel_team_id: var("VERCEL_TEAM_ID"),
            neon_api_key: var("NEON_API_KEY").map(SecretString::from),
            turso_api_token: var("TURSO_API_TOKEN").map(SecretString::from),
            turso_org: var("TURSO_ORG"),
            cloudflare_api_token: var("CLOUDFLARE_API_TOKEN").map(SecretString::from),
            cloudflare_account_id: var("CLOUDFLARE_ACCOUNT_ID"),
            google_project: var("GOOGLE_CLOUD_PROJECT").or_else(|| var("CLOUDSDK_CORE_PROJECT")),
        }
    }

    /// The endpoint of one provider: the emulator's prefix when an emulator is set, else
    /// the real API with the provider's token.
    pub fn endpoint(&self, provider: crate::model::Provider) -> Result<http::Endpoint, SetupError> {
        use crate::model::Provider as P;
        let (real, token, vars, team): (&str, &Option<SecretString>, &'static str, _) =
            match provider {
                P::Vercel => (
                    "https://api.vercel.com",
                    &self.vercel_token,
                    "VERCEL_TOKEN (and VERCEL_TEAM_ID for a team)",
                    self.vercel_team_id.clone(),
                ),
                P::Neon => (
                    "https://console.neon.tech/api/v2",
                    &self.neon_api_key,
                    "NEON_API_KEY",
                    None,
                ),
                P::Turso => (
                    "https://api.turso.tech",
                    &self.turso_api_token,
                    "TURSO_API_TOKEN and TURSO_ORG",
                    None,
                ),
                P::Cloudflare => (
                    "https://api.cloudflare.com/client/v4",
                    &self.cloudflare_api_token,
                    "CLOUDFLARE_API_TOKEN and CLOUDFLARE_ACCOUNT_ID",
                    None,
                ),
                // Google's APIs take short-lived OAuth2 tokens from Application Default
                // Credentials rather than a token variable.
                P::CloudRun | P::SecretManager | P::CloudSql => {
                    if self.emulator.is_none() {
                        return google::endpoint(provider);
                    }
                    ("", &None, "", None)
                }
            };
        let always_query = team
            .map(|t| vec![("teamId".to_owned(), t)])
            .unwrap_or_default();
        if let Some(emu) = &self.emulator {
            // Real tokens never go to the emulator.
            let token = SecretString::from(crate::emulator::EMULATOR_TOKEN);
            let base = format!(
                "{}{}",
                emu.trim_end_matches('/'),
                crate::emulator::prefix(provider)
            );
            return Ok(http::Endpoint::new(provider, &base, token, always_query)?);
        }
        let token = token.clone().ok_or(SetupError::Missing {
            provider: provider.as_str(),
            vars,
        })?;
        Ok(http::Endpoint::new(provider, real, token, always_query)?)
    }
}

/// The clients a desired state needs, or the first reason one cannot be set up.
pub fn registry_for(
    state: &DesiredState,
    creds: &Credentials,
    http: &http::Http,
) -> Result<Registry, SetupError> {
    use crate::model::Provider as P;
    let mut reg: Registry = BTreeMap::new();
    let needed: std::collections::BTreeSet<P> =
        state.resources.keys().map(|k| k.provider()).collect();
    for p in needed {
        let client: Arc<dyn Provider> = match p {
            P::Vercel => Arc::new(vercel::Vercel::new(http.clone(), creds.endpoint(p)?)),
            P::Neon => Arc::new(neon::Neon::new(http.clone(), creds.endpoint(p)?)),
            P::Turso => Arc::new(turso::Turso::new(http.clone(), creds.endpoint(p)?, creds)?),
            P::Cloudflare => Arc::new(cloudflare::Cloudflare::new(
                http.clone(),
                creds.endpoint(p)?,
                creds,
            )?),
            P::CloudRun => Arc::new(google::CloudRun::new(
                http.clone(),
                creds.endpoint(p)?,
                creds,
            )?),
            P::SecretManager => Arc::new(google::SecretManager::new(
                http.clone(),
                creds.endpoint(p)?,
                creds,
            )?),
            P::CloudSql => Arc::new(google::CloudSql::new(
                http.clone(),
                creds.endpoint(p)?,
                creds,
            )?),
        };
        reg.insert(p, client);
    }
    Ok(reg)
}
