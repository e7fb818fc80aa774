//! `telbase serve`: the GitHub App's HTTP side. This module owns the routes and what they
//! promise: `POST /webhooks/github` verifies the signature over the raw body before reading
//! anything, records the delivery and its reconcile jobs durably (deduplicated by
//! `X-GitHub-Delivery`) and answers 202 in milliseconds; the work happens from the queue.
//! `GET /healthz` says the process is up, `GET /readyz` that the store answers and the queue
//! is alive, `GET /metrics` reports in the Prometheus text format. Every answer carries HSTS.
//!
//! The layout follows axum's and crates.io's: one `AppState` behind an `Arc`, handlers that
//! only translate HTTP to calls on it, and blocking store calls moved off the async threads.

pub mod audit;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod runs;
pub mod sweep;
pub mod tls;
pub mod uptime;
pub mod watch;
pub mod worker;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::SecretString;
use serde_json::json;

use crate::github::webhook::{self, Event, Intent};

pub use metrics::Metrics;

/// A verified delivery, read into the jobs it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingDelivery {
    /// `X-GitHub-Delivery`: GitHub's id, the same on every redelivery.
    pub id: String,
    pub event: String,
    /// The decisions to carry out (never `Intent::Ignore`).
    pub intents: Vec<Intent>,
    /// Why nothing is done, when `intents` is empty.
    pub ignored: Vec<String>,
}

/// What recording a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First time seen: stored, with this many jobs queued.
    New { jobs: usize },
    /// Seen before (a redelivery): acknowledged, nothing queued again.
    Duplicate,
}

/// Where deliveries and jobs are kept: the store (SQLite, or PostgreSQL with several
/// replicas). Blocking; handlers call it on the blocking pool.
pub trait Inbox: Send + Sync + 'static {
    /// Record the delivery and queue its jobs in one transaction, or report a duplicate.
    fn record(&self, delivery: &IncomingDelivery) -> Result<Recorded, String>;
    /// Jobs queued or running (also proves the store answers).
    fn depth(&self) -> Result<u64, String>;
    /// Record a signed delivery that could not be read, so it shows in the delivery log and
    /// a redelivery of it is recognised.
    fn record_failed(&self, id: &str, event: &str, error: &str) -> Result<(), String>;
}

/// Everything the handlers share.
pub struct AppState {
    /// The current webhook secret and, during a rotation, the previous one.
    pub webhook_secrets: Vec<SecretString>,
    pub inbox: Arc<dyn Inbox>,
    pub metrics: Arc<Metrics>,
    /// Failure counters, lockouts and rate limits (`crate::abuse`): bad signatures are
    /// counted per source address in the store, shared by every replica.
    pub abuse: Arc<crate::abuse::Abuse>,
    /// Deployed URLs and their probe results, for pages that show them.
    pub uptime: Arc<uptime::UptimeBoard>,
    /// Wakes this process's idle workers when a delivery queues jobs, so a push is picked up
    /// at once rather than at their next look at the queue (other replicas still look every
    /// half second).
    pub wake: Arc<tokio::sync::Notify>,
    /// The security log (`crate::audit`): handlers record through it.
    pub audit: Arc<audit::ServerAudit>,
}

/// Lets API handlers on this state take [`crate::abuse::Guard`].
impl crate::abuse::http::HasAbuse for Arc<AppState> {
    fn abuse(&self) -> Arc<crate::abuse::Abuse> {
        self.abuse.clone()
    }
}

/// The router with every route and limit.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/webhooks/github",
            post(github_webhook).layer(DefaultBodyLimit::max(webhook::MAX_BODY_BYTES)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(axum::middleware::map_response(hsts))
        .with_state(state)
}

/// HSTS on every answer: browsers that reach the server over HTTPS keep using HTTPS (the
/// header is ignored over plain HTTP, so it is harmless behind a TLS proxy too).
async fn hsts(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000; includeSubDomains"),
    );
    resp
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// The audit event of a delivery refused for its signature. The event header is the
/// sender's: kept only when it is a plain event name.
fn webhook_signature_failed(
    peer: std::net::IpAddr,
    event: &str,
    error: &dyn std::fmt::Display,
) -> crate::audit::AuditEvent {
    use crate::audit::{Action, Actor, AuditEvent, Details, Outcome};
    let plain = !event.is_empty()
        && event.len() <= 64
        && event.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    AuditEvent::new(
        Actor::anonymous("github-webhook-sender"),
        Action::AUTH_WEBHOOK_SIGNATURE_FAILED,
        Outcome::Failure,
    )
    .from(peer)
    .on("webhook", "github")
    .with(
        Details::new()
            .text(
                "event",
                if plain {
                    event
                } else {
                    "(not a GitHub event name)"
                },
            )
            .text("reason", error.to_string()),
    )
}

/// GitHub's delivery ids are GUIDs; anything else is refused before it reaches the store.
fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn github_webhook(
    State(app): State<Arc<AppState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let event = h("x-github-event").unwrap_or_default().to_owned();
    // The signature first: nothing about an unverified body is trusted or parsed. A valid
    // signature is never refused, whatever else came from its address (GitHub delivers
    // every App's hooks from the same ranges: see `Abuse::webhook_failure`); bad ones are
    // counted per address in the store, and a locked address gets 429.
    if let Err(e) = webhook::verify(&app.webhook_secrets, &body, h("x-hub-signature-256")) {
        let address = app.abuse.client_address(peer.ip(), &headers);
        let locked = app.abuse.webhook_failure(address).await;
        tracing::warn!(error = %e, peer = %peer.ip(), %address, throttled = locked.is_some(), "webhook refused");
        if locked.is_none() {
            // Refusals of a locked address are not recorded one by one (the lock itself is,
            // as an anomaly): one attacker cannot turn a flood into as many audit writes.
            app.audit
                .record_in_background(webhook_signature_failed(address, &event, &e));
        }
        if let Some(wait) = locked {
            app.metrics.delivery(&event, "throttled");
            return crate::abuse::http::too_many(
                wait,
                "too many deliveries with bad signatures from this address; slow down",
            );
        }
        app.metrics.delivery(&event, "bad_signature");
        return problem(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let Some(id) = h("x-github-delivery").filter(|id| valid_delivery_id(id)) else {
        app.metrics.delivery(&event, "bad_payload");
        return problem(
            StatusCode::BAD_REQUEST,
            "missing or malformed X-GitHub-Delivery header",
        );
    };
    if event.is_empty() {
        app.metrics.delivery(&event, "bad_payload");
        return problem(StatusCode::BAD_REQUEST, "missing X-GitHub-Event header");
    }
    let parsed = match webhook::parse(&event, &body) {
        Ok(p) => p,
        Err(e) => {
            app.metrics.delivery(&event, "bad_payload");
            let (inbox, id, ev, msg) = (
                app.inbox.clone(),
                id.to_owned(),
                event.clone(),
                e.to_string(),
            );
            let _ = tokio::task::spawn_blocking(move || inbox.record_failed(&id, &ev, &msg)).await;
            return problem(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    match &parsed {
        Event::Other(name) => {
            tracing::debug!(event = %name, delivery = id, "event not used");
            app.metrics.delivery(&event, "ignored");
            return StatusCode::NO_CONTENT.into_response();
        }
        Event::Ping(p) => {
            app.metrics.delivery(&event, "accepted");
            return (
                StatusCode::OK,
                axum::Json(json!({"pong": true, "hook_id": p.hook_id})),
            )
                .into_response();
        }
        _ => {}
    }
    let (intents, ignored): (Vec<Intent>, Vec<Intent>) = parsed
        .intents()
        .into_iter()
        .partition(|i| !matches!(i, Intent::Ignore(_)));
    let delivery = IncomingDelivery {
        id: id.to_owned(),
        event: event.clone(),
        intents,
        ignored: ignored
            .into_iter()
            .filter_map(|i| match i {
                Intent::Ignore(why) => Some(why),
                _ => None,
            })
            .collect(),
    };
    let inbox = app.inbox.clone();
    let recorded = tokio::task::spawn_blocking(move || {
        let r = inbox.record(&delivery);
        (r, delivery)
    })
    .await;
    match recorded {
        Ok((Ok(Recorded::New { jobs }), delivery)) => {
            // One permit per job: a worker busy right now finds its permit when it is done.
            for _ in 0..jobs {
                app.wake.notify_one();
            }
            app.metrics.delivery(&event, "accepted");
            tracing::info!(delivery = %delivery.id, event = %event, jobs, ignored = ?delivery.ignored, "delivery recorded");
            (
                StatusCode::ACCEPTED,
                axum::Json(
                    json!({"delivery": delivery.id, "jobs": jobs, "ignored": delivery.ignored}),
                ),
            )
                .into_response()
        }
        Ok((Ok(Recorded::Duplicate), delivery)) => {
            app.metrics.delivery(&event, "duplicate");
            tracing::info!(delivery = %delivery.id, "redelivery acknowledged, not re-run");
            (
                StatusCode::OK,
                axum::Json(json!({"delivery": delivery.id, "duplicate": true})),
            )
                .into_response()
        }
        Ok((Err(e), _)) => {
            app.metrics.delivery(&event, "error");
            tracing::error!(error = %e, "cannot record a delivery");
            // GitHub shows the delivery as failed; redelivery or the polling fallback
            // brings it back once the store answers.
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the delivery could not be recorded; redeliver it later",
            )
        }
        Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let inbox = app.inbox.clone();
    match tokio::task::spawn_blocking(move || inbox.depth()).await {
        Ok(Ok(depth)) => {
            app.metrics.queue_depth.set(depth as i64);
            (
                StatusCode::OK,
                axum::Json(json!({"store": "ok", "queue_depth": depth})),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            // Anyone may ask /readyz; the error names the database, so it goes to the log.
            tracing::warn!(error = %e, "readiness: the store does not answer");
            problem(StatusCode::SERVICE_UNAVAILABLE, "store not ready")
        }
        Err(_) => problem(StatusCode::SERVICE_UNAVAILABLE, "store not ready"),
    }
}

async fn metrics_text(State(app): State<Arc<AppState>>) -> Response {
    if let Ok(Ok(depth)) = {
        let inbox = app.inbox.clone();
        tokio::task::spawn_blocking(move || inbox.depth()).await
    } {
        app.metrics.queue_depth.set(depth as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// What `telbase serve` needs to run.
pub struct ServeConfig {
    pub listen: std::net::SocketAddr,
    pub store: crate::store::Location,
    pub app: crate::github::app::AppConfig,
    /// The current webhook secret first; a previous one during rotation.
    pub webhook_secrets: Vec<SecretString>,
    pub credentials: crate::providers::Credentials,
    pub http: crate::providers::http::HttpConfig,
    /// Opens sealed values with the server's age identity.
    pub opener: Arc<dyn crate::apply::Opener>,
    /// Reconciles run at once in this process (each one still takes one key at a time).
    pub workers: usize,
    pub public_url: Option<String>,
    /// Rotate the stored-secrets master key on a schedule (the keyring file and how often).
    pub key_rotation: Option<KeyRotation>,
    /// How long a claimed job stays a worker's without renewal: after a crash, the time
    /// before another worker (or the restarted server) takes it over.
    pub lease: std::time::Duration,
    /// How often to compare each repository's production branch head with the commit last
    /// reconciled there (GitHub does not redeliver failed webhooks); `None`: never.
    pub poll: Option<std::time::Duration>,
    /// How often the drift schedules are looked at (each repository's own cron decides when
    /// a check is due); `None`: never.
    pub drift_tick: Option<std::time::Duration>,
    /// Git repositories to poll (`--watch`). With sources and no webhook secret the server
    /// runs without GitHub: the App is not used and every webhook is refused.
    pub watch: Option<watch::WatchConfig>,
    /// How often the preview sweep runs (closed, expired and orphaned previews; old run
    /// records); `None`: never.
    pub sweep: Option<std::time::Duration>,
}

/// The server's edge: TLS termination, uptime probes and the notification webhook
/// (`serve::tls`, `serve::uptime`, `serve::notify`). The default is plain HTTP, no probes,
/// no notifications.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub tls: Option<tls::TlsConfig>,
    pub uptime: uptime::UptimeConfig,
    pub notify: Option<notify::NotifyConfig>,
    /// Serve `GET /runs?repo=…`, the list of a repository's runs. Off by default: the list
    /// hands out run ids (the only key to a run page) to anyone who can reach the server.
    pub run_list: bool,
    /// Trusted proxies, lockout rules, rate limits and the security-events sink.
    pub abuse: crate::abuse::AbuseConfig,
    /// The security log's keys and retention (`crate::audit::AuditLog::from_env`); `None`: a
    /// log without a key, which records nothing and says so in the server's log.
    pub audit: Option<crate::audit::AuditLog>,
    /// How often the leader applies the audit retention (`None`: never; default daily).
    pub audit_prune_every: Option<std::time::Duration>,
    /// Mount the control plane's `/api/v1` (users, teams, tokens, sessions, device login;
    /// see `crate::control`). Off by default.
    pub control: Option<ControlConfig>,
    /// The dashboard's sign-in providers (`crate::web::oidc`), used when `control` is on.
    pub signin: crate::web::oidc::Providers,
}

/// The control plane's settings: the key its stored hashes are made with.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub key: crate::control::secrets::ServerKey,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            tls: None,
            uptime: uptime::UptimeConfig {
                every: None,
                ..uptime::UptimeConfig::default()
            },
            notify: None,
            run_list: false,
            abuse: crate::abuse::AbuseConfig::default(),
            audit: None,
            audit_prune_every: Some(std::time::Duration::from_secs(24 * 60 * 60)),
            control: None,
            signin: crate::web::oidc::Providers::default(),
        }
    }
}

/// Scheduled master-key rotation: when the keyring file was last written (by a rotation or
/// by hand) longer ago than `every`, the server runs the same resumable rotation as `telbase
/// keys rotate --generate`.
#[derive(Debug, Clone)]
pub struct KeyRotation {
    pub keyring: std::path::PathBuf,
    pub every: std::time::Duration,
    /// How often the schedule is checked.
    pub check: std::time::Duration,
}

/// Rotate now if the keyring is older than `every`; `Ok(true)` if a rotation ran.
pub fn rotate_if_due(
    rotation: &KeyRotation,
    store: &crate::store::Location,
) -> Result<bool, String> {
    let age = std::fs::metadata(&rotation.keyring)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    // A missing keyring (no stored values yet) or a fresh one: nothing to do.
    if age.is_none_or(|a| a < rotation.every) {
        return Ok(false);
    }
    let mut s = crate::store::open(store).map_err(|e| e.to_string())?;
    let report =
        crate::secrets::stored::rotate_keyring(&mut s, &rotation.keyring, true, 100, |_| {})
            .map_err(|e| e.to_string())?;
    tracing::info!(
        target = %report.target,
        rewrapped = report.rewrapped,
        retired = ?report.retired,
        "master key rotated on schedule"
    );
    Ok(true)
}

/// Records a scheduled master-key rotation as an administrative action (the rotation has
/// happened either way: a failure to record is logged).
fn record_rotation(audit: &audit::ServerAudit, rotation: &KeyRotation) {
    use crate::audit::{Action, Actor, AuditEvent, Outcome, SecurityEvents as _};
    let current = crate::secrets::envelope::read_keyring_file(&rotation.keyring)
        .ok()
        .and_then(|k| k.current().map(|c| c.id.clone()))
        .unwrap_or_else(|| "unknown".into());
    let event = AuditEvent::new(
        Actor::system("key-rotation"),
        Action::ADMIN_KEY_ROTATED,
        Outcome::Success,
    )
    .on("master_key", current);
    if let Err(e) = audit.record(event) {
        tracing::error!(error = %e, "the key rotation could not be written to the audit log");
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    GitHub(#[from] crate::github::app::GitHubError),
    #[error("providers: {0}")]
    Http(String),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("no webhook secret: set GITHUB_WEBHOOK_SECRET or GITHUB_WEBHOOK_SECRET_FILE")]
    NoWebhookSecret,
    #[error("--watch: {0}")]
    Watch(#[from] watch::WatchError),
    #[error(
        "--watch with a PostgreSQL store: watched repositories are fetched into this server's own cache, which another replica cannot read. Watch from one server with an SQLite store, or use the GitHub App for several replicas"
    )]
    WatchWithReplicas,
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("notifications: {0}")]
    Notify(#[from] notify::NotifyError),
    #[error("uptime probes: {0}")]
    Uptime(String),
}

/// A running server.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub queue: Arc<queue::StoreQueue>,
    pub metrics: Arc<Metrics>,
    /// What the workers run jobs with (the sweep and tests use its GitHub client and
    /// provider settings).
    pub reconciler: Arc<worker::Reconciler>,
    /// The deployed URLs and their probe results (for run pages).
    pub uptime: Arc<uptime::UptimeBoard>,
    /// The certificate in use when serving HTTPS.
    pub tls: Option<Arc<tls::Tls>>,
    /// Failure counters, locks and rate limits, for the API routes' [`crate::abuse::Guard`].
    pub abuse: Arc<crate::abuse::Abuse>,
    shutdown: tokio::sync::watch::Sender<bool>,
    http: tokio::task::JoinHandle<()>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// Open the store, bind, and start the HTTP side and the workers (plain HTTP, no probes).
pub async fn start(config: ServeConfig) -> Result<Running, ServeError> {
    start_with(config, EdgeConfig::default()).await
}

/// [`start`], with TLS, uptime probes and notifications as `edge` says.
pub async fn start_with(config: ServeConfig, edge: EdgeConfig) -> Result<Running, ServeError> {
    // Without a webhook secret no delivery can be verified: only a server that watches git
    // repositories may run so, and it then uses no GitHub App.
    let without_github = config.webhook_secrets.is_empty();
    // An App configured without its webhook secret is a mistake, not a wish to run without
    // GitHub (that is an App id of 0, as `--watch` without GITHUB_APP_ID sets it).
    if without_github && (config.watch.is_none() || config.app.app_id != 0) {
        return Err(ServeError::NoWebhookSecret);
    }
    if config.watch.is_some() && matches!(config.store, crate::store::Location::Postgres(_)) {
        return Err(ServeError::WatchWithReplicas);
    }
    let https = edge.tls.clone().map(tls::Tls::new).transpose()?;
    let store = crate::store::open(&config.store)?;
    let queue = Arc::new(queue::StoreQueue::new(store));
    let metrics = Arc::new(Metrics::new());
    let github = Arc::new(if without_github {
        crate::github::app::GitHubApp::without_app(&config.app.base_url)?
    } else {
        crate::github::app::GitHubApp::new(&config.app)?
    });
    // Sources are checked before anything runs: a bad one stops the start.
    let (watch_stop, watch_rx) = tokio::sync::watch::channel(false);
    let watchers = match &config.watch {
        Some(w) => watch::spawn(w, queue.clone(), watch_rx)?,
        None => Vec::new(),
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let notifier = edge
        .notify
        .clone()
        .map(|n| notify::Notifier::start(n, rx.clone()))
        .transpose()?;
    let audit_log = edge.audit.clone().unwrap_or_else(|| {
        tracing::warn!("no audit key (TELBASE_AUDIT_KEY_FILE or TELBASE_AUDIT_KEY): security events are refused, not recorded unprotected; see docs/audit.md");
        crate::audit::AuditLog::without_key()
    });
    let audit = Arc::new(audit::ServerAudit {
        log: audit_log,
        queue: queue.clone(),
    });
    // Abuse protection's anomalies and unlocks go into the audit log, unless a caller gave
    // it another sink.
    let mut abuse_config = edge.abuse.clone();
    if abuse_config.events.is_none() {
        abuse_config.events = Some(audit.clone() as Arc<dyn crate::abuse::SecurityEvents>);
    }
    let abuse = Arc::new(
        crate::abuse::Abuse::new(
            queue.clone() as Arc<dyn crate::abuse::AbuseDb>,
            abuse_config,
        )
        .with_notifier(notifier.clone())
        .with_metrics(metrics.clone()),
    );
    let board = Arc::new(uptime::UptimeBoard::new(metrics.clone(), notifier));
    let http = crate::providers::http::Http::new(config.http.clone())
        .map_err(|e| ServeError::Http(e.to_string()))?
        .with_observer(metrics.provider_observer());
    let reconciler = Arc::new(worker::Reconciler {
        github,
        credentials: config.credentials.clone(),
        http,
        opener: config.opener.clone(),
        store: Some(config.store.clone()),
        metrics: metrics.clone(),
        concurrency: 8,
        public_url: config.public_url.clone(),
        runs: Some(queue.clone()),
        observer: Some(board.clone()),
        require_registration: edge.control.is_some(),
        registrations: Arc::default(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| ServeError::Listen {
            addr: config.listen,
            error,
        })?;
    let addr = listener.local_addr().map_err(|error| ServeError::Listen {
        addr: config.listen,
        error,
    })?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let state = Arc::new(AppState {
        webhook_secrets: config.webhook_secrets.clone(),
        inbox: queue.clone(),
        metrics: metrics.clone(),
        abuse: abuse.clone(),
        uptime: board.clone(),
        wake: wake.clone(),
        audit: audit.clone(),
    });
    let app = router(state).merge(runs::router(
        queue.clone(),
        edge.run_list,
        Some(board.clone()),
    ));
    let app = match &edge.control {
        Some(c) => {
            let public = config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}"));
            let secure = https.is_some() || public.starts_with("https://");
            let mut state = crate::control::api::ControlState::new(
                crate::store::open(&config.store)?,
                c.key.clone(),
                public,
                secure,
            );
            // Its security events go into the audit log (refused without an audit key, so
            // the control plane answers 503 rather than act unrecorded).
            state.events = audit.clone();
            // Behind a proxy, the client's address as abuse protection resolves it
            // (`TELBASE_TRUSTED_PROXIES`), for the limits and the security log alike.
            let resolver = abuse.clone();
            state.client_address =
                Arc::new(move |peer, headers| resolver.client_address(peer, headers));
            // The same counters and limits as the webhook endpoint, in the same store.
            state.abuse = Some(abuse.clone());
            let state = Arc::new(state);
            // The dashboard (sign-in, identity pages) on the same state, outside /api/v1.
            let mut web = crate::web::Web::new(state.clone(), edge.signin.clone());
            web.abuse = Some(abuse.clone());
            app.merge(crate::control::api::router(state))
                .merge(crate::web::router(Arc::new(web)))
        }
        None => app,
    };
    let mut stop_http = rx.clone();
    let stopped = async move {
        let _ = stop_http.wait_for(|s| *s).await;
    };
    let make = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let http = match &https {
        None => tokio::spawn(async move {
            let _ = axum::serve(listener, make)
                .with_graceful_shutdown(stopped)
                .await;
        }),
        Some(t) => {
            use axum::serve::ListenerExt as _;
            t.watch(rx.clone());
            let listener = tls::TlsListener::new(listener, t, rx.clone())
                .map_err(|error| ServeError::Listen { addr, error })?
                // `tap_io` gives the listener axum's peer-address plumbing (ConnectInfo).
                .tap_io(|_| {});
            tokio::spawn(async move {
                let _ = axum::serve(listener, make)
                    .with_graceful_shutdown(stopped)
                    .await;
            })
        }
    };
    uptime::spawn(board.clone(), &edge.uptime, rx.clone()).map_err(ServeError::Uptime)?;
    if let Some(rotation) = config.key_rotation.clone() {
        let location = config.store.clone();
        let (queue, mut stop, audit) = (queue.clone(), rx.clone(), audit.clone());
        tokio::spawn(async move {
            loop {
                let (r, l) = (rotation.clone(), location.clone());
                let leads = leads(&queue).await;
                let audit = audit.clone();
                match tokio::task::spawn_blocking(move || {
                    let rotated = leads && rotate_if_due(&r, &l)?;
                    if rotated {
                        record_rotation(&audit, &r);
                    }
                    Ok::<bool, String>(rotated)
                })
                .await
                {
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "scheduled key rotation failed; it runs again at the next check")
                    }
                    Err(e) => tracing::error!(error = %e, "scheduled key rotation task failed"),
                    Ok(Ok(_)) => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(rotation.check) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }
    if let Some(every) = edge.audit_prune_every {
        let (queue, audit, mut stop) = (queue.clone(), audit.clone(), rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                // One replica prunes (the prune itself is serialized by the chain head lock).
                if audit.log.keys().is_err() || !leads(&queue).await {
                    continue;
                }
                let a = audit.clone();
                match tokio::task::spawn_blocking(move || a.prune_now(chrono::Utc::now())).await {
                    Ok(Ok(r)) => tracing::info!(pruned = r.pruned, "audit retention applied"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "the audit retention prune failed; it runs again next time")
                    }
                    Err(e) => tracing::error!(error = %e, "the audit retention task failed"),
                }
            }
        });
    }
    if let Some(every) = config.poll {
        let (queue, github, mut stop) = (queue.clone(), reconciler.github.clone(), rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if !leads(&queue).await {
                    continue;
                }
                if let Err(e) = poll_once(&queue, &github).await {
                    tracing::warn!(error = %e, "polling GitHub failed; trying again next time");
                }
            }
        });
    }
    if let Some(every) = config.sweep {
        let (queue, reconciler, mut stop) = (queue.clone(), reconciler.clone(), rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                // One replica sweeps, as one polls.
                if !leads(&queue).await {
                    continue;
                }
                match sweep::sweep_once(&queue, &reconciler, chrono::Utc::now()).await {
                    Ok(r) => tracing::debug!(report = ?r, "preview sweep"),
                    Err(e) => {
                        tracing::warn!(error = %e, "the preview sweep failed; it runs again next time")
                    }
                }
            }
        });
    }
    {
        // Failures past their window and forgotten locks go; one replica prunes.
        let (queue, abuse, mut stop) = (queue.clone(), abuse.clone(), rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(300)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if !leads(&queue).await {
                    continue;
                }
                let a = abuse.clone();
                match tokio::task::spawn_blocking(move || a.prune_blocking()).await {
                    Ok(Ok(p)) => tracing::debug!(pruned = ?p, "abuse counters pruned"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "abuse counters not pruned; trying again later")
                    }
                    Err(e) => tracing::warn!(error = %e, "the abuse prune task failed"),
                }
            }
        });
    }
    if let Some(every) = config.drift_tick {
        let (queue, mut stop) = (queue.clone(), rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if !leads(&queue).await {
                    continue;
                }
                let q = queue.clone();
                let now = chrono::Utc::now();
                match tokio::task::spawn_blocking(move || drift_once(&q, now)).await {
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the drift schedule could not be read")
                    }
                    Err(e) => tracing::warn!(error = %e, "the drift schedule task failed"),
                    Ok(Ok(_)) => {}
                }
            }
        });
    }
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "telbase".into());
    let workers = (0..config.workers.max(1))
        .map(|n| {
            tokio::spawn(worker::work(
                queue.clone(),
                reconciler.clone(),
                format!("{host}:{}:{n}", std::process::id()),
                config.lease,
                rx.clone(),
                wake.clone(),
            ))
        })
        .collect();
    // The watchers stop with the server.
    let mut stop_watch = rx.clone();
    tokio::spawn(async move {
        let _ = stop_watch.wait_for(|s| *s).await;
        let _ = watch_stop.send(true);
        for w in watchers {
            let _ = w.await;
        }
    });
    Ok(Running {
        addr,
        queue,
        metrics,
        reconciler,
        uptime: board,
        tls: https,
        abuse,
        shutdown: tx,
        http,
        workers,
    })
}

/// Whether this replica runs the periodic tasks now (see [`queue::StoreQueue::lead`]); a
/// store that cannot say is taken as "not now": the tasks run again at the next tick.
async fn leads(queue: &Arc<queue::StoreQueue>) -> bool {
    let q = queue.clone();
    match tokio::task::spawn_blocking(move || q.lead()).await {
        Ok(Ok(leads)) => leads,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot tell whether this replica leads; skipping a periodic task");
            false
        }
        Err(_) => false,
    }
}

/// One round of the polling fallback: for each repository whose production branch is known,
/// queue a reconcile of the branch's head if it is not the commit last reconciled. The
/// synthetic delivery id (`poll:REPO@SHA`) makes it happen once per commit, however many
/// rounds see it. Returns how many were queued.
pub async fn poll_once(
    queue: &Arc<queue::StoreQueue>,
    github: &crate::github::app::GitHubApp,
) -> Result<usize, String> {
    let repos = {
        let q = queue.clone();
        tokio::task::spawn_blocking(move || q.with(|s| s.production_repositories()))
            .await
            .map_err(|e| e.to_string())??
    };
    let mut queued = 0;
    for crate::store::ProductionRepo {
        repo,
        installation,
        branch,
        reconciled,
        ..
    } in repos
    {
        // Watched git repositories are polled by `watch`, not through GitHub.
        if installation == watch::WATCH_INSTALLATION {
            continue;
        }
        let head = match github.branch_head(installation, &repo, &branch).await {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, repo, "cannot read the production branch");
                continue;
            }
        };
        if reconciled.as_deref() == Some(head.as_str()) {
            continue;
        }
        let delivery = IncomingDelivery {
            id: format!("poll:{repo}@{head}"),
            event: "poll".into(),
            intents: vec![Intent::Push {
                installation,
                repo: repo.clone(),
                branch: branch.clone(),
                sha: head.clone(),
            }],
            ignored: Vec::new(),
        };
        let q = queue.clone();
        let r = tokio::task::spawn_blocking(move || q.record(&delivery))
            .await
            .map_err(|e| e.to_string())??;
        if let Recorded::New { .. } = r {
            tracing::info!(repo, sha = %head, "a push was missed; reconciling the production head");
            queued += 1;
        }
    }
    // Open pull requests too: previews for head commits that never had one, teardowns for
    // previews whose pull request closed without a webhook.
    let polled = sweep::poll_pulls(queue, github).await?;
    Ok(queued + polled.report.previews + polled.report.closed)
}

/// Queue a drift check for every repository whose `reconcile.drift` cron has come due since
/// its schedule was last looked at (at most one per repository per round, however many
/// times were missed while the server was down). Returns how many were queued.
pub fn drift_once(
    queue: &queue::StoreQueue,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize, String> {
    use croner::parser::{CronParser, Seconds, Year};
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let mut queued = 0;
    for r in queue.with(|s| s.production_repositories())? {
        let (Some(sha), Some(cron)) = (&r.reconciled, &r.drift_cron) else {
            continue;
        };
        // Watched git repositories get their drift checks from `watch`.
        if r.installation == watch::WATCH_INSTALLATION {
            continue;
        }
        let Ok(cron) = parser.parse(cron) else {
            // Validated when the file was loaded; a bad one here is skipped, not fatal.
            continue;
        };
        let from = r
            .drift_checked_at
            .and_then(chrono::DateTime::from_timestamp_millis)
            .unwrap_or(now);
        let Ok(due) = cron.find_next_occurrence(&from, false) else {
            continue;
        };
        if due > now {
            continue;
        }
        let intent = Intent::Drift {
            installation: r.installation,
            repo: r.repo.clone(),
            branch: r.branch.clone(),
            sha: sha.clone(),
        };
        let (serial_repo, key) = intent.serial_key();
        let json = serde_json::to_string(&intent).map_err(|e| e.to_string())?;
        let id = format!("drift:{}@{}:{}", r.repo, sha, due.timestamp());
        if queue
            .with(|s| s.record_delivery(&id, "drift", "", &[(serial_repo, key, json)]))?
            .is_some()
        {
            queued += 1;
        }
        queue.with(|s| s.drift_checked(&r.repo, now.timestamp_millis()))?;
    }
    Ok(queued)
}

impl Running {
    /// Stop accepting deliveries, let the workers finish the job in hand, and return.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.http.await;
        for w in self.workers {
            let _ = w.await;
        }
        let queue = self.queue.clone();
        let _ = tokio::task::spawn_blocking(move || queue.resign()).await;
    }
}
