//! Turso (Platform API): groups and databases of one organization, per-preview databases
//! seeded from their parent, and database URLs and short-lived tokens minted on demand.
//!
//! SKELETON: being built; every call refuses until it is.

use secrecy::SecretString;

use super::http::{Endpoint, Http};
use super::{
    Applied, BoxFuture, Change, Credentials, ErrorKind, Inputs, Provider, ProviderError, Scope,
    SetupError,
};
use crate::model::{self, DesiredState, Observed, Output, Resource};

const P: model::Provider = model::Provider::Turso;

pub struct Turso {
    #[allow(dead_code)]
    http: Http,
    #[allow(dead_code)]
    ep: Endpoint,
    #[allow(dead_code)]
    org: String,
}

impl Turso {
    pub fn new(http: Http, ep: Endpoint, creds: &Credentials) -> Result<Self, SetupError> {
        let org = match (&creds.turso_org, &creds.emulator) {
            (Some(o), _) => o.clone(),
            (None, Some(_)) => "telbase-emulator".into(),
            (None, None) => {
                return Err(SetupError::Missing {
                    provider: P.as_str(),
                    vars: "TURSO_ORG",
                });
            }
        };
        Ok(Turso { http, ep, org })
    }
}

fn not_built(what: String) -> ProviderError {
    ProviderError::new(
        P,
        ErrorKind::Permanent,
        what,
        None,
        "not built yet",
        None,
        None,
    )
}

impl Provider for Turso {
    fn provider(&self) -> model::Provider {
        P
    }

    fn observe<'a>(
        &'a self,
        _scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<Observed>, ProviderError>> {
        Box::pin(async { Err(not_built("observe".into())) })
    }

    fn apply<'a>(
        &'a self,
        _scope: &'a Scope,
        change: Change<'a>,
        _inputs: &'a Inputs,
        _desired: &'a DesiredState,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(async move { Err(not_built(format!("apply {}", change.key()))) })
    }

    fn output<'a>(
        &'a self,
        _scope: &'a Scope,
        resource: &'a Resource,
        _output: Output,
    ) -> BoxFuture<'a, Result<SecretString, ProviderError>> {
        Box::pin(async move { Err(not_built(format!("output of {}", resource.key))) })
    }
}
