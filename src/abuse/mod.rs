//! Brute-force and abuse protection (the security page's §7.3: "brute force attempts are
//! automatically blocked", "unusual login patterns trigger alerts", "suspicious API
//! activity is flagged"). This module owns:
//!
//! - failure accounting: failed sign-ins, bad tokens, bad user codes and bad webhook
//!   signatures are counted per source address and per claimed account in the store (so
//!   every replica sees the same counts), in sliding windows, with lockouts that double up
//!   to a cap ([`Policies`], [`rows`]);
//! - rate limits: a token bucket per API token and per address on unauthenticated routes,
//!   kept in the store ([`Limits`]);
//! - the answers: `429 Too Many Requests` with `Retry-After` and one JSON error shape, also
//!   for a locked subject (never 401: a lock must not confirm whether a guess was right)
//!   ([`http`]);
//! - anomalies ([`Anomaly`]): a user's first sign-in from a new network, a burst of
//!   failures (a lock starting), a token used from a new address; sent to the notification
//!   webhook and to a [`SecurityEvents`] sink (the audit log, connected by the server);
//! - the source address: the peer, or `X-Forwarded-For` only from trusted proxies
//!   ([`addr`]).
//!
//! The numbers and their reasons are in `docs/abuse.md`. Store calls block: the async
//! methods move them to the blocking pool.

pub mod addr;
pub mod http;
pub mod rows;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use addr::{Cidr, CidrError, TrustedProxies, address_key, network_key};
pub use http::{Guard, Refusal, Unauthenticated};
pub use rows::{AbuseRows, Failure, Policy, Realm, Scope, Subject, SubjectRow, Take};

use crate::serve::metrics::Metrics;
use crate::serve::notify::Notifier;
use crate::store::{Store, StoreError};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The lockout rules, per realm and scope. Defaults (see `docs/abuse.md` for why):
/// - API, per address: 10 failures in 15 minutes lock the address 1 minute, doubling on each
///   further lock within a day, up to 1 hour (the OWASP and NIST SP 800-63B §5.2.2 range:
///   at most 100 consecutive failures per account; mature services lock in minutes, not
///   days, so a lock is not a denial of service of its own);
/// - API, per account: 5 failures in 15 minutes, the same backoff (an account sees fewer
///   honest failures than a shared address, such as an office's NAT, does);
/// - webhooks, per address: 20 bad signatures in 15 minutes, 1 minute doubling to 1 hour;
///   a valid signature is never refused (see [`Abuse::webhook_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    pub api_address: Policy,
    pub api_account: Policy,
    pub webhook_address: Policy,
}

impl Default for Policies {
    fn default() -> Self {
        let backoff = |threshold| Policy {
            threshold,
            window_ms: 15 * MINUTE,
            base_lock_ms: MINUTE,
            max_lock_ms: HOUR,
            memory_ms: DAY,
        };
        Policies {
            api_address: backoff(10),
            api_account: backoff(5),
            webhook_address: backoff(20),
        }
    }
}

impl Policies {
    pub fn of(&self, realm: Realm, scope: Scope) -> Policy {
        match (realm, scope) {
            (Realm::Api, Scope::Address) => self.api_address,
            (Realm::Api, Scope::Account) => self.api_account,
            // Webhook failures never name an account (nothing of an unverified body is read).
            (Realm::Webhook, _) => self.webhook_address,
        }
    }

    /// The longest window and memory of any policy (what pruning keeps).
    fn longest(&self) -> (i64, i64) {
        let all = [self.api_address, self.api_account, self.webhook_address];
        (
            all.iter().map(|p| p.window_ms).max().unwrap_or(0),
            all.iter().map(|p| p.memory_ms).max().unwrap_or(0),
        )
    }
}

/// A token bucket: `per_minute` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    fn interval_ms(&self) -> i64 {
        (MINUTE / i64::from(self.per_minute.max(1))).max(1)
    }
}

/// Rate limits. Defaults: 600 requests a minute per API token with bursts of 100 (a CLI or
/// CI job listing runs never meets it; a runaway script does within seconds); 60 a minute
/// per address on unauthenticated routes with bursts of 30 (device-flow polling every 5 s
/// uses 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub token: Rate,
    pub address: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            token: Rate {
                per_minute: 600,
                burst: 100,
            },
            address: Rate {
                per_minute: 60,
                burst: 30,
            },
        }
    }
}

/// What the failing (or succeeding) request claimed to be: the account its credentials
/// named. Ids are not secrets (a token's id, never the token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Account {
    key: String,
}

impl Account {
    /// A user by id.
    pub fn user(id: &str) -> Account {
        Account::new("user", id)
    }
    /// An API token by its id (the public part).
    pub fn token(id: &str) -> Account {
        Account::new("token", id)
    }
    /// A GitHub App installation.
    pub fn installation(id: u64) -> Account {
        Account::new("installation", &id.to_string())
    }
    /// `kind:id`. Ids come from requests: a long or odd one is stored as a hash of
    /// itself, so a claimed id cannot grow the tables or forge a separator.
    pub fn new(kind: &str, id: &str) -> Account {
        let plain = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
        let key = if plain {
            format!("{kind}:{id}")
        } else {
            use sha2::Digest as _;
            let d = sha2::Sha256::digest(id.as_bytes());
            let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("{kind}:sha256-{hex}")
        };
        Account { key }
    }
    /// An account key as stored (`user:42`), e.g. from `telbase abuse unlock --account`.
    pub fn from_key(key: &str) -> Option<Account> {
        let (kind, id) = key.split_once(':')?;
        (!kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .then(|| Account::new(kind, id))
            .filter(|a| a.key == key)
    }
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Which kind of failure (for the log, the audit sink and the docs; all count alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A sign-in that did not complete (IdP error, state or PKCE mismatch).
    SignIn,
    /// An unknown, expired or revoked API token or session.
    BadToken,
    /// A device-flow user code that does not exist.
    BadUserCode,
    /// A refresh token or device code that does not hold.
    BadGrant,
    /// A webhook delivery whose signature does not hold.
    WebhookSignature,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::SignIn => "sign_in",
            FailureKind::BadToken => "bad_token",
            FailureKind::BadUserCode => "bad_user_code",
            FailureKind::BadGrant => "bad_grant",
            FailureKind::WebhookSignature => "webhook_signature",
        }
    }
}

/// Something a person should look at (§7.3). Serialized into the notification body and
/// handed to the [`SecurityEvents`] sink; never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "anomaly", rename_all = "snake_case")]
pub enum Anomaly {
    /// A user signed in from a network (/24, /48) never seen for them, having signed in
    /// from another before.
    NewNetwork {
        account: String,
        address: String,
        network: String,
    },
    /// Failures crossed a threshold: a lock started.
    FailureBurst {
        realm: &'static str,
        scope: &'static str,
        subject: String,
        failures: i64,
        kind: FailureKind,
        /// The source address of the failure that crossed it.
        address: String,
        lock_seconds: i64,
    },
    /// An API token used from an address (/32, /64) it was never used from before.
    TokenNewAddress { account: String, address: String },
}

impl Anomaly {
    pub fn kind(&self) -> &'static str {
        match self {
            Anomaly::NewNetwork { .. } => "new_network",
            Anomaly::FailureBurst { .. } => "failure_burst",
            Anomaly::TokenNewAddress { .. } => "token_new_address",
        }
    }

    /// One line for people.
    pub fn description(&self) -> String {
        match self {
            Anomaly::NewNetwork {
                account, network, ..
            } => format!("{account} signed in from a new network ({network})"),
            Anomaly::FailureBurst {
                subject,
                failures,
                lock_seconds,
                realm,
                ..
            } => {
                format!("{failures} failures from {subject} ({realm}); locked for {lock_seconds} s")
            }
            Anomaly::TokenNewAddress { account, address } => {
                format!("{account} used from a new address ({address})")
            }
        }
    }
}

/// A security event for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SecurityEvent {
    Anomaly(Anomaly),
    /// An operator lifted a lock (`telbase abuse unlock`).
    Unlocked {
        scope: &'static str,
        key: String,
        counters: usize,
    },
}

/// Why a security event could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("security event not recorded: {0}")]
pub struct SecurityEventsError(pub String);

/// Where security events go: the audit log (the server connects it; until then, the log).
pub trait SecurityEvents: Send + Sync + 'static {
    fn record(&self, event: &SecurityEvent) -> Result<(), SecurityEventsError>;
}

/// The default sink: a warning in the server's log.
pub struct LogEvents;

impl SecurityEvents for LogEvents {
    fn record(&self, event: &SecurityEvent) -> Result<(), SecurityEventsError> {
        let json = serde_json::to_string(event).map_err(|e| SecurityEventsError(e.to_string()))?;
        tracing::warn!(security_event = %json, "security event");
        Ok(())
    }
}

/// Who reads what a request claims before it is authenticated (its account): set by the
/// authentication code, which knows the token and session formats.
pub type ClaimFn = Arc<dyn Fn(&axum::http::request::Parts) -> Option<Account> + Send + Sync>;

/// Settings (`TELBASE_TRUSTED_PROXIES`; the numbers are code defaults).
#[derive(Clone, Default)]
pub struct AbuseConfig {
    pub trusted_proxies: TrustedProxies,
    pub policies: Policies,
    pub limits: Limits,
    /// The audit sink; `None`: [`LogEvents`].
    pub events: Option<Arc<dyn SecurityEvents>>,
    /// Reads the claimed account of a request for [`Guard`]; `None`: none is claimed.
    pub claims: Option<ClaimFn>,
}

impl std::fmt::Debug for AbuseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbuseConfig")
            .field("trusted_proxies", &self.trusted_proxies)
            .field("policies", &self.policies)
            .field("limits", &self.limits)
            .field("events", &self.events.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl AbuseConfig {
    /// From `TELBASE_TRUSTED_PROXIES` (CIDR blocks, comma-separated; unset: none).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<AbuseConfig, CidrError> {
        Ok(AbuseConfig {
            trusted_proxies: TrustedProxies::parse(
                &var("TELBASE_TRUSTED_PROXIES").unwrap_or_default(),
            )?,
            ..AbuseConfig::default()
        })
    }
}

/// Why an abuse check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AbuseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the abuse check's task failed")]
    Task,
}

/// A store the abuse rows can be reached through, shared by the handlers of one process.
pub trait AbuseDb: Send + Sync + 'static {
    /// Runs `f` on the rows (blocking).
    fn run(
        &self,
        f: &mut dyn FnMut(&mut dyn AbuseRows) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
}

impl AbuseDb for Mutex<Store> {
    fn run(
        &self,
        f: &mut dyn FnMut(&mut dyn AbuseRows) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut s = self.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut *s)
    }
}

impl AbuseDb for crate::serve::queue::StoreQueue {
    fn run(
        &self,
        f: &mut dyn FnMut(&mut dyn AbuseRows) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.with_abuse(f)
    }
}

fn on<T>(
    db: &dyn AbuseDb,
    f: impl FnOnce(&mut dyn AbuseRows) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut f = Some(f);
    let mut out = None;
    db.run(&mut |rows| {
        if let Some(f) = f.take() {
            out = Some(f(rows)?);
        }
        Ok(())
    })?;
    out.ok_or_else(|| StoreError::Corrupt {
        path: "abuse".into(),
        what: "the store did not run the abuse call".into(),
    })
}

/// The current time, unix ms (a parameter so tests can move it).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// How long this process trusts its own memory of a refusal before asking the store again:
/// a locked flood costs one store read per subject per replica per interval, and an
/// operator's unlock reaches every replica within it.
const REMEMBER_MS: i64 = 5_000;
const REMEMBER_MAX: usize = 10_000;
/// How long a (token or user, network) pair this process recorded is not written again.
const SEEN_AGAIN_MS: i64 = 10 * 60_000;

/// What a failure report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    /// The request's subject was (or now is) locked: answer 429 with this many seconds.
    pub refused: Option<u64>,
}

/// The abuse checks of one server process.
pub struct Abuse {
    db: Arc<dyn AbuseDb>,
    config: AbuseConfig,
    events: Arc<dyn SecurityEvents>,
    clock: Clock,
    notifier: Option<Notifier>,
    metrics: Option<Arc<Metrics>>,
    /// Refusals this process remembers: key → (until, ask the store again at).
    remembered: Mutex<HashMap<String, (i64, i64)>>,
    /// (owner, network) pairs this process recorded lately: a token's every request need
    /// not write "seen again" to the store.
    recently_seen: Mutex<HashMap<String, i64>>,
}

impl Abuse {
    pub fn new(db: Arc<dyn AbuseDb>, config: AbuseConfig) -> Abuse {
        let events = config
            .events
            .clone()
            .unwrap_or_else(|| Arc::new(LogEvents) as Arc<dyn SecurityEvents>);
        Abuse {
            db,
            config,
            events,
            clock: Arc::new(|| chrono::Utc::now().timestamp_millis()),
            notifier: None,
            metrics: None,
            remembered: Mutex::new(HashMap::new()),
            recently_seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> Abuse {
        self.clock = clock;
        self
    }

    pub fn with_notifier(mut self, notifier: Option<Notifier>) -> Abuse {
        self.notifier = notifier;
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Abuse {
        self.metrics = Some(metrics);
        self
    }

    pub fn config(&self) -> &AbuseConfig {
        &self.config
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The client's address (see [`addr`]): `X-Forwarded-For` only from a trusted proxy.
    pub fn client_address(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        // Lossy, not `to_str`: a client that puts a non-ASCII byte in its own part of the
        // header must not make the whole header (with the hop our proxy appended) unread,
        // which would count it under the proxy's address.
        let xff: Vec<String> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let xff: Vec<&str> = xff.iter().map(String::as_str).collect();
        self.config.trusted_proxies.client(peer, &xff)
    }

    fn subjects(realm: Realm, address: IpAddr, account: Option<&Account>) -> Vec<Subject> {
        let mut v = vec![Subject {
            realm,
            scope: Scope::Address,
            key: address_key(address),
        }];
        if let Some(a) = account {
            v.push(Subject {
                realm,
                scope: Scope::Account,
                key: a.key.clone(),
            });
        }
        v
    }

    fn remembered(&self, keys: &[String], now: i64) -> Option<i64> {
        let m = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(|k| m.get(k))
            .filter(|(until, ask)| *until > now && *ask > now)
            .map(|(until, _)| *until)
            .max()
    }

    fn remember(&self, key: String, until: i64, now: i64) {
        let mut m = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= REMEMBER_MAX {
            m.retain(|_, (u, a)| *u > now && *a > now);
            if m.len() >= REMEMBER_MAX {
                m.clear();
            }
        }
        m.insert(key, (until, (now + REMEMBER_MS).min(until)));
    }

    fn forget_all(&self) {
        self.remembered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn lock_key(s: &Subject) -> String {
        format!(
            "lock\n{}\n{}\n{}",
            s.realm.as_str(),
            s.scope.as_str(),
            s.key
        )
    }

    fn count_refusal(&self, realm: Realm, reason: &str) {
        if let Some(m) = &self.metrics {
            m.abuse_refusal(realm.as_str(), reason);
        }
    }

    /// Blocking: is the address (or the claimed account) locked in `realm`? `Some(seconds)`
    /// to wait when it is.
    pub fn check_blocking(
        &self,
        realm: Realm,
        address: IpAddr,
        account: Option<&Account>,
    ) -> Result<Option<u64>, AbuseError> {
        let now = self.now();
        let subjects = Self::subjects(realm, address, account);
        let keys: Vec<String> = subjects.iter().map(Self::lock_key).collect();
        if let Some(until) = self.remembered(&keys, now) {
            self.count_refusal(realm, "locked");
            return Ok(Some(seconds(until - now)));
        }
        let locked = on(&*self.db, |rows| rows.locked(&subjects, now))?;
        Ok(locked.map(|(s, until)| {
            self.remember(Self::lock_key(&s), until, now);
            self.count_refusal(realm, "locked");
            seconds(until - now)
        }))
    }

    /// Blocking: count a failure of `kind` from `address` (and against `account`, when the
    /// request named one). A lock that starts is counted in the metrics and reported as a
    /// [`Anomaly::FailureBurst`].
    pub fn failure_blocking(
        &self,
        realm: Realm,
        kind: FailureKind,
        address: IpAddr,
        account: Option<&Account>,
    ) -> Result<Reported, AbuseError> {
        let now = self.now();
        let mut refused: Option<i64> = None;
        for s in Self::subjects(realm, address, account) {
            let policy = self.config.policies.of(realm, s.scope);
            let r = on(&*self.db, |rows| rows.record_failure(&s, now, &policy))?;
            match r {
                Failure::Locked { until_ms } => {
                    self.remember(Self::lock_key(&s), until_ms, now);
                    refused = refused.max(Some(until_ms));
                }
                Failure::Counted {
                    count,
                    locked_until: Some(until),
                    ..
                } => {
                    self.remember(Self::lock_key(&s), until, now);
                    if let Some(m) = &self.metrics {
                        m.abuse_lockout(realm.as_str(), s.scope.as_str());
                    }
                    tracing::warn!(realm = realm.as_str(), scope = s.scope.as_str(), subject = %s.key, failures = count, until, "locked after repeated failures");
                    self.anomaly(Anomaly::FailureBurst {
                        realm: realm.as_str(),
                        scope: s.scope.as_str(),
                        subject: s.key.clone(),
                        failures: count,
                        kind,
                        address: address_key(address),
                        lock_seconds: (until - now) / 1000,
                    });
                }
                Failure::Counted { .. } => {}
            }
        }
        if refused.is_some() {
            self.count_refusal(realm, "locked");
        }
        Ok(Reported {
            refused: refused.map(|u| seconds(u - now)),
        })
    }

    /// Blocking: `account` proved its credentials: its failures and backoff are forgotten.
    /// The address's are not: one attacker's success on an account of their own must not
    /// lift the lock their guesses at other accounts earned.
    pub fn success_blocking(&self, realm: Realm, account: &Account) -> Result<(), AbuseError> {
        on(&*self.db, |rows| rows.clear_account(realm, &account.key))?;
        Ok(())
    }

    /// Blocking: take one request from a bucket; `Some(seconds)` when over the rate.
    fn take_blocking(&self, bucket: String, rate: Rate) -> Result<Option<u64>, AbuseError> {
        let now = self.now();
        let key = format!("bucket\n{bucket}");
        if let Some(until) = self.remembered(std::slice::from_ref(&key), now) {
            self.count_refusal(Realm::Api, "rate_limited");
            return Ok(Some(seconds(until - now)));
        }
        match on(&*self.db, |rows| {
            rows.take(&bucket, now, rate.interval_ms(), rate.burst)
        })? {
            Take::Allowed => Ok(None),
            Take::Denied { retry_after_ms } => {
                self.remember(key, now + retry_after_ms, now);
                self.count_refusal(Realm::Api, "rate_limited");
                Ok(Some(seconds(retry_after_ms)))
            }
        }
    }

    /// Blocking: one request of an authenticated API token (its bucket), and the
    /// new-address anomaly.
    pub fn token_request_blocking(
        &self,
        token: &Account,
        address: IpAddr,
    ) -> Result<Option<u64>, AbuseError> {
        if let Some(wait) = self.take_blocking(token.key.clone(), self.config.limits.token)? {
            return Ok(Some(wait));
        }
        let now = self.now();
        let key = address_key(address);
        let seen = self.seen(&token.key, &key, now)?;
        if seen.new && seen.known_elsewhere {
            self.anomaly(Anomaly::TokenNewAddress {
                account: token.key.clone(),
                address: key,
            });
        }
        Ok(None)
    }

    /// Blocking: one request from `address` to an unauthenticated route.
    pub fn address_request_blocking(&self, address: IpAddr) -> Result<Option<u64>, AbuseError> {
        self.take_blocking(
            format!("address:{}", address_key(address)),
            self.config.limits.address,
        )
    }

    /// Blocking: `user` signed in from `address`: forget their failures, and flag a new
    /// network.
    pub fn signed_in_blocking(&self, user: &Account, address: IpAddr) -> Result<(), AbuseError> {
        self.success_blocking(Realm::Api, user)?;
        let now = self.now();
        let network = network_key(address);
        let seen = self.seen(&user.key, &network, now)?;
        if seen.new && seen.known_elsewhere {
            self.anomaly(Anomaly::NewNetwork {
                account: user.key.clone(),
                address: address_key(address),
                network,
            });
        }
        Ok(())
    }

    /// [`AbuseRows::seen`], skipped when this process recorded the pair in the last
    /// [`SEEN_AGAIN_MS`] (it is then neither new nor worth a write).
    fn seen(&self, owner: &str, network: &str, now: i64) -> Result<rows::Seen, AbuseError> {
        let pair = format!("{owner}\n{network}");
        {
            let m = self.recently_seen.lock().unwrap_or_else(|e| e.into_inner());
            if m.get(&pair)
                .is_some_and(|at| now - at < SEEN_AGAIN_MS && now >= *at)
            {
                return Ok(rows::Seen {
                    new: false,
                    known_elsewhere: true,
                });
            }
        }
        let seen = on(&*self.db, |rows| rows.seen(owner, network, now))?;
        let mut m = self.recently_seen.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= REMEMBER_MAX {
            m.retain(|_, at| now - *at < SEEN_AGAIN_MS);
            if m.len() >= REMEMBER_MAX {
                m.clear();
            }
        }
        m.insert(pair, now);
        Ok(seen)
    }

    /// Report an anomaly: the sink, the notification webhook, the metrics.
    fn anomaly(&self, a: Anomaly) {
        if let Some(m) = &self.metrics {
            m.abuse_anomaly(a.kind());
        }
        if let Some(n) = &self.notifier {
            n.notify_security(crate::serve::notify::SecurityNotification::from_anomaly(&a));
        }
        if let Err(e) = self.events.record(&SecurityEvent::Anomaly(a)) {
            tracing::error!(error = %e, "an anomaly could not be recorded in the security log");
        }
    }

    /// Blocking: delete what no window or lock needs any more (run by the leading replica).
    pub fn prune_blocking(&self) -> Result<rows::Pruned, AbuseError> {
        let now = self.now();
        let (window, memory) = self.config.policies.longest();
        // Networks seen are kept a year: a user back from a long leave is not "new".
        Ok(on(&*self.db, |rows| {
            rows.prune(now, now - window, now - memory, now - 365 * DAY)
        })?)
    }

    // Async forms for handlers: the store call runs on the blocking pool.

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Abuse) -> Result<T, AbuseError> + Send + 'static,
    ) -> Result<T, AbuseError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|_| AbuseError::Task)?
    }

    pub async fn check(
        self: &Arc<Self>,
        realm: Realm,
        address: IpAddr,
        account: Option<Account>,
    ) -> Result<Option<u64>, AbuseError> {
        self.blocking(move |a| a.check_blocking(realm, address, account.as_ref()))
            .await
    }

    pub async fn failure(
        self: &Arc<Self>,
        realm: Realm,
        kind: FailureKind,
        address: IpAddr,
        account: Option<Account>,
    ) -> Result<Reported, AbuseError> {
        self.blocking(move |a| a.failure_blocking(realm, kind, address, account.as_ref()))
            .await
    }

    pub async fn success(
        self: &Arc<Self>,
        realm: Realm,
        account: Account,
    ) -> Result<(), AbuseError> {
        self.blocking(move |a| a.success_blocking(realm, &account))
            .await
    }

    pub async fn signed_in(
        self: &Arc<Self>,
        user: Account,
        address: IpAddr,
    ) -> Result<(), AbuseError> {
        self.blocking(move |a| a.signed_in_blocking(&user, address))
            .await
    }

    pub async fn token_request(
        self: &Arc<Self>,
        token: Account,
        address: IpAddr,
    ) -> Result<Option<u64>, AbuseError> {
        self.blocking(move |a| a.token_request_blocking(&token, address))
            .await
    }

    pub async fn address_request(
        self: &Arc<Self>,
        address: IpAddr,
    ) -> Result<Option<u64>, AbuseError> {
        self.blocking(move |a| a.address_request_blocking(address))
            .await
    }

    /// A webhook delivery from `address` failed its signature check. `Some(seconds)`: the
    /// address is locked, answer 429. Valid deliveries never come here and are never
    /// refused, whatever their address did: GitHub sends every App's deliveries from the
    /// same published ranges, so anyone can point a hook of their own repository at this
    /// server with a wrong secret, and a lock that refused valid deliveries would let them
    /// stop ours. The lock turns further forgeries into cheap 429s and raises the alarm.
    /// A store failure is logged and the delivery answered 401 as usual (fail open: the
    /// signature check, not the counter, is what keeps forgeries out).
    pub async fn webhook_failure(self: &Arc<Self>, address: IpAddr) -> Option<u64> {
        match self
            .failure(Realm::Webhook, FailureKind::WebhookSignature, address, None)
            .await
        {
            Ok(r) => r.refused,
            Err(e) => {
                tracing::error!(error = %e, "cannot count a bad webhook signature");
                None
            }
        }
    }

    /// Operator unlock (clears this process's memory of refusals too; other replicas
    /// follow within a few seconds).
    pub fn unlock_blocking(&self, scope: Scope, key: &str) -> Result<usize, AbuseError> {
        let n = on(&*self.db, |rows| rows.unlock(scope, key))?;
        self.forget_all();
        Ok(n)
    }
}

/// Whole seconds to wait, at least 1 (`Retry-After: 0` would invite an immediate retry).
fn seconds(ms: i64) -> u64 {
    (ms.max(0) as u64).div_ceil(1000).max(1)
}

/// `telbase abuse unlock` on an open store: lifts the locks of an address (any address of
/// the /32 or /64 counted) or an account, and records it in the security log.
pub fn unlock(
    store: &mut dyn AbuseRows,
    target: &UnlockTarget,
    events: &dyn SecurityEvents,
) -> Result<usize, AbuseError> {
    let (scope, key) = target.subject();
    let n = store.unlock(scope, &key)?;
    if let Err(e) = events.record(&SecurityEvent::Unlocked {
        scope: scope.as_str(),
        key,
        counters: n,
    }) {
        tracing::error!(error = %e, "the unlock could not be recorded in the security log");
    }
    Ok(n)
}

/// What an operator unlocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockTarget {
    Address(IpAddr),
    Account(Account),
}

impl UnlockTarget {
    pub fn subject(&self) -> (Scope, String) {
        match self {
            UnlockTarget::Address(ip) => (Scope::Address, address_key(*ip)),
            UnlockTarget::Account(a) => (Scope::Account, a.key.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_account_ids_are_hashed_and_keys_round_trip() {
        assert_eq!(Account::user("42").key(), "user:42");
        let long = Account::token(&"x".repeat(500));
        assert!(long.key().starts_with("token:sha256-"), "{}", long.key());
        assert!(Account::user("a:b\n").key().starts_with("user:sha256-"));
        assert_eq!(Account::from_key("user:42"), Some(Account::user("42")));
        assert_eq!(Account::from_key("nokind"), None);
        assert_eq!(Account::from_key("user:a b"), None);
    }

    #[test]
    fn a_client_cannot_hide_behind_its_proxy_with_a_non_ascii_header() {
        let dir = tempfile::tempdir().unwrap();
        let db: Arc<dyn AbuseDb> = Arc::new(Mutex::new(
            crate::store::open(&crate::store::Location::Sqlite(dir.path().join("t.db"))).unwrap(),
        ));
        let abuse = Abuse::new(
            db,
            AbuseConfig {
                trusted_proxies: TrustedProxies::parse("10.0.0.0/8").unwrap(),
                ..AbuseConfig::default()
            },
        );
        let mut h = axum::http::HeaderMap::new();
        h.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.7").unwrap(),
        );
        assert_eq!(
            abuse.client_address("10.0.0.1".parse().unwrap(), &h),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn waits_are_whole_seconds_rounded_up() {
        assert_eq!(seconds(0), 1);
        assert_eq!(seconds(1), 1);
        assert_eq!(seconds(1000), 1);
        assert_eq!(seconds(1001), 2);
        assert_eq!(seconds(-5), 1);
    }
}
