//! The HTTP layer every provider client shares: one `reqwest` client on rustls (TLS 1.2 or
//! newer, HTTPS only except to a loopback emulator), bearer auth from a `SecretString` that
//! is marked sensitive in the header map, retries decided by `RetryPolicy`, the provider's
//! error envelope turned into a typed `ProviderError`, every pagination style our providers
//! use, and polling of asynchronous operations with a deadline.
//!
//! Clients describe a call (`Call`) and get JSON back; they never see a status code that
//! failed, a raw socket error or the token.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::error::{ErrorKind, ProviderError};
use super::retry::{Decision, RetryPolicy, parse_reset_epoch, parse_retry_after};
use crate::model::Provider;

/// Where one provider's API lives and how to authenticate to it.
#[derive(Clone)]
pub struct Endpoint {
    pub provider: Provider,
    /// Scheme, host and path prefix, without a trailing slash.
    pub base: String,
    token: Token,
    /// Query parameters every call carries (Vercel's `teamId`).
    pub always_query: Vec<(String, String)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("provider", &self.provider)
            .field("base", &self.base)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Where an endpoint's bearer token comes from.
#[derive(Clone)]
enum Token {
    /// A long-lived API token (Vercel, Neon, Turso, Cloudflare, the emulator's).
    Static(SecretString),
    /// Short-lived tokens minted on demand (Google's OAuth2 access tokens).
    Source(Arc<dyn TokenSource>),
}

/// Mints bearer tokens that expire, caching each until shortly before it does. Called before
/// every request; an implementation answers from its cache almost always.
pub trait TokenSource: Send + Sync {
    fn token(&self) -> super::BoxFuture<'_, Result<SecretString, ProviderError>>;
}

/// Why an endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "{0}: base URL `{1}` is not a URL Telbase can use (https://…, or http:// to a loopback emulator)"
    )]
    BadBase(&'static str, String),
}

impl Endpoint {
    /// Plain `http://` is allowed only to loopback addresses (the emulator); everything else
    /// must be `https://`, so a token never crosses a network in the clear.
    pub fn new(
        provider: Provider,
        base: &str,
        token: SecretString,
        always_query: Vec<(String, String)>,
    ) -> Result<Self, EndpointError> {
        let base = base.trim_end_matches('/').to_owned();
        let ok = match base.split_once("://") {
            Some(("https", rest)) => !rest.is_empty(),
            Some(("http", rest)) => is_loopback(rest),
            _ => false,
        };
        if !ok {
            return Err(EndpointError::BadBase(provider.as_str(), base));
        }
        Ok(Endpoint {
            provider,
            base,
            token: Token::Static(token),
            always_query,
        })
    }

    /// An endpoint whose tokens come from `source` (minted and refreshed as they expire).
    pub fn with_token_source(
        provider: Provider,
        base: &str,
        source: Arc<dyn TokenSource>,
        always_query: Vec<(String, String)>,
    ) -> Result<Self, EndpointError> {
        let mut ep = Endpoint::new(provider, base, SecretString::from(""), always_query)?;
        ep.token = Token::Source(source);
        Ok(ep)
    }

    /// The same API at another base URL with the same credentials (Cloud Run's regional v1
    /// endpoint beside its global v2 one).
    pub fn rebased(&self, base: &str) -> Result<Self, EndpointError> {
        let mut ep = Endpoint::new(self.provider, base, SecretString::from(""), Vec::new())?;
        ep.token = self.token.clone();
        ep.always_query = self.always_query.clone();
        Ok(ep)
    }
}

fn is_loopback(authority_and_path: &str) -> bool {
    let host_port = authority_and_path.split('/').next().unwrap_or("");
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The call is idempotent (reads, PUT/DELETE, upserts, creates the provider refuses to
    /// duplicate): retry every retryable failure.
    Always,
    /// Sending it twice could do it twice: retry only failures that prove the provider did
    /// nothing (429, connection refused). The caller resolves the ambiguous ones (a timeout
    /// after sending) by looking before trying again.
    IfNotProcessed,
}

/// One call to a provider.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// Path below the endpoint's base, starting with `/`; or, for `Link`-header pagination,
    /// an absolute URL that must lie under the base.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    /// For messages: "create project notes-web".
    pub what: String,
    pub retry: Retry,
}

impl Call {
    pub fn get(path: impl Into<String>, what: impl Into<String>) -> Self {
        Call {
            method: Method::GET,
            path: path.into(),
            query: Vec::new(),
            body: None,
            what: what.into(),
            retry: Retry::Always,
        }
    }

    pub fn new(method: Method, path: impl Into<String>, what: impl Into<String>) -> Self {
        let retry = if method == Method::POST || method == Method::PATCH {
            Retry::IfNotProcessed
        } else {
            Retry::Always
        };
        Call {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            what: what.into(),
            retry,
        }
    }

    pub fn query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_owned(), value.into()));
        self
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }
}

/// A successful response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// `Value::Null` for an empty body.
    pub body: Value,
    /// The `Link` header, for GitHub-style pagination.
    pub link: Option<String>,
}

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// One attempt's limit, connection to last byte.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// First wait between polls of an asynchronous operation; grows by half each time.
    pub poll_interval: Duration,
    pub poll_max_interval: Duration,
    /// How long an asynchronous operation may take before we stop waiting.
    pub poll_deadline: Duration,
    /// Calls in flight at once to one provider, across everything sharing this client (a
    /// server reconciling many projects shares one): keeps bursts under the providers'
    /// rate limits (Neon: 40 requests/s per route).
    pub max_in_flight: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_millis(500),
            poll_max_interval: Duration::from_secs(5),
            poll_deadline: Duration::from_secs(15 * 60),
            max_in_flight: 16,
        }
    }
}

/// The shared client. Cheap to clone.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    pub config: HttpConfig,
    rng: Arc<Mutex<fastrand::Rng>>,
    in_flight: Arc<Mutex<BTreeMap<Provider, Arc<tokio::sync::Semaphore>>>>,
    /// Told about every attempt (`/metrics` of `telbase serve`); none for the CLI.
    observer: Option<Arc<dyn super::observe::CallObserver>>,
}

/// How a list endpoint hands out the next page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// One response holds everything (Turso, Neon's sub-resources).
    None,
    /// Vercel: `pagination.next` goes back as the named query parameter (`from` for
    /// projects, `until` for deployments); null when done.
    VercelNext(&'static str),
    /// Neon: `pagination.cursor` goes back as `cursor`, with `limit` per page; done at an
    /// empty page or when no new cursor comes back. A short page is not taken as the end:
    /// a server may cap pages below the asked limit, and one extra read is cheaper than a
    /// silently truncated list.
    NeonCursor { limit: u32 },
    /// Google: `nextPageToken` goes back as `pageToken`.
    GoogleToken,
    /// Cloudflare: `page` until `result_info.total_pages`.
    CloudflarePage { per_page: u32 },
    /// GitHub: the `Link` header's `rel="next"` URL.
    GithubLink,
}

/// Pages at most; a provider that keeps handing out new cursors is broken, and stopping is
/// better than looping.
const MAX_PAGES: usize = 10_000;

/// The largest error body we read a message from.
const MAX_ERROR_BODY: usize = 64 * 1024;

impl Http {
    pub fn new(config: HttpConfig) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("telbase/", env!("CARGO_PKG_VERSION")))
            // Redirects could carry the Authorization header to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                ProviderError::new(
                    Provider::Vercel,
                    ErrorKind::Permanent,
                    "set up the HTTP client",
                    None,
                    e.to_string(),
                    None,
                    None,
                )
            })?;
        Ok(Http {
            client,
            config,
            rng: Arc::new(Mutex::new(fastrand::Rng::new())),
            in_flight: Arc::new(Mutex::new(BTreeMap::new())),
            observer: None,
        })
    }

    /// The same client, reporting each attempt to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn super::observe::CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn limiter(&self, provider: Provider) -> Arc<tokio::sync::Semaphore> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(provider)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(
                    self.config.max_in_flight.max(1),
                ))
            })
            .clone()
    }

    fn jitter(&self) -> f64 {
        self.rng.lock().map(|mut r| r.f64()).unwrap_or(0.5)
    }

    /// Send a call, retrying as the policy and the call's `Retry` allow.
    pub async fn send(&self, ep: &Endpoint, call: &Call) -> Result<Response, ProviderError> {
        let start = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            // Held for the attempt only, not for the wait before a retry.
            let permit = self.limiter(ep.provider).acquire_owned().await;
            let began = Instant::now();
            let outcome = self.attempt(ep, call).await;
            drop(permit);
            if let Some(obs) = &self.observer {
                use super::observe::{CallOutcome, MethodClass};
                let result = CallOutcome::of(outcome.as_ref().map(|_| ()).map_err(|e| &e.1));
                obs.call(
                    ep.provider,
                    MethodClass::of(&call.method),
                    result,
                    began.elapsed(),
                );
            }
            let err = match outcome {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let retry_ok = match call.retry {
                Retry::Always => true,
                Retry::IfNotProcessed => err.0,
            };
            let err = err.1;
            let decision = if retry_ok {
                self.config
                    .retry
                    .decide(attempts, &err, start.elapsed(), self.jitter())
            } else {
                Decision::GiveUp
            };
            match decision {
                Decision::RetryAfter(d) => {
                    tracing::debug!(provider = ep.provider.as_str(), what = %call.what, kind = ?err.kind, delay_ms = d.as_millis() as u64, "retrying");
                    tokio::time::sleep(d).await;
                }
                Decision::GiveUp => {
                    return Err(err);
                }
            }
        }
    }

    /// Send and return the JSON body.
    pub async fn json(&self, ep: &Endpoint, call: &Call) -> Result<Value, ProviderError> {
        Ok(self.send(ep, call).await?.body)
    }

    /// One attempt. The flag says whether the provider certainly did not act on it.
    async fn attempt(&self, ep: &Endpoint, call: &Call) -> Result<Response, (bool, ProviderError)> {
        let err = |kind, status, message: String, request_id, retry_after| {
            ProviderError::new(
                ep.provider,
                kind,
                call.what.clone(),
                status,
                message,
                request_id,
                retry_after,
            )
        };
        let url = if call.path.starts_with("http://") || call.path.starts_with("https://") {
            // Only ever follow a next-page link to the same API: the token goes with it.
            if !call.path.starts_with(&format!("{}/", ep.base)) {
                return Err((
                    true,
                    err(
                        ErrorKind::Permanent,
                        None,
                        "refusing to follow a link to another host".into(),
                        None,
                        None,
                    ),
                ));
            }
            call.path.clone()
        } else {
            format!("{}{}", ep.base, call.path)
        };
        let token = match &ep.token {
            Token::Static(t) => t.clone(),
            // A failure to mint a token is the provider's auth error, not retried here: the
            // source has its own retries against its token endpoint.
            Token::Source(src) => src.token().await.map_err(|e| (true, e))?,
        };
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| {
                (
                    true,
                    err(
                        ErrorKind::Auth,
                        None,
                        "the token contains characters that cannot go in a header".into(),
                        None,
                        None,
                    ),
                )
            })?;
        auth.set_sensitive(true);
        let mut req = self
            .client
            .request(call.method.clone(), &url)
            .header(AUTHORIZATION, auth)
            .header("accept", "application/json");
        let mut query: Vec<(&str, &str)> = ep
            .always_query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        query.extend(call.query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if !query.is_empty() {
            req = req.query(&query);
        }
        if let Some(body) = &call.body {
            req = req.json(body);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                // Refused connections never reached the provider; anything later may have.
                let not_processed = e.is_connect();
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "connection failed"
                };
                return Err((
                    not_processed,
                    err(
                        ErrorKind::Transient,
                        None,
                        format!("{what}: {}", error_chain(&e)),
                        None,
                        None,
                    ),
                ));
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let request_id = request_id_of(&headers);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Err((
                    false,
                    err(
                        ErrorKind::Transient,
                        Some(status),
                        format!("the response was cut off: {}", error_chain(&e)),
                        request_id,
                        None,
                    ),
                ));
            }
        };
        if (200..300).contains(&status) {
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                match serde_json::from_slice(&bytes) {
                    Ok(v) => v,
                    Err(e) => {
                        return Err((
                            false,
                            err(
                                ErrorKind::Transient,
                                Some(status),
                                format!("the response is not valid JSON ({e})"),
                                request_id,
                                None,
                            ),
                        ));
                    }
                }
            };
            let link = headers
                .get("link")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Ok(Response { status, body, link });
        }
        let kind = ProviderError::kind_for_status(status);
        let now = chrono::Utc::now();
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now))
            .or_else(|| {
                (kind == ErrorKind::RateLimited)
                    .then(|| {
                        headers
                            .get("x-ratelimit-reset")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| parse_reset_epoch(v, now))
                    })
                    .flatten()
            });
        let body = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
        let (message, body_request_id) = error_message(body);
        // 429 and 503-with-Retry-After mean the provider turned the call away unprocessed.
        let not_processed = status == 429 || (status == 503 && retry_after.is_some());
        Err((
            not_processed,
            err(
                kind,
                Some(status),
                message,
                request_id.or(body_request_id),
                retry_after,
            ),
        ))
    }

    /// Every item of a list endpoint, following its pagination. `items` is a JSON pointer
    /// to the array in each page (`/projects`, `/result`).
    pub async fn list(
        &self,
        ep: &Endpoint,
        call: Call,
        items: &str,
        paging: Paging,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut out = Vec::new();
        let mut call = call;
        let mut page = 1u32;
        let mut seen_tokens = std::collections::HashSet::new();
        match paging {
            Paging::NeonCursor { limit } => call = call.query("limit", limit.to_string()),
            Paging::CloudflarePage { per_page } => {
                call = call.query("per_page", per_page.to_string())
            }
            _ => {}
        }
        let base_query = call.query.clone();
        for _ in 0..MAX_PAGES {
            let resp = self.send(ep, &call).await?;
            let found = resp
                .body
                .pointer(items)
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| {
                    ProviderError::new(
                        ep.provider,
                        ErrorKind::Transient,
                        call.what.clone(),
                        Some(resp.status),
                        format!("the response has no `{items}` list"),
                        None,
                        None,
                    )
                })?;
            let n = found.len();
            out.extend(found);
            let next: Option<(String, String)> = match paging {
                Paging::None => None,
                Paging::VercelNext(param) => resp
                    .body
                    .pointer("/pagination/next")
                    .and_then(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .map(|t| (param.to_owned(), t)),
                Paging::NeonCursor { .. } => {
                    if n == 0 {
                        None
                    } else {
                        resp.body
                            .pointer("/pagination/cursor")
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                            .map(|c| ("cursor".to_owned(), c.to_owned()))
                    }
                }
                Paging::GoogleToken => resp
                    .body
                    .get("nextPageToken")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(|t| ("pageToken".to_owned(), t.to_owned())),
                Paging::CloudflarePage { .. } => {
                    let total = resp
                        .body
                        .pointer("/result_info/total_pages")
                        .and_then(Value::as_u64)
                        .unwrap_or(1);
                    if u64::from(page) < total && n > 0 {
                        page += 1;
                        Some(("page".to_owned(), page.to_string()))
                    } else {
                        None
                    }
                }
                Paging::GithubLink => match resp.link.as_deref().and_then(next_link) {
                    Some(url) => {
                        if !seen_tokens.insert(url.clone()) {
                            break;
                        }
                        call.path = url;
                        call.query.clear();
                        continue;
                    }
                    None => None,
                },
            };
            let Some((param, token)) = next else { break };
            if !seen_tokens.insert(token.clone()) {
                // The same cursor twice would loop forever.
                break;
            }
            call.query = base_query.clone();
            call.query.retain(|(k, _)| k != &param);
            call.query.push((param, token));
        }
        Ok(out)
    }

    /// Poll `check` until it returns `Some`, waiting longer between polls each time, up to
    /// the configured deadline.
    pub async fn poll<T, F, Fut>(
        &self,
        provider: Provider,
        what: &str,
        mut check: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, ProviderError>>,
    {
        let start = Instant::now();
        let mut wait = self.config.poll_interval;
        loop {
            if let Some(done) = check().await? {
                return Ok(done);
            }
            if start.elapsed() + wait > self.config.poll_deadline {
                return Err(ProviderError::new(
                    provider,
                    ErrorKind::Transient,
                    what.to_owned(),
                    None,
                    format!(
                        "still not finished after {}s; it may finish later, and the next run will pick it up",
                        start.elapsed().as_secs()
                    ),
                    None,
                    None,
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait + wait / 2).min(self.config.poll_max_interval);
        }
    }
}

/// The URL of `rel="next"` in a `Link` header (RFC 8288), as GitHub sends it.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let url = pieces.next()?.trim();
        let url = url.strip_prefix('<')?.strip_suffix('>')?;
        pieces
            .any(|p| {
                let p = p.trim();
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| url.to_owned())
    })
}

/// The request id a provider put in its headers.
fn request_id_of(headers: &HeaderMap) -> Option<String> {
    [
        "x-request-id",
        "x-vercel-id",
        "cf-ray",
        "x-github-request-id",
    ]
    .iter()
    .find_map(|h| headers.get(*h)?.to_str().ok().map(str::to_owned))
}

/// The message (and request id) from a provider's error envelope: Vercel
/// `{"error":{"code","message"}}`, Neon `{code,message,request_id}`, Turso `{"error":"…"}`,
/// Cloudflare `{"errors":[{code,message}]}`, Google `{"error":{code,message,status}}`,
/// GitHub `{message}`. Anything else: the start of the body, sanitized by `ProviderError`.
pub fn error_message(body: &[u8]) -> (String, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        let text = if text.trim().is_empty() {
            "(empty response)".to_owned()
        } else {
            text
        };
        return (text, None);
    };
    let request_id = v
        .get("request_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let message = v
        .pointer("/error/message")
        .or_else(|| v.get("message"))
        .or_else(|| v.pointer("/errors/0/message"))
        .or_else(|| v.get("error").filter(|e| e.is_string()))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let code = v
        .pointer("/error/code")
        .or_else(|| v.get("code"))
        .or_else(|| v.pointer("/errors/0/code"))
        .and_then(|c| match c {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    let message = match (message, code) {
        (Some(m), Some(c)) => format!("{m} [{c}]"),
        (Some(m), None) => m,
        (None, Some(c)) => format!("error code {c}"),
        (None, None) => "(no message)".to_owned(),
    };
    (message, request_id)
}

/// An error and its causes on one line (reqwest's own `Display` stops at the outermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_for_plain_http() {
        let t = || SecretString::from("t");
        assert!(Endpoint::new(Provider::Vercel, "https://api.vercel.com", t(), vec![]).is_ok());
        assert!(
            Endpoint::new(
                Provider::Vercel,
                "http://127.0.0.1:4000/vercel",
                t(),
                vec![]
            )
            .is_ok()
        );
        assert!(Endpoint::new(Provider::Vercel, "http://[::1]:4000/vercel", t(), vec![]).is_ok());
        assert!(Endpoint::new(Provider::Vercel, "http://localhost:1/x", t(), vec![]).is_ok());
        assert!(Endpoint::new(Provider::Vercel, "http://api.vercel.com", t(), vec![]).is_err());
        assert!(
            Endpoint::new(Provider::Vercel, "http://127.0.0.1.evil.com/", t(), vec![]).is_err()
        );
        assert!(Endpoint::new(Provider::Vercel, "ftp://x", t(), vec![]).is_err());
    }

    #[test]
    fn endpoint_debug_hides_token() {
        let ep = Endpoint::new(
            Provider::Neon,
            "https://console.neon.tech/api/v2",
            SecretString::from("napi_supersecret"),
            vec![],
        )
        .unwrap();
        assert!(!format!("{ep:?}").contains("supersecret"));
    }

    #[test]
    fn link_header() {
        let h = r#"<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last""#;
        assert_eq!(
            next_link(h).as_deref(),
            Some("https://api.github.com/x?page=2")
        );
        assert_eq!(next_link(r#"<https://a/x?page=1>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn envelopes() {
        let m = |s: &str| error_message(s.as_bytes());
        assert_eq!(
            m(r#"{"error":{"code":"forbidden","message":"Not authorized"}}"#).0,
            "Not authorized [forbidden]"
        );
        let (msg, id) = m(r#"{"code":"","message":"project not found","request_id":"r-1"}"#);
        assert_eq!(msg, "project not found");
        assert_eq!(id.as_deref(), Some("r-1"));
        assert_eq!(m(r#"{"error":"group exists"}"#).0, "group exists");
        assert_eq!(
            m(r#"{"success":false,"errors":[{"code":1003,"message":"bad zone"}]}"#).0,
            "bad zone [1003]"
        );
        assert_eq!(
            m("<html>502 Bad Gateway</html>").0,
            "<html>502 Bad Gateway</html>"
        );
        assert_eq!(m("").0, "(empty response)");
    }
}
