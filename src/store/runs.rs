//! Run records: one row per reconcile the server ran (production, a preview, a drift check,
//! a teardown), kept for the run pages that commit statuses link to, for the polling of
//! open pull requests (has this head commit had a preview?) and for the preview sweep
//! (which previews does Telbase still hold, and since when?).
//!
//! Every statement of the feature is here, in plain SQL that PostgreSQL also runs (no
//! SQLite-only functions; times are unix milliseconds in INTEGER/BIGINT columns), so a
//! second backend implements [`super::RunRows`] by copying them. A row holds what a plan
//! shows and nothing more: the rendered plan (secret values appear only as fingerprints),
//! the per-resource report, the summary; never a value.

use rusqlite::{OptionalExtension as _, params};

use super::{RunRows, SqliteStore, StoreError};

/// Migration 5 (appended to the SQLite list; the PostgreSQL one is the same text with
/// BIGINT for the INTEGER time columns).
pub const MIGRATION: &str = "
    -- One row per reconcile. `id` is random (128 bits, base32): the run page's address,
    -- which must not be guessable from another repository's. `pull_request` is set for
    -- previews; `mode` is apply, teardown or drift; `outcome` is running, success,
    -- failure (retried) or error (given up). Times are unix ms.
    CREATE TABLE runs (
        id                  TEXT PRIMARY KEY,
        repo                TEXT NOT NULL,
        environment         TEXT NOT NULL,
        pull_request        INTEGER,
        sha                 TEXT NOT NULL,
        branch              TEXT NOT NULL,
        trigger_kind        TEXT NOT NULL,
        mode                TEXT NOT NULL,
        job_id              INTEGER,
        started_at          INTEGER NOT NULL,
        ended_at            INTEGER,
        outcome             TEXT NOT NULL,
        summary             TEXT NOT NULL,
        plan                TEXT NOT NULL,
        report              TEXT NOT NULL,
        preview_ttl_seconds INTEGER
    );
    CREATE INDEX runs_by_repo ON runs(repo, started_at);
    CREATE INDEX runs_by_preview ON runs(repo, pull_request, started_at);
    CREATE INDEX runs_by_age ON runs(started_at);
";

/// One run, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunRecord {
    pub id: String,
    pub repo: String,
    /// `production` or `preview-N`.
    pub environment: String,
    pub pull_request: Option<u64>,
    pub sha: String,
    pub branch: String,
    /// push, pr, poll, drift, install, teardown or sweep.
    pub trigger: String,
    /// apply, teardown or drift.
    pub mode: String,
    pub job_id: Option<i64>,
    /// Unix ms.
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// running, success, failure (will be retried) or error (given up).
    pub outcome: String,
    pub summary: String,
    /// The plan as `telbase plan` prints it (fingerprints, never values).
    pub plan: String,
    /// The executor's per-resource report, JSON (an array of steps).
    pub report: String,
    /// How long the preview may stay idle (from its file) before the sweep removes it.
    pub preview_ttl_seconds: Option<u64>,
}

const COLUMNS: &str = "id, repo, environment, pull_request, sha, branch, trigger_kind, mode, \
     job_id, started_at, ended_at, outcome, summary, plan, report, preview_ttl_seconds";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get(0)?,
        repo: r.get(1)?,
        environment: r.get(2)?,
        pull_request: r.get::<_, Option<i64>>(3)?.map(|n| n.max(0) as u64),
        sha: r.get(4)?,
        branch: r.get(5)?,
        trigger: r.get(6)?,
        mode: r.get(7)?,
        job_id: r.get(8)?,
        started_at: r.get(9)?,
        ended_at: r.get(10)?,
        outcome: r.get(11)?,
        summary: r.get(12)?,
        plan: r.get(13)?,
        report: r.get(14)?,
        preview_ttl_seconds: r.get::<_, Option<i64>>(15)?.map(|n| n.max(0) as u64),
    })
}

fn opt_i64(n: Option<u64>) -> Option<i64> {
    n.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

impl RunRows for SqliteStore {
    fn save_run(&mut self, r: &RunRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO runs (id, repo, environment, pull_request, sha, branch, trigger_kind,
                        mode, job_id, started_at, ended_at, outcome, summary, plan, report,
                        preview_ttl_seconds)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                 ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at,
                        outcome = excluded.outcome, summary = excluded.summary,
                        plan = excluded.plan, report = excluded.report,
                        preview_ttl_seconds = excluded.preview_ttl_seconds",
                params![
                    r.id,
                    r.repo,
                    r.environment,
                    opt_i64(r.pull_request),
                    r.sha,
                    r.branch,
                    r.trigger,
                    r.mode,
                    r.job_id,
                    r.started_at,
                    r.ended_at,
                    r.outcome,
                    r.summary,
                    r.plan,
                    r.report,
                    opt_i64(r.preview_ttl_seconds),
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn run(&mut self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"),
                [id],
                row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn runs_of(
        &mut self,
        repo: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM runs WHERE repo = ?1
                 ORDER BY started_at DESC, id DESC LIMIT ?2 OFFSET ?3"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![repo, limit as i64, offset as i64], row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    fn has_preview_run(&mut self, repo: &str, pr: u64, sha: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM runs
                    WHERE repo = ?1 AND pull_request = ?2 AND sha = ?3 AND mode = 'apply')",
                params![repo, opt_i64(Some(pr)), sha],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    fn held_previews(&mut self) -> Result<Vec<RunRecord>, StoreError> {
        // The newest run of each preview; held unless that run tore it down for good.
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM runs r
                 WHERE r.pull_request IS NOT NULL
                   AND r.started_at = (SELECT MAX(x.started_at) FROM runs x
                                       WHERE x.repo = r.repo AND x.pull_request = r.pull_request)
                   AND NOT (r.mode = 'teardown' AND r.outcome = 'success')
                 ORDER BY r.repo, r.pull_request, r.id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], row).map_err(|e| self.err(e))?;
        let mut out: Vec<RunRecord> = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        // Two runs in the same millisecond: one row per preview is enough.
        out.dedup_by(|a, b| a.repo == b.repo && a.pull_request == b.pull_request);
        Ok(out)
    }

    fn job_event(&mut self, job_id: i64) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT d.event FROM jobs j JOIN deliveries d ON d.id = j.delivery_id
                 WHERE j.id = ?1",
                [job_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn prune_runs(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        self.conn
            .execute(
                // Never the newest run of a preview still held (a teardown that failed for
                // good, a long TTL): the sweep finds previews through it.
                "DELETE FROM runs WHERE started_at < ?1
                   AND NOT (pull_request IS NOT NULL
                        AND started_at = (SELECT MAX(x.started_at) FROM runs x
                                          WHERE x.repo = runs.repo
                                            AND x.pull_request = runs.pull_request)
                        AND NOT (mode = 'teardown' AND outcome = 'success'))",
                [before_ms],
            )
            .map_err(|e| self.err(e))
    }
}
