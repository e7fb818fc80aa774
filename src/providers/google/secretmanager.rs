//! Secret Manager v1: one secret per `Kind::Secret` resource (a Cloud Run service's secret
//! env value, a Cloud SQL user's generated password), its value in versions.
//!
//! A write adds a version with the value resolved at apply time, then disables the older
//! enabled versions, then records the value's source in the `telbase-source` annotation:
//! observe compares that and never reads a value. A generated value (`EnvSource::Generated`)
//! is written once: a secret that already has an enabled version is never given another, so
//! a re-apply or a retry after a crash cannot rotate a password the database already uses.
//! `output` reads `versions/latest:access` on demand; the value is never stored.
//!
//! The endpoint's base is the API root without a version
//! (`https://secretmanager.googleapis.com`, or the emulator's `/secret-manager`): paths here
//! start with `/v1/`.

use base64::Engine as _;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::ops::{self, ANNOTATION_ENV, ANNOTATION_SOURCE};
use super::project;
use crate::model::{
    self, DesiredState, EnvSource, Kind, Observed, Output, Resource, ResourceKey, ResourceSpec,
    Secret,
};
use crate::providers::http::{Call, Endpoint, Http, Retry};
use crate::providers::{
    Applied, BoxFuture, Change, Credentials, ErrorKind, Inputs, Provider, ProviderError, Scope,
    SetupError,
};

const P: model::Provider = model::Provider::SecretManager;

/// What observe reports for a secret with no enabled version: nothing can read it, so the
/// plan writes it again.
const NO_VERSION: &str = "(no enabled version)";

pub struct SecretManager {
    http: Http,
    ep: Endpoint,
    project: String,
}

impl SecretManager {
    pub fn new(http: Http, ep: Endpoint, creds: &Credentials) -> Result<Self, SetupError> {
        Ok(SecretManager {
            http,
            ep,
            project: project(P, creds)?,
        })
    }

    /// A client for `project` (the Cloud SQL client reads generated passwords through one).
    pub(crate) fn for_project(http: Http, ep: Endpoint, project: String) -> Self {
        SecretManager { http, ep, project }
    }

    fn secret_path(&self, id: &str) -> String {
        format!("/v1/projects/{}/secrets/{id}", self.project)
    }

    fn check_id(what: &str, id: &str) -> Result<(), ProviderError> {
        if ops::valid_secret_id(id) {
            Ok(())
        } else {
            Err(ops::err(
                P,
                ErrorKind::Permanent,
                what,
                format!(
                    "`{id}` is not a valid secret id (letters, digits, `_` and `-`, at most 255)"
                ),
            ))
        }
    }

    async fn get_secret(&self, id: &str) -> Result<Option<Value>, ProviderError> {
        let call = Call::get(self.secret_path(id), format!("read secret {id}"));
        match self.http.json(&self.ep, &call).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_owned(&self, scope: &Scope) -> Result<Vec<Value>, ProviderError> {
        let filter = ops::label_terms(scope)
            .iter()
            .map(|(k, v)| format!("labels.{k}={v}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let call = Call::get(
            format!("/v1/projects/{}/secrets", self.project),
            "list secrets",
        )
        .query("filter", filter)
        .query("pageSize", "100");
        let all = ops::list(&self.http, &self.ep, call, "secrets").await?;
        Ok(all
            .into_iter()
            .filter(|s| {
                let id = ops::last_segment(s.get("name").and_then(Value::as_str).unwrap_or(""));
                ops::owned(s.get("labels"), id, scope)
            })
            .collect())
    }

    /// The enabled versions of a secret, newest first.
    async fn enabled_versions(&self, id: &str) -> Result<Vec<Value>, ProviderError> {
        let call = Call::get(
            format!("{}/versions", self.secret_path(id)),
            format!("list versions of secret {id}"),
        )
        .query("filter", "state:ENABLED")
        .query("pageSize", "100");
        let all = ops::list(&self.http, &self.ep, call, "versions").await?;
        let mut enabled: Vec<Value> = all
            .into_iter()
            .filter(|v| v.get("state").and_then(Value::as_str) == Some("ENABLED"))
            .collect();
        enabled.sort_by_key(|v| std::cmp::Reverse(version_number(v)));
        Ok(enabled)
    }

    /// The owned secret `id`, created (with its marks and source annotation) if missing.
    async fn ensure_secret(
        &self,
        scope: &Scope,
        id: &str,
        spec: &Secret,
    ) -> Result<Value, ProviderError> {
        let what = format!("create secret {id}");
        if let Some(existing) = self.get_secret(id).await? {
            if !ops::owned(existing.get("labels"), id, scope) {
                return Err(ops::foreign(P, &what, "secret", id));
            }
            return Ok(existing);
        }
        let body = json!({
            "replication": {"automatic": {}},
            "labels": ops::labels(scope),
            "annotations": annotations(spec),
        });
        let call = Call::new(
            Method::POST,
            format!("/v1/projects/{}/secrets", self.project),
            what.clone(),
        )
        .query("secretId", id)
        .json(body)
        // A second create of the same id is refused (409), handled below: no duplicate.
        .retry(Retry::Always);
        match self.http.json(&self.ep, &call).await {
            Ok(v) => Ok(v),
            Err(e) if e.kind == ErrorKind::Conflict => match self.get_secret(id).await? {
                Some(s) if ops::owned(s.get("labels"), id, scope) => Ok(s),
                _ => Err(ops::foreign(P, &what, "secret", id)),
            },
            Err(e) => Err(e),
        }
    }

    async fn add_version(&self, id: &str, value: &SecretString) -> Result<Value, ProviderError> {
        let data = base64::engine::general_purpose::STANDARD.encode(value.expose_secret());
        let call = Call::new(
            Method::POST,
            format!("{}:addVersion", self.secret_path(id)),
            format!("add a version to secret {id}"),
        )
        .json(json!({"payload": {"data": data}}));
        // Not retried blindly: a second add is a second version. An ambiguous failure is
        // resolved by the next run, which sees the source annotation still differ.
        self.http.json(&self.ep, &call).await
    }

    async fn disable_version(&self, id: &str, version: &Value) -> Result<(), ProviderError> {
        let n = version_number(version);
        let call = Call::new(
            Method::POST,
            format!("{}/versions/{n}:disable", self.secret_path(id)),
            format!("disable version {n} of secret {id}"),
        )
        .json(json!({}))
        // Disabling twice leaves it disabled.
        .retry(Retry::Always);
        self.http.send(&self.ep, &call).await.map(drop)
    }

    async fn set_annotations(&self, id: &str, spec: &Secret) -> Result<(), ProviderError> {
        let call = Call::new(
            Method::PATCH,
            self.secret_path(id),
            format!("record the source of secret {id}"),
        )
        .query("updateMask", "annotations")
        .json(json!({"annotations": annotations(spec)}))
        .retry(Retry::Always);
        self.http.send(&self.ep, &call).await.map(drop)
    }

    async fn write(
        &self,
        scope: &Scope,
        res: &Resource,
        spec: &Secret,
        inputs: &Inputs,
        update: bool,
    ) -> Result<Applied, ProviderError> {
        let id = res.key.name.as_str();
        let what = format!("write secret {id}");
        Self::check_id(&what, id)?;
        let secret = self.ensure_secret(scope, id, spec).await?;
        let enabled = self.enabled_versions(id).await?;
        let recorded = secret
            .pointer(&format!("/annotations/{ANNOTATION_SOURCE}"))
            .and_then(Value::as_str);
        let wanted = ops::source_text(&spec.source);
        let add = match spec.source {
            // Generated once; never rotated by a later apply or a retry.
            EnvSource::Generated => enabled.is_empty(),
            _ => update || enabled.is_empty() || recorded != wanted.as_deref(),
        };
        if add {
            let value = match &spec.source {
                EnvSource::Plain(v) => SecretString::from(v.as_str()),
                _ => inputs.env.get(spec.env.as_str()).cloned().ok_or_else(|| {
                    ops::err(
                        P,
                        ErrorKind::Permanent,
                        &what,
                        "its value was not resolved before apply",
                    )
                })?,
            };
            let added = self.add_version(id, &value).await?;
            let newest = version_number(&added);
            for old in enabled.iter().filter(|v| version_number(v) != newest) {
                self.disable_version(id, old).await?;
            }
        }
        let env_recorded = secret
            .pointer(&format!("/annotations/{ANNOTATION_ENV}"))
            .and_then(Value::as_str);
        if recorded != wanted.as_deref() || env_recorded != Some(spec.env.as_str()) {
            self.set_annotations(id, spec).await?;
        }
        Ok(Applied {
            provider_id: secret
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(id)
                .to_owned(),
            url: None,
        })
    }

    async fn delete(&self, id: &str) -> Result<Applied, ProviderError> {
        let call = Call::new(
            Method::DELETE,
            self.secret_path(id),
            format!("delete secret {id}"),
        );
        match self.http.send(&self.ep, &call).await {
            Ok(_) => Ok(Applied::default()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(Applied::default()),
            Err(e) => Err(e),
        }
    }

    async fn observe_all(&self, scope: &Scope) -> Result<Vec<Observed>, ProviderError> {
        let mut out = Vec::new();
        for s in self.list_owned(scope).await? {
            let name = s.get("name").and_then(Value::as_str).unwrap_or("");
            let id = ops::last_segment(name).to_owned();
            let enabled = self.enabled_versions(&id).await?;
            let note = |k: &str| {
                s.pointer(&format!("/annotations/{k}"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let source = if enabled.is_empty() {
                EnvSource::Plain(NO_VERSION.into())
            } else {
                note(ANNOTATION_SOURCE)
                    .and_then(|t| ops::parse_source(&t))
                    .unwrap_or_else(|| EnvSource::Plain("(value not written by Telbase)".into()))
            };
            out.push(Observed {
                key: ResourceKey::new(Kind::Secret, id.clone()),
                spec: ResourceSpec::Secret(Secret {
                    env: note(ANNOTATION_ENV).unwrap_or_default().into(),
                    source,
                }),
                provider_id: name.to_owned(),
                deletion_allowed: false,
            });
        }
        Ok(out)
    }

    async fn apply_change(
        &self,
        scope: &Scope,
        change: Change<'_>,
        inputs: &Inputs,
    ) -> Result<Applied, ProviderError> {
        match change {
            Change::Create { desired } => match &desired.spec {
                ResourceSpec::Secret(s) => self.write(scope, desired, s, inputs, false).await,
                _ => Err(unsupported(&desired.key)),
            },
            // A secret's only setting is its value; replacing means writing a new version.
            Change::Update { desired, .. } | Change::Replace { desired, .. } => {
                match &desired.spec {
                    ResourceSpec::Secret(s) => self.write(scope, desired, s, inputs, true).await,
                    _ => Err(unsupported(&desired.key)),
                }
            }
            Change::Delete { observed } => self.delete(&observed.key.name).await,
        }
    }

    /// The latest version's value.
    pub(crate) async fn access_latest(&self, id: &str) -> Result<SecretString, ProviderError> {
        let what = format!("read secret {id}");
        let call = Call::get(
            format!("{}/versions/latest:access", self.secret_path(id)),
            &what,
        );
        let v = self.http.json(&self.ep, &call).await?;
        let data = v
            .pointer("/payload/data")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ops::err(
                    P,
                    ErrorKind::Transient,
                    &what,
                    "the response has no payload",
                )
            })?;
        let bytes = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| {
                    ops::err(P, ErrorKind::Transient, &what, "the payload is not base64")
                })?,
        );
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            ops::err(
                P,
                ErrorKind::Permanent,
                &what,
                "the value is not UTF-8 text",
            )
        })?;
        Ok(SecretString::from(text.to_owned()))
    }
}

fn annotations(spec: &Secret) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(ANNOTATION_ENV.into(), json!(spec.env));
    if let Some(s) = ops::source_text(&spec.source) {
        m.insert(ANNOTATION_SOURCE.into(), json!(s));
    }
    Value::Object(m)
}

/// A version's number, from its name `…/versions/<n>`.
fn version_number(v: &Value) -> u64 {
    v.get("name")
        .and_then(Value::as_str)
        .map(ops::last_segment)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn unsupported(key: &ResourceKey) -> ProviderError {
    ops::err(
        P,
        ErrorKind::Permanent,
        &format!("change {key}"),
        "not a Secret Manager resource",
    )
}

impl Provider for SecretManager {
    fn provider(&self) -> model::Provider {
        P
    }

    fn observe<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<Observed>, ProviderError>> {
        Box::pin(self.observe_all(scope))
    }

    fn apply<'a>(
        &'a self,
        scope: &'a Scope,
        change: Change<'a>,
        inputs: &'a Inputs,
        _desired: &'a DesiredState,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(self.apply_change(scope, change, inputs))
    }

    /// Every output of a secret is its value (a Cloud SQL password, a connection string).
    fn output<'a>(
        &'a self,
        _scope: &'a Scope,
        resource: &'a Resource,
        _output: Output,
    ) -> BoxFuture<'a, Result<SecretString, ProviderError>> {
        Box::pin(async move {
            Self::check_id(
                &format!("read secret {}", resource.key.name),
                &resource.key.name,
            )?;
            self.access_latest(&resource.key.name).await
        })
    }
}
