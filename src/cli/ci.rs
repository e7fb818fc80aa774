//! `telbase ci validate|plan|apply|drift`: one step of a GitHub Actions workflow (the
//! Telbase action runs it). It reads the run's environment (`gha::env`), decides the
//! environment (a pull request's preview, pinned to the pull request's head commit, or
//! production), and reports where GitHub shows things: annotations on the config's lines,
//! the plan or the apply's results in the job summary, the step's outputs, and one
//! pull-request comment per config kept up to date. Exit codes: 0 done (a plan with
//! changes too), 1 failed (invalid config, provider error, failed apply, drift with
//! `--fail-on-drift`), 2 usage (clap). Every failure ends with one line on stderr saying why.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::ValueEnum;

use crate::apply;
use crate::config::{self, Diagnostic, diag};
use crate::gha::command::{Level, Place, annotation};
use crate::gha::comment::{self, Posted};
use crate::gha::env::{ActionsEnv, Event};
use crate::gha::files;
use crate::gha::mask::{Masker, MaskingOpener, mask_registry};
use crate::gha::report::{self, Context};
use crate::model::Environment;
use crate::plan::{self, Plan};
use crate::providers::http::{Http, HttpConfig};
use crate::providers::{self, Credentials, GitRef, Scope};

use super::reconcile::{self, Session, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CiCommand {
    /// Check the config; problems become annotations on its lines.
    Validate,
    /// Plan (the pull request's preview, or production) into the job summary and a comment.
    Plan,
    /// Apply: production on its branch, or the pull request's preview.
    Apply,
    /// Plan production and report drift (with --fail-on-drift, fail the step).
    Drift,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnvChoice {
    Production,
    Preview,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CommentMode {
    /// On pull_request and pull_request_target events only.
    Auto,
    Always,
    Never,
}

#[derive(Debug, clap::Args)]
pub struct CiArgs {
    /// What to do.
    #[arg(value_enum)]
    pub command: CiCommand,
    #[command(flatten)]
    pub target: Target,
    /// Default: preview on pull_request events, else production.
    #[arg(long, value_enum)]
    pub environment: Option<EnvChoice>,
    /// Post or update the pull request's Telbase comment.
    #[arg(long, value_enum, default_value_t = CommentMode::Auto)]
    pub comment: CommentMode,
    /// With `drift`: fail the step (exit 1) when production drifted.
    #[arg(long)]
    pub fail_on_drift: bool,
    /// Where plan.json goes. Default: a fresh directory of its own under $RUNNER_TEMP/telbase
    /// (the system temporary directory elsewhere).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// How a step ended: its outputs and exit code.
struct Finish {
    has_changes: bool,
    plan_json: Option<PathBuf>,
    summary: String,
    /// Why it failed (printed as the step's last line on stderr); `None`: success.
    failure: Option<String>,
    /// The failure is already on the config's lines as annotations (an invalid config);
    /// others get one `::error` annotation with the reason.
    annotated: bool,
}

impl Finish {
    /// A failure before anything was planned: the summary output is the reason, on one
    /// line.
    fn error(reason: impl Into<String>) -> Finish {
        let reason = reason.into();
        Finish::failed(
            format!("error: {}", diag::sanitize_to(&reason, 300)),
            reason,
        )
    }

    fn failed(summary: impl Into<String>, reason: impl Into<String>) -> Finish {
        Finish {
            has_changes: false,
            plan_json: None,
            summary: summary.into(),
            failure: Some(reason.into()),
            annotated: false,
        }
    }

    fn done(has_changes: bool, plan_json: Option<PathBuf>, summary: String) -> Finish {
        Finish {
            has_changes,
            plan_json,
            summary,
            failure: None,
            annotated: false,
        }
    }
}

/// One step's run: the environment and where things are reported.
struct Step<'a> {
    args: &'a CiArgs,
    env: ActionsEnv,
    /// The config path as the repository names it (annotations, marker, summaries).
    config: String,
    masker: Arc<Masker>,
}

pub fn ci_cmd(args: &CiArgs) -> ExitCode {
    let env = match ActionsEnv::from_lookup(|k| std::env::var(k).ok()) {
        Ok(e) => e,
        Err(e) => {
            // Without a usable environment even the outputs' file may be unknown.
            if std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true") {
                println!(
                    "{}",
                    annotation(
                        Level::Error,
                        &Place::default(),
                        Some("telbase"),
                        &e.to_string()
                    )
                );
            }
            // The outputs still say what happened, when the runner's file is known.
            if let Some(path) = std::env::var_os("GITHUB_OUTPUT").filter(|p| !p.is_empty()) {
                let summary = format!("error: {}", diag::sanitize_to(&e.to_string(), 300));
                let text = [
                    ("has-changes", "false"),
                    ("plan-json", ""),
                    ("summary", &summary),
                ]
                .iter()
                .filter_map(|(n, v)| files::heredoc(n, v).ok())
                .collect::<String>();
                let _ = files::append("GITHUB_OUTPUT", Path::new(&path), &text);
            }
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let config = env.repo_path(&args.target.config);
    let step = Step {
        masker: Masker::stdout(env.in_actions),
        args,
        env,
        config,
    };
    let finish = match args.command {
        CiCommand::Validate => step.validate(),
        CiCommand::Plan | CiCommand::Apply | CiCommand::Drift => step.reconcile(),
    };
    step.finish(finish)
}

impl Step<'_> {
    /// Print a workflow command (on a runner) to standard output.
    fn command(&self, line: &str) {
        if self.env.in_actions {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    fn notice(&self, level: Level, message: &str) {
        if self.env.in_actions {
            self.command(&annotation(
                level,
                &Place::default(),
                Some("telbase"),
                message,
            ));
        } else {
            let what = match level {
                Level::Error => "error",
                Level::Warning => "warning",
                Level::Notice => "note",
            };
            eprintln!("{what}: {message}");
        }
    }

    fn config_place(&self) -> Place {
        Place {
            file: Some(self.config.clone()),
            ..Place::default()
        }
    }

    /// Write the outputs, print the failure line, pick the exit code.
    fn finish(&self, f: Finish) -> ExitCode {
        let plan_json = f
            .plan_json
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let outputs = [
            (
                "has-changes",
                if f.has_changes { "true" } else { "false" }.to_owned(),
            ),
            ("plan-json", plan_json),
            ("summary", f.summary.clone()),
        ];
        let mut code = if f.failure.is_some() { 1 } else { 0 };
        match &self.env.output_path {
            Some(path) => {
                let mut text = String::new();
                for (name, value) in &outputs {
                    match files::heredoc(name, value) {
                        Ok(h) => text.push_str(&h),
                        Err(e) => {
                            eprintln!("error: {e}");
                            code = 1;
                        }
                    }
                }
                if let Err(e) = files::append("GITHUB_OUTPUT", path, &text) {
                    eprintln!("error: {e}");
                    code = 1;
                }
            }
            None => {
                let mut out = std::io::stdout().lock();
                for (name, value) in &outputs {
                    let _ = writeln!(out, "{name}={value}");
                }
            }
        }
        if let Some(reason) = &f.failure {
            if !f.annotated {
                self.command(&annotation(
                    Level::Error,
                    &Place::default(),
                    Some("telbase"),
                    reason,
                ));
            }
            eprintln!("error: {reason}");
        }
        ExitCode::from(code)
    }

    /// Append markdown to the job summary (stdout outside a runner).
    fn summary(&self, markdown: &str) {
        let note = "_Cut here: GitHub allows 1 MiB of job summary per step. The full plan is in the step's `plan-json` output file._";
        match &self.env.summary_path {
            Some(p) => {
                if let Err(e) = files::append_summary(p, markdown, note) {
                    self.notice(
                        Level::Warning,
                        &format!("the job summary could not be written: {e}"),
                    );
                }
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(markdown.as_bytes());
                let _ = out.flush();
            }
        }
    }

    /// Read and check the config: diagnostics as annotations (and as text on stderr).
    /// `Err` is the finish of a step that cannot go on.
    fn check(&self) -> Result<(config::Checked, Vec<Diagnostic>), Finish> {
        let path = &self.args.target.config;
        let bytes = match config::read(path) {
            Ok(b) => b,
            Err(d) => {
                let reason = format!("{}: {}", self.config, d.message);
                self.command(&annotation(
                    Level::Error,
                    &self.config_place(),
                    Some("telbase"),
                    &d.message,
                ));
                return Err(Finish {
                    annotated: true,
                    ..Finish::failed("invalid: the config cannot be read", reason)
                });
            }
        };
        let checked = config::check_bytes_in(&bytes, config::dir_of(path));
        let diags = checked.diagnostics.clone();
        if !diags.is_empty() {
            // `render_github` quotes the file name as given: the repository path puts the
            // annotations on the pull request's diff.
            let lines = diag::render_github(&self.config, &diags);
            if self.env.in_actions {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(lines.as_bytes());
                let _ = out.flush();
            }
            let source = String::from_utf8(bytes).ok();
            eprint!(
                "{}",
                diag::render_text(&self.config, source.as_deref(), &diags)
            );
        }
        Ok((checked, diags))
    }

    fn validate(&self) -> Finish {
        let (checked, diags) = match self.check() {
            Ok(c) => c,
            Err(f) => {
                self.summary(&report::failure_markdown(
                    &format!("Telbase validate: `{}`", self.config),
                    f.failure.as_deref().unwrap_or_default(),
                ));
                return f;
            }
        };
        self.summary(&report::validate_markdown(&self.config, &diags));
        let line = report::validate_line(&diags);
        if checked.config.is_some() {
            println!("{}: {line}", diag::sanitize(&self.config));
            Finish::done(false, None, line)
        } else {
            let reason = format!("{} is {line} (annotated on the file)", self.config);
            Finish {
                annotated: true,
                ..Finish::failed(line, reason)
            }
        }
    }

    /// The environment this run plans, and the commit and branch it pins.
    fn environment(&self) -> Result<Environment, String> {
        let pr = self.env.pull_request();
        let wanted = match (self.args.command, self.args.environment) {
            (CiCommand::Drift, Some(EnvChoice::Preview)) => {
                return Err("drift checks production; drop --environment preview".into());
            }
            (CiCommand::Drift, _) => EnvChoice::Production,
            (_, Some(e)) => e,
            (_, None) if pr.is_some() => EnvChoice::Preview,
            (_, None) => EnvChoice::Production,
        };
        match (wanted, pr) {
            (EnvChoice::Production, _) => Ok(Environment::Production),
            (EnvChoice::Preview, Some(pr)) => Ok(Environment::Preview {
                pull_request: pr.number,
            }),
            (EnvChoice::Preview, None) => Err(format!(
                "--environment preview needs a pull_request or pull_request_target event (the pull request's number and head commit come from its payload); this run's event is {}",
                self.env
                    .event_name
                    .as_deref()
                    .unwrap_or("not set (not on GitHub Actions)")
            )),
        }
    }

    /// A closed pull request's preview is torn down, as the App tears it down: its plan
    /// deletes what the preview owns (and its apply carries that out).
    fn teardown(&self, environment: Environment) -> bool {
        matches!(environment, Environment::Preview { .. })
            && self
                .env
                .pull_request()
                .is_some_and(|pr| pr.action.as_deref() == Some("closed"))
    }

    /// The commit and branch to pin: for a pull-request event, the pull request's head when
    /// planning its preview (not GITHUB_SHA, the merge commit GitHub makes for the run) and
    /// the base branch's commit when planning production (production never runs unmerged
    /// code; on `pull_request_target` GITHUB_REF names the base branch, so pinning the head
    /// there would put a pull request's code into production); the pushed commit for a
    /// push; GITHUB_SHA otherwise; outside Actions, the local repository's HEAD.
    fn git(&self, environment: Environment) -> Option<GitRef> {
        let repo = self.env.repository.clone();
        match (&self.env.event, repo) {
            (Event::PullRequest(pr), Some(repo)) if environment == Environment::Production => {
                Some(GitRef {
                    repo,
                    sha: pr.base_sha.clone(),
                    branch: pr.base_ref.clone(),
                })
            }
            (Event::PullRequest(pr), Some(repo)) => Some(GitRef {
                repo,
                sha: pr.head_sha.clone(),
                branch: pr.head_ref.clone(),
            }),
            (Event::Push(p), Some(repo)) => Some(GitRef {
                repo,
                sha: p.after.clone(),
                branch: self.env.branch().unwrap_or_default().to_owned(),
            }),
            (_, Some(repo)) if self.env.sha.is_some() => Some(GitRef {
                repo,
                sha: self.env.sha.clone().unwrap_or_default(),
                branch: self.env.branch().unwrap_or_default().to_owned(),
            }),
            _ => reconcile::git_ref(&self.args.target.config),
        }
    }

    /// `reconcile::session` for a run on GitHub: the environment and commit come from the
    /// event, problems in the file become annotations, and every provider client masks
    /// the secret values that pass through it.
    fn session(&self, environment: Environment) -> Result<Session, Finish> {
        let (checked, diags) = self.check()?;
        let Some(cfg) = checked.config else {
            let line = report::validate_line(&diags);
            return Err(Finish {
                annotated: true,
                ..Finish::failed(
                    line.clone(),
                    format!("{} is {line} (annotated on the file)", self.config),
                )
            });
        };
        let mut desired = config::lower::lower(&cfg, environment);

        let git = self.git(environment);
        match &git {
            Some(g) if !g.repo.is_empty() => desired.pin_git(Some(&g.repo), &g.sha),
            Some(g) => desired.pin_images(&g.sha),
            None => self.notice(
                Level::Notice,
                "the config is not in a git repository and GITHUB_REPOSITORY/GITHUB_SHA are not set, so Telbase manages settings but deploys no code",
            ),
        }
        let fail = |e: String| Finish::error(e);
        let store = if crate::secrets::stored::uses_stored(&desired) {
            let mut store = super::env::open_store().map_err(|e| fail(format!("{e:#}")))?;
            crate::secrets::stored::read_fingerprints(&mut desired, &mut store).map_err(fail)?;
            Some(store)
        } else {
            None
        };
        let mut creds = Credentials::from_env();
        if let Some(e) = &self.args.target.emulator {
            creds.emulator = Some(e.clone());
        }
        let http = Http::new(HttpConfig::default()).map_err(|e| fail(e.to_string()))?;
        let registry =
            providers::registry_for(&desired, &creds, &http).map_err(|e| fail(e.to_string()))?;
        // After the clients are made from the whole file: the teardown must observe (and
        // delete at) every provider the preview used.
        if self.teardown(environment) {
            crate::serve::worker::teardown_state(&mut desired);
        }
        let scope = Scope {
            project: desired.project.clone(),
            environment,
            git: git.filter(|g| !g.repo.is_empty()),
        };
        Ok(Session {
            desired,
            scope,
            registry: mask_registry(registry, &self.masker),
            http,
            store,
        })
    }

    /// Where plan.json goes: --out-dir, else a directory of its own made for this step
    /// under $RUNNER_TEMP/telbase (or the system's temporary directory): several steps of
    /// one job (two configs, plan then apply) must not overwrite each other's plan while
    /// their `plan-json` outputs still point at it. The directory is created exclusively
    /// (an existing one, say planted in a shared /tmp, is never written into) and private.
    fn write_plan_json(&self, plan: &Plan) -> Result<PathBuf, String> {
        let dir = match &self.args.out_dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .map_err(|e| format!("--out-dir {}: {e}", d.display()))?;
                d.clone()
            }
            None => {
                let parent = match &self.env.runner_temp {
                    Some(t) => t.join("telbase"),
                    None => std::env::temp_dir(),
                };
                std::fs::create_dir_all(&parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
                fresh_dir(&parent).map_err(|e| format!("{}: {e}", parent.display()))?
            }
        };
        let path = dir.join("plan.json");
        std::fs::write(&path, plan::render_json(plan))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(std::path::absolute(&path).unwrap_or(path))
    }

    /// plan, apply and drift.
    fn reconcile(&self) -> Finish {
        let command = self.args.command;
        let verb = match command {
            CiCommand::Apply => "apply",
            CiCommand::Drift => "drift check",
            _ => "plan",
        };
        let environment = match self.environment() {
            Ok(e) => e,
            Err(e) => return Finish::error(e),
        };
        let run_url = self.env.run_url();
        let git = self.git(environment);
        let ctx = Context {
            environment,
            sha: git.as_ref().map(|g| g.sha.as_str()),
            config: &self.config,
            run_url: run_url.as_deref(),
        };
        let title = format!(
            "Telbase {verb} · {}{}",
            ctx.environment_name(),
            if self.teardown(environment) {
                " (closed: tearing the preview down)"
            } else {
                ""
            }
        );
        let pr = self.env.pull_request().map(|p| p.number);
        let comment_wanted =
            command != CiCommand::Drift || self.args.comment == CommentMode::Always;
        let comment_on = match self.args.comment {
            CommentMode::Never => None,
            CommentMode::Auto if comment_wanted => pr,
            CommentMode::Auto => None,
            CommentMode::Always => {
                if pr.is_none() {
                    self.notice(Level::Notice, "no comment: this run is not for a pull request (--comment always needs a pull_request event)");
                }
                pr
            }
        };
        let result = self.reconcile_body(environment, &ctx, &title);
        let (finish, markdown) = match result {
            Ok(done) => done,
            Err(f) => {
                let md = report::failure_markdown(&title, f.failure.as_deref().unwrap_or_default());
                self.summary(&(md.clone() + &ctx.footer(false)));
                (f, md)
            }
        };
        if let Some(pr) = comment_on {
            self.comment(pr, &markdown, &ctx);
        }
        finish
    }

    /// Post or update the comment; never fails the step.
    fn comment(&self, pr: u64, markdown: &str, ctx: &Context<'_>) {
        let Some(repo) = self.env.repository.clone() else {
            self.notice(Level::Notice, "no comment: GITHUB_REPOSITORY is not set");
            return;
        };
        let marker = comment::marker(&self.config);
        // The markdown was rendered within the comment's budget already; `assemble` adds
        // the marker and the footer and guards the limit.
        let body = comment::assemble(&marker, markdown, &ctx.footer(true));
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => {
                self.notice(Level::Warning, &format!("no comment: {e}"));
                return;
            }
        };
        let posted = rt.block_on(async {
            match tokio::time::timeout(
                Duration::from_secs(60),
                comment::post(
                    &self.env.api_url,
                    self.env.token.clone(),
                    &repo,
                    pr,
                    &marker,
                    &body,
                ),
            )
            .await
            {
                Ok(p) => p,
                Err(_) => Posted::Skipped {
                    reason: "GitHub did not answer within 60 s".into(),
                    warn: true,
                },
            }
        });
        match posted {
            Posted::Posted(url) => println!("Updated the pull request comment: {url}"),
            Posted::Skipped { reason, warn } => self.notice(
                if warn { Level::Warning } else { Level::Notice },
                &format!(
                    "no pull request comment was posted: {reason}. The job summary has the {what}.",
                    what = if self.args.command == CiCommand::Apply {
                        "results"
                    } else {
                        "plan"
                    }
                ),
            ),
        }
    }

    /// The work of plan, apply and drift; `Ok` carries the finish and the markdown for the
    /// comment (the job summary is written here).
    fn reconcile_body(
        &self,
        environment: Environment,
        ctx: &Context<'_>,
        title: &str,
    ) -> Result<(Finish, String), Finish> {
        let command = self.args.command;
        let mut s = self.session(environment)?;
        if command == CiCommand::Apply
            && let Some(skip) = self.apply_refusal(&s)
        {
            self.notice(Level::Notice, &skip);
            let md = format!("### {title}\n\nSkipped: {skip}.\n");
            self.summary(&(md.clone() + &ctx.footer(false)));
            return Ok((Finish::done(false, None, format!("skipped: {skip}")), md));
        }
        let fail = |e: String| Finish::error(e);
        let rt = runtime().map_err(|e| fail(e.to_string()))?;
        let actual = rt
            .block_on(apply::observe(&s.registry, &s.scope))
            .map_err(|e| fail(format!("observing the providers: {e}")))?;
        let plan = plan::plan(&s.desired, &actual);
        {
            // Folded in the log on a runner: the job summary is where people read the plan.
            self.command("::group::Telbase plan");
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(plan::render_text(&plan).as_bytes());
            let _ = out.flush();
            drop(out);
            self.command("::endgroup::");
        }
        let plan_json = self.write_plan_json(&plan).map_err(fail)?;
        let line = report::plan_line(&plan);
        // The job summary holds the whole plan (within its own limit); the comment cuts
        // earlier and says where the rest is.
        let summary_plan = plan::render_markdown_noting(
            &plan,
            files::STEP_SUMMARY_LIMIT / 2,
            "The full plan is in the step's `plan-json` output file.",
        );
        let comment_plan = plan::render_markdown_noting(
            &plan,
            plan::GITHUB_COMMENT_LIMIT - 2_000,
            &ctx.full_plan_at(),
        );
        match command {
            CiCommand::Apply => {
                if !plan.has_changes() {
                    // Nothing to apply; held-back changes, if any, are in the plan shown.
                    let nothing =
                        report::apply_markdown(&s.desired.project, &apply::Report::default());
                    self.summary(&format!("{nothing}\n{summary_plan}{}", ctx.footer(false)));
                    return Ok((
                        Finish::done(
                            false,
                            Some(plan_json),
                            report::apply_line(&apply::Report::default()),
                        ),
                        format!("{nothing}\n{comment_plan}"),
                    ));
                }
                let opener: Arc<dyn apply::Opener> = Arc::new(MaskingOpener {
                    inner: reconcile::opener(s.store.take()).map_err(|e| fail(format!("{e:#}")))?,
                    masker: self.masker.clone(),
                });
                let report = rt.block_on(reconcile::run_apply(&s, plan, actual, opener, 8, true));
                let mut results = report::apply_markdown(&s.desired.project, &report);
                if self.teardown(environment) {
                    results.push_str(
                        "\nThe pull request is closed: its preview was torn down (what it shares with production stays).\n",
                    );
                }
                let folded = |p: &str| {
                    format!(
                        "\n<details><summary>The plan that was applied</summary>\n\n{p}\n</details>\n"
                    )
                };
                self.summary(&format!(
                    "{results}{}{}",
                    folded(&summary_plan),
                    ctx.footer(false)
                ));
                let line = report::apply_line(&report);
                let failure = (!report.succeeded())
                    .then(|| format!("the apply did not finish: {line} (see the job summary)"));
                Ok((
                    Finish {
                        has_changes: report::applied_changes(&report),
                        plan_json: Some(plan_json),
                        summary: line,
                        failure,
                        annotated: false,
                    },
                    format!("{results}{}", folded(&comment_plan)),
                ))
            }
            CiCommand::Drift => {
                let drifted = report::drifted(&plan);
                let mut md = summary_plan.clone();
                if drifted.is_empty() {
                    md = format!(
                        "### {title}\n\n✅ No drift: production matches the config.\n\n{md}"
                    );
                } else {
                    let msg = format!(
                        "production drifted from {}: {}",
                        self.config,
                        drifted.join(", ")
                    );
                    self.command(&annotation(
                        Level::Warning,
                        &self.config_place(),
                        Some("telbase drift"),
                        &msg,
                    ));
                    md = format!("### {title}\n\n⚠️ **Drift**: {}\n\n{md}", drifted.len());
                }
                self.summary(&(md.clone() + &ctx.footer(false)));
                let failure = (self.args.fail_on_drift && !drifted.is_empty()).then(|| {
                    format!(
                        "production drifted ({} resource{}); --fail-on-drift is set",
                        drifted.len(),
                        if drifted.len() == 1 { "" } else { "s" }
                    )
                });
                Ok((
                    Finish {
                        has_changes: plan.has_changes(),
                        plan_json: Some(plan_json),
                        summary: line,
                        failure,
                        annotated: false,
                    },
                    comment_plan,
                ))
            }
            _ => {
                self.summary(&(summary_plan + &ctx.footer(false)));
                Ok((
                    Finish::done(plan.has_changes(), Some(plan_json), line),
                    comment_plan,
                ))
            }
        }
    }

    /// Why this run must not apply, if so: production is applied only from its own branch
    /// (the config's `environments.production.branch`), never from a pull-request event,
    /// a tag or another branch; a push that deleted its branch has nothing to apply.
    fn apply_refusal(&self, s: &Session) -> Option<String> {
        match (&self.env.event, s.desired.environment) {
            (Event::Push(p), _) if p.deleted => {
                Some("the push deleted the branch; there is nothing to apply".into())
            }
            (Event::PullRequest(_), Environment::Production) => Some(format!(
                "production is never applied from a pull-request event (its code is not merged); apply production on a push to `{}`",
                s.desired.reconcile.production_branch
            )),
            // A fork's code with this repository's credentials is the classic
            // `pull_request_target` attack: a preview of it is never deployed.
            (Event::PullRequest(pr), _)
                if pr.head_repo.is_none() || pr.head_repo != self.env.repository =>
            {
                Some(format!(
                    "the pull request comes from {}, not this repository; Telbase does not deploy a fork's code with this repository's credentials",
                    pr.head_repo
                        .as_deref()
                        .map(|r| format!("the fork `{}`", diag::sanitize(r)))
                        .unwrap_or_else(|| "a deleted fork".into())
                ))
            }
            (_, Environment::Production) if self.env.event_name.is_some() => {
                let wanted = &s.desired.reconcile.production_branch;
                match self.env.branch() {
                    Some(b) if b == wanted => None,
                    Some(b) => Some(format!(
                        "production is applied from its branch `{wanted}` (environments.production.branch), and this run is on `{}`",
                        diag::sanitize(b)
                    )),
                    None => Some(format!(
                        "production is applied from its branch `{wanted}`, and this run is not on a branch (GITHUB_REF is {})",
                        self.env
                            .git_ref
                            .as_deref()
                            .map(diag::sanitize)
                            .unwrap_or_else(|| "not set".into())
                    )),
                }
            }
            _ => None,
        }
    }
}

/// A new private directory under `parent` with a random name, created exclusively.
fn fresh_dir(parent: &Path) -> std::io::Result<PathBuf> {
    use ring::rand::SecureRandom as _;
    let rng = ring::rand::SystemRandom::new();
    for _ in 0..8 {
        let mut r = [0u8; 8];
        rng.fill(&mut r)
            .map_err(|_| std::io::Error::other("no randomness"))?;
        let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let dir = parent.join(format!("telbase-plan-{name}"));
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        match b.create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("cannot create a fresh directory"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))
}
