//! Cloud SQL (Admin API v1): a Postgres instance per database (tier, region, version,
//! deletion protection, daily backups with point-in-time recovery, TLS required), the
//! application's database and its user, and the connection string composed on demand.
//! Wire shapes follow ../shared/provider-apis/gcp-cloud-sql/sqladmin.v1.discovery.json.
//!
//! Ownership: the instance name carries the project prefix, and `settings.userLabels` say
//! `telbase-project`/`telbase-environment` (set in the create call). The labels also record
//! which database and user on the instance are ours (`telbase-database`, `telbase-user`),
//! whether data loss is allowed, and the disk size we asked for: storage grows by itself
//! (`storageAutoResize`), and that growth is not drift. Databases and users are observed only
//! inside owned instances.
//!
//! Every mutation returns an `Operation`, awaited through `operations.get`; an instance
//! accepts one operation at a time, so each change first waits for any still running (after
//! a crash, the create we sent last time may still be going). Creates are idempotent by
//! name: Cloud SQL refuses a second instance, database or user of the same name, so we look
//! before creating and treat "already exists" as a reason to look again.
//!
//! The password is never read from Cloud SQL (it cannot be): the user is created with the
//! value the executor resolved from Secret Manager (`Inputs.env["password"]`), and
//! connection strings read it from Secret Manager again, on demand. Cloud Run does not use
//! the public-address URL: it mounts the instance's `connectionName` through the Cloud SQL
//! volume, and its secrets get the socket form of the URL (`Output::SocketUrl`).

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use super::super::http::{Call, Endpoint, Http};
use super::super::owner;
use super::super::vercel::enc;
use super::super::{
    Applied, BoxFuture, Change, Credentials, ErrorKind, Inputs, Provider, ProviderError, Scope,
    SetupError,
};
use crate::model::{
    self, CloudSqlInstance, CloudSqlUser, DesiredState, Kind, NamedDatabase, Observed, Output,
    Resource, ResourceKey, ResourceSpec,
};

const P: model::Provider = model::Provider::CloudSql;

pub const LABEL_PROJECT: &str = "telbase-project";
pub const LABEL_ENVIRONMENT: &str = "telbase-environment";
pub const LABEL_DELETION: &str = "telbase-deletion-allowed";
pub const LABEL_DATABASE: &str = "telbase-database";
pub const LABEL_USER: &str = "telbase-user";
pub const LABEL_DISK: &str = "telbase-disk-gb";

/// TLS for every connection, without requiring client certificates (the connectors and
/// `sslmode=require` clients both work).
const SSL_MODE: &str = "ENCRYPTED_ONLY";

/// Postgres creates this database and user with every instance; never ours.
const SYSTEM_NAME: &str = "postgres";

pub struct CloudSql {
    http: Http,
    ep: Endpoint,
    project: String,
    /// Secret Manager, for the password in connection strings.
    secrets: super::SecretManager,
}

fn err(kind: ErrorKind, what: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::new(P, kind, what, None, message, None, None)
}

fn s(v: &Value, ptr: &str) -> Option<String> {
    v.pointer(ptr).and_then(Value::as_str).map(str::to_owned)
}

/// A label value as Google accepts it: lowercase letters, digits, `-` and `_`, at most 63.
pub fn label_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

fn labels(v: &Value) -> Map<String, Value> {
    v.pointer("/settings/userLabels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn label(v: &Value, key: &str) -> Option<String> {
    labels(v)
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Whether TLS is required by the instance's settings, by either spelling.
fn ssl_required(v: &Value) -> bool {
    matches!(
        s(v, "/settings/ipConfiguration/sslMode").as_deref(),
        Some("ENCRYPTED_ONLY" | "TRUSTED_CLIENT_CERTIFICATE_REQUIRED")
    ) || v.pointer("/settings/ipConfiguration/requireSsl") == Some(&json!(true))
}

fn disk_gb(v: &Value) -> u32 {
    match v.pointer("/settings/dataDiskSizeGb") {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0) as u32,
        _ => 0,
    }
}

/// The instance as a spec. The disk size is the one we asked for while the real disk is at
/// least that big: automatic growth is not a change anyone should be shown.
fn instance_spec(v: &Value) -> CloudSqlInstance {
    let actual = disk_gb(v);
    let asked = label(v, LABEL_DISK).and_then(|d| d.parse::<u32>().ok());
    CloudSqlInstance {
        region: s(v, "/region").unwrap_or_default().into(),
        database_version: s(v, "/databaseVersion").unwrap_or_default().into(),
        tier: s(v, "/settings/tier").unwrap_or_default().into(),
        disk_gb: match asked {
            Some(a) if actual >= a => a,
            _ => actual,
        },
        deletion_protection: v.pointer("/settings/deletionProtectionEnabled") == Some(&json!(true)),
        backups: v.pointer("/settings/backupConfiguration/enabled") == Some(&json!(true)),
        ssl_required: ssl_required(v),
    }
}

/// Percent-encode for the userinfo and path parts of a URL.
fn url_part(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The edition a tier belongs to: the shared-core and custom tiers are Enterprise, and new
/// Postgres instances default to Enterprise Plus, which refuses them.
fn edition(tier: &str) -> &'static str {
    if tier.starts_with("db-perf-optimized") {
        "ENTERPRISE_PLUS"
    } else {
        "ENTERPRISE"
    }
}

fn unsupported(key: &ResourceKey) -> ProviderError {
    err(
        ErrorKind::Permanent,
        &format!("change {key}"),
        "not a Cloud SQL resource",
    )
}

impl CloudSql {
    pub fn new(http: Http, ep: Endpoint, creds: &Credentials) -> Result<Self, SetupError> {
        let secrets = super::SecretManager::new(
            http.clone(),
            creds.endpoint(model::Provider::SecretManager)?,
            creds,
        )?;
        Ok(CloudSql {
            http,
            ep,
            project: super::project(P, creds)?,
            secrets,
        })
    }

    /// Read passwords from this Secret Manager endpoint instead (tests).
    pub fn with_secrets(mut self, secrets: Endpoint) -> Self {
        self.secrets =
            super::SecretManager::for_project(self.http.clone(), secrets, self.project.clone());
        self
    }

    fn base(&self) -> String {
        format!("/v1/projects/{}", enc(&self.project))
    }

    fn instance_path(&self, name: &str) -> String {
        format!("{}/instances/{}", self.base(), enc(name))
    }

    /// Every item of a Google list, following `nextPageToken`. An empty list comes without
    /// `items` at all (Google omits empty repeated fields), which is not an error.
    async fn list(&self, call: Call) -> Result<Vec<Value>, ProviderError> {
        let mut out = Vec::new();
        let mut call = call;
        let base_query = call.query.clone();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let resp = self.http.json(&self.ep, &call).await?;
            if !resp.is_object() {
                return Err(err(
                    ErrorKind::Transient,
                    &call.what,
                    "the response is not a JSON object",
                ));
            }
            if let Some(items) = resp.get("items") {
                let items = items.as_array().ok_or_else(|| {
                    err(ErrorKind::Transient, &call.what, "`items` is not a list")
                })?;
                out.extend(items.iter().cloned());
            }
            match s(&resp, "/nextPageToken").filter(|t| !t.is_empty()) {
                Some(t) if seen.insert(t.clone()) => {
                    call.query = base_query.clone();
                    call.query.push(("pageToken".into(), t));
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn get_instance(&self, name: &str) -> Result<Option<Value>, ProviderError> {
        let call = Call::get(self.instance_path(name), format!("read instance {name}"));
        match self.http.json(&self.ep, &call).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether an instance carries this scope's marks.
    fn owned(scope: &Scope, v: &Value) -> bool {
        let name = s(v, "/name").unwrap_or_default();
        owner::has_prefix(&scope.project, &name)
            && label(v, LABEL_PROJECT) == Some(label_value(&scope.project))
            && label(v, LABEL_ENVIRONMENT)
                == Some(label_value(&owner::environment_label(scope.environment)))
    }

    /// The instance if it is ours; an error if someone else's stands under the name.
    async fn owned_instance(
        &self,
        scope: &Scope,
        name: &str,
        what: &str,
    ) -> Result<Option<Value>, ProviderError> {
        match self.get_instance(name).await? {
            Some(v) if Self::owned(scope, &v) => Ok(Some(v)),
            Some(_) => Err(err(
                ErrorKind::Permanent,
                what,
                format!(
                    "Cloud SQL instance {name} exists but was not created by Telbase for this project and environment; rename the database or remove that instance"
                ),
            )),
            None => Ok(None),
        }
    }

    async fn require_instance(
        &self,
        scope: &Scope,
        name: &str,
        what: &str,
    ) -> Result<Value, ProviderError> {
        self.owned_instance(scope, name, what)
            .await?
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    what,
                    format!("Cloud SQL instance {name} does not exist yet"),
                )
            })
    }

    /// Wait for one operation (the body a mutation returned) to be `DONE`, and fail with
    /// its errors if it carries any.
    async fn wait(&self, op: &Value, what: &str) -> Result<(), ProviderError> {
        let check = |v: &Value| -> Result<Option<()>, ProviderError> {
            if s(v, "/status").as_deref() != Some("DONE") {
                return Ok(None);
            }
            let errors: Vec<String> = v
                .pointer("/error/errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|e| {
                    format!(
                        "{} [{}]",
                        s(e, "/message").unwrap_or_else(|| "no message".into()),
                        s(e, "/code").unwrap_or_default()
                    )
                })
                .collect();
            if errors.is_empty() {
                Ok(Some(()))
            } else {
                Err(err(
                    ErrorKind::Permanent,
                    what,
                    format!("the operation failed: {}", errors.join("; ")),
                ))
            }
        };
        if check(op)?.is_some() {
            return Ok(());
        }
        let name = s(op, "/name").ok_or_else(|| {
            err(
                ErrorKind::Transient,
                what,
                "the response is not an operation (no `name`)",
            )
        })?;
        let path = format!("{}/operations/{}", self.base(), enc(&name));
        self.http
            .poll(P, what, || async {
                let v = self
                    .http
                    .json(&self.ep, &Call::get(path.clone(), what.to_owned()))
                    .await?;
                check(&v)
            })
            .await
    }

    /// Wait for whatever is still running on an instance: Cloud SQL runs one operation per
    /// instance at a time and refuses another meanwhile.
    async fn wait_pending(&self, instance: &str, what: &str) -> Result<(), ProviderError> {
        let call = Call::get(
            format!("{}/operations", self.base()),
            format!("list operations of {instance}"),
        )
        .query("instance", instance)
        .query("maxResults", "20");
        // The newest come first; the first page holds anything still running.
        let resp = self.http.json(&self.ep, &call).await?;
        let running: Vec<Value> = resp
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|o| s(o, "/status").as_deref() != Some("DONE"))
            .cloned()
            .collect();
        for op in running {
            self.wait(&op, what).await?;
        }
        Ok(())
    }

    /// Send a mutation of an instance: wait for its running operations first, then send,
    /// then wait for the operation it starts. A 409 "another operation in progress" (a race
    /// with someone else) is waited out and sent again, a few times.
    async fn mutate(
        &self,
        instance: &str,
        call: Call,
    ) -> Result<Result<(), ProviderError>, ProviderError> {
        for attempt in 0..5 {
            self.wait_pending(instance, &call.what).await?;
            match self.http.json(&self.ep, &call).await {
                Ok(op) => return Ok(self.wait(&op, &call.what).await),
                Err(e)
                    if e.kind == ErrorKind::Conflict
                        && e.message.contains("in progress")
                        && attempt < 4 =>
                {
                    continue;
                }
                // The caller decides what a conflict or a 404 means for this call.
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Err(err(
            ErrorKind::Transient,
            &call.what,
            "the instance stayed busy with other operations",
        )))
    }

    /// Our labels on an instance, kept beside anyone else's.
    fn labels_for(
        &self,
        scope: &Scope,
        current: &Value,
        res: Option<&Resource>,
        set: &[(&str, String)],
    ) -> Map<String, Value> {
        let mut l = labels(current);
        l.insert(LABEL_PROJECT.into(), json!(label_value(&scope.project)));
        l.insert(
            LABEL_ENVIRONMENT.into(),
            json!(label_value(&owner::environment_label(scope.environment))),
        );
        if let Some(r) = res {
            if r.allow_data_loss {
                l.insert(LABEL_DELETION.into(), json!("true"));
            } else {
                l.remove(LABEL_DELETION);
            }
        }
        for (k, v) in set {
            l.insert((*k).to_owned(), json!(label_value(v)));
        }
        l
    }

    async fn create_instance(
        &self,
        scope: &Scope,
        res: &Resource,
        spec: &CloudSqlInstance,
        desired: &DesiredState,
    ) -> Result<Applied, ProviderError> {
        let name = &res.key.name;
        let what = format!("create instance {name}");
        // The database and user that stand on this instance, recorded in its labels so that
        // observe can tell them from anything else on the server.
        let mut set = vec![(LABEL_DISK, spec.disk_gb.to_string())];
        for r in desired.resources.values() {
            if !r.depends_on.contains(&res.key) {
                continue;
            }
            match &r.spec {
                ResourceSpec::CloudSqlDatabase(d) => {
                    set.push((LABEL_DATABASE, d.database.to_string()))
                }
                ResourceSpec::CloudSqlUser(u) => set.push((LABEL_USER, u.user.to_string())),
                _ => {}
            }
        }
        let mut body = json!({
            "name": name,
            "databaseVersion": spec.database_version,
            "settings": {
                "tier": spec.tier,
                "edition": edition(&spec.tier),
                "dataDiskSizeGb": spec.disk_gb.to_string(),
                "storageAutoResize": true,
                "deletionProtectionEnabled": spec.deletion_protection,
                "backupConfiguration": {"enabled": spec.backups, "pointInTimeRecoveryEnabled": spec.backups},
                "ipConfiguration": {"ipv4Enabled": true, "sslMode": if spec.ssl_required { SSL_MODE } else { "ALLOW_UNENCRYPTED_AND_ENCRYPTED" }},
                "userLabels": self.labels_for(scope, &Value::Null, Some(res), &set),
            },
        });
        if !spec.region.is_empty() {
            body["region"] = json!(spec.region);
        }
        for attempt in 0..4 {
            if let Some(found) = self.owned_instance(scope, name, &what).await? {
                // Ours already (a create that went through before a crash or a timeout):
                // let it finish rather than make another.
                self.wait_pending(name, &what).await?;
                return Ok(Applied {
                    provider_id: s(&found, "/connectionName").unwrap_or_else(|| name.to_string()),
                    url: None,
                });
            }
            let call = Call::new(Method::POST, format!("{}/instances", self.base()), &what)
                .json(body.clone());
            match self.http.json(&self.ep, &call).await {
                Ok(op) => {
                    self.wait(&op, &what).await?;
                    continue;
                }
                // Exists (our own earlier attempt, or someone else's): look again.
                Err(e) if e.kind == ErrorKind::Conflict => continue,
                // Maybe created, maybe not: look before sending it again.
                Err(e) if e.kind == ErrorKind::Transient && attempt < 3 => {
                    tracing::debug!(what = %what, error = %e, "ambiguous failure; looking before retrying");
                }
                Err(e) => return Err(e),
            }
        }
        Err(err(
            ErrorKind::Transient,
            &what,
            "the instance is not there after creating it",
        ))
    }

    async fn update_instance(
        &self,
        scope: &Scope,
        res: &Resource,
        spec: &CloudSqlInstance,
    ) -> Result<Applied, ProviderError> {
        let name = &res.key.name;
        let what = format!("update instance {name}");
        let current = self.require_instance(scope, name, &what).await?;
        let observed = instance_spec(&current);
        let mut settings = json!({
            "tier": spec.tier,
            "deletionProtectionEnabled": spec.deletion_protection,
            "backupConfiguration": {"enabled": spec.backups, "pointInTimeRecoveryEnabled": spec.backups},
            "ipConfiguration": {"sslMode": if spec.ssl_required { SSL_MODE } else { "ALLOW_UNENCRYPTED_AND_ENCRYPTED" }},
        });
        let mut set = Vec::new();
        // Disks only grow: a smaller size than the disk has (grown by itself) is recorded
        // as what we ask for, and not sent.
        if spec.disk_gb > disk_gb(&current) {
            settings["dataDiskSizeGb"] = json!(spec.disk_gb.to_string());
        }
        set.push((LABEL_DISK, spec.disk_gb.to_string()));
        settings["userLabels"] = json!(self.labels_for(scope, &current, Some(res), &set));
        let mut body = json!({"settings": settings});
        if observed.database_version != spec.database_version {
            // A major version upgrade, in place.
            body["databaseVersion"] = json!(spec.database_version);
        }
        let call = Call::new(Method::PATCH, self.instance_path(name), &what)
            .json(body)
            .retry(super::super::http::Retry::Always);
        self.mutate(name, call).await??;
        Ok(Applied {
            provider_id: s(&current, "/connectionName").unwrap_or_else(|| name.to_string()),
            url: None,
        })
    }

    /// Set some of our labels on an instance (and the data-loss label from `res`), if they
    /// differ.
    async fn ensure_labels(
        &self,
        scope: &Scope,
        instance: &Value,
        res: Option<&Resource>,
        set: &[(&str, String)],
    ) -> Result<(), ProviderError> {
        let name = s(instance, "/name").unwrap_or_default();
        let deletion_same = res.is_none_or(|r| {
            label(instance, LABEL_DELETION).as_deref() == r.allow_data_loss.then_some("true")
        });
        if deletion_same
            && set
                .iter()
                .all(|(k, v)| label(instance, k) == Some(label_value(v)))
        {
            return Ok(());
        }
        let what = format!("label instance {name}");
        let body = json!({"settings": {"userLabels": self.labels_for(scope, instance, res, set)}});
        let call = Call::new(Method::PATCH, self.instance_path(&name), &what)
            .json(body)
            .retry(super::super::http::Retry::Always);
        self.mutate(&name, call).await?
    }

    async fn delete_instance(
        &self,
        scope: &Scope,
        observed: &Observed,
    ) -> Result<Applied, ProviderError> {
        let name = &observed.key.name;
        let what = format!("delete instance {name}");
        if !observed.deletion_allowed {
            return Err(err(
                ErrorKind::Permanent,
                &what,
                "refusing to delete a Cloud SQL instance whose data loss was never allowed (allow_data_loss: true on the database)",
            ));
        }
        let Some(current) = self.owned_instance(scope, name, &what).await? else {
            return Ok(Applied::default());
        };
        if instance_spec(&current).deletion_protection {
            return Err(err(
                ErrorKind::Permanent,
                &what,
                "deletion protection is on at Cloud SQL; set deletion_protection: false and apply before removing the database",
            ));
        }
        let call = Call::new(Method::DELETE, self.instance_path(name), &what);
        match self.mutate(name, call).await? {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Applied::default())
    }

    async fn ensure_database(
        &self,
        scope: &Scope,
        res: &Resource,
        db: &NamedDatabase,
    ) -> Result<Applied, ProviderError> {
        let instance = &res.key.name;
        let what = format!("create database {} on {instance}", db.database);
        let inst = self.require_instance(scope, instance, &what).await?;
        let path = format!("{}/databases", self.instance_path(instance));
        let get = Call::get(format!("{path}/{}", enc(&db.database)), &what);
        let exists = match self.http.json(&self.ep, &get).await {
            Ok(_) => true,
            Err(e) if e.kind == ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if !exists {
            let call = Call::new(Method::POST, path, &what)
                .json(json!({"name": db.database, "charset": "UTF8", "collation": "en_US.UTF8"}));
            match self.mutate(instance, call).await? {
                Ok(()) => {}
                // Created by an earlier attempt whose answer was lost.
                Err(e) if e.kind == ErrorKind::Conflict => {}
                Err(e) => return Err(e),
            }
        }
        // The database's `allow_data_loss` is recorded with it, so a later removal from the
        // file knows what it was allowed to do.
        self.ensure_labels(
            scope,
            &inst,
            Some(res),
            &[
                (LABEL_DATABASE, db.database.to_string()),
                (LABEL_USER, db.owner.to_string()),
            ],
        )
        .await?;
        Ok(Applied {
            provider_id: format!("{instance}/{}", db.database),
            url: None,
        })
    }

    /// Delete our database. `allowed`: the plan allows its data to go (the label recorded
    /// at the last apply, or the file's `allow_data_loss` for a replacement).
    async fn delete_database(
        &self,
        scope: &Scope,
        observed: &Observed,
        allowed: bool,
    ) -> Result<Applied, ProviderError> {
        let ResourceSpec::CloudSqlDatabase(db) = &observed.spec else {
            return Err(unsupported(&observed.key));
        };
        let instance = &observed.key.name;
        let what = format!("delete database {} on {instance}", db.database);
        if !allowed {
            return Err(err(
                ErrorKind::Permanent,
                &what,
                "refusing to delete a database whose data loss was never allowed (allow_data_loss: true)",
            ));
        }
        if self.owned_instance(scope, instance, &what).await?.is_none() {
            return Ok(Applied::default());
        }
        let call = Call::new(
            Method::DELETE,
            format!(
                "{}/databases/{}",
                self.instance_path(instance),
                enc(&db.database)
            ),
            &what,
        );
        match self.mutate(instance, call).await? {
            Ok(()) => Ok(Applied::default()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(Applied::default()),
            Err(e) => Err(e),
        }
    }

    async fn ensure_user(
        &self,
        scope: &Scope,
        key: &ResourceKey,
        user: &CloudSqlUser,
        inputs: &Inputs,
    ) -> Result<Applied, ProviderError> {
        let instance = &key.name;
        let what = format!("set up user {} on {instance}", user.user);
        let password = inputs.env.get("password").ok_or_else(|| {
            err(
                ErrorKind::Permanent,
                &what,
                format!(
                    "no password was resolved from {} (the executor passes it as input `password`)",
                    user.password_secret
                ),
            )
        })?;
        let inst = self.require_instance(scope, instance, &what).await?;
        let users = format!("{}/users", self.instance_path(instance));
        let get = Call::get(format!("{users}/{}", enc(&user.user)), &what);
        let exists = match self.http.json(&self.ep, &get).await {
            Ok(_) => true,
            Err(e) if e.kind == ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        // The password goes on the wire here and nowhere else; the body is never logged
        // (recordings redact `password`).
        let body =
            json!({"name": user.user, "password": password.expose_secret(), "type": "BUILT_IN"});
        let put = || {
            Call::new(Method::PUT, users.clone(), &what)
                .query("name", user.user.clone())
                .json(body.clone())
        };
        if exists {
            self.mutate(instance, put()).await??;
        } else {
            let post = Call::new(Method::POST, users.clone(), &what).json(body.clone());
            match self.mutate(instance, post).await? {
                Ok(()) => {}
                // Created by an earlier attempt: make sure it has this password.
                Err(e) if e.kind == ErrorKind::Conflict => self.mutate(instance, put()).await??,
                Err(e) => return Err(e),
            }
        }
        self.ensure_labels(scope, &inst, None, &[(LABEL_USER, user.user.to_string())])
            .await?;
        Ok(Applied {
            provider_id: format!("{instance}/{}", user.user),
            url: None,
        })
    }

    async fn delete_user(
        &self,
        scope: &Scope,
        observed: &Observed,
    ) -> Result<Applied, ProviderError> {
        let ResourceSpec::CloudSqlUser(user) = &observed.spec else {
            return Err(unsupported(&observed.key));
        };
        let instance = &observed.key.name;
        let what = format!("delete user {} on {instance}", user.user);
        if self.owned_instance(scope, instance, &what).await?.is_none() {
            return Ok(Applied::default());
        }
        let call = Call::new(
            Method::DELETE,
            format!("{}/users", self.instance_path(instance)),
            &what,
        )
        .query("name", user.user.clone());
        match self.mutate(instance, call).await? {
            Ok(()) => Ok(Applied::default()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(Applied::default()),
            Err(e) => Err(e),
        }
    }

    async fn observe_all(&self, scope: &Scope) -> Result<Vec<Observed>, ProviderError> {
        let call = Call::get(
            format!("{}/instances", self.base()),
            "list Cloud SQL instances",
        )
        .query("maxResults", "100");
        let mut out = Vec::new();
        for inst in self.list(call).await? {
            if !Self::owned(scope, &inst) {
                continue;
            }
            let name = s(&inst, "/name").unwrap_or_default();
            let deletion_allowed = label(&inst, LABEL_DELETION).as_deref() == Some("true");
            let instance_key = ResourceKey::new(Kind::CloudSqlInstance, name.clone());
            out.push(Observed {
                key: instance_key,
                spec: ResourceSpec::CloudSqlInstance(instance_spec(&inst)),
                provider_id: s(&inst, "/connectionName").unwrap_or_else(|| name.to_string()),
                deletion_allowed,
            });
            // A new instance answers list calls for its databases only once it runs.
            if s(&inst, "/state").as_deref() == Some("PENDING_CREATE") {
                continue;
            }
            let dbs = self
                .list(Call::get(
                    format!("{}/databases", self.instance_path(&name)),
                    format!("list databases of {name}"),
                ))
                .await?;
            let users = self
                .list(Call::get(
                    format!("{}/users", self.instance_path(&name)),
                    format!("list users of {name}"),
                ))
                .await?;
            let ours = |list: &[Value], labelled: Option<String>| -> Option<String> {
                let names: Vec<String> = list.iter().filter_map(|v| s(v, "/name")).collect();
                match labelled {
                    Some(l) => names.into_iter().find(|n| label_value(n) == l),
                    None => None,
                }
            };
            let user = ours(&users, label(&inst, LABEL_USER));
            if let Some(u) = &user {
                out.push(Observed {
                    key: ResourceKey::new(Kind::CloudSqlUser, name.clone()),
                    spec: ResourceSpec::CloudSqlUser(CloudSqlUser {
                        user: u.as_str().into(),
                        // The secret holding its password, by the convention `config`
                        // names it with; Cloud SQL cannot tell us.
                        password_secret: ResourceKey::new(Kind::Secret, format!("{name}-password")),
                    }),
                    provider_id: format!("{name}/{u}"),
                    deletion_allowed,
                });
            }
            if let Some(d) = ours(&dbs, label(&inst, LABEL_DATABASE)).filter(|d| d != SYSTEM_NAME) {
                out.push(Observed {
                    key: ResourceKey::new(Kind::CloudSqlDatabase, name.clone()),
                    spec: ResourceSpec::CloudSqlDatabase(NamedDatabase {
                        database: d.as_str().into(),
                        owner: user
                            .clone()
                            .or_else(|| label(&inst, LABEL_USER))
                            .unwrap_or_default()
                            .into(),
                    }),
                    provider_id: format!("{name}/{d}"),
                    deletion_allowed,
                });
            }
        }
        Ok(out)
    }

    async fn apply_change(
        &self,
        scope: &Scope,
        change: Change<'_>,
        inputs: &Inputs,
        desired: &DesiredState,
    ) -> Result<Applied, ProviderError> {
        match change {
            Change::Create { desired: res } | Change::Update { desired: res, .. } => {
                let create = matches!(change, Change::Create { .. });
                match &res.spec {
                    ResourceSpec::CloudSqlInstance(spec) if create => {
                        self.create_instance(scope, res, spec, desired).await
                    }
                    ResourceSpec::CloudSqlInstance(spec) => {
                        self.update_instance(scope, res, spec).await
                    }
                    ResourceSpec::CloudSqlDatabase(db) => {
                        self.ensure_database(scope, res, db).await
                    }
                    ResourceSpec::CloudSqlUser(u) => {
                        self.ensure_user(scope, &res.key, u, inputs).await
                    }
                    _ => Err(unsupported(&res.key)),
                }
            }
            Change::Replace {
                desired: res,
                observed,
            } => match &res.spec {
                // A deleted instance's name stays reserved for about a week, and Cloud SQL
                // cannot move an instance between regions: a replacement cannot be done in
                // one run, and is not attempted.
                ResourceSpec::CloudSqlInstance(_) => Err(err(
                    ErrorKind::Permanent,
                    &format!("replace instance {}", res.key.name),
                    "Cloud SQL cannot move an instance to another region, and a deleted instance's name stays reserved for days; give the database a new name instead",
                )),
                ResourceSpec::CloudSqlDatabase(db) => {
                    // The planner let this through only with the file's allow_data_loss.
                    let allowed = res.allow_data_loss || observed.deletion_allowed;
                    self.delete_database(scope, observed, allowed).await?;
                    self.ensure_database(scope, res, db).await
                }
                ResourceSpec::CloudSqlUser(u) => {
                    self.delete_user(scope, observed).await?;
                    self.ensure_user(scope, &res.key, u, inputs).await
                }
                _ => Err(unsupported(&res.key)),
            },
            Change::Delete { observed } => match &observed.spec {
                ResourceSpec::CloudSqlInstance(_) => self.delete_instance(scope, observed).await,
                ResourceSpec::CloudSqlDatabase(_) => {
                    self.delete_database(scope, observed, observed.deletion_allowed)
                        .await
                }
                ResourceSpec::CloudSqlUser(_) => self.delete_user(scope, observed).await,
                _ => Err(unsupported(&observed.key)),
            },
        }
    }

    async fn connection(
        &self,
        scope: &Scope,
        resource: &Resource,
        output: Output,
    ) -> Result<SecretString, ProviderError> {
        let what = format!("fetch the connection details of {}", resource.key);
        let ResourceSpec::CloudSqlDatabase(db) = &resource.spec else {
            return Err(err(
                ErrorKind::Permanent,
                &what,
                "only Cloud SQL databases have outputs",
            ));
        };
        match output {
            Output::Database => return Ok(SecretString::from(db.database.as_str())),
            Output::User => return Ok(SecretString::from(db.owner.as_str())),
            Output::Port => return Ok(SecretString::from("5432")),
            _ => {}
        }
        let secret_id = resource
            .depends_on
            .iter()
            .find(|k| k.kind == Kind::Secret)
            .map(|k| k.name.to_string())
            .unwrap_or_else(|| format!("{}-password", resource.key.name));
        if output == Output::Password {
            return self.secrets.access_latest(&secret_id).await;
        }
        let inst = self
            .require_instance(scope, &resource.key.name, &what)
            .await?;
        if output == Output::SocketUrl {
            // The socket Cloud Run's Cloud SQL volume mounts at `/cloudsql/<connectionName>`
            // (libpq: a `host` starting with `/` is a socket directory). No `sslmode`: libpq
            // ignores it on Unix-domain sockets ("sslmode is ignored for Unix domain socket
            // communication", libpq connection parameters, PostgreSQL docs since 8.3), and
            // drivers that do not ignore it would try TLS on a socket that speaks plain
            // Postgres. The socket never leaves the container; Google's connector carries
            // the connection to the instance over TLS itself, which is why the instance's
            // `ENCRYPTED_ONLY` admits it.
            let connection = s(&inst, "/connectionName").ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    &what,
                    "the instance has no connection name yet",
                )
            })?;
            let password = self.secrets.access_latest(&secret_id).await?;
            return Ok(SecretString::from(socket_url(
                &db.owner,
                password.expose_secret(),
                &db.database,
                &connection,
            )));
        }
        let ip = inst
            .get("ipAddresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| s(a, "/type").as_deref() == Some("PRIMARY"))
            .and_then(|a| s(a, "/ipAddress"))
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    &what,
                    "the instance has no public (PRIMARY) address yet",
                )
            })?;
        match output {
            Output::Host => Ok(SecretString::from(ip)),
            Output::Url => {
                let password = self.secrets.access_latest(&secret_id).await?;
                Ok(SecretString::from(format!(
                    "postgresql://{}:{}@{ip}:5432/{}?sslmode=require",
                    url_part(&db.owner),
                    url_part(password.expose_secret()),
                    url_part(&db.database)
                )))
            }
            other => Err(err(
                ErrorKind::Permanent,
                &what,
                format!(
                    "Cloud SQL databases offer url, host, port, database, user and password, not {other:?}"
                ),
            )),
        }
    }
}

/// `postgresql://<user>:<password>@/<db>?host=/cloudsql/<connectionName>`: the libpq URI
/// form for a socket directory (empty host, `host` parameter). The connection name's colons
/// are legal in a query value and stay as they are, so the path is readable.
pub fn socket_url(user: &str, password: &str, database: &str, connection: &str) -> String {
    format!(
        "postgresql://{}:{}@/{}?host=/cloudsql/{}",
        url_part(user),
        url_part(password),
        url_part(database),
        connection
            .split(':')
            .map(url_part)
            .collect::<Vec<_>>()
            .join(":")
    )
}

impl Provider for CloudSql {
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
        desired: &'a DesiredState,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(self.apply_change(scope, change, inputs, desired))
    }

    fn output<'a>(
        &'a self,
        scope: &'a Scope,
        resource: &'a Resource,
        output: Output,
    ) -> BoxFuture<'a, Result<SecretString, ProviderError>> {
        Box::pin(self.connection(scope, resource, output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_urls() {
        assert_eq!(label_value("Notes.App"), "notes_app");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert_eq!(url_part("a b/c:d@e"), "a%20b%2Fc%3Ad%40e");
        assert_eq!(url_part("Ab9-_.~"), "Ab9-_.~");
        assert_eq!(edition("db-custom-1-3840"), "ENTERPRISE");
        assert_eq!(
            socket_url("db_owner", "p@ss", "db", "proj:us-central1:ledger-db"),
            "postgresql://db_owner:p%40ss@/db?host=/cloudsql/proj:us-central1:ledger-db"
        );
        assert_eq!(edition("db-perf-optimized-N-2"), "ENTERPRISE_PLUS");
    }

    #[test]
    fn grown_disks_are_not_drift() {
        let v = json!({"settings": {"dataDiskSizeGb": "25", "userLabels": {LABEL_DISK: "10"}}});
        assert_eq!(instance_spec(&v).disk_gb, 10);
        let v = json!({"settings": {"dataDiskSizeGb": "25", "userLabels": {LABEL_DISK: "30"}}});
        assert_eq!(instance_spec(&v).disk_gb, 25);
        let v = json!({"settings": {"dataDiskSizeGb": "25"}});
        assert_eq!(instance_spec(&v).disk_gb, 25);
    }

    #[test]
    fn ssl_by_either_spelling() {
        assert!(ssl_required(
            &json!({"settings": {"ipConfiguration": {"sslMode": "ENCRYPTED_ONLY"}}})
        ));
        assert!(ssl_required(
            &json!({"settings": {"ipConfiguration": {"requireSsl": true}}})
        ));
        assert!(!ssl_required(
            &json!({"settings": {"ipConfiguration": {"sslMode": "ALLOW_UNENCRYPTED_AND_ENCRYPTED", "requireSsl": false}}})
        ));
    }
}
