//! Turso (Platform API): groups and databases of one organization, per-preview databases
//! seeded from their parent, and database URLs and short-lived tokens minted on demand.
//! Wire shapes follow ../shared/provider-apis/turso/turso-openapi.json.
//!
//! Ownership. Turso databases and groups carry no labels or annotations, so the mark Telbase
//! keeps in Turso is a *marker database*: an empty database whose name is a hash of
//! (Telbase project, environment, resource name), created in the same group before the
//! resource itself. `tbd-<hash>` marks a database, `tbx-<hash>` a database applied with
//! `allow_data_loss`, `tbg-<hash>` a group Telbase created. A database is Telbase's when its
//! name carries the project prefix and its marker exists; a same-named database made by hand
//! has no marker and is refused ("exists but was not created by Telbase"), never adopted.
//! The marker is created first, so a create interrupted after the marker leaves a state the
//! next run finishes; one interrupted before the marker leaves nothing.
//!
//! Groups are shared infrastructure named by the user (`default`). Telbase *uses* an existing
//! group of the right location without claiming it, and deletes a group only when it created
//! it (its `tbg-` marker, for this environment) and it holds nothing but that marker. Turso
//! deletes a group's databases with it, so a group holding anything else is never deleted.
//!
//! Deletion protection is Turso's own `delete_protection` (database configuration), and
//! Telbase also checks it: a protected database is never deleted, and a production database
//! is deleted only when its marker records `allow_data_loss`.
//!
//! Observe makes two calls: the group list and the database list (neither is paginated).

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::http::{Call, Endpoint, Http, Paging, Retry};
use super::owner;
use super::vercel::enc;
use super::{
    Applied, BoxFuture, Change, Credentials, ErrorKind, Inputs, Provider, ProviderError, Scope,
    SetupError,
};
use crate::model::{
    self, DesiredState, Environment, Kind, Observed, Output, Resource, ResourceKey, ResourceSpec,
    TursoDatabase, TursoGroup,
};

const P: model::Provider = model::Provider::Turso;

/// The organization the emulator serves when `TURSO_ORG` is not set.
pub const EMULATOR_ORG: &str = "telbase-emulator";

/// How long a minted database token lives (Turso's duration syntax). Tokens are minted when
/// an app's environment is written; see docs/providers.md on rotation.
pub const TOKEN_EXPIRATION: &str = "30d";

/// Marker name prefixes.
const MARK_DB: &str = "tbd-";
const MARK_DB_LOSS_OK: &str = "tbx-";
const MARK_GROUP: &str = "tbg-";

pub struct Turso {
    http: Http,
    ep: Endpoint,
    org: String,
}

fn err(kind: ErrorKind, what: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::new(P, kind, what, None, message, None, None)
}

fn s(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The hash part of a marker name: 24 hex digits of SHA-256 over what the marker vouches
/// for. Turso names allow lowercase letters, digits and dashes, at most 64 characters.
fn marker_hash(what: &str, project: &str, env: Environment, name: &str) -> String {
    let label = owner::environment_label(env);
    let digest = sha2::Sha256::digest(format!("telbase\0{what}\0{project}\0{label}\0{name}"));
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Marker names of a database: (plain, deletion allowed).
fn db_markers(scope: &Scope, name: &str) -> (String, String) {
    let h = marker_hash("database", &scope.project, scope.environment, name);
    (format!("{MARK_DB}{h}"), format!("{MARK_DB_LOSS_OK}{h}"))
}

fn group_marker(scope: &Scope, group: &str) -> String {
    format!(
        "{MARK_GROUP}{}",
        marker_hash("group", &scope.project, scope.environment, group)
    )
}

fn is_marker(name: &str) -> bool {
    [MARK_DB, MARK_DB_LOSS_OK, MARK_GROUP]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The organization's groups and databases, as listed in one pass, with databases indexed
/// by name: observe looks up a marker per database, and organizations can hold thousands.
struct Listing {
    groups: Vec<Value>,
    databases: Vec<Value>,
    by_name: std::collections::HashMap<String, usize>,
}

impl Listing {
    fn new(groups: Vec<Value>, databases: Vec<Value>) -> Self {
        let by_name = databases
            .iter()
            .enumerate()
            .filter_map(|(i, d)| Some((s(d, "Name")?, i)))
            .collect();
        Listing {
            groups,
            databases,
            by_name,
        }
    }

    fn group(&self, name: &str) -> Option<&Value> {
        self.groups
            .iter()
            .find(|g| s(g, "name").as_deref() == Some(name))
    }

    fn database(&self, name: &str) -> Option<&Value> {
        self.by_name.get(name).map(|&i| &self.databases[i])
    }

    fn has(&self, name: &str) -> bool {
        self.database(name).is_some()
    }

    /// Whether `name` is this scope's database: the prefix and a marker. `Some(allowed)`
    /// when it is, with whether its marker records `allow_data_loss`.
    fn owned_db(&self, scope: &Scope, name: &str) -> Option<bool> {
        if !owner::has_prefix(&scope.project, name) || is_marker(name) {
            return None;
        }
        let (plain, loss_ok) = db_markers(scope, name);
        match (self.has(&plain), self.has(&loss_ok)) {
            (_, true) => Some(true),
            (true, false) => Some(false),
            _ => None,
        }
    }

    fn created_group(&self, scope: &Scope, group: &str) -> bool {
        self.database(&group_marker(scope, group))
            .is_some_and(|m| s(m, "group").as_deref() == Some(group))
    }
}

/// `notes-main` from `notes-main-pr-42` in the preview of pull request 42.
fn seed_parent(scope: &Scope, name: &str) -> Option<String> {
    match scope.environment {
        Environment::Production => None,
        Environment::Preview { pull_request } => name
            .strip_suffix(&format!("-pr-{pull_request}"))
            .filter(|p| !p.is_empty())
            .map(str::to_owned),
    }
}

impl Turso {
    pub fn new(http: Http, ep: Endpoint, creds: &Credentials) -> Result<Self, SetupError> {
        let org = match (&creds.turso_org, &creds.emulator) {
            (Some(o), _) => o.clone(),
            (None, Some(_)) => EMULATOR_ORG.into(),
            (None, None) => {
                return Err(SetupError::Missing {
                    provider: P.as_str(),
                    vars: "TURSO_ORG",
                });
            }
        };
        Ok(Turso { http, ep, org })
    }

    fn org_path(&self, rest: &str) -> String {
        format!("/v1/organizations/{}{rest}", enc(&self.org))
    }

    async fn list_groups(&self) -> Result<Vec<Value>, ProviderError> {
        let call = Call::get(self.org_path("/groups"), "list groups");
        self.http
            .list(&self.ep, call, "/groups", Paging::None)
            .await
    }

    async fn list_databases(&self) -> Result<Vec<Value>, ProviderError> {
        let call = Call::get(self.org_path("/databases"), "list databases");
        self.http
            .list(&self.ep, call, "/databases", Paging::None)
            .await
    }

    async fn listing(&self) -> Result<Listing, ProviderError> {
        let (groups, databases) =
            futures_util::future::try_join(self.list_groups(), self.list_databases()).await?;
        Ok(Listing::new(groups, databases))
    }

    /// Only the databases (for steps that need no group facts).
    async fn db_listing(&self) -> Result<Listing, ProviderError> {
        Ok(Listing::new(Vec::new(), self.list_databases().await?))
    }

    async fn observe_all(&self, scope: &Scope) -> Result<Vec<Observed>, ProviderError> {
        let l = self.listing().await?;
        let mut out = Vec::new();
        let mut used_groups = std::collections::BTreeSet::new();
        for d in &l.databases {
            let Some(name) = s(d, "Name") else { continue };
            let Some(loss_ok) = l.owned_db(scope, &name) else {
                continue;
            };
            let group = s(d, "group").unwrap_or_default();
            used_groups.insert(group.clone());
            let seed_from = seed_parent(scope, &name);
            let deletion_allowed = match scope.environment {
                // A preview's database is a disposable copy.
                Environment::Preview { .. } => true,
                Environment::Production => loss_ok,
            };
            out.push(Observed {
                key: ResourceKey::new(Kind::TursoDatabase, name.clone()),
                spec: ResourceSpec::TursoDatabase(TursoDatabase {
                    group: group.into(),
                    seed_from: seed_from.map(Into::into),
                    deletion_protection: d
                        .get("delete_protection")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                }),
                provider_id: s(d, "DbId").unwrap_or_default(),
                deletion_allowed,
            });
        }
        for g in &l.groups {
            let Some(name) = s(g, "name") else { continue };
            // A group is observed while Telbase created it here or keeps a database in it.
            if !(l.created_group(scope, &name) || used_groups.contains(&name)) {
                continue;
            }
            out.push(Observed {
                key: ResourceKey::new(Kind::TursoGroup, name.clone()),
                spec: ResourceSpec::TursoGroup(TursoGroup {
                    location: group_location(g).into(),
                }),
                provider_id: s(g, "uuid").unwrap_or_default(),
                deletion_allowed: false,
            });
        }
        Ok(out)
    }

    /// Create a database unless it exists; safe to repeat. A create whose answer was lost
    /// (a timeout after sending) is resolved by listing before sending it again.
    async fn ensure_database(
        &self,
        name: &str,
        group: &str,
        seed: Option<&str>,
        listing: &Listing,
    ) -> Result<Value, ProviderError> {
        if let Some(d) = listing.database(name) {
            return Ok(d.clone());
        }
        let what = format!("create database {name}");
        let mut body = json!({"name": name, "group": group});
        if let Some(src) = seed {
            body["seed"] = json!({"type": "database", "name": src});
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let call = Call::new(Method::POST, self.org_path("/databases"), what.clone())
                .json(body.clone());
            match self.http.json(&self.ep, &call).await {
                Ok(resp) => {
                    return resp.get("database").cloned().ok_or_else(|| {
                        err(
                            ErrorKind::Transient,
                            &what,
                            "the response has no `database`",
                        )
                    });
                }
                // Ours from an attempt whose answer was lost, or made meanwhile: the caller
                // has already decided it may use whatever has this name.
                Err(e) if e.kind == ErrorKind::Conflict => {
                    return self.db_listing().await?.database(name).cloned().ok_or(e);
                }
                Err(e) if e.kind == ErrorKind::Transient && attempts < 4 => {
                    tracing::debug!(what = %what, error = %e, "ambiguous failure; looking before retrying");
                    if let Some(d) = self.db_listing().await?.database(name) {
                        return Ok(d.clone());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn set_protection(&self, name: &str, on: bool) -> Result<(), ProviderError> {
        let call = Call::new(
            Method::PATCH,
            self.org_path(&format!("/databases/{}/configuration", enc(name))),
            format!("set delete protection of {name}"),
        )
        .json(json!({"delete_protection": on}))
        // Setting a flag twice is harmless.
        .retry(Retry::Always);
        self.http.send(&self.ep, &call).await.map(|_| ())
    }

    /// DELETE a database; already gone counts as done.
    async fn delete_database_call(&self, name: &str) -> Result<(), ProviderError> {
        let call = Call::new(
            Method::DELETE,
            self.org_path(&format!("/databases/{}", enc(name))),
            format!("delete database {name}"),
        );
        match self.http.send(&self.ep, &call).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn create_group(
        &self,
        scope: &Scope,
        res: &Resource,
        spec: &TursoGroup,
    ) -> Result<Applied, ProviderError> {
        let name = res.key.name.as_str();
        let what = format!("create group {name}");
        let mut listing = self.listing().await?;
        let mut created_now = false;
        if listing.group(name).is_none() {
            let call = Call::new(Method::POST, self.org_path("/groups"), what.clone())
                .json(json!({"name": name, "location": spec.location}));
            match self.http.json(&self.ep, &call).await {
                Ok(_) => created_now = true,
                // Someone else's, made since we looked: used below, never claimed.
                Err(e) if e.kind == ErrorKind::Conflict => {}
                Err(e) if e.kind == ErrorKind::Transient => {
                    // Maybe created. Moments ago it did not exist, so a group that exists
                    // now is taken to be ours.
                    tracing::debug!(what = %what, error = %e, "ambiguous failure; looking");
                    created_now = true;
                }
                Err(e) => return Err(e),
            }
            listing = self.listing().await?;
        }
        let Some(g) = listing.group(name) else {
            return Err(err(
                ErrorKind::Transient,
                &what,
                "the group is not listed yet",
            ));
        };
        let uuid = s(g, "uuid").unwrap_or_default();
        let mine = created_now || listing.created_group(scope, name);
        let location = group_location(g);
        if location != spec.location {
            return Err(err(
                ErrorKind::Permanent,
                &what,
                format!(
                    "group `{name}` already exists in {location}, not {}; {}",
                    spec.location,
                    if mine {
                        "moving a group would delete its databases, so Telbase does not"
                    } else {
                        "it was not created by Telbase, so Telbase uses it as it is and never changes it"
                    }
                ),
            ));
        }
        if mine {
            self.ensure_database(&group_marker(scope, name), name, None, &listing)
                .await?;
        }
        Ok(Applied {
            provider_id: uuid,
            url: None,
        })
    }

    async fn delete_group(&self, scope: &Scope, name: &str) -> Result<Applied, ProviderError> {
        let what = format!("delete group {name}");
        let listing = self.listing().await?;
        let Some(g) = listing.group(name) else {
            return Ok(Applied::default());
        };
        if !listing.created_group(scope, name) {
            // Used, not owned: Telbase lets go of it and leaves it in place.
            tracing::info!(
                group = name,
                "group not created by Telbase here; left in place"
            );
            return Ok(Applied::default());
        }
        let marker = group_marker(scope, name);
        let others: Vec<String> = listing
            .databases
            .iter()
            .filter(|d| s(d, "group").as_deref() == Some(name))
            .filter_map(|d| s(d, "Name"))
            .filter(|n| *n != marker)
            .collect();
        if !others.is_empty() {
            // Name the databases people know; markers only by count.
            let (markers, named): (Vec<&String>, Vec<&String>) =
                others.iter().partition(|n| is_marker(n));
            let mut held: Vec<String> = named.iter().map(|n| n.to_string()).collect();
            if !markers.is_empty() {
                held.push(format!("{} Telbase marker(s)", markers.len()));
            }
            return Err(err(
                ErrorKind::Permanent,
                &what,
                format!(
                    "it still holds {}; Turso would delete them with the group, so Telbase deletes a group only when it holds nothing else",
                    held.join(", ")
                ),
            ));
        }
        if g.get("delete_protection").and_then(Value::as_bool) == Some(true) {
            return Err(err(
                ErrorKind::Permanent,
                &what,
                "the group has delete protection on at Turso",
            ));
        }
        let call = Call::new(
            Method::DELETE,
            self.org_path(&format!("/groups/{}", enc(name))),
            what.clone(),
        );
        match self.http.send(&self.ep, &call).await {
            Ok(_) => Ok(Applied::default()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(Applied::default()),
            Err(e) => Err(e),
        }
    }

    async fn create_database(
        &self,
        scope: &Scope,
        res: &Resource,
        spec: &TursoDatabase,
    ) -> Result<Applied, ProviderError> {
        let name = res.key.name.as_str();
        let what = format!("create database {name}");
        let listing = self.db_listing().await?;
        let owned = listing.owned_db(scope, name);
        if listing.has(name) && owned.is_none() {
            return Err(err(
                ErrorKind::Conflict,
                &what,
                format!(
                    "database `{name}` exists but was not created by Telbase; rename or remove it"
                ),
            ));
        }
        if let Some(src) = &spec.seed_from {
            let prod = Scope {
                environment: Environment::Production,
                ..scope.clone()
            };
            if listing.owned_db(&prod, src).is_none() {
                return Err(err(
                    ErrorKind::NotFound,
                    &what,
                    format!(
                        "the database it is seeded from, `{src}`, is not there (or not Telbase's)"
                    ),
                ));
            }
        }
        let (plain, loss_ok) = db_markers(scope, name);
        let marker = if res.allow_data_loss {
            &loss_ok
        } else {
            &plain
        };
        if owned.is_none() {
            // The marker first: whatever exists under this name afterwards is ours.
            self.ensure_database(marker, &spec.group, None, &listing)
                .await?;
        }
        let db = self
            .ensure_database(name, &spec.group, spec.seed_from.as_deref(), &listing)
            .await?;
        if spec.deletion_protection
            && db.get("delete_protection").and_then(Value::as_bool) != Some(true)
        {
            self.set_protection(name, true).await?;
        }
        self.sync_loss_marker(scope, res, &listing).await?;
        Ok(Applied {
            provider_id: s(&db, "DbId").unwrap_or_default(),
            url: None,
        })
    }

    /// Make the marker say what the file now says about `allow_data_loss`: the new marker
    /// first, then the old one goes, so the database is never unmarked.
    async fn sync_loss_marker(
        &self,
        scope: &Scope,
        res: &Resource,
        listing: &Listing,
    ) -> Result<(), ProviderError> {
        let ResourceSpec::TursoDatabase(spec) = &res.spec else {
            return Ok(());
        };
        let (plain, loss_ok) = db_markers(scope, &res.key.name);
        let (want, stale) = if res.allow_data_loss {
            (loss_ok, plain)
        } else {
            (plain, loss_ok)
        };
        if !listing.has(&stale) {
            return Ok(());
        }
        self.ensure_database(&want, &spec.group, None, listing)
            .await?;
        self.delete_database_call(&stale).await
    }

    async fn update_database(
        &self,
        scope: &Scope,
        res: &Resource,
        spec: &TursoDatabase,
    ) -> Result<Applied, ProviderError> {
        let name = res.key.name.as_str();
        let listing = self.db_listing().await?;
        let Some(db) = listing
            .database(name)
            .filter(|_| listing.owned_db(scope, name).is_some())
        else {
            return Err(err(
                ErrorKind::NotFound,
                &format!("update database {name}"),
                "it is not there (or not Telbase's)",
            ));
        };
        if db.get("delete_protection").and_then(Value::as_bool) != Some(spec.deletion_protection) {
            self.set_protection(name, spec.deletion_protection).await?;
        }
        self.sync_loss_marker(scope, res, &listing).await?;
        Ok(Applied {
            provider_id: s(db, "DbId").unwrap_or_default(),
            url: None,
        })
    }

    /// Delete one of this scope's databases and then its marker. `loss_allowed`: the plan's
    /// delete came with `allow_data_loss` (recorded in the marker, or in the file for a
    /// replacement).
    async fn delete_database(
        &self,
        scope: &Scope,
        name: &str,
        spec: &TursoDatabase,
        loss_allowed: bool,
    ) -> Result<Applied, ProviderError> {
        let what = format!("delete database {name}");
        let listing = self.db_listing().await?;
        let (plain, loss_ok) = db_markers(scope, name);
        match listing.database(name) {
            None => {}
            Some(_) if listing.owned_db(scope, name).is_none() => {
                return Err(err(
                    ErrorKind::Permanent,
                    &what,
                    "it was not created by Telbase; Telbase never deletes it",
                ));
            }
            Some(db) => {
                let holds_data = spec.seed_from.is_none()
                    && matches!(scope.environment, Environment::Production);
                if holds_data && !loss_allowed {
                    return Err(err(
                        ErrorKind::Permanent,
                        &what,
                        "it holds data; apply it once with `allow_data_loss: true` before removing it",
                    ));
                }
                if db.get("delete_protection").and_then(Value::as_bool) == Some(true) {
                    return Err(err(
                        ErrorKind::Permanent,
                        &what,
                        "delete protection is on at Turso; apply `deletion_protection: false` first",
                    ));
                }
                self.delete_database_call(name).await?;
            }
        }
        for m in [plain, loss_ok] {
            if listing.has(&m) {
                self.delete_database_call(&m).await?;
            }
        }
        Ok(Applied::default())
    }

    async fn apply_change(
        &self,
        scope: &Scope,
        change: Change<'_>,
    ) -> Result<Applied, ProviderError> {
        match change {
            Change::Create { desired: res } => self.create(scope, res).await,
            Change::Replace {
                desired: res,
                observed,
            } => {
                self.delete(scope, observed, res.allow_data_loss).await?;
                self.create(scope, res).await
            }
            Change::Update { desired: res, .. } => match &res.spec {
                ResourceSpec::TursoDatabase(d) => self.update_database(scope, res, d).await,
                // A group's only setting, its location, cannot change in place: the planner
                // makes that a replacement. Nothing to do.
                ResourceSpec::TursoGroup(_) => Ok(Applied::default()),
                _ => Err(unsupported(&res.key)),
            },
            Change::Delete { observed } => {
                self.delete(scope, observed, observed.deletion_allowed)
                    .await
            }
        }
    }

    async fn create(&self, scope: &Scope, res: &Resource) -> Result<Applied, ProviderError> {
        match &res.spec {
            ResourceSpec::TursoGroup(g) => self.create_group(scope, res, g).await,
            ResourceSpec::TursoDatabase(d) => self.create_database(scope, res, d).await,
            _ => Err(unsupported(&res.key)),
        }
    }

    async fn delete(
        &self,
        scope: &Scope,
        observed: &Observed,
        loss_allowed: bool,
    ) -> Result<Applied, ProviderError> {
        match &observed.spec {
            ResourceSpec::TursoGroup(_) => self.delete_group(scope, &observed.key.name).await,
            ResourceSpec::TursoDatabase(d) => {
                self.delete_database(scope, &observed.key.name, d, loss_allowed)
                    .await
            }
            _ => Err(unsupported(&observed.key)),
        }
    }

    async fn fetch_output(
        &self,
        scope: &Scope,
        resource: &Resource,
        output: Output,
    ) -> Result<SecretString, ProviderError> {
        let name = resource.key.name.as_str();
        let what = format!("fetch the {output:?} of {}", resource.key).to_lowercase();
        if resource.key.kind != Kind::TursoDatabase {
            return Err(unsupported(&resource.key));
        }
        let listing = self.db_listing().await?;
        let db = listing
            .database(name)
            .filter(|_| listing.owned_db(scope, name).is_some())
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    &what,
                    format!("database `{name}` is not there (or not Telbase's)"),
                )
            })?;
        match output {
            Output::Url => {
                let host = s(db, "Hostname").filter(|h| !h.is_empty()).ok_or_else(|| {
                    err(
                        ErrorKind::Transient,
                        &what,
                        "the database has no `Hostname`",
                    )
                })?;
                Ok(SecretString::from(format!("libsql://{host}")))
            }
            Output::Token => {
                let call = Call::new(
                    Method::POST,
                    self.org_path(&format!("/databases/{}/auth/tokens", enc(name))),
                    what.clone(),
                )
                .query("expiration", TOKEN_EXPIRATION)
                .query("authorization", "full-access")
                // A second token is harmless; the first one is simply never used.
                .retry(Retry::Always);
                let mut resp = self.http.json(&self.ep, &call).await?;
                match resp.get_mut("jwt").map(Value::take) {
                    Some(Value::String(jwt)) if !jwt.is_empty() => Ok(SecretString::from(jwt)),
                    _ => Err(err(
                        ErrorKind::Transient,
                        &what,
                        "the response has no `jwt`",
                    )),
                }
            }
            other => Err(err(
                ErrorKind::Permanent,
                &what,
                format!("Turso databases offer url and token, not {other:?}"),
            )),
        }
    }
}

/// A group's location: `primary`, else the first of the (deprecated) `locations`.
fn group_location(g: &Value) -> String {
    s(g, "primary")
        .filter(|p| !p.is_empty())
        .or_else(|| {
            g.get("locations")
                .and_then(Value::as_array)
                .and_then(|l| l.first())
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

fn unsupported(key: &ResourceKey) -> ProviderError {
    err(
        ErrorKind::Permanent,
        &format!("change {key}"),
        "not a Turso resource",
    )
}

impl Provider for Turso {
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
        _inputs: &'a Inputs,
        _desired: &'a DesiredState,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(self.apply_change(scope, change))
    }

    fn output<'a>(
        &'a self,
        scope: &'a Scope,
        resource: &'a Resource,
        output: Output,
    ) -> BoxFuture<'a, Result<SecretString, ProviderError>> {
        Box::pin(self.fetch_output(scope, resource, output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(project: &str, env: Environment) -> Scope {
        Scope {
            project: project.into(),
            environment: env,
            git: None,
        }
    }

    #[test]
    fn markers_name_project_environment_and_resource() {
        let prod = scope("notes", Environment::Production);
        let pr = scope("notes", Environment::Preview { pull_request: 7 });
        let other = scope("notes-web", Environment::Production);
        let (a, b) = db_markers(&prod, "notes-main");
        assert!(a.starts_with("tbd-") && b.starts_with("tbx-"));
        assert_eq!(a.len(), 28);
        assert_eq!(a[4..], b[4..]);
        assert_ne!(a, db_markers(&pr, "notes-main").0);
        assert_ne!(a, db_markers(&other, "notes-main").0);
        assert_ne!(a, db_markers(&prod, "notes-other").0);
        assert_ne!(group_marker(&prod, "default"), group_marker(&pr, "default"));
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        );
    }

    #[test]
    fn the_organization_is_required_for_the_real_api() {
        let http = Http::new(Default::default()).unwrap();
        let ep =
            Endpoint::new(P, "https://api.turso.tech", SecretString::from("t"), vec![]).unwrap();
        let none = Credentials::default();
        assert!(matches!(
            Turso::new(http.clone(), ep.clone(), &none),
            Err(SetupError::Missing {
                vars: "TURSO_ORG",
                ..
            })
        ));
        let emulated = Credentials {
            emulator: Some("http://127.0.0.1:1".into()),
            ..Credentials::default()
        };
        let t = Turso::new(http.clone(), ep.clone(), &emulated).unwrap();
        assert_eq!(t.org, EMULATOR_ORG);
        let named = Credentials {
            turso_org: Some("acme inc".into()),
            ..Credentials::default()
        };
        let t = Turso::new(http, ep, &named).unwrap();
        assert_eq!(t.org_path("/groups"), "/v1/organizations/acme%20inc/groups");
    }

    #[test]
    fn preview_parents_come_from_the_name() {
        let pr = scope("notes", Environment::Preview { pull_request: 7 });
        assert_eq!(
            seed_parent(&pr, "notes-main-pr-7").as_deref(),
            Some("notes-main")
        );
        assert_eq!(seed_parent(&pr, "notes-main-pr-8"), None);
        assert_eq!(
            seed_parent(&scope("notes", Environment::Production), "notes-main-pr-7"),
            None
        );
    }

    #[test]
    fn group_location_prefers_primary() {
        assert_eq!(
            group_location(&json!({"primary": "aws-us-east-1", "locations": ["x"]})),
            "aws-us-east-1"
        );
        assert_eq!(group_location(&json!({"locations": ["x"]})), "x");
        assert_eq!(group_location(&json!({})), "");
    }
}
