//! What `GET /metrics` reports, in the Prometheus text format: webhook deliveries by event
//! and result, the reconcile queue's depth, reconcile durations, and GitHub's remaining rate
//! limit. (Provider calls by provider need a hook in the HTTP layer; not yet.) One registry per server; handlers and
//! workers hold the typed families and never format text themselves.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub event: String,
    /// `accepted`, `duplicate`, `ignored`, `bad_signature`, `throttled`, `bad_payload`,
    /// `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `production` or `preview`.
    pub environment: String,
    /// `success`, `failure`, `error`.
    pub result: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub queue_depth: Gauge,
    pub reconcile_seconds: Family<ReconcileLabels, Histogram>,
    pub github_rate_limit_remaining: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("telbase");
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "GitHub webhook deliveries received, by event and result",
            deliveries.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Reconcile jobs waiting or running",
            queue_depth.clone(),
        );
        // Reconciles take from a second (no changes) to many minutes (a first deploy).
        let reconcile_seconds = Family::<ReconcileLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0])
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time from picking a reconcile job to its result",
            reconcile_seconds.clone(),
        );
        let github_rate_limit_remaining = Gauge::default();
        registry.register(
            "github_rate_limit_remaining",
            "GitHub API requests left in the current window (last seen)",
            github_rate_limit_remaining.clone(),
        );
        Metrics {
            registry,
            deliveries,
            queue_depth,
            reconcile_seconds,
            github_rate_limit_remaining,
        }
    }

    pub fn delivery(&self, event: &str, result: &str) {
        // Event names come from a header: only GitHub's alphabet, so a forged header cannot
        // blow up the label set or the exposition format.
        let event = if !event.is_empty()
            && event.len() <= 64
            && event.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            event
        } else {
            "invalid"
        };
        self.deliveries
            .get_or_create(&DeliveryLabels {
                event: event.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
