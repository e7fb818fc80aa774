//! The built-in provider emulator: one loopback HTTP listener that serves the provider APIs
//! Telbase talks to, under documented path prefixes, with the
//! providers' real paths, fields, error envelopes, pagination and asynchronous operations,
//! checked against their published descriptions by the conformance test. Prefixes:
//! `/vercel`, `/neon/api/v2`, `/turso`, `/cloudflare/client/v4`, `/cloud-run`,
//! `/secret-manager`, `/cloud-sql` (see `prefix`), and GitHub's REST API under `/github`
//! for the GitHub App (its own authentication; see `github`). Keyless Google auth has
//! `/actions-oidc` (the Actions runner's OIDC token service), `/sts` and `/iamcredentials`
//! (see `keyless`); the tokens they issue work on the Google APIs here.
//!
//! It is stateful (what you create is there when you list), answers in small pages to
//! exercise clients' pagination, checks the bearer token, and injects faults on request:
//! latency, 5xx, 429 with `Retry-After`, timeouts, connection resets and garbage bodies,
//! from a seeded generator so a failing run can be repeated. `--record` writes every
//! exchange as a JSON line (credentials and secret values redacted). `/_admin` changes
//! resources behind Telbase's back (drift), reads request counters and resource counts.
//!
//! Routing is by hand (a slice match on path segments per provider) rather than axum's
//! router: the providers' paths overlap across versions and prefixes, and one fallback
//! handler keeps faults, recording and counting in one place.

mod cloudflare;
mod cloudsql;
mod github;
mod google;
pub mod idp;
mod keyless;
mod neon;
mod turso;
mod vercel;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::model::Provider;

/// The token the emulator accepts, and that clients send to it. Real tokens are never sent
/// to the emulator.
pub const EMULATOR_TOKEN: &str = "telbase-emulator-token";

pub use keyless::{ACTIONS_REQUEST_TOKEN, GITHUB_ISSUER};

/// Where each provider's API lives below the emulator's address.
pub fn prefix(provider: Provider) -> &'static str {
    match provider {
        Provider::Vercel => "/vercel",
        Provider::Neon => "/neon/api/v2",
        Provider::CloudRun => "/cloud-run",
        Provider::SecretManager => "/secret-manager",
        Provider::CloudSql => "/cloud-sql",
        Provider::Turso => "/turso",
        Provider::Cloudflare => "/cloudflare/client/v4",
    }
}

/// Fault injection settings. Rates are probabilities per request, in [0, 1].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Added before every answer.
    pub latency: Duration,
    pub rate_5xx: f64,
    pub rate_429: f64,
    /// The request is carried out, then the answer never comes (the client times out).
    pub rate_timeout: f64,
    /// The request is carried out, then the connection is cut in the middle of the body.
    pub rate_reset: f64,
    /// The request is carried out and the answer is not JSON.
    pub rate_garbage: f64,
    /// How long a "timeout" stalls.
    pub stall: Duration,
    pub seed: u64,
}

/// Emulator settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub faults: Faults,
    /// Largest page a list endpoint returns, whatever the client asks for.
    pub page_size: usize,
    /// Polls before an asynchronous operation (a Neon operation, a Vercel build) finishes.
    pub async_polls: u32,
    pub record: Option<std::path::PathBuf>,
    /// Keep every exchange in memory exactly as it crossed the wire, unredacted
    /// ([`Handle::exchanges`]). Only for tests that must see what Telbase really sent, such
    /// as the leak test; never set by the CLI.
    pub capture: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            faults: Faults::default(),
            page_size: 3,
            async_polls: 1,
            record: None,
            capture: false,
        }
    }
}

/// Everything the emulated providers hold.
#[derive(Default)]
pub(crate) struct World {
    pub(crate) vercel: vercel::State,
    pub(crate) neon: neon::State,
    pub(crate) turso: turso::State,
    pub(crate) cloudflare: cloudflare::State,
    pub(crate) google: google::State,
    pub(crate) cloudsql: cloudsql::State,
    pub(crate) github: github::State,
    pub(crate) keyless: keyless::State,
    seq: u64,
}

impl World {
    /// A fresh number for ids and timestamps (monotonic, so list order is stable).
    pub(crate) fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A millisecond timestamp that is unique and increasing.
    pub(crate) fn now_ms(&mut self) -> u64 {
        1_767_225_600_000 + self.next() * 1000
    }

    pub(crate) fn now_rfc3339(&mut self) -> String {
        let ms = self.now_ms();
        chrono::DateTime::from_timestamp_millis(ms as i64)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }
}

/// Request counters, by provider and by kind.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    pub requests: u64,
    pub reads: u64,
    pub writes: u64,
    pub by_provider: BTreeMap<String, ProviderCounters>,
    pub faults: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ProviderCounters {
    pub reads: u64,
    pub writes: u64,
    /// `"GET /v10/projects" → n`, by the route as written in the provider's docs.
    pub routes: BTreeMap<String, u64>,
}

struct Inner {
    config: Config,
    world: Mutex<World>,
    counters: Mutex<Counters>,
    rng: Mutex<fastrand::Rng>,
    record: Option<Mutex<std::fs::File>>,
    captured: Mutex<Vec<Exchange>>,
}

/// One request and its answer, unredacted (see [`Config::capture`]).
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The provider's name (`vercel`, `neon`, …, or `github`).
    pub provider: String,
    pub method: String,
    /// The path after the provider's prefix, as sent.
    pub path: String,
    /// The raw query string, as sent.
    pub query: String,
    /// The request body exactly as sent (empty when there was none).
    pub request_body: Vec<u8>,
    pub status: u16,
    pub response_body: Option<Value>,
    /// When the request arrived and when its answer was ready (latency included), so a
    /// benchmark can find the chain of calls that had to wait for each other.
    pub started: std::time::Instant,
    pub finished: std::time::Instant,
}

/// A running emulator.
pub struct Handle {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Handle {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn counters(&self) -> Counters {
        self.inner
            .counters
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Every exchange so far, when started with [`Config::capture`].
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.inner
            .captured
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// How many of each resource exist, for duplicate checks.
    pub fn inventory(&self) -> BTreeMap<String, u64> {
        self.inner
            .world
            .lock()
            .map(|w| inventory(&w))
            .unwrap_or_default()
    }

    /// Apply an admin drift request in-process; same body as `POST /_admin/drift`.
    pub fn drift(&self, body: &Value) -> Result<Value, String> {
        let mut w = self
            .inner
            .world
            .lock()
            .map_err(|_| "state poisoned".to_owned())?;
        drift(&mut w, body)
    }

    /// Seed the GitHub API's state; same body as `POST /_admin/github` (see
    /// `emulator::github::seed`).
    pub fn github_seed(&self, body: &Value) -> Result<Value, String> {
        let mut w = self
            .inner
            .world
            .lock()
            .map_err(|_| "state poisoned".to_owned())?;
        github::seed(&mut w.github, body)
    }

    /// Set the workflow the emulated OIDC tokens describe and the emulated pool's rules; same
    /// body as `POST /_admin/keyless` (see `emulator::keyless`).
    pub fn keyless(&self, body: &Value) -> Result<Value, String> {
        let mut w = self
            .inner
            .world
            .lock()
            .map_err(|_| "state poisoned".to_owned())?;
        keyless::seed(&mut w.keyless, body)
    }

    /// Stop listening and wait for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

fn inventory(w: &World) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    vercel::inventory(&w.vercel, &mut m);
    neon::inventory(&w.neon, &mut m);
    turso::inventory(&w.turso, &mut m);
    cloudflare::inventory(&w.cloudflare, &mut m);
    google::inventory(&w.google, &mut m);
    cloudsql::inventory(&w.cloudsql, &mut m);
    github::inventory(&w.github, &mut m);
    m
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("cannot open the record file {0}: {1}")]
    Record(String, std::io::Error),
}

/// Start the emulator on `addr` (port 0 picks a free one).
pub async fn start(addr: SocketAddr, config: Config) -> Result<Handle, StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Bind(addr.to_string(), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| StartError::Bind(addr.to_string(), e))?;
    let record = match &config.record {
        Some(p) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| StartError::Record(p.display().to_string(), e))?,
        )),
        None => None,
    };
    let inner = Arc::new(Inner {
        rng: Mutex::new(fastrand::Rng::with_seed(config.faults.seed)),
        config,
        world: Mutex::new(World::default()),
        counters: Mutex::new(Counters::default()),
        record,
        captured: Mutex::new(Vec::new()),
    });
    // The fake identity provider for the dashboard's sign-in (`/idp/google`, …).
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(inner.clone())
        .nest(
            "/idp",
            idp::router(idp::Idp::new(&format!("http://{local}/idp"))),
        );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Handle {
        addr: local,
        inner,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// A provider's answer, before faults and recording.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Option<Value>,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub(crate) fn ok(status: u16, body: Value) -> Self {
        Answer {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    pub(crate) fn empty(status: u16) -> Self {
        Answer {
            status,
            body: None,
            headers: Vec::new(),
        }
    }
}

/// A parsed request, as the provider routers see it.
pub(crate) struct Req<'a> {
    pub(crate) method: &'a Method,
    pub(crate) segments: Vec<&'a str>,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) body: Option<Value>,
    pub(crate) page_size: usize,
    pub(crate) async_polls: u32,
}

impl Req<'_> {
    pub(crate) fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The page size: what the client asked for, capped by the emulator's small pages.
    pub(crate) fn limit(&self) -> usize {
        self.q("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(20)
            .clamp(1, self.page_size)
    }
}

#[derive(Serialize)]
struct Record<'a> {
    provider: &'a str,
    method: &'a str,
    path: &'a str,
    query: &'a [(String, String)],
    request_body: Option<Value>,
    status: u16,
    response_body: Option<Value>,
    /// The fault injected into this exchange, if any (`429`, `5xx`, `timeout`, `reset`,
    /// `garbage`); the status and body are what the provider decided before the fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<&'static str>,
}

/// Replace secret values in a recorded body: env var values of secret types, passwords,
/// connection URIs, tokens, and Secret Manager payloads (`payload.data`). The emulator's
/// values are fake, but a recording is a file people share, and the habit is the point.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(payload)) = m.get_mut("payload")
                && let Some(data) = payload.get_mut("data")
                && data.is_string()
            {
                *data = Value::String("[redacted]".into());
            }
            let secret_type = matches!(
                m.get("type").and_then(Value::as_str),
                Some("sensitive" | "encrypted" | "secret")
            );
            for (k, x) in m.iter_mut() {
                let hide = matches!(
                    k.as_str(),
                    "password" | "uri" | "connection_uri" | "jwt" | "token"
                ) || (k == "value" && secret_type);
                if hide && x.is_string() {
                    *x = Value::String("[redacted]".into());
                } else {
                    redact(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

fn classify(path: &str) -> Option<(Provider, &str)> {
    [
        Provider::Neon,
        Provider::Vercel,
        Provider::Turso,
        Provider::Cloudflare,
        Provider::CloudRun,
        Provider::SecretManager,
        Provider::CloudSql,
    ]
    .into_iter()
    .find_map(|p| {
        let rest = path.strip_prefix(prefix(p))?;
        (rest.is_empty() || rest.starts_with('/')).then_some((p, rest))
    })
}

fn json_response(
    status: u16,
    body: Option<&Value>,
    headers: &[(&'static str, String)],
) -> Response {
    let mut resp = match body {
        Some(b) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [("content-type", "application/json")],
            b.to_string(),
        )
            .into_response(),
        None => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::NO_CONTENT)
            .into_response(),
    };
    for (k, v) in headers {
        if let Ok(v) = v.parse() {
            resp.headers_mut().insert(*k, v);
        }
    }
    resp
}

/// The provider's error envelope.
pub(crate) fn provider_error(p: Provider, status: u16, code: &str, message: &str) -> Answer {
    let body = match p {
        Provider::Neon => {
            json!({"code": code, "message": message, "request_id": format!("req-{status}")})
        }
        // Cloudflare's v4 envelope, also on errors.
        Provider::Cloudflare => json!({
            "success": false,
            "errors": [{"code": status * 10, "message": message}],
            "messages": [],
            "result": null,
        }),
        // Google's JSON error: numeric code, message, canonical status name.
        Provider::CloudRun | Provider::SecretManager | Provider::CloudSql => json!({
            "error": {"code": status, "message": message, "status": google_status(status, code)}
        }),
        Provider::Turso => json!({"error": message}),
        Provider::Vercel => json!({"error": {"code": code, "message": message}}),
    };
    Answer::ok(status, body)
}

/// Google's canonical status name for an HTTP status.
fn google_status(status: u16, code: &str) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 if code == "aborted" => "ABORTED",
        409 => "ALREADY_EXISTS",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let path = uri.path().to_owned();
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(rest) = path.strip_prefix("/_admin") {
        return admin(&inner, &method, rest, &body);
    }
    if let Some(rest) = path.strip_prefix("/github")
        && (rest.is_empty() || rest.starts_with('/'))
    {
        return serve_github(&inner, &method, rest, &uri, query, &headers, &body, started).await;
    }
    if let Some((api, rest)) = keyless::classify(&path) {
        let rest = rest.to_owned();
        return keyless::serve(&inner, api, &method, &rest, &uri, &headers, &body, started).await;
    }
    let Some((provider, rest)) = classify(&path) else {
        return json_response(
            404,
            Some(
                &json!({"error": {"code": "not_found", "message": format!("the emulator serves /vercel, /neon/api/v2, /turso, /cloudflare/client/v4, /cloud-run, /secret-manager and /cloud-sql, not {path} (keyless Google auth: /actions-oidc, /sts, /iamcredentials)")}}),
            ),
            &[],
        );
    };
    let faults = inner.config.faults.clone();
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let write = method != Method::GET;
    let rest = rest.to_owned();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let route = route_name(provider, &method, &segments);
    if let Ok(mut c) = inner.counters.lock() {
        c.requests += 1;
        if write {
            c.writes += 1;
        } else {
            c.reads += 1;
        }
        let pc = c
            .by_provider
            .entry(provider.as_str().to_owned())
            .or_default();
        if write {
            pc.writes += 1;
        } else {
            pc.reads += 1;
        }
        *pc.routes.entry(route).or_default() += 1;
    }

    // One draw per request decides its fault (at most one), so a seed gives the same run.
    let fault: Option<&'static str> = {
        let mut rng = inner.rng.lock().unwrap_or_else(|e| e.into_inner());
        let r = rng.f64();
        let mut edge = 0.0;
        [
            ("429", faults.rate_429),
            ("5xx", faults.rate_5xx),
            ("timeout", faults.rate_timeout),
            ("reset", faults.rate_reset),
            ("garbage", faults.rate_garbage),
        ]
        .into_iter()
        .find(|(_, rate)| {
            edge += rate;
            r < edge
        })
        .map(|(name, _)| name)
    };
    if let (Some(name), Ok(mut c)) = (fault, inner.counters.lock()) {
        *c.faults.entry(name.to_owned()).or_default() += 1;
    }

    let answer = match fault {
        // Turned away before anything happens, as a gateway or rate limiter does.
        Some("429") => {
            let mut a = provider_error(
                provider,
                429,
                "rate_limited",
                "Too many requests, slow down",
            );
            a.headers.push(("retry-after", "1".into()));
            a
        }
        Some("5xx") => provider_error(
            provider,
            503,
            "internal_server_error",
            "The service is temporarily unavailable",
        ),
        _ => serve(
            &inner, provider, &method, &segments, &query, &headers, &body,
        ),
    };

    if inner.config.capture
        && let Ok(mut c) = inner.captured.lock()
    {
        c.push(Exchange {
            provider: provider.as_str().to_owned(),
            method: method.as_str().to_owned(),
            path: rest.clone(),
            query: uri.query().unwrap_or_default().to_owned(),
            request_body: body.to_vec(),
            status: answer.status,
            response_body: answer.body.clone(),
            started,
            finished: std::time::Instant::now(),
        });
    }

    if let Some(rec) = &inner.record {
        let mut req_body: Option<Value> = serde_json::from_slice(&body).ok();
        if let Some(b) = &mut req_body {
            redact(b);
        }
        let mut resp_body = answer.body.clone();
        if let Some(b) = &mut resp_body {
            redact(b);
        }
        let line = Record {
            provider: provider.as_str(),
            method: method.as_str(),
            path: &rest,
            query: &query,
            request_body: req_body,
            status: answer.status,
            response_body: resp_body,
            fault,
        };
        if let (Ok(mut f), Ok(s)) = (rec.lock(), serde_json::to_string(&line)) {
            let _ = writeln!(f, "{s}");
        }
    }

    // The faults below come after the provider acted: the hard case for a client.
    match fault {
        Some("timeout") => {
            tokio::time::sleep(faults.stall).await;
            json_response(answer.status, answer.body.as_ref(), &answer.headers)
        }
        Some("reset") => {
            // Headers and half a body, then the stream fails: hyper drops the connection.
            let text = answer
                .body
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default();
            let half = text.as_bytes()[..text.len() / 2].to_vec();
            Response::builder()
                .status(answer.status)
                .header("content-type", "application/json")
                .body(Body::from_stream(cut_stream(half)))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Some("garbage") => (
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK),
            [("content-type", "application/json")],
            "{\"projects\": [tru",
        )
            .into_response(),
        _ => json_response(answer.status, answer.body.as_ref(), &answer.headers),
    }
}

/// Auth as the providers do it (a bearer token, else 401/403), then the provider's routes.
fn serve(
    inner: &Inner,
    provider: Provider,
    method: &Method,
    segments: &[&str],
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        None => {
            return provider_error(
                provider,
                401,
                "unauthorized",
                "Missing authorization header",
            );
        }
        // Tokens the emulated STS and IAM Credentials issued work on the Google APIs.
        Some(t) if t != EMULATOR_TOKEN && !keyless::accepts(inner, provider, t) => {
            return provider_error(provider, 403, "forbidden", "The token is not valid");
        }
        Some(_) => {}
    }
    let parsed: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => Some(v),
            Err(_) => return provider_error(provider, 400, "bad_request", "Invalid JSON body"),
        }
    };
    let req = Req {
        method,
        segments: segments.to_vec(),
        query: query.to_vec(),
        body: parsed,
        page_size: inner.config.page_size,
        async_polls: inner.config.async_polls,
    };
    let mut w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
    match provider {
        Provider::Vercel => vercel::route(&mut w, &req),
        Provider::Neon => neon::route(&mut w, &req),
        Provider::Turso => turso::route(&mut w, &req, provider),
        Provider::Cloudflare => cloudflare::route(&mut w, &req, provider),
        Provider::CloudRun | Provider::SecretManager => google::route(&mut w, &req, provider),
        Provider::CloudSql => cloudsql::route(&mut w, &req),
    }
}

/// GitHub's API: its own authentication (App JWT or installation token, not the shared
/// emulator token) and its own clock (real time, because JWTs carry real timestamps).
/// Latency applies; the other faults do not yet.
#[allow(clippy::too_many_arguments)]
async fn serve_github(
    inner: &Inner,
    method: &Method,
    rest: &str,
    uri: &Uri,
    query: Vec<(String, String)>,
    headers: &HeaderMap,
    body: &[u8],
    started: std::time::Instant,
) -> Response {
    let latency = inner.config.faults.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        });
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let answer = {
        let mut w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
        if !body.is_empty() && parsed.is_none() {
            Answer::ok(
                400,
                json!({"message": "Problems parsing JSON", "documentation_url": "https://docs.github.com/rest"}),
            )
        } else {
            github::route(
                &mut w.github,
                method.as_str(),
                &segments,
                &query,
                parsed.as_ref(),
                token,
                now_ms,
            )
        }
    };
    if let Ok(mut c) = inner.counters.lock() {
        c.requests += 1;
        let pc = c.by_provider.entry("github".to_owned()).or_default();
        if method == Method::GET {
            pc.reads += 1;
        } else {
            pc.writes += 1;
        }
    }
    if inner.config.capture
        && let Ok(mut c) = inner.captured.lock()
    {
        c.push(Exchange {
            provider: "github".into(),
            method: method.as_str().to_owned(),
            path: rest.to_owned(),
            query: uri.query().unwrap_or_default().to_owned(),
            request_body: body.to_vec(),
            status: answer.status,
            response_body: answer.body.clone(),
            started,
            finished: std::time::Instant::now(),
        });
    }
    if let Some(rec) = &inner.record {
        let mut resp_body = answer.body.clone();
        if let Some(b) = &mut resp_body {
            redact(b);
        }
        let line = Record {
            provider: "github",
            method: method.as_str(),
            path: rest,
            query: &query,
            request_body: parsed,
            status: answer.status,
            response_body: resp_body,
            fault: None,
        };
        if let (Ok(mut f), Ok(s)) = (rec.lock(), serde_json::to_string(&line)) {
            let _ = writeln!(f, "{s}");
        }
    }
    json_response(answer.status, answer.body.as_ref(), &answer.headers)
}

/// A body stream that yields `bytes` and then an error.
fn cut_stream(
    bytes: Vec<u8>,
) -> impl futures_core::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    struct Cut(Option<Vec<u8>>, bool);
    impl futures_core::Stream for Cut {
        type Item = Result<Bytes, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if let Some(b) = self.0.take() {
                return std::task::Poll::Ready(Some(Ok(Bytes::from(b))));
            }
            if !self.1 {
                self.1 = true;
                return std::task::Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "emulated connection reset",
                ))));
            }
            std::task::Poll::Ready(None)
        }
    }
    Cut(Some(bytes), false)
}

/// `GET /v10/projects/{idOrName}` style names for counters: ids replaced by placeholders.
fn route_name(p: Provider, method: &Method, segments: &[&str]) -> String {
    let shape: Vec<String> = segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let literal = match p {
                Provider::Vercel => {
                    matches!(
                        *s,
                        "projects"
                            | "env"
                            | "domains"
                            | "deployments"
                            | "promote"
                            | "verify"
                            | "events"
                            | "cancel"
                    ) || (i == 0 && s.starts_with('v'))
                }
                Provider::Turso => turso::literal(s, i),
                Provider::Cloudflare => cloudflare::literal(s, i),
                Provider::CloudRun | Provider::SecretManager => google::literal(s, i),
                Provider::CloudSql => cloudsql::literal(s, i),
                Provider::Neon => matches!(
                    *s,
                    "projects"
                        | "branches"
                        | "databases"
                        | "roles"
                        | "endpoints"
                        | "operations"
                        | "connection_uri"
                        | "reveal_password"
                ),
            };
            if literal {
                (*s).to_owned()
            } else if let Some((_, verb)) = s.split_once(':').filter(|_| {
                matches!(
                    p,
                    Provider::CloudRun | Provider::SecretManager | Provider::CloudSql
                )
            }) {
                // Google's custom verbs (`{id}:setIamPolicy`) are part of the route.
                format!("{{id}}:{verb}")
            } else {
                "{id}".to_owned()
            }
        })
        .collect();
    format!("{} /{}", method, shape.join("/"))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/_admin` routes: `GET /counters`, `GET /inventory`, `POST /drift`, `POST /github`,
/// `POST /keyless`.
fn admin(inner: &Inner, method: &Method, rest: &str, body: &[u8]) -> Response {
    match (method.as_str(), rest) {
        ("GET", "/counters") => {
            let c = inner.counters.lock().map(|c| c.clone()).unwrap_or_default();
            json_response(200, Some(&serde_json::to_value(c).unwrap_or_default()), &[])
        }
        ("GET", "/inventory") => {
            let inv = inner
                .world
                .lock()
                .map(|w| inventory(&w))
                .unwrap_or_default();
            json_response(200, Some(&json!(inv)), &[])
        }
        ("POST", "/github") => {
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return json_response(400, Some(&json!({"error": "the body must be JSON"})), &[]);
            };
            let mut w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
            match github::seed(&mut w.github, &v) {
                Ok(done) => json_response(200, Some(&done), &[]),
                Err(e) => json_response(400, Some(&json!({"error": e})), &[]),
            }
        }
        ("POST", "/keyless") => {
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return json_response(400, Some(&json!({"error": "the body must be JSON"})), &[]);
            };
            let mut w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
            match keyless::seed(&mut w.keyless, &v) {
                Ok(done) => json_response(200, Some(&done), &[]),
                Err(e) => json_response(400, Some(&json!({"error": e})), &[]),
            }
        }
        ("POST", "/drift") => {
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return json_response(400, Some(&json!({"error": "the body must be JSON"})), &[]);
            };
            let mut w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
            match drift(&mut w, &v) {
                Ok(done) => json_response(200, Some(&done), &[]),
                Err(e) => json_response(400, Some(&json!({"error": e})), &[]),
            }
        }
        _ => json_response(
            404,
            Some(
                &json!({"error": "admin routes: GET /_admin/counters, GET /_admin/inventory, POST /_admin/drift, POST /_admin/github, POST /_admin/keyless"}),
            ),
            &[],
        ),
    }
}

/// Change a resource behind Telbase's back. Body:
/// `{"provider":"vercel","project":"notes-web","set":{"buildCommand":"make"}}`,
/// `{"provider":"vercel","project":"notes-web","remove_env":"KEY"}`,
/// `{"provider":"neon","project":"notes-main","protected":false}`,
/// `{"provider":"vercel"|"neon","project":"…","delete":true}`.
fn drift(w: &mut World, body: &Value) -> Result<Value, String> {
    match body.get("provider").and_then(Value::as_str) {
        Some("vercel") => vercel::drift(w, body),
        Some("neon") => neon::drift(w, body),
        Some("turso") => turso::drift(w, body),
        Some("cloudflare") => cloudflare::drift(w, body),
        Some("cloud-run" | "secret-manager") => google::drift(w, body),
        Some("cloud-sql") => cloudsql::drift(w, body),
        other => Err(format!(
            "unknown provider {other:?}; use vercel, neon, turso, cloudflare, cloud-run, secret-manager or cloud-sql"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let mut v = json!({"envs": [{"key": "A", "value": "x", "type": "sensitive"}, {"key": "B", "value": "y", "type": "plain"}], "uri": "postgres://u:p@h/d", "role": {"password": "pw"}});
        redact(&mut v);
        assert_eq!(v["envs"][0]["value"], "[redacted]");
        assert_eq!(v["envs"][1]["value"], "y");
        assert_eq!(v["uri"], "[redacted]");
        assert_eq!(v["role"]["password"], "[redacted]");
        let mut sm = json!({"name": "v/1", "payload": {"data": "c2VjcmV0"}});
        redact(&mut sm);
        assert_eq!(sm["payload"]["data"], "[redacted]");
        assert_eq!(sm["name"], "v/1");
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("notes-%2A+x"), "notes-* x");
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn route_names() {
        let segs = ["v9", "projects", "prj_123", "env", "env_9"];
        assert_eq!(
            route_name(Provider::Vercel, &Method::DELETE, &segs),
            "DELETE /v9/projects/{id}/env/{id}"
        );
        let segs = [
            "v1",
            "projects",
            "p",
            "secrets",
            "s",
            "versions",
            "3:disable",
        ];
        assert_eq!(
            route_name(Provider::SecretManager, &Method::POST, &segs),
            "POST /v1/projects/{id}/secrets/{id}/versions/{id}:disable"
        );
    }
}
