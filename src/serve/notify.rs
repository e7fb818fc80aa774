//! The notification webhook (`TELBASE_NOTIFY_URL`): a signed JSON POST when a deployed app
//! goes down, when it recovers, when a reconcile fails, and when a security anomaly is
//! flagged (`security_anomaly`, from `crate::abuse`). Signed the way GitHub signs its
//! deliveries to us: `X-Telbase-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`,
//! with `X-Telbase-Event` and a unique `X-Telbase-Delivery`; the body carries a timestamp so
//! a receiver can refuse replays. Bodies name the repository, environment, URL, status,
//! description, run id and commit, and never a secret.
//!
//! Sending happens on one task fed by a bounded queue, so a slow or dead receiver never
//! holds up a reconcile or a probe: callers `notify` and move on. Each notification is tried
//! a few times with exponential backoff on connection errors, 429 and 5xx; a 4xx (the
//! receiver refused it) is not retried. When the queue is full the notification is dropped
//! with an error in the log rather than growing memory without bound.

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;

/// Where and how notifications go.
#[derive(Clone)]
pub struct NotifyConfig {
    /// The receiver (`http://` or `https://`).
    pub url: String,
    /// The HMAC key for `X-Telbase-Signature-256`.
    pub secret: SecretString,
    /// Tries per notification.
    pub attempts: u32,
    /// Wait before the second try; doubled each time after.
    pub backoff: Duration,
    /// One try's limit.
    pub timeout: Duration,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            // Chat webhooks (Slack, Discord) carry their token in the path: the host only.
            .field("url", &shown_url(&self.url))
            .field("secret", &"[redacted]")
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// `scheme://host[:port]/…`: where a URL points, without the path or query that may hold a
/// token.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}/…", u.scheme()),
            (Some(h), None) => format!("{}://{h}/…", u.scheme()),
            _ => "[unparsable URL]".into(),
        },
        Err(_) => "[unparsable URL]".into(),
    }
}

impl NotifyConfig {
    /// The defaults for a receiver: 5 tries over about half a minute, 10 s each.
    pub fn new(url: String, secret: SecretString) -> Self {
        NotifyConfig {
            url,
            secret,
            attempts: 5,
            backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A deployed URL failed two probes in a row.
    Down,
    /// It answers again.
    Up,
    /// A reconcile attempt failed.
    ReconcileFailed,
    /// A security anomaly (a new network, a burst of failures, a token from a new address).
    SecurityAnomaly,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Down => "down",
            EventKind::Up => "up",
            EventKind::ReconcileFailed => "reconcile_failed",
            EventKind::SecurityAnomaly => "security_anomaly",
        }
    }
}

/// The body of one notification (see docs/serve.md for the documented shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub event: EventKind,
    pub repository: String,
    pub environment: String,
    /// The probed URL (`down`/`up`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `down`, `up`, or `failed` (a reconcile failed and is retried) / `error` (failed for good).
    pub status: String,
    /// One line for people.
    pub description: String,
    /// The queue job of the failed reconcile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// The body of a `security_anomaly` notification: `event`, `anomaly` (its kind), the
/// anomaly's fields (account, address, network, subject, failures, …) and a description.
/// Account and token *ids* only, never a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityNotification {
    pub event: EventKind,
    pub description: String,
    #[serde(flatten)]
    pub anomaly: serde_json::Value,
}

impl SecurityNotification {
    pub fn from_anomaly(a: &crate::abuse::Anomaly) -> Self {
        SecurityNotification {
            event: EventKind::SecurityAnomaly,
            description: a.description(),
            anomaly: serde_json::to_value(a).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// What the sending task sends.
#[derive(Debug, Clone)]
enum Outgoing {
    Deploy(Notification),
    Security(SecurityNotification),
}

impl Outgoing {
    fn event(&self) -> EventKind {
        match self {
            Outgoing::Deploy(n) => n.event,
            Outgoing::Security(n) => n.event,
        }
    }
    /// What the log names (a repository, or the anomaly's kind).
    fn about(&self) -> &str {
        match self {
            Outgoing::Deploy(n) => &n.repository,
            Outgoing::Security(n) => n
                .anomaly
                .get("anomaly")
                .and_then(|v| v.as_str())
                .unwrap_or("security"),
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(flatten)]
    notification: &'a T,
    delivery: &'a str,
    /// RFC 3339, UTC.
    timestamp: String,
}

/// Why notifications cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("TELBASE_NOTIFY_URL must be an http:// or https:// URL")]
    BadUrl,
    #[error("cannot set up the notification client: {0}")]
    Client(String),
}

/// The handle callers use; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    tx: tokio::sync::mpsc::Sender<Outgoing>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notifier")
    }
}

/// Notifications waiting to be sent at most.
const QUEUE: usize = 1024;

/// `sha256=<hex>` of the body under `secret`: the value of `X-Telbase-Signature-256`.
pub fn sign(secret: &SecretString, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A unique delivery id (random, UUID-shaped).
fn delivery_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // The id only has to be unique, not secret.
        b = fastrand::u128(..).to_be_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Notifier {
    /// Start the sending task; it ends when every `Notifier` is dropped or `shutdown` turns
    /// true (notifications still queued then are dropped).
    pub fn start(
        config: NotifyConfig,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Notifier, NotifyError> {
        if !(config.url.starts_with("https://") || config.url.starts_with("http://")) {
            return Err(NotifyError::BadUrl);
        }
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("telbase/", env!("CARGO_PKG_VERSION")))
            // A signed body must reach the configured receiver, not wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NotifyError::Client(e.to_string()))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Outgoing>(QUEUE);
        tokio::spawn(async move {
            loop {
                let n = tokio::select! {
                    n = rx.recv() => match n { Some(n) => n, None => return },
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                // One at a time, in order: a receiver sees `down` before the `up` after it.
                tokio::select! {
                    _ = deliver(&client, &config, &n) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(Notifier { tx })
    }

    /// Queue a notification; never waits.
    pub fn notify(&self, n: Notification) {
        self.send(Outgoing::Deploy(n));
    }

    /// Queue a security notification; never waits.
    pub fn notify_security(&self, n: SecurityNotification) {
        self.send(Outgoing::Security(n));
    }

    fn send(&self, n: Outgoing) {
        let event = n.event().as_str();
        if let Err(e) = self.tx.try_send(n) {
            tracing::error!(event, error = %e, "notification dropped: the queue is full or closed");
        }
    }
}

async fn deliver(client: &reqwest::Client, config: &NotifyConfig, n: &Outgoing) {
    let delivery = delivery_id();
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = match n {
        Outgoing::Deploy(n) => serde_json::to_vec(&Envelope {
            notification: n,
            delivery: &delivery,
            timestamp,
        }),
        Outgoing::Security(n) => serde_json::to_vec(&Envelope {
            notification: n,
            delivery: &delivery,
            timestamp,
        }),
    };
    let (event, about) = (n.event(), n.about());
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a notification");
            return;
        }
    };
    let signature = sign(&config.secret, &body);
    let mut wait = config.backoff;
    for attempt in 1..=config.attempts.max(1) {
        let sent = client
            .post(&config.url)
            .header("content-type", "application/json")
            .header("x-telbase-event", event.as_str())
            .header("x-telbase-delivery", &delivery)
            .header("x-telbase-signature-256", &signature)
            .body(body.clone())
            .send()
            .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => {
                tracing::info!(event = event.as_str(), delivery = %delivery, about, "notification sent");
                return;
            }
            Ok(r) => {
                let s = r.status();
                let retry = s.is_server_error() || s.as_u16() == 429 || s.as_u16() == 408;
                tracing::warn!(event = event.as_str(), delivery = %delivery, status = s.as_u16(), attempt, "the notification receiver refused");
                retry
            }
            Err(e) => {
                tracing::warn!(event = event.as_str(), delivery = %delivery, attempt, error = %e.without_url(), "cannot reach the notification receiver");
                true
            }
        };
        if !retry || attempt == config.attempts.max(1) {
            break;
        }
        tokio::time::sleep(wait).await;
        wait = wait.saturating_mul(2);
    }
    tracing::error!(
        event = event.as_str(),
        delivery = %delivery,
        about,
        "notification not delivered; giving up"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_githubs_scheme() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body
        // "Hello, World!".
        let s = sign(
            &SecretString::from("It's a Secret to Everybody".to_owned()),
            b"Hello, World!",
        );
        assert_eq!(
            s,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn delivery_ids_are_unique_and_uuid_shaped() {
        let a = delivery_id();
        let b = delivery_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn bodies_carry_no_more_than_the_documented_fields() {
        let n = Notification {
            event: EventKind::ReconcileFailed,
            repository: "acme/notes".into(),
            environment: "production".into(),
            url: None,
            status: "failed".into(),
            description: "apply failed".into(),
            run_id: Some(3),
            commit: Some("abc".into()),
        };
        let v = serde_json::to_value(Envelope {
            notification: &n,
            delivery: "d",
            timestamp: "t".into(),
        })
        .unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "commit",
                "delivery",
                "description",
                "environment",
                "event",
                "repository",
                "run_id",
                "status",
                "timestamp"
            ]
        );
        assert_eq!(v["event"], "reconcile_failed");
    }
}
