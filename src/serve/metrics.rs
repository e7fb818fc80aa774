//! What `GET /metrics` reports, in the Prometheus text format: webhook deliveries by event
//! and result, the reconcile queue's depth, reconcile durations, and GitHub's remaining rate
//! limit, provider calls by provider, method class and outcome (with their latency, from the
//! HTTP layer's observer hook), and the uptime probes' results. One registry per server;
//! handlers and workers hold the typed families and never format text themselves.

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderCallLabels {
    pub provider: String,
    /// `read` or `write`.
    pub method: String,
    /// `ok`, `rate_limited`, `http_4xx`, `http_5xx`, `transport_error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UptimeLabels {
    pub repository: String,
    pub environment: String,
    pub url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `up` (2xx/3xx), `http_error`, `timeout`, `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockoutLabels {
    /// `api` or `webhook`.
    pub realm: String,
    /// `address` or `account`.
    pub scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `api` or `webhook`.
    pub realm: String,
    /// `locked` or `rate_limited`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnomalyLabels {
    /// `new_network`, `failure_burst`, `token_new_address`.
    pub kind: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub queue_depth: Gauge,
    pub reconcile_seconds: Family<ReconcileLabels, Histogram>,
    pub github_rate_limit_remaining: Gauge,
    pub provider_calls: Family<ProviderCallLabels, Counter>,
    pub provider_errors: Family<ProviderLabels, Counter>,
    pub provider_call_seconds: Family<ProviderLabels, Histogram>,
    pub uptime_up: Family<UptimeLabels, Gauge>,
    pub uptime_probe_seconds: Histogram,
    pub uptime_probes: Family<ProbeLabels, Counter>,
    /// Locks started by repeated failures (`crate::abuse`).
    pub abuse_lockouts: Family<LockoutLabels, Counter>,
    /// Requests answered 429 (locked or over a rate limit).
    pub abuse_refusals: Family<RefusalLabels, Counter>,
    pub abuse_anomalies: Family<AnomalyLabels, Counter>,
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
        let provider_calls = Family::<ProviderCallLabels, Counter>::default();
        registry.register(
            "provider_calls",
            "Provider API attempts, by provider, read or write, and result",
            provider_calls.clone(),
        );
        let provider_errors = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "provider_errors",
            "Provider API attempts that did not end in a 2xx answer, by provider",
            provider_errors.clone(),
        );
        let provider_call_seconds =
            Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
                Histogram::new([0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            });
        registry.register(
            "provider_call_duration_seconds",
            "Time of one provider API attempt, by provider",
            provider_call_seconds.clone(),
        );
        let uptime_up = Family::<UptimeLabels, Gauge>::default();
        registry.register(
            "uptime_up",
            "1 when the deployed URL answers (down after two failed probes in a row), else 0",
            uptime_up.clone(),
        );
        let uptime_probe_seconds = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "uptime_probe_duration_seconds",
            "Time of one uptime probe",
            uptime_probe_seconds.clone(),
        );
        let uptime_probes = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "uptime_probes",
            "Uptime probes, by result",
            uptime_probes.clone(),
        );
        let abuse_lockouts = Family::<LockoutLabels, Counter>::default();
        registry.register(
            "abuse_lockouts",
            "Locks started after repeated failures, by realm and scope",
            abuse_lockouts.clone(),
        );
        let abuse_refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "abuse_refusals",
            "Requests answered 429 Too Many Requests, by realm and reason",
            abuse_refusals.clone(),
        );
        let abuse_anomalies = Family::<AnomalyLabels, Counter>::default();
        registry.register(
            "abuse_anomalies",
            "Security anomalies flagged, by kind",
            abuse_anomalies.clone(),
        );
        Metrics {
            registry,
            abuse_lockouts,
            abuse_refusals,
            abuse_anomalies,
            deliveries,
            queue_depth,
            reconcile_seconds,
            github_rate_limit_remaining,
            provider_calls,
            provider_errors,
            provider_call_seconds,
            uptime_up,
            uptime_probe_seconds,
            uptime_probes,
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

    /// A lock started (labels are fixed words from `crate::abuse`).
    pub fn abuse_lockout(&self, realm: &str, scope: &str) {
        self.abuse_lockouts
            .get_or_create(&LockoutLabels {
                realm: realm.to_owned(),
                scope: scope.to_owned(),
            })
            .inc();
    }

    /// A request answered 429.
    pub fn abuse_refusal(&self, realm: &str, reason: &str) {
        self.abuse_refusals
            .get_or_create(&RefusalLabels {
                realm: realm.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// An anomaly flagged.
    pub fn abuse_anomaly(&self, kind: &str) {
        self.abuse_anomalies
            .get_or_create(&AnomalyLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// An observer for the providers' HTTP layer that counts into these metrics.
    pub fn provider_observer(self: &std::sync::Arc<Self>) -> std::sync::Arc<ProviderCalls> {
        std::sync::Arc::new(ProviderCalls(self.clone()))
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counts provider calls into [`Metrics`]: the HTTP layer's hook (labels are the provider's
/// name and fixed outcome words only).
pub struct ProviderCalls(std::sync::Arc<Metrics>);

impl crate::providers::observe::CallObserver for ProviderCalls {
    fn call(
        &self,
        provider: crate::model::Provider,
        method: crate::providers::observe::MethodClass,
        outcome: crate::providers::observe::CallOutcome,
        took: std::time::Duration,
    ) {
        let m = &self.0;
        m.provider_calls
            .get_or_create(&ProviderCallLabels {
                provider: provider.as_str().to_owned(),
                method: method.as_str().to_owned(),
                result: outcome.as_str().to_owned(),
            })
            .inc();
        let p = ProviderLabels {
            provider: provider.as_str().to_owned(),
        };
        if outcome.is_error() {
            m.provider_errors.get_or_create(&p).inc();
        }
        m.provider_call_seconds
            .get_or_create(&p)
            .observe(took.as_secs_f64());
    }
}
