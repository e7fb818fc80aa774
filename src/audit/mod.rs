//! The tamper-evident security log (the security page, section 7.2): authentication events,
//! API access, administrative actions, configuration changes, access-control changes and
//! anomalies, each with its actor, the server's time (UTC), the source address, the target,
//! the outcome and a small JSON object of details that never holds a secret.
//!
//! This module owns the event types ([`AuditEvent`], [`Actor`], [`Action`] and its
//! [`Category`], [`Outcome`], [`Target`], [`Details`]), the keys ([`keys`]), the chain and its
//! verification ([`chain`]), and [`AuditLog`], the one entry point that records, verifies,
//! lists and prunes. The rows live in the store behind [`AuditRows`] (both backends, migration
//! "audit log").
//!
//! The chain: each record carries a sequence number, the previous record's MAC, and its own
//! MAC = HMAC-SHA256(chain key, canonical encoding of the sequence number, the previous MAC and
//! every field). A chain head row (last sequence number, last MAC, number of checkpoints,
//! MAC'd too) says how far the chain must reach. Appends are serialized by the store (a row
//! lock on the head in PostgreSQL, the write transaction in SQLite), so several replicas
//! produce one linear chain. Retention pruning deletes a prefix of the chain and writes an
//! Ed25519-signed checkpoint (first kept sequence number, MAC of the last pruned record, count,
//! time, previous checkpoint's signature), so verification still starts somewhere it can trust.
//!
//! THE MUST-WRITE RULE: [`AuditLog::record`] returns an error when the record cannot be
//! written (no audit key, a store fault, details that look like a secret). A request the
//! security page says must be audited (sign-ins and their failures, token and session
//! changes, role and membership changes, env-var changes, every `/api/v1` access) FAILS with
//! a 5xx when its record cannot be written; it never proceeds unaudited. Only events about
//! requests that are refused anyway (a bad webhook signature, a failed login) may be logged
//! and dropped on a store fault, since failing them changes nothing for the caller. Without an
//! audit key Telbase writes no record at all rather than an unprotected one.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub mod anchor;
pub mod chain;
pub mod details;
pub mod keys;

pub use chain::{
    AuditFilter, AuditRecord, AuditRows, ChainHead, CheckpointRow, Finding, FindingKind,
    PruneInput, PruneReport, SealCheckpoint, SealRecord, Verification,
};
pub use details::{Details, Fingerprint};
pub use keys::AuditKeys;

use crate::store::StoreError;

/// The default retention: the security page keeps security logs 90 days.
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// A person signed in (dashboard session or CLI device login).
    User,
    /// An API token.
    Token,
    /// GitHub (a verified webhook delivery, the App).
    Github,
    /// Telbase itself (schedules: pruning, key rotation, the sweep).
    System,
    /// Nobody verified: a failed sign-in, a bad token, a delivery with a bad signature. The id
    /// is what was claimed (a user name, a token's public prefix), never a credential.
    Anonymous,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Token => "token",
            ActorKind::Github => "github",
            ActorKind::System => "system",
            ActorKind::Anonymous => "anonymous",
        }
    }

    pub fn parse(s: &str) -> Option<ActorKind> {
        Some(match s {
            "user" => ActorKind::User,
            "token" => ActorKind::Token,
            "github" => ActorKind::Github,
            "system" => ActorKind::System,
            "anonymous" => ActorKind::Anonymous,
            _ => return None,
        })
    }
}

/// Who acted: a kind, a stable id (user id, token id, GitHub login or App, a task name) and a
/// display name for people reading the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
    pub display: String,
}

impl Actor {
    pub fn new(kind: ActorKind, id: impl Into<String>, display: impl Into<String>) -> Actor {
        Actor {
            kind,
            id: id.into(),
            display: display.into(),
        }
    }
    pub fn user(id: impl Into<String>, display: impl Into<String>) -> Actor {
        Actor::new(ActorKind::User, id, display)
    }
    pub fn token(id: impl Into<String>, display: impl Into<String>) -> Actor {
        Actor::new(ActorKind::Token, id, display)
    }
    pub fn github(id: impl Into<String>, display: impl Into<String>) -> Actor {
        Actor::new(ActorKind::Github, id, display)
    }
    /// Telbase itself, e.g. `Actor::system("audit-prune")`.
    pub fn system(task: impl Into<String>) -> Actor {
        let task = task.into();
        Actor::new(ActorKind::System, task.clone(), task)
    }
    /// No verified identity; `claimed` is what the request claimed to be (never a secret).
    pub fn anonymous(claimed: impl Into<String>) -> Actor {
        let claimed = claimed.into();
        Actor::new(ActorKind::Anonymous, claimed.clone(), claimed)
    }
}

/// The categories the security page names (section 7.2), plus anomalies (7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// `auth.*`: login, logout, failures, webhook signatures.
    Authentication,
    /// `api.*`: API access.
    ApiAccess,
    /// `admin.*`: administrative actions (members, keys, the log's own pruning).
    Administrative,
    /// `config.*`: configuration changes (env vars, projects, settings).
    Configuration,
    /// `access.*`: access-control changes (tokens, sessions, roles granted, lockouts).
    AccessControl,
    /// `anomaly.*`: flagged anomalies (new network, failure bursts, token from a new address).
    Anomaly,
}

impl Category {
    pub fn prefix(self) -> &'static str {
        match self {
            Category::Authentication => "auth",
            Category::ApiAccess => "api",
            Category::Administrative => "admin",
            Category::Configuration => "config",
            Category::AccessControl => "access",
            Category::Anomaly => "anomaly",
        }
    }

    pub fn all() -> [Category; 6] {
        [
            Category::Authentication,
            Category::ApiAccess,
            Category::Administrative,
            Category::Configuration,
            Category::AccessControl,
            Category::Anomaly,
        ]
    }
}

/// What happened: a stable dotted name whose first part is its [`Category`]'s prefix
/// (`auth.login`, `config.env_set`). The names are an interface (filters, alerts and the REST
/// API match them): add new ones, never rename one. The constants are the names in use; a
/// new one is `Action::new("access.something")?` or a new constant here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Action(std::borrow::Cow<'static, str>);

impl Action {
    pub const AUTH_LOGIN: Action = Action::known("auth.login");
    pub const AUTH_LOGIN_FAILED: Action = Action::known("auth.login_failed");
    pub const AUTH_LOGOUT: Action = Action::known("auth.logout");
    pub const AUTH_DEVICE_APPROVED: Action = Action::known("auth.device_approved");
    pub const AUTH_DEVICE_DENIED: Action = Action::known("auth.device_denied");
    pub const AUTH_TOKEN_REFRESHED: Action = Action::known("auth.token_refreshed");
    pub const AUTH_TOKEN_REJECTED: Action = Action::known("auth.token_rejected");
    pub const AUTH_WEBHOOK_SIGNATURE_FAILED: Action =
        Action::known("auth.webhook_signature_failed");
    pub const API_ACCESS: Action = Action::known("api.access");
    pub const API_DENIED: Action = Action::known("api.denied");
    pub const API_RATE_LIMITED: Action = Action::known("api.rate_limited");
    pub const ADMIN_MEMBER_ADDED: Action = Action::known("admin.member_added");
    pub const ADMIN_MEMBER_REMOVED: Action = Action::known("admin.member_removed");
    pub const ADMIN_MEMBER_ROLE_CHANGED: Action = Action::known("admin.member_role_changed");
    pub const ADMIN_KEY_ROTATED: Action = Action::known("admin.key_rotated");
    pub const ADMIN_AUDIT_PRUNED: Action = Action::known("admin.audit_pruned");
    pub const CONFIG_ENV_SET: Action = Action::known("config.env_set");
    pub const CONFIG_ENV_UNSET: Action = Action::known("config.env_unset");
    pub const CONFIG_PROJECT_CHANGED: Action = Action::known("config.project_changed");
    pub const ACCESS_TOKEN_CREATED: Action = Action::known("access.token_created");
    pub const ACCESS_TOKEN_REVOKED: Action = Action::known("access.token_revoked");
    pub const ACCESS_SESSION_REVOKED: Action = Action::known("access.session_revoked");
    pub const ACCESS_SESSIONS_REVOKED_ALL: Action = Action::known("access.sessions_revoked_all");
    pub const ACCESS_LOCKOUT: Action = Action::known("access.lockout");
    pub const ANOMALY_NEW_NETWORK: Action = Action::known("anomaly.new_network");
    pub const ANOMALY_FAILURE_BURST: Action = Action::known("anomaly.failure_burst");
    pub const ANOMALY_TOKEN_NEW_ADDRESS: Action = Action::known("anomaly.token_new_address");

    const fn known(name: &'static str) -> Action {
        Action(std::borrow::Cow::Borrowed(name))
    }

    /// A checked action name: `category.name`, lowercase ASCII letters, digits and `_`.
    pub fn new(name: &str) -> Result<Action, AuditError> {
        Action::category_of(name)
            .map(|_| Action(std::borrow::Cow::Owned(name.to_owned())))
            .ok_or_else(|| {
                AuditError::BadEvent(format!(
                    "action `{}` is not `category.name` with a category prefix auth, api, admin, config, access or anomaly",
                    details::shown(name)
                ))
            })
    }

    fn category_of(name: &str) -> Option<Category> {
        let (prefix, rest) = name.split_once('.')?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        };
        if !ok(rest) || rest.starts_with('.') || rest.ends_with('.') {
            return None;
        }
        Category::all().into_iter().find(|c| c.prefix() == prefix)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn category(&self) -> Category {
        Action::category_of(&self.0).unwrap_or(Category::Anomaly)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    /// It was tried and failed (a bad password, a bad signature, a fault).
    Failure,
    /// It was refused by policy (role, lockout, rate limit).
    Denied,
    /// About to be done: the record of a change that cannot commit together with its record
    /// (stored values go through the secret store's own statements). Its `success` or
    /// `failure` follows; a `started` with neither after it means the process stopped in
    /// between, and says exactly that.
    Started,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
            Outcome::Started => "started",
        }
    }
    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "success" => Outcome::Success,
            "failure" => Outcome::Failure,
            "denied" => Outcome::Denied,
            "started" => Outcome::Started,
            _ => return None,
        })
    }
}

/// What was acted on: a type (`project`, `env_var`, `token`, `member`, `webhook`, …) and an id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Target {
    pub kind: String,
    pub id: String,
}

/// One security event, before it is sealed into the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// The server's clock, UTC (never a time the client sent).
    pub at: DateTime<Utc>,
    pub actor: Actor,
    pub action: Action,
    /// The client's address as the server saw it (after the trusted-proxy rule, if any).
    pub source: Option<IpAddr>,
    pub target: Option<Target>,
    pub outcome: Outcome,
    pub details: Details,
}

impl AuditEvent {
    /// An event happening now.
    pub fn new(actor: Actor, action: Action, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            at: Utc::now(),
            actor,
            action,
            source: None,
            target: None,
            outcome,
            details: Details::new(),
        }
    }
    /// From this address.
    pub fn from(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }
    /// On this target.
    pub fn on(mut self, kind: impl Into<String>, id: impl Into<String>) -> Self {
        self.target = Some(Target {
            kind: kind.into(),
            id: id.into(),
        });
        self
    }
    /// With these details (checked for secrets when recorded).
    pub fn with(mut self, details: Details) -> Self {
        self.details = details;
        self
    }
    /// At this time (tests, imports); the default is now.
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = at;
        self
    }
}

/// Why an audit operation failed. Messages never contain a key, a MAC key or a secret value.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "no audit key: set TELBASE_AUDIT_KEY_FILE to a 0600 file holding a base64 32-byte key, or TELBASE_AUDIT_KEY to one (create one with `telbase audit keygen`); Telbase writes no audit record it cannot protect"
    )]
    NoKey,
    #[error("{at}: {why}")]
    BadKey { at: String, why: String },
    #[error(
        "{path}: the audit key file is readable or writable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(
        "audit details `{key}`: {why} (put `AuditLog::fingerprint` of a value in the details when its identity matters, never the value)"
    )]
    SecretInDetails { key: String, why: String },
    #[error("audit event: {0}")]
    BadEvent(String),
    #[error("audit log: {0}")]
    Store(#[from] StoreError),
    #[error("the audit log is damaged: {0}")]
    Damaged(String),
    #[error(
        "refusing to prune a log that does not verify (pruning would discard the evidence): {0}"
    )]
    PruneRefused(Finding),
    #[error("the audit log task failed: {0}")]
    Task(String),
}

/// Records, verifies, lists and prunes the audit log of a store. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    keys: Option<Arc<AuditKeys>>,
    retention_days: u32,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("key_id", &self.keys.as_ref().map(|k| k.id()))
            .field("retention_days", &self.retention_days)
            .finish()
    }
}

/// The shortest retention allowed: the security page promises security logs are kept 90
/// days, so neither the setting nor `telbase audit prune --older-than` may go below it.
pub const MIN_RETENTION_DAYS: u32 = 90;

impl AuditLog {
    /// A log sealed with `keys`, default retention.
    pub fn new(keys: AuditKeys) -> AuditLog {
        AuditLog {
            keys: Some(Arc::new(keys)),
            retention_days: DEFAULT_RETENTION_DAYS,
        }
    }

    /// Whether records can be written (a key was given).
    pub fn has_key(&self) -> bool {
        self.keys.is_some()
    }

    /// A log without a key: every [`AuditLog::record`] fails with [`AuditError::NoKey`];
    /// [`AuditLog::list`] still works.
    pub fn without_key() -> AuditLog {
        AuditLog {
            keys: None,
            retention_days: DEFAULT_RETENTION_DAYS,
        }
    }

    /// From `TELBASE_AUDIT_KEY_FILE` / `TELBASE_AUDIT_KEY` and `TELBASE_AUDIT_RETENTION_DAYS`
    /// (see [`keys`]). No key set is not an error here (a log without a key refuses to record);
    /// a key that is set but unusable is.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<AuditLog, AuditError> {
        let keys = match keys::AuditKeys::from_vars(&var) {
            Ok(k) => Some(Arc::new(k)),
            Err(AuditError::NoKey) => None,
            Err(e) => return Err(e),
        };
        let retention_days = match var("TELBASE_AUDIT_RETENTION_DAYS").filter(|v| !v.is_empty()) {
            None => DEFAULT_RETENTION_DAYS,
            Some(v) => {
                v.trim()
                    .parse()
                    .ok()
                    .filter(|d| *d >= MIN_RETENTION_DAYS)
                    .ok_or_else(|| AuditError::BadKey {
                        at: "TELBASE_AUDIT_RETENTION_DAYS".into(),
                        why: format!(
                            "must be a number of days, at least {MIN_RETENTION_DAYS} (the security page promises 90)"
                        ),
                    })?
            }
        };
        Ok(AuditLog {
            keys,
            retention_days,
        })
    }

    /// [`AuditLog::from_vars`] on the process environment.
    pub fn from_env() -> Result<AuditLog, AuditError> {
        AuditLog::from_vars(|k| std::env::var(k).ok())
    }

    /// With another retention (days, at least 1).
    pub fn with_retention_days(mut self, days: u32) -> AuditLog {
        self.retention_days = days.max(1);
        self
    }

    pub fn retention_days(&self) -> u32 {
        self.retention_days
    }

    /// The keys, or [`AuditError::NoKey`].
    pub fn keys(&self) -> Result<&AuditKeys, AuditError> {
        self.keys.as_deref().ok_or(AuditError::NoKey)
    }

    /// A keyed hash of a secret value for the details, where the identity of a value matters
    /// ("the same token as before") but the value must not be kept. `purpose` separates uses
    /// (`"session"`, `"device_code"`), so equal values of different kinds do not match.
    pub fn fingerprint(
        &self,
        purpose: &str,
        value: &secrecy::SecretString,
    ) -> Result<Fingerprint, AuditError> {
        Ok(self.keys()?.fingerprint(purpose, value))
    }

    /// Seals `event` into the chain and writes it; its sequence number. Fails (and writes
    /// nothing) without a key, on details that look like a secret, or when the store cannot
    /// write: callers that must audit fail their request then (see the module doc).
    pub fn record(&self, rows: &mut dyn AuditRows, event: &AuditEvent) -> Result<u64, AuditError> {
        let keys = self.keys()?;
        let record = chain::unsealed(event)?;
        let written = rows.append_audit(&mut |head| chain::seal(keys, record.clone(), head))?;
        Ok(u64::try_from(written.seq).unwrap_or(0))
    }

    /// Records `event` through `append`, which appends the sealed record inside a transaction
    /// the caller holds (`store::tx::Tx::append_audit`), so the record commits with the change
    /// made in the same transaction, or neither does.
    pub fn record_with(
        &self,
        append: &mut dyn FnMut(&mut SealRecord<'_>) -> Result<AuditRecord, AuditError>,
        event: &AuditEvent,
    ) -> Result<u64, AuditError> {
        let keys = self.keys()?;
        let record = chain::unsealed(event)?;
        let written = append(&mut |head| chain::seal(keys, record.clone(), head))?;
        Ok(u64::try_from(written.seq).unwrap_or(0))
    }

    /// Walks the whole chain (and the checkpoints) and reports the first problem.
    pub fn verify(&self, rows: &mut dyn AuditRows) -> Result<Verification, AuditError> {
        chain::verify(self.keys()?, rows)
    }

    /// Deletes the records older than the retention (a prefix of the chain) and writes a signed
    /// checkpoint; refuses when the log does not verify first.
    pub fn prune(
        &self,
        rows: &mut dyn AuditRows,
        now: DateTime<Utc>,
    ) -> Result<PruneReport, AuditError> {
        let cutoff = now - chrono::Duration::days(i64::from(self.retention_days));
        self.prune_before(rows, cutoff)
    }

    /// Like [`AuditLog::prune`] with an explicit cutoff: records before `cutoff` go.
    pub fn prune_before(
        &self,
        rows: &mut dyn AuditRows,
        cutoff: DateTime<Utc>,
    ) -> Result<PruneReport, AuditError> {
        let keys = self.keys()?;
        let check = chain::verify(keys, rows)?;
        if let Some(f) = check.finding {
            return Err(AuditError::PruneRefused(f));
        }
        let now_ms = Utc::now().timestamp_millis();
        let cp = rows.prune_audit(cutoff.timestamp_millis(), &mut |input| {
            chain::checkpoint(keys, input, now_ms)
        })?;
        Ok(PruneReport {
            pruned: cp.as_ref().map(|c| c.pruned).unwrap_or(0),
            checkpoint: cp,
        })
    }

    /// Records matching `filter`, newest first (no key needed: reading is not sealing).
    pub fn list(
        rows: &mut dyn AuditRows,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        rows.audit_query(filter)
    }
}

/// The thin interface other parts record through (the server's handlers, the abuse and
/// identity code): whatever holds a store and an [`AuditLog`]. Blocking; async callers use
/// `spawn_blocking` (or the server's `serve::audit::ServerAudit::record_async`).
pub trait SecurityEvents: Send + Sync {
    /// Seal and write `event`; its sequence number. See the must-write rule in the module doc.
    fn record(&self, event: AuditEvent) -> Result<u64, AuditError>;
}

/// Two hex MACs equal, compared in constant time and case-insensitively (an anchor may be
/// typed or pasted in either case).
pub(crate) fn keys_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    crate::control::secrets::constant_time_eq(a.as_bytes(), b.as_bytes())
}
