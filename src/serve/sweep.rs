//! Polling of open pull requests and the preview sweep: what keeps previews right when
//! webhooks go missing (GitHub does not redeliver failed ones) and when nobody closes them.
//!
//! [`poll_pulls`] (every poll round) lists each known repository's open pull requests and
//! queues a preview for any head commit that has had no preview run, and a teardown for any
//! preview Telbase still holds whose pull request GitHub reports closed. [`sweep_once`]
//! (every `TELBASE_SWEEP_SECONDS`) does that too, then tears down previews idle longer than
//! their file's `environments.preview.ttl`, then asks the providers which preview
//! environments of each project have resources (by ownership markers) and tears down those
//! whose pull request is not open, then prunes run records past their retention.
//!
//! Everything it decides goes through the queue as the same `Intent`s webhooks produce
//! (under synthetic delivery ids, so a round that sees the same thing again queues nothing
//! new), and so through the worker's planner and executor: a teardown keeps what a preview
//! shares with production and deletes only what the planner's safety rules allow. The sweep
//! never deletes anything itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::github::app::GitHubApp;
use crate::github::webhook::Intent;
use crate::model::Environment;
use crate::store::runs::RunRecord;
use crate::store::sqlite::ProductionRepo;

use super::queue::StoreQueue;
use super::worker::{DEFAULT_PREVIEW_TTL, Reconciler};
use super::{Inbox as _, IncomingDelivery, Recorded};

/// What one round queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Previews of open pull requests whose head commit had none.
    pub previews: usize,
    /// Teardowns of previews whose pull request is closed.
    pub closed: usize,
    /// Teardowns of previews idle longer than their TTL.
    pub expired: usize,
    /// Teardowns of preview environments found at providers with no open pull request.
    pub orphans: usize,
    /// Run records deleted for age.
    pub pruned: usize,
}

/// What a poll of pull requests found, for the sweep's later steps.
#[derive(Debug, Default)]
pub struct Polled {
    pub report: SweepReport,
    /// Open pull-request numbers of each repository that could be listed.
    pub open: BTreeMap<String, BTreeSet<u64>>,
}

async fn blocking<T: Send + 'static>(
    queue: &Arc<StoreQueue>,
    f: impl FnOnce(&mut dyn crate::store::QueueRows) -> Result<T, crate::store::StoreError>
    + Send
    + 'static,
) -> Result<T, String> {
    let q = queue.clone();
    tokio::task::spawn_blocking(move || q.with(f))
        .await
        .map_err(|e| e.to_string())?
}

/// Queue `intent` under the synthetic delivery `id` unless that id was recorded before.
async fn queue_once(
    queue: &Arc<StoreQueue>,
    id: String,
    event: &str,
    intent: Intent,
) -> Result<bool, String> {
    let delivery = IncomingDelivery {
        id,
        event: event.into(),
        intents: vec![intent],
        ignored: Vec::new(),
    };
    let q = queue.clone();
    let r = tokio::task::spawn_blocking(move || q.record(&delivery))
        .await
        .map_err(|e| e.to_string())??;
    Ok(matches!(r, Recorded::New { .. }))
}

/// One round of polling pull requests (see the module's documentation).
/// The repositories the App sees: watched git repositories (`--watch`) have no pull
/// requests and no installation to ask GitHub with.
async fn github_repositories(queue: &Arc<StoreQueue>) -> Result<Vec<ProductionRepo>, String> {
    let mut repos = blocking(queue, |s| s.production_repositories()).await?;
    repos.retain(|r| r.installation != super::watch::WATCH_INSTALLATION);
    Ok(repos)
}

pub async fn poll_pulls(queue: &Arc<StoreQueue>, github: &GitHubApp) -> Result<Polled, String> {
    poll_pulls_as(queue, github, "poll").await
}

async fn poll_pulls_as(
    queue: &Arc<StoreQueue>,
    github: &GitHubApp,
    event: &str,
) -> Result<Polled, String> {
    let repos = github_repositories(queue).await?;
    let held = blocking(queue, |s| s.held_previews()).await?;
    let mut out = Polled::default();
    for ProductionRepo {
        repo, installation, ..
    } in repos
    {
        let open = match github.open_pulls(installation, &repo).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, repo, "cannot list open pull requests");
                continue;
            }
        };
        let numbers: BTreeSet<u64> = open.iter().map(|p| p.number).collect();
        for p in open.iter().filter(|p| !p.from_fork) {
            let (r, n, sha) = (repo.clone(), p.number, p.head_sha.clone());
            if blocking(queue, move |s| s.has_preview_run(&r, n, &sha)).await? {
                continue;
            }
            let intent = Intent::Preview {
                installation,
                repo: repo.clone(),
                pr: p.number,
                sha: p.head_sha.clone(),
                head_branch: p.head_branch.clone(),
            };
            let id = format!("poll:{repo}#{}@{}", p.number, p.head_sha);
            if queue_once(queue, id, event, intent).await? {
                tracing::info!(repo, pr = p.number, sha = %p.head_sha, "a pull request event was missed; previewing its head");
                out.report.previews += 1;
            }
        }
        for h in held.iter().filter(|h| h.repo == repo) {
            let Some(n) = h.pull_request.filter(|n| !numbers.contains(n)) else {
                continue;
            };
            // Not in the open list: ask about it, so a pull request opened or reopened
            // while listing is never torn down, and one the App cannot see (404) is left
            // alone rather than guessed about.
            match github.pull(installation, &repo, n).await {
                Ok(Some(p)) if p.state == "closed" => {
                    let intent = Intent::Teardown {
                        installation,
                        repo: repo.clone(),
                        pr: n,
                        sha: p.head_sha.clone(),
                        head_branch: p.head_branch.clone(),
                    };
                    let when = p.closed_at.unwrap_or_else(|| p.head_sha.clone());
                    // The same id from the poll and the sweep: one teardown per closing.
                    let id = format!("poll:{repo}#{n}:closed@{when}");
                    if queue_once(queue, id, event, intent).await? {
                        tracing::info!(
                            repo,
                            pr = n,
                            "a pull request closed without a webhook; tearing its preview down"
                        );
                        out.report.closed += 1;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, repo, pr = n, "cannot read a pull request"),
            }
        }
        out.open.insert(repo, numbers);
    }
    Ok(out)
}

/// Whether the preview of `run` has been idle longer than its TTL at `now_ms`.
fn expired(run: &RunRecord, now_ms: i64) -> bool {
    let ttl = run.preview_ttl_seconds.unwrap_or(DEFAULT_PREVIEW_TTL);
    let ttl_ms = i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX);
    run.mode == "apply" && run.started_at.saturating_add(ttl_ms) <= now_ms
}

/// One sweep round at `now` (see the module's documentation).
pub async fn sweep_once(
    queue: &Arc<StoreQueue>,
    reconciler: &Reconciler,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<SweepReport, String> {
    let now_ms = now.timestamp_millis();
    let github = &reconciler.github;
    let Polled { mut report, open } = poll_pulls_as(queue, github, "sweep").await?;
    let repos = github_repositories(queue).await?;
    let installations: BTreeMap<String, u64> = repos
        .iter()
        .map(|r| (r.repo.clone(), r.installation))
        .collect();

    // Idle past the TTL.
    let held = blocking(queue, |s| s.held_previews()).await?;
    let mut queued: BTreeSet<(String, u64)> = BTreeSet::new();
    for h in held.iter().filter(|h| expired(h, now_ms)) {
        let (Some(n), Some(&installation)) = (h.pull_request, installations.get(&h.repo)) else {
            continue;
        };
        let intent = Intent::Teardown {
            installation,
            repo: h.repo.clone(),
            pr: n,
            sha: h.sha.clone(),
            head_branch: h.branch.clone(),
        };
        let id = format!("sweep:{}#{n}:ttl@{}", h.repo, h.id);
        if queue_once(queue, id, "sweep", intent).await? {
            tracing::info!(repo = %h.repo, pr = n, "preview idle past its TTL; tearing it down");
            report.expired += 1;
        }
        queued.insert((h.repo.clone(), n));
    }

    // Orphans: preview environments with resources at the providers and no open pull
    // request. Only repositories whose open pull requests could be listed this round.
    for r in &repos {
        let (Some(sha), Some(open)) = (&r.reconciled, open.get(&r.repo)) else {
            continue;
        };
        let found = match preview_environments(reconciler, r, sha).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, repo = %r.repo, "cannot look for orphaned previews");
                continue;
            }
        };
        for n in found {
            if open.contains(&n) || queued.contains(&(r.repo.clone(), n)) {
                continue;
            }
            match github.pull(r.installation, &r.repo, n).await {
                Ok(Some(p)) if p.state == "open" => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, repo = %r.repo, pr = n, "cannot read a pull request");
                    continue;
                }
            }
            // The production commit's file names the providers and the project; the
            // teardown plans against what the preview environment holds there.
            let intent = Intent::Teardown {
                installation: r.installation,
                repo: r.repo.clone(),
                pr: n,
                sha: sha.clone(),
                head_branch: r.branch.clone(),
            };
            // Once per production commit: an orphan the planner will not remove is not queued
            // again every round (and two replicas sweeping agree on the id).
            let id = format!("sweep:{}#{n}:orphan@{sha}", r.repo);
            if queue_once(queue, id, "sweep", intent).await? {
                tracing::info!(repo = %r.repo, pr = n, "orphaned preview resources; tearing them down");
                report.orphans += 1;
            }
        }
    }

    let before = now_ms - i64::try_from(super::runs::RETENTION.as_millis()).unwrap_or(0);
    report.pruned = blocking(queue, move |s| s.prune_runs(before)).await?;
    Ok(report)
}

/// The pull-request numbers of preview environments that have resources at the providers
/// the repository's production file uses.
async fn preview_environments(
    reconciler: &Reconciler,
    r: &ProductionRepo,
    sha: &str,
) -> Result<BTreeSet<u64>, String> {
    let path = reconciler.config_path(&r.repo).await?;
    let Some(bytes) = reconciler
        .github
        .read_file(r.installation, &r.repo, &path, sha)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(BTreeSet::new());
    };
    let text = String::from_utf8(bytes).map_err(|_| format!("{path} is not UTF-8"))?;
    let (desired, _) = crate::config::load_str(&text, Environment::Production)
        .map_err(|_| format!("{path} does not validate"))?;
    let registry =
        crate::providers::registry_for(&desired, &reconciler.credentials, &reconciler.http)
            .map_err(|e| e.to_string())?;
    let mut out = BTreeSet::new();
    for p in registry.values() {
        out.extend(
            p.preview_environments(&desired.project)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}
