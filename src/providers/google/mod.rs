//! Google Cloud: Cloud Run (Admin API v2, domain mappings on v1), Secret Manager and Cloud
//! SQL (Admin API v1), sharing Application Default Credentials (`auth`) and long-running
//! operation handling.
//!
//! SKELETON: being built; every call refuses until it is.

pub mod auth;

use secrecy::SecretString;

use super::http::{Endpoint, Http};
use super::{
    Applied, BoxFuture, Change, Credentials, ErrorKind, Inputs, Provider, ProviderError, Scope,
    SetupError,
};
use crate::model::{self, DesiredState, Observed, Output, Resource};

/// The real endpoint of one Google API, authenticated by Application Default Credentials.
pub fn endpoint(provider: model::Provider) -> Result<Endpoint, SetupError> {
    Err(SetupError::Missing {
        provider: provider.as_str(),
        vars: "GOOGLE_APPLICATION_CREDENTIALS (Google auth is being built)",
    })
}

/// The Google Cloud project every call acts in.
fn project(p: model::Provider, creds: &Credentials) -> Result<String, SetupError> {
    match (&creds.google_project, &creds.emulator) {
        (Some(id), _) => Ok(id.clone()),
        (None, Some(_)) => Ok("telbase-emulator".into()),
        (None, None) => Err(SetupError::Missing {
            provider: p.as_str(),
            vars: "GOOGLE_CLOUD_PROJECT",
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
skeleton!(CloudSql, model::Provider::CloudSql);
