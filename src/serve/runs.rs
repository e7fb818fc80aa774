//! Run pages: every reconcile the worker runs becomes a durable run record (repository,
//! environment, commit, trigger, times, outcome, the rendered plan and the per-resource
//! report), and `telbase serve` shows it at `GET /runs/{id}` (HTML) and `/runs/{id}.json`,
//! with `GET /runs?repo=owner/name` listing a repository's recent runs. Commit statuses link
//! to the run page when the server knows its public URL.
//!
//! A run's id is 128 random bits in base32: the page shows a plan (fingerprints, never
//! values), and an address that cannot be guessed keeps one repository's plans from being
//! walked by someone who can see another's. Pages are plain HTML with every stored string
//! escaped, a small inline stylesheet and no script. This module owns the record as the
//! worker builds it ([`Draft`]), the [`RunLog`] the worker and the pages use, and the routes.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::model::Environment;
use crate::store::runs::RunRecord;

use super::queue::StoreQueue;

tokio::task_local! {
    /// The queue job being run by this task, so its run record can say what triggered it.
    pub static JOB: i64;
}

/// How long run records are kept (the security page's retention).
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

/// Runs, as the worker writes and the pages read them. Blocking; callers use the blocking
/// pool.
pub trait RunLog: Send + Sync + 'static {
    fn save(&self, run: &RunRecord) -> Result<(), String>;
    fn get(&self, id: &str) -> Result<Option<RunRecord>, String>;
    fn list(&self, repo: &str, limit: usize, offset: usize) -> Result<Vec<RunRecord>, String>;
    /// The event of the delivery that queued `job` (push, pull_request, poll, sweep, …).
    fn job_event(&self, job: i64) -> Result<Option<String>, String>;
}

impl RunLog for StoreQueue {
    fn save(&self, run: &RunRecord) -> Result<(), String> {
        self.with(|s| s.save_run(run))
    }
    fn get(&self, id: &str) -> Result<Option<RunRecord>, String> {
        self.with(|s| s.run(id))
    }
    fn list(&self, repo: &str, limit: usize, offset: usize) -> Result<Vec<RunRecord>, String> {
        self.with(|s| s.runs_of(repo, limit, offset))
    }
    fn job_event(&self, job: i64) -> Result<Option<String>, String> {
        self.with(|s| s.job_event(job))
    }
}

/// A fresh run id: 128 bits from the system's CSPRNG, lowercase base32 (RFC 4648, no
/// padding), 26 characters.
pub fn new_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // The OS refused randomness: fall back to something unique but say so; such an id
        // is still unguessable enough only if the clock is not known, so it is logged.
        tracing::error!("the system random generator failed; run id from the clock");
        let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        bytes[..8].copy_from_slice(&t.to_le_bytes());
    }
    base32(&bytes)
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A well-formed run id (26 base32 characters); anything else is a 404 without a lookup.
pub fn valid_id(id: &str) -> bool {
    id.len() == 26
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// The run a job is building: created when the reconcile starts, saved as `running` before
/// the first status links to it, and saved again with its outcome at the end.
pub struct Draft {
    pub record: RunRecord,
    log: Option<Arc<dyn RunLog>>,
    saved: bool,
}

impl Draft {
    /// A new run of `environment` at `sha`; `mode` is apply, teardown or drift.
    pub async fn begin(
        log: Option<Arc<dyn RunLog>>,
        repo: &str,
        branch: &str,
        sha: &str,
        environment: Environment,
        mode: &str,
    ) -> Draft {
        let job = JOB.try_with(|j| *j).ok();
        let event = match (&log, job) {
            (Some(l), Some(j)) => {
                let l = l.clone();
                tokio::task::spawn_blocking(move || l.job_event(j))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
            }
            _ => None,
        };
        let pr = match environment {
            Environment::Preview { pull_request } => Some(pull_request),
            Environment::Production => None,
        };
        Draft {
            record: RunRecord {
                id: new_id(),
                repo: repo.to_owned(),
                environment: match pr {
                    Some(n) => format!("preview-{n}"),
                    None => "production".into(),
                },
                pull_request: pr,
                sha: sha.to_owned(),
                branch: branch.to_owned(),
                trigger: trigger(event.as_deref(), mode, pr.is_some()).into(),
                mode: mode.to_owned(),
                job_id: job,
                started_at: chrono::Utc::now().timestamp_millis(),
                ended_at: None,
                outcome: "running".into(),
                summary: String::new(),
                plan: String::new(),
                report: "[]".into(),
                preview_ttl_seconds: None,
            },
            log,
            saved: false,
        }
    }

    /// The run page's address, when there is a public URL and a place to keep runs (without
    /// them, statuses carry no link, as before).
    pub fn target_url(&self, public_url: Option<&str>) -> Option<String> {
        let base = public_url?.trim_end_matches('/');
        self.log.as_ref()?;
        Some(format!("{base}/runs/{}", self.record.id))
    }

    /// Save the run as it stands (a failed save is logged: the reconcile matters more).
    pub async fn save(&mut self) {
        let Some(log) = self.log.clone() else {
            return;
        };
        let record = self.record.clone();
        match tokio::task::spawn_blocking(move || log.save(&record)).await {
            Ok(Ok(())) => self.saved = true,
            Ok(Err(e)) => tracing::warn!(error = %e, run = %self.record.id, "cannot save the run"),
            Err(e) => tracing::warn!(error = %e, "the run save task failed"),
        }
    }

    /// The reconcile ended: record how, if the run was started (saved) at all.
    pub async fn finish(&mut self, outcome: &str, summary: &str) {
        if !self.saved {
            return;
        }
        self.record.outcome = outcome.to_owned();
        if !summary.is_empty() {
            self.record.summary = summary.to_owned();
        }
        self.record.ended_at = Some(chrono::Utc::now().timestamp_millis());
        self.save().await;
    }
}

/// What started a run, from the event of the delivery that queued it.
fn trigger(event: Option<&str>, mode: &str, preview: bool) -> &'static str {
    match (mode, event) {
        ("drift", _) | (_, Some("drift")) => "drift",
        ("teardown", Some("sweep")) => "sweep",
        ("teardown", _) => "teardown",
        (_, Some("poll")) => "poll",
        (_, Some("sweep")) => "sweep",
        (_, Some(e)) if e.starts_with("installation") => "install",
        _ if preview => "pr",
        _ => "push",
    }
}

/// The routes of the run pages, with HSTS like every other answer. Links between pages are
/// relative, so the pages work below a path prefix of a proxy (`https://host/telbase/runs/…`).
/// What the pages read: the run records, and the uptime probes' results for the URLs of a
/// run's repository and environment.
#[derive(Clone)]
struct Pages {
    log: Arc<dyn RunLog>,
    uptime: Option<Arc<super::uptime::UptimeBoard>>,
}

pub fn router(
    log: Arc<dyn RunLog>,
    with_list: bool,
    uptime: Option<Arc<super::uptime::UptimeBoard>>,
) -> Router {
    let routes = Router::new().route("/runs/{id}", get(page));
    let routes = if with_list {
        routes.route("/runs", get(list))
    } else {
        routes
    };
    routes
        .layer(axum::middleware::map_response(super::hsts))
        .with_state(Pages { log, uptime })
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string component (for the repository in pagination links).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GitHub repository names: owner/name of letters, digits, `-`, `_`, `.`.
fn valid_repo(repo: &str) -> bool {
    let mut parts = repo.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.len() <= 100
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}\
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}table{border-collapse:collapse;width:100%}\
td,th{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #d0d7de;vertical-align:top}\
pre{background:#f6f8fa;padding:1rem;overflow-x:auto;font-size:13px}code{font-size:13px}\
.success{color:#1a7f37}.failure,.error{color:#cf222e}.running{color:#9a6700}";

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let doc = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        esc(title)
    );
    let mut r = (status, doc).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // No script, no frames, nothing loaded from elsewhere: the page is inert even if an
    // escaping bug slipped a tag through.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "Not found",
        "<h1>Not found</h1><p>No run has this address.</p>",
    )
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

async fn page(State(pages): State<Pages>, Path(id): Path<String>) -> Response {
    let log = pages.log.clone();
    let (id, json) = match id.strip_suffix(".json") {
        Some(i) => (i.to_owned(), true),
        None => (id, false),
    };
    if !valid_id(&id) {
        return not_found();
    }
    let got = tokio::task::spawn_blocking(move || log.get(&id)).await;
    let run = match got {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return not_found(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read a run");
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "<h1>The store is not answering</h1>",
            );
        }
        Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    };
    if json {
        let report: serde_json::Value =
            serde_json::from_str(&run.report).unwrap_or(serde_json::Value::Null);
        let mut v = serde_json::to_value(&run).unwrap_or_default();
        v["report"] = report;
        return axum::Json(v).into_response();
    }
    let mut body = render_run(&run);
    if let Some(board) = &pages.uptime {
        body.push_str(&render_uptime(&run, &board.snapshot()));
    }
    html(StatusCode::OK, &title(&run), &body)
}

/// The deployed URLs of the run's repository and environment as the probes see them now.
fn render_uptime(run: &RunRecord, all: &[super::uptime::UrlStatus]) -> String {
    let env = match run.pull_request {
        Some(n) => format!("pr-{n}"),
        None => "production".into(),
    };
    let mine: Vec<_> = all
        .iter()
        .filter(|u| u.repository == run.repo && u.environment == env)
        .collect();
    if mine.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<h2>Uptime now</h2><table><tr><th>URL</th><th>State</th><th>Last check</th><th>Last answer</th></tr>",
    );
    for u in mine {
        let state = match u.state {
            super::uptime::State::Up => "up",
            super::uptime::State::Down => "down",
            super::uptime::State::Unknown => "not known yet",
        };
        out.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&u.url),
            state,
            esc(&u
                .last_check
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_else(|| "—".into())),
            esc(u.last_result.as_deref().unwrap_or("—")),
        ));
    }
    out.push_str("</table>");
    out
}

fn title(run: &RunRecord) -> String {
    format!(
        "{} {} at {} — Telbase",
        run.repo,
        run.environment,
        run.sha.get(..7).unwrap_or(&run.sha)
    )
}

fn render_run(run: &RunRecord) -> String {
    // Links to GitHub only for GitHub repositories: a watched repository's name is its URL
    // or path (`serve --watch`), which github.com knows nothing about.
    let on_github = valid_repo(&run.repo);
    let repository = if on_github {
        format!(
            "<a href=\"https://github.com/{0}\">{0}</a> · <a href=\"../runs?repo={1}\">all runs</a>",
            esc(&run.repo),
            esc(&enc(&run.repo))
        )
    } else {
        format!("<code>{}</code>", esc(&run.repo))
    };
    let commit = if on_github {
        format!(
            "<a href=\"{}\"><code>{}</code></a>",
            esc(&format!(
                "https://github.com/{}/commit/{}",
                run.repo, run.sha
            )),
            esc(&run.sha)
        )
    } else {
        format!("<code>{}</code>", esc(&run.sha))
    };
    let mut rows = vec![
        ("Repository", repository),
        ("Environment", esc(&run.environment)),
        (
            "Commit",
            format!("{commit} on <code>{}</code>", esc(&run.branch)),
        ),
        ("Trigger", esc(&run.trigger)),
        ("What", esc(&run.mode)),
        ("Started", esc(&time(run.started_at))),
        (
            "Ended",
            run.ended_at.map(|t| esc(&time(t))).unwrap_or_default(),
        ),
        (
            "Outcome",
            format!("<strong class=\"{0}\">{0}</strong>", esc(&run.outcome)),
        ),
        ("Summary", esc(&run.summary)),
    ];
    if let Some(pr) = run.pull_request {
        rows.insert(
            2,
            (
                "Pull request",
                format!(
                    "<a href=\"https://github.com/{}/pull/{pr}\">#{pr}</a>",
                    esc(&run.repo)
                ),
            ),
        );
    }
    let mut out = format!("<h1>{}</h1><table>", esc(&title(run)));
    for (k, v) in rows {
        out.push_str(&format!("<tr><th>{k}</th><td>{v}</td></tr>"));
    }
    out.push_str("</table><h2>Plan</h2>");
    if run.plan.is_empty() {
        out.push_str("<p>No plan was made (see the summary).</p>");
    } else {
        out.push_str(&format!("<pre>{}</pre>", esc(&run.plan)));
    }
    out.push_str("<h2>Per-resource report</h2>");
    let steps: Vec<serde_json::Value> = serde_json::from_str(&run.report).unwrap_or_default();
    if steps.is_empty() {
        out.push_str("<p>Nothing was applied.</p>");
    } else {
        out.push_str(
            "<table><tr><th>Resource</th><th>Action</th><th>Outcome</th><th>Time</th></tr>",
        );
        for s in &steps {
            let text = |k: &str| match &s[k] {
                serde_json::Value::String(v) => v.clone(),
                serde_json::Value::Null => String::new(),
                v => v.to_string(),
            };
            let detail = match text("outcome").as_str() {
                "failed" => format!(": {}", text("error")),
                "skipped" => format!(" (because {} failed)", text("because")),
                _ if !text("url").is_empty() => format!(" {}", text("url")),
                _ => String::new(),
            };
            out.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}{}</td><td>{} ms</td></tr>",
                esc(&text("key")),
                esc(&text("action")),
                esc(&text("outcome")),
                esc(&detail),
                esc(&text("millis"))
            ));
        }
        out.push_str("</table>");
    }
    out
}

#[derive(serde::Deserialize)]
struct ListQuery {
    repo: Option<String>,
    page: Option<usize>,
}

const PAGE_SIZE: usize = 50;

async fn list(State(pages): State<Pages>, Query(q): Query<ListQuery>) -> Response {
    let log = pages.log;
    let Some(repo) = q.repo.filter(|r| valid_repo(r)) else {
        return html(
            StatusCode::BAD_REQUEST,
            "Runs",
            "<h1>Runs</h1><p>Name a repository: <code>/runs?repo=owner/name</code>.</p>",
        );
    };
    let page = q.page.unwrap_or(1).clamp(1, 10_000);
    let r = repo.clone();
    // One more than a page, to know whether there is a next one.
    let got =
        tokio::task::spawn_blocking(move || log.list(&r, PAGE_SIZE + 1, (page - 1) * PAGE_SIZE))
            .await;
    let mut runs = match got {
        Ok(Ok(r)) => r,
        _ => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "<h1>The store is not answering</h1>",
            );
        }
    };
    let more = runs.len() > PAGE_SIZE;
    runs.truncate(PAGE_SIZE);
    let mut out = format!(
        "<h1>Runs of <a href=\"https://github.com/{0}\">{0}</a></h1>",
        esc(&repo)
    );
    if runs.is_empty() {
        out.push_str("<p>No runs.</p>");
    } else {
        out.push_str("<table><tr><th>Started</th><th>Environment</th><th>Commit</th><th>Trigger</th><th>Outcome</th><th>Summary</th></tr>");
        for r in &runs {
            out.push_str(&format!(
                "<tr><td><a href=\"runs/{}\">{}</a></td><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
                esc(&r.id),
                esc(&time(r.started_at)),
                esc(&r.environment),
                esc(r.sha.get(..7).unwrap_or(&r.sha)),
                esc(&r.trigger),
                esc(&r.outcome),
                esc(&r.outcome),
                esc(&r.summary)
            ));
        }
        out.push_str("</table>");
    }
    let link = |p: usize, label: &str| {
        format!(
            "<a href=\"runs?repo={}&amp;page={p}\">{label}</a>",
            esc(&enc(&repo))
        )
    };
    let mut nav = Vec::new();
    if page > 1 {
        nav.push(link(page - 1, "← newer"));
    }
    if more {
        nav.push(link(page + 1, "older →"));
    }
    if !nav.is_empty() {
        out.push_str(&format!("<p>{}</p>", nav.join(" · ")));
    }
    html(StatusCode::OK, &format!("Runs of {repo}"), &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_shows_the_runs_own_urls_escaped() {
        use super::super::uptime::{State as S, UrlStatus};
        let run = RunRecord {
            id: new_id(),
            repo: "acme/notes".into(),
            environment: "preview-7".into(),
            pull_request: Some(7),
            sha: "a".repeat(40),
            branch: "feature".into(),
            trigger: "pr".into(),
            mode: "apply".into(),
            job_id: None,
            started_at: 0,
            ended_at: None,
            outcome: "success".into(),
            summary: String::new(),
            plan: String::new(),
            report: "[]".into(),
            preview_ttl_seconds: None,
        };
        let status = |env: &str, url: &str, state| UrlStatus {
            repository: "acme/notes".into(),
            environment: env.into(),
            url: url.into(),
            state,
            last_check: None,
            last_change: None,
            failures: 0,
            last_result: Some("HTTP <503>".into()),
        };
        let html = render_uptime(
            &run,
            &[
                status("pr-7", "https://pr-7.example.com/?a=<b>", S::Down),
                status("production", "https://example.com", S::Up),
            ],
        );
        assert!(
            html.contains("https://pr-7.example.com/?a=&lt;b&gt;"),
            "{html}"
        );
        assert!(html.contains("<td>down</td>"), "{html}");
        assert!(html.contains("HTTP &lt;503&gt;"), "{html}");
        assert!(
            !html.contains("https://example.com<"),
            "production's URL is not the preview's: {html}"
        );
        assert_eq!(render_uptime(&run, &[]), "", "nothing to show, no section");
    }

    #[test]
    fn ids_are_26_base32_characters_and_differ() {
        let a = new_id();
        let b = new_id();
        assert!(valid_id(&a) && valid_id(&b), "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(base32(&[0xff; 5]), "77777777");
        assert_eq!(base32(b"f"), "my");
        assert!(!valid_id("../../etc/passwd"));
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
        assert!(valid_repo("acme/notes.web"));
        assert!(!valid_repo("acme/<x>"));
        assert!(!valid_repo("acme"));
    }

    #[test]
    fn triggers_follow_the_delivery() {
        assert_eq!(trigger(Some("push"), "apply", false), "push");
        assert_eq!(trigger(Some("poll"), "apply", true), "poll");
        assert_eq!(trigger(Some("sweep"), "teardown", true), "sweep");
        assert_eq!(trigger(Some("pull_request"), "teardown", true), "teardown");
        assert_eq!(trigger(Some("pull_request"), "apply", true), "pr");
        assert_eq!(trigger(Some("installation"), "apply", false), "install");
        assert_eq!(trigger(Some("drift"), "drift", false), "drift");
        assert_eq!(trigger(None, "apply", false), "push");
    }
}
