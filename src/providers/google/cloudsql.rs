//! Cloud SQL Admin API v1: instances, databases and users.
//!
//! SKELETON: being built; every call refuses until it is.

use secrecy::SecretString;

use super::project;
use crate::model::{self, DesiredState, Observed, Output, Resource};
use crate::providers::http::{Endpoint, Http};
use crate::providers::{
    Applied, BoxFuture, Change, Credentials, ErrorKind, Inputs, Provider, ProviderError, Scope,
    SetupError,
};

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

skeleton!(CloudSql, model::Provider::CloudSql);
