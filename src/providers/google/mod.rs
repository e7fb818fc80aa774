//! Google Cloud: Cloud Run (Admin API v2, domain mappings on v1), Secret Manager and Cloud
//! SQL (Admin API v1), sharing Application Default Credentials (`auth`) and long-running
//! operation handling; keyless workload identity federation lives in `external`.
//!
//! Cloud Run lives in `cloudrun`, Secret Manager in `secretmanager`, Cloud SQL in
//! `cloudsql`; labels, source annotations and operation polling they share in `ops`.

pub mod auth;
mod cloudrun;
pub mod cloudsql;
pub mod external;
pub mod ops;
mod secretmanager;

pub use cloudrun::CloudRun;
pub use cloudsql::CloudSql;
pub use secretmanager::SecretManager;

use super::Credentials;
use super::SetupError;
use super::http::Endpoint;
use crate::model;

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
                vars: "GOOGLE_CLOUD_PROJECT (or a service-account key with project_id in GOOGLE_APPLICATION_CREDENTIALS, or TELBASE_GOOGLE_SERVICE_ACCOUNT NAME@PROJECT_ID.iam.gserviceaccount.com)",
            }),
    }
}
