//! Google Cloud: Cloud Run (Admin API v2, domain mappings on v1), Secret Manager and Cloud
//! SQL (Admin API v1), sharing Application Default Credentials (`auth`) and long-running
//! operation handling.
//!
//! Cloud Run lives in `cloudrun`, Secret Manager in `secretmanager`, Cloud SQL in
//! `cloudsql`; labels, source annotations and operation polling they share in `ops`.

pub mod auth;
mod cloudrun;
mod cloudsql;
pub mod ops;
mod secretmanager;

pub use cloudrun::CloudRun;
pub use cloudsql::CloudSql;
pub use secretmanager::SecretManager;

use super::Credentials;
use super::SetupError;
use super::http::Endpoint;
use crate::model;

/// The real endpoint of one Google API, authenticated by Application Default Credentials.
pub fn endpoint(provider: model::Provider) -> Result<Endpoint, SetupError> {
    Err(SetupError::Missing {
        provider: provider.as_str(),
        vars: "GOOGLE_APPLICATION_CREDENTIALS (Google auth is being built)",
    })
}

/// The Google Cloud project every call acts in.
pub(crate) fn project(p: model::Provider, creds: &Credentials) -> Result<String, SetupError> {
    match (&creds.google_project, &creds.emulator) {
        (Some(id), _) => Ok(id.clone()),
        (None, Some(_)) => Ok("telbase-emulator".into()),
        (None, None) => Err(SetupError::Missing {
            provider: p.as_str(),
            vars: "GOOGLE_CLOUD_PROJECT",
        }),
    }
}
