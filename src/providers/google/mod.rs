//! Google Cloud: Cloud Run (Admin API v2, domain mappings on v1), Secret Manager and Cloud
//! SQL (Admin API v1), sharing Application Default Credentials (`auth`) and long-running
//! operation handling.
//!
//! SKELETON: being built; every call refuses until it is.

pub mod auth;
pub mod cloudsql;

pub use cloudsql::CloudSql;

use secrecy::SecretString;

use super::http::{Endpoint, Http};
use super::{
    Applied, BoxFuture, Change, Credentials, ErrorKind, Inputs, Provider, ProviderError, Scope,
    SetupError,
};
use crate::model::{self, DesiredState, Observed, Output, Resource};

/// The real base URL of one Google API.
pub fn base_url(provider: model::Provider) -> &'static str {
    match provider {
        model::Provider::CloudRun => "https://run.googleapis.com",
        model::Provider::SecretManager => "https://secretmanager.googleapis.com",
        _ => "https://sqladmin.googleapis.com",
    }
}

/// The real endpoint of one Google API, authenticated by Application Default Credentials.
/// The three Google clients share one credential source and so one cached token.
pub fn endpoint(provider: model::Provider) -> Result<Endpoint, SetupError> {
    endpoint_with(provider, auth::shared()?)
}

/// The real endpoint of one Google API with the given credentials.
pub fn endpoint_with(
    provider: model::Provider,
    adc: std::sync::Arc<auth::Adc>,
) -> Result<Endpoint, SetupError> {
    let quota = adc
        .quota_project()
        .map(|q| vec![("$userProject".to_owned(), q.to_owned())])
        .unwrap_or_default();
    let tokens = std::sync::Arc::new(auth::ProviderTokens { adc, provider });
    Ok(Endpoint::with_token_source(
        provider,
        base_url(provider),
        tokens,
        quota,
    )?)
}

/// The Google Cloud project every call acts in: `GOOGLE_CLOUD_PROJECT` (or gcloud's
/// `CLOUDSDK_CORE_PROJECT`), else the credentials file's `project_id`.
pub(crate) fn project(p: model::Provider, creds: &Credentials) -> Result<String, SetupError> {
    match (&creds.google_project, &creds.emulator) {
        (Some(id), _) => Ok(id.clone()),
        (None, Some(_)) => Ok("telbase-emulator".into()),
        (None, None) => auth::shared()?
            .project_id()
            .map(str::to_owned)
            .ok_or(SetupError::Missing {
                provider: p.as_str(),
                vars: "GOOGLE_CLOUD_PROJECT (or a service-account key with project_id in GOOGLE_APPLICATION_CREDENTIALS)",
            }),
    }
}

macro_rules! skeleton {
    ($name:ident, $p:expr) => {
        pub struct $name {
            #[allow(dead_code)]
            http: Http,
            #[allow(dead_code)]
            ep: Endpoint,
            #[allow(dead_code)]
            project: String,
        }

        impl $name {
            pub fn new(http: Http, ep: Endpoint, creds: &Credentials) -> Result<Self, SetupError> {
                Ok($name {
                    http,
                    ep,
                    project: project($p, creds)?,
                })
            }
        }

        impl Provider for $name {
            fn provider(&self) -> model::Provider {
                $p
            }

            fn observe<'a>(
                &'a self,
                _scope: &'a Scope,
            ) -> BoxFuture<'a, Result<Vec<Observed>, ProviderError>> {
                Box::pin(async { Err(not_built($p, "observe".into())) })
            }

            fn apply<'a>(
                &'a self,
                _scope: &'a Scope,
                change: Change<'a>,
                _inputs: &'a Inputs,
                _desired: &'a DesiredState,
            ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
                Box::pin(async move { Err(not_built($p, format!("apply {}", change.key()))) })
            }

            fn output<'a>(
                &'a self,
                _scope: &'a Scope,
                resource: &'a Resource,
                _output: Output,
            ) -> BoxFuture<'a, Result<SecretString, ProviderError>> {
                Box::pin(async move { Err(not_built($p, format!("output of {}", resource.key))) })
            }
        }
    };
}

fn not_built(p: model::Provider, what: String) -> ProviderError {
    ProviderError::new(
        p,
        ErrorKind::Permanent,
        what,
        None,
        "not built yet",
        None,
        None,
    )
}

skeleton!(CloudRun, model::Provider::CloudRun);
skeleton!(SecretManager, model::Provider::SecretManager);
