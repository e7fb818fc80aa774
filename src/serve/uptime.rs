//! Uptime: the URLs reconciles deployed, probed from the server on a fixed interval, with
//! their state for `/metrics`, for the run pages ([`UptimeBoard::snapshot`]) and for the
//! notification webhook (`down` and `up`).
//!
//! Targets come from the apply reports of reconciles: each finished step of an app resource
//! (a Vercel project's production deployment, a Vercel domain, a Cloud Run service or domain
//! mapping) that reports a URL sets that resource's URL for its repository and environment;
//! a deleted resource's URL goes, and a torn-down preview loses all of its URLs. Targets are
//! kept in memory: after a restart a URL is probed again once a reconcile deploys it again
//! (docs/serve.md says so).
//!
//! A probe is an HTTPS GET (TLS 1.2 or later, at most 3 redirects, 10 s limit); up means a
//! 2xx or 3xx answer. Hysteresis keeps one blip from paging: a URL turns down after two
//! failed probes in a row and up after one success.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::apply::{Outcome, StepReport};
use crate::model::{Environment, Kind};
use crate::plan::Action;

use super::metrics::{Metrics, ProbeLabels, UptimeLabels};
use super::notify::{EventKind, Notification, Notifier};
use super::worker::{Job, JobError, ReconcileObserver};

/// Failed probes in a row before a URL counts as down.
pub const DOWN_AFTER: u32 = 2;

/// How often and how patiently to probe.
#[derive(Debug, Clone)]
pub struct UptimeConfig {
    /// Between rounds; `None` turns probing off (targets are still tracked).
    pub every: Option<Duration>,
    /// One probe's limit.
    pub timeout: Duration,
}

impl Default for UptimeConfig {
    fn default() -> Self {
        UptimeConfig {
            every: Some(Duration::from_secs(60)),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a URL is known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not probed yet, or failed once since it was added.
    Unknown,
    Up,
    Down,
}

/// One URL's state, as the run pages show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UrlStatus {
    pub repository: String,
    pub environment: String,
    pub url: String,
    pub state: State,
    pub last_check: Option<DateTime<Utc>>,
    pub last_change: Option<DateTime<Utc>>,
    /// Failed probes in a row.
    pub failures: u32,
    /// The last probe's answer (`HTTP 503`, `timed out`, …).
    pub last_result: Option<String>,
}

/// How one probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub up: bool,
    /// `up`, `http_error`, `timeout`, `error`: the metric label.
    pub result: &'static str,
    /// For people: `HTTP 200`, `timed out`.
    pub detail: String,
    pub took: Duration,
}

type EnvKey = (String, String);

#[derive(Default)]
struct Inner {
    /// (repository, environment) → resource key → URL.
    targets: BTreeMap<EnvKey, BTreeMap<String, String>>,
    /// (repository, environment, URL) → state.
    states: HashMap<(String, String, String), UrlStatus>,
}

/// The server's uptime state: targets, per-URL results, and the transitions that notify.
pub struct UptimeBoard {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    notifier: Option<Notifier>,
}

/// The environment's label: `production` or `pr-N`.
pub fn environment_label(env: Environment) -> String {
    match env {
        Environment::Production => "production".into(),
        Environment::Preview { pull_request } => format!("pr-{pull_request}"),
    }
}

/// Whether a step's URL is an app people open (not a console page or a database).
fn is_app(kind: Kind, env: Environment) -> bool {
    match kind {
        // A preview's Vercel project is production's: its URL is production's URL.
        Kind::VercelProject => env == Environment::Production,
        Kind::VercelDomain | Kind::CloudRunService | Kind::CloudRunDomainMapping => true,
        _ => false,
    }
}

impl UptimeBoard {
    pub fn new(metrics: Arc<Metrics>, notifier: Option<Notifier>) -> Self {
        UptimeBoard {
            inner: Mutex::new(Inner::default()),
            metrics,
            notifier,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every tracked URL with its state, ordered by repository, environment and URL.
    pub fn snapshot(&self) -> Vec<UrlStatus> {
        let inner = self.lock();
        let mut out = Vec::new();
        for ((repo, env), urls) in &inner.targets {
            let mut seen: Vec<&String> = urls.values().collect();
            seen.sort();
            seen.dedup();
            for url in seen {
                let key = (repo.clone(), env.clone(), url.clone());
                out.push(inner.states.get(&key).cloned().unwrap_or(UrlStatus {
                    repository: repo.clone(),
                    environment: env.clone(),
                    url: url.clone(),
                    state: State::Unknown,
                    last_check: None,
                    last_change: None,
                    failures: 0,
                    last_result: None,
                }));
            }
        }
        out
    }

    /// Set (or, with `None`, remove) the URL of one resource of a repository's environment.
    pub fn set_target(&self, repository: &str, environment: &str, key: &str, url: Option<&str>) {
        let mut inner = self.lock();
        let env_key = (repository.to_owned(), environment.to_owned());
        let urls = inner.targets.entry(env_key.clone()).or_default();
        match url {
            Some(u) => {
                urls.insert(key.to_owned(), u.to_owned());
            }
            None => {
                urls.remove(key);
            }
        }
        if urls.is_empty() {
            inner.targets.remove(&env_key);
        }
        Self::forget_untracked(&mut inner, &self.metrics);
    }

    /// Forget every URL of a repository's environment (a torn-down preview).
    pub fn remove_environment(&self, repository: &str, environment: &str) {
        let mut inner = self.lock();
        inner
            .targets
            .remove(&(repository.to_owned(), environment.to_owned()));
        Self::forget_untracked(&mut inner, &self.metrics);
    }

    /// Drop states (and their gauges) of URLs no longer tracked.
    fn forget_untracked(inner: &mut Inner, metrics: &Metrics) {
        let Inner { targets, states } = inner;
        states.retain(|(repo, env, url), _| {
            let keep = targets
                .get(&(repo.clone(), env.clone()))
                .is_some_and(|u| u.values().any(|x| x == url));
            if !keep {
                metrics.uptime_up.remove(&UptimeLabels {
                    repository: repo.clone(),
                    environment: env.clone(),
                    url: url.clone(),
                });
            }
            keep
        });
    }

    /// Record a finished apply step of `repository`'s `environment`.
    pub fn step(&self, repository: &str, environment: Environment, step: &StepReport) {
        if !is_app(step.key.kind, environment) {
            return;
        }
        let env = environment_label(environment);
        let key = step.key.to_string();
        match (&step.action, &step.outcome) {
            (Action::Delete, Outcome::Done { .. }) => self.set_target(repository, &env, &key, None),
            (_, Outcome::Done { url: Some(url) })
                if url.starts_with("https://") || url.starts_with("http://") =>
            {
                self.set_target(repository, &env, &key, Some(url))
            }
            _ => {}
        }
    }

    /// Record one probe of a tracked URL; sends `down`/`up` on a transition. A result for a
    /// URL that stopped being tracked while it was probed is ignored.
    pub fn record(&self, repository: &str, environment: &str, url: &str, probe: &Probe) {
        self.metrics
            .uptime_probes
            .get_or_create(&ProbeLabels {
                result: probe.result.to_owned(),
            })
            .inc();
        self.metrics
            .uptime_probe_seconds
            .observe(probe.took.as_secs_f64());
        let now = Utc::now();
        let mut inner = self.lock();
        let tracked = inner
            .targets
            .get(&(repository.to_owned(), environment.to_owned()))
            .is_some_and(|u| u.values().any(|x| x == url));
        if !tracked {
            return;
        }
        let key = (
            repository.to_owned(),
            environment.to_owned(),
            url.to_owned(),
        );
        let st = inner.states.entry(key).or_insert_with(|| UrlStatus {
            repository: repository.to_owned(),
            environment: environment.to_owned(),
            url: url.to_owned(),
            state: State::Unknown,
            last_check: None,
            last_change: None,
            failures: 0,
            last_result: None,
        });
        st.last_check = Some(now);
        st.last_result = Some(probe.detail.clone());
        let before = st.state;
        if probe.up {
            st.failures = 0;
            st.state = State::Up;
        } else {
            st.failures = st.failures.saturating_add(1);
            if st.failures >= DOWN_AFTER {
                st.state = State::Down;
            }
        }
        let after = st.state;
        if after != before {
            st.last_change = Some(now);
        }
        let labels = UptimeLabels {
            repository: repository.to_owned(),
            environment: environment.to_owned(),
            url: url.to_owned(),
        };
        match after {
            State::Up => {
                self.metrics.uptime_up.get_or_create(&labels).set(1);
            }
            State::Down => {
                self.metrics.uptime_up.get_or_create(&labels).set(0);
            }
            State::Unknown => {}
        }
        drop(inner);
        // A first success is no news; a recovery or an outage is.
        let event = match (before, after) {
            (State::Down, State::Up) => Some(EventKind::Up),
            (State::Unknown | State::Up, State::Down) => Some(EventKind::Down),
            _ => None,
        };
        if let (Some(event), Some(n)) = (event, &self.notifier) {
            tracing::warn!(
                repository,
                environment,
                url,
                event = event.as_str(),
                "uptime changed"
            );
            n.notify(Notification {
                event,
                repository: repository.to_owned(),
                environment: environment.to_owned(),
                url: Some(url.to_owned()),
                status: event.as_str().to_owned(),
                description: match event {
                    EventKind::Down => format!(
                        "{url} failed {DOWN_AFTER} probes in a row: {}",
                        probe.detail
                    ),
                    _ => format!("{url} answers again: {}", probe.detail),
                },
                run_id: None,
                commit: None,
            });
        }
    }

    /// Probe every tracked URL once, at most 16 at a time.
    pub async fn probe_all(self: &Arc<Self>, client: &reqwest::Client) {
        let targets: Vec<(String, String, String)> = {
            let inner = self.lock();
            let mut t: Vec<_> = inner
                .targets
                .iter()
                .flat_map(|((r, e), urls)| urls.values().map(|u| (r.clone(), e.clone(), u.clone())))
                .collect();
            t.sort();
            t.dedup();
            t
        };
        let limit = Arc::new(tokio::sync::Semaphore::new(16));
        let probes = targets.into_iter().map(|(repo, env, url)| {
            let limit = limit.clone();
            async move {
                let _permit = limit.acquire_owned().await;
                let p = probe(client, &url).await;
                self.record(&repo, &env, &url, &p);
            }
        });
        futures_util::future::join_all(probes).await;
    }
}

/// The probing client: rustls with TLS 1.2 or later, at most 3 redirects, `timeout` per
/// probe, no cookies or credentials of any kind.
pub fn probe_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("telbase-uptime/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// One GET of `url`.
pub async fn probe(client: &reqwest::Client, url: &str) -> Probe {
    let started = Instant::now();
    let r = client.get(url).send().await;
    let took = started.elapsed();
    match r {
        Ok(resp) => {
            let s = resp.status();
            // A redirect past the limit comes back as an error; a 3xx here is one the client
            // did not follow (no Location), which still proves the app answers.
            let up = s.is_success() || s.is_redirection();
            Probe {
                up,
                result: if up { "up" } else { "http_error" },
                detail: format!("HTTP {}", s.as_u16()),
                took,
            }
        }
        Err(e) if e.is_timeout() => Probe {
            up: false,
            result: "timeout",
            detail: "timed out".into(),
            took,
        },
        Err(e) => Probe {
            up: false,
            result: "error",
            detail: if e.is_redirect() {
                "too many redirects".into()
            } else if e.is_connect() {
                "could not connect".into()
            } else {
                "the request failed".into()
            },
            took,
        },
    }
}

/// Probe every `config.every` until `shutdown`; nothing when probing is off.
pub fn spawn(
    board: Arc<UptimeBoard>,
    config: &UptimeConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let Some(every) = config.every else {
        return Ok(());
    };
    let client = probe_client(config.timeout)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            tokio::select! {
                _ = board.probe_all(&client) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
    Ok(())
}

/// The repository, environment and commit a job is about.
fn job_subject(job: &Job) -> (String, String, Option<String>) {
    use crate::github::webhook::Intent;
    match &job.intent {
        Intent::Push { repo, sha, .. } | Intent::Drift { repo, sha, .. } => {
            (repo.clone(), "production".into(), Some(sha.clone()))
        }
        Intent::Preview { repo, pr, sha, .. } | Intent::Teardown { repo, pr, sha, .. } => {
            (repo.clone(), format!("pr-{pr}"), Some(sha.clone()))
        }
        Intent::Installed { repos, .. } | Intent::Removed { repos, .. } => {
            (repos.join(","), "production".into(), None)
        }
        Intent::Watched { source, sha, .. } => {
            (source.name.clone(), "production".into(), Some(sha.clone()))
        }
        Intent::Ignore(_) => (String::new(), String::new(), None),
    }
}

impl ReconcileObserver for UptimeBoard {
    fn step(&self, repository: &str, environment: Environment, step: &StepReport) {
        UptimeBoard::step(self, repository, environment, step);
    }

    fn torn_down(&self, repository: &str, environment: Environment) {
        self.remove_environment(repository, &environment_label(environment));
    }

    fn failed(&self, job: &Job, error: &JobError, last_attempt: bool) {
        let Some(n) = &self.notifier else {
            return;
        };
        let (repository, environment, commit) = job_subject(job);
        let status = match error {
            JobError::Retry(_) if !last_attempt => "failed",
            _ => "error",
        };
        // Job errors are written for commit statuses: one line, no secrets; bounded here.
        let description: String = error.to_string().chars().take(500).collect();
        n.notify(Notification {
            event: EventKind::ReconcileFailed,
            repository,
            environment,
            url: None,
            status: status.into(),
            description,
            run_id: Some(job.id),
            commit,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(up: bool) -> Probe {
        Probe {
            up,
            result: if up { "up" } else { "http_error" },
            detail: String::new(),
            took: Duration::from_millis(1),
        }
    }

    #[test]
    fn one_failure_is_not_down_two_are_and_one_success_recovers() {
        let b = UptimeBoard::new(Arc::new(Metrics::new()), None);
        b.set_target("a/b", "production", "k", Some("https://x.example"));
        let state = || b.snapshot()[0].state;
        assert_eq!(state(), State::Unknown);
        b.record("a/b", "production", "https://x.example", &p(true));
        assert_eq!(state(), State::Up);
        b.record("a/b", "production", "https://x.example", &p(false));
        assert_eq!(state(), State::Up, "a single blip is not an outage");
        b.record("a/b", "production", "https://x.example", &p(true));
        b.record("a/b", "production", "https://x.example", &p(false));
        b.record("a/b", "production", "https://x.example", &p(false));
        assert_eq!(state(), State::Down);
        assert!(b.snapshot()[0].last_change.is_some());
        b.record("a/b", "production", "https://x.example", &p(true));
        assert_eq!(state(), State::Up);
    }

    #[test]
    fn untracked_urls_are_forgotten_with_their_gauges() {
        let m = Arc::new(Metrics::new());
        let b = UptimeBoard::new(m.clone(), None);
        b.set_target("a/b", "pr-3", "k", Some("https://x.example"));
        b.record("a/b", "pr-3", "https://x.example", &p(true));
        assert!(m.render().contains("telbase_uptime_up{"));
        b.remove_environment("a/b", "pr-3");
        assert!(b.snapshot().is_empty());
        assert!(!m.render().contains("telbase_uptime_up{"));
        // A late probe result for it changes nothing.
        b.record("a/b", "pr-3", "https://x.example", &p(false));
        assert!(b.snapshot().is_empty());
    }
}
