//! The reconcile worker: takes jobs from the durable queue and carries them out, in the
//! manner of kube-runtime's controller (a job is a request to make one environment match
//! one commit; failures requeue with backoff; the same key never runs twice at once).
//!
//! A job reads `telbase.yaml` at exactly the job's commit through the App, plans against
//! what the providers report, applies, and reports on the commit as a status
//! (`telbase/production` or `telbase/preview`). A push to a branch other than the file's
//! production branch, or a commit without the file, finishes with nothing done. A closed
//! pull request tears its preview down: the same file read at its last head commit, with
//! every resource removed and pruning on, so only what that preview owns is deleted.
//! Claims are leases renewed while the job runs, so a replica that dies mid-apply releases
//! its job to another one after the lease, and the executor's idempotence makes the rerun
//! safe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apply::{self, Opener};
use crate::github::app::{CommitStatus, GitHubApp, GitHubError, StatusState};
use crate::github::webhook::Intent;
use crate::model::Environment;
use crate::plan;
use crate::providers::{self, Credentials, GitRef, Scope, http::Http};

use super::Metrics;
use super::metrics::ReconcileLabels;

/// A claimed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub intent: Intent,
    /// Attempts before this one.
    pub attempts: u32,
}

/// The durable queue, as the worker sees it. Implemented by the store.
pub trait Jobs: Send + Sync + 'static {
    /// The next runnable job, leased to `owner` for `lease`: the oldest due one whose
    /// repository and environment has no job running. Superseded jobs (an older push to the
    /// same environment) are skipped.
    fn claim(&self, owner: &str, lease: Duration) -> Result<Option<Job>, String>;
    /// Extend the lease of a running job; `false` if the job is no longer ours.
    fn renew(&self, id: i64, owner: &str, lease: Duration) -> Result<bool, String>;
    /// The job is done (`summary` is kept for the run page).
    fn finish(&self, id: i64, owner: &str, summary: &str) -> Result<(), String>;
    /// Run it again after `after`, or give up when it has been tried too often.
    fn retry(&self, id: i64, owner: &str, after: Duration, error: &str) -> Result<(), String>;
    /// The job failed for good.
    fn fail(&self, id: i64, owner: &str, error: &str) -> Result<(), String>;
    /// Production of a repository now runs a commit of its production branch.
    fn reconciled(&self, production: &Production) -> Result<(), String>;
}

/// What a finished job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub summary: String,
    /// Repositories whose production was made to match a commit of its production branch.
    pub production: Vec<Production>,
}

/// Production of a repository matches a commit of its production branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Production {
    pub repo: String,
    pub installation: u64,
    pub branch: String,
    pub sha: String,
    /// The file's `reconcile.drift` cron at that commit.
    pub drift_cron: String,
}

/// Why a job did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (a provider or GitHub outage, a failed step).
    #[error("{0}")]
    Retry(String),
    /// Will fail the same way again until someone changes something (an invalid file,
    /// missing credentials).
    #[error("{0}")]
    Fail(String),
}

fn from_github(e: GitHubError) -> JobError {
    if e.is_transient() {
        JobError::Retry(e.to_string())
    } else {
        JobError::Fail(e.to_string())
    }
}

/// Everything a job needs besides the job.
pub struct Reconciler {
    pub github: Arc<GitHubApp>,
    pub credentials: Credentials,
    pub http: Http,
    /// Opens sealed values (the server's age identity).
    pub opener: Arc<dyn Opener>,
    /// Where stored values (`stored: true`) live; opened per job that uses them.
    pub store: Option<crate::store::Location>,
    pub metrics: Arc<Metrics>,
    /// Provider calls in flight per apply.
    pub concurrency: usize,
    /// Link from commit statuses to the server's run pages, when it has a public URL.
    pub public_url: Option<String>,
    /// Where run records go (the run pages); `None`: no records, statuses without links.
    pub runs: Option<Arc<dyn super::runs::RunLog>>,
    /// Told about applied steps, torn-down previews and failed jobs (uptime targets and
    /// notifications, `serve::uptime`).
    pub observer: Option<Arc<dyn ReconcileObserver>>,
    /// The control plane is on (teams register projects): stored values of a project name
    /// go only to the repository it is registered for, and an unregistered name gets none.
    pub require_registration: bool,
    /// The store `config_path` reads registrations from, opened on first use and kept.
    pub registrations: Arc<std::sync::Mutex<Option<crate::store::Store>>>,
}

/// Whether a run of `repo` may open the stored values of a project name registered for
/// `registered` (`None`: no project holds the name). With the control plane on, values go
/// only to the registered repository (a name nobody holds, e.g. values left by a deletion
/// cut short, is nobody's to hand out); without it, the operator's `telbase env set` values
/// go where the file names them, as before. The refusal never names the other repository:
/// whoever can push a file must not learn which repository holds a name.
///
/// `registered` is the registered repository and whether its team still holds a grant for
/// it: with the control plane on, a grant taken back stops the values too.
pub fn stored_values_allowed(
    registered: Option<(&str, bool)>,
    repo: &str,
    require_registration: bool,
) -> Result<(), String> {
    match registered {
        Some((r, _)) if !r.eq_ignore_ascii_case(repo) => Err(
            "this file's project name is registered on this server for another repository: its stored values are not handed to this one".into(),
        ),
        Some((_, false)) if require_registration => Err(
            "this repository is no longer granted to the team whose project holds this file's project name (a server operator took it back): its stored values are not handed out".into(),
        ),
        Some(_) => Ok(()),
        None if require_registration => Err(
            "this file's project name is not registered on this server (a team registers it as a project for this repository); its stored values are not handed out".into(),
        ),
        None => Ok(()),
    }
}

/// What the rest of the server learns from reconciles. Called on the worker's task: keep it
/// quick and never blocking (queue slow work).
pub trait ReconcileObserver: Send + Sync {
    /// A step of an apply to `repository`'s `environment` finished.
    fn step(&self, repository: &str, environment: Environment, step: &apply::StepReport);
    /// A preview was torn down: everything it had is gone.
    fn torn_down(&self, repository: &str, environment: Environment);
    /// A job's attempt failed; `last_attempt` when it will not be tried again.
    fn failed(&self, job: &Job, error: &JobError, last_attempt: bool);
}

/// The file a repository no project holds is read at (and every repository without the
/// control plane).
const CONFIG_FILE: &str = crate::control::projects::DEFAULT_CONFIG_PATH;

const NO_CHANGES: &str = "No changes";

/// A preview's idle time before the sweep removes it, when its file sets none (the
/// documented default of `environments.preview.ttl`).
pub const DEFAULT_PREVIEW_TTL: u64 = 7 * 86_400;

/// What a job does in its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Make it match the commit.
    Apply,
    /// Remove what a closed pull request's preview owns.
    Teardown,
    /// A scheduled check: correct, report or skip, as the file's `on_drift` says.
    Drift,
}

/// The hidden marker of Telbase's one comment per pull request.
pub const PREVIEW_MARKER: &str = "<!-- telbase:preview config=telbase.yaml -->";

impl Reconciler {
    /// Carry out one decision.
    pub async fn run(&self, intent: &Intent) -> Result<Done, JobError> {
        let reached = self.run_inner(intent).await?;
        let production = match (intent, &reached) {
            (
                Intent::Push {
                    installation,
                    repo,
                    branch,
                    sha,
                }
                | Intent::Drift {
                    installation,
                    repo,
                    branch,
                    sha,
                },
                Reached::ProductionWith(_, cron),
            ) => vec![Production {
                repo: repo.clone(),
                installation: *installation,
                branch: branch.clone(),
                sha: sha.clone(),
                drift_cron: cron.clone(),
            }],
            (_, Reached::Installed(_, productions)) => productions.clone(),
            // Recorded like a GitHub repository's, under installation 0 (GitHub's ids start
            // at 1), so its drift schedule and last commit are kept in the same place.
            (
                Intent::Watched {
                    source,
                    branch,
                    sha,
                    ..
                },
                Reached::ProductionWith(_, cron),
            ) => vec![Production {
                repo: source.name.clone(),
                installation: super::watch::WATCH_INSTALLATION,
                branch: branch.clone(),
                sha: sha.clone(),
                drift_cron: cron.clone(),
            }],
            _ => Vec::new(),
        };
        Ok(Done {
            summary: reached.summary(),
            production,
        })
    }

    async fn run_inner(&self, intent: &Intent) -> Result<Reached, JobError> {
        match intent {
            Intent::Push {
                installation,
                repo,
                branch,
                sha,
            } => {
                self.environment(
                    *installation,
                    repo,
                    branch,
                    sha,
                    Environment::Production,
                    Mode::Apply,
                )
                .await
            }
            Intent::Preview {
                installation,
                repo,
                pr,
                sha,
                head_branch,
            } => {
                let env = Environment::Preview { pull_request: *pr };
                self.environment(*installation, repo, head_branch, sha, env, Mode::Apply)
                    .await
            }
            Intent::Teardown {
                installation,
                repo,
                pr,
                sha,
                head_branch,
            } => {
                let env = Environment::Preview { pull_request: *pr };
                self.environment(*installation, repo, head_branch, sha, env, Mode::Teardown)
                    .await
            }
            Intent::Drift {
                installation,
                repo,
                branch,
                sha,
            } => {
                self.environment(
                    *installation,
                    repo,
                    branch,
                    sha,
                    Environment::Production,
                    Mode::Drift,
                )
                .await
            }
            Intent::Installed {
                installation,
                repos,
                ..
            } => {
                // On install, each repository whose default branch has a telbase.yaml is
                // reconciled at that branch's head (the file decides if it is production's).
                let mut done = Vec::new();
                let mut productions = Vec::new();
                let mut retry = None;
                for repo in repos {
                    let head = async {
                        let Some(branch) = self.github.default_branch(*installation, repo).await?
                        else {
                            return Ok(None);
                        };
                        let sha = self
                            .github
                            .branch_head(*installation, repo, &branch)
                            .await?;
                        Ok::<_, GitHubError>(sha.map(|sha| (branch, sha)))
                    }
                    .await;
                    match head {
                        Ok(Some((branch, sha))) => {
                            let r = self
                                .environment(
                                    *installation,
                                    repo,
                                    &branch,
                                    &sha,
                                    Environment::Production,
                                    Mode::Apply,
                                )
                                .await;
                            match r {
                                Ok(reached) => {
                                    if let Reached::ProductionWith(_, cron) = &reached {
                                        productions.push(Production {
                                            repo: repo.clone(),
                                            installation: *installation,
                                            branch: branch.clone(),
                                            sha: sha.clone(),
                                            drift_cron: cron.clone(),
                                        });
                                    }
                                    done.push(format!("{repo}: {}", reached.summary()));
                                }
                                Err(JobError::Retry(e)) => retry = Some(format!("{repo}: {e}")),
                                Err(JobError::Fail(e)) => done.push(format!("{repo}: {e}")),
                            }
                        }
                        Ok(None) => done.push(format!("{repo}: no default branch")),
                        Err(e) if e.is_transient() => retry = Some(format!("{repo}: {e}")),
                        Err(e) => done.push(format!("{repo}: {e}")),
                    }
                }
                // Repositories already reconciled are no-ops on the retry (their plans are
                // empty), so retrying the whole installation is safe.
                match retry {
                    Some(e) => Err(JobError::Retry(e)),
                    None => Ok(Reached::Installed(
                        format!("installed: {}", done.join("; ")),
                        productions,
                    )),
                }
            }
            Intent::Watched {
                source,
                branch,
                sha,
                drift,
            } => {
                let mode = if *drift { Mode::Drift } else { Mode::Apply };
                self.environment_at(
                    Some(source),
                    super::watch::WATCH_INSTALLATION,
                    &source.name,
                    branch,
                    sha,
                    Environment::Production,
                    mode,
                )
                .await
            }
            Intent::Removed { repos, .. } => Ok(Reached::Nothing(format!(
                "removed from {} repositories; their resources are left as they are",
                repos.len()
            ))),
            Intent::Ignore(why) => Ok(Reached::Nothing(why.clone())),
        }
    }

    /// Refresh the rate-limit gauge (GitHub does not count `/rate_limit` against it).
    pub async fn observe_rate_limit(&self, intent: &Intent) {
        let installation = match intent {
            Intent::Push { installation, .. }
            | Intent::Drift { installation, .. }
            | Intent::Preview { installation, .. }
            | Intent::Teardown { installation, .. }
            | Intent::Installed { installation, .. }
            | Intent::Removed { installation, .. } => *installation,
            Intent::Ignore(_) | Intent::Watched { .. } => return,
        };
        if let Ok(n) = self.github.rate_limit_remaining(installation).await {
            self.metrics
                .github_rate_limit_remaining
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// One environment at one commit, recorded as a run (see `super::runs`).
    async fn environment(
        &self,
        installation: u64,
        repo: &str,
        branch: &str,
        sha: &str,
        environment: Environment,
        mode: Mode,
    ) -> Result<Reached, JobError> {
        self.environment_at(None, installation, repo, branch, sha, environment, mode)
            .await
    }

    /// `environment`, with the config read from a watched git repository (`git`) instead
    /// of GitHub; then no commit status is set and the outcome is logged instead. Every
    /// reconcile, from either source, is recorded as a run.
    #[allow(clippy::too_many_arguments)]
    async fn environment_at(
        &self,
        git: Option<&super::watch::GitSource>,
        installation: u64,
        repo: &str,
        branch: &str,
        sha: &str,
        environment: Environment,
        mode: Mode,
    ) -> Result<Reached, JobError> {
        let mode_name = match mode {
            Mode::Apply => "apply",
            Mode::Teardown => "teardown",
            Mode::Drift => "drift",
        };
        let mut run =
            super::runs::Draft::begin(self.runs.clone(), repo, branch, sha, environment, mode_name)
                .await;
        let result = self
            .environment_body(
                git,
                installation,
                repo,
                branch,
                sha,
                environment,
                mode,
                &mut run,
            )
            .await;
        match &result {
            Ok(r) => run.finish("success", r.summary_ref()).await,
            Err(JobError::Retry(e)) => run.finish("failure", e).await,
            Err(JobError::Fail(e)) => run.finish("error", e).await,
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn environment_body(
        &self,
        git: Option<&super::watch::GitSource>,
        installation: u64,
        repo: &str,
        branch: &str,
        sha: &str,
        environment: Environment,
        mode: Mode,
        run: &mut super::runs::Draft,
    ) -> Result<Reached, JobError> {
        let teardown = mode == Mode::Teardown;
        let (config_path, read) = match git {
            Some(g) => (
                g.config_path.clone(),
                super::watch::read_config(g, sha).await,
            ),
            None => {
                let path = self.config_path(repo).await.map_err(JobError::Retry)?;
                let read = self
                    .github
                    .read_file(installation, repo, &path, sha)
                    .await
                    .map_err(from_github);
                (path, read)
            }
        };
        let Some(bytes) = read? else {
            return Ok(Reached::Nothing(format!("no {config_path} at {sha}")));
        };
        let target_url = run.target_url(self.public_url.as_deref());
        let target_url = target_url.as_deref();
        let context = match (environment, mode) {
            (_, Mode::Drift) => "telbase/drift",
            (Environment::Production, _) => "telbase/production",
            (Environment::Preview { .. }, _) => "telbase/preview",
        };
        let status = |state, description: String| async move {
            if let Some(g) = git {
                super::watch::log_outcome(g, sha, context, state, &description);
                return;
            }
            let st = CommitStatus {
                state,
                context,
                description: &description,
                target_url,
            };
            // A status that cannot be set must not fail the reconcile itself.
            if let Err(e) = self.github.set_status(installation, repo, sha, &st).await {
                tracing::warn!(error = %e, repo, sha, "cannot set the commit status");
            }
        };
        // The commit's own problems (not UTF-8, invalid) are a `failure` on it; problems of
        // the server (no store for stored values, missing credentials) are an `error`.
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                let msg = format!("{config_path} is not UTF-8");
                run.save().await;
                status(StatusState::Failure, msg.clone()).await;
                return Err(JobError::Fail(msg));
            }
        };
        let mut desired = match crate::config::load_str(&text, environment) {
            Ok((d, _warnings)) => d,
            Err(diags) => {
                let first = diags
                    .iter()
                    .find(|d| d.is_error())
                    .map(|d| format!("line {}: {}", d.pos.line, d.message))
                    .unwrap_or_else(|| "invalid".into());
                let msg = format!("{config_path} is invalid: {first}");
                run.save().await;
                status(StatusState::Failure, msg.clone()).await;
                return Err(JobError::Fail(msg));
            }
        };
        if environment == Environment::Production && branch != desired.reconcile.production_branch {
            return Ok(Reached::Nothing(format!(
                "{branch} is not the production branch ({})",
                desired.reconcile.production_branch
            )));
        }
        let apply = match (mode, desired.reconcile.on_drift) {
            (Mode::Drift, "ignore") => {
                return Ok(Reached::Nothing(
                    "drift checks are off (reconcile.on_drift: ignore)".into(),
                ));
            }
            (Mode::Drift, "warn") => false,
            _ => true,
        };
        if let Environment::Preview { .. } = environment {
            run.record.preview_ttl_seconds = Some(
                desired
                    .reconcile
                    .preview_ttl_seconds
                    .unwrap_or(DEFAULT_PREVIEW_TTL),
            );
        }
        // Saved before the first status links to it, so the link never leads nowhere.
        run.save().await;
        if mode == Mode::Apply {
            status(StatusState::Pending, "Reconciling…".into()).await;
        }
        let opener = match self.opener_for(&mut desired, repo) {
            Ok(o) => o,
            Err(e) => {
                if !teardown {
                    status(StatusState::Error, e.clone()).await;
                }
                return Err(JobError::Fail(e));
            }
        };
        let desired_cron = desired.reconcile.drift_cron.clone();
        match git {
            // Vercel deploys from GitHub: only a watched repository hosted there is deployed;
            // elsewhere settings are managed and images pinned, as `telbase reconcile` does.
            Some(g) => match &g.github {
                Some(gh) => desired.pin_git(Some(gh), sha),
                None => desired.pin_images(sha),
            },
            None => desired.pin_git(Some(repo), sha),
        }
        let registry = match providers::registry_for(&desired, &self.credentials, &self.http) {
            Ok(r) => r,
            Err(e) => {
                // The server lacks credentials: an `error`, and not left `pending`.
                if !teardown {
                    status(StatusState::Error, e.to_string()).await;
                }
                return Err(JobError::Fail(e.to_string()));
            }
        };
        if teardown {
            teardown_state(&mut desired);
        }
        let scope = Scope {
            project: desired.project.clone(),
            environment,
            git: Some(GitRef {
                repo: match git {
                    Some(g) => g.github.clone().unwrap_or_default(),
                    None => repo.to_owned(),
                },
                sha: sha.to_owned(),
                branch: branch.to_owned(),
            }),
        };
        let started = Instant::now();
        let pr = match environment {
            Environment::Preview { pull_request } => Some(pull_request),
            Environment::Production => None,
        };
        let result = self
            .plan_and_apply(desired, registry, scope, opener, apply, run)
            .await;
        if let Some(pr) = pr {
            self.comment(installation, repo, pr, sha, teardown, &result)
                .await;
        }
        if let (true, Ok(_), Some(obs)) = (teardown, &result, &self.observer) {
            obs.torn_down(repo, environment);
        }
        let env_label = match environment {
            Environment::Production => "production",
            Environment::Preview { .. } => "preview",
        };
        let outcome = match &result {
            Ok(_) => "success",
            Err(JobError::Retry(_)) => "failure",
            Err(JobError::Fail(_)) => "error",
        };
        self.metrics
            .reconcile_seconds
            .get_or_create(&ReconcileLabels {
                environment: env_label.into(),
                result: outcome.into(),
            })
            .observe(started.elapsed().as_secs_f64());
        if !teardown {
            match &result {
                // Drift reported, not corrected: the check fails so someone looks.
                Ok((summary, _)) if !apply && summary != NO_CHANGES => {
                    status(StatusState::Failure, summary.clone()).await
                }
                Ok((summary, _)) => status(StatusState::Success, summary.clone()).await,
                Err(e) => status(StatusState::Failure, e.to_string()).await,
            }
        }
        let cron = desired_cron;
        result.map(|(summary, _)| match environment {
            Environment::Production if apply => Reached::ProductionWith(summary, cron),
            _ => Reached::Nothing(summary),
        })
    }

    /// The file to read in `repo`: with the control plane on, the config path its project
    /// was registered with (`telbase.yaml` unless the team chose another, e.g. one per
    /// directory of a monorepo); `telbase.yaml` for a repository no project holds, and
    /// without the control plane. An unreadable store is the server's problem, so the
    /// message names no database and the job is retried.
    ///
    /// The lookup runs on the blocking pool, on one store kept open for it: opening a
    /// PostgreSQL store costs connections and a migration check, too much for every job. A
    /// store that failed is dropped and opened again by the next lookup, so a database that
    /// came back is found again without a restart.
    pub(super) async fn config_path(&self, repo: &str) -> Result<String, String> {
        let (true, Some(location)) = (self.require_registration, self.store.clone()) else {
            return Ok(CONFIG_FILE.to_owned());
        };
        let (kept, repo) = (self.registrations.clone(), repo.to_owned());
        let looked_up = tokio::task::spawn_blocking(move || {
            let mut kept = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let store = match kept.as_mut() {
                Some(s) => s,
                None => kept.insert(crate::store::open(&location).map_err(|e| {
                    tracing::error!(error = %e, "the store cannot be opened to read the project registrations");
                    "the server cannot open its store to read the project registrations (see the server's log)".to_owned()
                })?),
            };
            crate::control::projects::registered_config_path(store, &repo).map_err(|e| {
                *kept = None;
                tracing::error!(error = %e, "cannot read the project registrations");
                "the server cannot read its project registrations (see the server's log)".to_owned()
            })
        })
        .await
        .map_err(|_| "the lookup of the project registrations stopped unexpectedly".to_owned())??;
        Ok(looked_up.unwrap_or_else(|| CONFIG_FILE.to_owned()))
    }

    /// The opener for this job: the server's age identity, plus the store when the file
    /// uses `stored:` values (their keyed fingerprints are read into `desired` for the plan).
    fn opener_for(
        &self,
        desired: &mut crate::model::DesiredState,
        repo: &str,
    ) -> Result<Arc<dyn Opener>, String> {
        if !crate::secrets::stored::uses_stored(desired) {
            return Ok(self.opener.clone());
        }
        let location = self
            .store
            .as_ref()
            .ok_or("the file uses stored values, but the server has no store")?;
        // The store's own error names the database (and its TLS or server details): fit for
        // the server's log, not for a commit status, a run page or a notification.
        let mut store = crate::store::open(location).map_err(|e| {
            tracing::error!(error = %e, "the store of stored values cannot be opened");
            "the server cannot open its store of stored values (see the server's log)".to_owned()
        })?;
        // Stored values are kept by project name: only the repository the name is registered
        // for receives them (`stored_values_allowed`).
        let registered = crate::control::projects::registration(&mut store, &desired.project)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read the project registrations");
                "the server cannot read its project registrations (see the server's log)".to_owned()
            })?;
        stored_values_allowed(
            registered.as_ref().map(|r| (r.repo.as_str(), r.granted)),
            repo,
            self.require_registration,
        )?;
        crate::secrets::stored::read_fingerprints(desired, &mut store)?;
        let keys = crate::secrets::envelope::key_provider_from_vars(|k| std::env::var(k).ok())
            .map_err(|e| e.to_string());
        Ok(Arc::new(crate::secrets::stored::StoreOpener::with_keys(
            self.opener.clone(),
            store,
            keys,
        )))
    }

    /// Keep one Telbase comment on the pull request saying what its preview is (found by a
    /// hidden marker and updated in place, never one comment per push).
    async fn comment(
        &self,
        installation: u64,
        repo: &str,
        pr: u64,
        sha: &str,
        teardown: bool,
        result: &Result<(String, String), JobError>,
    ) {
        let short = sha.get(..7).unwrap_or(sha);
        let body = match (teardown, result) {
            (true, Ok(_)) => {
                format!("### Telbase preview\n\nThe preview was torn down (at {short}).")
            }
            (true, Err(e)) => format!(
                "### Telbase preview\n\nTearing the preview down failed and will be retried: {e}"
            ),
            (false, Ok((summary, plan))) => {
                format!("### Telbase preview at {short}\n\n**{summary}**\n\n{plan}")
            }
            (false, Err(e)) => {
                format!("### Telbase preview at {short}\n\n**Failed** (retried with backoff): {e}")
            }
        };
        // Leave room for the heading and marker under GitHub's comment limit.
        let body: String = body
            .chars()
            .take(crate::plan::GITHUB_COMMENT_LIMIT - 200)
            .collect();
        if let Err(e) = self
            .github
            .upsert_comment(installation, repo, pr, PREVIEW_MARKER, &body)
            .await
        {
            tracing::warn!(error = %e, repo, pr, "cannot update the pull request comment");
        }
    }

    /// Finished steps go to the observer, with the repository and environment they belong to.
    /// Applied steps, reported under the job's repository (a watched repository's source
    /// name when it is not on GitHub, so those never share an empty name).
    fn step_observer(
        &self,
        repo: &str,
        env: Environment,
    ) -> Option<Arc<dyn Fn(apply::Event) + Send + Sync>> {
        let obs = self.observer.clone()?;
        let repo = repo.to_owned();
        Some(Arc::new(move |e: apply::Event| {
            if let apply::Event::Finished(step) = e {
                obs.step(&repo, env, &step);
            }
        }))
    }

    async fn plan_and_apply(
        &self,
        desired: crate::model::DesiredState,
        registry: providers::Registry,
        scope: Scope,
        opener: Arc<dyn Opener>,
        apply: bool,
        run: &mut super::runs::Draft,
    ) -> Result<(String, String), JobError> {
        let actual = apply::observe(&registry, &scope)
            .await
            .map_err(|e| JobError::Retry(format!("observing: {e}")))?;
        let plan = plan::plan(&desired, &actual);
        // The run page shows the plan as `telbase plan` prints it: fingerprints, no values.
        run.record.plan = plan::render_text(&plan);
        let markdown = plan::render_markdown(&plan, crate::plan::GITHUB_COMMENT_LIMIT - 1_000);
        if !plan.has_changes() {
            return Ok((NO_CHANGES.into(), markdown));
        }
        let s = plan.summary();
        if !apply {
            return Ok((
                format!(
                    "Drift: {} to create, {} to update, {} to replace, {} to delete (on_drift: warn)",
                    s.create, s.update, s.replace, s.delete
                ),
                markdown,
            ));
        }
        let on_event = self.step_observer(&run.record.repo, scope.environment);
        let report = apply::execute(
            Arc::new(plan),
            Arc::new(desired),
            Arc::new(actual),
            Arc::new(registry),
            Arc::new(scope),
            opener,
            apply::Options {
                concurrency: self.concurrency,
                on_event,
            },
        )
        .await;
        run.record.report = report_json(&report);
        let summary = format!(
            "{} created, {} updated, {} replaced, {} deleted",
            s.create, s.update, s.replace, s.delete
        );
        if report.succeeded() {
            Ok((format!("Applied: {summary}"), markdown))
        } else {
            let failed = report
                .steps
                .iter()
                .find_map(|st| match &st.outcome {
                    apply::Outcome::Failed { error } => Some(format!("{}: {error}", st.key)),
                    _ => None,
                })
                .unwrap_or_else(|| "a step failed".into());
            Err(JobError::Retry(format!("apply failed at {failed}")))
        }
    }
}

/// Turn a preview's desired state into its teardown: everything the preview owns goes;
/// what it shares with production stays, with the preview's own part of it emptied (its
/// branch-scoped Vercel env vars). Planned with pruning on, so only what this preview owns
/// is deleted. (`telbase ci apply` on a closed pull request does the same.)
pub fn teardown_state(desired: &mut crate::model::DesiredState) {
    desired
        .resources
        .retain(|k, _| k.kind.shared_with_production());
    for r in desired.resources.values_mut() {
        r.depends_on.clear();
        if let crate::model::ResourceSpec::VercelProject(p) = &mut r.spec {
            p.env.clear();
        }
    }
    desired.reconcile.prune = true;
}

/// The executor's report for the run page, with resource keys as people read them
/// (`vercel/project/notes-web`).
fn report_json(report: &apply::Report) -> String {
    let steps: Vec<serde_json::Value> = report
        .steps
        .iter()
        .map(|st| {
            let mut v = serde_json::to_value(st).unwrap_or_default();
            v["key"] = st.key.to_string().into();
            if let apply::Outcome::Skipped { because } = &st.outcome {
                v["because"] = because.to_string().into();
            }
            v
        })
        .collect();
    serde_json::to_string(&steps).unwrap_or_else(|_| "[]".into())
}

/// How far a job got: production of the repository matched to the commit, or something else
/// (a preview, a branch that is not production, nothing to do), with the summary.
enum Reached {
    /// Production matches the commit; the file's drift cron.
    ProductionWith(String, String),
    /// An installation's repositories, and those whose production now matches a commit.
    Installed(String, Vec<Production>),
    Nothing(String),
}

impl Reached {
    fn summary_ref(&self) -> &str {
        match self {
            Reached::ProductionWith(s, _) | Reached::Installed(s, _) | Reached::Nothing(s) => s,
        }
    }

    fn summary(self) -> String {
        match self {
            Reached::ProductionWith(s, _) | Reached::Installed(s, _) | Reached::Nothing(s) => s,
        }
    }
}

/// Backoff before attempt `n + 1` (kube-runtime's shape: exponential, capped).
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << attempts.min(8)).min(900))
}

/// Run jobs until `shutdown` turns true; a job in flight finishes first (its lease would
/// hand it to another replica otherwise, which is safe but slower).
pub async fn work(
    jobs: Arc<dyn Jobs>,
    reconciler: Arc<Reconciler>,
    owner: String,
    lease: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    wake: Arc<tokio::sync::Notify>,
) {
    // How often an idle worker looks at the queue by itself: for jobs queued by another
    // replica, a poll or the sweep; this process's deliveries wake it at once.
    const IDLE: Duration = Duration::from_millis(500);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let claimed = {
            let jobs = jobs.clone();
            let owner = owner.clone();
            tokio::task::spawn_blocking(move || jobs.claim(&owner, lease)).await
        };
        let job = match claimed {
            Ok(Ok(Some(job))) => job,
            Ok(Ok(None)) => {
                tokio::select! {
                    _ = tokio::time::sleep(IDLE) => {}
                    _ = wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the queue cannot be read; retrying");
                tokio::time::sleep(IDLE * 4).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the queue task failed; retrying");
                tokio::time::sleep(IDLE * 4).await;
                continue;
            }
        };
        // Keep the lease while the job runs.
        let renew = {
            let jobs = jobs.clone();
            let owner = owner.clone();
            let id = job.id;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let jobs = jobs.clone();
                    let owner = owner.clone();
                    let still =
                        tokio::task::spawn_blocking(move || jobs.renew(id, &owner, lease)).await;
                    if !matches!(still, Ok(Ok(true))) {
                        return;
                    }
                }
            })
        };
        let result = super::runs::JOB
            .scope(job.id, reconciler.run(&job.intent))
            .await;
        reconciler.observe_rate_limit(&job.intent).await;
        renew.abort();
        if let (Err(e), Some(obs)) = (&result, &reconciler.observer) {
            let last = matches!(e, JobError::Fail(_))
                || job.attempts + 1 >= crate::store::sqlite::MAX_ATTEMPTS;
            obs.failed(&job, e, last);
        }
        let jobs2 = jobs.clone();
        let owner2 = owner.clone();
        let attempts = job.attempts;
        let recorded = tokio::task::spawn_blocking(move || match &result {
            Ok(done) => {
                for p in &done.production {
                    jobs2.reconciled(p)?;
                }
                jobs2.finish(job.id, &owner2, &done.summary)
            }
            Err(JobError::Retry(e)) => jobs2.retry(job.id, &owner2, backoff(attempts), e),
            Err(JobError::Fail(e)) => jobs2.fail(job.id, &owner2, e),
        })
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::error!(
                "a job's result could not be recorded; its lease will expire and it runs again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_values_go_only_to_the_registered_repository() {
        use super::stored_values_allowed as allowed;
        let granted = Some(("acme/web", true));
        assert!(allowed(granted, "Acme/Web", true).is_ok());
        assert!(allowed(granted, "acme/web", false).is_ok());
        let other = allowed(granted, "evil/x", false).unwrap_err();
        assert!(!other.contains("acme"), "names no repository: {other}");
        assert!(allowed(granted, "evil/x", true).is_err());
        // The grant taken back: no values with the control plane; grants mean nothing
        // without it.
        let revoked = Some(("acme/web", false));
        assert!(allowed(revoked, "acme/web", true).is_err());
        assert!(allowed(revoked, "acme/web", false).is_ok());
        assert!(allowed(revoked, "evil/x", true).is_err());
        // A name no project holds: refused with the control plane, the operator's otherwise.
        assert!(allowed(None, "evil/x", true).is_err());
        assert!(allowed(None, "acme/web", false).is_ok());
    }
}
